/*
 * http_server.c — the listening side of coalesced's HTTP/1.1 server: the
 * socket (SO_REUSEPORT, so N worker loops share a port), accepting within
 * max_connections, graceful shutdown and the counters. Connections are
 * http_conn.c; the contract is http_server.h.
 *
 * Invariants (loop thread only; stats and the conn count are relaxed
 * atomics so other threads may read them): every allocated conn is on
 * srv->conns; the server is freed right after done() once the listener is
 * closed and that list is empty, never before.
 */
#include "http_server_int.h"

#include "log.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Sent without a conn when max_connections is reached. */
#define OVERLOAD_BODY                                                          \
  "{\"error\":\"overloaded\",\"message\":\"too many connections\"}"
static const char overload_response[] =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 55\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n\r\n" OVERLOAD_BODY;
_Static_assert(sizeof OVERLOAD_BODY - 1 == 55, "fix Content-Length above");

#define CHECK_SRV(s) assert((s) != NULL && (s)->magic == HTTP_SERVER_MAGIC)

/* ------------------------------------------------------ read buffer pool */

/* Single writer (the loop thread): a load and a store, no locked add. */
static void counter_add(_Atomic uint64_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

char *http_server_rbuf_get(http_server_t *s) {
  char *buf = freelist_take(&s->rbufs);
  if (buf == NULL && (buf = malloc(HTTP_IN_CAP)) != NULL)
    counter_add(&s->rbufs_malloced, 1);
  return buf;
}

void http_server_rbuf_put(http_server_t *s, char *buf) {
  if (buf == NULL || freelist_give(&s->rbufs, buf, HTTP_RBUF_POOL_MAX))
    return;
  free(buf);
  counter_add(&s->rbufs_freed, 1);
}

/* done is NULL only when listen failed half-way. */
void http_server_maybe_done(http_server_t *s) {
  if (!s->closing || !s->listener_closed || s->conns != NULL ||
      s->relisten != NULL)
    return;
  s->closing = false; /* once */
  if (s->done)
    s->done(s->done_ud);
  s->magic = 0;
  freelist_clear(&s->rbufs); /* every conn, and so every buffer, is back */
  free((char *)s->opts.server_name);
  free(s);
}

/* ------------------------------------------------------------ accepting */

static void free_handle(uv_handle_t *h) {
  free(h);
}

/* Over max_connections: answer 503 at once without reading the request
 * (its bytes may still be in flight) and close. Tracked by nothing. */
static void reject_overloaded(http_server_t *s) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (!t) {
    LOG_ERROR("http_accept_failed", "err=ENOMEM");
    return;
  }
  uv_tcp_init(s->loop, t);
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t) == 0) {
    uv_buf_t b = uv_buf_init((char *)overload_response,
                             (unsigned)sizeof overload_response - 1);
    uv_try_write((uv_stream_t *)t, &b, 1);
    http_stat_inc(&s->stats.rejected_overloaded);
  }
  uv_close((uv_handle_t *)t, free_handle);
}

static void on_connection(uv_stream_t *ls, int status);
static int open_listen_socket(const struct sockaddr_storage *ss, bool reuseport,
                              int backlog);

#define RELISTEN_MS 200

static void on_relisten(uv_timer_t *t);

/* The listener of a paused server has closed: reopen it later, unless the
 * server is shutting down meanwhile. */
static void on_listener_paused(uv_handle_t *h) {
  http_server_t *s = h->data;
  s->listener_closed = true;
  if (s->closing) {
    http_server_maybe_done(s);
    return;
  }
  uv_timer_start(s->relisten, on_relisten, RELISTEN_MS, 0);
}

static void on_relisten(uv_timer_t *t) {
  http_server_t *s = t->data;
  if (s->closing || !s->paused)
    return;
  int fd = open_listen_socket(&s->addr, s->opts.reuseport, s->opts.backlog);
  if (fd < 0) { /* still out of descriptors: try again */
    uv_timer_start(s->relisten, on_relisten, RELISTEN_MS, 0);
    return;
  }
  uv_tcp_init(s->loop, &s->listener);
  s->listener.data = s;
  s->listener_closed = false;
  int rc = uv_tcp_open(&s->listener, fd);
  if (rc < 0)
    close(fd); /* not adopted by the handle */
  else
    rc = uv_listen((uv_stream_t *)&s->listener, s->opts.backlog, on_connection);
  if (rc < 0) { /* close the handle and try again after the pause */
    uv_close((uv_handle_t *)&s->listener, on_listener_paused);
    return;
  }
  s->listener_open = true;
  s->paused = false;
  LOG_WARN("http_accept_resumed", "port=%u", s->port);
}

static void on_connection(uv_stream_t *ls, int status) {
  http_server_t *s = ls->data;
  if (status == UV_EMFILE || status == UV_ENFILE) {
    /* Stop accepting (closing the listener also ends libuv's accept loop,
     * which would otherwise call us again at once, forever) and retry
     * shortly; connections already open go on. */
    if (!s->paused && s->listener_open && !s->closing) {
      LOG_WARN("http_accept_paused", "err=%s retry_ms=%d", uv_err_name(status),
               RELISTEN_MS);
      if (s->relisten == NULL && (s->relisten = malloc(sizeof *s->relisten))) {
        uv_timer_init(s->loop, s->relisten);
        s->relisten->data = s;
      }
      if (s->relisten != NULL) {
        s->paused = true;
        s->listener_open = false;
        uv_close((uv_handle_t *)&s->listener, on_listener_paused);
      }
    }
    return;
  }
  if (status < 0) {
    LOG_WARN("http_accept_failed", "err=%s", uv_err_name(status));
    return;
  }
  unsigned max = s->opts.max_connections;
  _Atomic unsigned *count =
      s->opts.conn_counter != NULL ? s->opts.conn_counter : &s->nconns;
  http_conn_t *c = NULL;
  if ((max && atomic_load_explicit(count, memory_order_relaxed) >= max) ||
      !(c = calloc(1, sizeof *c))) {
    reject_overloaded(s);
    return;
  }
  http_conn_accept(s, c);
}

