/*
 * config.h — coalesced's configuration: command line, INI file, defaults.
 *
 * A config_t is built in three steps — config_new (defaults), then
 * config_load_file and/or flags, then config_finalize (inherit, validate,
 * resolve names) — and is immutable afterwards: every thread may read it
 * without locks. The daemon reloads on SIGHUP by building a whole new one
 * from the same argv (config_parse_args) and swapping it in; a config is
 * never edited in place once finalized.
 *
 * Ownership: a config_t owns every string and array reachable from it;
 * config_free releases all of it. Pointers into it stay valid until then.
 *
 * Precedence, lowest first: built-in defaults < [cache]/[breaker]/[server]
 * in the file < command-line flags (global values) < keys set in a
 * [route PREFIX] or [upstream NAME] section. So `--ttl 10s` changes every
 * route that does not set its own ttl, as `ttl` under [cache] would.
 *
 * Errors are written to a caller-supplied buffer as one line; file errors
 * read `FILE:LINE: [SECTION] KEY: problem`, flag errors `--flag: problem`.
 * Durations are kept in milliseconds, sizes in bytes.
 */
#ifndef COALESCED_CONFIG_H
#define COALESCED_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

typedef enum config_policy {
  CONFIG_POLICY_OVERRIDE = 0, /* the route's ttl decides freshness */
  CONFIG_POLICY_ORIGIN = 1,   /* upstream Cache-Control/Expires/Age decide */
} config_policy_t;

/* A numeric listen address: host is an IPv4 or IPv6 literal (no brackets). */
typedef struct config_addr {
  char *host;
  uint16_t port;
} config_addr_t;

/* A header injected into upstream requests; value is after ${VAR}
 * expansion and may hold a secret: never log it (config_print redacts). */
typedef struct config_header {
  char *name;
  char *value;
} config_header_t;

typedef struct config_breaker {
  unsigned consecutive_failures; /* trip after this many in a row; 0 = off */
  double failure_rate;           /* trip at >= this fraction of the window */
  unsigned window;               /* outcomes in the rate window; 0 = off */
  unsigned min_volume;           /* outcomes before the rate applies */
  uint64_t open_ms;              /* open before half-open */
  uint64_t max_open_ms;          /* cap on an upstream's Retry-After */
  unsigned half_open_probes;     /* probes that must all succeed to close */
  uint64_t explicit_keys;        /* bookkeeping: keys set (bit = key index) */
} config_breaker_t;

typedef struct config_server {
  config_addr_t listen;         /* 127.0.0.1:8080 */
  config_addr_t admin_listen;   /* 127.0.0.1:9901 */
  unsigned workers;             /* event loops; default online CPUs */
  char *admin_token;            /* NULL: admin POSTs need no token */
  log_level_t log_level;        /* info */
  unsigned max_connections;     /* client connections, all workers; 10000 */
  uint64_t max_header_bytes;    /* request head; 16 KiB (431 beyond) */
  unsigned max_headers;         /* request header fields; 100 (431) */
  uint64_t max_uri_bytes;       /* request target; 8 KiB (414) */
  uint64_t max_body_bytes;      /* client request body; 1 MiB (413) */
  uint64_t max_response_bytes;  /* upstream response body; 8 MiB (502) */
  uint64_t header_timeout_ms;   /* to receive a request head; 10 s */
  uint64_t idle_timeout_ms;     /* keep-alive idle; 60 s */
  uint64_t shutdown_timeout_ms; /* drain on SIGTERM; 10 s */
} config_server_t;

/* The shared cache and the coalescer's limits ([cache] section). */
typedef struct config_cache {
  uint64_t max_bytes;           /* 256 MiB */
  unsigned shards;              /* 16 */
  unsigned max_flights;         /* keys in flight at once; 10000 */
  unsigned max_waiters_per_key; /* 10000 */
  unsigned max_waiters;         /* in total; 100000 */
  uint64_t unshared_ms;         /* hit-for-miss memory; 2 s */
} config_cache_t;

/* Fleet mode. url == NULL: disabled. Parsed from
 * redis://[:PASS@]HOST[:PORT][/DB]. */
