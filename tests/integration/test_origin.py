"""The RFC 9111 `origin` policy through the real daemon (issue 4).

Each test scripts the upstream's answer in the query string (cc=, hdr=,
etag=, lm=, vary=, set_cookie=, status=), sends requests with the client
fields under test, and asserts three things: what the client got (status,
X-Cache, Age, which upstream body), and how many times the upstream was
really asked for that path (its /__upstream/stats count). A 304 from the
test upstream proves that the daemon sent a matching validator
(If-None-Match / If-Modified-Since): it never answers 304 otherwise.

Freshness in `origin` mode is in whole seconds (max-age, Expires, Age), so
expiry is reached with short real sleeps (WAIT = 1.2 s past a 1 s
lifetime); table rows share one sleep. Nothing asserts on speed.
See docs/policy.md for the behaviour these tests pin down.
"""
import collections
import email.utils
import time
import unittest
from urllib.parse import quote

from harness import Daemon, DaemonTest, Upstream, herd, wait_for, write_temp

WAIT = 1.2  # past a 1-second lifetime
ORIGIN = ("--policy", "origin", "--workers", "2")
# no stale windows from the route: expiry is visible as a MISS
STRICT = ORIGIN + ("--ttl", "30s", "--stale", "0s", "--stale-if-error", "0s")
# the route's stale windows on: what must-revalidate / no-cache override
WINDOWS = ORIGIN + ("--ttl", "30s", "--stale", "30s", "--stale-if-error", "5m")
# a short route TTL: used only when the upstream gives no freshness
SHORT = ORIGIN + ("--ttl", "500ms", "--stale", "0s", "--stale-if-error", "0s")
OVERRIDE = ("--policy", "override", "--workers", "2", "--ttl", "500ms",
            "--stale", "0s", "--stale-if-error", "0s")


def qs(*params):
    """Query string from (name, value) pairs; names may repeat (hdr=). A
    callable value is called now (for dates relative to the request)."""
    return "&".join(f"{k}={quote(str(v() if callable(v) else v), safe='')}"
                    for k, v in params)


def http_date(t):
    return email.utils.formatdate(t, usegmt=True)


def calls(up, path):
    """Upstream calls for `path`, whatever query the daemon sent with it
    (the daemon forwards a canonical, sorted query)."""
    return sum(n for k, n in up.stats()["paths"].items()
               if k.split("?", 1)[0] == path)


def body_seq(r):
    """path_seq of the upstream answer whose body the client got."""
    return r.json()["path_seq"]


def hdr_seq(r):
    """path_seq of the upstream answer whose header fields the client got
    (a 304 refresh updates these, not the body)."""
    return int(r.header("x-upstream-path-seq"))


# One row: the upstream's answer (`params`), client fields on both requests
# (`both`) and on the second only (`req`), whether the second comes after
# WAIT (`late`), and what the second must give: status, X-Cache, upstream
# calls for the path so far, the body's path_seq, the least Age.
Case = collections.namedtuple(
    "Case", "name params req late xcache calls status body age both",
    defaults=({}, False, "HIT", 1, 200, None, None, {}))


class TableMixin:
    def run_table(self, cases):
        urls = {}
        for c in cases:
            path = "/t/" + c.name.replace(" ", "-")
            urls[c.name] = (path, path + ("?" + qs(*c.params) if c.params else ""))
        self.assertEqual(len(urls), len(cases), "row names must be distinct")
        for c in cases:
            path, url = urls[c.name]
            first = self.d.get(url, headers=dict(c.both))
            with self.subTest(c.name, request="first"):
                want = int(dict(c.params).get("status", 200))
                self.assertEqual(first.status, want, first)
                self.assertEqual(first.xcache, "MISS", first)
        for late in (False, True):
            if late:
                time.sleep(WAIT)
            for c in cases:
                if c.late != late:
                    continue
                path, url = urls[c.name]
                with self.subTest(c.name):
                    r = self.d.get(url, headers={**c.both, **c.req})
                    want = c.xcache if isinstance(c.xcache, tuple) else (c.xcache,)
                    self.assertEqual(r.status, c.status, f"{c.name}: {r!r}")
                    self.assertIn(r.xcache, want, f"{c.name}: {r!r}")
                    if c.xcache == "STALE":  # its refresh runs in the background
                        wait_for(lambda: calls(self.up, path) >= c.calls,
                                 what=f"{c.name}: background refresh")
                    self.assertEqual(calls(self.up, path), c.calls,
                                     f"{c.name}: upstream calls")
                    if c.body is not None:
                        self.assertEqual(body_seq(r), c.body, f"{c.name}: body")
                    if c.age is not None:
                        self.assertGreaterEqual(int(r.header("age")), c.age,
                                                f"{c.name}: Age")


