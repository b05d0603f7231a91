// train.ts — `llms-train train`: the seed project's command line (same flag names and meanings), or
// `--config run.json`, into one RunSpec, run by RunService in this process: the run and its metrics land in
// the same database the app reads. A progress line in a TTY, plain log lines otherwise; Ctrl-C stops
// gracefully (a checkpoint is written), a second Ctrl-C kills the worker.
import fs from 'node:fs';
import path from 'node:path';

import { type Command, InvalidArgumentError, Option } from 'commander';

import { Core } from '../core/core.js';
import { dataHome } from '../core/paths.js';
import { LORA_OPTION_KEYS, type RunSpecInput, RunSpecError, applyDeepspeed, parseRunSpec, parseTargetModules, readLoraConfigFile, resolveInitAdapter, trainFileList } from '../core/runs/runspec.js';
import type { EngineEvent } from '../core/runs/service.js';
import { TEMPLATES } from '../core/data/templates.js';
import { bool, parseBool } from './options.js';

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('an integer');
  return n;
};
const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError('a number');
  return n;
};

type Flags = Record<string, string | number | boolean | undefined>;

export { trainFileList } from '../core/runs/runspec.js';

/** A flag given as `--flag` (true) or `--flag VALUE` (True/False, yes/no, 1/0 in any case). */
function boolFlag(name: string, v: unknown, field: string): boolean {
  const b = parseBool(typeof v === 'boolean' ? v : String(v));
  if (b === null) throw new RunSpecError(`${name} ${String(v)}: a truthy or falsy value is expected (True/False, yes/no, 1/0)`, [{ path: field, message: 'True or False' }]);
  return b;
}

