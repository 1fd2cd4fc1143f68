/*
 * herd.c — bench_herd: fires a thundering herd of HTTP requests and reports
 * what came back (statuses, X-Cache values, latency percentiles, errors).
 *
 *   bench_herd --url URL [--url URL]... --n N [--concurrency C]
 *              [--timeout-ms T] [--keys K] [--header 'H: v']... [--csv FILE]
 *              [--json] [--quiet]
 *
 * One thread, one libcurl multi handle driven by epoll (socket_action). With C >= N (the default) every
 * request is added to the multi handle before the first curl_multi_perform,
 * so all N connections are opened in the same loop iteration before any
 * answer can complete: that is the herd. With C < N at most C are in flight
 * and a finished request is replaced at once (a closed-loop load).
 *
 * Keys: with K > 1, request i asks for key i % K — a `{k}` in the URL is
 * replaced by the key number, else `k=NUM` is appended to the query.
 *
 * URLs: with U > 1 --url values (several servers of one fleet), request i
 * goes to URL i % U and asks for key (i / U) % K, so the herd is split
 * evenly over the URLs, started in the same loop iteration, and every URL
 * sees every key.
 *
 * Latency of a request, two ways: (1) from the moment it was started (for
 * the initial batch, the moment all of it had been added, just before the
 * first perform) — it includes the client's own work of opening the herd on
 * the same cores; (2) from the moment libcurl was about to write this
 * request on its connection (CURLOPT_PREREQFUNCTION), as wrk and most load
 * tools measure — what each caller of a herd sees of the server. Both end
 * when its last byte reached the body callback (or, with no Content-Length,
 * when this loop saw it complete).
 * Percentiles use the nearest-rank method over every request, errors
 * included (a timeout's latency is the timeout).
 *
 * Ownership: req_t records live in one array for the whole run; an easy
 * handle exists only while its request is in flight (its CURLOPT_PRIVATE
 * is the record). Exit status: 0 if every request got an HTTP answer, 1 if
 * some failed at the transport level, 2 on bad usage or set-up failure.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define XCACHE_MAX 24  /* longest X-Cache value kept ("STALE-IF-ERROR") */
#define MAX_BUCKETS 64 /* distinct statuses / X-Cache values / errors */
#define MAX_URLS 64    /* --url values */

typedef struct req {
  unsigned key;
  unsigned url;          /* index into opts_t.urls */
  int status;            /* 0 when no HTTP answer */
  CURLcode err;          /* CURLE_OK when answered */
  double latency_ms;     /* start -> completion seen */
  double sent_ms;        /* request sent -> completion seen; -1 unknown */
  uint64_t start_ns;     /* monotonic */
  uint64_t sent_ns;      /* its request was about to be written; 0 unknown */
  uint64_t done_ns;      /* last body byte seen by a callback; 0 unknown */
  int64_t content_length; /* of the final response; -1 unknown */
  uint64_t body_bytes;   /* bytes of body received */
  char xcache[XCACHE_MAX]; /* "" when absent */
} req_t;

/* A small histogram of string labels: few distinct values, kept in order
 * of first appearance. */
typedef struct bucket {
  char label[64];
  unsigned long count;
} bucket_t;

typedef struct hist {
  bucket_t b[MAX_BUCKETS];
  size_t n;
} hist_t;

typedef struct opts {
  const char *urls[MAX_URLS];
  unsigned nurls;
  unsigned long n;
  unsigned long concurrency;
  long timeout_ms;
  unsigned long keys;
  struct curl_slist *headers;
  const char *csv;
  bool json;
  bool quiet;
} opts_t;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void hist_add(hist_t *h, const char *label) {
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < h->n; i++) {
      if (strcmp(h->b[i].label, label) == 0) {
        h->b[i].count++;
        return;
      }
    }
    if (h->n < MAX_BUCKETS - 1)
      break;
    label = "(other)"; /* the last slot collects what does not fit */
  }
  snprintf(h->b[h->n].label, sizeof h->b[h->n].label, "%s", label);
  h->b[h->n++].count = 1;
}

