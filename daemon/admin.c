/*
 * admin.c — the admin listener's routing, its JSON documents (stats,
 * health, flights, index), the dashboard's compiled-in files and the reset
 * endpoint's token check; the Prometheus text lives in admin_metrics.c.
 * See admin.h for the endpoints and invariants.
 *
 * Every JSON document is built with jansson, never by hand, so names and
 * strings are always escaped. Figures come from snapshots taken here on the
 * admin thread: the library's stats (sharded counters summed on read), the
 * daemon's relaxed metric atomics and the breakers' own locked snapshots.
 * Upstreams are read up to app->nupstreams (acquire), which the main
 * thread publishes only after an entry's breaker and metric slot exist.
 */
#include "admin.h"

#include "batch.h"
#include "fleet.h"
#include "quota.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>
#include <xxhash.h>

#include "log.h"

#define ADMIN_JSON_FLAGS (JSON_INDENT(2) | JSON_REAL_PRECISION(15))
#define ADMIN_NO_STORE "Cache-Control: no-store\r\n"
#define ADMIN_ASSET_HEADERS                                                    \
  ADMIN_NO_STORE                                                               \
  "Content-Security-Policy: " ADMIN_DASHBOARD_CSP "\r\n"                       \
  "X-Content-Type-Options: nosniff\r\n"                                        \
  "X-Frame-Options: DENY\r\n"                                                  \
  "Referrer-Policy: no-referrer\r\n"

/* ------------------------------------------------------------- helpers */

/* Sets o[key] = v (stealing v); false if v is NULL or the set failed, so a
 * builder can && its way through and notice any allocation failure. */
static bool put(json_t *o, const char *key, json_t *v) {
  return v != NULL && json_object_set_new(o, key, v) == 0;
}

