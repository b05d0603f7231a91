// formats.ts — dataset formats: detection from the first records' fields (with an override), and each
// record turned into one normalised Sample (a conversation of user/assistant turns, or plain text), or into a
// precise reason why it cannot be. Formats: PromptCBLUE, prompt/response/history columns (the seed's flags),
// Alpaca (with an optional "history" of earlier rounds), ShareGPT, plain text.
export type Format = 'promptcblue' | 'columns' | 'alpaca' | 'sharegpt' | 'text';
export const FORMATS: readonly Format[] = ['promptcblue', 'columns', 'alpaca', 'sharegpt', 'text'];

export interface Turn {
  role: 'system' | 'user' | 'assistant';
  content: string;
  /** false: an assistant turn kept as context but not trained (a message's `"weight": 0`, as Axolotl and
   *  FastChat read it) */
  train?: boolean;
}

/** `multiTurn`: train on every assistant turn (ShareGPT); otherwise only the last answer is trained. */
export type Sample = { kind: 'chat'; turns: Turn[]; type?: string; multiTurn?: boolean } | { kind: 'text'; text: string };

export interface ColumnOptions {
  promptColumn?: string;
  responseColumn?: string;
  historyColumn?: string;
}

type Obj = Record<string, unknown>;

/** A list field's value: a list, or (CSV/TSV cells hold text) a string that starts as a JSON list. */
function listish(v: unknown): boolean {
  return Array.isArray(v) || (typeof v === 'string' && v.trimStart().startsWith('['));
}

/** Guesses the format from one record's fields; null when nothing fits. */
export function detectFormat(rec: Obj, cols: ColumnOptions = {}): Format | null {
  if (cols.promptColumn || cols.responseColumn) return 'columns';
  if (listish(rec.conversations) || listish(rec.messages)) return 'sharegpt';
  // TRL's conversational prompt-completion: {"prompt": [messages], "completion": [messages]}
  if (Array.isArray(rec.prompt) && Array.isArray(rec.completion)) return 'sharegpt';
  if ('instruction' in rec && 'output' in rec) return 'alpaca';
  if ('input' in rec && 'target' in rec) return 'promptcblue';
  // {"prompt", "response"}, and TRL's standard prompt-completion {"prompt", "completion"}
  if ('prompt' in rec && ('response' in rec || 'completion' in rec)) return 'columns';
  if (typeof rec.text === 'string' && Object.keys(rec).length <= 3) return 'text';
  return null;
}

/** Names of the formats in messages. */
export const FORMAT_NAMES: Record<Format, string> = {
  promptcblue: 'PromptCBLUE {"input", "target"}',
  columns: 'prompt/response columns',
  alpaca: 'Alpaca {"instruction", "output"}',
  sharegpt: 'ShareGPT / messages',
  text: 'plain text {"text"}',
};

export const FORMAT_HINT =
  'expected one of: PromptCBLUE {"input", "target"}, Alpaca {"instruction", "input", "output"}, ShareGPT {"conversations": [{"from", "value"}]} or {"messages": [{"role", "content"}]}, {"prompt", "response"} / {"prompt", "completion"}, {"text"}, or name your columns with --prompt_column/--response_column';

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

/** The value of a list field: a list, or a JSON list held as text (a CSV/TSV cell); null when absent, null or
 *  an empty string. */
function listValue(rec: Obj, key: string, what: string): unknown[] | null {
  const v = rec[key];
  if (v == null || (typeof v === 'string' && !v.trim())) return null; // an empty CSV/TSV cell: none
  if (Array.isArray(v)) return v;
  if (typeof v === 'string' && v.trimStart().startsWith('[')) {
    try {
      const parsed = JSON.parse(v) as unknown;
      if (Array.isArray(parsed)) return parsed;
    } catch (err) {
      throw new Error(`column "${key}" holds text that is not a JSON list (${(err as Error).message}); ${what} must be JSON (double quotes, not Python's repr)`);
    }
  }
  const got = typeof v === 'string' ? 'a string' : typeof v === 'object' ? 'an object' : typeof v;
  throw new Error(`column "${key}" must be ${what}, not ${got}`);
}

/**
 * The history column of a record: earlier rounds as user/assistant turns, in order. The column holds a list of
 * [query, response] pairs of strings (the seed's --history_column, and the LLaMA-Factory / BELLE Alpaca layout
 * `"history": [["q1", "a1"], ["q2", "a2"]]`; in a CSV/TSV cell, that list as JSON text); absent, null or []
 * means no earlier rounds. `column` defaults to none; the Alpaca format reads "history" unless told otherwise.
 */
