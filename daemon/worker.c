/* worker.c — worker threads and their inboxes; see worker.h.
 *
 * Lifecycle: worker_start creates the loop, the listener (so a bind error
 * is reported to main before anything runs), the upstream client and the
 * async handles, then runs the loop on a new thread. worker_drain (any
 * thread) asks the loop to stop accepting and close its server gracefully;
 * when the last connection is gone the loop closes its remaining handles,
 * uv_run returns, and worker_join reaps the thread. */
#include "worker.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "batch.h"
#include "fleet.h"
#include "log.h"
#include "proxy.h"

static _Thread_local worker_t *current_worker;

worker_t *worker_current(void) {
  return current_worker;
}

void worker_post(worker_t *w, worker_msg_t *msg) {
  msg->next = NULL;
  pthread_mutex_lock(&w->inbox_mu);
  if (w->inbox_tail != NULL)
    w->inbox_tail->next = msg;
  else
    w->inbox_head = msg;
  w->inbox_tail = msg;
  pthread_mutex_unlock(&w->inbox_mu);
  uv_async_send(&w->inbox_async); /* coalesces: one wake per batch */
}

static void on_inbox(uv_async_t *h) {
  worker_t *w = h->data;
  pthread_mutex_lock(&w->inbox_mu);
  worker_msg_t *m = w->inbox_head;
  w->inbox_head = w->inbox_tail = NULL;
  pthread_mutex_unlock(&w->inbox_mu);
  while (m != NULL) {
    worker_msg_t *next = m->next;
    m->run(m);
    m = next;
  }
}

static void on_sweep(uv_timer_t *t) {
  worker_t *w = t->data;
  size_t n = coalesce_coalescer_expire(w->app->coalescer);
  if (n > 0)
    LOG_WARN("flights_expired", "count=%zu", n);
}

static void on_handle_closed(uv_handle_t *h) {
  (void)h;
}

static void close_rest(worker_t *w) {
  batch_loop_close(w->batch); /* before its upstream client */
  w->batch = NULL;
  if (w->fleet != NULL)
    fleet_conn_close(w->fleet); /* its waits end LOCAL: calls still go out */
  w->fleet = NULL;
  upstream_client_close(w->upstream);
  w->upstream = NULL;
  uv_close((uv_handle_t *)&w->sweep, on_handle_closed);
  uv_close((uv_handle_t *)&w->stop_async, on_handle_closed);
  /* Delivery messages may still be queued for requests that are gone with
   * their connections: run them so they free themselves. */
  on_inbox(&w->inbox_async);
  uv_close((uv_handle_t *)&w->inbox_async, on_handle_closed);
  atomic_store(&w->state, 2);
}

static void on_server_closed(void *ud) {
  worker_t *w = ud;
  w->server = NULL;
  close_rest(w);
}

static void on_stop(uv_async_t *h) {
  worker_t *w = h->data;
  if (atomic_load(&w->state) != 0)
    return;
  atomic_store(&w->state, 1);
  uv_timer_stop(&w->sweep);
  if (w->server != NULL)
    http_server_close(w->server, on_server_closed, w);
  else
    close_rest(w);
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  current_worker = w;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to main */
  config_t *cfg = app_config(w->app);
  upstream_client_opts_t uo = {0};
  for (size_t i = 0; i < cfg->nupstreams; i++)
    if ((long)cfg->upstreams[i].max_connections > uo.max_host_connections)
      uo.max_host_connections = (long)cfg->upstreams[i].max_connections;
  w->upstream = upstream_client_new(&w->loop, &uo);
  if (w->upstream != NULL && w->app->fleet != NULL)
    w->fleet = fleet_conn_new(w->app->fleet, &w->loop); /* NULL: local only */
  if (w->upstream != NULL) {
    w->batch = batch_loop_new(w->app->batcher, &w->loop, w->upstream);
    if (w->batch == NULL) {
      upstream_client_close(w->upstream);
      w->upstream = NULL;
    }
  }
  uv_sem_post(&w->ready);
  if (w->upstream == NULL)
    return NULL;
  uv_run(&w->loop, UV_RUN_DEFAULT);
  return NULL;
}

int worker_start(worker_t *w, app_t *app, unsigned id, uint16_t port, char *err,
                 size_t errlen) {
  memset(w, 0, sizeof *w);
  w->id = id;
  w->app = app;
  config_t *cfg = app_config(app);
  int rc = uv_loop_init(&w->loop);
  if (rc != 0) {
    snprintf(err, errlen, "worker %u: loop: %s", id, uv_strerror(rc));
    return -1;
  }
  pthread_mutex_init(&w->inbox_mu, NULL);
  uv_async_init(&w->loop, &w->inbox_async, on_inbox);
  w->inbox_async.data = w;
  uv_async_init(&w->loop, &w->stop_async, on_stop);
  w->stop_async.data = w;
  uv_timer_init(&w->loop, &w->sweep);
  w->sweep.data = w;
  uv_timer_start(&w->sweep, on_sweep, 1000, 1000);

  http_server_opts_t so = {0};
  so.on_request = proxy_on_request;
  so.ud = w;
  so.reuseport = true;
  /* the connection limit is for the whole process: one shared counter,
   * since the kernel spreads connections over the listeners unevenly */
  so.max_connections = cfg->server.max_connections;
  so.conn_counter = &app->connections;
  so.max_header_bytes = cfg->server.max_header_bytes;
  so.max_headers = cfg->server.max_headers;
  so.max_uri_bytes = cfg->server.max_uri_bytes;
  so.max_body_bytes = cfg->server.max_body_bytes;
  so.header_timeout_ms = (unsigned)cfg->server.header_timeout_ms;
  so.idle_timeout_ms = (unsigned)cfg->server.idle_timeout_ms;
  so.server_name = "coalesced";
  rc = http_server_listen(&w->loop, cfg->server.listen.host, port, &so,
                          &w->server);
  if (rc != 0) {
    snprintf(err, errlen, "listen %s:%u: %s", cfg->server.listen.host, port,
             uv_strerror(rc));
    return -1;
  }
  uv_sem_init(&w->ready, 0);
  if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
    snprintf(err, errlen, "worker %u: cannot start its thread", id);
    return -1;
  }
  /* the upstream client belongs to the worker's thread: it is created
   * there; wait to learn whether that worked */
  uv_sem_wait(&w->ready);
  uv_sem_destroy(&w->ready);
  if (w->upstream == NULL) {
    snprintf(err, errlen, "worker %u: cannot create the upstream client", id);
    return -1;
  }
  return 0;
}

void worker_drain(worker_t *w) {
  uv_async_send(&w->stop_async);
}

void worker_join(worker_t *w) {
  pthread_join(w->thread, NULL);
  /* close callbacks have run inside uv_run; the loop is empty now */
  if (uv_loop_close(&w->loop) != 0)
    LOG_WARN("worker_loop_busy", "worker=%u", w->id);
  proxy_worker_cleanup(w); /* every request has finished */
  pthread_mutex_destroy(&w->inbox_mu);
}
