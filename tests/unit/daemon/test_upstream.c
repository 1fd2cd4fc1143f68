/*
 * test_upstream.c — the upstream client against a tiny canned HTTP/1.1
 * server on 127.0.0.1 (ephemeral port) that runs on its own thread with
 * plain sockets + poll(2). The server answers by request path (see
 * respond()); /echo returns the request head it received so the tests can
 * assert exactly what curl put on the wire.
 *
 * Each test gets a fresh uv loop and client (fixture), and the fixture's
 * teardown checks that closing the client releases every uv handle
 * (uv_loop_close succeeds); ASan builds check that nothing leaks. The
 * server thread wakes the test loop through a uv_async_t when it has seen
 * a request, so waits on server-side state need no sleeps.
 */
#include "upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------ the server */

#define MAX_CONNS 256
#define BIG_LEN ((size_t)1 << 20)

typedef struct sconn {
  int fd;
  char *buf;
  size_t len, cap;
  bool hung; /* /hang: never answered, kept until the client goes away */
} sconn_t;

typedef struct server {
  int lfd, port, wake[2];
  pthread_t th;
  atomic_int accepted, requests, hangs;
  pthread_mutex_t mu; /* guards notify against the fixture closing it */
  uv_async_t *notify;
  sconn_t conns[MAX_CONNS];
  size_t nconns;
} server_t;

static server_t g_srv;

enum { ACT_KEEP, ACT_CLOSE, ACT_HANG };

static uint8_t big_byte(size_t i) {
  return (uint8_t)(i * 7 + (i >> 12) + 3);
}

static uint32_t fnv1a(const void *p, size_t n) {
  const uint8_t *b = p;
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 16777619u;
  return h;
}

static int send_all(int fd, const void *p, size_t n) {
  const char *b = p;
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w <= 0)
      return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

static int sendf(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int sendf(int fd, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  return n < 0 ? -1 : send_all(fd, tmp, (size_t)n);
}

static int ci_ncmp(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int x = a[i] >= 'A' && a[i] <= 'Z' ? a[i] + 32 : a[i];
    int y = b[i] >= 'A' && b[i] <= 'Z' ? b[i] + 32 : b[i];
    if (x != y)
      return x - y;
  }
  return 0;
}

/* Occurrences of needle in hay[0..n), ASCII case-insensitive. */
static int ci_count(const char *hay, size_t n, const char *needle) {
  size_t k = strlen(needle);
  int count = 0;
  for (size_t i = 0; i + k <= n; i++)
    if (ci_ncmp(hay + i, needle, k) == 0)
      count++;
  return count;
}

static size_t content_length(const char *head, size_t n) {
  const char *key = "\r\ncontent-length:";
  size_t k = strlen(key);
  for (size_t i = 0; i + k <= n; i++)
    if (ci_ncmp(head + i, key, k) == 0)
      return (size_t)strtoul(head + i + k, NULL, 10);
  return 0;
}

static int send_big(int fd, bool chunked) {
  char chunk[16384];
  for (size_t off = 0; off < BIG_LEN; off += sizeof chunk) {
    for (size_t i = 0; i < sizeof chunk; i++)
      chunk[i] = (char)big_byte(off + i);
    if (chunked && sendf(fd, "%zx\r\n", sizeof chunk) != 0)
      return -1;
    if (send_all(fd, chunk, sizeof chunk) != 0)
      return -1;
    if (chunked && send_all(fd, "\r\n", 2) != 0)
      return -1;
  }
  return chunked ? send_all(fd, "0\r\n\r\n", 5) : 0;
}

