/* test_cachecontrol.c — Cache-Control directives and HTTP-dates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "cachecontrol.h"

static ccontrol_t parse(const char *v) {
  ccontrol_t cc;
  cc_init(&cc);
  cc_parse(&cc, v, strlen(v));
  return cc;
}

static void test_flags_and_numbers(void **state) {
  (void)state;
  ccontrol_t c = parse("public, max-age=60, S-MAXAGE=\"120\", stale-while-revalidate=30");
  assert_true(c.public_);
  assert_int_equal(c.max_age, 60);
  assert_int_equal(c.s_maxage, 120); /* case-insensitive, quoted accepted */
  assert_int_equal(c.stale_while_revalidate, 30);
  assert_int_equal(c.stale_if_error, CC_ABSENT);
  c = parse("no-store,private ,  no-cache=\"Set-Cookie, X\",must-revalidate");
  assert_true(c.no_store && c.private_ && c.no_cache && c.must_revalidate);
  assert_int_equal(c.max_age, CC_ABSENT);
  c = parse("max-stale, min-fresh=5, only-if-cached");
  assert_int_equal(c.max_stale, INT64_MAX);
  assert_int_equal(c.min_fresh, 5);
  assert_true(c.only_if_cached);
}

static void test_invalid_and_duplicates_mean_stale(void **state) {
  (void)state;
  assert_int_equal(parse("max-age=abc").max_age, 0);
  assert_int_equal(parse("max-age=").max_age, 0);
  assert_int_equal(parse("max-age").max_age, 0);
  assert_int_equal(parse("max-age=-5").max_age, 0);
  assert_int_equal(parse("max-age=60, max-age=60").max_age, 60);
  assert_int_equal(parse("max-age=60, max-age=30").max_age, 0);
  ccontrol_t c;
  cc_init(&c); /* two field lines accumulate */
  cc_parse(&c, "max-age=10", 10);
  cc_parse(&c, "private", 7);
  assert_int_equal(c.max_age, 10);
  assert_true(c.private_);
  assert_int_equal(parse("max-age=99999999999999").max_age, 2147483648LL);
  c = parse("foo=\"a,b\", bar, max-age=3, =x, ,");
  assert_int_equal(c.max_age, 3); /* unknown ignored, quoted comma skipped */
}

static void test_dates(void **state) {
  (void)state;
  time_t t;
  assert_true(http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT", 29, &t));
  assert_int_equal(t, 784111777);
  assert_true(http_date_parse("Sunday, 06-Nov-94 08:49:37 GMT", 30, &t));
  assert_int_equal(t, 784111777);
  assert_true(http_date_parse("Sun Nov  6 08:49:37 1994", 24, &t));
  assert_int_equal(t, 784111777);
  assert_false(http_date_parse("0", 1, &t));
  assert_false(http_date_parse("-1", 2, &t));
  assert_false(http_date_parse("Sun, 31 Feb 1994 08:49:37 GMT", 29, &t));
  assert_false(http_date_parse("Sun, 06 Nov 1994 25:49:37 GMT", 29, &t));
  assert_false(http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT junk", 34, &t));
  char buf[30];
  http_date_format(784111777, buf);
  assert_string_equal(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flags_and_numbers),
      cmocka_unit_test(test_invalid_and_duplicates_mean_stale),
      cmocka_unit_test(test_dates),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
