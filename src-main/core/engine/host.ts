// host.ts — the engine host: interactive generation (chat, predict, evaluation) in a child process, so an
// engine failure (a crash, an abort in native code, running out of memory) cannot take the app down. Inside
// Electron's main process the child is an Electron utility process, elsewhere a Node child process. A child
// that dies fails the requests it was serving with ENGINE_CRASHED; the next request starts a fresh one and the
// host reports the restart (a 'restart' event and `restarted` on that result) with the exit code or signal.
import { type ChildProcess, fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';

import { appRoot } from '../paths.js';
import type { GenerateRequest, GenerateResult, LoadedInfo, ModelRef } from './generator.js';
import type { ChildMessage, ParentMessage, WireError } from './host-protocol.js';
import type { InferenceQuantization } from './quantization.js';

export type { GenerateRequest, GenerateResult, LoadedInfo, ModelRef };

export interface ExitInfo {
  code: number | null;
  signal: string | null;
  /** ISO time */
  at: string;
  /** requests that were in flight and failed */
  failedRequests: number;
}

export interface RestartInfo {
  reason: ExitInfo;
  pid: number | null;
}

export type HostGenerateResult = GenerateResult & {
  /** set on the first result after the host restarted its child: why the previous one ended */
  restarted: ExitInfo | null;
};

export class EngineHostError extends Error {
  constructor(
    message: string,
    /** ENGINE_CRASHED, DISPOSED, or the engine's own code (BAD_INPUT, IO, OOM, ABORTED, ...) */
    readonly code: string,
    readonly hint?: string,
    readonly exit?: ExitInfo,
    /** what the code does not tell: PROMPT_TOO_LONG (GenerateError's reason) */
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'EngineHostError';
  }
}

/** A started child, whatever started it. */
export interface ChildHandle {
  readonly pid: number | null;
  send(msg: ParentMessage): void;
  onMessage(fn: (msg: ChildMessage) => void): void;
  onExit(fn: (code: number | null, signal: string | null) => void): void;
  kill(): void;
}

export interface Launcher {
  kind: 'electron' | 'node';
  start(entry: string, env: NodeJS.ProcessEnv): ChildHandle;
}

export const nodeLauncher: Launcher = {
  kind: 'node',
  start(entry, env) {
    // the child's stdout goes to our stderr: stdout may carry a command's result (JSON)
    const child: ChildProcess = fork(entry, [], { env, execArgv: [], stdio: ['ignore', 2, 2, 'ipc'] });
    return {
      get pid() {
        return child.pid ?? null;
      },
      send: (m) => {
        if (child.connected) child.send(m);
      },
      onMessage: (fn) => child.on('message', (m) => fn(m as ChildMessage)),
      onExit: (fn) => child.once('exit', (code, signal) => fn(code, signal)),
      kill: () => child.kill('SIGKILL'),
    };
  },
};

/** The slice of Electron's utilityProcess module the host uses. */
export interface UtilityProcessModule {
  fork(modulePath: string, args?: string[], options?: { serviceName?: string; env?: NodeJS.ProcessEnv; stdio?: 'inherit' | 'pipe' | 'ignore' }): {
    pid?: number;
    postMessage(msg: unknown): void;
    on(event: 'message', fn: (msg: unknown) => void): unknown;
    on(event: 'exit', fn: (code: number) => void): unknown;
    kill(): boolean;
  };
}

export function electronLauncher(up: UtilityProcessModule): Launcher {
  return {
    kind: 'electron',
    start(entry, env) {
      const child = up.fork(entry, [], { serviceName: 'LLMs-train engine', env, stdio: 'inherit' });
      let exited = false;
      return {
        get pid() {
          return child.pid ?? null;
        },
        send: (m) => {
          if (!exited) child.postMessage(m);
        },
        onMessage: (fn) => child.on('message', (m) => fn(m as ChildMessage)),
        onExit: (fn) =>
          child.on('exit', (code) => {
            exited = true;
            fn(code, null);
          }),
        kill: () => void child.kill(),
      };
    },
  };
}

/**
 * Electron's utility process when this runs in Electron's main process, else a Node child. (The one place in
 * the core that asks for Electron, and only when it runs inside it; app/ may pass a launcher instead.)
 */
export function defaultLauncher(): Launcher {
  const inElectronMain = Boolean(process.versions.electron) && (process as { type?: string }).type === 'browser';
  if (inElectronMain) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { utilityProcess } = require('electron') as { utilityProcess?: UtilityProcessModule };
      if (utilityProcess && typeof utilityProcess.fork === 'function') return electronLauncher(utilityProcess);
    } catch {
      /* fall back to a Node child */
    }
  }
  return nodeLauncher;
}

/** The built child entry (dist/main/core/engine/host-child.js), also when this module runs from the sources. */
export function hostChildEntry(): string {
  const here = path.join(__dirname, 'host-child.js');
  if (fs.existsSync(here)) return here;
  return path.join(appRoot(), 'dist', 'main', 'core', 'engine', 'host-child.js');
}

