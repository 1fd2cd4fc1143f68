/*
 * http_conn.c — one HTTP/1.1 connection of coalesced's server: reading and
 * parsing (with http_request.c), handing requests to the handler, writing
 * answers, timeouts, keep-alive, pipelining and closing. The listener side
 * is http_server.c; the contract is http_server.h.
 *
 * Invariants (loop thread only, no locks; stats are relaxed atomics):
 *  - A conn handles one request at a time. While it is with the handler or
 *    its response is being written, input is buffered, not parsed (at most
 *    HTTP_IN_CAP bytes; reading pauses when full), so responses leave in
 *    request order.
 *  - A conn is freed only when its two handles have closed AND the handler
 *    does not own its request. Handle closes complete asynchronously, so the
 *    server never frees a conn inside its own call stack; closing a conn
 *    whose request is with the handler is an abort and calls the abort hook.
 *  - Answers the server makes itself (400, 408, 413, 414, 431, ...) carry
 *    Connection: close; after the last response of a connection we send
 *    FIN and drain input for a moment (lingering close) so that an unread
 *    request body does not turn our answer into a reset.
 */
#include "http_server_int.h"

#include "log.h"

#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINGER_MS 2000u

static const char continue_response[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void conn_process(http_conn_t *c);
static void conn_close(http_conn_t *c);

#define CHECK_CONN(c) assert((c) != NULL && (c)->magic == HTTP_CONN_MAGIC)

/* --------------------------------------------------------------- timers */

static void on_timer(uv_timer_t *t);

static void timer_arm(http_conn_t *c, timer_kind_t kind, unsigned ms) {
  c->timer_kind = kind;
  if (kind == TK_NONE)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ------------------------------------------------------------- lifetime */

static void conn_maybe_free(http_conn_t *c) {
  if (c->open_handles > 0 || c->handler_owns)
    return;
  http_server_t *s = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  http_req_free(c);
  http_server_rbuf_put(s, c->in); /* its bytes die with the conn */
  free(c->wowned);
  c->magic = 0;
  free(c);
  atomic_fetch_sub_explicit(&s->nconns, 1, memory_order_relaxed);
  if (s->opts.conn_counter != NULL)
    atomic_fetch_sub_explicit(s->opts.conn_counter, 1, memory_order_relaxed);
  http_server_maybe_done(s);
}

static void on_handle_closed(uv_handle_t *h) {
  http_conn_t *c = h->data;
  if (--c->open_handles == 0)
    conn_maybe_free(c);
}

/* Idempotent. If the handler owns the request this is an abort: it is
 * told through its hook (after the close has started, so nothing more can
 * be read or written) and must still finish the request. */
static void conn_close(http_conn_t *c) {
  if (c->state == CS_CLOSING)
    return;
  c->state = CS_CLOSING;
  c->reading = false;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  if (c->handler_owns && !c->aborted) {
    http_abort_cb cb = c->on_abort;
    c->aborted = true;
    c->on_abort = NULL;
    http_stat_inc(&c->srv->stats.client_aborts);
    if (cb)
      cb(c->abort_ud, c);
  }
}

/* ---------------------------------------------------------------- input */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  http_conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(NULL, 0); /* -> UV_ENOBUFS in on_read */
  if (!c->in && !(c->in = http_server_rbuf_get(c->srv)))
    return;
  if (c->state == CS_LINGER || c->in_off == c->in_len) {
    c->in_off = c->in_len = 0;
  } else if (c->in_off > 0) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  *buf = uv_buf_init(c->in + c->in_len, (unsigned)(HTTP_IN_CAP - c->in_len));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void read_resume(http_conn_t *c) {
  if (c->reading || c->state == CS_CLOSING || c->peer_eof)
    return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
    conn_close(c);
  else
    c->reading = true;
}

static void read_pause(http_conn_t *c) {
  if (c->reading)
    uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = false;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  http_conn_t *c = st->data;
  (void)buf;
  if (nread == 0)
    return;
  if (nread == UV_ENOBUFS) { /* buffer full of pipelined input */
    read_pause(c);
    if (c->state != CS_PENDING && c->state != CS_WRITING)
      conn_close(c);
    return;
  }
  if (nread < 0) {
    read_pause(c);
    if (c->state == CS_WRITING && nread == UV_EOF)
      c->peer_eof = true; /* half-close: answer, then close */
    else
      conn_close(c); /* an abort when the handler has the request */
    return;
  }
  switch (c->state) {
  case CS_HEAD:
  case CS_BODY:
    c->in_len += (size_t)nread;
    if (c->state == CS_BODY)
      timer_arm(c, TK_BODY, c->srv->opts.idle_timeout_ms);
    conn_process(c);
    break;
  case CS_PENDING:
  case CS_WRITING:
    c->in_len += (size_t)nread; /* parsed after the response */
    break;
  case CS_LINGER:
  case CS_CLOSING:
    break; /* discarded */
  }
}

void http_conn_on_head_start(http_conn_t *c) {
  c->req.arrival_ns = uv_hrtime();
  if (c->timer_kind != TK_HEADER) /* the first request's runs from accept */
    timer_arm(c, TK_HEADER, c->srv->opts.header_timeout_ms);
}

static void on_continue_written(uv_write_t *req, int status) {
  if (status < 0)
    conn_close(req->data);
}

void http_conn_on_head_done(http_conn_t *c) {
  c->state = CS_BODY;
  timer_arm(c, TK_BODY, c->srv->opts.idle_timeout_ms);
  if (!c->expect_continue)
    return;
  uv_buf_t b = uv_buf_init((char *)continue_response,
                           (unsigned)sizeof continue_response - 1);
  c->creq.data = c;
  if (uv_write(&c->creq, (uv_stream_t *)&c->tcp, &b, 1, on_continue_written) ==
      0)
    c->sent_any = true;
}

/* ------------------------------------------------------------- answering */

typedef struct sbuf {
  char *p;
  size_t len;
} sbuf_t;

static void sb_put(sbuf_t *b, const void *s, size_t n) {
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void sb_str(sbuf_t *b, const char *s) {
  sb_put(b, s, strlen(s));
}

/* A complete response in one malloc'd buffer. */
static char *build_response(const http_conn_t *c, int status, const char *ctype,
                            const char *extra, const void *body, size_t len,
                            bool close, size_t *out_len) {
  bool informational = status >= 100 && status < 200;
  bool no_length = informational || status == 204;
  bool no_body = no_length || status == 304 || c->req.method == HTTP_HEAD;
  const char *server = c->srv->opts.server_name;
  size_t cap = 256 + (server ? strlen(server) : 0) +
               (ctype ? strlen(ctype) : 0) + (extra ? strlen(extra) : 0) +
               (no_body ? 0 : len);
  sbuf_t b = {malloc(cap), 0};
  if (!b.p)
    return NULL;

  char num[64], date[HTTP_DATE_LEN];
  snprintf(num, sizeof num, "HTTP/1.1 %03d ", status);
  sb_str(&b, num);
  sb_str(&b, http_status_reason(status));
  sb_str(&b, "\r\nDate: ");
  sb_str(&b, http_format_date(date, time(NULL)));
  sb_str(&b, "\r\n");
  if (server) {
    sb_str(&b, "Server: ");
    sb_str(&b, server);
    sb_str(&b, "\r\n");
  }
  if (ctype) {
    sb_str(&b, "Content-Type: ");
    sb_str(&b, ctype);
    sb_str(&b, "\r\n");
  }
  if (!no_length) {
    snprintf(num, sizeof num, "Content-Length: %zu\r\n", len);
    sb_str(&b, num);
  }
  if (close)
    sb_str(&b, "Connection: close\r\n");
  else if (c->req.http_minor == 0)
    sb_str(&b, "Connection: keep-alive\r\n");
  if (extra)
    sb_str(&b, extra);
  sb_str(&b, "\r\n");
  if (!no_body && len > 0)
    sb_put(&b, body, len);
  *out_len = b.len;
  return b.p;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  if (status < 0)
    conn_close(req->data);
}

/* The last response is out: FIN, then drain until EOF or LINGER_MS. */
static void conn_linger(http_conn_t *c) {
  c->state = CS_LINGER;
  c->in_off = c->in_len = 0;
  c->sreq.data = c;
  if (c->peer_eof ||
      uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
    conn_close(c);
    return;
  }
  unsigned ms = c->srv->opts.idle_timeout_ms;
  timer_arm(c, TK_LINGER, ms < LINGER_MS ? ms : LINGER_MS);
  read_resume(c);
}

static void on_write(uv_write_t *req, int status) {
  http_conn_t *c = req->data;
  http_written_cb cb = c->written;
  void *ud = c->written_ud;
  c->written = NULL;
  free(c->wowned);
  c->wowned = NULL;
  if (status < 0)
    conn_close(c);
  if (cb)
    cb(ud, status); /* request memory is still valid here */
  if (c->state == CS_CLOSING)
    return;
  http_req_reset(c);
  if (c->close_after || c->srv->closing || c->peer_eof) {
    conn_linger(c);
    return;
  }
  c->state = CS_HEAD;
  timer_arm(c, TK_IDLE, c->srv->opts.idle_timeout_ms);
  conn_process(c); /* a pipelined request may be waiting */
  /* read on (also to notice a client leaving) unless plenty is buffered
   * already, or we are answering with an error and a close */
  if (c->state != CS_CLOSING && !(c->state == CS_WRITING && c->close_after) &&
      c->in_len - c->in_off < HTTP_IN_CAP / 2)
    read_resume(c);
}

static bool conn_will_close(const http_conn_t *c) {
  return !c->req.keep_alive || c->srv->closing || c->peer_eof;
}

/* Queues one response. On failure the conn is closed and `owned` freed. */
static int conn_write(http_conn_t *c, const uv_buf_t *bufs, unsigned nbufs,
                      char *owned, bool close_after, http_written_cb written,
                      void *ud) {
  c->close_after = close_after || conn_will_close(c);
  c->wreq.data = c;
  int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write);
  if (rc < 0) {
    free(owned);
    conn_close(c);
    return rc;
  }
  c->wowned = owned;
  c->written = written;
  c->written_ud = ud;
  c->sent_any = true;
  c->state = CS_WRITING;
  timer_arm(c, TK_WRITE, c->srv->opts.idle_timeout_ms);
  return 0;
}

static const char *error_code(int status) {
  switch (status) {
  case 405:
    return "method_not_allowed";
  case 408:
    return "request_timeout";
  case 413:
    return "body_too_large";
  case 414:
    return "uri_too_long";
  case 431:
    return "headers_too_large";
  case 503:
    return "overloaded";
  case 505:
    return "http_version_not_supported";
  default:
    return "bad_request";
  }
}

static void count_reject(http_server_t *s, int status) {
  switch (status) {
  case 408:
    break; /* counted as a timeout */
  case 413:
    http_stat_inc(&s->stats.rejected_body_too_large);
    break;
  case 414:
    http_stat_inc(&s->stats.rejected_uri_too_long);
    break;
  case 431:
    http_stat_inc(&s->stats.rejected_header_too_large);
    break;
  default:
    http_stat_inc(&s->stats.rejected_bad_request);
  }
}

static size_t error_body(char *buf, size_t size, const char *code,
                         const char *message) {
  size_t n = 0;
  n += (size_t)snprintf(buf, size, "{\"error\":");
  n += http_json_quote(buf + n, size - n - 2, code);
  n += (size_t)snprintf(buf + n, size - n, ",\"message\":");
  n += http_json_quote(buf + n, size - n - 1, message ? message : "");
  buf[n++] = '}';
  buf[n] = '\0';
  return n;
}

/* The server's own answer to a request it will not hand out; closes. */
static void conn_fail(http_conn_t *c, int status, const char *msg) {
  if (status < 0) { /* out of memory: nothing sensible to say */
    conn_close(c);
    return;
  }
  count_reject(c->srv, status);
  if (log_enabled(LOG_LEVEL_DEBUG)) {
    char q[160];
    log_write(LOG_LEVEL_DEBUG, "http_reject", "status=%d peer=%s reason=%s",
              status, c->peer_addr,
              log_quote(q, sizeof q, msg, (unsigned)strlen(msg)));
  }
  char body[512];
  size_t blen = error_body(body, sizeof body, error_code(status), msg);
  c->req.method = HTTP_GET; /* the request may be half-parsed: send a body */
  c->req.keep_alive = false;
  size_t n;
  char *resp =
      build_response(c, status, "application/json", NULL, body, blen, true, &n);
  if (!resp) {
    conn_close(c);
    return;
  }
  uv_buf_t b = uv_buf_init(resp, (unsigned)n);
  read_pause(c); /* nothing more will be parsed; linger drains later */
  conn_write(c, &b, 1, resp, true, NULL, NULL);
}

/* ------------------------------------------------------------- parsing */

static void dispatch(http_conn_t *c) {
  http_server_t *s = c->srv;
  c->msg_complete = false;
  c->state = CS_PENDING;
  c->handler_owns = true;
  timer_arm(c, TK_NONE, 0);
  http_stat_inc(&s->stats.requests);
  s->opts.on_request(s->opts.ud, c, &c->req);
}

/* Raw bytes of a chunked body beyond which framing is abuse (1-byte
 * chunks with long extensions), not data. */
static size_t body_raw_limit(const http_server_opts_t *o) {
  return 2 * o->max_body_bytes + 64 * 1024;
}

/* Parses buffered input until it runs out or a request is dispatched. */
static void conn_process(http_conn_t *c) {
  while ((c->state == CS_HEAD || c->state == CS_BODY) &&
         c->in_off < c->in_len) {
    const char *data = c->in + c->in_off;
    size_t len = c->in_len - c->in_off, feed = len;
    bool head_end = false, in_body = c->state == CS_BODY;
    if (!in_body) {
      int st = http_req_scan(c, data, len, &feed, &head_end);
      if (st) {
        conn_fail(c, st, c->fail_msg);
        return;
      }
    }
    size_t parsed =
        http_parser_execute(&c->parser, &http_req_settings, data, feed);
    c->in_off += parsed;
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (c->fail_status) {
      conn_fail(c, c->fail_status, c->fail_msg);
      return;
    }
    if (err != HPE_OK && err != HPE_PAUSED) {
      conn_fail(c, err == HPE_HEADER_OVERFLOW ? 431 : 400,
                http_errno_description(err));
      return;
    }
    if (in_body && (c->body_raw += parsed) > body_raw_limit(&c->srv->opts)) {
      conn_fail(c, 413, "chunked framing too large");
      return;
    }
    if (c->msg_complete) {
      http_parser_pause(&c->parser, 0);
      dispatch(c);
    } else if (head_end && c->state == CS_HEAD) {
      /* the scan saw the blank line but the parser is not past it */
      conn_fail(c, 400, "malformed request head");
      return;
    }
  }
  if (c->in && c->in_off == c->in_len && c->state == CS_HEAD &&
      !c->scan.started) { /* idle: give the read buffer back to the pool */
    http_server_rbuf_put(c->srv, c->in);
    c->in = NULL;
    c->in_off = c->in_len = 0;
  }
}

static void on_timer(uv_timer_t *t) {
  http_conn_t *c = t->data;
  http_server_t *s = c->srv;
  switch (c->timer_kind) {
  case TK_HEADER:
    http_stat_inc(&s->stats.timeouts_request);
    /* a late 408 on a reused connection could be mistaken by the client
     * for the answer to a request it is sending now: only on a fresh one */
    if (c->scan.started && !c->sent_any)
      conn_fail(c, 408, "request head not received in time");
    else
      conn_close(c);
    break;
  case TK_BODY:
    http_stat_inc(&s->stats.timeouts_request);
    conn_fail(c, 408, "request body not received in time");
    break;
  case TK_IDLE:
  case TK_WRITE:
    http_stat_inc(&s->stats.timeouts_idle);
    conn_close(c);
    break;
  case TK_LINGER:
    conn_close(c);
    break;
  case TK_NONE:
    break;
  }
}

static void peer_name(http_conn_t *c) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
    return;
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
    uv_ip4_name(in, c->peer_addr, sizeof c->peer_addr);
    c->peer_port = ntohs(in->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
    uv_ip6_name(in6, c->peer_addr, sizeof c->peer_addr);
    c->peer_port = ntohs(in6->sin6_port);
  }
}

void http_conn_accept(http_server_t *s, http_conn_t *c) {
  c->magic = HTTP_CONN_MAGIC;
  c->srv = s;
  c->state = CS_HEAD;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  atomic_fetch_add_explicit(&s->nconns, 1, memory_order_relaxed);
  if (s->opts.conn_counter != NULL)
    atomic_fetch_add_explicit(s->opts.conn_counter, 1, memory_order_relaxed);
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  http_stat_inc(&s->stats.connections_accepted);
  uv_tcp_nodelay(&c->tcp, 1);
  peer_name(c);
  timer_arm(c, TK_HEADER, s->opts.header_timeout_ms);
  read_resume(c);
}

void http_conn_close_idle(http_conn_t *c) {
  if ((c->state == CS_HEAD && !c->scan.started) || c->state == CS_LINGER)
    conn_close(c);
}

/* ------------------------------------------------------- handler API */

void http_conn_set_abort(http_conn_t *conn, http_abort_cb cb, void *ud) {
  CHECK_CONN(conn);
  assert(conn->handler_owns);
  conn->on_abort = cb;
  conn->abort_ud = ud;
}

bool http_conn_will_close(const http_conn_t *conn) {
  CHECK_CONN(conn);
  return conn_will_close(conn);
}

uv_loop_t *http_conn_loop(const http_conn_t *conn) {
  CHECK_CONN(conn);
  return conn->srv->loop;
}

/* Ends the handler's ownership. False if there is no one to answer: the
 * conn may then already be freed. */
static bool finish_request(http_conn_t *c) {
  CHECK_CONN(c);
  assert(c->handler_owns && "request finished twice");
  c->handler_owns = false;
  if (c->aborted || c->state != CS_PENDING) {
    conn_maybe_free(c);
    return false;
  }
  return true;
}

int http_conn_send(http_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs,
                   bool close_after, http_written_cb written, void *ud) {
  if (!finish_request(conn))
    return UV_ECANCELED;
  if (nbufs == 0) { /* uv_write would assert */
    conn_close(conn);
    return UV_EINVAL;
  }
  return conn_write(conn, bufs, nbufs, NULL, close_after, written, ud);
}

int http_conn_send_simple(http_conn_t *conn, int status,
                          const char *content_type, const char *extra_headers,
                          const void *body, size_t len, bool close_after) {
  assert(status >= 100 && status <= 999);
  if (!finish_request(conn))
    return UV_ECANCELED;
  bool close = close_after || conn_will_close(conn);
  size_t n;
  char *resp = build_response(conn, status, content_type, extra_headers, body,
                              len, close, &n);
  if (!resp) {
    conn_close(conn);
    return UV_ENOMEM;
  }
  uv_buf_t b = uv_buf_init(resp, (unsigned)n);
  return conn_write(conn, &b, 1, resp, close, NULL, NULL);
}

int http_conn_send_error(http_conn_t *conn, int status, const char *code,
                         const char *message) {
  char body[1024];
  size_t n = error_body(body, sizeof body, code, message);
  bool close = status == 400 || status == 408 || status == 413 ||
               status == 414 || status == 431;
  return http_conn_send_simple(conn, status, "application/json", NULL, body, n,
                               close);
}

void http_conn_release(http_conn_t *conn) {
  if (finish_request(conn))
    conn_close(conn); /* given up without an answer */
}

/* ------------------------------------------------------------ utilities */

/* Writes `v` as exactly `width` decimal digits. */
static char *put_digits(char *p, unsigned v, int width) {
  for (int i = width - 1; i >= 0; i--, v /= 10)
    p[i] = (char)('0' + v % 10);
  return p + width;
}

char *http_format_date(char buf[HTTP_DATE_LEN], time_t t) {
  static const char days[] = "SunMonTueWedThuFriSat";
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  struct tm tm;
  char *p = buf;
  if (!gmtime_r(&t, &tm) || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900) {
    buf[0] = '\0';
    return buf;
  }
  memcpy(p, days + 3 * tm.tm_wday, 3);
  memcpy(p + 3, ", ", 2);
  p = put_digits(p + 5, (unsigned)tm.tm_mday, 2);
  *p++ = ' ';
  memcpy(p, months + 3 * tm.tm_mon, 3);
  p[3] = ' ';
  p = put_digits(p + 4, (unsigned)(tm.tm_year + 1900), 4);
  *p++ = ' ';
  p = put_digits(p, (unsigned)tm.tm_hour, 2);
  *p++ = ':';
  p = put_digits(p, (unsigned)tm.tm_min, 2);
  *p++ = ':';
  p = put_digits(p, (unsigned)tm.tm_sec, 2);
  memcpy(p, " GMT", 5);
  return buf;
}

size_t http_json_quote(char *buf, size_t bufsize, const char *s) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  if (bufsize < 3) {
    if (bufsize)
      buf[0] = '\0';
    return 0;
  }
  buf[o++] = '"';
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    char esc[6];
    size_t n = 2;
    esc[0] = '\\';
    switch (ch) {
    case '"':
    case '\\':
      esc[1] = (char)ch;
      break;
    case '\n':
      esc[1] = 'n';
      break;
    case '\r':
      esc[1] = 'r';
      break;
    case '\t':
      esc[1] = 't';
      break;
    default:
      if (ch < 0x20 || ch == 0x7f) {
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[ch >> 4];
        esc[5] = hex[ch & 15];
        n = 6;
      } else {
        esc[0] = (char)ch;
        n = 1;
      }
    }
    if (o + n + 2 > bufsize) /* keep room for the quote and the NUL */
      break;
    memcpy(buf + o, esc, n);
    o += n;
  }
  buf[o++] = '"';
  buf[o] = '\0';
  return o;
}
