/*
 * batch.c — the process-wide gatherer of batchable ids; see batch.h.
 *
 * A batch is OPEN while it sits in the batcher's table and accepts ids;
 * it becomes SEALED exactly once, under the mutex, when it is taken out of
 * the table — by its window timer (on the owner loop), by the add that
 * fills it (any loop), or by its owner closing — and from then on belongs
 * to its owner loop alone: only that thread sends it, completes its tokens
 * and frees it. A batch sealed by another loop is pushed onto the owner's
 * inbox and the owner's async handle is poked while the mutex is still
 * held; since the owner sets `closed` under the same mutex before it drains
 * its inbox and closes the handle, no poke can reach a closed handle.
 *
 * The window timer is a separate allocation (freed by its close callback),
 * so a batch can be freed as soon as its call ends whatever the timer's
 * close is doing.
 */
#include "batch.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "policy.h"
#include "response.h"

#define BATCHER_MAGIC 0x42415443u /* "BATC" */
#define BATCH_MAGIC 0x42415431u
#define NBUCKETS 256

#define CHECK_MAGIC(p, m)                                                      \
  do {                                                                         \
    if ((p) == NULL || (p)->magic != (m))                                      \
      abort();                                                                 \
  } while (0)

const unsigned batch_hist_le[BATCH_HIST_BUCKETS - 1] = {1,  2,  4,  8,
                                                        16, 32, 64, 128};

typedef struct batch batch_t;

struct batch_loop {
  batcher_t *b;
  uv_loop_t *loop;
  upstream_client_t *up;
  uv_async_t async;
  pthread_t thread;
  batch_t *inbox;   /* sealed by other loops; under b->mu */
  bool closed;      /* under b->mu; written only by this loop's thread */
  batch_loop_t *next;
};

struct batcher {
  uint32_t magic;
  pthread_mutex_t mu;
  batch_t *open[NBUCKETS];
  batch_loop_t *loops;
  batch_call_fn on_call;
  void *ud;
  _Atomic uint64_t made, keys, failed, malformed, missing, canceled;
  _Atomic uint64_t hist[BATCH_HIST_BUCKETS];
};

typedef struct entry {
  char *enc; /* as sent (canonical query form) */
  size_t enc_len;
  char *dec; /* as compared with the answer's ids */
  size_t dec_len;
} entry_t;

typedef struct tok {
  coalesce_fetch_t *fetch;
  size_t entry;
} tok_t;

struct batch {
  uint32_t magic;
  batch_t *next; /* bucket chain while open, owner inbox once sealed */
  uint64_t hash;
  char *key;
  size_t key_len;
  batch_loop_t *owner;
  uv_timer_t *timer; /* on the owner loop; NULL once closed */
  bool open;
  /* the call, copied from the first id */
  const config_route_t *route;
  const config_upstream_t *up;
  char *join; /* NULL: repeat */
  char *base;
  size_t base_len;
  upstream_header_t *hdrs;
  size_t nhdrs;
  char *hdr_mem;
  bool authorized;
  size_t max_response_bytes;
  coalesce_breaker_t *breaker;
  size_t max;
  char *url;
  /* ids and tokens */
  entry_t *ids;
  size_t nids, ids_cap;
  size_t *index; /* open addressing over ids: entry + 1, 0 empty */
  size_t index_mask;
  tok_t *toks;
  size_t ntoks, toks_cap;
};

/* ---- group keys -------------------------------------------------------- */

typedef struct kbuf {
  char *d;
  size_t len, cap;
  bool oom;
} kbuf_t;

static void kput(kbuf_t *k, const void *p, size_t n) {
  if (k->oom)
    return;
  if (k->len + n > k->cap) {
    size_t cap = k->cap ? k->cap : 256;
    while (cap < k->len + n)
      cap *= 2;
    char *d = realloc(k->d, cap);
    if (d == NULL) {
      k->oom = true;
      return;
    }
    k->d = d;
    k->cap = cap;
  }
  if (n > 0)
    memcpy(k->d + k->len, p, n);
  k->len += n;
}

/* Length-prefixed, so fields can never run together. */
static void kfield(kbuf_t *k, const void *p, size_t n) {
  uint64_t len = n;
  kput(k, &len, sizeof len);
  kput(k, p, n);
}

