/*
 * micro.c — libcoalesce micro-benchmark against hand-rolled baselines.
 *
 * Measures, in one run of one program, what the library costs per operation
 * on its hot paths, side by side with what people write by hand:
 *
 *   cache_hit      coalesce_cache_get of a present key + value release
 *   loader_hit     coalesce_loader_get of a fresh key (the request-path hit)
 *   join_complete  completion API: 1 leader join + N follower joins with a
 *                  callback + one coalesce_flight_complete, per follower
 *   do_hot         blocking coalesce_do over a few hot keys whose fetch
 *                  returns a prebuilt value at once
 *
 * The baseline ("naive") is defined in this file and kept deliberately
 * plain: ONE global pthread mutex over a chained hash table (FNV-1a, fixed
 * bucket count) of key -> atomically refcounted value with an expiry time,
 * and a singleflight of the same shape (global mutex, a condvar per flight
 * for blocking callers, a malloc'd callback list for completion callers).
 *
 * Method: every case × thread count runs a fixed number of operations per
 * thread, --reps times, lib and naive alternating within each rep (which
 * goes first flips every rep) after one discarded warm-up of each. A rep is
 * timed with CLOCK_MONOTONIC from the first thread's start (after a start
 * barrier) to the last thread's end. ns/op is per thread: wall time divided
 * by the ops ONE thread did, so perfect 2-thread scaling shows the 1-thread
 * figure and contention shows as a larger one. Output is a markdown report
 * on stdout and, with --csv, one CSV row per case × threads × impl.
 *
 * Invariants: every fixture (caches, coalescer, loader, naive tables) is
 * built before timing and torn down after; nothing is evicted or expires
 * during a run (a miss where a hit is expected aborts the program), and
 * every flight is completed before the next rep starts.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "coalesce.h"

#ifndef BENCH_BUILD_TYPE
#define BENCH_BUILD_TYPE "unknown"
#endif

#define NKEYS 10000u
#define KEY_MAX 48
#define VALUE_LEN 1024u
#define HOT_KEYS 8u
#define JOIN_N 64u /* followers per flight in join_complete */
#define MAX_THREADS 2u
#define MAX_REPS 101u
#define TTL_NS (3600 * COALESCE_NS_PER_SEC) /* nothing expires in a run */
#define NAIVE_BUCKETS 16384u                /* a fixed table, as hand-rolled */
#define NSF_BUCKETS 256u

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * COALESCE_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "bench_micro: %s\n", what);
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (p == NULL)
    die("out of memory");
  return p;
}

/* xorshift64*: a key pick costs a few cycles in both implementations. */
static uint32_t pick(uint64_t *s, uint32_t n) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  uint64_t r = (*s * UINT64_C(2685821657736338717)) >> 32;
  return (uint32_t)((r * n) >> 32);
}

/* ------------------------------------------------------ naive baseline */

typedef struct nval {
  atomic_uint refs;
  size_t len;
  unsigned char data[];
} nval_t;

static nval_t *nval_new(const void *data, size_t len) {
  nval_t *v = xmalloc(sizeof(*v) + len);
  atomic_init(&v->refs, 1);
  v->len = len;
  memcpy(v->data, data, len);
  return v;
}

static nval_t *nval_ref(nval_t *v) {
  atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
  return v;
}

static void nval_release(nval_t *v) {
  if (v != NULL &&
      atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1)
    free(v);
}

static uint64_t fnv1a(const void *key, size_t len) {
  const unsigned char *p = key;
  uint64_t h = UINT64_C(14695981039346656037);
  for (size_t i = 0; i < len; i++)
    h = (h ^ p[i]) * UINT64_C(1099511628211);
  return h;
}

typedef struct nentry {
  struct nentry *next;
  nval_t *val;
  uint64_t expires;
  size_t keylen;
  unsigned char key[];
} nentry_t;

typedef struct ncache {
  pthread_mutex_t mu; /* guards every bucket and entry */
  nentry_t *buckets[NAIVE_BUCKETS];
} ncache_t;

static void ncache_init(ncache_t *c) {
  pthread_mutex_init(&c->mu, NULL);
  memset(c->buckets, 0, sizeof(c->buckets));
}

static void ncache_destroy(ncache_t *c) {
  for (size_t i = 0; i < NAIVE_BUCKETS; i++) {
    for (nentry_t *e = c->buckets[i], *next; e != NULL; e = next) {
      next = e->next;
      nval_release(e->val);
      free(e);
    }
  }
  pthread_mutex_destroy(&c->mu);
}

