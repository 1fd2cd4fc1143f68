/* test_breaker.c — the circuit breaker's transitions, driven by the fake
 * clock (no sleeps): trip rules, open duration, half-open probes,
 * Retry-After, late outcomes, statistics and option validation. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h"

/* A breaker on a fresh fake clock; tweak the options before calling. */
typedef struct fixture {
  fake_clock_t fc;
  coalesce_breaker_opts_t o;
  coalesce_breaker_t *b;
} fixture_t;

static void fx_opts(fixture_t *f) {
  fake_clock_init(&f->fc);
  coalesce_breaker_opts_init(&f->o);
  f->o.clock = &f->fc.clock;
  f->b = NULL;
}

static void fx_new(fixture_t *f) {
  assert_int_equal(coalesce_breaker_new(&f->o, &f->b), 0);
  assert_non_null(f->b);
}

static void fail_n(coalesce_breaker_t *b, unsigned n) {
  for (unsigned i = 0; i < n; i++) {
    assert_int_equal(coalesce_breaker_allow(b), 0);
    coalesce_breaker_record(b, false, 0);
  }
}

static void succeed_n(coalesce_breaker_t *b, unsigned n) {
  for (unsigned i = 0; i < n; i++) {
    assert_int_equal(coalesce_breaker_allow(b), 0);
    coalesce_breaker_record(b, true, 0);
  }
}

static void assert_open(coalesce_breaker_t *b) {
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_OPEN);
  assert_int_equal(coalesce_breaker_allow(b), COALESCE_ECIRCUIT_OPEN);
}

/* Trips a breaker built with default rules (5 consecutive failures). */
static void trip(coalesce_breaker_t *b, unsigned consecutive) {
  fail_n(b, consecutive);
  assert_open(b);
}

static void test_defaults_and_names(void **state) {
  (void)state;
  coalesce_breaker_opts_t o;
  coalesce_breaker_opts_init(&o);
  assert_int_equal(o.consecutive_failures, 5);
  assert_int_equal(o.window, 0);
  assert_true(o.failure_rate == 0.5);
  assert_int_equal(o.open_ns, SEC(30));
  assert_int_equal(o.max_open_ns, SEC(3600));
  assert_int_equal(o.half_open_probes, 1);
  assert_null(o.clock);

  coalesce_breaker_t *b = NULL;
  assert_int_equal(coalesce_breaker_new(NULL, &b), 0); /* NULL: defaults */
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_CLOSED);
  fail_n(b, 4);
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_CLOSED);
  fail_n(b, 1);
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_OPEN);
  /* real clock: 30 s cannot have passed */
  assert_true(coalesce_breaker_retry_in(b) > SEC(29));
  coalesce_breaker_free(b);
  coalesce_breaker_free(NULL);

  assert_string_equal(coalesce_breaker_state_name(COALESCE_BREAKER_CLOSED),
                      "closed");
  assert_string_equal(coalesce_breaker_state_name(COALESCE_BREAKER_OPEN),
                      "open");
  assert_string_equal(coalesce_breaker_state_name(COALESCE_BREAKER_HALF_OPEN),
                      "half_open");
}

static void test_consecutive_threshold_and_reset_by_success(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 3;
  fx_new(&f);
  fail_n(f.b, 2);
  succeed_n(f.b, 1); /* breaks the run */
  fail_n(f.b, 2);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  assert_int_equal(coalesce_breaker_retry_in(f.b), 0);
  fail_n(f.b, 1);
  assert_open(f.b);
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(30));
  coalesce_breaker_free(f.b);
}

static void test_consecutive_zero_disables_rule(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 0;
  fx_new(&f);
  fail_n(f.b, 1000);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  coalesce_breaker_free(f.b);
}

static void test_rate_needs_min_volume(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 0;
  f.o.window = 10;
  f.o.min_volume = 6;
  fx_new(&f);
  fail_n(f.b, 5); /* 100 % failures, but only 5 outcomes */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  succeed_n(f.b, 1); /* 6 outcomes, 5/6 failed */
  assert_open(f.b);
  coalesce_breaker_free(f.b);
}

static void test_rate_trips_at_threshold_not_below(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 0;
  f.o.window = 10;
  f.o.min_volume = 10;
  f.o.failure_rate = 0.3;
  fx_new(&f);
  succeed_n(f.b, 8);
  fail_n(f.b, 2); /* 2/10 < 0.3 */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  fail_n(f.b, 1); /* window now S*7 F*3: exactly 0.3 */
  assert_open(f.b);
  coalesce_breaker_free(f.b);
}

