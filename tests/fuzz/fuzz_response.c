/*
 * fuzz_response.c — libFuzzer driver for daemon/response.c (response_new,
 * response_refresh, response_header, response_next_field, response_tail).
 *
 * Input layout: 2 bytes of status, then '\n'-separated header lines up to
 * an empty line (the upstream's fields), then lines up to a second empty
 * line (a 304's fields, for response_refresh), then the body. A line is
 * split as daemon/upstream.c splits curl's lines: name before the first
 * ':', value after it, optional whitespace trimmed; lines without ':' are
 * skipped.
 *
 * Contract decided here: response_new is fed by upstream.c from libcurl's
 * header lines, which end at LF and have their CR/LF stripped, so a name or
 * value never holds CR, LF or NUL, and a name never holds ':'. response_new
 * drops such fields all the same (its stored lines are scanned, so a ':'
 * in a name would read back differently); the driver drops them before
 * building its expectations, and the check that nothing else is dropped
 * holds response_new to dropping no more.
 *
 * Properties: a status outside 100..999 is refused; otherwise the answer
 * head (status line + stored field lines + the tail's Content-Length line)
 * is "HTTP/1.1 <status> <reason>\r\n" then "name: value\r\n" lines, no
 * bare CR or LF anywhere; the status line is the static one for a status
 * http_status.h knows (and nothing is stored for it), else the response's
 * own "HTTP/1.1 <status> Unknown\r\n"; its fields are the input fields in
 * order minus the hop-by-hop ones (fixed list, and every name listed by
 * ANY Connection field line — RFC 9110 §7.6.1 lists combine) and minus
 * Content-Length/Age/X-Cache; the tail has exactly one Content-Length equal
 * to the body length unless 1xx/204/304; the iterator gives the same
 * fields as views of the stored lines (name, ": ", value, CRLF) and
 * response_field_count counts them; the body is copied, follows the lines
 * and is NUL-terminated; the value holds all of it, exactly sized. After a
 * refresh: same status and body, the 304's fields win, the other stored
 * fields stay.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_status.h"
#include "response.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_response: property failed: %s (line %d)\n", #cond, \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define MAX_FIELDS 64 /* per input block */
#define RECEIVED ((time_t)1700000000)

typedef struct fields {
  hdr_t h[2 * MAX_FIELDS]; /* room for a refresh's merged list */
  size_t n;
} fields_t;

static bool is_ows(char c) {
  return c == ' ' || c == '\t';
}

