// formats.ts — dataset formats: detection from the first records' fields (with an override), and each
// record turned into one normalised Sample (a conversation of user/assistant turns, or plain text), or into a
// precise reason why it cannot be. Formats: PromptCBLUE, prompt/response/history columns (the seed's flags),
// Alpaca (with an optional "history" of earlier rounds), ShareGPT, plain text.
export type Format = 'promptcblue' | 'columns' | 'alpaca' | 'sharegpt' | 'text';
export const FORMATS: readonly Format[] = ['promptcblue', 'columns', 'alpaca', 'sharegpt', 'text'];

export interface Turn {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** `multiTurn`: train on every assistant turn (ShareGPT); otherwise only the last answer is trained. */
export type Sample = { kind: 'chat'; turns: Turn[]; type?: string; multiTurn?: boolean } | { kind: 'text'; text: string };

export interface ColumnOptions {
  promptColumn?: string;
  responseColumn?: string;
  historyColumn?: string;
}

type Obj = Record<string, unknown>;

/** Guesses the format from one record's fields; null when nothing fits. */
export function detectFormat(rec: Obj, cols: ColumnOptions = {}): Format | null {
  if (cols.promptColumn || cols.responseColumn) return 'columns';
  if (Array.isArray(rec.conversations)) return 'sharegpt';
  if ('instruction' in rec && 'output' in rec) return 'alpaca';
  if ('input' in rec && 'target' in rec) return 'promptcblue';
  if ('prompt' in rec && 'response' in rec) return 'columns';
  if (typeof rec.text === 'string' && Object.keys(rec).length <= 3) return 'text';
  return null;
}

export const FORMAT_HINT =
  'expected one of: PromptCBLUE {"input", "target"}, Alpaca {"instruction", "input", "output"}, ShareGPT {"conversations": [{"from", "value"}]}, {"prompt", "response"}, {"text"}, or name your columns with --prompt_column/--response_column';

/** The record's fields for an error message ("the record has: a, b, c"), at most 20 names. */
export function fieldList(rec: Obj, who = 'the record'): string {
  const keys = Object.keys(rec);
  if (!keys.length) return `${who} has no fields`;
  const shown = keys.slice(0, 20).map((k) => JSON.stringify(k)).join(', ');
  return `${who} has: ${shown}${keys.length > 20 ? `, … (${keys.length} fields)` : ''}`;
}

function str(rec: Obj, key: string, what: string, allowEmpty = false): string {
  if (!(key in rec)) throw new Error(`missing column "${key}"${what ? ` (${what})` : ''}; ${fieldList(rec)}`);
  const v = rec[key];
  if (typeof v !== 'string') throw new Error(`column "${key}" must be a string, not ${v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v}`);
  if (!allowEmpty && !v.trim()) throw new Error(`column "${key}" is empty`);
  return v;
}

/** The formats whose records can carry earlier rounds in a history column (ShareGPT keeps them in its
 *  conversation; plain text has none). */
export const HISTORY_FORMATS: readonly Format[] = ['promptcblue', 'columns', 'alpaca'];

/**
 * The history column of a record: earlier rounds as user/assistant turns, in order. The column holds a list of
 * [query, response] pairs of strings (the seed's --history_column, and the LLaMA-Factory / BELLE Alpaca layout
 * `"history": [["q1", "a1"], ["q2", "a2"]]`); absent, null or [] means no earlier rounds. `column` defaults to
 * none; the Alpaca format reads "history" unless told otherwise.
 */
export function historyTurns(rec: Obj, column: string | undefined): Turn[] {
  if (!column || rec[column] == null) return [];
  const h = rec[column];
  if (!Array.isArray(h)) {
    const got = typeof h === 'string' ? 'a string' : typeof h === 'object' ? 'an object' : typeof h;
    throw new Error(`column "${column}" must be a list of [question, answer] pairs, not ${got}`);
  }
  const turns: Turn[] = [];
  h.forEach((pair, i) => {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') {
      throw new Error(`"${column}"[${i}] must be a [question, answer] pair of strings, not ${JSON.stringify(pair)?.slice(0, 80) ?? String(pair)}`);
    }
    turns.push({ role: 'user', content: pair[0] }, { role: 'assistant', content: pair[1] });
  });
  return turns;
}

