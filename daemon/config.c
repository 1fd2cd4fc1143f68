/*
 * config.c — the config object: the key tables, config_new / config_free,
 * config_finalize (inheritance, validation), route matching and
 * config_print; see config.h for the precedence rules and the lifecycle,
 * config_int.h for how the other config_*.c files share the work.
 *
 * Every key of every section is one row of a key table below (name, type,
 * field offset, range, default). One setter parses a value into a field by
 * type (config_field.c), so the file, the flags, the defaults,
 * inheritance, freeing and config_print all walk the same tables and
 * cannot drift apart. docs/config.md documents every row; the config unit
 * test fails when a row is missing there.
 *
 * Inheritance: each upstream, route and per-upstream breaker keeps a bit
 * per key set explicitly (explicit_keys); config_finalize copies every
 * other inheritable field from the globals. The file parser also uses those
 * bits to refuse a key set twice in one section.
 */
#include "batch_split.h"
#include "config_int.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ key tables */

const keydef_t cfg_server_keys[] = {
    {"listen", T_ADDR, SRV(listen), 0, 0, 0, "127.0.0.1:8080"},
    {"admin_listen", T_ADDR, SRV(admin_listen), 0, 0, 0, "127.0.0.1:9901"},
    {"workers", T_WORKERS, SRV(workers), 0, 1024, 0, "auto"},
    {"admin_token", T_SECRET, SRV(admin_token), 0, 0, 0, NULL},
    {"log_level", T_LOGLEVEL, SRV(log_level), 0, 0, 0, "info"},
    {"max_connections", T_UINT, SRV(max_connections), 1, 10000000, 0, "10000"},
    {"max_header_bytes", T_SIZE, SRV(max_header_bytes), 1024, MIB, 0, "16KiB"},
    {"max_headers", T_UINT, SRV(max_headers), 1, 10000, 0, "100"},
    {"max_uri_bytes", T_SIZE, SRV(max_uri_bytes), 256, MIB, 0, "8KiB"},
    {"max_body_bytes", T_SIZE, SRV(max_body_bytes), 0, 4 * GIB, 0, "1MiB"},
    {"max_response_bytes", T_SIZE, SRV(max_response_bytes), 1, 4 * GIB, 0,
     "8MiB"},
    {"header_timeout", T_DURATION, SRV(header_timeout_ms), 1, MS_H, 0, "10s"},
    {"idle_timeout", T_DURATION, SRV(idle_timeout_ms), 1, MS_D, 0, "60s"},
    {"shutdown_timeout", T_DURATION, SRV(shutdown_timeout_ms), 0, MS_H, 0,
     "10s"},
};

const keydef_t cfg_cache_keys[] = {
    {"max_bytes", T_SIZE, CCH(max_bytes), MIB, 1024 * GIB, 0, "256MiB"},
    {"shards", T_UINT, CCH(shards), 1, 1024, 0, "16"},
    {"max_flights", T_UINT, CCH(max_flights), 0, UINT_MAX, 0, "10000"},
    {"max_waiters_per_key", T_UINT, CCH(max_waiters_per_key), 0, UINT_MAX, 0,
     "10000"},
    {"max_waiters", T_UINT, CCH(max_waiters), 0, UINT_MAX, 0, "100000"},
    {"unshared", T_DURATION, CCH(unshared_ms), 0, MS_H, 0, "2s"},
};

const keydef_t cfg_breaker_keys[] = {
    {"consecutive_failures", T_UINT, BRK(consecutive_failures), 0, 1000000, 0,
     "5"},
    {"failure_rate", T_RATE, BRK(failure_rate), 0, 0, 0, "0.5"},
    {"window", T_UINT, BRK(window), 0, 100000, 0, "20"},
    {"min_volume", T_UINT, BRK(min_volume), 0, 100000, 0, "10"},
    {"open", T_DURATION, BRK(open_ms), 1, MS_D, 0, "30s"},
    {"max_open", T_DURATION, BRK(max_open_ms), 1, MS_D, 0, "1h"},
    {"half_open_probes", T_UINT, BRK(half_open_probes), 1, 1000, 0, "1"},
};

