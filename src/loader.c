/*
 * loader.c — the request path of DESIGN.md §1 without HTTP:
 *
 *   cache FRESH -> HIT;  STALE -> answer now + at most one background refresh
 *   miss / STALE_IF_ERROR -> coalescer:
 *       follower: parks (a coalescer waiter) until the flight ends
 *       leader:   re-checks the cache, asks the breaker, starts the fetch
 *   fetch done -> breaker outcome (once) -> cache put -> flight complete
 *
 * Invariants kept here:
 *  - the cache holds a flight's result before the flight leaves the
 *    in-flight table (coalesce_fetch_done stores, then completes), so a load
 *    arriving in between is a hit, never a second fetch;
 *  - one breaker outcome per fetch, never per waiter;
 *  - every load gets exactly one answer: now (return 0), or one cb call;
 *  - an error reaching a waiter falls back to a stale-if-error copy when the
 *    cache still has one.
 * Ownership: a pending load (coalesce_load_t) belongs to the loader until
 * its cb unless the caller asked for the handle (then the caller frees it,
 * see coalesce_load_free). A fetch token belongs to whoever runs the fetch
 * until coalesce_fetch_done, which frees it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

enum {
  L_TOTAL,
  L_HIT,
  L_STALE,
  L_SIE,
  L_COALESCED,
  L_MADE,
  L_REFRESH,
  L_ERRORS,
  L_TIMEOUTS,
  L_UNSHARED,
  L_BYPASS,
  L_BREAKER_REJ,
  L_OVERLOADED,
};

struct coalesce_loader {
  uint32_t magic;
  coalesce_cache_t *cache;
  coalesce_coalescer_t *co;
  coalesce_fetch_start_fn start;
  coalesce_fetch_sync_fn fetch;
  void *ud;
  const coalesce_clock_t *clock;
  coalesce__counters_t *counters;
};

struct coalesce_load {
  uint32_t magic;
  coalesce_loader_t *loader;
  coalesce_waiter_t *waiter; /* NULL for a solo load */
  coalesce_load_cb cb;
  void *ud;
  coalesce_source_t source;
  bool caller_owns; /* the caller asked for the handle */
  uint64_t min_stored; /* the load's limits, for the stale fallback */
  uint64_t max_stale;  /* max-stale, tightened by stale-if-error */
  uint64_t hash;
  size_t keylen;
  unsigned char key[];
};

struct coalesce_fetch {
  uint32_t magic;
  coalesce_loader_t *loader;
  coalesce_flight_t *flight; /* NULL for a solo load's fetch */
  coalesce_load_t *solo;     /* the one load a solo fetch answers */
  coalesce_breaker_t *breaker; /* set only when the breaker allowed it */
  coalesce_value_t *stale;
  coalesce_ttl_t ttl;
  unsigned load_flags;
  uint64_t hash;
  size_t keylen;
  unsigned char key[];
};

static const char *const source_names[] = {
    "HIT", "STALE", "MISS", "COALESCED", "STALE-IF-ERROR", "BYPASS"};

const char *coalesce_source_name(coalesce_source_t src) {
  return (unsigned)src < sizeof source_names / sizeof *source_names
             ? source_names[src]
             : "UNKNOWN";
}

void coalesce_load_opts_init(coalesce_load_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->ttl.fresh_ns = 5 * COALESCE_NS_PER_SEC;
  o->ttl.swr_ns = 30 * COALESCE_NS_PER_SEC;
  o->ttl.sie_ns = 300 * COALESCE_NS_PER_SEC;
}

int coalesce_loader_new(const coalesce_loader_opts_t *opts,
                        coalesce_loader_t **out) {
  if (opts == NULL || out == NULL || opts->cache == NULL ||
      opts->coalescer == NULL || (opts->start == NULL && opts->fetch == NULL))
    return COALESCE_EINVAL;
  coalesce_loader_t *l = calloc(1, sizeof *l);
  if (l == NULL)
    return COALESCE_ENOMEM;
  l->counters = aligned_alloc(COALESCE__CACHELINE, sizeof *l->counters);
  if (l->counters == NULL) {
    free(l);
    return COALESCE_ENOMEM;
  }
  memset(l->counters, 0, sizeof *l->counters);
  l->magic = COALESCE__MAGIC_LOADER;
  l->cache = opts->cache;
  l->co = opts->coalescer;
  l->start = opts->start;
  l->fetch = opts->fetch;
  l->ud = opts->ud;
  l->clock = opts->clock;
  *out = l;
  return 0;
}

