// llama3-qwen-mistral.test.ts — a user's Llama-3.x-Instruct, Qwen2.5-Instruct or Mistral-7B-Instruct-v0.3 folder
// gets exactly what HF transformers gives (the reference: tests/fixtures/tokenizers/modern.py in the venv of
// tests/python/setup.sh). Small tokenizers shaped like the real ones are built at test time (Llama 3's byte-level
// BPE with ignore_merges, its Split regex and the TemplateProcessing that prepends <|begin_of_text|>; Qwen2.5's NFC +
// its own regex, no bos; Mistral v0.3's SentencePiece model with [INST] control pieces, alone and with the
// tokenizer.json transformers converts from it), and the models' real chat templates (verbatim, chat-templates/).
// Checked: encode / decode id for id (special tokens in text, add_special_tokens on and off, the bos/eos/pad ids), the
// rendered conversation (single- and multi-turn, with and without a system prompt) and its ids against
// apply_chat_template, the trained mask against TRL's prompt-completion split of every assistant turn (the
// end-of-turn token <|eot_id|> / <|im_end|> / </s> trained), the chat window's prompt equal to the trained ids up to
// each answer, and generation stopping at every id of generation_config.json's eos_token_id (<|eot_id|>).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadChatTemplate, type ChatRenderer } from '../../src-main/core/data/chat-template';
import type { Turn } from '../../src-main/core/data/formats';
import { answerEndIds, encodePrompt, encodeSample } from '../../src-main/core/data/templates';
import { loadTokenizer, type LoadedTokenizer } from '../../src-main/core/data/tokenizer/index';
import { stopIds } from '../../src-main/core/engine/generator';
import { estimateRun } from '../../src-main/core/runs/estimate';
import { parseRunSpec } from '../../src-main/core/runs/runspec';
import { CORPUS } from '../fixtures/tokenizers/corpus';
import { type ChatTemplateName, chatTemplateFile, chatTemplateText, runModern } from '../fixtures/tokenizers/modern';

const ROOT = path.resolve(__dirname, '..', '..');
const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');

/** Texts with each family's markers inside running text, as chat templates and users put them there. */
const EXTRA = [
  '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n头痛三天怎么办？<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
  'a<|eot_id|>b <|eot_id|> c<|end_of_text|>',
  '<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n',
  'x<|im_end|>\n<tool_call>\n{"name": "f"}\n</tool_call><|endoftext|>',
  '<s>[INST] Hello, how are you?[/INST] Fine, and you?</s>[INST] I\'m doing great![/INST]',
  '[INST]no space[/INST]x [INST]  two spaces [/INST]  ',
  ' leading space, then [TOOL_CALLS] and [control_8]',
  'The retinopathy screened annually; mellitus. Screened!',
  'ÅÅÅ ﬁ café\u0301 e\u0301 Å',
  "I'M YOU'LL we'd 12345678 1,234.5 ١٢٣",
  "Word-split text : yes . no , why ? stop ! I do n't , I 'm , it 's , we 've , they 're , ' quoted ' .",
];
const TEXTS = [...CORPUS, ...EXTRA];

/** The training corpus of the tokenizers: the texts plus varied lines for merges to form. */
function trainingCorpus(): string[] {
  const out = [...TEXTS];
  const zh = '患者主诉头痛发热咳嗽三天伴乏力食欲减退既往体健无药物过敏史查体神志清楚双肺呼吸音粗心率齐腹软无压痛诊断上呼吸道感染建议多饮水注意休息对症治疗';
  const en = 'the patient reports headache fever and cough for three days with fatigue and reduced appetite no known drug allergies hello there how are you'.split(' ');
  for (let i = 0; i < 300; i++) {
    const a = (i * 7) % (zh.length - 12);
    out.push(`${zh.slice(a, a + 6 + (i % 7))} ${en[i % en.length]} ${en[(i * 3) % en.length]} ${i * 37} ${zh.slice((a + 5) % 40, ((a + 5) % 40) + 4)}。`);
  }
  return out;
}

