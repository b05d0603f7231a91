// Chat within the model's context: the prompt is laid out with the oldest whole rounds left out until
// prompt + max_new_tokens fits (layoutPrompt's maxPromptTokens), by training's truncation rule (the system prompt
// kept, the question never cut); a question too long on its own is a PromptTooLongError, which the generator turns
// into a clear error with a hint; the chat service asks for the fit and keeps what was left out in the answer's meta.
import { describe, expect, it } from 'vitest';

import { ChatError, ChatService } from '../../src-main/core/chat/service';
import { droppedLine } from '../../src-main/cli/chat';
import type { ChatRenderer } from '../../src-main/core/data/chat-template';
import type { Turn } from '../../src-main/core/data/formats';
import { PromptTooLongError, TEMPLATES, encodePrompt, encodeSample, layoutPrompt } from '../../src-main/core/data/templates';
import { answerRoom, tooLong } from '../../src-main/core/engine/generator';
import { EngineHostError, type EngineHost } from '../../src-main/core/engine/host';
import { Store } from '../../src-main/core/store/store';
import { charTok } from '../helpers/char-tokenizer';

const system: Turn = { role: 'system', content: 'You are a doctor.' };
/** system, then `n` earlier rounds and a question */
function conv(n: number): Turn[] {
  const t: Turn[] = [system];
  for (let i = 1; i <= n; i++) t.push({ role: 'user', content: `question ${i} ${'x'.repeat(i * 3)}` }, { role: 'assistant', content: `answer ${i}` });
  t.push({ role: 'user', content: 'the latest question' });
  return t;
}
/** the conversation with its `d` oldest rounds left out (the system prompt kept) */
const without = (turns: Turn[], d: number) => [turns[0]!, ...turns.slice(1 + 2 * d)];

describe('layoutPrompt: the prompt fits maxPromptTokens by leaving out the oldest whole rounds', () => {
  const builtIn = TEMPLATES.filter((t) => t !== 'chat_template');
  it.each(builtIn)('%s: the fewest oldest rounds are left out, the system prompt stays, the question is never cut', (name) => {
    const turns = conv(4);
    const len = (d: number) => encodePrompt(without(turns, d), name, charTok).length;
    expect(layoutPrompt(turns, name, charTok)).toMatchObject({ dropped: 0, rounds: 4 });
    for (let d = 0; d <= 4; d++) {
      // exactly the prompt of the conversation's latest rounds when it just fits, one more round left out when not
      const fit = layoutPrompt(turns, name, charTok, { maxPromptTokens: len(d) });
      expect(fit.dropped).toBe(d);
      expect(fit.ids).toEqual(encodePrompt(without(turns, d), name, charTok));
      if (d < 4) expect(layoutPrompt(turns, name, charTok, { maxPromptTokens: len(d) - 1 }).dropped).toBeGreaterThan(d);
    }
    // the system prompt is in every prompt
    expect(charTok.decode(layoutPrompt(turns, name, charTok, { maxPromptTokens: len(4) }).ids)).toContain('You are a doctor.');
    // the question alone does not fit: an error with its length, nothing cut
    const e = (() => {
      try {
        layoutPrompt(turns, name, charTok, { maxPromptTokens: len(4) - 1 });
      } catch (err) {
        return err;
      }
      return null;
    })();
    expect(e).toBeInstanceOf(PromptTooLongError);
    expect(e).toMatchObject({ tokens: len(4), limit: len(4) - 1 });
  });

  it('is the rule of training: the prompt equals what single-answer training keeps of the same conversation', () => {
    // raw: the prompt is the layout then [eos, bos]; max_source_length m keeps m − 1 layout ids, a prompt of m + 1
    const turns = conv(5);
    for (let cap = 40; cap <= 200; cap += 7) {
      let fit: number[];
      try {
        fit = layoutPrompt(turns, 'raw', charTok, { maxPromptTokens: cap }).ids;
      } catch (err) {
        expect(err).toBeInstanceOf(PromptTooLongError);
        continue;
      }
      expect(fit).toEqual(encodePrompt(turns, 'raw', charTok, { maxSourceLength: cap - 1 }));
      const trained = encodeSample({ kind: 'chat', turns: [...turns, { role: 'assistant', content: 'ok' }] }, 'raw', charTok, { maxSourceLength: cap - 1, maxTargetLength: 16 });
      expect(trained.ids.slice(0, fit.length)).toEqual(fit);
    }
  });

  it('together with maxSourceLength: the stricter of the two decides', () => {
    const turns = conv(4);
    const len = (d: number) => encodePrompt(without(turns, d), 'alpaca', charTok).length;
    let checked = 0;
    for (const ms of [len(1), len(2), len(3)])
      for (const cap of [len(1), len(2), len(3)]) {
        const a = layoutPrompt(turns, 'alpaca', charTok, { maxSourceLength: ms });
        const b = layoutPrompt(turns, 'alpaca', charTok, { maxPromptTokens: cap });
        const both = layoutPrompt(turns, 'alpaca', charTok, { maxSourceLength: ms, maxPromptTokens: cap });
        expect(both.dropped).toBe(Math.max(a.dropped, b.dropped));
        checked += a.dropped !== b.dropped ? 1 : 0;
      }
    expect(checked).toBeGreaterThan(0);
  });

  it('chat_template: whole rounds left out by the rendered prompt length', () => {
    const r: ChatRenderer = { id: 'plain', render: (msgs, gen) => msgs.map((x) => `<${x.role}>${x.content}</${x.role}>`).join('') + (gen ? '<assistant>' : '') };
    const turns = conv(3);
    const len = (d: number) => encodePrompt(without(turns, d), 'chat_template', charTok, { chatTemplate: r }).length;
    const fit = layoutPrompt(turns, 'chat_template', charTok, { chatTemplate: r, maxPromptTokens: len(2) });
    expect(fit).toMatchObject({ dropped: 2, rounds: 3 });
    expect(charTok.decode(fit.ids)).toBe('<system>You are a doctor.</system><user>question 3 xxxxxxxxx</user><assistant>answer 3</assistant><user>the latest question</user><assistant>');
    expect(() => layoutPrompt(turns, 'chat_template', charTok, { chatTemplate: r, maxPromptTokens: len(3) - 1 })).toThrow(PromptTooLongError);
  });
});

