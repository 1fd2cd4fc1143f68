/*
 * flight.c — the coalescer: the in-flight table ("singleflight").
 *
 * One flight per key: the first joiner leads (runs the fetch and completes
 * the flight), later joiners park as waiters and are called back once with
 * the shared result. Keys are spread over power-of-two shards by their xxh3
 * hash; each shard has a mutex, a chained hash table of flights and a small
 * bounded list of hit-for-miss records (keys whose last result could not be
 * shared, so joins go SOLO until the record lapses).
 *
 * Invariants:
 *  - Lock order: a shard mutex is a leaf. No two shard locks are ever held
 *    together, and no user code (callbacks, the injected clock) runs under
 *    one: waiters are moved out of their flight under the lock and called
 *    after it is released. coalesce_do's per-call mutex is only taken by its
 *    own callback and waiting thread, never under a shard lock.
 *  - A flight's waiter list, its state and every waiter's state/links are
 *    guarded by the flight's shard mutex, whether or not the flight is still
 *    in the table (detached and SOLO flights keep their shard pointer).
 *  - Flight states only move forward: IN_TABLE -> DETACHED -> COMPLETING, or
 *    straight to COMPLETING. Only the leader's coalesce_flight_complete frees
 *    a flight, so detaching (forget, expiry) never frees one.
 *  - Waiter states: WAITING -> DELIVERING (moved out for its callback) or
 *    WAITING -> CANCELED. A waiter with a caller-owned handle is never
 *    touched after its callback starts: its next/cb/ud are read first. So a
 *    cancel on one thread can race a completion on another: whoever takes
 *    the shard lock first decides, and the loser sees it.
 *  - Counters are sharded by key hash (internal.h). The pending gauge is a
 *    per-shard atomic written under the shard lock; global atomics for the
 *    flight and waiter totals are touched only when a limit is configured.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define DEFAULT_SHARDS 16u
#define MIN_BUCKETS 16u
#define HFM_PER_SHARD 32u /* hit-for-miss records kept per shard */

enum {
  ST_TOTAL,
  ST_COALESCED,
  ST_CALLS,
  ST_WAIT_TIMEOUTS,
  ST_EXPIRED,
  ST_UNSHARED,
  ST_BYPASSED,
  ST_OVERLOADED,
};

typedef enum { FLIGHT_IN_TABLE, FLIGHT_DETACHED, FLIGHT_COMPLETING } fstate_t;
typedef enum { WAITER_WAITING, WAITER_DELIVERING, WAITER_CANCELED } wstate_t;

/* A key that bypasses coalescing until until_ns (Varnish's hit-for-miss). */
typedef struct hfm {
  uint64_t hash;
  uint64_t until_ns;
  size_t keylen;
  unsigned char *key;
} hfm_t;

typedef struct shard {
  _Alignas(COALESCE__CACHELINE) pthread_mutex_t mu;
  coalesce_flight_t **buckets; /* chained by flight->chain */
  size_t nbuckets;             /* power of two */
  _Atomic size_t nflights;     /* written under mu, read by pending() */
  unsigned nhfm;
  hfm_t hfm[HFM_PER_SHARD];
} shard_t;

struct coalesce_flight {
  uint32_t magic;
  fstate_t state;
  bool solo;    /* private flight, never in the table */
  bool expired; /* detached at its age limit: takes no more waiters */
  uint64_t hash;
  uint64_t started_ns;
  coalesce_coalescer_t *c;
  shard_t *shard;
  coalesce_flight_t *chain;
  coalesce_waiter_t *head, *tail;
  size_t nwaiters;
  size_t keylen;
  unsigned char key[];
};

struct coalesce_waiter {
  uint32_t magic;
  wstate_t state;
  bool owned; /* the caller holds a handle and frees it */
  bool leader; /* added by the flight's leader: gets the result even when it
                  may not be shared */
  coalesce_waiter_t *prev, *next;
  coalesce_flight_t *flight; /* NULL once delivered or canceled */
  shard_t *shard;
  coalesce_done_cb cb;
  void *ud;
};

struct coalesce_coalescer {
  uint32_t magic;
  unsigned nshards;
  coalesce_coalescer_opts_t opts;
  shard_t *shards;
  _Atomic size_t nflights; /* only maintained when max_flights != 0 */
  _Atomic size_t nwaiters; /* only maintained when max_waiters != 0 */
  coalesce__counters_t counters;
};

/* ----------------------------------------------------------- small helpers */

