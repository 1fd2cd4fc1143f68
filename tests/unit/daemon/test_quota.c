/* test_quota.c — the local call budget (token bucket, period cap and its
 * UTC-aligned windows, route chains), the observed upstream quota,
 * quota_low, obeying the upstream, the config value parsers, and takes
 * from several threads. The fake clock moves time (wall_offset_ns pins it
 * to a UTC date); nothing sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>

#include "fake_clock.h"
#include "quota.h"

#define NOW ((time_t)1700000000)

static quota_t *make(fake_clock_t *fc, double rate, uint32_t burst,
                     uint64_t period_ms, uint64_t period_max) {
  quota_opts_t o;
  quota_opts_init(&o);
  o.rate_per_sec = rate;
  o.burst = burst;
  o.period_ms = period_ms;
  o.period_max = period_max;
  o.clock = &fc->clock;
  quota_t *q = quota_new(&o);
  assert_non_null(q);
  return q;
}

static int takes(quota_t *q, int n) {
  int ok = 0;
  for (int i = 0; i < n; i++)
    ok += quota_take(q, NULL) == 0;
  return ok;
}

/* A period cap whose wall clock reads `wall_s` (Unix s) right now. */
static quota_t *make_at(fake_clock_t *fc, uint64_t period_ms, uint64_t max,
                        int64_t wall_s) {
  quota_opts_t o;
  quota_opts_init(&o);
  o.period_ms = period_ms;
  o.period_max = max;
  o.clock = &fc->clock;
  o.wall_offset_ns = wall_s * (int64_t)COALESCE_NS_PER_SEC -
                     (int64_t)coalesce_clock_now(&fc->clock);
  quota_t *q = quota_new(&o);
  assert_non_null(q);
  return q;
}

static uint64_t reset_in_ms(quota_t *q) {
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  return s.period_reset_in_ms;
}

/* "Name: value" lines -> hdr_t, then quota_observe. */
static void observe(quota_t *q, int status, const char *const *lines) {
  hdr_t h[8];
  size_t n = 0;
  for (; lines[n] != NULL; n++) {
    const char *c = strchr(lines[n], ':');
    h[n] = (hdr_t){lines[n], (size_t)(c - lines[n]), c + 1, strlen(c + 1)};
  }
  quota_observe(q, h, n, status, NOW);
}

/* ------------------------------------------------------------ the bucket */

static void test_burst_then_one_token_per_interval(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make(&fc, 10, 10, 0, 0);
  uint64_t wait = 0;
  int ok = 0;
  for (int i = 0; i < 50; i++) {
    int rc = quota_take(q, &wait);
    if (rc == 0) {
      ok++;
      assert_int_equal(wait, 0);
    } else {
      assert_int_equal(rc, QUOTA_EMPTY);
      assert_int_equal(wait, MS(100)); /* the next token, not later */
    }
  }
  assert_int_equal(ok, 10);
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_int_equal(s.granted, 10);
  assert_int_equal(s.rejections, 40);
  assert_true(s.tokens < 1e-9);

  fake_clock_advance(&fc, MS(99));
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, MS(1));
  fake_clock_advance(&fc, MS(1));
  assert_int_equal(takes(q, 5), 1); /* +1 token per 100 ms */
  fake_clock_advance(&fc, MS(250));
  assert_int_equal(takes(q, 5), 2);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, MS(50));
  quota_snapshot(q, &s);
  assert_true(fabs(s.tokens - 0.5) < 1e-9);

  fake_clock_advance(&fc, SEC(3600)); /* idle time saves only one burst */
  assert_int_equal(takes(q, 50), 10);
  quota_free(q);
}

static void test_default_burst_and_unlimited(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make(&fc, 2.5, 0, 0, 0); /* burst: one second's worth, up */
  assert_int_equal(takes(q, 10), 3);
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_true(s.has_rate);
  assert_int_equal(s.burst, 3);
  quota_free(q);

  q = make(&fc, 0.5, 0, 0, 0); /* slower than 1/s: burst 1, 2 s apart */
  uint64_t wait;
  assert_int_equal(takes(q, 3), 1);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(2));
  quota_free(q);

  q = make(&fc, 0, 0, 0, 0); /* no budget: always granted */
  assert_int_equal(takes(q, 10000), 10000);
  quota_snapshot(q, &s);
  assert_false(s.has_rate);
  assert_false(s.has_period);
  assert_false(s.low);
  quota_free(q);
  quota_free(NULL);
}

