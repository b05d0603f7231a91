// The dataset side as users of LLaMA-Factory / Axolotl / TRL bring their data, with the character-level test
// tokenizer: chat messages ({"messages": [{"role", "content"}]}) and TRL's prompt/completion, system prompts (a
// system turn or a "system" field) trained as inference prompts them, tool-calling records refused by name,
// multi-turn truncation per round, earlier rounds left out oldest first, the chat_template of a run's model folder,
// the format told by the first record with a known shape and records of another format named as such; files as
// a JSON object wrapping the list, one-line JSON arrays and lines longer than a read chunk, CSV/TSV with RFC 4180
// quoting, gzip, Parquet refused; and the wizard's preview reporting exactly what `data prepare` does.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import zlib from 'node:zlib';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type ChatRenderer, loadChatTemplate } from '../../src-main/core/data/chat-template';
import { detectFormat, sampleOf, toSample } from '../../src-main/core/data/formats';
import { PrepareError, prepareDataset } from '../../src-main/core/data/prepare';
import { previewDataset } from '../../src-main/core/data/preview';
import { type RawRecord, detectFileKind, readRecords } from '../../src-main/core/data/reader';
import { TEMPLATES, type TemplateName, encodePrompt, encodeSample } from '../../src-main/core/data/templates';
import { TokReader } from '../../src-main/core/data/tokfile';
import { promptTurns } from '../../src-main/core/eval/predict';
import { charTok } from '../helpers/char-tokenizer';
import { llamaSpModel, writeFolder } from '../fixtures/tokenizers/fixtures';
import { loadTokenizer } from '../../src-main/core/data/tokenizer/index';

const enc = charTok.encode;
const dec = charTok.decode;

let tmp: string;
beforeAll(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-data-audit-'))));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const file = (name: string, content: string | Buffer) => {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, content);
  return f;
};
async function collect(f: string): Promise<RawRecord[]> {
  const out: RawRecord[] = [];
  for await (const r of readRecords(f)) out.push(r);
  return out;
}
const values = (rs: RawRecord[]) => rs.map((r) => ('value' in r ? r.value : r));
const prepErr = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as PrepareError);
const trainedText = (e: { ids: number[]; mask: boolean[] }) => dec(e.ids.filter((_, i) => e.mask[i]));
const opt = { maxSourceLength: 512, maxTargetLength: 512 };
const builtins = TEMPLATES.filter((t) => t !== 'chat_template') as TemplateName[];

