/*
 * fleet_int.h — what fleet.c (shared state, stats), fleet_conn.c (the two
 * Redis connections of one loop) and fleet_op.c (acquire / publish) share.
 *
 * Lifetimes on one loop:
 *  - an op (one acquire or publish) lives from its call until its callback
 *    has run; while it waits for a reply it owns one fleet_cmd_t, and an
 *    acquire sits in the conn's wait table (by key digest) from start to
 *    completion so that no publish can slip past it;
 *  - a fleet_cmd_t is freed only by hiredis calling its reply callback
 *    (with NULL when the context is freed), so it may outlive its op: the
 *    op then just clears cmd->op ("orphaned");
 *  - hiredis contexts are never freed from inside hiredis' own callbacks
 *    (0.14 would touch them afterwards): a failing connection moves them to
 *    `dead`, and the kick timer frees them on the next loop turn;
 *  - user callbacks run only from the kick timer (or fleet_conn_close),
 *    never from inside a hiredis callback or the call that started them;
 *  - the conn's memory goes when it is closing and nothing refers to it:
 *    its handles closed, no resolver, no lease out, no op alive, no cmd.
 */
#ifndef COALESCED_FLEET_INT_H
#define COALESCED_FLEET_INT_H

#include <hiredis/async.h>
#include <stdatomic.h>

#include "fleet.h"

#define FLEET_MAGIC 0x464c5431u      /* "FLT1" */
#define FLEET_CONN_MAGIC 0x46434e31u /* "FCN1" */
#define FLEET_TOKEN_MAX 48
#define FLEET_HEX_LEN 32 /* 128-bit digest */

typedef struct fleet_op fleet_op_t;
typedef struct fleet_cmd fleet_cmd_t;

struct fleet {
  uint32_t magic;
  char *host;
  uint16_t port;
  char *username;
  char *password;
  unsigned db;
  char *prefix;
  size_t prefix_len;
  char *channel; /* prefix "fleet:" db */
  size_t channel_len;
  uint64_t timeout_ms;
  size_t max_value;
  char instance[17]; /* random per process: tokens never repeat across */
  _Atomic uint64_t next_token;
  _Atomic unsigned next_conn;
  _Atomic unsigned nconns, nready;
  _Atomic uint64_t redis_errors, fleet_fallbacks, l2_hits, leases_acquired,
      lease_takeovers, waits, released, publishes, leases_lost, reconnects;
};

typedef enum conn_state {
  CONN_DOWN = 0,       /* waiting for the retry timer */
  CONN_CONNECTING = 1, /* resolving, connecting or in the handshake */
  CONN_READY = 2,
  CONN_CLOSING = 3,
} conn_state_t;

/* One request on the command connection, in send order (the watchdog
 * looks at the oldest live one). */
struct fleet_cmd {
  fleet_conn_t *conn;
  redisAsyncContext *ac; /* sent on; replies from a dead context are void */
  fleet_op_t *op;        /* NULL: handshake, or the op is gone */
  uint64_t sent_ms;      /* uv_now */
  fleet_cmd_t *prev, *next;
};

struct fleet_conn {
  uint32_t magic;
  fleet_t *fleet;
  uv_loop_t *loop;
  unsigned id;
  conn_state_t state;
  bool in_close; /* inside fleet_conn_close: it delivers callbacks itself */
  bool ever_ready, failed_since_ready;
  redisAsyncContext *cmd_ac, *sub_ac;
  redisAsyncContext *dead[4];
  bool cmd_ok, sub_ok; /* handshake done on each */
  uv_timer_t watchdog;  /* oldest command's deadline */
  uv_timer_t handshake; /* connect + auth + subscribe deadline */
  uv_timer_t retry;     /* reconnect backoff */
  uv_timer_t kick;      /* 0 ms: free dead contexts, deliver callbacks */
  unsigned open_handles;
  uv_getaddrinfo_t gai;
  bool gai_busy;
  uint64_t backoff_ms;
  uint64_t ready_at_ms; /* hr ms of the last CONNECTING -> READY */
  uint64_t rng;
  fleet_cmd_t *cmd_head, *cmd_tail;
  size_t ncmds;
  fleet_op_t **buckets; /* wait table: acquires in progress, by digest */
  size_t nbuckets, nwaiting;
  fleet_op_t *done_head, *done_tail; /* completed, callback not yet run */
  size_t ops_alive; /* ops not yet freed (incl. timers closing) */
  size_t leases_out;
};

struct fleet_lease {
  fleet_conn_t *conn;
  uint8_t digest[16];
  char token[FLEET_TOKEN_MAX];
};

/* fleet.c */
void fleet_digest(const void *key, size_t len, uint8_t out[16]);
void fleet_hex(const uint8_t digest[16], char out[FLEET_HEX_LEN + 1]);
bool fleet_unhex(const char *s, size_t len, uint8_t out[16]);
/* "<prefix><kind>:<hex>" into a malloc'd string; NULL on OOM. */
char *fleet_key_name(const fleet_t *f, char kind, const uint8_t digest[16],
                     size_t *len);
void fleet_new_token(fleet_t *f, char out[FLEET_TOKEN_MAX]);
uint64_t fleet_wall_ms(void);
void fleet_count(_Atomic uint64_t *counter);

/* fleet_conn.c */
/* Sends argv on the command connection for op (NULL: handshake). Returns
 * the record, or NULL if it could not be queued (the caller fails op). */
fleet_cmd_t *fleet_conn_send(fleet_conn_t *c, fleet_op_t *op, int argc,
                             const char **argv, const size_t *argvlen);
/* Marks the connection broken (why: short text for the log); everything in
 * progress is answered LOCAL; reconnects later. Safe inside hiredis
 * callbacks. */
void fleet_conn_fail(fleet_conn_t *c, const char *why);
/* Starts the kick timer (delivery of completed ops on the next turn). */
void fleet_conn_kick(fleet_conn_t *c);
/* Frees the conn if it is closing and nothing refers to it any more. */
void fleet_conn_maybe_free(fleet_conn_t *c);

/* fleet_op.c */
/* A reply (NULL when the context went away) for op's outstanding cmd. */
void fleet_op_reply(fleet_op_t *op, redisReply *reply);
/* A message on the channel. */
void fleet_op_message(fleet_conn_t *c, const char *msg, size_t len);
/* Completes every op of c (acquires: LOCAL why; publishes: ECANCELED). */
void fleet_op_fail_all(fleet_conn_t *c, fleet_why_t why);
/* Runs the callbacks of completed ops, in completion order. */
void fleet_op_deliver(fleet_conn_t *c);

#endif
