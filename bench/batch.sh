#!/usr/bin/env bash
# bench/batch.sh — the batching benchmark (issue 8): upstream calls and
# client latency for N distinct ids requested at once, with request
# batching off and on.
#
#   bench/batch.sh                  # Release build in build-bench2/, 3 reps
#   REPS=5 SIZES="10 100 1000" bench/batch.sh
#
# One test upstream (every answer after 200 ms; its /batch/items answers
# {"data":[{"id":..,"name":..},...]} for every id= it is given) and two
# coalesced, each with 2 workers and its own config file: "on" has the route
#
#   [route /batch/items]  batch_param = id, batch_max = 20,
#                         batch_window = 2ms, batch_id_path = data[].id,
#                         batch_item_wrap = {"data":[ITEM]}, ttl = 30s
#
# and "off" the same route without the batch_* keys. Both keep the
# upstream's defaults (timeout 10 s, at most 64 connections per worker).
#
# For each N in SIZES (10 50 200 1000), each mode, REPS times: the
# upstream's counters reset, then one bench_herd opens N requests at once,
# /batch/items?id=K for K = 0..N-1, each id once, with a run=... parameter
# unique to the run, N, mode and rep (fresh keys: nothing cached, and the
# ids of one herd share their batch identity). Recorded: upstream calls,
# statuses, X-Cache, p50/p90/p99/max.
#
# Writes docs/bench/batch.{md,csv} and batch.png (gnuplot). Results go to
# temporary files first: a failed run never replaces earlier results.
# Every process started is a child of this script and stopped by PID (EXIT
# trap, bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

reps=${REPS:-3}
read -r -a sizes <<<"${SIZES:-10 50 200 1000}"
delay_ms=200
batch_max=20
batch_window=2ms
out=docs/bench
jobs=${JOBS:-2}

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_tools gnuplot
bench_build
bench_workdirs coalesce-batch
start_upstream "$delay_ms"
for n in "${sizes[@]}"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES: '$n' is not a count"
done

# ---- the two daemons ---------------------------------------------------------------
write_config() { # mode file
  cat >"$2" <<EOF
; bench/batch.sh, batching $1
[upstream default]
url = $upstream
timeout = 10s
max_connections = 64

[route /batch/items]
ttl = 30s
EOF
  if [[ $1 == on ]]; then
    cat >>"$2" <<EOF
batch_param = id
batch_max = $batch_max
batch_window = $batch_window
batch_id_path = data[].id
batch_item_wrap = {"data":[ITEM]}
EOF
  fi
}

declare -A PORT
modes=(off on)
for mode in "${modes[@]}"; do
  write_config "$mode" "$tmp/batch-$mode.ini"
  "$coalesced" --check-config "$tmp/batch-$mode.ini" >"$tmp/check-$mode.log" 2>&1 ||
    die "coalesced rejects the batching-$mode config: $(tail -3 "$tmp/check-$mode.log")"
  coalesced_run "batch-$mode" --config "$tmp/batch-$mode.ini" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --log-level warn --workers 2
  PORT[$mode]=$peer_port
done

# ---- results ------------------------------------------------------------------------------
cat >"$tmp/batch.py" <<'PY'
"""CSV rows from bench_herd's JSON, and the batching report's tables."""
import csv, json, statistics, sys

COLS = ["batching", "ids", "rep", "requests", "upstream_calls", "errors",
        "statuses", "x_cache", "min_ms", "p50_ms", "p90_ms", "p99_ms",
        "max_ms"]

def hist(h):
    return ";".join(f"{k}:{v}" for k, v in h.items())

def row(mode, n, rep, calls, js):
    j = json.loads(js)
    lat = j["latency_ms"]
    w = csv.DictWriter(sys.stdout, COLS, lineterminator="\n")
    w.writerow(dict(
        batching=mode, ids=n, rep=rep, requests=j["n"], upstream_calls=calls,
        errors=j["errors"],
        statuses=hist(j["status"]) + (";" + hist(j["error_kinds"]) if j["errors"] else ""),
        x_cache=hist(j["x_cache"]), min_ms=f'{lat["min"]:.2f}',
        p50_ms=f'{lat["p50"]:.2f}', p90_ms=f'{lat["p90"]:.2f}',
        p99_ms=f'{lat["p99"]:.2f}', max_ms=f'{lat["max"]:.2f}'))

def med(g, col):
    return statistics.median(float(r[col]) for r in g)

