// runspec.ts — the RunSpec: one versioned, validated description of a fine-tune, produced identically from
// the CLI's seed flags, `--config run.json`, the seed's LoRA config files and its DeepSpeed JSON (and, later,
// the wizard). It is stored with the run and turned into the engine's job file (docs/formats.md).
import fs from 'node:fs';
import path from 'node:path';

import { z } from 'zod';

import { FORMATS } from '../data/formats.js';
import { realish } from '../paths.js';
import { TEMPLATES } from '../data/templates.js';

export const RUNSPEC_VERSION = 1;

const PosInt = z.number().int().positive();

const Name = z.string().min(1);

/**
 * A run's LoRA settings, with PEFT's LoraConfig meanings. target_modules: a list (exact name or ".name" suffix), or a
 * string: "all-linear" or a regex matched against the whole module path (re.fullmatch); null: the family's default.
 * The optional keys are left out when not given (the engine's defaults: bias "none", no rsLoRA, no patterns).
 */
export const LoraSpec = z
  .object({
    r: PosInt.default(8),
    alpha: z.number().positive().default(32),
    dropout: z.number().min(0).lt(1).default(0.05),
    target_modules: z.union([z.array(Name).min(1), Name]).nullable().default(null),
    modules_to_save: z.array(Name).nullable().default(null),
    bias: z.enum(['none', 'all', 'lora_only']).optional(),
    use_rslora: z.boolean().optional(),
    // DoRA (PEFT use_dora): weight-decomposed LoRA, a trainable magnitude per output row of each adapted linear
    use_dora: z.boolean().optional(),
    // per-module rank / alpha: key = module name or regex (matched as PEFT does: (.*\.)?(key)$)
    rank_pattern: z.record(Name, PosInt).optional(),
    alpha_pattern: z.record(Name, z.number().positive()).optional(),
    // never adapted: names (exact or ".name" suffix) or one regex (re.fullmatch)
    exclude_modules: z.union([z.array(Name), Name]).nullable().optional(),
    // only these block indices, found after a `layers_pattern` component of the module path (any when absent)
    layers_to_transform: z.union([z.number().int().min(0), z.array(z.number().int().min(0)).min(1)]).nullable().optional(),
    layers_pattern: z.union([Name, z.array(Name).min(1)]).nullable().optional(),
    // continue training an existing PEFT adapter (the seed's --peft_path: PeftModel.from_pretrained(is_trainable=True)):
    // its folder; the adapter's own configuration then replaces the settings above (resolveInitAdapter)
    init_adapter: z.string().min(1).nullable().optional(),
  })
  .strict()
  // what PEFT's LoraConfig refuses on construction
  .superRefine((l, ctx) => {
    const regex = typeof l.target_modules === 'string';
    for (const k of ['layers_to_transform', 'layers_pattern'] as const) {
      if (regex && l[k] !== undefined && l[k] !== null) {
        ctx.addIssue({ code: 'custom', message: `${k} needs target_modules as a list of module names (PEFT refuses it with a regex or "all-linear" string)`, path: [k] });
      }
    }
    if (l.layers_pattern !== undefined && l.layers_pattern !== null && (l.layers_to_transform === undefined || l.layers_to_transform === null)) {
      ctx.addIssue({ code: 'custom', message: 'layers_pattern only says where the layer index is: give layers_to_transform too', path: ['layers_pattern'] });
    }
  });

