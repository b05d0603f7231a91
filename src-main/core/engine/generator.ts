// generator.ts — text generation in this process: models (with their adapters) and tokenizers loaded once
// and kept (a few at a time), a conversation laid out by its template, tokens streamed as text deltas. The
// engine host runs this inside its child process (host-child.ts) so an engine failure cannot take the app down;
// nothing here knows about processes or the UI.
import path from 'node:path';

import { loadChatTemplate, type ChatRenderer } from '../data/chat-template.js';
import type { Turn } from '../data/formats.js';
import { type LaidOutPrompt, PromptTooLongError, TEMPLATES, type TemplateName, answerEndIds, layoutPrompt } from '../data/templates.js';
import { loadTokenizer, type LoadedTokenizer, type Tokenizer } from '../data/tokenizer/index.js';
import type { GenerateParams, NativeModel } from '../../../native/addon/index.js';
import { loadEngine } from './native.js';
import { type InferenceQuantization, resolveQuantization } from './quantization.js';
import { StreamDecoder } from './stream-decoder.js';

export type { GenerateParams };

/** The seed project's sampling defaults (the engine's own defaults, spelled out for the UI). */
export const SEED_SAMPLING: Required<Omit<GenerateParams, 'stop_ids'>> = {
  max_new_tokens: 512,
  do_sample: true,
  temperature: 0.001,
  top_k: 30,
  top_p: 0.85,
  repetition_penalty: 1.2,
  seed: 0,
};

export interface ModelRef {
  /** HF model folder (for a full fine-tune's checkpoint: the checkpoint folder) */
  model: string;
  /** PEFT adapter folder, or none */
  adapter?: string | null;
  /** folder holding the tokenizer (default: the model folder) */
  tokenizer?: string | null;
  /** the base's block linears in 4 bits (QLoRA): "auto" (as the adapter's run trained it; the placement's choice when
   *  absent), "none", "nf4" or "fp4" (quantization.ts) */
  quantization?: InferenceQuantization | null;
}

/** Where models load and how: device, the frozen weights' precision, and their 4-bit quantization (default "auto"). */
export interface GeneratorPlacement {
  device: string;
  precision: string;
  quantization?: InferenceQuantization;
}

export interface GenerateRequest extends ModelRef {
  /** the conversation so far, ending with a user turn (a leading system turn allowed) */
  messages?: Turn[];
  /** shorthand for one user turn */
  prompt?: string;
  /** a system prompt (placed before the messages) */
  system?: string | null;
  template?: TemplateName;
  /** cut the prompt text as training does (max_source_length) */
  maxSourceLength?: number;
  /**
   * Fit the model's context (config.json max_position_embeddings, seq_length, …; ALiBi models: their trained
   * length): the oldest earlier rounds are left out, whole, until prompt + the answer's room fits, by the rule of
   * training's truncation (templates.ts layoutPrompt; the system prompt stays). The answer's room is
   * max_new_tokens, at most half the context (answerRoom), so a large max_new_tokens never costs the whole history;
   * a question too long to leave that room is sent alone and its answer stops at the context (finish "length").
   * Only a question that fills the context by itself fails: BAD_INPUT (reason PROMPT_TOO_LONG) with a hint. Chat
   * sets it.
   */
  fitContext?: boolean;
  params?: Omit<GenerateParams, 'stop_ids'>;
}

export type FinishReason = 'stop' | 'length' | 'aborted';

export interface GenerateResult {
  text: string;
  /** generated token ids, the final stop id included */
  ids: number[];
  promptTokens: number;
  finish: FinishReason;
  seconds: number;
  /** where it was generated: "cpu", "cuda:0" */
  device: string;
  /** fitContext: the earlier rounds left out (oldest first) of `rounds`, and the model's context */
  dropped?: number;
  rounds?: number;
  context?: number;
}