/* Takes over the caller's reference to v. */
static void ncache_put(ncache_t *c, const void *key, size_t len, nval_t *v,
                       uint64_t ttl) {
  uint64_t h = fnv1a(key, len), expires = now_ns() + ttl;
  nval_t *old = NULL;
  pthread_mutex_lock(&c->mu);
  nentry_t **b = &c->buckets[h & (NAIVE_BUCKETS - 1)], *e;
  for (e = *b; e != NULL; e = e->next)
    if (e->keylen == len && memcmp(e->key, key, len) == 0)
      break;
  if (e == NULL) {
    e = xmalloc(sizeof(*e) + len);
    e->keylen = len;
    memcpy(e->key, key, len);
    e->val = NULL;
    e->next = *b;
    *b = e;
  }
  old = e->val;
  e->val = v;
  e->expires = expires;
  pthread_mutex_unlock(&c->mu);
  nval_release(old);
}

/* A reference to the value, or NULL when absent or expired. */
static nval_t *ncache_get(ncache_t *c, const void *key, size_t len) {
  uint64_t h = fnv1a(key, len), now = now_ns();
  nval_t *v = NULL;
  pthread_mutex_lock(&c->mu);
  for (nentry_t *e = c->buckets[h & (NAIVE_BUCKETS - 1)]; e; e = e->next) {
    if (e->keylen == len && memcmp(e->key, key, len) == 0) {
      if (now < e->expires)
        v = nval_ref(e->val);
      break;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return v;
}

typedef void (*ndone_fn)(void *ud, nval_t *v);

typedef struct nwaiter {
  struct nwaiter *next;
  ndone_fn cb;
  void *ud;
} nwaiter_t;

/* Blocking followers sleep on cv and the last one out frees the flight;
 * completion followers are a callback list the completer walks. */
typedef struct nflight {
  struct nflight *next;
  pthread_cond_t cv;
  bool done;
  unsigned sleepers;
  nval_t *val; /* the flight's own reference once done */
  nwaiter_t *waiters;
  size_t keylen;
  unsigned char key[];
} nflight_t;

typedef struct nsf {
  pthread_mutex_t mu; /* guards the table and every flight's fields */
  nflight_t *buckets[NSF_BUCKETS];
} nsf_t;

static void nsf_init(nsf_t *g) {
  pthread_mutex_init(&g->mu, NULL);
  memset(g->buckets, 0, sizeof(g->buckets));
}

static nflight_t **nsf_slot(nsf_t *g, const void *key, size_t len) {
  nflight_t **p = &g->buckets[fnv1a(key, len) & (NSF_BUCKETS - 1)];
  while (*p != NULL &&
         ((*p)->keylen != len || memcmp((*p)->key, key, len) != 0))
    p = &(*p)->next;
  return p; /* *p is the flight, or NULL where a new one goes */
}

static nflight_t *nflight_new(const void *key, size_t len) {
  nflight_t *f = xmalloc(sizeof(*f) + len);
  pthread_cond_init(&f->cv, NULL);
  f->next = NULL;
  f->done = false;
  f->sleepers = 0;
  f->val = NULL;
  f->waiters = NULL;
  f->keylen = len;
  memcpy(f->key, key, len);
  return f;
}

static void nflight_free(nflight_t *f) {
  nval_release(f->val);
  pthread_cond_destroy(&f->cv);
  free(f);
}

static void nsf_unlink(nsf_t *g, nflight_t *f) {
  nflight_t **p = nsf_slot(g, f->key, f->keylen);
  if (*p == f)
    *p = f->next;
}

/* Go's singleflight.Do, hand-rolled: *out gets a reference. */
static int nsf_do(nsf_t *g, const void *key, size_t len,
                  nval_t *(*fetch)(void *), void *ud, nval_t **out) {
  pthread_mutex_lock(&g->mu);
  nflight_t **p = nsf_slot(g, key, len), *f = *p;
  if (f != NULL) {
    f->sleepers++;
    while (!f->done)
      pthread_cond_wait(&f->cv, &g->mu);
    *out = nval_ref(f->val);
    bool last = --f->sleepers == 0;
    pthread_mutex_unlock(&g->mu);
    if (last)
      nflight_free(f);
    return COALESCE_FOLLOWER;
  }
  f = nflight_new(key, len);
  *p = f;
  pthread_mutex_unlock(&g->mu);

  nval_t *v = fetch(ud);
  pthread_mutex_lock(&g->mu);
  nsf_unlink(g, f);
  f->val = nval_ref(v);
  f->done = true;
  bool alone = f->sleepers == 0;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&g->mu);
  if (alone)
    nflight_free(f);
  *out = v;
  return COALESCE_LEADER;
}

/* Completion form: LEADER with *flight set, or FOLLOWER with cb queued. */
static int nsf_join(nsf_t *g, const void *key, size_t len, ndone_fn cb,
                    void *ud, nflight_t **flight) {
  pthread_mutex_lock(&g->mu);
  nflight_t **p = nsf_slot(g, key, len), *f = *p;
  if (f != NULL) {
    nwaiter_t *w = xmalloc(sizeof(*w));
    w->cb = cb;
    w->ud = ud;
    w->next = f->waiters;
    f->waiters = w;
    pthread_mutex_unlock(&g->mu);
    return COALESCE_FOLLOWER;
  }
  *p = f = nflight_new(key, len);
  pthread_mutex_unlock(&g->mu);
  *flight = f;
  return COALESCE_LEADER;
}

/* Each waiter's cb gets its own reference; the caller keeps its own. */
static void nsf_complete(nsf_t *g, nflight_t *f, nval_t *v) {
  pthread_mutex_lock(&g->mu);
  nsf_unlink(g, f);
  nwaiter_t *list = f->waiters;
  f->waiters = NULL;
  pthread_mutex_unlock(&g->mu);
  for (nwaiter_t *w = list, *next; w != NULL; w = next) {
    next = w->next;
    w->cb(w->ud, nval_ref(v));
    free(w);
  }
  nflight_free(f);
}

/* ----------------------------------------------------------- fixtures */

typedef struct bench {
  char keys[NKEYS][KEY_MAX];
  size_t keylens[NKEYS];
  coalesce_cache_t *cache;
  coalesce_coalescer_t *co;
  coalesce_loader_t *loader;
  coalesce_load_opts_t lopts;
  coalesce_value_t *prebuilt;
  ncache_t nc;
  nsf_t nsf;
  nval_t *nprebuilt;
} bench_t;

static int lib_fetch(void *ud, const void *key, size_t keylen,
                     coalesce_value_t **out) {
  (void)key, (void)keylen;
  *out = coalesce_value_ref(ud);
  return 0;
}

static void lib_loader_fetch(void *ud, const void *key, size_t keylen,
                             void *fetch_ctx, coalesce_value_t *stale,
                             coalesce_fetch_result_t *res) {
  (void)key, (void)keylen, (void)fetch_ctx, (void)stale;
  memset(res, 0, sizeof(*res));
  res->value = ud; /* borrowed: the loader takes its own references */
}

static nval_t *naive_fetch(void *ud) {
  return nval_ref(((bench_t *)ud)->nprebuilt);
}

static void bench_init(bench_t *b) {
  unsigned char body[VALUE_LEN];
  for (size_t i = 0; i < VALUE_LEN; i++)
    body[i] = (unsigned char)('a' + i % 26);
  for (unsigned i = 0; i < NKEYS; i++) /* 39 bytes, a typical API path */
    b->keylens[i] = (size_t)snprintf(b->keys[i], KEY_MAX,
                                     "GET /v1/users/%06u/orders?page=1&n=20",
                                     i * 7919u % 1000000u);

  coalesce_cache_opts_t copts;
  coalesce_cache_opts_init(&copts);
  coalesce_coalescer_opts_t oopts;
  coalesce_coalescer_opts_init(&oopts);
  if (coalesce_cache_new(&copts, &b->cache) != 0 ||
      coalesce_coalescer_new(&oopts, &b->co) != 0)
    die("cannot create the cache or coalescer");
  b->prebuilt = coalesce_value_new(body, VALUE_LEN);
  coalesce_loader_opts_t lo = {.cache = b->cache,
                               .coalescer = b->co,
                               .fetch = lib_loader_fetch,
                               .ud = b->prebuilt};
  if (b->prebuilt == NULL || coalesce_loader_new(&lo, &b->loader) != 0)
    die("cannot create the loader");
  coalesce_load_opts_init(&b->lopts);
  b->lopts.ttl = (coalesce_ttl_t){.fresh_ns = TTL_NS};

  ncache_init(&b->nc);
  nsf_init(&b->nsf);
  b->nprebuilt = nval_new(body, VALUE_LEN);

  coalesce_ttl_t ttl = {.fresh_ns = TTL_NS};
  for (unsigned i = 0; i < NKEYS; i++) { /* one 1 KiB value per key */
    body[0] = (unsigned char)i;
    coalesce_value_t *v = coalesce_value_new(body, VALUE_LEN);
    if (v == NULL ||
        coalesce_cache_put(b->cache, b->keys[i], b->keylens[i], v, &ttl) != 0)
      die("cache put failed");
    coalesce_value_release(v);
    ncache_put(&b->nc, b->keys[i], b->keylens[i], nval_new(body, VALUE_LEN),
               TTL_NS);
  }
  coalesce_stats_t s;
  coalesce_cache_stats(b->cache, &s);
  if (s.cache_entries != NKEYS)
    die("the cache evicted while filling: raise max_bytes");
}

static void bench_destroy(bench_t *b) {
  coalesce_loader_free(b->loader);
  coalesce_coalescer_free(b->co);
  coalesce_cache_free(b->cache);
  coalesce_value_release(b->prebuilt);
  ncache_destroy(&b->nc);
  pthread_mutex_destroy(&b->nsf.mu);
  nval_release(b->nprebuilt);
}

/* -------------------------------------------------------- case bodies */

typedef struct worker worker_t;
typedef void (*body_fn)(worker_t *w);

struct worker {
  bench_t *b;
  body_fn body;
  pthread_barrier_t *start;
  uint64_t ops; /* this thread's operations */
  uint64_t rng;
  uint64_t followers; /* do_hot: calls that joined another's flight */
  uint64_t t0, t1;
};

static void lib_cache_hit(worker_t *w) {
  bench_t *b = w->b;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint32_t k = pick(&w->rng, NKEYS);
    coalesce_lookup_t lk;
    if (coalesce_cache_get(b->cache, b->keys[k], b->keylens[k], &lk) != 0)
      die("lib cache: unexpected miss");
    coalesce_value_release(lk.value);
  }
}

