/*
 * config_args.c — config_parse_args: the command line over the INI file,
 * --help, --version and --check-config.
 *
 * No getopt: argv is scanned into a list of flag uses without touching
 * global state, so SIGHUP can parse the same argv again. Order of
 * application: --config FILE first, then every flag that sets a key
 * (config_set with the flag as the error origin, "--ttl: ..."), then the
 * --header flags, then config_finalize. Flags write the global sections
 * ([server], [cache], [redis]) and the "default" upstream, so --ttl changes
 * every route that does not set its own ttl (see config.h).
 */
#include "config_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Each flag that sets a key names it as config_set takes it; --header has
 * a key but is applied by apply_header_flags (it replaces, then appends). */
const flag_t cfg_flags[] = {
    {"upstream", 'u', true, "upstream default", "url"},
    {"config", 'c', true, NULL, NULL},
    {"listen", 'l', true, "server", "listen"},
    {"admin-listen", 0, true, "server", "admin_listen"},
    {"ttl", 0, true, "cache", "ttl"},
    {"stale", 0, true, "cache", "stale"},
    {"stale-if-error", 0, true, "cache", "stale_if_error"},
    {"max-wait", 0, true, "cache", "max_wait"},
    {"upstream-timeout", 0, true, "cache", "upstream_timeout"},
    {"policy", 0, true, "cache", "policy"},
    {"header", 'H', true, NULL, "header"},
    {"admin-token", 0, true, "server", "admin_token"},
    {"workers", 'w', true, "server", "workers"},
    {"redis", 0, true, "redis", "url"},
    {"log-level", 0, true, "server", "log_level"},
    {"check-config", 0, false, NULL, NULL},
    {"help", 'h', false, NULL, NULL},
    {"version", 'V', false, NULL, NULL},
};
const size_t cfg_nflags = NKEYS(cfg_flags);

typedef struct flag_use {
  const flag_t *flag;
  const char *value;
} flag_use_t;

void config_usage(FILE *out) {
  fputs(
      "Usage: coalesced --upstream URL [options]\n"
      "       coalesced --config FILE [options]\n"
      "Deduplicating, caching HTTP proxy in front of a rate-limited API.\n"
      "\n"
      "  -u, --upstream URL        upstream base URL, http:// or https://\n"
      "  -c, --config FILE         INI file: [server] [cache] [breaker] "
      "[redis]\n"
      "                            [upstream NAME] [route PREFIX]; flags win\n"
      "  -l, --listen ADDR:PORT    proxy listener (127.0.0.1:8080)\n"
      "      --admin-listen A:P    stats, health, metrics (127.0.0.1:9901)\n"
      "      --ttl DUR             fresh lifetime of a response (5s)\n"
      "      --stale DUR           serve stale while refreshing (30s)\n"
      "      --stale-if-error DUR  serve stale when upstream fails (5m)\n"
      "      --max-wait DUR        longest a coalesced request waits (5s)\n"
      "      --upstream-timeout DUR  limit per upstream call (10s)\n"
      "      --policy P            override: route ttl decides; origin: "
      "upstream\n"
      "                            Cache-Control decides (override)\n"
      "  -H, --header 'Name: value'  add to upstream requests, repeatable;\n"
      "                            ${VAR} is read from the environment\n"
      "      --admin-token TOKEN   required by admin POSTs\n"
      "  -w, --workers N           event loops (auto = online CPUs)\n"
      "      --redis URL           fleet mode: "
      "redis://[:PASS@]HOST[:PORT][/DB]\n"
      "      --log-level LEVEL     error, warn, info, debug (info)\n"
      "      --check-config [FILE] validate, print the effective config, exit\n"
      "  -h, --help                this text;  -V, --version\n"
      "DUR: 250ms, 5s, 2m, 1h, 1m30s.  SIZE (file): 65536, 64KiB, 256MiB, "
      "1GiB.\n"
      "\n"
      "Examples:\n"
      "  coalesced --upstream https://api.the-odds-api.com --ttl 30s \\\n"
      "            --header 'X-Api-Key: ${ODDS_API_KEY}'\n"
      "  coalesced --config /etc/coalesced.ini --check-config\n"
      "  coalesced -c coalesced.ini --listen 0.0.0.0:8080 --log-level debug\n",
      out);
}

static const flag_t *find_flag(const char *name, size_t len, char shortname) {
  for (size_t i = 0; i < cfg_nflags; i++) {
    if (shortname != 0 ? cfg_flags[i].shortname == shortname
                       : strlen(cfg_flags[i].name) == len &&
                             strncmp(cfg_flags[i].name, name, len) == 0)
      return &cfg_flags[i];
  }
  return NULL;
}

