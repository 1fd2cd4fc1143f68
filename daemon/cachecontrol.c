/* cachecontrol.c — Cache-Control and HTTP-date parsing; see cachecontrol.h. */
#include "cachecontrol.h"

#include <string.h>
#include <strings.h>

void cc_init(ccontrol_t *cc) {
  memset(cc, 0, sizeof *cc);
  cc->max_age = cc->s_maxage = CC_ABSENT;
  cc->stale_while_revalidate = cc->stale_if_error = CC_ABSENT;
  cc->max_stale = cc->min_fresh = CC_ABSENT;
}

static bool is_ws(char c) { return c == ' ' || c == '\t'; }

static bool tchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* delta-seconds: 1*DIGIT; values past 2^31 saturate (RFC 9111 §1.2.2). */
static int64_t delta_seconds(const char *p, size_t n) {
  if (n == 0)
    return -2;
  int64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9')
      return -2;
    if (v < 2147483648LL)
      v = v * 10 + (p[i] - '0');
  }
  return v > 2147483648LL ? 2147483648LL : v;
}

/* Records a delta-seconds directive; invalid or conflicting -> 0 (stale). */
static void set_delta(int64_t *slot, const char *arg, size_t n, bool has) {
  int64_t v = has ? delta_seconds(arg, n) : -2;
  if (v < 0)
    v = 0;
  if (*slot != CC_ABSENT && *slot != v)
    v = 0;
  *slot = v;
}

static bool name_is(const char *p, size_t n, const char *want) {
  return strlen(want) == n && strncasecmp(p, want, n) == 0;
}

void cc_parse(ccontrol_t *cc, const char *v, size_t len) {
  size_t i = 0;
  while (i < len) {
    while (i < len && (is_ws(v[i]) || v[i] == ','))
      i++;
    size_t ns = i;
    while (i < len && tchar(v[i]))
      i++;
    size_t nlen = i - ns;
    const char *name = v + ns;
    while (i < len && is_ws(v[i]))
      i++;
    const char *arg = NULL;
    size_t alen = 0;
    bool has = false;
    if (i < len && v[i] == '=') {
      i++;
      while (i < len && is_ws(v[i]))
        i++;
      has = true;
      if (i < len && v[i] == '"') {
        /* quoted-string: no escapes needed for numbers; skip \x pairs */
        i++;
        arg = v + i;
        while (i < len && v[i] != '"') {
          if (v[i] == '\\' && i + 1 < len)
            i++;
          i++;
        }
        alen = (size_t)(v + i - arg);
        if (i < len)
          i++;
      } else {
        arg = v + i;
        while (i < len && tchar(v[i]))
          i++;
        alen = (size_t)(v + i - arg);
      }
    }
    /* skip anything malformed up to the next comma */
    while (i < len && v[i] != ',')
      i++;
    if (nlen == 0)
      continue;
    if (name_is(name, nlen, "no-store"))
      cc->no_store = true;
    else if (name_is(name, nlen, "no-cache"))
      cc->no_cache = true;
    else if (name_is(name, nlen, "private"))
      cc->private_ = true;
    else if (name_is(name, nlen, "public"))
      cc->public_ = true;
    else if (name_is(name, nlen, "must-revalidate"))
      cc->must_revalidate = true;
    else if (name_is(name, nlen, "proxy-revalidate"))
      cc->proxy_revalidate = true;
    else if (name_is(name, nlen, "only-if-cached"))
      cc->only_if_cached = true;
    else if (name_is(name, nlen, "immutable"))
      cc->immutable = true;
    else if (name_is(name, nlen, "max-age"))
      set_delta(&cc->max_age, arg, alen, has);
    else if (name_is(name, nlen, "s-maxage"))
      set_delta(&cc->s_maxage, arg, alen, has);
    else if (name_is(name, nlen, "stale-while-revalidate"))
      set_delta(&cc->stale_while_revalidate, arg, alen, has);
    else if (name_is(name, nlen, "stale-if-error"))
      set_delta(&cc->stale_if_error, arg, alen, has);
    else if (name_is(name, nlen, "min-fresh"))
      set_delta(&cc->min_fresh, arg, alen, has);
    else if (name_is(name, nlen, "max-stale")) {
      if (!has)
        cc->max_stale = INT64_MAX;
      else
        set_delta(&cc->max_stale, arg, alen, true);
    }
  }
}

