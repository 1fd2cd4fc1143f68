/*
 * coalesce.h — the whole public API of libcoalesce.
 *
 * libcoalesce stops a slow, metered upstream from being asked the same
 * question many times at once. Its parts, each usable alone:
 *
 *   value      reference-counted immutable byte values shared by all waiters
 *   cache      sharded, byte-bounded SIEVE cache with fresh / stale-while-
 *              revalidate / stale-if-error windows per entry
 *   coalescer  the in-flight table ("singleflight"): one flight per key,
 *              any number of waiters, blocking and completion-based calls
 *   breaker    closed -> open -> half-open circuit breaker
 *   loader     the whole pipeline: cache -> coalescer -> breaker -> fetch
 *   clock      monotonic, injectable, so TTLs and timeouts test without sleep
 *
 * Conventions: opaque handles with _new/_free pairs (freeing NULL is a
 * no-op); functions that can fail return 0 or a negative COALESCE_E* code
 * (coalesce_strerror names it); every callback carries the caller's void *.
 * The library keeps no global state: two coalescers never share anything.
 * All durations are nanoseconds of the monotonic clock.
 */
#ifndef COALESCE_H
#define COALESCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define COALESCE_VERSION_MAJOR 0
#define COALESCE_VERSION_MINOR 1
#define COALESCE_VERSION_PATCH 0
#define COALESCE_VERSION_STRING "0.1.0"

#define COALESCE_NS_PER_MS UINT64_C(1000000)
#define COALESCE_NS_PER_SEC UINT64_C(1000000000)

/* ------------------------------------------------------------------ errors */

/* XX(name, value, message). Values are stable ABI. */
#define COALESCE_ERRNO_MAP(XX)                                                 \
  XX(NOMEM, -1, "out of memory")                                               \
  XX(INVAL, -2, "invalid argument")                                            \
  XX(TIMEDOUT, -3, "timed out waiting for the flight")                         \
  XX(EXPIRED, -4, "flight exceeded its age limit")                             \
  XX(FETCH, -5, "fetch failed")                                                \
  XX(UPSTREAM_TIMEOUT, -6, "upstream timed out")                               \
  XX(CIRCUIT_OPEN, -7, "circuit breaker is open")                              \
  XX(OVERLOADED, -8, "limit reached")                                          \
  XX(UNSHARED, -9, "result may not be shared; fetch your own")                 \
  XX(ALREADY, -10, "already completed")                                        \
  XX(NOTFOUND, -11, "not found")                                               \
  XX(CANCELED, -12, "canceled")                                                \
  XX(QUOTA, -13, "quota exhausted")                                            \
  XX(TOOBIG, -14, "value larger than the cache allows")

enum coalesce_errno {
#define COALESCE_XX_(name, val, msg) COALESCE_E##name = (val),
  COALESCE_ERRNO_MAP(COALESCE_XX_)
#undef COALESCE_XX_
};

/* A static string for any code; "unknown error" for codes not in the map. */
const char *coalesce_strerror(int err);
/* The symbolic name ("COALESCE_ETIMEDOUT"), or "UNKNOWN". */
const char *coalesce_err_name(int err);

/* ------------------------------------------------------------------- clock */

/* Returns monotonic nanoseconds. Must be thread-safe and never go back. */
typedef uint64_t (*coalesce_now_fn)(void *ud);

typedef struct coalesce_clock {
  coalesce_now_fn now;
  void *ud;
} coalesce_clock_t;

/* Reads `clock`, or CLOCK_MONOTONIC when clock is NULL or clock->now NULL.
 * Objects keep the pointer they are given: it must outlive them. */
uint64_t coalesce_clock_now(const coalesce_clock_t *clock);

/* ------------------------------------------------------------------- value */

/* An immutable, reference-counted byte string. The data never moves or
 * changes while any reference is held; references may be taken and released
 * from any thread. */
typedef struct coalesce_value coalesce_value_t;

typedef void (*coalesce_free_fn)(void *ptr, void *ud);

/* Copies len bytes into one allocation (with a trailing NUL not counted in
 * len). Returns NULL on allocation failure. The caller holds one reference. */
coalesce_value_t *coalesce_value_new(const void *data, size_t len);

