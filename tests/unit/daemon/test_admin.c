/*
 * test_admin.c — the admin listener: stats / health / flights JSON,
 * Prometheus text, the reset token, routing, the compiled-in dashboard and
 * its headers, and that no secret (nor a cache key) ever reaches an answer.
 *
 * The app is assembled by hand from real library objects (cache, coalescer,
 * loader, breakers on a fake clock) and real metrics, and figures are
 * produced by driving the real loader. The HTTP layer is replaced by a
 * recording fake of the three http_server.h calls admin.c makes, and
 * app.c's two stats hooks by stand-ins (app.c would pull in the workers,
 * the proxy and the server); neither file is linked into this test, so the
 * definitions below never clash with the real ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <jansson.h>
#include <xxhash.h>

#include "admin.h"
#include "batch.h"
#include "fleet.h"
#include "fake_clock.h"
#include "log.h"
#include "upstream.h"

#define SECRET_TOKEN "adm1n-T0ken-zz9"
#define SECRET_HEADER "sk_live_H3aderValue"
#define SECRET_REDIS "r3disPassw0rd"

/* ------------------------------------------------- fake HTTP layer */

struct http_conn {
  int calls; /* must end at exactly 1: THE REQUEST RULE */
  int status;
  char ctype[128];
  char headers[1024];
  char *body;
  size_t len;
};

int http_conn_send_simple(http_conn_t *conn, int status,
                          const char *content_type, const char *extra_headers,
                          const void *body, size_t len, bool close_after) {
  (void)close_after;
  conn->calls++;
  conn->status = status;
  snprintf(conn->ctype, sizeof conn->ctype, "%s",
           content_type ? content_type : "");
  snprintf(conn->headers, sizeof conn->headers, "%s",
           extra_headers ? extra_headers : "");
  free(conn->body);
  conn->body = malloc(len + 1);
  memcpy(conn->body, body, len);
  conn->body[len] = '\0';
  conn->len = len;
  return 0;
}

int http_conn_send_error(http_conn_t *conn, int status, const char *code,
                         const char *message) {
  json_t *j = json_pack("{s:s,s:s}", "error", code, "message", message);
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  int rc = http_conn_send_simple(conn, status, "application/json", NULL, s,
                                 strlen(s), false);
  free(s);
  return rc;
}

const char *http_request_header(const http_request_t *req, const char *name,
                                size_t *len) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcasecmp(req->headers[i].name, name) == 0) {
      if (len)
        *len = req->headers[i].value_len;
      return req->headers[i].value;
    }
  return NULL;
}

/* ------------------------------------------------- app.c stand-ins */

static int resets;
static http_server_stats_t fake_http;

void app_fleet_stats(app_t *app, struct fleet_stats *out) {
  (void)app;
  memset(out, 0, sizeof *out);
  out->state_name = "disabled";
}

void app_batch_stats(app_t *app, struct batch_stats *out) {
  (void)app;
  memset(out, 0, sizeof *out);
}

const unsigned batch_hist_le[BATCH_HIST_BUCKETS - 1] = {1, 2, 4, 8, 16, 32, 64, 128};

void app_stats(app_t *app, coalesce_stats_t *s) { /* no batching here */
  coalesce_loader_stats(app->loader, s);
}

void app_stats_reset(app_t *app) { /* what app.c does */
  resets++;
  coalesce_loader_stats_reset(app->loader);
  coalesce_coalescer_stats_reset(app->coalescer);
  metrics_reset(app->metrics);
}

void app_http_stats(app_t *app, struct http_server_stats *out) {
  (void)app;
  *out = fake_http;
}

/* --------------------------------------------------------- fixture */

typedef struct fixture {
  app_t app;
  fake_clock_t fc;
  coalesce_fetch_t *pending[4]; /* fetches started, not yet done */
  int npending;
  int answered;
  coalesce_value_t *body;
} fixture_t;

static void start_fetch(void *ud, const void *key, size_t keylen, void *ctx,
                        coalesce_value_t *stale, coalesce_fetch_t *fetch) {
  (void)key, (void)keylen, (void)ctx, (void)stale;
  fixture_t *f = ud;
  assert_true(f->npending < 4);
  f->pending[f->npending++] = fetch;
}

static void finish_fetches(fixture_t *f) {
  for (int i = 0; i < f->npending; i++) {
    coalesce_fetch_result_t res = {.value = f->body};
    coalesce_fetch_done(f->pending[i], &res);
  }
  f->npending = 0;
}

static void on_load(void *ud, coalesce_load_result_t *res) {
  fixture_t *f = ud;
  assert_int_equal(res->err, 0);
  coalesce_value_release(res->value);
  f->answered++;
}

static config_t *make_config(bool with_token) {
  config_t *cfg = config_new();
  char err[256];
  assert_non_null(cfg);
#define SET(sec, k, v)                                                         \
  assert_int_equal(config_set(cfg, sec, k, v, "test", err, sizeof err), 0)
  if (with_token)
    SET("server", "admin_token", SECRET_TOKEN);
  SET("redis", "url", "redis://:" SECRET_REDIS "@127.0.0.1:6379/0");
  SET("upstream api", "url", "http://127.0.0.1:1");
  SET("upstream api", "header", "X-Api-Key: " SECRET_HEADER);
#undef SET
  return cfg;
}

static void add_upstream(fixture_t *f, const char *name) {
  app_t *app = &f->app;
  size_t n = atomic_load(&app->nupstreams);
  coalesce_breaker_opts_t bo;
  coalesce_breaker_opts_init(&bo);
  bo.consecutive_failures = 2;
  bo.window = 0;
  bo.open_ns = SEC(10);
  bo.clock = &f->fc.clock;
  assert_int_equal(coalesce_breaker_new(&bo, &app->upstreams[n].breaker), 0);
  app->upstreams[n].name = strdup(name);
  app->upstreams[n].metric = metrics_upstream_index(app->metrics, name);
  assert_true(app->upstreams[n].metric >= 0);
  atomic_store(&app->nupstreams, n + 1);
}

