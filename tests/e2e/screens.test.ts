// The Runs, Compare, Models and Datasets screens in Chromium against `llms-train serve`, on two short CLI
// runs of the demo model that differ in learning rate. Screenshots land in test-results/screens/.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CLI, ROOT, runCli, type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];
const out = (name: string) => path.join(app.home, 'runs-out', name);
let longRun: ChildProcess | null = null;

function trainArgs(name: string, lr: string, maxSteps = 20): string[] {
  return [
    'train',
    '--model_name_or_path', path.join(app.home, 'models', 'llms-train-demo'),
    '--train_file', path.join(ROOT, 'resources/datasets/promptcblue-demo/train.json'),
    '--validation_file', path.join(ROOT, 'resources/datasets/promptcblue-demo/dev.json'),
    '--output_dir', out(name),
    '--run_name', name,
    '--max_steps', String(maxSteps),
    '--logging_steps', '2',
    '--eval_steps', '10',
    '--save_steps', '10',
    '--learning_rate', lr,
    '--use_lora', 'False',
    '--max_source_length', '128',
    '--max_target_length', '32',
  ];
}

const shot = (name: string) => screenshot(page, name, false);

async function setLocale(locale: 'en' | 'zh-CN'): Promise<void> {
  await page.evaluate(
    async ([token, loc]) => {
      await fetch('./api/updateSettings', { method: 'POST', headers: { 'X-LLMT-Token': token!, 'Content-Type': 'application/json' }, body: JSON.stringify({ locale: loc }) });
      localStorage.setItem('llmt-locale', loc!);
    },
    [app.token, locale],
  );
  await page.reload();
  await page.getByTestId('status-devices').waitFor();
}

async function go(hash: string): Promise<void> {
  await page.evaluate((h) => (location.hash = h), hash);
}

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  // the demo model exists once the server has started; two short full fine-tunes with different learning rates
  for (const [name, lr] of [
    ['lr-high', '1e-3'],
    ['lr-low', '2e-4'],
  ] as const) {
    const r = await runCli(trainArgs(name, lr), { home: app.home, timeoutMs: 60_000 });
    expect(r.code, r.stderr + r.stdout).toBe(0);
  }
  ({ browser, page } = await openPage({ width: 1280, height: 900 }, consoleErrors));
  await page.goto(`${app.url}#/runs`);
  await page.getByTestId('status-devices').waitFor();
});

afterAll(async () => {
  if (longRun && longRun.exitCode === null) {
    const exited = new Promise((r) => longRun!.once('exit', r));
    longRun.kill('SIGKILL');
    await exited;
  }
  await browser?.close();
  await app?.stop();
});

const rows = () => page.getByTestId('run-row');

