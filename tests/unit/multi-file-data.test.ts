// Several training files in one run (`data.train` as a list; `--train_file a.json,b.json`; the wizard's "More training
// files"): each file is prepared on its own — its own format — then the .tok files are put together in order, so the
// engine trains on exactly the samples each file gives alone; the report adds up; the spec round-trips.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { specFromFlags, trainFileList } from '../../src-main/cli/train';
import { combineReports, prepareDataset, prepareFiles } from '../../src-main/core/data/prepare';
import { concatTok, TokReader, TokWriter } from '../../src-main/core/data/tokfile';
import { cliArgs } from '../../src-main/core/runs/cli-command';
import { parseRunSpec, trainFiles } from '../../src-main/core/runs/runspec';
import { charTok } from '../helpers/char-tokenizer';
import { flags } from '../helpers/cli-flags';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-multi-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const samples = (file: string) => {
  const r = TokReader.open(file);
  try {
    return Array.from({ length: r.size }, (_, i) => r.sample(i));
  } finally {
    r.close();
  }
};

describe('several training files', () => {
  it('are prepared each in its own format and put together in order, sample for sample', async () => {
    const a = path.join(tmp, 'cblue.jsonl');
    const b = path.join(tmp, 'alpaca.json');
    fs.writeFileSync(a, Array.from({ length: 7 }, (_, i) => JSON.stringify({ input: `问题${i}`, target: `答${i}` })).join('\n') + '\n');
    fs.writeFileSync(b, JSON.stringify(Array.from({ length: 5 }, (_, i) => ({ instruction: `do ${i}`, input: i % 2 ? 'x' : '', output: `done ${i}` }))));
    const opts = { tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, validationPercent: 30, seed: 7 };
    const ra = await prepareDataset({ ...opts, dataFile: a, out: path.join(tmp, 'a.tok'), validationOut: path.join(tmp, 'a.val.tok') });
    const rb = await prepareDataset({ ...opts, dataFile: b, out: path.join(tmp, 'b.tok'), validationOut: path.join(tmp, 'b.val.tok') });
    expect([ra.format, rb.format]).toEqual(['promptcblue', 'alpaca']);
    const out = path.join(tmp, 'all.tok');
    const h = await concatTok([path.join(tmp, 'a.tok'), path.join(tmp, 'b.tok')], out);
    await concatTok([path.join(tmp, 'a.val.tok'), path.join(tmp, 'b.val.tok')], path.join(tmp, 'all.val.tok'));
    expect(samples(out)).toEqual([...samples(path.join(tmp, 'a.tok')), ...samples(path.join(tmp, 'b.tok'))]);
    expect(h.num_samples).toBe(ra.written + rb.written);
    expect(h.num_tokens).toBe(ra.tokens + rb.tokens);
    expect(h.format).toEqual(['promptcblue', 'alpaca']);
    expect((h.source as { data: string[] }).data).toEqual([a, b]);
    expect(h.pad_id).toBe(0);
    const rep = combineReports([ra, rb], out, path.join(tmp, 'all.val.tok'));
    expect(rep).toMatchObject({ written: ra.written + rb.written, records: 12, tokens: ra.tokens + rb.tokens, format: 'mixed' });
    expect(rep.validation!.written).toBe(ra.validation!.written + rb.validation!.written);
    expect(rep.lengths.max).toBe(Math.max(ra.lengths.max, rb.lengths.max));
    expect(samples(path.join(tmp, 'all.val.tok')).length).toBe(rep.validation!.written);
  });

  it('prepareFiles (what a run and `data prepare --data a,b` use) gives the same file, each file heard, no parts left', async () => {
    const a = path.join(tmp, 'cblue.jsonl');
    const b = path.join(tmp, 'alpaca.json');
    const heard: string[] = [];
    const dir = path.join(tmp, 'pf');
    fs.mkdirSync(dir);
    const out = path.join(dir, 'train.tok');
    const rep = await prepareFiles({ tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, dataFiles: [a, b], out, validationOut: path.join(dir, 'val.tok'), validationPercent: 30, seed: 7 }, (f) => heard.push(f));
    expect(heard).toEqual([a, b]);
    expect(samples(out)).toEqual(samples(path.join(tmp, 'all.tok')));
    expect(samples(path.join(dir, 'val.tok'))).toEqual(samples(path.join(tmp, 'all.val.tok')));
    expect(rep.written).toBe(samples(out).length);
    expect(fs.readdirSync(dir).sort()).toEqual(['train.tok', 'val.tok']);
    // a bad record in the second file: named with its file, and nothing half-written left
    const bad = path.join(tmp, 'bad.jsonl');
    fs.writeFileSync(bad, '{"instruction": "a", "output": "b"}\n{"instruction": oops\n');
    const out2 = path.join(dir, 'bad.tok');
    await expect(prepareFiles({ tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, dataFiles: [a, bad], out: out2 })).rejects.toThrow(/1 bad record\(s\) in .*bad\.jsonl/);
    expect(fs.readdirSync(dir).sort()).toEqual(['train.tok', 'val.tok']);
  });

  it("one file's empty validation split is not an error while another gives some; all empty is", async () => {
    const tiny = path.join(tmp, 'tiny.jsonl');
    fs.writeFileSync(tiny, JSON.stringify({ input: '问', target: '答' }) + '\n');
    const a = path.join(tmp, 'cblue.jsonl');
    const dir = path.join(tmp, 'split');
    fs.mkdirSync(dir);
    const opts = { tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, validationPercent: 30, seed: 7 };
    const rep = await prepareFiles({ ...opts, dataFiles: [a, tiny], out: path.join(dir, 't.tok'), validationOut: path.join(dir, 'v.tok') });
    expect(rep.validation!.written).toBeGreaterThan(0);
    await expect(prepareFiles({ ...opts, dataFiles: [tiny, tiny], out: path.join(dir, 't2.tok'), validationOut: path.join(dir, 'v2.tok') })).rejects.toThrow(/validation split of .*tiny\.jsonl, .*tiny\.jsonl is empty/);
    // a path list with a missing file says how the value was read
    await expect(prepareFiles({ ...opts, dataFiles: [a, path.join(tmp, 'x')], out: path.join(dir, 't3.tok') })).rejects.toMatchObject({ hint: expect.stringMatching(/read as 2 paths separated by commas/) });
  });

  it('refuses files of another tokenizer or packing, and writes nothing then', async () => {
    const other = new TokWriter(path.join(tmp, 'other.tok'));
    other.add([5, 6, 7], [false, true, true]);
    await other.finish({ tokenizer_hash: 'another' });
    const mine = new TokWriter(path.join(tmp, 'mine.tok'));
    mine.add([5, 6, 7], [false, true, true]);
    await mine.finish({ tokenizer_hash: charTok.hash });
    await expect(concatTok([path.join(tmp, 'mine.tok'), path.join(tmp, 'other.tok')], path.join(tmp, 'no.tok'))).rejects.toThrow(/another tokenizer/);
    expect(fs.existsSync(path.join(tmp, 'no.tok'))).toBe(false);
  });

  it('--train_file takes a comma list (a file whose name has a comma stays one file) and round-trips', () => {
    expect(trainFileList('/d/a.json')).toBe('/d/a.json');
    expect(trainFileList('/d/a.json, /d/b.jsonl')).toEqual(['/d/a.json', '/d/b.jsonl']);
    const comma = path.join(tmp, 'x,y.json');
    fs.writeFileSync(comma, '{}');
    expect(trainFileList(comma)).toBe(comma);
    const { spec } = specFromFlags(flags(['--model_name_or_path', '/m', '--train_file', '/d/a.json,/d/b.jsonl', '--output_dir', '/o']));
    expect(spec.data.train).toEqual(['/d/a.json', '/d/b.jsonl']);
    expect(trainFiles(spec)).toEqual(['/d/a.json', '/d/b.jsonl']);
    expect(cliArgs(spec)).toEqual(expect.arrayContaining(['--train_file', '/d/a.json,/d/b.jsonl']));
    expect(specFromFlags(flags(cliArgs(spec))).spec).toEqual(spec);
    // one file stays a string (the stored specs of earlier runs keep their shape)
    expect(trainFiles(parseRunSpec({ model: { path: '/m' }, data: { train: '/d/a.json' }, output: { dir: '/o' } }))).toEqual(['/d/a.json']);
    expect(() => parseRunSpec({ model: { path: '/m' }, data: { train: [] }, output: { dir: '/o' } })).toThrow(/data\.train/);
  });
});
