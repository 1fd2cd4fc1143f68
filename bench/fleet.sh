#!/usr/bin/env bash
# bench/fleet.sh — the fleet benchmark (issue 7): upstream calls and latency
# of one herd spread over 1, 2 and 3 instances, for coalesced alone,
# coalesced sharing one Redis (fleet mode), nginx and Varnish (which cannot
# coalesce across instances).
#
#   bench/fleet.sh                       # Release build in build-bench2/, 3 reps
#   REPS=5 HERD=600 bench/fleet.sh
#   INSTANCES="1 2 3 4" PEERS="coalesced coalesced_redis" bench/fleet.sh
#
# One test upstream (every answer after 200 ms) and one redis-server
# (`--save '' --appendonly no`) on free 127.0.0.1 ports; then max(K)
# instances of each peer in front of the upstream, each on its own port
# with its own directories, configured as bench/run.sh configures them
# (ttl 5 s, stale 30 s, upstream timeout 2 s, 2 workers; nginx and Varnish
# from bench/peers/). coalesced_redis instances add `--redis` and are used
# only once every one reports its Redis connections ready.
#
# For each K and each peer, REPS times: the upstream's counters reset, then
# one bench_herd fires HERD (300) identical cold requests, all started in
# the same loop iteration, request i to instance i % K (the first K of the
# peer's instances), on a key no instance has seen (a path unique to the
# run, peer, K and rep). Recorded: the upstream calls, statuses, X-Cache,
# p50/p90/p99/max. Expected: coalesced_redis 1 call at every K, the others
# K (one per instance).
#
# Writes docs/bench/fleet.{md,csv} and fleet.png (gnuplot). Results go to
# temporary files first: a failed run never replaces earlier results.
# Every process started (the upstream, redis-server, each instance) is a
# child of this script and stopped by PID (EXIT trap, bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

reps=${REPS:-3}
herd_n=${HERD:-300}
read -r -a ks <<<"${INSTANCES:-1 2 3}"
delay_ms=200
ttl_s=5
out=docs/bench
jobs=${JOBS:-2}

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_tools gnuplot nginx varnishd
command -v redis-server >/dev/null || die "redis-server is not installed (make deps)"
command -v redis-cli >/dev/null || die "redis-cli is not installed (make deps)"
bench_build
bench_workdirs coalesce-fleet
start_upstream "$delay_ms"
# shellcheck source=bench/peers/peers.sh
source "$root/bench/peers/peers.sh"

max_k=0
for k in "${ks[@]}"; do
  [[ $k =~ ^[1-9][0-9]*$ ]] || die "INSTANCES: '$k' is not a count"
  ((k > max_k)) && max_k=$k
done

# ---- Redis ---------------------------------------------------------------------------
redis_port=$(free_port)
mkdir "$tmp/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$tmp/redis" --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 400); do
  [[ $(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null) == PONG ]] && break
  alive "$redis_pid" || die "redis-server exited: $(tail -5 "$tmp/redis.log")"
  sleep 0.025
done
[[ $(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null) == PONG ]] ||
  die "redis-server did not answer within 10 s"
redis_url=redis://127.0.0.1:$redis_port

# ---- peers ------------------------------------------------------------------------------
# A peer's PROFILE here is the instance number, 1..max_k: nginx's and
# Varnish's start/stop functions (bench/peers/peers.sh) use it to name the
# instance's directory and its PIDS entry.
coalesced_args() {
  echo --upstream "$upstream" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --log-level warn --upstream-timeout 2s --workers 2 --stale 30s --ttl "${ttl_s}s"
}
start_coalesced() { # instance
  # shellcheck disable=SC2046
  coalesced_run "$1" $(coalesced_args)
}
stop_coalesced() { stop_pid "${PIDS[coalesced/$1]}"; }

# Fleet mode: the instance is used once its health says every Redis
# connection (one per worker loop, and its subscriptions) is ready.
start_coalesced_redis() { # instance
  # shellcheck disable=SC2046
  coalesced_run "redis-$1" $(coalesced_args) --redis "$redis_url"
  local state=
  for _ in $(seq 200); do
    state=$(curl -s --max-time 2 "$peer_admin/api/v1/shared/deduplication/health" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["redis"]["state"])' 2>/dev/null) || true
    [[ $state == connected ]] && return 0
    sleep 0.05
  done
  die "coalesced --redis instance $1: Redis state '$state' after 10 s"
}
stop_coalesced_redis() { stop_pid "${PIDS[coalesced_redis/$1]}"; }
version_coalesced() { "$coalesced" --version 2>&1 | head -n1 | awk '{print $NF}'; }