export const RunSpec = z
  .object({
    version: z.literal(RUNSPEC_VERSION).default(RUNSPEC_VERSION),
    name: z.string().min(1).max(200).optional(),
    // quantization: QLoRA — the base model's block linears as bitsandbytes 4-bit (NF4 or FP4, double-quantized
    // scales) while the LoRA adapter trains in fp32; method stays "lora" (docs/formats.md "quantization")
    model: z.object({ path: z.string().min(1), quantization: z.enum(['none', 'nf4', 'fp4']).default('none') }).strict(),
    method: z.enum(['lora', 'full']).default('lora'),
    lora: LoraSpec.default({ r: 8, alpha: 32, dropout: 0.05, target_modules: null, modules_to_save: null }),
    data: z
      .object({
        // one file, or several (each prepared on its own — its own format when format is null — then put together)
        train: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
        validation: z.string().min(1).nullable().default(null),
        validation_percent: z.number().min(0).lt(100).default(0),
        format: z.enum(FORMATS as [string, ...string[]]).nullable().default(null),
        template: z.enum(TEMPLATES).default('raw'),
        prompt_column: z.string().min(1).nullable().default(null),
        response_column: z.string().min(1).nullable().default(null),
        history_column: z.string().min(1).nullable().default(null),
        max_source_length: PosInt.default(512),
        max_target_length: PosInt.default(64),
        // a bad record: 'fail' the run listing every bad line (the default), or 'skip' it (counted in the log)
        on_error: z.enum(['fail', 'skip']).default('fail'),
      })
      .strict(),
    training: z
      .object({
        learning_rate: z.number().positive().default(2e-4),
        lr_scheduler: z.enum(['linear', 'cosine', 'constant', 'constant_with_warmup']).default('linear'),
        warmup_steps: z.number().int().min(0).default(0),
        // HF's warmup_ratio: ceil(ratio × steps) warmup steps when warmup_steps is 0
        warmup_ratio: z.number().min(0).max(1).default(0),
        // HF's neftune_noise_alpha (NEFTune): uniform noise ±alpha/sqrt(T·H) on the input embeddings while training; 0 off
        neftune_noise_alpha: z.number().min(0).default(0),
        // LoRA+ (PEFT's create_loraplus_optimizer, LLaMA-Factory's loraplus_lr_ratio): lora_B and 1-D parameters at lr × ratio
        loraplus_lr_ratio: z.number().min(0).default(0),
        max_steps: z.number().int().default(-1),
        // HF's num_train_epochs, fractional too: ceil(epochs × update steps per epoch) steps
        num_epochs: z.number().positive().default(3),
        micro_batch_size: PosInt.default(4),
        eval_batch_size: PosInt.default(4),
        gradient_accumulation_steps: PosInt.default(1),
        max_grad_norm: z.number().min(0).default(1.0),
        weight_decay: z.number().min(0).default(0),
        // torch.optim.AdamW's betas and eps (HF's adam_beta1, adam_beta2, adam_epsilon)
        adam_beta1: z.number().min(0).lt(1).default(0.9),
        adam_beta2: z.number().min(0).lt(1).default(0.999),
        adam_epsilon: z.number().positive().default(1e-8),
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
    // the run. zero_stage 1 shards AdamW state over the workers, 2 the gradients too (full fine-tuning only).
    // docs/distributed.md
    distributed: z
      .object({
        nproc_per_node: PosInt.max(64).default(1),
        zero_stage: z.union([z.literal(0), z.literal(1), z.literal(2)]).default(0),
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
        // HF Trainer's: keep at most this many checkpoint-N folders (0: all), the oldest removed first
        save_total_limit: z.number().int().min(0).default(0),
        // HF Trainer's: the output is the checkpoint with the lowest eval loss (which rotation never removes)
        load_best_model_at_end: z.boolean().default(false),
        // HF's EarlyStoppingCallback: stop once the eval loss has not improved (by more than the threshold) for this
        // many evaluations in a row (0: off)
        early_stopping_patience: z.number().int().min(0).default(0),
        early_stopping_threshold: z.number().min(0).default(0),
      })
      .strict(),
    resume_from: z.string().min(1).nullable().default(null),
  })
  .strict()
  .refine((s) => !s.training.offload_checkpoints || s.training.gradient_checkpointing, {
    message: 'training.offload_checkpoints moves the checkpointed block inputs to host memory: it needs gradient_checkpointing',
    path: ['training', 'offload_checkpoints'],
  })
  .refine((s) => !(s.method === 'full' && s.lora.use_dora), {
    message: 'lora.use_dora (DoRA) is a kind of LoRA adapter: it needs method "lora", not a full fine-tune (--use_lora False)',
    path: ['lora', 'use_dora'],
  })
  .refine((s) => s.model.quantization === 'none' || s.method === 'lora', {
    message: 'model.quantization (QLoRA) needs method "lora": the 4-bit base weights are frozen',
    path: ['model', 'quantization'],
  })
  // the best checkpoint and early stopping compare evaluation losses (HF Trainer's rules)
  .superRefine((s, ctx) => {
    const o = s.output;
    const evalData = s.data.validation !== null || s.data.validation_percent > 0;
    for (const [on, key, what] of [
      [o.load_best_model_at_end, 'load_best_model_at_end', 'keeping the checkpoint with the lowest eval loss'],
      [o.early_stopping_patience > 0, 'early_stopping_patience', 'stopping when the eval loss stops improving'],
    ] as const) {
      if (!on) continue;
      if (!evalData) ctx.addIssue({ code: 'custom', message: `${what} needs evaluation data: a validation file (--validation_file) or a split (--validation_split_percentage)`, path: ['output', key] });
      else if (o.eval_steps <= 0) ctx.addIssue({ code: 'custom', message: `${what} needs evaluations during training: eval_steps above 0 (--eval_steps)`, path: ['output', key] });
    }
    if (o.load_best_model_at_end && o.eval_steps > 0 && o.save_steps % o.eval_steps !== 0) {
      ctx.addIssue({ code: 'custom', message: `load_best_model_at_end needs a checkpoint at evaluations: save_steps (${o.save_steps}) must be a multiple of eval_steps (${o.eval_steps}), as HF Trainer requires`, path: ['output', 'save_steps'] });
    }
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
  });

/**
 * `--train_file` / `data prepare --data`: one file, or several separated by commas (each prepared on its own, then trained on together). A
 * value that names an existing file is that file, commas and all.
 */
export function trainFileList(v: string): string | string[] {
  if (!v.includes(',') || fs.existsSync(v)) return v;
  const parts = v.split(',').map((x) => x.trim()).filter(Boolean);
  return parts.length === 1 ? parts[0]! : parts;
}

/** A spec's training files (data.train is one path or a list). */
export function trainFiles(spec: { data: { train: string | string[] } }): string[] {
  return Array.isArray(spec.data.train) ? [...spec.data.train] : [spec.data.train];
}

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

/** The RunSpec lora keys beyond the seed's five (PEFT names; `--lora_options` JSON on the command line). */
export const LORA_OPTION_KEYS = ['bias', 'use_rslora', 'rank_pattern', 'alpha_pattern', 'exclude_modules', 'layers_to_transform', 'layers_pattern'] as const;

/**
 * `--lora_target_modules` as PEFT's target_modules: "all-linear" (PEFT's shorthand, any case) stays that string; a
 * value holding a regex metacharacter (\ ^ $ * + ? ( ) [ ] { } |) is one regex matched against the whole module
 * path (PEFT's string semantics, re.fullmatch), never split on commas; anything else is a comma-separated list of
 * module names (exact name or ".name" suffix; a dot alone, as in self_attn.q_proj, is a path, not a regex).
 */
export function parseTargetModules(v: string): string[] | string {
  const t = v.trim();
  if (t.toLowerCase() === 'all-linear') return 'all-linear';
  if (isRegexLike(t)) return t;
  return t.split(',').map((x) => x.trim()).filter(Boolean);
}

export function isRegexLike(v: string): boolean {
  return /[\\^$*+?()[\]{}|]/.test(v);
}

/** PEFT LoraConfig keys with no meaning for training here (bookkeeping), accepted as they come. */
const PEFT_BOOKKEEPING = new Set(['peft_type', 'task_type', 'inference_mode', 'base_model_name_or_path', 'revision', 'auto_mapping', 'peft_version', 'megatron_core', 'qalora_group_size', 'runtime_config', 'init_lora_weights', 'merge_weights']);

/** PEFT features the engine cannot honour: accepted only at their "off" value (absent, null, false, {} or []). */
const PEFT_UNSUPPORTED: Record<string, string> = {
  enable_lora: "enable_lora (PEFT 0.2's LoRA on parts of a fused projection) is not supported",
  fan_in_fan_out: 'fan_in_fan_out (Conv1D weights stored transposed, GPT-2 style) is not supported',
  lora_bias: 'lora_bias (a trained bias on lora_B) is not supported',
  use_qalora: 'QA-LoRA (use_qalora) is not supported',
  use_bdlora: 'use_bdlora is not supported',
  layer_replication: 'layer_replication (repeated layers sharing weights) is not supported',
  trainable_token_indices: 'trainable_token_indices (training single embedding rows) is not supported; train the whole table with modules_to_save',
  target_parameters: 'target_parameters (LoRA on parameters, not modules) is not supported',
  megatron_config: 'megatron_config (Megatron parallel layers) is not supported',
  ensure_weight_tying: 'ensure_weight_tying is not supported (a tied head listed in modules_to_save is trained as its own copy)',
  loftq_config: 'LoftQ initialisation (loftq_config) is not supported',
  eva_config: 'EVA initialisation (eva_config) is not supported',
  corda_config: 'CorDA initialisation (corda_config) is not supported',
  lora_ga_config: 'LoRA-GA initialisation (lora_ga_config) is not supported',
  alora_invocation_tokens: 'activated LoRA (alora_invocation_tokens) is not supported',
  arrow_config: 'Arrow routing (arrow_config) is not supported',
  kasa_config: 'kasa_config is not supported',
  monteclora_config: 'monteclora_config is not supported',
  velora_config: 'velora_config is not supported',
};

/** Options PEFT turns on with any sub-config, `{}` included (its defaults): only absent, null or false is off. */
const ON_WHEN_GIVEN = new Set(['kasa_config', 'use_bdlora']);
const isOff = (v: unknown, key?: string) =>
  v === undefined || v === null || v === false || (!(key && ON_WHEN_GIVEN.has(key)) && typeof v === 'object' && Object.keys(v as object).length === 0);

/**
 * A LoRA config file as the RunSpec's lora settings: the seed's format ({lora_r, lora_alpha, lora_dropout,
 * lora_target_modules, modules_to_save}) or a PEFT LoraConfig JSON (adapter_config.json, LoraConfig.to_dict()):
 * r, lora_alpha, lora_dropout, target_modules (list or regex string), modules_to_save, bias, use_rslora, use_dora,
 * rank_pattern, alpha_pattern, exclude_modules, layers_to_transform, layers_pattern. Bookkeeping keys (task_type,
 * peft_type "LORA", base_model_name_or_path, ...) are accepted; features the engine cannot honour (fan_in_fan_out,
 * lora_bias, layer_replication, ...) and unknown keys are refused by name. `warnings`: what is accepted but
 * not done as written (init_lora_weights other than true, a task_type other than CAUSAL_LM).
 */
export function readLoraConfigFile(file: string, opts: { trainedAdapter?: boolean } = {}): { lora: NonNullable<RunSpecInput['lora']>; warnings: string[] } {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new RunSpecError(`cannot read the LoRA config ${file}: ${(err as Error).message}`);
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new RunSpecError(`${file}: a LoRA config is a JSON object`);
  const seedKeys = ['lora_r', 'lora_alpha', 'lora_dropout', 'lora_target_modules', 'modules_to_save'];
  const peftKeys = ['r', 'lora_alpha', 'lora_dropout', 'target_modules', 'modules_to_save', 'use_dora', ...LORA_OPTION_KEYS];
  const known = new Set([...seedKeys, ...peftKeys, ...PEFT_BOOKKEEPING, ...Object.keys(PEFT_UNSUPPORTED)]);
  const warnings: string[] = [];
  const unknown = Object.keys(j).filter((k) => !known.has(k));
  // a trained adapter's config (continued training): keys another PEFT version wrote are ignored, as PEFT ignores
  // them when it loads the adapter; a config file given to set up a run is checked for typos
  if (unknown.length && opts.trainedAdapter) warnings.push(`${file}: field(s) ${unknown.join(', ')} are not known here and are ignored (as PEFT ignores keys it does not know)`);
  else if (unknown.length) {
    throw new RunSpecError(`${file}: unknown field(s) ${unknown.join(', ')} (the seed's LoRA config has ${seedKeys.join(', ')}; a PEFT LoraConfig ${peftKeys.join(', ')} and its bookkeeping keys)`);
  }
  // how a trained adapter was initialised no longer matters, unless the initialisation changed the base weights
  // (init_lora_weights PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA: such an adapter needs its own residual base, refused
  // below); the initialisers' settings are bookkeeping then — PEFT's conversion to a plain adapter sets
  // init_lora_weights true and leaves corda_config / lora_ga_config / loftq_config as they were
  const trainedInit = opts.trainedAdapter ? new Set(['eva_config', 'corda_config', 'lora_ga_config', 'loftq_config']) : new Set<string>();
  const refused = Object.keys(PEFT_UNSUPPORTED).filter((k) => !isOff(j[k], k) && !trainedInit.has(k));
  if (refused.length) throw new RunSpecError(`${file}: ${refused.map((k) => `${k} ${JSON.stringify(j[k])}: ${PEFT_UNSUPPORTED[k]}`).join('; ')}`);
  if (j.peft_type !== undefined && j.peft_type !== null && j.peft_type !== 'LORA') throw new RunSpecError(`${file}: peft_type ${JSON.stringify(j.peft_type)} is not a LoRA config (only "LORA" is trained here)`);
  for (const [seed, peft] of [['lora_r', 'r'], ['lora_target_modules', 'target_modules']] as const) {
    if (j[seed] !== undefined && j[peft] !== undefined) throw new RunSpecError(`${file}: gives both ${seed} (the seed's name) and ${peft} (PEFT's); keep one`);
  }
  const init = j.init_lora_weights;
  const baseChanging = typeof init === 'string' && /^(pissa|olora|corda|loftq|lora[-_]ga)/i.test(init);
  if (opts.trainedAdapter && !baseChanging) {
    /* the weights come from the adapter's file: its initialisation is history */
  } else if (opts.trainedAdapter) {
    throw new RunSpecError(`${file}: init_lora_weights ${JSON.stringify(init)} changed the base weights when the adapter was made (a residual base goes with it), so it cannot be continued on the original model; convert it to a plain LoRA adapter first (PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...))`);
  } else if (init === false || init === 'gaussian') {
    warnings.push(`${file}: init_lora_weights ${JSON.stringify(init)} is not done here: LoRA starts as PEFT's default (init_lora_weights true: A Kaiming-uniform, B zero)`);
  } else if (init !== undefined && init !== true) {
    throw new RunSpecError(`${file}: init_lora_weights ${JSON.stringify(init)} is not supported (only true, the default; "gaussian" and false are trained with the default initialisation)`);
  }
  if (typeof j.task_type === 'string' && j.task_type !== 'CAUSAL_LM') warnings.push(`${file}: task_type ${j.task_type}: this trains a causal language model (the adapter is saved as CAUSAL_LM)`);

  const out: NonNullable<RunSpecInput['lora']> = {};
  const r = j.lora_r ?? j.r;
  if (r !== undefined) out.r = r as number;
  if (j.lora_alpha !== undefined) out.alpha = j.lora_alpha as number;
  if (j.lora_dropout !== undefined) out.dropout = j.lora_dropout as number;
  const targets = j.lora_target_modules !== undefined ? j.lora_target_modules : j.target_modules;
  if (targets !== undefined) out.target_modules = targets as string[] | string | null;
  if (j.modules_to_save !== undefined) out.modules_to_save = j.modules_to_save as string[] | null;
  // the optional keys only when they say something (PEFT writes every key, mostly at its default)
  if (j.bias !== undefined && j.bias !== 'none') out.bias = j.bias as 'all';
  if (j.use_rslora !== undefined && j.use_rslora !== false) out.use_rslora = j.use_rslora as boolean;
  if (j.use_dora !== undefined && j.use_dora !== null && j.use_dora !== false) out.use_dora = j.use_dora as boolean;
  for (const k of ['rank_pattern', 'alpha_pattern', 'exclude_modules', 'layers_to_transform', 'layers_pattern'] as const) {
    if (!isOff(j[k])) (out as Record<string, unknown>)[k] = j[k];
  }
  return { lora: out, warnings };
}

/** What an existing PEFT adapter folder holds: its LoRA settings as the RunSpec's, and the base it names. */
export interface AdapterFolder {
  dir: string;
  lora: RunSpec['lora'];
  /** adapter_config.json's base_model_name_or_path (null when absent) */
  baseModel: string | null;
  /** the weights file: adapter_model.safetensors, or adapter_model.bin (PEFT before 0.7 and the seed's era) */
  weights: string;
  /** what its config holds that is ignored here */
  warnings: string[];
}

/**
 * Reads a PEFT adapter folder for continued training (`lora.init_adapter`, the seed's --peft_path): its
 * adapter_config.json as the RunSpec's lora settings (readLoraConfigFile's rules: features the engine lacks are
 * refused by name) and its weights file. Errors name the folder and the field `lora.init_adapter`.
 */
export function readAdapterFolder(dir: string): AdapterFolder {
  const abs = path.resolve(dir);
  const field = (message: string) => [{ path: 'lora.init_adapter', message }];
  if (!fs.existsSync(abs)) throw new RunSpecError(`the adapter to continue, ${abs}, does not exist`, field('no such folder'));
  if (!fs.statSync(abs).isDirectory()) throw new RunSpecError(`the adapter to continue, ${abs}, is a file: give its folder (the one holding adapter_config.json)`, field('not a folder'));
  const cfg = path.join(abs, 'adapter_config.json');
  if (!fs.existsSync(cfg)) {
    const full = fs.existsSync(path.join(abs, 'config.json')) && fs.readdirSync(abs).some((n) => /^(model|pytorch_model).*\.(safetensors|bin)$/.test(n));
    throw new RunSpecError(
      `${abs} holds no adapter_config.json, so it is not a PEFT adapter folder (a LoRA run's output folder and its checkpoint-N folders are)${full ? '; it holds a whole model (a full fine-tune\'s output?): to train on from it, give it as the model (--model_name_or_path) instead' : ''}`,
      field('no adapter_config.json'),
    );
  }
  const weights = ['adapter_model.safetensors', 'adapter_model.bin'].map((f) => path.join(abs, f)).find((f) => fs.existsSync(f));
  if (!weights) throw new RunSpecError(`${abs} has adapter_config.json but no adapter_model.safetensors (or adapter_model.bin): the adapter's weights are missing`, field('no adapter weights'));
  let base: unknown = null;
  try {
    base = (JSON.parse(fs.readFileSync(cfg, 'utf8')) as { base_model_name_or_path?: unknown }).base_model_name_or_path;
  } catch {
    /* readLoraConfigFile says what is wrong with the file */
  }
  let lora: NonNullable<RunSpecInput['lora']>;
  let warnings: string[];
  try {
    ({ lora, warnings } = readLoraConfigFile(cfg, { trainedAdapter: true }));
  } catch (err) {
    throw new RunSpecError((err as Error).message, field('not an adapter this engine can train'));
  }
  const parsed = LoraSpec.safeParse({ ...lora, init_adapter: abs });
  if (!parsed.success) throw new RunSpecError(`${cfg}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`, field('invalid adapter_config.json'));
  return { dir: abs, lora: parsed.data, baseModel: typeof base === 'string' && base ? base : null, weights, warnings };
}

/** The lora keys an adapter's configuration decides when training continues from it. */
const ADAPTER_KEYS = ['r', 'alpha', 'dropout', 'target_modules', 'modules_to_save', 'use_dora', 'bias', 'use_rslora', 'rank_pattern', 'alpha_pattern', 'exclude_modules', 'layers_to_transform', 'layers_pattern'] as const;

/**
 * A spec that continues an adapter (`lora.init_adapter`), with the adapter's own LoRA configuration in place of its
 * lora settings — as the seed's --peft_path loads it with PeftModel.from_pretrained(is_trainable=True) and leaves its
 * --lora_config unused — so the estimate, the stored run and the resume checks see what is trained. `given`: the lora
 * settings as the user wrote them; each that the adapter overrides with another value is named in a warning. Refused:
 * a full fine-tune from an adapter, and an adapter inside the run's output folder (a fresh run there would remove it).
 */
export function resolveInitAdapter(spec: RunSpec, given?: Record<string, unknown> | null): { spec: RunSpec; warnings: string[] } {
  const dir = spec.lora.init_adapter;
  if (!dir) return { spec, warnings: [] };
  if (spec.method !== 'lora') {
    throw new RunSpecError('lora.init_adapter continues training a LoRA adapter, but this run is a full fine-tune (method "full"): train LoRA, or merge the adapter into the model first (llms-train model merge) and fine-tune that', [
      { path: 'lora.init_adapter', message: 'needs method lora' },
    ]);
  }
  const warnings: string[] = [];
  let a: AdapterFolder;
  const resumable = fs.existsSync(path.resolve(dir)) ? null : resumableCheckpoint(spec);
  if (resumable) {
    // gone (moved, deleted) since the run started: a resumed run restores every adapter tensor from its checkpoint,
    // whose adapter_config.json is the adapter's configuration as trained
    const c = readAdapterFolder(resumable);
    a = { ...c, dir: path.resolve(dir), lora: { ...c.lora, init_adapter: path.resolve(dir) } };
    warnings.push(`the adapter this run started from, ${path.resolve(dir)}, is not there any more: the run resumes from ${resumable}, which holds every adapter tensor (its LoRA settings are used)`);
  } else {
    a = readAdapterFolder(dir);
    warnings.push(...a.warnings);
    // a run whose output folder is (or holds) the adapter would remove it when it starts afresh; symbolic links included
    const out = realish(spec.output.dir);
    const ad = realish(a.dir);
    if (ad === out || ad.startsWith(out + path.sep)) {
      throw new RunSpecError(`the adapter to continue, ${a.dir}, ${ad === out ? 'is' : 'is inside'} the output folder ${spec.output.dir}${ad !== a.dir || out !== path.resolve(spec.output.dir) ? ' (through a symbolic link)' : ''}: the new run would write over the adapter it starts from; choose another output folder (to go on with a stopped run, resume it instead)`, [
        { path: 'lora.init_adapter', message: 'overlaps the output folder' },
      ]);
    }
  }
  // the base it was made for (adapter_config.json), when it plainly names another model: shapes that happen to fit
  // would train without a word
  const last = (p: string) => p.replace(/[\\/]+$/, '').split(/[\\/]/).at(-1)!.toLowerCase();
  if (a.baseModel && path.resolve(a.baseModel) !== path.resolve(spec.model.path) && last(a.baseModel) !== last(spec.model.path)) {
    warnings.push(`the adapter in ${a.dir} was made for ${a.baseModel} (its adapter_config.json), and this run's model is ${spec.model.path}: if they are not the same model, the adapter does not fit it`);
  }
  const norm = (k: string, v: unknown) => JSON.stringify(Array.isArray(v) && (k === 'target_modules' || k === 'modules_to_save') ? [...new Set(v.map(String))].sort() : v ?? null);
  const differ: string[] = [];
  for (const k of ADAPTER_KEYS) {
    if (!given || given[k] === undefined) continue;
    const mine = (a.lora as Record<string, unknown>)[k];
    const off = (v: unknown) => v === undefined || v === null || v === false || v === 'none';
    if (off(given[k]) && off(mine)) continue;
    if (norm(k, given[k]) !== norm(k, mine)) differ.push(`${k} ${JSON.stringify(given[k])} (the adapter's: ${JSON.stringify(mine ?? null)})`);
  }
  if (differ.length) warnings.push(`continuing the adapter in ${a.dir}: its own LoRA configuration is trained, so these settings are not used: ${differ.join(', ')}`);
  return { spec: { ...spec, lora: a.lora }, warnings };
}


/** The newest complete checkpoint-<step> folder in `dir` (one with trainer_state.json), or null. */
export function lastCheckpoint(dir: string): string | null {
  if (!fs.existsSync(dir)) return null;
  const steps = fs
    .readdirSync(dir)
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .filter((s) => fs.existsSync(path.join(dir, `checkpoint-${s}`, 'trainer_state.json')))
    .sort((a, b) => a - b);
  return steps.length ? path.join(dir, `checkpoint-${steps.at(-1)}`) : null;
}

/** The checkpoint a run with `spec` would resume from (resume_from, or the output folder's last, unless overwriting). */
function resumableCheckpoint(spec: RunSpec): string | null {
  const ok = (d: string | null) => (d && fs.existsSync(path.join(d, 'trainer_state.json')) && fs.existsSync(path.join(d, 'adapter_config.json')) ? d : null);
  if (spec.resume_from && spec.resume_from !== 'latest') return ok(path.resolve(spec.resume_from));
  if (spec.output.overwrite && spec.resume_from !== 'latest') return null;
  return ok(lastCheckpoint(path.resolve(spec.output.dir)));
}

/** The lora settings of a LoRA config file (readLoraConfigFile without its warnings). */
export function readLoraConfig(file: string): RunSpecInput['lora'] {
  return readLoraConfigFile(file).lora;
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
      if (typeof stage === 'number' && stage >= 1) {
        distributed = { ...distributed, zero_stage: stage >= 2 ? 2 : 1 };
        if (stage > 2) warnings.push(`deepspeed zero_optimization.stage ${stage}: the engine shards optimizer state and gradients (ZeRO-2, full fine-tuning); the parameters stay whole on each worker`);
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

/** The job's "lora" object: the seed's five keys always, the others only when they say something. */
export function engineLora(l: RunSpec['lora'], resuming = false): Record<string, unknown> {
  const has = (v: unknown) => v !== undefined && v !== null && !(typeof v === 'object' && Object.keys(v).length === 0);
  return {
    r: l.r,
    alpha: l.alpha,
    dropout: l.dropout,
    target_modules: l.target_modules ?? [],
    modules_to_save: l.modules_to_save,
    ...(l.bias !== undefined && l.bias !== 'none' ? { bias: l.bias } : {}),
    ...(l.use_rslora ? { use_rslora: true } : {}),
    ...(l.use_dora ? { use_dora: true } : {}),
    ...(has(l.rank_pattern) ? { rank_pattern: l.rank_pattern } : {}),
    ...(has(l.alpha_pattern) ? { alpha_pattern: l.alpha_pattern } : {}),
    ...(has(l.exclude_modules) ? { exclude_modules: l.exclude_modules } : {}),
    ...(has(l.layers_to_transform) ? { layers_to_transform: l.layers_to_transform } : {}),
    ...(has(l.layers_pattern) ? { layers_pattern: l.layers_pattern } : {}),
    // a resumed run restores every adapter tensor from its checkpoint: the adapter it started from is not read again
    ...(l.init_adapter && !resuming ? { init_adapter: l.init_adapter } : {}),
  };
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
    ...(spec.method === 'lora' ? { lora: engineLora(spec.lora, resumeFrom !== null) } : {}),
    data: { train: tok.train, ...(tok.eval ? { eval: tok.eval } : {}) },
    training: {
      learning_rate: t.learning_rate,
      lr_scheduler: t.lr_scheduler,
      warmup_steps: t.warmup_steps,
      ...(t.warmup_ratio > 0 ? { warmup_ratio: t.warmup_ratio } : {}),
      ...(t.neftune_noise_alpha > 0 ? { neftune_noise_alpha: t.neftune_noise_alpha } : {}),
      ...(t.loraplus_lr_ratio > 0 && spec.method === 'lora' ? { loraplus_lr_ratio: t.loraplus_lr_ratio } : {}),
      max_steps: t.max_steps,
      num_epochs: t.num_epochs,
      micro_batch_size: t.micro_batch_size,
      eval_batch_size: t.eval_batch_size,
      gradient_accumulation_steps: t.gradient_accumulation_steps,
      max_grad_norm: t.max_grad_norm,
      weight_decay: t.weight_decay,
      adam_beta1: t.adam_beta1,
      adam_beta2: t.adam_beta2,
      adam_epsilon: t.adam_epsilon,
      seed: t.seed,
      gradient_checkpointing: t.gradient_checkpointing,
      ...(t.offload_optimizer ? { offload_optimizer: true } : {}),
      ...(t.offload_checkpoints ? { offload_checkpoints: true } : {}),
      precision: t.precision,
    },
    output: {
      dir: spec.output.dir,
      logging_steps: spec.output.logging_steps,
      save_steps: spec.output.save_steps,
      eval_steps: spec.output.eval_steps,
      ...(spec.output.save_total_limit > 0 ? { save_total_limit: spec.output.save_total_limit } : {}),
      ...(spec.output.load_best_model_at_end ? { load_best_model_at_end: true } : {}),
      ...(spec.output.early_stopping_patience > 0
        ? { early_stopping_patience: spec.output.early_stopping_patience, ...(spec.output.early_stopping_threshold > 0 ? { early_stopping_threshold: spec.output.early_stopping_threshold } : {}) }
        : {}),
    },
    ...(resumeFrom ? { resume_from: resumeFrom } : {}),
    ...(spec.distributed.nproc_per_node > 1
      ? // GPU workers: "auto" — NCCL, or Gloo (with a warning event) where NCCL cannot load
        { distributed: { world_size: spec.distributed.nproc_per_node, backend: spec.devices.kind === 'cuda' ? 'auto' : 'gloo', zero_stage: spec.distributed.zero_stage } }
      : {}),
  };
}
