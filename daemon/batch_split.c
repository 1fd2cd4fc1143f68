/*
 * batch_split.c — single-id requests, id paths, wrap templates and the
 * splitting of a batch answer; see batch_split.h.
 *
 * Splitting is two passes over the answer: jansson parses it once to prove
 * it is well-formed JSON (and is then dropped), and a span scanner walks
 * the same bytes to find each item's exact text and its id. The scanner
 * trusts that validation — it never checks syntax, only follows it — and
 * is iterative, so no input can make it recurse. Request ids sit in an
 * open-addressing table, so an answer of n items costs O(n) lookups, not
 * O(n * ids).
 */
#include "batch_split.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------- */

static void fmt_err(char *err, size_t errlen, const char *msg) {
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "%s", msg);
}

bool batch_join_is_repeat(const char *join) {
  return join == NULL || join[0] == '\0' || strcmp(join, "repeat") == 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

size_t batch_id_decode(const char *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    if (in[i] == '%' && i + 2 < len &&
        (hi = hexval((unsigned char)in[i + 1])) >= 0 &&
        (lo = hexval((unsigned char)in[i + 2])) >= 0) {
      out[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[o++] = in[i] == '+' ? ' ' : in[i];
    }
  }
  return o;
}

/* ---- id path and wrap template --------------------------------------------- */

typedef struct seg {
  const char *name;
  size_t len;
} seg_t;

typedef struct path {
  seg_t pre[BATCH_SPLIT_MAX_SEGMENTS];  /* down to the container */
  size_t npre;
  char marker;                          /* '[' array, '{' keyed object */
  seg_t post[BATCH_SPLIT_MAX_SEGMENTS]; /* inside each item, to its id */
  size_t npost;
} path_t;

static bool name_char(char c) {
  return c != '.' && c != '[' && c != ']' && c != '{' && c != '}' &&
         (unsigned char)c > 0x20 && (unsigned char)c != 0x7f;
}

static int path_parse(const char *s, path_t *p, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  if (s == NULL || *s == '\0')
    s = BATCH_SPLIT_DEFAULT_ID_PATH;
  size_t nseg = 0;
  for (const char *c = s;; nseg++) {
    const char *start = c;
    while (name_char(*c))
      c++;
    seg_t sg = {start, (size_t)(c - start)};
    char mark = 0;
    if ((c[0] == '[' && c[1] == ']') || (c[0] == '{' && c[1] == '}')) {
      mark = c[0];
      c += 2;
    }
    if (*c != '\0' && *c != '.') {
      fmt_err(err, errlen, "id path: a name may not contain [ ] { } or spaces");
      return -1;
    }
    if (sg.len == 0 && !(mark != 0 && nseg == 0)) {
      fmt_err(err, errlen, "id path: empty segment");
      return -1;
    }
    if (mark != 0 && p->marker != 0) {
      fmt_err(err, errlen, "id path: only one [] or {} is allowed");
      return -1;
    }
    if (p->npre >= BATCH_SPLIT_MAX_SEGMENTS ||
        p->npost >= BATCH_SPLIT_MAX_SEGMENTS) {
      fmt_err(err, errlen, "id path: too many segments");
      return -1;
    }
    if (p->marker == 0) {
      if (sg.len > 0)
        p->pre[p->npre++] = sg;
      p->marker = mark;
    } else {
      p->post[p->npost++] = sg;
    }
    if (*c == '\0')
      break;
    c++; /* '.' */
  }
  if (p->marker == 0) {
    fmt_err(err, errlen, "id path: needs one [] (array) or {} (keyed object)");
    return -1;
  }
  if (p->marker == '[' && p->npost == 0) {
    fmt_err(err, errlen, "id path: [] must be followed by the id's name");
    return -1;
  }
  if (p->marker == '{' && p->npost > 0) {
    fmt_err(err, errlen, "id path: nothing may follow {} (the key is the id)");
    return -1;
  }
  return 0;
}

typedef struct wrap {
  const char *prefix, *suffix;
  size_t prefix_len, suffix_len;
} wrap_t;

static bool word_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '_';
}