static json_t *jcount(uint64_t v) {
  return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static double round_to(double x, double scale) {
  return round(x * scale) / scale;
}

double admin_uptime_seconds(const app_t *app) {
  uint64_t now = coalesce_clock_now(NULL);
  return now > app->started_ns ? (double)(now - app->started_ns) / 1e9 : 0.0;
}

static size_t upstream_count(app_t *app) {
  return atomic_load_explicit(&app->nupstreams, memory_order_acquire);
}

/* The metric slot of an upstream entry, or NULL. */
static metrics_upstream_t *upstream_metrics(app_t *app,
                                            const app_upstream_t *e) {
  if (app->metrics == NULL || e->metric < 0)
    return NULL;
  return &app->metrics->upstreams[e->metric];
}

/* ---------------------------------------------------------------- stats */

static json_t *breaker_json(coalesce_breaker_t *b) {
  coalesce_stats_t s;
  memset(&s, 0, sizeof s);
  uint64_t retry_ns = 0;
  if (b != NULL) {
    coalesce_breaker_stats(b, &s);
    retry_ns = coalesce_breaker_retry_in(b);
  }
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  bool ok =
      put(o, "state",
          json_string(coalesce_breaker_state_name(
              (coalesce_breaker_state_t)s.breaker_state))) &&
      put(o, "opened", jcount(s.breaker_opened)) &&
      put(o, "half_opened", jcount(s.breaker_half_opened)) &&
      put(o, "closed", jcount(s.breaker_closed)) &&
      put(o, "successes", jcount(s.breaker_successes)) &&
      put(o, "failures", jcount(s.breaker_failures)) &&
      put(o, "rejections", jcount(s.breaker_rejections)) &&
      put(o, "retry_in_ms",
          jcount((retry_ns + COALESCE_NS_PER_MS - 1) / COALESCE_NS_PER_MS));
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* The raw buckets, so a client can take quantiles over any window from the
 * difference of two snapshots: bounds_ms[i] is bucket i's upper bound and
 * counts has one more entry than bounds_ms, the +Inf bucket (counts are
 * per bucket, not cumulative). */
static json_t *histogram_json(const metrics_upstream_t *u) {
  json_t *o = json_object(), *bounds = json_array(), *counts = json_array();
  bool ok = o != NULL && bounds != NULL && counts != NULL;
  for (size_t i = 0; ok && i <= METRIC_LATENCY_BUCKETS; i++) {
    if (i < METRIC_LATENCY_BUCKETS)
      ok = json_array_append_new(
               bounds, json_real(round_to(metrics_latency_bounds[i] * 1000.0,
                                          1000.0))) == 0;
    uint64_t c =
        u != NULL ? metrics_get((_Atomic uint64_t *)&u->latency_bucket[i]) : 0;
    ok = ok && json_array_append_new(counts, jcount(c)) == 0;
  }
  ok = ok && put(o, "bounds_ms", json_incref(bounds)) &&
       put(o, "counts", json_incref(counts));
  json_decref(bounds);
  json_decref(counts);
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static json_t *latency_json(const metrics_upstream_t *u) {
  uint64_t n = 0;
  if (u != NULL)
    for (size_t i = 0; i <= METRIC_LATENCY_BUCKETS; i++)
      n += metrics_get((_Atomic uint64_t *)&u->latency_bucket[i]);
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  bool ok = true;
  static const struct {
    const char *name;
    double q;
  } qs[] = {{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}};
  for (size_t i = 0; ok && i < sizeof qs / sizeof qs[0]; i++) {
    double ms = u != NULL ? admin_latency_quantile(u, qs[i].q) * 1000.0 : 0.0;
    ok = put(o, qs[i].name, json_real(round_to(ms, 1000.0)));
  }
  ok = ok && put(o, "samples", jcount(n)) &&
       put(o, "histogram", histogram_json(u));
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* An upstream-reported figure: null when the upstream never said. */
static json_t *jfigure(int64_t v) {
  return v < 0 ? json_null() : json_integer(v);
}

/* The upstream's own rate-limit figures and our local budget (issue 10). */
static json_t *quota_json(quota_t *q) {
  quota_snapshot_t qs;
  quota_snapshot(q, &qs);
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  bool ok = put(o, "limit", qs.observed ? jfigure(qs.limit) : json_null()) &&
            put(o, "remaining",
                qs.observed ? jfigure(qs.remaining) : json_null()) &&
            put(o, "reset_in_s",
                qs.observed ? jfigure(qs.reset_in_s) : json_null()) &&
            put(o, "observed_at", qs.observed
                                      ? json_integer((json_int_t)qs.observed_at)
                                      : json_null()) &&
            put(o, "low", json_boolean(qs.low)) &&
            put(o, "rejections", jcount(qs.rejections)) &&
            put(o, "upstream_429s", jcount(qs.upstream_429s)) &&
            put(o, "granted", jcount(qs.granted));
  if (ok && (qs.has_rate || qs.has_period)) {
    json_t *b = json_object();
    ok = b != NULL &&
         put(b, "rate_per_sec", qs.has_rate ? json_real(qs.rate_per_sec)
                                            : json_null()) &&
         put(b, "burst", qs.has_rate ? jcount(qs.burst) : json_null()) &&
         put(b, "tokens",
             qs.has_rate ? json_real(round_to(qs.tokens, 100.0)) : json_null()) &&
         put(b, "period_max", qs.has_period ? jcount(qs.period_max) : json_null()) &&
         put(b, "period_used", qs.has_period ? jcount(qs.period_used) : json_null()) &&
         put(b, "period_remaining",
             qs.has_period ? jcount(qs.period_remaining) : json_null());
    ok = ok && put(o, "budget", b);
  }
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static json_t *upstream_json(app_t *app, const app_upstream_t *e) {
  metrics_upstream_t *u = upstream_metrics(app, e);
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
#define UGET(field) (u != NULL ? metrics_get(&u->field) : 0)
  json_t *classes = json_object();
  bool ok = classes != NULL;
  for (int c = 1; ok && c <= 5; c++) {
    char k[4] = {(char)('0' + c), 'x', 'x', '\0'};
    ok = put(classes, k, jcount(UGET(status_class[c])));
  }
  ok = put(o, "breaker", breaker_json(e->breaker)) && ok &&
       put(o, "calls", jcount(UGET(calls))) &&
       put(o, "hidden_retries", jcount(UGET(hidden_retries))) &&
       put(o, "transport_errors", jcount(UGET(transport_errors))) &&
       put(o, "timeouts", jcount(UGET(timeouts))) &&
       put(o, "status_429", jcount(UGET(status_429))) &&
       put(o, "responses", json_incref(classes)) &&
       put(o, "latency_ms", latency_json(u)) &&
       (e->quota == NULL || put(o, "quota", quota_json(e->quota)));
#undef UGET
  json_decref(classes);
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static json_t *counts_json(_Atomic uint64_t *counts, int n,
                           const char *(*name)(int)) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  for (int i = 0; i < n; i++)
    if (!put(o, name(i), jcount(metrics_get(&counts[i])))) {
      json_decref(o);
      return NULL;
    }
  return o;
}

static json_t *fleet_json(app_t *app) {
  fleet_stats_t f;
  app_fleet_stats(app, &f);
  return json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "state",
                   f.state_name, "redis_errors", (json_int_t)f.redis_errors,
                   "fleet_fallbacks", (json_int_t)f.fleet_fallbacks, "l2_hits",
                   (json_int_t)f.l2_hits, "leases_acquired",
                   (json_int_t)f.leases_acquired, "lease_takeovers",
                   (json_int_t)f.lease_takeovers, "waits", (json_int_t)f.waits,
                   "publishes", (json_int_t)f.publishes, "reconnects",
                   (json_int_t)f.reconnects, "connections",
                   (json_int_t)f.conns, "connections_ready",
                   (json_int_t)f.conns_ready);
}

static json_t *batch_json(app_t *app) {
  batch_stats_t b;
  app_batch_stats(app, &b);
  return json_pack("{s:I,s:I,s:I,s:I,s:I}", "batches_made",
                   (json_int_t)b.batches_made, "batched_keys",
                   (json_int_t)b.batched_keys, "calls_saved",
                   (json_int_t)b.calls_saved, "failed_calls",
                   (json_int_t)b.failed_calls, "missing_ids",
                   (json_int_t)b.missing_ids);
}

json_t *admin_stats_json(app_t *app) {
  coalesce_stats_t s;
  app_stats(app, &s); /* derived fields included; batching/fleet folded in */
  http_server_stats_t hs;
  app_http_stats(app, &hs);

  json_t *doc = json_object();
  json_t *cache = json_object();
  json_t *ups = json_object();
  bool ok = doc != NULL && cache != NULL && ups != NULL;
  ok = ok && put(cache, "entries", jcount(s.cache_entries)) &&
       put(cache, "bytes", jcount(s.cache_bytes)) &&
       put(cache, "max_bytes", jcount(s.cache_max_bytes)) &&
       put(cache, "evictions", jcount(s.cache_evictions));
  size_t n = upstream_count(app);
  for (size_t i = 0; ok && i < n; i++)
    ok = put(ups, app->upstreams[i].name,
             upstream_json(app, &app->upstreams[i]));

  ok =
      ok && put(doc, "total_requests", jcount(s.total_requests)) &&
      put(doc, "coalesced_requests", jcount(s.coalesced_requests)) &&
      put(doc, "cache_hits", jcount(s.cache_hits)) &&
      put(doc, "stale_hits", jcount(s.stale_hits)) &&
      put(doc, "stale_if_error_hits", jcount(s.stale_if_error)) &&
      put(doc, "api_calls_made", jcount(s.api_calls_made)) &&
      put(doc, "api_calls_saved", jcount(s.api_calls_saved)) &&
      put(doc, "pending_requests", jcount(s.pending_requests)) &&
      put(doc, "hit_rate_percent",
          json_real(round_to(s.hit_rate_percent, 100.0))) &&
      put(doc, "background_refreshes", jcount(s.background_refreshes)) &&
      put(doc, "errors", jcount(s.errors)) &&
      put(doc, "wait_timeouts", jcount(s.wait_timeouts)) &&
      put(doc, "bypassed", jcount(s.bypassed)) &&
      put(doc, "unshared", jcount(s.unshared)) &&
      put(doc, "breaker_rejections", jcount(s.breaker_rejections)) &&
      put(doc, "overloaded", jcount(s.overloaded)) &&
      put(doc, "cache", json_incref(cache)) &&
      put(doc, "answers",
          counts_json(app->metrics->by_source, METRIC_SRC_COUNT,
                      metrics_source_name)) &&
      put(doc, "errors_by_code",
          counts_json(app->metrics->errors, METRIC_ERR_COUNT,
                      metrics_error_code)) &&
      put(doc, "upstreams", json_incref(ups)) &&
      put(doc, "uptime_seconds", jcount((uint64_t)admin_uptime_seconds(app))) &&
      put(doc, "uptime_ms",
          jcount((uint64_t)(admin_uptime_seconds(app) * 1000.0))) &&
      put(doc, "version",
          json_string(app->version ? app->version : "unknown")) &&
      put(doc, "workers", jcount(app->nworkers)) &&
      put(doc, "connections_open", jcount(hs.connections_open)) &&
      put(doc, "batching", batch_json(app)) &&
      (app->fleet == NULL || put(doc, "fleet", fleet_json(app)));
  json_decref(cache);
  json_decref(ups);
  if (!ok) {
    json_decref(doc);
    return NULL;
  }
  return doc;
}

/* -------------------------------------------------------------- flights */

static uint64_t key_seed;
static pthread_once_t key_seed_once = PTHREAD_ONCE_INIT;

/* Non-blocking: early at boot the pool may not be ready, and a dashboard
 * must not hang on it. The fallback is still unknown to a remote viewer. */
static void key_seed_init(void) {
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
    seed = coalesce_clock_now(NULL) ^ ((uint64_t)getpid() << 32) ^
           (uint64_t)(uintptr_t)&seed;
  key_seed = seed;
}

void admin_key_id(uint64_t key_hash, char out[17]) {
  pthread_once(&key_seed_once, key_seed_init);
  uint64_t id = XXH3_64bits_withSeed(&key_hash, sizeof key_hash, key_seed);
  snprintf(out, 17, "%016" PRIx64, id);
}

json_t *admin_flights_json(app_t *app, size_t limit) {
  if (limit == 0)
    limit = ADMIN_FLIGHTS_DEFAULT;
  if (limit > ADMIN_FLIGHTS_MAX)
    limit = ADMIN_FLIGHTS_MAX;
  coalesce_flight_info_t top[ADMIN_FLIGHTS_MAX];
  size_t n = coalesce_coalescer_top(app->coalescer, top, limit);
  json_t *doc = json_object(), *list = json_array();
  bool ok = doc != NULL && list != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    char id[17];
    admin_key_id(top[i].key_hash, id);
    json_t *f = json_object();
    ok = f != NULL && put(f, "key", json_string(id)) &&
         put(f, "waiters", jcount(top[i].waiters)) &&
         put(f, "age_ms",
             json_real(round_to((double)top[i].age_ns / 1e6, 10.0)));
    if (ok)
      ok = json_array_append_new(list, f) == 0;
    else
      json_decref(f);
  }
  ok = ok &&
       put(doc, "pending_requests",
           jcount(coalesce_coalescer_pending(app->coalescer))) &&
       put(doc, "limit", jcount(limit)) &&
       put(doc, "flights", json_incref(list));
  json_decref(list);
  if (!ok) {
    json_decref(doc);
    return NULL;
  }
  return doc;
}

/* ?limit=N (1..ADMIN_FLIGHTS_MAX; larger is capped): false when present
 * but not a number. Other parameters are ignored. */
static bool parse_limit(const char *q, size_t len, size_t *out) {
  *out = ADMIN_FLIGHTS_DEFAULT;
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && q[end] != '&')
      end++;
    if (end - i > 6 && memcmp(q + i, "limit=", 6) == 0) {
      size_t v = 0;
      for (size_t k = i + 6; k < end; k++) {
        if (q[k] < '0' || q[k] > '9')
          return false;
        if (v < ADMIN_FLIGHTS_MAX)
          v = v * 10 + (size_t)(q[k] - '0');
      }
      if (v == 0)
        return false;
      *out = v > ADMIN_FLIGHTS_MAX ? ADMIN_FLIGHTS_MAX : v;
    } else if (end - i == 6 && memcmp(q + i, "limit=", 6) == 0) {
      return false;
    }
    i = end + 1;
  }
  return true;
}

/* ------------------------------------------------------------ dashboard */

const admin_asset_t *admin_asset_find(const char *path, size_t len) {
  for (const admin_asset_t *a = admin_assets; a->path != NULL; a++)
    if (strlen(a->path) == len && memcmp(a->path, path, len) == 0)
      return a;
  return NULL;
}

/* --------------------------------------------------------------- health */

json_t *admin_health_json(app_t *app, int *http_status) {
  json_t *doc = json_object();
  json_t *breakers = json_object();
  json_t *redis = json_object();
  bool ok = doc != NULL && breakers != NULL && redis != NULL;
  size_t n = upstream_count(app), open = 0, half = 0;
  for (size_t i = 0; ok && i < n; i++) {
    coalesce_breaker_state_t st = COALESCE_BREAKER_CLOSED;
    if (app->upstreams[i].breaker != NULL)
      st = coalesce_breaker_state(app->upstreams[i].breaker);
    open += st == COALESCE_BREAKER_OPEN;
    half += st == COALESCE_BREAKER_HALF_OPEN;
    ok = put(breakers, app->upstreams[i].name,
             json_string(coalesce_breaker_state_name(st)));
  }
  size_t low = 0;
  json_t *quota = json_object();
  ok = ok && quota != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    bool q_low = app->upstreams[i].quota != NULL &&
                 quota_low(app->upstreams[i].quota);
    low += q_low;
    ok = put(quota, app->upstreams[i].name,
             json_string(q_low ? "low" : "ok"));
  }
  fleet_stats_t fs;
  app_fleet_stats(app, &fs);
  bool fleet_degraded = fs.state == FLEET_STATE_DEGRADED;
  bool draining = atomic_load(&app->draining);
  /* Every upstream refusing calls: nothing but stale copies can be served,
   * so a load balancer should prefer another instance. A half-open breaker
   * is already letting probes through, so it only degrades. */
  const char *status = "healthy";
  if (n > 0 && open == n)
    status = "unhealthy";
  else if (open + half > 0 || draining || low > 0 || fleet_degraded)
    status = "degraded";
  *http_status = strcmp(status, "unhealthy") == 0 ? 503 : 200;

  /* Whether fleet mode is on and its state: never the URL, which may hold
   * a password. */
  config_t *cfg = app_config(app);
  bool redis_on = app->fleet != NULL || (cfg != NULL && cfg->redis.url != NULL);
  ok = ok && put(redis, "configured", json_boolean(redis_on)) &&
       put(redis, "state", json_string(fs.state_name)) &&
       put(redis, "errors", jcount(fs.redis_errors)) &&
       put(redis, "fallbacks", jcount(fs.fleet_fallbacks));
  ok =
      ok && put(doc, "status", json_string(status)) &&
      put(doc, "breakers", json_incref(breakers)) &&
      put(doc, "redis", json_incref(redis)) &&
      put(doc, "quota", json_incref(quota)) &&
      put(doc, "uptime_seconds", jcount((uint64_t)admin_uptime_seconds(app))) &&
      put(doc, "draining", json_boolean(draining));
  json_decref(breakers);
  json_decref(redis);
  json_decref(quota);
  if (!ok) {
    json_decref(doc);
    return NULL;
  }
  return doc;
}