static fixture_t *fixture_new(bool with_token) {
  fixture_t *f = calloc(1, sizeof *f);
  fake_clock_init(&f->fc);
  app_t *app = &f->app;
  atomic_init(&app->cfg, make_config(with_token));
  app->version = "9.8.7-test";
  uint64_t now = coalesce_clock_now(NULL);
  app->started_ns = now > SEC(42) ? now - SEC(42) : 0;
  app->nworkers = 3;
  app->metrics = metrics_new();
  assert_non_null(app->metrics);

  coalesce_cache_opts_t co;
  coalesce_cache_opts_init(&co);
  co.max_bytes = 1 << 20;
  co.clock = &f->fc.clock;
  assert_int_equal(coalesce_cache_new(&co, &app->cache), 0);
  coalesce_coalescer_opts_t fo;
  coalesce_coalescer_opts_init(&fo);
  fo.clock = &f->fc.clock;
  assert_int_equal(coalesce_coalescer_new(&fo, &app->coalescer), 0);
  coalesce_loader_opts_t lo = {.cache = app->cache,
                               .coalescer = app->coalescer,
                               .start = start_fetch,
                               .ud = f,
                               .clock = &f->fc.clock};
  assert_int_equal(coalesce_loader_new(&lo, &app->loader), 0);
  add_upstream(f, "api");
  add_upstream(f, "pay");
  f->body = coalesce_value_new("{\"ok\":true}", 11);
  memset(&fake_http, 0, sizeof fake_http);
  fake_http.connections_open = 7;
  fake_http.rejected_bad_request = 3;
  resets = 0;
  return f;
}

static void fixture_free(fixture_t *f) {
  finish_fetches(f);
  app_t *app = &f->app;
  coalesce_loader_free(app->loader);
  coalesce_coalescer_free(app->coalescer);
  coalesce_cache_free(app->cache);
  for (size_t i = 0; i < atomic_load(&app->nupstreams); i++) {
    coalesce_breaker_free(app->upstreams[i].breaker);
    free(app->upstreams[i].name);
  }
  metrics_free(app->metrics);
  config_free(atomic_load(&app->cfg));
  coalesce_value_release(f->body);
  free(f);
}

static int setup(void **state) {
  *state = fixture_new(false);
  return 0;
}
static int setup_token(void **state) {
  *state = fixture_new(true);
  return 0;
}
static int teardown(void **state) {
  fixture_free(*state);
  return 0;
}

/* One load of key through the real loader. Returns COALESCE_PENDING or 0. */
static int load(fixture_t *f, const char *key) {
  coalesce_load_opts_t o;
  coalesce_load_opts_init(&o);
  o.ttl.fresh_ns = SEC(5);
  o.ttl.swr_ns = SEC(30);
  o.ttl.sie_ns = 0;
  o.breaker = f->app.upstreams[0].breaker;
  coalesce_load_result_t now;
  int rc = coalesce_loader_load(f->app.loader, key, strlen(key), &o, on_load, f,
                                &now, NULL);
  if (rc == 0) {
    assert_int_equal(now.err, 0);
    coalesce_value_release(now.value);
    f->answered++;
  }
  return rc;
}

static int64_t ival(json_t *o, const char *path) {
  /* "a.b.c" lookup; fails the test when missing or not an integer. */
  char buf[128];
  snprintf(buf, sizeof buf, "%s", path);
  json_t *j = o;
  for (char *save = NULL, *p = strtok_r(buf, ".", &save); p;
       p = strtok_r(NULL, ".", &save)) {
    j = json_object_get(j, p);
    if (j == NULL)
      fail_msg("missing %s", path);
  }
  if (!json_is_integer(j))
    fail_msg("%s is not an integer", path);
  return json_integer_value(j);
}

static const char *sval(json_t *o, const char *a, const char *b) {
  json_t *j = json_object_get(o, a);
  if (b != NULL)
    j = json_object_get(j, b);
  if (!json_is_string(j))
    fail_msg("%s.%s is not a string", a, b ? b : "");
  return json_string_value(j);
}

/* ------------------------------------------------------------ stats */

