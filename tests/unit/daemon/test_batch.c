/*
 * test_batch.c — the batch gatherer (daemon/batch.c) end to end: a real
 * libcoalesce loader whose leaders hand their fetch tokens to batch_add, a
 * real libuv loop and upstream client, and the project's test upstream
 * (tests/upstream/testupstream, its /batch/items endpoint and its call
 * counter at /__upstream/stats).
 *
 * The test upstream is started once for the group (path from $TESTUPSTREAM,
 * else next to this binary in the build tree) and stopped at the end. Its
 * counters are reset before each test. Windows that must not fire are set
 * to 10 s so that only batch_max can send a batch: the tests are ordered by
 * events, never by timing.
 */
#include "batch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "response.h"

extern char **environ;

#define LONG_WINDOW_MS 10000
#define MAX_LOADS 64

/* ---- the test upstream -------------------------------------------------------- */

static pid_t g_pid;
static int g_port;
static char g_dir[64];

static int http(const char *method, const char *path, int *status, char **body,
                size_t *body_len) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)g_port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                   "Connection: close\r\n\r\n",
                   method, path);
  if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
    close(fd);
    return -1;
  }
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (len + 1024 > cap)
      buf = realloc(buf, cap *= 2);
    ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
    if (r <= 0)
      break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = '\0';
  char *sep = strstr(buf, "\r\n\r\n");
  if (strncmp(buf, "HTTP/1.1 ", 9) != 0 || sep == NULL) {
    free(buf);
    return -1;
  }
  *status = atoi(buf + 9);
  *body_len = len - (size_t)(sep + 4 - buf);
  *body = malloc(*body_len + 1);
  memcpy(*body, sep + 4, *body_len + 1);
  free(buf);
  return 0;
}

static json_t *http_json(const char *method, const char *path) {
  int status = 0;
  char *body = NULL;
  size_t len = 0;
  assert_int_equal(http(method, path, &status, &body, &len), 0);
  assert_int_equal(status, 200);
  json_error_t je;
  json_t *j = json_loadb(body, len, 0, &je);
  free(body);
  assert_non_null(j);
  return j;
}

static long upstream_calls(void) {
  json_t *st = http_json("GET", "/__upstream/stats?paths=0");
  long n = (long)json_integer_value(json_object_get(st, "total"));
  json_decref(st);
  return n;
}

/* How often the upstream was asked exactly this path+query. */
static long path_calls(const char *pathq) {
  json_t *st = http_json("GET", "/__upstream/stats");
  long n = (long)json_integer_value(
      json_object_get(json_object_get(st, "paths"), pathq));
  json_decref(st);
  return n;
}

static void upstream_reset(void) {
  json_decref(http_json("POST", "/__upstream/reset"));
}