static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ull;
  return h;
}

static void group_key(const batch_req_t *r, kbuf_t *k) {
  kput(k, &r->route, sizeof r->route);
  kput(k, &r->upstream, sizeof r->upstream);
  const char *join = batch_join_is_repeat(r->join) ? "" : r->join;
  kfield(k, join, strlen(join));
  kfield(k, r->base_target, r->base_target_len);
  if (r->group != NULL) {
    kfield(k, r->group, r->group_len);
    return;
  }
  for (size_t i = 0; i < r->nheaders; i++) {
    kfield(k, r->headers[i].name, r->headers[i].name_len);
    kfield(k, r->headers[i].value, r->headers[i].value_len);
  }
}

/* ---- batches ------------------------------------------------------------- */

static void timer_free(uv_handle_t *h) { free(h); }

static void batch_free(batch_t *bt) {
  for (size_t i = 0; i < bt->nids; i++)
    free(bt->ids[i].enc);
  free(bt->ids);
  free(bt->index);
  free(bt->toks);
  free(bt->key);
  free(bt->join);
  free(bt->base);
  free(bt->hdrs);
  free(bt->hdr_mem);
  free(bt->url);
  bt->magic = 0;
  free(bt);
}

static void on_window(uv_timer_t *t);

/* A new open batch owned by bl, with req's call template. Takes `key`. */
static batch_t *batch_new(batch_loop_t *bl, const batch_req_t *r, kbuf_t *key,
                          uint64_t hash) {
  batch_t *bt = calloc(1, sizeof *bt);
  if (bt == NULL)
    return NULL;
  bt->magic = BATCH_MAGIC;
  bt->key = key->d;
  bt->key_len = key->len;
  key->d = NULL;
  bt->hash = hash;
  bt->owner = bl;
  bt->open = true;
  bt->route = r->route;
  bt->up = r->upstream;
  bt->authorized = r->authorized;
  bt->max_response_bytes = r->max_response_bytes;
  bt->breaker = r->breaker;
  bt->max = r->route->batch_max > 0 ? r->route->batch_max : 1;
  bool ok = true;
  if (!batch_join_is_repeat(r->join))
    ok = (bt->join = strdup(r->join)) != NULL;
  bt->base = malloc(r->base_target_len + 1);
  size_t mem = 0;
  for (size_t i = 0; i < r->nheaders; i++)
    mem += r->headers[i].name_len + r->headers[i].value_len;
  bt->hdrs = calloc(r->nheaders ? r->nheaders : 1, sizeof *bt->hdrs);
  bt->hdr_mem = malloc(mem ? mem : 1);
  bt->timer = malloc(sizeof *bt->timer);
  if (!ok || bt->base == NULL || bt->hdrs == NULL || bt->hdr_mem == NULL ||
      bt->timer == NULL) {
    free(bt->timer);
    bt->timer = NULL;
    batch_free(bt);
    return NULL;
  }
  memcpy(bt->base, r->base_target, r->base_target_len);
  bt->base[r->base_target_len] = '\0';
  bt->base_len = r->base_target_len;
  char *m = bt->hdr_mem;
  for (size_t i = 0; i < r->nheaders; i++) {
    const upstream_header_t *h = &r->headers[i];
    memcpy(m, h->name, h->name_len);
    bt->hdrs[i].name = m;
    bt->hdrs[i].name_len = h->name_len;
    m += h->name_len;
    memcpy(m, h->value, h->value_len);
    bt->hdrs[i].value = m;
    bt->hdrs[i].value_len = h->value_len;
    m += h->value_len;
  }
  bt->nhdrs = r->nheaders;
  uv_timer_init(bl->loop, bt->timer);
  bt->timer->data = bt;
  uv_timer_start(bt->timer, on_window, bt->route->batch_window_ms, 0);
  return bt;
}

