// manager.ts — the model manager's service functions for the Models screen and the CLI: download, list,
// inspect, convert (.bin → safetensors), merge (adapter → HF folder), export (GGUF + Ollama Modelfile), delete.
// Engine work runs in the `llmt-engine` worker (a child process: a crash or a huge model never takes the app
// down; abort = SIGTERM, after which the engine removes its temporary output). No Electron, no transport.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import type { ModelInspection } from '../../../native/addon/index.js';
import type { TemplateName } from '../data/templates.js';
import { engineBinary } from '../engine/native.js';
import { dataHome, realish } from '../paths.js';
import { downloadModel, modelsHome, type DownloadOptions, type DownloadProgress } from './download.js';
import { isDoraAdapter } from './dora.js';
import { doraAdapterOnlyMessage, exportAdapterGguf, exportGguf, type ExportResult, type GgufDtype, modelfilePath, writesModelfile } from './gguf.js';

export type { DownloadProgress, ExportResult, ModelInspection };

/** Progress of an engine operation: `done` of `total` tensors, the current tensor's name. */
export interface OpProgress {
  stage: string;
  done: number;
  total: number;
  name: string;
}

export class ModelOpError extends Error {
  constructor(
    message: string,
    /** the engine's status name (BAD_INPUT, IO, UNSUPPORTED, ABORTED, …) or a download code */
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

interface RunOpts {
  onProgress?: (p: OpProgress) => void;
  signal?: AbortSignal;
}

/** A new output folder this call creates: removed again when an abort comes too late to stop the worker. */
type Created = { created?: string };

/** Runs llmt-engine with args; resolves with its stdout JSON; progress lines ("stage i/n name") from stderr. */
function runEngine<T>(args: string[], o: RunOpts & Created = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    if (o.signal?.aborted) return reject(new ModelOpError('stopped on request', 'ABORTED'));
    const child = spawn(engineBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let pending = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')));
    child.stderr.on('data', (b: Buffer) => {
      pending += b.toString('utf8');
      const lines = pending.split(/[\r\n]/);
      pending = lines.pop() ?? '';
      for (const line of lines) {
        const m = /^(\w+) (\d+)\/(\d+) (.*)$/.exec(line.trim());
        if (m) o.onProgress?.({ stage: m[1]!, done: Number(m[2]), total: Number(m[3]), name: m[4]! });
        else if (line.trim()) err += line + '\n';
      }
    });
    const onAbort = () => child.kill('SIGTERM');
    o.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => reject(new ModelOpError(`cannot start the engine (${engineBinary()}): ${e.message}`, 'IO', 'build it with `npm run build:native`')));
    child.on('close', (code) => {
      o.signal?.removeEventListener('abort', onAbort);
      if (code === 0 && o.signal?.aborted && o.created) {
        fs.rmSync(o.created, { recursive: true, force: true }); // finished as the stop came: honour the stop
        reject(new ModelOpError('stopped on request; nothing was written under the final name', 'ABORTED'));
        return;
      }
      if (code === 0) {
        try {
          resolve(JSON.parse(out) as T);
        } catch {
          reject(new ModelOpError(`the engine printed no result: ${out.slice(0, 200)}`, 'INTERNAL'));
        }
        return;
      }
      const msg = (err + pending).trim();
      const m = /llmt-engine: ([A-Z_]+): ([\s\S]*)/.exec(msg);
      if (o.signal?.aborted) reject(new ModelOpError('stopped on request; nothing was written under the final name', 'ABORTED'));
      else reject(new ModelOpError(m ? m[2]!.trim() : msg || `the engine exited with ${code}`, m ? m[1]! : 'INTERNAL'));
    });
  });
}

/** Downloads a Hub repository into the app's model folder (or `dest`); see download.ts. */
export async function download(o: DownloadOptions & { onProgress?: (p: DownloadProgress) => void }): Promise<{ dir: string; files: string[]; bytes: number }> {
  return downloadModel(o);
}

/** Describes an HF folder without loading its weights (safetensors or pytorch_model.bin). */
export function inspect(dir: string): Promise<ModelInspection> {
  return runEngine<ModelInspection>(['inspect', '--model', dir]);
}

export interface LocalModel {
  name: string;
  dir: string;
  /** bytes on disk */
  size: number;
  kind: 'model' | 'adapter' | 'gguf' | 'unknown';
}

