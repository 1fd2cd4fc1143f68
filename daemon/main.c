/*
 * main.c — coalesced: parse the config, start the worker loops and the
 * admin loop, then wait for signals on the main thread.
 *
 *   SIGTERM / SIGINT  drain: stop accepting, finish requests in progress,
 *                     exit 0 (forced after server.shutdown_timeout)
 *   SIGHUP            reload the config from the same argv; listeners,
 *                     connections and the cache stay; a bad config is
 *                     logged and the old one kept
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "admin.h"
#include "app.h"
#include "config.h"
#include "http_server.h"
#include "log.h"
#include "upstream.h"
#include "worker.h"

#ifndef COALESCED_VERSION
#define COALESCED_VERSION "0.0.0"
#endif

typedef struct daemon_state {
  app_t app;
  int argc;
  char **argv;
  uv_loop_t *main_loop;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t force_timer;
  uv_async_t workers_done;
  uv_thread_t joiner;
  bool joiner_started;
  /* admin loop */
  uv_loop_t admin_loop;
  uv_thread_t admin_thread;
  uv_async_t admin_stop;
  http_server_t *admin;
} daemon_state_t;

/* ---- admin loop -------------------------------------------------------- */

static void on_admin_closed(void *ud) {
  daemon_state_t *d = ud;
  d->admin = NULL;
  d->app.admin_server = NULL;
  uv_close((uv_handle_t *)&d->admin_stop, NULL);
}

static void on_admin_stop(uv_async_t *h) {
  daemon_state_t *d = h->data;
  if (d->admin != NULL)
    http_server_close(d->admin, on_admin_closed, d);
  else
    uv_close((uv_handle_t *)&d->admin_stop, NULL);
}

static void admin_main(void *arg) {
  daemon_state_t *d = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  uv_run(&d->admin_loop, UV_RUN_DEFAULT);
}

static int admin_start(daemon_state_t *d, char *err, size_t errlen) {
  config_t *cfg = app_config(&d->app);
  uv_loop_init(&d->admin_loop);
  uv_async_init(&d->admin_loop, &d->admin_stop, on_admin_stop);
  d->admin_stop.data = d;
  http_server_opts_t so = {0};
  so.on_request = admin_on_request;
  so.ud = &d->app;
  so.max_connections = 256;
  so.server_name = "coalesced";
  int rc = http_server_listen(&d->admin_loop, cfg->server.admin_listen.host,
                              cfg->server.admin_listen.port, &so, &d->admin);
  if (rc != 0) {
    snprintf(err, errlen, "admin listen %s:%u: %s",
             cfg->server.admin_listen.host, cfg->server.admin_listen.port,
             uv_strerror(rc));
    return -1;
  }
  d->app.admin_server = d->admin;
  return uv_thread_create(&d->admin_thread, admin_main, d) == 0 ? 0 : -1;
}

/* ---- shutdown ------------------------------------------------------------ */

static void joiner_main(void *arg) {
  daemon_state_t *d = arg;
  for (unsigned i = 0; i < d->app.nworkers; i++)
    worker_join(d->app.workers[i]);
  uv_async_send(&d->workers_done);
}

static void on_workers_done(uv_async_t *h) {
  daemon_state_t *d = h->data;
  uv_timer_stop(&d->force_timer);
  uv_async_send(&d->admin_stop);
  uv_close((uv_handle_t *)&d->sig_term, NULL);
  uv_close((uv_handle_t *)&d->sig_int, NULL);
  uv_close((uv_handle_t *)&d->sig_hup, NULL);
  uv_close((uv_handle_t *)&d->force_timer, NULL);
  uv_close((uv_handle_t *)&d->workers_done, NULL);
}

static void on_force(uv_timer_t *t) {
  (void)t;
  LOG_WARN("shutdown_forced", "reason=\"requests still running after "
                              "shutdown_timeout\"");
  _exit(0);
}

static void begin_drain(daemon_state_t *d, int signum) {
  if (atomic_exchange(&d->app.draining, true))
    return;
  config_t *cfg = app_config(&d->app);
  LOG_INFO("shutdown", "signal=%s timeout_ms=%llu", strsignal(signum),
           (unsigned long long)cfg->server.shutdown_timeout_ms);
  for (unsigned i = 0; i < d->app.nworkers; i++)
    worker_drain(d->app.workers[i]);
  uv_timer_start(&d->force_timer, on_force, cfg->server.shutdown_timeout_ms,
                 0);
  d->joiner_started = uv_thread_create(&d->joiner, joiner_main, d) == 0;
}