/* Finds or inserts id; returns its entry index, or SIZE_MAX on OOM. */
static size_t batch_id(batch_t *bt, const char *id, size_t len) {
  if (bt->index == NULL || (bt->nids + 1) * 2 > bt->index_mask + 1) {
    size_t size = bt->index ? (bt->index_mask + 1) * 2 : 16;
    size_t *ix = calloc(size, sizeof *ix);
    if (ix == NULL)
      return SIZE_MAX;
    for (size_t e = 0; e < bt->nids; e++) {
      size_t i = (size_t)fnv(bt->ids[e].enc, bt->ids[e].enc_len) & (size - 1);
      while (ix[i] != 0)
        i = (i + 1) & (size - 1);
      ix[i] = e + 1;
    }
    free(bt->index);
    bt->index = ix;
    bt->index_mask = size - 1;
  }
  size_t i = (size_t)fnv(id, len) & bt->index_mask;
  for (; bt->index[i] != 0; i = (i + 1) & bt->index_mask) {
    const entry_t *e = &bt->ids[bt->index[i] - 1];
    if (e->enc_len == len && memcmp(e->enc, id, len) == 0)
      return bt->index[i] - 1;
  }
  if (bt->nids == bt->ids_cap) {
    size_t cap = bt->ids_cap ? bt->ids_cap * 2 : 8;
    entry_t *ids = realloc(bt->ids, cap * sizeof *ids);
    if (ids == NULL)
      return SIZE_MAX;
    bt->ids = ids;
    bt->ids_cap = cap;
  }
  char *mem = malloc(len * 2 + 2); /* encoded, then decoded (never longer) */
  if (mem == NULL)
    return SIZE_MAX;
  memcpy(mem, id, len);
  mem[len] = '\0';
  entry_t *e = &bt->ids[bt->nids];
  e->enc = mem;
  e->enc_len = len;
  e->dec = mem + len + 1;
  e->dec_len = batch_id_decode(id, len, e->dec);
  e->dec[e->dec_len] = '\0';
  bt->index[i] = bt->nids + 1;
  return bt->nids++;
}

static int batch_push(batch_t *bt, const char *id, size_t len,
                      coalesce_fetch_t *fetch) {
  if (bt->ntoks == bt->toks_cap) {
    size_t cap = bt->toks_cap ? bt->toks_cap * 2 : 8;
    tok_t *t = realloc(bt->toks, cap * sizeof *t);
    if (t == NULL)
      return -1;
    bt->toks = t;
    bt->toks_cap = cap;
  }
  size_t e = batch_id(bt, id, len);
  if (e == SIZE_MAX)
    return -1;
  bt->toks[bt->ntoks++] = (tok_t){fetch, e};
  return 0;
}

/* Takes an open batch out of the table. Under b->mu. */
static void unlink_open(batcher_t *b, batch_t *bt) {
  batch_t **pp = &b->open[bt->hash % NBUCKETS];
  while (*pp != bt)
    pp = &(*pp)->next;
  *pp = bt->next;
  bt->next = NULL;
  bt->open = false;
}

/* ---- completing tokens -------------------------------------------------- */

static void complete(coalesce_fetch_t *f, int err, coalesce_value_t *v,
                     unsigned flags, const coalesce_ttl_t *ttl,
                     uint64_t retry_after_ns) {
  coalesce_fetch_result_t res;
  memset(&res, 0, sizeof res);
  res.err = err;
  res.value = v;
  res.flags = flags;
  if (ttl != NULL)
    res.ttl = *ttl;
  res.retry_after_ns = retry_after_ns;
  coalesce_fetch_done(f, &res);
}

static void fail_token(coalesce_fetch_t *f, int err, const char *msg) {
  coalesce_value_t *v = msg ? coalesce_value_new(msg, strlen(msg)) : NULL;
  complete(f, err, v, 0, NULL, 0);
  coalesce_value_release(v);
}

/* Fails every token with the same error and frees the batch. */
static void fail_all(batch_t *bt, int err, const char *msg) {
  coalesce_value_t *v = msg ? coalesce_value_new(msg, strlen(msg)) : NULL;
  for (size_t i = 0; i < bt->ntoks; i++)
    complete(bt->toks[i].fetch, err, v, 0, NULL, 0);
  coalesce_value_release(v);
  batch_free(bt);
}

/* ---- the answer ----------------------------------------------------------- */

static uint64_t ms2ns(uint64_t ms) { return ms * COALESCE_NS_PER_MS; }

