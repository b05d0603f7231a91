// Renderer behaviours, each checked in Chromium against `llms-train serve`: the wizard's
// recipe follows the chosen model, its draft and step survive navigation, Back and reload, its
// steps cannot be skipped past invalid fields and errors show next to the fields, a malformed hash or a
// link to a run that is not there shows "Run not found" instead of a blank page or unhandled rejections,
// and the charts' x-axis title follows the axis choice.
import fs from 'node:fs';
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { callApi, type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];
const pageErrors: string[] = [];
const inspects: string[] = [];
let copyPath = '';

const api = <T>(method: string, body: unknown): Promise<T> => callApi<T>(app, method, body);
const value = async (testid: string) => page.getByTestId(testid).inputValue();
const hash = () => page.evaluate(() => location.hash);

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  // a second model that is not the demo: a copy of the demo's folder under another name
  const models = await api<{ path: string }[]>('listModels', {});
  const demo = models.find((m) => /llms-train-demo/.test(m.path))!.path;
  copyPath = path.join(app.home, 'other-models', 'tiny-copy');
  fs.cpSync(demo, copyPath, { recursive: true });
  ({ browser, page } = await openPage({ width: 1360, height: 900 }, consoleErrors));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('request', (r) => {
    if (r.url().endsWith('/api/inspectModel')) inspects.push(r.postData() ?? '');
  });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe('routes', () => {
  it('a malformed hash does not blank the app', async () => {
    await page.goto(`${app.url}#/runs/%E0%A4%A`);
    await page.getByTestId('run-not-found').waitFor();
    expect(await page.getByTestId('nav-runs').isVisible()).toBe(true);
    expect(pageErrors).toEqual([]);
  });

  it('links to missing or invalid runs show one "Run not found" with a link to Runs', async () => {
    for (const arg of ['abc', '-1', '1.5', '999999']) {
      await page.goto(`${app.url}#/runs/${arg}`);
      await page.getByTestId('run-not-found').waitFor();
      expect(await page.getByTestId('run-not-found').count()).toBe(1);
      const text = (await page.getByTestId('run-not-found').textContent()) ?? '';
      expect(text).toContain('Run not found');
      expect(text).not.toMatch(/Invalid request|expected number/);
      // let any late request settle: no unhandled rejection
      await page.waitForTimeout(300);
      expect(pageErrors, arg).toEqual([]);
    }
    await page.getByTestId('run-not-found-link').click();
    await page.getByTestId('screen-runs').waitFor();
  });

  it('the x-axis title follows the axis choice', async () => {
    const store = Store.open(path.join(app.home, 'llms-train.db'));
    let id: number;
    try {
      id = store.runs.create({ name: 'axis', spec: { model: { path: '/m' }, data: { train: '/t' }, output: { dir: '/o' }, training: { max_steps: 10 } }, specVersion: 1 }).id;
      store.metrics.add(id, Array.from({ length: 10 }, (_, i) => ({ step: i + 1, name: 'loss', value: 3 - i * 0.1, time: 1_700_000_000 + i })));
    } finally {
      store.close();
    }
    await page.goto(`${app.url}#/runs/${id}`);
    await page.getByTestId('chart-loss').waitFor();
    await expect.poll(() => page.getByTestId('chart-loss').getAttribute('data-x-label')).toBe('step');
    await page.getByTestId('x-axis').selectOption('time');
    await expect.poll(() => page.getByTestId('chart-loss').getAttribute('data-x-label')).toBe('seconds');
    await expect.poll(() => page.getByTestId('chart-lr').getAttribute('data-x-label')).toBe('seconds');
    await page.getByTestId('x-axis').selectOption('step');
    await expect.poll(() => page.getByTestId('chart-loss').getAttribute('data-x-label')).toBe('step');
  });
});

