// Outputs and inputs the app must guard: export targets, shared output folders, HTTP statuses, readable
// validation errors and binary/empty datasets — the parts that need no engine.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Dispatcher, type Handlers } from '../../src-main/api/dispatcher';
import { httpStatusFor } from '../../src-main/api/errors';
import { methodNames } from '../../src-main/api/contract';
import { detectFileKind } from '../../src-main/core/data/reader';
import { previewDataset } from '../../src-main/core/data/preview';
import { checkExportTarget } from '../../src-main/core/models/manager';
import { parseRunSpec } from '../../src-main/core/runs/runspec';
import { resumeMismatch, RunService, runLogToRead, runsUsingFolder } from '../../src-main/core/runs/service';
import { Store } from '../../src-main/core/store/store';

let tmp: string;
const t = (...p: string[]) => path.join(tmp, ...p);

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-outputs-'));
  fs.mkdirSync(t('model'));
  fs.writeFileSync(t('model', 'config.json'), '{"model_type":"llama"}');
  fs.writeFileSync(t('model', 'model.safetensors'), 'weights');
  fs.mkdirSync(t('adapter'));
  fs.writeFileSync(t('adapter', 'adapter_config.json'), '{}');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('the export target is checked before anything is written', () => {
  it('never a file inside the model or adapter folder, nor the folder itself, even with overwrite', () => {
    for (const overwrite of [false, true]) {
      expect(() => checkExportTarget({ model: t('model'), out: t('model', 'model.safetensors'), overwrite })).toThrow(/inside the model folder/);
      expect(() => checkExportTarget({ model: t('model'), out: t('model', 'new.gguf'), overwrite })).toThrow(/inside the model folder/);
      expect(() => checkExportTarget({ model: t('model'), out: t('model'), overwrite })).toThrow(/is the model folder itself/);
      expect(() => checkExportTarget({ model: t('model'), adapter: t('adapter'), out: t('adapter', 'a.gguf'), overwrite })).toThrow(/inside the adapter folder/);
    }
    expect(fs.readFileSync(t('model', 'model.safetensors'), 'utf8')).toBe('weights');
  });

  it('a folder as the output is refused with a file name to use instead (was EISDIR on rename)', () => {
    fs.mkdirSync(t('outdir'), { recursive: true });
    let err: (Error & { code?: string }) | undefined;
    try {
      checkExportTarget({ model: t('model'), out: t('outdir'), overwrite: true });
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err?.code).toBe('BAD_INPUT');
    expect(err?.message).toBe(`${t('outdir')} is a folder; give a file name such as ${t('outdir', 'model.gguf')}`);
  });

  it('an existing .gguf or .Modelfile is EXISTS unless overwrite', () => {
    fs.writeFileSync(t('old.gguf'), 'x');
    expect(() => checkExportTarget({ model: t('model'), out: t('old.gguf') })).toThrow(expect.objectContaining({ code: 'EXISTS', message: expect.stringContaining('old.gguf already exists') }));
    expect(() => checkExportTarget({ model: t('model'), out: t('old.gguf'), overwrite: true })).not.toThrow();
    fs.writeFileSync(t('new.Modelfile'), 'x');
    // the Modelfile counts only where one is written (a template with an export layout, not adapter-only)
    expect(() => checkExportTarget({ model: t('model'), out: t('new.gguf'), template: 'alpaca' })).toThrow(expect.objectContaining({ code: 'EXISTS', message: expect.stringContaining('new.Modelfile') }));
    expect(() => checkExportTarget({ model: t('model'), out: t('new.gguf') })).not.toThrow();
    expect(() => checkExportTarget({ model: t('model'), out: t('fresh.gguf'), template: 'alpaca' })).not.toThrow();
  });
});

describe('user-input errors are 4xx', () => {
  it('maps the codes', () => {
    expect(httpStatusFor('EXISTS')).toBe(409);
    expect(httpStatusFor('IO')).toBe(422);
    expect(httpStatusFor('BAD_INPUT')).toBe(400);
    expect(httpStatusFor('NOT_FOUND')).toBe(404);
    expect(httpStatusFor('HTTP')).toBe(502);
    expect(httpStatusFor('INTERNAL')).toBe(500);
    expect(httpStatusFor('OOM')).toBe(500);
  });
});