/* ---- per-request callbacks ---------------------------------------------- */

/* The header and body callbacks note the moment the last byte of the
 * answer arrives (known from Content-Length), so a request's latency is not
 * rounded up to the end of the perform call that also read hundreds of
 * other answers. */
static bool header_is(const char *buf, size_t len, const char *name,
                      const char **value, const char **end) {
  size_t nl = strlen(name);
  if (len <= nl || strncasecmp(buf, name, nl) != 0)
    return false;
  const char *v = buf + nl, *e = buf + len;
  while (v < e && (*v == ' ' || *v == '\t'))
    v++;
  while (e > v && isspace((unsigned char)e[-1]))
    e--;
  *value = v;
  *end = e;
  return true;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud) {
  req_t *r = ud;
  size_t len = size * nitems;
  const char *v, *e;
  if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
    /* a new response head (after a 1xx): forget the previous one */
    r->content_length = -1;
    r->xcache[0] = '\0';
  } else if (header_is(buf, len, "x-cache:", &v, &e)) {
    size_t vl = (size_t)(e - v);
    if (vl >= sizeof r->xcache)
      vl = sizeof r->xcache - 1;
    memcpy(r->xcache, v, vl);
    r->xcache[vl] = '\0';
  } else if (header_is(buf, len, "content-length:", &v, &e)) {
    r->content_length = strtoll(v, NULL, 10);
  } else if (len <= 2 && r->content_length == 0) {
    r->done_ns = now_ns(); /* end of a head with no body */
  }
  return len;
}

static size_t on_body(char *buf, size_t size, size_t nmemb, void *ud) {
  (void)buf;
  req_t *r = ud;
  r->body_bytes += size * nmemb;
  if (r->content_length >= 0 && r->body_bytes >= (uint64_t)r->content_length)
    r->done_ns = now_ns();
  return size * nmemb;
}

/* Called by libcurl on its connection just before it writes the request:
 * the moment this caller's request leaves, for the from-send latency. */
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port) {
  (void)conn_primary_ip, (void)conn_local_ip;
  (void)conn_primary_port, (void)conn_local_port;
  req_t *r = ud;
  r->sent_ns = now_ns();
  return CURL_PREREQFUNC_OK;
}

/* The URL of a request: its --url with `{k}` replaced by its key, or
 * k=NUM appended to the query. */
static char *url_for(const opts_t *o, const req_t *r) {
  const char *base = o->urls[r->url];
  size_t len = strlen(base) + 32;
  char *u = malloc(len);
  if (u == NULL)
    return NULL;
  if (o->keys <= 1) {
    snprintf(u, len, "%s", base);
    return u;
  }
  const char *ph = strstr(base, "{k}");
  if (ph != NULL)
    snprintf(u, len, "%.*s%u%s", (int)(ph - base), base, r->key, ph + 3);
  else
    snprintf(u, len, "%s%ck=%u", base, strchr(base, '?') ? '&' : '?', r->key);
  return u;
}

static CURL *easy_for(const opts_t *o, req_t *r) {
  CURL *e = curl_easy_init();
  char *u = url_for(o, r);
  if (e == NULL || u == NULL) {
    curl_easy_cleanup(e);
    free(u);
    return NULL;
  }
  curl_easy_setopt(e, CURLOPT_URL, u); /* libcurl copies the string */
  free(u);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->timeout_ms);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  if (o->headers != NULL)
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, o->headers);
  return e;
}

/* ---- the run ------------------------------------------------------------- */

/* Raises the descriptor limit to cover `need` sockets (root may raise the
 * hard limit too). Returns the usable count of concurrent connections. */
