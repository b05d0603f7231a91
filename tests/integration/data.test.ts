// `llms-train data prepare` + `data show` against the seed's own preprocessing (tests/python/seed_preprocess.py,
// HF tokenizers) on PromptCBLUE records, also read from CSV, TSV, gzip'd JSONL and a wrapped JSON list; and bad
// files named line by line through the CLI.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LossError, evalLoss } from '../../src-main/core/eval/loss';
import { llamaSpModel } from '../fixtures/tokenizers/fixtures';
import { ROOT, runCli } from '../helpers/app';

const PY = process.env.LLMT_PY || path.join(ROOT, '.venv-test', 'bin', 'python');
const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');
let tmp: string;
let model: string;
let data: string;

const records = [
  { input: '判断下面临床试验筛选标准的类别：\n年龄在18至65岁之间的男性或女性。\n选项：年龄, 性别, 疾病\n答：', target: '年龄', type: 'cls', answer_choices: ['年龄', '性别', '疾病'], sample_id: 't1' },
  { input: 'Extract the drug: patients taking metformin 500mg bid for >= 3 months 😀', target: 'metformin', type: 'gen', answer_choices: null, sample_id: 't2' },
  { input: '  多个   空格\t和\n\n换行  ', target: '体征 ', type: 'cls', answer_choices: ['体征'], sample_id: 't3' },
  { input: '数字 1234567890 与 3.14159，以及 👩‍⚕️ 表情。'.repeat(12), target: '很长的答案'.repeat(10), type: 'gen', answer_choices: null, sample_id: 't4' },
];

beforeAll(() => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\``);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-data-it-'));
  model = path.join(tmp, 'tiny');
  const r = spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  data = path.join(tmp, 'train.json');
  fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\r\n') + '\r\n');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function seed(tokDir: string, file: string, src: number, tgt: number): { input_ids: number[]; labels: number[] }[] {
  const r = spawnSync(PY, [path.join(ROOT, 'tests', 'python', 'seed_preprocess.py'), '--tokenizer', tokDir, '--data', file, '--max_source_length', String(src), '--max_target_length', String(tgt)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
}

describe('data prepare reproduces the seed (raw template, tokenizer.json)', () => {
  it.each([
    [512, 64],
    [24, 6],
  ])('max_source_length %i, max_target_length %i', async (src, tgt) => {
    const out = path.join(tmp, `t-${src}.tok`);
    const home = path.join(tmp, 'home');
    const r = await runCli(['data', 'prepare', '--model', model, '--data', data, '--out', out, '--max_source_length', String(src), '--max_target_length', String(tgt), '--json'], { home });
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ format: 'promptcblue', template: 'raw', written: 4, skipped: 0 });
    const want = seed(model, data, src, tgt);
    for (let i = 0; i < records.length; i++) {
      const show = await runCli(['data', 'show', out, '--index', String(i), '--json'], { home });
      expect(show.code, show.stderr).toBe(0);
      expect(JSON.parse(show.stdout)).toEqual(want[i]);
    }
    if (src === 24) expect(report.truncated.samples).toBeGreaterThan(0);
  });

  it('the engine trains on the prepared file', async () => {
    const out = path.join(tmp, 'train.tok');
    expect((await runCli(['data', 'prepare', '--model', model, '--data', data, '--out', out, '--no-cache'])).code).toBe(0);
    const job = path.join(tmp, 'job.json');
    fs.writeFileSync(job, JSON.stringify({ model, data: { train: out }, training: { max_steps: 3, micro_batch_size: 2 }, output: { dir: path.join(tmp, 'run'), save_steps: 100 } }));
    const r = spawnSync(ENGINE, ['train', '--job', job], { encoding: 'utf8' });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/"event":"done","status":"completed"/);
  });
});

describe('the same records as CSV, TSV, gzip and a wrapped JSON list give the seed\'s ids', () => {
  // RFC 4180: every field quoted, quotes doubled; the records hold commas, tabs, line breaks and emoji
  const cell = (v: unknown) => `"${(typeof v === 'string' ? v : JSON.stringify(v)).replace(/"/g, '""')}"`;
  const table = (sep: string) => [Object.keys(records[0]!).join(sep), ...records.map((r) => Object.values(r).map(cell).join(sep))].join('\r\n') + '\r\n';
  it.each([
    ['train.csv', () => table(',')],
    ['train.tsv', () => table('\t')],
    ['train.jsonl.gz', () => zlib.gzipSync(records.map((r) => JSON.stringify(r)).join('\n'))],
    ['wrapped.json', () => JSON.stringify({ version: 1, data: records }, null, 2)],
  ] as const)('%s', async (name, content) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, content());
    const out = path.join(tmp, `${name}.tok`);
    const home = path.join(tmp, 'home');
    const r = await runCli(['data', 'prepare', '--model', model, '--data', f, '--out', out, '--max_source_length', '24', '--max_target_length', '6', '--json'], { home });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ format: 'promptcblue', written: 4, skipped: 0 });
    const want = seed(model, data, 24, 6);
    for (let i = 0; i < records.length; i++) {
      const show = await runCli(['data', 'show', out, '--index', String(i)], { home });
      expect(JSON.parse(show.stdout)).toEqual(want[i]);
    }
  });
});

