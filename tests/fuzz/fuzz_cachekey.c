/*
 * fuzz_cachekey.c — libFuzzer driver for daemon/cachekey.c.
 *
 * Two uses of each input:
 *   1. The whole input, as raw bytes, is a request path and a query string
 *      (with a roomy and with a tight output cap). Properties: the result
 *      fits the cap; it is made of visible ASCII with only upper-case
 *      escapes of non-unreserved, non-NUL bytes; a path starts with '/' and
 *      has no "." or ".." segment; a query has no empty parameter; both are
 *      idempotent (normalising the output gives the output); a tight cap
 *      either fails or gives the same result.
 *   2. Split on '\n': line 0 the path, line 1 the query, line 2 a Vary
 *      value, further lines "name: value" request headers. Properties of
 *      cachekey_build + cachekey_add_vary: the key decodes field by field
 *      back to exactly the inputs (so fields can never run together); it is
 *      deterministic; moving the path/query boundary changes the key;
 *      add_vary fails exactly when Vary lists "*".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cachekey.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_cachekey: property failed: %s (line %d)\n", #cond, \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

typedef long (*norm_fn)(const char *in, size_t len, char *out, size_t cap);

static bool unreserved(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

static int upper_hex(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Visible ASCII only; every escape is %XX upper-case, of a byte that must
 * stay escaped (not unreserved, not NUL). */
static void check_escapes(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    CHECK(c > 0x20 && c < 0x7f);
    if (c != '%')
      continue;
    CHECK(i + 2 < n);
    int hi = upper_hex((unsigned char)s[i + 1]);
    int lo = upper_hex((unsigned char)s[i + 2]);
    CHECK(hi >= 0 && lo >= 0);
    int v = hi * 16 + lo;
    CHECK(v != 0 && !unreserved(v));
    i += 2;
  }
}

static void check_path_shape(const char *s, size_t n) {
  CHECK(n >= 1 && s[0] == '/');
  size_t i = 0;
  while (i < n) { /* s[i] == '/' starts each segment */
    size_t j = i + 1;
    while (j < n && s[j] != '/')
      j++;
    size_t seg = j - i - 1;
    CHECK(!(seg == 1 && s[i + 1] == '.'));
    CHECK(!(seg == 2 && s[i + 1] == '.' && s[i + 2] == '.'));
    i = j;
  }
}

static void check_query_shape(const char *s, size_t n) {
  if (n == 0)
    return;
  CHECK(s[0] != '&' && s[n - 1] != '&');
  CHECK(memmem(s, n, "&&", 2) == NULL);
}

/* Runs fn with an exact-size output buffer (ASan catches any overrun).
 * Returns the length or -1; *out is malloc'ed (caller frees) on success. */
static long run(norm_fn fn, const char *in, size_t len, size_t cap,
                char **out) {
  char *buf = malloc(cap ? cap : 1);
  *out = NULL;
  if (buf == NULL)
    return -1;
  long n = fn(in, len, buf, cap);
  CHECK(n >= -1);
  if (n < 0) {
    free(buf);
    return -1;
  }
  CHECK((size_t)n <= cap);
  *out = buf;
  return n;
}

static void fuzz_normaliser(norm_fn fn, bool is_path, const char *in,
                            size_t len) {
  /* Normalising never grows the text (escapes are kept or shortened, dot
   * segments removed); +1 for "/" from an all-dots path. */
  size_t roomy = len + 1;
  char *out;
  long n = run(fn, in, len, roomy, &out);
  if (n < 0)
    return;
  if (is_path) {
    CHECK(len > 0 && in[0] == '/');
    check_path_shape(out, (size_t)n);
  } else {
    check_query_shape(out, (size_t)n);
  }
  check_escapes(out, (size_t)n);

  /* Idempotence. */
  char *again;
  long m = run(fn, out, (size_t)n, (size_t)n + 1, &again);
  CHECK(m == n);
  CHECK(memcmp(again, out, (size_t)n) == 0);
  free(again);

  /* A tight cap (derived from the input) fails or changes nothing. */
  size_t tight = len ? (unsigned char)in[len - 1] % (len + 1) : 0;
  char *small;
  long k = run(fn, in, len, tight, &small);
  if (k >= 0) {
    CHECK(k == n);
    CHECK(memcmp(small, out, (size_t)n) == 0);
    free(small);
  }
  free(out);
}

/* ---- keys -----------------------------------------------------------------
 */

typedef struct field {
  const char *p;
  size_t n;
} field_t;

#define MAX_HEADERS 16

typedef struct hdrs {
  field_t names[MAX_HEADERS], values[MAX_HEADERS];
  size_t n;
} hdrs_t;

static const char *get_hdr(void *ud, const char *name, size_t *len) {
  const hdrs_t *h = ud;
  size_t nl = strlen(name);
  for (size_t i = 0; i < h->n; i++) {
    if (h->names[i].n == nl && strncasecmp(h->names[i].p, name, nl) == 0) {
      *len = h->values[i].n;
      return h->values[i].p;
    }
  }
  return NULL;
}

/* Reads one length-prefixed field of the key at *off. */
static bool take(const cachekey_t *k, size_t *off, const char *want,
                 size_t want_len) {
  uint32_t n;
  if (k->len - *off < sizeof n)
    return false;
  memcpy(&n, k->data + *off, sizeof n);
  *off += sizeof n;
  if (n != want_len || k->len - *off < n)
    return false;
  if (n > 0 && memcmp(k->data + *off, want, n) != 0)
    return false;
  *off += n;
  return true;
}