typedef struct config_redis {
  char *url; /* as given (may hold a password: print redacted) */
  char *host;
  uint16_t port;        /* 6379 */
  char *username;       /* NULL if none (Redis 6 ACL user) */
  char *password;       /* NULL if none */
  unsigned db;          /* 0 */
  char *prefix;         /* key namespace; "coalesce:" */
  uint64_t timeout_ms;  /* per command; 250 ms */
  uint64_t lock_ttl_ms; /* fleet lock lease; default longest upstream
                           timeout of any route + 1 s */
} config_redis_t;

typedef struct config_upstream {
  char *name;      /* "default" for --upstream */
  char *url;       /* normalized: scheme://host[:port][/base], no trailing / */
  bool tls;        /* https */
  char *host;      /* without brackets for IPv6 */
  uint16_t port;   /* explicit, else 80 / 443 */
  char *base_path; /* "" or "/v4" (no trailing slash); prefixed to paths */
  char *ca_file;   /* NULL: system CAs */
  bool tls_verify; /* true */
  uint64_t connect_timeout_ms; /* 2 s */
  uint64_t timeout_ms;         /* whole call; default the global
                                  upstream timeout (10 s) */
  unsigned max_connections;    /* per worker pool; 64 */
  config_header_t *headers;    /* injected, in order */
  size_t nheaders;
  config_breaker_t breaker; /* [breaker] overridden by breaker_* keys */
  /* Local budget (issue 10; off by default): rate_limit "10/s" with
   * rate_burst calls of burst, quota "10000/day"; /health reports degraded
   * when the upstream's own remaining budget falls below
   * quota_low_fraction of its limit. */
  char *rate_limit;
  unsigned rate_burst;
  char *quota;
  double quota_low_fraction;
  unsigned line;            /* section line in the file; 0 from a flag */
  uint64_t explicit_keys;   /* bookkeeping: keys set (bit = key index) */
} config_upstream_t;

typedef struct config_route {
  char *prefix; /* starts with '/', no trailing '/' except "/" itself */
  size_t prefix_len;
  char *upstream_name;
  size_t upstream; /* index into config_t.upstreams (after finalize) */
  uint64_t ttl_ms;
  uint64_t stale_ms; /* stale-while-revalidate window */
  uint64_t stale_if_error_ms;
  uint64_t max_wait_ms;         /* a follower's own timeout */
  uint64_t upstream_timeout_ms; /* 0 in the file = the upstream's; never 0
                                   after finalize */
  config_policy_t policy;
  char **identity_headers; /* lowercase; default authorization, cookie,
                              x-api-key; may be empty ("none") */
  size_t nidentity_headers;
  uint16_t *cache_statuses; /* storable statuses; default
                               200,203,204,300,301,404,410 */
  size_t ncache_statuses;
  uint64_t negative_ttl_ms; /* freshness for 4xx/5xx in cache_statuses;
                               0 (default) = shared with the flight's
                               waiters but not stored */
  /* Request batching (DESIGN.md §5): stored only; batch_param NULL = off. */
  char *batch_param;  /* query parameter carrying the ids */
  unsigned batch_max; /* ids per upstream call */
  uint64_t batch_window_ms;
  char *batch_id_path;    /* where each item's id lives in the JSON answer */
  char *batch_item_wrap;  /* how a single item's response is wrapped */
  char *batch_join;      /* "repeat" (id=1&id=2, the default) or a
                            separator (ids=1,2) */
  unsigned line;          /* section line in the file; 0 if implicit */
  unsigned upstream_line; /* line of its `upstream =` key */
  uint64_t explicit_keys; /* bookkeeping: keys set (bit = key index) */
} config_route_t;

typedef struct config {
  config_server_t server;
  config_cache_t cache;
  config_breaker_t breaker; /* defaults for every upstream */
  config_redis_t redis;
  config_route_t defaults; /* [cache] route keys + flags: what routes inherit */
  config_upstream_t *upstreams;
  size_t nupstreams;
  config_route_t *routes; /* longest prefix first after finalize */
  size_t nroutes;
  char *file; /* the --config path, NULL if none */
  bool finalized;
} config_t;