/** Folders inside the app's model folder. */
export function list(home = dataHome()): LocalModel[] {
  const root = modelsHome(home);
  if (!fs.existsSync(root)) return [];
  const du = (p: string): number => {
    const st = fs.statSync(p);
    return st.isDirectory() ? fs.readdirSync(p).reduce((a, f) => a + du(path.join(p, f)), 0) : st.size;
  };
  return fs
    .readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !e.name.includes('.tmp-'))
    .map((e) => {
      const dir = path.join(root, e.name);
      const has = (f: string) => fs.existsSync(path.join(dir, f));
      const kind = has('adapter_config.json') ? 'adapter' : has('config.json') ? 'model' : fs.readdirSync(dir).some((f) => f.endsWith('.gguf')) ? 'gguf' : 'unknown';
      return { name: e.name, dir, size: du(dir), kind };
    });
}

/** pytorch_model.bin (sharded too) or adapter_model.bin → safetensors, in place or into a new folder `out`. */
export function convert(dir: string, o: RunOpts & { out?: string; maxShardBytes?: number } = {}): Promise<{ out: string; kind: string; files: string[]; tensors: number; bytes: number }> {
  const created = o.out && !fs.existsSync(o.out) ? o.out : undefined;
  return runEngine(['convert', dir, ...(o.out ? ['--out', o.out] : []), ...(o.maxShardBytes ? ['--max-shard-bytes', String(o.maxShardBytes)] : [])], { ...o, created });
}

export interface MergeOptions extends RunOpts {
  model: string;
  adapter: string;
  out: string;
  dtype?: 'auto' | 'float32' | 'float16' | 'bfloat16';
  maxShardBytes?: number;
}

export interface MergeResult {
  out: string;
  dtype: string;
  merged_modules: number;
  replaced_tensors: number;
  vocab_before: number;
  vocab_after: number;
  tokenizer_from: 'adapter' | 'base';
  files: string[];
  bytes: number;
  /** how many of the merged modules were DoRA (rows scaled by the magnitude) */
  dora_modules?: number;
}

/** Merges a LoRA or DoRA adapter (or a Chinese-LLaMA-Alpaca delta) into its base as a new HF folder (the engine's
 *  merge; a DoRA adapter as PEFT's merge_and_unload does it). */
export function merge(o: MergeOptions): Promise<MergeResult> {
  return runEngine<MergeResult>(
    ['merge', '--model', o.model, '--adapter', o.adapter, '--out', o.out, '--dtype', o.dtype ?? 'auto', ...(o.maxShardBytes ? ['--max-shard-bytes', String(o.maxShardBytes)] : [])],
    { ...o, created: fs.existsSync(o.out) ? undefined : o.out },
  );
}

export interface ExportOptions extends RunOpts {
  /** a model folder, or a base model when `adapter` is given (merged into a temporary folder first) */
  model: string;
  adapter?: string;
  /** the .gguf file */
  out: string;
  dtype?: GgufDtype;
  template?: TemplateName;
  name?: string;
  /** with `adapter`: write llama.cpp's LoRA adapter GGUF of the adapter alone (load it next to the base's GGUF)
   *  instead of merging; `model` is the base it was trained on */
  adapterOnly?: boolean;
  /** replace an existing output file (the .gguf and its .Modelfile); without it an existing one is refused (EXISTS) */
  overwrite?: boolean;
}