void coalesce_loader_free(coalesce_loader_t *l) {
  if (l == NULL)
    return;
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  l->magic = 0;
  free(l->counters);
  free(l);
}

static void count(coalesce_loader_t *l, uint64_t hash, unsigned id) {
  coalesce__count(l->counters, hash, id, 1);
}

static void result_set(coalesce_load_result_t *r, int err,
                       coalesce_value_t *v, coalesce_source_t src,
                       uint64_t age) {
  r->err = err;
  r->value = v;
  r->source = src;
  r->age_ns = age;
  r->fallback_err = 0;
}

/* What a load may do with a cached entry: its window, demoted to
 * VALIDATE_ONLY when the load's limits forbid serving it (stored before an
 * invalidation, or staler than the request's max-stale). */
static coalesce_freshness_t servable(const coalesce_lookup_t *lk,
                                     uint64_t min_stored, uint64_t max_stale,
                                     uint64_t min_fresh) {
  if (min_stored != 0 && lk->stored_at_ns < min_stored)
    return COALESCE_VALIDATE_ONLY;
  if (lk->state == COALESCE_FRESH && min_fresh != 0) {
    uint64_t resident = lk->age_ns - lk->ttl.age_ns;
    if (lk->ttl.fresh_ns - resident < min_fresh)
      return COALESCE_VALIDATE_ONLY; /* not fresh enough for this client */
  }
  if (lk->state == COALESCE_STALE || lk->state == COALESCE_STALE_IF_ERROR) {
    uint64_t resident = lk->age_ns - lk->ttl.age_ns;
    uint64_t staleness =
        resident > lk->ttl.fresh_ns ? resident - lk->ttl.fresh_ns : 0;
    if (max_stale != 0 && staleness > max_stale)
      return COALESCE_VALIDATE_ONLY;
  }
  return lk->state;
}

/* Replaces an error answer with the cached copy when one may still be
 * served (the stale-if-error rule). Returns true if it did. */
static bool stale_fallback(coalesce_loader_t *l, const void *key,
                           size_t keylen, uint64_t hash, uint64_t min_stored,
                           uint64_t max_stale, coalesce_load_result_t *r) {
  coalesce_lookup_t lk;
  if (coalesce_cache_get(l->cache, key, keylen, &lk) != 0)
    return false;
  if (servable(&lk, min_stored, max_stale, 0) == COALESCE_VALIDATE_ONLY) {
    coalesce_value_release(lk.value);
    return false;
  }
  int replaced = r->err;
  coalesce_value_release(r->value);
  result_set(r, 0, lk.value, COALESCE_SRC_STALE_IF_ERROR, lk.age_ns);
  r->fallback_err = replaced;
  count(l, hash, L_SIE);
  return true;
}

static coalesce_load_t *load_new(coalesce_loader_t *l, const void *key,
                                 size_t keylen, uint64_t hash,
                                 coalesce_load_cb cb, void *ud, bool owned) {
  coalesce_load_t *ld = malloc(sizeof *ld + keylen);
  if (ld == NULL)
    return NULL;
  ld->magic = COALESCE__MAGIC_LOAD;
  ld->loader = l;
  ld->waiter = NULL;
  ld->cb = cb;
  ld->ud = ud;
  ld->source = COALESCE_SRC_MISS;
  ld->caller_owns = owned;
  ld->min_stored = 0;
  ld->max_stale = 0;
  ld->hash = hash;
  ld->keylen = keylen;
  if (keylen > 0)
    memcpy(ld->key, key, keylen);
  return ld;
}

