/*
 * upstream.c — the upstream HTTP client: a libcurl multi handle driven by a
 * libuv loop through curl's multi-socket API (see upstream.h for the API).
 *
 * Wiring: curl tells us which sockets to watch (on_curl_socket -> one
 * uv_poll_t per socket, remembered with curl_multi_assign) and when to wake
 * it (on_curl_timer -> the client's curl timer). Both uv callbacks call
 * curl_multi_socket_action and then drain finished transfers from
 * curl_multi_info_read. We never call curl from inside a curl callback.
 *
 * Deadlines: curl (7.88) does not time out a transfer queued behind
 * CURLMOPT_MAX_HOST/TOTAL_CONNECTIONS until it leaves the queue, so one
 * stalled upstream call would hold every queued one past its timeout. A
 * second timer, armed for the earliest deadline, fails any transfer still
 * outstanding timeout_ms after upstream_fetch; curl's own timeout usually
 * gets there first for transfers that own a connection.
 *
 * Invariants:
 *   - A transfer is on the client's list from a successful upstream_fetch
 *     until finish() unlinks it, right before its done callback; finish()
 *     is the only place a done callback runs, so it runs exactly once.
 *   - User code (done callbacks) runs only inside enter()/leave(); a close
 *     requested from there cancels at once but tears the multi handle down
 *     only when the outermost leave() unwinds, so no caller up the stack
 *     touches a freed multi handle.
 *   - The client's memory outlives every uv handle it owns: open_handles
 *     counts the timers and polls until their close callbacks have run,
 *     and the last one frees the client once teardown has happened.
 */
#include "upstream.h"

#include "log.h"

#include <assert.h>
#include <errno.h>
#include <sys/socket.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_MAGIC 0x75707331u   /* "ups1" */
#define TRANSFER_MAGIC 0x75707874u /* "upxt" */
#define CLIENT_DEAD 0xdeadc11eu

/* Cap on one response's headers: curl bounds single lines, we bound the
 * sum so a hostile upstream cannot grow the arena without limit. */
#define MAX_HEADER_BYTES (256u * 1024u)
/* Never pre-allocate more than this from an announced Content-Length. */
#define MAX_BODY_PREALLOC ((size_t)64 * 1024 * 1024)

typedef struct buf {
  char *data;
  size_t len, cap;
} buf_t;

typedef struct hdr_ix {
  size_t name_off, name_len, value_off, value_len;
} hdr_ix_t;

typedef struct upstream_poll {
  uv_poll_t poll;
  upstream_client_t *c;
  curl_socket_t fd;
  struct upstream_poll *prev, *next;
} upstream_poll_t;

typedef struct transfer {
  uint32_t magic;
  upstream_client_t *c;
  struct transfer *prev, *next;
  CURL *easy;
  struct curl_slist *req_headers; /* curl does not copy CURLOPT_HTTPHEADER */
  upstream_done_fn done;
  void *ud;
  uint64_t deadline; /* uv_now() + timeout: the transfer fails by then */
  size_t max_body;
  buf_t body;
  buf_t arena; /* "name\0value\0" for each header of the current block */
  hdr_ix_t *ix;
  size_t nix, ixcap;
  bool head_done; /* blank line seen: later header lines are trailers */
  bool body_toobig, nomem, head_toobig;
  unsigned attempts; /* requests put on the wire (see on_prereq) */
  bool nofd;         /* a socket could not be opened: EMFILE / ENFILE */
} transfer_t;

struct upstream_client {
  uint32_t magic;
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;          /* curl's wake-up */
  uv_timer_t deadline_timer; /* the earliest transfer deadline */
  uint64_t armed_deadline;   /* what deadline_timer is set for; 0 = off */
  uv_thread_t owner;
  transfer_t *transfers;
  upstream_poll_t *polls;
  size_t pending;
  unsigned open_handles; /* uv handles whose close callback has not run */
  int depth;             /* nesting of enter() */
  bool closing, torn_down;
};

/* ------------------------------------------------------------- errors */