describe('screens in Chromium', () => {
  it('lists the runs with model, dataset, losses and progress; search, filters and tags work', async () => {
    await page.getByTestId('runs-table').waitFor();
    await expect.poll(() => rows().count()).toBe(2);
    const high = page.locator('[data-testid="run-row"]', { hasText: 'lr-high' });
    expect(await high.getByTestId('run-status').textContent()).toBe('completed');
    expect(await high.getByTestId('run-model').textContent()).toBe('llms-train-demo');
    expect(await high.getByTestId('run-dataset').textContent()).toBe('train.json');
    expect(await high.getByTestId('run-progress').textContent()).toContain('20 / 20');
    expect(await high.getByTestId('run-best-eval').textContent()).toMatch(/\d\.\d+/);

    await page.getByTestId('runs-search').fill('lr-low');
    await expect.poll(() => rows().count()).toBe(1);
    await page.getByTestId('runs-search').fill('llms-train-demo');
    await expect.poll(() => rows().count()).toBe(2);
    await page.getByTestId('runs-search').fill('no such run');
    await page.getByTestId('runs-table-nomatch').waitFor();
    await page.getByTestId('runs-search').fill('');
    await page.getByTestId('runs-filter-status').selectOption('failed');
    await page.getByTestId('runs-table-nomatch').waitFor();
    await page.getByTestId('runs-filter-status').selectOption('completed');
    await expect.poll(() => rows().count()).toBe(2);
    await page.getByTestId('runs-filter-status').selectOption('');

    // a tag added on one run: saved through updateRun, then usable as a filter and in the search
    await high.getByTestId('run-tag-input').fill('baseline');
    await high.getByTestId('run-tag-input').press('Enter');
    await high.getByTestId('run-tag').filter({ hasText: 'baseline' }).waitFor();
    await page.getByTestId('runs-filter-tag').selectOption('baseline');
    await expect.poll(() => rows().count()).toBe(1);
    await page.getByTestId('runs-filter-tag').selectOption('');
    await page.getByTestId('runs-search').fill('baseline');
    await expect.poll(() => rows().count()).toBe(1);
    await page.getByTestId('runs-search').fill('');
    await expect.poll(() => rows().count()).toBe(2);
    await shot('runs');

    // a row click opens the run
    const id = await high.getAttribute('data-run-id');
    await high.getByTestId('run-dataset').click();
    await page.waitForURL(new RegExp(`#/runs/${id}$`));
    await page.getByTestId('screen-run').waitFor();
  });

  it('compares the two runs: both curves, aligned by step, tokens or time, and the learning-rate diff', async () => {
    await go('#/runs');
    await expect.poll(() => rows().count()).toBe(2);
    expect(await page.getByTestId('runs-compare').isDisabled()).toBe(true);
    for (const cb of await page.getByTestId('run-select').all()) await cb.check();
    await page.getByTestId('runs-compare').click();
    await page.waitForURL(/#\/compare\?ids=\d+,\d+$/);
    await page.getByTestId('screen-compare').waitFor();

    const seriesPoints = () => page.getByTestId('compare-series').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-points'))));
    for (const axis of ['tokens', 'time', 'step']) {
      await page.getByTestId('compare-axis').selectOption(axis);
      await expect.poll(seriesPoints).toEqual([10, 10]);
    }
    await expect.poll(async () => Number(await page.getByTestId('compare-chart').getAttribute('data-points'))).toBe(20);
    await page.getByTestId('compare-metric').selectOption('eval_loss');
    await expect.poll(async () => (await seriesPoints()).every((n) => n > 0)).toBe(true);
    // the chart's choices are in the address: a reload (or a shared link) shows the same chart
    await page.getByTestId('compare-axis').selectOption('time');
    await expect.poll(() => page.url()).toMatch(/[?&]metric=eval_loss\b.*[?&]x=time\b/);
    await page.reload();
    await page.getByTestId('compare-metric').waitFor();
    expect(await page.getByTestId('compare-metric').inputValue()).toBe('eval_loss');
    expect(await page.getByTestId('compare-axis').inputValue()).toBe('time');
    await page.getByTestId('compare-axis').selectOption('step');
    await page.getByTestId('compare-metric').selectOption('loss');
    await expect.poll(() => page.url()).not.toMatch(/metric=|x=/);

    // an address pasted while the view is open (a shared link) replaces the selection
    const both = /ids=(\d+),(\d+)/.exec(page.url())!;
    await page.evaluate((id) => (location.hash = `#/compare?ids=${id}`), both[1]);
    await expect.poll(seriesPoints).toEqual([10]);
    await page.evaluate((ids) => (location.hash = `#/compare?ids=${ids}`), `${both[1]},${both[2]}`);
    await expect.poll(seriesPoints).toEqual([10, 10]);

    const lr = page.locator('[data-testid="compare-diff-row"][data-path="training.learning_rate"]');
    await lr.waitFor();
    expect((await lr.locator('td').allTextContents()).sort()).toEqual(['0.0002', '0.001']);
    // only differing fields: the model and the data are the same in both
    expect(await page.locator('[data-testid="compare-diff-row"][data-path="model.path"]').count()).toBe(0);
    expect(await page.getByTestId('compare-results').textContent()).toContain('20 / 20');
    await page.waitForTimeout(500); // the chart redraw is throttled
    await shot('compare');
    await lr.scrollIntoViewIfNeeded();
    await shot('compare-diff');

    // the address preselects: a reload keeps both runs picked
    await page.reload();
    await expect.poll(seriesPoints).toEqual([10, 10]);

    await setLocale('zh-CN');
    await page.getByTestId('compare-diff-row').first().waitFor();
    expect(await page.locator('main h1').textContent()).not.toBe('Compare runs');
    await expect.poll(seriesPoints).toEqual([10, 10]);
    await page.waitForTimeout(500);
    await shot('compare-zh');
    await go('#/runs');
    await page.getByTestId('runs-table').waitFor();
    await shot('runs-zh');
    await setLocale('en');
  });

  it('shows the model catalog and the demo model inspected as supported', async () => {
    await go('#/models');
    await page.getByTestId('model-inspect').waitFor();
    await page.getByTestId('model-supported').waitFor();
    expect(await page.getByTestId('model-supported').getAttribute('data-supported')).toBe('true');
    expect(await page.getByTestId('model-architecture').textContent()).toBe('LlamaForCausalLM');
    expect(await page.getByTestId('model-parameters').textContent()).toMatch(/590/);
    expect(await page.getByTestId('catalog-family').count()).toBeGreaterThanOrEqual(10);
    await shot('models');

    // a catalog entry that is not downloaded: its HF id, a download button and the CLI equivalent
    await page.locator('[data-testid="catalog-model"]', { hasText: 'THUDM/chatglm2-6b' }).click();
    await page.getByTestId('catalog-detail').waitFor();
    expect(await page.getByTestId('catalog-download').isEnabled()).toBe(true);
    expect(await page.getByTestId('catalog-cli').textContent()).toBe('llms-train model download THUDM/chatglm2-6b');

    // model folders are settings: add one, see it saved, remove it
    const dir = path.join(app.home, 'more-models');
    await page.getByTestId('model-dir-input').fill(dir);
    await page.getByTestId('model-dir-add').click();
    await page.getByTestId('model-dirs').getByText(dir).waitFor();
    expect((await (await fetch(`${app.origin}/api/getSettings`, { method: 'POST', headers: { 'X-LLMT-Token': app.token }, body: '{}' })).json()).result.modelDirs).toEqual([dir]);
    await page.getByRole('button', { name: `Remove the folder ${dir}` }).click();
    await page.getByTestId('model-dirs').waitFor({ state: 'detached' });
  });

  it('previews the sample dataset with trained segments, and imports files with the picker and by drag-and-drop', async () => {
    await go('#/datasets');
    await page.getByTestId('dataset-preview').waitFor();
    expect(await page.getByTestId('dataset-format').textContent()).toBe('promptcblue');
    expect(Number(await page.getByTestId('dataset-records').textContent())).toBeGreaterThan(0);
    await expect.poll(() => page.getByTestId('dataset-row').count()).toBe(5);
    expect(await page.getByTestId('trained-segment').count()).toBeGreaterThanOrEqual(5);
    expect(await page.getByTestId('dataset-trained').textContent()).toMatch(/%$/);
    await shot('datasets');

    // the file picker: a small file whose third line is broken
    const bad = [
      JSON.stringify({ input: '问题一', target: '答案一', type: 'gen' }),
      JSON.stringify({ input: '问题二', target: '答案二', type: 'gen' }),
      '{"input": "broken',
      JSON.stringify({ input: '问题四', target: '答案四', type: 'cls' }),
    ].join('\n');
    await page.getByTestId('dataset-file-input').setInputFiles({ name: 'with-bad-line.jsonl', mimeType: 'application/json', buffer: Buffer.from(bad) });
    await page.getByTestId('datasets-notice').getByText('with-bad-line.jsonl').waitFor();
    await page.getByTestId('dataset-errors').waitFor();
    expect(await page.getByTestId('dataset-errors').textContent()).toMatch(/line 3\b/);
    expect(await page.getByTestId('dataset-records').textContent()).toBe('4');
    expect(fs.existsSync(path.join(app.home, 'datasets', 'with-bad-line.jsonl'))).toBe(true);
    await page.getByTestId('dataset-errors').scrollIntoViewIfNeeded();
    await shot('datasets-import');

    // drag-and-drop of a file onto the drop zone
    await page.getByTestId('dataset-dropzone').evaluate((zone) => {
      const dt = new DataTransfer();
      dt.items.add(new File(['{"instruction":"Say hi","input":"","output":"hi"}\n'], 'dropped.jsonl', { type: 'application/json' }));
      zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
      zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await page.getByTestId('datasets-notice').getByText('dropped.jsonl').waitFor();
    await expect.poll(() => page.getByTestId('dataset-format').textContent()).toBe('alpaca');
    await expect.poll(() => page.getByTestId('dataset-item').count()).toBe(5);

    // a gzip-compressed file through the picker: its bytes arrive as they are (base64), not mangled as text
    const gz = zlib.gzipSync(Buffer.from([JSON.stringify({ input: '压缩的问题', target: '答' }), JSON.stringify({ input: 'q2', target: 'a2' })].join('\n')));
    await page.getByTestId('dataset-file-input').setInputFiles({ name: 'packed.jsonl.gz', mimeType: 'application/gzip', buffer: gz });
    await page.getByTestId('datasets-notice').getByText('packed.jsonl.gz').waitFor();
    await expect.poll(() => page.getByTestId('dataset-records').textContent()).toBe('2');
    expect(fs.readFileSync(path.join(app.home, 'datasets', 'packed.jsonl.gz')).equals(gz)).toBe(true);
    const items = await page.getByTestId('dataset-item').count();
    // the same file again is the same entry, not a second copy; an empty file is added with a warning that says so
    await page.getByTestId('dataset-file-input').setInputFiles({ name: 'packed.jsonl.gz', mimeType: 'application/gzip', buffer: gz });
    await page.getByTestId('datasets-notice').getByText('packed.jsonl.gz').waitFor();
    expect(await page.getByTestId('dataset-item').count()).toBe(items);
    expect(fs.readdirSync(path.join(app.home, 'datasets')).filter((n) => n.startsWith('packed'))).toEqual(['packed.jsonl.gz']);
    await page.getByTestId('dataset-file-input').setInputFiles({ name: 'empty.jsonl', mimeType: 'application/json', buffer: Buffer.alloc(0) });
    await page.getByTestId('datasets-warning').waitFor();
    expect(await page.getByTestId('datasets-warning').textContent()).toMatch(/holds no records \(the file is empty\)/);
    // removed after a confirmation: the entry and the imported copy go
    const before = await page.getByTestId('dataset-item').count();
    page.once('dialog', (d) => void d.accept());
    await page.locator('[data-testid="dataset-item"]', { hasText: 'empty.jsonl' }).getByTestId('dataset-remove').click();
    await expect.poll(() => page.getByTestId('dataset-item').count()).toBe(before - 1);
    expect(await page.getByTestId('datasets-notice').textContent()).toMatch(/Removed empty\.jsonl and its imported copy/);
    expect(fs.existsSync(path.join(app.home, 'datasets', 'empty.jsonl'))).toBe(false);

    // the wheel over the sidebar never scrolls the window: the frame stays in place (the screen-reader-only spans
    // once made the document taller than the window)
    await page.mouse.move(60, 400);
    await page.mouse.wheel(0, 3000);
    await page.waitForTimeout(100);
    expect(await page.evaluate(() => ({ y: window.scrollY, over: document.documentElement.scrollHeight - window.innerHeight }))).toEqual({ y: 0, over: 0 });
  });

  it('deletes a run with its output folder after confirmation, and refuses a running one with the API error', async () => {
    await go('#/runs');
    await expect.poll(() => rows().count()).toBe(2);
    const low = page.locator('[data-testid="run-row"]', { hasText: 'lr-low' });
    expect(fs.existsSync(out('lr-low'))).toBe(true);
    await low.getByTestId('run-delete').click();
    await page.getByTestId('delete-dialog').waitFor();
    await expect.poll(() => page.getByTestId('delete-folder').textContent()).toBe(out('lr-low'));
    expect(await page.getByTestId('delete-files').isChecked()).toBe(true);
    await shot('runs-delete');
    await page.getByTestId('delete-confirm').click();
    await page.getByTestId('runs-notice').waitFor();
    await expect.poll(() => rows().count()).toBe(1);
    expect(fs.existsSync(out('lr-low'))).toBe(false);
    expect(fs.existsSync(out('lr-high'))).toBe(true);

    // a run still training (a CLI run beside the app) cannot be deleted: the dialog shows the API's error
    longRun = spawn(process.execPath, [CLI, ...trainArgs('long', '1e-3', 100_000)], { env: { ...process.env, LLMS_TRAIN_HOME: app.home }, stdio: 'ignore' });
    const running = page.locator('[data-testid="run-row"][data-status="running"]');
    await running.waitFor({ timeout: 30_000 });
    await running.getByTestId('run-delete').click();
    await page.getByTestId('delete-confirm').click();
    await page.getByTestId('delete-error').waitFor();
    expect(await page.getByTestId('delete-error').textContent()).toMatch(/CONFLICT.*running/s);
    await page.getByTestId('delete-cancel').click();
    expect(await rows().count()).toBe(2);
    const exited = new Promise((r) => longRun!.once('exit', r));
    longRun.kill('SIGINT');
    await exited;
  });

  it('ran without console errors (but the refused delete: 409)', () => {
    expect(consoleErrors.filter((e) => !/status of 409 \(Conflict\)/.test(e))).toEqual([]);
  });
});
