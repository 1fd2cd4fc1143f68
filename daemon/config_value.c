/*
 * config_value.c — the text parsers and formatters behind config keys:
 * durations, sizes, listen addresses, upstream and Redis URLs, injected
 * headers with ${VAR} expansion, header-name and status lists, booleans.
 *
 * They know nothing about sections, key tables or where a value came from:
 * each takes one value and either fills its result or writes one bare
 * problem into msg ("invalid URL ..."), which the caller prefixes with the
 * file, line and key (see config_int.h). On error the destination is left
 * as it was, so a failed key never half-applies. Only cfg_expand_env reads
 * global state (the environment).
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* --------------------------------------------------------------- helpers */

void cfg_fmt(char *buf, size_t len, const char *f, ...) {
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

bool cfg_is_token(const char *s) {
  if (*s == '\0')
    return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s))
      return false;
  return true;
}

char *cfg_trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1]))
    *--e = '\0';
  return s;
}

/* Replaces *slot with a copy of s (or NULL); false on allocation failure. */
bool cfg_set_str(char **slot, const char *s) {
  char *copy = NULL;
  if (s != NULL && (copy = strdup(s)) == NULL)
    return false;
  free(*slot);
  *slot = copy;
  return true;
}

void cfg_fmt_duration(char *buf, size_t len, uint64_t ms) {
  if (ms == 0)
    cfg_fmt(buf, len, "0");
  else if (ms % MS_H == 0)
    cfg_fmt(buf, len, "%lluh", (unsigned long long)(ms / MS_H));
  else if (ms % MS_M == 0)
    cfg_fmt(buf, len, "%llum", (unsigned long long)(ms / MS_M));
  else if (ms % MS_S == 0)
    cfg_fmt(buf, len, "%llus", (unsigned long long)(ms / MS_S));
  else
    cfg_fmt(buf, len, "%llums", (unsigned long long)ms);
}

