// loss.ts — evaluation loss and perplexity of a model (+ adapter) on a dataset, through the engine: the data is
// prepared exactly as for training (template, truncation, prompt masked) into a .tok file, and `llmt-engine eval`
// (llmt_model_eval_loss) computes the loss exactly as the training job's eval does — batches of `batchSize`
// consecutive samples, HF's shifted cross-entropy, −100 ignored, no dropout, the token mean over the whole set —
// so with the run's eval_batch_size the value is its eval_loss bit for bit; perplexity = exp(loss). The engine runs
// in its own process (a crash or running out of memory cannot take the caller down); no logits leave it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadChatTemplate } from '../data/chat-template.js';
import type { ColumnOptions, Format } from '../data/formats.js';
import { PrepareError, prepareDataset } from '../data/prepare.js';
import type { TemplateName } from '../data/templates.js';
import { TokReader, TokWriter } from '../data/tokfile.js';
import { loadTokenizer } from '../data/tokenizer/index.js';
import { engineBinary } from '../engine/native.js';
import { type InferenceQuantization, resolveQuantization } from '../engine/quantization.js';

export interface LossOptions {
  model: string;
  adapter?: string | null;
  tokenizer?: string | null;
  data: string;
  template?: TemplateName;
  maxSourceLength?: number;
  maxTargetLength?: number;
  format?: Format;
  columns?: ColumnOptions;
  /** only the first N samples */
  limit?: number;
  /** 'fail' (default, as data prepare, train and predict): a bad record stops the evaluation, every bad line
   *  named; 'skip': bad records (and records with nothing to score after truncation) are left out and counted */
  onError?: 'fail' | 'skip';
  /** engine CPU threads (0: its default) */
  threads?: number;
  /** samples per forward pass (default 4); the run's eval_batch_size reproduces its eval_loss bit for bit (with the
   *  run's quantization and precision) */
  batchSize?: number;
  /** the base's block linears in 4 bits: "auto" (default: as the adapter's run trained them, quantization.ts), "none",
   *  "nf4", "fp4", or the engine's JSON text form */
  quantization?: InferenceQuantization | string;
  /** the frozen base weights: "fp32" (default), "bf16" or "fp16" (a LoRA run's training.precision) */
  precision?: 'fp32' | 'bf16' | 'fp16';
  /** @deprecated ignored: the engine's eval entry point returns no logits */
  maxLogits?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface LossResult {
  loss: number;
  perplexity: number;
  /** tokens the loss counts (labels ≠ −100) */
  tokens: number;
  samples: number;
  /** records that could not be prepared (bad, or nothing left to score after truncation); only with onError 'skip' */
  skipped: number;
  /** the skipped records by line (the first 1000), with onError 'skip' */
  errors?: { line: number; element?: number; reason: string }[];
  seconds: number;
}

export class LossError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
    /** bad records by line (code BAD_INPUT) */
    readonly errors: { line: number; element?: number; reason: string }[] = [],
  ) {
    super(message);
    this.name = 'LossError';
  }
}

interface EngineEvalResult {
  loss: number;
  tokens: number;
  samples: number;
  perplexity: number;
}

/** Runs `llmt-engine eval`; progress lines come on its stderr, the result (JSON) on its stdout. */
function engineEval(args: string[], signal: AbortSignal | undefined, onProgress: (done: number, total: number) => void): Promise<EngineEvalResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(engineBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let line = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      line += d.toString();
      let nl: number;
      while ((nl = line.indexOf('\n')) >= 0) {
        const l = line.slice(0, nl);
        line = line.slice(nl + 1);
        if (l.startsWith('{"event":"progress"')) {
          const e = JSON.parse(l) as { done: number; total: number };
          onProgress(e.done, e.total);
        } else stderr += `${l}\n`;
      }
    });
    const onAbort = () => child.kill('SIGTERM');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (err) => reject(new LossError(`cannot run the engine: ${err.message}`, 'ENGINE_UNAVAILABLE')));
    child.on('close', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) return reject(new LossError('stopped', 'ABORTED'));
      stderr += line;
      if (code !== 0) {
        const m = /llmt-engine: (\w+): (.*)/.exec(stderr);
        return reject(new LossError(`the engine's evaluation failed (${sig ? `signal ${sig}` : `exit code ${code}`}): ${m ? m[2] : stderr.trim()}`, m?.[1] ?? 'INTERNAL'));
      }
      try {
        resolve(JSON.parse(stdout) as EngineEvalResult);
      } catch {
        reject(new LossError(`unexpected output from \`llmt-engine eval\`: ${stdout.slice(0, 200)}`, 'INTERNAL'));
      }
    });
  });
}

