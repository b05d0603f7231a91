// server.ts — browser mode: the API contract over HTTP (POST /api/<method>) and push events over a
// WebSocket (/api/events), plus the built renderer, on loopback by default. Every request needs the
// per-launch token: the printed URL carries it (?token=…); the page then sends it as a header, and a
// cookie scoped to this port lets the browser fetch the page's own assets.
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

import { WebSocketServer, type WebSocket } from 'ws';

import type { EventName } from '../api/contract.js';
import { httpStatusFor } from '../api/errors.js';
import type { Core } from '../core/core.js';
import {
  CONTENT_SECURITY_POLICY,
  allowedHostHeader,
  allowedOrigin,
  cookieValue,
  isLoopbackHost,
  rendererFile,
  newToken,
  tokenMatches,
} from './security.js';

export interface ServeOptions {
  host?: string;
  port?: number;
  /** Required to bind anything but loopback. */
  allowRemote?: boolean;
  rendererDir: string;
  token?: string;
  log?: (line: string) => void;
}

export interface RunningServer {
  url: string;
  origin: string;
  token: string;
  port: number;
  host: string;
  close(): Promise<void>;
}

const MAX_BODY = 1 << 20;
/** Dataset uploads (importDataset) carry a whole file: 64 MiB of text, JSON-escaped. */
const MAX_UPLOAD_BODY = 160 << 20;

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.map': 'application/json; charset=utf-8',
};

function securityHeaders(res: http.ServerResponse): void {
  res.setHeader('Content-Security-Policy', CONTENT_SECURITY_POLICY);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(text);
}

function sendError(res: http.ServerResponse, code: string, message: string, hint?: string): void {
  sendJson(res, httpStatusFor(code), { error: hint ? { code, message, hint } : { code, message } });
}

const UNAUTHORIZED_HINT = 'Open the URL printed by `llms-train serve` or `npm start`: it carries ?token=… for this launch.';
const UNAUTHORIZED_PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>LLMs-train: open the printed link</title></head><body>
<h1>LLMs-train</h1>
<p>This page needs the link that <code>llms-train serve</code> (or <code>npm start</code>) printed when it started: it carries
<code>?token=…</code> for that launch. A link of an earlier launch does not work once the server has restarted.</p>
<p lang="zh-CN">请打开 <code>llms-train serve</code>（或 <code>npm start</code>）启动时打印的链接：其中的 <code>?token=…</code> 只对本次启动有效。</p>
</body></html>
`;

class BodyTooLarge extends Error {}

/**
 * The request body as text. One larger than `max` is read to its end and dropped (not kept in memory), so the
 * client gets the 413 and its message rather than a reset connection.
 */
function readBody(req: http.IncomingMessage, max = MAX_BODY): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= max) chunks.push(c);
      else chunks.length = 0;
    });
    req.on('end', () => {
      if (size > max) reject(new BodyTooLarge(`the request body (${size} bytes) is larger than the ${max} bytes this call takes`));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', reject);
  });
}

/** The request's URL, or null when it cannot be parsed (e.g. `GET http://[`): answered 400, never thrown. */
function requestUrl(req: http.IncomingMessage): URL | null {
  try {
    return new URL(req.url ?? '/', 'http://localhost');
  } catch {
    return null;
  }
}

