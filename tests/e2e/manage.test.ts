// The model manager and checkpoint evaluation in Chromium against `llms-train serve`: a short LoRA run of the
// demo model (CLI), evaluated in the run view (one checkpoint on 10 test records, then every checkpoint with
// the best starred), exported to GGUF and merged (the merged model listed in Models); then a download from a
// loopback server with the Hub's URL layout (entered as the mirror endpoint), its progress, Cancel, and a
// delete with files. Screenshots land in test-results/screens/.
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { callApi, ROOT, runCli, type Served, startCli, tempHome } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';

let app: Served;
let browser: Browser;
let page: Page;
let hub: http.Server;
let endpoint: string;
let runId: number;
const consoleErrors: string[] = [];
const ENGINE = path.join(ROOT, 'native', 'build', 'bin', 'llmt-engine');

// ---- a loopback "Hub": /api/models/{repo}/revision/{rev} and /{repo}/resolve/{rev}/{file} -----------------------
let tinyDir: string;
let tinyFiles: string[] = [];
/** model.safetensors is sent in two halves; the second waits for this gate (so progress can be watched) */
let openGate: () => void = () => {};
const gate = new Promise<void>((r) => (openGate = r));

function serveHub(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = decodeURIComponent((req.url ?? '').split('?')[0]!);
  const list = /^\/api\/models\/(org\/[\w-]+)\/revision\/[\w.-]+$/.exec(url);
  if (list) {
    const siblings = tinyFiles.map((f) => {
      const body = fs.readFileSync(path.join(tinyDir, f));
      return { rfilename: f, size: body.length, lfs: { sha256: crypto.createHash('sha256').update(body).digest('hex'), size: body.length } };
    });
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: list[1], siblings }));
    return;
  }
  const file = /^\/(org\/[\w-]+)\/resolve\/[\w.-]+\/(.+)$/.exec(url);
  if (!file || !tinyFiles.includes(file[2]!)) {
    res.writeHead(404).end();
    return;
  }
  const body = fs.readFileSync(path.join(tinyDir, file[2]!));
  const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
  const rest = body.subarray(start);
  res.writeHead(start ? 206 : 200, { 'content-length': String(rest.length), ...(start ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}) });
  if (file[2] !== 'model.safetensors') {
    res.end(rest);
    return;
  }
  // half at once, 16 KiB more after 400 ms (past the progress throttle), then org/tiny waits for the test to open
  // the gate; org/slow never finishes (it is cancelled)
  const half = Math.floor(rest.length / 2);
  res.write(rest.subarray(0, half));
  setTimeout(() => {
    if (res.destroyed) return;
    res.write(rest.subarray(half, half + 16_384));
    if (file[1] === 'org/tiny') void gate.then(() => res.end(rest.subarray(half + 16_384)));
  }, 400);
}

const shot = (name: string) => screenshot(page, name);
async function go(hash: string): Promise<void> {
  await page.evaluate((h) => (location.hash = h), hash);
}
const api = <T>(method: string, body: unknown): Promise<T> => callApi<T>(app, method, body);

