/* test_flight.c — the coalescer: herds, the completion API, timeouts,
 * cancel/complete races, age limits, forget, unshared results, limits.
 * cmocka asserts only on the main thread: workers record, main checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "fake_clock.h"
#include "internal.h"

/* Under TSan 1,000 threads cost about 1 GiB of shadow memory: the herd
 * shrinks there only; normal and ASan builds keep the full 1,000. */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifdef UNDER_TSAN
#define HERD 200
#else
#define HERD 1000
#endif
#define RACE_ITERS 5000
#define MIXED_OPS 3000

/* ------------------------------------------------------------- helpers */

typedef struct rec {
  _Atomic int calls;
  int err;
  coalesce_value_t *value;
  _Atomic bool done;
} rec_t;

static void rec_cb(void *ud, int err, coalesce_value_t *value) {
  rec_t *r = ud;
  r->err = err;
  r->value = value;
  atomic_fetch_add(&r->calls, 1);
  atomic_store_explicit(&r->done, true, memory_order_release);
}

static void rec_clear(rec_t *r) {
  coalesce_value_release(r->value);
  r->value = NULL;
}

static _Atomic int freed;
static void count_free(void *p, void *ud) {
  (void)ud;
  free(p);
  atomic_fetch_add(&freed, 1);
}

/* A value whose destruction the test can observe through `freed`. */
static coalesce_value_t *tracked_value(const char *s) {
  char *copy = strdup(s);
  return coalesce_value_adopt(copy, strlen(s), 0, count_free, NULL);
}

static coalesce_coalescer_t *
new_coalescer(fake_clock_t *fc, void (*tweak)(coalesce_coalescer_opts_t *)) {
  coalesce_coalescer_opts_t o;
  coalesce_coalescer_opts_init(&o);
  if (fc != NULL) {
    fake_clock_init(fc);
    o.clock = &fc->clock;
  }
  if (tweak != NULL)
    tweak(&o);
  coalesce_coalescer_t *c = NULL;
  assert_int_equal(coalesce_coalescer_new(&o, &c), 0);
  return c;
}

