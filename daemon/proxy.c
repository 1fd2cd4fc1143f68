/*
 * proxy.c — coalesced's request path (DESIGN.md §1) on a worker loop.
 *
 * A proxied request (preq_t) lives on the loop that received it and is
 * finished there, exactly once: answered at once (hit, stale, error),
 * answered when its load is delivered (the flight's callback runs on the
 * leader's thread and only posts the preq to its own loop's inbox), answered
 * by its own max_wait timer (the load is cancelled; stale-if-error or 504),
 * or released when its client went away.
 *
 * Invariants kept here:
 *  - the key is built from the same normalised path and canonical query that
 *    are sent upstream (cachekey.h), plus identity headers and Vary values;
 *  - a shared upstream call never carries one client's conditional headers
 *    or Accept-Encoding (its answer goes to every waiter);
 *  - a response that may not be shared (private, no-store, Set-Cookie,
 *    Vary mismatch) reaches only its leader; followers are told
 *    COALESCE_EUNSHARED and retry at once, in parallel, each on its own;
 *  - the proxy only talks to the route's configured upstream: the URL is
 *    upstream base + normalised path, never the client's Host or authority.
 */
#include "proxy.h"

#include <assert.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app.h"
#include "batch.h"
#include "cachecontrol.h"
#include "cachekey.h"
#include "fleet.h"
#include "log.h"
#include "policy.h"
#include "quota.h"
#include "recfilter.h"
#include "response.h"
#include "upstream.h"
#include "worker.h"

#define MAX_UNSHARED_RETRIES 3

typedef struct preq {
  worker_msg_t msg; /* delivery of the load's answer to our loop */
  worker_t *w;
  app_t *app;
  http_conn_t *conn;
  const http_request_t *req;
  config_t *cfg;
  const config_route_t *route;
  const config_upstream_t *up;
  app_upstream_t *aup;
  cachekey_t key;
  char *target; /* normalised path + '?' + canonical query */
  size_t target_len;
  bool head;
  bool vary_keyed;
  char *batch_base; /* a batch route's single-id request: target less id */
  size_t batch_base_len;
  const char *batch_id; /* points into target */
  size_t batch_id_len;
  int attempts;
  bool solo;
  coalesce_load_t *load;
  bool timer_on;
  bool waiting;
  bool aborted;
  coalesce_load_result_t result;
  coalesce_value_t *sent; /* held until written */
  /* Not zeroed at allocation (every request pays for what it zeroes):
   * everything from here on is written before it is read. */
  char tail[192];
  uv_buf_t bufs[5];  /* status line, fields, tail, body (two halves > 2 GiB) */
  uv_timer_t timer;  /* initialised once timer_on */
  bool pooled;       /* a PREQ_POOL_BLOCK from the loop's pool */
  char target_mem[]; /* `target` lives here: one allocation per request */
} preq_t;

/* Request records of ordinary targets come from a per-loop free list
 * (worker_t.preq_pool, touched only by its loop's thread), so a hit
 * allocates nothing; a target whose normalised form may exceed
 * PREQ_POOL_TARGET bytes gets an exact malloc. At most PREQ_POOL_MAX are
 * kept per loop (about 290 KiB). */
#define PREQ_POOL_TARGET 512
#define PREQ_POOL_BLOCK (sizeof(preq_t) + PREQ_POOL_TARGET)
#define PREQ_POOL_MAX 256u

static preq_t *preq_alloc(worker_t *w, size_t cap) {
  if (cap <= PREQ_POOL_TARGET) {
    preq_t *p = freelist_take(&w->preq_pool);
    if (p == NULL && (p = malloc(PREQ_POOL_BLOCK)) == NULL)
      return NULL;
    p->pooled = true;
    return p;
  }
  preq_t *p = cap <= SIZE_MAX - sizeof *p ? malloc(sizeof *p + cap) : NULL;
  if (p != NULL)
    p->pooled = false;
  return p;
}

static void preq_dealloc(preq_t *p) {
  assert(worker_current() == p->w); /* the pool is its loop's alone */
  if (!p->pooled || !freelist_give(&p->w->preq_pool, p, PREQ_POOL_MAX))
    free(p);
}

void proxy_worker_cleanup(struct worker *w) {
  freelist_clear(&w->preq_pool);
}

#define PREQ_ZEROED offsetof(preq_t, tail)

/* One upstream call in progress: a flight's fetch, or a pass-through. */
typedef struct fetchctx {
  app_t *app;
  worker_t *w;
  coalesce_fetch_t *fetch; /* NULL for a pass-through */
  preq_t *pass;            /* the pass-through request */
  config_t *cfg;
  const config_route_t *route;
  app_upstream_t *aup;
  coalesce_value_t *stale;
  bool authorized;
  bool vary_keyed;
  char *url;
  cachekey_t primary; /* for a response with Vary */
  /* the leader's request headers, copied: Vary may name any of them, and
   * a fleet wait outlives the request */
  http_header_t *hdrs;
  size_t nhdrs;
  char *hdr_mem;
  const config_upstream_t *up;
  struct fleet_lease *lease; /* fleet mode: we hold the key's lease */
} fetchctx_t;

static void preq_start_cacheable(preq_t *p);
static void call_upstream(fetchctx_t *fx);
static void on_fleet(void *ud, const fleet_result_t *res);
static void fail_fetch(fetchctx_t *fx, int err, unsigned flags,
                       const char *msg);

/* ---- small helpers ---------------------------------------------------- */

static uint64_t ms2ns(uint64_t ms) {
  return ms * COALESCE_NS_PER_MS;
}

/* http_request_header for the key's identity headers, asked on every
 * request: lengths compared first, so absent fields cost no strcasecmp. */
static const char *req_header(void *ud, const char *name, size_t *len) {
  const http_request_t *req = ud;
  size_t nl = strlen(name);
  for (size_t i = 0; i < req->nheaders; i++) {
    const http_header_t *h = &req->headers[i];
    if (h->name_len == nl && strncasecmp(h->name, name, nl) == 0) {
      if (len != NULL)
        *len = h->value_len;
      return h->value;
    }
  }
  return NULL;
}

static void preq_free_now(uv_handle_t *h) {
  preq_t *p = h->data;
  cachekey_free(&p->key);
  free(p->batch_base);
  preq_dealloc(p);
}

/* Frees p (the request must already be finished). */
static void preq_free(preq_t *p) {
  if (p->load != NULL)
    coalesce_load_free(p->load);
  p->load = NULL;
  coalesce_value_release(p->sent);
  p->sent = NULL;
  if (p->timer_on) {
    uv_timer_stop(&p->timer);
    p->timer.data = p;
    uv_close((uv_handle_t *)&p->timer, preq_free_now);
    return;
  }
  cachekey_free(&p->key);
  free(p->batch_base);
  preq_dealloc(p);
}

static void preq_release(preq_t *p) {
  http_conn_release(p->conn);
  preq_free(p);
}

/* ---- answers ------------------------------------------------------------ */

