// prepare.ts — `data prepare`: one pass over a dataset file that reads, validates, formats, templates,
// tokenizes and truncates every record into a .tok file (plus an optional validation split), with a report
// a user can act on: every broken record by line number, truncation counts, a length histogram, duplicates.
// Results are cached by the content hashes of the data and the tokenizer plus every option that matters.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { type ColumnOptions, FORMAT_HINT, type Format, HISTORY_FORMATS, type Sample, detectFormat, fieldList, sampleOf } from './formats.js';
import { type ChatRenderer, loadChatTemplate } from './chat-template.js';
import { readRecords, recordAt } from './reader.js';
import { type EncodeOptions, type TemplateName, TEMPLATES, encodeSample } from './templates.js';
import { realish } from '../paths.js';
import { concatTok, TokReader, TokWriter } from './tokfile.js';
import type { Tokenizer } from './tokenizer/types.js';

export interface PrepareOptions {
  dataFile: string;
  out: string;
  tokenizer: Tokenizer;
  format?: Format;
  template?: TemplateName;
  columns?: ColumnOptions;
  maxSourceLength: number;
  maxTargetLength: number;
  trainOnPrompt?: boolean;
  /** 'fail' (default): any bad record fails the whole file, listing every bad line; 'skip': count and go on */
  onError?: 'fail' | 'skip';
  /** Write a validation split here, taking validationPercent of the records (deterministic by seed). */
  validationOut?: string;
  validationPercent?: number;
  /** An empty validation split is not an error (one of several files: the others may give some). */
  allowEmptyValidation?: boolean;
  seed?: number;
  /** Folder of cached results; none when undefined. */
  cacheDir?: string;
  /** Pack samples into rows of at most this many tokens (positions restart per sample; the engine keeps
   *  attention inside each sample). A sample longer than a row gets a row of its own. */
  packRowLength?: number;
  /** The model's chat_template, for template "chat_template"; read from `modelDir` (else `source.model`) when
   *  not given. */
  chatTemplate?: ChatRenderer;
  /** The model folder (its tokenizer_config.json holds the chat_template). */
  modelDir?: string;
  /** Recorded in the header (e.g. the model folder). */
  source?: Record<string, unknown>;
}

export interface RecordError {
  /** the dataset file, where several were prepared together */
  file?: string;
  line: number;
  /** the element's index in a JSON array (0-based), which tells apart records on one line */
  element?: number;
  reason: string;
}

export interface PrepareReport {
  out: string;
  format: Format;
  template: TemplateName;
  records: number;
  written: number;
  /** the validation split's file (written, tokens and truncation of its samples; the report's other counts are the
   *  training file's) */
  validation: { out: string; written: number; tokens: number; truncated: { samples: number; tokens: number }; maxLength: number } | null;
  skipped: number;
  errors: RecordError[];
  errorCount: number;
  /** `estimated`: of those samples, how many had a field too long to tokenize whole (see templates.ts
   *  `charBudget`), whose truncated tokens are an estimate */
  truncated: { samples: number; tokens: number; estimated?: number };
  tokens: number;
  lengths: { min: number; max: number; mean: number; p50: number; p95: number; histogram: { upTo: number; count: number }[] };
  duplicates: number;
  /** Samples packed into the written rows (0 when not packing). */
  packedSamples: number;
  cached: boolean;
  seconds: number;
}

export class PrepareError extends Error {
  constructor(
    message: string,
    readonly errors: RecordError[],
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'PrepareError';
  }
}

const MAX_LISTED_ERRORS = 1000;