static void decide(const batch_t *bt, const response_t *r, int *statuses,
                   policy_decision_t *d) {
  const config_route_t *rt = bt->route;
  policy_route_t pr = {
      .mode = rt->policy == CONFIG_POLICY_ORIGIN ? POLICY_ORIGIN
                                                 : POLICY_OVERRIDE,
      .ttl_ns = ms2ns(rt->ttl_ms),
      .swr_ns = ms2ns(rt->stale_ms),
      .sie_ns = ms2ns(rt->stale_if_error_ms),
      .negative_ttl_ns = ms2ns(rt->negative_ttl_ms)};
  if (statuses != NULL && rt->ncache_statuses > 0) {
    for (size_t i = 0; i < rt->ncache_statuses; i++)
      statuses[i] = rt->cache_statuses[i];
    pr.statuses = statuses;
    pr.n_statuses = rt->ncache_statuses;
  }
  policy_decide(&pr, r, bt->authorized, time(NULL), d);
}

static unsigned decision_flags(const policy_decision_t *d) {
  unsigned f = COALESCE_RESULT_TTL;
  if (d->failure)
    f |= COALESCE_RESULT_FAILURE;
  if (!d->store)
    f |= COALESCE_RESULT_NOSTORE;
  if (!d->share)
    f |= COALESCE_RESULT_NOSHARE;
  return f;
}

/* Fields of the batch answer that describe the whole batch's bytes, not
 * one item's: never copied onto a part. */
static bool whole_batch_field(const char *n, size_t len) {
  static const char *const names[] = {
      "content-length", "etag",          "last-modified", "content-md5",
      "digest",         "content-digest", "repr-digest",  "content-range",
      "content-encoding"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strlen(names[i]) == len && strncasecmp(n, names[i], len) == 0)
      return true;
  return false;
}

static coalesce_value_t *not_found(const entry_t *e, time_t now) {
  json_t *id = json_stringn(e->dec, e->dec_len);
  if (id == NULL) /* not UTF-8: report it as it was asked */
    id = json_stringn(e->enc, e->enc_len);
  json_t *o = json_pack("{s:s,s:o*}", "error", "not_found", "id", id);
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  const char *body = text ? text : "{\"error\":\"not_found\"}";
  static const hdr_t ct = {"Content-Type", 12, "application/json", 16};
  coalesce_value_t *v = response_new(404, &ct, 1, body, strlen(body), now);
  free(text);
  return v;
}

/* Builds and decides one response per id of a split answer. vals[i] NULL
 * means out of memory for that id. */
static size_t item_values(batch_t *bt, upstream_response_t *resp,
                          const batch_part_t *parts, hdr_t *hs, int *statuses,
                          coalesce_value_t **vals, policy_decision_t *ds) {
  size_t nh = 0;
  for (size_t i = 0; i < resp->nheaders; i++)
    if (!whole_batch_field(resp->headers[i].name, resp->headers[i].name_len))
      hs[nh++] = (hdr_t){resp->headers[i].name, resp->headers[i].name_len,
                         resp->headers[i].value, resp->headers[i].value_len};
  time_t now = time(NULL);
  size_t missing = 0;
  for (size_t i = 0; i < bt->nids; i++) {
    if (parts[i].body != NULL) {
      vals[i] = response_new(resp->status, hs, nh, parts[i].body, parts[i].len,
                             now);
      if (vals[i] != NULL)
        decide(bt, response_of(vals[i]), statuses, &ds[i]);
      continue;
    }
    missing++;
    vals[i] = not_found(&bt->ids[i], now);
    if (vals[i] != NULL) {
      decide(bt, response_of(vals[i]), statuses, &ds[i]);
      if (bt->route->negative_ttl_ms == 0)
        ds[i].store = false; /* absent now need not mean absent for long */
    }
  }
  return missing;
}

