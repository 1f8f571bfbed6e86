// Browser tests of the dashboard (/) and the admin page (/admin), in
// Debian's Chromium driven by playwright-core (no downloaded browsers).
//
// The suite builds the Go binary, runs it on a free loopback port with a
// temporary DATA_DIR and ADMIN_TOKEN from an empty working directory (so
// the pages must come from the binary), starts a local upstream, and drives
// both pages. Every wait has a deadline; every process started here is
// killed when the suite ends, whatever happened.
//
// Screenshots and measured figures go to e2e/artifacts/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(here, 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--no-proxy-server',
];
const TOKEN = 'e2e-admin-token-' + Math.random().toString(36).slice(2, 12);
const WAIT = 20000; // deadline of one wait in the browser
const REFRESH_WAIT = 30000; // the dashboard polls /stats every 5 s
// The dashboard asks for /stats?range=…: a played-back /stats matches it.
const STATS_URL = /\/stats(\?[^#]*)?$/;

let tmp;
let bin; // the apiproxy binary built for the suite
let server; // the apiproxy child process
let serverExited;
let origin; // http://127.0.0.1:PORT of apiproxy
let upstream; // local upstream http.Server
let upstreamURL;
const upstreamSeen = []; // {method, url, headers}
let context; // the browser (persistent context on a fresh profile)
const requestLog = []; // every URL any page of the browser requested
const problems = []; // dialogs, page errors, console errors

// until polls fn until it returns a truthy value and returns it, failing
// with what after timeout ms.
async function until(what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function textOf(locator) {
  return ((await locator.textContent({ timeout: WAIT })) || '').trim();
}

async function api(method, p, body) {
  const res = await fetch(origin + p, {
    method,
    headers: { Authorization: 'Bearer ' + TOKEN, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, data: await res.json().catch(() => null) };
}

async function proxied(p, body) {
  const res = await fetch(origin + p, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer sk-e2e' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, text: await res.text() };
}

function startUpstream() {
  // Answers like an OpenAI-style API: chat completions carry usage and
  // the model the client asked for; a path with /fail answers 500.
  upstream = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => { raw += c; });
    req.on('end', () => {
      upstreamSeen.push({ method: req.method, url: req.url, headers: req.headers });
      if (req.url.includes('/fail')) {
        res.writeHead(500, { 'Content-Type': 'application/json' });
        res.end('{"error":{"message":"upstream failure for the test"}}');
        return;
      }
      if (req.url.endsWith('/chat/completions')) {
        let model = 'gpt-e2e';
        try { model = JSON.parse(raw).model || model; } catch { /* default */ }
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({
          id: 'chatcmpl-e2e', object: 'chat.completion', model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 7, completion_tokens: 5, total_tokens: 12 },
        }));
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ ok: true, path: req.url }));
    });
  });
  return new Promise((resolve, reject) => {
    upstream.once('error', reject);
    upstream.listen(0, '127.0.0.1', () => {
      upstreamURL = `http://127.0.0.1:${upstream.address().port}`;
      resolve();
    });
  });
}

// startServer runs the binary on 127.0.0.1:0 and learns the port from its
// JSON "apiproxy listening" log line, so no port can be taken in between.
async function startServer(bin) {
  const started = await spawnServer(bin, { DATA_DIR: path.join(tmp, 'data') }, 'apiproxy.log');
  server = started.proc;
  serverExited = started.exited;
  origin = started.origin;
}

// spawnServer starts one apiproxy with the suite's environment changed by
// env, logging to artifacts/logName, and resolves to {proc, exited, origin}
// once it listens. The caller stops proc (stopProcess).
function spawnServer(bin, extra, logName) {
  const env = { ...process.env };
  for (const k of ['API_PROXY_REDIS_URL', 'PORT', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY', 'all_proxy', 'CORS_ALLOW_ORIGINS', 'STATS_TOKEN']) delete env[k];
  Object.assign(env, {
    LISTEN_ADDR: '127.0.0.1:0',
    ADMIN_TOKEN: TOKEN,
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
    ENABLE_STATS: 'true',
  }, extra);
  const cwd = path.join(tmp, 'cwd'); // empty: the pages must come from the binary
  fs.mkdirSync(cwd, { recursive: true });
  const proc = spawn(bin, [], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logFile = fs.createWriteStream(path.join(artifacts, logName));
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('apiproxy did not log "apiproxy listening" within 20 s')), 20000);
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`apiproxy exited with ${code} before listening; see artifacts/${logName}`)); });
    for (const stream of [proc.stdout, proc.stderr]) {
      readline.createInterface({ input: stream }).on('line', (line) => {
        logFile.write(line + '\n');
        let rec;
        try { rec = JSON.parse(line); } catch { return; }
        if (rec.msg === 'apiproxy listening' && rec.addr) {
          clearTimeout(timer);
          resolve({ proc, exited, origin: 'http://' + rec.addr });
        }
      });
    }
  });
}

async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  server.kill('SIGTERM');
  const killed = await Promise.race([serverExited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
  if (!killed) server.kill('SIGKILL');
}

function watch(page) {
  page.on('dialog', (d) => { problems.push(`dialog: ${d.type()} ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // A refused admin call (401) or a 4xx answer logs "Failed to load
    // resource" on its own; anything else, a CSP violation above all, is
    // a problem.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  return page;
}

async function newPage() {
  return watch(await context.newPage());
}

async function login(page) {
  await page.goto(origin + '/admin');
  await page.locator('#token').fill(TOKEN);
  await page.locator('#token').press('Enter');
  await page.locator('#admin').waitFor({ state: 'visible', timeout: WAIT });
}

function row(page, prefix) {
  return page.locator(`#map-body tr[data-prefix="${prefix}"]`);
}

before(async () => {
  fs.mkdirSync(artifacts, { recursive: true });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'apiproxy-e2e-'));
  bin = path.join(tmp, 'apiproxy');
  execFileSync('go', ['build', '-o', bin, '..'], { cwd: here, stdio: 'inherit', timeout: 300000 });
  await startUpstream();
  await startServer(bin);
  context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
    locale: 'en-US',
    colorScheme: 'light',
    timeout: 60000,
  });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
  context.on('request', (r) => requestLog.push(r.url()));
}, { timeout: 360000 });

after(async () => {
  if (context) await context.close().catch(() => {});
  await stopServer();
  if (upstream) {
    upstream.closeAllConnections();
    await new Promise((r) => upstream.close(r));
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// A test runner killed mid-run must not leave the server behind.
process.on('exit', () => { if (server && server.exitCode === null) server.kill('SIGKILL'); });

test('admin: a wrong token is refused, the right one logs in (Enter)', async () => {
  const page = await newPage();
  await page.goto(origin + '/admin');
  await page.locator('#login').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.locator('#admin').isVisible(), false);

  await page.locator('#token').fill('not-the-admin-token');
  await page.getByRole('button', { name: 'Log in' }).click();
  await until('the wrong-token message', async () => /wrong token/i.test(await textOf(page.locator('#login-error'))));
  assert.equal(await page.locator('#admin').isVisible(), false);
  assert.equal(await page.locator('#token').getAttribute('aria-invalid'), 'true');

  await page.locator('#token').fill(TOKEN);
  await page.locator('#token').press('Enter');
  await page.locator('#admin').waitFor({ state: 'visible', timeout: WAIT });
  // The seeded default mappings are listed.
  await until('the default mappings', async () => (await page.locator('#map-body tr').count()) >= 12);
  await until('the /openai row', async () => /api\.openai\.com/.test(await textOf(row(page, '/openai').locator('td').nth(1))));
  // The token lives in this tab's sessionStorage only.
  const stored = await page.evaluate(() => ({ s: sessionStorage.getItem('apiproxy.adminToken'), l: JSON.stringify(localStorage) }));
  assert.equal(stored.s, TOKEN);
  assert.ok(!stored.l.includes(TOKEN), 'token must not be in localStorage');
  await page.close();
});

test('admin: add, inline validation, proxying, edit, delete with confirmation', async () => {
  const page = await newPage();
  await login(page);

  // Add a mapping to the local upstream.
  await page.getByLabel('Prefix', { exact: true }).fill('/e2e');
  await page.getByLabel('Target URL').fill(upstreamURL);
  await page.getByRole('button', { name: 'Add', exact: true }).click();
  await until('the new /e2e row', async () => (await textOf(row(page, '/e2e').locator('td').nth(1))) === upstreamURL);
  assert.equal(await textOf(row(page, '/e2e').locator('.url')), origin + '/e2e');
  assert.equal(await page.locator('#add-prefix').inputValue(), '', 'the form is cleared after an add');

  // Invalid input is refused with the API's message beside the field.
  await page.locator('#add-prefix').fill('/api/x');
  await page.locator('#add-target').fill(upstreamURL);
  await page.locator('#add-btn').click();
  await until('the prefix error', async () => /reserved/.test(await textOf(page.locator('#add-prefix-error'))));
  assert.equal(await page.locator('#add-prefix').getAttribute('aria-invalid'), 'true');
  await page.locator('#add-prefix').fill('/valid-prefix');
  await page.locator('#add-target').fill('ftp://example.com');
  await page.locator('#add-btn').click();
  await until('the target error', async () => /target/i.test(await textOf(page.locator('#add-target-error'))));
  assert.equal(await row(page, '/valid-prefix').count(), 0, 'nothing invalid is added');
  await page.locator('#add-prefix').fill('');
  await page.locator('#add-target').fill('');

  // The new prefix proxies to the local upstream.
  let r = await proxied('/e2e/v1/models?x=1');
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.text), { ok: true, path: '/v1/models?x=1' });

  // Edit the target: Enter saves, the row shows it at once, routing follows.
  await row(page, '/e2e').getByRole('button', { name: /^Edit/ }).click();
  const input = row(page, '/e2e').locator('input.edit-target');
  await input.fill('not a url');
  await input.press('Enter');
  await until('the inline edit error', async () => /target/i.test(await textOf(row(page, '/e2e').locator('.field-error'))));
  await input.fill(upstreamURL + '/base');
  await input.press('Enter');
  await until('the edited target', async () => (await textOf(row(page, '/e2e').locator('td').nth(1))) === upstreamURL + '/base');
  r = await proxied('/e2e/hello');
  assert.deepEqual(JSON.parse(r.text), { ok: true, path: '/base/hello' });

  // Escape leaves edit mode without saving.
  await row(page, '/e2e').getByRole('button', { name: /^Edit/ }).click();
  await row(page, '/e2e').locator('input.edit-target').fill('http://127.0.0.1:1');
  await row(page, '/e2e').locator('input.edit-target').press('Escape');
  assert.equal(await textOf(row(page, '/e2e').locator('td').nth(1)), upstreamURL + '/base');

  // Delete: a Delete button, then an in-page confirmation.
  await page.locator('#add-prefix').fill('/tmpdel');
  await page.locator('#add-target').fill(upstreamURL);
  await page.locator('#add-target').press('Enter');
  await row(page, '/tmpdel').waitFor({ timeout: WAIT });
  await row(page, '/tmpdel').getByRole('button', { name: /^Delete/ }).click();
  await until('the confirmation', async () => /Delete \/tmpdel\?/.test(await textOf(row(page, '/tmpdel'))));
  // Escape (focus is on Cancel) backs out; the row stays.
  await page.keyboard.press('Escape');
  await until('the confirmation to close', async () => (await row(page, '/tmpdel').locator('[data-action="confirm-delete"]').count()) === 0);
  await row(page, '/tmpdel').getByRole('button', { name: /^Delete/ }).click();
  await row(page, '/tmpdel').getByRole('button', { name: 'Yes, delete' }).click();
  await until('the deleted row to go', async () => (await row(page, '/tmpdel').count()) === 0);
  const list = await api('GET', '/api/mappings');
  assert.equal(list.status, 200);
  assert.ok(!('/tmpdel' in list.data.mappings), 'deleted on the server');
  assert.equal(list.data.mappings['/e2e'], upstreamURL + '/base');

  // Server values are text: a target holding markup shows as written.
  const evil = 'http://127.0.0.1:9/<img/src=x/onerror=window.__xss=1>';
  const created = await api('POST', '/api/mappings', { prefix: '/markup', target: evil });
  if (created.status === 201) {
    await page.reload();
    await row(page, '/markup').waitFor({ timeout: WAIT });
    assert.equal(await textOf(row(page, '/markup').locator('td').nth(1)), evil);
    assert.equal(await page.locator('#map-body img').count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.equal((await api('DELETE', '/api/mappings/markup')).status, 200);
  }
  await page.close();
});

test('admin: a refused token sends back to login; Log out forgets it', async () => {
  const page = await newPage();
  await login(page);
  await page.evaluate(() => sessionStorage.setItem('apiproxy.adminToken', 'revoked-token-0123456789'));
  await page.reload();
  await page.locator('#login').waitFor({ state: 'visible', timeout: WAIT });
  await until('the expired message', async () => /no longer accepted/.test(await textOf(page.locator('#login-error'))));
  assert.equal(await page.evaluate(() => sessionStorage.getItem('apiproxy.adminToken')), null);

  await login(page);
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.locator('#login').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('apiproxy.adminToken')), null);
  assert.equal(await page.locator('#map-body tr').count(), 0, 'the list is cleared');
  await page.close();
});

test('admin: a store outage (503) is shown plainly and the form keeps its input', async () => {
  const page = await newPage();
  await login(page);
  // The embedded store cannot be taken down from outside; the page only
  // sees HTTP, so the answer of a Redis outage is played back instead.
  const message = 'mapping store unavailable: redis is not answering; retry when it is back';
  await page.route('**/api/mappings', (route) => route.request().method() === 'POST'
    ? route.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: { message, type: 'proxy_error', code: 'store_unavailable' } }) })
    : route.continue());
  await page.locator('#add-prefix').fill('/outage');
  await page.locator('#add-target').fill(upstreamURL);
  await page.locator('#add-btn').click();
  await until('the outage banner', async () => (await textOf(page.locator('#banner'))).includes(message));
  assert.match(await textOf(page.locator('#banner')), /503/);
  assert.ok(await page.locator('#banner').isVisible());
  assert.equal(await page.locator('#add-prefix').inputValue(), '/outage', 'nothing typed is lost');
  assert.equal(await row(page, '/outage').count(), 0);
  await page.unroute('**/api/mappings');
  await page.close();
});

// SPEC §9 on the pages. The first two tests play the API's answers back
// (page.route), so they pin how the pages read and write the object form
// whatever the server build; the three after them run against the real
// server and need its §9 admin API and /stats targets. Set
// E2E_SKIP_S9_SERVER=1 to skip those three on a server from before §9.
const SKIP_S9 = process.env.E2E_SKIP_S9_SERVER === '1' ? 'E2E_SKIP_S9_SERVER=1: the server has no §9 admin API yet' : false;

// mappingItem is a mapping object as GET /api/mappings lists it (SPEC §9).
function mappingItem(prefix, targets, opts = {}) {
  return {
    prefix, target: targets[0].url, targets,
    balance: 'failover', retry_on: [429, 500, 502, 503, 504], auth: 'passthrough',
    limits: { rpm: 0, tpm: 0, concurrency: 0 }, stream_idle_timeout: '0s', ...opts,
  };
}

// playAdminAPI answers /api/mappings* for page from a list it keeps, and
// records every write. reply, when set, answers the next write instead.
async function playAdminAPI(page, list) {
  const state = { list, sent: [], reply: null };
  await page.route(/\/api\/mappings(\/.*)?$/, async (route) => {
    const req = route.request();
    const method = req.method();
    const path = new URL(req.url()).pathname;
    if (method === 'GET') {
      const mappings = Object.fromEntries(state.list.map((m) => [m.prefix, m.target]));
      return route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ mappings, count: state.list.length, items: state.list }) });
    }
    const body = req.postData() ? JSON.parse(req.postData()) : null;
    state.sent.push({ method, path, body });
    if (state.reply) {
      const r = state.reply;
      state.reply = null;
      return route.fulfill({ status: r.status, contentType: 'application/json', body: JSON.stringify(r.body) });
    }
    const prefix = method === 'POST' ? body.prefix : '/' + decodeURIComponent(path.replace('/api/mappings/', ''));
    // Keys are write-only, as on the server: an answer shows key_set and
    // key_hint; a PUT without a key keeps the stored one of a target
    // whose URL at that position is unchanged; "key": "" removes it.
    const old = state.list.find((m) => m.prefix === prefix);
    const targets = body.targets
      ? body.targets.map(({ key, ...x }, i) => {
        const was = old && old.targets[i] && old.targets[i].url === x.url && old.targets[i].key_set ? old.targets[i] : null;
        const out = { weight: 1, ...x };
        if (key) Object.assign(out, { key_set: true, key_hint: '…' + key.slice(-4) });
        else if (key === undefined && was) Object.assign(out, { key_set: true, key_hint: was.key_hint });
        return out;
      })
      : [{ url: body.target, weight: 1 }];
    const item = mappingItem(prefix, targets, body.targets ? { balance: body.balance, retry_on: body.retry_on, auth: body.auth, stream_idle_timeout: body.stream_idle_timeout } : {});
    state.list = state.list.filter((m) => m.prefix !== prefix).concat(item);
    return route.fulfill({ status: method === 'POST' ? 201 : 200, contentType: 'application/json', body: JSON.stringify(item) });
  });
  return state;
}

function apiError(code, message) {
  return { status: 400, body: { error: { type: 'invalid_request_error', code, message } } };
}

async function focusedLabel(page) {
  return page.evaluate(() => document.activeElement && (document.activeElement.getAttribute('aria-label') || document.activeElement.id));
}

