// A demanding user's history in Chromium through browser mode: 300 runs, ten of them 200,000 steps long, one still
// streaming. The Runs list filters at once; a long run's charts get each series within the point budget with its
// spike and NaN kept, zooming fetches the visible steps at full resolution, live points are appended without a
// refetch, the metrics export writes every step; Compare overlays ten long runs; deleting a long run is quick.
// Timings are printed ([scale] …), never asserted (docs/BENCHMARKS.md has the measured numbers).
import fs from 'node:fs';
import path from 'node:path';

import type { Browser, Page, Request } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { METRIC_POINT_BUDGET } from '../../src-main/api/downsample';
import { type MetricPoint, Store } from '../../src-main/core/store/store';
import { type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

const STEPS = 200_000;
const SPIKE = 123_457;
const NAN = 150_000;
let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];
const longIds: number[] = [];
let liveId = 0;
let liveStep = 0;
const T0 = 1_700_000_000;

const loss = (step: number, k: number) => (step === NAN ? null : step === SPIKE ? 40 : 1.5 + k * 0.05 + Math.exp(-step / 40_000) + 0.02 * Math.sin(step));
const attr = async (testid: string, name: string) => (await page.getByTestId(testid).getAttribute(name)) ?? '';
const num = async (testid: string, name: string) => Number(await attr(testid, name));
const log = (what: string, ms: number) => console.log(`[scale] ${what}: ${ms.toFixed(0)} ms`);
async function timed(what: string, fn: () => Promise<unknown>): Promise<void> {
  const t = performance.now();
  await fn();
  log(what, performance.now() - t);
}
function metricRequests(): { list: unknown[]; stop: () => void } {
  const list: unknown[] = [];
  const on = (r: Request) => {
    if (r.url().endsWith('/api/getMetrics')) list.push(r.postDataJSON());
  };
  page.on('request', on);
  return { list, stop: () => page.off('request', on) };
}

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  const t = performance.now();
  const store = Store.open(path.join(app.home, 'llms-train.db'));
  try {
    const spec = (i: number) => ({ name: `r${i}`, method: 'lora', model: { path: `/models/m${i % 3}` }, data: { train: `/data/d${i % 4}.json` }, output: { dir: path.join(app.home, 'out', `r${i}`) }, training: { max_steps: STEPS } });
    for (let i = 0; i < 289; i++) {
      const r = store.runs.create({ name: `short ${i}`, spec: spec(i), specVersion: 1, tags: [`batch${i % 7}`], ownerPid: null });
      const pts: MetricPoint[] = [];
      for (let step = 1; step <= 20; step++) pts.push({ step, name: 'loss', value: 3 - step / 20, time: T0 + step }, { step, name: 'tokens', value: step * 100, time: T0 + step });
      store.metrics.add(r.id, pts);
      store.runs.markRunning(r.id, null);
      store.runs.finish(r.id, i % 11 === 3 ? 'failed' : 'completed');
    }
    for (let k = 0; k < 10; k++) {
      const r = store.runs.create({ name: `long ${k + 1}`, spec: spec(1000 + k), specVersion: 1, tags: ['long'], ownerPid: null });
      for (let s = 1; s <= STEPS; s += 25_000) {
        const pts: MetricPoint[] = [];
        for (let step = s; step < s + 25_000; step++) {
          const time = T0 + step * 0.2;
          pts.push({ step, name: 'loss', value: loss(step, k), time });
          if (step % 10 === 0) pts.push({ step, name: 'tokens', value: step * 1024, time });
          if (step % 1000 === 0) pts.push({ step, name: 'eval_loss', value: loss(step, k)! + 0.1, time });
          if (k === 0) pts.push({ step, name: 'lr', value: 2e-4 * (1 - step / STEPS), time }, { step, name: 'tokens_per_s', value: 5000 + (step % 100), time });
        }
        store.metrics.add(r.id, pts);
      }
      store.runs.markRunning(r.id, null);
      store.runs.finish(r.id, 'completed');
      longIds.push(r.id);
    }
    // a run still streaming (its process is this test: alive, so the app leaves it running)
    const live = store.runs.create({ name: 'live', spec: spec(2000), specVersion: 1, ownerPid: null });
    for (let s = 1; s <= 150_000; s += 25_000) {
      const pts: MetricPoint[] = [];
      for (let step = s; step < s + 25_000; step++) pts.push({ step, name: 'loss', value: loss(step, 3), time: T0 + step * 0.2 });
      store.metrics.add(live.id, pts);
    }
    liveStep = 150_000;
    store.runs.markRunning(live.id, process.pid);
    liveId = live.id;
  } finally {
    store.close();
  }
  log('seeding 300 runs (3.0M metric rows)', performance.now() - t);
  ({ browser, page } = await openPage({ width: 1360, height: 900 }, consoleErrors));
  await page.goto(`${app.url}#/runs`);
  await page.getByTestId('status-devices').waitFor();
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe('300 runs, ten of 200,000 steps', () => {
  it('lists 300 runs and filters them at once', async () => {
    await timed('Runs screen: page load → 300 rows shown', async () => {
      await page.reload();
      await expect.poll(() => page.getByTestId('run-row').count(), { timeout: 30_000, interval: 20 }).toBe(300);
    });
    await timed('Runs screen: search "long" → 10 rows', async () => {
      await page.getByTestId('runs-search').fill('long');
      await expect.poll(() => page.getByTestId('run-row').count()).toBe(10);
    });
    await timed('Runs screen: status failed', async () => {
      await page.getByTestId('runs-search').fill('');
      await page.getByTestId('runs-filter-status').selectOption('failed');
      await expect.poll(() => page.getByTestId('run-row').count()).toBe(26);
    });
    await page.getByTestId('runs-filter-status').selectOption('');
    const row = page.locator(`[data-testid="run-row"][data-run-id="${longIds[0]}"]`);
    expect(await row.getByTestId('run-progress').textContent()).toContain('200000 / 200000');
  });

  it("draws a long run's charts from a few thousand points with its spike and NaN, and zooms in at full resolution", async () => {
    const reqs = metricRequests();
    await timed('run view: loss chart drawn (200,000-step run)', async () => {
      await page.goto(`${app.url}#/runs/${longIds[0]}`);
      await expect.poll(() => num('chart-loss', 'data-points'), { timeout: 30_000 }).toBeGreaterThan(1000);
    });
    // raw and smoothed loss: each within the budget instead of 200,000 points
    expect(await num('chart-loss', 'data-points')).toBeLessThanOrEqual(2 * METRIC_POINT_BUDGET + 200);
    expect(await num('chart-lr', 'data-points')).toBeLessThanOrEqual(METRIC_POINT_BUDGET);
    // the spike (40) and the NaN of one step in 200,000 are still there
    await expect.poll(async () => (await attr('chart-loss', 'data-y-range')).split(',').map(Number)[1]).toBe(40);
    expect(await num('chart-loss', 'data-nulls')).toBeGreaterThan(0);
    expect(reqs.list).toEqual([{ id: longIds[0] }]);

    // zooming into the loss chart fetches the visible steps at full resolution
    const box = (await page.getByTestId('chart-loss').locator('canvas').boundingBox())!;
    await page.mouse.move(box.x + box.width * 0.75, box.y + box.height / 2);
    for (let i = 0; i < 8; i++) await page.mouse.wheel(0, -400);
    await expect.poll(() => attr('chart-loss', 'data-zoom'), { timeout: 10_000 }).not.toBe('');
    await expect.poll(() => reqs.list.length, { timeout: 10_000 }).toBeGreaterThan(1);
    const zoomReq = reqs.list.at(-1) as { names: string[]; fromStep: number; toStep: number };
    expect(zoomReq.names).toEqual(['loss', 'eval_loss']);
    const [zMin, zMax] = (await attr('chart-loss', 'data-zoom')).split(',').map(Number);
    expect(zoomReq.fromStep).toBeLessThanOrEqual(zMin!);
    expect(zoomReq.toStep).toBeGreaterThanOrEqual(zMax!);
    expect(zoomReq.toStep - zoomReq.fromStep).toBeLessThan(STEPS / 2);
    await screenshot(page, 'scale-run-zoomed', false);
    // double-click resets the zoom and drops the detail
    await page.getByTestId('chart-loss').locator('.canvas').dblclick();
    await expect.poll(() => attr('chart-loss', 'data-zoom')).toBe('');
    reqs.stop();
  });

  it('exports every step of the run to CSV, and asks before replacing the file', async () => {
    const out = path.join(app.home, 'exports', `long-${longIds[0]}.csv`);
    await page.getByTestId('metrics-export').locator('summary').click();
    await page.getByTestId('metrics-export-out').fill(out);
    await timed('export 200,000 steps to CSV (UI)', async () => {
      await page.getByTestId('metrics-export-start').click();
      await page.getByTestId('metrics-export-done').waitFor({ timeout: 60_000 });
    });
    expect(await page.getByTestId('metrics-export-done').textContent()).toContain('200000 steps');
    const text = fs.readFileSync(out, 'utf8');
    const lines = text.trimEnd().split('\n');
    expect(lines[0]).toBe('step,time,loss,eval_loss,lr,tokens_per_s,tokens');
    expect(lines).toHaveLength(STEPS + 1);
    expect(lines[SPIKE]!.split(',')[2]).toBe('40');
    expect(lines[NAN]!.split(',')[2]).toBe('NaN');
    // again: the file exists; Replace writes it anew
    await page.getByTestId('metrics-export-start').click();
    await page.getByTestId('metrics-export-exists').waitFor();
    await page.getByTestId('metrics-export-format').selectOption('json');
    expect(await page.getByTestId('metrics-export-out').inputValue()).toBe(out.replace(/\.csv$/, '.json'));
    await page.getByTestId('metrics-export-start').click();
    await page.getByTestId('metrics-export-done').waitFor();
    expect((JSON.parse(fs.readFileSync(out.replace(/\.csv$/, '.json'), 'utf8')) as unknown[]).length).toBe(STEPS);
  });

  it('appends live points to a 150,000-step run without fetching it again', async () => {
    const reqs = metricRequests();
    await page.goto(`${app.url}#/runs/${liveId}`);
    await expect.poll(() => num('chart-loss', 'data-points'), { timeout: 30_000 }).toBeGreaterThan(1000);
    expect(await page.getByTestId('run-step').textContent()).toBe(`${liveStep} / ${STEPS}`);
    const before = reqs.list.length;
    // the run streams: a batch of 250 steps every 200 ms, written as the engine's supervisor writes them
    const store = Store.open(path.join(app.home, 'llms-train.db'));
    try {
      for (let b = 0; b < 10; b++) {
        const pts: MetricPoint[] = [];
        for (let k = 0; k < 250; k++) {
          liveStep++;
          pts.push({ step: liveStep, name: 'loss', value: loss(liveStep, 3), time: T0 + liveStep * 0.2 });
        }
        store.metrics.add(liveId, pts);
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      store.close();
    }
    await expect.poll(() => page.getByTestId('run-step').textContent(), { timeout: 10_000 }).toBe(`${liveStep} / ${STEPS}`);
    expect(reqs.list.length).toBe(before);
    expect(await num('chart-loss', 'data-points')).toBeLessThanOrEqual(2 * 2 * METRIC_POINT_BUDGET);
    reqs.stop();
  });

  it('overlays ten 200,000-step runs in Compare, filters the picker, aligns by tokens', async () => {
    const reqs = metricRequests();
    await timed('Compare: 10 long runs overlaid', async () => {
      await page.goto(`${app.url}#/compare?ids=${longIds.join(',')}`);
      await expect
        .poll(async () => (await page.getByTestId('compare-series').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-points'))))).filter((n) => n > 1000).length, { timeout: 60_000 })
        .toBe(10);
    });
    const pts = await page.getByTestId('compare-series').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-points'))));
    for (const n of pts) expect(n).toBeLessThanOrEqual(METRIC_POINT_BUDGET);
    // one series per run: the chosen metric only
    expect(reqs.list).toEqual(longIds.map((id) => ({ id, names: ['loss'] })));
    await expect.poll(async () => (await attr('compare-chart', 'data-y-range')).split(',').map(Number)[1]).toBe(40);
    expect(await page.getByTestId('compare-pick').count()).toBe(300);
    await timed('Compare: picker filter "long"', async () => {
      await page.getByTestId('compare-filter').fill('long');
      await expect.poll(() => page.getByTestId('compare-pick').count()).toBe(10);
    });
    expect(await page.getByTestId('compare-shown').textContent()).toContain('10 selected');
    await timed('Compare: align by tokens', async () => {
      await page.getByTestId('compare-axis').selectOption('tokens');
      await expect.poll(() => reqs.list.length, { timeout: 30_000 }).toBe(20);
      await expect.poll(async () => Number(await attr('compare-chart', 'data-points')), { timeout: 30_000 }).toBeGreaterThan(10_000);
    });
    expect(reqs.list.slice(10)).toEqual(longIds.map((id) => ({ id, names: ['tokens'] })));
    expect(await page.getByTestId('compare-results').textContent()).toContain('204.80M');
    await screenshot(page, 'scale-compare', false);
    reqs.stop();
  });

  it('deletes a 200,000-step run quickly', async () => {
    const id = longIds[9]!;
    await page.goto(`${app.url}#/runs`);
    await page.getByTestId('runs-search').fill('long 10');
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(1);
    await page.locator(`[data-testid="run-row"][data-run-id="${id}"] [data-testid="run-delete"]`).click();
    await page.getByTestId('delete-files').uncheck();
    await timed('delete a 200,000-step run (UI, confirm → notice)', async () => {
      await page.getByTestId('delete-confirm').click();
      await page.getByTestId('runs-notice').waitFor({ timeout: 60_000 });
    });
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(0);
  });

  it('ran without console errors (but the export refused onto an existing file: 409)', () => {
    expect(consoleErrors).toEqual([expect.stringMatching(/status of 409/)]);
  });
});