static coalesce_stats_t stats_of(coalesce_coalescer_t *c) {
  coalesce_stats_t s;
  memset(&s, 0, sizeof(s));
  coalesce_coalescer_stats(c, &s);
  return s;
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

/* Polls a counter until it reaches want (bounded, so a broken coalescer
 * fails the test instead of hanging it). Waiting on a condition, not a TTL. */
static bool wait_coalesced(coalesce_coalescer_t *c, uint64_t want) {
  uint64_t until = coalesce_clock_now(NULL) + SEC(60);
  while (stats_of(c).coalesced_requests < want) {
    if (coalesce_clock_now(NULL) > until)
      return false;
    sleep_us(100);
  }
  return true;
}

static int fetch_key(void *ud, const void *key, size_t keylen,
                     coalesce_value_t **out) {
  if (ud != NULL)
    atomic_fetch_add((_Atomic int *)ud, 1);
  *out = coalesce_value_new(key, keylen);
  return 0;
}

static int fetch_must_not_run(void *ud, const void *key, size_t keylen,
                              coalesce_value_t **out) {
  (void)ud, (void)key, (void)keylen, (void)out;
  fail_msg("a follower ran the fetch");
  return COALESCE_EFETCH;
}

/* ------------------------------------------------------- thundering herd */

typedef struct herd {
  coalesce_coalescer_t *c;
  pthread_barrier_t start;
  _Atomic int fetches;
  _Atomic bool herd_seen;
  int rc[HERD];
  int role[HERD];
  coalesce_value_t *value[HERD];
} herd_t;

typedef struct herd_arg {
  herd_t *h;
  int i;
} herd_arg_t;

/* Holds the flight open until every other caller has joined it. */
static int herd_fetch(void *ud, const void *key, size_t keylen,
                      coalesce_value_t **out) {
  herd_t *h = ud;
  (void)key, (void)keylen;
  atomic_fetch_add(&h->fetches, 1);
  atomic_store(&h->herd_seen, wait_coalesced(h->c, HERD - 1));
  *out = tracked_value("the one answer");
  return 0;
}

static void *herd_thread(void *arg) {
  herd_arg_t *a = arg;
  herd_t *h = a->h;
  pthread_barrier_wait(&h->start);
  h->rc[a->i] = coalesce_do(h->c, "cold", 4, herd_fetch, h, SEC(120),
                            &h->value[a->i], &h->role[a->i]);
  return NULL;
}

static void set_long_age(coalesce_coalescer_opts_t *o) {
  o->max_flight_age_ns = SEC(300); /* slow sanitizer runs must not expire */
  o->max_wait_ns = SEC(120);
}

static void test_thundering_herd(void **state) {
  (void)state;
  static herd_t h;
  static herd_arg_t args[HERD];
  static pthread_t th[HERD];
  memset(&h, 0, sizeof(h));
  atomic_store(&freed, 0);
  h.c = new_coalescer(NULL, set_long_age);
  pthread_barrier_init(&h.start, NULL, HERD);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (int i = 0; i < HERD; i++) {
    args[i] = (herd_arg_t){&h, i};
    assert_int_equal(pthread_create(&th[i], &attr, herd_thread, &args[i]), 0);
  }
  pthread_attr_destroy(&attr);
  for (int i = 0; i < HERD; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&h.start);

  assert_true(atomic_load(&h.herd_seen));
  assert_int_equal(atomic_load(&h.fetches), 1);
  int leaders = 0;
  for (int i = 0; i < HERD; i++) {
    assert_int_equal(h.rc[i], 0);
    assert_ptr_equal(h.value[i], h.value[0]); /* shared, never copied */
    leaders += h.role[i] == COALESCE_LEADER;
    if (h.role[i] != COALESCE_LEADER)
      assert_int_equal(h.role[i], COALESCE_FOLLOWER);
  }
  assert_int_equal(leaders, 1);
  assert_memory_equal(coalesce_value_data(h.value[0]), "the one answer", 14);

  coalesce_stats_t s = stats_of(h.c);
  assert_int_equal(s.total_requests, HERD);
  assert_int_equal(s.coalesced_requests, HERD - 1);
  assert_int_equal(s.api_calls_made, 1);
  assert_int_equal(s.pending_requests, 0);
  assert_int_equal(s.wait_timeouts, 0);
  coalesce_stats_derive(&s);
  assert_int_equal(s.api_calls_saved, HERD - 1);

  for (int i = 0; i < HERD; i++)
    coalesce_value_release(h.value[i]);
  assert_int_equal(atomic_load(&freed), 1); /* every reference came back */
  coalesce_coalescer_free(h.c);
}

/* -------------------------------------------------------- completion API */

static void test_completion_shares_values_and_errors(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, NULL);
  atomic_store(&freed, 0);
  enum { N = 10 };
  rec_t lead = {0}, recs[N];
  memset(recs, 0, sizeof(recs));
  coalesce_waiter_t *handles[N] = {0};

  coalesce_flight_t *f = NULL, *f2 = NULL;
  assert_int_equal(coalesce_join(c, "k", 1, rec_cb, &lead, &f, NULL),
                   COALESCE_LEADER);
  assert_non_null(f);
  size_t klen = 0;
  assert_memory_equal(coalesce_flight_key(f, &klen), "k", 1);
  assert_int_equal(klen, 1);
  /* the leader is not a waiter until it asks */
  assert_int_equal(coalesce_flight_add_waiter(f, rec_cb, &lead, NULL), 0);
  for (int i = 0; i < N; i++) {
    coalesce_waiter_t **hp = i % 2 ? &handles[i] : NULL;
    assert_int_equal(coalesce_join(c, "k", 1, rec_cb, &recs[i], &f2, hp),
                     COALESCE_FOLLOWER);
    assert_null(f2);
  }
  /* a NULL cb joins nothing: used to start at most one refresh */
  coalesce_waiter_t *none = (void *)&lead;
  assert_int_equal(coalesce_join(c, "k", 1, NULL, NULL, &f2, &none),
                   COALESCE_FOLLOWER);
  assert_null(none);
  assert_int_equal(coalesce_coalescer_pending(c), 1);

  coalesce_value_t *v = tracked_value("payload");
  assert_int_equal(coalesce_flight_complete(f, 0, v, 0), 0);
  assert_int_equal(coalesce_coalescer_pending(c), 0);
  assert_int_equal(atomic_load(&lead.calls), 1);
  assert_ptr_equal(lead.value, v);
  for (int i = 0; i < N; i++) {
    assert_int_equal(atomic_load(&recs[i].calls), 1);
    assert_int_equal(recs[i].err, 0);
    assert_ptr_equal(recs[i].value, v);
    /* delivered handles: cancel says too late, free is now allowed */
    if (handles[i] != NULL) {
      assert_int_equal(coalesce_waiter_cancel(handles[i]), COALESCE_EALREADY);
      coalesce_waiter_free(handles[i]);
    }
  }
  coalesce_value_release(v);
  assert_int_equal(atomic_load(&freed), 0); /* waiters still hold refs */
  rec_clear(&lead);
  for (int i = 0; i < N; i++)
    rec_clear(&recs[i]);
  assert_int_equal(atomic_load(&freed), 1);

  /* errors fan out with the same code and the same message value */
  rec_t er[3];
  memset(er, 0, sizeof(er));
  assert_int_equal(coalesce_join(c, "e", 1, rec_cb, NULL, &f, NULL),
                   COALESCE_LEADER);
  for (int i = 0; i < 3; i++)
    assert_int_equal(coalesce_join(c, "e", 1, rec_cb, &er[i], &f2, NULL),
                     COALESCE_FOLLOWER);
  coalesce_value_t *msg = coalesce_value_new("boom", 4);
  assert_int_equal(coalesce_flight_complete(f, COALESCE_EFETCH, msg, 0), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(er[i].err, COALESCE_EFETCH);
    assert_ptr_equal(er[i].value, msg);
    rec_clear(&er[i]);
  }
  coalesce_value_release(msg);

  /* a NULL value is allowed */
  assert_int_equal(coalesce_join(c, "n", 1, rec_cb, NULL, &f, NULL),
                   COALESCE_LEADER);
  assert_int_equal(coalesce_join(c, "n", 1, rec_cb, &er[0], &f2, NULL),
                   COALESCE_FOLLOWER);
  assert_int_equal(coalesce_flight_complete(f, COALESCE_EFETCH, NULL, 0), 0);
  assert_int_equal(er[0].err, COALESCE_EFETCH);
  assert_null(er[0].value);

  assert_int_equal(coalesce_flight_complete(NULL, 0, NULL, 0), COALESCE_EINVAL);
  assert_int_equal(coalesce_join(c, NULL, 3, rec_cb, NULL, &f, NULL),
                   COALESCE_EINVAL);

  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.total_requests, 1 + N + 1 + 1 + 3 + 1 + 1);
  assert_int_equal(s.coalesced_requests, N + 1 + 3 + 1);
  assert_int_equal(s.api_calls_made, 3);
  assert_int_equal(s.pending_requests, 0);
  coalesce_stats_derive(&s);
  assert_int_equal(s.api_calls_saved, N + 1 + 3 + 1);
  coalesce_coalescer_stats_reset(c);
  s = stats_of(c);
  assert_int_equal(s.total_requests, 0);
  assert_int_equal(s.coalesced_requests, 0);
  assert_int_equal(s.api_calls_made, 0);
  coalesce_coalescer_free(c);
}

