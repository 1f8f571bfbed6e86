// The stats dashboard: polls GET /stats?range= (SPEC §4 shape, ranges in
// docs/stats.md) every few seconds for the range the reader chose (24 h,
// 7 d, 30 d or all time, kept in the address as ?range=), and updates the
// cards, charts, endpoint, model and key tables and recent errors in
// place, so the scroll position, a text selection or a focused Copy
// button survive a refresh. The range's figures say their range and scope
// (all instances with Redis, this instance otherwise); this instance's
// last 60 s (the performance figures) stand apart.
// An endpoint with more than one target (SPEC §9) gets a row under it with
// each target's figures and cooldown. The Keys section (SPEC §10) shows
// each proxy key's usage by id and name, and is hidden while /stats has
// no keys. Endpoints without traffic fold into one row that opens on click.
// With STATS_TOKEN set on the server, /stats answers 401 until the page
// sends a token: the page then asks for it as /admin asks for the admin
// token, and keeps it in this tab's sessionStorage only.
'use strict';

(function () {
  const ui = window.ui;
  const { t, el, setText, fmt, num } = ui;
  const REFRESH_S = 5;
  const TIMEOUT_MS = 4000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const TOKEN_KEY = 'apiproxy.statsToken';

  const state = {
    data: null,       // the last /stats answer that parsed
    okAt: 0,          // when it arrived (ms)
    downSince: 0,     // first failure of the current outage (ms), 0 when fine
    httpStatus: 0,    // status of the last non-OK answer, 0 for a network error
    timer: 0,
    renders: 0,
    seq: 0,           // the latest /stats request; older answers are dropped
  };
  // The bearer token sent with /stats: '' sends none (a public server).
  // locked while the page asks for one; checking while a typed one is
  // being tried.
  const auth = { token: ui.session.get(TOKEN_KEY) || '', locked: false, checking: false };
  let idleOpen = false; // the idle endpoints row, opened by the reader
  const rows = new Map(); // prefix -> {tr, sub, c, multi}
  const keyRows = new Map(); // key id -> {tr, c}
  const modelRows = new Map(); // model -> {tr, c}
  let chartKeys = {};
  const charts = {}; // chart id -> {sel, points, xOf…}: what a tooltip reads
  const boxSizes = new Map(); // chart box -> {w, h}, from the ResizeObserver
  let errorsKey = '';
  let snippetKey = '';

  const $ = (id) => document.getElementById(id);

  // The range every figure but the performance ones covers (GET
  // /stats?range=), kept in the page address (?range=7d) so a shared
  // address opens the same range. 24h when the address names none.
  const RANGES = ['24h', '7d', '30d', 'all'];
  function rangeOf(search) {
    const r = new URLSearchParams(search).get('range');
    return RANGES.includes(r) ? r : '24h';
  }
  let range = rangeOf(window.location.search);

  function setRange(r) {
    if (r === range) return;
    range = r;
    const u = new URL(window.location.href);
    u.searchParams.set('range', r);
    history.pushState(null, '', u.pathname + u.search + u.hash);
    state.data = null;
    $('main').setAttribute('aria-busy', 'true'); // until the range's answer
    markRange();
    refresh();
  }

  function markRange() {
    for (const b of document.querySelectorAll('#range [data-range]')) b.setAttribute('aria-pressed', String(b.dataset.range === range));
  }

  async function refresh() {
    window.clearTimeout(state.timer);
    const ctrl = new AbortController();
    const abort = window.setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    let fresh = false;
    let refused = null;
    const seq = ++state.seq;
    try {
      const headers = { Accept: 'application/json' };
      if (auth.token) headers.Authorization = 'Bearer ' + auth.token;
      const asked = range;
      const res = await fetch('/stats?range=' + asked, { cache: 'no-store', signal: ctrl.signal, headers });
      if (res.status === 401 || res.status === 429) {
        refused = res;
        return;
      }
      if (!res.ok) {
        state.httpStatus = res.status;
        throw new Error('HTTP ' + res.status);
      }
      const data = await res.json();
      if (seq !== state.seq) return; // the reader chose another range meanwhile
      if (!data || typeof data !== 'object') throw new Error('not an object');
      state.data = data;
      state.okAt = Date.now();
      state.downSince = 0;
      state.httpStatus = 0;
      fresh = true;
    } catch (e) {
      if (!state.downSince) state.downSince = Date.now();
      if (!(e instanceof Error && e.message.startsWith('HTTP '))) state.httpStatus = 0;
    } finally {
      window.clearTimeout(abort);
      if (seq !== state.seq) {
        // A newer request (another range) owns the polling.
      } else if (refused) {
        // No more polling until a token is entered.
        askToken(refused.status, refused.headers.get('Retry-After'));
      } else {
        // A typed token was answered, or, after the server was down
        // during its check, a later poll with it was.
        if (auth.checking || (auth.locked && fresh)) tokenChecked(fresh);
        renderStatus();
        if (!document.hidden) state.timer = window.setTimeout(refresh, REFRESH_S * 1000);
      }
    }
    // Outside the try: a bug in rendering is reported as one (the browser
    // tests fail on it), not shown as an unreachable server.
    if (fresh) render();
  }

  // Token form (STATS_TOKEN). askToken shows it after /stats refused the
  // token sent (401: none, a wrong one, or one no longer accepted; 429:
  // this address failed too often), with a message saying which.
  function askToken(status, retryAfter) {
    let msg = '';
    if (status === 429) {
      msg = t('stok.limited', { n: retryAfter || '60' });
    } else {
      if (auth.checking) msg = t('stok.wrong');
      else if (auth.token) msg = t('stok.expired');
      auth.token = '';
      ui.session.set(TOKEN_KEY, null);
    }
    const first = !auth.locked;
    auth.locked = true;
    auth.checking = false;
    state.data = null;
    $('main').classList.add('locked');
    $('stats-login').hidden = false;
    $('stats-forget').hidden = true;
    const btn = $('stats-login-btn');
    btn.disabled = false;
    setText(btn, t('stok.submit'));
    setText($('stats-login-error'), msg);
    $('stats-token').setAttribute('aria-invalid', String(msg !== ''));
    renderStatus();
    if (first || msg) $('stats-token').focus();
  }

  // submitToken tries the token typed in the form on /stats.
  function submitToken() {
    const candidate = $('stats-token').value.trim();
    if (!candidate) {
      setText($('stats-login-error'), t('stok.empty'));
      $('stats-token').setAttribute('aria-invalid', 'true');
      $('stats-token').focus();
      return;
    }
    auth.token = candidate;
    auth.checking = true;
    const btn = $('stats-login-btn');
    btn.disabled = true;
    setText(btn, t('stok.checking'));
    refresh();
  }

  // tokenChecked ends a check that /stats did not refuse: accepted (ok),
  // or not answered (the server is down: the form stays, and the polls go
  // on with the typed token).
  function tokenChecked(ok) {
    auth.checking = false;
    const btn = $('stats-login-btn');
    btn.disabled = false;
    setText(btn, t('stok.submit'));
    if (!ok) {
      setText($('stats-login-error'), t('stok.unreachable'));
      return;
    }
    ui.session.set(TOKEN_KEY, auth.token);
    auth.locked = false;
    $('stats-token').value = '';
    setText($('stats-login-error'), '');
    $('stats-token').setAttribute('aria-invalid', 'false');
    $('stats-login').hidden = true;
    $('main').classList.remove('locked');
    $('stats-forget').hidden = false;
    // The form that had focus is gone; start from the heading.
    $('h-dash').focus();
  }

  // forgetToken drops the token of this tab and asks for one again.
  function forgetToken() {
    ui.session.set(TOKEN_KEY, null);
    auth.token = '';
    window.clearTimeout(state.timer);
    askToken(401, null);
  }

  function render() {
    const d = state.data;
    if (!d) return;
    $('main').removeAttribute('aria-busy');
    const t0 = performance.now();
    renderCards(d);
    renderCharts();
    renderEndpoints(d.endpoints || {});
    renderModels(d.endpoints || {});
    renderKeys(d.keys && typeof d.keys === 'object' ? d.keys : {});
    renderErrors(d.recent_errors);
    renderSnippets(d.endpoints || {});
    // Read by the browser tests, which report the render time.
    document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
    document.body.dataset.renders = String(++state.renders);
  }

  function renderStatus() {
    const p = $('status');
    const text = $('status-text');
    text.removeAttribute('data-i18n');
    const down = state.downSince !== 0 && !auth.locked;
    p.classList.toggle('live', !down && state.okAt !== 0 && !auth.locked);
    p.classList.toggle('down', down);
    if (auth.locked) {
      setText(text, t('stok.locked'));
    } else if (!down && state.okAt) {
      let msg = t('dash.live', { time: fmt.time(state.okAt), n: REFRESH_S });
      if (state.data && state.data.stats_enabled === false) msg += ' · ' + t('dash.statsOff');
      setText(text, msg);
    } else if (down && state.httpStatus) {
      setText(text, t('dash.httpError', { status: state.httpStatus, n: REFRESH_S }));
    } else if (down && state.okAt) {
      setText(text, t('dash.down', { time: fmt.time(state.downSince), last: fmt.time(state.okAt), n: REFRESH_S }));
    } else if (down) {
      setText(text, t('dash.downNever', { n: REFRESH_S }));
    }
  }

  // Cards

  // rangeText names the range of an answer ("last 7 days"), scopeText
  // whose figures they are (scope.figures: fleet or this instance).
  const RANGE_NAMES = { '24h': 'range.of.24h', '7d': 'range.of.7d', '30d': 'range.of.30d', all: 'range.of.all' };
  function rangeText(d) { return t(RANGE_NAMES[RANGES.includes(d.range) ? d.range : range]); }
  function scopeText(d) {
    const f = d.scope && d.scope.figures;
    return f === 'fleet' ? t('scope.fleet') : f === 'instance' ? t('scope.instance') : '';
  }

  // busiest is the endpoint with the most requests in the range, or null.
  function busiest(endpoints) {
    let best = null;
    for (const [p, e] of Object.entries(endpoints)) {
      if (e && num(e.count) > 0 && (!best || num(e.count) > num(best[1].count))) best = [p, e];
    }
    return best;
  }

  // cardOf is the figure of card k (data-k in the page), looked up once: an
  // attribute selector walks the document, which a refresh finds large.
  const cards = new Map();
  function cardOf(k) {
    let n = cards.get(k);
    if (n === undefined) cards.set(k, n = document.querySelector('[data-k="' + k + '"]'));
    return n;
  }

  function renderCards(d) {
    const perf = d.performance || {};
    const tokens = d.tokens || {};
    const endpoints = d.endpoints || {};
    const card = (k, value, title) => {
      const n = cardOf(k);
      if (!n) return;
      setText(n, value);
      if (title !== undefined && n.title !== title) n.title = title;
    };
    const head = rangeText(d);
    const scope = scopeText(d);
    setText($('h-overview'), scope ? head + ' · ' + scope : head);
    for (const n of document.querySelectorAll('.range-note')) setText(n, head);
    const total = num(d.total);
    const errs = num(d.errors);
    card('total', fmt.compact(total), fmt.int(total));
    card('total_sub', num(d.client_closed) > 0 ? t('card.cc', { n: fmt.int(d.client_closed) }) : '');
    card('errors', total > 0 ? fmt.dec((100 * errs) / total, 2) + ' %' : '–');
    let sub = errs === 1 ? t('card.error1') : t('card.errors', { n: fmt.int(errs) });
    if (num(d.rate_limited) > 0) sub += ' · ' + t('ep.limited', { n: fmt.int(d.rate_limited) });
    card('errors_sub', sub);
    // All requests' latency, from the server's histograms added up (an
    // older server sends none).
    const lat = d.latency_ms;
    if (lat && (num(lat.avg) > 0 || num(lat.p95) > 0)) {
      card('latency', t('card.latencyAvg', { v: fmt.ms(lat.avg) }));
      card('latency_sub', t('card.latencySub', { p95: fmt.ms(lat.p95) }));
    } else {
      card('latency', '–');
      card('latency_sub', '');
    }
    card('tokens', fmt.compact(tokens.total), fmt.int(tokens.total));
    const cache = num(tokens.cache_read) + num(tokens.cache_write);
    card('tokens_sub', t('card.tokensSub', { p: fmt.compact(tokens.prompt), c: fmt.compact(tokens.completion) }) +
      (cache > 0 ? ' · ' + t('card.cacheSub', { n: fmt.compact(cache) }) : ''));
    // All requests' TTFB when /stats has it (from the histograms added up);
    // from an older server, which has percentiles per endpoint only (they
    // do not combine into the whole's), the busiest endpoint's, saying so.
    const top = busiest(endpoints);
    const ttfb = d.ttfb_ms;
    if (ttfb && (num(ttfb.p50) > 0 || num(ttfb.p95) > 0)) {
      card('ttfb', 'p50 ' + fmt.ms(ttfb.p50));
      card('ttfb_sub', t('card.latencySub', { p95: fmt.ms(ttfb.p95) }), '');
    } else if (top && top[1].ttfb_ms) {
      card('ttfb', 'p50 ' + fmt.ms(top[1].ttfb_ms.p50));
      card('ttfb_sub', t('card.ttfbSub', { p95: fmt.ms(top[1].ttfb_ms.p95), prefix: top[0] }), t('card.ttfbTitle', { prefix: top[0] }));
    } else {
      card('ttfb', '–');
      card('ttfb_sub', '', '');
    }
    // failovers exists from SPEC §9 on; an older server has no such card.
    const fo = document.getElementById('card-failovers');
    if (fo) {
      // None yet (or one target per mapping): no card, one less on a phone.
      fo.hidden = typeof d.failovers !== 'number' || d.failovers === 0;
      card('failovers', fmt.compact(d.failovers), fmt.int(d.failovers));
    }
    card('rps', fmt.dec(perf.requests_per_sec, 2), t('card.active', { n: fmt.int(perf.active_requests) }));
    card('avg', fmt.ms(perf.avg_response_time_ms));
    card('error_rate', fmt.dec(perf.error_rate, 2) + ' %');
    card('memory', fmt.dec(perf.memory_usage_mb, 1) + ' MB');
    card('goroutines', fmt.int(perf.goroutine_count));
    card('uptime', fmt.duration(perf.uptime_seconds));
  }

  // Charts: hand-drawn SVG of the range's series.points, one bar or one
  // point per hour (24h) or day. Each chart box is one tab stop: hovering
  // or tapping a bar, or the arrow keys while it has the focus, show that
  // point's values in a tooltip.

  function svg(tag, attrs, text) {
    const n = document.createElementNS(SVG_NS, tag);
    for (const k in attrs) n.setAttribute(k, String(attrs[k]));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // A chart has a few hundred rects: each is a clone of a prototype that
  // has its class and the attributes all of its kind share, and gets the
  // rest with setAttribute, with no object of attributes each.
  function rect(root, proto, i, x, y, h) {
    const n = proto.cloneNode(false);
    n.setAttribute('x', x);
    if (y !== undefined) {
      n.setAttribute('y', y);
      n.setAttribute('height', h);
    }
    n.setAttribute('data-i', i);
    root.appendChild(n);
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // The Intl options of the charts' dates, named for fmt.date's cache.
  const HOUR = { hour: '2-digit', minute: '2-digit' };
  const DAY_SHORT = { month: 'short', day: 'numeric' };
  const DAY_LONG = { weekday: 'short', month: 'short', day: 'numeric' };
  const DAY_AXIS = { month: 'numeric', day: 'numeric' };

  function bucketLabel(kind, unix, long) {
    const dt = new Date(num(unix) * 1000);
    if (kind === 'hourly') {
      const h = fmt.date(dt, HOUR, 'hour');
      return long ? fmt.date(dt, DAY_SHORT, 'dayShort') + ' ' + h : h;
    }
    return long ? fmt.date(dt, DAY_LONG, 'dayLong') : fmt.date(dt, DAY_AXIS, 'dayAxis');
  }

  // CHARTS: what each chart draws from a point. stack: bars of the fields
  // stacked in order; line: one line per field.
  const CHARTS = {
    requests: {
      box: 'chart-requests', title: 'chart.requests', kind: 'stack', val: (v) => fmt.int(v), axis: (v) => fmt.compact(v),
      series: [['ok', 'c-ok', 'chart.ok'], ['s4xx', 'c-4xx', '4xx'], ['s429', 'c-429', '429'], ['s5xx', 'c-5xx', '5xx'], ['client_closed', 'c-cc', 'chart.cc']],
      total: ['count', 'chart.total'],
      // A server from before these fields has count and errors only.
      fallback: (p) => ('ok' in p ? p : { ...p, ok: num(p.count) - num(p.errors), s5xx: num(p.errors) }),
    },
    tokens: {
      box: 'chart-tokens', title: 'chart.tokens', kind: 'stack', val: (v) => fmt.int(v), axis: (v) => fmt.compact(v),
      series: [['prompt', 'c-prompt', 'chart.prompt'], ['completion', 'c-completion', 'chart.completion'], ['cache', 'c-cache', 'chart.cache']],
    },
    ttfb: {
      // 0 is "no request had a first byte": no value, and a gap in the line.
      box: 'chart-ttfb', title: 'chart.ttfb', kind: 'line', val: (v) => (v > 0 ? fmt.ms(v) : '–'), axis: (v) => fmt.ms(v),
      series: [['ttfb_p50', 'c-p50', 'p50'], ['ttfb_p95', 'c-p95', 'p95']],
    },
  };

  function rangePoints(d) {
    const s = d.series || {};
    if (Array.isArray(s.points)) return s.points;
    if (range === '24h') return Array.isArray(s.hourly) ? s.hourly : [];
    const daily = Array.isArray(s.daily) ? s.daily : [];
    return range === '7d' ? daily.slice(-7) : daily;
  }

  function renderCharts() {
    const d = state.data;
    if (!d) return;
    const kind = (d.range || range) === '24h' ? 'hourly' : 'daily';
    const points = rangePoints(d).filter((p) => p && typeof p === 'object');
    // /stats keeps 30 days of points: "all time" draws those, and says so.
    const note = (d.range || range) === 'all' ? t('chart.last30') : '· ' + rangeText(d);
    for (const n of document.querySelectorAll('.chart-note')) setText(n, note);
    for (const [id, spec] of Object.entries(CHARTS)) drawChart(id, spec, kind, spec.fallback ? points.map(spec.fallback) : points);
  }

  function seriesLabel(k) { return k.startsWith('chart.') ? t(k) : k; }

  function drawChart(id, spec, kind, points) {
    const box = $(spec.box);
    // The size the ResizeObserver saw, so that a render does not force a
    // layout of the page half-way through; the box's own until it has.
    const size = boxSizes.get(box) || { w: box.clientWidth, h: box.clientHeight };
    const W = Math.max(240, Math.round(size.w || 600));
    const H = Math.max(120, Math.round(size.h || 180));
    const key = W + '|' + H + '|' + ui.lang + '|' + kind + '|' + JSON.stringify(points);
    if (chartKeys[id] === key) return;
    chartKeys[id] = key;

    const ks = spec.series.map(([k]) => k);
    let max = 0;
    let sum = 0;
    for (const p of points) {
      const vals = ks.map((k) => Math.max(0, num(p[k])));
      const top = spec.kind === 'stack' ? vals.reduce((a, b) => a + b, 0) : Math.max(...vals);
      max = Math.max(max, top);
      sum += spec.kind === 'stack' ? top : 0;
    }
    const yMax = niceMax(max);
    const pad = { l: 46, r: 6, t: 8, b: 22 };
    const pw = W - pad.l - pad.r;
    const ph = H - pad.t - pad.b;
    const base = pad.t + ph;
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart-svg', 'aria-hidden': 'true' });
    box.setAttribute('aria-label', t('chart.aria', { title: t(spec.title), range: rangeText(state.data || {}), n: fmt.int(points.length) }));

    for (const f of [0, 0.5, 1]) {
      const y = Math.round(base - f * ph) + 0.5;
      root.append(svg('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
      root.append(svg('text', { class: 'axis', x: pad.l - 6, y: y + 4, 'text-anchor': 'end' }, spec.axis(yMax * f)));
    }
    const n = points.length;
    const band = n > 0 ? pw / n : pw;
    const xOf = (i) => pad.l + i * band + band / 2;
    const yOf = (v) => base - (Math.max(0, v) / yMax) * ph;
    if (n > 0) {
      const bw = Math.max(1, Math.min(band * 0.72, 28));
      const bwText = bw.toFixed(1);
      const bandText = band.toFixed(1);
      const labelEvery = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / 56))));
      // A hit rect's y and height, a bar's width, are those of all.
      const hitProto = svg('rect', { class: 'hit', y: pad.t, width: bandText, height: ph });
      const barProtos = spec.series.map(([, cls]) => svg('rect', { class: 'bar ' + cls, width: bwText }));
      // Line charts: one list of runs per field, split where a point has no value.
      const lines = spec.kind === 'line' ? ks.map(() => [[]]) : null;
      for (let i = 0; i < n; i++) {
        const p = points[i];
        rect(root, hitProto, i, (pad.l + i * band).toFixed(1));
        if (lines) {
          for (let j = 0; j < ks.length; j++) {
            const runs = lines[j];
            const v = num(p[ks[j]]);
            if (v > 0) runs[runs.length - 1].push(xOf(i).toFixed(1) + ',' + yOf(v).toFixed(1));
            else if (runs[runs.length - 1].length) runs.push([]);
          }
        } else {
          let y = base;
          const x = (xOf(i) - bw / 2).toFixed(1);
          for (let j = 0; j < ks.length; j++) {
            const v = num(p[ks[j]]);
            let h = (Math.max(0, v) / yMax) * ph;
            if (v > 0 && h < 1.5) h = 1.5; // a lone request stays visible next to a tall bar
            if (h <= 0) continue;
            y -= h;
            rect(root, barProtos[j], i, x, y.toFixed(1), h.toFixed(1));
          }
        }
        if ((n - 1 - i) % labelEvery === 0) {
          root.append(svg('text', { class: 'axis', x: xOf(i).toFixed(1), y: H - 6, 'text-anchor': 'middle' }, bucketLabel(kind, p.t, false)));
        }
      }
      if (lines) {
        spec.series.forEach(([, cls], j) => {
          for (const run of lines[j]) if (run.length > 1) root.append(svg('polyline', { class: 'line ' + cls, points: run.join(' ') }));
          if (n <= 31) {
            // The points of a line: one path of circles (two arcs each).
            let d = '';
            for (let i = 0; i < n; i++) {
              const v = num(points[i][ks[j]]);
              if (v > 0) d += 'M' + (xOf(i) - 2.5).toFixed(1) + ' ' + yOf(v).toFixed(1) + 'a2.5 2.5 0 1 0 5 0a2.5 2.5 0 1 0 -5 0';
            }
            if (d) root.append(svg('path', { class: 'dot ' + cls, d }));
          }
        });
      }
    }
    if (max === 0) {
      root.append(svg('text', { class: 'empty-note', x: pad.l + pw / 2, y: pad.t + ph / 2, 'text-anchor': 'middle' }, t(spec.kind === 'line' ? 'chart.emptyTTFB' : 'chart.empty')));
    }
    const cur = box.querySelector('svg');
    if (cur) cur.replaceWith(root); else box.prepend(root);
    const c = charts[id] || (charts[id] = { sel: -1 });
    Object.assign(c, { spec, kind, points, xOf, W, sum });
    if (c.sel >= n) c.sel = -1;
    showTip(id);
  }

  // showTip shows the values of the selected point of chart id (sel), or
  // hides its tooltip when none is selected.
  function showTip(id) {
    const c = charts[id];
    const box = $(c.spec.box);
    let tip = box.querySelector('.tip');
    for (const r of box.querySelectorAll('rect.hit.sel')) r.classList.remove('sel');
    const p = c.points[c.sel];
    if (!p) {
      if (tip) tip.hidden = true;
      return;
    }
    if (!tip) {
      tip = el('div', { className: 'tip', role: 'status' });
      box.append(tip);
    }
    const hit = box.querySelector('rect.hit[data-i="' + c.sel + '"]');
    if (hit) hit.classList.add('sel');
    const row = (k, cls, label, value) => el('div', { className: 'tip-row', dataset: { k } },
      el('i', { className: 'sw ' + cls }), el('span', {}, label), el('b', {}, value));
    const rowsOf = c.spec.series.map(([k, cls, label]) => row(k, cls, seriesLabel(label), c.spec.val(num(p[k]))));
    if (c.spec.total) rowsOf.push(row(c.spec.total[0], '', t(c.spec.total[1]), c.spec.val(num(p[c.spec.total[0]]))));
    tip.replaceChildren(el('div', { className: 'tip-when' }, bucketLabel(c.kind, p.t, true)), ...rowsOf);
    tip.hidden = false;
    const w = tip.offsetWidth;
    tip.style.left = Math.round(Math.min(Math.max(0, c.xOf(c.sel) - w / 2), c.W - w)) + 'px';
  }

  // wireChart makes the chart box of id answer the pointer (hover, tap)
  // and the keyboard (arrows, Home, End, Escape).
  function wireChart(id) {
    const box = $(CHARTS[id].box);
    box.tabIndex = 0;
    box.setAttribute('role', 'group');
    const select = (i) => {
      const c = charts[id];
      if (!c) return;
      c.sel = i;
      showTip(id);
    };
    const pick = (e) => {
      const n = e.target.closest && e.target.closest('[data-i]');
      if (n) select(Number(n.dataset.i));
    };
    box.addEventListener('pointermove', pick);
    box.addEventListener('pointerdown', pick);
    box.addEventListener('pointerleave', (e) => { if (e.pointerType === 'mouse' && document.activeElement !== box) select(-1); });
    box.addEventListener('focus', () => { const c = charts[id]; if (c && c.sel < 0) select(c.points.length - 1); });
    box.addEventListener('blur', () => select(-1));
    box.addEventListener('keydown', (e) => {
      const c = charts[id];
      if (!c || !c.points.length) return;
      const last = c.points.length - 1;
      const to = { ArrowLeft: c.sel - 1, ArrowRight: c.sel + 1, Home: 0, End: last, Escape: -1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      select(e.key === 'Escape' ? -1 : Math.min(last, Math.max(0, to)));
    });
  }

  // Endpoint table, keyed by prefix.

  const COLS = [
    ['endpoint', 'ep.endpoint'], ['url', 'ep.url'],
    ['total', 'ep.requests'], ['errors', 'ep.errors'], ['latency', 'ep.latencyShort'], ['ttfb', 'ep.ttfbShort'], ['tokens', 'ep.tokens'],
  ];

  // Cells with a main figure and a muted line under it.
  const TWO_LINE = ['total', 'errors', 'latency', 'ttfb', 'tokens'];

  // Rows are clones of a prototype row made once per language (its cells
  // carry their data-label): one native cloneNode costs much less than a
  // dozen elements made and appended one by one, and a large first render
  // makes a few hundred rows. relabel drops the prototypes.
  const protos = {};
  function protoOf(name, make) {
    return protos[name] || (protos[name] = make());
  }

  // twoLine is a figure cell: a main figure and a muted line under it.
  function twoLine(label) {
    return el('td', { className: 'num', dataset: { label: t(label) } }, el('div', {}, el('span'), el('span', { className: 'sub' })));
  }

  function newRow(prefix) {
    const proto = protoOf('ep', () => {
      const tr = el('tr', {},
        el('td', { className: 'endpoint', dataset: { label: t('ep.endpoint') } },
          el('div', {}, el('span', { className: 'prefix mono' }), el('span', { className: 'target mono' }))),
        el('td', { className: 'url-td', dataset: { label: t('ep.url') } },
          el('div', { className: 'urlcell' }, el('span', { className: 'url mono' }), el('button', { type: 'button', className: 'copy' }))));
      for (const [k, key] of COLS) if (TWO_LINE.includes(k)) tr.append(twoLine(key));
      return tr;
    });
    const tr = proto.cloneNode(true);
    tr.dataset.prefix = prefix;
    const cells = tr.cells;
    const names = cells[0].firstChild;
    names.firstChild.textContent = prefix;
    const urlcell = cells[1].firstChild;
    const copy = urlcell.lastChild;
    copy.dataset.what = prefix;
    ui.wireCopy(copy, () => proxyURL(prefix));
    const total = cells[2];
    const errors = cells[3];
    const latency = cells[4];
    const ttfb = cells[5];
    const tokens = cells[6];
    // Every field named here, in one literal: an object that gets its
    // fields one by one under computed names ends up a slower dictionary.
    // tgts and tgtTd are of the row of the targets (newTargetsRow), made
    // when an endpoint first has several.
    const c = {
      endpoint: cells[0], target: names.lastChild, url: cells[1], urlText: urlcell.firstChild,
      total, totalMain: figMain(total), totalSub: figSub(total),
      errors, errorsMain: figMain(errors), errorsSub: figSub(errors),
      latency, latencyMain: figMain(latency), latencySub: figSub(latency),
      ttfb, ttfbMain: figMain(ttfb), ttfbSub: figSub(ttfb),
      tokens, tokensMain: figMain(tokens), tokensSub: figSub(tokens),
      tgts: null, tgtTd: null,
    };
    return { tr, sub: null, c, multi: false, tgtKey: '', prefix };
  }

  // figMain and figSub are the figure and the muted line of a twoLine cell.
  function figMain(td) { return td.firstChild.firstChild; }
  function figSub(td) { return td.firstChild.lastChild; }

  // newTargetsRow gives r its row of the targets, in the table only while
  // there are several.
  function newTargetsRow(r) {
    const c = r.c;
    c.tgts = el('div', { className: 'tgt-stats', role: 'table' });
    c.tgtTd = el('td', { className: 'tgt-td', colSpan: COLS.length }, c.tgts);
    r.sub = el('tr', { className: 'targets-row', dataset: { targetsOf: r.prefix } }, c.tgtTd);
    labelTargets(c, r.prefix);
  }

  function labelRow(c, prefix) {
    for (const [k, key] of COLS) c[k].dataset.label = t(key);
    if (c.tgtTd) labelTargets(c, prefix);
  }

  function labelTargets(c, prefix) {
    c.tgtTd.dataset.label = t('tg.label');
    c.tgts.setAttribute('aria-label', t('tg.title', { prefix }));
  }

  // renderTargets fills the targets row of r from e.targets: URL, tries,
  // errors, failovers and the cooldown of each, in the mapping's order.
  // It rebuilds only when a figure changed.
  function renderTargets(r, list, nowS) {
    const key = JSON.stringify([ui.lang, list.map((x) => [x.url, x.count, x.errors, x.failovers, num(x.cooldown_until) > nowS ? x.cooldown_until : 0])]);
    if (key === r.tgtKey) return;
    r.tgtKey = key;
    const cell = (cls, title, ...children) => el('span', { role: 'cell', className: cls, title }, ...children);
    const head = el('div', { role: 'row', className: 'tgt-row head' },
      ...[['tgt-url', 'tg.url'], ['num', 'tg.count'], ['num', 'tg.errors'], ['num', 'tg.failovers'], ['tgt-state', 'tg.state']]
        .map(([cls, k]) => el('span', { role: 'columnheader', className: cls }, t(k))));
    const body = list.map((x, i) => {
      const url = String(x.url || '');
      const until = num(x.cooldown_until);
      const cooling = until > nowS;
      const errs = num(x.errors);
      return el('div', { role: 'row', className: 'tgt-row' + (cooling ? ' cooling' : ''), dataset: { index: String(i) } },
        cell('tgt-url', url, el('span', { className: 'tgt-n' }, (i + 1) + '. '), el('span', { className: 'mono' }, url)),
        cell('num', undefined, fmt.int(x.count)),
        cell('num' + (errs > 0 ? ' err-count' : ''), undefined, fmt.int(errs)),
        cell('num', undefined, fmt.int(x.failovers)),
        cell('tgt-state', cooling ? fmt.dateTime(until) : undefined, cooling ? t('tg.cooling', { time: fmt.time(until * 1000) }) : t('tg.ok')));
    });
    r.c.tgts.replaceChildren(head, ...body);
  }

  function proxyURL(prefix) { return window.location.origin + prefix; }

  function setTitle(n, s) { if (n.title !== s) n.title = s; }

  // setErrors fills an errors cell of c: the count, then its share of the
  // requests and, when a limit refused some, how many (they are errors too).
  function setErrors(c, count, errs, limited) {
    setText(c.errorsMain, fmt.int(errs));
    c.errorsMain.className = errs > 0 ? 'err-count' : '';
    let sub = count > 0 ? fmt.dec((100 * errs) / count, 1) + ' %' : '';
    if (limited > 0) sub += (sub ? ' · ' : '') + t('ep.limited', { n: fmt.int(limited) });
    setText(c.errorsSub, sub);
    setTitle(c.errors, limited > 0 ? t('ep.limitedTitle', { n: fmt.int(limited) }) : '');
  }

  function updateRow(r, prefix, e) {
    const c = r.c;
    const list = Array.isArray(e.targets) ? e.targets.filter((x) => x && typeof x === 'object') : [];
    r.multi = list.length > 1;
    r.tr.classList.toggle('has-targets', r.multi);
    if (r.multi) {
      if (!r.sub) newTargetsRow(r);
      renderTargets(r, list, Date.now() / 1000);
    }
    const count = num(e.count);
    const errs = num(e.error_count);
    const lat = e.latency_ms || {};
    const tok = e.tokens || {};
    setText(c.target, e.target || '');
    setTitle(c.target, e.target || '');
    setText(c.urlText, proxyURL(prefix));
    setText(c.totalMain, fmt.int(count));
    if (num(e.last_request) > 0) {
      setText(c.totalSub, fmt.ago(e.last_request));
      setTitle(c.total, t('ep.last') + ': ' + fmt.dateTime(e.last_request));
    } else {
      setText(c.totalSub, '');
      setTitle(c.total, '');
    }
    setErrors(c, count, errs, num(e.rate_limited));
    setText(c.latencyMain, count > 0 ? fmt.ms(lat.avg) : '–');
    setText(c.latencySub, count > 0 ? 'p95 ' + fmt.ms(lat.p95) : '');
    const ttfb = e.ttfb_ms || {};
    setText(c.ttfbMain, count > 0 && num(ttfb.p50) > 0 ? fmt.ms(ttfb.p50) : '–');
    setText(c.ttfbSub, count > 0 && num(ttfb.p95) > 0 ? 'p95 ' + fmt.ms(ttfb.p95) : '');
    setText(c.tokensMain, fmt.compact(tok.total));
    // The models by name, the busiest first (no [name, figures] pair each:
    // 50 endpoints of 50 models would make 2,500).
    const ms = e.models || {};
    const models = Object.keys(ms).sort((a, b) => num(ms[b].count) - num(ms[a].count));
    setText(c.tokensSub, models.length ? models[0] + (models.length > 1 ? ' +' + (models.length - 1) : '') : '');
    let title = fmt.int(tok.total) + ' · ' + t('ep.tokensTitle', { p: fmt.int(tok.prompt), c: fmt.int(tok.completion) });
    if (models.length) {
      title += '\n' + t('ep.models') + ': ';
      for (let i = 0; i < models.length; i++) title += (i ? ', ' : '') + models[i] + ' (' + fmt.int(ms[models[i]].count) + ')';
    }
    setTitle(c.tokens, title);
  }

  // An endpoint is idle when it has no requests in what the table shows.
  function isIdle(e) { return num(e && e.count) === 0; }

  // The row that stands for the idle endpoints: a button that opens and
  // closes them (aria-expanded says which), made on first use.
  let idleRow = null;
  function getIdleRow() {
    if (idleRow) return idleRow;
    const label = el('span', { className: 'idle-label' });
    const sub = el('span', { className: 'idle-sub' });
    const btn = el('button', { type: 'button', className: 'idle-toggle', 'aria-expanded': 'false' },
      el('span', { className: 'chev', 'aria-hidden': 'true' }), label, sub);
    btn.addEventListener('click', () => {
      idleOpen = !idleOpen;
      if (state.data) renderEndpoints(state.data.endpoints || {});
    });
    const tr = el('tr', { className: 'idle-row' }, el('td', { colSpan: COLS.length }, btn));
    idleRow = { tr, btn, label, sub };
    return idleRow;
  }

  function renderEndpoints(endpoints) {
    const entries = Object.entries(endpoints);
    const q = $('ep-filter').value.trim().toLowerCase();
    const shown = entries
      .filter(([p, e]) => !q || p.toLowerCase().includes(q) || String(e.target || '').toLowerCase().includes(q) ||
        (Array.isArray(e.targets) && e.targets.some((x) => x && String(x.url || '').toLowerCase().includes(q))))
      .sort((a, b) => num(b[1].count) - num(a[1].count) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    // Idle endpoints (the sort put them last) fold into one row, two or
    // more of them, unless a filter is looking for them.
    const idle = q ? [] : shown.filter((x) => isIdle(x[1]));
    const fold = idle.length >= 2;
    const firstIdle = fold ? shown.length - idle.length : shown.length;
    const body = $('ep-body');
    const want = [];
    const seen = new Set();
    shown.forEach((x, i) => {
      const prefix = x[0];
      const e = x[1];
      let r = rows.get(prefix);
      if (!r) {
        r = newRow(prefix);
        rows.set(prefix, r);
      }
      updateRow(r, prefix, e || {});
      seen.add(prefix);
      if (i === firstIdle) {
        const ir = getIdleRow();
        setText(ir.label, t('ep.idle', { n: fmt.int(idle.length) }));
        setText(ir.sub, t('ep.idleSub'));
        ir.btn.setAttribute('aria-expanded', String(idleOpen));
        want.push(ir.tr);
      }
      if (i >= firstIdle && !idleOpen) return;
      want.push(r.tr);
      if (r.multi) want.push(r.sub);
    });
    for (const prefix of rows.keys()) {
      if (!seen.has(prefix) && !(prefix in endpoints)) rows.delete(prefix);
    }
    const keep = new Set(want);
    for (const n of [...body.children]) if (!keep.has(n)) n.remove();
    // Rows already in place stay untouched: moving a node would take the
    // focus from a button in it (the idle row's, a Copy button).
    let cur = body.firstChild;
    for (const n of want) {
      if (n === cur) cur = cur.nextSibling;
      else body.insertBefore(n, cur);
    }
    $('ep-empty').hidden = entries.length !== 0;
    setText($('ep-count'), q ? t('ep.countFiltered', { shown: fmt.int(shown.length), n: fmt.int(entries.length) }) : t('ep.count', { n: fmt.int(entries.length) }));
  }

  // Keys table, keyed by id: name and id, windows, errors, tokens and
  // when each key was last used.

  const KEY_COLS = [
    ['key', 'ks.key'], ['total', 'ep.requests'], ['errors', 'ep.errors'], ['tokens', 'ep.tokens'], ['last', 'ks.last'],
  ];

  function newKeyRow(id) {
    const proto = protoOf('key', () => el('tr', {},
      el('td', { className: 'key-td', dataset: { label: t('ks.key') } },
        el('div', {}, el('span', { className: 'key-name' }), el('span', { className: 'key-id mono' }))),
      el('td', { className: 'num', dataset: { label: t('ep.requests') } }),
      twoLine('ep.errors'), twoLine('ep.tokens'),
      el('td', { className: 'num', dataset: { label: t('ks.last') } })));
    const tr = proto.cloneNode(true);
    tr.dataset.key = id;
    const cells = tr.cells;
    const names = cells[0].firstChild;
    names.lastChild.textContent = id;
    const errors = cells[2];
    const tokens = cells[3];
    const c = {
      key: cells[0], name: names.firstChild, total: cells[1], last: cells[4],
      errors, errorsMain: figMain(errors), errorsSub: figSub(errors),
      tokens, tokensMain: figMain(tokens), tokensSub: figSub(tokens),
    };
    return { tr, c };
  }

  function labelKeyRow(c) {
    for (const [k, key] of KEY_COLS) c[k].dataset.label = t(key);
  }

  function updateKeyRow(r, k) {
    const c = r.c;
    const name = String(k.name || '');
    setText(c.name, name || t('ks.deleted'));
    c.name.classList.toggle('deleted', !name);
    setTitle(c.name, name);
    const count = num(k.count);
    const errs = num(k.errors);
    setText(c.total, fmt.int(count));
    setErrors(c, count, errs, num(k.rate_limited));
    const tok = k.tokens || {};
    setText(c.tokensMain, fmt.compact(tok.total));
    setText(c.tokensSub, t('card.tokensSub', { p: fmt.compact(tok.prompt), c: fmt.compact(tok.completion) }));
    setTitle(c.tokens, fmt.int(tok.total) + ' · ' + t('ep.tokensTitle', { p: fmt.int(tok.prompt), c: fmt.int(tok.completion) }));
    const last = num(k.last_used_at);
    setText(c.last, last > 0 ? fmt.ago(last) : '–');
    setTitle(c.last, last > 0 ? fmt.dateTime(last) : '');
  }

  function renderKeys(keys) {
    const entries = Object.entries(keys)
      .filter((x) => x[1] && typeof x[1] === 'object')
      .sort((a, b) => num(b[1].count) - num(a[1].count) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    $('keys-panel').hidden = entries.length === 0;
    const body = $('ks-body');
    const want = [];
    const keep = new Set();
    for (let i = 0; i < entries.length; i++) {
      const id = entries[i][0];
      const k = entries[i][1];
      let r = keyRows.get(id);
      if (!r) {
        r = newKeyRow(id);
        keyRows.set(id, r);
      }
      updateKeyRow(r, k);
      want.push(r.tr);
      keep.add(id);
    }
    keyRows.forEach((r, id) => {
      if (!keep.has(id)) {
        r.tr.remove();
        keyRows.delete(id);
      }
    });
    if (body.children.length !== want.length || want.some((n, i) => body.children[i] !== n)) {
      for (const n of want) body.append(n);
    }
    setText($('ks-count'), t('ks.count', { n: fmt.int(entries.length) }));
  }

  // Models table: endpoints[*].models of the range added up by model,
  // with the endpoints that served each. Share is of all the range's
  // requests. Keyed by model, updated in place like the other tables.

  const MODEL_COLS = [
    ['model', 'md.model'], ['count', 'md.requests'], ['share', 'md.share'], ['prompt', 'md.prompt'],
    ['completion', 'md.completion'], ['cache', 'md.cache'], ['total', 'md.total'], ['eps', 'md.endpoints'],
  ];

  const TOKEN_COLS = ['prompt', 'completion', 'cache', 'total'];

  // modelTotals adds up endpoints[*].models: model -> {count, prompt,
  // completion, cache, total, eps: [prefix…]}, the busiest first.
  function modelTotals(endpoints) {
    const m = new Map();
    // for…in, not Object.entries: 50 endpoints of 50 models are 2,500
    // pairs, and no array need be made for each.
    for (const prefix in endpoints) {
      const e = endpoints[prefix];
      if (!e || !e.models || typeof e.models !== 'object') continue;
      const models = e.models;
      for (const name in models) {
        const v = models[name];
        if (!v || typeof v !== 'object') continue;
        let a = m.get(name);
        if (!a) m.set(name, a = { count: 0, prompt: 0, completion: 0, cache: 0, total: 0, eps: [] });
        a.count += num(v.count);
        a.prompt += num(v.prompt);
        a.completion += num(v.completion);
        a.cache += num(v.cache_read) + num(v.cache_write);
        a.total += num(v.total);
        a.eps.push([prefix, num(v.count)]);
      }
    }
    return [...m].sort((x, y) => y[1].count - x[1].count || (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  }

  function newModelRow(name) {
    const proto = protoOf('model', () => {
      const tr = el('tr');
      MODEL_COLS.forEach(([, key], i) => {
        const className = i === 0 ? 'model-td mono' : i === MODEL_COLS.length - 1 ? 'eps mono' : 'num';
        tr.append(el('td', { className, dataset: { label: t(key) } }));
      });
      return tr;
    });
    const tr = proto.cloneNode(true);
    tr.dataset.model = name;
    const x = tr.cells;
    // The cells in MODEL_COLS' order; epsKey is what setEndpoints showed.
    const c = {
      model: x[0], count: x[1], share: x[2], prompt: x[3], completion: x[4], cache: x[5], total: x[6], eps: x[7], epsKey: '',
    };
    c.model.textContent = name;
    return { tr, c };
  }

  function labelCells(c, cols) {
    for (const [k, key] of cols) c[k].dataset.label = t(key);
  }

  // setEndpoints lists the prefixes that served a model, the busiest
  // first: three, and the rest behind a "+N" that opens on a click or a
  // tap (a details element), never on hover alone.
  const EPS_SHOWN = 3;
  function setEndpoints(c, list) {
    const key = list.join(' ');
    if (c.epsKey === key + ui.lang) return;
    c.epsKey = key + ui.lang;
    const head = list.slice(0, EPS_SHOWN).join(', ');
    if (list.length <= EPS_SHOWN) {
      c.eps.replaceChildren(head);
      return;
    }
    const details = protoOf('more', () => el('details', {},
      el('summary', {}, '', el('span', { className: 'more' })),
      el('span', { className: 'rest' }))).cloneNode(true);
    const summary = details.firstChild;
    summary.firstChild.data = head + ' ';
    summary.lastChild.textContent = t('md.more', { n: fmt.int(list.length - EPS_SHOWN) });
    details.lastChild.textContent = list.slice(EPS_SHOWN).join(', ');
    c.eps.replaceChildren(details);
  }

  function renderModels(endpoints) {
    const list = modelTotals(endpoints);
    const all = Math.max(num(state.data && state.data.total), list.reduce((s, x) => s + x[1].count, 0));
    const want = [];
    const keep = new Set();
    // Index loops and x[0], not destructuring, in this file's hot loops:
    // a first render runs them before the JIT has compiled them, and the
    // interpreter destructures an array through its iterator.
    for (let i = 0; i < list.length; i++) {
      const name = list[i][0];
      const a = list[i][1];
      let r = modelRows.get(name);
      if (!r) modelRows.set(name, r = newModelRow(name));
      const c = r.c;
      setText(c.count, fmt.int(a.count));
      setText(c.share, all > 0 ? fmt.dec((100 * a.count) / all, 1) + ' %' : '–');
      for (const k of TOKEN_COLS) {
        setText(c[k], fmt.compact(a[k]));
        setTitle(c[k], fmt.int(a[k]));
      }
      setEndpoints(c, a.eps.sort((x, y) => y[1] - x[1]).map((x) => x[0]));
      want.push(r.tr);
      keep.add(name);
    }
    modelRows.forEach((r, name) => {
      if (!keep.has(name)) {
        r.tr.remove();
        modelRows.delete(name);
      }
    });
    const body = $('md-body');
    if (body.children.length !== want.length || want.some((n, i) => body.children[i] !== n)) body.append(...want);
    $('md-empty').hidden = list.length !== 0;
    setText($('md-count'), t('md.count', { n: fmt.int(list.length) }));
  }

  // Recent errors (the request log's last 20 non-2xx, newest first): each
  // row links to the admin Requests view filtered to its prefix and
  // status. The panel hides when /stats has no recent_errors (no log).
  const ERR_COLS = [['time', 're.time'], ['prefix', 'ep.prefix'], ['status', 're.status'], ['code', 're.code'], ['model', 'md.model']];

  const ERR_TIME = { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' };

  function errorTime(v) {
    const d = typeof v === 'number' ? new Date(v * 1000) : new Date(String(v));
    return Number.isFinite(d.getTime()) ? d : null;
  }

  function requestsLink(x) {
    const q = [];
    if (x.prefix) q.push('prefix=' + encodeURIComponent(String(x.prefix)).replace(/%2F/gi, '/'));
    if (x.status) q.push('status=' + encodeURIComponent(String(x.status)));
    return '/admin#requests' + (q.length ? '?' + q.join('&') : '');
  }

  function renderErrors(list) {
    const panel = $('errors-panel');
    panel.hidden = !Array.isArray(list);
    if (panel.hidden) return;
    const key = JSON.stringify([ui.lang, list]);
    if (key === errorsKey) return;
    errorsKey = key;
    const proto = protoOf('err', () => {
      const tr = el('tr');
      for (const [k, key] of ERR_COLS) {
        const className = k === 'time' ? 're-time' : k === 'status' ? 'num err-count' : 'mono';
        tr.append(el('td', { className, dataset: { label: t(key) } }, k === 'time' ? el('a') : null));
      }
      return tr;
    });
    const rowsOut = list.filter((x) => x && typeof x === 'object').slice(0, 20).map((x) => {
      const when = errorTime(x.time);
      const tr = proto.cloneNode(true);
      tr.dataset.id = String(x.id || '');
      const cells = tr.cells;
      cells[0].title = String(x.time || '');
      const a = cells[0].firstChild;
      a.href = requestsLink(x);
      a.textContent = when ? fmt.date(when, ERR_TIME, 'error') : String(x.time || '');
      cells[1].textContent = String(x.prefix || '');
      cells[2].textContent = String(x.status || '');
      cells[3].textContent = String(x.code || '');
      cells[4].textContent = String(x.model || '');
      return tr;
    });
    $('re-body').replaceChildren(...rowsOut);
    $('re-empty').hidden = rowsOut.length !== 0;
  }

  // Usage snippets, filled with this server's address and the prefixes
  // that point at each provider (the defaults when none does).

  function pickPrefix(endpoints, host, fallback) {
    const hits = Object.entries(endpoints)
      .filter(([, e]) => String(e.target || '').toLowerCase().includes(host))
      .map(([p]) => p)
      .sort((a, b) => (a === fallback ? -1 : b === fallback ? 1 : a.length - b.length));
    return hits.length ? hits[0] : fallback;
  }

  function snippetTexts(endpoints) {
    const o = window.location.origin;
    const openai = pickPrefix(endpoints, 'api.openai.com', '/openai');
    const claude = pickPrefix(endpoints, 'api.anthropic.com', '/claude');
    const gemini = pickPrefix(endpoints, 'generativelanguage.googleapis.com', '/gemini');
    return [
      ['use.openai', [
        'from openai import OpenAI',
        '',
        '# the API key comes from OPENAI_API_KEY, as usual',
        `client = OpenAI(base_url="${o}${openai}/v1")`,
        'resp = client.chat.completions.create(',
        '    model="gpt-4o-mini",',
        '    messages=[{"role": "user", "content": "Hello"}],',
        ')',
        'print(resp.choices[0].message.content)',
      ]],
      ['use.anthropic', [
        'from anthropic import Anthropic',
        '',
        '# the API key comes from ANTHROPIC_API_KEY, as usual',
        `client = Anthropic(base_url="${o}${claude}")`,
        'msg = client.messages.create(',
        '    model="claude-sonnet-4-5", max_tokens=256,',
        '    messages=[{"role": "user", "content": "Hello"}],',
        ')',
        'print(msg.content[0].text)',
      ]],
      ['use.gemini', [
        'from google import genai',
        '',
        '# the API key comes from GEMINI_API_KEY, as usual',
        `client = genai.Client(http_options={"base_url": "${o}${gemini}"})`,
        'resp = client.models.generate_content(',
        '    model="gemini-2.5-flash", contents="Hello",',
        ')',
        'print(resp.text)',
      ]],
      ['use.curl', [
        `curl ${o}${openai}/v1/chat/completions \\`,
        '  -H "Authorization: Bearer $OPENAI_API_KEY" \\',
        '  -H "Content-Type: application/json" \\',
        '  -d \'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}\'',
      ]],
    ].map(([k, lines]) => [k, lines.join('\n')]);
  }

  function renderSnippets(endpoints) {
    const texts = snippetTexts(endpoints);
    const key = JSON.stringify(texts);
    if (key === snippetKey) return;
    snippetKey = key;
    const box = $('snippets');
    if (box.children.length !== texts.length) {
      box.replaceChildren(...texts.map(([k]) => {
        const code = el('code');
        const block = el('div', { className: 'snippet', dataset: { snippet: k } },
          el('div', { className: 'snippet-head' },
            el('span', { dataset: { i18n: k } }, t(k)),
            ui.copyButton(() => code.textContent, k, true)),
          el('pre', { tabIndex: 0 }, code));
        return block;
      }));
    }
    texts.forEach(([, text], i) => setText(box.children[i].querySelector('code'), text));
  }

  function relabel() {
    const btn = $('stats-login-btn');
    setText(btn, t(auth.checking ? 'stok.checking' : 'stok.submit'));
    for (const [prefix, r] of rows) labelRow(r.c, prefix);
    for (const r of keyRows.values()) labelKeyRow(r.c);
    for (const r of modelRows.values()) labelCells(r.c, MODEL_COLS);
    for (const k of Object.keys(protos)) delete protos[k];
    chartKeys = {};
    errorsKey = '';
    render();
    renderStatus();
  }

  document.addEventListener('DOMContentLoaded', () => {
    renderSnippets({});
    markRange();
    for (const b of document.querySelectorAll('#range [data-range]')) b.addEventListener('click', () => setRange(b.dataset.range));
    for (const id of Object.keys(CHARTS)) wireChart(id);
    // A tap outside a chart closes its tooltip.
    document.addEventListener('pointerdown', (e) => {
      for (const [id, c] of Object.entries(charts)) {
        if (c.sel >= 0 && !$(CHARTS[id].box).contains(e.target)) { c.sel = -1; showTip(id); }
      }
    });
    // Back and forward between ranges the reader chose.
    window.addEventListener('popstate', () => {
      const r = rangeOf(window.location.search);
      if (r !== range) {
        range = r;
        state.data = null;
        $('main').setAttribute('aria-busy', 'true');
        markRange();
        refresh();
      }
    });
    $('stats-login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      if (!auth.checking) submitToken();
    });
    $('stats-forget').addEventListener('click', forgetToken);
    $('stats-forget').hidden = !auth.token;
    $('ep-filter').addEventListener('input', () => {
      if (state.data) renderEndpoints(state.data.endpoints || {});
    });
    ui.onLangChange(relabel);
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) window.clearTimeout(state.timer);
      else if (!auth.locked) refresh();
    });
    if (window.ResizeObserver) {
      let pending = 0;
      const ro = new ResizeObserver((entries) => {
        for (const e of entries) boxSizes.set(e.target, { w: e.contentRect.width, h: e.contentRect.height });
        window.cancelAnimationFrame(pending);
        pending = window.requestAnimationFrame(renderCharts);
      });
      for (const spec of Object.values(CHARTS)) ro.observe($(spec.box));
    }
    refresh();
  });
})();