const char *upstream_strerror(int err) {
  switch (err) {
#define UPSTREAM_XX_(name, val, msg)                                           \
  case UPSTREAM_E##name:                                                       \
    return msg;
    UPSTREAM_ERRNO_MAP(UPSTREAM_XX_)
#undef UPSTREAM_XX_
  }
  return err == 0 ? "success" : "unknown error";
}

int upstream_global_init(void) {
  return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0
                                                           : UPSTREAM_ENOMEM;
}

void upstream_global_cleanup(void) {
  curl_global_cleanup();
}

static void assert_owner(const upstream_client_t *c) {
#ifndef NDEBUG
  uv_thread_t self = uv_thread_self();
  assert(c->magic == CLIENT_MAGIC);
  assert(uv_thread_equal(&c->owner, &self));
#else
  (void)c;
#endif
}

/* ----------------------------------------------------------- helpers */

static int buf_reserve(buf_t *b, size_t extra) {
  if (extra <= b->cap - b->len)
    return 0;
  if (extra > SIZE_MAX / 2 - b->len)
    return -1;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + extra)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p)
    return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

static int buf_append(buf_t *b, const char *s, size_t n) {
  if (buf_reserve(b, n) != 0)
    return -1;
  if (n)
    memcpy(b->data + b->len, s, n);
  b->len += n;
  return 0;
}

static bool is_ows(char ch) {
  return ch == ' ' || ch == '\t';
}

static int lower(int ch) {
  return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

static bool name_is(const char *s, size_t n, const char *lit) {
  size_t i = 0;
  for (; i < n && lit[i]; i++)
    if (lower((unsigned char)s[i]) != lower((unsigned char)lit[i]))
      return false;
  return i == n && lit[i] == '\0';
}

/* RFC 9110 tchar: what may appear in a method or a field name. */
static bool is_token(const char *s, size_t n) {
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= ' ' || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch))
      return false;
  }
  return true;
}

/* Field values may hold anything but the bytes that would end the line. */
static bool is_field_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
      return false;
  return true;
}

/* ------------------------------------------------- response collection */

static void head_reset(transfer_t *t) {
  t->arena.len = 0;
  t->nix = 0;
  t->head_done = false;
}

static int head_add(transfer_t *t, const char *name, size_t nlen,
                    const char *value, size_t vlen) {
  if (t->arena.len + nlen + vlen + 2 > MAX_HEADER_BYTES) {
    t->head_toobig = true;
    return -1;
  }
  if (t->nix == t->ixcap) {
    size_t cap = t->ixcap ? t->ixcap * 2 : 16;
    hdr_ix_t *ix = realloc(t->ix, cap * sizeof *ix);
    if (!ix) {
      t->nomem = true;
      return -1;
    }
    t->ix = ix;
    t->ixcap = cap;
  }
  hdr_ix_t *h = &t->ix[t->nix];
  h->name_off = t->arena.len;
  h->name_len = nlen;
  h->value_off = t->arena.len + nlen + 1;
  h->value_len = vlen;
  if (buf_append(&t->arena, name, nlen) || buf_append(&t->arena, "", 1) ||
      buf_append(&t->arena, value, vlen) || buf_append(&t->arena, "", 1)) {
    t->nomem = true;
    return -1;
  }
  t->nix++;
  return 0;
}

/* An obs-fold continuation line: the last value sits at the arena's end, so
 * it grows in place (its NUL becomes the joining space). */
static int head_continue(transfer_t *t, const char *s, size_t n) {
  if (t->nix == 0)
    return 0;
  if (t->arena.len + n + 1 > MAX_HEADER_BYTES) {
    t->head_toobig = true;
    return -1;
  }
  t->arena.data[t->arena.len - 1] = ' ';
  if (buf_append(&t->arena, s, n) || buf_append(&t->arena, "", 1)) {
    t->nomem = true;
    return -1;
  }
  t->ix[t->nix - 1].value_len += n + 1;
  return 0;
}

/* curl hands us every header line of every response block: status lines
 * start a block (so 1xx blocks are forgotten), a blank line ends it, and
 * lines after that are chunked trailers, which we drop. */
