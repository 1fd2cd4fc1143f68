/* cachekey.c — canonical paths, queries and cache keys; see cachekey.h. */
#include "cachekey.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Normalisation works in scratch space of 3x the input (every byte may
 * become an escape): on the stack for the targets of ordinary requests,
 * which every hit normalises, on the heap beyond. */
#define SCRATCH_BYTES 1536
#define SCRATCH_PARAMS 48

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static bool unreserved(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Percent-normalises in[0..len) into out; -1 on a bad escape, %00 or a
 * byte that must not appear raw in a request target. */
static long pct_normalize(const char *in, size_t len, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)in[i];
    if (c <= 0x20 || c >= 0x7f)
      return -1;
    if (c != '%') {
      if (o >= cap)
        return -1;
      out[o++] = (char)c;
      continue;
    }
    if (i + 2 >= len)
      return -1;
    int hi = hexval((unsigned char)in[i + 1]),
        lo = hexval((unsigned char)in[i + 2]);
    if (hi < 0 || lo < 0)
      return -1;
    int v = hi * 16 + lo;
    if (v == 0)
      return -1;
    i += 2;
    if (unreserved(v)) {
      if (o >= cap)
        return -1;
      out[o++] = (char)v;
    } else {
      if (o + 3 > cap)
        return -1;
      out[o++] = '%';
      out[o++] = hex[v >> 4];
      out[o++] = hex[v & 15];
    }
  }
  return (long)o;
}

long cachekey_normalize_path(const char *in, size_t len, char *out,
                             size_t cap) {
  if (len == 0 || in[0] != '/' || cap == 0)
    return -1;
  char stack[SCRATCH_BYTES];
  char *tmp = len * 3 + 1 <= sizeof stack ? stack : malloc(len * 3 + 1);
  if (tmp == NULL)
    return -1;
  long n = pct_normalize(in, len, tmp, len * 3);
  if (n < 0) {
    if (tmp != stack)
      free(tmp);
    return -1;
  }
  /* Remove dot segments over the normalised text: a segment is "." or ".."
   * only literally here, because %2E was decoded above (it is unreserved). */
  size_t o = 0;
  size_t i = 0;
  size_t tn = (size_t)n;
  while (i < tn) {
    /* tmp[i] == '/' always holds at a segment start */
    size_t j = i + 1;
    while (j < tn && tmp[j] != '/')
      j++;
    size_t seglen = j - (i + 1);
    const char *seg = tmp + i + 1;
    bool last = j >= tn;
    if (seglen == 1 && seg[0] == '.') {
      if (last) {
        if (o + 1 > cap)
          goto fail;
        out[o++] = '/';
      }
    } else if (seglen == 2 && seg[0] == '.' && seg[1] == '.') {
      while (o > 0 && out[o - 1] != '/')
        o--;
      if (o > 0)
        o--; /* drop the '/' that started the removed segment */
      if (last) {
        if (o + 1 > cap)
          goto fail;
        out[o++] = '/';
      }
    } else {
      if (o + 1 + seglen > cap)
        goto fail;
      out[o++] = '/';
      memcpy(out + o, seg, seglen);
      o += seglen;
    }
    i = j;
  }
  if (o == 0) {
    out[o++] = '/';
  }
  if (tmp != stack)
    free(tmp);
  return (long)o;
fail:
  if (tmp != stack)
    free(tmp);
  return -1;
}

typedef struct qparam {
  const char *p;
  size_t len;     /* whole "name=value" */
  size_t namelen; /* up to '=' or the end */
  size_t order;
} qparam_t;

static int qparam_cmp(const void *a, const void *b) {
  const qparam_t *x = a, *y = b;
  size_t n = x->namelen < y->namelen ? x->namelen : y->namelen;
  int c = memcmp(x->p, y->p, n);
  if (c != 0)
    return c;
  if (x->namelen != y->namelen)
    return x->namelen < y->namelen ? -1 : 1;
  return x->order < y->order ? -1 : (x->order > y->order);
}

