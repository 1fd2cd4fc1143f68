/* test_response.c — stored responses and the store/share/freshness policy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "policy.h"
#include "response.h"

#define H(n, v)                                                                \
  { n, sizeof(n) - 1, v, sizeof(v) - 1 }
#define NOW ((time_t)1700000000)

static coalesce_value_t *make(int status, const hdr_t *h, size_t n,
                              const char *body) {
  coalesce_value_t *v = response_new(status, h, n, body, strlen(body), NOW);
  assert_non_null(v);
  return v;
}

/* What send_value writes before the body: status line, stored field lines,
 * tail (Content-Length first). */
static void answer_head(const response_t *r, char *out, size_t cap,
                        const char *xcache, uint64_t age, bool close) {
  size_t sl, fl;
  const char *s = response_status_line(r, &sl);
  const char *f = response_field_lines(r, &fl);
  assert_true(sl + fl < cap);
  memcpy(out, s, sl);
  memcpy(out + sl, f, fl);
  response_tail(out + sl + fl, cap - sl - fl, response_content_length(r),
                xcache, age, close, NULL);
}

static void test_head_is_prebuilt_without_hop_by_hop(void **state) {
  (void)state;
  hdr_t h[] = {H("Content-Type", "application/json"),
               H("Connection", "X-Trace"),
               H("X-Trace", "secret"),
               H("Keep-Alive", "timeout=5"),
               H("Transfer-Encoding", "chunked"),
               H("Content-Length", "999"),
               H("Age", "7"),
               H("ETag", "\"v1\"")};
  coalesce_value_t *v = make(200, h, 8, "{\"a\":1}");
  const response_t *r = response_of(v);
  /* only the forwarded field lines are stored */
  assert_int_equal(r->lines_len, strlen("Content-Type: application/json\r\n"
                                        "ETag: \"v1\"\r\n"));
  char head[512];
  answer_head(r, head, sizeof head, "HIT", 3, true);
  /* the same bytes as the pre-serialised head + tail of before */
  assert_string_equal(head, "HTTP/1.1 200 OK\r\n"
                            "Content-Type: application/json\r\n"
                            "ETag: \"v1\"\r\n"
                            "Content-Length: 7\r\n"
                            "X-Cache: HIT\r\nAge: 3\r\nConnection: close\r\n"
                            "\r\n");
  assert_int_equal(r->upstream_age, 7);
  assert_int_equal(response_body_len(r), 7);
  assert_memory_equal(response_body(r), "{\"a\":1}", 7);
  assert_non_null(response_header(r, "etag", NULL));
  assert_null(response_header(r, "x-trace", NULL));
  assert_null(response_header(r, "content-length", NULL));
  coalesce_value_release(v);
}

static void test_split_attempts_are_dropped(void **state) {
  (void)state;
  hdr_t h[] = {H("X-A", "ok"), H("X-B", "evil\r\nSet-Cookie: x=1"),
               H("X-C", "nul\0byte"), H("X-D: y", "colon in the name"),
               H("", "no name")};
  coalesce_value_t *v = make(200, h, 5, "");
  const response_t *r = response_of(v);
  assert_int_equal(response_field_count(r), 1);
  size_t fl;
  const char *f = response_field_lines(r, &fl);
  assert_int_equal(fl, 9);
  assert_memory_equal(f, "X-A: ok\r\n", 9);
  coalesce_value_release(v);
}

