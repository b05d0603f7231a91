// predict.ts — the seed's inference script: every record of a test file answered by a model (+ adapter) and
// written out as a copy with its answer field (PromptCBLUE `target`, Alpaca `output`, `response` or TRL's
// `completion`) replaced by the generated text, its prompt laid out as training lays it out. The whole
// file is checked before any generation (every bad record named by line) — for a model whose context is a hard
// limit (learned or rotary positions) that includes a prompt that leaves no room in it for an answer; a prompt
// that fits but leaves less than max_new_tokens is generated, its answer stopping at the context (counted in the
// report as contextStops). Output goes to `<out>.partial` record
// by record and is renamed to `<out>` when complete; an interrupted run resumes from the partial file when the
// data, model and settings are unchanged. Generation runs in the engine host's child process, `batchSize`
// records per engine batch (llmt_model_generate_batch): the same answers as one at a time, faster.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { type ColumnOptions, type Format, type Turn, detectFormat, fieldList, historyColumnOf, historyTurns, responseColumnOf } from '../data/formats.js';
import { readRecords, recordAt } from '../data/reader.js';
import { TEMPLATES, type TemplateName } from '../data/templates.js';
import { type GenerateParams, SEED_SAMPLING } from '../engine/generator.js';
import { EngineHost, EngineHostError, type HostGenerateResult } from '../engine/host.js';
import { realish } from '../paths.js';
import { ensureDir, IoError, ioError } from '../io-error.js';

export interface PredictOptions {
  model: string;
  adapter?: string | null;
  /** tokenizer folder (default: the model folder) */
  tokenizer?: string | null;
  data: string;
  out: string;
  template?: TemplateName;
  /** prompt ids cut to max_source_length − 1 as in training (default 512) */
  maxSourceLength?: number;
  params?: Omit<GenerateParams, 'stop_ids'>;
  /** records generated together in one engine batch (the answers are those of one at a time); default 4 */
  batchSize?: number;
  /** continue from `<out>.partial` when it was made with the same data and settings (default true) */
  resume?: boolean;
  /** a non-empty `<out>.partial` made with other data or settings (resume not false): 'replace' it (default), or
   *  'refuse' — nothing of it is lost, the error names it (the CLI: an interrupted run's answers are someone's work) */
  stalePartial?: 'replace' | 'refuse';
  /** 'fail' (default): any bad record stops before generating; 'skip': leave bad records out and report them */
  onError?: 'fail' | 'skip';
  /** only the first N usable records */
  limit?: number;
  format?: Format;
  columns?: ColumnOptions;
  /** an engine host to use (default: one made for this call and disposed at the end) */
  host?: EngineHost;
  onProgress?: (p: PredictProgress) => void;
  signal?: AbortSignal;
}

export interface PredictProgress {
  done: number;
  total: number;
  /** records taken over from a partial file */
  resumed: number;
  /** generated tokens so far (this call) */
  tokens: number;
}

export interface RecordError {
  line: number;
  /** the element's index in a JSON array (0-based) */
  element?: number;
  reason: string;
}

export interface PredictReport {
  out: string;
  format: Format;
  field: string;
  records: number;
  written: number;
  resumed: number;
  skipped: number;
  errors: RecordError[];
  /** generation ends: eos/answer end, or max_new_tokens reached */
  finish: { stop: number; length: number };
  tokens: number;
  seconds: number;
  /** where the engine computed ("cpu", "cuda:0") and the weights' precision */
  device: string;
  precision: string;
  /** "none", or the 4-bit type of the base's block linears ("nf4", "fp4": a QLoRA adapter answers on its 4-bit base) */
  quantization: string;
  /** the model's context when it is a hard limit (learned or rotary positions), else null */
  context: number | null;
  /** answers that stopped at the model's context before max_new_tokens (finish "length"; counted in
   *  finish.length too): their prompt fitted, prompt + max_new_tokens did not */
  contextStops: number;
}

export class PredictError extends Error {
  constructor(
    message: string,
    readonly code: 'BAD_INPUT' | 'STOPPED' | 'ENGINE' | 'IO',
    readonly errors: RecordError[] = [],
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'PredictError';
  }
}

interface Item {
  line: number;
  /** the element's index in a JSON array (0-based) */
  element?: number;
  rec: Record<string, unknown>;
  turns: Turn[];
  /** the field its answer is written to */
  field: string;
}