long cachekey_canonical_query(const char *in, size_t len, char *out,
                              size_t cap) {
  if (len == 0)
    return 0;
  char norm_stack[SCRATCH_BYTES];
  qparam_t ps_stack[SCRATCH_PARAMS];
  size_t maxp = len / 2 + 2;
  char *norm =
      len * 3 + 1 <= sizeof norm_stack ? norm_stack : malloc(len * 3 + 1);
  qparam_t *ps = maxp <= SCRATCH_PARAMS ? ps_stack : malloc(maxp * sizeof *ps);
  long result = -1;
  if (norm == NULL || ps == NULL)
    goto done;
  size_t np = 0, no = 0;
  for (size_t i = 0; i <= len;) {
    size_t j = i;
    while (j < len && in[j] != '&')
      j++;
    if (j > i) {
      long n = pct_normalize(in + i, j - i, norm + no, len * 3 - no);
      if (n < 0)
        goto done;
      const char *eq = memchr(norm + no, '=', (size_t)n);
      if (np >= maxp)
        goto done;
      ps[np] = (qparam_t){norm + no, (size_t)n,
                          eq ? (size_t)(eq - (norm + no)) : (size_t)n, np};
      np++;
      no += (size_t)n;
    }
    i = j + 1;
  }
  /* most clients send one parameter, or send them in order already */
  bool sorted = true;
  for (size_t i = 1; i < np && sorted; i++)
    sorted = qparam_cmp(&ps[i - 1], &ps[i]) <= 0;
  if (!sorted)
    qsort(ps, np, sizeof *ps, qparam_cmp);
  size_t o = 0;
  for (size_t i = 0; i < np; i++) {
    if (o + ps[i].len + 1 > cap)
      goto done;
    if (i > 0)
      out[o++] = '&';
    memcpy(out + o, ps[i].p, ps[i].len);
    o += ps[i].len;
  }
  result = (long)o;
done:
  if (norm != norm_stack)
    free(norm);
  if (ps != ps_stack)
    free(ps);
  return result;
}

void cachekey_init(cachekey_t *k) {
  k->data = NULL;
  k->len = k->cap = 0;
  k->oom = false;
}

void cachekey_free(cachekey_t *k) {
  if (k->data != k->small)
    free(k->data);
  cachekey_init(k);
}

void cachekey_reset(cachekey_t *k) {
  k->len = 0;
  k->oom = false;
}

static void put_bytes(cachekey_t *k, const void *p, size_t n) {
  if (k->oom)
    return;
  if (k->data == NULL) {
    k->data = k->small;
    k->cap = sizeof k->small;
  }
  if (k->len + n > k->cap) {
    size_t cap = k->cap * 2;
    while (cap < k->len + n)
      cap *= 2;
    char *d = k->data == k->small ? malloc(cap) : realloc(k->data, cap);
    if (d == NULL) {
      k->oom = true;
      return;
    }
    if (k->data == k->small)
      memcpy(d, k->small, k->len);
    k->data = d;
    k->cap = cap;
  }
  memcpy(k->data + k->len, p, n);
  k->len += n;
}

void cachekey_copy(cachekey_t *k, const void *data, size_t len) {
  cachekey_reset(k);
  put_bytes(k, data, len);
}

void cachekey_add(cachekey_t *k, const char *field, size_t len) {
  uint32_t n = (uint32_t)len;
  put_bytes(k, &n, sizeof n);
  put_bytes(k, field, len);
}

void cachekey_build(cachekey_t *k, char method_class, unsigned upstream,
                    const char *path, size_t path_len, const char *query,
                    size_t query_len, const char *const *identity,
                    size_t n_identity, cachekey_header_fn get, void *ud) {
  cachekey_reset(k);
  char head[2] = {method_class, 0};
  put_bytes(k, head, 1);
  put_bytes(k, &upstream, sizeof upstream);
  cachekey_add(k, path, path_len);
  cachekey_add(k, query ? query : "", query ? query_len : 0);
  for (size_t i = 0; i < n_identity; i++) {
    size_t vlen = 0;
    const char *v = get ? get(ud, identity[i], &vlen) : NULL;
    if (v == NULL)
      continue;
    put_bytes(k, "I", 1);
    cachekey_add(k, identity[i], strlen(identity[i]));
    cachekey_add(k, v, vlen);
  }
}

bool cachekey_add_vary(cachekey_t *k, const char *vary, size_t vary_len,
                       cachekey_header_fn get, void *ud) {
  size_t i = 0;
  while (i < vary_len) {
    while (i < vary_len &&
           (vary[i] == ' ' || vary[i] == '\t' || vary[i] == ','))
      i++;
    size_t j = i;
    while (j < vary_len && vary[j] != ',' && vary[j] != ' ' && vary[j] != '\t')
      j++;
    if (j > i) {
      if (j - i == 1 && vary[i] == '*')
        return false;
      char name[128];
      size_t n = j - i < sizeof name - 1 ? j - i : sizeof name - 1;
      for (size_t c = 0; c < n; c++) {
        char ch = vary[i + c];
        name[c] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
      }
      name[n] = '\0';
      size_t vlen = 0;
      const char *v = get ? get(ud, name, &vlen) : NULL;
      put_bytes(k, "V", 1);
      cachekey_add(k, name, n);
      /* absent and empty differ: mark absence with a distinct tag */
      if (v == NULL)
        put_bytes(k, "-", 1);
      else
        cachekey_add(k, v, vlen);
    }
    i = j;
  }
  return true;
}
