"""The live dashboard (GET /dashboard on the admin listener): served from the
binary with strict headers, and rendered by a real headless Chromium whose
DOM must show the same figures as the stats endpoint, the hottest key in
flight (hashed, never its bytes) and the breaker and fleet state. A
screenshot under load is kept as an artifact in the build directory
(BUILD/artifacts/dashboard.png, dark, and dashboard-light.png; with
DASHBOARD_SCREENSHOT_DOCS=1 the dark one is also copied to
docs/dashboard.png — opt-in, so a test run never dirties the tree).

Chromium comes from Debian (deps/debian.txt); without /usr/bin/chromium the
browser tests skip and say so. Every Chromium is started in its own
session and killed by its process group id at the end."""
import html.parser
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (COALESCED, HOST, STATS, Daemon, DaemonTest, Upstream,
                     herd, request, wait_for, write_temp)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
NO_CHROMIUM = (f"{CHROMIUM} not found: install Debian's chromium package "
               "(deps/debian.txt; `make deps`) to render the dashboard")
FLIGHTS = "/api/v1/shared/deduplication/flights"
SECRET = "Bearer dash-s3cret-t0ken"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def artifacts_dir():
    """BUILD/artifacts, BUILD being the tree coalesced was built in."""
    build = os.path.dirname(os.path.dirname(os.path.abspath(COALESCED)))
    d = os.path.join(build, "artifacts")
    os.makedirs(d, exist_ok=True)
    return d


def chromium(url, *mode, budget_ms=5000, timeout=90):
    """Runs headless Chromium on url with `mode` (--dump-dom, or
    --screenshot=PATH ...); returns its stdout. Killed with its whole
    process group if it overstays."""
    with tempfile.TemporaryDirectory(prefix="coalesce-chromium-") as profile:
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}", *mode, url]
        p = subprocess.Popen(args, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise AssertionError(f"chromium did not finish in {timeout} s")
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # helpers it may have left
            except ProcessLookupError:
                pass
        if p.returncode != 0:
            raise AssertionError(f"chromium exited {p.returncode}: "
                                 f"{err.decode(errors='replace')[-2000:]}")
        return out.decode("utf-8", errors="replace")


class Dom(html.parser.HTMLParser):
    """Elements by id: their attributes and their text (descendants
    included); and every element's attributes in document order."""

    VOID = {"meta", "link", "img", "br", "hr", "input", "circle", "rect",
            "path", "line", "text"}

    def __init__(self, text):
        super().__init__()
        self.by_id = {}
        self.elements = []
        self.stack = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        rec = {"tag": tag, "attrs": a, "text": ""}
        self.elements.append(rec)
        if "id" in a:
            self.by_id[a["id"]] = rec
        if tag not in self.VOID:
            self.stack.append(rec)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        for rec in self.stack:
            rec["text"] += data

    def attr(self, id_, name="data-value"):
        el = self.by_id.get(id_)
        if el is None:
            raise AssertionError(f"no element #{id_} in the rendered page")
        return el["attrs"].get(name)

    def text(self, id_):
        self.attr(id_, "id")
        return self.by_id[id_]["text"].strip()

    def rows(self, attr):
        return [e["attrs"] for e in self.elements if attr in e["attrs"]]


class HeadersTest(DaemonTest):
    """No browser needed: what the listener sends."""

    def test_page_and_files_are_served_with_strict_headers(self):
        for path, ctype in (("/dashboard", "text/html; charset=utf-8"),
                            ("/dashboard.js", "text/javascript; charset=utf-8"),
                            ("/dashboard.css", "text/css; charset=utf-8"),
                            ("/dashboard.svg", "image/svg+xml")):
            with self.subTest(path):
                r = request(self.d.admin_port, path)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("content-type"), ctype)
                self.assertEqual(r.header("cache-control"), "no-store")
                csp = r.header("content-security-policy")
                self.assertIn("default-src 'self'", csp)
                self.assertIn("script-src 'self'", csp)
                self.assertNotIn("unsafe-inline", csp)
                self.assertEqual(r.header("x-content-type-options"), "nosniff")
        page = request(self.d.admin_port, "/dashboard").body.decode()
        self.assertIn('<script src="/dashboard.js"', page)
        self.assertNotIn("https://", page)
        # the proxy port does not serve it
        self.assertNotEqual(self.d.get("/dashboard").header("content-type"),
                            "text/html; charset=utf-8")
        # the other endpoints still answer
        self.assertEqual(request(self.d.admin_port, STATS).status, 200)
        self.assertIn("coalesce_requests_total", self.d.metrics())

    def test_flights_lists_the_hottest_key_hashed(self):
        hdr = {"Authorization": SECRET}
        done = {}
        t = threading.Thread(target=lambda: done.setdefault(
            "rs", herd(self.d.port, ["/hot?delay_ms=1500"] * 12,
                       headers=hdr)))
        t.start()
        try:
            doc = wait_for(lambda: (lambda j: j if j["flights"] and
                                    j["flights"][0]["waiters"] == 12 else None)(
                request(self.d.admin_port, FLIGHTS).json()),
                what="12 waiters on one flight")
        finally:
            t.join(30)
        self.assertEqual(doc["pending_requests"], 1)
        f = doc["flights"][0]
        self.assertRegex(f["key"], r"^[0-9a-f]{16}$")
        self.assertGreaterEqual(f["age_ms"], 0)
        body = request(self.d.admin_port, FLIGHTS).body.decode()
        for leak in ("dash-s3cret", "/hot", "delay_ms"):
            self.assertNotIn(leak, body)
        self.assertEqual([r.status for r in done["rs"]], [200] * 12)
        self.assertEqual(request(self.d.admin_port, FLIGHTS).json()["flights"], [])
        self.assertEqual(request(self.d.admin_port, FLIGHTS + "?limit=x").status, 400)


