// `llms-train train` under faults and odd input: Ctrl-C or kill -9 while the data is being prepared, a resume
// that the engine refuses in a used folder (the earlier run's files stay), --overwrite_output_dir (the earlier
// run's checkpoints and outputs go, nothing else), --use_lora typos, --on_error, a read-only output folder, and
// the one-line notes (--eval_steps without eval data, --max_steps 0, one "checkpoint:" line per checkpoint).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import { flags as cliFlags } from '../helpers/cli-flags';
import { RunService } from '../../src-main/core/runs/service';
import { Store } from '../../src-main/core/store/store';
import { CLI, ROOT, runCli } from '../helpers/app';

const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');
const DATA = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
let tmp: string;
let model: string;
let big: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-train-faults-'));
  model = path.join(tmp, 'model');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
  // enough records that preparing them takes seconds (a Ctrl-C lands in the middle)
  big = path.join(tmp, 'big.jsonl');
  const lines: string[] = [];
  for (let i = 0; i < 60_000; i++) lines.push(JSON.stringify({ input: `问题 ${i} ${'abc def '.repeat(20)}`, target: `答 ${i % 7}` }));
  fs.writeFileSync(big, lines.join('\n'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const flags = (out: string, steps: number, extra: string[] = []) => [
  'train', '--model_name_or_path', model, '--train_file', path.join(DATA, 'dev.json'), '--prompt_column', 'input',
  '--response_column', 'target', '--output_dir', out, '--max_source_length', '64', '--max_target_length', '8',
  '--per_device_train_batch_size', '2', '--gradient_accumulation_steps', '1', '--max_steps', String(steps),
  '--logging_steps', '1', '--save_steps', '2', '--learning_rate', '2e-3', '--device', 'cpu', ...extra,
];

const openStore = (home: string) => Store.open(path.join(home, 'llms-train.db'));

/** Starts a train whose data preparation is slow; resolves once its temp .tok files exist. */
async function preparing(home: string, out: string): Promise<{ child: ChildProcess; stdout: () => string; exited: Promise<number | null> }> {
  const args = flags(out, 4, ['--train_file', big, '--cache_dir', path.join(tmp, `cache-${path.basename(out)}`)]);
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  const t0 = Date.now();
  const tmpFiles = () => (fs.existsSync(path.join(out, 'data')) ? fs.readdirSync(path.join(out, 'data')).filter((n) => n.includes('.tmp')) : []);
  while (!tmpFiles().length) {
    if (Date.now() - t0 > 30_000 || child.exitCode !== null) throw new Error(`preparation did not start: ${stdout}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, stdout: () => stdout, exited };
}

describe('llms-train train: interrupts while preparing the data', () => {
  it('Ctrl-C during preparation stops the run there: no training, no temp files, the run "stopped"', async () => {
    const home = path.join(tmp, 'home-int');
    const out = path.join(tmp, 'int');
    const p = await preparing(home, out);
    p.child.kill('SIGINT');
    const code = await p.exited;
    expect(code, p.stdout()).toBe(130);
    expect(p.stdout()).toMatch(/stopping: the run is not training yet/);
    expect(p.stdout()).toMatch(/run #1 stopped during data preparation; no training was done/);
    expect(p.stdout()).not.toMatch(/training llama|step 1\//);
    expect(fs.readdirSync(path.join(out, 'data')).filter((n) => n.includes('.tmp'))).toEqual([]);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('checkpoint-'))).toEqual([]);
    const store = openStore(home);
    expect(store.runs.list()[0]).toMatchObject({ status: 'stopped', errorMessage: 'stopped during data preparation' });
    store.close();
  });

  it.runIf(fs.existsSync('/dev/full'))('a full disk while writing the .tok file: one IO error with a hint, no temp files, the run failed', async () => {
    const home = path.join(tmp, 'home-full');
    const out = path.join(tmp, 'full');
    fs.mkdirSync(path.join(out, 'data'), { recursive: true });
    const args = flags(out, 2, ['--overwrite_output_dir', '--cache_dir', path.join(tmp, 'cache-full')]);
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    // the writer's temp file for the token ids (named by the pid) lands on /dev/full: its writes fail with ENOSPC
    fs.symlinkSync('/dev/full', path.join(out, 'data', `train.tok.${child.pid}.tmp.ids`));
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(code, stderr).toBe(1);
    expect(stderr).toMatch(new RegExp(`^llms-train: cannot write ${out}/data/train\\.tok: no space left on the device \\(ENOSPC\\)\nhint: Free some space .*--output_dir`));
    expect(stderr).not.toMatch(/node:events|at .*\.js:\d+/);
    expect(fs.readdirSync(path.join(out, 'data'))).toEqual([]);
    const store = openStore(home);
    expect(store.runs.list()[0]).toMatchObject({ status: 'failed', errorCode: 'IO' });
    store.close();
  });

  it('kill -9 while preparing: `runs` repairs the row left "queued" (a dead owner), and a live run stays', async () => {
    const home = path.join(tmp, 'home-k9');
    const p = await preparing(home, path.join(tmp, 'k9'));
    const live = JSON.parse((await runCli(['runs', '--json'], { home })).stdout);
    expect(live[0]).toMatchObject({ status: 'queued' }); // its process is alive: left alone
    p.child.kill('SIGKILL');
    await p.exited;
    const after = JSON.parse((await runCli(['runs', '--json'], { home })).stdout);
    expect(after[0]).toMatchObject({ status: 'interrupted', errorMessage: expect.stringMatching(/ended before training began/) });
  });
});

describe('llms-train train: an existing output folder', () => {
  it('a resume the engine refuses leaves the earlier run\'s runspec.json, job.json and data in place', async () => {
    const home = path.join(tmp, 'home-f10');
    const out = path.join(tmp, 'f10');
    expect((await runCli(flags(out, 4), { home, timeoutMs: 120_000 })).code).toBe(0);
    const files = ['runspec.json', 'job.json', path.join('data', 'train.tok')];
    const before = files.map((f) => fs.readFileSync(path.join(out, f)));
    const neox = path.join(tmp, 'neox');
    expect(spawnSync(ENGINE, ['create-tiny', '--family', 'gpt_neox', '--out', neox]).status).toBe(0);
    // auto-resume (no --overwrite_output_dir) with another model: the checkpoint does not match
    const r = await runCli([...flags(out, 8), '--model_name_or_path', neox], { home, timeoutMs: 120_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/does not match this job/);
    files.forEach((f, i) => expect(fs.readFileSync(path.join(out, f)).equals(before[i]!), f).toBe(true));
    expect(fs.readdirSync(out).filter((n) => n.startsWith('.'))).toEqual([]);
    expect(fs.readdirSync(path.join(out, 'data')).filter((n) => n.startsWith('.'))).toEqual([]);
    // an accepted resume replaces them (and leaves no backups)
    const ok = await runCli(flags(out, 6), { home, timeoutMs: 120_000 });
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'runspec.json'), 'utf8')).training.max_steps).toBe(6);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('--overwrite_output_dir removes the earlier run\'s checkpoints and outputs (only those), so "latest" is the new run\'s', async () => {
    const home = path.join(tmp, 'home-f3');
    const out = path.join(tmp, 'f3');
    expect((await runCli(flags(out, 8, ['--use_lora', 'false']), { home, timeoutMs: 120_000 })).code).toBe(0);
    expect(fs.existsSync(path.join(out, 'model.safetensors'))).toBe(true);
    fs.writeFileSync(path.join(out, 'notes.txt'), 'mine');
    const r = await runCli(flags(out, 2, ['--overwrite_output_dir']), { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.match(/--overwrite_output_dir: removed/g)).toHaveLength(1);
    expect(r.stdout).toMatch(/removed the earlier run's 4 checkpoint folder\(s\) and model\.safetensors, config\.json from /);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('checkpoint-'))).toEqual(['checkpoint-2']);
    expect(fs.existsSync(path.join(out, 'model.safetensors'))).toBe(false);
    expect(fs.existsSync(path.join(out, 'config.json'))).toBe(false);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
    expect(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8')).toBe('mine');
    const res = await runCli(flags(out, 4, ['--resume_from_checkpoint', 'latest']), { home, timeoutMs: 120_000 });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/resuming from .*checkpoint-2\n/);
  });

  it('a checkpoint that cannot be written (a file-size limit as a full disk) leaves no half-written folder; a dead attempt\'s one is removed by the next run', async () => {
    const home = path.join(tmp, 'home-ckfull');
    const out = path.join(tmp, 'ckfull');
    const first = await runCli(flags(out, 2), { home, timeoutMs: 120_000 });
    expect(first.code, first.stderr).toBe(0);
    // the same job into another folder, run by the engine with writes capped at 4 KiB (EFBIG; SIGXFSZ ignored):
    // the first checkpoint's adapter (16 KiB) cannot be written
    const job = JSON.parse(fs.readFileSync(path.join(out, 'job.json'), 'utf8')) as { output: { dir: string } };
    const out2 = path.join(tmp, 'ckfull2');
    fs.mkdirSync(out2);
    job.output.dir = out2;
    fs.writeFileSync(path.join(out2, 'job.json'), JSON.stringify(job));
    const r = spawnSync('bash', ['-c', `trap '' XFSZ; ulimit -f 4; exec "${ENGINE}" train --job "${path.join(out2, 'job.json')}"`], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    const err = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string; message?: string }).find((e) => e.event === 'error');
    expect(err?.message).toMatch(/^checkpoint-2 was not saved: cannot write .*: .*\(its temporary folder is removed; the checkpoints saved before it are intact\)$/);
    expect(fs.readdirSync(out2).filter((n) => n.startsWith('checkpoint-'))).toEqual([]);
    // what a killed engine leaves (checkpoint-N.tmp-<dead pid>) goes when the next run starts in that folder
    fs.mkdirSync(path.join(out, 'checkpoint-4.tmp-999999999'));
    fs.writeFileSync(path.join(out, 'checkpoint-4.tmp-999999999', 'adapter_model.safetensors'), 'half');
    const again = await runCli(flags(out, 4), { home, timeoutMs: 120_000 });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/removed 1 half-written checkpoint folder\(s\) an earlier attempt left: checkpoint-4\.tmp-999999999/);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-2', 'checkpoint-4']);
  });

  it('a kill asked for (a second Ctrl-C) leaves the run "stopped" with where to go on from; a kill -9 before any checkpoint is re-run by the same command', async () => {
    const home = path.join(tmp, 'home-kill');
    const out = path.join(tmp, 'kill2');
    fs.mkdirSync(home, { recursive: true });
    // the handle's kill(), which the CLI's second Ctrl-C and the app's "force stop" call: deterministic through the service
    const store = openStore(home);
    try {
      const { spec } = specFromFlags(cliFlags(flags(out, 2000, ['--save_steps', '1000']).slice(1)));
      const svc = new RunService(store);
      let steps = 0;
      let killed!: () => void;
      const twoSteps = new Promise<void>((resolve) => (killed = resolve));
      const handle = await svc.start(spec, { onEvent: (e) => e.event === 'step' && ++steps === 2 && killed() });
      await twoSteps;
      handle.kill();
      const run = await handle.done;
      expect(run).toMatchObject({ status: 'stopped', errorCode: null, errorMessage: "killed at the user's request, before any checkpoint was saved", errorHint: 'No checkpoint was saved before it ended: run the same command again to start afresh.' });
    } finally {
      store.close();
    }
    // the worker killed from outside (kill -9) before any checkpoint: failed, with the same hint, and the same command
    // then starts afresh (the folder holds only what the attempt wrote before training)
    const child = spawn(process.execPath, [CLI, ...flags(out, 2000, ['--save_steps', '1000'])], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await new Promise<void>((resolve) => {
      const on = (d: Buffer) => ((text += d.toString()), text.includes('step 2/') && resolve());
      child.stdout!.on('data', on);
      child.stderr!.on('data', on);
    });
    const s2 = openStore(home);
    const pid = s2.runs.list().find((r) => r.status === 'running')!.workerPid!;
    s2.close();
    process.kill(pid, 'SIGKILL');
    expect(await exited).toBe(1);
    expect(text).toMatch(/failed: WORKER_DIED: .*killed by SIGKILL[^]*hint: No checkpoint was saved before it ended: run the same command again to start afresh/);
    const again = await runCli(flags(out, 2), { home, timeoutMs: 120_000 });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/resuming/);
  });

  it('a checkpoint whose trainer_state.json no run writes (a step that is not its folder\'s, a cursor past the data) is refused by name', async () => {
    const home = path.join(tmp, 'home-state');
    const out = path.join(tmp, 'state');
    expect((await runCli(flags(out, 2), { home, timeoutMs: 120_000 })).code).toBe(0);
    const file = path.join(out, 'checkpoint-2', 'trainer_state.json');
    const good = fs.readFileSync(file, 'utf8');
    const edit = (f: (s: { global_step: number; data_cursor: { epoch: number; index: number } }) => void) => {
      const st = JSON.parse(good) as { global_step: number; data_cursor: { epoch: number; index: number } };
      f(st);
      fs.writeFileSync(file, JSON.stringify(st));
    };
    edit((st) => (st.global_step = 2 ** 62));
    let r = await runCli(flags(out, 4), { home, timeoutMs: 120_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/trainer_state\.json: global_step 46116860184273\d+ is not the step of checkpoint-2 \(the checkpoint is damaged\)/);
    edit((st) => (st.data_cursor.index = 1e12));
    r = await runCli(flags(out, 4), { home, timeoutMs: 120_000 });
    expect(r.stderr).toMatch(/data_cursor\.index 1000000000000 is past the end of the training data \(\d+ samples\)/);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('checkpoint-'))).toEqual(['checkpoint-2']);
    fs.writeFileSync(file, good);
    r = await runCli(flags(out, 4), { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
  });

  it('a read-only output folder is one line naming it and the cause, with a hint', async () => {
    const ro = path.join(tmp, 'ro');
    fs.mkdirSync(ro);
    fs.chmodSync(ro, 0o555);
    try {
      // root may write anywhere: the check needs an ordinary user's permissions
      if (process.getuid?.() === 0) return;
      const r = await runCli(flags(path.join(ro, 'out'), 2));
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^llms-train: cannot create the folder .*ro\/out: permission denied \(EACCES\)\nhint: .*--output_dir/);
    } finally {
      fs.chmodSync(ro, 0o755);
    }
  });
});

describe('llms-train train: flags', () => {
  it('--use_lora takes HF\'s truthy/falsy values only', async () => {
    const r = await runCli(flags(path.join(tmp, 'flase'), 1, ['--use_lora', 'Flase']));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--use_lora \[bool\].* 'Flase' is invalid.*truthy or falsy/);
    expect(fs.existsSync(path.join(tmp, 'flase'))).toBe(false);
    const n = await runCli(flags(path.join(tmp, 'uselora-n'), 1, ['--use_lora', 'N']), { timeoutMs: 120_000 });
    expect(n.code, n.stderr).toBe(0);
    expect(n.stdout).toMatch(/training llama \(full\)/);
  });

  it('--on_error skip (or --on-error skip, as the hint says) trains without the bad records', async () => {
    const bad = path.join(tmp, 'bad.jsonl');
    const good = fs.readFileSync(path.join(DATA, 'dev.json'), 'utf8').split('\n').filter(Boolean).slice(0, 20);
    fs.writeFileSync(bad, [...good.slice(0, 3), '{"input": "x", "target": ', ...good.slice(3)].join('\n'));
    const home = path.join(tmp, 'home-skip');
    const r = await runCli(flags(path.join(tmp, 'skip0'), 2, ['--train_file', bad]), { home });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/bad\.jsonl:4: /);
    expect(r.stderr).toMatch(/hint: .*--on-error skip/);
    for (const flag of ['--on_error', '--on-error']) {
      const s = await runCli(flags(path.join(tmp, `skip${flag}`), 2, ['--train_file', bad, flag, 'skip']), { home, timeoutMs: 120_000 });
      expect(s.code, s.stderr).toBe(0);
      expect(s.stdout).toMatch(/data: 20 training samples .*; 1 bad record\(s\) skipped \(--on_error skip\)/);
    }
  });

  it('notes --eval_steps without eval data and --max_steps 0; one "checkpoint:" line per checkpoint after Ctrl-C', async () => {
    const r = await runCli(flags(path.join(tmp, 'notes'), 0, ['--eval_steps', '1', '--num_train_epochs', '1', '--save_steps', '1000']), { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.match(/warning: --eval_steps 1: there is no evaluation data/g)).toHaveLength(1);
    expect(r.stdout).toMatch(/note: --max_steps 0 is not positive, so the run trains 1 epoch\(s\) \(--num_train_epochs\) = \d+ steps/);
    // --save_steps 1: the stop lands on a save step, whose checkpoint the engine writes again
    const out = path.join(tmp, 'ctrlc');
    const child = spawn(process.execPath, [CLI, ...flags(out, 2000, ['--save_steps', '1'])], { env: { ...process.env, LLMS_TRAIN_HOME: path.join(tmp, 'home-c') }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await new Promise<void>((resolve) =>
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        if (stdout.includes('step 3/')) resolve();
      }),
    );
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(stdout).toMatch(/run #1 stopped/);
    const lines = stdout.split('\n').filter((l) => l.startsWith('checkpoint: '));
    expect(lines.length).toBeGreaterThan(0);
    expect(new Set(lines).size).toBe(lines.length);
  });
});
