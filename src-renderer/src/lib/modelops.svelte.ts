// modelops.svelte.ts — one cancellable model operation (download, convert, merge, GGUF export) as rune state:
// its opId, the latest `modelProgress` event for that opId, and its result or error. Used by the Models screen
// and the run view; rendered by components/ModelOpStatus.svelte. No UI here, no strings.
import type { EventPayload, MethodName, Req, Res } from '../../../src-main/api/contract';
import { api, ApiClientError } from '../api/client';

export type OpMethod = 'downloadModel' | 'convertModel' | 'mergeAdapter' | 'exportGguf';
export type OpState = 'running' | 'done' | 'failed' | 'cancelled';
export interface OpError {
  code: string;
  message: string;
  hint?: string | undefined;
}

export function errorInfo(err: unknown): OpError {
  return err instanceof ApiClientError ? { code: err.code, message: err.message, hint: err.hint } : { code: 'INTERNAL', message: String((err as Error)?.message ?? err) };
}

export class ModelOp<K extends OpMethod> {
  readonly opId: string;
  readonly method: K;
  /** what the operation is about, for its heading (a repo, a folder) */
  readonly subject: string;
  state = $state<OpState>('running');
  progress = $state.raw<EventPayload<'modelProgress'> | null>(null);
  result = $state.raw<Res<K> | null>(null);
  error = $state.raw<OpError | null>(null);
  /** the request as given (without its opId), so a caller can retry it (an export with overwrite: true) */
  readonly req: Omit<Req<K>, 'opId'>;
  private cancelling = false;

  constructor(method: K, subject: string, req: Omit<Req<K>, 'opId'>, onDone?: (r: Res<K>) => void, onFail?: (e: OpError, op: ModelOp<K>) => void) {
    this.method = method;
    this.subject = subject;
    this.req = req;
    this.opId = crypto.randomUUID();
    const off = api().on('modelProgress', (p) => {
      if (p.opId === this.opId) this.progress = p;
    });
    api()
      .call(method as MethodName, { ...req, opId: this.opId } as never)
      .then((r) => {
        this.result = r as Res<K>;
        this.state = 'done';
        onDone?.(r as Res<K>);
      })
      .catch((err: unknown) => {
        this.error = errorInfo(err);
        this.state = this.cancelling ? 'cancelled' : 'failed';
        if (!this.cancelling) onFail?.(this.error, this);
      })
      .finally(off);
  }

  async cancel(): Promise<void> {
    this.cancelling = true;
    try {
      await api().call('cancelModelOp', { opId: this.opId });
    } catch (err) {
      this.error = errorInfo(err);
    }
  }
}

// ---- paths as the user's platform writes them (the renderer has no `path` module) -------------------------------
const sepOf = (p: string) => (p.includes('\\') && !p.includes('/') ? '\\' : '/');
const trimEnd = (p: string) => (p.length > 1 ? p.replace(/[\\/]+$/, '') : p);

/** The last part of a path. */
export function baseName(p: string): string {
  const s = trimEnd(p);
  return s.slice(Math.max(s.lastIndexOf('/'), s.lastIndexOf('\\')) + 1);
}

/** A path joined with more parts, with the separator the path already uses. */
export function joinPath(dir: string, ...parts: string[]): string {
  return [trimEnd(dir), ...parts].join(sepOf(dir));
}

/** The same GGUF export again with overwrite: true — after the user agreed to replace the file an export was
 *  refused for (EXISTS); `onFail` as the first attempt's. */
export function exportAgainOverwriting(old: ModelOp<'exportGguf'>, onFail: (e: OpError, op: ModelOp<'exportGguf'>) => void): ModelOp<OpMethod> {
  return new ModelOp('exportGguf', old.subject, { ...old.req, overwrite: true }, undefined, onFail) as unknown as ModelOp<OpMethod>;
}
