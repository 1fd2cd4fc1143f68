/*
 * http_request.c — turns bytes off a connection into an http_request_t: a
 * raw pre-scan of the head, the http-parser callbacks that assemble the
 * request in the conn's arena, and the checks that make the result safe to
 * proxy (no framing ambiguity, nothing the upstream could read differently).
 * Loop thread only; the connection I/O around it is http_server.c.
 *
 * Why a pre-scan: Debian's libhttp-parser 2.9 is built non-strict — it
 * accepts "HTTX/1.1", spaces inside field names and tabs in the target —
 * and it joins obs-fold lines into the previous value. The scan sees every
 * head byte before the parser does and rejects NUL, bare CR, obs-fold and a
 * request line not ending in " HTTP/d.d", and it enforces the size limits
 * on raw bytes, so whitespace padding counts too. The head is fed to the
 * parser exactly up to its blank line; body bytes never pass the scan.
 *
 * Arena: target, field names, values, then copies of path and query, each
 * followed by a NUL, so every string handed out is also a C string. The
 * header pointer array is built once the head is complete, when the arena
 * stops moving; trailer fields of a chunked body are ignored.
 */
#include "http_server_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int reject(http_conn_t *c, int status, const char *msg) {
  c->fail_msg = msg;
  return status;
}

/* From a parser callback: remember why, and stop the parser. */
static int fail(http_conn_t *c, int status, const char *msg) {
  c->fail_status = status;
  c->fail_msg = msg;
  return -1;
}

#define FAIL_NOMEM(c) fail((c), -1, "out of memory")

/* ------------------------------------------------------------- pre-scan */

static void tail_push(head_scan_t *s, char ch) {
  if (s->tail_len < sizeof s->tail) {
    s->tail[s->tail_len++] = ch;
    return;
  }
  memmove(s->tail, s->tail + 1, sizeof s->tail - 1);
  s->tail[sizeof s->tail - 1] = ch;
}

static bool is_digit(char ch) {
  return ch >= '0' && ch <= '9';
}

/* The request line must end in exactly " HTTP/d.d". */
static bool request_line_tail_ok(const head_scan_t *s) {
  const char *t = s->tail;
  return s->tail_len == sizeof s->tail && memcmp(t, " HTTP/", 6) == 0 &&
         is_digit(t[6]) && t[7] == '.' && is_digit(t[8]);
}

int http_req_scan(http_conn_t *c, const char *data, size_t len, size_t *feed,
                  bool *head_end) {
  head_scan_t *s = &c->scan;
  const http_server_opts_t *o = &c->srv->opts;

  *head_end = false;
  for (size_t i = 0; i < len; i++) {
    char ch = data[i];
    if (!s->started && ch != '\r' && ch != '\n') { /* not a stray CRLF */
      s->started = true;
      http_conn_on_head_start(c);
    }
    if (s->prev_cr && ch != '\n')
      return reject(c, 400, "bare CR in the request head");
    if (s->lines > 0 && ++s->hdr_bytes > o->max_header_bytes)
      return reject(c, 431, "request header section too large");
    switch (ch) {
    case '\0':
      return reject(c, 400, "NUL byte in the request head");
    case '\r':
      s->prev_cr = true;
      continue;
    case '\n':
      s->prev_cr = false;
      if (s->line_len == 0) {
        if (s->lines == 0) {
          /* RFC 9112 §2.2: ignore a few empty lines before a request */
          if (++s->blank > 4)
            return reject(c, 400, "empty lines instead of a request");
          continue;
        }
        *feed = i + 1;
        *head_end = true;
        return 0;
      }
      if (s->lines == 0 && !request_line_tail_ok(s))
        return reject(c, 400, "malformed request line");
      if (++s->lines - 1 > o->max_headers)
        return reject(c, 431, "too many header fields");
      s->line_len = 0;
      continue;
    default: {
      if (s->line_len == 0 && s->lines > 0 && (ch == ' ' || ch == '\t'))
        return reject(c, 400, "obs-fold or whitespace before a field");
      /* The rest of an ordinary run at once (this loop sees every head
       * byte of every request): only NUL, CR and LF need the switch. */
      size_t j = i + 1;
      while (j < len && data[j] != '\r' && data[j] != '\n' && data[j] != '\0')
        j++;
      size_t run = j - i;
      if (s->lines > 0 && (s->hdr_bytes += run - 1) > o->max_header_bytes)
        return reject(c, 431, "request header section too large");
      s->line_len += run;
      if (s->lines == 0) {
        /* room for method, spaces and version around the target */
        if (s->line_len > o->max_uri_bytes + 32)
          return reject(c, 414, "request line too long");
        if (run >= sizeof s->tail) {
          memcpy(s->tail, data + j - sizeof s->tail, sizeof s->tail);
          s->tail_len = sizeof s->tail;
        } else {
          for (size_t k = i; k < j; k++)
            tail_push(s, data[k]);
        }
      }
      i = j - 1;
    }
    }
  }
  *feed = len;
  return 0;
}

