/*
 * internal.h — helpers shared by libcoalesce's modules, never installed.
 *
 * Key hashing (xxh3), magic numbers checked at every API boundary so a
 * use-after-free or a wrong handle aborts at once instead of corrupting
 * state, and sharded counters that keep the statistics off any shared hot
 * cache line: each counter lives in one of COALESCE__COUNTER_SLOTS
 * cache-line-aligned slots picked by the key's hash, and reads sum them.
 */
#ifndef COALESCE_INTERNAL_H
#define COALESCE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "coalesce.h"

#define COALESCE__MAGIC_CACHE 0x43414348u     /* CACH */
#define COALESCE__MAGIC_BREAKER 0x4252454bu   /* BREK */
#define COALESCE__MAGIC_COALESCER 0x434f414cu /* COAL */
#define COALESCE__MAGIC_FLIGHT 0x464c4754u    /* FLGT */
#define COALESCE__MAGIC_WAITER 0x57414954u    /* WAIT */
#define COALESCE__MAGIC_LOADER 0x4c4f4144u    /* LOAD */
#define COALESCE__MAGIC_FETCH 0x46455443u     /* FETC */
#define COALESCE__MAGIC_LOAD 0x4c4f4144u      /* LOAD */
#define COALESCE__MAGIC_VALUE 0x56414c55u     /* VALU */

/* Aborts with a message when an object's magic is wrong: always on, cheap. */
#define COALESCE__CHECK(obj, want)                                             \
  do {                                                                         \
    if ((obj) == NULL || (obj)->magic != (want)) {                             \
      fprintf(stderr, "libcoalesce: bad handle %p in %s (%s:%d)\n",            \
              (const void *)(obj), __func__, __FILE__, __LINE__);              \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define COALESCE__CACHELINE 64

/* 64-bit xxh3 of the key: shards, buckets and counter slots all use it. */
uint64_t coalesce__hash(const void *key, size_t len);

/* Rounds n up to a power of two (at least 1, at most 1024). */
unsigned coalesce__pow2(unsigned n);

/* --- sharded counters ---------------------------------------------------- */

#define COALESCE__COUNTER_SLOTS 16
#define COALESCE__COUNTER_MAX 24

typedef struct coalesce__counter_slot {
  _Alignas(COALESCE__CACHELINE) _Atomic uint64_t v[COALESCE__COUNTER_MAX];
} coalesce__counter_slot_t;

typedef struct coalesce__counters {
  coalesce__counter_slot_t slot[COALESCE__COUNTER_SLOTS];
} coalesce__counters_t;

static inline void coalesce__count(coalesce__counters_t *c, uint64_t hash,
                                   unsigned id, uint64_t n) {
  atomic_fetch_add_explicit(&c->slot[hash % COALESCE__COUNTER_SLOTS].v[id], n,
                            memory_order_relaxed);
}

uint64_t coalesce__counter_sum(coalesce__counters_t *c, unsigned id);
void coalesce__counters_reset(coalesce__counters_t *c);

/* Absolute deadline helpers that saturate instead of wrapping. */
static inline uint64_t coalesce__add_sat(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

#endif /* COALESCE_INTERNAL_H */
