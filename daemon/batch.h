/*
 * batch.h — request batching, the DataLoader at the proxy (DESIGN.md §5).
 *
 * A route with `batch_param` serves single-id requests (GET /v1/items?id=5).
 * The proxy keys and coalesces them as usual, so a cached id never gets here
 * and an id asked twice at once is one flight. When the loader starts the
 * fetch for such a flight, the proxy hands the flight's fetch token to
 * batch_add instead of calling the upstream. Ids that share a group — same
 * route, upstream, base target (the request without its id parameter),
 * join and forwarded-header identity — are gathered for `batch_window`
 * from every worker loop and go out as ONE upstream call
 * (`?id=1&id=2` or `?ids=1,2`), at most `batch_max` ids per call. The
 * answer is split per id (batch_split.h), each part becomes a response_t
 * with the batch's status and headers, gets its own TTL from policy_decide,
 * and completes that id's token with coalesce_fetch_done: it is cached
 * under exactly the key a single-id request has, and its waiters see MISS /
 * COALESCED as for any flight.
 *
 * Outcomes per id: found -> the batch status and headers, body = the item
 * (wrapped per `batch_item_wrap`); absent from the answer -> 404
 * {"error":"not_found","id":ID}, stored only when the route has a
 * negative_ttl; non-2xx batch answer -> that same response for every id;
 * transport error -> the same error for every id (COALESCE_EFETCH or
 * COALESCE_EUPSTREAM_TIMEOUT with the message as value); a 2xx answer that
 * is not JSON or has nothing at the id path -> COALESCE_EFETCH with a
 * message (the proxy's 502); the worker loop closing -> COALESCE_ECANCELED.
 * Every token handed to batch_add is completed exactly once, on some
 * thread, possibly before batch_add returns (on bad arguments or no memory).
 *
 * Threads and ownership:
 *   - One batcher_t per process (any thread may read its stats). Each
 *     worker loop registers once with batch_loop_new, on its own thread;
 *     batch_add and batch_loop_close run on that loop's thread only.
 *   - The loop that opens a batch (its first id) owns it: its window timer,
 *     its upstream call (through that loop's upstream client) and the
 *     completion of its tokens all happen there. Another loop that fills
 *     the batch to batch_max hands it to the owner through the owner's
 *     uv_async_t (batch.c's own, so this module needs nothing of worker.c).
 *   - One mutex guards the table of open batches and every loop's inbox and
 *     `closed` flag; it is a leaf lock (only uv_async_send is called under
 *     it) and is never held while a token is completed, so a completion
 *     that starts a new load (and batch_add) cannot deadlock.
 *   - batch_req_t fields are copied by batch_add except `route`, `upstream`
 *     and `breaker`, which must outlive the call (the daemon keeps retired
 *     configs until exit, and breakers for good).
 */
#ifndef COALESCED_BATCH_H
#define COALESCED_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "batch_split.h"
#include "coalesce.h"
#include "config.h"
#include "upstream.h"

typedef struct batcher batcher_t;
typedef struct batch_loop batch_loop_t;

/* Ids per upstream call, bucketed (not cumulative): [0] 1 id, [1] 2,
 * [2] 3-4, [3] 5-8, [4] 9-16, [5] 17-32, [6] 33-64, [7] 65-128, [8] 129+.
 * For Prometheus, bucket i's `le` is batch_hist_le[i] (+Inf for the last);
 * sum buckets 0..i for the cumulative count. */
#define BATCH_HIST_BUCKETS 9
extern const unsigned batch_hist_le[BATCH_HIST_BUCKETS - 1];

typedef struct batch_stats {
  uint64_t batches_made;  /* upstream batch calls started */
  uint64_t batched_keys;  /* fetch tokens (keys) those calls answered */
  uint64_t calls_saved;   /* batched_keys - batches_made */
  uint64_t ids_per_batch[BATCH_HIST_BUCKETS];
  uint64_t failed_calls;  /* transport error, non-2xx or malformed answer */
  uint64_t malformed;     /* 2xx answers that could not be split */
  uint64_t missing_ids;   /* ids answered 404 because the answer lacked them */
  uint64_t canceled;      /* tokens failed because their loop closed */
} batch_stats_t;

/* Optional observer of every batch call, e.g. to feed the upstream latency
 * metrics (metrics_upstream_call). Runs on the owner loop's thread. */
typedef void (*batch_call_fn)(void *ud, const config_upstream_t *up,
                              int status, int err, uint64_t total_time_us,
                              size_t nids);

typedef struct batcher_opts {
  batch_call_fn on_call; /* may be NULL */
  void *ud;
} batcher_opts_t;

/* opts may be NULL. NULL on allocation failure. */
batcher_t *batcher_new(const batcher_opts_t *opts);
/* After every batch_loop was closed and its loop has run its close
 * callbacks (the batcher owns the batch_loop_t memory until here). NULL is
 * a no-op. */
void batcher_free(batcher_t *b);

void batcher_stats(batcher_t *b, batch_stats_t *out);
void batcher_stats_reset(batcher_t *b);

/* Registers a worker loop and its upstream client (both must outlive the
 * batch_loop, i.e. until batch_loop_close). Call on the loop's thread. NULL
 * on allocation failure. */
batch_loop_t *batch_loop_new(batcher_t *b, uv_loop_t *loop,
                             upstream_client_t *upstream);

/* On the loop's thread, BEFORE closing its upstream client: batches this
 * loop opened and has not sent are failed with COALESCE_ECANCELED (their
 * calls would need the client), later batch_add calls on it fail the same
 * way, and its async handle is closed. Calls already sent end when the
 * client is closed (UPSTREAM_ECANCELED -> COALESCE_EFETCH per id). */
void batch_loop_close(batch_loop_t *bl);

/* One id of a batch route, as the proxy's leader fetch sees it. */
typedef struct batch_req {
  const config_route_t *route;       /* batch_param/_max/_window/_id_path/
                                        _item_wrap, ttl, policy, statuses,
                                        upstream_timeout */
  const config_upstream_t *upstream; /* url (+ base path), TLS, connect
                                        timeout, name (logs) */
  const char *join; /* route's batch_join (proposed key); NULL = repeat */
  const char *base_target; /* path + '?' + other canonical params, as
                              batch_split_target writes it */
  size_t base_target_len;
  const char *id; /* as in the canonical query (percent-encoded) */
  size_t id_len;
  /* The complete header list of the shared upstream call, as the proxy
   * would send it for this id alone (injected headers included, hop-by-hop
   * and conditionals left out). Copied from the batch's first id. */
  const upstream_header_t *headers;
  size_t nheaders;
  /* What else two ids must share to ride in one call. NULL: every byte of
   * `headers` (safe). The proxy may pass less, e.g. the identity-header
   * part of the cache key, to batch clients whose other headers differ. */
  const void *group;
  size_t group_len;
  bool authorized;            /* the request carried Authorization */
  size_t max_response_bytes;  /* body limit of the batch call; 0 = none */
  coalesce_breaker_t *breaker; /* NULL, or asked once before each batch
                                  call and told its outcome once (then the
                                  loads themselves should carry no breaker,
                                  or one call records one outcome per id) */
} batch_req_t;

/* Adds req's id to its group's open batch (opening one, owned by this
 * loop, if none), and takes over `fetch`: it will be completed exactly
 * once (see the top of this file). An id already in the open batch rides
 * along without being sent twice. Reaching batch_max sends the batch at
 * once; otherwise it goes when the route's batch_window passes. Call on
 * bl's loop thread. */
void batch_add(batch_loop_t *bl, const batch_req_t *req,
               coalesce_fetch_t *fetch);

#endif
