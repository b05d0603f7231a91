// The data pipeline's pure parts with a character-level test tokenizer: streaming readers (line numbers,
// BOM, CRLF, invalid UTF-8, JSON arrays), format detection and record validation, templates and the seed's
// truncation, the .tok writer/reader, and `prepare` (error policy, validation split, cache, report).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadChatTemplate } from '../../src-main/core/data/chat-template';
import { detectFormat, toSample } from '../../src-main/core/data/formats';
import { PrepareError, prepareDataset } from '../../src-main/core/data/prepare';
import { type RawRecord, readRecords } from '../../src-main/core/data/reader';
import { encodeSample } from '../../src-main/core/data/templates';
import { TokReader, TokWriter } from '../../src-main/core/data/tokfile';
import { charTok } from '../helpers/char-tokenizer';

const enc = charTok.encode;

let tmp: string;
beforeAll(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-data-'))));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function collect(file: string): Promise<RawRecord[]> {
  const out: RawRecord[] = [];
  for await (const r of readRecords(file)) out.push(r);
  return out;
}

describe('readers', () => {
  it('reads JSONL with a BOM and CRLF, skipping blank lines, naming bad lines', async () => {
    const f = path.join(tmp, 'a.jsonl');
    const bad = Buffer.from([0xff, 0xfe, 0x41]);
    fs.writeFileSync(f, Buffer.concat([Buffer.from('\ufeff{"input":"你好","target":"a"}\r\n\r\n{"input": 1,\r\n[1,2]\r\n'), bad, Buffer.from('\n{"input":"x","target":"y"}')]));
    const recs = await collect(f);
    expect(recs.map((r) => r.line)).toEqual([1, 3, 4, 5, 6]);
    expect(recs[0]).toEqual({ line: 1, value: { input: '你好', target: 'a' } });
    expect(recs[1]).toMatchObject({ line: 3, error: expect.stringMatching(/invalid JSON/) });
    expect(recs[2]).toMatchObject({ line: 4, error: 'a record must be a JSON object' });
    expect(recs[3]).toMatchObject({ line: 5, error: 'invalid UTF-8' });
    expect(recs[4]).toEqual({ line: 6, value: { input: 'x', target: 'y' } });
  });

  it('streams a JSON array element by element with the line each starts on', async () => {
    const f = path.join(tmp, 'b.json');
    fs.writeFileSync(f, '[\n  {"input": "a, [b]", "target": "}"},\n  {\n    "input": "多行",\n    "target": "c"\n  },\n  {"bad": }\n]\n');
    const recs = await collect(f);
    expect(recs[0]).toEqual({ line: 2, element: 0, value: { input: 'a, [b]', target: '}' } });
    expect(recs[1]).toEqual({ line: 3, element: 1, value: { input: '多行', target: 'c' } });
    expect(recs[2]).toMatchObject({ line: 7, element: 2, error: expect.stringMatching(/invalid JSON/) });
  });

  it('reports a truncated array and text after it', async () => {
    const f = path.join(tmp, 'c.json');
    fs.writeFileSync(f, '[{"input":"a","target":"b"},\n{"input":"c"');
    const recs = await collect(f);
    expect(recs.at(-1)).toMatchObject({ error: expect.stringMatching(/not closed/) });
    fs.writeFileSync(f, '[{"input":"a","target":"b"}] x');
    expect((await collect(f)).at(-1)).toMatchObject({ error: expect.stringMatching(/after the end/) });
  });

  it('reads plain text one record per non-empty line', async () => {
    const f = path.join(tmp, 'd.txt');
    fs.writeFileSync(f, 'first line\n\nsecond\r\n');
    expect(await collect(f)).toEqual([{ line: 1, value: { text: 'first line' } }, { line: 3, value: { text: 'second' } }]);
  });
});

