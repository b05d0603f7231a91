// service.ts — RunService: turns a RunSpec into a supervised engine run. It tokenizes the data (cached),
// writes the run's files (runspec.json, job.json, train.log) into the output folder, spawns the
// `llmt-engine train` worker, turns its JSON-lines events into batched SQLite rows (metrics, checkpoints,
// status, errors) and push events, and watches it: a graceful stop, a kill, a dead worker recorded with its
// exit code/signal and last log lines, and a watchdog for a stalled step. Only this process writes the DB.
// With distributed.nproc_per_node = N it starts N workers (torchrun's variables, a loopback rendezvous): one
// run row, rank 0's events drive it, every rank's stderr lands in train.log prefixed with its rank, and if
// any rank fails all are stopped and the run records the failing rank's own error (not its peers' echoes).
// On several GPUs (devices.ids = [i0, i1, ...]) it is the same, one worker per GPU, each seeing only the run's
// GPUs (CUDA_VISIBLE_DEVICES) and computing on cuda:LOCAL_RANK.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';

import { prepareDataset } from '../data/prepare.js';
import { loadTokenizer } from '../data/tokenizer/index.js';
import { engineBinary, listDevices, loadEngine, type NativeDevice } from '../engine/native.js';
import { describeEstimate, type Estimate, estimateRun, suggestions } from './estimate.js';
import type { MetricPoint, RunRow, Store } from '../store/store.js';
import { deviceLabel, gpuIds, isMultiGpu, type RunSpec, RUNSPEC_VERSION, toEngineJob } from './runspec.js';

export interface EngineEvent {
  event: string;
  [k: string]: unknown;
}

export interface RunHandle {
  runId: number;
  outputDir: string;
  /** Resolves when the worker has exited and the run row is final. */
  done: Promise<RunRow>;
  /** Graceful: the worker writes a checkpoint, then exits. */
  stop(): void;
  /** Immediate: SIGKILL. */
  kill(): void;
}

export interface StartOptions {
  /** Every engine event, as parsed (for progress bars and push events). */
  onEvent?: (e: EngineEvent) => void;
  /** Log lines about preparation (data, resume decisions). */
  onLog?: (line: string) => void;
  cacheDir?: string;
  /** Watchdog: warn after this many ms without an event (default: max(120 s, 20 × median step)). */
  stallWarnMs?: number;
  /** Watchdog: fail after this many ms without an event (default: 5 × the warning time). */
  stallKillMs?: number;
  experimentId?: number;
  /** Start even when the pre-flight estimate says the run will not fit in free memory. */
  ignoreEstimate?: boolean;
  /** Called with the run id when the run has to wait for its devices (so a caller can cancel it). */
  onQueued?: (runId: number) => void;
  /** Continue this existing run (same id, metrics and checkpoints) instead of creating a new one. */
  runId?: number;
  tags?: string[];
}

export interface RunPlan {
  estimate: Estimate | null;
  /** Free memory of the chosen device in bytes (0 when unknown); several GPUs: the least free among them. */
  freeBytes: number;
  fits: boolean;
  suggestions: string[];
  /** The model cannot be trained by this engine (and why), or null. */
  unsupported: string | null;
  summary: string | null;
  /** GPU runs: each selected GPU's free memory (0: unknown) and whether one worker's estimate fits in it. */
  gpus: GpuFit[];
}

export interface GpuFit {
  index: number;
  freeBytes: number;
  fits: boolean;
}

export interface FitCheck {
  fits: boolean;
  /** CPU: the host's free memory; GPUs: the least free among the run's GPUs (0 when unknown). */
  freeBytes: number;
  /** What the whole run needs of that memory: CPU workers share the host; each GPU worker has its GPU. */
  needBytes: number;
  /** GPU runs: one entry per selected GPU. */
  gpus: GpuFit[];
}

type FitDevice = Pick<NativeDevice, 'kind' | 'index' | 'memoryFree'>;