/* --------------------------------------------------------- waiter timeout */

static void test_waiter_timeout_is_its_own(void **state) {
  (void)state;
  coalesce_coalescer_t *c = new_coalescer(NULL, NULL);
  coalesce_flight_t *f = NULL, *f2 = NULL;
  rec_t before = {0}, after = {0};
  assert_int_equal(coalesce_join(c, "slow", 4, rec_cb, NULL, &f, NULL),
                   COALESCE_LEADER);
  assert_int_equal(coalesce_join(c, "slow", 4, rec_cb, &before, &f2, NULL),
                   COALESCE_FOLLOWER);
  /* a blocking follower with a 20 ms budget gives up on its own */
  coalesce_value_t *out = (void *)&before;
  int role = 0;
  assert_int_equal(
      coalesce_do(c, "slow", 4, fetch_must_not_run, NULL, MS(20), &out, &role),
      COALESCE_ETIMEDOUT);
  assert_int_equal(role, COALESCE_FOLLOWER);
  assert_null(out);
  assert_int_equal(stats_of(c).wait_timeouts, 1);
  /* the flight goes on and still holds the key */
  assert_int_equal(coalesce_coalescer_pending(c), 1);
  assert_int_equal(coalesce_join(c, "slow", 4, rec_cb, &after, &f2, NULL),
                   COALESCE_FOLLOWER);
  coalesce_value_t *v = coalesce_value_new("late", 4);
  /* the timed-out waiter was removed: completing must not touch its frame */
  assert_int_equal(coalesce_flight_complete(f, 0, v, 0), 0);
  assert_ptr_equal(before.value, v);
  assert_ptr_equal(after.value, v);
  assert_int_equal(atomic_load(&before.calls), 1);
  rec_clear(&before);
  rec_clear(&after);
  coalesce_value_release(v);
  coalesce_coalescer_free(c);
}

/* ------------------------------------------------- cancel vs complete race */

typedef struct race {
  pthread_barrier_t go, end;
  coalesce_flight_t *flight;
  coalesce_value_t *value;
  int iters;
} race_t;

static void *race_completer(void *arg) {
  race_t *r = arg;
  for (int i = 0; i < r->iters; i++) {
    pthread_barrier_wait(&r->go);
    coalesce_flight_complete(r->flight, 0, r->value, 0);
    pthread_barrier_wait(&r->end);
  }
  return NULL;
}

static void test_cancel_races_complete(void **state) {
  (void)state;
  coalesce_coalescer_t *c = new_coalescer(NULL, NULL);
  race_t r = {.iters = RACE_ITERS};
  r.value = coalesce_value_new("v", 1);
  pthread_barrier_init(&r.go, NULL, 2);
  pthread_barrier_init(&r.end, NULL, 2);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, race_completer, &r), 0);
  int cancelled = 0, delivered = 0, bad = 0;
  for (int i = 0; i < r.iters; i++) {
    rec_t mine = {0}, other = {0};
    coalesce_waiter_t *w = NULL;
    coalesce_flight_t *f2 = NULL;
    if (coalesce_join(c, "race", 4, rec_cb, NULL, &r.flight, NULL) !=
            COALESCE_LEADER ||
        coalesce_join(c, "race", 4, rec_cb, &mine, &f2, &w) !=
            COALESCE_FOLLOWER ||
        coalesce_join(c, "race", 4, rec_cb, &other, &f2, NULL) !=
            COALESCE_FOLLOWER) {
      bad++;
      break;
    }
    pthread_barrier_wait(&r.go);
    int rc = coalesce_waiter_cancel(w);
    if (rc == COALESCE_EALREADY) {
      /* the cb runs or ran: wait for it before freeing the handle */
      while (!atomic_load_explicit(&mine.done, memory_order_acquire))
        ;
      delivered++;
      bad += mine.value != r.value;
    } else {
      cancelled++;
      bad += rc != 0;
    }
    coalesce_waiter_free(w);
    pthread_barrier_wait(&r.end);
    /* cancel 0 means the cb never runs; otherwise it ran exactly once */
    bad += atomic_load(&mine.calls) != (rc == 0 ? 0 : 1);
    bad += atomic_load(&other.calls) != 1;
    rec_clear(&mine);
    rec_clear(&other);
  }
  pthread_join(th, NULL);
  print_message("cancel won %d, completion won %d\n", cancelled, delivered);
  assert_int_equal(bad, 0);
  assert_int_equal(cancelled + delivered, r.iters);
  assert_int_equal(coalesce_coalescer_pending(c), 0);
  pthread_barrier_destroy(&r.go);
  pthread_barrier_destroy(&r.end);
  coalesce_value_release(r.value);
  coalesce_coalescer_free(c);
}

/* ------------------------------------------------------------- age limit */

static void set_age_1s(coalesce_coalescer_opts_t *o) {
  o->max_flight_age_ns = SEC(1);
}

