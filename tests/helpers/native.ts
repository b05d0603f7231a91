// native.ts — where the integration tests find the built engine and the reference Python, and how they read
// what either side writes (F32 safetensors) and compare logits. LLMS_TRAIN_NATIVE_DIR points at another build of
// llmt-engine (default native/build/bin); LLMT_PY at another Python (default .venv-test, tests/python/setup.sh).
import fs from 'node:fs';
import path from 'node:path';

import { expect } from 'vitest';

import { ROOT } from './app';

export const NATIVE = process.env.LLMS_TRAIN_NATIVE_DIR || path.join(ROOT, 'native', 'build', 'bin');
export const ENGINE = path.join(NATIVE, 'llmt-engine');
export const PY = process.env.LLMT_PY || path.join(ROOT, '.venv-test', 'bin', 'python');

/** Every tensor of an all-F32 safetensors file (fails the test on another dtype). */
export function readSafetensors(file: string): Map<string, Float32Array> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const out = new Map<string, Float32Array>();
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    expect(v.dtype).toBe('F32');
    const [b, e] = v.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    out.set(k, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
  }
  return out;
}

/** The largest absolute difference of two [batch][token][vocab] logit arrays. */
export function maxAbsDiff(a: number[][][], b: number[][][]): number {
  let m = 0;
  a.forEach((row, i) => row.forEach((tok, j) => tok.forEach((x, k) => (m = Math.max(m, Math.abs(x - b[i]![j]![k]!))))));
  return m;
}