export interface HostOptions {
  entry?: string;
  launcher?: Launcher;
  env?: NodeJS.ProcessEnv;
  /** CPU threads for the engine in the child (0: the engine's default) */
  threads?: number;
  /** models kept loaded in the child (default 2: A/B mode without reloading) */
  maxModels?: number;
  /** where the child's models compute ("cpu", "cuda:N", "auto") and their weights' precision; default cpu, fp32 */
  placement?: Placement;
}

export interface Placement {
  device: string;
  precision: string;
  /** the base's 4-bit quantization for models whose request names none (default "auto": as the adapter was trained) */
  quantization?: InferenceQuantization;
}

export interface HostStatus {
  running: boolean;
  pid: number | null;
  kind: 'electron' | 'node';
  /** children started so far */
  starts: number;
  restarts: number;
  lastExit: ExitInfo | null;
  inFlight: number;
}

interface Pending {
  op: ParentMessage['op'];
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  onDelta?: (text: string) => void;
}

interface Child {
  handle: ChildHandle;
  ready: Promise<void>;
  alive: boolean;
  pending: Map<string, Pending>;
}

let nextId = 0;
const newId = () => `${process.pid}-${++nextId}`;

export class EngineHost extends EventEmitter {
  private child: Child | null = null;
  private starts = 0;
  private lastExit: ExitInfo | null = null;
  /** the exit to report on the next result (cleared once reported) */
  private unreported: ExitInfo | null = null;
  private disposed = false;
  /** a child ended on purpose (setPlacement): its exit is not a crash */
  private retired: Child | null = null;
  private placement: Placement;
  private readonly launcher: Launcher;
  private readonly entry: string;

  constructor(private readonly opts: HostOptions = {}) {
    super();
    this.launcher = opts.launcher ?? defaultLauncher();
    this.entry = opts.entry ?? hostChildEntry();
    this.placement = opts.placement ?? { device: 'cpu', precision: 'fp32' };
  }

  /** Where models load from now on: a different placement ends the current child (its models were loaded for the
   *  old one; requests in flight fail with DISPOSED), and the next request starts a fresh one. */
  async setPlacement(p: Placement, timeoutMs = 5000): Promise<void> {
    if (p.device === this.placement.device && p.precision === this.placement.precision && (p.quantization ?? 'auto') === (this.placement.quantization ?? 'auto')) return;
    this.placement = { ...p };
    const c = this.child;
    if (!c?.alive) return;
    this.retired = c;
    this.child = null;
    await endChild(c, timeoutMs);
  }

  getPlacement(): Placement {
    return { ...this.placement };
  }

  status(): HostStatus {
    return {
      running: Boolean(this.child?.alive),
      pid: this.child?.alive ? this.child.handle.pid : null,
      kind: this.launcher.kind,
      starts: this.starts,
      restarts: Math.max(0, this.starts - 1),
      lastExit: this.lastExit,
      inFlight: this.child?.pending.size ?? 0,
    };
  }

  /** The child's pid (starting it if needed). */
  async pid(): Promise<number | null> {
    const c = this.ensure();
    await c.ready;
    return c.handle.pid;
  }