coalesce_source_t coalesce_load_source(const coalesce_load_t *ld) {
  COALESCE__CHECK(ld, COALESCE__MAGIC_LOAD);
  return ld->source;
}

void coalesce_load_free(coalesce_load_t *ld) {
  if (ld == NULL)
    return;
  COALESCE__CHECK(ld, COALESCE__MAGIC_LOAD);
  coalesce_waiter_free(ld->waiter);
  ld->magic = 0;
  free(ld);
}

/* The coalescer's callback for a parked load: turns a flight outcome into
 * a load result, with the stale-if-error fallback, and hands it over. */
static void load_deliver(void *ud, int err, coalesce_value_t *value) {
  coalesce_load_t *ld = ud;
  COALESCE__CHECK(ld, COALESCE__MAGIC_LOAD);
  coalesce_loader_t *l = ld->loader;
  coalesce_load_result_t r;
  result_set(&r, err, value, ld->source, 0);
  if (err == COALESCE_EUNSHARED) {
    count(l, ld->hash, L_UNSHARED);
  } else if (err < 0 && !stale_fallback(l, ld->key, ld->keylen, ld->hash,
                                         ld->min_stored, ld->max_stale, &r)) {
    count(l, ld->hash, L_ERRORS);
  }
  coalesce_load_cb cb = ld->cb;
  void *cb_ud = ld->ud;
  bool owned = ld->caller_owns;
  cb(cb_ud, &r);
  if (!owned)
    coalesce_load_free(ld);
}

static coalesce_fetch_t *fetch_new(coalesce_loader_t *l, const void *key,
                                   size_t keylen, uint64_t hash,
                                   const coalesce_load_opts_t *o,
                                   coalesce_value_t *stale) {
  coalesce_fetch_t *f = malloc(sizeof *f + keylen);
  if (f == NULL)
    return NULL;
  f->magic = COALESCE__MAGIC_FETCH;
  f->loader = l;
  f->flight = NULL;
  f->solo = NULL;
  f->breaker = NULL;
  f->stale = coalesce_value_ref(stale);
  f->ttl = o->ttl;
  f->load_flags = o->flags;
  f->hash = hash;
  f->keylen = keylen;
  if (keylen > 0)
    memcpy(f->key, key, keylen);
  return f;
}

/* --- running a fetch: the start callback, or the sync one on a thread --- */

typedef struct sync_job {
  coalesce_loader_t *loader;
  coalesce_fetch_t *fetch;
  void *ctx;
} sync_job_t;

static void run_sync(coalesce_loader_t *l, coalesce_fetch_t *f, void *ctx) {
  coalesce_fetch_result_t res;
  memset(&res, 0, sizeof res);
  l->fetch(l->ud, f->key, f->keylen, ctx, f->stale, &res);
  coalesce_fetch_done(f, &res);
  coalesce_value_release(res.value);
}

static void *sync_thread(void *arg) {
  sync_job_t *job = arg;
  run_sync(job->loader, job->fetch, job->ctx);
  free(job);
  return NULL;
}

/* A fetch runs inline (blocking leader), through the start callback
 * (completion-based), or — a background refresh with only a blocking fetch
 * function — on a short-lived detached thread, so the stale hit that
 * triggered it is answered at once. */
static void run_fetch(coalesce_loader_t *l, coalesce_fetch_t *f, void *ctx,
                      bool inline_sync, bool background) {
  if (inline_sync && !background) {
    run_sync(l, f, ctx);
    return;
  }
  if (l->start != NULL) {
    l->start(l->ud, f->key, f->keylen, ctx, f->stale, f);
    return;
  }
  sync_job_t *job = malloc(sizeof *job);
  pthread_t tid;
  pthread_attr_t attr;
  bool started = false;
  if (job != NULL && pthread_attr_init(&attr) == 0) {
    *job = (sync_job_t){l, f, NULL}; /* ctx is only valid during the load */
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    started = pthread_create(&tid, &attr, sync_thread, job) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!started) {
    free(job);
    coalesce_fetch_result_t res = {.err = COALESCE_ENOMEM};
    coalesce_fetch_done(f, &res);
  }
}

