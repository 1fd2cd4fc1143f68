/*
 * admin_metrics.c — GET /metrics: the figures of the stats document in the
 * Prometheus text exposition format 0.0.4, plus per-upstream latency
 * histograms.
 *
 * Format rules kept here: every family has one "# HELP" and one "# TYPE"
 * line and all its samples together (so per-upstream families loop over the
 * upstreams inside the family, never the other way round); label values
 * escape backslash, double quote and newline; histogram buckets are
 * cumulative and the +Inf bucket equals _count. Counters reset with POST
 * /stats/reset, which Prometheus' rate() reads as a counter reset.
 *
 * Consistency: each upstream's buckets are read once into a local copy and
 * _count is their sum, so the histogram is well-formed even while workers
 * keep adding; _sum is read separately and may lead or lag by a sample.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "batch.h"
#include "fleet.h"
#include "quota.h"

/* ------------------------------------------------------- text buffer */

typedef struct text {
  char *p;
  size_t len, cap;
  bool failed; /* an allocation failed: the result is dropped */
} text_t;

static void emit(text_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void emit(text_t *t, const char *fmt, ...) {
  if (t->failed)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = true;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n + 1;
    char *p = realloc(t->p, cap);
    if (p == NULL) {
      t->failed = true;
      return;
    }
    t->p = p;
    t->cap = cap;
  }
}

