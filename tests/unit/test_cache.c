/* test_cache.c — the SIEVE cache: storage, windows, touch, byte budget and
 * eviction order, expiry reclaim, reader references, awkward keys, and a
 * multi-threaded mix meant to run under TSan and ASan. Time is the fake
 * clock's: no test sleeps. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h"

static const coalesce_ttl_t LONG_TTL = {SEC(100), SEC(100), SEC(100), 0, 0};

static coalesce_cache_t *make_cache(fake_clock_t *fc, size_t max_bytes,
                                    size_t max_value, unsigned shards) {
  coalesce_cache_opts_t o;
  coalesce_cache_opts_init(&o);
  if (max_bytes)
    o.max_bytes = max_bytes;
  o.max_value = max_value;
  o.shards = shards;
  o.clock = fc ? &fc->clock : NULL;
  coalesce_cache_t *c = NULL;
  assert_int_equal(coalesce_cache_new(&o, &c), 0);
  assert_non_null(c);
  return c;
}

static int put_str(coalesce_cache_t *c, const char *key, const char *val,
                   const coalesce_ttl_t *ttl) {
  coalesce_value_t *v = coalesce_value_new(val, strlen(val));
  assert_non_null(v);
  int rc = coalesce_cache_put(c, key, strlen(key), v, ttl);
  coalesce_value_release(v);
  return rc;
}

/* Asserts key maps to val (and returns the lookup state). */
static coalesce_freshness_t expect_str(coalesce_cache_t *c, const char *key,
                                       const char *val) {
  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, key, strlen(key), &lk), 0);
  assert_int_equal(coalesce_value_len(lk.value), strlen(val));
  assert_memory_equal(coalesce_value_data(lk.value), val, strlen(val));
  coalesce_freshness_t st = lk.state;
  coalesce_value_release(lk.value);
  return st;
}

static void expect_miss(coalesce_cache_t *c, const char *key) {
  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, key, strlen(key), &lk),
                   COALESCE_ENOTFOUND);
  assert_null(lk.value);
}

static coalesce_stats_t stats_of(coalesce_cache_t *c) {
  coalesce_stats_t s;
  memset(&s, 0, sizeof(s));
  coalesce_cache_stats(c, &s);
  return s;
}

/* Charge of a key/value pair made by put_str. */
static size_t str_charge(const char *key, const char *val) {
  coalesce_value_t *v = coalesce_value_new(val, strlen(val));
  size_t ch = coalesce_cache_entry_charge(strlen(key), v);
  coalesce_value_release(v);
  return ch;
}

static void count_free(void *p, void *ud) {
  (void)p;
  atomic_fetch_add((_Atomic int *)ud, 1);
}

/* ------------------------------------------------------------------ basics */

static void test_defaults_and_invalid_args(void **state) {
  (void)state;
  coalesce_cache_t *c = NULL;
  assert_int_equal(coalesce_cache_new(NULL, &c), 0);
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_max_bytes, (uint64_t)64 << 20);
  assert_int_equal(s.cache_entries, 0);

  coalesce_value_t *v = coalesce_value_new("x", 1);
  coalesce_ttl_t zero = {0, 0, 0, SEC(5), 0};
  assert_int_equal(coalesce_cache_put(c, "k", 1, v, &zero), COALESCE_EINVAL);
  assert_int_equal(coalesce_cache_put(c, "k", 1, v, NULL), COALESCE_EINVAL);
  assert_int_equal(coalesce_cache_put(c, "k", 1, NULL, &LONG_TTL),
                   COALESCE_EINVAL);
  assert_int_equal(coalesce_cache_put(c, NULL, 3, v, &LONG_TTL),
                   COALESCE_EINVAL);
  assert_int_equal(coalesce_cache_put(c, "k", 1, v, &LONG_TTL), 0);
  assert_int_equal(coalesce_cache_touch(c, "k", 1, &zero), COALESCE_EINVAL);
  assert_int_equal(coalesce_cache_get(c, "k", 1, NULL), COALESCE_EINVAL);
  coalesce_value_release(v);
  coalesce_cache_free(c);
  coalesce_cache_free(NULL);
  assert_int_equal(coalesce_cache_new(NULL, NULL), COALESCE_EINVAL);
}

