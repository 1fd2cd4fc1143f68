# bench/lib.sh — what the daemon benchmarks (bench/run.sh, bench/fleet.sh,
# bench/batch.sh) share: messages, installing the benchmark tools, the
# Release build, the process bookkeeping with its EXIT trap, the test
# upstream, and the machine description every report starts with.
#
# Sourced after `set -euo pipefail` and `cd` to the repository root, with
# $root set ($jobs: parallel build jobs, 2 unless set). Invariants: every
# process a benchmark starts is its own child, its PID is in the pids array
# as soon as it is started, and the EXIT trap (bench_workdirs) stops each
# of them by PID and removes the temporary directories; nothing is ever
# stopped by name. Everything listens on 127.0.0.1 only.
# shellcheck shell=bash disable=SC2034,SC2154

say() { printf '%s\n' "$*" >&2; }
die() {
  say "bench: $*"
  exit 1
}

# ---- tools and build ----------------------------------------------------------
# Installing nginx or varnish must not start the distro's services: while
# deps.sh runs, a policy-rc.d (the Debian mechanism) refuses every service
# start, unless the machine already has one.
install_deps() {
  local policy=/usr/sbin/policy-rc.d own=0 rc=0
  if [[ $(id -u) -eq 0 && ! -e $policy ]]; then
    printf '#!/bin/sh\n# bench/run.sh: no service starts while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own=1
  fi
  scripts/deps.sh deps/bench.txt || rc=$?
  if ((own)); then rm -f "$policy"; fi
  return "$rc"
}

bench_tools() { # tools...: installs deps/bench.txt when one is missing
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null; then
      install_deps || say "bench: could not install deps/bench.txt (not root?): going on without"
      break
    fi
  done
}

# The Release build in build-bench2/ (BUILD=dir reuses an existing build,
# only bench_herd is built there). Sets build, build_type and the paths of
# coalesced, testupstream and herd (bench_herd).
bench_build() {
  if [[ -n ${BUILD:-} ]]; then
    build=$BUILD
    cmake --build "$build" --target bench_herd -j"${jobs:-2}" >"$build/bench-build.log" 2>&1 ||
      die "building bench_herd in $build failed: $(tail -20 "$build/bench-build.log")"
  else
    build='build-bench2'
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" --target coalesced testupstream bench_herd -j"${jobs:-2}" \
      >"$build/bench-build.log" 2>&1 ||
      die "the Release build in $build failed: $(grep -m5 -i error "$build/bench-build.log")"
  fi
  build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
  coalesced=$root/$build/daemon/coalesced
  testupstream=$root/$build/tests/upstream/testupstream
  herd=$root/$build/bench/bench_herd
  local b
  for b in "$coalesced" "$testupstream" "$herd"; do
    [[ -x $b ]] || die "$b missing"
  done
}

# ---- process bookkeeping --------------------------------------------------------
# tmp: results and logs; peer_base: the peers' own directories (nginx's
# cache files, Varnish's shared memory), on tmpfs when there is one, so no
# peer's hit waits for a disk. Installs the EXIT trap.
bench_workdirs() { # name prefix
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  if [[ -d /dev/shm && -w /dev/shm ]]; then
    peer_base=$(mktemp -d "/dev/shm/$1.XXXXXX")
  else
    peer_base=$tmp/peers
    mkdir "$peer_base"
  fi
  chmod 755 "$tmp" "$peer_base" # nginx workers and Varnish drop root
  pids=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

stop_pid() { # pid: TERM, then KILL after 5 s; forgets it
  local p=$1 q keep=()
  if kill -TERM "$p" 2>/dev/null; then
    for _ in $(seq 100); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
  for q in "${pids[@]}"; do
    [[ $q == "$p" ]] || keep+=("$q")
  done
  pids=("${keep[@]}")
}
cleanup() {
  while ((${#pids[@]} > 0)); do
    stop_pid "${pids[0]}"
  done
  rm -rf "$tmp" "$peer_base"
}

# Waits for the first stdout line of a process (its "listening on" line).
wait_line() { # file, pid, name
  for _ in $(seq 400); do
    [[ -s $1 ]] && {
      head -n1 "$1"
      return 0
    }
    kill -0 "$2" 2>/dev/null || die "$3 exited: $(tail -5 "$1.err" 2>/dev/null)"
    sleep 0.025
  done
  die "$3 did not start within 10 s"
}

post() { curl -s -o /dev/null --max-time 5 -X POST "$1"; }

# ---- the upstream -----------------------------------------------------------------
start_upstream() { # delay_ms: starts testupstream, sets upstream (its base URL)
  "$testupstream" --port 0 --delay-ms "$1" --quiet >"$tmp/up.out" 2>"$tmp/up.out.err" &
  pids+=($!)
  local line
  line=$(wait_line "$tmp/up.out" "${pids[-1]}" testupstream)
  upstream=http://${line##* }
}
upstream_total() { # upstream calls since the last reset
  curl -s --max-time 5 "$upstream/__upstream/stats?paths=0" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'
}

# ---- coalesced ------------------------------------------------------------------
# Starts one coalesced with these arguments (which should listen on
# 127.0.0.1:0 for both the proxy and the admin API) and reads the ports it
# chose from its first line. Sets peer_port, peer_admin (the admin base
# URL) and peer_pids.
coalesced_run() { # name args...
  local name=$1
  shift
  # a new file per instance: reusing one, the check for its "listening"
  # line could read the previous instance's before the shell truncates it
  local o
  o=$(mktemp "$tmp/coalesced-$name.XXXXXX")
  "$coalesced" "$@" >"$o" 2>"$o.err" &
  local pid=$!
  pids+=("$pid")
  local l
  l=$(wait_line "$o" "$pid" coalesced)
  local addr admin
  read -r _ _ _ addr _ admin <<<"$l"
  peer_port=${addr##*:}
  peer_admin=http://$admin
  peer_pids=$pid
}

# ---- the machine ----------------------------------------------------------------------
bench_machine() { # sets machine: cores, CPU, RAM, OS, kernel, load now
  local cpu mem_total distro
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  mem_total=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
  distro=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")
  machine="$(nproc) cores ($cpu), $mem_total RAM, ${distro:-Linux}, kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
}

bench_rev() { # the source revision measured
  local rev
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
  [[ -n $(git status --porcelain -- src include daemon 2>/dev/null) ]] && rev+=" (with uncommitted changes)"
  echo "$rev"
}
