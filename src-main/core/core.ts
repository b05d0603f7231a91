// core.ts — assembles the domain services (store, engine) and implements every API method once.
// Both transports (app/ for the Electron window, server/ for browser mode) wrap the same Core.
import fs from 'node:fs';
import path from 'node:path';

import type { AppStatus, MetricTuple, Res, RunSummary, RunsQuery, Settings, TrainedAdapter } from '../api/contract.js';
import { Dispatcher, EventHub, type Handlers } from '../api/dispatcher.js';
import { downsampleMinMax, METRIC_POINT_BUDGET } from '../api/downsample.js';
import { ApiError } from '../api/errors.js';
import { previewDataset } from './data/preview.js';
import type { Format } from './data/formats.js';
import { TEMPLATES, type TemplateName } from './data/templates.js';
import { loadTokenizer } from './data/tokenizer/index.js';
import { type EngineHandle, listDevices, loadEngine } from './engine/native.js';
import { CATALOG, familyOf, loraPresets, scanModelDirs } from './models/catalog.js';
import * as models from './models/manager.js';
import { modelsHome } from './models/download.js';
import { appRoot, appVersion, databaseFile, dataHome } from './paths.js';
import { cliCommand } from './runs/cli-command.js';
import { gpuIds, parseRunSpec, readAdapterFolder, resolveInitAdapter, type RunSpec, RunSpecError } from './runs/runspec.js';
import { contextWarning, lastCheckpoint, outputFolderProblem, planRun, resumeMismatch, type RunHandle, RunService, runLogToRead, runsUsingFolder, runWrittenFiles } from './runs/service.js';
import { ChatService, compareAnswers, type SamplingParams } from './chat/service.js';
import { EngineHost, type ExitInfo, type HostGenerateResult, type Launcher, type Placement } from './engine/host.js';
import { type BestMetric, type CheckpointEval, evaluateAllCheckpoints, evaluateCheckpoint, listEvals } from './eval/service.js';
import { exportMetrics } from './runs/metrics-export.js';
import { StoreError } from './store/db.js';
import { Store, type RunPageQuery, type RunRow } from './store/store.js';

export interface CoreOptions {
  home?: string;
  mode: 'desktop' | 'browser';
  /** better-sqlite3 binary for this runtime (Electron). */
  sqliteBinding?: string;
  /** How often the status event is re-sent (ms); 0 disables the timer. */
  statusIntervalMs?: number;
  /** How often to look for runs changed by other processes (ms); 0 disables it. */
  runsPollMs?: number;
  /** How often new metric points are pushed (ms); 0 disables it. */
  metricsPushMs?: number;
  /** How the engine host (interactive generation) is started: Electron's utilityProcess in the app. */
  hostLauncher?: Launcher;
}

