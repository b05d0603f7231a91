// Multi-step training parity with HF transformers' Trainer + PEFT (tests/python/trainer_reference.py, CPU, fp32):
// the same tiny llama, the same initial LoRA adapter, the same samples in the same order (the reference's sampler
// replays the engine's per-epoch permutation and returns what it fed), the same padding and micro-batches; then per
// optimizer step the loss, the learning rate, the pre-clip gradient norm and the epoch, per log the window mean of
// the loss, per evaluation the eval loss, and at the end every tensor of adapter_model.safetensors.
// Variants: linear warmup + weight decay + clipping that bites (a trainable RMSNorm, which HF keeps out of weight
// decay), cosine with warmup_ratio (+ lm_head and embed_tokens in modules_to_save, decayed), constant with PEFT's own
// init (B = 0), custom betas/epsilon, no clipping and a fractional num_epochs, gradient accumulation under both loss
// normalisations (token_mean against transformers ≥ 4.46's rule, mean_of_means against 4.45.2 as it is; a logging
// window of 4 steps), checkpoints with save_total_limit + load_best_model_at_end + EarlyStoppingCallback (the same
// checkpoints left, the same best one as the output, the same step to stop at), and a full fine-tune of a tiny
// GPT-NeoX (LayerNorm weights and every bias out of weight decay).
// Tolerances: loss and grad_norm 1e-5 relative over the first 5 steps, 1e-4 after; lr 1e-9; final weights 1e-4 of
// each tensor's largest entry (measured: ≤ 5e-7, ≤ 5e-7 and ≤ 3e-5). Runs in about 10 s on 2 cores.
// Documented differences (docs/formats.md "Compared with HF Trainer"), checked here as such:
//  - lr: ours is the rate of the step's update (HF since huggingface/transformers#36973); 4.45.2 logs the next one;
//  - eval_loss: ours is the token mean; Trainer's is the mean of the batches' mean losses weighted by batch size.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT } from '../helpers/app';
import { ENGINE, PY, readSafetensors, writeSafetensors } from '../helpers/native';

const REF = path.join(ROOT, 'tests', 'python', 'trainer_reference.py');
const ENV = { ...process.env, OMP_NUM_THREADS: '1', MKL_NUM_THREADS: '1' };

interface Variant {
  name: string;
  family?: 'llama' | 'gpt_neox'; // llama unless said
  method?: 'lora' | 'full';
  targets: string[];
  modules_to_save?: string[];
  zeroB?: boolean; // PEFT's own init: lora_B = 0
  clips?: boolean; // max_grad_norm is below most steps' norm
  training: Record<string, number | string>;
  logging_steps: number;
  eval_steps?: number;
  // checkpoints (HF: save_strategy "steps"), their rotation, the best checkpoint and EarlyStoppingCallback
  output?: { save_steps: number; save_total_limit?: number; load_best_model_at_end?: boolean; early_stopping_patience?: number; early_stopping_threshold?: number };
  // evaluation rows with the same number of label tokens each: Trainer's eval_loss (batch-size-weighted mean of batch
  // means) then equals our token mean, so both sides pick the same best checkpoint
  uniformEval?: boolean;
}

