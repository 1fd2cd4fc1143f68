/*
 * config_field.c — the four operations on a field that a key table row
 * describes, one switch over the key type each: set (parse a value into the
 * field, range-checked), copy (inheritance), free and print.
 *
 * A row names its field by offset from a base struct (config_server_t,
 * config_route_t, ...); for the compound types (T_URL, T_HEADER, T_NAMES,
 * T_STATUSES, T_REDIS_URL) the base is the whole upstream, route or redis
 * struct. Printing is the inverse of setting: what cfg_print_value writes,
 * cfg_set_value accepts and turns into the same field (fuzz_config checks
 * the round trip), except that secrets print as <redacted>.
 */
#include "config_int.h"
#include "quota.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* A string field's copy of a value already checked. */
static int store_str(const keydef_t *k, void *base, const char *value,
                     char *msg, size_t msglen) {
  if (!cfg_set_str(FIELD(base, k, char *), value)) {
    cfg_fmt(msg, msglen, "out of memory");
    return -1;
  }
  return 0;
}

/* Writes `value` into the field k describes at base. */
int cfg_set_value(const keydef_t *k, void *base, const char *value, char *msg,
                  size_t msglen) {
  char a[32], b[32];
  uint64_t v = 0;
  int rc;
  switch (k->type) {
  case T_DURATION:
    rc = config_parse_duration_ms(value, &v);
    if (rc == CONFIG_PARSE_NO_UNIT) {
      cfg_fmt(msg, msglen,
              "invalid duration \"%s\" (missing unit: %ss, %sms or %sm?)",
              value, value, value, value);
      return -1;
    }
    if (rc != CONFIG_PARSE_OK && rc != CONFIG_PARSE_RANGE) {
      cfg_fmt(msg, msglen, "invalid duration \"%s\" (use ms, s, m)", value);
      return -1;
    }
    if (rc == CONFIG_PARSE_RANGE || v < k->min || v > k->max) {
      cfg_fmt_duration(a, sizeof a, k->min);
      cfg_fmt_duration(b, sizeof b, k->max);
      cfg_fmt(msg, msglen, "duration \"%s\" out of range (%s to %s)", value, a,
              b);
      return -1;
    }
    *FIELD(base, k, uint64_t) = v;
    return 0;
  case T_SIZE:
    rc = config_parse_size(value, &v);
    if (rc == CONFIG_PARSE_INVALID) {
      cfg_fmt(msg, msglen, "invalid size \"%s\" (use bytes, KiB, MiB, GiB)",
              value);
      return -1;
    }
    if (rc != CONFIG_PARSE_OK || v < k->min || v > k->max) {
      cfg_fmt_size(a, sizeof a, k->min);
      cfg_fmt_size(b, sizeof b, k->max);
      cfg_fmt(msg, msglen, "size \"%s\" out of range (%s to %s)", value, a, b);
      return -1;
    }
    *FIELD(base, k, uint64_t) = v;
    return 0;
  case T_WORKERS:
    if (strcasecmp(value, "auto") == 0) {
      *FIELD(base, k, unsigned) = 0;
      return 0;
    }
    /* fall through */
  case T_UINT: {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(value, &end, 10);
    if (!isdigit((unsigned char)value[0]) || *end != '\0' || errno != 0 ||
        n < k->min || n > k->max) {
      cfg_fmt(msg, msglen, "invalid number \"%s\" (%llu to %llu%s)", value,
              (unsigned long long)k->min, (unsigned long long)k->max,
              k->type == T_WORKERS ? ", or auto" : "");
      return -1;
    }
    *FIELD(base, k, unsigned) = (unsigned)n;
    return 0;
  }
  case T_RATE: {
    char *end;
    double d = strtod(value, &end);
    if (end == value || *end != '\0' || !(d > 0.0 && d <= 1.0)) {
      cfg_fmt(msg, msglen,
              "invalid rate \"%s\" (a fraction in (0, 1], e.g. 0.5)", value);
      return -1;
    }
    *FIELD(base, k, double) = d;
    return 0;
  }
  case T_BOOL:
    if (cfg_parse_bool(value, FIELD(base, k, bool)) != 0) {
      cfg_fmt(msg, msglen, "invalid boolean \"%s\" (true or false)", value);
      return -1;
    }
    return 0;
  case T_QRATE: {
    double r;
    if (quota_parse_rate(value, &r) != 0) {
      cfg_fmt(msg, msglen,
              "invalid rate \"%s\" (calls per time: 10/s, 600/m, 5000/h)",
              value);
      return -1;
    }
    return store_str(k, base, value, msg, msglen);
  }
  case T_QPERIOD: {
    uint64_t max, period;
    if (quota_parse_period(value, &max, &period) != 0) {
      cfg_fmt(msg, msglen,
              "invalid quota \"%s\" (calls per period: 10000/day, 500/h)",
              value);
      return -1;
    }
    return store_str(k, base, value, msg, msglen);
  }
  case T_STRING:
    for (const char *c = value; *c; c++) {
      if ((unsigned char)*c <= ' ' || *c == 0x7f) {
        cfg_fmt(msg, msglen, "\"%s\": no spaces or control characters allowed",
                value);
        return -1;
      }
    }
    if (*value == '\0') {
      cfg_fmt(msg, msglen, "empty value");
      return -1;
    }
    if (*value == ';' || *value == '#') {
      /* INI reads a leading ; or # as a comment: such a value could not be
       * written back by --check-config (found by fuzz_config) */
      cfg_fmt(msg, msglen, "\"%s\": a value may not start with ';' or '#'",
              value);
      return -1;
    }
    return store_str(k, base, value, msg, msglen);
  case T_SECRET: {
    char *exp;
    if (cfg_expand_env(value, &exp, msg, msglen) != 0)
      return -1;
    bool ok = exp[0] != '\0';
    for (const char *c = exp; *c && ok; c++)
      ok = (unsigned char)*c > ' ' && *c != 0x7f;
    if (!ok) {
      cfg_fmt(msg, msglen,
              "must be non-empty, without spaces or control "
              "characters");
      free(exp);
      return -1;
    }
    free(*FIELD(base, k, char *));
    *FIELD(base, k, char *) = exp;
    return 0;
  }
  case T_PATH:
    if (access(value, R_OK) != 0) {
      cfg_fmt(msg, msglen, "cannot read \"%s\": %s", value, strerror(errno));
      return -1;
    }
    return store_str(k, base, value, msg, msglen);
  case T_ADDR:
    return cfg_parse_addr(value, FIELD(base, k, config_addr_t), msg, msglen);
  case T_POLICY:
    if (strcmp(value, "override") == 0)
      *FIELD(base, k, config_policy_t) = CONFIG_POLICY_OVERRIDE;
    else if (strcmp(value, "origin") == 0)
      *FIELD(base, k, config_policy_t) = CONFIG_POLICY_ORIGIN;
    else {
      cfg_fmt(msg, msglen, "invalid policy \"%s\" (override or origin)", value);
      return -1;
    }
    return 0;
  case T_LOGLEVEL:
    if (log_parse_level(value, FIELD(base, k, log_level_t)) != 0) {
      cfg_fmt(msg, msglen,
              "invalid log level \"%s\" (error, warn, info, debug)", value);
      return -1;
    }
    return 0;
  case T_URL:
    return cfg_parse_upstream_url(value, base, msg, msglen);
  case T_HEADER:
    return cfg_add_header(base, value, msg, msglen);
  case T_NAMES:
    return cfg_parse_names(value, base, msg, msglen);
  case T_STATUSES:
    return cfg_parse_statuses(value, base, msg, msglen);
  case T_REDIS_URL: {
    char *exp;
    if (cfg_expand_env(value, &exp, msg, msglen) != 0)
      return -1;
    rc = cfg_parse_redis_url(exp, base, msg, msglen);
    free(exp);
    return rc;
  }
  }
  return -1;
}