static void test_stats_leader_followers_hits(void **state) {
  fixture_t *f = *state;
  app_t *app = &f->app;
  assert_int_equal(load(f, "k"), COALESCE_PENDING); /* leader */
  for (int i = 0; i < 9; i++)
    assert_int_equal(load(f, "k"), COALESCE_PENDING); /* followers */
  assert_int_equal(f->npending, 1);

  json_t *mid = admin_stats_json(app);
  assert_non_null(mid);
  assert_int_equal(ival(mid, "pending_requests"), 1);
  assert_int_equal(ival(mid, "total_requests"), 10);
  assert_int_equal(ival(mid, "coalesced_requests"), 9);
  json_decref(mid);

  finish_fetches(f);
  assert_int_equal(f->answered, 10);
  for (int i = 0; i < 5; i++)
    assert_int_equal(load(f, "k"), 0); /* hits */

  /* The daemon's own figures, as the proxy would add them. */
  metrics_t *m = app->metrics;
  metrics_answer(m, METRIC_SRC_MISS, 200);
  for (int i = 0; i < 9; i++)
    metrics_answer(m, METRIC_SRC_COALESCED, 200);
  for (int i = 0; i < 5; i++)
    metrics_answer(m, METRIC_SRC_HIT, 200);
  metrics_error(m, METRIC_ERR_WAIT_TIMEOUT);
  metrics_error(m, METRIC_ERR_WAIT_TIMEOUT);
  metrics_error(m, METRIC_ERR_CIRCUIT_OPEN);
  int api = app->upstreams[0].metric, pay = app->upstreams[1].metric;
  metrics_upstream_call(m, api, 200, 0, 3000);
  metrics_upstream_call(m, api, 429, 0, 3000);
  metrics_upstream_call(m, api, 0, UPSTREAM_ETIMEOUT, 3000);
  metrics_upstream_call(m, pay, 0, UPSTREAM_ECONNECT, 3000);

  json_t *s = admin_stats_json(app);
  assert_non_null(s);
  assert_int_equal(ival(s, "total_requests"), 15);
  assert_int_equal(ival(s, "coalesced_requests"), 9);
  assert_int_equal(ival(s, "cache_hits"), 5);
  assert_int_equal(ival(s, "stale_hits"), 0);
  assert_int_equal(ival(s, "stale_if_error_hits"), 0);
  assert_int_equal(ival(s, "api_calls_made"), 1);
  /* DESIGN §3: saved = hits + stale + coalesced; rate = 100*saved/total */
  assert_int_equal(ival(s, "api_calls_saved"), 5 + 0 + 9);
  json_t *rate = json_object_get(s, "hit_rate_percent");
  assert_true(json_is_real(rate));
  assert_true(json_real_value(rate) == 93.33); /* 1400/15 rounded to 2 dp */
  assert_int_equal(ival(s, "pending_requests"), 0);
  assert_int_equal(ival(s, "background_refreshes"), 0);
  assert_int_equal(ival(s, "errors"), 0);
  assert_int_equal(ival(s, "wait_timeouts"), 0);
  assert_int_equal(ival(s, "bypassed"), 0);
  assert_int_equal(ival(s, "unshared"), 0);
  assert_int_equal(ival(s, "breaker_rejections"), 0);
  assert_int_equal(ival(s, "overloaded"), 0);
  assert_int_equal(ival(s, "cache.entries"), 1);
  assert_true(ival(s, "cache.bytes") > 11);
  assert_int_equal(ival(s, "cache.max_bytes"), 1 << 20);
  assert_int_equal(ival(s, "cache.evictions"), 0);
  assert_int_equal(ival(s, "answers.HIT"), 5);
  assert_int_equal(ival(s, "answers.MISS"), 1);
  assert_int_equal(ival(s, "answers.COALESCED"), 9);
  assert_int_equal(ival(s, "answers.STALE"), 0);
  assert_int_equal(ival(s, "answers.STALE-IF-ERROR"), 0);
  assert_int_equal(ival(s, "answers.BYPASS"), 0);
  assert_int_equal(ival(s, "errors_by_code.wait_timeout"), 2);
  assert_int_equal(ival(s, "errors_by_code.circuit_open"), 1);
  assert_int_equal(ival(s, "errors_by_code.upstream_error"), 0);
  assert_int_equal(ival(s, "upstreams.api.calls"), 3);
  assert_int_equal(ival(s, "upstreams.api.status_429"), 1);
  assert_int_equal(ival(s, "upstreams.api.timeouts"), 1);
  assert_int_equal(ival(s, "upstreams.api.transport_errors"), 0);
  assert_int_equal(ival(s, "upstreams.api.responses.2xx"), 1);
  assert_int_equal(ival(s, "upstreams.pay.transport_errors"), 1);
  assert_int_equal(ival(s, "upstreams.pay.calls"), 1);
  json_t *ab = json_object_get(
      json_object_get(json_object_get(s, "upstreams"), "api"), "breaker");
  assert_string_equal(sval(ab, "state", NULL), "closed");
  assert_int_equal(ival(ab, "successes"), 1); /* the one flight, counted once */
  assert_int_equal(ival(ab, "failures"), 0);
  assert_int_equal(ival(ab, "opened"), 0);
  assert_int_equal(ival(ab, "half_opened"), 0);
  assert_int_equal(ival(ab, "closed"), 0);
  assert_int_equal(ival(ab, "retry_in_ms"), 0);
  json_t *lat = json_object_get(
      json_object_get(json_object_get(s, "upstreams"), "api"), "latency_ms");
  /* 3 samples of 3 ms, all in (2.5 ms, 5 ms]: p50 interpolates to 3.75. */
  assert_true(json_real_value(json_object_get(lat, "p50")) == 3.75);
  assert_true(json_real_value(json_object_get(lat, "p99")) > 4.9);
  assert_true(json_real_value(json_object_get(lat, "p99")) <= 5.0);
  assert_int_equal(ival(lat, "samples"), 3);
  /* The raw buckets, for windowed quantiles in the dashboard. */
  json_t *hb = json_object_get(json_object_get(lat, "histogram"), "bounds_ms");
  json_t *hc = json_object_get(json_object_get(lat, "histogram"), "counts");
  assert_int_equal(json_array_size(hb), METRIC_LATENCY_BUCKETS);
  assert_int_equal(json_array_size(hc), METRIC_LATENCY_BUCKETS + 1);
  assert_true(json_real_value(json_array_get(hb, 0)) == 1.0);
  assert_true(json_real_value(json_array_get(hb, 2)) == 5.0);
  assert_int_equal(json_integer_value(json_array_get(hc, 2)), 3); /* (2.5,5] */
  assert_int_equal(json_integer_value(json_array_get(hc, 1)), 0);
  json_t *pay_lat = json_object_get(
      json_object_get(json_object_get(s, "upstreams"), "pay"), "latency_ms");
  json_t *pc = json_object_get(json_object_get(pay_lat, "histogram"), "counts");
  assert_int_equal(json_array_size(pc), METRIC_LATENCY_BUCKETS + 1);
  assert_int_equal(json_integer_value(json_array_get(pc, 2)), 1);
  /* uptime_ms: the server's clock, so clients derive rates from it */
  assert_true(ival(s, "uptime_ms") >= 42000);
  assert_true(ival(s, "uptime_ms") / 1000 >= ival(s, "uptime_seconds"));
  assert_true(ival(s, "uptime_seconds") >= 42);
  assert_string_equal(sval(s, "version", NULL), "9.8.7-test");
  assert_int_equal(ival(s, "workers"), 3);
  assert_int_equal(ival(s, "connections_open"), 7);
  json_decref(s);
}

/* DESIGN §3's worked example: 200 concurrent cold requests for one key. */
static void test_stats_design_example(void **state) {
  fixture_t *f = *state;
  for (int i = 0; i < 200; i++)
    assert_int_equal(load(f, "herd"), COALESCE_PENDING);
  finish_fetches(f);
  json_t *s = admin_stats_json(&f->app);
  assert_int_equal(ival(s, "total_requests"), 200);
  assert_int_equal(ival(s, "api_calls_made"), 1);
  assert_int_equal(ival(s, "coalesced_requests"), 199);
  assert_int_equal(ival(s, "api_calls_saved"), 199);
  assert_true(json_real_value(json_object_get(s, "hit_rate_percent")) == 99.5);
  json_decref(s);
}

static void test_stats_stale_and_refresh(void **state) {
  fixture_t *f = *state;
  json_t *s = admin_stats_json(&f->app);
  assert_true(json_real_value(json_object_get(s, "hit_rate_percent")) == 0.0);
  json_decref(s);

  assert_int_equal(load(f, "k"), COALESCE_PENDING);
  finish_fetches(f);
  fake_clock_advance(&f->fc, SEC(6)); /* past fresh, inside swr */
  assert_int_equal(load(f, "k"), 0);  /* STALE + a background refresh */
  assert_int_equal(f->npending, 1);
  finish_fetches(f);
  s = admin_stats_json(&f->app);
  assert_int_equal(ival(s, "total_requests"), 2);
  assert_int_equal(ival(s, "stale_hits"), 1);
  assert_int_equal(ival(s, "cache_hits"), 0);
  assert_int_equal(ival(s, "background_refreshes"), 1);
  assert_int_equal(ival(s, "api_calls_made"), 2);
  assert_int_equal(ival(s, "api_calls_saved"), 1);
  assert_true(json_real_value(json_object_get(s, "hit_rate_percent")) == 50.0);
  json_decref(s);
}