const keydef_t cfg_redis_keys[] = {
    {"url", T_REDIS_URL, 0, 0, 0, 0, NULL},
    {"prefix", T_STRING, RDS(prefix), 0, 0, 0, "coalesce:"},
    {"timeout", T_DURATION, RDS(timeout_ms), 1, MS_M, 0, "250ms"},
    {"lock_ttl", T_DURATION, RDS(lock_ttl_ms), 1, MS_H, 0, NULL},
};

/* Defaults here apply when an upstream is created; timeout and the
 * breaker_* keys (cfg_breaker_keys prefixed) inherit in config_finalize. */
const keydef_t cfg_upstream_keys[] = {
    {"url", T_URL, 0, 0, 0, 0, NULL},
    {"ca_file", T_PATH, UPS(ca_file), 0, 0, 0, NULL},
    {"tls_verify", T_BOOL, UPS(tls_verify), 0, 0, 0, "true"},
    {"connect_timeout", T_DURATION, UPS(connect_timeout_ms), 1, 10 * MS_M, 0,
     "2s"},
    {"timeout", T_DURATION, UPS(timeout_ms), 1, MS_H, 0, NULL},
    {"max_connections", T_UINT, UPS(max_connections), 1, 100000, 0, "64"},
    {"header", T_HEADER, 0, 0, 0, KF_REPEAT, NULL},
    {"rate_limit", T_QRATE, UPS(rate_limit), 0, 0, 0, NULL},
    {"rate_burst", T_UINT, UPS(rate_burst), 0, 1000000, 0, NULL},
    {"quota", T_QPERIOD, UPS(quota), 0, 0, 0, NULL},
    {"quota_low_fraction", T_RATE, UPS(quota_low_fraction), 0, 0, 0, "0.1"},
};

/* Defaults here are those of cfg->defaults; a route inherits every
 * KF_CACHE key it does not set (upstream_timeout excepted: see finalize). */
const keydef_t cfg_route_keys[] = {
    {"upstream", T_STRING, RTE(upstream_name), 0, 0, 0, NULL},
    {"ttl", T_DURATION, RTE(ttl_ms), 0, 365 * MS_D, KF_CACHE, "5s"},
    {"stale", T_DURATION, RTE(stale_ms), 0, 365 * MS_D, KF_CACHE, "30s"},
    {"stale_if_error", T_DURATION, RTE(stale_if_error_ms), 0, 365 * MS_D,
     KF_CACHE, "5m"},
    {"max_wait", T_DURATION, RTE(max_wait_ms), 1, MS_H, KF_CACHE, "5s"},
    {"upstream_timeout", T_DURATION, RTE(upstream_timeout_ms), 0, MS_H,
     KF_CACHE, "10s"},
    {"policy", T_POLICY, RTE(policy), 0, 0, KF_CACHE, "override"},
    {"identity_headers", T_NAMES, 0, 0, 0, KF_CACHE,
     "Authorization, Cookie, X-Api-Key"},
    {"cache_statuses", T_STATUSES, 0, 0, 0, KF_CACHE,
     "200,203,204,300,301,404,410"},
    {"negative_ttl", T_DURATION, RTE(negative_ttl_ms), 0, 365 * MS_D, KF_CACHE,
     "0"},
    {"batch_param", T_STRING, RTE(batch_param), 0, 0, 0, NULL},
    {"batch_max", T_UINT, RTE(batch_max), 1, 10000, 0, NULL},
    {"batch_window", T_DURATION, RTE(batch_window_ms), 0, 10 * MS_S, 0, NULL},
    {"batch_id_path", T_STRING, RTE(batch_id_path), 0, 0, 0, NULL},
    {"batch_item_wrap", T_STRING, RTE(batch_item_wrap), 0, 0, 0, NULL},
    {"batch_join", T_STRING, RTE(batch_join), 0, 0, 0, NULL},
};

