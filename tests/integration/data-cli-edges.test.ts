// The dataset commands (`data prepare`, `predict`, `eval --model`) at their edges, through the CLI as a user runs
// them: a file whose every record is unreadable names those records (not "holds no records"); outputs that would
// overwrite the data, or each other, or that are folders, are refused before any record is read; a folder given as
// the dataset is said so; Ctrl-C while tokenizing leaves nothing behind; a closed pipe is no stack trace; predict and
// the loss read columns as train does; a multi-file report names the file of each skipped record.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CLI, runCli } from '../helpers/app';
import { ENGINE } from '../helpers/native';

let tmp: string;
let model: string;
const t = (...p: string[]) => path.join(tmp, ...p);
const home = () => t('home');

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-data-edges-'));
  model = t('tiny');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
  fs.writeFileSync(t('pc.jsonl'), Array.from({ length: 40 }, (_, i) => JSON.stringify({ input: `问题 ${i}`, target: `答 ${i % 3}` })).join('\n') + '\n');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const prepare = (args: string[]) => runCli(['data', 'prepare', '--model', model, ...args], { home: home() });

describe('unreadable records and wrong paths', () => {
  it('a file whose every record is unreadable lists them (prepare and predict), not "holds no records"', async () => {
    fs.writeFileSync(t('py.jsonl'), "{'input': 'a', 'target': 'b'}\n{'input': 'c', 'target': 'd'}\n");
    const r = await prepare(['--data', t('py.jsonl'), '--out', t('py.tok')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no record of .*py\.jsonl could be read; 2 bad record\(s\):\n {2}.*py\.jsonl:1: invalid JSON.*\n {2}.*py\.jsonl:2: invalid JSON/);
    expect(r.stderr).toMatch(/hint: .*double quotes/);
    const skip = await prepare(['--data', t('py.jsonl'), '--out', t('py.tok'), '--on-error', 'skip']);
    expect(skip.stderr).toMatch(/no record of .*could be read/);
    const p = await runCli(['predict', '--model', model, '--data', t('py.jsonl'), '--out', t('py.pred.jsonl')], { home: home() });
    expect(p.code).toBe(1);
    expect(p.stderr).toMatch(/2 bad record\(s\) in .*py\.jsonl:\n {2}.*:1: invalid JSON/);
    expect(fs.existsSync(t('py.tok'))).toBe(false);
  });

  it('refuses outputs that are the dataset, each other, or a folder, and a bad share — before reading, writing nothing', async () => {
    fs.copyFileSync(t('pc.jsonl'), t('mine.jsonl'));
    const before = fs.readFileSync(t('mine.jsonl'));
    const same = await prepare(['--data', t('mine.jsonl'), '--out', t('mine.jsonl')]);
    expect(same.stderr).toMatch(/the output .*mine\.jsonl \(--out\) is the dataset .*mine\.jsonl itself/);
    const both = await prepare(['--data', t('pc.jsonl'), '--out', t('both.tok'), '--validation-out', t('both.tok')]);
    expect(both.stderr).toMatch(/the validation split and the training data would both be written to .*both\.tok/);
    fs.mkdirSync(t('outdir'));
    const dir = await prepare(['--data', t('pc.jsonl'), '--out', t('outdir')]);
    expect(dir.stderr).toMatch(/outdir is a folder; the output \(--out\) is a \.tok file/);
    for (const pct of ['abc', '0', '100', '-5']) {
      const r = await prepare(['--data', t('pc.jsonl'), '--out', t('vp.tok'), '--validation-out', t('vp.val.tok'), '--validation-percent', pct]);
      expect(r.code, pct).toBe(1);
      expect(r.stderr, pct).toMatch(/the validation share must be a percentage above 0 and below 100/);
    }
    const pred = await runCli(['predict', '--model', model, '--data', t('mine.jsonl'), '--out', t('mine.jsonl'), '--max_new_tokens', '2'], { home: home() });
    expect(pred.stderr).toMatch(/--out .*mine\.jsonl is the test file itself/);
    const predDir = await runCli(['predict', '--model', model, '--data', t('pc.jsonl'), '--out', t('outdir'), '--max_new_tokens', '2'], { home: home() });
    expect(predDir.stderr).toMatch(/outdir is a folder; --out is the predictions file/);
    for (const r of [same, both, dir, pred, predDir]) expect(r.code).toBe(1);
    expect(fs.readFileSync(t('mine.jsonl')).equals(before)).toBe(true);
    expect(fs.readdirSync(tmp).filter((n) => /both|vp|\.partial|\.tmp/.test(n))).toEqual([]);
    expect(fs.readdirSync(t('outdir'))).toEqual([]);
  });

  it('a folder given as the dataset (or as a .tok file) is said so', async () => {
    fs.mkdirSync(t('adir.jsonl'));
    const r = await prepare(['--data', t('adir.jsonl'), '--out', t('x.tok')]);
    expect(r.stderr).toMatch(/the dataset .*adir\.jsonl is a folder, not a data file\nhint: Give the JSON\/JSONL\/CSV file inside it/);
    const p = await runCli(['predict', '--model', model, '--data', t('adir.jsonl'), '--out', t('x.jsonl')], { home: home() });
    expect(p.stderr).toMatch(/is a folder, not a data file/);
    const s = await runCli(['data', 'stats', t('adir.jsonl')], { home: home() });
    expect(s.stderr).toMatch(/adir\.jsonl is a folder, not a \.tok file/);
    for (const x of [r, p, s]) expect(x.stderr).not.toMatch(/EISDIR|    at /);
  });
});

describe('an adapter where the model goes', () => {
  it('predict, eval --model and chat name it as an adapter for its base model, before any prompt', async () => {
    const ad = t('an-adapter');
    fs.mkdirSync(ad);
    fs.writeFileSync(path.join(ad, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', base_model_name_or_path: model, r: 4, lora_alpha: 8, target_modules: ['q_proj'] }));
    fs.writeFileSync(path.join(ad, 'adapter_model.safetensors'), '');
    const want = new RegExp(`${ad} is a PEFT adapter for ${model}, not a model folder\\nhint: Give it as the adapter \\(--adapter ${ad}\\) and its base model \\(${model}\\) as the model \\(--model\\)`);
    const p = await runCli(['predict', '--model', ad, '--data', t('pc.jsonl'), '--out', t('ad.jsonl')], { home: home() });
    const e = await runCli(['eval', '--model', ad, '--data', t('pc.jsonl')], { home: home() });
    const c = await runCli(['chat', '--model', ad], { home: home() });
    for (const r of [p, e, c]) {
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(want);
    }
    expect(c.stdout).not.toMatch(/^chat with/m);
  });
});

describe('interrupts and pipes', () => {
  it('Ctrl-C while tokenizing leaves no temp file; a closed stdout pipe is no stack trace', async () => {
    const big = t('big.jsonl');
    fs.writeFileSync(big, Array.from({ length: 60_000 }, (_, i) => JSON.stringify({ input: `问题 ${i} ${'abc def '.repeat(20)}`, target: `答 ${i % 7}` })).join('\n'));
    const out = t('int', 'big.tok');
    fs.mkdirSync(t('int'));
    const child = spawn(process.execPath, [CLI, 'data', 'prepare', '--model', model, '--data', big, '--out', out, '--no-cache'], { env: { ...process.env, LLMS_TRAIN_HOME: home() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    const t0 = Date.now();
    while (!fs.readdirSync(t('int')).some((n) => n.includes('.tmp'))) {
      if (Date.now() - t0 > 30_000 || child.exitCode !== null) throw new Error(`tokenizing did not start: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(err).toMatch(/data prepare stopped \(SIGINT\); .*big\.tok was not written/);
    expect(fs.readdirSync(t('int'))).toEqual([]);
    // `… | head -1`: the reader closes the pipe after one line
    const piped = spawnSync('bash', ['-c', `"${process.execPath}" "${CLI}" data prepare --model "${model}" --data "${t('pc.jsonl')}",${t('pc.jsonl')} --out "${t('pipe.tok')}" | head -c 1 >/dev/null`], { env: { ...process.env, LLMS_TRAIN_HOME: home() }, encoding: 'utf8' });
    expect(piped.stderr).not.toMatch(/EPIPE|    at /);
  }, 120_000);
});

describe('columns as in training', () => {
  it('predict and eval --model read --prompt_column/--response_column; a multi-file report names each skipped file', async () => {
    fs.writeFileSync(t('qa.jsonl'), [{ question: '甲', answer: '乙' }, { question: '丙', answer: '丁' }].map((r) => JSON.stringify(r)).join('\n'));
    const cols = ['--prompt_column', 'question', '--response_column', 'answer'];
    const p = await runCli(['predict', '--model', model, '--data', t('qa.jsonl'), '--out', t('qa.pred.jsonl'), '--max_new_tokens', '2', ...cols], { home: home() });
    expect(p.code, p.stderr).toBe(0);
    const rows = fs.readFileSync(t('qa.pred.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(rows.map((r) => r.question)).toEqual(['甲', '丙']);
    expect(rows.every((r) => typeof r.answer === 'string' && Object.keys(r).length === 2)).toBe(true);
    const l = await runCli(['eval', '--model', model, '--data', t('qa.jsonl'), '--json', ...cols], { home: home() });
    expect(l.code, l.stderr).toBe(0);
    expect((JSON.parse(l.stdout) as { samples: number }).samples).toBe(2);
    const without = await runCli(['eval', '--model', model, '--data', t('qa.jsonl')], { home: home() });
    expect(without.code).toBe(1);

    fs.writeFileSync(t('bad.jsonl'), `${JSON.stringify({ input: 'a', target: 'b' })}\n{"input": "x", "target": }\n`);
    const m = await prepare(['--data', `${t('pc.jsonl')},${t('bad.jsonl')}`, '--out', t('m.tok'), '--on-error', 'skip']);
    expect(m.code, m.stderr).toBe(0);
    expect(m.stdout).toMatch(/skipped .*bad\.jsonl:2: invalid JSON/);
  });
});
