/*
 * respond.c — what testupstream answers: the scenario a request asks for
 * in its query string (status, delay, headers, validators, failure mode),
 * the counting JSON body, the batch endpoint and the control API.
 *
 * Invariants: a request's own parameters win over the defaults set with
 * POST /__upstream/config, which win over the command line. A parameter is
 * overridden as a whole: a request that names hdr= at all replaces every
 * configured hdr=. Every non-control request is counted exactly once, here,
 * before anything else can go wrong, so a bad parameter is still a call.
 * Header values never contain CR or LF (no response splitting by accident).
 */
#include "upstream.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONTROL_PREFIX "/__upstream/"
#define MAX_DELAY_MS 600000L
#define MAX_BODY_SIZE (64L * 1024 * 1024)

struct scenario {
  long delay_ms, status, body_size, drip_ms;
  const char *cc, *etag, *lm, *vary, *retry_after;
  long rl[3]; /* ratelimit limit, remaining, reset; rl[0] < 0 when unset */
  bool set_cookie, echo, malformed;
  enum fail_mode fail;
  time_t lm_time;
  char lm_buf[32];
};

static const char *const fail_names[] = {
    [FAIL_NONE] = "none",
    [FAIL_RESET] = "reset",
    [FAIL_CLOSE] = "close",
    [FAIL_HANG] = "hang",
    [FAIL_TRUNCATE] = "truncate",
    [FAIL_GARBAGE] = "garbage",
    [FAIL_DRIP] = "drip",
    [FAIL_MIDHEADERS] = "midheaders",
    [FAIL_SLOWHEADERS] = "slowheaders",
};

const char *server_date(struct server *srv) {
  time_t now = time(NULL);
  if (now != srv->date_at) {
    http_date(now, srv->date, sizeof srv->date);
    srv->date_at = now;
  }
  return srv->date;
}

bool req_header_next(const struct request *req, size_t *pos, const char **name,
                     const char **value) {
  if (*pos >= req->hdrs.len)
    return false;
  *name = req->hdrs.data + *pos;
  *value = *name + strlen(*name) + 1;
  *pos = (size_t)(*value - req->hdrs.data) + strlen(*value) + 1;
  return true;
}

const char *req_header(const struct request *req, const char *lname) {
  size_t pos = 0;
  const char *n, *v;
  while (req_header_next(req, &pos, &n, &v))
    if (strcmp(n, lname) == 0)
      return v;
  return NULL;
}

static bool parse_long(const char *s, long min, long max, long *out) {
  char *end;
  if (!*s)
    return false;
  long v = strtol(s, &end, 10);
  if (*end || v < min || v > max)
    return false;
  *out = v;
  return true;
}

static bool flag(const char *v) {
  return strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0;
}

static bool has_crlf(const char *s) {
  return strpbrk(s, "\r\n") != NULL;
}

static bool is_token(const char *s, size_t n) {
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("!#$%&'*+-.^_`|~", s[i]))
      return false;
  return true;
}

/* Fills sc from the merged parameters; on a bad value returns false with
 * the reason in err. */