const SYSTEM = '  You are a careful medical assistant.\n请简短回答。 ';
const ROUNDS: [string, string][] = [
  ['患者有高血压吗？', 'Yes — 有，血压 150/95 mmHg。'],
  ['And the dose?\n剂量是多少', ' 5 mg twice a day, 每日两次 '],
  ['  ok  ', '好的\n\n- one\n- two'],
  ['Thanks! 再见', '不客气。Take care.'],
];

function conv(system: string | null, n: number): Turn[] {
  const turns: Turn[] = system !== null ? [{ role: 'system', content: system }] : [];
  for (const [q, a] of ROUNDS.slice(0, n)) turns.push({ role: 'user', content: q }, { role: 'assistant', content: a });
  return turns;
}

/** The conversations compared: 1 and 3 rounds, with and without a system prompt, ending with the answer (training)
 *  and with the last question (the prompt inference sends). */
const CONVERSATIONS: Turn[][] = [];
for (const system of [null, SYSTEM]) {
  for (const n of [1, 3]) {
    const c = conv(system, n);
    CONVERSATIONS.push(c, c.slice(0, -1));
  }
}

interface ConvRef {
  full?: string;
  full_ids?: number[];
  prompt?: string;
  prompt_ids?: number[];
  spans?: [number, number][];
  mask?: boolean[];
  ids?: number[];
  error?: string;
  span_error?: string;
}
interface Ref {
  class: string;
  bos_token_id: number | null;
  eos_token_id: number | null;
  pad_token_id: number | null;
  unk_token_id: number | null;
  vocab_size: number;
  special_ids: Record<string, number>;
  skipped_ids: number[];
  plain: number[][];
  with_specials: number[][];
  decoded: string[];
  decoded_skip: string[];
  conversations: ConvRef[];
}

interface Case {
  name: string;
  dir: string;
  template: ChatTemplateName;
  /** what HF's add_special_tokens=True puts around a text: a bos first (Llama 3, Mistral) or nothing (Qwen2) */
  addsBos: boolean;
  /** the token that ends an assistant turn */
  endOfTurn: string;
}

let tmp: string;
const cases: Case[] = [];
const ref: Record<string, Ref> = {};
const opened: LoadedTokenizer[] = [];
let built: { llama3: { ids: Record<string, number> }; qwen2: { ids: Record<string, number> } };

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-modern-'));
  const corpus = trainingCorpus();
  const d = (n: string) => path.join(tmp, n);
  const res = runModern<{ build: typeof built }>({
    build: {
      llama3: { out: d('llama3'), corpus, vocab_size: 900, chat_template_file: chatTemplateFile('llama-3.1'), whole_words: [' retinopathy', ' screened', ' annually', ' mellitus', 'Screened'] },
      qwen2: { out: d('qwen2'), corpus, vocab_size: 900, chat_template_file: chatTemplateFile('qwen2.5') },
      mistral: { out: d('mistral-sp'), fast_out: d('mistral'), corpus, vocab_size: 1200, legacy: false, chat_template_file: chatTemplateFile('mistral-v0.3') },
    },
  });
  built = res.build;
  // the same Llama-3 tokenizer with Llama 3.2's template; Mistral's tokenizer.model with the legacy flag set
  fs.cpSync(d('llama3'), d('llama3.2'), { recursive: true });
  const cfg32 = JSON.parse(fs.readFileSync(path.join(d('llama3.2'), 'tokenizer_config.json'), 'utf8'));
  fs.writeFileSync(path.join(d('llama3.2'), 'tokenizer_config.json'), JSON.stringify({ ...cfg32, chat_template: chatTemplateText('llama-3.2') }));
  fs.cpSync(d('mistral-sp'), d('mistral-sp-legacy'), { recursive: true });
  const cfgL = JSON.parse(fs.readFileSync(path.join(d('mistral-sp-legacy'), 'tokenizer_config.json'), 'utf8'));
  fs.writeFileSync(path.join(d('mistral-sp-legacy'), 'tokenizer_config.json'), JSON.stringify({ ...cfgL, legacy: true }));
  cases.push(
    { name: 'llama3', dir: d('llama3'), template: 'llama-3.1', addsBos: true, endOfTurn: '<|eot_id|>' },
    { name: 'llama3.2', dir: d('llama3.2'), template: 'llama-3.2', addsBos: true, endOfTurn: '<|eot_id|>' },
    { name: 'qwen2', dir: d('qwen2'), template: 'qwen2.5', addsBos: false, endOfTurn: '<|im_end|>' },
    { name: 'mistral', dir: d('mistral'), template: 'mistral-v0.3', addsBos: true, endOfTurn: '</s>' },
    { name: 'mistral-sp', dir: d('mistral-sp'), template: 'mistral-v0.3', addsBos: true, endOfTurn: '</s>' },
    { name: 'mistral-sp-legacy', dir: d('mistral-sp-legacy'), template: 'mistral-v0.3', addsBos: true, endOfTurn: '</s>' },
  );
  const answer = runModern<{ ref: Record<string, Ref> }>({ ref: cases.map((c) => ({ name: c.name, path: c.dir, texts: TEXTS, conversations: CONVERSATIONS })) });
  Object.assign(ref, answer.ref);
}, 300_000);

