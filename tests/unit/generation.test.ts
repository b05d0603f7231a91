// Generation's pure parts: the prompt laid out exactly as training lays out a sample up to its answer (every
// template, history, system prompt), the streaming decoder (only complete UTF-8 characters, deltas adding up to
// the whole text), chat conversations and sampling parameters, the chat sessions in SQLite.
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { ChatError, ChatService, conversation, samplingParams } from '../../src-main/core/chat/service';
import type { ChatRenderer } from '../../src-main/core/data/chat-template';
import type { Sample } from '../../src-main/core/data/formats';
import { TEMPLATES, answerEndIds, encodePrompt, encodeSample } from '../../src-main/core/data/templates';
import { loadTokenizer } from '../../src-main/core/data/tokenizer/index';
import { SEED_SAMPLING, requestTurns, stopIds } from '../../src-main/core/engine/generator';
import type { EngineHost } from '../../src-main/core/engine/host';
import { StreamDecoder } from '../../src-main/core/engine/stream-decoder';
import { Store } from '../../src-main/core/store/store';
import { charTok } from '../helpers/char-tokenizer';

const enc = charTok.encode;
const opt = { maxSourceLength: 64, maxTargetLength: 32 };

describe('encodePrompt: the training layout up to the answer', () => {
  const builtIn = TEMPLATES.filter((t) => t !== 'chat_template');
  it.each(builtIn)('%s: a single turn is the trained sample without its answer', (name) => {
    const sample: Sample = { kind: 'chat', turns: [{ role: 'user', content: '患者有高血压吗？' }, { role: 'assistant', content: '有' }] };
    const full = encodeSample(sample, name, charTok, opt).ids;
    const end = answerEndIds(name, charTok);
    const prompt = encodePrompt(sample.turns.slice(0, 1), name, charTok, { maxSourceLength: 64 });
    expect(prompt).toEqual(full.slice(0, full.length - enc('有').length - end.length));
  });

  it.each(builtIn)('%s: earlier rounds as training lays them out, single answer with history or multi-turn alike', (name) => {
    const turns = [
      { role: 'user' as const, content: 'q1' },
      { role: 'assistant' as const, content: 'a1' },
      { role: 'user' as const, content: 'q2' },
    ];
    const prompt = encodePrompt(turns, name, charTok, { maxSourceLength: 512 });
    for (const multiTurn of [false, true]) {
      const sample: Sample = { kind: 'chat', turns: [...turns, { role: 'assistant', content: 'a2' }], multiTurn };
      const full = encodeSample(sample, name, charTok, { maxSourceLength: 512, maxTargetLength: 32 }).ids;
      expect(prompt).toEqual(full.slice(0, full.length - 2 - answerEndIds(name, charTok).length));
    }
  });

  it('raw (the seed layout): prompt, then eos and bos; an earlier round closed by eos; the system prompt opens the text', () => {
    expect(encodePrompt([{ role: 'user', content: 'hi' }], 'raw', charTok)).toEqual([...enc('hi'), 2, 1]);
    const p = encodePrompt(
      [
        { role: 'system', content: 'S' },
        { role: 'user', content: 'a' },
        { role: 'assistant', content: 'b' },
        { role: 'user', content: 'c' },
      ],
      'raw',
      charTok,
    );
    expect(charTok.decode(p)).toBe('S\na<2><1>b<2>c<2><1>');
    expect(charTok.decode(encodePrompt([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'x' }], 'vicuna', charTok))).toBe('<1>Be brief. USER: x ASSISTANT:');
  });

  it('cuts the prompt text to max_source_length − 1 as training does', () => {
    expect(encodePrompt([{ role: 'user', content: 'abcdef' }], 'raw', charTok, { maxSourceLength: 4 })).toEqual([...enc('abc'), 2, 1]);
  });

  it("chat_template: the model's own template with the generation prompt", () => {
    const r: ChatRenderer = { id: 't', render: (m, gen) => m.map((x) => `<${x.role}>${x.content}`).join('') + (gen ? '<assistant>' : '') };
    expect(charTok.decode(encodePrompt([{ role: 'user', content: 'hi' }], 'chat_template', charTok, { chatTemplate: r }))).toBe('<user>hi<assistant>');
    expect(() => encodePrompt([{ role: 'user', content: 'hi' }], 'chat_template', charTok)).toThrow(/needs the model's chat_template/);
  });

  it('refuses conversations that do not end with a user turn or do not alternate', () => {
    expect(() => encodePrompt([{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }], 'raw', charTok)).toThrow(/end with a user turn/);
    expect(() => encodePrompt([{ role: 'assistant', content: 'a' }, { role: 'user', content: 'b' }], 'raw', charTok)).toThrow(/does not alternate/);
    expect(() => encodePrompt([], 'raw', charTok)).toThrow(/end with a user turn/);
  });
});

