// Numerical parity with the reference: HF transformers + PEFT (tests/python, CPU, fp32) on the same tiny
// model folders and adapters. forward: logits within 1e-4 absolute; grad: every LoRA gradient within 1e-3
// relative (to the tensor's largest entry); and adapters written by either side load in the other.
import fs from 'node:fs';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { engineOk, gradDiffs, maxAbsDiff, readSafetensors, referenceTmp, refPy } from '../helpers/native';

let tmp: string;
const py = refPy;
const engine = engineOk;

beforeAll(() => {
  tmp = referenceTmp('llmt-parity-');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const families: { family: string; targets: string; save?: string }[] = [
  { family: 'llama', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj', save: 'lm_head' },
  { family: 'baichuan', targets: 'W_pack,o_proj,gate_proj,up_proj,down_proj' },
  { family: 'gpt_neox', targets: 'query_key_value,dense,dense_h_to_4h,dense_4h_to_h' },
  // Llama 3.1/3.2 (rope_type llama3, tied head), LlamaConfig's attention_bias with head_dim ≠ hidden/heads,
  // Mistral (head_dim 24 on a 64-wide model, as Mistral-Nemo), Qwen2/2.5 (q/k/v biases, tied head)
  { family: 'llama3', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj' },
  { family: 'llama_bias', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj', save: 'lm_head' },
  { family: 'mistral', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj' },
  { family: 'qwen2', targets: 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj', save: 'embed_tokens' },
];

describe.each(families)('parity with HF transformers + PEFT: $family', ({ family, targets, save }) => {
  let model: string;
  let adapter: string;
  const t = () => path.join(tmp, 'tokens.json');

  beforeAll(() => {
    model = path.join(tmp, family);
    adapter = path.join(tmp, `${family}-adapter`);
    engine(['create-tiny', '--family', family, '--out', model, '--seed', '7']);
    py(['make-adapter', '--model', model, '--out', adapter, '--targets', targets, '--r', '4', '--alpha', '8', '--seed', '3', ...(save ? ['--modules-to-save', save] : [])]);
  });

  it('forward without an adapter: same loss and logits', () => {
    const a = path.join(tmp, `${family}-ours.json`);
    const b = path.join(tmp, `${family}-hf.json`);
    engine(['forward', '--model', model, '--tokens', t(), '--out', a]);
    py(['forward', '--model', model, '--tokens', t(), '--out', b]);
    const ours = JSON.parse(fs.readFileSync(a, 'utf8'));
    const hf = JSON.parse(fs.readFileSync(b, 'utf8'));
    expect(maxAbsDiff(ours.logits, hf.logits)).toBeLessThan(1e-4);
    expect(Math.abs(ours.loss - hf.loss)).toBeLessThan(1e-5);
  });

  it('forward with a PEFT-written adapter: same loss and logits', () => {
    const a = path.join(tmp, `${family}-ours-lora.json`);
    const b = path.join(tmp, `${family}-hf-lora.json`);
    engine(['forward', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', a]);
    py(['forward', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', b]);
    const ours = JSON.parse(fs.readFileSync(a, 'utf8'));
    const hf = JSON.parse(fs.readFileSync(b, 'utf8'));
    const base = JSON.parse(fs.readFileSync(path.join(tmp, `${family}-hf.json`), 'utf8'));
    expect(maxAbsDiff(hf.logits, base.logits)).toBeGreaterThan(1e-3); // the adapter really changes the output
    expect(maxAbsDiff(ours.logits, hf.logits)).toBeLessThan(1e-4);
    expect(Math.abs(ours.loss - hf.loss)).toBeLessThan(1e-5);
  });

  it('gradients of every LoRA (and modules_to_save) tensor agree within 1e-3 relative', () => {
    const a = path.join(tmp, `${family}-ours.safetensors`);
    const b = path.join(tmp, `${family}-hf.safetensors`);
    engine(['grad', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', a]);
    py(['grad', '--model', model, '--adapter', adapter, '--tokens', t(), '--out', b]);
    const ours = readSafetensors(a);
    const hf = readSafetensors(b);
    expect([...ours.keys()].sort()).toEqual([...hf.keys()].sort());
    for (const { name, diff, scale } of gradDiffs(ours, hf))
      expect(diff / Math.max(scale, 1e-12), `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
  });

  // 230 positions: several tiles of queries (96) and keys (64) in the CPU attention, the last ones cut short
  it('long rows (several attention tiles): logits, loss and LoRA gradients agree', () => {
    const T = 230;
    let s = 12345;
    const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648), 3 + (s % 300));
    const ids = [Array.from({ length: T }, rnd), Array.from({ length: T }, rnd)];
    const labels = [ids[0]!.map((v, i) => (i < 40 ? -100 : v)), ids[1]!.map((v, i) => (i % 7 === 0 ? -100 : v))];
    const lt = path.join(tmp, `${family}-long-tokens.json`);
    fs.writeFileSync(lt, JSON.stringify({ input_ids: ids, labels }));
    const a = path.join(tmp, `${family}-long-ours.json`);
    const b = path.join(tmp, `${family}-long-hf.json`);
    engine(['forward', '--model', model, '--adapter', adapter, '--tokens', lt, '--out', a]);
    py(['forward', '--model', model, '--adapter', adapter, '--tokens', lt, '--out', b]);
    const ours = JSON.parse(fs.readFileSync(a, 'utf8'));
    const hf = JSON.parse(fs.readFileSync(b, 'utf8'));
    expect(maxAbsDiff(ours.logits, hf.logits)).toBeLessThan(1e-4);
    expect(Math.abs(ours.loss - hf.loss)).toBeLessThan(1e-5);
    const ga = path.join(tmp, `${family}-long-ours.safetensors`);
    const gb = path.join(tmp, `${family}-long-hf.safetensors`);
    engine(['grad', '--model', model, '--adapter', adapter, '--tokens', lt, '--out', ga]);
    py(['grad', '--model', model, '--adapter', adapter, '--tokens', lt, '--out', gb]);
    const mine = readSafetensors(ga);
    const ref = readSafetensors(gb);
    expect([...mine.keys()].sort()).toEqual([...ref.keys()].sort());
    for (const { name, diff, scale } of gradDiffs(mine, ref))
      expect(diff / Math.max(scale, 1e-12), `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
  });

  it.skipIf(family === 'baichuan')('an adapter we train for 20 steps loads in PEFT unchanged and gives our logits', () => {
    const out = path.join(tmp, `${family}-run`);
    const job = path.join(tmp, `${family}-job.json`);
    fs.writeFileSync(job, JSON.stringify({ model, lora: { r: 4, alpha: 8, dropout: 0.05, target_modules: targets.split(','), modules_to_save: save ? [save] : null }, data: { train: t() }, training: { learning_rate: 0.01, max_steps: 20, micro_batch_size: 2 }, output: { dir: out, logging_steps: 10, save_steps: 100 } }));
    engine(['train', '--job', job]);
    const logits = path.join(tmp, `${family}-trained.json`);
    engine(['forward', '--model', model, '--adapter', out, '--tokens', t(), '--out', logits]);
    py(['check-adapter', '--model', model, '--adapter', out, '--tokens', t(), '--logits', logits, '--atol', '1e-4']);
  });
});