/** The answer field that predict replaces, per format; for a columns record, the one training reads its answer
 *  from (--response_column, else "response", or TRL's "completion" in a record that has that and no "response"). */
export function answerField(format: Format, cols: ColumnOptions = {}, rec?: Record<string, unknown>): string {
  switch (format) {
    case 'promptcblue':
      return 'target';
    case 'alpaca':
      return 'output';
    case 'columns':
      return rec ? responseColumnOf(rec, cols) : (cols.responseColumn ?? 'response');
    default:
      throw new PredictError(`predict answers prompts (PromptCBLUE, Alpaca, prompt/response columns), not "${format}" records`, 'BAD_INPUT');
  }
}

function str(rec: Record<string, unknown>, key: string, allowEmpty = false): string {
  const v = rec[key];
  if (typeof v !== 'string') throw new Error(`"${key}" must be a string${v === undefined ? ` (missing); ${fieldList(rec)}` : ''}`);
  if (!allowEmpty && !v.trim()) throw new Error(`"${key}" is empty`);
  return v;
}

/** The conversation a record asks to continue. */
export function promptTurns(rec: Record<string, unknown>, format: Format, cols: ColumnOptions = {}): Turn[] {
  // earlier rounds as training reads them (--history_column; Alpaca's "history")
  const history = (): Turn[] => historyTurns(rec, historyColumnOf(format, cols));
  switch (format) {
    case 'promptcblue':
      return [...history(), { role: 'user', content: str(rec, 'input') }];
    case 'alpaca': {
      const ins = str(rec, 'instruction');
      const input = typeof rec.input === 'string' ? rec.input : '';
      // the "system" field, as training reads it
      const system: Turn[] = typeof rec.system === 'string' && rec.system.trim() ? [{ role: 'system', content: rec.system }] : [];
      return [...system, ...history(), { role: 'user', content: input.trim() ? `${ins}\n${input}` : ins }];
    }
    case 'columns':
      return [...history(), { role: 'user', content: str(rec, cols.promptColumn ?? 'prompt') }];
    default:
      throw new PredictError(`predict answers prompts (PromptCBLUE, Alpaca, prompt/response columns), not "${format}" records`, 'BAD_INPUT');
  }
}

async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Reads and checks every record; nothing is generated for a file with problems (unless skipping them). */
async function loadItems(opt: PredictOptions): Promise<{ items: Item[]; format: Format; field: string; errors: RecordError[]; records: number }> {
  if (!fs.existsSync(opt.data)) throw new PredictError(`the test file ${opt.data} does not exist`, 'BAD_INPUT');
  const items: Item[] = [];
  const errors: RecordError[] = [];
  let format: Format | null = opt.format ?? null;
  let records = 0;
  for await (const r of readRecords(opt.data)) {
    records++;
    const at = { line: r.line, ...(r.element !== undefined ? { element: r.element } : {}) };
    if ('error' in r) {
      errors.push({ ...at, reason: r.error });
      continue;
    }
    const rec = r.value as Record<string, unknown>;
    if (!format) {
      format = detectFormat(rec, opt.columns) ?? ('input' in rec ? 'promptcblue' : null);
      if (!format) throw new PredictError(`cannot tell the format of ${opt.data} from line ${r.line} (fields: ${Object.keys(rec).join(', ') || 'none'}); expected PromptCBLUE {"input", "target"}, Alpaca {"instruction", "input", "output"}, {"prompt", "response"} or {"prompt", "completion"}`, 'BAD_INPUT');
      answerField(format, opt.columns);
    }
    try {
      items.push({ ...at, rec, turns: promptTurns(rec, format, opt.columns), field: answerField(format, opt.columns, rec) });
    } catch (err) {
      errors.push({ ...at, reason: (err as Error).message });
    }
  }
  if (!format) {
    // no record could be read (e.g. Python-style quotes on every line): those errors, not "no records"
    if (errors.length) throw badRecordsError(opt.data, errors, 'Fix the lines above: no record of the file could be read.');
    throw new PredictError(`${opt.data} holds no records`, 'BAD_INPUT');
  }
  return { items, format, field: items[0]?.field ?? answerField(format, opt.columns), errors, records };
}

