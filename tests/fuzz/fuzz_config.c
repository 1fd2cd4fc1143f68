/*
 * fuzz_config.c — libFuzzer driver for daemon/config.c's INI loading.
 *
 * config_load_file only takes a path, so the input is written to a memfd
 * (no disk I/O, nothing left behind) and loaded through /proc/self/fd/N;
 * opening that path gives a fresh file position each time. Properties:
 *   - config_load_file returns 0 or -1, the same for the same bytes;
 *   - on -1 the error is one non-empty, NUL-terminated line inside the
 *     buffer (ASan guards its exact size) that names the file first, also
 *     when the buffer is too small for the whole message;
 *   - a loaded config finalizes (0) or reports why (-1, same rules);
 *   - a finalized config round-trips: config_print's INI loads and
 *     finalizes again and prints the same text (config.h promises that
 *     --check-config output is a config the daemon accepts), and each
 *     route's own prefix matches that route.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_config: property failed: %s (line %d)\n", #cond,   \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define ERRLEN 512
#define TINY_ERRLEN 12

static int memfd = -1;
static char path[64];

/* Replaces the memfd's contents with data[0..size). */
static bool put(const void *data, size_t size) {
  if (memfd < 0) {
    memfd = memfd_create("fuzz_config", MFD_CLOEXEC);
    if (memfd < 0)
      return false;
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
  }
  if (ftruncate(memfd, 0) != 0)
    return false;
  const char *p = data;
  size_t off = 0;
  while (off < size) {
    ssize_t n = pwrite(memfd, p + off, size - off, (off_t)off);
    if (n <= 0)
      return false;
    off += (size_t)n;
  }
  return true;
}

/* One line, non-empty, terminated inside the buffer. */
static void check_error(const char *err, size_t errlen, bool names_file) {
  const char *nul = memchr(err, '\0', errlen);
  CHECK(nul != NULL);
  size_t n = (size_t)(nul - err);
  CHECK(n > 0);
  CHECK(memchr(err, '\n', n) == NULL);
  if (names_file) {
    size_t pl = strlen(path);
    CHECK(n > pl && memcmp(err, path, pl) == 0 && err[pl] == ':');
  }
}

/* Loads the memfd's contents into a new config; NULL when it fails (the
 * error checked). `*rc` is config_load_file's result. */
static config_t *load(char *err, size_t errlen, int *rc) {
  *rc = 0;
  config_t *cfg = config_new();
  if (cfg == NULL)
    return NULL;
  memset(err, 0xAA, errlen);
  *rc = config_load_file(cfg, path, err, errlen);
  CHECK(*rc == 0 || *rc == -1);
  if (*rc == 0)
    return cfg;
  check_error(err, errlen, errlen >= ERRLEN);
  config_free(cfg);
  return NULL;
}

static char *print(const config_t *cfg, size_t *len) {
  char *text = NULL;
  FILE *f = open_memstream(&text, len);
  if (f == NULL)
    return NULL;
  config_print(cfg, f);
  fclose(f);
  return text;
}

static void check_routes(const config_t *cfg) {
  for (size_t i = 0; i < cfg->nroutes; i++) {
    const config_route_t *r = &cfg->routes[i];
    CHECK(r->prefix[0] == '/' && r->prefix_len == strlen(r->prefix));
    CHECK(r->upstream < cfg->nupstreams);
    const config_route_t *m = config_match_route(cfg, r->prefix, r->prefix_len);
    CHECK(m != NULL && m->prefix_len == r->prefix_len &&
          strcmp(m->prefix, r->prefix) == 0);
  }
}

/* The printed config loads, finalizes and prints identically. */
static void round_trip(const config_t *cfg) {
  size_t len1 = 0, len2 = 0;
  char *text1 = print(cfg, &len1);
  if (text1 == NULL || !put(text1, len1)) {
    free(text1);
    return;
  }
  char *err = malloc(ERRLEN);
  int rc = 0;
  config_t *again = err ? load(err, ERRLEN, &rc) : NULL;
  if (err != NULL && again == NULL && rc != 0)
    fprintf(stderr, "printed config rejected: %s\n---\n%s---\n", err, text1);
  CHECK(err == NULL || again != NULL || rc == 0);
  if (again != NULL) {
    int frc = config_finalize(again, err, ERRLEN);
    if (frc != 0)
      fprintf(stderr, "printed config not final: %s\n---\n%s---\n", err, text1);
    CHECK(frc == 0);
    char *text2 = print(again, &len2);
    if (text2 != NULL && (len1 != len2 || memcmp(text1, text2, len1) != 0))
      fprintf(stderr, "print differs:\n---\n%s---\n%s---\n", text1, text2);
    CHECK(text2 == NULL || (len1 == len2 && memcmp(text1, text2, len1) == 0));
    free(text2);
    config_free(again);
  }
  free(err);
  free(text1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!put(data, size))
    return 0;
  char *err = malloc(ERRLEN);
  if (err == NULL)
    return 0;
  int rc;
  config_t *cfg = load(err, ERRLEN, &rc);
  if (rc != 0) {
    /* A tiny buffer truncates the message safely; same verdict. */
    char *tiny = malloc(TINY_ERRLEN);
    int rc2 = 0;
    if (tiny != NULL) {
      config_t *c2 = load(tiny, TINY_ERRLEN, &rc2);
      CHECK(c2 == NULL && rc2 == rc);
      free(tiny);
    }
  }
  if (cfg != NULL) {
    int frc = config_finalize(cfg, err, ERRLEN);
    CHECK(frc == 0 || frc == -1);
    if (frc != 0) {
      check_error(err, ERRLEN, false);
    } else {
      check_routes(cfg);
      round_trip(cfg);
    }
    config_free(cfg);
  }
  free(err);
  return 0;
}
