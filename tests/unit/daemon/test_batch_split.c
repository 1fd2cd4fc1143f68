/*
 * test_batch_split.c — the pure half of batching (daemon/batch_split.c):
 * id paths, wrap templates, single-id targets and the splitting of batch
 * answers, including hostile answers (malformed, non-object items, huge
 * arrays). Parts are compared byte for byte where the splitter promises
 * the upstream's exact bytes, and with jansson's json_equal otherwise.
 */
#include "batch_split.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NELEM(a) (sizeof(a) / sizeof *(a))

/* Splits `json` for the NUL-terminated ids; returns rc, parts in *out. */
static int split(const char *path, const char *wrap, const char *json,
                 const char *const *ids, size_t n, batch_part_t *out) {
  batch_str_t s[64];
  assert_true(n <= NELEM(s));
  for (size_t i = 0; i < n; i++)
    s[i] = (batch_str_t){ids[i], strlen(ids[i])};
  char err[160];
  return batch_split(path, wrap, json, strlen(json), s, n, out, err,
                     sizeof err);
}

static void assert_part(const batch_part_t *p, const char *want) {
  assert_non_null(p->body);
  assert_int_equal(p->len, strlen(want));
  assert_string_equal(p->body, want);
}

/* ---- ids -------------------------------------------------------------------- */

static void test_string_ids(void **state) {
  (void)state;
  const char *json =
      "{\"data\":[{\"id\":\"1\",\"name\":\"a\"},{\"id\":\"2\",\"name\":\"b\"}]}";
  const char *ids[] = {"2", "1", "3"};
  batch_part_t p[3];
  assert_int_equal(split(NULL, NULL, json, ids, 3, p), 0);
  assert_part(&p[0], "{\"id\":\"2\",\"name\":\"b\"}");
  assert_part(&p[1], "{\"id\":\"1\",\"name\":\"a\"}");
  assert_null(p[2].body);
  batch_parts_free(p, 3);
}

static void test_number_ids_keep_bytes(void **state) {
  (void)state;
  /* jansson would print 0.1 as 0.10000000000000001 and reject the big
   * integer; the parts keep the upstream's bytes. */
  const char *json = "{\"data\":[{\"id\":1,\"price\":0.1},"
                     "{\"id\":-2.5e3,\"x\":1.10},"
                     "{\"id\":12345678901234567890,\"big\":true}]}";
  const char *ids[] = {"1", "-2.5e3", "12345678901234567890", "1.0"};
  batch_part_t p[4];
  assert_int_equal(split("data[].id", NULL, json, ids, 4, p), 0);
  assert_part(&p[0], "{\"id\":1,\"price\":0.1}");
  assert_part(&p[1], "{\"id\":-2.5e3,\"x\":1.10}");
  assert_part(&p[2], "{\"id\":12345678901234567890,\"big\":true}");
  assert_null(p[3].body); /* numbers compare as written */
  batch_parts_free(p, 4);
}

static void test_escaped_ids_and_keys(void **state) {
  (void)state;
  /* key "data" and id "aé/b😀" written with escapes */
  const char *json = "{\"d\\u0061ta\":[{\"i\\u0064\":\"a\\u00e9\\/b"
                     "\\ud83d\\ude00\",\"n\":\"\\\"q\\\"\"}]}";
  const char *ids[] = {"a\xc3\xa9/b\xf0\x9f\x98\x80"};
  batch_part_t p[1];
  assert_int_equal(split("data[].id", NULL, json, ids, 1, p), 0);
  assert_part(&p[0], "{\"i\\u0064\":\"a\\u00e9\\/b\\ud83d\\ude00\","
                     "\"n\":\"\\\"q\\\"\"}");
  batch_parts_free(p, 1);
}

static void test_non_scalar_ids_ignored(void **state) {
  (void)state;
  const char *json = "{\"data\":[{\"id\":true},{\"id\":null},{\"id\":[\"1\"]},"
                     "{\"id\":{\"v\":\"1\"}},{\"nid\":\"1\"},{\"id\":\"1\"}]}";
  const char *ids[] = {"1", "true", "null"};
  batch_part_t p[3];
  assert_int_equal(split(NULL, NULL, json, ids, 3, p), 0);
  assert_part(&p[0], "{\"id\":\"1\"}");
  assert_null(p[1].body);
  assert_null(p[2].body);
  batch_parts_free(p, 3);
}