/* One allocation of len bytes of UNINITIALISED data (*data, aligned for
 * any object type), for a caller that builds a value in place instead of
 * copying it in: fill data[0..len) before sharing the value with another
 * thread or object (a cache, a waiter). No trailing NUL is added. Returns
 * NULL on allocation failure. The caller holds one reference. */
coalesce_value_t *coalesce_value_alloc(size_t len, void **data);

/* Takes ownership of `data` without copying: free_fn(data, ud) runs when the
 * last reference goes (free_fn may be NULL for static data). `charge` is
 * the byte cost reported to caches (0 means len). NULL on allocation
 * failure, in which case `data` still belongs to the caller. */
coalesce_value_t *coalesce_value_adopt(void *data, size_t len, size_t charge,
                                       coalesce_free_fn free_fn, void *ud);

const void *coalesce_value_data(const coalesce_value_t *v);
size_t coalesce_value_len(const coalesce_value_t *v);
/* Bytes a cache accounts for this value (its charge plus its header). */
size_t coalesce_value_charge(const coalesce_value_t *v);

/* Adds a reference and returns v (NULL stays NULL). */
coalesce_value_t *coalesce_value_ref(coalesce_value_t *v);
/* Drops a reference; frees on the last one. NULL is a no-op. */
void coalesce_value_release(coalesce_value_t *v);

/* ------------------------------------------------------------------- stats */

/* One snapshot shape for every object; each fills the fields it owns and
 * leaves the rest zero. Definitions (DESIGN.md §3):
 *   api_calls_saved  = cache_hits + stale_hits + coalesced_requests
 *   hit_rate_percent = 100 * api_calls_saved / total_requests (0 if none) */
typedef struct coalesce_stats {
  /* loader / coalescer */
  uint64_t total_requests;     /* loads (or joins, for a bare coalescer) */
  uint64_t cache_hits;         /* served fresh from cache */
  uint64_t stale_hits;         /* served within stale-while-revalidate */
  uint64_t stale_if_error;     /* served stale because the fetch failed */
  uint64_t coalesced_requests; /* followers of another caller's flight */
  uint64_t api_calls_made;     /* fetches started, refreshes included */
  uint64_t api_calls_saved;
  uint64_t pending_requests; /* flights in the table now (a gauge) */
  uint64_t background_refreshes;
  uint64_t errors;         /* loads answered with an error */
  uint64_t wait_timeouts;  /* waiters whose own max_wait passed */
  uint64_t expired_flights; /* flights detached at their age limit */
  uint64_t unshared;       /* flights whose result could not be shared */
  uint64_t bypassed;       /* loads that went solo (hit-for-miss) */
  uint64_t breaker_rejections; /* fetches not made because it was open */
  uint64_t overloaded;     /* joins refused by a limit */
  double hit_rate_percent;
  /* cache */
  uint64_t cache_entries;
  uint64_t cache_bytes;
  uint64_t cache_max_bytes;
  uint64_t cache_lookups;
  uint64_t cache_misses;
  uint64_t cache_inserts;
  uint64_t cache_evictions;
  /* breaker */
  uint64_t breaker_state; /* coalesce_breaker_state_t */
  uint64_t breaker_opened;
  uint64_t breaker_half_opened;
  uint64_t breaker_closed;
  uint64_t breaker_successes;
  uint64_t breaker_failures;
} coalesce_stats_t;

/* Fills the derived fields (api_calls_saved, hit_rate_percent). */
void coalesce_stats_derive(coalesce_stats_t *s);

/* ------------------------------------------------------------------- cache */

typedef struct coalesce_cache coalesce_cache_t;

typedef struct coalesce_cache_opts {
  size_t max_bytes;  /* budget for values + keys + metadata; default 64 MiB */
  size_t max_value;  /* largest single charge accepted; default max_bytes/8 */
  unsigned shards;   /* rounded up to a power of two; default 16 */
  const coalesce_clock_t *clock; /* NULL: CLOCK_MONOTONIC */
} coalesce_cache_opts_t;

/* Windows of one entry, relative to the moment it is stored:
 *   [0, fresh)               FRESH
 *   [fresh, fresh+swr)       STALE  (serve, refresh in the background)
 *   [fresh+swr, +sie)        STALE_IF_ERROR (serve only if a fetch fails)
 *   [.., +keep)              VALIDATE_ONLY (never served; kept only so a
 *                            fetch can revalidate it: ETag/Last-Modified)
 *   later                    gone (lookups miss; space reclaimed lazily)
 * age_ns is the age the value already had when stored (an upstream Age);
 * lookups report it plus the time since storing. */