static void family(text_t *t, const char *name, const char *type,
                   const char *help) {
  emit(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value escaped per the format (\\, \", \n), malloc'd. */
static char *label_escape(const char *s) {
  size_t n = 0;
  for (const char *c = s; *c; c++)
    n += (*c == '\\' || *c == '"' || *c == '\n') ? 2 : 1;
  char *out = malloc(n + 1), *o = out;
  if (out == NULL)
    return NULL;
  for (const char *c = s; *c; c++) {
    if (*c == '\\' || *c == '"' || *c == '\n') {
      *o++ = '\\';
      *o++ = *c == '\n' ? 'n' : *c;
    } else {
      *o++ = *c;
    }
  }
  *o = '\0';
  return out;
}

/* ---------------------------------------------------------- histogram */

double admin_latency_quantile(const metrics_upstream_t *u, double q) {
  uint64_t b[METRIC_LATENCY_BUCKETS + 1], count = 0;
  for (size_t i = 0; i <= METRIC_LATENCY_BUCKETS; i++) {
    b[i] = metrics_get((_Atomic uint64_t *)&u->latency_bucket[i]);
    count += b[i];
  }
  if (count == 0)
    return 0.0;
  if (q <= 0)
    q = 0;
  if (q > 1)
    q = 1;
  double rank = q * (double)count;
  uint64_t below = 0;
  for (size_t i = 0; i < METRIC_LATENCY_BUCKETS; i++) {
    if (b[i] > 0 && (double)(below + b[i]) >= rank) {
      double lo = i == 0 ? 0.0 : metrics_latency_bounds[i - 1];
      double hi = metrics_latency_bounds[i];
      return lo + (hi - lo) * ((rank - (double)below) / (double)b[i]);
    }
    below += b[i];
  }
  /* In the +Inf bucket: nothing better than the largest finite bound. */
  return metrics_latency_bounds[METRIC_LATENCY_BUCKETS - 1];
}

/* ------------------------------------------------------------- figures */

typedef struct up_snap {
  char *label; /* escaped name */
  coalesce_stats_t breaker;
  metrics_upstream_t *m; /* zero_slot when it has no metric slot */
  quota_snapshot_t quota;
  bool has_quota;
} up_snap_t;

/* Stands in for an upstream without a metric slot: all zero, never
 * written, so reading it from any thread is safe. */
static metrics_upstream_t zero_slot;

static void counter(text_t *t, const char *name, const char *help, uint64_t v) {
  family(t, name, "counter", help);
  emit(t, "%s %" PRIu64 "\n", name, v);
}

static void gauge(text_t *t, const char *name, const char *help, double v) {
  family(t, name, "gauge", help);
  emit(t, "%s %.15g\n", name, v);
}

static void library_figures(text_t *t, const coalesce_stats_t *s) {
  counter(t, "coalesce_requests_total",
          "Cacheable requests (GET/HEAD on a route).", s->total_requests);
  counter(t, "coalesce_coalesced_requests_total",
          "Requests that followed another request's upstream call.",
          s->coalesced_requests);
  counter(t, "coalesce_cache_hits_total", "Requests served fresh from cache.",
          s->cache_hits);
  counter(t, "coalesce_stale_hits_total",
          "Requests served stale while revalidating.", s->stale_hits);
  counter(t, "coalesce_stale_if_error_hits_total",
          "Requests served stale because the upstream call failed.",
          s->stale_if_error);
  counter(t, "coalesce_api_calls_made_total",
          "Upstream calls made, background refreshes included.",
          s->api_calls_made);
  counter(t, "coalesce_api_calls_saved_total",
          "Cache hits + stale hits + coalesced requests.", s->api_calls_saved);
  counter(t, "coalesce_background_refreshes_total",
          "Background refreshes of stale entries.", s->background_refreshes);
  counter(t, "coalesce_wait_timeouts_total",
          "Waiters whose own max_wait passed.", s->wait_timeouts);
  counter(t, "coalesce_breaker_rejections_total",
          "Upstream calls not made because a breaker was open.",
          s->breaker_rejections);
  gauge(t, "coalesce_pending_requests", "Keys in flight now.",
        (double)s->pending_requests);
  gauge(t, "coalesce_hit_rate_percent",
        "100 * api_calls_saved / total_requests (0 when none).",
        s->hit_rate_percent);
  gauge(t, "coalesce_cache_entries", "Entries in the cache.",
        (double)s->cache_entries);
  gauge(t, "coalesce_cache_bytes", "Bytes charged against the cache budget.",
        (double)s->cache_bytes);
  gauge(t, "coalesce_cache_max_bytes", "The cache budget in bytes.",
        (double)s->cache_max_bytes);
  counter(t, "coalesce_cache_evictions_total", "Entries evicted for space.",
          s->cache_evictions);
}

static void daemon_figures(text_t *t, metrics_t *m) {
  family(t, "coalesce_answers_total", "counter",
         "Answers by X-Cache value (PASS: not cacheable, ERROR: an error).");
  for (int i = 0; i < METRIC_SRC_COUNT; i++)
    emit(t, "coalesce_answers_total{x_cache=\"%s\"} %" PRIu64 "\n",
         metrics_source_name(i), metrics_get(&m->by_source[i]));
  family(t, "coalesce_errors_total", "counter",
         "Error answers clients received, by error code.");
  for (int i = 0; i < METRIC_ERR_COUNT; i++)
    emit(t, "coalesce_errors_total{code=\"%s\"} %" PRIu64 "\n",
         metrics_error_code(i), metrics_get(&m->errors[i]));
}

static void upstream_figures(text_t *t, up_snap_t *ups, size_t n) {
  family(t, "coalesce_breaker_state", "gauge",
         "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
  for (size_t i = 0; i < n; i++)
    emit(t, "coalesce_breaker_state{upstream=\"%s\"} %" PRIu64 "\n",
         ups[i].label, ups[i].breaker.breaker_state);

  family(t, "coalesce_breaker_transitions_total", "counter",
         "Circuit breaker transitions, by the state entered.");
  for (size_t i = 0; i < n; i++) {
    const coalesce_stats_t *b = &ups[i].breaker;
    emit(t,
         "coalesce_breaker_transitions_total{upstream=\"%s\",to=\"open\"} "
         "%" PRIu64 "\n"
         "coalesce_breaker_transitions_total{upstream=\"%s\",to=\"half_open\"}"
         " %" PRIu64 "\n"
         "coalesce_breaker_transitions_total{upstream=\"%s\",to=\"closed\"} "
         "%" PRIu64 "\n",
         ups[i].label, b->breaker_opened, ups[i].label, b->breaker_half_opened,
         ups[i].label, b->breaker_closed);
  }

  family(t, "coalesce_upstream_calls_total", "counter",
         "Upstream calls completed.");
  for (size_t i = 0; i < n; i++)
    emit(t, "coalesce_upstream_calls_total{upstream=\"%s\"} %" PRIu64 "\n",
         ups[i].label, metrics_get(&ups[i].m->calls));

  family(t, "coalesce_upstream_responses_total", "counter",
         "Upstream responses by status class.");
  for (size_t i = 0; i < n; i++)
    for (int c = 1; c <= 5; c++)
      emit(t,
           "coalesce_upstream_responses_total{upstream=\"%s\",class=\"%dxx\"} "
           "%" PRIu64 "\n",
           ups[i].label, c, metrics_get(&ups[i].m->status_class[c]));

  family(t, "coalesce_upstream_errors_total", "counter",
         "Failed upstream calls: transport errors, timeouts, 429 and 5xx.");
  for (size_t i = 0; i < n; i++) {
    const up_snap_t *u = &ups[i];
    emit(t,
         "coalesce_upstream_errors_total{upstream=\"%s\",kind=\"transport\"} "
         "%" PRIu64 "\n"
         "coalesce_upstream_errors_total{upstream=\"%s\",kind=\"timeout\"} "
         "%" PRIu64 "\n"
         "coalesce_upstream_errors_total{upstream=\"%s\",kind=\"status_429\"} "
         "%" PRIu64 "\n"
         "coalesce_upstream_errors_total{upstream=\"%s\",kind=\"status_5xx\"} "
         "%" PRIu64 "\n",
         u->label, metrics_get(&u->m->transport_errors), u->label,
         metrics_get(&u->m->timeouts), u->label, metrics_get(&u->m->status_429),
         u->label, metrics_get(&u->m->status_class[5]));
  }

  family(t, "coalesce_upstream_latency_seconds", "histogram",
         "Upstream call latency.");
  for (size_t i = 0; i < n; i++) {
    uint64_t b[METRIC_LATENCY_BUCKETS + 1], cum = 0, sum_us = 0;
    for (size_t k = 0; k <= METRIC_LATENCY_BUCKETS; k++)
      b[k] = metrics_get(&ups[i].m->latency_bucket[k]);
    sum_us = metrics_get(&ups[i].m->latency_sum_us);
    for (size_t k = 0; k < METRIC_LATENCY_BUCKETS; k++) {
      cum += b[k];
      emit(t,
           "coalesce_upstream_latency_seconds_bucket{upstream=\"%s\","
           "le=\"%g\"} %" PRIu64 "\n",
           ups[i].label, metrics_latency_bounds[k], cum);
    }
    cum += b[METRIC_LATENCY_BUCKETS];
    emit(t,
         "coalesce_upstream_latency_seconds_bucket{upstream=\"%s\","
         "le=\"+Inf\"} %" PRIu64 "\n"
         "coalesce_upstream_latency_seconds_sum{upstream=\"%s\"} %.6f\n"
         "coalesce_upstream_latency_seconds_count{upstream=\"%s\"} %" PRIu64
         "\n",
         ups[i].label, cum, ups[i].label, (double)sum_us / 1e6, ups[i].label,
         cum);
  }
}

/* Issue 10: the local budget and the upstream's own accounting. */
static void quota_figures(text_t *t, up_snap_t *ups, size_t n) {
  family(t, "coalesce_quota_rejections_total", "counter",
         "Upstream calls refused by the local budget.");
  for (size_t i = 0; i < n; i++)
    emit(t, "coalesce_quota_rejections_total{upstream=\"%s\"} %" PRIu64 "\n",
         ups[i].label, ups[i].has_quota ? ups[i].quota.rejections : 0);
  family(t, "coalesce_upstream_429s_total", "counter",
         "429 answers from the upstream.");
  for (size_t i = 0; i < n; i++)
    emit(t, "coalesce_upstream_429s_total{upstream=\"%s\"} %" PRIu64 "\n",
         ups[i].label, ups[i].has_quota ? ups[i].quota.upstream_429s : 0);
  static const char *const names[] = {"limit", "remaining", "reset_seconds"};
  for (int f = 0; f < 3; f++) {
    char fam[64];
    snprintf(fam, sizeof fam, "coalesce_upstream_ratelimit_%s", names[f]);
    family(t, fam, "gauge",
           "The upstream's own rate-limit figure, as last reported.");
    for (size_t i = 0; i < n; i++) {
      const quota_snapshot_t *q = &ups[i].quota;
      if (!ups[i].has_quota || !q->observed)
        continue;
      int64_t v = f == 0 ? q->limit : f == 1 ? q->remaining : q->reset_in_s;
      if (v >= 0)
        emit(t, "%s{upstream=\"%s\"} %" PRId64 "\n", fam, ups[i].label, v);
    }
  }
  family(t, "coalesce_quota_tokens", "gauge",
         "Calls the local token bucket allows now.");
  for (size_t i = 0; i < n; i++)
    if (ups[i].has_quota && ups[i].quota.has_rate)
      emit(t, "coalesce_quota_tokens{upstream=\"%s\"} %.2f\n", ups[i].label,
           ups[i].quota.tokens);
}

/* Issue 7 and 8: fleet mode and batching. */
static void fleet_batch_figures(text_t *t, app_t *app) {
  fleet_stats_t f;
  app_fleet_stats(app, &f);
  gauge(t, "coalesce_fleet_state",
        "Fleet mode: 0 disabled, 1 connected, 2 degraded.", (double)f.state);
  counter(t, "coalesce_redis_errors_total",
          "Failed or timed-out Redis commands and connections.",
          f.redis_errors);
  counter(t, "coalesce_fleet_fallbacks_total",
          "Leaders that fetched locally because Redis could not help.",
          f.fleet_fallbacks);
  counter(t, "coalesce_fleet_l2_hits_total",
          "Flights answered from the fleet's shared cache.", f.l2_hits);
  counter(t, "coalesce_fleet_lease_takeovers_total",
          "Fleet leases taken over from an expired holder.",
          f.lease_takeovers);
  batch_stats_t b;
  app_batch_stats(app, &b);
  counter(t, "coalesce_batches_total", "Batched upstream calls made.",
          b.batches_made);
  counter(t, "coalesce_batched_keys_total",
          "Ids answered by batched upstream calls.", b.batched_keys);
  family(t, "coalesce_batch_ids", "histogram", "Ids per batched call.");
  uint64_t cum = 0;
  for (int i = 0; i < BATCH_HIST_BUCKETS - 1; i++) {
    cum += b.ids_per_batch[i];
    emit(t, "coalesce_batch_ids_bucket{le=\"%u\"} %" PRIu64 "\n",
         batch_hist_le[i], cum);
  }
  cum += b.ids_per_batch[BATCH_HIST_BUCKETS - 1];
  emit(t, "coalesce_batch_ids_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
  emit(t, "coalesce_batch_ids_sum %" PRIu64 "\n", b.batched_keys);
  emit(t, "coalesce_batch_ids_count %" PRIu64 "\n", cum);
}

static void http_figures(text_t *t, const http_server_stats_t *h) {
  gauge(t, "coalesce_http_connections_open", "Client connections open now.",
        (double)h->connections_open);
  counter(t, "coalesce_http_requests_total",
          "Client requests handed to the proxy.", h->requests);
  family(t, "coalesce_http_rejections_total", "counter",
         "Client requests or connections refused by the HTTP layer.");
  const struct {
    const char *reason;
    uint64_t v;
  } r[] = {{"overloaded", h->rejected_overloaded},
           {"bad_request", h->rejected_bad_request},
           {"uri_too_long", h->rejected_uri_too_long},
           {"header_too_large", h->rejected_header_too_large},
           {"body_too_large", h->rejected_body_too_large},
           {"request_timeout", h->timeouts_request}};
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
    emit(t, "coalesce_http_rejections_total{reason=\"%s\"} %" PRIu64 "\n",
         r[i].reason, r[i].v);
  counter(t, "coalesce_http_idle_timeouts_total",
          "Connections closed idle or stalled.", h->timeouts_idle);
  counter(t, "coalesce_http_client_aborts_total",
          "Clients that left while their request was being handled.",
          h->client_aborts);
}

char *admin_metrics_text(app_t *app, size_t *len) {
  text_t t = {.p = malloc(8192), .cap = 8192};
  if (t.p == NULL)
    return NULL;
  t.p[0] = '\0';

  coalesce_stats_t s;
  app_stats(app, &s);
  http_server_stats_t hs;
  app_http_stats(app, &hs);
  size_t n = atomic_load_explicit(&app->nupstreams, memory_order_acquire);
  up_snap_t *ups = calloc(n > 0 ? n : 1, sizeof *ups);
  if (ups == NULL)
    t.failed = true;
  for (size_t i = 0; !t.failed && i < n; i++) {
    const app_upstream_t *e = &app->upstreams[i];
    ups[i].label = label_escape(e->name);
    if (ups[i].label == NULL)
      t.failed = true;
    if (e->breaker != NULL)
      coalesce_breaker_stats(e->breaker, &ups[i].breaker);
    ups[i].m = app->metrics != NULL && e->metric >= 0
                   ? &app->metrics->upstreams[e->metric]
                   : &zero_slot;
    ups[i].has_quota = e->quota != NULL;
    if (e->quota != NULL)
      quota_snapshot(e->quota, &ups[i].quota);
  }

  library_figures(&t, &s);
  daemon_figures(&t, app->metrics);
  if (!t.failed) {
    upstream_figures(&t, ups, n);
    quota_figures(&t, ups, n);
  }
  fleet_batch_figures(&t, app);
  http_figures(&t, &hs);
  gauge(&t, "coalesce_workers", "Worker event loops.", (double)app->nworkers);
  family(&t, "coalesce_uptime_seconds", "gauge", "Seconds since start.");
  emit(&t, "coalesce_uptime_seconds %.3f\n", admin_uptime_seconds(app));
  char *version = label_escape(app->version ? app->version : "unknown");
  if (version == NULL)
    t.failed = true;
  family(&t, "coalesce_build_info", "gauge", "Always 1; labels the build.");
  emit(&t, "coalesce_build_info{version=\"%s\"} 1\n", version);
  free(version);

  for (size_t i = 0; ups != NULL && i < n; i++)
    free(ups[i].label);
  free(ups);
  if (t.failed) {
    free(t.p);
    return NULL;
  }
  *len = t.len;
  return t.p;
}
