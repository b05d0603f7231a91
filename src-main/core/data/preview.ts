// preview.ts — what the wizard's dataset step and the Datasets screen show before anything is tokenized to
// disk: the detected file kind and format, the columns, the first rows rendered through the chosen template
// with the trained-on tokens marked, and statistics (records, token lengths, truncation, bad lines).
import fs from 'node:fs';

import { type ColumnOptions, detectFormat, type Format, FORMAT_HINT, HISTORY_FORMATS, sampleOf } from './formats.js';
import { histogram, type PrepareReport, type RecordError } from './prepare.js';
import { detectFileKind, type FileKind, readRecords } from './reader.js';
import { encodeSample, type TemplateName, TEMPLATES } from './templates.js';
import type { Tokenizer } from './tokenizer/index.js';
import { loadChatTemplate } from './chat-template.js';

export interface PreviewOptions {
  file: string;
  format?: Format | null;
  template?: TemplateName;
  columns?: ColumnOptions;
  /** With a tokenizer, rows are rendered token by token and lengths are counted in tokens. */
  tokenizer?: Tokenizer | null;
  modelDir?: string | null;
  maxSourceLength?: number;
  maxTargetLength?: number;
  /** rows rendered (default 5) */
  rows?: number;
  /** records tokenized for the statistics (default 2000); the rest are only parsed and counted */
  statsLimit?: number;
}

export interface PreviewSegment {
  text: string;
  /** true: these tokens are labels (the loss is computed on them) */
  trained: boolean;
}

export interface DatasetPreview {
  file: string;
  bytes: number;
  kind: FileKind;
  format: Format | null;
  formatHint: string | null;
  columns: string[];
  /** every record in the file (parsed, bad ones included) */
  records: number;
  /** parse or format errors with line numbers (at most 200 listed) */
  errors: RecordError[];
  errorCount: number;
  types: Record<string, number>;
  rows: { line: number; raw: unknown; segments: PreviewSegment[]; tokens: number; truncated: number }[];
  stats: {
    /** records the statistics were computed over (the first N) */
    sampled: number;
    unit: 'tokens' | 'characters';
    lengths: PrepareReport['lengths'];
    truncatedPercent: number;
    trainedTokensPercent: number;
  };
}

