/* policy.c — store / share / freshness decisions; see policy.h. */
#include "policy.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cachecontrol.h"

const int policy_default_statuses[] = {200, 203, 204, 300, 301, 404, 410};
const size_t policy_default_n_statuses =
    sizeof policy_default_statuses / sizeof *policy_default_statuses;

/* Statuses a shared cache may store with explicit freshness (RFC 9111 §3,
 * "understood" final statuses); origin mode stores only these. */
static bool understood(int status) {
  return (status >= 200 && status < 600) && status != 206 && status != 304;
}

static bool in_list(int status, const int *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (list[i] == status)
      return true;
  return false;
}

uint64_t policy_retry_after_ns(const char *v, size_t len, time_t now) {
  if (v == NULL || len == 0)
    return 0;
  size_t i = 0;
  uint64_t secs = 0;
  while (i < len && v[i] >= '0' && v[i] <= '9' && secs < 100000000)
    secs = secs * 10 + (uint64_t)(v[i++] - '0');
  if (i == len && len > 0)
    return secs * COALESCE_NS_PER_SEC;
  time_t at;
  if (http_date_parse(v, len, &at))
    return at > now ? (uint64_t)(at - now) * COALESCE_NS_PER_SEC : 0;
  return 0;
}

static uint64_t s2ns(int64_t s) {
  return s <= 0 ? 0 : (uint64_t)s * COALESCE_NS_PER_SEC;
}