const VARIANTS: Variant[] = [
  {
    name: 'linear-warmup-decay-clip',
    targets: ['q_proj', 'v_proj', 'down_proj'],
    modules_to_save: ['model.norm'],
    clips: true,
    training: { learning_rate: 3e-3, lr_scheduler: 'linear', warmup_steps: 3, weight_decay: 0.1, max_grad_norm: 0.3, max_steps: 16, micro_batch_size: 4, eval_batch_size: 4, seed: 11 },
    logging_steps: 1,
    eval_steps: 5,
  },
  {
    name: 'cosine-warmup-ratio-lm-head',
    targets: ['q_proj', 'k_proj', 'o_proj'],
    modules_to_save: ['lm_head', 'embed_tokens'],
    training: { learning_rate: 2e-3, lr_scheduler: 'cosine', warmup_ratio: 0.2, weight_decay: 0.05, max_grad_norm: 1.0, max_steps: 16, micro_batch_size: 3, eval_batch_size: 3, seed: 5 },
    logging_steps: 1,
    eval_steps: 8,
  },
  {
    name: 'constant-peft-init-no-clip',
    targets: ['gate_proj', 'up_proj'],
    zeroB: true,
    // num_epochs 2.5 instead of max_steps: HF's max_steps = ceil(2.5 × 6 micro-batches) = 15
    training: { learning_rate: 1e-2, lr_scheduler: 'constant', max_grad_norm: 0, adam_beta1: 0.8, adam_beta2: 0.99, adam_epsilon: 1e-6, num_epochs: 2.5, micro_batch_size: 4, seed: 42 },
    logging_steps: 1,
  },
  {
    name: 'ga2-token-mean',
    targets: ['q_proj', 'v_proj', 'o_proj', 'down_proj'],
    training: { learning_rate: 4e-3, lr_scheduler: 'linear', warmup_steps: 2, weight_decay: 0.01, max_grad_norm: 0.5, max_steps: 12, micro_batch_size: 4, gradient_accumulation_steps: 2, eval_batch_size: 4, seed: 3, loss_normalization: 'token_mean' },
    logging_steps: 1,
    eval_steps: 4,
  },
  {
    name: 'ga2-mean-of-means-log4',
    targets: ['q_proj', 'v_proj'],
    training: { learning_rate: 4e-3, lr_scheduler: 'constant_with_warmup', warmup_steps: 3, max_grad_norm: 1.0, max_steps: 12, micro_batch_size: 4, gradient_accumulation_steps: 2, seed: 8, loss_normalization: 'mean_of_means' },
    logging_steps: 4,
  },
  {
    // LoRA+ (training.loraplus_lr_ratio) against PEFT's create_loraplus_optimizer in the stock Trainer: lora_B at lr × 16
    name: 'loraplus-ratio16',
    targets: ['q_proj', 'v_proj', 'down_proj'],
    training: { learning_rate: 2e-3, lr_scheduler: 'linear', warmup_steps: 1, weight_decay: 0.01, max_grad_norm: 1.0, max_steps: 8, micro_batch_size: 4, seed: 5, loraplus_lr_ratio: 16 },
    logging_steps: 1,
  },
  {
    // save_total_limit + load_best_model_at_end + EarlyStoppingCallback: the same checkpoints left, the same best one
    // as the output, the same step to stop at (a learning rate high enough for the eval loss to turn back up)
    name: 'best-checkpoint-early-stopping',
    targets: ['q_proj', 'v_proj', 'down_proj'],
    training: { learning_rate: 3e-2, lr_scheduler: 'constant', max_grad_norm: 1.0, max_steps: 30, micro_batch_size: 4, eval_batch_size: 4, seed: 13 },
    logging_steps: 1,
    eval_steps: 2,
    uniformEval: true,
    output: { save_steps: 2, save_total_limit: 2, load_best_model_at_end: true, early_stopping_patience: 3 },
  },
  {
    // every weight trains: LayerNorm weights and all biases stay out of weight decay, embeddings and the head are in
    name: 'gpt-neox-full-finetune',
    family: 'gpt_neox',
    method: 'full',
    targets: [],
    training: { learning_rate: 1e-3, lr_scheduler: 'linear', warmup_steps: 2, weight_decay: 0.1, max_grad_norm: 1.0, max_steps: 10, micro_batch_size: 4, eval_batch_size: 4, seed: 21 },
    logging_steps: 1,
    eval_steps: 5,
  },
];

// ---- data: ragged rows (6–17 tokens), the first 1–4 labels masked; 22 train rows (micro-batches of 4 leave a
// partial one of 2, of 3 one of 1), 10 eval rows (eval batches of 4: 4, 4, 2) ----
let lcg = 2024;
const rnd = (m: number) => ((lcg = (lcg * 1103515245 + 12345) % 2147483648), Math.floor((lcg / 2147483648) * m));
function rows(n: number) {
  const input_ids: number[][] = [];
  const labels: number[][] = [];
  for (let i = 0; i < n; i++) {
    const len = 6 + rnd(12);
    const ids = Array.from({ length: len }, () => 3 + rnd(300));
    const masked = 1 + rnd(4);
    input_ids.push(ids);
    labels.push(ids.map((t, j) => (j < masked ? -100 : t)));
  }
  return { input_ids, labels, pad_id: 0 };
}

