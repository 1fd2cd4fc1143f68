/* test_loader.c — the request path of DESIGN.md §1 through the loader:
 * hit / stale / stale-if-error, coalescing, ordering, breaker, private
 * results, cancellation and the blocking form under a 1,000-thread herd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <string.h>

#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h"

/* ---- a test rig: loader + cache + coalescer + breaker on a fake clock --- */

#define MAX_TOKENS 64

typedef struct rig {
  fake_clock_t fc;
  coalesce_cache_t *cache;
  coalesce_coalescer_t *co;
  coalesce_breaker_t *breaker;
  coalesce_loader_t *loader;
  coalesce_load_opts_t opts;
  /* async fetches the test completes by hand */
  coalesce_fetch_t *tokens[MAX_TOKENS];
  int ntokens;
  int stale_seen; /* starts handed a stale value */
  /* sync fetch behaviour */
  _Atomic int sync_calls;
  const char *sync_body;
  int sync_err;
  _Atomic int herd_wait_for; /* sync fetch waits until this many coalesced */
} rig_t;

static void rig_start(void *ud, const void *key, size_t keylen, void *ctx,
                      coalesce_value_t *stale, coalesce_fetch_t *fetch) {
  (void)key;
  (void)keylen;
  (void)ctx;
  rig_t *r = ud;
  assert_true(r->ntokens < MAX_TOKENS);
  r->tokens[r->ntokens++] = fetch;
  if (stale != NULL)
    r->stale_seen++;
}

static void rig_fetch(void *ud, const void *key, size_t keylen, void *ctx,
                      coalesce_value_t *stale, coalesce_fetch_result_t *res) {
  (void)key;
  (void)keylen;
  (void)ctx;
  (void)stale;
  rig_t *r = ud;
  atomic_fetch_add(&r->sync_calls, 1);
  int want = atomic_load(&r->herd_wait_for);
  while (want > 0) { /* hold the flight open until every follower parked */
    coalesce_stats_t s;
    coalesce_loader_stats(r->loader, &s);
    if (s.coalesced_requests >= (uint64_t)want)
      break;
    sched_yield();
  }
  res->err = r->sync_err;
  if (r->sync_body != NULL)
    res->value = coalesce_value_new(r->sync_body, strlen(r->sync_body));
}

static int rig_setup(void **state) {
  rig_t *r = calloc(1, sizeof *r);
  fake_clock_init(&r->fc);
  coalesce_cache_opts_t co;
  coalesce_cache_opts_init(&co);
  co.clock = &r->fc.clock;
  assert_int_equal(coalesce_cache_new(&co, &r->cache), 0);
  coalesce_coalescer_opts_t fo;
  coalesce_coalescer_opts_init(&fo);
  fo.clock = &r->fc.clock;
  assert_int_equal(coalesce_coalescer_new(&fo, &r->co), 0);
  coalesce_breaker_opts_t bo;
  coalesce_breaker_opts_init(&bo);
  bo.consecutive_failures = 2;
  bo.open_ns = SEC(100);
  bo.clock = &r->fc.clock;
  assert_int_equal(coalesce_breaker_new(&bo, &r->breaker), 0);
  coalesce_loader_opts_t lo = {.cache = r->cache,
                               .coalescer = r->co,
                               .start = rig_start,
                               .fetch = rig_fetch,
                               .ud = r,
                               .clock = &r->fc.clock};
  assert_int_equal(coalesce_loader_new(&lo, &r->loader), 0);
  coalesce_load_opts_init(&r->opts);
  r->opts.ttl = (coalesce_ttl_t){
      .fresh_ns = SEC(5), .swr_ns = SEC(30), .sie_ns = SEC(300)};
  r->opts.breaker = r->breaker;
  r->sync_body = "body";
  *state = r;
  return 0;
}

static int rig_teardown(void **state) {
  rig_t *r = *state;
  coalesce_loader_free(r->loader);
  coalesce_breaker_free(r->breaker);
  coalesce_coalescer_free(r->co);
  coalesce_cache_free(r->cache);
  free(r);
  return 0;
}

