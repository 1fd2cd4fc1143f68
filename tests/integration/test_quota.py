"""Upstream quota (issue 10): the local budget spends one token per real
upstream call (never for hits or followers), an empty budget serves stale or
429 quota_exhausted with Retry-After, and an upstream 429 with Retry-After
stops calls to it for exactly that long."""
import time
import unittest

from harness import Daemon, Upstream, herd, write_temp

CONFIG = """\
[upstream default]
url = {url}
rate_limit = 5/m
rate_burst = 5

[route /]
ttl = 1s
stale = 0s
stale_if_error = 5m
"""


class QuotaTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.cfg = write_temp(CONFIG.format(url=self.up.url), suffix=".ini")
        self.d = Daemon(None, "--workers", "2", config=self.cfg)
        self.addCleanup(self.d.stop)

    def test_budget_allows_exactly_burst_calls(self):
        rs = herd(self.d.port, [f"/k{i}?delay_ms=50" for i in range(12)])
        ok = [r for r in rs if r.status == 200]
        refused = [r for r in rs if r.status == 429]
        self.assertEqual(len(ok), 5, rs)
        self.assertEqual(len(refused), 7, rs)
        for r in refused:
            self.assertEqual(r.json()["error"], "quota_exhausted")
            self.assertGreaterEqual(int(r.header("retry-after")), 1)
        self.assertEqual(self.up.total(), 5)

    def test_a_herd_spends_one_token_and_hits_none(self):
        rs = herd(self.d.port, ["/same?delay_ms=100"] * 40)
        self.assertTrue(all(r.status == 200 for r in rs), rs[:3])
        for _ in range(20):
            self.assertEqual(self.d.get("/same?delay_ms=100").xcache, "HIT")
        self.assertEqual(self.up.total(), 1)
        # four tokens left: four more distinct keys, then refusal
        rs = [self.d.get(f"/other{i}") for i in range(5)]
        self.assertEqual([r.status for r in rs], [200, 200, 200, 200, 429])

    def test_empty_budget_serves_stale(self):
        first = self.d.get("/s")
        self.assertEqual(first.status, 200)
        for i in range(4):
            self.assertEqual(self.d.get(f"/spend{i}").status, 200)
        time.sleep(1.2)  # past the 1 s TTL: only a stale copy is left
        r = self.d.get("/s")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.xcache, "STALE")
        self.assertEqual(r.body, first.body)
        self.assertEqual(self.up.total(), 5)


class RateLimitHeadersTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.d = Daemon(self.up.url, "--workers", "1")
        self.addCleanup(self.d.stop)

    def test_upstream_figures_reach_stats_metrics_and_health(self):
        r = self.d.get("/rl?ratelimit=100,42,30")
        self.assertEqual(r.status, 200)
        q = self.d.stats()["upstreams"]["default"]["quota"]
        self.assertEqual(q["limit"], 100)
        self.assertEqual(q["remaining"], 42)
        self.assertLessEqual(q["reset_in_s"], 30)
        self.assertFalse(q["low"])
        m = self.d.metrics()
        self.assertIn('coalesce_upstream_ratelimit_limit{upstream="default"} 100', m)
        self.assertIn('coalesce_upstream_ratelimit_remaining{upstream="default"} 42', m)
        self.assertEqual(self.d.health().json()["status"], "healthy")
        # below 10 % remaining: degraded
        self.d.get("/rl2?ratelimit=100,5,30")
        h = self.d.health()
        self.assertEqual(h.status, 200)
        self.assertEqual(h.json()["status"], "degraded")
        self.assertEqual(h.json()["quota"]["default"], "low")


class Upstream429Test(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.d = Daemon(self.up.url, "--workers", "2", "--ttl", "100ms",
                        "--stale", "0s", "--stale-if-error", "0s")
        self.addCleanup(self.d.stop)

    def test_retry_after_stops_calls_for_that_long(self):
        # one herd answered 429 once, shared by every waiter
        rs = herd(self.d.port, ["/limited?status=429&retry_after=2&delay_ms=50"] * 20)
        self.assertEqual([r.status for r in rs], [429] * 20)
        self.assertEqual(self.up.total(), 1)
        # the breaker is open for exactly that long: no upstream call
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            r = self.d.get("/other")
            self.assertEqual(r.status, 503, r)
            self.assertEqual(r.json()["error"], "circuit_open")
            time.sleep(0.1)
        self.assertEqual(self.up.total(), 1)
        time.sleep(0.8)  # past 2 s: one probe goes through and closes it
        r = self.d.get("/other")
        self.assertEqual(r.status, 200)
        self.assertEqual(self.up.total(), 2)


if __name__ == "__main__":
    unittest.main()
