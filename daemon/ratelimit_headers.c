/*
 * ratelimit_headers.c — rate-limit header parsing; see ratelimit_headers.h.
 *
 * Every pass over the fields is linear and keeps no list: structured items
 * and policies are folded as they are met (lowest/latest wins), and the
 * few cross-references (an -08 item's policy by name, a limit's window)
 * are resolved by one more pass. A hostile upstream therefore costs
 * O(header bytes) per pass, whatever it sends.
 */
#include "ratelimit_headers.h"

#include <string.h>
#include <strings.h>

#include "cachecontrol.h" /* http_date_parse for Retry-After */

typedef struct span {
  const char *p;
  size_t n;
} span_t;

/* Never a NULL pointer: even adding 0 to NULL is undefined. */
static const span_t no_span = {"", 0};

enum field_kind {
  F_NONE,
  F_RATELIMIT,   /* IETF structured: dictionary (-07) or list (-08) */
  F_POLICY,      /* RateLimit-Policy */
  F_LIMIT,       /* RateLimit-Limit */
  F_REMAINING,   /* RateLimit-Remaining */
  F_RESET,       /* RateLimit-Reset */
  F_X_LIMIT,
  F_X_REMAINING,
  F_X_RESET,
  F_RETRY_AFTER,
};

static const struct {
  const char *name;
  enum field_kind kind;
} field_names[] = {
    {"ratelimit", F_RATELIMIT},
    {"ratelimit-policy", F_POLICY},
    {"ratelimit-limit", F_LIMIT},
    {"ratelimit-remaining", F_REMAINING},
    {"ratelimit-reset", F_RESET},
    {"x-ratelimit-limit", F_X_LIMIT},
    {"x-ratelimit-remaining", F_X_REMAINING},
    {"x-ratelimit-reset", F_X_RESET},
    {"x-ratelimit-reset-after", F_X_RESET},
    {"x-rate-limit-limit", F_X_LIMIT},
    {"x-rate-limit-remaining", F_X_REMAINING},
    {"x-rate-limit-reset", F_X_RESET},
    {"retry-after", F_RETRY_AFTER},
};

static enum field_kind kind_of(const char *name, size_t len) {
  if (name == NULL)
    return F_NONE;
  for (size_t i = 0; i < sizeof field_names / sizeof field_names[0]; i++)
    if (strlen(field_names[i].name) == len &&
        strncasecmp(name, field_names[i].name, len) == 0)
      return field_names[i].kind;
  return F_NONE;
}

bool rl_is_field(const char *name, size_t len) {
  return kind_of(name, len) != F_NONE;
}

const char *rl_family_name(rl_family_t f) {
  switch (f) {
  case RL_FAMILY_IETF:
    return "ietf";
  case RL_FAMILY_IETF_FIELDS:
    return "ietf-fields";
  case RL_FAMILY_X:
    return "x-ratelimit";
  default:
    return "none";
  }
}

/* ----------------------------------------------------------- tokenising */

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static span_t trim(span_t s) {
  while (s.n > 0 && is_ows(s.p[0]))
    s.p++, s.n--;
  while (s.n > 0 && is_ows(s.p[s.n - 1]))
    s.n--;
  return s;
}

/* The next `delim`-separated piece of s (outside double quotes), trimmed.
 * *pos starts at 0; false once s is used up. An empty s is one empty
 * piece, so callers skip empty pieces themselves. */
static bool split_next(span_t s, size_t *pos, char delim, span_t *out) {
  if (*pos > s.n)
    return false;
  size_t i = *pos;
  bool quoted = false;
  for (; i < s.n; i++) {
    char c = s.p[i];
    if (quoted) {
      if (c == '\\' && i + 1 < s.n)
        i++;
      else if (c == '"')
        quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == delim) {
      break;
    }
  }
  *out = trim((span_t){s.p + *pos, i - *pos});
  *pos = i + 1;
  return true;
}

