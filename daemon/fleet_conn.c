/*
 * fleet_conn.c — the two Redis connections of one worker loop: commands
 * (pipelined EVAL/GET, each with a deadline) and the subscriber (one
 * SUBSCRIBE to the fleet channel for the whole loop, never one per key).
 *
 * States: CONNECTING (resolve, connect, AUTH/SELECT/PING on the command
 * connection and AUTH/SUBSCRIBE on the subscriber, all bounded by the
 * handshake timer) -> READY (both done) -> DOWN on any error, timeout or
 * disconnect (everything in progress answered LOCAL, contexts buried,
 * retry timer with jittered exponential backoff) -> CONNECTING again.
 * CLOSING is final.
 *
 * hiredis 0.14 has no timeouts of its own for async contexts: the
 * watchdog timer tracks the oldest command still waiting for its reply
 * (replies come back in order, so the oldest is the first due); past
 * timeout_ms the connection is declared dead. A slow Redis thus costs at
 * most timeout_ms before the proxy fetches on its own.
 */
#include "fleet_int.h"

#include <arpa/inet.h>
#include <hiredis/adapters/libuv.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS 10000 /* up this long: the next failure backs off anew */

static uint64_t hr_ms(void) { return uv_hrtime() / 1000000u; }

static uint64_t next_rand(fleet_conn_t *c) {
  /* xorshift64: jitter only, so reconnecting workers do not march in step */
  uint64_t x = c->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return c->rng = x;
}

static void count_ready(fleet_conn_t *c, int delta) {
  if (delta > 0)
    atomic_fetch_add_explicit(&c->fleet->nready, 1, memory_order_relaxed);
  else
    atomic_fetch_sub_explicit(&c->fleet->nready, 1, memory_order_relaxed);
}

/* ---- lifetime --------------------------------------------------------------- */

void fleet_conn_maybe_free(fleet_conn_t *c) {
  if (c->state != CONN_CLOSING || c->open_handles > 0 || c->gai_busy ||
      c->leases_out > 0 || c->ops_alive > 0 || c->ncmds > 0)
    return;
  free(c->buckets);
  c->magic = 0;
  free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  fleet_conn_t *c = h->data;
  c->open_handles--;
  fleet_conn_maybe_free(c);
}

/* Forgets a context hiredis is freeing by itself. */
static bool forget(fleet_conn_t *c, const redisAsyncContext *ac) {
  if (ac == c->cmd_ac) {
    c->cmd_ac = NULL;
    return true;
  }
  if (ac == c->sub_ac) {
    c->sub_ac = NULL;
    return true;
  }
  for (size_t i = 0; i < sizeof c->dead / sizeof *c->dead; i++)
    if (c->dead[i] == ac)
      c->dead[i] = NULL;
  return false;
}

static void bury(fleet_conn_t *c, redisAsyncContext *ac) {
  if (ac == NULL)
    return;
  for (size_t i = 0; i < sizeof c->dead / sizeof *c->dead; i++) {
    if (c->dead[i] == NULL) {
      c->dead[i] = ac;
      return;
    }
  }
  /* Unreachable (at most two contexts die per attempt and the kick frees
   * them before the next attempt); never leak a socket over it. */
  redisAsyncFree(ac);
}

static void free_dead(fleet_conn_t *c) {
  for (size_t i = 0; i < sizeof c->dead / sizeof *c->dead; i++) {
    redisAsyncContext *ac = c->dead[i];
    c->dead[i] = NULL;
    if (ac != NULL)
      redisAsyncFree(ac);
  }
}

static void on_kick(uv_timer_t *t) {
  fleet_conn_t *c = t->data;
  free_dead(c);
  fleet_op_deliver(c);
}

void fleet_conn_kick(fleet_conn_t *c) {
  if (c->state == CONN_CLOSING) {
    if (!c->in_close)
      fleet_op_deliver(c); /* the kick timer is gone: deliver now */
    return;
  }
  if (!uv_is_active((uv_handle_t *)&c->kick))
    uv_timer_start(&c->kick, on_kick, 0, 0);
}

/* ---- watchdog ------------------------------------------------------------- */

static fleet_cmd_t *oldest_live(fleet_conn_t *c) {
  for (fleet_cmd_t *r = c->cmd_head; r != NULL; r = r->next)
    if (r->ac == c->cmd_ac && r->ac != NULL)
      return r;
  return NULL;
}

static void on_watchdog(uv_timer_t *t);

