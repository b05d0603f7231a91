// `llms-train train` with the seed's command line on a tiny model and the sample data: checkpoints every
// save_steps, the run and its metrics in SQLite, kill -9 of the worker then resume to the same result, the
// output-dir rules, and a hanging worker caught by the watchdog.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { CLI, ROOT, runCli } from '../helpers/app';

const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');
const DATA = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
let tmp: string;
let model: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-train-'));
  model = path.join(tmp, 'model');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const seedFlags = (out: string, steps: number, extra: string[] = []) => [
  'train', '--model_name_or_path', model, '--use_lora', 'True', '--train_file', path.join(DATA, 'dev.json'),
  '--validation_file', path.join(DATA, 'test.json'), '--prompt_column', 'input', '--response_column', 'target',
  '--output_dir', out, '--max_source_length', '96', '--max_target_length', '16', '--per_device_train_batch_size', '4',
  '--gradient_accumulation_steps', '2', '--max_steps', String(steps), '--logging_steps', '2', '--save_steps', '4',
  '--learning_rate', '2e-3', '--lora_config', path.join(ROOT, 'configs', 'lora_config_llama.json'), '--device', 'cpu', ...extra,
];

function openStore(home: string): Store {
  return Store.open(path.join(home, 'llms-train.db'));
}