/** The history column a format reads: --history_column, else "history" for Alpaca records. */
export function historyColumnOf(format: Format, cols: ColumnOptions = {}): string | undefined {
  if (!HISTORY_FORMATS.includes(format)) return undefined;
  return cols.historyColumn ?? (format === 'alpaca' ? 'history' : undefined);
}

const SHAREGPT_ROLES: Record<string, Turn['role']> = {
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  assistant: 'assistant',
  chatgpt: 'assistant',
  bard: 'assistant',
  bing: 'assistant',
  system: 'system',
};

/** One record → one Sample, or throws an Error whose message says exactly what is wrong. */
export function toSample(rec: Obj, format: Format, cols: ColumnOptions = {}): Sample {
  switch (format) {
    case 'promptcblue': {
      const input = str(rec, 'input', 'the prompt');
      const target = str(rec, 'target', 'the answer');
      const type = typeof rec.type === 'string' ? rec.type : undefined;
      const history = historyTurns(rec, historyColumnOf(format, cols));
      return { kind: 'chat', turns: [...history, { role: 'user', content: input }, { role: 'assistant', content: target }], ...(type ? { type } : {}) };
    }
    case 'columns': {
      const p = cols.promptColumn ?? 'prompt';
      const r = cols.responseColumn ?? 'response';
      const turns = historyTurns(rec, historyColumnOf(format, cols));
      turns.push({ role: 'user', content: str(rec, p, 'the prompt column') }, { role: 'assistant', content: str(rec, r, 'the response column') });
      return { kind: 'chat', turns };
    }
    case 'alpaca': {
      const instruction = str(rec, 'instruction', 'Alpaca');
      const input = 'input' in rec ? str(rec, 'input', 'Alpaca', true) : '';
      const output = str(rec, 'output', 'Alpaca');
      // LLaMA-Factory's Alpaca converter: the history pairs are earlier user/assistant rounds, then
      // instruction + input / output
      const history = historyTurns(rec, historyColumnOf(format, cols));
      return { kind: 'chat', turns: [...history, { role: 'user', content: input.trim() ? `${instruction}\n${input}` : instruction }, { role: 'assistant', content: output }] };
    }
    case 'sharegpt': {
      const conv = rec.conversations;
      if (!Array.isArray(conv) || conv.length === 0) throw new Error('"conversations" must be a non-empty list');
      const turns: Turn[] = [];
      conv.forEach((m, i) => {
        if (!m || typeof m !== 'object') throw new Error(`conversations[${i}] must be an object with "from" and "value"`);
        const o = m as Obj;
        const from = typeof o.from === 'string' ? o.from : typeof o.role === 'string' ? o.role : null;
        const value = typeof o.value === 'string' ? o.value : typeof o.content === 'string' ? o.content : null;
        if (from === null || value === null) throw new Error(`conversations[${i}] needs string "from" and "value"`);
        const role = SHAREGPT_ROLES[from.toLowerCase()];
        if (!role) throw new Error(`conversations[${i}]: unknown speaker "${from}" (human/user, gpt/assistant, system)`);
        if (role === 'system' && i !== 0) throw new Error(`conversations[${i}]: a system message may only come first`);
        turns.push({ role, content: value });
      });
      const chat = turns[0]?.role === 'system' ? turns.slice(1) : turns;
      if (chat.length < 2) throw new Error('a conversation needs at least one user turn and one assistant turn');
      chat.forEach((t, i) => {
        const want = i % 2 === 0 ? 'user' : 'assistant';
        if (t.role !== want) throw new Error(`the conversation does not alternate: turn ${i + 1} is "${t.role}" where "${want}" was expected`);
      });
      if (chat.at(-1)!.role !== 'assistant') throw new Error('the conversation ends with a user turn (nothing to learn from)');
      for (const [i, t] of turns.entries()) if (!t.content.trim()) throw new Error(`conversations[${i}] is empty`);
      return { kind: 'chat', turns, multiTurn: true };
    }
    case 'text': {
      return { kind: 'text', text: str(rec, 'text', 'plain text') };
    }
  }
}