typedef struct coalesce_ttl {
  uint64_t fresh_ns;
  uint64_t swr_ns;
  uint64_t sie_ns;
  uint64_t age_ns;
  uint64_t keep_ns;
} coalesce_ttl_t;

typedef enum coalesce_freshness {
  COALESCE_FRESH = 0,
  COALESCE_STALE = 1,
  COALESCE_STALE_IF_ERROR = 2,
  COALESCE_VALIDATE_ONLY = 3,
} coalesce_freshness_t;

typedef struct coalesce_lookup {
  coalesce_value_t *value; /* a reference the caller must release */
  coalesce_freshness_t state;
  uint64_t age_ns;        /* ttl.age_ns + time since stored */
  uint64_t stored_at_ns;  /* clock reading when stored */
  coalesce_ttl_t ttl;     /* as stored */
} coalesce_lookup_t;

void coalesce_cache_opts_init(coalesce_cache_opts_t *opts);
int coalesce_cache_new(const coalesce_cache_opts_t *opts,
                       coalesce_cache_t **out);
void coalesce_cache_free(coalesce_cache_t *cache);

/* Stores a new reference to `value` under key, replacing any entry, and
 * evicts (SIEVE) until the budget holds. COALESCE_ETOOBIG if the value's
 * charge exceeds max_value; COALESCE_EINVAL for an all-zero-window ttl. */
int coalesce_cache_put(coalesce_cache_t *cache, const void *key, size_t keylen,
                       coalesce_value_t *value, const coalesce_ttl_t *ttl);

/* 0 and *out filled (with a value reference) when an entry exists in any
 * window; COALESCE_ENOTFOUND otherwise. A hit takes only the shard's read
 * lock and marks the entry visited. */
int coalesce_cache_get(coalesce_cache_t *cache, const void *key, size_t keylen,
                       coalesce_lookup_t *out);

/* Replaces the windows of an existing entry, restarting them now (used when
 * a revalidation says the stored value is still good). ENOTFOUND if gone. */
int coalesce_cache_touch(coalesce_cache_t *cache, const void *key,
                         size_t keylen, const coalesce_ttl_t *ttl);

/* 0 if an entry was removed, COALESCE_ENOTFOUND if none. */
int coalesce_cache_delete(coalesce_cache_t *cache, const void *key,
                          size_t keylen);
void coalesce_cache_clear(coalesce_cache_t *cache);

/* Fills the cache_* fields of *s. */
void coalesce_cache_stats(coalesce_cache_t *cache, coalesce_stats_t *s);
/* Bytes one entry of this key and value costs against max_bytes. */
size_t coalesce_cache_entry_charge(size_t keylen, const coalesce_value_t *v);

/* ----------------------------------------------------------------- breaker */

typedef struct coalesce_breaker coalesce_breaker_t;

typedef enum coalesce_breaker_state {
  COALESCE_BREAKER_CLOSED = 0,
  COALESCE_BREAKER_OPEN = 1,
  COALESCE_BREAKER_HALF_OPEN = 2,
} coalesce_breaker_state_t;

typedef struct coalesce_breaker_opts {
  unsigned consecutive_failures; /* trip after this many in a row; default 5,
                                    0 disables this rule */
  unsigned window;          /* outcomes in the rate window; 0 disables it */
  unsigned min_volume;      /* outcomes needed before the rate applies */
  double failure_rate;      /* trip at >= this fraction (0..1], default 0.5 */
  uint64_t open_ns;         /* time open before half-open; default 30 s */
  uint64_t max_open_ns;     /* cap on a reported Retry-After; default 1 h */
  unsigned half_open_probes; /* probes let through; all must succeed to
                                close, one failure reopens; default 1 */
  const coalesce_clock_t *clock;
} coalesce_breaker_opts_t;

void coalesce_breaker_opts_init(coalesce_breaker_opts_t *opts);
int coalesce_breaker_new(const coalesce_breaker_opts_t *opts,
                         coalesce_breaker_t **out);
void coalesce_breaker_free(coalesce_breaker_t *b);