describe('formats', () => {
  it('detects each format', () => {
    expect(detectFormat({ input: 'a', target: 'b', type: 'cls', answer_choices: [], sample_id: '1' })).toBe('promptcblue');
    expect(detectFormat({ instruction: 'a', input: '', output: 'b' })).toBe('alpaca');
    expect(detectFormat({ conversations: [] })).toBe('sharegpt');
    expect(detectFormat({ prompt: 'a', response: 'b' })).toBe('columns');
    expect(detectFormat({ q: 'a', a: 'b' }, { promptColumn: 'q', responseColumn: 'a' })).toBe('columns');
    expect(detectFormat({ text: 'abc' })).toBe('text');
    expect(detectFormat({ foo: 1 })).toBeNull();
  });

  it('says what is wrong with a record', () => {
    expect(() => toSample({ input: 'a' }, 'promptcblue')).toThrow('missing column "target" (the answer)');
    expect(() => toSample({ input: 'a', target: 5 }, 'promptcblue')).toThrow('column "target" must be a string, not number');
    expect(() => toSample({ input: '  ', target: 'b' }, 'promptcblue')).toThrow('column "input" is empty');
    expect(() => toSample({ q: 'a', a: 'b', h: [['x']] }, 'columns', { promptColumn: 'q', responseColumn: 'a', historyColumn: 'h' })).toThrow(/\[question, answer\] pair/);
    const conv = (c: unknown[]) => toSample({ conversations: c }, 'sharegpt');
    expect(() => conv([{ from: 'human', value: 'a' }, { from: 'human', value: 'b' }])).toThrow(/does not alternate: turn 2 is "user"/);
    expect(() => conv([{ from: 'robot', value: 'a' }])).toThrow(/unknown speaker "robot"/);
    expect(() => conv([{ from: 'human', value: 'a' }, { from: 'gpt', value: 'b' }, { from: 'human', value: 'c' }])).toThrow(/ends with a user turn/);
  });

  it('keeps history and multi-turn structure', () => {
    const s = toSample({ q: 'now', a: 'yes', h: [['before', 'ok']] }, 'columns', { promptColumn: 'q', responseColumn: 'a', historyColumn: 'h' });
    expect(s).toEqual({ kind: 'chat', turns: [{ role: 'user', content: 'before' }, { role: 'assistant', content: 'ok' }, { role: 'user', content: 'now' }, { role: 'assistant', content: 'yes' }] });
    const a = toSample({ instruction: 'Translate', input: 'hi', output: '你好' }, 'alpaca');
    expect(a).toMatchObject({ turns: [{ content: 'Translate\nhi' }, { content: '你好' }] });
  });
});