describe('stop ids', () => {
  // a Llama-3-Instruct-like tokenizer: eos <|end_of_text|> (7), generation_config.json eos_token_id [7, 9] (<|eot_id|>)
  const llama3 = { ...charTok, eosId: 7, eosIds: [7, 9] };
  it('every eos id of a list stops, whatever the template, with the model\'s own and the template\'s answer end', () => {
    expect(stopIds([7, 9], 'chat_template', llama3)).toEqual([7, 9]);
    // an engine that reports fewer ids (or another model's): the tokenizer folder's list still counts whole
    expect(stopIds([7], 'chat_template', llama3)).toEqual([7, 9]);
    expect(stopIds([2], 'raw', llama3)).toEqual([2, 7, 9]);
    expect(answerEndIds('chat_template', llama3)).toEqual([7, 9]);
  });
});

describe('StreamDecoder: complete characters only', () => {
  // ids are UTF-8 bytes; decoding replaces incomplete sequences with U+FFFD, as byte-level tokenizers do
  const byteDecode = (ids: number[]) => Buffer.from(ids).toString('utf8');
  it('holds the bytes of a character until it is complete', () => {
    const d = new StreamDecoder(byteDecode);
    const bytes = [...Buffer.from('高a')];
    expect(bytes.map((b) => d.push(b))).toEqual(['', '', '高', 'a']);
    expect(d.flush()).toBe('');
    expect(d.text()).toBe('高a');
  });
  it('skips special ids and flushes an invalid sequence at the end', () => {
    const d = new StreamDecoder(byteDecode, new Set([0]));
    expect([0x61, 0, 0xe9, 0xab].map((b) => d.push(b))).toEqual(['a', '', '', '']);
    expect(d.flush()).toBe('\uFFFD');
  });
  it('on the demo tokenizer (byte-level BPE), Chinese, emoji and supplementary characters stream whole', async () => {
    const tok = await loadTokenizer(path.resolve(__dirname, '..', '..', 'resources', 'demo'));
    try {
      const text = '鑫𠀀é高血压😀 ok，好的';
      const ids = tok.encode(text);
      const d = new StreamDecoder((x) => tok.decode(x));
      const deltas = ids.map((i) => d.push(i));
      deltas.push(d.flush());
      expect(deltas.join('')).toBe(text);
      expect(deltas.some((x) => x.includes('\uFFFD'))).toBe(false);
      expect(deltas.filter((x) => x === '').length).toBeGreaterThan(3); // characters spanning several tokens
      for (const x of deltas) expect([...x].every((c) => text.includes(c))).toBe(true);
    } finally {
      tok.dispose();
    }
  });
});