test('admin: targets, options and key hints read and written as SPEC §9 objects (answers played back)', async () => {
  const page = await newPage();
  const keyed = mappingItem('/mock-multi', [
    { url: 'http://127.0.0.1:9/a', weight: 3, auth_style: 'bearer', key_set: true, key_hint: '…wxyz' },
    { url: 'http://127.0.0.1:9/b', weight: 1 },
  ], { balance: 'weighted', retry_on: [429, 503], auth: 'keys', stream_idle_timeout: '30s' });
  const plainOne = mappingItem('/mock-plain', [{ url: 'http://127.0.0.1:9/p', weight: 1 }]);
  const api9 = await playAdminAPI(page, [keyed, plainOne]);
  await login(page);

  // The list: a plain mapping as before, the other with its targets, the
  // key's hint and the options that differ from the defaults.
  await row(page, '/mock-plain').waitFor({ timeout: WAIT });
  assert.equal(await textOf(row(page, '/mock-plain').locator('td').nth(1)), 'http://127.0.0.1:9/p');
  const multiCell = row(page, '/mock-multi').locator('td').nth(1);
  assert.deepEqual(await multiCell.locator('.tgt-view .turl').allTextContents(), ['http://127.0.0.1:9/a', 'http://127.0.0.1:9/b']);
  assert.match(await textOf(multiCell), /key …wxyz/);
  assert.match(await textOf(multiCell), /weighted · retry on 429, 503 · idle timeout 30s · auth keys/);

  // Add: one URL field at first, then the editor of the whole object.
  await page.locator('#add-prefix').fill('/mock-new');
  await page.locator('#add-target').fill('http://127.0.0.1:9/one');
  const more = page.getByRole('button', { name: 'Several targets and options' });
  assert.equal(await more.getAttribute('aria-expanded'), 'false');
  await more.click();
  assert.equal(await page.getByRole('button', { name: 'One target, no options' }).getAttribute('aria-expanded'), 'true');
  assert.equal(await page.locator('#add-target').isVisible(), false);
  assert.equal(await page.getByLabel('Target 1 URL').inputValue(), 'http://127.0.0.1:9/one');
  assert.equal(await focusedLabel(page), 'add-targets-0-url');
  await page.getByRole('button', { name: 'Add target' }).click();
  assert.equal(await focusedLabel(page), 'add-targets-1-url', 'a new target takes the focus');
  await page.keyboard.type('http://127.0.0.1:9/two');
  // Reorder from the keyboard: focus follows the moved target.
  await page.getByRole('button', { name: 'Move target 2 up' }).focus();
  await page.keyboard.press('Enter');
  assert.equal(await page.getByLabel('Target 1 URL').inputValue(), 'http://127.0.0.1:9/two');
  assert.equal(await page.getByLabel('Target 2 URL').inputValue(), 'http://127.0.0.1:9/one');
  assert.equal(await focusedLabel(page), 'Move target 1 down');
  await page.getByLabel('Target 1 weight').fill('3');
  await page.getByLabel('Balance').selectOption('weighted');
  await page.getByLabel('Retry on').fill('429, x');
  await page.locator('#add-btn').click();
  await until('the local retry_on message', async () => /^retry_on must be/.test(await textOf(page.locator('#add-retry-on-error'))));
  assert.equal(api9.sent.length, 0, 'nothing is sent while retry_on does not parse');
  await page.getByLabel('Retry on').fill('429, 503');
  await page.getByLabel('Stream idle timeout').fill('45s');

  // The API's message goes next to the field its first word names.
  const fieldErrors = [
    ['invalid_target', 'targets[1].weight must be an integer from 1 to 1000', '#add-targets-1-weight'],
    ['invalid_target', 'targets[0].url must be an absolute http or https URL', '#add-targets-0-url'],
    ['invalid_mapping', 'stream_idle_timeout must be a duration from 0s to 24h', '#add-stream-idle-timeout'],
    ['invalid_mapping', 'balance must be "failover" or "weighted"', '#add-balance'],
    ['invalid_mapping', 'retry_on must hold statuses from 400 to 599 (found 600)', '#add-retry-on'],
    ['invalid_mapping', 'limits.rpm must be a non-negative integer (0 means no limit)', '#add-limits-rpm'],
    ['invalid_mapping', 'limits.concurrency must be a non-negative integer (0 means no limit)', '#add-limits-concurrency'],
  ];
  for (const [code, message, field] of fieldErrors) {
    api9.reply = apiError(code, message);
    await page.locator('#add-btn').click();
    await until(`${message} beside ${field}`, async () => (await textOf(page.locator(field + '-error'))) === message);
    assert.equal(await page.locator(field).getAttribute('aria-invalid'), 'true');
    assert.equal(await focusedLabel(page), field.slice(1), `${field} takes the focus`);
    assert.match(await page.locator(field).getAttribute('aria-describedby'), new RegExp(field.slice(1) + '-error'));
  }
  // A field the editor does not have: the message shows under the editor.
  api9.reply = apiError('invalid_mapping', 'limits.burst is not supported by this version');
  await page.locator('#add-btn').click();
  await until('the limits message', async () => /^limits\.burst/.test(await textOf(page.locator('#add-editor [data-field=""]'))));
  // A limit that is not a whole number is caught before sending.
  const sent9 = api9.sent.length;
  await page.getByLabel('Tokens per minute').fill('lots');
  await page.locator('#add-btn').click();
  await until('the local limit message', async () => (await textOf(page.locator('#add-limits-tpm-error'))) === 'limits.tpm must be a whole number, 0 or more');
  assert.equal(api9.sent.length, sent9, 'nothing is sent while a limit does not parse');
  await page.getByLabel('Tokens per minute').fill('');
  await page.getByLabel('Requests per minute').fill('60');
  await page.getByLabel('In flight at once').fill('4');
  api9.reply = apiError('invalid_prefix', 'prefix "/mock-new" is reserved');
  await page.locator('#add-btn').click();
  await until('the prefix message', async () => /^prefix/.test(await textOf(page.locator('#add-prefix-error'))));

  const before = api9.sent.length;
  await page.locator('#add-btn').click();
  await row(page, '/mock-new').waitFor({ timeout: WAIT });
  assert.deepEqual(api9.sent[before], {
    method: 'POST', path: '/api/mappings',
    body: {
      prefix: '/mock-new',
      targets: [{ url: 'http://127.0.0.1:9/two', weight: 3 }, { url: 'http://127.0.0.1:9/one', weight: 1 }],
      balance: 'weighted', retry_on: [429, 503], auth: 'passthrough',
      limits: { rpm: 60, tpm: 0, concurrency: 4 }, stream_idle_timeout: '45s',
    },
  });
  assert.equal(await page.locator('#add-target').isVisible(), true, 'the form is back to one URL');
  assert.equal(await page.locator('#add-editor').isVisible(), false);
  assert.equal(await textOf(row(page, '/mock-new').locator('.tgt-view')), 'http://127.0.0.1:9/twoweight 3http://127.0.0.1:9/oneweight 1');

  // A plain add through the expanded editor still sends the original form.
  await page.locator('#add-prefix').fill('/mock-simple');
  await more.click();
  await page.getByLabel('Target 1 URL').fill('http://127.0.0.1:9/s');
  await page.getByLabel('Target 1 URL').press('Enter');
  await row(page, '/mock-simple').waitFor({ timeout: WAIT });
  assert.deepEqual(api9.sent.at(-1).body, { prefix: '/mock-simple', target: 'http://127.0.0.1:9/s' });

  // Edit a mapping with options: the whole editor opens; the key is never
  // sent unless typed, only its hint shown, and a move that would drop it
  // says so.
  await row(page, '/mock-multi').getByRole('button', { name: /^Edit/ }).click();
  const ed = row(page, '/mock-multi').locator('form.row-editor');
  await ed.waitFor({ timeout: WAIT });
  const key1 = ed.getByLabel('Target 1 Upstream key');
  assert.equal(await key1.isDisabled(), false, 'auth "keys": the key can be replaced');
  assert.equal(await key1.getAttribute('type'), 'password');
  assert.equal(await key1.getAttribute('placeholder'), '…wxyz');
  assert.equal(await key1.inputValue(), '');
  await ed.getByRole('button', { name: 'Move target 1 down' }).click();
  await until('the dropped-key note', async () => /will be dropped/.test(await textOf(ed.locator('.tgt').nth(1))));
  await ed.getByRole('button', { name: 'Move target 2 up' }).click();
  assert.doesNotMatch(await textOf(ed), /will be dropped/);
  await ed.getByLabel('Target 2 weight').fill('2');
  await ed.getByLabel('Target 2 weight').press('Enter');
  await until('the saved row', async () => (await row(page, '/mock-multi').locator('form').count()) === 0);
  assert.deepEqual(api9.sent.at(-1), {
    method: 'PUT', path: '/api/mappings/mock-multi',
    body: {
      targets: [{ url: 'http://127.0.0.1:9/a', weight: 3, auth_style: 'bearer' }, { url: 'http://127.0.0.1:9/b', weight: 2 }],
      balance: 'weighted', retry_on: [429, 503], auth: 'keys',
      limits: { rpm: 0, tpm: 0, concurrency: 0 }, stream_idle_timeout: '30s',
    },
  });
  assert.ok(!JSON.stringify(api9.sent).includes('"key"'), 'no key is ever sent');
  assert.equal(await focusedLabel(page), 'Edit /mock-multi');

  // A plain mapping keeps the one-field edit, with a way to the editor.
  await row(page, '/mock-plain').getByRole('button', { name: /^Edit/ }).click();
  const inline = row(page, '/mock-plain').locator('input.edit-target');
  await inline.fill('http://127.0.0.1:9/p2');
  await row(page, '/mock-plain').getByRole('button', { name: 'Several targets and options' }).click();
  const ed2 = row(page, '/mock-plain').locator('form.row-editor');
  assert.equal(await ed2.getByLabel('Target 1 URL').inputValue(), 'http://127.0.0.1:9/p2', 'what was typed is kept');
  api9.reply = apiError('invalid_target', 'target must be an absolute http or https URL');
  await ed2.getByLabel('Target 1 URL').press('Enter');
  await until('the target message on target 1', async () => /^target must/.test(await textOf(ed2.locator('#row-_mock-plain-targets-0-url-error'))));
  assert.deepEqual(api9.sent.at(-1).body, { target: 'http://127.0.0.1:9/p2' }, 'a plain edit sends the original form');
  await ed2.getByLabel('Target 1 URL').press('Escape');
  assert.equal(await textOf(row(page, '/mock-plain').locator('td').nth(1)), 'http://127.0.0.1:9/p');

  // Chinese while the editor is open, then a phone: nothing scrolls sideways.
  await row(page, '/mock-multi').getByRole('button', { name: /^Edit/ }).click();
  await more.click();
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese in the editor', async () => (await textOf(page.locator('#add-editor .targets-fs legend'))) === '目标');
  assert.equal(await textOf(page.locator('#add-editor .limits-fs legend')), '此映射所有调用方的限额');
  assert.equal(await textOf(ed.locator('.targets-fs legend')), '目标');
  await page.screenshot({ path: path.join(artifacts, 'admin-editor-desktop-zh.png'), fullPage: true });
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  for (const scheme of ['light', 'dark']) {
    await page.setViewportSize({ width: 375, height: 812 });
    await page.emulateMedia({ colorScheme: scheme });
    await page.getByLabel('Target 1 URL').first().waitFor({ timeout: WAIT });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `admin with the editors open at 375 px scrolls sideways by ${overflow} px`);
    await page.screenshot({ path: path.join(artifacts, `admin-editor-phone-${scheme}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.screenshot({ path: path.join(artifacts, 'admin-editor-desktop-light.png'), fullPage: true });
  await page.unroute(/\/api\/mappings(\/.*)?$/);
  await page.close();
});

test('dashboard: targets under an endpoint with several, and the failovers card (/stats played back)', async () => {
  const page = await newPage();
  const now = Math.floor(Date.now() / 1000);
  const ep = (target, count, targets) => ({
    target, count, error_count: 3, last_request: now, last_24h: count, last_7d: count, last_30d: count,
    status: { '2xx': count - 3, '3xx': 0, '4xx': 0, '5xx': 3 }, latency_ms: { avg: 10, p50: 9, p95: 20, p99: 30 },
    tokens: { prompt: 0, completion: 0, total: 0 }, models: {}, ...(targets ? { targets } : {}),
  });
  const stats = {
    total: 11, errors: 3, last_24h: 11, last_7d: 11, last_30d: 11, failovers: 1234,
    tokens: { prompt: 0, completion: 0, total: 0 },
    endpoints: {
      '/mock-dash': ep('http://127.0.0.1:9/a', 10, [
        { url: 'http://127.0.0.1:9/a', count: 10, errors: 3, failovers: 3, cooldown_until: now + 600 },
        { url: 'http://127.0.0.1:9/b', count: 7, errors: 0, failovers: 0, cooldown_until: 0 },
      ]),
      '/mock-one': ep('http://127.0.0.1:9/c', 1, [{ url: 'http://127.0.0.1:9/c', count: 1, errors: 0, failovers: 0, cooldown_until: 0 }]),
      '/mock-old': ep('http://127.0.0.1:9/d', 1),
    },
    series: { hourly: [], daily: [] },
    performance: { requests_per_sec: 0, avg_response_time_ms: 0, error_rate: 0, memory_usage_mb: 1, goroutine_count: 1, active_requests: 0, uptime_seconds: 1 },
  };
  await page.route(STATS_URL, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(stats) }));
  await page.goto(origin + '/');
  const sub = page.locator('#ep-body tr[data-targets-of="/mock-dash"]');
  await sub.waitFor({ timeout: WAIT });
  // The targets row comes right under its endpoint.
  assert.equal(await page.locator('#ep-body tr[data-prefix="/mock-dash"] + tr').getAttribute('data-targets-of'), '/mock-dash');
  const rowsOf = sub.locator('.tgt-row:not(.head)');
  assert.equal(await rowsOf.count(), 2);
  const cells = async (i) => (await rowsOf.nth(i).locator('[role="cell"]').allTextContents()).map((s) => s.trim());
  const first = await cells(0);
  assert.deepEqual(first.slice(0, 4), ['1. http://127.0.0.1:9/a', '10', '3', '3']);
  // The time in the browser's locale: en-US here, so a 12-hour clock.
  assert.match(first[4], /^cooling until \d\d:\d\d:\d\d [AP]M$/);
  assert.deepEqual(await cells(1), ['2. http://127.0.0.1:9/b', '7', '0', '0', 'available']);
  assert.equal(await page.locator('#ep-body tr[data-targets-of="/mock-one"]').count(), 0, 'one target: no targets row');
  assert.equal(await page.locator('#ep-body tr[data-targets-of="/mock-old"]').count(), 0);
  assert.ok(await page.locator('#card-failovers').isVisible());
  assert.equal(await textOf(page.locator('[data-k="failovers"]')), '1,234');
  // The filter finds an endpoint by any of its targets.
  await page.locator('#ep-filter').fill('127.0.0.1:9/b');
  await until('the filtered table', async () => (await page.locator('#ep-body tr[data-prefix]').count()) === 1);
  assert.equal(await sub.count(), 1);
  await page.locator('#ep-filter').fill('');
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese in the targets row', async () => /冷却至/.test(await textOf(sub)));
  await page.screenshot({ path: path.join(artifacts, 'dashboard-targets-desktop-zh.png'), fullPage: true });
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  await page.setViewportSize({ width: 375, height: 812 });
  await until('English again', async () => /cooling until/.test(await textOf(sub)));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `dashboard with targets at 375 px scrolls sideways by ${overflow} px`);
  await page.screenshot({ path: path.join(artifacts, 'dashboard-targets-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  // A server from before §9: no failovers, no card.
  delete stats.failovers;
  const renders = Number(await page.evaluate(() => document.body.dataset.renders));
  await until('a refresh', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > renders, REFRESH_WAIT);
  assert.equal(await page.locator('#card-failovers').isVisible(), false);
  await page.unroute(STATS_URL);
  await page.close();
});

test('dashboard: the Keys section shows each proxy key by id and name, and hides without keys (/stats played back)', async () => {
  const page = await newPage();
  const now = Math.floor(Date.now() / 1000);
  const tokens = (p, c) => ({ prompt: p, completion: c, total: p + c, cache_read: 0, cache_write: 0, unknown_responses: 0 });
  const stats = {
    total: 12, errors: 2, last_24h: 12, last_7d: 12, last_30d: 12, tokens: tokens(1500, 300),
    endpoints: {
      '/mock-keys': {
        target: 'http://127.0.0.1:9/k', count: 12, error_count: 2, last_request: now, last_24h: 12, last_7d: 12, last_30d: 12,
        status: { '2xx': 10, '3xx': 0, '4xx': 2, '5xx': 0 }, latency_ms: { avg: 10, p50: 9, p95: 20, p99: 30 },
        tokens: tokens(1500, 300), models: {},
      },
    },
    keys: {
      k_gone: { name: '', count: 3, errors: 0, last_24h: 0, last_7d: 1, last_30d: 3, tokens: tokens(0, 0), last_used_at: now - 3 * 86400 },
      k_team: { name: 'team-a', count: 9, errors: 2, last_24h: 5, last_7d: 8, last_30d: 9, tokens: tokens(1500, 300), last_used_at: now - 120 },
    },
    series: { hourly: [], daily: [] },
    performance: { requests_per_sec: 0, avg_response_time_ms: 0, error_rate: 0, memory_usage_mb: 1, goroutine_count: 1, active_requests: 0, uptime_seconds: 1 },
  };
  await page.route(STATS_URL, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(stats) }));
  await page.goto(origin + '/');
  const team = page.locator('#ks-body tr[data-key="k_team"]');
  await team.waitFor({ timeout: WAIT });
  assert.ok(await page.locator('#keys-panel').isVisible());
  assert.equal(await textOf(page.locator('#h-keys')), 'Keys');
  assert.equal(await textOf(page.locator('#ks-count')), '2 keys');
  // The most used first; the name above the id; no secret or hint anywhere.
  assert.deepEqual(await page.locator('#ks-body tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.key)), ['k_team', 'k_gone']);
  const cells = (await team.locator('td').allTextContents()).map((x) => x.trim());
  assert.equal(await textOf(team.locator('.key-name')), 'team-a');
  assert.equal(await textOf(team.locator('.key-id')), 'k_team');
  // Cells: key, requests (of the range), errors, tokens, last used.
  assert.equal(cells[1], '9');
  assert.equal(await textOf(team.locator('td').nth(2).locator('span').first()), '2');
  assert.equal(await textOf(team.locator('td').nth(3).locator('span').first()), '1,800');
  assert.equal(cells[4], '2 min ago');
  const gone = page.locator('#ks-body tr[data-key="k_gone"]');
  assert.equal(await textOf(gone.locator('.key-name')), 'deleted key');
  assert.ok(await gone.locator('.key-name.deleted').count() === 1);
  assert.equal((await gone.locator('td').allTextContents()).map((x) => x.trim())[4], '3 d ago');
  assert.doesNotMatch(await textOf(page.locator('#keys-panel')), /apx-/);
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese in the keys section', async () => (await textOf(page.locator('#h-keys'))) === '密钥' &&
    (await textOf(gone.locator('.key-name'))) === '已删除的密钥');
  await page.screenshot({ path: path.join(artifacts, 'dashboard-keys-desktop-zh.png'), fullPage: true });
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  await page.setViewportSize({ width: 375, height: 812 });
  await until('English again', async () => (await textOf(page.locator('#h-keys'))) === 'Keys');
  assert.equal(await team.locator('td').nth(1).getAttribute('data-label'), 'Requests');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `dashboard with keys at 375 px scrolls sideways by ${overflow} px`);
  await page.screenshot({ path: path.join(artifacts, 'dashboard-keys-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  // No keys (or a server from before §10): no section.
  delete stats.keys;
  await until('the keys section hidden', async () => !(await page.locator('#keys-panel').isVisible()), REFRESH_WAIT);
  assert.equal(await page.locator('#ks-body tr').count(), 0);
  await page.unroute(STATS_URL);
  await page.close();
});

test('admin (§9 server): two targets made, reordered and edited on the page are stored as sent', { skip: SKIP_S9 }, async () => {
  const page = await newPage();
  await login(page);
  const stored = async (prefix) => (await api('GET', '/api/mappings')).data.items.find((m) => m.prefix === prefix);

  await page.locator('#add-prefix').fill('/duo');
  await page.locator('#add-target').fill(upstreamURL + '/one');
  await page.getByRole('button', { name: 'Several targets and options' }).click();
  await page.getByRole('button', { name: 'Add target' }).click();
  await page.getByLabel('Target 2 URL').fill(upstreamURL + '/two');
  await page.getByRole('button', { name: 'Move target 2 up' }).click();
  await page.getByLabel('Target 1 weight').fill('3');
  await page.getByLabel('Balance').selectOption('weighted');
  await page.getByLabel('Retry on').fill('429, 503');
  await page.getByLabel('Stream idle timeout').fill('30s');

  // Invalid input: the server's own message, beside the field it names.
  await page.getByLabel('Target 2 weight').fill('0');
  await page.locator('#add-btn').click();
  await until('the weight message', async () => /^targets\[1\]\.weight/.test(await textOf(page.locator('#add-targets-1-weight-error'))));
  await page.getByLabel('Target 2 weight').fill('1');
  await page.getByLabel('Target 2 URL').fill('ftp://example.com');
  await page.locator('#add-btn').click();
  await until('the URL message', async () => /^targets\[1\]\.url/.test(await textOf(page.locator('#add-targets-1-url-error'))));
  assert.equal(await stored('/duo'), undefined, 'nothing invalid is stored');
  await page.getByLabel('Target 2 URL').fill(upstreamURL + '/one');

  await page.locator('#add-btn').click();
  await row(page, '/duo').waitFor({ timeout: WAIT });
  let m = await stored('/duo');
  assert.deepEqual(m.targets.map((x) => [x.url, x.weight]), [[upstreamURL + '/two', 3], [upstreamURL + '/one', 1]]);
  assert.equal(m.balance, 'weighted');
  assert.deepEqual(m.retry_on, [429, 503]);
  assert.equal(m.stream_idle_timeout, '30s');
  assert.equal((await api('GET', '/api/mappings')).data.mappings['/duo'], upstreamURL + '/two');
  assert.deepEqual(await row(page, '/duo').locator('.turl').allTextContents(), [upstreamURL + '/two', upstreamURL + '/one']);

  // Edit: back to /one first, failover, other statuses, no idle timeout.
  await row(page, '/duo').getByRole('button', { name: /^Edit/ }).click();
  const ed = row(page, '/duo').locator('form.row-editor');
  await ed.getByRole('button', { name: 'Move target 2 up' }).click();
  await ed.getByLabel('Balance').selectOption('failover');
  await ed.getByLabel('Retry on').fill('500');
  await ed.getByLabel('Stream idle timeout').fill('0s');
  await ed.getByLabel('Target 1 weight').fill('1001');
  await row(page, '/duo').getByRole('button', { name: 'Save' }).click();
  await until('the weight message in the row', async () => /^targets\[0\]\.weight/.test(await textOf(ed.locator('#row-_duo-targets-0-weight-error'))));
  await ed.getByLabel('Target 1 weight').fill('1');
  await row(page, '/duo').getByRole('button', { name: 'Save' }).click();
  await until('the row out of edit mode', async () => (await row(page, '/duo').locator('form').count()) === 0);
  m = await stored('/duo');
  assert.deepEqual(m.targets.map((x) => [x.url, x.weight]), [[upstreamURL + '/one', 1], [upstreamURL + '/two', 3]]);
  assert.equal(m.balance, 'failover');
  assert.deepEqual(m.retry_on, [500]);
  assert.equal(m.stream_idle_timeout, '0s');
  const r = await proxied('/duo/hello');
  assert.deepEqual(JSON.parse(r.text), { ok: true, path: '/one/hello' }, 'routing follows the first target');
  assert.equal((await api('DELETE', '/api/mappings/duo')).status, 200);
  await page.close();
});

test('dashboard (§9 server): an endpoint with two targets lists them after traffic', { skip: SKIP_S9 }, async () => {
  // The first target answers 500 (in retry_on by default), so every
  // request fails over to the second.
  const created = await api('POST', '/api/mappings', { prefix: '/duo-dash', targets: [{ url: upstreamURL + '/fail' }, { url: upstreamURL }] });
  assert.equal(created.status, 201, JSON.stringify(created.data));
  for (let i = 0; i < 4; i++) assert.equal((await proxied('/duo-dash/v1/models')).status, 200);
  const statsOf = async () => (await (await fetch(origin + '/stats')).json());
  const want = await until('/stats to list both targets with the traffic', async () => {
    const s = await statsOf();
    const e = s.endpoints['/duo-dash'];
    return e && Array.isArray(e.targets) && e.targets.length === 2 && e.count >= 4 && e.targets[0].failovers >= 1 && s;
  });
  assert.ok(want.failovers >= 1);
  const t0 = want.endpoints['/duo-dash'].targets;

  const page = await newPage();
  await page.goto(origin + '/');
  const sub = page.locator('#ep-body tr[data-targets-of="/duo-dash"]');
  await sub.waitFor({ timeout: REFRESH_WAIT });
  const rowsOf = sub.locator('.tgt-row:not(.head)');
  assert.equal(await rowsOf.count(), 2);
  const cells = async (i) => (await rowsOf.nth(i).locator('[role="cell"]').allTextContents()).map((s) => s.trim());
  const first = await cells(0);
  assert.equal(first[0], '1. ' + upstreamURL + '/fail');
  assert.ok(Number(first[2].replace(/,/g, '')) >= t0[0].errors, `errors ${first[2]}`);
  assert.ok(Number(first[3].replace(/,/g, '')) >= 1, `failovers ${first[3]}`);
  if (t0[0].cooldown_until > Date.now() / 1000) assert.match(first[4], /^cooling until/);
  assert.equal((await cells(1))[0], '2. ' + upstreamURL);
  assert.ok(await page.locator('#card-failovers').isVisible());
  assert.notEqual(await textOf(page.locator('[data-k="failovers"]')), '–');
  // A one-target endpoint has no targets row.
  assert.equal(await page.locator('#ep-body tr[data-targets-of="/e2e"]').count(), 0);
  await page.screenshot({ path: path.join(artifacts, 'dashboard-targets-live.png'), fullPage: true });
  assert.equal((await api('DELETE', '/api/mappings/duo-dash')).status, 200);
  await page.close();
});

// SPEC §10 on the admin page: the Proxy keys view and the mapping
// editor's auth, upstream key and auth_style. The first two tests play the
// API's answers back (page.route), so they run on any server build; the
// keys view against the real server needs its keys API (/api/keys), which
// E2E_SKIP_S10_SERVER=1 skips on a server without it. The mapping editor
// against the real server needs only the §9/§10 mapping fields.
const SKIP_S10 = process.env.E2E_SKIP_S10_SERVER === '1' ? 'E2E_SKIP_S10_SERVER=1: the server has no §10 keys API yet' : false;

// keyItem is a proxy key as GET /api/keys lists it (SPEC §10).
function keyItem(id, name, opts = {}) {
  return {
    id, name, prefixes: [], limits: { rpm: 0, tpm: 0, concurrency: 0 },
    created_at: '2026-01-02T03:04:05Z', expires_at: null, disabled: false,
    hint: 'apx-…' + id.slice(-4).toUpperCase(), last_used_at: null, ...opts,
  };
}

const KEYS_ROUTE = /\/api\/keys(\/[^/?#]*)?$/;

// playKeysAPI answers /api/keys* for page from a list it keeps and records
// every write; reply, when set, answers the next write instead. Each
// create answers a fresh secret, kept in state.secrets.
async function playKeysAPI(page, list) {
  const state = { list, sent: [], reply: null, secrets: [] };
  await page.route(KEYS_ROUTE, async (route) => {
    const req = route.request();
    const method = req.method();
    const p = new URL(req.url()).pathname;
    const json = (status, body) => route.fulfill({ status, contentType: 'application/json', body: JSON.stringify(body) });
    if (method === 'GET' && p === '/api/keys') return json(200, { keys: state.list, count: state.list.length });
    const body = req.postData() ? JSON.parse(req.postData()) : null;
    state.sent.push({ method, path: p, body });
    if (state.reply) {
      const r = state.reply;
      state.reply = null;
      return json(r.status, r.body);
    }
    const notFound = () => json(404, { error: { type: 'invalid_request_error', code: 'key_not_found', message: 'no such key' } });
    if (method === 'POST') {
      const n = state.secrets.length + 1;
      const secret = 'apx-E2E' + Math.random().toString(36).slice(2, 12).toUpperCase() + 'SECRET' + n + 'QZ';
      state.secrets.push(secret);
      const item = keyItem('k_e2e' + n + 'abcd', body.name, {
        prefixes: body.prefixes || [], limits: body.limits, expires_at: body.expires_at, disabled: Boolean(body.disabled),
        created_at: new Date(Date.now() + n * 1000).toISOString(), hint: 'apx-…' + secret.slice(-4),
      });
      state.list = [...state.list, item];
      const { last_used_at: _, ...created } = item;
      return json(201, { ...created, key: secret });
    }
    const id = decodeURIComponent(p.replace('/api/keys/', ''));
    const i = state.list.findIndex((k) => k.id === id);
    if (i < 0) return notFound();
    if (method === 'PATCH') {
      state.list[i] = { ...state.list[i], ...body };
      return json(200, state.list[i]);
    }
    if (method === 'DELETE') {
      state.list = state.list.filter((k) => k.id !== id);
      return json(200, { deleted: id });
    }
    return json(405, { error: { message: 'method not allowed' } });
  });
  return state;
}

function keyRow(page, name) {
  return page.locator('#key-body tr').filter({ has: page.locator('td.key-name', { hasText: new RegExp('^' + name + '$') }) });
}

async function bodyHolds(page, text) {
  return page.evaluate((s) => document.body.textContent.includes(s) ||
    [...document.querySelectorAll('input')].some((i) => i.value.includes(s)) ||
    JSON.stringify(sessionStorage).includes(s) || JSON.stringify(localStorage).includes(s) ||
    window.location.href.includes(s), text);
}

test('admin: proxy keys created, shown once, copied, listed, disabled, enabled, deleted (answers played back)', async () => {
  const page = await newPage();
  const now = Math.floor(Date.now() / 1000);
  const keysAPI = await playKeysAPI(page, [keyItem('k_old1', 'legacy-team', {
    prefixes: ['/openai', '/anthropic'], limits: { rpm: 60, tpm: 100000, concurrency: 4 },
    disabled: true, last_used_at: now - 7200, expires_at: '2030-06-01T00:00:00Z',
  })]);
  await login(page);

  // The Keys tab: its own view, remembered in the address.
  const tab = page.getByRole('tab', { name: 'Proxy keys' });
  assert.equal(await tab.getAttribute('aria-selected'), 'false');
  await tab.click();
  assert.equal(await tab.getAttribute('aria-selected'), 'true');
  assert.equal(await page.getByRole('tab', { name: 'Mappings' }).getAttribute('aria-selected'), 'false');
  assert.equal(new URL(page.url()).hash, '#keys');
  assert.equal(await page.locator('#view-mappings').isVisible(), false);
  assert.equal(await textOf(page.locator('#h-admin')), 'Proxy keys');
  const old = keyRow(page, 'legacy-team');
  await old.waitFor({ timeout: WAIT });
  assert.equal(await textOf(old.locator('.key-hint')), 'apx-…OLD1');
  assert.equal(await textOf(old.locator('.key-prefixes')), '/openai, /anthropic');
  assert.equal(await textOf(old.locator('.key-limits')), '60 req/min · 100K tokens/min · 4 at once');
  assert.equal(await textOf(old.locator('.key-used')), '2 h ago');
  assert.match(await textOf(old.locator('.key-expires')), /2030/);
  assert.equal(await textOf(old.locator('.key-status')), 'disabled');
  assert.equal(await textOf(page.locator('#key-count')), '1 keys');
  // Arrow keys move between the tabs.
  await tab.focus();
  await page.keyboard.press('ArrowLeft');
  assert.equal(await page.locator('#view-keys').isVisible(), false);
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.locator('#view-keys').isVisible(), true);

  // The API's messages go beside the field they name.
  const fieldErrors = [
    ['name must be 1 to 64 characters', '#key-name'],
    ['prefixes[1] must be the prefix of a mapping, such as /openai', '#key-prefixes'],
    ['expires_at must be in the future', '#key-expires'],
    ['limits.rpm must be a non-negative integer (0 means no limit)', '#key-rpm'],
  ];
  for (const [message, field] of fieldErrors) {
    keysAPI.reply = { status: 400, body: { error: { type: 'invalid_request_error', code: 'invalid_key', message } } };
    await page.locator('#key-add-btn').click();
    await until(`${message} beside ${field}`, async () => (await textOf(page.locator(field + '-error'))) === message);
    assert.equal(await page.locator(field).getAttribute('aria-invalid'), 'true');
    assert.equal(await focusedLabel(page), field.slice(1));
  }
  // A limit that is not a number is caught before sending.
  const sentBefore = keysAPI.sent.length;
  await page.getByLabel('Tokens / min').fill('lots');
  await page.locator('#key-add-btn').click();
  await until('the local limit message', async () => /^limits\.tpm must be a whole number/.test(await textOf(page.locator('#key-tpm-error'))));
  assert.equal(keysAPI.sent.length, sentBefore, 'nothing is sent');
  await page.getByLabel('Tokens / min').fill('0');

  // Create: the secret once, with a Copy button and the warning.
  await page.locator('#key-form').getByLabel('Name', { exact: true }).fill('team-e2e');
  await page.locator('#key-form').getByLabel('Mappings', { exact: true }).fill('/openai, /gemini');
  await page.getByLabel('Expires').fill('2031-01-02T03:04');
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.locator('#key-secret').waitFor({ state: 'visible', timeout: WAIT });
  const secret = keysAPI.secrets.at(-1);
  assert.equal(await textOf(page.locator('#key-secret-value')), secret);
  assert.match(await textOf(page.locator('#key-secret')), /you will not see it again/);
  assert.equal(await focusedLabel(page), 'key-secret', 'the secret panel takes the focus');
  const wantExpiry = await page.evaluate(() => new Date('2031-01-02T03:04').toISOString().replace(/\.\d{3}Z$/, 'Z'));
  assert.deepEqual(keysAPI.sent.at(-1), {
    method: 'POST', path: '/api/keys',
    body: { name: 'team-e2e', prefixes: ['/openai', '/gemini'], limits: { rpm: 0, tpm: 0, concurrency: 0 }, expires_at: wantExpiry, disabled: false },
  });
  const copy = page.locator('#key-secret').getByRole('button', { name: 'Copy the new proxy key' });
  await copy.click();
  await until('the Copied label', async () => (await textOf(copy)) === 'Copied');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  assert.doesNotMatch(await textOf(page.locator('#announcer')), new RegExp(secret), 'the secret is not announced');
  // The list shows the new key by its hint, on top, and never the secret.
  const fresh = keyRow(page, 'team-e2e');
  await fresh.waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#key-body tr').first().getAttribute('data-key'), await fresh.getAttribute('data-key'));
  assert.equal(await textOf(fresh.locator('.key-hint')), 'apx-…' + secret.slice(-4));
  assert.equal(await textOf(fresh.locator('.key-used')), 'never');
  assert.equal(await textOf(fresh.locator('.key-status')), 'active');
  assert.equal(await textOf(fresh.locator('.key-limits')), 'none');
  assert.doesNotMatch(await textOf(page.locator('#key-table')), new RegExp(secret));
  assert.equal(await page.locator('#key-name').inputValue(), '', 'the form is cleared');
  await page.screenshot({ path: path.join(artifacts, 'admin-keys-secret-desktop.png'), fullPage: true });
  await page.getByRole('button', { name: 'I have copied it' }).click();
  assert.equal(await page.locator('#key-secret').isVisible(), false);
  assert.equal(await bodyHolds(page, secret), false, 'the secret is gone from the page');
  assert.equal(await focusedLabel(page), 'key-name');

  // Disable, then enable: one PATCH each, the row follows.
  await fresh.getByRole('button', { name: 'Disable team-e2e' }).click();
  await until('the disabled status', async () => (await textOf(fresh.locator('.key-status'))) === 'disabled');
  const id = await fresh.getAttribute('data-key');
  assert.deepEqual(keysAPI.sent.at(-1), { method: 'PATCH', path: '/api/keys/' + id, body: { disabled: true } });
  assert.equal(await focusedLabel(page), 'Enable team-e2e');
  await page.keyboard.press('Enter');
  await until('the active status', async () => (await textOf(fresh.locator('.key-status'))) === 'active');
  assert.deepEqual(keysAPI.sent.at(-1), { method: 'PATCH', path: '/api/keys/' + id, body: { disabled: false } });

  // Delete: a confirmation in the row; Escape backs out.
  await fresh.getByRole('button', { name: 'Delete team-e2e' }).click();
  await until('the confirmation', async () => /Delete “team-e2e”\?/.test(await textOf(fresh)));
  await page.keyboard.press('Escape');
  await until('the confirmation to close', async () => (await fresh.locator('[data-action="confirm-delete"]').count()) === 0);
  assert.equal(keysAPI.sent.at(-1).method, 'PATCH', 'nothing deleted yet');
  await fresh.getByRole('button', { name: 'Delete team-e2e' }).click();
  await fresh.getByRole('button', { name: 'Yes, delete' }).click();
  await until('the deleted row to go', async () => (await keyRow(page, 'team-e2e').count()) === 0);
  assert.deepEqual(keysAPI.sent.at(-1), { method: 'DELETE', path: '/api/keys/' + id, body: null });

  // A key deleted elsewhere: the list is reloaded and says so.
  keysAPI.reply = { status: 404, body: { error: { type: 'invalid_request_error', code: 'key_not_found', message: 'no such key' } } };
  await old.getByRole('button', { name: 'Enable legacy-team' }).click();
  await until('the gone banner', async () => /no longer exists/.test(await textOf(page.locator('#banner'))));

  // A reload stays on the Keys view, and no secret comes back.
  await page.reload();
  await page.locator('#view-keys').waitFor({ state: 'visible', timeout: WAIT });
  await old.waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#key-secret').isVisible(), false);

  // Chinese, then a phone in light and dark, with a secret on screen.
  await page.locator('#key-form').getByLabel('Name', { exact: true }).fill('phone-team');
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.locator('#key-secret').waitFor({ state: 'visible', timeout: WAIT });
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese in the keys view', async () => (await textOf(page.getByRole('tab', { name: '代理密钥' }))) === '代理密钥');
  assert.equal(await textOf(old.locator('.key-status')), '已停用');
  assert.match(await textOf(page.locator('#key-secret')), /无法再次看到/);
  await page.screenshot({ path: path.join(artifacts, 'admin-keys-desktop-zh.png'), fullPage: true });
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  for (const scheme of ['light', 'dark']) {
    await page.setViewportSize({ width: 375, height: 812 });
    await page.emulateMedia({ colorScheme: scheme });
    await keyRow(page, 'phone-team').waitFor({ timeout: WAIT });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the keys view at 375 px scrolls sideways by ${overflow} px`);
    await page.screenshot({ path: path.join(artifacts, `admin-keys-phone-${scheme}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(artifacts, 'admin-keys-desktop-dark.png'), fullPage: true });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.getByRole('button', { name: 'I have copied it' }).click();

  // A server without the keys API: the view says so and offers no create.
  await page.unroute(KEYS_ROUTE);
  await page.route(KEYS_ROUTE, (route) => route.fulfill({ status: 404, contentType: 'application/json', body: '{"error":{"type":"invalid_request_error","message":"not found"}}' }));
  await page.reload();
  await until('the no-keys-API notice', async () => /no proxy keys API/.test(await textOf(page.locator('#keys-off'))));
  assert.equal(await page.locator('#key-add-btn').isDisabled(), true);
  await page.unroute(KEYS_ROUTE);
  await page.close();
});

test('admin: auth, upstream keys and auth_style in the mapping editor (answers played back)', async () => {
  const page = await newPage();
  const keyed = mappingItem('/mock-keys', [{ url: 'http://127.0.0.1:9/k', weight: 1, auth_style: 'x-api-key', key_set: true, key_hint: '…9xyz' }], { auth: 'keys' });
  const api10 = await playAdminAPI(page, [keyed]);
  await login(page);

  // The list: the key's hint and style, never more.
  const cell = row(page, '/mock-keys').locator('td').nth(1);
  await cell.waitFor({ timeout: WAIT });
  assert.match(await textOf(cell), /key …9xyz/);
  assert.match(await textOf(cell), /x-api-key/);
  assert.match(await textOf(cell), /auth keys/);

  // Add with proxy keys: the key fields open only with auth "keys".
  await page.locator('#add-prefix').fill('/mock-auth');
  await page.locator('#add-target').fill('http://127.0.0.1:9/g');
  await page.getByRole('button', { name: 'Several targets and options' }).click();
  const authSel = page.getByLabel('Callers');
  assert.equal(await authSel.inputValue(), 'passthrough');
  const key = page.getByLabel('Target 1 Upstream key');
  const style = page.getByLabel('Target 1 Key sent as');
  assert.equal(await key.isDisabled(), true);
  assert.equal(await style.isDisabled(), true);
  assert.match(await textOf(page.locator('#add-targets-0-key-hint')), /Only with auth “keys”/);
  await authSel.selectOption('keys');
  assert.equal(await focusedLabel(page), 'add-auth');
  assert.equal(await key.isDisabled(), false);
  assert.equal(await key.getAttribute('type'), 'password');
  assert.equal(await textOf(page.locator('#add-targets-0-key-hint')), 'No key: this target gets no credential.');
  await key.fill('sk-upstream-e2e-1234');
  assert.match(await textOf(page.locator('#add-targets-0-key-hint')), /^Sent on save/);
  assert.deepEqual(await style.locator('option').evaluateAll((os) => os.map((o) => o.value)), ['', 'bearer', 'x-api-key', 'x-goog-api-key', 'api-key', 'query-key']);
  await style.selectOption('x-goog-api-key');

  // The API's messages about these fields go beside them.
  const fieldErrors = [
    ['invalid_target', 'targets[0].key must be at most 4096 bytes without control characters', '#add-targets-0-key'],
    ['invalid_target', 'targets[0].auth_style must be one of bearer, x-api-key, x-goog-api-key, api-key, query-key', '#add-targets-0-auth-style'],
    ['invalid_mapping', 'auth must be "passthrough" or "keys"', '#add-auth'],
  ];
  for (const [code, message, field] of fieldErrors) {
    api10.reply = apiError(code, message);
    await page.locator('#add-btn').click();
    await until(`${message} beside ${field}`, async () => (await textOf(page.locator(field + '-error'))) === message);
    assert.equal(await page.locator(field).getAttribute('aria-invalid'), 'true');
    assert.equal(await focusedLabel(page), field.slice(1));
  }
  assert.equal(await key.inputValue(), 'sk-upstream-e2e-1234', 'the typed key survives a refusal');
  await page.locator('#add-btn').click();
  await row(page, '/mock-auth').waitFor({ timeout: WAIT });
  assert.deepEqual(api10.sent.at(-1), {
    method: 'POST', path: '/api/mappings',
    body: {
      prefix: '/mock-auth',
      targets: [{ url: 'http://127.0.0.1:9/g', weight: 1, auth_style: 'x-goog-api-key', key: 'sk-upstream-e2e-1234' }],
      balance: 'failover', retry_on: [429, 500, 502, 503, 504], auth: 'keys',
      limits: { rpm: 0, tpm: 0, concurrency: 0 }, stream_idle_timeout: '0s',
    },
  });
  assert.match(await textOf(row(page, '/mock-auth')), /key …1234/);
  assert.equal(await bodyHolds(page, 'sk-upstream-e2e-1234'), false, 'the key is gone from the page once sent');

  // Edit: an untouched key is left out (the server keeps it).
  const r = row(page, '/mock-keys');
  const ed = r.locator('form.row-editor');
  await r.getByRole('button', { name: /^Edit/ }).click();
  assert.equal(await ed.getByLabel('Callers').inputValue(), 'keys');
  assert.equal(await ed.getByLabel('Target 1 Key sent as').inputValue(), 'x-api-key');
  assert.equal(await ed.getByLabel('Target 1 Upstream key').getAttribute('placeholder'), '…9xyz');
  assert.match(await textOf(ed), /A key …9xyz is set and kept/);
  await r.getByRole('button', { name: 'Save' }).click();
  await until('the saved row', async () => (await r.locator('form').count()) === 0);
  assert.deepEqual(api10.sent.at(-1).body.targets, [{ url: 'http://127.0.0.1:9/k', weight: 1, auth_style: 'x-api-key' }]);

  // Replace it: the new key is sent once.
  await r.getByRole('button', { name: /^Edit/ }).click();
  await ed.getByLabel('Target 1 Upstream key').fill('sk-replaced-5678');
  assert.match(await textOf(ed), /Replaces the key …9xyz on save/);
  await ed.getByLabel('Target 1 Upstream key').press('Enter');
  await until('the saved row', async () => (await r.locator('form').count()) === 0);
  assert.deepEqual(api10.sent.at(-1).body.targets, [{ url: 'http://127.0.0.1:9/k', weight: 1, auth_style: 'x-api-key', key: 'sk-replaced-5678' }]);
  assert.match(await textOf(r), /key …5678/);

  // Back to passthrough with the key still stored: the server's refusal
  // shows beside the key, which can then be removed (and kept again).
  await r.getByRole('button', { name: /^Edit/ }).click();
  await ed.getByLabel('Callers').selectOption('passthrough');
  assert.equal(await ed.getByLabel('Target 1 Upstream key').isDisabled(), true);
  assert.match(await textOf(ed), /only auth “keys” may hold one/);
  api10.reply = apiError('invalid_target', 'targets[0].key is only allowed with "auth": "keys": an upstream key is only ever used for callers that showed a proxy key');
  await r.getByRole('button', { name: 'Save' }).click();
  await until('the key message', async () => /^targets\[0\]\.key is only allowed/.test(await textOf(ed.locator('#row-_mock-keys-targets-0-key-error'))));
  assert.ok(!('key' in api10.sent.at(-1).body.targets[0]), 'the stored key is not dropped unasked');
  await ed.getByRole('button', { name: 'Remove the key …5678 of target 1' }).click();
  assert.match(await textOf(ed), /The key …5678 will be removed on save/);
  assert.equal(await focusedLabel(page), 'Keep the key …5678 of target 1');
  await page.keyboard.press('Enter');
  assert.match(await textOf(ed), /A key …5678 is stored/);
  await ed.getByRole('button', { name: 'Remove the key …5678 of target 1' }).click();
  await r.getByRole('button', { name: 'Save' }).click();
  await until('the saved row', async () => (await r.locator('form').count()) === 0);
  assert.deepEqual(api10.sent.at(-1).body.targets, [{ url: 'http://127.0.0.1:9/k', weight: 1, auth_style: 'x-api-key', key: '' }]);
  assert.equal(api10.sent.at(-1).body.auth, 'passthrough');
  assert.doesNotMatch(await textOf(r), /key …/);

  // A phone, with the editor open: nothing scrolls sideways.
  await r.getByRole('button', { name: /^Edit/ }).click();
  await ed.getByLabel('Callers').selectOption('keys');
  for (const scheme of ['light', 'dark']) {
    await page.setViewportSize({ width: 375, height: 812 });
    await page.emulateMedia({ colorScheme: scheme });
    await ed.getByLabel('Target 1 Upstream key').waitFor({ timeout: WAIT });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the mapping editor with keys at 375 px scrolls sideways by ${overflow} px`);
    await page.screenshot({ path: path.join(artifacts, `admin-editor-keys-phone-${scheme}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.screenshot({ path: path.join(artifacts, 'admin-editor-keys-desktop.png'), fullPage: true });
  await page.unroute(/\/api\/mappings(\/.*)?$/);
  await page.close();
});

test('admin (§10 server): a keys mapping made on the page stores the upstream key write-only', async () => {
  const page = await newPage();
  await login(page);
  const stored = async (prefix) => (await api('GET', '/api/mappings')).data.items.find((m) => m.prefix === prefix);
  await page.locator('#add-prefix').fill('/e2e-auth');
  await page.locator('#add-target').fill(upstreamURL);
  await page.getByRole('button', { name: 'Several targets and options' }).click();
  await page.getByLabel('Target 1 Upstream key').waitFor({ timeout: WAIT });

  // A key on a passthrough mapping is refused, beside the key. The field
  // is disabled then, so the refusal is provoked by switching after typing.
  await page.getByLabel('Callers').selectOption('keys');
  await page.getByLabel('Target 1 Upstream key').fill('sk-upstream-e2e-real-0001');
  await page.getByLabel('Callers').selectOption('passthrough');
  await page.locator('#add-btn').click();
  await until('the key message', async () => /^targets\[0\]\.key/.test(await textOf(page.locator('#add-targets-0-key-error'))));
  assert.equal(await stored('/e2e-auth'), undefined, 'nothing invalid is stored');

  await page.getByLabel('Callers').selectOption('keys');
  await page.getByLabel('Target 1 Key sent as').selectOption('x-api-key');
  await page.locator('#add-btn').click();
  await row(page, '/e2e-auth').waitFor({ timeout: WAIT });
  let m = await stored('/e2e-auth');
  assert.equal(m.auth, 'keys');
  assert.equal(m.targets[0].auth_style, 'x-api-key');
  assert.equal(m.targets[0].key_set, true);
  assert.equal(m.targets[0].key_hint, '…0001');
  assert.ok(!JSON.stringify(m).includes('sk-upstream'), 'the key is never answered');
  assert.match(await textOf(row(page, '/e2e-auth')), /key …0001/);

  // Saved without touching the key: kept. Replaced: the new hint.
  await row(page, '/e2e-auth').getByRole('button', { name: /^Edit/ }).click();
  const ed = row(page, '/e2e-auth').locator('form.row-editor');
  await row(page, '/e2e-auth').getByRole('button', { name: 'Save' }).click();
  await until('the saved row', async () => (await row(page, '/e2e-auth').locator('form').count()) === 0);
  assert.equal((await stored('/e2e-auth')).targets[0].key_hint, '…0001');
  await row(page, '/e2e-auth').getByRole('button', { name: /^Edit/ }).click();
  await ed.getByLabel('Target 1 Upstream key').fill('sk-upstream-e2e-real-0002');
  await ed.getByLabel('Target 1 Upstream key').press('Enter');
  await until('the saved row', async () => (await row(page, '/e2e-auth').locator('form').count()) === 0);
  assert.equal((await stored('/e2e-auth')).targets[0].key_hint, '…0002');

  // Removed: no key left, and the mapping may go back to passthrough.
  await row(page, '/e2e-auth').getByRole('button', { name: /^Edit/ }).click();
  await ed.getByRole('button', { name: /^Remove the key …0002/ }).click();
  await ed.getByLabel('Callers').selectOption('passthrough');
  await row(page, '/e2e-auth').getByRole('button', { name: 'Save' }).click();
  await until('the saved row', async () => (await row(page, '/e2e-auth').locator('form').count()) === 0);
  m = await stored('/e2e-auth');
  assert.equal(m.auth, 'passthrough');
  assert.ok(!m.targets[0].key_set, 'the key was removed');
  assert.equal((await api('DELETE', '/api/mappings/e2e-auth')).status, 200);
  await page.close();
});

test('admin (§10 server): a proxy key made on the page admits callers until disabled or deleted', { skip: SKIP_S10 }, async () => {
  const created = await api('POST', '/api/mappings', { prefix: '/e2e-keys', auth: 'keys', targets: [{ url: upstreamURL, key: 'sk-upstream-e2e-keys-0001', auth_style: 'bearer' }] });
  assert.equal(created.status, 201, JSON.stringify(created.data));
  const call = async (secret) => {
    const res = await fetch(origin + '/e2e-keys/v1/models', { headers: { Authorization: 'Bearer ' + secret } });
    await res.arrayBuffer();
    return res.status;
  };
  const page = await newPage();
  await page.goto(origin + '/admin#keys');
  await page.locator('#token').fill(TOKEN);
  await page.locator('#token').press('Enter');
  await page.locator('#view-keys').waitFor({ state: 'visible', timeout: WAIT });

  // The server's own refusals, beside their fields.
  await page.getByRole('button', { name: 'Create key' }).click();
  await until('the name message', async () => /^name/.test(await textOf(page.locator('#key-name-error'))));
  await page.locator('#key-form').getByLabel('Name', { exact: true }).fill('e2e-real');
  await page.getByLabel('Requests / min').fill('-1');
  await page.getByRole('button', { name: 'Create key' }).click();
  await until('the limits message', async () => /^limits\.rpm/.test(await textOf(page.locator('#key-rpm-error'))));
  await page.getByLabel('Requests / min').fill('600');
  await page.getByLabel('Expires').fill('2001-01-01T00:00');
  await page.getByRole('button', { name: 'Create key' }).click();
  await until('the expires_at message', async () => /^expires_at/.test(await textOf(page.locator('#key-expires-error'))));
  assert.equal((await api('GET', '/api/keys')).data.keys.filter((k) => k.name === 'e2e-real').length, 0, 'nothing invalid is stored');
  await page.getByLabel('Expires').fill('');
  await page.locator('#key-form').getByLabel('Mappings', { exact: true }).fill('/e2e-keys');
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.locator('#key-secret').waitFor({ state: 'visible', timeout: WAIT });
  const secret = await textOf(page.locator('#key-secret-value'));
  assert.match(secret, /^apx-.{20,}$/);
  const made = (await api('GET', '/api/keys')).data.keys.find((k) => k.name === 'e2e-real');
  assert.deepEqual(made.limits, { rpm: 600, tpm: 0, concurrency: 0 }, 'the limits typed are stored');
  await page.locator('#key-secret').getByRole('button', { name: 'Copy the new proxy key' }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);

  const list = (await api('GET', '/api/keys')).data;
  const k = list.keys.find((x) => x.name === 'e2e-real');
  assert.ok(k, JSON.stringify(list));
  assert.ok(!JSON.stringify(list).includes(secret), 'the list never holds the secret');
  assert.equal(k.hint, 'apx-…' + secret.slice(-4));
  assert.deepEqual(k.prefixes, ['/e2e-keys']);
  const r = keyRow(page, 'e2e-real');
  assert.equal(await textOf(r.locator('.key-hint')), k.hint);
  await page.getByRole('button', { name: 'I have copied it' }).click();

  // The key works; the upstream sees its own key, never the proxy key.
  const seen = upstreamSeen.length;
  assert.equal(await call(secret), 200);
  const got = upstreamSeen.slice(seen).find((s) => s.url === '/v1/models');
  assert.equal(got.headers.authorization, 'Bearer sk-upstream-e2e-keys-0001');
  assert.ok(!JSON.stringify(got.headers).includes(secret));
  assert.equal(await call('apx-not-a-key-0000000000000000'), 401);

  // Disabled on the page: refused; enabled: admitted again.
  await r.getByRole('button', { name: 'Disable e2e-real' }).click();
  await until('the disabled status', async () => (await textOf(r.locator('.key-status'))) === 'disabled');
  await until('a refusal of the disabled key', async () => (await call(secret)) === 401);
  await r.getByRole('button', { name: 'Enable e2e-real' }).click();
  await until('the active status', async () => (await textOf(r.locator('.key-status'))) === 'active');
  await until('the key to work again', async () => (await call(secret)) === 200);
  // Its last use, once the server reports one.
  await page.reload();
  await r.waitFor({ timeout: WAIT });
  const used = (await api('GET', '/api/keys/' + k.id)).data.last_used_at;
  if (used) assert.match(await textOf(r.locator('.key-used')), /ago$/);

  // Deleted with a confirmation: gone, and refused.
  await r.getByRole('button', { name: 'Delete e2e-real' }).click();
  await r.getByRole('button', { name: 'Yes, delete' }).click();
  await until('the deleted row to go', async () => (await keyRow(page, 'e2e-real').count()) === 0);
  assert.equal((await api('GET', '/api/keys/' + k.id)).status, 404);
  await until('a refusal of the deleted key', async () => (await call(secret)) === 401);
  assert.equal((await api('DELETE', '/api/mappings/e2e-keys')).status, 200);
  await page.close();
});

// SPEC §12: the admin page's Requests view (the request log). The first
// three tests play GET /api/requests back from a log kept in the test
// (page.route), so they run on any server build. The last one needs the
// real server's /api/requests: E2E_SKIP_S12_SERVER=1 skips it on a server
// without the request log API.
const SKIP_S12 = process.env.E2E_SKIP_S12_SERVER === '1' ? 'E2E_SKIP_S12_SERVER=1: the server has no §12 request log API yet' : false;
const REQUESTS_ROUTE = /\/api\/requests(\?.*)?$/;

// logRecord is a record of the request log as GET /api/requests lists it.
function logRecord(id, opts = {}) {
  return {
    id, time: '2026-12-02T08:00:00.123Z', prefix: '/openai', method: 'POST', path: '/v1/chat/completions',
    status: 200, code: '', key_id: null, key_name: null, model: 'gpt-4o', stream: false,
    prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, latency_ms: 812.4, ttfb_ms: 310.7,
    bytes_in: 230, bytes_out: 4100, target: 0, attempts: 1, client_closed: false, client_ip: '203.0.113.7', ...opts,
  };
}

// fillerRecords makes n plain records, each a second older than the last,
// below the time of the newest test records.
function fillerRecords(n, base = Date.parse('2026-12-02T07:00:00Z')) {
  return Array.from({ length: n }, (_, i) => logRecord('rq_f' + String(i).padStart(4, '0'), {
    time: new Date(base - i * 1000).toISOString(), prefix: '/gemini', model: 'gemini-2.0-flash',
    path: '/v1beta/models/gemini-2.0-flash:generateContent', latency_ms: 200 + (i % 50), ttfb_ms: 90 + (i % 30),
  }));
}

// playRequestsAPI answers GET /api/requests for page from state.log
// (newest first) the way the server does: the filters, limit, before=<id>
// and next = the id of the last record when older ones match. Every URL
// asked is kept in state.seen; state.reply, when set, answers the next
// call instead; state.raw, when set, answers every call with its page
// whatever the limit (the 1,000-row test).
async function playRequestsAPI(page, log) {
  const state = { log, seen: [], reply: null, raw: null };
  await page.route(REQUESTS_ROUTE, (route) => {
    const url = new URL(route.request().url());
    state.seen.push(url);
    const json = (status, body) => route.fulfill({ status, contentType: 'application/json', body: JSON.stringify(body) });
    if (state.reply) {
      const r = state.reply;
      state.reply = null;
      return json(r.status, r.body);
    }
    if (state.raw) return json(200, state.raw);
    const q = url.searchParams;
    const s = q.get('status') || '';
    const match = (r) => (!q.get('prefix') || r.prefix === q.get('prefix')) &&
      (!q.get('key_id') || r.key_id === q.get('key_id')) &&
      (!q.get('model') || r.model === q.get('model')) &&
      (!s || (s.endsWith('xx') ? Math.floor(r.status / 100) === Number(s[0]) : r.status === Number(s)));
    const all = state.log.filter(match);
    const limit = Number(q.get('limit') || 100);
    const start = q.get('before') ? all.findIndex((r) => r.id === q.get('before')) + 1 : 0;
    const list = all.slice(start, start + limit);
    return json(200, { requests: list, next: start + limit < all.length ? list.at(-1).id : null });
  });
  return state;
}

// asked returns the parameters of the last call to /api/requests.
function asked(state) {
  return Object.fromEntries(state.seen.at(-1).searchParams);
}

async function rowIds(page) {
  return page.locator('#req-body tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
}

function reqRow(page, id) {
  return page.locator(`#req-body tr[data-id="${id}"]`);
}

test('admin: the Requests view lists the log newest first, filters into the address, loads older, refreshes (answers played back)', async () => {
  const page = await newPage();
  await playKeysAPI(page, [keyItem('k_team_a', 'team-a'), keyItem('k_team_b', 'team-b')]);
  const limited = logRecord('rq_a', {
    time: '2026-12-02T08:00:03.250Z', status: 429, code: 'rate_limited', key_id: 'k_team_a', key_name: 'team-a',
    stream: true, prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, latency_ms: 1.4, ttfb_ms: 1.2, target: null,
  });
  const anon = logRecord('rq_b', {
    time: '2026-12-02T08:00:02.000Z', prefix: '/anthropic', path: '/v1/<img src=x onerror=window.__xss=1>',
    model: null, prompt_tokens: 1234, completion_tokens: 56789, total_tokens: 58023, latency_ms: 2500, ttfb_ms: 640,
  });
  const failed = logRecord('rq_c', {
    time: '2026-12-02T08:00:01.000Z', status: 502, code: 'upstream_error', model: 'gpt-4o', key_id: 'k_team_b', key_name: 'team-b',
    attempts: 2, target: 1, client_closed: true,
  });
  // 103 records: a first page of 100, then 3 older ones.
  const reqAPI = await playRequestsAPI(page, [limited, anon, failed, ...fillerRecords(100)]);
  await login(page);

  // The Requests tab: its own view, in the address.
  const tab = page.getByRole('tab', { name: 'Requests' });
  await tab.click();
  assert.equal(await tab.getAttribute('aria-selected'), 'true');
  assert.equal(new URL(page.url()).hash, '#requests');
  assert.equal(await textOf(page.locator('#h-admin')), 'Requests');
  await until('the first page of rows', async () => (await page.locator('#req-body tr').count()) === 100);
  assert.deepEqual(asked(reqAPI), { limit: '100' });
  assert.deepEqual((await rowIds(page)).slice(0, 3), ['rq_a', 'rq_b', 'rq_c'], 'newest first');

  // Cells, as text.
  const a = reqRow(page, 'rq_a');
  const wantTime = await page.evaluate((iso) => new Intl.DateTimeFormat(navigator.languages, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).format(new Date(iso)), limited.time);
  assert.equal(await textOf(a.locator('.rq-time')), wantTime);
  assert.match(wantTime, /\d\d:\d\d:03/, 'the time shows seconds');
  assert.equal(await textOf(a.locator('.rq-prefix')), '/openai');
  assert.equal(await textOf(a.locator('.rq-req')), 'POST /v1/chat/completions stream');
  assert.equal(await textOf(a.locator('.rq-status .st')), '429 rate_limited');
  assert.equal(await a.locator('.rq-status .st').getAttribute('class'), 'st st-4xx');
  assert.equal(await textOf(a.locator('.rq-model')), 'gpt-4o');
  assert.equal(await textOf(a.locator('.rq-tokens')), '—');
  assert.equal(await textOf(a.locator('.rq-latency')), '1.4 ms / 1.2 ms');
  assert.equal(await textOf(a.locator('.rq-key')), 'team-a');
  assert.equal(await a.locator('.rq-key').getAttribute('title'), 'k_team_a');
  assert.equal(await textOf(a.locator('.rq-attempts')), '1');
  const b = reqRow(page, 'rq_b');
  assert.equal(await textOf(b.locator('.rq-key')), '—');
  assert.equal(await textOf(b.locator('.rq-model')), '—');
  assert.equal(await textOf(b.locator('.rq-tokens')), '1,234 / 56.8K / 58K');
  assert.equal(await textOf(b.locator('.rq-latency')), '2.50 s / 640 ms');
  assert.equal(await textOf(b.locator('.rq-req')), 'POST /v1/<img src=x onerror=window.__xss=1>', 'a path is text');
  assert.equal(await page.locator('#req-body img').count(), 0);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await textOf(b.locator('.rq-status .st')), '200');
  assert.equal(await b.locator('.rq-status .st').getAttribute('class'), 'st st-2xx');
  const c = reqRow(page, 'rq_c');
  assert.equal(await textOf(c.locator('.rq-status')), '502 upstream_error client closed');
  assert.equal(await c.locator('.rq-status .st').getAttribute('class'), 'st st-5xx');
  assert.equal(await textOf(c.locator('.rq-attempts')), '2 → target 2');
  assert.equal(await textOf(reqRow(page, 'rq_f0000').locator('.rq-attempts')), '1');
  assert.equal(await textOf(page.locator('#req-count')), '100 shown');

  // Load older: before=<next>, appended; gone when next is null.
  const older = page.getByRole('button', { name: 'Load older' });
  assert.equal(await older.isVisible(), true);
  await older.click();
  await until('the older rows', async () => (await page.locator('#req-body tr').count()) === 103);
  assert.deepEqual(asked(reqAPI), { limit: '100', before: 'rq_f0096' });
  assert.deepEqual((await rowIds(page)).slice(-3), ['rq_f0097', 'rq_f0098', 'rq_f0099']);
  assert.equal(await older.isVisible(), false, 'no Load older once next is null');

  // A newer record: no refresh while the reader is down at the old rows,
  // then on top at the next refresh, once, with the older rows kept.
  reqAPI.log.unshift(logRecord('rq_new', { time: '2026-12-02T08:00:09.000Z', model: 'gpt-4o-mini' }));
  await until('the paused note', async () => /^Paused/.test(await textOf(page.locator('#req-live-text'))), REFRESH_WAIT);
  assert.equal(await reqRow(page, 'rq_new').count(), 0);
  await page.evaluate(() => window.scrollTo(0, 0));
  await until('the new record on top', async () => (await rowIds(page))[0] === 'rq_new', REFRESH_WAIT);
  const ids = await rowIds(page);
  assert.equal(ids.length, 104);
  assert.equal(new Set(ids).size, ids.length, 'no record twice');
  assert.equal(ids.at(-1), 'rq_f0099', 'the older rows stay');
  assert.match(await textOf(page.locator('#req-live-text')), /^Live · updated .* · refreshes every 5 s$/);
  assert.deepEqual(asked(reqAPI), { limit: '100' });
  await page.screenshot({ path: path.join(artifacts, 'admin-requests-desktop-light.png'), fullPage: false });

  // Filters: each change asks from the newest with its parameter, and
  // goes into the address.
  await page.getByLabel('Mapping', { exact: true }).selectOption('/openai');
  await until('the prefix filter', async () => asked(reqAPI).prefix === '/openai');
  assert.equal(new URL(page.url()).hash, '#requests?prefix=/openai');
  await page.getByLabel('Status', { exact: true }).selectOption('5xx');
  await until('the status class', async () => asked(reqAPI).status === '5xx');
  assert.deepEqual(asked(reqAPI), { limit: '100', prefix: '/openai', status: '5xx' });
  await until('the one 5xx row', async () => JSON.stringify(await rowIds(page)) === '["rq_c"]');
  assert.equal(new URL(page.url()).hash, '#requests?prefix=/openai&status=5xx');
  await page.getByLabel('Proxy key', { exact: true }).selectOption({ label: 'team-a' });
  await until('the key filter', async () => asked(reqAPI).key_id === 'k_team_a');
  await page.getByLabel('Status', { exact: true }).selectOption('code');
  await page.getByLabel('Status code').fill('4o4');
  await page.getByLabel('Status code').press('Enter');
  await until('the code error', async () => /three digits/.test(await textOf(page.locator('#req-code-error'))));
  assert.equal(asked(reqAPI).status, '5xx', 'a malformed code is not sent');
  await page.getByLabel('Status code').fill('404');
  await page.getByLabel('Status code').press('Enter');
  await until('the exact status', async () => asked(reqAPI).status === '404');
  await page.getByLabel('Model', { exact: true }).fill('gpt-4o');
  await page.getByLabel('Model', { exact: true }).press('Enter');
  await until('the model filter', async () => asked(reqAPI).model === 'gpt-4o');
  const want = { limit: '100', prefix: '/openai', key_id: 'k_team_a', status: '404', model: 'gpt-4o' };
  assert.deepEqual(asked(reqAPI), want);
  const filtered = '#requests?prefix=/openai&key_id=k_team_a&status=404&model=gpt-4o';
  assert.equal(new URL(page.url()).hash, filtered);
  await until('the no-match note', async () => (await textOf(page.locator('#req-empty'))) === 'No requests match these filters.');
  assert.equal(await page.locator('#req-body tr').count(), 0);

  // A reload restores the tab and the filters.
  const seen = reqAPI.seen.length;
  await page.reload();
  await page.locator('#view-requests').waitFor({ state: 'visible', timeout: WAIT });
  await until('a call after the reload', async () => reqAPI.seen.length > seen);
  assert.deepEqual(asked(reqAPI), want);
  assert.equal(await page.getByRole('tab', { name: 'Requests' }).getAttribute('aria-selected'), 'true');
  await until('the key list', async () => (await page.locator('#req-key').inputValue()) === 'k_team_a');
  assert.equal(await page.locator('#req-prefix').inputValue(), '/openai');
  assert.equal(await page.locator('#req-status').inputValue(), 'code');
  assert.equal(await page.locator('#req-code').inputValue(), '404');
  assert.equal(await page.locator('#req-model').inputValue(), 'gpt-4o');
  assert.equal(new URL(page.url()).hash, filtered);

  // The copied address in another tab opens the same view after login.
  const other = await newPage();
  const otherAPI = await playRequestsAPI(other, reqAPI.log);
  await other.goto(origin + '/admin' + filtered);
  await other.locator('#token').fill(TOKEN);
  await other.locator('#token').press('Enter');
  await other.locator('#view-requests').waitFor({ state: 'visible', timeout: WAIT });
  await until('the filtered call in the other tab', async () => otherAPI.seen.length > 0);
  assert.deepEqual(asked(otherAPI), want);
  assert.equal(await other.locator('#req-model').inputValue(), 'gpt-4o');
  await other.close();

  // The API's 400 message is shown in the view.
  reqAPI.reply = { status: 400, body: { error: { type: 'invalid_request_error', code: 'invalid_request', message: 'model must be at most 256 bytes' } } };
  await page.getByLabel('Model', { exact: true }).fill('x'.repeat(300));
  await page.getByLabel('Model', { exact: true }).press('Enter');
  await until('the 400 message', async () => (await textOf(page.locator('#req-error'))) === 'model must be at most 256 bytes');
  assert.equal(await page.locator('#req-empty').isVisible(), false, 'the error, not the empty state');

  // An address typed into this tab: its filters are taken at once.
  await page.evaluate(() => { window.location.hash = '#requests?status=4xx'; });
  await until('the filters of the new address', async () => JSON.stringify(asked(reqAPI)) === '{"limit":"100","status":"4xx"}');
  assert.equal(await page.locator('#req-status').inputValue(), '4xx');
  assert.equal(await page.locator('#req-model').inputValue(), '');
  await until('the 429 row', async () => JSON.stringify(await rowIds(page)) === '["rq_a"]');

  // Clear filters: back to everything, newest first.
  await page.getByRole('button', { name: 'Clear filters' }).click();
  await until('the unfiltered rows', async () => (await rowIds(page))[0] === 'rq_new');
  assert.deepEqual(asked(reqAPI), { limit: '100' });
  assert.equal(new URL(page.url()).hash, '#requests');
  assert.equal(await page.locator('#req-error').isVisible(), false);

  // Chinese, and dark.
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese in the requests view', async () => (await textOf(page.getByRole('tab', { name: '请求' }))) === '请求');
  assert.equal(await textOf(reqRow(page, 'rq_c').locator('.rq-attempts')), '2 → 目标 2');
  assert.match(await textOf(reqRow(page, 'rq_c').locator('.rq-status')), /客户端断开/);
  await page.screenshot({ path: path.join(artifacts, 'admin-requests-desktop-zh.png') });
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(artifacts, 'admin-requests-desktop-dark.png') });
  await page.emulateMedia({ colorScheme: 'light' });

  // An empty log: a short note. A server without the API: says so.
  reqAPI.log = [];
  await page.reload();
  await until('the empty note', async () => (await textOf(page.locator('#req-empty'))) === 'No requests yet.');
  await page.unroute(REQUESTS_ROUTE);
  await page.route(REQUESTS_ROUTE, (route) => route.fulfill({ status: 404, contentType: 'application/json', body: '{"error":{"code":"not_found","message":"not found"}}' }));
  await page.reload();
  await until('the no-API note', async () => /no request log API/.test(await textOf(page.locator('#req-error'))));
  await page.unroute(REQUESTS_ROUTE);
  await page.close();
});

test('admin: the Requests view renders 1,000 rows quickly (answers played back)', async () => {
  const page = await newPage();
  const reqAPI = await playRequestsAPI(page, []);
  // One answer of 1,000 records (the most one call returns), whatever
  // the page asked for.
  const log = fillerRecords(1000, Date.parse('2026-12-02T08:00:00Z'));
  log[0] = { ...log[0], status: 503, code: 'upstream_unavailable', key_id: 'k_x', key_name: 'team-x', attempts: 3, target: 2 };
  reqAPI.raw = { requests: log, next: 'rq_f0999' };
  await login(page);
  await page.getByRole('tab', { name: 'Requests' }).click();
  await until('1,000 rows', async () => (await page.locator('#req-body tr').count()) === 1000);
  const figure = async () => page.evaluate(() => new Promise((resolve) => {
    const tb = document.getElementById('req-table');
    // frameMs is set after the frame that shows the rows.
    const wait = () => (tb.dataset.frameMs ? resolve({ render: Number(tb.dataset.renderMs), frame: Number(tb.dataset.frameMs) }) : setTimeout(wait, 20));
    wait();
  }));
  const first = await figure();
  // A full redraw of the same 1,000 rows (a language change).
  await page.evaluate(() => { delete document.getElementById('req-table').dataset.frameMs; });
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese rows', async () => /目标 3/.test(await textOf(page.locator('#req-body tr').first().locator('.rq-attempts'))));
  const redraw = await figure();
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  console.log(`# requests view, 1,000 rows: render ${first.render} ms (until the next frame ${first.frame} ms); full redraw ${redraw.render} ms (${redraw.frame} ms)`);
  fs.writeFileSync(path.join(artifacts, 'requests-render.json'), JSON.stringify({ rows: 1000, first, redraw }, null, 2) + '\n');
  // Generous bounds: they catch a quadratic render or a layout read per
  // row, not a slow machine. The aim is under 200 ms.
  assert.ok(first.render < 1000, `1,000 rows render in ${first.render} ms`);
  assert.ok(redraw.render < 1000, `1,000 rows redraw in ${redraw.render} ms`);
  assert.ok(first.frame < 3000, `1,000 rows are on screen after ${first.frame} ms`);
  await page.close();
});

test('admin: the Requests view at 375 px has no sideways scroll with 50 rows (answers played back)', async () => {
  const page = await newPage();
  await playKeysAPI(page, [keyItem('k_team_a', 'team-a')]);
  const log = fillerRecords(50, Date.parse('2026-12-02T08:00:00Z'));
  log[0] = logRecord('rq_long', {
    path: '/v1/projects/some-long-project-name/locations/us-central1/publishers/google/models/a-very-long-model-name:streamGenerateContent',
    model: 'a-very-long-model-name-with-a-date-2026-12-02-preview', status: 429, code: 'rate_limited',
    key_id: 'k_team_a', key_name: 'a-key-with-a-rather-long-name', attempts: 3, target: 2, client_closed: true, stream: true,
  });
  await playRequestsAPI(page, log);
  await login(page);
  await page.setViewportSize({ width: 375, height: 812 });
  await page.getByRole('tab', { name: 'Requests' }).click();
  await until('50 rows', async () => (await page.locator('#req-body tr').count()) === 50);
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the requests view at 375 px scrolls sideways by ${overflow} px`);
    await page.screenshot({ path: path.join(artifacts, `admin-requests-phone-${scheme}.png`), fullPage: false });
  }
  // Stacked: a row is no wider than the screen.
  const widest = await page.locator('#req-body tr').evaluateAll((trs) => Math.max(...trs.map((tr) => tr.getBoundingClientRect().right)));
  assert.ok(widest <= 375, `a row reaches ${widest} px`);
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.close();
});

// Needs the server's request log API (SPEC §12), which this branch's
// server does not have yet: run it once that API is merged
// (E2E_SKIP_S12_SERVER=1 skips it before then).
test('admin (§12 server): three requests through the proxy show in the Requests view', { skip: SKIP_S12 }, async () => {
  const created = await api('POST', '/api/mappings', { prefix: '/e2e-log', target: upstreamURL });
  assert.equal(created.status, 201, JSON.stringify(created.data));
  try {
    for (let i = 0; i < 3; i++) {
      const r = await proxied('/e2e-log/v1/chat/completions', { model: 'gpt-log-e2e', messages: [{ role: 'user', content: 'hi ' + i }] });
      assert.equal(r.status, 200, r.text);
    }
    const page = await newPage();
    await page.goto(origin + '/admin#requests?prefix=/e2e-log');
    await page.locator('#token').fill(TOKEN);
    await page.locator('#token').press('Enter');
    await page.locator('#view-requests').waitFor({ state: 'visible', timeout: WAIT });
    // Records reach the store about once a second; the view refreshes
    // every 5 s.
    await until('three rows with status 200 and the model', async () => {
      const err = await page.locator('#req-error').isVisible() ? await textOf(page.locator('#req-error')) : '';
      const cells = await page.locator('#req-body tr').evaluateAll((trs) => trs.map((tr) => [
        tr.querySelector('.rq-status .st').textContent, tr.querySelector('.rq-model').textContent,
        tr.querySelector('.rq-prefix').textContent, tr.querySelector('.rq-req').textContent]));
      if (cells.length === 3 && cells.every(([st, model, prefix, req]) => st === '200' && model === 'gpt-log-e2e' &&
        prefix === '/e2e-log' && req.startsWith('POST /v1/chat/completions'))) return true;
      // Not yet: thrown, so the deadline's message says what was shown.
      throw new Error(err ? 'the view says: ' + err : 'rows: ' + JSON.stringify(cells));
    }, REFRESH_WAIT);
    assert.equal(await textOf(page.locator('#req-body tr').first().locator('.rq-tokens')), '7 / 5 / 12');
    await page.close();
  } finally {
    await api('DELETE', '/api/mappings/e2e-log');
  }
});

test('dashboard: endpoint counts, charts, copy buttons, language and theme', async () => {
  const statsOf = async () => (await (await fetch(origin + '/stats?range=24h')).json()).endpoints['/e2e'] || {};
  const base = await statsOf();
  // Traffic on /e2e: three completions (7+5 tokens each), one failure.
  for (const model of ['gpt-e2e', 'gpt-e2e', '<img src=x onerror=window.__xss=1>']) {
    const r = await proxied('/e2e/v1/chat/completions', { model, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(r.status, 200);
  }
  assert.equal((await proxied('/e2e/fail')).status, 500);
  const want = await until('/stats to count the 4 requests', async () => {
    const e = await statsOf();
    return (e.count || 0) === (base.count || 0) + 4 && e;
  });
  assert.equal(want.error_count - (base.error_count || 0), 1);
  assert.equal(want.tokens.total - ((base.tokens && base.tokens.total) || 0), 36);
  const n = (v) => new Intl.NumberFormat('en-US').format(v);

  const page = await newPage();
  await page.goto(origin + '/');
  const tr = page.locator('#ep-body tr[data-prefix="/e2e"]');
  const td = (i) => tr.locator('td').nth(i);
  const main = (i) => textOf(td(i).locator('span').first());
  await until('the /e2e row to show the new count', async () => (await tr.count()) === 1 && (await main(2)) === n(want.count), REFRESH_WAIT);
  // Cells: endpoint, URL, requests, errors, latency, TTFB, tokens (of the
  // range); the last five hold a figure and a muted line under it.
  assert.equal(await textOf(td(0).locator('.prefix')), '/e2e');
  assert.equal(await textOf(td(0).locator('.target')), upstreamURL + '/base');
  assert.equal(await textOf(td(1).locator('.url')), origin + '/e2e');
  assert.equal(await main(3), n(want.error_count), 'errors');
  assert.match(await main(5), /\d ms$/, 'TTFB p50');
  assert.equal(await main(6), n(want.tokens.total), 'tokens');
  assert.equal(await page.locator('#ep-body img').count(), 0, 'a model name is text, not markup');
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.notEqual(await textOf(page.locator('[data-k="total"]')), '–');
  assert.match(await textOf(page.locator('#status-text')), /Live/);

  // Charts: SVG with at least one bar of non-zero height each.
  for (const id of ['#chart-requests', '#chart-tokens']) {
    const bars = await until(`bars in ${id}`, async () => {
      const n = await page.locator(`${id} svg rect.bar`).evaluateAll(
        (rs) => rs.filter((r) => Number(r.getAttribute('height')) > 0).length);
      return n > 0 && n;
    });
    assert.ok(bars >= 1);
  }

  // Copy the proxy URL: the button says so and the clipboard holds it.
  const copy = tr.getByRole('button', { name: 'Copy /e2e' });
  await copy.click();
  await until('the Copied feedback', async () => (await textOf(copy)) === 'Copied');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), origin + '/e2e');
  // The usage snippets carry this server's address.
  const openaiSnippet = page.locator('[data-snippet="use.openai"]');
  await openaiSnippet.getByRole('button', { name: /^Copy/ }).click();
  await until('the snippet on the clipboard', async () =>
    (await page.evaluate(() => navigator.clipboard.readText())).includes(`base_url="${origin}/openai/v1"`));
  assert.match(await textOf(page.locator('[data-snippet="use.curl"] code')), new RegExp(`^curl ${origin.replace(/[.]/g, '\\.')}/openai/v1/chat/completions`));

  // Scroll position survives refreshes.
  await page.setViewportSize({ width: 1280, height: 500 });
  await page.evaluate(() => window.scrollTo(0, 400));
  const renders = Number(await page.evaluate(() => document.body.dataset.renders));
  await until('a refresh', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > renders, REFRESH_WAIT);
  assert.equal(await page.evaluate(() => Math.round(window.scrollY)), 400);
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.evaluate(() => window.scrollTo(0, 0));

  // Language: the toggle switches the visible text and is remembered.
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese text', async () => (await textOf(page.locator('h1'))) === '流量');
  assert.equal(await textOf(page.locator('nav a[href="/admin"]')), '管理');
  assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');
  assert.match(await textOf(page.locator('#status-text')), /实时/);
  await page.reload();
  await until('Chinese after reload', async () => (await textOf(page.locator('h1'))) === '流量');
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  await until('English text', async () => (await textOf(page.locator('h1'))) === 'Traffic');

  // Theme: follows the system, the toggle overrides it and is remembered.
  await page.emulateMedia({ colorScheme: 'dark' });
  await until('dark theme from the system', async () => (await page.evaluate(() => document.documentElement.dataset.theme)) === 'dark');
  await page.locator('[data-theme-toggle]').click();
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'light');
  assert.equal(await page.evaluate(() => localStorage.getItem('apiproxy.theme')), 'light');
  await page.locator('[data-theme-toggle]').click();
  assert.equal(await page.evaluate(() => localStorage.getItem('apiproxy.theme')), null, 'back to following the system');
  await page.emulateMedia({ colorScheme: 'light' });
  await page.close();
});

test('screenshots: desktop and 375 px, light and dark', async () => {
  const page = await newPage();
  await login(page); // the token stays in this tab's sessionStorage
  for (const [w, h, size] of [[1280, 900, 'desktop'], [375, 812, 'phone']]) {
    await page.setViewportSize({ width: w, height: h });
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.goto(origin + '/');
      await until('a rendered dashboard', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > 0);
      await until('the charts at this width', async () => (await page.locator('#chart-ttfb svg').count()) === 1);
      await page.screenshot({ path: path.join(artifacts, `dashboard-${size}-${scheme}.png`), fullPage: true });
      // No horizontal scrolling of the page itself at any width.
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `dashboard at ${w} px scrolls sideways by ${overflow} px`);

      await page.goto(origin + '/admin');
      await page.locator('#admin').waitFor({ state: 'visible', timeout: WAIT });
      await row(page, '/e2e').waitFor({ timeout: WAIT });
      await page.screenshot({ path: path.join(artifacts, `admin-${size}-${scheme}.png`), fullPage: true });
      const adminOverflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(adminOverflow <= 0, `admin at ${w} px scrolls sideways by ${adminOverflow} px`);
    }
  }
  // One in Chinese, to see the longer and shorter strings in place.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.goto(origin + '/');
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese text', async () => (await textOf(page.locator('h1'))) === '流量');
  await page.screenshot({ path: path.join(artifacts, 'dashboard-desktop-light-zh.png'), fullPage: true });
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  await page.close();
});

test('weight: first load of the dashboard, and /stats with 200 mappings', async () => {
  const page = await newPage();
  // A first visit: nothing cached from the tests before.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.clearBrowserCache');
  await cdp.detach();
  await page.goto(origin + '/');
  await until('a rendered dashboard', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > 0);
  // transferSize counts the bytes on the wire (compressed) plus headers.
  const first = await page.evaluate(() => {
    const entries = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
    return entries.map((e) => ({ name: e.name, transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize }));
  });
  const total = first.reduce((s, e) => s + e.transfer, 0);
  // The logo and the favicon are one file: its second use may be a 304.
  const firstUse = first.filter((e, i) => first.findIndex((o) => o.name === e.name) === i);
  assert.ok(firstUse.every((e) => e.encoded > 0 && e.transfer > e.encoded), `some files came from the cache: ${JSON.stringify(first)}`);
  const assets = first.filter((e) => !e.name.includes('/stats?'));
  assert.ok(assets.every((e) => e.encoded < e.decoded || e.decoded < 1024 || e.name.endsWith('.svg')), `assets not compressed: ${JSON.stringify(assets)}`);
  assert.ok(total <= 150 * 1024, `first load transfers ${total} bytes, want at most 150 KB`);
  // The dashboard's own page, script, styles and strings, gzip as served
  // (issue 19: at most 60 KiB).
  const own = ['/', '/static/dashboard.js', '/static/i18n.js', '/static/app.css'];
  const ownFiles = firstUse.filter((e) => own.includes(new URL(e.name).pathname));
  assert.equal(ownFiles.length, own.length, `missing some of ${own}: ${JSON.stringify(firstUse)}`);
  const ownGzip = ownFiles.reduce((s, e) => s + e.encoded, 0);
  const ownRaw = ownFiles.reduce((s, e) => s + e.decoded, 0);
  console.log(`# dashboard HTML+JS+CSS+i18n: ${ownGzip} bytes gzip (${(ownGzip / 1024).toFixed(1)} KiB), ${ownRaw} bytes uncompressed: ${ownFiles.map((e) => new URL(e.name).pathname + ' ' + e.encoded).join(', ')}`);
  assert.ok(ownGzip <= 60 * 1024, `the dashboard's own files weigh ${ownGzip} bytes gzip, want at most 60 KiB`);

  // 200 mappings, each with one request, then a fresh dashboard.
  for (let i = 0; i < 200; i++) {
    const prefix = `/load/m${String(i).padStart(3, '0')}`;
    const r = await api('POST', '/api/mappings', { prefix, target: upstreamURL });
    assert.equal(r.status, 201, `create ${prefix}: ${JSON.stringify(r.data)}`);
  }
  for (let i = 0; i < 200; i += 20) {
    await Promise.all(Array.from({ length: 20 }, (_, j) =>
      proxied(`/load/m${String(i + j).padStart(3, '0')}/v1/chat/completions`, { model: 'gpt-load' })));
  }
  await page.reload();
  await until('200 more endpoint rows', async () => (await page.locator('#ep-body tr').count()) >= 200, REFRESH_WAIT);
  const firstRender = Number(await page.evaluate(() => document.body.dataset.renderMs));
  const renders = Number(await page.evaluate(() => document.body.dataset.renders));
  await until('a refresh with 200 rows', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > renders, REFRESH_WAIT);
  const refreshRender = Number(await page.evaluate(() => document.body.dataset.renderMs));
  const stats = await page.evaluate(() => performance.getEntriesByType('resource').filter((e) => e.name.includes('/stats?')).map((e) => ({ transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize })).pop());
  const raw = await (await fetch(origin + '/stats')).text();
  const figures = {
    first_load: { total_transfer_bytes: total, dashboard_own_gzip_bytes: ownGzip, dashboard_own_bytes: ownRaw, requests: first },
    stats_200: {
      endpoints: Object.keys(JSON.parse(raw).endpoints || {}).length,
      bytes_uncompressed: Buffer.byteLength(raw),
      bytes_if_gzipped: zlib.gzipSync(raw).length,
      browser_transfer_bytes: stats && stats.transfer,
      browser_encoded_body_bytes: stats && stats.encoded,
      first_render_ms: firstRender,
      refresh_render_ms: refreshRender,
    },
  };
  fs.writeFileSync(path.join(artifacts, 'measurements.json'), JSON.stringify(figures, null, 2) + '\n');
  console.log(`# first load: ${total} bytes transferred in ${first.length} requests`);
  console.log(`# /stats with ${figures.stats_200.endpoints} endpoints: ${figures.stats_200.bytes_uncompressed} bytes (${figures.stats_200.browser_transfer_bytes} on the wire, ${figures.stats_200.bytes_if_gzipped} if gzipped); render ${firstRender} ms first, ${refreshRender} ms on refresh`);
  // Generous bounds: they catch a quadratic render, not a slow machine.
  assert.ok(refreshRender < 1000, `a refresh with 200 endpoints renders in ${refreshRender} ms`);
  assert.ok(firstRender < 3000, `the first render with 200 endpoints takes ${firstRender} ms`);
  await page.close();
});

// STATS_TOKEN, idle endpoints and locale-aware dates and numbers (issue
// 19). The token test runs a second server with STATS_TOKEN set; it is
// killed when its test ends, or with the suite.
const STATS_TOKEN = 'e2e-stats-token-' + Math.random().toString(36).slice(2, 12);
const extraServers = [];
process.on('exit', () => { for (const p of extraServers) if (p.exitCode === null) p.kill('SIGKILL'); });

async function stopSpawned(started) {
  const { proc, exited } = started;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  const done = await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
  if (!done) proc.kill('SIGKILL');
}

async function overflowOf(page) {
  return page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
}

test('dashboard (STATS_TOKEN): asks for a token, refuses a wrong one, shows the figures with the right one', async () => {
  const locked = await spawnServer(bin, { DATA_DIR: path.join(tmp, 'data-stats-token'), STATS_TOKEN }, 'apiproxy-stats-token.log');
  extraServers.push(locked.proc);
  const page = await newPage();
  try {
    const o = locked.origin;
    // The API: /stats and /metrics closed, the page and health checks open.
    assert.equal((await fetch(o + '/stats')).status, 401);
    assert.equal((await fetch(o + '/metrics')).status, 401);
    assert.equal((await fetch(o + '/metrics', { headers: { Authorization: 'Bearer ' + STATS_TOKEN } })).status, 200);
    assert.equal((await fetch(o + '/healthz')).status, 200);
    assert.equal((await fetch(o + '/')).status, 200);

    await page.goto(o + '/');
    await page.locator('#stats-login').waitFor({ state: 'visible', timeout: WAIT });
    assert.equal(await page.locator('#cards').isVisible(), false, 'no figures before the token');
    assert.equal(await page.locator('#ep-table').isVisible(), false);
    assert.match(await textOf(page.locator('#status-text')), /token is needed/);
    assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), 'stats-token');
    assert.equal(await textOf(page.locator('#stats-login-error')), '', 'no reproach before a token was tried');
    await page.screenshot({ path: path.join(artifacts, 'dashboard-token-ask-desktop.png'), fullPage: true });

    // A wrong token is refused, and the page still asks.
    await page.locator('#stats-token').fill('not-the-stats-token-0123');
    await page.getByRole('button', { name: 'Show figures' }).click();
    await until('the wrong-token message', async () => /wrong token/i.test(await textOf(page.locator('#stats-login-error'))));
    assert.ok(await page.locator('#stats-login').isVisible(), 'still asking');
    assert.equal(await page.locator('#cards').isVisible(), false);
    assert.equal(await page.locator('#stats-token').getAttribute('aria-invalid'), 'true');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('apiproxy.statsToken')), null);
    await page.setViewportSize({ width: 375, height: 812 });
    assert.ok((await overflowOf(page)) <= 0, 'the token form fits 375 px');
    await page.screenshot({ path: path.join(artifacts, 'dashboard-token-wrong-phone.png'), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 900 });

    // The right one (Enter) while the server cannot be reached: the form
    // says so and stays; the next poll, answered, shows the figures: a
    // fresh server, so 0 requests and the 12 default endpoints folded
    // into one idle row.
    await page.route(STATS_URL, (route) => route.abort());
    await page.locator('#stats-token').fill(STATS_TOKEN);
    await page.locator('#stats-token').press('Enter');
    await until('the unreachable message', async () => /cannot be reached/.test(await textOf(page.locator('#stats-login-error'))));
    assert.ok(await page.locator('#stats-login').isVisible(), 'still asking while unreachable');
    await page.unroute(STATS_URL);
    await page.locator('#cards').waitFor({ state: 'visible', timeout: REFRESH_WAIT });
    await until('the figures', async () => (await textOf(page.locator('[data-k="total"]'))) === '0');
    assert.equal(await page.locator('#stats-login').isVisible(), false);
    assert.match(await textOf(page.locator('#status-text')), /Live/);
    await until('the idle row', async () => /^12 idle endpoints/.test(await textOf(page.locator('#ep-body .idle-toggle'))));
    // Kept in this tab's sessionStorage only, as /admin keeps its token.
    const stored = await page.evaluate(() => ({ s: sessionStorage.getItem('apiproxy.statsToken'), l: JSON.stringify(localStorage) }));
    assert.equal(stored.s, STATS_TOKEN);
    assert.ok(!stored.l.includes(STATS_TOKEN), 'token must not be in localStorage');
    await page.screenshot({ path: path.join(artifacts, 'dashboard-token-ok-desktop.png'), fullPage: true });

    // A reload keeps it; Forget token asks again; the admin token opens it too.
    await page.reload();
    await until('figures after a reload', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > 0);
    assert.equal(await page.locator('#stats-login').isVisible(), false);
    await page.getByRole('button', { name: 'Forget token' }).click();
    await page.locator('#stats-login').waitFor({ state: 'visible', timeout: WAIT });
    assert.equal(await page.locator('#cards').isVisible(), false);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('apiproxy.statsToken')), null);
    await page.locator('#stats-token').fill(TOKEN);
    await page.locator('#stats-token').press('Enter');
    await page.locator('#cards').waitFor({ state: 'visible', timeout: WAIT });
    assert.equal(await textOf(page.locator('[data-k="total"]')), '0');
  } finally {
    await page.close();
    await stopSpawned(locked);
  }
});

