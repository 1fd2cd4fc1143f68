/*
 * config_section.c — where one `key = value` lands: opening a section
 * ("[route /odds]", or "route /odds" from config_set), finding the key in
 * the tables that section binds, refusing unknown keys (with a "did you
 * mean" for typos) and keys set twice, and recording which keys were set
 * explicitly so that config_finalize inherits only the others.
 *
 * Keys are matched case-insensitively with '-' read as '_', so the file
 * may say stale-if-error like the flag. [upstream NAME] and [route PREFIX]
 * are created on first use; [server], [cache], [breaker] and [redis] exist
 * in every config. Explicit-key bits live in the upstream, route and
 * per-upstream breaker structs (bit = row index in the key table); for the
 * singleton sections only the file reader keeps them, to catch duplicates.
 */
#include "config_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const sec_names[SEC_COUNT] = {
    "", "server", "cache", "breaker", "redis", "upstream", "route"};

config_upstream_t *cfg_find_upstream(const config_t *cfg, const char *name,
                                     size_t *index) {
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    if (strcmp(cfg->upstreams[i].name, name) == 0) {
      if (index)
        *index = i;
      return &cfg->upstreams[i];
    }
  }
  return NULL;
}

static bool valid_upstream_name(const char *s) {
  if (*s == '\0' || strlen(s) > 64)
    return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr("_.-", *s))
      return false;
  return true;
}

/* Normalizes a route prefix in place: starts with '/', no spaces, query or
 * fragment; trailing slashes dropped ("/odds/" is "/odds") except "/". */
static bool normalize_prefix(char *p) {
  if (p[0] != '/')
    return false;
  for (char *c = p; *c; c++)
    if ((unsigned char)*c <= ' ' || *c == '?' || *c == '#' || *c == 0x7f)
      return false;
  size_t n = strlen(p);
  while (n > 1 && p[n - 1] == '/')
    p[--n] = '\0';
  return true;
}

/* Finds or appends the upstream/route named `name` (see config_int.h). */
int cfg_open_named(config_t *cfg, seckind_t kind, const char *name,
                   unsigned line, bool *existed, size_t *index, char *msg,
                   size_t msglen) {
  *existed = false;
  if (kind == SEC_UPSTREAM) {
    if (!valid_upstream_name(name)) {
      cfg_fmt(msg, msglen,
              "invalid upstream name \"%s\" (letters, digits, _ . -)", name);
      return -1;
    }
    if (cfg_find_upstream(cfg, name, index) != NULL) {
      *existed = true;
      return 0;
    }
    config_upstream_t *nu =
        realloc(cfg->upstreams, (cfg->nupstreams + 1) * sizeof *nu);
    if (nu == NULL)
      goto nomem;
    cfg->upstreams = nu;
    config_upstream_t *u = &nu[cfg->nupstreams];
    memset(u, 0, sizeof *u);
    u->line = line;
    if ((u->name = strdup(name)) == NULL)
      goto nomem;
    cfg->nupstreams++;
    if (cfg_apply_defaults(cfg_upstream_keys, cfg_nupstream_keys, u, 0) != 0)
      goto nomem;
    *index = cfg->nupstreams - 1;
    return 0;
  }
  char prefix[256];
  if (strlen(name) >= sizeof prefix) {
    cfg_fmt(msg, msglen, "route prefix too long");
    return -1;
  }
  strcpy(prefix, name);
  if (!normalize_prefix(prefix)) {
    cfg_fmt(msg, msglen,
            "invalid route prefix \"%s\" (a path starting with /, no spaces, "
            "? or #)",
            name);
    return -1;
  }
  for (size_t i = 0; i < cfg->nroutes; i++) {
    if (strcmp(cfg->routes[i].prefix, prefix) == 0) {
      *existed = true;
      *index = i;
      return 0;
    }
  }
  config_route_t *nr = realloc(cfg->routes, (cfg->nroutes + 1) * sizeof *nr);
  if (nr == NULL)
    goto nomem;
  cfg->routes = nr;
  config_route_t *r = &nr[cfg->nroutes];
  memset(r, 0, sizeof *r);
  r->line = line;
  if ((r->prefix = strdup(prefix)) == NULL)
    goto nomem;
  r->prefix_len = strlen(prefix);
  cfg->nroutes++;
  *index = cfg->nroutes - 1;
  return 0;
nomem:
  cfg_fmt(msg, msglen, "out of memory");
  return -1;
}