/** Rows of 12 tokens with the first 4 masked: 8 predicted tokens each. */
function uniformRows(n: number) {
  const input_ids = Array.from({ length: n }, () => Array.from({ length: 12 }, () => 3 + rnd(300)));
  return { input_ids, labels: input_ids.map((ids) => ids.map((t, j) => (j < 4 ? -100 : t))), pad_id: 0 };
}

/** Tensor shapes of a safetensors file. */
function shapes(file: string): Map<string, number[]> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { shape: number[] }>;
  return new Map(Object.entries(h).filter(([k]) => k !== '__metadata__').map(([k, v]) => [k, v.shape]));
}

/** A PEFT LoRA adapter folder: A ~ U(±1/√in) as PEFT's kaiming init, B small random (or 0), modules_to_save copies. */
function writeAdapter(dir: string, model: string, v: Variant, seed: number) {
  let s = seed;
  const u = () => ((s = (s * 1103515245 + 12345) % 2147483648), s / 2147483648);
  const base = readSafetensors(path.join(model, 'model.safetensors'));
  const shp = shapes(path.join(model, 'model.safetensors'));
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const k of [...shp.keys()].sort()) {
    const m = /^(.*)\.weight$/.exec(k)!;
    const module = m[1]!;
    const short = module.slice(module.lastIndexOf('.') + 1);
    if (v.targets.includes(short)) {
      const [out, inn] = shp.get(k)!;
      const bound = 1 / Math.sqrt(inn!);
      tensors[`base_model.model.${module}.lora_A.weight`] = { shape: [4, inn!], data: Float32Array.from({ length: 4 * inn! }, () => (2 * u() - 1) * bound) };
      tensors[`base_model.model.${module}.lora_B.weight`] = { shape: [out!, 4], data: Float32Array.from({ length: out! * 4 }, () => (v.zeroB ? 0 : (2 * u() - 1) * 0.05)) };
    } else if (v.modules_to_save?.some((t) => module === t || module.endsWith(`.${t}`))) {
      tensors[`base_model.model.${module}.weight`] = { shape: shp.get(k)!, data: Float32Array.from(base.get(k)!) };
    }
  }
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({
    peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: model, r: 4, lora_alpha: 8, lora_dropout: 0.0,
    target_modules: v.targets, modules_to_save: v.modules_to_save ?? null, bias: 'none', fan_in_fan_out: false,
    init_lora_weights: true, inference_mode: true, layers_to_transform: null, layers_pattern: null, rank_pattern: {},
    alpha_pattern: {}, revision: null, use_rslora: false,
  }, null, 2));
}

function spawnAsync(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - t0 }));
  });
}

interface Ev { event: string; step: number; loss: number; lr: number; grad_norm: number | null; epoch: number; eval_loss: number }
interface RefStep { step: number; loss: number; lr_used: number; epoch: number }
interface RefLog { step: number; loss: number; loss_rounded: number; learning_rate: number; grad_norm: number | null }
interface RefEval { step: number; eval_loss: number; batches: { size: number; sum: number; count: number }[] }
interface Ref { steps: RefStep[]; logs: RefLog[]; evals: RefEval[]; order_seen: number[][]; order_expected: number[][]; decay_groups: { decay: string[]; no_decay: string[] }; adapter: string }

let tmp: string;
let model: string; // the tiny llama
const models: Record<string, string> = {};
const ours = new Map<string, Ev[]>();
let refs: Record<string, Ref>;
const timing: Record<string, number> = {};
const summary: Record<string, Record<string, number>> = {};
const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
const note = (v: string, k: string, x: number) => {
  summary[v] ??= {};
  summary[v]![k] = Math.max(summary[v]![k] ?? 0, x);
};

