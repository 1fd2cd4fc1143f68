#!/usr/bin/env python3
"""python_client.py — what an application sees behind coalesced.

Fires N identical GET requests at once (50 by default, each on its own
connection, released together by a barrier) at a running coalesced, then
prints how each was answered (the X-Cache header: MISS for the one request
that called the upstream, COALESCED for those that waited on it, HIT or
STALE from the cache) and what the admin stats endpoint says was saved.
Run it twice within the TTL and the second round is all HITs.

Standard library only (Python 3.7+); nothing to install.

    make run                                   # another terminal
    python3 examples/python_client.py
    python3 examples/python_client.py --url 'http://127.0.0.1:8080/v1/odds?sport=nfl' \\
        --admin http://127.0.0.1:9901 -n 200 --rounds 2

The stats figures are printed as the change over this run (before/after),
so they are right even if the daemon has served other traffic. Exit status:
0 when every request got a 2xx/3xx answer, 1 otherwise, 2 for bad usage or
an unreachable admin endpoint.
"""
import argparse
import collections
import http.client
import json
import sys
import threading
import time
import urllib.parse

STATS = "/api/v1/shared/deduplication/stats"

# X-Cache values, in the order a request path meets them.
XCACHE = ("MISS", "COALESCED", "HIT", "STALE", "STALE-IF-ERROR", "BYPASS")

# The figures DESIGN.md defines, in the order a reader wants them.
FIGURES = ("total_requests", "api_calls_made", "api_calls_saved",
           "coalesced_requests", "cache_hits", "stale_hits")


def get(url, headers=None, timeout=30.0):
    """One GET on a fresh connection: (status, headers dict lower-cased,
    body bytes, seconds), or (0, {}, error text, seconds) on failure."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"not an http:// URL: {url}")
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    start = time.monotonic()
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        return r.status, hdrs, body, time.monotonic() - start
    except (OSError, http.client.HTTPException) as e:
        return 0, {}, str(e).encode(), time.monotonic() - start
    finally:
        conn.close()


def herd(url, n, headers):
    """N concurrent GETs released together; results in request order."""
    out = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        out[i] = get(url, headers)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def stats(admin):
    status, _, body, _ = get(admin.rstrip("/") + STATS, timeout=10)
    if status != 200:
        raise OSError(f"GET {admin}{STATS}: "
                      + (f"HTTP {status}" if status else body.decode()))
    return json.loads(body)


def print_round(no, results):
    xcache = collections.Counter(r[1].get("x-cache", "(none)") for r in results)
    statuses = collections.Counter(r[0] for r in results)
    times = sorted(r[3] * 1000 for r in results)
    print(f"round {no}: {len(results)} requests")
    print("  X-Cache:")
    order = [v for v in XCACHE if v in xcache] + sorted(set(xcache) - set(XCACHE))
    for value in order:
        print(f"    {value:<16}{xcache[value]:>5}")
    print("  status: " + ", ".join(
        f"{s if s else 'failed'} x{c}" for s, c in sorted(statuses.items())))
    print(f"  latency ms: min {times[0]:.1f}  median "
          f"{times[len(times) // 2]:.1f}  max {times[-1]:.1f}")
    failed = [r for r in results if not 200 <= r[0] < 400]
    for r in failed[:3]:
        print(f"  e.g. {r[0] or 'failed'}: {r[2][:200].decode(errors='replace')}")
    return not failed


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Fire concurrent identical requests at coalesced and "
                    "show what each got and what was saved.")
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1/price?sym=ABC",
                    help="the URL to request through coalesced "
                         "(default %(default)s)")
    ap.add_argument("--admin", default="http://127.0.0.1:9901",
                    help="coalesced's admin listener (default %(default)s)")
    ap.add_argument("-n", "--requests", type=int, default=50,
                    help="concurrent requests per round (default 50)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds, one after another (default 1)")
    ap.add_argument("-H", "--header", action="append", default=[],
                    metavar="'Name: value'", help="request header, repeatable")
    ap.add_argument("--full-stats", action="store_true",
                    help="print the whole stats document at the end")
    a = ap.parse_args(argv)
    if not 1 <= a.requests <= 2000 or not 1 <= a.rounds <= 100:
        ap.error("--requests must be 1..2000 and --rounds 1..100")
    headers = {}
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            ap.error(f"--header {h!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()

    try:
        before = stats(a.admin)
    except (OSError, ValueError) as e:
        print(f"python_client: cannot read stats: {e}", file=sys.stderr)
        return 2
    print(f"GET {a.url}  x{a.requests} concurrent, {a.rounds} round(s)")
    ok = True
    for no in range(1, a.rounds + 1):
        try:
            ok &= print_round(no, herd(a.url, a.requests, headers))
        except ValueError as e:
            print(f"python_client: {e}", file=sys.stderr)
            return 2
    try:
        after = stats(a.admin)
    except (OSError, ValueError) as e:
        print(f"python_client: cannot read stats: {e}", file=sys.stderr)
        return 2

    print(f"stats ({a.admin}{STATS}), change over this run:")
    for f in FIGURES:
        print(f"  {f:<20}{after.get(f, 0) - before.get(f, 0):>7}")
    total = after.get("total_requests", 0) - before.get("total_requests", 0)
    saved = after.get("api_calls_saved", 0) - before.get("api_calls_saved", 0)
    rate = 100.0 * saved / total if total else 0.0
    print(f"  {'hit_rate_percent':<20}{rate:>7.1f}")
    print("since start: hit_rate_percent "
          f"{after.get('hit_rate_percent', 0.0)}, pending_requests "
          f"{after.get('pending_requests', 0)}, breakers "
          + ", ".join(f"{name}={u.get('breaker', {}).get('state', '?')}"
                      for name, u in sorted(after.get("upstreams", {}).items())))
    if a.full_stats:
        print(json.dumps(after, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
