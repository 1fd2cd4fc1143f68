/*
 * hello.c — libcoalesce in a threaded program: eight threads ask for the
 * same slow "fixture list" at once; the loader makes one call, caches it,
 * and every thread gets the same bytes. Built and run by `make check`.
 */
#define _DEFAULT_SOURCE /* usleep, also under -std=c17 outside this tree */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "coalesce.h"

/* Your upstream call: runs once per flight, in the leader's thread. */
static void fetch_fixtures(void *ud, const void *key, size_t keylen,
                           void *ctx, coalesce_value_t *stale,
                           coalesce_fetch_result_t *res) {
  (void)ctx;
  (void)stale;
  int *calls = ud;
  __atomic_add_fetch(calls, 1, __ATOMIC_RELAXED);
  usleep(200 * 1000); /* the paid API is slow */
  char body[128];
  int n = snprintf(body, sizeof body, "{\"fixtures\":\"%.*s\"}", (int)keylen,
                   (const char *)key);
  res->value = coalesce_value_new(body, (size_t)n);
  res->err = res->value ? 0 : COALESCE_ENOMEM;
}

static coalesce_loader_t *loader;

static void *client(void *arg) {
  (void)arg;
  coalesce_load_result_t r;
  if (coalesce_loader_get(loader, "premier-league", 14, NULL, &r) == 0) {
    printf("%-10s %s\n", coalesce_source_name(r.source),
           (const char *)coalesce_value_data(r.value));
    coalesce_value_release(r.value);
  }
  return NULL;
}

int main(void) {
  int calls = 0;
  coalesce_cache_t *cache;
  coalesce_coalescer_t *coalescer;
  coalesce_cache_new(NULL, &cache);
  coalesce_coalescer_new(NULL, &coalescer);
  coalesce_loader_opts_t lo = {.cache = cache,
                               .coalescer = coalescer,
                               .fetch = fetch_fixtures,
                               .ud = &calls};
  if (coalesce_loader_new(&lo, &loader) != 0)
    return 1;

  pthread_t t[8];
  for (int i = 0; i < 8; i++)
    pthread_create(&t[i], NULL, client, NULL);
  for (int i = 0; i < 8; i++)
    pthread_join(t[i], NULL);
  client(NULL); /* a late caller: served from the cache */

  coalesce_stats_t s;
  coalesce_loader_stats(loader, &s);
  printf("requests=%llu upstream_calls=%llu saved=%llu hit_rate=%.1f%%\n",
         (unsigned long long)s.total_requests,
         (unsigned long long)s.api_calls_made,
         (unsigned long long)s.api_calls_saved, s.hit_rate_percent);
  coalesce_loader_free(loader);
  coalesce_coalescer_free(coalescer);
  coalesce_cache_free(cache);
  return calls == 1 ? 0 : 1; /* nine requests, one upstream call */
}
