// host-protocol.ts — the messages between EngineHost (parent) and host-child.ts (child). Structured-clone
// values only (Electron's MessagePort and Node's IPC channel both carry them).
import type { GenerateRequest, GenerateResult, LoadedInfo, ModelRef } from './generator.js';

export type ParentMessage =
  | { op: 'load'; id: string; ref: ModelRef }
  | { op: 'generate'; id: string; request: GenerateRequest }
  /** several requests in one engine batch (same model, template and params) */
  | { op: 'generateBatch'; id: string; requests: GenerateRequest[] }
  /** the prompt length of each request (nothing generated) */
  | { op: 'promptLengths'; id: string; requests: GenerateRequest[] }
  /** target: a generate request's id; none: every request */
  | { op: 'abort'; id: string; target?: string }
  | { op: 'unload'; id: string; ref: ModelRef }
  | { op: 'dispose'; id: string };

export interface WireError {
  message: string;
  code: string;
  hint?: string;
  /** GenerateError's reason (PROMPT_TOO_LONG) */
  reason?: string;
}

export type ChildMessage =
  | { type: 'ready'; pid: number }
  | { id: string; type: 'delta'; text: string }
  | { id: string; type: 'result'; result: GenerateResult | GenerateResult[] | LoadedInfo | boolean | (number | { error: string })[] }
  | { id: string; type: 'error'; error: WireError };