const size_t cfg_nserver_keys = NKEYS(cfg_server_keys);
const size_t cfg_ncache_keys = NKEYS(cfg_cache_keys);
const size_t cfg_nbreaker_keys = NKEYS(cfg_breaker_keys);
const size_t cfg_nredis_keys = NKEYS(cfg_redis_keys);
const size_t cfg_nupstream_keys = NKEYS(cfg_upstream_keys);
const size_t cfg_nroute_keys = NKEYS(cfg_route_keys);

/* ------------------------------------------------------------- lifecycle */

config_t *config_new(void) {
  config_t *cfg = calloc(1, sizeof *cfg);
  if (cfg == NULL)
    return NULL;
  if (cfg_apply_defaults(cfg_server_keys, NKEYS(cfg_server_keys), &cfg->server,
                         0) ||
      cfg_apply_defaults(cfg_cache_keys, NKEYS(cfg_cache_keys), &cfg->cache,
                         0) ||
      cfg_apply_defaults(cfg_breaker_keys, NKEYS(cfg_breaker_keys),
                         &cfg->breaker, 0) ||
      cfg_apply_defaults(cfg_redis_keys, NKEYS(cfg_redis_keys), &cfg->redis,
                         0) ||
      cfg_apply_defaults(cfg_route_keys, NKEYS(cfg_route_keys), &cfg->defaults,
                         KF_CACHE)) {
    config_free(cfg);
    return NULL;
  }
  return cfg;
}

static void free_upstream(config_upstream_t *u) {
  free(u->name);
  cfg_free_table(cfg_upstream_keys, NKEYS(cfg_upstream_keys), u);
}

static void free_route(config_route_t *r) {
  free(r->prefix);
  cfg_free_table(cfg_route_keys, NKEYS(cfg_route_keys), r);
}

void config_free(config_t *cfg) {
  if (cfg == NULL)
    return;
  cfg_free_table(cfg_server_keys, NKEYS(cfg_server_keys), &cfg->server);
  cfg_free_table(cfg_redis_keys, NKEYS(cfg_redis_keys), &cfg->redis);
  free_route(&cfg->defaults);
  for (size_t i = 0; i < cfg->nupstreams; i++)
    free_upstream(&cfg->upstreams[i]);
  free(cfg->upstreams);
  for (size_t i = 0; i < cfg->nroutes; i++)
    free_route(&cfg->routes[i]);
  free(cfg->routes);
  free(cfg->file);
  free(cfg);
}

/* -------------------------------------------------------------- finalize */

/* "FILE:LINE: " for items from the file, "" for flags and implicit ones. */
static const char *where(const config_t *cfg, unsigned line, char *buf,
                         size_t len) {
  if (cfg->file != NULL && line > 0)
    cfg_fmt(buf, len, "%s:%u: ", cfg->file, line);
  else if (cfg->file != NULL)
    cfg_fmt(buf, len, "%s: ", cfg->file);
  else
    cfg_fmt(buf, len, "%s", "");
  return buf;
}

static int cmp_routes(const void *a, const void *b) {
  const config_route_t *x = a, *y = b;
  if (x->prefix_len != y->prefix_len)
    return x->prefix_len > y->prefix_len ? -1 : 1;
  return strcmp(x->prefix, y->prefix);
}

static const keydef_t *route_key(const char *name) {
  size_t idx;
  return cfg_lookup(cfg_route_keys, NKEYS(cfg_route_keys), name, 0, &idx);
}

