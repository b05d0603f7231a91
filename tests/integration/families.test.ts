// The model families of issue 10 (BLOOM/TigerBot, Falcon 7b-style and new decoder architecture, MiniCPM,
// Baichuan-13B, ChatGLM2-6B, ChatGLM-6B) against their reference implementations, on tiny random models that
// `llmt-engine create-tiny` writes with the real config.json field names: HF transformers + PEFT for BLOOM and
// Falcon, faithful ports of the published remote code (tests/python/ref_models) with PEFT's own LoRA layers for
// the others (tests/python/family_reference.py). forward: logits within 1e-4 absolute; grad: every LoRA gradient
// within 1e-3 relative (to the tensor's largest entry); and an adapter our engine trains with the targets of
// configs/lora_config_<family>.json carries the family's PEFT key names and gives our logits in the reference.
// Set LLMS_TRAIN_NATIVE_DIR to test another build of llmt-engine (default native/build/bin).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT } from '../helpers/app';
import { ENGINE, gradDiffs, maxAbsDiff, PY, readSafetensors } from '../helpers/native';

const REF = path.join(ROOT, 'tests', 'python', 'family_reference.py');
const ENV = { ...process.env, OMP_NUM_THREADS: '1', LLMT_NUM_THREADS: '1' };
let tmp: string;