describe('validation errors in words', () => {
  const handlers = () => Object.fromEntries(methodNames.map((m) => [m, () => ({})])) as unknown as Handlers;
  it('no method name, the UI/CLI field name, no zod wording; fields keep the API path', async () => {
    const d = new Dispatcher(handlers());
    const r = await d.call('previewDataset', { path: '/x.json', maxSourceLength: 1 });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error.message).toBe('Invalid request: max_source_length must be at least 2');
    expect(r.error.fields).toEqual([{ path: 'maxSourceLength', message: 'must be at least 2' }]);
    const c = await d.call('createChatSession', { model: '/m', params: { max_new_tokens: null } });
    expect(!c.ok && c.error.message).toBe('Invalid request: max_new_tokens must be a number (got null)');
    const big = await d.call('listRuns', { limit: 1e20 });
    expect(!big.ok && big.error.message).toMatch(/^Invalid request: limit must be at most 10000$/);
    const extra = await d.call('getRun', { id: 1, bogus: 1 });
    expect(!extra.ok && extra.error.message).toBe('Invalid request: unknown field(s): bogus');
  });
});

describe('binary and empty datasets', () => {
  it('a binary file is refused, naming the file', async () => {
    const f = t('model.safetensors');
    const buf = Buffer.alloc(2000, 0x41);
    buf.writeBigUInt64LE(123n, 0); // a safetensors header length: NUL bytes
    fs.writeFileSync(f, buf);
    await expect(detectFileKind(f)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining(`${f} is not a text dataset`) });
    await expect(previewDataset({ file: f })).rejects.toThrow(/binary content \(a NUL byte at offset 1 in its first 64 KiB\)/);
    // a Latin-1 file (mostly not UTF-8) is refused; one stray byte in UTF-8 text is not binary: its line is named
    const latin1 = t('latin1.txt');
    fs.writeFileSync(latin1, Buffer.from(Array.from({ length: 200 }, (_, i) => (i % 10 === 9 ? 0x0a : i % 2 ? 0xe9 : 0x61))));
    await expect(detectFileKind(latin1)).rejects.toThrow(/not UTF-8/);
    const stray = t('stray.txt');
    fs.writeFileSync(stray, Buffer.concat([Buffer.from('line one\n'), Buffer.from([0x61, 0xe9, 0x62, 0x0a]), Buffer.from('line three\n')]));
    expect(await detectFileKind(stray)).toBe('text');
    // U+FFFD written as text (a model's undecodable bytes in predictions) is valid UTF-8, not binary
    const fffd = t('fffd.jsonl');
    fs.writeFileSync(fffd, `${JSON.stringify({ target: '\ufffd'.repeat(300) })}\n`);
    expect(await detectFileKind(fffd)).toBe('jsonl');
  });

  it('UTF-8 text (a multi-byte character cut at the sniff boundary too) is accepted; empty files have 0 records', async () => {
    const f = t('zh.jsonl');
    const line = JSON.stringify({ instruction: '你好'.repeat(10), output: '好' }) + '\n';
    fs.writeFileSync(f, line.repeat(2000));
    expect(await detectFileKind(f)).toBe('jsonl');
    fs.writeFileSync(t('empty.json'), '[]');
    fs.writeFileSync(t('zero.json'), '');
    expect((await previewDataset({ file: t('empty.json') })).records).toBe(0);
    expect((await previewDataset({ file: t('zero.json') })).records).toBe(0);
  });
});

