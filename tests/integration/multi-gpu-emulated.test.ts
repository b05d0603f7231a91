// Data parallelism on GPUs through the engine's CLI, on cuemu (native/tests/cuemu) with two emulated devices
// (LLMT_CUEMU_DEVICES=2): each rank a separate llmt-engine process on cuda:LOCAL_RANK, gradients all-reduced by NCCL
// over device buffers (cuemu's NCCL works between processes through shared memory with NCCL's semantics: device
// buffers only, rank-order sums, a dead peer is an error). What must hold: 2 GPUs × micro-batch b follow 1 GPU ×
// 2b; NCCL and Gloo (host-staged) give the same adapter bit for bit; without NCCL the run falls back to Gloo with a
// warning; ZeRO-1 shards a full fine-tune's optimizer state over the GPUs (same run bit for bit, less memory, resumable);
// a killed rank stops its peer with a peer-lost error (no hang); misconfigured jobs are refused clearly.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { runCli, sampleTrainFlags } from '../helpers/app';
import { deepenModel, EMU, ENGINE, NATIVE, readSafetensors, tinyLlamaRun } from '../helpers/native';

const EMU_NO_NCCL = path.join(NATIVE, '..', 'cuemu', 'gpu-noblas'); // the driver only: no cuBLAS, no NCCL
const HAVE_EMU = fs.existsSync(path.join(EMU, 'libnccl.so.2'));
const HAS_GLOO = fs.existsSync(path.join(NATIVE, 'libllmt_gloo.so'));
if (!HAVE_EMU) console.warn(`multi-gpu-emulated: skipped — ${EMU}/libnccl.so.2 is missing (this engine build has no CUDA backend)`);

type Ev = { event: string; loss?: number; code?: string; message?: string; hint?: string; step?: number; rank?: number; [k: string]: unknown };
const parse = (s: string): Ev[] =>
  s
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Ev);

let tmp: string;
let model: string;
let tokens: string;

