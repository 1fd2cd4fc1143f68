/*
 * upstream.h — internals shared by the files of testupstream, the fake
 * metered API that integration tests and benchmarks put behind coalesced,
 * nginx and Varnish.
 *
 * Layout: testupstream.c (main, options, listener, signals), conn.c (one
 * client connection: parsing, delays, failure injection, writes),
 * respond.c (what to answer: scenarios, bodies, batch, control API),
 * stats.c (call counters), util.c (byte buffers, query strings).
 *
 * Invariants: everything runs on one libuv loop in one thread, so nothing
 * is locked. A request is counted once, when it has been fully received,
 * and stays "in flight" until its answer is written or its connection is
 * gone. Control requests (/__upstream/...) are never counted, delayed or
 * failed, so a test can always reach them.
 */
#ifndef TESTUPSTREAM_H
#define TESTUPSTREAM_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

/* ------------------------------------------------------------ util.c */

/* Growable byte buffer; data is always NUL-terminated once non-empty.
 * Allocation failure aborts: this is a test tool. */
struct sbuf {
  char *data;
  size_t len, cap;
};

void sb_putn(struct sbuf *sb, const char *s, size_t n);
void sb_puts(struct sbuf *sb, const char *s);
void sb_putc(struct sbuf *sb, char c);
void sb_printf(struct sbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void sb_json_str(struct sbuf *sb, const char *s, size_t n);
void sb_fill(struct sbuf *sb, char c, size_t n);
void sb_consume(struct sbuf *sb, size_t n); /* drop n bytes from the front */
void sb_free(struct sbuf *sb);

void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrndup(const char *s, size_t n);

/* Decoded query parameters in order of appearance; owns its strings. */
struct kv {
  char *key, *val;
};
struct kvlist {
  struct kv *v;
  size_t n, cap;
};

/* Decodes %XX escapes and '+'; returns a new NUL-terminated string. */
char *url_decode(const char *s, size_t n);
/* Appends the parameters of a raw query string ("a=1&b=%20x", '+' is a
 * space), URL-decoded. */
void kv_parse(struct kvlist *kl, const char *q, size_t len);
void kv_add(struct kvlist *kl, const char *key, const char *val);
/* Last value of key, or NULL. */
const char *kv_get(const struct kvlist *kl, const char *key);
void kv_free(struct kvlist *kl);

/* RFC 9110 IMF-fixdate; buf needs 30 bytes. */
void http_date(time_t t, char *buf, size_t cap);
/* Parses an IMF-fixdate; returns -1 when it is not one. */
time_t http_date_parse(const char *s);

/* ----------------------------------------------------------- stats.c */

/* Counters keyed by string, kept in first-seen order for stable output. */
struct counter {
  char *key;
  uint64_t count;
};
struct cmap {
  struct counter *v;
  size_t n, cap;
  uint32_t *index; /* open addressing over v, 0 = empty, else i + 1 */
  size_t index_cap;
};

struct stats {
  uint64_t total, inflight, max_inflight;
  uint64_t conns_open, conns_accepted;
  struct cmap paths, methods;
};

/* Counts one call of method on key (path?query); returns the global and
 * per-key sequence numbers of this call through seq and path_seq. */
void stats_count(struct stats *st, const char *key, size_t klen,
                 const char *method, uint64_t *seq, uint64_t *path_seq);
void stats_done(struct stats *st); /* a counted request has finished */
void stats_reset(struct stats *st);
void stats_json(const struct stats *st, struct sbuf *out, bool with_paths);
void stats_free(struct stats *st);

/* ------------------------------------------------------------ server */

struct conn;

struct server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_signal_t sigterm, sigint;
  struct conn *conns; /* every open connection, for shutdown */
  struct stats stats;
  struct kvlist config; /* defaults set by POST /__upstream/config */
  char *config_raw;
  unsigned default_delay_ms;
  size_t default_body_size;
  bool quiet, stopping;
  time_t date_at; /* Date header cache, one formatting per second */
  char date[32];
  char rbuf[64 * 1024]; /* shared read buffer: reads are consumed at once */
};

/* ---------------------------------------------------------- respond.c */

enum fail_mode {
  FAIL_NONE,
  FAIL_RESET,       /* RST after reading the request */
  FAIL_CLOSE,       /* FIN without an answer */
  FAIL_HANG,        /* never answer, wait for the client to go */
  FAIL_TRUNCATE,    /* Content-Length larger than the body sent */
  FAIL_GARBAGE,     /* bytes that are not HTTP */
  FAIL_DRIP,        /* whole answer in small pieces, drip_ms apart */
  FAIL_MIDHEADERS,  /* half the header block, then RST */
  FAIL_SLOWHEADERS, /* header block dripped, body at once */
};

/* A fully received request. Headers are stored as "name\0value\0" pairs
 * in hdrs, names lower-cased. */
struct request {
  struct sbuf url;
  struct sbuf hdrs;
  size_t nhdrs;
  int hstate; /* last header callback: 0 none, 1 field, 2 value */
  bool have_body;
  uint64_t body_len;
  const char *method;
  bool keep_alive;
  bool http10; /* keep-alive must then be announced */
};

/* What a connection must do to answer one request. */
struct plan {
  struct sbuf out; /* the whole answer, header block first */
  size_t head_len; /* bytes of out that are the header block */
  unsigned delay_ms;
  unsigned drip_ms;
  enum fail_mode fail;
  bool counted; /* an upstream call: in flight until finished */
  bool close;   /* close the connection after the answer */
};

/* Decides the answer to req (counting it unless it is a control request)
 * and fills plan, which the caller owns and clears with sb_free(&out). */
void respond(struct server *srv, const struct request *req, struct plan *plan);
/* Iterates request headers: returns the next pair after *pos or false. */
bool req_header_next(const struct request *req, size_t *pos, const char **name,
                     const char **value);
const char *req_header(const struct request *req, const char *lname);
/* The cached Date header value of the current second. */
const char *server_date(struct server *srv);

/* ------------------------------------------------------------- conn.c */

/* Accepts one pending connection from the listener. */
void conn_accept(struct server *srv);
/* Closes every connection (server shutdown). */
void conn_close_all(struct server *srv);

#endif