describe('data prepare reproduces the seed (raw template, SentencePiece LLaMA tokenizer.model)', () => {
  it('matches LlamaTokenizer with the seed preprocessing, id for id', async () => {
    const sp = path.join(tmp, 'llama-sp');
    fs.mkdirSync(sp, { recursive: true });
    fs.writeFileSync(path.join(sp, 'tokenizer.model'), await llamaSpModel());
    fs.writeFileSync(path.join(sp, 'config.json'), JSON.stringify({ model_type: 'llama', bos_token_id: 1, eos_token_id: 2, vocab_size: 32000 }));
    const out = path.join(tmp, 'sp.tok');
    const r = await runCli(['data', 'prepare', '--model', sp, '--data', data, '--out', out, '--max_source_length', '40', '--max_target_length', '12', '--no-cache', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const want = seed(sp, data, 40, 12);
    for (let i = 0; i < records.length; i++) {
      const show = await runCli(['data', 'show', out, '--index', String(i)]);
      expect(JSON.parse(show.stdout)).toEqual(want[i]);
    }
  });
});

describe('a huge field is cut before tokenizing without changing a kept id (tokenizer.json and tokenizer.model)', () => {
  // ~450k characters each side: far past the character budget (64 Ki + 4 Ki at these lengths), with long runs of
  // Chinese (one pre-token for byte-level BPE), spaces, punctuation and emoji around the cut
  const huge = (seed: number) =>
    Array.from({ length: 5000 }, (_, i) => `第${i + seed}段：患者主诉头痛${'伴恶心呕吐'.repeat(i % 7)}。Temperature ${36 + (i % 4)}.${i % 10} °C   ====  😀👩‍⚕️ ${'x'.repeat(i % 50)}\n`).join('');
  it.each([
    ['tokenizer.json', () => model],
    ['tokenizer.model', () => path.join(tmp, 'llama-sp')],
  ])('%s: the same ids as the seed, which tokenizes every field whole', async (_kind, dir) => {
    const tokDir = dir();
    if (!fs.existsSync(path.join(tokDir, 'config.json'))) {
      fs.mkdirSync(tokDir, { recursive: true });
      fs.writeFileSync(path.join(tokDir, 'tokenizer.model'), await llamaSpModel());
      fs.writeFileSync(path.join(tokDir, 'config.json'), JSON.stringify({ model_type: 'llama', bos_token_id: 1, eos_token_id: 2, vocab_size: 32000 }));
    }
    const file = path.join(tmp, 'giant.jsonl');
    const recs = [records[0], { input: huge(0), target: 'short' }, { input: 'q', target: huge(7) }, records[3]];
    fs.writeFileSync(file, recs.map((r) => JSON.stringify(r)).join('\n'));
    expect(huge(0).length).toBeGreaterThan(400_000);
    for (const [src, tgt] of [
      [512, 64],
      [4096, 2048], // budgets of 262 Ki and 135 Ki characters
    ] as const) {
      const out = path.join(tmp, `giant-${src}.tok`);
      const r = await runCli(['data', 'prepare', '--model', tokDir, '--data', file, '--out', out, '--max_source_length', String(src), '--max_target_length', String(tgt), '--no-cache', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout);
      expect(report.truncated.estimated).toBe(2); // the two huge records; the counts of the others are exact
      const want = seed(tokDir, file, src, tgt);
      for (let i = 0; i < recs.length; i++) {
        const show = await runCli(['data', 'show', out, '--index', String(i)]);
        expect(JSON.parse(show.stdout), `sample ${i} at ${src}/${tgt}`).toEqual(want[i]);
      }
    }
  });
});

describe('eval --model --data fails on bad records like every other command', () => {
  it('names the line by default; onError skip leaves it out and counts it', async () => {
    const bad = path.join(tmp, 'eval-bad.jsonl');
    fs.writeFileSync(bad, [JSON.stringify(records[0]), '{"input": "x", "target": ', JSON.stringify(records[1])].join('\n'));
    const cli = await runCli(['eval', '--model', model, '--data', bad]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/1 bad record\(s\) in .*eval-bad\.jsonl:\n {2}.*eval-bad\.jsonl:2: invalid JSON/);
    expect(cli.stderr).toMatch(/hint: .*on-error skip/);
    const err = (await evalLoss({ model, data: bad }).catch((e: unknown) => e)) as LossError;
    expect(err).toBeInstanceOf(LossError);
    expect(err.code).toBe('BAD_INPUT');
    expect(err.errors).toEqual([{ line: 2, reason: expect.stringMatching(/invalid JSON/) }]);
    const r = await evalLoss({ model, data: bad, onError: 'skip' });
    expect(r).toMatchObject({ samples: 2, skipped: 1, errors: [{ line: 2, reason: expect.stringMatching(/invalid JSON/) }] });
    expect(Number.isFinite(r.loss)).toBe(true);
    // the command line's --on-error skip: the same loss, the skipped line named
    const skip = await runCli(['eval', '--model', model, '--data', bad, '--on-error', 'skip']);
    expect(skip.code, skip.stderr).toBe(0);
    expect(skip.stdout).toMatch(new RegExp(`eval loss ${r.loss.toFixed(4)} .*1 skipped`));
    expect(skip.stdout).toMatch(/skipped .*eval-bad\.jsonl:2: invalid JSON/);
  });
});

describe('packed plain text for continued pre-training', () => {
  it('packs lines into rows the engine trains on', async () => {
    const txt = path.join(tmp, 'corpus.txt');
    fs.writeFileSync(txt, Array.from({ length: 40 }, (_, i) => `第${i}行：患者 ${i} 的病程记录，体温 ${36 + (i % 3)}.${i % 10} 度。`).join('\n'));
    const out = path.join(tmp, 'packed.tok');
    const r = await runCli(['data', 'prepare', '--model', model, '--data', txt, '--out', out, '--pack', '256', '--no-cache', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep).toMatchObject({ format: 'text', packedSamples: 40 });
    expect(rep.written).toBeLessThan(40);
    const show = JSON.parse((await runCli(['data', 'show', out, '--index', '0'])).stdout);
    expect(show.position_ids.filter((p: number) => p === 0).length).toBeGreaterThan(1);
    const job = path.join(tmp, 'packed-job.json');
    fs.writeFileSync(job, JSON.stringify({ model, data: { train: out }, training: { max_steps: 2, micro_batch_size: 2 }, output: { dir: path.join(tmp, 'packed-run'), save_steps: 100 } }));
    const t = spawnSync(ENGINE, ['train', '--job', job], { encoding: 'utf8' });
    expect(t.status, t.stderr + t.stdout).toBe(0);
  });
});

describe('data prepare with bad files', () => {
  it('fails naming every broken line, or skips them by policy', async () => {
    const bad = path.join(tmp, 'bad.jsonl');
    fs.writeFileSync(bad, [JSON.stringify(records[0]), '{"input": "no target"}', '{oops', JSON.stringify(records[1]), '{"input": "a", "target": ""}'].join('\n'));
    const out = path.join(tmp, 'bad.tok');
    const r = await runCli(['data', 'prepare', '--model', model, '--data', bad, '--out', out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/3 bad record\(s\)/);
    expect(r.stderr).toMatch(/bad\.jsonl:2: missing column "target"/);
    expect(r.stderr).toMatch(/bad\.jsonl:3: invalid JSON/);
    expect(r.stderr).toMatch(/bad\.jsonl:5: column "target" is empty/);
    expect(r.stderr).toMatch(/hint: .*--on-error skip/);
    expect(fs.existsSync(out)).toBe(false);
    const s = await runCli(['data', 'prepare', '--model', model, '--data', bad, '--out', out, '--on-error', 'skip', '--json']);
    expect(s.code, s.stderr).toBe(0);
    expect(JSON.parse(s.stdout)).toMatchObject({ written: 2, skipped: 3, errorCount: 3 });
    // train's spelling works too; both spellings at once are a contradiction, refused
    const u = await runCli(['data', 'prepare', '--model', model, '--data', bad, '--out', out, '--on_error', 'skip', '--json']);
    expect(JSON.parse(u.stdout)).toMatchObject({ written: 2, skipped: 3 });
    const both = await runCli(['data', 'prepare', '--model', model, '--data', bad, '--out', out, '--on_error', 'skip', '--on-error', 'fail']);
    expect(both.code).not.toBe(0);
    expect(both.stderr).toMatch(/cannot be used with option/);
  });

  it('data show and stats explain a missing or damaged file', async () => {
    const r = await runCli(['data', 'show', path.join(tmp, 'nope.tok'), '--index', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nope\.tok/);
    const d = path.join(tmp, 'damaged.tok');
    fs.writeFileSync(d, 'LLMTTOK1garbage');
    const s = await runCli(['data', 'stats', d]);
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/not a valid \.tok file/);
  });
});
