// Sorting the runs list in Chromium through browser mode, over more runs than one page holds: 1,200 runs, the best
// eval loss on the oldest (past the first page of 500 and the old 1,000-run cap). Header buttons sort by any column
// (aria-sort tells which and how), a second click reverses, the keyboard works them, runs without a value (never
// evaluated, NaN only) stay last both ways, the choice survives a reload, "Showing N of M" with "Load more", the
// search filters the sorted set; Compare's picker sorts the same way. A companion of scale.test.ts (that one's
// 3M-point history is not needed here, so this file seeds in a second).
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

const N = 1200;
let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];

/** run i (1-based, its id): the best eval is run 1's; every 7th logged only NaN evals, every 5th none at all */
const evalOf = (i: number): number | null | undefined => (i === 1 ? 0.1 : i % 7 === 0 ? null : i % 5 === 0 ? undefined : 1 + ((i * 7919) % 1000) / 1000);
const lrOf = (i: number) => (i % 11 === 0 ? undefined : 1e-5 * (1 + (i % 9)));

const ids = (sel = 'run-row') => page.getByTestId(sel).evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-run-id'))));
const ariaSort = (key: string) => page.locator(`th[data-sort-key="${key}"]`).getAttribute('aria-sort');
const shownOf = async () => {
  const el = page.getByTestId('runs-shown');
  return [Number(await el.getAttribute('data-shown')), Number(await el.getAttribute('data-total'))];
};
/** run ids in the order the store sorts them by best eval loss (value, then id; missing last) */
function expectedByEval(dir: 'asc' | 'desc', pick: (i: number) => boolean = () => true): number[] {
  const all = Array.from({ length: N }, (_, k) => k + 1).filter(pick);
  const has = all.filter((i) => typeof evalOf(i) === 'number');
  const none = all.filter((i) => typeof evalOf(i) !== 'number');
  const s = dir === 'asc' ? 1 : -1;
  has.sort((a, b) => s * ((evalOf(a) as number) - (evalOf(b) as number)) || s * (a - b));
  none.sort((a, b) => s * (a - b));
  return [...has, ...none];
}

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  const store = Store.open(path.join(app.home, 'llms-train.db'));
  try {
    store.db.transaction(() => {
      for (let i = 1; i <= N; i++) {
        const training: Record<string, unknown> = { max_steps: 100 };
        if (lrOf(i) !== undefined) training.learning_rate = lrOf(i);
        const spec = { name: `run ${i}`, method: 'lora', model: { path: `/models/m${i % 3}` }, data: { train: '/data/d.json' }, lora: { r: [4, 8, 16, 32][i % 4] }, training };
        const r = store.runs.create({ name: `run ${i}`, spec, specVersion: 1, tags: i % 10 === 0 ? ['sweep'] : [], ownerPid: null });
        const e = evalOf(i);
        store.metrics.add(r.id, [
          { step: 100, name: 'loss', value: 2 - i / N, time: 1 },
          { step: 100, name: 'tokens', value: i * 1000, time: 1 },
          ...(e === undefined ? [] : [{ step: 50, name: 'eval_loss', value: e, time: 1 }, { step: 100, name: 'eval_loss', value: e === null ? null : e + 0.5, time: 2 }]),
        ]);
        store.runs.markRunning(r.id, null);
        store.runs.finish(r.id, 'completed');
      }
    })();
  } finally {
    store.close();
  }
  ({ browser, page } = await openPage({ width: 1500, height: 900 }, consoleErrors));
  await page.goto(`${app.url}#/runs`);
  await page.getByTestId('status-devices').waitFor();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe('sorting 1,200 runs', () => {
  it('shows the first page of 500, newest first, with "Showing 500 of 1200" and Load more', async () => {
    await expect.poll(() => page.getByTestId('run-row').count(), { timeout: 30_000 }).toBe(500);
    expect(await shownOf()).toEqual([500, N]);
    expect(await page.getByTestId('runs-shown').textContent()).toContain('Showing 500 of 1200 runs');
    expect((await ids()).slice(0, 3)).toEqual([N, N - 1, N - 2]);
    expect(await ariaSort('created')).toBe('descending');
    expect(await ariaSort('bestEval')).toBe('none');
    expect(await page.locator('th[aria-sort]').count()).toBe(10);
  });

  it('sorts by best eval loss over every run (the best is the oldest), reverses, keeps runs without a value last', async () => {
    await page.getByTestId('sort-bestEval').click();
    await expect.poll(() => ariaSort('bestEval')).toBe('ascending');
    expect(await ariaSort('created')).toBe('none');
    await expect.poll(async () => (await ids())[0]).toBe(1);
    expect(await ids()).toEqual(expectedByEval('asc').slice(0, 500));
    expect(await page.locator('[data-testid="run-row"][data-run-id="1"] [data-testid="run-best-eval"]').textContent()).toContain('0.1');
    await screenshot(page, 'runs-sorted-best-eval', false);

    await page.getByTestId('sort-bestEval').click();
    await expect.poll(() => ariaSort('bestEval')).toBe('descending');
    await expect.poll(async () => (await ids())[0]).toBe(expectedByEval('desc')[0]);
    expect(await ids()).toEqual(expectedByEval('desc').slice(0, 500));

    // Load more: the next page continues the same order; the NaN-only and never-evaluated runs come last
    await page.getByTestId('runs-load-more').click();
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(1000);
    await page.getByTestId('runs-load-more').click();
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(N);
    expect(await page.getByTestId('runs-load-more').count()).toBe(0);
    expect(await ids()).toEqual(expectedByEval('desc'));
    const last = (await ids()).slice(-5);
    for (const id of last) expect(typeof evalOf(id)).not.toBe('number');
  });

  it('works from the keyboard, keeps the sort across a reload and navigation', async () => {
    await page.getByTestId('sort-lr').focus();
    await page.keyboard.press('Enter');
    await expect.poll(() => ariaSort('lr')).toBe('ascending');
    await expect.poll(async () => (await ids())[0]).toBe(9); // lr 1e-5: i % 9 === 0, the smallest id first
    await expect.poll(() => page.getByTestId('runs-table').getAttribute('aria-busy')).toBe('false');
    const byLr = await ids();
    await page.keyboard.press('Space');
    await expect.poll(() => ariaSort('lr')).toBe('descending');
    await page.keyboard.press('Enter');
    await expect.poll(() => ariaSort('lr')).toBe('ascending');

    await page.reload();
    await expect.poll(() => page.getByTestId('run-row').count(), { timeout: 30_000 }).toBe(500);
    expect(await ariaSort('lr')).toBe('ascending');
    expect(await ids()).toEqual(byLr.slice(0, 500));
    await page.goto(`${app.url}#/compare`);
    await page.getByTestId('compare-picker').waitFor();
    await page.goto(`${app.url}#/runs`);
    await expect.poll(() => ariaSort('lr'), { timeout: 30_000 }).toBe('ascending');
  });

  it('filters the sorted set: search, status and tag, with the total', async () => {
    await page.getByTestId('sort-bestEval').click();
    await expect.poll(() => ariaSort('bestEval')).toBe('ascending');
    await page.getByTestId('runs-filter-tag').selectOption('sweep');
    await expect.poll(shownOf).toEqual([N / 10, N / 10]);
    expect(await ids()).toEqual(expectedByEval('asc', (i) => i % 10 === 0));
    expect(await page.getByTestId('runs-load-more').count()).toBe(0);
    await page.getByTestId('runs-filter-tag').selectOption('');
    // every word in a run's #id, name, status, model, dataset, method or tags: runs 115, 1115, 1150..1159
    await page.getByTestId('runs-search').fill('RUN 115');
    await expect.poll(shownOf).toEqual([12, 12]);
    expect(await ids()).toEqual(expectedByEval('asc', (i) => String(i).includes('115')));
    await page.getByTestId('runs-search').fill('');
    await expect.poll(shownOf).toEqual([500, N]);
  });

  it("sorts Compare's picker the same way, and keeps that choice too", async () => {
    await page.goto(`${app.url}#/compare`);
    await expect.poll(() => page.getByTestId('compare-pick').count(), { timeout: 30_000 }).toBe(500);
    expect(await page.getByTestId('compare-shown').getAttribute('data-total')).toBe(String(N));
    await page.getByTestId('compare-sort').selectOption('bestEval');
    await expect.poll(async () => (await ids('compare-pick'))[0]).toBe(1);
    expect(await ids('compare-pick')).toEqual(expectedByEval('asc').slice(0, 500));
    expect(await page.getByTestId('compare-pick-value').first().textContent()).toBe('0.1');
    await page.getByTestId('compare-sort-dir').click();
    await expect.poll(async () => (await ids('compare-pick'))[0]).toBe(expectedByEval('desc')[0]);
    await page.getByTestId('compare-filter').fill('sweep');
    await expect.poll(() => page.getByTestId('compare-pick').count()).toBe(N / 10);
    expect(await ids('compare-pick')).toEqual(expectedByEval('desc', (i) => i % 10 === 0));
    await page.reload();
    await expect.poll(() => page.getByTestId('compare-pick').count(), { timeout: 30_000 }).toBe(500);
    expect(await page.getByTestId('compare-sort').inputValue()).toBe('bestEval');
    expect(await page.getByTestId('compare-sort-dir').getAttribute('data-dir')).toBe('desc');
    expect(await ids('compare-pick')).toEqual(expectedByEval('desc').slice(0, 500));
    // a run in the address that is not on the first page is still a known run
    await page.goto(`${app.url}#/compare?ids=1,${N}`);
    await page.reload();
    await expect.poll(() => page.getByTestId('compare-series').count(), { timeout: 30_000 }).toBe(2);
    expect(await page.getByTestId('compare-unknown').count()).toBe(0);
  });

  it('ran without console errors', () => {
    expect(consoleErrors).toEqual([]);
  });
});