static void test_flight_age_limit(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, set_age_1s);
  coalesce_flight_t *old = NULL, *fresh = NULL, *f2 = NULL;
  rec_t w1 = {0}, w2 = {0};
  coalesce_waiter_t *h1 = NULL;
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, NULL, &old, NULL),
                   COALESCE_LEADER);
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, &w1, &f2, &h1),
                   COALESCE_FOLLOWER);
  fake_clock_advance(&fc, MS(999));
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, &w2, &f2, NULL),
                   COALESCE_FOLLOWER);
  fake_clock_advance(&fc, MS(1));
  /* at the limit a join detaches the stalled flight and leads a new one */
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, NULL, &fresh, NULL),
                   COALESCE_LEADER);
  assert_ptr_not_equal(fresh, old);
  assert_int_equal(w1.err, COALESCE_EEXPIRED);
  assert_int_equal(w2.err, COALESCE_EEXPIRED);
  assert_null(w1.value);
  assert_int_equal(coalesce_waiter_cancel(h1), COALESCE_EALREADY);
  coalesce_waiter_free(h1);
  assert_int_equal(stats_of(c).expired_flights, 1);
  assert_int_equal(coalesce_coalescer_pending(c), 1);
  /* an expired flight takes no more waiters */
  assert_int_equal(coalesce_flight_add_waiter(old, rec_cb, &w1, NULL),
                   COALESCE_EEXPIRED);
  /* its late completion is harmless and reaches nobody */
  coalesce_value_t *v = coalesce_value_new("late", 4);
  assert_int_equal(coalesce_flight_complete(old, 0, v, 0), 0);
  assert_int_equal(atomic_load(&w1.calls), 1);
  assert_int_equal(atomic_load(&w2.calls), 1);
  assert_int_equal(coalesce_coalescer_pending(c), 1);
  assert_int_equal(coalesce_flight_complete(fresh, 0, v, 0), 0);
  assert_int_equal(coalesce_coalescer_pending(c), 0);

  /* the sweep: two stalled flights go, a young one stays */
  coalesce_flight_t *k1 = NULL, *k2 = NULL, *k3 = NULL;
  rec_t s1 = {0}, s2 = {0}, s3 = {0};
  coalesce_join(c, "k1", 2, rec_cb, NULL, &k1, NULL);
  coalesce_join(c, "k2", 2, rec_cb, NULL, &k2, NULL);
  coalesce_join(c, "k1", 2, rec_cb, &s1, &f2, NULL);
  coalesce_join(c, "k2", 2, rec_cb, &s2, &f2, NULL);
  assert_int_equal(coalesce_coalescer_expire(c), 0);
  fake_clock_advance(&fc, MS(600));
  coalesce_join(c, "k3", 2, rec_cb, NULL, &k3, NULL);
  coalesce_join(c, "k3", 2, rec_cb, &s3, &f2, NULL);
  fake_clock_advance(&fc, MS(600));
  assert_int_equal(coalesce_coalescer_expire(c), 2);
  assert_int_equal(s1.err, COALESCE_EEXPIRED);
  assert_int_equal(s2.err, COALESCE_EEXPIRED);
  assert_int_equal(atomic_load(&s3.calls), 0);
  assert_int_equal(coalesce_coalescer_pending(c), 1);
  assert_int_equal(stats_of(c).expired_flights, 3);
  coalesce_flight_complete(k1, 0, v, 0);
  coalesce_flight_complete(k2, 0, v, 0);
  coalesce_flight_complete(k3, 0, v, 0);
  assert_ptr_equal(s3.value, v);
  assert_int_equal(atomic_load(&s1.calls), 1);
  rec_clear(&s3);
  coalesce_value_release(v);
  coalesce_coalescer_free(c);
}

static void set_age_30ms(coalesce_coalescer_opts_t *o) {
  o->max_flight_age_ns = MS(30);
}

/* A blocking follower never waits past the flight's age limit, even with a
 * far longer max_wait of its own (real clock: condvars cannot fake it). It
 * runs on a thread so that a follower stuck until its max_wait fails the
 * test after a generous bound instead of hanging it. */
typedef struct capped {
  coalesce_coalescer_t *c;
  _Atomic bool returned;
  int rc;
  coalesce_value_t *out;
} capped_t;

static void *capped_follower(void *arg) {
  capped_t *p = arg;
  p->rc =
      coalesce_do(p->c, "stall", 5, fetch_key, NULL, SEC(3600), &p->out, NULL);
  atomic_store(&p->returned, true);
  return NULL;
}

static void test_blocking_wait_capped_by_age(void **state) {
  (void)state;
  coalesce_coalescer_t *c = new_coalescer(NULL, set_age_30ms);
  coalesce_flight_t *f = NULL;
  assert_int_equal(coalesce_join(c, "stall", 5, rec_cb, NULL, &f, NULL),
                   COALESCE_LEADER);
  capped_t p = {.c = c};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, capped_follower, &p), 0);
  uint64_t until = coalesce_clock_now(NULL) + SEC(60);
  while (!atomic_load(&p.returned) && coalesce_clock_now(NULL) < until)
    sleep_us(1000);
  if (!atomic_load(&p.returned))
    fail_msg("follower waited past its flight's age limit");
  pthread_join(th, NULL);
  assert_int_equal(p.rc, COALESCE_EEXPIRED);
  assert_null(p.out);
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.expired_flights, 1);
  assert_int_equal(s.wait_timeouts, 0);
  assert_int_equal(s.pending_requests, 0);
  assert_int_equal(coalesce_flight_complete(f, 0, NULL, 0), 0);
  coalesce_coalescer_free(c);
}

/* ---------------------------------------------------------------- forget */

