// Prompts against the model's context in predict, eval and training, through the built engine on the tiny demo
// model (a llama whose context, config.json max_position_embeddings, is 512 positions): a record whose prompt
// leaves no room for an answer is a bad record named by line before anything is generated (skipped with
// --on-error skip, the batch's other answers kept); one that fits but leaves less than max_new_tokens is answered,
// its answer stopping at the context, and counted; a run whose samples pass the context warns once (CLI and log).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { EngineHost } from '../../src-main/core/engine/host';
import { PredictError, predict } from '../../src-main/core/eval/predict';
import { evaluateCheckpoint } from '../../src-main/core/eval/service';
import { ensureDemoModel } from '../../src-main/core/runs/demo';
import { parseRunSpec } from '../../src-main/core/runs/runspec';
import { Store } from '../../src-main/core/store/store';
import { ROOT, runCli, tempHome } from '../helpers/app';

const CONTEXT = 512;
const SENTENCE = '病人咳嗽发热三天，伴有头痛和乏力，应该去哪个科室就诊？请详细说明理由。';
const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');
let home: string;
let model: string;
let host: EngineHost;
let data: string;
let nearLength = 0;

const prompt = (text: string) => ({ model, messages: [{ role: 'user' as const, content: text }], template: 'raw' as const, maxSourceLength: 2000 });

beforeAll(async () => {
  home = tempHome('llmt-pctx-');
  model = ensureDemoModel(home);
  host = new EngineHost();
  // a question whose prompt leaves 1–3 positions of the context: its answer stops there
  const full = `近：${SENTENCE.repeat(20)}`;
  const lengthOf = async (n: number) => (await host.promptLengths([prompt(full.slice(0, n))]))[0] as number;
  let lo = 1;
  let hi = full.length; // lengthOf(lo) < CONTEXT - 3 <= lengthOf(hi)
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if ((await lengthOf(mid)) >= CONTEXT - 3) hi = mid;
    else lo = mid;
  }
  const near = full.slice(0, hi);
  nearLength = await lengthOf(hi);
  expect(nearLength).toBeGreaterThanOrEqual(CONTEXT - 3);
  expect(nearLength).toBeLessThan(CONTEXT);
  data = path.join(home, 'test.jsonl');
  fs.writeFileSync(
    data,
    [
      { input: '头痛怎么办？', target: 'a' },
      { input: `长：${SENTENCE.repeat(20)}`, target: 'b' },
      { input: near, target: 'c' },
      { input: '发热怎么办？', target: 'd' },
    ]
      .map((r) => JSON.stringify(r))
      .join('\n'),
  );
});

afterAll(async () => {
  await host?.dispose();
  fs.rmSync(home, { recursive: true, force: true });
});