static void naive_cache_hit(worker_t *w) {
  bench_t *b = w->b;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint32_t k = pick(&w->rng, NKEYS);
    nval_t *v = ncache_get(&b->nc, b->keys[k], b->keylens[k]);
    if (v == NULL)
      die("naive cache: unexpected miss");
    nval_release(v);
  }
}

static void lib_loader_hit(worker_t *w) {
  bench_t *b = w->b;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint32_t k = pick(&w->rng, NKEYS);
    coalesce_load_result_t r;
    if (coalesce_loader_get(b->loader, b->keys[k], b->keylens[k], &b->lopts,
                            &r) != 0 ||
        r.source != COALESCE_SRC_HIT)
      die("lib loader: not a hit");
    coalesce_value_release(r.value);
  }
}

/* The hand-rolled get-or-load: cache, else singleflight + store. */
static nval_t *naive_load(bench_t *b, const void *key, size_t len, bool *hit) {
  nval_t *v = ncache_get(&b->nc, key, len);
  *hit = v != NULL;
  if (v == NULL &&
      nsf_do(&b->nsf, key, len, naive_fetch, b, &v) == COALESCE_LEADER)
    ncache_put(&b->nc, key, len, nval_ref(v), TTL_NS);
  return v;
}

static void naive_loader_hit(worker_t *w) {
  bench_t *b = w->b;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint32_t k = pick(&w->rng, NKEYS);
    bool hit;
    nval_t *v = naive_load(b, b->keys[k], b->keylens[k], &hit);
    if (!hit)
      die("naive loader: not a hit");
    nval_release(v);
  }
}

