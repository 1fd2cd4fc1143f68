#!/usr/bin/env bash
# `make check`: every test the project has, in the order that fails fastest.
#   1. ASan+UBSan build: unit tests           (build-asan)
#   2. TSan build: the concurrency tests      (build-tsan)
#   3. libFuzzer smoke of every parser target (build-fuzz, clang)
#   4. ASan+UBSan build: integration tests    (build-asan: the real daemon
#      under the sanitizers; a leak at exit fails its test, which asserts
#      exit status 0 after SIGTERM)
#   5. normal build: unit + integration tests (build) — CTest's summary last
# Integration tests start their own servers (test upstream, coalesced, Redis)
# on 127.0.0.1 and stop them by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
start=$SECONDS

stage() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - start)); }

configure() { # dir, extra cmake args...
  local dir=$1
  shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >"$dir/build.log" 2>&1 || {
    cat "$dir/build.log"
    exit 1
  }
}

stage "ASan+UBSan build, unit tests"
configure build-asan -DCOALESCE_SANITIZE=address
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L unit --output-on-failure -j"$jobs"

stage "TSan build, concurrency tests"
configure build-tsan -DCOALESCE_SANITIZE=thread
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan -L concurrency --output-on-failure -j"$jobs"

if [[ -f tests/fuzz/CMakeLists.txt ]]; then
  stage "fuzz smoke"
  FUZZ_SECONDS=${FUZZ_SECONDS:-20} scripts/fuzz.sh
fi

stage "ASan+UBSan build, integration tests"
cmake --build build-asan --target coalesced testupstream -j"$jobs" >>build-asan/build.log 2>&1 || {
  cat build-asan/build.log
  exit 1
}
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L integration --output-on-failure -j"$jobs"

stage "normal build, unit + integration tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" >build/build.log 2>&1 || {
  cat build/build.log
  exit 1
}
ctest --test-dir build --output-on-failure -j"$jobs"
