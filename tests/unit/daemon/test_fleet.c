/*
 * test_fleet.c — fleet mode against a real redis-server on 127.0.0.1 (a
 * random port; started here, stopped by PID). Each "instance" is its own
 * fleet_t; most tests drive several on one loop (deterministic order),
 * one races two instances on two threads.
 *
 * Redis expires leases on its own clock, so the takeover tests wait real
 * time (a 300 ms lease); they assert outcomes, never durations. Tests that
 * must prove a wake-up came from a publish give the holder a 30 s lease
 * and fail if the answer takes more than a few seconds.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fleet.h"
#include "response.h"
#include "response_codec.h"

#define PREFIX "ct:"
#define S COALESCE_NS_PER_SEC

static pid_t redis_pid = -1;
static int redis_port;
static bool have_redis;

/* ---- the server ------------------------------------------------------------ */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

static redisContext *sync_conn(void) {
  struct timeval tv = {1, 0};
  redisContext *r = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
  if (r != NULL && r->err) {
    redisFree(r);
    return NULL;
  }
  return r;
}

static bool redis_start(int port) {
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  pid_t pid = fork();
  if (pid < 0)
    return false;
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execlp("redis-server", "redis-server", "--port", ps, "--bind",
           "127.0.0.1", "--save", "", "--appendonly", "no", (char *)NULL);
    _exit(127);
  }
  redis_pid = pid;
  redis_port = port;
  for (int i = 0; i < 500; i++) { /* up to 5 s for it to listen */
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      redis_pid = -1;
      return false;
    }
    redisContext *r = sync_conn();
    if (r != NULL) {
      redisReply *rep = redisCommand(r, "PING");
      bool ok = rep != NULL && rep->type == REDIS_REPLY_STATUS;
      freeReplyObject(rep);
      redisFree(r);
      if (ok)
        return true;
    }
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  redis_pid = -1;
  return false;
}

static void redis_stop(void) {
  if (redis_pid > 0) {
    kill(redis_pid, SIGCONT);
    kill(redis_pid, SIGTERM);
    waitpid(redis_pid, NULL, 0);
  }
  redis_pid = -1;
}

