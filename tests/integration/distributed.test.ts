// Data parallelism over CPU workers (Gloo), through the built engine and CLI: 2 workers with micro-batch b
// give the loss curve of 1 worker with micro-batch 2b (LoRA and full fine-tuning, within 1e-5) with the gradient
// all-reduce started during the backward (rank_stats counts the buckets that were), the
// launcher (`llms-train train --nproc_per_node 2`) records one run driven by rank 0 with per-rank stats, and
// killing one worker stops the run with that worker's error. Needs the Gloo plug-in (Debian's libgloo-dev);
// skipped with a note when the engine was built without it.
// Set LLMS_TRAIN_NATIVE_DIR to test another build of llmt-engine (default native/build/bin), and
// LLMS_TRAIN_CLI for another build of the CLI (default dist/main/cli/index.js).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { CLI as DEFAULT_CLI, ROOT } from '../helpers/app';
import { ENGINE, NATIVE, readSafetensors } from '../helpers/native';

const CLI = process.env.LLMS_TRAIN_CLI || DEFAULT_CLI;
const HAS_GLOO = fs.existsSync(path.join(NATIVE, 'libllmt_gloo.so'));
const DATA = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
let tmp: string;
let model: string;
let tokens: string;

interface Ev {
  event: string;
  [k: string]: unknown;
}
const events = (text: string): Ev[] =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Ev);

