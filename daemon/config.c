/*
 * config.c — builds a config_t from defaults, an INI file and flags; see
 * config.h for the precedence rules and the lifecycle.
 *
 * Every key of every section is one row of a key table (name, type, field
 * offset, range, default). One setter parses a value into a field by type,
 * so the file, the flags, the defaults, inheritance, freeing and
 * config_print all walk the same tables and cannot drift apart.
 *
 * Inheritance: each upstream, route and per-upstream breaker keeps a bit
 * per key set explicitly (explicit_keys); config_finalize copies every
 * other inheritable field from the globals. The file parser also uses those
 * bits to refuse a key set twice in one section.
 *
 * libinih is fed through our own line reader (ini_parse_stream) because the
 * handler it calls gets no line number and no section-start event: the
 * reader counts lines, opens sections itself (so an empty section is still
 * checked and a long route prefix is not cut at inih's 50 bytes) and turns
 * a line longer than inih's buffer into an error instead of a silently
 * truncated value.
 */
#include "config.h"
#include "quota.h"
#include "batch_split.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MS_S UINT64_C(1000)
#define MS_M (60 * MS_S)
#define MS_H (60 * MS_M)
#define MS_D (24 * MS_H)
#define KIB UINT64_C(1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

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

static const keydef_t server_keys[] = {
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

static const keydef_t cache_keys[] = {
    {"max_bytes", T_SIZE, CCH(max_bytes), MIB, 1024 * GIB, 0, "256MiB"},
    {"shards", T_UINT, CCH(shards), 1, 1024, 0, "16"},
    {"max_flights", T_UINT, CCH(max_flights), 0, UINT_MAX, 0, "10000"},
    {"max_waiters_per_key", T_UINT, CCH(max_waiters_per_key), 0, UINT_MAX, 0,
     "10000"},
    {"max_waiters", T_UINT, CCH(max_waiters), 0, UINT_MAX, 0, "100000"},
    {"unshared", T_DURATION, CCH(unshared_ms), 0, MS_H, 0, "2s"},
};

static const keydef_t breaker_keys[] = {
    {"consecutive_failures", T_UINT, BRK(consecutive_failures), 0, 1000000, 0,
     "5"},
    {"failure_rate", T_RATE, BRK(failure_rate), 0, 0, 0, "0.5"},
    {"window", T_UINT, BRK(window), 0, 100000, 0, "20"},
    {"min_volume", T_UINT, BRK(min_volume), 0, 100000, 0, "10"},
    {"open", T_DURATION, BRK(open_ms), 1, MS_D, 0, "30s"},
    {"max_open", T_DURATION, BRK(max_open_ms), 1, MS_D, 0, "1h"},
    {"half_open_probes", T_UINT, BRK(half_open_probes), 1, 1000, 0, "1"},
};

static const keydef_t redis_keys[] = {
    {"url", T_REDIS_URL, 0, 0, 0, 0, NULL},
    {"prefix", T_STRING, RDS(prefix), 0, 0, 0, "coalesce:"},
    {"timeout", T_DURATION, RDS(timeout_ms), 1, MS_M, 0, "250ms"},
    {"lock_ttl", T_DURATION, RDS(lock_ttl_ms), 1, MS_H, 0, NULL},
};

/* Defaults here apply when an upstream is created; timeout and the
 * breaker_* keys (breaker_keys prefixed) inherit in config_finalize. */
static const keydef_t upstream_keys[] = {
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
static const keydef_t route_keys[] = {
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

#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))
#define FIELD(base, k, type) ((type *)(void *)((char *)(base) + (k)->off))
#define CFIELD(base, k, type)                                                  \
  ((const type *)(const void *)((const char *)(base) + (k)->off))

/* Headers the proxy owns: injecting them would break framing or routing. */
static const char *const reserved_headers[] = {
    "host",       "content-length", "transfer-encoding",
    "connection", "keep-alive",     "upgrade",
    "te",         "trailer",        "proxy-connection"};

/* --------------------------------------------------------------- helpers */

static void fmt(char *buf, size_t len, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t len, const char *f, ...) {
  if (len == 0)
    return;
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, len, f, ap);
  va_end(ap);
}

static bool is_tchar(int c) { /* RFC 9110 token */
  return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s) {
  if (*s == '\0')
    return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s))
      return false;
  return true;
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1]))
    *--e = '\0';
  return s;
}

/* Replaces *slot with a copy of s (or NULL); false on allocation failure. */
static bool set_str(char **slot, const char *s) {
  char *copy = NULL;
  if (s != NULL && (copy = strdup(s)) == NULL)
    return false;
  free(*slot);
  *slot = copy;
  return true;
}

static void fmt_duration(char *buf, size_t len, uint64_t ms) {
  if (ms == 0)
    fmt(buf, len, "0");
  else if (ms % MS_H == 0)
    fmt(buf, len, "%lluh", (unsigned long long)(ms / MS_H));
  else if (ms % MS_M == 0)
    fmt(buf, len, "%llum", (unsigned long long)(ms / MS_M));
  else if (ms % MS_S == 0)
    fmt(buf, len, "%llus", (unsigned long long)(ms / MS_S));
  else
    fmt(buf, len, "%llums", (unsigned long long)ms);
}

