/* test_ratelimit_headers.c — the upstream's RateLimit / X-RateLimit fields:
 * one table of header sets and what each must read as, every case also
 * checked with its fields reversed and repeated (the result must not
 * depend on order or repeats). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cachecontrol.h"
#include "ratelimit_headers.h"

#define NOW ((time_t)1700000000)
#define A RL_ABSENT
#define MAXH 8

typedef struct rl_case {
  const char *lines[MAXH]; /* "Name: value"; NULL-terminated */
  rl_family_t family;
  int64_t limit, remaining, reset, window, retry;
} rl_case_t;

/* Splits "Name: value" lines into hdr_t pointing into the lines. */
static size_t to_hdrs(const char *const *lines, hdr_t *h) {
  size_t n = 0;
  for (; n < MAXH && lines[n] != NULL; n++) {
    const char *colon = strchr(lines[n], ':');
    assert_non_null(colon);
    h[n] = (hdr_t){lines[n], (size_t)(colon - lines[n]), colon + 1,
                   strlen(colon + 1)};
  }
  return n;
}

static void expect(const rl_case_t *c, const rl_info_t *r, const char *how,
                   size_t idx) {
  if (r->family != c->family || r->limit != c->limit ||
      r->remaining != c->remaining || r->reset_s != c->reset ||
      r->window_s != c->window || r->retry_after_s != c->retry) {
    fail_msg("case %zu (%s, first: \"%s\"): got %s limit=%lld remaining=%lld "
             "reset=%lld window=%lld retry=%lld",
             idx, how, c->lines[0] ? c->lines[0] : "", rl_family_name(r->family),
             (long long)r->limit, (long long)r->remaining,
             (long long)r->reset_s, (long long)r->window_s,
             (long long)r->retry_after_s);
  }
}

static void run_case(const rl_case_t *c, size_t idx) {
  hdr_t h[MAXH], rev[MAXH], dup[2 * MAXH];
  size_t n = to_hdrs(c->lines, h);
  rl_info_t r;
  bool any = rl_parse(h, n, NOW, &r);
  assert_int_equal(any, c->family != RL_FAMILY_NONE);
  expect(c, &r, "as given", idx);
  for (size_t i = 0; i < n; i++)
    rev[i] = h[n - 1 - i], dup[i] = h[i], dup[n + i] = h[n - 1 - i];
  rl_parse(rev, n, NOW, &r);
  expect(c, &r, "reversed", idx);
  rl_parse(dup, 2 * n, NOW, &r);
  expect(c, &r, "repeated", idx);
}

#define EPOCH(d) "1700000" #d /* NOW + d for three-digit d */