static int group_setup(void **state) {
  (void)state;
  for (int tries = 0; tries < 5 && !have_redis; tries++) {
    int port = free_port();
    have_redis = port > 0 && redis_start(port);
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  redis_stop();
  return 0;
}

static redisReply *cmd(const char *fmt, ...) {
  redisContext *r = sync_conn();
  assert_non_null(r);
  va_list ap;
  va_start(ap, fmt);
  redisReply *rep = redisvCommand(r, fmt, ap);
  va_end(ap);
  redisFree(r);
  assert_non_null(rep);
  return rep;
}

static int test_setup(void **state) {
  (void)state;
  if (!have_redis)
    return 0;
  freeReplyObject(cmd("FLUSHALL"));
  return 0;
}

/* ---- instances on a loop ---------------------------------------------------- */

typedef struct node {
  fleet_t *f;
  fleet_conn_t *c;
} node_t;

static config_redis_t make_cfg(void) {
  /* fleet_new reads host/port, never the url (threads share this) */
  config_redis_t cfg = {.url = "redis://127.0.0.1",
                        .host = "127.0.0.1",
                        .port = (uint16_t)redis_port,
                        .prefix = PREFIX,
                        .timeout_ms = 200,
                        .lock_ttl_ms = 3000};
  return cfg;
}

static void on_guard(uv_timer_t *t) { *(bool *)t->data = true; }

/* Runs the loop until cond(arg) or limit_ms; returns cond(arg). */
static bool run_until(uv_loop_t *loop, bool (*cond)(void *), void *arg,
                      uint64_t limit_ms) {
  bool expired = false;
  uv_timer_t guard;
  uv_timer_init(loop, &guard);
  guard.data = &expired;
  uv_timer_start(&guard, on_guard, limit_ms, 0);
  while (!cond(arg) && !expired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return cond(arg);
}

static bool never(void *arg) {
  (void)arg;
  return false;
}

static void run_for(uv_loop_t *loop, uint64_t ms) {
  run_until(loop, never, NULL, ms);
}

static bool node_ready(void *arg) { return fleet_conn_ready(((node_t *)arg)->c); }

static node_t node_new(uv_loop_t *loop) {
  config_redis_t cfg = make_cfg();
  node_t n;
  n.f = fleet_new(&cfg, 0);
  assert_non_null(n.f);
  n.c = fleet_conn_new(n.f, loop);
  assert_non_null(n.c);
  assert_true(run_until(loop, node_ready, &n, 5000));
  return n;
}

/* Closes every node, lets their handles close, frees them and the loop. */
static void finish(uv_loop_t *loop, node_t **nodes, int n) {
  for (int i = 0; i < n; i++)
    fleet_conn_close(nodes[i]->c);
  uv_run(loop, UV_RUN_DEFAULT);
  for (int i = 0; i < n; i++)
    fleet_free(nodes[i]->f);
  assert_int_equal(uv_loop_close(loop), 0);
}
#define FINISH(loop, ...)                                                      \
  do {                                                                         \
    node_t *all_[] = {__VA_ARGS__};                                            \
    finish(loop, all_, (int)(sizeof all_ / sizeof *all_));                     \
  } while (0)

typedef struct got {
  int calls;
  fleet_result_t res;
} got_t;

static void on_got(void *ud, const fleet_result_t *r) {
  got_t *g = ud;
  g->calls++;
  g->res = *r;
}

static bool got_done(void *arg) { return ((got_t *)arg)->calls > 0; }

typedef struct pub {
  int calls;
  int err;
} pub_t;

static void on_pub(void *ud, int err) {
  pub_t *p = ud;
  p->calls++;
  p->err = err;
}

static bool pub_done(void *arg) { return ((pub_t *)arg)->calls > 0; }

static coalesce_value_t *make_value(const char *body) {
  hdr_t h[] = {{"Content-Type", 12, "text/plain", 10}};
  coalesce_value_t *v =
      response_new(200, h, 1, body, strlen(body), time(NULL));
  assert_non_null(v);
  return v;
}

static const coalesce_ttl_t TTL10 = {.fresh_ns = 10 * S, .swr_ns = 5 * S};

static got_t acquire(uv_loop_t *loop, node_t *n, const char *key,
                     uint64_t lease_ms) {
  got_t g = {0};
  fleet_acquire(n->c, key, strlen(key), lease_ms, on_got, &g);
  assert_int_equal(g.calls, 0); /* never answered from inside the call */
  assert_true(run_until(loop, got_done, &g, 5000));
  assert_int_equal(g.calls, 1);
  return g;
}

static void publish(uv_loop_t *loop, fleet_lease_t *l, const char *body,
                    const coalesce_ttl_t *ttl, int want) {
  pub_t p = {0};
  coalesce_value_t *v = body ? make_value(body) : NULL;
  fleet_publish(l, v, ttl, on_pub, &p);
  coalesce_value_release(v);
  assert_true(run_until(loop, pub_done, &p, 5000));
  assert_int_equal(p.err, want);
}

static void assert_body(const got_t *g, const char *body) {
  assert_int_equal(g->res.outcome, FLEET_HIT);
  const response_t *r = response_of(g->res.value);
  assert_int_equal(r->status, 200);
  assert_int_equal(response_body_len(r), strlen(body));
  assert_memory_equal(response_body(r), body, response_body_len(r));
}

typedef struct waits_arg {
  node_t *n;
  uint64_t want;
} waits_arg_t;

static bool waits_reached(void *arg) {
  waits_arg_t *w = arg;
  fleet_stats_t s;
  fleet_stats(w->n->f, &s);
  return s.waits >= w->want;
}

static void wait_until_waiting(uv_loop_t *loop, node_t *n) {
  waits_arg_t w = {n, 1};
  assert_true(run_until(loop, waits_reached, &w, 5000));
}

#define NEED_REDIS()                                                           \
  do {                                                                         \
    if (!have_redis)                                                           \
      skip();                                                                  \
  } while (0)

/* ---- tests ------------------------------------------------------------------ */

static void test_waiter_is_woken_by_publish(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop), b = node_new(&loop);

  got_t ga = acquire(&loop, &a, "GET /x", 30000);
  assert_int_equal(ga.res.outcome, FLEET_LEAD);
  assert_false(ga.res.takeover);

  got_t gb = {0};
  fleet_acquire(b.c, "GET /x", 6, 30000, on_got, &gb);
  wait_until_waiting(&loop, &b);
  run_for(&loop, 50);
  assert_int_equal(gb.calls, 0); /* still waiting: no second leader */

  /* a 30 s lease: only the publish can answer within the 5 s guard */
  publish(&loop, ga.res.lease, "hello", &TTL10, 0);
  assert_true(run_until(&loop, got_done, &gb, 5000));
  assert_body(&gb, "hello");
  assert_true(gb.res.waited);
  assert_true(gb.res.ttl.fresh_ns > 0 && gb.res.ttl.fresh_ns <= 10 * S);
  coalesce_value_release(gb.res.value);

  fleet_stats_t s;
  fleet_stats(a.f, &s);
  assert_int_equal(s.leases_acquired, 1);
  assert_int_equal(s.publishes, 1);
  assert_int_equal(s.leases_lost, 0);
  fleet_stats(b.f, &s);
  assert_int_equal(s.l2_hits, 1);
  assert_int_equal(s.waits, 1);
  assert_int_equal(s.leases_acquired, 0);
  assert_string_equal(s.state_name, "connected");

  /* the lease is gone, the value is there with a TTL, under the prefix */
  redisReply *r = cmd("KEYS *");
  assert_int_equal(r->elements, 1);
  assert_memory_equal(r->element[0]->str, PREFIX "v:", strlen(PREFIX) + 2);
  redisReply *t = cmd("PTTL %s", r->element[0]->str);
  assert_true(t->integer > 0 && t->integer <= 15000);
  freeReplyObject(t);
  freeReplyObject(r);

  /* a fresh instance that never saw the key: L2 hit, no wait, no lease */
  node_t c = node_new(&loop);
  got_t gc = acquire(&loop, &c, "GET /x", 30000);
  assert_body(&gc, "hello");
  assert_false(gc.res.waited);
  coalesce_value_release(gc.res.value);
  fleet_stats(c.f, &s);
  assert_int_equal(s.l2_hits, 1);
  assert_int_equal(s.waits, 0);

  FINISH(&loop, &a, &b, &c);
}

static void test_lease_key_is_prefixed_and_expires(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop);
  got_t g = acquire(&loop, &a, "k", 2000);
  assert_int_equal(g.res.outcome, FLEET_LEAD);
  redisReply *r = cmd("KEYS *");
  assert_int_equal(r->elements, 1);
  assert_memory_equal(r->element[0]->str, PREFIX "l:", strlen(PREFIX) + 2);
  /* no identity or URL in the name: prefix, kind, 32 hex digits */
  assert_int_equal(r->element[0]->len, strlen(PREFIX) + 2 + 32);
  redisReply *t = cmd("PTTL %s", r->element[0]->str);
  assert_true(t->integer > 0 && t->integer <= 2000);
  freeReplyObject(t);
  freeReplyObject(r);
  fleet_abandon(g.res.lease);
  run_for(&loop, 50);
  r = cmd("KEYS *");
  assert_int_equal(r->elements, 0); /* released, nothing stored */
  freeReplyObject(r);
  FINISH(&loop, &a);
}