/* ---------------------------------------------------------- period cap */

/* align_start: the old fixed windows from quota_new(). */
static void test_period_cap_aligned_to_start(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_opts_t o;
  quota_opts_init(&o);
  o.period_ms = 86400 * 1000;
  o.period_max = 5;
  o.clock = &fc.clock;
  o.wall_offset_ns = 1700000000 * (int64_t)COALESCE_NS_PER_SEC; /* unused */
  o.align_start = true;
  quota_t *q = quota_new(&o);
  assert_non_null(q);
  fake_clock_advance(&fc, SEC(3600));
  assert_int_equal(takes(q, 5), 5);
  uint64_t wait;
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(86400 - 3600));
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_true(s.has_period);
  assert_int_equal(s.period_used, 5);
  assert_int_equal(s.period_remaining, 0);
  assert_int_equal(s.period_reset_in_ms, (86400 - 3600) * 1000);

  fake_clock_advance(&fc, SEC(86400 - 3600) - 1);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, 1);
  fake_clock_advance(&fc, 1); /* the boundary */
  quota_snapshot(q, &s);
  assert_int_equal(s.period_used, 0);
  assert_int_equal(s.period_remaining, 5);
  assert_int_equal(takes(q, 3), 3);
  quota_snapshot(q, &s);
  assert_int_equal(s.period_used, 3);
  assert_int_equal(s.period_remaining, 2);

  /* Idle for several periods: windows stay aligned to the start. */
  fake_clock_advance(&fc, SEC(3 * 86400 + 10));
  assert_int_equal(takes(q, 9), 5);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(86400 - 10));
  quota_free(q);
}

static void test_bucket_and_period_spend_together(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make(&fc, 1, 1, 10000, 2);
  uint64_t wait;
  assert_int_equal(quota_take(q, NULL), 0);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY); /* bucket */
  assert_int_equal(wait, SEC(1));
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_int_equal(s.period_used, 1); /* the refused call cost nothing */
  fake_clock_advance(&fc, SEC(1));
  assert_int_equal(quota_take(q, NULL), 0);
  fake_clock_advance(&fc, SEC(1));
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY); /* period */
  assert_int_equal(wait, SEC(8));
  quota_snapshot(q, &s);
  assert_true(fabs(s.tokens - 1.0) < 1e-9); /* the bucket kept its token */
  quota_free(q);
}

/* ------------------------------------------------- UTC-aligned windows */

#define T_2024_03_10_235950 INT64_C(1710115190)
#define T_2024_03_11 INT64_C(1710115200) /* a Monday */
#define T_2024_03_13_120730 INT64_C(1710331650)

static void test_day_resets_at_utc_midnight(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make_at(&fc, 86400 * 1000, 5, T_2024_03_10_235950);
  /* The first window is 10 s long but holds the whole budget. */
  assert_int_equal(reset_in_ms(q), 10000);
  assert_int_equal(takes(q, 5), 5);
  uint64_t wait;
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(10)); /* to 00:00:00 UTC, not start + 24 h */
  fake_clock_advance(&fc, SEC(10) - 1);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, 1);
  assert_int_equal(reset_in_ms(q), 1); /* rounded up, never 0 early */
  fake_clock_advance(&fc, 1);          /* 00:00:00 */
  assert_int_equal(reset_in_ms(q), 86400 * 1000);
  assert_int_equal(takes(q, 9), 5);
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(86400));
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_int_equal(s.period_ms, 86400 * 1000);
  assert_int_equal(s.period_used, 5);
  assert_int_equal(s.rejections, 3 + 4);

  /* The wall clock steps back across midnight: the day's use stays. */
  fake_clock_advance(&fc, (uint64_t)0 - SEC(5)); /* 23:59:55 */
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(5));
  quota_free(q);
}

