#!/usr/bin/env bash
# bench/soak.sh — the long run (issue 6): coalesced under mixed load for
# SOAK_SECONDS (default 600) while its memory and throughput are sampled;
# then the invariants that must still hold. Not part of `make check`.
#
#   bench/soak.sh                       # 10 minutes, build in build-hard/
#   SOAK_SECONDS=120 BUILD=build bench/soak.sh
#   NO_BUILD=1 bench/soak.sh            # run the binaries already in BUILD
#
# Set-up: two test upstreams — "good" (answers after 20 ms, never fails)
# behind route /ok, "bad" (every request picks a fault) behind route
# /fault, so the faults trip only the bad upstream's breaker and any error
# seen on /ok is a real one. 2 workers, cache max_bytes 32 MiB (the /ok key
# space is about twice that, so eviction runs the whole time).
#
# Load, all at once for the whole run:
#   - hits:   wrk -c64 on /ok: 80% on 200 hot keys, 20% over 50,000 keys
#             (ttl 3s + stale 10s: hits, stale hits, refreshes and misses);
#   - faults: wrk -c8 on /fault: reset, close, truncate, garbage,
#             midheaders, drip, hang (upstream timeout 1s), 5xx storms,
#             429/503 with Retry-After, a body over max_response_bytes;
#   - herds:  every 5 s, 200 identical cold requests on a new /ok key;
#   - reload: every 30 s the config is rewritten (ttl 3s <-> 4s, and the
#             good upstream's injected X-Soak-Generation header) and the
#             daemon gets SIGHUP; a probe with echo=1 confirms it applied.
# Every SAMPLE_SECONDS (5) a CSV row: elapsed s, RSS KiB, req/s (from the
# daemon's coalesce_http_requests_total), pending flights, cache bytes,
# open connections, errors on the good upstream so far, circuit_open
# answers so far, the machine's 1-minute load average (the run shares the
# machine: a stall with a high load is the machine, not the daemon).
#
# Checks at the end (exit 1 if one fails): pending_requests == 0; the /ok
# load saw no transport error and no non-2xx answer; every herd got 200 x
# 200 from exactly one upstream call; the good upstream's counters show no
# error; every reload was applied; the daemon exits 0 on SIGTERM; RSS
# flat after warm-up (the least-squares slope over the samples after
# WARMUP_SECONDS, 120 by default, extrapolated over that window, grows RSS
# by less than 10% and less than 16 MiB).
#
# Writes docs/soak.csv, docs/soak.png (RSS and req/s over time) and
# docs/soak.md (figures and checks); temporary files first, so a run that
# cannot start never replaces earlier results. Every process is started
# here and stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

duration=${SOAK_SECONDS:-600}
sample=${SAMPLE_SECONDS:-5}
warmup=${WARMUP_SECONDS:-120}
build=${BUILD:-build-hard}
jobs=${JOBS:-2}
out=docs

