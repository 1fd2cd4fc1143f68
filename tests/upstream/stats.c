/*
 * stats.c — testupstream's call counters: the total, what is in flight,
 * and how often each path+query and each method was called.
 *
 * Invariants: counters are kept in first-seen order (a vector) with an
 * open-addressing index over it, so output is stable and lookups are
 * O(1) even when a benchmark uses a million distinct keys. The index is
 * at most half full. seq of a call equals total after counting it, and
 * path_seq equals that key's count, so both restart at 1 after a reset.
 */
#include "upstream.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static void cmap_reindex(struct cmap *m, size_t cap) {
  free(m->index);
  m->index = calloc(cap, sizeof *m->index);
  if (!m->index)
    abort();
  m->index_cap = cap;
  for (size_t i = 0; i < m->n; i++) {
    const char *k = m->v[i].key;
    size_t slot = hash_bytes(k, strlen(k)) & (cap - 1);
    while (m->index[slot])
      slot = (slot + 1) & (cap - 1);
    m->index[slot] = (uint32_t)(i + 1);
  }
}

/* Adds one to key's counter and returns the new count. */
static uint64_t cmap_incr(struct cmap *m, const char *key, size_t klen) {
  if ((m->n + 1) * 2 > m->index_cap)
    cmap_reindex(m, m->index_cap ? m->index_cap * 2 : 64);
  size_t mask = m->index_cap - 1;
  size_t slot = hash_bytes(key, klen) & mask;
  while (m->index[slot]) {
    struct counter *c = &m->v[m->index[slot] - 1];
    if (strlen(c->key) == klen && memcmp(c->key, key, klen) == 0)
      return ++c->count;
    slot = (slot + 1) & mask;
  }
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 64;
    m->v = xrealloc(m->v, m->cap * sizeof *m->v);
  }
  m->v[m->n].key = xstrndup(key, klen);
  m->v[m->n].count = 1;
  m->n++;
  m->index[slot] = (uint32_t)m->n;
  return 1;
}

static void cmap_free(struct cmap *m) {
  for (size_t i = 0; i < m->n; i++)
    free(m->v[i].key);
  free(m->v);
  free(m->index);
  memset(m, 0, sizeof *m);
}

static void cmap_json(const struct cmap *m, struct sbuf *out) {
  sb_putc(out, '{');
  for (size_t i = 0; i < m->n; i++) {
    if (i)
      sb_putc(out, ',');
    sb_json_str(out, m->v[i].key, strlen(m->v[i].key));
    sb_printf(out, ":%llu", (unsigned long long)m->v[i].count);
  }
  sb_putc(out, '}');
}

void stats_count(struct stats *st, const char *key, size_t klen,
                 const char *method, uint64_t *seq, uint64_t *path_seq) {
  *seq = ++st->total;
  *path_seq = cmap_incr(&st->paths, key, klen);
  cmap_incr(&st->methods, method, strlen(method));
  if (++st->inflight > st->max_inflight)
    st->max_inflight = st->inflight;
}

void stats_done(struct stats *st) {
  if (st->inflight)
    st->inflight--;
}

void stats_reset(struct stats *st) {
  /* inflight and conns_open describe the present, not history: a reset
   * while requests hang must not make them go negative later. */
  st->total = 0;
  st->max_inflight = st->inflight;
  st->conns_accepted = 0;
  cmap_free(&st->paths);
  cmap_free(&st->methods);
}

void stats_json(const struct stats *st, struct sbuf *out, bool with_paths) {
  sb_printf(out,
            "{\"total\":%llu,\"inflight\":%llu,\"max_inflight\":%llu,"
            "\"connections\":%llu,\"connections_accepted\":%llu",
            (unsigned long long)st->total, (unsigned long long)st->inflight,
            (unsigned long long)st->max_inflight,
            (unsigned long long)st->conns_open,
            (unsigned long long)st->conns_accepted);
  if (with_paths) {
    sb_puts(out, ",\"paths\":");
    cmap_json(&st->paths, out);
  }
  sb_puts(out, ",\"methods\":");
  cmap_json(&st->methods, out);
  sb_puts(out, "}\n");
}

void stats_free(struct stats *st) {
  cmap_free(&st->paths);
  cmap_free(&st->methods);
}