/* A load's answer as a test sees it. */
typedef struct answer {
  int calls;
  coalesce_load_result_t res;
  rig_t *rig;       /* for the ordering test */
  int nested_source; /* what a load made inside the callback got */
} answer_t;

static void on_answer(void *ud, coalesce_load_result_t *res) {
  answer_t *a = ud;
  a->calls++;
  a->res = *res;
}

static int load(rig_t *r, const char *key, answer_t *a,
                coalesce_load_result_t *now) {
  memset(now, 0, sizeof *now);
  return coalesce_loader_load(r->loader, key, strlen(key), &r->opts, on_answer,
                              a, now, NULL);
}

static void finish(rig_t *r, int i, int err, const char *body,
                   unsigned flags) {
  coalesce_fetch_result_t res = {.err = err, .flags = flags};
  if (body != NULL)
    res.value = coalesce_value_new(body, strlen(body));
  coalesce_fetch_done(r->tokens[i], &res);
  coalesce_value_release(res.value);
  r->tokens[i] = NULL;
}

static void stats(rig_t *r, coalesce_stats_t *s) {
  coalesce_loader_stats(r->loader, s);
}

static void assert_body(const coalesce_value_t *v, const char *want) {
  assert_non_null(v);
  assert_int_equal(coalesce_value_len(v), strlen(want));
  assert_memory_equal(coalesce_value_data(v), want, strlen(want));
}

/* ---- tests --------------------------------------------------------------- */

static void test_miss_coalesce_then_hit(void **state) {
  rig_t *r = *state;
  answer_t a[10] = {0};
  coalesce_load_result_t now;
  for (int i = 0; i < 10; i++)
    assert_int_equal(load(r, "k", &a[i], &now), COALESCE_PENDING);
  assert_int_equal(r->ntokens, 1); /* one fetch for ten loads */
  finish(r, 0, 0, "v1", 0);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(a[i].calls, 1);
    assert_int_equal(a[i].res.err, 0);
    assert_int_equal(a[i].res.source,
                     i == 0 ? COALESCE_SRC_MISS : COALESCE_SRC_COALESCED);
    assert_body(a[i].res.value, "v1");
    assert_ptr_equal(a[i].res.value, a[0].res.value); /* shared, not copied */
    coalesce_value_release(a[i].res.value);
  }
  assert_int_equal(load(r, "k", NULL, &now), 0);
  assert_int_equal(now.source, COALESCE_SRC_HIT);
  assert_body(now.value, "v1");
  coalesce_value_release(now.value);

  coalesce_stats_t s;
  stats(r, &s);
  assert_int_equal(s.total_requests, 11);
  assert_int_equal(s.api_calls_made, 1);
  assert_int_equal(s.coalesced_requests, 9);
  assert_int_equal(s.cache_hits, 1);
  assert_int_equal(s.api_calls_saved, 10);
  assert_int_equal(s.pending_requests, 0);
}

/* Invariant 2: the cache holds the result before any waiter is woken, so a
 * load made from inside a waiter's callback is a hit, never a fetch. */
static void nested_load(void *ud, coalesce_load_result_t *res) {
  answer_t *a = ud;
  a->calls++;
  a->res = *res;
  coalesce_load_result_t now;
  int rc = load(a->rig, "order", NULL, &now);
  assert_int_equal(rc, 0);
  a->nested_source = (int)now.source;
  coalesce_value_release(now.value);
}

static void test_cache_populated_before_waiters_woken(void **state) {
  rig_t *r = *state;
  answer_t lead = {0}, a = {.rig = r}, b = {.rig = r};
  coalesce_load_result_t now;
  assert_int_equal(load(r, "order", &lead, &now), COALESCE_PENDING);
  assert_int_equal(coalesce_loader_load(r->loader, "order", 5, &r->opts,
                                        nested_load, &a, &now, NULL),
                   COALESCE_PENDING);
  assert_int_equal(coalesce_loader_load(r->loader, "order", 5, &r->opts,
                                        nested_load, &b, &now, NULL),
                   COALESCE_PENDING);
  finish(r, 0, 0, "v", 0);
  assert_int_equal(a.nested_source, COALESCE_SRC_HIT);
  assert_int_equal(b.nested_source, COALESCE_SRC_HIT);
  assert_int_equal(r->ntokens, 1);
  coalesce_value_release(a.res.value);
  coalesce_value_release(b.res.value);
  coalesce_value_release(lead.res.value);
}

