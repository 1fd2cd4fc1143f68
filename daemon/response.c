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
    while (i < list_len && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
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
  static const char *const hop[] = {
      "connection",          "keep-alive", "proxy-connection",
      "proxy-authenticate",  "proxy-authorization", "te",
      "trailer",             "transfer-encoding",   "upgrade"};
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
 * serve (response splitting): never store or forward it. */
static bool unsafe_bytes(const hdr_t *h) {
  return memchr(h->name, '\r', h->name_len) || memchr(h->name, '\n', h->name_len) ||
         memchr(h->name, '\0', h->name_len) || memchr(h->value, '\r', h->value_len) ||
         memchr(h->value, '\n', h->value_len) || memchr(h->value, '\0', h->value_len) ||
         h->name_len == 0;
}

/* Hop-by-hop given every Connection field line of the message (a field
 * may be listed in any of them). */
static bool dropped(const hdr_t *all, size_t n, const hdr_t *h) {
  if (unsafe_bytes(h) || response_is_hop_by_hop(h->name, h->name_len, NULL, 0) ||
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

coalesce_value_t *response_new(int status, const hdr_t *headers,
                               size_t n_headers, const void *body,
                               size_t body_len, time_t received) {
  /* Size everything exactly first: one allocation holds the value header,
   * the struct, the field table, the head and the body. */
  char status_line[64], length_line[48];
  int sl = snprintf(status_line, sizeof status_line, "HTTP/1.1 %d %s\r\n",
                    status, http_status_reason(status));
  int ll = 0;
  /* 1xx, 204 and 304 carry no Content-Length (RFC 9110 §8.6). */
  if (!(status < 200 || status == 204 || status == 304))
    ll = snprintf(length_line, sizeof length_line, "Content-Length: %zu\r\n",
                  body_len);
  if (sl < 0 || (size_t)sl >= sizeof status_line || ll < 0 ||
      (size_t)ll >= sizeof length_line)
    return NULL; /* cannot happen: both are bounded */
  size_t kept = 0, head = (size_t)sl + (size_t)ll;
  for (size_t i = 0; i < n_headers; i++) {
    const hdr_t *h = &headers[i];
    if (dropped(headers, n_headers, h))
      continue;
    kept++;
    if (!add_size(&head, h->name_len) || !add_size(&head, h->value_len) ||
        !add_size(&head, 4))
      return NULL;
  }
  /* the table's offsets are 32 bits: so is the head's length */
  if (head > UINT32_MAX || kept >= UINT32_MAX)
    return NULL;
  size_t total = sizeof(response_t) + (kept + 1) * sizeof(response_field_t);
  if (!add_size(&total, head) || !add_size(&total, body_len) ||
      !add_size(&total, 1))
    return NULL;
  void *mem;
  coalesce_value_t *v = coalesce_value_alloc(total, &mem);
  if (v == NULL)
    return NULL;
  response_t *r = mem;
  response_field_t *table = r->fields;
  char *hp = (char *)(table + kept + 1);
  char *bp = hp + head;

  memcpy(hp, status_line, (size_t)sl);
  size_t hl = (size_t)sl;
  size_t k = 0;
  r->date = received;
  r->upstream_age = 0;
  for (size_t i = 0; i < n_headers; i++) {
    const hdr_t *h = &headers[i];
    if (name_eq(h->name, h->name_len, "age")) {
      char tmp[24];
      size_t n = h->value_len < sizeof tmp - 1 ? h->value_len : sizeof tmp - 1;
      memcpy(tmp, h->value, n);
      tmp[n] = '\0';
      char *end;
      unsigned long long a = strtoull(tmp, &end, 10);
      if (end != tmp && *end == '\0')
        r->upstream_age = a;
    }
    if (dropped(headers, n_headers, h))
      continue;
    if (name_eq(h->name, h->name_len, "date")) {
      time_t d;
      if (http_date_parse(h->value, h->value_len, &d))
        r->date = d;
    }
    /* the table points at the line about to be written */
    table[k] = (response_field_t){(uint32_t)hl, (uint32_t)h->name_len};
    memcpy(hp + hl, h->name, h->name_len);
    hl += h->name_len;
    memcpy(hp + hl, ": ", 2);
    hl += 2;
    memcpy(hp + hl, h->value, h->value_len);
    hl += h->value_len;
    memcpy(hp + hl, "\r\n", 2);
    hl += 2;
    k++;
  }
  table[kept] = (response_field_t){(uint32_t)hl, 0}; /* the sentinel */
  memcpy(hp + hl, length_line, (size_t)ll);
  hl += (size_t)ll;
  assert(hl == head && k == kept);
  if (body_len > 0)
    memcpy(bp, body, body_len);
  bp[body_len] = '\0';
  r->status = status;
  r->head = hp;
  r->head_len = hl;
  r->body = bp;
  r->body_len = body_len;
  r->n_headers = (uint32_t)kept;
  r->received = received;
  return v;
}

coalesce_value_t *response_refresh(const response_t *stored,
                                   const hdr_t *headers, size_t n_headers,
                                   time_t received) {
  /* Stored fields not named in the 304, then the 304's own fields. */
  size_t cap = stored->n_headers + n_headers;
  hdr_t *merged = malloc((cap ? cap : 1) * sizeof *merged);
  if (merged == NULL)
    return NULL;
  size_t n = 0;
  for (size_t i = 0; i < stored->n_headers; i++) {
    hdr_t s = response_field(stored, i);
    bool replaced = false;
    for (size_t j = 0; j < n_headers && !replaced; j++)
      replaced = !name_eq(headers[j].name, headers[j].name_len, "content-length") &&
                 s.name_len == headers[j].name_len &&
                 strncasecmp(s.name, headers[j].name, s.name_len) == 0;
    if (!replaced)
      merged[n++] = s;
  }
  for (size_t j = 0; j < n_headers; j++)
    if (!name_eq(headers[j].name, headers[j].name_len, "content-length"))
      merged[n++] = headers[j];
  coalesce_value_t *v = response_new(stored->status, merged, n, stored->body,
                                     stored->body_len, received);
  free(merged);
  return v;
}

const char *response_header(const response_t *r, const char *name,
                            size_t *len) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < r->n_headers; i++) {
    const response_field_t *f = &r->fields[i];
    if (f->name_len == nl && strncasecmp(r->head + f->off, name, nl) == 0) {
      hdr_t h = response_field(r, i);
      if (len != NULL)
        *len = h.value_len;
      return h.value;
    }
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

/* Hand-formatted: this runs for every hit, and snprintf's format parsing
 * was a quarter of the proxy's own instructions per hit. Same output and
 * truncation as snprintf: at most cap - 1 bytes, NUL-terminated. */
size_t response_tail(char *buf, size_t cap, const char *xcache,
                     uint64_t age_s, bool close, const char *extra) {
  if (cap == 0)
    return 0;
  char digits[20];
  size_t nd = 0;
  do {
    digits[sizeof digits - 1 - nd++] = (char)('0' + age_s % 10);
    age_s /= 10;
  } while (age_s > 0);
  size_t o = 0;
  put(buf, cap, &o, "X-Cache: ", 9);
  put(buf, cap, &o, xcache, strlen(xcache));
  put(buf, cap, &o, "\r\nAge: ", 7);
  put(buf, cap, &o, digits + sizeof digits - nd, nd);
  put(buf, cap, &o, "\r\n", 2);
  if (close)
    put(buf, cap, &o, "Connection: close\r\n", 19);
  if (extra != NULL)
    put(buf, cap, &o, extra, strlen(extra));
  put(buf, cap, &o, "\r\n", 2);
  buf[o] = '\0';
  return o;
}