static const rl_case_t cases[] = {
    /* nothing */
    {{"Content-Type: text/plain", NULL}, RL_FAMILY_NONE, A, A, A, A, A},
    {{NULL}, RL_FAMILY_NONE, A, A, A, A, A},
    /* X-RateLimit: delta and epoch resets, case, aliases */
    {{"X-RateLimit-Limit: 5000", "X-RateLimit-Remaining: 4999",
      "X-RateLimit-Reset: 30", NULL},
     RL_FAMILY_X, 5000, 4999, 30, A, A},
    {{"x-ratelimit-limit: 60", "X-RATELIMIT-REMAINING: 0",
      "X-Ratelimit-Reset: " EPOCH(060), NULL},
     RL_FAMILY_X, 60, 0, 60, A, A},
    {{"X-RateLimit-Reset: 1699999000", "X-RateLimit-Remaining: 1", NULL},
     RL_FAMILY_X, A, 1, 0, A, A}, /* epoch in the past */
    {{"X-RateLimit-Reset: 1700000001500", "X-RateLimit-Remaining: 1", NULL},
     RL_FAMILY_X, A, 1, 2, A, A}, /* epoch milliseconds, rounded up */
    {{"X-RateLimit-Reset: 315575999", NULL}, RL_FAMILY_X, A, A, 315575999, A,
     A}, /* just under 10 years: still a delta */
    {{"X-Rate-Limit-Limit: 15", "X-Rate-Limit-Remaining: 14",
      "X-RateLimit-Reset-After: 1.5", NULL},
     RL_FAMILY_X, 15, 14, 2, A, A},
    /* IETF separate fields (older drafts), policies in RateLimit-Limit */
    {{"RateLimit-Limit: 100", "RateLimit-Remaining: 50",
      "RateLimit-Reset: 30", NULL},
     RL_FAMILY_IETF_FIELDS, 100, 50, 30, A, A},
    {{"RateLimit-Limit: 10, 10;w=1, 50;w=60", "RateLimit-Remaining: 9", NULL},
     RL_FAMILY_IETF_FIELDS, 10, 9, A, 1, A},
    {{"RateLimit-Limit: 100", "RateLimit-Remaining: 1",
      "RateLimit-Policy: 100;w=60, 5000;w=86400", NULL},
     RL_FAMILY_IETF_FIELDS, 100, 1, A, 60, A},
    {{"RateLimit-Remaining: 3", "RateLimit-Policy: 1000;w=3600, 10;w=1",
      NULL},
     RL_FAMILY_IETF_FIELDS, 10, 3, A, 1, A}, /* no limit: tightest policy */
    /* IETF structured, -07 dictionary */
    {{"RateLimit: limit=100, remaining=50, reset=30",
      "RateLimit-Policy: 100;w=60", NULL},
     RL_FAMILY_IETF, 100, 50, 30, 60, A},
    {{"ratelimit:   LIMIT = 100 ,remaining=50,\treset=30  ", NULL},
     RL_FAMILY_IETF, 100, 50, 30, A, A},
    {{"RateLimit: limit=100, remaining=50, reset=30",
      "RateLimit: limit=100, remaining=20, reset=10", NULL},
     RL_FAMILY_IETF, 100, 20, 30, A, A}, /* repeats: lowest, latest */
    /* IETF structured, -08 named items */
    {{"RateLimit: \"default\";r=50;t=30",
      "RateLimit-Policy: \"default\";q=100;w=60", NULL},
     RL_FAMILY_IETF, 100, 50, 30, 60, A},
    {{"RateLimit: \"burst\";r=5;t=1, \"day\";r=2;t=3600",
      "RateLimit-Policy: \"burst\";q=10;w=1, \"day\";q=1000;w=86400", NULL},
     RL_FAMILY_IETF, 1000, 2, 3600, 86400, A},
    {{"RateLimit: \"a\";r=2;t=1, \"b\";r=2;t=9",
      "RateLimit-Policy: \"a\";q=3;w=1, \"b\";q=7;w=9", NULL},
     RL_FAMILY_IETF, 7, 2, 9, 9, A}, /* tie on remaining: later reset */
    {{"RateLimit: \"a,b\";r=1;t=2", "RateLimit-Policy: \"a,b\";q=10;w=5",
      NULL},
     RL_FAMILY_IETF, 10, 1, 2, 5, A}, /* a comma inside quotes */
    {{"RateLimit: limit=100, remaining=50, reset=30, \"h\";r=5;t=60",
      "RateLimit-Policy: \"h\";q=40;w=3600", NULL},
     RL_FAMILY_IETF, 40, 5, 60, 3600, A}, /* -07 and -08: lower wins */
    {{"RateLimit: limit=100, remaining=5, reset=60, \"h\";r=5;t=60",
      "RateLimit-Policy: \"h\";q=40;w=3600", NULL},
     RL_FAMILY_IETF, 40, 5, 60, 3600, A}, /* full tie: the lower limit */
    {{"RateLimit: \"b\";r=2;t=5", "RateLimit: \"a\";r=2;t=5",
      "RateLimit-Policy: \"a\";q=3;w=1, \"b\";q=7;w=9", NULL},
     RL_FAMILY_IETF, 3, 2, 5, 1, A}, /* and then the smaller name */
    {{"RateLimit-Policy: 1000;w=3600, 10;w=1", NULL},
     RL_FAMILY_IETF, 10, A, A, 1, A}, /* a policy alone */
    {{"RateLimit-Policy: 100", NULL}, RL_FAMILY_IETF, 100, A, A, A, A},
    /* which family answers */
    {{"X-RateLimit-Remaining: 7", "RateLimit: limit=10, remaining=3, reset=5",
      "RateLimit-Remaining: 4", NULL},
     RL_FAMILY_IETF, 10, 3, 5, A, A},
    {{"X-RateLimit-Remaining: 7", "RateLimit-Policy: 100;w=60", NULL},
     RL_FAMILY_X, A, 7, A, A, A}, /* the first with a remaining count */
    /* duplicates and lists: lowest limit and remaining, latest reset */
    {{"X-RateLimit-Remaining: 10", "X-RateLimit-Remaining: 5",
      "X-RateLimit-Reset: 10", "X-RateLimit-Reset: 20", NULL},
     RL_FAMILY_X, A, 5, 20, A, A},
    {{"X-RateLimit-Remaining: 7, 3", "X-RateLimit-Limit: 9,8", NULL},
     RL_FAMILY_X, 8, 3, A, A, A},
    /* negative numbers, garbage, whitespace */
    {{"X-RateLimit-Remaining: -5", "X-RateLimit-Limit: 10", NULL},
     RL_FAMILY_X, 10, A, A, A, A},
    {{"X-RateLimit-Remaining: abc", "X-RateLimit-Reset: 1e3",
      "RateLimit: ;;;,,,=", "RateLimit: limit=, remaining=x, reset=-1",
      "RateLimit-Policy: w=60, \"x\";w=5", "X-RateLimit-Limit: +5", NULL},
     RL_FAMILY_NONE, A, A, A, A, A},
    {{"X-RateLimit-Remaining:   42\t", "X-RateLimit-Limit: 4 2", NULL},
     RL_FAMILY_X, A, 42, A, A, A},
    {{"X-RateLimit-Remaining: 5.5", "X-RateLimit-Reset: 1.0", NULL},
     RL_FAMILY_X, A, A, 1, A, A}, /* counts are integers; resets not */
    {{"X-RateLimit-Remaining:", "X-RateLimit-Reset: 2.", NULL},
     RL_FAMILY_NONE, A, A, A, A, A},
    {{"X-RateLimit-Remaining: 99999999999999999999999999", NULL},
     RL_FAMILY_X, A, RL_MAX, A, A, A}, /* saturates */
    {{"X-RateLimit-Limit: 10", "X-RateLimit-Remaining: 3, junk", NULL},
     RL_FAMILY_X, 10, 3, A, A, A}, /* a bad member leaves the rest */
    /* Retry-After on its own: no family */
    {{"Retry-After: 120", NULL}, RL_FAMILY_NONE, A, A, A, A, 120},
    {{"Retry-After: soon", NULL}, RL_FAMILY_NONE, A, A, A, A, A},
    {{"Retry-After: Mon, 01 Jan 2001 00:00:00 GMT",
      "X-RateLimit-Remaining: 0", NULL},
     RL_FAMILY_X, A, 0, A, A, 0}, /* a date in the past */
};

