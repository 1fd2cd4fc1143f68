/* response.c — stored, shareable upstream responses; see response.h. */
#include "response.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cachecontrol.h"
#include "http_status.h"

static bool name_eq(const char *a, size_t alen, const char *b) {
  return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

/* Is `name` one of the comma-separated tokens of a Connection value? */
static bool listed(const char *name, size_t len, const char *list,
                   size_t list_len) {
  size_t i = 0;
  while (i < list_len) {
    while (i < list_len &&
           (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
      i++;
    size_t j = i;
    while (j < list_len && list[j] != ',' && list[j] != ' ' && list[j] != '\t')
      j++;
    if (j - i == len && strncasecmp(list + i, name, len) == 0)
      return true;
    i = j;
  }
  return false;
}

bool response_is_hop_by_hop(const char *name, size_t len,
                            const char *connection, size_t conn_len) {
  static const char *const hop[] = {"connection",
                                    "keep-alive",
                                    "proxy-connection",
                                    "proxy-authenticate",
                                    "proxy-authorization",
                                    "te",
                                    "trailer",
                                    "transfer-encoding",
                                    "upgrade"};
  for (size_t i = 0; i < sizeof hop / sizeof *hop; i++)
    if (name_eq(name, len, hop[i]))
      return true;
  return connection != NULL && listed(name, len, connection, conn_len);
}

/* Fields written per answer or by us, never copied from upstream. */
static bool per_answer(const char *name, size_t len) {
  return name_eq(name, len, "content-length") || name_eq(name, len, "age") ||
         name_eq(name, len, "x-cache");
}

/* A field whose name or value holds CR, LF or NUL could split the head we
 * serve (response splitting), and a ':' in a name would make the stored
 * lines scan differently from what was stored: never store or forward
 * them. */
static bool unsafe_bytes(const hdr_t *h) {
  return h->name_len == 0 || memchr(h->name, ':', h->name_len) ||
         memchr(h->name, '\r', h->name_len) ||
         memchr(h->name, '\n', h->name_len) ||
         memchr(h->name, '\0', h->name_len) ||
         memchr(h->value, '\r', h->value_len) ||
         memchr(h->value, '\n', h->value_len) ||
         memchr(h->value, '\0', h->value_len);
}

/* Hop-by-hop given every Connection field line of the message (a field
 * may be listed in any of them). */
static bool dropped(const hdr_t *all, size_t n, const hdr_t *h) {
  if (unsafe_bytes(h) ||
      response_is_hop_by_hop(h->name, h->name_len, NULL, 0) ||
      per_answer(h->name, h->name_len))
    return true;
  for (size_t i = 0; i < n; i++)
    if (name_eq(all[i].name, all[i].name_len, "connection") &&
        listed(h->name, h->name_len, all[i].value, all[i].value_len))
      return true;
  return false;
}

/* a += b, false on overflow */
static bool add_size(size_t *a, size_t b) {
  if (b > SIZE_MAX - *a)
    return false;
  *a += b;
  return true;
}

/* Age's value as stored: decimal seconds, saturating at 32 bits; `prev`
 * if it is not a number. */
static uint32_t parse_age(const char *v, size_t len, uint32_t prev) {
  char tmp[24];
  size_t n = len < sizeof tmp - 1 ? len : sizeof tmp - 1;
  memcpy(tmp, v, n);
  tmp[n] = '\0';
  char *end;
  unsigned long long a = strtoull(tmp, &end, 10);
  if (end == tmp || *end != '\0')
    return prev;
  return a > UINT32_MAX ? UINT32_MAX : (uint32_t)a;
}

coalesce_value_t *response_new(int status, const hdr_t *headers,
                               size_t n_headers, const void *body,
                               size_t body_len, time_t received) {
  if (status < 100 || status > 999 || (uint64_t)body_len > RESPONSE_MAX_BODY)
    return NULL;
  /* Size everything exactly first: one allocation holds the value header,
   * the struct, the stored lines and the body. A status with a static
   * line (nearly all) stores none. */
  size_t sl = 0;
  char own[32];
  bool own_line = http_status_line(status, &sl) == NULL;
  if (own_line) {
    int n = snprintf(own, sizeof own, "HTTP/1.1 %d %s\r\n", status,
                     http_status_reason(status));
    if (n < 0 || (size_t)n >= sizeof own)
      return NULL; /* cannot happen: three digits and "Unknown" */
    sl = (size_t)n;
  }
  size_t lines = own_line ? sl : 0;
  for (size_t i = 0; i < n_headers; i++) {
    const hdr_t *h = &headers[i];
    if (dropped(headers, n_headers, h))
      continue;
    if (!add_size(&lines, h->name_len) || !add_size(&lines, h->value_len) ||
        !add_size(&lines, 4))
      return NULL;
  }
  if (lines > UINT32_MAX)
    return NULL;
  size_t total = sizeof(response_t);
  if (!add_size(&total, lines) || !add_size(&total, body_len) ||
      !add_size(&total, 1))
    return NULL;
  void *mem;
  coalesce_value_t *v = coalesce_value_alloc(total, &mem);
  if (v == NULL)
    return NULL;
  response_t *r = mem;
  char *lp = (char *)(r + 1);
  size_t o = 0;
  if (own_line) {
    memcpy(lp, own, sl);
    o = sl;
  }
  r->date = received;
  r->upstream_age = 0;
  for (size_t i = 0; i < n_headers; i++) {
    const hdr_t *h = &headers[i];
    if (name_eq(h->name, h->name_len, "age"))
      r->upstream_age = parse_age(h->value, h->value_len, r->upstream_age);
    if (dropped(headers, n_headers, h))
      continue;
    if (name_eq(h->name, h->name_len, "date")) {
      time_t d;
      if (http_date_parse(h->value, h->value_len, &d))
        r->date = d;
    }
    memcpy(lp + o, h->name, h->name_len);
    o += h->name_len;
    memcpy(lp + o, ": ", 2);
    o += 2;
    memcpy(lp + o, h->value, h->value_len);
    o += h->value_len;
    memcpy(lp + o, "\r\n", 2);
    o += 2;
  }
  assert(o == lines);
  char *bp = lp + lines;
  if (body_len > 0)
    memcpy(bp, body, body_len);
  bp[body_len] = '\0';
  r->received = received;
  r->lines_len = (uint32_t)lines;
  r->status = (uint16_t)status;
  r->len_lo = (uint32_t)body_len;
  r->len_hi = (uint16_t)((uint64_t)body_len >> 32 |
                         (own_line ? RESPONSE_OWN_STATUS_LINE : 0));
  return v;
}

bool response_next_field(const response_t *r, size_t *pos, hdr_t *out) {
  size_t n;
  const char *lines = response_field_lines(r, &n);
  if (*pos >= n)
    return false;
  /* "name: value\r\n": a stored name holds no ':' and a value no LF */
  const char *name = lines + *pos;
  const char *colon = memchr(name, ':', n - *pos);
  const char *value = colon + 2;
  const char *lf = memchr(value, '\n', (size_t)(lines + n - value));
  *out = (hdr_t){name, (size_t)(colon - name), value, (size_t)(lf - 1 - value)};
  *pos = (size_t)(lf + 1 - lines);
  return true;
}

size_t response_field_count(const response_t *r) {
  size_t n, count = 0;
  const char *p = response_field_lines(r, &n), *end = p + n;
  while (p < end) {
    p = (const char *)memchr(p, '\n', (size_t)(end - p)) + 1;
    count++;
  }
  return count;
}

coalesce_value_t *response_refresh(const response_t *stored,
                                   const hdr_t *headers, size_t n_headers,
                                   time_t received) {
  /* Stored fields not named in the 304, then the 304's own fields. */
  size_t cap = response_field_count(stored) + n_headers;
  hdr_t *merged = malloc((cap ? cap : 1) * sizeof *merged);
  if (merged == NULL)
    return NULL;
  size_t n = 0, pos = 0;
  hdr_t s;
  while (response_next_field(stored, &pos, &s)) {
    bool replaced = false;
    for (size_t j = 0; j < n_headers && !replaced; j++)
      replaced =
          !name_eq(headers[j].name, headers[j].name_len, "content-length") &&
          s.name_len == headers[j].name_len &&
          strncasecmp(s.name, headers[j].name, s.name_len) == 0;
    if (!replaced)
      merged[n++] = s;
  }
  for (size_t j = 0; j < n_headers; j++)
    if (!name_eq(headers[j].name, headers[j].name_len, "content-length"))
      merged[n++] = headers[j];
  coalesce_value_t *v =
      response_new(stored->status, merged, n, response_body(stored),
                   response_body_len(stored), received);
  free(merged);
  return v;
}

const char *response_header(const response_t *r, const char *name,
                            size_t *len) {
  size_t nl = strlen(name), n;
  const char *p = response_field_lines(r, &n), *end = p + n;
  while (p < end) {
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    /* a stored name holds no ':', so name_len == nl iff p[nl] is ':' (the
     * line is at least "name: \r\n") */
    if ((size_t)(lf - p) >= nl + 3 && p[nl] == ':' &&
        strncasecmp(p, name, nl) == 0) {
      if (len != NULL)
        *len = (size_t)(lf - 1 - (p + nl + 2));
      return p + nl + 2;
    }
    p = lf + 1;
  }
  return NULL;
}

/* Appends n bytes of s to buf[*o..cap-1), as far as they fit. */
static void put(char *buf, size_t cap, size_t *o, const char *s, size_t n) {
  size_t room = cap - 1 - *o;
  if (n > room)
    n = room;
  memcpy(buf + *o, s, n);
  *o += n;
}

/* Appends v in decimal. */
static void put_u64(char *buf, size_t cap, size_t *o, uint64_t v) {
  char digits[20];
  size_t nd = 0;
  do {
    digits[sizeof digits - 1 - nd++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  put(buf, cap, o, digits + sizeof digits - nd, nd);
}

/* Writes v in decimal at p (room for 20 digits); returns the end. */
static char *dec(char *p, uint64_t v) {
  /* clang-format off */
  static const uint64_t pow10[20] = {
      1u, 10u, 100u, 1000u, 10000u, 100000u, 1000000u, 10000000u,
      100000000u, 1000000000u, 10000000000u, 100000000000u, 1000000000000u,
      10000000000000u, 100000000000000u, 1000000000000000u,
      10000000000000000u, 100000000000000000u, 1000000000000000000u,
      10000000000000000000u};
  /* clang-format on */
  size_t nd = 1;
  while (nd < 20 && v >= pow10[nd])
    nd++;
  for (size_t i = nd; i-- > 0; v /= 10)
    p[i] = (char)('0' + v % 10);
  return p + nd;
}

/* Hand-formatted: this runs for every hit, and snprintf's format parsing
 * was a quarter of the proxy's own instructions per hit. Same output and
 * truncation as snprintf: at most cap - 1 bytes, NUL-terminated. When all
 * of it fits (always, in the proxy) it is written with fixed-size copies
 * the compiler inlines; only a short buffer takes the clamping path. */
size_t response_tail(char *buf, size_t cap, uint64_t content_length,
                     const char *xcache, uint64_t age_s, bool close,
                     const char *extra) {
  size_t xl = strlen(xcache), el = extra != NULL ? strlen(extra) : 0;
  /* Content-Length: 20 digits, X-Cache, Age: 20 digits, Connection,
   * extra, CRLF, NUL */
  size_t most = 38 + 9 + xl + 7 + 22 + 19 + el + 3;
  if (cap >= most) {
    char *p = buf;
    if (content_length != RESPONSE_NO_LENGTH) {
      memcpy(p, "Content-Length: ", 16);
      p = dec(p + 16, content_length);
      memcpy(p, "\r\n", 2);
      p += 2;
    }
    memcpy(p, "X-Cache: ", 9);
    memcpy(p + 9, xcache, xl);
    p += 9 + xl;
    memcpy(p, "\r\nAge: ", 7);
    p = dec(p + 7, age_s);
    memcpy(p, "\r\n", 2);
    p += 2;
    if (close) {
      memcpy(p, "Connection: close\r\n", 19);
      p += 19;
    }
    if (el > 0) {
      memcpy(p, extra, el);
      p += el;
    }
    memcpy(p, "\r\n", 3); /* with the NUL */
    return (size_t)(p + 2 - buf);
  }
  if (cap == 0)
    return 0;
  size_t o = 0;
  if (content_length != RESPONSE_NO_LENGTH) {
    put(buf, cap, &o, "Content-Length: ", 16);
    put_u64(buf, cap, &o, content_length);
    put(buf, cap, &o, "\r\n", 2);
  }
  put(buf, cap, &o, "X-Cache: ", 9);
  put(buf, cap, &o, xcache, xl);
  put(buf, cap, &o, "\r\nAge: ", 7);
  put_u64(buf, cap, &o, age_s);
  put(buf, cap, &o, "\r\n", 2);
  if (close)
    put(buf, cap, &o, "Connection: close\r\n", 19);
  if (extra != NULL)
    put(buf, cap, &o, extra, el);
  put(buf, cap, &o, "\r\n", 2);
  buf[o] = '\0';
  return o;
}
