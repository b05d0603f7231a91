// Several local GPUs in one run (data parallel, one worker per GPU): what the RunSpec accepts and refuses (with
// the field named), the engine job it becomes, the per-GPU memory check, the workers' environments
// (CUDA_VISIBLE_DEVICES for multi-GPU runs only), the device queue, and ZeRO-1 (the seed's DeepSpeed ZeRO) on GPUs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { estimateRun } from '../../src-main/core/runs/estimate';
import { applyDeepspeed, deviceLabel, parseRunSpec, RunSpecError, toEngineJob } from '../../src-main/core/runs/runspec';
import { devicesOverlap, fitCheck, gpuShortfall, workerEnv } from '../../src-main/core/runs/service';

const base = { model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } };
const gpus = (ids: number[], distributed: object = { nproc_per_node: ids.length }) => parseRunSpec({ ...base, devices: { kind: 'cuda', ids }, distributed });

/** The field errors of a refused spec (fails the test if it is accepted). */
function refused(input: object): { path: string; message: string }[] {
  try {
    parseRunSpec(input);
  } catch (err) {
    expect(err).toBeInstanceOf(RunSpecError);
    return (err as RunSpecError).fields;
  }
  throw new Error('the spec was accepted');
}

const GiB = 2 ** 30;

describe('RunSpec on several GPUs', () => {
  it('accepts two GPUs with one worker each', () => {
    const spec = gpus([0, 1]);
    expect(spec.devices).toEqual({ kind: 'cuda', ids: [0, 1] });
    expect(spec.distributed).toEqual({ nproc_per_node: 2, zero_stage: 0 });
    expect(deviceLabel(spec)).toBe('GPU 0, 1');
    expect(deviceLabel(gpus([1]))).toBe('GPU 1');
    expect(deviceLabel(parseRunSpec({ ...base, distributed: { nproc_per_node: 2 } }))).toBe('CPU × 2 workers');
  });

  it('refuses a worker count that is not one per GPU, naming the field', () => {
    // two GPUs, the default single worker / three workers
    expect(refused({ ...base, devices: { kind: 'cuda', ids: [0, 1] } })).toEqual([{ path: 'distributed.nproc_per_node', message: expect.stringMatching(/one worker per GPU: nproc_per_node must be 2 .*not 1/) }]);
    expect(refused({ ...base, devices: { kind: 'cuda', ids: [0, 1] }, distributed: { nproc_per_node: 3 } })).toEqual([{ path: 'distributed.nproc_per_node', message: expect.stringMatching(/must be 2 .*not 3/) }]);
    // one GPU (or "cuda" without an id) with several workers
    expect(refused({ ...base, devices: { kind: 'cuda', ids: [1] }, distributed: { nproc_per_node: 2 } })).toEqual([{ path: 'distributed.nproc_per_node', message: expect.stringMatching(/one worker per GPU: 2 workers on one GPU/) }]);
    expect(refused({ ...base, devices: { kind: 'cuda', ids: [] }, distributed: { nproc_per_node: 2 } })[0]!.path).toBe('distributed.nproc_per_node');
    // a GPU listed twice
    expect(refused({ ...base, devices: { kind: 'cuda', ids: [0, 0] }, distributed: { nproc_per_node: 2 } })).toEqual([{ path: 'devices.ids', message: expect.stringMatching(/each GPU may be listed once/) }]);
  });

  it('accepts ZeRO-1 on several GPUs as on CPU workers, and the job carries it', () => {
    const spec = parseRunSpec({ ...base, method: 'full', devices: { kind: 'cuda', ids: [0, 1] }, distributed: { nproc_per_node: 2, zero_stage: 1 } });
    expect(spec.distributed).toEqual({ nproc_per_node: 2, zero_stage: 1 });
    expect((toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { distributed: unknown }).distributed).toEqual({ world_size: 2, backend: 'auto', zero_stage: 1 });
    expect(parseRunSpec({ ...base, method: 'full', distributed: { nproc_per_node: 2, zero_stage: 1 } }).distributed.zero_stage).toBe(1);
  });

  it('the memory estimate gives each ZeRO-1 worker the AdamW moments of its share only (full fine-tuning)', () => {
    const info = { path: '/m', supported: true, model_type: 'llama', hidden: 256, intermediate: 688, layers: 4, vocab: 32000, heads: 8, parameters: 19_860_736 } as Parameters<typeof estimateRun>[0];
    const est = (ids: number[], zero: 0 | 1, method = 'full', offload = false) =>
      estimateRun(info, parseRunSpec({ ...base, method, devices: { kind: 'cuda', ids }, distributed: { nproc_per_node: Math.max(1, ids.length), zero_stage: zero }, training: { offload_optimizer: offload } }), 1).bytes.optimizer;
    const P = 19_860_736;
    expect(est([0, 1], 0)).toBe(P * 4 * 3); // gradient + exp_avg + exp_avg_sq
    expect(est([0, 1], 1)).toBe(P * 4 * 2); // gradient + half of the moments
    expect(est([0, 1, 2, 3], 1)).toBe(P * 4 * 1.5);
    expect(est([0, 1], 1, 'full', true)).toBe(P * 4); // the moments in host memory
    expect(est([0], 1)).toBe(P * 4 * 3); // one worker: nothing to shard
    // CPU workers alike
    expect(estimateRun(info, parseRunSpec({ ...base, method: 'full', distributed: { nproc_per_node: 4, zero_stage: 1 } }), 1).bytes.optimizer).toBe(P * 4 * 1.5);
  });

  it('ZeRO-2 leaves each worker the gradients of its share and two staging slots of the largest stage', () => {
    const [H, I, L, V] = [256, 688, 40, 32000];
    const P = 2 * V * H + L * (4 * H * H + 3 * H * I + 2 * H) + H; // 48.0M: the two tables are a third of it
    const info = { path: '/m', supported: true, model_type: 'llama', hidden: H, intermediate: I, layers: L, vocab: V, heads: 8, parameters: P } as Parameters<typeof estimateRun>[0];
    const est = (n: number, zero: 0 | 1 | 2) => estimateRun(info, parseRunSpec({ ...base, method: 'full', distributed: { nproc_per_node: n, zero_stage: zero } }), 1).bytes.optimizer;
    // the largest stage: the 32000 × 256 embedding (a block's linears: 4·256² + 3·256·688 = 790,528), which some
    // rank's share leaves out whole
    const slots = 2 * V * H;
    expect(est(4, 2)).toBe((P / 4 + slots + (P * 2) / 4) * 4);
    expect(est(2, 2)).toBe((P / 2 + slots + P) * 4);
    expect(est(2, 2)).toBeLessThan(est(2, 1));
    expect(est(1, 2)).toBe(P * 4 * 3); // one worker: nothing to shard
    // a model whose tables outweigh a worker's share: the slots cost what the share saves, and no more is claimed
    const small = { ...info, layers: 4, parameters: 2 * V * H + 4 * (4 * H * H + 3 * H * I + 2 * H) + H };
    const e = (zero: 1 | 2) => estimateRun(small, parseRunSpec({ ...base, method: 'full', distributed: { nproc_per_node: 2, zero_stage: zero } }), 1).bytes.optimizer;
    expect(e(2)).toBe(e(1));
  });

  it("maps the seed's DeepSpeed ZeRO stages onto ZeRO-1 and ZeRO-2, saying what stage 3 would add", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-mgpu-'));
    const f = path.join(dir, 'ds.json');
    const map = (stage: number) => {
      fs.writeFileSync(f, JSON.stringify({ zero_optimization: { stage } }));
      const r = applyDeepspeed({ ...base, method: 'full', devices: { kind: 'cuda', ids: [0, 1] }, distributed: { nproc_per_node: 2 } }, f);
      return { zero: parseRunSpec(r.spec).distributed.zero_stage, warnings: r.warnings.join('\n') };
    };
    expect(map(1)).toEqual({ zero: 1, warnings: '' });
    expect(map(2)).toEqual({ zero: 2, warnings: '' });
    const three = map(3);
    expect(three.zero).toBe(2);
    expect(three.warnings).toMatch(/stage 3: the engine shards optimizer state and gradients \(ZeRO-2.*the parameters stay whole/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('the engine job', () => {
  const job = (spec: ReturnType<typeof parseRunSpec>) => toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { device: string; distributed?: unknown };

  it('of two GPUs: device "cuda" (no index) and a distributed block with backend "auto"', () => {
    const j = job(gpus([2, 5]));
    expect(j.device).toBe('cuda');
    expect(j.distributed).toEqual({ world_size: 2, backend: 'auto', zero_stage: 0 });
  });

  it('of one GPU: cuda:N and no distributed block; of CPU workers: Gloo', () => {
    const one = job(gpus([3]));
    expect(one.device).toBe('cuda:3');
    expect(one).not.toHaveProperty('distributed');
    const cpu = job(parseRunSpec({ ...base, distributed: { nproc_per_node: 2 } }));
    expect(cpu.device).toBe('cpu');
    expect(cpu.distributed).toEqual({ world_size: 2, backend: 'gloo', zero_stage: 0 });
  });
});

describe('the pre-flight memory check', () => {
  const devices = [
    { kind: 'cpu' as const, index: 0, memoryFree: 16 * GiB },
    { kind: 'cuda' as const, index: 0, memoryFree: 10 * GiB },
    { kind: 'cuda' as const, index: 1, memoryFree: 3 * GiB },
    { kind: 'cuda' as const, index: 2, memoryFree: 12 * GiB },
  ];

  it('checks one worker against EACH selected GPU, not their sum', () => {
    // 4 GiB per worker: fits on GPU 0 and 2, not on GPU 1 (though 10 + 3 GiB together would hold 2 × 4)
    const c = fitCheck(4 * GiB, gpus([0, 1]), devices);
    expect(c.fits).toBe(false);
    expect(c.needBytes).toBe(4 * GiB);
    expect(c.freeBytes).toBe(3 * GiB);
    expect(c.gpus).toEqual([
      { index: 0, freeBytes: 10 * GiB, fits: true },
      { index: 1, freeBytes: 3 * GiB, fits: false },
    ]);
    expect(gpuShortfall(c)).toMatch(/^GPU 1 has 3\.00 GiB free, below the 4\.00 GiB each worker needs/);
    const ok = fitCheck(4 * GiB, gpus([0, 2]), devices);
    expect(ok).toMatchObject({ fits: true, freeBytes: 10 * GiB });
    expect(gpuShortfall(ok)).toBeNull();
    // 11 GiB: only GPU 2 has room, so two GPUs whose sum (22 GiB) is ample still do not fit
    expect(fitCheck(11 * GiB, gpus([0, 2]), devices).fits).toBe(false);
  });

  it('checks a single GPU against its own free memory, and skips GPUs whose free memory is unknown', () => {
    expect(fitCheck(4 * GiB, gpus([1]), devices)).toMatchObject({ fits: false, freeBytes: 3 * GiB });
    expect(fitCheck(4 * GiB, gpus([2]), devices)).toMatchObject({ fits: true, freeBytes: 12 * GiB });
    // GPU 7 is not listed: not checked
    expect(fitCheck(4 * GiB, gpus([2, 7]), devices)).toMatchObject({ fits: true, freeBytes: 12 * GiB });
  });

  it('keeps CPU workers sharing the host memory', () => {
    const cpu = (n: number) => parseRunSpec({ ...base, distributed: { nproc_per_node: n } });
    expect(fitCheck(6 * GiB, cpu(2), devices)).toMatchObject({ fits: true, needBytes: 12 * GiB, freeBytes: 16 * GiB, gpus: [] });
    expect(fitCheck(6 * GiB, cpu(3), devices)).toMatchObject({ fits: false, needBytes: 18 * GiB });
  });
});

describe("the workers' environment", () => {
  const parent = { PATH: '/usr/bin', HOME: '/home/u' };

  it('sets CUDA_VISIBLE_DEVICES to the GPU ids in every worker of a multi-GPU run, with torchrun variables', () => {
    const spec = gpus([1, 3]);
    const envs = [0, 1].map((r) => workerEnv(spec, r, 29500, parent));
    expect(envs.map((e) => e.CUDA_VISIBLE_DEVICES)).toEqual(['1,3', '1,3']);
    expect(envs[1]).toMatchObject({ RANK: '1', WORLD_SIZE: '2', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '29500', PATH: '/usr/bin' });
  });

  it('maps the ids through an inherited CUDA_VISIBLE_DEVICES (the ordinals this process sees)', () => {
    expect(workerEnv(gpus([0, 2]), 0, 1, { ...parent, CUDA_VISIBLE_DEVICES: '4,5,6' }).CUDA_VISIBLE_DEVICES).toBe('4,6');
  });

  it('does not set CUDA_VISIBLE_DEVICES for one GPU or for CPU workers', () => {
    expect(workerEnv(gpus([1]), 0, 0, parent)).toBe(parent);
    const cpu = parseRunSpec({ ...base, distributed: { nproc_per_node: 2 } });
    const e = workerEnv(cpu, 1, 29500, parent);
    expect(e).toMatchObject({ RANK: '1', WORLD_SIZE: '2' });
    expect(e).not.toHaveProperty('CUDA_VISIBLE_DEVICES');
    expect(workerEnv(parseRunSpec(base), 0, 0, parent)).toBe(parent);
  });
});

describe('the device queue', () => {
  it('holds runs that share a GPU (or both use the CPU), not runs on other GPUs', () => {
    const cpu = parseRunSpec(base);
    expect(devicesOverlap(gpus([0, 1]), gpus([1]))).toBe(true);
    expect(devicesOverlap(gpus([0, 1]), gpus([2, 3]))).toBe(false);
    expect(devicesOverlap(gpus([0]), parseRunSpec({ ...base, devices: { kind: 'cuda', ids: [] } }))).toBe(true);
    expect(devicesOverlap(gpus([0]), cpu)).toBe(false);
    expect(devicesOverlap(cpu, parseRunSpec({ ...base, distributed: { nproc_per_node: 2 } }))).toBe(true);
  });
});
