#!/usr/bin/env bash
# scripts/fuzz.sh — builds the libFuzzer targets (build-fuzz, clang,
# ASan+UBSan) and runs each in turn; see tests/fuzz/README.md.
#
#   scripts/fuzz.sh [TARGET...]      all targets of tests/fuzz/ by default
#   FUZZ_SECONDS=N                   total budget, split evenly across the
#                                    targets (default 60; `make check` 20,
#                                    `make fuzz` 300); at least 1 s each
#
# Seeds in tests/fuzz/corpus/<target>/ are only read: they are copied into
# build-fuzz/corpus/<target>/, which libFuzzer grows and later runs reuse.
# A crash, leak, timeout (>5 s for one input) or broken property leaves its
# input in build-fuzz/crashes/; the script prints it, the stack, and the
# command that reproduces it, and exits 1 after running the other targets.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-fuzz
budget=${FUZZ_SECONDS:-60}
jobs=${JOBS:-$(nproc)}

if [[ -f $dir/CMakeCache.txt ]] &&
  ! grep -q '^CMAKE_C_COMPILER:.*clang' "$dir/CMakeCache.txt"; then
  echo "fuzz: $dir was configured without clang; rm -rf $dir and retry" >&2
  exit 1
fi
mkdir -p "$dir"
# One run at a time per build dir (`make check` and `make fuzz` share it).
exec 9>"$dir/.fuzz.lock"
if ! flock -n 9; then
  echo "fuzz: waiting for another scripts/fuzz.sh using $dir" >&2
  flock 9
fi
CC=clang cmake -S . -B "$dir" -DCOALESCE_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$dir/configure.log" 2>&1 || {
  cat "$dir/configure.log"
  exit 1
}
# Only the fuzz targets: the daemon's other modules are not needed here.
cmake --build "$dir" --target fuzz_targets -j"$jobs" >"$dir/fuzz-build.log" 2>&1 || {
  cat "$dir/fuzz-build.log"
  exit 1
}

if (($# > 0)); then
  targets=("$@")
else
  targets=()
  for f in tests/fuzz/fuzz_*.c; do
    t=${f#tests/fuzz/fuzz_}
    targets+=("${t%.c}")
  done
fi
secs=$((budget / ${#targets[@]}))
((secs >= 1)) || secs=1

mkdir -p "$dir/crashes" "$dir/logs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  bin=$dir/fuzz/fuzz_$t
  if [[ ! -x $bin ]]; then
    echo "fuzz: $t: not built (see $dir/configure.log)" >&2
    failed+=("$t")
    continue
  fi
  work=$dir/corpus/$t
  mkdir -p "$work"
  for seed in tests/fuzz/corpus/"$t"/*; do
    if [[ -f $seed && ! -e $work/${seed##*/} ]]; then cp "$seed" "$work/"; fi
  done
  args=(-max_total_time="$secs" -timeout=5 -rss_limit_mb=2048
    -artifact_prefix="$dir/crashes/$t-" -print_final_stats=1)
  if [[ -f tests/fuzz/$t.dict ]]; then args+=(-dict="tests/fuzz/$t.dict"); fi
  log=$dir/logs/$t.log
  printf 'fuzz: %-13s %4ds ... ' "$t" "$secs"
  if "$bin" "${args[@]}" "$work" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -1)
    echo "ok (${runs:-?} runs, ${cov:-cov: ?}, $(find "$work" -type f | wc -l) inputs)"
  else
    echo "FAILED"
    failed+=("$t")
    # The report: from the sanitizer/property message to the end.
    grep -a -m1 'property failed' "$log" >&2 || true
    awk '/^==[0-9]+==|runtime error|^ERROR: libFuzzer/ {p=1} p' "$log" |
      grep -av 'in fuzzer::\|libc_start\|in _start\|in main ' | head -60 >&2 || true
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" |
      tail -1)
    if [[ -n $artifact ]]; then
      echo "fuzz: $t: input kept in $artifact" >&2
      echo "fuzz: reproduce: $bin $artifact" >&2
    fi
    echo "fuzz: full log: $log" >&2
  fi
done

if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed"
