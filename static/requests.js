// The admin page's Requests view (SPEC §12): the request log, newest
// first, from GET /api/requests with the admin token, filtered by mapping,
// proxy key, status (a class such as 5xx or an exact code) and model.
//
// admin.js owns the login, the tabs and the API helper; it makes this view
// once with window.requestsView(deps) and calls show, hide, clear, relabel
// and the hash functions on it. The filters live in the address after the
// tab, in the API's own parameter names (#requests?prefix=/openai&status=5xx),
// so a copied address opens the same view.
//
// While the view is on screen and the browser tab visible, it asks for the
// newest page every few seconds and puts the records it has not seen (by
// id) on top; the rows "Load older" brought stay below them. It pauses
// while the reader has scrolled past the first row, where new rows would
// push the ones being read. Rows are built in one pass into a
// DocumentFragment with no layout read, and at most CAP are kept.
//
// Every value of a record comes from outside (paths, model names): it is
// inserted as text only.
'use strict';

(function () {
  const ui = window.ui;
  const { t, setText, fmt } = ui;
  const PAGE = 100;          // records asked for by a first load, a refresh and "Load older"
  const CATCH_UP = 1000;     // records per call while a refresh closes a gap
  const CATCH_UP_CALLS = 10; // calls a refresh makes at most; a filter that matches
                             // little may get short pages (the server bounds its scan)
  const CAP = 5000;          // rows kept in the table
  const EVERY = 5000;        // ms between refreshes
  const FILTERS = ['prefix', 'key_id', 'status', 'model'];
  const STATUS_RE = /^(?:[1-5]xx|[1-5]\d\d)$/;

  // requestsView builds the view over the elements of admin.html. deps:
  // api(method, path) as admin.js has it (never throws), unauthorized(r)
  // for a 401 (back to the login), prefixes() the mappings' prefixes,
  // keys() the proxy keys as [id, name] pairs, loadKeys() a promise that
  // refreshes the latter.
  window.requestsView = function requestsView(deps) {
    const $ = (id) => document.getElementById(id);
    const body = $('req-body');
    let filters = blank();
    let records = [];              // newest first, as shown
    const ids = new Set();         // ids of records
    let next = null;               // cursor of the page below the last row, or null
    let loaded = false;            // the first page has come back for these filters
    let gen = 0;                   // bumped by every reset: older answers are dropped
    let busy = false;              // a load or refresh is under way
    let active = false;            // the view is on screen
    let timer = 0;
    let updated = 0;               // Date.now() of the last good answer
    let paused = false;
    let typing = 0;                // debounce of the model and code fields
    let timeFmt = null;
    let timeLang = '';

    function blank() {
      return { prefix: '', key_id: '', status: '', model: '' };
    }

    function activeFilters() {
      return FILTERS.some((k) => filters[k] !== '');
    }

    // fromHash reads the filters of an address hash (#requests?…); other
    // hashes leave them empty. Unknown or malformed values are dropped.
    function fromHash(hash) {
      const f = blank();
      const m = /^#requests(?:\?(.*))?$/.exec(hash || '');
      if (m && m[1]) {
        const p = new URLSearchParams(m[1]);
        for (const k of FILTERS) f[k] = (p.get(k) || '').trim();
        f.status = f.status.toLowerCase();
        if (!STATUS_RE.test(f.status)) f.status = '';
      }
      return f;
    }

    // hash is this view's address hash: the filters set, in a fixed
    // order, with / left readable in prefixes.
    function hash() {
      const parts = FILTERS.filter((k) => filters[k] !== '')
        .map((k) => k + '=' + encodeURIComponent(filters[k]).replace(/%2F/gi, '/'));
      return '#requests' + (parts.length ? '?' + parts.join('&') : '');
    }

    function query(extra) {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(extra)) p.set(k, String(v));
      for (const k of FILTERS) if (filters[k] !== '') p.set(k, filters[k]);
      return '/api/requests?' + p.toString();
    }

    // Filter controls

    // fillSelect lists options [[value, label], …] after "All", keeping
    // the chosen value even when the list lacks it (a deleted key, or a
    // mapping removed since the address was copied).
    function fillSelect(sel, options, value) {
      const opts = [['', t('req.all')], ...options];
      if (value && !options.some(([v]) => v === value)) opts.push([value, value]);
      const sig = JSON.stringify(opts);
      if (sel.dataset.sig !== sig) {
        const frag = document.createDocumentFragment();
        for (const [v, label] of opts) {
          const o = document.createElement('option');
          o.value = v;
          o.textContent = label;
          frag.append(o);
        }
        sel.replaceChildren(frag);
        sel.dataset.sig = sig;
      }
      sel.value = value;
    }

    function fillOptions() {
      fillSelect($('req-prefix'), deps.prefixes().slice().sort().map((p) => [p, p]), filters.prefix);
      fillSelect($('req-key'), deps.keys().slice().sort((a, b) => a[1].localeCompare(b[1])), filters.key_id);
    }

    // showFilters puts filters into the controls.
    function showFilters() {
      fillOptions();
      const exact = /^\d{3}$/.test(filters.status);
      $('req-status').value = exact ? 'code' : filters.status;
      $('req-code').hidden = !exact;
      $('req-code').value = exact ? filters.status : '';
      codeError('');
      $('req-model').value = filters.model;
      $('req-clear').hidden = !activeFilters();
    }

    function codeError(msg) {
      setText($('req-code-error'), msg);
      $('req-code').setAttribute('aria-invalid', String(Boolean(msg)));
    }

    // readFilters takes the controls' values; an exact code that is not
    // three digits is refused beside its field and changes nothing.
    function readFilters() {
      const f = { ...filters };
      f.prefix = $('req-prefix').value;
      f.key_id = $('req-key').value;
      f.model = $('req-model').value.trim();
      const cls = $('req-status').value;
      if (cls === 'code') {
        const code = $('req-code').value.trim();
        if (code !== '' && !/^[1-5]\d\d$/.test(code)) {
          codeError(t('req.codeBad'));
          return null;
        }
        f.status = code;
      } else {
        f.status = cls;
      }
      codeError('');
      return f;
    }

    // apply takes the controls' filters, and when they changed, writes
    // them into the address and loads from the newest.
    function apply() {
      window.clearTimeout(typing);
      const f = readFilters();
      if (!f || FILTERS.every((k) => f[k] === filters[k])) return;
      filters = f;
      $('req-clear').hidden = !activeFilters();
      writeHash();
      reset();
    }

    function writeHash() {
      const h = hash();
      if (window.location.hash !== h) history.replaceState(null, '', window.location.pathname + window.location.search + h);
    }

    // Loading

    function setError(msg) {
      const p = $('req-error');
      setText(p, msg || '');
      p.hidden = !msg;
    }

    // failed shows why a call failed, in the view; a 401 goes back to
    // the login. Rows already shown stay.
    function failed(r) {
      if (r.status === 401) {
        deps.unauthorized(r);
        return;
      }
      let msg;
      if (r.status === 0) msg = t('admin.unreachable');
      else if (r.status === 404 || r.status === 405) msg = t('req.unsupported');
      else if (r.status === 429) msg = t('login.limited', { n: r.retryAfter || '60' });
      else if (r.status === 400) msg = r.message;
      else msg = t('admin.error', { status: r.status, msg: r.message });
      setError(msg);
      loaded = true;
      renderMeta();
    }

    // page reads an answer of GET /api/requests, or null when it is not one.
    function page(r) {
      if (r.status !== 200 || !r.data || !Array.isArray(r.data.requests)) return null;
      const list = r.data.requests.filter((x) => x && typeof x === 'object' && x.id !== undefined && x.id !== null);
      for (const x of list) x.id = String(x.id);
      const n = r.data.next;
      return { list, next: n === null || n === undefined || n === '' ? null : String(n) };
    }

    // reset forgets the rows and loads the newest page for the filters.
    async function reset() {
      gen++;
      records = [];
      ids.clear();
      next = null;
      loaded = false;
      busy = false;
      setError('');
      render();
      await first();
    }

    async function first() {
      const g = gen;
      busy = true;
      const r = await deps.api('GET', query({ limit: PAGE }));
      if (g !== gen) return;
      busy = false;
      const pg = page(r);
      if (!pg) {
        failed(r);
        return;
      }
      setError('');
      replace(pg.list, pg.next);
    }

    function replace(list, cursor) {
      records = [];
      ids.clear();
      for (const x of list) {
        if (ids.has(x.id)) continue;
        ids.add(x.id);
        records.push(x);
      }
      next = cursor;
      loaded = true;
      updated = Date.now();
      trim();
      render();
    }

    // refresh asks for the newest page and puts the records not seen yet
    // on top. When none of that page is known, more than a page came in
    // since the last look: it reads on (CATCH_UP at a time) to the first
    // known record, and starts over from the newest when that is more
    // than CAP records or CATCH_UP_CALLS calls away.
    async function refresh() {
      if (busy || !loaded || !active) return;
      if (!records.length) {
        await first();
        return;
      }
      const g = gen;
      busy = true;
      const fresh = [];
      let cursor = null;
      let limit = PAGE;
      let found = false;
      for (let calls = 1; ; calls++) {
        const r = await deps.api('GET', query(cursor ? { limit, before: cursor } : { limit }));
        if (g !== gen) return;
        const pg = page(r);
        if (!pg) {
          busy = false;
          failed(r);
          return;
        }
        for (const x of pg.list) {
          if (ids.has(x.id)) { found = true; break; }
          fresh.push(x);
        }
        cursor = pg.next;
        if (found || cursor === null || fresh.length >= CAP || calls >= CATCH_UP_CALLS) break;
        limit = CATCH_UP;
      }
      busy = false;
      setError('');
      if (!found) {
        // The rows shown are no longer in the log, or too far below.
        replace(fresh, cursor);
        return;
      }
      updated = Date.now();
      if (fresh.length) prepend(fresh);
      else renderMeta();
    }

    function prepend(fresh) {
      const t0 = performance.now();
      const labels = labelSet();
      const frag = document.createDocumentFragment();
      const add = [];
      for (const x of fresh) {
        if (ids.has(x.id)) continue;
        ids.add(x.id);
        add.push(x);
        const tr = row(x, labels);
        tr.classList.add('fresh');
        frag.append(tr);
      }
      records = add.concat(records);
      body.prepend(frag);
      // Older rows beyond the cap go, and Load older starts below the
      // last row kept.
      const over = records.length - CAP;
      if (over > 0) {
        for (const x of records.splice(CAP)) ids.delete(x.id);
        for (let i = 0; i < over; i++) body.lastElementChild.remove();
        next = records[records.length - 1].id;
      }
      timed(t0);
      renderMeta();
    }

    async function older() {
      if (busy || !next || records.length >= CAP) return;
      const g = gen;
      busy = true;
      const btn = $('req-older');
      btn.disabled = true;
      const r = await deps.api('GET', query({ limit: Math.min(PAGE, CAP - records.length), before: next }));
      btn.disabled = false;
      if (g !== gen) return;
      busy = false;
      const pg = page(r);
      if (!pg) {
        failed(r);
        return;
      }
      setError('');
      const t0 = performance.now();
      const labels = labelSet();
      const frag = document.createDocumentFragment();
      let n = 0;
      for (const x of pg.list) {
        if (ids.has(x.id)) continue;
        ids.add(x.id);
        records.push(x);
        frag.append(row(x, labels));
        n++;
      }
      body.append(frag);
      next = pg.next;
      timed(t0);
      renderMeta();
      ui.announce(t('req.olderLoaded', { n: fmt.int(n) }));
    }

    function trim() {
      if (records.length <= CAP) return;
      for (const x of records.splice(CAP)) ids.delete(x.id);
      next = records[records.length - 1].id;
    }

    // Rendering

    // labelSet holds the column names, looked up once per render: the
    // phone layout shows them beside each cell.
    function labelSet() {
      const l = {
        time: t('req.col.time'), prefix: t('req.col.prefix'), request: t('req.col.request'),
        status: t('req.col.status'), model: t('req.col.model'), tokens: t('req.col.tokens'),
        latency: t('req.col.latency'), key: t('req.col.key'), attempts: t('req.col.attempts'),
      };
      l.closed = t('req.closed');
      l.closedTitle = t('req.closedTitle');
      l.stream = t('req.stream');
      return l;
    }

    // timeFormat formats a record's time in the reader's locale: the
    // browser's first language of the page's language (en-GB, zh-TW…),
    // with no region chosen here, to the second.
    function timeFormat() {
      if (timeFmt && timeLang === ui.lang) return timeFmt;
      const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ui.lang];
      const mine = langs.filter((l) => String(l).toLowerCase().split('-')[0] === ui.lang);
      timeFmt = new Intl.DateTimeFormat(mine.length ? mine : [ui.lang], {
        month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
      });
      timeLang = ui.lang;
      return timeFmt;
    }

    function num(v) {
      return typeof v === 'number' && Number.isFinite(v) ? v : null;
    }

    function td(cls, label, text) {
      const c = document.createElement('td');
      c.className = cls;
      c.dataset.label = label;
      if (text !== undefined) c.textContent = text;
      return c;
    }

    function span(cls, text) {
      const s = document.createElement('span');
      s.className = cls;
      s.textContent = text;
      return s;
    }

    // row builds the <tr> of one record. It reads no layout.
    function row(x, l) {
      const tr = document.createElement('tr');
      tr.dataset.id = x.id;
      const when = new Date(String(x.time));
      const time = td('rq-time', l.time, Number.isFinite(when.getTime()) ? timeFormat().format(when) : String(x.time || ''));
      time.title = String(x.time || '');
      if (x.client_ip) time.title += ' · ' + String(x.client_ip);

      const req = td('rq-req mono', l.request);
      req.append(span('rq-method', String(x.method || '')), ' ', span('rq-path', String(x.path || '')));
      if (x.stream === true) req.append(' ', span('tag', l.stream));

      const code = num(x.status) || 0;
      const status = td('rq-status', l.status);
      const cls = code >= 100 && code < 600 ? Math.floor(code / 100) + 'xx' : 'other';
      status.append(span('st st-' + cls, String(code || '—') + (x.code ? ' ' + String(x.code) : '')));
      if (x.client_closed === true) {
        const c = span('tag closed', l.closed);
        c.title = l.closedTitle;
        status.append(' ', c);
      }

      const p = num(x.prompt_tokens), c = num(x.completion_tokens), total = num(x.total_tokens);
      const tokens = td('rq-tokens num', l.tokens, p || c || total
        ? fmt.compact(p || 0) + ' / ' + fmt.compact(c || 0) + ' / ' + fmt.compact(total || 0)
        : '—');
      if (p || c || total) tokens.title = t('req.tokensTitle', { p: fmt.int(p || 0), c: fmt.int(c || 0), t: fmt.int(total || 0) });

      const lat = num(x.latency_ms), ttfb = num(x.ttfb_ms);
      const latency = td('rq-latency num', l.latency, (lat === null ? '—' : fmt.ms(lat)) + ' / ' + (ttfb === null ? '—' : fmt.ms(ttfb)));

      const key = td('rq-key', l.key, x.key_name ? String(x.key_name) : x.key_id ? String(x.key_id) : '—');
      if (x.key_id) key.title = String(x.key_id);

      const n = num(x.attempts) || 0;
      const target = num(x.target);
      const many = target !== null && (n > 1 || target > 0);
      const attempts = td('rq-attempts num', l.attempts, many ? t('req.attemptsTo', { n: fmt.int(n), t: fmt.int(target + 1) }) : n ? fmt.int(n) : '—');
      if (many) attempts.title = t('req.attemptsTitle', { n: fmt.int(n), t: fmt.int(target + 1) });

      tr.append(time, td('rq-prefix mono', l.prefix, String(x.prefix || '')), req, status,
        td('rq-model mono', l.model, x.model ? String(x.model) : '—'), tokens, latency, key, attempts);
      return tr;
    }

    // timed keeps the last render's figures on the table: the DOM work,
    // and (after the next frame) the time until that frame was done.
    function timed(t0) {
      const tb = $('req-table');
      tb.dataset.renderMs = (performance.now() - t0).toFixed(1);
      tb.dataset.renders = String(Number(tb.dataset.renders || 0) + 1);
      requestAnimationFrame(() => setTimeout(() => { tb.dataset.frameMs = (performance.now() - t0).toFixed(1); }, 0));
    }

    // render rebuilds every row in one pass.
    function render() {
      const t0 = performance.now();
      const labels = labelSet();
      const frag = document.createDocumentFragment();
      for (const x of records) frag.append(row(x, labels));
      body.replaceChildren(frag);
      timed(t0);
      renderMeta();
    }

    function renderMeta() {
      // Loading…, or the empty state when the answer held no record (an
      // error says why instead).
      const empty = $('req-empty');
      setText(empty, !loaded ? t('req.loading') : activeFilters() ? t('req.noMatch') : t('req.none'));
      empty.hidden = loaded && (records.length > 0 || !$('req-error').hidden);
      $('req-older').hidden = !next || records.length >= CAP;
      const capped = $('req-capped');
      capped.hidden = !(next && records.length >= CAP);
      setText(capped, capped.hidden ? '' : t('req.capped', { n: fmt.int(CAP) }));
      setText($('req-count'), loaded ? t('req.count', { n: fmt.int(records.length) }) : '');
      const live = $('req-live');
      live.classList.toggle('live', Boolean(updated) && !paused);
      setText($('req-live-text'), !updated ? '' : paused
        ? t('req.paused', { n: EVERY / 1000 })
        : t('req.live', { time: fmt.time(updated), n: EVERY / 1000 }));
    }

    // tick refreshes unless the browser tab is hidden or the reader is
    // below the first row (one layout read every EVERY ms, not per row).
    function tick() {
      if (!active || document.visibilityState !== 'visible') return;
      const wasPaused = paused;
      paused = loaded && records.length > 0 && body.getBoundingClientRect().top < 0;
      if (paused !== wasPaused) renderMeta();
      if (!paused) refresh();
    }

    function start() {
      window.clearInterval(timer);
      timer = window.setInterval(tick, EVERY);
    }

    function stop() {
      window.clearInterval(timer);
      timer = 0;
    }

    // Wiring

    $('req-filters').addEventListener('submit', (e) => { e.preventDefault(); apply(); });
    $('req-prefix').addEventListener('change', apply);
    $('req-key').addEventListener('change', apply);
    $('req-status').addEventListener('change', () => {
      const exact = $('req-status').value === 'code';
      $('req-code').hidden = !exact;
      if (exact) {
        $('req-code').focus();
        if ($('req-code').value.trim() === '') return; // wait for a code
      }
      apply();
    });
    // Typing waits for a pause; Enter and leaving the field apply at once.
    for (const id of ['req-model', 'req-code']) {
      const input = $(id);
      input.addEventListener('input', () => {
        window.clearTimeout(typing);
        if (id === 'req-code') codeError('');
        typing = window.setTimeout(apply, 500);
      });
      input.addEventListener('change', apply);
    }
    $('req-clear').addEventListener('click', () => {
      filters = blank();
      showFilters();
      writeHash();
      reset();
      $('req-prefix').focus();
    });
    $('req-older').addEventListener('click', older);
    document.addEventListener('visibilitychange', () => {
      if (active && document.visibilityState === 'visible') tick();
    });

    return {
      // hash is the address hash of the view with its filters.
      hash,
      // setHash takes the filters of an address hash; it reloads when
      // they changed and the view is on screen.
      setHash(h) {
        const f = fromHash(h);
        const changed = FILTERS.some((k) => f[k] !== filters[k]);
        filters = f;
        if (changed) {
          gen++;
          busy = false;
          loaded = false;
          records = [];
          ids.clear();
          next = null;
        }
        if (active) {
          showFilters();
          if (changed) reset();
        }
      },
      // show puts the view on screen: the keys list is refreshed for the
      // key filter, and the log is loaded (first time) or refreshed.
      show() {
        const was = active;
        active = true;
        showFilters();
        deps.loadKeys().then(() => { if (active) fillOptions(); });
        if (!was) {
          start();
          if (!loaded && !busy) reset();
          else refresh();
        }
      },
      hide() {
        active = false;
        stop();
      },
      // clear forgets everything (Log out).
      clear() {
        active = false;
        stop();
        gen++;
        busy = false;
        records = [];
        ids.clear();
        next = null;
        loaded = false;
        updated = 0;
        paused = false;
        filters = blank();
        setError('');
        render();
      },
      // relabel redraws in the page's new language.
      relabel() {
        $('req-prefix').dataset.sig = '';
        $('req-key').dataset.sig = '';
        if (active) fillOptions();
        render();
      },
    };
  };
})();
