/*
 * fuzz_cachecontrol.c — libFuzzer driver for daemon/cachecontrol.c.
 *
 * The input is untrusted upstream/client bytes. Each '\n'-separated line is
 * one Cache-Control field line fed to cc_parse; the whole input is also an
 * HTTP-date candidate for http_date_parse. Properties checked (abort on
 * violation, so libFuzzer keeps the input):
 *   - every delta-seconds field is CC_ABSENT or within [0, 2^31]
 *     (RFC 9111 §1.2.2 saturation); max_stale may also be INT64_MAX;
 *   - directive names are case-insensitive: upper-casing the input changes
 *     nothing (arguments are digits, so this is exact);
 *   - repeating the same field lines changes nothing (a duplicate of a
 *     directive with the same value is not a conflict);
 *   - a parsed date lies in years 1900..9999, formats to a 29-char
 *     IMF-fixdate, and that string parses back to the same time_t and
 *     formats to the same string.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cachecontrol.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_cachecontrol: property failed: %s (line %d)\n",    \
              #cond, __LINE__);                                                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define TWO_POW_31 2147483648LL

static void check_delta(int64_t v, bool may_be_max) {
  CHECK(v == CC_ABSENT || (v >= 0 && v <= TWO_POW_31) ||
        (may_be_max && v == INT64_MAX));
}

static void check_bounds(const ccontrol_t *cc) {
  check_delta(cc->max_age, false);
  check_delta(cc->s_maxage, false);
  check_delta(cc->stale_while_revalidate, false);
  check_delta(cc->stale_if_error, false);
  check_delta(cc->min_fresh, false);
  check_delta(cc->max_stale, true);
}

/* Compared field by field: ccontrol_t has padding, memcmp would read it. */
static bool cc_equal(const ccontrol_t *a, const ccontrol_t *b) {
  return a->no_store == b->no_store && a->no_cache == b->no_cache &&
         a->private_ == b->private_ && a->public_ == b->public_ &&
         a->must_revalidate == b->must_revalidate &&
         a->proxy_revalidate == b->proxy_revalidate &&
         a->only_if_cached == b->only_if_cached &&
         a->immutable == b->immutable && a->max_age == b->max_age &&
         a->s_maxage == b->s_maxage &&
         a->stale_while_revalidate == b->stale_while_revalidate &&
         a->stale_if_error == b->stale_if_error &&
         a->max_stale == b->max_stale && a->min_fresh == b->min_fresh;
}

/* Parses every '\n'-separated line of p[0..n) into cc, `times` times over. */
static void parse_lines(ccontrol_t *cc, const char *p, size_t n, int times) {
  for (int t = 0; t < times; t++) {
    size_t i = 0;
    while (i <= n) {
      const char *nl = memchr(p + i, '\n', n - i);
      size_t end = nl ? (size_t)(nl - p) : n;
      cc_parse(cc, p + i, end - i);
      i = end + 1;
    }
  }
}

static void fuzz_cc(const char *p, size_t n) {
  ccontrol_t once, twice, upper;
  cc_init(&once);
  parse_lines(&once, p, n, 1);
  check_bounds(&once);

  cc_init(&twice);
  parse_lines(&twice, p, n, 2);
  check_bounds(&twice);
  CHECK(cc_equal(&once, &twice));

  char *u = malloc(n ? n : 1);
  if (u == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    u[i] = (p[i] >= 'a' && p[i] <= 'z') ? (char)(p[i] - 32) : p[i];
  cc_init(&upper);
  parse_lines(&upper, u, n, 1);
  free(u);
  CHECK(cc_equal(&once, &upper));
}

static void fuzz_date(const char *p, size_t n) {
  time_t t;
  if (!http_date_parse(p, n, &t))
    return;
  /* 1900-01-01T00:00:00Z .. 9999-12-31T23:59:59Z */
  CHECK(t >= -2208988800LL && t <= 253402300799LL);
  char a[30], b[30];
  memset(a, 'x', sizeof a);
  http_date_format(t, a);
  CHECK(memchr(a, '\0', sizeof a) == a + 29);
  time_t t2;
  CHECK(http_date_parse(a, 29, &t2));
  CHECK(t2 == t);
  http_date_format(t2, b);
  CHECK(strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size heap copy, so ASan sees any read past `size`. */
  char *p = malloc(size ? size : 1);
  if (p == NULL)
    return 0;
  if (size > 0)
    memcpy(p, data, size);
  fuzz_cc(p, size);
  fuzz_date(p, size);
  free(p);
  return 0;
}
