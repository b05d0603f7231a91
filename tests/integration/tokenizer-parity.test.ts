// Id-for-id parity of loadTokenizer's encode with the Python reference (tests/fixtures/tokenizers/reference.py
// in the venv of tests/python/setup.sh) on the parity corpus: SentencePiece (LLaMA-2-style 32k model, a
// trained nmt_nfkc unigram model, a ChatGLM-6B v1-style ice_text.model) and tokenizer.json (trained byte-level BPE, create-tiny's).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadTokenizer, type LoadedTokenizer } from '../../src-main/core/data/tokenizer/index.js';
import { CORPUS } from '../fixtures/tokenizers/corpus.js';
import { ROOT, llamaSpModel, runReference, writeFolder } from '../fixtures/tokenizers/fixtures.js';

const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');
const hasEngine = fs.existsSync(ENGINE);

/** Extra texts for the tokens the trained tokenizers declare, including ones only tokenizer_config.json names. */
const EXTRA = ['<|im_start|>user\n头痛三天<|im_end|>\n<|im_start|>assistant\n', 'a<|im_end|>b <|im_start|> c', '<sop>问：你好<eop>', '[gMASK]<sop>答：多休息。', '<pad>x<pad>'];
const TEXTS = [...CORPUS, ...EXTRA];

/** A training corpus: the parity texts plus enough varied lines that merges and pieces form. */
function trainingCorpus(): string[] {
  const out = [...TEXTS];
  const zh = '患者主诉头痛发热咳嗽三天伴乏力食欲减退既往体健无药物过敏史查体神志清楚双肺呼吸音粗心率齐腹软无压痛诊断上呼吸道感染建议多饮水注意休息对症治疗';
  const en = 'the patient reports headache fever and cough for three days with fatigue and reduced appetite no known drug allergies'.split(' ');
  for (let i = 0; i < 300; i++) {
    const a = (i * 7) % (zh.length - 12);
    out.push(`${zh.slice(a, a + 6 + (i % 7))} ${en[i % en.length]} ${en[(i * 3) % en.length]} ${i * 37} ${zh.slice((a + 5) % 40, ((a + 5) % 40) + 4)}。`);
  }
  return out;
}

const glm1Symbols = ['<n>', '<|tab|>', ...Array.from({ length: 79 }, (_, k) => `<|blank_${k + 2}|>`), '[MASK]', '[gMASK]', '[sMASK]', '<sop>', '<eop>', '<pad>'];

let tmp: string;
const dirs: Record<string, string> = {};
let ref: Record<string, number[][]>;
let refDecoded: Record<string, string[]>;
let plainTexts: string[];
let glm1Texts: string[];
const opened: LoadedTokenizer[] = [];

