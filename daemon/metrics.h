/*
 * metrics.h — the daemon's own figures beside the library's statistics:
 * answers by X-Cache path and by status class, client-visible errors by
 * code, and per-upstream call outcomes with a latency histogram. Plain
 * relaxed atomics: every worker thread adds, the admin thread reads.
 * Resettable (POST /stats/reset) except the histograms' bucket bounds.
 */
#ifndef COALESCED_METRICS_H
#define COALESCED_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "coalesce.h"

/* X-Cache values, in coalesce_source_t order, then the daemon's own. */
enum {
  METRIC_SRC_HIT = COALESCE_SRC_HIT,
  METRIC_SRC_STALE = COALESCE_SRC_STALE,
  METRIC_SRC_MISS = COALESCE_SRC_MISS,
  METRIC_SRC_COALESCED = COALESCE_SRC_COALESCED,
  METRIC_SRC_STALE_IF_ERROR = COALESCE_SRC_STALE_IF_ERROR,
  METRIC_SRC_BYPASS = COALESCE_SRC_BYPASS,
  METRIC_SRC_PASS, /* non-GET/HEAD passed through */
  METRIC_SRC_ERROR, /* answered with a coalesced error, no upstream body */
  METRIC_SRC_COUNT
};

/* Client-visible error codes of DESIGN.md §3. */
enum {
  METRIC_ERR_UPSTREAM_ERROR,
  METRIC_ERR_UPSTREAM_TIMEOUT,
  METRIC_ERR_WAIT_TIMEOUT,
  METRIC_ERR_CIRCUIT_OPEN,
  METRIC_ERR_OVERLOADED,
  METRIC_ERR_BAD_REQUEST,
  METRIC_ERR_NO_ROUTE,
  METRIC_ERR_QUOTA,
  METRIC_ERR_COUNT
};

#define METRIC_LATENCY_BUCKETS 14
/* Upper bounds in seconds: 1ms .. 30s, then +Inf. */
extern const double metrics_latency_bounds[METRIC_LATENCY_BUCKETS];

typedef struct metrics_upstream {
  _Atomic uint64_t calls;        /* upstream calls completed */
  _Atomic uint64_t hidden_retries; /* of which libcurl re-sent by itself */
  _Atomic uint64_t transport_errors;
  _Atomic uint64_t timeouts;
  _Atomic uint64_t status_class[6]; /* [1..5] = 1xx..5xx */
  _Atomic uint64_t status_429;
  _Atomic uint64_t latency_bucket[METRIC_LATENCY_BUCKETS + 1];
  _Atomic uint64_t latency_sum_us;
} metrics_upstream_t;

typedef struct metrics {
  _Atomic uint64_t by_source[METRIC_SRC_COUNT];
  _Atomic uint64_t by_status_class[6];
  _Atomic uint64_t errors[METRIC_ERR_COUNT];
  _Atomic uint64_t passthrough;
  _Atomic uint64_t hidden_retries; /* requests libcurl re-sent by itself */
  size_t nupstreams;
  metrics_upstream_t *upstreams; /* one per configured upstream name */
  char **upstream_names;
} metrics_t;

metrics_t *metrics_new(void);
void metrics_free(metrics_t *m);
/* Index of the upstream named `name`, adding it if new (config reloads may
 * add upstreams; none is ever removed). Called from the main thread only;
 * -1 on allocation failure. */
int metrics_upstream_index(metrics_t *m, const char *name);
void metrics_reset(metrics_t *m);

static inline void metrics_add(_Atomic uint64_t *c, uint64_t n) {
  atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}
static inline uint64_t metrics_get(_Atomic uint64_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

void metrics_answer(metrics_t *m, int source, int status);
void metrics_error(metrics_t *m, int code);
/* One completed upstream call (status 0 with transport_err != 0). */
void metrics_upstream_call(metrics_t *m, int upstream, int status,
                           int transport_err, uint64_t latency_us);
/* A call that reached the upstream `attempts` times (libcurl re-sends once
 * on a dead reused connection): counts the extra requests. */
void metrics_upstream_attempts(metrics_t *m, int upstream, unsigned attempts);

const char *metrics_error_code(int code);
const char *metrics_source_name(int source);

#endif
