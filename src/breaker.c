/*
 * breaker.c — the closed -> open -> half-open circuit breaker.
 *
 * Transitions (all under b->lock; nothing else changes state):
 *   CLOSED    -> OPEN       a run of consecutive_failures failures, or the
 *                           failure rate over the last `window` outcomes
 *                           (once min_volume are present) reaches
 *                           failure_rate; open for open_ns
 *   OPEN      -> HALF_OPEN  the first allow() at or after open_until
 *   HALF_OPEN -> CLOSED     half_open_probes probe successes recorded
 *   HALF_OPEN -> OPEN       any probe failure
 *   any       -> OPEN       a failure reporting Retry-After: open for exactly
 *                           that long, capped by max_open_ns (if already
 *                           open, the later deadline wins: an upstream's
 *                           word never shortens a pause)
 *
 * Invariants:
 * - b->state is written only with b->lock held; it is atomic so that allow()
 *   can answer CLOSED (the common case) without the lock. A transition racing
 *   that read is the same as the allow() having come just before it.
 * - The outcome history (consecutive run, rate window) describes CLOSED
 *   only: it is cleared on every entry to CLOSED and fed only while CLOSED.
 * - In HALF_OPEN, probes_given <= half_open_probes, and
 *   probe_successes + probes_out <= probes_given. Records carry no token, so
 *   a record counts as a probe's outcome only while a probe is out; any other
 *   record there (a late call from before the breaker opened) is counted in
 *   the stats and otherwise ignored, as are all records while OPEN.
 * - Probe slots are not reissued in one half-open period: a caller that is
 *   allowed must record exactly once, or the breaker stays half-open.
 */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

struct coalesce_breaker {
  uint32_t magic;
  _Atomic int state; /* coalesce_breaker_state_t; written under lock */
  pthread_mutex_t lock;
  coalesce_breaker_opts_t opts;

  /* OPEN */
  uint64_t open_until; /* clock reading at which a probe may go */

  /* HALF_OPEN */
  unsigned probes_given;
  unsigned probes_out;
  unsigned probe_successes;

  /* CLOSED: consecutive-failure rule */
  unsigned run;
  /* CLOSED: rate rule, a ring of the last opts.window outcomes */
  bool *ring; /* true = failure; NULL when window == 0 */
  unsigned ring_next;
  unsigned ring_count;
  unsigned ring_failures;

  /* statistics */
  uint64_t opened, half_opened, closed;
  uint64_t successes, failures, rejections;
};

void coalesce_breaker_opts_init(coalesce_breaker_opts_t *opts) {
  *opts = (coalesce_breaker_opts_t){
      .consecutive_failures = 5,
      .window = 0,
      .min_volume = 0,
      .failure_rate = 0.5,
      .open_ns = 30 * COALESCE_NS_PER_SEC,
      .max_open_ns = 3600 * COALESCE_NS_PER_SEC,
      .half_open_probes = 1,
      .clock = NULL,
  };
}

int coalesce_breaker_new(const coalesce_breaker_opts_t *opts,
                         coalesce_breaker_t **out) {
  if (out == NULL)
    return COALESCE_EINVAL;
  *out = NULL;
  coalesce_breaker_opts_t o;
  if (opts == NULL)
    coalesce_breaker_opts_init(&o);
  else
    o = *opts;
  /* written as a negation so that NaN is refused too */
  if (!(o.failure_rate > 0.0 && o.failure_rate <= 1.0))
    return COALESCE_EINVAL;
  if (o.half_open_probes < 1)
    return COALESCE_EINVAL;
  if (o.window > 0 && o.window < o.min_volume)
    return COALESCE_EINVAL;

  coalesce_breaker_t *b = calloc(1, sizeof(*b));
  if (b == NULL)
    return COALESCE_ENOMEM;
  if (o.window > 0) {
    b->ring = calloc(o.window, sizeof(*b->ring));
    if (b->ring == NULL) {
      free(b);
      return COALESCE_ENOMEM;
    }
  }
  if (pthread_mutex_init(&b->lock, NULL) != 0) {
    free(b->ring);
    free(b);
    return COALESCE_ENOMEM;
  }
  b->opts = o;
  atomic_init(&b->state, COALESCE_BREAKER_CLOSED);
  b->magic = COALESCE__MAGIC_BREAKER;
  *out = b;
  return 0;
}