beforeAll(async () => {
  app = await startCli(['serve', '--port', '0']);
  // a short LoRA run on the demo model (which exists once the server has started), checkpoints at 10 and 20
  const r = await runCli(
    [
      'train',
      '--model_name_or_path', path.join(app.home, 'models', 'llms-train-demo'),
      '--train_file', path.join(ROOT, 'resources/datasets/promptcblue-demo/train.json'),
      '--validation_file', path.join(ROOT, 'resources/datasets/promptcblue-demo/dev.json'),
      '--output_dir', path.join(app.home, 'runs', 'a'),
      '--max_steps', '20',
      '--save_steps', '10',
      '--logging_steps', '5',
      '--max_source_length', '128',
      '--max_target_length', '32',
      '--lora_target_modules', 'q_proj,v_proj',
      '--learning_rate', '1e-3',
    ],
    { home: app.home, timeoutMs: 90_000 },
  );
  expect(r.code, r.stderr + r.stdout).toBe(0);
  const runs = await api<{ id: number; status: string; method: string }[]>('listRuns', {});
  expect(runs[0]).toMatchObject({ status: 'completed', method: 'lora' });
  runId = runs[0]!.id;

  tinyDir = path.join(tempHome('llmt-hub-'), 'tiny');
  const made = spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', tinyDir], { encoding: 'utf8' });
  expect(made.status, made.stderr).toBe(0);
  tinyFiles = fs.readdirSync(tinyDir).sort();
  hub = http.createServer(serveHub);
  await new Promise<void>((res) => hub.listen(0, '127.0.0.1', res));
  endpoint = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`;

  ({ browser, page } = await openPage({ width: 1360, height: 900 }, consoleErrors));
  await page.goto(app.url);
  await page.getByTestId('status-devices').waitFor();
}, 180_000);

afterAll(async () => {
  openGate();
  hub?.closeAllConnections();
  hub?.close();
  await browser?.close();
  await app?.stop();
});

describe('checkpoints in the run view', () => {
  it('evaluates one checkpoint on 10 test records and shows its metrics', async () => {
    await go(`#/runs/${runId}`);
    await page.getByTestId('checkpoints').waitFor();
    expect(await page.getByTestId('checkpoint-row').count()).toBeGreaterThanOrEqual(2);
    await page.getByTestId('evals-empty').waitFor();
    // the picker defaults to the run's validation file; choose the sample test split
    expect(await page.getByTestId('eval-data').inputValue()).toMatch(/dev\.json$/);
    const values = await page.getByTestId('eval-data').locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value));
    const test = values.find((v) => /promptcblue-demo[\\/]test\.json$/.test(v));
    expect(test).toBeTruthy();
    await page.getByTestId('eval-data').selectOption(test!);
    await page.getByTestId('eval-limit').fill('10');
    await page.locator('[data-testid="checkpoint-row"][data-step="10"]').getByTestId('ckpt-evaluate').click();
    await page.getByTestId('eval-progress').waitFor();
    await page.locator('[data-testid="eval-row"], [data-testid="eval-error"]').first().waitFor({ timeout: 90_000 });
    expect(await page.getByTestId('eval-error').count(), (await page.getByTestId('eval-error').allTextContents()).join()).toBe(0);
    expect(Number(await page.getByTestId('eval-loss').first().textContent())).toBeGreaterThan(0);
    // the per-type report: the overall row and one per task type, classification and generation columns
    const report = page.getByTestId('eval-report').first();
    await report.waitFor();
    const overall = report.locator('[data-testid="report-row"][data-type="(all)"]');
    expect(await overall.locator('td').nth(1).textContent()).toBe('10');
    expect(await report.getByTestId('report-row').count()).toBeGreaterThan(1);
    expect(await report.locator('thead').textContent()).toMatch(/Accuracy.*Micro-F1.*Macro-F1.*Unmatched.*BLEU-4.*ROUGE-1.*ROUGE-2.*ROUGE-L.*Exact match/);
    await shot('run-eval-one');
  }, 120_000);

  it('evaluates every checkpoint and stars the best', async () => {
    await page.getByTestId('eval-all').click();
    await page.getByTestId('ckpt-best').waitFor({ timeout: 120_000 });
    expect(await page.getByTestId('ckpt-best').count()).toBe(1);
    expect(await page.getByTestId('eval-best').count()).toBe(1);
    const evals = await api<{ best?: unknown }[]>('listEvals', { runId });
    expect(evals.filter((e) => e.best).length).toBe(1);
    expect(await page.getByTestId('eval-row').count()).toBe(evals.length);
    await shot('run-eval-all');
  }, 150_000);

  it('exports a checkpoint to GGUF with its Modelfile', async () => {
    const row = page.locator('[data-testid="checkpoint-row"][data-step="20"]').first();
    await row.getByTestId('ckpt-export').click();
    const out = await page.getByTestId('ckpt-out').inputValue();
    expect(out).toBe(path.join(app.home, 'runs', 'a', 'export', 'a-step-20.gguf'));
    await page.getByTestId('ckpt-start').click();
    const gguf = page.getByTestId('run-ops').getByTestId('export-gguf');
    await gguf.waitFor({ timeout: 60_000 });
    expect(await gguf.textContent()).toBe(out);
    expect(fs.statSync(out).size).toBeGreaterThan(0);
    const modelfile = (await page.getByTestId('export-modelfile').textContent())!;
    expect(fs.existsSync(modelfile)).toBe(true);
    // the same export again: the file exists, so the app asks; Cancel keeps it, Replace writes it anew
    const before = fs.statSync(out).mtimeMs;
    await row.getByTestId('ckpt-export').click();
    await page.getByTestId('ckpt-start').click();
    await page.getByTestId('replace-dialog').waitFor({ timeout: 60_000 });
    expect(await page.getByTestId('replace-dialog').textContent()).toContain('a-step-20.gguf');
    await page.getByTestId('replace-cancel').click();
    expect(fs.statSync(out).mtimeMs).toBe(before);
    await row.getByTestId('ckpt-export').click();
    await page.getByTestId('ckpt-start').click();
    await page.getByTestId('replace-dialog').waitFor({ timeout: 60_000 });
    await page.getByTestId('replace-confirm').click();
    await expect.poll(() => fs.statSync(out).mtimeMs, { timeout: 60_000 }).toBeGreaterThan(before);
  }, 150_000);

  it('merges a checkpoint and the merged model is listed in Models', async () => {
    const row = page.locator('[data-testid="checkpoint-row"][data-step="10"]');
    await row.getByTestId('ckpt-merge').click();
    const out = await page.getByTestId('ckpt-out').inputValue();
    expect(out).toBe(path.join(app.home, 'runs', 'a', 'merged-step-10'));
    await page.getByTestId('ckpt-start').click();
    await page.getByTestId('merge-out').waitFor({ timeout: 60_000 });
    expect(fs.existsSync(path.join(out, 'config.json'))).toBe(true);
    await shot('run-export-merge');
    await page.getByTestId('merge-open-models').click();
    await page.locator('[data-testid="model-local"]', { hasText: out }).waitFor();
    // deleting its files is refused (it is outside the app's model folder): the API's message is shown
    await page.locator('[data-testid="model-local"]', { hasText: out }).click();
    await page.getByTestId('model-delete').click();
    await page.getByTestId('model-delete-files').check();
    await page.getByTestId('model-delete-confirm').click();
    expect(await page.getByTestId('model-delete-error').textContent()).toMatch(/refusing to delete/);
    expect(fs.existsSync(out)).toBe(true);
    await page.getByTestId('model-delete-cancel').click();
  }, 90_000);
});

