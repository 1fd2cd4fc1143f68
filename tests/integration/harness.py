"""harness.py — starts the real test upstream and the real coalesced on
127.0.0.1 for integration tests, fires concurrent requests, reads stats, and
stops every process it started by PID.

Binaries come from the environment (set by CTest): COALESCED, TESTUPSTREAM.
Every request has a timeout; every process is killed at teardown.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

COALESCED = os.environ.get("COALESCED", "build/daemon/coalesced")
TESTUPSTREAM = os.environ.get("TESTUPSTREAM", "build/tests/upstream/testupstream")
HOST = "127.0.0.1"
STATS = "/api/v1/shared/deduplication/stats"
HEALTH = "/api/v1/shared/deduplication/health"
RESET = "/api/v1/shared/deduplication/stats/reset"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=10.0, step=0.02, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Response:
    def __init__(self, status, headers, body, error=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error

    def header(self, name):
        return self.headers.get(name.lower())

    @property
    def xcache(self):
        return self.header("x-cache")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} x-cache={self.xcache} {self.body[:80]!r}>"


def request(port, path, method="GET", headers=None, body=None, timeout=15.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    except (OSError, http.client.HTTPException) as e:
        return Response(0, {}, b"", error=e)
    finally:
        conn.close()


def herd(port, paths, headers=None, method="GET", body=None):
    """Sends one request per entry of `paths`, all released together by a
    barrier, each on its own connection. Returns responses in order.
    `body`: one request body for all, or a list of one per request."""
    n = len(paths)
    out = [None] * n
    barrier = threading.Barrier(n)
    hdrs = headers if isinstance(headers, list) else [headers] * n
    bodies = body if isinstance(body, list) else [body] * n

    def one(i):
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        out[i] = request(port, paths[i], method=method, headers=hdrs[i],
                         body=bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def raw_request(port, data, timeout=10.0):
    """Sends raw bytes on one connection and returns every byte read until
    the server closes it (or `timeout` passes). For request forms that
    http.client will not produce (absolute-form targets, odd headers)."""
    chunks = []
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def parse_raw_response(data):
    """Splits one raw HTTP/1.1 response into (status, headers, body);
    headers lower-cased; the body is what follows the head (Content-Length
    honoured when present)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        rest = rest[:int(headers["content-length"])]
    return status, headers, rest


def write_temp(text, suffix=".ini", testcase=None):
    """Writes text to a new temp file and returns its path; removed at the
    end of `testcase` when one is given."""
    f = tempfile.NamedTemporaryFile("w", prefix="coalesced-", suffix=suffix,
                                    delete=False)
    f.write(text)
    f.close()
    if testcase is not None:
        testcase.addCleanup(lambda: os.path.exists(f.name) and os.unlink(f.name))
    return f.name


def run_coalesced(*args, timeout=20.0, env=None):
    """Runs coalesced to completion (--help, --check-config, ...): returns
    (returncode, stdout, stderr)."""
    r = subprocess.run([COALESCED, *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    return r.returncode, r.stdout, r.stderr


class Proc:
    """A child process with its output captured to a temp file."""

    def __init__(self, args, name, env=None):
        self.log = tempfile.NamedTemporaryFile(prefix=name + "-", suffix=".log",
                                               delete=False)
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, env=env)
        self.name = name

    def first_line(self, timeout=10.0):
        result = {}

        def read():
            result["line"] = self.p.stdout.readline()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        line = result.get("line", "")
        if not line:
            raise AssertionError(f"{self.name} did not start: {self.logtext()}")
        return line.strip()

    def logtext(self):
        try:
            with open(self.log.name) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout=10.0):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        if self.p.stdout:
            self.p.stdout.close()
        self.final_log = self.logtext()
        os.unlink(self.log.name)
        return self.p.returncode


class Upstream:
    def __init__(self, *extra):
        self.proc = Proc([TESTUPSTREAM, "--port", "0", "--quiet", *extra],
                         "testupstream")
        line = self.proc.first_line()
        self.port = int(line.rsplit(":", 1)[1])
        self.url = f"http://{HOST}:{self.port}"

    def stats(self):
        return request(self.port, "/__upstream/stats").json()

    def total(self):
        return self.stats()["total"]

    def reset(self):
        request(self.port, "/__upstream/reset", method="POST")

    def configure(self, query=""):
        r = request(self.port, "/__upstream/config" + ("?" + query if query else ""),
                    method="POST")
        assert r.status == 200, r

    def stop(self):
        return self.proc.stop()


class Daemon:
    """`env`: extra environment variables for the daemon (e.g. for
    --header 'X-Key: ${VAR}'), added to this process's environment."""

    def __init__(self, upstream_url=None, *extra, config=None, env=None):
        self.port = free_port()
        self.admin_port = free_port()
        args = [COALESCED, "--listen", f"{HOST}:{self.port}",
                "--admin-listen", f"{HOST}:{self.admin_port}"]
        if config is not None:
            args += ["--config", config]
        if upstream_url is not None:
            args += ["--upstream", upstream_url]
        args += list(extra)
        self.args = args
        full_env = None
        if env is not None:
            full_env = dict(os.environ)
            full_env.update(env)
        self.proc = Proc(args, "coalesced", env=full_env)
        self.proc.first_line()
        wait_for(lambda: request(self.admin_port, HEALTH, timeout=2).status in (200, 503),
                 what="coalesced admin")

    def get(self, path, **kw):
        return request(self.port, path, **kw)

    def stats(self):
        r = request(self.admin_port, STATS)
        assert r.status == 200, r
        return r.json()

    def health(self):
        return request(self.admin_port, HEALTH)

    def reset_stats(self, headers=None):
        return request(self.admin_port, RESET, method="POST", headers=headers)

    def stop(self):
        return self.proc.stop()

    def metrics(self):
        r = request(self.admin_port, "/metrics")
        assert r.status == 200, r
        return r.body.decode()

    def signal(self, sig):
        self.proc.signal(sig)

    def log(self):
        """The daemon's stderr so far (last 4000 characters)."""
        return self.proc.logtext()


class DaemonTest(unittest.TestCase):
    """Base: one upstream + one daemon per test (override daemon_args)."""

    daemon_args = ()
    upstream_args = ()

    def setUp(self):
        self.up = Upstream(*self.upstream_args)
        self.addCleanup(self.up.stop)
        self.d = Daemon(self.up.url, *self.daemon_args)
        self.addCleanup(self.stop_daemon)

    def stop_daemon(self):
        rc = self.d.stop()
        self.assertEqual(rc, 0, "coalesced exited non-zero:\n" + self.d.proc.final_log)