describe('templates', () => {
  const cblue = (input: string, target: string) => toSample({ input, target }, 'promptcblue');

  it('raw: prompt + [eos, bos] + target + [eos], the prompt and its eos masked', () => {
    const e = encodeSample(cblue('问题', '答'), 'raw', charTok, { maxSourceLength: 512, maxTargetLength: 64 });
    expect(e.ids).toEqual([...enc('问题'), 2, 1, ...enc('答'), 2]);
    expect(e.mask).toEqual([false, false, false, true, true, true]);
    expect(e.truncatedTokens).toBe(0);
  });

  it('applies the seed truncation: source to max_source_length − 1, target to max_target_length − 2', () => {
    const e = encodeSample(cblue('abcdefghij', '0123456789'), 'raw', charTok, { maxSourceLength: 5, maxTargetLength: 6 });
    expect(e.ids).toEqual([...enc('abcd'), 2, 1, ...enc('0123'), 2]);
    expect(e.truncatedTokens).toBe(6 + 6);
  });

  it('chatglm and chatglm2 layouts', () => {
    const v1 = encodeSample(cblue('q', 'a'), 'chatglm', charTok, { maxSourceLength: 64, maxTargetLength: 64 });
    expect(v1.ids).toEqual([...enc('q'), 4, 5, ...enc('a'), 6]);
    expect(v1.mask).toEqual([false, false, true, true, true]);
    const v2 = encodeSample(cblue('q', 'a'), 'chatglm2', charTok, { maxSourceLength: 64, maxTargetLength: 64 });
    const p = enc('[Round 1]\n\n问：q\n\n答：');
    expect(v2.ids).toEqual([4, 5, ...p, ...enc('a'), 2]);
    expect(v2.mask.filter(Boolean).length).toBe(2);
  });

  it('multi-turn ShareGPT trains every assistant turn; baichuan-chat uses 195/196', () => {
    const s = toSample({ conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }, { from: 'human', value: 'z' }, { from: 'gpt', value: 'w' }] }, 'sharegpt');
    const e = encodeSample(s, 'baichuan-chat', charTok, { maxSourceLength: 64, maxTargetLength: 64 });
    expect(e.ids).toEqual([195, ...enc('x'), 196, ...enc('y'), 2, 195, ...enc('z'), 196, ...enc('w'), 2]);
    expect(e.mask).toEqual([false, false, false, true, true, false, false, false, true, true]);
    const trained = encodeSample(s, 'baichuan-chat', charTok, { maxSourceLength: 64, maxTargetLength: 64, trainOnPrompt: true });
    expect(trained.mask.every(Boolean)).toBe(true);
  });

  it('minicpm: bos + "<用户>{q}<AI>" + answer + eos, history folded into the prompt', () => {
    const e = encodeSample(cblue('q', 'a'), 'minicpm', charTok, { maxSourceLength: 64, maxTargetLength: 64 });
    expect(e.ids).toEqual([1, ...enc('<用户>q<AI>'), ...enc('a'), 2]);
    expect(e.mask.filter(Boolean).length).toBe(2);
    const s = toSample({ conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }, { from: 'human', value: 'z' }, { from: 'gpt', value: 'w' }] }, 'sharegpt');
    const m = encodeSample(s, 'minicpm', charTok, { maxSourceLength: 64, maxTargetLength: 64 });
    expect(m.ids).toEqual([1, ...enc('<用户>x<AI>'), ...enc('y'), 2, ...enc('<用户>z<AI>'), ...enc('w'), 2]);
  });

  it('names a missing special token', () => {
    const noEos = { ...charTok, eosId: null };
    expect(() => encodeSample(cblue('a', 'b'), 'raw', noEos, { maxSourceLength: 8, maxTargetLength: 8 })).toThrow(/no eos token, which the "raw" template needs/);
  });
});