static size_t on_curl_header(char *ptr, size_t size, size_t nitems,
                             void *userp) {
  transfer_t *t = userp;
  size_t total = size * nitems, n = total;
  while (n > 0 && (ptr[n - 1] == '\n' || ptr[n - 1] == '\r'))
    n--;
  if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
    head_reset(t);
    return total;
  }
  if (n == 0) {
    t->head_done = true;
    return total;
  }
  if (t->head_done)
    return total;
  size_t b = 0;
  if (is_ows(ptr[0])) {
    while (b < n && is_ows(ptr[b]))
      b++;
    while (n > b && is_ows(ptr[n - 1]))
      n--;
    return head_continue(t, ptr + b, n - b) == 0 ? total : 0;
  }
  const char *colon = memchr(ptr, ':', n);
  if (!colon)
    return total; /* not a field; curl would have failed a truly bad head */
  size_t nlen = (size_t)(colon - ptr);
  while (nlen > 0 && is_ows(ptr[nlen - 1]))
    nlen--;
  b = (size_t)(colon - ptr) + 1;
  while (b < n && is_ows(ptr[b]))
    b++;
  while (n > b && is_ows(ptr[n - 1]))
    n--;
  return head_add(t, ptr, nlen, ptr + b, n - b) == 0 ? total : 0;
}

static size_t on_curl_write(char *ptr, size_t size, size_t nitems,
                            void *userp) {
  transfer_t *t = userp;
  size_t n = size * nitems;
  if (t->max_body && n > t->max_body - t->body.len) {
    t->body_toobig = true; /* chunked or lying upstreams: abort mid-way */
    return 0;
  }
  if (t->body.cap == 0) {
    curl_off_t cl = -1;
    curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    if (cl > 0) {
      size_t want =
          (uint64_t)cl < MAX_BODY_PREALLOC ? (size_t)cl : MAX_BODY_PREALLOC;
      (void)buf_reserve(&t->body, want); /* a hint; append retries */
    }
  }
  if (buf_append(&t->body, ptr, n) != 0) {
    t->nomem = true;
    return 0;
  }
  return n;
}

/* ------------------------------------------------------------ finishing */

static int map_curl_error(const transfer_t *t, CURLcode rc) {
  switch (rc) {
  case CURLE_OK:
    return 0;
  case CURLE_WRITE_ERROR: /* one of our callbacks refused the data */
    if (t->body_toobig)
      return UPSTREAM_ETOOBIG;
    if (t->nomem)
      return UPSTREAM_ENOMEM;
    return UPSTREAM_EPROTOCOL;
  case CURLE_FILESIZE_EXCEEDED: /* Content-Length over CURLOPT_MAXFILESIZE */
    return UPSTREAM_ETOOBIG;
  case CURLE_OPERATION_TIMEDOUT:
    return UPSTREAM_ETIMEOUT;
  case CURLE_OUT_OF_MEMORY:
    return UPSTREAM_ENOMEM;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_COULDNT_CONNECT:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_USE_SSL_FAILED:
    return UPSTREAM_ECONNECT;
  case CURLE_URL_MALFORMAT:
  case CURLE_BAD_FUNCTION_ARGUMENT:
    return UPSTREAM_EINVAL;
  default: /* GOT_NOTHING, PARTIAL_FILE, RECV/SEND_ERROR, WEIRD_SERVER_REPLY,
              HTTP2, HTTP2_STREAM, UNSUPPORTED_PROTOCOL (curl's verdict on
              an HTTP/0.9 answer; our URLs are checked to be http(s)) ...:
              the exchange itself went wrong */
    return UPSTREAM_EPROTOCOL;
  }
}

static int map_http_version(long v) {
  switch (v) {
  case CURL_HTTP_VERSION_1_0:
    return 10;
  case CURL_HTTP_VERSION_1_1:
    return 11;
  case CURL_HTTP_VERSION_2_0:
    return 20;
  case CURL_HTTP_VERSION_3:
    return 30;
  default:
    return 0;
  }
}

/* The message names what failed and never the URL or request headers:
 * curl's static strerror text plus the OS error, not curl's error buffer
 * (which may quote parts of the request). */
