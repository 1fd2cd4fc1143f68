/*
 * fleet_op.c — one fleet_acquire or fleet_publish on a loop's connection.
 *
 * An acquire moves CHECK (the acquire EVAL in flight) -> WAIT (another
 * instance holds the lease; woken only by a publish or its lease's expiry)
 * -> WAKE (GET after a "value stored" publish) -> DONE, possibly looping
 * back to CHECK for a takeover or a stale value. It is in the wait table
 * for its whole life, CHECK included, because the publish travels on the
 * subscriber connection and may be read before our own EVAL's reply: a
 * publish seen during CHECK is remembered (seen_value / seen_release) and
 * applied to the EVAL's answer, so none is lost and none is misapplied to
 * a later holder (releases name the holder's token).
 *
 * Invariants: an op completes exactly once (complete() is the only way to
 * DONE and ignores repeats); completion unhooks it from the table, its
 * timer and its command, and queues it for delivery on a later loop turn.
 */
#include "fleet_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "response_codec.h"

/* KEYS: value, lease. ARGV: token, lease ms, "1" to look for a value first.
 * -> {1, value} | {2} (lease is ours) | {3, pttl, holder} */
static const char ACQUIRE_LUA[] =
    "if ARGV[3] == '1' then "
    "local v = redis.call('GET', KEYS[1]) "
    "if v then return {1, v} end "
    "end "
    "if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    "return {2} end "
    "return {3, redis.call('PTTL', KEYS[2]), "
    "redis.call('GET', KEYS[2]) or ''}";

/* KEYS: value, lease. ARGV: token, channel, hex, value ttl ms ("0": no
 * value), value. Compare-and-delete the lease, store, publish. -> 1 if the
 * lease was still ours. */
static const char PUBLISH_LUA[] =
    "local mine = redis.call('GET', KEYS[2]) == ARGV[1] "
    "if mine then redis.call('DEL', KEYS[2]) end "
    "if ARGV[4] ~= '0' then "
    "redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[4]) "
    "redis.call('PUBLISH', ARGV[2], ARGV[3] .. '|v|' .. ARGV[1]) "
    "elseif mine then "
    "redis.call('PUBLISH', ARGV[2], ARGV[3] .. '|n|' .. ARGV[1]) "
    "end "
    "if mine then return 1 end "
    "return 0";

#define TAKEOVER_MARGIN_MS 2 /* after the holder's PTTL, before SET NX */

typedef enum op_kind { OP_ACQUIRE, OP_PUBLISH } op_kind_t;
typedef enum op_state {
  OP_NEW,
  OP_CHECK,
  OP_WAIT,
  OP_WAKE,
  OP_PUBLISHING,
  OP_DONE,
} op_state_t;

struct fleet_op {
  fleet_conn_t *conn;
  op_kind_t kind;
  op_state_t state;
  uint8_t digest[16];
  char hex[FLEET_HEX_LEN + 1];
  char *vkey, *lkey;
  size_t vkey_len, lkey_len;
  uint64_t lease_ms;
  uint64_t deadline_ms;              /* hr ms: give up waiting */
  char token[FLEET_TOKEN_MAX];       /* ours */
  char holder[FLEET_TOKEN_MAX];      /* whose flight we wait for */
  char seen_release[FLEET_TOKEN_MAX]; /* "n" publish read during CHECK */
  bool seen_value;                   /* "v" publish read during CHECK */
  bool takeover_try;
  bool in_table;
  bool stored;
  fleet_cmd_t *cmd;
  uv_timer_t timer;
  bool timer_init;
  fleet_op_t *tnext; /* wait-table chain */
  fleet_op_t *dnext; /* delivery queue */
  fleet_result_t res;
  int perr;
  fleet_acquire_cb acb;
  fleet_publish_cb pcb;
  void *ud;
};

static uint64_t hr_ms(void) { return uv_hrtime() / 1000000u; }

/* ---- wait table (by digest; chains are short) ---------------------------- */

static size_t bucket_of(const fleet_conn_t *c, const uint8_t d[16]) {
  uint64_t h;
  memcpy(&h, d, sizeof h);
  return (size_t)(h & (c->nbuckets - 1));
}

static void table_grow(fleet_conn_t *c) {
  size_t n = c->nbuckets ? c->nbuckets * 2 : 16;
  fleet_op_t **b = calloc(n, sizeof *b);
  if (b == NULL)
    return; /* longer chains, still correct */
  fleet_op_t **old = c->buckets;
  size_t oldn = c->nbuckets;
  c->buckets = b;
  c->nbuckets = n;
  for (size_t i = 0; i < oldn; i++) {
    for (fleet_op_t *op = old[i], *next; op != NULL; op = next) {
      next = op->tnext;
      size_t k = bucket_of(c, op->digest);
      op->tnext = b[k];
      b[k] = op;
    }
  }
  free(old);
}