static void test_rate_window_slides(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 0;
  f.o.window = 4;
  f.o.min_volume = 4;
  fx_new(&f);
  fail_n(f.b, 1); /* this failure must leave the window as it slides */
  succeed_n(f.b, 20);
  fail_n(f.b, 1); /* last four: S S S F */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  fail_n(f.b, 1); /* S S F F: 3/23 overall, but 2/4 in the window */
  assert_open(f.b);
  coalesce_breaker_free(f.b);
}

static void test_open_duration(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.open_ns = SEC(10);
  fx_new(&f);
  trip(f.b, 5);
  fake_clock_advance(&f.fc, SEC(10) - 1);
  assert_open(f.b);
  assert_int_equal(coalesce_breaker_retry_in(f.b), 1);
  fake_clock_advance(&f.fc, 1);
  assert_int_equal(coalesce_breaker_retry_in(f.b), 0);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_HALF_OPEN);
  assert_int_equal(coalesce_breaker_allow(f.b), 0); /* the probe */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_HALF_OPEN);
  coalesce_breaker_free(f.b);
}

static void test_state_view_takes_no_probe(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  fx_new(&f);
  trip(f.b, 5);
  fake_clock_advance(&f.fc, SEC(30));
  coalesce_stats_t s = {0};
  for (int i = 0; i < 3; i++)
    assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_HALF_OPEN);
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_state, COALESCE_BREAKER_HALF_OPEN);
  assert_int_equal(s.breaker_half_opened, 0); /* a view, not a transition */
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  assert_int_equal(coalesce_breaker_allow(f.b), COALESCE_ECIRCUIT_OPEN);
  coalesce_breaker_free(f.b);
}

static void test_half_open_probe_limit_and_close(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 2;
  f.o.half_open_probes = 3;
  fx_new(&f);
  trip(f.b, 2);
  fake_clock_advance(&f.fc, SEC(30));
  for (int i = 0; i < 3; i++)
    assert_int_equal(coalesce_breaker_allow(f.b), 0);
  assert_int_equal(coalesce_breaker_allow(f.b), COALESCE_ECIRCUIT_OPEN);
  coalesce_breaker_record(f.b, true, 0);
  coalesce_breaker_record(f.b, true, 0);
  /* two of three: still half-open, and no slot is handed out again */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_HALF_OPEN);
  assert_int_equal(coalesce_breaker_allow(f.b), COALESCE_ECIRCUIT_OPEN);
  coalesce_breaker_record(f.b, true, 0);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  for (int i = 0; i < 10; i++)
    assert_int_equal(coalesce_breaker_allow(f.b), 0);
  /* the run that tripped it is forgotten: one failure does not reopen */
  coalesce_breaker_record(f.b, false, 0);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  coalesce_breaker_free(f.b);
}

static void test_half_open_one_failure_reopens(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.half_open_probes = 2;
  f.o.open_ns = SEC(5);
  fx_new(&f);
  trip(f.b, 5);
  fake_clock_advance(&f.fc, SEC(5));
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_record(f.b, true, 0);
  coalesce_breaker_record(f.b, false, 0);
  assert_open(f.b);
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(5));
  /* and the next half-open period has fresh slots */
  fake_clock_advance(&f.fc, SEC(5));
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  assert_int_equal(coalesce_breaker_allow(f.b), COALESCE_ECIRCUIT_OPEN);
  coalesce_breaker_free(f.b);
}

static void test_window_reset_on_close(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 0;
  f.o.window = 4;
  f.o.min_volume = 4;
  fx_new(&f);
  fail_n(f.b, 4);
  assert_open(f.b);
  fake_clock_advance(&f.fc, SEC(30));
  succeed_n(f.b, 1); /* the probe closes it */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  /* with the old F F F F still in the ring, this S would make 3/4 */
  succeed_n(f.b, 1);
  fail_n(f.b, 1);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  coalesce_breaker_free(f.b);
}

static void test_retry_after_opens_exactly(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  fx_new(&f);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_record(f.b, false, SEC(7)); /* one failure is enough */
  assert_open(f.b);
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(7));
  fake_clock_advance(&f.fc, SEC(7) - 1);
  assert_open(f.b);
  fake_clock_advance(&f.fc, 1);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_HALF_OPEN);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);

  /* a probe answered 503 + Retry-After: open for that, not open_ns */
  coalesce_breaker_record(f.b, false, SEC(2));
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(2));
  coalesce_breaker_free(f.b);
}