static void watchdog_arm(fleet_conn_t *c) {
  if (c->state == CONN_CLOSING)
    return;
  fleet_cmd_t *r = oldest_live(c);
  if (r == NULL) {
    uv_timer_stop(&c->watchdog);
    return;
  }
  uint64_t due = r->sent_ms + c->fleet->timeout_ms, now = hr_ms();
  uv_timer_start(&c->watchdog, on_watchdog, due > now ? due - now : 0, 0);
}

static void on_watchdog(uv_timer_t *t) {
  fleet_conn_t *c = t->data;
  fleet_cmd_t *r = oldest_live(c);
  if (r == NULL)
    return;
  if (hr_ms() - r->sent_ms >= c->fleet->timeout_ms)
    fleet_conn_fail(c, "command timed out");
  else
    watchdog_arm(c);
}

/* ---- readiness and failure -------------------------------------------------- */

static void check_ready(fleet_conn_t *c) {
  if (c->state != CONN_CONNECTING || !c->cmd_ok || !c->sub_ok)
    return;
  c->state = CONN_READY;
  c->ready_at_ms = hr_ms();
  uv_timer_stop(&c->handshake);
  count_ready(c, +1);
  if (c->failed_since_ready) {
    fleet_count(&c->fleet->reconnects);
    LOG_INFO("redis_reconnected", "conn=%u", c->id);
  } else if (!c->ever_ready) {
    LOG_DEBUG("redis_connected", "conn=%u", c->id);
  }
  c->ever_ready = true;
  c->failed_since_ready = false;
}

static void on_retry(uv_timer_t *t);

void fleet_conn_fail(fleet_conn_t *c, const char *why) {
  if (c->state == CONN_CLOSING || c->state == CONN_DOWN)
    return;
  fleet_count(&c->fleet->redis_errors);
  bool was_ready = c->state == CONN_READY;
  if (was_ready)
    count_ready(c, -1);
  if (was_ready || !c->failed_since_ready)
    LOG_WARN("redis_down", "conn=%u reason=\"%s\" fallback=local", c->id,
             why);
  else
    LOG_DEBUG("redis_retry_failed", "conn=%u reason=\"%s\"", c->id, why);
  c->state = CONN_DOWN;
  c->failed_since_ready = true;
  bury(c, c->cmd_ac);
  bury(c, c->sub_ac);
  c->cmd_ac = c->sub_ac = NULL;
  c->cmd_ok = c->sub_ok = false;
  uv_timer_stop(&c->watchdog);
  uv_timer_stop(&c->handshake);
  fleet_op_fail_all(c, FLEET_WHY_ERROR);

  /* A connection that held for a while starts over at the minimum; one
   * that keeps dropping right after connecting (flapping) keeps backing
   * off, so it cannot turn into a reconnect storm. */
  if (was_ready && hr_ms() - c->ready_at_ms >= STABLE_MS)
    c->backoff_ms = 0;
  c->backoff_ms = c->backoff_ms == 0 ? BACKOFF_MIN_MS : c->backoff_ms * 2;
  if (c->backoff_ms > BACKOFF_MAX_MS)
    c->backoff_ms = BACKOFF_MAX_MS;
  uint64_t jitter = next_rand(c) % (c->backoff_ms / 2 + 1); /* +-25% */
  uv_timer_start(&c->retry, on_retry, c->backoff_ms * 3 / 4 + jitter, 0);
  fleet_conn_kick(c);
}

/* ---- hiredis callbacks ---------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status) {
  fleet_conn_t *c = ac->data;
  if (status == REDIS_OK)
    return;
  /* hiredis frees ac right after this returns: never touch it again */
  if (forget(c, ac))
    fleet_conn_fail(c, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  (void)status;
  fleet_conn_t *c = ac->data;
  if (forget(c, ac))
    fleet_conn_fail(c, "connection lost");
}

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  fleet_cmd_t *r = privdata;
  fleet_conn_t *c = r->conn;
  if (r->prev != NULL)
    r->prev->next = r->next;
  else
    c->cmd_head = r->next;
  if (r->next != NULL)
    r->next->prev = r->prev;
  else
    c->cmd_tail = r->prev;
  c->ncmds--;
  fleet_op_t *op = r->op;
  bool live = r->ac == c->cmd_ac && r->ac != NULL;
  free(r);
  redisReply *rep = reply;
  if (live)
    watchdog_arm(c);
  if (op != NULL) {
    fleet_op_reply(op, rep);
  } else if (live && rep != NULL) { /* handshake: AUTH, SELECT, PING */
    if (rep->type == REDIS_REPLY_ERROR) {
      fleet_conn_fail(c, "handshake refused");
    } else if (c->ncmds == 0 || oldest_live(c) == NULL) {
      c->cmd_ok = true; /* PING came back after the rest */
      check_ready(c);
    }
  }
  fleet_conn_maybe_free(c);
}

