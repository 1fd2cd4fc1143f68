/*
 * response_codec.h — a stored response as bytes, for the fleet's shared L2
 * cache (Redis), with the freshness windows it was stored with.
 *
 * The blob carries everything response_new needs to rebuild an equal
 * response_t (status, stored fields, body, arrival time, upstream Age) plus
 * its coalesce_ttl_t and the wall-clock millisecond it was stored, so any
 * instance can work out how much of each window is left. Wall clocks of the
 * fleet are assumed NTP-synchronised; a blob "from the future" counts as
 * just stored.
 *
 * The decoder reads untrusted bytes (anything may sit under a Redis key):
 * every length is bounds-checked, the layout is versioned by a magic and a
 * version byte, and anything malformed, truncated, with trailing bytes, or
 * with a field response_new would not accept (CR, LF or NUL in a field, a
 * ':' or blank in a name, a status outside 100..999) is rejected as a
 * whole. tests/fuzz/fuzz_response_codec.c holds it to that.
 *
 * Layout v1, integers little-endian:
 *   "CLSR" u8 version=1 u8 flags=0 u16 0
 *   u64 stored_wall_ms
 *   u64 fresh_ns swr_ns sie_ns age_ns keep_ns
 *   i64 received (unix s)  u64 upstream_age (s)
 *   u16 status u16 0 u32 n_fields u64 body_len
 *   n_fields x { u32 name_len u32 value_len name value }
 *   body, and nothing after it.
 */
#ifndef COALESCED_RESPONSE_CODEC_H
#define COALESCED_RESPONSE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "coalesce.h"
#include "response.h"

#define RESPONSE_CODEC_VERSION 1
#define RESPONSE_CODEC_MAX_FIELDS 1024 /* response_new keeps fewer in practice */

/* Serialises r with the windows it is stored under, stored at wall-clock
 * stored_wall_ms. On 0, *out is a malloc'd buffer of *len bytes the caller
 * frees. COALESCE_EINVAL for a response the decoder would refuse (too many
 * fields, a field over 4 GiB), COALESCE_ENOMEM on allocation failure. */
int response_encode(const response_t *r, const coalesce_ttl_t *ttl,
                    uint64_t stored_wall_ms, char **out, size_t *len);

/* Rebuilds the response in buf[0..len) as a new value (*out, one reference
 * the caller releases) and fills *ttl_left with the windows remaining at
 * wall-clock now_wall_ms: elapsed time is taken first from the fresh
 * window, then stale-while-revalidate, stale-if-error, keep; age_ns grows
 * by it. Returns 0; COALESCE_EINVAL for malformed input (nothing is
 * allocated); COALESCE_ENOTFOUND when every window has passed;
 * COALESCE_ENOMEM. buf is only read, and need not be NUL-terminated. */
int response_decode(const char *buf, size_t len, uint64_t now_wall_ms,
                    coalesce_value_t **out, coalesce_ttl_t *ttl_left);

/* Milliseconds that cover every window of ttl (rounded up, at least 1):
 * the Redis TTL a blob stored now should carry. */
uint64_t response_codec_ttl_ms(const coalesce_ttl_t *ttl);

#endif
