/*
 * worker.h — one worker thread: a libuv loop that accepts on its own
 * SO_REUSEPORT listener, proxies requests, and drives its own libcurl multi
 * handle for the flights it leads.
 *
 * Cross-loop wake-ups: a flight ends on the thread of the loop that led it;
 * its waiters may be parked on any loop. Their callbacks only push the
 * request onto the owning worker's inbox (a mutex-guarded list) and poke
 * its uv_async_t, so each loop wakes once per batch of answers, never by
 * polling, and every request is finished on its own loop.
 */
#ifndef COALESCED_WORKER_H
#define COALESCED_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

#include "app.h"
#include "freelist.h"
#include "http_server.h"
#include "upstream.h"

typedef struct worker_msg worker_msg_t;
typedef void (*worker_msg_fn)(worker_msg_t *msg);

/* Embedded in whatever is being handed to a loop. */
struct worker_msg {
  worker_msg_t *next;
  worker_msg_fn run; /* runs on the target loop */
};

typedef struct worker {
  unsigned id;
  app_t *app;
  pthread_t thread;
  uv_loop_t loop;
  http_server_t *server;
  upstream_client_t *upstream;
  struct batch_loop *batch; /* this loop's share of request batching */
  struct fleet_conn *fleet; /* fleet mode: this loop's Redis connections */
  uv_async_t inbox_async;
  pthread_mutex_t inbox_mu;
  worker_msg_t *inbox_head, *inbox_tail;
  uv_async_t stop_async;
  uv_timer_t sweep; /* expires flights past their age limit */
  /* proxy.c's free request records of this loop (only its thread touches
   * them): a hit allocates nothing */
  freelist_t preq_pool;
  _Atomic int state; /* 0 running, 1 draining, 2 stopped */
  int listen_err;
  uv_sem_t ready;
} worker_t;

/* The worker whose loop runs on this thread, or NULL (main, admin). */
worker_t *worker_current(void);

/* Starts a worker thread: binds the listener on `port` (the first worker
 * may bind port 0; the others then share the port it got) and reports a
 * bind error before the thread runs requests. */
int worker_start(worker_t *w, app_t *app, unsigned id, uint16_t port, char *err,
                 size_t errlen);
/* Any thread: run msg->run(msg) on w's loop soon. */
void worker_post(worker_t *w, worker_msg_t *msg);
/* Any thread: stop accepting, finish requests in progress, then stop. */
void worker_drain(worker_t *w);
void worker_join(worker_t *w);

#endif