/* One request, complete in c->buf: head_len bytes of head, then body. */
static int respond(server_t *s, sconn_t *c, size_t head_len, size_t body_len) {
  char method[16] = "", path[256] = "";
  int fd = c->fd;
  if (sscanf(c->buf, "%15s %255s", method, path) != 2)
    return ACT_CLOSE;
  bool head = strcmp(method, "HEAD") == 0;
  if (strcmp(path, "/hello") == 0) {
    sendf(fd,
          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
          "X-Spaced: \t  a  b \t \r\nX-Multi: 1\r\nX-Multi: 2\r\n"
          "X-Method: %s\r\nContent-Length: 11\r\n\r\n%s",
          method, head ? "" : "hello world");
  } else if (strcmp(path, "/big") == 0) {
    sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", BIG_LEN);
    if (send_big(fd, false) != 0)
      return ACT_CLOSE;
  } else if (strcmp(path, "/big-chunked") == 0) {
    sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    if (send_big(fd, true) != 0)
      return ACT_CLOSE;
  } else if (strcmp(path, "/304") == 0) {
    sendf(fd, "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n");
  } else if (strcmp(path, "/hang") == 0) {
    atomic_fetch_add(&s->hangs, 1);
    return ACT_HANG;
  } else if (strcmp(path, "/close") == 0) {
    return ACT_CLOSE;
  } else if (strcmp(path, "/rst") == 0) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return ACT_CLOSE;
  } else if (strcmp(path, "/truncated") == 0) {
    sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    return ACT_CLOSE;
  } else if (strcmp(path, "/continue") == 0) {
    sendf(fd, "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
              "HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok");
  } else if (strcmp(path, "/trailers") == 0) {
    sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
              "Trailer: X-Trailer\r\n\r\n5\r\nhello\r\n0\r\n"
              "X-Trailer: late\r\n\r\n");
  } else if (strcmp(path, "/fold") == 0) {
    sendf(fd, "HTTP/1.1 200 OK\r\nX-Fold: first\r\n   second  \r\n"
              "X-After: 1\r\nContent-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/redirect") == 0) {
    sendf(fd, "HTTP/1.1 302 Found\r\nLocation: /hello\r\n"
              "Content-Length: 8\r\n\r\nredirect");
  } else if (strcmp(path, "/gzip") == 0) {
    sendf(fd, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
              "Content-Length: 15\r\n\r\nnot really gzip");
  } else if (strcmp(path, "/bad") == 0) {
    sendf(fd, "garbage without a status line\r\n\r\n");
    return ACT_CLOSE;
  } else if (strncmp(path, "/echo", 5) == 0) {
    sendf(fd,
          "HTTP/1.1 200 OK\r\nX-Body-Len: %zu\r\nX-Body-Sum: %08x\r\n"
          "Content-Length: %zu\r\n\r\n",
          body_len, fnv1a(c->buf + head_len, body_len), head ? 0 : head_len);
    if (!head)
      send_all(fd, c->buf, head_len);
  } else {
    sendf(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
  }
  return ACT_KEEP;
}

static void notify_test_loop(server_t *s) {
  pthread_mutex_lock(&s->mu);
  if (s->notify)
    uv_async_send(s->notify);
  pthread_mutex_unlock(&s->mu);
}

/* Returns -1 when the connection must be closed. */
static int conn_readable(server_t *s, sconn_t *c) {
  if (c->cap - c->len < 4096) {
    size_t cap = c->cap ? c->cap * 2 : 65536;
    char *b = realloc(c->buf, cap + 1);
    if (!b)
      return -1;
    c->buf = b;
    c->cap = cap;
  }
  ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
  if (n <= 0)
    return -1;
  if (c->hung)
    return 0;
  c->len += (size_t)n;
  for (;;) {
    c->buf[c->len] = '\0';
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end)
      return 0;
    size_t head_len = (size_t)(end - c->buf) + 4;
    size_t body_len = content_length(c->buf, head_len);
    if (c->len < head_len + body_len)
      return 0;
    atomic_fetch_add(&s->requests, 1);
    int act = respond(s, c, head_len, body_len);
    notify_test_loop(s);
    if (act == ACT_CLOSE)
      return -1;
    if (act == ACT_HANG) {
      c->hung = true;
      return 0;
    }
    c->len -= head_len + body_len;
    memmove(c->buf, c->buf + head_len + body_len, c->len);
  }
}

static void conn_remove(server_t *s, size_t i) {
  close(s->conns[i].fd);
  free(s->conns[i].buf);
  s->conns[i] = s->conns[--s->nconns];
}