static void test_put_get_delete_clear(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_cache(&fc, 0, 0, 4);

  expect_miss(c, "a");
  assert_int_equal(put_str(c, "a", "alpha", &LONG_TTL), 0);
  assert_int_equal(put_str(c, "b", "beta", &LONG_TTL), 0);
  assert_int_equal(put_str(c, "c", "gamma", &LONG_TTL), 0);
  assert_int_equal(expect_str(c, "a", "alpha"), COALESCE_FRESH);
  expect_str(c, "b", "beta");

  assert_int_equal(coalesce_cache_delete(c, "b", 1), 0);
  assert_int_equal(coalesce_cache_delete(c, "b", 1), COALESCE_ENOTFOUND);
  expect_miss(c, "b");
  expect_str(c, "c", "gamma");

  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 2);
  assert_int_equal(s.cache_bytes,
                   str_charge("a", "alpha") + str_charge("c", "gamma"));
  assert_int_equal(s.cache_inserts, 3);
  assert_int_equal(s.cache_lookups, 5);
  assert_int_equal(s.cache_misses, 2);
  assert_int_equal(s.cache_evictions, 0);

  coalesce_cache_clear(c);
  expect_miss(c, "a");
  expect_miss(c, "c");
  s = stats_of(c);
  assert_int_equal(s.cache_entries, 0);
  assert_int_equal(s.cache_bytes, 0);
  /* usable after a clear */
  assert_int_equal(put_str(c, "a", "again", &LONG_TTL), 0);
  expect_str(c, "a", "again");
  coalesce_cache_free(c);
}

static void test_replace_keeps_accounting(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_cache(&fc, 0, 0, 2);
  _Atomic int freed = 0;
  static char big[1000], small[10];
  coalesce_value_t *v1 =
      coalesce_value_adopt(big, sizeof(big), 0, count_free, &freed);
  coalesce_value_t *v2 =
      coalesce_value_adopt(small, sizeof(small), 0, count_free, &freed);
  assert_int_equal(coalesce_cache_put(c, "key", 3, v1, &LONG_TTL), 0);
  assert_int_equal(stats_of(c).cache_bytes, coalesce_cache_entry_charge(3, v1));
  coalesce_value_release(v1);
  assert_int_equal(atomic_load(&freed), 0); /* the entry holds it */

  assert_int_equal(coalesce_cache_put(c, "key", 3, v2, &LONG_TTL), 0);
  assert_int_equal(atomic_load(&freed), 1); /* replaced entry let v1 go */
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 1);
  assert_int_equal(s.cache_bytes, coalesce_cache_entry_charge(3, v2));
  /* the charge covers metadata, key and value */
  assert_true(coalesce_cache_entry_charge(3, v2) >
              3 + coalesce_value_charge(v2));

  /* same value again: still one entry, one charge */
  assert_int_equal(coalesce_cache_put(c, "key", 3, v2, &LONG_TTL), 0);
  assert_int_equal(stats_of(c).cache_bytes, coalesce_cache_entry_charge(3, v2));
  coalesce_value_release(v2);
  coalesce_cache_free(c);
  assert_int_equal(atomic_load(&freed), 2);
}

/* ----------------------------------------------------------------- windows */