static void lib_join_cb(void *ud, int err, coalesce_value_t *v) {
  if (err != 0)
    die("lib join: error delivered");
  (*(uint64_t *)ud)++;
  coalesce_value_release(v);
}

/* ops = followers; every JOIN_N of them share one flight. */
static void lib_join_complete(worker_t *w) {
  bench_t *b = w->b;
  uint64_t delivered = 0;
  for (uint64_t r = 0; r < w->ops / JOIN_N; r++) {
    uint32_t k = (uint32_t)(r % HOT_KEYS);
    coalesce_flight_t *f = NULL, *unused;
    if (coalesce_join(b->co, b->keys[k], b->keylens[k], NULL, NULL, &f, NULL) !=
        COALESCE_LEADER)
      die("lib join: expected to lead");
    for (unsigned j = 0; j < JOIN_N; j++)
      if (coalesce_join(b->co, b->keys[k], b->keylens[k], lib_join_cb,
                        &delivered, &unused, NULL) != COALESCE_FOLLOWER)
        die("lib join: expected to follow");
    coalesce_flight_complete(f, 0, b->prebuilt, 0);
  }
  if (delivered != w->ops / JOIN_N * JOIN_N)
    die("lib join: a waiter was not called");
}

static void naive_join_cb(void *ud, nval_t *v) {
  (*(uint64_t *)ud)++;
  nval_release(v);
}