static void on_reload(daemon_state_t *d) {
  char err[512];
  config_t *cfg = NULL;
  config_action_t a =
      config_parse_args(d->argc, d->argv, COALESCED_VERSION, stdout, &cfg,
                        err, sizeof err);
  if (a != CONFIG_RUN) {
    LOG_ERROR("reload_failed", "error=\"%s\" kept=previous", err);
    return;
  }
  config_t *old = app_config(&d->app);
  if (strcmp(old->server.listen.host, cfg->server.listen.host) != 0 ||
      old->server.listen.port != cfg->server.listen.port ||
      old->server.workers != cfg->server.workers)
    LOG_WARN("reload_partial", "reason=\"listen address and workers change "
                               "only on restart\"");
  if (app_reload(&d->app, cfg, err, sizeof err) != 0) {
    LOG_ERROR("reload_failed", "error=\"%s\" kept=previous", err);
    config_free(cfg);
    return;
  }
  LOG_INFO("reloaded", "routes=%zu upstreams=%zu", cfg->nroutes,
           cfg->nupstreams);
}

static void on_signal(uv_signal_t *h, int signum) {
  daemon_state_t *d = h->data;
  if (signum == SIGHUP)
    on_reload(d);
  else
    begin_drain(d, signum);
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv) {
  char err[1024];
  config_t *cfg = NULL;
  config_action_t a = config_parse_args(argc, argv, COALESCED_VERSION, stdout,
                                        &cfg, err, sizeof err);
  if (a == CONFIG_EXIT)
    return 0;
  if (a == CONFIG_ERROR) {
    fprintf(stderr, "coalesced: %s\n(see coalesced --help)\n", err);
    return 2;
  }
  log_set_level(cfg->server.log_level);
  signal(SIGPIPE, SIG_IGN);
  if (upstream_global_init() != 0) {
    fprintf(stderr, "coalesced: libcurl initialisation failed\n");
    return 1;
  }

  static daemon_state_t d;
  d.argc = argc;
  d.argv = argv;
  if (app_init(&d.app, cfg, COALESCED_VERSION, err, sizeof err) != 0) {
    fprintf(stderr, "coalesced: %s\n", err);
    return 1;
  }
  unsigned n = cfg->server.workers ? cfg->server.workers : 1;
  d.app.workers = calloc(n, sizeof *d.app.workers);
  d.app.nworkers = n;
  uint16_t port = cfg->server.listen.port;
  for (unsigned i = 0; i < n; i++) {
    d.app.workers[i] = calloc(1, sizeof(worker_t));
    if (d.app.workers[i] == NULL ||
        worker_start(d.app.workers[i], &d.app, i, port, err, sizeof err) != 0) {
      fprintf(stderr, "coalesced: %s\n", err);
      return 1;
    }
    if (i == 0)
      port = http_server_port(d.app.workers[0]->server);
  }
  if (admin_start(&d, err, sizeof err) != 0) {
    fprintf(stderr, "coalesced: %s\n", err);
    return 1;
  }

  d.main_loop = uv_default_loop();
  uv_signal_init(d.main_loop, &d.sig_term);
  uv_signal_init(d.main_loop, &d.sig_int);
  uv_signal_init(d.main_loop, &d.sig_hup);
  d.sig_term.data = d.sig_int.data = d.sig_hup.data = &d;
  uv_signal_start(&d.sig_term, on_signal, SIGTERM);
  uv_signal_start(&d.sig_int, on_signal, SIGINT);
  uv_signal_start(&d.sig_hup, on_signal, SIGHUP);
  uv_timer_init(d.main_loop, &d.force_timer);
  uv_async_init(d.main_loop, &d.workers_done, on_workers_done);
  d.workers_done.data = &d;

  uint16_t admin_port = http_server_port(d.admin);
  LOG_INFO("listening",
           "addr=%s:%u admin=%s:%u workers=%u routes=%zu upstreams=%zu "
           "version=%s",
           cfg->server.listen.host, port, cfg->server.admin_listen.host,
           admin_port, n, cfg->nroutes, cfg->nupstreams, COALESCED_VERSION);
  /* one plain line on stdout for scripts that started it on port 0 */
  printf("coalesced listening on %s:%u admin %s:%u\n", cfg->server.listen.host,
         port, cfg->server.admin_listen.host, admin_port);
  fflush(stdout);

  uv_run(d.main_loop, UV_RUN_DEFAULT);

  if (d.joiner_started)
    uv_thread_join(&d.joiner);
  uv_thread_join(&d.admin_thread);
  uv_loop_close(&d.admin_loop);
  uv_loop_close(d.main_loop);
  for (unsigned i = 0; i < n; i++)
    free(d.app.workers[i]);
  free(d.app.workers);
  app_destroy(&d.app);
  upstream_global_cleanup();
  LOG_INFO("stopped", "%s", "");
  return 0;
}
