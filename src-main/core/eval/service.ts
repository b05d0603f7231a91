// service.ts — evaluating a run's checkpoints: predictions on a test file (predict.ts) scored by metrics.ts,
// plus the evaluation loss and perplexity (loss.ts), stored per run and checkpoint in the evals table; "evaluate
// every checkpoint" marks the best one by a chosen metric (eval loss by default). The run's spec gives the base
// model, template and lengths. No transport, no UI.
import fs from 'node:fs';
import path from 'node:path';

import type { ColumnOptions, Format } from '../data/formats.js';
import { EngineHost } from '../engine/host.js';
import { parseRunSpec, type RunSpec } from '../runs/runspec.js';
import type { EvalRow, Store } from '../store/store.js';
import { type LossResult, evalLoss } from './loss.js';
import { type MetricsReport, evaluateFiles } from './metrics.js';
import { type PredictOptions, predict } from './predict.js';

/** Metrics that can pick the best checkpoint, and whether lower is better. */
export const BEST_METRICS = {
  eval_loss: 'min',
  perplexity: 'min',
  accuracy: 'max',
  micro_f1: 'max',
  macro_f1: 'max',
  bleu4: 'max',
  rouge1: 'max',
  rouge2: 'max',
  rouge_l: 'max',
  exact_match: 'max',
} as const;
export type BestMetric = keyof typeof BEST_METRICS;

/** What one evaluation stores (evals.metrics_json). */
export interface CheckpointEvalMetrics {
  kind: 'checkpoint';
  checkpoint: string;
  step: number | null;
  model: string;
  adapter: string | null;
  data: string;
  template: string;
  loss: Omit<LossResult, 'seconds'> | null;
  report: MetricsReport | null;
  predictions: string | null;
  /** the predictions' counts: records skipped as bad (onError 'skip'; a prompt that leaves no room in the model's
   *  context is one), answers that stopped at the context, and that context (null: no hard limit) */
  generation?: { written: number; skipped: number; contextStops: number; context: number | null };
  params: PredictOptions['params'];
  limit: number | null;
  seconds: number;
  /** set by evaluateAllCheckpoints: this evaluation is the run's best on this data by `metric` */
  best?: { metric: BestMetric; value: number } | false;
}

export interface CheckpointEval extends CheckpointEvalMetrics {
  evalId: number;
  runId: number | null;
  checkpointId: number | null;
  createdAt: string;
}

export interface EvaluateCheckpointOptions {
  runId: number;
  /** a checkpoint-<step> folder of the run, or its output folder (the final adapter/model) */
  checkpointPath: string;
  /** the gold test file (PromptCBLUE: input/target/type/answer_choices) */
  data: string;
  /** generate and score predictions (default true) */
  predict?: boolean;
  /** compute the eval loss and perplexity (default true) */
  loss?: boolean;
  /** only the first N records */
  limit?: number;
  /** bad records of the test file: 'fail' (default) stops naming every bad line; 'skip' leaves them out */
  onError?: 'fail' | 'skip';
  /** sampling for predictions: the seed's defaults, max_new_tokens = the run's max_target_length */
  params?: PredictOptions['params'];
  batchSize?: number;
  /** engine CPU threads for the loss (0: default) */
  threads?: number;
  /** where predictions go (default <data home>/evals/run-<id>/<checkpoint>-<data>.jsonl) */
  predictionsOut?: string;
  /** an engine host to share (default: one per call) */
  host?: EngineHost;
  onProgress?: (p: { phase: 'predict' | 'loss'; done: number; total: number; checkpoint: string }) => void;
  signal?: AbortSignal;
}

export class EvalServiceError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'EvalServiceError';
  }
}

/** The value of a best-checkpoint metric in a stored evaluation, or null when it was not measured. */
export function metricValue(m: CheckpointEvalMetrics, metric: BestMetric): number | null {
  const cls = m.report?.overall.classification ?? null;
  const gen = m.report?.overall.generation ?? null;
  switch (metric) {
    case 'eval_loss':
      return m.loss?.loss ?? null;
    case 'perplexity':
      return m.loss?.perplexity ?? null;
    case 'accuracy':
      return cls?.accuracy ?? null;
    case 'micro_f1':
      return cls?.microF1 ?? null;
    case 'macro_f1':
      return cls?.macroF1 ?? null;
    case 'bleu4':
      return gen?.bleu4 ?? null;
    case 'rouge1':
      return gen?.rouge1 ?? null;
    case 'rouge2':
      return gen?.rouge2 ?? null;
    case 'rouge_l':
      return gen?.rougeL ?? null;
    case 'exact_match':
      return gen?.exactMatch ?? null;
  }
}

function runSpecOf(store: Store, runId: number): RunSpec {
  const run = store.runs.get(runId);
  if (!run) throw new EvalServiceError(`no run #${runId}`, 'NOT_FOUND');
  try {
    return parseRunSpec(run.spec);
  } catch (err) {
    throw new EvalServiceError(`run #${runId} has no usable spec: ${(err as Error).message}`, 'BAD_INPUT');
  }
}