static int start_upstream(void **state) {
  (void)state;
  char bin[PATH_MAX];
  const char *env = getenv("TESTUPSTREAM");
  if (env != NULL) {
    snprintf(bin, sizeof bin, "%s", env);
  } else {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
      return -1;
    self[n] = '\0';
    snprintf(bin, sizeof bin, "%s/../tests/upstream/testupstream",
             dirname(self));
  }
  snprintf(g_dir, sizeof g_dir, "/tmp/test_batch.XXXXXX");
  if (mkdtemp(g_dir) == NULL)
    return -1;
  char portfile[96];
  snprintf(portfile, sizeof portfile, "%s/port", g_dir);
  char *argv[] = {bin,       "--port",  "0", "--port-file",
                  portfile,  "--quiet", NULL};
  if (posix_spawn(&g_pid, bin, NULL, NULL, argv, environ) != 0) {
    fprintf(stderr, "test_batch: cannot run %s (set TESTUPSTREAM)\n", bin);
    return -1;
  }
  for (int i = 0; i < 1000 && g_port == 0; i++) { /* waits for start-up */
    FILE *f = fopen(portfile, "r");
    if (f != NULL) {
      if (fscanf(f, "%d", &g_port) != 1)
        g_port = 0;
      fclose(f);
    }
    if (g_port == 0) {
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  unlink(portfile);
  rmdir(g_dir);
  if (g_port == 0)
    return -1;
  return upstream_global_init() == 0 ? 0 : -1;
}

static int stop_upstream(void **state) {
  (void)state;
  if (g_pid > 0) {
    kill(g_pid, SIGTERM);
    waitpid(g_pid, NULL, 0);
  }
  upstream_global_cleanup();
  return 0;
}

/* ---- the fixture: loader + loop + batcher ------------------------------------------ */

typedef struct fx fx_t;

/* One load: its key, what batch_add gets, and what it was answered. */
typedef struct load {
  fx_t *fx;
  batch_loop_t *bl;
  batch_req_t req;
  char key[64];
  char id[32];
  char base[128];
  _Atomic bool done;
  int err;
  coalesce_value_t *value;
  pthread_t thread;
} load_t;

struct fx {
  uv_loop_t loop;
  upstream_client_t *up;
  batcher_t *b;
  batch_loop_t *bl;
  coalesce_cache_t *cache;
  coalesce_coalescer_t *co;
  coalesce_loader_t *ld;
  config_route_t route;
  config_upstream_t ups;
  uint16_t statuses[2];
  char url[64];
  upstream_header_t hdrs[1];
  const char *join;           /* what the next loads ask batch_add for */
  coalesce_breaker_t *breaker;
  load_t loads[MAX_LOADS];
  size_t nloads;
  _Atomic size_t done;
};

static void start_fetch(void *ud, const void *key, size_t keylen,
                        void *fetch_ctx, coalesce_value_t *stale,
                        coalesce_fetch_t *fetch) {
  (void)ud, (void)key, (void)keylen, (void)stale;
  load_t *l = fetch_ctx;
  batch_add(l->bl, &l->req, fetch);
}

static void on_loaded(void *ud, coalesce_load_result_t *res) {
  load_t *l = ud;
  l->err = res->err;
  l->value = res->value;
  l->thread = pthread_self();
  atomic_store(&l->done, true);
  atomic_fetch_add(&l->fx->done, 1);
}

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  if (fx == NULL || uv_loop_init(&fx->loop) != 0)
    return -1;
  fx->up = upstream_client_new(&fx->loop, NULL);
  fx->b = batcher_new(NULL);
  fx->bl = batch_loop_new(fx->b, &fx->loop, fx->up);
  coalesce_cache_opts_t co;
  coalesce_cache_opts_init(&co);
  coalesce_coalescer_opts_t fo;
  coalesce_coalescer_opts_init(&fo);
  if (fx->up == NULL || fx->b == NULL || fx->bl == NULL ||
      coalesce_cache_new(&co, &fx->cache) != 0 ||
      coalesce_coalescer_new(&fo, &fx->co) != 0)
    return -1;
  coalesce_loader_opts_t lo = {.cache = fx->cache,
                               .coalescer = fx->co,
                               .start = start_fetch};
  if (coalesce_loader_new(&lo, &fx->ld) != 0)
    return -1;

  snprintf(fx->url, sizeof fx->url, "http://127.0.0.1:%d", g_port);
  fx->ups.name = "test";
  fx->ups.url = fx->url;
  fx->ups.connect_timeout_ms = 2000;
  fx->ups.tls_verify = true;
  fx->statuses[0] = 200;
  fx->statuses[1] = 404;
  config_route_t *r = &fx->route;
  r->prefix = "/batch";
  r->ttl_ms = 60000;
  r->stale_ms = 1000;
  r->upstream_timeout_ms = 5000;
  r->policy = CONFIG_POLICY_OVERRIDE;
  r->cache_statuses = fx->statuses;
  r->ncache_statuses = 2;
  r->batch_param = "id";
  r->batch_max = 20;
  r->batch_window_ms = LONG_WINDOW_MS;
  r->batch_id_path = "data[].id";
  r->batch_item_wrap = "{\"data\":[ITEM]}";
  fx->hdrs[0] = (upstream_header_t){"X-Client", 8, "a", 1};
  upstream_reset();
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  batch_loop_close(fx->bl);
  upstream_client_close(fx->up);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&fx->loop);
  batcher_free(fx->b);
  for (size_t i = 0; i < fx->nloads; i++)
    coalesce_value_release(fx->loads[i].value);
  coalesce_loader_free(fx->ld);
  coalesce_coalescer_free(fx->co);
  coalesce_cache_free(fx->cache);
  free(fx);
  return rc == 0 ? 0 : -1; /* every uv handle was closed */
}