beforeAll(async () => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-trainer-parity-'));
  for (const family of ['llama', 'gpt_neox']) {
    models[family] = path.join(tmp, `model-${family}`);
    const c = await spawnAsync(ENGINE, ['create-tiny', '--family', family, '--out', models[family]!, '--seed', '7']);
    expect(c.code, c.stderr).toBe(0);
  }
  model = models.llama!;
  const train = path.join(tmp, 'train.json');
  const evalf = path.join(tmp, 'eval.json');
  fs.writeFileSync(train, JSON.stringify(rows(22)));
  fs.writeFileSync(evalf, JSON.stringify(rows(10)));
  const uniformEvalf = path.join(tmp, 'eval-uniform.json');
  fs.writeFileSync(uniformEvalf, JSON.stringify(uniformRows(12)));
  const spec = { threads: 1, variants: [] as Record<string, unknown>[] };
  const jobs: string[] = [];
  VARIANTS.forEach((v, i) => {
    const m = models[v.family ?? 'llama']!;
    const full = v.method === 'full';
    const init = path.join(tmp, `${v.name}-init`);
    if (!full) writeAdapter(init, m, v, 1000 + i);
    const hasEval = (v.eval_steps ?? 0) > 0;
    const ev = v.uniformEval ? uniformEvalf : evalf;
    const job = {
      model: m, threads: 1,
      ...(full ? { method: 'full' } : { lora: { init_adapter: init } }),
      data: { train, ...(hasEval ? { eval: ev } : {}) },
      training: v.training,
      output: { dir: path.join(tmp, `${v.name}-ours`), logging_steps: v.logging_steps, save_steps: 1000, eval_steps: v.eval_steps ?? 0, ...(v.output ?? {}) },
    };
    const jf = path.join(tmp, `${v.name}-job.json`);
    fs.writeFileSync(jf, JSON.stringify(job));
    jobs.push(jf);
    spec.variants.push({ name: v.name, model: m, method: v.method ?? 'lora', ...(full ? {} : { init_adapter: init }), train, ...(hasEval ? { eval: ev } : {}), out: path.join(tmp, `${v.name}-hf`), logging_steps: v.logging_steps, eval_steps: v.eval_steps ?? 0, ...v.training, ...(v.output ?? {}) });
  });
  const specFile = path.join(tmp, 'spec.json');
  const resFile = path.join(tmp, 'ref.json');
  fs.writeFileSync(specFile, JSON.stringify(spec));
  // the reference (one Python process for every variant) and the engine runs side by side, one core each
  const refRun = spawnAsync(PY, [REF, 'run', '--spec', specFile, '--out', resFile]);
  const t0 = Date.now();
  for (const [i, jf] of jobs.entries()) {
    const r = await spawnAsync(ENGINE, ['train', '--job', jf]);
    expect(r.code, `${VARIANTS[i]!.name}: ${r.stderr}\n${r.stdout}`).toBe(0);
    ours.set(VARIANTS[i]!.name, r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Ev));
  }
  timing.engine_s = (Date.now() - t0) / 1000;
  const rr = await refRun;
  timing.reference_s = rr.ms / 1000;
  if (rr.code !== 0) throw new Error(`trainer_reference.py failed (${rr.code}):\n${rr.stderr}\n${rr.stdout}`);
  refs = JSON.parse(fs.readFileSync(resFile, 'utf8')) as Record<string, Ref>;
}, 240_000);

