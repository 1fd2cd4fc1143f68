/* test_config.c — coalesced's configuration: value parsers, flags, the INI
 * file, precedence and inheritance, route matching and error messages; the
 * key tables themselves (config_int.h) and docs/config.md against them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "config_int.h"

#define MS(x) ((uint64_t)(x))
#define SECS(x) ((uint64_t)(x)*1000)
#define MINS(x) ((uint64_t)(x)*60000)

/* ---------------------------------------------------------------- helpers */

static char tmp_path[64];

/* Writes an INI file to a fresh temp path (tmp_path) and returns it. */
static const char *write_ini(const char *text) {
  strcpy(tmp_path, "/tmp/coalesce-cfg-XXXXXX.ini");
  int fd = mkstemps(tmp_path, 4);
  assert_true(fd >= 0);
  size_t len = strlen(text);
  assert_int_equal(write(fd, text, len), (ssize_t)len);
  close(fd);
  return tmp_path;
}

/* Loads text as a file, finalizes; returns the config or NULL with err. */
static config_t *load(const char *text, char *err, size_t errlen) {
  const char *path = write_ini(text);
  config_t *cfg = config_new();
  assert_non_null(cfg);
  int rc = config_load_file(cfg, path, err, errlen);
  if (rc == 0)
    rc = config_finalize(cfg, err, errlen);
  unlink(path);
  if (rc != 0) {
    config_free(cfg);
    return NULL;
  }
  return cfg;
}

/* Expects loading to fail with exactly "PATH:LINE: rest". */
static void expect_file_error(const char *text, unsigned line,
                              const char *rest) {
  char err[512], want[512];
  config_t *cfg = load(text, err, sizeof err);
  assert_null(cfg);
  snprintf(want, sizeof want, "%s:%u: %s", tmp_path, line, rest);
  assert_string_equal(err, want);
}

typedef struct run {
  config_action_t action;
  config_t *cfg;
  char err[512];
  char out[8192];
} run_t;

/* Runs config_parse_args on a NULL-terminated list of arguments. */
static void run_args(run_t *r, ...) {
  char *argv[64];
  int argc = 0;
  argv[argc++] = "coalesced";
  va_list ap;
  va_start(ap, r);
  for (char *a; (a = va_arg(ap, char *)) != NULL;)
    argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  memset(r, 0, sizeof *r);
  FILE *out = fmemopen(r->out, sizeof r->out - 1, "w");
  assert_non_null(out);
  r->action = config_parse_args(argc, argv, "9.9.9", out, &r->cfg, r->err,
                                sizeof r->err);
  fclose(out);
}

static const config_route_t *route(const config_t *cfg, const char *prefix) {
  for (size_t i = 0; i < cfg->nroutes; i++)
    if (strcmp(cfg->routes[i].prefix, prefix) == 0)
      return &cfg->routes[i];
  fail_msg("no route %s", prefix);
  return NULL;
}

static const config_upstream_t *upstream(const config_t *cfg,
                                         const config_route_t *r) {
  assert_true(r->upstream < cfg->nupstreams);
  return &cfg->upstreams[r->upstream];
}

/* ------------------------------------------------------ durations, sizes */

static void test_durations(void **state) {
  (void)state;
  static const struct {
    const char *s;
    uint64_t ms;
  } ok[] = {{"0", 0},         {"250ms", 250},
            {"5s", SECS(5)},  {"2m", MINS(2)},
            {"1h", MINS(60)}, {"1.5s", 1500},
            {"1m30s", 90000}, {"0.25m", SECS(15)},
            {"0s", 0},        {"1h1m1s1ms", 3661001}};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint64_t v = 12345;
    assert_int_equal(config_parse_duration_ms(ok[i].s, &v), CONFIG_PARSE_OK);
    assert_int_equal(v, ok[i].ms);
  }
  static const char *const bad[] = {"",     "5x",   "s",  "-5s",
                                    "5 s",  "5S",   "ms", "0.5ms",
                                    "1.s5", "1m30", "5d", "1e3s"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v;
    assert_int_equal(config_parse_duration_ms(bad[i], &v),
                     CONFIG_PARSE_INVALID);
  }
  uint64_t v;
  assert_int_equal(config_parse_duration_ms("5", &v), CONFIG_PARSE_NO_UNIT);
  assert_int_equal(config_parse_duration_ms("1.5", &v), CONFIG_PARSE_NO_UNIT);
  assert_int_equal(config_parse_duration_ms("99999999999999999999ms", &v),
                   CONFIG_PARSE_RANGE);
  assert_int_equal(config_parse_duration_ms("18446744073709551615h", &v),
                   CONFIG_PARSE_RANGE);
  assert_int_equal(config_parse_duration_ms("18446744073709551615ms1ms", &v),
                   CONFIG_PARSE_RANGE);
}

static void test_sizes(void **state) {
  (void)state;
  static const struct {
    const char *s;
    uint64_t n;
  } ok[] = {{"0", 0},
            {"65536", 65536},
            {"64KiB", 65536},
            {"64K", 65536},
            {"64k", 65536},
            {"1.5MiB", 1572864},
            {"256 MiB", 268435456},
            {"256M", 268435456},
            {"1GiB", 1073741824},
            {"1g", 1073741824},
            {"10b", 10}};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint64_t v = 7;
    assert_int_equal(config_parse_size(ok[i].s, &v), CONFIG_PARSE_OK);
    assert_int_equal(v, ok[i].n);
  }
  static const char *const bad[] = {"",   "abc", "10KB", "1MB", "1.5",
                                    "-1", "1Ki", "K",    "1 2"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v;
    assert_int_equal(config_parse_size(bad[i], &v), CONFIG_PARSE_INVALID);
  }
  uint64_t v;
  assert_int_equal(config_parse_size("99999999999999999999", &v),
                   CONFIG_PARSE_RANGE);
  assert_int_equal(config_parse_size("17179869184GiB", &v), CONFIG_PARSE_RANGE);
}

/* ------------------------------------------------------------- the flags */