// statsAt plays back a /stats with the given endpoints and one daily point.
function playedStats(endpoints, daily) {
  const sum = (k) => Object.values(endpoints).reduce((s, e) => s + e[k], 0);
  const tokens = Object.values(endpoints).reduce((s, e) => s + e.tokens.total, 0);
  return {
    total: sum('count'), errors: sum('error_count'), last_24h: sum('last_24h'), last_7d: sum('last_7d'), last_30d: sum('last_30d'),
    tokens: { prompt: tokens, completion: 0, total: tokens },
    endpoints,
    series: { hourly: [], daily },
    performance: { requests_per_sec: 0, avg_response_time_ms: 0, error_rate: 0, memory_usage_mb: 1, goroutine_count: 1, active_requests: 0, uptime_seconds: 1 },
  };
}

function playedEndpoint(target, count, lastRequest, tokens = 0) {
  return {
    target, count, error_count: 0, last_request: lastRequest, last_24h: 0, last_7d: 0, last_30d: count,
    status: { '2xx': count, '3xx': 0, '4xx': 0, '5xx': 0 }, latency_ms: { avg: 10, p50: 9, p95: 20, p99: 30 },
    tokens: { prompt: tokens, completion: 0, total: tokens }, models: {},
  };
}

test('dashboard: dates and numbers follow the browser locale (en-US, en-GB, zh-CN, de-DE; /stats played back)', async () => {
  // 4 November 2026, 15:30 UTC: 11/4 for a US reader, 04/11 for a British one.
  const when = Date.UTC(2026, 10, 4, 15, 30) / 1000;
  const day = Date.UTC(2026, 10, 4) / 1000;
  const stats = playedStats({ '/dates': playedEndpoint('http://127.0.0.1:9/d', 12345, when, 1234567) },
    [{ t: day, count: 12345, errors: 0 }]);
  const cases = [
    { locale: 'en-US', last: /Nov 4, 2026/, axis: '11/4', total: '12,345', tokens: /^1\.2M$/ },
    { locale: 'en-GB', last: /4 Nov 2026/, axis: '04/11', total: '12,345', tokens: /^1\.2[Mm]$/ },
    { locale: 'zh-CN', last: /2026年11月4日/, axis: '11/4', total: '12,345', tokens: /^123\.5万$/ },
    { locale: 'de-DE', last: /04\.11\.2026/, axis: '4.11.', total: '12.345', tokens: /^1,2\sMio\.$/ },
  ];
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    for (const c of cases) {
      const ctx = await browser.newContext({ locale: c.locale, timezoneId: 'UTC', viewport: { width: 1280, height: 900 } });
      const page = watch(await ctx.newPage());
      await page.route(STATS_URL, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(stats) }));
      await page.goto(origin + '/?range=30d');
      const tr = page.locator('#ep-body tr[data-prefix="/dates"]');
      await tr.waitFor({ timeout: WAIT });
      const total = await tr.locator('td').nth(2).getAttribute('title');
      assert.match(total, c.last, `${c.locale}: last request ${total}`);
      assert.equal(await textOf(tr.locator('td').nth(2).locator('span').first()), c.total, `${c.locale}: grouped count`);
      assert.match(await textOf(tr.locator('td').nth(6).locator('span').first()), c.tokens, `${c.locale}: compact tokens`);
      const axis = await until(`${c.locale}: the daily chart`, async () => {
        const labels = (await page.locator('#chart-requests text.axis').allTextContents()).map((x) => x.trim());
        return labels.length > 3 && labels;
      });
      assert.ok(axis.includes(c.axis), `${c.locale}: daily axis ${JSON.stringify(axis)} lacks ${c.axis}`);
      await page.screenshot({ path: path.join(artifacts, `dashboard-locale-${c.locale}.png`) });
      await ctx.close();
    }
  } finally {
    await browser.close();
  }
});