static void test_forget(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, NULL);
  coalesce_flight_t *f1 = NULL, *f2 = NULL, *x = NULL;
  rec_t w1 = {0}, w2 = {0};
  assert_int_equal(coalesce_forget(c, "f", 1), COALESCE_ENOTFOUND);
  coalesce_join(c, "f", 1, rec_cb, NULL, &f1, NULL);
  coalesce_join(c, "f", 1, rec_cb, &w1, &x, NULL);
  assert_int_equal(coalesce_forget(c, "f", 1), 0);
  assert_int_equal(coalesce_forget(c, "f", 1), COALESCE_ENOTFOUND);
  assert_int_equal(coalesce_coalescer_pending(c), 0);
  assert_int_equal(coalesce_join(c, "f", 1, rec_cb, NULL, &f2, NULL),
                   COALESCE_LEADER);
  coalesce_join(c, "f", 1, rec_cb, &w2, &x, NULL);
  /* a forgotten flight still takes waiters from its own leader */
  rec_t mine = {0};
  assert_int_equal(coalesce_flight_add_waiter(f1, rec_cb, &mine, NULL), 0);
  coalesce_value_t *v1 = coalesce_value_new("one", 3);
  coalesce_value_t *v2 = coalesce_value_new("two", 3);
  coalesce_flight_complete(f1, 0, v1, 0);
  assert_ptr_equal(w1.value, v1); /* old waiters keep the old result */
  assert_ptr_equal(mine.value, v1);
  assert_int_equal(atomic_load(&w2.calls), 0);
  assert_int_equal(coalesce_coalescer_pending(c), 1);
  coalesce_flight_complete(f2, 0, v2, 0);
  assert_ptr_equal(w2.value, v2);
  rec_clear(&w1);
  rec_clear(&w2);
  rec_clear(&mine);
  coalesce_value_release(v1);
  coalesce_value_release(v2);
  coalesce_coalescer_free(c);
}

/* -------------------------------------------------------------- unshared */

typedef struct unshared_do {
  coalesce_coalescer_t *c;
  _Atomic int fetches;
  int rc, role;
  coalesce_value_t *out;
} unshared_do_t;

static void *unshared_follower(void *arg) {
  unshared_do_t *u = arg;
  u->rc = coalesce_do(u->c, "u2", 2, fetch_key, &u->fetches, SEC(60), &u->out,
                      &u->role);
  return NULL;
}

static void test_unshared_goes_solo(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, NULL); /* unshared_ns 2 s */
  coalesce_flight_t *f = NULL, *s1 = NULL, *s2 = NULL, *x = NULL;
  rec_t a = {0}, b = {0}, own = {0};
  coalesce_join(c, "u", 1, rec_cb, NULL, &f, NULL);
  coalesce_join(c, "u", 1, rec_cb, &a, &x, NULL);
  coalesce_join(c, "u", 1, rec_cb, &b, &x, NULL);
  coalesce_value_t *priv = coalesce_value_new("private", 7);
  coalesce_flight_complete(f, 0, priv, COALESCE_COMPLETE_UNSHARED);
  assert_int_equal(a.err, COALESCE_EUNSHARED);
  assert_null(a.value);
  assert_int_equal(b.err, COALESCE_EUNSHARED);
  assert_int_equal(stats_of(c).unshared, 1);

  /* hit-for-miss: each joiner gets a private flight, none waits */
  assert_int_equal(coalesce_join(c, "u", 1, rec_cb, &a, &s1, NULL),
                   COALESCE_SOLO);
  assert_int_equal(coalesce_join(c, "u", 1, rec_cb, &b, &s2, NULL),
                   COALESCE_SOLO);
  assert_ptr_not_equal(s1, s2);
  assert_int_equal(coalesce_coalescer_pending(c), 0);
  assert_int_equal(coalesce_flight_add_waiter(s1, rec_cb, &own, NULL), 0);
  coalesce_flight_complete(s2, 0, priv, 0);
  assert_int_equal(atomic_load(&own.calls), 0); /* s2 is not s1's */
  coalesce_flight_complete(s1, 0, priv, 0);
  assert_ptr_equal(own.value, priv);
  rec_clear(&own);
  coalesce_stats_t s = stats_of(c);
  assert_int_equal(s.bypassed, 2);
  assert_int_equal(s.api_calls_made, 3);

  fake_clock_advance(&fc, MS(1999));
  assert_int_equal(coalesce_join(c, "u", 1, rec_cb, NULL, &s1, NULL),
                   COALESCE_SOLO);
  coalesce_flight_complete(s1, 0, NULL, 0);
  fake_clock_advance(&fc, MS(1));
  assert_int_equal(coalesce_join(c, "u", 1, rec_cb, NULL, &f, NULL),
                   COALESCE_LEADER);
  coalesce_flight_complete(f, 0, NULL, 0);

  /* a blocking follower told EUNSHARED fetches for itself, SOLO */
  unshared_do_t u = {.c = c};
  coalesce_join(c, "u2", 2, rec_cb, NULL, &f, NULL);
  uint64_t before = stats_of(c).coalesced_requests;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, unshared_follower, &u), 0);
  assert_true(wait_coalesced(c, before + 1));
  coalesce_flight_complete(f, 0, priv, COALESCE_COMPLETE_UNSHARED);
  pthread_join(th, NULL);
  assert_int_equal(u.rc, 0);
  assert_int_equal(u.role, COALESCE_SOLO);
  assert_int_equal(atomic_load(&u.fetches), 1);
  assert_ptr_not_equal(u.out, priv);
  assert_memory_equal(coalesce_value_data(u.out), "u2", 2);
  coalesce_value_release(u.out);
  coalesce_value_release(priv);
  coalesce_coalescer_free(c);
}

/* ---------------------------------------------------------------- limits */

static void set_limits(coalesce_coalescer_opts_t *o) {
  o->max_flights = 2;
  o->max_waiters_per_key = 2;
  o->max_waiters = 3;
}