static void test_stale_serves_and_refreshes_once(void **state) {
  rig_t *r = *state;
  answer_t a = {0};
  coalesce_load_result_t now;
  assert_int_equal(load(r, "s", &a, &now), COALESCE_PENDING);
  finish(r, 0, 0, "old", 0);
  coalesce_value_release(a.res.value);
  r->ntokens = 0;

  fake_clock_advance(&r->fc, SEC(6)); /* past fresh, inside swr */
  for (int i = 0; i < 50; i++) {
    assert_int_equal(load(r, "s", NULL, &now), 0);
    assert_int_equal(now.source, COALESCE_SRC_STALE);
    assert_body(now.value, "old");
    assert_true(now.age_ns >= SEC(6));
    coalesce_value_release(now.value);
  }
  assert_int_equal(r->ntokens, 1); /* exactly one background refresh */
  assert_int_equal(r->stale_seen, 1); /* handed the stale copy */
  finish(r, 0, 0, "new", 0);
  assert_int_equal(load(r, "s", NULL, &now), 0);
  assert_int_equal(now.source, COALESCE_SRC_HIT);
  assert_body(now.value, "new");
  coalesce_value_release(now.value);

  coalesce_stats_t s;
  stats(r, &s);
  assert_int_equal(s.stale_hits, 50);
  assert_int_equal(s.background_refreshes, 1);
  assert_int_equal(s.api_calls_made, 2);
}

static void test_error_fans_out_and_sie_fallback(void **state) {
  rig_t *r = *state;
  answer_t a[5] = {0};
  coalesce_load_result_t now;
  for (int i = 0; i < 5; i++)
    assert_int_equal(load(r, "e", &a[i], &now), COALESCE_PENDING);
  finish(r, 0, COALESCE_EFETCH, "boom", 0);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(a[i].calls, 1);
    assert_int_equal(a[i].res.err, COALESCE_EFETCH);
    assert_body(a[i].res.value, "boom"); /* same message to all */
    coalesce_value_release(a[i].res.value);
  }
  /* one outcome per fetch: threshold 2 not reached by one failed flight */
  coalesce_stats_t s;
  coalesce_breaker_stats(r->breaker, &s);
  assert_int_equal(s.breaker_failures, 1);
  assert_int_equal(coalesce_breaker_state(r->breaker), COALESCE_BREAKER_CLOSED);

  /* now cache a value, let it pass swr, and fail its refresh: stale-if-error */
  r->ntokens = 0;
  answer_t b = {0};
  assert_int_equal(load(r, "f", &b, &now), COALESCE_PENDING);
  finish(r, 0, 0, "good", 0);
  coalesce_value_release(b.res.value);
  r->ntokens = 0;
  fake_clock_advance(&r->fc, SEC(40)); /* past fresh+swr, inside sie */
  answer_t c = {0};
  assert_int_equal(load(r, "f", &c, &now), COALESCE_PENDING);
  assert_int_equal(r->stale_seen, 1); /* can revalidate with it */
  finish(r, 0, COALESCE_EUPSTREAM_TIMEOUT, NULL, 0);
  assert_int_equal(c.res.err, 0);
  assert_int_equal(c.res.source, COALESCE_SRC_STALE_IF_ERROR);
  assert_body(c.res.value, "good");
  coalesce_value_release(c.res.value);
}