test('dashboard: idle endpoints fold into one row that opens on click; at 375 px nothing overflows (/stats played back)', async () => {
  const now = Math.floor(Date.now() / 1000);
  const long = '/openai-production-team-europe-west-with-a-rather-long-prefix';
  const idle = ['/claude', '/gemini', '/xai', '/groq', '/openrouter', '/mistral', '/deepseek', '/together', '/fireworks', '/cerebras', '/cohere'];
  const endpoints = { '/busy': playedEndpoint('http://127.0.0.1:9/busy', 5, now) };
  for (const p of idle) endpoints[p] = playedEndpoint('https://api.example.com' + p, 0, 0);
  endpoints[long] = playedEndpoint('https://api.openai.com', 0, 0);
  const stats = playedStats(endpoints, []);
  const page = await newPage();
  await page.route(STATS_URL, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(stats) }));
  await page.goto(origin + '/');
  const toggle = page.locator('#ep-body tr.idle-row button');
  await toggle.waitFor({ timeout: WAIT });
  const prefixRows = () => page.locator('#ep-body tr[data-prefix]').evaluateAll((trs) => trs.map((tr) => tr.dataset.prefix));
  assert.deepEqual(await prefixRows(), ['/busy'], 'only the endpoint with traffic shows');
  assert.match(await textOf(toggle), /^12 idle endpoints/);
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');
  await page.screenshot({ path: path.join(artifacts, 'dashboard-idle-closed-desktop.png'), fullPage: true });

  // A click opens it: the idle endpoints follow it, by prefix.
  await toggle.click();
  await until('the idle endpoints', async () => (await prefixRows()).length === 13);
  assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
  assert.equal((await prefixRows())[0], '/busy');
  assert.equal(await page.locator('#ep-body tr').nth(1).getAttribute('class'), 'idle-row', 'the idle row comes after the busy ones');
  // It stays open across refreshes.
  const renders = Number(await page.evaluate(() => document.body.dataset.renders));
  await until('a refresh', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > renders, REFRESH_WAIT);
  assert.equal((await prefixRows()).length, 13);
  // The keyboard closes and opens it too (it is a button).
  await toggle.focus();
  await page.keyboard.press('Enter');
  await until('closed by Enter', async () => (await prefixRows()).length === 1);
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');
  await page.keyboard.press('Space');
  await until('opened by Space', async () => (await prefixRows()).length === 13);
  await page.keyboard.press('Enter');
  await until('closed again', async () => (await prefixRows()).length === 1);
  // A filter looks through the idle endpoints too.
  await page.locator('#ep-filter').fill('cohere');
  await until('the filtered idle endpoint', async () => JSON.stringify(await prefixRows()) === '["/cohere"]');
  assert.equal(await toggle.count(), 0, 'no idle row while filtering');
  await page.locator('#ep-filter').fill('');
  await until('folded again', async () => (await prefixRows()).length === 1);

  // 375 px: nothing scrolls sideways, the long snippet lines wrap inside
  // their box, closed and open.
  await page.setViewportSize({ width: 375, height: 812 });
  assert.match(await textOf(page.locator('[data-snippet="use.openai"] code')), new RegExp(long));
  for (const state of ['closed', 'open']) {
    if (state === 'open') {
      await toggle.click();
      await until('open at 375 px', async () => (await prefixRows()).length === 13);
    }
    const overflow = await overflowOf(page);
    assert.ok(overflow <= 0, `dashboard (idle ${state}) at 375 px scrolls sideways by ${overflow} px`);
    const cut = await page.locator('.snippet pre').evaluateAll((ps) => ps.filter((p) => p.scrollWidth > p.clientWidth + 1).length);
    assert.equal(cut, 0, 'a snippet is wider than its box');
    await page.screenshot({ path: path.join(artifacts, `dashboard-idle-${state}-phone.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.unroute(STATS_URL);
  await page.close();
});

test('dashboard: endpoint rows stay rows from 721 px (the URL on one line) and cards keep their text in their cells (/stats played back)', async () => {
  const now = Math.floor(Date.now() / 1000);
  const limited = playedEndpoint('https://api.openai.com/v1', 8, now, 123456);
  Object.assign(limited, { error_count: 3, rate_limited: 2, status: { '2xx': 5, '3xx': 0, '4xx': 3, '5xx': 0 } });
  const endpoints = { '/openai-production-team': limited, '/local': playedEndpoint('http://127.0.0.1:11434', 4, now) };
  const stats = playedStats(endpoints, []);
  const page = await newPage();
  await page.route(STATS_URL, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(stats) }));
  try {
    await page.goto(origin + '/');
    const rows = page.locator('#ep-body tr[data-prefix]');
    await until('the endpoints', async () => (await rows.count()) === 2);
    assert.match(await textOf(page.locator('#ep-body tr[data-prefix="/openai-production-team"]')), /2 rate-limited/);
    for (const w of [768, 820, 900, 1000, 1280]) {
      await page.setViewportSize({ width: w, height: 900 });
      const heights = await rows.evaluateAll((trs) => trs.map((tr) => tr.getBoundingClientRect().height));
      assert.ok(Math.max(...heights) <= 120, `at ${w} px endpoint rows are ${heights.join(', ')} px tall`);
      const overflow = await overflowOf(page);
      assert.ok(overflow <= 0, `dashboard at ${w} px scrolls sideways by ${overflow} px`);
    }
    for (const w of [320, 375, 414]) {
      await page.setViewportSize({ width: w, height: 812 });
      const spill = await page.locator('#ep-body td').evaluateAll((tds) => tds
        .filter((td) => td.scrollWidth > td.clientWidth + 1).map((td) => td.dataset.label + ': ' + td.textContent));
      assert.deepEqual(spill, [], `at ${w} px a card's cell spills into the next`);
    }
    await page.screenshot({ path: path.join(artifacts, 'dashboard-cards-414.png'), fullPage: true });
  } finally {
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.unroute(STATS_URL);
    await page.close();
  }
});