/* ---------------------------------------------------------------- token */

bool admin_token_equal(const char *given, size_t given_len, const char *want) {
  size_t want_len = strlen(want);
  /* volatile: keeps the compiler from turning the loop into an early-exit
   * memcmp. The loop always runs want_len times. */
  volatile unsigned char diff = given_len != want_len;
  for (size_t i = 0; i < want_len; i++) {
    unsigned char g = i < given_len ? (unsigned char)given[i] : 0;
    diff |= (unsigned char)(g ^ (unsigned char)want[i]);
  }
  return diff == 0;
}

bool admin_authorized(app_t *app, const http_request_t *req) {
  config_t *cfg = app_config(app);
  const char *want = cfg != NULL ? cfg->server.admin_token : NULL;
  if (want == NULL || want[0] == '\0')
    return true;
  bool ok = false;
  size_t len = 0;
  const char *v = http_request_header(req, "Authorization", &len);
  /* RFC 7235: the scheme is case-insensitive, then 1*SP. */
  if (v != NULL && len > 7 && strncasecmp(v, "Bearer ", 7) == 0) {
    size_t i = 7;
    while (i < len && v[i] == ' ')
      i++;
    ok |= admin_token_equal(v + i, len - i, want);
  }
  v = http_request_header(req, "X-Admin-Token", &len);
  if (v != NULL)
    ok |= admin_token_equal(v, len, want);
  return ok;
}

