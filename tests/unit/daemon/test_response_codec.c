/* test_response_codec.c — L2 blobs: round trip, rejection of every damaged
 * blob, and windows that shrink with the wall-clock time spent stored. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "response.h"
#include "response_codec.h"

#define H(n, v)                                                                \
  { n, sizeof(n) - 1, v, sizeof(v) - 1 }
#define RECEIVED ((time_t)1700000000)
#define STORED_MS (UINT64_C(1700000000) * 1000 + 250)
#define S COALESCE_NS_PER_SEC

static coalesce_value_t *sample(void) {
  hdr_t h[] = {H("Content-Type", "application/json"),
               H("ETag", "\"v1\""),
               H("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
               H("Cache-Control", "max-age=60"),
               H("Age", "12"),
               H("X-Empty", "")};
  coalesce_value_t *v =
      response_new(200, h, sizeof h / sizeof *h, "{\"id\":42}", 9, RECEIVED);
  assert_non_null(v);
  return v;
}

static const coalesce_ttl_t TTL = {.fresh_ns = 10 * S,
                                   .swr_ns = 20 * S,
                                   .sie_ns = 30 * S,
                                   .age_ns = 3 * S,
                                   .keep_ns = 40 * S};

static void encode(const coalesce_value_t *v, char **buf, size_t *len) {
  assert_int_equal(response_encode(response_of(v), &TTL, STORED_MS, buf, len),
                   0);
}

static void assert_same_response(const response_t *a, const response_t *b) {
  assert_int_equal(a->status, b->status);
  assert_int_equal(a->len_hi, b->len_hi);
  assert_int_equal(a->lines_len, b->lines_len);
  assert_memory_equal(a + 1, b + 1, a->lines_len); /* the stored lines */
  assert_int_equal(response_body_len(a), response_body_len(b));
  assert_memory_equal(response_body(a), response_body(b), response_body_len(a));
  assert_int_equal(response_field_count(a), response_field_count(b));
  size_t pa = 0, pb = 0;
  hdr_t x, y;
  while (response_next_field(a, &pa, &x)) {
    assert_true(response_next_field(b, &pb, &y));
    assert_int_equal(x.name_len, y.name_len);
    assert_memory_equal(x.name, y.name, x.name_len);
    assert_int_equal(x.value_len, y.value_len);
    assert_memory_equal(x.value, y.value, x.value_len);
  }
  assert_false(response_next_field(b, &pb, &y));
  assert_int_equal(a->date, b->date);
  assert_int_equal(a->received, b->received);
  assert_int_equal(a->upstream_age, b->upstream_age);
}

static void test_round_trip(void **state) {
  (void)state;
  coalesce_value_t *v = sample();
  char *buf;
  size_t len;
  encode(v, &buf, &len);
  coalesce_value_t *back;
  coalesce_ttl_t left;
  assert_int_equal(response_decode(buf, len, STORED_MS, &back, &left), 0);
  assert_same_response(response_of(v), response_of(back));
  assert_int_equal(response_of(back)->upstream_age, 12);
  assert_int_equal(left.fresh_ns, TTL.fresh_ns);
  assert_int_equal(left.swr_ns, TTL.swr_ns);
  assert_int_equal(left.sie_ns, TTL.sie_ns);
  assert_int_equal(left.keep_ns, TTL.keep_ns);
  assert_int_equal(left.age_ns, TTL.age_ns);
  /* a decoded response encodes to the same bytes */
  char *again;
  size_t again_len;
  assert_int_equal(
      response_encode(response_of(back), &TTL, STORED_MS, &again, &again_len),
      0);
  assert_int_equal(again_len, len);
  assert_memory_equal(again, buf, len);
  free(again);
  free(buf);
  coalesce_value_release(back);
  coalesce_value_release(v);
}

static void test_empty_body_and_no_fields(void **state) {
  (void)state;
  coalesce_value_t *v = response_new(204, NULL, 0, "", 0, RECEIVED);
  char *buf;
  size_t len;
  encode(v, &buf, &len);
  coalesce_value_t *back;
  coalesce_ttl_t left;
  assert_int_equal(response_decode(buf, len, STORED_MS, &back, &left), 0);
  assert_same_response(response_of(v), response_of(back));
  free(buf);
  coalesce_value_release(back);
  coalesce_value_release(v);
}

