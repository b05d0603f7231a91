// The generated preload exposes exactly one function per API method (plus `on` for contract events),
// each invoking its own channel and rethrowing `{error}` envelopes as Errors with the code.
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';

import { beforeAll, describe, expect, it } from 'vitest';

import { methodNames } from '../../src-main/api/contract';

const file = path.resolve(__dirname, '..', '..', 'dist', 'main', 'app', 'preload.js');

type Exposed = Record<string, (...args: unknown[]) => unknown>;

function loadPreload(answer: (channel: string, body: unknown) => unknown) {
  const calls: [string, unknown][] = [];
  const listeners = new Map<string, (e: unknown, p: unknown) => void>();
  let exposed: { name: string; api: Exposed } | undefined;
  const electron = {
    contextBridge: { exposeInMainWorld: (name: string, api: Exposed) => (exposed = { name, api }) },
    ipcRenderer: {
      invoke: async (channel: string, body: unknown) => {
        calls.push([channel, body]);
        return answer(channel, body);
      },
      on: (ch: string, l: (e: unknown, p: unknown) => void) => listeners.set(ch, l),
      removeListener: (ch: string) => listeners.delete(ch),
    },
  };
  const requireShim = (m: string) => {
    if (m !== 'electron') throw new Error(`sandboxed preload may not require ${m}`);
    return electron;
  };
  vm.runInNewContext(fs.readFileSync(file, 'utf8'), { require: requireShim, Set, Error, Object, JSON, String });
  return { exposed: exposed!, calls, listeners };
}

describe('generated preload', () => {
  beforeAll(() => {
    if (!fs.existsSync(file)) throw new Error('dist/main/app/preload.js missing: run `npm run build:main` first');
  });

  it('exposes window.llmsTrain with one function per method and `on`', () => {
    const { exposed } = loadPreload(() => ({ ok: true, result: null }));
    expect(exposed.name).toBe('llmsTrain');
    expect(Object.keys(exposed.api).sort()).toEqual([...methodNames, 'on'].sort());
    expect(Object.isFrozen(exposed.api)).toBe(true);
  });

  it('invokes the method channel and unwraps the result', async () => {
    const { exposed, calls } = loadPreload(() => ({ ok: true, result: [1, 2] }));
    await expect(exposed.api.listRuns!({ limit: 2 })).resolves.toEqual([1, 2]);
    await exposed.api.getStatus!();
    expect(calls).toEqual([['api:listRuns', { limit: 2 }], ['api:getStatus', {}]]);
  });

  it('rethrows error envelopes as Errors carrying code and fields', async () => {
    const { exposed } = loadPreload(() => ({ ok: false, error: { code: 'BAD_REQUEST', message: 'Invalid request: name: required', fields: [{ path: 'name', message: 'required' }] } }));
    const err = (await (exposed.api.createExperiment!({}) as Promise<unknown>).catch((e: unknown) => e)) as Error & { code: string; fields: unknown };
    expect(err.message).toBe('Invalid request: name: required');
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.fields).toEqual([{ path: 'name', message: 'required' }]);
  });

  it('subscribes only to contract events and unsubscribes', () => {
    const { exposed, listeners } = loadPreload(() => null);
    const got: unknown[] = [];
    const off = exposed.api.on!('status', (p: unknown) => got.push(p)) as () => void;
    listeners.get('event:status')!({}, { v: 1 });
    expect(got).toEqual([{ v: 1 }]);
    off();
    expect(listeners.has('event:status')).toBe(false);
    expect(() => exposed.api.on!('anything', () => {})).toThrow(/unknown event/);
  });
});