static void test_limits_overload(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, set_limits);
  coalesce_flight_t *a = NULL, *b = NULL, *x = NULL;
  rec_t r[6];
  memset(r, 0, sizeof(r));
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, NULL, &a, NULL),
                   COALESCE_LEADER);
  assert_int_equal(coalesce_join(c, "b", 1, rec_cb, NULL, &b, NULL),
                   COALESCE_LEADER);
  assert_int_equal(coalesce_join(c, "c", 1, rec_cb, NULL, &x, NULL),
                   COALESCE_EOVERLOADED);
  assert_null(x);
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, &r[0], &x, NULL),
                   COALESCE_FOLLOWER);
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, &r[1], &x, NULL),
                   COALESCE_FOLLOWER);
  /* per key */
  assert_int_equal(coalesce_join(c, "a", 1, rec_cb, &r[2], &x, NULL),
                   COALESCE_EOVERLOADED);
  assert_int_equal(coalesce_flight_add_waiter(a, rec_cb, &r[2], NULL),
                   COALESCE_EOVERLOADED);
  /* a NULL cb registers nothing, so no limit applies */
  assert_int_equal(coalesce_join(c, "a", 1, NULL, NULL, &x, NULL),
                   COALESCE_FOLLOWER);
  coalesce_waiter_t *h = NULL;
  assert_int_equal(coalesce_join(c, "b", 1, rec_cb, &r[3], &x, &h),
                   COALESCE_FOLLOWER);
  /* in total */
  assert_int_equal(coalesce_join(c, "b", 1, rec_cb, &r[4], &x, NULL),
                   COALESCE_EOVERLOADED);
  assert_int_equal(stats_of(c).overloaded, 3);
  /* a cancel gives its slot back */
  assert_int_equal(coalesce_waiter_cancel(h), 0);
  assert_int_equal(coalesce_waiter_cancel(h), 0);
  coalesce_waiter_free(h);
  assert_int_equal(coalesce_join(c, "b", 1, rec_cb, &r[4], &x, NULL),
                   COALESCE_FOLLOWER);
  /* completion gives flight and waiter slots back */
  coalesce_flight_complete(a, 0, NULL, 0);
  coalesce_flight_complete(b, 0, NULL, 0);
  assert_int_equal(atomic_load(&r[3].calls), 0);
  assert_int_equal(atomic_load(&r[4].calls), 1);
  assert_int_equal(coalesce_join(c, "c", 1, rec_cb, NULL, &a, NULL),
                   COALESCE_LEADER);
  assert_int_equal(coalesce_join(c, "d", 1, rec_cb, NULL, &b, NULL),
                   COALESCE_LEADER);
  for (int i = 0; i < 3; i++)
    assert_int_equal(
        coalesce_join(c, i < 2 ? "c" : "d", 1, rec_cb, &r[i], &x, NULL),
        COALESCE_FOLLOWER);
  coalesce_flight_complete(a, 0, NULL, 0);
  coalesce_flight_complete(b, 0, NULL, 0);
  assert_int_equal(stats_of(c).overloaded, 3);
  coalesce_coalescer_free(c);
}

/* A slow flight on one key never delays another key. */
typedef struct gate {
  coalesce_coalescer_t *c;
  _Atomic bool entered, open, returned;
  int rc;
  coalesce_value_t *out;
} gate_t;

static int gated_fetch(void *ud, const void *key, size_t keylen,
                       coalesce_value_t **out) {
  gate_t *g = ud;
  atomic_store(&g->entered, true);
  while (!atomic_load(&g->open))
    sleep_us(100);
  *out = coalesce_value_new(key, keylen);
  return 0;
}

static void *gated_leader(void *arg) {
  gate_t *g = arg;
  g->rc = coalesce_do(g->c, "A", 1, gated_fetch, g, 0, &g->out, NULL);
  atomic_store(&g->returned, true);
  return NULL;
}

static void test_keys_do_not_wait_on_each_other(void **state) {
  (void)state;
  coalesce_coalescer_t *c = new_coalescer(NULL, set_long_age);
  gate_t g = {.c = c};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, gated_leader, &g), 0);
  while (!atomic_load(&g.entered))
    sleep_us(100);
  coalesce_value_t *out = NULL;
  int role = 0;
  /* many keys, so some share A's shard: none may block behind it */
  for (int i = 0; i < 64; i++) {
    char key[16];
    int n = snprintf(key, sizeof(key), "B%d", i);
    assert_int_equal(
        coalesce_do(c, key, (size_t)n, fetch_key, NULL, 0, &out, &role), 0);
    assert_int_equal(role, COALESCE_LEADER);
    assert_memory_equal(coalesce_value_data(out), key, (size_t)n);
    coalesce_value_release(out);
  }
  assert_false(atomic_load(&g.returned)); /* A is still in flight */
  assert_int_equal(coalesce_coalescer_pending(c), 1);
  atomic_store(&g.open, true);
  pthread_join(th, NULL);
  assert_int_equal(g.rc, 0);
  assert_memory_equal(coalesce_value_data(g.out), "A", 1);
  coalesce_value_release(g.out);
  coalesce_coalescer_free(c);
}

/* ----------------------------------------------------- mixed keys, threads */

typedef struct mixed {
  coalesce_coalescer_t *c;
  pthread_barrier_t start;
  _Atomic int failures;
  _Atomic int fetches;
} mixed_t;

