/*
 * quota.c — local call budgets and the upstream's observed quota; see
 * quota.h for the model, the wiring and the config keys.
 *
 * Invariants:
 * - Everything below `lock` in struct quota is read and written with the
 *   lock held; the fields above it are fixed by quota_new.
 * - Locks are taken child then parent (a chain is at most two deep:
 *   quota_new refuses a parent that has a parent), so takes on a route and
 *   on its upstream cannot deadlock.
 * - A take commits on every level or on none: all levels are checked with
 *   all locks held, then all are charged.
 * - GCRA: tat - now <= burst_ns after every commit; all ns quantities stay
 *   below 2^62 (NS_CAP), so tat + interval never wraps for a clock below
 *   2^63 ns (292 years of uptime).
 * - Period windows live on a "period timeline" (period_time): Unix-epoch
 *   wall ns, or clock readings with align_start. period_start only moves
 *   forward to a later window (used = 0); if the timeline steps back it
 *   takes the earlier window but keeps the use.
 */
#include "quota.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define QUOTA_MAGIC 0x51554f54u /* "QUOT" */
#define NS_CAP ((uint64_t)1 << 62)
#define NS_PER_MS COALESCE_NS_PER_MS
#define NS_PER_S COALESCE_NS_PER_SEC
#define WEEK_NS (UINT64_C(7) * 86400 * NS_PER_S)
/* 1970-01-05, the first Monday: weeks start on Monday 00:00 UTC (ISO). */
#define MONDAY_NS (UINT64_C(4) * 86400 * NS_PER_S)
/* Month counts above this (100,000 years) are read as plain durations. */
#define MAX_MONTHS 1200000u

struct quota {
  uint32_t magic;
  quota_t *parent;
  const coalesce_clock_t *clock;
  double rate; /* 0: no bucket */
  uint32_t burst;
  uint64_t interval_ns; /* one call's worth of time; 0: no bucket */
  uint64_t burst_ns;    /* burst * interval_ns, capped */
  uint64_t period_ns;   /* 0: no period cap */
  uint64_t period_max;
  uint32_t months;      /* > 0: the period is that many calendar months */
  uint64_t period_base; /* windows: period_base + k * period_ns */
  bool align_start;     /* period timeline = the clock, not the wall */
  int64_t wall_offset;  /* wall = clock + this, for an injected clock */
  double low_fraction;
  bool obey;

  pthread_mutex_t lock;
  uint64_t tat;          /* GCRA theoretical arrival time */
  uint64_t period_start; /* current window on the period timeline */
  uint64_t period_end;
  uint64_t period_used;
  uint64_t blocked_until; /* obey: no take before this reading */
  /* the upstream's account */
  bool observed;
  rl_family_t source;
  int64_t limit, remaining, window_s;
  bool has_reset;
  uint64_t reset_at; /* clock reading */
  time_t observed_at;
  uint64_t observed_ns;
  /* counters */
  uint64_t granted, rejections, upstream_429s, observations;
};

static inline void check(const quota_t *q) {
  assert(q != NULL && q->magic == QUOTA_MAGIC);
  (void)q;
}

static uint64_t sat_mul(uint64_t a, uint64_t b) {
  if (a != 0 && b > NS_CAP / a)
    return NS_CAP;
  return a * b > NS_CAP ? NS_CAP : a * b;
}

static uint64_t max_u64(uint64_t a, uint64_t b) {
  return a > b ? a : b;
}

/* ------------------------------------------------------------ windows */

/* Now on the period timeline (see the invariants). */
static uint64_t period_time(const quota_t *q, uint64_t mono) {
  if (q->align_start)
    return mono;
  if (q->clock != NULL) /* modular: the offset may be negative */
    return mono + (uint64_t)q->wall_offset;
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || ts.tv_sec < 0)
    return 0;
  return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* 00:00 UTC on the 1st of month `idx` (months since January 1970). */
static uint64_t month_start_ns(uint64_t idx) {
  struct tm tm = {
      .tm_year = (int)(70 + idx / 12), .tm_mon = (int)(idx % 12), .tm_mday = 1};
  time_t s = timegm(&tm);
  return s < 0 ? NS_CAP : sat_mul((uint64_t)s, NS_PER_S);
}