static void test_every_truncation_and_extension_is_rejected(void **state) {
  (void)state;
  coalesce_value_t *v = sample();
  char *buf;
  size_t len;
  encode(v, &buf, &len);
  for (size_t n = 0; n < len; n++) {
    /* a fresh copy of exactly n bytes, so ASan sees any overread */
    char *cut = malloc(n ? n : 1);
    memcpy(cut, buf, n);
    coalesce_value_t *out = (coalesce_value_t *)1;
    coalesce_ttl_t left;
    assert_int_equal(response_decode(cut, n, STORED_MS, &out, &left),
                     COALESCE_EINVAL);
    assert_null(out);
    free(cut);
  }
  char *longer = malloc(len + 1);
  memcpy(longer, buf, len);
  longer[len] = 'x';
  coalesce_value_t *out;
  coalesce_ttl_t left;
  assert_int_equal(response_decode(longer, len + 1, STORED_MS, &out, &left),
                   COALESCE_EINVAL);
  free(longer);
  free(buf);
  coalesce_value_release(v);
}

static void test_damaged_fields_are_rejected(void **state) {
  (void)state;
  coalesce_value_t *v = sample();
  char *buf;
  size_t len;
  encode(v, &buf, &len);
  coalesce_value_t *out;
  coalesce_ttl_t left;
  struct {
    size_t off;
    char byte;
  } cases[] = {
      {0, 'X'},         /* magic */
      {4, 2},           /* version */
      {5, 1},           /* flags */
      {72, 0},          /* status 0x??00 -> low byte zero: 0xC8 -> 0 */
      {76, 100},        /* field count */
      {83, 1},          /* body length */
      {88, (char)0xff}, /* first field's name length */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[cases[i].off] = cases[i].byte;
    assert_int_equal(response_decode(bad, len, STORED_MS, &out, &left),
                     COALESCE_EINVAL);
    free(bad);
  }
  /* a CR smuggled into the first field's name ("Content-Type") */
  char *bad = malloc(len);
  memcpy(bad, buf, len);
  assert_memory_equal(bad + 96, "Content-Type", 12);
  bad[96 + 3] = '\r';
  assert_int_equal(response_decode(bad, len, STORED_MS, &out, &left),
                   COALESCE_EINVAL);
  bad[96 + 3] = ':';
  assert_int_equal(response_decode(bad, len, STORED_MS, &out, &left),
                   COALESCE_EINVAL);
  free(bad);
  free(buf);
  coalesce_value_release(v);
}

static void test_windows_shrink_with_elapsed_time(void **state) {
  (void)state;
  coalesce_value_t *v = sample();
  char *buf;
  size_t len;
  encode(v, &buf, &len);
  coalesce_value_t *out;
  coalesce_ttl_t l;

  /* 4 s later: 6 s fresh left, the other windows whole */
  assert_int_equal(response_decode(buf, len, STORED_MS + 4000, &out, &l), 0);
  assert_int_equal(l.fresh_ns, 6 * S);
  assert_int_equal(l.swr_ns, 20 * S);
  assert_int_equal(l.sie_ns, 30 * S);
  assert_int_equal(l.keep_ns, 40 * S);
  assert_int_equal(l.age_ns, 7 * S);
  coalesce_value_release(out);

  /* 15 s: fresh gone, 15 s of stale-while-revalidate left */
  assert_int_equal(response_decode(buf, len, STORED_MS + 15000, &out, &l), 0);
  assert_int_equal(l.fresh_ns, 0);
  assert_int_equal(l.swr_ns, 15 * S);
  assert_int_equal(l.sie_ns, 30 * S);
  assert_int_equal(l.age_ns, 18 * S);
  coalesce_value_release(out);

  /* 55 s: in stale-if-error, 5 s left of it */
  assert_int_equal(response_decode(buf, len, STORED_MS + 55000, &out, &l), 0);
  assert_int_equal(l.fresh_ns + l.swr_ns, 0);
  assert_int_equal(l.sie_ns, 5 * S);
  assert_int_equal(l.keep_ns, 40 * S);
  coalesce_value_release(out);

  /* 99.999 s: 1 ms of keep left; 100 s: nothing left */
  assert_int_equal(response_decode(buf, len, STORED_MS + 99999, &out, &l), 0);
  assert_int_equal(l.keep_ns, COALESCE_NS_PER_MS);
  coalesce_value_release(out);
  assert_int_equal(response_decode(buf, len, STORED_MS + 100000, &out, &l),
                   COALESCE_ENOTFOUND);
  assert_null(out);

  /* a clock behind the writer's: counts as just stored */
  assert_int_equal(response_decode(buf, len, STORED_MS - 5000, &out, &l), 0);
  assert_int_equal(l.fresh_ns, 10 * S);
  coalesce_value_release(out);

  assert_int_equal(response_codec_ttl_ms(&TTL), 100000);
  coalesce_ttl_t tiny = {.fresh_ns = 1};
  assert_int_equal(response_codec_ttl_ms(&tiny), 1);
  free(buf);
  coalesce_value_release(v);
}