static void test_breaker_open_serves_stale_without_fetch(void **state) {
  rig_t *r = *state;
  coalesce_load_result_t now;
  answer_t a = {0};
  assert_int_equal(load(r, "b", &a, &now), COALESCE_PENDING);
  finish(r, 0, 0, "cached", 0);
  coalesce_value_release(a.res.value);
  r->ntokens = 0;
  /* two failing flights on other keys trip it (threshold 2) */
  for (int i = 0; i < 2; i++) {
    char key[8];
    snprintf(key, sizeof key, "x%d", i);
    answer_t x = {0};
    assert_int_equal(load(r, key, &x, &now), COALESCE_PENDING);
    finish(r, r->ntokens - 1, 0, "500", COALESCE_RESULT_FAILURE);
    coalesce_value_release(x.res.value); /* a 5xx is shared as a response */
    assert_int_equal(x.res.err, 0);
  }
  assert_int_equal(coalesce_breaker_state(r->breaker), COALESCE_BREAKER_OPEN);
  int before = r->ntokens;
  fake_clock_advance(&r->fc, SEC(40)); /* "b" is now stale-if-error only */
  assert_int_equal(load(r, "b", NULL, &now), 0);
  assert_int_equal(now.err, 0);
  assert_int_equal(now.source, COALESCE_SRC_STALE_IF_ERROR);
  assert_body(now.value, "cached");
  coalesce_value_release(now.value);
  assert_int_equal(load(r, "cold", NULL, &now), 0);
  assert_int_equal(now.err, COALESCE_ECIRCUIT_OPEN);
  assert_int_equal(r->ntokens, before); /* the upstream was not called */
  coalesce_stats_t s;
  stats(r, &s);
  assert_int_equal(s.breaker_rejections, 2);
}

static void test_unshared_result_goes_solo(void **state) {
  rig_t *r = *state;
  answer_t a[3] = {0};
  coalesce_load_result_t now;
  for (int i = 0; i < 3; i++)
    assert_int_equal(load(r, "p", &a[i], &now), COALESCE_PENDING);
  finish(r, 0, 0, "alice's", COALESCE_RESULT_NOSHARE);
  assert_int_equal(a[0].res.err, 0); /* the leader keeps its own answer */
  assert_body(a[0].res.value, "alice's");
  coalesce_value_release(a[0].res.value);
  for (int i = 1; i < 3; i++) {
    assert_int_equal(a[i].res.err, COALESCE_EUNSHARED);
    assert_null(a[i].res.value);
  }
  /* followers retry solo, in parallel: each gets its own fetch */
  r->opts.flags = COALESCE_LOAD_SOLO;
  answer_t b[2] = {0};
  for (int i = 0; i < 2; i++)
    assert_int_equal(load(r, "p", &b[i], &now), COALESCE_PENDING);
  assert_int_equal(r->ntokens, 3);
  finish(r, 1, 0, "bob's", COALESCE_RESULT_NOSHARE);
  finish(r, 2, 0, "carol's", COALESCE_RESULT_NOSHARE);
  assert_body(b[0].res.value, "bob's");
  assert_body(b[1].res.value, "carol's");
  coalesce_value_release(b[0].res.value);
  coalesce_value_release(b[1].res.value);
  r->opts.flags = 0;
  /* nothing private was cached, and the key is now hit-for-miss: BYPASS */
  answer_t c = {0};
  assert_int_equal(load(r, "p", &c, &now), COALESCE_PENDING);
  finish(r, 3, 0, "dave's", COALESCE_RESULT_NOSHARE);
  assert_int_equal(c.res.source, COALESCE_SRC_BYPASS);
  coalesce_value_release(c.res.value);
}

static void test_not_modified_keeps_value(void **state) {
  rig_t *r = *state;
  answer_t a = {0};
  coalesce_load_result_t now;
  assert_int_equal(load(r, "nm", &a, &now), COALESCE_PENDING);
  finish(r, 0, 0, "etagged", 0);
  coalesce_value_release(a.res.value);
  fake_clock_advance(&r->fc, SEC(40));
  answer_t b = {0};
  assert_int_equal(load(r, "nm", &b, &now), COALESCE_PENDING);
  finish(r, 1, 0, NULL, COALESCE_RESULT_NOT_MODIFIED);
  assert_int_equal(b.res.err, 0);
  assert_body(b.res.value, "etagged");
  coalesce_value_release(b.res.value);
  assert_int_equal(load(r, "nm", NULL, &now), 0);
  assert_int_equal(now.source, COALESCE_SRC_HIT); /* windows restarted */
  coalesce_value_release(now.value);
}

