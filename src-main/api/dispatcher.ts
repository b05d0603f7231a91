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

/** Field-level messages from a zod error: `name: Invalid input: expected string, received number`. */
export function fieldErrors(error: z.ZodError): FieldError[] {
  return error.issues.map((issue) => ({
    path: issue.path.length ? issue.path.map(String).join('.') : '(body)',
    message: issue.message,
  }));
}

export function validationError(what: string, error: z.ZodError): ApiError {
  const fields = fieldErrors(error);
  const summary = fields.map((f) => `${f.path}: ${f.message}`).join('; ');
  return new ApiError('BAD_REQUEST', `Invalid ${what}: ${summary}`, { fields });
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
      return { ok: false, error: validationError(`request for ${name}`, parsed.error).toBody() };
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
