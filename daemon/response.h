/*
 * response.h — an upstream response as coalesced stores and shares it.
 *
 * A response_t is built once, on the loop that received it, and is then
 * immutable: it is the data of a coalesce_value_t that the cache and every
 * waiter share by reference, on any thread, with no copy. It holds a
 * pre-serialised head ("HTTP/1.1 200 OK\r\n" + the forwarded header lines +
 * Content-Length, without the final CRLF) so that an answer is one writev
 * of {head, per-request tail (X-Cache, Age, Connection), body}.
 *
 * Memory (one cache entry each, so every byte counts): the value header,
 * the response_t, its field table, the head and the body are ONE
 * allocation, sized exactly. The field table does not copy the fields: it
 * holds 8 bytes per field (where its line starts in the head, its name's
 * length), and response_field() turns an entry into an hdr_t view of the
 * head's bytes — NOT NUL-terminated: always use the lengths.
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
#include <sys/uio.h>
#include <time.h>

#include "coalesce.h"

typedef struct hdr {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} hdr_t;

/* One stored field: its line "name: value\r\n" starts at head + off; its
 * value runs to the next entry's line, less the CRLF. The table ends with
 * a sentinel entry (name_len 0) where the field lines end. */
typedef struct response_field {
  uint32_t off;
  uint32_t name_len;
} response_field_t;

typedef struct response {
  int status;
  uint32_t n_headers; /* stored fields (for policy and revalidation) */
  const char *head;   /* status line + header lines, no final CRLF */
  size_t head_len;
  const char *body; /* NUL-terminated (not counted in body_len) */
  size_t body_len;
  time_t date;          /* its Date, or the time it arrived */
  time_t received;      /* wall-clock time it arrived */
  uint64_t upstream_age; /* seconds, from its Age field */
  response_field_t fields[]; /* n_headers + the sentinel; read them with
                                response_field() */
} response_t;

/* Builds a response (one allocation with the value; body copied) charged
 * for everything it holds. NULL on allocation failure. */
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

/* Stored field i (< r->n_headers), in the upstream's order, as a view of
 * the head's bytes (not NUL-terminated). */
static inline hdr_t response_field(const response_t *r, size_t i) {
  const response_field_t *f = &r->fields[i];
  const char *name = r->head + f->off;
  const char *value = name + f->name_len + 2;
  return (hdr_t){name, f->name_len, value,
                 (size_t)(r->head + f[1].off - 2 - value)};
}

/* First field of that name (case-insensitive), or NULL. The value is not
 * NUL-terminated: *len (if len is non-NULL) is its length. */
const char *response_header(const response_t *r, const char *name,
                            size_t *len);

/* True for fields a proxy must not forward (hop-by-hop, RFC 9110 §7.6.1),
 * given the Connection field's value (may be NULL) listing more. */
bool response_is_hop_by_hop(const char *name, size_t len,
                            const char *connection, size_t conn_len);

/* Writes the per-answer tail: X-Cache, Age, optional Connection: close and
 * the final CRLF. Returns its length (always < 128 with `extra` NULL). */
size_t response_tail(char *buf, size_t cap, const char *xcache,
                     uint64_t age_s, bool close, const char *extra);

#endif
