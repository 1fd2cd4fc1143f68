"""Nothing private crosses identities (DESIGN.md §1 invariant 6): requests
with different identity headers never share a cached or coalesced answer;
a private / no-store / Set-Cookie answer reaches only the client whose
call produced it (each waiter of the herd gets its own upstream call) and
is never stored; Vary splits the cache by the named request header."""
import unittest

from harness import DaemonTest, herd


class IdentityHeadersTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def check_two_identities(self, name, values):
        path = "/me?echo=1&delay_ms=300"
        hdrs = [{name: values[i % 2]} for i in range(20)]
        rs = herd(self.d.port, [path] * 20, headers=hdrs)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        self.assertEqual(self.up.total(), 2, "one upstream call per identity")
        for k in (0, 1):
            group = [rs[i] for i in range(k, 20, 2)]
            self.assertEqual(len({r.body for r in group}), 1,
                             "one identity shares one answer")
            seen = group[0].json()["headers"].get(name.lower())
            self.assertEqual(seen, values[k], "the upstream saw this identity")
        self.assertNotEqual(rs[0].body, rs[1].body)
        # the cache keeps them apart too
        for k in (0, 1):
            r = self.d.get(path, headers={name: values[k]})
            self.assertEqual(r.xcache, "HIT")
            self.assertEqual(r.body, rs[k].body)
        # and a request with no identity is a third key
        r = self.d.get(path)
        self.assertEqual(r.xcache, "MISS")
        self.assertNotIn(name.lower(), r.json()["headers"])
        self.assertEqual(self.up.total(), 3)

    def test_authorization_is_part_of_the_key(self):
        self.check_two_identities("Authorization", ["Bearer alice", "Bearer bob"])

    def test_cookie_is_part_of_the_key(self):
        self.check_two_identities("Cookie", ["sid=alice", "sid=bob"])

    def test_x_api_key_is_part_of_the_key(self):
        self.check_two_identities("X-Api-Key", ["key-alice", "key-bob"])


class UnshareableResponseTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def check_each_gets_own_call(self, query, check=None):
        path = f"/private?{query}&delay_ms=300"
        rs = herd(self.d.port, [path] * 10)
        self.assertEqual([r.status for r in rs], [200] * 10, rs[:3])
        seqs = [r.json()["seq"] for r in rs]
        self.assertEqual(len(set(seqs)), 10,
                         f"every client got its own upstream answer: {seqs}")
        self.assertEqual(self.up.total(), 10)
        for r in rs:
            self.assertNotIn(r.xcache, ("HIT", "COALESCED", "STALE"), r)
            if check:
                check(r)
        # nothing was stored
        r = self.d.get(path)
        self.assertEqual(r.status, 200)
        self.assertNotIn(r.xcache, ("HIT", "STALE"))
        self.assertEqual(r.json()["seq"], 11)
        self.assertEqual(self.up.total(), 11)
        self.assertEqual(self.d.stats()["pending_requests"], 0)

    def test_set_cookie(self):
        def own_cookie(r):
            # the Set-Cookie a client gets is the one of its own call
            self.assertEqual(r.header("set-cookie"),
                             f"session=s{r.json()['seq']}; Path=/; HttpOnly")
        self.check_each_gets_own_call("set_cookie=1", own_cookie)

    def test_cache_control_private(self):
        self.check_each_gets_own_call("cc=private")

    def test_cache_control_no_store(self):
        self.check_each_gets_own_call("cc=no-store")


class VaryTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")
    PATH = "/news?vary=Accept-Language&echo=1&delay_ms=100"

    def lang(self, r):
        return r.json()["headers"].get("accept-language")

    def test_languages_get_separate_entries(self):
        en = self.d.get(self.PATH, headers={"Accept-Language": "en"})
        fr = self.d.get(self.PATH, headers={"Accept-Language": "fr"})
        self.assertEqual((en.status, fr.status), (200, 200))
        self.assertEqual(en.header("vary"), "Accept-Language")
        self.assertEqual(self.lang(en), "en")
        self.assertEqual(fr.xcache, "MISS", "fr must not get the en entry")
        self.assertEqual(self.lang(fr), "fr")
        self.assertEqual(self.up.total(), 2)
        # once the URL is known to vary, each language is its own HIT
        fr2 = self.d.get(self.PATH, headers={"Accept-Language": "fr"})
        self.assertEqual(fr2.xcache, "HIT")
        self.assertEqual(fr2.body, fr.body)
        de = self.d.get(self.PATH, headers={"Accept-Language": "de"})
        self.assertEqual(de.xcache, "MISS")
        self.assertEqual(self.lang(de), "de")
        de2 = self.d.get(self.PATH, headers={"Accept-Language": "de"})
        self.assertEqual((de2.xcache, de2.body), ("HIT", de.body))

    def test_mixed_herd_each_language_gets_its_own_body(self):
        hdrs = [{"Accept-Language": "en" if i % 2 == 0 else "fr"} for i in range(20)]
        rs = herd(self.d.port, [self.PATH] * 20, headers=hdrs)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        for i, r in enumerate(rs):
            self.assertEqual(self.lang(r), "en" if i % 2 == 0 else "fr", r)
        self.assertEqual(self.d.stats()["pending_requests"], 0)

    def test_first_variant_is_cached(self):
        # The first answer carrying Vary must be reachable: the same
        # language asking again is a HIT, and a cold mixed herd costs one
        # call per language.
        en = self.d.get(self.PATH, headers={"Accept-Language": "en"})
        self.assertEqual(en.xcache, "MISS")
        en2 = self.d.get(self.PATH, headers={"Accept-Language": "en"})
        self.assertEqual(en2.xcache, "HIT")
        self.assertEqual(en2.body, en.body)
        self.assertEqual(self.up.total(), 1)
        hdrs = [{"Accept-Language": "es" if i % 2 == 0 else "it"} for i in range(20)]
        rs = herd(self.d.port, ["/other?vary=Accept-Language&delay_ms=300"] * 20,
                  headers=hdrs)
        self.assertEqual([r.status for r in rs], [200] * 20)
        self.assertEqual(self.up.total(), 3)


if __name__ == "__main__":
    unittest.main()
