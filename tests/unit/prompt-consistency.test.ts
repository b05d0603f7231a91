// prompt-consistency.test.ts — the prompt inference feeds is the trained layout. For every template, several
// tokenizers (the character-level stand-in, the demo model's BPE, a LLaMA SentencePiece model, a ChatGLM2-like
// SentencePiece folder, a GPT-NeoX byte-level BPE and the tokenizers of the tiny models `create-tiny` makes), with
// and without a system prompt, 1–4 rounds: the ids of a trained conversation [system?, u1, a1, …, uN, aN] up to the
// first label of aN are exactly the prompt encodePrompt builds for [system?, u1, a1, …, u(N−1), a(N−1), uN] —
// multi-turn (ShareGPT / messages, every answer trained) and single-answer with history (Alpaca "history",
// --history_column) alike — and so is what the chat window sends at turn N (ChatService → the stored messages →
// the generator's promptIds), what predict sends for an Alpaca record with history and a system prompt, and, with
// max_source_length, a suffix of the conversation: the oldest rounds left out first, exactly as single-answer
// training leaves them out. Also: predict writes a TRL prompt/completion record's answer to "completion", and the
// GGUF export's chat_template renders the trained text (system prompt included).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ChatService } from '../../src-main/core/chat/service';
import { type ChatRenderer, loadChatTemplate } from '../../src-main/core/data/chat-template';
import { type Sample, type Turn, toSample } from '../../src-main/core/data/formats';
import { TEMPLATES, type TemplateName, encodePrompt, encodeSample } from '../../src-main/core/data/templates';
import { type LoadedTokenizer, loadTokenizer } from '../../src-main/core/data/tokenizer/index';
import type { Tokenizer } from '../../src-main/core/data/tokenizer/types';
import { Generator, type GenerateRequest } from '../../src-main/core/engine/generator';
import type { EngineHost } from '../../src-main/core/engine/host';
import { promptTurns } from '../../src-main/core/eval/predict';
import { ensureDemoModel } from '../../src-main/core/runs/demo';
import { Store } from '../../src-main/core/store/store';
import { charTok } from '../helpers/char-tokenizer';
import { ENGINE } from '../helpers/native';
import { llamaSpModel, neoxTokenizerJson, writeFolder } from '../fixtures/tokenizers/fixtures';

const ROOT = path.resolve(__dirname, '..', '..');
const builtins = TEMPLATES.filter((t) => t !== 'chat_template') as Exclude<TemplateName, 'chat_template'>[];
const tokObj = (content: string) => ({ __type: 'AddedToken', content, lstrip: false, normalized: false, rstrip: false, single_word: false });

// chat_templates that render a conversation as a growing prefix (the ones training accepts)
const CHAT_TEMPLATES: Record<string, { template: string; specials: Record<string, string> }> = {
  llama3: {
    template:
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    specials: { eos_token: '<|eot_id|>', bos_token: '<|begin_of_text|>' },
  },
  qwen2: {
    template:
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    specials: { eos_token: '<|im_end|>' },
  },
  'deepseek-llm': {
    template:
      "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
    specials: { eos_token: '<｜end▁of▁sentence｜>', bos_token: '<｜begin▁of▁sentence｜>' },
  },
};

const ROUNDS: [string, string][] = [
  ['患者有高血压吗？', 'Yes — 有，血压 150/95 mmHg。'],
  ['And the dose?\n剂量是多少', ' 5 mg twice a day, 每日两次 '],
  ['ok', '好的'],
  ['Thanks! 再见', '不客气。Take care.'],
];
const SYSTEMS = [null, 'You are a careful medical assistant.\n请简短回答。'];