describe('output folders shared between runs', () => {
  let store: Store;
  const spec = (extra: Record<string, unknown> = {}) => parseRunSpec({ model: { path: t('model') }, data: { train: '/t.json' }, output: { dir: t('runs', 'lora1') }, ...extra });
  beforeAll(() => {
    store = Store.open(t('db.sqlite'));
  });
  afterAll(() => store.close());

  it('the app refuses another recorded run\'s folder (naming it) unless the new run resumes; the CLI shares it while that run is idle', () => {
    const svc = new RunService(store);
    const first = store.runs.create({ name: 'lora1', spec: spec(), specVersion: 1, outputDir: t('runs', 'lora1'), ownerPid: null });
    store.runs.finish(first.id, 'completed', {});
    expect(() => svc.checkOutputFolder(spec(), { exclusiveOutput: true })).toThrow(expect.objectContaining({ code: 'CONFLICT', message: expect.stringContaining(`run #${first.id} (lora1, completed)`) }));
    expect(() => svc.checkOutputFolder(spec({ output: { dir: t('runs', 'lora1'), overwrite: true } }), { exclusiveOutput: true })).toThrow(/run #1/);
    expect(() => svc.checkOutputFolder(spec({ resume_from: 'latest' }), { exclusiveOutput: true })).not.toThrow();
    expect(() => svc.checkOutputFolder(spec(), { exclusiveOutput: true, runId: first.id })).not.toThrow(); // resuming that same run
    expect(() => svc.checkOutputFolder(spec())).not.toThrow(); // the CLI's HF flow: a new row per invocation
    expect(() => svc.checkOutputFolder(spec({ output: { dir: t('runs', 'other') } }), { exclusiveOutput: true })).not.toThrow();
    // a live run's folder: refused for everyone
    const live = store.runs.create({ name: 'live', spec: spec({ output: { dir: t('runs', 'live') } }), specVersion: 1, outputDir: t('runs', 'live') });
    store.runs.markRunning(live.id, process.pid);
    expect(() => svc.checkOutputFolder(spec({ output: { dir: t('runs', 'live') }, resume_from: 'latest' }))).toThrow(/in use by run #\d+ \(live, running\)/);
  });

  it('runsUsingFolder finds the same folder, and with nested a folder inside or above', () => {
    expect(runsUsingFolder(store, t('runs', 'lora1')).map((r) => r.name)).toEqual(['lora1']);
    expect(runsUsingFolder(store, t('runs')).length).toBe(0);
    expect(runsUsingFolder(store, t('runs'), undefined, true).map((r) => r.name).sort()).toEqual(['live', 'lora1']);
    expect(runsUsingFolder(store, t('runs', 'lora1', 'sub'), undefined, true).map((r) => r.name)).toEqual(['lora1']);
  });

  it('the log read for a run: its own train-<id>.log, else the old shared train.log', () => {
    const dir = t('logs');
    fs.mkdirSync(dir, { recursive: true });
    expect(runLogToRead(dir, 3)).toBe(path.join(dir, 'train.log'));
    fs.writeFileSync(path.join(dir, 'train-3.log'), 'x\n');
    expect(runLogToRead(dir, 3)).toBe(path.join(dir, 'train-3.log'));
  });

  it('resumeMismatch names what differs between a checkpoint and the new settings', () => {
    const ck = t('runs', 'lora1', 'checkpoint-60');
    fs.mkdirSync(ck, { recursive: true });
    fs.writeFileSync(path.join(ck, 'adapter_config.json'), JSON.stringify({ r: 8, target_modules: ['q_proj', 'v_proj'] }));
    fs.writeFileSync(t('runs', 'lora1', 'runspec.json'), JSON.stringify({ method: 'lora', model: { quantization: 'none' } }));
    expect(resumeMismatch(spec({ lora: { r: 8, target_modules: ['v_proj', 'q_proj'] } }), ck)).toEqual([]);
    const diff = resumeMismatch(spec({ lora: { r: 16, target_modules: ['q_proj'] }, model: { path: t('model'), quantization: 'nf4' } }), ck);
    expect(diff.join('; ')).toMatch(/LoRA r is 8 there, 16 here/);
    expect(diff.join('; ')).toMatch(/target modules are q_proj, v_proj there, q_proj here/);
    expect(diff.join('; ')).toMatch(/quantization none, this one nf4/);
    expect(resumeMismatch(spec({ method: 'full' }), ck).join()).toMatch(/LoRA adapter but this run is a full fine-tune/);
  });
});
