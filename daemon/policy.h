/*
 * policy.h — what coalesced may do with an upstream response.
 *
 * Two policies (DESIGN.md §3):
 *   override — the route's TTL decides freshness (the API-dedup case);
 *   origin   — the upstream's Cache-Control / Expires / Age decide, as an
 *              RFC 9111 shared cache would; the route TTL applies only when
 *              the upstream says nothing.
 * Under both, `no-store`, `private`, `Set-Cookie` and `Vary: *` mean the
 * response is neither stored nor handed to another waiter (invariant 6).
 * 5xx, 429 and transport errors count against the breaker; 429/503 with
 * Retry-After report it.
 */
#ifndef COALESCED_POLICY_H
#define COALESCED_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "coalesce.h"
#include "response.h"

typedef enum policy_mode {
  POLICY_OVERRIDE = 0,
  POLICY_ORIGIN = 1,
} policy_mode_t;

typedef struct policy_route {
  policy_mode_t mode;
  uint64_t ttl_ns; /* override: freshness; origin: when upstream is silent */
  uint64_t swr_ns;
  uint64_t sie_ns;
  const int *statuses; /* cacheable statuses (override); NULL: the default */
  size_t n_statuses;
  uint64_t negative_ttl_ns; /* override: freshness of a 4xx in `statuses`;
                               0 = shared with its flight but never stored
                               (negative caching only where configured) */
} policy_route_t;

typedef struct policy_decision {
  bool store;  /* may enter the shared cache */
  bool share;  /* may be handed to the other waiters of its flight */
  bool failure; /* counts as a breaker failure */
  coalesce_ttl_t ttl;
  uint64_t retry_after_ns;
  const char *why; /* short reason when not stored, for logs */
} policy_decision_t;

/* `request_authorized`: the request carried Authorization (RFC 9111 §3.5). */
void policy_decide(const policy_route_t *route, const response_t *resp,
                   bool request_authorized, time_t now, policy_decision_t *d);

/* What a request's own Cache-Control (RFC 9111 §5.2.1) asks of the cache,
 * as load limits: no-cache / max-age=0 -> revalidate anything stored;
 * max-age=N -> nothing stored more than N s ago; max-stale=N, min-fresh=N;
 * only-if-cached -> never contact the upstream. Used under `origin`. */
#include "cachecontrol.h"
typedef struct policy_request {
  uint64_t min_stored_ns; /* clock reading; entries stored before: revalidate */
  uint64_t max_stale_ns;
  uint64_t min_fresh_ns;
  bool only_if_cached;
  bool no_store; /* §5.2.1.5: do not store this request's answer */
  uint64_t max_stale_on_error_ns; /* RFC 5861 §4 request stale-if-error */
} policy_request_t;
void policy_request(const ccontrol_t *req, uint64_t now_ns, policy_request_t *out);

/* Retry-After as delta-seconds or an HTTP-date; 0 when absent/invalid. */
uint64_t policy_retry_after_ns(const char *v, size_t len, time_t now);

/* Default cacheable statuses under override (heuristically cacheable ones,
 * RFC 9110 §15.1, less 405/414/501/206 which an API proxy should not pin). */
extern const int policy_default_statuses[];
extern const size_t policy_default_n_statuses;

#endif