function port(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** `llms-train <args>` with its own data home (like helpers/app runCli, for the CLI build chosen above). */
function runCli(args: string[], home: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, LLMS_TRAIN_HOME: home, LLMS_TRAIN_NATIVE_DIR: NATIVE }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(ENGINE, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** One job run by `world` workers with torchrun's variables; each rank's result. */
async function torchrunStyle(job: object, world: number) {
  const file = path.join(tmp, `job-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(file, JSON.stringify(job));
  const p = await port();
  return Promise.all(
    Array.from({ length: world }, (_, r) =>
      run(['train', '--job', file], { RANK: String(r), WORLD_SIZE: String(world), LOCAL_WORLD_SIZE: String(world), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(p) }),
    ),
  );
}

function job(out: string, method: 'lora' | 'full', micro: number, extra: object = {}) {
  return {
    model,
    method,
    ...(method === 'lora' ? { lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj'] } } : {}),
    data: { train: tokens, eval: tokens },
    training: { learning_rate: method === 'lora' ? 0.01 : 0.002, max_steps: 6, micro_batch_size: micro, gradient_accumulation_steps: 2, seed: 3 },
    output: { dir: out, logging_steps: 1, save_steps: 3, eval_steps: 3 },
    ...extra,
  };
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-dist-'));
  model = path.join(tmp, 'model');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
  // 23 ragged rows: the epoch's last global micro-batch leaves rank 1 with nothing, as it must sometimes
  const rows = Array.from({ length: 23 }, (_, i) => Array.from({ length: 5 + ((i * 7) % 17) }, (_, t) => 3 + ((i * 31 + t * 17) % 240)));
  tokens = path.join(tmp, 'tokens.json');
  fs.writeFileSync(tokens, JSON.stringify({ input_ids: rows, labels: rows.map((r) => r.map((x, t) => (t < r.length / 3 ? -100 : x))) }));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!HAS_GLOO)('data parallelism on CPU workers (Gloo)', () => {
  for (const method of ['lora', 'full'] as const) {
    it(`2 workers × micro-batch 2 follow 1 worker × micro-batch 4 (${method})`, async () => {
      const one = await run(['train', '--job', (() => {
        const f = path.join(tmp, `one-${method}.json`);
        // zero_stage 1 on one worker: accepted, with a warning that it shards nothing
        fs.writeFileSync(f, JSON.stringify(job(path.join(tmp, `one-${method}`), method, 4, { distributed: { zero_stage: 1 } })));
        return f;
      })()]);
      expect(one.code, one.stderr).toBe(0);
      // full fine-tuning also shards the optimizer state (ZeRO-1); small buckets exercise the bucketing
      const two = await torchrunStyle(job(path.join(tmp, `two-${method}`), method, 2, { distributed: { world_size: 2, bucket_mb: 0.002, zero_stage: 1 } }), 2);
      for (const r of two) expect(r.code, r.stderr).toBe(0);
      const a = events(one.stdout);
      const b = events(two[0]!.stdout);
      const loss = (es: Ev[]) => es.filter((e) => e.event === 'step').map((e) => e.loss as number);
      const evl = (es: Ev[]) => es.filter((e) => e.event === 'eval').map((e) => e.eval_loss as number);
      expect(loss(a)).toHaveLength(6);
      expect(loss(b)).toHaveLength(6);
      loss(a).forEach((x, i) => expect(Math.abs(x - loss(b)[i]!)).toBeLessThan(1e-5));
      evl(a).forEach((x, i) => expect(Math.abs(x - evl(b)[i]!)).toBeLessThan(1e-5));
      const warned = (es: Ev[], re: RegExp) => es.some((e) => e.event === 'warning' && re.test(String(e.message)));
      expect(warned(a, /zero_stage 1 .*a single-worker run has nothing to shard/)).toBe(true);
      // with 2 workers it shards a full fine-tune's optimizer state; a LoRA run's stays whole, and the run says so
      expect(warned(b, /zero_stage 1 applies to full fine-tuning/)).toBe(method === 'lora');
      const started = b.find((e) => e.event === 'started')!;
      expect(started).toMatchObject({ world_size: 2, backend: 'gloo', global_batch_size: 8, zero_stage: method === 'full' ? 1 : 0 });
      expect((started.ranks as { pid: number }[]).map((r) => r.pid)).toHaveLength(2);
      const stats = b.filter((e) => e.event === 'rank_stats');
      expect(stats).toHaveLength(6);
      expect((stats[0]!.ranks as Ev[]).map((r) => r.rank)).toEqual([0, 1]);
      expect((stats[0]!.ranks as Ev[])[1]!.mem_bytes).toBeGreaterThan(0);
      // the all-reduce overlapped the backward: on every rank some buckets were handed to the communication
      // thread by the gradient-ready hook before the last micro-batch's backward returned (a count, not a timing)
      for (const r of [0, 1]) {
        const rs = stats.map((e) => (e.ranks as Ev[])[r]!);
        for (const x of rs) expect(x.buckets_overlapped as number).toBeLessThanOrEqual(x.buckets as number);
        expect(rs.reduce((a, x) => a + (x.buckets_overlapped as number), 0)).toBeGreaterThan(0);
        expect(rs.every((x) => (x.grad_wait_s as number) <= (x.comm_wait_s as number) + 1e-9)).toBe(true);
      }
      const diffs = loss(a).map((x, i) => Math.abs(x - loss(b)[i]!));
      console.log(`${method}: max |loss diff| 2×2 vs 1×4 = ${Math.max(...diffs).toExponential(2)}`);
      // rank 1 speaks only for its errors; only rank 0 writes the output folder
      expect(two[1]!.stdout.trim()).toBe('');
      expect(fs.existsSync(path.join(tmp, `two-${method}`, 'checkpoint-3', 'optimizer.safetensors'))).toBe(true);
    });
  }

  it('resumes a 2-worker run (ZeRO-1) to the same weights as an uninterrupted one', async () => {
    const ref = path.join(tmp, 'two-full');
    const out = path.join(tmp, 'resumed');
    const rs = await torchrunStyle(job(out, 'full', 2, { resume_from: path.join(ref, 'checkpoint-3'), distributed: { zero_stage: 1 } }), 2);
    for (const r of rs) expect(r.code, r.stderr).toBe(0);
    expect(events(rs[0]!.stdout).find((e) => e.event === 'started')).toMatchObject({ start_step: 3 });
    expect(fs.readFileSync(path.join(out, 'model.safetensors')).equals(fs.readFileSync(path.join(ref, 'model.safetensors')))).toBe(true);
  });

  // ZeRO-2 shards the gradients as well: each rank keeps its own share's, the others' exist only while their backward
  // stage runs and are summed into the owner every micro-batch. 21 rows, 2 workers × micro-batch 2, accumulation 2:
  // the epoch's last global micro-batch (1 row) leaves rank 1 nothing, so it joins those reductions with zeros. bloom
  // has a tied head (two stages write its gradient) and an embedding LayerNorm (the embeddings' stage).
  for (const family of ['llama', 'bloom'] as const) {
    it(`ZeRO-2 on 2 workers trains as the unsharded run, and resumes (${family})`, async () => {
      const dir = path.join(tmp, `z2-${family}`);
      const m = path.join(dir, 'model');
      expect(spawnSync(ENGINE, ['create-tiny', '--family', family, '--out', m]).status).toBe(0);
      const rows = Array.from({ length: 21 }, (_, i) => Array.from({ length: 5 + ((i * 7) % 17) }, (_, t) => 3 + ((i * 31 + t * 17) % 240)));
      const data = path.join(dir, 'tokens.json');
      fs.writeFileSync(data, JSON.stringify({ input_ids: rows, labels: rows.map((r) => r.map((x, t) => (t < r.length / 3 ? -100 : x))) }));
      const z = (out: string, stage: number, extra: object = {}) => ({
        ...job(path.join(dir, out), 'full', 2, { distributed: { world_size: 2, zero_stage: stage }, ...extra }),
        model: m,
        data: { train: data, eval: data },
        training: { learning_rate: 0.002, max_steps: 8, micro_batch_size: 2, gradient_accumulation_steps: 2, seed: 3, max_grad_norm: 0.5 },
      });
      const plain = await torchrunStyle(z('plain', 0), 2);
      const zero2 = await torchrunStyle(z('zero2', 2), 2);
      for (const r of [...plain, ...zero2]) expect(r.code, r.stderr).toBe(0);
      const a = events(plain[0]!.stdout);
      const b = events(zero2[0]!.stdout);
      expect(b.find((e) => e.event === 'started')).toMatchObject({ zero_stage: 2, world_size: 2 });
      const steps = (es: Ev[]) => es.filter((e) => e.event === 'step');
      expect(steps(b)).toHaveLength(8);
      steps(a).forEach((x, i) => {
        const y = steps(b)[i]!;
        expect(Math.abs((x.loss as number) - (y.loss as number))).toBeLessThan(1e-6);
        // the summation order differs (per micro-batch into the owner; each rank's share of Σg²), not the values
        expect(Math.abs((x.grad_norm as number) / (y.grad_norm as number) - 1)).toBeLessThan(1e-5);
      });
      expect(steps(a).some((e) => (e.grad_norm as number) > 0.5)).toBe(true); // clipping took part
      const wa = readSafetensors(path.join(dir, 'plain', 'model.safetensors'));
      const wb = readSafetensors(path.join(dir, 'zero2', 'model.safetensors'));
      expect([...wb.keys()].sort()).toEqual([...wa.keys()].sort());
      // bloom's key bias has a gradient that is zero but for rounding (softmax ignores a constant added to every
      // key): AdamW turns that noise into steps of up to lr, so its values follow the summation order — left out
      const cfg = JSON.parse(fs.readFileSync(path.join(m, 'config.json'), 'utf8')) as { hidden_size: number; n_head?: number };
      const hd = cfg.hidden_size / (cfg.n_head ?? 1);
      const keyBias = (k: string, i: number) => family === 'bloom' && k.endsWith('query_key_value.bias') && Math.floor(i / hd) % 3 === 1;
      let worst = 0;
      for (const [k, x] of wa) x.forEach((v, i) => (worst = keyBias(k, i) ? worst : Math.max(worst, Math.abs(v - wb.get(k)![i]!))));
      expect(worst).toBeLessThan(2e-5);
      // the checkpoint holds the whole optimizer state: resumed under ZeRO-2, the same weights as uninterrupted
      const rs = await torchrunStyle(z('resumed', 2, { resume_from: path.join(dir, 'zero2', 'checkpoint-3') }), 2);
      for (const r of rs) expect(r.code, r.stderr).toBe(0);
      expect(events(rs[0]!.stdout).find((e) => e.event === 'started')).toMatchObject({ start_step: 3, zero_stage: 2 });
      expect(fs.readFileSync(path.join(dir, 'resumed', 'model.safetensors')).equals(fs.readFileSync(path.join(dir, 'zero2', 'model.safetensors')))).toBe(true);
      console.log(`ZeRO-2 ${family}: max |weight diff| vs unsharded = ${worst.toExponential(2)}`);
    });
  }

  it('refuses a job whose world_size disagrees with the environment', async () => {
    const r = await run(['train', '--job', (() => {
      const f = path.join(tmp, 'ws.json');
      fs.writeFileSync(f, JSON.stringify(job(path.join(tmp, 'ws'), 'lora', 2, { distributed: { world_size: 2 } })));
      return f;
    })()]);
    expect(r.code).toBe(1);
    expect(events(r.stdout).at(-1)).toMatchObject({ event: 'error', code: 'BAD_INPUT', message: expect.stringMatching(/world_size is 2 but the environment says 1/) });
  });

  it('llms-train train --nproc_per_node 2: one run, rank 0 drives it, per-rank metrics, rank-tagged log', async () => {
    const home = path.join(tmp, 'home1');
    const out = path.join(tmp, 'cli-out');
    const r = await runCli(seedFlags(out, 4), home);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const store = Store.open(path.join(home, 'llms-train.db'));
    const run0 = store.runs.list()[0]!;
    expect(run0).toMatchObject({ status: 'completed' });
    expect(store.metrics.series(run0.id, 'loss').map((p) => p.step)).toEqual([2, 4]);
    expect(store.metrics.names(run0.id)).toEqual(expect.arrayContaining(['rank0.tokens_per_s', 'rank1.mem_bytes']));
    store.close();
    expect(JSON.parse(fs.readFileSync(path.join(out, 'job.json'), 'utf8')).distributed).toEqual({ world_size: 2, backend: 'gloo', zero_stage: 0 });
    expect(fs.readFileSync(path.join(out, `train-${run0.id}.log`), 'utf8')).toMatch(/^\[rank 0\] \{"event":"started"/m);
  });

  it('killing one worker stops the run with that worker\'s error, and no worker is left behind', async () => {
    const home = path.join(tmp, 'home2');
    const child: ChildProcess = spawn(process.execPath, [CLI, ...seedFlags(path.join(tmp, 'killed'), 400), '--json'], {
      env: { ...process.env, LLMS_TRAIN_HOME: home, LLMS_TRAIN_NATIVE_DIR: NATIVE },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    const pids = await new Promise<number[]>((resolve) =>
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        const started = events(stdout).find((e) => e.event === 'started');
        if (started && events(stdout).some((e) => e.event === 'step')) resolve((started.ranks as { pid: number }[]).map((x) => x.pid));
      }),
    );
    const t0 = Date.now();
    process.kill(pids[1]!, 'SIGKILL');
    expect(await exited).toBe(1);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(stderr).toMatch(new RegExp(`WORKER_DIED: the engine worker of rank 1 \\(pid ${pids[1]}\\) was killed by SIGKILL`));
    const store = Store.open(path.join(home, 'llms-train.db'));
    expect(store.runs.list()[0]).toMatchObject({ status: 'failed', errorCode: 'WORKER_DIED', exitSignal: 'SIGKILL' });
    store.close();
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    expect(alive(pids[0]!)).toBe(false);
  });
});

const seedFlags = (out: string, steps: number) => [
  'train', '--model_name_or_path', model, '--use_lora', 'True', '--train_file', path.join(DATA, 'dev.json'),
  '--prompt_column', 'input', '--response_column', 'target', '--output_dir', out, '--max_source_length', '64',
  '--max_target_length', '16', '--per_device_train_batch_size', '2', '--gradient_accumulation_steps', '1',
  '--max_steps', String(steps), '--logging_steps', '2', '--save_steps', '100', '--learning_rate', '2e-3',
  '--lora_config', path.join(ROOT, 'configs', 'lora_config_llama.json'), '--device', 'cpu', '--nproc_per_node', '2',
];