static void test_304_refresh_merges_fields(void **state) {
  (void)state;
  hdr_t h[] = {H("ETag", "\"v1\""), H("Cache-Control", "max-age=10"),
               H("X-Old", "kept"), H("Expires", "0")};
  coalesce_value_t *v = make(200, h, 4, "body");
  hdr_t upd[] = {H("Cache-Control", "max-age=60"), H("Content-Length", "0"),
                 H("expires", "1"), H("X-New", "added")};
  coalesce_value_t *r2 = response_refresh(response_of(v), upd, 4, NOW + 5);
  const response_t *r = response_of(r2);
  /* the stored fields the 304 does not name, then the 304's own */
  size_t fl;
  const char *f = response_field_lines(r, &fl);
  const char *want = "ETag: \"v1\"\r\n"
                     "X-Old: kept\r\n"
                     "Cache-Control: max-age=60\r\n"
                     "expires: 1\r\n"
                     "X-New: added\r\n";
  assert_int_equal(fl, strlen(want));
  assert_memory_equal(f, want, fl);
  size_t len;
  const char *cc = response_header(r, "cache-control", &len);
  assert_int_equal(len, 10);
  assert_memory_equal(cc, "max-age=60", len);
  assert_int_equal(response_body_len(r), 4);
  assert_memory_equal(response_body(r), "body", 5);
  assert_int_equal(r->status, 200);
  assert_int_equal(r->received, NOW + 5);
  coalesce_value_release(v);
  coalesce_value_release(r2);
}

/* A stored response is one exactly-sized allocation: the struct, the field
 * lines, the body; no pointers, no field table, no status or
 * Content-Length line (memory per cache entry, DESIGN.md §6). */
static void test_one_allocation_nothing_but_lines_and_body(void **state) {
  (void)state;
  assert_true(sizeof(response_t) <= 32);
  hdr_t h[] = {H("Content-Type", "application/json"), H("ETag", "\"v1\""),
               H("X-Empty", ""), H("X-Colon", "a: b:c")};
  coalesce_value_t *v = make(200, h, 4, "{\"a\":1}");
  const response_t *r = response_of(v);
  const char *base = coalesce_value_data(v);
  assert_ptr_equal(r, base);
  size_t fl;
  const char *lines = response_field_lines(r, &fl);
  assert_ptr_equal(lines, base + sizeof(response_t));
  assert_int_equal(fl, r->lines_len);
  assert_ptr_equal(response_body(r), lines + fl);
  assert_int_equal(response_body(r)[response_body_len(r)], '\0');
  size_t need = sizeof(response_t) + fl + response_body_len(r) + 1;
  assert_int_equal(coalesce_value_len(v), need);
  assert_true(coalesce_value_charge(v) >= need);
  assert_true(coalesce_value_charge(v) <= need + 32); /* no slack, no copies */
  /* the iterator gives every field in order, as views of the lines */
  assert_int_equal(response_field_count(r), 4);
  size_t pos = 0, i = 0;
  hdr_t f;
  while (response_next_field(r, &pos, &f)) {
    assert_true(i < 4);
    assert_true(f.name >= lines && f.value + f.value_len + 2 <= lines + fl);
    assert_ptr_equal(f.value, f.name + f.name_len + 2); /* "name: value" */
    assert_int_equal(f.name_len, h[i].name_len);
    assert_memory_equal(f.name, h[i].name, h[i].name_len);
    assert_int_equal(f.value_len, h[i].value_len);
    assert_memory_equal(f.value, h[i].value, h[i].value_len);
    i++;
  }
  assert_int_equal(i, 4);
  assert_int_equal(pos, fl);
  assert_false(response_next_field(r, &pos, &f)); /* stays at the end */
  /* lookups return lengths: values are not NUL-terminated */
  size_t len = 99;
  const char *et = response_header(r, "ETAG", &len);
  assert_int_equal(len, 4);
  assert_memory_equal(et, "\"v1\"\r\n", 6);
  assert_non_null(response_header(r, "x-empty", &len));
  assert_int_equal(len, 0);
  const char *c = response_header(r, "x-colon", &len);
  assert_int_equal(len, 6);
  assert_memory_equal(c, "a: b:c", 6);
  /* a prefix or an extension of a stored name is another name */
  assert_null(response_header(r, "x-col", NULL));
  assert_null(response_header(r, "etags", NULL));
  assert_null(response_header(r, "", NULL));
  coalesce_value_release(v);
}