/* Splits argv into flag uses; values stay pointers into argv. */
static int scan_args(int argc, char *const argv[], flag_use_t *uses,
                     size_t *nuses, char *err, size_t errlen) {
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *value = NULL;
    const flag_t *f = NULL;
    if (arg[0] == '-' && arg[1] == '-' && arg[2] != '\0') {
      const char *eq = strchr(arg + 2, '=');
      size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
      f = find_flag(arg + 2, len, 0);
      if (eq != NULL)
        value = eq + 1;
    } else if (arg[0] == '-' && arg[1] != '\0' && arg[1] != '-') {
      f = find_flag(NULL, 0, arg[1]);
      if (f != NULL && arg[2] != '\0') {
        if (!f->takes_value)
          f = NULL; /* no bundling of short flags */
        else
          value = arg + 2;
      }
    } else if (*nuses > 0 &&
               strcmp(uses[*nuses - 1].flag->name, "check-config") == 0) {
      /* `--check-config FILE` is short for `--config FILE --check-config` */
      f = find_flag("config", 6, 0);
      value = arg;
    } else {
      cfg_fmt(err, errlen, "unexpected argument \"%s\" (see --help)", arg);
      return -1;
    }
    if (f == NULL) {
      cfg_fmt(err, errlen, "unknown option \"%s\" (see --help)", arg);
      return -1;
    }
    if (f->takes_value && value == NULL) {
      if (i + 1 >= argc) {
        cfg_fmt(err, errlen, "--%s needs a value (see --help)", f->name);
        return -1;
      }
      value = argv[++i];
    } else if (!f->takes_value && value != NULL) {
      cfg_fmt(err, errlen, "--%s takes no value", f->name);
      return -1;
    }
    uses[*nuses].flag = f;
    uses[*nuses].value = value;
    (*nuses)++;
  }
  return 0;
}

/* --header NAME replaces the file's headers of that NAME, then appends. */
static int apply_header_flags(config_t *cfg, const flag_use_t *uses,
                              size_t nuses, char *err, size_t errlen) {
  config_upstream_t *u = NULL;
  for (size_t i = 0; i < nuses; i++) {
    if (strcmp(uses[i].flag->name, "header") != 0)
      continue;
    if (u == NULL) {
      const char *name = cfg_implicit_upstream(cfg);
      if (name == NULL) {
        cfg_fmt(err, errlen,
                cfg->nupstreams == 0
                    ? "--header: no upstream to send it to (add --upstream URL)"
                    : "--header: several upstreams and none named \"default\"; "
                      "put header = ... in an [upstream NAME] section");
        return -1;
      }
      u = cfg_find_upstream(cfg, name, NULL);
      for (size_t j = i; j < nuses; j++) {
        if (strcmp(uses[j].flag->name, "header") != 0)
          continue;
        size_t nlen = strcspn(uses[j].value, ":");
        while (nlen > 0 && isspace((unsigned char)uses[j].value[nlen - 1]))
          nlen--;
        for (size_t h = 0; h < u->nheaders;) {
          if (strlen(u->headers[h].name) == nlen &&
              strncasecmp(u->headers[h].name, uses[j].value, nlen) == 0) {
            free(u->headers[h].name);
            free(u->headers[h].value);
            memmove(&u->headers[h], &u->headers[h + 1],
                    (u->nheaders - h - 1) * sizeof *u->headers);
            u->nheaders--;
          } else {
            h++;
          }
        }
      }
    }
    char msg[512];
    if (cfg_add_header(u, uses[i].value, msg, sizeof msg) != 0) {
      cfg_fmt(err, errlen, "--header: %s", msg);
      return -1;
    }
  }
  return 0;
}

config_action_t config_parse_args(int argc, char *const argv[],
                                  const char *version, FILE *out,
                                  config_t **cfgp, char *err, size_t errlen) {
  *cfgp = NULL;
  flag_use_t *uses = calloc(argc > 0 ? (size_t)argc : 1, sizeof *uses);
  size_t nuses = 0;
  config_t *cfg = NULL;
  const char *file = NULL;
  bool help = false, show_version = false, check = false;
  if (uses == NULL) {
    cfg_fmt(err, errlen, "out of memory");
    return CONFIG_ERROR;
  }
  if (scan_args(argc, argv, uses, &nuses, err, errlen) != 0)
    goto fail;
  for (size_t i = 0; i < nuses; i++) {
    const char *name = uses[i].flag->name;
    if (strcmp(name, "help") == 0)
      help = true;
    else if (strcmp(name, "version") == 0)
      show_version = true;
    else if (strcmp(name, "check-config") == 0)
      check = true;
    else if (strcmp(name, "config") == 0) {
      if (file != NULL) {
        cfg_fmt(err, errlen, "--config given twice");
        goto fail;
      }
      file = uses[i].value;
    }
  }
  if (help || show_version) {
    if (help)
      config_usage(out);
    else
      fprintf(out, "coalesced %s\n", version ? version : "(unknown version)");
    free(uses);
    return CONFIG_EXIT;
  }
  if ((cfg = config_new()) == NULL) {
    cfg_fmt(err, errlen, "out of memory");
    goto fail;
  }
  if (file != NULL && config_load_file(cfg, file, err, errlen) != 0)
    goto fail;
  for (size_t i = 0; i < nuses; i++) { /* flags override the file */
    const flag_t *f = uses[i].flag;
    char origin[32];
    if (f->section == NULL)
      continue;
    cfg_fmt(origin, sizeof origin, "--%s", f->name);
    if (config_set(cfg, f->section, f->key, uses[i].value, origin, err,
                   errlen) != 0)
      goto fail;
  }
  if (apply_header_flags(cfg, uses, nuses, err, errlen) != 0 ||
      config_finalize(cfg, err, errlen) != 0)
    goto fail;
  free(uses);
  if (check) {
    config_print(cfg, out);
    fprintf(out, "\n; configuration OK\n");
    config_free(cfg);
    return CONFIG_EXIT;
  }
  *cfgp = cfg;
  return CONFIG_RUN;
fail:
  free(uses);
  config_free(cfg);
  return CONFIG_ERROR;
}
