/*
 * cache.c — the sharded, byte-bounded SIEVE cache with fresh /
 * stale-while-revalidate / stale-if-error windows per entry.
 *
 * Layout: the key's 64-bit hash picks a shard by its top bits and a bucket
 * inside the shard by its low bits. Each shard is independent: its own
 * rwlock, chained hash table, SIEVE queue and a fixed share of the byte
 * budget (max_bytes / shards), so no operation ever takes a global lock.
 *
 * SIEVE (Zhang et al., NSDI '24): one FIFO queue per shard, newest at the
 * head, plus a "hand" that walks from the tail toward the head and wraps.
 * A hit only sets the entry's `visited` bit; eviction clears visited bits
 * as the hand passes and removes the first unvisited entry. Because a hit
 * never moves an entry, it needs no write lock: it takes the shard's READ
 * lock and sets the bit with a relaxed atomic store (several readers may
 * store it at once; the eviction that clears it holds the write lock, so it
 * never races a reader). An entry whose windows have all passed is evicted
 * by the hand regardless of its bit: expired entries cannot be removed under
 * a read lock, so they are reclaimed lazily, by eviction or by a write to
 * their key.
 *
 * Invariants:
 *   - Lock order: at most one shard lock is held at a time, and no user
 *     code (a value's free_fn) runs under it: removed entries are collected
 *     on a local list and released after unlocking.
 *   - Ownership: an entry owns one reference to its value; every lookup
 *     hands the reader a reference of its own, so a reader never sees freed
 *     memory even if the entry is evicted the moment the lock drops.
 *   - Accounting: shard->bytes is the sum of the entries' charges (entry
 *     struct + key + value charge) and stays <= shard->budget after every
 *     write; both are only changed under the shard's write lock.
 *
 * Memory per entry (paid once per cached key, so kept small): the links,
 * the value pointer, the store time, half the hash, the key length and the
 * windows in whole milliseconds (5 x 32 bits: what every caller passes in
 * practice) in 70 bytes, then the key. A ttl that is not whole
 * milliseconds, or longer than 49 days, is kept exactly in a "wide" block
 * after the key, so nothing is ever rounded. An entry's charge is derived
 * (its size plus its value's charge, which never changes) rather than
 * stored.
 */
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CACHE_DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define CACHE_DEFAULT_SHARDS 16u
#define CACHE_INITIAL_BUCKETS 16u

/* Counter ids in cache->counters. */
enum { C_LOOKUPS, C_MISSES, C_INSERTS, C_EVICTIONS };

/* A compact window of UINT32_MAX stands for UINT64_MAX ("forever"). */
#define MS_FOREVER UINT32_MAX

typedef struct entry {
  struct entry *chain; /* next in the bucket; reused by the free list */
  struct entry *newer; /* SIEVE queue, toward the head */
  struct entry *older; /* SIEVE queue, toward the tail */
  coalesce_value_t *value; /* the entry's own reference */
  uint64_t stored_at;      /* clock reading the windows start from */
  uint32_t hash;   /* low half of the key's hash: bucket, quick compare */
  uint32_t keylen;
  uint32_t ms[5];  /* fresh, swr, sie, age, keep in ms, unless `wide` */
  atomic_bool visited; /* set by hits (read lock), cleared by the hand */
  bool wide;           /* the windows are in the block after the key */
  unsigned char key[];
} entry_t;

#define ENTRY_FIXED offsetof(entry_t, key)

/* Offset of the wide block: after the key, aligned. */
static size_t wide_offset(size_t keylen) {
  size_t a = alignof(coalesce_ttl_t);
  return (ENTRY_FIXED + keylen + a - 1) / a * a;
}

/* Bytes of an entry (without its value); callers have checked that
 * keylen fits 32 bits. */
static size_t entry_size(size_t keylen, bool wide) {
  return wide ? wide_offset(keylen) + sizeof(coalesce_ttl_t)
              : ENTRY_FIXED + keylen;
}

static coalesce_ttl_t *entry_wide(const entry_t *e) {
  return (coalesce_ttl_t *)((char *)e + wide_offset(e->keylen));
}

/* A window as compact milliseconds, false if it does not fit exactly. */
static bool ms_of(uint64_t ns, uint32_t *ms) {
  if (ns == UINT64_MAX) {
    *ms = MS_FOREVER;
    return true;
  }
  if (ns % COALESCE_NS_PER_MS != 0 || ns / COALESCE_NS_PER_MS >= MS_FOREVER)
    return false;
  *ms = (uint32_t)(ns / COALESCE_NS_PER_MS);
  return true;
}

