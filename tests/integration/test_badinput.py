"""Hostile and broken client input through raw sockets (issue 6, DESIGN.md
§3 "never a hang, never a crash", daemon/http_server.h "request hygiene").

Every case must end in a clear 4xx (JSON, Connection: close, connection
closed) or a closed connection — never a crash, a hang, an upstream call
for a rejected request, or one request's answer given to another. After
every case the daemon is alive and a normal request still works.
"""
import json
import resource
import socket
import threading
import time
import unittest

from harness import (HOST, Daemon, DaemonTest, Upstream, herd, wait_for,
                     write_temp)


def exchange(port, data, timeout=5.0, shut_write=False):
    """Sends `data` on a new connection (optionally half-closing after it)
    and reads until the server closes or `timeout` passes. Returns (bytes,
    closed)."""
    chunks, closed = [], False
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shut_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close before reading everything
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            chunks.append(b)
    return b"".join(chunks), closed


def parse_all(data):
    """Splits raw bytes into consecutive responses: a list of (status,
    headers, body), headers lower-cased. Stops at anything incomplete."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        if status < 200 or status in (204, 304):
            n = 0
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


GOOD = b"GET /good HTTP/1.1\r\nHost: h\r\n\r\n"


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n"


# (name, raw request, statuses allowed). Each must be answered with one of
# these and a closed connection, and must never reach the upstream.
REJECTED = [
    ("no version", b"GET /\r\n\r\n", {400}),
    ("method only", b"GET\r\n\r\n", {400}),
    ("extra token", b"GET / HTTP/1.1 x\r\nHost: h\r\n\r\n", {400}),
    ("bad protocol name", b"GET / HTTX/1.1\r\nHost: h\r\n\r\n", {400}),
    ("version letters", b"GET / HTTP/1.a\r\nHost: h\r\n\r\n", {400}),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", {505, 400}),
    ("HTTP/3.1", b"GET / HTTP/3.1\r\nHost: h\r\n\r\n", {505, 400}),
    ("lower-case method", b"get / HTTP/1.1\r\nHost: h\r\n\r\n", {400, 405, 501}),
    ("unknown method", b"FROB / HTTP/1.1\r\nHost: h\r\n\r\n", {400, 405, 501}),
    ("CONNECT", b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", {405, 400}),
    ("target not origin-form", b"GET x/y HTTP/1.1\r\nHost: h\r\n\r\n", {400}),
    ("tab in target", b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", {400}),
    ("DEL in target", b"GET /a\x7fb HTTP/1.1\r\nHost: h\r\n\r\n", {400}),
    ("NUL in target", b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n", {400}),
    ("space in field name", get(b"/", b"Bad Name: v\r\n"), {400}),
    ("space before colon", get(b"/", b"X-A : v\r\n"), {400}),
    ("field without colon", get(b"/", b"NoColonHere\r\n"), {400}),
    ("empty field name", get(b"/", b": v\r\n"), {400}),
    ("separator in name", get(b"/", b"X(A): v\r\n"), {400}),
    ("control byte in value", get(b"/", b"X-A: a\x01b\r\n"), {400}),
    ("DEL in value", get(b"/", b"X-A: a\x7fb\r\n"), {400}),
    ("NUL in value", get(b"/", b"X-A: a\x00b\r\n"), {400}),
    ("NUL in name", get(b"/", b"X-\x00A: v\r\n"), {400}),
    ("bare CR in value", get(b"/", b"X-A: a\rb\r\n"), {400}),
    ("bare CR ends a line", b"GET / HTTP/1.1\rHost: h\r\n\r\n", {400}),
    ("obs-fold", get(b"/", b"X-A: a\r\n folded\r\n"), {400}),
    ("whitespace before the first field", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", {400}),
    ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", {400}),
    ("two Host fields", get(b"/", b"Host: other\r\n"), {400}),
    ("Content-Length twice, same value",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", {400}),
    ("Content-Length twice, different",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", {400}),
    ("Content-Length list",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", {400}),
    ("Content-Length negative",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", {400}),
    ("Content-Length with sign",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", {400}),
    ("Content-Length hex",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\nabc", {400}),
    ("Content-Length overflow",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n", {400, 413}),
    ("Transfer-Encoding and Content-Length (smuggling)",
     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", {400}),
    ("Content-Length then Transfer-Encoding",
     b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     b"0\r\n\r\n", {400}),
    ("Transfer-Encoding twice",
     b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", {400}),
    ("Transfer-Encoding gzip, chunked",
     b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", {400}),
    ("Transfer-Encoding identity",
     b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", {400}),
    ("Transfer-Encoding in HTTP/1.0",
     b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("bad chunk size",
     b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", {400}),
    ("TLS handshake bytes", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, {400}),
    ("empty lines only", b"\r\n" * 10, {400}),
]


class RejectTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def alive(self, tag):
        self.assertIsNone(self.d.proc.p.poll(), "coalesced died")
        r = self.d.get(f"/alive/{tag}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["path"], f"/alive/{tag}")

    def test_malformed_requests_get_4xx_and_close(self):
        for i, (name, raw, allowed) in enumerate(REJECTED):
            with self.subTest(name):
                before = self.up.total()
                data, closed = exchange(self.d.port, raw)
                rs = parse_all(data)
                self.assertEqual(len(rs), 1, f"one answer, got {data[:300]!r}")
                status, headers, body = rs[0]
                self.assertIn(status, allowed, body)
                self.assertEqual(headers.get("connection"), "close")
                self.assertEqual(headers.get("content-type"), "application/json")
                self.assertIn("error", json.loads(body))
                self.assertTrue(closed, "the connection is closed after a 4xx")
                self.assertEqual(self.up.total(), before, "nothing reached upstream")
                self.alive(i)
        self.assertNotIn("/smuggled", self.up.stats()["paths"])
        m = self.d.metrics()
        self.assertRegex(m, r'coalesce_http_rejections_total\{reason="bad_request"\} [1-9]')

    def test_lenient_forms_are_read_one_way_only(self):
        # RFC 9112 §2.2 and §3 let a server accept a lone LF as a line end
        # and several spaces between request-line words; what matters is
        # that such a head is read one way only (the upstream gets a request
        # line we rebuild) or refused.
        for i, raw in enumerate([
                b"GET /lf HTTP/1.1\nHost: h\nConnection: close\n\n",
                b"GET  /lf  HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"]):
            with self.subTest(raw=raw):
                data, closed = exchange(self.d.port, raw)
                rs = parse_all(data)
                self.assertEqual(len(rs), 1, data)
                self.assertIn(rs[0][0], (200, 400))
                if rs[0][0] == 200:
                    self.assertEqual(json.loads(rs[0][2])["path"], "/lf")
                self.assertTrue(closed)
                self.alive(f"lf{i}")

    def test_pipelined_garbage_after_a_valid_request(self):
        raw = (get(b"/p/1") + get(b"/p/2?delay_ms=200") + get(b"/p/3") +
               b"\x16\x03\x01garbage that is not http\r\n\r\n" + get(b"/p/never"))
        data, closed = exchange(self.d.port, raw)
        rs = parse_all(data)
        self.assertEqual([r[0] for r in rs], [200, 200, 200, 400], data[-400:])
        # answers in request order, each its own
        self.assertEqual([json.loads(r[2])["path"] for r in rs[:3]],
                         ["/p/1", "/p/2", "/p/3"])
        self.assertEqual(rs[3][1].get("connection"), "close")
        self.assertTrue(closed)
        self.assertNotIn("/p/never", self.up.stats()["paths"])
        self.alive("pipe")

    def test_pipelined_requests_keep_their_order_across_hits_and_misses(self):
        self.d.get("/o/hit")  # warm
        raw = b"".join(get(p) for p in (b"/o/slow?delay_ms=300", b"/o/hit",
                                        b"/o/fast", b"/o/hit?x=1"))
        raw += b"GET /o/last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        data, closed = exchange(self.d.port, raw)
        rs = parse_all(data)
        self.assertEqual([json.loads(r[2])["path"] + "?" + json.loads(r[2])["query"]
                          for r in rs],
                         ["/o/slow?delay_ms=300", "/o/hit?", "/o/fast?",
                          "/o/hit?x=1", "/o/last?"])
        self.assertEqual([r[1].get("x-cache") for r in rs],
                         ["MISS", "HIT", "MISS", "MISS", "MISS"])
        self.assertTrue(closed)

    def test_smuggled_request_in_a_body_is_never_parsed(self):
        # A body that looks like a request is just a body.
        inner = b"GET /inner HTTP/1.1\r\nHost: h\r\n\r\n"
        raw = (b"POST /outer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(inner)
               + inner + b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data, _ = exchange(self.d.port, raw)
        rs = parse_all(data)
        self.assertEqual([json.loads(r[2])["path"] for r in rs], ["/outer", "/after"])
        self.assertEqual(json.loads(rs[0][2])["body_len"], len(inner))
        self.assertNotIn("/inner", self.up.stats()["paths"])


class LimitsOfInputTest(DaemonTest):
    """The default size limits: URI 8 KiB (414), header section 16 KiB and
    100 fields (431), body 1 MiB (413)."""

    daemon_args = ("--workers", "2")

    def reject(self, raw, status, shut_write=False):
        before = self.up.total()
        data, closed = exchange(self.d.port, raw, shut_write=shut_write)
        rs = parse_all(data)
        self.assertGreaterEqual(len(rs), 1, data[:200])
        self.assertEqual(rs[-1][0], status, rs[-1][2])
        self.assertTrue(json.loads(rs[-1][2])["error"])
        self.assertTrue(closed)
        self.assertEqual(self.up.total(), before)
        self.assertEqual(self.d.get("/after").status, 200)

    def test_uri_too_long(self):
        ok = self.d.get("/u/" + "a" * 7000)
        self.assertEqual(ok.status, 200, "a long URI under the limit is fine")
        self.reject(get(b"/u/" + b"a" * 9000), 414)
        self.reject(get(b"/u/x?" + b"q=1&" * 5000), 414)

    def test_header_section_too_large(self):
        self.reject(get(b"/h", b"X-Big: " + b"v" * 17000 + b"\r\n"), 431)
        many = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 200) for i in range(90))
        self.reject(get(b"/h", many), 431)
        # whitespace padding counts too
        self.reject(get(b"/h", b"X-Pad: a" + b" " * 17000 + b"b\r\n"), 431)

    def test_too_many_header_fields(self):
        ok = b"".join(b"X-F%d: v\r\n" % i for i in range(98))
        ok += b"Connection: close\r\n"  # + Host = 100 fields
        data, _ = exchange(self.d.port, get(b"/hf", ok))
        self.assertEqual(parse_all(data)[0][0], 200)
        self.reject(get(b"/hf", ok + b"X-One-Too-Many: v\r\n"), 431)

    def test_body_too_large(self):
        # announced: refused at once, before the body is sent
        self.reject(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", 413)
        # announced with Expect: 100-continue: 413 and no 100
        data, closed = exchange(self.d.port, b"POST /b HTTP/1.1\r\nHost: h\r\n"
                                b"Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n")
        rs = parse_all(data)
        self.assertEqual([r[0] for r in rs], [413], data[:200])
        self.assertTrue(closed)
        # chunked: refused once the limit is passed
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        self.reject(b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + chunk * 17 + b"0\r\n\r\n", 413)
        # under the limit is fine
        r = self.d.get("/b", method="POST", body=b"y" * 1000000)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_len"], 1000000)
        m = self.d.metrics()
        self.assertRegex(m, r'coalesce_http_rejections_total\{reason="body_too_large"\} [1-9]')


class DecoyServer:
    """A listener that must never be contacted: counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            c.close()

    def stop(self):
        self.stopping = True
        self.t.join(2)
        self.sock.close()


class NotAnOpenProxyTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_targets_and_host_headers_cannot_reach_another_server(self):
        decoy = DecoyServer()
        self.addCleanup(decoy.stop)
        dp = b"127.0.0.1:%d" % decoy.port
        cases = [
            b"GET http://" + dp + b"/steal1?echo=1 HTTP/1.1\r\nHost: " + dp + b"\r\n\r\n",
            b"GET https://" + dp + b"/steal2?echo=1 HTTP/1.1\r\nHost: " + dp + b"\r\n\r\n",
            b"GET http://user@" + dp + b"/steal3?echo=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /steal4?echo=1 HTTP/1.1\r\nHost: " + dp + b"\r\n\r\n",
            b"GET //" + dp + b"/steal5?echo=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /steal6@" + dp + b"/?echo=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            (b"GET /steal7?echo=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: " + dp +
             b"\r\nForwarded: host=" + dp + b"\r\n\r\n"),
            b"GET /steal8?echo=1 HTTP/1.0\r\nHost: " + dp + b"\r\n\r\n",
            b"GET http://" + dp + b" HTTP/1.1\r\nHost: " + dp + b"\r\n\r\n",
        ]
        for i, raw in enumerate(cases):
            with self.subTest(i=i, raw=raw[:60]):
                data, _ = exchange(self.d.port, raw.replace(
                    b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                rs = parse_all(data)
                self.assertEqual(len(rs), 1, data)
                status, _, body = rs[0]
                self.assertIn(status, (200, 400), body)
                if status == 200 and b"headers" in body:
                    seen = json.loads(body)["headers"]
                    self.assertEqual(seen.get("host"), f"127.0.0.1:{self.up.port}")
        time.sleep(0.3)
        self.assertEqual(decoy.accepted, 0, "the decoy was contacted: an open proxy")
        self.assertGreaterEqual(self.up.total(), 7)


class KeyAliasingTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_percent_encoding_cannot_alias_keys(self):
        must_differ = [("/k/a%2Fb", "/k/a/b"), ("/k/a%3Fb", "/k/a?b"),
                       ("/k2/a%2Fb", "/k2/a%252Fb"), ("/k/x%26y=1", "/k/x&y=1"),
                       ("/k/q?a=1%26b%3D2", "/k/q?a=1&b=2"), ("/k/q?a=%2B", "/k/q?a=+"),
                       ("/k/q?a%3D1", "/k/q?a=1"), ("/k/%2e%2e%2fetc", "/etc")]
        for a, b in must_differ:
            with self.subTest(differ=(a, b)):
                before = self.up.total()
                ra, rb = self.d.get(a), self.d.get(b)
                self.assertEqual((ra.status, rb.status), (200, 200), (ra, rb))
                self.assertNotEqual(ra.xcache, "HIT")
                self.assertEqual(rb.xcache, "MISS", "a different key")
                self.assertEqual(self.up.total(), before + 2)
        must_share = [("/s/%61", "/s/a"), ("/s/a%2fb", "/s/a%2Fb"), ("/s/%7E", "/s/~"),
                      ("/s/q?x=%41", "/s/q?x=A")]
        for a, b in must_share:
            with self.subTest(share=(a, b)):
                before = self.up.total()
                ra, rb = self.d.get(a), self.d.get(b)
                self.assertEqual((ra.status, rb.status), (200, 200), (ra, rb))
                self.assertEqual(rb.xcache, "HIT", "the same key")
                self.assertEqual(rb.body, ra.body)
                self.assertEqual(self.up.total(), before + 1)
        # the upstream sees the encoded slash still encoded
        self.assertIn("/k/a%2Fb", self.up.stats()["paths"])
        # an encoded NUL is refused or kept apart, never cut short to /n/a
        before = self.up.total()
        r0, r1 = self.d.get("/n/a%00b"), self.d.get("/n/a")
        self.assertIn(r0.status, (200, 400), r0)
        self.assertEqual((r1.status, r1.xcache), (200, "MISS"))
        self.assertEqual(self.up.total(), before + 1 + (r0.status == 200))


SLOW_INI = """\
[server]
header_timeout = 1s
idle_timeout = 2s
"""


class SlowClientTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        cfg = write_temp(SLOW_INI, testcase=self)
        self.d = Daemon(self.up.url, "--workers", "2", config=cfg)
        self.addCleanup(self.stop_daemon)

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)

    def slowloris(self, results, i):
        """Sends a head one byte per 100 ms (it would take ~6 s)."""
        head = get(b"/slow/%d" % i, b"X-Padding: " + b"p" * 20 + b"\r\n")
        got, closed = b"", False
        start = time.monotonic()
        with socket.create_connection((HOST, self.d.port), timeout=10) as s:
            for b in head:
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.1)
                if time.monotonic() - start > 8:
                    break
            s.settimeout(3)
            try:
                while True:
                    b = s.recv(4096)
                    if not b:
                        closed = True
                        break
                    got += b
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
        results[i] = (got, closed, time.monotonic() - start)

    def test_slowloris_is_cut_off_and_others_are_served(self):
        n = 30
        results = [None] * n
        ts = [threading.Thread(target=self.slowloris, args=(results, i)) for i in range(n)]
        for t in ts:
            t.start()
        time.sleep(0.5)
        for k in range(5):  # meanwhile the daemon serves everyone else
            r = self.d.get(f"/meanwhile/{k}", timeout=5)
            self.assertEqual(r.status, 200, r)
            time.sleep(0.2)
        for t in ts:
            t.join(20)
        for got, closed, took in results:
            self.assertTrue(closed, "the slow connection was closed")
            rs = parse_all(got)
            self.assertTrue(rs == [] or rs[0][0] == 408, got[:200])
            self.assertLess(took, 9, "cut off well before the head was complete")
        self.assertFalse(any(p.startswith("/slow/") for p in self.up.stats()["paths"]))
        self.assertRegex(self.d.metrics(),
                         r'coalesce_http_rejections_total\{reason="request_timeout"\} [1-9]')

    def test_silent_connection_is_closed_after_header_timeout(self):
        with socket.create_connection((HOST, self.d.port), timeout=6) as s:
            start = time.monotonic()
            self.assertEqual(s.recv(100), b"", "closed without an answer")
            self.assertLess(time.monotonic() - start, 5)

    def test_stalled_body_gets_408(self):
        raw = b"POST /stall HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabcde"
        data, closed = exchange(self.d.port, raw, timeout=8)
        rs = parse_all(data)
        self.assertEqual([r[0] for r in rs], [408], data)
        self.assertTrue(closed)
        self.assertEqual(self.up.total(), 0)
        self.assertEqual(self.d.get("/ok").status, 200)


class ManyConnectionsTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def setUp(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 2500:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        super().setUp()

    def open_idle(self, n, first_bytes=b""):
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(n):
            s = socket.create_connection((HOST, self.d.port), timeout=5)
            if first_bytes:
                s.sendall(first_bytes)
            socks.append(s)
        return socks

    def test_1000_idle_connections_do_not_stop_service(self):
        socks = self.open_idle(600)
        socks += self.open_idle(400, b"GET /half HTTP/1.1\r\nHost: h\r\n")  # half a head
        wait_for(lambda: self.d.stats()["connections_open"] >= 1000, timeout=10,
                 what="1000 connections open")
        for k in range(10):
            r = self.d.get(f"/busy/{k}", timeout=5)
            self.assertEqual(r.status, 200, r)
        rs = herd(self.d.port, ["/busy/herd?delay_ms=200"] * 50)
        self.assertEqual([r.status for r in rs], [200] * 50)
        self.assertEqual(self.up.stats()["paths"].get("/busy/herd?delay_ms=200"), 1)
        for s in socks:
            s.close()
        wait_for(lambda: self.d.stats()["connections_open"] <= 1, timeout=10,
                 what="connections to be released")
        self.assertNotIn("/half", self.up.stats()["paths"])

    def test_out_of_file_descriptors_recovers(self):
        # The daemon's descriptor limit is lowered under it: accepts fail
        # with EMFILE. It must not spin, crash or lose its listener, and
        # must serve again once descriptors are free.
        pid = self.d.proc.p.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (160, hard))
        socks = []
        for _ in range(300):
            try:
                socks.append(socket.create_connection((HOST, self.d.port), timeout=2))
            except OSError:
                break
        r = self.d.get("/emfile/during", timeout=5)
        self.assertIn(r.status, (0, 200, 503), r)  # refused or served, never a hang
        for s in socks:
            s.close()
        ok = wait_for(lambda: (lambda x: x if x.status == 200 else None)(
            self.d.get("/emfile/after", timeout=3)), timeout=15, what="service back")
        self.assertEqual(ok.json()["path"], "/emfile/after")
        self.assertIsNone(self.d.proc.p.poll())
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


class HalfCloseTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_half_closed_clients_never_hang(self):
        self.d.get("/hc/warm")
        cases = [get(b"/hc/warm"),                       # a hit
                 get(b"/hc/cold?delay_ms=300"),          # a miss; the flight goes on
                 b"GET /hc/partial HTTP/1.1\r\nHost:",   # half a head
                 b""]                                    # nothing at all
        for raw in cases:
            with self.subTest(raw=raw):
                start = time.monotonic()
                data, closed = exchange(self.d.port, raw, timeout=8, shut_write=True)
                self.assertTrue(closed, "closed, not left hanging")
                self.assertLess(time.monotonic() - start, 7)
                rs = parse_all(data)
                self.assertLessEqual(len(rs), 1)
                if rs:
                    self.assertIn(rs[0][0], (200, 400), data)
        # the leader's flight was not cancelled by its client leaving
        wait_for(lambda: self.up.stats()["inflight"] == 0, timeout=5, what="flight end")
        r = self.d.get("/hc/cold?delay_ms=300")
        self.assertEqual((r.status, r.xcache), (200, "HIT"))
        self.assertEqual(self.up.stats()["paths"].get("/hc/cold?delay_ms=300"), 1)
        self.assertNotIn("/hc/partial", self.up.stats()["paths"])
        self.assertEqual(self.d.stats()["pending_requests"], 0)


if __name__ == "__main__":
    unittest.main()
