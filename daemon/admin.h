/*
 * admin.h — coalesced's admin listener: the statistics, health, reset and
 * Prometheus endpoints of DESIGN.md §3, served on their own port (loopback
 * by default) by the admin loop thread.
 *
 *   GET  /                                         index of the endpoints
 *   GET  /api/v1/shared/deduplication/stats        JSON figures
 *   GET  /api/v1/shared/deduplication/health       JSON, 200 or 503
 *   POST /api/v1/shared/deduplication/stats/reset  counters to zero (token)
 *   GET  /api/v1/shared/deduplication/flights      hottest keys in flight
 *   GET  /metrics                                  Prometheus text 0.0.4
 *   GET  /dashboard (+ /dashboard.js, .css, .svg)  the live dashboard
 *
 * The dashboard's files are compiled in (daemon/dashboard/, embedded by
 * embed.cmake into admin_assets.c) and served with a strict
 * Content-Security-Policy: the page runs only its own script and style.
 *
 * Invariants:
 *   - Read-only except the reset: every figure is read from the shared
 *     app_t through thread-safe snapshots (library stats, relaxed metric
 *     atomics, app_http_stats); the admin thread never takes a lock a
 *     worker holds on its hot path for longer than a snapshot.
 *   - No secret is ever written out: no header values, no admin token, no
 *     Redis URL or password — only names, states and counts. Cache keys
 *     (which hold identity headers) never leave: a flight is named by a
 *     hash of its key hash keyed with a per-process random seed, so the
 *     name cannot be used to test guesses of a key.
 *   - The builders below are pure functions of the app's state, so tests
 *     call them without a server; admin_on_request only routes and sends.
 */
#ifndef COALESCED_ADMIN_H
#define COALESCED_ADMIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "http_server.h"
#include "metrics.h"

#define ADMIN_PATH_STATS "/api/v1/shared/deduplication/stats"
#define ADMIN_PATH_HEALTH "/api/v1/shared/deduplication/health"
#define ADMIN_PATH_RESET "/api/v1/shared/deduplication/stats/reset"
#define ADMIN_PATH_METRICS "/metrics"
#define ADMIN_PATH_FLIGHTS "/api/v1/shared/deduplication/flights"
#define ADMIN_PATH_DASHBOARD "/dashboard"

#define ADMIN_FLIGHTS_DEFAULT 10 /* flights listed without ?limit= */
#define ADMIN_FLIGHTS_MAX 100    /* largest ?limit= accepted */

/* Headers of every dashboard file: never cached, never framed, never
 * sniffed, and a policy that allows only the page's own files and its
 * calls back to this listener (so no inline script or style runs). */
#define ADMIN_DASHBOARD_CSP                                                    \
  "default-src 'self'; script-src 'self'; style-src 'self'; "                  \
  "img-src 'self'; connect-src 'self'; object-src 'none'; "                    \
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* One compiled-in file of the dashboard. admin_assets[] (generated into
 * the build directory by daemon/dashboard/embed.cmake) ends with an entry
 * whose path is NULL. data has a NUL after its len bytes. */
typedef struct admin_asset {
  const char *path; /* "/dashboard", "/dashboard.js", ... */
  const char *content_type;
  const unsigned char *data;
  size_t len;
} admin_asset_t;

extern const admin_asset_t admin_assets[];

/* The asset served at path (len bytes, need not be NUL-terminated), or
 * NULL. */
const admin_asset_t *admin_asset_find(const char *path, size_t len);

/* The admin server's on_request (ud is the app_t *). Runs on the admin
 * loop; answers synchronously, so it always finishes the request. */
void admin_on_request(void *ud, http_conn_t *conn, const http_request_t *req);

/* The stats document (a new reference, NULL on allocation failure). */
json_t *admin_stats_json(app_t *app);

/* The health document; *http_status gets 200 (healthy, degraded) or 503
 * (unhealthy). NULL on allocation failure. */
json_t *admin_health_json(app_t *app, int *http_status);

/* The flights document: {"pending_requests": N, "limit": L, "flights":
 * [{"key": ID, "waiters": W, "age_ms": A}, ...]} with the `limit` flights
 * that have the most waiters (coalesce_coalescer_top). ID is
 * admin_key_id of the key's hash. NULL on allocation failure. */
json_t *admin_flights_json(app_t *app, size_t limit);

/* A flight's public name: 16 lowercase hex digits of the key hash hashed
 * again with a seed drawn at random once per process (stable for the
 * process's life, meaningless outside it). out gets a NUL-terminated
 * string. Any thread. */
void admin_key_id(uint64_t key_hash, char out[17]);

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