def report(csvpath, mdpath, datpath, batch_max):
    rows = list(csv.DictReader(open(csvpath)))
    groups = {}
    for r in rows:
        groups.setdefault((r["batching"], int(r["ids"])), []).append(r)
    sizes = sorted({int(r["ids"]) for r in rows})
    bm = int(batch_max)
    md = ["## Upstream calls and latency per id count (medians of the reps)\n",
          "| distinct ids | calls, off | calls, on | fewest possible | ids per call, on "
          "| p50 ms, off | p50 ms, on | p99 ms, off | p99 ms, on |",
          "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for n in sizes:
        off, on = groups.get(("off", n)), groups.get(("on", n))
        def f(g, col, fmt="{:.0f}"):
            return fmt.format(med(g, col)) if g else "-"
        per = f"{n / med(on, 'upstream_calls'):.1f}" if on else "-"
        md.append(f"| {n} | {f(off, 'upstream_calls')} | {f(on, 'upstream_calls')} | "
                  f"{-(-n // bm)} | {per} | {f(off, 'p50_ms')} | {f(on, 'p50_ms')} | "
                  f"{f(off, 'p99_ms')} | {f(on, 'p99_ms')} |")
    md += ["", "## Every configuration\n",
           "| batching | ids | upstream calls (each rep) | statuses | X-Cache "
           "(median-p99 rep) | p50 ms | p90 ms | p99 ms | max ms |",
           "|---|--:|--:|---|---|--:|--:|--:|--:|"]
    for mode in ("off", "on"):
        for n in sizes:
            g = groups.get((mode, n))
            if not g:
                continue
            rep = sorted(g, key=lambda r: float(r["p99_ms"]))[len(g) // 2]
            md.append(f'| {mode} | {n} | {" / ".join(r["upstream_calls"] for r in g)} | '
                      f'{rep["statuses"].replace(";", " ")} | '
                      f'{rep["x_cache"].replace(";", " ")} | '
                      f'{med(g, "p50_ms"):.1f} | {med(g, "p90_ms"):.1f} | '
                      f'{med(g, "p99_ms"):.1f} | {med(g, "max_ms"):.1f} |')
    open(mdpath, "a").write("\n".join(md) + "\n")
    with open(datpath, "w") as out:
        out.write("# ids calls_off calls_on p99_off p99_on fewest\n")
        for n in sizes:
            vals = []
            for col in ("upstream_calls", "p99_ms"):
                for mode in ("off", "on"):
                    g = groups.get((mode, n))
                    vals.append(f"{med(g, col):g}" if g else "NaN")
            out.write(f"{n} {vals[0]} {vals[1]} {vals[2]} {vals[3]} {-(-n // bm)}\n")

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"row": row, "report": report}[cmd](*args)
PY
py() { python3 "$tmp/batch.py" "$@"; }
csv_tmp=$tmp/batch.csv
python3 -c "import sys; sys.path.insert(0, '$tmp'); import batch; print(','.join(batch.COLS))" >"$csv_tmp"

# ---- run ------------------------------------------------------------------------------------
bench_machine
versions="coalesced $("$coalesced" --version 2>&1 | head -n1 | awk '{print $NF}') ($build_type, $build/)"
say "bench: $machine"
say "bench: the client, the upstream and both daemons share these $(nproc) cores"
say "bench: $versions; ids: ${sizes[*]}; $reps reps"
started=$SECONDS

run_id=b$(date +%s)$$
for n in "${sizes[@]}"; do
  for mode in "${modes[@]}"; do
    for rep in $(seq "$reps"); do
      post "$upstream/__upstream/reset"
      url="http://127.0.0.1:${PORT[$mode]}/batch/items?id={k}&run=$run_id-$n-$mode-$rep"
      js=$("$herd" --url "$url" --n "$n" --keys "$n" --timeout-ms 30000 --json --quiet) || true
      [[ -n $js ]] || die "bench_herd failed on $url"
      sleep 0.2 # a late call still counts
      calls=$(upstream_total)
      py row "$mode" "$n" "$rep" "$calls" "$js" >>"$csv_tmp"
      tail -n1 "$csv_tmp" | awk -F, '{ printf "  batching %-3s %5s ids rep %s: %s upstream call(s), p50 %s p99 %s ms, %s %s\n",
        $1, $2, $3, $5, $10, $12, $7, $8 }' >&2
    done
  done
done
elapsed=$((SECONDS - started))

# ---- report ---------------------------------------------------------------------------------
mkdir -p "$out"
md_tmp=$tmp/batch.md
cat >"$md_tmp" <<EOF
# Batching: N distinct ids, one upstream call per $batch_max

