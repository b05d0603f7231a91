// sync-worker.ts — synchronous encode/decode over npm `tokenizers` (HF's Rust tokenizers), whose encode
// and decode only exist as Promises: a worker thread holds its own copy of the tokenizer and the caller
// blocks on Atomics.wait until the answer is posted back (receiveMessageOnPort).
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';

import type { TokenSpec } from './config.js';

/** Runs in the worker (CommonJS, eval'd): loads the tokenizer lazily, answers one request at a time. */
const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { port, flag, tokenizersPath, text, extra } = workerData;
const signal = new Int32Array(flag);
let tok = null;
let initError = null;
try {
  const { Tokenizer, AddedToken } = require(tokenizersPath);
  tok = Tokenizer.fromString(text);
  for (const t of extra) {
    tok.addAddedTokens([new AddedToken(t.content, t.special, { singleWord: t.singleWord, leftStrip: t.lstrip, rightStrip: t.rstrip, normalized: t.normalized })]);
  }
} catch (e) {
  initError = String((e && e.message) || e);
}
function reply(msg) {
  port.postMessage(msg);
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
}
port.on('message', async (m) => {
  if (initError !== null) return reply({ error: initError });
  try {
    if (m.op === 'encode') {
      const enc = await tok.encode(m.text, null, { addSpecialTokens: false });
      reply({ ok: enc.getIds() });
    } else if (m.op === 'decode') {
      reply({ ok: await tok.decode(m.ids, false) });
    } else reply({ error: 'unknown op ' + m.op });
  } catch (e) {
    reply({ error: String((e && e.message) || e) });
  }
});
`;

/** How long one call may block before we give up on the worker (a first call also loads the tokenizer). */
const CALL_TIMEOUT_MS = 300_000;

export interface ExtraToken extends Omit<TokenSpec, 'normalized'> {
  normalized: boolean;
}

export class SyncTokenizerWorker {
  private worker: Worker | null = null;
  private port: MessagePort | null = null;
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    private readonly tokenizersPath: string,
    private readonly file: string,
    private readonly text: string,
    private readonly extra: ExtraToken[],
  ) {}

  private start(): MessagePort {
    if (this.port) return this.port;
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { port: port2, flag: this.signal.buffer, tokenizersPath: this.tokenizersPath, text: this.text, extra: this.extra },
      transferList: [port2],
    });
    // Neither the worker nor the port may keep the process alive.
    worker.unref();
    port1.unref();
    this.worker = worker;
    this.port = port1;
    return port1;
  }

  call<T>(msg: { op: 'encode'; text: string } | { op: 'decode'; ids: number[] }): T {
    const port = this.start();
    Atomics.store(this.signal, 0, 0);
    port.postMessage(msg);
    const deadline = Date.now() + CALL_TIMEOUT_MS;
    for (;;) {
      const got = receiveMessageOnPort(port);
      if (got) {
        const m = got.message as { ok?: T; error?: string };
        if (m.error !== undefined) throw new Error(`tokenizers: ${m.error}`);
        return m.ok as T;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        this.dispose();
        throw new Error(`the tokenizer worker for ${this.file} did not answer within ${CALL_TIMEOUT_MS / 1000} s`);
      }
      Atomics.wait(this.signal, 0, 0, Math.min(left, 1000));
    }
  }

  dispose(): void {
    const w = this.worker;
    this.worker = null;
    this.port?.close();
    this.port = null;
    if (w) void w.terminate();
  }
}
