// `llms-train model merge` of a DoRA adapter (PEFT's LoraConfig(use_dora=True)) against PEFT's own
// merge_and_unload(): a tiny llama from the engine, DoRA adapters written by PEFT with random non-zero lora_A/lora_B
// and perturbed magnitude vectors (tests/python/hf_reference.py make-adapter --use-dora), every merged weight
// compared with PEFT's (hf_reference.py merge-weights) — fp32, rsLoRA, and a bf16 base whose norms come from its
// bf16 values; a plain LoRA adapter still merges byte for byte as the engine merges it; `model export --adapter`
// of a DoRA adapter exports the DoRA merge; and end to end, `llms-train train --use_dora` (the engine's DoRA training)
// writes an adapter PEFT loads with the engine's logits, whose merge is PEFT's.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { exportGguf, floatToBf16 } from '../../src-main/core/models/gguf';
import * as models from '../../src-main/core/models/manager';
import { CLI, ROOT, runCli } from '../helpers/app';
import { ENGINE, HF_REF, PY, readSafetensors, runOk, writeSafetensors } from '../helpers/native';

const HF = HF_REF;
let tmp: string;
const t = (...p: string[]) => path.join(tmp, ...p);

const run = runOk;

type Tensor = { dtype: string; shape: number[]; data: Float64Array; raw: Buffer };
/** Every tensor of a folder's model.safetensors (or a .safetensors file), decoded to float64 (F32, F16, BF16). */
function readSt(fileOrDir: string): Map<string, Tensor> {
  const file = fs.statSync(fileOrDir).isDirectory() ? path.join(fileOrDir, 'model.safetensors') : fileOrDir;
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, Tensor>();
  for (const [k, v] of Object.entries(h)) {
    if (k === '__metadata__') continue;
    const raw = b.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
    const size = v.dtype === 'F32' ? 4 : 2;
    const data = new Float64Array(raw.length / size);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < data.length; i++) {
      if (v.dtype === 'F32') data[i] = raw.readFloatLE(4 * i);
      else if (v.dtype === 'BF16') (u[0] = raw.readUInt16LE(2 * i) << 16), (data[i] = f[0]!);
      else throw new Error(`${k}: ${v.dtype}`);
    }
    out.set(k, { dtype: v.dtype, shape: v.shape, data, raw });
  }
  return out;
}

/** Per tensor: max |ours − ref| / max |ref|. */
function relDiffs(ours: Map<string, Tensor>, ref: Map<string, Tensor>): Map<string, number> {
  expect([...ours.keys()].sort()).toEqual([...ref.keys()].sort());
  const out = new Map<string, number>();
  for (const [k, r] of ref) {
    const o = ours.get(k)!;
    expect(o.shape).toEqual(r.shape);
    let d = 0;
    let s = 0;
    for (let i = 0; i < r.data.length; i++) {
      d = Math.max(d, Math.abs(o.data[i]! - r.data[i]!));
      s = Math.max(s, Math.abs(r.data[i]!));
    }
    out.set(k, d / s);
  }
  return out;
}

/** The folder with its model.safetensors rewritten as BF16 (round to nearest even) and config torch_dtype bfloat16. */
function castBf16(src: string, dst: string): void {
  fs.mkdirSync(dst);
  for (const f of fs.readdirSync(src)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(src, f), path.join(dst, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify({ ...cfg, torch_dtype: 'bfloat16' }, null, 2));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const bufs: Buffer[] = [];
  let off = 0;
  for (const [k, v] of readSt(src)) {
    const b = Buffer.alloc(v.data.length * 2);
    for (let i = 0; i < v.data.length; i++) b.writeUInt16LE(floatToBf16(v.data[i]!), 2 * i);
    header[k] = { dtype: 'BF16', shape: v.shape, data_offsets: [off, off + b.length] };
    off += b.length;
    bufs.push(b);
  }
  let h = Buffer.from(JSON.stringify(header));
  h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  fs.writeFileSync(path.join(dst, 'model.safetensors'), Buffer.concat([len, h, ...bufs]));
}

const ALL = 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj';
// The adapter as plain LoRA: use_dora false and no magnitude vectors (what the DoRA merge must differ from)
function writeLoraOnlyAdapter(dir: string, out: string) {
  fs.mkdirSync(out, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(out, 'adapter_config.json'), JSON.stringify({ ...cfg, use_dora: false }));
  const file = path.join(dir, 'adapter_model.safetensors');
  const buf = fs.readFileSync(file);
  const header = JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString('utf8')) as Record<string, { shape: number[] }>;
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, v] of readSafetensors(file)) if (!k.endsWith('.lora_magnitude_vector')) tensors[k] = { shape: header[k]!.shape, data: v };
  writeSafetensors(path.join(out, 'adapter_model.safetensors'), tensors);
}