describe('New fine-tune wizard', () => {
  it('another model gets the general recipe, not the demo’s; hand edits are kept, one inspection each', async () => {
    await page.goto(`${app.url}#/new`);
    await page.evaluate(() => sessionStorage.clear());
    await page.reload();
    await page.getByTestId('model-supported').waitFor();
    expect(await page.getByTestId('model-option-0').isChecked()).toBe(true);
    inspects.length = 0;
    await page.getByTestId('model-path-input').fill(copyPath);
    await page.getByTestId('model-path-use').click();
    await expect.poll(async () => page.getByTestId('model-inspect').textContent()).toContain('tiny-copy');
    await page.getByTestId('model-supported').waitFor();
    await page.waitForTimeout(300);
    expect(inspects.filter((b) => b.includes('tiny-copy'))).toHaveLength(1);
    // the error or result appears once, in the inspection pane
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('method').waitFor();
    expect(await page.getByTestId('method-lora').isChecked()).toBe(true);
    await page.getByTestId('wizard-step-3').click();
    expect(Number(await value('knob-lr'))).toBe(2e-4);
    expect(Number(await value('knob-max-steps'))).toBe(200);
    expect(Number(await value('knob-micro-batch'))).toBe(8);

    // back to the demo: its recipe again; a knob changed by hand survives the next switch
    await page.getByTestId('wizard-step-0').click();
    await page.getByTestId('model-option-0').check();
    await page.getByTestId('model-supported').waitFor();
    await page.getByTestId('wizard-step-3').click();
    await expect.poll(() => value('knob-max-steps')).toBe('300');
    expect(Number(await value('knob-lr'))).toBe(1e-3);
    await page.getByTestId('knob-max-steps').fill('123');
    await page.getByTestId('wizard-step-0').click();
    await page.getByTestId('model-path-input').fill(copyPath);
    await page.getByTestId('model-path-use').click();
    await page.getByTestId('model-supported').waitFor();
    await page.getByTestId('wizard-step-3').click();
    await expect.poll(() => value('knob-lr')).toBe('0.0002');
    expect(await value('knob-max-steps')).toBe('123');
    await page.getByTestId('wizard-step-2').click();
    expect(await page.getByTestId('method-lora').isChecked()).toBe(true);
  });

  it('invalid fields block Next and the step pills, and show next to the field', async () => {
    await page.getByTestId('wizard-step-2').click();
    const boxes = page.getByTestId('target-modules').locator('input[type=checkbox]');
    const ticked: number[] = [];
    for (let i = 0; i < (await boxes.count()); i++) {
      if (await boxes.nth(i).isChecked()) {
        ticked.push(i);
        await boxes.nth(i).uncheck();
      }
    }
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    expect(await page.getByTestId('wizard-step-5').isDisabled()).toBe(true);
    expect(await page.getByTestId('wizard-step-3').isDisabled()).toBe(true);
    await boxes.nth(ticked[0] ?? 0).check();
    expect(await page.getByTestId('wizard-step-5').isDisabled()).toBe(false);

    for (const bad of ['0', '-3', '1.5', '']) {
      await page.getByTestId('lora-r').fill(bad);
      await page.getByTestId('field-error-lora-r').waitFor();
      expect(await page.getByTestId('wizard-next').isDisabled(), bad).toBe(true);
      expect(await page.getByTestId('wizard-step-5').isDisabled(), bad).toBe(true);
    }
    // r above the model's smaller layer side: a warning, not a block
    await page.getByTestId('lora-r').fill('100000');
    await page.getByTestId('field-warning-lora-r').waitFor();
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(false);
    await page.getByTestId('lora-r').fill('8');
    expect(await page.getByTestId('field-error-lora-r').count()).toBe(0);

    // an invalid step reached through the address still cannot launch; Review lists the fault once, with its step
    await page.getByTestId('wizard-step-3').click();
    await page.getByTestId('knob-lr').fill('');
    await page.getByTestId('field-error-lr').waitFor();
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    await page.evaluate(() => (location.hash = '#/new?step=6'));
    await page.getByTestId('review-issues').waitFor();
    const items = page.getByTestId('review-issue');
    expect(await items.count()).toBe(1);
    expect(await items.first().getAttribute('data-step')).toBe('4');
    expect(await page.getByTestId('wizard-launch').isDisabled()).toBe(true);
    await page.getByTestId('review-issue-go').click();
    await page.getByTestId('knob-lr').fill('0.0002');

    // warmup not below max_steps: a warning beside the field and on Review, Launch stays possible
    await page.getByTestId('knob-max-steps').fill('6');
    await page.getByTestId('field-warning-warmup').waitFor();
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-warning').count()).toBeGreaterThan(0);
    expect(await page.getByTestId('review-issues').count()).toBe(0);
    expect(await page.getByTestId('wizard-launch').isDisabled()).toBe(false);
  });

  it('DoRA: the LoRA step\'s checkbox reaches the RunSpec and the command line, and a full fine-tune drops it', async () => {
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('method-lora').check();
    expect(await page.getByTestId('lora-dora').isChecked()).toBe(false);
    await page.getByTestId('lora-dora').check();
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).toContain('--use_dora');
    // a full fine-tune has no adapter: the choice is kept for LoRA but not sent
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('method-full').check();
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).not.toContain('--use_dora');
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('method-lora').check();
    expect(await page.getByTestId('lora-dora').isChecked()).toBe(true);
    // LoRA on the LM head: offered beside the linears; with DoRA it is named as an issue, without it reaches the command line
    await page.getByTestId('target-lm_head').check();
    await expect.poll(async () => page.getByTestId('field-error-targets').textContent()).toMatch(/DoRA does not apply to lm_head/);
    await page.getByTestId('lora-dora').uncheck();
    await expect.poll(async () => page.getByTestId('field-error-targets').count()).toBe(0);
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    await expect.poll(async () => page.getByTestId('review-cli').textContent()).toMatch(/--lora_target_modules \S*lm_head/);
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('target-lm_head').uncheck();
  });

  it('ZeRO-1 and ZeRO-2 are offered for a full fine-tune on several workers only, and reach the command line', async () => {
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('method-full').check();
    await page.getByTestId('wizard-step-4').click();
    await page.getByTestId('cpu-workers').fill('1');
    expect(await page.getByTestId('knob-zero').count()).toBe(0); // one worker: nothing to shard
    await page.getByTestId('cpu-workers').fill('2');
    await page.getByTestId('knob-zero').selectOption('1');
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).toMatch(/--nproc_per_node 2\b[\s\S]*--zero_stage 1\b|--zero_stage 1\b[\s\S]*--nproc_per_node 2\b/);
    await page.getByTestId('wizard-step-4').click();
    await page.getByTestId('knob-zero').selectOption('2');
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    await expect.poll(async () => page.getByTestId('review-cli').textContent()).toMatch(/--zero_stage 2\b/);
    // LoRA: its optimizer state is small, the choice is kept but not sent
    await page.getByTestId('wizard-step-2').click();
    await page.getByTestId('method-lora').check();
    await page.getByTestId('wizard-step-4').click();
    expect(await page.getByTestId('knob-zero').count()).toBe(0);
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).not.toContain('--zero_stage');
    await page.getByTestId('wizard-step-4').click();
    await page.getByTestId('cpu-workers').fill('1');
  });

  it('more training files: each is checked as it is added, and the run trains on all of them', async () => {
    await page.getByTestId('wizard-step-1').click();
    const values = await page.getByTestId('extra-data-select').locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value));
    const testJson = values.find((v) => /test\.json$/.test(v))!;
    expect(testJson, values.join(' ')).toBeTruthy();
    await page.getByTestId('extra-data-select').selectOption(testJson);
    await page.getByTestId('extra-data-add').click();
    await expect.poll(async () => page.getByTestId('extra-data-row').textContent(), { timeout: 10_000 }).toMatch(/150 records, promptcblue/);
    await screenshot(page, 'wizard-more-data');
    // a file that is not there is named and blocks Next
    await page.getByTestId('extra-data-path').fill('/nowhere/more.json');
    await page.getByTestId('extra-data-add').click();
    await page.getByTestId('field-error-extra-data').waitFor();
    expect(await page.getByTestId('field-error-extra-data').textContent()).toContain('/nowhere/more.json');
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    await page.getByTestId('extra-data-row').nth(1).getByTestId('extra-data-remove').click();
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(false);
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).toMatch(new RegExp(`--train_file \\S*train\\.json,${testJson.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    const spec = JSON.parse((await page.getByTestId('review-spec').textContent()) ?? '{}') as { data: { train: unknown } };
    expect(spec.data.train).toEqual([expect.stringMatching(/train\.json$/), testJson]);
    await page.getByTestId('wizard-step-1').click();
    await page.getByTestId('extra-data-remove').click();
    expect(await page.getByTestId('extra-data-row').count()).toBe(0);
  });

  it('checkpoint retention, the best checkpoint and early stopping reach the command line, and need evaluations', async () => {
    await page.getByTestId('wizard-step-3').click();
    await page.getByTestId('knob-save-total-limit').fill('2');
    await page.getByTestId('knob-es-patience').fill('3');
    await page.getByTestId('knob-es-threshold').fill('0.01');
    await page.getByTestId('knob-load-best').check();
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    const cli = (await page.getByTestId('review-cli').textContent()) ?? '';
    for (const f of ['--save_total_limit 2', '--load_best_model_at_end', '--early_stopping_patience 3', '--early_stopping_threshold 0.01']) expect(cli).toContain(f);
    // without validation data there is no eval loss to compare: both are named at their fields and block Next
    await page.getByTestId('wizard-step-1').click();
    await page.locator('input[type=radio][value=none]').check();
    await page.getByTestId('wizard-step-3').click();
    await page.getByTestId('field-error-load-best').waitFor();
    expect(await page.getByTestId('field-error-load-best').textContent()).toMatch(/choose validation data/);
    expect(await page.getByTestId('field-error-es-patience').textContent()).toMatch(/choose validation data/);
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    await page.getByTestId('wizard-step-1').click();
    await page.locator('input[type=radio][value=file]').check();
    await page.getByTestId('wizard-step-3').click();
    expect(await page.getByTestId('field-error-load-best').count()).toBe(0);
    await page.getByTestId('knob-load-best').uncheck();
    await page.getByTestId('knob-es-patience').fill('0');
    await page.getByTestId('knob-save-total-limit').fill('0');
  });

  it('a run name typed on the review reaches its command line (what Save as config and Launch use)', async () => {
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).not.toContain('--run_name');
    await page.getByTestId('run-name').fill('lr sweep a');
    await expect.poll(async () => page.getByTestId('review-cli').textContent(), { timeout: 10_000 }).toContain("--run_name 'lr sweep a'");
    expect(await page.getByTestId('review-spec').textContent()).toContain('"name": "lr sweep a"');
    await page.getByTestId('run-name').fill('');
    await expect.poll(async () => page.getByTestId('review-cli').textContent(), { timeout: 10_000 }).not.toContain('--run_name');
  });

  it('a dataset with a bad line: named, blocks Next until the user chooses to leave bad records out (on_error skip)', async () => {
    const bad = path.join(app.home, 'bad.jsonl');
    const good = (i: number) => JSON.stringify({ input: `问题 ${i}：这是什么？`, target: `答案 ${i}` });
    fs.writeFileSync(bad, [good(1), '{"input": "broken', good(2), good(3)].join('\n') + '\n');
    await page.getByTestId('wizard-step-1').click();
    const before = await value('dataset-path');
    await page.getByTestId('dataset-path').fill(bad);
    await page.getByTestId('dataset-errors').waitFor({ timeout: 15_000 });
    expect(await page.getByTestId('dataset-errors').textContent()).toMatch(/line 2/);
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    expect(await page.getByTestId('skip-bad-help').textContent()).toMatch(/fix the file, or leave them out/);
    await page.getByTestId('skip-bad').check();
    await expect.poll(async () => page.getByTestId('wizard-next').isDisabled()).toBe(false);
    await page.getByTestId('wizard-step-5').click();
    await page.getByTestId('review-cli').waitFor();
    expect(await page.getByTestId('review-cli').textContent()).toContain('--on_error skip');
    await page.getByTestId('wizard-step-1').click();
    await page.getByTestId('skip-bad').uncheck();
    await page.getByTestId('dataset-path').fill(before);
    await expect.poll(async () => page.getByTestId('dataset-errors').count(), { timeout: 15_000 }).toBe(0);
  });

  it('an empty dataset is named beside its path and blocks Next', async () => {
    const empty = path.join(app.home, 'empty.json');
    fs.writeFileSync(empty, '[]');
    await page.getByTestId('wizard-step-1').click();
    const before = await value('dataset-path');
    await page.getByTestId('dataset-path').fill(empty);
    await page.getByTestId('field-error-data').waitFor({ timeout: 15_000 });
    expect(await page.getByTestId('field-error-data').textContent()).toMatch(/no records/);
    expect(await page.getByTestId('wizard-next').isDisabled()).toBe(true);
    await page.getByTestId('dataset-path').fill(before);
    await expect.poll(async () => page.getByTestId('field-error-data').count(), { timeout: 15_000 }).toBe(0);
  });

  it('keeps the draft and the step across navigation, Back and reload', async () => {
    await page.getByTestId('wizard-step-3').click();
    await page.getByTestId('knob-max-steps').fill('77');
    expect(await hash()).toBe('#/new?step=4');
    await page.getByTestId('nav-runs').click();
    await page.getByTestId('screen-runs').waitFor();
    await page.goBack();
    await page.getByTestId('knob-max-steps').waitFor();
    expect(await hash()).toBe('#/new?step=4');
    expect(await value('knob-max-steps')).toBe('77');
    await page.reload();
    await page.getByTestId('knob-max-steps').waitFor();
    expect(await value('knob-max-steps')).toBe('77');
    expect(await value('knob-lr')).toBe('0.0002');
    // Back and Forward move between the steps visited
    await page.getByTestId('wizard-back').click();
    await page.getByTestId('method').waitFor();
    expect(await hash()).toBe('#/new?step=3');
    await page.goBack();
    await page.getByTestId('knob-max-steps').waitFor();
    await page.goForward();
    await page.getByTestId('method').waitFor();
    // away through the sidebar and back through it (#/new, no step): the step the draft was left at
    await page.getByTestId('nav-runs').click();
    await page.getByTestId('screen-runs').waitFor();
    await page.getByTestId('nav-new').click();
    await page.getByTestId('method').waitFor();
    expect(await hash()).toBe('#/new?step=3');
    expect(pageErrors).toEqual([]);
  });
});

describe('chat and compare', () => {
  it('Chat offers a base model named by the link even when it is not registered', async () => {
    await page.goto(`${app.url}#/chat?model=${encodeURIComponent(copyPath)}`);
    const select = page.getByTestId('chat-model');
    await select.waitFor();
    await expect.poll(() => select.inputValue()).toBe(copyPath);
    expect(await select.locator('option:checked').textContent()).toBe('tiny-copy');
  });

  it('Compare names ids that are no run once and leaves them out', async () => {
    await page.goto(`${app.url}#/compare?ids=abc,999`);
    await page.getByTestId('compare-unknown').waitFor();
    await expect.poll(() => page.getByTestId('compare-unknown').textContent()).toMatch(/#abc, #999/);
    await expect.poll(() => page.evaluate(() => location.hash)).toBe('#/compare');
    expect(pageErrors).toEqual([]);
  });
});