/* Starts a load of key for id under base (on bl's thread). */
static load_t *load_on(fx_t *fx, batch_loop_t *bl, const char *key,
                       const char *base, const char *id) {
  assert_true(fx->nloads < MAX_LOADS);
  load_t *l = &fx->loads[fx->nloads++];
  l->fx = fx;
  l->bl = bl;
  snprintf(l->key, sizeof l->key, "%s", key);
  snprintf(l->id, sizeof l->id, "%s", id);
  snprintf(l->base, sizeof l->base, "%s", base);
  l->req = (batch_req_t){.route = &fx->route,
                         .upstream = &fx->ups,
                         .base_target = l->base,
                         .base_target_len = strlen(l->base),
                         .id = l->id,
                         .id_len = strlen(l->id),
                         .headers = fx->hdrs,
                         .nheaders = 1,
                         .join = fx->join,
                         .breaker = fx->breaker};
  coalesce_load_opts_t o;
  coalesce_load_opts_init(&o);
  o.fetch_ctx = l;
  coalesce_load_result_t now;
  int rc = coalesce_loader_load(fx->ld, l->key, strlen(l->key), &o, on_loaded,
                                l, &now, NULL);
  if (rc != COALESCE_PENDING) {
    l->err = rc < 0 ? rc : now.err;
    l->value = now.value;
    atomic_store(&l->done, true);
    atomic_fetch_add(&fx->done, 1);
  }
  return l;
}

static load_t *load(fx_t *fx, const char *base, const char *id) {
  char key[64];
  snprintf(key, sizeof key, "k:%s:%s", base, id);
  return load_on(fx, fx->bl, key, base, id);
}

static bool g_watchdog;
static void on_watchdog(uv_timer_t *t) {
  (void)t;
  g_watchdog = true;
}

/* Runs the loop until `want` loads are answered (or a generous watchdog
 * fails the test rather than hanging it). */