static void test_no_fields(void **state) {
  (void)state;
  coalesce_value_t *v = make(204, NULL, 0, "");
  const response_t *r = response_of(v);
  size_t pos = 0, fl;
  hdr_t f;
  assert_false(response_next_field(r, &pos, &f));
  assert_int_equal(response_field_count(r), 0);
  assert_null(response_header(r, "etag", NULL));
  (void)response_field_lines(r, &fl);
  assert_int_equal(fl, 0);
  assert_int_equal(coalesce_value_len(v), sizeof(response_t) + 1);
  coalesce_value_release(v);
}

/* Known statuses answer with a static line and store none; others keep
 * their own line before the fields, so every 100..999 still works. */
static void test_status_lines(void **state) {
  (void)state;
  hdr_t h[] = {H("X-A", "1")};
  const struct {
    int status;
    const char *line;
    bool own;
  } cases[] = {{200, "HTTP/1.1 200 OK\r\n", false},
               {404, "HTTP/1.1 404 Not Found\r\n", false},
               {101, "HTTP/1.1 101 Switching Protocols\r\n", false},
               {505, "HTTP/1.1 505 HTTP Version Not Supported\r\n", false},
               {100, "HTTP/1.1 100 Continue\r\n", false},
               {299, "HTTP/1.1 299 Unknown\r\n", true},
               {599, "HTTP/1.1 599 Unknown\r\n", true},
               {999, "HTTP/1.1 999 Unknown\r\n", true}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    coalesce_value_t *v = make(cases[i].status, h, 1, "xy");
    const response_t *r = response_of(v);
    assert_int_equal(r->status, cases[i].status);
    assert_int_equal((r->len_hi & RESPONSE_OWN_STATUS_LINE) != 0, cases[i].own);
    size_t sl, fl, ll = strlen(cases[i].line);
    const char *line = response_status_line(r, &sl);
    assert_int_equal(sl, ll);
    assert_memory_equal(line, cases[i].line, ll);
    /* the fields and the body are the same either way */
    const char *f = response_field_lines(r, &fl);
    assert_int_equal(fl, 8);
    assert_memory_equal(f, "X-A: 1\r\n", 8);
    assert_int_equal(response_field_count(r), 1);
    size_t vl;
    assert_memory_equal(response_header(r, "x-a", &vl), "1", 1);
    assert_int_equal(response_body_len(r), 2);
    assert_string_equal(response_body(r), "xy");
    assert_int_equal(coalesce_value_len(v),
                     sizeof(response_t) + (cases[i].own ? ll : 0) + 8 + 3);
    /* a static line is shared, not stored */
    if (!cases[i].own)
      assert_true(line < (const char *)r || line > response_body(r) + 2);
    coalesce_value_release(v);
  }
  /* outside 100..999: refused */
  int bad[] = {-1, 0, 99, 1000, 65536};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_null(response_new(bad[i], h, 1, "", 0, NOW));
}

/* Content-Length is written per answer, for every status but 1xx, 204 and
 * 304, with the body's length (a HEAD answer says the GET's). */
static void test_content_length_in_tail(void **state) {
  (void)state;
  const struct {
    int status;
    bool has;
  } cases[] = {{100, false}, {101, false}, {199, false}, {200, true},
               {203, true},  {204, false}, {206, true},  {301, true},
               {304, false}, {404, true},  {500, true},  {599, true}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    coalesce_value_t *v = make(cases[i].status, NULL, 0, "hello");
    const response_t *r = response_of(v);
    uint64_t cl = response_content_length(r);
    char tail[192];
    size_t tl = response_tail(tail, sizeof tail, cl, "MISS", 0, false, NULL);
    assert_int_equal(tl, strlen(tail));
    if (cases[i].has) {
      assert_int_equal(cl, 5);
      assert_string_equal(tail, "Content-Length: 5\r\nX-Cache: MISS\r\n"
                                "Age: 0\r\n\r\n");
    } else {
      assert_int_equal(cl, RESPONSE_NO_LENGTH);
      assert_string_equal(tail, "X-Cache: MISS\r\nAge: 0\r\n\r\n");
    }
    coalesce_value_release(v);
  }
  /* the longest tail fits the proxy's buffer */
  char tail[192];
  size_t tl = response_tail(tail, sizeof tail, UINT64_MAX - 1, "STALE-IF-ERROR",
                            UINT64_MAX, true, NULL);
  assert_true(tl < 160);
}