// Issue 19, items 2-5: the range selector, charts of the range's points,
// the models table, keys per range and recent errors. Played-back answers
// (rangeStats) carry what a server with ranges sends; one test runs
// against the real server with its own mapping and traffic.

// rangeStats makes a /stats answer for range r: n endpoints, each serving
// every one of the models, keys, points and recent errors, with every
// figure multiplied by mul so two ranges differ everywhere.
function rangeStats(r, { mul = 1, endpoints = 2, models = 2, keys = 2, errors = 3, scope = 'fleet' } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const hourly = r === '24h';
  const n = hourly ? 24 : r === '7d' ? 7 : 30;
  const step = hourly ? 3600 : 86400;
  const start = Math.floor(now / step) * step - (n - 1) * step;
  const points = Array.from({ length: n }, (_, i) => {
    const k = (i % 5) * mul;
    return {
      t: start + i * step, count: 10 * k + 4 * mul, errors: 3 * mul, ok: 10 * k, s4xx: mul, s429: mul, s5xx: mul, client_closed: mul,
      prompt: 100 * k, completion: 20 * k, cache: 50 * k, ttfb_p50: 100 + 10 * k, ttfb_p95: 300 + 20 * k,
    };
  });
  const eps = {};
  for (let e = 0; e < endpoints; e++) {
    const ms = {};
    for (let m = 0; m < models; m++) {
      ms[`model-${String(m).padStart(2, '0')}`] = { count: (m + 1) * mul, prompt: 100 * mul, completion: 10 * mul, total: 110 * mul, cache_read: 5 * mul, cache_write: mul };
    }
    const count = 100 * (endpoints - e) * mul;
    eps[`/ep${String(e).padStart(2, '0')}`] = {
      target: `https://api.example.com/ep${e}`, count, error_count: 2 * mul, last_request: now - 60, last_24h: 1, last_7d: 2, last_30d: 3,
      status: { '2xx': count - 2 * mul, '3xx': 0, '4xx': mul, '5xx': mul }, client_closed: 0, rate_limited: 0,
      latency_ms: { avg: 500 * mul, p50: 400 * mul, p95: 900 * mul, p99: 1000 * mul },
      ttfb_ms: { p50: 120 * mul, p95: 250 * mul, p99: 300 * mul },
      tokens: { prompt: 100 * models * mul, completion: 10 * models * mul, total: 110 * models * mul, cache_read: 5 * models * mul, cache_write: models * mul, unknown_responses: 0 },
      models: ms,
    };
  }
  const ks = {};
  for (let k = 0; k < keys; k++) {
    ks[`k_${String(k).padStart(3, '0')}`] = {
      name: `team-${k}`, count: (k + 1) * 10 * mul, errors: mul, rate_limited: 0, last_24h: 1, last_7d: 2, last_30d: 3,
      tokens: { prompt: 1000 * mul, completion: 100 * mul, total: 1100 * mul, cache_read: 0, cache_write: 0, unknown_responses: 0 }, last_used_at: now - 120,
    };
  }
  const recent = Array.from({ length: errors }, (_, i) => ({
    id: `r${i}`, time: new Date((now - 60 * i) * 1000).toISOString(), prefix: i % 2 ? '/ep01' : '/ep00', method: 'POST',
    path: '/v1/chat/completions', status: [429, 502, 404][i % 3], code: ['rate_limited', 'upstream_unreachable', ''][i % 3], model: `model-0${i % 2}`,
  }));
  const total = Object.values(eps).reduce((s, e) => s + e.count, 0);
  return {
    stats_enabled: true, range: r, ...(r === 'all' ? {} : { range_from: start }), scope: { figures: scope, performance: 'instance' },
    total, errors: 7 * mul, client_closed: mul, rate_limited: mul, failovers: 0, last_24h: 1, last_7d: 2, last_30d: 3,
    latency_ms: { avg: 450 * mul, p50: 380 * mul, p95: 880 * mul, p99: 990 * mul }, ttfb_ms: { p50: 110 * mul, p95: 240 * mul, p99: 290 * mul },
    tokens: { prompt: 5000 * mul, completion: 700 * mul, total: 5700 * mul, cache_read: 300 * mul, cache_write: 20 * mul, unknown_responses: 0 },
    endpoints: eps, keys: ks, recent_errors: recent,
    series: { hourly: hourly ? points : [], daily: hourly ? [] : points, points },
    performance: { requests_per_sec: 1.5, avg_response_time_ms: 42, error_rate: 1.25, memory_usage_mb: 12.5, goroutine_count: 9, active_requests: 1, uptime_seconds: 3600 },
  };
}

