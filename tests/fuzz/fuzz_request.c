/*
 * fuzz_request.c — libFuzzer driver for daemon/http_request.c: the raw
 * head pre-scan (http_req_scan), the http-parser callbacks and the
 * hygiene checks that decide whether client bytes become a request.
 *
 * There is no socket here: the driver plays the part of http_conn.c's
 * conn_process (scan the head, feed the parser exactly up to the head's
 * end, then the body, dispatch on message complete, reset and go on with
 * pipelined bytes, stop at the first rejection or after a request that
 * does not keep the connection alive). http_conn.c's two hooks are stubbed
 * below. Keep this loop in step with conn_process.
 *
 * Input: byte 0 seeds the read sizes of the second pass; byte 1 bit 0
 * picks tight limits (so every 413/414/431 path is reachable with small
 * inputs) or the daemon's defaults; the rest is what a client sent.
 *
 * Each input is parsed twice: all bytes available at once, and in reads of
 * pseudo-random sizes (1 byte upwards). Properties:
 *  - a rejection is one of 400, 405, 413, 414, 431, 505, with a reason;
 *  - a request handed out has: an origin-form path starting with '/' (and
 *    an absolute-form target only flagged, reduced to its path); a target
 *    with no control byte, space or DEL; no NUL inside any string it
 *    returns (lengths agree with strlen); header names that are RFC 9110
 *    tokens; values with no control byte but HTAB and no surrounding
 *    whitespace; exactly one Host in HTTP/1.1, at most one otherwise; at
 *    most one Content-Length, all digits and equal to the body length;
 *    never both Content-Length and Transfer-Encoding; Transfer-Encoding
 *    only "chunked"; no body without either; sizes within the limits;
 *    HTTP/1.x; never CONNECT;
 *  - the raw head bytes of every request handed out contain no NUL, no
 *    bare CR, no obs-fold line, and its request line ends in " HTTP/d.d"
 *    (checked on the raw bytes, independently of the code under test);
 *  - how the bytes are split into reads changes nothing: both passes hand
 *    out the same requests (byte for byte) and both end rejected or not.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_server_int.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_request: property failed: %s (line %d)\n", #cond,  \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define FUZZ_MAX_INPUT ((size_t)64 * 1024)

/* ---- stubs for http_conn.c's side of the contract ----------------------- */

void http_conn_on_head_start(http_conn_t *c) {
  (void)c;
}

void http_conn_on_head_done(http_conn_t *c) {
  c->state = CS_BODY;
}

/* ---- a growing record of what a pass handed out ------------------------- */

typedef struct record {
  char *p;
  size_t len, cap;
} record_t;

static void rec_put(record_t *r, const void *s, size_t n) {
  if (r->len + n + 1 > r->cap) {
    size_t cap = r->cap ? r->cap : 4096;
    while (cap < r->len + n + 1)
      cap *= 2;
    r->p = realloc(r->p, cap);
    CHECK(r->p != NULL);
    r->cap = cap;
  }
  memcpy(r->p + r->len, s, n);
  r->len += n;
}

/* Length-prefixed, so fields can never run together. */
static void rec_field(record_t *r, const char *s, size_t n) {
  char len[24];
  int k = snprintf(len, sizeof len, "%zu:", n);
  rec_put(r, len, (size_t)k);
  rec_put(r, s, n);
}

/* ---- independent checks on the raw bytes -------------------------------- */

static bool is_tchar(unsigned char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
      (ch >= '0' && ch <= '9'))
    return true;
  return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* The head of the request whose bytes start at raw[0]: leading empty
 * lines, the request line, fields, an empty line. */
static void check_raw_head(const char *raw, size_t n) {
  size_t i = 0, line = 0;
  bool request_line_seen = false;
  while (i < n) {
    size_t start = i;
    while (i < n && raw[i] != '\n') {
      CHECK(raw[i] != '\0');
      if (raw[i] == '\r')
        CHECK(i + 1 < n && raw[i + 1] == '\n'); /* no bare CR */
      i++;
    }
    CHECK(i < n); /* the head ends with a line feed */
    size_t end = i > start && raw[i - 1] == '\r' ? i - 1 : i;
    i++;
    if (end == start) {
      if (request_line_seen)
        return; /* the blank line ending the head */
      continue;
    }
    if (!request_line_seen) {
      request_line_seen = true;
      CHECK(end - start >= 9);
      const char *t = raw + end - 9;
      CHECK(memcmp(t, " HTTP/", 6) == 0 && t[6] >= '0' && t[6] <= '9' &&
            t[7] == '.' && t[8] >= '0' && t[8] <= '9');
    } else {
      CHECK(raw[start] != ' ' && raw[start] != '\t'); /* no obs-fold */
    }
    line++;
  }
  CHECK(!"head without its blank line");
}

