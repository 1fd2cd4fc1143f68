/*
 * cachecontrol.h — parsers for the caching header fields: Cache-Control
 * (request and response directives, RFC 9111 §5.2 and RFC 5861) and
 * HTTP-dates (RFC 9110 §5.6.7). Both read untrusted upstream/client bytes:
 * they never read past `len`, never allocate, and have fuzz targets.
 *
 * Tolerance follows RFC 9111: directive names are case-insensitive;
 * arguments may be tokens or quoted strings; an invalid or conflicting
 * duplicate delta-seconds makes the response stale (§4.2.1: "considered
 * stale"), modelled as a value of 0; unknown directives are ignored.
 */
#ifndef COALESCED_CACHECONTROL_H
#define COALESCED_CACHECONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define CC_ABSENT (-1)

typedef struct cc {
  bool no_store;
  bool no_cache; /* unqualified, or with a field list (both: revalidate) */
  bool private_;
  bool public_;
  bool must_revalidate;
  bool proxy_revalidate;
  bool only_if_cached;
  bool immutable;
  int64_t max_age;  /* seconds, CC_ABSENT when not given */
  int64_t s_maxage;
  int64_t stale_while_revalidate;
  int64_t stale_if_error;
  int64_t max_stale; /* request: INT64_MAX when given without a value */
  int64_t min_fresh;
} ccontrol_t;

void cc_init(ccontrol_t *cc);
/* Adds the directives of one field line; call once per line. */
void cc_parse(ccontrol_t *cc, const char *v, size_t len);

/* Parses IMF-fixdate, RFC 850 and asctime dates. Returns false when the
 * value is not a valid date (e.g. "0" or "-1" in Expires). */
bool http_date_parse(const char *v, size_t len, time_t *out);
/* Formats an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): 29 chars + NUL. */
void http_date_format(time_t t, char out[30]);

#endif
