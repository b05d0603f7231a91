// Training an adapter further, in Chromium against `llms-train serve`: a LoRA run's checkpoint row offers "Train
// further", which opens the wizard on that run's settings with the checkpoint as the adapter to continue (the seed's
// --peft_path); the method step shows what the adapter holds instead of LoRA's knobs, a folder that is no adapter is
// named and blocks Next, the review's command line says --peft_path, and the launched run starts from it.
// "New run from these settings" opens the wizard on a run's own settings with a fresh adapter.
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { callApi, ROOT, type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];
let firstRun = 0;
let checkpoint = '';

const api = <T>(method: string, body: unknown): Promise<T> => callApi<T>(app, method, body);
type RunInfo = { status: string; outputDir: string; spec: { lora: Record<string, unknown> } };

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  const models = await api<{ path: string }[]>('listModels', {});
  const demo = models.find((m) => /llms-train-demo/.test(m.path))!.path;
  const run = await api<{ id: number }>('startRun', {
    spec: {
      name: 'first adapter',
      model: { path: demo },
      method: 'lora',
      lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj'] },
      data: { train: path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'train.json'), max_source_length: 64, max_target_length: 16 },
      training: { max_steps: 4, micro_batch_size: 4, learning_rate: 1e-3, warmup_steps: 0 },
      output: { dir: path.join(app.home, 'runs', 'first'), logging_steps: 1, save_steps: 2, eval_steps: 0 },
    },
  });
  firstRun = run.id;
  // (expect.poll belongs to tests: a plain wait here)
  for (const t0 = Date.now(); ; ) {
    const st = (await api<RunInfo>('getRun', { id: firstRun })).status;
    if (st === 'completed') break;
    if (st === 'failed' || Date.now() - t0 > 120_000) throw new Error(`the first run ended ${st}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  checkpoint = path.join(app.home, 'runs', 'first', 'checkpoint-2');
  ({ browser, page } = await openPage({ width: 1360, height: 900 }, consoleErrors));
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe('early stopping and the best checkpoint on the run page', () => {
  it('says the run ended early and which checkpoint the output holds', async () => {
    const models = await api<{ path: string }[]>('listModels', {});
    const demo = models.find((m) => /llms-train-demo/.test(m.path))!.path;
    const data = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
    const run = await api<{ id: number }>('startRun', {
      spec: {
        name: 'early',
        model: { path: demo },
        method: 'lora',
        lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj'] },
        data: { train: path.join(data, 'train.json'), validation: path.join(data, 'test.json'), max_source_length: 64, max_target_length: 16 },
        training: { max_steps: 12, micro_batch_size: 4, learning_rate: 1e-3, warmup_steps: 0 },
        // no drop of the eval loss is worth 10: the third evaluation ends the run
        output: { dir: path.join(app.home, 'runs', 'early'), logging_steps: 1, save_steps: 2, eval_steps: 2, save_total_limit: 1, load_best_model_at_end: true, early_stopping_patience: 2, early_stopping_threshold: 10 },
      },
    });
    await page.goto(`${app.url}#/runs/${run.id}`);
    await expect.poll(async () => page.getByTestId('run-status').textContent(), { timeout: 120_000, interval: 500 }).toBe('completed');
    await expect.poll(async () => (await page.getByTestId('run-output-note').allTextContents()).join(' | '), { timeout: 10_000 }).toMatch(
      /^Ended early at step 6 of 12: the eval loss stopped improving \(early_stopping_patience 2\)\. \| The output holds the best checkpoint \(load_best_model_at_end\): step \d+, eval loss [\d.]+/,
    );
    // rotation (save_total_limit 1): the best and the newest checkpoints are left, and listed
    const steps = await page.getByTestId('checkpoint-row').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-step'))));
    expect(steps.length).toBeLessThanOrEqual(2);
    expect(steps).toContain(6);
  }, 180_000);
});