static bool table_add(fleet_conn_t *c, fleet_op_t *op) {
  if (c->nwaiting >= c->nbuckets)
    table_grow(c);
  if (c->nbuckets == 0)
    return false;
  size_t k = bucket_of(c, op->digest);
  op->tnext = c->buckets[k];
  c->buckets[k] = op;
  op->in_table = true;
  c->nwaiting++;
  return true;
}

static void table_remove(fleet_conn_t *c, fleet_op_t *op) {
  if (!op->in_table)
    return;
  for (fleet_op_t **p = &c->buckets[bucket_of(c, op->digest)]; *p != NULL;
       p = &(*p)->tnext) {
    if (*p == op) {
      *p = op->tnext;
      break;
    }
  }
  op->in_table = false;
  op->tnext = NULL;
  c->nwaiting--;
}

/* ---- completion and delivery ---------------------------------------------- */

static void complete(fleet_op_t *op) {
  if (op->state == OP_DONE)
    return;
  fleet_conn_t *c = op->conn;
  op->state = OP_DONE;
  table_remove(c, op);
  if (op->timer_init)
    uv_timer_stop(&op->timer);
  if (op->cmd != NULL)
    op->cmd->op = NULL; /* its reply, if any, is now void */
  op->cmd = NULL;
  op->dnext = NULL;
  if (c->done_tail != NULL)
    c->done_tail->dnext = op;
  else
    c->done_head = op;
  c->done_tail = op;
  fleet_conn_kick(c);
}

static void complete_local(fleet_op_t *op, fleet_why_t why) {
  if (op->state == OP_DONE)
    return;
  fleet_t *f = op->conn->fleet;
  op->res.outcome = FLEET_LOCAL;
  op->res.why = why;
  if (why == FLEET_WHY_UNAVAILABLE || why == FLEET_WHY_ERROR ||
      why == FLEET_WHY_WAIT_TIMEOUT)
    fleet_count(&f->fleet_fallbacks);
  else if (why == FLEET_WHY_RELEASED)
    fleet_count(&f->released);
  complete(op);
}

static void complete_hit(fleet_op_t *op, coalesce_value_t *v,
                         const coalesce_ttl_t *ttl) {
  op->res.outcome = FLEET_HIT;
  op->res.value = v;
  op->res.ttl = *ttl;
  fleet_count(&op->conn->fleet->l2_hits);
  complete(op);
}

static void complete_lead(fleet_op_t *op) {
  fleet_conn_t *c = op->conn;
  fleet_lease_t *l = calloc(1, sizeof *l);
  if (l == NULL) { /* the lease in Redis expires on its own */
    complete_local(op, FLEET_WHY_ERROR);
    return;
  }
  l->conn = c;
  memcpy(l->digest, op->digest, sizeof l->digest);
  memcpy(l->token, op->token, sizeof l->token);
  c->leases_out++;
  op->res.outcome = FLEET_LEAD;
  op->res.lease = l;
  op->res.takeover = op->takeover_try;
  fleet_count(&c->fleet->leases_acquired);
  if (op->takeover_try)
    fleet_count(&c->fleet->lease_takeovers);
  complete(op);
}

static void op_closed(uv_handle_t *h) {
  fleet_op_t *op = h->data;
  fleet_conn_t *c = op->conn;
  free(op);
  c->ops_alive--;
  fleet_conn_maybe_free(c);
}

static void op_free(fleet_op_t *op) {
  free(op->vkey);
  free(op->lkey);
  if (op->timer_init) {
    uv_close((uv_handle_t *)&op->timer, op_closed);
    return;
  }
  fleet_conn_t *c = op->conn;
  free(op);
  c->ops_alive--;
  fleet_conn_maybe_free(c);
}

void fleet_op_deliver(fleet_conn_t *c) {
  /* One at a time: a callback may complete more ops or close c. */
  fleet_op_t *op;
  while ((op = c->done_head) != NULL) {
    c->done_head = op->dnext;
    if (c->done_head == NULL)
      c->done_tail = NULL;
    if (op->kind == OP_ACQUIRE)
      op->acb(op->ud, &op->res);
    else if (op->pcb != NULL)
      op->pcb(op->ud, op->perr);
    /* Queued ops are alive, so op_free can free c only with none left. */
    bool more = c->done_head != NULL;
    op_free(op);
    if (!more)
      return;
  }
}