static void test_windows_and_age(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_cache(&fc, 0, 0, 1);
  coalesce_ttl_t ttl = {SEC(10), SEC(20), SEC(30), SEC(5), 0};
  uint64_t t0 = coalesce_clock_now(&fc.clock);
  assert_int_equal(put_str(c, "k", "v", &ttl), 0);

  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_int_equal(lk.state, COALESCE_FRESH);
  assert_int_equal(lk.age_ns, SEC(5));
  assert_int_equal(lk.stored_at_ns, t0);
  assert_memory_equal(&lk.ttl, &ttl, sizeof(ttl));
  coalesce_value_release(lk.value);

  fake_clock_advance(&fc, SEC(10) - 1);
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_int_equal(lk.state, COALESCE_FRESH);
  assert_int_equal(lk.age_ns, SEC(15) - 1);
  coalesce_value_release(lk.value);

  fake_clock_advance(&fc, 1); /* 10 s: swr window */
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_int_equal(lk.state, COALESCE_STALE);
  assert_int_equal(lk.age_ns, SEC(15));
  coalesce_value_release(lk.value);

  fake_clock_advance(&fc, SEC(20)); /* 30 s: stale-if-error window */
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_int_equal(lk.state, COALESCE_STALE_IF_ERROR);
  assert_int_equal(lk.age_ns, SEC(35));
  coalesce_value_release(lk.value);

  fake_clock_advance(&fc, SEC(30) - 1);
  assert_int_equal(expect_str(c, "k", "v"), COALESCE_STALE_IF_ERROR);
  fake_clock_advance(&fc, 1); /* 60 s: gone */
  expect_miss(c, "k");
  assert_int_equal(coalesce_cache_delete(c, "k", 1), COALESCE_ENOTFOUND);
  assert_int_equal(stats_of(c).cache_entries, 0); /* the delete reclaimed it */

  /* no fresh window: stale at once; no swr: straight to stale-if-error */
  coalesce_ttl_t swr_only = {0, SEC(1), 0, 0, 0};
  coalesce_ttl_t sie_only = {SEC(1), 0, SEC(1), 0, 0};
  assert_int_equal(put_str(c, "s", "v", &swr_only), 0);
  assert_int_equal(put_str(c, "e", "v", &sie_only), 0);
  assert_int_equal(expect_str(c, "s", "v"), COALESCE_STALE);
  fake_clock_advance(&fc, SEC(1));
  expect_miss(c, "s");
  assert_int_equal(expect_str(c, "e", "v"), COALESCE_STALE_IF_ERROR);

  /* huge windows saturate instead of wrapping */
  coalesce_ttl_t forever = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, 0};
  assert_int_equal(put_str(c, "f", "v", &forever), 0);
  fake_clock_advance(&fc, SEC(1000000));
  assert_int_equal(coalesce_cache_get(c, "f", 1, &lk), 0);
  assert_int_equal(lk.state, COALESCE_FRESH);
  assert_true(lk.age_ns == UINT64_MAX);
  coalesce_value_release(lk.value);
  coalesce_cache_free(c);
}

static void test_touch_restarts_windows(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_cache(&fc, 0, 0, 1);
  coalesce_ttl_t ttl = {SEC(10), SEC(10), 0, SEC(2), 0};
  assert_int_equal(put_str(c, "k", "v", &ttl), 0);
  fake_clock_advance(&fc, SEC(15));
  assert_int_equal(expect_str(c, "k", "v"), COALESCE_STALE);

  coalesce_ttl_t again = {SEC(10), SEC(10), 0, SEC(1), 0};
  assert_int_equal(coalesce_cache_touch(c, "k", 1, &again), 0);
  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_int_equal(lk.state, COALESCE_FRESH);
  assert_int_equal(lk.age_ns, SEC(1)); /* the new ttl's age, restarted */
  assert_int_equal(lk.stored_at_ns, coalesce_clock_now(&fc.clock));
  assert_int_equal(lk.ttl.age_ns, SEC(1));
  coalesce_value_release(lk.value);

  fake_clock_advance(&fc, SEC(19)); /* would be gone without the touch */
  assert_int_equal(expect_str(c, "k", "v"), COALESCE_STALE);
  fake_clock_advance(&fc, SEC(1));
  expect_miss(c, "k");
  /* too late to revive an expired entry; it is reclaimed instead */
  assert_int_equal(coalesce_cache_touch(c, "k", 1, &again), COALESCE_ENOTFOUND);
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 0);
  assert_int_equal(s.cache_bytes, 0);
  assert_int_equal(s.cache_evictions, 1);
  assert_int_equal(coalesce_cache_touch(c, "nope", 4, &again),
                   COALESCE_ENOTFOUND);
  coalesce_cache_free(c);
}

/* Entries keep whole-millisecond windows compactly; any other ttl (odd
 * nanoseconds, or past the compact range) must come back exactly, cost
 * more, and survive a touch that switches an entry between the two. */