function containsAny(text: string, tokens: string[]): boolean {
  return tokens.some((t) => text.includes(t));
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-tok-parity-'));
  const corpus = trainingCorpus();
  // 1. Folders and training (one Python run).
  dirs.llama = writeFolder(path.join(tmp, 'llama'), {
    'tokenizer.model': await llamaSpModel(),
    'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', pad_token: null, legacy: true, tokenizer_class: 'LlamaTokenizer' },
  });
  dirs.bpe = writeFolder(path.join(tmp, 'bpe'), {
    'tokenizer_config.json': { tokenizer_class: 'PreTrainedTokenizerFast', bos_token: '<s>', eos_token: '</s>', pad_token: '<pad>', unk_token: '<unk>', additional_special_tokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], clean_up_tokenization_spaces: false },
  });
  dirs.unigram = writeFolder(path.join(tmp, 'unigram'), {
    'tokenizer_config.json': { tokenizer_class: 'ChatGLMTokenizer', remove_space: false, do_lower_case: false },
    'config.json': { model_type: 'chatglm', pad_token_id: 0, eos_token_id: 2 },
  });
  dirs.glm1 = writeFolder(path.join(tmp, 'glm1'), {
    'tokenizer_config.json': { tokenizer_class: 'ChatGLMTokenizer', bos_token: '<sop>', eos_token: '<eop>', end_token: '</s>', gmask_token: '[gMASK]', mask_token: '[MASK]', pad_token: '<pad>', unk_token: '<unk>', remove_space: false, do_lower_case: false },
  });
  dirs.llamaFast = writeFolder(path.join(tmp, 'llama-fast'), {});
  runReference({
    llama_fast: { vocab_file: path.join(dirs.llama, 'tokenizer.model'), out: dirs.llamaFast },
    train_bpe: { out: dirs.bpe, corpus, vocab_size: 700, specials: ['<unk>', '<s>', '</s>', '<pad>', '<|endoftext|>'] },
    train_sp: [
      { out: path.join(dirs.unigram, 'tokenizer.model'), corpus, vocab_size: 900, model_type: 'unigram' },
      { out: path.join(dirs.glm1, 'ice_text.model'), corpus, vocab_size: 1000, model_type: 'unigram', user_defined_symbols: glm1Symbols, normalization: 'identity', remove_extra_whitespaces: false },
    ],
  });
  if (hasEngine) {
    dirs.tiny = path.join(tmp, 'tiny');
    const r = spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', dirs.tiny], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`llmt-engine create-tiny failed: ${r.stderr}`);
  }
  // 2. Reference ids (one Python run).
  const plain = (plainTexts = TEXTS.filter((t) => !containsAny(t, ['<s>', '</s>', '<unk>'])));
  glm1Texts = TEXTS.filter((t) => !containsAny(t, ['<sop>', '<eop>', '<pad>', '<unk>', '[MASK]']));
  const jobs = [
    { name: 'llama_sp', kind: 'sp', path: path.join(dirs.llama, 'tokenizer.model'), texts: plain },
    { name: 'llama_slow', kind: 'llama_slow', path: path.join(dirs.llama, 'tokenizer.model'), texts: TEXTS },
    { name: 'llama_fast', kind: 'hf_dir', path: dirs.llamaFast, texts: TEXTS, decode: true },
    { name: 'bpe_dir', kind: 'hf_dir', path: dirs.bpe, texts: TEXTS, decode: true },
    { name: 'bpe_file', kind: 'hf_file', path: path.join(dirs.bpe, 'tokenizer.json'), texts: CORPUS },
    { name: 'unigram_sp', kind: 'sp', path: path.join(dirs.unigram, 'tokenizer.model'), texts: TEXTS },
    { name: 'glm1', kind: 'glm1', path: path.join(dirs.glm1, 'ice_text.model'), offset: 20000, texts: glm1Texts },
    ...(hasEngine ? [{ name: 'tiny', kind: 'hf_dir', path: dirs.tiny, texts: TEXTS, decode: true }] : []),
  ];
  const answer = runReference<{ encode: Record<string, number[][]>; decode: Record<string, string[]> }>({ encode: jobs });
  ref = answer.encode;
  refDecoded = answer.decode;
}, 120_000);