void fleet_op_fail_all(fleet_conn_t *c, fleet_why_t why) {
  for (size_t i = 0; i < c->nbuckets; i++)
    while (c->buckets[i] != NULL)
      complete_local(c->buckets[i], why);
  for (fleet_cmd_t *r = c->cmd_head; r != NULL; r = r->next) {
    fleet_op_t *op = r->op;
    if (op != NULL && op->kind == OP_PUBLISH) {
      op->perr = COALESCE_ECANCELED;
      complete(op);
    }
  }
}

/* ---- acquire ---------------------------------------------------------------- */

static void send_check(fleet_op_t *op, bool look_for_value) {
  char lease[24];
  snprintf(lease, sizeof lease, "%" PRIu64, op->lease_ms);
  const char *argv[] = {"EVAL",    ACQUIRE_LUA, "2",   op->vkey,
                        op->lkey,  op->token,   lease, look_for_value ? "1" : "0"};
  size_t lens[] = {4,
                   sizeof ACQUIRE_LUA - 1,
                   1,
                   op->vkey_len,
                   op->lkey_len,
                   strlen(op->token),
                   strlen(lease),
                   1};
  op->state = OP_CHECK;
  op->cmd = fleet_conn_send(op->conn, op, 8, argv, lens);
  if (op->cmd == NULL) {
    fleet_count(&op->conn->fleet->redis_errors);
    complete_local(op, FLEET_WHY_ERROR);
  }
}

static void send_get(fleet_op_t *op) {
  const char *argv[] = {"GET", op->vkey};
  size_t lens[] = {3, op->vkey_len};
  if (op->timer_init)
    uv_timer_stop(&op->timer);
  op->state = OP_WAKE;
  op->cmd = fleet_conn_send(op->conn, op, 2, argv, lens);
  if (op->cmd == NULL) {
    fleet_count(&op->conn->fleet->redis_errors);
    complete_local(op, FLEET_WHY_ERROR);
  }
}

static void on_op_timer(uv_timer_t *t) {
  fleet_op_t *op = t->data;
  if (op->state != OP_WAIT)
    return;
  if (hr_ms() >= op->deadline_ms) {
    complete_local(op, FLEET_WHY_WAIT_TIMEOUT);
    return;
  }
  /* The holder's lease has expired by Redis's clock without a publish:
   * try to take it over (SET NX lets exactly one waiter win). */
  op->takeover_try = true;
  send_check(op, true);
}

static void enter_wait(fleet_op_t *op, const char *holder, size_t hlen,
                       long long pttl) {
  fleet_conn_t *c = op->conn;
  op->state = OP_WAIT;
  if (hlen >= sizeof op->holder)
    hlen = sizeof op->holder - 1;
  memcpy(op->holder, holder, hlen);
  op->holder[hlen] = '\0';
  op->seen_release[0] = '\0';
  op->seen_value = false;
  op->takeover_try = false;
  if (!op->res.waited) {
    op->res.waited = true;
    fleet_count(&c->fleet->waits);
  }
  uint64_t now = hr_ms();
  if (now >= op->deadline_ms) {
    complete_local(op, FLEET_WHY_WAIT_TIMEOUT);
    return;
  }
  uint64_t left = pttl >= 0 ? (uint64_t)pttl : op->lease_ms;
  uint64_t wake = now + left + TAKEOVER_MARGIN_MS;
  if (wake > op->deadline_ms)
    wake = op->deadline_ms;
  if (!op->timer_init) {
    uv_timer_init(c->loop, &op->timer);
    op->timer.data = op;
    op->timer_init = true;
  }
  uv_timer_start(&op->timer, on_op_timer, wake - now, 0);
}

static bool tokens_eq(const char *a, const char *b, size_t blen) {
  return strlen(a) == blen && memcmp(a, b, blen) == 0;
}

