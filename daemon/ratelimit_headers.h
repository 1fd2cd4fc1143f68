/*
 * ratelimit_headers.h — reads an upstream's own account of its rate limit
 * from a response's header fields. Pure functions: no allocation, no
 * clock, no state; they read untrusted upstream bytes, never past the
 * given lengths, and have a fuzz target (tests/fuzz/fuzz_ratelimit_headers.c).
 *
 * Three families are understood, names case-insensitive:
 *
 *   RL_FAMILY_IETF         draft-ietf-httpapi-ratelimit-headers, structured:
 *                            -07: RateLimit: limit=100, remaining=50, reset=30
 *                                 RateLimit-Policy: 100;w=60, 1000;w=3600
 *                            -08+: RateLimit: "day";r=50;t=30
 *                                 RateLimit-Policy: "day";q=100;w=86400
 *   RL_FAMILY_IETF_FIELDS  the draft's older separate fields: RateLimit-Limit
 *                          (may list policies: "10, 10;w=1, 50;w=60"),
 *                          RateLimit-Remaining, RateLimit-Reset
 *   RL_FAMILY_X            X-RateLimit-Limit / -Remaining / -Reset (also
 *                          X-Rate-Limit-* and X-RateLimit-Reset-After)
 *
 * Rules (chosen so the result does not depend on field order, and so that
 * repeating a field changes nothing — the fuzz target checks both):
 *   - One family answers: the first of IETF, IETF_FIELDS, X that reports a
 *     remaining count; failing that, the first that reports anything.
 *   - Repeats and lists within a family are read conservatively: the lowest
 *     limit, the lowest remaining, the latest reset. Among structured items
 *     the one with the lowest remaining wins (ties: latest reset, then the
 *     lowest limit, then the smallest name), with its own reset and limit.
 *   - A reset may be delta seconds or a Unix time: a value of 10 years'
 *     worth of seconds or more is an epoch time (from 10^11 on, epoch
 *     milliseconds), turned into seconds from `now` (0 if in the past).
 *     Fractions ("1.5") round up. Limit and remaining are integers only.
 *   - The window comes from a policy: the named one (-08), else the one
 *     whose quota equals the limit (smallest window), else, when no limit
 *     was reported, the policy with the smallest window gives both.
 *   - A negative, empty, non-numeric or otherwise malformed value is
 *     ignored as if absent; the rest of the field still counts. Numbers
 *     saturate at RL_MAX.
 *   - Retry-After (delta seconds or HTTP-date) is reported on its own; it
 *     does not make a family present.
 */
#ifndef COALESCED_RATELIMIT_HEADERS_H
#define COALESCED_RATELIMIT_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "response.h" /* hdr_t */

#define RL_ABSENT (-1)
#define RL_MAX ((int64_t)1 << 53) /* exact in a double and in JSON */
/* Reset values at or above this many seconds are Unix times. */
#define RL_EPOCH_MIN ((int64_t)315576000) /* 10 Julian years */
#define RL_EPOCH_MS_MIN ((int64_t)100000000000) /* year 5138 in seconds */

typedef enum rl_family {
  RL_FAMILY_NONE = 0,
  RL_FAMILY_IETF,
  RL_FAMILY_IETF_FIELDS,
  RL_FAMILY_X,
} rl_family_t;

typedef struct rl_info {
  rl_family_t family; /* which family the figures below come from */
  int64_t limit;      /* calls allowed per window, or RL_ABSENT */
  int64_t remaining;  /* calls left in the window, or RL_ABSENT */
  int64_t reset_s;    /* seconds from `now` until the window resets */
  int64_t window_s;   /* the window's length (IETF policies only) */
  int64_t retry_after_s; /* Retry-After, seconds from `now` */
} rl_info_t;

/* Reads every rate-limit field of `headers` (any order, any repeats) into
 * `out`; `now` is the wall-clock time used to turn epoch resets and
 * HTTP-dates into seconds. Returns true when some family was present
 * (out->family != RL_FAMILY_NONE). Every figure in `out` is RL_ABSENT or
 * in [0, RL_MAX]. */
bool rl_parse(const hdr_t *headers, size_t n, time_t now, rl_info_t *out);

/* True when `name` is a field rl_parse reads (Retry-After included). */
bool rl_is_field(const char *name, size_t len);

/* "ietf", "ietf-fields", "x-ratelimit" or "none". */
const char *rl_family_name(rl_family_t f);

#endif