describe('.tok files', () => {
  it('round-trips samples and rejects a truncated file', async () => {
    const f = path.join(tmp, 'x.tok');
    const w = new TokWriter(f);
    w.add([5, 6, 7], [false, true, true]);
    w.add([8, 9], [false, false]);
    const h = await w.finish({ template: 'raw', pad_id: 0 });
    expect(h).toMatchObject({ num_samples: 2, num_tokens: 5, template: 'raw' });
    expect(fs.readdirSync(tmp).filter((n) => n.includes('.tmp'))).toEqual([]);
    const r = TokReader.open(f);
    expect(r.sample(0)).toEqual({ input_ids: [5, 6, 7], labels: [-100, 6, 7] });
    expect(r.sample(1)).toEqual({ input_ids: [8, 9], labels: [-100, -100] });
    expect(() => r.sample(2)).toThrow(/out of range/);
    fs.writeFileSync(path.join(tmp, 'cut.tok'), fs.readFileSync(f).subarray(0, 40));
    expect(() => TokReader.open(path.join(tmp, 'cut.tok'))).toThrow(/not a valid \.tok file/);
  });

  it('names a file whose offsets are damaged (the engine\'s checks), not a RangeError', async () => {
    const f = path.join(tmp, 'off.tok');
    const w = new TokWriter(f);
    w.add([5, 6, 7], [false, true, true]);
    w.add([8, 9], [false, false]);
    await w.finish({ template: 'raw' });
    const buf = fs.readFileSync(f);
    const at = Math.ceil((16 + buf.readUInt32LE(12)) / 8) * 8; // the offsets table
    const bad = (name: string, patch: (b: Buffer) => void) => {
      const b = Buffer.from(buf);
      patch(b);
      fs.writeFileSync(path.join(tmp, name), b);
      return path.join(tmp, name);
    };
    const huge = bad('huge.tok', (b) => b.writeBigUInt64LE(4_000_000_000_000n, at + 8));
    expect(() => TokReader.open(huge)).toThrow(/huge\.tok is damaged: sample 1 is empty or its offsets decrease; prepare it again/);
    const span = bad('span.tok', (b) => b.writeBigUInt64LE(4n, at + 16));
    expect(() => TokReader.open(span)).toThrow(/is damaged: its sample offsets do not span the tokens/);
    const down = bad('down.tok', (b) => b.writeBigUInt64LE(0n, at + 8));
    expect(() => TokReader.open(down)).toThrow(/is damaged: sample 0 is empty or its offsets decrease/);
  });

  it.runIf(fs.existsSync('/dev/full'))('a full disk while writing is an IO error naming the file, with a hint, and no temp files', async () => {
    const dir = path.join(tmp, 'full');
    fs.mkdirSync(dir);
    const f = path.join(dir, 'x.tok');
    // the writer's temp file for ids lands on /dev/full: every write fails with ENOSPC
    fs.symlinkSync('/dev/full', `${f}.${process.pid}.tmp.ids`);
    const w = new TokWriter(f);
    let err: unknown;
    try {
      for (let i = 0; i < 100_000; i++) {
        w.add([5, 6, 7, 8], [false, true, true, true]);
        if (i % 1000 === 0) await new Promise((r) => setImmediate(r));
      }
      await w.finish({ template: 'raw' });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'IO', errno: 'ENOSPC' });
    expect((err as Error).message).toBe(`cannot write ${f}: no space left on the device (ENOSPC)`);
    expect((err as { hint?: string }).hint).toMatch(/Free some space/);
    await w.abort();
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it.runIf(fs.existsSync('/dev/full'))('prepare on a full disk rejects with the IO error and leaves no temp files', async () => {
    const dir = path.join(tmp, 'full2');
    fs.mkdirSync(dir);
    const data = path.join(dir, '..', 'full2.jsonl');
    fs.writeFileSync(data, Array.from({ length: 3000 }, (_, i) => JSON.stringify({ input: `问题${i}：这是第${i}条`, target: `答${i % 3}` })).join('\n'));
    const out = path.join(dir, 'x.tok');
    fs.symlinkSync('/dev/full', `${out}.${process.pid}.tmp.mask`);
    await expect(prepareDataset({ dataFile: data, out, tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 8 })).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/cannot write .*x\.tok: no space left/) });
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});