static void on_check_reply(fleet_op_t *op, redisReply *r) {
  fleet_t *f = op->conn->fleet;
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
      r->element[0]->type != REDIS_REPLY_INTEGER)
    goto protocol;
  switch (r->element[0]->integer) {
  case 1: {
    if (r->elements < 2 || r->element[1]->type != REDIS_REPLY_STRING)
      goto protocol;
    coalesce_value_t *v;
    coalesce_ttl_t ttl;
    int rc = response_decode(r->element[1]->str, r->element[1]->len,
                             fleet_wall_ms(), &v, &ttl);
    if (rc == 0 && ttl.fresh_ns > 0) {
      complete_hit(op, v, &ttl);
      return;
    }
    /* stale, expired or unreadable (another version): refresh it */
    if (rc == 0)
      coalesce_value_release(v);
    send_check(op, false);
    return;
  }
  case 2:
    complete_lead(op);
    return;
  case 3: {
    long long pttl = r->elements > 1 &&
                             r->element[1]->type == REDIS_REPLY_INTEGER
                         ? r->element[1]->integer
                         : -1;
    const char *holder = "";
    size_t hlen = 0;
    if (r->elements > 2 && r->element[2]->type == REDIS_REPLY_STRING) {
      holder = r->element[2]->str;
      hlen = r->element[2]->len;
    }
    if (op->seen_value) { /* a value was published while we asked */
      send_get(op);
      return;
    }
    if (op->seen_release[0] != '\0' &&
        tokens_eq(op->seen_release, holder, hlen)) {
      /* the holder we found has already ended without a value */
      complete_local(op, FLEET_WHY_RELEASED);
      return;
    }
    enter_wait(op, holder, hlen, pttl);
    return;
  }
  default:
    goto protocol;
  }
protocol:
  fleet_count(&f->redis_errors);
  LOG_WARN("redis_protocol", "conn=%u what=\"unexpected acquire reply\"",
           op->conn->id);
  complete_local(op, FLEET_WHY_ERROR);
}

static void on_wake_reply(fleet_op_t *op, redisReply *r) {
  if (r->type == REDIS_REPLY_STRING) {
    coalesce_value_t *v;
    coalesce_ttl_t ttl;
    if (response_decode(r->str, r->len, fleet_wall_ms(), &v, &ttl) == 0) {
      complete_hit(op, v, &ttl); /* the flight's own result: any window */
      return;
    }
  }
  /* Gone or unreadable already: ask again (value, lease, or new holder). */
  send_check(op, true);
}

void fleet_acquire(fleet_conn_t *c, const void *key, size_t keylen,
                   uint64_t lease_ms, fleet_acquire_cb cb, void *ud) {
  fleet_op_t *op = calloc(1, sizeof *op);
  if (op != NULL) {
    fleet_digest(key, keylen, op->digest);
    op->vkey = fleet_key_name(c->fleet, 'v', op->digest, &op->vkey_len);
    op->lkey = fleet_key_name(c->fleet, 'l', op->digest, &op->lkey_len);
  }
  if (op == NULL || op->vkey == NULL || op->lkey == NULL) {
    /* Out of memory: the only answer given before returning. */
    fleet_result_t res = {.outcome = FLEET_LOCAL, .why = FLEET_WHY_ERROR};
    if (op != NULL) {
      free(op->vkey);
      free(op->lkey);
      free(op);
    }
    fleet_count(&c->fleet->fleet_fallbacks);
    cb(ud, &res);
    return;
  }
  op->conn = c;
  op->kind = OP_ACQUIRE;
  op->state = OP_NEW;
  fleet_hex(op->digest, op->hex);
  op->lease_ms = lease_ms ? lease_ms : 1;
  op->deadline_ms = hr_ms() + 2 * op->lease_ms;
  fleet_new_token(c->fleet, op->token);
  op->acb = cb;
  op->ud = ud;
  c->ops_alive++;
  if (c->state == CONN_CLOSING) {
    complete_local(op, FLEET_WHY_CLOSED);
    return;
  }
  if (c->state != CONN_READY || !table_add(c, op)) {
    complete_local(op, FLEET_WHY_UNAVAILABLE);
    return;
  }
  send_check(op, true);
}

/* ---- messages ------------------------------------------------------------- */

void fleet_op_message(fleet_conn_t *c, const char *msg, size_t len) {
  uint8_t d[16];
  if (len < FLEET_HEX_LEN + 3 || msg[FLEET_HEX_LEN] != '|' ||
      msg[FLEET_HEX_LEN + 2] != '|' || c->nbuckets == 0 ||
      !fleet_unhex(msg, FLEET_HEX_LEN, d))
    return;
  char kind = msg[FLEET_HEX_LEN + 1];
  const char *token = msg + FLEET_HEX_LEN + 3;
  size_t tlen = len - FLEET_HEX_LEN - 3;
  if ((kind != 'v' && kind != 'n') || tlen >= FLEET_TOKEN_MAX)
    return;
  fleet_op_t *next;
  for (fleet_op_t *op = c->buckets[bucket_of(c, d)]; op != NULL; op = next) {
    next = op->tnext;
    if (memcmp(op->digest, d, sizeof d) != 0)
      continue;
    if (op->state == OP_CHECK) {
      if (kind == 'v') {
        op->seen_value = true;
      } else {
        memcpy(op->seen_release, token, tlen);
        op->seen_release[tlen] = '\0';
      }
    } else if (op->state == OP_WAIT) {
      if (kind == 'v')
        send_get(op);
      else if (tokens_eq(op->holder, token, tlen))
        complete_local(op, FLEET_WHY_RELEASED);
    }
  }
}

