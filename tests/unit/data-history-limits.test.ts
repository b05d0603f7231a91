// The data pipeline's audit fixes (F9, F11, F12), with the character-level test tokenizer: Alpaca "history" (and
// --history_column) as earlier rounds, refused where a format cannot use it; huge fields cut to a character budget
// before tokenizing without changing any kept id; missing columns and unusable files naming the record's fields;
// records of a one-line JSON array told apart by their element index.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { ChatRenderer } from '../../src-main/core/data/chat-template';
import { type Sample, toSample } from '../../src-main/core/data/formats';
import { PrepareError, prepareDataset } from '../../src-main/core/data/prepare';
import { charBudget, encodePrompt, encodeSample } from '../../src-main/core/data/templates';
import { TokReader } from '../../src-main/core/data/tokfile';
import type { Tokenizer } from '../../src-main/core/data/tokenizer/types';
import { promptTurns } from '../../src-main/core/eval/predict';
import { charTok } from '../helpers/char-tokenizer';

const enc = charTok.encode;

let tmp: string;
beforeAll(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-data-fix-'))));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const write = (name: string, lines: string[]) => {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, lines.join('\n'));
  return f;
};
const prepErr = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as PrepareError);

describe('Alpaca history (the LLaMA-Factory / BELLE layout) is earlier rounds', () => {
  const rec = { instruction: 'say hi', input: '', output: 'hi', history: [['q1', 'a1'], ['q2', 'a2']] };
  const turns = [
    { role: 'user', content: 'q1' },
    { role: 'assistant', content: 'a1' },
    { role: 'user', content: 'q2' },
    { role: 'assistant', content: 'a2' },
    { role: 'user', content: 'say hi' },
    { role: 'assistant', content: 'hi' },
  ];

  it('reads "history" (or --history_column) as user/assistant turns before instruction + input / output', () => {
    expect(toSample(rec, 'alpaca')).toEqual({ kind: 'chat', turns });
    expect(toSample(rec, 'alpaca', { historyColumn: 'history' })).toEqual({ kind: 'chat', turns });
    const { history, ...rest } = rec;
    expect(toSample({ ...rest, hist: history }, 'alpaca', { historyColumn: 'hist' })).toEqual({ kind: 'chat', turns });
    // no history, null or [] → a single round, as before
    const one = { kind: 'chat', turns: turns.slice(-2) };
    expect(toSample(rest, 'alpaca')).toEqual(one);
    expect(toSample({ ...rest, history: null }, 'alpaca')).toEqual(one);
    expect(toSample({ ...rest, history: [] }, 'alpaca')).toEqual(one);
    // input joins the instruction on the last round only
    expect(toSample({ ...rec, input: 'x' }, 'alpaca')).toMatchObject({ turns: [...turns.slice(0, 4), { role: 'user', content: 'say hi\nx' }, turns[5]] });
  });

  it('refuses a malformed history', () => {
    expect(() => toSample({ ...rec, history: 'notalist' }, 'alpaca')).toThrow('column "history" must be a list of [question, answer] pairs, not a string');
    expect(() => toSample({ ...rec, history: [['q1']] }, 'alpaca')).toThrow(/"history"\[0\] must be a \[question, answer\] pair of strings, not \["q1"\]/);
    expect(() => toSample({ ...rec, history: [['q1', 'a1'], ['q2', 3]] }, 'alpaca')).toThrow(/"history"\[1\] must be/);
    expect(() => toSample({ ...rec, history: { q: 'a' } }, 'alpaca')).toThrow(/not an object/);
  });

  it('the template lays out the history as a conversation\'s earlier rounds and trains on the last answer', () => {
    const e = encodeSample(toSample(rec, 'alpaca'), 'belle', charTok, { maxSourceLength: 512, maxTargetLength: 64 });
    const round = (q: string, first = false) => enc(`${first ? '' : '\n\n'}Human: \n${q}\n\nAssistant: \n`);
    expect(e.ids).toEqual([...round('q1', true), ...enc('a1'), 2, ...round('q2'), ...enc('a2'), 2, ...round('say hi'), ...enc('hi'), 2]);
    expect(e.mask.filter(Boolean).length).toBe(3);
    // exactly the ShareGPT conversation's ids, whose every answer is trained
    const conv = encodeSample({ ...toSample(rec, 'alpaca'), multiTurn: true } as Sample, 'belle', charTok, { maxSourceLength: 512, maxTargetLength: 64 });
    expect(conv.ids).toEqual(e.ids);
    expect(conv.mask.filter(Boolean).length).toBe(9);
  });

  it('data prepare writes the earlier rounds, names a malformed history by line, and predict prompts the same way', async () => {
    const f = write('alpaca_hist.jsonl', [JSON.stringify(rec), JSON.stringify({ ...rec, history: [] })]);
    const out = path.join(tmp, 'h.tok');
    const r = await prepareDataset({ dataFile: f, out, tokenizer: charTok, maxSourceLength: 512, maxTargetLength: 64 });
    expect(r).toMatchObject({ format: 'alpaca', written: 2 });
    const tok = TokReader.open(out);
    try {
      expect(tok.sample(0).input_ids).toEqual([...enc('q1'), 2, 1, ...enc('a1'), 2, ...enc('q2'), 2, 1, ...enc('a2'), 2, ...enc('say hi'), 2, 1, ...enc('hi'), 2]);
      expect(tok.sample(1).input_ids).toEqual([...enc('say hi'), 2, 1, ...enc('hi'), 2]);
    } finally {
      tok.close();
    }
    const bad = write('alpaca_hist_bad.jsonl', [JSON.stringify(rec), JSON.stringify({ ...rec, history: 'notalist' }), JSON.stringify({ ...rec, history: [['q1']] })]);
    const err = await prepErr(prepareDataset({ dataFile: bad, out: path.join(tmp, 'hb.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, columns: { historyColumn: 'history' } }));
    expect(err).toBeInstanceOf(PrepareError);
    expect(err!.message).toMatch(/alpaca_hist_bad\.jsonl:2: column "history" must be a list of \[question, answer\] pairs/);
    expect(err!.message).toMatch(/alpaca_hist_bad\.jsonl:3: "history"\[0\] must be a \[question, answer\] pair of strings/);
    // predict asks with the same earlier rounds training saw
    expect(promptTurns(rec, 'alpaca')).toEqual(turns.slice(0, 5));
    expect(encodePrompt(promptTurns(rec, 'alpaca'), 'raw', charTok)).toEqual([...enc('q1'), 2, 1, ...enc('a1'), 2, ...enc('q2'), 2, 1, ...enc('a2'), 2, ...enc('say hi'), 2, 1]);
  });

  it('--history_column works for PromptCBLUE records too', () => {
    const s = toSample({ input: 'now', target: 'yes', h: [['before', 'ok']] }, 'promptcblue', { historyColumn: 'h' });
    expect(s).toMatchObject({ turns: [{ content: 'before' }, { content: 'ok' }, { content: 'now' }, { content: 'yes' }] });
    expect(promptTurns({ input: 'now', target: 'yes', h: [['before', 'ok']] }, 'promptcblue', { historyColumn: 'h' })).toHaveLength(3);
  });

  it('--history_column is never silently ignored: refused for ShareGPT and text, and when no record has it', async () => {
    const sg = write('sg.jsonl', [JSON.stringify({ conversations: [{ from: 'human', value: 'a' }, { from: 'gpt', value: 'b' }] })]);
    const e1 = await prepErr(prepareDataset({ dataFile: sg, out: path.join(tmp, 'sg.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, columns: { historyColumn: 'history' } }));
    expect(e1?.message).toMatch(/--history_column "history" cannot be used with the sharegpt format/);
    const txt = write('t.txt', ['some text', 'more text']);
    const e2 = await prepErr(prepareDataset({ dataFile: txt, out: path.join(tmp, 't.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, columns: { historyColumn: 'history' } }));
    expect(e2?.message).toMatch(/cannot be used with the text format/);
    const typo = write('typo.jsonl', [JSON.stringify(rec)]);
    const e3 = await prepErr(prepareDataset({ dataFile: typo, out: path.join(tmp, 'typo.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, columns: { historyColumn: 'histroy' } }));
    expect(e3?.message).toMatch(/no record of .*typo\.jsonl has the history column "histroy".*the first record has: "instruction", "input", "output", "history"/);
    expect(fs.existsSync(path.join(tmp, 'typo.tok'))).toBe(false);
  });
});

/** charTok that remembers the longest text it was asked to tokenize (encode and encodeBatch). */
function spyTok(): Tokenizer & { longest: number } {
  const t = {
    ...charTok,
    longest: 0,
    encode(text: string) {
      t.longest = Math.max(t.longest, text.length);
      return charTok.encode(text);
    },
    async encodeBatch(texts: string[]) {
      return texts.map((x) => t.encode(x));
    },
  };
  return t;
}

describe('a huge field is cut to a character budget before tokenizing, keeping every kept id', () => {
  const huge = 'x'.repeat(3_000_000);
  const opt = { maxSourceLength: 512, maxTargetLength: 64 };

  it('the budget: 64 characters per kept token, at least 64 Ki, plus a 4 Ki margin', () => {
    expect(charBudget(511)).toBe(65536 + 4096);
    expect(charBudget(4095)).toBe(64 * 4095 + 4096);
  });

  it('single answer: prompt and answer, ids and truncation count as if tokenized whole', () => {
    for (const [input, target] of [
      [huge, 'yes'],
      ['q', huge],
      [`${'好'.repeat(100_000)}${huge}`, `😀${huge}`],
    ] as const) {
      const tok = spyTok();
      const e = encodeSample(toSample({ input, target }, 'promptcblue'), 'raw', tok, opt);
      expect(tok.longest).toBeLessThanOrEqual(charBudget(511));
      const src = enc(input);
      const tgt = enc(target);
      expect(e.ids).toEqual([...src.slice(0, 511), 2, 1, ...tgt.slice(0, 62), 2]);
      expect(e.truncationEstimated).toBe(true);
      // one id per code point: the estimate is close to exact (emoji: 2 UTF-16 units, 1 id)
      const exact = src.length - Math.min(src.length, 511) + tgt.length - Math.min(tgt.length, 62);
      expect(Math.abs(e.truncatedTokens - exact) / exact).toBeLessThan(0.01);
    }
  });

  it('never splits a surrogate pair at the cut', () => {
    const tok = spyTok();
    const emoji = '😀'.repeat(100_000); // the budget's last unit would be a high surrogate
    const e = encodeSample(toSample({ input: emoji, target: 'a' }, 'promptcblue'), 'raw', tok, opt);
    expect(e.ids.slice(0, 511)).toEqual(enc(emoji).slice(0, 511));
    expect(e.ids.slice(0, 511).every((id) => id === '😀'.codePointAt(0)! + 10)).toBe(true);
  });

  it('multi-turn, plain text and chat_template too', () => {
    const conv = toSample({ conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: huge }, { from: 'human', value: 'z' }, { from: 'gpt', value: 'w' }] }, 'sharegpt');
    let tok = spyTok();
    const m = encodeSample(conv, 'baichuan-chat', tok, opt);
    expect(tok.longest).toBeLessThanOrEqual(charBudget(62));
    // each round keeps the seed's rule (the answer cut to max_target_length − 2), so the second round still fits
    expect(m.ids).toEqual([195, ...enc('x'), 196, ...enc(huge).slice(0, 62), 2, 195, ...enc('z'), 196, ...enc('w'), 2]);
    expect(m.truncatedTokens).toBe(huge.length - 62);
    tok = spyTok();
    const t = encodeSample({ kind: 'text', text: huge }, 'raw', tok, opt);
    expect(tok.longest).toBeLessThanOrEqual(charBudget(575));
    expect(t.ids).toEqual([...enc(huge).slice(0, 575), 2]);
    expect(t.truncatedTokens).toBe(huge.length - 575);
    const renderer: ChatRenderer = {
      id: 'plain',
      render: (msgs, gen) => msgs.map((x) => `<${x.role}>${x.content}</${x.role}>`).join('') + (gen ? '<assistant>' : ''),
    };
    tok = spyTok();
    const c = encodeSample(toSample({ input: huge, target: 'ok' }, 'promptcblue'), 'chat_template', tok, { ...opt, chatTemplate: renderer });
    // the conversation is tokenized whole: the cut message plus the template's text around it
    expect(tok.longest).toBeLessThanOrEqual(charBudget(576) + 64);
    expect(c.ids).toEqual([...enc(`<user>${huge}`).slice(0, 511), ...enc('ok</assistant>')]);
  });

  it('data prepare: ordinary samples unchanged, the huge one bounded and counted as an estimate', async () => {
    const small = { input: '问题：这是一个普通的样本', target: '答' };
    const f = write('giant.jsonl', [JSON.stringify(small), JSON.stringify({ input: huge, target: 'yes' }), JSON.stringify(small)]);
    const tok = spyTok();
    const out = path.join(tmp, 'g.tok');
    const r = await prepareDataset({ dataFile: f, out, tokenizer: tok, ...opt });
    expect(tok.longest).toBeLessThanOrEqual(charBudget(511));
    expect(r.truncated).toEqual({ samples: 1, tokens: huge.length - 511, estimated: 1 });
    const rd = TokReader.open(out);
    try {
      expect(rd.sample(0).input_ids).toEqual([...enc(small.input), 2, 1, ...enc('答'), 2]);
      expect(rd.sample(1).input_ids).toEqual([...enc(huge).slice(0, 511), 2, 1, ...enc('yes'), 2]);
    } finally {
      rd.close();
    }
  });
});

describe('messages name the record\'s columns and a JSON array\'s element', () => {
  it('a missing column lists the record\'s fields', () => {
    expect(() => toSample({ input: 'x', target: 'y' }, 'columns', { promptColumn: 'inptu', responseColumn: 'target' })).toThrow('missing column "inptu" (the prompt column); the record has: "input", "target"');
    expect(() => toSample({ instruction: 'a' }, 'alpaca')).toThrow(/missing column "output" \(Alpaca\); the record has: "instruction"/);
  });

  it('"no usable record" says why, with the fields', async () => {
    const f = write('allmissing.jsonl', Array.from({ length: 4 }, () => JSON.stringify({ question: 'q', answer: 'a' })));
    const err = await prepErr(prepareDataset({ dataFile: f, out: path.join(tmp, 'am.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, onError: 'skip', columns: { promptColumn: 'inptu', responseColumn: 'answer' } }));
    expect(err?.message).toMatch(/no usable record in .*allmissing\.jsonl \(4 skipped; the first, .*allmissing\.jsonl:1: missing column "inptu" \(the prompt column\); the record has: "question", "answer"\)/);
    const num = write('num.jsonl', [JSON.stringify({ input: 1, target: 'a', type: 'x' })]);
    const err2 = await prepErr(prepareDataset({ dataFile: num, out: path.join(tmp, 'n.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 3, onError: 'skip' }));
    expect(err2?.message).toMatch(/no usable record .*num\.jsonl:1: column "input" must be a string, not number\); the first record has: "input", "target", "type"$/);
  });

  it('bad elements of a one-line JSON array are told apart by index', async () => {
    const ok = (i: number) => JSON.stringify({ input: `hello ${i}`, target: 'yes' });
    const f = write('array_elem_num.json', [`[${ok(0)}, ${ok(1)}, ${ok(2)}, 42, null, "str", {"input": "x"}, ${ok(3)}]`]);
    const err = await prepErr(prepareDataset({ dataFile: f, out: path.join(tmp, 'arr.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16 }));
    expect(err?.errors).toEqual([
      { line: 1, element: 3, reason: 'a record must be a JSON object' },
      { line: 1, element: 4, reason: 'a record must be a JSON object' },
      { line: 1, element: 5, reason: 'a record must be a JSON object' },
      { line: 1, element: 6, reason: expect.stringMatching(/missing column "target"/) },
    ]);
    expect(err?.message).toMatch(/array_elem_num\.json:1 \(element 3\): a record must be a JSON object\n.*array_elem_num\.json:1 \(element 4\)/);
    expect(err?.message).toMatch(/array_elem_num\.json:1 \(element 6\): missing column "target"/);
  });
});
