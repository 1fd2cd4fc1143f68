/* test_cachekey.c — path/query canonicalisation and key construction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "cachekey.h"

static void check_path(const char *in, const char *want) {
  char out[256];
  long n = cachekey_normalize_path(in, strlen(in), out, sizeof out);
  if (want == NULL) {
    assert_int_equal(n, -1);
    return;
  }
  assert_true(n >= 0);
  out[n] = '\0';
  assert_string_equal(out, want);
}

static void test_paths(void **state) {
  (void)state;
  check_path("/", "/");
  check_path("/a/b", "/a/b");
  check_path("/%61%62", "/ab");   /* unreserved escapes decoded */
  check_path("/a%2fb", "/a%2Fb"); /* reserved kept, hex upper-cased */
  check_path("/a/./b", "/a/b");
  check_path("/a/b/../c", "/a/c");
  check_path("/a/%2e%2E/c", "/c"); /* encoded dots are dots */
  check_path("/../../x", "/x");    /* cannot climb above the root */
  check_path("/a/b/..", "/a/");
  check_path("/a/", "/a/");
  check_path("/a%00b", NULL); /* NUL */
  check_path("/a%zz", NULL);  /* bad escape */
  check_path("/a%4", NULL);   /* truncated escape */
  check_path("/a b", NULL);   /* raw space */
  check_path("/a\x80", NULL); /* raw high byte */
  check_path("a/b", NULL);    /* not origin-form */
  check_path("", NULL);
}

static void check_query(const char *in, const char *want) {
  char out[256];
  long n = cachekey_canonical_query(in, strlen(in), out, sizeof out);
  if (want == NULL) {
    assert_int_equal(n, -1);
    return;
  }
  assert_true(n >= 0);
  out[n] = '\0';
  assert_string_equal(out, want);
}

static void test_queries(void **state) {
  (void)state;
  check_query("", "");
  check_query("b=2&a=1", "a=1&b=2");
  check_query("id=2&x=1&id=1", "id=2&id=1&x=1"); /* repeated keep order */
  check_query("a=1&&b=2&", "a=1&b=2");
  check_query("%61=%31", "a=1");
  check_query("q=a%2bb", "q=a%2Bb");
  check_query("flag&a=1", "a=1&flag");
  check_query("a=%00", NULL);
  check_query("a=%g1", NULL);
}

typedef struct hdrs {
  const char *names[4];
  const char *values[4];
} hdrs_t;

static const char *get_hdr(void *ud, const char *name, size_t *len) {
  hdrs_t *h = ud;
  for (int i = 0; i < 4 && h->names[i]; i++) {
    if (strcasecmp(h->names[i], name) == 0) {
      *len = strlen(h->values[i]);
      return h->values[i];
    }
  }
  return NULL;
}

static const char *const ident[] = {"Authorization", "Cookie", "X-Api-Key"};

static void build(cachekey_t *k, hdrs_t *h, const char *path, const char *q) {
  cachekey_build(k, 'G', 0, path, strlen(path), q, strlen(q), ident, 3, get_hdr,
                 h);
}