static int check_breaker(const config_breaker_t *b, char *msg, size_t msglen) {
  if (b->window > 0 && b->min_volume > b->window) {
    cfg_fmt(msg, msglen, "min_volume (%u) is larger than window (%u)",
            b->min_volume, b->window);
    return -1;
  }
  if (b->consecutive_failures == 0 && b->window == 0) {
    cfg_fmt(msg, msglen,
            "consecutive_failures and window are both 0: the "
            "breaker could never open");
    return -1;
  }
  return 0;
}

/* The upstream a route without `upstream =` uses: "default" (--upstream)
 * when defined, else the only one. */
const char *cfg_implicit_upstream(const config_t *cfg) {
  if (cfg_find_upstream(cfg, "default", NULL) != NULL)
    return "default";
  return cfg->nupstreams == 1 ? cfg->upstreams[0].name : NULL;
}

static int finalize_route(config_t *cfg, config_route_t *r, char *err,
                          size_t errlen) {
  char loc[300], names[256] = "";
  if (r->upstream_name == NULL) {
    const char *name = cfg_implicit_upstream(cfg);
    if (name == NULL) {
      cfg_fmt(err, errlen,
              "%s[route %s]: upstream is required (%zu upstreams are defined)",
              where(cfg, r->line, loc, sizeof loc), r->prefix, cfg->nupstreams);
      return -1;
    }
    if (!cfg_set_str(&r->upstream_name, name)) {
      cfg_fmt(err, errlen, "out of memory");
      return -1;
    }
  }
  if (cfg_find_upstream(cfg, r->upstream_name, &r->upstream) == NULL) {
    for (size_t i = 0; i < cfg->nupstreams; i++)
      cfg_fmt(names + strlen(names), sizeof names - strlen(names), "%s%s",
              i ? ", " : "", cfg->upstreams[i].name);
    cfg_fmt(err, errlen,
            "%s[route %s] upstream: unknown upstream \"%s\" "
            "(defined: %s)",
            where(cfg, r->upstream_line ? r->upstream_line : r->line, loc,
                  sizeof loc),
            r->prefix, r->upstream_name, names);
    return -1;
  }
  const keydef_t *ut = route_key("upstream_timeout");
  for (size_t i = 0; i < NKEYS(cfg_route_keys); i++) {
    const keydef_t *k = &cfg_route_keys[i];
    /* upstream_timeout under [cache] is every upstream's default, so a
     * route that does not set one follows its upstream instead. */
    if (!(k->flags & KF_CACHE) || k == ut ||
        cfg_key_set(r->explicit_keys, cfg_route_keys, k))
      continue;
    if (!cfg_copy_value(k, r, &cfg->defaults)) {
      cfg_fmt(err, errlen, "out of memory");
      return -1;
    }
  }
  if (r->upstream_timeout_ms == 0)
    r->upstream_timeout_ms = cfg->upstreams[r->upstream].timeout_ms;

  static const char *const batch_keys[] = {"batch_max", "batch_window",
                                           "batch_id_path", "batch_item_wrap",
                                           "batch_join"};
  for (size_t i = 0; i < NKEYS(batch_keys) && r->batch_param == NULL; i++) {
    if (cfg_key_set(r->explicit_keys, cfg_route_keys,
                    route_key(batch_keys[i]))) {
      cfg_fmt(err, errlen, "%s[route %s] %s: needs batch_param",
              where(cfg, r->line, loc, sizeof loc), r->prefix, batch_keys[i]);
      return -1;
    }
  }
  if (r->batch_param != NULL) {
    if (!cfg_key_set(r->explicit_keys, cfg_route_keys, route_key("batch_max")))
      r->batch_max = 100;
    if (!cfg_key_set(r->explicit_keys, cfg_route_keys,
                     route_key("batch_window")))
      r->batch_window_ms = 2;
    char why[200];
    if (batch_split_check(r->batch_id_path, r->batch_item_wrap, r->batch_join,
                          why, sizeof why) != 0) {
      cfg_fmt(err, errlen, "%s[route %s] batch: %s",
              where(cfg, r->line, loc, sizeof loc), r->prefix, why);
      return -1;
    }
  }
  return 0;
}

