/*
 * quota.h — upstream quota protection: a local call budget per upstream
 * (optionally per route) and the upstream's own account of its limit.
 *
 * A metered upstream allows so many calls per second / minute / month and
 * answers 429 past that. A quota_t does two things:
 *
 *   budget    a token bucket (rate_per_sec, burst) and an optional cap per
 *             fixed period (period_max calls per period_ms). quota_take()
 *             spends one call or says how long until one is free; it never
 *             queues. Off (always granted) unless configured.
 *   observe   quota_observe() reads the upstream's RateLimit / X-RateLimit
 *             fields and counts 429s (ratelimit_headers.h), so the admin
 *             endpoints can show limit / remaining / reset, and /health can
 *             say "degraded" when little is left (quota_low()).
 *
 * Thread model: one quota_t per upstream (and per route that has its own
 * budget) is shared by all worker loops; every function is thread-safe.
 * Each quota_t has one mutex. A route quota may have a parent (its
 * upstream's quota): quota_take() on the child spends from both or from
 * neither. Lock order: child before parent, always upward; nothing locks
 * downward, so there is no cycle. A mutex rather than a CAS on packed
 * state because the state (bucket, period, upstream block, counters) does
 * not fit in 64 bits, and it is taken once per real upstream call only.
 *
 * Bucket: GCRA, the exact integer form of a token bucket. Each call moves a
 * "theoretical arrival time" (tat) one interval (1/rate) on; a call is
 * allowed while tat - now <= burst intervals. No floating point on the
 * hot path and no refill timer.
 * Period: windows aligned to UTC, as metered upstreams count them: a
 * period that is a whole number of QUOTA_MONTH_MS counts calendar months
 * (the 1st 00:00 UTC to the next 1st; N months from January 1970), a whole
 * number of weeks starts on Monday 00:00 UTC, and any other period is a
 * multiple of itself since the Unix epoch ("/day" from 00:00 UTC, "/15m"
 * at :00 :15 :30 :45), so every instance of a fleet agrees. The first
 * window after quota_new() is partial but gets the whole period_max (the
 * calls made before start are unknown). Windows come from the wall clock
 * (CLOCK_REALTIME, or the injected clock + wall_offset_ns); waits are
 * durations. Should the wall clock step back across a boundary, the use
 * so far is kept (a step is no fresh budget). align_start restores windows
 * from quota_new() on the monotonic clock. A restart starts afresh — the
 * upstream's own fields stay the durable truth.
 *
 * ---------------------------------------------------------------- wiring
 * (for the proxy and the admin listener)
 *
 *  - app start: per [upstream NAME], quota_opts_init(&o), copy the config
 *    (keys below) and o.clock, quota_new(&o). Always create one: observing
 *    costs nothing and the stats show the upstream's figures even with no
 *    budget. Per [route] with its own budget: o.parent = the upstream's.
 *  - proxy, just before an upstream call (leader fetch, background refresh,
 *    pass-through): `uint64_t wait; if (quota_take(q, &wait) != 0)` -> do
 *    not call; serve stale if the cache has a copy (X-Cache: STALE or
 *    STALE-IF-ERROR), else 429 with `Retry-After: quota_retry_after_s(wait)`
 *    and `{"error":"quota_exhausted","message":...}`. Never for hits, stale
 *    hits or coalesced followers: they make no call. In the loader the
 *    fetch callback fails with COALESCE_EQUOTA so every waiter of the flight
 *    gets the same answer.
 *  - proxy, on every upstream response: quota_observe(q, hdrs, n, status,
 *    time(NULL)) (the route's quota forwards to its parent).
 *  - stats JSON, per upstream: "quota": {"limit","remaining","reset_in_s",
 *    "window_s","observed_at" (Unix s), "source" (rl_family_name),
 *    "low", "rejections", "upstream_429s", "granted",
 *    "budget": {"rate_per_sec","burst","tokens","period_s","period_max",
 *    "period_used","period_remaining","period_reset_in_s"} (budget only
 *    when configured), "blocked_for_s"}; absent figures (-1) as null.
 *  - /metrics: coalesced_quota_rejections_total{upstream},
 *    coalesced_upstream_429_total{upstream}, coalesced_quota_tokens,
 *    coalesced_quota_period_used, coalesced_quota_period_remaining,
 *    coalesced_upstream_ratelimit_limit / _remaining / _reset_seconds
 *    (gauges, only once observed).
 *  - /health: "degraded" (HTTP 200) when quota_low() for some upstream;
 *    name them in a "quota_low": [...] array.
 *  - POST /stats/reset: quota_reset_stats() (counters only, not the budget).
 *
 * ---------------------------------------------------- config proposal
 * In [upstream NAME] (and the same first three in [route PREFIX], giving a
 * route budget whose parent is its upstream's). All off by default.
 *   rate_limit          = 10/s | 600/m | 0.5/s | off       (quota_parse_rate)
 *   rate_burst          = 20       calls; default one second's worth, min 1
 *   quota               = 10000/day | 500000/month | off (quota_parse_period)
 *   quota_low_fraction  = 0.1      0..1; /health degraded below it
 *   quota_obey_upstream = off      on: also refuse while the upstream says
 *                                  0 remaining until its reset, or after a
 *                                  429 until its Retry-After. Off by default
 *                                  because an upstream's figures are often
 *                                  per API key: when clients bring their own
 *                                  keys, one client's exhaustion must not
 *                                  block the others.
 * Units: ms, s, m (minute), h, d/day, w/week, month (calendar months),
 * optionally with a count ("100/15m"); names may be spelt out (sec, min,
 * hour...).
 */
#ifndef COALESCED_QUOTA_H
#define COALESCED_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "coalesce.h"
#include "ratelimit_headers.h"