/* ----------------------------------------------------------- health */

static void trip(fixture_t *f, int i) {
  coalesce_breaker_t *b = f->app.upstreams[i].breaker;
  for (int k = 0; k < 2; k++) {
    assert_int_equal(coalesce_breaker_allow(b), 0);
    coalesce_breaker_record(b, false, 0);
  }
  assert_int_equal(coalesce_breaker_state(b), COALESCE_BREAKER_OPEN);
}

static const char *health(fixture_t *f, int *code) {
  static char status[32];
  json_t *h = admin_health_json(&f->app, code);
  assert_non_null(h);
  snprintf(status, sizeof status, "%s", sval(h, "status", NULL));
  json_decref(h);
  return status;
}

static void test_health_states(void **state) {
  fixture_t *f = *state;
  int code = 0;
  json_t *h = admin_health_json(&f->app, &code);
  assert_string_equal(sval(h, "status", NULL), "healthy");
  assert_int_equal(code, 200);
  assert_string_equal(sval(h, "breakers", "api"), "closed");
  assert_string_equal(sval(h, "breakers", "pay"), "closed");
  assert_true(
      json_is_true(json_object_get(json_object_get(h, "redis"), "configured")));
  assert_non_null(json_object_get(json_object_get(h, "redis"), "state"));
  assert_true(json_is_false(json_object_get(h, "draining")));
  assert_true(ival(h, "uptime_seconds") >= 42);
  json_decref(h);

  trip(f, 0);
  assert_string_equal(health(f, &code), "degraded");
  assert_int_equal(code, 200);
  h = admin_health_json(&f->app, &code);
  assert_string_equal(sval(h, "breakers", "api"), "open");
  json_decref(h);

  trip(f, 1);
  assert_string_equal(health(f, &code), "unhealthy");
  assert_int_equal(code, 503);

  /* Open time over: half-open lets probes through, so only degraded. */
  fake_clock_advance(&f->fc, SEC(11));
  h = admin_health_json(&f->app, &code);
  assert_string_equal(sval(h, "status", NULL), "degraded");
  assert_string_equal(sval(h, "breakers", "api"), "half_open");
  assert_int_equal(code, 200);
  json_decref(h);
}

static void test_health_draining(void **state) {
  fixture_t *f = *state;
  int code = 0;
  atomic_store(&f->app.draining, true);
  json_t *h = admin_health_json(&f->app, &code);
  assert_string_equal(sval(h, "status", NULL), "degraded");
  assert_true(json_is_true(json_object_get(h, "draining")));
  assert_int_equal(code, 200);
  json_decref(h);
}

/* ---------------------------------------------------------- metrics */

static bool has_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
    if ((p == text || p[-1] == '\n') && p[n] == '\n')
      return true;
  return false;
}

/* Every sample's family has exactly one HELP and one TYPE, declared before
 * its samples, and a family's samples are contiguous. */
static void check_exposition(const char *text) {
  char declared[128][96];
  int nd = 0;
  char current[96] = "";
  const char *p = text;
  while (*p) {
    const char *eol = strchr(p, '\n');
    assert_non_null(eol); /* every line ends with \n */
    char line[512];
    size_t n = (size_t)(eol - p);
    assert_true(n < sizeof line);
    memcpy(line, p, n);
    line[n] = '\0';
    p = eol + 1;
    char name[96];
    if (strncmp(line, "# HELP ", 7) == 0) {
      sscanf(line + 7, "%95s", name);
      for (int i = 0; i < nd; i++)
        if (strcmp(declared[i], name) == 0)
          fail_msg("family %s declared twice", name);
      assert_true(nd < 128);
      snprintf(declared[nd++], sizeof declared[0], "%s", name);
      snprintf(current, sizeof current, "%s", name);
      continue;
    }
    if (strncmp(line, "# TYPE ", 7) == 0) {
      char type[32];
      assert_int_equal(sscanf(line + 7, "%95s %31s", name, type), 2);
      assert_string_equal(name, current);
      continue;
    }
    assert_true(line[0] != '#');
    size_t k = strcspn(line, "{ ");
    memcpy(name, line, k);
    name[k] = '\0';
    size_t cl = strlen(current);
    bool ok =
        strcmp(name, current) == 0 ||
        (strncmp(name, current, cl) == 0 &&
         (strcmp(name + cl, "_bucket") == 0 || strcmp(name + cl, "_sum") == 0 ||
          strcmp(name + cl, "_count") == 0));
    if (!ok)
      fail_msg("sample %s outside its family (current %s)", name, current);
  }
}

static uint64_t sample_value(const char *text, const char *prefix) {
  const char *p = strstr(text, prefix);
  if (p == NULL)
    fail_msg("no sample %s", prefix);
  return strtoull(p + strlen(prefix), NULL, 10);
}