static void *server_main(void *arg) {
  server_t *s = arg;
  static struct pollfd pfd[MAX_CONNS + 2];
  for (;;) {
    pfd[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
    pfd[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
    for (size_t i = 0; i < s->nconns; i++)
      pfd[2 + i] = (struct pollfd){.fd = s->conns[i].fd, .events = POLLIN};
    if (poll(pfd, 2 + s->nconns, -1) < 0)
      continue;
    if (pfd[0].revents)
      break;
    /* Backwards, so removing i (last moves into i) skips nothing. */
    for (size_t i = s->nconns; i-- > 0;)
      if (pfd[2 + i].revents && conn_readable(s, &s->conns[i]) != 0)
        conn_remove(s, i);
    if ((pfd[1].revents & POLLIN) && s->nconns < MAX_CONNS) {
      int fd = accept(s->lfd, NULL, NULL);
      if (fd >= 0) {
        atomic_fetch_add(&s->accepted, 1);
        s->conns[s->nconns++] = (sconn_t){.fd = fd};
      }
    }
  }
  while (s->nconns > 0)
    conn_remove(s, s->nconns - 1);
  return NULL;
}

static int bound_socket(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
    return -1;
  *port = ntohs(sa.sin_port);
  return fd;
}

static int group_setup(void **state) {
  (void)state;
  if (upstream_global_init() != 0)
    return -1;
  server_t *s = &g_srv;
  pthread_mutex_init(&s->mu, NULL);
  s->lfd = bound_socket(&s->port);
  if (s->lfd < 0 || listen(s->lfd, 128) != 0 || pipe(s->wake) != 0)
    return -1;
  return pthread_create(&s->th, NULL, server_main, s) == 0 ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  server_t *s = &g_srv;
  if (write(s->wake[1], "x", 1) != 1)
    return -1;
  pthread_join(s->th, NULL);
  close(s->lfd);
  close(s->wake[0]);
  close(s->wake[1]);
  pthread_mutex_destroy(&s->mu);
  upstream_global_cleanup();
  return 0;
}

/* ------------------------------------------------------------ fixtures */

typedef struct fx {
  uv_loop_t loop;
  uv_async_t wake;  /* the server thread's doorbell */
  uv_timer_t guard; /* fails a wait that would otherwise hang */
  bool guard_fired;
  upstream_client_t *c; /* NULL once a test closed it itself */
} fx_t;

static void on_wake(uv_async_t *h) {
  (void)h;
}

static void on_guard(uv_timer_t *h) {
  fx_t *f = h->data;
  f->guard_fired = true;
}

static int fx_setup_with(void **state, const upstream_client_opts_t *o) {
  fx_t *f = calloc(1, sizeof *f);
  if (!f || uv_loop_init(&f->loop) != 0)
    return -1;
  uv_async_init(&f->loop, &f->wake, on_wake);
  uv_timer_init(&f->loop, &f->guard);
  f->guard.data = f;
  pthread_mutex_lock(&g_srv.mu);
  g_srv.notify = &f->wake;
  pthread_mutex_unlock(&g_srv.mu);
  f->c = upstream_client_new(&f->loop, o);
  *state = f;
  return f->c ? 0 : -1;
}

static int fx_setup(void **state) {
  return fx_setup_with(state, NULL);
}

static int fx_setup_small_pool(void **state) {
  upstream_client_opts_t o = {.max_host_connections = 8};
  return fx_setup_with(state, &o);
}

static int fx_teardown(void **state) {
  fx_t *f = *state;
  upstream_client_close(f->c);
  pthread_mutex_lock(&g_srv.mu);
  g_srv.notify = NULL;
  pthread_mutex_unlock(&g_srv.mu);
  uv_close((uv_handle_t *)&f->wake, NULL);
  uv_close((uv_handle_t *)&f->guard, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&f->loop); /* UV_EBUSY if a handle leaked */
  free(f);
  return rc == 0 ? 0 : -1;
}

/* Runs the loop until *done reaches target (or the 20 s guard fails). */
static void run_until(fx_t *f, const int *done, int target) {
  uv_timer_start(&f->guard, on_guard, 20000, 0);
  while (*done < target && !f->guard_fired)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_timer_stop(&f->guard);
  assert_false(f->guard_fired);
}

static void run_until_atomic(fx_t *f, atomic_int *v, int target) {
  uv_timer_start(&f->guard, on_guard, 20000, 0);
  while (atomic_load(v) < target && !f->guard_fired)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_timer_stop(&f->guard);
  assert_false(f->guard_fired);
}

/* What a done callback saw, copied out of the response. */
typedef struct result {
  int calls;
  int err, status, http_version;
  bool reused;
  char errmsg[160];
  char heads[4096]; /* "Name: value\n" per header, in order */
  size_t nheaders;
  char content_type[64]; /* via upstream_response_header, any case */
  char *body;
  size_t body_len;
} result_t;

static void on_done(void *ud, upstream_response_t *resp) {
  result_t *r = ud;
  r->calls++;
  r->err = resp->err;
  r->status = resp->status;
  r->http_version = resp->http_version;
  r->reused = resp->reused;
  snprintf(r->errmsg, sizeof r->errmsg, "%s", resp->errmsg);
  r->nheaders = resp->nheaders;
  size_t off = 0;
  for (size_t i = 0; i < resp->nheaders && off < sizeof r->heads; i++) {
    const upstream_header_t *h = &resp->headers[i];
    assert_int_equal(strlen(h->name), h->name_len); /* NUL-terminated */
    off += (size_t)snprintf(r->heads + off, sizeof r->heads - off, "%s: %s\n",
                            h->name, h->value);
  }
  const upstream_header_t *ct = upstream_response_header(resp, "content-TYPE");
  snprintf(r->content_type, sizeof r->content_type, "%s", ct ? ct->value : "");
  size_t before = resp->body_len;
  r->body = upstream_response_take_body(resp, &r->body_len);
  assert_int_equal(r->body_len, before);
  size_t again;
  assert_null(upstream_response_take_body(resp, &again)); /* taken once */
  assert_int_equal(again, 0);
}

static void result_free(result_t *r) {
  free(r->body);
}

/* A ring of buffers, so a test can hold a few URLs at once. */
static char *url(const char *path) {
  static char bufs[8][512];
  static unsigned next;
  char *buf = bufs[next++ % 8];
  snprintf(buf, 512, "http://127.0.0.1:%d%s", g_srv.port, path);
  return buf;
}

/* Fetches and runs the loop until the callback ran; returns the result. */
static void fetch_sync(fx_t *f, upstream_request_t *req, result_t *r) {
  memset(r, 0, sizeof *r);
  if (!req->timeout_ms)
    req->timeout_ms = 5000;
  assert_int_equal(upstream_fetch(f->c, req, on_done, r), 0);
  assert_int_equal(r->calls, 0); /* never synchronous */
  run_until(f, &r->calls, 1);
  assert_int_equal(r->calls, 1);
}

static void get(fx_t *f, const char *path, result_t *r) {
  upstream_request_t req = {.url = url(path)};
  fetch_sync(f, &req, r);
}

#define HDR(n, v)                                                              \
  { n, sizeof(n) - 1, v, sizeof(v) - 1 }

/* --------------------------------------------------------------- tests */

static void test_get_parses_status_headers_body(void **state) {
  fx_t *f = *state;
  result_t r;
  get(f, "/hello", &r);
  assert_int_equal(r.err, 0);
  assert_string_equal(r.errmsg, "");
  assert_int_equal(r.status, 200);
  assert_int_equal(r.http_version, 11);
  assert_false(r.reused); /* first request: a new connection */
  assert_int_equal(r.nheaders, 6);
  assert_string_equal(r.heads, "Content-Type: text/plain\nX-Spaced: a  b\n"
                               "X-Multi: 1\nX-Multi: 2\nX-Method: GET\n"
                               "Content-Length: 11\n");
  assert_string_equal(r.content_type, "text/plain");
  assert_int_equal(r.body_len, 11);
  assert_memory_equal(r.body, "hello world", 11);
  result_free(&r);

  get(f, "/hello", &r); /* the kept-alive connection serves the next one */
  assert_int_equal(r.status, 200);
  assert_true(r.reused);
  result_free(&r);
}

static void test_head_does_not_wait_for_body(void **state) {
  fx_t *f = *state;
  result_t r;
  /* Without CURLOPT_NOBODY curl would wait for the 11 announced bytes. */
  upstream_request_t req = {
      .method = "HEAD", .url = url("/hello"), .timeout_ms = 3000};
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.heads, "X-Method: HEAD\n"));
  assert_non_null(strstr(r.heads, "Content-Length: 11\n"));
  assert_null(r.body);
  assert_int_equal(r.body_len, 0);
}

