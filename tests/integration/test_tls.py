"""An https upstream: with the upstream's `ca_file` the daemon verifies a
self-signed certificate and coalesces as usual; without it (system CAs)
the certificate is refused and every client gets 502 upstream_error.

The upstream here is Python's http.server wrapped in ssl, on 127.0.0.1,
counting its calls; the certificate is made by openssl in a temp dir."""
import http.server
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from harness import HOST, Daemon, herd, write_temp


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.calls += 1
            seq = srv.calls
        time.sleep(srv.delay)
        body = json.dumps({"path": self.path, "seq": seq, "tls": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class TlsUpstream:
    def __init__(self, certfile, keyfile, delay=0.3):
        self.srv = http.server.ThreadingHTTPServer((HOST, 0), _Handler)
        self.srv.daemon_threads = True
        self.srv.calls = 0
        self.srv.delay = delay
        self.srv.lock = threading.Lock()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.srv.serve_forever,
                                       kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def calls(self):
        with self.srv.lock:
            return self.srv.calls

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(10)


TLS_INI = """\
[upstream secure]
url = {url}
{ca}

[route /]
upstream = secure
"""


@unittest.skipIf(shutil.which("openssl") is None, "openssl not installed")
class TlsUpstreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="coalesced-tls-")
        cls.cert = os.path.join(cls.dir, "cert.pem")
        cls.key = os.path.join(cls.dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", cls.key, "-out", cls.cert, "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"],
            check=True, capture_output=True, timeout=60)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.up = TlsUpstream(self.cert, self.key)
        self.addCleanup(self.up.stop)

    def start_daemon(self, ca):
        cfg = write_temp(TLS_INI.format(url=self.up.url, ca=ca), testcase=self)
        self.d = Daemon(None, "--workers", "2", "--ttl", "30s", config=cfg)
        self.addCleanup(self.stop_daemon)

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)

    def test_herd_over_tls_with_ca_file(self):
        self.start_daemon(f"ca_file = {self.cert}")
        rs = herd(self.d.port, ["/secure/odds?x=1"] * 20)
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        self.assertEqual(len({r.body for r in rs}), 1)
        doc = rs[0].json()
        self.assertEqual((doc["path"], doc["tls"]), ("/secure/odds?x=1", True))
        self.assertEqual(self.up.calls, 1)
        xc = [r.xcache for r in rs]
        self.assertEqual(xc.count("MISS"), 1, xc)
        r = self.d.get("/secure/odds?x=1")
        self.assertEqual(r.xcache, "HIT")
        self.assertEqual(self.up.calls, 1)

    def test_untrusted_certificate_is_502(self):
        self.start_daemon("")
        rs = herd(self.d.port, ["/secure/odds"] * 5)
        self.assertEqual([r.status for r in rs], [502] * 5, rs[:3])
        for r in rs:
            self.assertEqual(r.json()["error"], "upstream_error")
        self.assertEqual(self.up.calls, 0, "no request got through the handshake")


if __name__ == "__main__":
    unittest.main()
