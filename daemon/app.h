/*
 * app.h — the state one coalesced process shares between its threads.
 *
 * One cache, one coalescer and one loader serve every worker loop (so a
 * flight started on one loop wakes waiters parked on the others). Each
 * configured upstream, by name, has a breaker and a metrics slot that
 * survive config reloads. The live config is swapped atomically on SIGHUP;
 * old configs are kept until exit because requests in progress may still
 * point into them (reloads are rare; this trades a little memory for no
 * reference counting on the hot path).
 *
 * Thread rules: `cfg` is read with app_config() from any thread; everything
 * else is written only by the main thread, before workers start or while
 * holding no pointer workers could be using (upstreams only grow).
 */
#ifndef COALESCED_APP_H
#define COALESCED_APP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "coalesce.h"
#include "config.h"
#include "metrics.h"
#include "recfilter.h"

#define APP_MAX_UPSTREAMS 256

typedef struct app_upstream {
  char *name;
  coalesce_breaker_t *breaker;
  struct quota *quota; /* local budget + the upstream's own figures */
  int metric;          /* index in metrics_t.upstreams */
  _Atomic uint64_t quota_wait_s; /* last budget refusal's Retry-After */
} app_upstream_t;

struct worker;

typedef struct app {
  _Atomic(config_t *) cfg;
  config_t **retired; /* old configs, freed at exit */
  size_t nretired;
  coalesce_cache_t *cache;
  coalesce_coalescer_t *coalescer;
  coalesce_loader_t *loader;
  app_upstream_t upstreams[APP_MAX_UPSTREAMS];
  _Atomic size_t nupstreams;
  metrics_t *metrics;
  struct batcher *batcher; /* request batching (routes with batch_param) */
  struct fleet *fleet;     /* fleet mode (--redis); NULL when off */
  struct worker **workers;
  unsigned nworkers;
  struct http_server *admin_server;
  const char *version;
  uint64_t started_ns; /* monotonic */
  time_t started_wall;
  _Atomic uint64_t reloads;
  /* Which primary keys may have a Vary record and which (upstream,
   * target) an invalidation record: a hit whose bit is clear skips the
   * lookup (a key build and a cache lookup each). See recfilter.h. */
  recfilter_t vary_records;
  recfilter_t invalidations;
  _Atomic bool draining;        /* SIGTERM received */
  _Atomic unsigned connections; /* client connections, all workers: the
                                   process-wide max_connections */
} app_t;

static inline config_t *app_config(app_t *app) {
  return atomic_load_explicit(&app->cfg, memory_order_acquire);
}

/* The upstream entry for a name, or NULL. Any thread. */
app_upstream_t *app_upstream(app_t *app, const char *name);

/* Creates the shared objects for cfg (takes ownership of it). 0 or -1 with
 * err filled. */
int app_init(app_t *app, config_t *cfg, const char *version, char *err,
             size_t errlen);
/* Swaps in a new finalized config (main thread): adds breakers for new
 * upstream names, keeps the old config until exit. 0 or -1 with err. */
int app_reload(app_t *app, config_t *cfg, char *err, size_t errlen);
/* Frees everything (after the workers have stopped). */
void app_destroy(app_t *app);

/* Resets the counters (POST /stats/reset): loader, coalescer, metrics. The
 * cache and breakers keep their state. */
void app_stats_reset(app_t *app);

/* The figures of DESIGN.md §3: the loader's, with the upstream calls that
 * request batching saved moved from made to saved. */
void app_stats(app_t *app, coalesce_stats_t *s);

/* Fleet mode and batching figures for the admin side (zeroed/"disabled"
 * when off). Any thread. */
struct fleet_stats;
struct batch_stats;
void app_fleet_stats(app_t *app, struct fleet_stats *out);
void app_batch_stats(app_t *app, struct batch_stats *out);

/* Sums every worker's HTTP server counters. */
struct http_server_stats;
void app_http_stats(app_t *app, struct http_server_stats *out);

#endif