describe('models: download from a mirror, cancel, delete', () => {
  it('downloads from the endpoint of the advanced section, with progress, and lists the model', async () => {
    await go('#/models');
    await page.getByTestId('download-repo').fill('org/tiny');
    await page.getByTestId('download-advanced').locator('summary').click();
    await page.getByTestId('download-endpoint').fill(endpoint);
    await page.getByTestId('download-start').click();
    const op = page.locator('[data-testid="model-op"][data-kind="downloadModel"]').first();
    // more than half of the weights have arrived (bytes of total, speed, ETA); the rest waits for the gate
    await expect.poll(async () => ((await op.getByTestId('op-progress').textContent()) ?? '').replace(/\s+/g, ' '), { timeout: 30_000 }).toMatch(/\d{3} KiB of \d{3} KiB · \S+ KiB\/s · ETA/);
    await shot('models-download-progress');
    openGate();
    await page.locator('[data-testid="model-op"][data-kind="downloadModel"][data-state="done"]').waitFor({ timeout: 30_000 });
    const dir = path.join(app.home, 'models', 'org--tiny');
    expect(await op.getByTestId('op-result').textContent()).toBe(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(tinyFiles);
    await page.locator('[data-testid="model-local"]', { hasText: dir }).waitFor();
    await page.getByTestId('model-supported').waitFor();
    await shot('models-downloaded');
  }, 60_000);

  it('cancels a download that stalls', async () => {
    await page.getByTestId('download-repo').fill('org/slow');
    await page.getByTestId('download-start').click();
    const op = page.locator('[data-testid="model-op"][data-kind="downloadModel"]').first();
    await op.getByTestId('op-cancel').click();
    await page.locator('[data-testid="model-op"][data-state="cancelled"]').waitFor({ timeout: 30_000 });
    expect(fs.existsSync(path.join(app.home, 'models', 'org--slow', 'model.safetensors'))).toBe(false);
  });

  it('deletes the downloaded model with its files after confirmation', async () => {
    const dir = path.join(app.home, 'models', 'org--tiny');
    await page.locator('[data-testid="model-local"]', { hasText: dir }).click();
    await page.getByTestId('model-delete').click();
    await page.getByTestId('model-delete-dialog').getByText(dir).waitFor();
    await page.getByTestId('model-delete-files').check();
    await page.getByTestId('model-delete-confirm').click();
    await page.getByTestId('models-notice').waitFor();
    await page.locator('[data-testid="model-local"]', { hasText: dir }).waitFor({ state: 'detached' });
    expect(fs.existsSync(dir)).toBe(false);
    // the refused delete (400), the two exports onto an existing file (EXISTS, 409) and the cancelled download
    // (ABORTED, 409) answered with HTTP errors, which Chromium logs; nothing else may be logged
    const httpErrors = consoleErrors.filter((e) => /^Failed to load resource: the server responded with a status of/.test(e));
    expect(httpErrors.map((e) => /status of (\d+)/.exec(e)![1]).sort()).toEqual(['400', '409', '409', '409']);
    expect(consoleErrors.filter((e) => !httpErrors.includes(e))).toEqual([]);
  });
});