export interface LoadedInfo {
  model: string;
  adapter: string | null;
  modelType: string;
  parameters: number;
  vocab: number;
  eosIds: number[];
  seconds: number;
  cached: boolean;
  /** where it computes ("cpu", "cuda:0": a GPU that could not be used leaves it on the CPU) and its weights' precision */
  device: string;
  precision: string;
  /** "none", or the 4-bit type its block linears were loaded as ("nf4", "fp4": QLoRA) */
  quantization: string;
  /** the model's context (its trained length) */
  context?: number;
  /** the context when it is a hard limit (learned or rotary positions): a prompt of this many tokens is refused
   *  and an answer stops where prompt + answer reach it; absent for ALiBi models and configs that name no length */
  contextLimit?: number;
}

export class GenerateError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
    /** what the code does not tell: PROMPT_TOO_LONG (a message that does not fit the context even alone) */
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'GenerateError';
  }
}

interface Entry {
  key: string;
  model: NativeModel;
  info: ReturnType<NativeModel['info']>;
  /** generations run one at a time per model */
  busy: Promise<unknown>;
  /** generations holding this entry (running or waiting); such a model is never freed */
  users: number;
  lastUse: number;
}

const keyOf = (model: string, adapter: string | null | undefined, quantization = 'none') =>
  `${path.resolve(model)}\u0000${adapter ? path.resolve(adapter) : ''}\u0000${quantization}`;

/**
 * The ids a generation stops at: the model's (the engine's `eos_ids`: generation_config.json's eos_token_id, a list
 * counting whole), the tokenizer folder's (`eosIds`, read the same way: a tokenizer given apart from the model has
 * its own), and the template's answer end. Without duplicates.
 */
export function stopIds(modelEosIds: readonly number[], template: TemplateName, tok: Tokenizer): number[] {
  return [...new Set([...modelEosIds, ...tok.eosIds, ...answerEndIds(template, tok)])];
}

/** The room a fitted prompt leaves for the answer: max_new_tokens, at most half the context. */
export function answerRoom(maxNewTokens: number, context: number): number {
  return Math.max(1, Math.min(maxNewTokens, Math.floor(context / 2)));
}

/** The error for a question that fills the context by itself (no room for any answer, even without earlier rounds). */
export function tooLong(promptTokens: number, context: number): GenerateError {
  return new GenerateError(
    `the message does not fit the model's context of ${context} tokens: without any earlier message its prompt is ${promptTokens} tokens, which leaves no room for an answer`,
    'BAD_INPUT',
    `Shorten the message: the model's context holds ${context} tokens, prompt and answer together.`,
    'PROMPT_TOO_LONG',
  );
}

/** Turns a request into the conversation to lay out. */
export function requestTurns(req: Pick<GenerateRequest, 'messages' | 'prompt' | 'system'>): Turn[] {
  const turns: Turn[] = [];
  const msgs = req.messages ?? (req.prompt !== undefined ? [{ role: 'user' as const, content: req.prompt }] : null);
  if (!msgs || !msgs.length) throw new GenerateError('nothing to answer: give a prompt or messages ending with a user turn', 'BAD_INPUT');
  if (req.system && msgs[0]?.role !== 'system') turns.push({ role: 'system', content: req.system });
  turns.push(...msgs);
  return turns;
}

export class Generator {
  private readonly models = new Map<string, Entry>();
  private readonly tokenizers = new Map<string, Promise<LoadedTokenizer>>();
  private readonly chatTemplates = new Map<string, ChatRenderer>();
  private readonly loading = new Map<string, Promise<Entry>>();
  /** current generations by request id, to abort them */
  private readonly running = new Map<string, { model: NativeModel; aborted: boolean }>();
  /** requests still being prepared (model loading, prompt), and those of them already aborted */
  private readonly preparing = new Set<string>();
  private readonly cancelled = new Set<string>();

  /** `maxModels`: models kept loaded (least recently used ones are freed), 2 so A/B mode does not reload. */
  /** `placement`: where models load ("cpu", "cuda:N", "auto") and their frozen weights' precision. */
  constructor(
    private readonly maxModels = 2,
    private readonly placement: GeneratorPlacement = { device: 'cpu', precision: 'fp32' },
  ) {}