static unsigned long raise_nofile(unsigned long need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return need;
  rlim_t want = (rlim_t)need + 64; /* stdio, curl's own pipes, slack */
  if (rl.rlim_cur >= want)
    return need;
  if (rl.rlim_max < want) {
    struct rlimit up = {want, want};
    if (setrlimit(RLIMIT_NOFILE, &up) == 0)
      return need;
  }
  rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  unsigned long usable = rl.rlim_cur > 64 ? (unsigned long)rl.rlim_cur - 64 : 1;
  if (usable < need)
    fprintf(stderr,
            "bench_herd: descriptor limit %lu: concurrency capped at %lu\n",
            (unsigned long)rl.rlim_cur, usable);
  return usable < need ? usable : need;
}

static void finish(req_t *r, CURL *e, CURLcode res, uint64_t t) {
  r->err = res;
  uint64_t end = res == CURLE_OK && r->done_ns != 0 ? r->done_ns : t;
  r->latency_ms = (double)(end - r->start_ns) / 1e6;
  r->sent_ms = r->sent_ns != 0 && end >= r->sent_ns
                   ? (double)(end - r->sent_ns) / 1e6
                   : r->latency_ms; /* never sent: the whole wait */
  long code = 0;
  if (res == CURLE_OK)
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  r->status = (int)code;
}

/* The event loop libcurl drives through its socket and timer callbacks:
 * epoll on the sockets libcurl names, one timer. With curl_multi_perform
 * every call walks all N transfers, so a herd of 1,000 answers arriving at
 * once cost the client O(N^2) work on the cores it shares with the
 * servers; curl_multi_socket_action touches only the sockets that are
 * ready. */
typedef struct loop {
  int ep;
  uint64_t deadline_ns; /* libcurl's timer; 0 = none */
} loop_t;

static int on_socket(CURL *e, curl_socket_t s, int what, void *ud,
                     void *sockp) {
  (void)e, (void)sockp;
  loop_t *l = ud;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(l->ep, EPOLL_CTL_DEL, s, NULL);
    return 0;
  }
  struct epoll_event ev = {0};
  ev.data.fd = s;
  if (what & CURL_POLL_IN)
    ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT)
    ev.events |= EPOLLOUT;
  if (epoll_ctl(l->ep, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
    epoll_ctl(l->ep, EPOLL_CTL_ADD, s, &ev);
  return 0;
}

static int on_timer(CURLM *m, long ms, void *ud) {
  (void)m;
  loop_t *l = ud;
  l->deadline_ns = ms < 0 ? 0 : now_ns() + (uint64_t)ms * 1000000u;
  return 0;
}

/* Runs every request; returns the wall time in ms, or a negative value on a
 * set-up failure. */
static double run(const opts_t *o, req_t *reqs) {
  loop_t l = {.ep = epoll_create1(EPOLL_CLOEXEC), .deadline_ns = 0};
  CURLM *m = curl_multi_init();
  if (m == NULL || l.ep < 0) {
    if (l.ep >= 0)
      close(l.ep);
    curl_multi_cleanup(m);
    return -1;
  }
  curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)o->concurrency);
  curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(m, CURLMOPT_SOCKETDATA, &l);
  curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(m, CURLMOPT_TIMERDATA, &l);

  unsigned long next = 0, running = 0, done = 0;
  /* the initial batch: all added before libcurl is first driven */
  while (next < o->n && running < o->concurrency) {
    CURL *e = easy_for(o, &reqs[next]);
    if (e == NULL || curl_multi_add_handle(m, e) != CURLM_OK) {
      fprintf(stderr, "bench_herd: cannot create request %lu\n", next);
      curl_easy_cleanup(e);
      curl_multi_cleanup(m);
      close(l.ep);
      return -1;
    }
    next++;
    running++;
  }
  uint64_t t0 = now_ns();
  for (unsigned long i = 0; i < next; i++)
    reqs[i].start_ns = t0;

  int still = 0;
  curl_multi_socket_action(m, CURL_SOCKET_TIMEOUT, 0, &still);
  struct epoll_event evs[256];
  while (done < o->n) {
    int wait = 100;
    if (l.deadline_ns != 0) {
      uint64_t now = now_ns();
      wait = l.deadline_ns <= now ? 0
                                  : (int)((l.deadline_ns - now + 999999) / 1000000);
    }
    int nev = epoll_wait(l.ep, evs, (int)(sizeof evs / sizeof *evs), wait);
    for (int i = 0; i < nev; i++) {
      int flags = 0;
      if (evs[i].events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
      if (evs[i].events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
      if (evs[i].events & (EPOLLERR | EPOLLHUP))
        flags |= CURL_CSELECT_ERR;
      curl_multi_socket_action(m, evs[i].data.fd, flags, &still);
    }
    if (l.deadline_ns != 0 && now_ns() >= l.deadline_ns) {
      l.deadline_ns = 0;
      curl_multi_socket_action(m, CURL_SOCKET_TIMEOUT, 0, &still);
    }
    uint64_t t = now_ns();
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      CURL *e = msg->easy_handle;
      CURLcode res = msg->data.result;
      req_t *r = NULL;
      curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
      finish(r, e, res, t);
      curl_multi_remove_handle(m, e);
      curl_easy_cleanup(e);
      running--;
      done++;
    }
    /* closed loop: replace what finished (adding a handle sets a 0 ms
     * timer, which the next turn fires) */
    while (next < o->n && running < o->concurrency) {
      CURL *e = easy_for(o, &reqs[next]);
      if (e == NULL || curl_multi_add_handle(m, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        reqs[next].err = CURLE_OUT_OF_MEMORY;
        reqs[next].start_ns = now_ns();
        done++;
      } else {
        reqs[next].start_ns = now_ns();
        running++;
      }
      next++;
    }
  }
  double wall = (double)(now_ns() - t0) / 1e6;
  curl_multi_cleanup(m);
  close(l.ep);
  return wall;
}

/* ---- reporting ------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest rank: the smallest value with at least p of the samples at or
 * below it. */
static double pct(const double *sorted, size_t n, double p) {
  if (n == 0)
    return 0;
  size_t rank = (size_t)(p * (double)n + 0.999999);
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return sorted[rank - 1];
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      fprintf(f, "\\u%04x", (unsigned char)*s);
    else
      fputc(*s, f);
  }
  fputc('"', f);
}