/* -------------------------------------------------------------- routing */

/* Sends doc (stolen) as JSON with a trailing newline; 500 if it is NULL. */
static void send_json(http_conn_t *conn, int status, json_t *doc,
                      const char *extra_headers) {
  char *body = doc != NULL ? json_dumps(doc, ADMIN_JSON_FLAGS) : NULL;
  json_decref(doc);
  size_t len = body != NULL ? strlen(body) : 0;
  char *nl = body != NULL ? realloc(body, len + 2) : NULL;
  if (nl == NULL) {
    free(body);
    http_conn_send_error(conn, 500, "internal_error", "out of memory");
    return;
  }
  nl[len++] = '\n';
  nl[len] = '\0';
  char headers[256];
  snprintf(headers, sizeof headers, "%s%s", ADMIN_NO_STORE,
           extra_headers != NULL ? extra_headers : "");
  http_conn_send_simple(conn, status, "application/json", headers, nl, len,
                        false);
  free(nl);
}

static void send_error(http_conn_t *conn, int status, const char *code,
                       const char *message, const char *extra_headers) {
  send_json(conn, status,
            json_pack("{s:s, s:s}", "error", code, "message", message),
            extra_headers);
}

static json_t *index_json(app_t *app) {
  static const struct {
    const char *method, *path, *description;
  } eps[] = {
      {"GET", ADMIN_PATH_STATS, "deduplication, cache and upstream figures"},
      {"GET", ADMIN_PATH_HEALTH, "healthy / degraded (200) or unhealthy (503)"},
      {"GET", ADMIN_PATH_FLIGHTS,
       "keys in flight with the most waiters (?limit=N), keys hashed"},
      {"POST", ADMIN_PATH_RESET,
       "reset the counters (not the cache); admin token when configured"},
      {"GET", ADMIN_PATH_METRICS, "Prometheus text exposition"},
      {"GET", ADMIN_PATH_DASHBOARD, "live dashboard (HTML)"},
  };
  json_t *list = json_array();
  bool ok = list != NULL;
  for (size_t i = 0; ok && i < sizeof eps / sizeof eps[0]; i++) {
    json_t *e = json_pack("{s:s, s:s, s:s}", "method", eps[i].method, "path",
                          eps[i].path, "description", eps[i].description);
    ok = json_array_append_new(list, e) == 0; /* -1 for a NULL e */
  }
  if (!ok) {
    json_decref(list);
    return NULL;
  }
  return json_pack("{s:s, s:s, s:o}", "service", "coalesced", "version",
                   app->version ? app->version : "unknown", "endpoints", list);
}