static void test_metrics_text(void **state) {
  fixture_t *f = *state;
  app_t *app = &f->app;
  assert_int_equal(load(f, "k"), COALESCE_PENDING);
  for (int i = 0; i < 3; i++)
    assert_int_equal(load(f, "k"), COALESCE_PENDING);
  finish_fetches(f);
  assert_int_equal(load(f, "k"), 0);
  metrics_answer(app->metrics, METRIC_SRC_HIT, 200);
  metrics_error(app->metrics, METRIC_ERR_UPSTREAM_TIMEOUT);
  int api = app->upstreams[0].metric;
  metrics_upstream_call(app->metrics, api, 200, 0, 500);   /* <= 1 ms */
  metrics_upstream_call(app->metrics, api, 200, 0, 20000); /* <= 25 ms */
  metrics_upstream_call(app->metrics, api, 503, 0, 20000);
  metrics_upstream_call(app->metrics, api, 0, UPSTREAM_ETIMEOUT, 40000000);
  trip(f, 1);

  size_t len = 0;
  char *t = admin_metrics_text(app, &len);
  assert_non_null(t);
  assert_int_equal(strlen(t), len);
  check_exposition(t);
  const char *want[] = {
      "# TYPE coalesce_requests_total counter",
      "coalesce_requests_total 5",
      "coalesce_coalesced_requests_total 3",
      "coalesce_cache_hits_total 1",
      "coalesce_stale_hits_total 0",
      "coalesce_api_calls_made_total 1",
      "coalesce_api_calls_saved_total 4",
      "# TYPE coalesce_pending_requests gauge",
      "coalesce_pending_requests 0",
      "# TYPE coalesce_hit_rate_percent gauge",
      "coalesce_hit_rate_percent 80",
      "coalesce_cache_entries 1",
      "coalesce_cache_evictions_total 0",
      "coalesce_answers_total{x_cache=\"HIT\"} 1",
      "coalesce_answers_total{x_cache=\"STALE-IF-ERROR\"} 0",
      "coalesce_errors_total{code=\"upstream_timeout\"} 1",
      "coalesce_breaker_state{upstream=\"api\"} 0",
      "coalesce_breaker_state{upstream=\"pay\"} 1",
      "coalesce_breaker_transitions_total{upstream=\"pay\",to=\"open\"} 1",
      "coalesce_upstream_calls_total{upstream=\"api\"} 4",
      "coalesce_upstream_errors_total{upstream=\"api\",kind=\"timeout\"} 1",
      "coalesce_upstream_errors_total{upstream=\"api\",kind=\"status_5xx\"} 1",
      "# TYPE coalesce_upstream_latency_seconds histogram",
      "coalesce_upstream_latency_seconds_bucket{upstream=\"api\",le=\"0.001\"} "
      "1",
      "coalesce_upstream_latency_seconds_bucket{upstream=\"api\",le=\"0.025\"} "
      "3",
      "coalesce_upstream_latency_seconds_bucket{upstream=\"api\",le=\"30\"} 3",
      "coalesce_upstream_latency_seconds_bucket{upstream=\"api\",le=\"+Inf\"} "
      "4",
      "coalesce_upstream_latency_seconds_count{upstream=\"api\"} 4",
      "coalesce_upstream_latency_seconds_sum{upstream=\"api\"} 40.040500",
      "coalesce_upstream_latency_seconds_count{upstream=\"pay\"} 0",
      "# TYPE coalesce_http_connections_open gauge",
      "coalesce_http_connections_open 7",
      "coalesce_http_rejections_total{reason=\"bad_request\"} 3",
      "# TYPE coalesce_uptime_seconds gauge",
      "coalesce_build_info{version=\"9.8.7-test\"} 1",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!has_line(t, want[i]))
      fail_msg("missing line: %s", want[i]);

  /* Buckets cumulative, +Inf == _count, for every upstream. */
  const char *names[] = {"api", "pay"};
  for (int u = 0; u < 2; u++) {
    uint64_t prev = 0;
    for (size_t k = 0; k < METRIC_LATENCY_BUCKETS; k++) {
      char pre[160];
      snprintf(pre, sizeof pre,
               "coalesce_upstream_latency_seconds_bucket{upstream=\"%s\","
               "le=\"%g\"} ",
               names[u], metrics_latency_bounds[k]);
      uint64_t v = sample_value(t, pre);
      assert_true(v >= prev);
      prev = v;
    }
    char pre[160];
    snprintf(pre, sizeof pre,
             "coalesce_upstream_latency_seconds_bucket{upstream=\"%s\","
             "le=\"+Inf\"} ",
             names[u]);
    uint64_t inf = sample_value(t, pre);
    assert_true(inf >= prev);
    snprintf(pre, sizeof pre,
             "coalesce_upstream_latency_seconds_count{upstream=\"%s\"} ",
             names[u]);
    assert_int_equal(inf, sample_value(t, pre));
  }
  free(t);
}

static void test_metrics_label_escaping(void **state) {
  fixture_t *f = *state;
  add_upstream(f, "we\"ird\\na\nme");
  size_t len;
  char *t = admin_metrics_text(&f->app, &len);
  assert_non_null(t);
  check_exposition(t);
  assert_true(has_line(
      t, "coalesce_breaker_state{upstream=\"we\\\"ird\\\\na\\nme\"} 0"));
  free(t);
}

static void test_latency_quantile(void **state) {
  fixture_t *f = *state;
  metrics_t *m = f->app.metrics;
  int api = f->app.upstreams[0].metric;
  metrics_upstream_t *u = &m->upstreams[api];
  assert_true(admin_latency_quantile(u, 0.5) == 0.0); /* empty */
  for (int i = 0; i < 50; i++)
    metrics_upstream_call(m, api, 200, 0, 3000); /* (2.5, 5] ms */
  for (int i = 0; i < 50; i++)
    metrics_upstream_call(m, api, 200, 0, 70000); /* (50, 100] ms */
  assert_float_equal(admin_latency_quantile(u, 0.25), 0.00375, 1e-12);
  assert_float_equal(admin_latency_quantile(u, 0.5), 0.005, 1e-12);
  assert_float_equal(admin_latency_quantile(u, 0.9), 0.09, 1e-12);
  metrics_upstream_call(m, api, 200, 0, 60000000); /* 60 s: +Inf bucket */
  assert_float_equal(admin_latency_quantile(u, 1.0), 30.0, 1e-12);
}

/* ----------------------------------------------------- token & routes */

static void test_token_equal(void **state) {
  (void)state;
  const char *want = SECRET_TOKEN;
  assert_true(admin_token_equal(want, strlen(want), want));
  assert_false(admin_token_equal("adm1n-T0ken-zz8", 15, want));  /* last byte */
  assert_false(admin_token_equal("Xdm1n-T0ken-zz9", 15, want));  /* first */
  assert_false(admin_token_equal("adm1n-T0ken-zz", 14, want));   /* prefix */
  assert_false(admin_token_equal("adm1n-T0ken-zz99", 16, want)); /* longer */
  assert_false(admin_token_equal("", 0, want));
  /* Only given_len bytes count: a longer buffer with the token in front. */
  assert_true(admin_token_equal(SECRET_TOKEN "trailing", 15, want));
  assert_false(admin_token_equal(SECRET_TOKEN, 15, "adm1n"));
}

typedef struct req_builder {
  http_request_t req;
  http_header_t h[4];
} req_builder_t;