static void json_hist(FILE *f, const char *name, const hist_t *h) {
  fprintf(f, ",\"%s\":{", name);
  for (size_t i = 0; i < h->n; i++) {
    if (i)
      fputc(',', f);
    json_str(f, h->b[i].label);
    fprintf(f, ":%lu", h->b[i].count);
  }
  fputc('}', f);
}

static void text_hist(FILE *f, const char *name, const hist_t *h) {
  fprintf(f, "%-9s", name);
  if (h->n == 0)
    fprintf(f, " -");
  for (size_t i = 0; i < h->n; i++)
    fprintf(f, " %s x%lu", h->b[i].label, h->b[i].count);
  fputc('\n', f);
}

static int write_csv(const char *path, const req_t *reqs, unsigned long n) {
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    fprintf(stderr, "bench_herd: %s: %s\n", path, strerror(errno));
    return -1;
  }
  fprintf(f, "i,key,status,x_cache,latency_ms,sent_latency_ms,body_bytes,"
             "error,url\n");
  for (unsigned long i = 0; i < n; i++)
    fprintf(f, "%lu,%u,%d,%s,%.3f,%.3f,%" PRIu64 ",%s,%u\n", i, reqs[i].key,
            reqs[i].status, reqs[i].xcache[0] ? reqs[i].xcache : "-",
            reqs[i].latency_ms, reqs[i].sent_ms, reqs[i].body_bytes,
            reqs[i].err == CURLE_OK ? "" : curl_easy_strerror(reqs[i].err),
            reqs[i].url);
  return fclose(f) == 0 ? 0 : -1;
}

typedef struct summary {
  double min, p50, p90, p99, max, mean;
} summary_t;