#define QUOTA_EMPTY COALESCE_EQUOTA /* quota_take: no call allowed now */
#define QUOTA_DEFAULT_LOW_FRACTION 0.1
/* An upstream's word blocks for at most this long (a misread epoch must
 * not shut an upstream for years). */
#define QUOTA_MAX_BLOCK_S (31 * 86400)
/* "/month" in ms: the mean Gregorian month (365.2425 d / 12), so stats
 * show a true average; quota_new() reads a period_ms that is a whole
 * multiple of it as that many calendar months. */
#define QUOTA_MONTH_MS UINT64_C(2629746000)

typedef struct quota quota_t;

typedef struct quota_opts {
  double rate_per_sec; /* token bucket refill; 0 = no bucket */
  uint32_t burst;      /* bucket size; 0 = ceil(rate_per_sec), min 1 */
  uint64_t period_ms;  /* period for period_max (UTC-aligned); 0 = no cap */
  uint64_t period_max; /* calls per period; 0 = no cap */
  double low_fraction; /* quota_low() below this remaining fraction */
  bool obey_upstream;  /* refuse while the upstream says it is exhausted */
  quota_t *parent;     /* takes spend from it too; must outlive this one */
  const coalesce_clock_t *clock; /* NULL: CLOCK_MONOTONIC; must outlive */
  /* Unix-epoch wall time for the period windows. With clock NULL it is
   * CLOCK_REALTIME and this is ignored; with an injected clock (tests) it
   * is clock + wall_offset_ns. */
  int64_t wall_offset_ns;
  bool align_start; /* windows from quota_new(), not UTC boundaries */
} quota_opts_t;

/* Defaults: no budget, low_fraction QUOTA_DEFAULT_LOW_FRACTION, no
 * obeying, no parent, the monotonic clock, UTC-aligned windows. */
void quota_opts_init(quota_opts_t *o);

/* NULL on allocation failure or invalid options (negative or non-finite
 * rate, rate above 10^9/s, period_max without period_ms or the reverse,
 * low_fraction outside [0, 1]). */
quota_t *quota_new(const quota_opts_t *o);
/* Frees a quota nobody uses any more (children first). NULL is a no-op. */
void quota_free(quota_t *q);

/* Spends one call from q and every ancestor, or from none. Returns 0, or
 * QUOTA_EMPTY with *retry_after_ns (may be NULL) set to the wait until
 * every level would allow one call (> 0). A refusal counts as a rejection
 * on each level that refused. */
int quota_take(quota_t *q, uint64_t *retry_after_ns);

/* Seconds for a Retry-After field: the wait rounded up, at least 1. */
static inline uint64_t quota_retry_after_s(uint64_t wait_ns) {
  uint64_t s = (wait_ns + COALESCE_NS_PER_SEC - 1) / COALESCE_NS_PER_SEC;
  return s ? s : 1;
}

/* Records an upstream response: its rate-limit fields (if any) replace the
 * observed remaining and reset (a limit or window that the response does
 * not repeat is kept), a 429 is counted, and with obey_upstream the
 * upstream's "0 remaining until reset" or 429 + Retry-After (else its
 * reset) blocks takes for that long (at most QUOTA_MAX_BLOCK_S); a later
 * non-429 answer with remaining > 0 lifts the block. A child forwards to
 * its parent. `now` is wall-clock time, for epoch resets and HTTP-dates. */
void quota_observe(quota_t *q, const hdr_t *headers, size_t n, int status,
                   time_t now);

typedef struct quota_snapshot {
  /* local budget */
  bool has_rate; /* a token bucket is configured */
  double rate_per_sec;
  uint32_t burst;
  double tokens;   /* calls the bucket would allow now (fractional) */
  bool has_period; /* a period cap is configured */
  uint64_t period_ms;
  uint64_t period_max;
  uint64_t period_used; /* in the current period */
  uint64_t period_remaining;
  uint64_t period_reset_in_ms;
  uint64_t blocked_for_ms; /* obey_upstream: time left on the block */
  /* counters (quota_reset_stats clears them) */
  uint64_t granted;    /* calls allowed by this level */
  uint64_t rejections; /* takes this level refused */
  uint64_t upstream_429s;
  uint64_t observations; /* responses that carried rate-limit fields */
  /* the upstream's own account, as last observed (RL_ABSENT = unknown) */
  bool observed;
  rl_family_t source;
  int64_t limit;
  int64_t remaining;
  int64_t reset_in_s; /* from the snapshot's time; 0 once passed */
  int64_t window_s;
  time_t observed_at; /* wall clock of that response */
  uint64_t observed_age_ms;
  bool low; /* quota_low() */
} quota_snapshot_t;

void quota_snapshot(quota_t *q, quota_snapshot_t *out);

/* True when little is left: the upstream's remaining is below
 * low_fraction of its limit (or 0 of an unknown limit, low_fraction > 0)
 * and its reported reset has not passed, or the period cap's remaining is
 * below low_fraction of period_max. */
bool quota_low(quota_t *q);

/* Clears the counters; the budget, the block and observations stay. */
void quota_reset_stats(quota_t *q);

/* Config values. Both return 0, or COALESCE_EINVAL (outputs untouched).
 * quota_parse_rate: "10/s", "600/m", "0.5/s", "3600/h", "100/15m" -> calls
 * per second; "off", "none", "0" -> 0 (no bucket). Case-insensitive,
 * spaces allowed around the parts. */
int quota_parse_rate(const char *s, double *per_sec);
/* quota_parse_period: "10000/day", "500000/month", "100/15m" -> a whole
 * number of calls and a period in ms ("month" = QUOTA_MONTH_MS); "off",
 * "none", "0" -> 0 and 0. */
int quota_parse_period(const char *s, uint64_t *max, uint64_t *period_ms);

#endif
