// The official SDKs of OpenAI, Anthropic and Google (openai,
// @anthropic-ai/sdk, @google/genai) against apiproxy's proxy keys (SPEC
// §10): each SDK is pointed at a "keys" mapping with a proxy key as its API
// key, and a local upstream that speaks the provider's API (plain and
// streamed answers, with usage) and demands the provider's own key, which
// only the proxy holds.
//
// The suite builds the Go binary and runs it on a free loopback port with
// a temporary DATA_DIR and ADMIN_TOKEN, as pages.test.mjs does, then
// creates the mappings and the proxy key through the admin API. It needs
// the keys API (/api/keys); on a server without it,
// E2E_SKIP_S10_SERVER=1 npm test skips the whole file.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI, ApiError } from '@google/genai';

const SKIP = process.env.E2E_SKIP_S10_SERVER === '1' ? 'E2E_SKIP_S10_SERVER=1: the server has no §10 keys API yet' : false;

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(here, 'artifacts');
const TOKEN = 'e2e-sdk-admin-token-' + Math.random().toString(36).slice(2, 12);
const WAIT = 15000; // how long the upstream holds a stream for the client to read its first event

// The upstream keys, one per provider, sent by the proxy in the
// provider's own auth_style; the upstream refuses anything else.
const UPSTREAM = {
  openai: { prefix: '/sdk-openai', key: 'sk-upstream-openai-' + Math.random().toString(36).slice(2, 10), style: 'bearer' },
  anthropic: { prefix: '/sdk-anthropic', key: 'sk-ant-upstream-' + Math.random().toString(36).slice(2, 10), style: 'x-api-key' },
  gemini: { prefix: '/sdk-gemini', key: 'AIza-upstream-' + Math.random().toString(36).slice(2, 10), style: 'x-goog-api-key' },
};

let tmp;
let server;
let serverExited;
let origin;
let upstream;
let upstreamURL;
let proxyKey; // the secret of the proxy key the SDKs show
const seen = []; // every request the upstream got: {provider, method, url, headers, body}
let gate = null; // {released, release()}: holds a stream after its first event

// hold returns what a streamed answer waits on after its first event: the
// test releases it once the SDK has handed that event over, which shows the
// proxy streams rather than buffers. After WAIT it lets go by itself, and
// the test then fails on released.
function hold() {
  const g = { released: false };
  g.promise = new Promise((resolve) => {
    g.release = () => { g.released = true; resolve(); };
    setTimeout(resolve, WAIT).unref();
  });
  gate = g;
  return g;
}

function sse(res) {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  res.flushHeaders();
}

const openaiChunk = (delta, finish, extra) => JSON.stringify({
  id: 'chatcmpl-sdk', object: 'chat.completion.chunk', created: 1767225600, model: 'gpt-e2e',
  choices: delta === null ? [] : [{ index: 0, delta, finish_reason: finish }], ...extra,
});

async function openaiUpstream(req, res, body) {
  if (req.headers.authorization !== 'Bearer ' + UPSTREAM.openai.key) {
    res.writeHead(401, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ error: { message: 'Incorrect API key provided', type: 'invalid_request_error', code: 'invalid_api_key' } }));
    return;
  }
  if (!body.stream) {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({
      id: 'chatcmpl-sdk', object: 'chat.completion', created: 1767225600, model: body.model,
      choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from OpenAI, 你好.' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 },
    }));
    return;
  }
  sse(res);
  const g = hold();
  res.write(`data: ${openaiChunk({ role: 'assistant', content: 'Hello' }, null)}\n\n`);
  await g.promise;
  for (const part of [', stream', 'ed ', '你好.']) res.write(`data: ${openaiChunk({ content: part }, null)}\n\n`);
  res.write(`data: ${openaiChunk({}, 'stop')}\n\n`);
  if (body.stream_options && body.stream_options.include_usage) {
    res.write(`data: ${openaiChunk(null, null, { usage: { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 } })}\n\n`);
  }
  res.end('data: [DONE]\n\n');
}