static void test_release_without_value_sends_waiters_local(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop), b = node_new(&loop);
  got_t ga = acquire(&loop, &a, "private", 30000);
  assert_int_equal(ga.res.outcome, FLEET_LEAD);
  got_t gb = {0};
  fleet_acquire(b.c, "private", 7, 30000, on_got, &gb);
  wait_until_waiting(&loop, &b);
  fleet_abandon(ga.res.lease);
  assert_true(run_until(&loop, got_done, &gb, 5000));
  assert_int_equal(gb.res.outcome, FLEET_LOCAL);
  assert_int_equal(gb.res.why, FLEET_WHY_RELEASED);
  fleet_stats_t s;
  fleet_stats(b.f, &s);
  assert_int_equal(s.released, 1);
  assert_int_equal(s.fleet_fallbacks, 0); /* not a Redis failure */
  FINISH(&loop, &a, &b);
}

typedef struct either {
  got_t *a, *b;
} either_t;

static bool either_done(void *arg) {
  either_t *e = arg;
  return e->a->calls > 0 || e->b->calls > 0;
}

static void test_expired_holder_is_taken_over_by_one(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop), b = node_new(&loop), c = node_new(&loop);

  got_t ga = acquire(&loop, &a, "slow", 300); /* never publishes in time */
  assert_int_equal(ga.res.outcome, FLEET_LEAD);
  got_t gb = {0}, gc = {0};
  fleet_acquire(b.c, "slow", 4, 5000, on_got, &gb);
  fleet_acquire(c.c, "slow", 4, 5000, on_got, &gc);
  wait_until_waiting(&loop, &b);
  wait_until_waiting(&loop, &c);

  either_t e = {&gb, &gc};
  assert_true(run_until(&loop, either_done, &e, 5000));
  run_for(&loop, 50);
  /* exactly one took over; the other keeps waiting */
  assert_int_equal(gb.calls + gc.calls, 1);
  got_t *lead = gb.calls ? &gb : &gc, *wait = gb.calls ? &gc : &gb;
  assert_int_equal(lead->res.outcome, FLEET_LEAD);
  assert_true(lead->res.takeover);
  assert_true(lead->res.waited);

  /* the old holder comes back: compare-and-delete keeps the new lease */
  pub_t p = {0};
  fleet_publish(ga.res.lease, NULL, NULL, on_pub, &p);
  assert_true(run_until(&loop, pub_done, &p, 5000));
  fleet_stats_t s;
  fleet_stats(a.f, &s);
  assert_int_equal(s.leases_lost, 1);
  redisReply *r = cmd("KEYS " PREFIX "l:*");
  assert_int_equal(r->elements, 1);
  freeReplyObject(r);
  run_for(&loop, 50);
  assert_int_equal(wait->calls, 0); /* a stale holder's release wakes no one */

  publish(&loop, lead->res.lease, "fresh", &TTL10, 0);
  assert_true(run_until(&loop, got_done, wait, 5000));
  assert_body(wait, "fresh");
  coalesce_value_release(wait->res.value);

  uint64_t takeovers = 0;
  node_t *all[] = {&a, &b, &c};
  for (int i = 0; i < 3; i++) {
    fleet_stats(all[i]->f, &s);
    takeovers += s.lease_takeovers;
  }
  assert_int_equal(takeovers, 1);
  FINISH(&loop, &a, &b, &c);
}

