// metrics-export.ts — a run's metrics at full resolution in a CSV or JSON file, one row per logged step (the
// exportMetrics API method). Streamed: the run is read a window of steps at a time through the series index and
// written with back-pressure, so a 200,000-step run never sits in memory and other requests are served between
// windows. Written to `<out>.tmp-<pid>` and renamed, so a failed export leaves no half file under the asked name.
import fs from 'node:fs';
import path from 'node:path';

import type { Store } from '../store/store.js';

export type MetricsFormat = 'csv' | 'json';

/** Steps read per window (a few thousand rows per series: a few tens of milliseconds of work). */
const WINDOW_STEPS = 2048;

/** The usual series first, in the run view's order; any others (per-rank metrics, …) after them by name. */
const PREFERRED = ['loss', 'eval_loss', 'lr', 'grad_norm', 'tokens_per_s', 'tokens', 'mem_bytes', 'gpu_mem_bytes', 'epoch'];

export function exportColumns(names: readonly string[]): string[] {
  const known = PREFERRED.filter((n) => names.includes(n));
  return [...new Set([...known, ...[...names].filter((n) => !PREFERRED.includes(n)).sort()])];
}

const csvCell = (s: string) => (/[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);

class ExportError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** Writes `text`, waiting for the stream to drain when its buffer is full. */
function write(stream: fs.WriteStream, text: string): Promise<void> | null {
  if (stream.write(text)) return null;
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      stream.off('error', onError);
      resolve();
    };
    const onError = (err: Error) => {
      stream.off('drain', onDrain);
      reject(err);
    };
    stream.once('drain', onDrain);
    stream.once('error', onError);
  });
}

export async function exportMetrics(
  store: Store,
  opts: { runId: number; format: MetricsFormat; out: string; names?: readonly string[]; overwrite?: boolean },
): Promise<{ out: string; rows: number; names: string[]; bytes: number }> {
  const out = path.resolve(opts.out);
  if (fs.existsSync(out)) {
    if (fs.statSync(out).isDirectory()) throw new ExportError('BAD_INPUT', `${out} is a folder`, 'Give a file name, e.g. metrics.csv.');
    if (!opts.overwrite) throw new ExportError('EXISTS', `${out} already exists`, 'Replace it (overwrite) or choose another file name.');
  }
  const present = store.metrics.names(opts.runId);
  const names = exportColumns(opts.names ? opts.names.filter((n) => present.includes(n)) : present);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  const stream = fs.createWriteStream(tmp);
  const failed = new Promise<never>((_, reject) => stream.once('error', reject));
  failed.catch(() => {});
  let rows = 0;
  try {
    const pending = (p: Promise<void> | null) => (p ? Promise.race([p, failed]) : null);
    if (opts.format === 'csv') await pending(write(stream, ['step', 'time', ...names].map(csvCell).join(',') + '\n'));
    else await pending(write(stream, '['));
    const keys = names.map((n) => JSON.stringify(n));
    const next = (from: number) => {
      let m: number | null = null;
      for (const n of names) {
        const s = store.metrics.nextStep(opts.runId, n, from);
        if (s !== null && (m === null || s < m)) m = s;
      }
      return m;
    };
    for (let from = next(Number.MIN_SAFE_INTEGER); from !== null; ) {
      const to = from + WINDOW_STEPS - 1;
      // step → [time, value per column (undefined: not logged at that step)]
      const byStep = new Map<number, { time: number; values: (number | null | undefined)[] }>();
      names.forEach((n, col) => {
        for (const [step, value, time] of store.metrics.window(opts.runId, n, from!, to)) {
          let r = byStep.get(step);
          if (!r) byStep.set(step, (r = { time, values: new Array<number | null | undefined>(names.length) }));
          r.values[col] = value;
        }
      });
      const steps = [...byStep.keys()].sort((a, b) => a - b);
      let text = '';
      for (const step of steps) {
        const r = byStep.get(step)!;
        if (opts.format === 'csv') {
          text += `${step},${r.time}`;
          for (const v of r.values) text += v === undefined ? ',' : v === null ? ',NaN' : `,${v}`;
          text += '\n';
        } else {
          text += `${rows ? ',' : ''}\n{"step":${step},"time":${r.time}`;
          r.values.forEach((v, i) => {
            if (v !== undefined) text += `,${keys[i]}:${v === null ? 'null' : v}`;
          });
          text += '}';
        }
        rows++;
      }
      await pending(write(stream, text));
      await new Promise<void>((resolve) => setImmediate(resolve)); // other requests between windows
      from = next(to + 1);
    }
    if (opts.format === 'json') await pending(write(stream, rows ? '\n]\n' : ']\n'));
    await Promise.race([new Promise<void>((resolve) => stream.end(resolve)), failed]);
    fs.renameSync(tmp, out);
  } catch (err) {
    stream.destroy();
    fs.rmSync(tmp, { force: true });
    const e = err as NodeJS.ErrnoException;
    if (e instanceof ExportError) throw e;
    throw new ExportError('IO', `cannot write ${out}: ${e.message}`, 'Check that the folder exists and is writable, or choose another file.');
  }
  return { out, rows, names, bytes: fs.statSync(out).size };
}