describe('chat messages, TRL prompt/completion and system prompts', () => {
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'yo' },
    { role: 'user', content: 'x' },
    { role: 'assistant', content: 'z' },
  ];

  it('reads {"messages": [{"role", "content"}]} (OpenAI / TRL / LLaMA-Factory) as a multi-turn conversation', () => {
    expect(detectFormat({ messages })).toBe('sharegpt');
    expect(toSample({ messages }, 'sharegpt')).toEqual({ kind: 'chat', turns: messages, multiTurn: true });
    // ShareGPT with a "system" field (LLaMA-Factory's column) and Gemini's "model" speaker
    const sg = { conversations: [{ from: 'human', value: 'hi' }, { from: 'model', value: 'yo' }], system: 'Be brief.' };
    expect(toSample(sg, 'sharegpt')).toEqual({ kind: 'chat', turns: messages.slice(0, 3), multiTurn: true });
  });

  it('an empty system turn or field is no system prompt; two different ones, tools and odd structures are named', () => {
    const conv = (c: unknown[], more: Record<string, unknown> = {}) => toSample({ conversations: c, ...more }, 'sharegpt');
    const hu = { from: 'human', value: 'a' };
    const gpt = { from: 'gpt', value: 'b' };
    expect(conv([{ from: 'system', value: '' }, hu, gpt])).toEqual({ kind: 'chat', turns: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }], multiTurn: true });
    expect(conv([hu, gpt], { system: '' })).toMatchObject({ turns: [{ role: 'user' }, { role: 'assistant' }] });
    expect(conv([{ from: 'system', value: 'S' }, hu, gpt], { system: 'S' })).toMatchObject({ turns: [{ role: 'system', content: 'S' }, {}, {}] });
    expect(() => conv([{ from: 'system', value: 'S' }, hu, gpt], { system: 'T' })).toThrow(/both a "system" field and a different system message/);
    expect(() => conv([hu, { from: 'function_call', value: '{"name": "f"}' }, { from: 'observation', value: '1' }, gpt])).toThrow(/conversations\[1\]: "function_call" turns and tool calls: tool calling is not supported/);
    expect(() => conv([hu, gpt], { tools: '[{"name": "f"}]' })).toThrow(/tool descriptions \("tools"\)/);
    expect(conv([hu, gpt], { tools: '' })).toMatchObject({ kind: 'chat' });
    expect(() => toSample({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: null, tool_calls: [{ id: '1' }] }] }, 'sharegpt')).toThrow(/messages\[1\]: "assistant" turns and tool calls/);
    expect(() => toSample({ messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }] }, { role: 'assistant', content: 'b' }] }, 'sharegpt')).toThrow(/messages\[0\] needs a string "value" \(or "content"\), not a list \(content parts/);
    // SlimOrca-style records carry both: "conversations" is read (LLaMA-Factory's default column)
    expect(toSample({ conversations: [hu, gpt], messages: [{ role: 'user', content: 'other' }, gpt] }, 'sharegpt')).toMatchObject({ turns: [{ content: 'a' }, { content: 'b' }] });
    expect(() => conv([hu, { from: 'gpt', value: '  ' }])).toThrow(/conversations\[1\] is empty/);
    expect(() => conv([hu, gpt, { from: 'system', value: 'late' }])).toThrow(/conversations\[2\]: a system message may only come first/);
    expect(() => conv([hu, { from: 'gpt', value: 1 }])).toThrow(/conversations\[1\] needs a string "value" \(or "content"\), not number/);
  });

  it('a message\'s "weight": 0 keeps an answer as context without training it (Axolotl / FastChat ShareGPT)', () => {
    const rec = { conversations: [{ from: 'human', value: 'x', weight: 0 }, { from: 'gpt', value: 'y', weight: 0 }, { from: 'human', value: 'z' }, { from: 'gpt', value: 'w', weight: 1 }] };
    const s = toSample(rec, 'sharegpt');
    expect(s).toMatchObject({ turns: [{ role: 'user' }, { role: 'assistant', train: false }, { role: 'user' }, { role: 'assistant' }] });
    const b = encodeSample(s, 'baichuan-chat', charTok, opt);
    expect(b.ids).toEqual([195, ...enc('x'), 196, ...enc('y'), 2, 195, ...enc('z'), 196, ...enc('w'), 2]);
    expect(trainedText(b)).toBe('w<2>');
    const r: ChatRenderer = { id: 'plain', render: (msgs, gen) => msgs.map((x) => `<${x.role}>${x.content}</${x.role}>`).join('') + (gen ? '<assistant>' : '') };
    expect(trainedText(encodeSample(s, 'chat_template', charTok, { ...opt, chatTemplate: r }))).toBe('w</assistant>');
    expect(() => toSample({ conversations: [rec.conversations[0], { from: 'gpt', value: 'y', weight: 0.5 }] }, 'sharegpt')).toThrow(/conversations\[1\]: "weight" must be 0 or 1, not 0\.5/);
  });

  it('TRL prompt/completion: strings are prompt/response columns; message lists train the completion only', () => {
    expect(detectFormat({ prompt: 'The sky is', completion: ' blue.' })).toBe('columns');
    expect(toSample({ prompt: 'The sky is', completion: ' blue.' }, 'columns')).toEqual({ kind: 'chat', turns: [{ role: 'user', content: 'The sky is' }, { role: 'assistant', content: ' blue.' }] });
    const rec = { prompt: [{ role: 'user', content: 'q1' }, { role: 'assistant', content: 'a1' }, { role: 'user', content: 'q2' }], completion: [{ role: 'assistant', content: 'a2' }] };
    expect(detectFormat(rec)).toBe('sharegpt');
    const s = toSample(rec, 'sharegpt');
    expect(s).toEqual({ kind: 'chat', turns: [{ role: 'user', content: 'q1' }, { role: 'assistant', content: 'a1' }, { role: 'user', content: 'q2' }, { role: 'assistant', content: 'a2' }] });
    expect(trainedText(encodeSample(s, 'belle', charTok, opt))).toBe('a2<2>');
    expect(() => toSample({ ...rec, completion: [] }, 'sharegpt')).toThrow(/ends with a user turn/);
  });

  it('Alpaca reads its "system" field, for training and for predict', () => {
    const rec = { system: 'Be brief.', instruction: 'say hi', input: '', output: 'hi', history: [['q1', 'a1']] };
    const s = toSample(rec, 'alpaca');
    expect(s).toMatchObject({ turns: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'q1' }, {}, { role: 'user', content: 'say hi' }, { role: 'assistant', content: 'hi' }] });
    expect(promptTurns(rec, 'alpaca')).toEqual((s as { turns: unknown[] }).turns.slice(0, -1));
    expect(() => toSample({ ...rec, system: 3 }, 'alpaca')).toThrow(/column "system" must be a string/);
  });

  it('every built-in template trains the system prompt and the earlier rounds where inference prompts them', () => {
    // training's ids up to the answer are exactly the prompt chat/predict feed (before: the system prompt was
    // dropped by every template but vicuna, and Baichuan-chat dropped the history of single-answer samples)
    const single = toSample({ system: 'Be brief.', instruction: 'say hi', output: 'hi', history: [['q1', 'a1']] }, 'alpaca');
    const conv = toSample({ messages: messages.slice(0, 3) }, 'sharegpt');
    for (const name of builtins) {
      for (const s of [single, conv]) {
        const turns = (s as { turns: { role: 'system' | 'user' | 'assistant'; content: string }[] }).turns;
        const e = encodeSample(s, name, charTok, { maxSourceLength: 64, maxTargetLength: 16 });
        const p = encodePrompt(turns.slice(0, -1), name, charTok, { maxSourceLength: 64 });
        expect(e.ids.slice(0, p.length), `${name}: ${dec(e.ids)}`).toEqual(p);
        expect(dec(e.ids)).toContain('Be brief.');
        expect(e.mask.slice(0, p.length).filter(Boolean).length).toBeLessThanOrEqual(1); // raw/chatglm train the bos/sop before the answer
      }
    }
    // multi-turn: the system prompt opens the first round
    const m = encodeSample(toSample({ messages }, 'sharegpt'), 'chatglm2', charTok, opt);
    expect(dec(m.ids)).toBe('<4><5>Be brief.\n[Round 1]\n\n问：hi\n\n答：yo<2>[Round 2]\n\n问：x\n\n答：z<2>');
    const b = encodeSample(toSample({ messages }, 'sharegpt'), 'baichuan-chat', charTok, opt);
    expect(b.ids).toEqual([...enc('Be brief.'), 195, ...enc('hi'), 196, ...enc('yo'), 2, 195, ...enc('x'), 196, ...enc('z'), 2]);
    expect(trainedText(b)).toBe('yo<2>z<2>');
  });
});

