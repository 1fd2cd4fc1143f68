/* clock.c — the monotonic clock every module reads, with the injection
 * point that lets tests drive TTLs, timeouts and breakers without sleeping. */
#include <time.h>

#include "coalesce.h"

uint64_t coalesce_clock_now(const coalesce_clock_t *clock) {
  if (clock != NULL && clock->now != NULL)
    return clock->now(clock->ud);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * COALESCE_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}