/* A 2xx answer: one response per id. Frees bt. */
static void answer_items(batcher_t *b, batch_t *bt, upstream_response_t *resp,
                         int *statuses) {
  size_t n = bt->nids ? bt->nids : 1;
  batch_str_t *ids = malloc(n * sizeof *ids);
  batch_part_t *parts = calloc(n, sizeof *parts);
  hdr_t *hs = calloc(resp->nheaders ? resp->nheaders : 1, sizeof *hs);
  coalesce_value_t **vals = calloc(n, sizeof *vals);
  policy_decision_t *ds = calloc(n, sizeof *ds);
  char err[160] = "out of memory splitting a batch";
  int rc = BATCH_SPLIT_ENOMEM;
  if (ids != NULL && parts != NULL && hs != NULL && vals != NULL &&
      ds != NULL) {
    for (size_t i = 0; i < bt->nids; i++)
      ids[i] = (batch_str_t){bt->ids[i].dec, bt->ids[i].dec_len};
    rc = batch_split(bt->route->batch_id_path, bt->route->batch_item_wrap,
                     resp->body, resp->body_len, ids, bt->nids, parts, err,
                     sizeof err);
  }
  if (rc == BATCH_SPLIT_ENOMEM) {
    fail_all(bt, COALESCE_ENOMEM, err);
  } else if (rc != 0) {
    atomic_fetch_add_explicit(&b->failed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->malformed, 1, memory_order_relaxed);
    LOG_WARN("batch_malformed", "upstream=%s ids=%zu reason=\"%s\"",
             bt->up->name, bt->nids, err);
    if (bt->breaker != NULL)
      coalesce_breaker_record(bt->breaker, false, 0);
    fail_all(bt, COALESCE_EFETCH, err);
  } else {
    size_t missing = item_values(bt, resp, parts, hs, statuses, vals, ds);
    atomic_fetch_add_explicit(&b->missing, missing, memory_order_relaxed);
    if (bt->breaker != NULL)
      coalesce_breaker_record(bt->breaker, true, 0);
    for (size_t t = 0; t < bt->ntoks; t++) {
      size_t e = bt->toks[t].entry;
      if (vals[e] == NULL)
        fail_token(bt->toks[t].fetch, COALESCE_ENOMEM, NULL);
      else
        complete(bt->toks[t].fetch, 0, vals[e], decision_flags(&ds[e]),
                 &ds[e].ttl, 0);
    }
    for (size_t i = 0; i < bt->nids; i++)
      coalesce_value_release(vals[i]);
    batch_free(bt);
  }
  if (parts != NULL)
    batch_parts_free(parts, n);
  free(ids);
  free(parts);
  free(hs);
  free(vals);
  free(ds);
}

static void on_batch_done(void *ud, upstream_response_t *resp) {
  batch_t *bt = ud;
  CHECK_MAGIC(bt, BATCH_MAGIC);
  batcher_t *b = bt->owner->b;
  if (b->on_call != NULL)
    b->on_call(b->ud, bt->up, resp->status, resp->err, resp->total_time_us,
               bt->nids);
  LOG_INFO("upstream_call", "upstream=%s batch_ids=%zu status=%d%s%s ms=%.1f",
           bt->up->name, bt->nids, resp->status, resp->err ? " error=" : "",
           resp->err ? upstream_strerror(resp->err) : "",
           (double)resp->total_time_us / 1000.0);
  if (resp->err != 0) {
    atomic_fetch_add_explicit(&b->failed, 1, memory_order_relaxed);
    if (bt->breaker != NULL)
      coalesce_breaker_record(bt->breaker, false, 0);
    fail_all(bt, resp->err == UPSTREAM_ETIMEOUT ? COALESCE_EUPSTREAM_TIMEOUT
                                                : COALESCE_EFETCH,
             resp->errmsg);
    return;
  }
  int *statuses = calloc(bt->route->ncache_statuses + 1, sizeof *statuses);
  if (statuses == NULL) {
    fail_all(bt, COALESCE_ENOMEM, "out of memory");
    return;
  }
  if (resp->status >= 200 && resp->status < 300) {
    answer_items(b, bt, resp, statuses);
    free(statuses);
    return;
  }
  /* Not a batch of items: every id shares this very response. */
  atomic_fetch_add_explicit(&b->failed, 1, memory_order_relaxed);
  hdr_t *hs = calloc(resp->nheaders ? resp->nheaders : 1, sizeof *hs);
  coalesce_value_t *v = NULL;
  if (hs != NULL) {
    for (size_t i = 0; i < resp->nheaders; i++)
      hs[i] = (hdr_t){resp->headers[i].name, resp->headers[i].name_len,
                      resp->headers[i].value, resp->headers[i].value_len};
    v = response_new(resp->status, hs, resp->nheaders, resp->body,
                     resp->body_len, time(NULL));
    free(hs);
  }
  if (v == NULL) {
    free(statuses);
    fail_all(bt, COALESCE_ENOMEM, "out of memory");
    return;
  }
  policy_decision_t d;
  decide(bt, response_of(v), statuses, &d);
  free(statuses);
  if (bt->breaker != NULL)
    coalesce_breaker_record(bt->breaker, !d.failure, d.retry_after_ns);
  for (size_t t = 0; t < bt->ntoks; t++)
    complete(bt->toks[t].fetch, 0, v, decision_flags(&d), &d.ttl,
             d.retry_after_ns);
  coalesce_value_release(v);
  batch_free(bt);
}