static void test_big_body_intact(void **state) {
  fx_t *f = *state;
  result_t r;
  upstream_request_t req = {.url = url("/big"),
                            .max_response_bytes = BIG_LEN}; /* exactly */
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.body_len, BIG_LEN);
  for (size_t i = 0; i < BIG_LEN; i++)
    if ((uint8_t)r.body[i] != big_byte(i))
      fail_msg("body differs at %zu", i);
  result_free(&r);

  req.url = url("/big-chunked");
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.body_len, BIG_LEN);
  assert_int_equal(fnv1a(r.body, r.body_len), fnv1a(r.body, BIG_LEN));
  assert_int_equal((uint8_t)r.body[BIG_LEN - 1], big_byte(BIG_LEN - 1));
  result_free(&r);
}

static void test_not_modified(void **state) {
  fx_t *f = *state;
  result_t r;
  get(f, "/304", &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 304);
  assert_string_equal(r.heads, "ETag: \"v1\"\n");
  assert_null(r.body);
}

static void test_too_big(void **state) {
  fx_t *f = *state;
  result_t r;
  /* Announced by Content-Length: refused before the body. */
  upstream_request_t req = {.url = url("/big"), .max_response_bytes = 1000};
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, UPSTREAM_ETOOBIG);
  assert_non_null(strstr(r.errmsg, "1000"));
  assert_true(r.body_len <= 1000);
  result_free(&r);
  /* Chunked: only counting the bytes as they arrive can catch it. */
  req.url = url("/big-chunked");
  req.max_response_bytes = BIG_LEN - 1;
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, UPSTREAM_ETOOBIG);
  assert_true(r.body_len <= BIG_LEN - 1);
  result_free(&r);
  /* The client is still usable afterwards. */
  get(f, "/hello", &r);
  assert_int_equal(r.err, 0);
  result_free(&r);
}

