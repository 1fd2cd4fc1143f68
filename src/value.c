/*
 * value.c — immutable reference-counted values.
 *
 * A value is written once, before its first reference is handed out, and
 * never changed after: readers on any thread need no lock. The count is
 * atomic; the release that drops it to zero frees (acq_rel so the freeing
 * thread sees every write made before other threads' releases).
 *
 * Two shapes sit behind one handle, told apart by the magic, because a
 * cache holds one value per entry and every byte of header is paid per
 * entry:
 *   inline  (coalesce_value_new, coalesce_value_alloc): a 16-byte header
 *           (magic, count, length) and the data right after it, in the same
 *           allocation; its charge is what it allocated;
 *   adopted (coalesce_value_adopt): the same header followed by the
 *           caller's pointer, charge and free function.
 */
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Not in internal.h: no other module ever sees an adopted value's magic. */
#define MAGIC_INLINE COALESCE__MAGIC_VALUE
#define MAGIC_ADOPTED 0x56414c41u /* VALA */

struct coalesce_value {
  uint32_t magic;
  _Atomic uint32_t refs;
  size_t len;
};

typedef struct adopted {
  struct coalesce_value v;
  void *data;
  size_t charge;
  coalesce_free_fn free_fn;
  void *ud;
} adopted_t;

/* Inline data starts here: the header rounded up so the data is aligned
 * like malloc's own result (16 bytes on x86-64: no padding). */
#define HDR                                                                    \
  ((sizeof(struct coalesce_value) + alignof(max_align_t) - 1) /                \
   alignof(max_align_t) * alignof(max_align_t))

#define VALUE_CHECK(v)                                                         \
  do {                                                                         \
    if ((v) == NULL ||                                                         \
        ((v)->magic != MAGIC_INLINE && (v)->magic != MAGIC_ADOPTED)) {         \
      fprintf(stderr, "libcoalesce: bad handle %p in %s (%s:%d)\n",            \
              (const void *)(v), __func__, __FILE__, __LINE__);                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static coalesce_value_t *inline_new(size_t len, size_t extra) {
  if (len > SIZE_MAX - HDR - extra)
    return NULL;
  coalesce_value_t *v = malloc(HDR + len + extra);
  if (v == NULL)
    return NULL;
  v->magic = MAGIC_INLINE;
  atomic_init(&v->refs, 1);
  v->len = len;
  return v;
}

coalesce_value_t *coalesce_value_new(const void *data, size_t len) {
  coalesce_value_t *v = inline_new(len, 1);
  if (v == NULL)
    return NULL;
  unsigned char *d = (unsigned char *)v + HDR;
  if (len > 0)
    memcpy(d, data, len);
  d[len] = '\0';
  return v;
}

coalesce_value_t *coalesce_value_alloc(size_t len, void **data) {
  if (data == NULL)
    return NULL;
  coalesce_value_t *v = inline_new(len, 0);
  *data = v != NULL ? (unsigned char *)v + HDR : NULL;
  return v;
}

coalesce_value_t *coalesce_value_adopt(void *data, size_t len, size_t charge,
                                       coalesce_free_fn free_fn, void *ud) {
  adopted_t *a = malloc(sizeof(*a));
  if (a == NULL)
    return NULL;
  a->v.magic = MAGIC_ADOPTED;
  atomic_init(&a->v.refs, 1);
  a->v.len = len;
  a->data = data;
  a->charge = charge ? charge : len;
  a->free_fn = free_fn;
  a->ud = ud;
  return &a->v;
}

const void *coalesce_value_data(const coalesce_value_t *v) {
  VALUE_CHECK(v);
  if (v->magic == MAGIC_INLINE)
    return (const unsigned char *)v + HDR;
  return ((const adopted_t *)v)->data;
}

size_t coalesce_value_len(const coalesce_value_t *v) {
  VALUE_CHECK(v);
  return v->len;
}

size_t coalesce_value_charge(const coalesce_value_t *v) {
  VALUE_CHECK(v);
  if (v->magic == MAGIC_INLINE)
    return HDR + v->len;
  const adopted_t *a = (const adopted_t *)v;
  return coalesce__add_sat(a->charge, sizeof(*a));
}

coalesce_value_t *coalesce_value_ref(coalesce_value_t *v) {
  if (v == NULL)
    return NULL;
  VALUE_CHECK(v);
  atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
  return v;
}

void coalesce_value_release(coalesce_value_t *v) {
  if (v == NULL)
    return;
  VALUE_CHECK(v);
  if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (v->magic == MAGIC_ADOPTED) {
    adopted_t *a = (adopted_t *)v;
    if (a->free_fn != NULL)
      a->free_fn(a->data, a->ud);
  }
  v->magic = 0;
  free(v);
}