/* ---------------------------------------------------------------- arena */

/* Room for n more bytes and a NUL. Moves the arena. */
static bool arena_reserve(http_conn_t *c, size_t n) {
  if (c->head_len + n + 1 <= c->head_cap)
    return true;
  size_t cap = c->head_cap ? c->head_cap : 1024;
  while (cap < c->head_len + n + 1)
    cap *= 2;
  char *p = realloc(c->head, cap);
  if (!p)
    return false;
  c->head = p;
  c->head_cap = cap;
  return true;
}

/* `at` must not point into the arena (see split_target). */
static bool arena_append(http_conn_t *c, const char *at, size_t n) {
  if (!arena_reserve(c, n))
    return false;
  memcpy(c->head + c->head_len, at, n);
  c->head_len += n;
  return true;
}

/* NUL-terminates the piece the last callback was filling; values lose
 * trailing whitespace first (the parser already dropped the leading). */
static int end_piece(http_conn_t *c) {
  if (c->last_cb == CB_NONE)
    return 0;
  if (c->last_cb == CB_VALUE) {
    hdr_ofs_t *h = &c->hofs[c->nhdr - 1];
    while (h->value_len > 0) {
      char last = c->head[h->value_off + h->value_len - 1];
      if (last != ' ' && last != '\t')
        break;
      h->value_len--;
      c->head_len--; /* the value is the arena's last piece */
    }
  }
  return arena_append(c, "", 1) ? 0 : FAIL_NOMEM(c);
}

/* ------------------------------------------------------ parser callbacks */

static int on_url(http_parser *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (c->url_len + n > c->srv->opts.max_uri_bytes)
    return fail(c, 414, "request-target too long");
  if (c->last_cb != CB_URL) {
    c->url_off = c->head_len;
    c->last_cb = CB_URL;
  }
  if (!arena_append(c, at, n))
    return FAIL_NOMEM(c);
  c->url_len += n;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (c->headers_done)
    return 0; /* a trailer field: not part of the request we hand out */
  if (c->last_cb != CB_FIELD) {
    if (end_piece(c))
      return -1;
    if (c->nhdr >= c->srv->opts.max_headers)
      return fail(c, 431, "too many header fields");
    if (c->nhdr == c->hofs_cap) {
      size_t cap = c->hofs_cap ? c->hofs_cap * 2 : 16;
      hdr_ofs_t *h = realloc(c->hofs, cap * sizeof *h);
      if (!h)
        return FAIL_NOMEM(c);
      c->hofs = h;
      c->hofs_cap = cap;
    }
    c->hofs[c->nhdr++] = (hdr_ofs_t){.name_off = c->head_len};
    c->last_cb = CB_FIELD;
  }
  if (!arena_append(c, at, n))
    return FAIL_NOMEM(c);
  c->hofs[c->nhdr - 1].name_len += n;
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (c->headers_done)
    return 0;
  if (c->last_cb != CB_VALUE) {
    if (end_piece(c))
      return -1;
    c->hofs[c->nhdr - 1].value_off = c->head_len;
    c->last_cb = CB_VALUE;
  }
  if (!arena_append(c, at, n))
    return FAIL_NOMEM(c);
  c->hofs[c->nhdr - 1].value_len += n;
  return 0;
}

/* tchar of RFC 9110 §5.6.2 */
static bool is_tchar(unsigned char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
      (ch >= '0' && ch <= '9'))
    return true;
  return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool valid_name(const char *s, size_t n) {
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!is_tchar((unsigned char)s[i]))
      return false;
  return true;
}

/* field-value: VCHAR, obs-text, SP and HTAB; no other control byte */
static bool valid_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return false;
  }
  return true;
}

static bool valid_target(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= 0x20 || ch == 0x7f)
      return false;
  }
  return n > 0;
}