async function fileHash(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function histogram(lengths: number[]): PrepareReport['lengths'] {
  if (!lengths.length) return { min: 0, max: 0, mean: 0, p50: 0, p95: 0, histogram: [] };
  const sorted = [...lengths].sort((a, b) => a - b);
  const max = sorted.at(-1)!;
  const width = Math.max(1, Math.ceil(max / 20));
  const buckets = new Map<number, number>();
  for (const l of lengths) {
    const up = Math.ceil(l / width) * width;
    buckets.set(up, (buckets.get(up) ?? 0) + 1);
  }
  return {
    min: sorted[0]!,
    max,
    mean: Math.round((lengths.reduce((a, b) => a + b, 0) / lengths.length) * 10) / 10,
    p50: sorted[Math.floor(sorted.length * 0.5)]!,
    p95: sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))]!,
    histogram: [...buckets.entries()].sort((a, b) => a[0] - b[0]).map(([upTo, count]) => ({ upTo, count })),
  };
}

/** Deterministic split: a record goes to validation when hash(seed, index) falls below the percentage. */
function inValidation(index: number, percent: number, seed: number): boolean {
  const h = crypto.createHash('sha256').update(`${seed}:${index}`).digest();
  return h.readUInt32LE(0) / 0x100000000 < percent / 100;
}