/* Asks to make one call. 0: go ahead (in half-open this takes a probe slot
 * that the matching coalesce_breaker_record gives back);
 * COALESCE_ECIRCUIT_OPEN: do not call. Moves open -> half-open when due. */
int coalesce_breaker_allow(coalesce_breaker_t *b);

/* Reports the outcome of one allowed call. retry_after_ns > 0 (from a
 * 429/503 Retry-After) opens the breaker for that long (capped) at once. */
void coalesce_breaker_record(coalesce_breaker_t *b, bool success,
                             uint64_t retry_after_ns);

/* Gives back an allowed call that was not made after all (e.g. refused by a
 * local budget): no outcome is recorded, a half-open probe slot is freed. */
void coalesce_breaker_cancel(coalesce_breaker_t *b);

coalesce_breaker_state_t coalesce_breaker_state(coalesce_breaker_t *b);
/* Nanoseconds until an open breaker lets a probe through (0 if not open). */
uint64_t coalesce_breaker_retry_in(coalesce_breaker_t *b);
const char *coalesce_breaker_state_name(coalesce_breaker_state_t s);
/* Fills the breaker_* fields of *s. */
void coalesce_breaker_stats(coalesce_breaker_t *b, coalesce_stats_t *s);

/* --------------------------------------------------------------- coalescer */

typedef struct coalesce_coalescer coalesce_coalescer_t;
typedef struct coalesce_flight coalesce_flight_t; /* a leader's token */
typedef struct coalesce_waiter coalesce_waiter_t; /* a parked follower */

typedef struct coalesce_coalescer_opts {
  uint64_t max_wait_ns;       /* blocking waiters' timeout; default 5 s */
  uint64_t max_flight_age_ns; /* after this a flight no longer holds its key;
                                 default 10 s */
  uint64_t unshared_ns;       /* how long a key whose result could not be
                                 shared bypasses coalescing; default 2 s */
  size_t max_flights;         /* keys in flight at once; 0 = unlimited */
  size_t max_waiters_per_key; /* 0 = unlimited */
  size_t max_waiters;         /* in total; 0 = unlimited */
  unsigned shards;            /* default 16 */
  const coalesce_clock_t *clock;
} coalesce_coalescer_opts_t;

/* Roles returned by coalesce_join / coalesce_do. */
#define COALESCE_LEADER 1   /* you run the fetch and complete the flight */
#define COALESCE_FOLLOWER 2 /* you wait; your callback will be called */
#define COALESCE_SOLO 3     /* key is hit-for-miss: a private flight, not
                               shared with anyone; complete it like a leader */

/* Called exactly once per registered waiter unless coalesce_waiter_cancel
 * returned 0. err is 0 or negative; value is a reference the callee owns
 * (on error it may hold the error's message text, or be NULL). Runs on the
 * thread that completes (or expires) the flight, without locks held. */
typedef void (*coalesce_done_cb)(void *ud, int err, coalesce_value_t *value);

void coalesce_coalescer_opts_init(coalesce_coalescer_opts_t *opts);
int coalesce_coalescer_new(const coalesce_coalescer_opts_t *opts,
                           coalesce_coalescer_t **out);
/* All flights must have been completed. */
void coalesce_coalescer_free(coalesce_coalescer_t *c);

/* Completion-based entry. If no flight holds `key`, creates one and returns
 * COALESCE_LEADER (or COALESCE_SOLO) with *flight set: the caller must call
 * coalesce_flight_complete exactly once, from any thread. The leader is not
 * a waiter; coalesce_flight_add_waiter makes it one. Otherwise registers
 * cb/ud as a waiter, sets *waiter (if waiter is non-NULL) and returns
 * COALESCE_FOLLOWER; cb may be NULL to join nothing (used to start at most
 * one background refresh). COALESCE_EOVERLOADED when a limit is reached. */
int coalesce_join(coalesce_coalescer_t *c, const void *key, size_t keylen,
                  coalesce_done_cb cb, void *ud, coalesce_flight_t **flight,
                  coalesce_waiter_t **waiter);

/* Registers a waiter on a flight its caller leads (not yet completed). */
int coalesce_flight_add_waiter(coalesce_flight_t *flight, coalesce_done_cb cb,
                               void *ud, coalesce_waiter_t **waiter);

