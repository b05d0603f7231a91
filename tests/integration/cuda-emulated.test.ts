// The CUDA backend end to end through the engine's CLI and the app's CLI, on cuemu (native/tests/cuemu): the real
// backend_cuda.cpp and kernels.cu, run on the CPU behind an emulated driver API + cuBLAS. A CUDA build (CI's) has it
// in native/build/cuemu; a CPU-only developer build has no CUDA backend to test, and these tests say so and skip.
// What they check: a LoRA run on "cuda" (fp32, bf16, fp16 mixed precision) follows the CPU run's loss curve and
// ends in the same adapter; device out-of-memory is the engine's OOM error with a hint and leaves the last checkpoint
// intact; a failing kernel is named; `llms-train train --device cuda --bf16` runs through the app's CLI.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ensureDemoModel } from '../../src-main/core/runs/demo';
import { callApi, post, ROOT, runCli, sampleTrainFlags, startCli } from '../helpers/app';
import { EMU, ENGINE, HAVE_EMU, readSafetensors, tinyLlamaRun } from '../helpers/native';

if (!HAVE_EMU) console.warn(`cuda-emulated: skipped — ${EMU} is missing (this engine build has no CUDA backend: build with nvcc, as CI does)`);

let tmp: string;
let model: string;
let tokens: string;
const emuEnv = (extra: Record<string, string> = {}) => ({ ...process.env, LLMT_CUDA_LIB_DIRS: EMU, ...extra });

type Ev = { event: string; loss?: number; code?: string; message?: string; hint?: string; step?: number; [k: string]: unknown };

function train(
  name: string,
  device: string,
  precision: string,
  extra: { env?: Record<string, string>; steps?: number; resume?: string; model?: string; targets?: string[]; offload?: boolean; ckpt?: 'on' | 'offload'; dora?: boolean; quant?: string } = {},
) {
  const out = path.join(tmp, name);
  const job = path.join(tmp, `${name}.job.json`);
  fs.writeFileSync(
    job,
    JSON.stringify({
      model: extra.model ?? model,
      device,
      lora: { r: 4, alpha: 8, dropout: 0.1, target_modules: extra.targets ?? ['q_proj', 'v_proj', 'o_proj', 'down_proj'], ...(extra.dora ? { use_dora: true } : {}) },
      ...(extra.quant ? { quantization: extra.quant } : {}),
      data: { train: tokens },
      training: {
        learning_rate: 0.01, max_steps: extra.steps ?? 6, micro_batch_size: 3, gradient_accumulation_steps: 2, seed: 3, precision,
        ...(extra.offload ? { offload_optimizer: true } : {}),
        ...(extra.ckpt ? { gradient_checkpointing: true, offload_checkpoints: extra.ckpt === 'offload' } : {}),
      },
      output: { dir: out, logging_steps: 1, save_steps: 2 },
      ...(extra.resume ? { resume_from: extra.resume } : {}),
      threads: 2,
    }),
  );
  const r = spawnSync(ENGINE, ['train', '--job', job], { encoding: 'utf8', env: emuEnv(extra.env), timeout: 300_000 });
  const events = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Ev);
  return { out, status: r.status, stderr: r.stderr, events, losses: events.filter((e) => e.event === 'step').map((e) => e.loss!) };
}