describe('Train further', () => {
  it("opens the wizard on the run's settings with the checkpoint as the adapter to continue", async () => {
    await page.goto(`${app.url}#/runs/${firstRun}`);
    await page.getByTestId('checkpoints').waitFor();
    await page.locator('[data-testid="checkpoint-row"][data-step="2"] [data-testid="ckpt-train-further"]').click();
    await page.getByTestId('screen-new').waitFor();
    expect(await page.evaluate(() => location.hash)).toBe('#/new?step=2');
    // the dataset step first, on the run's data
    await page.getByTestId('dataset-preview').waitFor();
    await page.getByTestId('wizard-step-2').click();
    expect(await page.getByTestId('continue-adapter-check').isChecked()).toBe(true);
    expect(await page.getByTestId('init-adapter').inputValue()).toBe(checkpoint);
    await page.getByTestId('adapter-info').waitFor();
    const info = (await page.getByTestId('adapter-info').textContent()) ?? '';
    expect(info).toMatch(/LoRA\s+r 4, alpha 8, dropout 0; target modules: q_proj, v_proj/);
    // LoRA's own knobs do not apply: the adapter decides
    expect(await page.getByTestId('lora-r').count()).toBe(0);
    // the pick list offers this run's adapters on the same model
    const options = await page.getByTestId('init-adapter-pick').locator('option').allTextContents();
    expect(options).toEqual(expect.arrayContaining([`run #${firstRun} first adapter — final`, `run #${firstRun} first adapter — step 2`]));
    await screenshot(page, 'wizard-continue-adapter');
  });

  it('names a folder that is no adapter and blocks Next until a real one is given', async () => {
    await page.getByTestId('init-adapter').fill(path.join(app.home, 'runs'));
    await page.getByTestId('init-adapter-error').waitFor();
    expect(await page.getByTestId('init-adapter-error').textContent()).toMatch(/holds no adapter_config\.json, so it is not a PEFT adapter folder/);
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    await page.getByTestId('init-adapter').fill('');
    await page.getByTestId('field-error-init-adapter').waitFor();
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    await page.getByTestId('init-adapter-pick').selectOption(checkpoint);
    await page.getByTestId('adapter-info').waitFor();
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(false);
  });

  it('reviews with --peft_path and launches a run that starts from the checkpoint', async () => {
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    const cli = (await page.getByTestId('review-cli').textContent()) ?? '';
    expect(cli).toContain(`--peft_path ${checkpoint}`);
    expect(cli).not.toContain('--lora_r');
    // the core read the adapter: the reviewed spec holds its configuration
    const spec = JSON.parse((await page.getByTestId('review-spec').textContent()) ?? '{}') as { lora: Record<string, unknown>; output: { dir: string } };
    expect(spec.lora).toMatchObject({ r: 4, alpha: 8, target_modules: ['q_proj', 'v_proj'], init_adapter: checkpoint });
    expect(spec.output.dir).not.toBe(path.join(app.home, 'runs', 'first')); // a fresh output folder
    await page.getByTestId('wizard-launch').click();
    await page.getByTestId('screen-run').waitFor();
    const id = Number(/#\/runs\/(\d+)$/.exec(page.url())![1]);
    expect(id).not.toBe(firstRun);
    await expect.poll(async () => page.getByTestId('run-status').textContent(), { timeout: 120_000, interval: 500 }).toBe('completed');
    const run = await api<RunInfo>('getRun', { id });
    expect(run.spec.lora).toMatchObject({ r: 4, init_adapter: checkpoint });
  }, 180_000);

  it('"New run from these settings" opens the wizard on them with a fresh adapter', async () => {
    await page.goto(`${app.url}#/runs/${firstRun}`);
    await page.getByTestId('run-again').click();
    await page.getByTestId('screen-new').waitFor();
    await page.getByTestId('wizard-step-2').click();
    expect(await page.getByTestId('continue-adapter-check').isChecked()).toBe(false);
    expect(await page.getByTestId('lora-r').inputValue()).toBe('4');
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    const cli = (await page.getByTestId('review-cli').textContent()) ?? '';
    expect(cli).toContain('--lora_r 4');
    expect(cli).toContain('--lora_target_modules q_proj,v_proj');
    expect(cli).not.toContain('--peft_path');
    // (the folder that is no adapter was answered with a 400, which Chromium logs; nothing else)
    expect(consoleErrors.filter((e) => !/status of 400 \(Bad Request\)/.test(e))).toEqual([]);
    expect(consoleErrors.length).toBeLessThanOrEqual(2);
  });
});