describe('predict against the context', () => {
  const params = { max_new_tokens: 16, do_sample: false };

  it('names the record whose prompt leaves no room, with the numbers and a hint, before generating anything', async () => {
    const out = path.join(home, 'fail.jsonl');
    const err = (await predict({ model, data, out, host, maxSourceLength: 2000, params, batchSize: 4 }).catch((e: unknown) => e)) as PredictError;
    expect(err).toBeInstanceOf(PredictError);
    expect(err.code).toBe('BAD_INPUT');
    expect(err.errors).toHaveLength(1);
    expect(err.errors[0]).toMatchObject({ line: 2 });
    expect(err.errors[0]!.reason).toMatch(/^the prompt is \d+ tokens \(after the template and the max_source_length 2000 cut\), which is longer than the model's context of 512 tokens and leaves no room for an answer$/);
    expect(err.message).toMatch(/^1 bad record\(s\) in .*test\.jsonl:\n {2}.*test\.jsonl:2: the prompt is/);
    expect(err.hint).toMatch(/--max_source_length.*--on-error skip/);
    expect(fs.existsSync(out) || fs.existsSync(`${out}.partial`)).toBe(false);
  });

  it('a max_source_length cut that fits the context makes the record good', async () => {
    const r = await predict({ model, data, out: path.join(home, 'cut.jsonl'), host, maxSourceLength: 200, params, batchSize: 4 });
    expect(r).toMatchObject({ written: 4, skipped: 0, context: CONTEXT });
  });

  it('--on-error skip: the record is left out, the batch\'s other answers kept; an answer that reaches the context is counted', async () => {
    const out = path.join(home, 'skip.jsonl');
    const r = await predict({ model, data, out, host, maxSourceLength: 2000, params, batchSize: 4, onError: 'skip' });
    expect(r).toMatchObject({ written: 3, skipped: 1, context: CONTEXT, contextStops: 1 });
    expect(r.errors.map((e) => e.line)).toEqual([2]);
    const lines = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { input: string; target: string });
    expect(lines.map((l) => l.input.slice(0, 2))).toEqual(['头痛', '近：', '发热']);
    expect(r.finish.length).toBeGreaterThanOrEqual(1);
  });

  it('the CLI: the bad record by line with the hint; with skip, the summary counts both', async () => {
    const base = ['predict', '--model', model, '--data', data, '--max_source_length', '2000', '--max_new_tokens', '16', '--do_sample', 'false', '--batch_size', '4'];
    const bad = await runCli([...base, '--out', path.join(home, 'cli-fail.jsonl')], { home, timeoutMs: 120_000 });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/1 bad record\(s\) in .*test\.jsonl:\n {2}.*test\.jsonl:2: the prompt is \d+ tokens \(after the template and the max_source_length 2000 cut\), which is longer than the model's context of 512 tokens/);
    expect(bad.stderr).toMatch(/hint: The model's context holds 512 tokens/);
    const ok = await runCli([...base, '--out', path.join(home, 'cli-skip.jsonl'), '--on-error', 'skip'], { home, timeoutMs: 120_000 });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/skipped 1 bad record\(s\): line 2: the prompt is \d+ tokens/);
    expect(ok.stdout).toMatch(/wrote 3 prediction\(s\)/);
    expect(ok.stdout).toMatch(/1 answer stopped at the model's context \(512 tokens, prompt and answer together\) before max_new_tokens/);
  });
});

describe("a run's evaluation against the context", () => {
  it('fails naming the record (the app\'s evaluate), or skips it: scored without it, the context stops stored and printed', async () => {
    const store = Store.open(path.join(home, 'llms-train.db'));
    try {
      const spec = parseRunSpec({ model: { path: model }, data: { train: data, max_source_length: 2000, max_target_length: 16 }, output: { dir: path.join(home, 'run') } });
      const run = store.runs.create({ name: 'ctx', spec, specVersion: 1, outputDir: path.join(home, 'run') });
      // the model folder itself as the "checkpoint" (a full fine-tune's layout)
      const opts = { runId: run.id, checkpointPath: model, data, loss: false, host, params: { do_sample: false } };
      await expect(evaluateCheckpoint(store, opts)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/test\.jsonl:2: the prompt is \d+ tokens .* longer than the model's context of 512 tokens/), hint: expect.stringMatching(/max_source_length/) });
      const e = await evaluateCheckpoint(store, { ...opts, onError: 'skip' });
      expect(e.generation).toEqual({ written: 3, skipped: 1, contextStops: 1, context: CONTEXT });
      expect(e.report!.overall.count).toBe(3);
      const c = await runCli(['eval', '--run', String(run.id), '--checkpoint', model, '--data', data, '--no-loss', '--do_sample', 'false', '--on-error', 'skip'], { home, timeoutMs: 120_000 });
      expect(c.code, c.stderr).toBe(0);
      expect(c.stdout).toMatch(/1 bad record\(s\) skipped \(--on-error skip\): not predicted, not scored/);
      expect(c.stdout).toMatch(/1 answer stopped at the model's context \(512 tokens, prompt and answer together\) before max_new_tokens/);
    } finally {
      store.close();
    }
  });
});

describe('training past the context', () => {
  it('warns once, on the CLI and in the run log, and trains', async () => {
    const tmp = tempHome('llmt-pctx-train-');
    try {
      const tiny = path.join(tmp, 'model');
      expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', tiny]).status).toBe(0);
      const train = path.join(tmp, 'train.jsonl');
      fs.writeFileSync(train, [`${'abc def '.repeat(300)}`, '短的问题'].map((q, i) => JSON.stringify({ input: q, target: `答 ${i}` })).join('\n'));
      const out = path.join(tmp, 'out');
      const r = await runCli(
        ['train', '--model_name_or_path', tiny, '--train_file', train, '--output_dir', out, '--max_source_length', '1000', '--max_target_length', '8',
          '--per_device_train_batch_size', '2', '--max_steps', '1', '--logging_steps', '1', '--save_steps', '100', '--device', 'cpu'],
        { home: tmp, timeoutMs: 180_000 },
      );
      expect(r.code, r.stderr).toBe(0);
      const warned = r.stderr.match(/warning: the longest prepared sample is \d+ tokens, longer than the model's context of 512 tokens \(max_source_length 1000 \+ max_target_length 8 = 1008 tokens\)\. The tokens past it are trained anyway/g);
      expect(warned).toHaveLength(1);
      const log = fs.readdirSync(out).find((n) => /^train-\d+\.log$/.test(n))!;
      const events = fs.readFileSync(path.join(out, log), 'utf8').split('\n').filter((l) => l.includes('"PAST_CONTEXT"'));
      expect(events).toHaveLength(1);
      expect(JSON.parse(events[0]!)).toMatchObject({ event: 'warning', code: 'PAST_CONTEXT', message: expect.stringMatching(/longer than the model's context of 512 tokens/) });
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