static void test_month_has_its_calendar_length(void **state) {
  (void)state;
  static const struct {
    int64_t start; /* the 1st, 00:00 UTC */
    uint64_t days;
  } t[] = {
      {INT64_C(1830297600), 31}, /* 2028-01 */
      {INT64_C(1832976000), 29}, /* 2028-02, leap */
      {INT64_C(1801440000), 28}, /* 2027-02 */
      {INT64_C(1838160000), 30}, /* 2028-04 */
      {INT64_C(1827619200), 31}, /* 2027-12, into the next year */
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    fake_clock_t fc;
    fake_clock_init(&fc);
    quota_t *q = make_at(&fc, QUOTA_MONTH_MS, 1, t[i].start);
    uint64_t wait;
    assert_int_equal(quota_take(q, NULL), 0);
    assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
    if (wait != SEC(t[i].days * 86400))
      fail_msg("month %zu: wait %llu s, want %llu days", i,
               (unsigned long long)(wait / COALESCE_NS_PER_SEC),
               (unsigned long long)t[i].days);
    fake_clock_advance(&fc, wait - 1);
    assert_int_equal(quota_take(q, NULL), QUOTA_EMPTY);
    fake_clock_advance(&fc, 1); /* the next 1st */
    assert_int_equal(quota_take(q, NULL), 0);
    quota_free(q);
  }

  /* Mid-month start: the partial window ends on the 1st; stats show the
   * mean month. 2028-02-15 12:00 -> 2028-03-01 = 14.5 days. */
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make_at(&fc, QUOTA_MONTH_MS, 10, INT64_C(1834228800));
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_int_equal(s.period_reset_in_ms, (uint64_t)(14 * 86400 + 43200) * 1000);
  assert_int_equal(s.period_ms, QUOTA_MONTH_MS);
  quota_free(q);

  /* Three months: quarters from January. Feb 15 -> Apr 1 2028. */
  q = make_at(&fc, 3 * QUOTA_MONTH_MS, 10, INT64_C(1834228800));
  assert_int_equal(reset_in_ms(q), (uint64_t)(1838160000 - 1834228800) * 1000);
  quota_free(q);

  /* 30 days is a duration, not a month: multiples since the epoch. */
  q = make_at(&fc, 2592000000, 10, INT64_C(1834228800));
  assert_int_equal(reset_in_ms(q),
                   (2592000 - 1834228800 % 2592000) * UINT64_C(1000));
  quota_free(q);
}

static void test_durations_align_to_the_epoch(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  /* Two instances started 4.5 min apart share the :15 boundary. */
  quota_t *a = make_at(&fc, 15 * 60000, 2, T_2024_03_13_120730);
  fake_clock_advance(&fc, SEC(270));
  quota_t *b = make_at(&fc, 15 * 60000, 2, T_2024_03_13_120730 + 270);
  assert_int_equal(takes(a, 3), 2);
  assert_int_equal(takes(b, 3), 2);
  uint64_t wa, wb;
  assert_int_equal(quota_take(a, &wa), QUOTA_EMPTY);
  assert_int_equal(quota_take(b, &wb), QUOTA_EMPTY);
  assert_int_equal(wa, SEC(180)); /* 12:12:00 -> 12:15:00 */
  assert_int_equal(wb, SEC(180));
  fake_clock_advance(&fc, SEC(180));
  assert_int_equal(takes(a, 3), 2);
  assert_int_equal(reset_in_ms(a), 15 * 60000);
  quota_free(a);
  quota_free(b);

  /* reset_in at various points of an hour, a 2 h and a 1 s window. */
  fake_clock_init(&fc);
  a = make_at(&fc, 3600000, 1, T_2024_03_13_120730); /* 12:07:30 */
  b = make_at(&fc, 2 * 3600000, 1, T_2024_03_13_120730);
  quota_t *c = make_at(&fc, 1000, 1, T_2024_03_13_120730);
  assert_int_equal(reset_in_ms(a), (52 * 60 + 30) * 1000);
  assert_int_equal(reset_in_ms(b), (112 * 60 + 30) * 1000); /* to 14:00 */
  assert_int_equal(reset_in_ms(c), 1000);
  fake_clock_advance(&fc, SEC(52 * 60 + 29) + MS(500)); /* 12:59:59.5 */
  assert_int_equal(reset_in_ms(a), 500);
  assert_int_equal(reset_in_ms(b), 3600000 + 500);
  assert_int_equal(reset_in_ms(c), 500);
  fake_clock_advance(&fc, MS(500) - 1); /* 1 ns before 13:00 */
  assert_int_equal(reset_in_ms(a), 1);
  fake_clock_advance(&fc, 1);
  assert_int_equal(reset_in_ms(a), 3600000);
  assert_int_equal(reset_in_ms(b), 3600000);
  quota_free(a);
  quota_free(b);
  quota_free(c);

  /* Weeks start on Monday 00:00 UTC (2024-03-11), not the epoch's
   * Thursday. From Wednesday 12:07:30: 4 d 11:52:30 left. */
  a = make_at(&fc, 7 * 86400000, 1, T_2024_03_13_120730);
  assert_int_equal(reset_in_ms(a),
                   (uint64_t)(T_2024_03_11 + 7 * 86400 - T_2024_03_13_120730) *
                       1000);
  quota_free(a);
}