static void test_compare_and_delete_spares_other_holder(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop);
  got_t g = acquire(&loop, &a, "cad", 200);
  assert_int_equal(g.res.outcome, FLEET_LEAD);
  redisReply *r = cmd("KEYS " PREFIX "l:*");
  assert_int_equal(r->elements, 1);
  char lkey[128];
  snprintf(lkey, sizeof lkey, "%s", r->element[0]->str);
  freeReplyObject(r);
  /* our lease is replaced by someone else's (as after an expiry) */
  freeReplyObject(cmd("SET %s someone-else PX 10000", lkey));
  publish(&loop, g.res.lease, "late", &TTL10, 0);
  r = cmd("GET %s", lkey);
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_string_equal(r->str, "someone-else");
  freeReplyObject(r);
  fleet_stats_t s;
  fleet_stats(a.f, &s);
  assert_int_equal(s.leases_lost, 1);
  assert_int_equal(s.publishes, 1); /* the value is still worth storing */
  FINISH(&loop, &a);
}

static void test_stale_l2_value_is_refreshed_not_served(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop);
  got_t g = acquire(&loop, &a, "stale", 2000);
  coalesce_ttl_t brief = {.fresh_ns = COALESCE_NS_PER_MS, .swr_ns = 10 * S};
  publish(&loop, g.res.lease, "old", &brief, 0);
  run_for(&loop, 20);
  g = acquire(&loop, &a, "stale", 2000);
  assert_int_equal(g.res.outcome, FLEET_LEAD);
  fleet_abandon(g.res.lease);
  run_for(&loop, 20);
  FINISH(&loop, &a);
}