  /** The engine's quantization argument for a request's model: its own choice, else the placement's; "auto" follows
   *  the adapter's run (quantization.ts). */
  private quantizationOf(ref: ModelRef): string {
    return resolveQuantization(ref.quantization ?? this.placement.quantization, ref.adapter);
  }

  /**
   * One GPU backend serves one engine thread at a time (its stream, caching allocator and current context are
   * per-device state): models on a GPU take turns — loads, generations and frees in one queue — where models on the
   * CPU run side by side (A/B mode answers both at once there). On the CPU this queue is not used.
   */
  private deviceQueue: Promise<unknown> = Promise.resolve();
  private onDevice<T>(gpu: boolean, fn: () => Promise<T>): Promise<T> {
    if (!gpu) return fn();
    const run = this.deviceQueue.then(fn);
    this.deviceQueue = run.catch(() => {});
    return run;
  }
  /** The model's next operation, after its previous one (and, on a GPU, after every other model's there). */
  private chain<T>(e: Entry, fn: () => Promise<T>): Promise<T> {
    const gpu = (e.info.device ?? 'cpu') !== 'cpu';
    const run = e.busy.then(() => this.onDevice(gpu, fn));
    e.busy = run.catch(() => {});
    return run;
  }
  private free(e: Entry): Promise<void> {
    return this.chain(e, async () => e.model.free()).catch(() => {});
  }

  private addon() {
    const engine = loadEngine();
    if (!engine.addon) throw new GenerateError(engine.error ?? 'the engine is unavailable', 'ENGINE_UNAVAILABLE', 'Build the engine with `npm run build:native`.');
    return engine.addon;
  }

  tokenizer(dir: string): Promise<LoadedTokenizer> {
    const k = path.resolve(dir);
    let t = this.tokenizers.get(k);
    if (!t) {
      t = loadTokenizer(k);
      this.tokenizers.set(k, t);
      t.catch(() => this.tokenizers.delete(k));
    }
    return t;
  }

  private chatTemplate(dir: string): ChatRenderer {
    const k = path.resolve(dir);
    let r = this.chatTemplates.get(k);
    if (!r) {
      r = loadChatTemplate(k);
      this.chatTemplates.set(k, r);
    }
    return r;
  }

  private async entry(ref: ModelRef): Promise<{ e: Entry; cached: boolean; seconds: number }> {
    const quantization = this.quantizationOf(ref);
    const key = keyOf(ref.model, ref.adapter, quantization);
    const have = this.models.get(key);
    if (have) {
      have.lastUse = Date.now();
      return { e: have, cached: true, seconds: 0 };
    }
    const t0 = Date.now();
    let p = this.loading.get(key);
    if (!p) {
      p = (async () => {
        const model = await this.onDevice(this.placement.device !== 'cpu', () =>
          this.addon().loadModel(path.resolve(ref.model), ref.adapter ? path.resolve(ref.adapter) : undefined, {
            device: this.placement.device,
            precision: this.placement.precision,
            quantization,
          }),
        );
        const e: Entry = { key, model, info: model.info(), busy: Promise.resolve(), users: 0, lastUse: Date.now() };
        this.models.set(key, e);
        await this.evict(key);
        return e;
      })();
      this.loading.set(key, p);
      p.finally(() => this.loading.delete(key)).catch(() => {});
    }
    try {
      const e = await p;
      return { e, cached: false, seconds: (Date.now() - t0) / 1000 };
    } catch (err) {
      const x = err as Error & { code?: string };
      throw new GenerateError(`cannot load ${ref.model}${ref.adapter ? ` with the adapter ${ref.adapter}` : ''}: ${x.message}`, x.code ?? 'IO');
    }
  }

  /** Frees the least recently used idle models beyond maxModels (busy ones stay until a later load). */
  private async evict(keep: string): Promise<void> {
    const others = [...this.models.values()].filter((e) => e.key !== keep && e.users === 0).sort((a, b) => a.lastUse - b.lastUse);
    while (others.length && this.models.size > this.maxModels) {
      const e = others.shift()!;
      this.models.delete(e.key);
      await this.free(e);
    }
  }