afterAll(() => {
  for (const t of opened) t.dispose();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

async function open(c: Case): Promise<LoadedTokenizer> {
  const t = await loadTokenizer(c.dir);
  opened.push(t);
  return t;
}

const caseNames = ['llama3', 'llama3.2', 'qwen2', 'mistral', 'mistral-sp', 'mistral-sp-legacy'];
const theCase = (name: string) => cases.find((c) => c.name === name)!;

describe('tokenizer parity with AutoTokenizer', () => {
  it('the folders are what the real ones are to transformers', () => {
    expect(ref.llama3!.class).toBe('PreTrainedTokenizerFast');
    expect(ref.qwen2!.class).toBe('Qwen2TokenizerFast');
    expect(ref.mistral!.class).toBe('LlamaTokenizerFast');
    expect(ref['mistral-sp']!.class).toBe('LlamaTokenizerFast'); // converted from tokenizer.model on load
    const tj = JSON.parse(fs.readFileSync(path.join(theCase('llama3').dir, 'tokenizer.json'), 'utf8'));
    expect(tj.model.ignore_merges).toBe(true);
    expect(tj.pre_tokenizer.pretokenizers.map((p: { type: string }) => p.type)).toEqual(['Split', 'ByteLevel']);
    expect(tj.post_processor.processors.map((p: { type: string }) => p.type)).toEqual(['ByteLevel', 'TemplateProcessing']);
  });

  it.each(caseNames)('%s: encode == tokenizer(text, add_special_tokens=False), special tokens in text included', async (name) => {
    const c = theCase(name);
    const tok = await open(c);
    const r = ref[name]!;
    TEXTS.forEach((text, i) => expect({ text, ids: tok.encode(text) }).toEqual({ text, ids: r.plain[i] }));
    expect(await tok.encodeBatch!(TEXTS)).toEqual(r.plain);
  });

  it.each(caseNames)('%s: add_special_tokens=True is the bos the templates add, then the same ids', async (name) => {
    const c = theCase(name);
    const tok = await open(c);
    const r = ref[name]!;
    TEXTS.forEach((text, i) => {
      const ours = c.addsBos ? [tok.bosId!, ...tok.encode(text)] : tok.encode(text);
      expect({ text, ids: ours }).toEqual({ text, ids: r.with_specials[i] });
    });
  });

  it.each(caseNames)('%s: decode == tokenizer.decode — with the special tokens skipped (generated text), and rendered (tokenizer.json)', async (name) => {
    const c = theCase(name);
    const tok = await open(c);
    const r = ref[name]!;
    const specialIds = new Set(r.skipped_ids);
    r.plain.forEach((ids, i) => {
      const text = TEXTS[i];
      // what the chat window and predict show: the answer's ids without special tokens
      expect({ text, decoded: tok.decode(ids.filter((id) => !specialIds.has(id))) }).toEqual({ text, decoded: r.decoded_skip[i] });
      // special tokens amid text: a tokenizer.model folder renders them without the space LlamaTokenizerFast's
      // decoder keeps after them ("<s> Hello" vs "<s>Hello"), as SentencePiece decodes
      if (!name.startsWith('mistral-sp')) expect({ text, decoded: tok.decode(ids) }).toEqual({ text, decoded: r.decoded[i] });
    });
  });

  it.each(caseNames)('%s: bos / eos / pad / unk ids and the special tokens are HF\'s', async (name) => {
    const tok = await open(theCase(name));
    const r = ref[name]!;
    // Qwen2.5 names no bos (tokenizer_config.json bos_token null: HF's bos_token_id is None); ours is then
    // generation_config.json's bos_token_id (<|endoftext|>), as for any folder — only the built-in templates that
    // open with a bos (raw, alpaca, vicuna, minicpm) use it; the chat_template never does (its ids are HF's, below)
    const bos = name === 'qwen2' ? built.qwen2.ids['<|endoftext|>'] : r.bos_token_id;
    expect({ bos: tok.bosId, eos: tok.eosId, pad: tok.padId, unk: tok.unkId }).toEqual({ bos, eos: r.eos_token_id, pad: r.pad_token_id, unk: r.unk_token_id });
    for (const [t, id] of Object.entries(r.special_ids)) expect({ t, id: tok.tokenToId(t) }).toEqual({ t, id });
    expect(tok.vocabSize).toBe(r.vocab_size);
  });
});

describe('chat templates: the real ones render as apply_chat_template renders them', () => {
  it.each(caseNames)('%s: text and ids, single- and multi-turn, with and without a system prompt', async (name) => {
    const c = theCase(name);
    const tok = await open(c);
    const r = loadChatTemplate(c.dir);
    CONVERSATIONS.forEach((turns, k) => {
      const h = ref[name]!.conversations[k]!;
      const where = `${name} / conversation ${k}`;
      expect(h.error, where).toBeUndefined();
      expect(r.render(turns, false), where).toBe(h.full);
      expect(tok.encode(r.render(turns, false)), where).toEqual(h.full_ids);
      if (turns.at(-1)!.role === 'user') {
        expect(r.render(turns, true), where).toBe(h.prompt);
        // the ids the chat window, predict and eval send
        expect(encodePrompt(turns, 'chat_template', tok, { chatTemplate: r }), where).toEqual(h.prompt_ids);
      }
    });
  });
});

describe('training a conversation with the model\'s chat_template', () => {
  /** The renderer, or the error the template gives for a conversation it cannot train. */
  const renderer = (c: Case): ChatRenderer => loadChatTemplate(c.dir);

  it.each(caseNames)('%s: every assistant turn and its end-of-turn token trained, everything else masked (TRL\'s prompt-completion spans)', async (name) => {
    const c = theCase(name);
    const tok = await open(c);
    const chatTemplate = renderer(c);
    const eot = tok.tokenToId(c.endOfTurn)!;
    let checked = 0;
    CONVERSATIONS.forEach((turns, k) => {
      if (turns.at(-1)!.role !== 'assistant') return;
      const h = ref[name]!.conversations[k]!;
      const where = `${name} / conversation ${k}`;
      expect(h.error, where).toBeUndefined();
      if (c.template === 'mistral-v0.3' && turns[0]!.role === 'system') {
        // Mistral's template puts the system prompt into the last user message only: a conversation that ends with
        // an answer has no system prompt at all, so no sequence holds the prompts inference sends — TRL's split
        // fails the same way (the full render does not start with the prompt render)
        expect(h.span_error, where).toMatch(/not a growing prefix/);
        expect(() => encodeSample({ kind: 'chat', turns, multiTurn: true }, 'chat_template', tok, { maxSourceLength: 4096, maxTargetLength: 1024, chatTemplate }), where).toThrow(/growing prefix/);
        return;
      }
      expect(h.span_error, where).toBeUndefined();
      const e = encodeSample({ kind: 'chat', turns, multiTurn: true }, 'chat_template', tok, { maxSourceLength: 4096, maxTargetLength: 1024, chatTemplate });
      expect(e.ids, where).toEqual(h.ids);
      expect(e.ids, where).toEqual(h.full_ids);
      expect(e.mask, where).toEqual(h.mask);
      // every answer ends with the trained end-of-turn token
      const answers = turns.filter((t) => t.role === 'assistant').length;
      const trainedEot = e.ids.filter((id, i) => id === eot && e.mask[i]).length;
      expect(trainedEot, where).toBe(answers);
      expect(e.ids.filter((id, i) => id === eot && !e.mask[i]).length, where).toBe(e.ids.filter((id) => id === eot).length - answers);
      checked++;
    });
    expect(checked).toBeGreaterThanOrEqual(c.template === 'mistral-v0.3' ? 2 : 4);
  });

  it.each(caseNames)('%s: the prompt inference sends at turn N is the trained ids up to the N-th answer', async (name) => {
    const c = theCase(name);
    const tok = await open(c);
    const chatTemplate = renderer(c);
    for (const system of c.template === 'mistral-v0.3' ? [null] : [null, SYSTEM]) {
      const turns = conv(system, ROUNDS.length);
      const e = encodeSample({ kind: 'chat', turns, multiTurn: true }, 'chat_template', tok, { maxSourceLength: 4096, maxTargetLength: 1024, chatTemplate });
      const starts = e.mask.flatMap((m, i) => (m && !e.mask[i - 1] ? [i] : []));
      expect(starts).toHaveLength(ROUNDS.length);
      ROUNDS.forEach((_, n) => {
        const p = encodePrompt(turns.slice(0, turns.length - 2 * (ROUNDS.length - n) + 1), 'chat_template', tok, { chatTemplate });
        expect(p.length, `${name} / turn ${n + 1}`).toBe(starts[n]);
        expect(e.ids.slice(0, p.length), `${name} / turn ${n + 1}`).toEqual(p);
        // a single-answer sample of the same rounds (Alpaca with history) trains the same ids up to its answer
        const one = encodeSample({ kind: 'chat', turns: turns.slice(0, turns.length - 2 * (ROUNDS.length - n - 1)) }, 'chat_template', tok, { maxSourceLength: 4096, maxTargetLength: 1024, chatTemplate });
        expect(one.ids.slice(0, p.length)).toEqual(p);
        expect(one.mask.indexOf(true)).toBe(p.length);
      });
    }
  });
});

describe('generation stops at the end of a turn', () => {
  it('Llama-3-Instruct: <|eot_id|> and every id of generation_config.json eos_token_id stop chat and predict', async () => {
    const tok = await open(theCase('llama3'));
    const ids = built.llama3.ids;
    // tokenizer_config.json's eos is <|eot_id|>; generation_config.json lists <|end_of_text|>, <|eom_id|>, <|eot_id|>
    expect(tok.eosId).toBe(ids['<|eot_id|>']);
    expect([...tok.eosIds].sort()).toEqual([ids['<|end_of_text|>']!, ids['<|eom_id|>']!, ids['<|eot_id|>']!].sort());
    expect(answerEndIds('chat_template', tok)).toContain(ids['<|eot_id|>']);
    // the generator's stop ids: the engine's (config.json / generation_config.json) and the tokenizer's
    expect(stopIds([], 'chat_template', tok)).toEqual(expect.arrayContaining([ids['<|eot_id|>'], ids['<|end_of_text|>'], ids['<|eom_id|>']]));
    for (const template of ['raw', 'alpaca'] as const) expect(stopIds([], template, tok)).toContain(ids['<|eot_id|>']);
  });

  it('Qwen2.5-Instruct: <|im_end|> and <|endoftext|>', async () => {
    const tok = await open(theCase('qwen2'));
    const ids = built.qwen2.ids;
    expect(tok.eosId).toBe(ids['<|im_end|>']);
    expect(tok.eosIds).toEqual([ids['<|im_end|>'], ids['<|endoftext|>']]);
    expect(stopIds([], 'chat_template', tok)).toEqual([ids['<|im_end|>'], ids['<|endoftext|>']]);
  });

  it.skipIf(!fs.existsSync(ENGINE))('the engine stops at an id that only generation_config.json\'s eos list names (Llama 3.1: [128001, 128008, 128009])', () => {
    const dir = path.join(tmp, 'tiny-llama3');
    expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama3', '--out', dir]).status).toBe(0);
    const gen = (): { ids: number[]; stopped: boolean } => {
      const r = spawnSync(ENGINE, ['generate', '--model', dir, '--prompt-ids', '1,20,21', '--greedy', '--max-new-tokens', '8'], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout);
    };
    const free = gen();
    expect(free.ids).toHaveLength(8);
    const eot = free.ids[2]!; // stands for <|eot_id|>: the third token greedy decoding writes
    const first = free.ids.indexOf(eot);
    // config.json names eos 2 only; generation_config.json's list (as Llama-3.1-Instruct's) decides
    fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: [2, 3, eot] }));
    expect(gen().ids).toEqual(free.ids.slice(0, first + 1));
    fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: eot }));
    expect(gen().ids).toEqual(free.ids.slice(0, first + 1));
  });
});