describe('a question that does not fit even alone', () => {
  it('says the numbers and hints to shorten the message', () => {
    const e = tooLong(600, 512);
    expect(e).toMatchObject({ code: 'BAD_INPUT', reason: 'PROMPT_TOO_LONG' });
    expect(e.message).toBe("the message does not fit the model's context of 512 tokens: without any earlier message its prompt is 600 tokens, which leaves no room for an answer");
    expect(e.hint).toBe("Shorten the message: the model's context holds 512 tokens, prompt and answer together.");
  });

  it('the answer keeps max_new_tokens of room, at most half the context, so a large max_new_tokens never costs the whole history', () => {
    expect(answerRoom(100, 512)).toBe(100);
    expect(answerRoom(512, 512)).toBe(256);
    expect(answerRoom(4096, 2048)).toBe(1024);
    expect(answerRoom(0, 512)).toBe(1);
  });

  it('the terminal chat line for left-out messages', () => {
    expect(droppedLine(1, 3, 512)).toBe("(older messages left out, 1 of 3 earlier exchanges: the conversation no longer fits the model's context of 512 tokens with max_new_tokens)");
    expect(droppedLine(2, 5)).toBe("(older messages left out, 2 of 5 earlier exchanges: the conversation no longer fits the model's context with max_new_tokens)");
  });
});

describe('ChatService within the context', () => {
  it('asks the engine host to fit the context, and keeps what was left out in the answer’s meta', async () => {
    const store = Store.open(':memory:');
    const requests: unknown[] = [];
    let dropped = 0;
    const host = {
      generate: async (req: unknown) => {
        requests.push(req);
        return { text: 'ok', ids: [7, 2], promptTokens: 30, finish: 'stop', seconds: 0.1, device: 'cpu', restarted: null, ...(dropped ? { dropped, rounds: 2, context: 64 } : { dropped: 0, rounds: 0, context: 64 }) };
      },
    } as unknown as EngineHost;
    const chat = new ChatService(store, host);
    const s = chat.createSession({ model: '/m', system: 'S' });
    const first = await chat.send(s.id, 'one');
    expect(requests[0]).toMatchObject({ fitContext: true, messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'one' }] });
    expect(first.assistant.meta).not.toHaveProperty('dropped');
    dropped = 1;
    const third = await chat.send(s.id, 'two');
    expect(third.assistant.meta).toMatchObject({ dropped: 1, rounds: 2, context: 64 });
    // stored: the window shows it when the session is opened again
    expect(chat.getSession(s.id)!.messages.at(-1)!.meta).toMatchObject({ dropped: 1 });
    store.close();
  });

  it('a message too long even alone: the error keeps its hint and reason, and the message is not kept', async () => {
    const store = Store.open(':memory:');
    const e = tooLong(90, 64);
    const host = {
      generate: async () => {
        throw new EngineHostError(e.message, e.code, e.hint, undefined, e.reason);
      },
    } as unknown as EngineHost;
    const chat = new ChatService(store, host);
    const s = chat.createSession({ model: '/m' });
    const err = await chat.send(s.id, 'long').catch((x: unknown) => x);
    expect(err).toBeInstanceOf(ChatError);
    expect(err).toMatchObject({ code: 'BAD_INPUT', reason: 'PROMPT_TOO_LONG', hint: expect.stringMatching(/Shorten the message/) });
    expect(chat.getSession(s.id)!.messages).toHaveLength(0);
    store.close();
  });
});