/* Parses "kind [name]" (the inside of [...]) and opens that section. */
int cfg_open_section(config_t *cfg, const char *spec, unsigned line,
                     bool from_file, section_t *sec, char *msg, size_t msglen) {
  char buf[300];
  if (strlen(spec) >= sizeof buf) {
    cfg_fmt(msg, msglen, "section name too long");
    return -1;
  }
  strcpy(buf, spec);
  char *kind = cfg_trim(buf), *name = kind + strcspn(kind, " \t");
  if (*name != '\0')
    *name++ = '\0';
  name = cfg_trim(name);
  memset(sec, 0, sizeof *sec);
  for (int k = SEC_SERVER; k < SEC_COUNT; k++)
    if (strcasecmp(kind, sec_names[k]) == 0)
      sec->kind = (seckind_t)k;
  bool named = sec->kind == SEC_UPSTREAM || sec->kind == SEC_ROUTE;
  if (sec->kind == SEC_NONE) {
    cfg_fmt(msg, msglen,
            "unknown section [%s] (expected [server], [cache], [breaker], "
            "[redis], [upstream NAME] or [route PREFIX])",
            spec);
    return -1;
  }
  if (named && *name == '\0') {
    cfg_fmt(msg, msglen, "[%s] needs a %s, e.g. [%s]", kind,
            sec->kind == SEC_ROUTE ? "path prefix" : "name",
            sec->kind == SEC_ROUTE ? "route /api" : "upstream api");
    return -1;
  }
  if (!named && *name != '\0') {
    cfg_fmt(msg, msglen, "[%s] takes no name (got \"%s\")",
            sec_names[sec->kind], name);
    return -1;
  }
  cfg_fmt(sec->label, sizeof sec->label, "%s%s%s", sec_names[sec->kind],
          named ? " " : "", name);
  if (!named)
    return 0;
  bool existed;
  if (cfg_open_named(cfg, sec->kind, name, line, &existed, &sec->index, msg,
                     msglen) != 0)
    return -1;
  if (existed && from_file) {
    unsigned first = sec->kind == SEC_ROUTE ? cfg->routes[sec->index].line
                                            : cfg->upstreams[sec->index].line;
    cfg_fmt(msg, msglen, "duplicate section [%s] (first on line %u)",
            sec->label, first);
    return -1;
  }
  if (sec->kind == SEC_ROUTE) /* label the normalized prefix */
    cfg_fmt(sec->label, sizeof sec->label, "route %s",
            cfg->routes[sec->index].prefix);
  return 0;
}

const keydef_t *cfg_lookup(const keydef_t *t, size_t n, const char *name,
                           unsigned need_flags, size_t *index) {
  for (size_t i = 0; i < n; i++) {
    if (strcmp(t[i].name, name) == 0 &&
        (need_flags == 0 || (t[i].flags & need_flags))) {
      *index = i;
      return &t[i];
    }
  }
  return NULL;
}

/* A key table as one section sees it: where its keys write and which mask
 * records them. [cache] binds two tables, [upstream NAME] two (its own and
 * the breaker's behind "breaker_"). */
typedef struct binding {
  const keydef_t *keys;
  size_t nkeys;
  const char *prefix; /* key prefix in this section, e.g. "breaker_" */
  unsigned need;      /* only keys with these flags (KF_CACHE) */
  void *base;
  uint64_t *mask; /* explicit-key bits; NULL for the singleton sections */
  unsigned shift; /* bit offset when two tables share one mask */
} binding_t;

static size_t section_bindings(config_t *cfg, const section_t *sec,
                               binding_t b[2]) {
  memset(b, 0, 2 * sizeof *b);
  b[0].prefix = b[1].prefix = "";
#define BIND(i, t, where)                                                      \
  (b[i].keys = cfg_##t##_keys, b[i].nkeys = cfg_n##t##_keys,                   \
   b[i].base = (where))
  switch (sec->kind) {
  case SEC_SERVER:
    BIND(0, server, &cfg->server);
    return 1;
  case SEC_CACHE:
    BIND(0, cache, &cfg->cache);
    BIND(1, route, &cfg->defaults);
    b[1].need = KF_CACHE;
    b[1].shift = 32;
    return 2;
  case SEC_BREAKER:
    BIND(0, breaker, &cfg->breaker);
    return 1;
  case SEC_REDIS:
    BIND(0, redis, &cfg->redis);
    return 1;
  case SEC_UPSTREAM: {
    config_upstream_t *u = &cfg->upstreams[sec->index];
    BIND(0, upstream, u);
    b[0].mask = &u->explicit_keys;
    BIND(1, breaker, &u->breaker);
    b[1].mask = &u->breaker.explicit_keys;
    b[1].prefix = "breaker_";
    return 2;
  }
  case SEC_ROUTE:
    BIND(0, route, &cfg->routes[sec->index]);
    b[0].mask = &cfg->routes[sec->index].explicit_keys;
    return 1;
  default:
    return 0;
  }
#undef BIND
}

