// ui_scale.mjs — the same history as bench/store_scale.mjs, but seen in Chromium through browser mode
// (docs/BENCHMARKS.md, "Store and API at scale"): 300 runs, ten of them 200,000 steps long (loss, lr and tokens
// every step). Times how long the Runs screen takes to show 300 rows, a long run's loss chart to be drawn, and
// Compare to overlay the ten long runs, each from a fresh page load, with the JavaScript heap the page ends with.
// Needs `npm run build` and Debian's Chromium (LLMT_CHROMIUM overrides). Works against an older build (--dist).
// Usage: node bench/ui_scale.mjs [--dist DIR] [--steps 200000] [--timeout 300]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const DIST = path.resolve(arg('dist', path.join(ROOT, 'dist')));
const STEPS = Number(arg('steps', 200_000));
const TIMEOUT = Number(arg('timeout', 300)) * 1000;
const require = createRequire(path.join(ROOT, 'x.js'));
const { chromium } = require('playwright-core');
const { Store } = require(path.join(DIST, 'main/core/store/store.js'));

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-bench-ui-'));
const T0 = 1_700_000_000;

function seed() {
  const store = Store.open(path.join(home, 'llms-train.db'));
  const ids = [];
  for (let i = 0; i < 300; i++) {
    const long = i >= 290;
    const steps = long ? STEPS : 1000;
    const r = store.runs.create({ name: long ? `long ${i - 289}` : `run ${i}`, spec: { model: { path: `/m/${i % 3}` }, data: { train: '/d.json' }, output: { dir: `/o/${i}` }, training: { max_steps: steps } }, specVersion: 1, ownerPid: null });
    for (let s = 1; s <= steps; s += 25_000) {
      const pts = [];
      for (let step = s; step < Math.min(s + 25_000, steps + 1); step++) {
        const time = T0 + step * 0.2;
        pts.push({ step, name: 'loss', value: 1.5 + Math.exp(-step / 40_000) + 0.02 * Math.sin(step), time }, { step, name: 'lr', value: 1e-4, time }, { step, name: 'tokens', value: step * 1024, time });
      }
      store.metrics.add(r.id, pts);
    }
    store.runs.markRunning(r.id, null);
    store.runs.finish(r.id, 'completed');
    if (long) ids.push(r.id);
  }
  store.close();
  return ids;
}

function serve() {
  const proc = spawn(process.execPath, [path.join(DIST, 'main/cli/index.js'), 'serve', '--port', '0'], { env: { ...process.env, LLMS_TRAIN_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  return new Promise((resolve, reject) => {
    const on = (d) => {
      out += d;
      const m = /(http:\/\/[^\s/]+)\/\?token=([A-Za-z0-9_-]+)/.exec(out);
      if (m) resolve({ proc, url: m[0] });
    };
    proc.stdout.on('data', on);
    proc.stderr.on('data', on);
    proc.once('exit', (c) => reject(new Error(`serve exited ${c}: ${out}`)));
  });
}

async function main() {
  console.log(`build: ${DIST}`);
  let t = performance.now();
  const longIds = seed();
  console.log(`seeded 300 runs (${((10 * STEPS * 3) / 1e6).toFixed(1)}M points in the long runs) in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  const app = await serve();
  const exe = [process.env.LLMT_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => p && fs.existsSync(p));
  const browser = await chromium.launch({ executablePath: exe, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const measure = async (label, hash, ready) => {
    const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
    let bytes = 0;
    const sizes = [];
    page.on('requestfinished', (r) => {
      if (r.url().includes('/api/')) sizes.push(r.sizes().then((z) => (bytes += z.responseBodySize)).catch(() => {}));
    });
    t = performance.now();
    await page.goto(`${app.url}${hash}`);
    let result;
    try {
      await page.waitForFunction(ready, null, { timeout: TIMEOUT, polling: 50 });
      const ms = performance.now() - t;
      const heap = await page.evaluate(() => performance.memory?.usedJSHeapSize ?? 0);
      await Promise.all(sizes);
      result = `${ms.toFixed(0)} ms, API answers ${(bytes / 2 ** 20).toFixed(1)} MiB, page heap ${(heap / 2 ** 20).toFixed(0)} MiB`;
    } catch {
      result = `not ready after ${TIMEOUT / 1000} s`;
    }
    console.log(`${label.padEnd(52)} ${result}`);
    await page.close();
  };
  await measure('Runs screen: 300 rows', '#/runs', () => document.querySelectorAll('[data-testid="run-row"]').length === 300);
  await measure('run view: loss chart of a 200,000-step run drawn', `#/runs/${longIds[0]}`, () => Number(document.querySelector('[data-testid="chart-loss"]')?.getAttribute('data-points')) > 0);
  await measure('Compare: 10 long runs overlaid (loss by step)', `#/compare?ids=${longIds.join(',')}`, () => {
    const s = [...document.querySelectorAll('[data-testid="compare-series"]')];
    return s.length === 10 && s.every((e) => Number(e.getAttribute('data-points')) > 0);
  });
  await browser.close();
  app.proc.kill('SIGTERM');
  fs.rmSync(home, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  fs.rmSync(home, { recursive: true, force: true });
  process.exit(1);
});
