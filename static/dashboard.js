// The stats dashboard: polls GET /stats (SPEC §4 shape) every few seconds
// and updates the cards, charts and endpoint table in place, so the scroll
// position, a text selection or a focused Copy button survive a refresh.
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
  };
  // The bearer token sent with /stats: '' sends none (a public server).
  // locked while the page asks for one; checking while a typed one is
  // being tried.
  const auth = { token: ui.session.get(TOKEN_KEY) || '', locked: false, checking: false };
  let idleOpen = false; // the idle endpoints row, opened by the reader
  const rows = new Map(); // prefix -> {tr, sub, c, multi}
  const keyRows = new Map(); // key id -> {tr, c}
  let chartKeys = { hourly: '', daily: '' };
  let snippetKey = '';

  const $ = (id) => document.getElementById(id);

  async function refresh() {
    window.clearTimeout(state.timer);
    const ctrl = new AbortController();
    const abort = window.setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    let fresh = false;
    let refused = null;
    try {
      const headers = { Accept: 'application/json' };
      if (auth.token) headers.Authorization = 'Bearer ' + auth.token;
      const res = await fetch('/stats', { cache: 'no-store', signal: ctrl.signal, headers });
      if (res.status === 401 || res.status === 429) {
        refused = res;
        return;
      }
      if (!res.ok) {
        state.httpStatus = res.status;
        throw new Error('HTTP ' + res.status);
      }
      const data = await res.json();
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
      if (refused) {
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
    const t0 = performance.now();
    renderCards(d);
    renderCharts(d.series || {});
    renderEndpoints(d.endpoints || {});
    renderKeys(d.keys && typeof d.keys === 'object' ? d.keys : {});
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

  function renderCards(d) {
    const perf = d.performance || {};
    const tokens = d.tokens || {};
    const card = (k, value, title) => {
      const n = document.querySelector('[data-k="' + k + '"]');
      if (!n) return;
      setText(n, value);
      if (title !== undefined && n.title !== title) n.title = title;
    };
    card('total', fmt.compact(d.total), fmt.int(d.total));
    card('errors_sub', num(d.errors) === 1 ? t('card.error1') : t('card.errors', { n: fmt.int(d.errors) }));
    card('last_24h', fmt.compact(d.last_24h), fmt.int(d.last_24h));
    card('last_7d', fmt.compact(d.last_7d), fmt.int(d.last_7d));
    card('last_30d', fmt.compact(d.last_30d), fmt.int(d.last_30d));
    card('rps', fmt.dec(perf.requests_per_sec, 2));
    card('active_sub', t('card.active', { n: fmt.int(perf.active_requests) }));
    card('avg', fmt.ms(perf.avg_response_time_ms));
    // /stats has per-endpoint percentiles only (unless it adds a global
    // latency_ms); the largest endpoint p95 bounds the overall p95 from
    // above, since a mixture's 95th percentile never exceeds its parts'.
    if (d.latency_ms && d.latency_ms.p95 !== undefined) {
      card('p95', fmt.ms(d.latency_ms.p95), '');
      card('p95_sub', '', '');
    } else {
      let p95 = 0;
      for (const e of Object.values(d.endpoints || {})) {
        if (num(e.count) > 0 && e.latency_ms) p95 = Math.max(p95, num(e.latency_ms.p95));
      }
      card('p95', fmt.ms(p95), t('card.p95.title'));
      card('p95_sub', t('card.p95.sub'), t('card.p95.title'));
    }
    card('error_rate', fmt.dec(perf.error_rate, 2) + ' %');
    // failovers exists from SPEC §9 on; an older server has no such card.
    const fo = document.getElementById('card-failovers');
    if (fo) {
      fo.hidden = typeof d.failovers !== 'number';
      card('failovers', fmt.compact(d.failovers), fmt.int(d.failovers));
    }
    card('tokens', fmt.compact(tokens.total), fmt.int(tokens.total));
    card('tokens_sub', t('card.tokensSub', { p: fmt.compact(tokens.prompt), c: fmt.compact(tokens.completion) }));
    card('memory', fmt.dec(perf.memory_usage_mb, 1) + ' MB');
    card('goroutines', fmt.int(perf.goroutine_count));
    card('uptime', fmt.duration(perf.uptime_seconds));
  }

  // Charts: hand-drawn SVG bars, requests stacked over errors.

  function svg(tag, attrs, text) {
    const n = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function bucketLabel(kind, unix, long) {
    const dt = new Date(num(unix) * 1000);
    if (kind === 'hourly') {
      const h = fmt.date(dt, { hour: '2-digit', minute: '2-digit' });
      return long ? fmt.date(dt, { month: 'short', day: 'numeric' }) + ' ' + h : h;
    }
    return fmt.date(dt, long ? { weekday: 'short', month: 'short', day: 'numeric' } : { month: 'numeric', day: 'numeric' });
  }

  function renderCharts(series) {
    drawChart('hourly', $('chart-hourly'), Array.isArray(series.hourly) ? series.hourly : [], t('chart.hourly'));
    drawChart('daily', $('chart-daily'), Array.isArray(series.daily) ? series.daily : [], t('chart.daily'));
  }

  function drawChart(kind, box, points, title) {
    const W = Math.max(240, Math.round(box.clientWidth || 600));
    const H = Math.max(120, Math.round(box.clientHeight || 180));
    const key = [W, H, ui.lang, JSON.stringify(points)].join('|');
    if (chartKeys[kind] === key) return;
    chartKeys[kind] = key;

    let max = 0;
    let total = 0;
    for (const p of points) {
      max = Math.max(max, num(p.count));
      total += num(p.count);
    }
    const yMax = niceMax(max);
    const pad = { l: 40, r: 6, t: 8, b: 22 };
    const pw = W - pad.l - pad.r;
    const ph = H - pad.t - pad.b;
    const base = pad.t + ph;
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', class: 'chart-svg' });
    root.setAttribute('aria-label', t('chart.aria', { title, total: fmt.int(total), max: fmt.int(max) }));

    for (const f of [0, 0.5, 1]) {
      const y = Math.round(base - f * ph) + 0.5;
      root.append(svg('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
      root.append(svg('text', { class: 'axis', x: pad.l - 6, y: y + 4, 'text-anchor': 'end' }, fmt.compact(yMax * f)));
    }

    const n = points.length;
    if (n > 0) {
      const band = pw / n;
      const bw = Math.max(1, Math.min(band * 0.72, 28));
      const labelEvery = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / 56))));
      points.forEach((p, i) => {
        const count = num(p.count);
        const errors = Math.min(num(p.errors), count);
        const x = pad.l + i * band + (band - bw) / 2;
        let okH = ((count - errors) / yMax) * ph;
        let errH = (errors / yMax) * ph;
        if (count > 0 && okH + errH < 2) {
          // Keep a lone request visible next to a tall bar.
          if (errors > 0) errH = Math.max(errH, 2 - okH); else okH = 2;
        }
        const g = svg('g', { class: 'bar' });
        g.append(svg('title', {}, t('chart.bar', { when: bucketLabel(kind, p.t, true), n: fmt.int(count), e: fmt.int(errors) })));
        g.append(svg('rect', { class: 'hit', x: pad.l + i * band, y: pad.t, width: band, height: ph }));
        if (okH > 0) g.append(svg('rect', { class: 'bar-ok', x: x.toFixed(1), y: (base - okH).toFixed(1), width: bw.toFixed(1), height: okH.toFixed(1), rx: Math.min(2, bw / 4) }));
        if (errH > 0) g.append(svg('rect', { class: 'bar-err', x: x.toFixed(1), y: (base - okH - errH).toFixed(1), width: bw.toFixed(1), height: errH.toFixed(1), rx: Math.min(2, bw / 4) }));
        root.append(g);
        if ((n - 1 - i) % labelEvery === 0) {
          root.append(svg('text', { class: 'axis', x: (pad.l + i * band + band / 2).toFixed(1), y: H - 6, 'text-anchor': 'middle' }, bucketLabel(kind, p.t, false)));
        }
      });
    }
    if (total === 0) {
      root.append(svg('text', { class: 'empty-note', x: pad.l + pw / 2, y: pad.t + ph / 2, 'text-anchor': 'middle' }, t('chart.empty')));
    }
    box.replaceChildren(root);
  }

  // Endpoint table, keyed by prefix.

  const COLS = [
    ['endpoint', 'ep.endpoint'], ['url', 'ep.url'],
    ['h24', 'ep.24h'], ['d7', 'ep.7d'], ['d30', 'ep.30d'], ['total', 'ep.total'],
    ['errors', 'ep.errors'], ['latency', 'ep.latencyShort'], ['tokens', 'ep.tokens'],
  ];

  // Cells with a main figure and a muted line under it.
  const TWO_LINE = ['total', 'errors', 'latency', 'tokens'];

  function newRow(prefix) {
    const c = {};
    const tr = el('tr', { dataset: { prefix } });
    c.target = el('span', { className: 'target mono' });
    c.endpoint = el('td', { className: 'endpoint' }, el('div', {}, el('span', { className: 'prefix mono' }, prefix), c.target));
    c.urlText = el('span', { className: 'url mono' });
    c.url = el('td', { className: 'url-td' }, el('div', { className: 'urlcell' }, c.urlText, ui.copyButton(() => proxyURL(prefix), prefix)));
    for (const k of ['h24', 'd7', 'd30']) c[k] = el('td', { className: 'num' });
    for (const k of TWO_LINE) {
      c[k + 'Main'] = el('span');
      c[k + 'Sub'] = el('span', { className: 'sub' });
      c[k] = el('td', { className: 'num' }, el('div', {}, c[k + 'Main'], c[k + 'Sub']));
    }
    for (const [k] of COLS) tr.append(c[k]);
    // The row of the targets, in the table only while there are several.
    c.tgts = el('div', { className: 'tgt-stats', role: 'table' });
    c.tgtTd = el('td', { className: 'tgt-td', colSpan: COLS.length }, c.tgts);
    const sub = el('tr', { className: 'targets-row', dataset: { targetsOf: prefix } }, c.tgtTd);
    labelRow(c, prefix);
    return { tr, sub, c, multi: false, tgtKey: '' };
  }

  function labelRow(c, prefix) {
    for (const [k, key] of COLS) c[k].dataset.label = t(key);
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
    if (r.multi) renderTargets(r, list, Date.now() / 1000);
    const count = num(e.count);
    const errs = num(e.error_count);
    const lat = e.latency_ms || {};
    const tok = e.tokens || {};
    setText(c.target, e.target || '');
    setTitle(c.target, e.target || '');
    setText(c.urlText, proxyURL(prefix));
    setText(c.h24, fmt.int(e.last_24h));
    setText(c.d7, fmt.int(e.last_7d));
    setText(c.d30, fmt.int(e.last_30d));
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
    setText(c.tokensMain, fmt.compact(tok.total));
    const models = Object.entries(e.models || {}).sort((a, b) => num(b[1].count) - num(a[1].count));
    setText(c.tokensSub, models.length ? models[0][0] + (models.length > 1 ? ' +' + (models.length - 1) : '') : '');
    let title = fmt.int(tok.total) + ' · ' + t('ep.tokensTitle', { p: fmt.int(tok.prompt), c: fmt.int(tok.completion) });
    if (models.length) {
      title += '\n' + t('ep.models') + ': ' + models.map(([m, v]) => m + ' (' + fmt.int(v.count) + ')').join(', ');
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
    const idle = q ? [] : shown.filter(([, e]) => isIdle(e));
    const fold = idle.length >= 2;
    const firstIdle = fold ? shown.length - idle.length : shown.length;
    const body = $('ep-body');
    const want = [];
    const seen = new Set();
    shown.forEach(([prefix, e], i) => {
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
    ['key', 'ks.key'], ['h24', 'ep.24h'], ['d7', 'ep.7d'], ['d30', 'ep.30d'], ['total', 'ep.total'],
    ['errors', 'ep.errors'], ['tokens', 'ep.tokens'], ['last', 'ks.last'],
  ];

  function newKeyRow(id) {
    const c = {};
    const tr = el('tr', { dataset: { key: id } });
    c.name = el('span', { className: 'key-name' });
    c.key = el('td', { className: 'key-td' }, el('div', {}, c.name, el('span', { className: 'key-id mono' }, id)));
    for (const k of ['h24', 'd7', 'd30', 'total', 'last']) c[k] = el('td', { className: 'num' });
    for (const k of ['errors', 'tokens']) {
      c[k + 'Main'] = el('span');
      c[k + 'Sub'] = el('span', { className: 'sub' });
      c[k] = el('td', { className: 'num' }, el('div', {}, c[k + 'Main'], c[k + 'Sub']));
    }
    for (const [k] of KEY_COLS) tr.append(c[k]);
    labelKeyRow(c);
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
    setText(c.h24, fmt.int(k.last_24h));
    setText(c.d7, fmt.int(k.last_7d));
    setText(c.d30, fmt.int(k.last_30d));
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
      .filter(([, k]) => k && typeof k === 'object')
      .sort((a, b) => num(b[1].count) - num(a[1].count) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    $('keys-panel').hidden = entries.length === 0;
    const body = $('ks-body');
    const want = [];
    const keep = new Set();
    for (const [id, k] of entries) {
      let r = keyRows.get(id);
      if (!r) {
        r = newKeyRow(id);
        keyRows.set(id, r);
      }
      updateKeyRow(r, k);
      want.push(r.tr);
      keep.add(id);
    }
    for (const [id, r] of keyRows) {
      if (!keep.has(id)) {
        r.tr.remove();
        keyRows.delete(id);
      }
    }
    if (body.children.length !== want.length || want.some((n, i) => body.children[i] !== n)) {
      for (const n of want) body.append(n);
    }
    setText($('ks-count'), t('ks.count', { n: fmt.int(entries.length) }));
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
    chartKeys = { hourly: '', daily: '' };
    render();
    renderStatus();
  }

  document.addEventListener('DOMContentLoaded', () => {
    renderSnippets({});
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
      const ro = new ResizeObserver(() => {
        window.cancelAnimationFrame(pending);
        pending = window.requestAnimationFrame(() => { if (state.data) renderCharts(state.data.series || {}); });
      });
      ro.observe($('chart-hourly'));
      ro.observe($('chart-daily'));
    }
    refresh();
  });
})();