static void fmt_size(char *buf, size_t len, uint64_t n) {
  if (n != 0 && n % GIB == 0)
    fmt(buf, len, "%lluGiB", (unsigned long long)(n / GIB));
  else if (n != 0 && n % MIB == 0)
    fmt(buf, len, "%lluMiB", (unsigned long long)(n / MIB));
  else if (n != 0 && n % KIB == 0)
    fmt(buf, len, "%lluKiB", (unsigned long long)(n / KIB));
  else
    fmt(buf, len, "%llu", (unsigned long long)n);
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

/* ---------------------------------------------------- durations and sizes */

/* Reads digits[.digits] at *p: the integer part and up to 9 fraction
 * digits as frac / 10^fdigits. */
static int parse_decimal(const char **p, uint64_t *ip, uint64_t *frac,
                         uint64_t *scale) {
  const char *s = *p;
  uint64_t v = 0, f = 0, sc = 1;
  bool digits = false;
  for (; isdigit((unsigned char)*s); s++, digits = true) {
    if (v > (UINT64_MAX - 9) / 10)
      return CONFIG_PARSE_RANGE;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  if (*s == '.') {
    s++;
    for (; isdigit((unsigned char)*s); s++, digits = true) {
      if (sc < UINT64_C(1000000000)) {
        f = f * 10 + (uint64_t)(*s - '0');
        sc *= 10;
      } else if (*s != '0') {
        return CONFIG_PARSE_INVALID; /* more precision than we keep */
      }
    }
  }
  if (!digits)
    return CONFIG_PARSE_INVALID;
  *p = s;
  *ip = v;
  *frac = f;
  *scale = sc;
  return CONFIG_PARSE_OK;
}

/* v + f/scale in units of mult, exactly (floor if !exact). */
static int scale_units(uint64_t v, uint64_t f, uint64_t sc, uint64_t mult,
                       bool exact, uint64_t *out) {
  if (v != 0 && mult > UINT64_MAX / v)
    return CONFIG_PARSE_RANGE;
  /* f < 10^9 and mult <= 2^30 (GiB) keep f * mult inside 64 bits. */
  uint64_t part = f * mult;
  if (exact && part % sc != 0)
    return CONFIG_PARSE_INVALID;
  uint64_t r = v * mult;
  if (r > UINT64_MAX - part / sc)
    return CONFIG_PARSE_RANGE;
  *out = r + part / sc;
  return CONFIG_PARSE_OK;
}

int config_parse_duration_ms(const char *s, uint64_t *out_ms) {
  if (s == NULL || *s == '\0')
    return CONFIG_PARSE_INVALID;
  const char *p = s;
  uint64_t total = 0;
  bool first = true;
  while (*p) {
    uint64_t v, f, sc, mult, part;
    int rc = parse_decimal(&p, &v, &f, &sc);
    if (rc != CONFIG_PARSE_OK)
      return rc;
    if (p[0] == 'm' && p[1] == 's') {
      mult = 1;
      p += 2;
    } else if (*p == 's') {
      mult = MS_S;
      p++;
    } else if (*p == 'm') {
      mult = MS_M;
      p++;
    } else if (*p == 'h') {
      mult = MS_H;
      p++;
    } else if (*p == '\0' && first) {
      if (v == 0 && f == 0) { /* "0" needs no unit */
        *out_ms = 0;
        return CONFIG_PARSE_OK;
      }
      return CONFIG_PARSE_NO_UNIT;
    } else {
      return CONFIG_PARSE_INVALID;
    }
    first = false;
    if ((rc = scale_units(v, f, sc, mult, true, &part)) != CONFIG_PARSE_OK)
      return rc;
    if (total > UINT64_MAX - part)
      return CONFIG_PARSE_RANGE;
    total += part;
  }
  *out_ms = total;
  return CONFIG_PARSE_OK;
}

int config_parse_size(const char *s, uint64_t *out_bytes) {
  if (s == NULL)
    return CONFIG_PARSE_INVALID;
  const char *p = s;
  uint64_t v, f, sc, mult;
  int rc = parse_decimal(&p, &v, &f, &sc);
  if (rc != CONFIG_PARSE_OK)
    return rc;
  while (*p == ' ')
    p++;
  static const struct {
    const char *unit;
    uint64_t mult;
  } units[] = {{"", 1},    {"b", 1},     {"k", KIB}, {"kib", KIB},
               {"m", MIB}, {"mib", MIB}, {"g", GIB}, {"gib", GIB}};
  for (size_t i = 0; i < NKEYS(units); i++) {
    if (strcasecmp(p, units[i].unit) == 0) {
      mult = units[i].mult;
      if (mult == 1 && f != 0)
        return CONFIG_PARSE_INVALID; /* a fraction of a byte */
      return scale_units(v, f, sc, mult, false, out_bytes);
    }
  }
  return CONFIG_PARSE_INVALID;
}

/* ------------------------------------------------------- value validators */

/* Expands ${VAR} from the environment; a `$` not followed by `{` is kept. */
static int expand_env(const char *in, char **out, char *msg, size_t msglen) {
  size_t cap = strlen(in) + 1, n = 0;
  char *buf = malloc(cap);
  if (buf == NULL)
    goto nomem;
  for (const char *p = in; *p;) {
    const char *piece = p;
    size_t plen = 1;
    if (p[0] == '$' && p[1] == '{') {
      const char *end = strchr(p + 2, '}');
      if (end == NULL) {
        fmt(msg, msglen, "unterminated ${ in \"%s\"", in);
        free(buf);
        return -1;
      }
      char name[128];
      size_t nlen = (size_t)(end - (p + 2));
      if (nlen == 0 || nlen >= sizeof name) {
        fmt(msg, msglen, "bad variable name in \"%s\"", in);
        free(buf);
        return -1;
      }
      memcpy(name, p + 2, nlen);
      name[nlen] = '\0';
      piece = getenv(name);
      if (piece == NULL) {
        fmt(msg, msglen, "environment variable %s is not set", name);
        free(buf);
        return -1;
      }
      plen = strlen(piece);
      p = end + 1;
    } else {
      p++;
    }
    if (n + plen + 1 > cap) {
      cap = (n + plen + 1) * 2;
      char *nb = realloc(buf, cap);
      if (nb == NULL) {
        free(buf);
        goto nomem;
      }
      buf = nb;
    }
    memcpy(buf + n, piece, plen);
    n += plen;
  }
  buf[n] = '\0';
  *out = buf;
  return 0;
nomem:
  fmt(msg, msglen, "out of memory");
  return -1;
}

static bool parse_port(const char *s, uint16_t *out, bool allow_zero) {
  if (*s == '\0' || strlen(s) > 5)
    return false;
  unsigned long v = 0;
  for (const char *p = s; *p; p++) {
    if (!isdigit((unsigned char)*p))
      return false;
    v = v * 10 + (unsigned long)(*p - '0');
  }
  if (v > 65535 || (v == 0 && !allow_zero))
    return false;
  *out = (uint16_t)v;
  return true;
}

/* HOST:PORT for a listener: IPv4 literal, [IPv6] or localhost; port 0 asks
 * the kernel for any free port. */
static int parse_addr(const char *s, config_addr_t *a, char *msg,
                      size_t msglen) {
  const char *given = s;
  char host[64];
  const char *colon;
  size_t hlen;
  if (s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (rb == NULL || rb[1] != ':')
      goto bad;
    hlen = (size_t)(rb - s - 1);
    colon = rb + 1;
    s++;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL)
      goto bad;
    hlen = (size_t)(colon - s);
  }
  if (hlen == 0 || hlen >= sizeof host)
    goto bad;
  memcpy(host, s, hlen);
  host[hlen] = '\0';
  if (s == given && strchr(host, ':') != NULL)
    goto bad; /* an IPv6 literal needs brackets to tell it from the port */
  if (strcmp(host, "localhost") == 0)
    strcpy(host, "127.0.0.1");
  unsigned char tmp[16];
  if (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1)
    goto bad;
  uint16_t port;
  if (!parse_port(colon + 1, &port, true))
    goto bad;
  if (!set_str(&a->host, host)) {
    fmt(msg, msglen, "out of memory");
    return -1;
  }
  a->port = port;
  return 0;
bad:
  fmt(msg, msglen,
      "invalid address \"%s\" (use IP:PORT, e.g. 127.0.0.1:8080 or "
      "[::1]:8080)",
      given);
  return -1;
}

static bool valid_hostname(const char *h) {
  if (*h == '\0' || strlen(h) > 253)
    return false;
  for (; *h; h++)
    if (!isalnum((unsigned char)*h) && *h != '-' && *h != '.' && *h != '_')
      return false;
  return true;
}

/* http(s)://host[:port][/base/path]: no credentials, query or fragment;
 * the host is lowercased and trailing slashes dropped so the proxy can
 * append request paths to base_path. */
static int parse_upstream_url(const char *s, config_upstream_t *u, char *msg,
                              size_t msglen) {
  bool tls;
  const char *p;
  if (strncasecmp(s, "http://", 7) == 0) {
    tls = false;
    p = s + 7;
  } else if (strncasecmp(s, "https://", 8) == 0) {
    tls = true;
    p = s + 8;
  } else {
    fmt(msg, msglen, "invalid URL \"%s\" (must start with http:// or https://)",
        s);
    return -1;
  }
  size_t alen = strcspn(p, "/?#");
  const char *path = p + alen;
  char auth[300], host[260];
  if (alen == 0 || alen >= sizeof auth) {
    fmt(msg, msglen, "invalid URL \"%s\" (no host)", s);
    return -1;
  }
  memcpy(auth, p, alen);
  auth[alen] = '\0';
  if (strchr(auth, '@') != NULL) {
    fmt(msg, msglen,
        "invalid URL \"%s\" (credentials in URLs are not supported; "
        "use header = Authorization: ...)",
        s);
    return -1;
  }
  uint16_t port = tls ? 443 : 80;
  bool explicit_port = false, v6 = false;
  char *portstr = NULL;
  if (auth[0] == '[') {
    char *rb = strchr(auth, ']');
    unsigned char tmp[16];
    if (rb == NULL)
      goto badhost;
    *rb = '\0';
    if (inet_pton(AF_INET6, auth + 1, tmp) != 1)
      goto badhost;
    strcpy(host, auth + 1);
    v6 = true;
    if (rb[1] == ':')
      portstr = rb + 2;
    else if (rb[1] != '\0')
      goto badhost;
  } else {
    char *colon = strchr(auth, ':');
    if (colon != NULL) {
      *colon = '\0';
      portstr = colon + 1;
    }
    if (!valid_hostname(auth))
      goto badhost;
    strcpy(host, auth);
  }
  if (portstr != NULL) {
    if (!parse_port(portstr, &port, false)) {
      fmt(msg, msglen, "invalid URL \"%s\" (bad port \"%s\")", s, portstr);
      return -1;
    }
    explicit_port = port != (tls ? 443 : 80);
  }
  for (char *h = host; *h; h++)
    *h = (char)tolower((unsigned char)*h);
  if (strpbrk(path, "?#") != NULL) {
    fmt(msg, msglen,
        "invalid URL \"%s\" (a base URL takes no query or fragment)", s);
    return -1;
  }
  for (const char *c = path; *c; c++) {
    if ((unsigned char)*c <= ' ' || *c == 0x7f) {
      fmt(msg, msglen, "invalid URL \"%s\" (spaces or control characters)", s);
      return -1;
    }
  }
  size_t plen = strlen(path);
  while (plen > 0 && path[plen - 1] == '/')
    plen--;
  char *base = strndup(path, plen);
  size_t ulen = strlen(host) + plen + 32;
  char *url = malloc(ulen);
  char *hostcopy = strdup(host);
  if (base == NULL || url == NULL || hostcopy == NULL) {
    free(base);
    free(url);
    free(hostcopy);
    fmt(msg, msglen, "out of memory");
    return -1;
  }
  char portpart[8] = "";
  if (explicit_port)
    fmt(portpart, sizeof portpart, ":%u", (unsigned)port);
  fmt(url, ulen, "%s://%s%s%s%s%s", tls ? "https" : "http", v6 ? "[" : "", host,
      v6 ? "]" : "", portpart, base);
  free(u->url);
  free(u->host);
  free(u->base_path);
  u->url = url;
  u->host = hostcopy;
  u->base_path = base;
  u->tls = tls;
  u->port = port;
  return 0;
badhost:
  fmt(msg, msglen, "invalid URL \"%s\" (bad host)", s);
  return -1;
}

/* redis://[[user]:password@]host[:port][/db] */
static int parse_redis_url(const char *s, config_redis_t *r, char *msg,
                           size_t msglen) {
  if (strncmp(s, "redis://", 8) != 0) {
    fmt(msg, msglen,
        "invalid Redis URL (use redis://[:PASSWORD@]HOST[:PORT][/DB])");
    return -1;
  }
  const char *p = s + 8;
  const char *at = strrchr(p, '@');
  char *user = NULL, *pass = NULL, *host = NULL, *url = NULL;
  uint16_t port = 6379;
  unsigned db = 0;
  if (at != NULL) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon == NULL)
      goto bad; /* a bare user with no password means nothing to Redis */
    if (colon > p && (user = strndup(p, (size_t)(colon - p))) == NULL)
      goto bad;
    if ((pass = strndup(colon + 1, (size_t)(at - colon - 1))) == NULL)
      goto bad;
    p = at + 1;
  }
  size_t hlen = strcspn(p, ":/");
  if (hlen == 0)
    goto bad;
  host = strndup(p, hlen);
  if (host == NULL || !valid_hostname(host))
    goto bad;
  p += hlen;
  if (*p == ':') {
    char portbuf[8];
    size_t n = strcspn(p + 1, "/");
    if (n >= sizeof portbuf)
      goto bad;
    memcpy(portbuf, p + 1, n);
    portbuf[n] = '\0';
    if (!parse_port(portbuf, &port, false))
      goto bad;
    p += 1 + n;
  }
  if (*p == '/' && p[1] != '\0') {
    char *end;
    errno = 0;
    unsigned long v = strtoul(p + 1, &end, 10);
    if (!isdigit((unsigned char)p[1]) || *end != '\0' || v > 1000 || errno)
      goto bad;
    db = (unsigned)v;
  } else if (*p == '/' ? p[1] != '\0' : *p != '\0') {
    goto bad;
  }
  if ((url = strdup(s)) == NULL)
    goto bad;
  free(r->url);
  free(r->host);
  free(r->username);
  free(r->password);
  r->url = url;
  r->host = host;
  r->username = user;
  r->password = pass;
  r->port = port;
  r->db = db;
  return 0;