/* Finds the one bare ITEM token (outside JSON strings) and checks that the
 * template is JSON once an item stands there. */
static int wrap_parse(const char *s, wrap_t *w, char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  if (s == NULL || *s == '\0')
    return 0;
  size_t n = strlen(s), at = SIZE_MAX;
  bool in_str = false;
  for (size_t i = 0; i < n; i++) {
    if (in_str) {
      if (s[i] == '\\')
        i++;
      else if (s[i] == '"')
        in_str = false;
    } else if (s[i] == '"') {
      in_str = true;
    } else if (strncmp(s + i, "ITEM", 4) == 0 && (i == 0 || !word_char(s[i - 1])) &&
               !word_char(s[i + 4])) {
      if (at != SIZE_MAX) {
        fmt_err(err, errlen, "item wrap: ITEM appears more than once");
        return -1;
      }
      at = i;
      i += 3;
    }
  }
  if (at == SIZE_MAX) {
    fmt_err(err, errlen, "item wrap: needs ITEM where the item goes, "
                         "e.g. {\"data\":[ITEM]}");
    return -1;
  }
  char *probe = malloc(n + 1);
  if (probe == NULL) {
    fmt_err(err, errlen, "out of memory");
    return -1;
  }
  memcpy(probe, s, at);
  memcpy(probe + at, "null", 4); /* same length as ITEM */
  memcpy(probe + at + 4, s + at + 4, n - at - 4);
  probe[n] = '\0';
  json_error_t je;
  json_t *j = json_loadb(probe, n, JSON_DECODE_ANY, &je);
  free(probe);
  if (j == NULL) {
    fmt_err(err, errlen, "item wrap: not JSON with an item in place of ITEM");
    return -1;
  }
  json_decref(j);
  w->prefix = s;
  w->prefix_len = at;
  w->suffix = s + at + 4;
  w->suffix_len = n - at - 4;
  return 0;
}

int batch_split_check(const char *id_path, const char *wrap, const char *join,
                      char *err, size_t errlen) {
  path_t p;
  wrap_t w;
  if (path_parse(id_path, &p, err, errlen) != 0 ||
      wrap_parse(wrap, &w, err, errlen) != 0)
    return -1;
  if (!batch_join_is_repeat(join)) {
    size_t n = strlen(join);
    if (n > BATCH_SPLIT_MAX_JOIN) {
      fmt_err(err, errlen, "join: a separator of at most 16 characters, "
                           "or \"repeat\"");
      return -1;
    }
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)join[i];
      if (c <= 0x20 || c >= 0x7f || c == '&' || c == '#' || c == '=') {
        fmt_err(err, errlen, "join: the separator must be visible ASCII "
                             "without & # =");
        return -1;
      }
    }
  }
  return 0;
}

/* ---- single-id targets ------------------------------------------------------ */

int batch_split_target(const char *target, size_t len, const char *param,
                       const char *join, char *base, size_t base_cap,
                       size_t *base_len, batch_str_t *id) {
  const char *q = memchr(target, '?', len);
  size_t plen = param ? strlen(param) : 0;
  if (q == NULL || plen == 0)
    return -1;
  const char *end = target + len;
  const char *val = NULL;
  size_t vlen = 0, found = 0;
  for (const char *s = q + 1; s < end;) {
    const char *t = memchr(s, '&', (size_t)(end - s));
    if (t == NULL)
      t = end;
    const char *eq = memchr(s, '=', (size_t)(t - s));
    size_t nlen = eq ? (size_t)(eq - s) : (size_t)(t - s);
    if (nlen == plen && memcmp(s, param, plen) == 0) {
      found++;
      val = eq ? eq + 1 : t;
      vlen = eq ? (size_t)(t - eq - 1) : 0;
    }
    s = t + 1;
  }
  if (found != 1 || vlen == 0)
    return -1;
  if (!batch_join_is_repeat(join)) {
    size_t jl = strlen(join);
    for (size_t i = 0; i + jl <= vlen; i++)
      if (memcmp(val + i, join, jl) == 0)
        return -1; /* already several ids */
  }
  size_t pathlen = (size_t)(q - target);
  if (base_cap < len)
    return -1;
  memcpy(base, target, pathlen);
  size_t o = pathlen;
  const char *skip = val - plen - 1; /* the "param=" of the id */
  for (const char *s = q + 1; s < end;) {
    const char *t = memchr(s, '&', (size_t)(end - s));
    if (t == NULL)
      t = end;
    if (s != skip && t > s) {
      base[o] = o == pathlen ? '?' : '&';
      o++;
      memcpy(base + o, s, (size_t)(t - s));
      o += (size_t)(t - s);
    }
    s = t + 1;
  }
  if (o >= base_cap)
    return -1;
  base[o] = '\0';
  *base_len = o;
  id->p = val;
  id->len = vlen;
  return 0;
}

