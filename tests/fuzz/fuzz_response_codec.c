/*
 * fuzz_response_codec.c — libFuzzer driver for daemon/response_codec.c
 * (response_decode reads whatever sits under a Redis key).
 *
 * Input: the raw bytes, as an L2 blob. Seeds in corpus/response_codec/
 * are valid blobs, so mutations reach the field walk and the windows.
 *
 * Properties: decode answers 0, COALESCE_EINVAL or COALESCE_ENOTFOUND
 * (ENOMEM aside) and leaves *out NULL unless 0. A decoded response has a
 * head "HTTP/1.1 " + lines ending in CRLF with no bare CR or LF, and some
 * window left. Encoding it again with the windows left, at the same time,
 * and decoding that gives the same response and windows, and encoding
 * that gives the same bytes (one normalisation reaches a fixed point).
 * One millisecond later exactly one millisecond of windows is gone (or
 * none is left) and the age grew by it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "response_codec.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_response_codec: property failed: %s (line %d)\n",  \
              #cond, __LINE__);                                                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define NOW_MS UINT64_C(1700000000000)

static uint64_t span(const coalesce_ttl_t *t) {
  uint64_t s = t->fresh_ns;
  uint64_t parts[] = {t->swr_ns, t->sie_ns, t->keep_ns};
  for (int i = 0; i < 3; i++)
    s = s > UINT64_MAX - parts[i] ? UINT64_MAX : s + parts[i];
  return s;
}

/* The answer head the proxy writes before the tail: status line and stored
 * field lines. */
static void check_head(const response_t *r) {
  size_t sl, fl;
  const char *line = response_status_line(r, &sl);
  const char *f = response_field_lines(r, &fl);
  CHECK(sl >= 9 && memcmp(line, "HTTP/1.1 ", 9) == 0);
  CHECK(memcmp(line + sl - 2, "\r\n", 2) == 0);
  CHECK(memchr(line, '\n', sl - 1) == NULL);
  CHECK(f + fl == response_body(r));
  for (size_t i = 0; i < fl; i++) {
    if (f[i] == '\r')
      CHECK(i + 1 < fl && f[i + 1] == '\n');
    if (f[i] == '\n')
      CHECK(i > 0 && f[i - 1] == '\r');
    CHECK(f[i] != '\0');
  }
  CHECK(fl == 0 || f[fl - 1] == '\n');
}

static void check_same(const response_t *a, const response_t *b) {
  CHECK(a->status == b->status && a->len_hi == b->len_hi &&
        a->len_lo == b->len_lo);
  CHECK(a->lines_len == b->lines_len &&
        memcmp(a + 1, b + 1, a->lines_len) == 0);
  CHECK(memcmp(response_body(a), response_body(b), response_body_len(a)) == 0);
  CHECK(response_field_count(a) == response_field_count(b));
  size_t pa = 0, pb = 0;
  hdr_t x, y;
  while (response_next_field(a, &pa, &x)) {
    CHECK(response_next_field(b, &pb, &y));
    CHECK(x.name_len == y.name_len && memcmp(x.name, y.name, x.name_len) == 0);
    CHECK(x.value_len == y.value_len &&
          memcmp(x.value, y.value, x.value_len) == 0);
  }
  CHECK(!response_next_field(b, &pb, &y));
  CHECK(a->date == b->date && a->received == b->received &&
        a->upstream_age == b->upstream_age);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *in = (const char *)data;
  coalesce_value_t *v = (coalesce_value_t *)&size; /* must be reset */
  coalesce_ttl_t t;
  int rc = response_decode(in, size, NOW_MS, &v, &t);
  if (rc != 0) {
    CHECK(rc == COALESCE_EINVAL || rc == COALESCE_ENOTFOUND ||
          rc == COALESCE_ENOMEM);
    CHECK(v == NULL);
    return 0;
  }
  const response_t *r = response_of(v);
  check_head(r);
  CHECK(span(&t) > 0);

  /* re-encode with what is left, now: a fixed point after one round */
  char *b1, *b2;
  size_t l1, l2;
  CHECK(response_encode(r, &t, NOW_MS, &b1, &l1) == 0);
  coalesce_value_t *v2;
  coalesce_ttl_t t2;
  CHECK(response_decode(b1, l1, NOW_MS, &v2, &t2) == 0);
  check_same(r, response_of(v2));
  CHECK(memcmp(&t, &t2, sizeof t) == 0);
  CHECK(response_encode(response_of(v2), &t2, NOW_MS, &b2, &l2) == 0);
  CHECK(l1 == l2 && memcmp(b1, b2, l1) == 0);

  /* one millisecond later */
  coalesce_value_t *v3;
  coalesce_ttl_t t3;
  rc = response_decode(b1, l1, NOW_MS + 1, &v3, &t3);
  if (span(&t) <= COALESCE_NS_PER_MS) {
    CHECK(rc == COALESCE_ENOTFOUND && v3 == NULL);
  } else {
    CHECK(rc == 0);
    if (span(&t) != UINT64_MAX)
      CHECK(span(&t3) == span(&t) - COALESCE_NS_PER_MS);
    if (t.age_ns < UINT64_MAX - COALESCE_NS_PER_MS)
      CHECK(t3.age_ns == t.age_ns + COALESCE_NS_PER_MS);
    check_same(r, response_of(v3));
    coalesce_value_release(v3);
  }
  free(b1);
  free(b2);
  coalesce_value_release(v2);
  coalesce_value_release(v);
  return 0;
}