/** `--lora_options '{"use_rslora": true, "rank_pattern": {"q_proj": 16}}'`: the lora keys that have no flag of their own. */
function loraOptions(v: string): Record<string, unknown> {
  let j: unknown;
  try {
    j = JSON.parse(v);
  } catch (err) {
    throw new RunSpecError(`--lora_options: not JSON (${(err as Error).message})`);
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new RunSpecError('--lora_options: a JSON object, e.g. {"use_rslora": true}');
  const bad = Object.keys(j).filter((k) => !(LORA_OPTION_KEYS as readonly string[]).includes(k));
  if (bad.length) throw new RunSpecError(`--lora_options: unknown key(s) ${bad.join(', ')} (known: ${LORA_OPTION_KEYS.join(', ')}; r, alpha, dropout, target modules, modules_to_save and use_dora have their own flags)`);
  return j as Record<string, unknown>;
}

/** The spec's paths made absolute against this working directory: the run is stored with them, and later commands
 *  (eval --run, resume from the app) run elsewhere. A model "path" that is no folder here (a Hub id) stays as given. */
function absolutePaths(input: RunSpecInput): RunSpecInput {
  const abs = (p: unknown) => (typeof p === 'string' && p ? path.resolve(p) : p);
  const out = { ...input } as RunSpecInput & Record<string, unknown>;
  const model = out.model as { path?: unknown } | undefined;
  if (model && typeof model.path === 'string' && fs.existsSync(model.path)) out.model = { ...model, path: path.resolve(model.path) } as never;
  const data = out.data as { train?: unknown; validation?: unknown } | undefined;
  const train = data?.train;
  if (data) out.data = { ...data, ...(train ? { train: Array.isArray(train) ? train.map(abs) : abs(train) } : {}), ...(data.validation ? { validation: abs(data.validation) } : {}) } as never;
  const output = out.output as { dir?: unknown } | undefined;
  if (output?.dir) out.output = { ...output, dir: abs(output.dir) } as never;
  if (typeof out.resume_from === 'string' && out.resume_from !== 'latest') out.resume_from = path.resolve(out.resume_from);
  return out;
}

/** Seed flags (and --config) → a validated RunSpec, plus warnings. */
export function specFromFlags(o: Flags): { spec: ReturnType<typeof parseRunSpec>; warnings: string[] } {
  let base: RunSpecInput | Record<string, never> = {};
  if (o.config) {
    try {
      base = JSON.parse(fs.readFileSync(String(o.config), 'utf8')) as RunSpecInput;
    } catch (err) {
      throw new RunSpecError(`cannot read --config ${o.config}: ${(err as Error).message}`);
    }
  }
  const b = base as Partial<RunSpecInput>;
  const spec: Record<string, unknown> & Partial<RunSpecInput> = { ...b };
  const set = <T extends object>(key: 'model' | 'data' | 'training' | 'output' | 'lora' | 'devices' | 'distributed', patch: T) => {
    spec[key] = { ...((spec[key] as object | undefined) ?? {}), ...patch } as never;
  };
  const pick = (entries: [string, unknown][]) => Object.fromEntries(entries.filter(([, v]) => v !== undefined));
  if (o.model_name_or_path) set('model', { path: String(o.model_name_or_path) });
  if (o.quantization !== undefined) set('model', { quantization: String(o.quantization) });
  set('data', pick([
    ['train', o.train_file === undefined ? undefined : trainFileList(String(o.train_file))],
    ['validation', o.validation_file],
    ['prompt_column', o.prompt_column],
    ['response_column', o.response_column],
    ['history_column', o.history_column],
    ['max_source_length', o.max_source_length],
    ['max_target_length', o.max_target_length],
    ['template', o.template],
    ['format', o.format],
    ['validation_percent', o.validation_split_percentage],
    ['on_error', o.on_error ?? o.onError],
  ]));
  set('training', pick([
    ['learning_rate', o.learning_rate],
    ['lr_scheduler', o.lr_scheduler_type],
    ['warmup_steps', o.warmup_steps],
    ['warmup_ratio', o.warmup_ratio],
    ['neftune_noise_alpha', o.neftune_noise_alpha],
    ['loraplus_lr_ratio', o.loraplus_lr_ratio],
    ['max_steps', o.max_steps],
    ['num_epochs', o.num_train_epochs],
    ['micro_batch_size', o.per_device_train_batch_size],
    ['eval_batch_size', o.per_device_eval_batch_size],
    ['gradient_accumulation_steps', o.gradient_accumulation_steps],
    ['max_grad_norm', o.max_grad_norm],
    ['weight_decay', o.weight_decay],
    ['adam_beta1', o.adam_beta1],
    ['adam_beta2', o.adam_beta2],
    ['adam_epsilon', o.adam_epsilon],
    ['seed', o.seed],
    ['gradient_checkpointing', o.gradient_checkpointing ? true : undefined],
    ['offload_optimizer', o.offload_optimizer ? true : undefined],
    ['offload_checkpoints', o.offload_checkpoints ? true : undefined],
    ['precision', o.bf16 ? 'bf16' : o.fp16 ? 'fp16' : undefined],
  ]));
  set('output', pick([
    ['dir', o.output_dir],
    ['logging_steps', o.logging_steps],
    ['save_steps', o.save_steps],
    ['eval_steps', o.eval_steps],
    ['overwrite', o.overwrite_output_dir ? true : undefined],
    ['save_total_limit', o.save_total_limit],
    ['load_best_model_at_end', o.load_best_model_at_end === undefined ? undefined : boolFlag('--load_best_model_at_end', o.load_best_model_at_end, 'output.load_best_model_at_end')],
    ['early_stopping_patience', o.early_stopping_patience],
    ['early_stopping_threshold', o.early_stopping_threshold],
  ]));
  let gpus: number[] | null = null; // the GPUs --device names (null: no GPU --device)
  if (o.device) {
    const m = /^(cpu|cuda)(?::(\d+(?:,\d+)*))?$/.exec(String(o.device).replace(/\s+/g, ''));
    if (!m || (m[1] === 'cpu' && m[2] !== undefined)) throw new RunSpecError(`--device ${String(o.device)}: use cpu, cuda or cuda:N, or cuda:N,M,... for several GPUs (one worker each)`);
    const ids = m[2] !== undefined ? m[2].split(',').map(Number) : [];
    if (m[1] === 'cuda') gpus = ids;
    set('devices', { kind: m[1], ids });
  }
  // a GPU --device sets the worker count (one per GPU: cuda:0,1 is two); --nproc_per_node may say so too, nothing else
  const gpuWorkers = gpus ? Math.max(1, gpus.length) : undefined;
  if (gpus && gpus.length >= 2 && o.nproc_per_node !== undefined && Number(o.nproc_per_node) !== gpus.length) {
    throw new RunSpecError(`--nproc_per_node ${String(o.nproc_per_node)}: --device ${String(o.device)} runs one worker per GPU, so it must be ${gpus.length} (or left out)`, [
      { path: 'distributed.nproc_per_node', message: `must be ${gpus.length}, the number of GPUs in --device` },
    ]);
  }
  set('distributed', pick([
    ['nproc_per_node', o.nproc_per_node ?? gpuWorkers],
    ['zero_stage', o.zero_stage],
  ]));
  if (o.use_lora !== undefined) {
    const lora = parseBool(typeof o.use_lora === 'boolean' ? o.use_lora : String(o.use_lora));
    if (lora === null) throw new RunSpecError(`--use_lora ${String(o.use_lora)}: a truthy or falsy value is expected (True/False, yes/no, 1/0)`, [{ path: 'method', message: 'True (LoRA) or False (full fine-tuning)' }]);
    spec.method = lora ? 'lora' : 'full';
  }
  let dora: boolean | undefined;
  if (o.use_dora !== undefined) {
    const d = parseBool(typeof o.use_dora === 'boolean' ? o.use_dora : String(o.use_dora));
    if (d === null) throw new RunSpecError(`--use_dora ${String(o.use_dora)}: a truthy or falsy value is expected (True/False, yes/no, 1/0)`, [{ path: 'lora.use_dora', message: 'True (DoRA) or False (plain LoRA)' }]);
    if (d && spec.method === 'full') {
      throw new RunSpecError('--use_dora: DoRA is a kind of LoRA adapter, and --use_lora False trains every weight in full (there is no adapter); drop --use_dora, or train LoRA', [
        { path: 'lora.use_dora', message: 'DoRA needs LoRA (--use_lora True)' },
      ]);
    }
    dora = d;
  }
  let warnings: string[] = [];
  if (o.lora_config) {
    const r = readLoraConfigFile(String(o.lora_config));
    set('lora', r.lora);
    warnings.push(...r.warnings);
  }
  const list = (v: unknown) => String(v).split(',').map((x) => x.trim()).filter(Boolean);
  if (o.lora_options !== undefined) set('lora', loraOptions(String(o.lora_options)));
  set('lora', pick([
    ['r', o.lora_r],
    ['alpha', o.lora_alpha],
    ['dropout', o.lora_dropout],
    ['target_modules', o.lora_target_modules !== undefined ? parseTargetModules(String(o.lora_target_modules)) : undefined],
    ['modules_to_save', o.modules_to_save !== undefined ? list(o.modules_to_save) : undefined],
    ['use_dora', dora],
  ]));
  // the seed's --peft_path: training continues from this adapter, with its own LoRA configuration
  if (o.peft_path !== undefined) {
    if (spec.method === 'full') {
      throw new RunSpecError(`--peft_path ${String(o.peft_path)} continues training a LoRA adapter, but --use_lora False trains every weight in full: drop one (to fine-tune a model with the adapter in it, merge first: llms-train model merge)`, [
        { path: 'lora.init_adapter', message: '--peft_path needs LoRA (--use_lora True)' },
      ]);
    }
    set('lora', { init_adapter: path.resolve(String(o.peft_path)) });
  }
  // DoRA off is the default: left out, as a PEFT config's use_dora false is
  if ((spec.lora as { use_dora?: boolean } | undefined)?.use_dora === false) delete (spec.lora as { use_dora?: boolean }).use_dora;
  if (o.run_name) spec.name = String(o.run_name);
  if (o.resume_from_checkpoint) spec.resume_from = String(o.resume_from_checkpoint);
  let input: RunSpecInput = spec as RunSpecInput;
  if (o.deepspeed) {
    const r = applyDeepspeed(input, String(o.deepspeed));
    // as HF's DeepSpeed integration: a value the file sets that contradicts a flag given on the command line is an
    // error, not a silent override ("auto" in the file follows the flag)
    const flagged: [keyof NonNullable<RunSpecInput['training']>, string, unknown][] = [
      ['micro_batch_size', '--per_device_train_batch_size', o.per_device_train_batch_size],
      ['gradient_accumulation_steps', '--gradient_accumulation_steps', o.gradient_accumulation_steps],
      ['max_grad_norm', '--max_grad_norm', o.max_grad_norm],
      ['precision', o.bf16 ? '--bf16' : '--fp16', o.bf16 ? 'bf16' : o.fp16 ? 'fp16' : undefined],
    ];
    for (const [key, flag, given] of flagged) {
      const ds = (r.spec.training as Record<string, unknown> | undefined)?.[key];
      if (given !== undefined && ds !== undefined && ds !== given) {
        throw new RunSpecError(
          `--deepspeed ${String(o.deepspeed)} sets ${key} to ${JSON.stringify(ds)} but ${flag} says ${JSON.stringify(given)}: make them agree, or write "auto" in the DeepSpeed file to follow the flag`,
          [{ path: `training.${key}`, message: `${flag} and --deepspeed disagree` }],
        );
      }
    }
    const dsZero = (r.spec.distributed as { zero_stage?: unknown } | undefined)?.zero_stage;
    if (o.zero_stage !== undefined && dsZero !== undefined && dsZero !== Number(o.zero_stage)) {
      throw new RunSpecError(`--deepspeed ${String(o.deepspeed)} asks for ZeRO (zero_stage ${String(dsZero)} here) but --zero_stage says ${String(o.zero_stage)}: make them agree, or drop one`, [
        { path: 'distributed.zero_stage', message: '--zero_stage and --deepspeed disagree' },
      ]);
    }
    input = r.spec;
    warnings = [...warnings, ...r.warnings];
  }
  input = absolutePaths(input);
  const given: Record<string, unknown> | null = input.lora ? { ...(input.lora as Record<string, unknown>) } : null;
  // (--use_dora False was left out of the spec as the default; against an adapter it still says something)
  if (given && dora === false) given.use_dora = false;
  const resolved = resolveInitAdapter(parseRunSpec(input), given);
  const parsed = resolved.spec;
  warnings.push(...resolved.warnings);
  if (parsed.training.precision !== 'fp32' && parsed.method === 'full') {
    warnings.push(`--${parsed.training.precision}: a full fine-tune trains every weight, so it computes in fp32`);
  }
  if (parsed.output.early_stopping_threshold > 0 && parsed.output.early_stopping_patience === 0) {
    warnings.push(`--early_stopping_threshold ${parsed.output.early_stopping_threshold}: it only matters with --early_stopping_patience, which is not given (no early stopping)`);
  }
  if (parsed.output.eval_steps > 0 && !parsed.data.validation && !(parsed.data.validation_percent > 0)) {
    warnings.push(`--eval_steps ${parsed.output.eval_steps}: there is no evaluation data (no --validation_file or --validation_split_percentage), so nothing is evaluated`);
  }
  return { spec: parsed, warnings };
}

function fmtEta(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m` : `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

export function registerTrain(program: Command, fail: (err: unknown) => never): void {
  program
    .command('train')
    .description("fine-tune with the seed project's flags (or --config run.json); the run is recorded in the app's database")
    .option('--config <file>', 'a RunSpec JSON file (flags override its fields)')
    .option('--model_name_or_path <dir>', 'HF model folder')
    .option('--train_file <file>', 'training data (PromptCBLUE, Alpaca, ShareGPT, columns, text); several files comma-separated (a,b.json): each prepared in its own format, then trained on together')
    .option('--validation_file <file>', 'validation data')
    .option('--validation_split_percentage <p>', 'split this share off the training data when no validation file is given', num)
    .option('--cache_dir <dir>', 'where tokenized data is cached')
    .option('--prompt_column <name>', 'prompt column')
    .option('--response_column <name>', 'response column')
    .option('--history_column <name>', 'history column')
    .addOption(new Option('--template <t>', 'prompt template').choices([...TEMPLATES]))
    .option('--format <f>', 'override the detected data format')
    .addOption(new Option('--on_error <policy>', 'a bad record in the data fails the run listing every bad line (fail, the default), or is left out and counted (skip)').choices(['fail', 'skip']))
    .addOption(new Option('--on-error <policy>', 'the same as --on_error (the spelling of `data prepare`)').choices(['fail', 'skip']).conflicts('on_error').hideHelp())
    .option('--output_dir <dir>', 'output folder (checkpoints, final adapter, runspec.json, the run log train-<run id>.log)')
    .option('--overwrite_output_dir', 'train into a non-empty output folder')
    .option('--max_source_length <n>', 'source tokens (kept: n - 1)', int)
    .option('--max_target_length <n>', 'target tokens (kept: n - 2)', int)
    .option('--per_device_train_batch_size <n>', 'micro-batch size', int)
    .option('--per_device_eval_batch_size <n>', 'evaluation batch size', int)
    .option('--gradient_accumulation_steps <n>', 'micro-batches per optimizer step', int)
    .option('--max_steps <n>', 'optimizer steps (wins over epochs)', int)
    .option('--num_train_epochs <n>', 'epochs', num)
    .option('--logging_steps <n>', 'log every n steps', int)
    .option('--save_steps <n>', 'checkpoint every n steps', int)
    .option('--eval_steps <n>', 'evaluate every n steps', int)
    .option('--save_total_limit <n>', 'keep at most n checkpoint-N folders, removing the oldest (0: all; with --load_best_model_at_end the best is kept too)', int)
    .option('--load_best_model_at_end [bool]', 'the output is the checkpoint with the lowest eval loss, not the last step (needs evaluation data and --eval_steps; --save_steps a multiple of it)')
    .option('--early_stopping_patience <n>', 'stop once the eval loss has not improved for n evaluations in a row (HF EarlyStoppingCallback)', int)
    .option('--early_stopping_threshold <x>', 'the least improvement of the eval loss that counts, for --early_stopping_patience', num)
    .option('--learning_rate <lr>', 'peak learning rate', num)
    .option('--lr_scheduler_type <s>', 'linear, cosine, constant, constant_with_warmup')
    .option('--warmup_steps <n>', 'warmup steps', int)
    .option('--warmup_ratio <x>', 'warmup as a share of the steps (ceil(ratio × steps); --warmup_steps wins when > 0)', num)
    .option('--loraplus_lr_ratio <x>', "LoRA+ (LLaMA-Factory's loraplus_lr_ratio, PEFT's create_loraplus_optimizer): lora_B and 1-D parameters at learning_rate × this, e.g. 16; 0 turns it off", num)
    .option('--neftune_noise_alpha <x>', "NEFTune (HF's neftune_noise_alpha): noise on the input embeddings while training, e.g. 5; 0 turns it off", num)
    .option('--max_grad_norm <x>', 'gradient clipping', num)
    .option('--weight_decay <x>', 'AdamW weight decay', num)
    .option('--adam_beta1 <x>', 'AdamW beta1 (0.9)', num)
    .option('--adam_beta2 <x>', 'AdamW beta2 (0.999)', num)
    .option('--adam_epsilon <x>', 'AdamW epsilon (1e-8)', num)
    .option('--seed <n>', 'seed', int)
    .option('--lora_config <file>', "a LoRA config: the seed's (configs/lora_config_<family>.json) or a PEFT LoraConfig JSON (adapter_config.json; use_dora, use_rslora, rank_pattern, ... are honoured); PEFT features the engine cannot honour (fan_in_fan_out, lora_bias, layer_replication, ...) are refused by name")
    .option('--lora_r <n>', 'LoRA rank (overrides --lora_config)', int)
    .option('--lora_alpha <x>', 'LoRA alpha (overrides --lora_config)', num)
    .option('--lora_dropout <p>', 'LoRA dropout (overrides --lora_config)', num)
    .option('--lora_target_modules <names>', 'modules to adapt (overrides --lora_config): comma-separated names (exact or ".name" suffix, e.g. q_proj,v_proj), "all-linear" (every linear layer but the output head), or a regex matched against the whole module path (PEFT\'s re.fullmatch); a value with any of \\ ^ $ * + ? ( ) [ ] { } | is taken as one regex, not split on commas')
    .option('--modules_to_save <names>', 'comma-separated modules trained in full and saved with the adapter')
    .option('--use_dora [bool]', "DoRA (PEFT's use_dora): weight-decomposed LoRA, a trained magnitude per output row of each adapted linear (overrides --lora_config); a bare --use_dora is True; LoRA only", bool)
    .option('--lora_options <json>', `further PEFT LoraConfig keys as a JSON object: ${LORA_OPTION_KEYS.join(', ')} (e.g. '{"use_rslora": true, "rank_pattern": {"q_proj": 16}}'; overrides --lora_config)`)
    .option('--run_name <name>', 'the run\'s name in the app')
    .option('--peft_path <dir>', 'continue training an existing PEFT LoRA adapter (a run\'s output or checkpoint folder, or any adapter_config.json + adapter_model.safetensors folder): its own LoRA configuration is trained, so --lora_config/--lora_r/... are not used')
    .option('--use_lora [bool]', 'LoRA (True, the default) or full fine-tuning (False); true/false, yes/no, 1/0 in any case', bool)
    .addOption(new Option('--quantization <q>', 'QLoRA: the base model\'s block linears as 4-bit (bitsandbytes NF4/FP4, double-quantized scales); LoRA only').choices(['none', 'nf4', 'fp4']))
    .option('--bf16', 'bf16 mixed precision: frozen base weights kept in bf16 (half the memory), GEMM inputs rounded to bf16, fp32 accumulation; LoRA and optimizer in fp32')
    .option('--fp16', 'fp16 mixed precision: as --bf16 with fp16, plus dynamic loss scaling')
    .option('--gradient_checkpointing', 'recompute activations in the backward pass')
    .option('--offload_optimizer', 'GPU runs: keep the AdamW state in host memory and run its step there (8 bytes less GPU memory per trainable parameter)')
    .option('--offload_checkpoints', 'GPU runs with --gradient_checkpointing: keep the checkpointed block inputs in host memory')
    .option('--resume_from_checkpoint <dir>', 'a checkpoint-<step> folder, or "latest"')
    .option('--deepspeed <file>', "the seed's DeepSpeed JSON: meaningful fields are mapped, the rest warned about")
    .option('--device <d>', 'cpu, cuda, cuda:N (one GPU) or cuda:N,M,... (several GPUs: data parallel, one worker per GPU, each holding the whole model; the batch is split across them); without a usable GPU the engine falls back to the CPU with a warning')
    .option('--nproc_per_node <n>', 'data-parallel workers on this machine (torchrun\'s flag); each takes --per_device_train_batch_size samples per micro-batch. On the CPU: any count; with --device cuda:N,M,...: the number of GPUs (implied; may be left out)', int)
    .option('--zero_stage <n>', 'full fine-tuning on several workers (--nproc_per_node > 1 CPU workers, or --device cuda:0,1,…): 1 shards the AdamW state over them (ZeRO-1), 2 the gradients too (ZeRO-2)', int)
    .option('--json', 'print engine events as JSON lines', false)
    .action(async (o: Flags) => {
      let spec;
      try {
        const r = specFromFlags(o);
        spec = r.spec;
        for (const w of r.warnings) console.warn(`warning: ${w}`);
      } catch (err) {
        fail(err);
      }
      const core = new Core({ mode: 'browser', statusIntervalMs: 0, runsPollMs: 0, metricsPushMs: 0 });
      const service = core.runs;
      const tty = process.stdout.isTTY && !o.json;
      const t0 = Date.now();
      let total = spec.training.max_steps;
      let startStep = 0;
      let handle;
      // Ctrl-C while queued or preparing the data: the first stops the run there (temp files removed, the run
      // 'stopped'); a second one exits at once, still cleaning up
      const prep = new AbortController();
      let prepInterrupts = 0;
      const onPrepSig = () => {
        prepInterrupts++;
        if (prepInterrupts === 1) {
          console.log(`${tty ? '\n' : ''}stopping: the run is not training yet, so it stops without a checkpoint (Ctrl-C again to quit at once)…`);
          prep.abort();
        } else {
          service.abandonPreparing();
          core.close();
          process.exit(130);
        }
      };
      process.on('SIGINT', onPrepSig);
      process.on('SIGTERM', onPrepSig);
      // --max_steps 0 or below: HF trains num_train_epochs epochs; said once the step count is known
      const epochNote = spec.training.max_steps <= 0 && (o.max_steps !== undefined || spec.training.max_steps !== -1);
      let lastCheckpoint = '';
      try {
        handle = await service.start(spec, {
          signal: prep.signal,
          cacheDir: o.cache_dir ? String(o.cache_dir) : path.join(dataHome(), 'cache', 'tok'),
          // the watchdog's thresholds can be tightened (tests, impatient users)
          ...(process.env.LLMS_TRAIN_STALL_WARN_MS ? { stallWarnMs: Number(process.env.LLMS_TRAIN_STALL_WARN_MS) } : {}),
          ...(process.env.LLMS_TRAIN_STALL_KILL_MS ? { stallKillMs: Number(process.env.LLMS_TRAIN_STALL_KILL_MS) } : {}),
          onLog: (l) => console.log(l),
          onEvent: (e: EngineEvent) => {
            if (o.json) {
              console.log(JSON.stringify(e));
              return;
            }
            if (e.event === 'started') {
              total = Number(e.max_steps);
              startStep = Number(e.start_step) || 0;
              console.log(`training ${e.model_type} (${e.method}${e.method === 'lora' && spec.lora.use_dora ? ' + DoRA' : ''}): ${Number(e.trainable_params).toLocaleString()} of ${Number(e.total_params).toLocaleString()} parameters trainable; ${e.train_samples} samples; ${total} steps`);
              if (epochNote) console.log(`note: --max_steps ${spec.training.max_steps} is not positive, so the run trains ${spec.training.num_epochs} epoch(s) (--num_train_epochs) = ${total} steps`);
            } else if (e.event === 'step') {
              const step = Number(e.step);
              const elapsed = (Date.now() - t0) / 1000;
              const eta = ((total - step) * elapsed) / Math.max(1, step - startStep);
              const line = `step ${step}/${total}  loss ${e.loss === null ? '—' : Number(e.loss).toFixed(4)}  lr ${Number(e.lr).toExponential(2)}  ${Math.round(Number(e.tokens_per_s))} tok/s  ETA ${fmtEta(eta)}`;
              if (tty) {
                const width = 24;
                const fill = Math.round((width * step) / Math.max(1, total));
                process.stdout.write(`\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${line}   `);
              } else console.log(line);
            } else if (e.event === 'eval') {
              console.log(`${tty ? '\n' : ''}eval at step ${e.step}: loss ${Number(e.eval_loss).toFixed(4)}`);
            } else if (e.event === 'checkpoint') {
              // a stop at a save step writes that checkpoint again: one line for it
              if (!tty && String(e.path) !== lastCheckpoint) console.log(`checkpoint: ${e.path}`);
              lastCheckpoint = String(e.path);
            } else if (e.event === 'warning') {
              console.warn(`${tty ? '\n' : ''}warning: ${e.message}`);
            } else if (e.event === 'checkpoint_removed') {
              if (!tty) console.log(`removed ${e.path} (${e.reason})`);
            } else if (e.event === 'early_stopping') {
              console.log(`${tty ? '\n' : ''}${e.message}`);
            } else if (e.event === 'done' && typeof e.best_checkpoint === 'string') {
              console.log(`${tty ? '\n' : ''}best checkpoint: ${e.best_checkpoint} (eval loss ${Number(e.best_eval_loss).toFixed(4)})${e.output_from_best ? '; the output holds its weights (--load_best_model_at_end)' : ''}`);
            }
          },
        });
      } catch (err) {
        core.close();
        fail(err);
      }
      process.removeListener('SIGINT', onPrepSig);
      process.removeListener('SIGTERM', onPrepSig);
      let interrupts = 0;
      const onSig = () => {
        interrupts++;
        if (interrupts === 1) {
          console.log('\nstopping: writing a checkpoint (Ctrl-C again to kill)…');
          handle.stop();
        } else handle.kill();
      };
      process.on('SIGINT', onSig);
      process.on('SIGTERM', onSig);
      const run = await handle.done;
      if (tty) process.stdout.write('\n');
      core.close();
      if (run.status === 'failed') {
        console.error(`llms-train: run #${run.id} failed: ${run.errorCode}: ${run.errorMessage}`);
        if (run.errorHint) console.error(`hint: ${run.errorHint}`);
        process.exit(1);
      }
      if (run.status === 'stopped' && run.errorMessage) {
        if (/^stopped (during|while)/.test(run.errorMessage)) console.log(`run #${run.id} ${run.errorMessage}; no training was done`);
        else {
          // killed by a second Ctrl-C: where it can go on from
          console.log(`run #${run.id} stopped: ${run.errorMessage}`);
          if (run.errorHint) console.log(`hint: ${run.errorHint}`);
        }
        process.exit(130);
      }
      console.log(`run #${run.id} ${run.status}; output in ${handle.outputDir}`);
      process.exit(0);
    });
}