/* ---- sending (owner loop only) -------------------------------------------- */

static int build_url(batch_t *bt) {
  const char *param = bt->route->batch_param;
  size_t plen = strlen(param), ulen = strlen(bt->up->url);
  size_t jl = bt->join ? strlen(bt->join) : 0;
  size_t n = ulen + bt->base_len + 2;
  for (size_t i = 0; i < bt->nids; i++)
    n += bt->ids[i].enc_len + plen + 2 + jl;
  bt->url = malloc(n);
  if (bt->url == NULL)
    return -1;
  char *o = bt->url;
  memcpy(o, bt->up->url, ulen);
  o += ulen;
  memcpy(o, bt->base, bt->base_len);
  o += bt->base_len;
  *o++ = memchr(bt->base, '?', bt->base_len) ? '&' : '?';
  for (size_t i = 0; i < bt->nids; i++) {
    if (i == 0 || bt->join == NULL) {
      if (i > 0)
        *o++ = '&';
      memcpy(o, param, plen);
      o += plen;
      *o++ = '=';
    } else {
      memcpy(o, bt->join, jl);
      o += jl;
    }
    memcpy(o, bt->ids[i].enc, bt->ids[i].enc_len);
    o += bt->ids[i].enc_len;
  }
  *o = '\0';
  return 0;
}

static size_t hist_bucket(size_t nids) {
  size_t i = 0;
  while (i < BATCH_HIST_BUCKETS - 1 && nids > batch_hist_le[i])
    i++;
  return i;
}

/* A sealed batch, on its owner's thread: closes its timer and makes its
 * call (or fails it). */
static void batch_send(batch_t *bt) {
  CHECK_MAGIC(bt, BATCH_MAGIC);
  batch_loop_t *bl = bt->owner;
  batcher_t *b = bl->b;
  if (bt->timer != NULL) {
    uv_close((uv_handle_t *)bt->timer, timer_free);
    bt->timer = NULL;
  }
  if (bt->ntoks == 0) {
    batch_free(bt);
    return;
  }
  if (bl->closed) {
    atomic_fetch_add_explicit(&b->canceled, bt->ntoks, memory_order_relaxed);
    fail_all(bt, COALESCE_ECANCELED, "batch canceled: worker shutting down");
    return;
  }
  if (bt->breaker != NULL && coalesce_breaker_allow(bt->breaker) != 0) {
    fail_all(bt, COALESCE_ECIRCUIT_OPEN, NULL);
    return;
  }
  if (build_url(bt) != 0) {
    if (bt->breaker != NULL)
      coalesce_breaker_record(bt->breaker, true, 0); /* give the slot back */
    fail_all(bt, COALESCE_ENOMEM, "out of memory");
    return;
  }
  upstream_request_t ur;
  memset(&ur, 0, sizeof ur);
  ur.method = "GET";
  ur.url = bt->url;
  ur.headers = bt->hdrs;
  ur.nheaders = bt->nhdrs;
  ur.connect_timeout_ms = (uint32_t)bt->up->connect_timeout_ms;
  ur.timeout_ms = (uint32_t)bt->route->upstream_timeout_ms;
  ur.max_response_bytes = bt->max_response_bytes;
  ur.ca_file = bt->up->ca_file;
  ur.tls_insecure = !bt->up->tls_verify;
  ur.http2 = true;
  size_t nids = bt->nids, ntoks = bt->ntoks;
  int rc = upstream_fetch(bl->up, &ur, on_batch_done, bt);
  if (rc != 0) {
    if (bt->breaker != NULL)
      coalesce_breaker_record(bt->breaker, true, 0);
    fail_all(bt, COALESCE_EFETCH, upstream_strerror(rc));
    return;
  }
  /* bt now belongs to the transfer: not touched again here */
  atomic_fetch_add_explicit(&b->made, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&b->keys, ntoks, memory_order_relaxed);
  atomic_fetch_add_explicit(&b->hist[hist_bucket(nids)], 1,
                            memory_order_relaxed);
}

