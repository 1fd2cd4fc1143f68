/*
 * fleet.c — fleet mode's process-wide state: the copied Redis settings,
 * this instance's identity (lease tokens), key naming and the counters.
 * See fleet.h for the protocol; fleet_conn.c and fleet_op.c do the I/O.
 *
 * Everything here is read-only after fleet_new except the atomics, so any
 * worker thread may use it without a lock.
 */
#include "fleet_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

static char *dup_or_null(const char *s) {
  return s != NULL ? strdup(s) : NULL;
}

fleet_t *fleet_new(const config_redis_t *cfg, size_t max_value) {
  if (cfg == NULL || cfg->host == NULL)
    return NULL;
  fleet_t *f = calloc(1, sizeof *f);
  if (f == NULL)
    return NULL;
  f->magic = FLEET_MAGIC;
  f->host = strdup(cfg->host);
  f->port = cfg->port ? cfg->port : 6379;
  f->username = dup_or_null(cfg->username);
  f->password = dup_or_null(cfg->password);
  f->db = cfg->db;
  f->prefix = strdup(cfg->prefix != NULL ? cfg->prefix : "coalesce:");
  f->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 250;
  f->max_value = max_value ? max_value : FLEET_DEFAULT_MAX_VALUE;
  if (f->host == NULL || f->prefix == NULL ||
      (cfg->username != NULL && f->username == NULL) ||
      (cfg->password != NULL && f->password == NULL)) {
    fleet_free(f);
    return NULL;
  }
  f->prefix_len = strlen(f->prefix);
  f->channel_len = f->prefix_len + 6 + 10;
  f->channel = malloc(f->channel_len + 1);
  if (f->channel == NULL) {
    fleet_free(f);
    return NULL;
  }
  f->channel_len = (size_t)snprintf(f->channel, f->channel_len + 1,
                                    "%sfleet:%u", f->prefix, f->db);
  uint64_t id = 0;
  if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id) {
    /* No entropy source: time and address still differ per process. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    id = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
         (uint64_t)(uintptr_t)f;
  }
  snprintf(f->instance, sizeof f->instance, "%016" PRIx64, id);
  return f;
}

void fleet_free(fleet_t *f) {
  if (f == NULL)
    return;
  f->magic = 0;
  free(f->host);
  free(f->username);
  free(f->password);
  free(f->prefix);
  free(f->channel);
  free(f);
}

/* ---- names ---------------------------------------------------------------- */

void fleet_digest(const void *key, size_t len, uint8_t out[16]) {
  XXH128_hash_t h = XXH3_128bits(key, len);
  for (int i = 0; i < 8; i++) {
    out[i] = (uint8_t)(h.high64 >> (56 - 8 * i));
    out[8 + i] = (uint8_t)(h.low64 >> (56 - 8 * i));
  }
}

void fleet_hex(const uint8_t digest[16], char out[FLEET_HEX_LEN + 1]) {
  static const char hx[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    out[2 * i] = hx[digest[i] >> 4];
    out[2 * i + 1] = hx[digest[i] & 15];
  }
  out[FLEET_HEX_LEN] = '\0';
}

static int nibble(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

bool fleet_unhex(const char *s, size_t len, uint8_t out[16]) {
  if (len != FLEET_HEX_LEN)
    return false;
  for (int i = 0; i < 16; i++) {
    int hi = nibble(s[2 * i]), lo = nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return false;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return true;
}

char *fleet_key_name(const fleet_t *f, char kind, const uint8_t digest[16],
                     size_t *len) {
  size_t n = f->prefix_len + 2 + FLEET_HEX_LEN;
  char *s = malloc(n + 1);
  if (s == NULL)
    return NULL;
  memcpy(s, f->prefix, f->prefix_len);
  s[f->prefix_len] = kind;
  s[f->prefix_len + 1] = ':';
  fleet_hex(digest, s + f->prefix_len + 2);
  *len = n;
  return s;
}

void fleet_new_token(fleet_t *f, char out[FLEET_TOKEN_MAX]) {
  uint64_t n = atomic_fetch_add_explicit(&f->next_token, 1,
                                         memory_order_relaxed);
  snprintf(out, FLEET_TOKEN_MAX, "%s-%" PRIx64, f->instance, n);
}

uint64_t fleet_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void fleet_count(_Atomic uint64_t *counter) {
  atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

/* ---- stats ---------------------------------------------------------------- */

fleet_state_t fleet_state(fleet_t *f) {
  if (f == NULL)
    return FLEET_STATE_DISABLED;
  unsigned n = atomic_load_explicit(&f->nconns, memory_order_relaxed);
  unsigned r = atomic_load_explicit(&f->nready, memory_order_relaxed);
  return n > 0 && r >= n ? FLEET_STATE_CONNECTED : FLEET_STATE_DEGRADED;
}

const char *fleet_state_name(fleet_state_t s) {
  switch (s) {
  case FLEET_STATE_CONNECTED: return "connected";
  case FLEET_STATE_DEGRADED: return "degraded";
  default: return "disabled";
  }
}

static uint64_t rd(_Atomic uint64_t *a) {
  return atomic_load_explicit(a, memory_order_relaxed);
}

void fleet_stats(fleet_t *f, fleet_stats_t *s) {
  memset(s, 0, sizeof *s);
  s->state = fleet_state(f);
  s->state_name = fleet_state_name(s->state);
  if (f == NULL)
    return;
  s->conns = atomic_load_explicit(&f->nconns, memory_order_relaxed);
  s->conns_ready = atomic_load_explicit(&f->nready, memory_order_relaxed);
  s->redis_errors = rd(&f->redis_errors);
  s->fleet_fallbacks = rd(&f->fleet_fallbacks);
  s->l2_hits = rd(&f->l2_hits);
  s->leases_acquired = rd(&f->leases_acquired);
  s->lease_takeovers = rd(&f->lease_takeovers);
  s->waits = rd(&f->waits);
  s->released = rd(&f->released);
  s->publishes = rd(&f->publishes);
  s->leases_lost = rd(&f->leases_lost);
  s->reconnects = rd(&f->reconnects);
}

void fleet_stats_reset(fleet_t *f) {
  if (f == NULL)
    return;
  _Atomic uint64_t *all[] = {&f->redis_errors,    &f->fleet_fallbacks,
                             &f->l2_hits,         &f->leases_acquired,
                             &f->lease_takeovers, &f->waits,
                             &f->released,        &f->publishes,
                             &f->leases_lost,     &f->reconnects};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    atomic_store_explicit(all[i], 0, memory_order_relaxed);
}