afterAll(() => {
  for (const t of opened) t.dispose();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

async function open(dir: string): Promise<LoadedTokenizer> {
  const t = await loadTokenizer(dir);
  opened.push(t);
  return t;
}

/** Compares per text, so that a failure names the text. */
function expectParity(tok: LoadedTokenizer, texts: string[], expected: number[][] | undefined) {
  expect(expected).toBeDefined();
  expect(expected!.length).toBe(texts.length);
  texts.forEach((text, i) => {
    expect({ text, ids: tok.encode(text) }).toEqual({ text, ids: expected![i] });
  });
}

/** decode(ids) == HF's tokenizer.decode(ids) (special tokens rendered, no clean-up). */
function expectDecodeParity(tok: LoadedTokenizer, texts: string[], ids: number[][] | undefined, expected: string[] | undefined) {
  expect(expected?.length).toBe(texts.length);
  ids!.forEach((x, i) => expect({ text: texts[i], decoded: tok.decode(x) }).toEqual({ text: texts[i], decoded: expected![i] }));
}

describe('SentencePiece parity', () => {
  it('LLaMA-2-style 32k model: encode == sentencepiece encode (plain text) == LlamaTokenizer slow (all text)', async () => {
    const tok = await open(dirs.llama!);
    const plain = plainTexts;
    expect(plain.length).toBeGreaterThan(40);
    expectParity(tok, plain, ref.llama_sp);
    expectParity(tok, TEXTS, ref.llama_slow);
    // The two references agree where they should (plain text).
    plain.forEach((t) => expect(ref.llama_slow![TEXTS.indexOf(t)]).toEqual(ref.llama_sp![plain.indexOf(t)]));
    for (const text of TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
  });

  it('trained unigram model (nmt_nfkc, ChatGLM2 folder): encode == sentencepiece encode', async () => {
    const tok = await open(dirs.unigram!);
    expect(tok.kind).toBe('sentencepiece');
    expectParity(tok, TEXTS, ref.unigram_sp);
    expect(tok.specialTokens['[gMASK]']).toBe(tok.vocabSize - 4);
  });

  it('ChatGLM-6B v1-style ice_text.model: newline/tab/blank preprocessing and the num_image_tokens offset', async () => {
    const tok = await open(dirs.glm1!);
    const texts = glm1Texts;
    expectParity(tok, texts, ref.glm1);
    const sop = tok.tokenToId('<sop>')!;
    expect(sop).toBeGreaterThanOrEqual(20000);
    expect(tok.bosId).toBe(sop);
    expect(tok.eosId).toBe(tok.tokenToId('<eop>'));
    expect(tok.specialTokens['[gMASK]']).toBe(tok.tokenToId('[gMASK]'));
    for (const text of ['问：头痛\n\n答：  多喝水\t休息', 'a' + ' '.repeat(170) + 'b']) expect(tok.decode(tok.encode(text))).toBe(text);
  });
});

describe('tokenizer.json parity', () => {
  it('trained byte-level BPE: encode == PreTrainedTokenizerFast (folder with tokenizer_config.json, and tokenizer_file alone)', async () => {
    const tok = await open(dirs.bpe!);
    expect(tok.kind).toBe('tokenizers');
    expectParity(tok, TEXTS, ref.bpe_dir);
    expectParity(tok, CORPUS, ref.bpe_file);
    expect(tok.specialTokens['<|im_start|>']).toBeGreaterThanOrEqual(700 - 5);
    expect([tok.bosId, tok.eosId, tok.padId, tok.unkId]).toEqual([1, 2, 3, 0]);
    for (const text of TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    expectDecodeParity(tok, TEXTS, ref.bpe_dir, refDecoded.bpe_dir);
    expect(await tok.encodeBatch(TEXTS)).toEqual(ref.bpe_dir);
  });

  it('LLaMA-2-style tokenizer.json (transformers\' conversion of the 32k model): encode == LlamaTokenizerFast', async () => {
    const tok = await open(dirs.llamaFast!);
    expect(tok.kind).toBe('tokenizers');
    expectParity(tok, TEXTS, ref.llama_fast);
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId, tok.vocabSize]).toEqual([1, 2, 0, null, 32000]);
    expect(tok.encode('Hello world')).toEqual([15043, 3186]);
    expectDecodeParity(tok, TEXTS, ref.llama_fast, refDecoded.llama_fast);
    // HF's LLaMA decoder keeps the "▁" that the normalizer prepends after a special token: plain text round-trips.
    for (const text of plainTexts) expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode(tok.encode('<s>Hello</s>'))).toBe('<s> Hello</s>');
  });

  it.skipIf(!hasEngine)('llmt-engine create-tiny --family llama tokenizer.json: encode == PreTrainedTokenizerFast', async () => {
    const tok = await open(dirs.tiny!);
    expectParity(tok, TEXTS, ref.tiny);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    for (const text of TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    expectDecodeParity(tok, TEXTS, ref.tiny, refDecoded.tiny);
  });
});