/** Whether `child` is `parent` or inside it. */
export function isWithin(child: string, parent: string): boolean {
  const rel = path.relative(realish(parent), realish(child));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * The export's output, checked before anything is written: never the source model or adapter folder or a file
 * inside it (whatever `overwrite` says: that replaced a model's own weights), never a folder, and an existing
 * .gguf or .Modelfile only with `overwrite` (else code EXISTS, which a UI answers with "Replace?").
 */
export function checkExportTarget(o: Pick<ExportOptions, 'model' | 'adapter' | 'adapterOnly' | 'out' | 'template' | 'overwrite'>): void {
  const out = path.resolve(o.out);
  const modelfile = !o.adapterOnly && writesModelfile(o.template) ? modelfilePath(out) : null;
  for (const [kind, src] of [['model', o.model], ['adapter', o.adapter]] as const) {
    if (!src) continue;
    for (const f of [out, modelfile]) {
      if (!f || !isWithin(f, src)) continue;
      const what = path.resolve(f) === path.resolve(src) || realish(f) === realish(src) ? `is the ${kind} folder itself` : `is inside the ${kind} folder ${path.resolve(src)}`;
      throw new ModelOpError(`the output ${f} ${what}: the export would replace the ${kind}'s own files; choose a file outside it (such as ${path.join(path.dirname(path.resolve(src)), `${path.basename(path.resolve(src))}.gguf`)})`, 'BAD_INPUT');
    }
  }
  for (const f of [out, modelfile]) {
    if (f && fs.existsSync(f) && fs.statSync(f).isDirectory())
      throw new ModelOpError(`${f} is a folder; give a file name such as ${path.join(f, f === out ? 'model.gguf' : 'model.Modelfile')}`, 'BAD_INPUT');
  }
  if (o.overwrite) return;
  const existing = [out, modelfile].filter((f): f is string => f !== null && fs.existsSync(f));
  if (existing.length)
    throw new ModelOpError(
      `${existing.join(' and ')} ${existing.length > 1 ? 'already exist' : 'already exists'}; not replacing ${existing.length > 1 ? 'them' : 'it'}`,
      'EXISTS',
      'Choose another file name, or ask to replace it (overwrite: true; CLI --overwrite).',
    );
}

/** gguf.ts's errors as ModelOpError (UNSUPPORTED, ABORTED, else BAD_INPUT). */
function asOpError(e: unknown): unknown {
  if (e instanceof ModelOpError || !(e instanceof Error)) return e;
  const code = (e as { code?: unknown }).code;
  return new ModelOpError(e.message, typeof code === 'string' ? code : 'BAD_INPUT');
}

/** GGUF (+ Ollama Modelfile `<name>.Modelfile`); converts a .bin folder and merges an adapter first when needed;
 *  with `adapterOnly`, the adapter alone as llama.cpp's LoRA GGUF. */
export async function exportModel(o: ExportOptions): Promise<ExportResult> {
  if (o.adapterOnly && !o.adapter) throw new ModelOpError('adapterOnly needs an adapter folder', 'BAD_INPUT');
  checkExportTarget(o);
  fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
  const work = fs.mkdtempSync(path.join(path.dirname(path.resolve(o.out)), '.llmt-export-'));
  const onProgress = (done: number, total: number, name: string) => o.onProgress?.({ stage: 'export', done, total, name });
  try {
    let dir = o.model;
    if (o.adapter && o.adapterOnly) {
      if (isDoraAdapter(o.adapter)) throw new ModelOpError(`UNSUPPORTED: ${doraAdapterOnlyMessage(o.adapter)}`, 'UNSUPPORTED');
      let adapter = o.adapter;
      if (!fs.existsSync(path.join(adapter, 'adapter_model.safetensors'))) {
        adapter = path.join(work, 'adapter');
        await convert(o.adapter, { out: adapter, onProgress: o.onProgress, signal: o.signal });
      }
      return await exportAdapterGguf({ modelDir: o.model, adapterDir: adapter, out: o.out, dtype: o.dtype, name: o.name, signal: o.signal, onProgress });
    }
    if (o.adapter) {
      dir = path.join(work, 'merged');
      await merge({ model: o.model, adapter: o.adapter, out: dir, onProgress: o.onProgress, signal: o.signal });
    } else if (!fs.existsSync(path.join(dir, 'model.safetensors')) && !fs.existsSync(path.join(dir, 'model.safetensors.index.json'))) {
      const conv = path.join(work, 'converted');
      await convert(dir, { out: conv, onProgress: o.onProgress, signal: o.signal });
      dir = conv;
    }
    return await exportGguf({
      modelDir: dir,
      out: o.out,
      dtype: o.dtype,
      template: o.template,
      name: o.name,
      signal: o.signal,
      onProgress,
    });
  } catch (e) {
    throw asOpError(e);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Deletes a model folder inside the app's model folder (anything else needs `allowOutside`). */
export function remove(dir: string, o: { home?: string; allowOutside?: boolean } = {}): void {
  const root = path.resolve(modelsHome(o.home ?? dataHome()));
  const target = path.resolve(dir);
  if (!o.allowOutside && (path.dirname(target) !== root || target === root))
    throw new ModelOpError(`refusing to delete ${target}: it is not a model folder inside ${root}`, 'BAD_INPUT');
  if (!fs.existsSync(target)) throw new ModelOpError(`${target} does not exist`, 'IO');
  if (!fs.existsSync(path.join(target, 'config.json')) && !fs.existsSync(path.join(target, 'adapter_config.json')) && !fs.readdirSync(target).some((f) => f.endsWith('.gguf') || f.endsWith('.part')))
    throw new ModelOpError(`refusing to delete ${target}: it holds no model (no config.json, adapter_config.json or .gguf)`, 'BAD_INPUT');
  fs.rmSync(target, { recursive: true, force: true });
}
