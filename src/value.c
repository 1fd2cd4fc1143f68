/*
 * value.c — immutable reference-counted values.
 *
 * A value is written once, before its first reference is handed out, and
 * never changed after: readers on any thread need no lock. The count is
 * atomic; the release that drops it to zero frees (acq_rel so the freeing
 * thread sees every write made before other threads' releases).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct coalesce_value {
  uint32_t magic;
  _Atomic uint32_t refs;
  size_t len;
  size_t charge;
  void *data;
  coalesce_free_fn free_fn;
  void *ud;
  /* coalesce_value_new keeps the bytes here, in the same allocation */
  _Alignas(16) unsigned char inline_data[];
};

coalesce_value_t *coalesce_value_new(const void *data, size_t len) {
  if (len > SIZE_MAX - sizeof(coalesce_value_t) - 1)
    return NULL;
  coalesce_value_t *v = malloc(sizeof(*v) + len + 1);
  if (v == NULL)
    return NULL;
  v->magic = COALESCE__MAGIC_VALUE;
  atomic_init(&v->refs, 1);
  v->len = len;
  v->charge = len;
  v->data = v->inline_data;
  v->free_fn = NULL;
  v->ud = NULL;
  if (len > 0)
    memcpy(v->inline_data, data, len);
  v->inline_data[len] = '\0';
  return v;
}

coalesce_value_t *coalesce_value_adopt(void *data, size_t len, size_t charge,
                                       coalesce_free_fn free_fn, void *ud) {
  coalesce_value_t *v = malloc(sizeof(*v));
  if (v == NULL)
    return NULL;
  v->magic = COALESCE__MAGIC_VALUE;
  atomic_init(&v->refs, 1);
  v->len = len;
  v->charge = charge ? charge : len;
  v->data = data;
  v->free_fn = free_fn;
  v->ud = ud;
  return v;
}

const void *coalesce_value_data(const coalesce_value_t *v) {
  COALESCE__CHECK(v, COALESCE__MAGIC_VALUE);
  return v->data;
}

size_t coalesce_value_len(const coalesce_value_t *v) {
  COALESCE__CHECK(v, COALESCE__MAGIC_VALUE);
  return v->len;
}

size_t coalesce_value_charge(const coalesce_value_t *v) {
  COALESCE__CHECK(v, COALESCE__MAGIC_VALUE);
  return v->charge + sizeof(*v);
}

coalesce_value_t *coalesce_value_ref(coalesce_value_t *v) {
  if (v == NULL)
    return NULL;
  COALESCE__CHECK(v, COALESCE__MAGIC_VALUE);
  atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
  return v;
}

void coalesce_value_release(coalesce_value_t *v) {
  if (v == NULL)
    return;
  COALESCE__CHECK(v, COALESCE__MAGIC_VALUE);
  if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (v->free_fn != NULL)
    v->free_fn(v->data, v->ud);
  v->magic = 0;
  free(v);
}
