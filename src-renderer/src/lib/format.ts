// format.ts — numbers, sizes and durations as people read them (locale-aware where it matters).
export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(v >= 10 ? 1 : 2)} ${u[i]}`;
}

export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** Seconds between two ISO timestamps (to now when `end` is null). */
export function elapsed(start: string | null, end: string | null): number | null {
  if (!start) return null;
  return ((end ? Date.parse(end) : Date.now()) - Date.parse(start)) / 1000;
}

/** A run's training time in seconds: its attempts' running time (a stopped, killed or interrupted run resumed later
 *  does not count the pause), the running attempt up to `now`; a run recorded before attempts were timed: started …
 *  ended. Null when it never started. */
export function runSeconds(
  r: { status: string; startedAt: string | null; endedAt: string | null; activeSeconds?: number | null; attemptStartedAt?: string | null },
  now = Date.now(),
): number | null {
  if (!r.startedAt) return null;
  if (typeof r.activeSeconds === 'number') {
    const open = r.status === 'running' && r.attemptStartedAt ? Math.max(0, (now - Date.parse(r.attemptStartedAt)) / 1000) : 0;
    return r.activeSeconds + open;
  }
  if (r.status === 'running') return (now - Date.parse(r.startedAt)) / 1000;
  return elapsed(r.startedAt, r.endedAt ?? r.startedAt);
}

export function num(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined) return '—';
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toFixed(digits)).toString();
}

export function count(v: number | null | undefined): string {
  if (v === null || v === undefined) return '—';
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)}B`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return String(v);
}

/** Exponential moving average with TensorBoard's debiasing (weight in [0, 1)). */
export function smooth(values: readonly (number | null)[], weight: number): (number | null)[] {
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return null;
    last = last * weight + (1 - weight) * v;
    n++;
    return last / (1 - Math.pow(weight, n));
  });
}

/**
 * One line of a run's log as people read it: the engine's JSON events (step, eval, checkpoint, warning, error,
 * started, done) in words; any other line (the app's own lines, a rank's stderr) as it is. A `[rank N] ` prefix is
 * kept in front of the formatted event.
 */
export function logLine(line: string): string {
  const m = /^(\[rank \d+\] )?(\{.*\})\s*$/.exec(line);
  if (!m) return line;
  let e: Record<string, unknown>;
  try {
    e = JSON.parse(m[2]!) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof e !== 'object' || e === null || typeof e.event !== 'string') return line;
  const n = (v: unknown, d = 4) => (typeof v === 'number' ? num(v, d) : '—');
  const pre = m[1] ?? '';
  switch (e.event) {
    case 'step':
      return `${pre}step ${e.step}  loss ${n(e.loss)}  lr ${n(e.lr)}  grad norm ${n(e.grad_norm)}  ${typeof e.tokens_per_s === 'number' ? `${Math.round(e.tokens_per_s)} tok/s` : ''}`.trimEnd();
    case 'eval':
      return `${pre}eval at step ${e.step}: eval loss ${n(e.eval_loss)} (${e.eval_tokens ?? '—'} tokens)`;
    case 'checkpoint':
      return `${pre}checkpoint at step ${e.step}${typeof e.path === 'string' ? `: ${e.path}` : ''}`;
    case 'warning':
      return `${pre}warning: ${String(e.message ?? '')}`;
    case 'error':
      return `${pre}error ${String(e.code ?? '')}: ${String(e.message ?? '')}${typeof e.hint === 'string' && e.hint ? ` — ${e.hint}` : ''}`;
    case 'started':
      return `${pre}started: ${String(e.model_type ?? '')} ${String(e.method ?? '')}${e.quantization && e.quantization !== 'none' ? ` (${String(e.quantization)})` : ''}, ${count(e.trainable_params as number)} of ${count(e.total_params as number)} parameters trainable, ${e.max_steps} steps from step ${e.start_step ?? 0}`;
    case 'done':
      return `${pre}${String(e.status ?? 'done')} at step ${e.step ?? '—'}${e.early_stopped === true ? ' (early stopping)' : ''}${typeof e.last_loss === 'number' ? `, loss of the last step ${n(e.last_loss)}` : ''}${typeof e.output_dir === 'string' ? `: ${e.output_dir}` : ''}${
        typeof e.best_checkpoint === 'string' ? `; best checkpoint ${e.best_checkpoint} (eval loss ${n(e.best_eval_loss)})${e.output_from_best === true ? ', which the output holds' : ''}` : ''
      }`;
    case 'checkpoint_removed':
      return `${pre}removed checkpoint at step ${e.step}${typeof e.reason === 'string' ? ` (${e.reason})` : ''}`;
    case 'early_stopping':
      return `${pre}${String(e.message ?? `early stopping at step ${e.step}`)}`;
    case 'rank_stats': {
      // several workers: each rank's throughput and time waiting on the others, one short line (the charts have the rest)
      const ranks = Array.isArray(e.ranks) ? (e.ranks as Record<string, unknown>[]) : [];
      const each = ranks.map((r) => `${String(r.rank ?? '?')}: ${typeof r.tokens_per_s === 'number' ? `${Math.round(r.tokens_per_s)} tok/s` : '—'}${typeof r.comm_wait_s === 'number' ? `, waited ${num(r.comm_wait_s, 2)} s` : ''}`);
      return `${pre}workers at step ${e.step ?? '—'} — ${each.join('; ')}`;
    }
    default:
      return line;
  }
}
