/* test_response.c — stored responses and the store/share/freshness policy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "policy.h"
#include "response.h"

#define H(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}
#define NOW ((time_t)1700000000)

static coalesce_value_t *make(int status, const hdr_t *h, size_t n,
                              const char *body) {
  coalesce_value_t *v =
      response_new(status, h, n, body, strlen(body), NOW);
  assert_non_null(v);
  return v;
}

static void test_head_is_prebuilt_without_hop_by_hop(void **state) {
  (void)state;
  hdr_t h[] = {H("Content-Type", "application/json"), H("Connection", "X-Trace"),
               H("X-Trace", "secret"), H("Keep-Alive", "timeout=5"),
               H("Transfer-Encoding", "chunked"), H("Content-Length", "999"),
               H("Age", "7"), H("ETag", "\"v1\"")};
  coalesce_value_t *v = make(200, h, 8, "{\"a\":1}");
  const response_t *r = response_of(v);
  char head[512];
  memcpy(head, r->head, r->head_len);
  head[r->head_len] = '\0';
  assert_string_equal(head, "HTTP/1.1 200 OK\r\n"
                            "Content-Type: application/json\r\n"
                            "ETag: \"v1\"\r\n"
                            "Content-Length: 7\r\n");
  assert_int_equal(r->upstream_age, 7);
  assert_int_equal(r->body_len, 7);
  assert_memory_equal(r->body, "{\"a\":1}", 7);
  assert_non_null(response_header(r, "etag", NULL));
  assert_null(response_header(r, "x-trace", NULL));
  assert_true(coalesce_value_charge(v) > r->body_len + r->head_len);
  char tail[128];
  size_t tl = response_tail(tail, sizeof tail, "HIT", 3, true, NULL);
  tail[tl] = '\0';
  assert_string_equal(tail, "X-Cache: HIT\r\nAge: 3\r\nConnection: close\r\n\r\n");
  coalesce_value_release(v);
}

static void test_split_attempts_are_dropped(void **state) {
  (void)state;
  hdr_t h[] = {H("X-A", "ok"), H("X-B", "evil\r\nSet-Cookie: x=1"),
               H("X-C", "nul\0byte")};
  coalesce_value_t *v = make(200, h, 3, "");
  const response_t *r = response_of(v);
  assert_int_equal(r->n_headers, 1);
  assert_null(memchr(r->head, '\0', r->head_len));
  char head[256];
  memcpy(head, r->head, r->head_len);
  head[r->head_len] = '\0';
  assert_null(strstr(head, "Set-Cookie"));
  coalesce_value_release(v);
}

static void test_304_refresh_merges_fields(void **state) {
  (void)state;
  hdr_t h[] = {H("ETag", "\"v1\""), H("Cache-Control", "max-age=10"),
               H("X-Old", "kept")};
  coalesce_value_t *v = make(200, h, 3, "body");
  hdr_t upd[] = {H("Cache-Control", "max-age=60"), H("Content-Length", "0")};
  coalesce_value_t *r2 = response_refresh(response_of(v), upd, 2, NOW + 5);
  const response_t *r = response_of(r2);
  size_t len;
  const char *cc = response_header(r, "cache-control", &len);
  assert_memory_equal(cc, "max-age=60", len);
  assert_non_null(response_header(r, "x-old", NULL));
  assert_int_equal(r->body_len, 4);
  assert_int_equal(r->status, 200);
  coalesce_value_release(v);
  coalesce_value_release(r2);
}

/* A stored response is one exactly-sized allocation whose field table
 * points into the head instead of copying the fields (memory per cache
 * entry, DESIGN.md §6). */
