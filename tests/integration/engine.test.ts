// The native engine through its two doors: the Node addon and the `llmt-engine` CLI binary.
import { execFileSync, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import type { LlmtAddon } from '../../native/addon/index';
import { ROOT } from '../helpers/app';

const bin = path.join(ROOT, 'native', 'build', 'bin');
const addon = createRequire(import.meta.url)(path.join(bin, 'llmt.node')) as LlmtAddon;

describe('engine addon', () => {
  it('reports version, API version and build info', () => {
    expect(addon.version()).toMatch(/^\d+\.\d+\.\d+$/);
    expect(addon.apiVersion()).toBe(1);
    const info = JSON.parse(addon.buildInfo()) as { version: string; api_version: number; cuda: boolean };
    expect(info).toMatchObject({ version: addon.version(), api_version: 1 });
    // CI compiles the CUDA backend (nothing CUDA runs there); a plain local build is CPU-only
    expect(typeof info.cuda).toBe('boolean');
  });

  it('lists the CPU with its threads and memory', () => {
    const devices = addon.listDevices();
    expect(devices[0]).toMatchObject({ index: 0, kind: 'cpu' });
    expect(devices[0]!.threads).toBeGreaterThanOrEqual(1);
    expect(devices[0]!.memoryTotal).toBeGreaterThan(2 ** 28);
    expect(devices[0]!.memoryFree).toBeLessThanOrEqual(devices[0]!.memoryTotal);
  });

  it('throws an Error with the engine status code for bad input', () => {
    let err: (Error & { code?: string }) | undefined;
    try {
      addon.deviceInfo(99);
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err?.code).toBe('BAD_INPUT');
    expect(err?.message).toMatch(/out of range/);
    expect(() => addon.deviceInfo('x' as unknown as number)).toThrow(/index must be a number/);
  });
});

describe('llmt-engine CLI', () => {
  const exe = path.join(bin, 'llmt-engine');

  it('prints info as JSON matching the addon', () => {
    const info = JSON.parse(execFileSync(exe, ['info', '--json'], { encoding: 'utf8' }));
    expect(info.version).toBe(addon.version());
    expect(info.devices[0].kind).toBe('cpu');
  });

  it('exits 2 with usage for an unknown command or option', () => {
    const r = spawnSync(exe, ['frobnicate'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'frobnicate'/);
    const r2 = spawnSync(exe, ['info', '--bogus'], { encoding: 'utf8' });
    expect(r2.status).toBe(2);
    expect(r2.stderr).toMatch(/unknown option '--bogus'/);
  });
});
