// The admin page: log in with the admin token, then list, add, edit and
// delete mappings through /api/mappings (SPEC §6, §9). The token lives in
// sessionStorage only, so it is gone when the tab closes or on Log out.
// Errors from the API are shown as text next to the field they concern,
// all at once: a 400 lists every problem in error.errors as {field,
// message} (issue 19); from a server without that list, the one message
// goes beside the field its first word names ("targets[1].url …").
//
// A plain mapping (one target, no options) is added and edited with one
// URL field, as before SPEC §9; "Several targets and options" opens the
// editor of the whole object, where a mapping's auth (passthrough or
// proxy keys) and each target's upstream key and its auth_style are set.
// Upstream keys are write-only on the server and are never shown, only
// their hint ("…wxyz"); a key typed here lives in the editor's draft until
// it is sent, and nowhere else.
//
// The Keys view (SPEC §10) creates, lists, disables and deletes proxy
// keys through /api/keys. A new key's secret is in the create answer only:
// it is shown once, with a Copy button, until "I have copied it".
//
// The Requests view (SPEC §12) is requests.js; this file makes it and
// tells it when it is shown, hidden, relabelled or logged out.
'use strict';

(function () {
  const ui = window.ui;
  const { t, el, setText, fmt } = ui;
  const TOKEN_KEY = 'apiproxy.adminToken';
  const DEFAULT_RETRY = [429, 500, 502, 503, 504];
  // The limits of a mapping or a key (SPEC §11), in the order shown.
  const LIMITS = ['rpm', 'tpm', 'concurrency'];
  const LIMIT_LABELS = { rpm: 'ed.rpm', tpm: 'ed.tpm', concurrency: 'ed.concurrency' };
  // How a target's upstream key is sent (SPEC §9); "" is the server's
  // default, Authorization: Bearer.
  const AUTH_STYLES = ['', 'bearer', 'x-api-key', 'x-goog-api-key', 'api-key', 'query-key'];
  const STYLE_LABELS = {
    '': 'style.default', bearer: 'style.bearer', 'x-api-key': 'style.x_api_key',
    'x-goog-api-key': 'style.x_goog_api_key', 'api-key': 'style.api_key', 'query-key': 'style.query_key',
  };
  const STATUS_LABELS = { active: 'keys.status.active', disabled: 'keys.status.disabled', expired: 'keys.status.expired' };

  let token = '';
  const items = new Map();           // prefix -> mapping object (see normalize), as the server last said
  const rows = new Map();            // prefix -> <tr>
  const mode = new Map();            // prefix -> 'edit' | 'full' | 'confirm'
  const drafts = new Map();          // prefix -> target being typed in edit mode
  const editors = new Map();         // prefix -> editor of a row in full mode
  const rowErrors = new Map();       // prefix -> message under the edit field
  let addEditor = null;              // the add form's editor while expanded

  const $ = (id) => document.getElementById(id);

  // api calls the admin API and never throws: status 0 means the server
  // could not be reached.
  async function api(method, path, body) {
    const headers = { Accept: 'application/json', Authorization: 'Bearer ' + token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      return { status: 0, data: null, message: t('admin.unreachable'), code: '', errors: null };
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    const err = data && typeof data === 'object' && data.error && typeof data.error === 'object' ? data.error : null;
    return {
      status: res.status,
      data,
      message: err && err.message ? String(err.message) : res.statusText || ('HTTP ' + res.status),
      code: err && err.code ? String(err.code) : '',
      errors: err ? problemsOf(err.errors) : null,
      retryAfter: res.headers.get('Retry-After'),
    };
  }

  // problemsOf reads error.errors of a 400, every problem of the object
  // sent in the order of its fields: [{field, message}], or null when
  // the answer has no such list (other errors, older servers).
  function problemsOf(list) {
    if (!Array.isArray(list)) return null;
    const out = list.filter((p) => p && typeof p === 'object' && p.message)
      .map((p) => ({ field: String(p.field || ''), message: String(p.message) }));
    return out.length ? out : null;
  }

  // problems returns the problems of an answer r: its list, or the one
  // message as a list, with the field its first word names.
  function problems(r) {
    return r.errors || [{ field: fieldOf(r.message), message: r.message }];
  }

  function mappingPath(prefix) {
    return '/api/mappings/' + prefix.replace(/^\//, '').split('/').map(encodeURIComponent).join('/');
  }

  // Mapping objects

  function int(v, d) {
    const n = Number(v);
    return Number.isInteger(n) ? n : d;
  }

  // normalize turns an answer of the API into the page's mapping object:
  // an item of GET /api/mappings (SPEC §9), or the original form
  // {prefix, target} of a server from before §9. Every option is filled in
  // with its default, so later code never checks for absent fields.
  function normalize(raw, prefix, target) {
    const o = raw && typeof raw === 'object' ? raw : {};
    const list = Array.isArray(o.targets) && o.targets.length ? o.targets : [{ url: o.target || target || '' }];
    const limits = o.limits && typeof o.limits === 'object' ? o.limits : {};
    return {
      prefix: String(o.prefix || prefix || ''),
      targets: list.map((x) => {
        const tg = x && typeof x === 'object' ? x : {};
        return {
          url: String(tg.url || ''),
          weight: int(tg.weight, 1),
          auth_style: tg.auth_style ? String(tg.auth_style) : '',
          key_set: Boolean(tg.key_set),
          key_hint: tg.key_hint ? String(tg.key_hint) : '',
        };
      }),
      balance: o.balance ? String(o.balance) : 'failover',
      retry_on: Array.isArray(o.retry_on) ? o.retry_on.map((s) => int(s, 0)) : DEFAULT_RETRY.slice(),
      auth: o.auth ? String(o.auth) : 'passthrough',
      limits: { rpm: int(limits.rpm, 0), tpm: int(limits.tpm, 0), concurrency: int(limits.concurrency, 0) },
      stream_idle_timeout: o.stream_idle_timeout ? String(o.stream_idle_timeout) : '0s',
    };
  }

  function sameList(a, b) {
    return a.length === b.length && a.every((v, i) => v === b[i]);
  }

  // zeroDuration is true for "0s", "0", "" and the like: no idle timeout.
  function zeroDuration(s) {
    return /^\s*0*(\.0*)?\s*(ns|us|µs|ms|s|m|h)?\s*$/.test(String(s || ''));
  }

  // plain is true for a mapping of the original form: one target and every
  // option at its default. Such a mapping keeps the one-field editor.
  function plain(m) {
    const tg = m.targets[0];
    return m.targets.length === 1 && tg.weight === 1 && !tg.key_set && !tg.auth_style &&
      m.balance === 'failover' && sameList(m.retry_on, DEFAULT_RETRY) && m.auth === 'passthrough' &&
      m.limits.rpm === 0 && m.limits.tpm === 0 && m.limits.concurrency === 0 && zeroDuration(m.stream_idle_timeout);
  }

  function setItems(data) {
    items.clear();
    if (Array.isArray(data.items)) {
      for (const raw of data.items) {
        const m = normalize(raw);
        if (m.prefix) items.set(m.prefix, m);
      }
    } else {
      for (const [prefix, target] of Object.entries(data.mappings || {})) items.set(prefix, normalize(null, prefix, String(target)));
    }
  }

  // fieldOf returns the field an API message names in its first word
  // ("targets[1].url must be …" → "targets[1].url"), or "".
  function fieldOf(message) {
    const m = /^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)?)\b/.exec(String(message || ''));
    return m ? m[1] : '';
  }

  // Answers that mean the same on every call. Returns true when handled.
  function handleCommon(r) {
    switch (r.status) {
      case 401:
        logout(t('login.expired'));
        return true;
      case 429:
        showBanner(t('login.limited', { n: r.retryAfter || '60' }));
        return true;
      case 503:
        showBanner(t('admin.storeDown', { msg: r.message }));
        return true;
      case 0:
        showBanner(t('admin.unreachable'));
        return true;
    }
    if (r.status >= 500) {
      showBanner(t('admin.error', { status: r.status, msg: r.message }));
      return true;
    }
    return false;
  }

  function showBanner(msg) {
    const b = $('banner');
    b.textContent = msg;
    b.hidden = !msg;
  }

  // The editor of a whole mapping object: who may call (auth), its targets
  // in order (URL, weight, auth_style and the upstream key, write-only),
  // the options balance, retry_on and stream_idle_timeout, and the limits
  // rpm, tpm and concurrency (SPEC §11; empty or 0: none).
  //
  // A target's key is sent only when typed ("key": "…") or removed
  // ("key": ""); otherwise it is left out, and the server keeps the stored
  // key of a target whose URL at that position is unchanged (SPEC §9).
  //
  // idBase makes the ids of its fields unique on the page. onEnter, when
  // given, is called on Enter in a text field (the add form submits by
  // itself). The returned object's body() gives the request body, or
  // shows a local error and returns null.
  function makeEditor(idBase, m, onEnter) {
    const draft = {
      targets: m.targets.map((tg, i) => ({ ...tg, weight: String(tg.weight), was: i, wasURL: tg.url, key_new: '', key_remove: false })),
      balance: m.balance,
      retry_on: m.retry_on.join(', '),
      stream_idle_timeout: zeroDuration(m.stream_idle_timeout) ? '0s' : m.stream_idle_timeout,
      auth: m.auth,
      limits: { rpm: String(m.limits.rpm), tpm: String(m.limits.tpm), concurrency: String(m.limits.concurrency) },
    };
    const errors = new Map(); // field key -> message
    const root = el('div', { className: 'editor' });

    function fieldId(key) {
      return idBase + '-' + key.replace(/[^A-Za-z0-9]+/g, '-');
    }

    // input builds a labelled text field bound to get/set, with its error
    // line under it.
    function input(key, labelNodes, value, set, attrs, hintText) {
      const id = fieldId(key);
      const err = el('p', { className: 'field-error', id: id + '-error', 'aria-live': 'polite' }, errors.get(key) || '');
      const described = [hintText ? id + '-hint' : '', id + '-error'].filter(Boolean).join(' ');
      const inp = el('input', {
        id, type: 'text', autocomplete: 'off', spellcheck: false, value,
        dataset: { field: key }, 'aria-describedby': described, 'aria-invalid': String(errors.has(key)), ...attrs,
      });
      inp.addEventListener('input', () => {
        set(inp.value);
        if (errors.delete(key)) {
          setText(err, '');
          inp.setAttribute('aria-invalid', 'false');
        }
      });
      if (onEnter) {
        inp.addEventListener('keydown', (e) => {
          if (e.key === 'Enter') { e.preventDefault(); onEnter(); }
        });
      }
      return el('div', { className: 'field' },
        el('label', { htmlFor: id }, ...labelNodes),
        inp,
        hintText ? el('p', { className: 'hint', id: id + '-hint' }, hintText) : null,
        err);
    }

    // select builds a labelled <select> of options [[value, text], …]
    // bound to set, with its error line; a value not among the options
    // (from a newer server) is kept as an option of its own.
    function select(key, labelNodes, options, value, set, attrs, hintText) {
      const id = fieldId(key);
      const err = el('p', { className: 'field-error', id: id + '-error', 'aria-live': 'polite' }, errors.get(key) || '');
      const described = [hintText ? id + '-hint' : '', id + '-error'].filter(Boolean).join(' ');
      const sel = el('select', { id, dataset: { field: key }, 'aria-describedby': described, 'aria-invalid': String(errors.has(key)), ...attrs },
        ...options.map(([v, text]) => el('option', { value: v }, text)));
      if (!options.some(([v]) => v === value)) sel.append(el('option', { value }, value));
      sel.value = value;
      sel.addEventListener('change', () => {
        if (errors.delete(key)) {
          setText(err, '');
          sel.setAttribute('aria-invalid', 'false');
        }
        set(sel.value);
      });
      return el('div', { className: 'field' },
        el('label', { htmlFor: id }, ...labelNodes),
        sel,
        hintText ? el('p', { className: 'hint', id: id + '-hint' }, hintText) : null,
        err);
    }

    function move(i, d) {
      const j = i + d;
      if (j < 0 || j >= draft.targets.length) return;
      const list = draft.targets;
      [list[i], list[j]] = [list[j], list[i]];
      errors.clear();
      // Focus stays on the button pressed, now on the moved target, unless
      // that target reached the end of the list.
      const atEnd = (d < 0 && j === 0) || (d > 0 && j === list.length - 1);
      render('[data-move="' + (atEnd ? -d : d) + '"][data-index="' + j + '"]');
      ui.announce(t('ed.moved', { n: i + 1, m: j + 1 }));
    }

    function remove(i) {
      if (draft.targets.length <= 1) return;
      draft.targets.splice(i, 1);
      errors.clear();
      const next = Math.min(i, draft.targets.length - 1);
      render('#' + CSS.escape(fieldId('targets[' + next + '].url')));
      ui.announce(t('ed.removed', { n: i + 1 }));
    }

    function addTarget() {
      draft.targets.push({ url: '', weight: '1', auth_style: '', key_set: false, key_hint: '', was: -1, wasURL: '', key_new: '', key_remove: false });
      errors.delete('targets');
      render('#' + CSS.escape(fieldId('targets[' + (draft.targets.length - 1) + '].url')));
    }

    function targetItem(tg, i) {
      const n = i + 1;
      const count = draft.targets.length;
      const label = (text) => [el('span', { className: 'sr-only' }, t('ed.targetN', { n }) + ' '), text];
      const url = input('targets[' + i + '].url', label(t('ed.url')), tg.url, (v) => { tg.url = v; },
        { inputMode: 'url', placeholder: 'https://api.example.com', className: 'tgt-url' });
      url.classList.add('wide');
      const weight = input('targets[' + i + '].weight', label(t('ed.weight')), tg.weight, (v) => { tg.weight = v; },
        { inputMode: 'numeric', className: 'tgt-weight' });
      weight.classList.add('narrow');
      const style = select('targets[' + i + '].auth_style', label(t('ed.style')), AUTH_STYLES.map((v) => [v, t(STYLE_LABELS[v])]),
        tg.auth_style, (v) => { tg.auth_style = v; }, { className: 'tgt-style', disabled: draft.auth !== 'keys' });
      style.classList.add('stylef');
      const key = keyField(tg, i, label);
      const btn = (text, aria, action, props) => el('button', { type: 'button', 'aria-label': aria, title: aria, ...props, dataset: { index: String(i), ...action } }, text);
      const up = btn('↑', t('ed.up', { n }), { move: '-1' }, { className: 'icon', disabled: i === 0, onclick: () => move(i, -1) });
      const down = btn('↓', t('ed.down', { n }), { move: '1' }, { className: 'icon', disabled: i === count - 1, onclick: () => move(i, 1) });
      const rm = btn(t('ed.remove'), t('ed.removeN', { n }), { remove: '1' }, { className: 'danger-outline', disabled: count === 1, onclick: () => remove(i) });
      return el('li', { className: 'tgt', dataset: { index: String(i) } },
        el('div', { className: 'tgt-head' },
          el('span', { className: 'tgt-num', 'aria-hidden': 'true' }, String(n)),
          tg.key_set ? el('span', { className: 'tag' }, t('ed.keyTag', { hint: tg.key_hint || '…' })) : null,
          el('span', { className: 'grow' }),
          el('div', { className: 'tgt-actions', role: 'group', 'aria-label': t('ed.targetN', { n }) }, up, down, rm)),
        el('div', { className: 'tgt-fields' }, url, weight, style, key));
    }

    // keyField is the write-only upstream key of target i: empty, with the
    // stored key's hint beside it; typing replaces the key, Remove drops
    // it. Without auth "keys" no key can be typed, but a stored one can
    // still be removed (the server refuses a key on a passthrough mapping).
    function keyField(tg, i, label) {
      const n = i + 1;
      const keysOn = draft.auth === 'keys';
      const hint = tg.key_hint || '…';
      const lost = tg.key_set && (tg.was !== i || tg.url !== tg.wasURL);
      const stored = tg.key_set && !lost;
      let note;
      if (tg.key_remove) note = t('ed.keyRemoving', { hint });
      else if (lost) note = t('ed.keyLost');
      else if (!keysOn) note = stored ? t('ed.keyOff', { hint }) : t('ed.keyNeedsKeys');
      else if (tg.key_new) note = stored ? t('ed.keyReplacing', { hint }) : t('ed.keyNew');
      else note = stored ? t('ed.keySet', { hint }) : t('ed.keyEmpty');
      const f = input('targets[' + i + '].key', label(t('ed.key')), tg.key_new, (v) => {
        const had = Boolean(tg.key_new.trim());
        tg.key_new = v;
        // The note says what a save does with the key; refresh it when
        // that changes, without losing the caret.
        if (had !== Boolean(v.trim())) {
          const h = root.querySelector('#' + CSS.escape(fieldId('targets[' + i + '].key') + '-hint'));
          if (h) setText(h, v.trim() ? (stored ? t('ed.keyReplacing', { hint }) : t('ed.keyNew')) : (stored ? t('ed.keySet', { hint }) : t('ed.keyEmpty')));
        }
      }, {
        type: 'password', autocomplete: 'new-password', className: 'tgt-key',
        disabled: !keysOn || tg.key_remove,
        placeholder: stored && !tg.key_remove ? hint : t('ed.keyPlaceholder'),
      }, note);
      f.classList.add('keyf');
      if (stored || tg.key_remove) {
        const toggle = el('button', {
          type: 'button', className: 'link-btn key-toggle', dataset: { keyToggle: String(i) },
          'aria-label': t(tg.key_remove ? 'ed.keyKeepN' : 'ed.keyRemoveN', { n, hint }),
          onclick: () => {
            tg.key_remove = !tg.key_remove;
            if (tg.key_remove) tg.key_new = '';
            errors.delete('targets[' + i + '].key');
            render('[data-key-toggle="' + i + '"]');
          },
        }, t(tg.key_remove ? 'ed.keyKeep' : 'ed.keyRemove'));
        f.append(el('div', {}, toggle));
      }
      return f;
    }

    function render(focusSelector) {
      const balanceId = fieldId('balance');
      const balanceErr = el('p', { className: 'field-error', id: balanceId + '-error', 'aria-live': 'polite' }, errors.get('balance') || '');
      const balance = el('select', { id: balanceId, dataset: { field: 'balance' }, 'aria-describedby': balanceId + '-hint ' + balanceId + '-error', 'aria-invalid': String(errors.has('balance')) },
        el('option', { value: 'failover' }, t('ed.failover')),
        el('option', { value: 'weighted' }, t('ed.weighted')));
      if (draft.balance !== 'failover' && draft.balance !== 'weighted') balance.append(el('option', { value: draft.balance }, draft.balance));
      balance.value = draft.balance;
      balance.addEventListener('change', () => {
        draft.balance = balance.value;
        errors.delete('balance');
        setText(balanceErr, '');
        balance.setAttribute('aria-invalid', 'false');
      });
      const general = el('p', { className: 'field-error', 'aria-live': 'polite', dataset: { field: '' } }, errors.get('') || '');
      const auth = select('auth', [t('ed.auth')], [['passthrough', t('ed.authPassthrough')], ['keys', t('ed.authKeys')]], draft.auth, (v) => {
        draft.auth = v;
        render('#' + CSS.escape(fieldId('auth')));
      }, {}, t('ed.authHint'));
      auth.classList.add('auth-field');
      root.replaceChildren(
        auth,
        el('fieldset', { className: 'targets-fs' },
          el('legend', {}, t('ed.targets')),
          el('p', { className: 'hint' }, t('ed.targetsHint')),
          el('ol', { className: 'tgt-list' }, ...draft.targets.map(targetItem)),
          el('p', { className: 'field-error', 'aria-live': 'polite', dataset: { field: 'targets' } }, errors.get('targets') || ''),
          el('button', { type: 'button', className: 'add-target', disabled: draft.targets.length >= 16, onclick: addTarget }, t('ed.addTarget'))),
        el('div', { className: 'opts' },
          el('div', { className: 'field' },
            el('label', { htmlFor: balanceId }, t('ed.balance')),
            balance,
            el('p', { className: 'hint', id: balanceId + '-hint' }, t('ed.balanceHint')),
            balanceErr),
          input('retry_on', [t('ed.retryOn')], draft.retry_on, (v) => { draft.retry_on = v; },
            { inputMode: 'numeric', placeholder: DEFAULT_RETRY.join(', ') }, t('ed.retryHint')),
          input('stream_idle_timeout', [t('ed.idle')], draft.stream_idle_timeout, (v) => { draft.stream_idle_timeout = v; },
            { placeholder: '0s' }, t('ed.idleHint'))),
        el('fieldset', { className: 'limits-fs' },
          el('legend', {}, t('ed.limits')),
          el('p', { className: 'hint' }, t('ed.limitsHint')),
          el('div', { className: 'limit-fields' },
            ...LIMITS.map((f) => input('limits.' + f, [t(LIMIT_LABELS[f])], draft.limits[f], (v) => { draft.limits[f] = v; },
              { inputMode: 'numeric', placeholder: '0' })))),
        el('p', { className: 'hint' }, t('ed.keyNote')),
        general);
      if (focusSelector) {
        const f = root.querySelector(focusSelector);
        if (f && !f.disabled) f.focus();
        else {
          const first = root.querySelector('input.tgt-url');
          if (first) first.focus();
        }
      }
    }

    // isPlain is true when the draft says what the one-field form says.
    function isPlain() {
      return draft.targets.length === 1 && !draft.targets[0].key_set && !draft.targets[0].auth_style &&
        !draft.targets[0].key_new.trim() && !draft.targets[0].key_remove &&
        ['', '1'].includes(draft.targets[0].weight.trim()) && draft.balance === 'failover' &&
        sameList(parseRetry(draft.retry_on) || [], DEFAULT_RETRY) && zeroDuration(draft.stream_idle_timeout) &&
        draft.auth === 'passthrough' && LIMITS.every((f) => /^\s*0*\s*$/.test(draft.limits[f]));
    }

    // parseLimits returns the limits to send (empty means 0), adding to
    // found each that is not a whole number.
    function parseLimits(found) {
      const out = {};
      for (const f of LIMITS) {
        const v = draft.limits[f].trim();
        if (v !== '' && !/^\d+$/.test(v)) found.push({ field: 'limits.' + f, message: t('keys.limitBad', { field: 'limits.' + f }) });
        out[f] = v === '' ? 0 : Number(v);
      }
      return out;
    }

    function parseRetry(s) {
      const parts = String(s).split(/[\s,;]+/).filter(Boolean);
      if (!parts.every((p) => /^\d+$/.test(p))) return null;
      return parts.map(Number);
    }

    // body returns the mapping object to send, without prefix: the
    // original form {target} when the draft is plain (so a server from
    // before SPEC §9 takes it too), or null after showing every local
    // error at once (focus stays put when focus is false).
    function body(focus = true) {
      clearErrors();
      if (isPlain()) return { target: draft.targets[0].url.trim() };
      const found = []; // in the order of the fields, as the server's
      const targets = [];
      for (const [i, tg] of draft.targets.entries()) {
        const out = { url: tg.url.trim() };
        const w = tg.weight.trim();
        if (w !== '') {
          if (!/^-?\d+$/.test(w)) found.push({ field: 'targets[' + i + '].weight', message: t('ed.weightBad') });
          out.weight = Number(w);
        }
        if (tg.auth_style) out.auth_style = tg.auth_style;
        if (tg.key_remove) out.key = '';
        else if (tg.key_new.trim()) out.key = tg.key_new.trim();
        targets.push(out);
      }
      const retry = parseRetry(draft.retry_on);
      if (!retry) found.push({ field: 'retry_on', message: t('ed.retryBad') });
      const limits = parseLimits(found);
      if (found.length) {
        showAll(found, focus);
        return null;
      }
      return {
        targets,
        balance: draft.balance,
        retry_on: retry,
        auth: draft.auth,
        limits,
        stream_idle_timeout: draft.stream_idle_timeout.trim() || '0s',
      };
    }

    // keyOf returns the editor's field for a field the API names
    // ("target" is the first URL), "targets" for the list as a whole, or
    // "" for the editor as a whole.
    function keyOf(field) {
      const m = /^targets\[(\d+)\]\.(\w+)$/.exec(field);
      if (field === 'target') return 'targets[0].url';
      if (m && Number(m[1]) >= draft.targets.length) return 'targets';
      if (m && !['url', 'weight', 'auth_style'].includes(m[2])) return 'targets[' + m[1] + '].key';
      if (!m && !['targets', 'auth', 'balance', 'retry_on', 'stream_idle_timeout', ...LIMITS.map((f) => 'limits.' + f)].includes(field)) return '';
      return field;
    }

    // showAll puts every problem [{field, message}] next to its field at
    // once (two for one field share its line), focuses the first such
    // field unless focus is false, and reports whether any problem has a
    // field of its own in the editor.
    function showAll(list, focus = true) {
      let first = null;
      for (const p of list) {
        const k = keyOf(p.field);
        errors.set(k, errors.has(k) ? errors.get(k) + ' ' + p.message : p.message);
        if (first === null && k !== '' && k !== 'targets') first = k;
      }
      render(focus && first !== null ? '#' + CSS.escape(fieldId(first)) : null);
      return first !== null;
    }

    // clearErrors forgets the problems shown, in place, so that a field
    // being typed in keeps its caret.
    function clearErrors() {
      errors.clear();
      for (const p of root.querySelectorAll('.field-error')) setText(p, '');
      for (const f of root.querySelectorAll('[aria-invalid="true"]')) f.setAttribute('aria-invalid', 'false');
    }

    function firstURL() {
      return draft.targets[0].url;
    }

    render(null);
    return { root, body, showAll, isPlain, firstURL, render: () => render(null), draft };
  }

  function focusFirstURL(editor) {
    const first = editor.root.querySelector('input.tgt-url');
    if (first) first.focus();
  }

  // Login

  function showLogin(message) {
    $('admin').hidden = true;
    $('login').hidden = false;
    setText($('login-error'), message || '');
    $('token').setAttribute('aria-invalid', String(Boolean(message)));
    $('token').focus();
  }

  function showAdmin() {
    $('login').hidden = true;
    $('admin').hidden = false;
    showBanner('');
    renderTable();
    if (requests) requests.setHash(window.location.hash);
    showView(viewOfHash(window.location.hash), false);
  }

  async function login(candidate, quiet) {
    const btn = $('login-btn');
    if (!candidate) {
      showLogin(t('login.empty'));
      return;
    }
    token = candidate;
    btn.disabled = true;
    btn.textContent = t('login.checking');
    const r = await api('GET', '/api/mappings');
    btn.disabled = false;
    btn.textContent = t('login.submit');
    if (r.status === 200 && r.data && typeof r.data.mappings === 'object') {
      ui.session.set(TOKEN_KEY, candidate);
      $('token').value = '';
      setItems(r.data);
      showAdmin();
      // The login button that had focus is gone; start from the heading.
      $('h-admin').focus();
      return;
    }
    token = '';
    if (r.status === 401) {
      ui.session.set(TOKEN_KEY, null);
      showLogin(quiet ? t('login.expired') : t('login.wrong'));
    } else if (r.status === 429) {
      showLogin(t('login.limited', { n: r.retryAfter || '60' }));
    } else if (r.status === 503) {
      showLogin(t('admin.storeDown', { msg: r.message }));
    } else if (r.status === 0) {
      showLogin(t('admin.unreachable'));
    } else {
      showLogin(t('admin.error', { status: r.status, msg: r.message }));
    }
  }

  function logout(message) {
    ui.session.set(TOKEN_KEY, null);
    token = '';
    items.clear();
    mode.clear();
    drafts.clear();
    editors.clear();
    rowErrors.clear();
    for (const tr of rows.values()) tr.remove();
    rows.clear();
    clearAddErrors();
    collapseAdd(true);
    clearKeys();
    if (requests) requests.clear();
    showLogin(message || '');
  }

  async function reload() {
    const r = await api('GET', '/api/mappings');
    if (r.status === 200 && r.data && typeof r.data.mappings === 'object') {
      setItems(r.data);
      renderTable();
      return true;
    }
    handleCommon(r);
    return false;
  }

  // Add

  function setFieldError(input, errEl, msg) {
    setText(errEl, msg || '');
    input.setAttribute('aria-invalid', String(Boolean(msg)));
  }

  function clearAddErrors() {
    setFieldError($('add-prefix'), $('add-prefix-error'), '');
    setFieldError($('add-target'), $('add-target-error'), '');
    setText($('add-error'), '');
  }

  // expandAdd swaps the one URL field for the editor of a whole mapping,
  // its first target's URL the one typed so far.
  function expandAdd() {
    const url = $('add-target').value;
    if (!addEditor) {
      addEditor = makeEditor('add', normalize(null, '', url), null);
      $('add-editor').replaceChildren(addEditor.root);
    } else {
      addEditor.draft.targets[0].url = url;
      addEditor.render();
    }
    setFieldError($('add-target'), $('add-target-error'), '');
    $('add-target-field').hidden = true;
    $('add-editor').hidden = false;
    // The Add button follows the editor, in reading and in tab order.
    $('add-form').classList.add('expanded');
    $('add-editor').after($('add-btn').parentElement);
    $('add-more').setAttribute('aria-expanded', 'true');
    setText($('add-more'), t('add.less'));
    focusFirstURL(addEditor);
  }

  // collapseAdd goes back to the one URL field, which only says as much as
  // the editor when the editor holds a plain mapping; force drops the rest.
  function collapseAdd(force) {
    if (addEditor && !force && !addEditor.isPlain()) {
      setText($('add-error'), t('add.lessRefused'));
      return;
    }
    if (addEditor && !force) $('add-target').value = addEditor.firstURL();
    if (force) {
      addEditor = null;
      $('add-editor').replaceChildren();
    }
    setText($('add-error'), '');
    $('add-target-field').hidden = false;
    $('add-editor').hidden = true;
    $('add-form').classList.remove('expanded');
    $('add-target-field').after($('add-btn').parentElement);
    $('add-more').setAttribute('aria-expanded', 'false');
    setText($('add-more'), t('add.more'));
    if (!force) $('add-target').focus();
  }

  async function addMapping(ev) {
    ev.preventDefault();
    clearAddErrors();
    const prefixIn = $('add-prefix');
    const targetIn = $('add-target');
    const prefix = prefixIn.value.trim();
    const expanded = addEditor !== null && !$('add-editor').hidden;
    let body;
    if (expanded) {
      const b = addEditor.body();
      if (!b) return;
      body = { prefix, ...b };
    } else {
      body = { prefix, target: targetIn.value.trim() };
    }
    const btn = $('add-btn');
    btn.disabled = true;
    const r = await api('POST', '/api/mappings', body);
    btn.disabled = false;
    if (r.status === 201) {
      const answer = r.data && typeof r.data === 'object' && (r.data.targets || r.data.target) ? r.data : body;
      const m = normalize(answer, prefix, body.target);
      items.set(m.prefix, m);
      prefixIn.value = '';
      targetIn.value = '';
      if (expanded) collapseAdd(true);
      showBanner('');
      renderTable();
      const tr = rows.get(m.prefix);
      if (tr) {
        tr.classList.add('fresh');
        tr.scrollIntoView({ block: 'nearest' });
      }
      ui.announce(t('add.done', { prefix: m.prefix }));
      prefixIn.focus();
      return;
    }
    if (handleCommon(r)) return;
    // Every problem beside its field at once; the first field is focused.
    const list = r.status === 409 || (!r.errors && r.code === 'invalid_prefix')
      ? [{ field: 'prefix', message: r.message }] : problems(r);
    const joined = (ps) => ps.map((p) => p.message).join(' ');
    const onPrefix = list.filter((p) => p.field === 'prefix');
    const rest = list.filter((p) => p.field !== 'prefix');
    if (onPrefix.length) setFieldError(prefixIn, $('add-prefix-error'), joined(onPrefix));
    const prefixFirst = list[0].field === 'prefix';
    if (expanded) {
      if (rest.length && !addEditor.showAll(rest, !prefixFirst) && !prefixFirst) focusFirstURL(addEditor);
    } else {
      const isTarget = (p) => /^targets?\b/.test(p.field) || (!r.errors && r.code === 'invalid_target');
      const onTarget = rest.filter(isTarget);
      if (onTarget.length) setFieldError(targetIn, $('add-target-error'), joined(onTarget));
      setText($('add-error'), joined(rest.filter((p) => !isTarget(p))));
      if (!prefixFirst && onTarget.length) targetIn.focus();
    }
    if (prefixFirst) prefixIn.focus();
  }

  // Edit and delete

  function afterSave(prefix, answer, body) {
    const m = normalize(answer && typeof answer === 'object' && (answer.targets || answer.target) ? answer : body, prefix, body.target);
    m.prefix = prefix;
    items.set(prefix, m);
    mode.delete(prefix);
    drafts.delete(prefix);
    editors.delete(prefix);
    rowErrors.delete(prefix);
    showBanner('');
    renderRow(prefix, 'edit');
    ui.announce(t('row.saved', { prefix }));
  }

  async function saveEdit(prefix) {
    const target = (drafts.get(prefix) ?? (items.has(prefix) ? items.get(prefix).targets[0].url : '')).trim();
    const body = { target };
    const r = await api('PUT', mappingPath(prefix), body);
    if (r.status === 200) {
      afterSave(prefix, r.data, body);
      return;
    }
    if (r.status === 404) {
      await reload();
      showBanner(t('row.gone', { prefix }));
      return;
    }
    if (handleCommon(r)) return;
    rowErrors.set(prefix, r.message);
    renderRow(prefix, 'input');
  }

  async function saveFull(prefix) {
    const editor = editors.get(prefix);
    if (!editor) return;
    const body = editor.body();
    if (!body) return;
    const r = await api('PUT', mappingPath(prefix), body);
    if (r.status === 200) {
      afterSave(prefix, r.data, body);
      return;
    }
    if (r.status === 404) {
      await reload();
      showBanner(t('row.gone', { prefix }));
      return;
    }
    if (handleCommon(r)) return;
    if (!editor.showAll(problems(r))) focusFirstURL(editor);
  }

  async function confirmDelete(prefix) {
    const r = await api('DELETE', mappingPath(prefix));
    if (r.status === 200 || r.status === 404) {
      items.delete(prefix);
      mode.delete(prefix);
      drafts.delete(prefix);
      editors.delete(prefix);
      rowErrors.delete(prefix);
      showBanner('');
      renderTable();
      ui.announce(t('row.deleted', { prefix }));
      $('map-filter').value ? $('map-filter').focus() : $('add-prefix').focus();
      return;
    }
    if (handleCommon(r)) return;
    showBanner(t('admin.error', { status: r.status, msg: r.message }));
  }

  function setMode(prefix, m, focus) {
    if (m) mode.set(prefix, m); else mode.delete(prefix);
    if (m !== 'edit') {
      drafts.delete(prefix);
      rowErrors.delete(prefix);
    }
    if (m !== 'full') editors.delete(prefix);
    renderRow(prefix, focus);
  }

  // openFull edits the whole mapping object of prefix; url, when given, is
  // the first target's URL typed so far in the one-field editor.
  function openFull(prefix, url) {
    const m = items.get(prefix);
    if (!m) return;
    const editor = makeEditor('row-' + prefix.replace(/[^A-Za-z0-9_-]/g, '_'), m, () => saveFull(prefix));
    if (url !== undefined) editor.draft.targets[0].url = url;
    editor.render();
    mode.set(prefix, 'full');
    drafts.delete(prefix);
    rowErrors.delete(prefix);
    editors.set(prefix, editor);
    renderRow(prefix, 'input');
  }

  function startEdit(prefix) {
    const m = items.get(prefix);
    if (m && !plain(m)) openFull(prefix);
    else setMode(prefix, 'edit', 'input');
  }

  // Views: Mappings, Proxy keys and Requests, as tabs; #keys and
  // #requests (with its filters after it) in the address open the other
  // two, so a reload or a copied address stays where it was.

  const VIEWS = ['mappings', 'keys', 'requests'];
  const VIEW_TITLES = { mappings: 'admin.title', keys: 'keys.listTitle', requests: 'req.title' };
  let view = 'mappings';
  let requests = null;               // the Requests view (requests.js)

  function viewOfHash(hash) {
    if (hash === '#keys') return 'keys';
    if (/^#requests(\?|$)/.test(hash)) return 'requests';
    return 'mappings';
  }

  function showView(next, focusTab) {
    view = VIEWS.includes(next) && (next !== 'requests' || requests) ? next : 'mappings';
    for (const tab of document.querySelectorAll('[role="tab"][data-view]')) {
      const on = tab.dataset.view === view;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      if (on && focusTab) tab.focus();
    }
    for (const v of VIEWS) $('view-' + v).hidden = view !== v;
    const h = $('h-admin');
    h.dataset.i18n = VIEW_TITLES[view];
    setText(h, t(h.dataset.i18n));
    $('map-count').hidden = view !== 'mappings';
    const hash = view === 'keys' ? '#keys' : view === 'requests' ? requests.hash() : '';
    if (window.location.hash !== hash) history.replaceState(null, '', window.location.pathname + window.location.search + hash);
    showBanner('');
    if (view === 'keys' && token) loadKeys();
    if (requests) {
      if (view === 'requests' && token) requests.show();
      else requests.hide();
    }
  }

  // Proxy keys (SPEC §10)

  const keys = new Map();            // id -> key as GET /api/keys lists it
  const keyRows = new Map();         // id -> <tr>
  const keyConfirm = new Set();      // ids asking "delete?"
  let keysLoaded = false;
  let secret = '';                   // the new key's secret while it is shown
  let secretName = '';               // and that key's name

  function keyPath(id) {
    return '/api/keys/' + encodeURIComponent(id);
  }

  // when reads a time of the keys API: Unix seconds or RFC 3339; null
  // when absent or unreadable.
  function when(v) {
    if (v === null || v === undefined || v === '' || v === 0) return null;
    const ms = typeof v === 'number' ? v * 1000 : Date.parse(String(v));
    return Number.isFinite(ms) ? new Date(ms) : null;
  }

  function keyStatus(k) {
    if (k.disabled) return 'disabled';
    const exp = when(k.expires_at);
    if (exp && exp.getTime() <= Date.now()) return 'expired';
    return 'active';
  }

  function limitsText(l) {
    const lim = l && typeof l === 'object' ? l : {};
    const parts = [];
    if (ui.num(lim.rpm) > 0) parts.push(t('keys.rpmN', { n: fmt.compact(lim.rpm) }));
    if (ui.num(lim.tpm) > 0) parts.push(t('keys.tpmN', { n: fmt.compact(lim.tpm) }));
    if (ui.num(lim.concurrency) > 0) parts.push(t('keys.concN', { n: fmt.int(lim.concurrency) }));
    return parts.length ? parts.join(' · ') : t('keys.noLimits');
  }

  function keysOff(on) {
    const p = $('keys-off');
    p.hidden = !on;
    setText(p, on ? t('keys.unsupported') : '');
    $('key-add-btn').disabled = on;
  }

  async function loadKeys() {
    const r = await api('GET', '/api/keys');
    if (r.status === 200 && r.data && Array.isArray(r.data.keys)) {
      keysOff(false);
      keys.clear();
      for (const k of r.data.keys) if (k && k.id) keys.set(String(k.id), k);
      keysLoaded = true;
      renderKeys();
      return;
    }
    if (r.status === 404 || r.status === 405) {
      keysOff(true);
      keys.clear();
      keysLoaded = true;
      renderKeys();
      return;
    }
    handleCommon(r) || showBanner(t('admin.error', { status: r.status, msg: r.message }));
  }

  function renderKeys() {
    const body = $('key-body');
    for (const [id, tr] of keyRows) {
      if (!keys.has(id)) {
        tr.remove();
        keyRows.delete(id);
        keyConfirm.delete(id);
      }
    }
    // Newest first: the one just made is on top.
    const ids = [...keys.keys()].sort((a, b) => {
      const ta = when(keys.get(a).created_at), tb = when(keys.get(b).created_at);
      return (tb ? tb.getTime() : 0) - (ta ? ta.getTime() : 0) || a.localeCompare(b);
    });
    ids.forEach((id, i) => {
      let tr = keyRows.get(id);
      if (!tr) {
        tr = el('tr', { dataset: { key: id } });
        keyRows.set(id, tr);
      }
      renderKeyRow(id);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    setText($('key-count'), keysLoaded ? t('keys.count', { n: fmt.int(keys.size) }) : '');
    $('key-empty').hidden = !keysLoaded || keys.size !== 0;
  }

  // renderKeyRow rebuilds one key's cells; focus names the control to
  // focus afterwards: 'toggle', 'delete', 'cancel'.
  function renderKeyRow(id, focus) {
    const tr = keyRows.get(id);
    const k = keys.get(id);
    if (!tr || !k) return;
    const label = (key) => ({ dataset: { label: t(key) } });
    const status = keyStatus(k);
    const name = String(k.name || '');
    const prefixes = Array.isArray(k.prefixes) ? k.prefixes.map(String) : [];
    const used = when(k.last_used_at);
    const exp = when(k.expires_at);
    tr.className = (status !== 'active' ? 'key-' + status : '') + (keyConfirm.has(id) ? ' mode-confirm' : '');
    let toFocus = null;
    let actions;
    if (keyConfirm.has(id)) {
      const cancel = el('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => { keyConfirm.delete(id); renderKeyRow(id, 'delete'); } }, t('row.cancel'));
      actions = [
        el('span', { className: 'confirm-text', role: 'status' }, t('keys.confirm', { name })),
        el('button', { type: 'button', className: 'danger', dataset: { action: 'confirm-delete' }, onclick: () => deleteKey(id) }, t('row.confirmBtn')),
        cancel,
      ];
      if (focus === 'cancel') toFocus = cancel;
    } else {
      const toggle = el('button', {
        type: 'button', dataset: { action: k.disabled ? 'enable' : 'disable' },
        'aria-label': t(k.disabled ? 'keys.enable' : 'keys.disable') + ' ' + name,
        onclick: () => setKeyDisabled(id, !k.disabled),
      }, t(k.disabled ? 'keys.enable' : 'keys.disable'));
      const del = el('button', {
        type: 'button', className: 'danger-outline', dataset: { action: 'delete' }, 'aria-label': t('row.delete') + ' ' + name,
        onclick: () => { keyConfirm.add(id); renderKeyRow(id, 'cancel'); },
      }, t('row.delete'));
      actions = [toggle, del];
      if (focus === 'toggle') toFocus = toggle;
      if (focus === 'delete') toFocus = del;
    }
    const actTd = el('td', label('list.actions'), el('div', { className: 'actions' }, ...actions));
    actTd.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && keyConfirm.has(id)) { e.preventDefault(); keyConfirm.delete(id); renderKeyRow(id, 'delete'); }
    });
    tr.replaceChildren(
      el('td', { className: 'key-name', ...label('keys.colName') }, name),
      el('td', { className: 'mono key-hint', ...label('keys.colHint') }, String(k.hint || '')),
      el('td', { className: 'key-prefixes', ...label('keys.colPrefixes') }, prefixes.length ? el('span', { className: 'mono' }, prefixes.join(', ')) : el('span', { className: 'muted' }, t('keys.allMappings'))),
      el('td', { className: 'key-limits', ...label('keys.colLimits') }, limitsText(k.limits)),
      el('td', { className: 'key-used', ...label('keys.colUsed'), title: used ? fmt.dateTime(used.getTime() / 1000) : '' }, used ? fmt.ago(used.getTime() / 1000) : t('keys.never')),
      el('td', { className: 'key-expires', ...label('keys.colExpires') }, exp ? fmt.date(exp, { dateStyle: 'medium', timeStyle: 'short' }) : t('keys.never')),
      el('td', { className: 'key-status', ...label('keys.colStatus') }, el('span', { className: 'status-tag ' + status }, t(STATUS_LABELS[status]))),
      actTd);
    if (toFocus) toFocus.focus();
  }

  async function setKeyDisabled(id, disabled) {
    const r = await api('PATCH', keyPath(id), { disabled });
    const k = keys.get(id);
    if (r.status === 200) {
      keys.set(id, r.data && typeof r.data === 'object' && r.data.id ? r.data : { ...k, disabled });
      showBanner('');
      renderKeyRow(id, 'toggle');
      ui.announce(t(disabled ? 'keys.disabledDone' : 'keys.enabledDone', { name: k ? k.name : id }));
      return;
    }
    if (r.status === 404) {
      await loadKeys();
      showBanner(t('keys.gone'));
      return;
    }
    if (handleCommon(r)) return;
    showBanner(t('admin.error', { status: r.status, msg: r.message }));
  }

  async function deleteKey(id) {
    const k = keys.get(id);
    const r = await api('DELETE', keyPath(id));
    if (r.status === 200 || r.status === 204 || r.status === 404) {
      keys.delete(id);
      showBanner('');
      renderKeys();
      ui.announce(t('keys.deleted', { name: k ? k.name : id }));
      $('key-name').focus();
      return;
    }
    if (handleCommon(r)) return;
    showBanner(t('admin.error', { status: r.status, msg: r.message }));
  }

  // The create form's fields by the name the API's messages use.
  const KEY_FIELDS = {
    name: 'key-name', prefixes: 'key-prefixes', expires_at: 'key-expires',
    'limits.rpm': 'key-rpm', 'limits.tpm': 'key-tpm', 'limits.concurrency': 'key-concurrency',
  };

  function clearKeyErrors() {
    for (const id of Object.values(KEY_FIELDS)) setFieldError($(id), $(id + '-error'), '');
    setText($('key-form-error'), '');
  }

  // keyFieldErrors shows every problem [{field, message}] beside the
  // field it names ("prefixes[0]" → the prefixes field), or under the
  // form, all at once, and focuses the first such field.
  function keyFieldErrors(list) {
    const shown = new Map(); // element id -> messages
    for (const p of list) {
      const id = KEY_FIELDS[p.field.replace(/\[\d+\]$/, '')] || 'key-form';
      shown.set(id, [...(shown.get(id) || []), p.message]);
    }
    for (const [id, msgs] of shown) {
      if (id === 'key-form') setText($('key-form-error'), msgs.join(' '));
      else setFieldError($(id), $(id + '-error'), msgs.join(' '));
    }
    const first = [...shown.keys()].find((id) => id !== 'key-form');
    if (first) $(first).focus();
  }

  async function createKey(ev) {
    ev.preventDefault();
    clearKeyErrors();
    const body = { name: $('key-name').value.trim() };
    const prefixes = $('key-prefixes').value.split(/[\s,]+/).filter(Boolean);
    body.prefixes = prefixes;
    const local = []; // what is wrong before sending, every field at once
    const limits = {};
    for (const f of LIMITS) {
      const v = $('key-' + f).value.trim();
      if (v !== '' && !/^\d+$/.test(v)) local.push({ field: 'limits.' + f, message: t('keys.limitBad', { field: 'limits.' + f }) });
      limits[f] = v === '' ? 0 : Number(v);
    }
    body.limits = limits;
    const expires = $('key-expires').value;
    body.expires_at = null;
    if (expires) {
      const d = new Date(expires); // datetime-local: the reader's local time
      if (!Number.isFinite(d.getTime())) local.push({ field: 'expires_at', message: t('keys.expiresBad') });
      else body.expires_at = d.toISOString().replace(/\.\d{3}Z$/, 'Z');
    }
    if (local.length) {
      keyFieldErrors(local);
      return;
    }
    body.disabled = $('key-disabled').checked;
    const btn = $('key-add-btn');
    btn.disabled = true;
    const r = await api('POST', '/api/keys', body);
    btn.disabled = false;
    if (r.status === 201 && r.data && typeof r.data === 'object' && r.data.id) {
      const { key, ...listed } = r.data;
      keys.set(String(r.data.id), listed);
      keysLoaded = true;
      showBanner('');
      renderKeys();
      const tr = keyRows.get(String(r.data.id));
      if (tr) tr.classList.add('fresh');
      $('key-form').reset();
      showSecret(typeof key === 'string' ? key : '', listed.name);
      return;
    }
    if (r.status === 404 || r.status === 405) {
      keysOff(true);
      return;
    }
    if (handleCommon(r)) return;
    keyFieldErrors(problems(r));
  }

  // showSecret shows a new key's secret once; hideSecret forgets it.
  function showSecret(value, name) {
    secret = value;
    secretName = String(name || '');
    setText($('key-secret-value'), value);
    setText($('key-secret-for'), t('keys.secretFor', { name: secretName }));
    const copy = el('button', { type: 'button', className: 'copy primary-copy', id: 'key-secret-copy-btn', dataset: { whatKey: 'keys.secretWhat' } }, t('copy'));
    copy.setAttribute('aria-label', t('copy.label', { what: t('keys.secretWhat') }));
    let timer = 0;
    copy.addEventListener('click', async () => {
      const ok = await ui.copyText(secret);
      window.clearTimeout(timer);
      copy.textContent = ok ? t('copied') : t('copy.failed');
      copy.classList.toggle('copied', ok);
      copy.classList.toggle('failed', !ok);
      // Announce that it was copied, never the secret itself.
      if (ok) ui.announce(t('keys.secretCopied'));
      timer = window.setTimeout(() => {
        copy.classList.remove('copied', 'failed');
        copy.textContent = t('copy');
      }, 1600);
    });
    $('key-secret-copy').replaceChildren(copy);
    $('key-secret').hidden = false;
    $('key-secret').focus();
  }

  function hideSecret() {
    secret = '';
    secretName = '';
    setText($('key-secret-value'), '');
    setText($('key-secret-for'), '');
    $('key-secret-copy').replaceChildren();
    $('key-secret').hidden = true;
  }

  function clearKeys() {
    hideSecret();
    keys.clear();
    keyConfirm.clear();
    for (const tr of keyRows.values()) tr.remove();
    keyRows.clear();
    keysLoaded = false;
    clearKeyErrors();
    $('key-form').reset();
    renderKeys();
  }

  // Table, keyed by prefix; a row is rebuilt only when it changes.

  function renderTable() {
    const prefixes = [...items.keys()].sort();
    const body = $('map-body');
    for (const [prefix, tr] of rows) {
      if (!items.has(prefix)) {
        tr.remove();
        rows.delete(prefix);
        mode.delete(prefix);
        drafts.delete(prefix);
        editors.delete(prefix);
        rowErrors.delete(prefix);
      }
    }
    prefixes.forEach((prefix, i) => {
      let tr = rows.get(prefix);
      if (!tr) {
        tr = el('tr', { dataset: { prefix } });
        rows.set(prefix, tr);
        renderRow(prefix);
      } else if (tr.dataset.sig !== JSON.stringify(items.get(prefix)) && !['edit', 'full'].includes(mode.get(prefix))) {
        renderRow(prefix);
      }
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    applyFilter();
  }

  function applyFilter() {
    const q = $('map-filter').value.trim().toLowerCase();
    let shown = 0;
    for (const [prefix, tr] of rows) {
      const m = items.get(prefix);
      const hit = !q || prefix.toLowerCase().includes(q) || (m && m.targets.some((tg) => tg.url.toLowerCase().includes(q)));
      tr.hidden = !hit;
      if (hit) shown++;
    }
    const n = rows.size;
    setText($('map-count'), q ? t('admin.countFiltered', { shown: fmt.int(shown), n: fmt.int(n) }) : t('admin.count', { n: fmt.int(n) }));
    const empty = $('map-empty');
    empty.hidden = n !== 0 && shown !== 0;
    setText(empty, n === 0 ? t('list.none') : t('list.noMatch'));
  }

  // targetsView shows the targets and options of a mapping that is not
  // plain: the URLs in order, each with its weight and key hint, and a
  // line of the options that differ from their defaults.
  function targetsView(m) {
    const weighted = m.balance === 'weighted';
    const list = el('ol', { className: 'tgt-view' }, ...m.targets.map((tg) => el('li', {},
      el('span', { className: 'mono turl', title: tg.url }, tg.url),
      weighted || tg.weight !== 1 ? el('span', { className: 'tag', title: t('ed.weight') }, t('view.weight', { n: fmt.int(tg.weight) })) : null,
      tg.key_set ? el('span', { className: 'tag', title: t('ed.key') }, t('ed.keyTag', { hint: tg.key_hint || '…' })) : null,
      tg.auth_style ? el('span', { className: 'tag', title: t('ed.style') }, tg.auth_style) : null)));
    const opts = [m.balance === 'weighted' ? t('ed.weighted') : t('ed.failover')];
    if (!sameList(m.retry_on, DEFAULT_RETRY)) opts.push(m.retry_on.length ? t('view.retry', { list: m.retry_on.join(', ') }) : t('view.noRetry'));
    if (!zeroDuration(m.stream_idle_timeout)) opts.push(t('view.idle', { d: m.stream_idle_timeout }));
    if (m.auth !== 'passthrough') opts.push(t('view.auth', { auth: m.auth }));
    return el('div', { className: 'tgt-summary' }, list, el('p', { className: 'opts-line' }, opts.join(' · ')));
  }

  // renderRow rebuilds the cells of one row for its mode. focus names the
  // control to focus afterwards: 'edit', 'delete', 'input', 'cancel'.
  function renderRow(prefix, focus) {
    const tr = rows.get(prefix);
    if (!tr) return;
    const item = items.get(prefix) || normalize(null, prefix, '');
    const target = item.targets[0].url;
    const m = mode.get(prefix);
    tr.dataset.sig = JSON.stringify(item);
    tr.className = m ? 'mode-' + m : '';
    const url = window.location.origin + prefix;
    const label = (key) => ({ dataset: { label: t(key) } });

    const prefixTd = el('td', { className: 'prefix mono', ...label('list.prefix') }, prefix);
    let targetTd;
    let actions;
    let toFocus = null;
    let wide = false;

    if (m === 'full') {
      const editor = editors.get(prefix);
      const form = el('form', { className: 'row-editor', noValidate: true, 'aria-label': t('row.editFull', { prefix }) }, editor.root);
      form.addEventListener('submit', (e) => { e.preventDefault(); saveFull(prefix); });
      form.addEventListener('keydown', (e) => {
        if (e.key === 'Escape') { e.preventDefault(); setMode(prefix, null, 'edit'); }
      });
      targetTd = el('td', { className: 'full', colSpan: 2, ...label('list.target') }, form);
      wide = true;
      actions = [
        el('button', { type: 'button', className: 'primary', dataset: { action: 'save' }, onclick: () => saveFull(prefix) }, t('row.save')),
        el('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => setMode(prefix, null, 'edit') }, t('row.cancel')),
      ];
      if (focus === 'input') toFocus = editor.root.querySelector('input.tgt-url');
    } else if (m === 'edit') {
      const input = el('input', {
        type: 'text', inputMode: 'url', spellcheck: false, autocomplete: 'off',
        value: drafts.has(prefix) ? drafts.get(prefix) : target,
        'aria-label': t('row.editLabel', { prefix }),
        className: 'edit-target',
      });
      const errId = 'err-' + prefix.replace(/[^A-Za-z0-9_-]/g, '_');
      const err = el('p', { className: 'field-error', id: errId, 'aria-live': 'polite' }, rowErrors.get(prefix) || '');
      input.setAttribute('aria-describedby', errId);
      input.setAttribute('aria-invalid', String(rowErrors.has(prefix)));
      input.addEventListener('input', () => drafts.set(prefix, input.value));
      input.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') { e.preventDefault(); saveEdit(prefix); }
        if (e.key === 'Escape') { e.preventDefault(); setMode(prefix, null, 'edit'); }
      });
      const more = el('button', { type: 'button', className: 'link-btn', dataset: { action: 'more' }, 'aria-label': t('row.more', { prefix }), onclick: () => openFull(prefix, input.value) }, t('add.more'));
      targetTd = el('td', { className: 'full', ...label('list.target') }, el('div', { className: 'edit-box' }, input, err, el('div', {}, more)));
      actions = [
        el('button', { type: 'button', className: 'primary', dataset: { action: 'save' }, onclick: () => saveEdit(prefix) }, t('row.save')),
        el('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => setMode(prefix, null, 'edit') }, t('row.cancel')),
      ];
      if (focus === 'input' || focus === undefined) toFocus = input;
    } else {
      targetTd = plain(item)
        ? el('td', { className: 'target mono', title: target, ...label('list.target') }, target)
        : el('td', { className: 'targets', ...label('list.target') }, targetsView(item));
      if (m === 'confirm') {
        const cancel = el('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => setMode(prefix, null, 'delete') }, t('row.cancel'));
        actions = [
          el('span', { className: 'confirm-text', role: 'status' }, t('row.confirm', { prefix })),
          el('button', { type: 'button', className: 'danger', dataset: { action: 'confirm-delete' }, onclick: () => confirmDelete(prefix) }, t('row.confirmBtn')),
          cancel,
        ];
        if (focus === 'cancel') toFocus = cancel;
      } else {
        const edit = el('button', { type: 'button', dataset: { action: 'edit' }, 'aria-label': t('row.edit') + ' ' + prefix, onclick: () => startEdit(prefix) }, t('row.edit'));
        const del = el('button', { type: 'button', className: 'danger-outline', dataset: { action: 'delete' }, 'aria-label': t('row.delete') + ' ' + prefix, onclick: () => setMode(prefix, 'confirm', 'cancel') }, t('row.delete'));
        actions = [edit, del];
        if (focus === 'edit') toFocus = edit;
        if (focus === 'delete') toFocus = del;
      }
    }
    const urlTd = el('td', label('list.url'), el('div', { className: 'urlcell' }, el('span', { className: 'url mono' }, url), ui.copyButton(() => url, prefix)));
    const actTd = el('td', label('list.actions'), el('div', { className: 'actions' }, ...actions));
    actTd.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && mode.get(prefix) === 'confirm') { e.preventDefault(); setMode(prefix, null, 'delete'); }
    });
    // The editor of a whole mapping takes the URL column too.
    if (wide) tr.replaceChildren(prefixTd, targetTd, actTd);
    else tr.replaceChildren(prefixTd, targetTd, urlTd, actTd);
    if (toFocus) toFocus.focus();
    if (toFocus && toFocus.select) toFocus.select();
  }

  document.addEventListener('DOMContentLoaded', () => {
    if (window.requestsView) {
      requests = window.requestsView({
        api,
        unauthorized: handleCommon,
        prefixes: () => [...items.keys()],
        keys: () => [...keys.values()].map((k) => [String(k.id), String(k.name || k.id)]),
        loadKeys,
      });
    } else {
      $('tab-requests').hidden = true;
    }
    // An address pasted into this tab (another view, other filters).
    window.addEventListener('hashchange', () => {
      if (!token) return;
      if (requests) requests.setHash(window.location.hash);
      showView(viewOfHash(window.location.hash), false);
    });
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      login($('token').value.trim(), false);
    });
    $('logout').addEventListener('click', () => logout(''));
    $('add-form').addEventListener('submit', addMapping);
    $('add-more').addEventListener('click', () => {
      if ($('add-more').getAttribute('aria-expanded') === 'true') collapseAdd(false);
      else expandAdd();
    });
    $('map-filter').addEventListener('input', applyFilter);
    const tabs = [...document.querySelectorAll('[role="tab"][data-view]')];
    for (const tab of tabs) {
      tab.addEventListener('click', () => showView(tab.dataset.view, false));
      // Arrow keys move between the tabs (WAI-ARIA tabs pattern).
      tab.addEventListener('keydown', (e) => {
        const i = tabs.indexOf(tab);
        let j = -1;
        if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
        if (e.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
        if (e.key === 'Home') j = 0;
        if (e.key === 'End') j = tabs.length - 1;
        if (j < 0) return;
        e.preventDefault();
        showView(tabs[j].dataset.view, true);
      });
    }
    $('key-form').addEventListener('submit', createKey);
    $('key-secret-done').addEventListener('click', () => {
      hideSecret();
      $('key-name').focus();
    });
    for (const id of Object.values(KEY_FIELDS)) {
      $(id).addEventListener('input', () => setFieldError($(id), $(id + '-error'), ''));
    }
    for (const id of ['add-prefix', 'add-target']) {
      $(id).addEventListener('input', () => setFieldError($(id), $(id + '-error'), ''));
    }
    ui.onLangChange(() => {
      for (const editor of editors.values()) editor.render();
      if (addEditor) addEditor.render();
      setText($('add-more'), t($('add-more').getAttribute('aria-expanded') === 'true' ? 'add.less' : 'add.more'));
      for (const prefix of rows.keys()) renderRow(prefix, null);
      applyFilter();
      renderKeys();
      if (requests) requests.relabel();
      if (!$('keys-off').hidden) keysOff(true);
      if (secret) setText($('key-secret-for'), t('keys.secretFor', { name: secretName }));
      if (!$('login-btn').disabled) $('login-btn').textContent = t('login.submit');
    });
    document.addEventListener('visibilitychange', () => {
      // Pick up changes made elsewhere (another admin, the CLI) on return.
      if (!document.hidden && token && mode.size === 0) reload();
      if (!document.hidden && token && view === 'keys' && keyConfirm.size === 0) loadKeys();
    });
    const saved = ui.session.get(TOKEN_KEY);
    if (saved) login(saved, true);
    else showLogin('');
  });
})();