  /** Loads a model (and adapter) and its tokenizer ahead of the first request; cached per model + adapter. */
  async load(ref: ModelRef): Promise<LoadedInfo> {
    const [{ e, cached, seconds }] = await Promise.all([this.entry(ref), this.tokenizer(ref.tokenizer ?? ref.model)]);
    return {
      model: path.resolve(ref.model),
      adapter: ref.adapter ? path.resolve(ref.adapter) : null,
      modelType: e.info.model_type,
      parameters: e.info.parameters,
      vocab: e.info.vocab,
      eosIds: e.info.eos_ids,
      seconds,
      cached,
      device: e.info.device ?? 'cpu',
      precision: this.placement.precision,
      quantization: e.info.quantization ?? 'none',
      ...(e.info.context ? { context: e.info.context } : {}),
      ...(e.info.context > 0 && !e.info.alibi ? { contextLimit: e.info.context } : {}),
    };
  }

  /**
   * The prompt length of each request (what generate() and generateBatch() would feed the model), or the reason
   * its prompt cannot be laid out; nothing is generated and no model is loaded. Lets a caller name the records
   * that do not fit the context before any generation.
   */
  async promptLengths(reqs: GenerateRequest[]): Promise<(number | { error: string })[]> {
    const out: (number | { error: string })[] = [];
    for (const r of reqs) {
      try {
        out.push((await this.layout(r)).ids.length);
      } catch (err) {
        out.push({ error: (err as Error).message });
      }
    }
    return out;
  }

  /** The prompt ids of a request (what generate() feeds the model). */
  async promptIds(req: GenerateRequest): Promise<number[]> {
    return (await this.layout(req)).ids;
  }

  /**
   * The prompt of a request laid out by its template; with `context` (fitContext), the oldest earlier rounds
   * left out until prompt + max_new_tokens fits it, or a clear error when the question alone does not.
   */
  private async layout(req: GenerateRequest, context?: number): Promise<LaidOutPrompt> {
    const tokDir = req.tokenizer ?? req.model;
    const tok = await this.tokenizer(tokDir);
    const template = req.template ?? 'raw';
    if (!TEMPLATES.includes(template)) throw new GenerateError(`unknown template "${template}" (known: ${TEMPLATES.join(', ')})`, 'BAD_INPUT');
    const maxNew = req.params?.max_new_tokens ?? SEED_SAMPLING.max_new_tokens;
    const lay = (maxPromptTokens?: number) =>
      layoutPrompt(requestTurns(req), template, tok, {
        ...(req.maxSourceLength !== undefined ? { maxSourceLength: req.maxSourceLength } : {}),
        ...(maxPromptTokens !== undefined ? { maxPromptTokens } : {}),
        ...(template === 'chat_template' ? { chatTemplate: this.chatTemplate(tokDir) } : {}),
      });
    try {
      try {
        return lay(context !== undefined ? context - answerRoom(maxNew, context) : undefined);
      } catch (err) {
        // a long question: sent alone (every earlier round left out), its answer stops at the context
        if (err instanceof PromptTooLongError && context !== undefined && err.tokens < context) return lay(err.tokens);
        throw err;
      }
    } catch (err) {
      if (err instanceof GenerateError) throw err;
      if (err instanceof PromptTooLongError && context !== undefined) throw tooLong(err.tokens, context);
      throw new GenerateError((err as Error).message, 'BAD_INPUT');
    }
  }