static void set_errmsg(upstream_response_t *r, const transfer_t *t, CURLcode rc,
                       long os_errno) {
  if (r->err == 0) {
    r->errmsg = "";
    return;
  }
  if (r->err == UPSTREAM_ETOOBIG) {
    snprintf(r->errbuf_, sizeof r->errbuf_, "response body over %zu bytes",
             t->max_body);
  } else if (r->err == UPSTREAM_EPROTOCOL && t->head_toobig) {
    snprintf(r->errbuf_, sizeof r->errbuf_, "response headers over %u bytes",
             MAX_HEADER_BYTES);
  } else if (rc == CURLE_OK || r->err == UPSTREAM_ENOMEM) {
    snprintf(r->errbuf_, sizeof r->errbuf_, "%s", upstream_strerror(r->err));
  } else if (os_errno != 0) {
    char tmp[64];
    snprintf(r->errbuf_, sizeof r->errbuf_, "%s (%s)", curl_easy_strerror(rc),
             strerror_r((int)os_errno, tmp, sizeof tmp));
  } else {
    snprintf(r->errbuf_, sizeof r->errbuf_, "%s", curl_easy_strerror(rc));
  }
  r->errmsg = r->errbuf_;
}

static void transfer_free(transfer_t *t) {
  if (t->easy)
    curl_easy_cleanup(t->easy);
  curl_slist_free_all(t->req_headers);
  free(t->body.data);
  free(t->arena.data);
  free(t->ix);
  t->magic = 0;
  free(t);
}

static void transfer_unlink(upstream_client_t *c, transfer_t *t) {
  if (t->prev)
    t->prev->next = t->next;
  else
    c->transfers = t->next;
  if (t->next)
    t->next->prev = t->prev;
  t->prev = t->next = NULL;
  if (--c->pending == 0 && c->armed_deadline) {
    uv_timer_stop(&c->deadline_timer); /* let an idle loop exit */
    c->armed_deadline = 0;
  }
}

/* Completes t: err is forced (cancel) when nonzero, else derived from rc. */
/* We open upstream sockets ourselves only to tell "this process is out of
 * descriptors" (a local overload, not an upstream failure: no breaker
 * outcome) from a refused connection; curl reports both alike. */
static curl_socket_t on_opensocket(void *ud, curlsocktype purpose,
                                   struct curl_sockaddr *a) {
  (void)purpose;
  curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd == CURL_SOCKET_BAD && (errno == EMFILE || errno == ENFILE))
    ((transfer_t *)ud)->nofd = true;
  return fd;
}

#if LIBCURL_VERSION_NUM >= 0x075000
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port) {
  (void)conn_primary_ip;
  (void)conn_local_ip;
  (void)conn_primary_port;
  (void)conn_local_port;
  ((transfer_t *)ud)->attempts++;
  return CURL_PREREQFUNC_OK;
}
#endif

static void finish(transfer_t *t, CURLcode rc, int forced_err) {
  upstream_client_t *c = t->c;
  assert(t->magic == TRANSFER_MAGIC);
  upstream_response_t r;
  memset(&r, 0, sizeof r);
  long status = 0, version = 0, nconnects = 0, os_errno = 0;
  curl_off_t total_us = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &nconnects);
  curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &os_errno);
  curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us);
  curl_multi_remove_handle(c->multi, t->easy);
  transfer_unlink(c, t);

  r.err = forced_err ? forced_err : map_curl_error(t, rc);
  if (r.err == UPSTREAM_ECONNECT && t->nofd)
    r.err = UPSTREAM_ENOFD;
  r.status = (int)status;
  r.http_version = map_http_version(version);
  r.total_time_us = total_us > 0 ? (uint64_t)total_us : 0;
  r.reused = status > 0 && nconnects == 0;
  r.attempts = t->attempts;

  upstream_header_t *hdrs = NULL;
  if (t->nix > 0) {
    hdrs = malloc(t->nix * sizeof *hdrs);
    if (hdrs) {
      for (size_t i = 0; i < t->nix; i++) {
        hdrs[i].name = t->arena.data + t->ix[i].name_off;
        hdrs[i].name_len = t->ix[i].name_len;
        hdrs[i].value = t->arena.data + t->ix[i].value_off;
        hdrs[i].value_len = t->ix[i].value_len;
      }
      r.headers = hdrs;
      r.nheaders = t->nix;
    } else if (r.err == 0) {
      r.err = UPSTREAM_ENOMEM;
    }
  }
  r.body_owned_ = t->body.data;
  r.body_len = t->body.len;
  r.body = r.body_len ? r.body_owned_ : NULL;
  t->body.data = NULL;
  set_errmsg(&r, t, forced_err ? CURLE_OK : rc, os_errno);

  t->done(t->ud, &r);

  free(r.body_owned_);
  free(hdrs);
  transfer_free(t);
}