/* Deep copy of one field, for inheritance; false on allocation failure. */
bool cfg_copy_value(const keydef_t *k, void *dst, const void *src) {
  switch (k->type) {
  case T_DURATION:
  case T_SIZE:
    *FIELD(dst, k, uint64_t) = *CFIELD(src, k, uint64_t);
    return true;
  case T_UINT:
  case T_WORKERS:
    *FIELD(dst, k, unsigned) = *CFIELD(src, k, unsigned);
    return true;
  case T_RATE:
    *FIELD(dst, k, double) = *CFIELD(src, k, double);
    return true;
  case T_POLICY:
    *FIELD(dst, k, config_policy_t) = *CFIELD(src, k, config_policy_t);
    return true;
  case T_NAMES: {
    const config_route_t *s = src;
    config_route_t *d = dst;
    char **names = calloc(s->nidentity_headers + 1, sizeof *names);
    if (names == NULL)
      return false;
    for (size_t i = 0; i < s->nidentity_headers; i++) {
      if ((names[i] = strdup(s->identity_headers[i])) == NULL) {
        cfg_free_names(names, i);
        return false;
      }
    }
    cfg_free_names(d->identity_headers, d->nidentity_headers);
    d->identity_headers = names;
    d->nidentity_headers = s->nidentity_headers;
    return true;
  }
  case T_STATUSES: {
    const config_route_t *s = src;
    config_route_t *d = dst;
    uint16_t *list = malloc((s->ncache_statuses + 1) * sizeof *list);
    if (list == NULL)
      return false;
    if (s->ncache_statuses > 0)
      memcpy(list, s->cache_statuses, s->ncache_statuses * sizeof *list);
    free(d->cache_statuses);
    d->cache_statuses = list;
    d->ncache_statuses = s->ncache_statuses;
    return true;
  }
  default: /* only the types above are inheritable */
    return false;
  }
}