  /**
   * Generates an answer, streaming complete-character text deltas to onDelta. `id` names the request for
   * abort(id). The prompt is tokenized at once; the generation waits for the model if it is busy.
   */
  async generate(id: string, req: GenerateRequest, onDelta?: (text: string) => void): Promise<GenerateResult> {
    const t0 = Date.now();
    const tokDir = req.tokenizer ?? req.model;
    this.preparing.add(id);
    let e: Entry;
    let tok: LoadedTokenizer;
    let laid: LaidOutPrompt;
    let context: number | undefined;
    try {
      if (req.fitContext) {
        // the model's context first: the prompt is laid out to fit it
        [{ e }, tok] = await Promise.all([this.entry(req), this.tokenizer(tokDir)]);
        context = e.info.context && e.info.context > 0 ? e.info.context : undefined;
        laid = await this.layout(req, context);
      } else {
        const got = await Promise.all([this.entry(req), this.tokenizer(tokDir), this.layout(req)]);
        [, tok, laid] = got;
        e = got[0].e;
      }
      // a model evicted while the prompt was prepared is loaded again
      while (this.models.get(e.key) !== e) e = (await this.entry(req)).e;
    } catch (err) {
      this.cancelled.delete(id);
      throw err;
    } finally {
      this.preparing.delete(id);
    }
    const early = this.cancelled.delete(id);
    e.users++;
    try {
      const r = await this.run(id, e, tok, laid.ids, req, t0, onDelta, early);
      return req.fitContext ? { ...r, dropped: laid.dropped, rounds: laid.rounds, ...(context !== undefined ? { context } : {}) } : r;
    } finally {
      e.users--;
    }
  }

  private async run(id: string, e: Entry, tok: LoadedTokenizer, prompt: number[], req: GenerateRequest, t0: number, onDelta?: (text: string) => void, aborted = false): Promise<GenerateResult> {
    const template = req.template ?? 'raw';
    if (!prompt.length) throw new GenerateError('the prompt has no tokens', 'BAD_INPUT');
    const stop = stopIds(e.info.eos_ids, template, tok);
    const skip = new Set<number>([...stop, ...tok.specialIds]);
    if (tok.bosId !== null) skip.add(tok.bosId);
    if (tok.padId !== null) skip.add(tok.padId);
    const params: GenerateParams = { ...SEED_SAMPLING, ...req.params, stop_ids: stop };
    const slot = { model: e.model, aborted };
    this.running.set(id, slot);
    const run = this.chain(e, async () => {
      if (slot.aborted) return { ids: [] as number[], aborted: true };
      e.lastUse = Date.now();
      const dec = new StreamDecoder((ids) => tok.decode(ids), skip);
      const out = await e.model.generate(prompt, params, ({ token }) => {
        const d = dec.push(token);
        if (d && onDelta) onDelta(d);
      });
      const rest = dec.flush();
      if (rest && onDelta) onDelta(rest);
      return out;
    });
    try {
      const out = await run;
      const textIds = out.ids.filter((x) => !skip.has(x));
      const last = out.ids.at(-1);
      const finish: FinishReason = out.aborted || slot.aborted ? 'aborted' : last !== undefined && stop.includes(last) ? 'stop' : 'length';
      return { text: tok.decode(textIds), ids: out.ids, promptTokens: prompt.length, finish, seconds: (Date.now() - t0) / 1000, device: e.info.device ?? 'cpu' };
    } catch (err) {
      const x = err as Error & { code?: string };
      throw new GenerateError(x.message, x.code ?? 'INTERNAL');
    } finally {
      this.running.delete(id);
    }
  }