static void test_timeout(void **state) {
  fx_t *f = *state;
  result_t r;
  upstream_request_t req = {.url = url("/hang"), .timeout_ms = 300};
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, UPSTREAM_ETIMEOUT);
  assert_int_equal(r.status, 0);
  assert_true(strlen(r.errmsg) > 0);
}

static void test_refused_connect_no_secrets(void **state) {
  fx_t *f = *state;
  int port = 0;
  int fd = bound_socket(&port); /* bound, never listening: refused */
  assert_true(fd >= 0);
  char u[256];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/v1?api_key=SECRET1", port);
  upstream_header_t h[] = {HDR("Authorization", "Bearer SECRET2")};
  upstream_request_t req = {.url = u, .headers = h, .nheaders = 1};
  result_t r;
  fetch_sync(f, &req, &r);
  close(fd);
  assert_int_equal(r.err, UPSTREAM_ECONNECT);
  assert_int_equal(r.status, 0);
  assert_true(strlen(r.errmsg) > 0);
  assert_null(strstr(r.errmsg, "SECRET"));
  assert_string_equal(upstream_strerror(r.err), "cannot connect to upstream");
}

static void test_broken_responses_are_protocol_errors(void **state) {
  fx_t *f = *state;
  const char *paths[] = {"/close", "/rst", "/truncated", "/bad"};
  for (size_t i = 0; i < 4; i++) {
    result_t r;
    get(f, paths[i], &r);
    if (r.err != UPSTREAM_EPROTOCOL)
      fail_msg("%s: err %d (%s)", paths[i], r.err, r.errmsg);
    if (strcmp(paths[i], "/truncated") == 0) {
      assert_int_equal(r.status, 200); /* head arrived, body did not */
      assert_int_equal(r.body_len, 10);
    }
    result_free(&r);
  }
}

static void test_interim_and_trailer_blocks_dropped(void **state) {
  fx_t *f = *state;
  result_t r;
  get(f, "/continue", &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.heads, "X-Final: yes\nContent-Length: 2\n");
  assert_memory_equal(r.body, "ok", 2);
  result_free(&r);

  get(f, "/trailers", &r);
  assert_int_equal(r.err, 0);
  assert_null(strstr(r.heads, "X-Trailer: late"));
  assert_non_null(strstr(r.heads, "Trailer: X-Trailer\n"));
  assert_int_equal(r.body_len, 5);
  assert_memory_equal(r.body, "hello", 5);
  result_free(&r);
}

static void test_folded_header_joined(void **state) {
  fx_t *f = *state;
  result_t r;
  get(f, "/fold", &r);
  assert_int_equal(r.err, 0);
  assert_string_equal(r.heads,
                      "X-Fold: first second\nX-After: 1\nContent-Length: 0\n");
}

static void test_redirect_and_encoding_pass_through(void **state) {
  fx_t *f = *state;
  result_t r;
  get(f, "/redirect", &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 302); /* not followed */
  assert_non_null(strstr(r.heads, "Location: /hello\n"));
  assert_memory_equal(r.body, "redirect", 8);
  result_free(&r);

  get(f, "/gzip", &r); /* would fail to decode if curl tried */
  assert_int_equal(r.err, 0);
  assert_int_equal(r.body_len, 15);
  assert_memory_equal(r.body, "not really gzip", 15);
  result_free(&r);
}

