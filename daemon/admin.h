/*
 * admin.h — coalesced's admin listener: the statistics, health, reset and
 * Prometheus endpoints of DESIGN.md §3, served on their own port (loopback
 * by default) by the admin loop thread.
 *
 *   GET  /                                         index of the endpoints
 *   GET  /api/v1/shared/deduplication/stats        JSON figures
 *   GET  /api/v1/shared/deduplication/health       JSON, 200 or 503
 *   POST /api/v1/shared/deduplication/stats/reset  counters to zero (token)
 *   GET  /metrics                                  Prometheus text 0.0.4
 *
 * Invariants:
 *   - Read-only except the reset: every figure is read from the shared
 *     app_t through thread-safe snapshots (library stats, relaxed metric
 *     atomics, app_http_stats); the admin thread never takes a lock a
 *     worker holds on its hot path for longer than a snapshot.
 *   - No secret is ever written out: no header values, no admin token, no
 *     Redis URL or password — only names, states and counts.
 *   - The builders below are pure functions of the app's state, so tests
 *     call them without a server; admin_on_request only routes and sends.
 */
#ifndef COALESCED_ADMIN_H
#define COALESCED_ADMIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "app.h"
#include "http_server.h"
#include "metrics.h"

#define ADMIN_PATH_STATS "/api/v1/shared/deduplication/stats"
#define ADMIN_PATH_HEALTH "/api/v1/shared/deduplication/health"
#define ADMIN_PATH_RESET "/api/v1/shared/deduplication/stats/reset"
#define ADMIN_PATH_METRICS "/metrics"

/* The admin server's on_request (ud is the app_t *). Runs on the admin
 * loop; answers synchronously, so it always finishes the request. */
void admin_on_request(void *ud, http_conn_t *conn, const http_request_t *req);

/* The stats document (a new reference, NULL on allocation failure). */
json_t *admin_stats_json(app_t *app);

/* The health document; *http_status gets 200 (healthy, degraded) or 503
 * (unhealthy). NULL on allocation failure. */
json_t *admin_health_json(app_t *app, int *http_status);

/* The Prometheus text exposition (format 0.0.4), NUL-terminated, malloc'd;
 * *len gets its length. NULL on allocation failure. */
char *admin_metrics_text(app_t *app, size_t *len);

/* Whether `given` (given_len bytes, need not be NUL-terminated) equals the
 * token `want`. The time taken depends only on strlen(want), never on
 * where the two differ nor on given's length, so a caller cannot learn the
 * token byte by byte. */
bool admin_token_equal(const char *given, size_t given_len, const char *want);

/* Whether req may reset: true when no admin token is configured, else when
 * it carries "Authorization: Bearer TOKEN" or "X-Admin-Token: TOKEN". */
bool admin_authorized(app_t *app, const http_request_t *req);

/* Seconds since app->started_ns on the monotonic clock. */
double admin_uptime_seconds(const app_t *app);

/* Estimates the q-quantile (0 < q <= 1) of one upstream's latency
 * histogram in seconds, interpolating linearly inside the bucket that holds
 * it (as Prometheus' histogram_quantile does); the +Inf bucket reports the
 * largest finite bound. 0 when the histogram is empty. */
double admin_latency_quantile(const metrics_upstream_t *u, double q);

#endif
