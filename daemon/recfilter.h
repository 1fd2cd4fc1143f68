/*
 * recfilter.h — "may have a record" filters for the hit path.
 *
 * Two kinds of cache record change how a request is served: the Vary
 * record of a URL (the headers it varies on) and the invalidation record
 * of a URI (RFC 9111 §4.4). Looking them up on every hit costs a key build
 * and a cache lookup each, though almost no URL has one. A recfilter is a
 * fixed-size, lock-free Bloom filter over what such records are keyed on:
 * a clear answer means "no record was ever stored", so the lookup is
 * skipped; a set answer means "look", as before.
 *
 * Invariants: bits are only ever set, never cleared, so there are no false
 * negatives; a full filter answers "look" for everything (the behaviour
 * without a filter), never a wrong "no". All-zero bytes are an empty
 * filter (memset/calloc of the owner is enough).
 *
 * Ordering: the writer calls recfilter_add() (`used`, then the bits)
 * BEFORE it stores the record.
 * A reader whose request follows the store (the store happens-before it,
 * through the cache's shard lock or the client's own round trip) then sees
 * `used` and the bit by coherence: their stores are sequenced before the
 * record's.
 * A reader racing the store may miss the bit; that is the same as running
 * just before the store, which it might have anyway. The bit carries no
 * data (the record is published by the cache's locks), so a relaxed load
 * is enough on the hit path.
 */
#ifndef COALESCED_RECFILTER_H
#define COALESCED_RECFILTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 2^20 bits = 128 KiB per filter, two bits per entry in one 64-bit word
 * (one cache line touched per test). With n distinct records the false
 * "look" rate is about (1 - e^(-2n/2^20))^2: 0.04% at 10k records, 0.8% at
 * 50k, 3% at 100k; a false "look" only costs today's lookup. */
#define RECFILTER_BITS_LOG2 20
#define RECFILTER_WORDS ((size_t)1 << (RECFILTER_BITS_LOG2 - 6))

typedef struct recfilter {
  /* Set with the first bit: while false, a test needs no hash at all (a
   * process that never saw Vary pays nothing for the Vary filter). */
  _Atomic bool used;
  _Atomic uint64_t words[RECFILTER_WORDS];
} recfilter_t;

/* Whether anything was ever added: false means recfilter_may_have() is
 * false for every hash, so callers test it before hashing. Any thread. */
static inline bool recfilter_used(recfilter_t *f) {
  return atomic_load_explicit(&f->used, memory_order_relaxed);
}

/* 64-bit hash (xxh3) of what a record is keyed on; `seed` separates inputs
 * that share bytes (e.g. the upstream index). */
uint64_t recfilter_hash(const void *data, size_t len, uint64_t seed);

/* The word a hash selects and the two bits it sets there. */
static inline size_t recfilter_word_(uint64_t h) {
  return (size_t)(h >> 12) & (RECFILTER_WORDS - 1);
}
static inline uint64_t recfilter_mask_(uint64_t h) {
  return ((uint64_t)1 << (h & 63)) | ((uint64_t)1 << ((h >> 6) & 63));
}

/* Marks h as possibly having a record. Any thread; call it before storing
 * the record (see the file header). */
static inline void recfilter_add(recfilter_t *f, uint64_t h) {
  if (!atomic_load_explicit(&f->used, memory_order_relaxed))
    atomic_store_explicit(&f->used, true, memory_order_release);
  atomic_fetch_or_explicit(&f->words[recfilter_word_(h)], recfilter_mask_(h),
                           memory_order_release);
}

/* False only when no record was ever added for h. Any thread. */
static inline bool recfilter_may_have(recfilter_t *f, uint64_t h) {
  uint64_t m = recfilter_mask_(h);
  return (atomic_load_explicit(&f->words[recfilter_word_(h)],
                               memory_order_relaxed) &
          m) == m;
}

#endif
