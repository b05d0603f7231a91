// bench/hf_peft_bench.py — the HF transformers + PEFT side of bench/gpu.sh and the driver of our side — run end to
// end as a smoke run: a tiny LLaMA shape, torch on the CPU (this machine's reference stack), llmt-engine on its CUDA
// backend under cuemu (native/tests/cuemu). GPU time is scarce (one short try per task that gets a GPU), so the
// script must not first meet its own bugs there: this runs every line of it (model creation, save, PEFT, the timed
// steps, both of our runs incl. QLoRA, the ratios and the report) against the installed transformers/peft.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT } from '../helpers/app';
import { EMU, ENGINE, HAVE_EMU, PY } from '../helpers/native';

if (!HAVE_EMU) console.warn(`bench-gpu-script: skipped — ${EMU} is missing (this engine build has no CUDA backend)`);

type Side = { tokens_per_s?: number; step_ms?: number; loss?: number; peak_mem?: number; peak_alloc?: number; device?: string; error?: string };
type Results = {
  gpu: string;
  dims: number[];
  versions: Record<string, string>;
  hf: Record<string, Side>;
  ours: Record<string, Side>;
  ours_qlora: Record<string, Side>;
  ours_offload: Record<string, Side>;
  ratios: Record<string, { speed: number | null; memory: number | null }>;
  qlora_targets: { seq: number; peak_mem_gb: number | null; speed_vs_our_bf16: number | null };
};

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-benchpy-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!HAVE_EMU)('bench/hf_peft_bench.py (smoke run: CPU torch vs the emulated CUDA engine)', () => {
  it('times both sides, reports tokens/s, peak memory, MFU and the ratios, and cleans up its weights', () => {
    if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\``);
    const out = path.join(tmp, 'out');
    const work = path.join(tmp, 'work');
    fs.mkdirSync(work);
    const r = spawnSync(
      PY,
      [path.join(ROOT, 'bench', 'hf_peft_bench.py'), '--engine', ENGINE, '--out', out, '--device', 'cpu',
        '--dims', '2,64,4,160,256', '--seqs', '16,32', '--iters', '1', '--parity', 'smoke'],
      { encoding: 'utf8', env: { ...process.env, LLMT_CUDA_LIB_DIRS: EMU, LLMT_BENCH_TMP: work }, timeout: 600_000 },
    );
    expect(r.status, r.stderr + r.stdout).toBe(0);
    const res = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as Results;
    expect(res.dims).toEqual([2, 64, 4, 160, 256]);
    expect(Object.keys(res.versions)).toEqual(['torch', 'transformers', 'peft']);
    for (const T of ['16', '32']) {
      const hf = res.hf[T]!, ours = res.ours[T]!;
      expect(hf.error).toBeUndefined();
      expect(hf.tokens_per_s).toBeGreaterThan(0);
      // random init, random tokens: the loss of a near-uniform 256-way prediction
      expect(Math.abs(hf.loss! - Math.log(256))).toBeLessThan(0.5);
      expect(ours.error, JSON.stringify(ours)).toBeUndefined();
      expect(ours.device).toBe('cuda:0');
      expect(ours.tokens_per_s).toBeGreaterThan(0);
      // the engine's allocator: bytes held from the device >= bytes handed out > the bf16 weights alone
      expect(ours.peak_alloc!).toBeGreaterThan(2 * (2 * 256 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 160)));
      expect(ours.peak_mem!).toBeGreaterThanOrEqual(ours.peak_alloc!);
      expect(res.ratios[T]!.speed).toBeCloseTo(ours.tokens_per_s! / hf.tokens_per_s!, 6);
    }
    // the longer sequence needs more activation memory
    expect(res.ours['32']!.peak_alloc!).toBeGreaterThan(res.ours['16']!.peak_alloc!);
    // QLoRA at the first length: 4-bit weights hold less than bf16 ones
    const q = res.ours_qlora['16']!;
    expect(q.error, JSON.stringify(q)).toBeUndefined();
    expect(q.peak_alloc!).toBeLessThan(res.ours['16']!.peak_alloc!);
    expect(res.qlora_targets.speed_vs_our_bf16).toBeCloseTo(q.tokens_per_s! / res.ours['16']!.tokens_per_s!, 6);
    // and the same step by each 4-bit GEMM path, timed in the same process
    const dq = (q as { q4_gemm?: Record<string, { train_tokens_per_s: number }> }).q4_gemm!;
    expect(dq.fused!.train_tokens_per_s).toBeGreaterThan(0);
    expect(dq.dequant!.train_tokens_per_s).toBeGreaterThan(0);
    const qt = res.qlora_targets as { speed_vs_our_bf16_dequant_cublas?: number; speed_vs_our_bf16_fused?: number };
    expect(qt.speed_vs_our_bf16_dequant_cublas).toBeCloseTo(dq.dequant!.train_tokens_per_s / res.ours['16']!.tokens_per_s!, 6);
    expect(qt.speed_vs_our_bf16_fused).toBeCloseTo(dq.fused!.train_tokens_per_s / res.ours['16']!.tokens_per_s!, 6);
    // and QLoRA again with the 4-bit layer cache (recomputed blocks' weights decoded once), in its own process: the
    // one layer of 16-bit weights it holds shows in its peak
    const qc = (res as unknown as { ours_qlora_cache: Record<string, { tokens_per_s?: number; peak_alloc?: number; error?: string }> }).ours_qlora_cache['16']!;
    expect(qc.error, JSON.stringify(qc)).toBeUndefined();
    expect(qc.peak_alloc!).toBeGreaterThan(q.peak_alloc!);
    const qtc = res.qlora_targets as { speed_vs_our_bf16_layer_cache?: number };
    expect(qtc.speed_vs_our_bf16_layer_cache).toBeCloseTo(qc.tokens_per_s! / res.ours['16']!.tokens_per_s!, 6);
    // the longest length again with the checkpointed block inputs in host memory: less GPU memory, same model
    const off = res.ours_offload['32']!;
    expect(off.error, JSON.stringify(off)).toBeUndefined();
    expect(off.peak_alloc!).toBeLessThan(res.ours['32']!.peak_alloc!);
    // DoRA at the first length on both sides: PEFT's use_dora model, and ours on the adapter it saved
    const dr = res as unknown as { hf_dora: Record<string, Side>; ours_dora: Record<string, Side> };
    expect(dr.hf_dora['16']!.error, JSON.stringify(dr.hf_dora)).toBeUndefined();
    expect(dr.hf_dora['16']!.tokens_per_s).toBeGreaterThan(0);
    expect(Math.abs(dr.hf_dora['16']!.loss! - Math.log(256))).toBeLessThan(0.5);
    expect(dr.ours_dora['16']!.error, JSON.stringify(dr.ours_dora)).toBeUndefined();
    expect(dr.ours_dora['16']!.device).toBe('cuda:0');
    // the DoRA magnitudes and norms: more than the plain LoRA step holds
    expect(dr.ours_dora['16']!.peak_alloc!).toBeGreaterThan(res.ours['16']!.peak_alloc!);
    expect(res.ratios['16_dora']!.speed).toBeCloseTo(dr.ours_dora['16']!.tokens_per_s! / dr.hf_dora['16']!.tokens_per_s!, 6);
    const md = fs.readFileSync(path.join(out, 'results.md'), 'utf8');
    expect(md).toMatch(/ours with --offload-checkpoints at seq 32: [\d.]+ tok\/s/);
    expect(md).toMatch(/\| seq \| HF\+PEFT tok\/s \| ours tok\/s \| speed ratio/);
    expect(md).toMatch(/DoRA \(use_dora, r=16 all linear\) at seq 16: HF\+PEFT [\d.]+ tok\/s, ours [\d.]+ tok\/s \([\d.]+x\)/);
    expect(md).toMatch(/^\| 32 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|/m);
    expect(md).toMatch(/QLoRA \(nf4, bf16 compute, seq 16\): peak [\d.]+ GB/);
    expect(md).toMatch(/the fused tensor-core kernels \(LLMT_Q4_GEMM=fused\) [\d.]+x; L2-sized slices decoded to bf16, then cuBLAS \(LLMT_Q4_GEMM=dequant\): [\d.]+x/);
    expect(md).toMatch(/with the 4-bit layer cache \(--q4-cache on: [^)]*\): [\d.]+x, peak [\d.]+ GB/);
    // the bf16 rows timed with both tensor-core attention versions in the same process (at head_dim 16 both run the
    // fp32 kernels: the plumbing is what this checks)
    for (const T of ['16', '32']) {
      const at = (res.ours[T] as { attn_tc?: Record<string, { train_tokens_per_s: number }> }).attn_tc!;
      expect(at.v2!.train_tokens_per_s).toBeGreaterThan(0);
      expect(at.v1!.train_tokens_per_s).toBeGreaterThan(0);
    }
    expect(md).toMatch(/seq 32: our step with the 2-warp attention kernels \(LLMT_ATTN_TC=v1\): [\d.]+ tok\/s; with the default 4-warp ones: [\d.]+ tok\/s \([\d.]+x\)/);
    // one profiled step per side and length: where the time goes, in results.json and profile.md
    const prof = (JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as {
      profile: Record<string, Record<string, { kernel_ms: number; wall_ms: number; rows: { name: string; ms: number }[] }>>;
    }).profile;
    for (const T of ['16', '32']) {
      const sides = prof[T]!;
      expect(Object.keys(sides)).toEqual(expect.arrayContaining(['hf', 'ours bf16 weights, fp32 activations']));
      for (const p of Object.values(sides)) {
        expect(p.rows.length).toBeGreaterThan(3);
        expect(p.kernel_ms).toBeGreaterThan(0);
      }
      expect(sides['ours bf16 weights, fp32 activations']!.rows.map((r) => r.name)).toContain('k_attn_fwd');
    }
    expect(Object.keys(prof['16']!)).toContain('ours QLoRA nf4 (double quant), bf16 compute (tensor cores), fp32 activations');
    const pmd = fs.readFileSync(path.join(out, 'profile.md'), 'utf8');
    expect(pmd).toMatch(/### HF\+PEFT, seq 32: [\d.]+ ms of device time/);
    expect(pmd).toMatch(/### ours bf16 weights, fp32 activations, seq 16: [\d.]+ ms of device time in a [\d.]+ ms step/);
    expect(pmd).toMatch(/\| `cublasGemmEx bf16 nt 16x\d+x\d+` \| \d+ \| [\d.]+ \|/);
    // the HF folder + adapter it wrote for our side are gone
    expect(fs.readdirSync(work)).toEqual([]);
  }, 600_000);
});