static void naive_join_complete(worker_t *w) {
  bench_t *b = w->b;
  uint64_t delivered = 0;
  for (uint64_t r = 0; r < w->ops / JOIN_N; r++) {
    uint32_t k = (uint32_t)(r % HOT_KEYS);
    nflight_t *f = NULL, *unused;
    if (nsf_join(&b->nsf, b->keys[k], b->keylens[k], NULL, NULL, &f) !=
        COALESCE_LEADER)
      die("naive join: expected to lead");
    for (unsigned j = 0; j < JOIN_N; j++)
      if (nsf_join(&b->nsf, b->keys[k], b->keylens[k], naive_join_cb,
                   &delivered, &unused) != COALESCE_FOLLOWER)
        die("naive join: expected to follow");
    nsf_complete(&b->nsf, f, b->nprebuilt);
  }
  if (delivered != w->ops / JOIN_N * JOIN_N)
    die("naive join: a waiter was not called");
}

static void lib_do_hot(worker_t *w) {
  bench_t *b = w->b;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint32_t k = pick(&w->rng, HOT_KEYS);
    coalesce_value_t *v;
    int role;
    if (coalesce_do(b->co, b->keys[k], b->keylens[k], lib_fetch, b->prebuilt, 0,
                    &v, &role) != 0)
      die("lib do: failed");
    w->followers += role == COALESCE_FOLLOWER;
    coalesce_value_release(v);
  }
}

static void naive_do_hot(worker_t *w) {
  bench_t *b = w->b;
  for (uint64_t i = 0; i < w->ops; i++) {
    uint32_t k = pick(&w->rng, HOT_KEYS);
    nval_t *v;
    int role = nsf_do(&b->nsf, b->keys[k], b->keylens[k], naive_fetch, b, &v);
    w->followers += role == COALESCE_FOLLOWER;
    nval_release(v);
  }
}

/* ------------------------------------------------------------ harness */

typedef struct bcase {
  const char *name;
  const char *what; /* one line for the report's legend */
  body_fn lib, naive;
  unsigned threads;
  uint64_t ops; /* per thread, before --scale */
} bcase_t;

static const bcase_t CASES[] = {
    {"cache_hit",
     "coalesce_cache_get + release, random key of 10,000 "
     "(39 B keys, 1 KiB values)",
     lib_cache_hit, naive_cache_hit, 1, 400000},
    {"cache_hit", NULL, lib_cache_hit, naive_cache_hit, 2, 400000},
    {"loader_hit",
     "coalesce_loader_get of a fresh key (full request-path "
     "hit); naive: its get-or-load",
     lib_loader_hit, naive_loader_hit, 1, 300000},
    {"loader_hit", NULL, lib_loader_hit, naive_loader_hit, 2, 300000},
    {"join_complete",
     "per follower: 64 coalesce_join with a callback on a "
     "led flight, then one coalesce_flight_complete "
     "(leader join + complete amortised over the 64)",
     lib_join_complete, naive_join_complete, 1, 256 * 1024},
    {"do_hot",
     "coalesce_do over 8 hot keys, fetch returns a prebuilt value "
     "at once; naive: global mutex + condvar per flight",
     lib_do_hot, naive_do_hot, 1, 200000},
    {"do_hot", NULL, lib_do_hot, naive_do_hot, 2, 200000},
};
#define NCASES (sizeof(CASES) / sizeof(CASES[0]))

/* Ops per thread after scaling: a whole number of join_complete flights. */
static uint64_t case_ops(const bcase_t *bc, double scale) {
  uint64_t ops = (uint64_t)((double)bc->ops * scale) / JOIN_N * JOIN_N;
  return ops < JOIN_N ? JOIN_N : ops;
}

