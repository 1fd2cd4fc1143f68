/*
 * util.c — the small helpers testupstream is built from: a growable byte
 * buffer with JSON string escaping, a URL query parser, HTTP dates.
 *
 * Invariants: a non-empty sbuf is always NUL-terminated (len excludes the
 * NUL), so its data can be used as a C string. Allocation failure aborts;
 * a fake upstream that limps on after OOM would only confuse a test.
 */
#include "upstream.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fputs("testupstream: out of memory\n", stderr);
    abort();
  }
  return p;
}

void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fputs("testupstream: out of memory\n", stderr);
    abort();
  }
  return q;
}

char *xstrndup(const char *s, size_t n) {
  char *d = xmalloc(n + 1);
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

static void sb_reserve(struct sbuf *sb, size_t extra) {
  size_t need = sb->len + extra + 1; /* + NUL */
  if (need <= sb->cap)
    return;
  size_t cap = sb->cap ? sb->cap : 256;
  while (cap < need)
    cap *= 2;
  sb->data = xrealloc(sb->data, cap);
  sb->cap = cap;
}

void sb_putn(struct sbuf *sb, const char *s, size_t n) {
  sb_reserve(sb, n);
  memcpy(sb->data + sb->len, s, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

void sb_puts(struct sbuf *sb, const char *s) {
  sb_putn(sb, s, strlen(s));
}

void sb_putc(struct sbuf *sb, char c) {
  sb_putn(sb, &c, 1);
}

void sb_fill(struct sbuf *sb, char c, size_t n) {
  sb_reserve(sb, n);
  memset(sb->data + sb->len, c, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

void sb_printf(struct sbuf *sb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n <= 0)
    return;
  sb_reserve(sb, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb->len += (size_t)n;
}

void sb_json_str(struct sbuf *sb, const char *s, size_t n) {
  sb_putc(sb, '"');
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      sb_putc(sb, '\\');
      sb_putc(sb, (char)c);
    } else if (c < 0x20 || c == 0x7f) {
      sb_printf(sb, "\\u%04x", c);
    } else {
      /* Bytes >= 0x80 pass through: tests send UTF-8 or nothing. */
      sb_putc(sb, (char)c);
    }
  }
  sb_putc(sb, '"');
}

void sb_consume(struct sbuf *sb, size_t n) {
  if (n >= sb->len) {
    sb->len = 0;
  } else {
    memmove(sb->data, sb->data + n, sb->len - n);
    sb->len -= n;
  }
  if (sb->data)
    sb->data[sb->len] = '\0';
}

void sb_free(struct sbuf *sb) {
  free(sb->data);
  sb->data = NULL;
  sb->len = sb->cap = 0;
}

/* ------------------------------------------------------------ queries */

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decodes %XX and '+'; a malformed escape is kept literally. */
char *url_decode(const char *s, size_t n) {
  char *d = xmalloc(n + 1);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '+') {
      d[o++] = ' ';
    } else if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
               hexval(s[i + 2]) >= 0) {
      d[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else {
      d[o++] = s[i];
    }
  }
  d[o] = '\0';
  return d;
}

void kv_add(struct kvlist *kl, const char *key, const char *val) {
  if (kl->n == kl->cap) {
    kl->cap = kl->cap ? kl->cap * 2 : 8;
    kl->v = xrealloc(kl->v, kl->cap * sizeof *kl->v);
  }
  kl->v[kl->n].key = xstrndup(key, strlen(key));
  kl->v[kl->n].val = xstrndup(val, strlen(val));
  kl->n++;
}

void kv_parse(struct kvlist *kl, const char *q, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && q[end] != '&')
      end++;
    if (end > i) {
      size_t eq = i;
      while (eq < end && q[eq] != '=')
        eq++;
      char *k = url_decode(q + i, eq - i);
      char *v =
          eq < end ? url_decode(q + eq + 1, end - eq - 1) : xstrndup("", 0);
      if (kl->n == kl->cap) {
        kl->cap = kl->cap ? kl->cap * 2 : 8;
        kl->v = xrealloc(kl->v, kl->cap * sizeof *kl->v);
      }
      kl->v[kl->n].key = k;
      kl->v[kl->n].val = v;
      kl->n++;
    }
    i = end + 1;
  }
}

const char *kv_get(const struct kvlist *kl, const char *key) {
  for (size_t i = kl->n; i > 0; i--)
    if (strcmp(kl->v[i - 1].key, key) == 0)
      return kl->v[i - 1].val;
  return NULL;
}

void kv_free(struct kvlist *kl) {
  for (size_t i = 0; i < kl->n; i++) {
    free(kl->v[i].key);
    free(kl->v[i].val);
  }
  free(kl->v);
  kl->v = NULL;
  kl->n = kl->cap = 0;
}

/* -------------------------------------------------------------- dates */

#define IMF_FIXDATE "%a, %d %b %Y %H:%M:%S GMT"

void http_date(time_t t, char *buf, size_t cap) {
  struct tm tm;
  gmtime_r(&t, &tm);
  /* The C locale is never changed, so day and month names are English. */
  strftime(buf, cap, IMF_FIXDATE, &tm);
}

time_t http_date_parse(const char *s) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char *end = strptime(s, IMF_FIXDATE, &tm);
  if (!end || *end != '\0')
    return (time_t)-1;
  return timegm(&tm);
}