static bool take_tag(const cachekey_t *k, size_t *off, char tag) {
  if (*off >= k->len || k->data[*off] != tag)
    return false;
  (*off)++;
  return true;
}

static const char *const ident[] = {"authorization", "cookie", "x-api-key"};

static void build(cachekey_t *k, field_t path, field_t query, hdrs_t *h) {
  cachekey_build(k, 'G', 7, path.p, path.n, query.p, query.n, ident, 3, get_hdr,
                 h);
}

/* The primary key decodes to exactly (class, upstream, path, query, the
 * identity headers present). Returns the offset after it. */
static size_t check_primary(const cachekey_t *k, field_t path, field_t query,
                            hdrs_t *h) {
  CHECK(!k->oom);
  size_t off = 0;
  unsigned up = 7;
  CHECK(take_tag(k, &off, 'G'));
  CHECK(k->len - off >= sizeof up &&
        memcmp(k->data + off, &up, sizeof up) == 0);
  off += sizeof up;
  CHECK(take(k, &off, path.p, path.n));
  CHECK(take(k, &off, query.p, query.n));
  for (size_t i = 0; i < 3; i++) {
    size_t vlen;
    const char *v = get_hdr(h, ident[i], &vlen);
    if (v == NULL)
      continue;
    CHECK(take_tag(k, &off, 'I'));
    CHECK(take(k, &off, ident[i], strlen(ident[i])));
    CHECK(take(k, &off, v, vlen));
  }
  return off;
}

/* The Vary part decodes to 'V' name ('-' | value) per listed name. */
static void check_vary(const cachekey_t *k, size_t off, field_t vary,
                       hdrs_t *h) {
  size_t i = 0;
  while (i < vary.n) {
    while (i < vary.n &&
           (vary.p[i] == ' ' || vary.p[i] == '\t' || vary.p[i] == ','))
      i++;
    size_t j = i;
    while (j < vary.n && vary.p[j] != ',' && vary.p[j] != ' ' &&
           vary.p[j] != '\t')
      j++;
    if (j > i) {
      char name[128];
      size_t n = j - i < sizeof name - 1 ? j - i : sizeof name - 1;
      for (size_t c = 0; c < n; c++) {
        char ch = vary.p[i + c];
        name[c] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
      }
      name[n] = '\0';
      CHECK(take_tag(k, &off, 'V'));
      CHECK(take(k, &off, name, n));
      size_t vlen;
      const char *v = get_hdr(h, name, &vlen);
      if (v == NULL)
        CHECK(take_tag(k, &off, '-'));
      else
        CHECK(take(k, &off, v, vlen));
    }
    i = j;
  }
  CHECK(off == k->len);
}

static bool vary_has_star(field_t vary) {
  size_t i = 0;
  while (i < vary.n) {
    while (i < vary.n &&
           (vary.p[i] == ' ' || vary.p[i] == '\t' || vary.p[i] == ','))
      i++;
    size_t j = i;
    while (j < vary.n && vary.p[j] != ',' && vary.p[j] != ' ' &&
           vary.p[j] != '\t')
      j++;
    if (j - i == 1 && vary.p[i] == '*')
      return true;
    i = j;
  }
  return false;
}

static bool key_eq(const cachekey_t *a, const cachekey_t *b) {
  return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static void fuzz_keys(const char *p, size_t n) {
  field_t line[3] = {{"", 0}, {"", 0}, {"", 0}};
  hdrs_t h = {.n = 0};
  size_t i = 0, ln = 0;
  while (i <= n) {
    const char *nl = memchr(p + i, '\n', n - i);
    size_t end = nl ? (size_t)(nl - p) : n;
    field_t f = {p + i, end - i};
    if (ln < 3) {
      line[ln] = f;
    } else if (h.n < MAX_HEADERS) {
      const char *colon = memchr(f.p, ':', f.n);
      if (colon != NULL) {
        size_t vs = (size_t)(colon - f.p) + 1;
        while (vs < f.n && f.p[vs] == ' ')
          vs++;
        h.names[h.n] = (field_t){f.p, (size_t)(colon - f.p)};
        h.values[h.n] = (field_t){f.p + vs, f.n - vs};
        h.n++;
      }
    }
    ln++;
    i = end + 1;
  }
  field_t path = line[0], query = line[1], vary = line[2];

  cachekey_t a, b;
  cachekey_init(&a);
  cachekey_init(&b);
  build(&a, path, query, &h);
  size_t primary = check_primary(&a, path, query, &h);
  CHECK(primary == a.len);

  /* Deterministic, also after a reset of a used key. */
  build(&b, (field_t){"/other", 6}, (field_t){"", 0}, &h);
  build(&b, path, query, &h);
  CHECK(key_eq(&a, &b));

  /* Moving one byte from the path to the query must change the key. */
  if (path.n > 0) {
    field_t p2 = {path.p, path.n - 1};
    char *q2 = malloc(query.n + 1);
    if (q2 != NULL) {
      q2[0] = path.p[path.n - 1];
      if (query.n > 0)
        memcpy(q2 + 1, query.p, query.n);
      build(&b, p2, (field_t){q2, query.n + 1}, &h);
      CHECK(!key_eq(&a, &b));
      free(q2);
    }
  }

  bool ok = cachekey_add_vary(&a, vary.p, vary.n, get_hdr, &h);
  CHECK(ok == !vary_has_star(vary));
  CHECK(!a.oom);
  if (ok)
    check_vary(&a, primary, vary, &h);

  cachekey_free(&a);
  cachekey_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  fuzz_normaliser(cachekey_normalize_path, true, p, size);
  fuzz_normaliser(cachekey_canonical_query, false, p, size);
  fuzz_keys(p, size);
  return 0;
}
