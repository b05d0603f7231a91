// fp16 dynamic loss scaling as HF Trainer + torch's GradScaler run it: a step whose scaled gradients overflow is
// skipped — it advances neither the learning-rate schedule (HF steps the scheduler only when the optimizer ran) nor
// AdamW's step count — and the scale with its clean-step count is in the checkpoint, so a run stopped and resumed
// ends bit-identical to the run that never stopped. The model's head is scaled up so that the first steps overflow.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT, runCli } from '../helpers/app';
import { ENGINE } from '../helpers/native';

const PY = process.env.LLMT_PY || path.join(ROOT, '.venv-test', 'bin', 'python');
const DATA = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'dev.json');
let tmp: string;
let model: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-fp16-'));
  model = path.join(tmp, 'hot');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
  const py = spawnSync(PY, ['-c', `
import sys
from safetensors.torch import load_file, save_file
f = sys.argv[1] + '/model.safetensors'
t = load_file(f)
t['lm_head.weight'] = t['lm_head.weight'] * 60
save_file(t, f, metadata={'format': 'pt'})
`, model], { encoding: 'utf8' });
  expect(py.status, py.stderr).toBe(0);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const flags = (out: string, steps: number, extra: string[] = []) => [
  'train', '--model_name_or_path', model, '--train_file', DATA, '--prompt_column', 'input', '--response_column', 'target',
  '--output_dir', out, '--max_source_length', '64', '--max_target_length', '8', '--per_device_train_batch_size', '1',
  '--max_steps', String(steps), '--logging_steps', '1', '--save_steps', '4', '--warmup_steps', '2', '--learning_rate', '1e-3',
  '--fp16', '--device', 'cpu', '--json', ...extra,
];

type Ev = { event: string; step?: number; lr?: number; loss?: number; message?: string };
const events = (stdout: string): Ev[] => stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Ev);

describe('fp16 loss scaling', () => {
  it('a skipped step moves neither the schedule nor AdamW; the scale is checkpointed, so stop + resume is bit-identical', async () => {
    const home = path.join(tmp, 'home');
    const full = await runCli(flags(path.join(tmp, 'full'), 8), { home, timeoutMs: 120_000 });
    expect(full.code, full.stderr).toBe(0);
    const ev = events(full.stdout);
    const skipped = new Set(ev.filter((e) => e.event === 'warning' && /update skipped/.test(e.message ?? '')).map((e) => Number(/overflowed at step (\d+)/.exec(e.message!)![1])));
    expect(skipped.size, 'the hot head overflows the first steps at the initial scale').toBeGreaterThan(0);
    expect(skipped.size).toBeLessThan(8);
    // HF's linear schedule with 2 warmup steps over 8, indexed by the optimizer steps taken before this one
    const lrAt = (updates: number) => 1e-3 * (updates < 2 ? updates / 2 : Math.max(0, (8 - updates) / 6));
    let updates = 0;
    for (const e of ev.filter((x) => x.event === 'step')) {
      expect(e.lr, `step ${e.step}`).toBeCloseTo(lrAt(updates), 12);
      if (!skipped.has(e.step!)) updates++;
    }
    const state = JSON.parse(fs.readFileSync(path.join(tmp, 'full', 'checkpoint-8', 'trainer_state.json'), 'utf8')) as { llmt_optimizer_steps: number; llmt_loss_scale: { scale: number; growth_tracker: number } };
    expect(state.llmt_optimizer_steps).toBe(8 - skipped.size);
    expect(state.llmt_loss_scale.scale).toBe(65536 / 2 ** skipped.size);

    // the same run stopped at step 4 and resumed
    const part = path.join(tmp, 'part');
    expect((await runCli(flags(part, 4), { home, timeoutMs: 120_000 })).code).toBe(0);
    const resumed = await runCli(flags(part, 8), { home, timeoutMs: 120_000 });
    expect(resumed.code, resumed.stderr).toBe(0);
    const loss = (evs: Ev[]) => evs.filter((e) => e.event === 'step' && e.step! > 4).map((e) => [e.step, e.loss, e.lr]);
    expect(loss(events(resumed.stdout))).toEqual(loss(ev));
    expect(fs.readFileSync(path.join(part, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(tmp, 'full', 'adapter_model.safetensors')))).toBe(true);
  }, 180_000);
});