static void test_cancel_leaves_flight_and_falls_back(void **state) {
  rig_t *r = *state;
  coalesce_load_result_t now, fb;
  answer_t lead = {0}, quitter = {0}, stayer = {0};
  assert_int_equal(load(r, "c", &lead, &now), COALESCE_PENDING);
  coalesce_load_t *h = NULL;
  assert_int_equal(coalesce_loader_load(r->loader, "c", 1, &r->opts, on_answer,
                                        &quitter, &now, &h),
                   COALESCE_PENDING);
  assert_int_equal(load(r, "c", &stayer, &now), COALESCE_PENDING);
  assert_int_equal(coalesce_loader_cancel(r->loader, h, &fb), 0);
  coalesce_load_free(h);
  assert_int_equal(fb.err, COALESCE_ETIMEDOUT);
  finish(r, 0, 0, "late", 0);
  assert_int_equal(quitter.calls, 0); /* cancelled: never called */
  assert_body(stayer.res.value, "late");
  coalesce_value_release(stayer.res.value);
  coalesce_value_release(lead.res.value);
  coalesce_stats_t s;
  stats(r, &s);
  assert_int_equal(s.wait_timeouts, 1);
  /* the result was cached for the rest */
  assert_int_equal(load(r, "c", NULL, &now), 0);
  assert_int_equal(now.source, COALESCE_SRC_HIT);
  coalesce_value_release(now.value);
}

static void finish_ttl(rig_t *r, int i, int err, const char *body,
                       unsigned flags, coalesce_ttl_t ttl) {
  coalesce_fetch_result_t res = {.err = err, .flags = flags | COALESCE_RESULT_TTL,
                                 .ttl = ttl};
  if (body != NULL)
    res.value = coalesce_value_new(body, strlen(body));
  coalesce_fetch_done(r->tokens[i], &res);
  coalesce_value_release(res.value);
  r->tokens[i] = NULL;
}

/* must-revalidate / no-cache: kept only as a validator, never served. */
static void test_validate_only_is_never_served(void **state) {
  rig_t *r = *state;
  coalesce_load_result_t now;
  answer_t a = {0};
  coalesce_ttl_t keep = {.fresh_ns = SEC(1), .keep_ns = SEC(60)};
  assert_int_equal(load(r, "v", &a, &now), COALESCE_PENDING);
  finish_ttl(r, 0, 0, "strict", 0, keep);
  coalesce_value_release(a.res.value);
  fake_clock_advance(&r->fc, SEC(2));
  answer_t b = {0};
  assert_int_equal(load(r, "v", &b, &now), COALESCE_PENDING);
  assert_int_equal(r->stale_seen, 1); /* handed over as the validator */
  finish(r, 1, COALESCE_EFETCH, "down", 0);
  assert_int_equal(b.res.err, COALESCE_EFETCH); /* no stale-if-error */
  coalesce_value_release(b.res.value);
  answer_t c = {0};
  assert_int_equal(load(r, "v", &c, &now), COALESCE_PENDING);
  finish_ttl(r, 2, 0, NULL, COALESCE_RESULT_NOT_MODIFIED, keep);
  assert_int_equal(c.res.err, 0);
  assert_body(c.res.value, "strict"); /* revalidated: the stored body */
  coalesce_value_release(c.res.value);
  assert_int_equal(load(r, "v", NULL, &now), 0);
  assert_int_equal(now.source, COALESCE_SRC_HIT);
  coalesce_value_release(now.value);
}