/* At most one background refresh per key: only the leader of a new flight
 * refreshes; a flight already running means one is on its way. */
static void maybe_refresh(coalesce_loader_t *l, const void *key, size_t keylen,
                          uint64_t hash, const coalesce_load_opts_t *o,
                          coalesce_value_t *stale, bool inline_sync) {
  coalesce_flight_t *flight = NULL;
  int rc = coalesce_join(l->co, key, keylen, NULL, NULL, &flight, NULL);
  if (rc != COALESCE_LEADER && rc != COALESCE_SOLO)
    return;
  if (o->breaker != NULL && coalesce_breaker_allow(o->breaker) != 0) {
    count(l, hash, L_BREAKER_REJ);
    coalesce_flight_complete(flight, COALESCE_ECIRCUIT_OPEN, NULL, 0);
    return;
  }
  coalesce_fetch_t *f = fetch_new(l, key, keylen, hash, o, stale);
  if (f == NULL) {
    if (o->breaker != NULL)
      coalesce_breaker_cancel(o->breaker); /* give the slot back */
    coalesce_flight_complete(flight, COALESCE_ENOMEM, NULL, 0);
    return;
  }
  f->flight = flight;
  f->breaker = o->breaker;
  count(l, hash, L_MADE);
  count(l, hash, L_REFRESH);
  run_fetch(l, f, o->fetch_ctx, inline_sync, true);
}

/* Answers `now` for a leader that will not fetch (breaker open, no memory):
 * stale-if-error copy if there is one, else the error. */
/* How stale a stale-if-error fallback may be: the tighter of the load's
 * max-stale and its own stale-if-error (0 = no limit). */
static uint64_t fallback_limit(uint64_t max_stale, uint64_t on_error) {
  if (max_stale == UINT64_MAX)
    max_stale = 0;
  if (max_stale == 0)
    return on_error;
  if (on_error == 0)
    return max_stale;
  return on_error < max_stale ? on_error : max_stale;
}

static int answer_error(coalesce_loader_t *l, const void *key, size_t keylen,
                        uint64_t hash, const coalesce_load_opts_t *o, int err,
                        coalesce_load_result_t *now) {
  result_set(now, err, NULL, COALESCE_SRC_MISS, 0);
  if (!stale_fallback(l, key, keylen, hash, o->min_stored_ns,
                      fallback_limit(o->max_stale_ns, o->max_stale_on_error_ns),
                      now))
    count(l, hash, L_ERRORS);
  return 0;
}