/* ---- publish ---------------------------------------------------------------- */

static void on_publish_reply(fleet_op_t *op, redisReply *r) {
  fleet_t *f = op->conn->fleet;
  if (r->type != REDIS_REPLY_INTEGER) {
    fleet_count(&f->redis_errors);
    op->perr = COALESCE_ECANCELED;
  } else {
    if (op->stored)
      fleet_count(&f->publishes);
    if (r->integer == 0)
      fleet_count(&f->leases_lost);
  }
  complete(op);
}

void fleet_op_reply(fleet_op_t *op, redisReply *r) {
  op->cmd = NULL;
  if (op->state == OP_DONE)
    return;
  if (r == NULL || r->type == REDIS_REPLY_ERROR) {
    if (r != NULL) {
      fleet_count(&op->conn->fleet->redis_errors);
      LOG_WARN("redis_error", "conn=%u error=\"%.*s\"", op->conn->id,
               (int)(r->len < 200 ? r->len : 200), r->str);
    }
    if (op->kind == OP_PUBLISH) {
      op->perr = COALESCE_ECANCELED;
      complete(op);
    } else {
      complete_local(op, FLEET_WHY_ERROR);
    }
    return;
  }
  switch (op->state) {
  case OP_CHECK: on_check_reply(op, r); break;
  case OP_WAKE: on_wake_reply(op, r); break;
  case OP_PUBLISHING: on_publish_reply(op, r); break;
  default: break;
  }
}

void fleet_publish(fleet_lease_t *lease, const coalesce_value_t *value,
                   const coalesce_ttl_t *ttl, fleet_publish_cb cb, void *ud) {
  fleet_conn_t *c = lease->conn;
  fleet_t *f = c->fleet;
  fleet_op_t *op = calloc(1, sizeof *op);
  if (op != NULL) {
    memcpy(op->digest, lease->digest, sizeof op->digest);
    op->vkey = fleet_key_name(f, 'v', op->digest, &op->vkey_len);
    op->lkey = fleet_key_name(f, 'l', op->digest, &op->lkey_len);
  }
  if (op == NULL || op->vkey == NULL || op->lkey == NULL) {
    if (op != NULL) {
      free(op->vkey);
      free(op->lkey);
      free(op);
    }
    free(lease); /* the lease in Redis expires on its own */
    c->leases_out--;
    if (cb != NULL)
      cb(ud, COALESCE_ECANCELED);
    fleet_conn_maybe_free(c);
    return;
  }
  op->conn = c;
  op->kind = OP_PUBLISH;
  fleet_hex(op->digest, op->hex);
  memcpy(op->token, lease->token, sizeof op->token);
  op->pcb = cb;
  op->ud = ud;
  c->ops_alive++;
  c->leases_out--;
  free(lease);
  if (c->state != CONN_READY) {
    op->perr = COALESCE_ECANCELED;
    complete(op);
    return;
  }

  char *blob = NULL;
  size_t blob_len = 0;
  char ttl_ms[24] = "0";
  if (value != NULL && ttl != NULL) {
    int rc = response_encode(response_of(value), ttl, fleet_wall_ms(), &blob,
                             &blob_len);
    if (rc != 0 || blob_len > f->max_value) {
      free(blob);
      blob = NULL;
      blob_len = 0;
      op->perr = COALESCE_ETOOBIG;
    } else {
      snprintf(ttl_ms, sizeof ttl_ms, "%" PRIu64, response_codec_ttl_ms(ttl));
      op->stored = true;
    }
  }
  const char *argv[] = {"EVAL",     PUBLISH_LUA, "2",     op->vkey,
                        op->lkey,   op->token,   f->channel, op->hex,
                        ttl_ms,     blob != NULL ? blob : ""};
  size_t lens[] = {4,
                   sizeof PUBLISH_LUA - 1,
                   1,
                   op->vkey_len,
                   op->lkey_len,
                   strlen(op->token),
                   f->channel_len,
                   FLEET_HEX_LEN,
                   strlen(ttl_ms),
                   blob_len};
  op->state = OP_PUBLISHING;
  op->cmd = fleet_conn_send(c, op, 10, argv, lens); /* copies the blob */
  free(blob);
  if (op->cmd == NULL) {
    fleet_count(&f->redis_errors);
    op->perr = COALESCE_ECANCELED;
    complete(op);
  }
}

void fleet_abandon(fleet_lease_t *lease) {
  fleet_publish(lease, NULL, NULL, NULL, NULL);
}