/* Percentiles of one latency per request; `from_send` picks which. */
static summary_t summarise(const req_t *reqs, unsigned long n, bool from_send) {
  summary_t s = {0};
  double *lat = malloc(n * sizeof *lat);
  if (lat == NULL || n == 0) {
    free(lat);
    return s;
  }
  for (unsigned long i = 0; i < n; i++)
    lat[i] = from_send ? reqs[i].sent_ms : reqs[i].latency_ms;
  qsort(lat, n, sizeof *lat, cmp_double);
  s.p50 = pct(lat, n, 0.50);
  s.p90 = pct(lat, n, 0.90);
  s.p99 = pct(lat, n, 0.99);
  s.min = lat[0];
  s.max = lat[n - 1];
  for (unsigned long i = 0; i < n; i++)
    s.mean += lat[i];
  s.mean /= (double)n;
  free(lat);
  return s;
}

static void json_summary(const char *name, const summary_t *s) {
  printf(",\"%s\":{\"min\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
         "\"max\":%.3f,\"mean\":%.3f}",
         name, s->min, s->p50, s->p90, s->p99, s->max, s->mean);
}

static unsigned long report(const opts_t *o, const req_t *reqs, double wall) {
  hist_t status = {0}, xcache = {0}, errs = {0};
  unsigned long nerr = 0;
  for (unsigned long i = 0; i < o->n; i++) {
    const req_t *r = &reqs[i];
    if (r->err != CURLE_OK) {
      nerr++;
      hist_add(&errs, curl_easy_strerror(r->err));
      continue;
    }
    char code[16];
    snprintf(code, sizeof code, "%d", r->status);
    hist_add(&status, code);
    hist_add(&xcache, r->xcache[0] ? r->xcache : "(none)");
  }
  summary_t a = summarise(reqs, o->n, false), b = summarise(reqs, o->n, true);
  if (!o->quiet) {
    FILE *f = o->json ? stderr : stdout;
    fprintf(f, "requests  %lu to %s", o->n, o->urls[0]);
    if (o->nurls > 1)
      fprintf(f, " and %u more URL%s", o->nurls - 1, o->nurls > 2 ? "s" : "");
    fprintf(f, " (%lu key%s, concurrency %lu) in %.1f ms\n", o->keys,
            o->keys == 1 ? "" : "s", o->concurrency, wall);
    text_hist(f, "status", &status);
    text_hist(f, "x-cache", &xcache);
    fprintf(f,
            "latency   min %.1f  p50 %.1f  p90 %.1f  p99 %.1f  max %.1f ms"
            " (from the herd's start)\n",
            a.min, a.p50, a.p90, a.p99, a.max);
    fprintf(f,
            "          min %.1f  p50 %.1f  p90 %.1f  p99 %.1f  max %.1f ms"
            " (from each request's send)\n",
            b.min, b.p50, b.p90, b.p99, b.max);
    fprintf(f, "errors    %lu", nerr);
    for (size_t i = 0; i < errs.n; i++)
      fprintf(f, "%s%s x%lu", i ? ", " : " (", errs.b[i].label,
              errs.b[i].count);
    fprintf(f, "%s\n", errs.n ? ")" : "");
  }
  if (o->json) {
    printf("{\"n\":%lu,\"keys\":%lu,\"urls\":%u,\"concurrency\":%lu,"
           "\"wall_ms\":%.3f,\"ok\":%lu,\"errors\":%lu",
           o->n, o->keys, o->nurls, o->concurrency, wall, o->n - nerr, nerr);
    json_hist(stdout, "status", &status);
    json_hist(stdout, "x_cache", &xcache);
    json_hist(stdout, "error_kinds", &errs);
    json_summary("latency_ms", &a);
    json_summary("sent_latency_ms", &b);
    printf("}\n");
  }
  fflush(stdout);
  return nerr;
}

