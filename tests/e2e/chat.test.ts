// Chat in Chromium through browser mode: a LoRA adapter trained on the demo model (through the CLI, into the
// served home) is picked from the run's outputs; the answer streams into the page token by token, the session
// is saved, A/B mode answers one prompt with base and adapter side by side, and killing the engine's process
// mid-answer gives a clear error — the next message restarts it and says so.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT, runCli, type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
const data = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');

const shot = (name: string) => screenshot(page, name);

/** The engine host's child process (a Node process running host-child.js under the server). */
function hostPid(): number | null {
  try {
    const out = execFileSync('pgrep', ['-P', String(app.proc.pid), '-f', 'host-child'], { encoding: 'utf8' }).trim();
    return out ? Number(out.split('\n')[0]) : null;
  } catch {
    return null;
  }
}

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  // a short LoRA run on the demo model, recorded in the served home's database
  const r = await runCli(
    [
      'train',
      '--model_name_or_path', path.join(app.home, 'models', 'llms-train-demo'),
      '--train_file', path.join(data, 'train.json'),
      '--output_dir', path.join(app.home, 'runs', 'chat-lora'),
      '--run_name', 'chat lora',
      '--max_steps', '100', '--save_steps', '50', '--logging_steps', '20',
      '--max_source_length', '128', '--max_target_length', '32',
      '--per_device_train_batch_size', '16', '--learning_rate', '3e-3', '--lr_scheduler_type', 'cosine', '--warmup_steps', '10',
      '--lora_r', '16', '--lora_target_modules', 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj',
    ],
    { home: app.home, timeoutMs: 120_000 },
  );
  expect(r.code, r.stderr).toBe(0);
  ({ browser, page } = await openPage({ width: 1280, height: 860 }));
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe('chat in the browser', () => {
  it('answers with the trained adapter in the task’s terms, and saves the session', async () => {
    await page.goto(`${app.url}#/chat`);
    await page.getByTestId('chat-setup').waitFor();
    // the run's final adapter is offered for the demo model
    await expect.poll(async () => (await page.getByTestId('chat-adapter').locator('option').allTextContents()).join('|')).toMatch(/run #1 chat lora: final/);
    const final = await page.getByTestId('chat-adapter').locator('option', { hasText: 'final' }).getAttribute('value');
    await page.getByTestId('chat-adapter').selectOption(final!);
    await page.getByTestId('chat-max-new').fill('32');
    await page.getByTestId('chat-start').click();
    await page.getByTestId('chat-messages').waitFor();
    // a record of the sample test split: the adapter has learned to answer with one of its choices
    const rec = JSON.parse(fs.readFileSync(path.join(data, 'test.json'), 'utf8').split('\n')[0]!) as { input: string; answer_choices: string[] };
    await page.getByTestId('chat-input').fill(rec.input);
    await page.getByTestId('chat-input').press('Enter');
    await page.getByTestId('msg-assistant').first().waitFor({ timeout: 60_000 });
    const answer = ((await page.getByTestId('msg-assistant').first().textContent()) ?? '').trim();
    expect(rec.answer_choices).toContain(answer);
    // under the answer: its length, time, why it ended and where it ran (the engine host's placement: the CPU here)
    expect(await page.getByTestId('msg-meta').first().textContent()).toMatch(/^\d+ tokens in [\d.]+ s \((stop|length)\) on cpu$/);
    // saved: the session is listed with a title from the first message, and survives a reload
    const title = rec.input.split('\n')[0]!.slice(0, 12);
    expect(await page.getByTestId('chat-sessions').textContent()).toContain(title);
    await page.reload();
    await page.getByTestId('chat-sessions').getByRole('button', { name: title }).click();
    await expect.poll(() => page.getByTestId('msg-assistant').count()).toBe(1);
    // the stored message keeps it
    expect(await page.getByTestId('msg-meta').first().textContent()).toMatch(/ on cpu$/);
    await shot('chat');
  });

  it('streams tokens into the page as they are generated', async () => {
    await page.getByTestId('chat-new').click();
    await page.getByTestId('chat-setup').waitFor();
    await page.getByTestId('chat-adapter').selectOption('');
    await page.getByTestId('chat-max-new').fill('64');
    await page.getByTestId('chat-start').click();
    await page.getByTestId('chat-messages').waitFor();
    // count the DOM updates of the streaming bubble: more than one means tokens arrived one by one
    await page.evaluate(() => {
      const w = window as unknown as { __updates: number };
      w.__updates = 0;
      new MutationObserver((ms) => {
        for (const m of ms) {
          const el = m.target instanceof Element ? m.target : m.target.parentElement;
          if (el?.closest('[data-testid="msg-streaming"]')) w.__updates++;
        }
      }).observe(document.querySelector('[data-testid="chat-messages"]')!, { subtree: true, childList: true, characterData: true });
    });
    await page.getByTestId('chat-input').fill('你好');
    await page.getByTestId('chat-send').click();
    await page.getByTestId('msg-assistant').first().waitFor({ timeout: 60_000 });
    // the untrained base model rambles until max_new_tokens: 64 tokens, streamed
    expect(((await page.getByTestId('msg-assistant').first().textContent()) ?? '').length).toBeGreaterThan(10);
    expect(await page.evaluate(() => (window as unknown as { __updates: number }).__updates)).toBeGreaterThan(3);
  });

  it('answers one prompt with base and adapter side by side (A/B)', async () => {
    await page.getByTestId('chat-ab').click();
    await page.getByTestId('ab-setup').waitFor();
    const final = await page.getByTestId('chat-adapterB').locator('option', { hasText: 'final' }).getAttribute('value');
    await page.getByTestId('chat-adapterB').selectOption(final!);
    await page.getByTestId('chat-max-new').fill('24');
    await page.getByTestId('chat-input').fill('病人咳嗽，应该去哪个科室？');
    await page.getByTestId('chat-send').click();
    await page.getByTestId('ab-answers').waitFor();
    await expect.poll(async () => page.getByTestId('chat-send').isVisible(), { timeout: 60_000 }).toBe(true);
    const a = (await page.getByTestId('ab-a').textContent()) ?? '';
    const b = (await page.getByTestId('ab-b').textContent()) ?? '';
    expect(a).toMatch(/tokens in [\d.]+ s \(\w+\) on cpu/);
    expect(b).toMatch(/tokens in [\d.]+ s \(\w+\) on cpu/);
    // at 1280 × 800, with the sampling fields open and both answers shown, the composer stays above the status bar
    // (the setup and answers scroll in their own box)
    await page.setViewportSize({ width: 1280, height: 800 });
    const composer = (await page.getByTestId('chat-input').boundingBox())!;
    const status = (await page.getByTestId('statusbar').boundingBox())!;
    expect(composer.y + composer.height).toBeLessThanOrEqual(status.y);
    expect(composer.y).toBeGreaterThan(0);
    await shot('chat-ab');
    await page.setViewportSize({ width: 1280, height: 860 });
  });

  it('survives the engine process dying: the page says so, and the next message restarts it', async () => {
    // (killing it in the middle of an answer is covered in tests/integration/generation.test.ts)
    await page.getByTestId('chat-new').click();
    await page.getByTestId('chat-max-new').fill('16');
    await page.getByTestId('chat-start').click();
    await expect.poll(() => hostPid(), { timeout: 20_000 }).not.toBeNull();
    process.kill(hostPid()!, 'SIGKILL');
    await page.getByTestId('chat-notice').waitFor({ timeout: 30_000 });
    expect(await page.getByTestId('chat-notice').textContent()).toMatch(/engine process stopped: .*killed by SIGKILL/);
    await page.getByTestId('chat-input').fill('你好');
    await page.getByTestId('chat-send').click();
    await page.getByTestId('msg-assistant').first().waitFor({ timeout: 60_000 });
    expect(await page.getByTestId('chat-notice').textContent()).toMatch(/restarted/);
    expect(hostPid()).not.toBeNull();
    await shot('chat-restarted');
  });

  it('leaves the oldest messages out of the model’s context and says so under the answer; a message too long alone is refused with a hint', async () => {
    // the demo model's context is 512 tokens: with max_new_tokens 100, a few questions of ~110 tokens overflow it
    const sentence = '病人咳嗽发热三天，伴有头痛和乏力，应该去哪个科室就诊？请详细说明理由。';
    await page.getByTestId('chat-new').click();
    await page.getByTestId('chat-setup').waitFor();
    await page.getByTestId('chat-adapter').selectOption('');
    await page.getByTestId('chat-max-new').fill('100');
    await page.getByTestId('chat-start').click();
    await page.getByTestId('chat-messages').waitFor();
    for (let i = 1; i <= 4; i++) {
      await page.getByTestId('chat-input').fill(`${i}: ${sentence.repeat(2)}`);
      await page.getByTestId('chat-send').click();
      await expect.poll(() => page.getByTestId('msg-assistant').count(), { timeout: 60_000 }).toBe(i);
      await page.getByTestId('chat-send').waitFor({ timeout: 30_000 });
    }
    await expect.poll(() => page.getByTestId('msg-dropped').count()).toBeGreaterThan(0);
    expect(await page.getByTestId('msg-dropped').first().textContent()).toMatch(/^Older messages were left out of the model’s context \(\d+ of \d+ earlier exchanges\): with max_new_tokens they no longer fit\.$/);
    // a message that does not fit even alone: the error and its hint, the message back in the input, nothing kept
    const long = sentence.repeat(20);
    await page.getByTestId('chat-input').fill(long);
    await page.getByTestId('chat-send').click();
    await page.getByTestId('chat-error').waitFor({ timeout: 30_000 });
    const shown = (await page.getByTestId('chat-error').textContent()) ?? '';
    expect(shown).toMatch(/does not fit the model's context of 512 tokens/);
    expect(shown).toMatch(/Shorten the message/);
    expect(await page.getByTestId('msg-user').count()).toBe(4);
    expect(await page.getByTestId('chat-input').inputValue()).toBe(long);
    await shot('chat-context');
  });

  it("a run's adapter is prompted in the run's template; a full fine-tune's checkpoint is chosen as the model and answers", async () => {
    const demo = path.join(app.home, 'models', 'llms-train-demo');
    const train = async (name: string, extra: string[]) => {
      const r = await runCli(['train', '--model_name_or_path', demo, '--train_file', path.join(data, 'dev.json'), '--output_dir', path.join(app.home, 'runs', name),
        '--run_name', name, '--template', 'alpaca', '--max_steps', '2', '--save_steps', '2', '--max_source_length', '32', '--max_target_length', '8',
        '--per_device_train_batch_size', '2', ...extra], { home: app.home, timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
    };
    await train('alp lora', ['--lora_r', '4']);
    await train('alp full', ['--use_lora', 'False']);
    await page.goto(`${app.url}#/chat`);
    await page.reload();
    await page.getByTestId('chat-new').click();
    await page.getByTestId('chat-setup').waitFor();
    await expect.poll(async () => (await page.getByTestId('chat-adapter').locator('option').allTextContents()).join('|')).toMatch(/alp lora: final/);
    // the full fine-tune is no adapter: it is offered as a model
    expect((await page.getByTestId('chat-adapter').locator('option').allTextContents()).join('|')).not.toMatch(/alp full/);
    const lora = await page.getByTestId('chat-adapter').locator('option', { hasText: 'alp lora: final' }).getAttribute('value');
    await page.getByTestId('chat-adapter').selectOption(lora!);
    expect(await page.getByTestId('chat-template').inputValue()).toBe('alpaca');
    const full = await page.getByTestId('chat-model').locator('option', { hasText: 'alp full: final' }).getAttribute('value');
    expect(full).toBe(path.join(app.home, 'runs', 'alp full'));
    await page.getByTestId('chat-template').selectOption('raw');
    await page.getByTestId('chat-model').selectOption(full!);
    expect(await page.getByTestId('chat-adapter').inputValue()).toBe('');
    expect(await page.getByTestId('chat-template').inputValue()).toBe('alpaca');
    await page.getByTestId('chat-max-new').fill('4');
    await page.getByTestId('chat-start').click();
    await page.getByTestId('chat-messages').waitFor();
    await page.getByTestId('chat-input').fill('你好');
    await page.getByTestId('chat-send').click();
    await expect.poll(() => page.getByTestId('msg-assistant').count(), { timeout: 60_000 }).toBe(1);
    expect(await page.getByTestId('chat-error').count()).toBe(0);
    // the run view's "Chat" on a full fine-tune's checkpoint: the checkpoint as the model, the base's tokenizer, the run's template
    const runs = (await (await fetch(`${app.origin}/api/listRuns`, { method: 'POST', headers: { 'X-LLMT-Token': app.token }, body: '{}' })).json()) as { result: { id: number; name: string }[] };
    const id = runs.result.find((r) => r.name === 'alp full')!.id;
    await page.goto(`${app.url}#/runs/${id}`);
    await page.getByRole('button', { name: 'Chat' }).first().click();
    await page.getByTestId('chat-setup').waitFor();
    await expect.poll(() => page.getByTestId('chat-model').inputValue()).toBe(path.join(app.home, 'runs', 'alp full', 'checkpoint-2'));
    expect(await page.getByTestId('chat-adapter').inputValue()).toBe('');
    expect(await page.getByTestId('chat-template').inputValue()).toBe('alpaca');
    expect(new URL(page.url().replace('#/', '')).searchParams.get('tokenizer')).toBe(demo);
    await page.getByTestId('chat-start').click();
    await page.getByTestId('chat-input').fill('你好');
    await page.getByTestId('chat-send').click();
    await expect.poll(() => page.getByTestId('msg-assistant').count(), { timeout: 60_000 }).toBe(1);
    expect(await page.getByTestId('chat-error').count()).toBe(0);
  }, 240_000);
});