export function historyTurns(rec: Obj, column: string | undefined): Turn[] {
  if (!column) return [];
  const h = listValue(rec, column, 'a list of [question, answer] pairs');
  if (!h) return [];
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

/** The response column of a columns-format record: --response_column, else "response", or TRL's "completion"
 *  in a record that has that and no "response". */
export function responseColumnOf(rec: Obj, cols: ColumnOptions = {}): string {
  return cols.responseColumn ?? (!('response' in rec) && 'completion' in rec ? 'completion' : 'response');
}

/** A record's "system" field (Alpaca and ShareGPT, as LLaMA-Factory reads them): the system prompt, null when
 *  absent, null or empty. */
function systemField(rec: Obj): string | null {
  const v = rec.system;
  if (v == null) return null;
  if (typeof v !== 'string') throw new Error(`column "system" must be a string (the system prompt), not ${Array.isArray(v) ? 'an array' : typeof v}`);
  return v.trim() ? v : null;
}

/** Speakers of ShareGPT (`from`) and chat messages (`role`), by what they are. */
const SPEAKERS: Record<string, Turn['role'] | 'tool'> = {
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  assistant: 'assistant',
  chatgpt: 'assistant',
  bard: 'assistant',
  bing: 'assistant',
  model: 'assistant',
  system: 'system',
  // tool calling (LLaMA-Factory's function_call / observation, OpenAI's tool, Llama 3's ipython)
  function_call: 'tool',
  function: 'tool',
  observation: 'tool',
  tool: 'tool',
  tool_call: 'tool',
  tool_calls: 'tool',
  tool_response: 'tool',
  ipython: 'tool',
};

const TOOLS_UNSUPPORTED = 'tool calling is not supported (no template here lays out function calls and their results); leave such records out with --on-error skip';

function emptyTools(v: unknown): boolean {
  return v == null || (typeof v === 'string' && (!v.trim() || v.trim() === '[]')) || (Array.isArray(v) && !v.length);
}

/**
 * A conversation: ShareGPT `{"conversations": [{"from", "value"}]}`, chat messages `{"messages": [{"role",
 * "content"}]}` (OpenAI / TRL / LLaMA-Factory's OpenAI layout), or TRL's conversational prompt-completion
 * `{"prompt": [messages], "completion": [messages]}`. An optional system turn comes first — a first message
 * from "system", or the record's "system" field (LLaMA-Factory); an empty one is no system prompt. Then user
 * and assistant turns alternate, starting with the user and ending with the assistant. Every assistant turn
 * is trained (prompt-completion: the completion only).
 */
function conversation(rec: Obj): Sample {
  let key: string;
  let list: unknown[];
  let trainFrom = -1; // prompt-completion: index of the first completion message
  if (Array.isArray(rec.prompt) && Array.isArray(rec.completion) && !('conversations' in rec) && !('messages' in rec)) {
    key = 'prompt';
    list = [...(rec.prompt as unknown[]), ...(rec.completion as unknown[])];
    trainFrom = (rec.prompt as unknown[]).length;
  } else {
    // both (SlimOrca's exports carry the same conversation twice): "conversations", LLaMA-Factory's default
    key = rec.conversations != null ? 'conversations' : 'messages';
    list = listValue(rec, key, 'a list of messages') ?? [];
  }
  if (!list.length) throw new Error(`"${key}" must be a non-empty list`);
  if (!emptyTools(rec.tools)) throw new Error(`the record has tool descriptions ("tools"): ${TOOLS_UNSUPPORTED}`);
  const where = (i: number) => (trainFrom < 0 ? `${key}[${i}]` : i < trainFrom ? `prompt[${i}]` : `completion[${i - trainFrom}]`);
  let system = systemField(rec);
  const turns: (Turn & { at: number })[] = [];
  list.forEach((m, i) => {
    if (!m || typeof m !== 'object' || Array.isArray(m)) throw new Error(`${where(i)} must be an object with "from" and "value" (or "role" and "content")`);
    const o = m as Obj;
    const from = typeof o.from === 'string' ? o.from : typeof o.role === 'string' ? o.role : null;
    if (from === null) throw new Error(`${where(i)} needs a string "from" (or "role"); ${fieldList(o, 'it')}`);
    const role = SPEAKERS[from.toLowerCase()];
    if (!role) throw new Error(`${where(i)}: unknown speaker "${from}" (human/user, gpt/assistant, system)`);
    if (role === 'tool' || (o.tool_calls != null && !emptyTools(o.tool_calls)) || o.function_call != null) throw new Error(`${where(i)}: "${from}" turns and tool calls: ${TOOLS_UNSUPPORTED}`);
    const raw = 'value' in o ? o.value : o.content;
    if (typeof raw !== 'string') {
      const got = raw === undefined ? 'missing' : raw === null ? 'null' : Array.isArray(raw) ? 'a list (content parts: only plain-text content is supported)' : typeof raw;
      throw new Error(`${where(i)} needs a string "value" (or "content"), not ${got}`);
    }
    if (role === 'system') {
      if (turns.length) throw new Error(`${where(i)}: a system message may only come first`);
      if (system !== null && raw.trim() && raw !== system) throw new Error(`${where(i)}: the record has both a "system" field and a different system message; keep one`);
      if (raw.trim()) system = raw;
      return; // an empty system message is no system prompt
    }
    // per-message loss weight (Axolotl / FastChat ShareGPT): 0 keeps an answer as context without training it
    const w = o.weight;
    if (w != null && w !== 0 && w !== 1) throw new Error(`${where(i)}: "weight" must be 0 or 1, not ${JSON.stringify(w)}`);
    turns.push({ role, content: raw, at: i, ...(w === 0 && role === 'assistant' ? { train: false } : {}) });
  });
  if (turns.length < 2) throw new Error('a conversation needs at least one user turn and one assistant turn');
  turns.forEach((t, i) => {
    const want = i % 2 === 0 ? 'user' : 'assistant';
    if (t.role !== want) throw new Error(`the conversation does not alternate: turn ${i + 1} is "${t.role}" where "${want}" was expected`);
  });
  if (turns.at(-1)!.role !== 'assistant') throw new Error('the conversation ends with a user turn (nothing to learn from)');
  for (const t of turns) if (!t.content.trim()) throw new Error(`${where(t.at)} is empty`);
  if (trainFrom >= 0) {
    const completion = turns.filter((t) => t.at >= trainFrom);
    if (completion.length !== 1) throw new Error(`"completion" must hold exactly one assistant message, not ${completion.length} turns`);
  }
  const out: Turn[] = [...(system !== null ? [{ role: 'system' as const, content: system }] : []), ...turns.map(({ at: _, ...t }) => t)];
  return { kind: 'chat', turns: out, ...(trainFrom < 0 ? { multiTurn: true } : {}) };
}

/** The system turn of an Alpaca record's "system" field, as a list of zero or one turn. */
function systemTurn(rec: Obj): Turn[] {
  const s = systemField(rec);
  return s !== null ? [{ role: 'system', content: s }] : [];
}

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
      const r = responseColumnOf(rec, cols);
      const turns = historyTurns(rec, historyColumnOf(format, cols));
      turns.push({ role: 'user', content: str(rec, p, 'the prompt column') }, { role: 'assistant', content: str(rec, r, 'the response column') });
      return { kind: 'chat', turns };
    }
    case 'alpaca': {
      const instruction = str(rec, 'instruction', 'Alpaca');
      const input = 'input' in rec && rec.input !== null ? str(rec, 'input', 'Alpaca', true) : '';
      const output = str(rec, 'output', 'Alpaca');
      // LLaMA-Factory's Alpaca converter: the system prompt, the history pairs as earlier user/assistant
      // rounds, then instruction + input / output
      const history = historyTurns(rec, historyColumnOf(format, cols));
      return { kind: 'chat', turns: [...systemTurn(rec), ...history, { role: 'user', content: input.trim() ? `${instruction}\n${input}` : instruction }, { role: 'assistant', content: output }] };
    }
    case 'sharegpt':
      return conversation(rec);
    case 'text': {
      return { kind: 'text', text: str(rec, 'text', 'plain text') };
    }
  }
}

/**
 * toSample, whose error also says when the record looks like another format than the file's: one file holds
 * one format (detected from its first usable record, or given with --format), so a record of another shape is
 * named as such rather than only as a missing column. `from` says where the file's format came from.
 */
export function sampleOf(rec: Obj, format: Format, cols: ColumnOptions, from: string): Sample {
  try {
    return toSample(rec, format, cols);
  } catch (err) {
    const other = cols.promptColumn || cols.responseColumn ? null : detectFormat(rec);
    if (!other || other === format) throw err;
    throw new Error(`${(err as Error).message} — this record looks like ${FORMAT_NAMES[other]}, but the file is read as ${FORMAT_NAMES[format]} (${from}); one file holds one format`);
  }
}
