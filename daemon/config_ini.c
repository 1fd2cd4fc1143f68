/*
 * config_ini.c — config_load_file: an INI file into a config_t, every
 * error as "FILE:LINE: [SECTION] KEY: problem".
 *
 * libinih is fed through our own line reader (ini_parse_stream) because the
 * handler it calls gets no line number and no section-start event: the
 * reader counts lines, opens sections itself (so an empty section is still
 * checked and a long route prefix is not cut at inih's 50 bytes) and turns
 * a line longer than inih's buffer into an error instead of a silently
 * truncated value. inih still does the rest of the syntax: comments, "key =
 * value", trimming.
 *
 * The first error wins: once ctx->failed is set every later callback
 * returns at once, so the message names the first bad line.
 */
#include "config_int.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct ini_ctx {
  config_t *cfg;
  FILE *fp;
  const char *path;
  unsigned line;
  bool in_section;
  section_t sec;
  unsigned first_line[SEC_COUNT]; /* of each singleton section */
  uint64_t seen[SEC_COUNT];
  char *buf;
  size_t cap;
  char *err;
  size_t errlen;
  bool failed;
  int read_errno; /* why getline stopped, 0 at end of file */
} ini_ctx_t;

static void ini_fail(ini_ctx_t *ctx, const char *f, ...)
    __attribute__((format(printf, 2, 3)));
static void ini_fail(ini_ctx_t *ctx, const char *f, ...) {
  if (ctx->failed)
    return;
  ctx->failed = true;
  int n = snprintf(ctx->err, ctx->errlen, "%s:%u: ", ctx->path, ctx->line);
  if (n < 0 || (size_t)n >= ctx->errlen)
    return;
  va_list ap;
  va_start(ap, f);
  vsnprintf(ctx->err + n, ctx->errlen - (size_t)n, f, ap);
  va_end(ap);
}

/* Called by inih for every line: counts lines, opens sections, refuses
 * lines inih would truncate. Returning NULL ends the parse (EOF or error). */
static char *ini_read_line(char *str, int num, void *stream) {
  ini_ctx_t *ctx = stream;
  if (ctx->failed)
    return NULL;
  errno = 0;
  ssize_t n = getline(&ctx->buf, &ctx->cap, ctx->fp);
  if (n < 0) {
    ctx->read_errno = errno;
    return NULL;
  }
  ctx->line++;
  if (n >= num) {
    ini_fail(ctx,
             "line too long (at most %d bytes; put long values such as "
             "tokens in the environment and use ${VAR})",
             num - 3);
    return NULL;
  }
  char *s = ctx->buf;
  if (ctx->line == 1 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
    s += 3; /* a UTF-8 BOM, which inih skips too */
  if (s[0] == '[') {
    char *end = strchr(s, ']');
    if (end == NULL) {
      ini_fail(ctx, "section header without ']'");
      return NULL;
    }
    const char *rest = end + 1;
    while (*rest == ' ' || *rest == '\t' || *rest == '\r' || *rest == '\n')
      rest++;
    if (*rest != '\0' && *rest != ';' && *rest != '#') {
      ini_fail(ctx, "unexpected text after ']'");
      return NULL;
    }
    *end = '\0';
    char msg[512];
    if (cfg_open_section(ctx->cfg, s + 1, ctx->line, true, &ctx->sec, msg,
                         sizeof msg) != 0) {
      ini_fail(ctx, "%s", msg);
      return NULL;
    }
    *end = ']';
    seckind_t kind = ctx->sec.kind;
    if (kind != SEC_UPSTREAM && kind != SEC_ROUTE) {
      if (ctx->first_line[kind] != 0) {
        ini_fail(ctx, "duplicate section [%s] (first on line %u)",
                 ctx->sec.label, ctx->first_line[kind]);
        return NULL;
      }
      ctx->first_line[kind] = ctx->line;
    }
    ctx->in_section = true;
  } else {
    const char *t = s;
    while (*t == ' ' || *t == '\t')
      t++;
    if (*t == '[') { /* inih would read this as a continuation line */
      ini_fail(ctx, "section headers must start at the beginning of a line");
      return NULL;
    }
  }
  memcpy(str, ctx->buf, (size_t)n + 1);
  return str;
}

static int ini_on_key(void *user, const char *section, const char *name,
                      const char *value) {
  ini_ctx_t *ctx = user;
  (void)section; /* ours is ctx->sec: inih truncates long names */
  if (ctx->failed)
    return 1;
  if (!ctx->in_section) {
    ini_fail(ctx,
             "%s: key outside any section (start with [server], "
             "[upstream NAME], [route PREFIX], ...)",
             name);
    return 1;
  }
  char msg[512];
  if (cfg_apply_key(ctx->cfg, &ctx->sec, name, value, ctx->seen, ctx->line, msg,
                    sizeof msg) != 0)
    ini_fail(ctx, "[%s] %s: %s", ctx->sec.label, name, msg);
  return 1;
}

int config_load_file(config_t *cfg, const char *path, char *err,
                     size_t errlen) {
  ini_ctx_t ctx = {.cfg = cfg, .path = path, .err = err, .errlen = errlen};
  if (!cfg_set_str(&cfg->file, path)) {
    cfg_fmt(err, errlen, "%s: out of memory", path);
    return -1;
  }
  if ((ctx.fp = fopen(path, "r")) == NULL) {
    cfg_fmt(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  int rc = ini_parse_stream(ini_read_line, &ctx, ini_on_key, &ctx);
  bool read_error = ferror(ctx.fp) != 0;
  int read_errno = ctx.read_errno;
  fclose(ctx.fp);
  free(ctx.buf);
  if (ctx.failed)
    return -1;
  if (read_error) {
    cfg_fmt(err, errlen, "%s: cannot read: %s", path,
            strerror(read_errno ? read_errno : EIO));
    return -1;
  }
  if (rc > 0) {
    cfg_fmt(err, errlen,
            "%s:%d: syntax error (expected [SECTION] or KEY = VALUE)", path,
            rc);
    return -1;
  }
  if (rc < 0) {
    cfg_fmt(err, errlen, "%s: %s", path,
            rc == -2 ? "out of memory" : "cannot read");
    return -1;
  }
  return 0;
}