static void test_retry_after_is_capped(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.max_open_ns = SEC(60);
  fx_new(&f);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_record(f.b, false, SEC(86400));
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(60));
  fake_clock_advance(&f.fc, SEC(60));
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_free(f.b);
}

static void test_retry_after_with_success_is_a_success(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 2;
  fx_new(&f);
  fail_n(f.b, 1);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_record(f.b, true, SEC(10));
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  fail_n(f.b, 1); /* the success broke the run */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);
  coalesce_stats_t s = {0};
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_successes, 1);
  assert_int_equal(s.breaker_opened, 0);
  coalesce_breaker_free(f.b);
}

static void test_retry_after_while_open_never_shortens(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  fx_new(&f);
  trip(f.b, 5); /* open for 30 s */
  coalesce_breaker_record(f.b, false, SEC(1));
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(30));
  coalesce_breaker_record(f.b, false, SEC(90));
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(90));
  coalesce_stats_t s = {0};
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_opened, 1); /* extended, not reopened */
  coalesce_breaker_free(f.b);
}

static void test_late_outcomes_do_not_move_state(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.half_open_probes = 2;
  fx_new(&f);
  /* calls allowed while closed, still out when it opens */
  for (int i = 0; i < 6; i++)
    assert_int_equal(coalesce_breaker_allow(f.b), 0);
  for (int i = 0; i < 5; i++)
    coalesce_breaker_record(f.b, false, 0);
  assert_open(f.b);
  fake_clock_advance(&f.fc, SEC(10));
  coalesce_breaker_record(f.b, true, 0); /* no probe was ever out */
  assert_open(f.b);
  assert_int_equal(coalesce_breaker_retry_in(f.b), SEC(20));

  /* half-open with no probe out: a late failure is not a probe failure */
  fake_clock_advance(&f.fc, SEC(20));
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_record(f.b, true, 0);  /* probe 1 of 2 succeeded */
  coalesce_breaker_record(f.b, false, 0); /* late */
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_HALF_OPEN);
  assert_int_equal(coalesce_breaker_allow(f.b), 0);
  coalesce_breaker_record(f.b, true, 0);
  assert_int_equal(coalesce_breaker_state(f.b), COALESCE_BREAKER_CLOSED);

  coalesce_stats_t s = {0};
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_failures, 6);
  assert_int_equal(s.breaker_successes, 3);
  coalesce_breaker_free(f.b);
}

static void test_stats_count_a_full_cycle(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.consecutive_failures = 2;
  fx_new(&f);
  succeed_n(f.b, 3);
  fail_n(f.b, 2); /* opened 1 */
  for (int i = 0; i < 4; i++)
    assert_int_equal(coalesce_breaker_allow(f.b), COALESCE_ECIRCUIT_OPEN);
  fake_clock_advance(&f.fc, SEC(30));
  fail_n(f.b, 1); /* half_opened 1, probe fails: opened 2 */
  fake_clock_advance(&f.fc, SEC(30));
  succeed_n(f.b, 1); /* half_opened 2, closed 1 */

  coalesce_stats_t s = {0};
  s.total_requests = 77; /* not the breaker's: left alone */
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_state, COALESCE_BREAKER_CLOSED);
  assert_int_equal(s.breaker_opened, 2);
  assert_int_equal(s.breaker_half_opened, 2);
  assert_int_equal(s.breaker_closed, 1);
  assert_int_equal(s.breaker_successes, 4);
  assert_int_equal(s.breaker_failures, 3);
  assert_int_equal(s.breaker_rejections, 4);
  assert_int_equal(s.total_requests, 77);

  fail_n(f.b, 2);
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_state, COALESCE_BREAKER_OPEN);
  coalesce_breaker_free(f.b);
}

static void test_invalid_opts(void **state) {
  (void)state;
  coalesce_breaker_opts_t o;
  coalesce_breaker_t *b = (coalesce_breaker_t *)&o; /* must be cleared */
  const double bad_rates[] = {0.0, -0.1, 1.5, NAN};
  for (size_t i = 0; i < sizeof(bad_rates) / sizeof(bad_rates[0]); i++) {
    coalesce_breaker_opts_init(&o);
    o.failure_rate = bad_rates[i];
    assert_int_equal(coalesce_breaker_new(&o, &b), COALESCE_EINVAL);
    assert_null(b);
  }
  coalesce_breaker_opts_init(&o);
  o.half_open_probes = 0;
  assert_int_equal(coalesce_breaker_new(&o, &b), COALESCE_EINVAL);
  coalesce_breaker_opts_init(&o);
  o.window = 5;
  o.min_volume = 6;
  assert_int_equal(coalesce_breaker_new(&o, &b), COALESCE_EINVAL);
  assert_int_equal(coalesce_breaker_new(NULL, NULL), COALESCE_EINVAL);

  /* the edges that are allowed */
  coalesce_breaker_opts_init(&o);
  o.failure_rate = 1.0;
  o.window = 6;
  o.min_volume = 6;
  assert_int_equal(coalesce_breaker_new(&o, &b), 0);
  coalesce_breaker_free(b);
  o.window = 0; /* rate rule off: min_volume unused */
  assert_int_equal(coalesce_breaker_new(&o, &b), 0);
  coalesce_breaker_free(b);
}