static uint64_t ns_of(uint32_t ms) {
  return ms == MS_FOREVER ? UINT64_MAX : (uint64_t)ms * COALESCE_NS_PER_MS;
}

static bool ttl_compact(const coalesce_ttl_t *ttl, uint32_t ms[5]) {
  return ms_of(ttl->fresh_ns, &ms[0]) && ms_of(ttl->swr_ns, &ms[1]) &&
         ms_of(ttl->sie_ns, &ms[2]) && ms_of(ttl->age_ns, &ms[3]) &&
         ms_of(ttl->keep_ns, &ms[4]);
}

/* Stores ttl in e (which must be wide unless the ttl is compact). */
static void entry_set_ttl(entry_t *e, const coalesce_ttl_t *ttl) {
  if (e->wide)
    *entry_wide(e) = *ttl;
  else if (!ttl_compact(ttl, e->ms))
    abort(); /* the caller sized the entry for this ttl */
}

static void entry_ttl(const entry_t *e, coalesce_ttl_t *out) {
  if (e->wide) {
    *out = *entry_wide(e);
    return;
  }
  out->fresh_ns = ns_of(e->ms[0]);
  out->swr_ns = ns_of(e->ms[1]);
  out->sie_ns = ns_of(e->ms[2]);
  out->age_ns = ns_of(e->ms[3]);
  out->keep_ns = ns_of(e->ms[4]);
}

/* What the entry costs against the budget: derived, never stored (the
 * value's charge cannot change). */
static size_t entry_charge(const entry_t *e) {
  return (size_t)coalesce__add_sat(entry_size(e->keylen, e->wide),
                                   coalesce_value_charge(e->value));
}

typedef struct shard {
  _Alignas(COALESCE__CACHELINE) pthread_rwlock_t lock;
  entry_t **buckets;
  size_t mask; /* buckets - 1 */
  entry_t *head, *tail, *hand;
  size_t entries;
  size_t bytes;
  size_t budget;
} shard_t;

struct coalesce_cache {
  uint32_t magic;
  unsigned nshards;
  unsigned shard_shift; /* hash >> shard_shift picks the shard */
  size_t max_bytes;
  size_t max_value;
  const coalesce_clock_t *clock;
  shard_t *shards;
  coalesce__counters_t counters;
};

/* ---------------------------------------------------------------- helpers */

static bool ttl_valid(const coalesce_ttl_t *ttl) {
  return ttl != NULL && (ttl->fresh_ns != 0 || ttl->swr_ns != 0 ||
                         ttl->sie_ns != 0 || ttl->keep_ns != 0);
}

static bool key_valid(const void *key, size_t keylen) {
  return key != NULL || keylen == 0;
}

static shard_t *shard_of(coalesce_cache_t *c, uint64_t hash) {
  return c->nshards == 1 ? &c->shards[0] : &c->shards[hash >> c->shard_shift];
}

/* Time since the entry was stored; 0 if `now` was read before the store
 * (the caller reads the clock before taking the lock). */
static uint64_t entry_elapsed(const entry_t *e, uint64_t now) {
  return now > e->stored_at ? now - e->stored_at : 0;
}

static uint64_t ttl_total(const coalesce_ttl_t *ttl) {
  return coalesce__add_sat(
      coalesce__add_sat(coalesce__add_sat(ttl->fresh_ns, ttl->swr_ns),
                        ttl->sie_ns),
      ttl->keep_ns);
}

static bool entry_expired(const entry_t *e, uint64_t now) {
  coalesce_ttl_t t;
  entry_ttl(e, &t);
  return entry_elapsed(e, now) >= ttl_total(&t);
}

static entry_t *shard_find(const shard_t *s, uint64_t hash, const void *key,
                           size_t keylen) {
  for (entry_t *e = s->buckets[hash & s->mask]; e != NULL; e = e->chain)
    if (e->hash == (uint32_t)hash && e->keylen == keylen &&
        (keylen == 0 || memcmp(e->key, key, keylen) == 0))
      return e;
  return NULL;
}

/* Unlinks e from its bucket and the queue and uncounts it. Write lock. */
static void shard_unlink(shard_t *s, entry_t *e) {
  entry_t **pp = &s->buckets[e->hash & s->mask];
  while (*pp != e)
    pp = &(*pp)->chain;
  *pp = e->chain;

  if (s->hand == e)
    s->hand = e->newer; /* NULL wraps to the tail on the next eviction */
  if (e->newer != NULL)
    e->newer->older = e->older;
  else
    s->head = e->older;
  if (e->older != NULL)
    e->older->newer = e->newer;
  else
    s->tail = e->newer;

  s->entries--;
  s->bytes -= entry_charge(e);
  e->chain = NULL;
}

