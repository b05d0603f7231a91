// loadTokenizer without the Python reference: special-token resolution for hand-written LLaMA-, Pythia-,
// ChatGLM2- and Baichuan-like folders, the errors for missing and corrupt tokenizer files, the hash, the
// HF-style splitting of added tokens, and decode round-trips on the parity corpus.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { hashFiles, loadTokenizer, type LoadedTokenizer } from '../../src-main/core/data/tokenizer/index.js';
import { parseSpModel } from '../../src-main/core/data/tokenizer/sp-model.js';
import { AddedTokenSplitter } from '../../src-main/core/data/tokenizer/split.js';
import { CORPUS } from '../fixtures/tokenizers/corpus.js';
import { llamaSpModel, neoxTokenizerJson, writeFolder } from '../fixtures/tokenizers/fixtures.js';

let tmp: string;
let spModel: Buffer;
const opened: LoadedTokenizer[] = [];
async function load(dir: string): Promise<LoadedTokenizer> {
  const t = await loadTokenizer(dir);
  opened.push(t);
  return t;
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-tok-unit-'));
  spModel = await llamaSpModel();
});
afterAll(() => {
  for (const t of opened) t.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const tokObj = (content: string) => ({ __type: 'AddedToken', content, lstrip: false, normalized: false, rstrip: false, single_word: false });

describe('the SentencePiece model parser', () => {
  it('reads the LLaMA-2-style model: 32000 pieces, <unk>/<s>/</s> = 0/1/2, byte fallback', () => {
    const m = parseSpModel(spModel);
    expect(m.pieces.length).toBe(32000);
    expect([m.unkId, m.bosId, m.eosId, m.padId]).toEqual([0, 1, 2, -1]);
    expect(m.pieces.slice(0, 4)).toEqual(['<unk>', '<s>', '</s>', '<0x00>']);
    expect(m.byteFallback).toBe(true);
    expect(m.pieceToId.get('▁Hello')).toBe(15043);
  });
});

describe('LLaMA-like folder (tokenizer.model)', () => {
  let tok: LoadedTokenizer;
  beforeAll(async () => {
    const dir = writeFolder(path.join(tmp, 'llama'), {
      'tokenizer.model': spModel,
      'tokenizer_config.json': { add_bos_token: true, add_eos_token: false, bos_token: tokObj('<s>'), eos_token: tokObj('</s>'), unk_token: tokObj('<unk>'), pad_token: null, legacy: true, tokenizer_class: 'LlamaTokenizer', clean_up_tokenization_spaces: false },
      'special_tokens_map.json': { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' },
      'generation_config.json': { bos_token_id: 1, eos_token_id: 2, pad_token_id: 0 },
      'config.json': { model_type: 'llama', vocab_size: 32000, bos_token_id: 1, eos_token_id: 2 },
    });
    tok = await load(dir);
  });

  it('has LLaMA ids: <s>=1, </s>=2, unk 0; pad from generation_config.json', () => {
    expect(tok.kind).toBe('sentencepiece');
    expect(tok.vocabSize).toBe(32000);
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([1, 2, 0, 0]);
    expect(tok.specialTokens).toEqual({ '<unk>': 0, '<s>': 1, '</s>': 2 });
    expect(tok.tokenToId('<s>')).toBe(1);
    expect(tok.tokenToId('▁Hello')).toBe(15043);
    expect(tok.tokenToId('no-such-piece')).toBeNull();
  });

  it('encodes like LLaMA (no bos), splitting special-token strings out of text', () => {
    expect(tok.encode('Hello world')).toEqual([15043, 3186]);
    expect(tok.encode('')).toEqual([]);
    expect(tok.encode('<s>Hello</s>')).toEqual([1, 15043, 2]);
  });

  it('decodes back to the text for the whole corpus', () => {
    for (const text of CORPUS) expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode([1, 15043, 3186, 2])).toBe('<s>Hello world</s>');
    expect(tok.decode([32000])).toBe('');
  });

  it('decodes ids past the tokenizer (a model\'s padded embedding rows) as nothing, like HF; a non-id still throws', () => {
    expect(tok.decode([15043, 32000, 40000, 3186, 65023])).toBe('Hello world');
    expect(tok.decode([15043, 32000, 2])).toBe('Hello</s>');
    expect(() => tok.decode([-1])).toThrow(/not a token id/);
    expect(() => tok.decode([1.5])).toThrow(/not a token id/);
  });

  it('batch-encodes like encode', async () => {
    expect(await tok.encodeBatch(CORPUS.slice(0, 5))).toEqual(CORPUS.slice(0, 5).map((t) => tok.encode(t)));
  });
});

describe('LLaMA-like folders that do not name the special tokens', () => {
  it('uses LlamaTokenizer\'s defaults <unk>/<s>/</s> (bare tokenizer.model, or a config without them)', async () => {
    for (const [name, files] of [
      ['bare', {}],
      ['class-only', { 'tokenizer_config.json': { tokenizer_class: 'LlamaTokenizer' } }],
    ] as const) {
      const tok = await load(writeFolder(path.join(tmp, `llama-${name}`), { 'tokenizer.model': spModel, ...files }));
      expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([1, 2, 0, null]);
      expect(tok.encode('<s>Hello</s>')).toEqual([1, 15043, 2]);
    }
  });

  it('does not cut out a token the config sets to null', async () => {
    const tok = await load(writeFolder(path.join(tmp, 'llama-nobos'), { 'tokenizer.model': spModel, 'tokenizer_config.json': { bos_token: null, eos_token: '</s>', unk_token: '<unk>' } }));
    expect(tok.encode('<s>')).not.toContain(1);
    expect(tok.encode('</s>')).toEqual([2]);
  });
});

describe('LLaMA-like folder with added_tokens_decoder (a <pad> past the model)', () => {
  it('numbers and splits the added token as HF does', async () => {
    const dir = writeFolder(path.join(tmp, 'llama-pad'), {
      'tokenizer.model': spModel,
      'tokenizer_config.json': {
        added_tokens_decoder: {
          '0': { ...tokObj('<unk>'), special: true },
          '1': { ...tokObj('<s>'), special: true },
          '2': { ...tokObj('</s>'), special: true },
          '32000': { ...tokObj('<pad>'), special: true },
        },
        bos_token: '<s>',
        eos_token: '</s>',
        unk_token: '<unk>',
        pad_token: '<pad>',
        tokenizer_class: 'LlamaTokenizer',
      },
    });
    const tok = await load(dir);
    expect(tok.padId).toBe(32000);
    expect(tok.vocabSize).toBe(32001);
    expect(tok.specialTokens['<pad>']).toBe(32000);
    expect(tok.encode('Hello<pad>')).toEqual([15043, 32000]);
    expect(tok.decode([15043, 32000, 32000])).toBe('Hello<pad><pad>');
  });
});

describe('ChatGLM2-like folder (tokenizer.model + ChatGLMTokenizer)', () => {
  let tok: LoadedTokenizer;
  let dir: string;
  beforeAll(async () => {
    dir = writeFolder(path.join(tmp, 'chatglm2'), {
      'tokenizer.model': spModel,
      'tokenizer_config.json': { name_or_path: 'THUDM/chatglm2-6b', remove_space: false, do_lower_case: false, tokenizer_class: 'ChatGLMTokenizer', auto_map: { AutoTokenizer: ['tokenization_chatglm.ChatGLMTokenizer', null] } },
      'config.json': { model_type: 'chatglm', pad_token_id: 0, eos_token_id: 2, padded_vocab_size: 65024 },
      'tokenization_chatglm.py': 'raise SystemExit("this file must never be run")\n',
    });
    tok = await load(dir);
  });

  it('numbers [MASK] [gMASK] [sMASK] sop eop from the SentencePiece size', () => {
    for (const [t, k] of [['[MASK]', 0], ['[gMASK]', 1], ['[sMASK]', 2], ['sop', 3], ['eop', 4]] as const) {
      expect(tok.specialTokens[t]).toBe(32000 + k);
      expect(tok.tokenToId(t)).toBe(32000 + k);
    }
    expect(tok.vocabSize).toBe(32005);
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([null, 2, 0, 0]);
  });

  it('never cuts "sop"/"eop" out of words, and renders the specials in decode', () => {
    const ids = tok.encode('people stop eop sop [gMASK]');
    expect(ids.filter((id) => id >= 32000)).toEqual([]);
    expect(tok.decode([32001, 32003, ...tok.encode('你好')])).toBe('[gMASK]sop你好');
    // ChatGLM2-6B's embedding has 65024 rows for 64794 tokens: an id in between renders nothing
    expect(tok.decode([32001, 32003, 65000, ...tok.encode('你好'), 65023])).toBe('[gMASK]sop你好');
  });

  it('ignores code in the folder: the hash covers only tokenizer and config files', async () => {
    const h = tok.hash;
    fs.writeFileSync(path.join(dir, 'tokenization_chatglm.py'), '# changed\n');
    expect((await load(dir)).hash).toBe(h);
  });
});

describe('Baichuan-like folder', () => {
  it('has pad/bos/eos = 0/1/2', async () => {
    const dir = writeFolder(path.join(tmp, 'baichuan'), {
      'tokenizer.model': spModel,
      'tokenizer_config.json': { add_bos_token: false, add_eos_token: false, bos_token: tokObj('<s>'), eos_token: tokObj('</s>'), pad_token: tokObj('<unk>'), unk_token: tokObj('<unk>'), tokenizer_class: 'BaiChuanTokenizer', auto_map: { AutoTokenizer: ['tokenization_baichuan.BaiChuanTokenizer', null] } },
      'config.json': { model_type: 'baichuan', pad_token_id: 0, bos_token_id: 1, eos_token_id: 2, vocab_size: 64000 },
      'generation_config.json': { user_token_id: 195, assistant_token_id: 196, pad_token_id: 0, bos_token_id: 1, eos_token_id: 2 },
    });
    const tok = await load(dir);
    expect([tok.padId, tok.bosId, tok.eosId, tok.unkId]).toEqual([0, 1, 2, 0]);
    expect(tok.encode('患者')).toEqual(tok.encode('患者'));
  });
});

describe('Pythia-like folder (tokenizer.json, GPT-NeoX)', () => {
  let tok: LoadedTokenizer;
  beforeAll(async () => {
    const dir = writeFolder(path.join(tmp, 'pythia'), {
      'tokenizer.json': neoxTokenizerJson(),
      'tokenizer_config.json': { add_prefix_space: false, bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>', tokenizer_class: 'GPTNeoXTokenizer' },
      'special_tokens_map.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>' },
      'config.json': { model_type: 'gpt_neox', bos_token_id: 0, eos_token_id: 0 },
    });
    tok = await load(dir);
  });

  it('resolves <|endoftext|> as bos/eos/unk and has no pad', () => {
    expect(tok.kind).toBe('tokenizers');
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([0, 0, 0, null]);
    expect(tok.specialTokens).toEqual({ '<|endoftext|>': 0, '<|padding|>': 1 });
    expect(tok.vocabSize).toBe(2 + 256 + 6);
  });

  it('encodes with merges, splits <|endoftext|> out of text, and round-trips', async () => {
    const the = tok.tokenToId('Ġthe')!;
    expect(the).toBeGreaterThan(257);
    expect(tok.encode(' the')).toEqual([the]);
    const ids = tok.encode('a<|endoftext|> the');
    expect(ids).toEqual([tok.tokenToId('a'), 0, the]);
    for (const text of CORPUS) expect(tok.decode(tok.encode(text))).toBe(text.normalize('NFC'));
    expect(await tok.encodeBatch(CORPUS)).toEqual(CORPUS.map((t) => tok.encode(t)));
    expect(tok.decode([tok.vocabSize])).toBe('');
  });

  it('decodes ids past the tokenizer (Pythia: 50304 embedding rows, 50277 tokens) as nothing, like HF; a non-id still throws', () => {
    const ids = tok.encode('a the');
    expect(tok.decode([...ids.slice(0, 1), tok.vocabSize, tok.vocabSize + 40, ...ids.slice(1), 2 ** 40])).toBe('a the');
    expect(tok.decode([0, tok.vocabSize + 1, 0])).toBe('<|endoftext|><|endoftext|>');
    expect(() => tok.decode([-3])).toThrow(/not a token id/);
    expect(() => tok.decode([Number.NaN])).toThrow(/not a token id/);
  });

  it('streams text around ids past the tokenizer (chat): they add nothing and break nothing', async () => {
    const { StreamDecoder } = await import('../../src-main/core/engine/stream-decoder.js');
    const text = 'a the 高血压 ok';
    const ids = tok.encode(text);
    const d = new StreamDecoder((x) => tok.decode(x));
    const deltas: string[] = [];
    ids.forEach((id, i) => {
      deltas.push(d.push(id));
      if (i % 2 === 0) deltas.push(d.push(tok.vocabSize + i));
    });
    deltas.push(d.flush());
    expect(deltas.join('')).toBe(text);
    expect(d.text()).toBe(text);
  });

  it('adds a special token named in tokenizer_config.json but missing from tokenizer.json (as transformers does)', async () => {
    const dir = writeFolder(path.join(tmp, 'pythia-pad'), {
      'tokenizer.json': neoxTokenizerJson(),
      'tokenizer_config.json': { eos_token: '<|endoftext|>', pad_token: '[PAD]' },
    });
    const t2 = await load(dir);
    expect(t2.padId).toBe(264);
    expect(t2.vocabSize).toBe(265);
    expect(t2.encode('x[PAD]')).toEqual([t2.tokenToId('x'), 264]);
  });
});

describe('eos ids that are a list (Llama-3-Instruct: generation_config.json eos_token_id [128001, 128009])', () => {
  const pythia = (name: string, files: Record<string, unknown>) =>
    load(writeFolder(path.join(tmp, name), { 'tokenizer.json': neoxTokenizerJson(), ...files }));

  it('counts every id of generation_config.json\'s list as a stop id, the tokenizer\'s eos first', async () => {
    const tok = await pythia('eos-list-gen', {
      'tokenizer_config.json': { eos_token: '<|padding|>' },
      'generation_config.json': { eos_token_id: [0, 1, 0] },
      'config.json': { eos_token_id: 5 },
    });
    expect(tok.eosId).toBe(1);
    expect(tok.eosIds).toEqual([1, 0]);
  });

  it('without a tokenizer eos: eosId is the first of the list, eosIds all of it', async () => {
    const tok = await pythia('eos-list-only', { 'generation_config.json': { eos_token_id: [1, 0] } });
    expect(tok.eosId).toBe(1);
    expect(tok.eosIds).toEqual([1, 0]);
  });

  it('takes config.json\'s list when generation_config.json has no eos_token_id (as the engine does)', async () => {
    const tok = await pythia('eos-list-cfg', {
      'tokenizer_config.json': { eos_token: '<|endoftext|>' },
      'generation_config.json': { bos_token_id: 0 },
      'config.json': { eos_token_id: [0, 1] },
    });
    expect(tok.eosIds).toEqual([0, 1]);
    const sp = await load(writeFolder(path.join(tmp, 'eos-list-sp'), { 'tokenizer.model': spModel, 'config.json': { eos_token_id: [2, 1] } }));
    expect(sp.eosId).toBe(2);
    expect(sp.eosIds).toEqual([2, 1]);
  });

  it('the chat_template answer ends at every eos id', async () => {
    const { answerEndIds } = await import('../../src-main/core/data/templates.js');
    const tok = await pythia('eos-list-chat', { 'tokenizer_config.json': { eos_token: '<|endoftext|>' }, 'generation_config.json': { eos_token_id: [0, 1] } });
    expect(answerEndIds('chat_template', tok)).toEqual([0, 1]);
  });
});

describe('errors', () => {
  it('names the folder and the files looked for when there is no tokenizer', async () => {
    const dir = writeFolder(path.join(tmp, 'empty'), { 'config.json': { model_type: 'llama' } });
    await expect(loadTokenizer(dir)).rejects.toThrow(new RegExp(`no tokenizer in ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: looked for tokenizer\\.json, tokenizer\\.model, ice_text\\.model`));
    await expect(loadTokenizer(path.join(tmp, 'does-not-exist'))).rejects.toThrow(/does-not-exist does not exist/);
  });

  it('names the file when tokenizer.json is corrupt', async () => {
    const truncated = writeFolder(path.join(tmp, 'bad-json'), { 'tokenizer.json': '{"version": "1.0", "model": {"type": "BPE", "vocab": ' });
    await expect(loadTokenizer(truncated)).rejects.toThrow(`${path.join(truncated, 'tokenizer.json')} is not a valid tokenizer.json`);
    const wrong = writeFolder(path.join(tmp, 'bad-model'), { 'tokenizer.json': { version: '1.0', model: { type: 'NoSuchModel' } } });
    await expect(loadTokenizer(wrong)).rejects.toThrow(`${path.join(wrong, 'tokenizer.json')} is not a valid tokenizer.json`);
  });

  it('names the file when tokenizer.model or a config file is corrupt', async () => {
    const dir = writeFolder(path.join(tmp, 'bad-sp'), { 'tokenizer.model': Buffer.from('definitely not a protobuf model \xff\xff') });
    await expect(loadTokenizer(dir)).rejects.toThrow(`${path.join(dir, 'tokenizer.model')} is not a valid SentencePiece model`);
    const dir2 = writeFolder(path.join(tmp, 'bad-config'), { 'tokenizer.model': spModel, 'tokenizer_config.json': '{nope' });
    await expect(loadTokenizer(dir2)).rejects.toThrow(`${path.join(dir2, 'tokenizer_config.json')} is not valid JSON`);
  });
});

describe('hash', () => {
  it('is sha256 over the sorted (name, contents) of the files used, and changes with any of them', async () => {
    const files = { 'tokenizer.json': JSON.stringify(neoxTokenizerJson()), 'config.json': '{"bos_token_id": 0}' };
    const dir = writeFolder(path.join(tmp, 'hash'), files);
    const h1 = (await load(dir)).hash;
    expect(h1).toBe(hashFiles(new Map(Object.entries(files).map(([k, v]) => [k, Buffer.from(v)]))));
    expect(h1).toMatch(/^[0-9a-f]{64}$/);
    fs.writeFileSync(path.join(dir, 'README.md'), 'not a tokenizer file');
    expect((await load(dir)).hash).toBe(h1);
    fs.writeFileSync(path.join(dir, 'config.json'), '{"bos_token_id": 1}');
    expect((await load(dir)).hash).not.toBe(h1);
  });
});

describe('AddedTokenSplitter (HF slow tokenizer rules)', () => {
  const spec = (content: string, o: Partial<{ lstrip: boolean; rstrip: boolean; singleWord: boolean }> = {}) => ({ content, lstrip: false, rstrip: false, singleWord: false, normalized: false, special: true, ...o });

  it('cuts leftmost-longest matches and keeps the text around them', () => {
    const s = new AddedTokenSplitter([spec('<s>'), spec('<s>x'), spec('</s>')]);
    expect(s.split('a<s>b<s>xc</s></s>')).toEqual([{ text: 'a' }, { token: '<s>' }, { text: 'b' }, { token: '<s>x' }, { text: 'c' }, { token: '</s>' }, { token: '</s>' }]);
    expect(s.split('')).toEqual([]);
  });

  it('applies lstrip / rstrip with Python whitespace', () => {
    const s = new AddedTokenSplitter([spec('<mask>', { lstrip: true, rstrip: true })]);
    expect(s.split('a \t<mask>\n b')).toEqual([{ text: 'a' }, { token: '<mask>' }, { text: 'b' }]);
  });
});