static int load_impl(coalesce_loader_t *l, const void *key, size_t keylen,
                     const coalesce_load_opts_t *opts, coalesce_load_cb cb,
                     void *ud, coalesce_load_result_t *now,
                     coalesce_load_t **pending, bool inline_sync) {
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  if (now == NULL || cb == NULL || (key == NULL && keylen > 0))
    return COALESCE_EINVAL;
  coalesce_load_opts_t defaults;
  if (opts == NULL) {
    coalesce_load_opts_init(&defaults);
    opts = &defaults;
  }
  if (pending != NULL)
    *pending = NULL;
  uint64_t hash = coalesce__hash(key, keylen);
  count(l, hash, L_TOTAL);

  coalesce_lookup_t lk = {0};
  bool have = false;
  uint64_t max_stale = opts->max_stale_ns == UINT64_MAX ? 0 : opts->max_stale_ns;
  if (!(opts->flags & COALESCE_LOAD_NO_CACHE_READ) &&
      coalesce_cache_get(l->cache, key, keylen, &lk) == 0) {
    lk.state =
        servable(&lk, opts->min_stored_ns, max_stale, opts->min_fresh_ns);
    if (lk.state == COALESCE_FRESH) {
      count(l, hash, L_HIT);
      result_set(now, 0, lk.value, COALESCE_SRC_HIT, lk.age_ns);
      return 0;
    }
    if (lk.state == COALESCE_STALE) {
      count(l, hash, L_STALE);
      result_set(now, 0, lk.value, COALESCE_SRC_STALE, lk.age_ns);
      if (!(opts->flags & COALESCE_LOAD_SOLO))
        maybe_refresh(l, key, keylen, hash, opts, lk.value, inline_sync);
      return 0;
    }
    /* stale-if-error or validate-only: fetch, with it as the validator
     * (and, if still servable, the fallback) */
    have = true;
  }

  coalesce_load_t *ld = load_new(l, key, keylen, hash, cb, ud, pending != NULL);
  uint64_t on_error = fallback_limit(max_stale, opts->max_stale_on_error_ns);
  if (ld != NULL) {
    ld->min_stored = opts->min_stored_ns;
    ld->max_stale = on_error;
  }
  if (ld == NULL) {
    coalesce_value_release(have ? lk.value : NULL);
    return answer_error(l, key, keylen, hash, opts, COALESCE_ENOMEM, now);
  }

  coalesce_flight_t *flight = NULL;
  int role;
  /* Set before joining: a follower's answer may arrive before join
   * returns. A leader's waiter is registered later, so it is re-labelled
   * below without a race. */
  ld->source = COALESCE_SRC_COALESCED;
  if (opts->flags & COALESCE_LOAD_SOLO) {
    role = COALESCE_SOLO;
  } else {
    role = coalesce_join(l->co, key, keylen, load_deliver, ld, &flight,
                         &ld->waiter);
  }
  if (role == COALESCE_FOLLOWER) {
    /* ld may already be delivered (and, if not caller-owned, freed) by the
     * flight's completer: touch it no more. */
    count(l, hash, L_COALESCED);
    coalesce_value_release(have ? lk.value : NULL);
    if (pending != NULL)
      *pending = ld;
    return COALESCE_PENDING;
  }
  if (role < 0) {
    if (role == COALESCE_EOVERLOADED)
      count(l, hash, L_OVERLOADED);
    coalesce_load_free(ld);
    coalesce_value_release(have ? lk.value : NULL);
    return answer_error(l, key, keylen, hash, opts, role, now);
  }

  /* Leader (or solo). A flight may have ended between our lookup and our
   * join: re-check so that result is a hit, not a second fetch. */
  if (role == COALESCE_LEADER &&
      !(opts->flags & COALESCE_LOAD_NO_CACHE_READ)) {
    coalesce_lookup_t again;
    if (coalesce_cache_get(l->cache, key, keylen, &again) == 0) {
      again.state = servable(&again, opts->min_stored_ns, max_stale,
                             opts->min_fresh_ns);
      if (again.state == COALESCE_FRESH || again.state == COALESCE_STALE) {
        coalesce_flight_complete(flight, 0, again.value, 0);
        coalesce_load_free(ld);
        coalesce_value_release(have ? lk.value : NULL);
        count(l, hash, again.state == COALESCE_FRESH ? L_HIT : L_STALE);
        result_set(now, 0, again.value,
                   again.state == COALESCE_FRESH ? COALESCE_SRC_HIT
                                                 : COALESCE_SRC_STALE,
                   again.age_ns);
        return 0;
      }
      coalesce_value_release(again.value);
    }
  }
  ld->source = COALESCE_SRC_MISS;
  if (role == COALESCE_SOLO) {
    ld->source = COALESCE_SRC_BYPASS;
    count(l, hash, L_BYPASS);
  }

  if (opts->breaker != NULL && coalesce_breaker_allow(opts->breaker) != 0) {
    count(l, hash, L_BREAKER_REJ);
    if (flight != NULL)
      coalesce_flight_complete(flight, COALESCE_ECIRCUIT_OPEN, NULL, 0);
    coalesce_load_free(ld);
    coalesce_value_release(have ? lk.value : NULL);
    return answer_error(l, key, keylen, hash, opts, COALESCE_ECIRCUIT_OPEN,
                        now);
  }

  coalesce_fetch_t *f =
      fetch_new(l, key, keylen, hash, opts, have ? lk.value : NULL);
  coalesce_value_release(have ? lk.value : NULL);
  int rc = f == NULL ? COALESCE_ENOMEM : 0;
  if (rc == 0 && flight != NULL)
    rc = coalesce_flight_add_waiter(flight, load_deliver, ld, &ld->waiter);
  if (rc != 0) {
    if (opts->breaker != NULL)
      coalesce_breaker_cancel(opts->breaker);
    if (f != NULL) {
      coalesce_value_release(f->stale);
      free(f);
    }
    if (flight != NULL)
      coalesce_flight_complete(flight, rc, NULL, 0);
    coalesce_load_free(ld);
    return answer_error(l, key, keylen, hash, opts, rc, now);
  }
  f->flight = flight;
  f->solo = flight == NULL ? ld : NULL;
  f->breaker = opts->breaker;
  count(l, hash, L_MADE);
  if (pending != NULL)
    *pending = ld;
  /* From here ld may be answered (and freed, if not caller-owned) at any
   * moment, even inside run_fetch. */
  run_fetch(l, f, opts->fetch_ctx, inline_sync, false);
  return COALESCE_PENDING;
}

