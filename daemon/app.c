/* app.c — creation, reload and teardown of the process-wide state; see
 * app.h. */
#include "app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_server.h"
#include "log.h"
#include "batch.h"
#include "fleet.h"
#include "proxy.h"
#include "quota.h"
#include "worker.h"

app_upstream_t *app_upstream(app_t *app, const char *name) {
  size_t n = atomic_load_explicit(&app->nupstreams, memory_order_acquire);
  for (size_t i = 0; i < n; i++)
    if (strcmp(app->upstreams[i].name, name) == 0)
      return &app->upstreams[i];
  return NULL;
}

static int breaker_opts(const config_breaker_t *b, coalesce_breaker_opts_t *o) {
  coalesce_breaker_opts_init(o);
  o->consecutive_failures = b->consecutive_failures;
  o->failure_rate = b->failure_rate;
  o->window = b->window;
  o->min_volume = b->min_volume;
  o->open_ns = b->open_ms * COALESCE_NS_PER_MS;
  o->max_open_ns = b->max_open_ms * COALESCE_NS_PER_MS;
  o->half_open_probes = b->half_open_probes;
  return 0;
}

/* Adds entries for upstream names not seen before (main thread only).
 * Existing names keep their breaker: its state is the upstream's, not the
 * config's. */
static int add_upstreams(app_t *app, const config_t *cfg, char *err,
                         size_t errlen) {
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    const config_upstream_t *u = &cfg->upstreams[i];
    if (app_upstream(app, u->name) != NULL)
      continue;
    size_t n = atomic_load(&app->nupstreams);
    if (n >= APP_MAX_UPSTREAMS) {
      snprintf(err, errlen, "too many upstreams (max %d)", APP_MAX_UPSTREAMS);
      return -1;
    }
    app_upstream_t *e = &app->upstreams[n];
    coalesce_breaker_opts_t bo;
    breaker_opts(&u->breaker, &bo);
    int rc = coalesce_breaker_new(&bo, &e->breaker);
    if (rc != 0) {
      snprintf(err, errlen, "upstream %s: breaker: %s", u->name,
               coalesce_strerror(rc));
      return -1;
    }
    quota_opts_t qo;
    quota_opts_init(&qo);
    if (u->rate_limit != NULL)
      (void)quota_parse_rate(u->rate_limit, &qo.rate_per_sec);
    qo.burst = u->rate_burst;
    if (u->quota != NULL)
      (void)quota_parse_period(u->quota, &qo.period_max, &qo.period_ms);
    if (u->quota_low_fraction > 0)
      qo.low_fraction = u->quota_low_fraction;
    e->quota = quota_new(&qo);
    e->name = strdup(u->name);
    e->metric = metrics_upstream_index(app->metrics, u->name);
    if (e->name == NULL || e->metric < 0 || e->quota == NULL) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    atomic_store_explicit(&app->nupstreams, n + 1, memory_order_release);
  }
  return 0;
}

/* Every batch call feeds the same upstream metrics as a single call. */
static void on_batch_call(void *ud, const config_upstream_t *up, int status,
                          int err, uint64_t total_time_us, size_t nids) {
  (void)nids;
  app_t *app = ud;
  app_upstream_t *aup = app_upstream(app, up->name);
  metrics_upstream_call(app->metrics, aup ? aup->metric : -1, status, err,
                        total_time_us);
}