static bool same(cachekey_t *a, cachekey_t *b) {
  return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static void test_identity_separates_keys(void **state) {
  (void)state;
  cachekey_t a, b;
  cachekey_init(&a);
  cachekey_init(&b);
  hdrs_t alice = {{"authorization"}, {"Bearer alice"}};
  hdrs_t bob = {{"Authorization"}, {"Bearer bob"}};
  hdrs_t anon = {{0}, {0}};
  build(&a, &alice, "/x", "a=1");
  build(&b, &bob, "/x", "a=1");
  assert_false(same(&a, &b));
  /* an ordinary key is built without allocating: in the key itself */
  assert_ptr_equal(a.data, a.small);
  assert_true(a.len <= sizeof a.small);
  build(&b, &anon, "/x", "a=1");
  assert_false(same(&a, &b));
  build(&b, &alice, "/x", "a=1");
  assert_true(same(&a, &b));
  /* fields cannot run together: path "/ab" + query "" != "/a" + "b" */
  build(&a, &anon, "/ab", "");
  build(&b, &anon, "/a", "b");
  assert_false(same(&a, &b));
  /* an unrelated header does not split the key */
  hdrs_t other = {{"Accept"}, {"text/html"}};
  build(&a, &other, "/x", "");
  build(&b, &anon, "/x", "");
  assert_true(same(&a, &b));
  cachekey_free(&a);
  cachekey_free(&b);
}

/* Keys and targets past the inline key and the stack scratch space take
 * the heap and give the same bytes. */
static void test_long_inputs(void **state) {
  (void)state;
  enum { N = 3000 };
  static char path[N + 2], want_path[N + 2], query[8 * 200], want_q[8 * 200];
  path[0] = want_path[0] = '/';
  for (size_t i = 1; i <= N; i++) {
    path[i] = 'a' + (char)(i % 26);
    want_path[i] = path[i];
  }
  path[N + 1] = want_path[N + 1] = '\0';
  static char out[N + 8];
  long n = cachekey_normalize_path(path, N + 1, out, sizeof out);
  assert_int_equal(n, N + 1);
  assert_memory_equal(out, want_path, N + 1);
  /* 200 parameters, given in reverse order: sorted back on the heap */
  size_t o = 0, w = 0;
  for (int i = 199; i >= 0; i--)
    o += (size_t)sprintf(query + o, "%sp%03d=1", o ? "&" : "", i);
  for (int i = 0; i < 200; i++)
    w += (size_t)sprintf(want_q + w, "%sp%03d=1", w ? "&" : "", i);
  static char qout[sizeof query];
  n = cachekey_canonical_query(query, o, qout, sizeof qout);
  assert_int_equal(n, (long)w);
  assert_memory_equal(qout, want_q, w);
  /* a key that outgrows the inline bytes keeps what it had */
  cachekey_t k;
  cachekey_init(&k);
  cachekey_add(&k, "head", 4);
  cachekey_add(&k, path, N + 1);
  assert_false(k.oom);
  assert_ptr_not_equal(k.data, k.small); /* outgrown: on the heap */
  assert_int_equal(k.len, 4 + 4 + 4 + N + 1);
  assert_memory_equal(k.data + 4, "head", 4);
  assert_memory_equal(k.data + 12, path, N + 1);
  cachekey_t c;
  memset(&c, 0, sizeof c); /* all-zero is a valid empty key */
  cachekey_copy(&c, k.data, k.len);
  assert_int_equal(c.len, k.len);
  assert_memory_equal(c.data, k.data, k.len);
  cachekey_free(&c);
  cachekey_free(&k);
}

static void test_vary(void **state) {
  (void)state;
  cachekey_t a, b;
  cachekey_init(&a);
  cachekey_init(&b);
  hdrs_t en = {{"Accept-Language"}, {"en"}};
  hdrs_t fr = {{"Accept-Language"}, {"fr"}};
  hdrs_t none = {{0}, {0}};
  build(&a, &en, "/x", "");
  build(&b, &fr, "/x", "");
  assert_true(same(&a, &b)); /* not an identity header */
  assert_true(cachekey_add_vary(&a, "Accept-Language", 15, get_hdr, &en));
  assert_true(cachekey_add_vary(&b, "accept-language", 15, get_hdr, &fr));
  assert_false(same(&a, &b));
  build(&b, &none, "/x", "");
  assert_true(cachekey_add_vary(&b, " Accept-Language ,", 18, get_hdr, &none));
  assert_false(same(&a, &b));
  assert_false(cachekey_add_vary(&b, "Accept, *", 9, get_hdr, &none));
  cachekey_free(&a);
  cachekey_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paths),
      cmocka_unit_test(test_queries),
      cmocka_unit_test(test_identity_separates_keys),
      cmocka_unit_test(test_vary),
      cmocka_unit_test(test_long_inputs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