/* ---- paths -------------------------------------------------------------------- */

static void test_nested_paths(void **state) {
  (void)state;
  const char *json = "{\"result\":{\"page\":1,\"items\":["
                     "{\"meta\":{\"id\":\"x\"},\"v\":1},"
                     "{\"meta\":{\"id\":\"y\"},\"v\":2}]}}";
  const char *ids[] = {"y", "x"};
  batch_part_t p[2];
  assert_int_equal(split("result.items[].meta.id", NULL, json, ids, 2, p), 0);
  assert_part(&p[0], "{\"meta\":{\"id\":\"y\"},\"v\":2}");
  assert_part(&p[1], "{\"meta\":{\"id\":\"x\"},\"v\":1}");
  batch_parts_free(p, 2);

  /* the root is the array */
  const char *root = " [ {\"id\" : 7 , \"a\":[1,{\"b\":\"]\"}]} ,{\"id\":8} ] ";
  const char *ids2[] = {"8", "7"};
  assert_int_equal(split("[].id", NULL, root, ids2, 2, p), 0);
  assert_part(&p[0], "{\"id\":8}");
  assert_part(&p[1], "{\"id\" : 7 , \"a\":[1,{\"b\":\"]\"}]}");
  batch_parts_free(p, 2);

  /* keyed by id */
  const char *keyed = "{\"prices\":{\"btc\":{\"usd\":1.5},\"eth\":2,"
                      "\"x\\/y\":null}}";
  const char *ids3[] = {"eth", "btc", "x/y", "doge"};
  batch_part_t q[4];
  assert_int_equal(split("prices{}", NULL, keyed, ids3, 4, q), 0);
  assert_part(&q[0], "2");
  assert_part(&q[1], "{\"usd\":1.5}");
  assert_part(&q[2], "null");
  assert_null(q[3].body);
  batch_parts_free(q, 4);
}

static void test_duplicate_keys_last_wins(void **state) {
  (void)state;
  const char *json = "{\"data\":[{\"id\":\"1\",\"v\":\"old\"}],"
                     "\"data\":[{\"id\":\"1\",\"id\":\"2\"}]}";
  const char *ids[] = {"1", "2"};
  batch_part_t p[2];
  assert_int_equal(split(NULL, NULL, json, ids, 2, p), 0);
  assert_null(p[0].body);
  assert_part(&p[1], "{\"id\":\"1\",\"id\":\"2\"}");
  batch_parts_free(p, 2);
}

static void test_duplicate_items_and_ids(void **state) {
  (void)state;
  const char *json = "{\"data\":[{\"id\":\"1\",\"n\":\"first\"},"
                     "{\"id\":\"1\",\"n\":\"second\"}]}";
  const char *ids[] = {"1", "1"};
  batch_part_t p[2];
  assert_int_equal(split(NULL, NULL, json, ids, 2, p), 0);
  assert_part(&p[0], "{\"id\":\"1\",\"n\":\"first\"}");
  assert_part(&p[1], "{\"id\":\"1\",\"n\":\"first\"}");
  assert_ptr_not_equal(p[0].body, p[1].body);
  batch_parts_free(p, 2);
}

static void test_missing_and_empty(void **state) {
  (void)state;
  const char *ids[] = {"1", "2"};
  batch_part_t p[2];
  assert_int_equal(split(NULL, NULL, "{\"data\":[]}", ids, 2, p), 0);
  assert_null(p[0].body);
  assert_null(p[1].body);
  /* no ids at all */
  char err[64];
  assert_int_equal(batch_split(NULL, NULL, "{\"data\":[]}", 11, NULL, 0, NULL,
                               err, sizeof err),
                   0);
}

/* ---- hostile answers ---------------------------------------------------------- */