/* ------------------------------------------------------- route chains */

static void test_route_and_upstream_spend_together(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *up = make(&fc, 0, 0, 60000, 3);
  quota_opts_t o;
  quota_opts_init(&o);
  o.rate_per_sec = 2;
  o.burst = 2;
  o.parent = up;
  o.clock = &fc.clock;
  quota_t *a = quota_new(&o);
  quota_t *b = quota_new(&o);
  assert_non_null(a);
  assert_non_null(b);

  assert_int_equal(takes(a, 5), 2); /* the route's burst */
  assert_int_equal(takes(b, 5), 1); /* the upstream's third call */
  uint64_t wait;
  assert_int_equal(quota_take(b, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(20)); /* wall 00:16:40 UTC: the next minute */
  quota_snapshot_t s;
  quota_snapshot(b, &s);
  assert_int_equal(s.granted, 1);
  assert_true(fabs(s.tokens - 1.0) < 1e-9); /* b was not charged */
  assert_int_equal(s.rejections, 0);        /* nor did it refuse */
  quota_snapshot(up, &s);
  assert_int_equal(s.granted, 3);
  assert_int_equal(s.period_used, 3);
  assert_int_equal(s.rejections, 5);
  quota_snapshot(a, &s);
  assert_int_equal(s.rejections, 3);

  /* Observations go to the upstream too. */
  observe(b, 429, (const char *[]){"X-RateLimit-Remaining: 0", NULL});
  quota_snapshot(up, &s);
  assert_int_equal(s.upstream_429s, 1);
  assert_int_equal(s.remaining, 0);

  /* Chains are two deep at most and share one clock. */
  o.parent = a;
  assert_null(quota_new(&o));
  o.parent = up;
  o.clock = NULL;
  assert_null(quota_new(&o));
  quota_free(a);
  quota_free(b);
  quota_free(up);
}

/* ------------------------------------------------------------- threads */

#define THREADS 4

typedef struct racer {
  quota_t *q;
  pthread_barrier_t *start;
  int n;
  int granted;
} racer_t;

static void *race_take(void *arg) {
  racer_t *r = arg;
  pthread_barrier_wait(r->start);
  for (int i = 0; i < r->n; i++)
    r->granted += quota_take(r->q, NULL) == 0;
  return NULL;
}

typedef struct ticker {
  fake_clock_t *fc;
  pthread_barrier_t *start;
  int steps;
} ticker_t;

static void *tick(void *arg) {
  ticker_t *t = arg;
  pthread_barrier_wait(t->start);
  for (int i = 0; i < t->steps; i++)
    fake_clock_advance(t->fc, MS(1));
  return NULL;
}

static int race(quota_t *const *qs, int n_each, fake_clock_t *fc, int ticks) {
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, THREADS + (ticks > 0));
  pthread_t th[THREADS + 1];
  racer_t r[THREADS];
  ticker_t tk = {fc, &start, ticks};
  for (int i = 0; i < THREADS; i++) {
    r[i] = (racer_t){qs[i], &start, n_each, 0};
    assert_int_equal(pthread_create(&th[i], NULL, race_take, &r[i]), 0);
  }
  if (ticks > 0)
    assert_int_equal(pthread_create(&th[THREADS], NULL, tick, &tk), 0);
  int total = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    total += r[i].granted;
  }
  if (ticks > 0)
    pthread_join(th[THREADS], NULL);
  pthread_barrier_destroy(&start);
  return total;
}

