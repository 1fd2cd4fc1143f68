/* test_recfilter.c — the hit path's "may have a record" filter: no false
 * negatives ever, few false positives while sparse, saturation degrades to
 * "always look". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "recfilter.h"

static uint64_t hash_of(const char *prefix, unsigned i, uint64_t seed) {
  char buf[64];
  int n = snprintf(buf, sizeof buf, "%s%u", prefix, i);
  return recfilter_hash(buf, (size_t)n, seed);
}

static void test_empty_and_set(void **state) {
  (void)state;
  recfilter_t *f = calloc(1, sizeof *f); /* zero bytes: an empty filter */
  assert_non_null(f);
  uint64_t a = recfilter_hash("/a", 2, 0), b = recfilter_hash("/b", 2, 0);
  assert_false(recfilter_used(f));
  assert_false(recfilter_may_have(f, a));
  assert_false(recfilter_may_have(f, b));
  recfilter_add(f, a);
  assert_true(recfilter_used(f));
  assert_true(recfilter_may_have(f, a));
  recfilter_add(f, a); /* idempotent */
  assert_true(recfilter_may_have(f, a));
  assert_true(recfilter_hash("/a", 2, 0) == a); /* deterministic */
  free(f);
}

static void test_seed_separates(void **state) {
  (void)state;
  /* the same target under two upstreams hashes differently */
  assert_true(recfilter_hash("/x?q=1", 6, 0) != recfilter_hash("/x?q=1", 6, 1));
}

/* 1000 adds into an empty filter: every one is found, and 10000 others are
 * almost all answered "no" (expected ~0.0004% false; allow 0.1%). */
static void test_sparse_is_selective(void **state) {
  (void)state;
  recfilter_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  for (unsigned i = 0; i < 1000; i++)
    recfilter_add(f, hash_of("/items/", i, 3));
  for (unsigned i = 0; i < 1000; i++)
    assert_true(recfilter_may_have(f, hash_of("/items/", i, 3)));
  unsigned fp = 0;
  for (unsigned i = 0; i < 10000; i++) {
    fp += recfilter_may_have(f, hash_of("/items/", i + 1000, 3));
    fp += recfilter_may_have(f, hash_of("/items/", i, 4)); /* other seed */
  }
  assert_true(fp <= 20);
  free(f);
}

/* Far more records than bits: still no false negative, and a full filter
 * says "look" for anything. */
static void test_saturation_no_false_negative(void **state) {
  (void)state;
  recfilter_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  const unsigned n = 5u << RECFILTER_BITS_LOG2; /* 10 bit-sets per bit */
  for (unsigned i = 0; i < n; i++)
    recfilter_add(f, recfilter_hash(&i, sizeof i, 0));
  for (unsigned i = 0; i < n; i += 7)
    assert_true(recfilter_may_have(f, recfilter_hash(&i, sizeof i, 0)));
  unsigned yes = 0;
  for (unsigned i = 0; i < 1000; i++)
    yes += recfilter_may_have(f, hash_of("never-added-", i, 9));
  assert_true(yes >= 995); /* saturated: behaves as "always look" */
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_set),
      cmocka_unit_test(test_seed_separates),
      cmocka_unit_test(test_sparse_is_selective),
      cmocka_unit_test(test_saturation_no_false_negative),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