static bool value_is(const http_header_t *h, const char *want) {
  return strcasecmp(h->value, want) == 0;
}

/* Splits the target into path and query (copied to the arena). */
static int split_target(http_conn_t *c, size_t *path_off, size_t *path_len,
                        size_t *query_off, size_t *query_len) {
  const char *t = c->head + c->url_off;
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (!valid_target(t, c->url_len) ||
      http_parser_parse_url(t, c->url_len, 0, &u) != 0)
    return reject(c, 400, "invalid request-target");
  bool absolute = (u.field_set & (1u << UF_SCHEMA)) != 0;
  bool asterisk = c->url_len == 1 && t[0] == '*';
  if (!absolute && t[0] != '/' &&
      !(asterisk && c->parser.method == HTTP_OPTIONS))
    return reject(c, 400, "invalid request-target");
  c->req.absolute_form = absolute;

  size_t po = 0, pl = 0, qo = 0, ql = 0;
  if (u.field_set & (1u << UF_PATH)) {
    po = u.field_data[UF_PATH].off;
    pl = u.field_data[UF_PATH].len;
  }
  if (u.field_set & (1u << UF_QUERY)) {
    qo = u.field_data[UF_QUERY].off;
    ql = u.field_data[UF_QUERY].len;
  }
  /* reserve first: the copies come from the arena itself */
  if (!arena_reserve(c, pl + ql + 3))
    return -1;
  char *a = c->head;
  t = a + c->url_off;
  *path_off = c->head_len;
  *path_len = pl > 0 ? pl : 1;
  memcpy(a + c->head_len, pl > 0 ? t + po : "/", *path_len);
  c->head_len += *path_len;
  a[c->head_len++] = '\0';
  *query_off = c->head_len;
  *query_len = ql;
  memcpy(a + c->head_len, t + qo, ql);
  c->head_len += ql;
  a[c->head_len++] = '\0';
  return 0;
}

/* Framing rules of RFC 9112 §6.3 that keep us and any other reader of
 * the same bytes in agreement on where this request ends. */
static int check_framing(http_conn_t *c) {
  const http_parser *p = &c->parser;
  const http_server_opts_t *o = &c->srv->opts;
  size_t n_host = 0, n_cl = 0, n_te = 0;
  const http_header_t *te = NULL, *expect = NULL;

  for (size_t i = 0; i < c->nhdr; i++) {
    const http_header_t *h = &c->hdrs[i];
    if (!valid_name(h->name, h->name_len))
      return reject(c, 400, "invalid header field name");
    if (!valid_value(h->value, h->value_len))
      return reject(c, 400, "invalid header field value");
    if (strcasecmp(h->name, "host") == 0) {
      n_host++;
    } else if (strcasecmp(h->name, "content-length") == 0) {
      n_cl++;
    } else if (strcasecmp(h->name, "transfer-encoding") == 0) {
      n_te++;
      te = h;
    } else if (strcasecmp(h->name, "expect") == 0) {
      expect = h;
    }
  }
  if (p->http_minor >= 1 ? n_host != 1 : n_host > 1)
    return reject(c, 400, "exactly one Host header field is required");
  if (n_cl > 1)
    return reject(c, 400, "several Content-Length fields");
  if (n_te > 0 && n_cl > 0)
    return reject(c, 400, "both Transfer-Encoding and Content-Length");
  if (n_te > 0 && p->http_minor == 0)
    return reject(c, 400, "Transfer-Encoding in an HTTP/1.0 request");
  if (n_te > 1 || (te && !value_is(te, "chunked")))
    return reject(c, 400, "unsupported Transfer-Encoding");

  bool chunked = (p->flags & F_CHUNKED) != 0;
  uint64_t cl = n_cl > 0 ? p->content_length : 0;
  if (cl > o->max_body_bytes)
    return reject(c, 413, "request body too large");
  if (expect && value_is(expect, "100-continue") && p->http_minor >= 1)
    c->expect_continue = chunked || cl > 0;
  if (cl > 0) { /* exact size known: one allocation */
    c->body = malloc((size_t)cl + 1);
    if (!c->body)
      return -1;
    c->body_cap = (size_t)cl + 1;
  }
  return 0;
}