static void test_unencodable_is_refused(void **state) {
  (void)state;
  /* response_new drops a name holding ':' (the decoder would refuse it) */
  hdr_t bad[] = {H("X:A", "v"), H("X-B", "w")};
  coalesce_value_t *v = response_new(200, bad, 2, "b", 1, 1700000000);
  assert_non_null(v);
  assert_int_equal(response_field_count(response_of(v)), 1);
  char *buf = NULL;
  size_t len;
  assert_int_equal(response_encode(response_of(v), &TTL, STORED_MS, &buf, &len),
                   0);
  free(buf);
  coalesce_value_release(v);
  /* more fields than the decoder accepts: refused whole */
  size_t n = RESPONSE_CODEC_MAX_FIELDS + 1;
  hdr_t *many = calloc(n, sizeof *many);
  assert_non_null(many);
  for (size_t i = 0; i < n; i++)
    many[i] = (hdr_t){"X-F", 3, "v", 1};
  v = response_new(200, many, n, "b", 1, 1700000000);
  free(many);
  assert_non_null(v);
  assert_int_equal(response_field_count(response_of(v)), n);
  buf = NULL;
  assert_int_equal(response_encode(response_of(v), &TTL, STORED_MS, &buf, &len),
                   COALESCE_EINVAL);
  assert_null(buf);
  coalesce_value_release(v);
}

/* A status without a static line keeps its own line through a round trip,
 * and the blob is the same layout v1 as before (the wire format is shared
 * with other versions of the fleet). */
static void test_own_status_line_round_trip(void **state) {
  (void)state;
  hdr_t h[] = {H("X-A", "1")};
  coalesce_value_t *v = response_new(599, h, 1, "body", 4, RECEIVED);
  assert_non_null(v);
  const response_t *r = response_of(v);
  assert_true(r->len_hi & RESPONSE_OWN_STATUS_LINE);
  char *buf;
  size_t len;
  encode(v, &buf, &len);
  assert_int_equal(len, 88 + 8 + 3 + 1 + 4);
  assert_memory_equal(buf, "CLSR\x01\x00\x00\x00", 8);
  assert_int_equal((unsigned char)buf[72] | (unsigned char)buf[73] << 8, 599);
  assert_int_equal(buf[76], 1); /* n_fields */
  assert_int_equal(buf[80], 4); /* body_len */
  assert_memory_equal(buf + 88, "\x03\0\0\0\x01\0\0\0X-A1body", 16);
  coalesce_value_t *back;
  coalesce_ttl_t left;
  assert_int_equal(response_decode(buf, len, STORED_MS, &back, &left), 0);
  assert_same_response(r, response_of(back));
  size_t sl;
  const char *line = response_status_line(response_of(back), &sl);
  assert_int_equal(sl, 22);
  assert_memory_equal(line, "HTTP/1.1 599 Unknown\r\n", 22);
  free(buf);
  coalesce_value_release(back);
  coalesce_value_release(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_empty_body_and_no_fields),
      cmocka_unit_test(test_every_truncation_and_extension_is_rejected),
      cmocka_unit_test(test_damaged_fields_are_rejected),
      cmocka_unit_test(test_windows_shrink_with_elapsed_time),
      cmocka_unit_test(test_unencodable_is_refused),
      cmocka_unit_test(test_own_status_line_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
