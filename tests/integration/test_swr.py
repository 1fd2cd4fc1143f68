"""Stale-while-revalidate through the real daemon: past the TTL every
request gets the old body at once (X-Cache: STALE) while exactly one
background refresh goes upstream; the refreshed body is then a HIT; past
ttl + stale the entry is gone and the next request is a MISS.

Real sleeps here only pass a short TTL; nothing asserts on speed."""
import time
import unittest

from harness import DaemonTest, herd, wait_for

TTL_S = 0.4


def age_of(r):
    v = r.header("age")
    if v is None:
        raise AssertionError(f"no Age header on {r!r}")
    return int(v)


class StaleWhileRevalidateTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "400ms", "--stale", "30s")

    def test_stale_herd_gets_old_body_and_one_refresh(self):
        # The refresh takes 3 s upstream, so while the herd is being
        # answered the refresh is still in flight: if STALE answers waited
        # for it, the upstream would show it finished (inflight 0).
        path = "/scores?match=7&delay_ms=3000"
        first = self.d.get(path)
        self.assertEqual(first.status, 200, first)
        self.assertEqual(first.xcache, "MISS")
        self.assertEqual(first.json()["path_seq"], 1)
        self.assertEqual(self.up.total(), 1)

        time.sleep(TTL_S + 0.2)  # past the TTL, well inside the stale window
        rs = herd(self.d.port, [path] * 20)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        self.assertEqual([r.xcache for r in rs], ["STALE"] * 20, rs)
        for r in rs:
            self.assertEqual(r.body, first.body, "stale answers carry the old body")
            age = age_of(r)
            self.assertGreaterEqual(age, 0)
            self.assertLessEqual(age, 31)
        up = self.up.stats()
        self.assertEqual(up["total"], 2, "exactly one background refresh")
        self.assertEqual(up["inflight"], 1,
                         "the stale answers did not wait for the refresh")

        # the refresh lands; still only one call
        wait_for(lambda: self.up.stats()["inflight"] == 0, timeout=15,
                 what="refresh finished")
        r = wait_for(lambda: (lambda x: x if x.xcache == "HIT" else None)(
            self.d.get(path)), timeout=3, what="HIT after refresh")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["path_seq"], 2, "the refreshed body")
        self.assertLessEqual(age_of(r), 1)
        self.assertEqual(self.up.total(), 2)

        s = self.d.stats()
        # the herd's 20, plus any poll above that arrived before the
        # refreshed copy was stored (a slow machine)
        self.assertGreaterEqual(s["stale_hits"], 20)
        self.assertEqual(s["api_calls_made"], 2)
        self.assertEqual(s["background_refreshes"], 1)
        self.assertEqual(s["pending_requests"], 0)

    def test_stale_answer_is_immediate_even_for_one_request(self):
        path = "/one?delay_ms=50"
        a = self.d.get(path)
        self.assertEqual(a.xcache, "MISS")
        time.sleep(TTL_S + 0.2)
        b = self.d.get(path)
        self.assertEqual(b.xcache, "STALE")
        self.assertEqual(b.body, a.body)
        wait_for(lambda: self.up.total() == 2 and self.up.stats()["inflight"] == 0,
                 what="background refresh")
        c = self.d.get(path)
        self.assertEqual(c.xcache, "HIT")
        self.assertEqual(c.json()["path_seq"], 2)


class PastStaleWindowTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "300ms", "--stale", "300ms",
                   "--stale-if-error", "0s")

    def test_past_ttl_plus_stale_is_a_miss(self):
        path = "/gone?delay_ms=10"
        a = self.d.get(path)
        self.assertEqual(a.xcache, "MISS")
        self.assertEqual(self.d.get(path).xcache, "HIT")
        time.sleep(0.3 + 0.3 + 0.3)  # past ttl + stale
        b = self.d.get(path)
        self.assertEqual(b.status, 200)
        self.assertEqual(b.xcache, "MISS")
        self.assertEqual(b.json()["path_seq"], 2)
        self.assertEqual(self.up.total(), 2)
        s = self.d.stats()
        self.assertEqual(s["stale_hits"], 0)
        self.assertEqual(s["cache_hits"], 1)

    def test_past_ttl_plus_stale_herd_coalesces(self):
        path = "/gone2?delay_ms=300"
        self.assertEqual(self.d.get(path).xcache, "MISS")
        time.sleep(0.9)
        rs = herd(self.d.port, [path] * 20)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        xc = [r.xcache for r in rs]
        self.assertEqual(xc.count("MISS"), 1, xc)
        self.assertEqual(xc.count("COALESCED"), 19, xc)
        self.assertEqual({r.json()["path_seq"] for r in rs}, {2})
        self.assertEqual(self.up.total(), 2)


if __name__ == "__main__":
    unittest.main()