static const http_request_t *mkreq(req_builder_t *b, enum http_method method,
                                   const char *path, const char *hname,
                                   const char *hvalue) {
  memset(b, 0, sizeof *b);
  b->req.method = method;
  b->req.method_name = http_method_str(method);
  const char *q = strchr(path, '?');
  b->req.path = path;
  b->req.path_len = q != NULL ? (size_t)(q - path) : strlen(path);
  b->req.target = path;
  b->req.target_len = strlen(path);
  b->req.query = q != NULL ? q + 1 : "";
  b->req.query_len = strlen(b->req.query);
  b->req.body = "";
  b->req.peer_addr = "127.0.0.1";
  b->req.http_major = b->req.http_minor = 1;
  b->h[0] = (http_header_t){"Host", 4, "localhost", 9};
  b->req.nheaders = 1;
  if (hname != NULL) {
    b->h[1] = (http_header_t){hname, strlen(hname), hvalue, strlen(hvalue)};
    b->req.nheaders = 2;
  }
  b->req.headers = b->h;
  return &b->req;
}

/* Runs one request through admin_on_request; the caller frees c->body. */
static void serve(fixture_t *f, struct http_conn *c, enum http_method method,
                  const char *path, const char *hname, const char *hvalue) {
  req_builder_t b;
  memset(c, 0, sizeof *c);
  admin_on_request(&f->app, c, mkreq(&b, method, path, hname, hvalue));
  assert_int_equal(c->calls, 1); /* finished exactly once */
}

static void assert_error(struct http_conn *c, int status, const char *code) {
  assert_int_equal(c->status, status);
  json_t *j = json_loads(c->body, 0, NULL);
  assert_non_null(j);
  assert_string_equal(sval(j, "error", NULL), code);
  json_decref(j);
}

static void test_routes(void **state) {
  fixture_t *f = *state;
  struct http_conn c;

  serve(f, &c, HTTP_GET, ADMIN_PATH_STATS, NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_string_equal(c.ctype, "application/json");
  assert_non_null(strstr(c.headers, "Cache-Control: no-store\r\n"));
  json_t *j = json_loads(c.body, 0, NULL);
  assert_non_null(j);
  assert_int_equal(ival(j, "total_requests"), 0);
  json_decref(j);
  free(c.body);

  serve(f, &c, HTTP_HEAD, ADMIN_PATH_STATS, NULL, NULL);
  assert_int_equal(c.status, 200);
  free(c.body);

  serve(f, &c, HTTP_GET, ADMIN_PATH_HEALTH, NULL, NULL);
  assert_int_equal(c.status, 200);
  free(c.body);
  trip(f, 0);
  trip(f, 1);
  serve(f, &c, HTTP_GET, ADMIN_PATH_HEALTH, NULL, NULL);
  assert_int_equal(c.status, 503);
  j = json_loads(c.body, 0, NULL);
  assert_string_equal(sval(j, "status", NULL), "unhealthy");
  json_decref(j);
  free(c.body);

  serve(f, &c, HTTP_GET, "/metrics", NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_true(strncmp(c.ctype, "text/plain; version=0.0.4", 25) == 0);
  assert_true(has_line(c.body, "# TYPE coalesce_requests_total counter"));
  free(c.body);

  serve(f, &c, HTTP_GET, "/", NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_non_null(strstr(c.body, ADMIN_PATH_RESET));
  assert_non_null(strstr(c.body, ADMIN_PATH_FLIGHTS));
  assert_non_null(strstr(c.body, "\"" ADMIN_PATH_DASHBOARD "\""));
  j = json_loads(c.body, 0, NULL);
  assert_int_equal(json_array_size(json_object_get(j, "endpoints")), 6);
  json_decref(j);
  free(c.body);

  serve(f, &c, HTTP_GET, "/nope", NULL, NULL);
  assert_error(&c, 404, "not_found");
  free(c.body);
  serve(f, &c, HTTP_GET, ADMIN_PATH_STATS "/", NULL, NULL);
  assert_error(&c, 404, "not_found");
  free(c.body);

  serve(f, &c, HTTP_POST, ADMIN_PATH_STATS, NULL, NULL);
  assert_error(&c, 405, "method_not_allowed");
  assert_non_null(strstr(c.headers, "Allow: GET, HEAD\r\n"));
  free(c.body);

  serve(f, &c, HTTP_GET, ADMIN_PATH_RESET, NULL, NULL);
  assert_error(&c, 405, "method_not_allowed");
  assert_non_null(strstr(c.headers, "Allow: POST\r\n"));
  free(c.body);
  assert_int_equal(resets, 0);
}

/* Without a configured token, the reset needs none. */
static void test_reset_no_token(void **state) {
  fixture_t *f = *state;
  assert_int_equal(load(f, "k"), COALESCE_PENDING);
  finish_fetches(f);
  metrics_answer(f->app.metrics, METRIC_SRC_MISS, 200);
  struct http_conn c;
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, NULL, NULL);
  assert_int_equal(c.status, 200);
  json_t *j = json_loads(c.body, 0, NULL);
  assert_true(json_is_true(json_object_get(j, "reset")));
  json_decref(j);
  free(c.body);
  assert_int_equal(resets, 1);
  json_t *s = admin_stats_json(&f->app);
  assert_int_equal(ival(s, "total_requests"), 0);
  assert_int_equal(ival(s, "api_calls_made"), 0);
  assert_int_equal(ival(s, "answers.MISS"), 0);
  assert_int_equal(ival(s, "cache.entries"), 1); /* not the cache */
  json_decref(s);
}

static void test_reset_token(void **state) {
  fixture_t *f = *state;
  struct http_conn c;

  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, NULL, NULL); /* missing */
  assert_error(&c, 401, "unauthorized");
  assert_non_null(strstr(c.headers, "WWW-Authenticate: Bearer"));
  free(c.body);
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "Authorization",
        "Bearer wrong-token");
  assert_error(&c, 401, "unauthorized");
  free(c.body);
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "Authorization",
        "Basic " SECRET_TOKEN);
  assert_error(&c, 401, "unauthorized");
  free(c.body);
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "X-Admin-Token", "adm1n");
  assert_error(&c, 401, "unauthorized");
  free(c.body);
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "Authorization",
        "Bearer " SECRET_TOKEN "x");
  assert_error(&c, 401, "unauthorized");
  free(c.body);
  assert_int_equal(resets, 0);

  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "Authorization",
        "Bearer " SECRET_TOKEN);
  assert_int_equal(c.status, 200);
  free(c.body);
  assert_int_equal(resets, 1);
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "authorization",
        "bearer  " SECRET_TOKEN);
  assert_int_equal(c.status, 200);
  free(c.body);
  serve(f, &c, HTTP_POST, ADMIN_PATH_RESET, "X-Admin-Token", SECRET_TOKEN);
  assert_int_equal(c.status, 200);
  free(c.body);
  assert_int_equal(resets, 3);
}

