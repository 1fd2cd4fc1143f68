/* test_basics.c — errors, clock, values and the stats definitions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h"

static void test_strerror_covers_every_code(void **state) {
  (void)state;
#define XX(name, val, msg)                                                     \
  assert_string_equal(coalesce_strerror(val), msg);                            \
  assert_string_equal(coalesce_err_name(val), "COALESCE_E" #name);
  COALESCE_ERRNO_MAP(XX)
#undef XX
  assert_string_equal(coalesce_strerror(-9999), "unknown error");
  assert_string_equal(coalesce_strerror(0), "success");
}

static void test_fake_clock_is_injected(void **state) {
  (void)state;
  fake_clock_t fc;
  fake_clock_init(&fc);
  uint64_t t0 = coalesce_clock_now(&fc.clock);
  fake_clock_advance(&fc, SEC(3));
  assert_int_equal(coalesce_clock_now(&fc.clock) - t0, SEC(3));
  uint64_t a = coalesce_clock_now(NULL), b = coalesce_clock_now(NULL);
  assert_true(b >= a);
}

static int freed;
static void count_free(void *p, void *ud) {
  (void)p;
  *(int *)ud += 1;
}

static void test_value_refcount_and_adopt(void **state) {
  (void)state;
  coalesce_value_t *v = coalesce_value_new("hello", 5);
  assert_non_null(v);
  assert_int_equal(coalesce_value_len(v), 5);
  assert_memory_equal(coalesce_value_data(v), "hello", 6); /* NUL-terminated */
  assert_ptr_equal(coalesce_value_ref(v), v);
  coalesce_value_release(v);
  coalesce_value_release(v);
  coalesce_value_release(NULL);

  static char buf[] = "static";
  freed = 0;
  coalesce_value_t *a = coalesce_value_adopt(buf, 6, 100, count_free, &freed);
  assert_ptr_equal(coalesce_value_data(a), buf);
  assert_true(coalesce_value_charge(a) >= 100);
  coalesce_value_ref(a);
  coalesce_value_release(a);
  assert_int_equal(freed, 0);
  coalesce_value_release(a);
  assert_int_equal(freed, 1);
}

/* A value built in place: the caller's bytes, no copy, one allocation
 * charged for what it holds, aligned for any object stored in it. */
static void test_value_alloc_is_filled_in_place(void **state) {
  (void)state;
  void *data = NULL;
  coalesce_value_t *v = coalesce_value_alloc(64, &data);
  assert_non_null(v);
  assert_non_null(data);
  assert_int_equal((uintptr_t)data % _Alignof(max_align_t), 0);
  memset(data, 'x', 64);
  assert_ptr_equal(coalesce_value_data(v), data);
  assert_int_equal(coalesce_value_len(v), 64);
  assert_true(coalesce_value_charge(v) >= 64);
  assert_true(coalesce_value_charge(v) <= 64 + 32); /* a small header only */
  assert_ptr_equal(coalesce_value_ref(v), v);
  coalesce_value_release(v);
  assert_memory_equal(coalesce_value_data(v), "xxxx", 4);
  coalesce_value_release(v);

  coalesce_value_t *z = coalesce_value_alloc(0, &data);
  assert_non_null(z);
  assert_int_equal(coalesce_value_len(z), 0);
  coalesce_value_release(z);
  assert_null(coalesce_value_alloc(SIZE_MAX, &data));
  assert_null(data);
  assert_null(coalesce_value_alloc(8, NULL));
}

static void test_stats_derive_matches_design(void **state) {
  (void)state;
  /* DESIGN.md §3: 200 cold requests for one key -> 199 coalesced, 99.5 % */
  coalesce_stats_t s = {.total_requests = 200, .coalesced_requests = 199,
                        .api_calls_made = 1};
  coalesce_stats_derive(&s);
  assert_int_equal(s.api_calls_saved, 199);
  assert_true(s.hit_rate_percent > 99.49 && s.hit_rate_percent < 99.51);
  coalesce_stats_t z = {0};
  coalesce_stats_derive(&z);
  assert_true(z.hit_rate_percent == 0.0);
}

static void test_counters_sum_across_slots(void **state) {
  (void)state;
  coalesce__counters_t *c = aligned_alloc(COALESCE__CACHELINE, sizeof(*c));
  memset(c, 0, sizeof(*c));
  for (uint64_t h = 0; h < 100; h++)
    coalesce__count(c, h * 7919, 3, 2);
  assert_int_equal(coalesce__counter_sum(c, 3), 200);
  coalesce__counters_reset(c);
  assert_int_equal(coalesce__counter_sum(c, 3), 0);
  assert_int_equal(coalesce__pow2(5), 8);
  assert_int_equal(coalesce__pow2(0), 1);
  assert_true(coalesce__hash("a", 1) != coalesce__hash("b", 1));
  free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_covers_every_code),
      cmocka_unit_test(test_fake_clock_is_injected),
      cmocka_unit_test(test_value_refcount_and_adopt),
      cmocka_unit_test(test_value_alloc_is_filled_in_place),
      cmocka_unit_test(test_stats_derive_matches_design),
      cmocka_unit_test(test_counters_sum_across_slots),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