/**
 * Whether a run whose one worker needs `workerBytes` fits. CPU workers share this machine's memory (the
 * estimate times the workers); on GPUs every worker holds the whole model on its own GPU, so the estimate is
 * checked against the free memory of EACH selected GPU, and the run does not fit if any of them lacks room.
 * A device whose free memory is unknown (0, or not listed) is not checked.
 */
export function fitCheck(workerBytes: number, spec: Pick<RunSpec, 'devices' | 'distributed'>, devices: readonly FitDevice[]): FitCheck {
  if (spec.devices.kind === 'cuda') {
    const gpus = gpuIds(spec).map((index) => {
      const free = devices.find((d) => d.kind === 'cuda' && d.index === index)?.memoryFree ?? 0;
      return { index, freeBytes: free, fits: !(free > 0 && workerBytes > free) };
    });
    const known = gpus.filter((g) => g.freeBytes > 0).map((g) => g.freeBytes);
    return { fits: gpus.every((g) => g.fits), freeBytes: known.length ? Math.min(...known) : 0, needBytes: workerBytes, gpus };
  }
  const free = devices.find((d) => d.kind === 'cpu')?.memoryFree ?? 0;
  const need = workerBytes * spec.distributed.nproc_per_node;
  return { fits: !(free > 0 && need > free), freeBytes: free, needBytes: need, gpus: [] };
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

/** The GPUs that lack room, said plainly (first among the suggestions of a multi-GPU run that does not fit). */
export function gpuShortfall(check: FitCheck): string | null {
  const short = check.gpus.filter((g) => !g.fits);
  if (!short.length || check.gpus.length < 2) return null;
  return `${short.map((g) => `GPU ${g.index} has ${gib(g.freeBytes)} free`).join(', ')}, below the ${gib(check.needBytes)} each worker needs (every GPU holds the whole model): free memory there or leave ${short.length > 1 ? 'them' : 'it'} out`;
}

/** The pre-flight check: the memory/time estimate against the free memory of the run's device(s). */
export async function planRun(spec: RunSpec): Promise<RunPlan> {
  const engine = loadEngine();
  if (!engine.addon) return { estimate: null, freeBytes: 0, fits: true, suggestions: [], unsupported: null, summary: null, gpus: [] };
  const info = await engine.addon.inspect(spec.model.path);
  if (!info.supported) return { estimate: null, freeBytes: 0, fits: false, suggestions: [], unsupported: info.reason ?? `model_type ${info.model_type} is not supported`, summary: null, gpus: [] };
  const devices = listDevices(engine);
  const cpu = devices.find((d) => d.kind === 'cpu');
  const est = estimateRun(info, spec, cpu?.threads ?? 1);
  const check = fitCheck(est.bytes.total, spec, devices);
  const short = gpuShortfall(check);
  const multi = isMultiGpu(spec);
  return {
    estimate: est,
    freeBytes: check.freeBytes,
    fits: check.fits,
    suggestions: check.fits ? [] : [...(short ? [short] : []), ...suggestions(spec)],
    unsupported: null,
    summary: describeEstimate(est) + (multi ? `; per GPU, on ${check.gpus.length} GPUs (${deviceLabel(spec)}), one worker each` : ''),
    gpus: check.gpus,
  };
}

/**
 * The environment of one engine worker. One worker: the parent's, untouched. Several: torchrun's variables
 * (docs/distributed.md) with a loopback rendezvous; a run on several GPUs also sets CUDA_VISIBLE_DEVICES to
 * the run's GPUs so each worker takes cuda:LOCAL_RANK of them. The ids are CUDA ordinals as listDevices reports
 * them, i.e. as this process sees the GPUs: under an inherited CUDA_VISIBLE_DEVICES they index that list.
 */
export function workerEnv(spec: Pick<RunSpec, 'devices' | 'distributed'>, rank: number, port: number, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const n = spec.distributed.nproc_per_node;
  if (n <= 1) return base;
  const env: NodeJS.ProcessEnv = { ...base, RANK: String(rank), WORLD_SIZE: String(n), LOCAL_RANK: String(rank), LOCAL_WORLD_SIZE: String(n), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) };
  if (isMultiGpu(spec)) {
    const inherited = (base.CUDA_VISIBLE_DEVICES ?? '').split(',').map((x) => x.trim()).filter(Boolean);
    env.CUDA_VISIBLE_DEVICES = spec.devices.ids.map((i) => (inherited.length ? (inherited[i] ?? String(i)) : String(i))).join(',');
  }
  return env;
}