static void test_min_stored_and_max_stale(void **state) {
  rig_t *r = *state;
  coalesce_load_result_t now;
  answer_t a = {0};
  assert_int_equal(load(r, "i", &a, &now), COALESCE_PENDING);
  finish(r, 0, 0, "before", 0);
  coalesce_value_release(a.res.value);
  fake_clock_advance(&r->fc, MS(1));
  /* an invalidation after it was stored: not served, even though fresh */
  r->opts.min_stored_ns = coalesce_clock_now(&r->fc.clock);
  answer_t b = {0};
  assert_int_equal(load(r, "i", &b, &now), COALESCE_PENDING);
  finish(r, 1, 0, "after", 0);
  assert_body(b.res.value, "after");
  coalesce_value_release(b.res.value);
  r->opts.min_stored_ns = 0;
  /* max-stale: 6 s past fresh (5 s) is 1 s stale: allowed at 2 s, not 0.5 s */
  fake_clock_advance(&r->fc, SEC(6));
  r->opts.max_stale_ns = SEC(2);
  assert_int_equal(load(r, "i", NULL, &now), 0);
  assert_int_equal(now.source, COALESCE_SRC_STALE);
  coalesce_value_release(now.value);
  finish(r, 2, 0, "refreshed", 0); /* the background refresh it started */
  fake_clock_advance(&r->fc, SEC(6));
  r->opts.max_stale_ns = MS(500);
  answer_t c = {0};
  assert_int_equal(load(r, "i", &c, &now), COALESCE_PENDING);
  finish(r, 3, 0, "newest", 0);
  assert_body(c.res.value, "newest");
  coalesce_value_release(c.res.value);
}

/* A request's stale-if-error bounds the fallback copy (RFC 5861 §4). */
static void test_request_stale_if_error_limits_fallback(void **state) {
  rig_t *r = *state;
  coalesce_load_result_t now;
  answer_t a = {0};
  assert_int_equal(load(r, "sie", &a, &now), COALESCE_PENDING);
  finish(r, 0, 0, "kept", 0);
  coalesce_value_release(a.res.value);
  fake_clock_advance(&r->fc, SEC(40)); /* 35 s stale: sie window only */
  r->opts.max_stale_on_error_ns = SEC(10); /* the client accepts 10 s */
  answer_t b = {0};
  assert_int_equal(load(r, "sie", &b, &now), COALESCE_PENDING);
  finish(r, 1, COALESCE_EFETCH, "down", 0);
  assert_int_equal(b.res.err, COALESCE_EFETCH); /* too stale for it */
  coalesce_value_release(b.res.value);
  r->opts.max_stale_on_error_ns = SEC(60); /* this one accepts a minute */
  answer_t c = {0};
  assert_int_equal(load(r, "sie", &c, &now), COALESCE_PENDING);
  finish(r, 2, COALESCE_EFETCH, "down", 0);
  assert_int_equal(c.res.err, 0);
  assert_int_equal(c.res.source, COALESCE_SRC_STALE_IF_ERROR);
  assert_body(c.res.value, "kept");
  coalesce_value_release(c.res.value);
}

/* ---- the blocking form under a herd -------------------------------------- */

#define HERD 1000

typedef struct herd_arg {
  rig_t *r;
  pthread_barrier_t *go;
  coalesce_load_result_t out;
  int rc;
} herd_arg_t;

static void *herd_thread(void *p) {
  herd_arg_t *h = p;
  pthread_barrier_wait(h->go);
  h->rc = coalesce_loader_get(h->r->loader, "herd", 4, &h->r->opts, &h->out);
  return NULL;
}

