// Electron smoke test: the desktop window loads the renderer with the preload bridge and no Node.
// Runs only where Electron's binary is installed and a display (or Xvfb) is available.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';

import { describe, expect, it } from 'vitest';

import { ROOT, tempHome } from '../helpers/app';

function electronPath(): string | null {
  try {
    const p = createRequire(import.meta.url)('electron') as unknown;
    return typeof p === 'string' && fs.existsSync(p) ? p : null;
  } catch {
    return null;
  }
}

const bin = electronPath();
const display = process.env.DISPLAY || process.env.WAYLAND_DISPLAY;
const skipReason = !bin ? "Electron's binary is not installed (it cannot be downloaded on this machine)" : !display && process.platform === 'linux' ? 'no display (run under xvfb-run)' : '';
if (skipReason) console.log(`electron smoke test skipped: ${skipReason}`);

describe.skipIf(Boolean(skipReason))('Electron window', () => {
  it('opens the workbench with the preload bridge and without Node', () => {
    const r = spawnSync(bin!, [ROOT, '--no-sandbox'], {
      env: { ...process.env, LLMS_TRAIN_SMOKE: '1', LLMS_TRAIN_HOME: tempHome() },
      encoding: 'utf8',
      timeout: 60_000,
    });
    const line = /SMOKE (.*)/.exec(r.stdout)?.[1];
    expect(line, r.stderr).toBeTruthy();
    expect(JSON.parse(line!)).toEqual({ title: expect.stringMatching(/LLMs-train/), hasApi: true });
  });
});