void cfg_fmt_size(char *buf, size_t len, uint64_t n) {
  if (n != 0 && n % GIB == 0)
    cfg_fmt(buf, len, "%lluGiB", (unsigned long long)(n / GIB));
  else if (n != 0 && n % MIB == 0)
    cfg_fmt(buf, len, "%lluMiB", (unsigned long long)(n / MIB));
  else if (n != 0 && n % KIB == 0)
    cfg_fmt(buf, len, "%lluKiB", (unsigned long long)(n / KIB));
  else
    cfg_fmt(buf, len, "%llu", (unsigned long long)n);
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

/* Headers the proxy owns: injecting them would break framing or routing. */
static const char *const reserved_headers[] = {
    "host",       "content-length", "transfer-encoding",
    "connection", "keep-alive",     "upgrade",
    "te",         "trailer",        "proxy-connection"};

/* Expands ${VAR} from the environment; a `$` not followed by `{` is kept. */
int cfg_expand_env(const char *in, char **out, char *msg, size_t msglen) {
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
        cfg_fmt(msg, msglen, "unterminated ${ in \"%s\"", in);
        free(buf);
        return -1;
      }
      char name[128];
      size_t nlen = (size_t)(end - (p + 2));
      if (nlen == 0 || nlen >= sizeof name) {
        cfg_fmt(msg, msglen, "bad variable name in \"%s\"", in);
        free(buf);
        return -1;
      }
      memcpy(name, p + 2, nlen);
      name[nlen] = '\0';
      piece = getenv(name);
      if (piece == NULL) {
        cfg_fmt(msg, msglen, "environment variable %s is not set", name);
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
  cfg_fmt(msg, msglen, "out of memory");
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
int cfg_parse_addr(const char *s, config_addr_t *a, char *msg, size_t msglen) {
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
  if (!cfg_set_str(&a->host, host)) {
    cfg_fmt(msg, msglen, "out of memory");
    return -1;
  }
  a->port = port;
  return 0;
bad:
  cfg_fmt(msg, msglen,
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
int cfg_parse_upstream_url(const char *s, config_upstream_t *u, char *msg,
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
    cfg_fmt(msg, msglen,
            "invalid URL \"%s\" (must start with http:// or https://)", s);
    return -1;
  }
  size_t alen = strcspn(p, "/?#");
  const char *path = p + alen;
  char auth[300], host[260];
  if (alen == 0 || alen >= sizeof auth) {
    cfg_fmt(msg, msglen, "invalid URL \"%s\" (no host)", s);
    return -1;
  }
  memcpy(auth, p, alen);
  auth[alen] = '\0';
  if (strchr(auth, '@') != NULL) {
    cfg_fmt(msg, msglen,
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
      cfg_fmt(msg, msglen, "invalid URL \"%s\" (bad port \"%s\")", s, portstr);
      return -1;
    }
    explicit_port = port != (tls ? 443 : 80);
  }
  for (char *h = host; *h; h++)
    *h = (char)tolower((unsigned char)*h);
  if (strpbrk(path, "?#") != NULL) {
    cfg_fmt(msg, msglen,
            "invalid URL \"%s\" (a base URL takes no query or fragment)", s);
    return -1;
  }
  for (const char *c = path; *c; c++) {
    if ((unsigned char)*c <= ' ' || *c == 0x7f) {
      cfg_fmt(msg, msglen, "invalid URL \"%s\" (spaces or control characters)",
              s);
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
    cfg_fmt(msg, msglen, "out of memory");
    return -1;
  }
  char portpart[8] = "";
  if (explicit_port)
    cfg_fmt(portpart, sizeof portpart, ":%u", (unsigned)port);
  cfg_fmt(url, ulen, "%s://%s%s%s%s%s", tls ? "https" : "http", v6 ? "[" : "",
          host, v6 ? "]" : "", portpart, base);
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
  cfg_fmt(msg, msglen, "invalid URL \"%s\" (bad host)", s);
  return -1;
}

/* redis://[[user]:password@]host[:port][/db] */
int cfg_parse_redis_url(const char *s, config_redis_t *r, char *msg,
                        size_t msglen) {
  if (strncmp(s, "redis://", 8) != 0) {
    cfg_fmt(msg, msglen,
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
  cfg_fmt(msg, msglen,
          "invalid Redis URL (use redis://[:PASSWORD@]HOST[:PORT][/DB])");
  return -1;
}

/* "Name: value" with ${VAR} expansion; the value must stay one header line
 * after expansion (no CR/LF smuggled in through the environment). */
int cfg_add_header(config_upstream_t *u, const char *spec, char *msg,
                   size_t msglen) {
  const char *colon = strchr(spec, ':');
  char name[128];
  size_t nlen = colon ? (size_t)(colon - spec) : 0;
  while (nlen > 0 && isspace((unsigned char)spec[nlen - 1]))
    nlen--;
  if (colon == NULL || nlen == 0 || nlen >= sizeof name) {
    cfg_fmt(msg, msglen, "expected \"Name: value\"");
    return -1;
  }
  memcpy(name, spec, nlen);
  name[nlen] = '\0';
  if (!cfg_is_token(name)) {
    cfg_fmt(msg, msglen, "invalid header name \"%s\"", name);
    return -1;
  }
  for (size_t i = 0; i < NKEYS(reserved_headers); i++) {
    if (strcasecmp(name, reserved_headers[i]) == 0) {
      cfg_fmt(msg, msglen,
              "header %s is set by the proxy and cannot be injected", name);
      return -1;
    }
  }
  const char *v = colon + 1;
  while (*v == ' ' || *v == '\t')
    v++;
  char *value;
  if (cfg_expand_env(v, &value, msg, msglen) != 0)
    return -1;
  size_t vlen = strlen(value);
  while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
    value[--vlen] = '\0';
  for (const char *c = value; *c; c++) {
    if (((unsigned char)*c < ' ' && *c != '\t') || *c == 0x7f) {
      cfg_fmt(msg, msglen, "header %s: value has control characters", name);
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
    cfg_fmt(msg, msglen, "out of memory");
    return -1;
  }
  u->headers = nh;
  u->headers[u->nheaders].name = ncopy;
  u->headers[u->nheaders].value = value;
  u->nheaders++;
  return 0;
}

void cfg_free_names(char **names, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

/* Comma-separated header names, lowercased; "none" or "" = no names. */
int cfg_parse_names(const char *s, config_route_t *r, char *msg,
                    size_t msglen) {
  char *copy = strdup(s), *save = NULL;
  char **names = NULL;
  size_t n = 0;
  if (copy == NULL)
    goto nomem;
  if (strcasecmp(cfg_trim(copy), "none") != 0) {
    for (char *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
      tok = cfg_trim(tok);
      if (!cfg_is_token(tok)) {
        cfg_fmt(msg, msglen, "invalid header name \"%s\"", tok);
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
  cfg_free_names(r->identity_headers, r->nidentity_headers);
  r->identity_headers = names;
  r->nidentity_headers = n;
  return 0;
nomem:
  cfg_fmt(msg, msglen, "out of memory");
fail:
  free(copy);
  cfg_free_names(names, n);
  return -1;
}

/* Comma- or space-separated statuses 100..599; "none" = store nothing. */
int cfg_parse_statuses(const char *s, config_route_t *r, char *msg,
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
        cfg_fmt(msg, msglen, "out of memory");
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
  cfg_fmt(
      msg, msglen,
      "invalid status list \"%s\" (e.g. 200,203,204,300,301,404,410 or none)",
      s);
  return -1;
}

int cfg_parse_bool(const char *s, bool *out) {
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
