// metrics.ts — evaluation metrics of predictions against gold answers, per task `type` and overall:
// classification (records with answer_choices: accuracy, micro-/macro-F1, unmatched predictions) and generation
// (corpus BLEU-4 as sacrebleu computes it, ROUGE-1/2/L F as rouge-score computes them, exact match).
// Pure functions, no I/O except evaluateFiles(). The exact definitions are in docs/metrics.md; keep both in step.
import { readRecords } from '../data/reader.js';

export type Lang = 'zh' | 'en';

/** One prediction with its gold record. `choices` non-empty makes it a classification record. */
export interface EvalItem {
  type?: string | null;
  gold: string;
  prediction: string;
  choices?: readonly string[] | null;
}

export interface ClassificationMetrics {
  count: number;
  correct: number;
  accuracy: number;
  microF1: number;
  macroF1: number;
  /** predictions that contain none of the choices (counted wrong) */
  unmatched: number;
  /** gold answers that are not one of their record's choices */
  goldOutsideChoices: number;
  /** number of labels macro-F1 averages over (union of gold and predicted labels) */
  labels: number;
}

export interface GenerationMetrics {
  count: number;
  /** corpus BLEU-4, 0..1 (sacrebleu's score / 100) */
  bleu4: number;
  rouge1: number;
  rouge2: number;
  rougeL: number;
  exactMatch: number;
  /** predictions that are empty after trimming */
  empty: number;
  /** languages of the gold answers (decides tokenization) */
  languages: { zh: number; en: number };
}

export interface GroupMetrics {
  /** task type; '(all)' for the overall group, '(none)' for records without a type */
  type: string;
  count: number;
  classification: ClassificationMetrics | null;
  generation: GenerationMetrics | null;
}

export interface MetricsReport {
  overall: GroupMetrics;
  byType: GroupMetrics[];
}

export const NO_TYPE = '(none)';
export const ALL_TYPES = '(all)';

// ---- text helpers -------------------------------------------------------------------------------------------

/** Python's str.isspace() set (what str.split() and str.strip() use), so tokenization matches the references. */
const PY_SPACE_CLASS = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_SPACE_RUN = new RegExp(`[${PY_SPACE_CLASS}]+`, 'g');
const PY_SPACE_ONE = new RegExp(`^[${PY_SPACE_CLASS}]$`);
const PY_STRIP = new RegExp(`^[${PY_SPACE_CLASS}]+|[${PY_SPACE_CLASS}]+$`, 'g');
const PY_RSTRIP = new RegExp(`[${PY_SPACE_CLASS}]+$`);

/** Python's str.split() without arguments. */
export function pySplit(s: string): string[] {
  return s.split(PY_SPACE_RUN).filter((t) => t.length > 0);
}

export function pyStrip(s: string): string {
  return s.replace(PY_STRIP, '');
}

const HAN = /\p{Script=Han}/u;

/** 'zh' when the text holds at least one Han character, else 'en'. */
export function detectLanguage(text: string): Lang {
  return HAN.test(text) ? 'zh' : 'en';
}

// ---- classification -----------------------------------------------------------------------------------------

/**
 * The answer choice a prediction names: among the choices that occur in the trimmed prediction, the one whose
 * first occurrence starts earliest; at the same start, the longest; then the one listed first. An exact match
 * is the special case of a choice at position 0 that spans the whole prediction. null when none occurs
 * (empty choices are ignored).
 */
export function pickChoice(prediction: string, choices: readonly string[]): string | null {
  const text = prediction.trim();
  let best: string | null = null;
  let at = Infinity;
  for (const raw of choices) {
    const c = raw.trim();
    if (!c) continue;
    const i = text.indexOf(c);
    if (i < 0) continue;
    if (i < at || (i === at && c.length > best!.length)) {
      best = c;
      at = i;
    }
  }
  return best;
}

interface ClsPoint {
  gold: string;
  /** null: matched no choice */
  pred: string | null;
  goldOutside: boolean;
}

/**
 * Accuracy, micro- and macro-F1 of single-label predictions, as scikit-learn's f1_score(y_true, y_pred,
 * labels=L, average='micro'|'macro') with L = the union of the gold labels and the (matched) predicted labels.
 * An unmatched prediction (null) is no label of L: it is a false negative of its gold label and a false positive
 * of nothing. Per label F1 = 2·tp / (2·tp + fp + fn) (never 0/0 for a label of L).
 */