bad:
  free(user);
  free(pass);
  free(host);
  fmt(msg, msglen,
      "invalid Redis URL (use redis://[:PASSWORD@]HOST[:PORT][/DB])");
  return -1;
}

/* "Name: value" with ${VAR} expansion; the value must stay one header line
 * after expansion (no CR/LF smuggled in through the environment). */
static int add_header(config_upstream_t *u, const char *spec, char *msg,
                      size_t msglen) {
  const char *colon = strchr(spec, ':');
  char name[128];
  size_t nlen = colon ? (size_t)(colon - spec) : 0;
  while (nlen > 0 && isspace((unsigned char)spec[nlen - 1]))
    nlen--;
  if (colon == NULL || nlen == 0 || nlen >= sizeof name) {
    fmt(msg, msglen, "expected \"Name: value\"");
    return -1;
  }
  memcpy(name, spec, nlen);
  name[nlen] = '\0';
  if (!is_token(name)) {
    fmt(msg, msglen, "invalid header name \"%s\"", name);
    return -1;
  }
  for (size_t i = 0; i < NKEYS(reserved_headers); i++) {
    if (strcasecmp(name, reserved_headers[i]) == 0) {
      fmt(msg, msglen, "header %s is set by the proxy and cannot be injected",
          name);
      return -1;
    }
  }
  const char *v = colon + 1;
  while (*v == ' ' || *v == '\t')
    v++;
  char *value;
  if (expand_env(v, &value, msg, msglen) != 0)
    return -1;
  size_t vlen = strlen(value);
  while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
    value[--vlen] = '\0';
  for (const char *c = value; *c; c++) {
    if (((unsigned char)*c < ' ' && *c != '\t') || *c == 0x7f) {
      fmt(msg, msglen, "header %s: value has control characters", name);
      free(value);
      return -1;
    }
  }
  config_header_t *nh =
      realloc(u->headers, (u->nheaders + 1) * sizeof *u->headers);
  char *ncopy = strdup(name);
  if (nh == NULL || ncopy == NULL) {
    if (nh != NULL)
      u->headers = nh;
    free(ncopy);
    free(value);
    fmt(msg, msglen, "out of memory");
    return -1;
  }
  u->headers = nh;
  u->headers[u->nheaders].name = ncopy;
  u->headers[u->nheaders].value = value;
  u->nheaders++;
  return 0;
}

