/*
 * config_int.h — what the files behind config.h share; nothing outside
 * daemon/config*.c includes it (the config unit test does, to check that
 * docs/config.md names every key and flag).
 *
 *   config.c          the key tables, config_new/free, config_finalize
 *                     (inheritance, validation), route matching, printing
 *   config_section.c  addressing one key: "[route /odds] ttl" -> the field
 *                     it writes, duplicate and unknown-key checks
 *   config_field.c    one operation per key type over a field: set (parse),
 *                     copy (inherit), free, print
 *   config_value.c    pure text parsers and formatters (durations, sizes,
 *                     addresses, URLs, headers with ${VAR}, names, statuses)
 *   config_ini.c      reading an INI file through libinih, FILE:LINE errors
 *   config_args.c     argv, --help, --check-config
 *
 * Every key of every section is one row of a key table; code never names
 * a key's field directly except where a key has behaviour of its own
 * (inheritance of upstream_timeout, batch defaults), so the file, the
 * flags, the defaults, freeing and printing cannot drift apart.
 *
 * Error messages: the cfg_* parsers write a bare problem ("invalid
 * duration ...") into msg; the layer that knows where the value came from
 * prefixes it (config_ini.c "FILE:LINE: [SECTION] KEY: ", config_set
 * "--flag: " or "[SECTION] KEY: ", config_finalize "FILE:LINE: [SECTION]").
 */
#ifndef COALESCED_CONFIG_INT_H
#define COALESCED_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

#define MS_S UINT64_C(1000)
#define MS_M (60 * MS_S)
#define MS_H (60 * MS_M)
#define MS_D (24 * MS_H)
#define KIB UINT64_C(1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))

/* ------------------------------------------------------------ key tables */

typedef enum ktype {
  T_DURATION, /* uint64_t ms */
  T_SIZE,     /* uint64_t bytes */
  T_UINT,     /* unsigned */
  T_RATE,     /* double in (0, 1] */
  T_BOOL,
  T_STRING,   /* char *, printable, no spaces */
  T_QRATE,    /* char *, a call rate ("10/s"), checked by quota_parse_rate */
  T_QPERIOD,  /* char *, a period cap ("10000/day"), quota_parse_period */
  T_SECRET,   /* char *, ${VAR} expanded, printed redacted */
  T_PATH,     /* char *, a readable file */
  T_ADDR,     /* config_addr_t */
  T_POLICY,   /* config_policy_t */
  T_LOGLEVEL, /* log_level_t */
  T_WORKERS,  /* unsigned; "auto" or 0 = online CPUs */
  T_URL,      /* the whole config_upstream_t address */
  T_HEADER,   /* appends to config_upstream_t.headers */
  T_NAMES,    /* config_route_t.identity_headers */
  T_STATUSES, /* config_route_t.cache_statuses */
  T_REDIS_URL /* the whole config_redis_t address */
} ktype_t;

enum {
  KF_CACHE = 1,  /* route key also allowed in [cache] (a global default) */
  KF_REPEAT = 2, /* may appear many times in a section */
};

typedef struct keydef {
  const char *name;
  ktype_t type;
  size_t off;
  uint64_t min, max; /* numeric range, inclusive */
  unsigned flags;
  const char *def; /* default, applied by config_new; NULL = unset */
} keydef_t;

#define SRV(f) offsetof(config_server_t, f)
#define CCH(f) offsetof(config_cache_t, f)
#define BRK(f) offsetof(config_breaker_t, f)
#define RDS(f) offsetof(config_redis_t, f)
#define UPS(f) offsetof(config_upstream_t, f)
#define RTE(f) offsetof(config_route_t, f)

#define FIELD(base, k, type) ((type *)(void *)((char *)(base) + (k)->off))
#define CFIELD(base, k, type)                                                  \
  ((const type *)(const void *)((const char *)(base) + (k)->off))

/* The tables (config.c), one per section; [cache] also takes the
 * KF_CACHE rows of the route table, [upstream NAME] the breaker table
 * behind "breaker_". */
extern const keydef_t cfg_server_keys[], cfg_cache_keys[], cfg_breaker_keys[],
    cfg_redis_keys[], cfg_upstream_keys[], cfg_route_keys[];
extern const size_t cfg_nserver_keys, cfg_ncache_keys, cfg_nbreaker_keys,
    cfg_nredis_keys, cfg_nupstream_keys, cfg_nroute_keys;

/* Whether key k of table was set explicitly (bit = row index). */
static inline bool cfg_key_set(uint64_t mask, const keydef_t *table,
                               const keydef_t *k) {
  return (mask >> (size_t)(k - table)) & 1;
}

/* ---------------------------------------- sections (config_section.c) */

typedef enum seckind {
  SEC_NONE,
  SEC_SERVER,
  SEC_CACHE,
  SEC_BREAKER,
  SEC_REDIS,
  SEC_UPSTREAM,
  SEC_ROUTE,
  SEC_COUNT
} seckind_t;

typedef struct section {
  seckind_t kind;
  size_t index;    /* upstream or route */
  char label[300]; /* "route /odds", for messages */
} section_t;