// The Anthropic SDK of this version sends its API key as Authorization:
// Bearer; the proxy takes the proxy key from there and must send the
// upstream key as x-api-key, with no Authorization left.
async function anthropicUpstream(req, res, body) {
  if (req.headers['x-api-key'] !== UPSTREAM.anthropic.key || req.headers.authorization !== undefined) {
    res.writeHead(401, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } }));
    return;
  }
  const message = (content, usage) => ({
    id: 'msg_sdk', type: 'message', role: 'assistant', model: body.model, content,
    stop_reason: content.length ? 'end_turn' : null, stop_sequence: null, usage,
  });
  if (!body.stream) {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(message([{ type: 'text', text: 'Hello from Claude, 你好.' }], { input_tokens: 11, output_tokens: 8 })));
    return;
  }
  sse(res);
  const event = (type, data) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  const g = hold();
  event('message_start', { message: message([], { input_tokens: 11, output_tokens: 1 }) });
  event('content_block_start', { index: 0, content_block: { type: 'text', text: '' } });
  event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'Hello' } });
  await g.promise;
  event('ping', {});
  for (const part of [', stream', 'ed ', '你好.']) event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: part } });
  event('content_block_stop', { index: 0 });
  event('message_delta', { delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 6 } });
  event('message_stop', {});
  res.end();
}

async function geminiUpstream(req, res, body, method) {
  if (req.headers['x-goog-api-key'] !== UPSTREAM.gemini.key || new URL(req.url, 'http://x').searchParams.has('key')) {
    res.writeHead(401, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 401, message: 'API key not valid.', status: 'UNAUTHENTICATED' } }));
    return;
  }
  const answer = (text, finish, usage) => ({
    candidates: [{ content: { role: 'model', parts: [{ text }] }, index: 0, ...(finish ? { finishReason: finish } : {}) }],
    ...(usage ? { usageMetadata: usage } : {}), modelVersion: 'gemini-e2e',
  });
  if (method === 'generateContent') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(answer('Hello from Gemini, 你好.', 'STOP', { promptTokenCount: 5, candidatesTokenCount: 6, totalTokenCount: 11 })));
    return;
  }
  sse(res);
  const g = hold();
  res.write(`data: ${JSON.stringify(answer('Hello'))}\r\n\r\n`);
  await g.promise;
  res.write(`data: ${JSON.stringify(answer(', streamed '))}\r\n\r\n`);
  res.end(`data: ${JSON.stringify(answer('你好.', 'STOP', { promptTokenCount: 5, candidatesTokenCount: 4, totalTokenCount: 9 }))}\r\n\r\n`);
}

function startUpstream() {
  upstream = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { raw += c; });
    req.on('end', async () => {
      let body = {};
      try { body = raw ? JSON.parse(raw) : {}; } catch { /* answered below */ }
      const u = new URL(req.url, 'http://x');
      const gem = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent)$/.exec(u.pathname);
      const provider = u.pathname === '/v1/chat/completions' ? 'openai' : u.pathname === '/v1/messages' ? 'anthropic' : gem ? 'gemini' : '';
      seen.push({ provider, method: req.method, url: req.url, headers: req.headers, body });
      try {
        if (provider === 'openai') await openaiUpstream(req, res, body);
        else if (provider === 'anthropic') await anthropicUpstream(req, res, body);
        else if (provider === 'gemini') await geminiUpstream(req, res, body, gem[2]);
        else {
          res.writeHead(404, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ error: { message: 'no such path on the test upstream: ' + req.url } }));
        }
      } catch (e) {
        res.destroy(e);
      }
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
// JSON "apiproxy listening" log line.
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
  const cwd = path.join(tmp, 'cwd');
  fs.mkdirSync(cwd, { recursive: true });
  server = spawn(bin, [], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logFile = fs.createWriteStream(path.join(artifacts, 'apiproxy-sdk.log'));
  serverExited = new Promise((resolve) => server.once('exit', resolve));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('apiproxy did not log "apiproxy listening" within 20 s')), 20000);
    server.once('exit', (code) => { clearTimeout(timer); reject(new Error(`apiproxy exited with ${code} before listening; see artifacts/apiproxy-sdk.log`)); });
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