/* ------------------------------------------------------ loop <-> curl */

static void teardown(upstream_client_t *c);

static void enter(upstream_client_t *c) {
  c->depth++;
}

static void leave(upstream_client_t *c) {
  if (--c->depth == 0 && c->closing && !c->torn_down)
    teardown(c);
}

static void drain(upstream_client_t *c) {
  CURLMsg *m;
  int left;
  while (!c->closing && (m = curl_multi_info_read(c->multi, &left))) {
    if (m->msg != CURLMSG_DONE)
      continue;
    CURLcode rc = m->data.result; /* m dies with curl_multi_remove_handle */
    char *priv = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    finish((transfer_t *)(void *)priv, rc, 0);
  }
}

static void handle_closed(upstream_client_t *c) {
  if (--c->open_handles == 0 && c->torn_down) {
    c->magic = CLIENT_DEAD;
    free(c);
  }
}

static void on_poll_closed(uv_handle_t *h) {
  upstream_poll_t *p = h->data;
  upstream_client_t *c = p->c;
  free(p);
  handle_closed(c);
}

static void on_timer_closed(uv_handle_t *h) {
  handle_closed(h->data);
}

static void poll_close(upstream_client_t *c, upstream_poll_t *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    c->polls = p->next;
  if (p->next)
    p->next->prev = p->prev;
  uv_poll_stop(&p->poll); /* drops the fd from epoll before curl closes it */
  uv_close((uv_handle_t *)&p->poll, on_poll_closed);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  upstream_poll_t *p = h->data;
  upstream_client_t *c = p->c;
  int flags = 0;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  int running;
  enter(c);
  curl_multi_socket_action(c->multi, p->fd, flags, &running);
  drain(c);
  leave(c);
}