/* Edit distance, for "did you mean" on typos in key names. */
static unsigned edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 40 || lb > 40)
    return 99;
  unsigned row[41];
  for (size_t j = 0; j <= lb; j++)
    row[j] = (unsigned)j;
  for (size_t i = 1; i <= la; i++) {
    unsigned diag = row[0];
    row[0] = (unsigned)i;
    for (size_t j = 1; j <= lb; j++) {
      unsigned up = row[j];
      unsigned best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* "unknown key", with the closest valid key when it is a likely typo. */
static void unknown_key(const binding_t *b, size_t nb, const char *key,
                        char *msg, size_t msglen) {
  unsigned best = 3; /* suggest only close misses */
  char name[64] = "";
  for (size_t i = 0; i < nb; i++) {
    for (size_t j = 0; j < b[i].nkeys; j++) {
      if (b[i].need && !(b[i].keys[j].flags & b[i].need))
        continue;
      char full[64];
      cfg_fmt(full, sizeof full, "%s%s", b[i].prefix, b[i].keys[j].name);
      unsigned d = edit_distance(key, full);
      if (d < best) {
        best = d;
        cfg_fmt(name, sizeof name, "%s", full);
      }
    }
  }
  if (name[0] != '\0')
    cfg_fmt(msg, msglen, "unknown key (did you mean %s?)", name);
  else
    cfg_fmt(msg, msglen, "unknown key");
}

/* Sets key=value in the open section and marks it explicit. seen (one mask
 * per singleton section) is non-NULL while reading a file: a key set twice
 * in one section is then refused. line is 0 for flags. */
int cfg_apply_key(config_t *cfg, const section_t *sec, const char *rawkey,
                  const char *value, uint64_t *seen, unsigned line, char *msg,
                  size_t msglen) {
  char key[64];
  size_t n = strlen(rawkey);
  if (n >= sizeof key)
    n = sizeof key - 1;
  for (size_t i = 0; i < n; i++) /* "stale-if-error" = "stale_if_error" */
    key[i] = rawkey[i] == '-' ? '_' : (char)tolower((unsigned char)rawkey[i]);
  key[n] = '\0';

  binding_t b[2];
  size_t nb = section_bindings(cfg, sec, b), idx = 0;
  const keydef_t *k = NULL;
  const binding_t *at = NULL;
  if (nb == 0) {
    cfg_fmt(msg, msglen, "key outside any section");
    return -1;
  }
  for (size_t i = 0; i < nb && k == NULL; i++) {
    size_t plen = strlen(b[i].prefix);
    if (strncmp(key, b[i].prefix, plen) != 0)
      continue;
    k = cfg_lookup(b[i].keys, b[i].nkeys, key + plen, b[i].need, &idx);
    at = &b[i];
  }
  if (k == NULL) {
    unknown_key(b, nb, key, msg, msglen);
    return -1;
  }
  uint64_t scratch = 0, *mask = at->mask;
  if (mask == NULL)
    mask = seen != NULL ? &seen[sec->kind] : &scratch;
  uint64_t bit = UINT64_C(1) << (idx + at->shift);
  if (seen != NULL && (*mask & bit) && !(k->flags & KF_REPEAT)) {
    cfg_fmt(msg, msglen, "set twice in this section");
    return -1;
  }
  if (cfg_set_value(k, at->base, value, msg, msglen) != 0)
    return -1;
  *mask |= bit;
  if (sec->kind == SEC_ROUTE && k->off == RTE(upstream_name) &&
      k->type == T_STRING)
    cfg->routes[sec->index].upstream_line = line;
  return 0;
}

int config_set(config_t *cfg, const char *section, const char *key,
               const char *value, const char *origin, char *err,
               size_t errlen) {
  char msg[512];
  section_t sec;
  if (cfg_open_section(cfg, section, 0, false, &sec, msg, sizeof msg) != 0 ||
      cfg_apply_key(cfg, &sec, key, value, NULL, 0, msg, sizeof msg) != 0) {
    if (origin != NULL)
      cfg_fmt(err, errlen, "%s: %s", origin, msg);
    else
      cfg_fmt(err, errlen, "[%s] %s: %s", section, key, msg);
    return -1;
  }
  return 0;
}