# Not stored and not shareable: a MISS, or BYPASS while the daemon
# remembers the key as unshareable (its hit-for-miss window, 2 s).
NS = ("MISS", "BYPASS")
MA60 = ("cc", "max-age=60")
MA1 = ("cc", "max-age=1")
NOW = time.time()
BEARER = {"Authorization": "Bearer t1"}

STRICT_CASES = [
    # §4.2.1 freshness lifetime: s-maxage > max-age > Expires - Date
    Case("max-age fresh", [MA60], body=1),
    Case("max-age expired", [MA1], late=True, xcache="MISS", calls=2, body=2),
    Case("s-maxage longer than max-age", [("cc", "max-age=1, s-maxage=60")],
         late=True),
    Case("s-maxage shorter than max-age", [("cc", "max-age=60, s-maxage=1")],
         late=True, xcache="MISS", calls=2),
    Case("max-age over past Expires",
         [MA60, ("hdr", "Expires:" + http_date(NOW - 3600))], late=True),
    Case("max-age over future Expires",
         [MA1, ("hdr", "Expires:" + http_date(NOW + 3600))], late=True,
         xcache="MISS", calls=2),
    Case("Expires in the past", [("hdr", "Expires:" + http_date(NOW - 3600))],
         xcache="MISS", calls=2),
    Case("Expires one second ahead",
         [("hdr", lambda: "Expires:" + http_date(time.time() + 1))], late=True,
         xcache="MISS", calls=2),
    Case("invalid Expires is stale", [("hdr", "Expires:0")], xcache="MISS",
         calls=2),
    Case("no freshness uses route ttl", [], late=True),  # route ttl 30 s
    # §4.2.3 age: the incoming Age counts
    Case("Age is reported", [MA60, ("hdr", "Age:30")], age=30),
    Case("Age beyond max-age", [("cc", "max-age=10"), ("hdr", "Age:20")],
         xcache="MISS", calls=2),
    # §3 storing
    Case("no-store", [("cc", "no-store, max-age=60")], xcache=NS, calls=2),
    Case("private", [("cc", "private, max-age=60")], xcache=NS, calls=2),
    Case("private with field names", [("cc", 'private="x-a", max-age=60')],
         xcache=NS, calls=2),
    Case("Set-Cookie", [MA60, ("set_cookie", 1)], xcache=NS, calls=2),
    Case("Vary star", [MA60, ("vary", "*")], xcache=NS, calls=2),
    Case("private in a second Cache-Control line",
         [MA60, ("hdr", "Cache-Control:private")], xcache=NS, calls=2),
    Case("206 not understood", [MA60, ("status", 206)], xcache="MISS",
         calls=2, status=206),
    Case("404 heuristically cacheable", [("status", 404)], status=404),
    Case("500 without freshness", [("status", 500)], xcache="MISS", calls=2,
         status=500),
    Case("500 with max-age", [("status", 500), MA60], status=500),
    Case("no-cache without validator", [("cc", "no-cache, max-age=60")],
         xcache="MISS", calls=2),
    Case("no-cache with field names", [("cc", 'no-cache="x-a", max-age=60')],
         xcache="MISS", calls=2),
    # §4.2.1: invalid or conflicting max-age -> stale
    Case("max-age invalid", [("cc", "max-age=soon")], xcache="MISS", calls=2),
    Case("max-age conflicting", [("cc", "max-age=60, max-age=30")],
         xcache="MISS", calls=2),
    # §3.5 Authorization (same identity on both requests)
    Case("auth max-age", [MA60], both=BEARER, xcache="MISS", calls=2),
    Case("auth public", [("cc", "public, max-age=60")], both=BEARER),
    Case("auth s-maxage", [("cc", "s-maxage=60")], both=BEARER),
    Case("auth must-revalidate", [("cc", "max-age=60, must-revalidate")],
         both=BEARER),
    # §5.2.1 request directives
    Case("req no-cache", [MA60], {"Cache-Control": "no-cache"}, xcache="MISS",
         calls=2, body=2),
    Case("req max-age=0", [MA60], {"Cache-Control": "max-age=0"},
         xcache="MISS", calls=2, body=2),
    Case("req Pragma no-cache", [MA60], {"Pragma": "no-cache"}, xcache="MISS",
         calls=2, body=2),
    Case("req Pragma ignored beside Cache-Control", [MA60],
         {"Pragma": "no-cache", "Cache-Control": "max-stale=5"}),
    Case("req max-age within", [MA60], {"Cache-Control": "max-age=30"}),
    Case("req max-age exceeded", [MA60], {"Cache-Control": "max-age=1"},
         late=True, xcache="MISS", calls=2, body=2),
    Case("req min-fresh met", [MA60], {"Cache-Control": "min-fresh=10"}),
    Case("req min-fresh unmet", [("cc", "max-age=5")],
         {"Cache-Control": "min-fresh=30"}, xcache="MISS", calls=2),
    Case("req only-if-cached fresh", [MA60],
         {"Cache-Control": "only-if-cached"}),
    Case("req only-if-cached expired", [MA1],
         {"Cache-Control": "only-if-cached"}, late=True, xcache="MISS",
         status=504),
    Case("req only-if-cached validate-only", [MA1, ("etag", "o")],
         {"Cache-Control": "only-if-cached"}, late=True, xcache="MISS",
         status=504),
    Case("req max-stale=0 refuses stale",
         [("cc", "max-age=1, stale-while-revalidate=30")],
         {"Cache-Control": "max-stale=0"}, late=True, xcache="MISS", calls=2,
         body=2),
    Case("req max-stale=20 accepts stale",
         [("cc", "max-age=1, stale-while-revalidate=30")],
         {"Cache-Control": "max-stale=20"}, late=True, xcache="STALE",
         calls=2, body=1),
    Case("req max-stale no value",
         [("cc", "max-age=1, stale-while-revalidate=30")],
         {"Cache-Control": "max-stale"}, late=True, xcache="STALE", calls=2,
         body=1),
    Case("req max-stale cannot beat must-revalidate",
         [("cc", "max-age=1, must-revalidate, stale-while-revalidate=30")],
         {"Cache-Control": "max-stale=60"}, late=True, xcache="MISS",
         calls=2, body=2),
    # §5.2.2 response stale windows
    Case("stale-while-revalidate", [("cc", "max-age=1, stale-while-revalidate=30")],
         late=True, xcache="STALE", calls=2, body=1),
    Case("must-revalidate fresh is served", [("cc", "max-age=60, must-revalidate")]),
]