static void test_malformed(void **state) {
  (void)state;
  static const char *const bad[] = {
      "{\"data\":[{\"id\":\"1\",\"name\":", /* testupstream's malformed=1 */
      "",
      "not json",
      "{\"data\":[{\"id\":\"1\"}]} trailing",
      "{\"data\":[{\"id\":\"1\"},]}",
      "{\"data\":[{\"id\":\"\\ud800\"}]}", /* lone surrogate */
      "{\"data\":[{\"id\":1e99999}]}",
  };
  const char *ids[] = {"1"};
  for (size_t i = 0; i < NELEM(bad); i++) {
    batch_part_t p[1] = {{(char *)1, 1}};
    char err[160];
    batch_str_t s = {ids[0], 1};
    int rc = batch_split(NULL, NULL, bad[i], strlen(bad[i]), &s, 1, p, err,
                         sizeof err);
    assert_int_equal(rc, BATCH_SPLIT_EMALFORMED);
    assert_null(p[0].body);
    assert_non_null(strstr(err, "not valid JSON"));
    assert_null(strstr(err, "name")); /* never quotes the answer */
  }
}

static void test_wrong_shape(void **state) {
  (void)state;
  static const char *const bad[] = {
      "{\"data\":{\"id\":\"1\"}}", /* object, not array */
      "{\"items\":[]}",            /* no data */
      "[{\"id\":\"1\"}]",          /* root not an object */
      "\"data\"",
      "null",
  };
  const char *ids[] = {"1"};
  for (size_t i = 0; i < NELEM(bad); i++) {
    batch_part_t p[1];
    assert_int_equal(split("data[].id", NULL, bad[i], ids, 1, p),
                     BATCH_SPLIT_EMALFORMED);
    assert_null(p[0].body);
  }
  batch_part_t p[1];
  assert_int_equal(split("data{}", NULL, "{\"data\":[]}", ids, 1, p),
                   BATCH_SPLIT_EMALFORMED);
}

static void test_non_object_items(void **state) {
  (void)state;
  const char *json = "{\"data\":[1,\"1\",null,true,[\"id\",\"1\"],[],{},"
                     "{\"id\":\"1\",\"ok\":1}]}";
  const char *ids[] = {"1"};
  batch_part_t p[1];
  assert_int_equal(split(NULL, NULL, json, ids, 1, p), 0);
  assert_part(&p[0], "{\"id\":\"1\",\"ok\":1}");
  batch_parts_free(p, 1);
}

static void test_huge_array(void **state) {
  (void)state;
  const size_t n = 200000;
  char *json = malloc(n * 40 + 32);
  assert_non_null(json);
  size_t o = (size_t)sprintf(json, "{\"data\":[");
  for (size_t i = 0; i < n; i++)
    o += (size_t)sprintf(json + o, "%s{\"id\":\"%zu\",\"v\":%zu}",
                         i ? "," : "", i, i * 3);
  o += (size_t)sprintf(json + o, "]}");
  /* 10000 ids (the largest batch_max), every 20th item, plus some absent */
  const size_t k = 10000;
  batch_str_t *ids = calloc(k, sizeof *ids);
  char *idmem = calloc(k, 16);
  batch_part_t *parts = calloc(k, sizeof *parts);
  assert_non_null(ids);
  assert_non_null(idmem);
  assert_non_null(parts);
  for (size_t i = 0; i < k; i++) {
    size_t v = i < k - 10 ? i * 20 : n + i; /* the last 10 are absent */
    ids[i].len = (size_t)snprintf(idmem + i * 16, 16, "%zu", v);
    ids[i].p = idmem + i * 16;
  }
  char err[160];
  assert_int_equal(batch_split("data[].id", "{\"data\":[ITEM]}", json, o, ids,
                               k, parts, err, sizeof err),
                   0);
  for (size_t i = 0; i < k; i++) {
    if (i >= k - 10) {
      assert_null(parts[i].body);
      continue;
    }
    char want[96];
    snprintf(want, sizeof want, "{\"data\":[{\"id\":\"%zu\",\"v\":%zu}]}",
             i * 20, i * 60);
    assert_part(&parts[i], want);
  }
  batch_parts_free(parts, k);
  free(parts);
  free(idmem);
  free(ids);
  free(json);
}