static void test_concurrent_takes_never_exceed_budget(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);

  /* Frozen time: exactly the burst, however the threads interleave. */
  quota_t *q = make(&fc, 10, 100, 0, 0);
  quota_t *qs[THREADS] = {q, q, q, q};
  assert_int_equal(race(qs, 2000, &fc, 0), 100);
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_int_equal(s.granted, 100);
  assert_int_equal(s.rejections, 4 * 2000 - 100);
  quota_free(q);

  /* Time moving underneath: 1000 ms at 100/s adds at most 100 tokens,
   * and the period cap holds whatever the bucket says. */
  q = make(&fc, 100, 50, 3600 * 1000, 120);
  for (int i = 0; i < THREADS; i++)
    qs[i] = q;
  int got = race(qs, 3000, &fc, 1000);
  assert_true(got >= 50 && got <= 120); /* the burst is there at once */
  quota_snapshot(q, &s);
  assert_int_equal(s.granted, (uint64_t)got);
  assert_int_equal(s.period_used, (uint64_t)got);
  quota_free(q);

  /* Two routes on one upstream, two threads each: the upstream's cap is
   * the sum's limit and every grant is charged on both levels. */
  quota_t *up = make(&fc, 0, 0, 3600 * 1000, 150);
  quota_opts_t o;
  quota_opts_init(&o);
  o.rate_per_sec = 1;
  o.burst = 100;
  o.parent = up;
  o.clock = &fc.clock;
  quota_t *a = quota_new(&o), *b = quota_new(&o);
  quota_t *routes[THREADS] = {a, b, a, b};
  assert_int_equal(race(routes, 1000, &fc, 0), 150);
  quota_snapshot_t sa, sb;
  quota_snapshot(a, &sa);
  quota_snapshot(b, &sb);
  quota_snapshot(up, &s);
  assert_int_equal(sa.granted + sb.granted, 150);
  assert_true(sa.granted <= 100 && sb.granted <= 100);
  assert_int_equal(s.granted, 150);
  quota_free(a);
  quota_free(b);
  quota_free(up);
}

/* ------------------------------------------------- observing the upstream */

static void test_observe_and_snapshot(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make(&fc, 0, 0, 0, 0);
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_false(s.observed);
  assert_int_equal(s.limit, RL_ABSENT);
  assert_int_equal(s.reset_in_s, RL_ABSENT);

  observe(q, 200,
          (const char *[]){"X-RateLimit-Limit: 5000",
                           "X-RateLimit-Remaining: 4000",
                           "X-RateLimit-Reset: 1700000060", NULL});
  fake_clock_advance(&fc, SEC(10));
  quota_snapshot(q, &s);
  assert_true(s.observed);
  assert_int_equal(s.source, RL_FAMILY_X);
  assert_int_equal(s.limit, 5000);
  assert_int_equal(s.remaining, 4000);
  assert_int_equal(s.reset_in_s, 50);
  assert_int_equal(s.observed_at, NOW);
  assert_int_equal(s.observed_age_ms, 10000);
  assert_int_equal(s.observations, 1);

  /* A response without a limit keeps the known one; one without any
   * rate-limit field changes nothing but may count a 429. */
  observe(q, 200, (const char *[]){"RateLimit: \"d\";r=100", NULL});
  observe(q, 429, (const char *[]){"Content-Type: text/plain", NULL});
  observe(q, 429, (const char *[]){"Retry-After: 3", NULL});
  quota_snapshot(q, &s);
  assert_int_equal(s.source, RL_FAMILY_IETF);
  assert_int_equal(s.limit, 5000);
  assert_int_equal(s.remaining, 100);
  assert_int_equal(s.reset_in_s, RL_ABSENT);
  assert_int_equal(s.upstream_429s, 2);
  assert_int_equal(s.observations, 2);
  assert_int_equal(s.blocked_for_ms, 0); /* not obeying */
  assert_int_equal(quota_take(q, NULL), 0);

  quota_reset_stats(q);
  quota_snapshot(q, &s);
  assert_int_equal(s.upstream_429s + s.observations + s.granted, 0);
  assert_int_equal(s.remaining, 100);  /* observations stay */
  quota_observe(q, NULL, 3, 200, NOW); /* no headers at all */
  quota_free(q);
}