/* Flags for coalesce_flight_complete. */
#define COALESCE_COMPLETE_UNSHARED 0x1u /* followers get COALESCE_EUNSHARED
                                           (NULL value); waiters added with
                                           coalesce_flight_add_waiter (the
                                           leader's own) get err and value
                                           as usual; the key bypasses
                                           coalescing for unshared_ns */

/* Ends the flight: removes it from the table, then calls every waiter's cb
 * with err and its own reference to value (the caller keeps its own
 * reference). Frees the flight. COALESCE_EINVAL for a NULL flight. */
int coalesce_flight_complete(coalesce_flight_t *flight, int err,
                             coalesce_value_t *value, unsigned flags);

/* The key of a flight (valid until it completes). */
const void *coalesce_flight_key(const coalesce_flight_t *flight, size_t *len);

/* Waiter handles belong to the caller that asked for one (a non-NULL
 * `waiter` argument to coalesce_join or coalesce_flight_add_waiter): the
 * library never frees them, so cancel can race completion safely. Free the
 * handle with coalesce_waiter_free once its cb has returned, or after a
 * cancel that returned 0. Without a handle, the library frees the waiter
 * after its cb. The library never touches a waiter after calling its cb.
 *
 * Cancel: 0 — removed, cb will not run. COALESCE_EALREADY — the flight is
 * completing; cb runs (or ran); free the handle only after it has run. */
int coalesce_waiter_cancel(coalesce_waiter_t *waiter);
void coalesce_waiter_free(coalesce_waiter_t *waiter);

/* The key's current flight stops holding it: later joiners start a new
 * flight; waiters of the old one still get its result. 0 or ENOTFOUND. */
int coalesce_forget(coalesce_coalescer_t *c, const void *key, size_t keylen);

/* Detaches flights older than max_flight_age_ns and fails their waiters
 * with COALESCE_EEXPIRED (their leaders still complete them later). Joins
 * do this lazily for their key; call this from a timer to sweep. Returns
 * the number of flights detached. */
size_t coalesce_coalescer_expire(coalesce_coalescer_t *c);

/* Blocking entry: leader runs fetch(ud, key, keylen, &value) inline and
 * shares what it returns (a negative return is shared as the error);
 * followers wait up to max_wait_ns (0: the coalescer's default). On 0,
 * *out holds a reference; *role (if non-NULL) says which role was taken. */
typedef int (*coalesce_fetch_fn)(void *ud, const void *key, size_t keylen,
                                 coalesce_value_t **out);
int coalesce_do(coalesce_coalescer_t *c, const void *key, size_t keylen,
                coalesce_fetch_fn fetch, void *ud, uint64_t max_wait_ns,
                coalesce_value_t **out, int *role);

/* Keys in flight now. */
size_t coalesce_coalescer_pending(coalesce_coalescer_t *c);

/* One flight as coalesce_coalescer_top reports it. Never the key's bytes
 * (keys may hold identity headers): only its hash, which is the
 * coalescer's unkeyed 64-bit xxh3 — key it again (a secret seed) before
 * showing it to anyone who might test guesses against it. */
typedef struct coalesce_flight_info {
  uint64_t key_hash;
  size_t key_len;
  size_t waiters;  /* callbacks parked on it now (a loader leader's own
                      request counts as one) */
  uint64_t age_ns; /* since the flight started */
} coalesce_flight_info_t;

/* Fills out[0..n) with the n <= max flights holding a key now that have
 * the most waiters (ties: the oldest first), in that order, and returns n.
 * Walks every flight, one shard lock at a time: meant for a dashboard
 * polling a few times a second, not for a hot path. */
size_t coalesce_coalescer_top(coalesce_coalescer_t *c,
                              coalesce_flight_info_t *out, size_t max);
/* Fills total_requests (joins), coalesced_requests, api_calls_made
 * (leaders), pending_requests, wait_timeouts, expired_flights, unshared,
 * bypassed, overloaded. */
void coalesce_coalescer_stats(coalesce_coalescer_t *c, coalesce_stats_t *s);
void coalesce_coalescer_stats_reset(coalesce_coalescer_t *c);

/* ------------------------------------------------------------------ loader */

/* The request path of DESIGN.md §1 without HTTP:
 *   cache fresh -> HIT; stale (swr) -> STALE + one background refresh;
 *   miss -> coalescer: follower parks; leader re-checks the cache, asks the
 *   breaker, fetches, stores in the cache, then ends the flight.
 * The loader borrows a cache and a coalescer (the caller owns them, so
 * several loaders may share one) and per load an optional breaker. */
typedef struct coalesce_loader coalesce_loader_t;
typedef struct coalesce_fetch coalesce_fetch_t; /* one fetch in progress */

typedef enum coalesce_source {
  COALESCE_SRC_HIT = 0,
  COALESCE_SRC_STALE,
  COALESCE_SRC_MISS,      /* this load led the flight */
  COALESCE_SRC_COALESCED, /* this load followed another's flight */
  COALESCE_SRC_STALE_IF_ERROR,
  COALESCE_SRC_BYPASS, /* went solo: the key's results are not shareable */
} coalesce_source_t;

/* "HIT", "STALE", "MISS", "COALESCED", "STALE-IF-ERROR", "BYPASS". */
const char *coalesce_source_name(coalesce_source_t src);

/* Flags of a fetch result. */
#define COALESCE_RESULT_NOSTORE 0x1u  /* share with this flight, don't cache */
#define COALESCE_RESULT_NOSHARE 0x2u  /* private: only the leader gets it;
                                         followers get COALESCE_EUNSHARED */
#define COALESCE_RESULT_FAILURE 0x4u  /* a response (err 0) that counts as a
                                         breaker failure, e.g. HTTP 5xx */
#define COALESCE_RESULT_TTL 0x8u      /* use result.ttl, not the load's */
#define COALESCE_RESULT_NOT_MODIFIED 0x10u /* revalidated: the stale value
                                              stands; ttl restarts */
#define COALESCE_RESULT_NO_CALL 0x20u /* no upstream call was made (e.g. a
                                         local budget refused it): nothing
                                         is recorded with the breaker */