export async function prepareDataset(opt: PrepareOptions): Promise<PrepareReport> {
  const t0 = Date.now();
  if (!fs.existsSync(opt.dataFile)) throw new PrepareError(`the dataset ${opt.dataFile} does not exist`, []);
  if (fs.statSync(opt.dataFile).isDirectory()) throw new PrepareError(`the dataset ${opt.dataFile} is a folder, not a data file`, [], 'Give the JSON/JSONL/CSV file inside it.');
  if (!(opt.maxSourceLength >= 2) || !(opt.maxTargetLength >= 3)) {
    throw new PrepareError('max_source_length must be at least 2 and max_target_length at least 3', []);
  }
  const template = opt.template ?? 'raw';
  if (!TEMPLATES.includes(template)) throw new PrepareError(`unknown template "${template}" (known: ${TEMPLATES.join(', ')})`, []);
  // the model's chat_template: given, or read from the model folder (a run's data is prepared with the folder only)
  const modelDir = opt.modelDir ?? (typeof opt.source?.model === 'string' ? opt.source.model : undefined);
  let chatTemplate = opt.chatTemplate;
  if (template === 'chat_template' && !chatTemplate && modelDir) {
    try {
      chatTemplate = loadChatTemplate(modelDir);
    } catch (err) {
      throw new PrepareError((err as Error).message, [], 'Choose a built-in template that fits this model.');
    }
  }
  const encOpt: EncodeOptions = {
    maxSourceLength: opt.maxSourceLength,
    maxTargetLength: opt.maxTargetLength,
    ...(opt.trainOnPrompt ? { trainOnPrompt: true } : {}),
    ...(chatTemplate ? { chatTemplate } : {}),
  };
  try {
    // a tokenizer that lacks what the template needs is one problem, not one per record
    encodeSample({ kind: 'chat', turns: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }, template, opt.tokenizer, encOpt);
  } catch (err) {
    throw new PrepareError(`${(err as Error).message}`, [], 'Choose a template that fits this model, or complete the tokenizer files (tokenizer_config.json, special_tokens_map.json).');
  }
  const percent = opt.validationOut ? (opt.validationPercent ?? 5) : 0;
  const pack = opt.packRowLength ?? 0;
  if (pack && !(Number.isInteger(pack) && pack >= 8)) throw new PrepareError('the packing row length must be an integer of at least 8', []);
  const seed = opt.seed ?? 42;

  let cacheKey: string | null = null;
  if (opt.cacheDir) {
    const key = {
      v: 5, // 2: Alpaca "history", promptcblue with --history_column; 3: system prompts, messages, per-round truncation;
      // 4: history laid out round by round as conversations are (eos after each answer), ChatGLM-6B conversations folded;
      // 5: with a validation split, the report's counts are the training file's (the split's its own)
      data: await fileHash(opt.dataFile),
      tokenizer: opt.tokenizer.hash,
      template,
      chatTemplate: chatTemplate?.id ?? null,
      format: opt.format ?? null,
      columns: opt.columns ?? null,
      lengths: [opt.maxSourceLength, opt.maxTargetLength],
      trainOnPrompt: Boolean(opt.trainOnPrompt),
      onError: opt.onError ?? 'fail',
      split: [percent, seed],
      pack,
    };
    cacheKey = crypto.createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 32);
    const base = path.join(opt.cacheDir, cacheKey);
    if (fs.existsSync(`${base}.json`) && fs.existsSync(`${base}.tok`) && (!percent || fs.existsSync(`${base}.val.tok`))) {
      const report = JSON.parse(fs.readFileSync(`${base}.json`, 'utf8')) as PrepareReport;
      copyAtomic(`${base}.tok`, opt.out);
      if (percent && opt.validationOut) copyAtomic(`${base}.val.tok`, opt.validationOut);
      return { ...report, out: opt.out, validation: report.validation && opt.validationOut ? { ...report.validation, out: opt.validationOut } : null, cached: true, seconds: (Date.now() - t0) / 1000 };
    }
  }

  const train = new TokWriter(opt.out, pack > 0);
  const val = percent ? new TokWriter(opt.validationOut!, pack > 0) : null;
  // one open row per writer when packing
  const rows = new Map<TokWriter, { ids: number[]; mask: boolean[]; pos: number[]; samples: number }>();
  let packedSamples = 0;
  const emit = (w: TokWriter, ids: number[], mask: boolean[]) => {
    if (!pack) {
      w.add(ids, mask);
      return;
    }
    packedSamples++;
    // a sample longer than a row: whole rows of it first, each piece a sequence of its own (as HF's group_texts cuts
    // the stream into blocks; the first token of a piece is not predicted), the rest packed like a sample
    if (ids.length > pack) {
      let off = 0;
      for (; ids.length - off > pack; off += pack) w.add(ids.slice(off, off + pack), [false, ...mask.slice(off + 1, off + pack)], Array.from({ length: pack }, (_, i) => i));
      ids = ids.slice(off);
      mask = mask.slice(off);
    }
    let row = rows.get(w);
    if (row && row.ids.length + ids.length > pack) {
      w.add(row.ids, row.mask, row.pos);
      row = undefined;
    }
    if (!row) rows.set(w, (row = { ids: [], mask: [], pos: [], samples: 0 }));
    row.ids.push(...ids);
    row.mask.push(false, ...mask.slice(1)); // the first token of a sample is never predicted across the boundary
    for (let i = 0; i < ids.length; i++) row.pos.push(i);
    row.samples++;
  };
  const errors: RecordError[] = [];
  let errorCount = 0;
  let format: Format | null = opt.format ?? null;
  let records = 0;
  let truncSamples = 0;
  let truncTokens = 0;
  let truncEstimated = 0;
  const valTrunc = { samples: 0, tokens: 0 };
  let valTokens = 0;
  let valMax = 0;
  let firstFields: string | null = null; // of the first record, for "no usable record"
  let historySeen = 0; // records holding --history_column
  let tokens = 0;
  let duplicates = 0;
  const seen = new Set<number>();
  const lengths: number[] = [];
  const fail = (at: { line: number; element?: number }, reason: string) => {
    errorCount++;
    if (errors.length < MAX_LISTED_ERRORS) errors.push({ line: at.line, ...(at.element !== undefined ? { element: at.element } : {}), reason });
  };
  try {
    // Records are processed in chunks: each chunk's texts are tokenized in one batch (encodeBatch, in
    // parallel in Rust for tokenizer.json) by running the template twice — once recording the texts it
    // encodes, once replaying their ids — so templates stay simple synchronous code.
    const flush = async (chunk: { line: number; element?: number; sample: Sample; index: number }[]) => {
      const texts = new Set<string>();
      // derived objects keep the tokenizer's getters and methods; only encode differs
      const recorder = Object.assign(Object.create(opt.tokenizer) as Tokenizer, { encode: (t: string) => (texts.add(t), []) });
      for (const c of chunk) {
        try {
          encodeSample(c.sample, template, recorder, encOpt);
        } catch {
          /* reported in the replay */
        }
      }
      const list = [...texts];
      const ids = opt.tokenizer.encodeBatch ? await opt.tokenizer.encodeBatch(list) : list.map((t) => opt.tokenizer.encode(t));
      const memo = new Map(list.map((t, i) => [t, ids[i]!]));
      const replay = Object.assign(Object.create(opt.tokenizer) as Tokenizer, { encode: (t: string) => memo.get(t) ?? opt.tokenizer.encode(t) });
      for (const c of chunk) {
        let encoded;
        try {
          encoded = encodeSample(c.sample, template, replay, encOpt);
        } catch (err) {
          fail(c, (err as Error).message);
          continue;
        }
        // 48 bits of a hash per sample: a number, so millions of samples stay cheap to remember
        const key = crypto.createHash('sha1').update(Int32Array.from(encoded.ids)).digest().readUIntLE(0, 6);
        if (seen.has(key)) duplicates++;
        else seen.add(key);
        if (!encoded.mask.some((m, i) => m && i > 0)) {
          const unweighted = c.sample.kind === 'chat' && c.sample.turns.some((t) => t.role === 'assistant') && c.sample.turns.every((t) => t.role !== 'assistant' || t.train === false);
          fail(c, unweighted ? 'nothing to train on: every answer of the conversation has "weight": 0' : 'nothing to train on after truncation (every label is -100); raise max_target_length');
          continue;
        }
        // the report's counts are the training file's; the validation split's are its own
        const toVal = Boolean(val && inValidation(c.index, percent, seed));
        if (encoded.truncatedTokens > 0) {
          if (toVal) {
            valTrunc.samples++;
            valTrunc.tokens += encoded.truncatedTokens;
          } else {
            truncSamples++;
            truncTokens += encoded.truncatedTokens;
            if (encoded.truncationEstimated) truncEstimated++;
          }
        }
        if (toVal) {
          valTokens += encoded.ids.length;
          valMax = Math.max(valMax, encoded.ids.length);
        } else {
          tokens += encoded.ids.length;
          lengths.push(encoded.ids.length);
        }
        emit(toVal ? val! : train, encoded.ids, encoded.mask);
      }
    };
    let chunk: { line: number; element?: number; sample: Sample; index: number }[] = [];
    const historyColumn = opt.columns?.historyColumn;
    const cols = opt.columns ?? {};
    let from = '--format'; // where the file's format came from, for messages
    // records read while no record has told the format yet (an odd first record: a header, metadata)
    let undetected: { rec: { line: number; element?: number }; obj: Record<string, unknown>; index: number }[] = [];
    const take = (rec: { line: number; element?: number }, obj: Record<string, unknown>, index: number, fmt: Format) => {
      if (historyColumn && !HISTORY_FORMATS.includes(fmt)) {
        throw new PrepareError(
          `--history_column "${historyColumn}" cannot be used with the ${fmt} format of ${opt.dataFile}${fmt === 'sharegpt' ? ' (a ShareGPT conversation holds its earlier rounds itself)' : ' (plain text has no rounds)'}`,
          [],
          `Leave out --history_column; it applies to the ${HISTORY_FORMATS.join(', ')} formats.`,
        );
      }
      if (historyColumn && historyColumn in obj) historySeen++;
      try {
        chunk.push({ line: rec.line, ...(rec.element !== undefined ? { element: rec.element } : {}), sample: sampleOf(obj, fmt, cols, from), index });
      } catch (err) {
        fail(rec, (err as Error).message);
      }
    };
    for await (const rec of readRecords(opt.dataFile)) {
      records++;
      if ('error' in rec) {
        fail(rec, rec.error);
        continue;
      }
      const obj = rec.value as Record<string, unknown>;
      firstFields ??= fieldList(obj, 'the first record');
      if (!format) {
        format = detectFormat(obj, opt.columns);
        if (!format) {
          // the format is told by the first record that has a known shape (within the first 100)
          if (undetected.length < 100) {
            undetected.push({ rec, obj, index: records - 1 });
            continue;
          }
          const u = undetected[0]!;
          throw new PrepareError(`cannot tell the format of ${opt.dataFile} from line ${u.rec.line} (fields: ${Object.keys(u.obj).join(', ') || 'none'}) nor from the 100 records after it; ${FORMAT_HINT}`, []);
        }
        from = `detected from line ${rec.line}`;
        for (const u of undetected) take(u.rec, u.obj, u.index, format);
        undetected = [];
      }
      take(rec, obj, records - 1, format);
      if (chunk.length >= 512) {
        await flush(chunk);
        chunk = [];
      }
    }
    if (!format && undetected.length) {
      const u = undetected[0]!;
      throw new PrepareError(`cannot tell the format of ${opt.dataFile} from line ${u.rec.line} (fields: ${Object.keys(u.obj).join(', ') || 'none'}); ${FORMAT_HINT}`, []);
    }
    await flush(chunk);
    for (const [w, row] of rows) if (row.ids.length) w.add(row.ids, row.mask, row.pos);
    // (a record's format problems are found as it is read, its tokenization problems a chunk later: in file order again)
    errors.sort((a, b) => a.line - b.line || (a.element ?? 0) - (b.element ?? 0));
    const listed = () => errors.slice(0, 20).map((e) => `  ${recordAt(opt.dataFile, e)}: ${e.reason}`).join('\n') + (errorCount > 20 ? `\n  … and ${errorCount - 20} more` : '');
    if (!format) {
      // every record failed before one could tell the format (Python-style quotes, a cut gzip): those errors, not "no records"
      if (errorCount) throw new PrepareError(`no record of ${opt.dataFile} could be read; ${errorCount} bad record(s):\n${listed()}`, errors, 'Fix the lines above (each record one JSON object, with double quotes as JSON requires).');
      throw new PrepareError(`${opt.dataFile} holds no records`, []);
    }
    if (historyColumn && !historySeen && records > errorCount) {
      // a typo'd --history_column would otherwise silently train without the earlier rounds
      throw new PrepareError(`no record of ${opt.dataFile} has the history column "${historyColumn}" (--history_column); ${firstFields ?? 'the first record has no fields'}`, [], 'Check the column name, or leave out --history_column.');
    }
    const policy = opt.onError ?? 'fail';
    if (errorCount && policy === 'fail') {
      throw new PrepareError(
        `${errorCount} bad record(s) in ${opt.dataFile}:\n${listed()}`,
        errors,
        'Fix the lines above, or pass --on-error skip to leave them out (they are counted in the report).',
      );
    }
    if (train.count === 0) {
      const e = errors[0];
      const first = e ? ` (${errorCount} skipped; the first, ${recordAt(opt.dataFile, e)}: ${e.reason})` : '';
      throw new PrepareError(`no usable record in ${opt.dataFile}${first}${firstFields && !e?.reason.includes(' has: ') ? `; ${firstFields}` : ''}`, errors);
    }
    if (val && val.count === 0 && !opt.allowEmptyValidation) throw new PrepareError(`the ${percent}% validation split of ${opt.dataFile} is empty (too few records for that share): raise the percentage or give a validation file`, []);
    const header = {
      tokenizer_hash: opt.tokenizer.hash,
      template,
      format,
      max_source_length: opt.maxSourceLength,
      max_target_length: opt.maxTargetLength,
      vocab_size: opt.tokenizer.vocabSize,
      bos_id: opt.tokenizer.bosId,
      eos_id: opt.tokenizer.eosId,
      pad_id: opt.tokenizer.padId ?? opt.tokenizer.eosId ?? 0,
      source: { data: path.resolve(opt.dataFile), ...opt.source },
      created_by: 'llms-train data prepare',
    };
    await train.finish(header);
    let validation: PrepareReport['validation'] = null;
    if (val) {
      await val.finish({ ...header, split: 'validation' });
      validation = { out: opt.validationOut!, written: val.count, tokens: valTokens, truncated: valTrunc, maxLength: valMax };
    }
    const report: PrepareReport = {
      out: opt.out,
      format,
      template,
      records,
      written: train.count,
      validation,
      skipped: errorCount,
      errors,
      errorCount,
      truncated: { samples: truncSamples, tokens: truncTokens, ...(truncEstimated ? { estimated: truncEstimated } : {}) },
      tokens,
      lengths: histogram(lengths),
      duplicates,
      packedSamples,
      cached: false,
      seconds: (Date.now() - t0) / 1000,
    };
    if (opt.cacheDir && cacheKey) {
      fs.mkdirSync(opt.cacheDir, { recursive: true });
      const base = path.join(opt.cacheDir, cacheKey);
      copyAtomic(opt.out, `${base}.tok`);
      if (validation) copyAtomic(validation.out, `${base}.val.tok`);
      fs.writeFileSync(`${base}.json.tmp`, JSON.stringify(report));
      fs.renameSync(`${base}.json.tmp`, `${base}.json`);
    }
    return report;
  } catch (err) {
    await train.abort();
    if (val) await val.abort();
    throw err;
  }
}