static bool all_digits(const char *s, size_t n) {
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9')
      return false;
  return true;
}

static void check_request(const http_request_t *r,
                          const http_server_opts_t *o) {
  CHECK(r->http_major == 1);
  CHECK(r->method != HTTP_CONNECT);
  CHECK(r->method_name != NULL);

  CHECK(r->target != NULL && strlen(r->target) == r->target_len);
  CHECK(r->target_len > 0 && r->target_len <= o->max_uri_bytes);
  for (size_t i = 0; i < r->target_len; i++) {
    unsigned char ch = (unsigned char)r->target[i];
    CHECK(ch > 0x20 && ch != 0x7f);
  }
  CHECK(strlen(r->path) == r->path_len && r->path_len > 0);
  CHECK(strlen(r->query) == r->query_len);
  bool asterisk = r->target_len == 1 && r->target[0] == '*';
  if (r->absolute_form) {
    CHECK(strstr(r->target, "://") != NULL);
    CHECK(r->path[0] == '/');
  } else if (asterisk) {
    CHECK(r->method == HTTP_OPTIONS);
  } else {
    CHECK(r->target[0] == '/' && r->path[0] == '/');
    /* origin-form: the path is the target's prefix */
    CHECK(strncmp(r->target, r->path, r->path_len) == 0);
  }

  CHECK(r->nheaders <= o->max_headers);
  size_t n_host = 0, n_cl = 0, n_te = 0;
  const http_header_t *cl = NULL, *te = NULL;
  for (size_t i = 0; i < r->nheaders; i++) {
    const http_header_t *h = &r->headers[i];
    CHECK(h->name_len > 0 && strlen(h->name) == h->name_len);
    for (size_t k = 0; k < h->name_len; k++)
      CHECK(is_tchar((unsigned char)h->name[k]));
    CHECK(strlen(h->value) == h->value_len);
    for (size_t k = 0; k < h->value_len; k++) {
      unsigned char ch = (unsigned char)h->value[k];
      CHECK((ch >= 0x20 || ch == '\t') && ch != 0x7f);
    }
    if (h->value_len > 0) {
      CHECK(h->value[0] != ' ' && h->value[0] != '\t');
      char last = h->value[h->value_len - 1];
      CHECK(last != ' ' && last != '\t');
    }
    if (strcasecmp(h->name, "host") == 0)
      n_host++;
    else if (strcasecmp(h->name, "content-length") == 0)
      n_cl++, cl = h;
    else if (strcasecmp(h->name, "transfer-encoding") == 0)
      n_te++, te = h;
  }
  CHECK(r->http_minor >= 1 ? n_host == 1 : n_host <= 1);
  CHECK(n_cl <= 1 && n_te <= 1 && !(n_cl && n_te));
  CHECK(r->body != NULL && r->body_len <= o->max_body_bytes);
  CHECK(r->body[r->body_len] == '\0');
  if (cl) {
    CHECK(all_digits(cl->value, cl->value_len));
    CHECK(strtoull(cl->value, NULL, 10) == r->body_len);
  } else if (te) {
    CHECK(strcasecmp(te->value, "chunked") == 0);
    CHECK(r->http_minor >= 1);
  } else {
    CHECK(r->body_len == 0);
  }
}

/* ---- one pass: conn_process without the socket --------------------------- */

typedef struct pass {
  record_t rec;
  int rejected; /* status, 0 when the input ran out without one */
  size_t nrequests;
} pass_t;

static void record_request(pass_t *ps, const http_request_t *r) {
  record_t *rec = &ps->rec;
  rec_field(rec, r->method_name, strlen(r->method_name));
  rec_field(rec, r->target, r->target_len);
  rec_field(rec, r->path, r->path_len);
  rec_field(rec, r->query, r->query_len);
  char v[32];
  int k = snprintf(v, sizeof v, "%d%d%d%d", r->http_major, r->http_minor,
                   r->absolute_form, r->keep_alive);
  rec_field(rec, v, (size_t)k);
  for (size_t i = 0; i < r->nheaders; i++) {
    rec_field(rec, r->headers[i].name, r->headers[i].name_len);
    rec_field(rec, r->headers[i].value, r->headers[i].value_len);
  }
  rec_field(rec, r->body, r->body_len);
  ps->nrequests++;
}

static void rejected(pass_t *ps, int status, const char *msg) {
  CHECK(status == 400 || status == 405 || status == 413 || status == 414 ||
        status == 431 || status == 505);
  CHECK(msg != NULL && msg[0] != '\0');
  ps->rejected = status;
}