static void *mixed_thread(void *arg) {
  mixed_t *m = arg;
  unsigned seed = (unsigned)(uintptr_t)&seed;
  pthread_barrier_wait(&m->start);
  for (int i = 0; i < MIXED_OPS; i++) {
    char key[8];
    int n = snprintf(key, sizeof(key), "m%u", rand_r(&seed) % 16);
    if (i % 4 != 3) {
      coalesce_value_t *out = NULL;
      int rc = coalesce_do(m->c, key, (size_t)n, fetch_key, &m->fetches,
                           SEC(60), &out, NULL);
      if (rc != 0 || coalesce_value_len(out) != (size_t)n ||
          memcmp(coalesce_value_data(out), key, (size_t)n) != 0)
        atomic_fetch_add(&m->failures, 1);
      coalesce_value_release(out);
      continue;
    }
    /* completion API: lead and complete at once, or follow then cancel */
    rec_t r = {0};
    coalesce_flight_t *f = NULL;
    coalesce_waiter_t *w = NULL;
    int role = coalesce_join(m->c, key, (size_t)n, rec_cb, &r, &f, &w);
    if (role == COALESCE_LEADER) {
      coalesce_value_t *v = coalesce_value_new(key, (size_t)n);
      coalesce_flight_complete(f, 0, v, 0);
      coalesce_value_release(v);
    } else if (role == COALESCE_FOLLOWER) {
      if (coalesce_waiter_cancel(w) == COALESCE_EALREADY) {
        while (!atomic_load_explicit(&r.done, memory_order_acquire))
          ;
        if (r.err != 0 ||
            memcmp(coalesce_value_data(r.value), key, (size_t)n) != 0)
          atomic_fetch_add(&m->failures, 1);
      } else if (atomic_load(&r.calls) != 0) {
        atomic_fetch_add(&m->failures, 1);
      }
      coalesce_waiter_free(w);
      rec_clear(&r);
    } else {
      atomic_fetch_add(&m->failures, 1);
    }
  }
  return NULL;
}

static void test_mixed_keys_threads(void **state) {
  (void)state;
  enum { T = 8 };
  mixed_t m = {0};
  m.c = new_coalescer(NULL, set_long_age);
  pthread_barrier_init(&m.start, NULL, T);
  pthread_t th[T];
  for (int i = 0; i < T; i++)
    assert_int_equal(pthread_create(&th[i], NULL, mixed_thread, &m), 0);
  for (int i = 0; i < T; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&m.start);
  assert_int_equal(atomic_load(&m.failures), 0);
  coalesce_stats_t s = stats_of(m.c);
  assert_int_equal(s.total_requests, T * MIXED_OPS);
  assert_int_equal(s.api_calls_made + s.coalesced_requests, s.total_requests);
  assert_int_equal(s.pending_requests, 0);
  assert_int_equal(s.wait_timeouts, 0);
  assert_true((uint64_t)atomic_load(&m.fetches) <= s.api_calls_made);
  coalesce_coalescer_free(m.c);
}

/* ---------------------------------------------------------- hottest keys */

/* Joins n waiters to key (leading first if no flight holds it). */
static coalesce_flight_t *join_n(coalesce_coalescer_t *c, const char *key,
                                 int n, rec_t *recs) {
  coalesce_flight_t *f = NULL, *x = NULL;
  assert_int_equal(coalesce_join(c, key, strlen(key), rec_cb, NULL, &f, NULL),
                   COALESCE_LEADER);
  for (int i = 0; i < n; i++)
    assert_int_equal(
        coalesce_join(c, key, strlen(key), rec_cb, &recs[i], &x, NULL),
        COALESCE_FOLLOWER);
  return f;
}

static void test_top_ranks_by_waiters(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, NULL);
  coalesce_flight_info_t top[8];
  memset(top, 0xab, sizeof top);
  assert_int_equal(coalesce_coalescer_top(c, top, 8), 0);
  assert_int_equal(coalesce_coalescer_top(c, top, 0), 0);
  assert_int_equal(coalesce_coalescer_top(NULL, top, 8), 0);
  assert_int_equal(coalesce_coalescer_top(c, NULL, 8), 0);

  rec_t r[16];
  memset(r, 0, sizeof r);
  coalesce_flight_t *old2 = join_n(c, "old-two", 2, r);
  fake_clock_advance(&fc, MS(1500));
  coalesce_flight_t *five = join_n(c, "Authorization: Bearer s3cret", 5, r + 2);
  coalesce_flight_t *none = join_n(c, "lonely", 0, r);
  fake_clock_advance(&fc, MS(250));
  coalesce_flight_t *new2 = join_n(c, "new-two", 2, r + 7);
  fake_clock_advance(&fc, MS(250));
  /* a forgotten flight no longer holds its key: not listed */
  coalesce_flight_t *gone = join_n(c, "forgotten", 6, r + 9);
  assert_int_equal(coalesce_forget(c, "forgotten", 9), 0);

  size_t n = coalesce_coalescer_top(c, top, 8);
  assert_int_equal(n, 4);
  const char *key = "Authorization: Bearer s3cret";
  assert_true(top[0].key_hash == coalesce__hash(key, strlen(key)));
  assert_int_equal(top[0].key_len, strlen(key));
  assert_int_equal(top[0].waiters, 5);
  assert_true(top[0].age_ns == MS(500));
  /* equal waiters: the older flight first */
  assert_true(top[1].key_hash == coalesce__hash("old-two", 7));
  assert_int_equal(top[1].waiters, 2);
  assert_true(top[1].age_ns == MS(2000));
  assert_true(top[2].key_hash == coalesce__hash("new-two", 7));
  assert_true(top[2].age_ns == MS(250));
  assert_true(top[3].key_hash == coalesce__hash("lonely", 6));
  assert_int_equal(top[3].waiters, 0);

  /* max cuts the list, keeping the best */
  memset(top, 0, sizeof top);
  assert_int_equal(coalesce_coalescer_top(c, top, 2), 2);
  assert_int_equal(top[0].waiters, 5);
  assert_true(top[1].key_hash == coalesce__hash("old-two", 7));
  assert_true(top[2].key_hash == 0); /* nothing written past max */

  /* a cancelled waiter leaves the count; a completed flight leaves the list */
  coalesce_waiter_t *w = NULL;
  coalesce_flight_t *x = NULL;
  assert_int_equal(coalesce_join(c, "new-two", 7, rec_cb, &r[15], &x, &w),
                   COALESCE_FOLLOWER);
  assert_int_equal(coalesce_coalescer_top(c, top, 8), 4);
  assert_int_equal(top[1].waiters, 3);
  assert_true(top[1].key_hash == coalesce__hash("new-two", 7));
  assert_int_equal(coalesce_waiter_cancel(w), 0);
  coalesce_waiter_free(w);
  coalesce_flight_complete(five, 0, NULL, 0);
  n = coalesce_coalescer_top(c, top, 8);
  assert_int_equal(n, 3);
  assert_true(top[0].key_hash == coalesce__hash("old-two", 7));
  assert_int_equal(top[0].waiters, 2);

  coalesce_flight_complete(old2, 0, NULL, 0);
  coalesce_flight_complete(none, 0, NULL, 0);
  coalesce_flight_complete(new2, 0, NULL, 0);
  coalesce_flight_complete(gone, 0, NULL, 0);
  assert_int_equal(coalesce_coalescer_top(c, top, 8), 0);
  for (int i = 0; i < 15; i++)
    assert_int_equal(atomic_load(&r[i].calls), 1);
  assert_int_equal(atomic_load(&r[15].calls), 0);
  coalesce_coalescer_free(c);
}