static void test_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i], i);
}

static void test_retry_after_date(void **state) {
  (void)state;
  char date[30];
  http_date_format(NOW + 90, date);
  hdr_t h = {"retry-after", 11, date, strlen(date)};
  rl_info_t r;
  assert_false(rl_parse(&h, 1, NOW, &r));
  assert_int_equal(r.retry_after_s, 90);
}

static void test_null_values_and_lengths(void **state) {
  (void)state;
  /* Lengths, not NUL terminators, bound the read. */
  const char *v = "12345";
  hdr_t h[3] = {{"X-RateLimit-Remaining", 21, v, 2},
                {"X-RateLimit-Limit", 17, NULL, 0},
                {NULL, 0, "5", 1}};
  rl_info_t r;
  assert_true(rl_parse(h, 3, NOW, &r));
  assert_int_equal(r.remaining, 12);
  assert_int_equal(r.limit, RL_ABSENT);
  h[0].name_len = 20; /* "X-RateLimit-Remainin" is no field */
  assert_false(rl_parse(h, 1, NOW, &r));
}

static void test_names(void **state) {
  (void)state;
  assert_true(rl_is_field("RATELIMIT-POLICY", 16));
  assert_true(rl_is_field("retry-after", 11));
  assert_false(rl_is_field("ratelimit-", 10));
  assert_string_equal(rl_family_name(RL_FAMILY_IETF), "ietf");
  assert_string_equal(rl_family_name(RL_FAMILY_IETF_FIELDS), "ietf-fields");
  assert_string_equal(rl_family_name(RL_FAMILY_X), "x-ratelimit");
  assert_string_equal(rl_family_name(RL_FAMILY_NONE), "none");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_retry_after_date),
      cmocka_unit_test(test_null_values_and_lengths),
      cmocka_unit_test(test_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
