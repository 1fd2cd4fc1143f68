/*
 * fuzz_ratelimit_headers.c — libFuzzer driver for daemon/ratelimit_headers.c.
 *
 * The input is untrusted upstream bytes: '\n'-separated "Name:value" field
 * lines (a line without ':' is a name with an empty value), at most
 * MAX_FIELDS of them. An optional first line "@<signed decimal>" sets the
 * wall-clock `now` (default 1700000000), so epoch resets and HTTP-dates
 * meet extreme clocks too. Properties checked (abort on violation):
 *   - rl_parse returns true exactly when it names a family, and every
 *     figure is RL_ABSENT or within [0, RL_MAX]; the X family has no window;
 *   - field order does not matter: the fields reversed give the same result;
 *   - repeats do not matter: every field twice gives the same result;
 *   - field names are case-insensitive: upper-casing the names changes
 *     nothing.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit_headers.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_ratelimit_headers: property failed: %s "          \
                      "(line %d)\n",                                           \
              #cond, __LINE__);                                                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define MAX_FIELDS 64

static bool in_range(int64_t v) {
  return v == RL_ABSENT || (v >= 0 && v <= RL_MAX);
}

static bool same(const rl_info_t *a, const rl_info_t *b) {
  return a->family == b->family && a->limit == b->limit &&
         a->remaining == b->remaining && a->reset_s == b->reset_s &&
         a->window_s == b->window_s && a->retry_after_s == b->retry_after_s;
}

/* "@-123\n": a signed decimal, saturating; consumes the line. */
static time_t read_now(const char **p, size_t *n) {
  time_t now = 1700000000;
  if (*n == 0 || (*p)[0] != '@')
    return now;
  const char *nl = memchr(*p, '\n', *n);
  size_t len = nl ? (size_t)(nl - *p) : *n;
  int64_t v = 0;
  bool neg = len > 1 && (*p)[1] == '-';
  for (size_t i = neg ? 2 : 1; i < len; i++)
    if ((*p)[i] >= '0' && (*p)[i] <= '9' && v < INT64_MAX / 10 - 10)
      v = v * 10 + ((*p)[i] - '0');
  now = (time_t)(neg ? -v : v);
  *p += len < *n ? len + 1 : len;
  *n -= len < *n ? len + 1 : len;
  return now;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  size_t n = size;
  time_t now = read_now(&p, &n);

  hdr_t h[MAX_FIELDS];
  size_t nh = 0;
  size_t i = 0;
  while (i < n && nh < MAX_FIELDS) {
    const char *nl = memchr(p + i, '\n', n - i);
    size_t end = nl ? (size_t)(nl - p) : n;
    const char *colon = memchr(p + i, ':', end - i);
    size_t name_end = colon ? (size_t)(colon - p) : end;
    size_t val = colon ? name_end + 1 : end;
    h[nh++] = (hdr_t){p + i, name_end - i, p + val, end - val};
    i = end + 1;
  }

  rl_info_t base, other;
  bool any = rl_parse(h, nh, now, &base);
  CHECK(any == (base.family != RL_FAMILY_NONE));
  CHECK(base.family >= RL_FAMILY_NONE && base.family <= RL_FAMILY_X);
  CHECK(in_range(base.limit) && in_range(base.remaining) &&
        in_range(base.reset_s) && in_range(base.window_s) &&
        in_range(base.retry_after_s));
  CHECK(base.family != RL_FAMILY_X || base.window_s == RL_ABSENT);

  hdr_t twice[2 * MAX_FIELDS];
  for (size_t k = 0; k < nh; k++)
    twice[k] = h[nh - 1 - k], twice[nh + k] = h[k];
  CHECK(rl_parse(twice, nh, now, &other) == any); /* reversed */
  CHECK(same(&base, &other));
  CHECK(rl_parse(twice, 2 * nh, now, &other) == any); /* repeated */
  CHECK(same(&base, &other));

  /* Upper-cased names, in exact-size heap copies so ASan sees overreads. */
  char *names[MAX_FIELDS];
  for (size_t k = 0; k < nh; k++) {
    names[k] = malloc(h[k].name_len ? h[k].name_len : 1);
    if (names[k] == NULL)
      abort();
    for (size_t c = 0; c < h[k].name_len; c++)
      names[k][c] = (char)toupper((unsigned char)h[k].name[c]);
    twice[k] = h[k];
    twice[k].name = names[k];
  }
  CHECK(rl_parse(twice, nh, now, &other) == any);
  CHECK(same(&base, &other));
  for (size_t k = 0; k < nh; k++)
    free(names[k]);
  return 0;
}