describe('truncation of conversations', () => {
  const conv = (...texts: string[]) => toSample({ conversations: texts.map((value, i) => ({ from: i % 2 ? 'gpt' : 'human', value })) }, 'sharegpt');

  it('multi-turn: each round keeps the seed rule, whole rounds are kept while they fit, never a cut answer', () => {
    const long = 'u'.repeat(100);
    // a first question longer than max_source_length: before, the sample was 24 prompt tokens with no label
    const e = encodeSample(conv(long, 'answers', 'q2', 'a2'), 'raw', charTok, { maxSourceLength: 16, maxTargetLength: 8 });
    expect(e.ids).toEqual([...enc(long).slice(0, 15), 2, 1, ...enc('answer'), 2]);
    expect(trainedText(e)).toBe('<1>answer<2>');
    // 24 tokens: the second round (7) does not fit max_source_length + max_target_length and is left out
    expect(e.truncatedTokens).toBe(100 - 15 + (7 - 6) + (2 + 2 + 2 + 1));
    // the second round fits: both answers trained; a third that does not fit is left out whole
    const f = encodeSample(conv('q1', 'a1', 'q2', 'a2', 'q3', 'a3a3a3'), 'raw', charTok, { maxSourceLength: 10, maxTargetLength: 6 });
    expect(dec(f.ids)).toBe('q1<2><1>a1<2>q2<2><1>a2<2>');
    expect(f.truncatedTokens).toBe(2 + 2 + 6 + 1);
    // one round: exactly the single-answer (seed) layout
    const one = encodeSample(conv('abcdefghij', '0123456789'), 'raw', charTok, { maxSourceLength: 5, maxTargetLength: 6 });
    expect(one.ids).toEqual([...enc('abcd'), 2, 1, ...enc('0123'), 2]);
  });

  it('single answer with history: the oldest rounds are left out first, the question is kept; predict does the same', () => {
    const rec = { instruction: 'QUESTION', output: 'ok', history: [['old'.repeat(5), 'x'.repeat(10)], ['q2', 'a2']] };
    const e = encodeSample(toSample(rec, 'alpaca'), 'raw', charTok, { maxSourceLength: 20, maxTargetLength: 8 });
    // earlier rounds laid out as a conversation's (eos after each answer): the whole prompt (15 + 2 + 10 + 1 + 2 +
    // 2 + 2 + 1 + 8 = 43 tokens) does not fit 19: the first round goes
    expect(dec(e.ids)).toBe('q2<2><1>a2<2>QUESTION<2><1>ok<2>');
    expect(e.truncatedTokens).toBe(43 - 15);
    expect(encodePrompt(promptTurns(rec, 'alpaca'), 'raw', charTok, { maxSourceLength: 20 })).toEqual(e.ids.slice(0, 17));
    // a question too long on its own is cut at its end, as the seed cuts every prompt
    const q = encodeSample(toSample({ ...rec, instruction: 'Q'.repeat(30) }, 'alpaca'), 'raw', charTok, { maxSourceLength: 20, maxTargetLength: 8 });
    expect(dec(q.ids)).toBe(`${'Q'.repeat(19)}<2><1>ok<2>`);
    // Baichuan-chat: earlier rounds as its 195/196 rounds, left out the same way
    const b = encodeSample(toSample(rec, 'alpaca'), 'baichuan-chat', charTok, { maxSourceLength: 20, maxTargetLength: 8 });
    expect(b.ids).toEqual([195, ...enc('q2'), 196, ...enc('a2'), 2, 195, ...enc('QUESTION'), 196, ...enc('ok'), 2]);
  });

  it('chat_template: per-round truncation, history left out oldest first, the system prompt kept', () => {
    const r: ChatRenderer = { id: 'plain', render: (msgs, gen) => msgs.map((x) => `<${x.role}>${x.content}</${x.role}>`).join('') + (gen ? '<assistant>' : '') };
    const long = 'u'.repeat(100);
    const m = encodeSample(conv(long, 'answer', 'q2', 'a2'), 'chat_template', charTok, { maxSourceLength: 30, maxTargetLength: 60, chatTemplate: r });
    expect(dec(m.ids)).toBe(`<user>${'u'.repeat(23)}answer</assistant><user>q2</user><assistant>a2</assistant>`);
    expect(trainedText(m)).toBe('answer</assistant>a2</assistant>');
    // a long answer is cut to max_target_length − 2 and keeps the template's closing text (before: cut off with it,
    // so long answers never trained their end-of-turn token)
    const cut = encodeSample(conv('q', 'a'.repeat(100), 'q2', 'a2'), 'chat_template', charTok, { maxSourceLength: 40, maxTargetLength: 60, chatTemplate: r });
    expect(dec(cut.ids)).toBe(`<user>q</user><assistant>${'a'.repeat(58)}</assistant>`);
    expect(trainedText(cut)).toBe(`${'a'.repeat(58)}</assistant>`);
    const rec = { system: 'S', instruction: 'Q', output: 'ok', history: [['old'.repeat(5), 'x'], ['q2', 'a2']] };
    const h = encodeSample(toSample(rec, 'alpaca'), 'chat_template', charTok, { maxSourceLength: 90, maxTargetLength: 20, chatTemplate: r });
    expect(dec(h.ids)).toBe('<system>S</system><user>q2</user><assistant>a2</assistant><user>Q</user><assistant>ok</assistant>');
    expect(encodePrompt(promptTurns(rec, 'alpaca'), 'chat_template', charTok, { maxSourceLength: 90, chatTemplate: r })).toEqual(enc('<system>S</system><user>q2</user><assistant>a2</assistant><user>Q</user><assistant>'));
  });
});