function copyAtomic(from: string, to: string): void {
  fs.mkdirSync(path.dirname(path.resolve(to)), { recursive: true });
  const tmp = `${to}.${process.pid}.tmp`;
  fs.copyFileSync(from, tmp);
  fs.renameSync(tmp, to);
}

/**
 * The report of several files prepared one by one and put together into `out` (and `validationOut`): counts summed,
 * the lengths read back from the combined file, the format when they share one ("mixed" otherwise).
 */
export function combineReports(parts: readonly PrepareReport[], out: string, validationOut: string | null, files?: readonly string[]): PrepareReport {
  const sum = (f: (r: PrepareReport) => number) => parts.reduce((a, r) => a + f(r), 0);
  const r = TokReader.open(out);
  let lengths: number[];
  try {
    lengths = Array.from({ length: r.size }, (_, i) => r.length(i));
  } finally {
    r.close();
  }
  const vals = parts.map((p) => p.validation).filter((v): v is NonNullable<PrepareReport['validation']> => v !== null);
  const formats = [...new Set(parts.map((p) => p.format))];
  const templates = [...new Set(parts.map((p) => p.template))];
  const estimated = sum((p) => p.truncated.estimated ?? 0);
  return {
    out,
    format: (formats.length === 1 ? formats[0] : 'mixed') as Format,
    template: templates[0]!,
    records: sum((p) => p.records),
    written: sum((p) => p.written),
    validation:
      validationOut && vals.length
        ? {
            out: validationOut,
            written: vals.reduce((a, v) => a + v.written, 0),
            tokens: vals.reduce((a, v) => a + v.tokens, 0),
            truncated: { samples: vals.reduce((a, v) => a + v.truncated.samples, 0), tokens: vals.reduce((a, v) => a + v.truncated.tokens, 0) },
            maxLength: Math.max(...vals.map((v) => v.maxLength)),
          }
        : null,
    skipped: sum((p) => p.skipped),
    errors: parts.flatMap((p, k) => (files?.[k] !== undefined ? p.errors.map((e) => ({ file: files[k]!, ...e })) : p.errors)).slice(0, MAX_LISTED_ERRORS),
    errorCount: sum((p) => p.errorCount),
    truncated: { samples: sum((p) => p.truncated.samples), tokens: sum((p) => p.truncated.tokens), ...(estimated ? { estimated } : {}) },
    tokens: sum((p) => p.tokens),
    lengths: histogram(lengths),
    duplicates: sum((p) => p.duplicates),
    packedSamples: sum((p) => p.packedSamples),
    cached: parts.every((p) => p.cached),
    seconds: sum((p) => p.seconds),
  };
}