static bool span_is(span_t s, const char *want) {
  return strlen(want) == s.n && strncasecmp(s.p, want, s.n) == 0;
}

static bool span_eq(span_t a, span_t b) {
  return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* Byte order, shorter first on a common prefix: a total order on names so
 * ties between structured items resolve the same whatever the field order. */
static int span_cmp(span_t a, span_t b) {
  size_t n = a.n < b.n ? a.n : b.n;
  int c = n ? memcmp(a.p, b.p, n) : 0;
  if (c != 0)
    return c;
  return a.n < b.n ? -1 : a.n > b.n;
}

/* 1*DIGIT, saturating at RL_MAX. Signs, spaces inside, and empty fail. */
static bool parse_int(span_t s, int64_t *out) {
  if (s.n == 0)
    return false;
  int64_t v = 0;
  for (size_t i = 0; i < s.n; i++) {
    if (s.p[i] < '0' || s.p[i] > '9')
      return false;
    if (v < RL_MAX)
      v = v * 10 + (s.p[i] - '0');
  }
  *out = v > RL_MAX ? RL_MAX : v;
  return true;
}

/* 1*DIGIT [ "." 1*DIGIT ]: seconds, a fraction rounding up. */
static bool parse_secs(span_t s, int64_t *out) {
  const char *dot = s.n ? memchr(s.p, '.', s.n) : NULL;
  if (dot == NULL)
    return parse_int(s, out);
  span_t whole = {s.p, (size_t)(dot - s.p)};
  span_t frac = {dot + 1, s.n - whole.n - 1};
  int64_t w, f;
  if (!parse_int(whole, &w) || !parse_int(frac, &f))
    return false;
  *out = (f > 0 && w < RL_MAX) ? w + 1 : w;
  return true;
}

/* A reset value as seconds from now: large values are Unix times. */
static int64_t reset_from(int64_t v, int64_t now) {
  if (v >= RL_EPOCH_MS_MIN)
    v = v / 1000 + (v % 1000 != 0);
  if (v < RL_EPOCH_MIN)
    return v;
  return v > now ? v - now : 0;
}

/* One list or dictionary member: its head (before the first ';') either
 * `key=value` or a bare item, and the raw parameters after it. */
typedef struct member {
  bool kv;      /* the head was key=value (even "=x": an empty key) */
  span_t key;
  span_t item;  /* the value, or the bare item; quotes stripped */
  bool quoted;  /* item was a quoted string */
  span_t params;
} member_t;

/* Splits "k = v" at its first '=' (outside quotes); false when none. */
static bool split_kv(span_t s, span_t *k, span_t *v) {
  size_t pos = 0;
  split_next(s, &pos, '=', k);
  if (pos > s.n) {
    *v = (span_t){s.p + s.n, 0};
    return false;
  }
  *v = trim((span_t){s.p + pos, s.n - pos});
  return true;
}

static bool member_parse(span_t m, member_t *out) {
  if (m.n == 0)
    return false;
  size_t pos = 0;
  span_t head;
  split_next(m, &pos, ';', &head);
  out->params = pos <= m.n ? (span_t){m.p + pos, m.n - pos} : no_span;
  span_t k, v;
  out->kv = split_kv(head, &k, &v);
  if (out->kv) {
    out->key = k;
    out->item = v;
  } else {
    out->key = no_span;
    out->item = head;
  }
  out->quoted = out->item.n >= 2 && out->item.p[0] == '"' &&
                out->item.p[out->item.n - 1] == '"';
  if (out->quoted)
    out->item = (span_t){out->item.p + 1, out->item.n - 2};
  return true;
}

/* The last parameter `name` of a member (Structured Fields: last wins). */
static bool param_get(span_t params, const char *name, span_t *val) {
  bool found = false;
  size_t pos = 0;
  span_t p;
  while (split_next(params, &pos, ';', &p)) {
    span_t k, v;
    split_kv(p, &k, &v);
    if (span_is(k, name)) {
      *val = v;
      found = true;
    }
  }
  return found;
}

static bool param_int(span_t params, const char *name, int64_t *out) {
  span_t v;
  return param_get(params, name, &v) && parse_int(v, out);
}

/* ------------------------------------------------------------- folding */

static void fold_min(int64_t *slot, int64_t v) {
  if (*slot == RL_ABSENT || v < *slot)
    *slot = v;
}

static void fold_max(int64_t *slot, int64_t v) {
  if (*slot == RL_ABSENT || v > *slot)
    *slot = v;
}

typedef struct triple {
  int64_t limit, remaining, reset;
} triple_t;

static const triple_t triple_absent = {RL_ABSENT, RL_ABSENT, RL_ABSENT};

static bool triple_any(const triple_t *t) {
  return t->limit != RL_ABSENT || t->remaining != RL_ABSENT ||
         t->reset != RL_ABSENT;
}

/* Orders absent as +infinity (absent_high) or as -infinity. */
static int cmp_opt(int64_t a, int64_t b, bool absent_high) {
  if (a == b)
    return 0;
  if (a == RL_ABSENT)
    return absent_high ? 1 : -1;
  if (b == RL_ABSENT)
    return absent_high ? -1 : 1;
  return a < b ? -1 : 1;
}

/* < 0 when a is the more restrictive: lower remaining, later reset. */
static int cmp_restrictive(int64_t ar, int64_t at, int64_t br, int64_t bt) {
  int c = cmp_opt(ar, br, true);
  return c != 0 ? c : -cmp_opt(at, bt, false);
}

typedef struct policy {
  span_t name; /* empty for an unnamed (-07 or older) policy */
  int64_t quota, window;
} policy_t;

/* A policy from a RateLimit-Policy member ("100;w=60" or
 * "\"day\";q=100;w=86400") or a RateLimit-Limit member with w=. */
static bool policy_of(const member_t *m, policy_t *p) {
  if (m->kv)
    return false;
  p->name = no_span;
  p->quota = p->window = RL_ABSENT;
  if (!parse_int(m->item, &p->quota)) {
    p->name = m->item;
    p->quota = RL_ABSENT;
    param_int(m->params, "q", &p->quota);
  }
  param_int(m->params, "w", &p->window);
  return p->quota != RL_ABSENT;
}

typedef void (*policy_fn)(const policy_t *p, void *ud);

static void each_policy(const hdr_t *h, size_t n, policy_fn fn, void *ud) {
  for (size_t i = 0; i < n; i++) {
    enum field_kind k = kind_of(h[i].name, h[i].name_len);
    if (k != F_POLICY && k != F_LIMIT)
      continue;
    if (h[i].value == NULL)
      continue;
    span_t v = {h[i].value, h[i].value_len};
    size_t pos = 0;
    span_t raw;
    member_t m;
    policy_t p;
    while (split_next(v, &pos, ',', &raw))
      if (member_parse(raw, &m) && policy_of(&m, &p) &&
          (k == F_POLICY || p.window != RL_ABSENT))
        fn(&p, ud);
  }
}

/* Policy matching for the window: by name, by quota, or the tightest. */
typedef struct match {
  enum { BY_NAME, BY_QUOTA, SMALLEST } how;
  span_t name;
  int64_t quota;
  int64_t best_quota, best_window;
} match_t;

static void match_policy(const policy_t *p, void *ud) {
  match_t *m = ud;
  if (m->how == BY_NAME && !span_eq(p->name, m->name))
    return;
  if (m->how == BY_QUOTA && p->quota != m->quota)
    return;
  if (m->how == BY_QUOTA && p->window == RL_ABSENT)
    return;
  /* BY_NAME: lowest quota, then smallest window; else smallest window,
   * then lowest quota. */
  int c1 = m->how == BY_NAME ? cmp_opt(p->quota, m->best_quota, true)
                             : cmp_opt(p->window, m->best_window, true);
  int c2 = m->how == BY_NAME ? cmp_opt(p->window, m->best_window, true)
                             : cmp_opt(p->quota, m->best_quota, true);
  if (c1 < 0 || (c1 == 0 && c2 < 0)) {
    m->best_quota = p->quota;
    m->best_window = p->window;
  }
}

static match_t find_policy(const hdr_t *h, size_t n, int how, span_t name,
                           int64_t quota) {
  match_t m = {.how = how, .name = name, .quota = quota,
               .best_quota = RL_ABSENT, .best_window = RL_ABSENT};
  each_policy(h, n, match_policy, &m);
  return m;
}

/* The best -08 item so far: the most restrictive, then the smallest name. */
typedef struct item08 {
  bool set;
  span_t name;
  int64_t remaining, reset;
} item08_t;

static void fold_item08(item08_t *best, span_t name, int64_t r, int64_t t) {
  if (r == RL_ABSENT && t == RL_ABSENT)
    return;
  if (best->set) {
    int c = cmp_restrictive(r, t, best->remaining, best->reset);
    if (c > 0 || (c == 0 && span_cmp(name, best->name) >= 0))
      return;
  }
  *best = (item08_t){true, name, r, t};
}

/* --------------------------------------------------------------- parse */

typedef struct acc {
  triple_t dict07;  /* RateLimit: limit=, remaining=, reset= */
  item08_t item08;  /* RateLimit: "name";r=;t= */
  bool any_policy;
  triple_t fields;  /* RateLimit-Limit / -Remaining / -Reset */
  triple_t x;       /* X-RateLimit-* */
  int64_t retry_after;
} acc_t;

static void fold_ratelimit(acc_t *a, const member_t *m, int64_t now) {
  int64_t v;
  if (m->kv) { /* -07 dictionary member */
    if (span_is(m->key, "limit") && parse_int(m->item, &v))
      fold_min(&a->dict07.limit, v);
    else if (span_is(m->key, "remaining") && parse_int(m->item, &v))
      fold_min(&a->dict07.remaining, v);
    else if (span_is(m->key, "reset") && parse_secs(m->item, &v))
      fold_max(&a->dict07.reset, reset_from(v, now));
    return;
  }
  int64_t r = RL_ABSENT, t = RL_ABSENT;
  span_t s;
  if (!param_int(m->params, "r", &r))
    r = RL_ABSENT;
  if (param_get(m->params, "t", &s) && parse_secs(s, &t))
    t = reset_from(t, now);
  else
    t = RL_ABSENT;
  fold_item08(&a->item08, m->item, r, t);
}

static void fold_field(acc_t *a, enum field_kind k, span_t v, int64_t now) {
  if (k == F_RETRY_AFTER) {
    int64_t s;
    time_t date; /* 1900..9999: no overflow against a clamped now */
    if (parse_secs(v, &s))
      fold_max(&a->retry_after, s);
    else if (http_date_parse(v.p, v.n, &date))
      fold_max(&a->retry_after, (int64_t)date > now ? (int64_t)date - now : 0);
    return;
  }
  size_t pos = 0;
  span_t raw;
  member_t m;
  while (split_next(v, &pos, ',', &raw)) {
    if (!member_parse(raw, &m))
      continue;
    int64_t n;
    switch (k) {
    case F_RATELIMIT:
      fold_ratelimit(a, &m, now);
      break;
    case F_POLICY: {
      policy_t p;
      a->any_policy |= policy_of(&m, &p);
      break;
    }
    case F_LIMIT:
    case F_X_LIMIT:
      if (!m.kv && parse_int(m.item, &n))
        fold_min(k == F_LIMIT ? &a->fields.limit : &a->x.limit, n);
      break;
    case F_REMAINING:
    case F_X_REMAINING:
      if (!m.kv && parse_int(m.item, &n))
        fold_min(k == F_REMAINING ? &a->fields.remaining : &a->x.remaining,
                 n);
      break;
    case F_RESET:
    case F_X_RESET:
      if (!m.kv && parse_secs(m.item, &n))
        fold_max(k == F_RESET ? &a->fields.reset : &a->x.reset,
                 reset_from(n, now));
      break;
    default:
      break;
    }
  }
}

/* Chooses the IETF structured result: the -07 dictionary or the best -08
 * item (its limit from the policy of that name), the more restrictive. */
static triple_t ietf_structured(const acc_t *a, const hdr_t *h, size_t n,
                                int64_t *window) {
  triple_t t = a->dict07;
  *window = RL_ABSENT;
  if (!a->item08.set)
    return t;
  match_t m = find_policy(h, n, BY_NAME, a->item08.name, 0);
  triple_t i = {m.best_quota, a->item08.remaining, a->item08.reset};
  int c = triple_any(&t)
              ? cmp_restrictive(i.remaining, i.reset, t.remaining, t.reset)
              : -1;
  if (c == 0)
    c = cmp_opt(i.limit, t.limit, true);
  if (c < 0) {
    *window = m.best_window;
    return i;
  }
  return t;
}

bool rl_parse(const hdr_t *h, size_t n, time_t now, rl_info_t *out) {
  *out = (rl_info_t){RL_FAMILY_NONE, RL_ABSENT, RL_ABSENT, RL_ABSENT,
                     RL_ABSENT, RL_ABSENT};
  acc_t a = {.dict07 = triple_absent, .fields = triple_absent,
             .x = triple_absent, .retry_after = RL_ABSENT};
  /* Epoch arithmetic in a range where it cannot overflow. */
  int64_t now_s = now < 0 ? 0 : (int64_t)now > RL_MAX ? RL_MAX : (int64_t)now;
  for (size_t i = 0; i < n; i++) {
    enum field_kind k = kind_of(h[i].name, h[i].name_len);
    if (k != F_NONE && h[i].value != NULL)
      fold_field(&a, k, trim((span_t){h[i].value, h[i].value_len}), now_s);
  }
  out->retry_after_s = a.retry_after;

  int64_t window = RL_ABSENT;
  triple_t ietf = ietf_structured(&a, h, n, &window);
  triple_t fields = a.fields;
  /* Policies alone still tell the limit and the window. */
  bool ietf_any = triple_any(&ietf) || a.any_policy;
  bool fields_any = triple_any(&fields);
  bool x_any = triple_any(&a.x);

  const triple_t *pick = NULL;
  if (ietf.remaining != RL_ABSENT)
    out->family = RL_FAMILY_IETF, pick = &ietf;
  else if (fields.remaining != RL_ABSENT)
    out->family = RL_FAMILY_IETF_FIELDS, pick = &fields;
  else if (a.x.remaining != RL_ABSENT)
    out->family = RL_FAMILY_X, pick = &a.x;
  else if (ietf_any)
    out->family = RL_FAMILY_IETF, pick = &ietf;
  else if (fields_any)
    out->family = RL_FAMILY_IETF_FIELDS, pick = &fields;
  else if (x_any)
    out->family = RL_FAMILY_X, pick = &a.x;
  else
    return false;
  out->limit = pick->limit;
  out->remaining = pick->remaining;
  out->reset_s = pick->reset;
  if (out->family == RL_FAMILY_X)
    return true;

  /* The window: the named policy's (set above), else the policy whose
   * quota is the limit, else the tightest policy gives both. */
  if (out->family != RL_FAMILY_IETF || window == RL_ABSENT) {
    if (out->limit != RL_ABSENT) {
      window = find_policy(h, n, BY_QUOTA, no_span, out->limit)
                   .best_window;
    } else {
      match_t m = find_policy(h, n, SMALLEST, no_span, 0);
      out->limit = m.best_quota;
      window = m.best_window;
    }
  }
  out->window_s = window;
  return true;
}