/** A checkpoint folder as what to load: an adapter on the base model, or (full fine-tuning) a whole model. */
export function resolveCheckpoint(base: string, dir: string): { model: string; adapter: string | null; tokenizer: string | null } {
  if (fs.existsSync(path.join(dir, 'adapter_config.json'))) return { model: base, adapter: dir, tokenizer: null };
  if (fs.existsSync(path.join(dir, 'config.json'))) {
    const hasTok = ['tokenizer.json', 'tokenizer.model', 'ice_text.model'].some((f) => fs.existsSync(path.join(dir, f)));
    return { model: dir, adapter: null, tokenizer: hasTok ? null : base };
  }
  throw new EvalServiceError(`${dir} holds neither a PEFT adapter (adapter_config.json) nor a model (config.json)`, 'BAD_INPUT');
}

function toEval(row: EvalRow): CheckpointEval {
  return { ...(row.metrics as CheckpointEvalMetrics), evalId: row.id, runId: row.runId, checkpointId: row.checkpointId, createdAt: row.createdAt };
}

/** Stored checkpoint evaluations of a run (or of every run), oldest first. */
export function listEvals(store: Store, filter: { runId?: number } = {}): CheckpointEval[] {
  return store.evals
    .list(filter.runId !== undefined ? { runId: filter.runId } : {})
    .filter((r) => (r.metrics as { kind?: string } | null)?.kind === 'checkpoint')
    .map(toEval);
}

/** Predicts, scores and measures the loss of one checkpoint of a run on a test file, and stores the result. */
export async function evaluateCheckpoint(store: Store, opt: EvaluateCheckpointOptions): Promise<CheckpointEval> {
  const t0 = Date.now();
  const spec = runSpecOf(store, opt.runId);
  const dir = path.resolve(opt.checkpointPath);
  if (!fs.existsSync(dir)) throw new EvalServiceError(`the checkpoint ${dir} does not exist`, 'NOT_FOUND');
  const data = path.resolve(opt.data);
  if (!fs.existsSync(data)) throw new EvalServiceError(`the test file ${data} does not exist`, 'NOT_FOUND');
  const target = resolveCheckpoint(spec.model.path, dir);
  const row = store.checkpoints.list(opt.runId).find((c) => path.resolve(c.path) === dir);
  const stepMatch = /checkpoint-(\d+)$/.exec(dir);
  const step = row?.step ?? (stepMatch ? Number(stepMatch[1]) : null);
  const template = spec.data.template;
  const format = (spec.data.format ?? undefined) as Format | undefined;
  const columns: ColumnOptions = {
    ...(spec.data.prompt_column ? { promptColumn: spec.data.prompt_column } : {}),
    ...(spec.data.response_column ? { responseColumn: spec.data.response_column } : {}),
    ...(spec.data.history_column ? { historyColumn: spec.data.history_column } : {}),
  };
  const params = { max_new_tokens: spec.data.max_target_length, ...opt.params };
  const label = step !== null ? `checkpoint-${step}` : 'final';
  let predictions: string | null = null;
  let report: MetricsReport | null = null;
  let loss: LossResult | null = null;
  let generation: CheckpointEvalMetrics['generation'];
  if (opt.predict !== false) {
    predictions = opt.predictionsOut ?? path.join(path.dirname(store.file), 'evals', `run-${opt.runId}`, `${label}-${path.basename(data).replace(/\.(jsonl?|txt)$/i, '')}.jsonl`);
    const predicted = await predict({
      model: target.model,
      adapter: target.adapter,
      tokenizer: target.tokenizer,
      data,
      out: predictions,
      template,
      maxSourceLength: spec.data.max_source_length,
      params,
      ...(opt.batchSize ? { batchSize: opt.batchSize } : {}),
      ...(opt.limit !== undefined ? { limit: opt.limit } : {}),
      ...(format ? { format } : {}),
      columns,
      ...(opt.onError ? { onError: opt.onError } : {}),
      ...(opt.host ? { host: opt.host } : {}),
      ...(opt.signal ? { signal: opt.signal } : {}),
      onProgress: (p) => opt.onProgress?.({ phase: 'predict', done: p.done, total: p.total, checkpoint: dir }),
    });
    // the field predict wrote its answers to (a TRL prompt/completion record's: "completion")
    const field = predicted.field;
    // skipped records (bad, or past the model's context) have no prediction: scored without them
    report = await evaluateFiles(predictions, data, { field, subset: opt.limit !== undefined, leaveOut: predicted.errors });
    generation = { written: predicted.written, skipped: predicted.skipped, contextStops: predicted.contextStops, context: predicted.context };
  }
  if (opt.loss !== false) {
    loss = await evalLoss({
      model: target.model,
      adapter: target.adapter,
      tokenizer: target.tokenizer,
      data,
      template,
      maxSourceLength: spec.data.max_source_length,
      maxTargetLength: spec.data.max_target_length,
      batchSize: spec.training.eval_batch_size,
      // as the run computed its eval_loss: its 4-bit base (QLoRA) and a LoRA run's 16-bit frozen weights
      quantization: spec.model.quantization,
      precision: spec.method === 'lora' ? spec.training.precision : 'fp32',
      ...(format ? { format } : {}),
      columns,
      ...(opt.onError ? { onError: opt.onError } : {}),
      ...(opt.limit !== undefined ? { limit: opt.limit } : {}),
      ...(opt.threads ? { threads: opt.threads } : {}),
      ...(opt.signal ? { signal: opt.signal } : {}),
      onProgress: (done, total) => opt.onProgress?.({ phase: 'loss', done, total, checkpoint: dir }),
    });
  }
  const metrics: CheckpointEvalMetrics = {
    kind: 'checkpoint',
    checkpoint: dir,
    step,
    model: target.model,
    adapter: target.adapter,
    data,
    template,
    loss: loss ? { loss: loss.loss, perplexity: loss.perplexity, tokens: loss.tokens, samples: loss.samples, skipped: loss.skipped } : null,
    report,
    predictions,
    ...(generation ? { generation } : {}),
    params,
    limit: opt.limit ?? null,
    seconds: (Date.now() - t0) / 1000,
  };
  return toEval(store.evals.add({ runId: opt.runId, checkpointId: row?.id ?? null, dataPath: data, metrics }));
}

