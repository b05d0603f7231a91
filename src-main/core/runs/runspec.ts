// runspec.ts — the RunSpec: one versioned, validated description of a fine-tune, produced identically from
// the CLI's seed flags, `--config run.json`, the seed's LoRA config files and its DeepSpeed JSON (and, later,
// the wizard). It is stored with the run and turned into the engine's job file (docs/formats.md).
import fs from 'node:fs';

import { z } from 'zod';

import { FORMATS } from '../data/formats.js';
import { TEMPLATES } from '../data/templates.js';

export const RUNSPEC_VERSION = 1;

const PosInt = z.number().int().positive();

export const RunSpec = z
  .object({
    version: z.literal(RUNSPEC_VERSION).default(RUNSPEC_VERSION),
    name: z.string().min(1).max(200).optional(),
    // quantization: QLoRA — the base model's block linears as bitsandbytes 4-bit (NF4 or FP4, double-quantized
    // scales) while the LoRA adapter trains in fp32; method stays "lora" (docs/formats.md "quantization")
    model: z.object({ path: z.string().min(1), quantization: z.enum(['none', 'nf4', 'fp4']).default('none') }).strict(),
    method: z.enum(['lora', 'full']).default('lora'),
    lora: z
      .object({
        r: PosInt.default(8),
        alpha: z.number().positive().default(32),
        dropout: z.number().min(0).lt(1).default(0.05),
        target_modules: z.array(z.string().min(1)).min(1).nullable().default(null),
        modules_to_save: z.array(z.string().min(1)).nullable().default(null),
      })
      .strict()
      .default({ r: 8, alpha: 32, dropout: 0.05, target_modules: null, modules_to_save: null }),
    data: z
      .object({
        train: z.string().min(1),
        validation: z.string().min(1).nullable().default(null),
        validation_percent: z.number().min(0).lt(100).default(0),
        format: z.enum(FORMATS as [string, ...string[]]).nullable().default(null),
        template: z.enum(TEMPLATES).default('raw'),
        prompt_column: z.string().min(1).nullable().default(null),
        response_column: z.string().min(1).nullable().default(null),
        history_column: z.string().min(1).nullable().default(null),
        max_source_length: PosInt.default(512),
        max_target_length: PosInt.default(64),
      })
      .strict(),
    training: z
      .object({
        learning_rate: z.number().positive().default(2e-4),
        lr_scheduler: z.enum(['linear', 'cosine', 'constant', 'constant_with_warmup']).default('linear'),
        warmup_steps: z.number().int().min(0).default(0),
        max_steps: z.number().int().default(-1),
        num_epochs: z.number().positive().default(3),
        micro_batch_size: PosInt.default(4),
        eval_batch_size: PosInt.default(4),
        gradient_accumulation_steps: PosInt.default(1),
        max_grad_norm: z.number().min(0).default(1.0),
        weight_decay: z.number().min(0).default(0),
        seed: z.number().int().min(0).default(42),
        precision: z.enum(['fp32', 'bf16', 'fp16']).default('fp32'),
        gradient_checkpointing: z.boolean().default(false),
        // GPU runs: the AdamW state and step in host memory (engine training.offload_optimizer)
        offload_optimizer: z.boolean().default(false),
        // GPU runs with gradient checkpointing: the checkpointed block inputs in host memory
        offload_checkpoints: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    devices: z.object({ kind: z.enum(['cpu', 'cuda']).default('cpu'), ids: z.array(z.number().int().min(0)).default([]) }).strict().default({ kind: 'cpu', ids: [] }),
    // data parallelism on this machine: nproc_per_node workers (torchrun's flag), one per device; rank 0 reports
    // the run. zero_stage 1 shards AdamW state over the workers (full fine-tuning only). docs/distributed.md
    distributed: z
      .object({
        nproc_per_node: PosInt.max(64).default(1),
        zero_stage: z.union([z.literal(0), z.literal(1)]).default(0),
      })
      .strict()
      .default({ nproc_per_node: 1, zero_stage: 0 }),
    output: z
      .object({
        dir: z.string().min(1),
        logging_steps: PosInt.default(10),
        save_steps: PosInt.default(500),
        eval_steps: z.number().int().min(0).default(0),
        overwrite: z.boolean().default(false),
      })
      .strict(),
    resume_from: z.string().min(1).nullable().default(null),
  })
  .strict()
  .refine((s) => !s.training.offload_checkpoints || s.training.gradient_checkpointing, {
    message: 'training.offload_checkpoints moves the checkpointed block inputs to host memory: it needs gradient_checkpointing',
    path: ['training', 'offload_checkpoints'],
  })
  .refine((s) => s.model.quantization === 'none' || s.method === 'lora', {
    message: 'model.quantization (QLoRA) needs method "lora": the 4-bit base weights are frozen',
    path: ['model', 'quantization'],
  })
  // GPUs: one worker per GPU, each holding the whole model; several GPUs are data parallel (docs/distributed.md)
  .superRefine((s, ctx) => {
    const ids = s.devices.ids;
    if (new Set(ids).size !== ids.length) ctx.addIssue({ code: 'custom', message: `each GPU may be listed once (got ${ids.join(', ')})`, path: ['devices', 'ids'] });
    if (s.devices.kind !== 'cuda') return;
    const n = s.distributed.nproc_per_node;
    if (ids.length >= 2 && n !== ids.length) {
      ctx.addIssue({ code: 'custom', message: `a run on several GPUs has one worker per GPU: nproc_per_node must be ${ids.length} (the number of GPUs in devices.ids), not ${n}`, path: ['distributed', 'nproc_per_node'] });
    } else if (ids.length < 2 && n > 1) {
      ctx.addIssue({ code: 'custom', message: `one worker per GPU: ${n} workers on one GPU are not supported; to train on several GPUs list them in devices.ids (--device cuda:0,1)`, path: ['distributed', 'nproc_per_node'] });
    }
    if (ids.length >= 2 && s.distributed.zero_stage !== 0) {
      ctx.addIssue({ code: 'custom', message: 'ZeRO-1 (zero_stage 1) is supported for CPU workers only: on several GPUs every worker keeps the whole optimizer state; use zero_stage 0', path: ['distributed', 'zero_stage'] });
    }
  });

/** Whether the spec trains on several GPUs (one worker per GPU, CUDA_VISIBLE_DEVICES set per worker). */
export function isMultiGpu(spec: Pick<RunSpec, 'devices'>): boolean {
  return spec.devices.kind === 'cuda' && spec.devices.ids.length >= 2;
}

/** The GPUs a cuda spec computes on (no id: GPU 0, as the engine's "cuda" means); none for a CPU spec. */
export function gpuIds(spec: Pick<RunSpec, 'devices'>): number[] {
  if (spec.devices.kind !== 'cuda') return [];
  return spec.devices.ids.length ? [...spec.devices.ids] : [0];
}

/** A run's devices as people read them: "CPU", "CPU × 2 workers", "GPU 0", "GPU 0, 1". */
export function deviceLabel(spec: Pick<RunSpec, 'devices' | 'distributed'>): string {
  if (spec.devices.kind === 'cuda') return `GPU ${gpuIds(spec).join(', ')}`;
  const n = spec.distributed?.nproc_per_node ?? 1;
  return n > 1 ? `CPU × ${n} workers` : 'CPU';
}

export type RunSpec = z.output<typeof RunSpec>;
export type RunSpecInput = z.input<typeof RunSpec>;

export class RunSpecError extends Error {
  constructor(
    message: string,
    readonly fields: { path: string; message: string }[] = [],
  ) {
    super(message);
    this.name = 'RunSpecError';
  }
}

/** Validates with field-level messages ("training.learning_rate: Too small: expected number to be >0"). */
export function parseRunSpec(input: unknown): RunSpec {
  const r = RunSpec.safeParse(input);
  if (r.success) return r.data;
  const fields = r.error.issues.map((i) => ({ path: i.path.map(String).join('.') || '(spec)', message: i.message }));
  throw new RunSpecError(`invalid run spec: ${fields.map((f) => `${f.path}: ${f.message}`).join('; ')}`, fields);
}

/** The seed's LoRA config file: {lora_r, lora_alpha, lora_dropout, lora_target_modules, modules_to_save}. */
export function readLoraConfig(file: string): RunSpecInput['lora'] {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new RunSpecError(`cannot read the LoRA config ${file}: ${(err as Error).message}`);
  }
  const known = new Set(['lora_r', 'lora_alpha', 'lora_dropout', 'lora_target_modules', 'modules_to_save']);
  const unknown = Object.keys(j).filter((k) => !known.has(k));
  if (unknown.length) throw new RunSpecError(`${file}: unknown field(s) ${unknown.join(', ')} (the seed's LoRA config has ${[...known].join(', ')})`);
  const out: NonNullable<RunSpecInput['lora']> = {};
  if (j.lora_r !== undefined) out.r = j.lora_r as number;
  if (j.lora_alpha !== undefined) out.alpha = j.lora_alpha as number;
  if (j.lora_dropout !== undefined) out.dropout = j.lora_dropout as number;
  if (j.lora_target_modules !== undefined) out.target_modules = j.lora_target_modules as string[];
  if (j.modules_to_save !== undefined) out.modules_to_save = j.modules_to_save as string[] | null;
  return out;
}

/**
 * The seed's DeepSpeed JSON: what has a meaning here is mapped (fp16/bf16 "auto" or true, gradient_clipping,
 * micro-batch, accumulation); ZeRO, buckets and the like have none on one process and come back as warnings.
 */
export function applyDeepspeed(spec: RunSpecInput, file: string): { spec: RunSpecInput; warnings: string[] } {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new RunSpecError(`cannot read the DeepSpeed config ${file}: ${(err as Error).message}`);
  }
  const warnings: string[] = [];
  const training = { ...(spec.training ?? {}) };
  let distributed = { ...(spec.distributed ?? {}) };
  const enabled = (v: unknown) => v === true || v === 'auto' || (typeof v === 'object' && v !== null && ((v as { enabled?: unknown }).enabled === true || (v as { enabled?: unknown }).enabled === 'auto'));
  for (const [k, v] of Object.entries(j)) {
    if (k === 'bf16' || k === 'fp16') {
      const on = enabled(v);
      const explicit = typeof v === 'object' && v !== null && (v as { enabled?: unknown }).enabled === true;
      if (explicit) training.precision = k;
      else if (on) warnings.push(`deepspeed ${k}: "auto" — precision follows --bf16/--fp16 (fp32 on CPU)`);
    } else if (k === 'gradient_clipping') {
      if (typeof v === 'number') training.max_grad_norm = v;
    } else if (k === 'train_micro_batch_size_per_gpu') {
      if (typeof v === 'number') training.micro_batch_size = v;
    } else if (k === 'gradient_accumulation_steps') {
      if (typeof v === 'number') training.gradient_accumulation_steps = v;
    } else if (k === 'zero_optimization') {
      const stage = typeof v === 'object' && v !== null ? (v as { stage?: unknown }).stage : undefined;
      if (typeof stage === 'number' && stage >= 1 && spec.devices?.kind === 'cuda') {
        // the engine shards optimizer state on CPU workers only: GPU workers each keep all of it
        warnings.push(`deepspeed zero_optimization.stage ${stage}: ZeRO is not done on GPUs (each GPU worker keeps the whole optimizer state); ignored`);
      } else if (typeof stage === 'number' && stage >= 1) {
        distributed = { ...distributed, zero_stage: 1 };
        if (stage > 1) warnings.push(`deepspeed zero_optimization.stage ${stage}: the engine shards optimizer state only (ZeRO-1, full fine-tuning); gradients and parameters stay whole on each worker`);
      }
      const rest = typeof v === 'object' && v !== null ? Object.keys(v).filter((x) => x !== 'stage') : [];
      if (rest.length) warnings.push(`deepspeed zero_optimization.${rest.join(', ')}: no meaning for the LLMs-train engine; ignored`);
    } else if (k === 'train_batch_size' && v === 'auto') {
      /* derived from micro-batch × accumulation × devices, as "auto" means */
    } else {
      warnings.push(`deepspeed ${k}: no meaning for the LLMs-train engine; ignored`);
    }
  }
  return { spec: { ...spec, training, ...(Object.keys(distributed).length ? { distributed } : {}) }, warnings };
}