# The peers: both coalesced modes, and nginx and Varnish when installed.
declare -A peer_binary=([nginx]=nginx [varnish]=varnishd)
if [[ -n ${PEERS:-} ]]; then
  read -r -a peers <<<"$PEERS"
else
  peers=(coalesced coalesced_redis)
  for p in nginx varnish; do
    if command -v "${peer_binary[$p]}" >/dev/null; then peers+=("$p"); fi
  done
fi

declare -A PORT PIDS ADMIN
peer_up() { # peer instance
  peer_port='' peer_pids='' peer_admin=''
  "start_$1" "$2"
  PORT[$1/$2]=$peer_port
  PIDS[$1/$2]=$peer_pids
  ADMIN[$1/$2]=$peer_admin
}

# What fleet mode did, summed over the first K coalesced_redis instances:
# "leases waits l2_hits" from each one's stats (counters since its start).
fleet_counters() { # K
  local i urls=()
  for i in $(seq "$1"); do
    urls+=("${ADMIN[coalesced_redis/$i]}/api/v1/shared/deduplication/stats")
  done
  python3 - "${urls[@]}" <<'PY'
import json, sys, urllib.request
t = [0, 0, 0]
for url in sys.argv[1:]:
    with urllib.request.urlopen(url, timeout=5) as r:
        f = json.load(r).get("fleet", {})
    for n, k in enumerate(("leases_acquired", "waits", "l2_hits")):
        t[n] += f.get(k, 0)
print(*t)
PY
}

# ---- results ------------------------------------------------------------------------------
cat >"$tmp/fleet.py" <<'PY'
"""CSV rows from bench_herd's JSON, and the fleet report's tables."""
import csv, json, statistics, sys

COLS = ["peer", "instances", "rep", "requests", "upstream_calls", "errors",
        "statuses", "x_cache", "min_ms", "p50_ms", "p90_ms", "p99_ms",
        "max_ms", "fleet_leases", "fleet_waits", "fleet_l2_hits"]
NAMES = {"coalesced": "coalesced", "coalesced_redis": "coalesced+Redis",
         "nginx": "nginx", "varnish": "Varnish"}

def hist(h):
    return ";".join(f"{k}:{v}" for k, v in h.items())

def row(peer, k, rep, calls, js, before="", after=""):
    j = json.loads(js)
    fleet = {}
    if before and after:
        d = [int(a) - int(b) for a, b in zip(after.split(), before.split())]
        fleet = dict(zip(("fleet_leases", "fleet_waits", "fleet_l2_hits"), d))
    lat = j["latency_ms"]
    w = csv.DictWriter(sys.stdout, COLS, lineterminator="\n")
    w.writerow(dict(
        peer=peer, instances=k, rep=rep, requests=j["n"],
        upstream_calls=calls, errors=j["errors"],
        statuses=hist(j["status"]) + (";" + hist(j["error_kinds"]) if j["errors"] else ""),
        x_cache=hist(j["x_cache"]), min_ms=f'{lat["min"]:.2f}',
        p50_ms=f'{lat["p50"]:.2f}', p90_ms=f'{lat["p90"]:.2f}',
        p99_ms=f'{lat["p99"]:.2f}', max_ms=f'{lat["max"]:.2f}', **fleet))

def fleet_cell(r):
    if r["fleet_leases"] == "":
        return ""
    return f'{r["fleet_leases"]} / {r["fleet_waits"]} / {r["fleet_l2_hits"]}'

def med(g, col):
    return statistics.median(float(r[col]) for r in g)