static void serve_metrics(app_t *app, http_conn_t *conn) {
  size_t len = 0;
  char *text = admin_metrics_text(app, &len);
  if (text == NULL) {
    http_conn_send_error(conn, 500, "internal_error", "out of memory");
    return;
  }
  http_conn_send_simple(conn, 200, "text/plain; version=0.0.4; charset=utf-8",
                        ADMIN_NO_STORE, text, len, false);
  free(text);
}

static void serve_reset(app_t *app, http_conn_t *conn,
                        const http_request_t *req) {
  if (req->method != HTTP_POST) {
    send_error(conn, 405, "method_not_allowed", "use POST", "Allow: POST\r\n");
    return;
  }
  if (!admin_authorized(app, req)) {
    LOG_WARN("admin_unauthorized", "peer=%s path=%s", req->peer_addr,
             ADMIN_PATH_RESET);
    send_error(conn, 401, "unauthorized", "a valid admin token is required",
               "WWW-Authenticate: Bearer realm=\"coalesced\"\r\n");
    return;
  }
  app_stats_reset(app);
  LOG_INFO("admin_stats_reset", "peer=%s", req->peer_addr);
  send_json(conn, 200, json_pack("{s:b}", "reset", 1), NULL);
}

static bool path_is(const http_request_t *req, const char *path) {
  size_t n = strlen(path);
  return req->path_len == n && memcmp(req->path, path, n) == 0;
}