function exitText(e: ExitInfo): string {
  return `the engine process ${e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`} at ${e.at}${e.failedRequests ? ` (${e.failedRequests} request(s) failed)` : ''}`;
}

function answerOf(r: HostGenerateResult): Res<'sendChat'>['answer'] {
  return { text: r.text, tokens: r.ids.length, promptTokens: r.promptTokens, finish: r.finish, seconds: r.seconds, device: r.device, restarted: r.restarted ? exitText(r.restarted) : null };
}

function evalInfo(e: CheckpointEval): Res<'listEvals'>[number] {
  return {
    evalId: e.evalId,
    runId: e.runId,
    checkpoint: e.checkpoint,
    step: e.step,
    data: e.data,
    loss: e.loss ? { loss: e.loss.loss, perplexity: e.loss.perplexity, tokens: e.loss.tokens } : null,
    report: e.report,
    predictions: e.predictions,
    ...(e.generation ? { generation: { skipped: e.generation.skipped, contextStops: e.generation.contextStops, context: e.generation.context } } : {}),
    ...(e.best !== undefined ? { best: e.best } : {}),
    seconds: e.seconds,
    createdAt: e.createdAt,
  };
}

/** Lets timers, other requests and the engine workers' output lines through between chunks of a long job, so that
 *  no request holds the main process for long (a worker blocks on a full stdout pipe after ~0.5 s of stalls). */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));
/** The most points one live push carries (a normal 500 ms holds a few thousand; more waits for the next push). */
const PUSH_LIMIT = 20_000;
/** A run's points are deleted this many steps of one series at a time (~40 ms), other requests served in between. */
const DELETE_CHUNK = 20_000;
/** A backlog of more rows than this (another process wrote a history at once) is not pushed: clients refetch. */
const BACKLOG_LIMIT = 100_000;
/** getMetrics after a rowid: more new points than this are answered as a downsampled step range instead. */
const TAIL_LIMIT = 50_000;

const DEFAULT_SETTINGS: Settings = { locale: 'en', modelDirs: [], inferenceDevice: 'auto', inferencePrecision: 'auto', inferenceQuantization: 'auto' };

type MetricSummary = ReturnType<Store['metrics']['summaries']> extends Map<number, infer V> ? V : never;

export function toSummary(r: RunRow, m?: MetricSummary): RunSummary {
  const spec = (r.spec ?? {}) as Partial<RunSpec>;
  const maxSteps = spec.training?.max_steps;
  return {
    id: r.id,
    experimentId: r.experimentId,
    name: r.name,
    status: r.status,
    createdAt: r.createdAt,
    startedAt: r.startedAt,
    endedAt: r.endedAt,
    errorCode: r.errorCode,
    errorMessage: r.errorMessage,
    tags: r.tags ?? [],
    modelPath: spec.model?.path ?? null,
    // several training files: listed, comma-separated
    dataPath: Array.isArray(spec.data?.train) ? spec.data.train.join(', ') : (spec.data?.train ?? null),
    method: spec.method ?? null,
    quantization: spec.model?.quantization && spec.model.quantization !== 'none' ? spec.model.quantization : null,
    finalLoss: m?.finalLoss ?? null,
    bestEvalLoss: m?.bestEvalLoss ?? null,
    bestEvalStep: m?.bestEvalStep ?? null,
    lastStep: m?.lastStep ?? null,
    maxSteps: typeof maxSteps === 'number' && maxSteps > 0 ? maxSteps : null,
    tokens: m?.tokens ?? null,
    lr: finite(spec.training?.learning_rate),
    // a full fine-tune has no adapter: its spec's LoRA defaults mean nothing
    loraR: spec.method === 'full' ? null : finite(spec.lora?.r),
    activeSeconds: r.activeSeconds ?? null,
    attemptStartedAt: r.attemptStartedAt ?? null,
  };
}
const finite = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** Dotted paths of the leaves of a JSON value (arrays are leaves). */
function leaves(v: unknown, prefix = '', out = new Map<string, unknown>()): Map<string, unknown> {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) leaves(x, prefix ? `${prefix}.${k}` : k, out);
  } else out.set(prefix, v);
  return out;
}

/** The RunSpec fields whose values differ between runs (missing counts as a value). */
export function specDiff(specs: readonly unknown[]): { path: string; values: unknown[] }[] {
  const flat = specs.map((s) => leaves(s));
  const paths = [...new Set(flat.flatMap((f) => [...f.keys()]))].sort();
  return paths
    .map((p) => ({ path: p, values: flat.map((f) => (f.has(p) ? f.get(p) : null)) }))
    .filter((d) => new Set(d.values.map((v) => JSON.stringify(v ?? null))).size > 1);
}

function badInput(err: unknown): never {
  if (err instanceof ApiError) throw err;
  if (err instanceof RunSpecError) throw new ApiError('BAD_REQUEST', err.message, { fields: err.fields });
  const e = err as Error & { hint?: string; code?: string };
  const code = e.code && /^[A-Z_]+$/.test(e.code) ? e.code : 'BAD_INPUT';
  throw new ApiError(code as never, e.message ?? String(err), e.hint ? { hint: e.hint } : {});
}

/** Store errors are the user's to act on (a name taken, a newer database): say so with their hint. */
function asApiError(err: unknown): never {
  if (err instanceof StoreError) {
    const conflict = /already exists/.test(err.message);
    throw new ApiError(conflict ? 'CONFLICT' : 'IO', err.message, err.hint ? { hint: err.hint } : {});
  }
  throw err;
}

export class Core {
  readonly store: Store;
  readonly events = new EventHub();
  readonly dispatcher: Dispatcher;
  readonly home: string;
  readonly interruptedAtStart: number;
  private readonly engine: EngineHandle;
  private readonly timer: NodeJS.Timeout | undefined;
  private lastStatusJson = '';
  private dataVersion = -1;
  private readonly runSeen = new Map<number, string>();
  private runsPolled = false;
  private readonly runsTimer: NodeJS.Timeout | undefined;
  readonly runs: RunService;
  private readonly handles = new Map<number, RunHandle>();
  private metricsRowid = 0;
  private hostInstance: EngineHost | null = null;
  private readonly ops = new Map<string, AbortController>();
  private chatInstance: ChatService | null = null;
  private readonly metricsTimer: NodeJS.Timeout | undefined;
  /** runs whose rows are being deleted (chunk by chunk) */
  private readonly deleting = new Map<number, Promise<unknown>>();

  constructor(private readonly opts: CoreOptions) {
    this.home = opts.home ?? dataHome();
    fs.mkdirSync(this.home, { recursive: true });
    this.store = Store.open(databaseFile(this.home), opts.sqliteBinding ? { nativeBinding: opts.sqliteBinding } : {});
    this.interruptedAtStart = this.store.runs.markInterrupted();
    this.engine = loadEngine();
    this.runs = new RunService(this.store, (run) => this.emitRun(run));
    this.dispatcher = new Dispatcher(this.handlers());
    // live charts: new metric points (from this process's runs and from CLI runs alike) are pushed in batches
    this.metricsRowid = this.store.metrics.maxRowid();
    const metricsEvery = opts.metricsPushMs ?? 500;
    if (metricsEvery > 0) {
      this.metricsTimer = setInterval(() => this.pushMetrics(), metricsEvery);
      this.metricsTimer.unref();
    }
    // Runs written by other processes (a CLI `llms-train train` beside the app) show up live: SQLite's
    // data_version changes when another connection commits, and the changed runs are pushed as events.
    this.pollRuns();
    const runsEvery = opts.runsPollMs ?? 1000;
    if (runsEvery > 0) {
      this.runsTimer = setInterval(() => this.pollRuns(), runsEvery);
      this.runsTimer.unref();
    }
    const every = opts.statusIntervalMs ?? 5000;
    if (every > 0) {
      this.timer = setInterval(() => this.publishStatus(false), every);
      this.timer.unref();
    }
  }

  status(): AppStatus {
    const devices = listDevices(this.engine);
    return {
      version: appVersion(),
      mode: this.opts.mode,
      engine: { available: this.engine.addon !== null, version: this.engine.version, error: this.engine.error },
      devices,
      gpus: devices.filter((d) => d.kind === 'cuda'),
      home: this.home,
      database: this.store.file,
      inference: this.inferencePlacement(this.settings()),
    };
  }

  /** Whether the engine lists CUDA device `index` (a usable GPU). */
  private gpuListed(index: number): boolean {
    return listDevices(this.engine).some((d) => d.kind === 'cuda' && d.index === index);
  }

  /** Push the status event; unless forced, only when something a user sees has changed. */
  publishStatus(force = true): void {
    const s = this.status();
    const visible = JSON.stringify({ ...s, devices: s.devices.map((d) => ({ ...d, memoryFree: Math.round(d.memoryFree / 2 ** 28) })) });
    if (!force && visible === this.lastStatusJson) return;
    this.lastStatusJson = visible;
    this.events.emit('status', s);
  }

  /** Pushes runChanged for every run whose state changed since the last look (any process's writes). */
  pollRuns(): void {
    const v = this.store.db.pragma('data_version', { simple: true }) as number;
    if (v === this.dataVersion) return;
    this.dataVersion = v;
    const first = !this.runsPolled;
    this.runsPolled = true;
    for (const r of this.store.runs.list({ limit: 200 })) {
      const sig = `${r.status}|${r.startedAt}|${r.endedAt}|${r.errorCode}`;
      if (this.runSeen.get(r.id) === sig) continue;
      this.runSeen.set(r.id, sig);
      if (!first) this.emitRun(r);
    }
  }

  /** The runs a list asks for (filtered, sorted and paged in SQL), rows another process left behind repaired first. */
  private runsPage(req: RunsQuery): ReturnType<Store['runs']['page']> {
    const q: RunPageQuery = { limit: req.limit ?? 1000 };
    for (const k of ['experimentId', 'status', 'tag', 'query', 'sort', 'dir', 'offset'] as const) if (req[k] !== undefined) (q as Record<string, unknown>)[k] = req[k];
    // rows another process left behind (killed while running or queued) are repaired before they are shown
    if (this.store.runs.markInterrupted(undefined, (id) => this.runs.owns(id))) this.pollRuns();
    return this.store.runs.page(q);
  }

  summarize(rows: readonly RunRow[]): RunSummary[] {
    const m = this.store.metrics.summaries(rows.map((r) => r.id));
    return rows.map((r) => toSummary(r, m.get(r.id)));
  }

  emitRun(r: RunRow): void {
    this.runSeen.set(r.id, `${r.status}|${r.startedAt}|${r.endedAt}|${r.errorCode}`);
    this.events.emit('runChanged', this.summarize([r])[0]!);
  }

  /** Pushes the metric points added since the last push, one event per run: read by rowid (the table's own order,
   *  a range seek), at most PUSH_LIMIT points per push; a backlog beyond BACKLOG_LIMIT becomes one metricsResync. */
  pushMetrics(): void {
    if (!this.store.db.open) return;
    // the newest rows were deleted (a run deleted): SQLite hands their rowids out again, so look from there
    const top = this.store.metrics.maxRowid();
    if (top < this.metricsRowid) this.metricsRowid = top;
    if (top - this.metricsRowid > BACKLOG_LIMIT) {
      // pushing it slice by slice would hold live points back for minutes: every client fetches what it shows instead
      this.metricsRowid = top;
      this.events.emit('metricsResync', { lastRowid: top });
      return;
    }
    const rows = this.store.metrics.since(this.metricsRowid, PUSH_LIMIT);
    if (!rows.length) return;
    const byRun = new Map<number, { points: MetricTuple[]; last: number }>();
    for (const r of rows) {
      let e = byRun.get(r.runId);
      if (!e) byRun.set(r.runId, (e = { points: [], last: 0 }));
      e.points.push([r.step, r.name, r.value, r.time]);
      e.last = r.rowid;
    }
    this.metricsRowid = rows[rows.length - 1]!.rowid;
    for (const [runId, e] of byRun) {
      e.points.sort((a, b) => a[0] - b[0]); // by step; rows of one step keep their order
      this.events.emit('metrics', { runId, points: e.points, lastRowid: e.last });
    }
  }

  /** Deletes a run: its output folder if asked (asynchronously: checkpoints can be gigabytes), its points chunk by
   *  chunk (other requests served in between), then the run row with its checkpoints and evaluations. Resuming or
   *  deleting it again meanwhile is refused. */
  private deleteRunRows(id: number, folder: string | null): Promise<string[]> {
    const p = (async () => {
      // the run's own files only; the folder goes when nothing else is left in it (a model beside its adapter, the
      // user's notes or data stay, and are named)
      let kept: string[] = [];
      if (folder) {
        for (const n of runWrittenFiles(folder)) await fs.promises.rm(path.join(folder, n), { recursive: true, force: true });
        for (const d of [path.join(folder, 'data'), folder]) {
          try {
            if (fs.readdirSync(d).length === 0) await fs.promises.rmdir(d);
          } catch {
            /* gone already */
          }
        }
        kept = fs.existsSync(folder) ? fs.readdirSync(folder).sort() : [];
      }
      while (this.store.metrics.deleteChunk(id, DELETE_CHUNK) > 0) await yieldToLoop();
      this.store.runs.delete(id);
      this.runSeen.delete(id);
      const top = this.store.metrics.maxRowid();
      if (top < this.metricsRowid) this.metricsRowid = top;
      return kept;
    })().finally(() => this.deleting.delete(id));
    this.deleting.set(id, p);
    return p;
  }

  /** A run's metrics for a chart (see the contract's getMetrics). */
  private async metrics(req: { id: number; afterRowid?: number | undefined; names?: string[] | undefined; fromStep?: number | undefined; toStep?: number | undefined; maxPoints?: number | undefined }): Promise<Res<'getMetrics'>> {
    this.run(req.id);
    if (req.fromStep !== undefined && req.toStep !== undefined && req.fromStep > req.toStep) {
      throw new ApiError('BAD_REQUEST', `Invalid request: fromStep (${req.fromStep}) is after toStep (${req.toStep})`, { fields: [{ path: 'fromStep', message: 'must not be after toStep' }] });
    }
    const maxPoints = req.maxPoints ?? METRIC_POINT_BUDGET;
    // every point up to here is in the answer; pushes after it carry newer ones
    const lastRowid = this.store.metrics.maxRowid();
    const downsampled: string[] = [];
    let fromStep = req.fromStep;
    if (req.afterRowid) {
      const tail = this.store.db.prepare('SELECT COUNT(*) AS n, MIN(step) AS first FROM metrics WHERE rowid > ? AND +run_id = ?').get(req.afterRowid, req.id) as { n: number; first: number | null };
      if (tail.n <= TAIL_LIMIT) {
        const rows = this.store.metrics.all(req.id, { afterRowid: req.afterRowid, ...(req.names ? { names: req.names } : {}) }).filter((p) => (req.fromStep === undefined || p.step >= req.fromStep) && (req.toStep === undefined || p.step <= req.toStep));
        const byName = new Map<string, MetricTuple[]>();
        for (const p of rows) {
          let l = byName.get(p.name);
          if (!l) byName.set(p.name, (l = []));
          l.push([p.step, p.name, p.value, p.time]);
        }
        const points: MetricTuple[] = [];
        for (const [name, l] of byName) {
          const kept = downsampleMinMax(l, maxPoints, (p) => p[0], (p) => p[2]);
          if (kept !== l) downsampled.push(name);
          points.push(...kept);
        }
        points.sort((a, b) => a[0] - b[0]);
        return { points, lastRowid: Math.max(lastRowid, req.afterRowid), maxPoints, downsampled };
      }
      // far behind: the steps from the first missed one, budgeted like any range
      fromStep = Math.max(fromStep ?? 0, tail.first ?? 0);
    }
    const names = req.names ?? this.store.metrics.names(req.id);
    const points: MetricTuple[] = [];
    for (const [i, name] of names.entries()) {
      if (i > 0) await yieldToLoop();
      const s = this.store.metrics.range(req.id, name, { ...(fromStep !== undefined ? { fromStep } : {}), ...(req.toStep !== undefined ? { toStep: req.toStep } : {}), maxPoints });
      if (s.downsampled) downsampled.push(name);
      for (const p of s.points) points.push([p.step, name, p.value, p.time]);
    }
    points.sort((a, b) => a[0] - b[0]); // stable: one step's points keep the series order
    return { points, lastRowid, maxPoints, downsampled };
  }

  /** Runs a cancellable model operation under its opId, with progress events. */
  private async modelOp<T>(opId: string, fn: (signal: AbortSignal, progress: (p: { stage: string; done: number; total: number; name: string; speed?: number | null; eta?: number | null }) => void) => Promise<T>): Promise<T> {
    if (this.ops.has(opId)) throw new ApiError('CONFLICT', `operation ${opId} is already running`);
    const ac = new AbortController();
    this.ops.set(opId, ac);
    let last = 0;
    const progress = (p: { stage: string; done: number; total: number; name: string; speed?: number | null; eta?: number | null }) => {
      const now = Date.now();
      if (now - last < 200 && p.done < p.total) return; // throttled
      last = now;
      this.events.emit('modelProgress', { opId, stage: p.stage, done: p.done, total: p.total, name: p.name, speed: p.speed ?? null, eta: p.eta ?? null });
    };
    try {
      return await fn(ac.signal, progress);
    } catch (err) {
      return badInput(err);
    } finally {
      this.ops.delete(opId);
    }
  }

  private registerModel(dir: string, hfId?: string): void {
    let modelType: string | null = null;
    try {
      modelType = (JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { model_type?: string }).model_type ?? null;
    } catch {
      /* an adapter or a folder without config: listed by path */
    }
    const fam = familyOf(modelType, dir);
    this.store.models.upsert({ path: dir, name: hfId ?? path.basename(dir), family: fam?.id ?? null, modelType, ...(hfId ? { hfId } : {}) });
  }

  /** Where chat, predictions and evaluations compute: the settings, with "auto" resolved against this machine (the first
   *  usable GPU in bf16, else the CPU in fp32). */
  inferencePlacement(s: Settings): Placement & { quantization: Settings['inferenceQuantization'] } {
    let device = s.inferenceDevice;
    if (device === 'auto') {
      const gpu = listDevices(this.engine).find((d) => d.kind === 'cuda');
      device = gpu ? `cuda:${gpu.index}` : 'cpu';
    }
    const precision = s.inferencePrecision === 'auto' ? (device.startsWith('cuda') ? 'bf16' : 'fp32') : s.inferencePrecision;
    return { device, precision, quantization: s.inferenceQuantization };
  }

  /** The engine host for chat and evaluation: a child process started on first use, restarted after a crash. */
  get host(): EngineHost {
    if (!this.hostInstance) {
      this.hostInstance = new EngineHost({ ...(this.opts.hostLauncher ? { launcher: this.opts.hostLauncher } : {}), placement: this.inferencePlacement(this.settings()) });
      this.hostInstance.on('exit', (e: ExitInfo) => this.events.emit('engineHost', { event: 'exit', message: `${exitText(e)}; it restarts on the next request` }));
      this.hostInstance.on('restart', (e: { reason: ExitInfo }) => this.events.emit('engineHost', { event: 'restart', message: `restarted after ${exitText(e.reason)}` }));
    }
    return this.hostInstance;
  }

  get chat(): ChatService {
    if (!this.chatInstance) this.chatInstance = new ChatService(this.store, this.host);
    return this.chatInstance;
  }

  private run(id: number): RunRow {
    const r = this.store.runs.get(id);
    if (!r) throw new ApiError('NOT_FOUND', `run ${id} does not exist`);
    return r;
  }

  /** Starts a RunService run in the background; resolves once it has a row (or fails before one exists). */
  private async launch(spec: RunSpec, opt: { experimentId?: number; tags?: string[]; ignoreEstimate?: boolean; runId?: number }): Promise<RunSummary> {
    let handle: RunHandle;
    try {
      handle = await this.runs.start(spec, {
        cacheDir: path.join(this.home, 'cache', 'tok'),
        ...(opt.experimentId ? { experimentId: opt.experimentId } : {}),
        ...(opt.tags ? { tags: opt.tags } : {}),
        ...(opt.ignoreEstimate ? { ignoreEstimate: true } : {}),
        ...(opt.runId !== undefined ? { runId: opt.runId } : {}),
        // the app never starts a second run in another run's folder (the service writes the run's own log)
        exclusiveOutput: true,
      });
    } catch (err) {
      return badInput(err);
    }
    this.handles.set(handle.runId, handle);
    void handle.done.finally(() => this.handles.delete(handle.runId));
    return this.summarize([this.run(handle.runId)])[0]!;
  }

  /** Registers a dataset file with its detected format and record count (parsed, not tokenized). */
  private async registerDataset(file: string, name: string): Promise<Res<'addDataset'>> {
    let format: string | null = null;
    let records: number | null = null;
    let warning: string | undefined;
    try {
      const p = await previewDataset({ file, rows: 0, statsLimit: 0 });
      format = p.format;
      records = p.records;
      if (p.records === 0) warning = `${file} holds no records${p.bytes === 0 ? ' (the file is empty)' : ''}: it cannot be used for training until it has some`;
      else if (p.errorCount >= p.records) warning = `no record of ${file} is usable (${p.errorCount} bad); open its preview to see why`;
    } catch (err) {
      // a binary file (model weights picked by mistake) is refused; other unreadable files are still listed
      // (their preview says what is wrong)
      if ((err as { code?: string }).code === 'BAD_INPUT' && /binary content/.test((err as Error).message)) return badInput(err);
    }
    const row = this.store.datasets.upsert({ path: file, name, format, records });
    return { id: row.id, path: row.path, name: row.name, format: row.format, records: row.records, addedAt: row.addedAt, ...(warning ? { warning } : {}) };
  }

  private normalizeSpec(input: unknown): RunSpec {
    try {
      return parseRunSpec(input);
    } catch (err) {
      return badInput(err);
    }
  }

  /** A new run's spec: validated, and an adapter it continues (lora.init_adapter) read for its LoRA configuration. */
  private newRunSpec(input: unknown): { spec: RunSpec; warnings: string[] } {
    const spec = this.normalizeSpec(input);
    const given = (input as { lora?: unknown } | null)?.lora;
    try {
      return resolveInitAdapter(spec, given && typeof given === 'object' ? (given as Record<string, unknown>) : null);
    } catch (err) {
      return badInput(err);
    }
  }

  settings(): Settings {
    return { ...DEFAULT_SETTINGS, ...this.store.settings.get<Partial<Settings>>('app', {}) };
  }

  private handlers(): Handlers {
    return {
      getStatus: () => this.status(),
      getSettings: () => this.settings(),
      updateSettings: async (patch) => {
        const next: Settings = { ...this.settings() };
        if (patch.locale !== undefined) next.locale = patch.locale;
        if (patch.modelDirs !== undefined) next.modelDirs = patch.modelDirs;
        if (patch.inferenceDevice !== undefined) next.inferenceDevice = patch.inferenceDevice;
        if (patch.inferencePrecision !== undefined) next.inferencePrecision = patch.inferencePrecision;
        if (patch.inferenceQuantization !== undefined) next.inferenceQuantization = patch.inferenceQuantization;
        const before = this.settings();
        this.store.settings.set('app', next);
        // the engine host loads models where the settings say: a change ends its child (the next request starts anew)
        if (before.inferenceDevice !== next.inferenceDevice || before.inferencePrecision !== next.inferencePrecision || before.inferenceQuantization !== next.inferenceQuantization) {
          await this.host.setPlacement(this.inferencePlacement(next));
          this.publishStatus();
        }
        return next;
      },
      listExperiments: () => this.store.experiments.list(),
      createExperiment: (req) => {
        try {
          return this.store.experiments.create(req.name, req.description ?? '');
        } catch (err) {
          return asApiError(err);
        }
      },
      listRuns: (req) => this.summarize(this.runsPage(req).rows),
      listRunsPage: (req) => {
        const { rows, total } = this.runsPage(req);
        return { runs: this.summarize(rows), total, offset: req.offset ?? 0, tags: this.store.runs.tags() };
      },
      getRun: (req) => {
        const r = this.run(req.id);
        return { ...this.summarize([r])[0]!, spec: r.spec, specVersion: r.specVersion, outputDir: r.outputDir, errorHint: r.errorHint, notes: r.notes, live: this.handles.has(r.id) };
      },
      modelCatalog: () => {
        const registered = this.store.models.list().map((m) => ({ path: m.path, name: m.name, modelType: m.modelType, source: 'registered' as const }));
        const known = new Set(registered.map((m) => path.resolve(m.path)));
        const scanned = scanModelDirs(this.settings().modelDirs).filter((m) => !known.has(path.resolve(m.path)));
        return {
          families: CATALOG.map((f) => ({ ...f, models: f.models.map((m) => ({ ...m })) })),
          local: [...registered, ...scanned],
          templates: [...TEMPLATES],
          presets: loraPresets(path.join(appRoot(), 'configs')),
        };
      },
      inspectModel: async (req) => {
        if (!this.engine.addon) throw new ApiError('UNAVAILABLE', this.engine.error ?? 'the engine is not available');
        try {
          const info = await this.engine.addon.inspect(req.path);
          const fam = familyOf(info.model_type, req.path);
          return { ...info, catalogFamily: fam?.id ?? null, template: fam?.template ?? null };
        } catch (err) {
          return badInput(err);
        }
      },
      inspectAdapter: (req) => {
        try {
          const a = readAdapterFolder(req.path);
          const l = a.lora;
          const options = (['bias', 'rank_pattern', 'alpha_pattern', 'exclude_modules', 'layers_to_transform', 'layers_pattern'] as const).filter((k) => l[k] !== undefined && l[k] !== null);
          return {
            path: a.dir,
            r: l.r,
            alpha: l.alpha,
            dropout: l.dropout,
            targetModules: l.target_modules,
            modulesToSave: l.modules_to_save,
            useDora: l.use_dora === true,
            useRslora: l.use_rslora === true,
            options,
            baseModel: a.baseModel,
            lora: l as unknown as Record<string, unknown>,
          };
        } catch (err) {
          return badInput(err);
        }
      },
      listAdapters: (req) => {
        const model = req.model ? path.resolve(req.model) : null;
        const out: TrainedAdapter[] = [];
        const seen = new Set<string>();
        const limit = model ? 200 : 500;
        for (const r of this.store.runs.list({ limit: 100_000 })) {
          const spec = r.spec as { method?: string; model?: { path?: string }; data?: { template?: string } } | null;
          const full = spec?.method === 'full';
          if ((spec?.method !== 'lora' && !(full && req.includeFull)) || typeof spec?.model?.path !== 'string') continue;
          const base = path.resolve(spec.model.path);
          if (model && base !== model) continue;
          const add = (p: string | null, step: number | null) => {
            if (!p) return;
            const abs = path.resolve(p);
            if (seen.has(abs) || !fs.existsSync(path.join(abs, full ? 'config.json' : 'adapter_config.json'))) return;
            seen.add(abs);
            out.push({ path: abs, runId: r.id, runName: r.name, step, model: base, template: spec.data?.template ?? null, full });
          };
          if (r.status === 'completed') add(r.outputDir, null);
          for (const c of this.store.checkpoints.list(r.id).slice().reverse()) add(c.path, c.isFinal ? null : c.step);
          if (out.length >= limit) break;
        }
        return out.slice(0, limit);
      },
      previewDataset: async (req) => {
        try {
          let tokenizer = null;
          if (req.modelPath) tokenizer = await loadTokenizer(req.modelPath);
          const template = (req.template ?? 'raw') as TemplateName;
          return await previewDataset({
            file: req.path,
            format: (req.format ?? null) as Format | null,
            template,
            columns: {
              ...(req.promptColumn ? { promptColumn: req.promptColumn } : {}),
              ...(req.responseColumn ? { responseColumn: req.responseColumn } : {}),
              ...(req.historyColumn ? { historyColumn: req.historyColumn } : {}),
            },
            tokenizer,
            modelDir: req.modelPath ?? null,
            ...(req.maxSourceLength ? { maxSourceLength: req.maxSourceLength } : {}),
            ...(req.maxTargetLength ? { maxTargetLength: req.maxTargetLength } : {}),
            rows: req.rows ?? 5,
          });
        } catch (err) {
          return badInput(err);
        }
      },
      importDataset: (req) => {
        const safe = path.basename(req.name).replace(/[^\w.\-\u4e00-\u9fff]+/g, '_').replace(/^\.+/, '') || 'dataset.json';
        const dir = path.join(this.home, 'datasets');
        fs.mkdirSync(dir, { recursive: true });
        const bytes = req.encoding === 'base64' ? Buffer.from(req.content, 'base64') : Buffer.from(req.content, 'utf8');
        let file = path.join(dir, safe);
        for (let i = 2; fs.existsSync(file); i++) {
          // the same file imported again (same bytes under this name or a numbered one): its entry, not a copy
          if (fs.statSync(file).size === bytes.length && fs.readFileSync(file).equals(bytes)) return this.registerDataset(file, req.name);
          file = path.join(dir, safe.replace(/(\.[^.]*)?$/, `-${i}$1`));
        }
        const tmp = `${file}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, bytes);
        fs.renameSync(tmp, file);
        return this.registerDataset(file, req.name).catch((err: unknown) => {
          fs.rmSync(file, { force: true }); // a refused upload (binary content) is not kept
          throw err;
        });
      },
      removeDataset: (req) => {
        const d = this.store.datasets.list().find((x) => x.id === req.id);
        if (!d) throw new ApiError('NOT_FOUND', `dataset ${req.id} does not exist`);
        const imported = path.resolve(d.path).startsWith(path.join(this.home, 'datasets') + path.sep);
        this.store.datasets.delete(d.id);
        const fileRemoved = req.deleteFile && imported && fs.existsSync(d.path);
        if (fileRemoved) fs.rmSync(d.path, { force: true });
        return { id: d.id, fileRemoved };
      },
      addDataset: (req) => {
        const file = path.resolve(req.path);
        if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new ApiError('NOT_FOUND', `${file} is not a file`, { hint: 'Check the path; datasets are .json, .jsonl, .csv, .tsv or .txt files (or gzip-compressed).' });
        return this.registerDataset(file, req.name ?? path.basename(file));
      },
      planRun: async (req) => {
        const { spec, warnings } = this.newRunSpec(req.spec);
        const bad = outputFolderProblem(spec);
        if (bad) throw new ApiError(bad.code, bad.message, { hint: bad.hint, fields: [{ path: 'output.dir', message: bad.code === 'IO' ? 'is a file' : "is the base model's folder" }] });
        if (spec.training.precision !== 'fp32' && spec.method === 'full') warnings.push(`${spec.training.precision}: a full fine-tune trains every weight, so it computes in fp32 (the precision applies to frozen base weights)`);
        const missing = gpuIds(spec).filter((i) => !this.gpuListed(i));
        if (missing.length) warnings.push(`GPU ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not usable here: the engine will fall back to the CPU`);
        const owners = runsUsingFolder(this.store, spec.output.dir);
        let blocked: string | null = null;
        if (owners.length && !spec.resume_from) {
          const o = owners.at(-1)!;
          blocked = `the output folder ${path.resolve(spec.output.dir)} is the output folder of run #${o.id} (${o.name}, ${o.status}): starting will be refused; choose another output folder`;
        } else if (fs.existsSync(spec.output.dir) && fs.readdirSync(spec.output.dir).length && !spec.output.overwrite && !spec.resume_from) {
          warnings.push(`the output folder ${spec.output.dir} is not empty: the run resumes from its last checkpoint if it has one, else it is refused (tick "overwrite")`);
        }
        // the checkpoint the run would resume from, checked against the new settings before launch
        const from = spec.resume_from ? (spec.resume_from === 'latest' ? lastCheckpoint(spec.output.dir) : spec.resume_from) : spec.output.overwrite ? null : lastCheckpoint(spec.output.dir);
        if (from && fs.existsSync(from)) {
          const diff = resumeMismatch(spec, from);
          if (diff.length) warnings.push(`the run would resume from ${path.resolve(from)}, which does not match these settings (${diff.join('; ')}): the engine will refuse it; choose another output folder or tick "overwrite"`);
        }
        let plan;
        try {
          plan = await planRun(spec);
        } catch (err) {
          return badInput(err);
        }
        // samples longer than the model's context: a warning (HF trains past it too; extending it may be the point)
        const long = contextWarning(plan.context, spec.data.max_source_length, spec.data.max_target_length);
        if (long) warnings.push(long);
        const est = plan.estimate;
        return {
          spec: spec as unknown as Record<string, unknown>,
          cli: cliCommand(spec),
          warnings,
          unsupported: plan.unsupported,
          blocked,
          fits: plan.fits,
          freeBytes: plan.freeBytes,
          gpus: plan.gpus,
          suggestions: plan.suggestions,
          summary: plan.summary,
          estimate: est
            ? {
                bytes: { ...est.bytes } as Record<string, number>,
                stepSeconds: est.stepSeconds,
                steps: spec.training.max_steps > 0 ? spec.training.max_steps : null,
                totalSeconds: spec.training.max_steps > 0 && est.stepSeconds !== null ? est.stepSeconds * spec.training.max_steps : null,
              }
            : null,
        };
      },
      startRun: async (req) => {
        const { spec } = this.newRunSpec(req.spec);
        return this.launch(spec, { ...(req.experimentId ? { experimentId: req.experimentId } : {}), ...(req.tags ? { tags: req.tags } : {}), ...(req.ignoreEstimate ? { ignoreEstimate: true } : {}) });
      },
      stopRun: (req) => {
        const r = this.run(req.id);
        const h = this.handles.get(r.id);
        if (r.status === 'queued' && !h) {
          this.runs.cancelQueued(r.id);
          return this.summarize([r])[0]!;
        }
        if (!h) {
          if (r.status === 'running') throw new ApiError('CONFLICT', `run ${r.id} is supervised by another process (worker pid ${r.workerPid ?? '?'})`, { hint: 'Stop it where it was started (Ctrl-C in its terminal).' });
          throw new ApiError('CONFLICT', `run ${r.id} is not running (${r.status})`);
        }
        if (r.status === 'queued') this.runs.cancelQueued(r.id);
        else if (req.force) h.kill();
        else h.stop();
        return this.summarize([r])[0]!;
      },
      resumeRun: async (req) => {
        const r = this.run(req.id);
        if (this.deleting.has(r.id)) throw new ApiError('CONFLICT', `run ${r.id} is being deleted`);
        if (r.status === 'running' || r.status === 'queued') throw new ApiError('CONFLICT', `run ${r.id} is ${r.status}`);
        if (r.status === 'completed') throw new ApiError('CONFLICT', `run ${r.id} has completed`, { hint: 'Start a new run with more steps instead.' });
        const spec = this.normalizeSpec({ ...(r.spec as object), resume_from: 'latest' });
        if (!r.outputDir) throw new ApiError('CONFLICT', `run ${r.id} has no output folder`);
        try {
          this.runs.resolveResume(spec);
        } catch (err) {
          throw new ApiError('CONFLICT', (err as Error).message, { hint: 'Without a checkpoint there is nothing to resume from: start it again with “New run from these settings” on its page.' });
        }
        return this.launch(spec, { runId: r.id, ignoreEstimate: true });
      },
      deleteRun: async (req) => {
        const r = this.run(req.id);
        if (this.deleting.has(r.id)) throw new ApiError('CONFLICT', `run ${r.id} is being deleted`);
        if (r.status === 'running' || (r.status === 'queued' && this.handles.has(r.id))) throw new ApiError('CONFLICT', `run ${r.id} is ${r.status}`, { hint: 'Stop it first.' });
        let removeFiles: string | null = null;
        if (req.deleteFiles && r.outputDir && fs.existsSync(r.outputDir)) {
          // never a folder (or a folder above one) that another recorded run uses: it holds that run's files
          const others = runsUsingFolder(this.store, r.outputDir, r.id, true);
          if (others.length) {
            const o = others[0]!;
            throw new ApiError(
              'CONFLICT',
              `${r.outputDir} ${path.resolve(o.outputDir!) === path.resolve(r.outputDir) ? 'is also the output folder of' : 'holds or lies inside the output folder of'} run #${o.id} (${o.name}, ${o.status})${others.length > 1 ? ` and ${others.length - 1} other run(s)` : ''}; not deleting it`,
              { hint: `Delete run #${r.id} without its folder, or delete run #${o.id} too first.` },
            );
          }
          // only a folder this run wrote: it holds the run's runspec.json
          if (!fs.existsSync(path.join(r.outputDir, 'runspec.json'))) throw new ApiError('CONFLICT', `${r.outputDir} does not look like this run's output folder (no runspec.json); not deleting it`);
          removeFiles = r.outputDir;
        }
        const kept = await this.deleteRunRows(r.id, removeFiles);
        return { id: r.id, filesRemoved: removeFiles !== null, ...(kept.length ? { keptFiles: kept } : {}) };
      },
      updateRun: (req) => {
        const r = this.run(req.id);
        this.store.runs.update(r.id, {
          ...(req.name !== undefined ? { name: req.name } : {}),
          ...(req.tags !== undefined ? { tags: req.tags } : {}),
          ...(req.notes !== undefined ? { notes: req.notes } : {}),
        });
        const next = this.run(r.id);
        this.emitRun(next);
        return this.summarize([next])[0]!;
      },
      getMetrics: (req) => this.metrics(req),
      exportMetrics: async (req) => {
        this.run(req.id);
        try {
          return await exportMetrics(this.store, { runId: req.id, format: req.format, out: req.out, ...(req.names ? { names: req.names } : {}), ...(req.overwrite ? { overwrite: true } : {}) });
        } catch (err) {
          return badInput(err);
        }
      },
      listCheckpoints: (req) => {
        this.run(req.id);
        // a checkpoint whose folder is gone (deleted by hand, or with another run's folder) is listed as missing
        return this.store.checkpoints.list(req.id).map(({ id, step, path: p, sizeBytes, isFinal, createdAt }) => ({ id, step, path: p, sizeBytes, isFinal, createdAt, missing: !p || !fs.existsSync(p) }));
      },
      getRunLog: (req) => {
        const r = this.run(req.id);
        const file = r.outputDir ? runLogToRead(r.outputDir, r.id) : null;
        if (!file || !fs.existsSync(file)) return { lines: [] };
        // the tail only: read at most the last 1 MiB
        const size = fs.statSync(file).size;
        const fd = fs.openSync(file, 'r');
        try {
          const n = Math.min(size, 1 << 20);
          const buf = Buffer.alloc(n);
          fs.readSync(fd, buf, 0, n, size - n);
          const lines = buf.toString('utf8').split('\n').filter((l) => l.length);
          if (n < size) lines.shift();
          return { lines: lines.slice(-(req.lines ?? 200)) };
        } finally {
          fs.closeSync(fd);
        }
      },
      listChatSessions: () => this.chat.listSessions(),
      createChatSession: (req) => {
        try {
          return this.chat.createSession({
            model: req.model,
            ...(req.adapter ? { adapter: req.adapter } : {}),
            ...(req.tokenizer ? { tokenizer: req.tokenizer } : {}),
            ...(req.template ? { template: req.template as never } : {}),
            ...(req.system !== undefined ? { system: req.system } : {}),
            ...(req.title ? { title: req.title } : {}),
            ...(req.params ? { params: req.params as SamplingParams } : {}),
          });
        } catch (err) {
          return badInput(err);
        }
      },
      getChatSession: (req) => {
        const s = this.chat.getSession(req.id);
        if (!s) throw new ApiError('NOT_FOUND', `chat session ${req.id} does not exist`);
        return s;
      },
      updateChatSession: (req) => {
        try {
          const { id, ...patch } = req;
          return this.chat.updateSession(id, patch as never);
        } catch (err) {
          return badInput(err);
        }
      },
      deleteChatSession: (req) => {
        if (!this.chat.deleteSession(req.id)) throw new ApiError('NOT_FOUND', `chat session ${req.id} does not exist`);
        return { id: req.id };
      },
      clearChatSession: (req) => ({ removed: this.chat.clear(req.id) }),
      sendChat: async (req) => {
        try {
          const r = await this.chat.send(req.id, req.text, (delta) => this.events.emit('chatDelta', { sessionId: req.id, delta }), req.params ? { params: req.params as SamplingParams } : {});
          return { user: r.user, assistant: r.assistant, answer: answerOf(r.result) };
        } catch (err) {
          return badInput(err);
        }
      },
      stopChat: () => {
        if (this.hostInstance) this.hostInstance.stop();
        return { stopped: this.hostInstance !== null };
      },
      compareAnswers: async (req) => {
        try {
          const target = (t: typeof req.a) => ({ model: t.model, ...(t.adapter ? { adapter: t.adapter } : {}), ...(t.tokenizer ? { tokenizer: t.tokenizer } : {}), ...(t.template ? { template: t.template as never } : {}) });
          const r = await compareAnswers(
            this.host,
            { a: target(req.a), b: target(req.b), prompt: req.prompt, ...(req.system !== undefined ? { system: req.system } : {}), ...(req.params ? { params: req.params as SamplingParams } : {}) },
            (side, delta) => this.events.emit('chatDelta', { requestId: req.requestId, side, delta }),
          );
          const side = (x: (typeof r)['a']) => ('error' in x ? { error: x.error } : answerOf(x));
          return { a: side(r.a), b: side(r.b) };
        } catch (err) {
          return badInput(err);
        }
      },
      evaluateCheckpoint: async (req) => {
        this.run(req.runId);
        try {
          const e = await evaluateCheckpoint(this.store, {
            runId: req.runId,
            checkpointPath: req.checkpointPath,
            data: req.data,
            host: this.host,
            ...(req.limit ? { limit: req.limit } : {}),
            ...(req.predict !== undefined ? { predict: req.predict } : {}),
            ...(req.loss !== undefined ? { loss: req.loss } : {}),
            onProgress: (p) => this.events.emit('evalProgress', { runId: req.runId, ...p }),
          });
          this.emitRun(this.run(req.runId));
          return evalInfo(e);
        } catch (err) {
          return badInput(err);
        }
      },
      evaluateAllCheckpoints: async (req) => {
        this.run(req.runId);
        try {
          const r = await evaluateAllCheckpoints(this.store, {
            runId: req.runId,
            data: req.data,
            host: this.host,
            ...(req.metric ? { metric: req.metric as BestMetric } : {}),
            ...(req.limit ? { limit: req.limit } : {}),
            ...(req.predict !== undefined ? { predict: req.predict } : {}),
            ...(req.loss !== undefined ? { loss: req.loss } : {}),
            onProgress: (p) => this.events.emit('evalProgress', { runId: req.runId, ...p }),
          });
          this.emitRun(this.run(req.runId));
          return { evals: r.evals.map(evalInfo), best: r.best };
        } catch (err) {
          return badInput(err);
        }
      },
      downloadModel: (req) =>
        this.modelOp(req.opId, async (signal, progress) => {
          const r = await models.download({
            repo: req.repo,
            dest: path.join(modelsHome(this.home), req.repo.replace('/', '--')),
            ...(req.revision ? { revision: req.revision } : {}),
            ...(req.endpoint ? { endpoint: req.endpoint } : {}),
            ...(req.token ? { token: req.token } : {}),
            signal,
            onProgress: (p) => progress({ stage: 'download', done: p.bytes, total: p.total, name: p.file, speed: p.speed, eta: p.eta }),
          });
          this.registerModel(r.dir, req.repo);
          return r;
        }),
      convertModel: (req) =>
        this.modelOp(req.opId, async (signal, progress) => {
          const r = await models.convert(req.path, { ...(req.out ? { out: req.out } : {}), signal, onProgress: progress });
          if (req.out) this.registerModel(r.out);
          return r;
        }),
      mergeAdapter: (req) =>
        this.modelOp(req.opId, async (signal, progress) => {
          const r = await models.merge({ model: req.model, adapter: req.adapter, out: req.out, ...(req.dtype ? { dtype: req.dtype } : {}), signal, onProgress: progress });
          this.registerModel(r.out);
          return r;
        }),
      exportGguf: (req) =>
        this.modelOp(req.opId, async (signal, progress) => {
          const r = await models.exportModel({
            model: req.model,
            out: req.out,
            ...(req.adapter ? { adapter: req.adapter } : {}),
            ...(req.adapterOnly ? { adapterOnly: true } : {}),
            ...(req.dtype ? { dtype: req.dtype } : {}),
            ...(req.template ? { template: req.template as never } : {}),
            ...(req.name ? { name: req.name } : {}),
            ...(req.overwrite ? { overwrite: true } : {}),
            signal,
            onProgress: progress,
          });
          return { out: r.gguf, modelfile: r.modelfile, bytes: r.bytes };
        }),
      cancelModelOp: (req) => {
        const ac = this.ops.get(req.opId);
        ac?.abort();
        return { cancelled: Boolean(ac) };
      },
      deleteModel: (req) => {
        const target = path.resolve(req.path);
        if (req.deleteFiles) {
          try {
            models.remove(target, { home: this.home });
          } catch (err) {
            return badInput(err);
          }
        }
        this.store.db.prepare('DELETE FROM models WHERE path = ?').run(req.path);
        this.store.db.prepare('DELETE FROM models WHERE path = ?').run(target);
        return { path: target, filesRemoved: req.deleteFiles };
      },
      listEvals: (req) => {
        this.run(req.runId);
        return listEvals(this.store, { runId: req.runId }).map(evalInfo);
      },
      compareRuns: (req) => {
        const rows = req.ids.map((id) => this.run(id));
        const sums = this.summarize(rows);
        const evals = rows.flatMap((r) => {
          const cps = new Map(this.store.checkpoints.list(r.id).map((c) => [c.id, c.step]));
          return this.store.evals.list({ runId: r.id }).map((e) => ({ runId: r.id, checkpointStep: e.checkpointId ? (cps.get(e.checkpointId) ?? null) : null, dataPath: e.dataPath, metrics: e.metrics, createdAt: e.createdAt }));
        });
        return { runs: sums.map((s, i) => ({ ...s, spec: rows[i]!.spec })), diff: specDiff(rows.map((r) => r.spec)), evals };
      },
      listModels: () => this.store.models.list().map(({ id, path, name, family, modelType, addedAt }) => ({ id, path, name, family, modelType, addedAt })),
      listDatasets: () => this.store.datasets.list().map(({ id, path, name, format, records, addedAt }) => ({ id, path, name, format, records, addedAt })),
    };
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.runsTimer) clearInterval(this.runsTimer);
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    for (const h of this.handles.values()) h.stop();
    if (this.hostInstance) void this.hostInstance.dispose();
    for (const ac of this.ops.values()) ac.abort();
    this.store.close();
  }
}