describe('prepare', () => {
  const write = (name: string, lines: string[]) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, lines.join('\n'));
    return f;
  };
  const good = (i: number) => JSON.stringify({ input: `问题${i}：这是第${i}条`, target: `答${i % 3}`, type: 'cls', answer_choices: ['答0', '答1', '答2'], sample_id: String(i) });

  it('fails listing every bad line, writing nothing', async () => {
    const f = write('bad.jsonl', [good(1), '{"input": "x"}', 'not json', good(2), '{"input": "", "target": "y"}']);
    const out = path.join(tmp, 'bad.tok');
    const err = (await prepareDataset({ dataFile: f, out, tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16 }).catch((e: unknown) => e)) as PrepareError;
    expect(err).toBeInstanceOf(PrepareError);
    expect(err.errors.map((e) => e.line)).toEqual([2, 3, 5]);
    expect(err.message).toMatch(/bad\.jsonl:2: missing column "target"/);
    expect(err.message).toMatch(/bad\.jsonl:3: invalid JSON/);
    expect(err.message).toMatch(/bad\.jsonl:5: column "input" is empty/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(tmp).filter((n) => n.startsWith('bad.tok'))).toEqual([]);
  });

  it('skips and counts by policy, splits validation deterministically, caches', async () => {
    const lines = Array.from({ length: 200 }, (_, i) => good(i));
    lines[10] = '{"input": 3, "target": "a"}';
    lines[20] = good(19); // a duplicate of line 20
    const f = write('ok.jsonl', lines);
    const cacheDir = path.join(tmp, 'cache');
    const opts = { dataFile: f, out: path.join(tmp, 'ok.tok'), validationOut: path.join(tmp, 'ok.val.tok'), validationPercent: 10, tokenizer: charTok, maxSourceLength: 8, maxTargetLength: 16, onError: 'skip' as const, cacheDir };
    const r = await prepareDataset(opts);
    expect(r.format).toBe('promptcblue');
    expect(r.records).toBe(200);
    expect(r.skipped).toBe(1);
    expect(r.errors).toEqual([{ line: 11, reason: 'column "input" must be a string, not number' }]);
    expect(r.written + r.validation!.written).toBe(199);
    expect(r.validation!.written).toBeGreaterThan(5);
    expect(r.validation!.written).toBeLessThan(40);
    expect(r.duplicates).toBe(1);
    expect(r.truncated.samples).toBeGreaterThan(150); // prompts are longer than 7 characters
    expect(r.lengths.max).toBe(7 + 2 + 2 + 1);
    expect(r.cached).toBe(false);
    // the report's counts are the training file's, the split's its own (they add up to the whole set)
    const trainTok = TokReader.open(opts.out);
    const valTok = TokReader.open(opts.validationOut);
    const idsOf = (t: ReturnType<typeof TokReader.open>) => Array.from({ length: t.size }, (_, i) => t.length(i)).reduce((a, b) => a + b, 0);
    expect(r.tokens).toBe(idsOf(trainTok));
    expect(r.validation!.tokens).toBe(idsOf(valTok));
    expect(r.truncated.samples).toBeLessThanOrEqual(r.written);
    expect(r.truncated.samples + r.validation!.truncated.samples).toBe(199); // every prompt is cut here
    expect(r.lengths.histogram.reduce((a, b) => a + b.count, 0)).toBe(r.written);
    expect(r.validation!.maxLength).toBe(7 + 2 + 2 + 1);
    const again = await prepareDataset(opts);
    expect(again.cached).toBe(true);
    expect(again.written).toBe(r.written);
    expect(fs.readFileSync(opts.out).equals(fs.readFileSync(path.join(cacheDir, fs.readdirSync(cacheDir).find((n) => n.endsWith('.tok') && !n.endsWith('.val.tok'))!)))).toBe(true);
    const tok = TokReader.open(opts.out);
    expect(tok.header).toMatchObject({ template: 'raw', max_source_length: 8, max_target_length: 16, tokenizer_hash: 'char-tokenizer-v1', eos_id: 2, bos_id: 1 });
  });

  it('explains an undetectable format', async () => {
    const f = write('weird.jsonl', ['{"foo": 1}']);
    await expect(prepareDataset({ dataFile: f, out: path.join(tmp, 'w.tok'), tokenizer: charTok, maxSourceLength: 8, maxTargetLength: 8 })).rejects.toThrow(/cannot tell the format .* line 1 \(fields: foo\)/);
  });
});

describe('prepare checks the tokenizer against the template first', () => {
  it('fails once, clearly, when a needed special token is missing', async () => {
    const f = path.join(tmp, 'one.jsonl');
    fs.writeFileSync(f, '{"input": "a", "target": "b"}\n'.repeat(50));
    const err = (await prepareDataset({ dataFile: f, out: path.join(tmp, 'one.tok'), tokenizer: { ...charTok, eosId: null }, maxSourceLength: 8, maxTargetLength: 8 }).catch((e: unknown) => e)) as PrepareError;
    expect(err.message).toBe('the tokenizer has no eos token, which the "raw" template needs');
    expect(err.hint).toMatch(/template/);
  });
});