static bool scenario_parse(struct scenario *sc, const struct kvlist *kv,
                           const struct server *srv, char *err, size_t cap) {
  memset(sc, 0, sizeof *sc);
  sc->delay_ms = srv->default_delay_ms;
  sc->body_size = (long)srv->default_body_size;
  sc->status = 200;
  sc->drip_ms = 100;
  sc->rl[0] = -1;
  sc->lm_time = (time_t)-1;
  for (size_t i = 0; i < kv->n; i++) {
    const char *k = kv->v[i].key, *v = kv->v[i].val;
    bool ok = true;
    if (strcmp(k, "delay_ms") == 0) {
      ok = parse_long(v, 0, MAX_DELAY_MS, &sc->delay_ms);
    } else if (strcmp(k, "status") == 0) {
      ok = parse_long(v, 200, 599, &sc->status);
    } else if (strcmp(k, "body_size") == 0) {
      ok = parse_long(v, 0, MAX_BODY_SIZE, &sc->body_size);
    } else if (strcmp(k, "drip_ms") == 0) {
      ok = parse_long(v, 1, 10000, &sc->drip_ms);
    } else if (strcmp(k, "cc") == 0) {
      sc->cc = v;
    } else if (strcmp(k, "etag") == 0) {
      sc->etag = v;
    } else if (strcmp(k, "vary") == 0) {
      sc->vary = v;
    } else if (strcmp(k, "lm") == 0) {
      long secs;
      if (parse_long(v, 0, 4102444800L, &secs)) { /* epoch seconds */
        sc->lm_time = (time_t)secs;
        http_date(sc->lm_time, sc->lm_buf, sizeof sc->lm_buf);
        sc->lm = sc->lm_buf;
      } else {
        sc->lm_time = http_date_parse(v);
        sc->lm = v;
        ok = sc->lm_time != (time_t)-1;
      }
    } else if (strcmp(k, "retry_after") == 0) {
      long secs;
      ok = parse_long(v, 0, 1L << 30, &secs);
      sc->retry_after = v;
    } else if (strcmp(k, "ratelimit") == 0) {
      ok = sscanf(v, "%ld,%ld,%ld", &sc->rl[0], &sc->rl[1], &sc->rl[2]) == 3 &&
           sc->rl[0] >= 0 && sc->rl[1] >= 0 && sc->rl[2] >= 0;
    } else if (strcmp(k, "set_cookie") == 0) {
      sc->set_cookie = flag(v);
    } else if (strcmp(k, "echo") == 0) {
      sc->echo = flag(v);
    } else if (strcmp(k, "malformed") == 0) {
      sc->malformed = flag(v);
    } else if (strcmp(k, "fail") == 0) {
      ok = false;
      if (!*v) {
        sc->fail = FAIL_NONE;
        ok = true;
      }
      for (size_t m = 0; m < sizeof fail_names / sizeof *fail_names; m++)
        if (strcmp(v, fail_names[m]) == 0) {
          sc->fail = (enum fail_mode)m;
          ok = true;
        }
    } else if (strcmp(k, "hdr") == 0) {
      const char *colon = strchr(v, ':');
      ok = colon && is_token(v, (size_t)(colon - v));
    }
    if (ok && has_crlf(v))
      ok = false;
    if (!ok) {
      snprintf(err, cap, "bad value for %s: '%s'", k, v);
      return false;
    }
  }
  return true;
}

