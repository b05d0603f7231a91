// DoRA (PEFT's use_dora) in the engine against HF transformers + PEFT 0.21 (tests/python/hf_reference.py, CPU, fp32):
// a DoRA adapter PEFT writes (random non-zero A/B, perturbed magnitudes) gives PEFT's logits and loss; the gradients of
// every A, B and magnitude equal PEFT's (its norm ‖W + s·B·A‖ held constant, as PEFT does); an adapter our engine
// trains with use_dora (dropout on) loads in PEFT unchanged and gives our logits. Families: a llama (separate q/k/v),
// Qwen2 (q/k/v biases), GPT-NeoX (fused qkv with biases, LayerNorm).
import fs from 'node:fs';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { engineOk, gradDiffs, maxAbsDiff, readSafetensors, referenceTmp, refPy } from '../helpers/native';

let tmp: string;
const py = refPy;
const engine = engineOk;

beforeAll(() => {
  tmp = referenceTmp('llmt-dora-');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const cases = [
  { family: 'llama', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj' },
  { family: 'qwen2', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj' },
  { family: 'gpt_neox', targets: 'query_key_value,dense,dense_h_to_4h,dense_4h_to_h' },
];

describe.each(cases)('DoRA vs PEFT: $family', ({ family, targets }) => {
  let model: string;
  let adapter: string;
  const t = () => path.join(tmp, 'tokens.json');
  const f = (x: string) => path.join(tmp, `${family}-${x}`);

  beforeAll(() => {
    model = f('model');
    adapter = f('adapter');
    engine(['create-tiny', '--family', family, '--out', model, '--seed', '7']);
    py(['make-adapter', '--model', model, '--out', adapter, '--targets', targets, '--r', '4', '--alpha', '8', '--seed', '3', '--use-dora']);
  });

  it('a PEFT DoRA adapter: the same logits and loss, and not those of plain LoRA', () => {
    const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8')) as { use_dora: boolean };
    expect(cfg.use_dora).toBe(true);
    const keys = [...readSafetensors(path.join(adapter, 'adapter_model.safetensors')).keys()];
    expect(keys.some((k) => k.endsWith('.lora_magnitude_vector'))).toBe(true);
    engine(['forward', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', f('ours.json')]);
    py(['forward', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', f('hf.json')]);
    const ours = JSON.parse(fs.readFileSync(f('ours.json'), 'utf8'));
    const hf = JSON.parse(fs.readFileSync(f('hf.json'), 'utf8'));
    expect(maxAbsDiff(ours.logits, hf.logits)).toBeLessThan(1e-4);
    expect(Math.abs(ours.loss - hf.loss)).toBeLessThan(1e-5);
    // the same tensors read as plain LoRA (use_dora off, magnitudes dropped) give other logits
    const plain = f('plain');
    fs.mkdirSync(plain);
    fs.writeFileSync(path.join(plain, 'adapter_config.json'), JSON.stringify({ ...JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8')), use_dora: false }));
    const st = readSafetensors(path.join(adapter, 'adapter_model.safetensors'));
    const lora = new Map([...st].filter(([k]) => !k.endsWith('.lora_magnitude_vector')));
    writeF32Safetensors(path.join(plain, 'adapter_model.safetensors'), lora, adapter);
    engine(['forward', '--model', model, '--adapter', plain, '--tokens', t(), '--out', f('plain.json')]);
    expect(maxAbsDiff(JSON.parse(fs.readFileSync(f('plain.json'), 'utf8')).logits, hf.logits)).toBeGreaterThan(1e-3);
  });

  it('gradients of every A, B and magnitude agree within 1e-3 relative', () => {
    engine(['grad', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', f('ours.safetensors')]);
    py(['grad', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', f('hf.safetensors')]);
    const ours = readSafetensors(f('ours.safetensors'));
    const hf = readSafetensors(f('hf.safetensors'));
    expect([...ours.keys()].sort()).toEqual([...hf.keys()].sort());
    expect([...ours.keys()].filter((k) => k.endsWith('.lora_magnitude_vector')).length).toBeGreaterThan(0);
    for (const { name, diff, scale } of gradDiffs(ours, hf)) expect(diff / Math.max(scale, 1e-12), `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
  });

  it("`llmt-engine merge` of the DoRA adapter gives PEFT's merge_and_unload weights", () => {
    engine(['merge', '--model', model, '--adapter', adapter, '--out', f('merged'), '--dtype', 'float32']);
    py(['merge-weights', '--model', model, '--adapter', adapter, '--out', f('merged-hf.safetensors')]);
    const ours = readSafetensors(path.join(f('merged'), 'model.safetensors'));
    const hf = readSafetensors(f('merged-hf.safetensors'));
    let worst = 0;
    let changed = 0;
    const base = readSafetensors(path.join(model, 'model.safetensors'));
    for (const [k, v] of ours) {
      const h = hf.get(k)!;
      let scale = 0;
      let diff = 0;
      v.forEach((x, i) => {
        scale = Math.max(scale, Math.abs(h[i]!));
        diff = Math.max(diff, Math.abs(x - h[i]!));
      });
      worst = Math.max(worst, diff / Math.max(scale, 1e-12));
      if (base.get(k)!.some((x, i) => Math.abs(x - v[i]!) > 1e-4)) ++changed;
    }
    expect(worst).toBeLessThan(1e-5);
    expect(changed).toBeGreaterThanOrEqual(targets.split(',').length * 2); // every adapted linear of both layers
    // and the merged folder computes what base + adapter computes
    engine(['forward', '--model', f('merged'), '--tokens', t(), '--out', f('merged.json')]);
    expect(maxAbsDiff(JSON.parse(fs.readFileSync(f('merged.json'), 'utf8')).logits, JSON.parse(fs.readFileSync(f('ours.json'), 'utf8')).logits)).toBeLessThan(1e-4);
  });

  it('an adapter we train with use_dora (dropout on) loads in PEFT unchanged and gives our logits', () => {
    const out = f('run');
    fs.writeFileSync(f('job.json'), JSON.stringify({ model, lora: { r: 4, alpha: 8, dropout: 0.05, target_modules: targets.split(','), use_dora: true }, data: { train: t() }, training: { learning_rate: 0.01, max_steps: 20, micro_batch_size: 2 }, output: { dir: out, logging_steps: 10, save_steps: 100 } }));
    engine(['train', '--job', f('job.json')]);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as { use_dora?: boolean };
    expect(cfg.use_dora).toBe(true);
    const trained = readSafetensors(path.join(out, 'adapter_model.safetensors'));
    const mags = [...trained.keys()].filter((k) => k.endsWith('.lora_magnitude_vector'));
    expect(mags.length).toBeGreaterThan(0);
    engine(['forward', '--model', model, '--adapter', out, '--tokens', t(), '--out', f('trained.json')]);
    py(['check-adapter', '--model', model, '--adapter', out, '--tokens', t(), '--logits', f('trained.json'), '--atol', '1e-4']);
  });
});

// A float32 safetensors file of the given tensors, with the shapes the source adapter file gives them.
function writeF32Safetensors(file: string, tensors: Map<string, Float32Array>, sourceDir: string) {
  const src = fs.readFileSync(path.join(sourceDir, 'adapter_model.safetensors'));
  const hlen = Number(src.readBigUInt64LE(0));
  const header = JSON.parse(src.subarray(8, 8 + hlen).toString('utf8')) as Record<string, { shape: number[] }>;
  const meta: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  const parts: Buffer[] = [];
  for (const [k, v] of [...tensors].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const bytes = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    meta[k] = { dtype: 'F32', shape: header[k]!.shape, data_offsets: [off, off + bytes.length] };
    parts.push(bytes);
    off += bytes.length;
  }
  let h = Buffer.from(JSON.stringify(meta), 'utf8');
  const pad = (8 - (h.length % 8)) % 8;
  h = Buffer.concat([h, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  fs.writeFileSync(file, Buffer.concat([len, h, ...parts]));
}