static void test_args_defaults(void **state) {
  (void)state;
  run_t r;
  run_args(&r, "--upstream", "https://API.Example.com/v4/", NULL);
  assert_int_equal(r.action, CONFIG_RUN);
  const config_t *c = r.cfg;
  assert_string_equal(c->server.listen.host, "127.0.0.1");
  assert_int_equal(c->server.listen.port, 8080);
  assert_string_equal(c->server.admin_listen.host, "127.0.0.1");
  assert_int_equal(c->server.admin_listen.port, 9901);
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  assert_int_equal(c->server.workers, cpus < 1 ? 1 : cpus);
  assert_null(c->server.admin_token);
  assert_int_equal(c->server.log_level, LOG_LEVEL_INFO);
  assert_int_equal(c->server.max_connections, 10000);
  assert_int_equal(c->server.max_header_bytes, 16 * 1024);
  assert_int_equal(c->server.max_headers, 100);
  assert_int_equal(c->server.max_uri_bytes, 8 * 1024);
  assert_int_equal(c->server.max_body_bytes, 1024 * 1024);
  assert_int_equal(c->server.max_response_bytes, 8 * 1024 * 1024);
  assert_int_equal(c->server.header_timeout_ms, SECS(10));
  assert_int_equal(c->server.idle_timeout_ms, SECS(60));
  assert_int_equal(c->server.shutdown_timeout_ms, SECS(10));
  assert_int_equal(c->cache.max_bytes, 256 * 1024 * 1024);
  assert_int_equal(c->cache.max_flights, 10000);
  assert_int_equal(c->cache.max_waiters_per_key, 10000);
  assert_int_equal(c->cache.max_waiters, 100000);
  assert_int_equal(c->cache.unshared_ms, SECS(2));
  assert_null(c->redis.url);
  assert_string_equal(c->redis.prefix, "coalesce:");
  assert_int_equal(c->redis.timeout_ms, 250);
  assert_int_equal(c->redis.lock_ttl_ms, SECS(11)); /* timeout + 1 s */

  assert_int_equal(c->nupstreams, 1);
  const config_upstream_t *u = &c->upstreams[0];
  assert_string_equal(u->name, "default");
  assert_string_equal(u->url, "https://api.example.com/v4");
  assert_true(u->tls);
  assert_string_equal(u->host, "api.example.com");
  assert_int_equal(u->port, 443);
  assert_string_equal(u->base_path, "/v4");
  assert_true(u->tls_verify);
  assert_null(u->ca_file);
  assert_int_equal(u->connect_timeout_ms, SECS(2));
  assert_int_equal(u->timeout_ms, SECS(10));
  assert_int_equal(u->max_connections, 64);
  assert_int_equal(u->nheaders, 0);
  assert_int_equal(u->breaker.consecutive_failures, 5);
  assert_true(u->breaker.failure_rate == 0.5);
  assert_int_equal(u->breaker.window, 20);
  assert_int_equal(u->breaker.min_volume, 10);
  assert_int_equal(u->breaker.open_ms, SECS(30));
  assert_int_equal(u->breaker.half_open_probes, 1);

  assert_int_equal(c->nroutes, 1);
  const config_route_t *rt = &c->routes[0];
  assert_string_equal(rt->prefix, "/");
  assert_int_equal(rt->upstream, 0);
  assert_string_equal(rt->upstream_name, "default");
  assert_int_equal(rt->ttl_ms, SECS(5));
  assert_int_equal(rt->stale_ms, SECS(30));
  assert_int_equal(rt->stale_if_error_ms, MINS(5));
  assert_int_equal(rt->max_wait_ms, SECS(5));
  assert_int_equal(rt->upstream_timeout_ms, SECS(10));
  assert_int_equal(rt->policy, CONFIG_POLICY_OVERRIDE);
  assert_int_equal(rt->negative_ttl_ms, 0);
  assert_int_equal(rt->nidentity_headers, 3);
  assert_string_equal(rt->identity_headers[0], "authorization");
  assert_string_equal(rt->identity_headers[1], "cookie");
  assert_string_equal(rt->identity_headers[2], "x-api-key");
  static const int statuses[] = {200, 203, 204, 300, 301, 404, 410};
  assert_int_equal(rt->ncache_statuses, 7);
  for (size_t i = 0; i < 7; i++)
    assert_true(config_route_caches_status(rt, statuses[i]));
  assert_false(config_route_caches_status(rt, 500));
  assert_false(config_route_caches_status(rt, 302));
  assert_null(rt->batch_param);
  config_free(r.cfg);
}

static void test_args_each_flag(void **state) {
  (void)state;
  run_t r;
  run_args(&r, "-u", "http://10.0.0.5:8081", "--listen", "0.0.0.0:9000",
           "--admin-listen=[::1]:9100", "--ttl", "1m", "--stale", "0",
           "--stale-if-error", "1h", "--max-wait", "250ms",
           "--upstream-timeout", "3s", "--policy", "origin", "--admin-token",
           "s3cret", "--workers", "3", "--redis",
           "redis://:pw@127.0.0.1:6380/2", "--log-level", "debug", NULL);
  assert_int_equal(r.action, CONFIG_RUN);
  const config_t *c = r.cfg;
  assert_string_equal(c->server.listen.host, "0.0.0.0");
  assert_int_equal(c->server.listen.port, 9000);
  assert_string_equal(c->server.admin_listen.host, "::1");
  assert_int_equal(c->server.admin_listen.port, 9100);
  assert_string_equal(c->server.admin_token, "s3cret");
  assert_int_equal(c->server.workers, 3);
  assert_int_equal(c->server.log_level, LOG_LEVEL_DEBUG);
  assert_string_equal(c->redis.host, "127.0.0.1");
  assert_int_equal(c->redis.port, 6380);
  assert_int_equal(c->redis.db, 2);
  assert_string_equal(c->redis.password, "pw");
  assert_null(c->redis.username);
  assert_int_equal(c->redis.lock_ttl_ms, SECS(4));
  const config_upstream_t *u = &c->upstreams[0];
  assert_string_equal(u->url, "http://10.0.0.5:8081");
  assert_false(u->tls);
  assert_int_equal(u->port, 8081);
  assert_string_equal(u->base_path, "");
  assert_int_equal(u->timeout_ms, SECS(3));
  const config_route_t *rt = &c->routes[0];
  assert_int_equal(rt->ttl_ms, MINS(1));
  assert_int_equal(rt->stale_ms, 0);
  assert_int_equal(rt->stale_if_error_ms, MINS(60));
  assert_int_equal(rt->max_wait_ms, 250);
  assert_int_equal(rt->upstream_timeout_ms, SECS(3));
  assert_int_equal(rt->policy, CONFIG_POLICY_ORIGIN);
  config_free(r.cfg);
}