  private ensure(): Child {
    if (this.disposed) throw new EngineHostError('the engine host was disposed', 'DISPOSED');
    if (this.child?.alive) return this.child;
    if (!fs.existsSync(this.entry)) throw new EngineHostError(`the engine host entry ${this.entry} is missing`, 'ENGINE_UNAVAILABLE', 'Build the app with `npm run build:main`.');
    const env: NodeJS.ProcessEnv = { ...process.env, ...this.opts.env };
    if (this.opts.threads) env.LLMT_HOST_THREADS = String(this.opts.threads);
    if (this.opts.maxModels) env.LLMT_HOST_MAX_MODELS = String(this.opts.maxModels);
    env.LLMT_HOST_DEVICE = this.placement.device;
    env.LLMT_HOST_PRECISION = this.placement.precision;
    env.LLMT_HOST_QUANTIZATION = this.placement.quantization ?? 'auto';
    const handle = this.launcher.start(this.entry, env);
    this.starts++;
    let markReady!: () => void;
    let failReady!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => {
      markReady = res;
      failReady = rej;
    });
    ready.catch(() => {});
    const c: Child = { handle, ready, alive: true, pending: new Map() };
    this.child = c;
    handle.onMessage((m) => {
      if (m.type === 'ready') {
        markReady();
        return;
      }
      const p = c.pending.get(m.id);
      if (!p) return;
      if (m.type === 'delta') p.onDelta?.(m.text);
      else {
        c.pending.delete(m.id);
        if (m.type === 'result') p.resolve(m.result);
        else p.reject(toError(m.error));
      }
    });
    handle.onExit((code, signal) => {
      c.alive = false;
      const info: ExitInfo = { code, signal, at: new Date().toISOString(), failedRequests: c.pending.size };
      if (this.child === c) this.child = null;
      const expected = this.disposed || this.retired === c;
      if (this.retired === c) this.retired = null;
      if (!expected) {
        this.lastExit = info;
        this.unreported = info;
      }
      const how = signal ? `signal ${signal}` : `exit code ${code}`;
      const err = expected
        ? new EngineHostError('the engine host was disposed', 'DISPOSED')
        : new EngineHostError(
            `the engine process stopped unexpectedly (${how}); the app is unaffected and the engine restarts on the next request`,
            'ENGINE_CRASHED',
            'Try again; if it keeps failing, the model may not fit in memory or the files may be damaged.',
            info,
          );
      failReady(err);
      for (const p of c.pending.values()) p.reject(err);
      c.pending.clear();
      if (!expected) this.emit('exit', info);
    });
    if (this.starts > 1 && this.lastExit) {
      const info: RestartInfo = { reason: this.lastExit, pid: handle.pid };
      this.emit('restart', info);
    }
    return c;
  }

  private async call<T>(msg: ParentMessage, onDelta?: (text: string) => void): Promise<T> {
    const c = this.ensure();
    const p = new Promise<T>((resolve, reject) => {
      c.pending.set(msg.id, { op: msg.op, resolve: resolve as (v: unknown) => void, reject, ...(onDelta ? { onDelta } : {}) });
    });
    try {
      await c.ready;
    } catch (err) {
      c.pending.delete(msg.id);
      throw err;
    }
    c.handle.send(msg);
    return p;
  }

  /** Loads a model (+ adapter) in the child ahead of use; cached there per model + adapter. */
  load(ref: ModelRef): Promise<LoadedInfo> {
    return this.call<LoadedInfo>({ op: 'load', id: newId(), ref });
  }

  /** The prompt length of each request as generate() would lay it out (or why it cannot be); nothing is generated. */
  promptLengths(requests: GenerateRequest[]): Promise<(number | { error: string })[]> {
    return this.call<(number | { error: string })[]>({ op: 'promptLengths', id: newId(), requests });
  }

  unload(ref: ModelRef): Promise<boolean> {
    if (!this.child?.alive) return Promise.resolve(false);
    return this.call<boolean>({ op: 'unload', id: newId(), ref });
  }

  /**
   * Generates an answer; onDelta receives the text as it grows (complete characters only). Rejects with an
   * EngineHostError: ENGINE_CRASHED when the child died, else the engine's code (BAD_INPUT, IO, ...). An
   * aborted generation (signal, stop()) resolves with finish 'aborted' and the text so far.
   */
  async generate(request: GenerateRequest, onDelta?: (text: string) => void, opt: { signal?: AbortSignal } = {}): Promise<HostGenerateResult> {
    const id = newId();
    const signal = opt.signal;
    if (signal?.aborted) throw new EngineHostError('the request was aborted before it started', 'ABORTED');
    const onAbort = () => this.child?.alive && this.child.handle.send({ op: 'abort', id: newId(), target: id });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const r = await this.call<GenerateResult>({ op: 'generate', id, request }, onDelta);
      const restarted = this.unreported && this.starts > 1 ? this.unreported : null;
      this.unreported = null;
      return { ...r, restarted };
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Generates answers to several requests in one engine batch (same model, adapter, tokenizer, template and
   * params; each answer as generate() gives it alone). Errors and abort as generate(); no streaming.
   */
  async generateBatch(requests: GenerateRequest[], opt: { signal?: AbortSignal } = {}): Promise<HostGenerateResult[]> {
    const id = newId();
    const signal = opt.signal;
    if (signal?.aborted) throw new EngineHostError('the request was aborted before it started', 'ABORTED');
    const onAbort = () => this.child?.alive && this.child.handle.send({ op: 'abort', id: newId(), target: id });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const r = await this.call<GenerateResult[]>({ op: 'generateBatch', id, requests });
      const restarted = this.unreported && this.starts > 1 ? this.unreported : null;
      this.unreported = null;
      return r.map((x) => ({ ...x, restarted }));
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Stops every generation in flight (each resolves with finish 'aborted'). */
  stop(): void {
    if (this.child?.alive) this.child.handle.send({ op: 'abort', id: newId() });
  }

  /** Ends the child (models freed); pending requests fail with DISPOSED. The host cannot be used afterwards. */
  async dispose(timeoutMs = 5000): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const c = this.child;
    if (!c?.alive) return;
    await endChild(c, timeoutMs);
  }
}

/** Asks a child to stop (aborting its generations, freeing its models) and kills it if it has not exited in time. */
async function endChild(c: Child, timeoutMs: number): Promise<void> {
  const exited = new Promise<void>((res) => c.handle.onExit(() => res()));
  c.handle.send({ op: 'abort', id: newId() });
  c.handle.send({ op: 'dispose', id: newId() });
  const timer = setTimeout(() => c.handle.kill(), timeoutMs);
  await exited;
  clearTimeout(timer);
}

function toError(e: WireError): EngineHostError {
  return new EngineHostError(e.message, e.code, e.hint, undefined, e.reason);
}