static void send_error(preq_t *p, int status, int code, const char *message,
                       const char *xcache, uint64_t retry_after_s) {
  json_t *body = json_pack("{s:s,s:s}", "error", metrics_error_code(code),
                           "message", message ? message : "");
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  char extra[128];
  int n = snprintf(extra, sizeof extra, "X-Cache: %s\r\nAge: 0\r\n", xcache);
  if (retry_after_s > 0 && n > 0 && (size_t)n < sizeof extra)
    snprintf(extra + n, sizeof extra - (size_t)n, "Retry-After: %llu\r\n",
             (unsigned long long)retry_after_s);
  const char *b = text ? text : "{\"error\":\"internal\"}";
  http_conn_send_simple(p->conn, status, "application/json", extra, b,
                        strlen(b), false);
  free(text);
  metrics_error(p->app->metrics, code);
  metrics_answer(p->app->metrics, METRIC_SRC_ERROR, status);
  LOG_DEBUG("request", "method=%s status=%d x_cache=%s error=%s",
            p->req->method_name, status, xcache, metrics_error_code(code));
  preq_free(p);
}

static void send_load_error(preq_t *p, int err, coalesce_value_t *msgval,
                            coalesce_source_t src) {
  /* an error value carries its message text as plain bytes */
  const char *msg = msgval ? (const char *)coalesce_value_data(msgval) : NULL;
  const char *xc = coalesce_source_name(src);
  switch (err) {
  case COALESCE_ETIMEDOUT:
    send_error(p, 504, METRIC_ERR_WAIT_TIMEOUT,
               "no answer within max_wait; the upstream call goes on", xc, 0);
    break;
  case COALESCE_EUPSTREAM_TIMEOUT:
  case COALESCE_EEXPIRED:
    send_error(p, 504, METRIC_ERR_UPSTREAM_TIMEOUT,
               msg ? msg : "upstream timed out", xc, 0);
    break;
  case COALESCE_ECIRCUIT_OPEN: {
    uint64_t in = p->aup ? coalesce_breaker_retry_in(p->aup->breaker) : 0;
    send_error(p, 503, METRIC_ERR_CIRCUIT_OPEN,
               "upstream circuit breaker is open and no stale copy exists", xc,
               (in + COALESCE_NS_PER_SEC - 1) / COALESCE_NS_PER_SEC);
    break;
  }
  case COALESCE_EOVERLOADED:
  case COALESCE_ENOMEM:
    send_error(p, 503, METRIC_ERR_OVERLOADED, coalesce_strerror(err), xc, 1);
    break;
  case COALESCE_EQUOTA:
    send_error(p, 429, METRIC_ERR_QUOTA,
               "the local budget for this upstream is spent and no stale "
               "copy exists",
               xc, p->aup ? atomic_load(&p->aup->quota_wait_s) : 1);
    break;
  default:
    send_error(p, 502, METRIC_ERR_UPSTREAM_ERROR,
               msg ? msg : coalesce_strerror(err), xc, 0);
    break;
  }
}

static void on_written(void *ud, int status) {
  (void)status;
  preq_free(ud);
}

/* Answers with a stored/shared response: one writev of the pre-built head,
 * this answer's tail (X-Cache, Age) and the shared body — no copy. Takes
 * the value reference. */
/* Does an entity-tag list (If-None-Match) match `etag`, weakly (RFC 9110
 * §13.1.2)? */