static void on_window(uv_timer_t *t) {
  batch_t *bt = t->data;
  CHECK_MAGIC(bt, BATCH_MAGIC);
  batcher_t *b = bt->owner->b;
  pthread_mutex_lock(&b->mu);
  bool mine = bt->open;
  if (mine)
    unlink_open(b, bt);
  pthread_mutex_unlock(&b->mu);
  if (mine)
    batch_send(bt); /* else another loop sealed it: it is in our inbox */
}

static void on_inbox(uv_async_t *h) {
  batch_loop_t *bl = h->data;
  pthread_mutex_lock(&bl->b->mu);
  batch_t *list = bl->inbox;
  bl->inbox = NULL;
  pthread_mutex_unlock(&bl->b->mu);
  while (list != NULL) {
    batch_t *next = list->next;
    list->next = NULL;
    batch_send(list);
    list = next;
  }
}

/* ---- public ------------------------------------------------------------------ */

batcher_t *batcher_new(const batcher_opts_t *opts) {
  batcher_t *b = calloc(1, sizeof *b);
  if (b == NULL)
    return NULL;
  b->magic = BATCHER_MAGIC;
  pthread_mutex_init(&b->mu, NULL);
  if (opts != NULL) {
    b->on_call = opts->on_call;
    b->ud = opts->ud;
  }
  return b;
}

void batcher_free(batcher_t *b) {
  if (b == NULL)
    return;
  CHECK_MAGIC(b, BATCHER_MAGIC);
  for (size_t i = 0; i < NBUCKETS; i++)
    if (b->open[i] != NULL)
      abort(); /* a loop was not closed: its tokens would never complete */
  while (b->loops != NULL) {
    batch_loop_t *next = b->loops->next;
    free(b->loops);
    b->loops = next;
  }
  pthread_mutex_destroy(&b->mu);
  b->magic = 0;
  free(b);
}

void batcher_stats(batcher_t *b, batch_stats_t *out) {
  CHECK_MAGIC(b, BATCHER_MAGIC);
  memset(out, 0, sizeof *out);
  out->batches_made = atomic_load_explicit(&b->made, memory_order_relaxed);
  out->batched_keys = atomic_load_explicit(&b->keys, memory_order_relaxed);
  out->calls_saved = out->batched_keys > out->batches_made
                         ? out->batched_keys - out->batches_made
                         : 0;
  for (size_t i = 0; i < BATCH_HIST_BUCKETS; i++)
    out->ids_per_batch[i] =
        atomic_load_explicit(&b->hist[i], memory_order_relaxed);
  out->failed_calls = atomic_load_explicit(&b->failed, memory_order_relaxed);
  out->malformed = atomic_load_explicit(&b->malformed, memory_order_relaxed);
  out->missing_ids = atomic_load_explicit(&b->missing, memory_order_relaxed);
  out->canceled = atomic_load_explicit(&b->canceled, memory_order_relaxed);
}

void batcher_stats_reset(batcher_t *b) {
  CHECK_MAGIC(b, BATCHER_MAGIC);
  atomic_store(&b->made, 0);
  atomic_store(&b->keys, 0);
  atomic_store(&b->failed, 0);
  atomic_store(&b->malformed, 0);
  atomic_store(&b->missing, 0);
  atomic_store(&b->canceled, 0);
  for (size_t i = 0; i < BATCH_HIST_BUCKETS; i++)
    atomic_store(&b->hist[i], 0);
}

