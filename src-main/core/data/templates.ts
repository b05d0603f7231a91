// templates.ts — prompt templates: how a Sample becomes token ids and a loss mask for each model family,
// with the seed's truncation (source ids cut to max_source_length − 1, target ids to max_target_length − 2).
// Single-answer samples (PromptCBLUE, columns with history) fold earlier rounds into the prompt and train on
// the last answer, as the seed and ChatGLM's scripts do; ShareGPT conversations train on every assistant turn.
import type { ChatRenderer } from './chat-template.js';
import type { Sample, Turn } from './formats.js';
import type { Tokenizer } from './tokenizer/types.js';

export const TEMPLATES = ['raw', 'chatglm', 'chatglm2', 'alpaca', 'belle', 'baichuan-chat', 'minicpm', 'vicuna', 'chat_template'] as const;
export type TemplateName = (typeof TEMPLATES)[number];

export interface EncodeOptions {
  maxSourceLength: number;
  maxTargetLength: number;
  /** Train on the prompt tokens too (default: responses only). */
  trainOnPrompt?: boolean;
  /** The model's own chat_template (template "chat_template"). */
  chatTemplate?: ChatRenderer;
}

export interface Encoded {
  ids: number[];
  /** true where the token is a label (HF labels[t] = ids[t]); false where labels[t] = −100. */
  mask: boolean[];
  /** Tokens removed by truncation (source + target). */
  truncatedTokens: number;
  /** true when truncatedTokens is an estimate: a field longer than its character budget was cut before
   *  tokenizing (see `charBudget`), so the tokens past the cut were never counted. */
  truncationEstimated?: boolean;
}

/**
 * The characters of a text that are tokenized when at most its first `keep` tokens can be kept. Truncation keeps
 * the head of every field, so the text can be cut before tokenizing without changing the kept tokens, as long as
 * the cut lies well past the end of the keep-th token: a token spans a few characters, rarely dozens (runs of
 * spaces, "=====", long words), and a cut only changes the tokens of the pre-token / merge window it falls in.
 * The budget allows 64 characters per kept token (at least 64 Ki characters), plus a margin of 4 Ki characters
 * for the boundary — ordinary records are far below it and are tokenized whole, exactly as before; a single huge
 * field (a 5 MB JSON line) no longer costs millions of ids in memory.
 */
export function charBudget(keep: number): number {
  return Math.max(64 * Math.max(0, keep), 65536) + 4096;
}

interface Head {
  ids: number[];
  /** tokens of the whole text: exact unless `estimated` */
  total: number;
  estimated: boolean;
}

/** The ids of `text` of which at most the first `keep` are used: the whole text's, or those of its head cut at
 *  `charBudget(keep)` characters (never inside a surrogate pair), with the whole text's count estimated. */
function encodeHead(tokenizer: Tokenizer, text: string, keep: number): Head {
  let end = charBudget(keep);
  if (text.length <= end) {
    const ids = tokenizer.encode(text);
    return { ids, total: ids.length, estimated: false };
  }
  const c = text.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  const ids = tokenizer.encode(text.slice(0, end));
  // at the head's density; never fewer than the head holds plus one (the rest is not empty)
  return { ids, total: Math.max(ids.length + 1, Math.round((ids.length * text.length) / end)), estimated: true };
}

type Piece = { id: number; train: boolean };

interface Spec {
  /** ids at the very start (never trained) */
  prefix(t: Tok): number[];
  /** the user part of round `i` (1-based) as text; `history` are earlier rounds for single-answer prompts */
  prompt(query: string, history: [string, string][], system: string | null): string;
  /** the user part of one round in multi-turn mode */
  round(query: string, i: number, system: string | null): string;
  /** special ids between the prompt and the answer, each trained or not */
  between(t: Tok): Piece[];
  /** ids after the answer (trained) */
  end(t: Tok): number[];
}

class Tok {
  constructor(
    readonly tok: Tokenizer,
    readonly template: string,
  ) {}
  need(name: 'bosId' | 'eosId'): number {
    const v = this.tok[name];
    if (v === null) throw new Error(`the tokenizer has no ${name === 'bosId' ? 'bos' : 'eos'} token, which the "${this.template}" template needs`);
    return v;
  }
  special(...names: string[]): number {
    for (const n of names) {
      const id = this.tok.tokenToId(n);
      if (id !== null) return id;
    }
    throw new Error(`the tokenizer has none of ${names.join(', ')}, which the "${this.template}" template needs`);
  }
}

const VICUNA_SYSTEM =
  "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