static uint64_t now_ns(const coalesce_coalescer_t *c) {
  return coalesce_clock_now(c->opts.clock);
}

static shard_t *shard_of(coalesce_coalescer_t *c, uint64_t h) {
  /* high bits pick the shard, low bits the bucket and the counter slot */
  return &c->shards[(h >> 40) & (c->nshards - 1)];
}

static void count(coalesce_coalescer_t *c, uint64_t h, unsigned id) {
  coalesce__count(&c->counters, h, id, 1);
}

static bool key_eq(const unsigned char *a, size_t alen, const void *b,
                   size_t blen) {
  return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* Takes one unit of a limited total; always succeeds without a limit. */
static bool reserve(_Atomic size_t *n, size_t max) {
  if (max == 0)
    return true;
  size_t cur = atomic_load_explicit(n, memory_order_relaxed);
  do {
    if (cur >= max)
      return false;
  } while (!atomic_compare_exchange_weak_explicit(
      n, &cur, cur + 1, memory_order_relaxed, memory_order_relaxed));
  return true;
}

static void unreserve(_Atomic size_t *n, size_t max, size_t k) {
  if (max != 0 && k != 0)
    atomic_fetch_sub_explicit(n, k, memory_order_relaxed);
}

static bool aged(const coalesce_coalescer_t *c, const coalesce_flight_t *f,
                 uint64_t now) {
  uint64_t max = c->opts.max_flight_age_ns;
  return max != 0 && now > f->started_ns && now - f->started_ns >= max;
}

/* ------------------------------------------------- flight table (locked) */

static coalesce_flight_t *table_find(shard_t *s, uint64_t h, const void *key,
                                     size_t keylen) {
  coalesce_flight_t *f = s->buckets[h & (s->nbuckets - 1)];
  for (; f != NULL; f = f->chain)
    if (f->hash == h && key_eq(f->key, f->keylen, key, keylen))
      return f;
  return NULL;
}

/* Doubles the buckets; on allocation failure chains just get longer. */
static void table_grow(shard_t *s) {
  size_t n = s->nbuckets * 2;
  coalesce_flight_t **b = calloc(n, sizeof(*b));
  if (b == NULL)
    return;
  for (size_t i = 0; i < s->nbuckets; i++) {
    coalesce_flight_t *f = s->buckets[i], *next;
    for (; f != NULL; f = next) {
      next = f->chain;
      f->chain = b[f->hash & (n - 1)];
      b[f->hash & (n - 1)] = f;
    }
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = n;
}

static void table_insert(shard_t *s, coalesce_flight_t *f) {
  size_t n = atomic_load_explicit(&s->nflights, memory_order_relaxed);
  if (n >= s->nbuckets)
    table_grow(s);
  coalesce_flight_t **head = &s->buckets[f->hash & (s->nbuckets - 1)];
  f->chain = *head;
  *head = f;
  f->state = FLIGHT_IN_TABLE;
  atomic_store_explicit(&s->nflights, n + 1, memory_order_relaxed);
}

static void table_remove(coalesce_coalescer_t *c, shard_t *s,
                         coalesce_flight_t *f) {
  coalesce_flight_t **pp = &s->buckets[f->hash & (s->nbuckets - 1)];
  while (*pp != f)
    pp = &(*pp)->chain;
  *pp = f->chain;
  f->chain = NULL;
  f->state = FLIGHT_DETACHED;
  size_t n = atomic_load_explicit(&s->nflights, memory_order_relaxed);
  atomic_store_explicit(&s->nflights, n - 1, memory_order_relaxed);
  unreserve(&c->nflights, c->opts.max_flights, 1);
}

/* ---------------------------------------------- hit-for-miss (locked) */

static void hfm_drop(shard_t *s, unsigned i) {
  free(s->hfm[i].key);
  s->hfm[i] = s->hfm[--s->nhfm];
}

/* True while key is recorded as unshareable; drops lapsed records. */
static bool hfm_active(shard_t *s, uint64_t h, const void *key, size_t keylen,
                       uint64_t now) {
  for (unsigned i = 0; i < s->nhfm;) {
    hfm_t *r = &s->hfm[i];
    if (r->until_ns <= now) {
      hfm_drop(s, i);
      continue;
    }
    if (r->hash == h && key_eq(r->key, r->keylen, key, keylen))
      return true;
    i++;
  }
  return false;
}

/* Records (or extends) a key; when full, the record ending first goes. A
 * failed allocation just skips the record: waiters are told EUNSHARED
 * regardless, the record only spares later joins a wasted wait. */
static void hfm_record(shard_t *s, uint64_t h, const void *key, size_t keylen,
                       uint64_t until) {
  unsigned victim = 0;
  for (unsigned i = 0; i < s->nhfm; i++) {
    hfm_t *r = &s->hfm[i];
    if (r->hash == h && key_eq(r->key, r->keylen, key, keylen)) {
      if (r->until_ns < until)
        r->until_ns = until;
      return;
    }
    if (r->until_ns < s->hfm[victim].until_ns)
      victim = i;
  }
  if (s->nhfm == HFM_PER_SHARD)
    hfm_drop(s, victim);
  unsigned char *copy = malloc(keylen ? keylen : 1);
  if (copy == NULL)
    return;
  if (keylen > 0)
    memcpy(copy, key, keylen);
  s->hfm[s->nhfm++] = (hfm_t){h, until, keylen, copy};
}

/* ------------------------------------------------------ waiters (locked) */

static int waiter_add_locked(coalesce_coalescer_t *c, coalesce_flight_t *f,
                             coalesce_done_cb cb, void *ud,
                             coalesce_waiter_t **out) {
  if (c->opts.max_waiters_per_key != 0 &&
      f->nwaiters >= c->opts.max_waiters_per_key)
    return COALESCE_EOVERLOADED;
  if (!reserve(&c->nwaiters, c->opts.max_waiters))
    return COALESCE_EOVERLOADED;
  coalesce_waiter_t *w = malloc(sizeof(*w));
  if (w == NULL) {
    unreserve(&c->nwaiters, c->opts.max_waiters, 1);
    return COALESCE_ENOMEM;
  }
  *w = (coalesce_waiter_t){.magic = COALESCE__MAGIC_WAITER,
                           .state = WAITER_WAITING,
                           .owned = out != NULL,
                           .prev = f->tail,
                           .flight = f,
                           .shard = f->shard,
                           .cb = cb,
                           .ud = ud};
  if (f->tail != NULL)
    f->tail->next = w;
  else
    f->head = w;
  f->tail = w;
  f->nwaiters++;
  if (out != NULL)
    *out = w;
  return 0;
}

static void waiter_unlink(coalesce_coalescer_t *c, coalesce_waiter_t *w) {
  coalesce_flight_t *f = w->flight;
  if (w->prev != NULL)
    w->prev->next = w->next;
  else
    f->head = w->next;
  if (w->next != NULL)
    w->next->prev = w->prev;
  else
    f->tail = w->prev;
  f->nwaiters--;
  w->prev = w->next = NULL;
  w->flight = NULL;
  unreserve(&c->nwaiters, c->opts.max_waiters, 1);
}

/* Moves all of f's waiters onto *list for delivery after unlocking. */
static void take_waiters(coalesce_coalescer_t *c, coalesce_flight_t *f,
                         coalesce_waiter_t **list) {
  if (f->head == NULL)
    return;
  for (coalesce_waiter_t *w = f->head; w != NULL; w = w->next) {
    w->state = WAITER_DELIVERING;
    w->flight = NULL;
  }
  f->tail->next = *list;
  *list = f->head;
  unreserve(&c->nwaiters, c->opts.max_waiters, f->nwaiters);
  f->head = f->tail = NULL;
  f->nwaiters = 0;
}

/* Detaches a flight at its age limit; its waiters go onto *list. */
static void expire_locked(coalesce_coalescer_t *c, shard_t *s,
                          coalesce_flight_t *f, coalesce_waiter_t **list) {
  if (f->state == FLIGHT_IN_TABLE)
    table_remove(c, s, f);
  f->expired = true;
  take_waiters(c, f, list);
  count(c, f->hash, ST_EXPIRED);
}

/* Calls each waiter's cb with its own value reference, without locks. A
 * handle-owned waiter is not touched once its cb has started. */
/* Calls every waiter of a taken list. `unshared`: only the leader's own
 * waiters get err/value; followers get COALESCE_EUNSHARED. */
static void deliver_to(coalesce_waiter_t *list, int err,
                       coalesce_value_t *value, bool unshared) {
  while (list != NULL) {
    coalesce_waiter_t *w = list;
    list = w->next;
    coalesce_done_cb cb = w->cb;
    void *ud = w->ud;
    bool gets = !unshared || w->leader;
    if (!w->owned) {
      w->magic = 0;
      free(w);
    }
    if (gets)
      cb(ud, err, coalesce_value_ref(value));
    else
      cb(ud, COALESCE_EUNSHARED, NULL);
  }
}

static void deliver(coalesce_waiter_t *list, int err, coalesce_value_t *value) {
  deliver_to(list, err, value, false);
}

/* ------------------------------------------------------------- lifecycle */

void coalesce_coalescer_opts_init(coalesce_coalescer_opts_t *opts) {
  if (opts == NULL)
    return;
  *opts = (coalesce_coalescer_opts_t){
      .max_wait_ns = 5 * COALESCE_NS_PER_SEC,
      .max_flight_age_ns = 10 * COALESCE_NS_PER_SEC,
      .unshared_ns = 2 * COALESCE_NS_PER_SEC,
      .shards = DEFAULT_SHARDS,
  };
}

/* max_wait_ns 0 means the 5 s default; max_flight_age_ns 0 means no age
 * limit; unshared_ns 0 means no hit-for-miss window. */
int coalesce_coalescer_new(const coalesce_coalescer_opts_t *opts,
                           coalesce_coalescer_t **out) {
  if (out == NULL)
    return COALESCE_EINVAL;
  *out = NULL;
  coalesce_coalescer_opts_t o;
  if (opts != NULL)
    o = *opts;
  else
    coalesce_coalescer_opts_init(&o);
  if (o.max_wait_ns == 0)
    o.max_wait_ns = 5 * COALESCE_NS_PER_SEC;
  unsigned nshards = coalesce__pow2(o.shards ? o.shards : DEFAULT_SHARDS);

  size_t csize = (sizeof(coalesce_coalescer_t) + COALESCE__CACHELINE - 1) /
                 COALESCE__CACHELINE * COALESCE__CACHELINE;
  coalesce_coalescer_t *c = aligned_alloc(COALESCE__CACHELINE, csize);
  if (c == NULL)
    return COALESCE_ENOMEM;
  memset(c, 0, csize);
  c->shards = aligned_alloc(COALESCE__CACHELINE, nshards * sizeof(shard_t));
  if (c->shards == NULL) {
    free(c);
    return COALESCE_ENOMEM;
  }
  memset(c->shards, 0, nshards * sizeof(shard_t));
  for (unsigned i = 0; i < nshards; i++) {
    shard_t *s = &c->shards[i];
    s->buckets = calloc(MIN_BUCKETS, sizeof(*s->buckets));
    if (s->buckets == NULL || pthread_mutex_init(&s->mu, NULL) != 0) {
      free(s->buckets);
      c->nshards = i; /* free() below undoes shards [0, i) */
      c->magic = COALESCE__MAGIC_COALESCER;
      coalesce_coalescer_free(c);
      return COALESCE_ENOMEM;
    }
    s->nbuckets = MIN_BUCKETS;
    atomic_init(&s->nflights, 0);
  }
  c->magic = COALESCE__MAGIC_COALESCER;
  c->nshards = nshards;
  c->opts = o;
  atomic_init(&c->nflights, 0);
  atomic_init(&c->nwaiters, 0);
  *out = c;
  return 0;
}

void coalesce_coalescer_free(coalesce_coalescer_t *c) {
  if (c == NULL)
    return;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  for (unsigned i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    while (s->nhfm > 0)
      hfm_drop(s, 0);
    free(s->buckets);
    pthread_mutex_destroy(&s->mu);
  }
  free(c->shards);
  c->magic = 0;
  free(c);
}

/* ----------------------------------------------------------------- joins */

static coalesce_flight_t *flight_new(coalesce_coalescer_t *c, shard_t *s,
                                     uint64_t h, const void *key, size_t keylen,
                                     uint64_t now, bool solo) {
  coalesce_flight_t *f = malloc(sizeof(*f) + keylen);
  if (f == NULL)
    return NULL;
  *f = (coalesce_flight_t){.magic = COALESCE__MAGIC_FLIGHT,
                           .state = FLIGHT_DETACHED,
                           .solo = solo,
                           .hash = h,
                           .started_ns = now,
                           .c = c,
                           .shard = s,
                           .keylen = keylen};
  if (keylen > 0)
    memcpy(f->key, key, keylen);
  return f;
}

/* coalesce_join, plus (for coalesce_do) how long a follower's flight has
 * left before its age limit: UINT64_MAX when unlimited. */
static int join_impl(coalesce_coalescer_t *c, const void *key, size_t keylen,
                     coalesce_done_cb cb, void *ud, coalesce_flight_t **flight,
                     coalesce_waiter_t **waiter, uint64_t *age_left) {
  if (c == NULL || flight == NULL || (key == NULL && keylen > 0))
    return COALESCE_EINVAL;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  *flight = NULL;
  if (waiter != NULL)
    *waiter = NULL;
  if (key == NULL)
    key = "";
  uint64_t h = coalesce__hash(key, keylen);
  uint64_t now = now_ns(c);
  shard_t *s = shard_of(c, h);
  coalesce_waiter_t *expired = NULL;
  int role;

  pthread_mutex_lock(&s->mu);
  coalesce_flight_t *f = table_find(s, h, key, keylen);
  if (f != NULL && aged(c, f, now)) {
    expire_locked(c, s, f, &expired);
    f = NULL;
  }
  if (f != NULL) {
    role = COALESCE_FOLLOWER;
    if (cb != NULL) {
      int rc = waiter_add_locked(c, f, cb, ud, waiter);
      if (rc < 0)
        role = rc;
    }
    if (role > 0 && age_left != NULL)
      *age_left =
          c->opts.max_flight_age_ns == 0
              ? UINT64_MAX
              : coalesce__add_sat(f->started_ns, c->opts.max_flight_age_ns) -
                    (now > f->started_ns ? now : f->started_ns);
  } else if (s->nhfm > 0 && hfm_active(s, h, key, keylen, now)) {
    role = COALESCE_SOLO;
  } else if (!reserve(&c->nflights, c->opts.max_flights)) {
    role = COALESCE_EOVERLOADED;
  } else if ((f = flight_new(c, s, h, key, keylen, now, false)) == NULL) {
    unreserve(&c->nflights, c->opts.max_flights, 1);
    role = COALESCE_ENOMEM;
  } else {
    table_insert(s, f);
    *flight = f;
    role = COALESCE_LEADER;
  }
  pthread_mutex_unlock(&s->mu);

  deliver(expired, COALESCE_EEXPIRED, NULL);
  if (role == COALESCE_SOLO) {
    /* private: nobody else can find it, so no lock needed to build it */
    f = flight_new(c, s, h, key, keylen, now, true);
    if (f == NULL)
      role = COALESCE_ENOMEM;
    *flight = f;
  }

  count(c, h, ST_TOTAL);
  switch (role) {
  case COALESCE_FOLLOWER:
    count(c, h, ST_COALESCED);
    break;
  case COALESCE_SOLO:
    count(c, h, ST_BYPASSED);
    /* fallthrough */
  case COALESCE_LEADER:
    count(c, h, ST_CALLS);
    break;
  case COALESCE_EOVERLOADED:
    count(c, h, ST_OVERLOADED);
    break;
  default:
    break;
  }
  return role;
}

int coalesce_join(coalesce_coalescer_t *c, const void *key, size_t keylen,
                  coalesce_done_cb cb, void *ud, coalesce_flight_t **flight,
                  coalesce_waiter_t **waiter) {
  return join_impl(c, key, keylen, cb, ud, flight, waiter, NULL);
}

/* Subject to the waiter limits like any join. COALESCE_EEXPIRED once the
 * flight has been detached at its age limit (its waiters were failed). */
int coalesce_flight_add_waiter(coalesce_flight_t *flight, coalesce_done_cb cb,
                               void *ud, coalesce_waiter_t **waiter) {
  if (flight == NULL || cb == NULL)
    return COALESCE_EINVAL;
  COALESCE__CHECK(flight, COALESCE__MAGIC_FLIGHT);
  if (waiter != NULL)
    *waiter = NULL;
  shard_t *s = flight->shard;
  pthread_mutex_lock(&s->mu);
  coalesce_waiter_t *w = NULL;
  int rc = flight->expired
               ? COALESCE_EEXPIRED
               : waiter_add_locked(flight->c, flight, cb, ud, &w);
  if (rc == 0) {
    w->leader = true;
    w->owned = waiter != NULL;
    if (waiter != NULL)
      *waiter = w;
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int coalesce_flight_complete(coalesce_flight_t *flight, int err,
                             coalesce_value_t *value, unsigned flags) {
  if (flight == NULL)
    return COALESCE_EINVAL;
  COALESCE__CHECK(flight, COALESCE__MAGIC_FLIGHT);
  coalesce_coalescer_t *c = flight->c;
  shard_t *s = flight->shard;
  bool unshared = (flags & COALESCE_COMPLETE_UNSHARED) != 0;
  uint64_t now = unshared ? now_ns(c) : 0;
  coalesce_waiter_t *list = NULL;

  pthread_mutex_lock(&s->mu);
  if (flight->state == FLIGHT_IN_TABLE)
    table_remove(c, s, flight);
  flight->state = FLIGHT_COMPLETING;
  take_waiters(c, flight, &list);
  if (unshared && c->opts.unshared_ns != 0)
    hfm_record(s, flight->hash, flight->key, flight->keylen,
               coalesce__add_sat(now, c->opts.unshared_ns));
  pthread_mutex_unlock(&s->mu);

  if (unshared)
    count(c, flight->hash, ST_UNSHARED);
  flight->magic = 0;
  free(flight);
  deliver_to(list, err, value, unshared);
  return 0;
}

const void *coalesce_flight_key(const coalesce_flight_t *flight, size_t *len) {
  COALESCE__CHECK(flight, COALESCE__MAGIC_FLIGHT);
  if (len != NULL)
    *len = flight->keylen;
  return flight->key;
}

/* Cancelling twice returns 0 again: the waiter stays removed. */
int coalesce_waiter_cancel(coalesce_waiter_t *waiter) {
  COALESCE__CHECK(waiter, COALESCE__MAGIC_WAITER);
  shard_t *s = waiter->shard;
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  if (waiter->state == WAITER_WAITING) {
    waiter_unlink(waiter->flight->c, waiter);
    waiter->state = WAITER_CANCELED;
  } else if (waiter->state == WAITER_DELIVERING) {
    rc = COALESCE_EALREADY;
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

void coalesce_waiter_free(coalesce_waiter_t *waiter) {
  if (waiter == NULL)
    return;
  COALESCE__CHECK(waiter, COALESCE__MAGIC_WAITER);
  /* No lock: a correct caller has seen its cb run or its cancel succeed,
   * both of which ordered this read after the last write to state. */
  if (waiter->state == WAITER_WAITING) {
    fprintf(stderr,
            "libcoalesce: waiter %p freed while still parked; "
            "cancel it first\n",
            (void *)waiter);
    abort();
  }
  waiter->magic = 0;
  free(waiter);
}

int coalesce_forget(coalesce_coalescer_t *c, const void *key, size_t keylen) {
  if (c == NULL || (key == NULL && keylen > 0))
    return COALESCE_EINVAL;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  if (key == NULL)
    key = "";
  uint64_t h = coalesce__hash(key, keylen);
  shard_t *s = shard_of(c, h);
  pthread_mutex_lock(&s->mu);
  coalesce_flight_t *f = table_find(s, h, key, keylen);
  if (f != NULL)
    table_remove(c, s, f);
  pthread_mutex_unlock(&s->mu);
  return f != NULL ? 0 : COALESCE_ENOTFOUND;
}

size_t coalesce_coalescer_expire(coalesce_coalescer_t *c) {
  if (c == NULL)
    return 0;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  if (c->opts.max_flight_age_ns == 0)
    return 0;
  uint64_t now = now_ns(c);
  size_t n = 0;
  for (unsigned i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    coalesce_waiter_t *list = NULL;
    pthread_mutex_lock(&s->mu);
    for (size_t b = 0; b < s->nbuckets; b++) {
      coalesce_flight_t *f = s->buckets[b], *next;
      for (; f != NULL; f = next) {
        next = f->chain;
        if (aged(c, f, now)) {
          expire_locked(c, s, f, &list);
          n++;
        }
      }
    }
    pthread_mutex_unlock(&s->mu);
    deliver(list, COALESCE_EEXPIRED, NULL);
  }
  return n;
}

/* ------------------------------------------------------------- blocking */

typedef struct do_call {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* on CLOCK_MONOTONIC */
  bool done;
  int err;
  coalesce_value_t *value;
} do_call_t;

static void do_call_done(void *ud, int err, coalesce_value_t *value) {
  do_call_t *d = ud;
  pthread_mutex_lock(&d->mu);
  d->err = err;
  d->value = value;
  d->done = true;
  pthread_cond_signal(&d->cv);
  pthread_mutex_unlock(&d->mu);
}

/* The real monotonic clock: condvars cannot follow an injected one. */
static uint64_t real_now(void) {
  return coalesce_clock_now(NULL);
}

/* A parked coalesce_do waiter's timed wait ran out. Under the shard lock:
 * if the flight reached its age limit (injected clock) it is expired for
 * everyone; else if the caller's own max_wait passed the waiter is cancelled
 * (returns 0). COALESCE_EALREADY: the cb runs or ran. 1: keep waiting. */
static int waiter_timeout(coalesce_coalescer_t *c, coalesce_waiter_t *w,
                          bool waited_out) {
  shard_t *s = w->shard;
  uint64_t now = now_ns(c);
  coalesce_waiter_t *list = NULL;
  int rc = 1;
  pthread_mutex_lock(&s->mu);
  if (w->state != WAITER_WAITING) {
    rc = COALESCE_EALREADY;
  } else if (aged(c, w->flight, now)) {
    expire_locked(c, s, w->flight, &list);
    rc = COALESCE_EALREADY;
  } else if (waited_out) {
    waiter_unlink(c, w);
    w->state = WAITER_CANCELED;
    rc = 0;
  }
  pthread_mutex_unlock(&s->mu);
  deliver(list, COALESCE_EEXPIRED, NULL);
  return rc;
}

static struct timespec to_timespec(uint64_t ns) {
  return (struct timespec){.tv_sec = (time_t)(ns / COALESCE_NS_PER_SEC),
                           .tv_nsec = (long)(ns % COALESCE_NS_PER_SEC)};
}

/* Waits for d's cb until the real deadline, capped by the flight's age
 * limit. Returns the delivered error (d->value set) or ETIMEDOUT. Frees w. */
static int do_follow(coalesce_coalescer_t *c, do_call_t *d,
                     coalesce_waiter_t *w, uint64_t deadline, uint64_t age_left,
                     uint64_t h) {
  uint64_t age_deadline = coalesce__add_sat(real_now(), age_left);
  bool untimed = false, canceled = false;
  pthread_mutex_lock(&d->mu);
  while (!d->done) {
    if (untimed) {
      pthread_cond_wait(&d->cv, &d->mu);
      continue;
    }
    struct timespec ts =
        to_timespec(deadline < age_deadline ? deadline : age_deadline);
    if (pthread_cond_timedwait(&d->cv, &d->mu, &ts) != ETIMEDOUT || d->done)
      continue;
    bool waited_out = real_now() >= deadline;
    pthread_mutex_unlock(&d->mu); /* an expiry may call our cb right here */
    int t = waiter_timeout(c, w, waited_out);
    pthread_mutex_lock(&d->mu);
    if (t == 0) {
      canceled = true;
      break;
    }
    if (t == COALESCE_EALREADY)
      untimed = true;
    else
      age_deadline = UINT64_MAX; /* the injected clock says not aged yet */
  }
  pthread_mutex_unlock(&d->mu);
  coalesce_waiter_free(w);
  if (canceled) {
    count(c, h, ST_WAIT_TIMEOUTS);
    return COALESCE_ETIMEDOUT;
  }
  return d->err;
}

/* A follower told COALESCE_EUNSHARED joins once more: the key is now
 * hit-for-miss, so it goes SOLO and fetches for itself (DESIGN.md §1.6). */
int coalesce_do(coalesce_coalescer_t *c, const void *key, size_t keylen,
                coalesce_fetch_fn fetch, void *ud, uint64_t max_wait_ns,
                coalesce_value_t **out, int *role) {
  if (c == NULL || fetch == NULL || out == NULL || (key == NULL && keylen > 0))
    return COALESCE_EINVAL;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  *out = NULL;
  if (key == NULL)
    key = "";
  uint64_t deadline = coalesce__add_sat(
      real_now(), max_wait_ns != 0 ? max_wait_ns : c->opts.max_wait_ns);

  do_call_t d = {.done = false};
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0)
    return COALESCE_ENOMEM;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(&d.cv, &ca);
  pthread_condattr_destroy(&ca);
  if (rc != 0)
    return COALESCE_ENOMEM;
  pthread_mutex_init(&d.mu, NULL);

  for (int attempt = 0;; attempt++) {
    coalesce_flight_t *f = NULL;
    coalesce_waiter_t *w = NULL;
    uint64_t age_left = UINT64_MAX;
    d.done = false;
    d.value = NULL;
    rc = join_impl(c, key, keylen, do_call_done, &d, &f, &w, &age_left);
    if (rc < 0)
      break;
    if (role != NULL)
      *role = rc;
    if (rc != COALESCE_FOLLOWER) {
      coalesce_value_t *v = NULL;
      rc = fetch(ud, key, keylen, &v);
      if (rc > 0)
        rc = 0;
      coalesce_flight_complete(f, rc, v, 0);
      if (rc == 0)
        *out = v;
      else
        coalesce_value_release(v);
      break;
    }
    rc = do_follow(c, &d, w, deadline, age_left, coalesce__hash(key, keylen));
    if (rc == 0) {
      *out = d.value;
      break;
    }
    coalesce_value_release(d.value);
    if (rc != COALESCE_EUNSHARED || attempt > 0)
      break;
  }
  pthread_cond_destroy(&d.cv);
  pthread_mutex_destroy(&d.mu);
  return rc;
}

/* ------------------------------------------------------------------ stats */

size_t coalesce_coalescer_pending(coalesce_coalescer_t *c) {
  if (c == NULL)
    return 0;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  size_t n = 0;
  for (unsigned i = 0; i < c->nshards; i++)
    n += atomic_load_explicit(&c->shards[i].nflights, memory_order_relaxed);
  return n;
}

/* Whether a ranks before b: more waiters, then older, then by hash so the
 * order is total and the same on every call. */
static bool info_before(const coalesce_flight_info_t *a,
                        const coalesce_flight_info_t *b) {
  if (a->waiters != b->waiters)
    return a->waiters > b->waiters;
  if (a->age_ns != b->age_ns)
    return a->age_ns > b->age_ns;
  return a->key_hash < b->key_hash;
}

/* Inserts x into the sorted out[0..*n), keeping at most max entries. */
static void info_insert(coalesce_flight_info_t *out, size_t *n, size_t max,
                        const coalesce_flight_info_t *x) {
  size_t i = *n;
  if (i == max) {
    if (!info_before(x, &out[max - 1]))
      return;
    i = max - 1;
  } else {
    (*n)++;
  }
  for (; i > 0 && info_before(x, &out[i - 1]); i--)
    out[i] = out[i - 1];
  out[i] = *x;
}

/* The clock is read once, before any lock (it is user code). Only flights
 * in the table count: a detached one no longer holds its key. */
size_t coalesce_coalescer_top(coalesce_coalescer_t *c,
                              coalesce_flight_info_t *out, size_t max) {
  if (c == NULL || out == NULL || max == 0)
    return 0;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  uint64_t now = now_ns(c);
  size_t n = 0;
  for (unsigned i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    if (atomic_load_explicit(&s->nflights, memory_order_relaxed) == 0)
      continue; /* a racing insert is simply seen on the next poll */
    pthread_mutex_lock(&s->mu);
    for (size_t b = 0; b < s->nbuckets; b++)
      for (coalesce_flight_t *f = s->buckets[b]; f != NULL; f = f->chain) {
        coalesce_flight_info_t x = {
            .key_hash = f->hash,
            .key_len = f->keylen,
            .waiters = f->nwaiters,
            .age_ns = now > f->started_ns ? now - f->started_ns : 0};
        info_insert(out, &n, max, &x);
      }
    pthread_mutex_unlock(&s->mu);
  }
  return n;
}

/* Fills only the coalescer's own fields (the caller zeroes the rest and may
 * call coalesce_stats_derive). */
void coalesce_coalescer_stats(coalesce_coalescer_t *c, coalesce_stats_t *s) {
  if (c == NULL || s == NULL)
    return;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  coalesce__counters_t *k = &c->counters;
  s->total_requests = coalesce__counter_sum(k, ST_TOTAL);
  s->coalesced_requests = coalesce__counter_sum(k, ST_COALESCED);
  s->api_calls_made = coalesce__counter_sum(k, ST_CALLS);
  s->pending_requests = coalesce_coalescer_pending(c);
  s->wait_timeouts = coalesce__counter_sum(k, ST_WAIT_TIMEOUTS);
  s->expired_flights = coalesce__counter_sum(k, ST_EXPIRED);
  s->unshared = coalesce__counter_sum(k, ST_UNSHARED);
  s->bypassed = coalesce__counter_sum(k, ST_BYPASSED);
  s->overloaded = coalesce__counter_sum(k, ST_OVERLOADED);
}

void coalesce_coalescer_stats_reset(coalesce_coalescer_t *c) {
  if (c == NULL)
    return;
  COALESCE__CHECK(c, COALESCE__MAGIC_COALESCER);
  coalesce__counters_reset(&c->counters);
}