export function classificationScores(points: readonly ClsPoint[]): ClassificationMetrics {
  const tp = new Map<string, number>();
  const fp = new Map<string, number>();
  const fn = new Map<string, number>();
  const labels = new Set<string>();
  const inc = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  let correct = 0;
  let unmatched = 0;
  let outside = 0;
  for (const p of points) {
    labels.add(p.gold);
    if (p.goldOutside) outside++;
    if (p.pred === null) {
      unmatched++;
      inc(fn, p.gold);
      continue;
    }
    labels.add(p.pred);
    if (p.pred === p.gold) {
      correct++;
      inc(tp, p.gold);
    } else {
      inc(fp, p.pred);
      inc(fn, p.gold);
    }
  }
  let sTp = 0;
  let sFp = 0;
  let sFn = 0;
  let macro = 0;
  for (const l of labels) {
    const a = tp.get(l) ?? 0;
    const b = fp.get(l) ?? 0;
    const c = fn.get(l) ?? 0;
    sTp += a;
    sFp += b;
    sFn += c;
    macro += 2 * a + b + c > 0 ? (2 * a) / (2 * a + b + c) : 0;
  }
  const n = points.length;
  return {
    count: n,
    correct,
    accuracy: n ? correct / n : 0,
    microF1: 2 * sTp + sFp + sFn > 0 ? (2 * sTp) / (2 * sTp + sFp + sFn) : 0,
    macroF1: labels.size ? macro / labels.size : 0,
    unmatched,
    goldOutsideChoices: outside,
    labels: labels.size,
  };
}

// ---- BLEU (sacrebleu 2.x, corpus level) ---------------------------------------------------------------------

/**
 * sacrebleu's TokenizerZh._is_chinese_char. Its table writes two supplementary ranges as '\u20000'…'\u2a6d6'
 * and '\u2f800'…'\u2fa1d', which Python reads as two-character strings; compared with one character they mean
 * U+2001…U+2A6D and U+2F81…U+2FA1 (so general punctuation such as “ ” — … is split off, while CJK Extension B
 * is not). Reproduced as sacrebleu behaves, so scores agree.
 */
const ZH_RANGES: [number, number][] = [
  [0x3400, 0x4db5],
  [0x4e00, 0x9fa5],
  [0x9fa6, 0x9fbb],
  [0xf900, 0xfa2d],
  [0xfa30, 0xfa6a],
  [0xfa70, 0xfad9],
  [0x2001, 0x2a6d],
  [0x2f81, 0x2fa1],
  [0xff00, 0xffef],
  [0x2e80, 0x2eff],
  [0x3000, 0x303f],
  [0x31c0, 0x31ef],
  [0x2f00, 0x2fdf],
  [0x2ff0, 0x2fff],
  [0x3100, 0x312f],
  [0x31a0, 0x31bf],
  [0xfe10, 0xfe1f],
  [0xfe30, 0xfe4f],
  [0x2600, 0x26ff],
  [0x2700, 0x27bf],
  [0x3200, 0x32ff],
  [0x3300, 0x33ff],
];

function isSacreZhChar(cp: number): boolean {
  for (const [a, b] of ZH_RANGES) if (cp >= a && cp <= b) return true;
  return false;
}

