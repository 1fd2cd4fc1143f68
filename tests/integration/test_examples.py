"""test_examples.py — the examples/ programs still do what their docs say.

examples/python_client.py is run as a user would, as a separate process,
against a real coalesced in front of the real test upstream (both started
by harness.py on free ports). The assertions are on what it prints — the
X-Cache counts and the stats change — and on what the upstream really
received, so the test fails if the client's figures drift from the
daemon's, or if the herd it demonstrates stops being coalesced.
"""
import os
import re
import subprocess
import sys
import unittest

import harness

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "..", ".."))
CLIENT = os.path.join(ROOT, "examples", "python_client.py")

# Each upstream answer takes this long, so the whole herd is in flight
# together even on a loaded machine (an answer arriving late is a HIT,
# which the assertions allow; a second upstream call is not).
DELAY_MS = 1000


def run_client(*args, timeout=120):
    r = subprocess.run([sys.executable, CLIENT, *args], capture_output=True,
                       text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def rounds(out):
    """{round number: {X-Cache value: count}} from the client's output."""
    result, current = {}, None
    for line in out.splitlines():
        m = re.match(r"round (\d+): \d+ requests", line)
        if m:
            current = result.setdefault(int(m.group(1)), {})
            continue
        m = re.match(r"    ([A-Z-]+)\s+(\d+)$", line)
        if m and current is not None:
            current[m.group(1)] = int(m.group(2))
    return result


def figure(out, name):
    m = re.search(r"^  " + re.escape(name) + r"\s+([0-9.]+)$", out, re.M)
    if m is None:
        raise AssertionError(f"no {name} line in:\n{out}")
    return float(m.group(1))


class PythonClientExample(unittest.TestCase):
    def setUp(self):
        self.up = harness.Upstream()
        self.addCleanup(self.up.stop)
        # a long ttl: round 2 must find the entry fresh however slow the run
        self.d = harness.Daemon(self.up.url, "--ttl", "5m", "--workers", "2")
        self.addCleanup(self.stop_daemon)
        self.admin = f"http://{harness.HOST}:{self.d.admin_port}"

    def stop_daemon(self):
        self.assertEqual(self.d.stop(), 0, self.d.proc.final_log)

    def url(self, query):
        return f"http://{harness.HOST}:{self.d.port}/v1/odds?{query}"

    def test_herd_then_hits(self):
        rc, out, err = run_client("--url", self.url(f"sport=nfl&delay_ms={DELAY_MS}"),
                                  "--admin", self.admin, "--rounds", "2")
        self.assertEqual(rc, 0, out + err)
        got = rounds(out)
        self.assertEqual(sorted(got), [1, 2], out)
        # round 1: one leader, everyone else waited on it (or, if late, hit)
        self.assertEqual(got[1].get("MISS"), 1, out)
        self.assertGreaterEqual(got[1].get("COALESCED", 0), 1, out)
        self.assertEqual(got[1].get("COALESCED", 0) + got[1].get("HIT", 0), 49, out)
        self.assertEqual(got[2], {"HIT": 50}, out)
        # the printed figures are the daemon's, and the upstream agrees
        self.assertEqual(figure(out, "total_requests"), 100, out)
        self.assertEqual(figure(out, "api_calls_made"), 1, out)
        self.assertEqual(figure(out, "api_calls_saved"), 99, out)
        self.assertEqual(figure(out, "coalesced_requests"), got[1]["COALESCED"], out)
        self.assertEqual(figure(out, "hit_rate_percent"), 99.0, out)
        self.assertEqual(self.up.total(), 1)
        self.assertIn("breakers default=closed", out)

    def test_figures_are_the_change_over_the_run(self):
        # traffic before the client runs must not show in its figures
        for _ in range(3):
            self.assertEqual(self.d.get("/v1/other").status, 200)
        rc, out, err = run_client("--url", self.url("sport=nba&delay_ms=200"),
                                  "--admin", self.admin, "-n", "10")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(figure(out, "total_requests"), 10, out)
        self.assertEqual(figure(out, "api_calls_made"), 1, out)
        self.assertEqual(self.d.stats()["total_requests"], 13)

    def test_errors_are_reported(self):
        rc, out, _ = run_client("--url", self.url("status=500"), "--admin",
                                self.admin, "-n", "5")
        self.assertEqual(rc, 1, out)
        self.assertIn("status: 500 x5", out)
        rc, _, err = run_client("--url", self.url("x=1"), "--admin",
                                f"http://{harness.HOST}:{harness.free_port()}")
        self.assertEqual(rc, 2)
        self.assertIn("cannot read stats", err)


if __name__ == "__main__":
    unittest.main()