static void on_sub_auth(redisAsyncContext *ac, void *reply, void *privdata) {
  fleet_conn_t *c = privdata;
  redisReply *rep = reply;
  if (rep != NULL && ac == c->sub_ac && rep->type == REDIS_REPLY_ERROR)
    fleet_conn_fail(c, "subscriber auth refused");
}

static bool str_is(const redisReply *r, const char *s) {
  return r->type == REDIS_REPLY_STRING && r->len == strlen(s) &&
         memcmp(r->str, s, r->len) == 0;
}

static void on_sub_message(redisAsyncContext *ac, void *reply,
                           void *privdata) {
  fleet_conn_t *c = privdata;
  redisReply *rep = reply;
  if (rep == NULL || ac != c->sub_ac || rep->type != REDIS_REPLY_ARRAY ||
      rep->elements < 3)
    return;
  if (str_is(rep->element[0], "message") &&
      rep->element[2]->type == REDIS_REPLY_STRING) {
    if (c->state == CONN_READY)
      fleet_op_message(c, rep->element[2]->str, rep->element[2]->len);
  } else if (str_is(rep->element[0], "subscribe")) {
    c->sub_ok = true;
    check_ready(c);
  }
}

/* ---- connecting ------------------------------------------------------------- */

static redisAsyncContext *open_context(fleet_conn_t *c, const char *ip) {
  redisAsyncContext *ac = redisAsyncConnect(ip, c->fleet->port);
  if (ac == NULL)
    return NULL;
  if (ac->err) {
    LOG_DEBUG("redis_connect_error", "conn=%u error=\"%s\"", c->id,
              ac->errstr);
    redisAsyncFree(ac);
    return NULL;
  }
  ac->data = c;
  if (redisLibuvAttach(ac, c->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    return NULL;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  return ac;
}

/* AUTH [user] pass, as argv; returns argc (0: no password). */
static int auth_argv(const fleet_t *f, const char **argv, size_t *lens) {
  if (f->password == NULL)
    return 0;
  int n = 0;
  argv[n++] = "AUTH";
  if (f->username != NULL)
    argv[n++] = f->username;
  argv[n++] = f->password;
  for (int i = 0; i < n; i++)
    lens[i] = strlen(argv[i]);
  return n;
}

static void open_contexts(fleet_conn_t *c, const char *ip) {
  fleet_t *f = c->fleet;
  c->cmd_ac = open_context(c, ip);
  c->sub_ac = c->cmd_ac != NULL ? open_context(c, ip) : NULL;
  if (c->cmd_ac == NULL || c->sub_ac == NULL) {
    fleet_conn_fail(c, "cannot open a connection");
    return;
  }
  const char *argv[3];
  size_t lens[3];
  int n = auth_argv(f, argv, lens);
  bool ok = true;
  if (n > 0)
    ok = fleet_conn_send(c, NULL, n, argv, lens) != NULL;
  if (ok && f->db != 0) {
    char db[16];
    snprintf(db, sizeof db, "%u", f->db);
    const char *sel[] = {"SELECT", db};
    size_t sl[] = {6, strlen(db)};
    ok = fleet_conn_send(c, NULL, 2, sel, sl) != NULL;
  }
  if (ok) {
    const char *ping[] = {"PING"};
    size_t pl[] = {4};
    ok = fleet_conn_send(c, NULL, 1, ping, pl) != NULL;
  }
  if (ok && n > 0)
    ok = redisAsyncCommandArgv(c->sub_ac, on_sub_auth, c, n, argv, lens) ==
         REDIS_OK;
  if (ok) {
    const char *sub[] = {"SUBSCRIBE", f->channel};
    size_t subl[] = {9, f->channel_len};
    ok = redisAsyncCommandArgv(c->sub_ac, on_sub_message, c, 2, sub, subl) ==
         REDIS_OK;
  }
  if (!ok)
    fleet_conn_fail(c, "cannot queue the handshake");
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  fleet_conn_t *c = req->data;
  c->gai_busy = false;
  char ip[INET6_ADDRSTRLEN] = "";
  if (status == 0 && res != NULL) {
    if (res->ai_family == AF_INET6)
      uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, ip, sizeof ip);
    else
      uv_ip4_name((const struct sockaddr_in *)res->ai_addr, ip, sizeof ip);
  }
  uv_freeaddrinfo(res);
  if (c->state == CONN_CLOSING) {
    fleet_conn_maybe_free(c);
    return;
  }
  if (c->state != CONN_CONNECTING) /* timed out meanwhile; retry pending */
    return;
  if (ip[0] == '\0')
    fleet_conn_fail(c, "cannot resolve the host");
  else
    open_contexts(c, ip);
}

static void on_handshake_timeout(uv_timer_t *t) {
  fleet_conn_t *c = t->data;
  if (c->state == CONN_CONNECTING)
    fleet_conn_fail(c, "connect timed out");
}

static void connect_start(fleet_conn_t *c) {
  fleet_t *f = c->fleet;
  c->state = CONN_CONNECTING;
  c->cmd_ok = c->sub_ok = false;
  uv_timer_start(&c->handshake, on_handshake_timeout, 2 * f->timeout_ms, 0);
  if (c->gai_busy)
    return; /* an earlier lookup is still out; it carries on from here */
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, f->host, buf) == 1 ||
      inet_pton(AF_INET6, f->host, buf) == 1) {
    open_contexts(c, f->host);
    return;
  }
  /* hiredis would resolve with a blocking getaddrinfo: do it off-loop */
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  c->gai.data = c;
  if (uv_getaddrinfo(c->loop, &c->gai, on_resolved, f->host, NULL, &hints) ==
      0)
    c->gai_busy = true;
  else
    fleet_conn_fail(c, "cannot resolve the host");
}