// playRanges answers /stats?range=… from answers, a map of range to body,
// and records each range asked for.
async function playRanges(page, answers) {
  const asked = [];
  await page.route(STATS_URL, (route) => {
    const r = new URL(route.request().url()).searchParams.get('range');
    asked.push(r);
    const body = answers[r];
    if (!body) return route.fulfill({ status: 400, contentType: 'application/json', body: '{"error":{"type":"invalid_query","message":"bad range"}}' });
    return route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(body) });
  });
  return asked;
}

// figures reads what the dashboard shows: cards, group header, first
// endpoint and model and key rows, the chart's bars, the errors panel.
async function figures(page) {
  return page.evaluate(() => {
    const q = (s) => { const n = document.querySelector(s); return n ? n.textContent.trim() : null; };
    return {
      head: q('#h-overview'), total: q('[data-k="total"]'), errors: q('[data-k="errors"]'), errorsSub: q('[data-k="errors_sub"]'),
      tokens: q('[data-k="tokens"]'), ttfb: q('[data-k="ttfb"]'), note: q('#h-endpoints + .range-note'),
      latency: q('[data-k="latency"]'), latencySub: q('[data-k="latency_sub"]'),
      ep: q('#ep-body tr[data-prefix="/ep00"] td:nth-child(3) span'), model: q('#md-body tr[data-model="model-01"] td:nth-child(2)'),
      key: q('#ks-body tr[data-key="k_000"] td:nth-child(2)'),
      points: document.querySelectorAll('#chart-requests rect.hit').length,
      errorsShown: document.querySelectorAll('#re-body tr').length,
    };
  });
}