/* Same bound as http_conn.c's body_raw_limit. */
static size_t body_raw_limit(const http_server_opts_t *o) {
  return 2 * o->max_body_bytes + 64 * 1024;
}

static void run_pass(http_server_t *srv, const char *in, size_t n,
                     unsigned seed, pass_t *ps) {
  http_conn_t *c = calloc(1, sizeof *c);
  CHECK(c != NULL);
  c->srv = srv;
  c->state = CS_HEAD;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;

  size_t off = 0, avail = 0, req_start = 0;
  uint32_t rng = seed * 2654435761u + 1;
  bool done = false;
  while (!done && avail < n) {
    if (seed == 0) {
      avail = n; /* everything in one read */
    } else {
      rng = rng * 1103515245u + 12345u;
      size_t chunk = 1 + (rng >> 16) % (1u + (seed & 0x3f));
      avail = avail + chunk < n ? avail + chunk : n;
    }
    while (!done && (c->state == CS_HEAD || c->state == CS_BODY) &&
           off < avail) {
      const char *data = in + off;
      size_t len = avail - off, feed = len;
      bool head_end = false, in_body = c->state == CS_BODY;
      if (!in_body) {
        int st = http_req_scan(c, data, len, &feed, &head_end);
        if (st) {
          rejected(ps, st, c->fail_msg);
          done = true;
          break;
        }
        CHECK(feed <= len && (head_end || feed == len));
      }
      size_t parsed = http_parser_execute(&c->parser, &http_req_settings,
                                          data, feed);
      CHECK(parsed <= feed);
      off += parsed;
      enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
      if (c->fail_status) {
        CHECK(c->fail_status > 0); /* -1: out of memory, not expected */
        rejected(ps, c->fail_status, c->fail_msg);
        done = true;
      } else if (err != HPE_OK && err != HPE_PAUSED) {
        rejected(ps, err == HPE_HEADER_OVERFLOW ? 431 : 400,
                 http_errno_description(err));
        done = true;
      } else if (in_body &&
                 (c->body_raw += parsed) > body_raw_limit(&srv->opts)) {
        rejected(ps, 413, "chunked framing too large");
        done = true;
      } else if (c->msg_complete) {
        http_parser_pause(&c->parser, 0);
        check_request(&c->req, &srv->opts);
        check_raw_head(in + req_start, off - req_start);
        record_request(ps, &c->req);
        bool keep = c->req.keep_alive;
        http_req_reset(c); /* as http_conn.c does once the answer is out */
        c->state = CS_HEAD;
        req_start = off;
        if (!keep)
          done = true; /* the server closes after this answer */
      } else if (head_end && c->state == CS_HEAD) {
        rejected(ps, 400, "malformed request head");
        done = true;
      } else if (!in_body && !head_end) {
        CHECK(parsed == feed); /* the scan must not see bytes twice */
      }
    }
  }
  http_req_free(c);
  free(c);
}

/* ---- entry ---------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2 || size - 2 > FUZZ_MAX_INPUT)
    return 0;
  unsigned seed = data[0] | 1u; /* never 0: the second pass is split */
  bool tight = data[1] & 1;
  const char *in = (const char *)data + 2;
  size_t n = size - 2;

  http_server_t srv;
  memset(&srv, 0, sizeof srv);
  srv.magic = HTTP_SERVER_MAGIC;
  http_server_opts_t *o = &srv.opts;
  if (tight) {
    o->max_header_bytes = 200;
    o->max_headers = 4;
    o->max_uri_bytes = 48;
    o->max_body_bytes = 64;
  } else { /* coalesced's defaults (daemon/config.h) */
    o->max_header_bytes = 16 * 1024;
    o->max_headers = 100;
    o->max_uri_bytes = 8 * 1024;
    o->max_body_bytes = 1024 * 1024;
  }

  pass_t whole = {0}, split = {0};
  run_pass(&srv, in, n, 0, &whole);
  run_pass(&srv, in, n, seed, &split);

  if (getenv("FUZZ_REQUEST_VERBOSE")) /* to read what a seed does */
    fprintf(stderr, "fuzz_request: %zu request(s), then %d (split: %zu, %d)\n",
            whole.nrequests, whole.rejected, split.nrequests, split.rejected);
  CHECK(whole.nrequests == split.nrequests);
  CHECK(whole.rec.len == split.rec.len);
  CHECK(whole.rec.len == 0 || memcmp(whole.rec.p, split.rec.p, whole.rec.len) == 0);
  CHECK((whole.rejected != 0) == (split.rejected != 0));
  free(whole.rec.p);
  free(split.rec.p);
  return 0;
}