static void test_windows_kept_exactly(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_cache(&fc, 0, 0, 1);
  coalesce_ttl_t odd = {SEC(1) + 1, 7, MS(3) + 999, 123456789, 1};
  coalesce_ttl_t long_ = {SEC(86400) * 60, SEC(1), 0, 0, SEC(86400) * 400};
  assert_int_equal(put_str(c, "o", "v", &odd), 0);
  assert_int_equal(put_str(c, "l", "v", &long_), 0);
  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, "o", 1, &lk), 0);
  assert_memory_equal(&lk.ttl, &odd, sizeof odd);
  assert_int_equal(lk.age_ns, 123456789);
  coalesce_value_release(lk.value);
  assert_int_equal(coalesce_cache_get(c, "l", 1, &lk), 0);
  assert_memory_equal(&lk.ttl, &long_, sizeof long_);
  coalesce_value_release(lk.value);
  /* the fresh window ends at exactly 1 s + 1 ns */
  fake_clock_advance(&fc, SEC(1));
  assert_int_equal(expect_str(c, "o", "v"), COALESCE_FRESH);
  fake_clock_advance(&fc, 1);
  assert_int_equal(expect_str(c, "o", "v"), COALESCE_STALE);

  /* a wide entry costs more than a compact one of the same key/value */
  coalesce_value_t *v = coalesce_value_new("v", 1);
  assert_int_equal(coalesce_cache_put(c, "k", 1, v, &LONG_TTL), 0);
  coalesce_stats_t before = stats_of(c);
  assert_int_equal(coalesce_cache_touch(c, "k", 1, &odd), 0);
  coalesce_stats_t after = stats_of(c);
  assert_int_equal(after.cache_entries, before.cache_entries);
  assert_true(after.cache_bytes > before.cache_bytes);
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_ptr_equal(lk.value, v); /* the same value, moved over */
  assert_memory_equal(&lk.ttl, &odd, sizeof odd);
  assert_int_equal(lk.stored_at_ns, coalesce_clock_now(&fc.clock));
  coalesce_value_release(lk.value);
  /* back to whole milliseconds: the wide entry holds that too */
  assert_int_equal(coalesce_cache_touch(c, "k", 1, &LONG_TTL), 0);
  assert_int_equal(coalesce_cache_get(c, "k", 1, &lk), 0);
  assert_memory_equal(&lk.ttl, &LONG_TTL, sizeof LONG_TTL);
  coalesce_value_release(lk.value);
  assert_int_equal(stats_of(c).cache_bytes, after.cache_bytes);
  /* deleting it returns every byte */
  assert_int_equal(coalesce_cache_delete(c, "k", 1), 0);
  assert_int_equal(coalesce_cache_delete(c, "o", 1), 0);
  assert_int_equal(coalesce_cache_delete(c, "l", 1), 0);
  assert_int_equal(stats_of(c).cache_bytes, 0);
  coalesce_value_release(v);
  coalesce_cache_free(c);
}

/* A touch that makes an entry wide in a full shard stays within budget. */
static void test_touch_wide_keeps_budget(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_value_t *v = coalesce_value_new("vvvvvvvv", 8);
  size_t ch = coalesce_cache_entry_charge(2, v);
  coalesce_cache_t *c = make_cache(&fc, 3 * ch, 3 * ch, 1);
  assert_int_equal(coalesce_cache_put(c, "k0", 2, v, &LONG_TTL), 0);
  assert_int_equal(coalesce_cache_put(c, "k1", 2, v, &LONG_TTL), 0);
  assert_int_equal(coalesce_cache_put(c, "k2", 2, v, &LONG_TTL), 0);
  assert_int_equal(stats_of(c).cache_bytes, 3 * ch);
  coalesce_ttl_t odd = {SEC(100) + 1, 0, 0, 0, 0};
  assert_int_equal(coalesce_cache_touch(c, "k2", 2, &odd), 0);
  coalesce_stats_t s = stats_of(c);
  assert_true(s.cache_bytes <= 3 * ch);
  assert_int_equal(s.cache_entries, 2);
  assert_int_equal(s.cache_evictions, 1);
  expect_miss(c, "k0"); /* the oldest unvisited entry made room */
  assert_int_equal(expect_str(c, "k2", "vvvvvvvv"), COALESCE_FRESH);
  coalesce_value_release(v);
  coalesce_cache_free(c);
}

/* ---------------------------------------------------------------- eviction */

/* One shard holding exactly n entries of key "kN" / value "vvvvvvvv". */
static coalesce_cache_t *make_n_slot_cache(fake_clock_t *fc, size_t n) {
  size_t ch = str_charge("k0", "vvvvvvvv");
  return make_cache(fc, n * ch, n * ch, 1);
}

