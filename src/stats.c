/* stats.c — sharded counters (see internal.h), key hashing and the derived
 * statistics of DESIGN.md §3. */
#include <xxhash.h>

#include "internal.h"

uint64_t coalesce__hash(const void *key, size_t len) {
  return XXH3_64bits(key, len);
}

unsigned coalesce__pow2(unsigned n) {
  unsigned p = 1;
  while (p < n && p < 1024)
    p <<= 1;
  return p;
}

uint64_t coalesce__counter_sum(coalesce__counters_t *c, unsigned id) {
  uint64_t sum = 0;
  for (unsigned i = 0; i < COALESCE__COUNTER_SLOTS; i++)
    sum += atomic_load_explicit(&c->slot[i].v[id], memory_order_relaxed);
  return sum;
}

void coalesce__counters_reset(coalesce__counters_t *c) {
  for (unsigned i = 0; i < COALESCE__COUNTER_SLOTS; i++)
    for (unsigned id = 0; id < COALESCE__COUNTER_MAX; id++)
      atomic_store_explicit(&c->slot[i].v[id], 0, memory_order_relaxed);
}

void coalesce_stats_derive(coalesce_stats_t *s) {
  s->api_calls_saved = s->cache_hits + s->stale_hits + s->coalesced_requests;
  s->hit_rate_percent =
      s->total_requests == 0
          ? 0.0
          : 100.0 * (double)s->api_calls_saved / (double)s->total_requests;
}
