#!/usr/bin/env bash
# `make demo`: coalescing in 10 seconds. Starts the demo upstream (every
# answer takes 200 ms, every call counted) and coalesced on free loopback
# ports, fires a herd of 200 identical requests at once, prints what the
# clients got and how many calls the upstream really received, then a second
# herd on the now cached key. Every process it starts is stopped by PID.
#
# The herd client is bench_herd (bench/herd.c) when built, else curl
# --parallel. Environment: BUILD (default build), DEMO_N (200),
# DEMO_DELAY_MS (200), HERD=curl to force the curl client.
set -euo pipefail
cd "$(dirname "$0")/.."

build=${BUILD:-build}
coalesced=$build/daemon/coalesced
testupstream=$build/tests/upstream/testupstream
herd_bin=$build/bench/bench_herd
n=${DEMO_N:-200}
delay_ms=${DEMO_DELAY_MS:-200}
admin_stats=/api/v1/shared/deduplication/stats

die() {
  echo "demo: $*" >&2
  exit 1
}
for b in "$coalesced" "$testupstream"; do
  [[ -x $b ]] || die "$b not found: run 'make build' first (or set BUILD=dir)"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/coalesce-demo.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits for a process's first stdout line (its "listening on" line).
wait_line() { # file, pid, name
  for _ in $(seq 200); do
    [[ -s $1 ]] && { head -n1 "$1"; return 0; }
    kill -0 "$2" 2>/dev/null || die "$3 exited: $(cat "$1" "$1.err" 2>/dev/null | tail -5)"
    sleep 0.025
  done
  die "$3 did not start within 5 s"
}

get() { curl -s --max-time 5 "$@"; }

# ---- start ------------------------------------------------------------------
"$testupstream" --port 0 --delay-ms "$delay_ms" --quiet >"$tmp/up.out" 2>"$tmp/up.out.err" &
pids+=($!)
line=$(wait_line "$tmp/up.out" "${pids[-1]}" testupstream)
up=http://${line##* }

"$coalesced" --upstream "$up" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --log-level warn >"$tmp/d.out" 2>"$tmp/d.out.err" &
pids+=($!)
line=$(wait_line "$tmp/d.out" "${pids[-1]}" coalesced)
read -r _ _ _ proxy _ admin <<<"$line"

upstream_calls() { get "$up/__upstream/stats?paths=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }

# ---- the herd ---------------------------------------------------------------
# Prints statuses, X-Cache values and latencies of n identical GETs.
herd() { # url
  if [[ -x $herd_bin && ${HERD:-} != curl ]]; then
    "$herd_bin" --url "$1" --n "$n" --timeout-ms 10000 | sed 's/^/   /'
    return
  fi
  local cfg=$tmp/curl.cfg
  : >"$cfg"
  for _ in $(seq "$n"); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$1" >>"$cfg"
  done
  # (stderr dropped: curl 7.88 may draw its parallel progress meter even
  # with -s)
  curl -s --parallel --parallel-immediate --parallel-max "$n" --max-time 10 \
    -w '%{http_code} %header{x-cache} %{time_total}\n' --config "$cfg" \
    >"$tmp/curl.out" 2>/dev/null || true
  awk '{ st[$1]++; xc[$2 == "" ? "(none)" : $2]++ }
       END {
         printf "   requests  %d (curl --parallel)\n   status   ", NR
         for (s in st) printf " %s x%d", s, st[s]
         printf "\n   x-cache  "
         for (x in xc) printf " %s x%d", x, xc[x]
         printf "\n"
       }' "$tmp/curl.out"
  awk '{ print $NF * 1000 }' "$tmp/curl.out" | sort -n | awk '
       { t[NR] = $1 }
       END {
         if (NR == 0) exit
         p50 = int(NR * 0.50 + 0.999); p99 = int(NR * 0.99 + 0.999)
         printf "   latency   p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
                t[p50], t[p99], t[NR]
       }'
}

key='/v1/quote?sym=DEMO'
cat <<EOF

== Coalesce demo ================================================
 upstream   $up   (every answer takes ${delay_ms} ms; every call counted)
 coalesced  http://$proxy   admin http://$admin

1) Cold herd: $n identical requests at once for $key
EOF
herd "http://$proxy$key"
calls=$(upstream_calls)
cat <<EOF

   The upstream was called $calls time(s) for $n requests.
   coalesced's counters (GET http://$admin$admin_stats):
EOF
get "http://$admin$admin_stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
keys = ["total_requests", "coalesced_requests", "cache_hits", "stale_hits",
        "api_calls_made", "api_calls_saved", "pending_requests",
        "hit_rate_percent"]
print(json.dumps({k: s[k] for k in keys if k in s}, indent=4))' | sed 's/^/   /'

cat <<EOF

2) Warm herd: the same $n requests again, answered from the cache
EOF
herd "http://$proxy$key"
calls2=$(upstream_calls)
cat <<EOF

   The upstream was called $((calls2 - calls)) more time(s).

3) coalesced's full statistics after both herds:
EOF
get "http://$admin$admin_stats" | python3 -m json.tool | sed 's/^/   /'
cat <<EOF

 In short: $((2 * n)) requests, $calls2 upstream call(s).
 Run it yourself: make run   (coalesced in front of this demo upstream)
==================================================================
EOF
