// The first fine-tune as a new user does it, in Chromium through browser mode: the wizard opens on the
// embedded defaults (demo model, sample dataset), walks through its six steps without typing a path,
// launches, the run view's charts receive points while it trains, stop writes a checkpoint and resume
// continues the same run to completion. Screenshots of each step go to test-results/screens/.
import fs from 'node:fs';
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { METRIC_POINT_BUDGET } from '../../src-main/api/downsample';
import { Store } from '../../src-main/core/store/store';
import { callApi, ROOT, type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];

const shot = (name: string) => screenshot(page, name);

const api = <T>(method: string, body: unknown): Promise<T> => callApi<T>(app, method, body);

const points = async (testid: string) => Number(await page.getByTestId(testid).getAttribute('data-points'));

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  ({ browser, page } = await openPage({ width: 1360, height: 900 }, consoleErrors));
});

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe('New fine-tune wizard', () => {
  it('opens on the demo model and shows its inspection', async () => {
    await page.goto(app.url);
    await page.getByTestId('screen-new').waitFor();
    await page.getByTestId('model-option-0').waitFor();
    expect(await page.getByTestId('model-option-0').isChecked()).toBe(true);
    await page.getByTestId('model-supported').waitFor();
    expect(await page.getByTestId('model-inspect').textContent()).toMatch(/llama/);
    // the catalog lists the seed's families with their Hugging Face ids
    const catalog = await page.getByTestId('model-catalog').textContent();
    for (const id of ['THUDM/chatglm2-6b', 'baichuan-inc/Baichuan-13B-Chat', 'EleutherAI/pythia-70m-deduped', 'TigerResearch/tigerbot-7b-sft']) expect(catalog).toContain(id);
    await shot('wizard-1-model');
  });

  it('previews the sample dataset with the trained tokens highlighted', async () => {
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('dataset-preview').waitFor();
    expect(await page.getByTestId('dataset-format').textContent()).toMatch(/promptcblue/);
    expect(await page.getByTestId('dataset-records').textContent()).toMatch(/800/);
    expect(await page.getByTestId('dataset-row').count()).toBeGreaterThan(0);
    expect(await page.getByTestId('trained-segment').count()).toBeGreaterThan(0);
    await shot('wizard-2-dataset');
  });

  it('offers the method, the knobs and the devices', async () => {
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('method').waitFor();
    // the demo recipe is full fine-tuning; LoRA shows the model's real module names as checkboxes
    expect(await page.getByTestId('method-full').isChecked()).toBe(true);
    await page.getByTestId('method-lora').check();
    const modules = await page.getByTestId('target-modules').textContent();
    for (const m of ['q_proj', 'v_proj', 'down_proj']) expect(modules).toContain(m);
    await shot('wizard-3-method');
    // QLoRA: LoRA on a 4-bit base (NF4 by default)
    await page.getByTestId('method-qlora').check();
    expect(await page.getByTestId('quant-type').inputValue()).toBe('nf4');
    await page.getByTestId('method-full').check();
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('knob-max-steps').waitFor();
    expect(Number(await page.getByTestId('knob-max-steps').inputValue())).toBe(300);
    await shot('wizard-4-training');
    await page.getByTestId('knob-max-steps').fill('120');
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('hardware').waitFor();
    expect(await page.getByTestId('device-cpu').isChecked()).toBe(true);
    await shot('wizard-5-hardware');
  });

  it('reviews the RunSpec with its estimate and CLI command', async () => {
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('review-cli').waitFor();
    const cli = (await page.getByTestId('review-cli').textContent()) ?? '';
    expect(cli).toMatch(/^llms-train train/);
    expect(cli).toContain('--use_lora False');
    expect(cli).toContain('--max_steps 120');
    expect(cli).toMatch(/--train_file \S*promptcblue-demo\/train\.json/);
    expect(await page.getByTestId('review-estimate').textContent()).toMatch(/Memory: about/);
    const spec = JSON.parse((await page.getByTestId('review-spec').textContent()) ?? '{}') as { method: string; training: { learning_rate: number } };
    expect(spec.method).toBe('full');
    expect(spec.training.learning_rate).toBe(0.001);
    // "Save as config" downloads the RunSpec as JSON
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('save-config').click()]);
    const saved = JSON.parse(fs.readFileSync((await download.path())!, 'utf8')) as { model: { path: string } };
    expect(saved.model.path).toMatch(/llms-train-demo/);
    await page.getByTestId('run-name').fill('wizard demo');
    await shot('wizard-6-review');
  });

  it('launches; the charts move while it trains; stop and resume finish the same run', async () => {
    await page.getByTestId('wizard-launch').click();
    await page.getByTestId('screen-run').waitFor();
    expect(page.url()).toMatch(/#\/runs\/\d+$/);
    const runId = Number(/#\/runs\/(\d+)$/.exec(page.url())![1]);
    // points arrive by push while it trains
    await expect.poll(() => points('chart-loss'), { timeout: 60_000, interval: 250 }).toBeGreaterThan(4);
    const first = await points('chart-loss');
    await expect.poll(() => points('chart-loss'), { timeout: 60_000, interval: 250 }).toBeGreaterThan(first);
    expect(await points('chart-lr')).toBeGreaterThan(0);
    await shot('run-live');
    // stop: the worker writes a checkpoint and the run is 'stopped'
    await page.getByTestId('run-stop').click();
    await expect.poll(async () => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('stopped');
    await page.getByTestId('checkpoints').waitFor();
    const stoppedAt = Number(((await page.getByTestId('run-step').textContent()) ?? '0').split('/')[0]);
    expect(stoppedAt).toBeGreaterThan(0);
    expect(stoppedAt).toBeLessThan(120);
    // resume continues the same run from its checkpoint to the end
    await page.getByTestId('run-resume').click();
    await expect.poll(async () => page.getByTestId('run-status').textContent(), { timeout: 120_000, interval: 500 }).toBe('completed');
    expect(page.url()).toMatch(new RegExp(`#/runs/${runId}$`));
    const run = await api<{ status: string; lastStep: number; bestEvalLoss: number | null }>('getRun', { id: runId });
    expect(run.status).toBe('completed');
    expect(run.lastStep).toBe(120);
    expect(run.bestEvalLoss).not.toBeNull();
    // one point per logged step: resuming recomputed the steps after the checkpoint instead of duplicating them
    const m = await api<{ points: [number, string, number | null, number][] }>('getMetrics', { id: runId, names: ['loss'] });
    const steps = m.points.map((p) => p[0]);
    expect(new Set(steps).size).toBe(steps.length);
    expect(steps.at(-1)).toBe(120);
    expect(await page.getByTestId('run-log').textContent()).toMatch(/resuming from/);
    await shot('run-completed');
    expect(consoleErrors).toEqual([]);
  }, 300_000);

  it('draws a 100,000-step run within the point budget, and shows a failed run’s code, message and hint', async () => {
    // a long finished run written straight into the app's database (as a CLI run on another process would)
    const store = Store.open(path.join(app.home, 'llms-train.db'));
    let id: number;
    try {
      const run = store.runs.create({ name: 'long run', spec: { model: { path: '/m' }, data: { train: '/t' }, output: { dir: '/o' }, training: { max_steps: 100_000 } }, specVersion: 1 });
      id = run.id;
      const pts = [];
      for (let step = 1; step <= 100_000; step++) pts.push({ step, name: 'loss', value: 2 + Math.exp(-step / 20_000) + 0.1 * Math.sin(step), time: 1_700_000_000 + step * 0.1 });
      store.metrics.add(id, pts);
      store.runs.markRunning(id, null);
      store.runs.finish(id, 'failed', { errorCode: 'NAN', errorMessage: 'the loss became NaN at step 100000', errorHint: 'Lower the learning rate or enable gradient clipping.' });
    } finally {
      store.close();
    }
    await page.goto(`${app.url}#/runs/${id}`);
    await page.getByTestId('run-error').waitFor();
    const err = await page.getByTestId('run-error').textContent();
    expect(err).toContain('NAN');
    expect(err).toContain('the loss became NaN');
    expect(err).toContain('Lower the learning rate');
    // raw and smoothed series: the core sends the 100,000 points downsampled to the point budget (min/max per
    // bucket), so the chart gets and draws a few thousand
    await expect.poll(() => points('chart-loss'), { timeout: 30_000 }).toBeGreaterThan(1000);
    expect(await points('chart-loss')).toBeLessThanOrEqual(2 * METRIC_POINT_BUDGET);
    await expect.poll(async () => Number(await page.getByTestId('chart-loss').getAttribute('data-drawn')), { timeout: 30_000 }).toBeGreaterThan(0);
    expect(Number(await page.getByTestId('chart-loss').getAttribute('data-drawn'))).toBeLessThanOrEqual(2 * METRIC_POINT_BUDGET);
    // the page stays usable: switching the axis to time redraws
    await page.getByTestId('x-axis').selectOption('time');
    await expect.poll(() => page.getByTestId('chart-loss').getAttribute('data-x-label'), { timeout: 30_000 }).toBe('seconds');
    expect(Number(await page.getByTestId('chart-loss').getAttribute('data-drawn'))).toBeLessThanOrEqual(2 * METRIC_POINT_BUDGET);
    await shot('run-100k-failed');
  }, 120_000);

  it('shows per-worker throughput and memory for a data-parallel run', async () => {
    const models = await api<{ path: string }[]>('listModels', {});
    const run = await api<{ id: number }>('startRun', {
      spec: {
        name: 'two workers',
        model: { path: models[0]!.path },
        data: { train: path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'train.json'), max_source_length: 128, max_target_length: 32 },
        training: { max_steps: 16, micro_batch_size: 4, learning_rate: 1e-3 },
        distributed: { nproc_per_node: 2 },
        output: { dir: path.join(app.home, 'runs', 'dp'), logging_steps: 2, save_steps: 100 },
      },
    });
    await page.goto(`${app.url}#/runs/${run.id}`);
    await expect.poll(async () => page.getByTestId('run-status').textContent(), { timeout: 120_000, interval: 500 }).toBe('completed');
    await expect.poll(() => points('chart-rank-tokens'), { timeout: 10_000 }).toBeGreaterThan(0);
    expect(await page.getByTestId('run-device').textContent()).toBe('CPU × 2 workers');
    expect(await page.getByTestId('chart-rank-memory').textContent()).toContain('Memory per worker');
    await shot('run-two-workers');
  }, 180_000);
});
