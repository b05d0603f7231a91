// core.ts — assembles the domain services (store, engine) and implements every API method once.
// Both transports (app/ for the Electron window, server/ for browser mode) wrap the same Core.
import fs from 'node:fs';

import type { AppStatus, Res, Settings } from '../api/contract.js';
import { Dispatcher, EventHub, type Handlers } from '../api/dispatcher.js';
import { ApiError } from '../api/errors.js';
import { type EngineHandle, listDevices, loadEngine } from './engine/native.js';
import { appVersion, databaseFile, dataHome } from './paths.js';
import { StoreError } from './store/db.js';
import { Store, type RunRow } from './store/store.js';

export interface CoreOptions {
  home?: string;
  mode: 'desktop' | 'browser';
  /** better-sqlite3 binary for this runtime (Electron). */
  sqliteBinding?: string;
  /** How often the status event is re-sent (ms); 0 disables the timer. */
  statusIntervalMs?: number;
  /** How often to look for runs changed by other processes (ms); 0 disables it. */
  runsPollMs?: number;
}

const DEFAULT_SETTINGS: Settings = { locale: 'en', modelDirs: [] };

function toSummary(r: RunRow): Res<'listRuns'>[number] {
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
  };
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

  constructor(private readonly opts: CoreOptions) {
    this.home = opts.home ?? dataHome();
    fs.mkdirSync(this.home, { recursive: true });
    this.store = Store.open(databaseFile(this.home), opts.sqliteBinding ? { nativeBinding: opts.sqliteBinding } : {});
    this.interruptedAtStart = this.store.runs.markInterrupted();
    this.engine = loadEngine();
    this.dispatcher = new Dispatcher(this.handlers());
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
    };
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
      if (!first) this.events.emit('runChanged', toSummary(r));
    }
  }

  settings(): Settings {
    return { ...DEFAULT_SETTINGS, ...this.store.settings.get<Partial<Settings>>('app', {}) };
  }

  private handlers(): Handlers {
    return {
      getStatus: () => this.status(),
      getSettings: () => this.settings(),
      updateSettings: (patch) => {
        const next: Settings = { ...this.settings() };
        if (patch.locale !== undefined) next.locale = patch.locale;
        if (patch.modelDirs !== undefined) next.modelDirs = patch.modelDirs;
        this.store.settings.set('app', next);
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
      listRuns: (req) => {
        const filter: Parameters<Store['runs']['list']>[0] = {};
        if (req.experimentId !== undefined) filter.experimentId = req.experimentId;
        if (req.status !== undefined) filter.status = req.status;
        if (req.limit !== undefined) filter.limit = req.limit;
        return this.store.runs.list(filter).map(toSummary);
      },
      getRun: (req) => {
        const r = this.store.runs.get(req.id);
        if (!r) throw new ApiError('NOT_FOUND', `run ${req.id} does not exist`);
        return { ...toSummary(r), spec: r.spec, specVersion: r.specVersion, outputDir: r.outputDir, errorHint: r.errorHint };
      },
      listModels: () => this.store.models.list().map(({ id, path, name, family, modelType, addedAt }) => ({ id, path, name, family, modelType, addedAt })),
      listDatasets: () => this.store.datasets.list().map(({ id, path, name, format, records, addedAt }) => ({ id, path, name, format, records, addedAt })),
    };
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.runsTimer) clearInterval(this.runsTimer);
    this.store.close();
  }
}