static void test_low_thresholds(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_t *q = make(&fc, 0, 0, 0, 0); /* default fraction 0.1 */
  assert_false(quota_low(q));
  observe(q, 200,
          (const char *[]){"RateLimit-Limit: 100", "RateLimit-Remaining: 10",
                           NULL});
  assert_false(quota_low(q)); /* exactly 10%: not below */
  observe(
      q, 200,
      (const char *[]){"RateLimit-Remaining: 9", "RateLimit-Reset: 30", NULL});
  assert_true(quota_low(q));
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_true(s.low);
  fake_clock_advance(&fc, SEC(30)); /* the upstream's window turned over */
  assert_false(quota_low(q));
  observe(q, 200,
          (const char *[]){"RateLimit-Limit: 100", "RateLimit-Remaining: 50",
                           NULL});
  assert_false(quota_low(q));
  quota_free(q);

  q = make(&fc, 0, 0, 0, 0); /* 0 of an unknown limit */
  observe(q, 200, (const char *[]){"X-RateLimit-Remaining: 0", NULL});
  assert_true(quota_low(q));
  quota_free(q);

  quota_opts_t o;
  quota_opts_init(&o);
  o.clock = &fc.clock;
  o.low_fraction = 0; /* never degraded */
  q = quota_new(&o);
  observe(q, 200,
          (const char *[]){"X-RateLimit-Limit: 10", "X-RateLimit-Remaining: 0",
                           NULL});
  assert_false(quota_low(q));
  quota_free(q);

  o.low_fraction = 0.5;
  q = quota_new(&o);
  observe(q, 200,
          (const char *[]){"X-RateLimit-Limit: 10", "X-RateLimit-Remaining: 4",
                           NULL});
  assert_true(quota_low(q));
  quota_free(q);

  /* The local period cap counts too: 10 per hour, low below 1 left. */
  q = make(&fc, 0, 0, 3600 * 1000, 10);
  assert_int_equal(takes(q, 9), 9);
  assert_false(quota_low(q));
  assert_int_equal(takes(q, 1), 1);
  assert_true(quota_low(q));
  fake_clock_advance(&fc, SEC(3600));
  assert_false(quota_low(q));
  quota_free(q);
}

static void test_obey_upstream(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  quota_opts_t o;
  quota_opts_init(&o);
  o.clock = &fc.clock;
  o.obey_upstream = true;
  quota_t *q = quota_new(&o);
  uint64_t wait;

  observe(q, 200,
          (const char *[]){"RateLimit: limit=10, remaining=0, reset=30", NULL});
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(30));
  fake_clock_advance(&fc, SEC(30));
  assert_int_equal(quota_take(q, NULL), 0);

  /* A 429's Retry-After beats its reset; an upstream's word never
   * shortens a block already in force. */
  observe(q, 429,
          (const char *[]){"Retry-After: 5", "RateLimit-Reset: 60", NULL});
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(5));
  observe(q, 429, (const char *[]){"Retry-After: 2", NULL});
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(5));
  quota_snapshot_t s;
  quota_snapshot(q, &s);
  assert_int_equal(s.blocked_for_ms, 5000);
  assert_int_equal(s.rejections, 3);

  /* A later success with calls left lifts it (the window turned over). */
  observe(q, 200, (const char *[]){"X-RateLimit-Remaining: 9", NULL});
  assert_int_equal(quota_take(q, NULL), 0);

  /* A 429 without any timing says nothing to obey; a misread epoch is
   * capped. */
  observe(q, 429, (const char *[]){"X-RateLimit-Remaining: 0", NULL});
  assert_int_equal(quota_take(q, NULL), 0);
  observe(q, 200,
          (const char *[]){"X-RateLimit-Remaining: 0",
                           "X-RateLimit-Reset: 9000000000", NULL});
  assert_int_equal(quota_take(q, &wait), QUOTA_EMPTY);
  assert_int_equal(wait, SEC(QUOTA_MAX_BLOCK_S));
  quota_free(q);

  /* Not obeying: the same words block nothing. */
  q = make(&fc, 0, 0, 0, 0);
  observe(q, 429, (const char *[]){"Retry-After: 5", NULL});
  observe(q, 200,
          (const char *[]){"X-RateLimit-Remaining: 0", "X-RateLimit-Reset: 30",
                           NULL});
  assert_int_equal(quota_take(q, NULL), 0);
  quota_free(q);
}

static void test_retry_after_seconds(void **state) {
  (void)state;
  assert_int_equal(quota_retry_after_s(1), 1);
  assert_int_equal(quota_retry_after_s(0), 1);
  assert_int_equal(quota_retry_after_s(SEC(2)), 2);
  assert_int_equal(quota_retry_after_s(SEC(2) + 1), 3);
}

static void test_invalid_opts(void **state) {
  (void)state;
  quota_opts_t o;
  quota_opts_init(&o);
  assert_true(fabs(o.low_fraction - QUOTA_DEFAULT_LOW_FRACTION) < 1e-12);
  assert_null(quota_new(NULL));
  o.rate_per_sec = -1;
  assert_null(quota_new(&o));
  o.rate_per_sec = NAN;
  assert_null(quota_new(&o));
  o.rate_per_sec = 2e9;
  assert_null(quota_new(&o));
  o.rate_per_sec = 1;
  o.period_max = 5; /* without a period */
  assert_null(quota_new(&o));
  o.period_ms = 1000;
  o.low_fraction = 1.5;
  assert_null(quota_new(&o));
  o.low_fraction = 1;
  quota_t *q = quota_new(&o);
  assert_non_null(q);
  quota_free(q);
}

