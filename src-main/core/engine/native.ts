// native.ts — loading the engine's Node addon (native/build/bin/llmt.node) and reporting why when it
// cannot be loaded. Nothing else in the core imports the addon directly.
import fs from 'node:fs';
import path from 'node:path';

import type { LlmtAddon, NativeDevice } from '../../../native/addon/index.js';
import { nativeDir } from '../paths.js';

export type { LlmtAddon, NativeDevice };

export interface EngineHandle {
  addon: LlmtAddon | null;
  version: string | null;
  error: string | null;
}

let cached: EngineHandle | undefined;

export function addonPath(dir = nativeDir()): string {
  return path.join(dir, 'llmt.node');
}

export function engineBinary(dir = nativeDir()): string {
  return path.join(dir, process.platform === 'win32' ? 'llmt-engine.exe' : 'llmt-engine');
}

/** Load the addon once. Never throws: a missing or broken addon is reported in `error`. */
export function loadEngine(dir = nativeDir()): EngineHandle {
  if (cached) return cached;
  const file = addonPath(dir);
  if (!fs.existsSync(file)) {
    cached = { addon: null, version: null, error: `engine addon not found at ${file}; build it with \`npm run build:native\`` };
    return cached;
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const addon = require(file) as LlmtAddon;
    cached = { addon, version: addon.version(), error: null };
  } catch (err) {
    cached = {
      addon: null,
      version: null,
      error: `engine addon at ${file} failed to load: ${(err as Error).message}; rebuild it with \`npm run build:native\``,
    };
  }
  return cached;
}

/** Devices from the engine; without an engine, no devices are known. The CPU has index 0; a GPU's index is its CUDA
 *  ordinal (what `--device cuda:N` and the job's "device" take) — the engine lists GPU N at position 1 + N. */
export function listDevices(engine = loadEngine()): NativeDevice[] {
  if (!engine.addon) return [];
  return engine.addon.listDevices().map((d) => (d.kind === 'cuda' ? { ...d, index: d.index - 1 } : d));
}