describe('chat_template with a SentencePiece tokenizer', () => {
  // Llama-2-chat's template: "[INST] q [/INST]" + " answer </s>"; every piece tokenized alone got SentencePiece's
  // "▁" in front (an extra id 29871 before each answer and round), ids no inference ever feeds
  const llama2 =
    "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}" +
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + (sys if loop.first else '') + m['content'] | trim + ' [/INST]' }}{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}";

  it('tokenizes the conversation whole: training ids are the rendered text\'s ids, the prompt is what inference feeds', async () => {
    const dir = writeFolder(path.join(tmp, 'sp-llama2'), {
      'tokenizer.model': await llamaSpModel(),
      'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', chat_template: llama2 },
    });
    const tok = await loadTokenizer(dir);
    const r = loadChatTemplate(dir);
    const turns = [
      { role: 'system' as const, content: 'Answer briefly.' },
      { role: 'user' as const, content: 'What is the capital of France?' },
      { role: 'assistant' as const, content: 'Paris.' },
      { role: 'user' as const, content: 'And of Italy?' },
      { role: 'assistant' as const, content: 'Rome.' },
    ];
    const e = encodeSample({ kind: 'chat', turns, multiTurn: true }, 'chat_template', tok, { maxSourceLength: 256, maxTargetLength: 64, chatTemplate: r });
    const text = r.render(turns, false);
    expect(e.ids).toEqual(tok.encode(text));
    // the trained ids are exactly the answers and their end-of-turn text, nothing of the prompts
    const trained = e.ids.filter((_, i) => e.mask[i]);
    expect(tok.decode(trained).replace(/\s+/g, '')).toBe('Paris.</s>Rome.</s>');
    // the prompt inference feeds for the second question is exactly training's ids up to its answer
    const p = encodePrompt(turns.slice(0, 4), 'chat_template', tok, { chatTemplate: r });
    expect(e.ids.slice(0, p.length)).toEqual(p);
    expect(tok.decode(p.filter((_, i) => e.mask[i])).replace(/\s+/g, '')).toBe('Paris.</s>');
    expect(e.mask[p.length]).toBe(true);
  });
});

