/*
 * cachekey.h — canonical request targets and cache keys.
 *
 * The cache key is exactly what decides the upstream's answer: method class,
 * upstream, normalised path, canonical query, the identity headers present
 * (Authorization, Cookie, X-Api-Key by default) and, once an upstream said
 * `Vary`, the selecting headers' values. The proxy forwards the SAME
 * normalised path and canonical query it keys on, so two requests can share
 * a key only if the upstream receives the same request for both — percent-
 * encoding tricks cannot alias keys.
 *
 * Keys are binary (NUL-separated fields) and never logged; the admin side
 * shows only their hash.
 */
#ifndef COALESCED_CACHEKEY_H
#define COALESCED_CACHEKEY_H

#include <stdbool.h>
#include <stddef.h>

/* Normalises an origin-form path: decodes percent-escapes of unreserved
 * characters (ALPHA DIGIT - . _ ~), upper-cases the hex of the others,
 * resolves "." and ".." segments (RFC 3986 §5.2.4) and merges nothing else.
 * Writes at most cap bytes to out. Returns the length, or -1 when the path
 * is not acceptable: not starting with '/', a bad or NUL (%00) escape, a
 * raw byte outside the visible ASCII range, or too long for cap. */
long cachekey_normalize_path(const char *in, size_t len, char *out, size_t cap);

/* Canonical query: the same per-parameter percent normalisation, then the
 * parameters sorted by name (stable: repeated names keep their order, since
 * `id=1&id=2` and `id=2&id=1` may differ upstream); empty parameters are
 * dropped. Returns the length (0 for none), or -1 when invalid/too long. */
long cachekey_canonical_query(const char *in, size_t len, char *out,
                              size_t cap);

/* Looks a request header up (case-insensitive); NULL if absent. */
typedef const char *(*cachekey_header_fn)(void *ud, const char *name,
                                          size_t *len);

/* Bytes a key holds without allocating: a request's key is built on every
 * hit, and most keys (class, upstream, path, query, a token) fit. */
#define CACHEKEY_INLINE 192

/* A growable key under construction. All-zero bytes are a valid empty key
 * (as cachekey_init leaves it). It may point into itself: never copy a
 * cachekey_t by value; copy its bytes with cachekey_copy. */
typedef struct cachekey {
  char *data; /* `small` or the heap */
  size_t len;
  size_t cap;
  bool oom;
  char small[CACHEKEY_INLINE];
} cachekey_t;

void cachekey_init(cachekey_t *k);
void cachekey_free(cachekey_t *k);
void cachekey_reset(cachekey_t *k);
/* Replaces the key with a raw copy of `len` bytes (another key). */
void cachekey_copy(cachekey_t *k, const void *data, size_t len);
/* Appends one field (length-prefixed so fields can never run together). */
void cachekey_add(cachekey_t *k, const char *field, size_t len);

/* The primary key: class ('G' for GET/HEAD), upstream index, path, query,
 * then "name=value" for each identity header present (names compared
 * case-insensitively, in the configured order). */
void cachekey_build(cachekey_t *k, char method_class, unsigned upstream,
                    const char *path, size_t path_len, const char *query,
                    size_t query_len, const char *const *identity,
                    size_t n_identity, cachekey_header_fn get, void *ud);

/* The variant key: the primary key plus the values of the headers a `Vary`
 * list names (comma-separated, as the upstream sent it). Returns false for
 * `Vary: *` (never reusable). */
bool cachekey_add_vary(cachekey_t *k, const char *vary, size_t vary_len,
                       cachekey_header_fn get, void *ud);

#endif