static const struct {
  long status;
  const char *text;
} reasons[] = {
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {413, "Content Too Large"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
};

static const char *reason(long status) {
  for (size_t i = 0; i < sizeof reasons / sizeof *reasons; i++)
    if (reasons[i].status == status)
      return reasons[i].text;
  return "Status";
}

/* Status line and the headers every answer carries. */
static void put_head(struct server *srv, const struct request *req,
                     struct plan *plan, long status) {
  sb_printf(&plan->out,
            "HTTP/1.1 %ld %s\r\nDate: %s\r\nServer: testupstream\r\n", status,
            reason(status), server_date(srv));
  if (plan->close)
    sb_puts(&plan->out, "Connection: close\r\n");
  else if (req->http10)
    sb_puts(&plan->out, "Connection: keep-alive\r\n");
}

/* Ends the header block and appends body (not for HEAD, 204 or 304);
 * Content-Type is left out when a hdr= parameter already set one. */
static void put_body(struct plan *plan, const struct request *req, long status,
                     const struct sbuf *body, bool own_ctype) {
  bool bodiless = status == 204 || status == 304;
  if (!bodiless && !own_ctype)
    sb_puts(&plan->out, "Content-Type: application/json\r\n");
  if (!bodiless)
    sb_printf(&plan->out, "Content-Length: %zu\r\n", body->len);
  sb_puts(&plan->out, "\r\n");
  plan->head_len = plan->out.len;
  if (!bodiless && strcmp(req->method, "HEAD") != 0 && body->len)
    sb_putn(&plan->out, body->data, body->len);
}

static void simple_answer(struct server *srv, const struct request *req,
                          struct plan *plan, long status, const char *json,
                          const char *extra_headers) {
  struct sbuf body = {0};
  sb_puts(&body, json);
  put_head(srv, req, plan, status);
  sb_puts(&plan->out, "Cache-Control: no-store\r\n");
  if (extra_headers)
    sb_puts(&plan->out, extra_headers);
  put_body(plan, req, status, &body, false);
  sb_free(&body);
}

/* ------------------------------------------------------------- bodies */

static void echo_headers(struct sbuf *b, const struct request *req) {
  sb_puts(b, ",\"headers\":{");
  size_t pos = 0, n = 0;
  const char *name, *val;
  while (req_header_next(req, &pos, &name, &val)) {
    /* Repeated fields become one member, values joined as RFC 9110 allows;
     * emit each name at its first occurrence only. */
    size_t p2 = 0;
    const char *n2, *v2;
    bool first = true;
    while (req_header_next(req, &p2, &n2, &v2) && n2 != name)
      if (strcmp(n2, name) == 0)
        first = false;
    if (!first)
      continue;
    if (n++)
      sb_putc(b, ',');
    sb_json_str(b, name, strlen(name));
    sb_putc(b, ':');
    struct sbuf joined = {0};
    p2 = 0;
    while (req_header_next(req, &p2, &n2, &v2))
      if (strcmp(n2, name) == 0) {
        if (joined.len)
          sb_puts(&joined, ", ");
        sb_puts(&joined, v2);
      }
    sb_json_str(b, joined.data ? joined.data : "", joined.len);
    sb_free(&joined);
  }
  sb_putc(b, '}');
}

static void default_body(struct sbuf *b, const struct request *req,
                         const char *path, size_t plen, const char *query,
                         size_t qlen, uint64_t seq, uint64_t pseq,
                         const struct scenario *sc) {
  sb_puts(b, "{\"path\":");
  sb_json_str(b, path, plen);
  sb_puts(b, ",\"query\":");
  sb_json_str(b, query, qlen);
  sb_puts(b, ",\"method\":");
  sb_json_str(b, req->method, strlen(req->method));
  sb_printf(b, ",\"seq\":%llu,\"path_seq\":%llu", (unsigned long long)seq,
            (unsigned long long)pseq);
  if (req->have_body)
    sb_printf(b, ",\"body_len\":%llu", (unsigned long long)req->body_len);
  if (sc->echo)
    echo_headers(b, req);
  const size_t pad_frame = sizeof ",\"pad\":\"\"}" - 1;
  if ((size_t)sc->body_size >= b->len + pad_frame) {
    sb_puts(b, ",\"pad\":\"");
    sb_fill(b, 'x', (size_t)sc->body_size - b->len - 2);
    sb_putc(b, '"');
  }
  sb_putc(b, '}');
}

static bool id_missing(const struct kvlist *kv, const char *id, size_t n) {
  for (size_t i = 0; i < kv->n; i++)
    if (strcmp(kv->v[i].key, "missing") == 0 && strlen(kv->v[i].val) == n &&
        memcmp(kv->v[i].val, id, n) == 0)
      return true;
  return false;
}

static void batch_item(struct sbuf *b, const struct kvlist *kv, const char *id,
                       size_t n, size_t *count) {
  if (n == 0 || id_missing(kv, id, n))
    return;
  if ((*count)++)
    sb_putc(b, ',');
  sb_puts(b, "{\"id\":");
  sb_json_str(b, id, n);
  sb_puts(b, ",\"name\":\"item-");
  struct sbuf esc = {0};
  sb_json_str(&esc, id, n); /* reuse the escaping, minus the quotes */
  sb_putn(b, esc.data + 1, esc.len - 1);
  sb_free(&esc);
  sb_putc(b, '}');
}

/* The batch endpoint: ids come from the path (single fetch) or from id=
 * and ids= (comma-separated), answered in the order asked. */
static void batch_body(struct sbuf *b, const struct kvlist *kv,
                       const char *single, const struct scenario *sc) {
  if (sc->malformed) {
    sb_puts(b, "{\"data\":[{\"id\":\"1\",\"name\":"); /* cut short */
    return;
  }
  size_t count = 0;
  sb_puts(b, "{\"data\":[");
  if (single) {
    batch_item(b, kv, single, strlen(single), &count);
  } else {
    for (size_t i = 0; i < kv->n; i++) {
      const char *v = kv->v[i].val;
      if (strcmp(kv->v[i].key, "id") == 0) {
        batch_item(b, kv, v, strlen(v), &count);
      } else if (strcmp(kv->v[i].key, "ids") == 0) {
        while (*v) {
          size_t n = strcspn(v, ",");
          batch_item(b, kv, v, n, &count);
          v += n + (v[n] == ',');
        }
      }
    }
  }
  sb_puts(b, "]}");
}

/* ------------------------------------------------------- conditionals */

static bool etag_equal(const char *a, size_t an, const char *b, size_t bn) {
  if (an >= 2 && memcmp(a, "W/", 2) == 0)
    a += 2, an -= 2;
  if (bn >= 2 && memcmp(b, "W/", 2) == 0)
    b += 2, bn -= 2;
  return an == bn && memcmp(a, b, an) == 0;
}

/* Weak comparison of our tag against an If-None-Match list (RFC 9110
 * 13.1.2). */
static bool etag_matches(const char *list, const char *tag) {
  while (*list) {
    list += strspn(list, " \t,");
    size_t n = strcspn(list, ",");
    size_t t = n;
    while (t && (list[t - 1] == ' ' || list[t - 1] == '\t'))
      t--;
    if ((t == 1 && list[0] == '*') ||
        (t && etag_equal(list, t, tag, strlen(tag))))
      return true;
    list += n;
  }
  return false;
}

static bool not_modified(const struct request *req, const struct scenario *sc,
                         const char *etag) {
  if (sc->status != 200 ||
      (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0))
    return false;
  const char *inm = req_header(req, "if-none-match");
  if (inm) /* If-None-Match takes precedence over If-Modified-Since */
    return etag && etag_matches(inm, etag);
  const char *ims = req_header(req, "if-modified-since");
  if (!ims || sc->lm_time == (time_t)-1)
    return false;
  time_t t = http_date_parse(ims);
  return t != (time_t)-1 && t >= sc->lm_time;
}

/* -------------------------------------------------------- control API */

static bool method_is(const struct request *req, const char *m) {
  return strcmp(req->method, m) == 0;
}

static void control(struct server *srv, const struct request *req,
                    const char *name, const char *query, size_t qlen,
                    struct plan *plan) {
  struct sbuf body = {0};
  struct kvlist kv = {0};
  kv_parse(&kv, query, qlen);
  if (strcmp(name, "stats") == 0) {
    const char *paths = kv_get(&kv, "paths");
    stats_json(&srv->stats, &body, !paths || flag(paths));
    simple_answer(srv, req, plan, 200, body.data, NULL);
  } else if ((strcmp(name, "reset") == 0 || strcmp(name, "config") == 0) &&
             !method_is(req, "POST") &&
             !(strcmp(name, "config") == 0 && method_is(req, "GET"))) {
    simple_answer(srv, req, plan, 405,
                  "{\"error\":\"method_not_allowed\",\"message\":\"POST\"}",
                  "Allow: POST\r\n");
  } else if (strcmp(name, "reset") == 0) {
    stats_reset(&srv->stats);
    simple_answer(srv, req, plan, 200, "{\"ok\":true}", NULL);
  } else if (strcmp(name, "config") == 0) {
    struct scenario sc;
    char err[256];
    if (method_is(req, "POST") &&
        !scenario_parse(&sc, &kv, srv, err, sizeof err)) {
      sb_puts(&body, "{\"error\":\"bad_param\",\"message\":");
      sb_json_str(&body, err, strlen(err));
      sb_putc(&body, '}');
      simple_answer(srv, req, plan, 400, body.data, NULL);
    } else {
      if (method_is(req, "POST")) {
        kv_free(&srv->config);
        srv->config = kv;
        memset(&kv, 0, sizeof kv);
        free(srv->config_raw);
        srv->config_raw = xstrndup(query, qlen);
      }
      sb_puts(&body, "{\"ok\":true,\"config\":");
      const char *raw = srv->config_raw ? srv->config_raw : "";
      sb_json_str(&body, raw, strlen(raw));
      sb_putc(&body, '}');
      simple_answer(srv, req, plan, 200, body.data, NULL);
    }
  } else {
    simple_answer(srv, req, plan, 404,
                  "{\"error\":\"not_found\",\"message\":"
                  "\"control endpoints: stats, reset, config\"}",
                  NULL);
  }
  kv_free(&kv);
  sb_free(&body);
}

/* ------------------------------------------------------------- answer */

static void scenario_headers(struct sbuf *o, const struct scenario *sc,
                             const struct kvlist *kv, const char *etag,
                             uint64_t seq) {
  if (sc->cc)
    sb_printf(o, "Cache-Control: %s\r\n", sc->cc);
  if (etag)
    sb_printf(o, "ETag: %s\r\n", etag);
  if (sc->lm)
    sb_printf(o, "Last-Modified: %s\r\n", sc->lm);
  if (sc->vary)
    sb_printf(o, "Vary: %s\r\n", sc->vary);
  if (sc->set_cookie)
    sb_printf(o, "Set-Cookie: session=s%llu; Path=/; HttpOnly\r\n",
              (unsigned long long)seq);
  if (sc->retry_after)
    sb_printf(o, "Retry-After: %s\r\n", sc->retry_after);
  if (sc->rl[0] >= 0) {
    static const char *const names[3] = {"Limit", "Remaining", "Reset"};
    for (int i = 0; i < 3; i++)
      sb_printf(o, "X-RateLimit-%s: %ld\r\n", names[i], sc->rl[i]);
    for (int i = 0; i < 3; i++)
      sb_printf(o, "RateLimit-%s: %ld\r\n", names[i], sc->rl[i]);
    sb_printf(o, "RateLimit: limit=%ld, remaining=%ld, reset=%ld\r\n",
              sc->rl[0], sc->rl[1], sc->rl[2]);
  }
  for (size_t i = 0; i < kv->n; i++)
    if (strcmp(kv->v[i].key, "hdr") == 0) {
      const char *v = kv->v[i].val, *colon = strchr(v, ':');
      const char *val = colon + 1 + strspn(colon + 1, " \t");
      sb_printf(o, "%.*s: %s\r\n", (int)(colon - v), v, val);
    }
}

void respond(struct server *srv, const struct request *req, struct plan *plan) {
  memset(plan, 0, sizeof *plan);
  plan->close = !req->keep_alive;
  const char *url = req->url.data ? req->url.data : "/";
  size_t ulen = req->url.data ? req->url.len : 1;
  const char *q = memchr(url, '?', ulen);
  size_t plen = q ? (size_t)(q - url) : ulen;
  const char *query = q ? q + 1 : "";
  size_t qlen = q ? ulen - plen - 1 : 0;

  if (plen >= sizeof CONTROL_PREFIX - 1 &&
      memcmp(url, CONTROL_PREFIX, sizeof CONTROL_PREFIX - 1) == 0) {
    char *name = xstrndup(url + sizeof CONTROL_PREFIX - 1,
                          plen - (sizeof CONTROL_PREFIX - 1));
    control(srv, req, name, query, qlen, plan);
    free(name);
    return;
  }

  uint64_t seq, pseq;
  stats_count(&srv->stats, url, ulen, req->method, &seq, &pseq);
  plan->counted = true;

  struct kvlist own = {0}, kv = {0};
  kv_parse(&own, query, qlen);
  for (size_t i = 0; i < srv->config.n; i++)
    if (!kv_get(&own, srv->config.v[i].key))
      kv_add(&kv, srv->config.v[i].key, srv->config.v[i].val);
  for (size_t i = 0; i < own.n; i++)
    kv_add(&kv, own.v[i].key, own.v[i].val);
  kv_free(&own);

  struct scenario sc;
  char err[256];
  long status;
  struct sbuf body = {0};
  if (!scenario_parse(&sc, &kv, srv, err, sizeof err)) {
    status = 400;
    sb_puts(&body, "{\"error\":\"bad_param\",\"message\":");
    sb_json_str(&body, err, strlen(err));
    sb_putc(&body, '}');
    put_head(srv, req, plan, status);
    sb_printf(&plan->out, "X-Upstream-Seq: %llu\r\n", (unsigned long long)seq);
  } else {
    char etag[512];
    const char *tag = NULL;
    if (sc.etag) {
      bool quoted = sc.etag[0] == '"' || strncmp(sc.etag, "W/\"", 3) == 0;
      snprintf(etag, sizeof etag, quoted ? "%s" : "\"%s\"", sc.etag);
      tag = etag;
    }
    status = not_modified(req, &sc, tag) ? 304 : sc.status;
    plan->delay_ms = (unsigned)sc.delay_ms;
    plan->drip_ms = (unsigned)sc.drip_ms;
    plan->fail = sc.fail;
    static const char batch[] = "/batch/items";
    const size_t blen = sizeof batch - 1;
    if (plen == blen && memcmp(url, batch, blen) == 0) {
      batch_body(&body, &kv, NULL, &sc);
    } else if (plen > blen + 1 && memcmp(url, batch, blen) == 0 &&
               url[blen] == '/' &&
               !memchr(url + blen + 1, '/', plen - blen - 1)) {
      char *id = url_decode(url + blen + 1, plen - blen - 1);
      batch_body(&body, &kv, id, &sc);
      free(id);
    } else {
      default_body(&body, req, url, plen, query, qlen, seq, pseq, &sc);
    }
    put_head(srv, req, plan, status);
    sb_printf(&plan->out,
              "X-Upstream-Seq: %llu\r\nX-Upstream-Path-Seq: %llu\r\n",
              (unsigned long long)seq, (unsigned long long)pseq);
    scenario_headers(&plan->out, &sc, &kv, tag, seq);
  }
  bool own_ctype = false;
  for (size_t i = 0; i < kv.n; i++)
    if (strcmp(kv.v[i].key, "hdr") == 0 &&
        strncasecmp(kv.v[i].val, "content-type:", 13) == 0)
      own_ctype = true;
  put_body(plan, req, status, &body, own_ctype);
  if (!srv->quiet)
    fprintf(stderr, "testupstream: #%llu %s %s -> %ld%s%s%s\n",
            (unsigned long long)seq, req->method, url, status,
            plan->fail ? " (fail=" : "",
            plan->fail ? fail_names[plan->fail] : "", plan->fail ? ")" : "");
  sb_free(&body);
  kv_free(&kv);
}
