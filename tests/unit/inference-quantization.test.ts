// Which base quantization chat, predict and eval load a model with (src-main/core/engine/quantization.ts): "auto"
// follows the adapter's run — the job.json RunService writes into a run's output folder, beside the final adapter or
// one level above a checkpoint-N folder — and the CLI's --quantization.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { placementOf } from '../../src-main/cli/options';
import { resolveQuantization, trainedQuantization } from '../../src-main/core/engine/quantization';

let tmp: string;
const run = (name: string, job: object | string | null) => {
  const dir = path.join(tmp, name);
  fs.mkdirSync(path.join(dir, 'checkpoint-4'), { recursive: true });
  if (job !== null) fs.writeFileSync(path.join(dir, 'job.json'), typeof job === 'string' ? job : JSON.stringify(job));
  return dir;
};

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-infq-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('the quantization an adapter was trained with', () => {
  it("reads its run's job.json beside the adapter and above a checkpoint-N folder", () => {
    const q = run('qlora', { model: '/m', method: 'lora', quantization: 'nf4' });
    expect(trainedQuantization(q)).toBe('nf4');
    expect(trainedQuantization(path.join(q, 'checkpoint-4'))).toBe('nf4');
    expect(trainedQuantization(run('fp4', { quantization: 'fp4' }))).toBe('fp4');
  });

  it('keeps the object form as the engine reads it (double quantization off), and its type', () => {
    expect(trainedQuantization(run('obj', { quantization: { type: 'nf4', double_quant: false } }))).toBe('{"type":"nf4","double_quant":false}');
    expect(trainedQuantization(run('obj2', { quantization: { type: 'fp4' } }))).toBe('fp4');
    expect(trainedQuantization(run('obj3', { quantization: { double_quant: true } }))).toBe('nf4');
  });

  it('is none for a plain LoRA run, no run, a damaged job.json, or a folder whose parent is a run but not its checkpoint', () => {
    expect(trainedQuantization(run('plain', { model: '/m', method: 'lora' }))).toBeNull();
    expect(trainedQuantization(run('norun', null))).toBeNull();
    expect(trainedQuantization(run('broken', '{"quantization": "nf4"'))).toBeNull();
    expect(trainedQuantization(run('odd', { quantization: 'int8' }))).toBeNull();
    const parent = run('parent', { quantization: 'nf4' });
    const other = path.join(parent, 'exported-adapter');
    fs.mkdirSync(other);
    expect(trainedQuantization(other)).toBeNull();
    expect(trainedQuantization(null)).toBeNull();
    expect(trainedQuantization(path.join(tmp, 'missing'))).toBeNull();
  });

  it('auto follows the run; an explicit choice wins', () => {
    const q = run('qlora2', { quantization: 'nf4' });
    const p = run('plain2', {});
    expect(resolveQuantization('auto', q)).toBe('nf4');
    expect(resolveQuantization(undefined, q)).toBe('nf4');
    expect(resolveQuantization('auto', p)).toBe('none');
    expect(resolveQuantization('auto', null)).toBe('none');
    expect(resolveQuantization('none', q)).toBe('none');
    expect(resolveQuantization('fp4', p)).toBe('fp4');
  });

  it('--quantization on chat/predict: auto by default, the four choices, anything else refused', () => {
    expect(placementOf({ device: 'cpu', precision: 'fp32' })).toEqual({ device: 'cpu', precision: 'fp32', quantization: 'auto' });
    expect(placementOf({ device: 'cuda:0', precision: 'bf16', quantization: 'nf4' })).toEqual({ device: 'cuda:0', precision: 'bf16', quantization: 'nf4' });
    expect(() => placementOf({ device: 'cpu', precision: 'fp32', quantization: 'int8' })).toThrow(/--quantization int8: use auto, none, nf4 or fp4/);
  });
});