/** [system?, u1, a1, …, un, an] */
function conv(system: string | null, n: number, from = 0): Turn[] {
  const turns: Turn[] = system !== null ? [{ role: 'system', content: system }] : [];
  for (const [q, a] of ROUNDS.slice(from, n)) turns.push({ role: 'user', content: q }, { role: 'assistant', content: a });
  return turns;
}
/** The starts of the trained stretches of a mask (one per trained answer). */
function runStarts(mask: boolean[]): number[] {
  const s: number[] = [];
  mask.forEach((m, i) => m && !mask[i - 1] && s.push(i));
  return s;
}
/** Trained ids between the question and the answer (raw: bos; chatglm: sop), which the prompt holds. */
const trainedBetween = (name: TemplateName) => (name === 'raw' || name === 'chatglm' ? 1 : 0);
/** Whether a conversation of this template trains its every answer (ChatGLM-6B folds earlier rounds: the last). */
const everyAnswer = (name: TemplateName) => name !== 'chatglm';
/** A tokenizer that lacks what the template needs: the template is refused up front (data prepare / the wizard). */
function usable(name: TemplateName, tok: Tokenizer, chatTemplate?: ChatRenderer): boolean {
  try {
    encodeSample({ kind: 'chat', turns: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }, name, tok, { maxSourceLength: 8, maxTargetLength: 8, ...(chatTemplate ? { chatTemplate } : {}) });
    return true;
  } catch (err) {
    expect((err as Error).message).toMatch(/which the ".*" template needs/);
    return false;
  }
}

let tmp: string;
const toks: { name: string; tok: Tokenizer; dir: string | null }[] = [];
const loaded: LoadedTokenizer[] = [];
const renderers: Record<string, ChatRenderer> = {};
const haveEngine = fs.existsSync(ENGINE);

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-prompt-'));
  const sp = await llamaSpModel();
  const dirs: Record<string, string> = {
    demo: path.join(ROOT, 'resources', 'demo'),
    'llama-sp': writeFolder(path.join(tmp, 'llama-sp'), {
      'tokenizer.model': sp,
      'tokenizer_config.json': { add_bos_token: true, add_eos_token: false, bos_token: tokObj('<s>'), eos_token: tokObj('</s>'), unk_token: tokObj('<unk>'), pad_token: null, legacy: true, tokenizer_class: 'LlamaTokenizer' },
      'config.json': { model_type: 'llama', vocab_size: 32000, bos_token_id: 1, eos_token_id: 2 },
    }),
    'chatglm2-sp': writeFolder(path.join(tmp, 'chatglm2-sp'), {
      'tokenizer.model': sp,
      'tokenizer_config.json': { name_or_path: 'THUDM/chatglm2-6b', remove_space: false, do_lower_case: false, tokenizer_class: 'ChatGLMTokenizer' },
      'config.json': { model_type: 'chatglm', pad_token_id: 0, eos_token_id: 2, padded_vocab_size: 65024 },
    }),
    neox: writeFolder(path.join(tmp, 'neox'), {
      'tokenizer.json': neoxTokenizerJson(),
      'tokenizer_config.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>', tokenizer_class: 'GPTNeoXTokenizer' },
      'config.json': { model_type: 'gpt_neox', bos_token_id: 0, eos_token_id: 0 },
    }),
  };
  // the tiny models the tests create (byte-level BPE with each family's specials)
  if (haveEngine) {
    dirs.demo = ensureDemoModel(tmp); // the demo model: its configs name <s> and </s>
    for (const family of ['llama', 'chatglm', 'chatglm2', 'baichuan', 'minicpm']) {
      const out = path.join(tmp, `tiny-${family}`);
      const r = spawnSync(ENGINE, ['create-tiny', '--family', family, '--out', out], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      dirs[`tiny-${family}`] = out;
    }
  }
  toks.push({ name: 'char', tok: charTok, dir: null });
  for (const [name, dir] of Object.entries(dirs)) {
    const tok = await loadTokenizer(dir);
    loaded.push(tok);
    toks.push({ name, tok, dir });
  }
  for (const [name, c] of Object.entries(CHAT_TEMPLATES)) {
    renderers[name] = loadChatTemplate(writeFolder(path.join(tmp, `ct-${name}`), { 'tokenizer_config.json': { chat_template: c.template, ...c.specials } }));
  }
}, 120_000);