/* What config_parse_args tells main to do. */
typedef enum config_action {
  CONFIG_RUN = 0,    /* *out holds a finalized config: serve it */
  CONFIG_EXIT = 1,   /* --help, --version or a passing --check-config was
                        printed to `out`: exit 0 (*out is NULL) */
  CONFIG_ERROR = -1, /* err holds the message: exit 2 (*out is NULL) */
} config_action_t;

/* Parses argv (argv[0] is skipped), loads --config FILE if given, applies
 * the flags over it and finalizes. `version` is printed by --version; help,
 * version and the --check-config summary go to `out`. Does not touch global
 * state (no getopt), so it can run again on SIGHUP with the same argv; it
 * reads the environment (${VAR}), so call it from one thread at a time. On
 * CONFIG_RUN the caller owns *cfg (config_free); applying
 * cfg->server.log_level (log_set_level) is the caller's job. */
config_action_t config_parse_args(int argc, char *const argv[],
                                  const char *version, FILE *out,
                                  config_t **cfg, char *err, size_t errlen);

/* A config holding the built-in defaults and no upstream or route; NULL on
 * allocation failure. */
config_t *config_new(void);

/* Reads an INI file into cfg (not finalized). Unknown sections and keys,
 * bad values, duplicate sections and keys set twice are errors naming the
 * file, line and key. Returns 0, or -1 with err filled (cfg must then only
 * be freed). */
int config_load_file(config_t *cfg, const char *path, char *err, size_t errlen);

/* Applies one setting as a flag would, e.g. ("cache", "ttl", "10s") or
 * ("upstream default", "header", "X-Key: ${KEY}"); used by the flag parser
 * and by tests. `origin` names the source in errors (e.g. "--ttl").
 * Returns 0, or -1 with err filled. */
int config_set(config_t *cfg, const char *section, const char *key,
               const char *value, const char *origin, char *err, size_t errlen);

/* Fills what was left unset (routes from cfg->defaults, upstreams from
 * [breaker] and the global upstream timeout, redis lock_ttl, a "/" route
 * when there is one upstream and no route), resolves each route's upstream,
 * sorts routes longest prefix first and validates the whole. Returns 0, or
 * -1 with err filled. Call once. */
int config_finalize(config_t *cfg, char *err, size_t errlen);

/* Frees everything; NULL is a no-op. */
void config_free(config_t *cfg);

/* The route with the longest prefix matching path[0..len): "/api" matches
 * "/api", "/api/x" and "/api?q" but not "/apix"; "/" matches everything.
 * NULL when none matches. cfg must be finalized. */
const config_route_t *config_match_route(const config_t *cfg, const char *path,
                                         size_t len);

/* Whether the route may store a response with this status. */
bool config_route_caches_status(const config_route_t *route, int status);

/* Results of the value parsers. */
#define CONFIG_PARSE_OK 0
#define CONFIG_PARSE_INVALID (-1) /* not a duration/size */
#define CONFIG_PARSE_NO_UNIT (-2) /* a bare non-zero number (durations) */
#define CONFIG_PARSE_RANGE (-3)   /* overflows */

/* "250ms", "5s", "2m", "1h", "1.5s", "1m30s", "0" -> milliseconds. A bare
 * number other than 0 is CONFIG_PARSE_NO_UNIT (is "5" seconds or ms?);
 * sub-millisecond results are CONFIG_PARSE_INVALID. */
int config_parse_duration_ms(const char *s, uint64_t *out_ms);

/* "65536", "64KiB", "64K", "1.5MiB", "256M", "1GiB", "1G" -> bytes; K, M, G
 * are binary (1024-based) like KiB, MiB, GiB; units are case-insensitive
 * but "KB"/"MB" are refused as ambiguous. */
int config_parse_size(const char *s, uint64_t *out_bytes);

/* The --help text (one screen, with examples). */
void config_usage(FILE *out);

/* Prints the effective config as INI that config_load_file accepts, with
 * secrets (header values, admin token, Redis password) redacted. Used by
 * --check-config to show what was understood. */
void config_print(const config_t *cfg, FILE *out);

#endif