function port(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

type JobOpts = { model?: string; device?: string; world?: number; mb: number; backend?: string; steps?: number; full?: boolean; zero?: 0 | 1 | 2; save?: number; resume?: string; bucketMb?: number; offload?: boolean; extra?: { job?: object; training?: object; lora?: object } };
function writeJob(name: string, o: JobOpts) {
  const file = path.join(tmp, `${name}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify({
      model: o.model ?? model,
      device: o.device ?? 'cuda',
      ...(o.full
        ? { method: 'full' }
        : { lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'], ...o.extra?.lora } }),
      data: { train: tokens },
      training: { learning_rate: o.full ? 0.002 : 0.01, max_steps: o.steps ?? 4, micro_batch_size: o.mb, gradient_accumulation_steps: 1, seed: 3, ...(o.offload ? { offload_optimizer: true } : {}), ...o.extra?.training },
      output: { dir: path.join(tmp, name), logging_steps: 1, save_steps: o.save ?? 100 },
      threads: 1,
      ...(o.resume ? { resume_from: o.resume } : {}),
      ...o.extra?.job,
      ...(o.world && o.world > 1
        ? { distributed: { world_size: o.world, backend: o.backend ?? 'auto', timeout_s: 60, zero_stage: o.zero ?? 0, ...(o.bucketMb ? { bucket_mb: o.bucketMb } : {}) } }
        : {}),
    }),
  );
  return file;
}

type Result = { code: number | null; stdout: string; stderr: string; events: Ev[] };
function collect(c: ChildProcess): Promise<Result> {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    c.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr, events: parse(stdout) }));
  });
}

/** `world` ranks of one job with torchrun's variables, on the emulated GPUs (lib dir `libs`). */
async function ranks(job: string, world: number, libs = EMU, onSpawn?: (procs: ChildProcess[]) => void): Promise<Result[]> {
  const p = await port();
  const procs = Array.from({ length: world }, (_, r) =>
    spawn(ENGINE, ['train', '--job', job], {
      env: {
        ...process.env,
        LLMT_CUDA_LIB_DIRS: libs,
        LLMT_CUEMU_DEVICES: '2',
        LLMT_CUEMU_NCCL_TIMEOUT_MS: '60000',
        RANK: String(r),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(r),
        LOCAL_WORLD_SIZE: String(world),
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(p),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  onSpawn?.(procs);
  return Promise.all(procs.map(collect));
}
const losses = (r: Result) => r.events.filter((e) => e.event === 'step').map((e) => e.loss!);

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-mgpu-'));
  ({ model, tokens } = tinyLlamaRun(tmp));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!HAVE_EMU)('data parallelism over emulated GPUs (NCCL)', () => {
  it('lists two emulated GPUs', () => {
    const r = spawnSync(ENGINE, ['--version'], { encoding: 'utf8', env: { ...process.env, LLMT_CUDA_LIB_DIRS: EMU, LLMT_CUEMU_DEVICES: '2' } });
    expect(r.stdout).toMatch(/cuda: 2 device\(s\)[^\n]*\n\s+\[0\] cuemu[^\n]*\n\s+\[1\] cuemu/);
  });

  it('2 GPUs × micro-batch 2 follow 1 GPU × 4, over NCCL on cuda:0 and cuda:1', async () => {
    const [one] = await ranks(writeJob('one', { mb: 4 }), 1);
    expect(one!.code, one!.stderr).toBe(0);
    const two = await ranks(writeJob('two', { world: 2, mb: 2 }), 2);
    for (const r of two) expect(r.code, r.stderr + r.stdout).toBe(0);
    const started = two[0]!.events.find((e) => e.event === 'started')!;
    expect(started.backend).toBe('nccl');
    expect(started.world_size).toBe(2);
    expect((started.ranks as { device: string }[]).map((x) => x.device)).toEqual(['cuda:0', 'cuda:1']);
    expect(two[0]!.events.some((e) => e.event === 'warning')).toBe(false);
    const a = losses(one!), b = losses(two[0]!);
    expect(b).toHaveLength(4);
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-6);
    // GPU memory as each rank's allocator holds it, in the step events and per rank
    const step = two[0]!.events.find((e) => e.event === 'step')!;
    expect(step.gpu_mem_bytes as number).toBeGreaterThan(0);
    expect(step.gpu_peak_mem_bytes as number).toBeGreaterThanOrEqual(step.gpu_mem_bytes as number);
    const rs = two[0]!.events.find((e) => e.event === 'rank_stats')!;
    for (const x of rs.ranks as { gpu_mem_bytes: number }[]) expect(x.gpu_mem_bytes).toBeGreaterThan(0);
    expect(one!.events.find((e) => e.event === 'step')!.gpu_mem_bytes as number).toBeGreaterThan(0);
    // rank 0 writes the adapter; rank 1 only trains
    expect(fs.existsSync(path.join(tmp, 'two', 'adapter_model.safetensors'))).toBe(true);
  }, 300_000);

  it.skipIf(!HAS_GLOO)('NCCL and Gloo (host-staged) give the same adapter bit for bit', async () => {
    const nccl = await ranks(writeJob('n2', { world: 2, mb: 2, backend: 'nccl' }), 2);
    const gloo = await ranks(writeJob('g2', { world: 2, mb: 2, backend: 'gloo' }), 2);
    for (const r of [...nccl, ...gloo]) expect(r.code, r.stderr).toBe(0);
    const x = readSafetensors(path.join(tmp, 'n2', 'adapter_model.safetensors'));
    const y = readSafetensors(path.join(tmp, 'g2', 'adapter_model.safetensors'));
    expect([...x.keys()].sort()).toEqual([...y.keys()].sort());
    for (const [k, v] of x) expect(Buffer.from(v.buffer).equals(Buffer.from(y.get(k)!.buffer)), k).toBe(true);
  }, 300_000);

  it.skipIf(!HAS_GLOO)('falls back to Gloo with a warning when NCCL cannot be loaded', async () => {
    const r = await ranks(writeJob('fallback', { world: 2, mb: 2 }), 2, EMU_NO_NCCL);
    for (const x of r) expect(x.code, x.stderr).toBe(0);
    const started = r[0]!.events.find((e) => e.event === 'started')!;
    expect(started.backend).toBe('gloo');
    const w = r[0]!.events.find((e) => e.event === 'warning' && /NCCL is unavailable/.test(e.message ?? ''));
    expect(w?.message).toMatch(/libnccl\.so\.2/);
  }, 300_000);

  it('a killed GPU rank stops its peer at once with a peer-lost error from NCCL', async () => {
    const job = writeJob('killed', { world: 2, mb: 2, steps: 400 });
    const t0 = Date.now();
    const [r0, r1] = await ranks(job, 2, EMU, (procs) => {
      let seen = '';
      procs[0]!.stdout!.on('data', (d: Buffer) => {
        seen += d.toString();
        if (/"event":"step","step":2\b/.test(seen) && !procs[1]!.killed) procs[1]!.kill('SIGKILL');
      });
    });
    expect(r1!.code).toBeNull(); // killed
    expect(r0!.code).not.toBe(0);
    const err = r0!.events.find((e) => e.event === 'error')!;
    expect(err.message).toMatch(/rank 0 lost its peers/);
    expect(err.message).toMatch(/nccl .*all-reduce failed on rank 0: .*remote process exited/);
    expect(err.peer_lost).toBe(true);
    expect(err.hint).toMatch(/Another rank failed or was killed/);
    expect(Date.now() - t0).toBeLessThan(120_000); // not the 400 steps, not a hang
  }, 300_000);

  it('`llms-train train --device cuda:0,1` runs one worker per GPU through the app and records both', async () => {
    const home = path.join(tmp, 'home');
    const out = path.join(tmp, 'cli-2gpu');
    const r = await runCli(sampleTrainFlags(model, out, ['--device', 'cuda:0,1', '--bf16']), { home, env: { LLMT_CUDA_LIB_DIRS: EMU, LLMT_CUEMU_DEVICES: '2' }, timeoutMs: 300_000 },
    );
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
    const job = JSON.parse(fs.readFileSync(path.join(out, 'job.json'), 'utf8')) as { device: string; distributed: { world_size: number; backend: string } };
    expect(job.device).toBe('cuda');
    expect(job.distributed).toMatchObject({ world_size: 2, backend: 'auto' });
    const store = Store.open(path.join(home, 'llms-train.db'));
    let runId = 0;
    try {
      const run = store.runs.list()[0]!;
      runId = run.id;
      expect(run.status).toBe('completed');
      const names = new Set(store.metrics.names(run.id));
      for (const n of ['gpu_mem_bytes', 'rank0.gpu_mem_bytes', 'rank1.gpu_mem_bytes', 'rank1.tokens_per_s']) expect(names.has(n), n).toBe(true);
    } finally {
      store.close();
    }
    const log = fs.readFileSync(path.join(out, `train-${runId}.log`), 'utf8');
    expect(log).toMatch(/"backend":"nccl"/);
    expect(log).toMatch(/"device":"cuda:1"/);
  }, 300_000);

  // What one GPU does, two do data-parallel: the mixed-precision and memory options each take their own paths through the
  // backward and the optimizer step (16-bit and 4-bit weights, DoRA's magnitudes, fp16 loss scaling with its skipped
  // steps, recomputed blocks with their inputs in host memory); with each, 2 GPUs × micro-batch 2 must be the run of 1 GPU
  // × micro-batch 2 × 2 accumulated micro-batches: the same samples, the gradients summed in the same order (cuemu's
  // NCCL sums in rank order, as accumulation does), so the same run bit for bit. (Against
  // 1 GPU × micro-batch 4 the 16-bit runs drift apart by the rounding of differently summed values: 5e-4 in the loss of
  // the 4th bf16 step on one GPU alone, micro-batch 4 vs 2 × 2.)
  const variants: [string, NonNullable<JobOpts['extra']>][] = [
    ['QLoRA nf4, bf16', { job: { quantization: 'nf4' }, training: { precision: 'bf16' } }],
    ['DoRA, bf16, checkpointing', { lora: { use_dora: true }, training: { precision: 'bf16', gradient_checkpointing: true } }],
    ['fp16 with loss scaling', { training: { precision: 'fp16' } }],
    ['checkpoints offloaded to host memory, clipping', { training: { gradient_checkpointing: true, offload_checkpoints: true, max_grad_norm: 0.05 } }],
  ];
  for (const [name, extra] of variants) {
    it(`2 GPUs follow 1 GPU with ${name}`, async () => {
      const tag = name.replace(/[^a-z0-9]+/gi, '-');
      const [one] = await ranks(writeJob(`v1-${tag}`, { mb: 2, extra: { ...extra, training: { ...extra.training, gradient_accumulation_steps: 2 } } }), 1);
      expect(one!.code, one!.stderr + one!.stdout).toBe(0);
      const two = await ranks(writeJob(`v2-${tag}`, { world: 2, mb: 2, extra }), 2);
      for (const r of two) expect(r.code, r.stderr + r.stdout).toBe(0);
      expect(two[0]!.events.find((e) => e.event === 'started')).toMatchObject({ backend: 'nccl', world_size: 2 });
      const a = losses(one!), b = losses(two[0]!);
      expect(b).toHaveLength(4);
      expect(b).toEqual(a);
      const warnings = (r: Result) => r.events.filter((e) => e.event === 'warning').map((e) => e.message);
      expect(warnings(two[0]!)).toEqual(warnings(one!));
      // (the norm's double sum runs bucket by bucket on 2 GPUs, tensor by tensor on 1: the last bits may differ)
      const norms = (r: Result) => r.events.filter((e) => e.event === 'step').map((e) => e.grad_norm as number);
      norms(one!).forEach((g, i) => expect(Math.abs(g - norms(two[0]!)[i]!) / g).toBeLessThan(1e-12));
      expect(fs.readFileSync(path.join(tmp, `v2-${tag}`, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(tmp, `v1-${tag}`, 'adapter_model.safetensors')))).toBe(true);
    }, 300_000);
  }

  // ZeRO-1 on GPU workers: each rank keeps the AdamW moments of its share of the parameters in GPU memory, updates
  // only those and the new values reach every rank through the device all-reduce where the others contribute zeros
  // (exact), so the run is the same run as without it, bit for bit, in less GPU memory per rank.
  it('ZeRO-1 on 2 GPUs: the same full fine-tune bit for bit as without it, in less GPU memory per rank; over Gloo too', async () => {
    // small buckets: several parameter buckets per exchange
    const plain = await ranks(writeJob('z0', { world: 2, mb: 2, full: true, zero: 0, save: 2, bucketMb: 0.05 }), 2);
    const zero = await ranks(writeJob('z1', { world: 2, mb: 2, full: true, zero: 1, save: 2, bucketMb: 0.05 }), 2);
    for (const r of [...plain, ...zero]) expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(zero[0]!.events.find((e) => e.event === 'started')).toMatchObject({ backend: 'nccl', zero_stage: 1, world_size: 2 });
    expect(plain[0]!.events.find((e) => e.event === 'started')).toMatchObject({ zero_stage: 0 });
    expect(zero[0]!.events.some((e) => e.event === 'warning')).toBe(false);
    expect(losses(zero[0]!)).toEqual(losses(plain[0]!));
    const same = (a: string, b: string) => fs.readFileSync(path.join(tmp, a)).equals(fs.readFileSync(path.join(tmp, b)));
    expect(same('z1/model.safetensors', 'z0/model.safetensors')).toBe(true);
    // the checkpoint's optimizer state, gathered from both ranks' GPUs, is the unsharded run's
    expect(same('z1/checkpoint-2/optimizer.safetensors', 'z0/checkpoint-2/optimizer.safetensors')).toBe(true);
    // each rank holds about half the moments (8 bytes per parameter → ≈ 4): its GPU memory drops by about 4 bytes per parameter
    const params = zero[0]!.events.find((e) => e.event === 'started')!.trainable_params as number;
    const gpuMem = (r: Result, rank: number) => ((r.events.find((e) => e.event === 'rank_stats')!.ranks as { gpu_mem_bytes: number }[])[rank]!.gpu_mem_bytes);
    for (const rank of [0, 1]) {
      const saved = gpuMem(plain[0]!, rank) - gpuMem(zero[0]!, rank);
      expect(saved, `rank ${rank}`).toBeGreaterThan(params * 4 * 0.8);
      expect(saved, `rank ${rank}`).toBeLessThan(params * 4 * 1.2);
    }
    // with offload_optimizer (the AdamW step on the host): each rank steps and keeps the moments of its share only, in
    // host memory; the same weights and checkpointed state as the unsharded offloaded run
    const plainOff = await ranks(writeJob('z0o', { world: 2, mb: 2, full: true, zero: 0, save: 2, offload: true }), 2);
    const zeroOff = await ranks(writeJob('z1o', { world: 2, mb: 2, full: true, zero: 1, save: 2, offload: true }), 2);
    for (const r of [...plainOff, ...zeroOff]) expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(zeroOff[0]!.events.find((e) => e.event === 'started')).toMatchObject({ zero_stage: 1, offload_optimizer: true });
    expect(same('z1o/model.safetensors', 'z0o/model.safetensors')).toBe(true);
    expect(same('z1o/checkpoint-2/optimizer.safetensors', 'z0o/checkpoint-2/optimizer.safetensors')).toBe(true);
    if (!HAS_GLOO) return;
    // Gloo on the GPUs: each bucket staged through host memory, the same weights
    const gloo = await ranks(writeJob('z1g', { world: 2, mb: 2, full: true, zero: 1, backend: 'gloo', save: 2, bucketMb: 0.05 }), 2);
    for (const r of gloo) expect(r.code, r.stderr).toBe(0);
    expect(gloo[0]!.events.find((e) => e.event === 'started')).toMatchObject({ backend: 'gloo', zero_stage: 1 });
    expect(same('z1g/model.safetensors', 'z0/model.safetensors')).toBe(true);
  }, 600_000);

  // ZeRO-2 shards the gradients too: a rank's GPU holds gradient buffers for its own share only, plus two staging
  // slots for the stage being computed and the one being summed (docs/distributed.md). Same run as ZeRO-1 (the
  // gradient norm is summed in another order: equal within rounding), less GPU memory; over Gloo too.
  // 8 blocks: each rank stages 4 blocks' gradients in slots of one block.
  it('ZeRO-2 on 2 GPUs: the ZeRO-1 run in less GPU memory per rank (gradients sharded); over Gloo too', async () => {
    const deep = path.join(tmp, 'deep');
    deepenModel(model, deep, 8);
    const opts = { model: deep, world: 2, mb: 2, full: true, extra: { training: { gradient_accumulation_steps: 2, max_grad_norm: 0.5 } } };
    const z2 = await ranks(writeJob('z2', { ...opts, zero: 2 }), 2);
    const z1 = await ranks(writeJob('z1ga', { ...opts, zero: 1 }), 2);
    for (const r of [...z2, ...z1]) expect(r.code, r.stderr + r.stdout).toBe(0);
    const started = z2[0]!.events.find((e) => e.event === 'started')!;
    expect(started).toMatchObject({ backend: 'nccl', zero_stage: 2, world_size: 2 });
    const a = losses(z1[0]!), b = losses(z2[0]!);
    expect(b).toHaveLength(4);
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-6);
    const wa = readSafetensors(path.join(tmp, 'z1ga', 'model.safetensors'));
    const wb = readSafetensors(path.join(tmp, 'z2', 'model.safetensors'));
    let worst = 0;
    for (const [k, x] of wa) x.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - wb.get(k)![i]!))));
    expect(worst).toBeLessThan(2e-5);
    // each rank drops the gradient buffers of the other's share (≈ 4 bytes × half the parameters) and adds the slots
    const params = started.trainable_params as number;
    const slots = started.zero2_slot_bytes as number;
    expect(slots).toBeGreaterThan(0);
    const gpuMem = (r: Result, rank: number) => ((r.events.find((e) => e.event === 'rank_stats')!.ranks as { gpu_mem_bytes: number }[])[rank]!.gpu_mem_bytes);
    for (const rank of [0, 1]) {
      const saved = gpuMem(z1[0]!, rank) - gpuMem(z2[0]!, rank);
      console.log(`ZeRO-2 rank ${rank}: ${params} parameters, slots ${slots} B, GPU memory ${gpuMem(z1[0]!, rank)} → ${gpuMem(z2[0]!, rank)} B`);
      expect(saved, `rank ${rank}`).toBeGreaterThan(((params * 4) / 2 - slots) * 0.8);
    }
    if (!HAS_GLOO) return;
    const gloo = await ranks(writeJob('z2g', { ...opts, zero: 2, backend: 'gloo' }), 2);
    for (const r of gloo) expect(r.code, r.stderr).toBe(0);
    expect(gloo[0]!.events.find((e) => e.event === 'started')).toMatchObject({ backend: 'gloo', zero_stage: 2 });
    const c = losses(gloo[0]!);
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - c[i]!)).toBeLessThan(1e-6);
  }, 600_000);

  it('resumes a ZeRO-1 GPU checkpoint on 2 GPUs to the uninterrupted run\'s weights, and on 1 GPU', async () => {
    const ck = path.join(tmp, 'z1', 'checkpoint-2');
    const two = await ranks(writeJob('z1r', { world: 2, mb: 2, full: true, zero: 1, resume: ck }), 2);
    for (const r of two) expect(r.code, r.stderr).toBe(0);
    expect(two[0]!.events.find((e) => e.event === 'started')).toMatchObject({ start_step: 2, zero_stage: 1 });
    expect(fs.readFileSync(path.join(tmp, 'z1r', 'model.safetensors')).equals(fs.readFileSync(path.join(tmp, 'z1', 'model.safetensors')))).toBe(true);
    // any world size resumes it: one GPU with micro-batch 4 takes the same samples per step
    const [one] = await ranks(writeJob('z1r1', { mb: 4, full: true, resume: ck }), 1);
    expect(one!.code, one!.stderr).toBe(0);
    const a = losses(one!), b = losses(two[0]!);
    expect(a).toHaveLength(2);
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-5);
  }, 600_000);

  it('refuses a GPU index in a data-parallel job, and NCCL for CPU workers', async () => {
    const idx = await ranks(writeJob('idx', { world: 2, mb: 2, device: 'cuda:1' }), 2);
    const e = idx[0]!.events.find((x) => x.event === 'error')!;
    expect(e.code).toBe('BAD_INPUT');
    expect(e.message).toMatch(/name no GPU index .*CUDA_VISIBLE_DEVICES/);
    const cpu = await ranks(writeJob('cpu-nccl', { world: 2, mb: 2, device: 'cpu', backend: 'nccl' }), 2);
    const c = cpu[0]!.events.find((x) => x.event === 'error')!;
    expect(c.code).toBe('UNSUPPORTED');
    expect(c.message).toMatch(/needs GPU workers/);
  }, 300_000);
});