/* ---- HTTP-date ----------------------------------------------------------- */

static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
                                     "May", "Jun", "Jul", "Aug",
                                     "Sep", "Oct", "Nov", "Dec"};
static const char *const wdays[] = {"Sun", "Mon", "Tue", "Wed",
                                    "Thu", "Fri", "Sat"};

typedef struct scan {
  const char *p;
  size_t n, i;
} scan_t;

static bool num(scan_t *s, int digits_min, int digits_max, int *out) {
  int v = 0, d = 0;
  while (s->i < s->n && d < digits_max && s->p[s->i] >= '0' &&
         s->p[s->i] <= '9') {
    v = v * 10 + (s->p[s->i++] - '0');
    d++;
  }
  *out = v;
  return d >= digits_min;
}

static bool lit(scan_t *s, char c) {
  if (s->i < s->n && s->p[s->i] == c) {
    s->i++;
    return true;
  }
  return false;
}

static bool spaces(scan_t *s) {
  size_t start = s->i;
  while (s->i < s->n && s->p[s->i] == ' ')
    s->i++;
  return s->i > start;
}

static bool month(scan_t *s, int *out) {
  if (s->n - s->i < 3)
    return false;
  for (int m = 0; m < 12; m++) {
    if (strncmp(s->p + s->i, months[m], 3) == 0) {
      s->i += 3;
      *out = m;
      return true;
    }
  }
  return false;
}

static bool hms(scan_t *s, int *h, int *m, int *sec) {
  return num(s, 2, 2, h) && lit(s, ':') && num(s, 2, 2, m) && lit(s, ':') &&
         num(s, 2, 2, sec) && *h < 24 && *m < 60 && *sec < 61;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian), no libc tz state. */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t mp = (m + 9) % 12;
  int64_t doy = (153 * mp + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static bool finish(int y, int mon, int d, int h, int mi, int sec, time_t *out) {
  static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (d < 1 || d > mdays[mon] || y < 1900 || y > 9999)
    return false;
  int64_t days = days_from_civil(y, mon + 1, d);
  *out = (time_t)(days * 86400 + h * 3600 + mi * 60 + sec);
  return true;
}

bool http_date_parse(const char *v, size_t len, time_t *out) {
  scan_t s = {v, len, 0};
  while (s.i < s.n && s.p[s.i] == ' ')
    s.i++;
  size_t name_start = s.i;
  while (s.i < s.n && ((s.p[s.i] >= 'A' && s.p[s.i] <= 'Z') ||
                       (s.p[s.i] >= 'a' && s.p[s.i] <= 'z')))
    s.i++;
  size_t wlen = s.i - name_start;
  if (wlen < 3)
    return false;
  bool known = false;
  for (int w = 0; w < 7; w++)
    known |= strncmp(v + name_start, wdays[w], 3) == 0;
  if (!known)
    return false;
  int y, mon, d, h, mi, sec;
  if (lit(&s, ',')) {
    if (!spaces(&s) || !num(&s, 1, 2, &d))
      return false;
    if (lit(&s, '-')) { /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
      if (!month(&s, &mon) || !lit(&s, '-') || !num(&s, 2, 4, &y))
        return false;
      if (y < 100)
        y += y < 70 ? 2000 : 1900;
    } else { /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
      if (!spaces(&s) || !month(&s, &mon) || !spaces(&s) ||
          !num(&s, 4, 4, &y))
        return false;
    }
    if (!spaces(&s) || !hms(&s, &h, &mi, &sec) || !spaces(&s))
      return false;
    if (s.n - s.i < 3 || strncmp(s.p + s.i, "GMT", 3) != 0)
      return false;
    s.i += 3;
  } else { /* asctime: Sun Nov  6 08:49:37 1994 */
    if (!spaces(&s) || !month(&s, &mon) || !spaces(&s) || !num(&s, 1, 2, &d) ||
        !spaces(&s) || !hms(&s, &h, &mi, &sec) || !spaces(&s) ||
        !num(&s, 4, 4, &y))
      return false;
  }
  while (s.i < s.n && s.p[s.i] == ' ')
    s.i++;
  if (s.i != s.n)
    return false;
  return finish(y, mon, d, h, mi, sec > 59 ? 59 : sec, out);
}

void http_date_format(time_t t, char out[30]) {
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 30, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}