static void test_sieve_evicts_unvisited_first(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_n_slot_cache(&fc, 4);
  const char *k[] = {"k0", "k1", "k2", "k3", "k4", "k5", "k6"};
  for (int i = 0; i < 4; i++)
    assert_int_equal(put_str(c, k[i], "vvvvvvvv", &LONG_TTL), 0);
  assert_int_equal(stats_of(c).cache_evictions, 0);
  expect_str(c, "k0", "vvvvvvvv"); /* visited */
  expect_str(c, "k2", "vvvvvvvv"); /* visited */

  /* queue (oldest first) k0* k1 k2* k3: the hand spares k0, takes k1 */
  assert_int_equal(put_str(c, k[4], "vvvvvvvv", &LONG_TTL), 0);
  /* hand at k2*: spared (bit cleared), takes k3 */
  assert_int_equal(put_str(c, k[5], "vvvvvvvv", &LONG_TTL), 0);
  /* hand at k4, unvisited: taken */
  assert_int_equal(put_str(c, k[6], "vvvvvvvv", &LONG_TTL), 0);

  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_evictions, 3);
  assert_int_equal(s.cache_entries, 4);
  assert_true(s.cache_bytes <= s.cache_max_bytes);
  expect_str(c, "k0", "vvvvvvvv");
  expect_str(c, "k2", "vvvvvvvv");
  expect_str(c, "k5", "vvvvvvvv");
  expect_str(c, "k6", "vvvvvvvv");
  expect_miss(c, "k1");
  expect_miss(c, "k3");
  expect_miss(c, "k4");
  coalesce_cache_free(c);
}

static void test_sieve_hot_key_survives_scan(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_n_slot_cache(&fc, 8);
  assert_int_equal(put_str(c, "hh", "vvvvvvvv", &LONG_TTL), 0);
  char key[8];
  for (int i = 0; i < 300; i++) {
    snprintf(key, sizeof(key), "%02d", i % 100);
    assert_int_equal(put_str(c, key, "vvvvvvvv", &LONG_TTL), 0);
    expect_str(c, "hh", "vvvvvvvv"); /* a FIFO would drop it after 8 */
    coalesce_stats_t s = stats_of(c);
    assert_true(s.cache_bytes <= s.cache_max_bytes);
  }
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 8);
  assert_true(s.cache_evictions >= 290);
  coalesce_cache_free(c);
}

static void test_budget_split_between_shards(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  size_t ch = str_charge("key-000", "0123456789");
  coalesce_cache_t *c = make_cache(&fc, 40 * ch, 40 * ch, 4);
  char key[16];
  for (int i = 0; i < 500; i++) {
    snprintf(key, sizeof(key), "key-%03d", i);
    assert_int_equal(put_str(c, key, "0123456789", &LONG_TTL), 0);
    coalesce_stats_t s = stats_of(c);
    assert_true(s.cache_bytes <= 40 * ch);
  }
  coalesce_stats_t s = stats_of(c);
  assert_true(s.cache_entries <= 40);
  assert_true(s.cache_entries >= 30); /* every shard is used */
  assert_int_equal(s.cache_bytes, s.cache_entries * ch);
  assert_int_equal(s.cache_evictions, 500 - s.cache_entries);
  coalesce_cache_free(c);
}

static void test_expired_reclaimed_first(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  coalesce_cache_t *c = make_n_slot_cache(&fc, 2);
  coalesce_ttl_t brief = {SEC(1), 0, 0, 0, 0};
  assert_int_equal(put_str(c, "k0", "vvvvvvvv", &brief), 0);
  assert_int_equal(put_str(c, "k1", "vvvvvvvv", &LONG_TTL), 0);
  expect_str(c, "k0", "vvvvvvvv"); /* visited, so plain SIEVE would keep it */
  fake_clock_advance(&fc, SEC(2));
  assert_int_equal(put_str(c, "k2", "vvvvvvvv", &LONG_TTL), 0);
  expect_str(c, "k1", "vvvvvvvv");
  expect_str(c, "k2", "vvvvvvvv");
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 2);
  assert_int_equal(s.cache_evictions, 1);

  /* a put over an expired entry replaces it */
  coalesce_cache_clear(c);
  assert_int_equal(put_str(c, "k0", "vvvvvvvv", &brief), 0);
  fake_clock_advance(&fc, SEC(5));
  expect_miss(c, "k0");
  assert_int_equal(put_str(c, "k0", "wwwwwwww", &brief), 0);
  assert_int_equal(expect_str(c, "k0", "wwwwwwww"), COALESCE_FRESH);
  assert_int_equal(stats_of(c).cache_entries, 1);
  coalesce_cache_free(c);
}

