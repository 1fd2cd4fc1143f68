#!/usr/bin/env bash
# bench/run.sh (`make bench`) — the daemon benchmark: coalesced, nginx and
# Varnish in front of the same slow test upstream, side by side, in one run
# on one machine (issue 5).
#
#   bench/run.sh                  # Release build in build-bench2/, 3 reps
#   BUILD=build bench/run.sh      # reuse an existing build directory
#   REPS=5 WRK_SECONDS=5 PEERS=coalesced bench/run.sh
#
# Scenarios (DESIGN.md §6), each repeated $REPS times on fresh cold keys
# (a unique path prefix per run, scenario and rep), upstream counters and
# daemon stats reset before each rep:
#   a  200 identical cold requests at once      upstream calls, latency
#   b  1,000 identical cold requests at once
#   c  50 keys x 20 requests, all at once
#   d  200 requests on a just-stale key         (past the 5 s ttl: STALE, 1 refresh)
#   e  200 cold requests, upstream answers 500
#   f  200 cold requests, upstream hangs        (upstream timeout 2s)
#   g  warm hits with wrk -t2 -c64, 1 KiB and 64 KiB bodies, and the
#      ceiling: a static nginx `return 200` of a 1 KiB body
#   h  memory empty, warmed up and with 100,000 distinct 1 KiB entries cached
#      (every peer: RSS or summed Pss, plus nginx's cache files)
# The upstream (tests/upstream) answers after 200 ms unless a scenario says
# otherwise in the query string. Every server caches 200s for 5 s, serves
# them stale for 30 s more while one refresh runs, and gives up on the
# upstream after 2 s; the peers' configurations are in bench/peers/ and
# explained in bench/README.md.
#
# A peer is functions: start_<peer> PROFILE (starts an instance and sets
# peer_port, peer_pids, peer_admin), stop_<peer> PROFILE, and optional
# reset_<peer> PROFILE (zero its stats), stats_<peer> and version_<peer>;
# coalesced's are below, nginx's and Varnish's in bench/peers/peers.sh.
# PROFILE is main (ttl 5s, stale 30s, upstream timeout 2s), fresh (a new
# main instance for each rep of the failure scenarios, so a tripped circuit
# breaker never leaks into another measurement) or mem (main with a 300 s
# ttl, so nothing expires while the cache fills).
#
# Writes docs/bench/peers.{md,csv} and peers-latency.png, peers-hits.png
# (gnuplot). Results go to temporary files first: a failed run never
# replaces earlier results. Every process started is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

reps=${REPS:-3}
wrk_seconds=${WRK_SECONDS:-10}
mem_entries=${MEM_ENTRIES:-100000}
scenarios=${SCENARIOS:-a b c d e f g h} # a subset for a quick look
read -r -a mem_peers <<<"${MEM_PEERS:-coalesced varnish nginx}"
ceiling=${CEILING:-1} # 0: no static-nginx ceiling in scenario g
floor=${FLOOR:-1}     # 0: no herds straight at the upstream in a-c
ttl_s=5               # every peer's fresh lifetime (coalesced --ttl 5s)
delay_ms=200
out=${OUT:-docs/bench}
jobs=${JOBS:-2}

# say, die, the build, process bookkeeping, the upstream, machine info.
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# ---- tools and build ----------------------------------------------------------
bench_tools wrk gnuplot nginx varnishd
bench_build

# ---- process bookkeeping and the upstream ---------------------------------------
bench_workdirs coalesce-bench
start_upstream "$delay_ms"

# ---- peers ------------------------------------------------------------------------
start_coalesced() { # profile
  local args=(--upstream "$upstream" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    --log-level warn --upstream-timeout 2s --workers 2 --stale 30s)
  case $1 in
  main | fresh) args+=(--ttl "${ttl_s}s") ;;
  mem) args+=(--ttl 300s) ;;
  esac
  coalesced_run "$1" "${args[@]}"
}
stop_coalesced() { # profile
  local p
  for p in ${PIDS[coalesced/$1]}; do stop_pid "$p"; done
}
reset_coalesced() { # profile
  post "${ADMIN[coalesced/$1]}/api/v1/shared/deduplication/stats/reset"
}
stats_coalesced() { # profile: the daemon's stats JSON
  curl -s --max-time 5 "${ADMIN[coalesced/$1]}/api/v1/shared/deduplication/stats"
}
version_coalesced() { "$coalesced" --version 2>&1 | head -n1; }