/* Links e at the head of the queue and into its bucket. Write lock. */
static void shard_link(shard_t *s, entry_t *e) {
  size_t b = e->hash & s->mask;
  e->chain = s->buckets[b];
  s->buckets[b] = e;
  e->newer = NULL;
  e->older = s->head;
  if (s->head != NULL)
    s->head->newer = e;
  else
    s->tail = e;
  s->head = e;
  s->entries++;
  s->bytes += entry_charge(e);
}

/* Puts `by` in e's place: same bucket, same queue position, the hand on
 * it if it was on e. Write lock. */
static void shard_replace(shard_t *s, entry_t *e, entry_t *by) {
  entry_t **pp = &s->buckets[e->hash & s->mask];
  while (*pp != e)
    pp = &(*pp)->chain;
  *pp = by;
  by->chain = e->chain;
  by->newer = e->newer;
  by->older = e->older;
  if (by->newer != NULL)
    by->newer->older = by;
  else
    s->head = by;
  if (by->older != NULL)
    by->older->newer = by;
  else
    s->tail = by;
  if (s->hand == e)
    s->hand = by;
  s->bytes = s->bytes - entry_charge(e) + entry_charge(by);
  e->chain = NULL;
}

/* Doubles the bucket array once the load passes 1. On allocation failure
 * the chains just get longer: correctness does not depend on the size.
 * The mask stays within the 32 hash bits an entry keeps. */
static void shard_maybe_grow(shard_t *s) {
  size_t n = s->mask + 1;
  if (s->entries <= n || n > SIZE_MAX / 2 / sizeof(entry_t *) ||
      n > UINT32_MAX / 2)
    return;
  entry_t **nb = calloc(n * 2, sizeof(*nb));
  if (nb == NULL)
    return;
  size_t nmask = n * 2 - 1;
  for (size_t i = 0; i < n; i++) {
    entry_t *e = s->buckets[i];
    while (e != NULL) {
      entry_t *next = e->chain;
      e->chain = nb[e->hash & nmask];
      nb[e->hash & nmask] = e;
      e = next;
    }
  }
  free(s->buckets);
  s->buckets = nb;
  s->mask = nmask;
}

/* The SIEVE victim: walking from the hand toward the head (wrapping to the
 * tail), the first entry that is expired or unvisited; visited bits passed
 * on the way are cleared. Ends within two laps because the first lap
 * clears every bit. Write lock, queue not empty. */
static entry_t *shard_victim(shard_t *s, uint64_t now) {
  entry_t *e = s->hand != NULL ? s->hand : s->tail;
  for (;;) {
    if (entry_expired(e, now) ||
        !atomic_load_explicit(&e->visited, memory_order_relaxed)) {
      s->hand = e; /* unlinking moves it on to the next newer entry */
      return e;
    }
    atomic_store_explicit(&e->visited, false, memory_order_relaxed);
    e = e->newer != NULL ? e->newer : s->tail;
  }
}

/* Evicts until `need` more bytes fit in the shard's budget, pushing the
 * victims on *freelist. Returns how many were evicted. Write lock. */
static uint64_t shard_make_room(shard_t *s, size_t need, uint64_t now,
                                entry_t **freelist) {
  uint64_t n = 0;
  while (s->tail != NULL && s->bytes + need > s->budget) {
    entry_t *e = shard_victim(s, now);
    shard_unlink(s, e);
    e->chain = *freelist;
    *freelist = e;
    n++;
  }
  return n;
}

/* Releases entries collected under a lock, after it was dropped. */
static void entries_release(entry_t *list) {
  while (list != NULL) {
    entry_t *next = list->chain;
    coalesce_value_release(list->value);
    free(list);
    list = next;
  }
}

/* ------------------------------------------------------------- lifecycle */

void coalesce_cache_opts_init(coalesce_cache_opts_t *opts) {
  if (opts == NULL)
    return;
  memset(opts, 0, sizeof(*opts));
  opts->max_bytes = CACHE_DEFAULT_MAX_BYTES;
  opts->max_value = 0; /* derived from max_bytes when the cache is made */
  opts->shards = CACHE_DEFAULT_SHARDS;
  opts->clock = NULL;
}

