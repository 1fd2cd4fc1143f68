/*
 * dashboard.js — the live dashboard's logic: polls the admin JSON endpoints
 * every second, keeps the last few minutes of samples in memory, and draws
 * the figures, SVG charts and tables. Plain ES2017, no library, no network
 * beyond the admin listener (the page's Content-Security-Policy allows
 * nothing else).
 *
 * Invariants:
 *   - The server sends totals only; every rate is the difference of two
 *     successive snapshots over the server's own clock (stats.uptime_ms),
 *     so a slow poll never inflates a rate. A total that goes down means
 *     the counters were reset: the history starts a new epoch and no rate
 *     or window spans the reset.
 *   - Text from the server (upstream names, codes, fleet fields) only ever
 *     reaches the page through textContent or SVG attributes, never as
 *     markup.
 *   - Every figure element carries its raw value in data-value (the
 *     integration test compares them with the stats endpoint).
 */
(function () {
  "use strict";

  var API = "/api/v1/shared/deduplication";
  var POLL_MS = 1000;
  var WINDOW_MS = 5 * 60 * 1000; /* longest chart window */
  var MIN_WINDOW_MS = 60 * 1000; /* charts never show less than this */
  var RATE_WINDOW_MS = 60 * 1000; /* "last minute" figures */
  var HOT_KEYS = 8;
  var SVGNS = "http://www.w3.org/2000/svg";

  /* X-Cache paths drawn in the requests chart, bottom band first. */
  var PATHS = [
    { name: "HIT", cls: "hit", keys: ["HIT"] },
    { name: "STALE", cls: "stale", keys: ["STALE"] },
    { name: "COALESCED", cls: "coalesced", keys: ["COALESCED"] },
    { name: "MISS", cls: "miss", keys: ["MISS"] },
    { name: "STALE-IF-ERROR", cls: "sie", keys: ["STALE-IF-ERROR"] },
    { name: "PASS", cls: "pass", keys: ["BYPASS", "PASS"] },
    { name: "errors", cls: "error", keys: ["ERROR"] },
  ];

  var samples = []; /* {t, up, epoch, s, rates, hitWin, lat, breakers} */
  var epoch = 0;
  var lastFlights = null;
  var lastHealth = null;
  var lastOk = 0;
  var upstreamViews = {}; /* name -> {root, fields...} */
  var breakerLog = {}; /* name -> [{t, state}] state changes seen */

  /* ------------------------------------------------------------ helpers */

  function $(id) {
    return document.getElementById(id);
  }

  function num(x) {
    return typeof x === "number" && isFinite(x) ? x : 0;
  }

  function fmtInt(n) {
    n = Math.round(num(n));
    if (Math.abs(n) >= 1e10) return fmtCompact(n);
    return n.toLocaleString("en-US");
  }

  function fmtCompact(n) {
    n = num(n);
    var a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 1 : 2) + "B";
    if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 1 : 2) + "M";
    if (a >= 1e4) return (n / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    return String(Math.round(n));
  }

  function fmtRate(r) {
    if (r == null || !isFinite(r)) return "—";
    if (r === 0) return "0";
    if (r >= 1e5) return fmtCompact(r);
    if (r >= 100) return fmtInt(r);
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }

  function fmtPercent(p) {
    p = num(p);
    if (p === 100 || p === 0) return p + "%";
    return (p >= 99.95 ? p.toFixed(2) : p.toFixed(1)) + "%";
  }

  function fmtMs(ms) {
    ms = num(ms);
    if (ms === 0) return "0";
    if (ms < 1) return Math.round(ms * 1000) + " µs";
    if (ms < 10) return ms.toFixed(2) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }

  function fmtBytes(b) {
    b = num(b);
    var u = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (b >= 1024 && i < u.length - 1) {
      b /= 1024;
      i++;
    }
    return (i === 0 ? String(b) : b.toFixed(b >= 100 ? 0 : 1)) + " " + u[i];
  }

  function fmtDuration(sec) {
    sec = Math.max(0, Math.floor(num(sec)));
    var d = Math.floor(sec / 86400),
      h = Math.floor((sec % 86400) / 3600),
      m = Math.floor((sec % 3600) / 60),
      s = sec % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + s + "s";
    return s + "s";
  }

  /* Sets an element's text and its raw value (data-value). */
  function setFigure(id, value, text) {
    var e = $(id);
    if (!e) return;
    e.setAttribute("data-value", String(value));
    e.textContent = text;
  }

  function setText(id, text) {
    var e = $(id);
    if (e) e.textContent = text;
  }

  function svg(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) if (attrs[k] != null) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function html(tag, cls, text, parent) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  /* A round step (1, 2, 2.5 or 5 times a power of ten) at or above x. */
  function niceStep(x) {
    if (!(x > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(x)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= x) return steps[i] * p;
    return 10 * p;
  }

  /* An axis label: 0, 250, 1.5k, 20k, 1.2M. */
  function fmtTick(v) {
    if (v >= 1e6) return +(v / 1e6).toFixed(1) + "M";
    if (v >= 1e3) return +(v / 1e3).toFixed(1) + "k";
    return String(+v.toFixed(2));
  }

  function sumKeys(obj, keys) {
    var n = 0;
    if (!obj) return 0;
    for (var i = 0; i < keys.length; i++) n += num(obj[keys[i]]);
    return n;
  }

  function sumValues(obj) {
    var n = 0;
    for (var k in obj || {}) n += num(obj[k]);
    return n;
  }

  /* ------------------------------------------------------------- theme */

  var THEMES = ["auto", "dark", "light"];

  function applyTheme(t) {
    if (t === "dark" || t === "light") document.documentElement.setAttribute("data-theme", t);
    else document.documentElement.removeAttribute("data-theme");
    setText("theme", (t === "dark" ? "● " : t === "light" ? "○ " : "◐ ") + t);
  }

  function initTheme() {
    var t = "auto";
    try {
      t = localStorage.getItem("coalesced.theme") || "auto";
    } catch (e) {
      /* storage may be disabled: the theme just does not persist */
    }
    var m = /[?&]theme=(dark|light|auto)\b/.exec(location.search);
    if (m) t = m[1];
    applyTheme(t);
    $("theme").addEventListener("click", function () {
      var cur = document.documentElement.getAttribute("data-theme") || "auto";
      var next = THEMES[(THEMES.indexOf(cur) + 1) % THEMES.length];
      try {
        localStorage.setItem("coalesced.theme", next);
      } catch (e) {
        /* ignored, as above */
      }
      applyTheme(next);
      drawCharts();
    });
  }

  /* ------------------------------------------------------------ sampling */

  /* The sample of the current epoch closest to `ms` before the newest. */
  function baseline(ms) {
    var last = samples[samples.length - 1];
    var base = null;
    for (var i = samples.length - 1; i >= 0; i--) {
      var s = samples[i];
      if (s.epoch !== last.epoch) break;
      base = s;
      if (last.up - s.up >= ms) break;
    }
    return base;
  }

  function isReset(prev, s) {
    return (
      num(s.total_requests) < num(prev.total_requests) ||
      num(s.api_calls_made) < num(prev.api_calls_made) ||
      num(s.api_calls_saved) < num(prev.api_calls_saved) ||
      sumValues(s.answers) < sumValues(prev.answers)
    );
  }

  /* q-quantile (0..1) of a histogram {bounds_ms, counts} in ms, linear
   * inside the bucket (Prometheus' histogram_quantile); the +Inf bucket
   * reports the largest finite bound. null when empty. */
  function quantile(bounds, counts, q) {
    var total = 0;
    for (var i = 0; i < counts.length; i++) total += counts[i];
    if (total <= 0) return null;
    var rank = q * total,
      below = 0;
    for (var j = 0; j < bounds.length; j++) {
      var c = counts[j];
      if (c > 0 && below + c >= rank) {
        var lo = j === 0 ? 0 : bounds[j - 1];
        return lo + (bounds[j] - lo) * ((rank - below) / c);
      }
      below += c;
    }
    return bounds[bounds.length - 1];
  }

  /* Latency over the last minute per upstream from histogram deltas;
   * falls back to the totals when no call completed in the window. */
  function windowLatency(cur, base) {
    var out = {};
    var ups = cur.s.upstreams || {};
    for (var name in ups) {
      var lat = ups[name].latency_ms || {};
      var h = lat.histogram;
      var r = null;
      if (h && base && base !== cur) {
        var bh = (((base.s.upstreams || {})[name] || {}).latency_ms || {}).histogram;
        if (bh && bh.counts.length === h.counts.length) {
          var d = h.counts.map(function (c, i) {
            return Math.max(0, c - bh.counts[i]);
          });
          var n = d.reduce(function (a, b) {
            return a + b;
          }, 0);
          if (n > 0)
            r = {
              p50: quantile(h.bounds_ms, d, 0.5),
              p90: quantile(h.bounds_ms, d, 0.9),
              p99: quantile(h.bounds_ms, d, 0.99),
              n: n,
              window: true,
            };
        }
      }
      if (!r) r = { p50: num(lat.p50), p90: num(lat.p90), p99: num(lat.p99), n: num(lat.samples), window: false };
      out[name] = r;
    }
    return out;
  }

  function ingest(stats, now) {
    var prev = samples.length ? samples[samples.length - 1] : null;
    var up = typeof stats.uptime_ms === "number" ? stats.uptime_ms : null;
    var sample = { t: now, up: up != null ? up : now, epoch: epoch, s: stats, rates: null, breakers: {} };
    if (prev && (isReset(prev.s, stats) || sample.up < prev.up)) {
      epoch++;
      sample.epoch = epoch;
    } else if (prev && sample.up > prev.up) {
      var dt = (sample.up - prev.up) / 1000;
      var a = stats.answers || {},
        pa = prev.s.answers || {};
      var rates = {
        req: (num(stats.total_requests) - num(prev.s.total_requests)) / dt,
        saved: (num(stats.api_calls_saved) - num(prev.s.api_calls_saved)) / dt,
        made: (num(stats.api_calls_made) - num(prev.s.api_calls_made)) / dt,
        errors: (sumValues(stats.errors_by_code) - sumValues(prev.s.errors_by_code)) / dt,
        paths: {},
      };
      PATHS.forEach(function (p) {
        rates.paths[p.name] = Math.max(0, (sumKeys(a, p.keys) - sumKeys(pa, p.keys)) / dt);
      });
      sample.rates = rates;
    }
    var ups = stats.upstreams || {};
    for (var name in ups) {
      var b = ups[name].breaker || {};
      var flips = 0;
      if (prev && prev.epoch === sample.epoch && prev.s.upstreams && prev.s.upstreams[name]) {
        var pb = prev.s.upstreams[name].breaker || {};
        flips =
          num(b.opened) - num(pb.opened) + (num(b.half_opened) - num(pb.half_opened)) + (num(b.closed) - num(pb.closed));
      }
      sample.breakers[name] = { state: b.state || "closed", flips: flips };
      var log = breakerLog[name] || (breakerLog[name] = []);
      if (!log.length || log[log.length - 1].state !== b.state || flips > 1)
        log.push({ t: now, state: b.state, up: sample.up });
      if (log.length > 50) log.shift();
    }
    samples.push(sample);
    var base = baseline(RATE_WINDOW_MS);
    sample.hitWin = null;
    if (base && base !== sample) {
      var dTotal = num(stats.total_requests) - num(base.s.total_requests);
      var dSaved = num(stats.api_calls_saved) - num(base.s.api_calls_saved);
      sample.hitWin = dTotal > 0 ? (100 * dSaved) / dTotal : null;
      sample.savedWin = dSaved;
      sample.errWin = {};
      for (var code in stats.errors_by_code || {})
        sample.errWin[code] = num(stats.errors_by_code[code]) - num((base.s.errors_by_code || {})[code]);
    }
    sample.lat = windowLatency(sample, base);
    while (samples.length > 2 && now - samples[0].t > WINDOW_MS + 5000) samples.shift();
    if (samples.length > 2000) samples.shift();
  }

  /* ------------------------------------------------------------- charts */

  function box(el) {
    var r = el.getBoundingClientRect();
    return { w: Math.max(40, r.width), h: Math.max(16, r.height) };
  }

  /* The time span the charts show: all the history up to WINDOW_MS, never
   * less than MIN_WINDOW_MS (so a fresh page does not stretch 3 points). */
  function domain() {
    if (!samples.length) return { end: Date.now(), span: MIN_WINDOW_MS };
    var end = samples[samples.length - 1].t;
    var span = Math.min(WINDOW_MS, Math.max(MIN_WINDOW_MS, end - samples[0].t));
    return { end: end, span: span };
  }

  function pathFrom(pts) {
    var d = "";
    for (var i = 0; i < pts.length; i++) d += (i ? "L" : "M") + pts[i][0].toFixed(1) + "," + pts[i][1].toFixed(1);
    return d;
  }

  /* Draws series (each {cls, values[]} aligned with xs) as areas with a
   * line on top; stacked when opts.stacked. Axes when opts.axes. */
  function drawSeries(el, xs, series, opts) {
    clear(el);
    var b = box(el);
    el.setAttribute("viewBox", "0 0 " + b.w + " " + b.h);
    var left = opts.axes ? 42 : 1,
      right = opts.axes ? 8 : 1,
      top = opts.axes ? 8 : 2,
      bottom = opts.axes ? 20 : 1;
    var pw = b.w - left - right,
      ph = b.h - top - bottom;
    var d = opts.fit && xs.length > 1 ? { end: xs[xs.length - 1], span: xs[xs.length - 1] - xs[0] } : domain();
    var n = xs.length;
    var stackTop = [];
    var max = opts.max || 0;
    var step = 0;
    if (!opts.max) {
      for (var i = 0; i < n; i++) {
        var acc = 0,
          m = 0;
        series.forEach(function (s) {
          var v = s.values[i];
          if (v == null) return;
          acc += v;
          m = Math.max(m, v);
        });
        max = Math.max(max, opts.stacked ? acc : m);
      }
      step = niceStep(Math.max(max, 1e-9) / 3);
      max = step * Math.max(1, Math.ceil((max * 1.04) / step));
    }
    /* log: 0 at the bottom, then decades, so 5 calls and 5,000 hits both
     * show on one axis */
    var lmax = opts.log ? Math.max(1, Math.ceil(Math.log10(Math.max(max, 9) + 1))) : 0;
    var X = function (t) {
      return left + pw * (1 - (d.end - t) / d.span);
    };
    var Y = function (v) {
      if (opts.log) return top + ph * (1 - Math.min(Math.log10(1 + Math.max(0, v)) / lmax, 1));
      return top + ph * (1 - Math.min(v, max) / max);
    };
    if (opts.axes) {
      var ticks = [];
      if (opts.log) for (var e = 0; e <= lmax; e++) ticks.push(e === 0 ? 0 : Math.pow(10, e));
      else for (var gv = 0; gv <= max + step / 2; gv += step) ticks.push(gv);
      ticks.forEach(function (tv) {
        var gy = opts.log && tv > 0 ? top + ph * (1 - Math.log10(tv) / lmax) : Y(tv);
        svg("line", { class: "gridline", x1: left, x2: left + pw, y1: gy, y2: gy }, el);
        var label = svg("text", { x: left - 6, y: gy + 3.5, "text-anchor": "end" }, el);
        label.textContent = fmtTick(tv);
      });
      var tstep = d.span > 150000 ? 60000 : d.span > 60000 ? 30000 : 15000;
      for (var ts = 0; ts <= d.span; ts += tstep) {
        var tx = X(d.end - ts);
        var t = svg("text", { x: tx, y: b.h - 5, "text-anchor": ts === 0 ? "end" : "middle" }, el);
        t.textContent = ts === 0 ? "now" : "−" + (ts >= 60000 ? ts / 60000 + "m" : ts / 1000 + "s");
      }
    }
    for (var k = 0; k < n; k++) stackTop[k] = 0;
    series.forEach(function (s) {
      var upper = [],
        lower = [];
      for (var j = 0; j < n; j++) {
        var v = s.values[j];
        if (v == null) continue;
        var base = opts.stacked ? stackTop[j] : 0;
        var x = X(xs[j]);
        lower.push([x, Y(base)]);
        upper.push([x, Y(base + v)]);
        if (opts.stacked) stackTop[j] = base + v;
      }
      if (upper.length < 2) return;
      var area = pathFrom(upper) + "L" + pathFrom(lower.slice().reverse()).slice(1) + "Z";
      if (!opts.lineOnly) svg("path", { d: area, class: "area c-" + s.cls }, el);
      if (!opts.stacked) svg("path", { d: pathFrom(upper), class: "line c-" + s.cls }, el);
    });
    if (!n || series.every(function (s) { return s.values.filter(function (v) { return v != null; }).length < 2; })) {
      if (opts.axes) {
        var msg = svg("text", { x: left + pw / 2, y: top + ph / 2, "text-anchor": "middle", class: "placeholder" }, el);
        msg.textContent = "collecting samples…";
      }
    }
  }

  function rated() {
    return samples.filter(function (s) {
      return s.rates;
    });
  }

  function drawCharts() {
    var rs = rated();
    var xs = rs.map(function (s) {
      return s.t;
    });
    var d = domain();
    setText("window-label", d.span >= WINDOW_MS ? "last 5 minutes" : "last " + Math.round(d.span / 60000) + " minute" + (d.span >= 120000 ? "s" : ""));

    drawSeries(
      $("chart-paths"),
      xs,
      PATHS.map(function (p) {
        return {
          cls: p.cls,
          values: rs.map(function (s) {
            return s.rates.paths[p.name];
          }),
        };
      }),
      { axes: true, stacked: true }
    );
    $("chart-paths").setAttribute("class", "chart stacked");
    drawSeries(
      $("chart-savings"),
      xs,
      [
        { cls: "saved", values: rs.map(function (s) { return Math.max(0, s.rates.saved); }) },
        { cls: "made", values: rs.map(function (s) { return Math.max(0, s.rates.made); }) },
      ],
      { axes: true, log: true }
    );
    var spark = function (id, cls, f) {
      drawSeries($(id), xs, [{ cls: cls, values: rs.map(f) }], { fit: true });
    };
    spark("spark-saved", "saved", function (s) { return Math.max(0, s.rates.saved); });
    spark("spark-made", "made", function (s) { return Math.max(0, s.rates.made); });
    spark("spark-req", "stale", function (s) { return Math.max(0, s.rates.req); });
    var all = samples.map(function (s) {
      return s.t;
    });
    drawSeries($("spark-pending"), all, [{ cls: "coalesced", values: samples.map(function (s) { return num(s.s.pending_requests); }) }], { fit: true });
    drawSeries($("spark-hitrate"), all, [{ cls: "hit", values: samples.map(function (s) { return s.hitWin; }) }], { max: 100, fit: true });
    drawUpstreamCharts();
  }

  /* ------------------------------------------------------------- panels */

  function renderKpis(s, last) {
    setFigure("api-calls-saved", num(s.api_calls_saved), fmtInt(s.api_calls_saved));
    setFigure("api-calls-made", num(s.api_calls_made), fmtInt(s.api_calls_made));
    setFigure("total-requests", num(s.total_requests), fmtInt(s.total_requests));
    setFigure("pending-requests", num(s.pending_requests), fmtInt(s.pending_requests));
    setFigure("coalesced", num(s.coalesced_requests), fmtInt(s.coalesced_requests));
    setFigure("refreshes", num(s.background_refreshes), fmtInt(s.background_refreshes));
    setFigure("hit-rate", num(s.hit_rate_percent), fmtPercent(s.hit_rate_percent));
    var r = last.rates;
    setText("saved-rate", r ? fmtRate(r.saved) : "—");
    setText("made-rate", r ? fmtRate(r.made) : "—");
    setText("req-rate", r ? fmtRate(r.req) : "—");
    setText("duo-saved", r ? fmtRate(r.saved) : "—");
    setText("duo-made", r ? fmtRate(r.made) : "—");
    setText("saved-share", last.savedWin != null ? "+" + fmtInt(last.savedWin) + " last minute" : "since start");
    setText("hit-rate-window", last.hitWin != null ? fmtPercent(last.hitWin) : "—");
    var C = 2 * Math.PI * 40;
    var fg = $("ring-hitrate-fg");
    fg.setAttribute("stroke-dasharray", C.toFixed(2));
    fg.setAttribute("stroke-dashoffset", (C * (1 - Math.min(100, num(s.hit_rate_percent)) / 100)).toFixed(2));
    var ratio = $("ratio");
    clear(ratio);
    if (num(s.api_calls_made) > 0 && num(s.total_requests) > 0) {
      ratio.appendChild(document.createTextNode("1 upstream call for every "));
      html("b", null, (num(s.total_requests) / num(s.api_calls_made)).toFixed(1), ratio);
      ratio.appendChild(document.createTextNode(" requests"));
    } else {
      ratio.textContent = num(s.total_requests) > 0 ? "every request answered without an upstream call" : "no requests yet";
    }
    var legend = $("legend-paths");
    if (!legend.childNodes.length)
      PATHS.forEach(function (p) {
        var li = html("li", null, null, legend);
        html("span", "swatch " + p.cls, null, li);
        html("span", null, p.name, li);
        var b = html("b", null, "—", li);
        b.id = "rate-" + p.cls;
      });
    PATHS.forEach(function (p) {
      setText("rate-" + p.cls, r ? fmtRate(r.paths[p.name]) + "/s" : "—");
    });
  }

  function renderHeader(s, health) {
    setFigure("version", s.version || "", s.version ? "v" + s.version : "");
    setText("uptime", fmtDuration(s.uptime_seconds));
    setFigure("workers", num(s.workers), fmtInt(s.workers));
    setFigure("connections", num(s.connections_open), fmtInt(s.connections_open));
    var st = $("status");
    var status = health && health.status ? health.status : "unknown";
    if (health && health.draining) status = "degraded";
    st.setAttribute("data-status", status);
    st.textContent = health && health.draining ? "draining" : status;
  }

  function upstreamView(name) {
    var v = upstreamViews[name];
    if (v) return v;
    var root = html("div", "upstream");
    root.setAttribute("data-upstream", name);
    var head = html("div", "ustate", null, root);
    html("div", "uname", name, head);
    v = { root: root };
    v.pill = html("span", "pill small", "—", html("div", null, null, head));
    v.trans = html("div", "transitions", "", head);
    var mid = html("div", "umid", null, root);
    var lat = html("div", "lat", null, mid);
    v.lat = {};
    ["p50", "p90", "p99"].forEach(function (q) {
      var d = html("div", null, null, lat);
      v.lat[q] = html("b", null, "—", d);
      html("span", "swatch " + q, null, d);
      d.appendChild(document.createTextNode(" " + q));
    });
    v.spark = svg("svg", { class: "lat-spark", "aria-hidden": "true" }, mid);
    v.latNote = html("div", "muted lat-note", "", mid);
    v.resp = html("div", "resp", null, root);
    var tl = html("div", "tl-wrap", null, root);
    html("span", null, "breaker", tl);
    v.timeline = svg("svg", { class: "timeline", "aria-hidden": "true" }, tl);
    v.since = html("span", null, "", tl);
    upstreamViews[name] = v;
    return v;
  }

  function respLine(parent, label, value, bad) {
    var span = html("span", value > 0 && bad ? "bad" : null, null, parent);
    span.appendChild(document.createTextNode(label + " "));
    html("b", null, fmtInt(value), span);
    parent.appendChild(document.createTextNode("  "));
  }

  function renderUpstreams(s, last) {
    var box = $("upstreams");
    var ups = s.upstreams || {};
    var names = Object.keys(ups).sort();
    if (!names.length) {
      clear(box);
      html("p", "empty", "no upstream configured", box);
      upstreamViews = {};
      return;
    }
    var want = names.map(upstreamView);
    var kids = Array.prototype.slice.call(box.childNodes);
    if (kids.length !== want.length || kids.some(function (k, i) { return k !== want[i].root; })) {
      clear(box);
      want.forEach(function (v) {
        box.appendChild(v.root);
      });
    }
    names.forEach(function (name) {
      var u = ups[name],
        v = upstreamViews[name],
        b = u.breaker || {};
      var state = b.state || "closed";
      v.root.setAttribute("data-state", state);
      v.pill.setAttribute("data-state", state);
      v.pill.id = "breaker-" + name;
      var label = state.replace(/_/g, "-");
      v.pill.textContent = label + (state === "open" && b.retry_in_ms ? " · retry " + fmtMs(b.retry_in_ms) : "");
      v.trans.textContent =
        "opened " + fmtInt(b.opened) + "× · half-open " + fmtInt(b.half_opened) + "× · closed " + fmtInt(b.closed) + "×";
      var lat = last.lat[name] || {};
      ["p50", "p90", "p99"].forEach(function (q) {
        v.lat[q].textContent = lat.n ? fmtMs(lat[q]) : "—";
        v.lat[q].setAttribute("data-value", String(lat[q] || 0));
      });
      var calls = fmtInt(lat.n) + (lat.n === 1 ? " call" : " calls");
      v.latNote.textContent = lat.n ? (lat.window ? calls + " in the last minute" : "since start (" + calls + ")") : "no calls yet";
      clear(v.resp);
      var r = u.responses || {};
      respLine(v.resp, "calls", num(u.calls));
      respLine(v.resp, "2xx", num(r["2xx"]));
      respLine(v.resp, "4xx", num(r["4xx"]));
      respLine(v.resp, "5xx", num(r["5xx"]), true);
      html("br", null, null, v.resp);
      respLine(v.resp, "429", num(u.status_429), true);
      respLine(v.resp, "timeouts", num(u.timeouts), true);
      respLine(v.resp, "transport", num(u.transport_errors), true);
      var log = breakerLog[name] || [];
      var lastChange = log.length > 1 ? log[log.length - 1] : null;
      v.since.textContent = lastChange ? label + " for " + fmtDuration((last.up - lastChange.up) / 1000) : "";
    });
    for (var n in upstreamViews) if (!ups[n]) delete upstreamViews[n];
  }

  function drawUpstreamCharts() {
    var d = domain();
    for (var name in upstreamViews) {
      var v = upstreamViews[name];
      /* breaker timeline: one band per stretch of equal state */
      var el = v.timeline;
      clear(el);
      var b = box(el);
      el.setAttribute("viewBox", "0 0 " + b.w + " " + b.h);
      var X = function (t) {
        return Math.max(0, b.w * (1 - (d.end - t) / d.span));
      };
      svg("rect", { x: 0, y: 0, width: b.w, height: b.h, class: "st-none" }, el);
      var run = null; /* {state, x0, x1}: one band per stretch */
      var flips = [];
      var flush = function () {
        if (run) svg("rect", { x: run.x0, y: 0, width: Math.max(1, run.x1 - run.x0), height: b.h, class: "st-" + run.state }, el);
      };
      for (var i = 0; i < samples.length; i++) {
        var st = samples[i].breakers[name];
        if (!st) continue;
        var x0 = X(i ? samples[i - 1].t : samples[i].t - POLL_MS),
          x1 = X(samples[i].t);
        if (run && run.state === st.state) run.x1 = x1;
        else {
          flush();
          run = { state: st.state, x0: x0, x1: x1 };
        }
        /* transitions that came and went between two polls */
        var prevSt = i ? samples[i - 1].breakers[name] : null;
        if (st.flips > 1 || (st.flips > 0 && prevSt && prevSt.state === st.state)) flips.push(x1);
      }
      flush();
      flips.forEach(function (x) {
        svg("rect", { x: x - 1, y: 0, width: 2, height: b.h, class: "st-flip" }, el);
      });
      /* latency: p50 / p90 / p99 over the last minute, as it moved */
      var pts = samples.filter(function (s) {
        return s.lat && s.lat[name] && s.lat[name].window;
      });
      var xs = pts.map(function (s) {
        return s.t;
      });
      drawSeries(
        v.spark,
        xs,
        ["p99", "p90", "p50"].map(function (q) {
          return { cls: q, values: pts.map(function (s) { return s.lat[name][q]; }) };
        }),
        { lineOnly: true, fit: true }
      );
    }
  }

  function renderHotKeys(flights) {
    var body = $("hot-keys");
    clear(body);
    var list = flights && flights.flights ? flights.flights : [];
    $("hot-empty").hidden = list.length > 0;
    setText("hottest-waiters", list.length ? fmtInt(list[0].waiters) : "0");
    var max = list.reduce(function (m, f) {
      return Math.max(m, num(f.waiters));
    }, 1);
    list.forEach(function (f, i) {
      var tr = html("tr", null, null, body);
      tr.setAttribute("data-key", f.key);
      tr.setAttribute("data-waiters", String(num(f.waiters)));
      tr.setAttribute("data-age-ms", String(num(f.age_ms)));
      html("td", "rank", String(i + 1), tr);
      var k = html("td", "mono", f.key, tr);
      k.title = "keyed hash of the cache key (the key itself may hold identity headers and is never shown)";
      var bar = html("div", "bar", null, html("td", null, null, tr));
      var w = html("i", null, null, bar);
      w.style.width = Math.max(2, (100 * num(f.waiters)) / max) * 0.8 + "%";
      html("b", null, fmtInt(f.waiters), bar);
      html("td", "num", fmtMs(f.age_ms), tr);
    });
  }

  function renderCache(s) {
    var c = s.cache || {};
    setFigure("cache-entries", num(c.entries), fmtInt(c.entries));
    setFigure("cache-bytes", num(c.bytes), fmtBytes(c.bytes));
    setText("cache-max", fmtBytes(c.max_bytes));
    setFigure("cache-evictions", num(c.evictions), fmtInt(c.evictions));
    setFigure("sie-hits", num(s.stale_if_error_hits), fmtInt(s.stale_if_error_hits));
    var pct = num(c.max_bytes) > 0 ? (100 * num(c.bytes)) / num(c.max_bytes) : 0;
    $("cache-meter").style.width = Math.min(100, pct).toFixed(2) + "%";
  }

  function renderErrors(s, last) {
    var dl = $("errors");
    clear(dl);
    var codes = s.errors_by_code || {};
    var rows = Object.keys(codes).map(function (k) {
      return [k.replace(/_/g, " "), num(codes[k]), "err-" + k];
    });
    rows.forEach(function (r) {
      var dt = html("dt", null, r[0], dl);
      var dd = html("dd", r[1] > 0 ? "bad" : "zero", fmtInt(r[1]), dl);
      dd.id = r[2];
      dd.setAttribute("data-value", String(r[1]));
      var recent = last.errWin ? last.errWin[r[2].slice(4)] : 0;
      if (recent > 0) dt.title = "+" + fmtInt(recent) + " in the last minute";
    });
    setText("errors-rate", last.rates ? fmtRate(last.rates.errors) + " errors/s" : "—");
  }

  /* Flattens a JSON object one level deep into [label, value] rows. */
  function flatten(obj, prefix, out) {
    for (var k in obj) {
      var v = obj[k];
      var label = prefix ? prefix + " " + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, label, out);
      else out.push([label.replace(/_/g, " "), v]);
    }
    return out;
  }

  function renderFleet(s, health) {
    var box = $("fleet"),
      pill = $("fleet-state");
    clear(box);
    if (s.fleet && typeof s.fleet === "object") {
      var state = s.fleet.state || s.fleet.status || "on";
      pill.setAttribute("data-state", String(state));
      pill.textContent = String(state);
      var dl = html("dl", "kv", null, box);
      dl.id = "fleet-figures";
      flatten(s.fleet, "", []).forEach(function (r) {
        if (r[0] === "state" || r[0] === "status") return;
        html("dt", null, r[0], dl);
        var dd = html("dd", null, typeof r[1] === "number" ? fmtInt(r[1]) : String(r[1]), dl);
        dd.setAttribute("data-value", String(r[1]));
      });
      return;
    }
    var redis = health && health.redis ? health.redis : null;
    if (!redis || !redis.configured) {
      pill.setAttribute("data-state", "off");
      pill.textContent = "not configured";
      var p = html("p", "fleet-off", null, box);
      p.id = "fleet-off";
      p.appendChild(document.createTextNode("Redis is "));
      html("b", null, "not configured", p);
      p.appendChild(document.createTextNode(": this instance coalesces on its own."));
      html("p", "muted", "Start with --redis URL to share the cache and the flight locks across a fleet.", box);
      return;
    }
    pill.setAttribute("data-state", String(redis.state || "unknown"));
    pill.textContent = String(redis.state || "unknown");
    var q = html("p", "fleet-off", null, box);
    q.appendChild(document.createTextNode("Redis is configured; connection state "));
    html("b", null, String(redis.state || "unknown"), q);
    q.appendChild(document.createTextNode("."));
    html("p", "muted", "Fleet figures appear here once the stats report them.", box);
  }

  /* --------------------------------------------------------------- poll */

  function getJSON(path) {
    return fetch(path, { cache: "no-store", headers: { Accept: "application/json" } }).then(function (r) {
      /* health answers 503 when unhealthy, still with its JSON */
      if (!r.ok && r.status !== 503) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  }

  function setLive(state, text) {
    var l = $("live");
    l.setAttribute("data-state", state);
    setText("live-text", text);
  }

  function render() {
    var last = samples[samples.length - 1];
    var s = last.s;
    renderHeader(s, lastHealth);
    renderKpis(s, last);
    renderUpstreams(s, last);
    renderHotKeys(lastFlights);
    renderCache(s);
    renderErrors(s, last);
    renderFleet(s, lastHealth);
    drawCharts();
    document.body.setAttribute("data-samples", String(samples.length));
  }

  function poll() {
    var started = Date.now();
    Promise.all([
      getJSON(API + "/stats"),
      getJSON(API + "/flights?limit=" + HOT_KEYS).catch(function () {
        return null;
      }),
      getJSON(API + "/health").catch(function () {
        return null;
      }),
    ])
      .then(function (r) {
        lastFlights = r[1];
        lastHealth = r[2];
        ingest(r[0], Date.now());
        render();
        lastOk = Date.now();
        setLive("live", "live");
        setText("error", "");
      })
      .catch(function (e) {
        setLive("offline", "offline");
        setText("error", String(e && e.message ? e.message : e));
      })
      .then(function () {
        setTimeout(poll, Math.max(100, POLL_MS - (Date.now() - started)));
      });
  }

  /* A page left open on a frozen server says so instead of looking live. */
  function watchdog() {
    if (lastOk && Date.now() - lastOk > 3 * POLL_MS && $("live").getAttribute("data-state") === "live")
      setLive("stale", "no update for " + Math.round((Date.now() - lastOk) / 1000) + " s");
  }

  var resizeTimer = null;
  function onResize() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (samples.length) drawCharts();
    }, 100);
  }

  function start() {
    initTheme();
    window.addEventListener("resize", onResize);
    setInterval(watchdog, POLL_MS);
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
