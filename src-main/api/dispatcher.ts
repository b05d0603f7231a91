// dispatcher.ts — turns the contract plus one handler per method into a function both transports call:
// validate the request (field-level messages), run the handler, wrap the result or error in an envelope.
// Transports never call handlers directly, so validation and error shaping happen in exactly one place.
import type { z } from 'zod';

import {
  type Envelope,
  type EventName,
  type EventPayload,
  type FieldError,
  type MethodName,
  type ParsedReq,
  type Res,
  events,
  methodNames,
  methods,
} from './contract.js';
import { ApiError } from './errors.js';

export type Handlers = {
  [K in MethodName]: (req: ParsedReq<K>) => Promise<Res<K>> | Res<K>;
};

/** The names the UI and the CLI give request fields (RunSpec/CLI snake_case), where they differ from the API's. */
const FIELD_LABELS: Record<string, string> = {
  maxSourceLength: 'max_source_length',
  maxTargetLength: 'max_target_length',
  promptColumn: 'prompt_column',
  responseColumn: 'response_column',
  historyColumn: 'history_column',
  modelPath: 'model',
  checkpointPath: 'checkpoint',
  adapterOnly: 'adapter only',
  deleteFiles: 'delete files',
  ignoreEstimate: 'ignore estimate',
  experimentId: 'experiment',
  opId: 'operation id',
};

/** A field path as a user reads it: `params.max_new_tokens` → `max_new_tokens`, `maxSourceLength` → `max_source_length`. */
export function fieldLabel(p: string): string {
  if (p === '(body)') return 'the request';
  const parts = p.split('.').filter((x) => x !== 'params' && x !== 'spec');
  return parts.map((x) => (/^\d+$/.test(x) ? `#${Number(x) + 1}` : (Object.hasOwn(FIELD_LABELS, x) ? FIELD_LABELS[x]! : x))).join(' ') || p;
}

const TYPE_WORDS: Record<string, string> = { string: 'text', number: 'a number', int: 'a whole number', boolean: 'true or false', object: 'an object', array: 'a list', bigint: 'a whole number' };

function received(input: unknown): string {
  if (input === null) return 'null';
  if (input === undefined) return 'nothing';
  if (Array.isArray(input)) return 'a list';
  if (typeof input === 'number' && Number.isNaN(input)) return 'NaN';
  return typeof input === 'string' ? 'text' : typeof input === 'number' ? 'a number' : typeof input;
}

const num = (v: unknown) => (typeof v === 'number' || typeof v === 'bigint' ? (Number(v) >= Number.MAX_SAFE_INTEGER ? 'the largest safe integer (2^53 − 1)' : String(v)) : String(v));