/* ---- command line --------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "Usage: bench_herd --url URL --n N [options]\n"
          "Fires N HTTP GETs (all at once by default) and reports statuses,\n"
          "X-Cache values, latency percentiles and errors.\n\n"
          "  --url URL            target; `{k}` is replaced by the key number;\n"
          "                       repeatable (at most %d): request i goes to\n"
          "                       URL i%%U and asks for key (i/U)%%K\n"
          "  --n N                number of requests\n"
          "  --concurrency C      at most C in flight (default N: all at "
          "once)\n"
          "  --timeout-ms T       per request (default 30000)\n"
          "  --keys K             request i asks for key i%%K (default 1);\n"
          "                       appends k=NUM unless the URL has `{k}`\n"
          "  --header 'H: v'      add a request header (repeatable)\n"
          "  --csv FILE           one row per request\n"
          "  --json               one-line JSON summary on stdout (the text\n"
          "                       summary goes to stderr)\n"
          "  --quiet              no text summary\n",
          MAX_URLS);
}

static bool parse_ulong(const char *s, unsigned long *out) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
    return false;
  *out = v;
  return true;
}

static int parse_opts(int argc, char **argv, opts_t *o) {
  static const struct option longs[] = {
      {"url", required_argument, NULL, 'u'},
      {"n", required_argument, NULL, 'n'},
      {"concurrency", required_argument, NULL, 'c'},
      {"timeout-ms", required_argument, NULL, 't'},
      {"keys", required_argument, NULL, 'k'},
      {"header", required_argument, NULL, 'H'},
      {"csv", required_argument, NULL, 'o'},
      {"json", no_argument, NULL, 'j'},
      {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  unsigned long v;
  int c;
  while ((c = getopt_long(argc, argv, "u:n:c:t:k:H:o:jqh", longs, NULL)) !=
         -1) {
    switch (c) {
    case 'u':
      if (o->nurls == MAX_URLS) {
        fprintf(stderr, "bench_herd: more than %d --url\n", MAX_URLS);
        return -1;
      }
      o->urls[o->nurls++] = optarg;
      break;
    case 'n':
    case 'c':
    case 't':
    case 'k':
      if (!parse_ulong(optarg, &v) || v == 0 || v > 10000000) {
        fprintf(stderr, "bench_herd: bad number '%s'\n", optarg);
        return -1;
      }
      if (c == 'n')
        o->n = v;
      else if (c == 'c')
        o->concurrency = v;
      else if (c == 't')
        o->timeout_ms = (long)v;
      else
        o->keys = v;
      break;
    case 'H':
      o->headers = curl_slist_append(o->headers, optarg);
      break;
    case 'o':
      o->csv = optarg;
      break;
    case 'j':
      o->json = true;
      break;
    case 'q':
      o->quiet = true;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    default:
      usage(stderr);
      return -1;
    }
  }
  if (o->nurls == 0 || o->n == 0 || optind != argc) {
    usage(stderr);
    return -1;
  }
  if (o->concurrency == 0 || o->concurrency > o->n)
    o->concurrency = o->n;
  return 0;
}

int main(int argc, char **argv) {
  opts_t o = {.timeout_ms = 30000, .keys = 1};
  if (parse_opts(argc, argv, &o) != 0)
    return 2;
  o.concurrency = raise_nofile(o.concurrency);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "bench_herd: libcurl initialisation failed\n");
    return 2;
  }
  req_t *reqs = calloc(o.n, sizeof *reqs);
  if (reqs == NULL) {
    fprintf(stderr, "bench_herd: out of memory\n");
    return 2;
  }
  for (unsigned long i = 0; i < o.n; i++) {
    reqs[i].url = (unsigned)(i % o.nurls);
    reqs[i].key = (unsigned)(i / o.nurls % o.keys);
    reqs[i].content_length = -1;
  }

  double wall = run(&o, reqs);
  int rc = 2;
  if (wall >= 0) {
    unsigned long nerr = report(&o, reqs, wall);
    rc = nerr ? 1 : 0;
    if (o.csv != NULL && write_csv(o.csv, reqs, o.n) != 0)
      rc = 2;
  }
  free(reqs);
  curl_slist_free_all(o.headers);
  curl_global_cleanup();
  return rc;
}