# Route stale windows (30 s / 5 m) are on.
WINDOW_CASES = [
    Case("route stale when silent", [MA1], late=True, xcache="STALE", calls=2,
         body=1),
    Case("response swr=0 over route stale",
         [("cc", "max-age=1, stale-while-revalidate=0")], late=True,
         xcache="MISS", calls=2, body=2),
    Case("must-revalidate no stale", [("cc", "max-age=1, must-revalidate")],
         late=True, xcache="MISS", calls=2, body=2),
    Case("proxy-revalidate no stale", [("cc", "max-age=1, proxy-revalidate")],
         late=True, xcache="MISS", calls=2, body=2),
    Case("no-cache never stale", [("cc", "no-cache, max-age=60"), ("etag", "n")],
         xcache="MISS", calls=2, body=1),
]

# Route ttl 500 ms: only when the upstream is silent.
SHORT_CASES = [
    Case("silent fresh within route ttl", []),
    Case("silent expires with route ttl", [], late=True, xcache="MISS",
         calls=2, body=2),
    Case("max-age beats route ttl", [MA60], late=True),
    Case("Expires beats route ttl",
         [("hdr", "Expires:" + http_date(NOW + 3600))], late=True),
]

# Under override the route decides; request Cache-Control is ignored.
OVERRIDE_CASES = [
    Case("max-age ignored", [MA60], late=True, xcache="MISS", calls=2),
    Case("req no-cache ignored", [MA60], {"Cache-Control": "no-cache"}),
    Case("req only-if-cached ignored", [MA1],
         {"Cache-Control": "only-if-cached"}, late=True, xcache="MISS",
         calls=2),
    Case("no-store obeyed", [("cc", "no-store")], xcache=NS, calls=2),
    Case("private obeyed", [("cc", "private")], xcache=NS, calls=2),
    Case("auth stored", [MA60], both=BEARER),
    Case("response no-cache ignored", [("cc", "no-cache")]),
    Case("invalid Expires ignored", [("hdr", "Expires:0")]),
    Case("404 not stored without negative ttl", [("status", 404)],
         xcache="MISS", calls=2, status=404),
]