/* Every part is exactly the item jansson sees at that place. */
static void test_parts_equal_jansson_items(void **state) {
  (void)state;
  const char *json =
      "{\"data\":[\n  {\"id\":\"a\",\"n\":[1,2,{\"x\":\"}\"}],\"s\":\"\\n\\t\"},"
      "\n  {\"id\":\"b\",\"o\":{\"p\":{\"q\":[[],{}]}},\"e\":\"\\u0000\"},"
      "\n  {\"id\":\"c\",\"f\":-0.0,\"g\":1E+2,\"h\":false}\n]}";
  const char *ids[] = {"a", "b", "c"};
  batch_part_t p[3];
  assert_int_equal(split(NULL, "{\"data\":[ITEM]}", json, ids, 3, p), 0);
  json_error_t je;
  json_t *doc = json_loads(json, JSON_ALLOW_NUL, &je);
  assert_non_null(doc);
  json_t *arr = json_object_get(doc, "data");
  for (size_t i = 0; i < 3; i++) {
    json_t *part = json_loadb(p[i].body, p[i].len, JSON_ALLOW_NUL, &je);
    assert_non_null(part);
    json_t *want = json_pack("{s:[O]}", "data", json_array_get(arr, i));
    assert_true(json_equal(part, want));
    json_decref(want);
    json_decref(part);
  }
  json_decref(doc);
  batch_parts_free(p, 3);
}

/* ---- wrap templates --------------------------------------------------------------- */

static void test_wrap_templates(void **state) {
  (void)state;
  const char *json = "{\"data\":[{\"id\":\"1\"}]}";
  const char *ids[] = {"1"};
  batch_part_t p[1];
  assert_int_equal(split(NULL, "{\"data\":[ITEM]}", json, ids, 1, p), 0);
  assert_part(&p[0], "{\"data\":[{\"id\":\"1\"}]}");
  batch_parts_free(p, 1);
  /* only the bare token is the placeholder */
  assert_int_equal(
      split(NULL, "{\"ITEM\": ITEM, \"x\":\"a ITEM \\\" ITEM\"}", json, ids, 1,
            p),
      0);
  assert_part(&p[0], "{\"ITEM\": {\"id\":\"1\"}, \"x\":\"a ITEM \\\" ITEM\"}");
  batch_parts_free(p, 1);
  assert_int_equal(split(NULL, "ITEM", json, ids, 1, p), 0);
  assert_part(&p[0], "{\"id\":\"1\"}");
  batch_parts_free(p, 1);
  assert_int_equal(split(NULL, "", json, ids, 1, p), 0);
  assert_part(&p[0], "{\"id\":\"1\"}");
  batch_parts_free(p, 1);

  static const char *const bad[] = {
      "{\"data\":[]}",          /* no ITEM */
      "[ITEM,ITEM]",            /* twice */
      "{\"data\":[ITEM]",       /* not JSON */
      "{\"data\":[ITEMS]}",     /* ITEMS is not ITEM */
      "{\"data\":\"ITEM\"}",    /* only inside a string */
  };
  for (size_t i = 0; i < NELEM(bad); i++) {
    char err[160] = "";
    assert_int_equal(batch_split_check(NULL, bad[i], NULL, err, sizeof err),
                     -1);
    assert_true(strlen(err) > 0);
    assert_int_equal(split(NULL, bad[i], json, ids, 1, p), BATCH_SPLIT_EINVAL);
    assert_null(p[0].body);
  }
}

static void test_check_paths_and_joins(void **state) {
  (void)state;
  char err[160];
  static const char *const good[] = {NULL, "", "data[].id", "[].id",
                                     "a.b.c[].d.e", "data{}", "{}",
                                     "x-y_z[].$id"};
  for (size_t i = 0; i < NELEM(good); i++)
    assert_int_equal(batch_split_check(good[i], NULL, NULL, err, sizeof err),
                     0);
  static const char *const bad[] = {"data",     "data[]",      "a[].b[].c",
                                    "data{}.id", "a..b[].id",  "a[].",
                                    "a b[].id",  "a[]x.id",    ".a[].id",
                                    "a.[].id",   "a[.id",      "a]{}"};
  for (size_t i = 0; i < NELEM(bad); i++) {
    err[0] = '\0';
    assert_int_equal(batch_split_check(bad[i], NULL, NULL, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "id path"));
  }
  assert_int_equal(batch_split_check(NULL, NULL, ",", err, sizeof err), 0);
  assert_int_equal(batch_split_check(NULL, NULL, "repeat", err, sizeof err), 0);
  assert_int_equal(batch_split_check(NULL, NULL, "%2C", err, sizeof err), 0);
  assert_int_equal(batch_split_check(NULL, NULL, "&", err, sizeof err), -1);
  assert_int_equal(batch_split_check(NULL, NULL, "a b", err, sizeof err), -1);
  assert_int_equal(
      batch_split_check(NULL, NULL, "12345678901234567", err, sizeof err), -1);
  assert_true(batch_join_is_repeat(NULL));
  assert_true(batch_join_is_repeat("repeat"));
  assert_false(batch_join_is_repeat(","));
}

