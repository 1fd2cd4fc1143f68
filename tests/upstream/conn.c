/*
 * conn.c — one client connection of testupstream: reads and parses
 * HTTP/1.1 requests one at a time, waits out the asked delay on a timer,
 * then answers or misbehaves as the plan says (reset, close, hang,
 * truncate, garbage, drip, half headers, slow headers).
 *
 * Life cycle: READING -> (DELAYING) -> ANSWERING -> READING again for the
 * next keep-alive request, or HANGING / LINGERING (FIN sent, draining
 * until the client closes) -> CLOSING. A connection answers one request
 * at a time: pipelined bytes wait in `pending` and the parser stays paused
 * until the answer is written, so answers keep the order of requests.
 *
 * Ownership: the conn owns a tcp handle and a timer; it is freed when the
 * second of them has closed. Write callbacks can run after conn_close (as
 * cancelled) but never after the free, so they only look at the state.
 * The counted request, if any, is finished (in-flight minus one) exactly
 * once: when its answer is written or the connection goes, whichever is
 * first.
 */
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONN_MAGIC 0x55505354u
#define MAX_PENDING (1u << 20) /* pipelined bytes buffered while busy */
#define LINGER_MS 2000         /* how long a closing conn drains input */
#define DRIP_MAX_TICKS 50      /* bounds a drip to 50 * drip_ms */

enum conn_state {
  CS_READING,
  CS_DELAYING,
  CS_ANSWERING,
  CS_HANGING,
  CS_LINGERING,
  CS_CLOSING,
};

/* What a finished write leads to. */
enum after { AFTER_NOTHING, AFTER_DONE, AFTER_LINGER, AFTER_RESET };

struct conn {
  uint32_t magic;
  enum conn_state state;
  struct server *srv;
  struct conn *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer; /* delay, drip and linger, never two at once */
  uv_shutdown_t shut;
  int open_handles;
  http_parser parser;
  struct request req;
  struct sbuf pending;
  struct plan plan;
  size_t sent, drip_end, drip_step;
};

struct wreq {
  uv_write_t w;
  struct conn *c;
  enum after after;
};

static const char garbage[] = "\x16\x03\x01 this is not HTTP \x00\xff\xfe\r\n"
                              "HTTP/9.9 ??? nonsense\r\n\r\n";

static void conn_close(struct conn *c, bool reset);
static void conn_linger(struct conn *c);
static void process_pending(struct conn *c);

static struct conn *conn_of(void *data) {
  struct conn *c = data;
  if (!c || c->magic != CONN_MAGIC) {
    fputs("testupstream: bad conn magic\n", stderr);
    abort();
  }
  return c;
}

/* Ends the in-flight life of the counted request, once. */
static void finish_counted(struct conn *c) {
  if (c->plan.counted) {
    c->plan.counted = false;
    stats_done(&c->srv->stats);
  }
}

static void request_reset(struct request *r) {
  r->url.len = 0;
  r->hdrs.len = 0;
  r->nhdrs = 0;
  r->hstate = 0;
  r->have_body = false;
  r->body_len = 0;
  r->method = NULL;
  r->keep_alive = false;
  r->http10 = false;
}

/* -------------------------------------------------------------- close */

static void on_handle_closed(uv_handle_t *h) {
  struct conn *c = conn_of(h->data);
  if (--c->open_handles > 0)
    return;
  sb_free(&c->req.url);
  sb_free(&c->req.hdrs);
  sb_free(&c->pending);
  sb_free(&c->plan.out);
  c->magic = 0;
  free(c);
}