static void run_until(fx_t *fx, size_t want) {
  uv_timer_t wd;
  uv_timer_init(&fx->loop, &wd);
  g_watchdog = false;
  uv_timer_start(&wd, on_watchdog, 30000, 0);
  while (atomic_load(&fx->done) < want && !g_watchdog)
    uv_run(&fx->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&wd, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_false(g_watchdog);
}

/* The load was answered with this exact single-id upstream answer. */
static void assert_same_as_single(const load_t *l, const char *single_path) {
  assert_true(atomic_load(&l->done));
  assert_int_equal(l->err, 0);
  assert_non_null(l->value);
  const response_t *r = response_of(l->value);
  assert_int_equal(r->status, 200);
  json_error_t je;
  json_t *got = json_loadb(response_body(r), response_body_len(r), 0, &je);
  assert_non_null(got);
  json_t *want = http_json("GET", single_path);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
}

static bool cached(fx_t *fx, const load_t *l) {
  coalesce_lookup_t lk;
  if (coalesce_cache_get(fx->cache, l->key, strlen(l->key), &lk) != 0)
    return false;
  coalesce_value_release(lk.value);
  return true;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_fifty_ids_three_calls(void **state) {
  fx_t *fx = *state;
  fx->route.batch_window_ms = 50; /* sends the last 10 */
  for (int i = 1; i <= 50; i++) {
    char id[8];
    snprintf(id, sizeof id, "%d", i);
    load(fx, "/batch/items", id);
  }
  run_until(fx, 50);
  assert_int_equal(upstream_calls(), 3);
  /* the ids went out 20, 20, 10, each once */
  json_t *st = http_json("GET", "/__upstream/stats");
  json_t *paths = json_object_get(st, "paths");
  assert_int_equal(json_object_size(paths), 3);
  size_t ids_sent = 0;
  const char *p;
  json_t *v;
  json_object_foreach(paths, p, v) {
    assert_int_equal(json_integer_value(v), 1);
    assert_int_equal(strncmp(p, "/batch/items?id=", 16), 0);
    for (const char *s = p; (s = strstr(s, "id=")) != NULL; s += 3)
      ids_sent++;
  }
  json_decref(st);
  assert_int_equal(ids_sent, 50);

  batch_stats_t bs;
  batcher_stats(fx->b, &bs);
  assert_int_equal(bs.batches_made, 3);
  assert_int_equal(bs.batched_keys, 50);
  assert_int_equal(bs.calls_saved, 47);
  assert_int_equal(bs.ids_per_batch[5], 2); /* 17-32: two of 20 */
  assert_int_equal(bs.ids_per_batch[4], 1); /* 9-16: one of 10 */
  assert_int_equal(bs.failed_calls, 0);

  for (size_t i = 0; i < 50; i++) {
    char single[64];
    snprintf(single, sizeof single, "/batch/items/%s", fx->loads[i].id);
    assert_same_as_single(&fx->loads[i], single);
    /* cached under the single-id key, with the route's ttl */
    assert_true(cached(fx, &fx->loads[i]));
  }
  batcher_stats_reset(fx->b);
  batcher_stats(fx->b, &bs);
  assert_int_equal(bs.batches_made, 0);
}

static void test_window_sends_partial_batch(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 100;
  fx->route.batch_window_ms = 20;
  load(fx, "/batch/items", "1");
  load(fx, "/batch/items", "2");
  load(fx, "/batch/items", "3");
  run_until(fx, 3); /* only the window timer can send these */
  assert_int_equal(path_calls("/batch/items?id=1&id=2&id=3"), 1);
  assert_int_equal(upstream_calls(), 1);
  for (size_t i = 0; i < 3; i++) {
    char single[64];
    snprintf(single, sizeof single, "/batch/items/%s", fx->loads[i].id);
    assert_same_as_single(&fx->loads[i], single);
  }
}

static void test_encoded_ids(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 4;
  /* sent as the canonical query has them, matched decoded */
  static const char *const ids[] = {"1", "x%2Fy", "caf%C3%A9", "a+b"};
  for (size_t i = 0; i < 4; i++)
    load(fx, "/batch/items", ids[i]);
  run_until(fx, 4);
  assert_int_equal(upstream_calls(), 1);
  assert_int_equal(
      path_calls("/batch/items?id=1&id=x%2Fy&id=caf%C3%A9&id=a+b"), 1);
  for (size_t i = 0; i < 4; i++) {
    char single[64];
    snprintf(single, sizeof single, "/batch/items/%s", ids[i]);
    assert_same_as_single(&fx->loads[i], single);
  }
}

static void test_separator_join(void **state) {
  fx_t *fx = *state;
  fx->route.batch_param = "ids";
  fx->route.batch_max = 3;
  fx->join = ",";
  load(fx, "/batch/items", "7");
  load(fx, "/batch/items", "8");
  load(fx, "/batch/items", "9");
  run_until(fx, 3);
  assert_int_equal(upstream_calls(), 1);
  assert_int_equal(path_calls("/batch/items?ids=7,8,9"), 1);
  for (size_t i = 0; i < 3; i++) {
    char single[64];
    snprintf(single, sizeof single, "/batch/items/%s", fx->loads[i].id);
    assert_same_as_single(&fx->loads[i], single);
  }
}

static void test_missing_id_is_404(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 3;
  load_t *a = load(fx, "/batch/items?missing=7", "5");
  load_t *b = load(fx, "/batch/items?missing=7", "6");
  load_t *c = load(fx, "/batch/items?missing=7", "7");
  run_until(fx, 3);
  assert_int_equal(upstream_calls(), 1);
  assert_same_as_single(a, "/batch/items/5?missing=7");
  assert_same_as_single(b, "/batch/items/6?missing=7");
  assert_int_equal(c->err, 0);
  const response_t *r = response_of(c->value);
  assert_int_equal(r->status, 404);
  json_error_t je;
  json_t *got = json_loadb(response_body(r), response_body_len(r), 0, &je);
  json_t *want = json_pack("{s:s,s:s}", "error", "not_found", "id", "7");
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  size_t len;
  const char *ct = response_header(r, "content-type", &len);
  assert_non_null(ct);
  assert_int_equal(strncmp(ct, "application/json", len), 0);
  assert_true(cached(fx, a));
  assert_false(cached(fx, c)); /* 404 kept only with a negative_ttl */
  batch_stats_t bs;
  batcher_stats(fx->b, &bs);
  assert_int_equal(bs.missing_ids, 1);
}

static void test_missing_id_stored_with_negative_ttl(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 2;
  fx->route.negative_ttl_ms = 5000;
  load(fx, "/batch/items?missing=2", "1");
  load_t *m = load(fx, "/batch/items?missing=2", "2");
  run_until(fx, 2);
  assert_int_equal(response_of(m->value)->status, 404);
  assert_true(cached(fx, m));
}

static void test_malformed_is_502_for_each(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 3;
  for (int i = 1; i <= 3; i++) {
    char id[8];
    snprintf(id, sizeof id, "%d", i);
    load(fx, "/batch/items?malformed=1", id);
  }
  run_until(fx, 3);
  assert_int_equal(upstream_calls(), 1);
  for (size_t i = 0; i < 3; i++) {
    const load_t *l = &fx->loads[i];
    assert_int_equal(l->err, COALESCE_EFETCH);
    assert_non_null(l->value); /* the message the proxy puts in its 502 */
    assert_non_null(strstr(coalesce_value_data(l->value), "not valid JSON"));
    assert_false(cached(fx, l));
  }
  batch_stats_t bs;
  batcher_stats(fx->b, &bs);
  assert_int_equal(bs.malformed, 1);
  assert_int_equal(bs.failed_calls, 1);
}

static void test_upstream_500_for_each(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 3;
  for (int i = 1; i <= 3; i++) {
    char id[8];
    snprintf(id, sizeof id, "%d", i);
    load(fx, "/batch/items?status=500", id);
  }
  run_until(fx, 3);
  assert_int_equal(upstream_calls(), 1);
  for (size_t i = 0; i < 3; i++) {
    const load_t *l = &fx->loads[i];
    assert_int_equal(l->err, 0);
    assert_ptr_equal(l->value, fx->loads[0].value); /* one shared response */
    assert_int_equal(response_of(l->value)->status, 500);
    assert_false(cached(fx, l));
  }
}

static void test_transport_error_for_each(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 2;
  load(fx, "/batch/items?fail=reset", "1");
  load(fx, "/batch/items?fail=reset", "2");
  run_until(fx, 2);
  for (size_t i = 0; i < 2; i++) {
    assert_int_equal(fx->loads[i].err, COALESCE_EFETCH);
    assert_non_null(fx->loads[i].value);
    assert_true(coalesce_value_len(fx->loads[i].value) > 0);
  }
}

static void test_same_id_sent_once(void **state) {
  fx_t *fx = *state;
  fx->route.batch_window_ms = 0; /* the next loop turn */
  /* two flights (say a solo retry and a normal one) for one id */
  load_t *a = load_on(fx, fx->bl, "a:5", "/batch/items", "5");
  load_t *b = load_on(fx, fx->bl, "b:5", "/batch/items", "5");
  load(fx, "/batch/items", "6");
  run_until(fx, 3);
  assert_int_equal(upstream_calls(), 1);
  assert_int_equal(path_calls("/batch/items?id=5&id=6"), 1);
  assert_same_as_single(a, "/batch/items/5");
  assert_same_as_single(b, "/batch/items/5");
}

static void test_groups_stay_apart(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 2;
  load(fx, "/batch/items?x=1", "1");
  load(fx, "/batch/items?x=2", "2"); /* another base target */
  load(fx, "/batch/items?x=1", "3");
  fx->hdrs[0].value = "b"; /* another client identity from here on */
  load(fx, "/batch/items?x=1", "4");
  load(fx, "/batch/items?x=2", "5");
  load(fx, "/batch/items?x=1", "6");
  run_until(fx, 4); /* {1,3} and {4,6} are full; {2} and {5} wait */
  assert_int_equal(path_calls("/batch/items?x=1&id=1&id=3"), 1);
  assert_int_equal(path_calls("/batch/items?x=1&id=4&id=6"), 1);
  assert_int_equal(upstream_calls(), 2);
  batch_loop_close(fx->bl); /* the two half-full batches are canceled */
  assert_int_equal(atomic_load(&fx->done), 6);
  assert_int_equal(fx->loads[1].err, COALESCE_ECANCELED);
  assert_int_equal(fx->loads[4].err, COALESCE_ECANCELED);
  assert_int_equal(upstream_calls(), 2);
}

static void test_close_cancels_and_refuses(void **state) {
  fx_t *fx = *state;
  load(fx, "/batch/items", "1");
  load(fx, "/batch/items", "2");
  assert_int_equal(atomic_load(&fx->done), 0);
  batch_loop_close(fx->bl);
  assert_int_equal(atomic_load(&fx->done), 2); /* completed inside close */
  load_t *late = load(fx, "/batch/items", "3");
  assert_true(atomic_load(&late->done));
  assert_int_equal(late->err, COALESCE_ECANCELED);
  for (size_t i = 0; i < 2; i++)
    assert_int_equal(fx->loads[i].err, COALESCE_ECANCELED);
  assert_int_equal(upstream_calls(), 0);
  batch_stats_t bs;
  batcher_stats(fx->b, &bs);
  assert_int_equal(bs.canceled, 3);
  assert_int_equal(bs.batches_made, 0);
}

static void test_breaker_told_once_per_call(void **state) {
  fx_t *fx = *state;
  coalesce_breaker_opts_t bo;
  coalesce_breaker_opts_init(&bo);
  bo.consecutive_failures = 3;
  coalesce_breaker_t *br;
  assert_int_equal(coalesce_breaker_new(&bo, &br), 0);
  fx->route.batch_max = 5;
  fx->breaker = br; /* the loads carry none: one outcome per call */
  for (int i = 1; i <= 5; i++) {
    char id[8];
    snprintf(id, sizeof id, "%d", i);
    load(fx, "/batch/items?status=500", id);
  }
  run_until(fx, 5);
  coalesce_stats_t s;
  memset(&s, 0, sizeof s);
  coalesce_breaker_stats(br, &s);
  assert_int_equal(s.breaker_failures, 1);
  assert_int_equal(coalesce_breaker_state(br), COALESCE_BREAKER_CLOSED);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(response_of(fx->loads[i].value)->status, 500);
  coalesce_breaker_free(br);
}

/* ---- two loops ----------------------------------------------------------------------- */

typedef struct other_loop {
  fx_t *fx;
  uv_loop_t loop;
  upstream_client_t *up;
  batch_loop_t *bl;
  uv_async_t stop;
  load_t *l;
  uv_sem_t added;
  int ok;
} other_loop_t;

static void on_stop(uv_async_t *h) {
  other_loop_t *o = h->data;
  batch_loop_close(o->bl);
  upstream_client_close(o->up);
  uv_close((uv_handle_t *)&o->stop, NULL);
}

static void *other_main(void *arg) {
  other_loop_t *o = arg;
  o->ok = uv_loop_init(&o->loop) == 0;
  o->up = upstream_client_new(&o->loop, NULL);
  o->bl = batch_loop_new(o->fx->b, &o->loop, o->up);
  uv_async_init(&o->loop, &o->stop, on_stop);
  o->stop.data = o;
  o->ok = o->ok && o->up != NULL && o->bl != NULL;
  /* this id fills the batch the main loop opened */
  o->l = load_on(o->fx, o->bl, "k:2", "/batch/items", "2");
  uv_sem_post(&o->added);
  uv_run(&o->loop, UV_RUN_DEFAULT);
  o->ok = o->ok && uv_loop_close(&o->loop) == 0;
  return NULL;
}

static void test_two_loops_one_batch(void **state) {
  fx_t *fx = *state;
  fx->route.batch_max = 2;
  load_t *a = load_on(fx, fx->bl, "k:1", "/batch/items", "1");
  other_loop_t o = {.fx = fx};
  uv_sem_init(&o.added, 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, other_main, &o), 0);
  uv_sem_wait(&o.added);
  run_until(fx, 2);
  uv_async_send(&o.stop);
  pthread_join(th, NULL);
  uv_sem_destroy(&o.added);
  assert_true(o.ok);
  assert_int_equal(upstream_calls(), 1);
  assert_int_equal(path_calls("/batch/items?id=1&id=2"), 1);
  assert_same_as_single(a, "/batch/items/1");
  assert_same_as_single(o.l, "/batch/items/2");
  /* the call was made and answered by the loop that opened the batch */
  assert_true(pthread_equal(a->thread, pthread_self()));
  assert_true(pthread_equal(o.l->thread, pthread_self()));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_fifty_ids_three_calls, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_window_sends_partial_batch, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_encoded_ids, setup, teardown),
      cmocka_unit_test_setup_teardown(test_separator_join, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_id_is_404, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_id_stored_with_negative_ttl,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_is_502_for_each, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_upstream_500_for_each, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_transport_error_for_each, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_same_id_sent_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_groups_stay_apart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_cancels_and_refuses, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_breaker_told_once_per_call, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_two_loops_one_batch, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, start_upstream, stop_upstream);
}
