// End to end in a real browser: Debian's Chromium (Playwright) against `llms-train serve`.
import fs from 'node:fs';
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT, type Served, startCli } from '../helpers/app';
import { openPage } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  ({ browser, page } = await openPage({ width: 1280, height: 800 }, consoleErrors));
});

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

const screens = ['new', 'runs', 'compare', 'chat', 'models', 'datasets', 'settings'];

describe('workbench in Chromium', () => {
  it('loads from the printed URL and the status bar says CPU only', async () => {
    await page.goto(app.url);
    await page.getByTestId('status-devices').waitFor();
    expect(await page.getByTestId('status-devices').textContent()).toBe('CPU only');
    expect(await page.getByTestId('status-engine').textContent()).toMatch(/^Engine \d+\.\d+\.\d+$/);
    expect(await page.getByTestId('status-version').textContent()).toMatch(/LLMs-train v\d/);
    expect(await page.title()).toMatch(/LLMs-train/);
  });

  it('navigates to every screen', async () => {
    for (const s of screens) {
      await page.getByTestId(`nav-${s}`).click();
      await page.getByTestId(`screen-${s}`).waitFor();
      expect(page.url()).toContain(`#/${s}`);
      expect(await page.getByTestId(`nav-${s}`).getAttribute('aria-current')).toBe('page');
      expect(await page.locator('main h1').textContent()).toBeTruthy();
    }
    await page.getByTestId('nav-runs').click();
    await page.getByTestId('runs-table-empty').waitFor();
    expect(await page.getByTestId('runs-table-empty').textContent()).toMatch(/No runs yet/);
  });

  it('switches to 简体中文, saves it, and keeps it after a reload', async () => {
    await page.getByTestId('nav-settings').click();
    await page.getByTestId('settings-home').waitFor();
    expect(await page.getByTestId('settings-home').textContent()).toBe(app.home);
    await page.getByTestId('language-select').selectOption('zh-CN');
    await page.getByTestId('settings-saved').waitFor();
    expect(await page.getByTestId('nav-runs').textContent()).toBe('训练记录');
    expect(await page.getByTestId('status-devices').textContent()).toBe('仅 CPU');
    await page.screenshot({ path: path.join(ROOT, 'test-results', 'settings-zh.png') });
    await page.evaluate(() => localStorage.clear());
    await page.reload();
    await page.getByTestId('status-devices').waitFor();
    await page.waitForFunction(() => document.querySelector('[data-testid="nav-runs"]')?.textContent === '训练记录');
    await page.getByTestId('language-select').selectOption('en');
    await page.getByTestId('settings-saved').waitFor();
    expect(await page.getByTestId('nav-runs').textContent()).toBe('Runs');
  });

  it('chooses where chat and predictions run, and says where that is now', async () => {
    await page.getByTestId('nav-settings').click();
    await page.getByTestId('settings-inference-device').waitFor();
    // no GPU here: automatic means the CPU in fp32
    await expect.poll(async () => page.getByTestId('settings-inference-now').textContent()).toBe('Now: cpu, fp32, 4-bit base weights for QLoRA adapters.');
    const options = await page.getByTestId('settings-inference-device').locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value));
    expect(options).toEqual(['auto', 'cpu']);
    await page.getByTestId('settings-inference-precision').selectOption('bf16');
    await page.getByTestId('settings-inference-saved').waitFor();
    await expect.poll(async () => page.getByTestId('settings-inference-now').textContent()).toBe('Now: cpu, bf16, 4-bit base weights for QLoRA adapters.');
    const saved = (await (await fetch(`${app.origin}/api/getSettings`, { method: 'POST', headers: { 'X-LLMT-Token': app.token }, body: '{}' })).json()) as { result: { inferencePrecision: string } };
    expect(saved.result.inferencePrecision).toBe('bf16');
    await page.getByTestId('settings-inference-precision').selectOption('auto');
    // the base in 4 bits for every model, or as stored even for QLoRA adapters
    await page.getByTestId('settings-inference-quantization').selectOption('nf4');
    await expect.poll(async () => page.getByTestId('settings-inference-now').textContent()).toBe('Now: cpu, fp32, base weights in 4 bits (nf4).');
    await page.getByTestId('settings-inference-quantization').selectOption('none');
    await expect.poll(async () => page.getByTestId('settings-inference-now').textContent()).toBe('Now: cpu, fp32, base weights as stored.');
    await page.getByTestId('settings-inference-quantization').selectOption('auto');
    await expect.poll(async () => page.getByTestId('settings-inference-now').textContent()).toBe('Now: cpu, fp32, 4-bit base weights for QLoRA adapters.');
  });

  it('has run so far without console errors or CSP violations', () => {
    expect(consoleErrors).toEqual([]);
  });

  it('gets 401 from the API without the token, 400 naming the field with it', async () => {
    const result = await page.evaluate(async (token) => {
      const noToken = await fetch('./api/getStatus', { method: 'POST', body: '{}' });
      const bad = await fetch('./api/createExperiment', { method: 'POST', headers: { 'X-LLMT-Token': token }, body: JSON.stringify({ name: false }) });
      return { noToken: noToken.status, bad: bad.status, badBody: await bad.json() };
    }, app.token);
    expect(result.noToken).toBe(401);
    expect(result.bad).toBe(400);
    expect(result.badBody.error.fields[0].path).toBe('name');
  });

  it('shows 401 for the page without the token, with what to open instead', async () => {
    const other = await browser.newPage();
    const res = await other.goto(app.origin + '/');
    expect(res?.status()).toBe(401);
    expect(await other.textContent('body')).toMatch(/needs the link that llms-train serve \(or npm start\) printed/);
    expect(await other.evaluate(() => document.scripts.length)).toBe(0);
    await other.close();
  });

  it('takes the README screenshot', async () => {
    await page.getByTestId('nav-new').click();
    await page.getByTestId('wizard-steps').waitFor();
    fs.mkdirSync(path.join(ROOT, 'test-results'), { recursive: true });
    await page.screenshot({ path: path.join(ROOT, 'test-results', 'workbench.png') });
  });
});
