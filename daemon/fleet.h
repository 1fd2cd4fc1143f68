/*
 * fleet.h — fleet mode (DESIGN.md §4): instances sharing one Redis get a
 * shared L2 cache and one flight per key across the whole fleet.
 *
 * The proxy first coalesces its own clients; only the leader of a LOCAL
 * flight calls fleet_acquire, which answers exactly one of:
 *   FLEET_HIT    another instance stored a fresh value: use it, no upstream;
 *   FLEET_LEAD   this instance holds the fleet lease for the key: fetch,
 *                then fleet_publish (value shared) or fleet_abandon;
 *   FLEET_LOCAL  fetch on your own (Redis down/slow, waited too long, or
 *                the fleet's leader ended without a shareable value).
 * So a herd of N requests on K instances costs one upstream call.
 *
 * Protocol (all keys under the configured prefix P, key names are the
 * XXH3-128 of the cache key in hex, so no identity value appears in Redis):
 *   P v:<hex>  the shared value (response_codec blob), PX = all its windows
 *   P l:<hex>  the lease: SET NX PX lease_ms, value = a token unique per
 *              instance and flight; deleted only by compare-and-delete
 *   P fleet:<db>  the one pub/sub channel; a publish says "<hex>|v|<token>"
 *              (a value was stored) or "<hex>|n|<token>" (holder <token>
 *              ended without one)
 * Acquire is one Lua EVAL (value? else SET NX? else PTTL + holder), so
 * checking and locking are atomic. A waiter is woken by the publish — never
 * by polling; it re-runs the EVAL only when the holder's lease has expired
 * by Redis's own clock (PTTL), and the SET NX lets exactly one waiter take
 * over while the others keep waiting for the new holder. The whole wait is
 * bounded by 2 x lease_ms, then FLEET_LOCAL.
 *
 * Degrading: every command has a deadline (config timeout_ms); a command
 * past it, a connection error or a failed handshake marks the connection
 * down, answers everything in progress with FLEET_LOCAL, counts
 * redis_errors / fleet_fallbacks, and reconnects with jittered exponential
 * backoff (100 ms .. 5 s; it restarts from 100 ms only after a connection
 * held 10 s, so a flapping Redis is not hammered). While down every
 * acquire is FLEET_LOCAL at once.
 * No Redis error ever reaches a client: the caller just fetches itself.
 *
 * Threading: a fleet_t is shared by every worker (counters are atomics;
 * fleet_stats from any thread). Each worker loop owns one fleet_conn_t
 * (a command connection + a subscriber connection, hiredis async on the
 * libuv adapter); every fleet_conn_* / fleet_acquire / fleet_publish call
 * for it is made on that loop's thread, and every callback runs on it —
 * from a later loop turn, never from inside fleet_acquire/fleet_publish
 * (exceptions: fleet_acquire out of memory, and fleet_publish on a closed
 * conn, answer before returning). No call blocks the loop (host names
 * resolve with uv_getaddrinfo).
 *
 * Ownership: a lease belongs to the conn that acquired it and must be
 * given back exactly once, by fleet_publish or fleet_abandon, on that
 * conn's loop — even after fleet_conn_close (the conn's memory waits for
 * it). Instances of a fleet must run the same config (the cache key holds
 * the route's upstream index) and keep wall clocks in sync (NTP): a shared
 * value's windows are measured from its wall-clock store time.
 */
#ifndef COALESCED_FLEET_H
#define COALESCED_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "coalesce.h"
#include "config.h"

typedef struct fleet fleet_t;
typedef struct fleet_conn fleet_conn_t;
typedef struct fleet_lease fleet_lease_t;

#define FLEET_DEFAULT_MAX_VALUE (4u << 20) /* bytes of one encoded value */

typedef enum fleet_outcome {
  FLEET_HIT = 1,
  FLEET_LEAD = 2,
  FLEET_LOCAL = 3,
} fleet_outcome_t;

/* Why an acquire ended FLEET_LOCAL. The first three are fallbacks (counted
 * in fleet_fallbacks): Redis could not answer in time. */
typedef enum fleet_why {
  FLEET_WHY_NONE = 0,
  FLEET_WHY_UNAVAILABLE = 1,  /* not connected (starting, down, backoff) */
  FLEET_WHY_ERROR = 2,        /* a command failed, timed out, or the
                                 connection broke while we waited */
  FLEET_WHY_WAIT_TIMEOUT = 3, /* waited 2 x lease_ms for another instance */
  FLEET_WHY_RELEASED = 4,     /* its holder ended the flight with no
                                 shareable value: everyone fetches alone,
                                 in parallel (DESIGN.md invariant 6) */
  FLEET_WHY_CLOSED = 5,       /* fleet_conn_close ran */
} fleet_why_t;

typedef struct fleet_result {
  fleet_outcome_t outcome;
  fleet_why_t why;         /* FLEET_LOCAL only */
  coalesce_value_t *value; /* FLEET_HIT: a response (response_of) with one
                              reference the callback owns and must release */
  coalesce_ttl_t ttl;      /* FLEET_HIT: the windows it has left (age_ns
                              includes its time in Redis) */
  fleet_lease_t *lease;    /* FLEET_LEAD: give back exactly once */
  bool takeover;           /* FLEET_LEAD: taken from an expired holder */
  bool waited;             /* another instance's flight was waited on */
} fleet_result_t;