int app_init(app_t *app, config_t *cfg, const char *version, char *err,
             size_t errlen) {
  memset(app, 0, sizeof *app);
  atomic_init(&app->cfg, cfg);
  app->version = version;
  app->started_ns = coalesce_clock_now(NULL);
  app->started_wall = time(NULL);
  app->metrics = metrics_new();
  if (app->metrics == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  batcher_opts_t bo = {.on_call = on_batch_call, .ud = app};
  app->batcher = batcher_new(&bo);
  if (app->batcher == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (cfg->redis.url != NULL) {
    app->fleet = fleet_new(&cfg->redis, FLEET_DEFAULT_MAX_VALUE);
    if (app->fleet == NULL) {
      snprintf(err, errlen, "redis: cannot set up fleet mode");
      return -1;
    }
  }
  coalesce_cache_opts_t co;
  coalesce_cache_opts_init(&co);
  co.max_bytes = cfg->cache.max_bytes;
  co.shards = cfg->cache.shards;
  int rc = coalesce_cache_new(&co, &app->cache);
  if (rc != 0) {
    snprintf(err, errlen, "cache: %s", coalesce_strerror(rc));
    return -1;
  }
  coalesce_coalescer_opts_t fo;
  coalesce_coalescer_opts_init(&fo);
  fo.max_flights = cfg->cache.max_flights;
  fo.max_waiters_per_key = cfg->cache.max_waiters_per_key;
  fo.max_waiters = cfg->cache.max_waiters;
  fo.unshared_ns = cfg->cache.unshared_ms * COALESCE_NS_PER_MS;
  /* A flight's hard age limit is the longest upstream timeout plus slack:
   * libcurl ends every call by then, so only a bug can hit it. */
  uint64_t longest = 0;
  for (size_t i = 0; i < cfg->nroutes; i++)
    if (cfg->routes[i].upstream_timeout_ms > longest)
      longest = cfg->routes[i].upstream_timeout_ms;
  fo.max_flight_age_ns = (longest + 5000) * COALESCE_NS_PER_MS;
  rc = coalesce_coalescer_new(&fo, &app->coalescer);
  if (rc != 0) {
    snprintf(err, errlen, "coalescer: %s", coalesce_strerror(rc));
    return -1;
  }
  coalesce_loader_opts_t lo = {.cache = app->cache,
                               .coalescer = app->coalescer,
                               .start = proxy_fetch_start,
                               .ud = app};
  rc = coalesce_loader_new(&lo, &app->loader);
  if (rc != 0) {
    snprintf(err, errlen, "loader: %s", coalesce_strerror(rc));
    return -1;
  }
  return add_upstreams(app, cfg, err, errlen);
}

int app_reload(app_t *app, config_t *cfg, char *err, size_t errlen) {
  if (add_upstreams(app, cfg, err, errlen) != 0)
    return -1;
  config_t **r = realloc(app->retired, (app->nretired + 1) * sizeof *r);
  if (r == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  app->retired = r;
  app->retired[app->nretired++] =
      atomic_exchange_explicit(&app->cfg, cfg, memory_order_acq_rel);
  atomic_fetch_add(&app->reloads, 1);
  log_set_level(cfg->server.log_level);
  return 0;
}

void app_destroy(app_t *app) {
  coalesce_loader_free(app->loader);
  coalesce_coalescer_free(app->coalescer);
  coalesce_cache_free(app->cache);
  size_t n = atomic_load(&app->nupstreams);
  for (size_t i = 0; i < n; i++) {
    coalesce_breaker_free(app->upstreams[i].breaker);
    quota_free(app->upstreams[i].quota);
    free(app->upstreams[i].name);
  }
  metrics_free(app->metrics);
  batcher_free(app->batcher);
  fleet_free(app->fleet);
  for (size_t i = 0; i < app->nretired; i++)
    config_free(app->retired[i]);
  free(app->retired);
  config_free(atomic_load(&app->cfg));
  memset(app, 0, sizeof *app);
}

void app_stats_reset(app_t *app) {
  coalesce_loader_stats_reset(app->loader);
  coalesce_coalescer_stats_reset(app->coalescer);
  metrics_reset(app->metrics);
  batcher_stats_reset(app->batcher);
  fleet_stats_reset(app->fleet);
  size_t n = atomic_load(&app->nupstreams);
  for (size_t i = 0; i < n; i++)
    quota_reset_stats(app->upstreams[i].quota);
}

void app_stats(app_t *app, coalesce_stats_t *s) {
  coalesce_loader_stats(app->loader, s);
  /* A batch answers many ids with one call: the loader counted a fetch per
   * id, the upstream saw one call per batch. */
  batch_stats_t b;
  batcher_stats(app->batcher, &b);
  uint64_t saved = b.calls_saved;
  /* fleet mode: an answer read from Redis made no upstream call either */
  fleet_stats_t fs;
  fleet_stats(app->fleet, &fs);
  saved += fs.l2_hits;
  if (saved > s->api_calls_made)
    saved = s->api_calls_made;
  s->api_calls_made -= saved;
  s->api_calls_saved += saved;
  /* requests libcurl re-sent on its own reached the upstream too */
  s->api_calls_made += metrics_get(&app->metrics->hidden_retries);
  s->hit_rate_percent =
      s->total_requests == 0
          ? 0.0
          : 100.0 * (double)s->api_calls_saved / (double)s->total_requests;
}

void app_fleet_stats(app_t *app, struct fleet_stats *out) {
  fleet_stats(app->fleet, out);
}

void app_batch_stats(app_t *app, struct batch_stats *out) {
  batcher_stats(app->batcher, out);
}

void app_http_stats(app_t *app, struct http_server_stats *out) {
  memset(out, 0, sizeof *out);
  for (unsigned i = 0; i < app->nworkers; i++) {
    worker_t *w = app->workers[i];
    if (w == NULL || w->server == NULL)
      continue;
    http_server_stats_t s;
    http_server_stats(w->server, &s);
    out->connections_accepted += s.connections_accepted;
    out->connections_open += s.connections_open;
    out->requests += s.requests;
    out->rejected_overloaded += s.rejected_overloaded;
    out->rejected_bad_request += s.rejected_bad_request;
    out->rejected_uri_too_long += s.rejected_uri_too_long;
    out->rejected_header_too_large += s.rejected_header_too_large;
    out->rejected_body_too_large += s.rejected_body_too_large;
    out->timeouts_request += s.timeouts_request;
    out->timeouts_idle += s.timeouts_idle;
    out->client_aborts += s.client_aborts;
  }
}
