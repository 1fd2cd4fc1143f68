"""Fleet mode (issue 7, DESIGN.md §4): several coalesced instances share an
L2 cache and one flight per key through a real redis-server on 127.0.0.1."""
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from harness import Daemon, Upstream, free_port, herd, request, wait_for

REDIS = shutil.which("redis-server")


class Redis:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.p = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, what="redis-server")

    def ping(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            self.p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipIf(REDIS is None, "redis-server is not installed (make deps)")
class FleetTest(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.addCleanup(self.up.stop)
        self.redis = Redis()
        self.addCleanup(self.redis.stop)
        self.daemons = []

    def start(self, n, *extra):
        for _ in range(n):
            d = Daemon(self.up.url, "--workers", "2", "--ttl", "30s",
                       "--redis", self.redis.url, *extra)
            self.addCleanup(d.stop)
            self.daemons.append(d)
        # let every instance connect its Redis subscriptions
        time.sleep(0.5)
        return self.daemons

    def test_300_requests_over_3_instances_make_one_call(self):
        ds = self.start(3)
        paths, ports = [], []
        for i in range(300):
            d = ds[i % 3]
            ports.append(d.port)
        # herd() takes one port; fire three herds released together
        results = {}
        barrier = threading.Barrier(3)

        def fire(j):
            barrier.wait()
            results[j] = herd(ds[j].port, ["/fixtures/epl?delay_ms=400"] * 100)

        ts = [threading.Thread(target=fire, args=(j,)) for j in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        rs = [r for j in range(3) for r in results[j]]
        self.assertEqual([r.status for r in rs], [200] * 300, rs[:3])
        self.assertEqual(len({r.body for r in rs}), 1, "one body for all")
        self.assertEqual(self.up.total(), 1, "one upstream call for the fleet")
        # each instance shows its share
        for d in ds:
            s = d.stats()
            self.assertEqual(s["total_requests"], 100)
            self.assertEqual(s["pending_requests"], 0)

    def test_l2_hit_on_an_instance_that_never_saw_the_key(self):
        a, b = self.start(2)
        r1 = a.get("/odds/1?delay_ms=50")
        self.assertEqual(r1.status, 200)
        r2 = b.get("/odds/1?delay_ms=50")
        self.assertEqual(r2.status, 200)
        self.assertEqual(r2.body, r1.body)
        self.assertEqual(self.up.total(), 1)

    def test_lease_holder_killed_mid_fetch_is_taken_over_once(self):
        a, b, c = self.start(3, "--upstream-timeout", "5s")
        path = "/slow?delay_ms=1500"
        out = {}
        ta = threading.Thread(target=lambda: out.setdefault("a", a.get(path)))
        ta.start()
        wait_for(lambda: self.up.stats()["inflight"] == 1, what="a's call")
        # b and c wait on a's lease; then a dies without publishing
        tb = threading.Thread(target=lambda: out.setdefault("b", b.get(path)))
        tc = threading.Thread(target=lambda: out.setdefault("c", c.get(path)))
        tb.start()
        tc.start()
        time.sleep(0.3)
        a.proc.p.send_signal(signal.SIGKILL)
        a.proc.p.wait(5)
        tb.join(30)
        tc.join(30)
        ta.join(10)
        self.assertEqual(out["b"].status, 200, out["b"])
        self.assertEqual(out["c"].status, 200, out["c"])
        self.assertEqual(out["b"].body, out["c"].body, "one takeover for both")
        # a's call plus exactly one takeover call
        self.assertEqual(self.up.total(), 2)

    def test_redis_down_means_local_coalescing_and_no_client_error(self):
        a, b = self.start(2, "--upstream-timeout", "5s")
        self.assertEqual(a.health().json()["redis"]["state"], "connected")
        self.redis.stop()
        rs = herd(a.port, ["/r?delay_ms=200"] * 50)
        self.assertEqual([r.status for r in rs], [200] * 50)
        self.assertEqual(self.up.total(), 1, "still coalesced locally")
        h = a.health().json()
        self.assertEqual(h["status"], "degraded")
        self.assertEqual(h["redis"]["state"], "degraded")
        f = a.stats()["fleet"]
        self.assertGreaterEqual(f["fleet_fallbacks"] + f["redis_errors"], 1)
        # back: fleet mode resumes
        port = self.redis.port
        self.redis = Redis(port)
        self.addCleanup(self.redis.stop)
        time.sleep(6)  # reconnect backoff (at most 5 s)
        r1 = a.get("/after?delay_ms=50")
        r2 = b.get("/after?delay_ms=50")
        self.assertEqual((r1.status, r2.status), (200, 200))
        self.assertEqual(r1.body, r2.body)
        self.assertEqual(self.up.total(), 2)
        self.assertEqual(a.health().json()["status"], "healthy")


if __name__ == "__main__":
    unittest.main()