Generated by \`bench/batch.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), source
$(bench_rev), in ${elapsed} s. Raw figures, one row per rep: [batch.csv](batch.csv).
Issue 8: single-id requests on a route whose upstream accepts many ids
gathered into one upstream call per \`batch_max\` ids
([docs/batching.md](../batching.md)).

- Machine: $machine.
  **The client (bench_herd), the test upstream and both coalesced share
  these $(nproc) cores** (and the machine is shared with other work):
  compare rows of one run, not figures across runs or machines.
- Versions: $versions.
- Upstream: tests/upstream/testupstream, every answer after ${delay_ms} ms
  whatever the number of ids in it.
- coalesced, \`--workers 2\`, upstream defaults (timeout 10 s,
  \`max_connections = 64\` per worker: 128 calls at a time), route \`/batch/items\` with \`ttl = 30s\`; batching on adds
  \`batch_param = id\`, \`batch_max = $batch_max\`, \`batch_window = $batch_window\`,
  \`batch_id_path = data[].id\`, \`batch_item_wrap = {"data":[ITEM]}\`.
  Both configurations ran side by side, each in its own process.
- Each (N, mode) ran $reps times: one bench_herd opening N requests
  \`/batch/items?id=K\` (K = 0 … N-1, each id once) in one libcurl multi
  loop, on ids nothing had cached (a \`run=\` parameter unique to the rep).
  Latency is per request from the moment the whole herd had been started
  to its last byte. Figures are medians of the reps.

![upstream calls and p99 per id count, batching off and on](batch.png)

EOF
py report "$csv_tmp" "$md_tmp" "$tmp/batch.dat" "$batch_max"
cat >>"$md_tmp" <<EOF

## How to read it

- Calls, off: one upstream call per id. On: one per batch; "fewest
  possible" is ⌈N / $batch_max⌉. A batch goes out when $batch_max ids are
  in or $batch_window after its first id, so a herd whose ids arrive more
  slowly than $batch_max per $batch_window (the client opening N
  connections and the daemon accepting them on two shared cores) makes
  some smaller batches.
- Latency, off: at most 128 upstream calls at a time (64 connections per
  worker, 2 workers), so beyond 128 ids the calls queue in waves of
  ${delay_ms} ms (N = 1000: about 8 waves, p99 near 8 × ${delay_ms} ms). On: the
  batches' calls fit in the pool, so every id is answered after about one
  upstream delay plus the gathering window and the cost of splitting the
  answers.
- X-Cache: every id is its own key, so each is a MISS (the leader of its
  own flight), batched or not.

## How to reproduce

\`\`\`sh
bench/batch.sh                      # Release build in build-bench2/, 3 reps
REPS=1 SIZES="50 1000" bench/batch.sh
\`\`\`
EOF

if command -v gnuplot >/dev/null; then
  gnuplot <<EOF || say "bench: gnuplot failed, no plot"
set terminal pngcairo size 1000,440 noenhanced font ",10"
set output "$tmp/batch.png"
set grid
set logscale x
set xlabel "distinct ids requested at once (N)"
set key top left box opaque
set multiplot layout 1,2 title "N distinct ids, batching off and on (batch_max $batch_max, window $batch_window; upstream answers in ${delay_ms} ms; $(nproc) shared cores)"
set title "Upstream calls (log scale)"
set logscale y
plot "$tmp/batch.dat" using 1:2 with linespoints lw 2 pt 6 ps 1.5 title "batching off", \
     "" using 1:3 with linespoints lw 2 pt 7 ps 1.5 title "batching on", \
     "" using 1:6 with lines dt 2 lc rgb "gray40" title "ceil(N / $batch_max)"
set title "p99 latency (ms)"
unset logscale y
set yrange [0:*]
plot "$tmp/batch.dat" using 1:4 with linespoints lw 2 pt 6 ps 1.5 title "batching off", \
     "" using 1:5 with linespoints lw 2 pt 7 ps 1.5 title "batching on"
unset multiplot
EOF
else
  say "bench: gnuplot not installed: no plot (scripts/deps.sh deps/bench.txt)"
fi

mv "$csv_tmp" "$out/batch.csv"
mv "$md_tmp" "$out/batch.md"
[[ -f $tmp/batch.png ]] && mv "$tmp/batch.png" "$out/batch.png"
say "bench: done in ${elapsed} s: $out/batch.md"
cat "$out/batch.md"