static void test_too_big(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  static char blob[16];
  /* max_value defaults to max_bytes / 8 = 128 KiB */
  coalesce_cache_t *c = make_cache(&fc, 1 << 20, 0, 1);
  assert_int_equal(put_str(c, "k", "small", &LONG_TTL), 0);
  coalesce_value_t *huge =
      coalesce_value_adopt(blob, sizeof(blob), 200 << 10, NULL, NULL);
  assert_int_equal(coalesce_cache_put(c, "k", 1, huge, &LONG_TTL),
                   COALESCE_ETOOBIG);
  expect_miss(c, "k"); /* the old value is outdated: removed */
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 0);
  assert_int_equal(s.cache_bytes, 0);
  assert_int_equal(s.cache_inserts, 1);
  coalesce_cache_free(c);

  /* 4 shards of 256 KiB: a 300 KiB charge fits max_value but no shard */
  c = make_cache(&fc, 1 << 20, 1 << 20, 4);
  coalesce_value_t *v300 =
      coalesce_value_adopt(blob, sizeof(blob), 300 << 10, NULL, NULL);
  coalesce_value_t *v200 =
      coalesce_value_adopt(blob, sizeof(blob), 200 << 10, NULL, NULL);
  assert_int_equal(coalesce_cache_put(c, "k", 1, v300, &LONG_TTL),
                   COALESCE_ETOOBIG);
  assert_int_equal(coalesce_cache_put(c, "k", 1, v200, &LONG_TTL), 0);
  assert_int_equal(coalesce_cache_put(c, "k", 1, huge, &LONG_TTL), 0);
  coalesce_value_release(huge);
  coalesce_value_release(v300);
  coalesce_value_release(v200);
  coalesce_cache_free(c);
}

/* -------------------------------------------------------------- references */

static void test_reader_reference_outlives_entry(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  _Atomic int freed = 0;
  static char text[] = "payload";
  coalesce_value_t *v = coalesce_value_adopt(text, 7, 0, count_free, &freed);
  size_t ch = coalesce_cache_entry_charge(1, v);
  coalesce_cache_t *c = make_cache(&fc, ch, ch, 1); /* room for one */

  /* deleted under a reader */
  assert_int_equal(coalesce_cache_put(c, "a", 1, v, &LONG_TTL), 0);
  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, "a", 1, &lk), 0);
  assert_int_equal(coalesce_cache_delete(c, "a", 1), 0);
  coalesce_value_release(v); /* the caller's own */
  assert_int_equal(atomic_load(&freed), 0);
  assert_memory_equal(coalesce_value_data(lk.value), "payload", 7);
  coalesce_value_release(lk.value);
  assert_int_equal(atomic_load(&freed), 1);

  /* evicted under a reader */
  v = coalesce_value_adopt(text, 7, 0, count_free, &freed);
  assert_int_equal(coalesce_cache_put(c, "a", 1, v, &LONG_TTL), 0);
  coalesce_value_release(v);
  assert_int_equal(coalesce_cache_get(c, "a", 1, &lk), 0);
  coalesce_value_t *w = coalesce_value_adopt(text, 7, 0, count_free, &freed);
  assert_int_equal(coalesce_cache_put(c, "b", 1, w, &LONG_TTL), 0);
  coalesce_value_release(w);
  expect_miss(c, "a");
  assert_int_equal(atomic_load(&freed), 1);
  assert_memory_equal(coalesce_value_data(lk.value), "payload", 7);
  coalesce_value_release(lk.value);
  assert_int_equal(atomic_load(&freed), 2);

  coalesce_cache_free(c); /* releases "b" */
  assert_int_equal(atomic_load(&freed), 3);
}

static void test_free_and_clear_release_every_entry(void **state) {
  (void)state;
  _Atomic int freed = 0;
  static char text[] = "x";
  coalesce_cache_t *c = make_cache(NULL, 0, 0, 8);
  char key[16];
  for (int i = 0; i < 100; i++) {
    coalesce_value_t *v = coalesce_value_adopt(text, 1, 0, count_free, &freed);
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(coalesce_cache_put(c, key, strlen(key), v, &LONG_TTL), 0);
    coalesce_value_release(v);
  }
  assert_int_equal(atomic_load(&freed), 0);
  coalesce_cache_clear(c);
  assert_int_equal(atomic_load(&freed), 100);
  for (int i = 0; i < 50; i++) {
    coalesce_value_t *v = coalesce_value_adopt(text, 1, 0, count_free, &freed);
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(coalesce_cache_put(c, key, strlen(key), v, &LONG_TTL), 0);
    coalesce_value_release(v);
  }
  coalesce_cache_free(c);
  assert_int_equal(atomic_load(&freed), 150);
}

/* -------------------------------------------------------------------- keys */