/** sacrebleu's TokenizerRegexp (the shared tail of '13a' and 'zh'). */
function regexpTokenize(line: string): string {
  let s = line.replace(/([{-~[-` -&(-+:-@/])/g, ' $1 ');
  s = s.replace(/([^0-9])([.,])/g, '$1 $2 ');
  s = s.replace(/([.,])([^0-9])/g, ' $1 $2');
  s = s.replace(/([0-9])(-)/g, '$1 $2 ');
  return pySplit(s).join(' ');
}

/** sacrebleu's Tokenizer13a. */
export function tokenize13a(line: string): string {
  let s = line.replaceAll('<skipped>', '').replaceAll('-\n', '').replaceAll('\n', ' ');
  if (s.includes('&')) s = s.replaceAll('&quot;', '"').replaceAll('&amp;', '&').replaceAll('&lt;', '<').replaceAll('&gt;', '>');
  return regexpTokenize(` ${s} `);
}

/** sacrebleu's TokenizerZh: each "Chinese" character (its table) set apart, then the regexp tokenizer. */
export function tokenizeZh(line: string): string {
  let out = '';
  for (const ch of pyStrip(line)) out += isSacreZhChar(ch.codePointAt(0)!) ? ` ${ch} ` : ch;
  return regexpTokenize(out);
}

/** BLEU's tokens of one segment: sacrebleu's preprocessing (rstrip) and the language's tokenizer. */
export function bleuTokens(text: string, lang: Lang): string[] {
  const s = text.replace(PY_RSTRIP, '');
  return pySplit(lang === 'zh' ? tokenizeZh(s) : tokenize13a(s));
}

function ngramCounts(tokens: readonly string[], n: number): Map<string, number> {
  const m = new Map<string, number>();
  for (let i = 0; i + n <= tokens.length; i++) {
    const k = tokens.slice(i, i + n).join('\u0000');
    m.set(k, (m.get(k) ?? 0) + 1);
  }
  return m;
}

export interface BleuStats {
  sysLen: number;
  refLen: number;
  correct: number[];
  total: number[];
}

export function bleuSegmentStats(hyp: readonly string[], ref: readonly string[], order = 4): BleuStats {
  const correct: number[] = [];
  const total: number[] = [];
  for (let n = 1; n <= order; n++) {
    const h = ngramCounts(hyp, n);
    const r = ngramCounts(ref, n);
    let c = 0;
    let t = 0;
    for (const [k, v] of h) {
      t += v;
      c += Math.min(v, r.get(k) ?? 0);
    }
    correct.push(c);
    total.push(t);
  }
  return { sysLen: hyp.length, refLen: ref.length, correct, total };
}

/**
 * sacrebleu's BLEU.compute_bleu with its corpus defaults: smooth_method 'exp' (mteval's: the k-th order with no
 * match gets precision 1 / (2^k · total)), no effective order, brevity penalty exp(1 − r/c) when c < r. 0..1.
 */
export function bleuFromStats(s: BleuStats): number {
  const order = s.correct.length;
  const bp = s.sysLen < s.refLen ? (s.sysLen > 0 ? Math.exp(1 - s.refLen / s.sysLen) : 0) : 1;
  if (!s.correct.some((c) => c > 0)) return 0;
  const prec = new Array<number>(order).fill(0);
  let smooth = 1;
  for (let n = 0; n < order; n++) {
    if (s.total[n] === 0) break;
    if (s.correct[n] === 0) {
      smooth *= 2;
      prec[n] = 100 / (smooth * s.total[n]!);
    } else prec[n] = (100 * s.correct[n]!) / s.total[n]!;
  }
  const log = (p: number) => (p === 0 ? -9999999999 : Math.log(p));
  return (bp * Math.exp(prec.reduce((a, p) => a + log(p), 0) / order)) / 100;
}

/** Corpus BLEU-4 over (hypothesis, reference, language) triples, each segment tokenized by its language. */
export function corpusBleu(pairs: readonly { hyp: string; ref: string; lang: Lang }[]): number {
  const acc: BleuStats = { sysLen: 0, refLen: 0, correct: [0, 0, 0, 0], total: [0, 0, 0, 0] };
  for (const p of pairs) {
    const s = bleuSegmentStats(bleuTokens(p.hyp, p.lang), bleuTokens(p.ref, p.lang));
    acc.sysLen += s.sysLen;
    acc.refLen += s.refLen;
    for (let n = 0; n < 4; n++) {
      acc.correct[n]! += s.correct[n]!;
      acc.total[n]! += s.total[n]!;
    }
  }
  return bleuFromStats(acc);
}

// ---- ROUGE (rouge-score's rouge1/rouge2/rougeL F-measure) ---------------------------------------------------

/**
 * ROUGE's tokens. zh: every character that is not whitespace (" ".join(list(text)).split(), as PromptCBLUE's
 * evaluation feeds rouge), case kept. en: rouge-score's default tokenizer — lowercase, every run of characters
 * other than [a-z0-9] is a separator, no stemming.
 */
export function rougeTokens(text: string, lang: Lang): string[] {
  if (lang === 'zh') return Array.from(text).filter((c) => !PY_SPACE_ONE.test(c));
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, ' ')
    .split(/\s+/)
    .filter((t) => /^[a-z0-9]+$/.test(t));
}

export interface Prf {
  precision: number;
  recall: number;
  fmeasure: number;
}

const fmeasure = (p: number, r: number) => (p + r > 0 ? (2 * p * r) / (p + r) : 0);

/** rouge_scorer._score_ngrams: clipped n-gram overlap over max(count, 1). */
export function rougeN(target: readonly string[], prediction: readonly string[], n: number): Prf {
  const t = ngramCounts(target, n);
  const p = ngramCounts(prediction, n);
  let overlap = 0;
  let tc = 0;
  let pc = 0;
  for (const [k, v] of t) {
    overlap += Math.min(v, p.get(k) ?? 0);
    tc += v;
  }
  for (const v of p.values()) pc += v;
  const precision = overlap / Math.max(pc, 1);
  const recall = overlap / Math.max(tc, 1);
  return { precision, recall, fmeasure: fmeasure(precision, recall) };
}

/** rouge_scorer._score_lcs: longest common subsequence over the two lengths (0 when either is empty). */
export function rougeL(target: readonly string[], prediction: readonly string[]): Prf {
  if (!target.length || !prediction.length) return { precision: 0, recall: 0, fmeasure: 0 };
  let prev = new Array<number>(prediction.length + 1).fill(0);
  let cur = new Array<number>(prediction.length + 1).fill(0);
  for (let i = 1; i <= target.length; i++) {
    for (let j = 1; j <= prediction.length; j++) {
      cur[j] = target[i - 1] === prediction[j - 1] ? prev[j - 1]! + 1 : Math.max(prev[j]!, cur[j - 1]!);
    }
    [prev, cur] = [cur, prev];
  }
  const lcs = prev[prediction.length]!;
  const precision = lcs / prediction.length;
  const recall = lcs / target.length;
  return { precision, recall, fmeasure: fmeasure(precision, recall) };
}

/** Exact match: equal after trimming whitespace at both ends (no other normalisation). */
export function exactMatch(prediction: string, gold: string): boolean {
  return prediction.trim() === gold.trim();
}

// ---- aggregation --------------------------------------------------------------------------------------------

export function isClassification(item: EvalItem): boolean {
  return Array.isArray(item.choices) && item.choices.some((c) => typeof c === 'string' && c.trim() !== '');
}

function generationScores(items: readonly EvalItem[]): GenerationMetrics {
  const langs = { zh: 0, en: 0 };
  let r1 = 0;
  let r2 = 0;
  let rl = 0;
  let em = 0;
  let empty = 0;
  const pairs: { hyp: string; ref: string; lang: Lang }[] = [];
  for (const it of items) {
    const lang = detectLanguage(it.gold);
    langs[lang]++;
    const t = rougeTokens(it.gold, lang);
    const p = rougeTokens(it.prediction, lang);
    r1 += rougeN(t, p, 1).fmeasure;
    r2 += rougeN(t, p, 2).fmeasure;
    rl += rougeL(t, p).fmeasure;
    if (exactMatch(it.prediction, it.gold)) em++;
    if (!it.prediction.trim()) empty++;
    pairs.push({ hyp: it.prediction, ref: it.gold, lang });
  }
  const n = items.length;
  return {
    count: n,
    bleu4: corpusBleu(pairs),
    rouge1: n ? r1 / n : 0,
    rouge2: n ? r2 / n : 0,
    rougeL: n ? rl / n : 0,
    exactMatch: n ? em / n : 0,
    empty,
    languages: langs,
  };
}

function group(type: string, items: readonly EvalItem[], labelKey: (it: EvalItem, label: string) => string): GroupMetrics {
  const cls = items.filter(isClassification);
  const gen = items.filter((it) => !isClassification(it));
  const points = cls.map((it): ClsPoint => {
    const gold = it.gold.trim();
    const pred = pickChoice(it.prediction, it.choices!);
    return { gold: labelKey(it, gold), pred: pred === null ? null : labelKey(it, pred), goldOutside: !it.choices!.some((c) => c.trim() === gold) };
  });
  return {
    type,
    count: items.length,
    classification: cls.length ? classificationScores(points) : null,
    generation: gen.length ? generationScores(gen) : null,
  };
}

/**
 * Metrics per type (sorted by name) and overall. Overall classification keys every label by its type, so equal
 * label strings of different tasks are different classes; overall generation pools every generation record.
 */
export function computeMetrics(items: readonly EvalItem[]): MetricsReport {
  const byType = new Map<string, EvalItem[]>();
  for (const it of items) {
    const t = it.type?.trim() ? it.type.trim() : NO_TYPE;
    if (!byType.has(t)) byType.set(t, []);
    byType.get(t)!.push(it);
  }
  const types = [...byType.keys()].sort();
  return {
    overall: group(ALL_TYPES, items, (it, l) => `${it.type?.trim() || NO_TYPE}\u0000${l}`),
    byType: types.map((t) => group(t, byType.get(t)!, (_it, l) => l)),
  };
}

// ---- files --------------------------------------------------------------------------------------------------

export class EvalInputError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'EvalInputError';
  }
}

interface Loaded {
  line: number;
  /** the element's index in a JSON array (0-based) */
  element?: number;
  rec: Record<string, unknown>;
}

async function loadFile(file: string, what: string, field: string, allowEmpty: boolean, leaveOut?: ReadonlySet<string>): Promise<Loaded[]> {
  const out: Loaded[] = [];
  const bad: string[] = [];
  let total = 0;
  // the answer field of other layouts, seen where `field` is missing (an Alpaca file's "output"): named in the hint
  let other: string | null = null;
  try {
    for await (const r of readRecords(file)) {
      // records left out by the caller (predict's skipped bad records): not read, whatever they hold
      if (leaveOut?.has(`${r.line}:${r.element ?? ''}`)) continue;
      if ('error' in r) {
        total++;
        if (bad.length < 20) bad.push(`  ${file}:${r.line}: ${r.error}`);
        continue;
      }
      const rec = r.value as Record<string, unknown>;
      const v = rec[field];
      if (typeof v !== 'string' || (!allowEmpty && !v.trim())) {
        if (v === undefined) other ??= ['target', 'output', 'response', 'completion', 'answer'].find((k) => k !== field && typeof rec[k] === 'string') ?? null;
        total++;
        if (bad.length < 20) bad.push(`  ${file}:${r.line}: "${field}" must be a ${allowEmpty ? '' : 'non-empty '}string (the ${what})`);
        continue;
      }
      const ch = rec.answer_choices;
      if (ch != null && !(Array.isArray(ch) && ch.every((c) => typeof c === 'string'))) {
        total++;
        if (bad.length < 20) bad.push(`  ${file}:${r.line}: "answer_choices" must be a list of strings or null`);
        continue;
      }
      out.push({ line: r.line, ...(r.element !== undefined ? { element: r.element } : {}), rec });
    }
  } catch (err) {
    throw new EvalInputError(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (total)
    throw new EvalInputError(
      `${total} bad record(s) in ${file}:\n${bad.join('\n')}${total > bad.length ? `\n  … and ${total - bad.length} more` : ''}`,
      other ? `The records have no "${field}" but have "${other}": compare that field with --field ${other}.` : undefined,
    );
  if (!out.length) throw new EvalInputError(`${file} holds no records`);
  return out;
}

/**
 * Pairs each gold record with its prediction: by `sample_id` when every gold record has a distinct one, else by
 * position. Every gold record needs exactly one prediction — unless `subset`: then only the gold records that
 * have one (by sample_id; by position, the first as many as there are predictions) are scored.
 */
export function pairRecords(gold: readonly Loaded[], pred: readonly Loaded[], goldFile: string, predFile: string, subset = false): [Loaded, Loaded][] {
  const id = (r: Loaded) => (typeof r.rec.sample_id === 'string' || typeof r.rec.sample_id === 'number' ? String(r.rec.sample_id) : null);
  const goldIds = gold.map(id);
  const byId = goldIds.every((x) => x !== null) && new Set(goldIds).size === gold.length;
  if (!byId) {
    if (subset && pred.length <= gold.length) return pred.map((p, i) => [gold[i]!, p]);
    if (gold.length !== pred.length) {
      throw new EvalInputError(`${predFile} has ${pred.length} records and ${goldFile} ${gold.length}; without distinct sample_ids they are paired by position, so the counts must match`);
    }
    return gold.map((g, i) => [g, pred[i]!]);
  }
  const preds = new Map<string, Loaded>();
  for (const p of pred) {
    const k = id(p);
    if (k === null) throw new EvalInputError(`${predFile}:${p.line}: the prediction has no sample_id (the gold records are paired by sample_id)`);
    if (preds.has(k)) throw new EvalInputError(`${predFile}:${p.line}: a second prediction for sample_id ${k} (first at line ${preds.get(k)!.line})`);
    preds.set(k, p);
  }
  const missing = gold.filter((g) => !preds.has(id(g)!));
  if (missing.length && subset) gold = gold.filter((g) => preds.has(id(g)!));
  else if (missing.length) {
    const list = missing.slice(0, 5).map((g) => `${id(g)} (${goldFile}:${g.line})`).join(', ');
    throw new EvalInputError(`${missing.length} gold record(s) have no prediction: ${list}${missing.length > 5 ? ', …' : ''}`, 'Run predict over the whole gold file.');
  }
  const goldSet = new Set(goldIds as string[]);
  const extra = pred.filter((p) => !goldSet.has(id(p)!));
  if (extra.length) throw new EvalInputError(`${predFile}:${extra[0]!.line}: sample_id ${id(extra[0]!)} is not in ${goldFile} (${extra.length} such prediction(s))`);
  return gold.map((g) => [g, preds.get(id(g)!)!]);
}

/**
 * Reads a predictions file (PromptCBLUE: each record with `target` replaced by the model's answer) and the gold
 * file, pairs them, and computes the metrics. `field` names the answer column (default `target`); `subset`
 * scores only the gold records that have a prediction (see pairRecords); `leaveOut`: gold records (by line and
 * element) that were not predicted (predict's skipped bad records), left out before pairing.
 */
export async function evaluateFiles(predFile: string, goldFile: string, opt: { field?: string; subset?: boolean; leaveOut?: readonly { line: number; element?: number }[] } = {}): Promise<MetricsReport> {
  const field = opt.field ?? 'target';
  const key = (r: { line: number; element?: number }) => `${r.line}:${r.element ?? ''}`;
  const out = new Set((opt.leaveOut ?? []).map(key));
  const gold = await loadFile(goldFile, 'gold answer', field, false, out);
  const pred = await loadFile(predFile, 'prediction', field, true);
  const items = pairRecords(gold, pred, goldFile, predFile, opt.subset).map(([g, p]): EvalItem => ({
    type: typeof g.rec.type === 'string' ? g.rec.type : null,
    gold: g.rec[field] as string,
    prediction: p.rec[field] as string,
    choices: (g.rec.answer_choices as string[] | null | undefined) ?? null,
  }));
  return computeMetrics(items);
}

// ---- presentation -------------------------------------------------------------------------------------------

const pct = (x: number) => (100 * x).toFixed(2);

/** A plain-text table: one row per type and the overall row, classification and generation columns apart. */
export function formatMetricsTable(r: MetricsReport): string {
  const groups = [...r.byType, r.overall];
  const lines: string[] = [];
  const table = (head: string[], rows: string[][]) => {
    const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const fmt = (row: string[]) => row.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
    lines.push(fmt(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(fmt));
  };
  const cls = groups.filter((g) => g.classification);
  if (cls.length) {
    lines.push('classification (%)');
    table(
      ['type', 'n', 'accuracy', 'micro-F1', 'macro-F1', 'labels', 'unmatched'],
      cls.map((g) => {
        const c = g.classification!;
        return [g.type, String(c.count), pct(c.accuracy), pct(c.microF1), pct(c.macroF1), String(c.labels), String(c.unmatched)];
      }),
    );
  }
  const gen = groups.filter((g) => g.generation);
  if (gen.length) {
    if (lines.length) lines.push('');
    lines.push('generation (%)');
    table(
      ['type', 'n', 'BLEU-4', 'ROUGE-1', 'ROUGE-2', 'ROUGE-L', 'exact', 'empty'],
      gen.map((g) => {
        const m = g.generation!;
        return [g.type, String(m.count), pct(m.bleu4), pct(m.rouge1), pct(m.rouge2), pct(m.rougeL), pct(m.exactMatch), String(m.empty)];
      }),
    );
  }
  return lines.join('\n');
}