export async function previewDataset(opt: PreviewOptions): Promise<DatasetPreview> {
  if (!fs.existsSync(opt.file)) throw Object.assign(new Error(`the dataset ${opt.file} does not exist`), { hint: 'Pick the file again, or check the path.' });
  const stat = fs.statSync(opt.file);
  if (!stat.isFile()) throw Object.assign(new Error(`${opt.file} is not a file`), { hint: 'Choose a .json, .jsonl, .csv, .tsv or .txt file.' });
  const template = opt.template ?? 'raw';
  if (!TEMPLATES.includes(template)) throw new Error(`unknown template "${template}" (known: ${TEMPLATES.join(', ')})`);
  const kind = await detectFileKind(opt.file);
  const wantRows = opt.rows ?? 5;
  const limit = opt.statsLimit ?? 2000;
  const cols = opt.columns ?? {};
  const chatTemplate = template === 'chat_template' && opt.modelDir ? loadChatTemplate(opt.modelDir) : undefined;
  const enc = {
    maxSourceLength: opt.maxSourceLength ?? 512,
    maxTargetLength: opt.maxTargetLength ?? 64,
    ...(chatTemplate ? { chatTemplate } : {}),
  };

  let format: Format | null = opt.format ?? null;
  let from = '--format';
  const columns = new Set<string>();
  const errors: RecordError[] = [];
  let errorCount = 0;
  let records = 0;
  const types: Record<string, number> = {};
  const rows: DatasetPreview['rows'] = [];
  const lengths: number[] = [];
  let truncated = 0;
  let trained = 0;
  let total = 0;
  const fail = (at: { line: number; element?: number }, reason: string) => {
    errorCount++;
    if (errors.length < 200) errors.push({ line: at.line, ...(at.element !== undefined ? { element: at.element } : {}), reason });
  };
  const historyColumn = cols.historyColumn;

  // each record exactly as `data prepare` takes it: the same format, the same checks, the same encoding
  const take = (r: { line: number; element?: number }, rec: Record<string, unknown>, fmt: Format) => {
    if (historyColumn && !HISTORY_FORMATS.includes(fmt)) {
      throw Object.assign(new Error(`the history column "${historyColumn}" cannot be used with the ${fmt} format${fmt === 'sharegpt' ? ' (a ShareGPT conversation holds its earlier rounds itself)' : ' (plain text has no rounds)'}`), {
        hint: `Leave the history column empty; it applies to the ${HISTORY_FORMATS.join(', ')} formats.`,
      });
    }
    if (typeof rec.type === 'string') types[rec.type] = (types[rec.type] ?? 0) + 1;
    if (lengths.length >= limit && rows.length >= wantRows) return; // counted, not tokenized
    let sample;
    try {
      sample = sampleOf(rec, fmt, cols, from);
    } catch (err) {
      fail(r, (err as Error).message);
      return;
    }
    if (!opt.tokenizer) {
      const text = sample.kind === 'text' ? sample.text : sample.turns.map((t) => t.content).join('\n');
      lengths.push(text.length);
      if (rows.length < wantRows) {
        const segments = sample.kind === 'text' ? [{ text: sample.text, trained: true }] : sample.turns.map((t) => ({ text: `${t.content}\n`, trained: t.role === 'assistant' }));
        rows.push({ line: r.line, raw: rec, segments, tokens: 0, truncated: 0 });
      }
      return;
    }
    let e;
    try {
      e = encodeSample(sample, template, opt.tokenizer, enc);
    } catch (err) {
      fail(r, (err as Error).message);
      return;
    }
    if (!e.mask.some((m, i) => m && i > 0)) {
      fail(r, 'nothing to train on after truncation (every label is -100); raise max_target_length');
      return;
    }
    lengths.push(e.ids.length);
    total += e.ids.length;
    trained += e.mask.filter(Boolean).length;
    if (e.truncatedTokens > 0) truncated++;
    if (rows.length < wantRows) {
      const segments: PreviewSegment[] = [];
      let start = 0;
      for (let i = 1; i <= e.ids.length; i++) {
        if (i === e.ids.length || e.mask[i] !== e.mask[start]) {
          segments.push({ text: opt.tokenizer.decode(e.ids.slice(start, i)), trained: Boolean(e.mask[start]) });
          start = i;
        }
      }
      rows.push({ line: r.line, raw: rec, segments, tokens: e.ids.length, truncated: e.truncatedTokens });
    }
  };

  let undetected: { r: { line: number; element?: number }; rec: Record<string, unknown> }[] = [];
  for await (const r of readRecords(opt.file, kind)) {
    records++;
    if ('error' in r) {
      fail(r, r.error);
      continue;
    }
    const rec = r.value as Record<string, unknown>;
    if (columns.size < 64) for (const k of Object.keys(rec)) columns.add(k);
    if (!format) {
      format = detectFormat(rec, cols);
      if (!format) {
        // as prepare: the first record with a known shape (within the first 100) tells the format
        if (undetected.length < 100) undetected.push({ r, rec });
        else fail(r, 'the format cannot be recognised from this record');
        continue;
      }
      from = `detected from line ${r.line}`;
      for (const u of undetected) take(u.r, u.rec, format);
      undetected = [];
    }
    take(r, rec, format);
  }
  for (const u of undetected) fail(u.r, 'the format cannot be recognised from this record');
  return {
    file: opt.file,
    bytes: stat.size,
    kind,
    format,
    formatHint: format ? null : FORMAT_HINT,
    columns: [...columns],
    records,
    errors,
    errorCount,
    types,
    rows,
    stats: {
      sampled: lengths.length,
      unit: opt.tokenizer ? 'tokens' : 'characters',
      lengths: histogram(lengths),
      truncatedPercent: lengths.length ? (100 * truncated) / lengths.length : 0,
      trainedTokensPercent: total ? (100 * trained) / total : 0,
    },
  };
}