/* Probe slots are handed out under the lock: racing callers get exactly
 * half_open_probes of them. */
typedef struct race {
  coalesce_breaker_t *b;
  _Atomic unsigned granted;
} race_t;

static void *race_allow(void *arg) {
  race_t *r = arg;
  for (int i = 0; i < 200; i++)
    if (coalesce_breaker_allow(r->b) == 0)
      atomic_fetch_add(&r->granted, 1);
  return NULL;
}

static void test_probe_limit_under_contention(void **state) {
  (void)state;
  fixture_t f;
  fx_opts(&f);
  f.o.half_open_probes = 3;
  fx_new(&f);
  trip(f.b, 5);
  fake_clock_advance(&f.fc, SEC(30));
  race_t r = {.b = f.b};
  atomic_init(&r.granted, 0);
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&t[i], NULL, race_allow, &r), 0);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  assert_int_equal(atomic_load(&r.granted), 3);
  coalesce_stats_t s = {0};
  coalesce_breaker_stats(f.b, &s);
  assert_int_equal(s.breaker_half_opened, 1);
  assert_int_equal(s.breaker_rejections, 800 - 3 + 1); /* +1 from trip() */
  coalesce_breaker_free(f.b);
}

/* A call allowed but never made gives its probe slot back, no outcome. */
static void test_cancel_returns_probe_without_outcome(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_breaker_opts_t o;
  coalesce_breaker_opts_init(&o);
  o.consecutive_failures = 1;
  o.open_ns = SEC(1);
  o.clock = &fc.clock;
  coalesce_breaker_t *b;
  assert_int_equal(coalesce_breaker_new(&o, &b), 0);
  assert_int_equal(coalesce_breaker_allow(b), 0);
  coalesce_breaker_record(b, false, 0);
  fake_clock_advance(&fc, SEC(2));
  assert_int_equal(coalesce_breaker_allow(b), 0); /* the one probe */
  assert_int_equal(coalesce_breaker_allow(b), COALESCE_ECIRCUIT_OPEN);
  coalesce_breaker_cancel(b);
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_HALF_OPEN);
  assert_int_equal(coalesce_breaker_allow(b), 0); /* handed out again */
  coalesce_breaker_record(b, true, 0);
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_CLOSED);
  coalesce_stats_t st = {0};
  coalesce_breaker_stats(b, &st);
  assert_int_equal(st.breaker_failures, 1); /* the cancel recorded nothing */
  assert_int_equal(st.breaker_successes, 1);
  /* closed: cancel changes nothing */
  assert_int_equal(coalesce_breaker_allow(b), 0);
  coalesce_breaker_cancel(b);
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_CLOSED);
  coalesce_breaker_free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancel_returns_probe_without_outcome),
      cmocka_unit_test(test_defaults_and_names),
      cmocka_unit_test(test_consecutive_threshold_and_reset_by_success),
      cmocka_unit_test(test_consecutive_zero_disables_rule),
      cmocka_unit_test(test_rate_needs_min_volume),
      cmocka_unit_test(test_rate_trips_at_threshold_not_below),
      cmocka_unit_test(test_rate_window_slides),
      cmocka_unit_test(test_open_duration),
      cmocka_unit_test(test_state_view_takes_no_probe),
      cmocka_unit_test(test_half_open_probe_limit_and_close),
      cmocka_unit_test(test_half_open_one_failure_reopens),
      cmocka_unit_test(test_window_reset_on_close),
      cmocka_unit_test(test_retry_after_opens_exactly),
      cmocka_unit_test(test_retry_after_is_capped),
      cmocka_unit_test(test_retry_after_with_success_is_a_success),
      cmocka_unit_test(test_retry_after_while_open_never_shortens),
      cmocka_unit_test(test_late_outcomes_do_not_move_state),
      cmocka_unit_test(test_stats_count_a_full_cycle),
      cmocka_unit_test(test_invalid_opts),
      cmocka_unit_test(test_probe_limit_under_contention),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