static void conn_close(struct conn *c, bool reset) {
  if (c->state == CS_CLOSING)
    return;
  finish_counted(c);
  c->state = CS_CLOSING;
  if (c->prev)
    c->prev->next = c->next;
  else
    c->srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  c->srv->stats.conns_open--;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  /* close_reset sets SO_LINGER 0 so the kernel sends RST, not FIN; it
   * refuses while a shutdown is pending, then a plain close must do. */
  if (reset && uv_tcp_close_reset(&c->tcp, on_handle_closed) == 0)
    return;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

void conn_close_all(struct server *srv) {
  while (srv->conns)
    conn_close(srv->conns, false);
}

static void on_linger_timeout(uv_timer_t *t) {
  conn_close(conn_of(t->data), false);
}

static void on_shutdown(uv_shutdown_t *s, int status) {
  struct conn *c = conn_of(s->data);
  if (status < 0 && c->state != CS_CLOSING)
    conn_close(c, false);
}

/* Sends FIN after the queued writes and drains input until the client
 * closes too: closing at once with unread input would send RST and could
 * destroy the answer in the client's receive buffer. */
static void conn_linger(struct conn *c) {
  if (c->state == CS_CLOSING || c->state == CS_LINGERING)
    return;
  finish_counted(c);
  c->state = CS_LINGERING;
  uv_timer_stop(&c->timer);
  uv_timer_start(&c->timer, on_linger_timeout, LINGER_MS, 0);
  c->shut.data = c;
  if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
    conn_close(c, false);
}

/* ------------------------------------------------------------- writes */

static void request_done(struct conn *c) {
  finish_counted(c);
  sb_free(&c->plan.out);
  if (c->plan.close || c->srv->stopping) {
    conn_linger(c);
    return;
  }
  request_reset(&c->req);
  http_parser_pause(&c->parser, 0);
  c->state = CS_READING;
  process_pending(c);
}

static void run_after(struct conn *c, enum after after) {
  switch (after) {
  case AFTER_NOTHING:
    break;
  case AFTER_DONE:
    request_done(c);
    break;
  case AFTER_LINGER:
    conn_linger(c);
    break;
  case AFTER_RESET:
    conn_close(c, true);
    break;
  }
}

static void on_written(uv_write_t *w, int status) {
  struct wreq *wr = (struct wreq *)w;
  struct conn *c = conn_of(wr->c);
  enum after after = wr->after;
  free(wr);
  if (c->state == CS_CLOSING)
    return;
  if (status < 0) {
    conn_close(c, false);
    return;
  }
  run_after(c, after);
}

/* Queues len bytes at data, which must stay valid until written (they
 * live in the plan or are static). */
static void conn_write(struct conn *c, const char *data, size_t len,
                       enum after after) {
  if (len == 0) {
    run_after(c, after);
    return;
  }
  struct wreq *wr = xmalloc(sizeof *wr);
  wr->c = c;
  wr->after = after;
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) {
    free(wr);
    conn_close(c, false);
  }
}

/* ------------------------------------------------------------ answers */

static void on_drip(uv_timer_t *t) {
  struct conn *c = conn_of(t->data);
  size_t n = c->drip_end - c->sent;
  if (n > c->drip_step) {
    conn_write(c, c->plan.out.data + c->sent, c->drip_step, AFTER_NOTHING);
    c->sent += c->drip_step;
    return;
  }
  /* Last dripped piece, with whatever follows it (the body after slow
   * headers) in one go. */
  uv_timer_stop(&c->timer);
  conn_write(c, c->plan.out.data + c->sent, c->plan.out.len - c->sent,
             AFTER_DONE);
}

static void drip_start(struct conn *c, size_t end) {
  c->state = CS_ANSWERING;
  c->sent = 0;
  c->drip_end = end;
  c->drip_step = (end + DRIP_MAX_TICKS - 1) / DRIP_MAX_TICKS;
  if (c->drip_step == 0)
    c->drip_step = 1;
  uv_timer_start(&c->timer, on_drip, 0, c->plan.drip_ms);
}

/* Carries out the plan once its delay has passed. */
static void act(struct conn *c) {
  struct plan *p = &c->plan;
  size_t body_len = p->out.len - p->head_len;
  c->state = CS_ANSWERING;
  switch (p->fail) {
  case FAIL_NONE:
    conn_write(c, p->out.data, p->out.len, AFTER_DONE);
    break;
  case FAIL_RESET:
    conn_close(c, true);
    break;
  case FAIL_CLOSE:
    conn_linger(c);
    break;
  case FAIL_HANG:
    c->state = CS_HANGING;
    break;
  case FAIL_TRUNCATE:
    conn_write(c, p->out.data, p->head_len + body_len / 2, AFTER_LINGER);
    break;
  case FAIL_GARBAGE:
    conn_write(c, garbage, sizeof garbage - 1, AFTER_LINGER);
    break;
  case FAIL_DRIP:
    drip_start(c, p->out.len);
    break;
  case FAIL_MIDHEADERS:
    conn_write(c, p->out.data, p->head_len / 2, AFTER_RESET);
    break;
  case FAIL_SLOWHEADERS:
    drip_start(c, p->head_len);
    break;
  }
}

static void on_delay(uv_timer_t *t) {
  act(conn_of(t->data));
}

static void dispatch(struct conn *c) {
  if (c->state == CS_CLOSING) /* a failed 100-continue write closed it */
    return;
  respond(c->srv, &c->req, &c->plan);
  if (c->plan.delay_ms && c->plan.fail != FAIL_HANG) {
    c->state = CS_DELAYING;
    uv_timer_start(&c->timer, on_delay, c->plan.delay_ms, 0);
  } else {
    act(c);
  }
}