static void test_sends_exactly_the_given_headers(void **state) {
  fx_t *f = *state;
  upstream_header_t h[] = {HDR("Host", "api.example.test"),
                           HDR("X-Injected", "token-1"), HDR("X-Empty", "")};
  upstream_request_t req = {
      .url = url("/echo?q=1"), .headers = h, .nheaders = 3, .http2 = true};
  result_t r;
  fetch_sync(f, &req, &r);
  assert_int_equal(r.err, 0);
  const char *b = r.body;
  size_t n = r.body_len;
  assert_true(n > 0);
  /* http2 allowed, but plain http stays HTTP/1.1 without an h2c upgrade. */
  assert_int_equal(ci_count(b, n, "GET /echo?q=1 HTTP/1.1\r\n"), 1);
  assert_int_equal(ci_count(b, n, "\r\nUpgrade:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nHTTP2-Settings:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nHost:"), 1);
  assert_int_equal(ci_count(b, n, "\r\nHost: api.example.test\r\n"), 1);
  assert_int_equal(ci_count(b, n, "\r\nX-Injected: token-1\r\n"), 1);
  assert_int_equal(ci_count(b, n, "\r\nX-Empty:"), 1);
  assert_int_equal(ci_count(b, n, "\r\nAccept:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nAccept-Encoding:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nExpect:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nUser-Agent:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nContent-Length:"), 0);
  result_free(&r);

  req.headers = NULL; /* no Host given: curl's own */
  req.nheaders = 0;
  fetch_sync(f, &req, &r);
  char host[64];
  snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", g_srv.port);
  assert_int_equal(ci_count(r.body, r.body_len, host), 1);
  result_free(&r);
}

static void test_post_body_delivered(void **state) {
  fx_t *f = *state;
  size_t len = 2 * BIG_LEN; /* large enough for curl to want Expect */
  char *body = malloc(len);
  assert_non_null(body);
  for (size_t i = 0; i < len; i++)
    body[i] = (char)big_byte(i * 3);
  uint32_t sum = fnv1a(body, len);
  upstream_header_t h[] = {HDR("Content-Length", "5"),
                           HDR("Expect", "100-continue"),
                           HDR("Accept", "application/json")};
  upstream_request_t req = {.method = "POST",
                            .url = url("/echo"),
                            .headers = h,
                            .nheaders = 3,
                            .body = body,
                            .body_len = len};
  result_t r = {0};
  assert_int_equal(upstream_fetch(f->c, &req, on_done, &r), 0);
  memset(body, 0, len); /* the client copied it */
  free(body);
  run_until(f, &r.calls, 1);
  assert_int_equal(r.err, 0);
  char want[64];
  snprintf(want, sizeof want, "X-Body-Len: %zu\nX-Body-Sum: %08x\n", len, sum);
  assert_non_null(strstr(r.heads, want));
  const char *b = r.body;
  size_t n = r.body_len;
  assert_int_equal(ci_count(b, n, "POST /echo HTTP/1.1\r\n"), 1);
  snprintf(want, sizeof want, "\r\nContent-Length: %zu\r\n", len);
  assert_int_equal(ci_count(b, n, want), 1);
  assert_int_equal(ci_count(b, n, "\r\nContent-Length:"), 1);
  assert_int_equal(ci_count(b, n, "\r\nExpect:"), 0);
  assert_int_equal(ci_count(b, n, "\r\nAccept:"), 1);
  assert_int_equal(ci_count(b, n, "\r\nAccept: application/json\r\n"), 1);
  result_free(&r);
}