/** Whether two runs compete for a device: any shared GPU, or both on the CPU. */
export function devicesOverlap(a: Pick<RunSpec, 'devices'>, b: Pick<RunSpec, 'devices'>): boolean {
  if (a.devices.kind !== b.devices.kind) return false;
  if (a.devices.kind === 'cpu') return true;
  const ga = new Set(gpuIds(a));
  return gpuIds(b).some((i) => ga.has(i));
}

const METRIC_FIELDS = ['loss', 'lr', 'grad_norm', 'tokens_per_s', 'mem_bytes', 'gpu_mem_bytes', 'epoch'] as const;
/** Per-rank fields of a `rank_stats` event stored as metrics named `rank<r>.<field>`. */
const RANK_METRIC_FIELDS = ['tokens_per_s', 'mem_bytes', 'peak_mem_bytes', 'gpu_mem_bytes', 'comm_wait_s'] as const;

/** A free TCP port on loopback for the workers' rendezvous (rank 0 listens on it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The newest complete checkpoint-<step> folder of an output dir, or null. */
export function lastCheckpoint(dir: string): string | null {
  if (!fs.existsSync(dir)) return null;
  const steps = fs
    .readdirSync(dir)
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .filter((s) => fs.existsSync(path.join(dir, `checkpoint-${s}`, 'trainer_state.json')))
    .sort((a, b) => a - b);
  return steps.length ? path.join(dir, `checkpoint-${steps.at(-1)}`) : null;
}

export class RunService {
  constructor(
    private readonly store: Store,
    private readonly onRunChanged?: (run: RunRow) => void,
  ) {}

  private changed(id: number): RunRow {
    const r = this.store.runs.get(id)!;
    this.onRunChanged?.(r);
    return r;
  }

  /** HF's output-dir rule: a non-empty folder needs --overwrite_output_dir, unless it has a checkpoint to resume. */
  resolveResume(spec: RunSpec): string | null {
    if (spec.resume_from) {
      const p = spec.resume_from === 'latest' ? lastCheckpoint(spec.output.dir) : spec.resume_from;
      if (!p || !fs.existsSync(path.join(p, 'trainer_state.json'))) {
        throw new Error(`cannot resume: ${spec.resume_from === 'latest' ? `no checkpoint in ${spec.output.dir}` : `${spec.resume_from} is not a complete checkpoint (no trainer_state.json)`}`);
      }
      return path.resolve(p);
    }
    if (spec.output.overwrite || !fs.existsSync(spec.output.dir)) return null;
    const entries = fs.readdirSync(spec.output.dir).filter((n) => !n.startsWith('.'));
    if (!entries.length) return null;
    const last = lastCheckpoint(spec.output.dir);
    if (last) return last;
    throw new Error(`the output directory ${spec.output.dir} exists and is not empty; use --overwrite_output_dir to train into it anyway`);
  }

  private stopQueued = new Set<number>();

  /** Asks a queued run to leave the queue (a running one is stopped through its handle). */
  cancelQueued(runId: number): void {
    this.stopQueued.add(runId);
  }