/* ------------------------------------------------------------ listening */

static int parse_addr(const char *host, uint16_t port,
                      struct sockaddr_storage *ss) {
  char buf[64];
  size_t n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    if (n - 2 >= sizeof buf)
      return UV_EINVAL;
    memcpy(buf, host + 1, n - 2);
    buf[n - 2] = '\0';
    return uv_ip6_addr(buf, port, (struct sockaddr_in6 *)ss);
  }
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

/* socket + options + bind + listen, synchronously, so that every error
 * reaches the caller before any handle exists. Returns fd or -errno. */
static int open_listen_socket(const struct sockaddr_storage *ss, bool reuseport,
                              int backlog) {
  socklen_t len = ss->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                           : sizeof(struct sockaddr_in6);
  int one = 1;
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      (reuseport &&
       setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
      bind(fd, (const struct sockaddr *)ss, len) < 0 ||
      listen(fd, backlog) < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

static void on_relisten_closed(uv_handle_t *h) {
  http_server_t *s = h->data;
  free(h);
  s->relisten = NULL;
  http_server_maybe_done(s);
}

static void on_listener_closed(uv_handle_t *h) {
  http_server_t *s = h->data;
  s->listener_closed = true;
  http_server_maybe_done(s);
}

static void fill_defaults(http_server_opts_t *o) {
  if (o->backlog <= 0)
    o->backlog = 511;
  if (!o->max_header_bytes)
    o->max_header_bytes = 32 * 1024;
  if (!o->max_headers)
    o->max_headers = 100;
  if (!o->max_uri_bytes)
    o->max_uri_bytes = 8 * 1024;
  if (!o->max_body_bytes)
    o->max_body_bytes = 1024 * 1024;
  if (!o->header_timeout_ms)
    o->header_timeout_ms = 10 * 1000;
  if (!o->idle_timeout_ms)
    o->idle_timeout_ms = 60 * 1000;
}

int http_server_listen(uv_loop_t *loop, const char *host, uint16_t port,
                       const http_server_opts_t *opts, http_server_t **out) {
  struct sockaddr_storage ss;
  if (!loop || !host || !opts || !opts->on_request || !out)
    return UV_EINVAL;
  memset(&ss, 0, sizeof ss);
  int rc = parse_addr(host, port, &ss);
  if (rc < 0)
    return rc;

  http_server_t *s = calloc(1, sizeof *s);
  if (!s)
    return UV_ENOMEM;
  s->opts = *opts;
  s->addr = ss;
  fill_defaults(&s->opts);
  if (opts->server_name && !(s->opts.server_name = strdup(opts->server_name))) {
    free(s);
    return UV_ENOMEM;
  }
  int fd = open_listen_socket(&ss, opts->reuseport, s->opts.backlog);
  if (fd < 0) {
    free((char *)s->opts.server_name);
    free(s);
    return fd;
  }
  s->magic = HTTP_SERVER_MAGIC;
  s->loop = loop;
  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  s->listener_open = true;
  if ((rc = uv_tcp_open(&s->listener, fd)) < 0)
    close(fd); /* not adopted by the handle */
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&s->listener, s->opts.backlog, on_connection);
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  if (rc == 0)
    rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
  if (rc < 0) { /* rare: freed by the close callback when the loop runs */
    s->closing = true;
    http_server_stop_accepting(s);
    return rc;
  }
  s->port = ntohs(bound.ss_family == AF_INET
                      ? ((struct sockaddr_in *)&bound)->sin_port
                      : ((struct sockaddr_in6 *)&bound)->sin6_port);
  *out = s;
  return 0;
}

uint16_t http_server_port(const http_server_t *srv) {
  CHECK_SRV(srv);
  return srv->port;
}

void http_server_stop_accepting(http_server_t *srv) {
  if (!srv->listener_open)
    return;
  srv->listener_open = false;
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

void http_server_close(http_server_t *srv, void (*done)(void *ud), void *ud) {
  CHECK_SRV(srv);
  assert(!srv->closing && done);
  srv->closing = true;
  srv->done = done;
  srv->done_ud = ud;
  if (srv->relisten != NULL) {
    uv_timer_stop(srv->relisten);
    uv_close((uv_handle_t *)srv->relisten, on_relisten_closed);
  }
  http_server_stop_accepting(srv);
  /* closing never frees synchronously, so walking the list is safe */
  for (http_conn_t *c = srv->conns; c; c = c->next)
    http_conn_close_idle(c);
  http_server_maybe_done(srv);
}

unsigned http_server_conn_count(const http_server_t *srv) {
  return atomic_load_explicit(&srv->nconns, memory_order_relaxed);
}

void http_server_stats(const http_server_t *srv, http_server_stats_t *out) {
  memset(out, 0, sizeof *out);
#define X(name)                                                                \
  out->name = atomic_load_explicit(&srv->stats.name, memory_order_relaxed);
  HTTP_STATS_FIELDS(X)
#undef X
  out->connections_open =
      atomic_load_explicit(&srv->nconns, memory_order_relaxed);
}