def report(csvpath, mdpath, datpath):
    rows = list(csv.DictReader(open(csvpath)))
    groups = {}
    for r in rows:
        groups.setdefault((r["peer"], int(r["instances"])), []).append(r)
    peers = list(dict.fromkeys(r["peer"] for r in rows))
    ks = sorted({int(r["instances"]) for r in rows})
    md = ["## Upstream calls and p99 per instance count (medians of the reps)\n",
          "| instances | " + " | ".join(f"{NAMES.get(p, p)} calls | p99 ms"
                                      for p in peers) + " |",
          "|--:|" + "--:|--:|" * len(peers)]
    for k in ks:
        cells = []
        for p in peers:
            g = groups.get((p, k))
            cells += [f'{med(g, "upstream_calls"):.0f}', f'{med(g, "p99_ms"):.0f}'] if g else ["-", "-"]
        md.append(f"| {k} | " + " | ".join(cells) + " |")
    md += ["", "## Every configuration\n",
           "| peer | instances | requests | upstream calls (each rep) | statuses "
           "| X-Cache (median-p99 rep) | fleet leases / waits / L2 hits | "
           "p50 ms | p90 ms | p99 ms | max ms |",
           "|---|--:|--:|--:|---|---|--:|--:|--:|--:|--:|"]
    for p in peers:
        for k in ks:
            g = groups.get((p, k))
            if not g:
                continue
            rep = sorted(g, key=lambda r: float(r["p99_ms"]))[len(g) // 2]
            md.append(f'| {NAMES.get(p, p)} | {k} | {rep["requests"]} | '
                      f'{" / ".join(r["upstream_calls"] for r in g)} | '
                      f'{rep["statuses"].replace(";", " ")} | '
                      f'{rep["x_cache"].replace(";", " ")} | '
                      f'{fleet_cell(rep)} | {med(g, "p50_ms"):.1f} | {med(g, "p90_ms"):.1f} | '
                      f'{med(g, "p99_ms"):.1f} | {med(g, "max_ms"):.1f} |')
    open(mdpath, "a").write("\n".join(md) + "\n")
    # gnuplot: instances, then calls and p99 per peer
    with open(datpath, "w") as f:
        f.write("# instances " + " ".join(f"{p}_calls {p}_p99" for p in peers) + "\n")
        for k in ks:
            vals = []
            for p in peers:
                g = groups.get((p, k))
                vals += [f'{med(g, "upstream_calls"):g}', f'{med(g, "p99_ms"):.1f}'] if g else ["NaN", "NaN"]
            f.write(f"{k} " + " ".join(vals) + "\n")
    print(" ".join(NAMES.get(p, p).replace(" ", "") for p in peers))

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"row": row, "report": report}[cmd](*args)
PY
py() { python3 "$tmp/fleet.py" "$@"; }
csv_tmp=$tmp/fleet.csv
python3 -c "import sys; sys.path.insert(0, '$tmp'); import fleet; print(','.join(fleet.COLS))" >"$csv_tmp"

# ---- run ------------------------------------------------------------------------------------
bench_machine
versions="coalesced $(version_coalesced) ($build_type, $build/)"
for p in nginx varnish; do
  [[ " ${peers[*]} " == *" $p "* ]] && versions+=", $("version_$p")"
done
versions+=", $(redis-server --version | awk '{print $1, $2, $3}' | sed 's/ v=/ /;s/server //')"
say "bench: $machine"
say "bench: the clients, the upstream, redis-server and every instance share these $(nproc) cores"
say "bench: $versions; peers: ${peers[*]}; instances: ${ks[*]}; $reps reps of $herd_n requests"
started=$SECONDS

for peer in "${peers[@]}"; do
  for i in $(seq "$max_k"); do peer_up "$peer" "$i"; done
done
say "bench: $max_k instance(s) of each peer up after $((SECONDS - started)) s"

run_id=f$(date +%s)$$
for k in "${ks[@]}"; do
  for peer in "${peers[@]}"; do
    for rep in $(seq "$reps"); do
      post "$upstream/__upstream/reset"
      urls=()
      for i in $(seq "$k"); do
        urls+=(--url "http://127.0.0.1:${PORT[$peer/$i]}/$run_id/$peer/k$k/r$rep/item")
      done
      before='' after=''
      if [[ $peer == coalesced_redis ]]; then before=$(fleet_counters "$k"); fi
      js=$("$herd" "${urls[@]}" --n "$herd_n" --timeout-ms 15000 --json --quiet) || true
      [[ -n $js ]] || die "bench_herd failed on ${urls[*]}"
      sleep 0.2 # a late call (a waiter giving up) still counts
      calls=$(upstream_total)
      if [[ $peer == coalesced_redis ]]; then after=$(fleet_counters "$k"); fi
      py row "$peer" "$k" "$rep" "$calls" "$js" "$before" "$after" >>"$csv_tmp"
      tail -n1 "$csv_tmp" | awk -F, '{ printf "  %-16s x%s rep %s: %s req, %s upstream call(s), p50 %s p99 %s ms, %s %s\n",
        $1, $2, $3, $4, $5, $10, $12, $7, $8 }' >&2
    done
  done
done
for peer in "${peers[@]}"; do
  for i in $(seq "$max_k"); do "stop_$peer" "$i"; done
done
elapsed=$((SECONDS - started))

# ---- report ---------------------------------------------------------------------------------
mkdir -p "$out"
md_tmp=$tmp/fleet.md
cat >"$md_tmp" <<EOF
# Fleet: one herd over 1, 2 and 3 instances