int config_finalize(config_t *cfg, char *err, size_t errlen) {
  char loc[300], msg[256];
  if (cfg->finalized) {
    cfg_fmt(err, errlen, "config already finalized");
    return -1;
  }
  if (cfg->nupstreams == 0) {
    cfg_fmt(err, errlen,
            "%sno upstream configured: pass --upstream URL or add an "
            "[upstream NAME] section with url = ...",
            cfg->file ? where(cfg, 0, loc, sizeof loc) : "");
    return -1;
  }
  if (check_breaker(&cfg->breaker, msg, sizeof msg) != 0) {
    cfg_fmt(err, errlen, "%s[breaker]: %s", where(cfg, 0, loc, sizeof loc),
            msg);
    return -1;
  }
  size_t idx;
  const keydef_t *timeout = cfg_lookup(
      cfg_upstream_keys, NKEYS(cfg_upstream_keys), "timeout", 0, &idx);
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    config_upstream_t *u = &cfg->upstreams[i];
    if (u->url == NULL) {
      cfg_fmt(err, errlen, "%s[upstream %s]: url is required",
              where(cfg, u->line, loc, sizeof loc), u->name);
      return -1;
    }
    if (!cfg_key_set(u->explicit_keys, cfg_upstream_keys, timeout)) {
      /* 0 means "the upstream's" on a route; as the global default it
       * would leave the upstream itself without one */
      if (cfg->defaults.upstream_timeout_ms == 0) {
        cfg_fmt(err, errlen,
                "%s[cache] upstream_timeout: must be above 0 (upstream %s "
                "sets no timeout of its own)",
                where(cfg, 0, loc, sizeof loc), u->name);
        return -1;
      }
      u->timeout_ms = cfg->defaults.upstream_timeout_ms;
    }
    for (size_t j = 0; j < NKEYS(cfg_breaker_keys); j++)
      if (!cfg_key_set(u->breaker.explicit_keys, cfg_breaker_keys,
                       &cfg_breaker_keys[j]))
        cfg_copy_value(&cfg_breaker_keys[j], &u->breaker, &cfg->breaker);
    if (check_breaker(&u->breaker, msg, sizeof msg) != 0) {
      cfg_fmt(err, errlen, "%s[upstream %s] breaker: %s",
              where(cfg, u->line, loc, sizeof loc), u->name, msg);
      return -1;
    }
  }
  if (cfg->nroutes == 0) {
    const char *name = cfg_implicit_upstream(cfg);
    bool existed;
    if (name == NULL) {
      cfg_fmt(
          err, errlen,
          "%sno [route PREFIX] sections: with %zu upstreams, routes must say "
          "which upstream serves which paths",
          where(cfg, 0, loc, sizeof loc), cfg->nupstreams);
      return -1;
    }
    if (cfg_open_named(cfg, SEC_ROUTE, "/", 0, &existed, &idx, msg,
                       sizeof msg) ||
        !cfg_set_str(&cfg->routes[idx].upstream_name, name)) {
      cfg_fmt(err, errlen, "out of memory");
      return -1;
    }
  }
  for (size_t i = 0; i < cfg->nroutes; i++)
    if (finalize_route(cfg, &cfg->routes[i], err, errlen) != 0)
      return -1;
  qsort(cfg->routes, cfg->nroutes, sizeof *cfg->routes, cmp_routes);

  if (cfg->server.workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->server.workers = n < 1 ? 1 : n > 1024 ? 1024 : (unsigned)n;
  }
  const config_addr_t *l = &cfg->server.listen, *a = &cfg->server.admin_listen;
  if (l->port != 0 && l->port == a->port && strcmp(l->host, a->host) == 0) {
    cfg_fmt(err, errlen,
            "%s[server] admin_listen: same address as listen (%s:%u)",
            where(cfg, 0, loc, sizeof loc), a->host, (unsigned)a->port);
    return -1;
  }
  if (cfg->redis.lock_ttl_ms == 0) {
    /* The lease must outlive the longest flight it guards. */
    uint64_t longest = 0;
    for (size_t i = 0; i < cfg->nroutes; i++)
      if (cfg->routes[i].upstream_timeout_ms > longest)
        longest = cfg->routes[i].upstream_timeout_ms;
    cfg->redis.lock_ttl_ms = longest + MS_S;
  }
  cfg->finalized = true;
  return 0;
}