void coalesce_breaker_free(coalesce_breaker_t *b) {
  if (b == NULL)
    return;
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  b->magic = 0;
  pthread_mutex_destroy(&b->lock);
  free(b->ring);
  free(b);
}

/* --- transitions (b->lock held) ------------------------------------------ */

static coalesce_breaker_state_t state_locked(const coalesce_breaker_t *b) {
  return (coalesce_breaker_state_t)atomic_load_explicit(&b->state,
                                                        memory_order_relaxed);
}

static void set_state_locked(coalesce_breaker_t *b,
                             coalesce_breaker_state_t s) {
  atomic_store_explicit(&b->state, (int)s, memory_order_relaxed);
}

static void enter_open_locked(coalesce_breaker_t *b, uint64_t now,
                              uint64_t for_ns) {
  if (state_locked(b) != COALESCE_BREAKER_OPEN)
    b->opened++;
  set_state_locked(b, COALESCE_BREAKER_OPEN);
  b->open_until = coalesce__add_sat(now, for_ns);
}

static void enter_half_open_locked(coalesce_breaker_t *b) {
  b->half_opened++;
  set_state_locked(b, COALESCE_BREAKER_HALF_OPEN);
  b->probes_given = 0;
  b->probes_out = 0;
  b->probe_successes = 0;
}

/* A fresh start: the history that tripped us says nothing about now. */
static void enter_closed_locked(coalesce_breaker_t *b) {
  b->closed++;
  set_state_locked(b, COALESCE_BREAKER_CLOSED);
  b->run = 0;
  b->ring_next = 0;
  b->ring_count = 0;
  b->ring_failures = 0;
}

/* Feeds one CLOSED outcome to both rules; true when either says trip. */
static bool closed_outcome_trips_locked(coalesce_breaker_t *b, bool failed) {
  const coalesce_breaker_opts_t *o = &b->opts;
  bool trip = false;

  b->run = failed ? b->run + 1 : 0;
  if (o->consecutive_failures > 0 && b->run >= o->consecutive_failures)
    trip = true;

  if (o->window > 0) {
    if (b->ring_count == o->window)
      b->ring_failures -= b->ring[b->ring_next]; /* the oldest leaves */
    else
      b->ring_count++;
    b->ring[b->ring_next] = failed;
    b->ring_failures += failed;
    b->ring_next = (b->ring_next + 1) % o->window;

    unsigned need = o->min_volume > 0 ? o->min_volume : 1;
    /* A division, not failure_rate * count: both sides are then correctly
     * rounded forms of the same fraction, so 3/10 meets a rate of 0.3. */
    if (b->ring_count >= need &&
        (double)b->ring_failures / (double)b->ring_count >= o->failure_rate)
      trip = true;
  }
  return trip;
}

/* --- the call path -------------------------------------------------------- */

int coalesce_breaker_allow(coalesce_breaker_t *b) {
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  if (atomic_load_explicit(&b->state, memory_order_relaxed) ==
      COALESCE_BREAKER_CLOSED)
    return 0;

  int rc = 0;
  pthread_mutex_lock(&b->lock);
  if (state_locked(b) == COALESCE_BREAKER_OPEN &&
      coalesce_clock_now(b->opts.clock) >= b->open_until)
    enter_half_open_locked(b); /* and this caller takes the first probe */
  switch (state_locked(b)) {
  case COALESCE_BREAKER_CLOSED:
    break;
  case COALESCE_BREAKER_OPEN:
    rc = COALESCE_ECIRCUIT_OPEN;
    break;
  case COALESCE_BREAKER_HALF_OPEN:
    if (b->probes_given < b->opts.half_open_probes) {
      b->probes_given++;
      b->probes_out++;
    } else {
      rc = COALESCE_ECIRCUIT_OPEN;
    }
    break;
  }
  if (rc != 0)
    b->rejections++;
  pthread_mutex_unlock(&b->lock);
  return rc;
}

