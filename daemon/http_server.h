/*
 * http_server.h — coalesced's HTTP/1.1 server layer: listeners, connections,
 * request parsing (libhttp-parser), limits, timeouts, keep-alive and
 * pipelining. The request logic (proxy, admin) plugs in through one
 * callback, on_request, and answers with http_conn_send*. Implemented by
 * http_server.c (listener), http_conn.c (connections), http_request.c
 * (parsing).
 *
 * Threading: a server belongs to the libuv loop it was created on. Every
 * function here must be called on that loop's thread, except
 * http_server_stats and http_server_conn_count (any thread; relaxed atomics,
 * for /metrics on the admin loop). N worker loops each call
 * http_server_listen with opts.reuseport on the same address and the kernel
 * spreads connections over them.
 *
 * One request at a time per connection. Bytes that arrive while a request
 * is with the handler (pipelining) are buffered (bounded; reading pauses
 * when the buffer is full) and parsed only after its response has been
 * written, so responses go out in request order. "Expect: 100-continue"
 * gets "100 Continue" once the head is accepted (or 413 at once when the
 * announced body is over the limit).
 *
 * THE REQUEST RULE (memory safety). on_request hands the handler a request
 * that it must finish exactly once, by one of:
 *   - http_conn_send / http_conn_send_simple / http_conn_send_error — even
 *     when these return an error, the request is finished;
 *   - http_conn_release — after an abort, or to give up without answering
 *     (the server then closes the connection).
 * After finishing, the handler must not touch `conn` again (it may be freed
 * at once). Until then `conn` and the request memory stay valid, even if
 * the client has gone: a client that disconnects while its request is with
 * the handler makes the server call the abort hook (http_conn_set_abort),
 * once; the handler should then detach and call http_conn_release, and any
 * send it still makes returns UV_ECANCELED without writing. (A client that
 * half-closes after its request counts as gone: a FIN cannot be told
 * from a departure until we write.)
 * Answering synchronously inside on_request is fine.
 *
 * Request hygiene (request-smuggling safe; Debian builds http-parser in
 * NON-strict mode, so the head is also checked here): NUL bytes, bare CR,
 * obs-fold, invalid header names or values, a malformed request line or
 * version, both Transfer-Encoding and Content-Length, several
 * Content-Length or Transfer-Encoding fields, a transfer coding other than
 * "chunked", a missing or repeated Host (HTTP/1.1) are answered 400 (CONNECT
 * 405, HTTP/2+ 505), always with Connection: close, and the connection is
 * closed once the answer is written. Absolute-form targets are accepted but
 * flagged (absolute_form) and reduced to path and query: their authority
 * must never choose an upstream.
 *
 * Errors are negative libuv codes (uv_strerror / uv_err_name name them).
 */
#ifndef COALESCED_HTTP_SERVER_H
#define COALESCED_HTTP_SERVER_H

#include <http_parser.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

typedef struct http_server http_server_t;
typedef struct http_conn http_conn_t;

/* One header field as received. Names keep the client's case; values have
 * surrounding whitespace removed. Both are NUL-terminated as well. */
typedef struct http_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} http_header_t;

/* A complete request. Every pointer is valid until the request is finished
 * (see THE REQUEST RULE) and, for http_conn_send, until `written` has run —
 * so a response may point into the request. All strings are also
 * NUL-terminated. */
typedef struct http_request {
  enum http_method method;
  const char *method_name; /* "GET", static */
  const char *target;      /* raw request-target, as sent */
  size_t target_len;
  const char *path; /* "/x/y" (origin-form, or the path of absolute-form) */
  size_t path_len;
  const char *query; /* after '?', without it; "" when none */
  size_t query_len;
  bool absolute_form; /* target was "scheme://authority/...": never use it */
  unsigned short http_major, http_minor;
  bool keep_alive; /* http_should_keep_alive(); false also for Upgrade */
  const http_header_t *headers;
  size_t nheaders;
  const char *body; /* de-chunked; "" with body_len 0 when there is none */
  size_t body_len;
  uint64_t arrival_ns;   /* uv_hrtime() when its first byte was parsed */
  const char *peer_addr; /* "127.0.0.1", "::1" */
  uint16_t peer_port;
} http_request_t;

typedef void (*http_request_cb)(void *ud, http_conn_t *conn,
                                const http_request_t *req);
typedef void (*http_abort_cb)(void *ud, http_conn_t *conn);
typedef void (*http_written_cb)(void *ud, int status);

/* Zero means "the default" for every number. Copied by http_server_listen. */
typedef struct http_server_opts {
  http_request_cb on_request; /* required */
  void *ud;
  bool reuseport;             /* SO_REUSEPORT: several listeners, one port */
  int backlog;                /* listen(2) backlog; default 511 */
  unsigned max_connections;   /* beyond it: 503 overloaded + close; default 0:
                                 unlimited */
  _Atomic unsigned *conn_counter; /* optional: a counter several servers
                                     share, so max_connections holds for
                                     them together (one per process) */
  size_t max_header_bytes;    /* header section (after the request line),
                                 raw bytes; 431 beyond; default 32 KiB */
  unsigned max_headers;       /* header fields; 431 beyond; default 100 */
  size_t max_uri_bytes;       /* request-target; 414 beyond; default 8 KiB */
  size_t max_body_bytes;      /* de-chunked body; 413 beyond; default 1 MiB */
  unsigned header_timeout_ms; /* the whole head must arrive within it
                                 (from accept, or from the first byte of a
                                 later request); default 10 s */
  unsigned idle_timeout_ms;   /* keep-alive idle, body stall (between
                                 reads), and the time a response write may
                                 take; default 60 s */
  const char *server_name;    /* "Server:" on http_conn_send_simple answers;
                                 NULL for none; copied */
} http_server_opts_t;