static void bad_request(struct conn *c, enum http_errno e) {
  const char *name = http_errno_name(e);
  sb_free(&c->plan.out);
  memset(&c->plan, 0, sizeof c->plan);
  c->plan.close = true;
  struct sbuf body = {0};
  sb_printf(&body, "{\"error\":\"bad_request\",\"message\":\"%s\"}", name);
  sb_printf(&c->plan.out,
            "HTTP/1.1 400 Bad Request\r\nServer: testupstream\r\n"
            "Content-Type: application/json\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n%s",
            body.len, body.data);
  sb_free(&body);
  if (!c->srv->quiet)
    fprintf(stderr, "testupstream: unparsable request: %s\n", name);
  c->state = CS_ANSWERING;
  conn_write(c, c->plan.out.data, c->plan.out.len, AFTER_LINGER);
}

/* ------------------------------------------------------------ parsing */

static struct request *req_of(http_parser *p) {
  return &conn_of(p->data)->req;
}

static int on_message_begin(http_parser *p) {
  request_reset(req_of(p));
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  sb_putn(&req_of(p)->url, at, len);
  return 0;
}

/* A field or value may arrive in several pieces; a field callback after
 * a value one starts the next header. */
static int on_header_field(http_parser *p, const char *at, size_t len) {
  struct request *r = req_of(p);
  if (r->hstate == 2)
    sb_putc(&r->hdrs, '\0');
  if (r->hstate != 1)
    r->nhdrs++;
  r->hstate = 1;
  for (size_t i = 0; i < len; i++)
    sb_putc(&r->hdrs,
            (char)(at[i] >= 'A' && at[i] <= 'Z' ? at[i] + 32 : at[i]));
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  struct request *r = req_of(p);
  if (r->hstate == 1)
    sb_putc(&r->hdrs, '\0');
  r->hstate = 2;
  sb_putn(&r->hdrs, at, len);
  return 0;
}

static int on_headers_complete(http_parser *p) {
  struct conn *c = conn_of(p->data);
  struct request *r = &c->req;
  if (r->hstate == 1)
    sb_putc(&r->hdrs, '\0'); /* a name without value callback */
  if (r->hstate != 0)
    sb_putc(&r->hdrs, '\0');
  r->hstate = 0;
  r->have_body =
      req_header(r, "content-length") || req_header(r, "transfer-encoding");
  const char *expect = req_header(r, "expect");
  if (expect && strcasecmp(expect, "100-continue") == 0) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write(c, cont, sizeof cont - 1, AFTER_NOTHING);
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  (void)at;
  req_of(p)->body_len += len;
  return 0;
}

static int on_message_complete(http_parser *p) {
  struct request *r = req_of(p);
  r->method = http_method_str((enum http_method)p->method);
  r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  r->http10 = p->http_major == 1 && p->http_minor == 0;
  /* Stop after this request: the next one waits for our answer. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses data; returns how many bytes were used. A complete request is
 * dispatched before returning. */
static size_t feed(struct conn *c, const char *data, size_t len) {
  size_t used = http_parser_execute(&c->parser, &parser_settings, data, len);
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (e == HPE_PAUSED) {
    dispatch(c);
    return used;
  }
  if (e != HPE_OK) {
    bad_request(c, e);
    return len;
  }
  if (used != len) /* an upgrade: not something this server speaks */
    conn_close(c, false);
  return len;
}

static void process_pending(struct conn *c) {
  while (c->state == CS_READING && c->pending.len) {
    size_t used = feed(c, c->pending.data, c->pending.len);
    sb_consume(&c->pending, used);
    if (used == 0)
      break;
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  struct conn *c = conn_of(h->data);
  *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = conn_of(s->data);
  if (nread < 0) {
    /* The client went (or half-closed, which HTTP clients do not do
     * while waiting for an answer): nothing more to answer. */
    conn_close(c, false);
    return;
  }
  size_t n = (size_t)nread;
  if (n == 0)
    return;
  switch (c->state) {
  case CS_READING:
    if (c->pending.len == 0) {
      size_t used = feed(c, buf->base, n);
      if (used < n && c->state != CS_CLOSING && c->state != CS_LINGERING)
        sb_putn(&c->pending, buf->base + used, n - used);
    } else {
      sb_putn(&c->pending, buf->base, n);
      process_pending(c);
    }
    break;
  case CS_DELAYING:
  case CS_ANSWERING:
    if (c->pending.len + n > MAX_PENDING) {
      conn_close(c, false);
      return;
    }
    sb_putn(&c->pending, buf->base, n);
    break;
  case CS_HANGING:
  case CS_LINGERING:
  case CS_CLOSING:
    break; /* drained and dropped */
  }
}

void conn_accept(struct server *srv) {
  struct conn *c = calloc(1, sizeof *c);
  if (!c)
    abort();
  c->magic = CONN_MAGIC;
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  c->next = srv->conns;
  if (c->next)
    c->next->prev = c;
  srv->conns = c;
  srv->stats.conns_open++;
  if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c, false);
    return;
  }
  srv->stats.conns_accepted++;
  uv_tcp_nodelay(&c->tcp, 1);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
    conn_close(c, false);
}
