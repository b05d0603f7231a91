// Browser-mode guards: token comparison, loopback detection, Host and Origin checks, cookies.
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { allowedHostHeader, allowedOrigin, cookieValue, isLoopbackHost, newToken, rendererFile, tokenMatches } from '../../src-main/server/security';

describe('security', () => {
  it('makes long, distinct, URL-safe tokens', () => {
    const a = newToken();
    const b = newToken();
    expect(a).not.toBe(b);
    expect(a).toMatch(/^[A-Za-z0-9_-]{32,}$/);
  });

  it('compares tokens exactly', () => {
    const t = newToken();
    expect(tokenMatches(t, t)).toBe(true);
    expect(tokenMatches(t, t.slice(1))).toBe(false);
    expect(tokenMatches(t, t + 'x')).toBe(false);
    expect(tokenMatches(t, '')).toBe(false);
    expect(tokenMatches(t, null)).toBe(false);
  });

  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['0.0.0.0', '192.168.1.2', '10.0.0.1', 'example.com', '::', '']) expect(isLoopbackHost(h)).toBe(false);
  });

  it('accepts only loopback Host headers on our port (DNS rebinding)', () => {
    expect(allowedHostHeader('127.0.0.1:8080', 8080, true)).toBe(true);
    expect(allowedHostHeader('localhost:8080', 8080, true)).toBe(true);
    expect(allowedHostHeader('[::1]:8080', 8080, true)).toBe(true);
    expect(allowedHostHeader('attacker.example:8080', 8080, true)).toBe(false);
    expect(allowedHostHeader('127.0.0.1:9999', 8080, true)).toBe(false);
    expect(allowedHostHeader(undefined, 8080, true)).toBe(false);
    expect(allowedHostHeader('box.lan:8080', 8080, false)).toBe(true);
  });

  it('accepts WebSocket origins of our own page only', () => {
    expect(allowedOrigin('http://127.0.0.1:8080', '127.0.0.1:8080')).toBe(true);
    expect(allowedOrigin('http://evil.example', '127.0.0.1:8080')).toBe(false);
    expect(allowedOrigin('null', '127.0.0.1:8080')).toBe(false);
    expect(allowedOrigin(undefined, '127.0.0.1:8080')).toBe(true);
  });

  it('reads cookies by exact name', () => {
    expect(cookieValue('a=1; llmt_token_80=abc%3D; b=2', 'llmt_token_80')).toBe('abc=');
    expect(cookieValue('xllmt_token_80=no', 'llmt_token_80')).toBeNull();
    expect(cookieValue(undefined, 'a')).toBeNull();
    // any page on this host can set a cookie: one that is not percent-encoding is no token, never an exception
    expect(cookieValue('llmt_token_80=%E0; b=2', 'llmt_token_80')).toBeNull();
    expect(cookieValue('llmt_token_80=%', 'llmt_token_80')).toBeNull();
  });

  it('maps request paths to renderer files, never outside the renderer folder', () => {
    const root = path.resolve('/srv/renderer');
    expect(rendererFile(root, '/')).toBe(path.join(root, 'index.html'));
    expect(rendererFile(root, '')).toBe(path.join(root, 'index.html'));
    expect(rendererFile(root, '/assets/app%20x.js')).toBe(path.join(root, 'assets', 'app x.js'));
    expect(rendererFile(root, '/assets/')).toBe(path.join(root, 'assets', 'index.html'));
    for (const bad of [
      '/../etc/passwd',
      '/%2e%2e/%2e%2e/etc/passwd',
      '/assets/..%2f..%2f..%2fetc%2fpasswd',
      '/..%5C..%5C..%5Cetc%5Cpasswd', // backslashes: separators in file URLs and on Windows
      '/index.html%00.png', // NUL: fs throws on it
      '/index.html%3F.js',
      '/%E0%A4%A', // not UTF-8 percent-encoding
    ]) {
      const f = rendererFile(root, bad);
      expect(f === null || f.startsWith(root + path.sep), bad).toBe(true);
      if (/%5C|%00|%3F|%E0/.test(bad)) expect(f, bad).toBeNull();
    }
  });
});
