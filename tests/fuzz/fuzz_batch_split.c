/*
 * fuzz_batch_split.c — libFuzzer driver for daemon/batch_split.c.
 *
 * The answer of a batch call is untrusted upstream bytes; the request
 * target is untrusted client bytes. Input layout:
 *   line 1: id path ("" = the default data[].id)
 *   line 2: wrap template ("" = the item itself)
 *   line 3: requested ids, decoded, ','-separated (at most 64)
 *   rest:   the batch answer
 * and the whole input is also a request target for batch_split_target and
 * a value for batch_id_decode. Properties (abort on violation):
 *   - batch_split returns 0, EMALFORMED, EINVAL or ENOMEM; EINVAL exactly
 *     when batch_split_check refuses the path or wrap; on any error every
 *     part is NULL and err is a non-empty NUL-terminated line;
 *   - on 0, every part is valid JSON (jansson), len matches strlen where
 *     the part holds no NUL, and repeated ids get identical parts;
 *   - with the default path and no wrap, a part is an object whose "id"
 *     (last one, as jansson keeps it) is the requested id as a string, or
 *     a number;
 *   - a single-id target loses exactly "param=VALUE" and one separator
 *     (or more, when the input has empty parameters), and the id is a
 *     non-empty span of the target;
 *   - decoding never lengthens an id.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch_split.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_batch_split: property failed: %s (line %d)\n",     \
              #cond, __LINE__);                                                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define MAX_IDS 64
#define JFLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

/* Next '\n'-terminated line of p[*at..n) as a NUL-terminated copy. */
static char *line(const char *p, size_t n, size_t *at) {
  size_t s = *at < n ? *at : n;
  const char *nl = memchr(p + s, '\n', n - s);
  size_t e = nl ? (size_t)(nl - p) : n;
  char *out = malloc(e - s + 1);
  if (out == NULL)
    abort();
  memcpy(out, p + s, e - s);
  out[e - s] = '\0';
  *at = nl ? e + 1 : n;
  return out;
}

static void check_part(const batch_part_t *pt, const batch_str_t *id,
                       bool plain) {
  json_error_t je;
  json_t *j = json_loadb(pt->body, pt->len, JFLAGS, &je);
  CHECK(j != NULL);
  CHECK(pt->body[pt->len] == '\0');
  if (memchr(pt->body, '\0', pt->len) == NULL)
    CHECK(strlen(pt->body) == pt->len);
  if (plain) {
    CHECK(json_is_object(j));
    json_t *v = json_object_get(j, "id");
    CHECK(v != NULL);
    if (json_is_string(v)) {
      CHECK(json_string_length(v) == id->len);
      CHECK(memcmp(json_string_value(v), id->p, id->len) == 0);
    } else {
      CHECK(json_is_number(v));
    }
  }
  json_decref(j);
}

static void fuzz_split(const char *p, size_t n) {
  size_t at = 0;
  char *path = line(p, n, &at);
  char *wrap = line(p, n, &at);
  char *idl = line(p, n, &at);
  const char *json = p + at;
  size_t json_len = n - at;

  batch_str_t ids[MAX_IDS];
  size_t nids = 0;
  for (char *s = idl; nids < MAX_IDS;) {
    char *c = strchr(s, ',');
    ids[nids++] = (batch_str_t){s, c ? (size_t)(c - s) : strlen(s)};
    if (c == NULL)
      break;
    s = c + 1;
  }
  batch_part_t parts[MAX_IDS];
  char err[128];
  memset(err, 'x', sizeof err);
  int rc = batch_split(path, wrap, json, json_len, ids, nids, parts, err,
                       sizeof err);
  char cerr[128];
  bool valid = batch_split_check(path, wrap, NULL, cerr, sizeof cerr) == 0;
  CHECK(rc == 0 || rc == BATCH_SPLIT_EMALFORMED || rc == BATCH_SPLIT_EINVAL ||
        rc == BATCH_SPLIT_ENOMEM);
  CHECK((rc == BATCH_SPLIT_EINVAL) == !valid);
  if (rc != 0) {
    CHECK(memchr(err, '\0', sizeof err) != NULL && err[0] != '\0');
    for (size_t i = 0; i < nids; i++)
      CHECK(parts[i].body == NULL);
  } else {
    bool plain = path[0] == '\0' && wrap[0] == '\0';
    for (size_t i = 0; i < nids; i++) {
      if (parts[i].body == NULL)
        continue;
      check_part(&parts[i], &ids[i], plain);
      for (size_t k = 0; k < i; k++)
        if (ids[k].len == ids[i].len &&
            memcmp(ids[k].p, ids[i].p, ids[i].len) == 0)
          CHECK(parts[k].len == parts[i].len &&
                memcmp(parts[k].body, parts[i].body, parts[i].len) == 0);
    }
    batch_parts_free(parts, nids);
  }
  free(path);
  free(wrap);
  free(idl);
}

static void fuzz_target(const char *p, size_t n, const char *join) {
  char *base = malloc(n + 1);
  if (base == NULL)
    abort();
  size_t blen = 0;
  batch_str_t id;
  if (batch_split_target(p, n, "id", join, base, n + 1, &blen, &id) == 0) {
    CHECK(blen <= n);
    CHECK(base[blen] == '\0');
    CHECK(id.len > 0 && id.p > p && id.p + id.len <= p + n);
    CHECK(blen + 2 + 2 + id.len <= n); /* "id" "=" and one '?' or '&' */
    CHECK(memchr(base, '?', blen) == memrchr(base, '?', blen) ||
          memchr(p, '?', n) != memrchr(p, '?', n));
    if (join != NULL)
      CHECK(memmem(id.p, id.len, join, strlen(join)) == NULL);
  }
  free(base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size heap copy, so ASan sees any read past `size`. */
  char *p = malloc(size ? size : 1);
  if (p == NULL)
    return 0;
  if (size > 0)
    memcpy(p, data, size);
  fuzz_split(p, size);
  fuzz_target(p, size, NULL);
  fuzz_target(p, size, ",");
  char *out = malloc(size ? size : 1);
  if (out != NULL) {
    CHECK(batch_id_decode(p, size, out) <= size);
    free(out);
  }
  free(p);
  return 0;
}