# "direct": no proxy, the herd goes straight to the upstream (the floor).
start_direct() {
  peer_port=${upstream##*:}
  peer_pids=
}
stop_direct() { :; }

# nginx, Varnish and the static-nginx ceiling.
# shellcheck source=bench/peers/peers.sh
source "$root/bench/peers/peers.sh"

# The peers of this run: coalesced, then any other that has a start_<peer>
# and its server installed.
declare -A peer_binary=([nginx]=nginx [varnish]=varnishd)
if [[ -n ${PEERS:-} ]]; then
  read -r -a peers <<<"$PEERS"
else
  peers=(coalesced)
  for p in nginx varnish; do
    if declare -F "start_$p" >/dev/null && command -v "${peer_binary[$p]}" >/dev/null; then
      peers+=("$p")
    fi
  done
fi

declare -A PORT PIDS ADMIN
peer_up() { # peer profile
  peer_port='' peer_pids='' peer_admin=''
  "start_$1" "$2"
  PORT[$1/$2]=$peer_port
  PIDS[$1/$2]=$peer_pids
  ADMIN[$1/$2]=$peer_admin
}
peer_down() { "stop_$1" "$2"; }
reset_all() { # peer profile: zero the upstream's counters and the peer's stats
  post "$upstream/__upstream/reset"
  if declare -F "reset_$1" >/dev/null; then "reset_$1" "$2"; fi
}
rss_kib() { # pids...: one process's VmRSS; several processes' summed Pss
  # (their shared pages, e.g. nginx's keys zone, counted once in all)
  local p sum=0 v
  if (($# == 1)); then
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0
    return
  fi
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# ---- results ------------------------------------------------------------------------
cat >"$tmp/bench.py" <<'PY'
"""CSV rows from bench_herd / wrk output, and the markdown report."""
import csv, json, statistics, sys

COLS = ["peer", "scenario", "rep", "requests", "upstream_calls", "errors",
        "statuses", "x_cache", "min_ms", "p50_ms", "p90_ms", "p99_ms",
        "max_ms", "req_per_s", "rss_empty_kib", "rss_full_kib", "entries",
        "cache_bytes", "key_bytes", "head_bytes", "sent_p50_ms", "sent_p99_ms",
        "rss_warm_kib", "files_kib"]

def hist(h):
    return ";".join(f"{k}:{v}" for k, v in h.items())

def row(**kw):
    w = csv.DictWriter(sys.stdout, COLS, lineterminator="\n")
    w.writerow({c: kw.get(c, "") for c in COLS})

def herd_row(peer, scen, rep, calls, js):
    j = json.loads(js)
    lat = j["latency_ms"]
    row(peer=peer, scenario=scen, rep=rep, requests=j["n"],
        upstream_calls=calls, errors=j["errors"],
        statuses=hist(j["status"]) + (";" + hist(j["error_kinds"]) if j["errors"] else ""),
        x_cache=hist(j["x_cache"]), min_ms=f'{lat.get("min", 0):.2f}',
        p50_ms=f'{lat["p50"]:.2f}', p90_ms=f'{lat["p90"]:.2f}',
        p99_ms=f'{lat["p99"]:.2f}', max_ms=f'{lat["max"]:.2f}',
        req_per_s=f'{j["n"] / (j["wall_ms"] / 1000):.0f}' if j["wall_ms"] else "",
        **sent_cols(j))

def sent_cols(j):
    """p50/p99 from each request's own send (bench_herd's sent_latency_ms)."""
    s = j.get("sent_latency_ms")
    if not s:
        return {}
    return {"sent_p50_ms": f'{s["p50"]:.2f}', "sent_p99_ms": f'{s["p99"]:.2f}'}

def wrk_row(peer, scen, rep, calls, text):
    line = next(l for l in text.splitlines() if l.startswith("WRK "))
    j = json.loads(line[4:])
    secs = j["duration_us"] / 1e6
    row(peer=peer, scenario=scen, rep=rep, requests=j["requests"],
        upstream_calls=calls, errors=j["errors"] + j["non2xx"],
        statuses=f'non2xx:{j["non2xx"]}', x_cache="",
        min_ms=f'{j["min_us"] / 1000:.3f}', p50_ms=f'{j["p50_us"] / 1000:.3f}',
        p90_ms=f'{j["p90_us"] / 1000:.3f}', p99_ms=f'{j["p99_us"] / 1000:.3f}',
        max_ms=f'{j["max_us"] / 1000:.3f}',
        req_per_s=f'{j["requests"] / secs:.0f}')

def mem_row(peer, scen, rep, calls, empty, warm, full, files, stats, head,
            template, js):
    j = json.loads(js)
    # mean length of the request targets: the template with {k} = 0..n-1
    n = j["n"]
    digits = sum(len(str(k)) for k in range(n)) / n
    path = template.split("//", 1)[1].split("/", 1)[1]
    key_bytes = len(path) + 1 - 3 + digits
    entries = cache_bytes = ""
    if stats:
        try:
            s = json.loads(stats)
            entries, cache_bytes = s["cache"]["entries"], s["cache"]["bytes"]
        except (ValueError, KeyError):
            pass
    row(peer=peer, scenario=scen, rep=rep, requests=j["n"],
        upstream_calls=calls, errors=j["errors"], statuses=hist(j["status"]),
        x_cache=hist(j["x_cache"]), p50_ms=f'{j["latency_ms"]["p50"]:.2f}',
        p99_ms=f'{j["latency_ms"]["p99"]:.2f}',
        req_per_s=f'{j["n"] / (j["wall_ms"] / 1000):.0f}',
        rss_empty_kib=empty, rss_warm_kib=warm,
        rss_full_kib=str(int(full) + int(files or 0)), files_kib=files,
        entries=entries,
        cache_bytes=cache_bytes, key_bytes=f"{key_bytes:.1f}",
        head_bytes=head)

TITLES = {
    "a_cold200": "a. 200 identical cold requests",
    "b_cold1000": "b. 1,000 identical cold requests",
    "c_keys50x20": "c. 50 keys x 20 requests",
    "d_stale200": "d. 200 requests, just-stale key",
    "e_error500": "e. 200 cold, upstream answers 500",
    "f_hang": "f. 200 cold, upstream hangs (timeout 2s)",
    "g_hit_1k": "g. warm hits, 1 KiB body",
    "g_hit_64k": "g. warm hits, 64 KiB body",
    "h_mem": "h. memory",
}
SHORT = {"a_cold200": "a 200 cold", "b_cold1000": "b 1000 cold",
         "c_keys50x20": "c 50x20", "d_stale200": "d stale",
         "e_error500": "e 500", "f_hang": "f hang"}
CEILING = "nginx_static"
FLOOR = "direct"
NAMES = {CEILING: "static nginx (ceiling)", FLOOR: "no proxy (floor)"}
# coalesced's targets (issue 5): (scenario, max upstream calls, max p99 ms)
HERD_TARGETS = {"a_cold200": (1, 205), "b_cold1000": (1, 260),
                "c_keys50x20": (50, 260), "d_stale200": (1, 10),
                "e_error500": (1, None), "f_hang": (1, 2010)}
MEM_TARGET = 1024 + 256  # RSS growth per 1 KiB entry, bytes

def med(rows, col, fmt="{:.1f}"):
    vals = [float(r[col]) for r in rows if r[col] != ""]
    return fmt.format(statistics.median(vals)) if vals else "-"

def medf(rows, col):
    vals = [float(r[col]) for r in rows if r[col] != ""]
    return statistics.median(vals) if vals else None

def mem_per_entry(g):
    return statistics.median(
        (float(r["rss_full_kib"]) - float(r["rss_empty_kib"])) * 1024 /
        float(r["requests"]) for r in g)

def summary(groups, peers):
    """The issue's table: one row per scenario, one column per peer, and
    whether coalesced meets its target."""
    others = [p for p in peers if p != "coalesced"]
    md = ["## Side by side (medians of the reps; calls = upstream calls)\n",
          "The last peer column is the machine's bound: the same herd sent "
          "straight to the upstream (a-c), nginx answering a fixed body "
          "from its configuration (1 KiB hits).\n",
          "| scenario | measure | " + " | ".join(peers) +
          " | floor / ceiling | coalesced's target | met |",
          "|---|---|" + "--:|" * (len(peers) + 1) + "---|:-:|"]
    def ok(b):
        return "yes" if b else "**no**"
    for scen, (max_calls, max_p99) in HERD_TARGETS.items():
        if (scen, "coalesced") not in groups:
            continue
        cells_c, cells_s, cells_p = [], [], []
        for p in peers + [FLOOR]:
            g = groups.get((scen, p))
            blank = "-" if p != FLOOR else ""
            cells_c.append(med(g, "upstream_calls", "{:.0f}") if g else blank)
            cells_s.append(med(g, "sent_p99_ms") if g else blank)
            cells_p.append(med(g, "p99_ms") if g else blank)
        g = groups[(scen, "coalesced")]
        calls, p99 = medf(g, "upstream_calls"), medf(g, "sent_p99_ms")
        worst = max(float(r["upstream_calls"]) for r in g)
        md.append(f"| {TITLES[scen]} | calls | " + " | ".join(cells_c) +
                  f" | {max_calls} every rep | {ok(worst <= max_calls)} |")
        if max_p99:
            md.append(f"| | p99 ms from send | " + " | ".join(cells_s) +
                      f" | ≤ {max_p99} | {ok(p99 is not None and p99 <= max_p99)} |")
        else:
            md.append(f"| | p99 ms from send | " + " | ".join(cells_s) + " | | |")
        md.append(f"| | p99 ms from the herd's start | " + " | ".join(cells_p) +
                  " | | |")
    ceil = groups.get(("g_hit_1k", CEILING))
    for scen in ("g_hit_1k", "g_hit_64k"):
        if (scen, "coalesced") not in groups:
            continue
        rps = {p: medf(groups[(scen, p)], "req_per_s")
               for p in peers if (scen, p) in groups}
        p99 = {p: medf(groups[(scen, p)], "p99_ms")
               for p in peers if (scen, p) in groups}
        ng = rps.get("nginx")
        if scen == "g_hit_1k":
            target = "≥ 1.3 × nginx"
            met = ok(ng is not None and rps["coalesced"] >= 1.3 * ng) if ng else "-"
        else:
            target = "≥ nginx"
            met = ok(rps["coalesced"] >= ng) if ng else "-"
        c = medf(ceil, "req_per_s") if ceil and scen == "g_hit_1k" else None
        cp = medf(ceil, "p99_ms") if ceil and scen == "g_hit_1k" else None
        md.append(f"| {TITLES[scen]} | req/s | " +
                  " | ".join(f"{rps[p]:.0f}" if p in rps else "-" for p in peers) +
                  (f" | {c:.0f}" if c else " | ") + f" | {target} | {met} |")
        if scen == "g_hit_1k":
            met = ok(p99["coalesced"] <= p99["nginx"]) if "nginx" in p99 else "-"
            md.append("| | p99 ms | " +
                      " | ".join(f"{p99[p]:.2f}" if p in p99 else "-" for p in peers) +
                      (f" | {cp:.2f}" if cp else " | ") + f" | ≤ nginx | {met} |")
            if c:
                md.append("| | share of the ceiling | " +
                          " | ".join(f"{rps[p] / c:.0%}" if p in rps else "-"
                                     for p in peers) + " | 100% | | |")
        else:
            md.append("| | p99 ms | " +
                      " | ".join(f"{p99[p]:.2f}" if p in p99 else "-" for p in peers) +
                      " | | | |")
    g = groups.get(("h_mem", "coalesced"))
    if g:
        per = mem_per_entry(g)
        cells = []
        for p in peers:
            pg = groups.get(("h_mem", p))
            cells.append(f"{mem_per_entry(pg):.0f}" if pg else "-")
        md.append("| h. memory growth per 1 KiB entry | bytes | " +
                  " | ".join(cells) +
                  f" | | ≤ {MEM_TARGET} | {ok(per <= MEM_TARGET)} |")
    return md

def report(csvpath, mdpath, latdat, hitdat):
    rows = list(csv.DictReader(open(csvpath)))
    groups = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["peer"]), []).append(r)
    allpeers = list(dict.fromkeys(r["peer"] for r in rows))
    peers = [p for p in allpeers if p not in (CEILING, FLOOR)]
    latpeers = peers + [p for p in allpeers if p == FLOOR]
    md = summary(groups, peers)
    md.append("")
    md.append("## Herds\n")
    md.append("Latency per request, medians of the reps: from its own send "
              "(as wrk measures), and from the moment the whole herd had been "
              "started (which adds the client opening N connections on the "
              "same cores).\n")
    md.append("| scenario | peer | requests | upstream calls (each rep) | "
              "statuses | X-Cache | p50 ms from send | p99 ms from send | "
              "p50 ms from start | p99 ms from start | max ms from start |")
    md.append("|---|---|--:|--:|---|---|--:|--:|--:|--:|--:|")
    lat = {}
    for scen in SHORT:
        for peer in latpeers:
            g = groups.get((scen, peer))
            if not g:
                continue
            # the rep with the median p99 represents the statuses / X-Cache
            rep = sorted(g, key=lambda r: float(r["p99_ms"]))[len(g) // 2]
            calls = " / ".join(r["upstream_calls"] for r in g)
            md.append(f'| {TITLES[scen]} | {NAMES.get(peer, peer)} | {rep["requests"]} | {calls} | '
                      f'{rep["statuses"].replace(";", " ")} | '
                      f'{rep["x_cache"].replace(";", " ")} | '
                      f'{med(g, "sent_p50_ms")} | {med(g, "sent_p99_ms")} | '
                      f'{med(g, "p50_ms")} | {med(g, "p99_ms")} | {med(g, "max_ms")} |')
            lat.setdefault(scen, {})[peer] = med(g, "sent_p99_ms", "{:.3f}")
    md.append("")
    md.append(f"## Warm hits (wrk -t2 -c64)\n")
    md.append("| body | peer | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | upstream calls |")
    md.append("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    hits = {}
    for scen, body in (("g_hit_1k", "1 KiB"), ("g_hit_64k", "64 KiB")):
        for peer in allpeers:
            g = groups.get((scen, peer))
            if not g:
                continue
            name = NAMES.get(peer, peer)
            md.append(f'| {body} | {name} | {med(g, "req_per_s", "{:.0f}")} | '
                      f'{med(g, "p50_ms", "{:.2f}")} | {med(g, "p90_ms", "{:.2f}")} | '
                      f'{med(g, "p99_ms", "{:.2f}")} | {med(g, "max_ms", "{:.2f}")} | '
                      f'{med(g, "errors", "{:.0f}")} | '
                      f'{" / ".join(r["upstream_calls"] for r in g)} |')
            hits.setdefault(body, {})[peer] = med(g, "req_per_s", "{:.0f}")
    md.append("")
    memrows = [r for r in rows if r["scenario"] == "h_mem"]
    if memrows:
        md.append(f'## Memory ({int(memrows[0]["requests"]):,} distinct 1 KiB '
                  'bodies cached)\n')
        md.append("| peer | RSS empty MiB | RSS warmed up MiB | full MiB "
                  "(RSS + cache files) | growth per entry B (above empty / "
                  "above warmed up) | "
                  "cache accounting per entry B | overhead beyond key, head, body B "
                  "(RSS above empty / accounting) | entries | fill req/s |")
        md.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in peers:
        g = groups.get(("h_mem", peer))
        if not g:
            continue
        per = mem_per_entry(g)
        own = [float(r["cache_bytes"]) / float(r["entries"]) for r in g
               if r["entries"] not in ("", "0")]
        own = statistics.median(own) if own else None
        payload = statistics.median(1024 + float(r["key_bytes"]) +
                                    float(r["head_bytes"] or 0) for r in g)
        over = f"{per - payload:.0f} / " + (f"{own - payload:.0f}" if own else "-")
        warm = [(float(r["rss_full_kib"]) - float(r["rss_warm_kib"])) * 1024 /
                float(r["requests"]) for r in g if r.get("rss_warm_kib")]
        warm_s = f"{statistics.median(warm):.0f}" if warm else "-"
        md.append(f'| {peer} | {float(med(g, "rss_empty_kib")) / 1024:.1f} | '
                  f'{float(med(g, "rss_warm_kib")) / 1024 if warm else 0:.1f} | '
                  f'{float(med(g, "rss_full_kib")) / 1024:.1f} | {per:.0f} / {warm_s} | '
                  f'{f"{own:.0f}" if own else "-"} | {over} | '
                  f'{med(g, "entries", "{:.0f}")} | {med(g, "req_per_s", "{:.0f}")} |')
    open(mdpath, "a").write("\n".join(md) + "\n")
    with open(latdat, "w") as f:
        f.write("scenario " + " ".join(
            "no-proxy-floor" if p == FLOOR else p for p in latpeers) + "\n")
        for scen in SHORT:
            if scen in lat:
                f.write(f'"{SHORT[scen]}" ' +
                        " ".join(lat[scen].get(p, "NaN") for p in latpeers) + "\n")
    with open(hitdat, "w") as f:
        hitpeers = peers + [p for p in allpeers if p == CEILING]
        names = {CEILING: "static-nginx-ceiling"}
        f.write("body " + " ".join(names.get(p, p) for p in hitpeers) + "\n")
        for body, v in hits.items():
            f.write(f'"{body}" ' + " ".join(v.get(p, "NaN") for p in hitpeers) + "\n")
    print(len(latpeers) + 1, len(hitpeers) + 1)

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"herd": herd_row, "wrk": wrk_row, "mem": mem_row, "report": report}[cmd](*args)
PY
py() { python3 "$tmp/bench.py" "$@"; }

csv_tmp=$tmp/peers.csv
python3 -c "import sys; sys.path.insert(0, '$tmp'); import bench; print(','.join(bench.COLS))" >"$csv_tmp"

# wrk prints its figures through this script's done(): one JSON line.
cat >"$tmp/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"bytes":%d,"min_us":%d,"p50_us":%d,' ..
    '"p90_us":%d,"p99_us":%d,"max_us":%d,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency.min,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
LUA

run_id=r$(date +%s)$$
progress() { # peer scenario rep: the last CSV row, readable
  tail -n1 "$csv_tmp" | awk -F, -v p="$1" -v s="$2" -v r="$3" '{
    printf "  %-12s %-10s rep %s: %s req, %s upstream call(s), p50 %s p99 %s ms, %s req/s  %s %s\n",
      s, p, r, $4, $5, $10, $12, $14, $7, $8 }' >&2
}

# ---- scenarios --------------------------------------------------------------------------
# profile "fresh": a new instance for each rep (and peer), so that what a
# failing upstream does to the circuit breaker stays within that rep.
# The cold herds a-c also go straight to the upstream ("direct"): no proxy
# at all, so its latency is this machine's floor for the scenario (the
# upstream's 200 ms plus the client and the upstream sharing the cores).
herd_scenario() { # id profile n keys query
  local id=$1 profile=$2 n=$3 keys=$4 query=$5 peer rep url js calls
  local herd_peers=("${peers[@]}")
  if ((floor)) && [[ $profile == main && $id == [abc]_* ]]; then herd_peers+=(direct); fi
  for peer in "${herd_peers[@]}"; do
    for rep in $(seq "$reps"); do
      if [[ $profile == fresh ]]; then peer_up "$peer" fresh; fi
      reset_all "$peer" "$profile"
      url="http://127.0.0.1:${PORT[$peer/$profile]}/$run_id/$id/$peer/$rep/item"
      ((keys > 1)) && url+="{k}"
      [[ -n $query ]] && url+="?$query"
      js=$("$herd" --url "$url" --n "$n" --keys "$keys" --timeout-ms 15000 --json --quiet) || true
      [[ -n $js ]] || die "bench_herd failed on $url"
      calls=$(upstream_total)
      py herd "$peer" "$id" "$rep" "$calls" "$js" >>"$csv_tmp"
      progress "$peer" "$id" "$rep"
      if [[ $profile == fresh ]]; then peer_down "$peer" fresh; fi
    done
  done
}

# d: each rep warms one key on every peer's main instance, waits until the
# ttl has passed (well within the 30 s stale window), then herds each peer
# in turn: the whole herd should be answered from the stale copy at once
# while exactly one background refresh reaches the upstream.
stale_scenario() {
  local peer rep url js calls
  for rep in $(seq "$reps"); do
    for peer in "${peers[@]}"; do
      url="http://127.0.0.1:${PORT[$peer/main]}/$run_id/d/$peer/$rep/item"
      curl -s -o /dev/null --max-time 5 "$url"
    done
    sleep "$ttl_s.3"
    for peer in "${peers[@]}"; do
      url="http://127.0.0.1:${PORT[$peer/main]}/$run_id/d/$peer/$rep/item"
      reset_all "$peer" main
      js=$("$herd" --url "$url" --n 200 --timeout-ms 15000 --json --quiet) || true
      [[ -n $js ]] || die "bench_herd failed on $url"
      sleep 0.3 # let the background refresh reach the upstream
      calls=$(upstream_total)
      py herd "$peer" d_stale200 "$rep" "$calls" "$js" >>"$csv_tmp"
      progress "$peer" d_stale200 "$rep"
    done
  done
}

# g: one hot key per peer, warmed, then wrk for $wrk_seconds per rep. The 5 s
# ttl runs out during a rep: every peer then serves the stale copy while one
# background refresh runs, so a rep costs each peer about one upstream call
# per 5 s. hit_peers adds the ceiling (static nginx, 1 KiB only).
hit_scenario() { # id body_size hit_peers...
  local id=$1 size=$2 peer rep url calls
  shift 2
  command -v wrk >/dev/null || {
    say "  $id: wrk not installed, skipped"
    return 0
  }
  for peer in "$@"; do
    url="http://127.0.0.1:${PORT[$peer/main]}/$run_id/$id/$peer/hot?body_size=$size"
    curl -s -o /dev/null --max-time 5 "$url"
    curl -s -o /dev/null --max-time 5 "$url"
    for rep in $(seq "$reps"); do
      reset_all "$peer" main
      wrk -t2 -c64 -d"${wrk_seconds}s" -s "$tmp/report.lua" "$url" >"$tmp/wrk.out" 2>&1 ||
        die "wrk failed: $(tail -3 "$tmp/wrk.out")"
      calls=$(upstream_total)
      py wrk "$peer" "$id" "$rep" "$calls" "$(cat "$tmp/wrk.out")" >>"$csv_tmp"
      progress "$peer" "$id" "$rep"
    done
  done
}

mem_scenario() { # h: RSS of a fresh instance, then with mem_entries 1 KiB entries
  local peer rep url js calls empty warm full stats
  for peer in "${mem_peers[@]}"; do
    [[ " ${peers[*]} " == *" $peer "* ]] || continue
    for rep in $(seq "$reps"); do
      peer_up "$peer" mem
      sleep 0.3
      # shellcheck disable=SC2086
      empty=$(rss_kib ${PIDS[$peer/mem]})
      # warm-up: uncached answers (404s are not stored) at the fill's
      # concurrency, so connections and upstream handles exist before
      # "warm" is read
      "$herd" --url "http://127.0.0.1:${PORT[$peer/mem]}/$run_id/hw/$rep/{k}?delay_ms=0&status=404" \
        --n 20000 --keys 20000 --concurrency 128 --timeout-ms 15000 --json --quiet >/dev/null || true
      sleep 0.3
      # shellcheck disable=SC2086
      warm=$(rss_kib ${PIDS[$peer/mem]})
      reset_all "$peer" mem
      url="http://127.0.0.1:${PORT[$peer/mem]}/$run_id/h/$rep/{k}?delay_ms=0&body_size=1024"
      js=$("$herd" --url "$url" --n "$mem_entries" --keys "$mem_entries" \
        --concurrency 128 --timeout-ms 15000 --json --quiet) || true
      sleep 0.5
      # shellcheck disable=SC2086
      full=$(rss_kib ${PIDS[$peer/mem]})
      # memory a peer holds outside its processes (nginx: cache files)
      files=0
      if declare -F "files_kib_$peer" >/dev/null; then files=$("files_kib_$peer" mem); fi
      stats=
      if declare -F "stats_$peer" >/dev/null; then stats=$("stats_$peer" mem); fi
      calls=$(upstream_total)
      # the stored response head: what a hit sends, less X-Cache and Age
      head=$(curl -s -D - -o /dev/null --max-time 5 "${url/\{k\}/0}" |
        grep -aiv '^x-cache:\|^age:' | wc -c)
      py mem "$peer" h_mem "$rep" "$calls" "$empty" "$warm" "$full" "$files" "$stats" "$head" "$url" "$js" >>"$csv_tmp"
      say "  h_mem        $peer rep $rep: RSS ${empty} KiB empty, ${warm} KiB warmed up, ${full} KiB with $mem_entries entries ($calls upstream calls)"
      peer_down "$peer" mem
    done
  done
}

# ---- run ----------------------------------------------------------------------------------
versions="coalesced $(version_coalesced | awk '{print $NF}') ($build_type, $build/)"
for p in "${peers[@]}"; do
  [[ $p == coalesced ]] && continue
  if declare -F "version_$p" >/dev/null; then versions+=", $("version_$p")"; fi
done
wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}' || true)
curl_version=$(curl --version | awk 'NR == 1 {print $2}')
bench_machine
say "bench: $machine"
say "bench: $versions; wrk ${wrk_version:-not installed}; peers: ${peers[*]}; $reps reps"
started=$SECONDS

want() { [[ " $scenarios " == *" $1 "* ]]; }
if want a || want b || want c || want d || want g; then
  for peer in "${peers[@]}"; do peer_up "$peer" main; done
  if ((floor)); then peer_up direct main; fi
fi
if want a; then herd_scenario a_cold200 main 200 1 ""; fi
if want b; then herd_scenario b_cold1000 main 1000 1 ""; fi
if want c; then herd_scenario c_keys50x20 main 1000 50 ""; fi
if want d; then stale_scenario; fi
if want g; then
  hit_peers=("${peers[@]}")
  if ((ceiling)) && command -v nginx >/dev/null; then
    peer_up nginx_static main
    hit_peers+=(nginx_static)
  fi
  hit_scenario g_hit_1k 1024 "${hit_peers[@]}"
  if [[ -n ${PIDS[nginx_static/main]:-} ]]; then peer_down nginx_static main; fi
  hit_scenario g_hit_64k 65536 "${peers[@]}"
fi
for peer in "${peers[@]}"; do
  if [[ -n ${PIDS[$peer/main]:-} ]]; then peer_down "$peer" main; fi
done
if want e; then herd_scenario e_error500 fresh 200 1 "status=500"; fi
if want f; then herd_scenario f_hang fresh 200 1 "fail=hang"; fi
if want h; then mem_scenario; fi
elapsed=$((SECONDS - started))

# ---- report -------------------------------------------------------------------------------
mkdir -p "$out"
md_tmp=$tmp/peers.md
rev=$(bench_rev)
ceiling_note=
[[ " ${hit_peers[*]} " == *" nginx_static "* ]] && ceiling_note=', and static nginx (the ceiling of the 1 KiB hits)'
cat >"$md_tmp" <<EOF
# coalesced, nginx and Varnish: the benchmark

Generated by \`bench/run.sh\` (\`make bench\`) on $(date -u '+%Y-%m-%d %H:%M UTC'),
source $rev, in ${elapsed} s. Raw figures, one row per rep: [peers.csv](peers.csv).
Every peer's figures below come from this same run, on the same machine,
in front of the same upstream.

- Machine: $machine.
  **The clients (bench_herd, wrk), the test upstream and all the servers
  share these $(nproc) cores**, and the machine is shared with other work:
  compare rows of one run, not figures across runs or machines. A server's
  two workers compete with wrk's two threads for the cores, so the hit
  rates measure the whole box; the static-nginx row is its ceiling.
- Versions: $versions; wrk ${wrk_version:-not installed}; curl/libcurl $curl_version.
- Peers in this run: ${peers[*]}$ceiling_note.
- Upstream: tests/upstream/testupstream, every answer after ${delay_ms} ms
  unless the scenario's query says otherwise.
- Every server: 200s cached for ${ttl_s} s, then served stale for 30 s while
  one background refresh runs; other statuses not stored; the upstream
  given 2 s; 2 worker processes or event loops. coalesced:
  \`--ttl ${ttl_s}s --stale 30s --upstream-timeout 2s --workers 2\` (h: \`--ttl 300s\`).
  nginx: \`proxy_cache\` with \`proxy_cache_lock on\` (lock timeout and age
  2 s), \`proxy_cache_use_stale updating error timeout http_5xx\`,
  background update, upstream keepalive, cache files on tmpfs. Varnish:
  its waiting list, \`beresp.ttl = 5s\`, \`beresp.grace = 30s\` for 200s,
  backend timeouts 2 s, builtin hit-for-miss, \`-s malloc,256m\`, default
  thread pools. The configurations and the reason for each setting:
  bench/peers/ and bench/README.md.
- Scenarios e and f start a new instance of each peer for each rep, so a
  tripped circuit breaker or a hit-for-miss marker never carries over.
- Every scenario ran $reps times on fresh keys; latency and throughput
  figures are the medians of the reps, upstream calls are listed per rep.
  Herd latency is per request, to its last byte, measured two ways: from
  the moment libcurl wrote that request on its connection (as wrk and most
  load tools measure: what each caller sees of the server; the targets
  use it), and from the moment the whole herd had been started (all N
  connections opened in one libcurl multi loop), which adds the client's
  own work of opening the herd on the same cores (some 4-7 ms for 200).

![p99 latency per scenario and peer](peers-latency.png)
![warm hits per second per peer](peers-hits.png)

EOF
read -r lat_cols hit_cols < <(py report "$csv_tmp" "$md_tmp" "$tmp/lat.dat" "$tmp/hits.dat")
cat >>"$md_tmp" <<'EOF'

## How to read it

- a–c: one upstream call per key is the point (DESIGN.md §1 invariant 1);
  p99 close to the upstream's 200 ms means waiters are woken by event, not
  by polling (nginx's cache lock re-checks every 500 ms).
- d: all answers from the stale copy at once, exactly one background
  refresh (X-Cache: coalesced STALE; nginx STALE / UPDATING; Varnish STALE).
- e: coalesced shares the 500 with the flight's waiters and does not store
  it. nginx and Varnish do not share an answer they may not store: nginx's
  waiters each call the upstream once its lock timeout has passed; Varnish
  marks the object hit-for-miss (X-Cache PASS) and lets every waiter
  through to the upstream.
- f: every waiter should get an error when the 2 s upstream timeout fires
  (coalesced and nginx 504, Varnish 503).
- g: the 5 s ttl runs out during a rep, so each peer makes a background
  refresh or two per rep. "share of the ceiling" divides by the rate of
  nginx answering a fixed 1 KiB body from its configuration.
- h: "growth per entry" is (full - empty) / entries, where a peer's
  memory is its RSS (several processes: their summed Pss, so nginx's
  shared keys zone counts once) plus, for nginx, the blocks of its cache
  files on tmpfs (page cache that no RSS shows); for coalesced that is
  its RSS growth, the issue's measure; "above warmed up" starts from the RSS after 20,000
  uncached requests (404s) at the fill's concurrency, so the connections'
  and upstream handles' working set is not charged to the entries; "cache
  accounting" is the daemon's own cache.bytes / entries. The overhead column
  subtracts the 1 KiB body, the request target (the key) and the response
  head as a hit sends it (less X-Cache and Age): DESIGN.md §6 asks under
  256 bytes.

## How to reproduce

```sh
make bench                          # = bench/run.sh: Release build in build-bench2/
REPS=1 WRK_SECONDS=3 bench/run.sh   # a quick look
PEERS=coalesced bench/run.sh        # coalesced alone
```
EOF

if command -v gnuplot >/dev/null; then
  gnuplot <<EOF || say "bench: gnuplot failed, no plots"
set terminal pngcairo size 900,480 noenhanced font ",10"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left autotitle columnhead
set grid ytics
set output "$tmp/peers-latency.png"
set title "Herd p99 latency per peer, from each request's send (ms, log scale; the upstream answers in 200 ms)"
set logscale y
set yrange [1:*]
plot for [i=2:$lat_cols] "$tmp/lat.dat" using i:xtic(1)
unset logscale y
set yrange [0:*]
set output "$tmp/peers-hits.png"
set title "Warm cache hits per second per peer (wrk -t2 -c64, $(nproc) shared cores)"
plot for [i=2:$hit_cols] "$tmp/hits.dat" using i:xtic(1)
EOF
else
  say "bench: gnuplot not installed: no plots (scripts/deps.sh deps/bench.txt)"
fi

mv "$csv_tmp" "$out/peers.csv"
mv "$md_tmp" "$out/peers.md"
for f in peers-latency.png peers-hits.png; do
  [[ -f $tmp/$f ]] && mv "$tmp/$f" "$out/$f"
done
# the coalesced-only report this one replaces
rm -f "$out/daemon.md" "$out/daemon.csv" "$out/daemon-latency.png" "$out/daemon-hits.png"
say "bench: done in ${elapsed} s: $out/peers.md"
cat "$out/peers.md"
