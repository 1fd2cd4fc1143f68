/*
 * response.h — an upstream response as coalesced stores and shares it.
 *
 * A response_t is built once, on the loop that received it, and is then
 * immutable: it is the data of a coalesce_value_t that the cache and every
 * waiter share by reference, on any thread, with no copy.
 *
 * Memory (one cache entry each, so every byte counts): the value header,
 * the response_t and what follows it are ONE allocation, sized exactly:
 *
 *   response_t (32 B) | [own status line] | field lines | body | NUL
 *
 * The field lines are the forwarded fields, already serialised
 * ("Name: value\r\n" each), so an answer is one writev of {status line,
 * field lines, per-answer tail, body}. Nothing else is stored per
 * response: no pointers (the lines start right after the struct, the body
 * right after the lines), no field table (fields are found by scanning the
 * lines: response_next_field, response_header — only misses, revalidation
 * and clients' validators look), no status line for a status http_status.h
 * knows (a static string, chosen per answer) and no Content-Length line
 * (response_tail writes it, as it writes Age). Only a status without a
 * static line ("HTTP/1.1 599 Unknown") keeps its own line before the
 * fields, marked by RESPONSE_OWN_STATUS_LINE.
 *
 * Field views are NOT NUL-terminated: always use the lengths. A stored
 * name never holds ':' and nothing stored holds CR, LF or NUL, which is
 * what makes the scan exact.
 *
 * Hop-by-hop fields (Connection and the fields it lists, Keep-Alive,
 * Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) are never stored or
 * forwarded; Content-Length, Age and X-Cache are written per answer.
 */
#ifndef COALESCED_RESPONSE_H
#define COALESCED_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "coalesce.h"
#include "http_status.h"

typedef struct hdr {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} hdr_t;

/* Bit of response_t.len_hi: the status line is stored before the fields. */
#define RESPONSE_OWN_STATUS_LINE 0x8000u
/* Largest body a response holds (47 bits: more than any memory). */
#define RESPONSE_MAX_BODY ((UINT64_C(1) << 47) - 1)

typedef struct response {
  time_t date;           /* its Date, or the time it arrived */
  time_t received;       /* wall-clock time it arrived */
  uint32_t lines_len;    /* own status line (if any) + field lines */
  uint32_t upstream_age; /* seconds, from its Age field; saturates */
  uint16_t status;       /* 100..999 */
  /* The body's length, split so the struct stays 32 bytes with no cap
   * below what max_response_bytes allows (4 GiB): read it with
   * response_body_len(). len_hi also holds RESPONSE_OWN_STATUS_LINE. */
  uint16_t len_hi;
  uint32_t len_lo;
} response_t;

_Static_assert(sizeof(response_t) <= 32, "response_t is per cache entry");

/* Builds a response (one allocation with the value; body copied) charged
 * for everything it holds. NULL on allocation failure, for a status
 * outside 100..999 or for field lines over 4 GiB. */
coalesce_value_t *response_new(int status, const hdr_t *headers,
                               size_t n_headers, const void *body,
                               size_t body_len, time_t received);

/* A 304 refresh (RFC 9111 §4.3.4): a new response with the stored body and
 * the stored fields updated by the 304's fields (except Content-Length). */
coalesce_value_t *response_refresh(const response_t *stored,
                                   const hdr_t *headers, size_t n_headers,
                                   time_t received);

static inline const response_t *response_of(const coalesce_value_t *v) {
  return (const response_t *)coalesce_value_data(v);
}

static inline size_t response_body_len(const response_t *r) {
  return (size_t)((uint64_t)(r->len_hi & ~RESPONSE_OWN_STATUS_LINE) << 32 |
                  r->len_lo);
}

/* The body, NUL-terminated (the NUL is not counted in its length). */
static inline const char *response_body(const response_t *r) {
  return (const char *)(r + 1) + r->lines_len;
}

/* "HTTP/1.1 200 OK\r\n": static for a status http_status.h knows, else the
 * response's own. Sets *len. */
static inline const char *response_status_line(const response_t *r,
                                               size_t *len) {
  const char *own = (const char *)(r + 1);
  if (r->len_hi & RESPONSE_OWN_STATUS_LINE) {
    *len = (size_t)((const char *)memchr(own, '\n', r->lines_len) - own) + 1;
    return own;
  }
  return http_status_line(r->status, len);
}

/* The stored field lines ("Name: value\r\n" each, possibly none). */
static inline const char *response_field_lines(const response_t *r,
                                               size_t *len) {
  const char *p = (const char *)(r + 1);
  size_t skip = 0;
  if (r->len_hi & RESPONSE_OWN_STATUS_LINE)
    (void)response_status_line(r, &skip);
  *len = r->lines_len - skip;
  return p + skip;
}

/* Walks the stored fields in the upstream's order: start with *pos = 0;
 * each call sets *out to the next field (a view of the stored lines) and
 * returns true, or returns false after the last. */
bool response_next_field(const response_t *r, size_t *pos, hdr_t *out);

/* How many fields are stored (a scan). */
size_t response_field_count(const response_t *r);

/* First field of that name (case-insensitive), or NULL. The value is not
 * NUL-terminated: *len (if len is non-NULL) is its length. */
const char *response_header(const response_t *r, const char *name, size_t *len);

/* True for fields a proxy must not forward (hop-by-hop, RFC 9110 §7.6.1),
 * given the Connection field's value (may be NULL) listing more. */
bool response_is_hop_by_hop(const char *name, size_t len,
                            const char *connection, size_t conn_len);

/* response_tail's content_length for an answer without one. */
#define RESPONSE_NO_LENGTH UINT64_MAX

/* What an answer with r says in Content-Length: its body's length (also
 * for HEAD), or RESPONSE_NO_LENGTH for 1xx, 204 and 304 (RFC 9110 §8.6). */
static inline uint64_t response_content_length(const response_t *r) {
  int s = r->status;
  return s < 200 || s == 204 || s == 304 ? RESPONSE_NO_LENGTH
                                         : (uint64_t)response_body_len(r);
}

/* Writes the per-answer tail: Content-Length (unless RESPONSE_NO_LENGTH),
 * X-Cache, Age, optional Connection: close, `extra` and the final CRLF.
 * Truncates like snprintf: at most cap - 1 bytes, NUL-terminated. Returns
 * its length (always < 160 with `extra` NULL and an X-Cache under 32). */
size_t response_tail(char *buf, size_t cap, uint64_t content_length,
                     const char *xcache, uint64_t age_s, bool close,
                     const char *extra);

#endif
