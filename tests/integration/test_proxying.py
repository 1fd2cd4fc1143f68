"""What the daemon sends upstream and passes back (DESIGN.md §3): injected
headers replace the client's, hop-by-hop headers are dropped both ways,
Host is the upstream's, absolute-form targets cannot redirect the proxy,
non-GET methods pass through uncoalesced and uncached, equivalent paths and
query orders share one key (and the upstream receives the normalised
form), unknown routes get 404 JSON, and keep-alive connections work."""
import http.client
import json
import unittest

from harness import (HOST, STATS, Daemon, DaemonTest, Upstream, herd,
                     parse_raw_response, raw_request, request, write_temp)


class InjectedHeaderTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.d = Daemon(self.up.url, "--workers", "2",
                        "--header", "X-Api-Key: ${TEST_KEY}",
                        "--header", "X-Static: fixed",
                        env={"TEST_KEY": "k-from-env-42"})
        self.addCleanup(self.stop_daemon)

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)

    def test_injected_header_reaches_upstream(self):
        r = self.d.get("/k?echo=1")
        self.assertEqual(r.status, 200, r)
        seen = r.json()["headers"]
        self.assertEqual(seen.get("x-api-key"), "k-from-env-42")
        self.assertEqual(seen.get("x-static"), "fixed")

    def test_client_header_of_that_name_is_replaced(self):
        r = self.d.get("/k2?echo=1", headers={"X-Api-Key": "client-own-key",
                                              "X-Static": "client"})
        self.assertEqual(r.status, 200, r)
        seen = r.json()["headers"]
        self.assertEqual(seen.get("x-api-key"), "k-from-env-42",
                         "only the configured value, never the client's")
        self.assertEqual(seen.get("x-static"), "fixed")
        # the secret is never echoed by the admin side
        stats = request(self.d.admin_port, STATS).body.decode()
        for text in (self.d.metrics(), stats):
            self.assertNotIn("k-from-env-42", text)


class HeaderForwardingTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_hop_by_hop_request_headers_are_not_forwarded(self):
        r = self.d.get("/hop?echo=1", headers={
            "Connection": "keep-alive, X-Hop-Secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic cHJveHk6cGFzcw==",
            "X-Hop-Secret": "listed-in-connection",
            "X-End-To-End": "kept",
        })
        self.assertEqual(r.status, 200, r)
        seen = r.json()["headers"]
        for name in ("keep-alive", "te", "upgrade", "proxy-authorization",
                     "x-hop-secret"):
            self.assertNotIn(name, seen, f"{name} must not be forwarded")
        self.assertNotIn("x-hop-secret", seen.get("connection", "").lower())
        self.assertEqual(seen.get("x-end-to-end"), "kept")

    def test_hop_by_hop_response_headers_are_not_passed_back(self):
        r = self.d.get("/hop2?hdr=Connection:X-Up-Hop&hdr=X-Up-Hop:1"
                       "&hdr=Keep-Alive:timeout%3D99&hdr=X-Up-Kept:yes")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("x-up-hop"))
        self.assertNotEqual(r.header("keep-alive"), "timeout=99")
        self.assertEqual(r.header("x-up-kept"), "yes")

    def test_host_is_the_upstreams(self):
        r = self.d.get("/host?echo=1", headers={"Host": "evil.example"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["headers"].get("host"),
                         f"127.0.0.1:{self.up.port}")

    def test_absolute_form_target_goes_to_the_configured_upstream(self):
        raw = (b"GET http://evil.example/abs?echo=1 HTTP/1.1\r\n"
               b"Host: evil.example\r\nConnection: close\r\n\r\n")
        status, headers, body = parse_raw_response(raw_request(self.d.port, raw))
        self.assertEqual(self.up.total(), 1, "the request reached our upstream")
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertEqual(doc["path"], "/abs")
        self.assertEqual(doc["headers"].get("host"), f"127.0.0.1:{self.up.port}")

    def test_other_target_forms_cannot_redirect_the_proxy(self):
        raw = (b"GET https://evil.example:443/abs2 HTTP/1.1\r\n"
               b"Host: evil.example\r\nConnection: close\r\n\r\n")
        status, _, body = parse_raw_response(raw_request(self.d.port, raw))
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["path"], "/abs2")
        raw = (b"GET //evil.example/x HTTP/1.1\r\n"
               b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status, _, body = parse_raw_response(raw_request(self.d.port, raw))
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["path"], "//evil.example/x")
        self.assertEqual(self.up.total(), 2, "both reached our upstream")
        raw = (b"CONNECT evil.example:443 HTTP/1.1\r\n"
               b"Host: evil.example:443\r\nConnection: close\r\n\r\n")
        status, _, body = parse_raw_response(raw_request(self.d.port, raw))
        self.assertGreaterEqual(status, 400, body)
        self.assertEqual(self.up.total(), 2)


class PassThroughTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_methods_pass_through_with_body_and_bypass(self):
        for i, method in enumerate(("POST", "PUT", "DELETE", "PATCH")):
            payload = b'{"n":%d}' % i
            r = self.d.get("/items/1", method=method, body=payload,
                           headers={"Content-Type": "application/json"})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.xcache, "BYPASS")
            doc = r.json()
            self.assertEqual(doc["method"], method)
            self.assertEqual(doc["body_len"], len(payload))
        self.assertEqual(self.up.total(), 4)
        self.assertEqual(self.up.stats()["methods"],
                         {"POST": 1, "PUT": 1, "DELETE": 1, "PATCH": 1})

    def test_concurrent_posts_are_never_coalesced_or_cached(self):
        rs = herd(self.d.port, ["/orders?delay_ms=300"] * 10, method="POST",
                  body=[b"order-%d" % i for i in range(10)])
        self.assertEqual([r.status for r in rs], [200] * 10, rs[:3])
        self.assertEqual({r.xcache for r in rs}, {"BYPASS"})
        self.assertEqual(len({r.json()["seq"] for r in rs}), 10)
        self.assertEqual(self.up.total(), 10)
        r = self.d.get("/orders?delay_ms=300", method="POST", body=b"again")
        self.assertEqual(r.xcache, "BYPASS")
        self.assertEqual(self.up.total(), 11)
        # a POST response is not served to a later GET either
        g = self.d.get("/orders?delay_ms=300")
        self.assertEqual(g.xcache, "MISS")
        self.assertEqual(g.json()["method"], "GET")
        s = self.d.stats()
        self.assertEqual(s["total_requests"], 1, "only the GET is cacheable")
        self.assertEqual(s["coalesced_requests"], 0)


class KeyNormalisationTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_dot_segments_share_a_key(self):
        paths = ["/a/%2e%2e/b?x=1&delay_ms=300", "/b?x=1&delay_ms=300"] * 10
        rs = herd(self.d.port, paths)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        self.assertEqual(len({r.body for r in rs}), 1)
        self.assertEqual(self.up.total(), 1)
        self.assertEqual(rs[0].json()["path"], "/b", "upstream got the normalised path")
        self.assertEqual(list(self.up.stats()["paths"]), ["/b?delay_ms=300&x=1"])
        r = self.d.get("/./c/../b?delay_ms=300&x=1")
        self.assertEqual(r.xcache, "HIT")

    def test_query_order_shares_a_key(self):
        rs = herd(self.d.port, ["/q?b=2&a=1&delay_ms=300",
                                "/q?a=1&b=2&delay_ms=300"] * 10)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        self.assertEqual(len({r.body for r in rs}), 1)
        self.assertEqual(self.up.total(), 1)
        self.assertEqual(rs[0].json()["query"], "a=1&b=2&delay_ms=300")

    def test_different_requests_do_not_share(self):
        # each pair may mean different things upstream: never one key
        pairs = [("/q?a=1", "/q?a=2"),
                 ("/q?id=1&id=2", "/q?id=2&id=1"),  # repeated names keep order
                 ("/a%2Fb", "/a/b"),                # an encoded slash stays encoded
                 ("/c?x=a+b", "/c?x=a%2Bb")]
        for a, b in pairs:
            with self.subTest(a=a, b=b):
                before = self.up.total()
                ra, rb = self.d.get(a), self.d.get(b)
                self.assertEqual((ra.xcache, rb.xcache), ("MISS", "MISS"))
                self.assertNotEqual(ra.body, rb.body)
                self.assertEqual(self.up.total(), before + 2)
        self.assertIn("/a%2Fb", self.up.stats()["paths"])

    def test_unreserved_escapes_share_a_key(self):
        a = self.d.get("/%7Euser?a=%31")
        b = self.d.get("/~user?a=1")
        self.assertEqual((a.xcache, b.xcache), ("MISS", "HIT"))
        self.assertEqual(a.json()["path"], "/~user")
        self.assertEqual(self.up.total(), 1)


ROUTE_INI = """\
[upstream api]
url = {url}

[route /api]
upstream = api
"""


class RoutesTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        cfg = write_temp(ROUTE_INI.format(url=self.up.url), testcase=self)
        self.d = Daemon(None, "--workers", "2", config=cfg)
        self.addCleanup(self.stop_daemon)

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)

    def test_unknown_route_is_404_json(self):
        r = self.d.get("/other/x")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(r.json()["error"], "no_route")
        r = self.d.get("/apix")  # a prefix matches whole segments only
        self.assertEqual(r.status, 404, r)
        self.assertEqual(self.up.total(), 0)
        r = self.d.get("/api/x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["path"], "/api/x")
        self.assertEqual(self.up.total(), 1)


class KeepAliveTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_two_requests_on_one_connection(self):
        conn = http.client.HTTPConnection(HOST, self.d.port, timeout=10)
        try:
            conn.request("GET", "/ka/1")
            r1 = conn.getresponse()
            b1 = r1.read()
            sock = conn.sock
            conn.request("GET", "/ka/2")
            r2 = conn.getresponse()
            b2 = r2.read()
            self.assertIs(conn.sock, sock, "the connection was kept")
            conn.request("GET", "/ka/1")
            r3 = conn.getresponse()
            b3 = r3.read()
            self.assertIs(conn.sock, sock)
        finally:
            conn.close()
        self.assertEqual((r1.status, r2.status, r3.status), (200, 200, 200))
        self.assertIn(b'"path":"/ka/1"', b1)
        self.assertIn(b'"path":"/ka/2"', b2)
        self.assertEqual(b3, b1)
        self.assertEqual(r3.getheader("X-Cache"), "HIT")


if __name__ == "__main__":
    unittest.main()