static void test_one_allocation_fields_point_into_head(void **state) {
  (void)state;
  hdr_t h[] = {H("Content-Type", "application/json"), H("ETag", "\"v1\""),
               H("X-Empty", "")};
  coalesce_value_t *v = make(200, h, 3, "{\"a\":1}");
  const response_t *r = response_of(v);
  assert_int_equal(r->n_headers, 3);
  for (size_t i = 0; i < r->n_headers; i++) {
    hdr_t field = response_field(r, i);
    const hdr_t *f = &field;
    assert_true(f->name >= r->head && f->name + f->name_len <= r->head + r->head_len);
    assert_ptr_equal(f->value, f->name + f->name_len + 2); /* "name: value" */
    assert_memory_equal(f->name, h[i].name, h[i].name_len);
    assert_memory_equal(f->value, h[i].value, h[i].value_len);
  }
  /* the value's own data holds everything: struct, table, head, body */
  const char *base = coalesce_value_data(v);
  assert_ptr_equal(r, base);
  assert_true(r->head > base && r->body > r->head);
  assert_ptr_equal(r->body, r->head + r->head_len);
  assert_int_equal(r->body[r->body_len], '\0');
  size_t need = sizeof(response_t) + 4 * sizeof(response_field_t) + r->head_len +
                r->body_len + 1;
  assert_int_equal(coalesce_value_len(v), need);
  assert_true(coalesce_value_charge(v) >= need);
  assert_true(coalesce_value_charge(v) <= need + 32); /* no slack, no copies */
  /* lookups return lengths: values are not NUL-terminated */
  size_t len = 99;
  const char *et = response_header(r, "ETAG", &len);
  assert_int_equal(len, 4);
  assert_memory_equal(et, "\"v1\"\r\n", 6);
  assert_non_null(response_header(r, "x-empty", &len));
  assert_int_equal(len, 0);
  coalesce_value_release(v);
}

/* The hand-written tail formats exactly like the snprintf it replaced,
 * truncation included. */
static void test_tail_matches_snprintf(void **state) {
  (void)state;
  const char *xc[] = {"HIT", "STALE-IF-ERROR", ""};
  const uint64_t ages[] = {0, 7, 10, 1234567, UINT64_MAX};
  const char *extra[] = {NULL, "Retry-After: 3\r\n"};
  const size_t caps[] = {1, 5, 20, 40, 128, 192};
  for (size_t a = 0; a < 3; a++)
    for (size_t b = 0; b < 5; b++)
      for (size_t c = 0; c < 2; c++)
        for (size_t d = 0; d < 2; d++)
          for (size_t e = 0; e < 6; e++) {
            char want[256], got[256];
            int n = snprintf(want, caps[e], "X-Cache: %s\r\nAge: %llu\r\n%s%s\r\n",
                             xc[a], (unsigned long long)ages[b],
                             c ? "Connection: close\r\n" : "",
                             extra[d] ? extra[d] : "");
            size_t wl = (size_t)n < caps[e] ? (size_t)n : caps[e] - 1;
            memset(got, 'Z', sizeof got);
            size_t gl = response_tail(got, caps[e], xc[a], ages[b], c != 0,
                                      extra[d]);
            assert_int_equal(gl, wl);
            assert_memory_equal(got, want, wl + 1); /* with the NUL */
          }
}

static policy_route_t route(policy_mode_t m) {
  policy_route_t p = {.mode = m,
                      .ttl_ns = 5 * COALESCE_NS_PER_SEC,
                      .swr_ns = 30 * COALESCE_NS_PER_SEC,
                      .sie_ns = 300 * COALESCE_NS_PER_SEC};
  return p;
}

static policy_decision_t decide(policy_mode_t m, int status, const hdr_t *h,
                                size_t n, bool authorized) {
  policy_route_t pr = route(m);
  coalesce_value_t *v = make(status, h, n, "x");
  policy_decision_t d;
  policy_decide(&pr, response_of(v), authorized, NOW, &d);
  coalesce_value_release(v);
  return d;
}

static void test_private_answers_are_neither_stored_nor_shared(void **state) {
  (void)state;
  hdr_t a[] = {H("Cache-Control", "private, max-age=60")};
  hdr_t b[] = {H("Cache-Control", "no-store")};
  hdr_t c[] = {H("Set-Cookie", "sid=1")};
  hdr_t d[] = {H("Vary", "*")};
  for (int m = 0; m < 2; m++) {
    policy_decision_t x = decide((policy_mode_t)m, 200, a, 1, false);
    assert_false(x.store || x.share);
    x = decide((policy_mode_t)m, 200, b, 1, false);
    assert_false(x.store || x.share);
    x = decide((policy_mode_t)m, 200, c, 1, false);
    assert_false(x.store || x.share);
    x = decide((policy_mode_t)m, 200, d, 1, false);
    assert_false(x.store || x.share);
  }
}