static void on_retry(uv_timer_t *t) {
  fleet_conn_t *c = t->data;
  if (c->state == CONN_DOWN)
    connect_start(c);
}

/* ---- API ---------------------------------------------------------------------- */

fleet_cmd_t *fleet_conn_send(fleet_conn_t *c, fleet_op_t *op, int argc,
                             const char **argv, const size_t *argvlen) {
  if (c->cmd_ac == NULL)
    return NULL;
  fleet_cmd_t *r = calloc(1, sizeof *r);
  if (r == NULL)
    return NULL;
  r->conn = c;
  r->ac = c->cmd_ac;
  r->op = op;
  r->sent_ms = hr_ms();
  if (redisAsyncCommandArgv(c->cmd_ac, on_cmd_reply, r, argc, argv,
                            argvlen) != REDIS_OK) {
    free(r);
    return NULL;
  }
  r->prev = c->cmd_tail;
  if (c->cmd_tail != NULL)
    c->cmd_tail->next = r;
  else
    c->cmd_head = r;
  c->cmd_tail = r;
  c->ncmds++;
  if (!uv_is_active((uv_handle_t *)&c->watchdog))
    watchdog_arm(c);
  return r;
}

fleet_conn_t *fleet_conn_new(fleet_t *f, uv_loop_t *loop) {
  if (f == NULL || f->magic != FLEET_MAGIC)
    return NULL;
  fleet_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->magic = FLEET_CONN_MAGIC;
  c->fleet = f;
  c->loop = loop;
  c->id = atomic_fetch_add_explicit(&f->next_conn, 1, memory_order_relaxed);
  c->rng = 0x9e3779b97f4a7c15u ^ ((uint64_t)c->id << 32) ^ hr_ms() ^
           (uint64_t)(uintptr_t)c;
  uv_timer_t *timers[] = {&c->watchdog, &c->handshake, &c->retry, &c->kick};
  for (size_t i = 0; i < 4; i++) {
    uv_timer_init(loop, timers[i]);
    timers[i]->data = c;
  }
  c->open_handles = 4;
  atomic_fetch_add_explicit(&f->nconns, 1, memory_order_relaxed);
  connect_start(c);
  return c;
}

bool fleet_conn_ready(const fleet_conn_t *c) {
  return c != NULL && c->state == CONN_READY;
}

void fleet_conn_close(fleet_conn_t *c) {
  if (c == NULL || c->state == CONN_CLOSING)
    return;
  if (c->state == CONN_READY)
    count_ready(c, -1);
  atomic_fetch_sub_explicit(&c->fleet->nconns, 1, memory_order_relaxed);
  c->state = CONN_CLOSING;
  /* Answer everyone first (their callbacks may still call us), then let
   * hiredis run the remaining reply callbacks with NULL as it frees. */
  c->in_close = true;
  fleet_op_fail_all(c, FLEET_WHY_CLOSED);
  fleet_op_deliver(c);
  c->in_close = false;
  redisAsyncContext *cmd = c->cmd_ac, *sub = c->sub_ac;
  c->cmd_ac = c->sub_ac = NULL;
  if (cmd != NULL)
    redisAsyncFree(cmd);
  if (sub != NULL)
    redisAsyncFree(sub);
  free_dead(c);
  if (c->gai_busy)
    uv_cancel((uv_req_t *)&c->gai);
  uv_timer_t *timers[] = {&c->watchdog, &c->handshake, &c->retry, &c->kick};
  for (size_t i = 0; i < 4; i++)
    uv_close((uv_handle_t *)timers[i], on_handle_closed);
}