void policy_decide(const policy_route_t *route, const response_t *resp,
                   bool request_authorized, time_t now, policy_decision_t *d) {
  memset(d, 0, sizeof *d);
  d->share = true;
  d->store = true;
  int status = resp->status;
  d->failure = status >= 500 || status == 429;

  size_t len = 0;
  const char *v;
  if ((status == 429 || status == 503) &&
      (v = response_header(resp, "retry-after", &len)) != NULL)
    d->retry_after_ns = policy_retry_after_ns(v, len, now);

  ccontrol_t cc;
  cc_init(&cc);
  hdr_t h;
  for (size_t pos = 0; response_next_field(resp, &pos, &h);)
    if (h.name_len == 13 && strncasecmp(h.name, "cache-control", 13) == 0)
      cc_parse(&cc, h.value, h.value_len);
  v = response_header(resp, "vary", &len);
  bool vary_star = false;
  for (size_t i = 0; v != NULL && i < len; i++)
    vary_star |= v[i] == '*';

  if (cc.no_store || cc.private_ || vary_star ||
      response_header(resp, "set-cookie", NULL) != NULL) {
    d->store = false;
    d->share = false;
    d->why = cc.no_store  ? "no-store"
             : cc.private_ ? "private"
             : vary_star   ? "vary-star"
                           : "set-cookie";
    return;
  }

  if (route->mode == POLICY_OVERRIDE) {
    const int *list = route->statuses ? route->statuses : policy_default_statuses;
    size_t n = route->statuses ? route->n_statuses : policy_default_n_statuses;
    if (!in_list(status, list, n)) {
      d->store = false;
      d->why = "status";
      return;
    }
    d->ttl.fresh_ns = route->ttl_ns;
    d->ttl.swr_ns = route->swr_ns;
    d->ttl.sie_ns = route->sie_ns;
    d->ttl.age_ns = s2ns((int64_t)resp->upstream_age); /* for Age */
    if (status >= 400) {
      if (route->negative_ttl_ns == 0) {
        d->store = false;
        d->why = "negative-caching-off";
        return;
      }
      d->ttl.fresh_ns = route->negative_ttl_ns;
      d->ttl.swr_ns = 0; /* an error is not worth serving stale */
      d->ttl.sie_ns = 0;
    }
    return;
  }

  /* origin: RFC 9111 */
  if (!understood(status)) {
    d->store = false;
    d->why = "status";
    return;
  }
  if (request_authorized && !cc.public_ && cc.s_maxage == CC_ABSENT &&
      !cc.must_revalidate) {
    d->store = false; /* §3.5: but the key holds Authorization, so a herd of
                         the same identity may still share it */
    d->why = "authorization";
    return;
  }
  /* §4.2.1 freshness lifetime */
  int64_t lifetime = -1;
  bool explicit_ = true;
  if (cc.s_maxage != CC_ABSENT) {
    lifetime = cc.s_maxage;
  } else if (cc.max_age != CC_ABSENT) {
    lifetime = cc.max_age;
  } else if ((v = response_header(resp, "expires", &len)) != NULL) {
    time_t exp;
    lifetime = http_date_parse(v, len, &exp) ? (int64_t)(exp - resp->date) : 0;
    if (lifetime < 0)
      lifetime = 0;
  } else {
    explicit_ = false;
    lifetime = (int64_t)(route->ttl_ns / COALESCE_NS_PER_SEC);
  }
  if (!explicit_ && !in_list(status, policy_default_statuses,
                             policy_default_n_statuses)) {
    d->store = false;
    d->why = "status";
    return;
  }
  /* §4.2.3 current age at arrival */
  int64_t apparent = (int64_t)(resp->received - resp->date);
  if (apparent < 0)
    apparent = 0;
  int64_t age = apparent > (int64_t)resp->upstream_age ? apparent
                                                       : (int64_t)resp->upstream_age;
  d->ttl.age_ns = s2ns(age);
  int64_t remaining = lifetime - age;
  d->ttl.fresh_ns = s2ns(remaining);
  if (!explicit_)
    d->ttl.fresh_ns = route->ttl_ns;
  if (cc.no_cache)
    d->ttl.fresh_ns = 0; /* stored, but validated before every reuse */
  /* s-maxage implies proxy-revalidate for a shared cache (§5.2.2.10) */
  bool never_stale = cc.must_revalidate || cc.proxy_revalidate ||
                     cc.no_cache || cc.s_maxage != CC_ABSENT;
  d->ttl.swr_ns = never_stale ? 0
                  : cc.stale_while_revalidate != CC_ABSENT
                      ? s2ns(cc.stale_while_revalidate)
                      : route->swr_ns;
  d->ttl.sie_ns = never_stale ? 0
                  : cc.stale_if_error != CC_ABSENT ? s2ns(cc.stale_if_error)
                                                   : route->sie_ns;
  /* §4.3: with a validator, keep the entry after its servable windows so a
   * stale or no-cache entry is revalidated (If-None-Match / 304) instead
   * of fetched whole; it is never served from that window. */
  bool validator = response_header(resp, "etag", NULL) != NULL ||
                   response_header(resp, "last-modified", NULL) != NULL;
  if (validator)
    d->ttl.keep_ns = route->sie_ns > 0 ? route->sie_ns : route->ttl_ns;
  if ((d->ttl.fresh_ns | d->ttl.swr_ns | d->ttl.sie_ns | d->ttl.keep_ns) ==
      0) {
    /* already stale, may not be served stale and cannot be revalidated:
     * nothing worth storing, but still a shareable answer for this flight */
    d->store = false;
    d->why = cc.no_cache ? "no-cache-without-validator" : "stale";
  }
}

void policy_request(const ccontrol_t *req, uint64_t now_ns, policy_request_t *out) {
  memset(out, 0, sizeof *out);
  if (req->no_cache || req->max_age == 0) {
    out->min_stored_ns = now_ns + 1; /* revalidate whatever is stored */
  } else if (req->max_age > 0) {
    uint64_t span = s2ns(req->max_age);
    out->min_stored_ns = now_ns > span ? now_ns - span : 0;
  }
  if (req->max_stale != CC_ABSENT && req->max_stale != INT64_MAX)
    out->max_stale_ns = req->max_stale == 0 ? 1 : s2ns(req->max_stale);
  if (req->min_fresh > 0)
    out->min_fresh_ns = s2ns(req->min_fresh);
  out->only_if_cached = req->only_if_cached;
  out->no_store = req->no_store;
  if (req->stale_if_error != CC_ABSENT) /* 0 s: no stale copy on error */
    out->max_stale_on_error_ns =
        req->stale_if_error == 0 ? 1 : s2ns(req->stale_if_error);
}