test('dashboard (issue 19): the range selector changes every figure, and the address keeps it across a reload (/stats played back)', async () => {
  const page = await newPage();
  const answers = {
    '24h': rangeStats('24h', { mul: 1 }), '7d': { ...rangeStats('7d', { mul: 3, scope: 'instance', errors: 1 }), errors: 30 },
    all: rangeStats('all', { mul: 5 }),
  };
  // An hour without a first byte: a gap in the TTFB lines, not a 0.
  Object.assign(answers['24h'].series.points[3], { ttfb_p50: 0, ttfb_p95: 0 });
  const asked = await playRanges(page, answers);
  await page.goto(origin + '/');
  await until('the 24 h figures', async () => (await figures(page)).points === 24);
  assert.equal(asked[0], '24h', 'the page asks for a range');
  const day = await figures(page);
  assert.deepEqual(day, {
    head: 'Last 24 hours · all instances', total: '300', errors: '2.33 %', errorsSub: '7 errors · 1 rate-limited', tokens: '5,700', ttfb: 'p50 110 ms',
    latency: 'avg 450 ms', latencySub: 'p95 880 ms · all endpoints',
    note: 'Last 24 hours', ep: '200', model: '4', key: '10', points: 24, errorsShown: 3,
  });
  assert.equal(await page.locator('#range [aria-pressed="true"]').getAttribute('data-range'), '24h');
  assert.equal(await textOf(page.locator('#h-perf')), 'This instance · last 60 s');
  assert.equal(await textOf(page.locator('[data-k="rps"]')), '1.50');
  assert.equal(await page.locator('#chart-ttfb polyline').count(), 4, 'each TTFB line in two runs around the gap');
  await page.locator('#chart-ttfb rect.hit').nth(3).hover();
  assert.equal(await textOf(page.locator('#chart-ttfb .tip [data-k="ttfb_p50"] b')), '–');
  await page.locator('#chart-ttfb rect.hit').nth(4).hover();
  assert.equal(await textOf(page.locator('#chart-ttfb .tip [data-k="ttfb_p95"] b')), '380 ms');
  // All requests' TTFB, as /stats adds it up from the histograms.
  assert.equal(await textOf(page.locator('[data-k="ttfb_sub"]')), 'p95 240 ms · all endpoints');

  await page.getByRole('button', { name: '7 days' }).click();
  await until('the 7 d figures', async () => (await figures(page)).points === 7);
  assert.equal(asked.at(-1), '7d');
  assert.equal(new URL(page.url()).searchParams.get('range'), '7d', 'the address keeps the range');
  const week = await figures(page);
  assert.deepEqual(week, {
    head: 'Last 7 days · this instance', total: '900', errors: '3.33 %', errorsSub: '30 errors · 3 rate-limited', tokens: '17.1K', ttfb: 'p50 330 ms',
    latency: 'avg 1.35 s', latencySub: 'p95 2.64 s · all endpoints',
    note: 'Last 7 days', ep: '600', model: '12', key: '30', points: 7, errorsShown: 1,
  });
  for (const k of Object.keys(day)) assert.notEqual(week[k], day[k], `${k} did not change with the range`);
  // A reload, or the address shared, opens the same range.
  await page.reload();
  await until('7 d after a reload', async () => (await figures(page)).points === 7);
  assert.equal(asked.at(-1), '7d');
  assert.equal(await page.locator('#range [aria-pressed="true"]').getAttribute('data-range'), '7d');
  assert.deepEqual(await figures(page), week);
  assert.equal(await textOf(page.locator('.chart-note').first()), '· Last 7 days');
  // All time: the cards add up everything, the charts draw the 30 days
  // /stats keeps, and say so.
  await page.getByRole('button', { name: 'All time' }).click();
  await until('all time', async () => (await figures(page)).total === '1,500');
  assert.equal(asked.at(-1), 'all');
  assert.equal(new URL(page.url()).searchParams.get('range'), 'all');
  assert.equal(await textOf(page.locator('#h-overview')), 'All time · all instances');
  assert.equal((await figures(page)).points, 30);
  assert.equal(await textOf(page.locator('.chart-note').first()), '· Last 30 days (what /stats keeps)');
  // Back goes to the range before.
  await page.goBack();
  await until('7 d again', async () => (await figures(page)).points === 7);
  assert.equal(asked.at(-1), '7d');
  assert.equal(await page.locator('#range [aria-pressed="true"]').getAttribute('data-range'), '7d');

  await page.goto(origin + '/?range=1h');
  await until('24 h for an unknown range', async () => (await figures(page)).points === 24);
  assert.equal(asked.at(-1), '24h');
  // In Chinese the labels follow.
  await page.getByRole('button', { name: '中文', exact: true }).click();
  await until('Chinese headers', async () => (await textOf(page.locator('#h-overview'))) === '最近 24 小时 · 所有实例');
  await page.getByRole('button', { name: 'EN', exact: true }).click();
  // On a phone the first screen is not a wall of cards.
  await page.setViewportSize({ width: 375, height: 812 });
  assert.ok((await page.locator('#cards .card:not([hidden])').count()) <= 5);
  assert.ok((await overflowOf(page)) <= 0);
  await page.screenshot({ path: path.join(artifacts, 'dashboard-range-phone-first-screen.png') });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.unroute(STATS_URL);
  await page.close();
});