static int finish_head(http_conn_t *c) {
  const http_parser *p = &c->parser;
  http_request_t *r = &c->req;
  size_t path_off, path_len, query_off, query_len;

  if (p->http_major != 1)
    return reject(c, 505, "only HTTP/1.x is supported");
  if (p->method == HTTP_CONNECT)
    return reject(c, 405, "CONNECT is not supported");
  int st = split_target(c, &path_off, &path_len, &query_off, &query_len);
  if (st)
    return st;

  /* the arena is final from here on: pointers into it are stable */
  if (c->nhdr > c->hdrs_cap) { /* kept across requests: grown, never shrunk */
    http_header_t *h = realloc(c->hdrs, c->nhdr * sizeof *h);
    if (!h)
      return -1;
    c->hdrs = h;
    c->hdrs_cap = c->nhdr;
  }
  for (size_t i = 0; i < c->nhdr; i++) {
    const hdr_ofs_t *o = &c->hofs[i];
    c->hdrs[i] = (http_header_t){c->head + o->name_off, o->name_len,
                                 c->head + o->value_off, o->value_len};
  }
  r->method = (enum http_method)p->method;
  r->method_name = http_method_str((enum http_method)p->method);
  r->target = c->head + c->url_off;
  r->target_len = c->url_len;
  r->path = c->head + path_off;
  r->path_len = path_len;
  r->query = c->head + query_off;
  r->query_len = query_len;
  r->http_major = p->http_major;
  r->http_minor = p->http_minor;
  r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  r->headers = c->hdrs;
  r->nheaders = c->nhdr;
  r->body = "";
  r->body_len = 0;
  r->peer_addr = c->peer_addr;
  r->peer_port = c->peer_port;
  return check_framing(c);
}

static int on_headers_complete(http_parser *p) {
  http_conn_t *c = p->data;
  if (end_piece(c))
    return -1;
  c->headers_done = true;
  int st = finish_head(c);
  if (st)
    return fail(c, st, st < 0 ? "out of memory" : c->fail_msg);
  http_conn_on_head_done(c);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  size_t max = c->srv->opts.max_body_bytes;
  if (n > max - c->body_len)
    return fail(c, 413, "request body too large");
  if (c->body_len + n + 1 > c->body_cap) { /* chunked: grow, bounded */
    size_t cap = c->body_cap ? c->body_cap : 4096;
    while (cap < c->body_len + n + 1)
      cap *= 2;
    if (cap > max + 1)
      cap = max + 1;
    char *b = realloc(c->body, cap);
    if (!b)
      return FAIL_NOMEM(c);
    c->body = b;
    c->body_cap = cap;
  }
  memcpy(c->body + c->body_len, at, n);
  c->body_len += n;
  return 0;
}

static int on_message_complete(http_parser *p) {
  http_conn_t *c = p->data;
  if (c->body) {
    c->body[c->body_len] = '\0';
    c->req.body = c->body;
    c->req.body_len = c->body_len;
  }
  c->msg_complete = true;
  http_parser_pause(p, 1); /* one request at a time: stop right here */
  return 0;
}

const http_parser_settings http_req_settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ------------------------------------------------------------ lifecycle */

void http_req_reset(http_conn_t *c) {
  void *self = c->parser.data;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = self;
  memset(&c->scan, 0, sizeof c->scan);
  c->fail_status = 0;
  c->fail_msg = NULL;
  c->headers_done = c->msg_complete = c->expect_continue = false;
  c->last_cb = CB_NONE;
  c->head_len = c->url_off = c->url_len = c->nhdr = 0;
  if (c->head_cap > 8192) { /* a big head was allowed, not kept */
    free(c->head);
    c->head = NULL;
    c->head_cap = 0;
  }
  free(c->body);
  c->body = NULL;
  c->body_len = c->body_cap = c->body_raw = 0;
  memset(&c->req, 0, sizeof c->req);
  c->on_abort = NULL;
  c->abort_ud = NULL;
}

void http_req_free(http_conn_t *c) {
  free(c->head);
  free(c->hofs);
  free(c->hdrs);
  free(c->body);
  c->head = c->body = NULL;
  c->hofs = NULL;
  c->hdrs = NULL;
  c->hdrs_cap = 0;
}

const char *http_request_header(const http_request_t *req, const char *name,
                                size_t *len) {
  for (size_t i = 0; i < req->nheaders; i++) {
    const http_header_t *h = &req->headers[i];
    if (strcasecmp(h->name, name) == 0) {
      if (len)
        *len = h->value_len;
      return h->value;
    }
  }
  return NULL;
}