/**
 * What the outputs of a preparation may not be, said before any record is read (a whole file tokenized only to fail
 * at the rename, or a dataset overwritten): a folder, one of the dataset files, the same file for the training data
 * and the validation split (their writers would share temp files); and a validation share outside (0, 100).
 */
function checkTargets(opt: { dataFiles: readonly string[]; out: string; validationOut?: string | undefined; validationPercent?: number | undefined }): void {
  const outs = [
    { file: opt.out, flag: '--out' },
    ...(opt.validationOut ? [{ file: opt.validationOut, flag: '--validation-out' }] : []),
  ];
  for (const { file, flag } of outs) {
    if (fs.existsSync(file) && fs.statSync(file).isDirectory())
      throw new PrepareError(`${file} is a folder; the output (${flag}) is a .tok file, e.g. ${path.join(file, 'train.tok')}`, []);
    const same = opt.dataFiles.find((d) => fs.existsSync(d) && realish(d) === realish(file));
    if (same) throw new PrepareError(`the output ${file} (${flag}) is the dataset ${same} itself: preparing would overwrite your data`, [], 'Write the .tok file elsewhere, e.g. next to it with a .tok extension.');
  }
  if (opt.validationOut && realish(opt.validationOut) === realish(opt.out))
    throw new PrepareError(`the validation split and the training data would both be written to ${opt.out}`, [], 'Give --validation-out another file.');
  const p = opt.validationPercent;
  if (opt.validationOut && p !== undefined && !(Number.isFinite(p) && p > 0 && p < 100))
    throw new PrepareError(`the validation share must be a percentage above 0 and below 100, not ${String(p)}`, [], 'e.g. --validation-percent 5');
}