/* ---------------------------------------------------------------- lookups */

const config_route_t *config_match_route(const config_t *cfg, const char *path,
                                         size_t len) {
  for (size_t i = 0; i < cfg->nroutes; i++) { /* longest prefix first */
    const config_route_t *r = &cfg->routes[i];
    size_t pl = r->prefix_len;
    if (pl == 1) /* "/" */
      return r;
    if (len >= pl && memcmp(path, r->prefix, pl) == 0 &&
        (len == pl || path[pl] == '/' || path[pl] == '?'))
      return r;
  }
  return NULL;
}

bool config_route_caches_status(const config_route_t *route, int status) {
  for (size_t i = 0; i < route->ncache_statuses; i++)
    if (route->cache_statuses[i] == status)
      return true;
  return false;
}

/* ------------------------------------------------------------------ print */

static void print_table(FILE *out, const keydef_t *t, size_t n,
                        const void *base, unsigned need_flags) {
  for (size_t i = 0; i < n; i++)
    if (!need_flags || (t[i].flags & need_flags))
      cfg_print_value(out, &t[i], base, "");
}

void config_print(const config_t *cfg, FILE *out) {
  fprintf(out, "; coalesced effective configuration (secrets redacted)\n");
  fprintf(out, "[server]\n");
  print_table(out, cfg_server_keys, NKEYS(cfg_server_keys), &cfg->server, 0);
  fprintf(out, "\n[cache]\n");
  print_table(out, cfg_cache_keys, NKEYS(cfg_cache_keys), &cfg->cache, 0);
  print_table(out, cfg_route_keys, NKEYS(cfg_route_keys), &cfg->defaults,
              KF_CACHE);
  fprintf(out, "\n[breaker]\n");
  print_table(out, cfg_breaker_keys, NKEYS(cfg_breaker_keys), &cfg->breaker, 0);
  if (cfg->redis.url != NULL) {
    fprintf(out, "\n[redis]\n");
    print_table(out, cfg_redis_keys, NKEYS(cfg_redis_keys), &cfg->redis, 0);
  }
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    const config_upstream_t *u = &cfg->upstreams[i];
    fprintf(out, "\n[upstream %s]\n", u->name);
    print_table(out, cfg_upstream_keys, NKEYS(cfg_upstream_keys), u, 0);
    for (size_t j = 0; j < NKEYS(cfg_breaker_keys); j++) /* only overrides */
      if (cfg_key_set(u->breaker.explicit_keys, cfg_breaker_keys,
                      &cfg_breaker_keys[j]))
        cfg_print_value(out, &cfg_breaker_keys[j], &u->breaker, "breaker_");
  }
  for (size_t i = 0; i < cfg->nroutes; i++) {
    const config_route_t *r = &cfg->routes[i];
    fprintf(out, "\n[route %s]\n", r->prefix);
    if (r->upstream_name != NULL)
      fprintf(out, "upstream = %s\n", r->upstream_name);
    print_table(out, cfg_route_keys, NKEYS(cfg_route_keys), r, KF_CACHE);
    if (r->batch_param != NULL) {
      for (size_t j = 0; j < NKEYS(cfg_route_keys); j++)
        if (strncmp(cfg_route_keys[j].name, "batch_", 6) == 0)
          cfg_print_value(out, &cfg_route_keys[j], r, "");
    }
  }
}