/* ---- the span scanner (well-formed JSON only) ------------------------------- */

typedef struct sbuf {
  char *d;
  size_t len, cap;
  bool oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *p, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *d = realloc(b->d, cap);
    if (d == NULL) {
      b->oom = true;
      return;
    }
    b->d = d;
    b->cap = cap;
  }
  memcpy(b->d + b->len, p, n);
  b->len += n;
}

static const char *ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    p++;
  return p;
}

/* p at '"'; returns just past the closing quote. */
static const char *skip_str(const char *p, const char *e) {
  for (p++; p < e; p++) {
    if (*p == '\\')
      p++;
    else if (*p == '"')
      return p + 1;
  }
  return e;
}

static const char *skip_val(const char *p, const char *e) {
  if (p >= e)
    return e;
  if (*p == '"')
    return skip_str(p, e);
  if (*p == '{' || *p == '[') {
    size_t depth = 0;
    while (p < e) {
      char c = *p;
      if (c == '"') {
        p = skip_str(p, e);
        continue;
      }
      if (c == '{' || c == '[')
        depth++;
      else if (c == '}' || c == ']')
        depth--;
      p++;
      if (depth == 0)
        return p;
    }
    return e;
  }
  while (p < e && *p != ',' && *p != ']' && *p != '}' && *p != ' ' &&
         *p != '\t' && *p != '\n' && *p != '\r')
    p++;
  return p;
}

static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++)
    v = v * 16 + (unsigned)hexval((unsigned char)p[i]);
  return v;
}

static void put_utf8(sbuf_t *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (char)(0xF0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  sb_put(b, u, n);
}

/* Decodes the string at p (at '"') into b (reset first); returns its end. */
static const char *decode_str(const char *p, const char *e, sbuf_t *b) {
  b->len = 0;
  const char *end = skip_str(p, e);
  const char *s = p + 1, *stop = end - 1;
  while (s < stop) {
    const char *run = s;
    while (s < stop && *s != '\\')
      s++;
    sb_put(b, run, (size_t)(s - run));
    if (s >= stop)
      break;
    char c = s[1];
    s += 2;
    switch (c) {
    case 'b': sb_put(b, "\b", 1); break;
    case 'f': sb_put(b, "\f", 1); break;
    case 'n': sb_put(b, "\n", 1); break;
    case 'r': sb_put(b, "\r", 1); break;
    case 't': sb_put(b, "\t", 1); break;
    case 'u': {
      unsigned cp = hex4(s);
      s += 4;
      if (cp >= 0xD800 && cp < 0xDC00 && stop - s >= 6 && s[0] == '\\' &&
          s[1] == 'u') {
        unsigned lo = hex4(s + 2);
        if (lo >= 0xDC00 && lo < 0xE000) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          s += 6;
        }
      }
      put_utf8(b, cp);
      break;
    }
    default: sb_put(b, &c, 1); break; /* " \ / */
    }
  }
  return end;
}

/* Is the string at p (at '"') exactly name[0..len) once unescaped? */
static bool key_is(const char *p, const char *e, const char *name, size_t len,
                   sbuf_t *scratch) {
  const char *end = skip_str(p, e);
  size_t raw = (size_t)(end - p) - 2;
  if (memchr(p + 1, '\\', raw) == NULL)
    return raw == len && memcmp(p + 1, name, len) == 0;
  decode_str(p, e, scratch);
  return !scratch->oom && scratch->len == len &&
         memcmp(scratch->d, name, len) == 0;
}

