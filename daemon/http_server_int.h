/*
 * http_server_int.h — private to the three files of the HTTP server:
 * http_server.c (listener, shutdown, counters), http_conn.c (connection
 * I/O and answering) and http_request.c (parsing a request off the wire).
 * Other modules use http_server.h.
 *
 * Connection life: accept -> CS_HEAD -> CS_BODY -> CS_PENDING (with the
 * handler) -> CS_WRITING -> back to CS_HEAD (keep-alive) or CS_LINGER
 * (answer written, FIN sent, draining input) -> CS_CLOSING. Any state may
 * jump to CS_CLOSING. A conn is freed only when both its handles are closed
 * AND the handler does not own its request (handler_owns), so a handler can
 * never see freed memory and the server never frees from inside its own
 * call stack (handle closes complete asynchronously).
 */
#ifndef COALESCED_HTTP_SERVER_INT_H
#define COALESCED_HTTP_SERVER_INT_H

#include "freelist.h"
#include "http_server.h"

#include <stdatomic.h>

#define HTTP_CONN_MAGIC 0x48434f4eu   /* "HCON" */
#define HTTP_SERVER_MAGIC 0x48535256u /* "HSRV" */

/* Read buffer of a connection, held only while it is busy (a request being
 * received, answered, or unparsed pipelined bytes) or lingering. Between
 * requests it goes back to the loop's pool, so idle keep-alive connections
 * cost no buffer and a busy one does not malloc/free 16 KiB per request. */
#define HTTP_IN_CAP ((size_t)16 * 1024)
/* Free read buffers a loop keeps (64 x 16 KiB = 1 MiB per loop at most).
 * The pool only has to cover the connections that are between requests at
 * the same moment while others are busy: a loop serving N busy keep-alive
 * connections cycles through at most ~N buffers. 64 covers a sidecar's usual
 * concurrency per worker loop; beyond it the extra buffers are malloc'ed and
 * freed as before, and however many connections sit idle the pool never
 * holds more than 1 MiB. */
#define HTTP_RBUF_POOL_MAX 64u

typedef enum conn_state {
  CS_HEAD,    /* waiting for or receiving a request head */
  CS_BODY,    /* receiving the body */
  CS_PENDING, /* request is with the handler */
  CS_WRITING, /* a response write is in flight */
  CS_LINGER,  /* final response written: FIN sent, discarding input */
  CS_CLOSING, /* uv_close called */
} conn_state_t;

typedef enum timer_kind {
  TK_NONE,
  TK_HEADER, /* head must be complete by then */
  TK_IDLE,   /* keep-alive idle */
  TK_BODY,   /* body stalled */
  TK_WRITE,  /* response write stalled */
  TK_LINGER, /* lingering close */
} timer_kind_t;

/* Pre-scan of the raw head, before http-parser sees it (see http_request.c):
 * raw-byte limits and the checks the non-strict parser does not make. */
typedef struct head_scan {
  size_t line_len;  /* bytes of the current line, CR/LF excluded */
  size_t lines;     /* non-empty lines completed */
  size_t blank;     /* blank-line bytes before the request line */
  size_t hdr_bytes; /* raw bytes after the request line */
  bool prev_cr;
  bool started; /* a byte of this request has been seen */
  char tail[9]; /* last bytes of the request line: " HTTP/1.1" */
  unsigned tail_len;
} head_scan_t;

/* A header while the head is parsed: offsets, as the arena may move. */
typedef struct hdr_ofs {
  size_t name_off, name_len, value_off, value_len;
} hdr_ofs_t;

enum last_cb { CB_NONE, CB_URL, CB_FIELD, CB_VALUE };

#define HTTP_STATS_FIELDS(X)                                                   \
  X(connections_accepted)                                                      \
  X(requests)                                                                  \
  X(rejected_overloaded)                                                       \
  X(rejected_bad_request)                                                      \
  X(rejected_uri_too_long)                                                     \
  X(rejected_header_too_large)                                                 \
  X(rejected_body_too_large)                                                   \
  X(timeouts_request)                                                          \
  X(timeouts_idle)                                                             \
  X(client_aborts)