/** The run's checkpoint folders: recorded in the database, else found in its output folder. */
function checkpointsOf(store: Store, runId: number, spec: RunSpec): string[] {
  const rows = store.checkpoints.list(runId).map((c) => c.path).filter((p) => fs.existsSync(p));
  if (rows.length) return rows;
  const dir = spec.output.dir;
  if (!fs.existsSync(dir)) return [];
  const found = fs
    .readdirSync(dir)
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .sort((a, b) => Number(a[1]) - Number(b[1]))
    .map((m) => path.join(dir, m[0]));
  if (found.length) return found;
  return fs.existsSync(path.join(dir, 'adapter_config.json')) || fs.existsSync(path.join(dir, 'config.json')) ? [dir] : [];
}

/**
 * Evaluates every checkpoint of a run on one test file (one engine host shared), then marks the best by
 * `metric` (default eval_loss; with the loss off, accuracy). Earlier marks of this run on this file are cleared.
 */
export async function evaluateAllCheckpoints(
  store: Store,
  opt: Omit<EvaluateCheckpointOptions, 'checkpointPath' | 'predictionsOut'> & { metric?: BestMetric; onCheckpoint?: (e: CheckpointEval, index: number, total: number) => void },
): Promise<{ evals: CheckpointEval[]; best: { evalId: number; checkpoint: string; metric: BestMetric; value: number } | null }> {
  const spec = runSpecOf(store, opt.runId);
  const metric: BestMetric = opt.metric ?? (opt.loss === false ? 'accuracy' : 'eval_loss');
  if (!(metric in BEST_METRICS)) throw new EvalServiceError(`unknown metric "${metric}" (known: ${Object.keys(BEST_METRICS).join(', ')})`, 'BAD_INPUT');
  const dirs = checkpointsOf(store, opt.runId, spec);
  if (!dirs.length) throw new EvalServiceError(`run #${opt.runId} has no checkpoint to evaluate`, 'NOT_FOUND', 'Checkpoints are written every save_steps and at the end of a run.');
  const host = opt.host ?? new EngineHost();
  const evals: CheckpointEval[] = [];
  try {
    for (const [i, dir] of dirs.entries()) {
      const e = await evaluateCheckpoint(store, { ...opt, checkpointPath: dir, host });
      evals.push(e);
      opt.onCheckpoint?.(e, i, dirs.length);
    }
  } finally {
    if (!opt.host) await host.dispose();
  }
  const data = path.resolve(opt.data);
  const sign = BEST_METRICS[metric] === 'min' ? 1 : -1;
  let best: { evalId: number; checkpoint: string; metric: BestMetric; value: number } | null = null;
  for (const e of evals) {
    const v = metricValue(e, metric);
    if (v === null || !Number.isFinite(v)) continue;
    if (!best || sign * v < sign * best.value) best = { evalId: e.evalId, checkpoint: e.checkpoint, metric, value: v };
  }
  const tx = store.db.transaction(() => {
    for (const r of store.evals.list({ runId: opt.runId })) {
      const m = r.metrics as CheckpointEvalMetrics | null;
      if (m?.kind !== 'checkpoint' || m.data !== data) continue;
      const mark = best && r.id === best.evalId ? { metric, value: best.value } : false;
      store.evals.setMetrics(r.id, { ...m, best: mark });
    }
  });
  tx();
  const fresh = new Map(listEvals(store, { runId: opt.runId }).map((e) => [e.evalId, e]));
  return { evals: evals.map((e) => fresh.get(e.evalId) ?? e), best };
}