/* The value of the last member called name in the object at p, or NULL. */
static const char *member(const char *p, const char *e, const seg_t *name,
                          sbuf_t *scratch) {
  if (p >= e || *p != '{')
    return NULL;
  const char *found = NULL;
  p = ws(p + 1, e);
  while (p < e && *p == '"') {
    bool match = key_is(p, e, name->name, name->len, scratch);
    p = ws(skip_str(p, e), e);
    p = ws(p + 1, e); /* ':' */
    if (match)
      found = p;
    p = ws(skip_val(p, e), e);
    if (p < e && *p == ',')
      p = ws(p + 1, e);
    else
      break;
  }
  return found;
}

/* ---- splitting ----------------------------------------------------------------- */

typedef struct idtab {
  size_t *slot; /* index + 1; 0 empty */
  size_t mask;
  const batch_str_t *ids;
} idtab_t;

static uint64_t fnv(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

/* Index of the first id equal to p[0..n), or SIZE_MAX. With `add`, inserts
 * index `add_as` when absent. */
static size_t tab_find(idtab_t *t, const char *p, size_t n, bool add,
                       size_t add_as) {
  for (size_t i = (size_t)fnv(p, n) & t->mask;; i = (i + 1) & t->mask) {
    size_t s = t->slot[i];
    if (s == 0) {
      if (add)
        t->slot[i] = add_as + 1;
      return SIZE_MAX;
    }
    const batch_str_t *id = &t->ids[s - 1];
    if (id->len == n && (n == 0 || memcmp(id->p, p, n) == 0))
      return s - 1;
  }
}

typedef struct split {
  const wrap_t *wrap;
  idtab_t tab;
  batch_part_t *parts;
  sbuf_t scratch;
  bool oom;
} split_t;

static void take_item(split_t *sp, const char *id, size_t idlen,
                      const char *item, size_t item_len) {
  size_t i = tab_find(&sp->tab, id, idlen, false, 0);
  if (i == SIZE_MAX || sp->parts[i].body != NULL)
    return; /* not asked for, or a later duplicate */
  const wrap_t *w = sp->wrap;
  size_t n = w->prefix_len + item_len + w->suffix_len;
  char *b = malloc(n + 1);
  if (b == NULL) {
    sp->oom = true;
    return;
  }
  if (w->prefix_len > 0) /* no wrap: prefix and suffix are NULL */
    memcpy(b, w->prefix, w->prefix_len);
  memcpy(b + w->prefix_len, item, item_len);
  if (w->suffix_len > 0)
    memcpy(b + w->prefix_len + item_len, w->suffix, w->suffix_len);
  b[n] = '\0';
  sp->parts[i].body = b;
  sp->parts[i].len = n;
}

/* An array item: follow the post segments to its id. */
static void array_item(split_t *sp, const path_t *path, const char *item,
                       const char *item_end, const char *e) {
  const char *v = item;
  for (size_t k = 0; k < path->npost && v != NULL; k++)
    v = member(v, e, &path->post[k], &sp->scratch);
  if (v == NULL)
    return;
  if (*v == '"') {
    decode_str(v, e, &sp->scratch);
    if (sp->scratch.oom) {
      sp->oom = true;
      return;
    }
    take_item(sp, sp->scratch.d ? sp->scratch.d : "", sp->scratch.len, item,
              (size_t)(item_end - item));
  } else if (*v == '-' || (*v >= '0' && *v <= '9')) {
    take_item(sp, v, (size_t)(skip_val(v, e) - v), item,
              (size_t)(item_end - item));
  }
}

static void walk(split_t *sp, const path_t *path, const char *c,
                 const char *e) {
  c = ws(c + 1, e);
  while (c < e && *c != ']' && *c != '}' && !sp->oom) {
    if (path->marker == '{') {
      const char *k = c;
      c = ws(skip_str(c, e), e);
      c = ws(c + 1, e); /* ':' */
      const char *vend = skip_val(c, e);
      decode_str(k, e, &sp->scratch);
      if (sp->scratch.oom) {
        sp->oom = true;
        break;
      }
      take_item(sp, sp->scratch.d ? sp->scratch.d : "", sp->scratch.len, c,
                (size_t)(vend - c));
      c = vend;
    } else {
      const char *vend = skip_val(c, e);
      array_item(sp, path, c, vend, e);
      c = vend;
    }
    c = ws(c, e);
    if (c < e && *c == ',')
      c = ws(c + 1, e);
    else
      break;
  }
}

void batch_parts_free(batch_part_t *parts, size_t n) {
  for (size_t i = 0; parts != NULL && i < n; i++) {
    free(parts[i].body);
    parts[i].body = NULL;
    parts[i].len = 0;
  }
}

int batch_split(const char *id_path, const char *wrap, const char *json,
                size_t json_len, const batch_str_t *ids, size_t nids,
                batch_part_t *parts, char *err, size_t errlen) {
  if (nids > 0)
    memset(parts, 0, nids * sizeof *parts);
  path_t path;
  wrap_t w;
  if (path_parse(id_path, &path, err, errlen) != 0 ||
      wrap_parse(wrap, &w, err, errlen) != 0)
    return BATCH_SPLIT_EINVAL;

  json_error_t je;
  json_t *doc = json_loadb(json ? json : "", json ? json_len : 0,
                           JSON_DECODE_ANY | JSON_ALLOW_NUL |
                               JSON_DECODE_INT_AS_REAL,
                           &je);
  if (doc == NULL) {
    /* jansson's text may quote the answer: give only the position */
    if (err != NULL && errlen > 0)
      snprintf(err, errlen, "batch answer is not valid JSON (line %d, column %d)",
               je.line, je.column);
    return BATCH_SPLIT_EMALFORMED;
  }
  json_decref(doc);

  split_t sp;
  memset(&sp, 0, sizeof sp);
  sp.wrap = &w;
  sp.parts = parts;
  size_t size = 8;
  while (size < nids * 2)
    size *= 2;
  sp.tab.slot = calloc(size, sizeof *sp.tab.slot);
  sp.tab.mask = size - 1;
  sp.tab.ids = ids;
  if (sp.tab.slot == NULL) {
    fmt_err(err, errlen, "out of memory");
    return BATCH_SPLIT_ENOMEM;
  }
  size_t *first = nids ? malloc(nids * sizeof *first) : NULL;
  if (nids > 0 && first == NULL) {
    free(sp.tab.slot);
    fmt_err(err, errlen, "out of memory");
    return BATCH_SPLIT_ENOMEM;
  }
  for (size_t i = 0; i < nids; i++) {
    size_t f = tab_find(&sp.tab, ids[i].p, ids[i].len, true, i);
    first[i] = f == SIZE_MAX ? i : f;
  }

  const char *e = json + json_len;
  const char *c = ws(json, e);
  for (size_t k = 0; k < path.npre && c != NULL; k++)
    c = member(c, e, &path.pre[k], &sp.scratch);
  int rc = 0;
  if (c == NULL || c >= e || *c != (path.marker == '[' ? '[' : '{')) {
    fmt_err(err, errlen, path.marker == '['
                             ? "batch answer has no array at the id path"
                             : "batch answer has no object at the id path");
    rc = BATCH_SPLIT_EMALFORMED;
  } else {
    walk(&sp, &path, c, e);
    for (size_t i = 0; i < nids && !sp.oom; i++) {
      if (first[i] == i || parts[first[i]].body == NULL)
        continue;
      parts[i].body = malloc(parts[first[i]].len + 1);
      if (parts[i].body == NULL) {
        sp.oom = true;
        break;
      }
      memcpy(parts[i].body, parts[first[i]].body, parts[first[i]].len + 1);
      parts[i].len = parts[first[i]].len;
    }
    if (sp.oom || sp.scratch.oom) {
      fmt_err(err, errlen, "out of memory");
      rc = BATCH_SPLIT_ENOMEM;
    }
  }
  if (rc != 0)
    batch_parts_free(parts, nids);
  free(first);
  free(sp.tab.slot);
  free(sp.scratch.d);
  return rc;
}
