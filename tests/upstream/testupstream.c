/*
 * testupstream.c — entry point of the fake metered API used by the
 * integration tests and benchmarks: options, the listening socket, the
 * port announcement and a clean exit on SIGTERM/SIGINT.
 *
 *   testupstream [--host 127.0.0.1] [--port N] [--port-file PATH]
 *                [--delay-ms N] [--body-size N] [--quiet]
 *
 * Invariants: one libuv loop in one thread owns everything. The ready
 * line "testupstream listening on HOST:PORT" is printed (and the port
 * file renamed into place) only once the socket listens, so a harness
 * that waits for either can connect at once. On a signal every handle is
 * closed and freed and the process exits 0, so ASan sees no leak.
 */
#include "upstream.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096

struct options {
  const char *host;
  long port;
  const char *port_file;
  long delay_ms;
  long body_size;
  bool quiet;
};

static void usage(FILE *f) {
  fputs("usage: testupstream [--host ADDR] [--port N] [--port-file PATH]\n"
        "                    [--delay-ms N] [--body-size N] [--quiet]\n"
        "A slow, counting, failing-on-command HTTP/1.1 server for tests;\n"
        "see tests/upstream/README.md.\n",
        f);
}

static bool number_arg(const char *v, long max, long *out) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || end == v || *end || n < 0 || n > max)
    return false;
  *out = n;
  return true;
}

/* Accepts "--name value" and "--name=value"; exits 2 on misuse. */
static void parse_options(int argc, char **argv, struct options *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
    if (eq)
      v = eq + 1;
#define IS(name) (nlen == sizeof(name) - 1 && memcmp(a, name, nlen) == 0)
    if (IS("--quiet")) {
      o->quiet = true;
      continue;
    }
    if (IS("--help") || IS("-h")) {
      usage(stdout);
      exit(0);
    }
    if (!v && i + 1 < argc)
      v = argv[++i];
    bool ok = v != NULL;
    if (!v)
      ok = false;
    else if (IS("--host"))
      o->host = v;
    else if (IS("--port"))
      ok = number_arg(v, 65535, &o->port);
    else if (IS("--port-file"))
      o->port_file = v;
    else if (IS("--delay-ms"))
      ok = number_arg(v, 600000, &o->delay_ms);
    else if (IS("--body-size"))
      ok = number_arg(v, 64L * 1024 * 1024, &o->body_size);
    else
      ok = false;
#undef IS
    if (!ok) {
      fprintf(stderr, "testupstream: bad option '%s'\n", a);
      usage(stderr);
      exit(2);
    }
  }
}

/* Writes the port to a temporary file renamed over path, so a reader
 * never sees a partial number. */
static int write_port_file(const char *path, int port) {
  size_t n = strlen(path) + 32;
  char *tmp = xmalloc(n);
  snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  int rc = -1;
  if (f) {
    bool ok = fprintf(f, "%d\n", port) > 0;
    ok = fclose(f) == 0 && ok;
    if (ok && rename(tmp, path) == 0)
      rc = 0;
    else
      unlink(tmp);
  }
  free(tmp);
  return rc;
}

/* 2,000+ concurrent connections need more descriptors than the usual
 * soft limit of 1024; take what the hard limit allows. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static void on_connection(uv_stream_t *listener, int status) {
  struct server *srv = listener->data;
  if (status < 0) {
    fprintf(stderr, "testupstream: accept: %s\n", uv_strerror(status));
    return;
  }
  conn_accept(srv);
}

static void on_signal(uv_signal_t *sig, int signum) {
  struct server *srv = sig->data;
  (void)signum;
  if (srv->stopping)
    return;
  srv->stopping = true;
  uv_close((uv_handle_t *)&srv->listener, NULL);
  uv_close((uv_handle_t *)&srv->sigterm, NULL);
  uv_close((uv_handle_t *)&srv->sigint, NULL);
  conn_close_all(srv);
}

static int bind_listener(struct server *srv, const struct options *o) {
  struct sockaddr_storage ss;
  int rc = uv_ip4_addr(o->host, (int)o->port, (struct sockaddr_in *)&ss);
  if (rc != 0)
    rc = uv_ip6_addr(o->host, (int)o->port, (struct sockaddr_in6 *)&ss);
  if (rc != 0) {
    fprintf(stderr, "testupstream: bad host '%s'\n", o->host);
    return -1;
  }
  rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc =
        uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
  if (rc != 0) {
    fprintf(stderr, "testupstream: listen on %s:%ld: %s\n", o->host, o->port,
            uv_strerror(rc));
    return -1;
  }
  int len = sizeof ss;
  uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
  return ss.ss_family == AF_INET6
             ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
             : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int main(int argc, char **argv) {
  struct options o = {.host = "127.0.0.1"};
  parse_options(argc, argv, &o);
  signal(SIGPIPE, SIG_IGN); /* a vanished client is an error code, not death */
  raise_fd_limit();

  static uv_loop_t loop;
  struct server *srv = calloc(1, sizeof *srv);
  if (!srv || uv_loop_init(&loop) != 0)
    return 1;
  srv->loop = &loop;
  srv->quiet = o.quiet;
  srv->default_delay_ms = (unsigned)o.delay_ms;
  srv->default_body_size = (size_t)o.body_size;

  uv_tcp_init(&loop, &srv->listener);
  srv->listener.data = srv;
  int exit_code = 0;
  int port = bind_listener(srv, &o);
  if (port < 0) {
    exit_code = 1;
    uv_close((uv_handle_t *)&srv->listener, NULL);
  } else if (o.port_file && write_port_file(o.port_file, port) != 0) {
    fprintf(stderr, "testupstream: cannot write %s\n", o.port_file);
    exit_code = 1;
    uv_close((uv_handle_t *)&srv->listener, NULL);
  } else {
    uv_signal_init(&loop, &srv->sigterm);
    uv_signal_init(&loop, &srv->sigint);
    srv->sigterm.data = srv->sigint.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    bool v6 = strchr(o.host, ':') != NULL;
    printf("testupstream listening on %s%s%s:%d\n", v6 ? "[" : "", o.host,
           v6 ? "]" : "", port);
    fflush(stdout);
  }
  uv_run(&loop, UV_RUN_DEFAULT);

  if (uv_loop_close(&loop) != 0)
    fputs("testupstream: loop still busy at exit\n", stderr);
  stats_free(&srv->stats);
  kv_free(&srv->config);
  free(srv->config_raw);
  free(srv);
  return exit_code;
}