static void test_oversized_value_is_not_stored(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  config_redis_t cfg = make_cfg();
  node_t a;
  a.f = fleet_new(&cfg, 200); /* bytes */
  a.c = fleet_conn_new(a.f, &loop);
  assert_true(run_until(&loop, node_ready, &a, 5000));
  got_t g = acquire(&loop, &a, "big", 2000);
  char body[400];
  memset(body, 'x', sizeof body - 1);
  body[sizeof body - 1] = '\0';
  publish(&loop, g.res.lease, body, &TTL10, COALESCE_ETOOBIG);
  redisReply *r = cmd("KEYS *");
  assert_int_equal(r->elements, 0); /* not stored, lease released */
  freeReplyObject(r);
  FINISH(&loop, &a);
}

/* Two instances on two threads race for one key. */
typedef struct racer {
  pthread_barrier_t *barrier;
  got_t got;
  char body[32];
} racer_t;

static void *race_thread(void *arg) {
  racer_t *rc = arg;
  uv_loop_t loop;
  uv_loop_init(&loop);
  config_redis_t cfg = make_cfg();
  node_t n;
  n.f = fleet_new(&cfg, 0);
  n.c = fleet_conn_new(n.f, &loop);
  bool ready = run_until(&loop, node_ready, &n, 5000);
  pthread_barrier_wait(rc->barrier);
  if (ready) {
    fleet_acquire(n.c, "race", 4, 5000, on_got, &rc->got);
    run_until(&loop, got_done, &rc->got, 5000);
    if (rc->got.calls == 1 && rc->got.res.outcome == FLEET_LEAD) {
      run_for(&loop, 30); /* let the other one start waiting, usually */
      pub_t p = {0};
      coalesce_value_t *v = make_value("raced");
      fleet_publish(rc->got.res.lease, v, &TTL10, on_pub, &p);
      coalesce_value_release(v);
      run_until(&loop, pub_done, &p, 5000);
    } else if (rc->got.calls == 1 && rc->got.res.outcome == FLEET_HIT) {
      const response_t *r = response_of(rc->got.res.value);
      snprintf(rc->body, sizeof rc->body, "%.*s", (int)response_body_len(r),
               response_body(r));
      coalesce_value_release(rc->got.res.value);
    }
  }
  fleet_conn_close(n.c);
  uv_run(&loop, UV_RUN_DEFAULT);
  fleet_free(n.f);
  uv_loop_close(&loop);
  return NULL;
}

static void test_two_threads_race_one_leader(void **state) {
  (void)state;
  NEED_REDIS();
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, 2);
  racer_t r[2];
  memset(r, 0, sizeof r);
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    r[i].barrier = &barrier;
    pthread_create(&th[i], NULL, race_thread, &r[i]);
  }
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&barrier);
  assert_int_equal(r[0].got.calls, 1);
  assert_int_equal(r[1].got.calls, 1);
  int leads = (r[0].got.res.outcome == FLEET_LEAD) +
              (r[1].got.res.outcome == FLEET_LEAD);
  assert_int_equal(leads, 1);
  racer_t *hit = r[0].got.res.outcome == FLEET_HIT ? &r[0] : &r[1];
  assert_int_equal(hit->got.res.outcome, FLEET_HIT);
  assert_string_equal(hit->body, "raced");
}