test('dashboard (issue 19): recent errors link to the admin Requests view; the panel hides without the field (/stats played back)', async () => {
  const page = await newPage();
  const body = rangeStats('24h', { errors: 3 });
  const answers = { '24h': body };
  await playRanges(page, answers);
  await page.goto(origin + '/');
  const rowsOf = page.locator('#re-body tr');
  await until('three recent errors', async () => (await rowsOf.count()) === 3);
  assert.ok(await page.locator('#errors-panel').isVisible());
  const cells = (await rowsOf.nth(0).locator('td').allTextContents()).map((x) => x.trim());
  // Time in the browser's locale (en-US: a 12-hour clock), then prefix,
  // status, code, model; newest first, as the server sends them.
  assert.match(cells[0], /^[A-Z][a-z]{2} \d{1,2}, \d\d:\d\d:\d\d [AP]M$/);
  assert.deepEqual(cells.slice(1), ['/ep00', '429', 'rate_limited', 'model-00']);
  assert.deepEqual((await rowsOf.nth(1).locator('td').allTextContents()).map((x) => x.trim()).slice(1), ['/ep01', '502', 'upstream_unreachable', 'model-01']);
  const hrefs = await page.locator('#re-body a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
  assert.deepEqual(hrefs, ['/admin#requests?prefix=/ep00&status=429', '/admin#requests?prefix=/ep01&status=502', '/admin#requests?prefix=/ep00&status=404']);
  await page.screenshot({ path: path.join(artifacts, 'dashboard-recent-errors-desktop.png'), fullPage: true });
  // Following a link opens the admin page on that view's address.
  await page.locator('#re-body a').first().click();
  await page.waitForURL(/\/admin#requests\?prefix=\/ep00&status=429$/, { timeout: WAIT });
  await page.goBack();
  await until('back on the dashboard', async () => (await rowsOf.count()) === 3);
  // No errors: the panel says so. No field (no request log): no panel.
  body.recent_errors = [];
  await until('the empty note', async () => await page.locator('#re-empty').isVisible(), REFRESH_WAIT);
  assert.equal(await rowsOf.count(), 0);
  delete body.recent_errors;
  await until('the panel hidden', async () => !(await page.locator('#errors-panel').isVisible()), REFRESH_WAIT);
  await page.unroute(STATS_URL);
  await page.close();
});

test('dashboard (issue 19): 50 endpoints, 50 models, 100 keys render quickly; at 375 px nothing overflows; a tap shows a chart point (/stats played back)', async () => {
  const page = await newPage();
  const body = rangeStats('30d', { endpoints: 50, models: 50, keys: 100, errors: 20 });
  body.endpoints['/ep00'].models['a-model-with-a-very-long-name-from-a-provider-that-likes-long-names-2026-12-02'] = { count: 1, prompt: 1, completion: 1, total: 2 };
  await playRanges(page, { '30d': body });
  await page.goto(origin + '/?range=30d');
  await until('the rendered answer', async () => (await page.locator('#ks-body tr').count()) === 100);
  // The machine is shared: the first render of five loads, and two
  // refreshes; the fastest says what the code costs, all are reported.
  const firsts = [Number(await page.evaluate(() => document.body.dataset.renderMs))];
  for (let i = 0; i < 4; i++) {
    await page.reload();
    await until('the rendered answer', async () => (await page.locator('#ks-body tr').count()) === 100);
    firsts.push(Number(await page.evaluate(() => document.body.dataset.renderMs)));
  }
  const refreshes = [];
  for (let i = 0; i < 2; i++) {
    const renders = Number(await page.evaluate(() => document.body.dataset.renders));
    await until('a refresh', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > renders, REFRESH_WAIT);
    refreshes.push(Number(await page.evaluate(() => document.body.dataset.renderMs)));
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const first = Math.min(...firsts);
  const again = Math.min(...refreshes);
  assert.equal(await page.locator('#md-body tr').count(), 51);
  assert.equal(await page.locator('#ep-body tr[data-prefix]').count(), 50);
  assert.equal(await page.locator('#re-body tr').count(), 20);
  // The models table adds each model up over the 50 endpoints.
  const m = (await page.locator('#md-body tr[data-model="model-49"] td').allTextContents()).map((x) => x.trim());
  assert.deepEqual(m.slice(0, 7), ['model-49', '2,500', (100 * 2500 / body.total).toFixed(1) + ' %', '5,000', '500', '300', '5,500']);
  // The busiest three endpoints, then the other 47 behind a +47 that opens.
  assert.ok(m[7].startsWith('/ep00, /ep01, /ep02 +47 more'), m[7]);
  const more = page.locator('#md-body tr[data-model="model-49"] td.eps details');
  assert.equal(await more.evaluate((d) => d.open), false);
  await more.locator('summary').click();
  assert.equal(await more.evaluate((d) => d.open), true);
  assert.match(await textOf(more), /\/ep49$/);
  console.log(`# render of /stats with 50 endpoints, 50 models (2,500 endpoint-model pairs), 100 keys, 20 errors: first render ${first} ms at best, ${median(firsts)} ms median (${firsts.join(', ')}); refresh ${again} ms at best (${refreshes.join(', ')})`);
  fs.writeFileSync(path.join(artifacts, 'dashboard-render.json'), JSON.stringify({
    endpoints: 50, models: 50, keys: 100, recent_errors: 20, first_render_ms: firsts, refresh_render_ms: refreshes,
    load_average: os.loadavg(),
  }, null, 2) + '\n');
  // Generous: the target is 50 ms; this catches a quadratic render.
  assert.ok(first < 250, `first render took ${first} ms`);
  assert.ok(again < 250, `a refresh render took ${again} ms`);

  await page.evaluate(() => window.scrollTo(0, 0));
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.screenshot({ path: path.join(artifacts, `dashboard-range-desktop-${scheme}.png`), fullPage: true });
    await page.screenshot({ path: path.join(artifacts, `dashboard-range-desktop-${scheme}-top.png`) });
  }
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 375, height: 812 });
  await until('the charts at 375 px', async () => (await page.locator('#chart-requests svg').getAttribute('width')) < 400);
  const overflow = await overflowOf(page);
  assert.ok(overflow <= 0, `dashboard with 50 models, 100 keys, 20 errors at 375 px scrolls sideways by ${overflow} px`);
  // On a phone the models are cards: every figure is on screen, no tooltip.
  const card = page.locator('#md-body tr[data-model="model-49"]');
  assert.equal(await card.locator('td').nth(7).getAttribute('data-label'), 'Endpoints');
  assert.ok(await card.locator('td.eps').isVisible());
  // A tap on a bar shows its values; a tap elsewhere closes them.
  const hit = page.locator('#chart-requests rect.hit').nth(4);
  await hit.dispatchEvent('pointerdown', { pointerType: 'touch', bubbles: true });
  const tip = page.locator('#chart-requests .tip');
  await tip.waitFor({ state: 'visible', timeout: WAIT });
  const p = body.series.points[4];
  assert.equal(await textOf(tip.locator('[data-k="ok"] b')), String(p.ok));
  assert.equal(await textOf(tip.locator('[data-k="count"] b')), String(p.count));
  const box = await tip.boundingBox();
  assert.ok(box.x >= 0 && box.x + box.width <= 375, `the tooltip leaves the screen: ${JSON.stringify(box)}`);
  await page.screenshot({ path: path.join(artifacts, 'dashboard-range-phone.png'), fullPage: true });
  await page.locator('#chart-requests').scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(artifacts, 'dashboard-range-phone-tooltip.png') });
  await page.locator('#md-body tr').nth(2).screenshot({ path: path.join(artifacts, 'dashboard-range-phone-model-card.png') });
  await page.locator('#re-body tr').nth(0).screenshot({ path: path.join(artifacts, 'dashboard-range-phone-error-card.png') });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(artifacts, 'dashboard-range-phone-dark.png'), fullPage: true });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.locator('h1').dispatchEvent('pointerdown', { bubbles: true });
  await until('the tooltip closed', async () => !(await tip.isVisible()));
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.unroute(STATS_URL);
  await page.close();
});

test('dashboard (issue 19 server): the charts\' current hour and the models table match /stats?range=24h', async () => {
  const created = await api('POST', '/api/mappings', { prefix: '/dash19', target: upstreamURL });
  assert.equal(created.status, 201, JSON.stringify(created.data));
  for (const model of ['gpt-dash-a', 'gpt-dash-a', 'gpt-dash-b']) {
    assert.equal((await proxied('/dash19/v1/chat/completions', { model, messages: [{ role: 'user', content: 'hi' }] })).status, 200);
  }
  assert.equal((await proxied('/dash19/fail')).status, 500);
  const statsNow = async () => (await fetch(origin + '/stats?range=24h')).json();
  // Tokens and status classes reach the buckets with the next drain (1 s).
  await until('/stats to hold the traffic', async () => {
    const e = (await statsNow()).endpoints['/dash19'];
    return e && e.count === 4 && e.models['gpt-dash-b'] && e.tokens.prompt === 21 && e.status['5xx'] === 1;
  });
  const page = await newPage();
  await page.goto(origin + '/');
  await page.locator('#md-body tr[data-model="gpt-dash-b"]').waitFor({ timeout: REFRESH_WAIT });
  const n = (v) => new Intl.NumberFormat('en-US').format(v);
  // The last bar of each chart is the current hour: hover it and compare
  // its tooltip with /stats's point, until a poll brings the same answer.
  const check = async (chart, fields) => {
    await page.locator(`#${chart} rect.hit`).last().hover();
    const tip = page.locator(`#${chart} .tip`);
    await tip.waitFor({ state: 'visible', timeout: WAIT });
    await until(`${chart}'s tooltip to match /stats`, async () => {
      const p = (await statsNow()).series.points.at(-1);
      for (const k of fields) {
        const shown = await textOf(tip.locator(`[data-k="${k}"] b`));
        if (shown !== n(p[k])) throw new Error(`${k}: shown ${shown}, /stats ${p[k]}`);
      }
      return true;
    }, REFRESH_WAIT);
  };
  await check('chart-requests', ['ok', 's4xx', 's429', 's5xx', 'client_closed', 'count']);
  await check('chart-tokens', ['prompt', 'completion', 'cache']);
  // The keyboard: focus, then the arrows move along the points.
  await page.locator('#chart-ttfb').focus();
  const tip = page.locator('#chart-ttfb .tip');
  await tip.waitFor({ state: 'visible', timeout: WAIT });
  const last = await textOf(tip.locator('.tip-when'));
  assert.match(await textOf(tip.locator('[data-k="ttfb_p50"] b')), /\d (ms|s)$/);
  await page.keyboard.press('ArrowLeft');
  await until('the previous hour', async () => (await textOf(tip.locator('.tip-when'))) !== last);
  await page.keyboard.press('Escape');
  await until('closed by Escape', async () => !(await tip.isVisible()));

  // Models: every row as /stats adds them up over its endpoints.
  await until('the models table to match /stats', async () => {
    const s = await statsNow();
    const want = new Map();
    for (const [prefix, e] of Object.entries(s.endpoints)) {
      for (const [name, v] of Object.entries(e.models || {})) {
        const a = want.get(name) || { count: 0, prompt: 0, completion: 0, cache: 0, total: 0, eps: [] };
        a.count += v.count; a.prompt += v.prompt || 0; a.completion += v.completion || 0;
        a.cache += (v.cache_read || 0) + (v.cache_write || 0); a.total += v.total || 0; a.eps.push(prefix);
        want.set(name, a);
      }
    }
    // A model served by more than three endpoints lists the rest in a
    // details element: its summary's first text, then the rest.
    const shown = await page.locator('#md-body tr').evaluateAll((trs) => trs.map((tr) => [tr.dataset.model, [...tr.cells].map((c) => {
      const rest = c.querySelector('.rest');
      return rest ? c.querySelector('summary').firstChild.textContent.trim() + ', ' + rest.textContent : c.textContent.trim();
    })]));
    if (shown.length !== want.size) throw new Error(`${shown.length} rows, /stats has ${want.size} models`);
    for (const [name, cells] of shown) {
      const a = want.get(name);
      if (!a) throw new Error(`${name} is not in /stats`);
      const exp = [name, n(a.count), (100 * a.count / s.total).toFixed(1) + ' %', n(a.prompt), n(a.completion), n(a.cache), n(a.total)];
      if (JSON.stringify(cells.slice(0, 7)) !== JSON.stringify(exp)) throw new Error(`${name}: ${JSON.stringify(cells)} want ${JSON.stringify(exp)}`);
      if (!a.eps.every((p) => cells[7].split(', ').includes(p))) throw new Error(`${name}: endpoints ${cells[7]} want ${a.eps}`);
    }
    return true;
  }, REFRESH_WAIT);
  const b = (await page.locator('#md-body tr[data-model="gpt-dash-a"] td').allTextContents()).map((x) => x.trim());
  assert.equal(b[1], '2');
  assert.equal(b[7], '/dash19');
  // Recent errors come from the request log (written about once a
  // second): the failed request shows, and opens the admin Requests view
  // filtered to it.
  const errRow = page.locator('#re-body tr', { hasText: '/dash19' }).first();
  await errRow.waitFor({ timeout: REFRESH_WAIT });
  assert.equal((await textOf(errRow.locator('td').nth(2))), '500');
  assert.equal(await errRow.locator('a').getAttribute('href'), '/admin#requests?prefix=/dash19&status=500');
  await page.screenshot({ path: path.join(artifacts, 'dashboard-range-live.png'), fullPage: true });
  assert.equal((await api('DELETE', '/api/mappings/dash19')).status, 200);
  await page.close();
});

// Issue 19, item 8: a 400 lists every problem of the object sent
// (error.errors), and the admin page shows each beside its own field at
// once, not only the first.

// fieldState is what the page shows of a field: its error line's text,
// aria-invalid, and whether aria-describedby points at that line.
async function fieldState(page, id) {
  return page.evaluate((id) => {
    const f = document.getElementById(id);
    const err = document.getElementById(id + '-error');
    return {
      text: err ? err.textContent.trim() : null,
      invalid: f.getAttribute('aria-invalid'),
      described: (f.getAttribute('aria-describedby') || '').split(/\s+/).includes(id + '-error'),
    };
  }, id);
}

// noSidewaysScroll fails when the page is wider than its window.
async function noSidewaysScroll(page, what) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${what} scrolls sideways by ${overflow} px`);
}

test('admin (§9 server): every problem of a mapping shows beside its field at once; fixing one leaves the others', { skip: SKIP_S9 }, async () => {
  const page = await newPage();
  await login(page);
  await page.locator('#add-prefix').fill('/api/multi');
  await page.locator('#add-target').fill(upstreamURL + '/one');
  await page.getByRole('button', { name: 'Several targets and options' }).click();
  await page.getByRole('button', { name: 'Add target' }).click();
  await page.getByLabel('Target 2 URL').fill('ftp://example.com');
  await page.getByLabel('Stream idle timeout').fill('soon');
  await page.locator('#add-btn').click();

  const fields = { prefix: 'add-prefix', url: 'add-targets-1-url', idle: 'add-stream-idle-timeout' };
  await until('three messages at once', async () => (await fieldState(page, fields.idle)).text !== '');
  const prefix = await fieldState(page, fields.prefix);
  const url = await fieldState(page, fields.url);
  const idle = await fieldState(page, fields.idle);
  assert.match(prefix.text, /^prefix "\/api" is reserved/);
  assert.match(url.text, /^targets\[1\]\.url must use the http or https scheme/);
  assert.match(idle.text, /^stream_idle_timeout must be a duration such as "30s"/);
  for (const s of [prefix, url, idle]) assert.deepEqual([s.invalid, s.described], ['true', true]);
  // Only those three: every other field of the editor is fine.
  assert.equal(await page.locator('#add-form [aria-invalid="true"]').count(), 3);
  assert.equal(await textOf(page.locator('#add-error')), '');
  assert.equal(await focusedLabel(page), fields.prefix, 'the first field with a problem has the focus');
  await page.screenshot({ path: path.join(artifacts, 'admin-errors-mapping-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 375, height: 812 });
  await noSidewaysScroll(page, 'the add form with three errors at 375 px');
  await page.screenshot({ path: path.join(artifacts, 'admin-errors-mapping-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  // Editing a field clears its own message, and only that one.
  await page.locator('#' + fields.prefix).fill('/multi-err');
  assert.deepEqual(await fieldState(page, fields.prefix), { text: '', invalid: 'false', described: true });
  assert.notEqual((await fieldState(page, fields.url)).text, '');
  // Submitted again: the two left, and the focus on the first of them.
  await page.locator('#add-btn').click();
  await until('the URL message again', async () => (await fieldState(page, fields.url)).text !== '');
  await until('two messages', async () => (await page.locator('#add-form [aria-invalid="true"]').count()) === 2);
  assert.equal((await fieldState(page, fields.prefix)).text, '');
  assert.match((await fieldState(page, fields.idle)).text, /^stream_idle_timeout/);
  assert.equal(await focusedLabel(page), fields.url);
  assert.equal((await api('GET', '/api/mappings')).data.mappings['/multi-err'], undefined, 'nothing invalid is stored');
  await page.screenshot({ path: path.join(artifacts, 'admin-errors-mapping-fixed-one-desktop.png'), fullPage: true });

  // All fixed: stored, and no message left.
  await page.getByLabel('Target 2 URL').fill(upstreamURL + '/two');
  await page.getByLabel('Stream idle timeout').fill('30s');
  await page.locator('#add-btn').click();
  await row(page, '/multi-err').waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#add-form [aria-invalid="true"]').count(), 0);
  assert.equal((await api('DELETE', '/api/mappings/multi-err')).status, 200);
  await page.close();
});

test('admin: every problem of a proxy key shows beside its field at once, as text (answers played back)', async () => {
  const page = await newPage();
  const keysAPI = await playKeysAPI(page, []);
  await login(page);
  await page.getByRole('tab', { name: 'Proxy keys' }).click();
  await until('the empty keys list', async () => page.locator('#key-empty').isVisible());

  // Caught before sending: both limits that are not numbers at once.
  await page.getByLabel('Requests / min').fill('many');
  await page.getByLabel('Tokens / min').fill('lots');
  await page.locator('#key-add-btn').click();
  await until('both local limit messages', async () => (await fieldState(page, 'key-tpm')).text !== '');
  assert.match((await fieldState(page, 'key-rpm')).text, /^limits\.rpm must be a whole number/);
  assert.equal(keysAPI.sent.length, 0, 'nothing is sent');
  assert.equal(await focusedLabel(page), 'key-rpm');
  await page.getByLabel('Requests / min').fill('0');
  await page.getByLabel('Tokens / min').fill('0');

  const markup = 'name <img src=x onerror="window.__xss=1"> must be 1 to 64 characters';
  const errors = [
    { field: 'name', message: markup },
    { field: 'prefixes[1]', message: 'prefixes[1] must start with "/"' },
    { field: 'limits.rpm', message: 'limits.rpm must be a non-negative integer (0 means no limit)' },
    { field: 'limits.concurrency', message: 'limits.concurrency must be a non-negative integer (0 means no limit)' },
    { field: 'color', message: 'color is not a field this page knows' },
  ];
  keysAPI.reply = { status: 400, body: { error: { type: 'proxy_error', code: 'invalid_key', message: errors[0].message, errors } } };
  await page.locator('#key-form').getByLabel('Name', { exact: true }).fill('x');
  await page.locator('#key-add-btn').click();
  await until('the concurrency message', async () => (await fieldState(page, 'key-concurrency')).text !== '');
  const want = { 'key-name': markup, 'key-prefixes': errors[1].message, 'key-rpm': errors[2].message, 'key-concurrency': errors[3].message };
  for (const [id, text] of Object.entries(want)) {
    assert.deepEqual(await fieldState(page, id), { text, invalid: 'true', described: true }, id);
  }
  assert.deepEqual(await fieldState(page, 'key-tpm'), { text: '', invalid: 'false', described: true });
  assert.equal(await textOf(page.locator('#key-form-error')), errors[4].message, 'a field the form lacks goes under the form');
  assert.equal(await page.locator('#key-form img').count(), 0, 'messages are text');
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await focusedLabel(page), 'key-name');
  await page.screenshot({ path: path.join(artifacts, 'admin-errors-key-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 375, height: 812 });
  await noSidewaysScroll(page, 'the key form with four errors at 375 px');
  await page.screenshot({ path: path.join(artifacts, 'admin-errors-key-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  // Editing one field clears its message only.
  await page.getByLabel('Requests / min').fill('5');
  assert.equal((await fieldState(page, 'key-rpm')).text, '');
  assert.equal((await fieldState(page, 'key-concurrency')).text, errors[3].message);

  // An answer without "errors" (an older server): its one message beside
  // the field it names, the others cleared by the new submit.
  keysAPI.reply = { status: 400, body: { error: { type: 'proxy_error', code: 'invalid_key', message: 'expires_at must be in the future' } } };
  await page.locator('#key-add-btn').click();
  await until('the expiry message', async () => (await fieldState(page, 'key-expires')).text === 'expires_at must be in the future');
  assert.equal(await page.locator('#key-form [aria-invalid="true"]').count(), 1);
  assert.equal(await textOf(page.locator('#key-form-error')), '');
  assert.equal(await focusedLabel(page), 'key-expires');
  await page.unroute(KEYS_ROUTE);
  await page.close();
});

test('no page made a request that left 127.0.0.1, and nothing went wrong in the pages', async () => {
  assert.ok(requestLog.length > 20, `only ${requestLog.length} requests were logged`);
  const away = requestLog.filter((u) => new URL(u).hostname !== '127.0.0.1');
  assert.deepEqual(away, [], 'requests to other hosts');
  assert.deepEqual(problems, [], 'dialogs, page errors or console errors');
});

test('dashboard: says so when the server is unreachable', async () => {
  const page = await newPage();
  await page.goto(origin + '/');
  await until('a rendered dashboard', async () => Number(await page.evaluate(() => document.body.dataset.renders)) > 0);
  const shown = await textOf(page.locator('[data-k="total"]'));
  await stopServer();
  await until('the unreachable notice', async () => /unreachable/i.test(await textOf(page.locator('#status-text'))), REFRESH_WAIT);
  assert.ok(await page.locator('#status.down').isVisible(), 'the notice stands out');
  assert.equal(await textOf(page.locator('[data-k="total"]')), shown, 'the last figures stay on screen');
  await page.screenshot({ path: path.join(artifacts, 'dashboard-desktop-unreachable.png') });
  await page.close();
});

