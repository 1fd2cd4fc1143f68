"""Coalescing through the real daemon: herds collapse to one upstream call,
distinct keys do not wait on each other, and the stats prove it."""
import unittest

from harness import DaemonTest, herd


class HerdTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_200_identical_cold_gets_make_one_call(self):
        rs = herd(self.d.port, ["/fixtures?league=1&delay_ms=300"] * 200)
        self.assertEqual([r.status for r in rs], [200] * 200, rs[:3])
        bodies = {r.body for r in rs}
        self.assertEqual(len(bodies), 1, "every client gets the same body")
        body = rs[0].json()
        self.assertEqual(body["path_seq"], 1)
        self.assertEqual(self.up.total(), 1)
        xc = sorted(r.xcache for r in rs)
        self.assertEqual(xc.count("MISS"), 1)
        self.assertEqual(xc.count("COALESCED"), 199)
        for r in rs:
            self.assertIsNotNone(r.header("age"))
        s = self.d.stats()
        self.assertEqual(s["total_requests"], 200)
        self.assertEqual(s["api_calls_made"], 1)
        self.assertEqual(s["coalesced_requests"], 199)
        self.assertEqual(s["api_calls_saved"], 199)
        self.assertEqual(s["hit_rate_percent"], 99.5)
        self.assertEqual(s["pending_requests"], 0)
        # and then it is a cache hit
        r = self.d.get("/fixtures?delay_ms=300&league=1")  # other order, same key
        self.assertEqual(r.xcache, "HIT")
        self.assertEqual(r.body, rs[0].body)
        self.assertEqual(self.up.total(), 1)

    def test_50_keys_by_20_make_50_calls(self):
        paths = [f"/odds/{k}?delay_ms=200" for k in range(50) for _ in range(20)]
        rs = herd(self.d.port, paths)
        self.assertTrue(all(r.status == 200 for r in rs), [r for r in rs if r.status != 200][:3])
        for k in range(50):
            group = {rs[k * 20 + i].body for i in range(20)}
            self.assertEqual(len(group), 1)
            self.assertEqual(rs[k * 20].json()["path"], f"/odds/{k}")
        self.assertEqual(self.up.total(), 50)
        s = self.d.stats()
        self.assertEqual(s["api_calls_made"], 50)
        self.assertEqual(s["total_requests"], 1000)
        self.assertEqual(s["coalesced_requests"] + s["cache_hits"], 950)
        self.assertEqual(s["pending_requests"], 0)

    def test_head_is_served_from_get(self):
        r = self.d.get("/h?delay_ms=10", method="HEAD")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")
        r2 = self.d.get("/h?delay_ms=10")
        self.assertEqual(r2.xcache, "HIT")
        self.assertEqual(int(r.header("content-length")), len(r2.body))
        self.assertEqual(self.up.total(), 1)


if __name__ == "__main__":
    unittest.main()