/** The reason a record's prompt of `tokens` ids is a bad record for a model whose context is `context` (a hard
 *  limit), or null when it leaves room for an answer. */
export function contextReason(tokens: number, context: number, maxSourceLength?: number): string | null {
  if (!(context > 0) || tokens < context) return null;
  const cut = maxSourceLength !== undefined ? ` and the max_source_length ${maxSourceLength} cut` : '';
  return `the prompt is ${tokens} tokens (after the template${cut}), which ${tokens === context ? 'fills' : 'is longer than'} the model's context of ${context} tokens and leaves no room for an answer`;
}

/** The hint for records whose prompt does not fit the model's context. */
export function contextHint(context: number): string {
  return `The model's context holds ${context} tokens, prompt and answer together: set max_source_length (--max_source_length) low enough that the prompt, with the template's own tokens, stays below it, shorten these records, or skip them (--on-error skip).`;
}

/** The line of a summary that counts the answers that stopped at the model's context. */
export function contextStopsLine(stops: number, context: number | null): string | null {
  if (!stops || !context) return null;
  return `${stops} answer${stops === 1 ? '' : 's'} stopped at the model's context (${context} tokens, prompt and answer together) before max_new_tokens`;
}

function badRecordsError(data: string, errors: RecordError[], hint: string): PredictError {
  const shown = errors.slice(0, 20).map((e) => `  ${recordAt(data, e)}: ${e.reason}`).join('\n');
  return new PredictError(`${errors.length} bad record(s) in ${data}:\n${shown}${errors.length > 20 ? `\n  … and ${errors.length - 20} more` : ''}`, 'BAD_INPUT', errors, hint);
}

/** Complete lines of a partial output (a torn last line is cut off); null when it cannot be used. */
function readPartial(file: string): { lines: number; bytes: number } | null {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return null;
  }
  let lines = 0;
  let bytes = 0;
  let start = 0;
  for (;;) {
    const nl = buf.indexOf(10, start);
    if (nl < 0) break;
    try {
      JSON.parse(buf.subarray(start, nl).toString('utf8'));
    } catch {
      break;
    }
    lines++;
    bytes = nl + 1;
    start = nl + 1;
  }
  return { lines, bytes };
}

export async function predict(opt: PredictOptions): Promise<PredictReport> {
  const host = opt.host ?? new EngineHost();
  try {
    return await predictWith(opt, host);
  } finally {
    if (!opt.host) await host.dispose();
  }
}

/** Prompts checked against the model's context per host call. */
const CHECK_CHUNK = 256;