@unittest.skipUnless(HAVE_CHROMIUM, NO_CHROMIUM)
class RenderTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s", "--max-wait", "60s",
                   "--upstream-timeout", "60s")

    def url(self):
        return f"http://{HOST}:{self.d.admin_port}/dashboard"

    def test_rendered_figures_match_the_stats_endpoint(self):
        herd(self.d.port, ["/a?delay_ms=200"] * 40)
        for _ in range(10):
            self.assertEqual(self.d.get("/a?delay_ms=200").xcache, "HIT")
        for i in range(5):
            self.d.get(f"/b{i}")
        self.assertEqual(self.d.get("/e?fail=reset").status, 502)
        before = self.d.stats()
        dom = Dom(chromium(self.url(), "--dump-dom"))
        s = self.d.stats()
        self.assertEqual(before["total_requests"], s["total_requests"])

        # it polled more than once, so rates exist, and it is live
        body = next(e for e in dom.elements if e["tag"] == "body")
        self.assertGreaterEqual(int(body["attrs"].get("data-samples", 0)), 2,
                                "the page never polled twice")
        self.assertEqual(dom.attr("live", "data-state"), "live")
        for id_, key in (("total-requests", "total_requests"),
                         ("api-calls-saved", "api_calls_saved"),
                         ("api-calls-made", "api_calls_made"),
                         ("coalesced", "coalesced_requests"),
                         ("pending-requests", "pending_requests"),
                         ("connections", "connections_open")):
            with self.subTest(id_):
                self.assertEqual(int(dom.attr(id_)), s[key])
        self.assertEqual(dom.text("total-requests"), f"{s['total_requests']:,}")
        self.assertEqual(dom.text("api-calls-saved"), f"{s['api_calls_saved']:,}")
        self.assertEqual(float(dom.attr("hit-rate")), s["hit_rate_percent"])
        self.assertEqual(dom.text("hit-rate"), f"{s['hit_rate_percent']:.1f}%")
        self.assertEqual(int(dom.attr("cache-entries")), s["cache"]["entries"])
        self.assertEqual(int(dom.attr("err-upstream_error")),
                         s["errors_by_code"]["upstream_error"])
        self.assertGreaterEqual(s["errors_by_code"]["upstream_error"], 1)
        self.assertEqual(dom.attr("version"), s["version"])
        # breaker per upstream, health, fleet not configured
        self.assertEqual(dom.attr("breaker-default", "data-state"), "closed")
        self.assertEqual(dom.attr("status", "data-status"), "healthy")
        self.assertEqual(dom.attr("fleet-state", "data-state"), "off")
        self.assertIn("not configured", dom.text("fleet"))
        # no flight in the air: the empty note shows
        self.assertEqual(dom.rows("data-waiters"), [])
        self.assertIsNone(dom.attr("hot-empty", "hidden"))

    def test_hottest_key_in_flight_is_shown_hashed(self):
        hdr = {"Authorization": SECRET}
        done = {}
        t = threading.Thread(target=lambda: done.setdefault(
            "rs", herd(self.d.port, ["/slow?delay_ms=10000"] * 25,
                       headers=hdr)))
        t.start()
        try:
            doc = wait_for(lambda: (lambda j: j if j["flights"] and
                                    j["flights"][0]["waiters"] == 25 else None)(
                request(self.d.admin_port, FLIGHTS).json()),
                what="25 waiters on one flight")
            page = chromium(self.url(), "--dump-dom")
        finally:
            t.join(60)
        dom = Dom(page)
        rows = dom.rows("data-waiters")
        self.assertGreaterEqual(len(rows), 1, "no hot key row rendered")
        self.assertEqual(rows[0]["data-key"], doc["flights"][0]["key"])
        self.assertEqual(int(rows[0]["data-waiters"]), 25)
        self.assertEqual(dom.text("hottest-waiters"), "25")
        self.assertEqual(int(dom.attr("pending-requests")), 1)
        self.assertIsNotNone(dom.attr("hot-empty", "hidden"))
        for leak in ("dash-s3cret", "/slow"):
            self.assertNotIn(leak, page)
        self.assertEqual([r.status for r in done["rs"]], [200] * 25)