async function api(method, p, body) {
  const res = await fetch(origin + p, {
    method,
    headers: { Authorization: 'Bearer ' + TOKEN, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, data: await res.json().catch(() => null) };
}

before(async () => {
  if (SKIP) return;
  fs.mkdirSync(artifacts, { recursive: true });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'apiproxy-sdk-'));
  const bin = path.join(tmp, 'apiproxy');
  execFileSync('go', ['build', '-o', bin, '..'], { cwd: here, stdio: 'inherit', timeout: 300000 });
  await startUpstream();
  await startServer(bin);
  for (const u of Object.values(UPSTREAM)) {
    const r = await api('POST', '/api/mappings', { prefix: u.prefix, auth: 'keys', targets: [{ url: upstreamURL, key: u.key, auth_style: u.style }] });
    assert.equal(r.status, 201, `create ${u.prefix}: ${JSON.stringify(r.data)}`);
    assert.ok(!JSON.stringify(r.data).includes(u.key), 'the upstream key is never answered');
  }
  const k = await api('POST', '/api/keys', { name: 'sdk-e2e', prefixes: Object.values(UPSTREAM).map((u) => u.prefix) });
  assert.equal(k.status, 201, `create the proxy key: ${JSON.stringify(k.data)}`);
  proxyKey = k.data.key;
  assert.match(proxyKey, /^apx-/);
}, { timeout: 360000 });