static void test_blocking_herd_one_fetch(void **state) {
  rig_t *r = *state;
  r->opts.max_wait_ns = SEC(60); /* real-time wait: only a safety net */
  int n = HERD;
#if defined(__SANITIZE_THREAD__)
  n = 200; /* TSan cannot hold 1,000 threads' shadow state comfortably */
#endif
  atomic_store(&r->herd_wait_for, n - 1);
  r->sync_body = "shared-body";
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, (unsigned)n);
  herd_arg_t *args = calloc((size_t)n, sizeof *args);
  pthread_t *tids = calloc((size_t)n, sizeof *tids);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  for (int i = 0; i < n; i++) {
    args[i] = (herd_arg_t){.r = r, .go = &go};
    assert_int_equal(pthread_create(&tids[i], &attr, herd_thread, &args[i]), 0);
  }
  for (int i = 0; i < n; i++)
    pthread_join(tids[i], NULL);
  pthread_attr_destroy(&attr);
  assert_int_equal(atomic_load(&r->sync_calls), 1);
  int leaders = 0;
  for (int i = 0; i < n; i++) {
    assert_int_equal(args[i].rc, 0);
    assert_ptr_equal(args[i].out.value, args[0].out.value);
    assert_body(args[i].out.value, "shared-body");
    leaders += args[i].out.source == COALESCE_SRC_MISS;
    coalesce_value_release(args[i].out.value);
  }
  assert_int_equal(leaders, 1);
  coalesce_stats_t s;
  stats(r, &s);
  assert_int_equal(s.total_requests, (uint64_t)n);
  assert_int_equal(s.api_calls_made, 1);
  assert_int_equal(s.coalesced_requests, (uint64_t)n - 1);
  assert_int_equal(s.pending_requests, 0);
  pthread_barrier_destroy(&go);
  free(args);
  free(tids);
}

/* Many threads, many keys, hits and misses mixed: for TSan. */
static void *mixed_thread(void *p) {
  herd_arg_t *h = p;
  pthread_barrier_wait(h->go);
  for (int i = 0; i < 2000; i++) {
    char key[16];
    snprintf(key, sizeof key, "m%d", (i * 7) % 50);
    coalesce_load_result_t out;
    if (coalesce_loader_get(h->r->loader, key, strlen(key), &h->r->opts,
                            &out) == 0)
      coalesce_value_release(out.value);
    else
      h->rc = out.err;
  }
  return NULL;
}

static void test_mixed_keys_threads(void **state) {
  rig_t *r = *state;
  enum { T = 8 };
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, T);
  herd_arg_t args[T];
  pthread_t tids[T];
  for (int i = 0; i < T; i++) {
    args[i] = (herd_arg_t){.r = r, .go = &go};
    pthread_create(&tids[i], NULL, mixed_thread, &args[i]);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(tids[i], NULL);
    assert_int_equal(args[i].rc, 0);
  }
  coalesce_stats_t s;
  stats(r, &s);
  assert_int_equal(s.total_requests, T * 2000);
  assert_true(s.api_calls_made >= 50); /* each key fetched at least once */
  assert_int_equal(s.total_requests, s.cache_hits + s.stale_hits +
                                         s.coalesced_requests +
                                         s.api_calls_made);
  assert_int_equal(s.pending_requests, 0);
  pthread_barrier_destroy(&go);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_miss_coalesce_then_hit, rig_setup,
                                      rig_teardown),
      cmocka_unit_test_setup_teardown(test_cache_populated_before_waiters_woken,
                                      rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(test_stale_serves_and_refreshes_once,
                                      rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(test_error_fans_out_and_sie_fallback,
                                      rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(
          test_breaker_open_serves_stale_without_fetch, rig_setup,
          rig_teardown),
      cmocka_unit_test_setup_teardown(test_unshared_result_goes_solo,
                                      rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(test_not_modified_keeps_value, rig_setup,
                                      rig_teardown),
      cmocka_unit_test_setup_teardown(test_cancel_leaves_flight_and_falls_back,
                                      rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(test_validate_only_is_never_served,
                                      rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(test_min_stored_and_max_stale, rig_setup,
                                      rig_teardown),
      cmocka_unit_test_setup_teardown(
          test_request_stale_if_error_limits_fallback, rig_setup, rig_teardown),
      cmocka_unit_test_setup_teardown(test_blocking_herd_one_fetch, rig_setup,
                                      rig_teardown),
      cmocka_unit_test_setup_teardown(test_mixed_keys_threads, rig_setup,
                                      rig_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
