// templates.ts — prompt templates: how a Sample becomes token ids and a loss mask for each model family,
// with the seed's truncation (source ids cut to max_source_length − 1, target ids to max_target_length − 2).
// Every template has one layout of a conversation, used by training and by inference alike: conversations
// (ShareGPT / messages) train on every assistant turn, each round cut by the same rule; single-answer samples
// (PromptCBLUE, Alpaca, columns) lay out their earlier rounds (Alpaca "history", --history_column) the same way
// and train on the last answer only. Round by round, with the template's end id (eos) after every answer —
// except ChatGLM-6B (v1), a prefix LM, which folds earlier rounds into its prompt text as its chat() does and so
// trains the last answer of a conversation only. encodePrompt lays out what chat, predict and eval feed with the
// same code, so training's ids up to an answer are exactly the prompt for the rounds before it (with the system
// prompt). The rules are spelled out in docs/datasets.md.
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
  /** the user part of round `i` as text: `i` counts from 1 at the first round laid out (the first one kept when
   *  earlier rounds are left out) */
  round(query: string, i: number, system: string | null): string;
  /** special ids between the prompt and the answer, each trained or not */
  between(t: Tok): Piece[];
  /** ids after the answer (trained) */
  end(t: Tok): number[];
  /**
   * ChatGLM-6B (v1) only: the prompt text with earlier rounds folded into it, its own chat()'s layout. The model is
   * a prefix LM (the context before [gMASK] <sop> is read both ways, only what follows is generated), so a
   * conversation cannot hold several generated answers the way it is prompted: every template else lays
   * earlier rounds out round by round (`round`, `between`, answer, `end`), ChatGLM-6B folds them and trains the
   * last answer only.
   */
  folded?(query: string, history: [string, string][]): string;
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
    round: (q) => q,
    between: (t) => [
      { id: t.need('eosId'), train: false },
      { id: t.need('bosId'), train: true },
    ],
    end: (t) => [t.need('eosId')],
  },
  // ChatGLM-6B v1: prompt + [gMASK, sop] + target + [eop]; labels from sop on. Earlier rounds folded as its chat():
  // "[Round 0]\n问：q1\n答：a1\n[Round 1]\n问：q\n答：" (the bare question when there are none)
  chatglm: {
    prefix: () => [],
    round: (q) => q,
    folded: (q, h) => (h.length ? h.map(([a, b], i) => `[Round ${i}]\n问：${a}\n答：${b}\n`).join('') + `[Round ${h.length}]\n问：${q}\n答：` : q),
    between: (t) => [
      { id: t.special('[gMASK]'), train: false },
      { id: t.special('sop', '<sop>'), train: true },
    ],
    end: (t) => [t.special('eop', '<eop>')],
  },
  // ChatGLM2-6B: [gMASK, sop] + "[Round 1]\n\n问：{q}\n\n答：" + target + [eos], then "[Round 2]…"
  chatglm2: {
    prefix: (t) => [t.special('[gMASK]'), t.special('sop', '<sop>')],
    round: (q, i) => `[Round ${i}]\n\n问：${q}\n\n答：`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  alpaca: {
    prefix: (t) => (t.tok.bosId !== null ? [t.tok.bosId] : []),
    round: (q, i) =>
      (i === 1 ? 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' : '\n\n') +
      `### Instruction:\n${q}\n\n### Response:\n`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  // BELLE: "Human: \n{input}\n\nAssistant: \n"
  belle: {
    prefix: () => [],
    round: (q, i) => `${i > 1 ? '\n\n' : ''}Human: \n${q}\n\nAssistant: \n`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  // Baichuan-13B-Chat: per round [195] + user + [196] + assistant + [eos] (user/assistant_token_id)
  'baichuan-chat': {
    prefix: () => [],
    round: (q) => q,
    between: () => [{ id: 196, train: false }],
    end: (t) => [t.need('eosId')],
  },
  // MiniCPM chat (modeling_minicpm.py `chat`): bos, then per round "<用户>{q}<AI>" + answer; eos after the answer
  minicpm: {
    prefix: (t) => (t.tok.bosId !== null ? [t.tok.bosId] : []),
    round: (q) => `<用户>${q}<AI>`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
  vicuna: {
    prefix: (t) => (t.tok.bosId !== null ? [t.tok.bosId] : []),
    round: (q, i, sys) => (i === 1 ? `${sys ?? VICUNA_SYSTEM}` : '') + ` USER: ${q} ASSISTANT:`,
    between: () => [],
    end: (t) => [t.need('eosId')],
  },
};

/** Appends `src` to `dst` one by one (a spread of a long head of ids would overflow the call stack). */
function append(dst: number[], src: readonly number[]): void {
  for (const x of src) dst.push(x);
}

/**
 * The fewest earlier rounds to leave out, oldest first, for a prompt to fit: the smallest d in 0…n with
 * `fits(d)`, found by bisection (leaving out more rounds never makes a prompt longer); n when none fits.
 */
function fewestDropped(n: number, fits: (d: number) => boolean): number {
  if (n <= 0 || fits(0)) return 0;
  let lo = 1;
  let hi = n;
  let best = n;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (fits(mid)) {
      best = mid;
      hi = mid - 1;
    } else lo = mid + 1;
  }
  return best;
}

/** Memoizes f by its integer argument. */
function memo<T>(f: (d: number) => T): (d: number) => T {
  const m = new Map<number, T>();
  return (d) => {
    let v = m.get(d);
    if (v === undefined) m.set(d, (v = f(d)));
    return v;
  };
}

/** How many ids of a prompt are kept: the seed's max_source_length − 1 of its text; Baichuan-chat's prompt ids
 *  start with the user id 195, which the seed's count never included. */
function sourceLimit(name: TemplateName, maxSourceLength: number): number {
  return Math.max(0, name === 'baichuan-chat' ? maxSourceLength : maxSourceLength - 1);
}

/** Adds the pieces of a Head to another. */
function addHead(to: Head, h: Head): void {
  append(to.ids, h.ids);
  to.total += h.total;
  to.estimated ||= h.estimated;
}

/**
 * The ids of round `i`'s user part (`i` from 1 at the first round laid out): the template's round text, which the
 * system prompt opens on a line of its own in the first round (vicuna: its header holds it); Baichuan-chat: the
 * system prompt's ids before the first round, then 195 and the question's ids. Each text is cut to the character
 * budget of `limit` tokens before tokenizing.
 */
function roundPrompt(name: TemplateName, spec: Spec, t: Tok, query: string, i: number, system: string | null, limit: number): Head {
  if (name === 'baichuan-chat') {
    const h: Head = { ids: [], total: 0, estimated: false };
    if (i === 1 && system !== null) addHead(h, encodeHead(t.tok, system, limit));
    addHead(h, { ids: userPrefix(name), total: 1, estimated: false });
    addHead(h, encodeHead(t.tok, query, limit));
    return h;
  }
  return encodeHead(t.tok, (i === 1 && system !== null && name !== 'vicuna' ? `${system}\n` : '') + spec.round(query, i, system), limit);
}

/**
 * The ids of a prompt after the template's prefix, up to the specials between the question and its answer: the
 * system prompt, the earlier rounds `history` and the question laid out exactly as a multi-turn sample lays out
 * its rounds — each earlier round its user part, the specials between, its answer and the template's end ids
 * (eos) — so a prompt is the trained conversation up to its next answer, whether that conversation was trained
 * as ShareGPT / messages (every answer) or as a single answer with history (Alpaca "history", --history_column:
 * the last answer). ChatGLM-6B (v1) folds the rounds into its prompt text instead (Spec.folded). Earlier rounds
 * are never cut here: a single-answer prompt keeps whole rounds (the oldest are left out until it fits).
 */
function promptLayout(name: TemplateName, spec: Spec, t: Tok, query: string, history: readonly [string, string][], system: string | null, limit: number): Head {
  if (spec.folded) {
    const body = spec.folded(query, [...history]);
    return encodeHead(t.tok, system !== null ? `${system}\n${body}` : body, limit);
  }
  const h: Head = { ids: [], total: 0, estimated: false };
  const raw = (xs: number[]) => addHead(h, { ids: xs, total: xs.length, estimated: false });
  history.forEach(([q, a], k) => {
    addHead(h, roundPrompt(name, spec, t, q, k + 1, system, limit));
    raw(spec.between(t).map((p) => p.id));
    addHead(h, encodeHead(t.tok, a, limit));
    raw(spec.end(t));
  });
  addHead(h, roundPrompt(name, spec, t, query, history.length + 1, system, limit));
  return h;
}

/** Where one trained round lies in the rendered conversation (character offsets): its prompt part
 *  [start, answer), its answer [answer, close) and the template's closing text after it [close, end). */
interface Span {
  start: number;
  answer: number;
  close: number;
  end: number;
  /** false: the answer is context only (weight 0) */
  train: boolean;
}

/** The span of the answer `content` rendered as `text.slice(answer, end)`: the template's closing text (an
 *  end-of-turn token, a newline) follows the answer's own text; without the content in it, all of it is answer. */
function span(start: number, answer: number, end: number, text: string, turn: Turn): Span {
  const c = turn.content.trim();
  const at = c ? text.slice(answer, end).indexOf(c) : -1;
  return { start, answer, close: at < 0 ? end : answer + at + c.length, end, train: turn.train !== false };
}

/** The length of the longest common prefix of two id lists. */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** Text cut to at most `n` UTF-16 units, never inside a surrogate pair. */
function cutChars(text: string, n: number): string {
  if (text.length <= n) return text;
  const c = text.charCodeAt(n - 1);
  return text.slice(0, c >= 0xd800 && c <= 0xdbff ? n - 1 : n);
}

/**
 * The model's chat_template. The conversation is rendered prefix by prefix (with and without the generation
 * prompt), so each assistant answer is the text the template adds for it; then the whole conversation is
 * tokenized at once — as inference and HF TRL tokenize it, so no piece gets a tokenizer's start-of-text
 * treatment of its own (SentencePiece's "▁" before every piece) — and each piece's first token is where the ids
 * of the text before it stop agreeing with the whole. Prompts are masked; answers and the template's closing text
 * (end-of-turn token) are trained. Truncation follows the built-in templates: an answer is cut to
 * max_target_length − 2 tokens and keeps its closing text (as the seed keeps its eos); one answer keeps the seed's
 * prompt rule, leaving out the oldest earlier rounds first; multi-turn cuts each round and keeps whole rounds.
 */
function encodeWithChatTemplate(sample: Sample, tokenizer: Tokenizer, opt: EncodeOptions): Encoded {
  const r = opt.chatTemplate;
  if (!r) throw new Error('the "chat_template" template needs the model\'s chat_template (tokenizer_config.json)');
  if (sample.kind === 'text') throw new Error('the "chat_template" template needs conversations, not plain text');
  const srcLimit = Math.max(0, opt.maxSourceLength - 1);
  const tgtLimit = Math.max(0, opt.maxTargetLength - 2);
  const max = opt.maxSourceLength + opt.maxTargetLength;
  // a message longer than the character budget of a whole sample cannot reach a kept token past it: cut first
  const budget = charBudget(max);
  let removed = 0; // characters cut off that way
  const msgs = sample.turns.map((m) => {
    if (m.content.length <= budget) return m;
    removed += m.content.length - budget;
    return { ...m, content: cutChars(m.content, budget) };
  });
  const notPrefix = () => new Error('the chat_template does not render this conversation as a growing prefix; pick a built-in template');
  const assistantAt = msgs.map((m, i) => (m.role === 'assistant' ? i : -1)).filter((i) => i >= 0);
  let text: string;
  let spans: Span[];
  let promptTotal = -1; // one answer: the prompt's tokens with every earlier round
  if (!sample.multiTurn) {
    const k = assistantAt.at(-1)!;
    const sys = msgs[0]?.role === 'system' ? 1 : 0;
    const rounds = Math.max(0, Math.floor((k - 1 - sys) / 2));
    const at = memo((d: number) => {
      const m = [...msgs.slice(0, sys), ...msgs.slice(sys + 2 * d, k + 1)];
      const prefix = r.render(m.slice(0, -1), true);
      const full = r.render(m, false);
      if (!full.startsWith(prefix)) throw notPrefix();
      return { prefix, full, tokens: tokenizer.encode(prefix).length };
    });
    const chosen = at(fewestDropped(rounds, (x) => at(x).tokens <= srcLimit));
    promptTotal = at(0).tokens;
    text = chosen.full;
    spans = [span(0, chosen.prefix.length, text.length, text, msgs[k]!)];
  } else {
    let done = '';
    spans = [];
    for (const k of assistantAt) {
      const prefix = r.render(msgs.slice(0, k), true);
      const full = r.render(msgs.slice(0, k + 1), false);
      if (!prefix.startsWith(done) || !full.startsWith(prefix)) throw notPrefix();
      spans.push(span(done.length, prefix.length, full.length, full, msgs[k]!));
      done = full;
    }
    text = done;
  }
  const all = tokenizer.encode(text);
  const bounds = new Map<number, number>([
    [0, 0],
    [text.length, all.length],
  ]);
  let last = 0;
  const tokenAt = (pos: number): number => {
    let b = bounds.get(pos);
    if (b === undefined) bounds.set(pos, (b = commonPrefix(tokenizer.encode(text.slice(0, pos)), all)));
    return (last = Math.max(last, b));
  };
  const ids: number[] = [];
  const mask: boolean[] = [];
  let truncated = 0;
  let kept = true;
  for (const [j, sp] of spans.entries()) {
    const src = all.slice(tokenAt(sp.start), tokenAt(sp.answer));
    const ans = all.slice(last, tokenAt(sp.close));
    const close = all.slice(last, tokenAt(sp.end));
    const s = src.slice(0, srcLimit);
    const g = ans.slice(0, tgtLimit);
    if (kept && j > 0 && ids.length + s.length + g.length + close.length > max) kept = false;
    if (!kept) {
      truncated += src.length + ans.length + close.length;
      continue;
    }
    truncated += (promptTotal >= 0 ? promptTotal : src.length) - s.length + ans.length - g.length;
    for (const x of s) (ids.push(x), mask.push(Boolean(opt.trainOnPrompt)));
    for (const x of [...g, ...close]) (ids.push(x), mask.push(sp.train || Boolean(opt.trainOnPrompt)));
  }
  if (ids.length > max) {
    truncated += ids.length - max;
    ids.length = max;
    mask.length = max;
  }
  // the characters cut before rendering, at the text's density of tokens
  if (removed) truncated += Math.max(1, Math.round((removed * all.length) / Math.max(1, text.length)));
  return { ids, mask, truncatedTokens: truncated, ...(removed ? { truncationEstimated: true } : {}) };
}

/** Baichuan-chat prefixes each user turn with 195 (not expressible as text). */
function userPrefix(name: TemplateName): number[] {
  return name === 'baichuan-chat' ? [195] : [];
}

/**
 * A sample as token ids and a loss mask (see the file's header). Truncation:
 * - plain text: max_source_length + max_target_length − 1 tokens, then eos;
 * - one answer (PromptCBLUE, Alpaca, columns, earlier rounds from a history column): the seed's rule — the prompt
 *   to max_source_length − 1 tokens, the answer to max_target_length − 2. Earlier rounds in the prompt (laid out
 *   as encodePrompt lays them out) are left out, oldest first, until it fits; only a prompt too long on its own
 *   is cut at its end (the seed);
 * - multi-turn (ShareGPT / messages): the same rule for each round (its prompt part, its answer), and the rounds
 *   are kept whole, in order, while the sample fits max_source_length + max_target_length tokens: the first round
 *   that does not fit is left out with every later one (a conversation is never cut inside an answer).
 */
export function encodeSample(sample: Sample, name: TemplateName, tokenizer: Tokenizer, opt: EncodeOptions): Encoded {
  if (name === 'chat_template') return encodeWithChatTemplate(sample, tokenizer, opt);
  const spec = specs[name];
  if (!spec) throw new Error(`unknown template "${name}" (known: ${TEMPLATES.join(', ')})`);
  const t = new Tok(tokenizer, name);
  const ids: number[] = [];
  const mask: boolean[] = [];
  const push = (xs: readonly number[], train: boolean) => {
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
  const limit = sourceLimit(name, opt.maxSourceLength);
  const tgtLimit = Math.max(0, opt.maxTargetLength - 2);
  push(spec.prefix(t), false);
  // one answer (also every conversation of ChatGLM-6B, which folds its earlier rounds: see Spec.folded)
  if (rounds.length === 1 || !sample.multiTurn || spec.folded) {
    const [query, answer] = rounds.at(-1)!;
    const history = rounds.slice(0, -1);
    const at = memo((d: number) => promptLayout(name, spec, t, query, history.slice(d), system, limit));
    const src = at(fewestDropped(history.length, (d) => at(d).total <= limit));
    const tgt = encodeHead(tokenizer, answer, tgtLimit);
    const s = src.ids.slice(0, limit);
    const g = tgt.ids.slice(0, tgtLimit);
    const train = chat.at(-1)!.train !== false;
    push(s, false);
    for (const p of spec.between(t)) push([p.id], p.train && train);
    push(g, train);
    push(spec.end(t), train);
    const estimated = at(0).estimated || src.estimated || tgt.estimated;
    return { ids, mask, truncatedTokens: at(0).total - s.length + tgt.total - g.length, ...(estimated ? { truncationEstimated: true } : {}) };
  }
  // multi-turn: every assistant turn is trained
  const max = opt.maxSourceLength + opt.maxTargetLength;
  let truncated = 0;
  let estimated = false;
  let kept = true;
  const between = spec.between(t);
  const end = spec.end(t);
  const trainAnswer = chat.filter((x) => x.role === 'assistant').map((x) => x.train !== false);
  rounds.forEach(([q, a], i) => {
    const p = roundPrompt(name, spec, t, q, i + 1, system, limit);
    const g = encodeHead(tokenizer, a, tgtLimit);
    estimated ||= p.estimated || g.estimated;
    const pIds = p.ids.slice(0, limit);
    const gIds = g.ids.slice(0, tgtLimit);
    if (kept && i > 0 && ids.length + pIds.length + between.length + gIds.length + end.length > max) kept = false;
    if (!kept) {
      truncated += p.total + between.length + g.total + end.length;
      return;
    }
    truncated += p.total - pIds.length + g.total - gIds.length;
    const train = trainAnswer[i]!;
    push(pIds, false);
    for (const b of between) push([b.id], b.train && train);
    push(gIds, train);
    push(end, train);
  });
  if (ids.length > max) {
    truncated += ids.length - max;
    ids.length = max;
    mask.length = max;
  }
  return { ids, mask, truncatedTokens: truncated, ...(estimated ? { truncationEstimated: true } : {}) };
}

export interface PromptOptions {
  /** Cut the prompt as a single-answer sample's is cut in training: earlier rounds left out, oldest first, until
   *  the prompt fits maxSourceLength − 1 tokens (the template's prefix and the specials before the answer not
   *  counted; Baichuan-chat: maxSourceLength), then, when the question alone is too long (built-in templates),
   *  its ids cut to that. Without it nothing is left out. */
  maxSourceLength?: number;
  /** At most this many ids in the whole prompt (the prefix and the specials before the answer counted): earlier
   *  rounds are left out, oldest first and whole, by the same rule, until it fits; the question is never cut for
   *  it — when the prompt without any earlier round is still longer, PromptTooLongError. Chat sets it to the
   *  model's context less max_new_tokens. */
  maxPromptTokens?: number;
  /** The model's own chat_template (template "chat_template"). */
  chatTemplate?: ChatRenderer;
}

/** The latest question (with the system prompt, and no earlier round) is longer than maxPromptTokens allows. */
export class PromptTooLongError extends Error {
  constructor(
    /** the prompt's ids with no earlier round */
    readonly tokens: number,
    /** maxPromptTokens */
    readonly limit: number,
  ) {
    super(`the prompt is ${tokens} tokens even without any earlier message, more than the ${Math.max(0, limit)} it may have`);
    this.name = 'PromptTooLongError';
  }
}

export interface LaidOutPrompt {
  ids: number[];
  /** earlier rounds (question and answer) left out, oldest first, for the prompt to fit */
  dropped: number;
  /** the earlier rounds the conversation had */
  rounds: number;
}

/**
 * The ids a model writes its next answer after: `turns` (an optional system turn, then user/assistant turns
 * ending with a user turn) laid out exactly as training lays out that conversation up to the answer to its last
 * question — the template's prefix, the earlier rounds each with its answer and end ids (eos) as a multi-turn
 * sample has them (ChatGLM-6B: folded into its prompt text; chat_template: rendered by the model's template), the
 * question, and every special id between it and the answer. A ShareGPT / messages sample's ids up to its N-th
 * answer, and a single-answer sample's (Alpaca "history", --history_column) up to its answer, are exactly this
 * prompt for the rounds before. A system prompt goes where the template has a place for it (vicuna,
 * chat_template), else it opens the first round's text on a line of its own. With maxSourceLength, the oldest
 * rounds are left out first, as single-answer training does, so the prompt is the trained layout of the
 * conversation's latest rounds; a chat_template prompt is never cut further (its generation prompt must stay
 * whole). With maxPromptTokens, whole rounds are left out the same way until the whole prompt fits it (the
 * system prompt stays); a question too long on its own throws PromptTooLongError.
 */
export function layoutPrompt(turns: readonly Turn[], name: TemplateName, tokenizer: Tokenizer, opt: PromptOptions = {}): LaidOutPrompt {
  const system = turns[0]?.role === 'system' ? turns[0].content : null;
  const chat = system !== null ? turns.slice(1) : [...turns];
  if (!chat.length || chat.at(-1)!.role !== 'user') throw new Error('a prompt must end with a user turn');
  chat.forEach((t, i) => {
    const want = i % 2 === 0 ? 'user' : 'assistant';
    if (t.role !== want) throw new Error(`the conversation does not alternate: turn ${i + 1} is "${t.role}" where "${want}" was expected`);
  });
  const nRounds = (chat.length - 1) / 2;
  const cap = opt.maxPromptTokens;
  const done = (ids: number[], dropped: number): LaidOutPrompt => {
    if (cap !== undefined && ids.length > cap) throw new PromptTooLongError(ids.length, cap);
    return { ids, dropped, rounds: nRounds };
  };
  if (name === 'chat_template') {
    const r = opt.chatTemplate;
    if (!r) throw new Error('the "chat_template" template needs the model\'s chat_template (tokenizer_config.json)');
    const at = memo((d: number) => tokenizer.encode(r.render([...turns.slice(0, system !== null ? 1 : 0), ...chat.slice(2 * d)], true)));
    const max = opt.maxSourceLength;
    const d = fewestDropped(nRounds, (d) => (max === undefined || at(d).length <= max - 1) && (cap === undefined || at(d).length <= cap));
    return done(at(d), d);
  }
  const spec = specs[name];
  if (!spec) throw new Error(`unknown template "${name}" (known: ${TEMPLATES.join(', ')})`);
  const t = new Tok(tokenizer, name);
  const rounds: [string, string][] = [];
  for (let i = 0; i + 1 < chat.length; i += 2) rounds.push([chat[i]!.content, chat[i + 1]!.content]);
  const query = chat.at(-1)!.content;
  const limit = opt.maxSourceLength !== undefined ? sourceLimit(name, opt.maxSourceLength) : Infinity;
  const prefix = spec.prefix(t);
  const between = spec.between(t).map((p) => p.id);
  const at = memo((d: number) => promptLayout(name, spec, t, query, rounds.slice(d), system, limit));
  // the whole prompt's ids: the prefix, the layout (cut to `limit`) and the specials before the answer
  const whole = (d: number) => prefix.length + Math.min(at(d).total, limit) + between.length;
  const d = fewestDropped(rounds.length, (d) => at(d).total <= limit && (cap === undefined || whole(d) <= cap));
  const src = at(d);
  const ids: number[] = [...prefix];
  append(ids, limit === Infinity ? src.ids : src.ids.slice(0, limit));
  append(ids, between);
  return done(ids, d);
}

/** The ids of layoutPrompt (what chat, predict and eval feed a model). */
export function encodePrompt(turns: readonly Turn[], name: TemplateName, tokenizer: Tokenizer, opt: PromptOptions = {}): number[] {
  return layoutPrompt(turns, name, tokenizer, opt).ids;
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