describe('data prepare', () => {
  it('reads the chat_template of the model folder a run names (runs prepare their data with the folder only)', async () => {
    const dir = path.join(tmp, 'chatml');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(
      path.join(dir, 'tokenizer_config.json'),
      JSON.stringify({ eos_token: '</s>', chat_template: "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}" }),
    );
    const f = file('chat.jsonl', JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'yo' }] }));
    const out = path.join(tmp, 'chat.tok');
    // what runs/service.ts passes: no chatTemplate, the model folder in `source`
    const r = await prepareDataset({ dataFile: f, out, tokenizer: charTok, template: 'chat_template', maxSourceLength: 64, maxTargetLength: 16, source: { model: dir } });
    expect(r.written).toBe(1);
    const tok = TokReader.open(out);
    try {
      expect(dec(tok.sample(0).input_ids)).toBe('<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n');
    } finally {
      tok.close();
    }
    expect(loadChatTemplate(dir).id).toBeTruthy();
    const nochat = path.join(tmp, 'nochat-run');
    fs.mkdirSync(nochat, { recursive: true });
    fs.writeFileSync(path.join(nochat, 'tokenizer_config.json'), '{}');
    const e = await prepErr(prepareDataset({ dataFile: f, out: path.join(tmp, 'nc.tok'), tokenizer: charTok, template: 'chat_template', maxSourceLength: 64, maxTargetLength: 16, modelDir: nochat }));
    expect(e?.message).toMatch(/has no chat_template/);
  });

  it('the format comes from the first record with a known shape; records of another format are named as such', async () => {
    const f = file('mixed.jsonl', [JSON.stringify({ version: 2 }), JSON.stringify({ instruction: 'a', output: 'b' }), JSON.stringify({ conversations: [{ from: 'human', value: 'q' }, { from: 'gpt', value: 'a' }] }), JSON.stringify({ instruction: 'c', output: 'd' })].join('\n'));
    const err = await prepErr(prepareDataset({ dataFile: f, out: path.join(tmp, 'mixed.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16 }));
    expect(err?.errors.map((e) => e.line)).toEqual([1, 3]);
    expect(err?.message).toMatch(/mixed\.jsonl:1: missing column "instruction" \(Alpaca\); the record has: "version"/);
    expect(err?.message).toMatch(/mixed\.jsonl:3: missing column "instruction" \(Alpaca\).* — this record looks like ShareGPT \/ messages, but the file is read as Alpaca \{"instruction", "output"\} \(detected from line 2\); one file holds one format/);
    const r = await prepareDataset({ dataFile: f, out: path.join(tmp, 'mixed.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16, onError: 'skip' });
    expect(r).toMatchObject({ format: 'alpaca', written: 2, skipped: 2 });
    expect(() => sampleOf({ conversations: [] }, 'alpaca', {}, '--format')).toThrow(/\(--format\); one file holds one format/);
  });

  it('CSV and TSV: a header row, quoted fields (separators, "" and line breaks), JSON lists in cells', async () => {
    const csv = file(
      'alpaca.csv',
      '\ufeffinstruction,input,output,history\r\n"Say ""hi""",,"hello, you",\r\nTranslate,"a\r\nb",x,"[[""q"", ""a""]]"\r\n\r\n',
    );
    expect(await detectFileKind(csv)).toBe('csv');
    expect(values(await collect(csv))).toEqual([
      { instruction: 'Say "hi"', input: '', output: 'hello, you', history: '' },
      { instruction: 'Translate', input: 'a\nb', output: 'x', history: '[["q", "a"]]' },
    ]);
    const r = await prepareDataset({ dataFile: csv, out: path.join(tmp, 'csv.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16 });
    expect(r).toMatchObject({ format: 'alpaca', written: 2 });
    const tok = TokReader.open(path.join(tmp, 'csv.tok'));
    try {
      expect(dec(tok.sample(1).input_ids)).toBe('q<2><1>a<2>Translate\na\nb<2><1>x<2>');
    } finally {
      tok.close();
    }
    // before: a .csv was read as plain text, each row a pre-training sample
    const tsv = file('sg.tsv', 'conversations\tid\n"[{""from"": ""human"", ""value"": ""a\\tb""}, {""from"": ""gpt"", ""value"": ""c""}]"\t"7\t8"\nx\n');
    expect(await detectFileKind(tsv)).toBe('tsv');
    const recs = await collect(tsv);
    expect(recs[0]).toMatchObject({ line: 2, value: { id: '7\t8' } });
    expect(recs[1]).toEqual({ line: 3, error: expect.stringMatching(/^this row has 1 field\(s\), the header has 2 \(conversations, id\)/) });
    expect(toSample((recs[0] as { value: Record<string, unknown> }).value, 'sharegpt')).toMatchObject({ turns: [{ content: 'a\tb' }, { content: 'c' }] });
    expect(() => toSample({ conversations: "[{'from': 'human'}]" }, 'sharegpt')).toThrow(/not a JSON list .*must be JSON \(double quotes, not Python's repr\)/);
    // pandas' unnamed index column, an unclosed quote, a repeated header name
    expect(values(await collect(file('idx.csv', ',prompt,response\n0,a,b\n')))).toEqual([{ column_1: '0', prompt: 'a', response: 'b' }]);
    expect((await collect(file('open.csv', 'prompt,response\n"a,b\n'))).at(-1)).toMatchObject({ line: 2, error: expect.stringMatching(/quoted field is not closed/) });
    expect(await collect(file('dup.csv', 'a,a\n1,2\n'))).toEqual([{ line: 1, error: 'the header row names the column "a" twice' }]);
  });
});

describe('files', () => {
  it('a JSON object wrapping the list of records ({"data": [...]}), pretty-printed or on one line', async () => {
    const recs = [{ input: 'a', target: 'b' }, { input: 'c', target: 'd' }];
    const pretty = file('wrap.json', JSON.stringify({ version: '1.0', data: recs }, null, 2));
    expect(await detectFileKind(pretty)).toBe('json-object');
    const got = await collect(pretty);
    expect(got).toEqual([
      { line: 4, element: 0, value: recs[0] },
      { line: 8, element: 1, value: recs[1] },
    ]);
    const one = file('wrap1.json', JSON.stringify({ data: recs }));
    expect(await collect(one)).toEqual([
      { line: 1, element: 0, value: recs[0] },
      { line: 1, element: 1, value: recs[1] },
    ]);
    expect(await collect(file('empty-wrap.json', '{"data": []}'))).toEqual([]);
    // a single pretty-printed record is one record, lists inside it stay its fields
    const single = { conversations: [{ from: 'human', value: 'a' }, { from: 'gpt', value: 'b' }], system: 's' };
    expect(values(await collect(file('single.json', JSON.stringify(single, null, 2))))).toEqual([single]);
    const cblue = { input: 'a', target: 'b', answer_choices: ['x', 'y'] };
    expect(values(await collect(file('cblue1.json', JSON.stringify(cblue, null, 4))))).toEqual([cblue]);
    // pretty-printed records one after another (`jq .` output): each is a record, named by the line it starts on
    const jq = file('jq.json', [JSON.stringify(recs[0], null, 2), JSON.stringify(cblue, null, 2)].join('\n'));
    expect(await collect(jq)).toEqual([
      { line: 1, value: recs[0] },
      { line: 5, value: cblue },
    ]);
    // two lists of records: the first is read, the second named
    const two = await collect(file('two.json', JSON.stringify({ train: recs, test: recs }, null, 1)));
    expect(two.at(-1)).toMatchObject({ error: expect.stringMatching(/second list of records, "test", besides "train"/) });
    const cut = await collect(file('cut.json', '{\n "data": [\n  {"input": "a", "target": "b"},\n  {"input": "c"'));
    expect(cut.at(-1)).toMatchObject({ line: 4, element: 1, error: 'the JSON list "data" is not closed (truncated file?)' });
    // prepare reads it like any other file
    const r = await prepareDataset({ dataFile: pretty, out: path.join(tmp, 'wrap.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16 });
    expect(r).toMatchObject({ format: 'promptcblue', written: 2 });
  });

  it('a one-line JSON array and JSONL lines longer than a read chunk, multi-byte characters and CR at the chunk edge', async () => {
    const MiB = 1 << 20;
    // 3 MiB of elements on one line: each read chunk ends inside an element
    const big = Array.from({ length: 3000 }, (_, i) => ({ input: `第${i}条 ${'好'.repeat(300)}`, target: 'ok' }));
    const arr = file('one-line.json', JSON.stringify(big));
    expect(fs.statSync(arr).size).toBeGreaterThan(2 * MiB);
    const got = await collect(arr);
    expect(got.length).toBe(3000);
    expect(got.every((r, i) => r.line === 1 && r.element === i && 'value' in r && (r.value as { input: string }).input === big[i]!.input)).toBe(true);
    // a JSONL line of 2.5 MiB between short ones; a 3-byte character split by the 1 MiB chunk boundary
    const pad = 'a'.repeat(MiB - 1 - '{"text": "'.length);
    const huge = `${pad}好${'b'.repeat(1.5 * MiB)}`;
    const jl = file('huge.jsonl', `{"text": "${huge}"}\n{"text": "small"}\n`);
    const recs = await collect(jl);
    expect(recs.map((r) => r.line)).toEqual([1, 2]);
    expect((recs[0] as { value: { text: string } }).value.text).toBe(huge);
    // a .txt whose CRLF straddles the chunk boundary: no stray CR in the text
    const line1 = 'x'.repeat(MiB - 1);
    const txt = file('crlf.txt', `${line1}\r\nsecond\r\n`);
    expect(values(await collect(txt))).toEqual([{ text: line1 }, { text: 'second' }]);
  });

  it('a one-line JSON array is streamed: the line is never held whole (before: the whole file as one string)', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const MiB = 1 << 20;
    const rec = JSON.stringify({ instruction: 'x'.repeat(200), output: 'y' });
    const n = Math.ceil((40 * MiB) / (rec.length + 1));
    const f = path.join(tmp, 'forty.json');
    const fd = fs.openSync(f, 'w');
    fs.writeSync(fd, '[');
    for (let i = 0; i < n; i += 10_000) fs.writeSync(fd, Array.from({ length: Math.min(10_000, n - i) }, () => rec).join(',') + (i + 10_000 < n ? ',' : ''));
    fs.writeSync(fd, ']');
    fs.closeSync(fd);
    gc();
    const base = process.memoryUsage().heapUsed;
    let peak = 0;
    let count = 0;
    for await (const r of readRecords(f)) {
      if (count++ % 50_000 === 25_000) {
        gc();
        peak = Math.max(peak, process.memoryUsage().heapUsed - base);
      }
      if (!('value' in r)) throw new Error(JSON.stringify(r));
    }
    expect(count).toBe(n);
    expect(peak).toBeLessThan(8 * MiB);
  });

  it('gzip-compressed files are read by their content; a damaged one is named; Parquet is refused with a hint', async () => {
    const lines = Array.from({ length: 50 }, (_, i) => JSON.stringify({ input: `q${i}`, target: `a${i}` })).join('\n');
    const gz = file('train.jsonl.gz', zlib.gzipSync(lines));
    expect(await detectFileKind(gz)).toBe('jsonl');
    expect((await collect(gz)).length).toBe(50);
    const r = await prepareDataset({ dataFile: gz, out: path.join(tmp, 'gz.tok'), tokenizer: charTok, maxSourceLength: 64, maxTargetLength: 16 });
    expect(r).toMatchObject({ format: 'promptcblue', written: 50 });
    expect(await detectFileKind(file('arr.json.gz', zlib.gzipSync('[{"input": "a", "target": "b"}]')))).toBe('json-array');
    expect(await detectFileKind(file('t.csv.gz', zlib.gzipSync('prompt,response\na,b\n')))).toBe('csv');
    const whole = zlib.gzipSync(lines.repeat(200));
    const damaged = file('damaged.jsonl.gz', whole.subarray(0, whole.length - 64));
    const d = await collect(damaged);
    expect(d.at(-1)).toMatchObject({ error: expect.stringMatching(/the gzip data is damaged .*the rest of the file cannot be read/) });
    const pq = file('train.parquet', Buffer.concat([Buffer.from('PAR1'), Buffer.alloc(100, 1)]));
    await expect(detectFileKind(pq)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/is not a text dataset: it holds binary content \(a Parquet file\)/), hint: expect.stringMatching(/read_parquet/) });
  });
});

describe('the preview shows what training uses', () => {
  it('rows, trained text and bad records agree with data prepare', async () => {
    const lines = [
      JSON.stringify({ note: 'exported by tool x' }),
      JSON.stringify({ messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'hi' }, { role: 'assistant', content: 'yo' }] }),
      JSON.stringify({ instruction: 'a', output: 'b' }),
      JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(40) }, { role: 'assistant', content: 'ok' }] }),
      JSON.stringify({ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }, { role: 'user', content: 'q2' }, { role: 'assistant', content: 'a2' }] }),
    ];
    const f = file('preview.jsonl', lines.join('\n'));
    const o = { maxSourceLength: 24, maxTargetLength: 8 };
    const r = await prepareDataset({ dataFile: f, out: path.join(tmp, 'pv.tok'), tokenizer: charTok, template: 'vicuna', ...o, onError: 'skip' });
    const p = await previewDataset({ file: f, template: 'vicuna', tokenizer: charTok, rows: 5, ...o });
    expect(p.format).toBe('sharegpt');
    expect(p.errors).toEqual(r.errors);
    expect(p.errorCount).toBe(r.errorCount);
    expect(p.errors.map((e) => e.line)).toEqual([1, 3]);
    const tok = TokReader.open(path.join(tmp, 'pv.tok'));
    try {
      expect(p.rows.map((x) => x.line)).toEqual([2, 4, 5]);
      expect(tok.size).toBe(3);
      for (let i = 0; i < tok.size; i++) {
        const s = tok.sample(i);
        expect(p.rows[i]!.segments.map((g) => g.text).join('')).toBe(dec(s.input_ids));
        expect(p.rows[i]!.segments.filter((g) => g.trained).map((g) => g.text).join('')).toBe(dec(s.input_ids.filter((_, j) => s.labels[j] !== -100)));
      }
    } finally {
      tok.close();
    }
    // a format given by hand: the same errors, naming where the format came from
    const g = file('given.jsonl', [JSON.stringify({ text: 'a' }), JSON.stringify({ instruction: 'i', output: 'o' })].join('\n'));
    const given = await previewDataset({ file: g, tokenizer: charTok, format: 'alpaca', ...o });
    const pe = await prepareDataset({ dataFile: g, out: path.join(tmp, 'given.tok'), tokenizer: charTok, format: 'alpaca', ...o, onError: 'skip' });
    expect(given.errors).toEqual(pe.errors);
    expect(given.errors[0]!.reason).toMatch(/looks like plain text \{"text"\}, but the file is read as Alpaca .* \(--format\)/);
    const h = file('history.jsonl', JSON.stringify({ conversations: [{ from: 'human', value: 'q' }, { from: 'gpt', value: 'a' }] }));
    await expect(previewDataset({ file: h, columns: { historyColumn: 'history' } })).rejects.toThrow(/history column "history" cannot be used with the sharegpt format/);
  });
});