/* Runs exactly once per fleet_acquire, on the conn's loop. res and its
 * fields are valid during the call; value and lease are handed over. */
typedef void (*fleet_acquire_cb)(void *ud, const fleet_result_t *res);

/* err: 0 when Redis ran the publish (value stored if one was given and it
 * fit), COALESCE_ETOOBIG when the value was over the size limit or not
 * encodable (the lease was still released and waiters told to fetch
 * alone), COALESCE_ECANCELED when Redis was unavailable (nothing stored;
 * the lease expires on its own). */
typedef void (*fleet_publish_cb)(void *ud, int err);

typedef enum fleet_state {
  FLEET_STATE_DISABLED = 0, /* no --redis */
  FLEET_STATE_CONNECTED = 1,
  FLEET_STATE_DEGRADED = 2, /* some worker is not connected right now */
} fleet_state_t;

typedef struct fleet_stats {
  fleet_state_t state;
  const char *state_name;    /* "disabled" | "connected" | "degraded" */
  unsigned conns;            /* worker connections open */
  unsigned conns_ready;      /* of which connected */
  uint64_t redis_errors;     /* failed/timed-out commands and connections */
  uint64_t fleet_fallbacks;  /* acquires answered LOCAL for Redis' sake */
  uint64_t l2_hits;          /* acquires answered HIT */
  uint64_t leases_acquired;  /* acquires answered LEAD (takeovers too) */
  uint64_t lease_takeovers;  /* of which taken from an expired holder */
  uint64_t waits;            /* acquires that waited on another instance */
  uint64_t released;         /* waits ended by a holder without a value */
  uint64_t publishes;        /* values stored in Redis */
  uint64_t leases_lost;      /* publishes that found their lease expired */
  uint64_t reconnects;       /* connections re-established after a failure */
} fleet_stats_t;

/* Shared state for one process, from cfg->redis (copied: cfg may go).
 * cfg->url must be set (no fleet_t at all when fleet mode is off; stats
 * with a NULL fleet report "disabled"). max_value: largest encoded value
 * stored (0: FLEET_DEFAULT_MAX_VALUE). NULL on allocation failure. */
fleet_t *fleet_new(const config_redis_t *cfg, size_t max_value);
/* After every conn has closed and its loop has run; NULL is a no-op. */
void fleet_free(fleet_t *f);

/* On the loop's thread: a connection pair for this loop; starts connecting
 * at once (fleet_acquire answers FLEET_LOCAL until it is ready). NULL on
 * allocation failure. */
fleet_conn_t *fleet_conn_new(fleet_t *f, uv_loop_t *loop);
/* On the loop's thread: answers every acquire in progress with FLEET_LOCAL
 * (FLEET_WHY_CLOSED) and every pending publish callback, before returning;
 * closes connections and handles. The loop must run afterwards for the
 * handles to finish closing (as with uv_close); leases still out are
 * given back later as usual. No fleet_acquire after this. NULL: no-op. */
void fleet_conn_close(fleet_conn_t *c);
/* Whether both connections are up (acquire would reach Redis). */
bool fleet_conn_ready(const fleet_conn_t *c);

/* The fleet-wide step of a local flight's leader for cache key key[0..len)
 * (binary, hashed before use). lease_ms: how long the lease protects the
 * fetch — the route's upstream timeout plus a margin (config lock_ttl_ms).
 * cb runs once, later, on this loop. A HIT counts only a value with fresh
 * time left (a stale one makes us take the lease and refresh it). */
void fleet_acquire(fleet_conn_t *c, const void *key, size_t keylen,
                   uint64_t lease_ms, fleet_acquire_cb cb, void *ud);

/* Ends a FLEET_LEAD flight on the lease's loop: stores value (a response
 * value, encoded with its windows `ttl`; Redis TTL covers them all) unless
 * value is NULL, releases the lease if still ours (compare-and-delete) and
 * publishes so the waiters stop waiting: with a value they read it, without
 * one they fetch alone. A holder whose lease expired still stores its value
 * but does not wake the new holder's waiters with "no value". The lease is
 * consumed; cb may be NULL. Pipelined; never blocks. */
void fleet_publish(fleet_lease_t *lease, const coalesce_value_t *value,
                   const coalesce_ttl_t *ttl, fleet_publish_cb cb, void *ud);
/* fleet_publish without a value (upstream failed, response not shareable
 * or not storable). */
void fleet_abandon(fleet_lease_t *lease);

/* Any thread. NULL f: state disabled, counters zero. */
void fleet_stats(fleet_t *f, fleet_stats_t *s);
/* Zeroes the counters (not the state). Any thread. */
void fleet_stats_reset(fleet_t *f);
fleet_state_t fleet_state(fleet_t *f);
const char *fleet_state_name(fleet_state_t s);

#endif