/* --------------------------------------------------------- config values */

static void test_parse_rate(void **state) {
  (void)state;
  static const struct {
    const char *s;
    double want; /* < 0: invalid */
  } t[] = {
      {"10/s", 10},       {"600/m", 10},   {"600 / min", 10},
      {"0.5/s", 0.5},     {"3600/h", 1},   {"100/15m", 100.0 / 900},
      {"86400/DAY", 1},   {"5/100ms", 50}, {" 7/second ", 7},
      {"off", 0},         {"NONE", 0},     {"0", 0},
      {"0/s", 0},         {"10", -1},      {"10/", -1},
      {"/s", -1},         {"-1/s", -1},    {"+1/s", -1},
      {"1e3/s", -1},      {"inf/s", -1},   {"10/fortnight", -1},
      {"10/s extra", -1}, {"10/0s", -1},   {"2000000000/s", -1},
      {"1./s", -1},       {"", -1},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    double r = -42;
    int rc = quota_parse_rate(t[i].s, &r);
    if (t[i].want < 0) {
      if (rc != COALESCE_EINVAL || r != -42)
        fail_msg("\"%s\" should be invalid", t[i].s);
    } else if (rc != 0 || fabs(r - t[i].want) > 1e-9) {
      fail_msg("\"%s\": rc %d rate %g, want %g", t[i].s, rc, r, t[i].want);
    }
  }
  double r;
  assert_int_equal(quota_parse_rate(NULL, &r), COALESCE_EINVAL);
}

static void test_parse_period(void **state) {
  (void)state;
  static const struct {
    const char *s;
    int rc;
    uint64_t max, ms;
  } t[] = {
      {"10000/day", 0, 10000, 86400000},
      {"500000/month", 0, 500000, QUOTA_MONTH_MS},
      {"4/3 months", 0, 4, 3 * QUOTA_MONTH_MS},
      {"1/30d", 0, 1, 2592000000}, /* 30 days, not a month */
      {"100/15m", 0, 100, 900000},
      {"1000 / 1 h", 0, 1000, 3600000},
      {"7/w", 0, 7, 604800000},
      {"off", 0, 0, 0},
      {"0/day", 0, 0, 0},
      {"1.5/day", COALESCE_EINVAL, 0, 0},
      {"10000", COALESCE_EINVAL, 0, 0},
      {"10/year", COALESCE_EINVAL, 0, 0},
      {"99999999999999999999/day", COALESCE_EINVAL, 0, 0},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    uint64_t max = 42, ms = 42;
    int rc = quota_parse_period(t[i].s, &max, &ms);
    if (rc != t[i].rc)
      fail_msg("\"%s\": rc %d, want %d", t[i].s, rc, t[i].rc);
    if (rc == 0 && (max != t[i].max || ms != t[i].ms))
      fail_msg("\"%s\": %llu per %llu ms", t[i].s, (unsigned long long)max,
               (unsigned long long)ms);
    if (rc != 0 && (max != 42 || ms != 42))
      fail_msg("\"%s\": outputs touched on error", t[i].s);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_burst_then_one_token_per_interval),
      cmocka_unit_test(test_default_burst_and_unlimited),
      cmocka_unit_test(test_period_cap_aligned_to_start),
      cmocka_unit_test(test_day_resets_at_utc_midnight),
      cmocka_unit_test(test_month_has_its_calendar_length),
      cmocka_unit_test(test_durations_align_to_the_epoch),
      cmocka_unit_test(test_bucket_and_period_spend_together),
      cmocka_unit_test(test_route_and_upstream_spend_together),
      cmocka_unit_test(test_concurrent_takes_never_exceed_budget),
      cmocka_unit_test(test_observe_and_snapshot),
      cmocka_unit_test(test_low_thresholds),
      cmocka_unit_test(test_obey_upstream),
      cmocka_unit_test(test_retry_after_seconds),
      cmocka_unit_test(test_invalid_opts),
      cmocka_unit_test(test_parse_rate),
      cmocka_unit_test(test_parse_period),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