  /**
   * Generates answers to several requests at once (one engine batch: one forward per step for all of them; each
   * answer equals the one generate() gives for its request alone). The requests must share the model, adapter,
   * tokenizer, template and params. `id` names the batch for abort(id). No streaming.
   */
  async generateBatch(id: string, reqs: GenerateRequest[]): Promise<GenerateResult[]> {
    const t0 = Date.now();
    const first = reqs[0];
    if (!first) throw new GenerateError('generateBatch: no requests', 'BAD_INPUT');
    const same = (r: GenerateRequest) =>
      // (the same adapter and the same asked quantization resolve alike: no job.json read per request)
      keyOf(r.model, r.adapter) === keyOf(first.model, first.adapter) &&
      (r.quantization ?? null) === (first.quantization ?? null) &&
      (r.tokenizer ?? r.model) === (first.tokenizer ?? first.model) &&
      (r.template ?? 'raw') === (first.template ?? 'raw') &&
      JSON.stringify(r.params ?? {}) === JSON.stringify(first.params ?? {});
    if (!reqs.every(same)) throw new GenerateError('generateBatch: every request of a batch must use the same model, adapter, tokenizer, template and parameters', 'BAD_INPUT');
    this.preparing.add(id);
    let e: Entry;
    let tok: LoadedTokenizer;
    let prompts: number[][];
    try {
      const got = await Promise.all([this.entry(first), this.tokenizer(first.tokenizer ?? first.model), Promise.all(reqs.map((r) => this.promptIds(r)))]);
      [, tok, prompts] = got;
      e = got[0].e;
      while (this.models.get(e.key) !== e) e = (await this.entry(first)).e;
    } catch (err) {
      this.cancelled.delete(id);
      throw err;
    } finally {
      this.preparing.delete(id);
    }
    if (prompts.some((p) => !p.length)) throw new GenerateError('a prompt has no tokens', 'BAD_INPUT');
    const early = this.cancelled.delete(id);
    e.users++;
    try {
      const template = first.template ?? 'raw';
      const stop = stopIds(e.info.eos_ids, template, tok);
      const skip = new Set<number>([...stop, ...tok.specialIds]);
      if (tok.bosId !== null) skip.add(tok.bosId);
      if (tok.padId !== null) skip.add(tok.padId);
      const params: GenerateParams = { ...SEED_SAMPLING, ...first.params, stop_ids: stop };
      const slot = { model: e.model, aborted: early };
      this.running.set(id, slot);
      const run = this.chain(e, async () => {
        if (slot.aborted) return { ids: prompts.map(() => [] as number[]), aborted: true };
        e.lastUse = Date.now();
        return e.model.generateBatch(prompts, params);
      });
      try {
        const out = await run;
        const seconds = (Date.now() - t0) / 1000;
        return out.ids.map((ids, k) => {
          const last = ids.at(-1);
          const finish: FinishReason = out.aborted || slot.aborted ? 'aborted' : last !== undefined && stop.includes(last) ? 'stop' : 'length';
          return { text: tok.decode(ids.filter((x) => !skip.has(x))), ids, promptTokens: prompts[k]!.length, finish, seconds, device: e.info.device ?? 'cpu' };
        });
      } catch (err) {
        const x = err as Error & { code?: string };
        throw new GenerateError(x.message, x.code ?? 'INTERNAL');
      } finally {
        this.running.delete(id);
      }
    } finally {
      e.users--;
    }
  }

  /** Stops request `id` (running: the engine stops after the current token; waiting: it never starts). */
  abort(id: string): void {
    const r = this.running.get(id);
    if (!r) {
      if (this.preparing.has(id)) this.cancelled.add(id);
      return;
    }
    r.aborted = true;
    // only the model's current generation can be aborted; a waiting one sees `aborted` when its turn comes
    const current = [...this.running.entries()].find(([, s]) => s.model === r.model);
    if (current && current[0] === id) r.model.abort();
  }

  abortAll(): void {
    for (const id of [...this.running.keys(), ...this.preparing]) this.abort(id);
  }

  /** Frees a model now (after its generation ends). */
  async unload(ref: ModelRef): Promise<boolean> {
    const e = this.models.get(keyOf(ref.model, ref.adapter, this.quantizationOf(ref)));
    if (!e) return false;
    this.models.delete(e.key);
    await this.free(e);
    return true;
  }

  async dispose(): Promise<void> {
    this.abortAll();
    for (const e of [...this.models.values()]) {
      this.models.delete(e.key);
      await this.free(e);
    }
    for (const t of this.tokenizers.values()) {
      try {
        (await t).dispose?.();
      } catch {
        /* failed loads have nothing to free */
      }
    }
    this.tokenizers.clear();
  }
}