struct http_server {
  uint32_t magic;
  uv_loop_t *loop;
  uv_tcp_t listener;
  http_server_opts_t opts; /* defaults filled in; server_name owned */
  uint16_t port;
  bool listener_open;   /* uv_close not yet called on listener */
  bool listener_closed; /* its close callback has run */
  /* Out of descriptors (EMFILE): libuv's accept loop would spin on the
   * readable listener, so it is closed and reopened after a pause. */
  struct sockaddr_storage addr;
  uv_timer_t *relisten; /* heap: may outlive a pause; NULL until needed */
  bool paused;
  bool closing; /* http_server_close called */
  void (*done)(void *ud);
  void *done_ud;
  http_conn_t *conns; /* every allocated conn, doubly linked */
  _Atomic unsigned nconns;
  /* Read buffer pool (loop thread only): free buffers linked through their
   * first bytes. The counters are written by the loop thread alone (plain
   * relaxed stores) and readable from any thread (tests). */
  freelist_t rbufs;                             /* free read buffers */
  _Atomic uint64_t rbufs_malloced, rbufs_freed; /* by the pool, ever */
  struct {
#define X(name) _Atomic uint64_t name;
    HTTP_STATS_FIELDS(X)
#undef X
  } stats;
};

struct http_conn {
  uint32_t magic;
  conn_state_t state;
  http_server_t *srv;
  http_conn_t *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer;
  timer_kind_t timer_kind;
  int open_handles; /* tcp + timer until their close callbacks ran */
  bool reading;
  bool handler_owns; /* on_request called, request not finished yet */
  bool aborted;      /* client left while the handler owned the request */
  bool sent_any;     /* some response bytes were queued on this conn */
  bool peer_eof;     /* client half-closed: no further request */
  bool close_after;  /* of the write in flight */

  /* input: [in_off, in_len) not yet parsed */
  char *in;
  size_t in_off, in_len;

  /* the request being received */
  http_parser parser;
  head_scan_t scan;
  int fail_status; /* set by a parser callback that rejects; -1: drop */
  const char *fail_msg;
  bool headers_done, msg_complete, expect_continue;
  enum last_cb last_cb;
  char *head; /* arena: target, names, values, path, query, NUL each */
  size_t head_len, head_cap;
  size_t url_off, url_len;
  hdr_ofs_t *hofs;
  size_t nhdr, hofs_cap;
  http_header_t *hdrs; /* hdrs_cap entries, kept between requests */
  size_t hdrs_cap;
  char *body;
  size_t body_len, body_cap, body_raw;
  http_request_t req;

  /* the handler's hook */
  http_abort_cb on_abort;
  void *abort_ud;

  /* writing: one response at a time, plus a possible 100 Continue */
  uv_write_t wreq, creq;
  uv_shutdown_t sreq;
  char *wowned; /* buffer we built (send_simple, errors), freed on write */
  http_written_cb written;
  void *written_ud;

  char peer_addr[48];
  uint16_t peer_port;
};

/* http_request.c */
extern const http_parser_settings http_req_settings;
/* Scans head bytes [data, data+len): *feed gets how many belong to the head
 * (up to and including its blank line, *head_end set) or len. Returns 0 or
 * an HTTP status to reject with (c->fail_msg set). */
int http_req_scan(http_conn_t *c, const char *data, size_t len, size_t *feed,
                  bool *head_end);
/* Forgets the request (keeps small buffers for the next one). */
void http_req_reset(http_conn_t *c);
/* Frees every request buffer. */
void http_req_free(http_conn_t *c);

/* http_conn.c, for http_request.c: the first byte of a request was seen;
 * the head is complete and valid. */
void http_conn_on_head_start(http_conn_t *c);
void http_conn_on_head_done(http_conn_t *c);

/* http_conn.c, for http_server.c: set up a calloc'ed conn and accept the
 * pending connection into it (on failure it closes itself); close a conn
 * that is between requests or lingering (graceful shutdown). */
void http_conn_accept(http_server_t *s, http_conn_t *c);
void http_conn_close_idle(http_conn_t *c);

/* http_server.c, for http_conn.c: frees the server (after done) if it is
 * closing and nothing is left. Call after a conn is freed. */
void http_server_maybe_done(http_server_t *s);
/* A read buffer of HTTP_IN_CAP bytes from the loop's pool, else malloc'ed;
 * NULL when out of memory. Giving one back pools it, or frees it when the
 * pool is full. */
char *http_server_rbuf_get(http_server_t *s);
void http_server_rbuf_put(http_server_t *s, char *buf);

static inline void http_stat_inc(_Atomic uint64_t *counter) {
  atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

#endif