static void serve_flights(app_t *app, http_conn_t *conn,
                          const http_request_t *req) {
  size_t limit;
  if (!parse_limit(req->query, req->query_len, &limit)) {
    send_error(conn, 400, "bad_request",
               "limit must be a whole number from 1 to 100", NULL);
    return;
  }
  send_json(conn, 200, admin_flights_json(app, limit), NULL);
}

void admin_on_request(void *ud, http_conn_t *conn, const http_request_t *req) {
  app_t *app = ud;
  if (path_is(req, ADMIN_PATH_RESET)) {
    serve_reset(app, conn, req);
    return;
  }
  const admin_asset_t *asset = admin_asset_find(req->path, req->path_len);
  int which = path_is(req, ADMIN_PATH_STATS)     ? 1
              : path_is(req, ADMIN_PATH_HEALTH)  ? 2
              : path_is(req, ADMIN_PATH_METRICS) ? 3
              : path_is(req, "/")                ? 4
              : path_is(req, ADMIN_PATH_FLIGHTS) ? 5
              : asset != NULL                    ? 6
                                                 : 0;
  if (which == 0) {
    send_error(conn, 404, "not_found", "no such admin endpoint", NULL);
    return;
  }
  if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
    send_error(conn, 405, "method_not_allowed", "use GET or HEAD",
               "Allow: GET, HEAD\r\n");
    return;
  }
  switch (which) {
  case 1:
    send_json(conn, 200, admin_stats_json(app), NULL);
    break;
  case 2: {
    int status = 200;
    json_t *doc = admin_health_json(app, &status);
    send_json(conn, status, doc, NULL);
    break;
  }
  case 3:
    serve_metrics(app, conn);
    break;
  case 5:
    serve_flights(app, conn, req);
    break;
  case 6:
    http_conn_send_simple(conn, 200, asset->content_type, ADMIN_ASSET_HEADERS,
                          asset->data, asset->len, false);
    break;
  default:
    send_json(conn, 200, index_json(app), NULL);
    break;
  }
}