  /** Waits while another live run uses the same devices (its worker process is checked, not just the row). */
  private async waitForDevices(runId: number, spec: RunSpec, log: (l: string) => void, onQueued?: (runId: number) => void): Promise<'ok' | 'stopped'> {
    const alive = (pid: number | null) => {
      if (!pid) return false;
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    let announced = 0;
    for (;;) {
      if (this.stopQueued.has(runId)) return 'stopped';
      const busy = this.store.runs
        .list({ status: 'running' })
        .find((r) => r.id !== runId && (r.spec as RunSpec | null)?.devices && devicesOverlap(r.spec as RunSpec, spec) && alive(r.workerPid));
      if (!busy) return 'ok';
      if (announced !== busy.id) {
        log(`queued: waiting for run #${busy.id} (${busy.name}) to free ${deviceLabel(busy.spec as RunSpec)}`);
        if (!announced) onQueued?.(runId);
        announced = busy.id;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  async start(spec: RunSpec, opt: StartOptions = {}): Promise<RunHandle> {
    const log = opt.onLog ?? (() => {});
    const out = path.resolve(spec.output.dir);
    const resume = this.resolveResume(spec);
    // pre-flight: the memory and step-time estimate, and a refusal (with what to change) if it cannot fit
    const plan = await planRun(spec);
    if (plan.unsupported) throw new Error(plan.unsupported);
    if (plan.summary) log(`estimate: ${plan.summary}`);
    if (!plan.fits && !opt.ignoreEstimate) {
      const short = plan.gpus.filter((g) => !g.fits);
      const err = new Error(
        plan.gpus.length > 1
          ? `this run will not fit: each of its ${plan.gpus.length} GPU workers needs about ${gib(plan.estimate?.bytes.total ?? 0)} but ${short.map((g) => `GPU ${g.index} has ${gib(g.freeBytes)}`).join(', ')} free (${plan.summary})`
          : `this run will not fit: it needs about ${gib(plan.estimate?.bytes.total ?? 0)} but ${gib(plan.freeBytes)} is free (${plan.summary})`,
      ) as Error & { hint?: string };
      err.hint = plan.suggestions.join('; ');
      throw err;
    }
    fs.mkdirSync(out, { recursive: true });
    let run: RunRow;
    let tokensSoFar = 0;
    if (opt.runId !== undefined) {
      // resuming in place: the points and checkpoint rows after the checkpoint's step are recomputed
      const existing = this.store.runs.get(opt.runId);
      if (!existing) throw new Error(`run ${opt.runId} does not exist`);
      this.stopQueued.delete(existing.id);
      const from = resume ? Number(/checkpoint-(\d+)$/.exec(resume)?.[1] ?? 0) : 0;
      this.store.metrics.deleteAfter(existing.id, from);
      this.store.checkpoints.deleteAfter(existing.id, from);
      tokensSoFar = this.store.metrics.series(existing.id, 'tokens').reduce((m, p) => Math.max(m, p.value ?? 0), 0);
      this.store.runs.requeue(existing.id);
      this.store.db.prepare('UPDATE runs SET spec_json = ? WHERE id = ?').run(JSON.stringify(spec), existing.id);
      run = this.store.runs.get(existing.id)!;
    } else {
      run = this.store.runs.create({
        name: spec.name ?? path.basename(out),
        spec,
        specVersion: RUNSPEC_VERSION,
        outputDir: out,
        ...(opt.experimentId ? { experimentId: opt.experimentId } : {}),
        ...(opt.tags ? { tags: opt.tags } : {}),
      });
    }
    this.changed(run.id);
    const logFile = fs.createWriteStream(path.join(out, 'train.log'), { flags: 'a' });
    // the queue: one run per device set at a time, across every process that shares this database
    const waited = await this.waitForDevices(run.id, spec, log, opt.onQueued);
    if (waited === 'stopped') {
      this.store.runs.finish(run.id, 'stopped', { errorMessage: 'stopped while waiting in the queue' });
      logFile.end();
      const r = this.changed(run.id);
      return { runId: run.id, outputDir: out, done: Promise.resolve(r), stop: () => {}, kill: () => {} };
    }
    const fail = (code: string, message: string, hint?: string) => {
      this.store.runs.finish(run.id, 'failed', { errorCode: code, errorMessage: message, ...(hint ? { errorHint: hint } : {}) });
      logFile.end(`error ${code}: ${message}\n`);
      this.changed(run.id);
    };
    let train: string;
    let evalTok: string | null = null;
    try {
      fs.writeFileSync(path.join(out, 'runspec.json.tmp'), JSON.stringify(spec, null, 2));
      fs.renameSync(path.join(out, 'runspec.json.tmp'), path.join(out, 'runspec.json'));
      if (resume) log(`resuming from ${resume}`);
      const tokenizer = await loadTokenizer(spec.model.path);
      const d = spec.data;
      const columns: Record<string, string> = {};
      if (d.prompt_column) columns.promptColumn = d.prompt_column;
      if (d.response_column) columns.responseColumn = d.response_column;
      if (d.history_column) columns.historyColumn = d.history_column;
      const common = {
        tokenizer,
        template: d.template,
        columns,
        maxSourceLength: d.max_source_length,
        maxTargetLength: d.max_target_length,
        ...(d.format ? { format: d.format as never } : {}),
        ...(opt.cacheDir ? { cacheDir: opt.cacheDir } : {}),
        source: { model: path.resolve(spec.model.path) },
      };
      train = path.join(out, 'data', 'train.tok');
      const splitOut = !d.validation && d.validation_percent > 0 ? path.join(out, 'data', 'eval.tok') : undefined;
      const rep = await prepareDataset({ ...common, dataFile: d.train, out: train, ...(splitOut ? { validationOut: splitOut, validationPercent: d.validation_percent, seed: spec.training.seed } : {}) });
      log(`data: ${rep.written} training samples (${rep.truncated.samples} truncated)${rep.cached ? ' from the cache' : ''}`);
      if (splitOut) evalTok = splitOut;
      if (d.validation) {
        evalTok = path.join(out, 'data', 'eval.tok');
        const v = await prepareDataset({ ...common, dataFile: d.validation, out: evalTok });
        log(`data: ${v.written} validation samples`);
      }
    } catch (err) {
      const e = err as Error & { hint?: string };
      fail('BAD_INPUT', e.message, e.hint);
      throw err;
    }
    const job = toEngineJob(spec, { train, eval: evalTok }, resume);
    const jobFile = path.join(out, 'job.json');
    fs.writeFileSync(jobFile, JSON.stringify(job, null, 2));

    const exe = engineBinary();
    if (!fs.existsSync(exe)) {
      fail('UNAVAILABLE', `the engine binary is missing at ${exe}`, 'Build it with `npm run build:native`.');
      throw new Error(`the engine binary is missing at ${exe}`);
    }
    const nproc = spec.distributed.nproc_per_node;
    const port = nproc > 1 ? await freePort() : 0;
    const workers: ChildProcessWithoutNullStreams[] = [];
    for (let rank = 0; rank < nproc; rank++) {
      // torchrun's variables (and, on several GPUs, CUDA_VISIBLE_DEVICES); the engine reads them
      const w = spawn(exe, ['train', '--job', jobFile], { stdio: ['pipe', 'pipe', 'pipe'], env: workerEnv(spec, rank, port) });
      w.stdin.on('error', () => {}); // a control line to a worker that has just exited
      workers.push(w);
    }
    const child = workers[0]!;
    this.store.runs.markRunning(run.id, child.pid ?? null);
    this.changed(run.id);

    // batched metric inserts: at most every 500 ms, and always before a status change
    let pending: MetricPoint[] = [];
    const flushMetrics = () => {
      if (!pending.length) return;
      this.store.metrics.add(run.id, pending);
      pending = [];
    };
    const flushTimer = setInterval(flushMetrics, 500);

    // per rank: its error event (if any), how it ended, and whether we killed it
    interface RankState { error: EngineEvent | null; errorAt: number; code: number | null; signal: NodeJS.Signals | null; closed: boolean; closedAt: number }
    const ranks: RankState[] = workers.map(() => ({ error: null, errorAt: 0, code: null, signal: null, closed: false, closedAt: 0 }));
    let killedByUs = false;
    let sawError: EngineEvent | null = null; // set by the watchdog
    let sawDone: EngineEvent | null = null;
    const stderrTail: string[] = [];
    let lastEventAt = Date.now();
    const stepTimes: number[] = [];
    let lastStepAt = 0;
    let warned = false;
    const tag = (rank: number) => (nproc > 1 ? `[rank ${rank}] ` : '');

    const onRank0Event = (e: EngineEvent) => {
      const now = Date.now();
      lastEventAt = now;
      warned = false;
      if (e.event === 'step') {
        if (lastStepAt) stepTimes.push((now - lastStepAt) / Math.max(1, spec.output.logging_steps));
        lastStepAt = now;
        const step = Number(e.step);
        const time = Number(e.time) || now / 1000;
        for (const f of METRIC_FIELDS) {
          const v = e[f];
          if (typeof v === 'number' || v === null) pending.push({ step, name: f === 'lr' ? 'lr' : f, value: v as number | null, time });
        }
        // cumulative trained tokens, so that runs can be aligned by tokens seen
        if (typeof e.tokens === 'number') {
          tokensSoFar += e.tokens;
          pending.push({ step, name: 'tokens', value: tokensSoFar, time });
        }
      } else if (e.event === 'rank_stats') {
        const step = Number(e.step);
        for (const r of (Array.isArray(e.ranks) ? e.ranks : []) as Record<string, unknown>[]) {
          for (const f of RANK_METRIC_FIELDS) {
            if (typeof r[f] === 'number') pending.push({ step, name: `rank${Number(r.rank)}.${f}`, value: r[f] as number, time: now / 1000 });
          }
        }
      } else if (e.event === 'eval') {
        pending.push({ step: Number(e.step), name: 'eval_loss', value: (e.eval_loss as number) ?? null, time: now / 1000 });
      } else if (e.event === 'checkpoint') {
        flushMetrics();
        this.store.checkpoints.add({ runId: run.id, step: Number(e.step), path: String(e.path) });
      } else if (e.event === 'done') {
        sawDone = e;
      }
    };

    // a failed rank stops the others: their collectives fail at once when its sockets close; SIGKILL is the backstop
    let reaper: NodeJS.Timeout | null = null;
    const stopTheRest = () => {
      if (reaper || nproc === 1) return;
      reaper = setTimeout(() => {
        for (const [i, w] of workers.entries()) if (!ranks[i]!.closed) w.kill('SIGKILL');
      }, 3000);
    };

    workers.forEach((w, rank) => {
      const rl = readline.createInterface({ input: w.stdout });
      rl.on('line', (line) => {
        logFile.write(tag(rank) + line + '\n');
        let e: EngineEvent;
        try {
          e = JSON.parse(line) as EngineEvent;
        } catch {
          return; // not an event
        }
        if (e.event === 'error') {
          if (!ranks[rank]!.error) {
            ranks[rank]!.error = e;
            ranks[rank]!.errorAt = Date.now();
          }
          stopTheRest();
        } else if (rank === 0) onRank0Event(e);
        if (rank === 0 || e.event === 'error') opt.onEvent?.(e);
      });
      const erl = readline.createInterface({ input: w.stderr });
      erl.on('line', (line) => {
        logFile.write(`${nproc > 1 ? `stderr[rank ${rank}]` : 'stderr'}: ${line}\n`);
        stderrTail.push(tag(rank) + line);
        if (stderrTail.length > 20) stderrTail.shift();
      });
    });

    // watchdog
    const median = () => {
      if (!stepTimes.length) return 0;
      const s = [...stepTimes].sort((a, b) => a - b);
      return s[Math.floor(s.length / 2)]!;
    };
    const watchdog = setInterval(() => {
      const warnAfter = opt.stallWarnMs ?? Math.max(120_000, 20 * median() * spec.output.logging_steps);
      const killAfter = opt.stallKillMs ?? 5 * warnAfter;
      const quiet = Date.now() - lastEventAt;
      if (quiet > killAfter) {
        sawError = { event: 'error', code: 'STALLED', message: `the worker sent nothing for ${Math.round(quiet / 1000)} s and was stopped`, hint: 'Check train.log; a hung data loader, swap thrashing or a deadlock are the usual causes. Resume from the last checkpoint.' };
        for (const w of workers) w.kill('SIGKILL');
      } else if (quiet > warnAfter && !warned) {
        warned = true;
        const w: EngineEvent = { event: 'warning', message: `no progress for ${Math.round(quiet / 1000)} s (a step usually takes ${(median() / 1000).toFixed(1)} s)` };
        logFile.write(JSON.stringify(w) + '\n');
        opt.onEvent?.(w);
      }
    }, 1000);

    /**
     * The run's error when several ranks failed: a rank's own error first (not a peer's "lost its peers"),
     * then a rank that died without a word (killed, crashed) — the earliest of each kind — then the rest.
     */
    const rootCause = (): { rank: number; error: EngineEvent | null } | null => {
      const failed = ranks.map((r, i) => ({ ...r, rank: i })).filter((r) => r.error || (r.code !== 0 && r.closed));
      if (!failed.length) return null;
      const own = failed.filter((r) => r.error && !r.error.peer_lost).sort((a, b) => a.errorAt - b.errorAt);
      if (own.length) return { rank: own[0]!.rank, error: own[0]!.error };
      const silent = failed.filter((r) => !r.error).sort((a, b) => a.closedAt - b.closedAt);
      if (silent.length && !killedByUs) return { rank: silent[0]!.rank, error: null };
      const lost = failed.filter((r) => r.error).sort((a, b) => a.errorAt - b.errorAt);
      if (lost.length && !killedByUs) return { rank: lost[0]!.rank, error: lost[0]!.error };
      return { rank: 0, error: ranks[0]!.error };
    };

    const done = new Promise<RunRow>((resolve) => {
      let open = workers.length;
      workers.forEach((w, rank) => {
        w.on('close', (code, signal) => {
          Object.assign(ranks[rank]!, { code, signal, closed: true, closedAt: Date.now() });
          if (code !== 0) stopTheRest();
          if (--open > 0) return;
          if (reaper) clearTimeout(reaper);
          clearInterval(flushTimer);
          clearInterval(watchdog);
          flushMetrics();
          const fin = sawDone as EngineEvent | null;
          const allOk = ranks.every((r) => r.code === 0);
          const cause = rootCause();
          const who = (r: number) => (nproc > 1 ? `rank ${r}: ` : '');
          const watch = sawError as EngineEvent | null;
          if (fin && allOk) {
            this.store.runs.finish(run.id, fin.status === 'stopped' ? 'stopped' : 'completed', { exitCode: 0 });
          } else if (watch || cause?.error) {
            const err = (watch ?? cause!.error)!;
            const r = watch ? 0 : cause!.rank;
            this.store.runs.finish(run.id, 'failed', {
              errorCode: String(err.code ?? 'INTERNAL'),
              errorMessage: (watch ? '' : who(r)) + String(err.message ?? 'the engine failed'),
              ...(err.hint ? { errorHint: String(err.hint) } : {}),
              exitCode: ranks[r]!.code,
              exitSignal: ranks[r]!.signal,
            });
          } else {
            const r = cause?.rank ?? 0;
            const { code: c, signal: sig } = ranks[r]!;
            const tail = stderrTail.slice(-5).join(' | ');
            this.store.runs.finish(run.id, 'failed', {
              errorCode: 'WORKER_DIED',
              errorMessage: `the engine worker${nproc > 1 ? ` of rank ${r} (pid ${workers[r]!.pid})` : ''} ${sig ? `was killed by ${sig}` : `exited with code ${c}`} without finishing${tail ? `; last output: ${tail}` : ''}`,
              errorHint: 'Resume from the last checkpoint (llms-train train ... --resume_from_checkpoint latest).',
              exitCode: c,
              exitSignal: sig,
            });
          }
          logFile.end();
          resolve(this.changed(run.id));
        });
      });
    });
    return {
      runId: run.id,
      outputDir: out,
      done,
      stop: () => {
        // every rank hears it; they agree on the step to stop at through their next all-reduce
        for (const w of workers) if (w.exitCode === null) w.stdin.write('stop\n');
      },
      kill: () => {
        killedByUs = true;
        for (const w of workers) w.kill('SIGKILL');
      },
    };
  }
}
