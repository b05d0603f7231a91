// The API contract's dispatcher: validation with field-level errors, envelopes, handler errors.
import { describe, expect, it } from 'vitest';

import { eventNames, methodNames, methods } from '../../src-main/api/contract';
import { Dispatcher, EventHub, type Handlers } from '../../src-main/api/dispatcher';
import { ApiError, httpStatusFor } from '../../src-main/api/errors';

function handlers(overrides: Partial<Handlers> = {}): Handlers {
  const base = Object.fromEntries(methodNames.map((m) => [m, () => { throw new Error(`${m} not expected in this test`); }])) as unknown as Handlers;
  return { ...base, ...overrides };
}

describe('Dispatcher', () => {
  it('refuses a handler table that misses a method or adds one', () => {
    const h = handlers() as Record<string, unknown>;
    delete h.getRun;
    expect(() => new Dispatcher(h as Handlers)).toThrow(/missing for: getRun/);
    expect(() => new Dispatcher({ ...handlers(), bogus: () => 1 } as unknown as Handlers)).toThrow(/not in the contract: bogus/);
  });

  it('validates the request and names each bad field', async () => {
    const d = new Dispatcher(handlers({ createExperiment: (r) => ({ id: 1, name: r.name, description: '', createdAt: 'x', runCount: 0 }) }));
    const bad = await d.call('createExperiment', { name: 42, extra: true });
    expect(bad.ok).toBe(false);
    if (bad.ok) return;
    expect(bad.error.code).toBe('BAD_REQUEST');
    const paths = bad.error.fields!.map((f) => f.path);
    expect(paths).toContain('name');
    expect(bad.error.message).toMatch(/name must be text \(got a number\)/);
    expect(bad.error.message).toMatch(/extra/);
  });

  it('trims and passes the parsed request to the handler', async () => {
    let seen: unknown;
    const d = new Dispatcher(handlers({ createExperiment: (r) => { seen = r; return { id: 1, name: r.name, description: '', createdAt: 'x', runCount: 0 }; } }));
    const ok = await d.call('createExperiment', { name: '  lora-r8  ' });
    expect(ok).toEqual({ ok: true, result: { id: 1, name: 'lora-r8', description: '', createdAt: 'x', runCount: 0 } });
    expect(seen).toEqual({ name: 'lora-r8' });
  });

  it('rejects an empty name and a wrong nested type', async () => {
    const d = new Dispatcher(handlers());
    const r1 = await d.call('createExperiment', { name: '   ' });
    expect(!r1.ok && r1.error.fields?.[0]?.path).toBe('name');
    const r2 = await d.call('updateSettings', { modelDirs: ['ok', 7] });
    expect(!r2.ok && r2.error.fields?.[0]?.path).toBe('modelDirs.1');
    const r3 = await d.call('getRun', { id: -1 });
    expect(!r3.ok && r3.error.code).toBe('BAD_REQUEST');
  });

  it('treats a missing body as {} and a non-object body as a body error', async () => {
    const d = new Dispatcher(handlers({ listRuns: () => [] }));
    expect(await d.call('listRuns', undefined)).toEqual({ ok: true, result: [] });
    const r = await d.call('listRuns', 'nope');
    expect(!r.ok && r.error.fields?.[0]?.path).toBe('(body)');
  });

  it('answers an unknown method with NOT_FOUND', async () => {
    const r = await new Dispatcher(handlers()).call('dropDatabase', {});
    expect(r).toEqual({ ok: false, error: { code: 'NOT_FOUND', message: "Unknown API method 'dropDatabase'" } });
  });

  it('carries ApiError code, hint and fields; wraps other errors as INTERNAL', async () => {
    const d = new Dispatcher(
      handlers({
        getRun: () => { throw new ApiError('NOT_FOUND', 'run 9 does not exist', { hint: 'check the id' }); },
        listRuns: () => { throw new TypeError('boom'); },
      }),
      { onInternalError: () => {} },
    );
    expect(await d.call('getRun', { id: 9 })).toEqual({ ok: false, error: { code: 'NOT_FOUND', message: 'run 9 does not exist', hint: 'check the id' } });
    const r = await d.call('listRuns', {});
    expect(!r.ok && r.error).toEqual({ code: 'INTERNAL', message: 'listRuns failed: boom' });
  });

  it('round-trips ApiError through its wire body', () => {
    const e = new ApiError('CONFLICT', 'taken', { hint: 'rename', fields: [{ path: 'name', message: 'taken' }] });
    const back = ApiError.fromBody(e.toBody());
    expect(back).toBeInstanceOf(Error);
    expect([back.code, back.message, back.hint, back.fields]).toEqual(['CONFLICT', 'taken', 'rename', [{ path: 'name', message: 'taken' }]]);
  });

  it('maps codes to HTTP statuses', () => {
    expect([httpStatusFor('BAD_REQUEST'), httpStatusFor('UNAUTHORIZED'), httpStatusFor('NOT_FOUND'), httpStatusFor('CONFLICT'), httpStatusFor('OOM')]).toEqual([400, 401, 404, 409, 500]);
  });

  it('has identifier-safe, unique method and event names', () => {
    for (const n of [...methodNames, ...eventNames]) expect(n).toMatch(/^[a-zA-Z][a-zA-Z0-9]*$/);
    expect(new Set(methodNames).size).toBe(Object.keys(methods).length);
  });
});

describe('EventHub', () => {
  const status = {
    version: '0.1.0',
    mode: 'browser' as const,
    engine: { available: true, version: '0.1.0', error: null },
    devices: [],
    gpus: [],
    home: '/h',
    database: '/h/db',
    inference: { device: 'cpu', precision: 'fp32', quantization: 'auto' },
  };

  it('delivers validated payloads to every listener until unsubscribed', () => {
    const hub = new EventHub();
    const got: unknown[] = [];
    const off = hub.subscribe((name, p) => got.push([name, p]));
    hub.emit('status', status);
    off();
    hub.emit('status', status);
    expect(got).toEqual([['status', status]]);
  });

  it('refuses an invalid payload instead of sending it', () => {
    const hub = new EventHub();
    const got: unknown[] = [];
    hub.subscribe((n) => got.push(n));
    expect(() => hub.emit('status', { ...status, version: 3 } as never)).toThrow(/version/);
    expect(got).toEqual([]);
  });

  it('keeps delivering when one listener throws', () => {
    const hub = new EventHub();
    const got: string[] = [];
    const err = console.error;
    console.error = () => {};
    try {
      hub.subscribe(() => { throw new Error('bad listener'); });
      hub.subscribe((n) => got.push(n));
      hub.emit('status', status);
    } finally {
      console.error = err;
    }
    expect(got).toEqual(['status']);
  });
});