/** A zod issue in plain words, without zod's "Too small: expected number to be >=2". */
function issueMessage(issue: z.core.$ZodIssue): string {
  const i = issue as z.core.$ZodIssue & { input?: unknown; expected?: string; minimum?: unknown; maximum?: unknown; inclusive?: boolean; origin?: string; keys?: string[]; values?: unknown[]; format?: string };
  switch (i.code) {
    case 'invalid_type':
    {
      // zod leaves the input out of its issues: what was received is in its message ("…, received null")
      const got = 'input' in i ? received(i.input) : (/received (\w+)/.exec(i.message)?.[1] ?? 'something else');
      return got === 'undefined' || got === 'nothing' ? 'is required' : `must be ${TYPE_WORDS[i.expected ?? ''] ?? i.expected} (got ${TYPE_WORDS[got] ?? got})`;
    }
    case 'too_small':
      if (i.origin === 'string') return Number(i.minimum) <= 1 ? 'must not be empty' : `must be at least ${num(i.minimum)} characters long`;
      if (i.origin === 'array' || i.origin === 'set') return `must have at least ${num(i.minimum)} item(s)`;
      return `must be ${i.inclusive === false ? 'greater than' : 'at least'} ${num(i.minimum)}`;
    case 'too_big':
      if (i.origin === 'string') return `must be at most ${num(i.maximum)} characters long`;
      if (i.origin === 'array' || i.origin === 'set') return `must have at most ${num(i.maximum)} item(s)`;
      return `must be ${i.inclusive === false ? 'less than' : 'at most'} ${num(i.maximum)}`;
    case 'unrecognized_keys':
      return `unknown field(s): ${(i.keys ?? []).map(fieldLabel).join(', ')}`;
    case 'invalid_value':
      return `must be one of ${(i.values ?? []).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_format':
      return i.format === 'regex' ? (i.message && !/^Invalid/.test(i.message) ? `must look like ${i.message}` : 'has the wrong form') : `must be a valid ${i.format}`;
    case 'not_multiple_of':
      return `must be a multiple of ${num((i as { divisor?: unknown }).divisor)}`;
    default:
      return i.message;
  }
}

/** Field-level errors from a zod error: `path` as the API names the field (for a UI to place it), `message` in words. */
export function fieldErrors(error: z.ZodError): FieldError[] {
  const all = error.issues.map((issue) => ({
    path: issue.path.length ? issue.path.map(String).join('.') : '(body)',
    message: issueMessage(issue),
  }));
  // an integer field's implicit "at most 2^53 − 1" says nothing beside the field's own limit
  return all.filter((f) => !/largest safe integer/.test(f.message) || !all.some((g) => g !== f && g.path === f.path));
}

/** A readable validation error: "Invalid request: max_source_length must be at least 2" (no internal method names;
 *  `what` only for a developer-facing log). The structured field list stays in `fields`. */
export function validationError(what: string | null, error: z.ZodError): ApiError {
  const fields = fieldErrors(error);
  const summary = fields.map((f) => (f.path === '(body)' ? f.message : `${fieldLabel(f.path)} ${f.message}`)).join('; ');
  return new ApiError('BAD_REQUEST', `${what ? `Invalid ${what}` : 'Invalid request'}: ${summary}`, { fields });
}

export class Dispatcher {
  private readonly handlers: Handlers;
  private readonly onInternalError: (method: string, err: unknown) => void;

  constructor(handlers: Handlers, opts: { onInternalError?: (method: string, err: unknown) => void } = {}) {
    const missing = methodNames.filter((m) => typeof (handlers as Record<string, unknown>)[m] !== 'function');
    if (missing.length) throw new Error(`API handlers missing for: ${missing.join(', ')}`);
    const extra = Object.keys(handlers).filter((k) => !(k in methods));
    if (extra.length) throw new Error(`API handlers for methods not in the contract: ${extra.join(', ')}`);
    this.handlers = handlers;
    this.onInternalError = opts.onInternalError ?? ((m, e) => console.error(`[api] ${m} failed:`, e));
  }

  has(name: string): name is MethodName {
    return Object.prototype.hasOwnProperty.call(methods, name);
  }

  /** Call a method with an untrusted request body. Never throws: every failure is an envelope. */
  async call(name: string, body: unknown): Promise<Envelope<unknown>> {
    if (!this.has(name)) {
      return { ok: false, error: { code: 'NOT_FOUND', message: `Unknown API method '${name}'` } };
    }
    const schema = methods[name].request as z.ZodType;
    const parsed = schema.safeParse(body === undefined ? {} : body);
    if (!parsed.success) {
      return { ok: false, error: validationError(null, parsed.error).toBody() };
    }
    try {
      const handler = this.handlers[name] as (req: unknown) => unknown;
      const result = await handler(parsed.data);
      return { ok: true, result };
    } catch (err) {
      if (err instanceof ApiError) return { ok: false, error: err.toBody() };
      this.onInternalError(name, err);
      const message = err instanceof Error ? err.message : String(err);
      return { ok: false, error: { code: 'INTERNAL', message: `${name} failed: ${message}` } };
    }
  }
}

type Listener = <K extends EventName>(name: K, payload: EventPayload<K>) => void;

/** Push events: validated once here, then fanned out to every transport's subscribers. */
export class EventHub {
  private readonly listeners = new Set<Listener>();

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit<K extends EventName>(name: K, payload: EventPayload<K>): void {
    const parsed = (events[name] as z.ZodType).safeParse(payload);
    if (!parsed.success) {
      throw validationError(`payload for event ${name}`, parsed.error);
    }
    for (const l of [...this.listeners]) {
      try {
        l(name, parsed.data as EventPayload<K>);
      } catch (err) {
        console.error(`[events] a listener of ${name} failed:`, err);
      }
    }
  }

  get size(): number {
    return this.listeners.size;
  }
}