static void test_other_methods(void **state) {
  fx_t *f = *state;
  struct {
    const char *method;
    const char *body; /* NULL: none given */
    const char *line, *cl;
  } cases[] = {
      {"PUT", "abc", "PUT /echo HTTP/1.1\r\n", "\r\nContent-Length: 3\r\n"},
      {"PATCH", NULL, "PATCH /echo HTTP/1.1\r\n", "\r\nContent-Length: 0\r\n"},
      {"DELETE", NULL, "DELETE /echo HTTP/1.1\r\n", NULL},
      {"OPTIONS", NULL, "OPTIONS /echo HTTP/1.1\r\n", NULL},
      {"DELETE", "xy", "DELETE /echo HTTP/1.1\r\n",
       "\r\nContent-Length: 2\r\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    upstream_request_t req = {.method = cases[i].method,
                              .url = url("/echo"),
                              .body = cases[i].body,
                              .body_len =
                                  cases[i].body ? strlen(cases[i].body) : 0};
    result_t r;
    fetch_sync(f, &req, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(ci_count(r.body, r.body_len, cases[i].line), 1);
    if (cases[i].cl)
      assert_int_equal(ci_count(r.body, r.body_len, cases[i].cl), 1);
    else
      assert_int_equal(ci_count(r.body, r.body_len, "\r\nContent-Length"), 0);
    result_free(&r);
  }
}

static void test_invalid_requests_rejected(void **state) {
  fx_t *f = *state;
  result_t r = {0};
  upstream_header_t crlf[] = {HDR("X-Evil", "a\r\nHost: other")};
  upstream_header_t space[] = {HDR("Bad Name", "v")};
  upstream_request_t reqs[] = {
      {.url = url("/hello"), .headers = crlf, .nheaders = 1},
      {.url = url("/hello"), .headers = space, .nheaders = 1},
      {.url = url("/hello"), .method = "GE T"},
      {.url = "ftp://127.0.0.1/x"},
      {.url = "file:///etc/passwd"},
      {.url = "http://127.0.0.1/a b"},
      {.url = NULL},
  };
  for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++)
    assert_int_equal(upstream_fetch(f->c, &reqs[i], on_done, &r),
                     UPSTREAM_EINVAL);
  assert_int_equal(upstream_client_pending(f->c), 0);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(r.calls, 0);
}

typedef struct batch {
  int done, ok, reused;
} batch_t;

static void on_batch_done(void *ud, upstream_response_t *resp) {
  batch_t *b = ud;
  b->done++;
  if (resp->err == 0 && resp->status == 200 && resp->body_len == 11)
    b->ok++;
  if (resp->reused)
    b->reused++;
}

static void test_concurrent_fetches_reuse_connections(void **state) {
  fx_t *f = *state; /* max_host_connections = 8 */
  for (int round = 0; round < 2; round++) {
    batch_t b = {0};
    int accepted = atomic_load(&g_srv.accepted);
    upstream_request_t req = {.url = url("/hello"), .timeout_ms = 10000};
    for (int i = 0; i < 50; i++)
      assert_int_equal(upstream_fetch(f->c, &req, on_batch_done, &b), 0);
    assert_int_equal(upstream_client_pending(f->c), 50);
    run_until(f, &b.done, 50);
    assert_int_equal(b.ok, 50);
    assert_int_equal(upstream_client_pending(f->c), 0);
    int opened = atomic_load(&g_srv.accepted) - accepted;
    assert_true(opened <= 8);
    assert_int_equal(b.reused, 50 - opened);
    if (round == 1)
      assert_int_equal(opened, 0); /* the pool kept all of them */
  }
}

static int fx_setup_one_conn(void **state) {
  upstream_client_opts_t o = {.max_host_connections = 1};
  return fx_setup_with(state, &o);
}

/* A transfer queued behind the per-host limit still times out on time:
 * timeout_ms covers the wait for a connection too. */
static void test_timeout_covers_queueing(void **state) {
  fx_t *f = *state; /* max_host_connections = 1 */
  result_t hang = {0}, queued = {0};
  upstream_request_t h = {.url = url("/hang"), .timeout_ms = 10000};
  upstream_request_t q = {.url = url("/hello"), .timeout_ms = 300};
  int hangs = atomic_load(&g_srv.hangs);
  assert_int_equal(upstream_fetch(f->c, &h, on_done, &hang), 0);
  run_until_atomic(f, &g_srv.hangs, hangs + 1); /* it holds the connection */
  assert_int_equal(upstream_fetch(f->c, &q, on_done, &queued), 0);
  run_until(f, &queued.calls, 1);
  assert_int_equal(queued.err, UPSTREAM_ETIMEOUT);
  assert_int_equal(hang.calls, 0);
  upstream_client_close(f->c); /* hang's result lives on this stack */
  f->c = NULL;
  assert_int_equal(hang.calls, 1);
  assert_int_equal(hang.err, UPSTREAM_ECANCELED);
}

typedef struct cancel_count {
  int calls, canceled;
} cancel_count_t;

static void on_cancel_done(void *ud, upstream_response_t *resp) {
  cancel_count_t *k = ud;
  k->calls++;
  if (resp->err == UPSTREAM_ECANCELED && resp->status == 0)
    k->canceled++;
}

