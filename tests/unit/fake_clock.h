/* fake_clock.h — a clock tests move by hand, so TTL, timeout and breaker
 * tests never sleep. Thread-safe: tests may advance it while others read. */
#ifndef COALESCE_TEST_FAKE_CLOCK_H
#define COALESCE_TEST_FAKE_CLOCK_H

#include <stdatomic.h>

#include "coalesce.h"

typedef struct fake_clock {
  _Atomic uint64_t now_ns;
  coalesce_clock_t clock;
} fake_clock_t;

static inline uint64_t fake_clock_read_(void *ud) {
  return atomic_load(&((fake_clock_t *)ud)->now_ns);
}

/* Starts at 1000 s so "0" is never a valid reading. */
static inline void fake_clock_init(fake_clock_t *fc) {
  atomic_init(&fc->now_ns, 1000 * COALESCE_NS_PER_SEC);
  fc->clock.now = fake_clock_read_;
  fc->clock.ud = fc;
}

static inline void fake_clock_advance(fake_clock_t *fc, uint64_t ns) {
  atomic_fetch_add(&fc->now_ns, ns);
}

#define MS(x) ((uint64_t)(x)*COALESCE_NS_PER_MS)
#define SEC(x) ((uint64_t)(x)*COALESCE_NS_PER_SEC)

#endif
