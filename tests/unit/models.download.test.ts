// Hub downloads against a loopback server with the Hub's URL layout: file list with sizes and checksums,
// Range resumption (a dropped connection, and a .part left by an earlier session), sha256 and git blob checks,
// 401 for a gated repository unless the token is sent, progress reports, no half file under a final name.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { defaultInclude, downloadModel, listRepoFiles, type DownloadProgress } from '../../src-main/core/models/download';

const big = crypto.randomBytes(300_000);
const config = Buffer.from('{"model_type": "llama"}\n');
const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
const blobId = (b: Buffer) => crypto.createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const files: Record<string, { body: Buffer; lfs: boolean; claimSha?: string }> = {
  'config.json': { body: config, lfs: false },
  'model.safetensors': { body: big, lfs: true },
  'sub/tokenizer.model': { body: Buffer.from('sp'), lfs: true },
};
let server: http.Server;
let endpoint: string;
let tmp: string;
const log: { url: string; range?: string; auth?: string }[] = [];
let dropFirst = true;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-dl-'));
  server = http.createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? '');
    log.push({ url, range: req.headers.range, auth: req.headers.authorization });
    const m = /^\/api\/models\/(org\/[\w-]+)\/revision\/main/.exec(url);
    const repo = m?.[1] ?? /^\/(org\/[\w-]+)\/resolve\//.exec(url)?.[1];
    if (repo === 'org/gated' && req.headers.authorization !== 'Bearer good-token') {
      res.writeHead(401).end('gated');
      return;
    }
    const set = repo === 'org/corrupt' ? { 'model.safetensors': { body: big, lfs: true, claimSha: sha256(Buffer.from('other')) } } : files;
    if (m) {
      const siblings = Object.entries(set).map(([k, v]) => ({
        rfilename: k,
        size: v.body.length,
        ...(v.lfs ? { lfs: { sha256: (v as { claimSha?: string }).claimSha ?? sha256(v.body), size: v.body.length } } : { blobId: blobId(v.body) }),
      }));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: repo, siblings }));
      return;
    }
    const f = /\/resolve\/main\/(.+)$/.exec(url)?.[1];
    const entry = f ? (set as typeof files)[f] : undefined;
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    let start = 0;
    const r = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (r) start = Number(r[1]);
    const body = entry.body.subarray(start);
    res.writeHead(r ? 206 : 200, { 'content-length': String(body.length), ...(r ? { 'content-range': `bytes ${start}-${entry.body.length - 1}/${entry.body.length}` } : {}) });
    if (f === 'model.safetensors' && dropFirst && repo === 'org/tiny') {
      dropFirst = false;
      res.write(body.subarray(0, 100_000), () => res.destroy()); // the connection drops mid-file
      return;
    }
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => {
  server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('Hub downloads', () => {
  it('lists files with sizes and checksums', async () => {
    const list = await listRepoFiles('org/tiny', { endpoint });
    expect(list.find((f) => f.path === 'model.safetensors')).toEqual({ path: 'model.safetensors', size: big.length, sha256: sha256(big) });
    expect(list.find((f) => f.path === 'config.json')?.blobId).toBe(blobId(config));
  });

  it('downloads every file, resuming a dropped connection with a Range request, with progress', async () => {
    const progress: DownloadProgress[] = [];
    const dest = path.join(tmp, 'tiny');
    const r = await downloadModel({ repo: 'org/tiny', endpoint, dest, onProgress: (p) => progress.push(p) });
    expect(r.files.sort()).toEqual(['config.json', 'model.safetensors', 'sub/tokenizer.model']);
    expect(fs.readFileSync(path.join(dest, 'model.safetensors')).equals(big)).toBe(true);
    expect(fs.readFileSync(path.join(dest, 'sub/tokenizer.model'), 'utf8')).toBe('sp');
    const ranged = log.filter((l) => l.url.endsWith('model.safetensors') && l.range);
    expect(ranged.length).toBe(1);
    const from = Number(/^bytes=(\d+)-$/.exec(ranged[0]!.range!)?.[1]);
    expect(from).toBeGreaterThan(0); // what arrived before the drop is kept, not fetched again
    expect(from).toBeLessThanOrEqual(100_000);
    const last = progress.at(-1)!;
    expect(last).toMatchObject({ bytes: big.length + config.length + 2, total: big.length + config.length + 2, filesDone: 3, filesTotal: 3 });
    expect(progress.some((p) => p.speed > 0)).toBe(true);
    expect(fs.readdirSync(dest).some((f) => f.endsWith('.part'))).toBe(false);
  });

  it('resumes a .part file left by an earlier session', async () => {
    const dest = path.join(tmp, 'resume');
    fs.mkdirSync(dest);
    fs.writeFileSync(path.join(dest, 'model.safetensors.part'), big.subarray(0, 123_456));
    log.length = 0;
    await downloadModel({ repo: 'org/tiny', endpoint, dest });
    expect(log.find((l) => l.url.endsWith('model.safetensors'))?.range).toBe('bytes=123456-');
    expect(fs.readFileSync(path.join(dest, 'model.safetensors')).equals(big)).toBe(true);
  });

  it('a checksum mismatch fails and leaves nothing under the final name', async () => {
    const dest = path.join(tmp, 'corrupt');
    await expect(downloadModel({ repo: 'org/corrupt', endpoint, dest })).rejects.toMatchObject({ code: 'CHECKSUM', message: expect.stringContaining('does not match') });
    expect(fs.readdirSync(dest)).toEqual([]);
  });

  it('a gated repository answers 401 without the token and downloads with it (Authorization: Bearer)', async () => {
    const dest = path.join(tmp, 'gated');
    await expect(downloadModel({ repo: 'org/gated', endpoint, dest, token: '' })).rejects.toMatchObject({ code: 'AUTH', hint: expect.stringContaining('token') });
    const r = await downloadModel({ repo: 'org/gated', endpoint, dest, token: 'good-token' });
    expect(r.files.length).toBe(3);
  });

  it('stops on abort, keeping the .part for a later resume', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(downloadModel({ repo: 'org/tiny', endpoint, dest: path.join(tmp, 'ab'), signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
  });
});

describe('the default file choice', () => {
  const files = (...paths: string[]) => paths.map((p) => ({ path: p, size: 1 }));
  const chosen = (list: { path: string; size: number }[]) => list.filter(defaultInclude(list)).map((f) => f.path);
  it("leaves out Meta's original/ folder and mistral-inference's consolidated weights beside HF-format safetensors", () => {
    // Llama-3.1-8B-Instruct's layout
    expect(chosen(files('config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json', 'tokenizer.json', 'original/consolidated.00.pth', 'original/params.json', 'original/tokenizer.model'))).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json', 'tokenizer.json']);
    // Mistral-7B-Instruct-v0.3's
    expect(chosen(files('config.json', 'consolidated.safetensors', 'params.json', 'model-00001-of-00003.safetensors', 'model.safetensors.index.json', 'tokenizer.model', 'tokenizer.model.v3'))).toEqual(['config.json', 'params.json', 'model-00001-of-00003.safetensors', 'model.safetensors.index.json', 'tokenizer.model', 'tokenizer.model.v3']);
    // a repository with only the original checkpoint keeps it (nothing else to load), and .bin beside safetensors goes
    expect(chosen(files('consolidated.safetensors', 'params.json'))).toEqual(['consolidated.safetensors', 'params.json']);
    expect(chosen(files('model.safetensors', 'pytorch_model.bin', 'flax_model.msgpack'))).toEqual(['model.safetensors']);
  });
});