typedef struct sample {
  double ns_per_op; /* per thread: wall / ops of one thread */
  double mops;      /* all threads together, millions per second */
  double follower_pct;
} sample_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  pthread_barrier_wait(w->start);
  w->t0 = now_ns();
  w->body(w);
  w->t1 = now_ns();
  return NULL;
}

static sample_t run_once(bench_t *b, body_fn body, unsigned threads,
                         uint64_t ops, unsigned seed) {
  pthread_t th[MAX_THREADS];
  worker_t w[MAX_THREADS];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, threads);
  for (unsigned i = 0; i < threads; i++) {
    w[i] = (worker_t){.b = b,
                      .body = body,
                      .start = &start,
                      .ops = ops,
                      .rng = UINT64_C(0x9e3779b97f4a7c15) * (seed * 4 + i + 1)};
    if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0)
      die("pthread_create failed");
  }
  uint64_t t0 = UINT64_MAX, t1 = 0, followers = 0;
  for (unsigned i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    t0 = w[i].t0 < t0 ? w[i].t0 : t0;
    t1 = w[i].t1 > t1 ? w[i].t1 : t1;
    followers += w[i].followers;
  }
  pthread_barrier_destroy(&start);
  double wall = (double)(t1 - t0);
  return (sample_t){.ns_per_op = wall / (double)ops,
                    .mops = (double)ops * threads * 1e3 / wall,
                    .follower_pct =
                        100.0 * (double)followers / ((double)ops * threads)};
}

typedef struct summary {
  double median, min, max, mops, follower_pct;
} summary_t;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static summary_t summarise(const sample_t *s, unsigned n) {
  double ns[MAX_REPS], mops[MAX_REPS], fol = 0;
  for (unsigned i = 0; i < n; i++) {
    ns[i] = s[i].ns_per_op;
    mops[i] = s[i].mops;
    fol += s[i].follower_pct;
  }
  qsort(ns, n, sizeof(double), cmp_double);
  qsort(mops, n, sizeof(double), cmp_double);
  double med = n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2;
  double mm = n % 2 ? mops[n / 2] : (mops[n / 2 - 1] + mops[n / 2]) / 2;
  return (summary_t){med, ns[0], ns[n - 1], mm, fol / n};
}

/* ------------------------------------------------------------- report */

static void cpu_model(char *out, size_t n) {
  snprintf(out, n, "unknown CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f == NULL)
    return;
  char line[256];
  while (fgets(line, sizeof(line), f) != NULL) {
    char *colon = strchr(line, ':');
    if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
      colon += 1 + (colon[1] == ' ');
      colon[strcspn(colon, "\n")] = '\0';
      snprintf(out, n, "%s", colon);
      break;
    }
  }
  fclose(f);
}

static void load_average(char *out, size_t n) {
  snprintf(out, n, "?");
  FILE *f = fopen("/proc/loadavg", "r");
  if (f == NULL)
    return;
  if (fgets(out, (int)n, f) != NULL) {
    char *sp = strchr(out, ' '); /* keep the 1-minute figure */
    if (sp != NULL)
      *sp = '\0';
  }
  fclose(f);
}

static const char *compiler(void) {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown compiler";
#endif
}

static void usage(FILE *to) {
  fprintf(to, "usage: bench_micro [--reps N] [--scale F] [--csv FILE]\n"
              "  --reps N    timed repetitions per case (default 7, >= 5 "
              "for publishing)\n"
              "  --scale F   multiply every op count by F (default 1)\n"
              "  --csv FILE  also write one CSV row per case/threads/impl\n");
}