int coalesce_loader_load(coalesce_loader_t *l, const void *key, size_t keylen,
                         const coalesce_load_opts_t *opts, coalesce_load_cb cb,
                         void *ud, coalesce_load_result_t *now,
                         coalesce_load_t **pending) {
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  if (l->start == NULL)
    return COALESCE_EINVAL;
  return load_impl(l, key, keylen, opts, cb, ud, now, pending, false);
}

void coalesce_fetch_done(coalesce_fetch_t *f,
                         const coalesce_fetch_result_t *res) {
  COALESCE__CHECK(f, COALESCE__MAGIC_FETCH);
  coalesce_loader_t *l = f->loader;
  int err = res->err;
  coalesce_value_t *value = res->value;
  unsigned flags = res->flags;

  if (f->breaker != NULL && (flags & COALESCE_RESULT_NO_CALL))
    coalesce_breaker_cancel(f->breaker);
  else if (f->breaker != NULL)
    coalesce_breaker_record(f->breaker,
                            err == 0 && !(flags & COALESCE_RESULT_FAILURE),
                            res->retry_after_ns);
  if (err == 0 && (flags & COALESCE_RESULT_NOT_MODIFIED) && f->stale != NULL)
    value = f->stale; /* revalidated: the stored value stands */

  const coalesce_ttl_t *ttl =
      (flags & COALESCE_RESULT_TTL) ? &res->ttl : &f->ttl;
  bool store = err == 0 && value != NULL &&
               !(flags & (COALESCE_RESULT_NOSTORE | COALESCE_RESULT_NOSHARE)) &&
               !(f->load_flags & COALESCE_LOAD_NO_STORE) &&
               (ttl->fresh_ns | ttl->swr_ns | ttl->sie_ns | ttl->keep_ns) != 0;
  /* Cache first, then end the flight: nobody can miss in between. */
  if (store)
    (void)coalesce_cache_put(l->cache, f->key, f->keylen, value, ttl);

  if (f->flight != NULL) {
    unsigned cflags =
        (err == 0 && (flags & COALESCE_RESULT_NOSHARE)) ? COALESCE_COMPLETE_UNSHARED
                                                        : 0;
    coalesce_flight_complete(f->flight, err, value, cflags);
  } else if (f->solo != NULL) {
    load_deliver(f->solo, err, coalesce_value_ref(value));
  }
  coalesce_value_release(f->stale);
  f->magic = 0;
  free(f);
}

int coalesce_loader_cancel(coalesce_loader_t *l, coalesce_load_t *ld,
                           coalesce_load_result_t *fallback) {
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  COALESCE__CHECK(ld, COALESCE__MAGIC_LOAD);
  if (ld->waiter == NULL) /* a solo load answers when its fetch ends */
    return COALESCE_EALREADY;
  int rc = coalesce_waiter_cancel(ld->waiter);
  if (rc != 0)
    return rc;
  count(l, ld->hash, L_TIMEOUTS);
  if (fallback != NULL) {
    result_set(fallback, COALESCE_ETIMEDOUT, NULL, ld->source, 0);
    if (!stale_fallback(l, ld->key, ld->keylen, ld->hash, ld->min_stored,
                        ld->max_stale, fallback))
      count(l, ld->hash, L_ERRORS);
  }
  return 0;
}

