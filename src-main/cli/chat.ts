// chat.ts — `llms-train chat`: the chat window in a terminal, through core/chat's ChatService (so the prompt,
// the template and the sampling are exactly the app's). Tokens stream as generated; /reset starts a new
// conversation, /exit quits; Ctrl-C stops the current answer (at the prompt it quits). The conversation lives in
// memory unless --save keeps it as a session in the app's database. Lines may also come from a pipe. When older
// messages no longer fit the model's context they are left out (one line says so); a message too long even alone
// is refused with a hint and the chat goes on.
import fs from 'node:fs';
import readline from 'node:readline';

import type { Command } from 'commander';

import { ChatService, type SamplingParams } from '../core/chat/service.js';
import type { TemplateName } from '../core/data/templates.js';
import { EngineHost, type Placement } from '../core/engine/host.js';
import { databaseFile, dataHome } from '../core/paths.js';
import { Store } from '../core/store/store.js';
import { type Fail, type SamplingFlags, paramsOf, placementOf, placementOptions, posInt, samplingOptions, templateOption } from './options.js';

interface ChatFlags extends SamplingFlags {
  model: string;
  adapter?: string;
  tokenizer?: string;
  template: TemplateName;
  system?: string;
  save: boolean;
  threads?: number;
  device: string;
  precision: string;
}

/** The line that says older messages were left out of the model's context. */
export function droppedLine(dropped: number, rounds: number, context?: number): string {
  return `(older messages left out, ${dropped} of ${rounds} earlier exchanges: the conversation no longer fits the model's context${context ? ` of ${context} tokens` : ''} with max_new_tokens)`;
}

export function registerChat(program: Command, fail: Fail): void {
  placementOptions(samplingOptions(
    program
      .command('chat')
      .description('chat with a model (and adapter) in the terminal; tokens stream as generated. /reset starts over, /exit quits, Ctrl-C stops the current answer')
      .requiredOption('--model <dir>', 'base model folder (HF layout)')
      .option('--adapter <dir>', 'PEFT LoRA adapter or checkpoint folder')
      .option('--tokenizer <dir>', 'tokenizer folder (default: the model folder)')
      .addOption(templateOption())
      .option('--system <text>', 'system prompt')
      .option('--save', "keep the conversation as a chat session in the app's database", false)
      .option('--threads <n>', 'engine CPU threads', posInt),
  )).action(async (o: ChatFlags) => {
    let params: SamplingParams;
    let placement: Placement;
    try {
      params = paramsOf(o);
      placement = placementOf(o);
      if (!fs.existsSync(o.model)) throw new Error(`the model folder ${o.model} does not exist`);
      if (o.adapter && !fs.existsSync(o.adapter)) throw new Error(`the adapter folder ${o.adapter} does not exist`);
    } catch (err) {
      fail(err);
    }
    let store: Store;
    try {
      store = Store.open(o.save ? databaseFile(dataHome()) : ':memory:');
    } catch (err) {
      fail(err);
    }
    const host = new EngineHost({ ...(o.threads ? { threads: o.threads } : {}), placement });
    // the model (and adapter) load before the prompt: a wrong folder is said now, not after the first message
    try {
      await host.load({ model: o.model, adapter: o.adapter ?? null, tokenizer: o.tokenizer ?? null });
    } catch (err) {
      await host.dispose();
      store.close();
      fail(err);
    }
    const chat = new ChatService(store, host);
    const tty = Boolean(process.stdin.isTTY && process.stdout.isTTY);
    const rl = readline.createInterface({ input: process.stdin, output: tty ? process.stdout : undefined, terminal: tty });
    const start = () =>
      chat.createSession({
        model: o.model,
        adapter: o.adapter ?? null,
        tokenizer: o.tokenizer ?? null,
        template: o.template,
        system: o.system ?? null,
        params,
      }).id;
    let session = start();
    let current: AbortController | null = null;
    const interrupt = () => {
      if (current) current.abort();
      else rl.close();
    };
    rl.on('SIGINT', interrupt);
    process.on('SIGINT', interrupt);
    console.log(`chat with ${o.model}${o.adapter ? ` + ${o.adapter}` : ''} (template ${o.template}${o.save ? `, session #${session}` : ''}); /reset starts over, /exit quits${tty ? ', Ctrl-C stops an answer' : ''}`);
    const cleanup = async () => {
      process.off('SIGINT', interrupt);
      rl.close();
      await host.dispose();
      store.close();
    };
    if (tty) {
      rl.setPrompt('> ');
      rl.prompt();
    }
    try {
      for await (const raw of rl) {
        const line = raw.trim();
        if (line === '/exit' || line === '/quit') break;
        if (line === '/reset') {
          session = start();
          console.log(`(conversation reset${o.save ? `: session #${session}` : ''})`);
        } else if (line) {
          current = new AbortController();
          try {
            const r = await chat.send(session, line, (d) => process.stdout.write(d), { signal: current.signal });
            if (r.result.restarted) {
              const x = r.result.restarted;
              process.stderr.write(`(the engine was restarted: the previous one ended with ${x.signal ? `signal ${x.signal}` : `exit code ${x.code}`})\n`);
            }
            process.stdout.write(r.result.finish === 'aborted' ? ' [stopped]\n' : '\n');
            if (r.result.dropped) process.stderr.write(`${droppedLine(r.result.dropped, r.result.rounds ?? r.result.dropped, r.result.context)}\n`);
          } catch (err) {
            const e = err as Error & { code?: string; hint?: string; reason?: string };
            process.stderr.write(`\nllms-train: ${e.message}${e.hint ? `\nhint: ${e.hint}` : ''}\n`);
            // the engine restarts on the next message, a shorter message may fit; anything else (a model that cannot
            // load) ends the chat
            if (e.code !== 'ENGINE_CRASHED' && e.reason !== 'PROMPT_TOO_LONG') throw err;
          } finally {
            current = null;
          }
        }
        if (tty) rl.prompt();
      }
    } catch {
      await cleanup(); // the error is printed above
      process.exit(1);
    }
    await cleanup();
  });
}
