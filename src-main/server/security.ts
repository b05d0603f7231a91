// security.ts — the browser mode's guards, kept apart so they can be tested alone: the per-launch
// token, constant-time comparison, loopback detection, the Host/Origin checks that stop DNS-rebinding
// and cross-site pages, and the Content-Security-Policy shared with the Electron window.
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';

/** The CSP of every page we serve (also set by the Electron window for app:// responses). */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export function newToken(): string {
  return crypto.randomBytes(24).toString('base64url');
}

export function tokenMatches(expected: string, given: string | null | undefined): boolean {
  if (typeof given !== 'string' || given.length === 0) return false;
  const a = Buffer.from(expected);
  const b = Buffer.from(given);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) return h === '::1' || h.startsWith('::ffff:127.');
  return false;
}

/** Host names a loopback server answers to; anything else (a rebinding attack's name) is refused. */
export function allowedHostHeader(hostHeader: string | undefined, port: number, loopbackOnly: boolean): boolean {
  if (!hostHeader) return false;
  if (!loopbackOnly) return true;
  let name = hostHeader;
  let p = '';
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(hostHeader);
  if (!m) return false;
  name = m[1]!;
  p = m[2] ?? '';
  return isLoopbackHost(name) && (p === '' ? port === 80 : Number(p) === port);
}

/** A WebSocket's Origin must be our own page (browsers always send it; other clients may omit it). */
export function allowedOrigin(origin: string | undefined, hostHeader: string | undefined): boolean {
  if (origin === undefined) return true;
  try {
    const u = new URL(origin);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.host === hostHeader;
  } catch {
    return false;
  }
}

/** Reads `name` from a Cookie header. */
export function cookieValue(header: string | undefined, name: string): string | null {
  if (!header) return null;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) {
      try {
        return decodeURIComponent(part.slice(i + 1).trim());
      } catch {
        return null; // not percent-encoding (another page on this host may set any cookie): no token
      }
    }
  }
  return null;
}

/**
 * The file of the built renderer that a request path names, or null (then: 404). Shared by browser mode and the
 * desktop window's app:// handler. Percent-decoded once; NUL, backslashes (a separator on Windows and in file URLs,
 * not to path.posix), `?` and `#` are never in the renderer's file names and are refused before the path is
 * resolved, so no spelling of `..` leaves `root`.
 */
export function rendererFile(root: string, pathname: string): string | null {
  let rel: string;
  try {
    rel = decodeURIComponent(pathname);
  } catch {
    return null;
  }
  if (/[\0\\?#]/.test(rel)) return null;
  if (rel === '' || rel.endsWith('/')) rel += 'index.html';
  const file = path.resolve(root, '.' + path.posix.normalize(rel.startsWith('/') ? rel : '/' + rel));
  return file.startsWith(root + path.sep) ? file : null;
}
