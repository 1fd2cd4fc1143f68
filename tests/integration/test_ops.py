"""Operating the daemon (DESIGN.md §3): --check-config names the file,
line and key of a mistake; --help and --version exit 0; SIGTERM drains
requests in progress and exits 0; SIGHUP reloads the config without
dropping the cache; the admin endpoints expose metrics, reset counters
behind the admin token and never show the token."""
import signal
import threading
import time
import unittest

from harness import (Daemon, DaemonTest, Upstream, herd, run_coalesced,
                     wait_for, write_temp)

GOOD_INI = """\
[server]
admin_token = very-secret-token

[upstream api]
url = http://127.0.0.1:9
header = X-Api-Key: header-secret-value

[route /api]
upstream = api
ttl = 5s
"""

BAD_INIS = {
    # name: (text, line, key, words expected in the message)
    "bad_duration": ("[upstream a]\nurl = http://127.0.0.1:9\n\n[route /api]\n"
                     "upstream = a\nttl = 5 parsecs\n", 6, "ttl", "duration"),
    "unknown_key": ("[upstream a]\nurl = http://127.0.0.1:9\nbogus = 1\n",
                    3, "bogus", "unknown"),
    "unknown_upstream": ("[upstream a]\nurl = http://127.0.0.1:9\n\n"
                         "[route /api]\nupstream = nope\n", 5, "upstream", "nope"),
}


class CommandLineTest(unittest.TestCase):
    def test_check_config_accepts_a_good_file(self):
        path = write_temp(GOOD_INI, testcase=self)
        rc, out, err = run_coalesced("--config", path, "--check-config")
        self.assertEqual(rc, 0, err)
        self.assertIn("[route /api]", out)
        # the effective config is printed with secrets redacted
        self.assertNotIn("very-secret-token", out + err)
        self.assertNotIn("header-secret-value", out + err)

    def test_check_config_names_file_line_and_key(self):
        for name, (text, line, key, word) in BAD_INIS.items():
            with self.subTest(name):
                path = write_temp(text, testcase=self)
                rc, out, err = run_coalesced("--config", path, "--check-config")
                self.assertNotEqual(rc, 0, out)
                self.assertIn(f"{path}:{line}:", err)
                self.assertIn(key, err)
                self.assertIn(word, err)

    def test_bad_flag_value_is_refused(self):
        rc, out, err = run_coalesced("--upstream", "http://127.0.0.1:9",
                                     "--ttl", "soon", "--check-config")
        self.assertNotEqual(rc, 0)
        self.assertIn("--ttl", err)

    def test_help_and_version(self):
        rc, out, err = run_coalesced("--help")
        self.assertEqual(rc, 0, err)
        self.assertIn("--upstream", out)
        rc, out, err = run_coalesced("--version")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith("coalesced "), out)


class DrainTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_sigterm_answers_waiting_requests_then_exits_0(self):
        result = {}

        def run():
            result["rs"] = herd(self.d.port, ["/drain?delay_ms=1000"] * 20)

        t = threading.Thread(target=run)
        t.start()
        try:
            wait_for(lambda: self.d.stats()["total_requests"] == 20, timeout=10,
                     what="all 20 requests received")
            self.assertEqual(self.up.stats()["inflight"], 1)
            self.d.signal(signal.SIGTERM)
        finally:
            t.join(30)
        rs = result["rs"]
        self.assertEqual([r.status for r in rs], [200] * 20, rs[:3])
        self.assertEqual(len({r.body for r in rs}), 1)
        self.assertEqual(self.up.total(), 1)
        self.assertEqual(self.d.proc.p.wait(15), 0, self.d.log())


RELOAD_INI = """\
[cache]
ttl = {ttl}
stale = 0s
stale_if_error = 0s

[upstream main]
url = {url}

[route /api]
upstream = main
{extra}"""


class ReloadTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.cfg = write_temp(self.ini("30s", ""), testcase=self)
        self.d = Daemon(None, "--workers", "2", config=self.cfg)
        self.addCleanup(self.stop_daemon)

    def ini(self, ttl, extra):
        return RELOAD_INI.format(ttl=ttl, url=self.up.url, extra=extra)

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)

    def reload(self, text):
        before = self.d.log().count("event=reloaded")
        with open(self.cfg, "w") as f:
            f.write(text)
        self.d.signal(signal.SIGHUP)
        wait_for(lambda: self.d.log().count("event=reloaded") > before,
                 timeout=10, what="reload logged")

    def test_sighup_applies_new_config_and_keeps_cache(self):
        a = self.d.get("/api/kept")
        self.assertEqual(a.xcache, "MISS")
        self.assertEqual(self.d.get("/extra/x").status, 404)
        self.reload(self.ini("300ms", "\n[route /extra]\nupstream = main\n"))
        # the cache survived the reload
        r = self.d.get("/api/kept")
        self.assertEqual(r.xcache, "HIT")
        self.assertEqual(r.body, a.body)
        # the new route serves
        r = self.d.get("/extra/x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["path"], "/extra/x")
        # the new ttl applies to new entries: 300 ms, no stale window
        n = self.d.get("/api/new")
        self.assertEqual(n.xcache, "MISS")
        time.sleep(0.6)
        n2 = self.d.get("/api/new")
        self.assertEqual(n2.xcache, "MISS")
        self.assertEqual(n2.json()["path_seq"], 2)
        self.assertEqual(self.d.stats()["total_requests"], 5)

    def test_bad_config_on_reload_keeps_the_old_one(self):
        self.d.get("/api/k")
        before = self.d.log().count("reload_failed")
        with open(self.cfg, "w") as f:
            f.write("[route /api]\nupstream = missing\n")
        self.d.signal(signal.SIGHUP)
        wait_for(lambda: self.d.log().count("reload_failed") > before,
                 timeout=10, what="reload failure logged")
        r = self.d.get("/api/k")
        self.assertEqual(r.xcache, "HIT")
        r = self.d.get("/api/other")
        self.assertEqual(r.status, 200)


class AdminTest(DaemonTest):
    daemon_args = ("--workers", "2", "--ttl", "30s")

    def test_metrics_and_reset(self):
        herd(self.d.port, ["/m?delay_ms=200"] * 5)
        text = self.d.metrics()
        metrics = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                metrics[name] = float(value)
        self.assertEqual(metrics["coalesce_requests_total"], 5)
        self.assertEqual(metrics["coalesce_api_calls_made_total"], 1)
        self.assertEqual(metrics["coalesce_coalesced_requests_total"], 4)
        self.assertIn("# TYPE coalesce_requests_total counter", text)
        self.assertIn("coalesce_upstream_latency_seconds_bucket", text)

        r = self.d.reset_stats()
        self.assertEqual(r.status, 200, r)
        s = self.d.stats()
        self.assertEqual(s["total_requests"], 0)
        self.assertEqual(s["api_calls_made"], 0)
        self.assertEqual(s["coalesced_requests"], 0)
        # counters, not the cache
        self.assertEqual(self.d.get("/m?delay_ms=200").xcache, "HIT")
        s = self.d.stats()
        self.assertEqual((s["total_requests"], s["cache_hits"]), (1, 1))


class AdminTokenTest(DaemonTest):
    daemon_args = ("--workers", "2", "--admin-token", "s3cret")

    def test_reset_needs_the_token_and_the_token_never_shows(self):
        self.d.get("/t")
        self.assertEqual(self.d.stats()["total_requests"], 1)
        r = self.d.reset_stats()
        self.assertEqual(r.status, 401, r)
        r = self.d.reset_stats({"Authorization": "Bearer wrong"})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(self.d.stats()["total_requests"], 1, "not reset")
        r = self.d.reset_stats({"Authorization": "Bearer s3cret"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.d.stats()["total_requests"], 0)
        texts = [self.d.metrics(), self.d.health().body.decode(),
                 str(self.d.stats())]
        for t in texts:
            self.assertNotIn("s3cret", t)


if __name__ == "__main__":
    unittest.main()
