// host-child.ts — the engine host's child process: a Generator (models, tokenizers, streaming generation)
// driven by messages from EngineHost (host.ts). Runs as an Electron utility process (messages on
// process.parentPort) or a Node child (process.send / 'message'). It exits when its parent goes away.
import { GenerateError, Generator } from './generator.js';
import type { ChildMessage, ParentMessage } from './host-protocol.js';
import { INFERENCE_QUANTIZATIONS } from './quantization.js';

interface ParentPort {
  on(event: 'message', fn: (e: { data: unknown }) => void): void;
  postMessage(msg: unknown): void;
}

const parentPort = (process as unknown as { parentPort?: ParentPort }).parentPort;

function send(msg: ChildMessage): void {
  if (parentPort) parentPort.postMessage(msg);
  else if (process.send) process.send(msg);
}

function errorOf(err: unknown): { message: string; code: string; hint?: string; reason?: string } {
  const e = err as Error & { code?: string; hint?: string; reason?: string };
  return {
    message: e.message ?? String(err),
    code: err instanceof GenerateError ? err.code : (e.code ?? 'INTERNAL'),
    ...(e.hint ? { hint: e.hint } : {}),
    ...(e.reason ? { reason: e.reason } : {}),
  };
}

const threads = Number(process.env.LLMT_HOST_THREADS ?? 0);
const generator = new Generator(Number(process.env.LLMT_HOST_MAX_MODELS ?? 2) || 2, {
  device: process.env.LLMT_HOST_DEVICE || 'cpu',
  precision: process.env.LLMT_HOST_PRECISION || 'fp32',
  quantization: INFERENCE_QUANTIZATIONS.find((q) => q === process.env.LLMT_HOST_QUANTIZATION) ?? 'auto',
});

async function handle(m: ParentMessage): Promise<void> {
  switch (m.op) {
    case 'load': {
      try {
        send({ id: m.id, type: 'result', result: await generator.load(m.ref) });
      } catch (err) {
        send({ id: m.id, type: 'error', error: errorOf(err) });
      }
      return;
    }
    case 'generate': {
      try {
        const result = await generator.generate(m.id, m.request, (text) => send({ id: m.id, type: 'delta', text }));
        send({ id: m.id, type: 'result', result });
      } catch (err) {
        send({ id: m.id, type: 'error', error: errorOf(err) });
      }
      return;
    }
    case 'generateBatch': {
      try {
        send({ id: m.id, type: 'result', result: await generator.generateBatch(m.id, m.requests) });
      } catch (err) {
        send({ id: m.id, type: 'error', error: errorOf(err) });
      }
      return;
    }
    case 'promptLengths': {
      try {
        send({ id: m.id, type: 'result', result: await generator.promptLengths(m.requests) });
      } catch (err) {
        send({ id: m.id, type: 'error', error: errorOf(err) });
      }
      return;
    }
    case 'abort':
      if (m.target) generator.abort(m.target);
      else generator.abortAll();
      return;
    case 'unload': {
      try {
        send({ id: m.id, type: 'result', result: await generator.unload(m.ref) });
      } catch (err) {
        send({ id: m.id, type: 'error', error: errorOf(err) });
      }
      return;
    }
    case 'dispose':
      await generator.dispose().catch(() => {});
      send({ id: m.id, type: 'result', result: true });
      process.exit(0);
  }
}

function onMessage(data: unknown): void {
  const m = data as ParentMessage;
  if (!m || typeof m !== 'object' || typeof m.op !== 'string') return;
  void handle(m);
}

if (threads > 0) {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { loadEngine } = require('./native.js') as typeof import('./native.js');
    loadEngine().addon?.setThreads(threads);
  } catch {
    /* reported on the first request */
  }
}

if (parentPort) parentPort.on('message', (e) => onMessage(e.data));
else if (process.send) {
  process.on('message', onMessage);
  // the parent died or closed the channel: nothing left to serve
  process.on('disconnect', () => process.exit(0));
} else {
  console.error('host-child: started without a parent (run it through EngineHost)');
  process.exit(2);
}
send({ type: 'ready', pid: process.pid });
