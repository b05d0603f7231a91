// cli-command.ts — a RunSpec written back as the `llms-train train` command line with the seed's flag names,
// so what the wizard built can be run (and scripted) from a terminal. Only what differs from the defaults is
// written; `specFromFlags(parse(cliCommand(spec)))` gives the same RunSpec back (tested).
import { isMultiGpu, isRegexLike, LORA_OPTION_KEYS, RunSpec } from './runspec.js';

/** POSIX-shell quoting: bare when safe, else single quotes. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function cliArgs(spec: RunSpec): string[] {
  const d = RunSpec.parse({ model: { path: 'm' }, data: { train: 't' }, output: { dir: 'o' } });
  const a: string[] = [];
  const flag = (name: string, v: unknown, def?: unknown) => {
    if (v === null || v === undefined || v === def) return;
    a.push(`--${name}`, String(v));
  };
  const sw = (name: string, on: boolean) => {
    if (on) a.push(`--${name}`);
  };
  if (spec.name) flag('run_name', spec.name);
  flag('model_name_or_path', spec.model.path);
  flag('quantization', spec.model.quantization, d.model.quantization);
  flag('train_file', Array.isArray(spec.data.train) ? spec.data.train.join(',') : spec.data.train);
  flag('validation_file', spec.data.validation);
  flag('validation_split_percentage', spec.data.validation_percent, d.data.validation_percent);
  flag('format', spec.data.format);
  flag('template', spec.data.template, d.data.template);
  flag('prompt_column', spec.data.prompt_column);
  flag('response_column', spec.data.response_column);
  flag('history_column', spec.data.history_column);
  flag('max_source_length', spec.data.max_source_length, d.data.max_source_length);
  flag('max_target_length', spec.data.max_target_length, d.data.max_target_length);
  flag('on_error', spec.data.on_error, d.data.on_error);
  flag('output_dir', spec.output.dir);
  sw('overwrite_output_dir', spec.output.overwrite);
  if (spec.method === 'full') flag('use_lora', 'False');
  // continuing an adapter: its own configuration is trained, the lora flags would not be used
  else if (spec.lora.init_adapter) flag('peft_path', spec.lora.init_adapter);
  else {
    flag('lora_r', spec.lora.r, d.lora.r);
    flag('lora_alpha', spec.lora.alpha, d.lora.alpha);
    flag('lora_dropout', spec.lora.dropout, d.lora.dropout);
    const tm = spec.lora.target_modules;
    // a string is one regex (or "all-linear") for --lora_target_modules only when it reads as one: a bare name
    // is wrapped in a group, which re.fullmatch treats the same
    if (typeof tm === 'string') flag('lora_target_modules', tm.toLowerCase() === 'all-linear' || isRegexLike(tm) ? tm : `(?:${tm})`);
    else if (tm) flag('lora_target_modules', tm.join(','));
    if (spec.lora.modules_to_save) flag('modules_to_save', spec.lora.modules_to_save.join(','));
    sw('use_dora', spec.lora.use_dora === true);
    const extra = Object.fromEntries(LORA_OPTION_KEYS.filter((k) => spec.lora[k] !== undefined).map((k) => [k, spec.lora[k]]));
    if (Object.keys(extra).length) flag('lora_options', JSON.stringify(extra));
  }
  const t = spec.training;
  const td = d.training;
  flag('learning_rate', t.learning_rate, td.learning_rate);
  flag('lr_scheduler_type', t.lr_scheduler, td.lr_scheduler);
  flag('warmup_steps', t.warmup_steps, td.warmup_steps);
  flag('warmup_ratio', t.warmup_ratio, td.warmup_ratio);
  flag('neftune_noise_alpha', t.neftune_noise_alpha, td.neftune_noise_alpha);
  flag('loraplus_lr_ratio', t.loraplus_lr_ratio, td.loraplus_lr_ratio);
  flag('max_steps', t.max_steps, td.max_steps);
  flag('num_train_epochs', t.num_epochs, td.num_epochs);
  flag('per_device_train_batch_size', t.micro_batch_size, td.micro_batch_size);
  flag('per_device_eval_batch_size', t.eval_batch_size, td.eval_batch_size);
  flag('gradient_accumulation_steps', t.gradient_accumulation_steps, td.gradient_accumulation_steps);
  flag('max_grad_norm', t.max_grad_norm, td.max_grad_norm);
  flag('weight_decay', t.weight_decay, td.weight_decay);
  flag('adam_beta1', t.adam_beta1, td.adam_beta1);
  flag('adam_beta2', t.adam_beta2, td.adam_beta2);
  flag('adam_epsilon', t.adam_epsilon, td.adam_epsilon);
  flag('seed', t.seed, td.seed);
  sw('bf16', t.precision === 'bf16');
  sw('fp16', t.precision === 'fp16');
  sw('gradient_checkpointing', t.gradient_checkpointing);
  sw('offload_optimizer', t.offload_optimizer);
  sw('offload_checkpoints', t.offload_checkpoints);
  flag('logging_steps', spec.output.logging_steps, d.output.logging_steps);
  flag('save_steps', spec.output.save_steps, d.output.save_steps);
  flag('eval_steps', spec.output.eval_steps, d.output.eval_steps);
  flag('save_total_limit', spec.output.save_total_limit, d.output.save_total_limit);
  sw('load_best_model_at_end', spec.output.load_best_model_at_end);
  flag('early_stopping_patience', spec.output.early_stopping_patience, d.output.early_stopping_patience);
  flag('early_stopping_threshold', spec.output.early_stopping_threshold, d.output.early_stopping_threshold);
  flag('device', spec.devices.kind === 'cuda' && spec.devices.ids.length ? `cuda:${spec.devices.ids.join(',')}` : spec.devices.kind, 'cpu');
  // several GPUs: one worker each, so --device cuda:0,1 says the worker count too
  if (!isMultiGpu(spec)) flag('nproc_per_node', spec.distributed.nproc_per_node, d.distributed.nproc_per_node);
  flag('zero_stage', spec.distributed.zero_stage, d.distributed.zero_stage);
  flag('resume_from_checkpoint', spec.resume_from);
  return a;
}

/** The whole command, one flag per line (copy-pastable into a POSIX shell). */
export function cliCommand(spec: RunSpec): string {
  const a = cliArgs(spec);
  const lines: string[] = ['llms-train train'];
  for (let i = 0; i < a.length; i++) {
    const f = a[i]!;
    const next = a[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      lines.push(`${f} ${shellQuote(next)}`);
      i++;
    } else lines.push(f);
  }
  return lines.join(' \\\n  ');
}