function maxRel(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(...a.map((x, i) => Math.abs(x - b[i]!) / Math.max(Math.abs(x), 1e-6)));
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-cuemu-'));
  ({ model, tokens } = tinyLlamaRun(tmp));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!HAVE_EMU)('CUDA backend on cuemu (emulated GPU)', () => {
  it('lists the emulated GPU as runnable', () => {
    const r = spawnSync(ENGINE, ['--version'], { encoding: 'utf8', env: emuEnv() });
    expect(r.stdout).toMatch(/backends: cpu, cuda\(sm_\d+/);
    expect(r.stdout).toMatch(/cuda: 1 device\(s\)[^\n]*\n\s+\[0\] cuemu/);
  });

  for (const precision of ['fp32', 'bf16', 'fp16']) {
    it(`trains LoRA on cuda in ${precision} like the CPU does (loss curve and adapter)`, () => {
      const cpu = train(`cpu-${precision}`, 'cpu', precision);
      const gpu = train(`gpu-${precision}`, 'cuda', precision);
      expect(cpu.status, cpu.stderr).toBe(0);
      expect(gpu.status, gpu.stderr).toBe(0);
      expect(gpu.events.some((e) => e.event === 'warning' && /CUDA unavailable/.test(e.message ?? ''))).toBe(false);
      // 16-bit GEMM inputs: a last-bit difference between the CPU's and the GPU's fp32 activations can move an input by
      // one bf16/fp16 step, so mixed-precision runs agree less tightly than fp32 ones
      expect(maxRel(cpu.losses, gpu.losses)).toBeLessThan(precision === 'fp32' ? 1e-4 : 5e-3);
      if (precision !== 'fp32') expect(maxRel(cpu.losses, train(`cpu-f32ref-${precision}`, 'cpu', 'fp32').losses)).toBeGreaterThan(0);
      const a = readSafetensors(path.join(cpu.out, 'adapter_model.safetensors'));
      const b = readSafetensors(path.join(gpu.out, 'adapter_model.safetensors'));
      let worst = 0;
      let d2 = 0;
      let n2 = 0;
      for (const [k, v] of a)
        v.forEach((x, i) => {
          const y = b.get(k)![i]!;
          worst = Math.max(worst, Math.abs(x - y));
          d2 += (x - y) ** 2;
          n2 += x * x;
        });
      // fp32: element by element. 16-bit: AdamW turns a near-zero gradient element whose sign the rounding flipped
      // into a ±lr step, so the adapters are compared as vectors (relative L2 distance)
      if (precision === 'fp32') expect(worst).toBeLessThan(1e-4);
      else expect(Math.sqrt(d2 / n2)).toBeLessThan(5e-2);
    }, 300_000);
  }

  it('bf16 on a head_dim-64 model: the tensor-core attention trains like the CPU', () => {
    // a tiny GPT-NeoX with one head of 64 (the same weight shapes as its 4 heads of 16): head_dim 64 takes the
    // WMMA flash-attention kernels
    const hd64 = path.join(tmp, 'model-hd64');
    expect(spawnSync(ENGINE, ['create-tiny', '--family', 'gpt_neox', '--out', hd64]).status).toBe(0);
    const cfg = JSON.parse(fs.readFileSync(path.join(hd64, 'config.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(hd64, 'config.json'), JSON.stringify({ ...cfg, num_attention_heads: 1 }));
    const o = { steps: 4, model: hd64, targets: ['query_key_value', 'dense'] };
    const cpu = train('hd64-cpu', 'cpu', 'bf16', o);
    const gpu = train('hd64-gpu', 'cuda', 'bf16', o);
    const notc = train('hd64-gpu-notc', 'cuda', 'bf16', { ...o, env: { LLMT_CUDA_NO_TC_ATTENTION: '1' } });
    for (const r of [cpu, gpu, notc]) expect(r.status, r.stderr).toBe(0);
    expect(maxRel(cpu.losses, gpu.losses)).toBeLessThan(1e-2);
    expect(maxRel(notc.losses, gpu.losses)).toBeLessThan(1e-2);
    expect(maxRel(notc.losses, gpu.losses)).toBeGreaterThan(0); // the tensor-core kernels ran (they round P and dS too)
  }, 300_000);

  // Llama 3's frequency-scaled RoPE table, LlamaConfig attention_bias (q, k, v, o) with 24-wide heads on a 64-wide
  // model, Mistral's head_dim, Qwen2's q/k/v biases and tied head: the CUDA backend follows the CPU in fp32 and bf16
  for (const family of ['llama3', 'llama_bias', 'mistral', 'qwen2']) {
    it(`${family}: LoRA on cuda follows the CPU (fp32 and bf16)`, () => {
      const dir = path.join(tmp, `model-${family}`);
      expect(spawnSync(ENGINE, ['create-tiny', '--family', family, '--out', dir, '--seed', '5']).status).toBe(0);
      const o = { steps: 4, model: dir, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj'] };
      for (const precision of ['fp32', 'bf16']) {
        const cpu = train(`${family}-cpu-${precision}`, 'cpu', precision, o);
        const gpu = train(`${family}-gpu-${precision}`, 'cuda', precision, o);
        expect(cpu.status, cpu.stderr).toBe(0);
        expect(gpu.status, gpu.stderr).toBe(0);
        expect(gpu.events.some((e) => e.event === 'warning' && /CUDA unavailable/.test(e.message ?? ''))).toBe(false);
        expect(cpu.losses.length).toBe(4);
        expect(maxRel(cpu.losses, gpu.losses)).toBeLessThan(precision === 'fp32' ? 1e-4 : 1e-2);
      }
    }, 300_000);
  }

  // DoRA through the engine's CLI on the GPU: fp32, bf16 and QLoRA (nf4 weights, bf16 compute) follow the CPU
  it('DoRA (use_dora) on cuda follows the CPU: fp32, bf16 and QLoRA nf4', () => {
    for (const [precision, quant, tol] of [['fp32', undefined, 1e-4], ['bf16', undefined, 1e-2], ['bf16', 'nf4', 1e-2]] as const) {
      const o = { steps: 4, dora: true, ...(quant ? { quant } : {}) };
      const cpu = train(`dora-cpu-${precision}-${quant ?? 'w'}`, 'cpu', precision, o);
      const gpu = train(`dora-gpu-${precision}-${quant ?? 'w'}`, 'cuda', precision, o);
      expect(cpu.status, cpu.stderr).toBe(0);
      expect(gpu.status, gpu.stderr).toBe(0);
      expect(gpu.events.some((e) => e.event === 'warning' && /CUDA unavailable/.test(e.message ?? ''))).toBe(false);
      expect(cpu.losses.length).toBe(4);
      expect(maxRel(cpu.losses, gpu.losses), `${precision} ${quant ?? ''}`).toBeLessThan(tol);
      const a = readSafetensors(path.join(gpu.out, 'adapter_model.safetensors'));
      expect([...a.keys()].filter((k) => k.endsWith('.lora_magnitude_vector')).length).toBe(8);
    }
  }, 300_000);

  it('offload_optimizer: AdamW on the host gives the same run with 8 bytes per trainable parameter less on the GPU, and resumes', () => {
    const dev = train('adam-dev', 'cuda', 'fp32');
    const off = train('adam-host', 'cuda', 'fp32', { offload: true });
    for (const r of [dev, off]) expect(r.status, r.stderr).toBe(0);
    expect(off.events.find((e) => e.event === 'started')!.offload_optimizer).toBe(true);
    expect(dev.events.find((e) => e.event === 'started')!.offload_optimizer).toBe(false);
    expect(maxRel(dev.losses, off.losses)).toBeLessThan(1e-6);
    const a = readSafetensors(path.join(dev.out, 'adapter_model.safetensors'));
    const b = readSafetensors(path.join(off.out, 'adapter_model.safetensors'));
    let worst = 0;
    let trainable = 0;
    for (const [k, v] of a) {
      trainable += v.length;
      v.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - b.get(k)![i]!))));
    }
    expect(worst).toBeLessThan(1e-6);
    const peak = (r: typeof dev) => Math.max(...r.events.filter((e) => e.event === 'step').map((e) => e.gpu_peak_mem_bytes as number));
    // the moments (2 × 4 bytes per trainable parameter) never reach the GPU; allocations are rounded up to 512 bytes
    expect(peak(dev) - peak(off)).toBeGreaterThanOrEqual(8 * trainable);
    expect(peak(dev) - peak(off)).toBeLessThan(8 * trainable + 512 * 2 * a.size);
    // the checkpoint holds the host moments; resuming from it continues the same run
    const resumed = train('adam-host-resume', 'cuda', 'fp32', { offload: true, resume: path.join(off.out, 'checkpoint-4') });
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(maxRel(resumed.losses, off.losses.slice(4))).toBeLessThan(1e-6);
    // on the CPU the option changes nothing, and says so
    const cpu = train('adam-cpu', 'cpu', 'fp32', { offload: true });
    expect(cpu.status, cpu.stderr).toBe(0);
    expect(cpu.events.some((e) => e.event === 'warning' && /offload_optimizer applies to GPU runs/.test(e.message ?? ''))).toBe(true);
  }, 300_000);

  it('offload_checkpoints: the checkpointed block inputs in host memory give the same run with their bytes off the GPU', () => {
    const on = train('ckpt-dev', 'cuda', 'fp32', { ckpt: 'on', steps: 4 });
    const off = train('ckpt-host', 'cuda', 'fp32', { ckpt: 'offload', steps: 4 });
    for (const r of [on, off]) expect(r.status, r.stderr).toBe(0);
    expect(off.events.find((e) => e.event === 'started')!.offload_checkpoints).toBe(true);
    expect(off.losses).toEqual(on.losses); // the same values, only kept elsewhere
    const a = readSafetensors(path.join(on.out, 'adapter_model.safetensors'));
    const b = readSafetensors(path.join(off.out, 'adapter_model.safetensors'));
    for (const [k, v] of a) expect(Buffer.from(v.buffer).equals(Buffer.from(b.get(k)!.buffer)), k).toBe(true);
    const peak = (r: typeof on) => Math.max(...r.events.filter((e) => e.event === 'step').map((e) => e.gpu_peak_mem_bytes as number));
    // tiny llama: 2 blocks, micro-batch 3 × 20 tokens, hidden 64 — one fp32 block input for each block but the last
    // (whose backward reads what its forward left on the GPU)
    expect(peak(on) - peak(off)).toBe(1 * 3 * 20 * 64 * 4);
    // it needs checkpointing (there is nothing to move without it)
    const bad = path.join(tmp, 'bad-ckpt.json');
    fs.writeFileSync(bad, JSON.stringify({ model, device: 'cuda', data: { train: tokens }, training: { offload_checkpoints: true }, output: { dir: path.join(tmp, 'bad-ckpt') } }));
    const r = spawnSync(ENGINE, ['train', '--job', bad], { encoding: 'utf8', env: emuEnv() });
    expect(r.status).not.toBe(0);
    expect(r.stdout).toMatch(/offload_checkpoints .* needs gradient_checkpointing: true/);
  }, 300_000);

  it('`bench --profile` times every kernel and cuBLAS call of a LoRA step on the device; the CPU says it cannot', () => {
    const run = train('prof-adapter', 'cpu', 'fp32', { steps: 2 });
    expect(run.status, run.stderr).toBe(0);
    const args = ['bench', '--model', model, '--adapter', run.out, '--seq', '24', '--iters', '1', '--warmup', '0', '--precision', 'bf16', '--profile'];
    const r = spawnSync(ENGINE, [...args, '--device', 'cuda'], { encoding: 'utf8', env: emuEnv(), timeout: 300_000 });
    expect(r.status, r.stderr).toBe(0);
    type Row = { name: string; calls: number; ms: number; flops: number; tflops: number | null };
    const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
      device: string;
      profile: { step: string; wall_ms: number; kernel_ms: number; names: number; rows: Row[]; rest_ms: number; rest_calls: number };
    };
    const p = j.profile;
    expect(j.device).toBe('cuda:0');
    expect(p.step).toBe('forward+backward');
    const names = p.rows.map((x) => x.name);
    // the step's kernels: attention forward and both backward halves, norms, the loss, the 16-bit GEMMs on cuBLAS
    for (const k of ['k_attn_fwd', 'k_attn_bwd_dq', 'k_attn_bwd_dkdv', 'k_rms_fwd', 'k_rms_bwd', 'k_ce_fwd', 'k_ce_bwd'])
      expect(names, k).toContain(k);
    const gemms = p.rows.filter((x) => x.name.startsWith('cublasGemmEx bf16 '));
    expect(gemms.length).toBeGreaterThan(0);
    for (const g of gemms) {
      // the name carries the shape; its FLOPs are 2·M·N·K per call
      const [m, n, k] = g.name.split(' ').at(-1)!.split('x').map(Number);
      expect(g.flops).toBe(2 * m! * n! * k! * g.calls);
      expect(g.tflops!).toBeCloseTo(g.flops / (g.ms * 1e-3) / 1e12, 6);
    }
    // the tiny llama (2 layers, 24 tokens, frozen q/k/v/o/gate/up/down in bf16): forward q,k,v,o,gate,up,down and, in
    // the backward, their input gradients: 7 nt + 7 nn per layer (plus the untied head, fp32 or 16-bit)
    const nt = gemms.filter((g) => / nt 24x/.test(g.name)).reduce((a, g) => a + g.calls, 0);
    const nn = gemms.filter((g) => / nn 24x/.test(g.name)).reduce((a, g) => a + g.calls, 0);
    expect(nt).toBeGreaterThanOrEqual(14);
    expect(nn).toBeGreaterThanOrEqual(14);
    // longest first, totals consistent, the device busy for no longer than the step took
    for (let i = 1; i < p.rows.length; ++i) expect(p.rows[i]!.ms).toBeLessThanOrEqual(p.rows[i - 1]!.ms);
    const sum = p.rows.reduce((a, x) => a + x.ms, 0) + p.rest_ms;
    expect(sum).toBeCloseTo(p.kernel_ms, 3);
    expect(p.kernel_ms).toBeGreaterThan(0);
    expect(p.kernel_ms).toBeLessThanOrEqual(p.wall_ms * 1.01);
    const cpu = spawnSync(ENGINE, args, { encoding: 'utf8', env: emuEnv(), timeout: 300_000 });
    expect(cpu.status).not.toBe(0);
    expect(cpu.stderr).toMatch(/UNSUPPORTED: profiling times device kernels: the cpu backend has none/);
  }, 300_000);

  it("the pre-flight estimate of a GPU run matches the CUDA allocator's measured peak (the context aside)", async () => {
    const { estimateRun } = await import('../../src-main/core/runs/estimate');
    const { parseRunSpec } = await import('../../src-main/core/runs/runspec');
    const demo = path.join(tmp, 'demo-est');
    expect(spawnSync(ENGINE, ['create-tiny', '--family', 'demo', '--out', demo]).status).toBe(0);
    const info = JSON.parse(spawnSync(ENGINE, ['inspect', '--model', demo], { encoding: 'utf8' }).stdout);
    const lora = { r: 8, alpha: 16, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };
    for (const [T, mb, ckpt, precision, offload, offloadCkpt] of [[64, 4, false, 'fp32', false, false], [64, 4, true, 'bf16', false, false], [128, 2, false, 'bf16', true, false], [64, 4, true, 'fp32', false, true]] as const) {
      const tok = path.join(tmp, `gpu-est-${T}.json`);
      const ids = Array.from({ length: 16 }, (_, i) => Array.from({ length: T }, (_, j) => ((7 * i + j) % 300) + 4));
      fs.writeFileSync(tok, JSON.stringify({ input_ids: ids, labels: ids }));
      const job = path.join(tmp, 'gpu-est-job.json');
      const training = { max_steps: 2, micro_batch_size: mb, gradient_checkpointing: ckpt, precision, offload_optimizer: offload, offload_checkpoints: offloadCkpt };
      fs.writeFileSync(job, JSON.stringify({ model: demo, device: 'cuda', lora, data: { train: tok }, training, output: { dir: path.join(tmp, `gpu-est-out-${T}-${mb}`), logging_steps: 1, save_steps: 1000 }, threads: 2 }));
      const r = spawnSync(ENGINE, ['train', '--job', job], { encoding: 'utf8', env: emuEnv() });
      expect(r.status, r.stderr).toBe(0);
      const peak = Math.max(...r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Ev).filter((e) => e.event === 'step').map((e) => e.gpu_peak_mem_bytes as number));
      const spec = parseRunSpec({ model: { path: demo }, lora: { ...lora, dropout: 0 }, data: { train: tok, max_source_length: T - 16, max_target_length: 16 }, training, devices: { kind: 'cuda', ids: [0] }, output: { dir: '/o' } });
      const est = estimateRun(info, spec, 2);
      expect(est.stepSeconds).toBeNull(); // a GPU's speed is not guessed
      expect(est.bytes.process).toBe(512 * 2 ** 20); // the CUDA context, which the allocator does not see
      const engineBytes = est.bytes.total - est.bytes.process;
      console.log(`GPU estimate T=${T} mb=${mb} ckpt=${ckpt} ${precision} offload=${offload}/${offloadCkpt}: ${(engineBytes / peak).toFixed(3)} of the measured peak`);
      expect(Math.abs(engineBytes - peak) / peak, `T=${T} mb=${mb} ckpt=${ckpt} ${precision} offload=${offload}/${offloadCkpt}: estimate ${engineBytes}, measured ${peak}`).toBeLessThan(0.15);
    }
  }, 300_000);

  it('predict runs on the GPU it is given (same answers as the CPU) and says where it ran', async () => {
    const home = path.join(tmp, 'home-infer');
    const demo = ensureDemoModel(home);
    const data = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'test.json');
    const predictOn = async (name: string, more: string[]) => {
      const out = path.join(tmp, `${name}.jsonl`);
      const r = await runCli(['predict', '--model', demo, '--data', data, '--out', out, '--max_new_tokens', '6', '--max_source_length', '64', '--limit', '8', ...more], {
        home,
        env: { LLMT_CUDA_LIB_DIRS: EMU },
        timeoutMs: 300_000,
      });
      expect(r.code, r.stderr).toBe(0);
      return { stdout: r.stdout, lines: fs.readFileSync(out, 'utf8') };
    };
    const cpu = await predictOn('pred-cpu', []);
    const gpu = await predictOn('pred-gpu', ['--device', 'cuda']);
    const gpu16 = await predictOn('pred-gpu16', ['--device', 'cuda:0', '--precision', 'bf16']);
    expect(cpu.stdout).toMatch(/wrote 8 prediction\(s\) .* on cpu \(fp32;/);
    expect(gpu.stdout).toMatch(/wrote 8 prediction\(s\) .* on cuda:0 \(fp32;/);
    expect(gpu16.stdout).toMatch(/on cuda:0 \(bf16;/);
    expect(gpu.lines).toBe(cpu.lines);
    // the base in 4 bits (QLoRA's NF4) on the GPU: the 4-bit kernels answer as the CPU's 4-bit path does
    const cpu4 = await predictOn('pred-cpu4', ['--quantization', 'nf4']);
    const gpu4 = await predictOn('pred-gpu4', ['--device', 'cuda:0', '--quantization', 'nf4']);
    expect(gpu4.stdout).toMatch(/on cuda:0 \(fp32, nf4 base weights;/);
    expect(gpu4.lines).toBe(cpu4.lines);
    // the engine's own CLI the same way: generate --device --precision --quantization
    const gen = (device: string) => {
      const r = spawnSync(ENGINE, ['generate', '--model', demo, '--prompt-ids', '1,40,41', '--max-new-tokens', '5', '--greedy', '--device', device, '--precision', 'bf16', '--quantization', 'nf4'], {
        encoding: 'utf8',
        env: { ...process.env, LLMT_CUDA_LIB_DIRS: EMU },
      });
      expect(r.status, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { ids: number[] }).ids;
    };
    expect(gen('cuda:0')).toEqual(gen('cpu'));
    // a GPU that is not there: the CPU, and the report says so
    const missing = await predictOn('pred-gpu3', ['--device', 'cuda:3']);
    expect(missing.stdout).toMatch(/ on cpu \(fp32;/);
    expect(missing.lines).toBe(cpu.lines);
  }, 300_000);

  it('A/B on the GPU: two models answer one prompt, taking turns on the device (no crash), each as it answers alone', async () => {
    const home = path.join(tmp, 'home-ab');
    const demo = ensureDemoModel(home);
    const other = path.join(tmp, 'ab-llama');
    expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', other]).status).toBe(0);
    const app = await startCli(['serve', '--port', '0'], { home, env: { LLMT_CUDA_LIB_DIRS: EMU } });
    try {
      const params = { max_new_tokens: 6, do_sample: false };
      type Side = { text?: string; device?: string; error?: { message: string } };
      const ab = () => callApi<{ a: Side; b: Side }>(app, 'compareAnswers', { requestId: `ab-${Math.random()}`, a: { model: demo }, b: { model: other }, prompt: 'hello', params });
      const first = await ab();
      for (let i = 0; i < 3; i++) {
        const r = i === 0 ? first : await ab();
        for (const side of [r.a, r.b]) {
          expect(side.error, JSON.stringify(side.error)).toBeUndefined();
          expect(side.device).toBe('cuda:0');
        }
        expect(r.a.text).toBe(first.a.text);
        expect(r.b.text).toBe(first.b.text);
      }
      // each side as a chat of its own answers it
      const alone = async (model: string) => {
        const s = await callApi<{ id: number }>(app, 'createChatSession', { model, params });
        return (await callApi<{ answer: { text: string } }>(app, 'sendChat', { id: s.id, text: 'hello' })).answer.text;
      };
      expect(await alone(demo)).toBe(first.a.text);
      expect(await alone(other)).toBe(first.b.text);
    } finally {
      await app.stop();
    }
  }, 300_000);

  it('the app runs chat where its settings say: auto takes the GPU in bf16, a change restarts the engine host there', async () => {
    const home = path.join(tmp, 'home-app');
    const demo = ensureDemoModel(home);
    const app = await startCli(['serve', '--port', '0'], { home, env: { LLMT_CUDA_LIB_DIRS: EMU } });
    try {
      const status = await callApi<{ inference: { device: string; precision: string } }>(app, 'getStatus', {});
      expect(status.inference).toEqual({ device: 'cuda:0', precision: 'bf16', quantization: 'auto' });
      const session = await callApi<{ id: number }>(app, 'createChatSession', { model: demo, params: { max_new_tokens: 4, do_sample: false } });
      const a = await callApi<{ answer: { device: string; tokens: number } }>(app, 'sendChat', { id: session.id, text: 'hello' });
      expect(a.answer.device).toBe('cuda:0');
      expect(a.answer.tokens).toBeGreaterThan(0);
      const s = await callApi<{ inferenceDevice: string; inferencePrecision: string }>(app, 'updateSettings', { inferenceDevice: 'cpu' });
      expect(s).toMatchObject({ inferenceDevice: 'cpu', inferencePrecision: 'auto' });
      expect((await callApi<{ inference: unknown }>(app, 'getStatus', {})).inference).toEqual({ device: 'cpu', precision: 'fp32', quantization: 'auto' });
      const b = await callApi<{ answer: { device: string; restarted: string | null } }>(app, 'sendChat', { id: session.id, text: 'hello again' });
      expect(b.answer.device).toBe('cpu');
      expect(b.answer.restarted).toBeNull(); // ended on purpose, not a crash
      // the base in 4 bits for every model: the engine host restarts with it, and the next answer comes from it
      const q = await callApi<{ inferenceQuantization: string }>(app, 'updateSettings', { inferenceQuantization: 'nf4' });
      expect(q.inferenceQuantization).toBe('nf4');
      expect((await callApi<{ inference: unknown }>(app, 'getStatus', {})).inference).toEqual({ device: 'cpu', precision: 'fp32', quantization: 'nf4' });
      const c = await callApi<{ answer: { device: string; tokens: number; restarted: string | null } }>(app, 'sendChat', { id: session.id, text: 'and again' });
      expect(c.answer).toMatchObject({ device: 'cpu', restarted: null });
      expect(c.answer.tokens).toBeGreaterThan(0);
      const bad = await post(app.origin, 'updateSettings', { inferenceDevice: 'gpu0' }, { 'X-LLMT-Token': app.token });
      expect(bad.status).toBe(400);
      expect(JSON.stringify(bad.json.error)).toMatch(/inferenceDevice/);
    } finally {
      await app.stop();
    }
  }, 300_000);

  it('device out-of-memory is an OOM error with a hint, and the last checkpoint stays intact', () => {
    const first = train('oom', 'cuda', 'fp32', { steps: 2 });
    expect(first.status, first.stderr).toBe(0);
    const ckpt = path.join(first.out, 'checkpoint-2', 'adapter_model.safetensors');
    const before = fs.readFileSync(ckpt);
    const r = train('oom', 'cuda', 'fp32', { steps: 4, resume: path.join(first.out, 'checkpoint-2'), env: { LLMT_CUEMU_MEMORY_MB: '1' } });
    expect(r.status).not.toBe(0);
    const err = r.events.find((e) => e.event === 'error');
    expect(err?.code).toBe('OOM');
    expect(err?.message).toMatch(/CUDA out of memory allocating .* on cuda:0/);
    expect(`${err?.message} ${err?.hint}`).toMatch(/micro-batch|micro_batch_size/);
    expect(fs.readFileSync(ckpt).equals(before)).toBe(true);
    expect(fs.readdirSync(first.out).filter((f) => f.includes('.tmp'))).toEqual([]);
  }, 300_000);

  it('a failing kernel is a CUDA error that names it', () => {
    const r = train('fail', 'cuda', 'fp32', { env: { LLMT_CUEMU_FAIL_KERNEL: 'k_rms_fwd' } });
    expect(r.status).not.toBe(0);
    const err = r.events.find((e) => e.event === 'error');
    expect(err?.code).toBe('CUDA');
    expect(err?.message).toMatch(/k_rms_fwd/);
  }, 300_000);

  it('`llms-train train --device cuda --bf16` runs through the app CLI on the GPU', async () => {
    const out = path.join(tmp, 'cli-run');
    const r = await runCli(sampleTrainFlags(model, out, ['--max_source_length', '48', '--device', 'cuda:0', '--bf16']), { home: path.join(tmp, 'home'), env: { LLMT_CUDA_LIB_DIRS: EMU }, timeoutMs: 300_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(/CUDA unavailable/);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as { r: number };
    expect(cfg.r).toBeGreaterThan(0);
  }, 300_000);
});