static void cache_destroy(coalesce_cache_t *c, unsigned initialised) {
  for (unsigned i = 0; i < initialised; i++) {
    shard_t *s = &c->shards[i];
    entry_t *list = NULL;
    for (entry_t *e = s->head; e != NULL; e = e->older) {
      e->chain = list;
      list = e;
    }
    entries_release(list);
    free(s->buckets);
    pthread_rwlock_destroy(&s->lock);
  }
  free(c->shards);
  c->magic = 0;
  free(c);
}

/* Writers (puts, evictions) must not starve behind a steady stream of hits:
 * glibc's default rwlock prefers readers. */
static int shard_lock_init(pthread_rwlock_t *lock) {
  pthread_rwlockattr_t attr;
  if (pthread_rwlockattr_init(&attr) != 0)
    return -1;
#ifdef __GLIBC__
  pthread_rwlockattr_setkind_np(&attr,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
  int rc = pthread_rwlock_init(lock, &attr);
  pthread_rwlockattr_destroy(&attr);
  return rc == 0 ? 0 : -1;
}

int coalesce_cache_new(const coalesce_cache_opts_t *opts,
                       coalesce_cache_t **out) {
  if (out == NULL)
    return COALESCE_EINVAL;
  *out = NULL;
  coalesce_cache_opts_t o;
  coalesce_cache_opts_init(&o);
  if (opts != NULL)
    o = *opts;
  if (o.max_bytes == 0)
    o.max_bytes = CACHE_DEFAULT_MAX_BYTES;
  if (o.max_value == 0)
    o.max_value = o.max_bytes / 8;
  unsigned n = coalesce__pow2(o.shards == 0 ? CACHE_DEFAULT_SHARDS : o.shards);

  /* The counters are cache-line aligned: allocate to match. */
  coalesce_cache_t *c = aligned_alloc(_Alignof(coalesce_cache_t), sizeof(*c));
  if (c == NULL)
    return COALESCE_ENOMEM;
  memset(c, 0, sizeof(*c));
  c->magic = COALESCE__MAGIC_CACHE;
  c->nshards = n;
  unsigned bits = 0;
  while ((1u << bits) < n)
    bits++;
  c->shard_shift = 64 - bits; /* unused when n == 1 (shift by 64 is UB) */
  c->max_bytes = o.max_bytes;
  c->max_value = o.max_value;
  c->clock = o.clock;
  c->shards = aligned_alloc(_Alignof(shard_t), sizeof(shard_t) * n);
  if (c->shards == NULL) {
    free(c);
    return COALESCE_ENOMEM;
  }
  memset(c->shards, 0, sizeof(shard_t) * n);
  for (unsigned i = 0; i < n; i++) {
    shard_t *s = &c->shards[i];
    s->budget = o.max_bytes / n;
    s->buckets = calloc(CACHE_INITIAL_BUCKETS, sizeof(*s->buckets));
    s->mask = CACHE_INITIAL_BUCKETS - 1;
    if (s->buckets == NULL || shard_lock_init(&s->lock) != 0) {
      free(s->buckets);
      cache_destroy(c, i);
      return COALESCE_ENOMEM;
    }
  }
  *out = c;
  return 0;
}

void coalesce_cache_free(coalesce_cache_t *cache) {
  if (cache == NULL)
    return;
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  cache_destroy(cache, cache->nshards);
}

size_t coalesce_cache_entry_charge(size_t keylen, const coalesce_value_t *v) {
  size_t charge = coalesce__add_sat(ENTRY_FIXED, keylen);
  return v == NULL
             ? charge
             : (size_t)coalesce__add_sat(charge, coalesce_value_charge(v));
}

/* ------------------------------------------------------------ operations */

int coalesce_cache_put(coalesce_cache_t *cache, const void *key, size_t keylen,
                       coalesce_value_t *value, const coalesce_ttl_t *ttl) {
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  if (!key_valid(key, keylen) || value == NULL || !ttl_valid(ttl))
    return COALESCE_EINVAL;
  uint64_t hash = coalesce__hash(key, keylen);
  shard_t *s = shard_of(cache, hash);
  uint32_t ms[5];
  bool wide = !ttl_compact(ttl, ms);
  size_t charge = keylen > UINT32_MAX
                      ? SIZE_MAX
                      : (size_t)coalesce__add_sat(entry_size(keylen, wide),
                                                  coalesce_value_charge(value));
  bool too_big = charge > cache->max_value || charge > s->budget;

  /* Build the entry before locking: the lock covers only the links. */
  entry_t *e = NULL;
  if (!too_big) {
    e = malloc(entry_size(keylen, wide));
    if (e == NULL)
      return COALESCE_ENOMEM;
    e->hash = (uint32_t)hash;
    e->value = coalesce_value_ref(value);
    e->keylen = (uint32_t)keylen;
    e->wide = wide;
    entry_set_ttl(e, ttl);
    atomic_init(&e->visited, false);
    if (keylen > 0)
      memcpy(e->key, key, keylen);
  }
  uint64_t now = coalesce_clock_now(cache->clock);

  entry_t *freelist = NULL;
  uint64_t evicted = 0;
  pthread_rwlock_wrlock(&s->lock);
  entry_t *old = shard_find(s, hash, key, keylen);
  if (old != NULL) {
    /* Replaced, or outdated by a value too big to store: either way gone. */
    shard_unlink(s, old);
    old->chain = freelist;
    freelist = old;
  }
  if (e != NULL) {
    evicted = shard_make_room(s, charge, now, &freelist);
    e->stored_at = now;
    shard_link(s, e);
    shard_maybe_grow(s);
  }
  pthread_rwlock_unlock(&s->lock);

  entries_release(freelist);
  if (evicted > 0)
    coalesce__count(&cache->counters, hash, C_EVICTIONS, evicted);
  if (too_big)
    return COALESCE_ETOOBIG;
  coalesce__count(&cache->counters, hash, C_INSERTS, 1);
  return 0;
}

int coalesce_cache_get(coalesce_cache_t *cache, const void *key, size_t keylen,
                       coalesce_lookup_t *out) {
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  if (out == NULL)
    return COALESCE_EINVAL;
  memset(out, 0, sizeof(*out));
  if (!key_valid(key, keylen))
    return COALESCE_EINVAL;
  uint64_t hash = coalesce__hash(key, keylen);
  shard_t *s = shard_of(cache, hash);
  uint64_t now = coalesce_clock_now(cache->clock);
  coalesce__count(&cache->counters, hash, C_LOOKUPS, 1);

  int rc = COALESCE_ENOTFOUND;
  pthread_rwlock_rdlock(&s->lock);
  entry_t *e = shard_find(s, hash, key, keylen);
  if (e != NULL) {
    uint64_t elapsed = entry_elapsed(e, now);
    coalesce_ttl_t ttl;
    entry_ttl(e, &ttl);
    const coalesce_ttl_t *t = &ttl;
    if (elapsed < ttl_total(t)) {
      out->value = coalesce_value_ref(e->value);
      if (elapsed < t->fresh_ns)
        out->state = COALESCE_FRESH;
      else if (elapsed < coalesce__add_sat(t->fresh_ns, t->swr_ns))
        out->state = COALESCE_STALE;
      else if (elapsed < coalesce__add_sat(coalesce__add_sat(t->fresh_ns,
                                                             t->swr_ns),
                                           t->sie_ns))
        out->state = COALESCE_STALE_IF_ERROR;
      else
        out->state = COALESCE_VALIDATE_ONLY;
      out->age_ns = coalesce__add_sat(t->age_ns, elapsed);
      out->stored_at_ns = e->stored_at;
      out->ttl = *t;
      /* Load first: a bit already set costs no cache-line write. */
      if (!atomic_load_explicit(&e->visited, memory_order_relaxed))
        atomic_store_explicit(&e->visited, true, memory_order_relaxed);
      rc = 0;
    }
  }
  pthread_rwlock_unlock(&s->lock);

  if (rc != 0)
    coalesce__count(&cache->counters, hash, C_MISSES, 1);
  return rc;
}

/* Unlinks an entry whose windows have all passed; the caller releases it
 * after unlocking. Counted as an eviction: the cache removed it, not the
 * caller. Write lock. */
static entry_t *shard_reclaim(coalesce_cache_t *cache, shard_t *s, entry_t *e) {
  shard_unlink(s, e);
  coalesce__count(&cache->counters, e->hash, C_EVICTIONS, 1);
  return e;
}

int coalesce_cache_touch(coalesce_cache_t *cache, const void *key,
                         size_t keylen, const coalesce_ttl_t *ttl) {
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  if (!key_valid(key, keylen) || !ttl_valid(ttl))
    return COALESCE_EINVAL;
  if (keylen > UINT32_MAX)
    return COALESCE_ENOTFOUND; /* never stored */
  uint64_t hash = coalesce__hash(key, keylen);
  shard_t *s = shard_of(cache, hash);
  /* A compact entry cannot hold a ttl that is not whole milliseconds: a
   * wide copy, made before locking, may have to take its place. */
  uint32_t ms[5];
  entry_t *spare = NULL;
  if (!ttl_compact(ttl, ms)) {
    spare = malloc(entry_size(keylen, true));
    if (spare == NULL)
      return COALESCE_ENOMEM;
  }
  uint64_t now = coalesce_clock_now(cache->clock);

  entry_t *gone = NULL;
  uint64_t evicted = 0;
  int rc = COALESCE_ENOTFOUND;
  pthread_rwlock_wrlock(&s->lock);
  entry_t *e = shard_find(s, hash, key, keylen);
  if (e != NULL && entry_expired(e, now)) {
    gone = shard_reclaim(cache, s, e); /* too late to revive */
  } else if (e != NULL && (e->wide || spare == NULL)) {
    e->stored_at = now;
    entry_set_ttl(e, ttl);
    rc = 0;
  } else if (e != NULL) {
    spare->hash = e->hash;
    spare->value = e->value; /* the reference moves over */
    spare->keylen = e->keylen;
    spare->wide = true;
    atomic_init(&spare->visited,
                atomic_load_explicit(&e->visited, memory_order_relaxed));
    memcpy(spare->key, e->key, e->keylen);
    spare->stored_at = now;
    entry_set_ttl(spare, ttl);
    shard_replace(s, e, spare);
    e->value = NULL;
    gone = e;
    spare = NULL;
    /* it grew: restore the budget (possibly evicting it) */
    evicted = shard_make_room(s, 0, now, &gone);
    rc = 0;
  }
  pthread_rwlock_unlock(&s->lock);
  entries_release(gone);
  free(spare);
  if (evicted > 0)
    coalesce__count(&cache->counters, hash, C_EVICTIONS, evicted);
  return rc;
}

int coalesce_cache_delete(coalesce_cache_t *cache, const void *key,
                          size_t keylen) {
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  if (!key_valid(key, keylen))
    return COALESCE_EINVAL;
  uint64_t hash = coalesce__hash(key, keylen);
  shard_t *s = shard_of(cache, hash);
  uint64_t now = coalesce_clock_now(cache->clock);

  int rc = COALESCE_ENOTFOUND;
  pthread_rwlock_wrlock(&s->lock);
  entry_t *e = shard_find(s, hash, key, keylen);
  if (e != NULL && entry_expired(e, now)) {
    shard_reclaim(cache, s, e); /* already gone as far as lookups go */
  } else if (e != NULL) {
    shard_unlink(s, e);
    rc = 0;
  }
  pthread_rwlock_unlock(&s->lock);
  entries_release(e);
  return rc;
}

void coalesce_cache_clear(coalesce_cache_t *cache) {
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  for (unsigned i = 0; i < cache->nshards; i++) {
    shard_t *s = &cache->shards[i];
    entry_t *list = NULL;
    pthread_rwlock_wrlock(&s->lock);
    for (entry_t *e = s->head; e != NULL; e = e->older) {
      e->chain = list;
      list = e;
    }
    memset(s->buckets, 0, (s->mask + 1) * sizeof(*s->buckets));
    s->head = s->tail = s->hand = NULL;
    s->entries = 0;
    s->bytes = 0;
    pthread_rwlock_unlock(&s->lock);
    entries_release(list);
  }
}

void coalesce_cache_stats(coalesce_cache_t *cache, coalesce_stats_t *st) {
  COALESCE__CHECK(cache, COALESCE__MAGIC_CACHE);
  if (st == NULL)
    return;
  uint64_t entries = 0, bytes = 0;
  for (unsigned i = 0; i < cache->nshards; i++) {
    shard_t *s = &cache->shards[i];
    pthread_rwlock_rdlock(&s->lock);
    entries += s->entries;
    bytes += s->bytes;
    pthread_rwlock_unlock(&s->lock);
  }
  st->cache_entries = entries;
  st->cache_bytes = bytes;
  st->cache_max_bytes = cache->max_bytes;
  st->cache_lookups = coalesce__counter_sum(&cache->counters, C_LOOKUPS);
  st->cache_misses = coalesce__counter_sum(&cache->counters, C_MISSES);
  st->cache_inserts = coalesce__counter_sum(&cache->counters, C_INSERTS);
  st->cache_evictions = coalesce__counter_sum(&cache->counters, C_EVICTIONS);
}
