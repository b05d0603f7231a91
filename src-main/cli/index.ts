#!/usr/bin/env node
// index.ts — `llms-train`, the command line with the same power as the app. Each subcommand is a thin
// layer over src-main/core; what it prints for a person goes to stdout, errors go to stderr with a
// non-zero exit. Subcommands for training, predict, eval, chat and merge arrive with their issues.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

import { Command, InvalidArgumentError } from 'commander';

import { engineBinary, loadEngine, listDevices } from '../core/engine/native.js';
import { appRoot, appVersion, databaseFile, dataHome } from '../core/paths.js';
import { Store } from '../core/store/store.js';
import { registerChat } from './chat.js';
import { registerData } from './data.js';
import { registerEval } from './eval.js';
import { registerModels } from './models.js';
import { registerPredict } from './predict.js';
import { serve } from './serve.js';
import { registerTrain } from './train.js';

function parsePort(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port is an integer from 0 to 65535 (0 = any free port)');
  return n;
}

function fail(err: unknown): never {
  const e = err as Error & { hint?: string };
  console.error(`llms-train: ${e.message ?? String(err)}`);
  if (e.hint) console.error(`hint: ${e.hint}`);
  process.exit(1);
}

/** Electron's binary path when it is installed, else null with the reason. */
function electronBinary(): { path: string | null; why: string } {
  try {
    // In plain Node, the electron package exports the path of its binary (and throws if it is missing).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const p = require('electron') as unknown;
    if (typeof p === 'string' && fs.existsSync(p)) return { path: p, why: '' };
    return { path: null, why: "Electron's binary is not installed" };
  } catch {
    return { path: null, why: "Electron's binary is not installed (it could not be downloaded at npm install)" };
  }
}

// `llms-train … | head -1`: a reader that goes away is not an error of ours (no stack trace); what is still running
// (a training, say) goes on, its further output dropped
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });

const program = new Command();
program
  .name('llms-train')
  .description('LLMs-train: fine-tune large language models with LoRA/QLoRA on your own machine.')
  .version(appVersion(), '-v, --version');

program
  .command('start')
  .description('open the desktop window; where Electron cannot run, start browser mode on loopback')
  .option('--port <port>', 'port for browser mode (0 = any free port)', parsePort, 0)
  .action(async (o: { port: number }) => {
    const el = electronBinary();
    const headless = process.platform === 'linux' && !process.env.DISPLAY && !process.env.WAYLAND_DISPLAY;
    if (el.path && !headless) {
      const env = { ...process.env };
      delete env.ELECTRON_RUN_AS_NODE;
      const child = spawn(el.path, [appRoot()], { stdio: 'inherit', env });
      child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
      return;
    }
    const why = el.path ? 'no display is available ($DISPLAY and $WAYLAND_DISPLAY are unset)' : el.why;
    console.log(`The desktop window is unavailable: ${why}; starting browser mode on loopback.`);
    await serve({ host: '127.0.0.1', port: o.port, allowRemote: false }).catch(fail);
  });

program
  .command('serve')
  .description('serve the workbench to a browser (HTTP + WebSocket, loopback, per-launch token)')
  .option('--host <host>', 'address to bind', '127.0.0.1')
  .option('--port <port>', 'port (0 = any free port)', parsePort, 0)
  .option('--allow-remote', 'allow a non-loopback --host (prints a warning)', false)
  .action(async (o: { host: string; port: number; allowRemote: boolean }) => {
    await serve(o).catch(fail);
  });

program
  .command('demo')
  .description('the embedded default: fine-tune the tiny demo model on the bundled sample data on CPU, with accuracy before and after')
  .action(async () => {
    const { Core } = await import('../core/core.js');
    const { RunService } = await import('../core/runs/service.js');
    const { runDemo } = await import('../core/runs/demo.js');
    const core = new Core({ mode: 'browser', statusIntervalMs: 0 });
    const service = new RunService(core.store);
    const tty = process.stdout.isTTY;
    try {
      const r = await runDemo(service, core.home, {
        onLog: (l) => console.log(l),
        onEvent: (e) => {
          if (e.event === 'step') {
            const line = `step ${String(e.step)}/300  loss ${Number(e.loss).toFixed(4)}  ${Math.round(Number(e.tokens_per_s))} tok/s`;
            if (tty) process.stdout.write(`\r${line}   `);
            else console.log(line);
          } else if (e.event === 'eval') console.log(`${tty ? '\n' : ''}eval loss at step ${String(e.step)}: ${Number(e.eval_loss).toFixed(4)}`);
        },
      });
      if (tty) process.stdout.write('\n');
      console.log(`test accuracy (classification, ${r.after.total} records): before ${r.before.accuracy.toFixed(3)} → after ${r.after.accuracy.toFixed(3)}`);
      console.log(`run #${r.runId} in ${r.outputDir}; ${r.seconds.toFixed(0)} s in all`);
      core.close();
    } catch (err) {
      core.close();
      fail(err);
    }
  });