/* The window [*start, *end) containing timeline instant t. */
static void window_at(const quota_t *q, uint64_t t, uint64_t *start,
                      uint64_t *end) {
  if (q->months != 0) {
    time_t s = (time_t)(t / NS_PER_S);
    struct tm tm;
    if (gmtime_r(&s, &tm) != NULL && tm.tm_year >= 70) {
      uint64_t idx = (uint64_t)(tm.tm_year - 70) * 12 + (uint64_t)tm.tm_mon;
      idx -= idx % q->months;
      *start = month_start_ns(idx);
      *end = month_start_ns(idx + q->months);
      return;
    }
    *start = 0; /* unreadable time: one long window, never a free budget */
    *end = NS_CAP;
    return;
  }
  if (t < q->period_base) { /* before the first boundary (synthetic) */
    *start = 0;
    *end = q->period_base;
    return;
  }
  *start = t - (t - q->period_base) % q->period_ns;
  *end = *start + q->period_ns; /* both < 2^63 */
}

void quota_opts_init(quota_opts_t *o) {
  *o = (quota_opts_t){.low_fraction = QUOTA_DEFAULT_LOW_FRACTION};
}

quota_t *quota_new(const quota_opts_t *o) {
  if (o == NULL || !isfinite(o->rate_per_sec) || o->rate_per_sec < 0 ||
      o->rate_per_sec > 1e9 || (o->period_ms == 0) != (o->period_max == 0) ||
      !(o->low_fraction >= 0 && o->low_fraction <= 1))
    return NULL;
  if (o->parent != NULL &&
      (o->parent->parent != NULL || o->parent->clock != o->clock))
    return NULL;
  quota_t *q = calloc(1, sizeof *q);
  if (q == NULL)
    return NULL;
  if (pthread_mutex_init(&q->lock, NULL) != 0) {
    free(q);
    return NULL;
  }
  q->magic = QUOTA_MAGIC;
  q->parent = o->parent;
  q->clock = o->clock;
  q->rate = o->rate_per_sec;
  if (q->rate > 0) {
    double ival = 1e9 / q->rate;
    q->interval_ns = ival >= (double)NS_CAP ? NS_CAP
                     : ival < 1.0           ? 1
                                            : (uint64_t)llround(ival);
    double b = ceil(q->rate);
    q->burst = o->burst ? o->burst : b >= UINT32_MAX ? UINT32_MAX : (uint32_t)b;
    if (q->burst == 0)
      q->burst = 1;
    q->burst_ns = sat_mul(q->burst, q->interval_ns);
  }
  q->period_ns = sat_mul(o->period_ms, NS_PER_MS);
  q->period_max = o->period_max;
  q->align_start = o->align_start;
  q->wall_offset = o->wall_offset_ns;
  if (!q->align_start && o->period_ms != 0) {
    if (o->period_ms % QUOTA_MONTH_MS == 0 &&
        o->period_ms / QUOTA_MONTH_MS <= MAX_MONTHS)
      q->months = (uint32_t)(o->period_ms / QUOTA_MONTH_MS);
    else if (q->period_ns % WEEK_NS == 0)
      q->period_base = MONDAY_NS;
  }
  q->low_fraction = o->low_fraction;
  q->obey = o->obey_upstream;
  q->limit = q->remaining = q->window_s = RL_ABSENT;
  uint64_t now = coalesce_clock_now(q->clock);
  q->tat = now; /* a full bucket */
  if (q->period_ns != 0) {
    uint64_t t = period_time(q, now);
    if (q->align_start)
      q->period_base = t;
    window_at(q, t, &q->period_start, &q->period_end); /* a partial one */
  }
  return q;
}

void quota_free(quota_t *q) {
  if (q == NULL)
    return;
  check(q);
  q->magic = 0;
  pthread_mutex_destroy(&q->lock);
  free(q);
}

/* ------------------------------------------------------------------ take */

/* The window and use at timeline instant t, without changing q
 * (snapshots must not move state; takes store the result). */
