/*
 * proxy.h — the request path of DESIGN.md §1 on a worker loop: route,
 * canonical target, cache key, the loader (cache -> coalescer -> breaker ->
 * upstream), and the answer with X-Cache and Age. Other methods pass
 * through to the upstream uncached and uncoalesced.
 */
#ifndef COALESCED_PROXY_H
#define COALESCED_PROXY_H

#include "coalesce.h"
#include "http_server.h"

/* The worker's on_request (ud is the worker_t). */
void proxy_on_request(void *ud, http_conn_t *conn, const http_request_t *req);

/* Frees the worker's pooled request records; after its loop has closed. */
struct worker;
void proxy_worker_cleanup(struct worker *w);

/* The loader's start callback (ud is the app_t): sends the upstream call
 * for a flight this loop leads, or for a background refresh. */
void proxy_fetch_start(void *ud, const void *key, size_t keylen,
                       void *fetch_ctx, coalesce_value_t *stale,
                       coalesce_fetch_t *fetch);

#endif
