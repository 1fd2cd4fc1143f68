/*
 * upstream.h — coalesced's HTTP client for upstream calls: one libcurl multi
 * handle driven by one libuv loop, nothing on the loop ever blocks.
 *
 * Thread model: each worker loop owns exactly one upstream_client_t. Every
 * function here except upstream_global_init/cleanup, upstream_strerror and
 * the upstream_response_* accessors must be called on that loop's thread
 * (checked by assert in debug builds); callbacks run on that thread too.
 *
 * Ownership and lifetimes:
 *   - upstream_fetch copies everything it needs from the request (URL,
 *     method, headers, body, ca_file): the caller may free the request and
 *     its strings as soon as upstream_fetch returns.
 *   - The done callback is called exactly once for every upstream_fetch that
 *     returned 0, never from inside upstream_fetch itself. The response and
 *     everything it points to are valid only during the callback, except the
 *     body, which the callback may take with upstream_response_take_body.
 *   - upstream_client_close cancels outstanding transfers (their callbacks
 *     run, from inside close, with UPSTREAM_ECANCELED) and frees the client
 *     once the loop has run the close callbacks of its uv handles.
 *
 * What goes on the wire: the caller's method, URL and headers, exactly. The
 * client adds only the framing headers it must (Content-Length for a body;
 * curl's default Host when the caller gives none). It never sends Expect or
 * a default Accept, never asks for compression (bodies pass through as
 * sent), never follows redirects, never uses an environment proxy, and
 * does not normalise the path. Which headers a proxy must not forward
 * (hop-by-hop, client credentials) is the caller's business.
 */
#ifndef COALESCED_UPSTREAM_H
#define COALESCED_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* XX(name, value, message). A range of their own (-101...), so they never
 * read as COALESCE_E* codes when they travel through the loader. */
#define UPSTREAM_ERRNO_MAP(XX)                                                 \
  XX(CONNECT, -101, "cannot connect to upstream")                              \
  XX(TIMEOUT, -102, "upstream timed out")                                      \
  XX(TOOBIG, -103, "upstream response too large")                              \
  XX(PROTOCOL, -104, "invalid or truncated upstream response")                 \
  XX(CANCELED, -105, "upstream request canceled")                              \
  XX(NOMEM, -106, "out of memory")                                             \
  XX(INVAL, -107, "invalid upstream request")                                  \
  XX(NOFD, -108, "out of file descriptors for an upstream connection")

enum upstream_errno {
#define UPSTREAM_XX_(name, val, msg) UPSTREAM_E##name = (val),
  UPSTREAM_ERRNO_MAP(UPSTREAM_XX_)
#undef UPSTREAM_XX_
};

/* A static string for any code ("unknown error" if not in the map). */
const char *upstream_strerror(int err);

/* Once per process, before any thread or client exists (curl_global_init is
 * not thread-safe). Returns 0 or UPSTREAM_ENOMEM. */
int upstream_global_init(void);
/* Once, after every client is closed and its loop has drained. */
void upstream_global_cleanup(void);

/* A header as (pointer, length) pairs; request strings need no NUL. */
typedef struct upstream_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} upstream_header_t;

#define UPSTREAM_DEFAULT_MAX_HOST_CONNECTIONS 64
#define UPSTREAM_DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define UPSTREAM_DEFAULT_TIMEOUT_MS 10000u

typedef struct upstream_client_opts {
  /* 0 = default for each field. */
  long max_host_connections;  /* per host:port; default 64. Transfers over
                                 the limit queue inside curl. */
  long max_total_connections; /* all hosts; default unlimited */
  long max_idle_connections;  /* keep-alive pool size; default
                                 max_host_connections */
} upstream_client_opts_t;

typedef struct upstream_request {
  const char *method;               /* any token; NULL = "GET" */
  const char *url;                  /* absolute http:// or https:// URL */
  const upstream_header_t *headers; /* sent in order; Expect, Content-Length
                                       and Transfer-Encoding are dropped
                                       (the client frames the body itself) */
  size_t nheaders;
  /* Sent when body != NULL, and always (maybe empty) for POST/PUT/PATCH. */
  const void *body;
  size_t body_len;
  uint32_t connect_timeout_ms; /* 0 = UPSTREAM_DEFAULT_CONNECT_TIMEOUT_MS */
  uint32_t timeout_ms;         /* whole transfer from upstream_fetch, time
                                  queued for a connection included (loop
                                  clock); 0 = UPSTREAM_DEFAULT_TIMEOUT_MS */
  size_t max_response_bytes;   /* body limit; 0 = unlimited */
  const char *ca_file;         /* PEM bundle; NULL = system store */
  bool tls_insecure;           /* skip certificate and host verification
                                  (zero-initialised requests verify) */
  bool http2;                  /* allow h2 over TLS (ALPN); plain http and
                                  upstreams without h2 stay HTTP/1.1 */
} upstream_request_t;

typedef struct upstream_response {
  int err;            /* 0 or UPSTREAM_E*; when nonzero, status, headers and
                         body may be partial and must not be served */
  const char *errmsg; /* "" on success; short, never echoes the request */
  int status;         /* final status; 0 if none was received */
  int http_version;   /* 10, 11, 20, 30; 0 if unknown */
  /* The final response's headers in wire order (1xx blocks and trailers
   * discarded); names and values are trimmed and NUL-terminated. */
  const upstream_header_t *headers;
  size_t nheaders;
  const char *body; /* NULL when empty or taken */
  size_t body_len;
  uint64_t total_time_us; /* curl's CURLINFO_TOTAL_TIME_T */
  bool reused;            /* a response came on a pooled connection */
  unsigned attempts;      /* requests sent: 2 when libcurl silently re-sent
                             it after a reused connection died unanswered
                             (0 if it never reached the wire) */
  /* private */
  char *body_owned_;
  char errbuf_[128];
} upstream_response_t;

/* Hands the body to the caller, who frees it with free(). Returns NULL (and
 * *len = 0) when the body is empty or was taken already. */
char *upstream_response_take_body(upstream_response_t *resp, size_t *len);

/* The first header named `name` (ASCII case-insensitive), or NULL. */
const upstream_header_t *
upstream_response_header(const upstream_response_t *resp, const char *name);

typedef struct upstream_client upstream_client_t;

typedef void (*upstream_done_fn)(void *ud, upstream_response_t *resp);

/* A client driven by `loop` (opts may be NULL). NULL on allocation or curl
 * failure. */
upstream_client_t *upstream_client_new(uv_loop_t *loop,
                                       const upstream_client_opts_t *opts);

/* Cancels every outstanding transfer (callbacks run before close returns,
 * with UPSTREAM_ECANCELED), then closes the uv handles; the client's memory
 * is freed when the loop runs their close callbacks. May be called from a
 * done callback. NULL is a no-op; the client must not be used afterwards. */
void upstream_client_close(upstream_client_t *c);

/* Starts a transfer. Returns 0 (done will be called exactly once, later), or
 * UPSTREAM_EINVAL (bad method, URL scheme or a header with CR/LF/NUL),
 * UPSTREAM_ENOMEM, UPSTREAM_ECANCELED (client closing); then done is never
 * called. */
int upstream_fetch(upstream_client_t *c, const upstream_request_t *req,
                   upstream_done_fn done, void *ud);

/* Transfers started and not yet completed. */
size_t upstream_client_pending(const upstream_client_t *c);

#endif