/* --- blocking form ------------------------------------------------------ */

typedef struct sync_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  coalesce_load_result_t res;
} sync_wait_t;

static void sync_deliver(void *ud, coalesce_load_result_t *res) {
  sync_wait_t *w = ud;
  pthread_mutex_lock(&w->mu);
  w->res = *res;
  w->done = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int coalesce_loader_get(coalesce_loader_t *l, const void *key, size_t keylen,
                        const coalesce_load_opts_t *opts,
                        coalesce_load_result_t *out) {
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  if (l->fetch == NULL || out == NULL)
    return COALESCE_EINVAL;
  sync_wait_t w = {.done = false};
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w.cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&w.mu, NULL);

  coalesce_load_t *ld = NULL;
  int rc = load_impl(l, key, keylen, opts, sync_deliver, &w, out, &ld, true);
  if (rc < 0) {
    memset(out, 0, sizeof *out);
    out->err = rc;
  } else if (rc == COALESCE_PENDING) {
    uint64_t wait_ns = opts != NULL && opts->max_wait_ns != 0
                           ? opts->max_wait_ns
                           : 5 * COALESCE_NS_PER_SEC;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t at = (uint64_t)ts.tv_sec * COALESCE_NS_PER_SEC +
                  (uint64_t)ts.tv_nsec + wait_ns;
    ts.tv_sec = (time_t)(at / COALESCE_NS_PER_SEC);
    ts.tv_nsec = (long)(at % COALESCE_NS_PER_SEC);
    pthread_mutex_lock(&w.mu);
    while (!w.done && pthread_cond_timedwait(&w.cv, &w.mu, &ts) == 0)
      ;
    bool done = w.done;
    pthread_mutex_unlock(&w.mu);
    if (!done && coalesce_loader_cancel(l, ld, out) == 0) {
      coalesce_load_free(ld);
    } else {
      pthread_mutex_lock(&w.mu);
      while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
      pthread_mutex_unlock(&w.mu);
      *out = w.res;
      coalesce_load_free(ld);
    }
  }
  pthread_cond_destroy(&w.cv);
  pthread_mutex_destroy(&w.mu);
  return out->err;
}

/* --- statistics --------------------------------------------------------- */

void coalesce_loader_stats(coalesce_loader_t *l, coalesce_stats_t *s) {
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  memset(s, 0, sizeof *s);
  coalesce_cache_stats(l->cache, s);
  coalesce__counters_t *c = l->counters;
  s->total_requests = coalesce__counter_sum(c, L_TOTAL);
  s->cache_hits = coalesce__counter_sum(c, L_HIT);
  s->stale_hits = coalesce__counter_sum(c, L_STALE);
  s->stale_if_error = coalesce__counter_sum(c, L_SIE);
  s->coalesced_requests = coalesce__counter_sum(c, L_COALESCED);
  s->api_calls_made = coalesce__counter_sum(c, L_MADE);
  s->background_refreshes = coalesce__counter_sum(c, L_REFRESH);
  s->errors = coalesce__counter_sum(c, L_ERRORS);
  s->wait_timeouts = coalesce__counter_sum(c, L_TIMEOUTS);
  s->unshared = coalesce__counter_sum(c, L_UNSHARED);
  s->bypassed = coalesce__counter_sum(c, L_BYPASS);
  s->breaker_rejections = coalesce__counter_sum(c, L_BREAKER_REJ);
  s->overloaded = coalesce__counter_sum(c, L_OVERLOADED);
  s->pending_requests = coalesce_coalescer_pending(l->co);
  coalesce_stats_derive(s);
}

void coalesce_loader_stats_reset(coalesce_loader_t *l) {
  COALESCE__CHECK(l, COALESCE__MAGIC_LOADER);
  coalesce__counters_reset(l->counters);
}
