/* recfilter.c — "may have a record" filters; see recfilter.h. */
#include "recfilter.h"

#include <xxhash.h>

uint64_t recfilter_hash(const void *data, size_t len, uint64_t seed) {
  return XXH3_64bits_withSeed(data, len, seed);
}