static void free_names(char **names, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

/* Comma-separated header names, lowercased; "none" or "" = no names. */
static int parse_names(const char *s, config_route_t *r, char *msg,
                       size_t msglen) {
  char *copy = strdup(s), *save = NULL;
  char **names = NULL;
  size_t n = 0;
  if (copy == NULL)
    goto nomem;
  if (strcasecmp(trim(copy), "none") != 0) {
    for (char *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
      tok = trim(tok);
      if (!is_token(tok)) {
        fmt(msg, msglen, "invalid header name \"%s\"", tok);
        goto fail;
      }
      for (char *c = tok; *c; c++)
        *c = (char)tolower((unsigned char)*c);
      char **nn = realloc(names, (n + 1) * sizeof *names);
      if (nn == NULL)
        goto nomem;
      names = nn;
      if ((names[n] = strdup(tok)) == NULL)
        goto nomem;
      n++;
    }
  }
  free(copy);
  free_names(r->identity_headers, r->nidentity_headers);
  r->identity_headers = names;
  r->nidentity_headers = n;
  return 0;
nomem:
  fmt(msg, msglen, "out of memory");
fail:
  free(copy);
  free_names(names, n);
  return -1;
}

/* Comma- or space-separated statuses 100..599; "none" = store nothing. */
static int parse_statuses(const char *s, config_route_t *r, char *msg,
                          size_t msglen) {
  uint16_t *list = NULL;
  size_t n = 0;
  const char *p = s;
  while (isspace((unsigned char)*p))
    p++;
  if (strcasecmp(p, "none") != 0) {
    while (*p) {
      char *end;
      if (!isdigit((unsigned char)*p))
        goto bad;
      long v = strtol(p, &end, 10);
      if (v < 100 || v > 599)
        goto bad;
      uint16_t *nl = realloc(list, (n + 1) * sizeof *list);
      if (nl == NULL) {
        free(list);
        fmt(msg, msglen, "out of memory");
        return -1;
      }
      list = nl;
      list[n++] = (uint16_t)v;
      p = end;
      while (isspace((unsigned char)*p) || *p == ',')
        p++;
    }
    if (n == 0)
      goto bad;
  }
  free(r->cache_statuses);
  r->cache_statuses = list;
  r->ncache_statuses = n;
  return 0;
bad:
  free(list);
  fmt(msg, msglen,
      "invalid status list \"%s\" (e.g. 200,203,204,300,301,404,410 or none)",
      s);
  return -1;
}

static int parse_bool(const char *s, bool *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"};
  static const char *const no[] = {"false", "no", "off", "0"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcasecmp(s, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  return -1;
}

/* Writes `value` into the field k describes at base. */
static int set_value(const keydef_t *k, void *base, const char *value,
                     char *msg, size_t msglen) {
  char a[32], b[32];
  uint64_t v = 0;
  int rc;
  switch (k->type) {
  case T_DURATION:
    rc = config_parse_duration_ms(value, &v);
    if (rc == CONFIG_PARSE_NO_UNIT) {
      fmt(msg, msglen,
          "invalid duration \"%s\" (missing unit: %ss, %sms or %sm?)", value,
          value, value, value);
      return -1;
    }
    if (rc != CONFIG_PARSE_OK && rc != CONFIG_PARSE_RANGE) {
      fmt(msg, msglen, "invalid duration \"%s\" (use ms, s, m)", value);
      return -1;
    }
    if (rc == CONFIG_PARSE_RANGE || v < k->min || v > k->max) {
      fmt_duration(a, sizeof a, k->min);
      fmt_duration(b, sizeof b, k->max);
      fmt(msg, msglen, "duration \"%s\" out of range (%s to %s)", value, a, b);
      return -1;
    }
    *FIELD(base, k, uint64_t) = v;
    return 0;
  case T_SIZE:
    rc = config_parse_size(value, &v);
    if (rc == CONFIG_PARSE_INVALID) {
      fmt(msg, msglen, "invalid size \"%s\" (use bytes, KiB, MiB, GiB)", value);
      return -1;
    }
    if (rc != CONFIG_PARSE_OK || v < k->min || v > k->max) {
      fmt_size(a, sizeof a, k->min);
      fmt_size(b, sizeof b, k->max);
      fmt(msg, msglen, "size \"%s\" out of range (%s to %s)", value, a, b);
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
      fmt(msg, msglen, "invalid number \"%s\" (%llu to %llu%s)", value,
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
      fmt(msg, msglen, "invalid rate \"%s\" (a fraction in (0, 1], e.g. 0.5)",
          value);
      return -1;
    }
    *FIELD(base, k, double) = d;
    return 0;
  }
  case T_BOOL:
    if (parse_bool(value, FIELD(base, k, bool)) != 0) {
      fmt(msg, msglen, "invalid boolean \"%s\" (true or false)", value);
      return -1;
    }
    return 0;
  case T_QRATE: {
    double r;
    if (quota_parse_rate(value, &r) != 0) {
      fmt(msg, msglen,
          "invalid rate \"%s\" (calls per time: 10/s, 600/m, 5000/h)", value);
      return -1;
    }
    if (!set_str(FIELD(base, k, char *), value)) {
      fmt(msg, msglen, "out of memory");
      return -1;
    }
    return 0;
  }
  case T_QPERIOD: {
    uint64_t max, period;
    if (quota_parse_period(value, &max, &period) != 0) {
      fmt(msg, msglen,
          "invalid quota \"%s\" (calls per period: 10000/day, 500/h)",
          value);
      return -1;
    }
    if (!set_str(FIELD(base, k, char *), value)) {
      fmt(msg, msglen, "out of memory");
      return -1;
    }
    return 0;
  }
  case T_STRING:
    for (const char *c = value; *c; c++) {
      if ((unsigned char)*c <= ' ' || *c == 0x7f) {
        fmt(msg, msglen, "\"%s\": no spaces or control characters allowed",
            value);
        return -1;
      }
    }
    if (*value == '\0') {
      fmt(msg, msglen, "empty value");
      return -1;
    }
    if (*value == ';' || *value == '#') {
      /* INI reads a leading ; or # as a comment: such a value could not be
       * written back by --check-config (found by fuzz_config) */
      fmt(msg, msglen, "\"%s\": a value may not start with ';' or '#'",
          value);
      return -1;
    }
    if (!set_str(FIELD(base, k, char *), value)) {
      fmt(msg, msglen, "out of memory");
      return -1;
    }
    return 0;
  case T_SECRET: {
    char *exp;
    if (expand_env(value, &exp, msg, msglen) != 0)
      return -1;
    bool ok = exp[0] != '\0';
    for (const char *c = exp; *c && ok; c++)
      ok = (unsigned char)*c > ' ' && *c != 0x7f;
    if (!ok) {
      fmt(msg, msglen,
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
      fmt(msg, msglen, "cannot read \"%s\": %s", value, strerror(errno));
      return -1;
    }
    if (!set_str(FIELD(base, k, char *), value)) {
      fmt(msg, msglen, "out of memory");
      return -1;
    }
    return 0;
  case T_ADDR:
    return parse_addr(value, FIELD(base, k, config_addr_t), msg, msglen);
  case T_POLICY:
    if (strcmp(value, "override") == 0)
      *FIELD(base, k, config_policy_t) = CONFIG_POLICY_OVERRIDE;
    else if (strcmp(value, "origin") == 0)
      *FIELD(base, k, config_policy_t) = CONFIG_POLICY_ORIGIN;
    else {
      fmt(msg, msglen, "invalid policy \"%s\" (override or origin)", value);
      return -1;
    }
    return 0;
  case T_LOGLEVEL:
    if (log_parse_level(value, FIELD(base, k, log_level_t)) != 0) {
      fmt(msg, msglen, "invalid log level \"%s\" (error, warn, info, debug)",
          value);
      return -1;
    }
    return 0;
  case T_URL:
    return parse_upstream_url(value, base, msg, msglen);
  case T_HEADER:
    return add_header(base, value, msg, msglen);
  case T_NAMES:
    return parse_names(value, base, msg, msglen);
  case T_STATUSES:
    return parse_statuses(value, base, msg, msglen);
  case T_REDIS_URL: {
    char *exp;
    if (expand_env(value, &exp, msg, msglen) != 0)
      return -1;
    rc = parse_redis_url(exp, base, msg, msglen);
    free(exp);
    return rc;
  }
  }
  return -1;
}

/* Deep copy of one field, for inheritance; false on allocation failure. */
static bool copy_value(const keydef_t *k, void *dst, const void *src) {
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
        free_names(names, i);
        return false;
      }
    }
    free_names(d->identity_headers, d->nidentity_headers);
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
    free_names(r->identity_headers, r->nidentity_headers);
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

static void free_table(const keydef_t *t, size_t n, void *base) {
  for (size_t i = 0; i < n; i++)
    free_value(&t[i], base);
}

/* Applies every default string of a table; they are all valid. */
static int apply_defaults(const keydef_t *t, size_t n, void *base,
                          unsigned only_flags) {
  char msg[160];
  for (size_t i = 0; i < n; i++) {
    if (t[i].def == NULL || (only_flags && !(t[i].flags & only_flags)))
      continue;
    if (set_value(&t[i], base, t[i].def, msg, sizeof msg) != 0)
      return -1;
  }
  return 0;
}

/* -------------------------------------------------------------- sections */

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

static const char *const sec_names[SEC_COUNT] = {
    "", "server", "cache", "breaker", "redis", "upstream", "route"};

typedef struct section {
  seckind_t kind;
  size_t index;    /* upstream or route */
  char label[300]; /* "route /odds", for messages */
} section_t;

config_t *config_new(void) {
  config_t *cfg = calloc(1, sizeof *cfg);
  if (cfg == NULL)
    return NULL;
  if (apply_defaults(server_keys, NKEYS(server_keys), &cfg->server, 0) ||
      apply_defaults(cache_keys, NKEYS(cache_keys), &cfg->cache, 0) ||
      apply_defaults(breaker_keys, NKEYS(breaker_keys), &cfg->breaker, 0) ||
      apply_defaults(redis_keys, NKEYS(redis_keys), &cfg->redis, 0) ||
      apply_defaults(route_keys, NKEYS(route_keys), &cfg->defaults, KF_CACHE)) {
    config_free(cfg);
    return NULL;
  }
  return cfg;
}

static void free_upstream(config_upstream_t *u) {
  free(u->name);
  free_table(upstream_keys, NKEYS(upstream_keys), u);
}

static void free_route(config_route_t *r) {
  free(r->prefix);
  free_table(route_keys, NKEYS(route_keys), r);
}

void config_free(config_t *cfg) {
  if (cfg == NULL)
    return;
  free_table(server_keys, NKEYS(server_keys), &cfg->server);
  free_table(redis_keys, NKEYS(redis_keys), &cfg->redis);
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

static config_upstream_t *find_upstream(const config_t *cfg, const char *name,
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

/* Finds or (when create) appends the upstream/route named `name`; a second
 * file section of the same name is an error (exists is set). */
static int open_named(config_t *cfg, seckind_t kind, const char *name,
                      unsigned line, bool *existed, size_t *index, char *msg,
                      size_t msglen) {
  *existed = false;
  if (kind == SEC_UPSTREAM) {
    if (!valid_upstream_name(name)) {
      fmt(msg, msglen, "invalid upstream name \"%s\" (letters, digits, _ . -)",
          name);
      return -1;
    }
    if (find_upstream(cfg, name, index) != NULL) {
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
    if (apply_defaults(upstream_keys, NKEYS(upstream_keys), u, 0) != 0)
      goto nomem;
    *index = cfg->nupstreams - 1;
    return 0;
  }
  char prefix[256];
  if (strlen(name) >= sizeof prefix) {
    fmt(msg, msglen, "route prefix too long");
    return -1;
  }
  strcpy(prefix, name);
  if (!normalize_prefix(prefix)) {
    fmt(msg, msglen,
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
  fmt(msg, msglen, "out of memory");
  return -1;
}

/* Parses "kind [name]" (the inside of [...]) and opens that section. */
static int open_section(config_t *cfg, const char *spec, unsigned line,
                        bool from_file, section_t *sec, char *msg,
                        size_t msglen) {
  char buf[300];
  if (strlen(spec) >= sizeof buf) {
    fmt(msg, msglen, "section name too long");
    return -1;
  }
  strcpy(buf, spec);
  char *kind = trim(buf), *name = kind + strcspn(kind, " \t");
  if (*name != '\0')
    *name++ = '\0';
  name = trim(name);
  memset(sec, 0, sizeof *sec);
  for (int k = SEC_SERVER; k < SEC_COUNT; k++)
    if (strcasecmp(kind, sec_names[k]) == 0)
      sec->kind = (seckind_t)k;
  bool named = sec->kind == SEC_UPSTREAM || sec->kind == SEC_ROUTE;
  if (sec->kind == SEC_NONE) {
    fmt(msg, msglen,
        "unknown section [%s] (expected [server], [cache], [breaker], "
        "[redis], [upstream NAME] or [route PREFIX])",
        spec);
    return -1;
  }
  if (named && *name == '\0') {
    fmt(msg, msglen, "[%s] needs a %s, e.g. [%s]", kind,
        sec->kind == SEC_ROUTE ? "path prefix" : "name",
        sec->kind == SEC_ROUTE ? "route /api" : "upstream api");
    return -1;
  }
  if (!named && *name != '\0') {
    fmt(msg, msglen, "[%s] takes no name (got \"%s\")", sec_names[sec->kind],
        name);
    return -1;
  }
  fmt(sec->label, sizeof sec->label, "%s%s%s", sec_names[sec->kind],
      named ? " " : "", name);
  if (!named)
    return 0;
  bool existed;
  if (open_named(cfg, sec->kind, name, line, &existed, &sec->index, msg,
                 msglen) != 0)
    return -1;
  if (existed && from_file) {
    unsigned first = sec->kind == SEC_ROUTE ? cfg->routes[sec->index].line
                                            : cfg->upstreams[sec->index].line;
    fmt(msg, msglen, "duplicate section [%s] (first on line %u)", sec->label,
        first);
    return -1;
  }
  if (sec->kind == SEC_ROUTE) /* label the normalized prefix */
    fmt(sec->label, sizeof sec->label, "route %s",
        cfg->routes[sec->index].prefix);
  return 0;
}

static const keydef_t *lookup(const keydef_t *t, size_t n, const char *name,
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
  (b[i].keys = (t), b[i].nkeys = NKEYS(t), b[i].base = (where))
  switch (sec->kind) {
  case SEC_SERVER:
    BIND(0, server_keys, &cfg->server);
    return 1;
  case SEC_CACHE:
    BIND(0, cache_keys, &cfg->cache);
    BIND(1, route_keys, &cfg->defaults);
    b[1].need = KF_CACHE;
    b[1].shift = 32;
    return 2;
  case SEC_BREAKER:
    BIND(0, breaker_keys, &cfg->breaker);
    return 1;
  case SEC_REDIS:
    BIND(0, redis_keys, &cfg->redis);
    return 1;
  case SEC_UPSTREAM: {
    config_upstream_t *u = &cfg->upstreams[sec->index];
    BIND(0, upstream_keys, u);
    b[0].mask = &u->explicit_keys;
    BIND(1, breaker_keys, &u->breaker);
    b[1].mask = &u->breaker.explicit_keys;
    b[1].prefix = "breaker_";
    return 2;
  }
  case SEC_ROUTE:
    BIND(0, route_keys, &cfg->routes[sec->index]);
    b[0].mask = &cfg->routes[sec->index].explicit_keys;
    return 1;
  default:
    return 0;
  }
#undef BIND
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
      fmt(full, sizeof full, "%s%s", b[i].prefix, b[i].keys[j].name);
      unsigned d = edit_distance(key, full);
      if (d < best) {
        best = d;
        fmt(name, sizeof name, "%s", full);
      }
    }
  }
  if (name[0] != '\0')
    fmt(msg, msglen, "unknown key (did you mean %s?)", name);
  else
    fmt(msg, msglen, "unknown key");
}

/* Sets key=value in the open section and marks it explicit. seen (one mask
 * per singleton section) is non-NULL while reading a file: a key set twice
 * in one section is then refused. line is 0 for flags. */
static int apply_key(config_t *cfg, const section_t *sec, const char *rawkey,
                     const char *value, uint64_t *seen, unsigned line,
                     char *msg, size_t msglen) {
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
    fmt(msg, msglen, "key outside any section");
    return -1;
  }
  for (size_t i = 0; i < nb && k == NULL; i++) {
    size_t plen = strlen(b[i].prefix);
    if (strncmp(key, b[i].prefix, plen) != 0)
      continue;
    k = lookup(b[i].keys, b[i].nkeys, key + plen, b[i].need, &idx);
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
    fmt(msg, msglen, "set twice in this section");
    return -1;
  }
  if (set_value(k, at->base, value, msg, msglen) != 0)
    return -1;
  *mask |= bit;
  if (sec->kind == SEC_ROUTE && k->off == RTE(upstream_name) &&
      k->type == T_STRING)
    cfg->routes[sec->index].upstream_line = line;
  return 0;
}

/* "FILE:LINE: " for items from the file, "" for flags and implicit ones. */
static const char *where(const config_t *cfg, unsigned line, char *buf,
                         size_t len) {
  if (cfg->file != NULL && line > 0)
    fmt(buf, len, "%s:%u: ", cfg->file, line);
  else if (cfg->file != NULL)
    fmt(buf, len, "%s: ", cfg->file);
  else
    fmt(buf, len, "%s", "");
  return buf;
}

int config_set(config_t *cfg, const char *section, const char *key,
               const char *value, const char *origin, char *err,
               size_t errlen) {
  char msg[512];
  section_t sec;
  if (open_section(cfg, section, 0, false, &sec, msg, sizeof msg) != 0 ||
      apply_key(cfg, &sec, key, value, NULL, 0, msg, sizeof msg) != 0) {
    if (origin != NULL)
      fmt(err, errlen, "%s: %s", origin, msg);
    else
      fmt(err, errlen, "[%s] %s: %s", section, key, msg);
    return -1;
  }
  return 0;
}

/* ----------------------------------------------------------- INI reading */

typedef struct ini_ctx {
  config_t *cfg;
  FILE *fp;
  const char *path;
  unsigned line;
  bool in_section;
  section_t sec;
  unsigned first_line[SEC_COUNT]; /* of each singleton section */
  uint64_t seen[SEC_COUNT];
  char *buf;
  size_t cap;
  char *err;
  size_t errlen;
  bool failed;
  int read_errno; /* why getline stopped, 0 at end of file */
} ini_ctx_t;

static void ini_fail(ini_ctx_t *ctx, const char *f, ...)
    __attribute__((format(printf, 2, 3)));
static void ini_fail(ini_ctx_t *ctx, const char *f, ...) {
  if (ctx->failed)
    return;
  ctx->failed = true;
  int n = snprintf(ctx->err, ctx->errlen, "%s:%u: ", ctx->path, ctx->line);
  if (n < 0 || (size_t)n >= ctx->errlen)
    return;
  va_list ap;
  va_start(ap, f);
  vsnprintf(ctx->err + n, ctx->errlen - (size_t)n, f, ap);
  va_end(ap);
}

/* Called by inih for every line: counts lines, opens sections, refuses
 * lines inih would truncate. Returning NULL ends the parse (EOF or error). */
static char *ini_read_line(char *str, int num, void *stream) {
  ini_ctx_t *ctx = stream;
  if (ctx->failed)
    return NULL;
  errno = 0;
  ssize_t n = getline(&ctx->buf, &ctx->cap, ctx->fp);
  if (n < 0) {
    ctx->read_errno = errno;
    return NULL;
  }
  ctx->line++;
  if (n >= num) {
    ini_fail(ctx,
             "line too long (at most %d bytes; put long values such as "
             "tokens in the environment and use ${VAR})",
             num - 3);
    return NULL;
  }
  char *s = ctx->buf;
  if (ctx->line == 1 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
    s += 3; /* a UTF-8 BOM, which inih skips too */
  if (s[0] == '[') {
    char *end = strchr(s, ']');
    if (end == NULL) {
      ini_fail(ctx, "section header without ']'");
      return NULL;
    }
    const char *rest = end + 1;
    while (*rest == ' ' || *rest == '\t' || *rest == '\r' || *rest == '\n')
      rest++;
    if (*rest != '\0' && *rest != ';' && *rest != '#') {
      ini_fail(ctx, "unexpected text after ']'");
      return NULL;
    }
    *end = '\0';
    char msg[512];
    if (open_section(ctx->cfg, s + 1, ctx->line, true, &ctx->sec, msg,
                     sizeof msg) != 0) {
      ini_fail(ctx, "%s", msg);
      return NULL;
    }
    *end = ']';
    seckind_t kind = ctx->sec.kind;
    if (kind != SEC_UPSTREAM && kind != SEC_ROUTE) {
      if (ctx->first_line[kind] != 0) {
        ini_fail(ctx, "duplicate section [%s] (first on line %u)",
                 ctx->sec.label, ctx->first_line[kind]);
        return NULL;
      }
      ctx->first_line[kind] = ctx->line;
    }
    ctx->in_section = true;
  } else {
    const char *t = s;
    while (*t == ' ' || *t == '\t')
      t++;
    if (*t == '[') { /* inih would read this as a continuation line */
      ini_fail(ctx, "section headers must start at the beginning of a line");
      return NULL;
    }
  }
  memcpy(str, ctx->buf, (size_t)n + 1);
  return str;
}

static int ini_on_key(void *user, const char *section, const char *name,
                      const char *value) {
  ini_ctx_t *ctx = user;
  (void)section; /* ours is ctx->sec: inih truncates long names */
  if (ctx->failed)
    return 1;
  if (!ctx->in_section) {
    ini_fail(ctx,
             "%s: key outside any section (start with [server], "
             "[upstream NAME], [route PREFIX], ...)",
             name);
    return 1;
  }
  char msg[512];
  if (apply_key(ctx->cfg, &ctx->sec, name, value, ctx->seen, ctx->line, msg,
                sizeof msg) != 0)
    ini_fail(ctx, "[%s] %s: %s", ctx->sec.label, name, msg);
  return 1;
}

int config_load_file(config_t *cfg, const char *path, char *err,
                     size_t errlen) {
  ini_ctx_t ctx = {.cfg = cfg, .path = path, .err = err, .errlen = errlen};
  if (!set_str(&cfg->file, path)) {
    fmt(err, errlen, "%s: out of memory", path);
    return -1;
  }
  if ((ctx.fp = fopen(path, "r")) == NULL) {
    fmt(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  int rc = ini_parse_stream(ini_read_line, &ctx, ini_on_key, &ctx);
  bool read_error = ferror(ctx.fp) != 0;
  int read_errno = ctx.read_errno;
  fclose(ctx.fp);
  free(ctx.buf);
  if (ctx.failed)
    return -1;
  if (read_error) {
    fmt(err, errlen, "%s: cannot read: %s", path,
        strerror(read_errno ? read_errno : EIO));
    return -1;
  }
  if (rc > 0) {
    fmt(err, errlen, "%s:%d: syntax error (expected [SECTION] or KEY = VALUE)",
        path, rc);
    return -1;
  }
  if (rc < 0) {
    fmt(err, errlen, "%s: %s", path,
        rc == -2 ? "out of memory" : "cannot read");
    return -1;
  }
  return 0;
}

/* -------------------------------------------------------------- finalize */

static int cmp_routes(const void *a, const void *b) {
  const config_route_t *x = a, *y = b;
  if (x->prefix_len != y->prefix_len)
    return x->prefix_len > y->prefix_len ? -1 : 1;
  return strcmp(x->prefix, y->prefix);
}

static bool key_set(uint64_t mask, const keydef_t *table, const keydef_t *k) {
  return (mask >> (size_t)(k - table)) & 1;
}

static const keydef_t *route_key(const char *name) {
  size_t idx;
  return lookup(route_keys, NKEYS(route_keys), name, 0, &idx);
}

static int check_breaker(const config_breaker_t *b, char *msg, size_t msglen) {
  if (b->window > 0 && b->min_volume > b->window) {
    fmt(msg, msglen, "min_volume (%u) is larger than window (%u)",
        b->min_volume, b->window);
    return -1;
  }
  if (b->consecutive_failures == 0 && b->window == 0) {
    fmt(msg, msglen,
        "consecutive_failures and window are both 0: the "
        "breaker could never open");
    return -1;
  }
  return 0;
}

/* The upstream a route without `upstream =` uses: "default" (--upstream)
 * when defined, else the only one. */
static const char *implicit_upstream(const config_t *cfg) {
  if (find_upstream(cfg, "default", NULL) != NULL)
    return "default";
  return cfg->nupstreams == 1 ? cfg->upstreams[0].name : NULL;
}

static int finalize_route(config_t *cfg, config_route_t *r, char *err,
                          size_t errlen) {
  char loc[300], names[256] = "";
  if (r->upstream_name == NULL) {
    const char *name = implicit_upstream(cfg);
    if (name == NULL) {
      fmt(err, errlen,
          "%s[route %s]: upstream is required (%zu upstreams are defined)",
          where(cfg, r->line, loc, sizeof loc), r->prefix, cfg->nupstreams);
      return -1;
    }
    if (!set_str(&r->upstream_name, name)) {
      fmt(err, errlen, "out of memory");
      return -1;
    }
  }
  if (find_upstream(cfg, r->upstream_name, &r->upstream) == NULL) {
    for (size_t i = 0; i < cfg->nupstreams; i++)
      fmt(names + strlen(names), sizeof names - strlen(names), "%s%s",
          i ? ", " : "", cfg->upstreams[i].name);
    fmt(err, errlen,
        "%s[route %s] upstream: unknown upstream \"%s\" "
        "(defined: %s)",
        where(cfg, r->upstream_line ? r->upstream_line : r->line, loc,
              sizeof loc),
        r->prefix, r->upstream_name, names);
    return -1;
  }
  const keydef_t *ut = route_key("upstream_timeout");
  for (size_t i = 0; i < NKEYS(route_keys); i++) {
    const keydef_t *k = &route_keys[i];
    /* upstream_timeout under [cache] is every upstream's default, so a
     * route that does not set one follows its upstream instead. */
    if (!(k->flags & KF_CACHE) || k == ut ||
        key_set(r->explicit_keys, route_keys, k))
      continue;
    if (!copy_value(k, r, &cfg->defaults)) {
      fmt(err, errlen, "out of memory");
      return -1;
    }
  }
  if (r->upstream_timeout_ms == 0)
    r->upstream_timeout_ms = cfg->upstreams[r->upstream].timeout_ms;

  static const char *const batch_keys[] = {"batch_max", "batch_window",
                                           "batch_id_path", "batch_item_wrap",
                                           "batch_join"};
  for (size_t i = 0; i < NKEYS(batch_keys) && r->batch_param == NULL; i++) {
    if (key_set(r->explicit_keys, route_keys, route_key(batch_keys[i]))) {
      fmt(err, errlen, "%s[route %s] %s: needs batch_param",
          where(cfg, r->line, loc, sizeof loc), r->prefix, batch_keys[i]);
      return -1;
    }
  }
  if (r->batch_param != NULL) {
    if (!key_set(r->explicit_keys, route_keys, route_key("batch_max")))
      r->batch_max = 100;
    if (!key_set(r->explicit_keys, route_keys, route_key("batch_window")))
      r->batch_window_ms = 2;
    char why[200];
    if (batch_split_check(r->batch_id_path, r->batch_item_wrap, r->batch_join,
                          why, sizeof why) != 0) {
      fmt(err, errlen, "%s[route %s] batch: %s",
          where(cfg, r->line, loc, sizeof loc), r->prefix, why);
      return -1;
    }
  }
  return 0;
}

int config_finalize(config_t *cfg, char *err, size_t errlen) {
  char loc[300], msg[256];
  if (cfg->finalized) {
    fmt(err, errlen, "config already finalized");
    return -1;
  }
  if (cfg->nupstreams == 0) {
    fmt(err, errlen,
        "%sno upstream configured: pass --upstream URL or add an "
        "[upstream NAME] section with url = ...",
        cfg->file ? where(cfg, 0, loc, sizeof loc) : "");
    return -1;
  }
  if (check_breaker(&cfg->breaker, msg, sizeof msg) != 0) {
    fmt(err, errlen, "%s[breaker]: %s", where(cfg, 0, loc, sizeof loc), msg);
    return -1;
  }
  size_t idx;
  const keydef_t *timeout =
      lookup(upstream_keys, NKEYS(upstream_keys), "timeout", 0, &idx);
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    config_upstream_t *u = &cfg->upstreams[i];
    if (u->url == NULL) {
      fmt(err, errlen, "%s[upstream %s]: url is required",
          where(cfg, u->line, loc, sizeof loc), u->name);
      return -1;
    }
    if (!key_set(u->explicit_keys, upstream_keys, timeout))
      u->timeout_ms = cfg->defaults.upstream_timeout_ms;
    for (size_t j = 0; j < NKEYS(breaker_keys); j++)
      if (!key_set(u->breaker.explicit_keys, breaker_keys, &breaker_keys[j]))
        copy_value(&breaker_keys[j], &u->breaker, &cfg->breaker);
    if (check_breaker(&u->breaker, msg, sizeof msg) != 0) {
      fmt(err, errlen, "%s[upstream %s] breaker: %s",
          where(cfg, u->line, loc, sizeof loc), u->name, msg);
      return -1;
    }
  }
  if (cfg->nroutes == 0) {
    const char *name = implicit_upstream(cfg);
    bool existed;
    if (name == NULL) {
      fmt(err, errlen,
          "%sno [route PREFIX] sections: with %zu upstreams, routes must say "
          "which upstream serves which paths",
          where(cfg, 0, loc, sizeof loc), cfg->nupstreams);
      return -1;
    }
    if (open_named(cfg, SEC_ROUTE, "/", 0, &existed, &idx, msg, sizeof msg) ||
        !set_str(&cfg->routes[idx].upstream_name, name)) {
      fmt(err, errlen, "out of memory");
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
    fmt(err, errlen, "%s[server] admin_listen: same address as listen (%s:%u)",
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

static void print_value(FILE *out, const keydef_t *k, const void *base,
                        const char *prefix) {
  char buf[64];
  switch (k->type) {
  case T_DURATION:
    fmt_duration(buf, sizeof buf, *CFIELD(base, k, uint64_t));
    fprintf(out, "%s%s = %s\n", prefix, k->name, buf);
    break;
  case T_SIZE:
    fmt_size(buf, sizeof buf, *CFIELD(base, k, uint64_t));
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

static void print_table(FILE *out, const keydef_t *t, size_t n,
                        const void *base, unsigned need_flags) {
  for (size_t i = 0; i < n; i++)
    if (!need_flags || (t[i].flags & need_flags))
      print_value(out, &t[i], base, "");
}

void config_print(const config_t *cfg, FILE *out) {
  fprintf(out, "; coalesced effective configuration (secrets redacted)\n");
  fprintf(out, "[server]\n");
  print_table(out, server_keys, NKEYS(server_keys), &cfg->server, 0);
  fprintf(out, "\n[cache]\n");
  print_table(out, cache_keys, NKEYS(cache_keys), &cfg->cache, 0);
  print_table(out, route_keys, NKEYS(route_keys), &cfg->defaults, KF_CACHE);
  fprintf(out, "\n[breaker]\n");
  print_table(out, breaker_keys, NKEYS(breaker_keys), &cfg->breaker, 0);
  if (cfg->redis.url != NULL) {
    fprintf(out, "\n[redis]\n");
    print_table(out, redis_keys, NKEYS(redis_keys), &cfg->redis, 0);
  }
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    const config_upstream_t *u = &cfg->upstreams[i];
    fprintf(out, "\n[upstream %s]\n", u->name);
    print_table(out, upstream_keys, NKEYS(upstream_keys), u, 0);
    for (size_t j = 0; j < NKEYS(breaker_keys); j++) /* only overrides */
      if (key_set(u->breaker.explicit_keys, breaker_keys, &breaker_keys[j]))
        print_value(out, &breaker_keys[j], &u->breaker, "breaker_");
  }
  for (size_t i = 0; i < cfg->nroutes; i++) {
    const config_route_t *r = &cfg->routes[i];
    fprintf(out, "\n[route %s]\n", r->prefix);
    if (r->upstream_name != NULL)
      fprintf(out, "upstream = %s\n", r->upstream_name);
    print_table(out, route_keys, NKEYS(route_keys), r, KF_CACHE);
    if (r->batch_param != NULL) {
      for (size_t j = 0; j < NKEYS(route_keys); j++)
        if (strncmp(route_keys[j].name, "batch_", 6) == 0)
          print_value(out, &route_keys[j], r, "");
    }
  }
}

/* --------------------------------------------------------- command line */

typedef struct flag {
  const char *name;
  char shortname;
  bool takes_value;
  const char *section; /* NULL: handled by config_parse_args itself */
  const char *key;
} flag_t;

static const flag_t flags[] = {
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
  for (size_t i = 0; i < NKEYS(flags); i++) {
    if (shortname != 0 ? flags[i].shortname == shortname
                       : strlen(flags[i].name) == len &&
                             strncmp(flags[i].name, name, len) == 0)
      return &flags[i];
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
      fmt(err, errlen, "unexpected argument \"%s\" (see --help)", arg);
      return -1;
    }
    if (f == NULL) {
      fmt(err, errlen, "unknown option \"%s\" (see --help)", arg);
      return -1;
    }
    if (f->takes_value && value == NULL) {
      if (i + 1 >= argc) {
        fmt(err, errlen, "--%s needs a value (see --help)", f->name);
        return -1;
      }
      value = argv[++i];
    } else if (!f->takes_value && value != NULL) {
      fmt(err, errlen, "--%s takes no value", f->name);
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
      const char *name = implicit_upstream(cfg);
      if (name == NULL) {
        fmt(err, errlen,
            cfg->nupstreams == 0
                ? "--header: no upstream to send it to (add --upstream URL)"
                : "--header: several upstreams and none named \"default\"; "
                  "put header = ... in an [upstream NAME] section");
        return -1;
      }
      u = find_upstream(cfg, name, NULL);
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
    if (add_header(u, uses[i].value, msg, sizeof msg) != 0) {
      fmt(err, errlen, "--header: %s", msg);
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
    fmt(err, errlen, "out of memory");
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
        fmt(err, errlen, "--config given twice");
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
    fmt(err, errlen, "out of memory");
    goto fail;
  }
  if (file != NULL && config_load_file(cfg, file, err, errlen) != 0)
    goto fail;
  for (size_t i = 0; i < nuses; i++) { /* flags override the file */
    const flag_t *f = uses[i].flag;
    char origin[32];
    if (f->section == NULL)
      continue;
    fmt(origin, sizeof origin, "--%s", f->name);
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
