// draft.ts — the "New fine-tune" wizard's draft: every field mirrored into sessionStorage (and a module variable
// where storage is refused), so it survives leaving the screen and reloading the tab; a launch clears it. A run's
// stored RunSpec can be turned back into a draft (draftFromSpec): "New run from these settings" and "Train further"
// (continue one of its adapters) open the wizard on it.

const DRAFT_KEY = 'llmt.newRun.draft';
let memoryDraft: string | null = null;

export function readDraft(): Record<string, unknown> {
  let raw: string | null = memoryDraft;
  try {
    raw = sessionStorage.getItem(DRAFT_KEY) ?? raw;
  } catch {
    /* storage disabled: the module copy only */
  }
  try {
    const d = raw ? (JSON.parse(raw) as unknown) : null;
    return d && typeof d === 'object' && !Array.isArray(d) ? (d as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

export function writeDraft(d: Record<string, unknown>): void {
  memoryDraft = JSON.stringify(d);
  try {
    sessionStorage.setItem(DRAFT_KEY, memoryDraft);
  } catch {
    /* ignore */
  }
}

export function clearDraft(): void {
  memoryDraft = null;
  try {
    sessionStorage.removeItem(DRAFT_KEY);
  } catch {
    /* ignore */
  }
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/**
 * The wizard's fields for a stored RunSpec (the keys the wizard's draft uses), with a fresh output folder and no
 * run name. `continueFrom`: train that adapter further (its own LoRA settings are trained). A value the spec lacks
 * is left out, so the wizard's default applies.
 */
export function draftFromSpec(specIn: unknown, continueFrom: string | null = null): Obj {
  const spec = obj(specIn);
  const model = obj(spec.model);
  const d = obj(spec.data);
  const t = obj(spec.training);
  const l = obj(spec.lora);
  const o = obj(spec.output);
  const dev = obj(spec.devices);
  const dist = obj(spec.distributed);
  const quant = str(model.quantization);
  const method = spec.method === 'full' ? 'full' : quant && quant !== 'none' ? 'qlora' : 'lora';
  const out: Obj = {
    modelPath: str(model.path),
    dataPath: Array.isArray(d.train) ? str(d.train[0]) : str(d.train),
    extraData: Array.isArray(d.train) ? d.train.slice(1).filter((x): x is string => typeof x === 'string') : [],
    validationMode: d.validation ? 'file' : typeof d.validation_percent === 'number' && d.validation_percent > 0 ? 'split' : 'none',
    validationPath: str(d.validation),
    validationPercent: typeof d.validation_percent === 'number' && d.validation_percent > 0 ? d.validation_percent : undefined,
    format: str(d.format),
    template: d.template,
    promptColumn: str(d.prompt_column),
    responseColumn: str(d.response_column),
    historyColumn: str(d.history_column),
    maxSource: d.max_source_length,
    maxTarget: d.max_target_length,
    skipBad: d.on_error === 'skip',
    method,
    quantType: quant === 'fp4' ? 'fp4' : 'nf4',
    preset: '',
    loraR: l.r,
    loraAlpha: l.alpha,
    loraDropout: l.dropout,
    useDora: l.use_dora === true,
    targets: Array.isArray(l.target_modules) ? l.target_modules : undefined,
    modulesToSave: Array.isArray(l.modules_to_save) ? l.modules_to_save.join(',') : '',
    continueAdapter: continueFrom !== null || (typeof l.init_adapter === 'string' && l.init_adapter !== ''),
    initAdapter: continueFrom ?? str(l.init_adapter),
    lr: t.learning_rate,
    scheduler: t.lr_scheduler,
    warmup: t.warmup_steps,
    maxSteps: t.max_steps,
    epochs: t.num_epochs,
    microBatch: t.micro_batch_size,
    gradAccum: t.gradient_accumulation_steps,
    evalBatch: t.eval_batch_size,
    maxGradNorm: t.max_grad_norm,
    neftune: t.neftune_noise_alpha,
    loraplus: t.loraplus_lr_ratio,
    weightDecay: t.weight_decay,
    seed: t.seed,
    precision: t.precision,
    checkpointing: t.gradient_checkpointing,
    offloadOptimizer: t.offload_optimizer,
    offloadCheckpoints: t.offload_checkpoints,
    loggingSteps: o.logging_steps,
    saveSteps: o.save_steps,
    evalSteps: typeof o.eval_steps === 'number' && o.eval_steps > 0 ? o.eval_steps : undefined,
    saveTotalLimit: o.save_total_limit,
    loadBest: o.load_best_model_at_end === true,
    esPatience: o.early_stopping_patience,
    esThreshold: o.early_stopping_threshold,
    outputDir: '',
    overwrite: false,
    outputTouched: false,
    deviceKind: dev.kind === 'cuda' ? 'cuda' : 'cpu',
    gpuIds: Array.isArray(dev.ids) ? dev.ids : [],
    cpuWorkers: dev.kind === 'cuda' ? 1 : dist.nproc_per_node,
    zeroStage: dist.zero_stage === 1 || dist.zero_stage === 2 ? dist.zero_stage : 0,
    runName: '',
    tags: '',
  };
  // the knobs a model's recipe sets count as chosen by hand (another model chosen later keeps them)
  out.appliedRecipe = {};
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined && v !== null));
}
