// app.ts — test helpers that run the real built CLI as a separate process with its own data home.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'dist', 'main', 'cli', 'index.js');

export function tempHome(prefix = 'llmt-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface Served {
  proc: ChildProcess;
  url: string;
  origin: string;
  token: string;
  home: string;
  output: () => string;
  stop: () => Promise<void>;
}

/** Runs `llms-train <args>` and resolves once it prints the browser URL. */
/** POST /api/<method> on a served app with its token; the result, or throws with the API error's message. */
export async function callApi<T>(app: Served, method: string, body: unknown): Promise<T> {
  const res = await fetch(`${app.origin}/api/${method}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-LLMT-Token': app.token }, body: JSON.stringify(body) });
  const j = (await res.json()) as { result?: T; error?: { message: string } };
  if (j.error) throw new Error(j.error.message);
  return j.result as T;
}

export function startCli(args: string[], opts: { home?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Served> {
  const home = opts.home ?? tempHome();
  const proc = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, LLMS_TRAIN_HOME: home, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no URL printed within 30 s; output:\n${out}`)), 30_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /(http:\/\/[^\s/]+)\/\?token=([A-Za-z0-9_-]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({
          proc,
          url: m[0],
          origin: m[1]!,
          token: m[2]!,
          home,
          output: () => out,
          stop: () =>
            new Promise<void>((res) => {
              if (proc.exitCode !== null) return res();
              proc.once('exit', () => res());
              proc.kill('SIGTERM');
            }),
        });
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`llms-train exited with ${code} before printing a URL; output:\n${out}`));
    });
  });
}

/** Runs `llms-train <args>` to completion. */
export function runCli(args: string[], opts: { home?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, LLMS_TRAIN_HOME: opts.home ?? tempHome(), ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`llms-train ${args.join(' ')} did not finish; stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export async function post(origin: string, method: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any }> {
  const res = await fetch(`${origin}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

/** `llms-train train` flags for a short LoRA run (3 steps, micro-batch 2, short sequences) of `model` on the bundled
 *  PromptCBLUE sample, writing to `out`; `more` adds or overrides flags (commander takes the last value). */
export function sampleTrainFlags(model: string, out: string, more: string[] = []): string[] {
  return [
    'train', '--model_name_or_path', model, '--use_lora', 'True',
    '--train_file', path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'dev.json'),
    '--prompt_column', 'input', '--response_column', 'target', '--output_dir', out,
    '--max_source_length', '32', '--max_target_length', '8', '--per_device_train_batch_size', '2',
    '--max_steps', '3', '--logging_steps', '1', '--save_steps', '3', '--learning_rate', '1e-3', '--json',
    ...more,
  ];
}