typedef struct period {
  uint64_t start, end, used;
} period_t;

static period_t period_at(const quota_t *q, uint64_t t) {
  period_t p = {q->period_start, q->period_end, q->period_used};
  if (t >= p.start && t < p.end)
    return p; /* the common case: no calendar arithmetic */
  window_at(q, t, &p.start, &p.end);
  if (p.start > q->period_start)
    p.used = 0; /* a later window; an earlier one (the wall clock
                 * stepped back) keeps the use: a step is no fresh budget */
  return p;
}

static void period_store(quota_t *q, period_t p) {
  q->period_start = p.start;
  q->period_end = p.end;
  q->period_used = p.used;
}

/* How long until this level allows one call; 0 = now. Lock held. */
static uint64_t level_wait(quota_t *q, uint64_t now) {
  uint64_t wait = q->blocked_until > now ? q->blocked_until - now : 0;
  if (q->period_ns != 0) {
    uint64_t t = period_time(q, now);
    period_t p = period_at(q, t);
    period_store(q, p);
    if (p.used >= q->period_max)
      wait = max_u64(wait, p.end > t ? p.end - t : 1);
  }
  if (q->interval_ns != 0) {
    uint64_t next = max_u64(q->tat, now) + q->interval_ns;
    if (next - now > q->burst_ns)
      wait = max_u64(wait, next - now - q->burst_ns);
  }
  return wait;
}

static void level_commit(quota_t *q, uint64_t now) {
  if (q->period_ns != 0)
    q->period_used++;
  if (q->interval_ns != 0)
    q->tat = max_u64(q->tat, now) + q->interval_ns;
  q->granted++;
}

int quota_take(quota_t *q, uint64_t *retry_after_ns) {
  check(q);
  quota_t *levels[2] = {q, q->parent};
  size_t n = q->parent != NULL ? 2 : 1;
  for (size_t i = 0; i < n; i++) /* child first: the lock order */
    pthread_mutex_lock(&levels[i]->lock);
  uint64_t now = coalesce_clock_now(q->clock); /* parents share the clock */
  uint64_t wait = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t w = level_wait(levels[i], now);
    if (w != 0) {
      levels[i]->rejections++;
      wait = max_u64(wait, w);
    }
  }
  if (wait == 0)
    for (size_t i = 0; i < n; i++)
      level_commit(levels[i], now);
  for (size_t i = n; i-- > 0;)
    pthread_mutex_unlock(&levels[i]->lock);
  if (retry_after_ns != NULL)
    *retry_after_ns = wait;
  return wait == 0 ? 0 : QUOTA_EMPTY;
}

/* --------------------------------------------------------------- observe */

static uint64_t secs_ns(int64_t s) {
  if (s > QUOTA_MAX_BLOCK_S)
    s = QUOTA_MAX_BLOCK_S;
  return (uint64_t)s * NS_PER_S;
}

static void observe_one(quota_t *q, const rl_info_t *rl, bool any, int status,
                        time_t now) {
  pthread_mutex_lock(&q->lock);
  uint64_t mono = coalesce_clock_now(q->clock);
  if (status == 429)
    q->upstream_429s++;
  if (any) {
    q->observed = true;
    q->observations++;
    q->source = rl->family;
    /* Limits and windows rarely change: keep them when not repeated, so a
     * response with only a remaining count still gives a fraction. */
    if (rl->limit != RL_ABSENT)
      q->limit = rl->limit;
    if (rl->window_s != RL_ABSENT)
      q->window_s = rl->window_s;
    q->remaining = rl->remaining;
    q->has_reset = rl->reset_s != RL_ABSENT;
    /* Readings past a month are kept as a month: only display and
     * quota_low depend on it. */
    q->reset_at = q->has_reset ? mono + secs_ns(rl->reset_s) : 0;
    q->observed_at = now;
    q->observed_ns = mono;
  }
  if (q->obey) {
    int64_t block_s = RL_ABSENT;
    if (status == 429)
      block_s =
          rl->retry_after_s != RL_ABSENT ? rl->retry_after_s : rl->reset_s;
    else if (any && rl->remaining == 0)
      block_s = rl->reset_s;
    if (block_s > 0)
      q->blocked_until = max_u64(q->blocked_until, mono + secs_ns(block_s));
    else if (status != 429 && any && rl->remaining > 0)
      q->blocked_until = 0; /* the window turned over early */
  }
  pthread_mutex_unlock(&q->lock);
}