int main(int argc, char **argv) {
  unsigned reps = 7;
  double scale = 1.0;
  const char *csv_path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = (unsigned)strtoul(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--scale") == 0 && i + 1 < argc) {
      scale = strtod(argv[++i], NULL);
    } else if (strcmp(argv[i], "--csv") == 0 && i + 1 < argc) {
      csv_path = argv[++i];
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (reps < 1 || reps > MAX_REPS || !(scale > 0))
    die("--reps must be 1..101 and --scale positive");
  if (reps < 5)
    fprintf(stderr, "bench_micro: fewer than 5 reps: a smoke run only\n");

  char cpu[160], load[32];
  cpu_model(cpu, sizeof(cpu));
  load_average(load, sizeof(load));
  struct utsname un;
  if (uname(&un) != 0)
    snprintf(un.release, sizeof(un.release), "?");
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

  static bench_t b; /* ~0.5 MB of keys: not on the stack */
  bench_init(&b);

  summary_t res[NCASES][2];
  for (size_t c = 0; c < NCASES; c++) {
    const bcase_t *bc = &CASES[c];
    uint64_t ops = case_ops(bc, scale);
    fprintf(stderr, "bench_micro: %-13s %uT x %u reps ...\n", bc->name,
            bc->threads, reps);
    run_once(&b, bc->lib, bc->threads, ops, 999); /* warm-up, discarded */
    run_once(&b, bc->naive, bc->threads, ops, 999);
    sample_t lib[MAX_REPS], naive[MAX_REPS];
    for (unsigned r = 0; r < reps; r++) {
      if (r % 2 == 0) {
        lib[r] = run_once(&b, bc->lib, bc->threads, ops, r);
        naive[r] = run_once(&b, bc->naive, bc->threads, ops, r);
      } else {
        naive[r] = run_once(&b, bc->naive, bc->threads, ops, r);
        lib[r] = run_once(&b, bc->lib, bc->threads, ops, r);
      }
    }
    res[c][0] = summarise(lib, reps);
    res[c][1] = summarise(naive, reps);
    if (coalesce_coalescer_pending(b.co) != 0)
      die("a flight outlived its rep");
  }

  printf("Machine: %s, nproc %ld, Linux %s; compiler %s; build %s; "
         "1-min load average at start %s.\n\n",
         cpu, ncpu, un.release, compiler(), BENCH_BUILD_TYPE, load);
  printf("Note: the benchmark and everything else on this machine share "
         "these %ld cores, so 2-thread figures include time the threads "
         "spent descheduled; compare within a run, not across runs.\n\n",
         ncpu);
  printf("%u timed reps per row (plus one discarded warm-up); ns per "
         "operation per thread, median [min-max]; ratio = libcoalesce "
         "median / naive median (below 1: the library is faster).\n\n",
         reps);
  printf("| case | threads | libcoalesce ns/op | naive ns/op | "
         "coalesce/naive | notes |\n|---|---:|---:|---:|---:|---|\n");
  for (size_t c = 0; c < NCASES; c++) {
    const summary_t *l = &res[c][0], *n = &res[c][1];
    char note[96] = "";
    if (CASES[c].lib == lib_do_hot)
      snprintf(note, sizeof(note), "followers: lib %.2f%%, naive %.2f%%",
               l->follower_pct, n->follower_pct);
    printf("| %s | %u | %.1f [%.1f-%.1f] | %.1f [%.1f-%.1f] | %.2f | %s |\n",
           CASES[c].name, CASES[c].threads, l->median, l->min, l->max,
           n->median, n->min, n->max, l->median / n->median, note);
  }
  printf("\nCases:\n\n");
  for (size_t c = 0; c < NCASES; c++)
    if (CASES[c].what != NULL)
      printf("- `%s`: %s.\n", CASES[c].name, CASES[c].what);
  printf("- naive: one global pthread mutex over a chained hash table "
         "(FNV-1a, %u fixed buckets) of key -> atomically refcounted value "
         "with an expiry; its singleflight is the same table shape with a "
         "condvar per flight (blocking) or a malloc'd callback list "
         "(completion).\n",
         NAIVE_BUCKETS);

  if (csv_path != NULL) {
    FILE *f = fopen(csv_path, "w");
    if (f == NULL)
      die("cannot write the CSV file");
    fprintf(f, "case,threads,impl,ops_per_thread,reps,median_ns_per_op,"
               "min_ns_per_op,max_ns_per_op,median_mops_total,"
               "follower_pct,ratio_vs_naive\n");
    for (size_t c = 0; c < NCASES; c++) {
      uint64_t ops = case_ops(&CASES[c], scale);
      for (int impl = 0; impl < 2; impl++) {
        const summary_t *s = &res[c][impl];
        fprintf(f, "%s,%u,%s,%" PRIu64 ",%u,%.1f,%.1f,%.1f,%.3f,%.2f,",
                CASES[c].name, CASES[c].threads,
                impl == 0 ? "libcoalesce" : "naive", ops, reps, s->median,
                s->min, s->max, s->mops, s->follower_pct);
        if (impl == 0)
          fprintf(f, "%.3f", s->median / res[c][1].median);
        fputc('\n', f);
      }
    }
    if (fclose(f) != 0)
      die("cannot write the CSV file");
  }
  bench_destroy(&b);
  return 0;
}