/** The first n samples of a .tok file as a new one. */
async function firstSamples(src: string, n: number, out: string): Promise<void> {
  const r = TokReader.open(src);
  const w = new TokWriter(out, r.header.packed === true);
  try {
    for (let i = 0; i < n; i++) {
      const s = r.sample(i);
      w.add(s.input_ids, s.labels.map((l) => l !== -100), s.position_ids);
    }
    const { num_samples: _n, num_tokens: _t, packed: _p, ...rest } = r.header;
    await w.finish(rest);
  } catch (err) {
    await w.abort();
    throw err;
  } finally {
    r.close();
  }
}

export async function evalLoss(opt: LossOptions): Promise<LossResult> {
  const t0 = Date.now();
  if (!fs.existsSync(engineBinary())) throw new LossError(`the engine binary is missing at ${engineBinary()}`, 'ENGINE_UNAVAILABLE', 'Build it with `npm run build:native`.');
  const batchSize = opt.batchSize ?? 4;
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new LossError('the batch size must be a positive integer', 'BAD_INPUT');
  const tokDir = opt.tokenizer ?? opt.model;
  const tokenizer = await loadTokenizer(tokDir);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-loss-'));
  try {
    let tokFile = path.join(tmp, 'data.tok');
    const template = opt.template ?? 'raw';
    const onError = opt.onError ?? 'fail';
    const report = await prepareDataset({
      dataFile: opt.data,
      out: tokFile,
      tokenizer,
      template,
      maxSourceLength: opt.maxSourceLength ?? 512,
      maxTargetLength: opt.maxTargetLength ?? 64,
      onError,
      ...(opt.format ? { format: opt.format } : {}),
      ...(opt.columns ? { columns: opt.columns } : {}),
      ...(template === 'chat_template' ? { chatTemplate: loadChatTemplate(tokDir) } : {}),
    }).catch((err: unknown) => {
      // the data's problems, said as eval's own (data prepare's hint names its own flag)
      if (err instanceof PrepareError) {
        throw new LossError(
          err.message,
          'BAD_INPUT',
          err.errors.length && onError === 'fail' ? 'Fix the lines above, or skip them (eval --on-error skip; onError: \'skip\'), which leaves them out of the loss and counts them.' : err.hint,
          err.errors,
        );
      }
      throw err;
    });
    const size = report.written;
    const n = opt.limit !== undefined ? Math.min(size, Math.max(0, opt.limit)) : size;
    if (!n) throw new LossError(`no sample of ${opt.data} has anything to score`, 'BAD_INPUT');
    if (n < size) {
      const cut = path.join(tmp, 'first.tok');
      await firstSamples(tokFile, n, cut);
      tokFile = cut;
    }
    const args = ['eval', '--model', path.resolve(opt.model), ...(opt.adapter ? ['--adapter', path.resolve(opt.adapter)] : []), '--data', tokFile, '--batch', String(batchSize), '--json', '--progress'];
    if (opt.threads) args.push('--threads', String(opt.threads));
    const quantization = resolveQuantization((opt.quantization ?? 'auto') as InferenceQuantization, opt.adapter);
    if (quantization !== 'none') args.push('--quantization', quantization);
    if (opt.precision && opt.precision !== 'fp32') args.push('--precision', opt.precision);
    opt.onProgress?.(0, n);
    const r = await engineEval(args, opt.signal, (done, total) => opt.onProgress?.(done, total));
    if (!Number.isFinite(r.loss)) throw new LossError('the loss is not finite', 'NAN');
    return { loss: r.loss, perplexity: r.perplexity, tokens: r.tokens, samples: r.samples, skipped: report.skipped, ...(report.errors.length ? { errors: report.errors } : {}), seconds: (Date.now() - t0) / 1000 };
  } finally {
    tokenizer.dispose?.();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