static void free_value(const keydef_t *k, void *base) {
  switch (k->type) {
  case T_QRATE:
  case T_QPERIOD:
  case T_STRING:
  case T_SECRET:
  case T_PATH:
    free(*FIELD(base, k, char *));
    break;
  case T_ADDR:
    free(FIELD(base, k, config_addr_t)->host);
    break;
  case T_URL: {
    config_upstream_t *u = base;
    free(u->url);
    free(u->host);
    free(u->base_path);
    break;
  }
  case T_HEADER: {
    config_upstream_t *u = base;
    for (size_t i = 0; i < u->nheaders; i++) {
      free(u->headers[i].name);
      free(u->headers[i].value);
    }
    free(u->headers);
    break;
  }
  case T_NAMES: {
    config_route_t *r = base;
    cfg_free_names(r->identity_headers, r->nidentity_headers);
    break;
  }
  case T_STATUSES:
    free(((config_route_t *)base)->cache_statuses);
    break;
  case T_REDIS_URL: {
    config_redis_t *r = base;
    free(r->url);
    free(r->host);
    free(r->username);
    free(r->password);
    break;
  }
  default:
    break;
  }
}

void cfg_free_table(const keydef_t *t, size_t n, void *base) {
  for (size_t i = 0; i < n; i++)
    free_value(&t[i], base);
}

/* Applies every default string of a table; they are all valid. */
int cfg_apply_defaults(const keydef_t *t, size_t n, void *base,
                       unsigned only_flags) {
  char msg[160];
  for (size_t i = 0; i < n; i++) {
    if (t[i].def == NULL || (only_flags && !(t[i].flags & only_flags)))
      continue;
    if (cfg_set_value(&t[i], base, t[i].def, msg, sizeof msg) != 0)
      return -1;
  }
  return 0;
}

/* Prints one field as a line config_load_file reads back. */
void cfg_print_value(FILE *out, const keydef_t *k, const void *base,
                     const char *prefix) {
  char buf[64];
  switch (k->type) {
  case T_DURATION:
    cfg_fmt_duration(buf, sizeof buf, *CFIELD(base, k, uint64_t));
    fprintf(out, "%s%s = %s\n", prefix, k->name, buf);
    break;
  case T_SIZE:
    cfg_fmt_size(buf, sizeof buf, *CFIELD(base, k, uint64_t));
    fprintf(out, "%s%s = %s\n", prefix, k->name, buf);
    break;
  case T_UINT:
  case T_WORKERS:
    fprintf(out, "%s%s = %u\n", prefix, k->name, *CFIELD(base, k, unsigned));
    break;
  case T_RATE:
    fprintf(out, "%s%s = %g\n", prefix, k->name, *CFIELD(base, k, double));
    break;
  case T_BOOL:
    fprintf(out, "%s%s = %s\n", prefix, k->name,
            *CFIELD(base, k, bool) ? "true" : "false");
    break;
  case T_QRATE:
  case T_QPERIOD:
  case T_STRING:
  case T_PATH:
    if (*CFIELD(base, k, char *) != NULL)
      fprintf(out, "%s%s = %s\n", prefix, k->name, *CFIELD(base, k, char *));
    break;
  case T_SECRET:
    if (*CFIELD(base, k, char *) != NULL)
      fprintf(out, "%s%s = <redacted>\n", prefix, k->name);
    break;
  case T_ADDR: {
    const config_addr_t *a = CFIELD(base, k, config_addr_t);
    bool v6 = strchr(a->host, ':') != NULL;
    fprintf(out, "%s = %s%s%s:%u\n", k->name, v6 ? "[" : "", a->host,
            v6 ? "]" : "", (unsigned)a->port);
    break;
  }
  case T_POLICY:
    fprintf(out, "%s = %s\n", k->name,
            *CFIELD(base, k, config_policy_t) == CONFIG_POLICY_ORIGIN
                ? "origin"
                : "override");
    break;
  case T_LOGLEVEL:
    fprintf(out, "%s = %s\n", k->name,
            log_level_name(*CFIELD(base, k, log_level_t)));
    break;
  case T_URL:
    fprintf(out, "url = %s\n", ((const config_upstream_t *)base)->url);
    break;
  case T_HEADER: {
    const config_upstream_t *u = base;
    for (size_t i = 0; i < u->nheaders; i++)
      fprintf(out, "header = %s: <redacted>\n", u->headers[i].name);
    break;
  }
  case T_NAMES: {
    const config_route_t *r = base;
    fprintf(out, "%s =", k->name);
    for (size_t i = 0; i < r->nidentity_headers; i++)
      fprintf(out, "%s%s", i ? ", " : " ", r->identity_headers[i]);
    fprintf(out, "%s\n", r->nidentity_headers ? "" : " none");
    break;
  }
  case T_STATUSES: {
    const config_route_t *r = base;
    fprintf(out, "%s =", k->name);
    for (size_t i = 0; i < r->ncache_statuses; i++)
      fprintf(out, "%s%u", i ? "," : " ", (unsigned)r->cache_statuses[i]);
    fprintf(out, "%s\n", r->ncache_statuses ? "" : " none");
    break;
  }
  case T_REDIS_URL: {
    const config_redis_t *r = base;
    if (r->url != NULL)
      fprintf(out, "url = redis://%s%s%s:%u/%u\n",
              r->username ? r->username : "", r->password ? ":<redacted>@" : "",
              r->host, (unsigned)r->port, r->db);
    break;
  }
  }
}