static bool name_eq(const char *a, size_t alen, const char *b) {
  return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

/* Adds one line as upstream.c would; drops lines libcurl cannot produce. */
static void add_line(fields_t *f, const char *p, size_t n) {
  if (n > 0 && p[n - 1] == '\r')
    n--; /* a CRLF line ending */
  if (memchr(p, '\r', n) != NULL || memchr(p, '\0', n) != NULL)
    return;
  const char *colon = memchr(p, ':', n);
  if (colon == NULL || f->n == MAX_FIELDS || (n > 0 && is_ows(p[0])))
    return;
  size_t nlen = (size_t)(colon - p);
  while (nlen > 0 && is_ows(p[nlen - 1]))
    nlen--;
  size_t b = (size_t)(colon - p) + 1;
  while (b < n && is_ows(p[b]))
    b++;
  while (n > b && is_ows(p[n - 1]))
    n--;
  f->h[f->n++] = (hdr_t){p, nlen, p + b, n - b};
}

/* Reads lines from *pos up to an empty line (consumed) or the end. */
static void read_block(const char *p, size_t size, size_t *pos, fields_t *f) {
  f->n = 0;
  while (*pos < size) {
    const char *nl = memchr(p + *pos, '\n', size - *pos);
    size_t end = nl ? (size_t)(nl - p) : size;
    size_t len = end - *pos;
    const char *line = p + *pos;
    *pos = nl ? end + 1 : size;
    if (len == 0 || (len == 1 && line[0] == '\r'))
      return;
    add_line(f, line, len);
  }
}

/* Is `name` one of the comma/space-separated tokens of some Connection
 * field line in f? */
static bool listed_by_connection(const fields_t *f, const char *name,
                                 size_t len) {
  for (size_t k = 0; k < f->n; k++) {
    if (!name_eq(f->h[k].name, f->h[k].name_len, "connection"))
      continue;
    const char *l = f->h[k].value;
    size_t ll = f->h[k].value_len, i = 0;
    while (i < ll) {
      while (i < ll && (l[i] == ' ' || l[i] == '\t' || l[i] == ','))
        i++;
      size_t j = i;
      while (j < ll && l[j] != ',' && l[j] != ' ' && l[j] != '\t')
        j++;
      if (j - i == len && strncasecmp(l + i, name, len) == 0)
        return true;
      i = j;
    }
  }
  return false;
}

static bool must_drop(const fields_t *f, const char *name, size_t len) {
  static const char *const never[] = {"connection",
                                      "keep-alive",
                                      "proxy-connection",
                                      "proxy-authenticate",
                                      "proxy-authorization",
                                      "te",
                                      "trailer",
                                      "transfer-encoding",
                                      "upgrade",
                                      "content-length",
                                      "age",
                                      "x-cache"};
  if (len == 0) /* an empty field name is never stored or forwarded */
    return true;
  for (size_t i = 0; i < sizeof never / sizeof *never; i++)
    if (name_eq(name, len, never[i]))
      return true;
  return listed_by_connection(f, name, len);
}

static bool has_body_length(int status) {
  return !(status < 200 || status == 204 || status == 304);
}

/* The answer head is exactly the status line, `want`'s kept fields in
 * order and the tail's Content-Length line; the iterator agrees. */
static void check_response(const response_t *r, int status,
                           const fields_t *want, const void *body,
                           size_t body_len) {
  CHECK(r->status == status);
  CHECK(response_body_len(r) == body_len);
  CHECK(body_len == 0 || memcmp(response_body(r), body, body_len) == 0);
  CHECK(response_body(r)[body_len] == '\0');
  CHECK(r->received == RECEIVED);

  /* the status line: static when http_status.h has one, else stored */
  size_t sl, known_len;
  const char *line = response_status_line(r, &sl);
  const char *known = http_status_line(status, &known_len);
  bool own = (r->len_hi & RESPONSE_OWN_STATUS_LINE) != 0;
  CHECK(own == (known == NULL));
  if (known != NULL) {
    CHECK(line == known && sl == known_len);
  } else {
    char want_line[64];
    int wl = snprintf(want_line, sizeof want_line, "HTTP/1.1 %d Unknown\r\n",
                      status);
    CHECK(line == (const char *)(r + 1) && sl == (size_t)wl &&
          memcmp(line, want_line, sl) == 0);
  }
  char prefix[32];
  int pl = snprintf(prefix, sizeof prefix, "HTTP/1.1 %d ", status);
  CHECK(pl > 0 && (size_t)pl < sl && memcmp(line, prefix, (size_t)pl) == 0);
  CHECK(memcmp(line + sl - 2, "\r\n", 2) == 0);
  CHECK(memchr(line, '\r', sl - 2) == NULL &&
        memchr(line, '\n', sl - 2) == NULL);

  /* the tail: Content-Length first unless 1xx/204/304 */
  char tail[192], want_tail[128];
  size_t tl = response_tail(tail, sizeof tail, response_content_length(r), "F",
                            0, false, NULL);
  int wt = has_body_length(status)
               ? snprintf(want_tail, sizeof want_tail,
                          "Content-Length: %zu\r\nX-Cache: F\r\nAge: 0\r\n\r\n",
                          body_len)
               : snprintf(want_tail, sizeof want_tail,
                          "X-Cache: F\r\nAge: 0\r\n\r\n");
  CHECK(wt > 0 && tl == (size_t)wt && memcmp(tail, want_tail, tl) == 0);

  /* the stored field lines */
  size_t n, i = 0, k = 0;
  const char *h = response_field_lines(r, &n);
  CHECK(h == (const char *)(r + 1) + (own ? sl : 0));
  CHECK(h + n == response_body(r));
  while (i < n) {
    const char *crlf = memmem(h + i, n - i, "\r\n", 2);
    CHECK(crlf != NULL);
    size_t ll = (size_t)(crlf - (h + i));
    const char *fl = h + i;
    i += ll + 2;
    CHECK(memchr(fl, '\r', ll) == NULL && memchr(fl, '\n', ll) == NULL);
    const char *colon = memchr(fl, ':', ll);
    CHECK(colon != NULL);
    size_t nl = (size_t)(colon - fl);
    CHECK(nl + 2 <= ll && colon[1] == ' ');
    if (must_drop(want, fl, nl))
      fprintf(stderr, "fuzz_response: forwarded \"%.*s\"\n", (int)ll, fl);
    CHECK(!must_drop(want, fl, nl));
    /* the next kept input field, in order */
    while (k < want->n && must_drop(want, want->h[k].name, want->h[k].name_len))
      k++;
    CHECK(k < want->n);
    const hdr_t *w = &want->h[k];
    CHECK(w->name_len == nl && memcmp(w->name, fl, nl) == 0);
    CHECK(w->value_len == ll - nl - 2 &&
          memcmp(w->value, fl + nl + 2, w->value_len) == 0);
    k++;
  }
  while (k < want->n && must_drop(want, want->h[k].name, want->h[k].name_len))
    k++;
  CHECK(k == want->n);

  /* The iterator gives the same fields, as views of the lines, in order. */
  size_t kept = 0, pos = 0;
  const char *prev_end = h;
  for (size_t j = 0; j < want->n; j++) {
    const hdr_t *w = &want->h[j];
    if (must_drop(want, w->name, w->name_len))
      continue;
    hdr_t t;
    CHECK(response_next_field(r, &pos, &t));
    kept++;
    CHECK(t.name_len == w->name_len && t.value_len == w->value_len);
    CHECK(t.name == prev_end);
    CHECK(t.value == t.name + t.name_len + 2 &&
          memcmp(t.name + t.name_len, ": ", 2) == 0);
    CHECK(t.value + t.value_len + 2 <= h + n &&
          memcmp(t.value + t.value_len, "\r\n", 2) == 0);
    CHECK(memcmp(t.name, w->name, w->name_len) == 0);
    CHECK(memcmp(t.value, w->value, w->value_len) == 0);
    prev_end = t.value + t.value_len + 2;
    CHECK(pos == (size_t)(prev_end - h));
  }
  hdr_t none;
  CHECK(!response_next_field(r, &pos, &none) && pos == n);
  CHECK(prev_end == h + n);
  CHECK(response_field_count(r) == kept);
}

/* The response, its lines and body are the value's data, exactly. */
static void check_layout(const coalesce_value_t *v) {
  const response_t *r = response_of(v);
  CHECK((const void *)r == coalesce_value_data(v));
  CHECK(response_body(r) == (const char *)(r + 1) + r->lines_len);
  CHECK(coalesce_value_len(v) ==
        sizeof *r + r->lines_len + response_body_len(r) + 1);
}

/* First field of that name in f (case-insensitive), or NULL. */
static const hdr_t *find(const fields_t *f, const char *name, size_t len) {
  for (size_t i = 0; i < f->n; i++)
    if (f->h[i].name_len == len && strncasecmp(f->h[i].name, name, len) == 0)
      return &f->h[i];
  return NULL;
}

/* response_header agrees with the table, for a name the caller has as a
 * (possibly non-terminated) slice. */
static const char *lookup(const response_t *r, const char *name, size_t len,
                          size_t *vlen) {
  char buf[256];
  if (len >= sizeof buf)
    return NULL;
  memcpy(buf, name, len);
  buf[len] = '\0';
  return response_header(r, buf, vlen);
}

static void check_refresh(const response_t *stored, const response_t *r,
                          const fields_t *f304, fields_t *merged) {
  /* RFC 9111 §4.3.4: the stored fields the 304 does not name, then the
   * 304's own (its Content-Length describes no body: ignored). */
  merged->n = 0;
  hdr_t sf;
  for (size_t pos = 0; response_next_field(stored, &pos, &sf);)
    if (find(f304, sf.name, sf.name_len) == NULL)
      merged->h[merged->n++] = sf;
  for (size_t i = 0; i < f304->n; i++)
    if (!name_eq(f304->h[i].name, f304->h[i].name_len, "content-length"))
      merged->h[merged->n++] = f304->h[i];
  check_response(r, stored->status, merged, response_body(stored),
                 response_body_len(stored));
  /* Every field named by the 304 (and kept) reads as the 304's first. */
  for (size_t i = 0; i < f304->n; i++) {
    const hdr_t *h = &f304->h[i];
    if (must_drop(f304, h->name, h->name_len) || h->name_len >= 256 ||
        memchr(h->name, '\0', h->name_len) != NULL)
      continue;
    const hdr_t *first = find(f304, h->name, h->name_len);
    size_t vlen = 0;
    const char *v = lookup(r, h->name, h->name_len, &vlen);
    CHECK(v != NULL && vlen == first->value_len &&
          memcmp(v, first->value, vlen) == 0);
  }
  /* Stored fields the 304 does not name stay unless its Connection drops
   * them. */
  hdr_t field;
  for (size_t pos = 0; response_next_field(stored, &pos, &field);) {
    const hdr_t *s = &field;
    if (find(f304, s->name, s->name_len) != NULL || s->name_len >= 256)
      continue;
    size_t vlen = 0, want_len = 0;
    const char *v = lookup(r, s->name, s->name_len, &vlen);
    if (listed_by_connection(f304, s->name, s->name_len)) {
      CHECK(v == NULL);
      continue;
    }
    const char *want = lookup(stored, s->name, s->name_len, &want_len);
    CHECK(v != NULL && vlen == want_len && memcmp(v, want, vlen) == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  /* Mostly real statuses (100..999, as curl reports them); sometimes any
   * 16-bit value to probe the status line's bounds. */
  unsigned raw = (unsigned)data[0] << 8 | data[1];
  int status = (raw & 0x8000) ? (int)(int16_t)raw : 100 + (int)(raw % 900);
  const char *p = (const char *)data;
  size_t pos = 2;
  fields_t *f = malloc(sizeof *f), *f304 = malloc(sizeof *f304);
  fields_t *merged = malloc(sizeof *merged);
  if (f == NULL || f304 == NULL || merged == NULL)
    goto out;
  read_block(p, size, &pos, f);
  read_block(p, size, &pos, f304);
  const char *body = p + pos;
  size_t body_len = size - pos;

  coalesce_value_t *v =
      response_new(status, f->h, f->n, body, body_len, RECEIVED);
  CHECK((v != NULL) == (status >= 100 && status <= 999));
  if (v == NULL)
    goto out;
  const response_t *r = response_of(v);
  check_response(r, status, f, body, body_len);
  check_layout(v);

  /* Lookups agree with the input's first kept field of each name. */
  for (size_t i = 0; i < f->n; i++) {
    const hdr_t *h = &f->h[i];
    if (must_drop(f, h->name, h->name_len))
      continue;
    size_t vlen = 0;
    const char *got = lookup(r, h->name, h->name_len, &vlen);
    if (h->name_len >= 256)
      continue;
    const hdr_t *first = NULL;
    for (size_t j = 0; j < f->n && first == NULL; j++)
      if (f->h[j].name_len == h->name_len &&
          strncasecmp(f->h[j].name, h->name, h->name_len) == 0 &&
          !must_drop(f, f->h[j].name, f->h[j].name_len))
        first = &f->h[j];
    CHECK(got != NULL && vlen == first->value_len &&
          memcmp(got, first->value, vlen) == 0);
  }

  coalesce_value_t *v2 = response_refresh(r, f304->h, f304->n, RECEIVED);
  if (v2 != NULL) {
    check_refresh(r, response_of(v2), f304, merged);
    check_layout(v2);
    coalesce_value_release(v2);
  }
  coalesce_value_release(v);
out:
  free(f);
  free(f304);
  free(merged);
  return 0;
}