typedef struct coalesce_fetch_result {
  int err;                 /* 0 or negative */
  coalesce_value_t *value; /* borrowed: the loader takes its own refs */
  unsigned flags;          /* COALESCE_RESULT_* */
  coalesce_ttl_t ttl;      /* with COALESCE_RESULT_TTL */
  uint64_t retry_after_ns; /* reported to the breaker */
} coalesce_fetch_result_t;

/* Load flags. */
#define COALESCE_LOAD_NO_CACHE_READ 0x1u /* skip the lookup (still coalesce
                                            and store) */
#define COALESCE_LOAD_NO_STORE 0x2u      /* never store this load's fetch */
#define COALESCE_LOAD_SOLO 0x4u          /* do not coalesce: used after
                                            COALESCE_EUNSHARED */

typedef struct coalesce_load_opts {
  coalesce_ttl_t ttl;          /* windows for values this load stores */
  uint64_t max_wait_ns;        /* blocking get only; 0: coalescer default */
  coalesce_breaker_t *breaker; /* NULL: no breaker */
  void *fetch_ctx;             /* handed to the start callback */
  unsigned flags;              /* COALESCE_LOAD_* */
  uint64_t min_stored_ns; /* entries stored before this clock reading are
                             not served (an invalidation); 0: any */
  uint64_t max_stale_ns;  /* STALE / STALE_IF_ERROR entries older than
                             fresh + this are not served (a request's
                             max-stale); UINT64_MAX or 0: no limit */
  uint64_t min_fresh_ns;  /* a FRESH entry must stay fresh this long more
                             to count as fresh (a request's min-fresh) */
  uint64_t max_stale_on_error_ns; /* a stale-if-error fallback may be at
                                     most this stale (a request's own
                                     stale-if-error, RFC 5861 §4); 0: any */
} coalesce_load_opts_t;

typedef struct coalesce_load_result {
  int err;                 /* 0 or negative */
  coalesce_value_t *value; /* a reference the receiver owns (may be NULL on
                              error, or the error message text) */
  coalesce_source_t source;
  uint64_t age_ns; /* for cached answers; 0 for fresh fetches */
  int fallback_err; /* STALE_IF_ERROR: the error the stale copy replaced */
} coalesce_load_result_t;

/* Starts a fetch for key. Called synchronously from coalesce_loader_load on
 * the leader's thread (fetch_ctx is that load's opts->fetch_ctx, valid only
 * during this call), or for a background refresh. `stale` is the cached
 * value if any (borrowed until coalesce_fetch_done), for conditional
 * requests. The callee must call coalesce_fetch_done exactly once, from any
 * thread, possibly before returning. */