/* ---------------------------------------------------------- flights */

#define SECRET_KEY "GET /me\nauthorization: Bearer " SECRET_TOKEN

static bool is_hex16(const char *s) {
  if (s == NULL || strlen(s) != 16)
    return false;
  for (int i = 0; i < 16; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

static void test_key_id(void **state) {
  (void)state;
  char a[17], b[17], c[17], raw[17];
  admin_key_id(42, a);
  admin_key_id(42, b);
  admin_key_id(43, c);
  assert_true(is_hex16(a));
  assert_string_equal(a, b); /* stable within the process */
  assert_string_not_equal(a, c);
  snprintf(raw, sizeof raw, "%016llx", 42ULL);
  assert_string_not_equal(a, raw); /* keyed, not the bare hash */
}

static void test_flights(void **state) {
  fixture_t *f = *state;
  app_t *app = &f->app;
  json_t *j = admin_flights_json(app, 0);
  assert_int_equal(ival(j, "pending_requests"), 0);
  assert_int_equal(ival(j, "limit"), ADMIN_FLIGHTS_DEFAULT);
  assert_int_equal(json_array_size(json_object_get(j, "flights")), 0);
  json_decref(j);

  /* A cold herd of 5 on a key holding an identity header, 2 on another. */
  for (int i = 0; i < 5; i++)
    assert_int_equal(load(f, SECRET_KEY), COALESCE_PENDING);
  fake_clock_advance(&f->fc, MS(1500));
  for (int i = 0; i < 2; i++)
    assert_int_equal(load(f, "GET /other"), COALESCE_PENDING);
  fake_clock_advance(&f->fc, MS(250));

  j = admin_flights_json(app, 10);
  assert_int_equal(ival(j, "pending_requests"), 2);
  json_t *list = json_object_get(j, "flights");
  assert_int_equal(json_array_size(list), 2);
  json_t *hot = json_array_get(list, 0), *cool = json_array_get(list, 1);
  /* the loader's leader waits on its own flight too: 1 + 4 followers */
  assert_int_equal(ival(hot, "waiters"), 5);
  assert_true(json_real_value(json_object_get(hot, "age_ms")) == 1750.0);
  assert_int_equal(ival(cool, "waiters"), 2);
  assert_true(json_real_value(json_object_get(cool, "age_ms")) == 250.0);
  const char *id = sval(hot, "key", NULL);
  assert_true(is_hex16(id));
  char want[17], raw[17];
  uint64_t h = XXH3_64bits(SECRET_KEY, strlen(SECRET_KEY));
  admin_key_id(h, want);
  assert_string_equal(id, want);
  snprintf(raw, sizeof raw, "%016llx", (unsigned long long)h);
  assert_string_not_equal(id, raw);
  assert_string_not_equal(id, sval(cool, "key", NULL));
  json_decref(j);

  /* through the route: limit, bad limits, and no key bytes anywhere */
  struct http_conn c;
  serve(f, &c, HTTP_GET, ADMIN_PATH_FLIGHTS "?limit=1", NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_string_equal(c.ctype, "application/json");
  assert_non_null(strstr(c.headers, "Cache-Control: no-store\r\n"));
  assert_null(strstr(c.body, SECRET_TOKEN));
  assert_null(strstr(c.body, "/me"));
  assert_null(strstr(c.body, "/other"));
  j = json_loads(c.body, 0, NULL);
  assert_int_equal(ival(j, "limit"), 1);
  assert_int_equal(json_array_size(json_object_get(j, "flights")), 1);
  json_t *only = json_array_get(json_object_get(j, "flights"), 0);
  assert_int_equal(ival(only, "waiters"), 5);
  json_decref(j);
  free(c.body);
  serve(f, &c, HTTP_GET, ADMIN_PATH_FLIGHTS "?x=1&limit=5000", NULL, NULL);
  assert_int_equal(c.status, 200);
  j = json_loads(c.body, 0, NULL);
  assert_int_equal(ival(j, "limit"), ADMIN_FLIGHTS_MAX);
  json_decref(j);
  free(c.body);
  const char *bad[] = {"?limit=abc", "?limit=0", "?limit=", "?limit=-1",
                       "?limit=1x"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char path[128];
    snprintf(path, sizeof path, "%s%s", ADMIN_PATH_FLIGHTS, bad[i]);
    serve(f, &c, HTTP_GET, path, NULL, NULL);
    assert_error(&c, 400, "bad_request");
    free(c.body);
  }
  serve(f, &c, HTTP_POST, ADMIN_PATH_FLIGHTS, NULL, NULL);
  assert_error(&c, 405, "method_not_allowed");
  free(c.body);

  finish_fetches(f);
  assert_int_equal(f->answered, 7);
  j = admin_flights_json(app, 10);
  assert_int_equal(ival(j, "pending_requests"), 0);
  assert_int_equal(json_array_size(json_object_get(j, "flights")), 0);
  json_decref(j);
}

/* -------------------------------------------------------- dashboard */

static void assert_dashboard_headers(const struct http_conn *c) {
  assert_non_null(strstr(c->headers, "Cache-Control: no-store\r\n"));
  const char *csp = strstr(c->headers, "Content-Security-Policy: ");
  assert_non_null(csp);
  const char *eol = strstr(csp, "\r\n");
  assert_non_null(eol);
  char policy[512];
  snprintf(policy, sizeof policy, "%.*s", (int)(eol - csp), csp);
  assert_non_null(strstr(policy, "default-src 'self'"));
  assert_non_null(strstr(policy, "script-src 'self'"));
  assert_non_null(strstr(policy, "style-src 'self'"));
  assert_non_null(strstr(policy, "frame-ancestors 'none'"));
  assert_null(strstr(policy, "unsafe")); /* no inline script or style */
  assert_null(strstr(policy, "*"));
  assert_non_null(strstr(c->headers, "X-Content-Type-Options: nosniff\r\n"));
}

/* Every <script> element of the page names a src: no inline script. */
static void assert_no_inline_script(const char *html) {
  for (const char *p = strstr(html, "<script"); p != NULL;
       p = strstr(p + 1, "<script")) {
    const char *end = strchr(p, '>');
    assert_non_null(end);
    char tag[256];
    snprintf(tag, sizeof tag, "%.*s", (int)(end - p), p);
    assert_non_null(strstr(tag, " src=\"/"));
    assert_true(strncmp(end, "></script>", 10) == 0);
  }
  assert_null(strstr(html, " style=")); /* no inline style either */
  assert_null(strstr(html, "<style"));
  assert_null(strstr(html, " onclick="));
  assert_null(strstr(html, " onload="));
}

static void test_dashboard(void **state) {
  fixture_t *f = *state;
  struct http_conn c;

  serve(f, &c, HTTP_GET, ADMIN_PATH_DASHBOARD, NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_string_equal(c.ctype, "text/html; charset=utf-8");
  assert_dashboard_headers(&c);
  assert_true(strncmp(c.body, "<!doctype html>", 15) == 0);
  assert_int_equal(strlen(c.body), c.len); /* no stray NUL sent */
  assert_non_null(strstr(c.body, "<script src=\"/dashboard.js\""));
  assert_non_null(strstr(c.body, "href=\"/dashboard.css\""));
  /* the figures the integration test reads */
  assert_non_null(strstr(c.body, "id=\"total-requests\""));
  assert_non_null(strstr(c.body, "id=\"api-calls-saved\""));
  assert_non_null(strstr(c.body, "id=\"hit-rate\""));
  assert_non_null(strstr(c.body, "id=\"hot-keys\""));
  assert_no_inline_script(c.body);
  assert_null(strstr(c.body, "http://")); /* nothing from the network */
  assert_null(strstr(c.body, "https://"));
  free(c.body);

  serve(f, &c, HTTP_GET, "/dashboard.js", NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_string_equal(c.ctype, "text/javascript; charset=utf-8");
  assert_dashboard_headers(&c);
  assert_non_null(strstr(c.body, "/api/v1/shared/deduplication"));
  assert_non_null(strstr(c.body, "\"/flights"));
  assert_null(strstr(c.body, "https://"));
  assert_null(strstr(c.body, "eval("));
  free(c.body);

  serve(f, &c, HTTP_GET, "/dashboard.css", NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_string_equal(c.ctype, "text/css; charset=utf-8");
  assert_dashboard_headers(&c);
  assert_non_null(strstr(c.body, "prefers-color-scheme"));
  assert_null(strstr(c.body, "://"));
  assert_null(strstr(c.body, "@import"));
  free(c.body);

  serve(f, &c, HTTP_GET, "/dashboard.svg", NULL, NULL);
  assert_int_equal(c.status, 200);
  assert_string_equal(c.ctype, "image/svg+xml");
  free(c.body);

  serve(f, &c, HTTP_HEAD, ADMIN_PATH_DASHBOARD, NULL, NULL);
  assert_int_equal(c.status, 200);
  free(c.body);

  serve(f, &c, HTTP_POST, ADMIN_PATH_DASHBOARD, NULL, NULL);
  assert_error(&c, 405, "method_not_allowed");
  free(c.body);
  const char *nope[] = {"/dashboard/",    "/dashboard.html", "/dash",
                        "/dashboard.jsx", "/embed.cmake",    "/index.html"};
  for (size_t i = 0; i < sizeof nope / sizeof nope[0]; i++) {
    serve(f, &c, HTTP_GET, nope[i], NULL, NULL);
    assert_error(&c, 404, "not_found");
    free(c.body);
  }

  /* the table ends with its sentinel and every entry is findable */
  size_t n = 0;
  for (const admin_asset_t *a = admin_assets; a->path != NULL; a++, n++) {
    assert_ptr_equal(admin_asset_find(a->path, strlen(a->path)), a);
    assert_true(a->len > 0);
    assert_int_equal(a->data[a->len], 0);
  }
  assert_int_equal(n, 4);
  /* paths need not be NUL-terminated: only len bytes count */
  assert_ptr_equal(admin_asset_find("/dashboard.jsX", 13),
                   admin_asset_find("/dashboard.js", 13));
  assert_null(admin_asset_find("/dashboard.jsX", 14));
  assert_null(admin_asset_find("/dashboard", 9));
}

/* ---------------------------------------------------------- secrets */

static void assert_no_secret(const char *out) {
  assert_null(strstr(out, SECRET_TOKEN));
  assert_null(strstr(out, SECRET_HEADER));
  assert_null(strstr(out, SECRET_REDIS));
  assert_null(strstr(out, "redis://"));
}

static void test_no_secrets(void **state) {
  fixture_t *f = *state;
  assert_int_equal(load(f, "k"), COALESCE_PENDING);
  finish_fetches(f);
  trip(f, 1);
  /* a flight in the air whose key holds a secret */
  assert_int_equal(load(f, SECRET_KEY), COALESCE_PENDING);
  const char *paths[] = {"/",
                         ADMIN_PATH_STATS,
                         ADMIN_PATH_HEALTH,
                         "/metrics",
                         "/nope",
                         ADMIN_PATH_RESET,
                         ADMIN_PATH_FLIGHTS,
                         ADMIN_PATH_DASHBOARD,
                         "/dashboard.js"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    struct http_conn c;
    serve(f, &c, HTTP_GET, paths[i], NULL, NULL);
    assert_no_secret(c.body);
    assert_no_secret(c.headers);
    free(c.body);
    serve(f, &c, HTTP_POST, paths[i], "X-Admin-Token", "nope");
    assert_no_secret(c.body);
    assert_no_secret(c.headers);
    free(c.body);
  }
  /* Make sure the secrets were there to leak. */
  config_t *cfg = app_config(&f->app);
  assert_string_equal(cfg->server.admin_token, SECRET_TOKEN);
  assert_non_null(strstr(cfg->redis.url, SECRET_REDIS));
}

int main(void) {
  log_set_level(LOG_LEVEL_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_stats_leader_followers_hits, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_stats_design_example, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_stats_stale_and_refresh, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_health_states, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_draining, setup, teardown),
      cmocka_unit_test_setup_teardown(test_metrics_text, setup, teardown),
      cmocka_unit_test_setup_teardown(test_metrics_label_escaping, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_latency_quantile, setup, teardown),
      cmocka_unit_test(test_token_equal),
      cmocka_unit_test_setup_teardown(test_routes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reset_no_token, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reset_token, setup_token, teardown),
      cmocka_unit_test_setup_teardown(test_no_secrets, setup_token, teardown),
      cmocka_unit_test(test_key_id),
      cmocka_unit_test_setup_teardown(test_flights, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dashboard, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