export async function startServer(core: Core, opts: ServeOptions): Promise<RunningServer> {
  const host = opts.host ?? '127.0.0.1';
  const loopback = isLoopbackHost(host);
  if (!loopback && !opts.allowRemote) {
    throw new Error(
      `refusing to listen on ${host}: browser mode binds to loopback only. Pass --allow-remote to expose the workbench to your network (anyone with the token can then run jobs on this machine).`,
    );
  }
  const token = opts.token ?? newToken();
  const log = opts.log ?? (() => {});
  let port = 0;
  const cookieName = () => `llmt_token_${port}`;
  const rendererRoot = path.resolve(opts.rendererDir);

  const authorized = (req: http.IncomingMessage, url: URL, allowCookie: boolean): boolean => {
    const auth = req.headers.authorization;
    const bearer = auth && auth.startsWith('Bearer ') ? auth.slice(7).trim() : null;
    const header = req.headers['x-llmt-token'];
    if (tokenMatches(token, bearer)) return true;
    if (typeof header === 'string' && tokenMatches(token, header)) return true;
    if (tokenMatches(token, url.searchParams.get('token'))) return true;
    return allowCookie && tokenMatches(token, cookieValue(req.headers.cookie, cookieName()));
  };

  const serveStatic = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendError(res, 'NOT_FOUND', `${req.method} ${url.pathname} is not served`);
      return;
    }
    const file = rendererFile(rendererRoot, url.pathname);
    if (!file) {
      sendError(res, 'NOT_FOUND', 'not found');
      return;
    }
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) {
        if (!fs.existsSync(path.join(rendererRoot, 'index.html'))) {
          sendError(res, 'UNAVAILABLE', `the renderer is not built (${rendererRoot} is missing)`, 'Run `npm run build` first.');
        } else {
          sendError(res, 'NOT_FOUND', `${url.pathname} not found`);
        }
        return;
      }
      const type = MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
      const headers: Record<string, string | number> = { 'Content-Type': type, 'Content-Length': st.size };
      headers['Cache-Control'] = type.startsWith('text/html') ? 'no-store' : 'private, max-age=3600';
      if (url.searchParams.has('token')) {
        // Let the browser load this page's assets; HttpOnly so page scripts cannot read it, Strict so no
        // other site's page can use it. API calls still need the token header.
        headers['Set-Cookie'] = `${cookieName()}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`;
      }
      res.writeHead(200, headers);
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      fs.createReadStream(file)
        .on('error', () => res.destroy()) // removed or rebuilt between stat and read: end this response only
        .pipe(res);
    });
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse) => {
    securityHeaders(res);
    const url = requestUrl(req);
    if (!url) {
      sendError(res, 'BAD_REQUEST', 'malformed request URL');
      return;
    }
    if (!allowedHostHeader(req.headers.host, port, loopback)) {
      sendError(res, 'BAD_REQUEST', `unexpected Host header '${req.headers.host ?? ''}'`, 'Use the printed URL (127.0.0.1 or localhost).');
      return;
    }
    const isApi = url.pathname === '/api' || url.pathname.startsWith('/api/');
    if (!authorized(req, url, !isApi)) {
      // a person opening the page without the link's token (or with one of an earlier launch) reads a page, not JSON
      if (!isApi && /text\/html/.test(req.headers.accept ?? '')) {
        res.writeHead(401, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(UNAUTHORIZED_PAGE);
        return;
      }
      sendError(res, 'UNAUTHORIZED', 'missing or wrong token', UNAUTHORIZED_HINT);
      return;
    }
    if (!isApi) {
      serveStatic(req, res, url);
      return;
    }
    const method = url.pathname.slice('/api/'.length);
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'POST');
      sendJson(res, 405, { error: { code: 'BAD_REQUEST', message: `use POST for /api/${method}` } });
      return;
    }
    if (!core.dispatcher.has(method)) {
      sendError(res, 'NOT_FOUND', `unknown API method '${method}'`);
      return;
    }
    readBody(req, method === 'importDataset' ? MAX_UPLOAD_BODY : MAX_BODY)
      .then(async (text) => {
        let body: unknown = {};
        if (text.trim().length) {
          try {
            body = JSON.parse(text);
          } catch (err) {
            sendError(res, 'BAD_REQUEST', `request body is not valid JSON: ${(err as Error).message}`);
            return;
          }
        }
        const env = await core.dispatcher.call(method, body);
        if (env.ok) sendJson(res, 200, { result: env.result });
        else sendJson(res, httpStatusFor(env.error.code), { error: env.error });
      })
      .catch((err: Error) => {
        if (res.headersSent) return res.destroy();
        if (err instanceof BodyTooLarge) sendJson(res, 413, { error: { code: 'BAD_REQUEST', message: err.message, hint: method === 'importDataset' ? 'Import large datasets by path instead of uploading them.' : undefined } });
        else sendError(res, 'BAD_REQUEST', err.message);
      });
  };
  const server = http.createServer((req, res) => {
    // whatever a request holds, it never takes the server down (and the runs it supervises with it)
    try {
      handle(req, res);
    } catch (err) {
      log(`request ${req.method ?? ''} ${(req.url ?? '').slice(0, 200)} failed: ${(err as Error).message}`);
      if (!res.headersSent) sendError(res, 'INTERNAL', 'the request could not be handled');
      else res.destroy();
    }
  });

  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
  const sockets = new Set<WebSocket>();
  const unsubscribe = core.events.subscribe((name: EventName, payload: unknown) => {
    const msg = JSON.stringify({ event: name, payload });
    for (const ws of sockets) if (ws.readyState === ws.OPEN) ws.send(msg);
  });

  server.on('upgrade', (req, socket, head) => {
    const url = requestUrl(req);
    const reject = (status: number, text: string) => {
      socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    socket.on('error', () => socket.destroy());
    if (!url) return reject(400, 'Bad Request');
    if (url.pathname !== '/api/events') return reject(404, 'Not Found');
    if (!allowedHostHeader(req.headers.host, port, loopback)) return reject(400, 'Bad Request');
    if (!allowedOrigin(req.headers.origin, req.headers.host)) return reject(403, 'Forbidden');
    if (!authorized(req, url, false)) return reject(401, 'Unauthorized');
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.add(ws);
      ws.on('close', () => sockets.delete(ws));
      ws.on('error', () => sockets.delete(ws));
      ws.send(JSON.stringify({ event: 'status', payload: core.status() }));
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') reject(new Error(`port ${opts.port} on ${host} is already in use; pick another with --port (0 = any free port)`));
      else reject(err);
    });
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  const hostForUrl = host.includes(':') ? `[${host}]` : host;
  const origin = `http://${hostForUrl}:${port}`;
  const url = `${origin}/?token=${token}`;
  log(`serving on ${origin}`);

  return {
    url,
    origin,
    token,
    port,
    host,
    close: () =>
      new Promise<void>((resolve) => {
        unsubscribe();
        for (const ws of sockets) ws.terminate();
        wss.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
