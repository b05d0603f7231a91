// service.ts — RunService: turns a RunSpec into a supervised engine run. It tokenizes the data (cached),
// writes the run's files (runspec.json, job.json, train-<run id>.log) into the output folder, spawns the
// `llmt-engine train` worker, turns its JSON-lines events into batched SQLite rows (metrics, checkpoints,
// status, errors) and push events, and watches it: a graceful stop, a kill, a dead worker recorded with its
// exit code/signal and last log lines, and a watchdog for a stalled step. Only this process writes the DB.
// With distributed.nproc_per_node = N it starts N workers (torchrun's variables, a loopback rendezvous): one
// run row, rank 0's events drive it, every rank's stderr lands in the run's log (train-<run id>.log) prefixed with its rank, and if
// any rank fails all are stopped and the run records the failing rank's own error (not its peers' echoes).
// On several GPUs (devices.ids = [i0, i1, ...]) it is the same, one worker per GPU, each seeing only the run's
// GPUs (CUDA_VISIBLE_DEVICES) and computing on cuda:LOCAL_RANK.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';

import { prepareDataset, prepareFiles } from '../data/prepare.js';
import { TokWriter } from '../data/tokfile.js';
import { loadTokenizer } from '../data/tokenizer/index.js';
import type { Tokenizer } from '../data/tokenizer/types.js';
import { ensureDir, IoError, ioError, isWriteFailure } from '../io-error.js';
import { realish } from '../paths.js';
import { engineBinary, listDevices, loadEngine, type NativeDevice } from '../engine/native.js';
import { describeEstimate, type Estimate, estimateRun, suggestions } from './estimate.js';
import type { MetricPoint, RunRow, Store } from '../store/store.js';
import { deviceLabel, gpuIds, isMultiGpu, lastCheckpoint, type RunSpec, RUNSPEC_VERSION, toEngineJob, trainFiles } from './runspec.js';

export { lastCheckpoint };

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
  /** Aborting it stops the run while it waits or prepares its data (temp files removed, the run 'stopped'). */
  signal?: AbortSignal;
  /**
   * The app: a new run may not use another recorded run's output folder (a later "delete with its folder" would
   * take the other run's adapter and checkpoints) unless it asks to resume from a checkpoint (resume_from).
   * Without it (the CLI: HF's "a non-empty output_dir resumes from its last checkpoint", a new run row per
   * invocation) the folder is shared as long as the other run is not live. A live run's folder is always refused.
   */
  exclusiveOutput?: boolean;
}

/** A run's own log file in its output folder (runs sharing a folder no longer write into one train.log). */
export function runLogFile(outputDir: string, runId: number): string {
  return path.join(outputDir, `train-${runId}.log`);
}

/** The log to read for a run: its own, else the folder's train.log (runs recorded before logs were per run). */
export function runLogToRead(outputDir: string, runId: number): string {
  const own = runLogFile(outputDir, runId);
  return fs.existsSync(own) ? own : path.join(outputDir, 'train.log');
}

