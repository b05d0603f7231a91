// The wizard on a machine with a GPU — here cuemu, the CPU emulator of the CUDA driver (native/tests/cuemu), which
// the app's engine loads like a real driver: the hardware step lists the GPU, a LoRA run in bf16 on it is launched
// from the wizard, its review shows the equivalent command line, and the run completes on the GPU backend (no
// "CPU fallback" warning). Skipped when the engine was built without CUDA (no cuemu next to it).

import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { callApi, type Served, startCli } from '../helpers/app';
import { openPage, screenshot } from '../helpers/browser';
import { EMU, HAVE_EMU } from '../helpers/native';

if (!HAVE_EMU) console.warn(`e2e gpu: skipped — ${EMU} is missing (this engine build has no CUDA backend)`);

let app: Served;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];

const api = <T>(method: string, body: unknown): Promise<T> => callApi<T>(app, method, body);

beforeAll(async () => {
  if (!HAVE_EMU) return;
  app = await startCli(['serve', '--port', '0'], { env: { LLMT_CUDA_LIB_DIRS: EMU } });
  ({ browser, page } = await openPage({ width: 1360, height: 900 }, consoleErrors));
});

afterAll(async () => {
  await browser?.close();
  await app?.stop();
});

describe.skipIf(!HAVE_EMU)('a fine-tune on a GPU from the wizard (emulated GPU)', () => {
  it('lists the GPU, launches a bf16 LoRA run on it, and the run completes on the CUDA backend', async () => {
    const status = await api<{ gpus: { name: string; index: number }[] }>('getStatus', {});
    expect(status.gpus.map((g) => g.name)).toEqual([expect.stringMatching(/cuemu/)]);
    await page.goto(app.url);
    await page.getByTestId('screen-new').waitFor();
    await page.getByTestId('model-option-0').waitFor();
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('dataset-preview').waitFor();
    // short sequences and micro-batches: the emulated GPU runs the kernels on the CPU, thread by thread
    await page.getByTestId('knob-max-source').fill('24');
    await page.getByTestId('knob-max-target').fill('8');
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('method-lora').check();
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('knob-max-steps').fill('4');
    await page.getByTestId('knob-micro-batch').fill('2');
    await page.getByTestId('knob-precision').selectOption('bf16');

    await page.getByTestId('wizard-next').click();
    await page.getByTestId('hardware').waitFor();
    const hw = (await page.getByTestId('hardware').textContent()) ?? '';
    expect(hw).toMatch(/GPU 0: cuemu/);
    // a GPU run may keep the AdamW state in host memory (the knob is there for GPU runs only)
    expect(await page.getByTestId('knob-offload-optimizer').count()).toBe(0);
    await page.getByTestId('device-gpu-0').check();
    expect(await page.getByTestId('device-cpu').isChecked()).toBe(false);
    // one worker per selected GPU (the CPU worker count is for CPU runs)
    expect(await page.getByTestId('gpu-workers').textContent()).toMatch(/Workers: 1, one per selected GPU \(GPU 0\)/);
    expect(await page.getByTestId('cpu-workers').count()).toBe(0);
    await page.getByTestId('knob-offload-optimizer').check();
    await screenshot(page, 'wizard-gpu-hardware');
    await page.getByTestId('wizard-next').click();
    await page.getByTestId('review-cli').waitFor();
    const cli = (await page.getByTestId('review-cli').textContent()) ?? '';
    expect(cli).toContain('--device cuda:0');
    expect(cli).toContain('--bf16');
    expect(cli).toContain('--offload_optimizer');
    // a GPU run's estimate is per GPU (every worker holds the whole model)
    expect(await page.getByTestId('review-estimate').textContent()).toMatch(/Memory per GPU, on 1 GPU\(s\) \(0\): about .* needed on each/);
    const spec = JSON.parse((await page.getByTestId('review-spec').textContent()) ?? '{}') as { devices: { kind: string; ids: number[] }; training: { precision: string; offload_optimizer: boolean } };
    expect(spec.devices).toEqual({ kind: 'cuda', ids: [0] });
    expect(spec.training.precision).toBe('bf16');
    expect(spec.training.offload_optimizer).toBe(true);
    await page.getByTestId('wizard-launch').click();
    await page.getByTestId('screen-run').waitFor();
    const runId = Number(/#\/runs\/(\d+)$/.exec(page.url())![1]);
    expect(await page.getByTestId('run-device').textContent()).toBe('GPU 0');
    await expect.poll(async () => page.getByTestId('run-status').textContent(), { timeout: 240_000, interval: 500 }).toBe('completed');
    const run = await api<{ status: string; lastStep: number }>('getRun', { id: runId });
    expect(run).toMatchObject({ status: 'completed', lastStep: 4 });
    // the GPU's memory is recorded and drawn beside the host's
    const { points } = await api<{ points: [number, string, number | null, number][] }>('getMetrics', { id: runId });
    const gpuMem = points.filter((p) => p[1] === 'gpu_mem_bytes');
    expect(gpuMem.length).toBeGreaterThan(0);
    expect(gpuMem.every((p) => (p[2] ?? 0) > 0)).toBe(true);
    expect(await page.getByTestId('chart-memory').getAttribute('data-series')).toMatch(/GPU MiB/);
    const log = (await page.getByTestId('run-log').textContent()) ?? '';
    expect(log).not.toMatch(/CUDA unavailable|falls? back to the CPU/);
    await screenshot(page, 'run-gpu-completed');
    expect(consoleErrors).toEqual([]);
  }, 300_000);
});