const isDoraWeight = (k: string, targets: string) => targets.split(',').some((m) => k.endsWith(`.${m}.weight`));

beforeAll(() => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-dora-merge-'));
  run(ENGINE, ['create-tiny', '--family', 'llama', '--out', t('base')]);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('merging a DoRA adapter', () => {
  it('`llms-train model merge` gives PEFT merge_and_unload()\'s weights (fp32, every linear, modules_to_save)', () => {
    run(PY, [HF, 'make-adapter', '--model', t('base'), '--out', t('dora'), '--targets', ALL, '--r', '4', '--alpha', '8', '--modules-to-save', 'lm_head', '--use-dora']);
    expect(JSON.parse(fs.readFileSync(t('dora', 'adapter_config.json'), 'utf8')).use_dora).toBe(true);
    run(PY, [HF, 'merge-weights', '--model', t('base'), '--adapter', t('dora'), '--out', t('peft.safetensors')]);
    const cli = run(process.execPath, [CLI, 'model', 'merge', '--model', t('base'), '--adapter', t('dora'), '--out', t('merged')]);
    expect(cli.stdout + cli.stderr).toMatch(/merged 14 LoRA modules \(14 DoRA\), replaced 1 tensors \(float32\)/);
    const ours = readSt(t('merged'));
    const peft = readSt(t('peft.safetensors'));
    const rel = relDiffs(ours, peft);
    const worst = Math.max(...rel.values());
    console.log(`DoRA merge vs PEFT merge_and_unload (fp32): worst relative difference ${worst.toExponential(2)} over ${rel.size} tensors`);
    expect(worst).toBeLessThan(1e-5);
    // the magnitudes matter: merged as plain LoRA (what the engine alone does with the magnitudes left out) is far off
    writeLoraOnlyAdapter(t('dora'), t('dora-as-lora'));
    run(ENGINE, ['merge', '--model', t('base'), '--adapter', t('dora-as-lora'), '--out', t('merged-lora')]);
    const plain = relDiffs(readSt(t('merged-lora')), peft);
    for (const [k, d] of plain) if (isDoraWeight(k, ALL)) expect(d, k).toBeGreaterThan(1e-2);
    // the rest of the folder is the engine's merge: the same files, the same bytes outside the DoRA weights
    expect(fs.readdirSync(t('merged')).sort()).toEqual(fs.readdirSync(t('merged-lora')).sort());
    const lora = readSt(t('merged-lora'));
    for (const [k, v] of ours) if (!isDoraWeight(k, ALL)) expect(v.raw.equals(lora.get(k)!.raw), k).toBe(true);
    expect(fs.readdirSync(tmp).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('rsLoRA scaling, and a bf16 base: norms from its bf16 values, written as bf16', async () => {
    castBf16(t('base'), t('base16'));
    const targets = 'q_proj,v_proj,down_proj';
    run(PY, [HF, 'make-adapter', '--model', t('base16'), '--out', t('dora16'), '--targets', targets, '--r', '8', '--alpha', '16', '--use-dora', '--use-rslora', '--seed', '3']);
    run(PY, [HF, 'merge-weights', '--model', t('base16'), '--adapter', t('dora16'), '--out', t('peft16.safetensors')]);
    const peft = readSt(t('peft16.safetensors'));

    // float32 output: PEFT (which computes on the bf16 values upcast) within 1e-5
    const r32 = await models.merge({ model: t('base16'), adapter: t('dora16'), out: t('m16-f32'), dtype: 'float32' });
    expect(r32).toMatchObject({ dtype: 'float32', merged_modules: 6, dora_modules: 6, out: t('m16-f32') });
    const worst = Math.max(...relDiffs(readSt(t('m16-f32')), peft).values());
    console.log(`DoRA merge vs PEFT, bf16 base, rsLoRA (fp32 output): worst relative difference ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-5);

    // the base's dtype (auto): bf16, each DoRA weight PEFT's value rounded to bf16 (to the nearest; at most one bf16 step
    // where float64 → float32 → bf16 rounds a tie the other way), everything else the base's bytes
    const r = await models.merge({ model: t('base16'), adapter: t('dora16'), out: t('m16') });
    expect(r).toMatchObject({ dtype: 'bfloat16', dora_modules: 6 });
    const ours = readSt(t('m16'));
    const base16 = readSt(t('base16'));
    let n = 0;
    let same = 0;
    for (const [k, v] of ours) {
      expect(v.dtype, k).toBe('BF16');
      if (!isDoraWeight(k, targets)) {
        expect(v.raw.equals(base16.get(k)!.raw), k).toBe(true);
        continue;
      }
      const p = peft.get(k)!.data;
      for (let i = 0; i < p.length; i++) {
        const want = floatToBf16(p[i]!);
        const got = v.raw.readUInt16LE(2 * i);
        n++;
        if (want === got) same++;
        else expect(Math.abs(want - got), `${k}[${i}]`).toBe(1);
      }
    }
    console.log(`bf16 DoRA weights equal to PEFT's rounded to bf16: ${same} of ${n}`);
    expect(same / n).toBeGreaterThan(0.99);
  });

  it('a plain LoRA adapter merges exactly as the engine merges it', async () => {
    run(PY, [HF, 'make-adapter', '--model', t('base'), '--out', t('lora'), '--targets', 'q_proj,v_proj', '--r', '4', '--alpha', '8']);
    const r = await models.merge({ model: t('base'), adapter: t('lora'), out: t('m-lora') });
    expect(r.dora_modules).toBe(0);
    run(ENGINE, ['merge', '--model', t('base'), '--adapter', t('lora'), '--out', t('m-lora-engine')]);
    expect(fs.readFileSync(t('m-lora', 'model.safetensors')).equals(fs.readFileSync(t('m-lora-engine', 'model.safetensors')))).toBe(true);
  });

  it('refuses an output folder that is not empty, leaving it as it was', async () => {
    fs.mkdirSync(t('busy'));
    fs.writeFileSync(t('busy', 'keep.txt'), 'x');
    await expect(models.merge({ model: t('base'), adapter: t('dora'), out: t('busy') })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('already exists and is not empty') });
    expect(fs.readdirSync(t('busy'))).toEqual(['keep.txt']);
    expect(fs.readdirSync(tmp).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('end to end: `llms-train train --use_dora` writes a DoRA adapter PEFT loads (same logits), and its merge is PEFT\'s', async () => {
    const home = t('home');
    const r = await runCli(
      ['train', '--model_name_or_path', t('base'), '--train_file', path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'dev.json'), '--output_dir', t('run'),
        '--max_steps', '4', '--per_device_train_batch_size', '2', '--lora_target_modules', 'q_proj,v_proj,down_proj', '--use_dora', '--learning_rate', '1e-2',
        '--max_source_length', '32', '--max_target_length', '8', '--save_steps', '100'],
      { home, timeoutMs: 120_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(fs.readFileSync(t('run', 'job.json'), 'utf8')) as { lora: Record<string, unknown> }).lora).toMatchObject({ use_dora: true });
    expect(JSON.parse(fs.readFileSync(t('run', 'adapter_config.json'), 'utf8'))).toMatchObject({ use_dora: true, peft_type: 'LORA' });
    const ad = readSt(t('run', 'adapter_model.safetensors'));
    expect(ad.get('base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector')?.shape).toEqual([32]);
    expect([...ad.keys()].filter((k) => k.endsWith('.lora_magnitude_vector'))).toHaveLength(6);
    fs.writeFileSync(t('tokens.json'), JSON.stringify({ input_ids: [[1, 37, 99, 14, 25, 61, 8, 77, 30, 12]] }));
    run(ENGINE, ['forward', '--model', t('base'), '--adapter', t('run'), '--tokens', t('tokens.json'), '--out', t('run-logits.json')]);
    expect(run(PY, [HF, 'check-adapter', '--model', t('base'), '--adapter', t('run'), '--tokens', t('tokens.json'), '--logits', t('run-logits.json'), '--atol', '1e-4']).stdout).toMatch(/check-adapter: OK/);
    await models.merge({ model: t('base'), adapter: t('run'), out: t('run-merged') });
    run(PY, [HF, 'merge-weights', '--model', t('base'), '--adapter', t('run'), '--out', t('run-peft.safetensors')]);
    expect(Math.max(...relDiffs(readSt(t('run-merged')), readSt(t('run-peft.safetensors'))).values())).toBeLessThan(1e-5);
  });

  it('GGUF export with --adapter merges through the DoRA merge; --adapter-only refuses it', async () => {
    const viaAdapter = await models.exportModel({ model: t('base'), adapter: t('dora'), out: t('gguf', 'a.gguf'), dtype: 'f32', name: 'dora' });
    const fromMerged = await exportGguf({ modelDir: t('merged'), out: t('gguf', 'b.gguf'), dtype: 'f32', name: 'dora' });
    expect(viaAdapter.tensors).toBe(fromMerged.tensors);
    expect(fs.readFileSync(viaAdapter.gguf).equals(fs.readFileSync(fromMerged.gguf))).toBe(true);
    await expect(models.exportModel({ model: t('base'), adapter: t('dora'), adapterOnly: true, out: t('gguf', 'c.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('DoRA adapter (use_dora true)') });
    expect(fs.existsSync(t('gguf', 'c.gguf'))).toBe(false);
  });
});