/* The hand-written tail formats exactly like snprintf, truncation
 * included. */
static void test_tail_matches_snprintf(void **state) {
  (void)state;
  const char *xc[] = {"HIT", "STALE-IF-ERROR", ""};
  const uint64_t ages[] = {0, 7, 10, 1234567, UINT64_MAX};
  const uint64_t lens[] = {RESPONSE_NO_LENGTH, 0, 1024, UINT64_MAX - 1};
  const char *extra[] = {NULL, "Retry-After: 3\r\n"};
  const size_t caps[] = {1, 5, 20, 40, 128, 192};
  for (size_t l = 0; l < 4; l++)
    for (size_t a = 0; a < 3; a++)
      for (size_t b = 0; b < 5; b++)
        for (size_t c = 0; c < 2; c++)
          for (size_t d = 0; d < 2; d++)
            for (size_t e = 0; e < 6; e++) {
              char want[256], got[256], cl[48] = "";
              if (lens[l] != RESPONSE_NO_LENGTH)
                snprintf(cl, sizeof cl, "Content-Length: %llu\r\n",
                         (unsigned long long)lens[l]);
              int n = snprintf(
                  want, caps[e], "%sX-Cache: %s\r\nAge: %llu\r\n%s%s\r\n", cl,
                  xc[a], (unsigned long long)ages[b],
                  c ? "Connection: close\r\n" : "", extra[d] ? extra[d] : "");
              size_t wl = (size_t)n < caps[e] ? (size_t)n : caps[e] - 1;
              memset(got, 'Z', sizeof got);
              size_t gl = response_tail(got, caps[e], lens[l], xc[a], ages[b],
                                        c != 0, extra[d]);
              assert_int_equal(gl, wl);
              assert_memory_equal(got, want, wl + 1); /* with the NUL */
            }
}

/* Age is stored in 32 bits: larger values saturate. */
static void test_upstream_age_saturates(void **state) {
  (void)state;
  hdr_t big[] = {H("Age", "4294967296")}, max[] = {H("Age", "4294967295")},
        junk[] = {H("Age", "12"), H("Age", "x")};
  coalesce_value_t *v = make(200, big, 1, "");
  assert_int_equal(response_of(v)->upstream_age, UINT32_MAX);
  coalesce_value_release(v);
  v = make(200, max, 1, "");
  assert_int_equal(response_of(v)->upstream_age, UINT32_MAX);
  coalesce_value_release(v);
  v = make(200, junk, 2, ""); /* a value that is not a number is ignored */
  assert_int_equal(response_of(v)->upstream_age, 12);
  coalesce_value_release(v);
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
      cmocka_unit_test(test_one_allocation_nothing_but_lines_and_body),
      cmocka_unit_test(test_no_fields),
      cmocka_unit_test(test_status_lines),
      cmocka_unit_test(test_content_length_in_tail),
      cmocka_unit_test(test_tail_matches_snprintf),
      cmocka_unit_test(test_upstream_age_saturates),
      cmocka_unit_test(test_private_answers_are_neither_stored_nor_shared),
      cmocka_unit_test(test_override_uses_route_ttl_and_statuses),
      cmocka_unit_test(test_origin_freshness),
      cmocka_unit_test(test_origin_authorization_rule),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