static void test_args_headers_expand_env(void **state) {
  (void)state;
  setenv("COALESCE_TEST_KEY", "abc123", 1);
  run_t r;
  run_args(&r, "--upstream", "https://api.example.com", "--header",
           "X-Api-Key: ${COALESCE_TEST_KEY}", "-H",
           "X-Client:id-${COALESCE_TEST_KEY}-$x", "--header=Accept: */*", NULL);
  assert_int_equal(r.action, CONFIG_RUN);
  const config_upstream_t *u = &r.cfg->upstreams[0];
  assert_int_equal(u->nheaders, 3);
  assert_string_equal(u->headers[0].name, "X-Api-Key");
  assert_string_equal(u->headers[0].value, "abc123");
  assert_string_equal(u->headers[1].name, "X-Client");
  assert_string_equal(u->headers[1].value, "id-abc123-$x");
  assert_string_equal(u->headers[2].value, "*/*");
  config_free(r.cfg);

  unsetenv("COALESCE_TEST_UNSET");
  run_args(&r, "--upstream", "https://api.example.com", "--header",
           "X-Api-Key: ${COALESCE_TEST_UNSET}", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_null(r.cfg);
  assert_string_equal(
      r.err, "--header: environment variable COALESCE_TEST_UNSET is not set");

  /* A variable cannot smuggle a second header line in. */
  setenv("COALESCE_TEST_EVIL", "x\r\nHost: evil", 1);
  run_args(&r, "--upstream", "https://api.example.com", "--header",
           "X-Api-Key: ${COALESCE_TEST_EVIL}", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_non_null(strstr(r.err, "control characters"));
  run_args(&r, "--upstream", "https://api.example.com", "--header",
           "Host: evil.example", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_non_null(strstr(r.err, "Host"));
  run_args(&r, "--upstream", "https://api.example.com", "--header",
           "no colon here", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  run_args(&r, "--upstream", "https://api.example.com", "--header",
           "X-Key: ${UNTERMINATED", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_non_null(strstr(r.err, "unterminated"));
}

static void test_args_help_version_and_errors(void **state) {
  (void)state;
  run_t r;
  run_args(&r, "--help", NULL);
  assert_int_equal(r.action, CONFIG_EXIT);
  assert_null(r.cfg);
  assert_non_null(strstr(r.out, "Usage: coalesced --upstream URL"));
  assert_non_null(strstr(r.out, "Examples:"));
  unsigned lines = 0;
  for (const char *p = r.out; *p; p++)
    lines += *p == '\n';
  assert_true(lines <= 40); /* one screen */

  run_args(&r, "-V", NULL);
  assert_int_equal(r.action, CONFIG_EXIT);
  assert_string_equal(r.out, "coalesced 9.9.9\n");

  static const struct {
    const char *a, *b, *want;
  } bad[] = {
      {"--bogus", NULL, "unknown option \"--bogus\" (see --help)"},
      {"--ttl", NULL, "--ttl needs a value (see --help)"},
      {"stray", NULL, "unexpected argument \"stray\" (see --help)"},
      {"--ttl", "5x", "--ttl: invalid duration \"5x\" (use ms, s, m)"},
      {"--ttl", "5",
       "--ttl: invalid duration \"5\" (missing unit: 5s, 5ms or 5m?)"},
      {"--policy", "lru",
       "--policy: invalid policy \"lru\" (override or "
       "origin)"},
      {"--workers", "many",
       "--workers: invalid number \"many\" (0 to 1024, "
       "or auto)"},
      {"--listen", "8080",
       "--listen: invalid address \"8080\" (use IP:PORT, "
       "e.g. 127.0.0.1:8080 or [::1]:8080)"},
      {"--log-level", "loud",
       "--log-level: invalid log level \"loud\" "
       "(error, warn, info, debug)"},
      {"--redis", "http://x",
       "--redis: invalid Redis URL (use "
       "redis://[:PASSWORD@]HOST[:PORT][/DB])"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    run_args(&r, "--upstream", "http://127.0.0.1:9", bad[i].a, bad[i].b, NULL);
    assert_int_equal(r.action, CONFIG_ERROR);
    assert_null(r.cfg);
    assert_string_equal(r.err, bad[i].want);
  }
  run_args(&r, NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_non_null(strstr(r.err, "no upstream configured"));
  run_args(&r, "--upstream", "ftp://example.com", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_string_equal(r.err, "--upstream: invalid URL \"ftp://example.com\" "
                             "(must start with http:// or https://)");
  run_args(&r, "--upstream", "http://127.0.0.1:8080", "--admin-listen",
           "127.0.0.1:8080", NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_non_null(strstr(r.err, "admin_listen: same address as listen"));
}

static void test_upstream_urls(void **state) {
  (void)state;
  static const struct {
    const char *in, *url, *host, *base;
    unsigned port;
  } ok[] = {
      {"http://example.com", "http://example.com", "example.com", "", 80},
      {"HTTPS://Example.COM:443/", "https://example.com", "example.com", "",
       443},
      {"https://example.com:8443/a/b//", "https://example.com:8443/a/b",
       "example.com", "/a/b", 8443},
      {"http://[::1]:8080/v1", "http://[::1]:8080/v1", "::1", "/v1", 8080},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    run_t r;
    run_args(&r, "--upstream", ok[i].in, NULL);
    assert_int_equal(r.action, CONFIG_RUN);
    const config_upstream_t *u = &r.cfg->upstreams[0];
    assert_string_equal(u->url, ok[i].url);
    assert_string_equal(u->host, ok[i].host);
    assert_string_equal(u->base_path, ok[i].base);
    assert_int_equal(u->port, ok[i].port);
    config_free(r.cfg);
  }
  static const char *const bad[] = {
      "example.com",           "https://",
      "https://user:pw@x.com", "https://x.com:0",
      "https://x.com:99999",   "https://x.com/?q=1",
      "https://x.com/#frag",   "https://ex ample.com",
      "https://[::1/x",        "https://x.com/a b"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    run_t r;
    run_args(&r, "--upstream", bad[i], NULL);
    assert_int_equal(r.action, CONFIG_ERROR);
    assert_non_null(strstr(r.err, "--upstream: invalid URL"));
  }
}

/* ------------------------------------------------------------ the file */

static const char full_ini[] =
    "; every section and most keys\n"
    "[server]\n"
    "listen = 0.0.0.0:8088\n"
    "admin_listen = 127.0.0.1:9999\n"
    "workers = 2\n"
    "admin_token = ${COALESCE_TEST_TOKEN}\n"
    "log_level = warn\n"
    "max_connections = 500\n"
    "max_header_bytes = 32KiB\n"
    "max_headers = 50\n"
    "max_uri_bytes = 4KiB\n"
    "max_body_bytes = 2MiB\n"
    "max_response_bytes = 16MiB\n"
    "header_timeout = 5s\n"
    "idle_timeout = 2m\n"
    "shutdown_timeout = 15s\n"
    "\n"
    "[cache]\n"
    "max_bytes = 64MiB\n"
    "shards = 32\n"
    "max_flights = 100\n"
    "max_waiters_per_key = 200\n"
    "max_waiters = 300\n"
    "unshared = 1s\n"
    "ttl = 20s\n"
    "stale = 1m\n"
    "stale_if_error = 10m\n"
    "max_wait = 3s\n"
    "upstream_timeout = 7s\n"
    "policy = origin\n"
    "identity_headers = Authorization, X-Tenant\n"
    "cache_statuses = 200, 404\n"
    "negative_ttl = 5s\n"
    "\n"
    "[breaker]\n"
    "consecutive_failures = 3\n"
    "failure_rate = 0.25\n"
    "window = 40\n"
    "min_volume = 20\n"
    "open = 1m\n"
    "max_open = 10m\n"
    "half_open_probes = 2\n"
    "\n"
    "[redis]\n"
    "url = redis://app:${COALESCE_TEST_TOKEN}@cache.internal:6390/3\n"
    "prefix = odds:\n"
    "timeout = 100ms\n"
    "lock_ttl = 30s\n"
    "\n"
    "[upstream odds]\n"
    "url = https://api.the-odds-api.com/v4\n"
    "ca_file = /dev/null\n"
    "tls_verify = false\n"
    "connect_timeout = 1s\n"
    "timeout = 20s\n"
    "max_connections = 16\n"
    "header = X-Api-Key: ${COALESCE_TEST_TOKEN}\n"
    "header = User-Agent: coalesced\n"
    "breaker_open = 5s\n"
    "breaker-consecutive-failures = 9\n"
    "\n"
    "[upstream fixtures]\n"
    "url = http://fixtures.internal:8081\n"
    "\n"
    "[route /odds]\n"
    "upstream = odds\n"
    "ttl = 2s\n"
    "upstream_timeout = 1s\n"
    "\n"
    "[route /fixtures/]  ; trailing slash is dropped\n"
    "upstream = fixtures\n"
    "policy = override\n"
    "identity_headers = none\n"
    "cache_statuses = 200,203\n"
    "batch_param = ids\n"
    "batch_max = 50\n"
    "batch_window = 5ms\n"
    "batch_id_path = data[].id\n"
    "batch_item_wrap = {\"data\":[ITEM]}\n"
    "\n"
    "[route /odds/live]\n"
    "upstream = odds\n"
    "stale = 0\n";

static void test_file_every_section(void **state) {
  (void)state;
  setenv("COALESCE_TEST_TOKEN", "tok", 1);
  char err[512];
  config_t *c = load(full_ini, err, sizeof err);
  if (c == NULL)
    fail_msg("%s", err);
  assert_string_equal(c->server.listen.host, "0.0.0.0");
  assert_int_equal(c->server.listen.port, 8088);
  assert_int_equal(c->server.admin_listen.port, 9999);
  assert_int_equal(c->server.workers, 2);
  assert_string_equal(c->server.admin_token, "tok");
  assert_int_equal(c->server.log_level, LOG_LEVEL_WARN);
  assert_int_equal(c->server.max_connections, 500);
  assert_int_equal(c->server.max_header_bytes, 32768);
  assert_int_equal(c->server.max_headers, 50);
  assert_int_equal(c->server.max_uri_bytes, 4096);
  assert_int_equal(c->server.max_body_bytes, 2 * 1024 * 1024);
  assert_int_equal(c->server.max_response_bytes, 16 * 1024 * 1024);
  assert_int_equal(c->server.header_timeout_ms, SECS(5));
  assert_int_equal(c->server.idle_timeout_ms, MINS(2));
  assert_int_equal(c->server.shutdown_timeout_ms, SECS(15));
  assert_int_equal(c->cache.max_bytes, 64 * 1024 * 1024);
  assert_int_equal(c->cache.shards, 32);
  assert_int_equal(c->cache.max_flights, 100);
  assert_int_equal(c->cache.max_waiters_per_key, 200);
  assert_int_equal(c->cache.max_waiters, 300);
  assert_int_equal(c->cache.unshared_ms, SECS(1));
  assert_int_equal(c->breaker.consecutive_failures, 3);
  assert_true(c->breaker.failure_rate == 0.25);
  assert_int_equal(c->breaker.window, 40);
  assert_int_equal(c->breaker.min_volume, 20);
  assert_int_equal(c->breaker.open_ms, MINS(1));
  assert_int_equal(c->breaker.max_open_ms, MINS(10));
  assert_int_equal(c->breaker.half_open_probes, 2);
  assert_string_equal(c->redis.host, "cache.internal");
  assert_int_equal(c->redis.port, 6390);
  assert_int_equal(c->redis.db, 3);
  assert_string_equal(c->redis.username, "app");
  assert_string_equal(c->redis.password, "tok");
  assert_string_equal(c->redis.prefix, "odds:");
  assert_int_equal(c->redis.timeout_ms, 100);
  assert_int_equal(c->redis.lock_ttl_ms, SECS(30));

  assert_int_equal(c->nupstreams, 2);
  const config_upstream_t *odds = &c->upstreams[0];
  assert_string_equal(odds->name, "odds");
  assert_string_equal(odds->base_path, "/v4");
  assert_string_equal(odds->ca_file, "/dev/null");
  assert_false(odds->tls_verify);
  assert_int_equal(odds->connect_timeout_ms, SECS(1));
  assert_int_equal(odds->timeout_ms, SECS(20));
  assert_int_equal(odds->max_connections, 16);
  assert_int_equal(odds->nheaders, 2);
  assert_string_equal(odds->headers[0].name, "X-Api-Key");
  assert_string_equal(odds->headers[0].value, "tok");
  assert_string_equal(odds->headers[1].value, "coalesced");
  /* breaker_* overrides; the rest from [breaker] */
  assert_int_equal(odds->breaker.open_ms, SECS(5));
  assert_int_equal(odds->breaker.consecutive_failures, 9);
  assert_int_equal(odds->breaker.window, 40);
  assert_int_equal(odds->breaker.half_open_probes, 2);
  const config_upstream_t *fx = &c->upstreams[1];
  assert_int_equal(fx->timeout_ms, SECS(7)); /* [cache] upstream_timeout */
  assert_int_equal(fx->breaker.open_ms, MINS(1));
  assert_int_equal(fx->breaker.consecutive_failures, 3);
  assert_true(fx->tls_verify);

  assert_int_equal(c->nroutes, 3);
  assert_string_equal(c->routes[0].prefix, "/odds/live"); /* longest first */
  const config_route_t *r = route(c, "/odds");
  assert_string_equal(upstream(c, r)->name, "odds");
  assert_int_equal(r->ttl_ms, SECS(2));
  assert_int_equal(r->stale_ms, MINS(1));
  assert_int_equal(r->stale_if_error_ms, MINS(10));
  assert_int_equal(r->max_wait_ms, SECS(3));
  assert_int_equal(r->upstream_timeout_ms, SECS(1));
  assert_int_equal(r->policy, CONFIG_POLICY_ORIGIN);
  assert_int_equal(r->negative_ttl_ms, SECS(5));
  assert_int_equal(r->nidentity_headers, 2);
  assert_string_equal(r->identity_headers[1], "x-tenant");
  assert_int_equal(r->ncache_statuses, 2);
  assert_true(config_route_caches_status(r, 404));
  assert_false(config_route_caches_status(r, 203));
  assert_null(r->batch_param);

  r = route(c, "/fixtures");
  assert_string_equal(upstream(c, r)->name, "fixtures");
  assert_int_equal(r->policy, CONFIG_POLICY_OVERRIDE);
  assert_int_equal(r->nidentity_headers, 0);
  assert_true(config_route_caches_status(r, 203));
  assert_false(config_route_caches_status(r, 404));
  assert_int_equal(r->upstream_timeout_ms, SECS(7)); /* its upstream's */
  assert_string_equal(r->batch_param, "ids");
  assert_int_equal(r->batch_max, 50);
  assert_int_equal(r->batch_window_ms, 5);
  assert_string_equal(r->batch_id_path, "data[].id");
  assert_string_equal(r->batch_item_wrap, "{\"data\":[ITEM]}");

  r = route(c, "/odds/live");
  assert_int_equal(r->stale_ms, 0);
  assert_int_equal(r->ttl_ms, SECS(20));
  assert_int_equal(r->upstream_timeout_ms, SECS(20)); /* upstream odds */
  config_free(c);
}

static void test_flags_override_file(void **state) {
  (void)state;
  const char *path = write_ini("[server]\n"
                               "listen = 127.0.0.1:7000\n"
                               "workers = 2\n"
                               "[cache]\n"
                               "ttl = 20s\n"
                               "policy = origin\n"
                               "[upstream default]\n"
                               "url = http://file.example\n"
                               "header = X-Api-Key: from-file\n"
                               "header = X-Other: kept\n"
                               "[route /a]\n"
                               "ttl = 1s\n"
                               "[route /b]\n"
                               "stale = 2s\n");
  run_t r;
  run_args(&r, "--ttl", "3s", "--listen", "127.0.0.1:7001", "--config", path,
           "--upstream", "http://flag.example", "--header",
           "x-api-key: from-flag", NULL);
  unlink(path);
  assert_int_equal(r.action, CONFIG_RUN);
  const config_t *c = r.cfg;
  assert_int_equal(c->server.listen.port, 7001);
  assert_int_equal(c->server.workers, 2); /* not overridden */
  assert_string_equal(c->upstreams[0].url, "http://flag.example");
  assert_int_equal(c->upstreams[0].nheaders, 2);
  assert_string_equal(c->upstreams[0].headers[0].name, "X-Other");
  assert_string_equal(c->upstreams[0].headers[1].value, "from-flag");
  assert_int_equal(route(c, "/a")->ttl_ms, SECS(1)); /* its own wins */
  assert_int_equal(route(c, "/b")->ttl_ms, SECS(3)); /* the flag's */
  assert_int_equal(route(c, "/b")->stale_ms, SECS(2));
  assert_int_equal(route(c, "/b")->policy, CONFIG_POLICY_ORIGIN);
  /* routes in the file: no implicit "/" */
  assert_int_equal(c->nroutes, 2);
  config_free(r.cfg);
}

static void test_route_inheritance_and_upstream_choice(void **state) {
  (void)state;
  char err[512];
  /* one upstream: routes without `upstream` use it; no routes -> "/" */
  config_t *c = load("[upstream only]\nurl = http://127.0.0.1:1\n"
                     "[route /x]\nmax_wait = 1s\n",
                     err, sizeof err);
  assert_non_null(c);
  assert_string_equal(route(c, "/x")->upstream_name, "only");
  assert_int_equal(route(c, "/x")->max_wait_ms, SECS(1));
  assert_int_equal(route(c, "/x")->ttl_ms, SECS(5));
  config_free(c);
  c = load("[upstream only]\nurl = http://127.0.0.1:1\n", err, sizeof err);
  assert_non_null(c);
  assert_int_equal(c->nroutes, 1);
  assert_string_equal(c->routes[0].prefix, "/");
  config_free(c);
  /* several upstreams and no routes: the file must say */
  c = load("[upstream a]\nurl = http://127.0.0.1:1\n"
           "[upstream b]\nurl = http://127.0.0.1:2\n",
           err, sizeof err);
  assert_null(c);
  assert_non_null(strstr(err, "no [route PREFIX] sections"));
  c = load("[upstream a]\nurl = http://127.0.0.1:1\n"
           "[upstream b]\nurl = http://127.0.0.1:2\n"
           "[route /x]\nttl = 1s\n",
           err, sizeof err);
  assert_null(c);
  assert_non_null(strstr(err, ":5: [route /x]: upstream is required"));
}

static void test_longest_prefix_match(void **state) {
  (void)state;
  char err[512];
  config_t *c = load("[upstream u]\nurl = http://127.0.0.1:1\n"
                     "[route /api]\n[route /api/v2]\n[route /odds]\n",
                     err, sizeof err);
  assert_non_null(c);
  static const struct {
    const char *path, *prefix;
  } cases[] = {
      {"/api", "/api"},     {"/api/", "/api"},      {"/api/x", "/api"},
      {"/api?x=1", "/api"}, {"/api/v2", "/api/v2"}, {"/api/v2/odds", "/api/v2"},
      {"/api/v2x", "/api"}, {"/apix", NULL},        {"/odds/live", "/odds"},
      {"/", NULL},          {"/other", NULL},       {"/ap", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const config_route_t *r =
        config_match_route(c, cases[i].path, strlen(cases[i].path));
    if (cases[i].prefix == NULL) {
      assert_null(r);
    } else {
      assert_non_null(r);
      assert_string_equal(r->prefix, cases[i].prefix);
    }
  }
  /* the length bounds the match, not a NUL */
  const config_route_t *r = config_match_route(c, "/api/v2", 4);
  assert_string_equal(r->prefix, "/api");
  config_free(c);

  c = load("[upstream u]\nurl = http://127.0.0.1:1\n[route /]\n[route /a]\n",
           err, sizeof err);
  assert_non_null(c);
  assert_string_equal(config_match_route(c, "/ab", 3)->prefix, "/");
  assert_string_equal(config_match_route(c, "/a/b", 4)->prefix, "/a");
  config_free(c);
}

static void test_file_errors_name_file_line_key(void **state) {
  (void)state;
  expect_file_error("[upstream odds]\n"
                    "url = https://api.example.com\n"
                    "\n"
                    "[route /odds]\n"
                    "ttl = 5x\n",
                    5,
                    "[route /odds] ttl: invalid duration \"5x\" (use ms, s, "
                    "m)");
  expect_file_error("[upstream odds]\nurl = https://api.example.com\n"
                    "[route /odds]\ntll = 5s\n",
                    4, "[route /odds] tll: unknown key (did you mean ttl?)");
  expect_file_error("[server]\nlisten = 127.0.0.1:1\nfrobnicate = 1\n", 3,
                    "[server] frobnicate: unknown key");
  expect_file_error("[upstream odds]\nurl = https://api.example.com\n"
                    "[route /odds]\n"
                    "upstream = sports\n"
                    "ttl = 1s\n",
                    4,
                    "[route /odds] upstream: unknown upstream \"sports\" "
                    "(defined: odds)");
  expect_file_error("[upstream odds]\nurl = ftp://api.example.com\n", 2,
                    "[upstream odds] url: invalid URL "
                    "\"ftp://api.example.com\" (must start with http:// or "
                    "https://)");
  expect_file_error("[upstream odds]\nurl = https://x.com\n"
                    "[route /]\npolicy = lru\n",
                    4,
                    "[route /] policy: invalid policy \"lru\" (override or "
                    "origin)");
  expect_file_error("[upstream odds]\nurl = https://x.com\n"
                    "[upstream odds]\nurl = https://y.com\n",
                    3, "duplicate section [upstream odds] (first on line 1)");
  expect_file_error("[cache]\nttl = 1s\n\n[cache]\n", 4,
                    "duplicate section [cache] (first on line 1)");
  expect_file_error("[upstream odds]\nurl = https://x.com\n[routes /odds]\n", 3,
                    "unknown section [routes /odds] (expected [server], "
                    "[cache], [breaker], [redis], [upstream NAME] or "
                    "[route PREFIX])");
  expect_file_error("[upstream odds]\ntimeout = 1s\n", 1,
                    "[upstream odds]: url is required");
  expect_file_error("[cache]\nttl = 1s\nttl = 2s\n", 3,
                    "[cache] ttl: set twice in this section");
  expect_file_error("ttl = 1s\n", 1,
                    "ttl: key outside any section (start with [server], "
                    "[upstream NAME], [route PREFIX], ...)");
  expect_file_error("[upstream a]\nurl = https://x.com\njust words\n", 3,
                    "syntax error (expected [SECTION] or KEY = VALUE)");
  expect_file_error("[cache]\nttl = 5\n", 2,
                    "[cache] ttl: invalid duration \"5\" (missing unit: 5s, "
                    "5ms or 5m?)");
  expect_file_error("[cache]\nmax_bytes = 10MB\n", 2,
                    "[cache] max_bytes: invalid size \"10MB\" (use bytes, "
                    "KiB, MiB, GiB)");
  expect_file_error("[upstream a]\nurl = https://x.com\n[route /a]\n"
                    "batch_max = 10\n",
                    3, "[route /a] batch_max: needs batch_param");
  expect_file_error("[upstream a]\nurl = https://x.com\nheader = Host: y\n", 3,
                    "[upstream a] header: header Host is set by the proxy "
                    "and cannot be injected");
  expect_file_error("[route odds]\n", 1,
                    "invalid route prefix \"odds\" (a path starting with /, "
                    "no spaces, ? or #)");
  unsetenv("COALESCE_TEST_UNSET");
  expect_file_error("[upstream a]\nurl = https://x.com\n"
                    "header = X-Api-Key: ${COALESCE_TEST_UNSET}\n",
                    3,
                    "[upstream a] header: environment variable "
                    "COALESCE_TEST_UNSET is not set");
  /* cross-key checks run after the whole file: they name file and section */
  char err[512], want[512];
  assert_null(load("[breaker]\nwindow = 5\nmin_volume = 10\n"
                   "[upstream a]\nurl = https://x.com\n",
                   err, sizeof err));
  snprintf(want, sizeof want,
           "%s: [breaker]: min_volume (10) is larger than window (5)",
           tmp_path);
  assert_string_equal(err, want);
}

static void test_file_misc_errors(void **state) {
  (void)state;
  char err[512];
  /* a long line is refused, not silently cut */
  char text[600];
  snprintf(text, sizeof text, "[upstream a]\nurl = https://x.com/%0300d\n", 0);
  assert_null(load(text, err, sizeof err));
  assert_non_null(strstr(err, ":2: line too long"));
  /* no upstream at all */
  assert_null(load("[cache]\nttl = 1s\n", err, sizeof err));
  assert_non_null(strstr(err, "no upstream configured"));
  /* missing file */
  config_t *c = config_new();
  assert_int_equal(
      config_load_file(c, "/nonexistent/coalesced.ini", err, sizeof err), -1);
  assert_string_equal(err, "/nonexistent/coalesced.ini: cannot open: No such "
                           "file or directory");
  config_free(c);
  /* a ca_file that cannot be read */
  assert_null(load("[upstream a]\nurl = https://x.com\n"
                   "ca_file = /nonexistent/ca.pem\n",
                   err, sizeof err));
  assert_non_null(strstr(err, ":3: [upstream a] ca_file: cannot read"));
}

/* config_print's INI reads back into the same config. */
static void test_check_config_round_trip(void **state) {
  (void)state;
  setenv("COALESCE_TEST_TOKEN", "tok", 1);
  const char *path = write_ini(full_ini);
  run_t r;
  run_args(&r, "--config", path, "--check-config", NULL);
  unlink(path);
  assert_int_equal(r.action, CONFIG_EXIT);
  assert_null(r.cfg);
  assert_non_null(strstr(r.out, "; configuration OK"));
  /* secrets redacted */
  assert_null(strstr(r.out, "= tok"));
  assert_null(strstr(r.out, ": tok"));
  assert_null(strstr(r.out, ":tok@"));
  assert_non_null(strstr(r.out, "admin_token = <redacted>"));
  assert_non_null(strstr(r.out, "header = X-Api-Key: <redacted>"));
  assert_non_null(strstr(r.out, "[route /fixtures]\nupstream = fixtures\n"));
  assert_non_null(strstr(r.out, "breaker_open = 5s\n"));

  char err[512];
  config_t *c = load(r.out, err, sizeof err);
  if (c == NULL)
    fail_msg("%s\n%s", err, r.out);
  char again[8192] = "";
  FILE *f = fmemopen(again, sizeof again - 1, "w");
  config_print(c, f);
  fclose(f);
  config_free(c);
  char *ok = strstr(r.out, "\n; configuration OK");
  assert_non_null(ok);
  *ok = '\0';
  assert_string_equal(again, r.out);
}

/* The shipped examples stay valid. */
static void test_examples_are_valid(void **state) {
  (void)state;
  static const char *const files[] = {"coalesced.ini", "minimal.ini"};
  char dir[512], path[600], err[512];
  snprintf(dir, sizeof dir, "%s", __FILE__);
  char *cut = strstr(dir, "/tests/unit/daemon/");
  if (cut == NULL)
    skip(); /* built from a relative path: nothing to find the tree by */
  *cut = '\0';
  setenv("APISPORTS_KEY", "k", 1);
  setenv("API_TOKEN", "t", 1);
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/examples/%s", dir, files[i]);
    config_t *c = config_new();
    assert_non_null(c);
    if (config_load_file(c, path, err, sizeof err) != 0 ||
        config_finalize(c, err, sizeof err) != 0)
      fail_msg("%s", err);
    assert_true(c->nroutes >= 1);
    config_free(c);
  }
}

/* ------------------------------------------- key tables and docs/config.md */

/* The source tree's path + rel, found from this file's path; false when the
 * test was built from a relative path (nothing to find the tree by). */
static bool tree_path(const char *rel, char *out, size_t outlen) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s", __FILE__);
  char *cut = strstr(dir, "/tests/unit/daemon/");
  if (cut == NULL)
    return false;
  *cut = '\0';
  snprintf(out, outlen, "%s/%s", dir, rel);
  return true;
}

/* The whole file, NUL-terminated (caller frees). */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    fail_msg("cannot open %s", path);
  size_t cap = 1 << 16, n = 0, got;
  char *buf = malloc(cap);
  assert_non_null(buf);
  while ((got = fread(buf + n, 1, cap - 1 - n, f)) > 0) {
    n += got;
    if (n + 1 == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      assert_non_null(buf);
    }
  }
  fclose(f);
  buf[n] = '\0';
  return buf;
}

/* The text of "## HEADING..." up to the next "## " heading, copied (caller
 * frees); fails the test when the heading is missing. */
static char *doc_section(const char *doc, const char *heading) {
  char want[128];
  snprintf(want, sizeof want, "\n## %s", heading);
  const char *s = strstr(doc, want);
  if (s == NULL)
    fail_msg("docs/config.md has no \"## %s\" section", heading);
  s += 1;
  const char *e = strstr(s + 3, "\n## ");
  size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
  char *copy = malloc(n + 1);
  assert_non_null(copy);
  memcpy(copy, s, n);
  copy[n] = '\0';
  return copy;
}

/* Every row of t (with need_flags, if any) has a table row "| `PREFIXname` |"
 * in sec; returns how many are missing, naming each. */
static int missing_rows(const char *sec, const char *heading, const keydef_t *t,
                        size_t n, const char *prefix, unsigned need_flags) {
  int missing = 0;
  for (size_t i = 0; i < n; i++) {
    if (need_flags != 0 && !(t[i].flags & need_flags))
      continue;
    char row[96];
    snprintf(row, sizeof row, "| `%s%s` |", prefix, t[i].name);
    if (strstr(sec, row) == NULL) {
      print_error("docs/config.md: ## %s lacks a row %s\n", heading, row);
      missing++;
    }
  }
  return missing;
}

/* docs/config.md documents every key of every table in its own section and
 * every flag: adding a key or a flag without documenting it fails here. */
static void test_doc_names_every_key_and_flag(void **state) {
  (void)state;
  char path[600];
  if (!tree_path("docs/config.md", path, sizeof path))
    skip();
  char *doc = slurp(path);
  static const struct {
    const char *heading;
    const keydef_t *keys;
    const size_t *n;
    const char *prefix;
    unsigned need;
  } want[] = {
      {"`[server]`", cfg_server_keys, &cfg_nserver_keys, "", 0},
      {"`[cache]`", cfg_cache_keys, &cfg_ncache_keys, "", 0},
      {"`[cache]`", cfg_route_keys, &cfg_nroute_keys, "", KF_CACHE},
      {"`[breaker]`", cfg_breaker_keys, &cfg_nbreaker_keys, "", 0},
      {"`[redis]`", cfg_redis_keys, &cfg_nredis_keys, "", 0},
      {"`[upstream NAME]`", cfg_upstream_keys, &cfg_nupstream_keys, "", 0},
      {"`[upstream NAME]`", cfg_breaker_keys, &cfg_nbreaker_keys, "breaker_",
       0},
      {"`[route PREFIX]`", cfg_route_keys, &cfg_nroute_keys, "", 0},
  };
  int missing = 0;
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    char *sec = doc_section(doc, want[i].heading);
    missing += missing_rows(sec, want[i].heading, want[i].keys, *want[i].n,
                            want[i].prefix, want[i].need);
    free(sec);
  }
  char *flags = doc_section(doc, "Command-line flags");
  for (size_t i = 0; i < cfg_nflags; i++) {
    char name[64];
    snprintf(name, sizeof name, "`--%s`", cfg_flags[i].name);
    if (strstr(flags, name) == NULL) {
      print_error("docs/config.md: Command-line flags lacks %s\n", name);
      missing++;
    }
    if (cfg_flags[i].shortname != 0) {
      snprintf(name, sizeof name, "`-%c`", cfg_flags[i].shortname);
      if (strstr(flags, name) == NULL) {
        print_error("docs/config.md: Command-line flags lacks %s\n", name);
        missing++;
      }
    }
  }
  free(flags);
  free(doc);
  assert_int_equal(missing, 0);
}

/* The complete example in docs/config.md loads as it stands and has the
 * routes the text promises (fixtures batched, odds, live odds). */
static void test_doc_example_is_valid(void **state) {
  (void)state;
  char path[600], err[512];
  if (!tree_path("docs/config.md", path, sizeof path))
    skip();
  char *doc = slurp(path);
  char *sec = doc_section(doc, "A complete example");
  char *start = strstr(sec, "```ini\n");
  assert_non_null(start);
  start += strlen("```ini\n");
  char *end = strstr(start, "```");
  assert_non_null(end);
  *end = '\0';
  setenv("APISPORTS_KEY", "k", 1);
  setenv("COALESCED_ADMIN_TOKEN", "t", 1);
  config_t *c = load(start, err, sizeof err);
  if (c == NULL)
    fail_msg("docs/config.md example: %s", err);
  assert_int_equal(c->nroutes, 3);
  const config_route_t *fx = route(c, "/fixtures");
  assert_non_null(fx->batch_param);
  assert_string_equal(fx->batch_param, "ids");
  assert_int_equal(fx->batch_max, 20);
  assert_null(route(c, "/odds")->batch_param);
  assert_int_equal(route(c, "/odds/live")->upstream_timeout_ms, SECS(3));
  assert_int_equal(upstream(c, fx)->breaker.open_ms, MINS(2));
  config_free(c);
  free(sec);
  free(doc);
}

/* The explicit-key masks are 64 bits, and [cache] shares one between its own
 * table (bits 0..31) and the route table's KF_CACHE rows (bits 32..63);
 * names are unique wherever two tables meet in one section. */
static void test_key_tables_fit_their_masks(void **state) {
  (void)state;
  assert_true(cfg_ncache_keys <= 32);
  assert_true(cfg_nroute_keys <= 32);
  assert_true(cfg_nupstream_keys <= 64 && cfg_nbreaker_keys <= 64);
  assert_true(cfg_nserver_keys <= 64 && cfg_nredis_keys <= 64);
  size_t idx;
  for (size_t i = 0; i < cfg_nroute_keys; i++) {
    const keydef_t *k = &cfg_route_keys[i];
    assert_ptr_equal(
        cfg_lookup(cfg_route_keys, cfg_nroute_keys, k->name, 0, &idx),
        k); /* unique in its table */
    assert_int_equal(idx, i);
    if (k->flags & KF_CACHE)
      assert_null(
          cfg_lookup(cfg_cache_keys, cfg_ncache_keys, k->name, 0, &idx));
  }
  for (size_t i = 0; i < cfg_nupstream_keys; i++)
    assert_true(strncmp(cfg_upstream_keys[i].name, "breaker_", 8) != 0);
  /* cfg_key_set reads the bit of a row by its index */
  const keydef_t *ttl =
      cfg_lookup(cfg_route_keys, cfg_nroute_keys, "ttl", 0, &idx);
  assert_non_null(ttl);
  assert_true(cfg_key_set(UINT64_C(1) << idx, cfg_route_keys, ttl));
  assert_false(cfg_key_set(~(UINT64_C(1) << idx), cfg_route_keys, ttl));
}

/* Every default in the tables parses, and config_new applies it: setting a
 * key to its own default through config_set changes nothing printed. */
static void test_table_defaults_apply(void **state) {
  (void)state;
  config_t *a = config_new();
  assert_non_null(a);
  char err[512];
  static const struct {
    const char *section;
    const keydef_t *keys;
    const size_t *n;
  } sets[] = {{"server", cfg_server_keys, &cfg_nserver_keys},
              {"cache", cfg_cache_keys, &cfg_ncache_keys},
              {"cache", cfg_route_keys, &cfg_nroute_keys},
              {"breaker", cfg_breaker_keys, &cfg_nbreaker_keys},
              {"redis", cfg_redis_keys, &cfg_nredis_keys}};
  char before[8192] = "", after[8192] = "";
  assert_int_equal(
      config_set(a, "upstream u", "url", "http://x", NULL, err, sizeof err), 0);
  config_t *b = config_new();
  assert_non_null(b);
  assert_int_equal(
      config_set(b, "upstream u", "url", "http://x", NULL, err, sizeof err), 0);
  for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
    for (size_t i = 0; i < *sets[s].n; i++) {
      const keydef_t *k = &sets[s].keys[i];
      if (k->def == NULL ||
          (sets[s].keys == cfg_route_keys && !(k->flags & KF_CACHE)))
        continue;
      if (config_set(b, sets[s].section, k->name, k->def, NULL, err,
                     sizeof err) != 0)
        fail_msg("default of [%s] %s: %s", sets[s].section, k->name, err);
    }
  }
  assert_int_equal(config_finalize(a, err, sizeof err), 0);
  assert_int_equal(config_finalize(b, err, sizeof err), 0);
  FILE *f = fmemopen(before, sizeof before - 1, "w");
  config_print(a, f);
  fclose(f);
  f = fmemopen(after, sizeof after - 1, "w");
  config_print(b, f);
  fclose(f);
  assert_string_equal(before, after);
  /* and the defaults are the documented ones, not zeroes */
  assert_int_equal(a->server.listen.port, 8080);
  assert_int_equal(a->cache.max_bytes, 256 * MIB);
  assert_int_equal(a->breaker.open_ms, SECS(30));
  assert_int_equal(a->defaults.ttl_ms, SECS(5));
  config_free(a);
  config_free(b);
}

/* Every flag that sets a key names a key that exists in its section. */
static void test_flags_name_real_keys(void **state) {
  (void)state;
  size_t idx;
  for (size_t i = 0; i < cfg_nflags; i++) {
    const flag_t *f = &cfg_flags[i];
    if (f->section == NULL)
      continue;
    const keydef_t *found = NULL;
    if (strcmp(f->section, "server") == 0)
      found = cfg_lookup(cfg_server_keys, cfg_nserver_keys, f->key, 0, &idx);
    else if (strcmp(f->section, "cache") == 0)
      found =
          cfg_lookup(cfg_route_keys, cfg_nroute_keys, f->key, KF_CACHE, &idx);
    else if (strcmp(f->section, "redis") == 0)
      found = cfg_lookup(cfg_redis_keys, cfg_nredis_keys, f->key, 0, &idx);
    else if (strncmp(f->section, "upstream ", 9) == 0)
      found =
          cfg_lookup(cfg_upstream_keys, cfg_nupstream_keys, f->key, 0, &idx);
    if (found == NULL)
      fail_msg("--%s sets [%s] %s, which is not a key", f->name, f->section,
               f->key);
  }
}

/* A global upstream timeout of 0 would leave upstreams without one. */
static void test_global_upstream_timeout_zero_is_refused(void **state) {
  (void)state;
  run_t r;
  run_args(&r, "--upstream", "http://127.0.0.1:1", "--upstream-timeout", "0",
           NULL);
  assert_int_equal(r.action, CONFIG_ERROR);
  assert_non_null(strstr(r.err, "upstream_timeout"));
  assert_null(r.cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_global_upstream_timeout_zero_is_refused),
      cmocka_unit_test(test_durations),
      cmocka_unit_test(test_sizes),
      cmocka_unit_test(test_args_defaults),
      cmocka_unit_test(test_args_each_flag),
      cmocka_unit_test(test_args_headers_expand_env),
      cmocka_unit_test(test_args_help_version_and_errors),
      cmocka_unit_test(test_upstream_urls),
      cmocka_unit_test(test_file_every_section),
      cmocka_unit_test(test_flags_override_file),
      cmocka_unit_test(test_route_inheritance_and_upstream_choice),
      cmocka_unit_test(test_longest_prefix_match),
      cmocka_unit_test(test_file_errors_name_file_line_key),
      cmocka_unit_test(test_file_misc_errors),
      cmocka_unit_test(test_check_config_round_trip),
      cmocka_unit_test(test_examples_are_valid),
      cmocka_unit_test(test_doc_names_every_key_and_flag),
      cmocka_unit_test(test_doc_example_is_valid),
      cmocka_unit_test(test_key_tables_fit_their_masks),
      cmocka_unit_test(test_table_defaults_apply),
      cmocka_unit_test(test_flags_name_real_keys),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