/** The engine's job JSON for a spec whose data has been tokenized into train/eval .tok files. */
export function toEngineJob(spec: RunSpec, tok: { train: string; eval: string | null }, resumeFrom: string | null): Record<string, unknown> {
  const t = spec.training;
  return {
    version: 1,
    model: spec.model.path,
    method: spec.method,
    // the engine computes on this device; without a usable GPU it falls back to the CPU and says so (a warning event)
    // several GPUs: "cuda" — each worker sees only the run's GPUs (CUDA_VISIBLE_DEVICES) and takes cuda:LOCAL_RANK
    device: spec.devices.kind === 'cuda' ? (isMultiGpu(spec) ? 'cuda' : `cuda:${spec.devices.ids[0] ?? 0}`) : 'cpu',
    ...(spec.model.quantization !== 'none' ? { quantization: spec.model.quantization } : {}),
    ...(spec.method === 'lora'
      ? { lora: { r: spec.lora.r, alpha: spec.lora.alpha, dropout: spec.lora.dropout, target_modules: spec.lora.target_modules ?? [], modules_to_save: spec.lora.modules_to_save } }
      : {}),
    data: { train: tok.train, ...(tok.eval ? { eval: tok.eval } : {}) },
    training: {
      learning_rate: t.learning_rate,
      lr_scheduler: t.lr_scheduler,
      warmup_steps: t.warmup_steps,
      max_steps: t.max_steps,
      num_epochs: Math.ceil(t.num_epochs),
      micro_batch_size: t.micro_batch_size,
      eval_batch_size: t.eval_batch_size,
      gradient_accumulation_steps: t.gradient_accumulation_steps,
      max_grad_norm: t.max_grad_norm,
      weight_decay: t.weight_decay,
      seed: t.seed,
      gradient_checkpointing: t.gradient_checkpointing,
      ...(t.offload_optimizer ? { offload_optimizer: true } : {}),
      ...(t.offload_checkpoints ? { offload_checkpoints: true } : {}),
      precision: t.precision,
    },
    output: { dir: spec.output.dir, logging_steps: spec.output.logging_steps, save_steps: spec.output.save_steps, eval_steps: spec.output.eval_steps },
    ...(resumeFrom ? { resume_from: resumeFrom } : {}),
    ...(spec.distributed.nproc_per_node > 1
      ? // GPU workers: "auto" — NCCL, or Gloo (with a warning event) where NCCL cannot load
        { distributed: { world_size: spec.distributed.nproc_per_node, backend: spec.devices.kind === 'cuda' ? 'auto' : 'gloo', zero_stage: spec.distributed.zero_stage } }
      : {}),
  };
}
