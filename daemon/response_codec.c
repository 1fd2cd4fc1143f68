/* response_codec.c — stored responses as L2 blobs; see response_codec.h. */
#include "response_codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR_LEN 88 /* fixed part of the layout, up to the first field */
static const char MAGIC[4] = {'C', 'L', 'S', 'R'};

/* ---- little-endian helpers (no struct punning: layout is the format) ---- */

static void put_u16(char *p, uint16_t v) {
  for (int i = 0; i < 2; i++)
    p[i] = (char)(v >> (8 * i));
}

static void put_u32(char *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (char)(v >> (8 * i));
}

static void put_u64(char *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (char)(v >> (8 * i));
}

static uint64_t get_le(const char *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--)
    v = (v << 8) | (uint8_t)p[i];
  return v;
}

static uint64_t sat_add(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* What response_new would store unchanged: no CR, LF or NUL anywhere (they
 * would split or cut the stored lines), a non-empty name without ':'. */
static bool value_ok(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
      return false;
  return true;
}

static bool name_ok(const char *s, size_t n) {
  return n > 0 && value_ok(s, n) && memchr(s, ':', n) == NULL;
}

/* ---- encode --------------------------------------------------------------- */

int response_encode(const response_t *r, const coalesce_ttl_t *ttl,
                    uint64_t stored_wall_ms, char **out, size_t *len) {
  if (r->status < 100 || r->status > 999)
    return COALESCE_EINVAL;
  size_t total = HDR_LEN, n_fields = 0, body_len = response_body_len(r);
  hdr_t h;
  for (size_t pos = 0; response_next_field(r, &pos, &h); n_fields++) {
    if (n_fields == RESPONSE_CODEC_MAX_FIELDS || h.name_len > UINT32_MAX ||
        h.value_len > UINT32_MAX || !name_ok(h.name, h.name_len) ||
        !value_ok(h.value, h.value_len))
      return COALESCE_EINVAL;
    total += 8 + h.name_len + h.value_len;
  }
  if (body_len > SIZE_MAX - total)
    return COALESCE_EINVAL;
  total += body_len;
  char *b = malloc(total);
  if (b == NULL)
    return COALESCE_ENOMEM;

  memcpy(b, MAGIC, 4);
  b[4] = RESPONSE_CODEC_VERSION;
  b[5] = 0;
  put_u16(b + 6, 0);
  put_u64(b + 8, stored_wall_ms);
  put_u64(b + 16, ttl->fresh_ns);
  put_u64(b + 24, ttl->swr_ns);
  put_u64(b + 32, ttl->sie_ns);
  put_u64(b + 40, ttl->age_ns);
  put_u64(b + 48, ttl->keep_ns);
  put_u64(b + 56, (uint64_t)(int64_t)r->received);
  put_u64(b + 64, r->upstream_age);
  put_u16(b + 72, r->status);
  put_u16(b + 74, 0);
  put_u32(b + 76, (uint32_t)n_fields);
  put_u64(b + 80, body_len);
  char *p = b + HDR_LEN;
  for (size_t pos = 0; response_next_field(r, &pos, &h);) {
    put_u32(p, (uint32_t)h.name_len);
    put_u32(p + 4, (uint32_t)h.value_len);
    memcpy(p + 8, h.name, h.name_len);
    memcpy(p + 8 + h.name_len, h.value, h.value_len);
    p += 8 + h.name_len + h.value_len;
  }
  if (body_len > 0)
    memcpy(p, response_body(r), body_len);
  *out = b;
  *len = total;
  return 0;
}

/* ---- decode --------------------------------------------------------------- */

/* Takes elapsed time out of one window, in order. */
static void consume(uint64_t *window, uint64_t *elapsed) {
  if (*elapsed >= *window) {
    *elapsed -= *window;
    *window = 0;
  } else {
    *window -= *elapsed;
    *elapsed = 0;
  }
}

int response_decode(const char *buf, size_t len, uint64_t now_wall_ms,
                    coalesce_value_t **out, coalesce_ttl_t *ttl_left) {
  *out = NULL;
  if (len < HDR_LEN || memcmp(buf, MAGIC, 4) != 0 ||
      buf[4] != RESPONSE_CODEC_VERSION || buf[5] != 0 ||
      get_le(buf + 6, 2) != 0 || get_le(buf + 74, 2) != 0)
    return COALESCE_EINVAL;
  uint64_t stored_ms = get_le(buf + 8, 8);
  coalesce_ttl_t t = {.fresh_ns = get_le(buf + 16, 8),
                      .swr_ns = get_le(buf + 24, 8),
                      .sie_ns = get_le(buf + 32, 8),
                      .age_ns = get_le(buf + 40, 8),
                      .keep_ns = get_le(buf + 48, 8)};
  int64_t received = (int64_t)get_le(buf + 56, 8);
  uint64_t upstream_age = get_le(buf + 64, 8);
  uint64_t status = get_le(buf + 72, 2);
  uint64_t nfields = get_le(buf + 76, 4);
  uint64_t body_len = get_le(buf + 80, 8);
  if (status < 100 || status > 999 || nfields > RESPONSE_CODEC_MAX_FIELDS)
    return COALESCE_EINVAL;

  /* Walk the fields once to validate; they are only pointed at, since
   * response_new copies what it keeps. One slot more for the Age field
   * that carries upstream_age back into response_new. */
  hdr_t *h = malloc((size_t)(nfields + 1) * sizeof *h);
  if (h == NULL)
    return COALESCE_ENOMEM;
  size_t off = HDR_LEN;
  for (uint64_t i = 0; i < nfields; i++) {
    if (len - off < 8)
      goto bad;
    uint64_t nl = get_le(buf + off, 4), vl = get_le(buf + off + 4, 4);
    off += 8;
    if (nl > len - off || vl > len - off - nl)
      goto bad;
    h[i] = (hdr_t){buf + off, (size_t)nl, buf + off + nl, (size_t)vl};
    if (!name_ok(h[i].name, h[i].name_len) ||
        !value_ok(h[i].value, h[i].value_len))
      goto bad;
    off += nl + vl;
  }
  if (body_len != len - off)
    goto bad; /* truncated, or bytes after the body */

  uint64_t elapsed_ms = now_wall_ms > stored_ms ? now_wall_ms - stored_ms : 0;
  uint64_t elapsed = elapsed_ms > UINT64_MAX / COALESCE_NS_PER_MS
                         ? UINT64_MAX
                         : elapsed_ms * COALESCE_NS_PER_MS;
  uint64_t span = sat_add(sat_add(t.fresh_ns, t.swr_ns),
                          sat_add(t.sie_ns, t.keep_ns));
  if (elapsed >= span) {
    free(h);
    return COALESCE_ENOTFOUND;
  }
  t.age_ns = sat_add(t.age_ns, elapsed);
  consume(&t.fresh_ns, &elapsed);
  consume(&t.swr_ns, &elapsed);
  consume(&t.sie_ns, &elapsed);
  consume(&t.keep_ns, &elapsed);

  /* response_new drops Age from the stored fields but reads it: the last
   * Age it sees sets upstream_age. */
  char age[24];
  int al = snprintf(age, sizeof age, "%llu", (unsigned long long)upstream_age);
  h[nfields] = (hdr_t){"Age", 3, age, (size_t)al};
  coalesce_value_t *v =
      response_new((int)status, h, (size_t)nfields + 1, buf + off,
                   (size_t)body_len, (time_t)received);
  free(h);
  if (v == NULL)
    return COALESCE_ENOMEM;
  *out = v;
  *ttl_left = t;
  return 0;
bad:
  free(h);
  return COALESCE_EINVAL;
}

uint64_t response_codec_ttl_ms(const coalesce_ttl_t *ttl) {
  uint64_t span = sat_add(sat_add(ttl->fresh_ns, ttl->swr_ns),
                          sat_add(ttl->sie_ns, ttl->keep_ns));
  uint64_t ms = span / COALESCE_NS_PER_MS + (span % COALESCE_NS_PER_MS != 0);
  return ms > 0 ? ms : 1;
}