static void test_close_cancels_outstanding(void **state) {
  fx_t *f = *state;
  cancel_count_t k = {0};
  int hangs = atomic_load(&g_srv.hangs);
  upstream_request_t req = {.url = url("/hang"), .timeout_ms = 10000};
  for (int i = 0; i < 10; i++)
    assert_int_equal(upstream_fetch(f->c, &req, on_cancel_done, &k), 0);
  run_until_atomic(f, &g_srv.hangs, hangs + 10); /* all on the wire */
  for (int i = 0; i < 5; i++)                    /* and some never started */
    assert_int_equal(upstream_fetch(f->c, &req, on_cancel_done, &k), 0);
  assert_int_equal(k.calls, 0);
  upstream_client_close(f->c);
  assert_int_equal(k.calls, 15);
  assert_int_equal(k.canceled, 15);
  f->c = NULL; /* the fixture's teardown proves every handle closes */
}

typedef struct reentrant {
  upstream_client_t *c;
  int calls, canceled, refetch_rc;
  bool closed;
} reentrant_t;

static void on_reentrant_done(void *ud, upstream_response_t *resp) {
  reentrant_t *x = ud;
  x->calls++;
  if (resp->err == UPSTREAM_ECANCELED)
    x->canceled++;
  if (resp->err == 0 && !x->closed) {
    x->closed = true;
    upstream_client_close(x->c); /* the /hang transfers end right here */
    assert_int_equal(x->calls, 3);
    upstream_request_t req = {.url = url("/hello")};
    x->refetch_rc = upstream_fetch(x->c, &req, on_reentrant_done, x);
  }
}

static void test_close_from_callback(void **state) {
  fx_t *f = *state;
  reentrant_t x = {.c = f->c};
  upstream_request_t hang = {.url = url("/hang"), .timeout_ms = 10000};
  upstream_request_t hello = {.url = url("/hello"), .timeout_ms = 10000};
  assert_int_equal(upstream_fetch(f->c, &hang, on_reentrant_done, &x), 0);
  assert_int_equal(upstream_fetch(f->c, &hello, on_reentrant_done, &x), 0);
  assert_int_equal(upstream_fetch(f->c, &hang, on_reentrant_done, &x), 0);
  run_until(f, &x.calls, 3);
  assert_int_equal(x.calls, 3);
  assert_int_equal(x.canceled, 2);
  assert_int_equal(x.refetch_rc, UPSTREAM_ECANCELED);
  f->c = NULL;
}

typedef struct chain {
  upstream_client_t *c;
  int calls, statuses[2];
} chain_t;

static void on_chain_done(void *ud, upstream_response_t *resp) {
  chain_t *ch = ud;
  ch->statuses[ch->calls++] = resp->status;
  if (ch->calls == 1) {
    upstream_request_t req = {.url = url("/304")};
    assert_int_equal(upstream_fetch(ch->c, &req, on_chain_done, ch), 0);
  }
}

static void test_fetch_from_callback(void **state) {
  fx_t *f = *state;
  chain_t ch = {.c = f->c};
  upstream_request_t req = {.url = url("/hello")};
  assert_int_equal(upstream_fetch(f->c, &req, on_chain_done, &ch), 0);
  run_until(f, &ch.calls, 2);
  assert_int_equal(ch.statuses[0], 200);
  assert_int_equal(ch.statuses[1], 304);
}

static void test_strerror(void **state) {
  (void)state;
  assert_string_equal(upstream_strerror(UPSTREAM_ETIMEOUT),
                      "upstream timed out");
  assert_string_equal(upstream_strerror(0), "success");
  assert_string_equal(upstream_strerror(-1), "unknown error");
  upstream_client_close(NULL);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
  const struct CMUnitTest tests[] = {
      T(test_get_parses_status_headers_body),
      T(test_head_does_not_wait_for_body),
      T(test_big_body_intact),
      T(test_not_modified),
      T(test_too_big),
      T(test_timeout),
      T(test_refused_connect_no_secrets),
      T(test_broken_responses_are_protocol_errors),
      T(test_interim_and_trailer_blocks_dropped),
      T(test_folded_header_joined),
      T(test_redirect_and_encoding_pass_through),
      T(test_sends_exactly_the_given_headers),
      T(test_post_body_delivered),
      T(test_other_methods),
      T(test_invalid_requests_rejected),
      cmocka_unit_test_setup_teardown(test_concurrent_fetches_reuse_connections,
                                      fx_setup_small_pool, fx_teardown),
      cmocka_unit_test_setup_teardown(test_timeout_covers_queueing,
                                      fx_setup_one_conn, fx_teardown),
      T(test_close_cancels_outstanding),
      T(test_close_from_callback),
      T(test_fetch_from_callback),
      cmocka_unit_test(test_strerror),
  };
#undef T
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