static bool node_down(void *arg) { return !fleet_conn_ready(((node_t *)arg)->c); }

/* Stalled, then stopped, then restarted: LOCAL within the command timeout,
 * counted, degraded, and back to fleet service after the restart. Runs
 * last (it replaces the server). */
static void test_redis_stall_stop_restart(void **state) {
  (void)state;
  NEED_REDIS();
  uv_loop_t loop;
  uv_loop_init(&loop);
  node_t a = node_new(&loop);
  fleet_stats_t s;

  /* stalled: the command deadline (200 ms) answers LOCAL */
  kill(redis_pid, SIGSTOP);
  got_t g = acquire(&loop, &a, "down", 2000);
  assert_int_equal(g.res.outcome, FLEET_LOCAL);
  assert_int_equal(g.res.why, FLEET_WHY_ERROR);
  fleet_stats(a.f, &s);
  assert_true(s.redis_errors >= 1);
  assert_int_equal(s.fleet_fallbacks, 1);
  assert_int_equal(s.state, FLEET_STATE_DEGRADED);
  assert_string_equal(s.state_name, "degraded");
  /* while down: LOCAL at once */
  g = acquire(&loop, &a, "down", 2000);
  assert_int_equal(g.res.outcome, FLEET_LOCAL);
  kill(redis_pid, SIGCONT);
  assert_true(run_until(&loop, node_ready, &a, 10000));
  fleet_stats(a.f, &s);
  assert_true(s.reconnects >= 1);
  assert_string_equal(s.state_name, "connected");

  /* stopped */
  redis_stop();
  assert_true(run_until(&loop, node_down, &a, 5000));
  g = acquire(&loop, &a, "down", 2000);
  assert_int_equal(g.res.outcome, FLEET_LOCAL);
  assert_int_equal(g.res.why, FLEET_WHY_UNAVAILABLE);
  fleet_stats(a.f, &s);
  assert_int_equal(s.state, FLEET_STATE_DEGRADED);
  assert_true(s.fleet_fallbacks >= 3);

  /* restarted on the same port: reconnects with backoff, serves again */
  run_for(&loop, 300); /* a few failed retries first */
  have_redis = redis_start(redis_port);
  assert_true(have_redis);
  assert_true(run_until(&loop, node_ready, &a, 15000));
  node_t b = node_new(&loop);
  g = acquire(&loop, &a, "back", 5000);
  assert_int_equal(g.res.outcome, FLEET_LEAD);
  publish(&loop, g.res.lease, "again", &TTL10, 0);
  got_t gb = acquire(&loop, &b, "back", 5000);
  assert_body(&gb, "again");
  coalesce_value_release(gb.res.value);
  FINISH(&loop, &a, &b);
}

static void test_stats_without_fleet(void **state) {
  (void)state;
  fleet_stats_t s;
  fleet_stats(NULL, &s);
  assert_int_equal(s.state, FLEET_STATE_DISABLED);
  assert_string_equal(s.state_name, "disabled");
  config_redis_t none = {0};
  assert_null(fleet_new(&none, 0));
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stats_without_fleet),
      cmocka_unit_test_setup(test_waiter_is_woken_by_publish, test_setup),
      cmocka_unit_test_setup(test_lease_key_is_prefixed_and_expires,
                             test_setup),
      cmocka_unit_test_setup(test_release_without_value_sends_waiters_local,
                             test_setup),
      cmocka_unit_test_setup(test_expired_holder_is_taken_over_by_one,
                             test_setup),
      cmocka_unit_test_setup(test_compare_and_delete_spares_other_holder,
                             test_setup),
      cmocka_unit_test_setup(test_stale_l2_value_is_refreshed_not_served,
                             test_setup),
      cmocka_unit_test_setup(test_oversized_value_is_not_stored, test_setup),
      cmocka_unit_test_setup(test_two_threads_race_one_leader, test_setup),
      cmocka_unit_test_setup(test_redis_stall_stop_restart, test_setup),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