/**
 * One or several dataset files into one .tok (and one validation split): each file prepared on its own — its own
 * format when none is given, its own cache entry, its bad records named with its path — then the samples put together
 * in the order given. `onFile` hears each file's own report. One file is prepareDataset itself.
 */
export async function prepareFiles(opt: Omit<PrepareOptions, 'dataFile'> & { dataFiles: readonly string[] }, onFile?: (file: string, report: PrepareReport) => void): Promise<PrepareReport> {
  const { dataFiles: files, ...rest } = opt;
  if (!files.length) throw new PrepareError('no dataset file given', []);
  checkTargets(opt);
  if (files.length === 1) return prepareDataset({ ...rest, dataFile: files[0]! });
  const missing = files.find((f) => !fs.existsSync(f));
  if (missing) {
    throw new PrepareError(`the dataset ${missing} does not exist`, [], `The training files were read as ${files.length} paths separated by commas (${files.join(' | ')}); a file whose name holds a comma can only be given alone, or in a --config run.json list.`);
  }
  const part = (kind: string, k: number) => `${opt.out}.part${k}.${kind}`;
  const parts: PrepareReport[] = [];
  try {
    for (const [k, file] of files.entries()) {
      const r = await prepareDataset({ ...rest, dataFile: file, out: part('tok', k), ...(opt.validationOut ? { validationOut: part('val', k), allowEmptyValidation: true } : {}) });
      onFile?.(file, r);
      parts.push(r);
    }
    if (opt.validationOut && parts.every((r) => !r.validation?.written)) {
      throw new PrepareError(`the ${opt.validationPercent ?? 5}% validation split of ${files.join(', ')} is empty (too few records for that share): raise the percentage or give a validation file`, []);
    }
    await concatTok(files.map((_, k) => part('tok', k)), opt.out);
    if (opt.validationOut) await concatTok(files.map((_, k) => part('val', k)), opt.validationOut);
  } finally {
    for (const k of files.keys()) for (const kind of ['tok', 'val']) fs.rmSync(part(kind, k), { force: true });
  }
  return combineReports(parts, opt.out, opt.validationOut ?? null, files);
}