describe.skipIf(!fs.existsSync(ENGINE))('the memory estimate of these families', () => {
  it('counts the trainable parameters the engine trains (head_dim ≠ hidden / heads, q/k/v biases with LoRA bias) and the peak within 25 %', () => {
    const tok = path.join(tmp, 'est-tok.json');
    const ids = Array.from({ length: 8 }, (_, i) => Array.from({ length: 64 }, (_, j) => ((7 * i + j) % 300) + 4));
    fs.writeFileSync(tok, JSON.stringify({ input_ids: ids, labels: ids }));
    const all = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    // create-tiny mistral has head_dim 24 (hidden 64, 4 heads): q_proj 64 → 96; qwen2 has q/k/v biases; llama_bias
    // LlamaConfig's attention_bias and mlp_bias
    // (a DoRA run adds a magnitude per output row of each adapted linear, and keeps an [N, out] product per linear)
    for (const [family, bias, targets, dora] of [['mistral', 'none', all, false], ['qwen2', 'all', all, false], ['qwen2', 'lora_only', ['q_proj', 'v_proj'], false], ['llama_bias', 'lora_only', ['q_proj', 'down_proj'], false], ['llama3', 'all', all, false], ['mistral', 'none', all, true], ['qwen2', 'lora_only', ['q_proj', 'down_proj'], true]] as const) {
      const dir = path.join(tmp, `est-${family}`);
      if (!fs.existsSync(dir)) expect(spawnSync(ENGINE, ['create-tiny', '--family', family, '--out', dir]).status).toBe(0);
      const info = JSON.parse(spawnSync(ENGINE, ['inspect', '--model', dir], { encoding: 'utf8' }).stdout);
      const lora = { r: 8, alpha: 16, target_modules: [...targets], bias, ...(dora ? { use_dora: true } : {}) };
      const job = path.join(tmp, 'est-job.json');
      fs.writeFileSync(job, JSON.stringify({ model: dir, method: 'lora', lora, data: { train: tok }, training: { max_steps: 2, micro_batch_size: 4 }, output: { dir: path.join(tmp, `est-out-${family}-${bias}-${dora}`), logging_steps: 1, save_steps: 1000 }, threads: 2 }));
      const r = spawnSync(ENGINE, ['train', '--job', job], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, number | string>);
      const started = events.find((e) => e.event === 'started')!;
      const peak = Math.max(...events.filter((e) => e.event === 'step').map((e) => e.peak_mem_bytes as number));
      const spec = parseRunSpec({ model: { path: dir }, lora: { ...lora, dropout: 0 }, data: { train: tok, max_source_length: 48, max_target_length: 16 }, training: { micro_batch_size: 4 }, output: { dir: '/o' } });
      const est = estimateRun(info, spec, 2);
      const where = `${family} bias ${bias}${dora ? ' DoRA' : ''}`;
      expect(est.trainableParams, where).toBe(started.trainable_params);
      expect(Math.abs(est.bytes.total - peak) / peak, where).toBeLessThan(0.25);
    }
  }, 120_000);
});