class OriginTest(TableMixin, DaemonTest):
    daemon_args = STRICT

    def test_table(self):
        self.run_table(STRICT_CASES)

    def test_age_reduces_freshness(self):
        aged = "/age/aged?" + qs(("cc", "max-age=2"), ("hdr", "Age:1"))
        plain = "/age/plain?" + qs(("cc", "max-age=3"))
        a = self.d.get(aged)
        self.assertEqual((a.status, a.xcache, a.header("age")), (200, "MISS", "1"))
        b = self.d.get(aged)
        self.assertEqual(b.xcache, "HIT")
        self.assertGreaterEqual(int(b.header("age")), 1, "Age counts the upstream's")
        self.assertEqual(self.d.get(plain).xcache, "MISS")
        time.sleep(WAIT)  # 1 s of freshness left for `aged`, 2+ for `plain`
        c = self.d.get(aged)
        self.assertEqual(c.xcache, "MISS", "Age: 1 left one second of max-age=2")
        self.assertEqual(body_seq(c), 2)
        self.assertEqual(calls(self.up, "/age/aged"), 2)
        self.assertEqual(self.d.get(plain).xcache, "HIT")
        self.assertEqual(calls(self.up, "/age/plain"), 1)

    def test_request_no_cache_revalidates_and_refreshes(self):
        url = "/rv/etag?" + qs(MA60, ("etag", "v1"))
        a = self.d.get(url)
        self.assertEqual((a.xcache, body_seq(a), hdr_seq(a)), ("MISS", 1, 1))
        n = 1
        for hdrs in ({"Cache-Control": "no-cache"}, {"Pragma": "no-cache"},
                     {"Cache-Control": "max-age=0"}):
            with self.subTest(**hdrs):
                r = self.d.get(url, headers=hdrs)
                n += 1
                self.assertEqual(r.status, 200, r)
                self.assertEqual(calls(self.up, "/rv/etag"), n, "went upstream")
                self.assertEqual(body_seq(r), 1,
                                 "upstream answered 304 (If-None-Match sent): stored body")
                self.assertEqual(hdr_seq(r), n, "header fields from the 304")
                h = self.d.get(url)  # the refreshed entry is served
                self.assertEqual((h.xcache, body_seq(h), hdr_seq(h)), ("HIT", 1, n))
        self.assertEqual(calls(self.up, "/rv/etag"), n)

    def test_last_modified_revalidation(self):
        url = "/rv/lm?" + qs(MA60, ("lm", 1700000000))
        a = self.d.get(url)
        self.assertEqual(a.header("last-modified"), http_date(1700000000))
        r = self.d.get(url, headers={"Cache-Control": "max-age=0"})
        self.assertEqual(calls(self.up, "/rv/lm"), 2)
        self.assertEqual((r.status, body_seq(r), hdr_seq(r)), (200, 1, 2),
                         "304 to If-Modified-Since: stored body, new fields")

    def test_stale_entry_revalidated_then_fresh_again(self):
        # The URL names no cc: it comes from the upstream's defaults, so the
        # 304 can carry a new max-age, which must refresh the stored entry.
        url = "/rv/stale?" + qs(("etag", "s"))
        self.up.configure(qs(MA1))
        a = self.d.get(url)
        self.assertEqual((a.xcache, a.header("cache-control")), ("MISS", "max-age=1"))
        self.up.configure(qs(MA60))
        time.sleep(WAIT)  # stale; kept (validate-only) because it has an ETag
        r = self.d.get(url)
        self.assertEqual((r.status, body_seq(r), hdr_seq(r)), (200, 1, 2),
                         "304: the stored body with the 304's fields")
        self.assertEqual(r.header("cache-control"), "max-age=60")
        self.assertEqual(calls(self.up, "/rv/stale"), 2)
        time.sleep(WAIT)  # past the old max-age=1, within the new one
        h = self.d.get(url)
        self.assertEqual((h.xcache, body_seq(h), h.header("cache-control")),
                         ("HIT", 1, "max-age=60"), "the 304 refreshed it")
        self.assertEqual(calls(self.up, "/rv/stale"), 2)
        self.up.configure("")

    def test_response_no_cache_revalidated_on_every_use(self):
        url = "/nc/etag?" + qs(("cc", "no-cache, max-age=60"), ("etag", "n1"))
        for i in range(1, 5):
            r = self.d.get(url)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(body_seq(r), 1, "always the stored body, validated")
            self.assertEqual(hdr_seq(r), i)
            self.assertNotEqual(r.xcache, "HIT", "never served unvalidated")
            self.assertEqual(calls(self.up, "/nc/etag"), i)
        herdr = herd(self.d.port, [url] * 5)
        self.assertEqual({(r.status, body_seq(r)) for r in herdr}, {(200, 1)})
        self.assertLessEqual(calls(self.up, "/nc/etag"), 4 + 5)
        # without a validator: a full fetch each time
        url2 = "/nc/plain?" + qs(("cc", "no-cache, max-age=60"))
        self.assertEqual([body_seq(self.d.get(url2)) for _ in range(3)], [1, 2, 3])

    def test_response_no_cache_without_max_age(self):
        # `Cache-Control: no-cache` alone (no max-age / Expires): policy_decide
        # sets fresh_ns = 0 for no-cache, then `if (!explicit_) fresh_ns =
        # route->ttl_ns` overwrites it, so the answer is served as a HIT for
        # the route ttl (30 s here) without revalidation (RFC 9111 §5.2.2.4).
        url = "/nc/bare-etag?" + qs(("cc", "no-cache"), ("etag", "b"))
        for i in range(1, 4):
            r = self.d.get(url)
            self.assertEqual((r.status, body_seq(r), hdr_seq(r)), (200, 1, i), r)
            self.assertNotEqual(r.xcache, "HIT")
        url2 = "/nc/bare?" + qs(("cc", "no-cache"))
        self.assertEqual([body_seq(self.d.get(url2)) for _ in range(3)], [1, 2, 3])

    def test_request_no_store_is_not_stored(self):
        # RFC 9111 §5.2.1.5: a cache MUST NOT store the response to a
        # request with no-store. The daemon stores it: the next plain
        # request is a HIT with the same body.
        url = "/rns/a?" + qs(MA60)
        a = self.d.get(url, headers={"Cache-Control": "no-store"})
        self.assertEqual(a.status, 200)
        b = self.d.get(url)
        self.assertEqual((b.xcache, body_seq(b)), ("MISS", 2), b)

    def test_only_if_cached_never_calls_upstream(self):
        r = self.d.get("/oic/cold?" + qs(MA60),
                       headers={"Cache-Control": "only-if-cached"})
        self.assertEqual(r.status, 504, r)
        self.assertEqual(self.up.total(), 0)
        url = "/oic/warm?" + qs(MA60)
        self.d.get(url)
        r = self.d.get(url, headers={"Cache-Control": "only-if-cached, max-age=30"})
        self.assertEqual((r.status, r.xcache, body_seq(r)), (200, "HIT", 1))
        self.assertEqual(self.up.total(), 1)

    def test_stale_while_revalidate_from_response(self):
        # Cache-Control comes from the upstream's defaults (the URL names
        # none), so the refresh can carry a long max-age (the refreshed
        # entry is then surely fresh: Date has 1 s resolution) and a delay
        # (the stale herd is answered while the refresh is still out).
        path = "/swr/r"
        self.up.configure(qs(("cc", "max-age=1, stale-while-revalidate=30")))
        self.assertEqual(self.d.get(path).xcache, "MISS")
        self.up.configure(qs(MA60, ("delay_ms", 1500)))
        time.sleep(WAIT)
        rs = herd(self.d.port, [path] * 5)
        self.assertEqual({(r.status, r.xcache, body_seq(r)) for r in rs},
                         {(200, "STALE", 1)})
        wait_for(lambda: calls(self.up, path) == 2, what="background refresh")
        r = wait_for(lambda: (lambda x: x if x.xcache == "HIT" else None)(
            self.d.get(path)), what="refreshed entry")
        self.assertEqual(body_seq(r), 2)
        self.assertEqual(calls(self.up, path), 2, "one background refresh")
        self.up.configure("")

    def test_stale_if_error_from_response(self):
        sie = "/sie/on?" + qs(("cc", "max-age=1, stale-if-error=30"))
        ctl = "/sie/off?" + qs(MA1)
        a = self.d.get(sie)
        self.d.get(ctl)
        self.up.configure("fail=reset")
        time.sleep(WAIT)
        r = self.d.get(sie)
        self.assertEqual((r.status, r.xcache), (200, "STALE-IF-ERROR"), r)
        self.assertEqual(r.body, a.body)
        c = self.d.get(ctl)
        self.assertEqual(c.status, 502, c)
        # went upstream (the daemon may retry a GET whose connection reset)
        self.assertGreaterEqual(calls(self.up, "/sie/on"), 2)
        self.up.configure("")

    def test_client_conditionals_answered_from_cache(self):
        url = "/cond/a?" + qs(MA60, ("etag", "v1"), ("lm", 1700000000))
        self.assertEqual(self.d.get(url).xcache, "MISS")
        cases = [
            ({"If-None-Match": '"v1"'}, 304),
            ({"If-None-Match": 'W/"v1"'}, 304),
            ({"If-None-Match": '"x", "v1"'}, 304),
            ({"If-None-Match": "*"}, 304),
            ({"If-None-Match": '"v2"'}, 200),
            ({"If-Modified-Since": http_date(1700000000 + 10)}, 304),
            ({"If-Modified-Since": http_date(1700000000 - 10)}, 200),
            ({"If-None-Match": '"v2"',
              "If-Modified-Since": http_date(1700000000 + 10)}, 200),
        ]
        for hdrs, want in cases:
            with self.subTest(**hdrs):
                r = self.d.get(url, headers=hdrs)
                self.assertEqual((r.status, r.xcache), (want, "HIT"), r)
                if want == 304:
                    self.assertEqual(r.body, b"")
                    self.assertEqual(r.header("etag"), '"v1"')
                else:
                    self.assertEqual(body_seq(r), 1)
        self.assertEqual(calls(self.up, "/cond/a"), 1)
        # a cold conditional: the shared call carries no client validator,
        # the entry is stored whole, this client still gets its 304
        url2 = "/cond/b?" + qs(MA60, ("etag", "v1"), ("echo", 1))
        r = self.d.get(url2, headers={"If-None-Match": '"v1"'})
        self.assertEqual(r.status, 304, r)
        full = self.d.get(url2)
        self.assertEqual((full.status, full.xcache), (200, "HIT"))
        self.assertNotIn("if-none-match", full.json()["headers"])
        self.assertEqual(calls(self.up, "/cond/b"), 1)

    def test_head_from_stored_get(self):
        url = "/head/a?" + qs(MA60)
        g = self.d.get(url)
        h = self.d.get(url, method="HEAD")
        self.assertEqual((h.status, h.xcache, h.body), (200, "HIT", b""))
        self.assertEqual(int(h.header("content-length")), len(g.body))
        self.assertEqual(calls(self.up, "/head/a"), 1)
        url = "/head/b?" + qs(MA60)
        h = self.d.get(url, method="HEAD")  # a cold HEAD fetches (and stores) a GET
        self.assertEqual((h.status, h.body), (200, b""))
        g = self.d.get(url)
        self.assertEqual((g.xcache, body_seq(g), g.json()["method"]), ("HIT", 1, "GET"))
        self.assertEqual(self.up.stats()["methods"].get("HEAD", 0), 0)

    def test_unsafe_methods_invalidate_target(self):
        url = "/inv/a?" + qs(MA60)
        other = "/inv/b?" + qs(MA60)
        for u in (url, other):
            self.d.get(u)
            self.assertEqual(self.d.get(u).xcache, "HIT")
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method):
                r = self.d.get(url, method=method, body=b"{}")
                self.assertEqual((r.status, r.xcache), (200, "BYPASS"), r)
                g = self.d.get(url)
                self.assertEqual(g.xcache, "MISS", f"{method} invalidated it")
                self.assertEqual(g.json()["method"], "GET")
                self.assertEqual(self.d.get(url).xcache, "HIT")
        self.assertEqual(self.d.get(other).xcache, "HIT", "other URIs stay")
        # a query that differs is another URI
        self.d.get(url + "&x=1", method="POST", body=b"{}")
        self.assertEqual(self.d.get(url).xcache, "HIT")
        # a failed POST invalidates nothing
        self.up.configure("status=500")
        r = self.d.get(url, method="POST", body=b"{}")
        self.assertEqual(r.status, 500)
        self.up.configure("")
        self.assertEqual(self.d.get(url).xcache, "HIT")

    def test_invalidation_covers_variants_and_identities(self):
        vary = "/inv/vary?" + qs(MA60, ("vary", "Accept-Language"))
        auth = "/inv/auth?" + qs(("cc", "public, max-age=60"))
        fields = [("vary", vary, {"Accept-Language": "en"}),
                  ("vary", vary, {"Accept-Language": "fr"}),
                  ("auth", auth, {"Authorization": "Bearer a"}),
                  ("auth", auth, {"Authorization": "Bearer b"})]
        for _, u, h in fields:
            xs = [self.d.get(u, headers=h).xcache for _ in range(2)]
            self.assertEqual(xs, ["MISS", "HIT"], (u, h))
        self.d.get(vary, method="POST", body=b"{}")
        self.d.get(auth, method="DELETE")
        for _, u, h in fields:
            with self.subTest(u, **h):
                self.assertEqual(self.d.get(u, headers=h).xcache, "MISS")

    def test_location_and_content_location_invalidate(self):
        self.up.configure(qs(MA60))
        paths = ["/loc/a", "/loc/b", "/loc/c", "/loc/d", "/loc/t"]
        for p in paths:
            self.d.get(p)
            self.assertEqual(self.d.get(p).xcache, "HIT", p)

        def state():
            return {p: self.d.get(p).xcache for p in paths}

        self.up.configure(qs(MA60, ("hdr", "Location:/loc/a")))
        r = self.d.get("/loc/t", method="PUT", body=b"{}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(state(), {"/loc/a": "MISS", "/loc/b": "HIT",
                                   "/loc/c": "HIT", "/loc/d": "HIT",
                                   "/loc/t": "MISS"})
        self.up.configure(qs(MA60, ("hdr", f"Content-Location:{self.up.url}/loc/c")))
        self.d.get("/loc/x", method="POST", body=b"{}")
        self.up.configure(qs(MA60, ("hdr", "Location:http://example.invalid/loc/d")))
        self.d.get("/loc/y", method="POST", body=b"{}")
        self.assertEqual(state(), {"/loc/a": "HIT", "/loc/b": "HIT",
                                   "/loc/c": "MISS", "/loc/d": "HIT",
                                   "/loc/t": "HIT"},
                         "same-origin Content-Location only")
        self.up.configure("")

    def test_vary_accept_language(self):
        url = "/vary/al?" + qs(MA60, ("vary", "Accept-Language"), ("echo", 1))

        def get(lang):
            r = self.d.get(url, headers={"Accept-Language": lang} if lang else {})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["headers"].get("accept-language"), lang,
                             "the body of this variant")
            self.assertIn("Accept-Language", r.header("vary") or "")
            return r

        en = get("en")
        self.assertEqual(en.xcache, "MISS")
        self.assertEqual((get("en").xcache, get("en").body), ("HIT", en.body))
        fr = get("fr")
        self.assertEqual(fr.xcache, "MISS")
        self.assertEqual(get("fr").body, fr.body)
        self.assertEqual(get("fr").xcache, "HIT")
        self.assertEqual(get("en").body, en.body)
        none = get(None)
        self.assertEqual(none.xcache, "MISS")
        self.assertEqual((get(None).xcache, get(None).body), ("HIT", none.body))
        self.assertEqual(get("de").xcache, "MISS")
        self.assertEqual(calls(self.up, "/vary/al"), 4)

    def test_vary_first_answer_is_reused(self):
        # the first answer of a URL with Vary is stored under its variant
        # key (once a bug: it was stored under a key no lookup built)
        url = "/vary/first?" + qs(MA60, ("vary", "Accept-Language"))
        h = {"Accept-Language": "en"}
        self.assertEqual(self.d.get(url, headers=h).xcache, "MISS")
        r = self.d.get(url, headers=h)
        self.assertEqual((r.xcache, body_seq(r)), ("HIT", 1), r)
        self.assertEqual(calls(self.up, "/vary/first"), 1)

    def test_vary_star_never_shared(self):
        url = "/vary/star?" + qs(MA60, ("vary", "*"), ("delay_ms", 300))
        rs = herd(self.d.port, [url] * 4)
        self.assertEqual(sorted(body_seq(r) for r in rs), [1, 2, 3, 4])
        self.assertEqual(calls(self.up, "/vary/star"), 4)

    def test_authorization_rule(self):
        rows = [("max-age=60", ["MISS", "MISS"]),
                ("public, max-age=60", ["MISS", "HIT"]),
                ("s-maxage=60", ["MISS", "HIT"]),
                ("max-age=60, must-revalidate", ["MISS", "HIT"])]
        for cc, want in rows:
            with self.subTest(cc):
                url = f"/auth/{rows.index((cc, want))}?" + qs(("cc", cc))
                got = [self.d.get(url, headers=BEARER).xcache for _ in want]
                self.assertEqual(got, want)
                # a stored authorized answer never reaches another identity
                other = self.d.get(url, headers={"Authorization": "Bearer t2"})
                self.assertEqual(other.xcache, "MISS")
                anon = self.d.get(url)
                self.assertEqual(anon.xcache, "MISS")
        url = "/auth/anon?" + qs(MA60)
        self.assertEqual([self.d.get(url).xcache for _ in range(2)], ["MISS", "HIT"])

    def test_herd_on_shareable_answer_makes_one_call(self):
        url = "/herd/shared?" + qs(MA60, ("delay_ms", 300))
        rs = herd(self.d.port, [url] * 30)
        self.assertEqual([r.status for r in rs], [200] * 30, rs[:3])
        self.assertEqual(len({r.body for r in rs}), 1)
        self.assertEqual(calls(self.up, "/herd/shared"), 1)
        self.assertEqual(self.d.get(url).xcache, "HIT")

    def test_herd_on_private_answers_each_its_own(self):
        for name, param in (("private", ("cc", "private, max-age=60")),
                            ("no-store", ("cc", "no-store")),
                            ("cookie", ("set_cookie", 1))):
            with self.subTest(name):
                path = "/herd/" + name
                self.up.reset()
                rs = herd(self.d.port, [path + "?" + qs(param, ("delay_ms", 300))] * 10)
                self.assertEqual([r.status for r in rs], [200] * 10, rs[:3])
                self.assertEqual(sorted(body_seq(r) for r in rs), list(range(1, 11)),
                                 "each waiter its own upstream answer")
                if name == "cookie":
                    self.assertEqual(len({r.header("set-cookie") for r in rs}), 10)
                st = self.up.stats()
                self.assertEqual(calls(self.up, path), 10)
                self.assertGreater(st["max_inflight"], 1, "the retries ran in parallel")