/* ---- targets and ids ------------------------------------------------------------------ */

static int target(const char *t, const char *param, const char *join,
                  char *base, batch_str_t *id) {
  size_t bl = 0;
  int rc = batch_split_target(t, strlen(t), param, join, base, strlen(t) + 1,
                              &bl, id);
  if (rc == 0)
    assert_int_equal(bl, strlen(base));
  return rc;
}

static void test_split_target(void **state) {
  (void)state;
  char base[128];
  batch_str_t id;
  assert_int_equal(target("/v1/items?id=5", "id", NULL, base, &id), 0);
  assert_string_equal(base, "/v1/items");
  assert_int_equal(id.len, 1);
  assert_memory_equal(id.p, "5", 1);

  assert_int_equal(target("/v1/items?a=1&id=a%2Fb&z=2", "id", NULL, base, &id),
                   0);
  assert_string_equal(base, "/v1/items?a=1&z=2");
  assert_int_equal(id.len, 5);
  assert_memory_equal(id.p, "a%2Fb", 5);

  assert_int_equal(target("/v1/items?a=1&id=7", "id", NULL, base, &id), 0);
  assert_string_equal(base, "/v1/items?a=1");
  assert_int_equal(target("/v1/items?id=7&idx=1", "id", NULL, base, &id), 0);
  assert_string_equal(base, "/v1/items?idx=1");

  assert_int_equal(target("/b?ids=1", "ids", ",", base, &id), 0);
  assert_string_equal(base, "/b");

  /* not single-id requests */
  assert_int_equal(target("/v1/items?id=5&id=6", "id", NULL, base, &id), -1);
  assert_int_equal(target("/v1/items", "id", NULL, base, &id), -1);
  assert_int_equal(target("/v1/items?idx=5", "id", NULL, base, &id), -1);
  assert_int_equal(target("/v1/items?id=", "id", NULL, base, &id), -1);
  assert_int_equal(target("/v1/items?id", "id", NULL, base, &id), -1);
  assert_int_equal(target("/b?ids=1,2", "ids", ",", base, &id), -1);
  assert_int_equal(target("/b?ids=1", "", NULL, base, &id), -1);
  size_t bl;
  assert_int_equal(batch_split_target("/b?id=1", 7, "id", NULL, base, 3, &bl,
                                      &id),
                   -1); /* base too small */
}

static void test_id_decode(void **state) {
  (void)state;
  char out[32];
  const char *in = "a%2Cb+c%zz%4";
  size_t n = batch_id_decode(in, strlen(in), out);
  assert_int_equal(n, 10);
  assert_memory_equal(out, "a,b c%zz%4", 10);
  n = batch_id_decode("%C3%A9", 6, out);
  assert_int_equal(n, 2);
  assert_memory_equal(out, "\xc3\xa9", 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_string_ids),
      cmocka_unit_test(test_number_ids_keep_bytes),
      cmocka_unit_test(test_escaped_ids_and_keys),
      cmocka_unit_test(test_non_scalar_ids_ignored),
      cmocka_unit_test(test_nested_paths),
      cmocka_unit_test(test_duplicate_keys_last_wins),
      cmocka_unit_test(test_duplicate_items_and_ids),
      cmocka_unit_test(test_missing_and_empty),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_wrong_shape),
      cmocka_unit_test(test_non_object_items),
      cmocka_unit_test(test_huge_array),
      cmocka_unit_test(test_parts_equal_jansson_items),
      cmocka_unit_test(test_wrap_templates),
      cmocka_unit_test(test_check_paths_and_joins),
      cmocka_unit_test(test_split_target),
      cmocka_unit_test(test_id_decode),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