after(async () => {
  if (server && server.exitCode === null && server.signalCode === null) {
    server.kill('SIGTERM');
    const done = await Promise.race([serverExited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
    if (!done) server.kill('SIGKILL');
  }
  if (upstream) {
    upstream.closeAllConnections();
    await new Promise((r) => upstream.close(r));
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

process.on('exit', () => { if (server && server.exitCode === null) server.kill('SIGKILL'); });

// since returns what the upstream got from the index mark on, checking
// each request carried the provider's upstream key in its style and
// nothing of the proxy key (headers, path or query).
function since(mark, provider) {
  const got = seen.slice(mark);
  for (const s of got) {
    const all = JSON.stringify(s.headers) + s.url;
    assert.ok(!all.includes(proxyKey), `the upstream saw the proxy key: ${all}`);
    assert.equal(s.provider, provider, `a request to ${s.url}`);
  }
  return got;
}

test('openai SDK: chat completions, plain and streamed with usage, through a keys mapping', { skip: SKIP }, async () => {
  const client = new OpenAI({ apiKey: proxyKey, baseURL: origin + UPSTREAM.openai.prefix + '/v1', maxRetries: 0, timeout: 30000 });
  const mark = seen.length;
  const done = await client.chat.completions.create({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'Say hello' }] });
  assert.equal(done.choices[0].message.content, 'Hello from OpenAI, 你好.');
  assert.deepEqual(done.usage, { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 });

  const stream = await client.chat.completions.create({
    model: 'gpt-e2e', messages: [{ role: 'user', content: 'Say hello' }], stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let firstReleased = null;
  for await (const chunk of stream) {
    if (chunk.choices.length && chunk.choices[0].delta.content) {
      text += chunk.choices[0].delta.content;
      if (firstReleased === null) { firstReleased = gate.released; gate.release(); }
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(firstReleased, false, 'the first event arrived while the upstream still held the stream');
  assert.equal(text, 'Hello, streamed 你好.');
  assert.deepEqual(usage, { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 });

  const got = since(mark, 'openai');
  assert.equal(got.length, 2);
  for (const s of got) {
    assert.equal(s.headers.authorization, 'Bearer ' + UPSTREAM.openai.key);
    assert.equal(s.url, '/v1/chat/completions');
  }
  assert.equal(got[1].body.stream, true);
});

test('anthropic SDK: messages, plain and streamed with usage, through a keys mapping', { skip: SKIP }, async () => {
  const client = new Anthropic({ apiKey: proxyKey, baseURL: origin + UPSTREAM.anthropic.prefix, maxRetries: 0, timeout: 30000 });
  const mark = seen.length;
  const done = await client.messages.create({ model: 'claude-e2e', max_tokens: 64, messages: [{ role: 'user', content: 'Say hello' }] });
  assert.deepEqual(done.content, [{ type: 'text', text: 'Hello from Claude, 你好.' }]);
  assert.equal(done.usage.input_tokens, 11);
  assert.equal(done.usage.output_tokens, 8);

  const stream = await client.messages.create({ model: 'claude-e2e', max_tokens: 64, messages: [{ role: 'user', content: 'Say hello' }], stream: true });
  let text = '';
  let outputTokens = 0;
  let inputTokens = 0;
  let stopped = false;
  let firstReleased = null;
  for await (const ev of stream) {
    if (ev.type === 'message_start') inputTokens = ev.message.usage.input_tokens;
    if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') {
      text += ev.delta.text;
      if (firstReleased === null) { firstReleased = gate.released; gate.release(); }
    }
    if (ev.type === 'message_delta') outputTokens = ev.usage.output_tokens;
    if (ev.type === 'message_stop') stopped = true;
  }
  assert.equal(firstReleased, false, 'the first event arrived while the upstream still held the stream');
  assert.equal(text, 'Hello, streamed 你好.');
  assert.equal(inputTokens, 11);
  assert.equal(outputTokens, 6);
  assert.ok(stopped, 'message_stop arrived');

  const got = since(mark, 'anthropic');
  assert.equal(got.length, 2);
  for (const s of got) {
    assert.equal(s.headers['x-api-key'], UPSTREAM.anthropic.key);
    assert.equal(s.headers.authorization, undefined);
    assert.ok(s.headers['anthropic-version'], 'the SDK\'s other headers pass through');
    assert.equal(s.url, '/v1/messages');
  }
});

test('gemini SDK: generateContent and streamGenerateContent (SSE), through a keys mapping', { skip: SKIP }, async () => {
  const client = new GoogleGenAI({ apiKey: proxyKey, vertexai: false, httpOptions: { baseUrl: origin + UPSTREAM.gemini.prefix } });
  const mark = seen.length;
  const done = await client.models.generateContent({ model: 'gemini-e2e', contents: 'Say hello' });
  assert.equal(done.text, 'Hello from Gemini, 你好.');
  assert.equal(done.usageMetadata.totalTokenCount, 11);

  const stream = await client.models.generateContentStream({ model: 'gemini-e2e', contents: 'Say hello' });
  let text = '';
  let usage = null;
  let firstReleased = null;
  for await (const chunk of stream) {
    text += chunk.text || '';
    if (firstReleased === null) { firstReleased = gate.released; gate.release(); }
    if (chunk.usageMetadata) usage = chunk.usageMetadata;
  }
  assert.equal(firstReleased, false, 'the first event arrived while the upstream still held the stream');
  assert.equal(text, 'Hello, streamed 你好.');
  assert.equal(usage.totalTokenCount, 9);

  const got = since(mark, 'gemini');
  assert.equal(got.length, 2);
  for (const s of got) assert.equal(s.headers['x-goog-api-key'], UPSTREAM.gemini.key);
  assert.equal(new URL(got[0].url, 'http://x').pathname, '/v1beta/models/gemini-e2e:generateContent');
  const streamed = new URL(got[1].url, 'http://x');
  assert.equal(streamed.pathname, '/v1beta/models/gemini-e2e:streamGenerateContent');
  assert.equal(streamed.searchParams.get('alt'), 'sse', 'the other query parameters stay');
});

test('a wrong proxy key is each SDK\'s authentication error (401), and nothing reaches the upstream', { skip: SKIP }, async () => {
  const wrong = 'apx-' + 'WRONGKEY'.repeat(4);
  const mark = seen.length;

  const oa = new OpenAI({ apiKey: wrong, baseURL: origin + UPSTREAM.openai.prefix + '/v1', maxRetries: 0 });
  await assert.rejects(oa.chat.completions.create({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'hi' }] }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, `got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
    assert.equal(e.status, 401);
    assert.equal(e.code, 'invalid_api_key');
    return true;
  });
  await assert.rejects(oa.chat.completions.create({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'hi' }], stream: true }), OpenAI.AuthenticationError);

  const an = new Anthropic({ apiKey: wrong, baseURL: origin + UPSTREAM.anthropic.prefix, maxRetries: 0 });
  await assert.rejects(an.messages.create({ model: 'claude-e2e', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }), (e) => {
    assert.ok(e instanceof Anthropic.AuthenticationError, `got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
    assert.equal(e.status, 401);
    return true;
  });
  await assert.rejects(an.messages.create({ model: 'claude-e2e', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }], stream: true }), Anthropic.AuthenticationError);

  const gm = new GoogleGenAI({ apiKey: wrong, vertexai: false, httpOptions: { baseUrl: origin + UPSTREAM.gemini.prefix } });
  await assert.rejects(gm.models.generateContent({ model: 'gemini-e2e', contents: 'hi' }), (e) => {
    assert.ok(e instanceof ApiError, `got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
    assert.equal(e.status, 401);
    return true;
  });
  await assert.rejects(gm.models.generateContentStream({ model: 'gemini-e2e', contents: 'hi' }), (e) => e instanceof ApiError && e.status === 401);

  // No key at all: 401 too.
  const res = await fetch(origin + UPSTREAM.openai.prefix + '/v1/chat/completions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
  assert.equal(res.status, 401);
  assert.equal((await res.json()).error.code, 'invalid_api_key');
  assert.equal(seen.length, mark, `the upstream got ${seen.length - mark} refused requests`);
});

test('the proxy key works with an SDK only on the mappings it names', { skip: SKIP }, async () => {
  const k = await api('POST', '/api/keys', { name: 'sdk-openai-only', prefixes: [UPSTREAM.openai.prefix] });
  assert.equal(k.status, 201, JSON.stringify(k.data));
  const mark = seen.length;
  const an = new Anthropic({ apiKey: k.data.key, baseURL: origin + UPSTREAM.anthropic.prefix, maxRetries: 0 });
  await assert.rejects(an.messages.create({ model: 'claude-e2e', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }), (e) => {
    assert.ok(e instanceof Anthropic.PermissionDeniedError, `got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
    assert.equal(e.status, 403);
    return true;
  });
  assert.equal(seen.length, mark, 'nothing is forwarded');
  const oa = new OpenAI({ apiKey: k.data.key, baseURL: origin + UPSTREAM.openai.prefix + '/v1', maxRetries: 0 });
  const done = await oa.chat.completions.create({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(done.choices[0].message.content, 'Hello from OpenAI, 你好.');
  assert.ok([200, 204].includes((await api('DELETE', '/api/keys/' + k.data.id)).status));
});

// SPEC §11: a refusal by the proxy's limits is the 429 an SDK knows. A key
// of concurrency 1 whose one slot is held by a stream is refused with
// Retry-After 1 (a slot's end cannot be foreseen, so the smallest wait),
// which keeps the test to about two seconds. A counting fetch records when
// each try left and what it got, so the test sees the SDK's wait.
test('openai SDK: a 429 rate_limited is a RateLimitError, retried after the Retry-After the proxy sent', { skip: SKIP }, async () => {
  const k = await api('POST', '/api/keys', { name: 'sdk-limited', prefixes: [UPSTREAM.openai.prefix], limits: { concurrency: 1 } });
  assert.equal(k.status, 201, JSON.stringify(k.data));
  const baseURL = origin + UPSTREAM.openai.prefix + '/v1';
  const ask = { model: 'gpt-e2e', messages: [{ role: 'user', content: 'Say hello' }] };
  const tries = []; // {sent, answered, status, retryAfter}
  let onRefused = null;
  const countingFetch = async (url, init) => {
    const sent = performance.now();
    const res = await fetch(url, init);
    tries.push({ sent, answered: performance.now(), status: res.status, retryAfter: res.headers.get('retry-after') });
    if (res.status === 429 && onRefused) onRefused();
    return res;
  };
  // holdSlot opens a stream with the key and reads its first event: the
  // key's one slot is taken until the upstream is let go.
  const holder = new OpenAI({ apiKey: k.data.key, baseURL, maxRetries: 0, timeout: 30000 });
  const holdSlot = async () => {
    const stream = await holder.chat.completions.create({ ...ask, stream: true });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    const g = gate;
    const rest = (async () => { while (!(await it.next()).done); })();
    return { release: () => g.release(), rest };
  };
  // waitedOut checks the SDK sent its next try no sooner than the
  // Retry-After of the 429 before it said.
  const waitedOut = () => {
    for (let i = 1; i < tries.length; i++) {
      const ra = Number(tries[i - 1].retryAfter);
      assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 60, `Retry-After ${tries[i - 1].retryAfter}: whole seconds from 1 to 60`);
      const waited = tries[i].sent - tries[i - 1].answered;
      // 5 ms of slack for the timer's rounding to whole milliseconds.
      assert.ok(waited >= ra * 1000 - 5, `the SDK retried after ${Math.round(waited)} ms, before the Retry-After of ${ra} s`);
    }
  };

  const client = new OpenAI({ apiKey: k.data.key, baseURL, maxRetries: 2, timeout: 30000, fetch: countingFetch });
  const first = await client.chat.completions.create(ask);
  assert.equal(first.choices[0].message.content, 'Hello from OpenAI, 你好.');
  assert.deepEqual(tries.map((x) => x.status), [200]);

  // The slot is held; the refusal lets the stream end, so the SDK's
  // retry, one Retry-After later, is admitted.
  const held = await holdSlot();
  onRefused = held.release;
  tries.length = 0;
  const mark = seen.length;
  const second = await client.chat.completions.create(ask);
  await held.rest;
  assert.equal(second.choices[0].message.content, 'Hello from OpenAI, 你好.');
  assert.deepEqual(tries.map((x) => x.status), [429, 200]);
  assert.equal(tries[0].retryAfter, '1');
  waitedOut();
  assert.equal(since(mark, 'openai').length, 1, 'the refused try reached no upstream');

  // Still refused when the SDK gives up: it surfaces a RateLimitError
  // with the proxy's envelope.
  const stuck = await holdSlot();
  onRefused = null;
  tries.length = 0;
  const strict = new OpenAI({ apiKey: k.data.key, baseURL, maxRetries: 1, timeout: 30000, fetch: countingFetch });
  await assert.rejects(strict.chat.completions.create(ask), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError, `got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
    assert.equal(e.status, 429);
    assert.equal(e.code, 'rate_limited');
    assert.equal(e.type, 'proxy_error');
    assert.match(e.message, /concurrency/);
    assert.equal(e.headers.get('retry-after'), '1');
    return true;
  });
  assert.deepEqual(tries.map((x) => x.status), [429, 429], 'one try and one retry (maxRetries 1)');
  waitedOut();
  stuck.release();
  await stuck.rest;
  assert.ok([200, 204].includes((await api('DELETE', '/api/keys/' + k.data.id)).status));
});