describe('chat conversations and sampling', () => {
  it('puts the system prompt first and keeps user/assistant turns', () => {
    expect(conversation('S', [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'system', content: 'x' }, { role: 'user', content: 'c' }])).toEqual([
      { role: 'system', content: 'S' },
      { role: 'user', content: 'a' },
      { role: 'assistant', content: 'b' },
      { role: 'user', content: 'c' },
    ]);
    expect(conversation(null, [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }])).toEqual([{ role: 'user', content: 'b' }]);
    expect(requestTurns({ prompt: 'q', system: 'S' })).toEqual([{ role: 'system', content: 'S' }, { role: 'user', content: 'q' }]);
    expect(() => requestTurns({})).toThrow(/nothing to answer/);
  });
  it("the seed's sampling defaults, checked ranges", () => {
    expect(samplingParams()).toEqual({ max_new_tokens: 512, do_sample: true, temperature: 0.001, top_k: 30, top_p: 0.85, repetition_penalty: 1.2, seed: 0 });
    expect(samplingParams({ top_p: 0.5 }).top_p).toBe(0.5);
    expect(() => samplingParams({ top_p: 0 })).toThrow(ChatError);
    expect(() => samplingParams({ max_new_tokens: 0 })).toThrow(/max_new_tokens/);
    expect(() => samplingParams({ temperature: -1 })).toThrow(/temperature/);
    expect(SEED_SAMPLING.top_k).toBe(30);
  });
});

describe('ChatService sessions in SQLite', () => {
  const fakeHost = (reply: string | Error) =>
    ({
      generate: async (req: { messages: unknown }, onDelta?: (t: string) => void) => {
        if (reply instanceof Error) throw reply;
        seen.push(req.messages);
        for (const c of reply) onDelta?.(c);
        return { text: reply, ids: [...reply].map(() => 5), promptTokens: 7, finish: 'stop', seconds: 0.1, restarted: null };
      },
      stop: () => {},
    }) as unknown as EngineHost;
  const seen: unknown[] = [];

  it('creates, lists, sends (history + system prompt), updates and deletes', async () => {
    const store = Store.open(':memory:');
    const chat = new ChatService(store, fakeHost('好的'));
    const s = chat.createSession({ model: '/m', adapter: '/a', template: 'raw', system: 'S', params: { top_p: 0.5 } });
    expect(s).toMatchObject({ title: 'New chat', model: '/m', adapter: '/a', template: 'raw', system: 'S' });
    expect(s.params.top_p).toBe(0.5);
    expect(s.params.temperature).toBe(0.001);
    let streamed = '';
    const r = await chat.send(s.id, '你好', (d) => (streamed += d));
    expect(streamed).toBe('好的');
    expect(r.assistant).toMatchObject({ role: 'assistant', content: '好的', meta: { tokens: 2, promptTokens: 7, finish: 'stop' } });
    await chat.send(s.id, '再见');
    expect(seen.at(-1)).toEqual([
      { role: 'system', content: 'S' },
      { role: 'user', content: '你好' },
      { role: 'assistant', content: '好的' },
      { role: 'user', content: '再见' },
    ]);
    const got = chat.getSession(s.id)!;
    expect(got.title).toBe('你好');
    expect(got.messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant']);
    expect(chat.listSessions()).toEqual([expect.objectContaining({ id: s.id, messageCount: 4 })]);
    expect(chat.updateSession(s.id, { title: 'renamed', params: { temperature: 0.7 } })).toMatchObject({ title: 'renamed', params: { temperature: 0.7, top_p: 0.85 } });
    expect(() => chat.updateSession(s.id, { template: 'nope' as 'raw' })).toThrow(/unknown template/);
    expect(chat.clear(s.id)).toBe(4);
    expect(chat.deleteSession(s.id)).toBe(true);
    expect(chat.getSession(s.id)).toBeUndefined();
    store.close();
  });

  it('a failed answer removes the user message again and reports the engine error', async () => {
    const store = Store.open(':memory:');
    const err = Object.assign(new Error('the engine process stopped unexpectedly (signal SIGKILL)'), { code: 'ENGINE_CRASHED' });
    const { EngineHostError } = await import('../../src-main/core/engine/host');
    const chat = new ChatService(store, fakeHost(new EngineHostError(err.message, err.code)));
    const s = chat.createSession({ model: '/m' });
    await expect(chat.send(s.id, 'hi')).rejects.toMatchObject({ code: 'ENGINE_CRASHED' });
    expect(chat.getSession(s.id)!.messages).toEqual([]);
    await expect(chat.send(9999, 'hi')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(chat.send(s.id, '  ')).rejects.toThrow(/empty/);
    store.close();
  });
});