batch_loop_t *batch_loop_new(batcher_t *b, uv_loop_t *loop,
                             upstream_client_t *upstream) {
  CHECK_MAGIC(b, BATCHER_MAGIC);
  batch_loop_t *bl = calloc(1, sizeof *bl);
  if (bl == NULL)
    return NULL;
  bl->b = b;
  bl->loop = loop;
  bl->up = upstream;
  bl->thread = pthread_self();
  if (uv_async_init(loop, &bl->async, on_inbox) != 0) {
    free(bl);
    return NULL;
  }
  bl->async.data = bl;
  pthread_mutex_lock(&b->mu);
  bl->next = b->loops;
  b->loops = bl;
  pthread_mutex_unlock(&b->mu);
  return bl;
}

void batch_loop_close(batch_loop_t *bl) {
  if (bl == NULL || bl->closed)
    return;
  batcher_t *b = bl->b;
  batch_t *mine = NULL;
  pthread_mutex_lock(&b->mu);
  bl->closed = true;
  for (size_t i = 0; i < NBUCKETS; i++) {
    batch_t **pp = &b->open[i];
    while (*pp != NULL) {
      batch_t *bt = *pp;
      if (bt->owner != bl) {
        pp = &bt->next;
        continue;
      }
      *pp = bt->next;
      bt->open = false;
      bt->next = mine;
      mine = bt;
    }
  }
  batch_t *inbox = bl->inbox;
  bl->inbox = NULL;
  pthread_mutex_unlock(&b->mu);
  /* batch_send sees `closed` and fails their tokens */
  while (mine != NULL) {
    batch_t *next = mine->next;
    mine->next = NULL;
    batch_send(mine);
    mine = next;
  }
  while (inbox != NULL) {
    batch_t *next = inbox->next;
    inbox->next = NULL;
    batch_send(inbox);
    inbox = next;
  }
  uv_close((uv_handle_t *)&bl->async, NULL);
}

void batch_add(batch_loop_t *bl, const batch_req_t *r,
               coalesce_fetch_t *fetch) {
  if (bl == NULL || r == NULL || r->route == NULL || r->upstream == NULL ||
      r->route->batch_param == NULL || r->id == NULL || r->id_len == 0 ||
      r->base_target == NULL || (r->nheaders > 0 && r->headers == NULL)) {
    fail_token(fetch, COALESCE_EINVAL, "invalid batch request");
    return;
  }
  batcher_t *b = bl->b;
  CHECK_MAGIC(b, BATCHER_MAGIC);
  if (!pthread_equal(pthread_self(), bl->thread))
    abort(); /* timers and the upstream client belong to bl's loop */
  kbuf_t key = {0};
  group_key(r, &key);
  if (key.oom) {
    free(key.d);
    fail_token(fetch, COALESCE_ENOMEM, NULL);
    return;
  }
  uint64_t hash = fnv(key.d, key.len);
  batch_t *send_now = NULL;
  int err = 0;
  pthread_mutex_lock(&b->mu);
  batch_t *bt = bl->closed ? NULL : b->open[hash % NBUCKETS];
  while (bt != NULL && !(bt->hash == hash && bt->key_len == key.len &&
                         memcmp(bt->key, key.d, key.len) == 0))
    bt = bt->next;
  if (bl->closed) {
    err = COALESCE_ECANCELED;
  } else if (bt == NULL) {
    bt = batch_new(bl, r, &key, hash);
    if (bt == NULL) {
      err = COALESCE_ENOMEM;
    } else {
      bt->next = b->open[hash % NBUCKETS];
      b->open[hash % NBUCKETS] = bt;
    }
  }
  if (err == 0 && batch_push(bt, r->id, r->id_len, fetch) != 0)
    err = COALESCE_ENOMEM; /* the batch goes on without this id */
  if (err == 0 && bt->nids >= bt->max) {
    unlink_open(b, bt);
    if (bt->owner == bl) {
      send_now = bt;
    } else {
      bt->next = bt->owner->inbox;
      bt->owner->inbox = bt;
      uv_async_send(&bt->owner->async); /* under the mutex: see the top */
    }
  }
  pthread_mutex_unlock(&b->mu);
  free(key.d);
  if (err != 0) {
    if (err == COALESCE_ECANCELED)
      atomic_fetch_add_explicit(&b->canceled, 1, memory_order_relaxed);
    fail_token(fetch, err,
               err == COALESCE_ECANCELED ? "batch canceled: worker shutting down"
                                         : NULL);
    return;
  }
  if (send_now != NULL)
    batch_send(send_now);
}
