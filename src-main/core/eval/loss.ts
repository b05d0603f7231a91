// loss.ts — evaluation loss and perplexity of a model (+ adapter) on a dataset, through the engine: the data is
// prepared exactly as for training (template, truncation, prompt masked), and the engine's forward pass gives
// the mean token loss per batch (HF's shifted cross-entropy, −100 ignored, no dropout). The result is the token
// mean over the whole set, like the training job's eval_loss; perplexity = exp(loss).
//
// The engine exposes a loss only through `llmt-engine forward`, which also writes every logit as JSON: batches
// are sized so that file stays small (rows × length × vocab ≤ maxLogits), one engine process per batch. Fine for
// the demo and small models; large models want a logits-free loss entry point in the engine (see docs/metrics.md).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadChatTemplate } from '../data/chat-template.js';
import type { ColumnOptions, Format } from '../data/formats.js';
import { prepareDataset } from '../data/prepare.js';
import type { TemplateName } from '../data/templates.js';
import { TokReader } from '../data/tokfile.js';
import { loadTokenizer } from '../data/tokenizer/index.js';
import { engineBinary, loadEngine } from '../engine/native.js';

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
  /** engine CPU threads (0: its default) */
  threads?: number;
  /** upper bound of rows × length × vocab per engine call (default 4M logits) */
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
  /** records that could not be prepared (bad, or nothing left to score after truncation) */
  skipped: number;
  seconds: number;
}

export class LossError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'LossError';
  }
}

function vocabOf(dir: string): number | null {
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { vocab_size?: unknown; padded_vocab_size?: unknown };
    const v = Number(cfg.vocab_size ?? cfg.padded_vocab_size);
    return Number.isInteger(v) && v > 0 ? v : null;
  } catch {
    return null;
  }
}

/** Runs `llmt-engine forward` on one batch; returns the batch's mean token loss and its token count. */
function forwardLoss(args: string[], signal?: AbortSignal): Promise<{ loss: number | null; tokens: number; out: string }> {
  const out = args[args.indexOf('--out') + 1]!;
  return new Promise((resolve, reject) => {
    const child = spawn(engineBinary(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const onAbort = () => child.kill('SIGTERM');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (err) => reject(new LossError(`cannot run the engine: ${err.message}`, 'ENGINE_UNAVAILABLE')));
    child.on('exit', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) return reject(new LossError('stopped', 'ABORTED'));
      if (code !== 0) {
        const m = /llmt-engine: (\w+): (.*)/.exec(stderr);
        return reject(new LossError(`the engine's forward pass failed (${sig ? `signal ${sig}` : `exit code ${code}`}): ${m ? m[2] : stderr.trim()}`, m?.[1] ?? 'INTERNAL'));
      }
      // only the head is needed: {"loss":X,"tokens":N,"logits":…
      const fd = fs.openSync(out, 'r');
      const head = Buffer.alloc(256);
      const n = fs.readSync(fd, head, 0, head.length, 0);
      fs.closeSync(fd);
      const hm = /^\{"loss":(null|[-+0-9.eE]+|nan|inf),"tokens":(\d+)/i.exec(head.subarray(0, n).toString('utf8'));
      if (!hm) return reject(new LossError(`unexpected output from the engine's forward pass in ${out}`, 'INTERNAL'));
      resolve({ loss: hm[1] === 'null' ? null : Number(hm[1]), tokens: Number(hm[2]), out });
    });
  });
}

export async function evalLoss(opt: LossOptions): Promise<LossResult> {
  const t0 = Date.now();
  const engine = loadEngine();
  if (!fs.existsSync(engineBinary())) throw new LossError(`the engine binary is missing at ${engineBinary()}`, 'ENGINE_UNAVAILABLE', 'Build it with `npm run build:native`.');
  const tokDir = opt.tokenizer ?? opt.model;
  const tokenizer = await loadTokenizer(tokDir);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-loss-'));
  try {
    const tokFile = path.join(tmp, 'data.tok');
    const template = opt.template ?? 'raw';
    const report = await prepareDataset({
      dataFile: opt.data,
      out: tokFile,
      tokenizer,
      template,
      maxSourceLength: opt.maxSourceLength ?? 512,
      maxTargetLength: opt.maxTargetLength ?? 64,
      onError: 'skip',
      ...(opt.format ? { format: opt.format } : {}),
      ...(opt.columns ? { columns: opt.columns } : {}),
      ...(template === 'chat_template' ? { chatTemplate: loadChatTemplate(tokDir) } : {}),
    });
    const inspected = vocabOf(opt.model) === null && engine.addon ? ((await engine.addon.inspect(opt.model)).vocab ?? null) : null;
    const vocab = vocabOf(opt.model) ?? inspected ?? tokenizer.vocabSize;
    const maxLogits = opt.maxLogits ?? 4_000_000;
    const tok = TokReader.open(tokFile);
    try {
      const n = opt.limit !== undefined ? Math.min(tok.size, Math.max(0, opt.limit)) : tok.size;
      if (!n) throw new LossError(`no sample of ${opt.data} has anything to score`, 'BAD_INPUT');
      const pad = tokenizer.padId ?? tokenizer.eosId ?? 0;
      // longest first, so each batch pads little; batches bounded by the logits budget
      const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => tok.length(b) - tok.length(a));
      let sum = 0;
      let count = 0;
      let done = 0;
      let k = 0;
      while (k < order.length) {
        const T = tok.length(order[k]!);
        const rows = Math.max(1, Math.min(64, Math.floor(maxLogits / Math.max(1, T * vocab))));
        const idx = order.slice(k, k + rows);
        k += idx.length;
        const input_ids: number[][] = [];
        const labels: number[][] = [];
        for (const i of idx) {
          const s = tok.sample(i);
          const fill = T - s.input_ids.length;
          input_ids.push([...s.input_ids, ...new Array<number>(fill).fill(pad)]);
          labels.push([...s.labels, ...new Array<number>(fill).fill(-100)]);
        }
        const tokensFile = path.join(tmp, 'batch.json');
        const outFile = path.join(tmp, 'logits.json');
        fs.writeFileSync(tokensFile, JSON.stringify({ input_ids, labels }));
        const args = ['forward', '--model', path.resolve(opt.model), ...(opt.adapter ? ['--adapter', path.resolve(opt.adapter)] : []), '--tokens', tokensFile, '--out', outFile];
        if (opt.threads) args.push('--threads', String(opt.threads));
        const r = await forwardLoss(args, opt.signal);
        fs.rmSync(outFile, { force: true });
        if (r.loss !== null && r.tokens > 0) {
          if (!Number.isFinite(r.loss)) throw new LossError('the loss is not finite', 'NAN');
          sum += r.loss * r.tokens;
          count += r.tokens;
        }
        done += idx.length;
        opt.onProgress?.(done, n);
      }
      if (!count) throw new LossError(`no token of ${opt.data} is scored (every label is −100)`, 'BAD_INPUT');
      const loss = sum / count;
      return { loss, perplexity: Math.exp(loss), tokens: count, samples: n, skipped: report.skipped, seconds: (Date.now() - t0) / 1000 };
    } finally {
      tok.close();
    }
  } finally {
    tokenizer.dispose?.();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