afterAll(() => {
  for (const t of loaded) t.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Every (template, tokenizer, chat_template) combination the tokenizer can lay out. */
function combos(): { name: TemplateName; tk: (typeof toks)[number]; ct?: string }[] {
  const out: { name: TemplateName; tk: (typeof toks)[number]; ct?: string }[] = [];
  for (const tk of toks) {
    for (const name of builtins) if (usable(name, tk.tok)) out.push({ name, tk });
    for (const ct of Object.keys(renderers)) out.push({ name: 'chat_template', tk, ct });
  }
  return out;
}

const BIG = { maxSourceLength: 4096, maxTargetLength: 1024 };

describe('training up to an answer = the prompt inference builds for the rounds before it', () => {
  it('every template, every tokenizer, with and without a system prompt, 1–4 rounds', () => {
    const ran = new Map<string, number>();
    for (const { name, tk, ct } of combos()) {
      const chatTemplate = ct ? renderers[ct] : undefined;
      const extra = chatTemplate ? { chatTemplate } : {};
      for (const system of SYSTEMS) {
        for (let n = 1; n <= ROUNDS.length; n++) {
          const turns = conv(system, n);
          const where = `${name}${ct ? `(${ct})` : ''} / ${tk.name} / system ${system !== null} / ${n} round(s)`;
          const prompts = Array.from({ length: n }, (_, k) => encodePrompt(turns.slice(0, turns.length - 2 * (n - k) + 1), name, tk.tok, extra));
          const tr = trainedBetween(name);
          for (const multiTurn of [true, false]) {
            const e = encodeSample({ kind: 'chat', turns, ...(multiTurn ? { multiTurn } : {}) } as Sample, name, tk.tok, { ...BIG, ...extra });
            expect(e.truncatedTokens, where).toBe(0);
            // the answers trained: every one of a conversation (ChatGLM-6B: the last), the last of a single-answer sample
            const trained = multiTurn && everyAnswer(name) ? prompts.map((_, k) => k) : [n - 1];
            expect(runStarts(e.mask), `${where}, multiTurn ${multiTurn}`).toEqual(trained.map((k) => prompts[k]!.length - tr));
            for (const k of trained) {
              const p = prompts[k]!;
              expect(e.ids.slice(0, p.length), `${where}, multiTurn ${multiTurn}, answer ${k + 1}`).toEqual(p);
              // and the answer's own ids follow (a built-in template tokenizes each answer alone)
              if (name !== 'chat_template') {
                const a = tk.tok.encode(ROUNDS[k]![1]);
                expect(e.ids.slice(p.length, p.length + a.length), where).toEqual(a);
              }
            }
          }
          ran.set(name, (ran.get(name) ?? 0) + 1);
        }
      }
    }
    // every template ran on several tokenizers (chatglm needs [gMASK]/sop/eop: the stand-in and the ChatGLM folders)
    for (const name of TEMPLATES) expect(ran.get(name) ?? 0, name).toBeGreaterThanOrEqual((haveEngine ? 3 : 2) * SYSTEMS.length * ROUNDS.length);
  }, 120_000);

  it('a single round is the seed layout (PromptCBLUE, raw): prompt[: max_source_length − 1] + [eos, bos] + target[: max_target_length − 2] + [eos]', () => {
    for (const { tok, name } of toks) {
      if (!usable('raw', tok)) continue;
      const rec = { input: ROUNDS[1]![0], target: ROUNDS[1]![1] };
      for (const [ms, mt] of [[512, 64], [6, 5]] as const) {
        const a = tok.encode(rec.input).slice(0, ms - 1);
        const b = tok.encode(rec.target).slice(0, mt - 2);
        const e = encodeSample(toSample(rec, 'promptcblue'), 'raw', tok, { maxSourceLength: ms, maxTargetLength: mt });
        expect(e.ids, name).toEqual([...a, tok.eosId!, tok.bosId!, ...b, tok.eosId!]);
        expect(encodePrompt(promptTurns(rec, 'promptcblue'), 'raw', tok, { maxSourceLength: ms }), name).toEqual([...a, tok.eosId!, tok.bosId!]);
      }
    }
  });
});

/** Ids of a built-in template's prompt that max_source_length does not count: its prefix and the specials before the answer. */
function overhead(name: TemplateName, tok: Tokenizer): { prefix: number; between: number } {
  const prefix = name === 'chatglm2' ? 2 : ['alpaca', 'minicpm', 'vicuna'].includes(name) && tok.bosId !== null ? 1 : 0;
  return { prefix, between: name === 'raw' || name === 'chatglm' ? 2 : name === 'baichuan-chat' ? 1 : 0 };
}

describe('with max_source_length, inference keeps the latest rounds as training does', () => {
  it('predict and chat prompts are the trained prompt of a suffix of the conversation, the oldest rounds left out first', () => {
    let cut = 0;
    let dropped = 0;
    for (const { name, tk, ct } of combos()) {
      if (!['char', 'demo', 'llama-sp', 'chatglm2-sp', 'tiny-chatglm'].includes(tk.name) || (ct && ct !== 'qwen2')) continue;
      const chatTemplate = ct ? renderers[ct] : undefined;
      const extra = chatTemplate ? { chatTemplate } : {};
      const o = name === 'chat_template' ? { prefix: 0, between: 0 } : overhead(name, tk.tok);
      for (const system of SYSTEMS) {
        const n = ROUNDS.length;
        const turns = conv(system, n);
        // an Alpaca record with a system prompt and history: predict's prompt turns, training's sample
        const rec = { ...(system !== null ? { system } : {}), instruction: ROUNDS[n - 1]![0], input: '', output: ROUNDS[n - 1]![1], history: ROUNDS.slice(0, n - 1) };
        expect(promptTurns(rec, 'alpaca')).toEqual(turns.slice(0, -1));
        // the prompts of the conversation's suffixes (rounds d+1 … n), uncut, and what max_source_length counts of them
        const suffix = Array.from({ length: n }, (_, d) => encodePrompt([...(system !== null ? turns.slice(0, 1) : []), ...conv(null, n, d).slice(0, -1)], name, tk.tok, extra));
        const counted = suffix.map((p) => p.length - o.prefix - o.between);
        let last = -1;
        const budgets = new Set<number>([counted[0]! + 1]);
        for (let ms = 2; ms <= counted[0]! + 1; ms += Math.max(1, Math.floor(counted[0]! / 30))) budgets.add(ms);
        for (const ms of [...budgets].sort((x, y) => x - y)) {
          const limit = name === 'baichuan-chat' ? ms : ms - 1;
          const where = `${name}${ct ? `(${ct})` : ''} / ${tk.name} / system ${system !== null} / max_source_length ${ms}`;
          const p = encodePrompt(promptTurns(rec, 'alpaca'), name, tk.tok, { maxSourceLength: ms, ...extra });
          // the fewest oldest rounds left out for the rest to fit; when even the question alone does not, it is cut
          const d = counted.findIndex((c) => c <= limit);
          if (d >= 0) {
            expect(p, where).toEqual(suffix[d]);
            if (d > 0) dropped++;
            // a view the model was trained on: the multi-turn sample of those rounds holds it before its last answer
            const m = encodeSample({ kind: 'chat', turns: [...(system !== null ? turns.slice(0, 1) : []), ...conv(null, n, d)], multiTurn: true }, name, tk.tok, { ...BIG, ...extra });
            expect(m.ids.slice(0, p.length), where).toEqual(p);
          } else if (name === 'chat_template') {
            expect(p, where).toEqual(suffix[n - 1]); // a chat_template prompt is never cut (its generation prompt stays whole)
          } else {
            const q = suffix[n - 1]!;
            expect(p, where).toEqual([...q.slice(0, o.prefix + limit), ...q.slice(q.length - o.between)]);
            cut++;
          }
          // oldest first: a larger budget never keeps fewer rounds
          const kept = d < 0 ? 0 : n - d;
          expect(kept, where).toBeGreaterThanOrEqual(last);
          last = kept;
          // predict's prompt is the single-answer sample's (the record as training reads it), token for token
          if (d >= 0 || name !== 'chat_template') {
            const e = encodeSample(toSample(rec, 'alpaca'), name, tk.tok, { maxSourceLength: ms, maxTargetLength: 64, ...extra });
            expect(e.ids.slice(0, p.length), where).toEqual(p);
            expect(runStarts(e.mask), where).toEqual([p.length - trainedBetween(name)]);
          }
        }
        expect(last, `${name} / ${tk.name}`).toBe(n);
      }
    }
    expect(cut).toBeGreaterThan(10);
    expect(dropped).toBeGreaterThan(50);
  }, 120_000);
});

describe("the chat window's request path: stored messages → ChatService → the generator's prompt", () => {
  it('at turn N the model is fed the trained conversation up to its N-th answer', async () => {
    const generator = new Generator();
    const prompts: number[][] = [];
    let replies: string[] = [];
    const host = {
      generate: async (req: GenerateRequest) => {
        prompts.push(await generator.promptIds(req));
        const text = replies.shift()!;
        return { text, ids: [1], promptTokens: prompts.at(-1)!.length, finish: 'stop', seconds: 0, device: 'cpu', restarted: null };
      },
      stop: () => {},
    } as unknown as EngineHost;
    const store = Store.open(':memory:');
    const chat = new ChatService(store, host);
    let checked = 0;
    try {
      for (const tk of toks.filter((t) => t.dir !== null)) {
        // a model folder whose tokenizer_config.json also holds a chat_template (qwen2's)
        const dir = writeFolder(path.join(tmp, `chat-${tk.name}`), {});
        for (const f of fs.readdirSync(tk.dir!)) if (!f.startsWith('model')) fs.copyFileSync(path.join(tk.dir!, f), path.join(dir, f));
        const cfgFile = path.join(dir, 'tokenizer_config.json');
        const cfg = fs.existsSync(cfgFile) ? (JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>) : {};
        fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: CHAT_TEMPLATES.qwen2!.template }));
        const tok = await generator.tokenizer(dir);
        const chatTemplate = loadChatTemplate(dir);
        for (const name of TEMPLATES) {
          if (name !== 'chat_template' && !usable(name, tok)) continue;
          const extra = name === 'chat_template' ? { chatTemplate } : {};
          for (const system of SYSTEMS) {
            const s = chat.createSession({ model: dir, template: name, system });
            prompts.length = 0;
            replies = ROUNDS.map(([, a]) => a);
            for (const [q] of ROUNDS) await chat.send(s.id, q);
            const turns = conv(system, ROUNDS.length);
            const e = encodeSample({ kind: 'chat', turns, multiTurn: true }, name, tok, { ...BIG, ...extra });
            ROUNDS.forEach((_, k) => {
              const where = `${name} / ${tk.name} / system ${system !== null} / turn ${k + 1}`;
              // ChatGLM-6B trains a conversation's last answer: the conversation of the first k + 1 rounds
              const sample = everyAnswer(name) ? e : encodeSample({ kind: 'chat', turns: conv(system, k + 1), multiTurn: true }, name, tok, { ...BIG, ...extra });
              const start = runStarts(sample.mask)[everyAnswer(name) ? k : 0]!;
              const p = prompts[k]!;
              expect(p.length - trainedBetween(name), where).toBe(start);
              expect(sample.ids.slice(0, p.length), where).toEqual(p);
              checked++;
            });
          }
        }
      }
    } finally {
      store.close();
      await generator.dispose();
    }
    expect(checked).toBeGreaterThan(100);
  }, 120_000);

  it('an answer stopped before its first character is no answer: the next question replaces its question', async () => {
    const generator = new Generator();
    const prompts: number[][] = [];
    const replies = ['', ROUNDS[1]![1]];
    const host = {
      generate: async (req: GenerateRequest) => {
        prompts.push(await generator.promptIds(req));
        return { text: replies.shift()!, ids: [], promptTokens: 0, finish: 'aborted', seconds: 0, device: 'cpu', restarted: null };
      },
      stop: () => {},
    } as unknown as EngineHost;
    const store = Store.open(':memory:');
    try {
      const chat = new ChatService(store, host);
      const dir = path.join(ROOT, 'resources', 'demo');
      const s = chat.createSession({ model: dir, template: 'alpaca' });
      await chat.send(s.id, ROUNDS[0]![0]);
      await chat.send(s.id, ROUNDS[1]![0]);
      const tok = await generator.tokenizer(dir);
      expect(prompts[1]).toEqual(encodePrompt([{ role: 'user', content: ROUNDS[1]![0] }], 'alpaca', tok));
    } finally {
      store.close();
      await generator.dispose();
    }
  });
});