void quota_observe(quota_t *q, const hdr_t *headers, size_t n, int status,
                   time_t now) {
  check(q);
  rl_info_t rl;
  bool any = rl_parse(headers, headers != NULL ? n : 0, now, &rl);
  for (; q != NULL; q = q->parent) /* one lock at a time: no order issue */
    observe_one(q, &rl, any, status, now);
}

/* -------------------------------------------------------------- reading */

static bool low_locked(const quota_t *q, uint64_t now) {
  double f = q->low_fraction;
  bool reset_passed = q->has_reset && now >= q->reset_at;
  if (q->observed && q->remaining != RL_ABSENT && !reset_passed) {
    if (q->limit > 0) {
      if ((double)q->remaining < f * (double)q->limit)
        return true;
    } else if (q->remaining == 0 && f > 0) {
      return true;
    }
  }
  if (q->period_ns != 0) {
    uint64_t used = period_at(q, period_time(q, now)).used;
    uint64_t left = used >= q->period_max ? 0 : q->period_max - used;
    if ((double)left < f * (double)q->period_max)
      return true;
  }
  return false;
}

bool quota_low(quota_t *q) {
  check(q);
  pthread_mutex_lock(&q->lock);
  bool low = low_locked(q, coalesce_clock_now(q->clock));
  pthread_mutex_unlock(&q->lock);
  return low;
}

void quota_snapshot(quota_t *q, quota_snapshot_t *out) {
  check(q);
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&q->lock);
  uint64_t now = coalesce_clock_now(q->clock);
  out->has_rate = q->interval_ns != 0;
  out->rate_per_sec = q->rate;
  out->burst = q->burst;
  if (out->has_rate) {
    uint64_t ahead = max_u64(q->tat, now) - now; /* <= burst_ns */
    out->tokens = (double)(q->burst_ns - ahead) / (double)q->interval_ns;
  }
  out->has_period = q->period_ns != 0;
  if (out->has_period) {
    uint64_t t = period_time(q, now);
    period_t p = period_at(q, t);
    out->period_ms = q->period_ns / NS_PER_MS;
    out->period_max = q->period_max;
    out->period_used = p.used;
    out->period_remaining =
        p.used >= q->period_max ? 0 : q->period_max - p.used;
    /* Rounded up, so a reset is never shown as 0 before it happens. */
    out->period_reset_in_ms =
        p.end > t ? (p.end - t + NS_PER_MS - 1) / NS_PER_MS : 0;
  }
  if (q->blocked_until > now)
    out->blocked_for_ms = (q->blocked_until - now + NS_PER_MS - 1) / NS_PER_MS;
  out->granted = q->granted;
  out->rejections = q->rejections;
  out->upstream_429s = q->upstream_429s;
  out->observations = q->observations;
  out->observed = q->observed;
  out->source = q->source;
  out->limit = q->limit;
  out->remaining = q->remaining;
  out->window_s = q->window_s;
  out->reset_in_s = RL_ABSENT;
  if (q->has_reset)
    out->reset_in_s =
        q->reset_at > now
            ? (int64_t)((q->reset_at - now + NS_PER_S - 1) / NS_PER_S)
            : 0;
  out->observed_at = q->observed_at;
  out->observed_age_ms = q->observed ? (now - q->observed_ns) / NS_PER_MS : 0;
  out->low = low_locked(q, now);
  pthread_mutex_unlock(&q->lock);
}

void quota_reset_stats(quota_t *q) {
  check(q);
  pthread_mutex_lock(&q->lock);
  q->granted = q->rejections = q->upstream_429s = q->observations = 0;
  pthread_mutex_unlock(&q->lock);
}

/* ---------------------------------------------------------- config values */