function engine(args: string[]) {
  const r = spawnSync(ENGINE, args, { encoding: 'utf8', timeout: 120_000, env: ENV });
  if (r.status !== 0) throw new Error(`llmt-engine ${args.join(' ')} failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

function py(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(PY, [REF, ...args], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += String(d)));
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`family_reference ${args.join(' ')} failed (${code}):\n${err}`))));
  });
}

// Rows carry ChatGLM-6B's [gMASK] (261) and <sop> (262) of the tiny tokenizer: its positions and prefix mask need
// them; for the other families they are ordinary ids.
const tokens = {
  input_ids: [
    [1, 37, 99, 261, 262, 61, 8, 77, 300, 12],
    [1, 5, 6, 7, 261, 262, 10, 11, 12, 13],
  ],
  labels: [
    [-100, -100, -100, -100, 262, 61, 8, 77, 300, 12],
    [-100, 5, 6, 7, 8, 262, 10, 11, 12, 13],
  ],
};

interface Fam {
  family: string; // create-tiny --family
  config: string; // configs/lora_config_<config>.json: the targets users put in their configs
  module: string; // a module path every adapter key of this family's first layer starts with
}
const families: Fam[] = [
  { family: 'bloom', config: 'bloom', module: 'base_model.model.transformer.h.0.' },
  { family: 'falcon', config: 'falcon', module: 'base_model.model.transformer.h.0.' },
  { family: 'falcon40b', config: 'falcon', module: 'base_model.model.transformer.h.0.' },
  { family: 'minicpm', config: 'minicpm', module: 'base_model.model.model.layers.0.' },
  { family: 'baichuan13b', config: 'baichuan', module: 'base_model.model.model.layers.0.' },
  { family: 'chatglm2', config: 'chatglm2_6b', module: 'base_model.model.transformer.encoder.layers.0.' },
  { family: 'chatglm', config: 'chatglm_6b', module: 'base_model.model.transformer.layers.0.' },
];
const targetsOf = (f: Fam) =>
  (JSON.parse(fs.readFileSync(path.join(ROOT, 'configs', `lora_config_${f.config}.json`), 'utf8')) as { lora_target_modules: string[] }).lora_target_modules;

beforeAll(async () => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-families-'));
  const t = path.join(tmp, 'tokens.json');
  fs.writeFileSync(t, JSON.stringify(tokens));
  const jobs: (() => Promise<void>)[] = [];
  for (const f of families) {
    const d = (x: string) => path.join(tmp, `${f.family}-${x}`);
    const targets = targetsOf(f);
    engine(['create-tiny', '--family', f.family, '--out', d('model'), '--seed', '7']);
    // an adapter trained by our engine with the family's config targets (dropout on)
    fs.writeFileSync(d('job.json'), JSON.stringify({ model: d('model'), lora: { r: 4, alpha: 8, dropout: 0.05, target_modules: targets }, data: { train: t }, training: { learning_rate: 0.01, max_steps: 20, micro_batch_size: 2 }, output: { dir: d('run'), logging_steps: 10, save_steps: 100 } }));
    engine(['train', '--job', d('job.json')]);
    engine(['forward', '--model', d('model'), '--adapter', d('run'), '--tokens', t, '--out', d('trained.json')]);
    jobs.push(() => py(['bundle', '--model', d('model'), '--tokens', t, '--targets', targets.join(','), '--out', d('ref'), '--r', '4', '--alpha', '8', '--seed', '3', '--check-adapter', d('run'), '--check-logits', d('trained.json')]));
  }
  // two reference processes at a time (importing torch dominates)
  const queue = [...jobs];
  await Promise.all([0, 1].map(async () => {
    for (let j = queue.shift(); j; j = queue.shift()) await j();
  }));
}, 300_000);
afterAll(() => tmp && fs.rmSync(tmp, { recursive: true, force: true }));

describe.each(families)('$family vs its reference', (f) => {
  const d = (x: string) => path.join(tmp, `${f.family}-${x}`);
  const t = () => path.join(tmp, 'tokens.json');
  const load = (p: string) => JSON.parse(fs.readFileSync(p, 'utf8')) as { loss: number; logits: number[][][] };

  it('forward without an adapter: same loss and logits', () => {
    engine(['forward', '--model', d('model'), '--tokens', t(), '--out', d('ours.json')]);
    const ours = load(d('ours.json'));
    const ref = load(path.join(d('ref'), 'base.json'));
    expect(maxAbsDiff(ours.logits, ref.logits)).toBeLessThan(1e-4);
    expect(Math.abs(ours.loss - ref.loss)).toBeLessThan(1e-5 * Math.max(1, Math.abs(ref.loss)));
  });

  it('forward with a PEFT adapter on the config targets: same loss and logits', () => {
    engine(['forward', '--model', d('model'), '--adapter', path.join(d('ref'), 'adapter'), '--tokens', t(), '--out', d('ours-lora.json')]);
    const ours = load(d('ours-lora.json'));
    const ref = load(path.join(d('ref'), 'lora.json'));
    expect(maxAbsDiff(ref.logits, load(path.join(d('ref'), 'base.json')).logits)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(ours.logits, ref.logits)).toBeLessThan(1e-4);
    expect(Math.abs(ours.loss - ref.loss)).toBeLessThan(1e-5 * Math.max(1, Math.abs(ref.loss)));
  });

  it('gradients of every LoRA tensor agree within 1e-3 relative', () => {
    engine(['grad', '--model', d('model'), '--adapter', path.join(d('ref'), 'adapter'), '--tokens', t(), '--out', d('ours.safetensors')]);
    const ours = readSafetensors(d('ours.safetensors'));
    const ref = readSafetensors(path.join(d('ref'), 'grads.safetensors'));
    expect([...ours.keys()].sort()).toEqual([...ref.keys()].sort());
    for (const { name, diff, scale } of gradDiffs(ours, ref)) {
      expect(scale, `${name}: zero reference gradient`).toBeGreaterThan(0);
      expect(diff / scale, `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
    }
  });

  it('an adapter our engine trains has the family PEFT key names and gives our logits in the reference', () => {
    const keys = [...readSafetensors(path.join(d('run'), 'adapter_model.safetensors')).keys()];
    const targets = targetsOf(f);
    for (const tm of targets) expect(keys.some((k) => k.startsWith(f.module) && k.includes(`.${tm}.lora_A.weight`)), tm).toBe(true);
    const cfg = JSON.parse(fs.readFileSync(path.join(d('run'), 'adapter_config.json'), 'utf8')) as { target_modules: string[] };
    expect([...cfg.target_modules].sort()).toEqual([...targets].sort());
    const check = JSON.parse(fs.readFileSync(path.join(d('ref'), 'check.json'), 'utf8')) as { max_abs_diff: number };
    expect(check.max_abs_diff).toBeLessThan(1e-4);
  });

  it('greedy generation with the KV cache continues the prompt', () => {
    const out = JSON.parse(engine(['generate', '--model', d('model'), '--prompt-ids', '1,37,99,261,262', '--max-new-tokens', '4'])) as { ids: number[] };
    expect(out.ids.length).toBeGreaterThan(0);
  });
});
