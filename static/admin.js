// The admin page: log in with the admin token, then list, add, edit and
// delete mappings through /api/mappings (SPEC §6). The token lives in
// sessionStorage only, so it is gone when the tab closes or on Log out.
// Errors from the API are shown as text next to the field they concern.
'use strict';

(function () {
  const ui = window.ui;
  const { t, el, setText, fmt } = ui;
  const TOKEN_KEY = 'apiproxy.adminToken';

  let token = '';
  let mappings = {};                 // prefix -> target, as the server last said
  const rows = new Map();            // prefix -> <tr>
  const mode = new Map();            // prefix -> 'edit' | 'confirm'
  const drafts = new Map();          // prefix -> target being typed in edit mode
  const rowErrors = new Map();       // prefix -> message under the edit field

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
      return { status: 0, data: null, message: t('admin.unreachable'), code: '' };
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    const err = data && typeof data === 'object' && data.error && typeof data.error === 'object' ? data.error : null;
    return {
      status: res.status,
      data,
      message: err && err.message ? String(err.message) : res.statusText || ('HTTP ' + res.status),
      code: err && err.code ? String(err.code) : '',
      retryAfter: res.headers.get('Retry-After'),
    };
  }

  function mappingPath(prefix) {
    return '/api/mappings/' + prefix.replace(/^\//, '').split('/').map(encodeURIComponent).join('/');
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
      mappings = r.data.mappings || {};
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
    mappings = {};
    mode.clear();
    drafts.clear();
    rowErrors.clear();
    for (const tr of rows.values()) tr.remove();
    rows.clear();
    clearAddErrors();
    showLogin(message || '');
  }

  async function reload() {
    const r = await api('GET', '/api/mappings');
    if (r.status === 200 && r.data && typeof r.data.mappings === 'object') {
      mappings = r.data.mappings || {};
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

  async function addMapping(ev) {
    ev.preventDefault();
    clearAddErrors();
    const prefixIn = $('add-prefix');
    const targetIn = $('add-target');
    const prefix = prefixIn.value.trim();
    const target = targetIn.value.trim();
    const btn = $('add-btn');
    btn.disabled = true;
    const r = await api('POST', '/api/mappings', { prefix, target });
    btn.disabled = false;
    if (r.status === 201) {
      const p = r.data && r.data.prefix ? String(r.data.prefix) : prefix;
      mappings[p] = r.data && r.data.target ? String(r.data.target) : target;
      prefixIn.value = '';
      targetIn.value = '';
      showBanner('');
      renderTable();
      const tr = rows.get(p);
      if (tr) {
        tr.classList.add('fresh');
        tr.scrollIntoView({ block: 'nearest' });
      }
      ui.announce(t('add.done', { prefix: p }));
      prefixIn.focus();
      return;
    }
    if (handleCommon(r)) return;
    if (r.code === 'invalid_prefix' || r.status === 409) {
      setFieldError(prefixIn, $('add-prefix-error'), r.message);
      prefixIn.focus();
    } else if (r.code === 'invalid_target') {
      setFieldError(targetIn, $('add-target-error'), r.message);
      targetIn.focus();
    } else {
      setText($('add-error'), r.message);
    }
  }

  // Edit and delete

  async function saveEdit(prefix) {
    const target = (drafts.get(prefix) ?? mappings[prefix] ?? '').trim();
    const r = await api('PUT', mappingPath(prefix), { target });
    if (r.status === 200) {
      mappings[prefix] = r.data && r.data.target ? String(r.data.target) : target;
      mode.delete(prefix);
      drafts.delete(prefix);
      rowErrors.delete(prefix);
      showBanner('');
      renderRow(prefix, 'edit');
      ui.announce(t('row.saved', { prefix }));
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

  async function confirmDelete(prefix) {
    const r = await api('DELETE', mappingPath(prefix));
    if (r.status === 200 || r.status === 404) {
      delete mappings[prefix];
      mode.delete(prefix);
      drafts.delete(prefix);
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
    renderRow(prefix, focus);
  }

  // Table, keyed by prefix; a row is rebuilt only when it changes.

  function renderTable() {
    const prefixes = Object.keys(mappings).sort();
    const body = $('map-body');
    for (const [prefix, tr] of rows) {
      if (!(prefix in mappings)) {
        tr.remove();
        rows.delete(prefix);
        mode.delete(prefix);
        drafts.delete(prefix);
        rowErrors.delete(prefix);
      }
    }
    prefixes.forEach((prefix, i) => {
      let tr = rows.get(prefix);
      if (!tr) {
        tr = el('tr', { dataset: { prefix } });
        rows.set(prefix, tr);
        renderRow(prefix);
      } else if (tr.dataset.target !== mappings[prefix] && mode.get(prefix) !== 'edit') {
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
      const hit = !q || prefix.toLowerCase().includes(q) || String(mappings[prefix]).toLowerCase().includes(q);
      tr.hidden = !hit;
      if (hit) shown++;
    }
    const n = rows.size;
    setText($('map-count'), q ? t('admin.countFiltered', { shown: fmt.int(shown), n: fmt.int(n) }) : t('admin.count', { n: fmt.int(n) }));
    const empty = $('map-empty');
    empty.hidden = n !== 0 && shown !== 0;
    setText(empty, n === 0 ? t('list.none') : t('list.noMatch'));
  }

  // renderRow rebuilds the cells of one row for its mode. focus names the
  // control to focus afterwards: 'edit', 'delete', 'input', 'cancel'.
  function renderRow(prefix, focus) {
    const tr = rows.get(prefix);
    if (!tr) return;
    const target = mappings[prefix] || '';
    const m = mode.get(prefix);
    tr.dataset.target = target;
    tr.className = m ? 'mode-' + m : '';
    const url = window.location.origin + prefix;
    const label = (key) => ({ dataset: { label: t(key) } });

    const prefixTd = el('td', { className: 'prefix mono', ...label('list.prefix') }, prefix);
    let targetTd;
    let actions;
    let toFocus = null;

    if (m === 'edit') {
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
      targetTd = el('td', { className: 'full', ...label('list.target') }, el('div', { className: 'edit-box' }, input, err));
      actions = [
        el('button', { type: 'button', className: 'primary', dataset: { action: 'save' }, onclick: () => saveEdit(prefix) }, t('row.save')),
        el('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => setMode(prefix, null, 'edit') }, t('row.cancel')),
      ];
      if (focus === 'input' || focus === undefined) toFocus = input;
    } else {
      targetTd = el('td', { className: 'target mono', title: target, ...label('list.target') }, target);
      if (m === 'confirm') {
        const cancel = el('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => setMode(prefix, null, 'delete') }, t('row.cancel'));
        actions = [
          el('span', { className: 'confirm-text', role: 'status' }, t('row.confirm', { prefix })),
          el('button', { type: 'button', className: 'danger', dataset: { action: 'confirm-delete' }, onclick: () => confirmDelete(prefix) }, t('row.confirmBtn')),
          cancel,
        ];
        if (focus === 'cancel') toFocus = cancel;
      } else {
        const edit = el('button', { type: 'button', dataset: { action: 'edit' }, 'aria-label': t('row.edit') + ' ' + prefix, onclick: () => setMode(prefix, 'edit', 'input') }, t('row.edit'));
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
    tr.replaceChildren(prefixTd, targetTd, urlTd, actTd);
    if (toFocus) toFocus.focus();
    if (toFocus && toFocus.select) toFocus.select();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      login($('token').value.trim(), false);
    });
    $('logout').addEventListener('click', () => logout(''));
    $('add-form').addEventListener('submit', addMapping);
    $('map-filter').addEventListener('input', applyFilter);
    for (const id of ['add-prefix', 'add-target']) {
      $(id).addEventListener('input', () => setFieldError($(id), $(id + '-error'), ''));
    }
    ui.onLangChange(() => {
      for (const prefix of rows.keys()) renderRow(prefix, null);
      applyFilter();
      if (!$('login-btn').disabled) $('login-btn').textContent = t('login.submit');
    });
    document.addEventListener('visibilitychange', () => {
      // Pick up changes made elsewhere (another admin, the CLI) on return.
      if (!document.hidden && token && mode.size === 0) reload();
    });
    const saved = ui.session.get(TOKEN_KEY);
    if (saved) login(saved, true);
    else showLogin('');
  });
})();
