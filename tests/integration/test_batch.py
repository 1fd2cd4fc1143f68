"""Request batching (issue 8): single-id requests on a batch route gathered
into one upstream call per batch_max ids, split per id, each answer equal to
what a single-id request returns."""
import json
import unittest

from harness import Daemon, Upstream, herd, request, write_temp

CONFIG = """\
[upstream default]
url = {url}

[route /batch/items]
batch_param = id
batch_max = 20
batch_window = 30ms
batch_id_path = data[].id
batch_item_wrap = {{"data":[ITEM]}}
ttl = 30s

[route /]
ttl = 30s
"""


class BatchTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.cfg = write_temp(CONFIG.format(url=self.up.url), suffix=".ini")
        self.d = Daemon(None, "--workers", "2", config=self.cfg)
        self.addCleanup(self.d.stop)

    def single(self, i):
        """What the upstream answers for one id asked alone."""
        r = request(self.up.port, f"/batch/items?id={i}")
        self.assertEqual(r.status, 200)
        return json.loads(r.body)

    def test_50_ids_make_3_calls(self):
        rs = herd(self.d.port, [f"/batch/items?id={i}" for i in range(1, 51)])
        calls = self.up.total()
        self.assertEqual([r.status for r in rs], [200] * 50, rs[:3])
        self.assertEqual(calls, 3, "50 ids, batch_max 20 -> 3 calls")
        for i, r in enumerate(rs, start=1):
            self.assertEqual(json.loads(r.body), self.single(i))
        self.up.reset()
        # each part was cached under the key a single-id request has
        r = self.d.get("/batch/items?id=7")
        self.assertEqual(r.xcache, "HIT")
        self.assertEqual(self.up.total(), 0)
        s = self.d.stats()
        self.assertEqual(s["total_requests"], 51)
        self.assertEqual(s["api_calls_made"], 3)
        self.assertEqual(s["api_calls_saved"], 48)

    def test_cached_inflight_and_new_ids_mix(self):
        self.assertEqual(self.d.get("/batch/items?id=1").status, 200)
        self.up.reset()
        # 1 is cached, 2 asked twice (coalesced first), 3 and 4 new
        rs = herd(self.d.port, [f"/batch/items?id={i}" for i in (1, 2, 2, 3, 4)])
        self.assertEqual([r.status for r in rs], [200] * 5)
        self.assertEqual(rs[0].xcache, "HIT")
        self.assertEqual(self.up.total(), 1, "2, 3 and 4 in one batch")
        for r, i in zip(rs, (1, 2, 2, 3, 4)):
            self.assertEqual(json.loads(r.body), self.single(i))

    def test_missing_id_gets_404_for_that_id_only(self):
        rs = herd(self.d.port, ["/batch/items?id=5&missing=6",
                                "/batch/items?id=6&missing=6"])
        self.assertEqual(rs[0].status, 200)
        self.assertEqual(rs[1].status, 404)
        self.assertEqual(json.loads(rs[1].body)["error"], "not_found")
        self.assertEqual(self.up.total(), 1)

    def test_malformed_answer_is_502_for_each(self):
        rs = herd(self.d.port, [f"/batch/items?id={i}&malformed=1" for i in range(3)])
        self.assertEqual([r.status for r in rs], [502] * 3)
        self.assertEqual(self.up.total(), 1)
        self.assertTrue(self.d.get("/batch/items?id=99").status == 200)

    def test_upstream_error_reaches_each_id(self):
        rs = herd(self.d.port, [f"/batch/items?id={i}&status=500" for i in range(4)])
        self.assertEqual([r.status for r in rs], [500] * 4)
        self.assertEqual(self.up.total(), 1)


if __name__ == "__main__":
    unittest.main()