void coalesce_breaker_record(coalesce_breaker_t *b, bool success,
                             uint64_t retry_after_ns) {
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  pthread_mutex_lock(&b->lock);
  uint64_t now = coalesce_clock_now(b->opts.clock);
  coalesce_breaker_state_t s = state_locked(b);
  if (success)
    b->successes++;
  else
    b->failures++;

  /* A probe's outcome, if one is out; see the header on untokened records. */
  bool probe = s == COALESCE_BREAKER_HALF_OPEN && b->probes_out > 0;
  if (probe)
    b->probes_out--;

  if (!success && retry_after_ns > 0) {
    uint64_t pause = retry_after_ns < b->opts.max_open_ns ? retry_after_ns
                                                          : b->opts.max_open_ns;
    uint64_t until = coalesce__add_sat(now, pause);
    if (s != COALESCE_BREAKER_OPEN || until > b->open_until)
      enter_open_locked(b, now, pause);
  } else if (s == COALESCE_BREAKER_CLOSED) {
    if (closed_outcome_trips_locked(b, !success))
      enter_open_locked(b, now, b->opts.open_ns);
  } else if (probe) {
    if (!success)
      enter_open_locked(b, now, b->opts.open_ns);
    else if (++b->probe_successes >= b->opts.half_open_probes)
      enter_closed_locked(b);
  }
  /* else: OPEN, or HALF_OPEN with no probe out — a late outcome */
  pthread_mutex_unlock(&b->lock);
}

void coalesce_breaker_cancel(coalesce_breaker_t *b) {
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  pthread_mutex_lock(&b->lock);
  /* A probe that was never sent: its slot may be handed out again. */
  if (state_locked(b) == COALESCE_BREAKER_HALF_OPEN && b->probes_out > 0) {
    b->probes_out--;
    b->probes_given--;
  }
  pthread_mutex_unlock(&b->lock);
}

/* --- inspection ----------------------------------------------------------- */

/* The state a caller would meet now: OPEN past its deadline reads as
 * HALF_OPEN, though only allow() makes that move (and hands out probes). */
static coalesce_breaker_state_t view_locked(coalesce_breaker_t *b) {
  coalesce_breaker_state_t s = state_locked(b);
  if (s == COALESCE_BREAKER_OPEN &&
      coalesce_clock_now(b->opts.clock) >= b->open_until)
    return COALESCE_BREAKER_HALF_OPEN;
  return s;
}

coalesce_breaker_state_t coalesce_breaker_state(coalesce_breaker_t *b) {
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  pthread_mutex_lock(&b->lock);
  coalesce_breaker_state_t s = view_locked(b);
  pthread_mutex_unlock(&b->lock);
  return s;
}

uint64_t coalesce_breaker_retry_in(coalesce_breaker_t *b) {
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  uint64_t left = 0;
  pthread_mutex_lock(&b->lock);
  if (state_locked(b) == COALESCE_BREAKER_OPEN) {
    uint64_t now = coalesce_clock_now(b->opts.clock);
    if (now < b->open_until)
      left = b->open_until - now;
  }
  pthread_mutex_unlock(&b->lock);
  return left;
}

const char *coalesce_breaker_state_name(coalesce_breaker_state_t s) {
  switch (s) {
  case COALESCE_BREAKER_CLOSED:
    return "closed";
  case COALESCE_BREAKER_OPEN:
    return "open";
  case COALESCE_BREAKER_HALF_OPEN:
    return "half_open";
  }
  return "unknown";
}

void coalesce_breaker_stats(coalesce_breaker_t *b, coalesce_stats_t *s) {
  COALESCE__CHECK(b, COALESCE__MAGIC_BREAKER);
  pthread_mutex_lock(&b->lock);
  s->breaker_state = (uint64_t)view_locked(b);
  s->breaker_opened = b->opened;
  s->breaker_half_opened = b->half_opened;
  s->breaker_closed = b->closed;
  s->breaker_successes = b->successes;
  s->breaker_failures = b->failures;
  s->breaker_rejections = b->rejections;
  pthread_mutex_unlock(&b->lock);
}