Generated by \`bench/fleet.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), source
$(bench_rev), in ${elapsed} s. Raw figures, one row per rep: [fleet.csv](fleet.csv).
Issue 7: a herd of identical cold requests spread over K instances costs
K upstream calls when each instance coalesces only its own clients, and
1 when the instances share one flight per key through Redis
([docs/fleet.md](../fleet.md)).

- Machine: $machine.
  **The client (bench_herd), the test upstream, redis-server and every
  instance of every peer share these $(nproc) cores** (and the machine is
  shared with other work): compare rows of one run, not figures across
  runs or machines.
- Versions: $versions.
- Upstream: tests/upstream/testupstream, every answer after ${delay_ms} ms.
- Each peer runs ${max_k} instances, each on its own 127.0.0.1 port with its
  own cache and directories, configured as for bench/run.sh: 200s cached
  for ${ttl_s} s, stale 30 s, upstream timeout 2 s, 2 workers
  (\`coalesced --ttl ${ttl_s}s --stale 30s --upstream-timeout 2s --workers 2\`;
  nginx \`proxy_cache_lock\`, Varnish's waiting list: bench/peers/ and
  bench/README.md). "coalesced + Redis" is the same with
  \`--redis redis://127.0.0.1:PORT\`, all instances on one redis-server
  (\`--save '' --appendonly no\`).
- Each configuration ran $reps times: one herd of $herd_n identical cold
  requests, all opened in one libcurl multi loop by one bench_herd, request
  i sent to instance i mod K (so $herd_n / K each), on a key no instance had
  seen. Upstream calls are the test upstream's count for the herd; latency
  is per request from the moment the whole herd had been started to its
  last byte. Figures are medians of the reps.

![upstream calls and p99 per instance count and peer](fleet.png)

EOF
names=$(py report "$csv_tmp" "$md_tmp" "$tmp/fleet.dat")
cat >>"$md_tmp" <<'EOF'

## How to read it

- Calls: each nginx or Varnish instance (and each coalesced instance
  without Redis) lets exactly one request per key through to the upstream
  and parks the rest, so a herd over K instances costs K calls. coalesced
  with Redis takes one fleet lease per key: the lease holder calls the
  upstream, the other instances' leaders wait for its publish and read the
  shared value, so the herd costs one call whatever K.
- X-Cache: each instance's local leader answers MISS, its other clients
  COALESCED (nginx and Varnish: HIT), so a herd over K instances shows K
  MISSes either way. The fleet column (summed over the instances' stats)
  says what happened behind them with Redis: one lease taken, the other
  K - 1 leaders waited for it and read the value from Redis (L2 hits).
- p99: the upstream's 200 ms plus the herd's own cost on two shared cores.
  With Redis, the waiting instances add a publish and a read of the shared
  value (a few ms on loopback). nginx's waiters re-check the cache lock
  every 500 ms, hence its ~500 ms.

## How to reproduce

```sh
bench/fleet.sh                             # Release build in build-bench2/, 3 reps
REPS=1 bench/fleet.sh                      # a quick look
PEERS="coalesced coalesced_redis" bench/fleet.sh
```
EOF

if command -v gnuplot >/dev/null; then
  gnuplot <<EOF || say "bench: gnuplot failed, no plot"
set terminal pngcairo size 1000,440 noenhanced font ",10"
set output "$tmp/fleet.png"
names = '$names'
# peers side by side around each K, so that equal values stay visible
off(i) = 0.04 * (i - (words(names) + 1) / 2.0)
set key top left box opaque
set grid
set xrange [0.8:$max_k.2]
set xtics 1
set multiplot layout 1,2 title "One herd of $herd_n identical cold requests over K instances (upstream answers in ${delay_ms} ms; $(nproc) shared cores)"
set title "Upstream calls"
set xlabel "instances (K)"
set yrange [0:$max_k + 1]
set ytics 1
plot for [i=1:words(names)] "$tmp/fleet.dat" using (\$1 + off(i)):(column(2*i)) with linespoints lw 2 pt 4 + 2 * i ps 1.5 title word(names, i)
set title "p99 latency (ms)"
set key bottom right box opaque
set yrange [0:*]
set ytics autofreq
plot for [i=1:words(names)] "$tmp/fleet.dat" using (\$1 + off(i)):(column(2*i+1)) with linespoints lw 2 pt 4 + 2 * i ps 1.5 title word(names, i)
unset multiplot
EOF
else
  say "bench: gnuplot not installed: no plot (scripts/deps.sh deps/bench.txt)"
fi

mv "$csv_tmp" "$out/fleet.csv"
mv "$md_tmp" "$out/fleet.md"
[[ -f $tmp/fleet.png ]] && mv "$tmp/fleet.png" "$out/fleet.png"
say "bench: done in ${elapsed} s: $out/fleet.md"
cat "$out/fleet.md"