static void test_prefix_and_binary_keys(void **state) {
  (void)state;
  coalesce_cache_t *c = make_cache(NULL, 0, 0, 4);
  static const struct {
    const char *key;
    size_t len;
  } keys[] = {{"", 0},     {"a", 1},    {"ab", 2},     {"abc", 3}, {"abcd", 4},
              {"a\0b", 3}, {"a\0c", 3}, {"a\0b\0", 4}, {"\0", 1},  {"\0\0", 2}};
  size_t n = sizeof(keys) / sizeof(keys[0]);
  char val[16];
  for (size_t i = 0; i < n; i++) {
    snprintf(val, sizeof(val), "value-%zu", i);
    coalesce_value_t *v = coalesce_value_new(val, strlen(val));
    assert_int_equal(
        coalesce_cache_put(c, keys[i].key, keys[i].len, v, &LONG_TTL), 0);
    coalesce_value_release(v);
  }
  assert_int_equal(stats_of(c).cache_entries, n);
  for (size_t i = 0; i < n; i++) {
    coalesce_lookup_t lk;
    snprintf(val, sizeof(val), "value-%zu", i);
    assert_int_equal(coalesce_cache_get(c, keys[i].key, keys[i].len, &lk), 0);
    assert_string_equal(coalesce_value_data(lk.value), val);
    coalesce_value_release(lk.value);
  }
  assert_int_equal(coalesce_cache_delete(c, "a\0b", 3), 0);
  coalesce_lookup_t lk;
  assert_int_equal(coalesce_cache_get(c, "a\0b", 3, &lk), COALESCE_ENOTFOUND);
  assert_int_equal(coalesce_cache_get(c, "a\0b\0", 4, &lk), 0);
  coalesce_value_release(lk.value);
  assert_int_equal(coalesce_cache_get(c, "a", 1, &lk), 0);
  coalesce_value_release(lk.value);
  assert_int_equal(coalesce_cache_get(c, "abcde", 5, &lk), COALESCE_ENOTFOUND);
  coalesce_cache_free(c);
}

static void test_many_keys_grow_table(void **state) {
  (void)state;
  coalesce_cache_t *c = make_cache(NULL, 0, 0, 1);
  char key[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(key, sizeof(key), "key:%d", i);
    assert_int_equal(put_str(c, key, key, &LONG_TTL), 0);
  }
  for (int i = 0; i < 5000; i++) {
    snprintf(key, sizeof(key), "key:%d", i);
    expect_str(c, key, key);
  }
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.cache_entries, 5000);
  assert_int_equal(s.cache_inserts, 5000);
  assert_int_equal(s.cache_evictions, 0);
  for (int i = 0; i < 5000; i += 2) {
    snprintf(key, sizeof(key), "key:%d", i);
    assert_int_equal(coalesce_cache_delete(c, key, strlen(key)), 0);
  }
  assert_int_equal(stats_of(c).cache_entries, 2500);
  expect_str(c, "key:4999", "key:4999");
  expect_miss(c, "key:4998");
  coalesce_cache_free(c);
}

/* ------------------------------------------------------------- concurrency */

#define MT_THREADS 4
#define MT_OPS 25000
#define MT_KEYS 64

typedef struct mt_ctx {
  coalesce_cache_t *cache;
  fake_clock_t *fc;
  pthread_barrier_t *start;
  _Atomic int *freed;
  _Atomic int *made;
  unsigned seed;
  int hits;
  int errors; /* cmocka's asserts are not for worker threads: count here */
} mt_ctx_t;

