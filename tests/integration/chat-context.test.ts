// Chat within the model's context, through the built engine on the tiny demo model (a llama whose context,
// config.json max_position_embeddings, is 512 positions): the engine refuses a prompt that fills the context and
// ends an answer where the sequence reaches it (no position past it is ever computed, the engine process lives
// on); a chat leaves the oldest whole rounds out until prompt + max_new_tokens fits, and refuses a message too
// long even alone with a hint — in the engine host, in `llms-train chat`, and in the API's sendChat.
import { spawn } from 'node:child_process';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { Turn } from '../../src-main/core/data/formats';
import { encodePrompt } from '../../src-main/core/data/templates';
import { loadTokenizer, type LoadedTokenizer } from '../../src-main/core/data/tokenizer/index';
import { EngineHost } from '../../src-main/core/engine/host';
import { loadEngine } from '../../src-main/core/engine/native';
import { ensureDemoModel } from '../../src-main/core/runs/demo';
import { Store } from '../../src-main/core/store/store';
import { CLI, type Served, callApi, post, startCli, tempHome } from '../helpers/app';

const CONTEXT = 512;
const SENTENCE = '病人咳嗽发热三天，伴有头痛和乏力，应该去哪个科室就诊？请详细说明理由。';
let home: string;
let model: string;
let host: EngineHost;
let tok: LoadedTokenizer;

/** A question of about `n` sentences (roughly 50 tokens each), numbered. */
const question = (i: number, n = 2) => `${i}: ${SENTENCE.repeat(n)}`;

beforeAll(async () => {
  home = tempHome('llmt-ctx-');
  model = ensureDemoModel(home);
  tok = await loadTokenizer(model);
  host = new EngineHost();
});

afterAll(async () => {
  tok?.dispose();
  await host?.dispose();
});