SCREENSHOT_INI = """\
[cache]
ttl = 1500ms
stale = 30s
max_wait = 90s
upstream_timeout = 90s

[breaker]
consecutive_failures = 3
window = 0
open = 1s

[upstream api]
url = {up}

[upstream payments]
url = {up}

[route /api]
upstream = api

[route /pay]
upstream = payments
"""


class Load:
    """Background traffic shaped to show every panel: hot hits, herds,
    stale refreshes, a failing upstream whose breaker keeps reopening after
    each probe, and three long herds that stay in the air as the hottest
    keys."""

    def __init__(self, d):
        self.d = d
        self.stop = threading.Event()
        self.threads = []
        self.long = []

    def start(self):
        for n, path in ((48, "/api/live/scores?delay_ms=60000"),
                        (23, "/api/live/odds?delay_ms=60000"),
                        (9, "/api/me/wallet?delay_ms=60000")):
            t = threading.Thread(target=herd, args=(self.d.port, [path] * n),
                                 kwargs={"headers": {"Authorization": SECRET}})
            t.start()
            self.long.append(t)
        for fn in (self.hits, self.herds, self.herds, self.payments):
            t = threading.Thread(target=fn)
            t.start()
            self.threads.append(t)

    def hits(self):
        i = 0
        while not self.stop.is_set():
            self.d.get(f"/api/fixtures?league={i % 4}", timeout=5)
            i += 1

    def herds(self):
        k = 0
        me = threading.get_ident()
        while not self.stop.is_set():
            herd(self.d.port, [f"/api/odds/{me}/{k}?delay_ms=120"] * 30)
            k += 1

    def payments(self):
        i = 0
        while not self.stop.is_set():  # a payments API that is down
            self.d.get(f"/pay/charge/{i}?status=503&delay_ms=30", timeout=5)
            i += 1
            time.sleep(0.01)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def join_long(self):
        for t in self.long:
            t.join(30)


@unittest.skipUnless(HAVE_CHROMIUM, NO_CHROMIUM)
class ScreenshotTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.up_stopped = False
        self.addCleanup(self.stop_upstream)
        cfg = write_temp(SCREENSHOT_INI.format(up=self.up.url), testcase=self)
        self.d = Daemon(None, "--workers", "2", config=cfg)
        self.addCleanup(self.stop_daemon)
        self.load = Load(self.d)
        # Cleanups run last-in first-out: the upstream stops first, which
        # fails the long herds at once (so the daemon's drain does not wait
        # a minute for them), then their threads end, then the daemon.
        self.addCleanup(self.load.join_long)
        self.addCleanup(self.stop_upstream)

    def stop_upstream(self):
        if not self.up_stopped:
            self.up_stopped = True
            self.up.stop()

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)

    def test_screenshot_under_load(self):
        load = self.load
        load.start()
        try:
            wait_for(lambda: len(request(self.d.admin_port, FLIGHTS).json()
                                 ["flights"]) >= 3, timeout=20,
                     what="three long flights")
            time.sleep(1.0)
            shots = {}
            for theme, name in (("dark", "dashboard.png"),
                                ("light", "dashboard-light.png")):
                path = os.path.join(artifacts_dir(), name)
                if os.path.exists(path):
                    os.unlink(path)
                url = (f"http://{HOST}:{self.d.admin_port}/dashboard"
                       f"?theme={theme}")
                chromium(url, f"--screenshot={path}", "--window-size=1400,1000",
                         budget_ms=45000, timeout=150)
                shots[theme] = path
        finally:
            load.finish()
        for path in shots.values():
            with open(path, "rb") as f:
                head = f.read(24)
            self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
            width = int.from_bytes(head[16:20], "big")
            height = int.from_bytes(head[20:24], "big")
            self.assertEqual((width, height), (1400, 1000))
            self.assertGreater(os.path.getsize(path), 20000, "a blank page?")
        if os.environ.get("DASHBOARD_SCREENSHOT_DOCS") == "1":
            shutil.copyfile(shots["dark"],
                            os.path.join(ROOT, "docs", "dashboard.png"))


if __name__ == "__main__":
    unittest.main()