static void on_timer(uv_timer_t *h) {
  upstream_client_t *c = h->data;
  int running;
  enter(c);
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain(c);
  leave(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp,
                          void *socketp) {
  upstream_client_t *c = userp;
  upstream_poll_t *p = socketp;
  (void)easy;
  if (c->torn_down)
    return 0;
  if (what == CURL_POLL_REMOVE) {
    if (p) {
      curl_multi_assign(c->multi, s, NULL);
      poll_close(c, p);
    }
    return 0;
  }
  if (!p) {
    p = calloc(1, sizeof *p);
    if (!p)
      return -1;
    if (uv_poll_init_socket(c->loop, &p->poll, s) != 0) {
      LOG_ERROR("upstream_poll_failed", "fd=%d", (int)s);
      free(p);
      return -1;
    }
    p->poll.data = p;
    p->c = c;
    p->fd = s;
    p->next = c->polls;
    if (c->polls)
      c->polls->prev = p;
    c->polls = p;
    c->open_handles++;
    curl_multi_assign(c->multi, s, p);
  }
  int events = 0;
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  uv_poll_start(&p->poll, events, on_poll);
  return 0;
}

/* curl asks to be woken after timeout_ms (-1: never). Even 0 goes through
 * the timer: curl must not be re-entered from its own callback. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  upstream_client_t *c = userp;
  (void)multi;
  if (c->torn_down)
    return 0;
  if (timeout_ms < 0)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static void on_deadline(uv_timer_t *h);

static void arm_deadline(upstream_client_t *c, uint64_t deadline) {
  if (c->armed_deadline && c->armed_deadline <= deadline)
    return;
  uint64_t now = uv_now(c->loop);
  c->armed_deadline = deadline;
  uv_timer_start(&c->deadline_timer, on_deadline,
                 deadline > now ? deadline - now : 0, 0);
}

/* Fails the transfers past their deadline and re-arms for the next one. A
 * done callback can only add transfers (at the head) or close the client,
 * so `next` stays valid until we see `closing`. */
static void on_deadline(uv_timer_t *h) {
  upstream_client_t *c = h->data;
  uint64_t now = uv_now(c->loop), next_deadline = 0;
  c->armed_deadline = 0;
  enter(c);
  for (transfer_t *t = c->transfers, *next; t && !c->closing; t = next) {
    next = t->next;
    if (t->deadline <= now)
      finish(t, CURLE_OK, UPSTREAM_ETIMEOUT);
    else if (!next_deadline || t->deadline < next_deadline)
      next_deadline = t->deadline;
  }
  /* Transfers added by callbacks above sit before the scan's start. */
  for (transfer_t *t = c->transfers; t && !c->closing; t = t->next)
    if (!next_deadline || t->deadline < next_deadline)
      next_deadline = t->deadline;
  if (next_deadline && !c->closing)
    arm_deadline(c, next_deadline);
  leave(c);
}

/* --------------------------------------------------------------- client */

upstream_client_t *upstream_client_new(uv_loop_t *loop,
                                       const upstream_client_opts_t *opts) {
  upstream_client_opts_t o = {0};
  if (opts)
    o = *opts;
  if (o.max_host_connections <= 0)
    o.max_host_connections = UPSTREAM_DEFAULT_MAX_HOST_CONNECTIONS;
  if (o.max_total_connections < 0)
    o.max_total_connections = 0;
  if (o.max_idle_connections <= 0)
    o.max_idle_connections = o.max_host_connections;

  upstream_client_t *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->magic = CLIENT_MAGIC;
  c->loop = loop;
  c->owner = uv_thread_self();
  c->multi = curl_multi_init();
  if (!c->multi) {
    free(c);
    return NULL;
  }
  CURLM *m = c->multi;
  CURLMcode mc = CURLM_OK;
#define MSET(opt, val)                                                         \
  if (mc == CURLM_OK)                                                          \
  mc = curl_multi_setopt(m, opt, val)
  MSET(CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  MSET(CURLMOPT_SOCKETDATA, c);
  MSET(CURLMOPT_TIMERFUNCTION, on_curl_timer);
  MSET(CURLMOPT_TIMERDATA, c);
  MSET(CURLMOPT_MAX_HOST_CONNECTIONS, o.max_host_connections);
  MSET(CURLMOPT_MAX_TOTAL_CONNECTIONS, o.max_total_connections);
  MSET(CURLMOPT_MAXCONNECTS, o.max_idle_connections);
  MSET(CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
#undef MSET
  if (mc != CURLM_OK) {
    curl_multi_cleanup(m);
    free(c);
    return NULL;
  }
  /* Cannot fail for a valid loop; from here on only teardown frees c. */
  uv_timer_init(loop, &c->timer);
  uv_timer_init(loop, &c->deadline_timer);
  c->timer.data = c;
  c->deadline_timer.data = c;
  c->open_handles = 2;
  return c;
}

size_t upstream_client_pending(const upstream_client_t *c) {
  assert_owner(c);
  return c->pending;
}

/* Runs once no caller is inside the client: stop watching sockets before
 * curl closes them, let curl free its connections, close the timers. */
static void teardown(upstream_client_t *c) {
  c->torn_down = true;
  while (c->polls) {
    curl_multi_assign(c->multi, c->polls->fd, NULL);
    poll_close(c, c->polls);
  }
  curl_multi_cleanup(c->multi);
  c->multi = NULL;
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  uv_close((uv_handle_t *)&c->deadline_timer, on_timer_closed);
}

void upstream_client_close(upstream_client_t *c) {
  if (!c)
    return;
  assert_owner(c);
  if (c->closing)
    return;
  c->closing = true;
  enter(c);
  while (c->transfers)
    finish(c->transfers, CURLE_OK, UPSTREAM_ECANCELED);
  leave(c);
}

/* ---------------------------------------------------------------- fetch */

static bool url_scheme_ok(const char *url) {
  if (!url)
    return false;
  size_t n = strlen(url);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)url[i] <= ' ' || url[i] == 0x7f)
      return false;
  return (n > 7 && name_is(url, 7, "http://")) ||
         (n > 8 && name_is(url, 8, "https://"));
}

static int validate(const upstream_request_t *req) {
  if (!url_scheme_ok(req->url))
    return UPSTREAM_EINVAL;
  if (req->method && !is_token(req->method, strlen(req->method)))
    return UPSTREAM_EINVAL;
  if (req->nheaders && !req->headers)
    return UPSTREAM_EINVAL;
  for (size_t i = 0; i < req->nheaders; i++) {
    const upstream_header_t *h = &req->headers[i];
    if (!h->name || !is_token(h->name, h->name_len) ||
        (h->value_len && !h->value) || !is_field_value(h->value, h->value_len))
      return UPSTREAM_EINVAL;
  }
  return 0;
}

/* Builds the header list curl sends. "Name:" (nothing after the colon)
 * tells curl to drop its own header of that name; "Name;" sends an empty
 * value. */
static int build_headers(transfer_t *t, const upstream_request_t *req) {
  bool has_accept = false;
  buf_t line = {0};
  int rc = 0;
  for (size_t i = 0; i < req->nheaders && rc == 0; i++) {
    const upstream_header_t *h = &req->headers[i];
    if (name_is(h->name, h->name_len, "expect") ||
        name_is(h->name, h->name_len, "content-length") ||
        name_is(h->name, h->name_len, "transfer-encoding"))
      continue;
    if (name_is(h->name, h->name_len, "accept"))
      has_accept = true;
    line.len = 0;
    if (buf_append(&line, h->name, h->name_len) ||
        (h->value_len ? buf_append(&line, ": ", 2) ||
                            buf_append(&line, h->value, h->value_len)
                      : buf_append(&line, ";", 1)) ||
        buf_append(&line, "", 1)) {
      rc = UPSTREAM_ENOMEM;
      break;
    }
    struct curl_slist *l = curl_slist_append(t->req_headers, line.data);
    if (!l)
      rc = UPSTREAM_ENOMEM;
    else
      t->req_headers = l;
  }
  free(line.data);
  const char *drop[] = {"Expect:", has_accept ? NULL : "Accept:"};
  for (size_t i = 0; i < 2 && rc == 0; i++) {
    if (!drop[i])
      continue;
    struct curl_slist *l = curl_slist_append(t->req_headers, drop[i]);
    if (!l)
      rc = UPSTREAM_ENOMEM;
    else
      t->req_headers = l;
  }
  return rc;
}

static int setup_easy(transfer_t *t, const upstream_request_t *req) {
  CURL *e = t->easy;
  CURLcode ec = CURLE_OK;
#define SET(opt, val)                                                          \
  if (ec == CURLE_OK)                                                          \
  ec = curl_easy_setopt(e, opt, val)
  const char *method = req->method ? req->method : "GET";
  bool body = req->body != NULL || strcmp(method, "POST") == 0 ||
              strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;

  SET(CURLOPT_PRIVATE, (void *)t);
  SET(CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
  SET(CURLOPT_OPENSOCKETDATA, (void *)t);
#if LIBCURL_VERSION_NUM >= 0x075000
  /* Called before each request goes out: libcurl re-sends a request on a
   * new connection when a reused one dies before answering, and a paid
   * upstream may have billed the first one, so every attempt is counted. */
  SET(CURLOPT_PREREQFUNCTION, on_prereq);
  SET(CURLOPT_PREREQDATA, (void *)t);
#endif
  SET(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
  SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  SET(CURLOPT_NOSIGNAL, 1L);       /* no SIGALRM: we are multi-threaded */
  SET(CURLOPT_PROXY, "");          /* no http_proxy from the environment */
  SET(CURLOPT_FOLLOWLOCATION, 0L); /* redirects go back to the client */
  SET(CURLOPT_PATH_AS_IS, 1L);     /* forward the path the caller built */
  SET(CURLOPT_HTTP_CONTENT_DECODING, 0L); /* bodies pass through as-is */
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  SET(CURLOPT_HTTP_VERSION,
      req->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
  if (req->http2)
    SET(CURLOPT_PIPEWAIT, 1L); /* prefer a stream on an h2 connection */
  SET(CURLOPT_CONNECTTIMEOUT_MS,
      (long)(req->connect_timeout_ms ? req->connect_timeout_ms
                                     : UPSTREAM_DEFAULT_CONNECT_TIMEOUT_MS));
  SET(CURLOPT_TIMEOUT_MS,
      (long)(req->timeout_ms ? req->timeout_ms : UPSTREAM_DEFAULT_TIMEOUT_MS));
  if (req->max_response_bytes)
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max_response_bytes);
  SET(CURLOPT_SSL_VERIFYPEER, req->tls_insecure ? 0L : 1L);
  SET(CURLOPT_SSL_VERIFYHOST, req->tls_insecure ? 0L : 2L);
  if (req->ca_file)
    SET(CURLOPT_CAINFO, req->ca_file);
  SET(CURLOPT_HEADERFUNCTION, on_curl_header);
  SET(CURLOPT_HEADERDATA, (void *)t);
  SET(CURLOPT_WRITEFUNCTION, on_curl_write);
  SET(CURLOPT_WRITEDATA, (void *)t);
  SET(CURLOPT_HTTPHEADER, t->req_headers);

  if (strcmp(method, "HEAD") == 0) {
    SET(CURLOPT_NOBODY, 1L); /* else curl waits for the announced body */
  } else if (body) {
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    SET(CURLOPT_COPYPOSTFIELDS, req->body ? (const char *)req->body : "");
    if (strcmp(method, "POST") != 0)
      SET(CURLOPT_CUSTOMREQUEST, method);
  } else {
    SET(CURLOPT_HTTPGET, 1L);
    if (strcmp(method, "GET") != 0)
      SET(CURLOPT_CUSTOMREQUEST, method);
  }
#undef SET
  if (ec == CURLE_OK)
    return 0;
  return ec == CURLE_OUT_OF_MEMORY ? UPSTREAM_ENOMEM : UPSTREAM_EINVAL;
}

int upstream_fetch(upstream_client_t *c, const upstream_request_t *req,
                   upstream_done_fn done, void *ud) {
  assert_owner(c);
  if (!req || !done)
    return UPSTREAM_EINVAL;
  if (c->closing)
    return UPSTREAM_ECANCELED;
  int rc = validate(req);
  if (rc != 0)
    return rc;
  transfer_t *t = calloc(1, sizeof *t);
  if (!t)
    return UPSTREAM_ENOMEM;
  t->magic = TRANSFER_MAGIC;
  t->c = c;
  t->done = done;
  t->ud = ud;
  t->max_body = req->max_response_bytes;
  t->deadline =
      uv_now(c->loop) +
      (req->timeout_ms ? req->timeout_ms : UPSTREAM_DEFAULT_TIMEOUT_MS);
  t->easy = curl_easy_init();
  if (!t->easy) {
    transfer_free(t);
    return UPSTREAM_ENOMEM;
  }
  if ((rc = build_headers(t, req)) != 0 || (rc = setup_easy(t, req)) != 0) {
    transfer_free(t);
    return rc;
  }
  CURLMcode mc = curl_multi_add_handle(c->multi, t->easy);
  if (mc != CURLM_OK) {
    transfer_free(t);
    return mc == CURLM_OUT_OF_MEMORY ? UPSTREAM_ENOMEM : UPSTREAM_EINVAL;
  }
  t->next = c->transfers;
  if (c->transfers)
    c->transfers->prev = t;
  c->transfers = t;
  c->pending++;
  arm_deadline(c, t->deadline);
  return 0;
}

/* -------------------------------------------------------------- response */

char *upstream_response_take_body(upstream_response_t *resp, size_t *len) {
  char *b = resp->body ? resp->body_owned_ : NULL;
  *len = b ? resp->body_len : 0;
  if (b) {
    resp->body_owned_ = NULL;
    resp->body = NULL;
    resp->body_len = 0;
  }
  return b;
}

const upstream_header_t *
upstream_response_header(const upstream_response_t *resp, const char *name) {
  for (size_t i = 0; i < resp->nheaders; i++) {
    const upstream_header_t *h = &resp->headers[i];
    if (name_is(h->name, h->name_len, name))
      return &resp->headers[i];
  }
  return NULL;
}