describe('the engine guards the context', () => {
  it('reports the context; refuses a prompt that fills it; ends an answer where the sequence reaches it', async () => {
    const m = await loadEngine().addon!.loadModel(model);
    try {
      expect(m.info()).toMatchObject({ context: CONTEXT, alibi: false });
      const ids = (n: number) => Array.from({ length: n }, (_, i) => 3 + (i % 200));
      await expect(m.generate(ids(CONTEXT), { max_new_tokens: 4 })).rejects.toMatchObject({
        code: 'BAD_INPUT',
        message: expect.stringContaining("generate: the prompt (512 tokens) fills the model's context (512 positions) and leaves no room for an answer: shorten it"),
      });
      await expect(m.generate(ids(2000), { max_new_tokens: 4 })).rejects.toThrow(/\(2000 tokens\) is longer than the model's context \(512 positions\)/);
      await expect(m.generateBatch([ids(10), ids(600)], { max_new_tokens: 4 })).rejects.toThrow(/prompt 1 \(600 tokens\) is longer than the model's context/);
      // 7 positions left: 7 tokens (no stop id), as many as max_new_tokens would allow only past the context
      const r = await m.generate(ids(CONTEXT - 7), { max_new_tokens: 50, stop_ids: [], do_sample: false });
      expect(r.ids).toHaveLength(7);
      // the model is fine afterwards
      expect((await m.generate(ids(5), { max_new_tokens: 3, stop_ids: [] })).ids).toHaveLength(3);
    } finally {
      m.free();
    }
  });

  it('through the engine host: a clear error, and the engine process lives on', async () => {
    const long = SENTENCE.repeat(15);
    expect(encodePrompt([{ role: 'user', content: long }], 'raw', tok).length).toBeGreaterThan(CONTEXT);
    await expect(host.generate({ model, prompt: long, params: { max_new_tokens: 4 } })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/longer than the model's context \(512 positions\)/) });
    const next = await host.generate({ model, prompt: '你好', params: { max_new_tokens: 2 } });
    expect(next.ids.length).toBeGreaterThan(0);
    expect(next.restarted).toBeNull();
  });
});

describe('a conversation fits the context', () => {
  it('the oldest whole rounds are left out, the fewest that make prompt + max_new_tokens fit', async () => {
    const turns: Turn[] = [{ role: 'system', content: '你是医生' }];
    for (let i = 1; i <= 6; i++) turns.push({ role: 'user', content: question(i) }, { role: 'assistant', content: `回答 ${i}：`.repeat(8) });
    turns.push({ role: 'user', content: question(7) });
    const maxNew = 100;
    const r = await host.generate({ model, messages: turns, params: { max_new_tokens: maxNew }, fitContext: true });
    const latest = (d: number) => encodePrompt([turns[0]!, ...turns.slice(1 + 2 * d)], 'raw', tok).length;
    expect(r).toMatchObject({ rounds: 6, context: CONTEXT });
    expect(r.dropped).toBeGreaterThan(0);
    expect(r.promptTokens).toBe(latest(r.dropped!));
    expect(r.promptTokens + maxNew).toBeLessThanOrEqual(CONTEXT);
    expect(latest(r.dropped! - 1) + maxNew).toBeGreaterThan(CONTEXT);
    // without the fit, the whole conversation is longer than the context: the engine refuses it
    expect(latest(0)).toBeGreaterThan(CONTEXT);
    await expect(host.generate({ model, messages: turns, params: { max_new_tokens: maxNew } })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  it('a max_new_tokens as large as the context keeps half of it for the history; a long question goes alone and its answer stops at the context', async () => {
    const turns: Turn[] = [];
    for (let i = 1; i <= 6; i++) turns.push({ role: 'user', content: question(i, 1) }, { role: 'assistant', content: `回答 ${i}：`.repeat(2) });
    turns.push({ role: 'user', content: question(7, 1) });
    const r = await host.generate({ model, messages: turns, params: { max_new_tokens: CONTEXT, do_sample: false }, fitContext: true });
    const latest = (d: number) => encodePrompt(turns.slice(2 * d), 'raw', tok).length;
    expect(r.dropped).toBeGreaterThan(0);
    expect(r.dropped).toBeLessThan(6); // not every earlier exchange: half the context stays for them
    expect(r.promptTokens).toBe(latest(r.dropped!));
    expect(r.promptTokens + CONTEXT / 2).toBeLessThanOrEqual(CONTEXT);
    expect(latest(r.dropped! - 1) + CONTEXT / 2).toBeGreaterThan(CONTEXT);
    expect(r.promptTokens + r.ids.length).toBeLessThanOrEqual(CONTEXT);
    // a question longer than half the context (but shorter than it): sent alone, answered up to the context
    let n = 1;
    while (encodePrompt([{ role: 'user', content: SENTENCE.repeat(n) }], 'raw', tok).length <= CONTEXT / 2) n++;
    const long = [...turns.slice(0, 4), { role: 'user' as const, content: SENTENCE.repeat(n) }];
    const alone = encodePrompt(long.slice(4), 'raw', tok).length;
    expect(alone).toBeGreaterThan(CONTEXT / 2);
    expect(alone).toBeLessThan(CONTEXT);
    const a = await host.generate({ model, messages: long, params: { max_new_tokens: 400, do_sample: false }, fitContext: true });
    expect(a).toMatchObject({ dropped: 2, rounds: 2, promptTokens: alone });
    expect(a.promptTokens + a.ids.length).toBeLessThanOrEqual(CONTEXT);
  });

  it('a question that fills the context by itself: BAD_INPUT with a hint, not a crash nor a nonsense answer', async () => {
    const huge = await host.generate({ model, messages: [{ role: 'user', content: SENTENCE.repeat(20) }], params: { max_new_tokens: 16 }, fitContext: true }).catch((e: unknown) => e);
    expect(huge).toMatchObject({ code: 'BAD_INPUT', reason: 'PROMPT_TOO_LONG', hint: "Shorten the message: the model's context holds 512 tokens, prompt and answer together." });
    expect((huge as Error).message).toMatch(/^the message does not fit the model's context of 512 tokens: without any earlier message its prompt is \d+ tokens, which leaves no room for an answer$/);
  });
});

describe('llms-train chat', () => {
  it('says in one line when older messages are left out; refuses a message too long with a hint and goes on', async () => {
    const chatHome = tempHome('llmt-ctx-cli-');
    const proc = spawn(process.execPath, [CLI, 'chat', '--model', model, '--system', '你是医生', '--save', '--max_new_tokens', '100'], {
      env: { ...process.env, LLMS_TRAIN_HOME: chatHome },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    proc.stdin.end([question(1), question(2), question(3), question(4), SENTENCE.repeat(20), '你好', '/exit', ''].join('\n'));
    const code = await new Promise<number | null>((res) => proc.once('exit', res));
    expect(code, stderr).toBe(0);
    expect(stderr).toMatch(/^\(older messages left out, \d+ of \d+ earlier exchanges: the conversation no longer fits the model's context of 512 tokens with max_new_tokens\)$/m);
    expect(stderr).toContain("llms-train: the message does not fit the model's context of 512 tokens: without any earlier message its prompt is ");
    expect(stderr).toContain("hint: Shorten the message: the model's context holds 512 tokens, prompt and answer together.");
    const store = Store.open(path.join(chatHome, 'llms-train.db'));
    try {
      const [s] = store.chat.listSessions();
      const msgs = store.chat.messages(s!.id);
      // the refused message is not kept; the one after it is answered
      expect(msgs.filter((m) => m.role === 'user').map((m) => m.content)).toEqual([question(1), question(2), question(3), question(4), '你好']);
      const metas = msgs.filter((m) => m.role === 'assistant').map((m) => m.meta as { promptTokens: number; dropped?: number; rounds?: number });
      expect(metas).toHaveLength(5);
      for (const m of metas) expect(m.promptTokens + 100).toBeLessThanOrEqual(CONTEXT);
      expect(metas.some((m) => (m.dropped ?? 0) > 0)).toBe(true);
      expect(stderr.match(/older messages left out/g)?.length).toBe(metas.filter((m) => m.dropped).length);
    } finally {
      store.close();
    }
  }, 60_000);
});

describe('the API (sendChat)', () => {
  let app: Served;
  afterAll(async () => {
    await app?.stop();
  });

  it('the answer’s meta says what was left out; a message too long is refused (400) with a hint and not kept', async () => {
    const apiHome = tempHome('llmt-ctx-api-');
    const m = ensureDemoModel(apiHome);
    app = await startCli(['serve', '--port', '0'], { home: apiHome });
    const s = await callApi<{ id: number }>(app, 'createChatSession', { model: m, system: '你是医生', params: { max_new_tokens: 100 } });
    const metas: { promptTokens: number; dropped?: number; rounds?: number; context?: number }[] = [];
    for (let i = 1; i <= 4; i++) {
      const r = await callApi<{ assistant: { meta: (typeof metas)[number] }; answer: { promptTokens: number } }>(app, 'sendChat', { id: s.id, text: question(i) });
      expect(r.answer.promptTokens + 100).toBeLessThanOrEqual(CONTEXT);
      metas.push(r.assistant.meta);
    }
    const later = metas.find((x) => x.dropped);
    expect(later).toMatchObject({ dropped: expect.any(Number), rounds: expect.any(Number), context: CONTEXT });
    const bad = await post(app.origin, 'sendChat', { id: s.id, text: question(5, 20) }, { 'X-LLMT-Token': app.token });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/does not fit the model's context of 512 tokens/), hint: expect.stringMatching(/^Shorten the message/) });
    const after = await callApi<{ messages: { role: string }[] }>(app, 'getChatSession', { id: s.id });
    expect(after.messages).toHaveLength(8);
  }, 60_000);
});