static const struct {
  const char *name;
  uint64_t ms;
} units[] = {
    {"ms", 1},
    {"s", 1000},
    {"sec", 1000},
    {"second", 1000},
    {"seconds", 1000},
    {"m", 60000},
    {"min", 60000},
    {"minute", 60000},
    {"minutes", 60000},
    {"h", 3600000},
    {"hour", 3600000},
    {"hours", 3600000},
    {"d", 86400000},
    {"day", 86400000},
    {"days", 86400000},
    {"w", 604800000},
    {"week", 604800000},
    {"weeks", 604800000},
    {"month", QUOTA_MONTH_MS},
    {"months", QUOTA_MONTH_MS}, /* calendar */
};

static const char *skip_ws(const char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  return s;
}

static bool is_off(const char *s) {
  s = skip_ws(s);
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  static const char *const off[] = {"off", "none", "0", "unlimited"};
  for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
    if (strlen(off[i]) == n && strncasecmp(s, off[i], n) == 0)
      return true;
  return false;
}

/* DIGITS ["." DIGITS]; no sign, exponent, inf or nan (strtod takes them). */
static const char *parse_decimal(const char *s, double *out, bool *whole) {
  double v = 0;
  const char *p = s;
  while (*p >= '0' && *p <= '9' && v < 1e18)
    v = v * 10 + (*p++ - '0');
  if (p == s || (*p >= '0' && *p <= '9'))
    return NULL;
  *whole = true;
  if (*p == '.') {
    p++;
    double scale = 0.1;
    if (!(*p >= '0' && *p <= '9'))
      return NULL;
    for (; *p >= '0' && *p <= '9'; p++, scale /= 10)
      v += (*p - '0') * scale;
    *whole = false;
  }
  *out = v;
  return p;
}

/* "N / [COUNT] UNIT" -> N and the period in ms. */
static int parse_per(const char *s, double *n, bool *whole, uint64_t *ms) {
  const char *p = parse_decimal(skip_ws(s), n, whole);
  if (p == NULL)
    return COALESCE_EINVAL;
  p = skip_ws(p);
  if (*p++ != '/')
    return COALESCE_EINVAL;
  p = skip_ws(p);
  uint64_t count = 1;
  if (*p >= '0' && *p <= '9') {
    count = 0;
    while (*p >= '0' && *p <= '9' && count <= 1000000)
      count = count * 10 + (uint64_t)(*p++ - '0');
    if (count == 0 || count > 1000000)
      return COALESCE_EINVAL;
    p = skip_ws(p);
  }
  size_t len = 0;
  while ((p[len] >= 'a' && p[len] <= 'z') || (p[len] >= 'A' && p[len] <= 'Z'))
    len++;
  if (*skip_ws(p + len) != '\0')
    return COALESCE_EINVAL;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strlen(units[i].name) == len &&
        strncasecmp(p, units[i].name, len) == 0) {
      *ms = count * units[i].ms; /* <= 10^6 * 2.7e9: no overflow */
      return 0;
    }
  return COALESCE_EINVAL;
}

int quota_parse_rate(const char *s, double *per_sec) {
  if (s == NULL || per_sec == NULL)
    return COALESCE_EINVAL;
  if (is_off(s)) {
    *per_sec = 0;
    return 0;
  }
  double n;
  bool whole;
  uint64_t ms;
  int rc = parse_per(s, &n, &whole, &ms);
  if (rc != 0)
    return rc;
  double rate = n * 1000.0 / (double)ms;
  if (rate > 1e9)
    return COALESCE_EINVAL;
  *per_sec = rate;
  return 0;
}

int quota_parse_period(const char *s, uint64_t *max, uint64_t *period_ms) {
  if (s == NULL || max == NULL || period_ms == NULL)
    return COALESCE_EINVAL;
  if (is_off(s)) {
    *max = *period_ms = 0;
    return 0;
  }
  double n;
  bool whole;
  uint64_t ms;
  int rc = parse_per(s, &n, &whole, &ms);
  if (rc != 0 || !whole || n > 1e15)
    return COALESCE_EINVAL;
  *max = (uint64_t)n;
  *period_ms = *max != 0 ? ms : 0;
  return 0;
}