describe('llms-train train (the seed command line)', () => {
  it('trains, checkpoints every save_steps, and records the run and its metrics', async () => {
    const home = path.join(tmp, 'home1');
    const out = path.join(tmp, 'out1');
    const r = await runCli(seedFlags(out, 10), { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/run #1 completed/);
    for (const c of ['checkpoint-4', 'checkpoint-8', 'checkpoint-10']) expect(fs.existsSync(path.join(out, c, 'adapter_model.safetensors'))).toBe(true);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'runspec.json', 'train-1.log', 'job.json']) expect(fs.existsSync(path.join(out, f))).toBe(true);
    const store = openStore(home);
    const run = store.runs.list()[0]!;
    expect(run).toMatchObject({ status: 'completed', outputDir: out });
    expect((run.spec as { lora: { r: number } }).lora.r).toBe(8);
    expect(store.metrics.series(run.id, 'loss').map((p) => p.step)).toEqual([2, 4, 6, 8, 10]);
    expect(store.metrics.names(run.id)).toEqual(expect.arrayContaining(['loss', 'lr', 'grad_norm', 'tokens_per_s', 'mem_bytes', 'eval_loss']));
    expect(store.checkpoints.list(run.id).map((c) => c.step)).toEqual([4, 8, 10]);
    store.close();
    const list = JSON.parse((await runCli(['runs', '--json'], { home })).stdout);
    expect(list[0]).toMatchObject({ status: 'completed' });
  });

  it('refuses a non-empty output dir without --overwrite_output_dir, unless it can resume', async () => {
    const out = path.join(tmp, 'busy');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'notes.txt'), 'mine');
    const r = await runCli(seedFlags(out, 2), { home: path.join(tmp, 'home2') });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/exists and is not empty; use --overwrite_output_dir/);
    expect(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8')).toBe('mine');
  });

  it('records a kill -9 of the worker, then resumes to the same adapter as an uninterrupted run', async () => {
    const home = path.join(tmp, 'home3');
    const ref = path.join(tmp, 'ref');
    expect((await runCli(seedFlags(ref, 16), { home, timeoutMs: 120_000 })).code).toBe(0);
    const out = path.join(tmp, 'killed');
    const child: ChildProcess = spawn(process.execPath, [CLI, ...seedFlags(out, 16)], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await new Promise<void>((resolve) =>
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        if (stdout.includes('checkpoint-4')) resolve();
      }),
    );
    const store = openStore(home);
    const run = store.runs.list()[0]!;
    expect(run.status).toBe('running');
    process.kill(run.workerPid!, 'SIGKILL');
    expect(await exited).toBe(1);
    expect(stderr).toMatch(/WORKER_DIED: the engine worker was killed by SIGKILL/);
    expect(store.runs.get(run.id)).toMatchObject({ status: 'failed', errorCode: 'WORKER_DIED', exitSignal: 'SIGKILL' });
    store.close();
    const r = await runCli([...seedFlags(out, 16), '--resume_from_checkpoint', 'latest'], { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/resuming from .*checkpoint-\d+/);
    expect(fs.readFileSync(path.join(out, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(ref, 'adapter_model.safetensors')))).toBe(true);
  });

  it('detects a corrupt checkpoint when resuming', async () => {
    const home = path.join(tmp, 'home5');
    const out = path.join(tmp, 'corrupt');
    expect((await runCli(seedFlags(out, 4), { home, timeoutMs: 120_000 })).code).toBe(0);
    const opt = path.join(out, 'checkpoint-4', 'optimizer.safetensors');
    fs.writeFileSync(opt, fs.readFileSync(opt).subarray(0, 64));
    const r = await runCli([...seedFlags(out, 8), '--resume_from_checkpoint', path.join(out, 'checkpoint-4')], { home, timeoutMs: 120_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/failed: BAD_INPUT: .*optimizer\.safetensors/);
  });

  it('never resumes into a checkpoint of another configuration (nothing overwritten); a finished one trains nothing, and says so', async () => {
    const home = path.join(tmp, 'home-reconf');
    const out = path.join(tmp, 'reconf');
    expect((await runCli(seedFlags(out, 4), { home, timeoutMs: 120_000 })).code).toBe(0);
    const adapter = path.join(out, 'adapter_model.safetensors');
    const before = fs.readFileSync(adapter);
    // HF's rule resumes the folder's last checkpoint; one trained on all seven modules cannot continue as q/v only
    const other = await runCli(seedFlags(out, 8, ['--lora_target_modules', 'q_proj,v_proj']), { home, timeoutMs: 120_000 });
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/checkpoint-4 holds \d+ tensor\(s\) this job does not train \(.*lora_.*\): it was written with another configuration/);
    expect(other.stderr).toMatch(/--overwrite_output_dir/);
    expect(fs.readFileSync(adapter).equals(before)).toBe(true);
    // a full fine-tune into it, or another rank: named as such, with the way on
    const full = await runCli(seedFlags(out, 8, ['--use_lora', 'False']), { home, timeoutMs: 120_000 });
    expect(full.code).toBe(1);
    expect(full.stderr).toMatch(/checkpoint-4 holds a LoRA adapter, and this job is a full fine-tune.*--overwrite_output_dir/s);
    const rank = await runCli(seedFlags(out, 8, ['--lora_r', '4']), { home, timeoutMs: 120_000 });
    expect(rank.code).toBe(1);
    expect(rank.stderr).toMatch(/does not match this job .*another configuration.*--overwrite_output_dir/s);
    expect(fs.readFileSync(adapter).equals(before)).toBe(true);
    // the same configuration with max_steps at or below the checkpoint's step: nothing to train, a warning, the same weights
    const done = await runCli(seedFlags(out, 2), { home, timeoutMs: 120_000 });
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout + done.stderr).toMatch(/at step 4, which is already max_steps \(2\) or beyond: nothing is left to train/);
    expect(fs.readFileSync(adapter).equals(before)).toBe(true);
  });

  it('a full fine-tune writes a loadable HF folder: weights, config, the tokenizer and generation config (predict needs no --tokenizer)', async () => {
    const home = path.join(tmp, 'home-full');
    const out = path.join(tmp, 'full');
    const r = await runCli(seedFlags(out, 2, ['--use_lora', 'False', '--save_steps', '2']), { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    for (const dir of [out, path.join(out, 'checkpoint-2')]) {
      for (const f of ['model.safetensors', 'config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json']) {
        expect(fs.existsSync(path.join(dir, f)), `${dir}/${f}`).toBe(true);
      }
      expect(fs.readFileSync(path.join(dir, 'tokenizer.json')).equals(fs.readFileSync(path.join(model, 'tokenizer.json')))).toBe(true);
    }
    const p = await runCli(['predict', '--model', out, '--data', path.join(DATA, 'test.json'), '--out', path.join(tmp, 'full-pred.jsonl'), '--limit', '2', '--max_new_tokens', '3'], { home, timeoutMs: 120_000 });
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout).toMatch(/wrote 2 prediction\(s\)/);
  });

  it('keeps the database consistent when the main process is killed, and marks the run interrupted', async () => {
    const home = path.join(tmp, 'home6');
    const child: ChildProcess = spawn(process.execPath, [CLI, ...seedFlags(path.join(tmp, 'orphan'), 400)], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    await new Promise<void>((resolve) =>
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        if (stdout.includes('step 2/')) resolve();
      }),
    );
    const store0 = openStore(home);
    const pid = store0.runs.list()[0]!.workerPid!;
    store0.close();
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    // the worker notices its broken pipe and ends instead of running on as an orphan
    const gone = await new Promise<boolean>((resolve) => {
      const t0 = Date.now();
      const iv = setInterval(() => {
        let alive = true;
        try {
          process.kill(pid, 0);
        } catch {
          alive = false;
        }
        if (!alive || Date.now() - t0 > 15_000) {
          clearInterval(iv);
          resolve(!alive);
        }
      }, 100);
    });
    expect(gone).toBe(true);
    const check = openStore(home);
    expect(check.db.pragma('integrity_check', { simple: true })).toBe('ok');
    expect(check.runs.list()[0]!.status).toBe('running');
    expect(check.runs.markInterrupted()).toBe(1);
    check.close();
  });

  it('catches a hanging worker with the watchdog', async () => {
    const fake = path.join(tmp, 'fake-native');
    fs.mkdirSync(fake);
    fs.writeFileSync(path.join(fake, 'llmt-engine'), '#!/bin/sh\necho \'{"event":"started","max_steps":10,"start_step":0}\'\nexec sleep 600\n', { mode: 0o755 });
    const home = path.join(tmp, 'home4');
    const r = await runCli(seedFlags(path.join(tmp, 'hang'), 4), {
      home,
      timeoutMs: 60_000,
      env: { LLMS_TRAIN_NATIVE_DIR: fake, LLMS_TRAIN_STALL_WARN_MS: '1500', LLMS_TRAIN_STALL_KILL_MS: '4000' },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/warning: no progress for \d+ s/);
    expect(r.stderr).toMatch(/STALLED: the worker sent nothing for \d+ s and was stopped/);
  });

  it('queues a second run on the same devices until the first is done', async () => {
    const home = path.join(tmp, 'home7');
    const a: ChildProcess = spawn(process.execPath, [CLI, ...seedFlags(path.join(tmp, 'qa'), 30)], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    const aExit = new Promise<number | null>((resolve) => a.on('exit', (c) => resolve(c)));
    let aOut = '';
    await new Promise<void>((resolve) =>
      a.stdout!.on('data', (d: Buffer) => {
        aOut += d.toString();
        if (aOut.includes('step 2/')) resolve();
      }),
    );
    const b = await runCli(seedFlags(path.join(tmp, 'qb'), 2), { home, timeoutMs: 120_000 });
    expect(await aExit).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toMatch(/queued: waiting for run #1/);
    const store = openStore(home);
    const [second, first] = store.runs.list();
    expect(new Date(second!.startedAt!).getTime()).toBeGreaterThanOrEqual(new Date(first!.endedAt!).getTime() - 1000);
    store.close();
  });

  it('explains bad flags with the field', async () => {
    const r = await runCli(['train', '--model_name_or_path', model, '--train_file', path.join(DATA, 'dev.json'), '--output_dir', path.join(tmp, 'x'), '--learning_rate', '-1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/training\.learning_rate/);
  });
});

describe('pre-flight estimate', () => {
  it('matches the measured peak memory within 25 %, and refuses a run that cannot fit', async () => {
    const { estimateRun } = await import('../../src-main/core/runs/estimate');
    const { parseRunSpec } = await import('../../src-main/core/runs/runspec');
    const demo = path.join(tmp, 'demo-model');
    expect(spawnSync(ENGINE, ['create-tiny', '--family', 'demo', '--out', demo]).status).toBe(0);
    const info = JSON.parse(spawnSync(ENGINE, ['inspect', '--model', demo], { encoding: 'utf8' }).stdout);
    for (const [T, mb, ckpt, method, precision] of [[128, 16, false, 'full', 'fp32'], [128, 16, true, 'full', 'fp32'], [256, 8, false, 'lora', 'fp32'], [256, 8, false, 'lora', 'bf16']] as const) {
      // every sample exactly T tokens, so the estimate's worst case is what runs
      const tok = path.join(tmp, `est-${T}-${mb}.json`);
      const ids = Array.from({ length: 32 }, (_, i) => Array.from({ length: T }, (_, j) => ((7 * i + j) % 300) + 4));
      fs.writeFileSync(tok, JSON.stringify({ input_ids: ids, labels: ids }));
      const out = path.join(tmp, `est-out-${T}-${mb}-${ckpt}`);
      const job = path.join(tmp, 'est-job.json');
      const lora = { r: 8, alpha: 16, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };
      fs.writeFileSync(job, JSON.stringify({ model: demo, method, lora, data: { train: tok }, training: { max_steps: 3, micro_batch_size: mb, gradient_checkpointing: ckpt, precision }, output: { dir: out, logging_steps: 1, save_steps: 1000 }, threads: 2 }));
      const r = spawnSync(ENGINE, ['train', '--job', job], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const peak = Math.max(...r.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((e) => e.event === 'step').map((e) => e.peak_mem_bytes));
      const spec = parseRunSpec({ model: { path: demo }, method, lora: { r: 8, alpha: 16, dropout: 0, target_modules: lora.target_modules }, data: { train: tok, max_source_length: T - 16, max_target_length: 16 }, training: { micro_batch_size: mb, gradient_checkpointing: ckpt, precision }, output: { dir: out } });
      const est = estimateRun(info, spec, 2).bytes.total;
      expect(Math.abs(est - peak) / peak, `T=${T} mb=${mb} ckpt=${ckpt} ${method} ${precision}: estimate ${est}, measured ${peak}`).toBeLessThan(0.25);
    }
    const r = await runCli([...seedFlags(path.join(tmp, 'toobig'), 2, ['--per_device_train_batch_size', '50000', '--max_source_length', '4096'])], { home: path.join(tmp, 'home8') });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/this run will not fit: it needs about [\d.]+ GiB but [\d.]+ GiB is free/);
    expect(r.stderr).toMatch(/hint: lower --per_device_train_batch_size .*gradient_checkpointing/);
  }, 120_000);
});

describe('two starts into one folder at the same moment', () => {
  it('one trains, the other is refused naming it; the folder holds one run', async () => {
    const home = path.join(tmp, 'home-race');
    const out = path.join(tmp, 'race');
    const [a, b] = await Promise.all([runCli(seedFlags(out, 2), { home, timeoutMs: 120_000 }), runCli(seedFlags(out, 2), { home, timeoutMs: 120_000 })]);
    expect([a.code, b.code].sort()).toEqual([0, 1]);
    const loser = a.code === 1 ? a : b;
    expect(loser.stderr).toMatch(/is in use by run #\d+|is the output folder of run #\d+/);
    const store = openStore(home);
    try {
      expect(store.runs.list().filter((r) => r.outputDir === out).map((r) => r.status)).toEqual(['completed']);
    } finally {
      store.close();
    }
  }, 180_000);
});

describe('the app sees CLI runs live', () => {
  it('pushes runChanged over the WebSocket while `llms-train train` runs in another process', async () => {
    const { startCli } = await import('../helpers/app');
    const WebSocket = (await import('ws')).default;
    const home = path.join(tmp, 'home9');
    const app = await startCli(['serve', '--port', '0'], { home });
    try {
      const seen: { status: string }[] = [];
      const ws = new WebSocket(`${app.origin.replace('http', 'ws')}/api/events?token=${app.token}`, { origin: app.origin });
      ws.on('message', (m) => {
        const e = JSON.parse(String(m)) as { event: string; payload: { status: string } };
        if (e.event === 'runChanged') seen.push(e.payload);
      });
      await new Promise((r) => ws.once('open', r));
      const r = await runCli(seedFlags(path.join(tmp, 'live'), 4), { home, timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      const t0 = Date.now();
      while (!seen.some((s) => s.status === 'completed') && Date.now() - t0 < 10_000) await new Promise((res) => setTimeout(res, 200));
      ws.close();
      expect(seen.map((s) => s.status)).toContain('completed');
    } finally {
      await app.stop();
    }
  });
});

describe('continuing an adapter (--peft_path, the seed\'s PeftModel.from_pretrained(is_trainable=True))', () => {
  it("starts from the adapter's weights with its own LoRA configuration, and the app lists and reads it", async () => {
    const { readSafetensors } = await import('../helpers/native');
    const home = path.join(tmp, 'home-peft');
    const first = path.join(tmp, 'peft-first');
    // the first run: r 4 on q/v (not the preset's r 8 on all seven linears)
    const r1 = await runCli(seedFlags(first, 4, ['--lora_r', '4', '--lora_alpha', '8', '--lora_target_modules', 'q_proj,v_proj', '--save_steps', '2']), { home, timeoutMs: 120_000 });
    expect(r1.code, r1.stderr + r1.stdout).toBe(0);
    const from = path.join(first, 'checkpoint-2');
    const start = readSafetensors(path.join(from, 'adapter_model.safetensors'));
    // the second: one step at a learning rate too small to move anything, from checkpoint-2; its --lora_config and
    // --lora_r are not used (as the seed's --peft_path leaves --lora_config unused), and it says so
    const second = path.join(tmp, 'peft-second');
    const r2 = await runCli(seedFlags(second, 1, ['--peft_path', from, '--lora_r', '16', '--learning_rate', '1e-12', '--warmup_steps', '0']), { home, timeoutMs: 120_000 });
    expect(r2.code, r2.stderr + r2.stdout).toBe(0);
    expect(r2.stderr + r2.stdout).toMatch(/continuing the adapter in .*checkpoint-2: its own LoRA configuration is trained, so these settings are not used: r 16 \(the adapter's: 4\)/);
    // r 4 on q_proj (64→64) and v_proj (64→32, grouped KV heads) of 2 layers: 2·4·(64+64 + 64+32) = 1,792, not r 16's
    expect(r2.stdout).toMatch(/training llama \(lora\): 1,792 of/);
    const cfg = JSON.parse(fs.readFileSync(path.join(second, 'adapter_config.json'), 'utf8')) as { r: number; lora_alpha: number; target_modules: string[] };
    expect(cfg.r).toBe(4);
    expect(cfg.lora_alpha).toBe(8);
    expect([...cfg.target_modules].sort()).toEqual(['q_proj', 'v_proj']);
    const end = readSafetensors(path.join(second, 'adapter_model.safetensors'));
    expect([...end.keys()].sort()).toEqual([...start.keys()].sort());
    let moved = 0;
    let bNorm = 0;
    for (const [k, v] of start) {
      const w = end.get(k)!;
      for (let i = 0; i < v.length; i++) moved = Math.max(moved, Math.abs(w[i]! - v[i]!));
      if (k.includes('lora_B')) for (const x of v) bNorm += x * x;
    }
    expect(bNorm).toBeGreaterThan(0); // trained B (a fresh adapter's B is zero)
    expect(moved).toBeLessThan(1e-6); // the second run started exactly there
    // the stored run: the adapter's settings and where it came from
    const store = openStore(home);
    const run = store.runs.list()[0]!;
    expect((run.spec as { lora: Record<string, unknown> }).lora).toMatchObject({ r: 4, alpha: 8, target_modules: ['q_proj', 'v_proj'], init_adapter: from });
    store.close();
    // the app: the wizard's list of adapters on this model, and its reading of one
    const { startCli, callApi } = await import('../helpers/app');
    const app = await startCli(['serve', '--port', '0'], { home });
    try {
      const list = await callApi<{ path: string; runId: number; step: number | null }[]>(app, 'listAdapters', { model });
      expect(list.map((a) => a.path)).toEqual(expect.arrayContaining([second, first, from]));
      expect(list.find((a) => a.path === from)).toMatchObject({ runId: 1, step: 2 });
      expect(list.find((a) => a.path === first)).toMatchObject({ runId: 1, step: null });
      expect(list.findIndex((a) => a.path === second)).toBeLessThan(list.findIndex((a) => a.path === first)); // newest run first
      const info = await callApi<{ r: number; alpha: number; targetModules: string[]; baseModel: string }>(app, 'inspectAdapter', { path: from });
      expect(info).toMatchObject({ r: 4, alpha: 8, baseModel: model });
      expect([...info.targetModules].sort()).toEqual(['q_proj', 'v_proj']);
      await expect(callApi(app, 'inspectAdapter', { path: model })).rejects.toThrow(/not a PEFT adapter folder/);
    } finally {
      await app.stop();
    }
  }, 240_000);
});

describe('checkpoint retention, the best checkpoint and early stopping (HF Trainer\'s save_total_limit, load_best_model_at_end, EarlyStoppingCallback)', () => {
  // a tiny task whose eval loss dips and rises again at this learning rate (constant: a shorter run is a prefix of a longer one)
  let data: { train: string; dev: string };
  beforeAll(() => {
    const rows = (n: number, f: (i: number) => object) => Array.from({ length: n }, (_, i) => JSON.stringify(f(i))).join('\n') + '\n';
    data = { train: path.join(tmp, 'best-train.json'), dev: path.join(tmp, 'best-dev.json') };
    fs.writeFileSync(data.train, rows(40, (i) => ({ input: `问题 ${i} 加 ${i + 1}`, target: `答案 ${2 * i + 1}` })));
    fs.writeFileSync(data.dev, rows(12, (i) => ({ input: `问题 ${i} 加 ${i + 2}`, target: `答案 ${2 * i + 2}` })));
  });
  const flags = (out: string, steps: number, extra: string[] = []) => [
    'train', '--model_name_or_path', model, '--train_file', data.train, '--validation_file', data.dev, '--output_dir', out,
    '--max_steps', String(steps), '--logging_steps', '4', '--save_steps', '2', '--eval_steps', '2', '--learning_rate', '1.0',
    '--lr_scheduler_type', 'constant', '--lora_r', '4', '--device', 'cpu', ...extra,
  ];
  const ckpts = (dir: string) => fs.readdirSync(dir).filter((n) => /^checkpoint-\d+$/.test(n)).map((n) => Number(n.slice(11))).sort((a, b) => a - b);
  const bytes = (f: string) => fs.readFileSync(f);

  it('keeps the best checkpoint and the newest, outputs the best, and a resumed run picks the same one', async () => {
    const home = path.join(tmp, 'home-best');
    const a = path.join(tmp, 'best-a');
    const r = await runCli(flags(a, 12, ['--save_total_limit', '2', '--load_best_model_at_end']), { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    // the eval losses of the checkpointed steps decide: the lowest one's checkpoint is the output
    const store = openStore(home);
    const run = store.runs.list()[0]!;
    const evals = store.metrics.series(run.id, 'eval_loss');
    const best = evals.reduce((x, y) => (y.value! < x.value! ? y : x));
    expect(best.step, 'this task is meant to get worse after its best evaluation').toBeLessThan(12);
    expect(r.stdout).toContain(`best checkpoint: ${a}/checkpoint-${best.step} (eval loss ${best.value!.toFixed(4)}); the output holds its weights`);
    expect(ckpts(a)).toEqual([best.step, 12]); // rotation (limit 2) never removed the best
    expect(bytes(path.join(a, 'adapter_model.safetensors')).equals(bytes(path.join(a, `checkpoint-${best.step}`, 'adapter_model.safetensors')))).toBe(true);
    expect(bytes(path.join(a, 'adapter_model.safetensors')).equals(bytes(path.join(a, 'checkpoint-12', 'adapter_model.safetensors')))).toBe(false);
    // the database forgets the removed checkpoints
    expect(store.checkpoints.list(run.id).map((c) => c.step)).toEqual([best.step, 12]);
    const state = JSON.parse(fs.readFileSync(path.join(a, 'checkpoint-12', 'trainer_state.json'), 'utf8')) as Record<string, unknown>;
    expect(state).toMatchObject({ best_global_step: best.step, best_model_checkpoint: `${a}/checkpoint-${best.step}` });
    store.close();
    // the same run stopped at step 10 and resumed to 12: the best found before the resume is still the best
    const b = path.join(tmp, 'best-b');
    expect((await runCli(flags(b, 10, ['--save_total_limit', '2', '--load_best_model_at_end']), { home, timeoutMs: 120_000 })).code).toBe(0);
    const r2 = await runCli(flags(b, 12, ['--save_total_limit', '2', '--load_best_model_at_end']), { home, timeoutMs: 120_000 });
    expect(r2.code, r2.stderr + r2.stdout).toBe(0);
    expect(r2.stdout).toMatch(/resuming from .*checkpoint-10/);
    expect(ckpts(b)).toEqual([best.step, 12]);
    expect(bytes(path.join(b, 'adapter_model.safetensors')).equals(bytes(path.join(a, 'adapter_model.safetensors')))).toBe(true);
    // the second command is a new run row: the checkpoints its rotation removed go from the first run's rows too
    const s2 = openStore(home);
    const rows = s2.runs.list().flatMap((x) => s2.checkpoints.list(x.id)).filter((c) => c.path.startsWith(b + path.sep));
    s2.close();
    expect(rows.length).toBeGreaterThan(0);
    for (const c of rows) expect(fs.existsSync(c.path), `a row for ${c.path}, which rotation removed`).toBe(true);
  }, 240_000);

  it('stops early after `patience` evaluations without an improvement above the threshold, as a completed run', async () => {
    const home = path.join(tmp, 'home-es');
    const out = path.join(tmp, 'es');
    // no drop of the eval loss is worth 10: the first evaluation sets the best, the next two do not improve on it
    const r = await runCli(flags(out, 12, ['--early_stopping_patience', '2', '--early_stopping_threshold', '10']), { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/early stopping at step 6 of 12: 2 evaluation\(s\) in a row without the eval loss improving by more than 10 \(early_stopping_patience 2\)/);
    const store = openStore(home);
    const run = store.runs.list()[0]!;
    expect(run.status).toBe('completed');
    expect(store.metrics.series(run.id, 'eval_loss').map((p) => p.step)).toEqual([2, 4, 6]);
    store.close();
    expect(ckpts(out)).toEqual([2, 4, 6]);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
  }, 120_000);

  it('refuses settings that cannot work, naming the field', async () => {
    const noEval = await runCli(['train', '--model_name_or_path', model, '--train_file', data.train, '--output_dir', path.join(tmp, 'x1'), '--load_best_model_at_end'], { timeoutMs: 60_000 });
    expect(noEval.code).not.toBe(0);
    expect(noEval.stderr).toMatch(/output\.load_best_model_at_end: keeping the checkpoint with the lowest eval loss needs evaluation data: a validation file \(--validation_file\)/);
    const odd = await runCli(flags(path.join(tmp, 'x2'), 4, ['--save_steps', '3', '--load_best_model_at_end']), { timeoutMs: 60_000 });
    expect(odd.code).not.toBe(0);
    expect(odd.stderr).toMatch(/save_steps \(3\) must be a multiple of eval_steps \(2\)/);
    const es = await runCli(flags(path.join(tmp, 'x3'), 4, ['--eval_steps', '0', '--early_stopping_patience', '2']), { timeoutMs: 60_000 });
    expect(es.code).not.toBe(0);
    expect(es.stderr).toMatch(/early_stopping_patience: stopping when the eval loss stops improving needs evaluations during training: eval_steps above 0 \(--eval_steps\)/);
  }, 120_000);
});

describe('several training files (--train_file a,b)', () => {
  it('trains on both, each read in its own format, and the run lists them', async () => {
    const home = path.join(tmp, 'home-multi');
    const alpaca = path.join(tmp, 'multi-alpaca.json');
    fs.writeFileSync(alpaca, JSON.stringify(Array.from({ length: 9 }, (_, i) => ({ instruction: `翻译 ${i}`, input: '', output: `translation ${i}` }))));
    const cblue = path.join(DATA, 'dev.json');
    const out = path.join(tmp, 'multi');
    const r = await runCli(['train', '--model_name_or_path', model, '--train_file', `${cblue},${alpaca}`, '--output_dir', out, '--max_steps', '2', '--max_source_length', '96', '--max_target_length', '16', '--device', 'cpu'], { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const one = /data: .*dev\.json: (\d+) samples \(promptcblue;/.exec(r.stdout);
    const two = /data: .*multi-alpaca\.json: (\d+) samples \(alpaca;/.exec(r.stdout);
    expect(one && two, r.stdout).toBeTruthy();
    const total = Number(one![1]) + Number(two![1]);
    expect(two![1]).toBe('9');
    expect(r.stdout).toContain(`data: ${total} training samples`);
    expect(r.stdout).toMatch(new RegExp(`training llama \\(lora\\): .*; ${total} samples; 2 steps`));
    // no part files left behind; the run's spec names both files
    expect(fs.readdirSync(path.join(out, 'data'))).toEqual(['train.tok']);
    const store = openStore(home);
    expect((store.runs.list()[0]!.spec as { data: { train: unknown } }).data.train).toEqual([cblue, alpaca]);
    store.close();
    // a later attempt in that folder that fails on its data puts the earlier run's files back and leaves no backup
    const bad = path.join(tmp, 'multi-bad.jsonl');
    fs.writeFileSync(bad, '{"instruction": "a", "output": "b"}\n{"instruction": oops\n');
    const before = fs.readFileSync(path.join(out, 'runspec.json'), 'utf8');
    const r2 = await runCli(['train', '--model_name_or_path', model, '--train_file', `${cblue},${bad}`, '--output_dir', out, '--max_steps', '2', '--device', 'cpu'], { home, timeoutMs: 120_000 });
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toMatch(/bad record\(s\) in .*multi-bad\.jsonl/);
    expect(fs.readFileSync(path.join(out, 'runspec.json'), 'utf8')).toBe(before);
    const leftovers = [...fs.readdirSync(out), ...fs.readdirSync(path.join(out, 'data'))].filter((n) => /\.prev-|\.part\d|\.tmp/.test(n));
    expect(leftovers).toEqual([]);
    // what a worker killed while preparing left (its part and temporary files) goes with the next attempt there
    const dead = path.join(out, 'data', 'train.tok.part1.tok.999999.tmp.ids');
    fs.writeFileSync(dead, 'x');
    fs.writeFileSync(path.join(out, 'data', 'train.tok.part0.tok'), 'x');
    const r3 = await runCli(['train', '--model_name_or_path', model, '--train_file', `${cblue},${alpaca}`, '--output_dir', out, '--max_steps', '2', '--overwrite_output_dir', '--device', 'cpu'], { home, timeoutMs: 120_000 });
    expect(r3.code, r3.stderr).toBe(0);
    expect(fs.readdirSync(path.join(out, 'data'))).toEqual(['train.tok']);
  }, 120_000);
});
