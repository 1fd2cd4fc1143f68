/* log.c — logfmt lines on stderr; see log.h. One write(2) per line so lines
 * from different worker threads never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = LOG_LEVEL_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

void log_set_level(log_level_t level) { atomic_store(&g_level, (int)level); }

log_level_t log_get_level(void) {
  return (log_level_t)atomic_load_explicit(&g_level, memory_order_relaxed);
}

bool log_enabled(log_level_t level) {
  return (int)level <= atomic_load_explicit(&g_level, memory_order_relaxed);
}

int log_parse_level(const char *s, log_level_t *out) {
  for (int i = 0; i < 4; i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = (log_level_t)i;
      return 0;
    }
  }
  return -1;
}

const char *log_level_name(log_level_t level) {
  return (unsigned)level < 4 ? names[level] : "unknown";
}

char *log_quote(char *buf, unsigned bufsize, const char *s, unsigned len) {
  static const char hex[] = "0123456789abcdef";
  bool bare = len > 0;
  for (unsigned i = 0; i < len && bare; i++) {
    unsigned char ch = (unsigned char)s[i];
    bare = ch > ' ' && ch < 0x7f && ch != '"' && ch != '=' && ch != '\\';
  }
  unsigned o = 0;
  if (bufsize == 0)
    return buf;
  if (bare) {
    for (unsigned i = 0; i < len && o + 1 < bufsize; i++)
      buf[o++] = s[i];
    buf[o] = '\0';
    return buf;
  }
  if (o + 1 < bufsize)
    buf[o++] = '"';
  for (unsigned i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      if (o + 3 >= bufsize)
        break;
      buf[o++] = '\\';
      buf[o++] = (char)ch;
    } else if (ch < ' ' || ch >= 0x7f) {
      if (o + 5 >= bufsize)
        break;
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[ch >> 4];
      buf[o++] = hex[ch & 15];
    } else {
      if (o + 2 >= bufsize)
        break;
      buf[o++] = (char)ch;
    }
  }
  if (o + 1 < bufsize)
    buf[o++] = '"';
  buf[o] = '\0';
  return buf;
}

void log_write(log_level_t level, const char *event, const char *fmt, ...) {
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line,
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                   log_level_name(level), event);
  if (n < 0)
    return;
  size_t used = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
  if (fmt != NULL && fmt[0] != '\0' && used + 2 < sizeof line) {
    line[used++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + used, sizeof line - used, fmt, ap);
    va_end(ap);
    if (m > 0)
      used += (size_t)m < sizeof line - used ? (size_t)m : sizeof line - used - 1;
  }
  line[used++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, used);
  (void)w;
}