/* Counters since listen; a consistent-enough snapshot for metrics. */
typedef struct http_server_stats {
  uint64_t connections_accepted; /* excludes rejected_overloaded */
  uint64_t connections_open;
  uint64_t requests;                  /* handed to on_request */
  uint64_t rejected_overloaded;       /* 503: max_connections reached */
  uint64_t rejected_bad_request;      /* 400, 405, 505 */
  uint64_t rejected_uri_too_long;     /* 414 */
  uint64_t rejected_header_too_large; /* 431: bytes or count */
  uint64_t rejected_body_too_large;   /* 413 */
  uint64_t timeouts_request;          /* head or body not received in time */
  uint64_t timeouts_idle;             /* keep-alive idle or write stall */
  uint64_t client_aborts;             /* client left while its request was
                                         with the handler */
} http_server_stats_t;

/* Binds host:port (an IPv4 or IPv6 literal; "[::1]" accepted), listens and
 * accepts on `loop`. Port 0 picks a free port (http_server_port). On
 * success returns 0 and *out; on error a negative libuv code (UV_EINVAL for
 * a bad host or opts, UV_EADDRINUSE, UV_EACCES, ...) and *out untouched. */
int http_server_listen(uv_loop_t *loop, const char *host, uint16_t port,
                       const http_server_opts_t *opts, http_server_t **out);

/* The bound port. */
uint16_t http_server_port(const http_server_t *srv);

/* Closes the listening socket; open connections carry on. Idempotent. */
void http_server_stop_accepting(http_server_t *srv);

/* Graceful shutdown: stops accepting, closes idle connections at once, lets
 * a connection that is receiving or handling a request answer it and then
 * close, and calls done(ud) once every connection is gone and every
 * handler has finished its request (a handler that never finishes keeps it
 * waiting). `srv` is freed when done returns. done may run before this
 * returns, or from inside the http_conn_* call that finished the last
 * request. Call once. */
void http_server_close(http_server_t *srv, void (*done)(void *ud), void *ud);

/* Connections currently allocated (open, or aborted awaiting release).
 * Any thread. */
unsigned http_server_conn_count(const http_server_t *srv);

/* Any thread. */
void http_server_stats(const http_server_t *srv, http_server_stats_t *out);

/* ------------------------------------------------------------ requests */

/* First field named `name` (case-insensitive); NULL if absent. *len gets
 * the value's length when len is not NULL. */
const char *http_request_header(const http_request_t *req, const char *name,
                                size_t *len);

/* --------------------------------------------------------- responding */

/* Registers the hook called (once, on the loop thread) if the client goes
 * away while this conn's request is with the handler. Call only between
 * on_request and finishing; NULL cb unregisters. */
void http_conn_set_abort(http_conn_t *conn, http_abort_cb cb, void *ud);

/* True when the connection will be closed after this request's response
 * (client asked for it, HTTP/1.0 without keep-alive, Upgrade, or the server
 * is shutting down): a caller building its own head should then write
 * "Connection: close". */
bool http_conn_will_close(const http_conn_t *conn);

uv_loop_t *http_conn_loop(const http_conn_t *conn);

/* Sends the complete response (head + body) in `bufs` with one uv_write;
 * the caller keeps the bytes alive until written(ud, status) runs (status
 * 0, or < 0 if the write failed or the connection was lost). Finishes the
 * request. Afterwards the connection closes if close_after or
 * http_conn_will_close, else goes on to the next request. Returns 0, or < 0
 * (UV_ECANCELED after an abort) in which case written is never called and
 * the buffers are the caller's again. written may be NULL. */
int http_conn_send(http_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs,
                   bool close_after, http_written_cb written, void *ud);

/* Builds and sends a small complete response, copying everything: status
 * line, Date, Server (if configured), Content-Type (if not NULL),
 * Content-Length, Connection (close, or keep-alive for an HTTP/1.0
 * keep-alive client), `extra_headers` (complete "Name: value\r\n" lines or
 * NULL), then the body (omitted for HEAD, 1xx, 204, 304). Finishes the
 * request; returns as http_conn_send. */
int http_conn_send_simple(http_conn_t *conn, int status,
                          const char *content_type, const char *extra_headers,
                          const void *body, size_t len, bool close_after);

/* Sends {"error":CODE,"message":MESSAGE} (both JSON-escaped) as
 * application/json through http_conn_send_simple; see DESIGN.md §3 for the
 * codes. The connection stays open (keep-alive rules permitting) except
 * after 400, 408, 413, 414 and 431, after which the client's framing is
 * suspect and it is closed. Finishes the request. */
int http_conn_send_error(http_conn_t *conn, int status, const char *code,
                         const char *message);

/* Finishes the request without answering: after an abort, or to give up
 * (the connection is then closed). */
void http_conn_release(http_conn_t *conn);

/* ---------------------------------------------------------- utilities */

/* http_status_reason(): see http_status.h */
#include "http_status.h"

#define HTTP_DATE_LEN 30 /* "Sun, 06 Nov 1994 08:49:37 GMT" + NUL */
/* IMF-fixdate of `t`, locale-independent. Returns buf. */
char *http_format_date(char buf[HTTP_DATE_LEN], time_t t);

/* Writes the JSON string literal of `s` (with quotes) into buf, escaping
 * quote, backslash and control bytes; truncates safely to fit (never
 * splits an escape). Returns the length written, excluding the NUL. */
size_t http_json_quote(char *buf, size_t bufsize, const char *s);

#endif