class OriginRouteWindowsTest(TableMixin, DaemonTest):
    daemon_args = WINDOWS

    def test_table(self):
        self.run_table(WINDOW_CASES)

    def test_must_revalidate_never_stale_when_upstream_down(self):
        urls = {
            "mr-etag": qs(("cc", "max-age=1, must-revalidate"), ("etag", "m")),
            "mr": qs(("cc", "max-age=1, must-revalidate")),
            "pr-etag": qs(("cc", "max-age=1, proxy-revalidate"), ("etag", "p")),
            "nc-etag": qs(("cc", "no-cache, max-age=60"), ("etag", "n")),
            "ctl-swr": qs(MA1),
            "ctl-sie": qs(("cc", "max-age=1, stale-while-revalidate=0")),
        }
        first = {k: self.d.get(f"/mr/{k}?{q}") for k, q in urls.items()}
        self.assertTrue(all(r.status == 200 for r in first.values()), first)
        self.up.configure("fail=reset")
        time.sleep(WAIT)
        got = {k: self.d.get(f"/mr/{k}?{q}") for k, q in urls.items()}
        for k in ("mr-etag", "mr", "pr-etag", "nc-etag"):
            with self.subTest(k):
                self.assertIn(got[k].status, (502, 504), got[k])
                self.assertNotEqual(got[k].body, first[k].body)
        self.assertEqual((got["ctl-swr"].status, got["ctl-swr"].xcache), (200, "STALE"))
        self.assertEqual((got["ctl-sie"].status, got["ctl-sie"].xcache),
                         (200, "STALE-IF-ERROR"))
        self.up.configure("")


    def test_s_maxage_is_never_served_stale(self):
        # RFC 9111 §5.2.2.10: s-maxage incorporates proxy-revalidate for a
        # shared cache. policy.c's never_stale ignores s-maxage, so the
        # route's --stale window serves it STALE after expiry.
        url = "/smx/a?" + qs(("cc", "s-maxage=1"))
        self.assertEqual(self.d.get(url).xcache, "MISS")
        time.sleep(WAIT)
        r = self.d.get(url)
        self.assertEqual((r.status, r.xcache, body_seq(r)), (200, "MISS", 2), r)


