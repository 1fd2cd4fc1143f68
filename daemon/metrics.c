/* metrics.c — daemon counters and upstream latency histograms; see
 * metrics.h. The upstream table only grows, and only from the main thread
 * (at start and on reload) before workers learn the new indexes, so
 * readers never see a moving array: it is allocated with a fixed capacity. */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#include "upstream.h"

#define METRICS_MAX_UPSTREAMS 256

const double metrics_latency_bounds[METRIC_LATENCY_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};

static const char *const error_codes[METRIC_ERR_COUNT] = {
    "upstream_error", "upstream_timeout", "wait_timeout", "circuit_open",
    "overloaded",     "bad_request",      "no_route",     "quota_exhausted"};

static const char *const source_names[METRIC_SRC_COUNT] = {
    "HIT",    "STALE",  "MISS", "COALESCED", "STALE-IF-ERROR",
    "BYPASS", "PASS",   "ERROR"};

const char *metrics_error_code(int code) {
  return code >= 0 && code < METRIC_ERR_COUNT ? error_codes[code] : "unknown";
}

const char *metrics_source_name(int source) {
  return source >= 0 && source < METRIC_SRC_COUNT ? source_names[source]
                                                  : "UNKNOWN";
}

metrics_t *metrics_new(void) {
  metrics_t *m = calloc(1, sizeof *m);
  if (m == NULL)
    return NULL;
  m->upstreams = calloc(METRICS_MAX_UPSTREAMS, sizeof *m->upstreams);
  m->upstream_names = calloc(METRICS_MAX_UPSTREAMS, sizeof *m->upstream_names);
  if (m->upstreams == NULL || m->upstream_names == NULL) {
    metrics_free(m);
    return NULL;
  }
  return m;
}

void metrics_free(metrics_t *m) {
  if (m == NULL)
    return;
  for (size_t i = 0; i < m->nupstreams; i++)
    free(m->upstream_names[i]);
  free(m->upstream_names);
  free(m->upstreams);
  free(m);
}

int metrics_upstream_index(metrics_t *m, const char *name) {
  for (size_t i = 0; i < m->nupstreams; i++)
    if (strcmp(m->upstream_names[i], name) == 0)
      return (int)i;
  if (m->nupstreams >= METRICS_MAX_UPSTREAMS)
    return -1;
  char *copy = strdup(name);
  if (copy == NULL)
    return -1;
  m->upstream_names[m->nupstreams] = copy;
  atomic_thread_fence(memory_order_release);
  return (int)m->nupstreams++;
}

static void zero(_Atomic uint64_t *a, size_t n) {
  for (size_t i = 0; i < n; i++)
    atomic_store_explicit(&a[i], 0, memory_order_relaxed);
}

void metrics_reset(metrics_t *m) {
  zero(m->by_source, METRIC_SRC_COUNT);
  zero(m->by_status_class, 6);
  zero(m->errors, METRIC_ERR_COUNT);
  atomic_store(&m->passthrough, 0);
  atomic_store(&m->hidden_retries, 0);
  for (size_t i = 0; i < m->nupstreams; i++) {
    metrics_upstream_t *u = &m->upstreams[i];
    atomic_store(&u->calls, 0);
    atomic_store(&u->hidden_retries, 0);
    atomic_store(&u->transport_errors, 0);
    atomic_store(&u->timeouts, 0);
    atomic_store(&u->status_429, 0);
    atomic_store(&u->latency_sum_us, 0);
    zero(u->status_class, 6);
    zero(u->latency_bucket, METRIC_LATENCY_BUCKETS + 1);
  }
}

void metrics_answer(metrics_t *m, int source, int status) {
  if (source >= 0 && source < METRIC_SRC_COUNT)
    metrics_add(&m->by_source[source], 1);
  if (status >= 100 && status < 600)
    metrics_add(&m->by_status_class[status / 100], 1);
}

void metrics_error(metrics_t *m, int code) {
  if (code >= 0 && code < METRIC_ERR_COUNT)
    metrics_add(&m->errors[code], 1);
}

void metrics_upstream_call(metrics_t *m, int upstream, int status,
                           int transport_err, uint64_t latency_us) {
  if (upstream < 0 || (size_t)upstream >= m->nupstreams)
    return;
  metrics_upstream_t *u = &m->upstreams[upstream];
  metrics_add(&u->calls, 1);
  if (transport_err != 0) {
    metrics_add(transport_err == UPSTREAM_ETIMEOUT ? &u->timeouts
                                                   : &u->transport_errors,
                1);
  } else if (status >= 100 && status < 600) {
    metrics_add(&u->status_class[status / 100], 1);
    if (status == 429)
      metrics_add(&u->status_429, 1);
  }
  double s = (double)latency_us / 1e6;
  size_t b = 0;
  while (b < METRIC_LATENCY_BUCKETS && s > metrics_latency_bounds[b])
    b++;
  metrics_add(&u->latency_bucket[b], 1);
  metrics_add(&u->latency_sum_us, latency_us);
}

void metrics_upstream_attempts(metrics_t *m, int upstream, unsigned attempts) {
  if (attempts <= 1)
    return;
  metrics_add(&m->hidden_retries, attempts - 1);
  if (upstream >= 0 && (size_t)upstream < m->nupstreams) {
    metrics_add(&m->upstreams[upstream].calls, attempts - 1);
    metrics_add(&m->upstreams[upstream].hidden_retries, attempts - 1);
  }
}
