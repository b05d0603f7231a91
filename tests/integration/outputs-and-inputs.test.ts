// Through the real export and the API: a model's own weights are never overwritten,
// export into a folder leaves no temp file, a run's folder shared with another run is never deleted,
// binary and empty datasets.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Core } from '../../src-main/core/core';
import { exportModel } from '../../src-main/core/models/manager';
import { parseRunSpec } from '../../src-main/core/runs/runspec';
import { ENGINE } from '../helpers/native';

let tmp: string;
const t = (...p: string[]) => path.join(tmp, ...p);
let core: Core;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-outputs-int-'));
  const r = spawnSync(ENGINE, ['create-tiny', '--family', 'demo', '--out', t('tiny'), '--seed', '1'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  core = new Core({ home: t('home'), mode: 'browser', statusIntervalMs: 0, runsPollMs: 0, metricsPushMs: 0 });
});
afterAll(() => {
  core?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const leftovers = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.tmp') || f.startsWith('.llmt-export-'));

describe('GGUF export targets', () => {
  it("refuses the model's own model.safetensors, even with overwrite, and leaves it intact", async () => {
    const before = fs.readFileSync(t('tiny', 'model.safetensors'));
    const files = fs.readdirSync(t('tiny')).sort();
    for (const overwrite of [false, true])
      await expect(exportModel({ model: t('tiny'), out: t('tiny', 'model.safetensors'), dtype: 'f32', overwrite })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('inside the model folder') });
    expect(fs.readFileSync(t('tiny', 'model.safetensors')).equals(before)).toBe(true);
    expect(fs.readdirSync(t('tiny')).sort()).toEqual(files);
  });

  it('an existing .gguf is EXISTS (HTTP 409 through the API) until overwrite is asked; the Modelfile too', async () => {
    const out = t('exp', 'tiny.gguf');
    const first = await exportModel({ model: t('tiny'), out, dtype: 'f32', template: 'alpaca' });
    expect(first.modelfile).toBe(t('exp', 'tiny.Modelfile'));
    const stamp = fs.statSync(out).mtimeMs;
    const r = await core.dispatcher.call('exportGguf', { opId: 'x1', model: t('tiny'), out, dtype: 'f32', template: 'alpaca' });
    expect(r).toMatchObject({ ok: false, error: { code: 'EXISTS', message: expect.stringContaining(`${out} and ${t('exp', 'tiny.Modelfile')} already exist`) } });
    expect(fs.statSync(out).mtimeMs).toBe(stamp);
    fs.rmSync(out);
    const onlyModelfile = await core.dispatcher.call('exportGguf', { opId: 'x2', model: t('tiny'), out, dtype: 'f32', template: 'alpaca' });
    expect(onlyModelfile).toMatchObject({ ok: false, error: { code: 'EXISTS' } });
    const again = await core.dispatcher.call('exportGguf', { opId: 'x3', model: t('tiny'), out, dtype: 'f32', template: 'alpaca', overwrite: true });
    expect(again).toMatchObject({ ok: true, result: { out } });
    expect(leftovers(t('exp'))).toEqual([]);
  });

  it('export into an existing folder: a plain message before writing, no <out>.tmp left', async () => {
    fs.mkdirSync(t('dir-out'), { recursive: true });
    const r = await core.dispatcher.call('exportGguf', { opId: 'x4', model: t('tiny'), out: t('dir-out'), dtype: 'f32' });
    expect(r).toMatchObject({ ok: false, error: { code: 'BAD_INPUT', message: `${t('dir-out')} is a folder; give a file name such as ${t('dir-out', 'model.gguf')}` } });
    expect(leftovers(tmp)).toEqual([]);
    expect(fs.readdirSync(t('dir-out'))).toEqual([]);
  });
});

describe('runs sharing an output folder', () => {
  it('deleteRun with deleteFiles never deletes a folder another run uses; a vanished checkpoint is listed as missing', async () => {
    const dir = t('runs', 'lora1');
    fs.mkdirSync(path.join(dir, 'checkpoint-2'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'runspec.json'), '{}');
    fs.writeFileSync(path.join(dir, 'adapter_model.safetensors'), 'x');
    const spec = parseRunSpec({ model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir } });
    const done = core.store.runs.create({ name: 'lora1', spec, specVersion: 1, outputDir: dir, ownerPid: null });
    core.store.runs.finish(done.id, 'completed', {});
    core.store.checkpoints.add({ runId: done.id, step: 2, path: path.join(dir, 'checkpoint-2'), sizeBytes: 1, isFinal: false });
    const failed = core.store.runs.create({ name: 'again', spec, specVersion: 1, outputDir: dir, ownerPid: null });
    core.store.runs.finish(failed.id, 'failed', { errorCode: 'BAD_INPUT', errorMessage: 'x' });
    const r = await core.dispatcher.call('deleteRun', { id: failed.id, deleteFiles: true });
    expect(r).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringContaining(`run #${done.id} (lora1, completed)`) } });
    expect(fs.existsSync(path.join(dir, 'adapter_model.safetensors'))).toBe(true);
    // a run in a folder above another run's is not deleted with its folder either
    const parent = core.store.runs.create({ name: 'parent', spec, specVersion: 1, outputDir: t('runs'), ownerPid: null });
    core.store.runs.finish(parent.id, 'failed', {});
    fs.writeFileSync(t('runs', 'runspec.json'), '{}');
    expect(await core.dispatcher.call('deleteRun', { id: parent.id, deleteFiles: true })).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
    expect(fs.existsSync(dir)).toBe(true);
    // without the files, the row goes
    expect(await core.dispatcher.call('deleteRun', { id: failed.id, deleteFiles: false })).toMatchObject({ ok: true });
    // the starting of a new run into that folder is refused by the API, naming the run
    const start = await core.dispatcher.call('startRun', { spec: { model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir } } });
    expect(start).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringContaining(`run #${done.id} (lora1, completed)`) } });
    const plan = await core.dispatcher.call('planRun', { spec: { model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir } } });
    expect(plan.ok && (plan.result as { blocked: string | null }).blocked).toMatch(new RegExp(`run #${done.id} \\(lora1.*starting will be refused`));
    fs.rmSync(path.join(dir, 'checkpoint-2'), { recursive: true });
    const cks = await core.dispatcher.call('listCheckpoints', { id: done.id });
    expect(cks.ok).toBe(true);
    expect(((cks as { result: unknown }).result as { missing: boolean }[])[0]!.missing).toBe(true);
  });

  it('deleteRun with deleteFiles removes only what runs write: a base model, notes and a data/ of the user beside them stay, and are named', async () => {
    // a LoRA run whose output folder is a copy of its base model (the adapter beside the weights), with the user's notes
    const dir = t('del', 'beside-model');
    fs.cpSync(t('tiny'), dir, { recursive: true });
    const model = fs.readdirSync(dir).sort();
    fs.writeFileSync(path.join(dir, 'NOTES.txt'), 'mine');
    fs.mkdirSync(path.join(dir, 'data'));
    fs.writeFileSync(path.join(dir, 'data', 'my.json'), '{}');
    for (const f of ['runspec.json', 'job.json', 'train-99.log', 'adapter_config.json', 'adapter_model.safetensors', 'data/train.tok', 'data/eval.tok', 'checkpoint-2/adapter_model.safetensors', 'checkpoint-4.tmp-999999999/adapter_model.safetensors']) {
      fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
      fs.writeFileSync(path.join(dir, f), f === 'runspec.json' ? JSON.stringify({ method: 'lora', model: { path: dir } }) : 'x');
    }
    const spec = parseRunSpec({ model: { path: dir }, data: { train: '/t.json' }, output: { dir } });
    const run = core.store.runs.create({ name: 'beside', spec, specVersion: 1, outputDir: dir, ownerPid: null });
    core.store.runs.finish(run.id, 'completed', {});
    const r = await core.dispatcher.call('deleteRun', { id: run.id, deleteFiles: true });
    expect(r).toMatchObject({ ok: true, result: { filesRemoved: true, keptFiles: [...model, 'NOTES.txt', 'data'].sort() } });
    expect(fs.readdirSync(dir).sort()).toEqual([...model, 'NOTES.txt', 'data'].sort());
    expect(fs.readdirSync(path.join(dir, 'data'))).toEqual(['my.json']);
    expect(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(fs.readFileSync(t('tiny', 'model.safetensors')))).toBe(true);

    // a full fine-tune's own folder: everything in it is the run's (its saved model and the tokenizer it copied), so it goes
    const full = t('del', 'full1');
    fs.mkdirSync(path.join(full, 'checkpoint-2'), { recursive: true });
    fs.writeFileSync(path.join(full, 'runspec.json'), JSON.stringify({ method: 'full', model: { path: t('tiny') } }));
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'train-5.log', 'checkpoint-2/model.safetensors'])
      fs.writeFileSync(path.join(full, f), 'x');
    const fr = core.store.runs.create({ name: 'full1', spec: parseRunSpec({ method: 'full', model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir: full } }), specVersion: 1, outputDir: full, ownerPid: null });
    core.store.runs.finish(fr.id, 'completed', {});
    expect(await core.dispatcher.call('deleteRun', { id: fr.id, deleteFiles: true })).toEqual({ ok: true, result: { id: fr.id, filesRemoved: true } });
    expect(fs.existsSync(full)).toBe(false);
  });

  it("refuses an output folder that is a file, and a full fine-tune into its base model's folder (planRun and startRun)", async () => {
    fs.mkdirSync(t('runs'), { recursive: true });
    fs.writeFileSync(t('runs', 'a-file'), 'x');
    for (const call of ['planRun', 'startRun'] as const) {
      const file = await core.dispatcher.call(call, { spec: { model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir: t('runs', 'a-file') } } });
      expect(file).toMatchObject({ ok: false, error: { code: 'IO', message: expect.stringContaining('is a file, not a folder') } });
      const own = await core.dispatcher.call(call, { spec: { method: 'full', model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir: t('tiny'), overwrite: true } } });
      expect(own).toMatchObject({ ok: false, error: { code: 'BAD_INPUT', message: expect.stringContaining("the base model's own folder") } });
    }
  });

  it("getRunLog reads the run's own log, else the old train.log", async () => {
    const dir = t('runs', 'logs');
    fs.mkdirSync(dir, { recursive: true });
    const spec = parseRunSpec({ model: { path: t('tiny') }, data: { train: '/t.json' }, output: { dir } });
    const a = core.store.runs.create({ name: 'a', spec, specVersion: 1, outputDir: dir, ownerPid: null });
    const b = core.store.runs.create({ name: 'b', spec, specVersion: 1, outputDir: dir, ownerPid: null });
    fs.writeFileSync(path.join(dir, 'train.log'), 'old line\n');
    fs.writeFileSync(path.join(dir, `train-${b.id}.log`), 'b line\n');
    expect(await core.dispatcher.call('getRunLog', { id: a.id })).toEqual({ ok: true, result: { lines: ['old line'] } });
    expect(await core.dispatcher.call('getRunLog', { id: b.id })).toEqual({ ok: true, result: { lines: ['b line'] } });
  });
});

describe('datasets', () => {
  it('a binary file is refused by addDataset and the preview; an empty one is added with a warning', async () => {
    const bin = await core.dispatcher.call('addDataset', { path: t('tiny', 'model.safetensors') });
    expect(bin).toMatchObject({ ok: false, error: { code: 'BAD_INPUT', message: expect.stringContaining(`${t('tiny', 'model.safetensors')} is not a text dataset`) } });
    expect(await core.dispatcher.call('previewDataset', { path: t('tiny', 'model.safetensors') })).toMatchObject({ ok: false, error: { code: 'BAD_INPUT' } });
    fs.writeFileSync(t('empty.json'), '[]');
    fs.writeFileSync(t('zero.json'), '');
    for (const f of ['empty.json', 'zero.json']) {
      const r = await core.dispatcher.call('addDataset', { path: t(f) });
      expect(r).toMatchObject({ ok: true, result: { records: 0, warning: expect.stringContaining('holds no records') } });
    }
  });
});