say() { printf 'soak: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

# ---- tools and build ------------------------------------------------------------
if ! command -v wrk >/dev/null || ! command -v gnuplot >/dev/null; then
  scripts/deps.sh deps/bench.txt || die "wrk and gnuplot-nox are needed (deps/bench.txt)"
fi
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
if [[ -z ${NO_BUILD:-} ]]; then # NO_BUILD=1: use the binaries already there
  cmake --build "$build" --target coalesced testupstream bench_herd -j"$jobs" \
    >"$build/soak-build.log" 2>&1 || die "build failed: $(tail -20 "$build/soak-build.log")"
fi
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
coalesced=$root/$build/daemon/coalesced
testupstream=$root/$build/tests/upstream/testupstream
herd=$root/$build/bench/bench_herd

# ---- process bookkeeping ------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/coalesce-soak.XXXXXX")
pids=()
stop_pid() { # pid: TERM, then KILL after 15 s; forgets it; returns its status
  local p=$1 q keep=() rc=0
  if kill -TERM "$p" 2>/dev/null; then
    for _ in $(seq 300); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || rc=$?
  for q in "${pids[@]}"; do
    [[ $q == "$p" ]] || keep+=("$q")
  done
  pids=("${keep[@]}")
  return "$rc"
}
cleanup() {
  while ((${#pids[@]} > 0)); do
    stop_pid "${pids[0]}" || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_line() { # file pid name: the first stdout line of a starting process
  for _ in $(seq 400); do
    if [[ -s $1 ]]; then
      head -n1 "$1"
      return 0
    fi
    kill -0 "$2" 2>/dev/null || die "$3 exited: $(tail -5 "$1.err" 2>/dev/null)"
    sleep 0.025
  done
  die "$3 did not start within 10 s"
}

start_upstream() { # name delay_ms: sets upstream_url
  "$testupstream" --port 0 --delay-ms "$2" --quiet >"$tmp/$1.out" 2>"$tmp/$1.out.err" &
  pids+=($!)
  local l
  l=$(wait_line "$tmp/$1.out" "${pids[-1]}" "testupstream $1")
  upstream_url="http://${l##* }"
}
start_upstream good 20
good=$upstream_url
start_upstream bad 0
bad=$upstream_url

write_config() { # generation: ttl alternates 3s / 4s; the good upstream
  # gets the generation in a header, so a probe can see the reload applied
  local ttl=3s
  (($1 % 2)) && ttl=4s
  cat >"$tmp/soak.ini.new" <<EOF
[server]
log_level = warn
max_response_bytes = 1MiB

[cache]
ttl = $ttl
stale = 10s
stale_if_error = 1m
max_wait = 5s
max_bytes = 32MiB

[breaker]
consecutive_failures = 5
open = 2s
max_open = 3s

[upstream good]
url = $good
timeout = 10s
header = X-Soak-Generation: $1

[upstream bad]
url = $bad
timeout = 1s
breaker_open = 200ms
breaker_max_open = 500ms

[route /ok]
upstream = good

[route /fault]
upstream = bad
EOF
  mv "$tmp/soak.ini.new" "$tmp/soak.ini"
}
write_config 0

"$coalesced" --config "$tmp/soak.ini" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --workers 2 >"$tmp/coalesced.out" 2>"$tmp/coalesced.out.err" &
dpid=$!
pids+=("$dpid")
read -r _ _ _ addr _ admin <<<"$(wait_line "$tmp/coalesced.out" "$dpid" coalesced)"
base=http://$addr
admin=http://$admin
stats() { curl -s --max-time 5 "$admin/api/v1/shared/deduplication/stats"; }
metric() { # name: its value in /metrics (first sample)
  curl -s --max-time 5 "$admin/metrics" | awk -v n="$1" '$1 == n && !seen {print $2; seen = 1}'
}
say "coalesced $base (admin $admin, $build_type build), good $good, bad $bad; ${duration}s"

# ---- load generators ------------------------------------------------------------------
cat >"$tmp/ok.lua" <<'LUA'
-- /ok: 80% on 200 hot keys, 20% over a 50,000-key tail.
local n = 0
function setup(thread)
  n = n + 1
  thread:set("id", n)
end
function init(args)
  math.randomseed(os.time() * 1000 + id)
end
function request()
  local k
  if math.random() < 0.8 then
    k = "h" .. math.random(0, 199)
  else
    k = "t" .. math.random(0, 49999)
  end
  return wrk.format("GET", "/ok/" .. k .. "?body_size=1024")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(99),
    latency.max))
end
LUA
cat >"$tmp/fault.lua" <<'LUA'
-- /fault: every request picks one fault on one of 50 keys.
local modes = {
  "fail=reset", "fail=close", "fail=truncate", "fail=garbage",
  "fail=midheaders", "fail=drip&drip_ms=5", "fail=hang", "status=500",
  "status=502", "status=503&retry_after=1", "status=429&retry_after=1",
  "body_size=2000000", "delay_ms=50",
}
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + 7 * id)
  counts = {}
end
function request()
  local m = modes[math.random(#modes)]
  return wrk.format("GET", "/fault/" .. math.random(0, 49) .. "?" .. m)
end
function delay()
  return 20 -- ms between requests per connection: about 400 faults/s
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for s, c in pairs(t:get("counts")) do all[s] = (all[s] or 0) + c end
  end
  local parts = {}
  for s, c in pairs(all) do table.insert(parts, string.format('"%d":%d', s, c)) end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"statuses":{%s}}\n', summary.requests, e.connect, e.read, e.write,
    e.timeout, table.concat(parts, ",")))
end
LUA

wrk -t1 -c64 -d"${duration}s" --timeout 10s -s "$tmp/ok.lua" "$base" \
  >"$tmp/wrk-ok.txt" 2>&1 &
wrk_ok=$!
pids+=("$wrk_ok")
wrk -t1 -c8 -d"${duration}s" --timeout 10s -s "$tmp/fault.lua" "$base" \
  >"$tmp/wrk-fault.txt" 2>&1 &
wrk_fault=$!
pids+=("$wrk_fault")

# herds and reloads: one background loop each, until the deadline
start=$(date +%s)
deadline=$((start + duration))
(
  i=0
  while (($(date +%s) + 3 < deadline)); do
    r=$("$herd" --url "$base/ok/herd-$i?delay_ms=200" --n 200 --timeout-ms 10000 \
      --json --quiet 2>/dev/null) || true
    echo "${r:-"{\"failed\":true}"}" >>"$tmp/herds.jsonl"
    i=$((i + 1))
    sleep 5
  done
) &
herd_loop=$!
pids+=("$herd_loop")
(
  n=0
  while (($(date +%s) + 30 < deadline)); do
    sleep 30
    n=$((n + 1))
    write_config "$n"
    kill -HUP "$dpid" && echo "$n" >"$tmp/reloads"
    for _ in $(seq 50); do # applied when the upstream sees generation n
      if curl -s --max-time 5 "$base/ok/reload-$n?echo=1" |
        grep -q "\"x-soak-generation\":\"$n\""; then
        echo "$n" >>"$tmp/reloads-applied"
        break
      fi
      sleep 0.1
    done
  done
) &
reload_loop=$!
pids+=("$reload_loop")

# ---- sampling ----------------------------------------------------------------------------
echo "seconds,rss_kib,req_per_s,pending,cache_bytes,connections_open,good_errors,circuit_open,loadavg" >"$tmp/soak.csv"
prev_req=$(metric coalesce_http_requests_total)
prev_t=$start
while kill -0 "$wrk_ok" 2>/dev/null; do
  sleep "$sample"
  kill -0 "$dpid" 2>/dev/null || die "coalesced died: $(tail -20 "$tmp/coalesced.out.err")"
  now=$(date +%s.%N)
  curl -s --max-time 5 "$admin/metrics" >"$tmp/metrics.txt" || true
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$dpid/status")
  req=$(awk '$1 == "coalesce_http_requests_total" {print $2}' "$tmp/metrics.txt")
  python3 - "$now" "$prev_t" "${req:-0}" "$prev_req" "$start" "$rss" "$tmp/metrics.txt" \
    >>"$tmp/soak.csv" <<'PY'
import sys
now, prev_t, req, prev_req, start, rss, mfile = sys.argv[1:]
m = {}
for line in open(mfile):
    if line.strip() and not line.startswith("#"):
        k, _, v = line.strip().rpartition(" ")
        m[k] = v
rate = (float(req) - float(prev_req)) / (float(now) - float(prev_t))
good_errors = sum(float(v) for k, v in m.items()
                  if k.startswith('coalesce_upstream_errors_total{upstream="good"'))
load = open("/proc/loadavg").read().split()[0]
circuit_open = m.get('coalesce_errors_total{code="circuit_open"}', '')
print(f"{float(now) - float(start):.1f},{rss},{rate:.0f},"
      f"{m.get('coalesce_pending_requests', '')},{m.get('coalesce_cache_bytes', '')},"
      f"{m.get('coalesce_http_connections_open', '')},{good_errors:.0f},"
      f"{circuit_open},{load}")
PY
  prev_req=${req:-$prev_req}
  prev_t=$now
  tail -n1 "$tmp/soak.csv" | awk -F, '{printf "soak: t=%5.0fs rss=%6d KiB req/s=%6d pending=%s\n", $1, $2, $3, $4}' >&2
done
wait "$wrk_ok" 2>/dev/null || true
wait "$wrk_fault" 2>/dev/null || true
wait "$herd_loop" "$reload_loop" 2>/dev/null || true # both end by the deadline
stop_pid "$herd_loop" || true
stop_pid "$reload_loop" || true

# ---- checks ----------------------------------------------------------------------------------
sleep 3 # let the last flights (hang: 1 s upstream timeout) end
stats >"$tmp/stats.json"
curl -s --max-time 10 "$good/__upstream/stats" >"$tmp/good.json"
curl -s --max-time 10 "$bad/__upstream/stats?paths=0" >"$tmp/bad.json"
reloads=$(cat "$tmp/reloads" 2>/dev/null || echo 0)
applied=$(wc -l <"$tmp/reloads-applied" 2>/dev/null || echo 0)
drc=0
stop_pid "$dpid" || drc=$?
cp "$tmp/coalesced.out.err" "$tmp/daemon.log"

python3 - "$tmp" "$duration" "$warmup" "$reloads" "$applied" "$drc" "$build_type" <<'PY' >"$tmp/soak.md" || soak_failed=1
import csv, json, sys
tmp, duration, warmup, reloads, applied, drc, build_type = sys.argv[1:]
duration, warmup, reloads, applied, drc = int(duration), int(warmup), int(reloads), int(applied), int(drc)

rows = list(csv.DictReader(open(f"{tmp}/soak.csv")))
t = [float(r["seconds"]) for r in rows]
rss = [int(r["rss_kib"]) for r in rows]
rate = [int(r["req_per_s"]) for r in rows]
load = [float(r["loadavg"]) for r in rows]
s = json.load(open(f"{tmp}/stats.json"))
good = json.load(open(f"{tmp}/good.json"))
bad = json.load(open(f"{tmp}/bad.json"))

def wrk(name):
    for line in open(f"{tmp}/wrk-{name}.txt"):
        if line.startswith("WRK "):
            return json.loads(line[4:])
    return None
ok, fault = wrk("ok"), wrk("fault")
herds = [json.loads(l) for l in open(f"{tmp}/herds.jsonl")] if rows else []
herd_calls = {p: n for p, n in good.get("paths", {}).items() if p.startswith("/ok/herd-")}

# RSS trend after warm-up: least-squares slope, extrapolated over the window
pts = [(x, y) for x, y in zip(t, rss) if x >= warmup]
slope = growth = 0.0
if len(pts) >= 3:
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / den if den else 0.0
    growth = slope * (pts[-1][0] - pts[0][0])
post = [y for _, y in pts] or rss
mean_post = sum(post) / len(post)

up_good = s["upstreams"]["good"]
up_bad = s["upstreams"]["bad"]
good_errors = up_good["transport_errors"] + up_good["timeouts"] + up_good["responses"]["5xx"]
checks = [
    ("pending_requests == 0 at the end", s["pending_requests"] == 0, s["pending_requests"]),
    ("/ok load: no transport error, no non-2xx",
     ok is not None and ok["connect"] + ok["read"] + ok["write"] + ok["timeout"] + ok["non2xx"] == 0,
     ok),
    ("every herd: 200 x 200 OK", bool(herds) and all(
        not h.get("failed") and h["status"] == {"200": 200} for h in herds),
     f"{sum(1 for h in herds if not h.get('failed') and h['status'] == {'200': 200})}/{len(herds)}"),
    ("every herd: exactly one upstream call",
     len(herd_calls) == len(herds) and all(n == 1 for n in herd_calls.values()),
     f"{len(herd_calls)} herd keys, max {max(herd_calls.values(), default=0)} calls"),
    ("good upstream: no error seen by the daemon", good_errors == 0, good_errors),
    ("every SIGHUP reload applied", applied == reloads and (reloads > 0 or duration < 60), f"{applied}/{reloads}"),
    ("RSS flat after warm-up (growth < 10% and < 16 MiB)",
     len(pts) >= 3 and growth < 0.10 * mean_post and growth < 16 * 1024,
     f"{growth / 1024:+.1f} MiB over {pts[-1][0] - pts[0][0]:.0f} s" if pts else "no samples"),
    ("cache bytes <= max_bytes", s["cache"]["bytes"] <= s["cache"]["max_bytes"],
     f'{s["cache"]["bytes"]} <= {s["cache"]["max_bytes"]}'),
    ("coalesced exits 0 on SIGTERM", drc == 0, drc),
]
failed = [c for c in checks if not c[1]]

w = sys.stdout.write
w("# Soak run\n\n")
w("Written by `bench/soak.sh` (issue 6); the plot is `soak.png`, the samples "
  "`soak.csv`. Not part of `make check`.\n\n")
w(f"{duration} s of mixed load on one machine (2 cores shared by the daemon "
  f"with 2 workers, two test upstreams, two wrk clients and the herd client; "
  f"{build_type} build). Load: wrk -c64 on `/ok` (80% on 200 hot keys, 20% "
  "over 50,000; 1 KiB bodies, ttl 3-4 s, stale 10 s), wrk -c8 on `/fault` "
  "(reset, close, truncate, garbage, midheaders, drip, hang past a 1 s "
  "upstream timeout, 500/502, 503 and 429 with Retry-After, a 2 MB body "
  "over max_response_bytes 1 MiB; about 400 requests/s, the bad upstream's "
  "breaker open 200 ms, Retry-After capped at 500 ms), a herd of 200 identical cold requests "
  "every 5 s, a config rewrite + SIGHUP every 30 s (ttl 3 s <-> 4 s and an injected "
  "upstream header, each reload confirmed by a probe that sees the new header). Cache max_bytes 32 MiB.\n\n")
w("## Figures\n\n| | |\n|---|---|\n")
w(f"| requests served (daemon) | {s['total_requests'] + 0:,} cacheable; "
  f"wrk /ok {ok['requests'] if ok else '?':,}, /fault {fault['requests'] if fault else '?':,} |\n")
w(f"| machine load (1-min average) | mean {sum(load) / max(len(load), 1):.1f}, "
  f"max {max(load, default=0):.1f} (2 cores) |\n")
w(f"| req/s (5 s samples) | mean {sum(rate) / max(len(rate), 1):,.0f}, "
  f"min {min(rate, default=0):,}, max {max(rate, default=0):,} |\n")
if ok:
    w(f"| /ok latency (wrk) | p50 {ok['p50_us'] / 1000:.2f} ms, p99 {ok['p99_us'] / 1000:.2f} ms, "
      f"max {ok['max_us'] / 1000:.1f} ms |\n")
w(f"| RSS | start {rss[0] / 1024:.1f} MiB, peak {max(rss) / 1024:.1f} MiB, end "
  f"{rss[-1] / 1024:.1f} MiB; after {warmup} s warm-up mean {mean_post / 1024:.1f} MiB, "
  f"trend {growth / 1024:+.2f} MiB over the window |\n")
w(f"| cache | {s['cache']['entries']:,} entries, {s['cache']['bytes'] / 1048576:.1f} MiB "
  f"of {s['cache']['max_bytes'] / 1048576:.0f} MiB, {s['cache']['evictions']:,} evictions |\n")
w(f"| hit rate | {s['hit_rate_percent']}% (api_calls_made {s['api_calls_made']:,}, "
  f"saved {s['api_calls_saved']:,}, coalesced {s['coalesced_requests']:,}) |\n")
w(f"| herds | {len(herds)} x 200 requests, {len(herd_calls)} upstream calls |\n")
w(f"| reloads | {applied} applied of {reloads} SIGHUPs |\n")
w(f"| good upstream | {good['total']:,} calls, errors seen by the daemon: {good_errors} |\n")
w(f"| bad upstream | {bad['total']:,} calls; daemon saw {up_bad['transport_errors']:,} "
  f"transport errors, {up_bad['timeouts']:,} timeouts, {up_bad['responses']['5xx']:,} 5xx, "
  f"{up_bad['status_429']:,} 429; breaker opened {up_bad['breaker']['opened']:,} times |\n")
if fault:
    st = ", ".join(f"{k}: {v:,}" for k, v in sorted(fault["statuses"].items()))
    w(f"| /fault answers (wrk) | {st}; transport errors "
      f"{fault['connect'] + fault['read'] + fault['write'] + fault['timeout']} |\n")
w(f"| errors by code | " + ", ".join(f"{k} {v:,}" for k, v in s["errors_by_code"].items()) + " |\n")
w("\n## Checks\n\n| check | result | value |\n|---|---|---|\n")
for name, good_, val in checks:
    w(f"| {name} | {'ok' if good_ else '**FAILED**'} | {val} |\n")
w("\n![RSS and req/s over time](soak.png)\n")
sys.exit(1 if failed else 0)
PY
soak_failed=${soak_failed:-0}

cat >"$tmp/soak.gp" <<EOF
set terminal pngcairo size 1000,500 font ",10"
set output "$tmp/soak.png"
set datafile separator ","
set key top left
set xlabel "seconds"
set ylabel "RSS (MiB)"
set y2label "requests / s"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set grid
set title "coalesced soak: RSS and throughput ($duration s, mixed hits, herds, faults, reloads)"
plot "$tmp/soak.csv" skip 1 using 1:(\$2/1024) axes x1y1 with lines lw 2 title "RSS (MiB)", \
     "" skip 1 using 1:3 axes x1y2 with lines title "req/s"
EOF
gnuplot "$tmp/soak.gp" || die "gnuplot failed"

mkdir -p "$out"
cp "$tmp/soak.csv" "$out/soak.csv"
cp "$tmp/soak.png" "$out/soak.png"
cp "$tmp/soak.md" "$out/soak.md"
cat "$tmp/soak.md" >&2
if ((soak_failed)); then
  keep=$build/soak-last
  rm -rf "$keep" && mkdir -p "$keep"
  cp "$tmp"/*.csv "$tmp"/*.json "$tmp"/*.jsonl "$tmp"/*.txt "$tmp"/*.ini "$tmp/daemon.log" "$keep/" 2>/dev/null || true
  say "FAILED; samples, stats, wrk output and the daemon log kept in $keep"
  tail -20 "$tmp/daemon.log" >&2
  exit 1
fi
say "passed; results in $out/soak.{md,csv,png}"