/* The upstream called name (and its index, if index != NULL), or NULL. */
config_upstream_t *cfg_find_upstream(const config_t *cfg, const char *name,
                                     size_t *index);

/* Finds or appends the upstream/route named `name` (a route prefix is
 * normalized first); *existed tells an existing one from a new one. A new
 * upstream gets its table defaults. Returns 0, or -1 with msg filled. */
int cfg_open_named(config_t *cfg, seckind_t kind, const char *name,
                   unsigned line, bool *existed, size_t *index, char *msg,
                   size_t msglen);

/* Parses "kind [name]" (the inside of [...]) and opens that section;
 * from_file refuses a second [upstream NAME] / [route PREFIX] of a name. */
int cfg_open_section(config_t *cfg, const char *spec, unsigned line,
                     bool from_file, section_t *sec, char *msg, size_t msglen);

/* The row called name (with need_flags, if any), its index in *index. */
const keydef_t *cfg_lookup(const keydef_t *t, size_t n, const char *name,
                           unsigned need_flags, size_t *index);

/* Sets key=value in the open section and marks it explicit. seen (one mask
 * per singleton section) is non-NULL while reading a file: a key set twice
 * in one section is then refused. line is 0 for flags. */
int cfg_apply_key(config_t *cfg, const section_t *sec, const char *rawkey,
                  const char *value, uint64_t *seen, unsigned line, char *msg,
                  size_t msglen);

/* The upstream a route without `upstream =` uses (config.c): "default"
 * (--upstream) when defined, else the only one; NULL if ambiguous. */
const char *cfg_implicit_upstream(const config_t *cfg);

/* ------------------------------------------ typed fields (config_field.c) */

/* Parses value into the field k describes at base (range-checked). */
int cfg_set_value(const keydef_t *k, void *base, const char *value, char *msg,
                  size_t msglen);
/* Deep copy of one inheritable field; false on allocation failure (or for
 * a type that is not inheritable). */
bool cfg_copy_value(const keydef_t *k, void *dst, const void *src);
/* Frees what every row of a table owns at base (not base itself). */
void cfg_free_table(const keydef_t *t, size_t n, void *base);
/* Applies every default string of a table (only rows with only_flags, if
 * non-zero); they are all valid, so -1 means out of memory. */
int cfg_apply_defaults(const keydef_t *t, size_t n, void *base,
                       unsigned only_flags);
/* Writes "prefix NAME = value" lines as config_load_file reads them back,
 * secrets redacted; unset optional strings print nothing. */
void cfg_print_value(FILE *out, const keydef_t *k, const void *base,
                     const char *prefix);

/* ------------------------------------------------ values (config_value.c) */

/* snprintf that tolerates len == 0. */
void cfg_fmt(char *buf, size_t len, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
bool cfg_is_token(const char *s); /* an RFC 9110 token, non-empty */
char *cfg_trim(char *s);          /* in place; returns the new start */
/* Replaces *slot with a copy of s (or NULL); false on allocation failure. */
bool cfg_set_str(char **slot, const char *s);
/* Shortest exact spelling: 90000 -> "90s", 3600000 -> "1h", 0 -> "0". */
void cfg_fmt_duration(char *buf, size_t len, uint64_t ms);
/* 1048576 -> "1MiB", 1000 -> "1000". */
void cfg_fmt_size(char *buf, size_t len, uint64_t n);

/* Expands ${VAR} from the environment into a new string (*out, caller
 * frees); an unset variable is an error, a `$` not before `{` is kept. */
int cfg_expand_env(const char *in, char **out, char *msg, size_t msglen);
/* IP:PORT or [IPv6]:PORT or localhost:PORT; port 0 = any free port. */
int cfg_parse_addr(const char *s, config_addr_t *a, char *msg, size_t msglen);
/* http(s)://host[:port][/base] into u's url, tls, host, port, base_path. */
int cfg_parse_upstream_url(const char *s, config_upstream_t *u, char *msg,
                           size_t msglen);
/* redis://[[user]:password@]host[:port][/db] into r (already expanded). */
int cfg_parse_redis_url(const char *s, config_redis_t *r, char *msg,
                        size_t msglen);
/* Appends "Name: value" (value ${VAR}-expanded) to u->headers. */
int cfg_add_header(config_upstream_t *u, const char *spec, char *msg,
                   size_t msglen);
void cfg_free_names(char **names, size_t n);
/* Comma-separated header names into r->identity_headers ("none" = none). */
int cfg_parse_names(const char *s, config_route_t *r, char *msg, size_t msglen);
/* Statuses 100..599 into r->cache_statuses ("none" = none). */
int cfg_parse_statuses(const char *s, config_route_t *r, char *msg,
                       size_t msglen);
/* true/yes/on/1, false/no/off/0 (any case); -1 otherwise. */
int cfg_parse_bool(const char *s, bool *out);

/* -------------------------------------------------- flags (config_args.c) */

typedef struct flag {
  const char *name;
  char shortname;
  bool takes_value;
  const char *section; /* NULL: handled by config_parse_args itself */
  const char *key;
} flag_t;

extern const flag_t cfg_flags[];
extern const size_t cfg_nflags;

#endif