describe('chat_template', () => {
  const chatml = (dir: string) => {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(
      path.join(dir, 'tokenizer_config.json'),
      JSON.stringify({
        eos_token: '</s>',
        chat_template: "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
      }),
    );
    return loadChatTemplate(dir);
  };

  it('renders with the model template; masks prompts, trains answers with their closing text', () => {
    const r = chatml(path.join(tmp, 'chatml'));
    const s = toSample({ conversations: [{ from: 'human', value: 'hi' }, { from: 'gpt', value: 'yo' }, { from: 'human', value: 'x' }, { from: 'gpt', value: 'z' }] }, 'sharegpt');
    const e = encodeSample(s, 'chat_template', charTok, { maxSourceLength: 512, maxTargetLength: 512, chatTemplate: r });
    const text = charTok.decode(e.ids);
    expect(text).toBe('<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\nz<|im_end|>\n');
    const trained = charTok.decode(e.ids.filter((_, i) => e.mask[i]));
    expect(trained).toBe('yo<|im_end|>\nz<|im_end|>\n');
    const single = encodeSample(toSample({ input: 'q', target: 'a' }, 'promptcblue'), 'chat_template', charTok, { maxSourceLength: 512, maxTargetLength: 512, chatTemplate: r });
    expect(charTok.decode(single.ids.filter((_, i) => single.mask[i]))).toBe('a<|im_end|>\n');
  });

  it('explains a folder without a chat_template', () => {
    const d = path.join(tmp, 'nochat');
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'tokenizer_config.json'), '{}');
    expect(() => loadChatTemplate(d)).toThrow(/has no chat_template; choose one of the built-in templates/);
    expect(() => loadChatTemplate(path.join(tmp, 'missing'))).toThrow(/tokenizer_config\.json is missing/);
  });
});

describe('packing', () => {
  it('packs samples into rows with positions restarting per sample, first tokens unlabelled', async () => {
    const f = path.join(tmp, 'text.txt');
    fs.writeFileSync(f, ['abc', 'defgh', 'ij', 'klmnopqrstu'].join('\n'));
    const out = path.join(tmp, 'packed.tok');
    const r = await prepareDataset({ dataFile: f, out, tokenizer: charTok, maxSourceLength: 8, maxTargetLength: 8, packRowLength: 10 });
    expect(r.format).toBe('text');
    expect(r.packedSamples).toBe(4);
    const tok = TokReader.open(out);
    expect(tok.header.packed).toBe(true);
    // rows: [abc</s> defgh</s>] (10); klmnopqrstu</s> (12) is longer than a row: its first 10 tokens are a row of their
    // own (written while [ij</s>] is open), the rest u</s> joins [ij</s>]. No row is longer than 10.
    expect(tok.size).toBe(3);
    for (let i = 0; i < tok.size; i++) expect(tok.sample(i).input_ids.length).toBeLessThanOrEqual(10);
    const row0 = tok.sample(0);
    expect(row0.input_ids).toEqual([...enc('abc'), 2, ...enc('defgh'), 2]);
    expect(row0.position_ids).toEqual([0, 1, 2, 3, 0, 1, 2, 3, 4, 5]);
    expect(row0.labels[0]).toBe(-100);
    expect(row0.labels[4]).toBe(-100);
    expect(row0.labels[5]).toBe(enc('e')[0]);
    const piece = tok.sample(1);
    expect(piece.input_ids).toEqual(enc('klmnopqrst'));
    expect(piece.position_ids).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(piece.labels[0]).toBe(-100);
    expect(piece.labels.slice(1)).toEqual(enc('lmnopqrst'));
    const last = tok.sample(2);
    expect(last.input_ids).toEqual([...enc('ij'), 2, ...enc('u'), 2]);
    expect(last.position_ids).toEqual([0, 1, 2, 0, 1]);
    expect(last.labels).toEqual([-100, ...enc('j'), 2, -100, 2]);
  });
});
