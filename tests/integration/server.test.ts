// `llms-train serve` as a user runs it: a separate process, its own data home, real HTTP and WebSocket.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';

import { type Served, post, runCli, startCli } from '../helpers/app';

let app: Served;

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
});
afterAll(async () => {
  await app?.stop();
});

describe('llms-train serve', () => {
  it('prints a loopback URL carrying a token, and creates the database under LLMS_TRAIN_HOME', () => {
    expect(app.origin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(app.token.length).toBeGreaterThanOrEqual(32);
    expect(fs.existsSync(path.join(app.home, 'llms-train.db'))).toBe(true);
  });

  it('answers 401 without the token, for the page and for the API', async () => {
    const page = await fetch(`${app.origin}/`);
    expect(page.status).toBe(401);
    // a person's browser (Accept: text/html) reads what to do, not JSON
    const html = await fetch(`${app.origin}/`, { headers: { Accept: 'text/html,application/xhtml+xml' } });
    expect(html.status).toBe(401);
    expect(html.headers.get('content-type')).toMatch(/text\/html/);
    expect(html.headers.get('content-security-policy')).toMatch(/default-src 'self'/);
    expect(await html.text()).toMatch(/needs the link that <code>llms-train serve<\/code>/);
    const api = await post(app.origin, 'getStatus', {});
    expect(api.status).toBe(401);
    expect(api.json.error.code).toBe('UNAUTHORIZED');
    expect(api.json.error.hint).toMatch(/token/);
    // One character off (never the same character: a token ending in 'x' made this pass the real token).
    const last = app.token.at(-1) === 'x' ? 'y' : 'x';
    const wrong = await post(app.origin, 'getStatus', {}, { 'X-LLMT-Token': app.token.slice(0, -1) + last });
    expect(wrong.status).toBe(401);
  });

  it('serves the page with the token in the URL, with a CSP, and its assets by cookie', async () => {
    const res = await fetch(app.url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-security-policy')).toMatch(/default-src 'self'/);
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    const html = await res.text();
    expect(html).toContain('<div id="app">');
    const cookie = res.headers.get('set-cookie')!;
    expect(cookie).toMatch(/HttpOnly/);
    expect(cookie).toMatch(/SameSite=Strict/);
    const asset = /src="\.\/(assets\/[^"]+\.js)"/.exec(html)![1]!;
    expect((await fetch(`${app.origin}/${asset}`)).status).toBe(401);
    const withCookie = await fetch(`${app.origin}/${asset}`, { headers: { Cookie: cookie.split(';')[0]! } });
    expect(withCookie.status).toBe(200);
    expect(withCookie.headers.get('content-type')).toMatch(/javascript/);
  });

  it('does not accept the page cookie for API calls', async () => {
    const res = await fetch(app.url);
    const cookie = res.headers.get('set-cookie')!.split(';')[0]!;
    const api = await post(app.origin, 'getStatus', {}, { Cookie: cookie });
    expect(api.status).toBe(401);
  });

  it('answers API calls with the token: status says CPU only here', async () => {
    const r = await post(app.origin, 'getStatus', {}, { Authorization: `Bearer ${app.token}` });
    expect(r.status).toBe(200);
    expect(r.json.result.mode).toBe('browser');
    expect(r.json.result.engine.available).toBe(true);
    expect(r.json.result.gpus).toEqual([]);
    expect(r.json.result.devices[0].kind).toBe('cpu');
    expect(r.json.result.home).toBe(app.home);
  });

  it('answers a malformed body with 400 naming the field', async () => {
    const h = { 'X-LLMT-Token': app.token };
    const r = await post(app.origin, 'createExperiment', { name: 123 }, h);
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe('BAD_REQUEST');
    expect(r.json.error.fields[0].path).toBe('name');
    expect(r.json.error.message).toMatch(/name/);
    const notJson = await post(app.origin, 'createExperiment', '{"name": ', h);
    expect(notJson.status).toBe(400);
    expect(notJson.json.error.message).toMatch(/not valid JSON/);
    const unknownField = await post(app.origin, 'listRuns', { limt: 3 }, h);
    expect(unknownField.status).toBe(400);
    expect(unknownField.json.error.message).toMatch(/limt/);
  });

  it('stores data through the API and reports conflicts and unknown ids', async () => {
    const h = { 'X-LLMT-Token': app.token };
    const created = await post(app.origin, 'createExperiment', { name: 'baseline' }, h);
    expect(created.status).toBe(200);
    expect((await post(app.origin, 'createExperiment', { name: 'baseline' }, h)).status).toBe(409);
    const list = await post(app.origin, 'listExperiments', {}, h);
    expect(list.json.result.map((e: { name: string }) => e.name)).toContain('baseline');
    const missing = await post(app.origin, 'getRun', { id: 999 }, h);
    expect(missing.status).toBe(404);
    const upd = await post(app.origin, 'updateSettings', { locale: 'zh-CN' }, h);
    expect(upd.json.result.locale).toBe('zh-CN');
    expect((await post(app.origin, 'getSettings', {}, h)).json.result.locale).toBe('zh-CN');
  });

  it('refuses unknown methods, GET on the API, and foreign Host headers', async () => {
    expect((await post(app.origin, 'dropEverything', {}, { 'X-LLMT-Token': app.token })).status).toBe(404);
    expect((await fetch(`${app.origin}/api/getStatus?token=${app.token}`)).status).toBe(405);
    const port = Number(new URL(app.origin).port);
    const status = await new Promise<string>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(`GET /?token=${app.token} HTTP/1.1\r\nHost: attacker.example:${port}\r\nConnection: close\r\n\r\n`));
      let buf = '';
      s.on('data', (d) => (buf += d.toString()));
      s.on('end', () => resolve(buf.split('\r\n')[0]!));
      s.on('error', reject);
    });
    expect(status).toMatch(/400/);
  });

  it('survives malformed requests: a bad URL, a cookie that is not percent-encoding, a NUL in the path, an oversized body', async () => {
    const port = Number(new URL(app.origin).port);
    const raw = (request: string) =>
      new Promise<string>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => s.write(request));
        let buf = '';
        s.on('data', (d) => (buf += d.toString()));
        s.on('end', () => resolve(buf.split('\r\n')[0]!));
        s.on('error', reject);
      });
    const host = `Host: 127.0.0.1:${port}\r\nConnection: close`;
    expect(await raw(`GET http://[ HTTP/1.1\r\n${host}\r\n\r\n`)).toMatch(/ 400 /);
    expect(await raw(`GET http://[ HTTP/1.1\r\n${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`)).toMatch(/ 400 /);
    // another page on 127.0.0.1 (any port: cookies do not keep ports apart) can set this cookie in the user's browser
    expect(await raw(`GET / HTTP/1.1\r\n${host}\r\nCookie: llmt_token_${port}=%E0\r\n\r\n`)).toMatch(/ 401 /);
    expect(await raw(`GET /index.html%00.png?token=${app.token} HTTP/1.1\r\n${host}\r\n\r\n`)).toMatch(/ 404 /);
    expect(await raw(`GET /..%5C..%5C..%5Cetc%5Cpasswd?token=${app.token} HTTP/1.1\r\n${host}\r\n\r\n`)).toMatch(/ 404 /);
    const big = await post(app.origin, 'getStatus', { pad: 'x'.repeat(2 << 20) }, { 'X-LLMT-Token': app.token });
    expect(big.status).toBe(413);
    expect(big.json.error.message).toMatch(/larger than/);
    // and the server is still there
    expect((await post(app.origin, 'getStatus', {}, { 'X-LLMT-Token': app.token })).status).toBe(200);
  });

  it('pushes the status event over the WebSocket, only with the token and our origin', async () => {
    const wsUrl = `${app.origin.replace('http', 'ws')}/api/events`;
    const first = await new Promise<{ event: string; payload: { gpus: unknown[] } }>((resolve, reject) => {
      const ws = new WebSocket(`${wsUrl}?token=${app.token}`, { origin: app.origin });
      ws.once('message', (m) => {
        ws.close();
        resolve(JSON.parse(String(m)));
      });
      ws.once('error', reject);
    });
    expect(first.event).toBe('status');
    expect(first.payload.gpus).toEqual([]);
    const refused = (url: string, origin?: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(url, origin ? { origin } : {});
        ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
        ws.once('open', () => resolve(101));
        ws.once('error', () => resolve(-1));
      });
    expect(await refused(wsUrl)).toBe(401);
    expect(await refused(`${wsUrl}?token=${app.token}`, 'http://evil.example')).toBe(403);
  });
});

describe('llms-train serve options', () => {
  it('refuses a non-loopback host without --allow-remote', async () => {
    const r = await runCli(['serve', '--host', '0.0.0.0', '--port', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/not a loopback address.*--allow-remote/);
  });

  it('warns when --allow-remote exposes it', async () => {
    const s = await startCli(['serve', '--host', '0.0.0.0', '--port', '0', '--allow-remote']);
    try {
      expect(s.output()).toMatch(/WARNING: listening on 0\.0\.0\.0/);
    } finally {
      await s.stop();
    }
  });

  it('says clearly when the port is taken', async () => {
    const port = Number(new URL(app.origin).port);
    const r = await runCli(['serve', '--port', String(port)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/already in use/);
  });

  it('rejects a bad --port value', async () => {
    const r = await runCli(['serve', '--port', 'abc']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/port is an integer/);
  });
});