program
  .command('gpus')
  .description('list compute devices (GPUs with memory, or CPU only)')
  .option('--json', 'machine-readable output', false)
  .action((o: { json: boolean }) => {
    const engine = loadEngine();
    if (!engine.addon) fail(new Error(engine.error ?? 'engine unavailable'));
    const devices = listDevices(engine);
    if (o.json) {
      console.log(JSON.stringify(devices, null, 2));
      return;
    }
    const gpus = devices.filter((d) => d.kind === 'cuda');
    if (!gpus.length) console.log('CPU only (no CUDA GPU found)');
    for (const d of devices) {
      // (0 free: the driver could not say — no NVML — not an empty GPU)
      const free = d.memoryFree > 0 ? `${(d.memoryFree / 2 ** 30).toFixed(1)} GiB free` : 'free memory unknown';
      console.log(`[${d.index}] ${d.kind.toUpperCase()} ${d.name}: ${(d.memoryTotal / 2 ** 30).toFixed(1)} GiB total, ${free}`);
    }
  });

program
  .command('runs')
  .description('list runs recorded in the database')
  .option('--json', 'machine-readable output', false)
  .action((o: { json: boolean }) => {
    const file = databaseFile(dataHome());
    if (!fs.existsSync(file)) {
      if (o.json) console.log('[]');
      else console.log(`no runs yet (no database at ${file})`);
      return;
    }
    let store: Store;
    try {
      store = Store.open(file);
    } catch (err) {
      fail(err);
    }
    try {
      // rows whose process died (kill -9 of a CLI train, a crashed app) are repaired first, as the app does at
      // start; best effort (a read-only database is still listed)
      store.runs.markInterrupted();
    } catch {
      /* listed as they are */
    }
    const runs = store.runs.list();
    store.close();
    if (o.json) {
      console.log(JSON.stringify(runs.map(({ spec: _spec, ...r }) => r), null, 2));
      return;
    }
    if (!runs.length) console.log('no runs yet');
    for (const r of runs) console.log(`#${r.id}\t${r.status}\t${r.createdAt}\t${r.name}${r.errorMessage ? `\t(${r.errorCode ?? 'ERROR'}: ${r.errorMessage})` : ''}`);
  });

program
  .command('engine')
  .description('run the native engine CLI (llmt-engine): create-tiny, inspect, forward, grad, generate, train, …')
  .allowUnknownOption(true)
  .helpOption(false)
  .argument('[args...]', 'arguments passed to llmt-engine (try: llms-train engine help)')
  .action((args: string[]) => {
    const exe = engineBinary();
    if (!fs.existsSync(exe)) fail(new Error(`the engine binary is missing at ${exe}; build it with \`npm run build:native\``));
    const child = spawn(exe, args, { stdio: 'inherit' });
    const forward = (sig: NodeJS.Signals) => child.kill(sig);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
  });

program
  .command('info')
  .description('versions, data home, database and engine')
  .action(() => {
    const engine = loadEngine();
    console.log(`LLMs-train ${appVersion()}`);
    console.log(`data home: ${dataHome()} (set LLMS_TRAIN_HOME to change)`);
    console.log(`database:  ${databaseFile(dataHome())}`);
    console.log(`engine:    ${engine.addon ? `llmt-engine ${engine.version}; ${engine.addon.buildInfo()}` : `unavailable: ${engine.error}`}`);
  });

registerData(program, fail);
registerTrain(program, fail);
registerPredict(program, fail);
registerEval(program, fail);
registerChat(program, fail);
registerModels(program, fail);

program.parseAsync(process.argv).catch(fail);