const specs: Record<Exclude<TemplateName, 'chat_template'>, Spec> = {
  // the seed's PromptCBLUE layout: prompt + [eos, bos] + target + [eos]; eos after the prompt is masked
  raw: {
    prefix: () => [],
    prompt: (q, h) => h.map(([a, b]) => `${a}\n${b}\n`).join('') + q,
    round: (q) => q,
    between: (t) => [
      { id: t.need('eosId'), train: false },
      { id: t.need('bosId'), train: true },
    ],
    end: (t) => [t.need('eosId')],
  },
  // ChatGLM-6B v1: prompt + [gMASK, sop] + target + [eop]; labels from sop on
  chatglm: {
    prefix: () => [],
    prompt: (q, h) => (h.length ? h.map(([a, b], i) => `[Round ${i}]\n问：${a}\n答：${b}\n`).join('') + `[Round ${h.length}]\n问：${q}\n答：` : q),
    round: (q, i) => `[Round ${i - 1}]\n问：${q}\n答：`,
    between: (t) => [
      { id: t.special('[gMASK]'), train: false },
      { id: t.special('sop', '<sop>'), train: true },
    ],
    end: (t) => [t.special('eop', '<eop>')],
  },
  // ChatGLM2-6B: [gMASK, sop] + prompt + target + [eos]
  chatglm2: {
    prefix: (t) => [t.special('[gMASK]'), t.special('sop', '<sop>')],
    prompt: (q, h) => h.map(([a, b], i) => `[Round ${i + 1}]\n\n问：${a}\n\n答：${b}\n\n`).join('') + `[Round ${h.length + 1}]\n\n问：${q}\n\n答：`,
    round: (q, i) => `[Round ${i}]\n\n问：${q}\n\n答：`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  alpaca: {
    prefix: (t) => (t.tok.bosId !== null ? [t.tok.bosId] : []),
    prompt: (q, h) =>
      'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
      h.map(([a, b]) => `### Instruction:\n${a}\n\n### Response:\n${b}\n\n`).join('') +
      `### Instruction:\n${q}\n\n### Response:\n`,
    round: (q, i) =>
      (i === 1 ? 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' : '\n\n') +
      `### Instruction:\n${q}\n\n### Response:\n`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  // BELLE: "Human: \n{input}\n\nAssistant: \n"
  belle: {
    prefix: () => [],
    prompt: (q, h) => h.map(([a, b]) => `Human: \n${a}\n\nAssistant: \n${b}\n\n`).join('') + `Human: \n${q}\n\nAssistant: \n`,
    round: (q, i) => `${i > 1 ? '\n\n' : ''}Human: \n${q}\n\nAssistant: \n`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  // Baichuan-13B-Chat: per round [195] + user + [196] + assistant + [eos] (user/assistant_token_id)
  'baichuan-chat': {
    prefix: () => [],
    prompt: (q) => q,
    round: (q) => q,
    between: () => [{ id: 196, train: false }],
    end: (t) => [t.need('eosId')],
  },
  // MiniCPM chat (modeling_minicpm.py `chat`): bos, then per round "<用户>{q}<AI>" + answer; eos after the answer
  minicpm: {
    prefix: (t) => (t.tok.bosId !== null ? [t.tok.bosId] : []),
    prompt: (q, h) => h.map(([a, b]) => `<用户>${a}<AI>${b}`).join('') + `<用户>${q}<AI>`,
    round: (q) => `<用户>${q}<AI>`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  vicuna: {
    prefix: (t) => (t.tok.bosId !== null ? [t.tok.bosId] : []),
    prompt: (q, h, sys) => `${sys ?? VICUNA_SYSTEM}` + h.map(([a, b]) => ` USER: ${a} ASSISTANT: ${b}</s>`).join('') + ` USER: ${q} ASSISTANT:`,
    round: (q, i, sys) => (i === 1 ? `${sys ?? VICUNA_SYSTEM}` : '') + ` USER: ${q} ASSISTANT:`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
};

/**
 * The model's chat_template: the conversation is rendered prefix by prefix (with and without the generation
 * prompt), so each assistant answer is the text the template adds for it; prompts are masked, answers (and
 * whatever the template closes them with) trained. Single-answer samples keep the seed's truncation.
 */
function encodeWithChatTemplate(sample: Sample, tokenizer: Tokenizer, opt: EncodeOptions): Encoded {
  const r = opt.chatTemplate;
  if (!r) throw new Error('the "chat_template" template needs the model\'s chat_template (tokenizer_config.json)');
  if (sample.kind === 'text') throw new Error('the "chat_template" template needs conversations, not plain text');
  const msgs = sample.turns;
  const ids: number[] = [];
  const mask: boolean[] = [];
  let truncated = 0;
  let estimated = false;
  const max = opt.maxSourceLength + opt.maxTargetLength;
  const assistantAt = msgs.map((m, i) => (m.role === 'assistant' ? i : -1)).filter((i) => i >= 0);
  const trained = sample.multiTurn ? assistantAt : assistantAt.slice(-1);
  let done = '';
  for (const k of trained) {
    const prefix = r.render(msgs.slice(0, k), true);
    const full = r.render(msgs.slice(0, k + 1), false);
    if (!prefix.startsWith(done) || !full.startsWith(prefix)) {
      throw new Error('the chat_template does not render this conversation as a growing prefix; pick a built-in template');
    }
    // single answer: the seed's truncation of each side; multi-turn: nothing past `max` tokens is kept
    const srcHead = encodeHead(tokenizer, prefix.slice(done.length), sample.multiTurn ? max : opt.maxSourceLength - 1);
    const tgtHead = encodeHead(tokenizer, full.slice(prefix.length), sample.multiTurn ? max : opt.maxTargetLength - 2);
    estimated ||= srcHead.estimated || tgtHead.estimated;
    let src = srcHead.ids;
    let tgt = tgtHead.ids;
    if (!sample.multiTurn) {
      const s = src.slice(0, Math.max(0, opt.maxSourceLength - 1));
      const g = tgt.slice(0, Math.max(0, opt.maxTargetLength - 2));
      truncated += srcHead.total - s.length + tgtHead.total - g.length;
      src = s;
      tgt = g;
    } else truncated += srcHead.total - src.length + tgtHead.total - tgt.length;
    for (const x of src) (ids.push(x), mask.push(Boolean(opt.trainOnPrompt)));
    for (const x of tgt) (ids.push(x), mask.push(true));
    done = full;
  }
  if (sample.multiTurn && ids.length > max) {
    truncated += ids.length - max;
    ids.length = max;
    mask.length = max;
  }
  return { ids, mask, truncatedTokens: truncated, ...(estimated ? { truncationEstimated: true } : {}) };
}

/** Baichuan-chat prefixes each user turn with 195 (not expressible as text). */
function userPrefix(name: TemplateName): number[] {
  return name === 'baichuan-chat' ? [195] : [];
}

export function encodeSample(sample: Sample, name: TemplateName, tokenizer: Tokenizer, opt: EncodeOptions): Encoded {
  if (name === 'chat_template') return encodeWithChatTemplate(sample, tokenizer, opt);
  const spec = specs[name];
  if (!spec) throw new Error(`unknown template "${name}" (known: ${TEMPLATES.join(', ')})`);
  const t = new Tok(tokenizer, name);
  const ids: number[] = [];
  const mask: boolean[] = [];
  const push = (xs: number[], train: boolean) => {
    for (const x of xs) {
      ids.push(x);
      mask.push(train || Boolean(opt.trainOnPrompt));
    }
  };
  if (sample.kind === 'text') {
    // continued pre-training: the text itself, trained on everything, then eos
    const max = opt.maxSourceLength + opt.maxTargetLength;
    const body = encodeHead(tokenizer, sample.text, max - 1);
    const keep = body.ids.slice(0, Math.max(0, max - 1));
    push(keep, true);
    push([t.need('eosId')], true);
    return { ids, mask: mask.map(() => true), truncatedTokens: body.total - keep.length, ...(body.estimated ? { truncationEstimated: true } : {}) };
  }
  const turns = sample.turns;
  const system = turns[0]?.role === 'system' ? turns[0].content : null;
  const chat: Turn[] = system !== null ? turns.slice(1) : turns;
  const rounds: [string, string][] = [];
  for (let i = 0; i + 1 < chat.length; i += 2) rounds.push([chat[i]!.content, chat[i + 1]!.content]);
  let truncated = 0;
  push(spec.prefix(t), false);
  if (rounds.length === 1 || !sample.multiTurn) {
    const [query, answer] = rounds.at(-1)!;
    const src = encodeHead(tokenizer, spec.prompt(query, rounds.slice(0, -1), system), opt.maxSourceLength - 1);
    const tgt = encodeHead(tokenizer, answer, opt.maxTargetLength - 2);
    const s = src.ids.slice(0, Math.max(0, opt.maxSourceLength - 1));
    const g = tgt.ids.slice(0, Math.max(0, opt.maxTargetLength - 2));
    truncated += src.total - s.length + tgt.total - g.length;
    push(userPrefix(name), false);
    push(s, false);
    for (const p of spec.between(t)) push([p.id], p.train);
    push(g, true);
    push(spec.end(t), true);
    return { ids, mask, truncatedTokens: truncated, ...(src.estimated || tgt.estimated ? { truncationEstimated: true } : {}) };
  }
  // multi-turn: every assistant turn is trained; the whole sequence is capped at source + target lengths, so no
  // piece can contribute more than that many tokens (the rest of a huge piece is counted, not tokenized)
  const max = opt.maxSourceLength + opt.maxTargetLength;
  let uncounted = 0; // tokens past a cut piece's head: never in ids, but truncated
  let estimated = false;
  const piece = (text: string): number[] => {
    const h = encodeHead(tokenizer, text, max);
    uncounted += h.total - h.ids.length;
    estimated ||= h.estimated;
    return h.ids;
  };
  rounds.forEach(([q, a], i) => {
    push(userPrefix(name), false);
    push(piece(spec.round(q, i + 1, system)), false);
    for (const p of spec.between(t)) push([p.id], p.train);
    push(piece(a), true);
    push(spec.end(t), true);
  });
  truncated = uncounted;
  if (ids.length > max) {
    truncated += ids.length - max;
    ids.length = max;
    mask.length = max;
  }
  return { ids, mask, truncatedTokens: truncated, ...(estimated ? { truncationEstimated: true } : {}) };
}

export interface PromptOptions {
  /** Cut the prompt text's ids to maxSourceLength − 1, as training does (single-answer layout only). */
  maxSourceLength?: number;
  /** The model's own chat_template (template "chat_template"). */
  chatTemplate?: ChatRenderer;
}

/**
 * The ids a model writes its next answer after: `turns` (an optional system turn, then user/assistant turns
 * ending with a user turn) laid out exactly as training lays out a sample up to its answer — the template's
 * prefix, the prompt, and every special id between prompt and answer. Earlier rounds are folded into the
 * prompt text as the single-answer layout does (the seed's and ChatGLM's chat); Baichuan-chat, whose prompt has
 * no history form, and chat_template use their per-round layouts. A system prompt goes where the template
 * has a place for it (vicuna, chat_template), else it opens the prompt text on a line of its own.
 */
export function encodePrompt(turns: readonly Turn[], name: TemplateName, tokenizer: Tokenizer, opt: PromptOptions = {}): number[] {
  const system = turns[0]?.role === 'system' ? turns[0].content : null;
  const chat = system !== null ? turns.slice(1) : [...turns];
  if (!chat.length || chat.at(-1)!.role !== 'user') throw new Error('a prompt must end with a user turn');
  chat.forEach((t, i) => {
    const want = i % 2 === 0 ? 'user' : 'assistant';
    if (t.role !== want) throw new Error(`the conversation does not alternate: turn ${i + 1} is "${t.role}" where "${want}" was expected`);
  });
  if (name === 'chat_template') {
    const r = opt.chatTemplate;
    if (!r) throw new Error('the "chat_template" template needs the model\'s chat_template (tokenizer_config.json)');
    return tokenizer.encode(r.render([...turns], true));
  }
  const spec = specs[name];
  if (!spec) throw new Error(`unknown template "${name}" (known: ${TEMPLATES.join(', ')})`);
  const t = new Tok(tokenizer, name);
  const rounds: [string, string][] = [];
  for (let i = 0; i + 1 < chat.length; i += 2) rounds.push([chat[i]!.content, chat[i + 1]!.content]);
  const query = chat.at(-1)!.content;
  const ids: number[] = [...spec.prefix(t)];
  const between = () => spec.between(t).map((p) => p.id);
  if (name === 'baichuan-chat') {
    const sys = system !== null ? tokenizer.encode(system) : [];
    ids.push(...sys);
    rounds.forEach(([q, a], i) => {
      ids.push(...userPrefix(name), ...tokenizer.encode(spec.round(q, i + 1, system)), ...between(), ...tokenizer.encode(a), ...spec.end(t));
    });
    ids.push(...userPrefix(name), ...tokenizer.encode(spec.round(query, rounds.length + 1, system)), ...between());
    return ids;
  }
  let text = spec.prompt(query, rounds, system);
  if (system !== null && name !== 'vicuna') text = `${system}\n${text}`;
  let src = opt.maxSourceLength !== undefined ? encodeHead(tokenizer, text, opt.maxSourceLength - 1).ids : tokenizer.encode(text);
  if (opt.maxSourceLength !== undefined) src = src.slice(0, Math.max(0, opt.maxSourceLength - 1));
  ids.push(...userPrefix(name), ...src, ...between());
  return ids;
}

/**
 * The ids that end an answer in this template's layout (generation stops after one of them). A model's own chat
 * template ends a turn with one of its eos ids: all of them (Llama-3-Instruct: <|end_of_text|> and <|eot_id|>).
 */
export function answerEndIds(name: TemplateName, tokenizer: Tokenizer): number[] {
  if (name === 'chat_template') return [...tokenizer.eosIds];
  const spec = specs[name];
  if (!spec) throw new Error(`unknown template "${name}" (known: ${TEMPLATES.join(', ')})`);
  return spec.end(new Tok(tokenizer, name));
}
