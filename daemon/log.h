/*
 * log.h — coalesced's structured logs: one logfmt line per event on stderr,
 * `ts=… level=… event=… key=value …`. The level is process-wide (set once
 * from flags/config; reads are relaxed atomics so any thread may log).
 * Values that may hold secrets (injected headers, identity headers) are
 * never passed here.
 */
#ifndef COALESCED_LOG_H
#define COALESCED_LOG_H

#include <stdbool.h>

typedef enum log_level {
  LOG_LEVEL_ERROR = 0,
  LOG_LEVEL_WARN = 1,
  LOG_LEVEL_INFO = 2,
  LOG_LEVEL_DEBUG = 3,
} log_level_t;

void log_set_level(log_level_t level);
log_level_t log_get_level(void);
bool log_enabled(log_level_t level);
/* "error" | "warn" | "info" | "debug" -> 0, or -1 if unknown. */
int log_parse_level(const char *s, log_level_t *out);
const char *log_level_name(log_level_t level);

/* fmt continues the line after `event=NAME`, e.g. "status=%d path=%s".
 * Use log_quote for values that may contain spaces or quotes. */
void log_write(log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes `s` (up to len bytes) as a logfmt value into buf: bare when safe,
 * else double-quoted with \" and \\ and non-printables as \xNN. Always
 * NUL-terminates; truncates to fit. Returns buf. */
char *log_quote(char *buf, unsigned bufsize, const char *s, unsigned len);

#define LOG_ERROR(ev, ...)                                                     \
  do {                                                                         \
    if (log_enabled(LOG_LEVEL_ERROR))                                          \
      log_write(LOG_LEVEL_ERROR, ev, __VA_ARGS__);                             \
  } while (0)
#define LOG_WARN(ev, ...)                                                      \
  do {                                                                         \
    if (log_enabled(LOG_LEVEL_WARN))                                           \
      log_write(LOG_LEVEL_WARN, ev, __VA_ARGS__);                              \
  } while (0)
#define LOG_INFO(ev, ...)                                                      \
  do {                                                                         \
    if (log_enabled(LOG_LEVEL_INFO))                                           \
      log_write(LOG_LEVEL_INFO, ev, __VA_ARGS__);                              \
  } while (0)
#define LOG_DEBUG(ev, ...)                                                     \
  do {                                                                         \
    if (log_enabled(LOG_LEVEL_DEBUG))                                          \
      log_write(LOG_LEVEL_DEBUG, ev, __VA_ARGS__);                             \
  } while (0)

#endif
