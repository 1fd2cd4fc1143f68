/*
 * freelist.h — a bounded stack of free blocks of one size, owned by one
 * thread (a worker loop), so that objects made and freed per request (read
 * buffers, request records) are reused instead of going through malloc.
 *
 * Blocks are linked through their own first bytes (each is at least a
 * pointer in size and malloc-aligned). Only the owning thread takes and
 * gives; `n` is atomic (relaxed, single writer) only so that another
 * thread — a test, a stats reader — may read it.
 */
#ifndef COALESCED_FREELIST_H
#define COALESCED_FREELIST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct freelist {
  void *head;
  _Atomic unsigned n; /* blocks held */
} freelist_t;

/* A free block, or NULL when the list is empty. */
static inline void *freelist_take(freelist_t *f) {
  void *b = f->head;
  if (b == NULL)
    return NULL;
  memcpy(&f->head, b, sizeof f->head); /* the link */
  atomic_store_explicit(&f->n,
                        atomic_load_explicit(&f->n, memory_order_relaxed) - 1,
                        memory_order_relaxed);
  return b;
}

/* Keeps b unless `max` blocks are held already: false, and the caller
 * frees it. */
static inline bool freelist_give(freelist_t *f, void *b, unsigned max) {
  unsigned n = atomic_load_explicit(&f->n, memory_order_relaxed);
  if (n >= max)
    return false;
  memcpy(b, &f->head, sizeof f->head);
  f->head = b;
  atomic_store_explicit(&f->n, n + 1, memory_order_relaxed);
  return true;
}

/* Frees every block held. */
static inline void freelist_clear(freelist_t *f) {
  void *b;
  while ((b = freelist_take(f)) != NULL)
    free(b);
}

#endif