describe("predict's request path: records → prompts → the generator's prompt", () => {
  /** A host that lays out each request with the generator (as the engine's child does) and answers "ANSWER k". */
  function fakeHost(generator: Generator, prompts: number[][]) {
    return {
      load: async () => ({ device: 'cpu', precision: 'fp32' }),
      generateBatch: async (reqs: GenerateRequest[]) =>
        Promise.all(
          reqs.map(async (r) => {
            prompts.push(await generator.promptIds(r));
            return { text: `ANSWER ${prompts.length}`, ids: [1], promptTokens: 0, finish: 'stop', seconds: 0, device: 'cpu', restarted: null };
          }),
        ),
    } as unknown as EngineHost;
  }

  it('an Alpaca record with a system prompt and history is prompted with the trained ids before its answer', async () => {
    const { prepareDataset } = await import('../../src-main/core/data/prepare');
    const { TokReader } = await import('../../src-main/core/data/tokfile');
    const { predict } = await import('../../src-main/core/eval/predict');
    const dir = toks.find((t) => t.name === 'llama-sp')!.dir!;
    const data = path.join(tmp, 'alpaca-hist.jsonl');
    const recs = [1, 2, 3, 4].map((n) => ({ system: 'Be brief.', instruction: ROUNDS[n - 1]![0], input: '', output: ROUNDS[n - 1]![1], history: ROUNDS.slice(0, n - 1) }));
    fs.writeFileSync(data, recs.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const generator = new Generator();
    try {
      const tok = await generator.tokenizer(dir);
      for (const template of ['alpaca', 'raw', 'belle', 'vicuna'] as const) {
        for (const ms of [512, 40]) {
          const prompts: number[][] = [];
          await predict({ model: dir, data, out: path.join(tmp, `pred-${template}-${ms}.jsonl`), template, maxSourceLength: ms, host: fakeHost(generator, prompts), batchSize: 3, resume: false });
          await prepareDataset({ dataFile: data, out: path.join(tmp, 'hist.tok'), tokenizer: tok, template, maxSourceLength: ms, maxTargetLength: 64 });
          const t = TokReader.open(path.join(tmp, 'hist.tok'));
          try {
            expect(prompts).toHaveLength(recs.length);
            prompts.forEach((p, i) => {
              const s = t.sample(i);
              expect(s.input_ids.slice(0, p.length), `${template} / ${ms} / record ${i + 1}`).toEqual(p);
              expect(s.labels.findIndex((l) => l !== -100), `${template} / ${ms}`).toBe(p.length - trainedBetween(template));
            });
          } finally {
            t.close();
          }
        }
      }
    } finally {
      await generator.dispose();
    }
  }, 120_000);

  it('TRL prompt/completion records get their answer in "completion"; prompt/response ones in "response"', async () => {
    const { predict } = await import('../../src-main/core/eval/predict');
    const dir = toks.find((t) => t.name === 'llama-sp')!.dir!;
    const generator = new Generator();
    try {
      for (const [field, other] of [['completion', 'response'], ['response', 'completion']] as const) {
        const data = path.join(tmp, `trl-${field}.jsonl`);
        fs.writeFileSync(data, [JSON.stringify({ prompt: 'The sky is', [field]: ' blue.' }), JSON.stringify({ prompt: 'Grass is', [field]: ' green.' })].join('\n') + '\n');
        const out = path.join(tmp, `trl-${field}-pred.jsonl`);
        const prompts: number[][] = [];
        const r = await predict({ model: dir, data, out, template: 'raw', host: fakeHost(generator, prompts), resume: false });
        expect(r.field).toBe(field);
        const got = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
        expect(got).toEqual([{ prompt: 'The sky is', [field]: 'ANSWER 1' }, { prompt: 'Grass is', [field]: 'ANSWER 2' }]);
        expect(got.every((g) => !(other in g))).toBe(true);
      }
    } finally {
      await generator.dispose();
    }
  });
});

describe('the GGUF / Ollama export lays out a conversation as training does', () => {
  it('its Jinja chat_template renders the trained text of every exportable template, with and without a system prompt', async () => {
    const { EXPORT_TEMPLATES, jinjaTemplate, ollamaModelfile } = await import('../../src-main/core/models/gguf');
    for (const name of EXPORT_TEMPLATES) {
      // the stand-in tokenizer decodes bos/eos as <1>/<2>: the same strings as the template's bos_token/eos_token
      const r = loadChatTemplate(writeFolder(path.join(tmp, `gguf-${name}`), { 'tokenizer_config.json': { chat_template: jinjaTemplate(name), bos_token: '<1>', eos_token: '<2>' } }));
      for (const system of SYSTEMS) {
        for (let n = 1; n <= ROUNDS.length; n++) {
          const turns = conv(system, n);
          const where = `${name} / system ${system !== null} / ${n} round(s)`;
          expect(r.render(turns.slice(0, -1), true), where).toBe(charTok.decode(encodePrompt(turns.slice(0, -1), name, charTok)));
          expect(r.render(turns, false), where).toBe(charTok.decode(encodeSample({ kind: 'chat', turns, multiTurn: true }, name, charTok, BIG).ids));
        }
      }
      const m = ollamaModelfile('m.gguf', name, { tokens: ['<unk>', '<s>', '</s>'], bos: 1, eos: 2 });
      expect(m).toContain(name === 'vicuna' ? '{{ if $.System }}{{ $.System }}{{ else }}' : '{{ if $.System }}{{ $.System }}\n{{ end }}');
    }
  });
});