static void test_override_uses_route_ttl_and_statuses(void **state) {
  (void)state;
  hdr_t h[] = {H("Cache-Control", "max-age=1")};
  policy_decision_t d = decide(POLICY_OVERRIDE, 200, h, 1, false);
  assert_true(d.store && d.share && !d.failure);
  assert_int_equal(d.ttl.fresh_ns, 5 * COALESCE_NS_PER_SEC); /* route wins */
  assert_int_equal(d.ttl.swr_ns, 30 * COALESCE_NS_PER_SEC);
  d = decide(POLICY_OVERRIDE, 500, NULL, 0, false);
  assert_false(d.store); /* shared with the flight, not cached */
  assert_true(d.share && d.failure);
  d = decide(POLICY_OVERRIDE, 404, NULL, 0, false);
  assert_false(d.store); /* negative caching is off unless configured */
  policy_route_t neg = route(POLICY_OVERRIDE);
  neg.negative_ttl_ns = 2 * COALESCE_NS_PER_SEC;
  coalesce_value_t *v404 = make(404, NULL, 0, "nf");
  policy_decide(&neg, response_of(v404), false, NOW, &d);
  assert_true(d.store);
  assert_int_equal(d.ttl.fresh_ns, 2 * COALESCE_NS_PER_SEC);
  coalesce_value_release(v404);
  hdr_t ra[] = {H("Retry-After", "7")};
  d = decide(POLICY_OVERRIDE, 429, ra, 1, false);
  assert_true(d.failure);
  assert_int_equal(d.retry_after_ns, 7 * COALESCE_NS_PER_SEC);
}

static void test_origin_freshness(void **state) {
  (void)state;
  hdr_t smax[] = {H("Cache-Control", "max-age=10, s-maxage=60")};
  policy_decision_t d = decide(POLICY_ORIGIN, 200, smax, 1, false);
  assert_int_equal(d.ttl.fresh_ns, 60 * COALESCE_NS_PER_SEC);
  hdr_t aged[] = {H("Cache-Control", "max-age=100"), H("Age", "40")};
  d = decide(POLICY_ORIGIN, 200, aged, 2, false);
  assert_int_equal(d.ttl.fresh_ns, 60 * COALESCE_NS_PER_SEC);
  assert_int_equal(d.ttl.age_ns, 40 * COALESCE_NS_PER_SEC);
  hdr_t exp[] = {H("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                 H("Expires", "Tue, 14 Nov 2023 22:14:20 GMT")};
  d = decide(POLICY_ORIGIN, 200, exp, 2, false);
  assert_int_equal(d.ttl.fresh_ns, 60 * COALESCE_NS_PER_SEC);
  hdr_t badexp[] = {H("Expires", "0")};
  d = decide(POLICY_ORIGIN, 200, badexp, 1, false);
  assert_int_equal(d.ttl.fresh_ns, 0); /* invalid Expires: already stale */
  d = decide(POLICY_ORIGIN, 200, NULL, 0, false);
  assert_int_equal(d.ttl.fresh_ns, 5 * COALESCE_NS_PER_SEC); /* route TTL */
  hdr_t mr[] = {H("Cache-Control", "max-age=60, must-revalidate")};
  d = decide(POLICY_ORIGIN, 200, mr, 1, false);
  assert_int_equal(d.ttl.swr_ns, 0);
  assert_int_equal(d.ttl.sie_ns, 0);
  hdr_t swr[] = {H("Cache-Control", "max-age=60, stale-while-revalidate=9, "
                                    "stale-if-error=99")};
  d = decide(POLICY_ORIGIN, 200, swr, 1, false);
  assert_int_equal(d.ttl.swr_ns, 9 * COALESCE_NS_PER_SEC);
  assert_int_equal(d.ttl.sie_ns, 99 * COALESCE_NS_PER_SEC);
}

static void test_origin_authorization_rule(void **state) {
  (void)state;
  hdr_t plain[] = {H("Cache-Control", "max-age=60")};
  assert_false(decide(POLICY_ORIGIN, 200, plain, 1, true).store);
  hdr_t pub[] = {H("Cache-Control", "public, max-age=60")};
  assert_true(decide(POLICY_ORIGIN, 200, pub, 1, true).store);
  hdr_t sm[] = {H("Cache-Control", "s-maxage=60")};
  assert_true(decide(POLICY_ORIGIN, 200, sm, 1, true).store);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_head_is_prebuilt_without_hop_by_hop),
      cmocka_unit_test(test_split_attempts_are_dropped),
      cmocka_unit_test(test_304_refresh_merges_fields),
      cmocka_unit_test(test_one_allocation_fields_point_into_head),
      cmocka_unit_test(test_tail_matches_snprintf),
      cmocka_unit_test(test_private_answers_are_neither_stored_nor_shared),
      cmocka_unit_test(test_override_uses_route_ttl_and_statuses),
      cmocka_unit_test(test_origin_freshness),
      cmocka_unit_test(test_origin_authorization_rule),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