// KEEP_TMP=1 keeps both sides' outputs (adapters, jobs, the reference's JSON) for a closer look
afterAll(() => {
  if (Object.keys(summary).length) console.log(`trainer parity (max relative differences): ${JSON.stringify({ timing, summary }, null, 1)}`);
  if (tmp && !process.env.KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
  else if (tmp) console.log(`kept ${tmp}`);
});

describe.each(VARIANTS)('HF Trainer parity: $name', (v) => {
  const ev = (kind: string) => ours.get(v.name)!.filter((e) => e.event === kind);
  const ref = () => refs[v.name]!;
  const early = (step: number) => step <= 5;

  it('HF was fed the engine\'s sample order', () => {
    // (the micro-batches of the steps trained: a run that stopped early was planned for more; accelerate's loader
    // fetches one batch ahead)
    const n = ref().steps.length * Number(v.training.gradient_accumulation_steps ?? 1);
    expect(ref().order_seen.length).toBeGreaterThanOrEqual(n);
    expect(ref().order_seen.slice(0, n)).toEqual(ref().order_expected.slice(0, n));
  });

  it('per optimizer step: loss, learning rate, pre-clip gradient norm and epoch', () => {
    const steps = ev('step');
    const trained = ref().steps.length; // HF's own count (max_steps, or derived from num_train_epochs; fewer when it stopped early)
    const maxSteps = v.output?.early_stopping_patience ? Number(v.training.max_steps) : trained;
    expect((ev('started')[0] as unknown as { max_steps: number }).max_steps).toBe(maxSteps);
    if (v.training.max_steps) expect(maxSteps).toBe(v.training.max_steps);
    // the same steps, and with early stopping the same last one
    expect(steps.map((e) => e.step)).toEqual(Array.from({ length: trained / v.logging_steps }, (_, i) => (i + 1) * v.logging_steps));
    const byStep = new Map(ref().steps.map((s) => [s.step, s]));
    const logs = new Map(ref().logs.map((l) => [l.step, l]));
    const errs: string[] = [];
    const check = (ok: boolean, what: string) => ok || errs.push(what);
    let clipped = 0;
    for (const e of steps) {
      const s = byStep.get(e.step)!;
      const lg = logs.get(e.step)!;
      const tol = early(e.step) ? 1e-5 : 1e-4;
      // the logged loss: the mean of the step losses since the previous log (HF: tr_loss / steps, before rounding)
      const dl = rel(e.loss, lg.loss);
      note(v.name, 'loss', dl);
      check(dl < tol, `step ${e.step}: loss ${e.loss} vs HF ${lg.loss}`);
      check(Math.abs(lg.loss_rounded - lg.loss) <= 5e-5 + 1e-12, `step ${e.step}: HF printed ${lg.loss_rounded} for ${lg.loss}`);
      // every step's own loss too (HF: the sum of training_step's returns over the step's micro-batches)
      if (v.logging_steps === 1) check(rel(e.loss, s.loss) < tol, `step ${e.step}: loss ${e.loss} vs HF step loss ${s.loss}`);
      // the rate of this step's update (HF's param_groups lr before scheduler.step())
      const dlr = rel(e.lr, s.lr_used);
      note(v.name, 'lr', dlr);
      check(dlr < 1e-9, `step ${e.step}: lr ${e.lr} vs ${s.lr_used}`);
      // transformers 4.45.2 logs the rate after scheduler.step(): the next step's (fixed upstream, #36973)
      const next = byStep.get(e.step + 1);
      if (next) check(rel(lg.learning_rate, next.lr_used) < 1e-9, `step ${e.step}: HF logged lr ${lg.learning_rate}, next step's ${next.lr_used}`);
      // epoch: HF's state.epoch, epoch + micro-batches done / micro-batches per epoch
      check(Math.abs(e.epoch - s.epoch) < 1e-9, `step ${e.step}: epoch ${e.epoch} vs HF ${s.epoch}`);
      if (Number(v.training.max_grad_norm) > 0) {
        const dg = rel(e.grad_norm!, lg.grad_norm!);
        note(v.name, 'grad_norm', dg);
        check(dg < tol, `step ${e.step}: grad_norm ${e.grad_norm} vs HF ${lg.grad_norm}`);
        if (lg.grad_norm! > Number(v.training.max_grad_norm)) clipped++;
      } else {
        check(lg.grad_norm === null || lg.grad_norm === undefined, `step ${e.step}: HF logged a grad_norm without clipping`);
        check(e.grad_norm! > 0, `step ${e.step}: no grad_norm`); // ours reports it all the same
      }
    }
    expect(errs).toEqual([]);
    if (v.clips) expect(clipped).toBeGreaterThan(steps.length / 2); // the clipping really bites
  });

  it('final weights (adapter_model.safetensors; a full fine-tune\'s model.safetensors): every tensor within 1e-4 of HF, relative to its largest entry', () => {
    const file = v.method === 'full' ? 'model.safetensors' : 'adapter_model.safetensors';
    const mine = readSafetensors(path.join(tmp, `${v.name}-ours`, file));
    const theirs = readSafetensors(path.join(ref().adapter, file));
    const init = readSafetensors(v.method === 'full' ? path.join(models[v.family ?? 'llama']!, 'model.safetensors') : path.join(tmp, `${v.name}-init`, 'adapter_model.safetensors'));
    expect([...mine.keys()].sort()).toEqual([...theirs.keys()].sort());
    // GPT-NeoX's key bias (the middle third of each head's q|k|v slice of query_key_value.bias) has a gradient that
    // is zero in exact arithmetic (softmax ignores a shift common to all keys): each side's is rounding noise, which
    // AdamW's m/√v turns into steps of about lr. Those entries carry no information and are left out.
    const hd = 16;
    const noise = (k: string, i: number) => v.family === 'gpt_neox' && k.endsWith('attention.query_key_value.bias') && Math.floor(i / hd) % 3 === 1;
    for (const [k, t] of theirs) {
      const m = mine.get(k)!;
      const i0 = init.get(k)!;
      let scale = 0;
      let diff = 0;
      let moved = 0;
      for (let i = 0; i < t.length; i++) {
        if (noise(k, i)) continue;
        scale = Math.max(scale, Math.abs(t[i]!));
        diff = Math.max(diff, Math.abs(t[i]! - m[i]!));
        moved = Math.max(moved, Math.abs(t[i]! - i0[i]!));
      }
      note(v.name, 'adapter', diff / scale);
      expect(moved, `${k} did not train`).toBeGreaterThan(100 * diff);
      expect(diff / scale, `${k}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-4);
    }
  });

  it('weight decay groups: HF decays every trainable tensor but norm weights and biases', () => {
    const g = ref().decay_groups;
    for (const n of g.no_decay) expect(n).toMatch(/norm|bias/);
    for (const n of g.decay) expect(n).not.toMatch(/norm|bias/);
    if (v.modules_to_save?.includes('model.norm')) expect(g.no_decay.some((n) => n.includes('model.norm.modules_to_save'))).toBe(true);
  });

  it.runIf(Boolean(v.output))('checkpoints left (save_total_limit), the best one (load_best_model_at_end) and the step it stopped at (EarlyStoppingCallback): as HF Trainer', () => {
    const r = ref() as Ref & { checkpoints: number[]; best_model_checkpoint: number | null; global_step: number };
    const o = v.output!;
    const done = ev('done')[0] as unknown as { step: number; best_checkpoint?: string; early_stopped?: boolean; output_from_best?: boolean };
    expect(done.step).toBe(r.global_step);
    if (o.early_stopping_patience) {
      expect(r.global_step, 'the run is meant to stop early').toBeLessThan(Number(v.training.max_steps));
      expect(done.early_stopped).toBe(true);
    }
    const dir = path.join(tmp, `${v.name}-ours`);
    const left = fs.readdirSync(dir).filter((n) => /^checkpoint-\d+$/.test(n)).map((n) => Number(n.slice(11))).sort((a, b) => a - b);
    expect(left).toEqual(r.checkpoints);
    if (o.save_total_limit) expect(left.length).toBeLessThanOrEqual(Math.max(2, o.save_total_limit));
    if (o.load_best_model_at_end) {
      expect(Number(/checkpoint-(\d+)$/.exec(done.best_checkpoint ?? '')?.[1])).toBe(r.best_model_checkpoint);
      expect(r.best_model_checkpoint, 'the best checkpoint is meant to be an earlier one').not.toBe(r.global_step);
      expect(done.output_from_best).toBe(true);
      // (the final weights test above compares the output with HF's, which Trainer loaded from the best checkpoint)
    }
  });

  it.skipIf(!v.eval_steps)('eval loss: our token mean, and HF Trainer\'s batch-size-weighted mean of batch means', () => {
    const evals = ev('eval');
    const hf = new Map(ref().evals.map((e) => [e.step, e]));
    const common = evals.filter((e) => hf.has(e.step));
    expect(common.length).toBeGreaterThanOrEqual(2);
    for (const e of common) {
      const r = hf.get(e.step)!;
      const tokenMean = r.batches.reduce((a, b) => a + b.sum, 0) / r.batches.reduce((a, b) => a + b.count, 0);
      const n = r.batches.reduce((a, b) => a + b.size, 0);
      const hfFormula = r.batches.reduce((a, b) => a + (b.size * b.sum) / b.count, 0) / n;
      expect(rel(r.eval_loss, hfFormula), 'Trainer.evaluate is the batch-size-weighted mean of batch means').toBeLessThan(1e-6);
      const d = rel(e.eval_loss, tokenMean);
      note(v.name, 'eval_loss', d);
      expect(d, `step ${e.step}: eval_loss ${e.eval_loss} vs token mean ${tokenMean} (Trainer: ${r.eval_loss})`).toBeLessThan(1e-4);
      note(v.name, 'eval_loss_vs_trainer_definition', rel(e.eval_loss, r.eval_loss));
    }
  });
});

// Where transformers 4.45.2 cannot be the reference: its gradient-accumulation window runs on across the end of an
// epoch, while transformers ≥ 4.46 (and the engine) end the epoch with a shorter step, and num_train_epochs E gives
// ceil(E · ceil(micro-batches per epoch / GA)) steps. Checked against the engine's own forward of the checkpoint
// before that short step: its loss is the mean of the two remaining micro-batches' mean losses (mean_of_means, HF's
// loss / current_gradient_accumulation_steps) or their token mean (token_mean).
describe('an optimizer step never spans two epochs (transformers ≥ 4.46)', () => {
  it.each(['mean_of_means', 'token_mean'])('%s: 22 rows, micro-batch 4, GA 4, 1.5 epochs = 3 steps (4, 2, 4 micro-batches)', async (normalization) => {
    const dir = path.join(tmp, `epochs-${normalization}`);
    fs.mkdirSync(dir);
    const n = 22;
    const ids = Array.from({ length: n }, (_, i) => Array.from({ length: 12 }, (_, t) => 3 + ((i * 37 + t * 11) % 300)));
    const labels = ids.map((r) => r.map((x, t) => (t < 3 + (r[0]! % 5) ? -100 : x)));
    const data = path.join(dir, 'train.json');
    fs.writeFileSync(data, JSON.stringify({ input_ids: ids, labels }));
    const out = path.join(dir, 'out');
    const job = path.join(dir, 'job.json');
    fs.writeFileSync(job, JSON.stringify({
      model, threads: 1, lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj'] }, data: { train: data },
      training: { learning_rate: 0.01, num_epochs: 1.5, micro_batch_size: 4, gradient_accumulation_steps: 4, seed: 9, loss_normalization: normalization },
      output: { dir: out, logging_steps: 1, save_steps: 1 },
    }));
    const r = await spawnAsync(ENGINE, ['train', '--job', job]);
    expect(r.code, r.stderr).toBe(0);
    const evs = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Ev & { max_steps: number });
    expect(evs.find((e) => e.event === 'started')!.max_steps).toBe(3);
    const steps = evs.filter((e) => e.event === 'step');
    expect(steps.map((e) => e.epoch)).toEqual([4 / 6, 1, 1 + 4 / 6]);
    const state = JSON.parse(fs.readFileSync(path.join(out, 'checkpoint-3', 'trainer_state.json'), 'utf8'));
    expect(state.data_cursor).toEqual({ epoch: 1, index: 16 });
    // step 2: the rows at 16..21 of epoch 0's order, as micro-batches of 4 and 2, on checkpoint-1's weights
    const o = await spawnAsync(PY, [REF, 'order', '--n', String(n), '--seed', '9', '--epochs', '1']);
    const order = JSON.parse(o.stdout.trim()) as number[];
    const parts: { loss: number; count: number }[] = [];
    for (const rowsIdx of [order.slice(16, 20), order.slice(20, 22)]) {
      const t = path.join(dir, `mb-${rowsIdx[0]}.json`);
      fs.writeFileSync(t, JSON.stringify({ input_ids: rowsIdx.map((i) => ids[i]), labels: rowsIdx.map((i) => labels[i]) }));
      const f = path.join(dir, `mb-${rowsIdx[0]}-out.json`);
      const fr = await spawnAsync(ENGINE, ['forward', '--model', model, '--adapter', path.join(out, 'checkpoint-1'), '--tokens', t, '--out', f]);
      expect(fr.code, fr.stderr).toBe(0);
      const count = rowsIdx.reduce((a, i) => a + labels[i]!.slice(1).filter((x) => x !== -100).length, 0);
      parts.push({ loss: (JSON.parse(fs.readFileSync(f, 'utf8')) as { loss: number }).loss, count });
    }
    const expected = normalization === 'mean_of_means'
      ? (parts[0]!.loss + parts[1]!.loss) / 2
      : (parts[0]!.loss * parts[0]!.count + parts[1]!.loss * parts[1]!.count) / (parts[0]!.count + parts[1]!.count);
    expect(rel(steps[1]!.loss, expected), `step 2 loss ${steps[1]!.loss} vs ${expected}`).toBeLessThan(1e-5);
  });
});