typedef void (*coalesce_fetch_start_fn)(void *ud, const void *key,
                                        size_t keylen, void *fetch_ctx,
                                        coalesce_value_t *stale,
                                        coalesce_fetch_t *fetch);

/* The blocking form used by coalesce_loader_get. */
typedef void (*coalesce_fetch_sync_fn)(void *ud, const void *key,
                                       size_t keylen, void *fetch_ctx,
                                       coalesce_value_t *stale,
                                       coalesce_fetch_result_t *res);

/* Called once with the answer of a pending load; owns res->value. Runs on
 * the thread that completed the fetch. */
typedef void (*coalesce_load_cb)(void *ud, coalesce_load_result_t *res);

typedef struct coalesce_loader_opts {
  coalesce_cache_t *cache;          /* required */
  coalesce_coalescer_t *coalescer;  /* required */
  coalesce_fetch_start_fn start;    /* for coalesce_loader_load */
  coalesce_fetch_sync_fn fetch;     /* for coalesce_loader_get */
  void *ud;                         /* for start and fetch */
  const coalesce_clock_t *clock;
} coalesce_loader_opts_t;

int coalesce_loader_new(const coalesce_loader_opts_t *opts,
                        coalesce_loader_t **out);
/* Every fetch must have been completed. */
void coalesce_loader_free(coalesce_loader_t *l);

/* Initialises load options with the defaults: fresh 5 s, swr 30 s,
 * sie 5 min, no breaker. */
void coalesce_load_opts_init(coalesce_load_opts_t *opts);

#define COALESCE_PENDING 1
typedef struct coalesce_load coalesce_load_t; /* a pending load */

/* Completion-based load. Returns 0 with *now filled when answered at once
 * (hit, stale, breaker open, an error), or COALESCE_PENDING when cb(ud, res)
 * will be called exactly once later from another thread (or this one),
 * unless coalesce_loader_cancel succeeds. With a non-NULL `pending`, *pending
 * is a handle the caller owns and frees with coalesce_load_free after cb has
 * returned or after a cancel that returned 0 (the same rule as waiters);
 * with NULL the loader frees it after cb. */
int coalesce_loader_load(coalesce_loader_t *l, const void *key, size_t keylen,
                         const coalesce_load_opts_t *opts, coalesce_load_cb cb,
                         void *ud, coalesce_load_result_t *now,
                         coalesce_load_t **pending);

/* Gives up waiting (the caller's max_wait passed or its client left). 0:
 * cancelled, cb will not run, and *fallback holds a stale-if-error copy
 * (source STALE_IF_ERROR) or err COALESCE_ETIMEDOUT. COALESCE_EALREADY: cb
 * runs or ran; the handle is no longer yours. The flight goes on. */
int coalesce_loader_cancel(coalesce_loader_t *l, coalesce_load_t *pending,
                           coalesce_load_result_t *fallback);
void coalesce_load_free(coalesce_load_t *pending);
/* The path a pending load takes: COALESCE_SRC_MISS (it leads the flight),
 * COALESCE_SRC_COALESCED (it follows another's) or COALESCE_SRC_BYPASS. */
coalesce_source_t coalesce_load_source(const coalesce_load_t *pending);

/* Delivers a fetch's outcome: records it with the breaker once, stores the
 * value (unless not storable), then ends the flight, waking every waiter.
 * Frees `fetch`. */
void coalesce_fetch_done(coalesce_fetch_t *fetch,
                         const coalesce_fetch_result_t *res);

/* Blocking load for threaded programs: the whole path in one call, using
 * opts->fetch for the leader. Followers wait up to max_wait_ns. */
int coalesce_loader_get(coalesce_loader_t *l, const void *key, size_t keylen,
                        const coalesce_load_opts_t *opts,
                        coalesce_load_result_t *out);

/* Full snapshot: the loader's counters, the coalescer's pending gauge and
 * the cache's figures, with derived fields filled. */
void coalesce_loader_stats(coalesce_loader_t *l, coalesce_stats_t *s);
void coalesce_loader_stats_reset(coalesce_loader_t *l);

#ifdef __cplusplus
}
#endif

#endif /* COALESCE_H */
