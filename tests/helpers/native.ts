// native.ts — where the integration tests find the built engine and the reference Python, and how they read
// what either side writes (F32 safetensors) and compare logits. LLMS_TRAIN_NATIVE_DIR points at another build of
// llmt-engine (default native/build/bin); LLMT_PY at another Python (default .venv-test, tests/python/setup.sh).
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { expect } from 'vitest';

import { ROOT } from './app';

export const NATIVE = process.env.LLMS_TRAIN_NATIVE_DIR || path.join(ROOT, 'native', 'build', 'bin');
export const ENGINE = path.join(NATIVE, 'llmt-engine');
export const PY = process.env.LLMT_PY || path.join(ROOT, '.venv-test', 'bin', 'python');
/** The HF transformers + PEFT reference (tests/python/hf_reference.py), run with PY. */
export const HF_REF = path.join(ROOT, 'tests', 'python', 'hf_reference.py');

/** Runs a command (OpenMP on 2 threads, 5 minutes at most); a failure throws with its output. */
export function runOk(cmd: string, args: string[]): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  if (r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  return r;
}
/** hf_reference.py's stdout (runOk). */
export const refPy = (args: string[]): string => runOk(PY, [HF_REF, ...args]).stdout;
/** llmt-engine's stdout (runOk). */
export const engineOk = (args: string[]): string => runOk(ENGINE, args).stdout;

/** The parity tests' batch: two rows of 10 tokens, prompt tokens masked (-100) in the labels. */
export const PARITY_TOKENS = {
  input_ids: [
    [1, 37, 99, 14, 250, 61, 8, 77, 300, 12],
    [1, 5, 6, 7, 8, 9, 10, 11, 12, 13],
  ],
  labels: [
    [-100, -100, -100, 14, 250, 61, 8, 77, 300, 12],
    [-100, 5, 6, 7, 8, 9, 10, 11, 12, 13],
  ],
};

/** A fresh temp folder for a reference comparison (PARITY_TOKENS in its tokens.json), after checking that the
 *  reference Python exists. */
export function referenceTmp(prefix: string): string {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.writeFileSync(path.join(dir, 'tokens.json'), JSON.stringify(PARITY_TOKENS));
  return dir;
}

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

/** Writes tensors as an all-F32 safetensors file (the header padded to 8 bytes, as the format asks). */
export function writeSafetensors(file: string, tensors: Record<string, { shape: number[]; data: Float32Array }>): void {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const [k, v] of Object.entries(tensors)) {
    header[k] = { dtype: 'F32', shape: v.shape, data_offsets: [off, off + v.data.byteLength] };
    off += v.data.byteLength;
  }
  let h = Buffer.from(JSON.stringify(header));
  h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  fs.writeFileSync(file, Buffer.concat([len, h, ...Object.values(tensors).map((v) => Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength))]));
}

/** A deeper copy of an HF llama-style folder with all-F32 weights (`model.layers.N.` names): `layers` blocks, block l
 *  a copy of block l mod (the original count), its values scaled by 1 + l/100 so that no two blocks are equal. */
export function deepenModel(src: string, dst: string, layers: number): void {
  fs.mkdirSync(dst, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as { num_hidden_layers: number };
  const orig = cfg.num_hidden_layers;
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: layers }));
  const file = path.join(src, 'model.safetensors');
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { shape: number[] }>;
  const values = readSafetensors(file);
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, data] of values) {
    const m = /^model\.layers\.(\d+)\.(.*)$/.exec(k);
    if (!m) {
      out[k] = { shape: header[k]!.shape, data };
      continue;
    }
    if (Number(m[1]) !== 0) continue;
    for (let l = 0; l < layers; l++) {
      const from = values.get(`model.layers.${l % orig}.${m[2]}`)!;
      out[`model.layers.${l}.${m[2]}`] = { shape: header[k]!.shape, data: from.map((x) => x * (1 + l / 100)) };
    }
  }
  writeSafetensors(path.join(dst, 'model.safetensors'), out);
}

/** The largest absolute difference of two [batch][token][vocab] logit arrays. */
export function maxAbsDiff(a: number[][][], b: number[][][]): number {
  let m = 0;
  a.forEach((row, i) => row.forEach((tok, j) => tok.forEach((x, k) => (m = Math.max(m, Math.abs(x - b[i]![j]![k]!))))));
  return m;
}

/** Per tensor of `ref`: the largest |ref − ours| and the largest |ref| (the relative error is their ratio). */
export function gradDiffs(ours: Map<string, Float32Array>, ref: Map<string, Float32Array>): { name: string; diff: number; scale: number }[] {
  return [...ref].map(([name, r]) => {
    const mine = ours.get(name)!;
    let scale = 0;
    let diff = 0;
    for (let i = 0; i < r.length; i++) {
      scale = Math.max(scale, Math.abs(r[i]!));
      diff = Math.max(diff, Math.abs(r[i]! - mine[i]!));
    }
    return { name, diff, scale };
  });
}

/** The emulated GPU (native/tests/cuemu) of a CUDA build: its library folder, and whether this build has it. */
export const EMU = path.join(NATIVE, '..', 'cuemu', 'gpu');
export const HAVE_EMU = fs.existsSync(path.join(EMU, 'libcuda.so.1'));

/** A tiny llama (`create-tiny`) and 24 tokenized rows of 20 tokens (the first 4 labels masked) in `dir`: what the
 *  emulated-GPU tests train, small enough for kernels run thread by thread on the CPU. */
export function tinyLlamaRun(dir: string): { model: string; tokens: string } {
  const model = path.join(dir, 'model');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
  const tokens = path.join(dir, 'train.json');
  const ids = Array.from({ length: 24 }, (_, i) => Array.from({ length: 20 }, (_, j) => ((5 * i + 3 * j) % 200) + 4));
  fs.writeFileSync(tokens, JSON.stringify({ input_ids: ids, labels: ids.map((r) => r.map((t, j) => (j < 4 ? -100 : t))) }));
  return { model, tokens };
}