class OriginRouteTTLTest(TableMixin, DaemonTest):
    daemon_args = SHORT

    def test_table(self):
        self.run_table(SHORT_CASES)


class OverridePolicyTest(TableMixin, DaemonTest):
    daemon_args = OVERRIDE

    def test_table(self):
        self.run_table(OVERRIDE_CASES)

    def test_unsafe_method_invalidates_under_override_too(self):
        url = "/ov/inv?" + qs(MA60)
        self.assertEqual([self.d.get(url).xcache for _ in range(2)], ["MISS", "HIT"])
        self.assertEqual(self.d.get(url, method="POST", body=b"{}").status, 200)
        self.assertEqual(self.d.get(url).xcache, "MISS")


ROUTES_INI = """\
[cache]
ttl = 30s
stale = 0s
stale_if_error = 0s

[upstream main]
url = {url}

[route /o]
upstream = main
policy = origin

[route /v]
upstream = main
"""


class RoutePolicyConfigTest(unittest.TestCase):
    """`policy = origin` in one [route]; the other keeps override."""

    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        cfg = write_temp(ROUTES_INI.format(url=self.up.url), testcase=self)
        self.d = Daemon(None, "--workers", "2", config=cfg)
        self.addCleanup(lambda: self.assertEqual(self.d.stop(), 0))

    def test_policy_per_route(self):
        for prefix, want in (("/o", ["MISS", "MISS", "MISS"]),
                             ("/v", ["MISS", "HIT", "HIT"])):
            with self.subTest(prefix):
                # max-age=0 from the upstream: origin never stores it
                url = prefix + "/ma0?" + qs(("cc", "max-age=0"))
                self.assertEqual([self.d.get(url).xcache for _ in range(2)], want[:2])
                # a client's no-cache: origin revalidates, override ignores it
                url = prefix + "/nc?" + qs(MA60)
                self.d.get(url)
                r = self.d.get(url, headers={"Cache-Control": "no-cache"})
                self.assertEqual(r.xcache, want[2])


class RequestStaleIfErrorTest(DaemonTest):
    """RFC 5861 §4: a request's own stale-if-error bounds the stale copy
    it accepts when the upstream fails."""
    daemon_args = ("--policy", "origin", "--workers", "1", "--stale", "0s",
                   "--stale-if-error", "5m")

    def test_request_stale_if_error(self):
        path = "/rsie?cc=max-age%3D1"
        first = self.d.get(path)
        self.assertEqual(first.status, 200)
        time.sleep(1.3)  # now stale; only the stale-if-error window is left
        self.up.configure("fail=reset")
        r = self.d.get(path, headers={"Cache-Control": "stale-if-error=0"})
        self.assertEqual(r.status, 502, r)
        r = self.d.get(path, headers={"Cache-Control": "stale-if-error=60"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.xcache, "STALE-IF-ERROR")
        self.assertEqual(r.body, first.body)
        r = self.d.get(path)
        self.assertEqual(r.xcache, "STALE-IF-ERROR")
        self.up.configure("")


if __name__ == "__main__":
    unittest.main()