/* Many flights over every shard: the top is the same as a full sort. */
static void test_top_many_flights(void **state) {
  (void)state;
  fake_clock_t fc;
  coalesce_coalescer_t *c = new_coalescer(&fc, NULL);
  enum { KEYS = 300 };
  coalesce_flight_t *f[KEYS];
  static rec_t r[KEYS * 4];
  memset(r, 0, sizeof r);
  int used = 0;
  for (int k = 0; k < KEYS; k++) {
    char key[16];
    snprintf(key, sizeof key, "key-%d", k);
    int w = (k * 7) % 4; /* 0..3 waiters */
    if (k == 123)
      w = 4; /* the single hottest */
    f[k] = join_n(c, key, w, r + used);
    used += w;
    fake_clock_advance(&fc, MS(1));
  }
  coalesce_flight_info_t top[10];
  assert_int_equal(coalesce_coalescer_top(c, top, 10), 10);
  assert_true(top[0].key_hash == coalesce__hash("key-123", 7));
  assert_int_equal(top[0].waiters, 4);
  for (int i = 1; i < 10; i++) {
    assert_int_equal(top[i].waiters, 3);
    if (i > 1) /* equal waiters: older (larger age) first */
      assert_true(top[i].age_ns < top[i - 1].age_ns);
  }
  /* the oldest 3-waiter key (k*7 % 4 == 3 first at k = 1) comes first */
  assert_true(top[1].key_hash == coalesce__hash("key-1", 5));
  for (int k = 0; k < KEYS; k++)
    coalesce_flight_complete(f[k], 0, NULL, 0);
  for (int i = 0; i < used; i++)
    assert_int_equal(atomic_load(&r[i].calls), 1);
  coalesce_coalescer_free(c);
}

static void test_defaults_and_null(void **state) {
  (void)state;
  coalesce_coalescer_opts_t o;
  coalesce_coalescer_opts_init(&o);
  assert_int_equal(o.max_wait_ns, SEC(5));
  assert_int_equal(o.max_flight_age_ns, SEC(10));
  assert_int_equal(o.unshared_ns, SEC(2));
  assert_int_equal(o.shards, 16);
  coalesce_coalescer_t *c = NULL;
  assert_int_equal(coalesce_coalescer_new(NULL, &c), 0);
  assert_int_equal(coalesce_coalescer_new(NULL, NULL), COALESCE_EINVAL);
  coalesce_value_t *out = NULL;
  /* an empty key is a key like any other */
  assert_int_equal(coalesce_do(c, NULL, 0, fetch_key, NULL, 0, &out, NULL), 0);
  assert_int_equal(coalesce_value_len(out), 0);
  coalesce_value_release(out);
  assert_int_equal(coalesce_do(c, "k", 1, NULL, NULL, 0, &out, NULL),
                   COALESCE_EINVAL);
  assert_int_equal(coalesce_coalescer_expire(c), 0);
  coalesce_coalescer_free(c);
  coalesce_coalescer_free(NULL);
  coalesce_waiter_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_and_null),
      cmocka_unit_test(test_thundering_herd),
      cmocka_unit_test(test_completion_shares_values_and_errors),
      cmocka_unit_test(test_waiter_timeout_is_its_own),
      cmocka_unit_test(test_cancel_races_complete),
      cmocka_unit_test(test_flight_age_limit),
      cmocka_unit_test(test_blocking_wait_capped_by_age),
      cmocka_unit_test(test_forget),
      cmocka_unit_test(test_unshared_goes_solo),
      cmocka_unit_test(test_limits_overload),
      cmocka_unit_test(test_keys_do_not_wait_on_each_other),
      cmocka_unit_test(test_mixed_keys_threads),
      cmocka_unit_test(test_top_ranks_by_waiters),
      cmocka_unit_test(test_top_many_flights),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