async function predictWith(opt: PredictOptions, host: EngineHost): Promise<PredictReport> {
  const t0 = Date.now();
  const template = opt.template ?? 'raw';
  if (!TEMPLATES.includes(template)) throw new PredictError(`unknown template "${template}" (known: ${TEMPLATES.join(', ')})`, 'BAD_INPUT');
  const batch = opt.batchSize ?? 4;
  if (!(Number.isInteger(batch) && batch >= 1)) throw new PredictError('batch size must be a positive integer', 'BAD_INPUT');
  const maxSource = opt.maxSourceLength ?? 512;
  // where the answers go, checked before anything is read or generated
  const outAbs = path.resolve(opt.out);
  if (fs.existsSync(outAbs) && fs.statSync(outAbs).isDirectory())
    throw new PredictError(`${opt.out} is a folder; --out is the predictions file, e.g. ${path.join(opt.out, 'predictions.jsonl')}`, 'BAD_INPUT');
  if (fs.existsSync(opt.data) && realish(opt.data) === realish(outAbs))
    throw new PredictError(`--out ${opt.out} is the test file itself: the predictions would replace your data (and the gold answers eval compares them with)`, 'BAD_INPUT', [], 'Write the predictions to another file, e.g. predictions.jsonl.');
  const loaded = await loadItems(opt);
  const { format, field } = loaded;
  const errors = [...loaded.errors];
  const failOnBad = (opt.onError ?? 'fail') === 'fail';
  if (errors.length && failOnBad) throw badRecordsError(opt.data, errors, 'Fix the lines above, or pass --on-error skip to leave them out.');
  const request = (it: Item) => ({
    model: opt.model,
    adapter: opt.adapter ?? null,
    tokenizer: opt.tokenizer ?? null,
    messages: it.turns,
    template,
    maxSourceLength: maxSource,
    ...(opt.params ? { params: opt.params } : {}),
  });
  // the model loads first (cached by the host): where it runs goes into the report, and its context bounds the prompts
  const info = await host.load({ model: opt.model, adapter: opt.adapter ?? null, tokenizer: opt.tokenizer ?? null });
  const placed = { device: info.device, precision: info.precision, quantization: info.quantization };
  const context = info.contextLimit && info.contextLimit > 0 ? info.contextLimit : 0;
  const maxNew = opt.params?.max_new_tokens ?? SEED_SAMPLING.max_new_tokens;
  let usable = loaded.items;
  if (context > 0) {
    // a prompt that leaves no room in the context is a bad record (the engine would refuse it, failing its whole
    // batch); checked up to the records that will be generated (--limit)
    const want = opt.limit !== undefined ? Math.max(0, opt.limit) : Infinity;
    const bad: RecordError[] = [];
    usable = [];
    for (let i = 0; i < loaded.items.length && usable.length < want; i += CHECK_CHUNK) {
      if (opt.signal?.aborted) throw new PredictError('stopped: no prediction was written', 'STOPPED');
      const chunk = loaded.items.slice(i, i + CHECK_CHUNK);
      const lengths = await host.promptLengths(chunk.map(request));
      for (let k = 0; k < chunk.length && usable.length < want; k++) {
        const it = chunk[k]!;
        const n = lengths[k]!;
        const reason = typeof n === 'number' ? contextReason(n, context, maxSource) : n.error;
        if (reason) bad.push({ line: it.line, ...(it.element !== undefined ? { element: it.element } : {}), reason });
        else usable.push(it);
      }
    }
    if (bad.length && failOnBad) throw badRecordsError(opt.data, bad, contextHint(context));
    if (bad.length) {
      errors.push(...bad);
      errors.sort((a, b) => a.line - b.line || (a.element ?? 0) - (b.element ?? 0));
    }
  }
  const items = opt.limit !== undefined ? usable.slice(0, Math.max(0, opt.limit)) : usable;
  if (!items.length) throw new PredictError(`no usable record in ${opt.data}`, 'BAD_INPUT', errors, errors.length ? 'Every record was bad (see errors).' : undefined);

  const out = path.resolve(opt.out);
  /** A file-system error (disk full, read-only folder) as one line naming the file, with a hint. */
  const ioFail = (err: unknown, file = out): Error => {
    const e = ioError(err, file, 'write', '--out');
    return e instanceof IoError ? new PredictError(e.message, 'IO', [], e.hint) : e;
  };
  try {
    ensureDir(path.dirname(out), '--out');
  } catch (err) {
    throw ioFail(err);
  }
  const partial = `${out}.partial`;
  const metaFile = `${out}.partial.json`;
  const meta = JSON.stringify({
    v: 1,
    data: await sha256File(opt.data),
    model: path.resolve(opt.model),
    adapter: opt.adapter ? path.resolve(opt.adapter) : null,
    tokenizer: opt.tokenizer ? path.resolve(opt.tokenizer) : null,
    template,
    maxSource,
    params: opt.params ?? {},
    limit: opt.limit ?? null,
    format,
    columns: opt.columns ?? null,
    skipped: errors.length,
    // what the base computed in: answers of another precision or quantization are not mixed into one file
    precision: placed.precision,
    quantization: placed.quantization,
  });
  let resumed = 0;
  if (opt.resume !== false && fs.existsSync(metaFile) && fs.readFileSync(metaFile, 'utf8') === meta) {
    const p = readPartial(partial);
    if (p && p.lines <= items.length) {
      fs.truncateSync(partial, p.bytes);
      resumed = p.lines;
    }
  }
  if (!resumed && opt.resume !== false && opt.stalePartial === 'refuse') {
    const p = fs.existsSync(partial) ? readPartial(partial) : null;
    if (p && p.lines > 0) {
      throw new PredictError(
        `${partial} holds ${p.lines} answer(s) of an interrupted run made with other data or settings; it is kept`,
        'BAD_INPUT',
        [],
        'Run the interrupted command again to finish it, or pass --no-resume to start over (the partial answers are then replaced), or choose another --out.',
      );
    }
  }
  /** Removes an empty partial output and its settings (nothing to resume from). */
  const dropEmpty = () => {
    try {
      if (!fs.existsSync(partial) || fs.statSync(partial).size === 0) {
        fs.rmSync(partial, { force: true });
        fs.rmSync(metaFile, { force: true });
      }
    } catch {
      /* best effort */
    }
  };
  let fd: number;
  try {
    if (!resumed) {
      fs.writeFileSync(partial, '');
      fs.writeFileSync(metaFile, meta);
    }
    fd = fs.openSync(partial, 'a');
  } catch (err) {
    dropEmpty();
    throw ioFail(err, partial);
  }

  let tokens = 0;
  let done = resumed;
  const finish = { stop: 0, length: 0 };
  let contextStops = 0;
  const progress = () => opt.onProgress?.({ done, total: items.length, resumed, tokens });
  // aborts this call's requests only (the host may be shared with chat)
  const mine = new AbortController();
  const onAbort = () => mine.abort();
  opt.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    progress();
    // batches of `batch` records, each one engine batch (one forward per step for all its prompts; every answer as
    // the record would get alone); the next batch is queued while one generates, so its prompts are prepared
    const launch = (from: number): Promise<HostGenerateResult[]> => {
      const reqs = [];
      for (let i = from; i < Math.min(items.length, from + batch); i++) reqs.push(request(items[i]!));
      const p = host.generateBatch(reqs, { signal: mine.signal });
      p.catch(() => {});
      return p;
    };
    let current = resumed < items.length ? launch(resumed) : null;
    for (let b0 = resumed; b0 < items.length && current; b0 += batch) {
      if (opt.signal?.aborted) throw new PredictError('stopped', 'STOPPED');
      const pending = current;
      current = b0 + batch < items.length ? launch(b0 + batch) : null;
      let results: HostGenerateResult[];
      try {
        results = await pending;
      } catch (err) {
        const e = err as EngineHostError;
        const lines = items.slice(b0, b0 + batch).map((it) => it.line);
        const where = lines.length > 1 ? `lines ${lines[0]}–${lines.at(-1)}` : `line ${lines[0]}`;
        throw new PredictError(`generation failed for ${opt.data} (${where}): ${e.message}`, 'ENGINE', [], e.hint);
      }
      for (let k = 0; k < results.length; k++) {
        const r = results[k]!;
        if (r.finish === 'aborted' || opt.signal?.aborted) throw new PredictError('stopped', 'STOPPED');
        finish[r.finish]++;
        // the answer ended where the sequence reached the context, short of max_new_tokens
        if (r.finish === 'length' && context > 0 && r.ids.length < maxNew && r.promptTokens + r.ids.length >= context) contextStops++;
        tokens += r.ids.length;
        const item = items[b0 + k]!;
        const rec = { ...item.rec, [item.field]: r.text };
        try {
          fs.writeSync(fd, JSON.stringify(rec) + '\n');
        } catch (err) {
          throw ioFail(err, partial);
        }
        done++;
        progress();
      }
    }
    try {
      fs.fsyncSync(fd);
    } catch (err) {
      throw ioFail(err, partial);
    }
  } catch (err) {
    mine.abort();
    if (err instanceof PredictError) {
      if (done === 0) {
        // nothing written: no empty partial file is left behind
        fs.closeSync(fd);
        fd = -1;
        dropEmpty();
        throw new PredictError(err.code === 'STOPPED' ? 'stopped: no prediction was written' : err.message, err.code, err.errors, err.hint);
      }
      const kept = `${done} of ${items.length} predictions are kept in ${partial}; run the same command again to resume`;
      throw new PredictError(err.code === 'STOPPED' ? `stopped: ${kept}` : `${err.message}\n${kept}`, err.code, err.errors, err.hint);
    }
    throw err;
  } finally {
    opt.signal?.removeEventListener('abort', onAbort);
    if (fd >= 0) fs.closeSync(fd);
  }
  try {
    fs.renameSync(partial, out);
  } catch (err) {
    throw ioFail(err);
  }
  fs.rmSync(metaFile, { force: true });
  return {
    out,
    format,
    field,
    records: loaded.records,
    written: items.length,
    resumed,
    skipped: errors.length,
    errors,
    finish,
    tokens,
    seconds: (Date.now() - t0) / 1000,
    ...placed,
    context: context || null,
    contextStops,
  };
}
