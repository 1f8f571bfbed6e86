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
const TOKEN = 'e2e-admin-token-' + Math.random().toString(36).slice(2, 12);
const WAIT = 20000; // deadline of one wait in the browser
const REFRESH_WAIT = 30000; // the dashboard polls /stats every 5 s

let tmp;
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
function startServer(bin) {
  const env = { ...process.env };
  for (const k of ['API_PROXY_REDIS_URL', 'PORT', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY', 'all_proxy', 'CORS_ALLOW_ORIGINS']) delete env[k];
  Object.assign(env, {
    LISTEN_ADDR: '127.0.0.1:0',
    DATA_DIR: path.join(tmp, 'data'),
    ADMIN_TOKEN: TOKEN,
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
    ENABLE_STATS: 'true',
  });
  const cwd = path.join(tmp, 'cwd'); // empty: the pages must come from the binary
  fs.mkdirSync(cwd, { recursive: true });
  server = spawn(bin, [], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logFile = fs.createWriteStream(path.join(artifacts, 'apiproxy.log'));
  serverExited = new Promise((resolve) => server.once('exit', resolve));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('apiproxy did not log "apiproxy listening" within 20 s')), 20000);
    server.once('exit', (code) => { clearTimeout(timer); reject(new Error(`apiproxy exited with ${code} before listening; see artifacts/apiproxy.log`)); });
    for (const stream of [server.stdout, server.stderr]) {
      readline.createInterface({ input: stream }).on('line', (line) => {
        logFile.write(line + '\n');
        let rec;
        try { rec = JSON.parse(line); } catch { return; }
        if (rec.msg === 'apiproxy listening' && rec.addr) {
          clearTimeout(timer);
          origin = 'http://' + rec.addr;
          resolve();
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
  const bin = path.join(tmp, 'apiproxy');
  execFileSync('go', ['build', '-o', bin, '..'], { cwd: here, stdio: 'inherit', timeout: 300000 });
  await startUpstream();
  await startServer(bin);
  context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--no-proxy-server',
    ],
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

test('dashboard: endpoint counts, charts, copy buttons, language and theme', async () => {
  const statsOf = async () => (await (await fetch(origin + '/stats')).json()).endpoints['/e2e'] || {};
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
  await until('the /e2e row to show the new count', async () => (await tr.count()) === 1 && (await main(5)) === n(want.count), REFRESH_WAIT);
  // Cells: endpoint, URL, 24 h, 7 d, 30 d, total, errors, latency, tokens;
  // the last four hold a figure and a muted line under it.
  assert.equal(await textOf(td(0).locator('.prefix')), '/e2e');
  assert.equal(await textOf(td(0).locator('.target')), upstreamURL + '/base');
  assert.equal(await textOf(td(1).locator('.url')), origin + '/e2e');
  assert.equal(await textOf(td(2)), n(want.last_24h), '24 h');
  assert.equal(await textOf(td(3)), n(want.last_7d), '7 d');
  assert.equal(await textOf(td(4)), n(want.last_30d), '30 d');
  assert.equal(await main(6), n(want.error_count), 'errors');
  assert.equal(await main(8), n(want.tokens.total), 'tokens');
  assert.equal(await page.locator('#ep-body img').count(), 0, 'a model name is text, not markup');
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.notEqual(await textOf(page.locator('[data-k="total"]')), '–');
  assert.match(await textOf(page.locator('#status-text')), /Live/);

  // Charts: SVG with at least one bar of non-zero height each.
  for (const id of ['#chart-hourly', '#chart-daily']) {
    const bars = await until(`bars in ${id}`, async () => {
      const n = await page.locator(`${id} svg rect.bar-ok, ${id} svg rect.bar-err`).evaluateAll(
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
      await until('the charts at this width', async () => (await page.locator('#chart-daily svg').count()) === 1);
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
  const assets = first.filter((e) => !e.name.endsWith('/stats'));
  assert.ok(assets.every((e) => e.encoded < e.decoded || e.decoded < 1024 || e.name.endsWith('.svg')), `assets not compressed: ${JSON.stringify(assets)}`);
  assert.ok(total <= 150 * 1024, `first load transfers ${total} bytes, want at most 150 KB`);

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
  const stats = await page.evaluate(() => performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/stats')).map((e) => ({ transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize })).pop());
  const raw = await (await fetch(origin + '/stats')).text();
  const figures = {
    first_load: { total_transfer_bytes: total, requests: first },
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