static unsigned mt_rand(unsigned *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* count_free for malloc'd data: frees it too. */
static void mt_free(void *p, void *ud) {
  free(p);
  atomic_fetch_add((_Atomic int *)ud, 1);
}

#define MT_CHECK(m, cond)                                                      \
  do {                                                                         \
    if (!(cond))                                                               \
      (m)->errors++;                                                           \
  } while (0)

/* A value's bytes name its key, so a reader can check it got the right one
 * (and, under ASan, that the bytes are still there). */
static void *mt_worker(void *arg) {
  mt_ctx_t *m = arg;
  coalesce_ttl_t ttl = {MS(2), MS(2), MS(2), 0, 0};
  char key[16], val[64];
  pthread_barrier_wait(m->start);
  for (int i = 0; i < MT_OPS; i++) {
    unsigned r = mt_rand(&m->seed);
    snprintf(key, sizeof(key), "mt-%u", r % MT_KEYS);
    size_t klen = strlen(key);
    unsigned op = (r >> 8) % 100;
    if (op < 60) {
      coalesce_lookup_t lk;
      if (coalesce_cache_get(m->cache, key, klen, &lk) == 0) {
        const char *d = coalesce_value_data(lk.value);
        MT_CHECK(m, coalesce_value_len(lk.value) > klen &&
                        memcmp(d, key, klen) == 0 && d[klen] == '|');
        coalesce_value_release(lk.value);
        m->hits++;
      }
    } else if (op < 85) {
      int n = snprintf(val, sizeof(val), "%s|%*u", key, (int)(r % 40), r);
      char *data = malloc((size_t)n);
      MT_CHECK(m, data != NULL);
      if (data == NULL)
        continue;
      memcpy(data, val, (size_t)n);
      coalesce_value_t *v =
          coalesce_value_adopt(data, (size_t)n, 0, mt_free, m->freed);
      atomic_fetch_add(m->made, 1);
      MT_CHECK(m, coalesce_cache_put(m->cache, key, klen, v, &ttl) == 0);
      coalesce_value_release(v);
    } else if (op < 95) {
      int rc = coalesce_cache_delete(m->cache, key, klen);
      MT_CHECK(m, rc == 0 || rc == COALESCE_ENOTFOUND);
    } else if (op < 98) {
      int rc = coalesce_cache_touch(m->cache, key, klen, &ttl);
      MT_CHECK(m, rc == 0 || rc == COALESCE_ENOTFOUND);
    } else {
      fake_clock_advance(m->fc, MS(1)); /* lets entries expire mid-run */
    }
    if (i % 1000 == 0) {
      coalesce_stats_t s;
      memset(&s, 0, sizeof(s));
      coalesce_cache_stats(m->cache, &s);
      MT_CHECK(m, s.cache_bytes <= s.cache_max_bytes);
    }
  }
  return NULL;
}

static void test_concurrent_mixed_ops(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  _Atomic int freed = 0, made = 0;
  size_t ch = str_charge("mt-00", "mt-00|0123456789012345678901234567890123");
  /* room for about half the keys: evictions happen all along */
  coalesce_cache_t *c = make_cache(&fc, 32 * ch, 32 * ch / 4, 4);
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, MT_THREADS);
  pthread_t th[MT_THREADS];
  mt_ctx_t ctx[MT_THREADS];
  for (int i = 0; i < MT_THREADS; i++) {
    ctx[i] = (mt_ctx_t){
        c, &fc, &start, &freed, &made, 0x9e3779b9u * (unsigned)(i + 1), 0, 0};
    assert_int_equal(pthread_create(&th[i], NULL, mt_worker, &ctx[i]), 0);
  }
  int hits = 0;
  for (int i = 0; i < MT_THREADS; i++) {
    pthread_join(th[i], NULL);
    hits += ctx[i].hits;
    assert_int_equal(ctx[i].errors, 0);
  }
  pthread_barrier_destroy(&start);
  assert_true(hits > 0);

  coalesce_stats_t s = stats_of(c);
  assert_true(s.cache_bytes <= s.cache_max_bytes);
  assert_true(s.cache_entries <= MT_KEYS);
  assert_true(s.cache_evictions > 0);
  assert_int_equal(s.cache_lookups, s.cache_misses + (uint64_t)hits);
  /* every value not in the cache was released exactly once */
  assert_int_equal(atomic_load(&made) - atomic_load(&freed),
                   (int)s.cache_entries);
  coalesce_cache_free(c);
  assert_int_equal(atomic_load(&freed), atomic_load(&made));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_and_invalid_args),
      cmocka_unit_test(test_put_get_delete_clear),
      cmocka_unit_test(test_replace_keeps_accounting),
      cmocka_unit_test(test_windows_and_age),
      cmocka_unit_test(test_touch_restarts_windows),
      cmocka_unit_test(test_windows_kept_exactly),
      cmocka_unit_test(test_touch_wide_keeps_budget),
      cmocka_unit_test(test_sieve_evicts_unvisited_first),
      cmocka_unit_test(test_sieve_hot_key_survives_scan),
      cmocka_unit_test(test_budget_split_between_shards),
      cmocka_unit_test(test_expired_reclaimed_first),
      cmocka_unit_test(test_too_big),
      cmocka_unit_test(test_reader_reference_outlives_entry),
      cmocka_unit_test(test_free_and_clear_release_every_entry),
      cmocka_unit_test(test_prefix_and_binary_keys),
      cmocka_unit_test(test_many_keys_grow_table),
      cmocka_unit_test(test_concurrent_mixed_ops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