static bool etag_matches(const char *list, size_t len, const char *etag,
                         size_t elen) {
  if (elen > 2 && etag[0] == 'W' && etag[1] == '/') {
    etag += 2;
    elen -= 2;
  }
  size_t i = 0;
  while (i < len) {
    while (i < len && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
      i++;
    if (i < len && list[i] == '*')
      return true;
    if (i + 1 < len && list[i] == 'W' && list[i + 1] == '/')
      i += 2;
    size_t j = i;
    if (j < len && list[j] == '"') {
      j++;
      while (j < len && list[j] != '"')
        j++;
      if (j < len)
        j++;
    } else {
      while (j < len && list[j] != ',')
        j++;
    }
    if (j - i == elen && memcmp(list + i, etag, elen) == 0)
      return true;
    i = j;
  }
  return false;
}

/* RFC 9110 §13.2: the client's own validators against the response we are
 * about to send (If-None-Match wins over If-Modified-Since). */
static bool not_modified_for(const http_request_t *req, const response_t *r) {
  if (r->status != 200)
    return false;
  /* Every hit asks, and most requests carry neither field: one pass over
   * the request's fields, comparing lengths first, and no look at the
   * stored fields unless the client sent a validator. */
  const char *inm = NULL, *ims = NULL;
  size_t inml = 0, imsl = 0;
  for (size_t i = 0; i < req->nheaders; i++) {
    const http_header_t *h = &req->headers[i];
    if (inm == NULL && h->name_len == 13 &&
        strncasecmp(h->name, "if-none-match", 13) == 0) {
      inm = h->value;
      inml = h->value_len;
    } else if (ims == NULL && h->name_len == 17 &&
               strncasecmp(h->name, "if-modified-since", 17) == 0) {
      ims = h->value;
      imsl = h->value_len;
    }
  }
  size_t el;
  if (inm != NULL) {
    const char *etag = response_header(r, "etag", &el);
    return etag != NULL && etag_matches(inm, inml, etag, el);
  }
  if (ims == NULL)
    return false;
  const char *lm = response_header(r, "last-modified", &el);
  time_t since, mod;
  return lm != NULL && http_date_parse(ims, imsl, &since) &&
         http_date_parse(lm, el, &mod) && mod <= since;
}

static void send_not_modified(preq_t *p, coalesce_value_t *v,
                              const char *xcache, uint64_t age_s) {
  const response_t *r = response_of(v);
  static const char *const keep[] = {
      "etag", "cache-control",    "expires",      "vary",
      "date", "content-location", "last-modified"};
  char extra[2048];
  size_t o = 0;
  for (size_t i = 0; i < sizeof keep / sizeof *keep; i++) {
    /* the first field of that name, as stored (names are not
     * NUL-terminated: they point into the stored lines) */
    size_t kl = strlen(keep[i]);
    hdr_t h;
    for (size_t pos = 0; response_next_field(r, &pos, &h);) {
      if (h.name_len == kl && strncasecmp(h.name, keep[i], kl) == 0) {
        int n = snprintf(extra + o, sizeof extra - o, "%.*s: %.*s\r\n",
                         (int)h.name_len, h.name, (int)h.value_len, h.value);
        if (n > 0 && (size_t)n < sizeof extra - o)
          o += (size_t)n;
        break;
      }
    }
  }
  snprintf(extra + o, sizeof extra - o, "X-Cache: %s\r\nAge: %llu\r\n", xcache,
           (unsigned long long)age_s);
  metrics_answer(p->app->metrics, METRIC_SRC_HIT, 304);
  http_conn_send_simple(p->conn, 304, NULL, extra, NULL, 0, false);
  coalesce_value_release(v);
  preq_free(p);
}

static void send_value(preq_t *p, coalesce_value_t *v, const char *xcache,
                       uint64_t age_s, int metric_source) {
  const response_t *r = response_of(v);
  if (metric_source != METRIC_SRC_PASS && not_modified_for(p->req, r)) {
    send_not_modified(p, v, xcache, age_s);
    return;
  }
  /* {status line, stored field lines, tail, body}: Content-Length is in
   * the tail, with the GET's length for HEAD too */
  size_t sl, fl, bl = response_body_len(r);
  const char *status_line = response_status_line(r, &sl);
  const char *fields = response_field_lines(r, &fl);
  size_t tl = response_tail(p->tail, sizeof p->tail, response_content_length(r),
                            xcache, age_s, http_conn_will_close(p->conn), NULL);
  p->bufs[0] = uv_buf_init((char *)status_line, (unsigned)sl);
  p->bufs[1] = uv_buf_init((char *)fields, (unsigned)fl);
  p->bufs[2] = uv_buf_init(p->tail, (unsigned)tl);
  unsigned n = 3;
  if (!p->head && bl > 0) {
    /* uv_buf_t lengths are 32 bits; bodies may reach max_response_bytes
     * (4 GiB at most): split in two halves under 2 GiB when needed */
    const char *body = response_body(r);
    size_t first = bl > INT32_MAX ? bl / 2 : bl;
    p->bufs[n++] = uv_buf_init((char *)body, (unsigned)first);
    if (first < bl)
      p->bufs[n++] = uv_buf_init((char *)body + first, (unsigned)(bl - first));
  }
  p->sent = v;
  metrics_answer(p->app->metrics, metric_source, r->status);
  LOG_DEBUG("request", "method=%s status=%d x_cache=%s", p->req->method_name,
            r->status, xcache);
  if (http_conn_send(p->conn, p->bufs, n, false, on_written, p) != 0)
    preq_free(p);
}

/* Finishes p with a load result (owns res->value). */
static void respond(preq_t *p, coalesce_load_result_t *res) {
  if (res->err != 0 || res->value == NULL) {
    int err = res->err ? res->err : COALESCE_EFETCH;
    coalesce_value_t *msg = res->value;
    send_load_error(p, err, msg, res->source);
    coalesce_value_release(msg);
    return;
  }
  if (res->source == COALESCE_SRC_STALE_IF_ERROR &&
      res->fallback_err == COALESCE_EQUOTA)
    res->source = COALESCE_SRC_STALE; /* budget spent: plain stale (issue 10) */
  const response_t *r = response_of(res->value);
  uint64_t age = res->source == COALESCE_SRC_MISS ||
                         res->source == COALESCE_SRC_COALESCED ||
                         res->source == COALESCE_SRC_BYPASS
                     ? r->upstream_age
                     : res->age_ns / COALESCE_NS_PER_SEC;
  send_value(p, res->value, coalesce_source_name(res->source), age,
             (int)res->source);
}

/* ---- waiting: delivery, timeout, abort ----------------------------------- */

static void on_delivery(worker_msg_t *msg) {
  preq_t *p = (preq_t *)((char *)msg - offsetof(preq_t, msg));
  p->waiting = false;
  if (p->timer_on)
    uv_timer_stop(&p->timer);
  coalesce_load_free(p->load);
  p->load = NULL;
  if (p->aborted) {
    coalesce_value_release(p->result.value);
    preq_release(p);
    return;
  }
  if (p->result.err == COALESCE_EUNSHARED) {
    /* The leader's answer was private (or varied): go again at once. If
     * the key is unchanged, go solo so nobody waits on anyone. */
    p->attempts++;
    preq_start_cacheable(p);
    return;
  }
  respond(p, &p->result);
}

/* Any thread: the load's answer; hand it to our loop. */
static void on_load_done(void *ud, coalesce_load_result_t *res) {
  preq_t *p = ud;
  p->result = *res;
  p->msg.run = on_delivery;
  worker_post(p->w, &p->msg);
}

static void on_wait_timeout(uv_timer_t *t) {
  preq_t *p = t->data;
  if (!p->waiting)
    return;
  coalesce_load_result_t fb;
  if (coalesce_loader_cancel(p->app->loader, p->load, &fb) != 0)
    return; /* the answer is already on its way to our inbox */
  coalesce_load_free(p->load);
  p->load = NULL;
  p->waiting = false;
  respond(p, &fb);
}

static void on_abort(void *ud, http_conn_t *conn) {
  (void)conn;
  preq_t *p = ud;
  p->aborted = true;
  if (!p->waiting)
    return; /* a pass-through in progress releases when its call ends */
  coalesce_load_result_t fb;
  if (coalesce_loader_cancel(p->app->loader, p->load, &fb) != 0)
    return; /* delivery will see `aborted` */
  coalesce_value_release(fb.value);
  coalesce_load_free(p->load);
  p->load = NULL;
  p->waiting = false;
  preq_release(p);
}

/* ---- the cacheable path ------------------------------------------------- */

/* Key of the record that says which headers this URL varies on. */
static void vary_record_key(const cachekey_t *primary, cachekey_t *out) {
  cachekey_reset(out);
  cachekey_add(out, primary->data, primary->len);
  cachekey_add(out, "R", 1);
}

static void build_key(preq_t *p) {
  const config_route_t *rt = p->route;
  const char *query = memchr(p->target, '?', p->target_len);
  size_t path_len = query ? (size_t)(query - p->target) : p->target_len;
  size_t qlen = query ? p->target_len - path_len - 1 : 0;
  cachekey_build(&p->key, 'G', (unsigned)rt->upstream, p->target, path_len,
                 query ? query + 1 : "", qlen,
                 (const char *const *)rt->identity_headers,
                 rt->nidentity_headers, req_header, (void *)p->req);
  p->vary_keyed = false;
  if (!recfilter_used(&p->app->vary_records) ||
      !recfilter_may_have(&p->app->vary_records,
                          recfilter_hash(p->key.data, p->key.len, 0)))
    return; /* no Vary record was ever stored for this key */
  /* Has this URL answered with Vary before? Then key on those headers. */
  cachekey_t rk;
  cachekey_init(&rk);
  vary_record_key(&p->key, &rk);
  coalesce_lookup_t lk;
  if (!rk.oom && coalesce_cache_get(p->app->cache, rk.data, rk.len, &lk) == 0) {
    const char *vary = coalesce_value_data(lk.value);
    if (cachekey_add_vary(&p->key, vary, coalesce_value_len(lk.value),
                          req_header, (void *)p->req))
      p->vary_keyed = true;
    coalesce_value_release(lk.value);
  }
  cachekey_free(&rk);
}

/* ---- invalidation (RFC 9111 §4.4) ------------------------------------- */

/* The record of when a URI was last invalidated: keyed by upstream, path
 * and query only, so it covers every identity and Vary variant. */
static void uri_key(cachekey_t *k, unsigned upstream, const char *target,
                    size_t len) {
  const char *q = memchr(target, '?', len);
  size_t pl = q ? (size_t)(q - target) : len;
  cachekey_build(k, 'U', upstream, target, pl, q ? q + 1 : "",
                 q ? len - pl - 1 : 0, NULL, 0, NULL, NULL);
}

/* The invalidation filter's hash of uri_key()'s inputs, so a hit whose
 * bit is clear builds no key: the upstream and the target, whose split at
 * the first '?' is all uri_key() keeps ("/p?" and "/p" give the same key,
 * so a trailing '?' is dropped; normalised targets never have one). */
static uint64_t uri_hash(unsigned upstream, const char *target, size_t len) {
  if (len > 0 && target[len - 1] == '?' &&
      memchr(target, '?', len) == target + len - 1)
    len--;
  return recfilter_hash(target, len, upstream);
}

/* Clock reading of the URI's last invalidation, or 0. */
static uint64_t invalidated_at(preq_t *p) {
  if (!recfilter_used(&p->app->invalidations) ||
      !recfilter_may_have(
          &p->app->invalidations,
          uri_hash((unsigned)p->route->upstream, p->target, p->target_len)))
    return 0; /* never invalidated */
  cachekey_t k;
  cachekey_init(&k);
  uri_key(&k, (unsigned)p->route->upstream, p->target, p->target_len);
  uint64_t at = 0;
  coalesce_lookup_t lk;
  if (!k.oom && coalesce_cache_get(p->app->cache, k.data, k.len, &lk) == 0) {
    if (coalesce_value_len(lk.value) == sizeof at)
      memcpy(&at, coalesce_value_data(lk.value), sizeof at);
    coalesce_value_release(lk.value);
  }
  cachekey_free(&k);
  return at;
}

static void invalidate_target(app_t *app, const config_route_t *rt,
                              const char *target, size_t len) {
  cachekey_t k;
  cachekey_init(&k);
  uri_key(&k, (unsigned)rt->upstream, target, len);
  uint64_t now = coalesce_clock_now(NULL);
  coalesce_value_t *v = coalesce_value_new(&now, sizeof now);
  /* outlive anything stored for it before */
  coalesce_ttl_t ttl = {
      .fresh_ns = 86400 * COALESCE_NS_PER_SEC +
                  ms2ns(rt->ttl_ms + rt->stale_ms + rt->stale_if_error_ms)};
  /* before the record exists (recfilter.h: ordering) */
  recfilter_add(&app->invalidations,
                uri_hash((unsigned)rt->upstream, target, len));
  if (v != NULL && !k.oom)
    (void)coalesce_cache_put(app->cache, k.data, k.len, v, &ttl);
  coalesce_value_release(v);
  cachekey_free(&k);
}

/* Invalidates `value` of a Location / Content-Location field when it names
 * the same upstream (absolute URL under its base, or an absolute path). */
static void invalidate_location(preq_t *p, const char *v, size_t len) {
  const config_upstream_t *up = p->up;
  size_t ul = strlen(up->url), bl = strlen(up->base_path);
  if (len >= ul && strncasecmp(v, up->url, ul) == 0 &&
      (len == ul || v[ul] == '/' || v[ul] == '?')) {
    v += ul;
    len -= ul;
  } else if (len > 0 && v[0] == '/' && bl > 0 && len >= bl &&
             strncmp(v, up->base_path, bl) == 0) {
    v += bl;
    len -= bl;
  } else if (!(len > 0 && v[0] == '/' && bl == 0)) {
    return; /* another origin, or a relative reference: not ours */
  }
  if (len == 0)
    return;
  const char *q = memchr(v, '?', len);
  size_t pl = q ? (size_t)(q - v) : len;
  size_t cap = len * 3 + 4;
  char *t = malloc(cap);
  if (t == NULL)
    return;
  long n = cachekey_normalize_path(v, pl, t, cap);
  long m = n < 0 || q == NULL
               ? 0
               : cachekey_canonical_query(q + 1, len - pl - 1, t + n + 1,
                                          cap - (size_t)n - 1);
  if (n >= 0 && m >= 0) {
    size_t tl = (size_t)n;
    if (m > 0) {
      t[n] = '?';
      tl += 1 + (size_t)m;
    }
    invalidate_target(p->app, p->route, t, tl);
  }
  free(t);
}

/* ---- the request's own Cache-Control (origin policy) ------------------- */

static void request_limits(preq_t *p, coalesce_load_opts_t *o,
                           bool *only_if_cached) {
  *only_if_cached = false;
  uint64_t inval = invalidated_at(p);
  if (inval > o->min_stored_ns)
    o->min_stored_ns = inval;
  if (p->route->policy != CONFIG_POLICY_ORIGIN)
    return;
  ccontrol_t cc;
  cc_init(&cc);
  bool any = false;
  for (size_t i = 0; i < p->req->nheaders; i++) {
    const http_header_t *h = &p->req->headers[i];
    if (h->name_len == 13 && strncasecmp(h->name, "cache-control", 13) == 0) {
      cc_parse(&cc, h->value, h->value_len);
      any = true;
    }
  }
  size_t pl = 0;
  const char *pragma = http_request_header(p->req, "pragma", &pl);
  if (!any && pragma != NULL && pl >= 8 &&
      strncasecmp(pragma, "no-cache", 8) == 0)
    cc.no_cache = true; /* RFC 9111 §5.4, only without Cache-Control */
  policy_request_t pr;
  policy_request(&cc, coalesce_clock_now(NULL), &pr);
  if (pr.min_stored_ns > o->min_stored_ns)
    o->min_stored_ns = pr.min_stored_ns;
  o->max_stale_ns = pr.max_stale_ns;
  o->min_fresh_ns = pr.min_fresh_ns;
  *only_if_cached = pr.only_if_cached;
  if (pr.no_store)
    o->flags |= COALESCE_LOAD_NO_STORE;
  o->max_stale_on_error_ns = pr.max_stale_on_error_ns;
}

/* only-if-cached: a stored response this request accepts, or 504 — the
 * upstream is never contacted. */
static void answer_only_if_cached(preq_t *p, const coalesce_load_opts_t *o) {
  coalesce_lookup_t lk;
  if (coalesce_cache_get(p->app->cache, p->key.data, p->key.len, &lk) == 0) {
    if ((lk.state == COALESCE_FRESH || lk.state == COALESCE_STALE) &&
        lk.stored_at_ns >= o->min_stored_ns) {
      send_value(p, lk.value, lk.state == COALESCE_FRESH ? "HIT" : "STALE",
                 lk.age_ns / COALESCE_NS_PER_SEC,
                 lk.state == COALESCE_FRESH ? METRIC_SRC_HIT
                                            : METRIC_SRC_STALE);
      return;
    }
    coalesce_value_release(lk.value);
  }
  send_error(p, 504, METRIC_ERR_UPSTREAM_TIMEOUT,
             "only-if-cached: no stored response to serve", "MISS", 0);
}

static void preq_start_cacheable(preq_t *p) {
  cachekey_t before;
  cachekey_init(&before);
  if (p->attempts > 0)
    cachekey_add(&before, p->key.data, p->key.len);
  build_key(p);
  if (p->key.oom) {
    cachekey_free(&before);
    send_error(p, 503, METRIC_ERR_OVERLOADED, "out of memory", "MISS", 1);
    return;
  }
  if (p->attempts > 0) {
    /* same key again after EUNSHARED, or too many tries: go solo */
    cachekey_t again;
    cachekey_init(&again);
    cachekey_add(&again, p->key.data, p->key.len);
    p->solo = p->attempts >= MAX_UNSHARED_RETRIES ||
              (again.len == before.len &&
               memcmp(again.data, before.data, again.len) == 0);
    cachekey_free(&again);
  }
  cachekey_free(&before);

  const config_route_t *rt = p->route;
  coalesce_load_opts_t o;
  coalesce_load_opts_init(&o);
  o.ttl.fresh_ns = ms2ns(rt->ttl_ms);
  o.ttl.swr_ns = ms2ns(rt->stale_ms);
  o.ttl.sie_ns = ms2ns(rt->stale_if_error_ms);
  /* a batch call asks the breaker itself, once per call, not per id */
  o.breaker = p->aup != NULL && p->batch_id == NULL ? p->aup->breaker : NULL;
  o.fetch_ctx = p;
  o.flags = p->solo ? COALESCE_LOAD_SOLO : 0;
  bool only_if_cached;
  request_limits(p, &o, &only_if_cached);
  if (only_if_cached) {
    answer_only_if_cached(p, &o);
    return;
  }

  coalesce_load_result_t now;
  memset(&now, 0, sizeof now);
  int rc = coalesce_loader_load(p->app->loader, p->key.data, p->key.len, &o,
                                on_load_done, p, &now, &p->load);
  if (rc == COALESCE_PENDING) {
    /* Any answer is posted to our inbox, so nothing has run yet. */
    p->waiting = true;
    http_conn_set_abort(p->conn, on_abort, p);
    if (!p->timer_on) {
      uv_timer_init(&p->w->loop, &p->timer);
      p->timer.data = p;
      p->timer_on = true;
    }
    /* max_wait is a follower's own limit (DESIGN.md §1.4); the leader's
     * wait is bounded by the upstream timeout, which ends its flight. */
    if (coalesce_load_source(p->load) != COALESCE_SRC_MISS)
      uv_timer_start(&p->timer, on_wait_timeout, rt->max_wait_ms, 0);
    return;
  }
  if (rc < 0) {
    now.err = rc;
    now.value = NULL;
    now.source = COALESCE_SRC_MISS;
  }
  respond(p, &now);
}

/* ---- upstream calls ------------------------------------------------------ */

static bool name_is(const char *n, size_t len, const char *want) {
  return strlen(want) == len && strncasecmp(n, want, len) == 0;
}

/* Client fields never forwarded on a shared (coalesced) call: its answer
 * goes to every waiter, so one client's validators or encodings must not
 * shape it. */
static bool shared_call_drops(const char *n, size_t len) {
  return name_is(n, len, "if-none-match") ||
         name_is(n, len, "if-modified-since") || name_is(n, len, "if-match") ||
         name_is(n, len, "if-unmodified-since") ||
         name_is(n, len, "if-range") || name_is(n, len, "range") ||
         name_is(n, len, "accept-encoding");
}

/* Hop-by-hop in this request: fixed names, or listed by any of its
 * Connection field lines. */
static bool req_hop_by_hop(const http_header_t *hs, size_t nh, const char *n,
                           size_t len) {
  if (response_is_hop_by_hop(n, len, NULL, 0))
    return true;
  for (size_t i = 0; i < nh; i++) {
    const http_header_t *h = &hs[i];
    if (name_is(h->name, h->name_len, "connection") &&
        response_is_hop_by_hop(n, len, h->value, h->value_len))
      return true;
  }
  return false;
}

static bool injected(const config_upstream_t *up, const char *n, size_t len) {
  for (size_t i = 0; i < up->nheaders; i++)
    if (name_is(n, len, up->headers[i].name))
      return true;
  return false;
}

static void fetchctx_free(fetchctx_t *fx) {
  if (fx->lease != NULL)
    fleet_abandon(fx->lease); /* every path gives the lease back once */
  coalesce_value_release(fx->stale);
  cachekey_free(&fx->primary);
  free(fx->url);
  free(fx->hdrs);
  free(fx->hdr_mem);
  free(fx);
}

static const char *fx_header(void *ud, const char *name, size_t *len) {
  fetchctx_t *fx = ud;
  for (size_t i = 0; i < fx->nhdrs; i++) {
    if (name_is(fx->hdrs[i].name, fx->hdrs[i].name_len, name)) {
      *len = fx->hdrs[i].value_len;
      return fx->hdrs[i].value;
    }
  }
  return NULL;
}

/* Copies the request's headers into fx (for Vary on the response). */
static int copy_headers(fetchctx_t *fx, const http_request_t *req) {
  size_t total = 0;
  for (size_t i = 0; i < req->nheaders; i++)
    total += req->headers[i].name_len + req->headers[i].value_len + 2;
  fx->hdrs = calloc(req->nheaders ? req->nheaders : 1, sizeof *fx->hdrs);
  fx->hdr_mem = malloc(total ? total : 1);
  if (fx->hdrs == NULL || fx->hdr_mem == NULL)
    return -1;
  char *m = fx->hdr_mem;
  for (size_t i = 0; i < req->nheaders; i++) {
    const http_header_t *h = &req->headers[i];
    memcpy(m, h->name, h->name_len);
    m[h->name_len] = '\0';
    fx->hdrs[i].name = m;
    fx->hdrs[i].name_len = h->name_len;
    m += h->name_len + 1;
    memcpy(m, h->value, h->value_len);
    m[h->value_len] = '\0';
    fx->hdrs[i].value = m;
    fx->hdrs[i].value_len = h->value_len;
    m += h->value_len + 1;
  }
  fx->nhdrs = req->nheaders;
  return 0;
}

/* The header list of p's upstream call: the client's fields less
 * hop-by-hop, Host, framing and injected names (and, for a shared call, its
 * validators and Accept-Encoding), then the injected fields, then our own
 * validators from `stale`. Returns a calloc'd array (strings point into the
 * request and config) and its length in *n; NULL on allocation failure. */
static upstream_header_t *upstream_headers(const config_upstream_t *up,
                                           const http_header_t *hs, size_t nh,
                                           bool shared,
                                           const coalesce_value_t *stale,
                                           size_t *n_out) {
  size_t cap = nh + up->nheaders + 2;
  upstream_header_t *h = calloc(cap, sizeof *h);
  if (h == NULL)
    return NULL;
  size_t n = 0;
  for (size_t i = 0; i < nh; i++) {
    const http_header_t *rh = &hs[i];
    if (req_hop_by_hop(hs, nh, rh->name, rh->name_len) ||
        name_is(rh->name, rh->name_len, "host") ||
        name_is(rh->name, rh->name_len, "content-length") ||
        name_is(rh->name, rh->name_len, "expect") ||
        injected(up, rh->name, rh->name_len) ||
        (shared && shared_call_drops(rh->name, rh->name_len)))
      continue;
    h[n++] =
        (upstream_header_t){rh->name, rh->name_len, rh->value, rh->value_len};
  }
  for (size_t i = 0; i < up->nheaders; i++)
    h[n++] =
        (upstream_header_t){up->headers[i].name, strlen(up->headers[i].name),
                            up->headers[i].value, strlen(up->headers[i].value)};
  if (shared && stale != NULL) {
    const response_t *s = response_of(stale);
    size_t vl;
    const char *v;
    if ((v = response_header(s, "etag", &vl)) != NULL)
      h[n++] = (upstream_header_t){"If-None-Match", 13, v, vl};
    else if ((v = response_header(s, "last-modified", &vl)) != NULL)
      h[n++] = (upstream_header_t){"If-Modified-Since", 17, v, vl};
  }
  *n_out = n;
  return h;
}

static int set_url(fetchctx_t *fx, const char *target, size_t len) {
  size_t ulen = strlen(fx->up->url) + len + 1;
  fx->url = malloc(ulen);
  if (fx->url == NULL)
    return UPSTREAM_ENOMEM;
  snprintf(fx->url, ulen, "%s%.*s", fx->up->url, (int)len, target);
  return 0;
}

/* Sends an upstream call built from fx (url set) and the given headers:
 * a flight's shared GET (body NULL) or a pass-through. */
static int send_call(fetchctx_t *fx, const char *method,
                     const http_header_t *hs, size_t nh, bool shared,
                     const char *body, size_t body_len, upstream_done_fn done) {
  const config_upstream_t *up = fx->up;
  size_t n = 0;
  upstream_header_t *h = upstream_headers(up, hs, nh, shared, fx->stale, &n);
  if (h == NULL)
    return UPSTREAM_ENOMEM;
  upstream_request_t ur = {0};
  ur.method = method;
  ur.url = fx->url;
  ur.headers = h;
  ur.nheaders = n;
  if (body_len > 0) {
    ur.body = body;
    ur.body_len = body_len;
  }
  ur.connect_timeout_ms = (uint32_t)up->connect_timeout_ms;
  ur.timeout_ms = (uint32_t)fx->route->upstream_timeout_ms;
  ur.max_response_bytes = fx->cfg->server.max_response_bytes;
  ur.ca_file = up->ca_file;
  ur.tls_insecure = !up->tls_verify;
  /* h2 only where TLS negotiates it: for plain http, curl's PIPEWAIT
   * would queue calls behind one connection hoping to multiplex */
  ur.http2 = up->tls;
  int rc = upstream_fetch(fx->w->upstream, &ur, done, fx);
  free(h);
  return rc;
}

/* The upstream's own rate-limit fields and 429s, per upstream. */
static void observe_quota(app_upstream_t *aup,
                          const upstream_response_t *resp) {
  if (aup == NULL || aup->quota == NULL)
    return;
  /* upstream_header_t and hdr_t have the same layout; convert explicitly */
  hdr_t hs[64];
  size_t n = resp->nheaders < 64 ? resp->nheaders : 64;
  for (size_t i = 0; i < n; i++)
    hs[i] = (hdr_t){resp->headers[i].name, resp->headers[i].name_len,
                    resp->headers[i].value, resp->headers[i].value_len};
  quota_observe(aup->quota, hs, n, resp->status, time(NULL));
}

/* Spends one call of the upstream's local budget; false (and the wait in
 * aup->quota_wait_s) when it is empty. Only real upstream calls get here:
 * hits, stale hits and followers never do. */
static bool take_quota(app_upstream_t *aup) {
  uint64_t wait = 0;
  if (aup == NULL || aup->quota == NULL || quota_take(aup->quota, &wait) == 0)
    return true;
  atomic_store(&aup->quota_wait_s, quota_retry_after_s(wait));
  return false;
}

static int map_upstream_err(int uerr) {
  return uerr == UPSTREAM_ETIMEOUT ? COALESCE_EUPSTREAM_TIMEOUT
                                   : COALESCE_EFETCH;
}

static coalesce_value_t *build_response(upstream_response_t *resp,
                                        const coalesce_value_t *stale) {
  hdr_t *hs = calloc(resp->nheaders ? resp->nheaders : 1, sizeof *hs);
  if (hs == NULL)
    return NULL;
  for (size_t i = 0; i < resp->nheaders; i++)
    hs[i] = (hdr_t){resp->headers[i].name, resp->headers[i].name_len,
                    resp->headers[i].value, resp->headers[i].value_len};
  coalesce_value_t *v;
  if (resp->status == 304 && stale != NULL)
    v = response_refresh(response_of(stale), hs, resp->nheaders, time(NULL));
  else
    v = response_new(resp->status, hs, resp->nheaders, resp->body,
                     resp->body_len, time(NULL));
  free(hs);
  return v;
}

static void on_fetch_done(void *ud, upstream_response_t *resp) {
  fetchctx_t *fx = ud;
  app_t *app = fx->app;
  if (resp->err == UPSTREAM_ENOFD) {
    /* our process is out of descriptors: a local overload, never an
     * upstream failure (no breaker outcome, no upstream metric) */
    LOG_WARN("upstream_call", "upstream=%s error=%s",
             fx->aup ? fx->aup->name : "-", upstream_strerror(resp->err));
    fail_fetch(fx, COALESCE_EOVERLOADED, COALESCE_RESULT_NO_CALL,
               upstream_strerror(resp->err));
    return;
  }
  metrics_upstream_call(app->metrics, fx->aup ? fx->aup->metric : -1,
                        resp->status, resp->err, resp->total_time_us);
  metrics_upstream_attempts(app->metrics, fx->aup ? fx->aup->metric : -1,
                            resp->attempts);
  coalesce_fetch_result_t res;
  memset(&res, 0, sizeof res);
  if (resp->err != 0) {
    LOG_INFO("upstream_call", "upstream=%s status=0 error=%s ms=%.1f",
             fx->aup ? fx->aup->name : "-", upstream_strerror(resp->err),
             (double)resp->total_time_us / 1000.0);
    res.err = map_upstream_err(resp->err);
    res.value = coalesce_value_new(resp->errmsg, strlen(resp->errmsg));
    if (fx->lease != NULL)
      fleet_abandon(fx->lease);
    fx->lease = NULL;
    coalesce_fetch_done(fx->fetch, &res);
    coalesce_value_release(res.value);
    fetchctx_free(fx);
    return;
  }
  LOG_INFO("upstream_call", "upstream=%s status=%d ms=%.1f reused=%d",
           fx->aup ? fx->aup->name : "-", resp->status,
           (double)resp->total_time_us / 1000.0, resp->reused);
  observe_quota(fx->aup, resp);
  coalesce_value_t *v = build_response(resp, fx->stale);
  if (v == NULL) {
    fail_fetch(fx, COALESCE_ENOMEM, 0, "out of memory");
    return;
  }
  const config_route_t *rt = fx->route;
  policy_route_t pr = {.mode = rt->policy == CONFIG_POLICY_ORIGIN
                                   ? POLICY_ORIGIN
                                   : POLICY_OVERRIDE,
                       .ttl_ns = ms2ns(rt->ttl_ms),
                       .swr_ns = ms2ns(rt->stale_ms),
                       .sie_ns = ms2ns(rt->stale_if_error_ms),
                       .negative_ttl_ns = ms2ns(rt->negative_ttl_ms)};
  int statuses[64];
  size_t ns = rt->ncache_statuses < 64 ? rt->ncache_statuses : 64;
  for (size_t i = 0; i < ns; i++)
    statuses[i] = rt->cache_statuses[i];
  pr.statuses = statuses;
  pr.n_statuses = ns;
  policy_decision_t d;
  const response_t *r = response_of(v);
  policy_decide(&pr, r, fx->authorized, time(NULL), &d);
  res.value = v;
  res.flags = COALESCE_RESULT_TTL;
  res.ttl = d.ttl;
  res.retry_after_ns = d.retry_after_ns;
  if (d.failure)
    res.flags |= COALESCE_RESULT_FAILURE;
  if (!d.store)
    res.flags |= COALESCE_RESULT_NOSTORE;
  if (!d.share)
    res.flags |= COALESCE_RESULT_NOSHARE;

  size_t vl = 0;
  const char *vary = response_header(r, "vary", &vl);
  if (vary != NULL && d.share && !fx->vary_keyed) {
    /* First answer with Vary for this URL: store it under its variant key
     * and remember the Vary list; this flight's followers may have other
     * header values, so they retry and key on the variant themselves. */
    cachekey_t variant, rec;
    cachekey_init(&variant);
    cachekey_init(&rec);
    /* exactly the bytes build_key() starts from before adding Vary */
    cachekey_copy(&variant, fx->primary.data, fx->primary.len);
    if (cachekey_add_vary(&variant, vary, vl, fx_header, fx) && d.store &&
        !variant.oom) {
      (void)coalesce_cache_put(app->cache, variant.data, variant.len, v,
                               &d.ttl);
      vary_record_key(&fx->primary, &rec);
      /* before the record exists (recfilter.h: ordering) */
      recfilter_add(&app->vary_records,
                    recfilter_hash(fx->primary.data, fx->primary.len, 0));
      coalesce_value_t *list = coalesce_value_new(vary, vl);
      coalesce_ttl_t rttl = d.ttl;
      rttl.sie_ns += ms2ns(rt->stale_if_error_ms);
      if (list != NULL && !rec.oom)
        (void)coalesce_cache_put(app->cache, rec.data, rec.len, list, &rttl);
      coalesce_value_release(list);
    }
    res.flags |= COALESCE_RESULT_NOSTORE | COALESCE_RESULT_NOSHARE;
    cachekey_free(&variant);
    cachekey_free(&rec);
  }
  if (!d.store && d.why != NULL)
    LOG_DEBUG("not_stored", "status=%d reason=%s", r->status, d.why);
  if (fx->lease != NULL) {
    /* the fleet gets what the local cache would store; a first answer with
     * Vary is stored under its variant locally only */
    if ((res.flags & (COALESCE_RESULT_NOSTORE | COALESCE_RESULT_NOSHARE)) == 0)
      fleet_publish(fx->lease, v, &d.ttl, NULL, NULL);
    else
      fleet_abandon(fx->lease);
    fx->lease = NULL;
  }
  coalesce_fetch_done(fx->fetch, &res);
  coalesce_value_release(v);
  fetchctx_free(fx);
}

void proxy_fetch_start(void *ud, const void *key, size_t keylen,
                       void *fetch_ctx, coalesce_value_t *stale,
                       coalesce_fetch_t *fetch) {
  app_t *app = ud;
  preq_t *p = fetch_ctx;
  fetchctx_t *fx = calloc(1, sizeof *fx);
  coalesce_fetch_result_t fail = {.err = COALESCE_ENOMEM};
  if (fx == NULL || p == NULL) {
    free(fx);
    coalesce_fetch_done(fetch, &fail);
    return;
  }
  fx->app = app;
  fx->w = p->w;
  fx->fetch = fetch;
  fx->cfg = p->cfg;
  fx->route = p->route;
  fx->up = p->up;
  fx->aup = p->aup;
  fx->stale = coalesce_value_ref(stale);
  fx->authorized = http_request_header(p->req, "authorization", NULL) != NULL;
  fx->vary_keyed = p->vary_keyed;
  cachekey_init(&fx->primary);
  /* the flight's key is the primary key unless it already holds Vary */
  if (!p->vary_keyed)
    cachekey_copy(&fx->primary, key, keylen);
  if (p->batch_id != NULL && !p->vary_keyed) {
    /* a batch route's single id: gathered with others into one call */
    size_t n = 0;
    upstream_header_t *h = upstream_headers(p->up, p->req->headers,
                                            p->req->nheaders, true, NULL, &n);
    if (h == NULL) {
      fetchctx_free(fx);
      coalesce_fetch_done(fetch, &fail);
      return;
    }
    batch_req_t br = {.route = p->route,
                      .upstream = p->up,
                      .join = p->route->batch_join,
                      .base_target = p->batch_base,
                      .base_target_len = p->batch_base_len,
                      .id = p->batch_id,
                      .id_len = p->batch_id_len,
                      .headers = h,
                      .nheaders = n,
                      .authorized = fx->authorized,
                      .max_response_bytes = p->cfg->server.max_response_bytes,
                      .breaker = p->aup ? p->aup->breaker : NULL};
    batch_add(p->w->batch, &br, fetch);
    free(h);
    fetchctx_free(fx);
    return;
  }
  /* Everything the call needs is copied into fx now: the fleet step below
   * may answer after the request that led the flight is gone. */
  if (copy_headers(fx, p->req) != 0 ||
      set_url(fx, p->target, p->target_len) != 0) {
    fetchctx_free(fx);
    coalesce_fetch_done(fetch, &fail);
    return;
  }
  if (p->w->fleet != NULL && !p->solo) {
    fleet_acquire(p->w->fleet, key, keylen, p->cfg->redis.lock_ttl_ms, on_fleet,
                  fx);
    return;
  }
  call_upstream(fx);
}

/* Ends a flight's call that never reached the upstream. */
static void fail_fetch(fetchctx_t *fx, int err, unsigned flags,
                       const char *msg) {
  coalesce_fetch_result_t res = {.err = err, .flags = flags};
  res.value = coalesce_value_new(msg, strlen(msg));
  if (fx->lease != NULL)
    fleet_abandon(fx->lease); /* release the fleet lease: waiters go alone */
  fx->lease = NULL;
  coalesce_fetch_done(fx->fetch, &res);
  coalesce_value_release(res.value);
  fetchctx_free(fx);
}

/* The flight's upstream call, after the fleet step (if any): spends a call
 * of the local budget, then sends. */
static void call_upstream(fetchctx_t *fx) {
  if (!take_quota(fx->aup)) {
    fail_fetch(fx, COALESCE_EQUOTA, COALESCE_RESULT_NO_CALL,
               "local budget for this upstream is spent");
    return;
  }
  int rc =
      send_call(fx, "GET", fx->hdrs, fx->nhdrs, true, NULL, 0, on_fetch_done);
  if (rc != 0)
    fail_fetch(fx, COALESCE_EFETCH, 0, upstream_strerror(rc));
}

/* Fleet mode: another instance's answer from Redis (HIT), our lease to
 * fetch for the fleet (LEAD), or a local call when Redis cannot help. */
static void on_fleet(void *ud, const fleet_result_t *res) {
  fetchctx_t *fx = ud;
  if (res->outcome == FLEET_HIT) {
    coalesce_fetch_result_t r = {.value = res->value,
                                 .flags = COALESCE_RESULT_TTL |
                                          COALESCE_RESULT_NO_CALL,
                                 .ttl = res->ttl};
    coalesce_fetch_done(fx->fetch, &r);
    coalesce_value_release(res->value);
    fetchctx_free(fx);
    return;
  }
  if (res->outcome == FLEET_LEAD)
    fx->lease = res->lease;
  call_upstream(fx);
}

/* ---- pass-through (non-GET/HEAD) ---------------------------------------- */

static void on_pass_done(void *ud, upstream_response_t *resp) {
  fetchctx_t *fx = ud;
  preq_t *p = fx->pass;
  metrics_upstream_call(fx->app->metrics, fx->aup ? fx->aup->metric : -1,
                        resp->status, resp->err, resp->total_time_us);
  metrics_upstream_attempts(fx->app->metrics, fx->aup ? fx->aup->metric : -1,
                            resp->attempts);
  metrics_add(&fx->app->metrics->passthrough, 1);
  if (resp->err == 0)
    observe_quota(fx->aup, resp);
  LOG_INFO("upstream_call", "upstream=%s method=%s status=%d ms=%.1f",
           fx->aup ? fx->aup->name : "-", p->req->method_name, resp->status,
           (double)resp->total_time_us / 1000.0);
  fetchctx_free(fx);
  if (p->aborted) {
    preq_release(p);
    return;
  }
  http_conn_set_abort(p->conn, NULL, NULL);
  if (resp->err == UPSTREAM_ENOFD) {
    send_error(p, 503, METRIC_ERR_OVERLOADED, upstream_strerror(resp->err),
               "BYPASS", 1);
    return;
  }
  if (resp->err != 0) {
    bool timeout = resp->err == UPSTREAM_ETIMEOUT;
    send_error(p, timeout ? 504 : 502,
               timeout ? METRIC_ERR_UPSTREAM_TIMEOUT
                       : METRIC_ERR_UPSTREAM_ERROR,
               resp->errmsg, "BYPASS", 0);
    return;
  }
  coalesce_value_t *v = build_response(resp, NULL);
  if (v == NULL) {
    send_error(p, 503, METRIC_ERR_OVERLOADED, "out of memory", "BYPASS", 1);
    return;
  }
  enum http_method m = p->req->method;
  if (resp->status >= 200 && resp->status < 400 &&
      (m == HTTP_POST || m == HTTP_PUT || m == HTTP_DELETE ||
       m == HTTP_PATCH)) {
    /* RFC 9111 §4.4: a successful unsafe request invalidates its target
     * and the same-origin Location / Content-Location */
    invalidate_target(p->app, p->route, p->target, p->target_len);
    const response_t *r = response_of(v);
    size_t ll;
    const char *loc = response_header(r, "location", &ll);
    if (loc != NULL)
      invalidate_location(p, loc, ll);
    loc = response_header(r, "content-location", &ll);
    if (loc != NULL)
      invalidate_location(p, loc, ll);
  }
  send_value(p, v, "BYPASS", response_of(v)->upstream_age, METRIC_SRC_PASS);
}

static void on_pass_abort(void *ud, http_conn_t *conn) {
  (void)conn;
  ((preq_t *)ud)->aborted = true; /* released when the call ends */
}

static void preq_start_pass(preq_t *p) {
  if (!take_quota(p->aup)) {
    send_error(p, 429, METRIC_ERR_QUOTA,
               "the local budget for this upstream is spent", "BYPASS",
               atomic_load(&p->aup->quota_wait_s));
    return;
  }
  fetchctx_t *fx = calloc(1, sizeof *fx);
  if (fx == NULL) {
    send_error(p, 503, METRIC_ERR_OVERLOADED, "out of memory", "BYPASS", 1);
    return;
  }
  fx->app = p->app;
  fx->w = p->w;
  fx->pass = p;
  fx->cfg = p->cfg;
  fx->route = p->route;
  fx->aup = p->aup;
  cachekey_init(&fx->primary);
  fx->up = p->up;
  int rc = set_url(fx, p->target, p->target_len);
  if (rc == 0)
    rc = send_call(fx, p->req->method_name, p->req->headers, p->req->nheaders,
                   false, p->req->body, p->req->body_len, on_pass_done);
  if (rc != 0) {
    fetchctx_free(fx);
    send_error(p, 502, METRIC_ERR_UPSTREAM_ERROR, upstream_strerror(rc),
               "BYPASS", 0);
    return;
  }
  http_conn_set_abort(p->conn, on_pass_abort, p);
}

/* ---- entry ----------------------------------------------------------------
 */

void proxy_on_request(void *ud, http_conn_t *conn, const http_request_t *req) {
  worker_t *w = ud;
  app_t *app = w->app;
  /* room for the normalised target (never longer than this) after p */
  size_t cap = req->path_len * 3 + req->query_len * 3 + 4;
  preq_t *p = preq_alloc(w, cap);
  if (p == NULL) {
    http_conn_send_error(conn, 503, "overloaded", "out of memory");
    return;
  }
  memset(p, 0, PREQ_ZEROED);
  p->target = p->target_mem;
  p->w = w;
  p->app = app;
  p->conn = conn;
  p->req = req;
  p->cfg = app_config(app);
  cachekey_init(&p->key);
  p->route = config_match_route(p->cfg, req->path, req->path_len);
  if (p->route == NULL) {
    send_error(p, 404, METRIC_ERR_NO_ROUTE, "no route matches this path",
               "MISS", 0);
    return;
  }
  p->up = &p->cfg->upstreams[p->route->upstream];
  p->aup = app_upstream(app, p->up->name);

  long pl = cachekey_normalize_path(req->path, req->path_len, p->target, cap);
  long ql = pl < 0 ? -1
                   : cachekey_canonical_query(req->query, req->query_len,
                                              p->target + pl + 1,
                                              cap - (size_t)pl - 1);
  if (pl < 0 || ql < 0) {
    send_error(p, 400, METRIC_ERR_BAD_REQUEST,
               "invalid characters or escapes in the request target", "MISS",
               0);
    return;
  }
  p->target_len = (size_t)pl;
  if (ql > 0) {
    p->target[pl] = '?';
    p->target_len += 1 + (size_t)ql;
  }
  p->target[p->target_len] = '\0';

  if (req->method == HTTP_GET || req->method == HTTP_HEAD) {
    p->head = req->method == HTTP_HEAD;
    if (p->route->batch_param != NULL) {
      p->batch_base = malloc(p->target_len + 1);
      batch_str_t id = {0};
      if (p->batch_base != NULL &&
          batch_split_target(p->target, p->target_len, p->route->batch_param,
                             p->route->batch_join, p->batch_base,
                             p->target_len + 1, &p->batch_base_len, &id) == 0) {
        p->batch_id = id.p;
        p->batch_id_len = id.len;
      } else {
        free(p->batch_base); /* not a single-id request: served alone */
        p->batch_base = NULL;
      }
    }
    preq_start_cacheable(p);
  } else {
    preq_start_pass(p);
  }
}