function pidAlive(pid: number | null): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether `child` is the folder `parent` or inside it (resolved paths). */
export function pathWithin(child: string, parent: string): boolean {
  const rel = path.relative(path.resolve(parent), path.resolve(child));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** Other recorded runs whose output folder is `dir`, inside it, or (with `nested`) contains it. */
export function runsUsingFolder(store: Store, dir: string, exceptId?: number, nested = false): RunRow[] {
  return store.runs
    .list()
    .filter((r) => r.id !== exceptId && r.outputDir && (path.resolve(r.outputDir) === path.resolve(dir) || (nested && (pathWithin(r.outputDir, dir) || pathWithin(dir, r.outputDir)))));
}

const runLabel = (r: RunRow) => `run #${r.id} (${r.name}, ${r.status})`;

/**
 * What makes a run's output folder unusable whatever else the spec says, or null: a path that is a file, and a
 * full fine-tune whose output is its own base model's folder (it saves model.safetensors and config.json there,
 * over the weights it trains from; a LoRA run writes only its adapter beside them, which is fine).
 */
export function outputFolderProblem(spec: Pick<RunSpec, 'method' | 'model' | 'output'>): { message: string; hint: string; code: 'BAD_INPUT' | 'IO' } | null {
  const out = path.resolve(spec.output.dir);
  if (fs.existsSync(out) && !fs.statSync(out).isDirectory())
    return { code: 'IO', message: `the output folder ${out} is a file, not a folder`, hint: 'Give --output_dir a folder path (it is created if missing).' };
  if (spec.method === 'full' && realish(out) === realish(spec.model.path))
    return {
      code: 'BAD_INPUT',
      message: `the output folder ${out} is the base model's own folder: a full fine-tune saves the trained model (model.safetensors, config.json) there, over the model it trains from`,
      hint: 'Choose another --output_dir (a LoRA run may write its adapter beside the model; a full fine-tune may not).',
    };
  return null;
}

/** Names a run leaves in its output folder besides its own files that no run writes: checkpoint-N.tmp-PID of a dead engine. */
export function staleCheckpointTemps(dir: string): string[] {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return [];
  return fs.readdirSync(dir).filter((n) => {
    const m = /^checkpoint-\d+\.tmp-(\d+)$/.exec(n);
    return m !== null && !pidAlive(Number(m[1]));
  });
}

/**
 * What makes a checkpoint unfit to resume a run with `spec` (cheaply, from its files): a LoRA checkpoint for a
 * full fine-tune or the reverse, another LoRA rank or target list (adapter_config.json), another method or
 * quantization than the run that wrote the folder (its runspec.json). Empty when nothing is known to differ.
 */
export function resumeMismatch(spec: RunSpec, checkpoint: string): string[] {
  const out: string[] = [];
  const read = (f: string): Record<string, unknown> | null => {
    try {
      return JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
    } catch {
      return null;
    }
  };
  const acfg = read(path.join(checkpoint, 'adapter_config.json'));
  const full = fs.existsSync(path.join(checkpoint, 'model.safetensors')) || fs.existsSync(path.join(checkpoint, 'model.safetensors.index.json'));
  if (acfg && spec.method === 'full') out.push('the checkpoint holds a LoRA adapter but this run is a full fine-tune');
  else if (!acfg && full && spec.method === 'lora') out.push('the checkpoint holds a full fine-tune but this run trains LoRA');
  if (acfg && spec.method === 'lora') {
    if (typeof acfg.r === 'number' && acfg.r !== spec.lora.r) out.push(`LoRA r is ${acfg.r} there, ${spec.lora.r} here`);
    if ((acfg.use_dora === true) !== (spec.lora.use_dora === true)) out.push(`the checkpoint holds a ${acfg.use_dora === true ? 'DoRA' : 'plain LoRA'} adapter but this run trains ${spec.lora.use_dora === true ? 'DoRA' : 'plain LoRA'}`);
    const t = acfg.target_modules;
    const want = spec.lora.target_modules;
    if (Array.isArray(t) && Array.isArray(want)) {
      const a = [...new Set(t.map(String))].sort();
      const b = [...new Set(want.map(String))].sort();
      if (a.join(',') !== b.join(',')) out.push(`the LoRA target modules are ${a.join(', ')} there, ${b.join(', ')} here`);
    }
  }
  const earlier = read(path.join(path.dirname(checkpoint), 'runspec.json')) as { method?: string; model?: { quantization?: string } } | null;
  if (earlier) {
    if (typeof earlier.method === 'string' && earlier.method !== spec.method && !out.some((m) => m.includes('full fine-tune'))) out.push(`the run that wrote it used method ${earlier.method}, this one ${spec.method}`);
    const q = earlier.model?.quantization ?? 'none';
    if (q !== spec.model.quantization) out.push(`the run that wrote it used quantization ${q}, this one ${spec.model.quantization}`);
  }
  return out;
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
  /** The model's context when it is a hard limit (learned or rotary positions; inspect's context_limit), else null. */
  context?: number | null;
}

/**
 * The pre-flight warning of a run whose samples may be longer than the model's context (a hard limit: learned or
 * rotary positions; null for ALiBi and configs that name no length): max_source_length + max_target_length above
 * it, or (once the data is prepared) a prepared sample longer than it. A warning, not an error — HF trains past
 * the context too, and a longer context is sometimes the point — but the positions past it were never trained,
 * and generation stops at the context. Null when the run stays within it.
 */
export function contextWarning(context: number | null | undefined, maxSource: number, maxTarget: number, longest?: number): string | null {
  if (!context || context <= 0) return null;
  const sum = maxSource + maxTarget;
  const over = longest !== undefined && longest > context;
  if (sum <= context && !over) return null;
  const lengths = `max_source_length ${maxSource} + max_target_length ${maxTarget} = ${sum} tokens`;
  const what =
    longest === undefined
      ? `${lengths} exceeds the model's context of ${context} tokens`
      : over
        ? `the longest prepared sample is ${longest} tokens, longer than the model's context of ${context} tokens (${lengths})`
        : `${lengths} exceeds the model's context of ${context} tokens (the longest prepared sample, ${longest} tokens, fits)`;
  return `${what}. The tokens past it are trained anyway (as HF does), at positions the model never saw in pre-training, and generation (chat, predict, eval) stops at the context: lower max_source_length / max_target_length to stay within it, unless you mean to extend the context.`;
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
  const context = info.context_limit && info.context_limit > 0 ? info.context_limit : null;
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
    context,
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

/** What a run writes at the end of training, besides its checkpoint-<step> folders (engine: save_adapter / save_model). */
const ADAPTER_OUTPUTS = ['adapter_config.json', 'adapter_model.safetensors'];
const isModelWeights = (n: string) => /^model(-\d+-of-\d+)?\.safetensors$/.test(n) || n === 'model.safetensors.index.json';

/**
 * --overwrite_output_dir: the earlier run's checkpoint-<step> folders and final outputs in `dir`, which a fresh
 * run must not leave behind (`--resume_from_checkpoint latest` would pick them up, and a full-FT model would sit
 * beside a LoRA adapter). Only what a run writes: the final files only where a run wrote there (runspec.json),
 * the full-FT model (config.json, model*.safetensors) only where the earlier run was a full fine-tune that did not
 * read its base model from this very folder. Never anything else (the user's data, notes, ...).
 */
export function earlierRunOutputs(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const names = fs.readdirSync(dir);
  const found = names.filter((n) => /^checkpoint-\d+$/.test(n) && fs.statSync(path.join(dir, n)).isDirectory());
  if (!names.includes('runspec.json')) return found;
  found.push(...ADAPTER_OUTPUTS.filter((n) => names.includes(n)));
  let earlier: { method?: string; model?: { path?: string } } = {};
  try {
    earlier = JSON.parse(fs.readFileSync(path.join(dir, 'runspec.json'), 'utf8')) as typeof earlier;
  } catch {
    /* unreadable: treated as not a full fine-tune */
  }
  const fullCkpt = found.some((n) => n.startsWith('checkpoint-') && fs.existsSync(path.join(dir, n, 'model.safetensors')));
  const ownBase = typeof earlier.model?.path === 'string' && path.resolve(earlier.model.path) === path.resolve(dir);
  if ((earlier.method === 'full' || fullCkpt) && !ownBase) {
    found.push(...names.filter(isModelWeights));
    if (names.includes('config.json') && names.some(isModelWeights)) found.push('config.json');
  }
  return found;
}

/** The tokenizer, generation config and remote-code files that a full fine-tune copies beside its saved model (the engine's is_model_side_file). */
function isModelSideFile(n: string): boolean {
  if (n.startsWith('tokenizer')) return !/\.(safetensors|bin)$/.test(n);
  return (
    ['special_tokens_map.json', 'added_tokens.json', 'generation_config.json', 'chat_template.json', 'chat_template.jinja', 'vocab.json', 'vocab.txt', 'merges.txt', 'spiece.model', 'ice_text.model', 'sentencepiece.bpe.model'].includes(n) ||
    n.endsWith('.tiktoken') ||
    n.endsWith('.py')
  );
}

/**
 * Everything in a run's output folder that runs write (relative paths), for deleting a run with its files: its
 * checkpoints (and a dead engine's half-written checkpoint-N.tmp-PID), final outputs (as earlierRunOutputs finds
 * them: a full fine-tune's model only where it did not train from this very folder, then with the tokenizer files
 * it copied), runspec.json, job.json, the run logs and the prepared data under data/ — never anything else, so a
 * folder that also holds the user's files (a model, notes, a data/ of their own) keeps them.
 */
export function runWrittenFiles(dir: string): string[] {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return [];
  const names = fs.readdirSync(dir);
  const outputs = earlierRunOutputs(dir);
  const found = new Set(outputs);
  for (const n of names) {
    if (/^checkpoint-\d+\.tmp-\d+$/.test(n) || /^train(-\d+)?\.log$/.test(n) || /^(runspec|job)\.json(\.tmp)?$/.test(n) || /^\.llmt-write-test-\d+$/.test(n)) found.add(n);
  }
  if (outputs.some(isModelWeights)) for (const n of names) if (isModelSideFile(n)) found.add(n);
  const data = path.join(dir, 'data');
  if (fs.existsSync(data) && fs.statSync(data).isDirectory())
    for (const n of fs.readdirSync(data)) if (/^(train|eval)\.tok(\.|$)|\.part\d+\.(tok|val)$/.test(n)) found.add(`data/${n}`);
  return [...found];
}

/**
 * The earlier run's files that a new attempt in the same folder rewrites (runspec.json, job.json, its data),
 * kept aside until the engine accepts the new job: restored if the attempt fails before training starts (a
 * resume that does not match, bad data, Ctrl-C), dropped once it has started. Only in a folder that holds an
 * earlier run's files; a fresh folder keeps whatever the attempt wrote.
 */
class EarlierFiles {
  private readonly saved: { file: string; backup: string | null }[] = [];
  private done = false;

  constructor(files: string[]) {
    if (!files.some((f) => fs.existsSync(f))) {
      this.done = true;
      return;
    }
    for (const file of files) {
      if (!fs.existsSync(file)) {
        this.saved.push({ file, backup: null });
        continue;
      }
      const backup = path.join(path.dirname(file), `.${path.basename(file)}.prev-${process.pid}`);
      fs.rmSync(backup, { force: true });
      try {
        fs.linkSync(file, backup); // the new file is renamed into place: the link keeps the old one
      } catch {
        fs.copyFileSync(file, backup);
      }
      this.saved.push({ file, backup });
    }
  }

  /** The new attempt is accepted: the earlier files go. */
  commit(): void {
    if (this.done) return;
    this.done = true;
    for (const s of this.saved) if (s.backup) fs.rmSync(s.backup, { force: true });
  }

  /** The new attempt failed before training: the earlier files come back (new ones that had none are removed). */
  restore(): void {
    if (this.done) return;
    this.done = true;
    for (const s of this.saved) {
      try {
        if (s.backup) {
          fs.renameSync(s.backup, s.file);
          // rename() between two links to one file (the attempt never replaced it) does nothing: the backup stays
          fs.rmSync(s.backup, { force: true });
        } else fs.rmSync(s.file, { force: true });
      } catch {
        /* best effort: a restore must not hide the error that led here */
      }
    }
  }
}

/** A run's IO error (the .tok writer's, a metadata file's) gets the hint that names the run's flags. */
function withRunHint(err: Error, out: string): Error {
  if (!(err instanceof IoError)) return err;
  if (err.errno === 'ENOSPC' || err.errno === 'EDQUOT') err.hint = `Free some space on the disk that holds ${out}, or choose another --output_dir (or --cache_dir for the cached tokenized data).`;
  else if (err.errno === 'EROFS') err.hint = `${out} is on a read-only file system: choose a writable --output_dir (or --cache_dir).`;
  else if (err.errno === 'EACCES' || err.errno === 'EPERM') err.hint = `You may not write there: fix the permissions, or choose another --output_dir (or --cache_dir).`;
  return err;
}

class Aborted extends Error {
  constructor() {
    super('stopped');
    this.name = 'Aborted';
  }
}

/** The tokenizer, failing its next call once `signal` is aborted: how a Ctrl-C reaches prepareDataset's loop. */
function abortable(tok: Tokenizer, signal: AbortSignal): Tokenizer {
  const check = () => {
    if (signal.aborted) throw new Aborted();
  };
  const t = Object.create(tok) as Tokenizer & { encode: Tokenizer['encode']; encodeBatch?: Tokenizer['encodeBatch'] };
  t.encode = (text: string) => {
    check();
    return tok.encode(text);
  };
  if (tok.encodeBatch) {
    t.encodeBatch = async (texts: string[]) => {
      check();
      const r = await tok.encodeBatch!(texts);
      check();
      return r;
    };
  }
  return t;
}

export class RunService {
  constructor(
    private readonly store: Store,
    private readonly onRunChanged?: (run: RunRow) => void,
  ) {}

  /** Runs this service supervises (queued or running), so a stale-row repair leaves them alone. */
  private readonly own = new Set<number>();
  /** Runs waiting or preparing their data: their abort, and the earlier files they would restore. */
  private readonly preparing = new Map<number, { ac: AbortController; earlier: EarlierFiles | null }>();

  /** Whether this service (this process) supervises the run. */
  owns(runId: number): boolean {
    return this.own.has(runId);
  }

  /**
   * A second Ctrl-C while preparing: synchronously removes the temp files, puts the earlier files back and
   * marks each such run stopped, for a process about to exit.
   */
  abandonPreparing(): void {
    TokWriter.removeTempFiles();
    for (const [id, p] of this.preparing) {
      p.earlier?.restore();
      this.store.runs.finish(id, 'stopped', { errorMessage: 'stopped during data preparation' });
      this.own.delete(id);
      this.changed(id);
    }
    this.preparing.clear();
  }

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
    const last = lastCheckpoint(spec.output.dir);
    if (last) return last;
    // what an attempt writes before its first checkpoint (runspec.json, job.json, its log, data/*.tok) does not make
    // the folder "not empty": an attempt killed before any checkpoint is re-run by the same command
    const outputs = new Set(earlierRunOutputs(spec.output.dir));
    const ours = new Set(runWrittenFiles(spec.output.dir).filter((n) => !outputs.has(n)));
    const dataOurs = (n: string) => n === 'data' && fs.readdirSync(path.join(spec.output.dir, n)).every((f) => ours.has(`data/${f}`));
    const entries = fs.readdirSync(spec.output.dir).filter((n) => !n.startsWith('.') && !ours.has(n) && !dataOurs(n));
    if (!entries.length) return null;
    throw new Error(`the output directory ${spec.output.dir} exists and is not empty; use --overwrite_output_dir to train into it anyway`);
  }

  private stopQueued = new Set<number>();

  /** Asks a queued run to leave the queue, or to stop preparing its data (a running one is stopped through its handle). */
  cancelQueued(runId: number): void {
    this.stopQueued.add(runId);
    this.preparing.get(runId)?.ac.abort();
  }

  /** Waits while another live run uses the same devices (its worker process is checked, not just the row). */
  private async waitForDevices(runId: number, spec: RunSpec, log: (l: string) => void, onQueued?: (runId: number) => void, signal?: AbortSignal): Promise<'ok' | 'stopped'> {
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
      if (this.stopQueued.has(runId) || signal?.aborted) return 'stopped';
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

  /**
   * A new run in a folder that another recorded run uses: refused while that run is live, and in the app
   * (exclusiveOutput) unless the new run asks to resume from a checkpoint. The error names that run.
   */
  checkOutputFolder(spec: RunSpec, opt: Pick<StartOptions, 'runId' | 'exclusiveOutput'> = {}): void {
    const out = path.resolve(spec.output.dir);
    const bad = outputFolderProblem(spec);
    if (bad) throw Object.assign(new Error(bad.message), { code: bad.code, hint: bad.hint });
    const others = runsUsingFolder(this.store, out, opt.runId);
    const live = others.find((r) => (r.status === 'running' || r.status === 'queued') && (this.own.has(r.id) || pidAlive(r.workerPid)));
    if (live)
      throw Object.assign(new Error(`the output folder ${out} is in use by ${runLabel(live)}: two runs cannot write into one folder`), {
        code: 'CONFLICT',
        hint: `Choose another output folder, or wait for run #${live.id} to end.`,
      });
    if (opt.runId !== undefined || !opt.exclusiveOutput || spec.resume_from || !others.length) return;
    const o = others.at(-1)!;
    throw Object.assign(new Error(`the output folder ${out} is the output folder of ${runLabel(o)}${others.length > 1 ? ` and ${others.length - 1} other run(s)` : ''}: a new run there would mix its files and checkpoints with that run's`), {
      code: 'CONFLICT',
      hint: `Choose another output folder${o.status === 'completed' ? '' : `, or resume run #${o.id} from its page`}.`,
    });
  }

  async start(spec: RunSpec, opt: StartOptions = {}): Promise<RunHandle> {
    // the log lines go to the caller and, once the run has its row, to the run's own log file
    let logSink: fs.WriteStream | null = null;
    const early: string[] = [];
    const log = (l: string) => {
      opt.onLog?.(l);
      if (!logSink) early.push(l);
      else if (!logSink.writableEnded) logSink.write(`${l}\n`);
    };
    const out = path.resolve(spec.output.dir);
    this.checkOutputFolder(spec, opt);
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
    ensureDir(out, '--output_dir');
    try {
      // a read-only or full folder is said now, before a run row exists
      const probe = path.join(out, `.llmt-write-test-${process.pid}`);
      fs.writeFileSync(probe, 'x');
      fs.rmSync(probe, { force: true });
    } catch (err) {
      throw ioError(err, out, 'write to', '--output_dir');
    }
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
      tokensSoFar = Math.max(0, this.store.metrics.maxValue(existing.id, 'tokens') ?? 0);
      this.store.runs.requeue(existing.id);
      this.store.db.prepare('UPDATE runs SET spec_json = ? WHERE id = ?').run(JSON.stringify(spec), existing.id);
      run = this.store.runs.get(existing.id)!;
      this.own.add(run.id);
    } else {
      run = this.store.runs.create({
        name: spec.name ?? path.basename(out),
        spec,
        specVersion: RUNSPEC_VERSION,
        outputDir: out,
        ...(opt.experimentId ? { experimentId: opt.experimentId } : {}),
        ...(opt.tags ? { tags: opt.tags } : {}),
      });
      this.own.add(run.id);
      // two starts into one folder at the same moment (two terminals, two clicks) both passed the check above before
      // either had a row: now that this one has its row, the earlier live row wins and this one withdraws
      const rival = runsUsingFolder(this.store, out, run.id).find(
        (r) => r.id < run.id && (r.status === 'running' || r.status === 'queued') && (this.own.has(r.id) || pidAlive(r.workerPid)),
      );
      if (rival) {
        this.own.delete(run.id);
        this.store.runs.delete(run.id);
        throw Object.assign(new Error(`the output folder ${out} is in use by ${runLabel(rival)}, started at the same moment: two runs cannot write into one folder`), {
          code: 'CONFLICT',
          hint: `Choose another output folder, or wait for run #${rival.id} to end.`,
        });
      }
    }
    this.changed(run.id);
    const logFile = fs.createWriteStream(runLogFile(out, run.id), { flags: 'a' });
    logFile.on('error', () => {}); // the log is best effort (a full disk is reported by the files that matter)
    for (const l of early.splice(0)) logFile.write(`${l}\n`);
    logSink = logFile;
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    if (opt.signal?.aborted) ac.abort();
    opt.signal?.addEventListener('abort', onAbort);
    const prep: { ac: AbortController; earlier: EarlierFiles | null } = { ac, earlier: null };
    this.preparing.set(run.id, prep);
    const endPreparing = () => {
      this.preparing.delete(run.id);
      opt.signal?.removeEventListener('abort', onAbort);
    };
    const stopped = (why: string): RunHandle => {
      endPreparing();
      prep.earlier?.restore();
      this.store.runs.finish(run.id, 'stopped', { errorMessage: why });
      this.own.delete(run.id);
      logFile.end(`${why}\n`);
      const r = this.changed(run.id);
      return { runId: run.id, outputDir: out, done: Promise.resolve(r), stop: () => {}, kill: () => {} };
    };
    // the queue: one run per device set at a time, across every process that shares this database
    const waited = ac.signal.aborted ? 'stopped' : await this.waitForDevices(run.id, spec, log, opt.onQueued, ac.signal);
    if (waited === 'stopped') return stopped('stopped while waiting in the queue');
    const fail = (code: string, message: string, hint?: string) => {
      endPreparing();
      prep.earlier?.restore();
      this.store.runs.finish(run.id, 'failed', { errorCode: code, errorMessage: message, ...(hint ? { errorHint: hint } : {}) });
      this.own.delete(run.id);
      logFile.end(`error ${code}: ${message}\n`);
      this.changed(run.id);
    };
    /** A file-system error said plainly, with the flags that choose another place. */
    const asIo = (err: unknown, file: string) => withRunHint(ioError(err, file), out);
    const jobFile = path.join(out, 'job.json');
    const train = path.join(out, 'data', 'train.tok');
    const evalOut = path.join(out, 'data', 'eval.tok');
    let evalTok: string | null = null;
    try {
      // the earlier run's files stay aside until the engine accepts this attempt (F10: a failed resume must not replace them)
      prep.earlier = new EarlierFiles([path.join(out, 'runspec.json'), jobFile, train, evalOut]);
      try {
        fs.writeFileSync(path.join(out, 'runspec.json.tmp'), JSON.stringify(spec, null, 2));
        fs.renameSync(path.join(out, 'runspec.json.tmp'), path.join(out, 'runspec.json'));
      } catch (err) {
        fs.rmSync(path.join(out, 'runspec.json.tmp'), { force: true });
        throw asIo(err, path.join(out, 'runspec.json'));
      }
      if (resume) log(`resuming from ${resume}`);
      const tokenizer = abortable(await loadTokenizer(spec.model.path), ac.signal);
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
        onError: d.on_error,
        source: { model: path.resolve(spec.model.path) },
      };
      const skipped = (n: number) => (n ? `; ${n} bad record(s) skipped (--on_error skip)` : '');
      const splitOut = !d.validation && d.validation_percent > 0 ? evalOut : undefined;
      const split = (o: string | undefined) => (o ? { validationOut: o, validationPercent: d.validation_percent, seed: spec.training.seed } : {});
      // what an attempt killed while preparing left behind (part files, the writers' temporary files, named by the
      // pid of the process that wrote them: a live one's are left alone)
      const dataDir = path.join(out, 'data');
      if (fs.existsSync(dataDir))
        for (const n of fs.readdirSync(dataDir)) {
          const m = /\.(\d+)\.tmp(\.|$)/.exec(n);
          if (m ? !pidAlive(Number(m[1])) : /\.part\d+\.(tok|val)$/.test(n)) fs.rmSync(path.join(dataDir, n), { force: true });
        }
      // a checkpoint an engine was writing when it was killed (or the disk filled): never complete, never resumed from
      const halfWritten = staleCheckpointTemps(out);
      for (const n of halfWritten) fs.rmSync(path.join(out, n), { recursive: true, force: true });
      if (halfWritten.length) log(`removed ${halfWritten.length} half-written checkpoint folder(s) an earlier attempt left: ${halfWritten.join(', ')}`);
      const files = trainFiles(spec);
      // several training files: each prepared on its own (its format, its cache entry, its bad lines named with its
      // path), then put together in the order given; the validation split is taken from each
      const rep = await prepareFiles({ ...common, dataFiles: files, out: train, ...split(splitOut) }, (file, p) =>
        log(`data: ${file}: ${p.written} samples (${p.format}; ${p.truncated.samples} truncated)${p.cached ? ' from the cache' : ''}${skipped(p.skipped)}`),
      );
      log(`data: ${rep.written} training samples (${rep.truncated.samples} truncated)${rep.cached ? ' from the cache' : ''}${skipped(rep.skipped)}`);
      if (rep.validation) log(`data: ${rep.validation.written} validation samples split off (${rep.validation.truncated.samples} truncated)`);
      if (splitOut) evalTok = splitOut;
      let longest = Math.max(rep.lengths.max, rep.validation?.maxLength ?? 0);
      if (d.validation) {
        evalTok = evalOut;
        const v = await prepareDataset({ ...common, dataFile: d.validation, out: evalTok });
        log(`data: ${v.written} validation samples${skipped(v.skipped)}`);
        longest = Math.max(longest, v.lengths.max);
      }
      // samples longer than the model's context: said once, as a warning event (the CLI prints it, the run's log
      // shows it); lengths that merely add up past it while every sample fits are the wizard's note, not the run's
      const long = plan.context && longest > plan.context ? contextWarning(plan.context, d.max_source_length, d.max_target_length, longest) : null;
      if (long) {
        const w: EngineEvent = { event: 'warning', code: 'PAST_CONTEXT', message: long };
        logFile.write(JSON.stringify(w) + '\n');
        opt.onEvent?.(w);
      }
      if (ac.signal.aborted) throw new Aborted();
      // a fresh run into a used folder: the earlier run's checkpoints and final outputs go (F3)
      if (spec.output.overwrite && !resume) {
        const old = earlierRunOutputs(out);
        if (old.length) {
          for (const n of old) fs.rmSync(path.join(out, n), { recursive: true, force: true });
          const ck = old.filter((n) => n.startsWith('checkpoint-'));
          const files = old.filter((n) => !n.startsWith('checkpoint-'));
          log(`--overwrite_output_dir: removed the earlier run's ${[ck.length ? `${ck.length} checkpoint folder(s)` : '', files.join(', ')].filter(Boolean).join(' and ')} from ${out}`);
          prep.earlier.commit(); // nothing of the earlier run is left to describe
        }
      }
      const job = toEngineJob(spec, { train, eval: evalTok }, resume);
      try {
        fs.writeFileSync(`${jobFile}.tmp`, JSON.stringify(job, null, 2));
        fs.renameSync(`${jobFile}.tmp`, jobFile);
      } catch (err) {
        fs.rmSync(`${jobFile}.tmp`, { force: true });
        throw asIo(err, jobFile);
      }
    } catch (err) {
      if (err instanceof Aborted || ac.signal.aborted) return stopped('stopped during data preparation');
      const e = withRunHint(isWriteFailure(err) ? ioError(err, undefined) : (err as Error), out) as Error & { hint?: string };
      fail(e instanceof IoError ? 'IO' : 'BAD_INPUT', e.message, e.hint);
      throw e;
    }

    const exe = engineBinary();
    if (!fs.existsSync(exe)) {
      prep.earlier?.restore();
      fail('UNAVAILABLE', `the engine binary is missing at ${exe}`, 'Build it with `npm run build:native`.');
      throw new Error(`the engine binary is missing at ${exe}`);
    }
    const nproc = spec.distributed.nproc_per_node;
    const port = nproc > 1 ? await freePort() : 0;
    if (ac.signal.aborted) return stopped('stopped during data preparation');
    endPreparing();
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
    let userKilled = false; // the handle's kill(): the user asked for it (a second Ctrl-C, "force stop")
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
      } else if (e.event === 'checkpoint_removed') {
        // by its folder: a resumed attempt (a new run row from the command line) removes earlier rows' checkpoints too
        this.store.checkpoints.removePath(String(e.path));
      } else if (e.event === 'done') {
        sawDone = e;
      } else if (e.event === 'started') {
        prep.earlier?.commit(); // the engine accepted the job (and the checkpoint it resumes from)
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
        sawError = { event: 'error', code: 'STALLED', message: `the worker sent nothing for ${Math.round(quiet / 1000)} s and was stopped`, hint: 'Check the run log (train-<run id>.log); a hung data loader, swap thrashing or a deadlock are the usual causes. Resume from the last checkpoint.' };
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
          prep.earlier?.restore(); // no-op once the engine has started
          this.own.delete(run.id);
          clearInterval(flushTimer);
          clearInterval(watchdog);
          flushMetrics();
          const fin = sawDone as EngineEvent | null;
          const allOk = ranks.every((r) => r.code === 0);
          const cause = rootCause();
          const who = (r: number) => (nproc > 1 ? `rank ${r}: ` : '');
          const watch = sawError as EngineEvent | null;
          // where the run can go on from: its newest checkpoint, or nowhere (then the same command starts it afresh)
          const ckpt = lastCheckpoint(out);
          const again = ckpt
            ? `Resume from ${path.basename(ckpt)}: run the same command again (or --resume_from_checkpoint latest; "Resume" in the app).`
            : 'No checkpoint was saved before it ended: run the same command again to start afresh.';
          if (fin && allOk) {
            this.store.runs.finish(run.id, fin.status === 'stopped' ? 'stopped' : 'completed', { exitCode: 0 });
          } else if (userKilled && !watch) {
            this.store.runs.finish(run.id, 'stopped', {
              errorMessage: `killed at the user's request${ckpt ? `; its newest checkpoint is ${path.basename(ckpt)}` : ', before any checkpoint was saved'}`,
              errorHint: again,
              exitCode: ranks[0]!.code,
              exitSignal: ranks[0]!.signal,
            });
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
              errorHint: again,
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
        userKilled = true;
        for (const w of workers) w.kill('SIGKILL');
      },
    };
  }
}
