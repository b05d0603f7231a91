// contract.ts — the one typed contract between the UI and the core. Every request, response and push
// event is a zod schema here: the TypeScript types and the run-time checks come from the same line.
// Both transports (Electron IPC in app/, HTTP + WebSocket in server/) serve exactly this table.
// No Electron, no Node-only imports: the renderer imports this file's types.
import { z } from 'zod';

import type { ModelInspection as NativeInspection } from '../../native/addon/index.js';
import { MAX_METRIC_POINTS, METRIC_POINT_BUDGET } from './downsample.js';

// ---- shared shapes -------------------------------------------------------------------------------

export const Locale = z.enum(['en', 'zh-CN']);
export type Locale = z.infer<typeof Locale>;

export const RunStatus = z.enum(['queued', 'running', 'completed', 'failed', 'stopped', 'interrupted']);
export type RunStatus = z.infer<typeof RunStatus>;

const Id = z.number().int().positive();

export const Device = z.object({
  /** CPU: 0. GPU: its CUDA ordinal (`cuda:N`). */
  index: z.number().int().nonnegative(),
  kind: z.enum(['cpu', 'cuda']),
  name: z.string(),
  memoryTotal: z.number().nonnegative(),
  memoryFree: z.number().nonnegative(),
  threads: z.number().int().nonnegative(),
});
export type Device = z.infer<typeof Device>;

export const EngineStatus = z.object({
  available: z.boolean(),
  version: z.string().nullable(),
  /** Why the engine could not be loaded, with a hint; null when available. */
  error: z.string().nullable(),
});

export const AppStatus = z.object({
  version: z.string(),
  mode: z.enum(['desktop', 'browser']),
  engine: EngineStatus,
  devices: z.array(Device),
  /** The GPUs among `devices`; empty means "CPU only". */
  gpus: z.array(Device),
  home: z.string(),
  database: z.string(),
  /** Where chat, predictions and evaluations run now (the settings with "auto" resolved). */
  inference: z.object({ device: z.string(), precision: z.string(), quantization: z.string() }),
});
export type AppStatus = z.infer<typeof AppStatus>;

export const Settings = z.object({
  locale: Locale,
  /** Folders scanned for local Hugging Face model folders. */
  modelDirs: z.array(z.string().min(1).max(4096)).max(64),
  /** Where chat, predictions and evaluations run: "auto" (the first GPU when there is one, else the CPU), "cpu" or
   *  "cuda:N". */
  inferenceDevice: z.string().regex(/^(auto|cpu|cuda:\d{1,2})$/, 'auto, cpu or cuda:N'),
  /** Their weights: "auto" (bf16 on a GPU, fp32 on the CPU), "fp32", "bf16" or "fp16". */
  inferencePrecision: z.enum(['auto', 'fp32', 'bf16', 'fp16']),
  /** The base's block linears in 4 bits: "auto" (as the adapter was trained: QLoRA adapters answer on the 4-bit base
   *  they were trained with), "none", "nf4" or "fp4". */
  inferenceQuantization: z.enum(['auto', 'none', 'nf4', 'fp4']),
});
export type Settings = z.infer<typeof Settings>;

export const Experiment = z.object({
  id: Id,
  name: z.string(),
  description: z.string(),
  createdAt: z.string(),
  runCount: z.number().int().nonnegative(),
});
export type Experiment = z.infer<typeof Experiment>;

export const RunSummary = z.object({
  id: Id,
  experimentId: Id.nullable(),
  name: z.string(),
  status: RunStatus,
  createdAt: z.string(),
  startedAt: z.string().nullable(),
  endedAt: z.string().nullable(),
  errorCode: z.string().nullable(),
  errorMessage: z.string().nullable(),
  tags: z.array(z.string()),
  modelPath: z.string().nullable(),
  dataPath: z.string().nullable(),
  method: z.string().nullable(),
  /** QLoRA: the base's 4-bit type ("nf4", "fp4"); null for a full-precision base */
  quantization: z.string().nullable(),
  /** the last logged train loss, the lowest eval loss (and its step), the last logged step */
  finalLoss: z.number().nullable(),
  bestEvalLoss: z.number().nullable(),
  bestEvalStep: z.number().nullable(),
  lastStep: z.number().nullable(),
  maxSteps: z.number().nullable(),
  /** the cumulative trained tokens (the `tokens` metric) last logged */
  tokens: z.number().nullable(),
  /** the spec's training.learning_rate and lora.r (null where the spec has none) */
  lr: z.number().nullable(),
  loraR: z.number().nullable(),
  /** seconds spent training over the finished attempts (a stopped and resumed run's pause not counted), and the
   *  running attempt's start; null activeSeconds: a run recorded before this was kept (started…ended is all there is) */
  activeSeconds: z.number().nullable(),
  attemptStartedAt: z.string().nullable(),
});
export type RunSummary = z.infer<typeof RunSummary>;

export const Run = RunSummary.extend({
  spec: z.unknown(),
  specVersion: z.number().int(),
  outputDir: z.string().nullable(),
  errorHint: z.string().nullable(),
  notes: z.string(),
  /** true when this process supervises the worker (stop works from here) */
  live: z.boolean(),
});
export type Run = z.infer<typeof Run>;

export const ModelEntry = z.object({
  id: Id,
  path: z.string(),
  name: z.string(),
  family: z.string().nullable(),
  modelType: z.string().nullable(),
  addedAt: z.string(),
});

export const DatasetEntry = z.object({
  id: Id,
  path: z.string(),
  name: z.string(),
  format: z.string().nullable(),
  records: z.number().int().nullable(),
  addedAt: z.string(),
  /** addDataset/importDataset only: what makes the file unusable for training (no records, none usable) */
  warning: z.string().optional(),
});

const Empty = z.object({}).strict();

/** The columns a runs list sorts by, in SQL over every matching run (RunsRepo.page). */
export const RUN_SORT_KEYS = ['created', 'finished', 'name', 'status', 'bestEval', 'finalLoss', 'lr', 'loraR', 'tokens', 'duration'] as const;
export const RunSort = z.enum(RUN_SORT_KEYS);
export type RunSort = z.infer<typeof RunSort>;
export const SortDir = z.enum(['asc', 'desc']);
export type SortDir = z.infer<typeof SortDir>;

/** Which runs, in which order, from where: listRuns and listRunsPage take the same request. */
const RunsQuery = z
  .object({
    experimentId: Id.optional(),
    status: RunStatus.optional(),
    /** runs carrying this tag */
    tag: z.string().min(1).max(200).optional(),
    /** words, each contained (case-insensitively) in a run's #id, name, status, model or data path, method or tags */
    query: z.string().max(1000).optional(),
    /** default: created; NaN and missing values come last in either direction, ties by id in the same direction */
    sort: RunSort.optional(),
    /** default: desc */
    dir: SortDir.optional(),
    offset: z.number().int().min(0).max(1_000_000_000).optional(),
    limit: z.number().int().min(1).max(10_000).optional(),
  })
  .strict();
export type RunsQuery = z.infer<typeof RunsQuery>;

export const RunsPage = z.object({
  runs: z.array(RunSummary),
  /** how many runs match the filters (the page is `runs`, from `offset`) */
  total: z.number().int().nonnegative(),
  offset: z.number().int().nonnegative(),
  /** every tag any run carries (for a tag filter over all runs, not only this page) */
  tags: z.array(z.string()),
});
export type RunsPage = z.infer<typeof RunsPage>;

const Sampling = z
  .object({
    max_new_tokens: z.number().int().min(1).max(32_768).optional(),
    do_sample: z.boolean().optional(),
    temperature: z.number().min(0).max(100).optional(),
    top_k: z.number().int().min(0).optional(),
    top_p: z.number().gt(0).max(1).optional(),
    repetition_penalty: z.number().positive().max(100).optional(),
    seed: z.number().int().min(0).optional(),
  })
  .strict();
const OpId = z.string().min(1).max(64);
const ChatTarget = z.object({ model: z.string().min(1).max(4096), adapter: z.string().max(4096).nullable().optional(), tokenizer: z.string().max(4096).nullable().optional(), template: z.string().optional() }).strict();

/** A metric point as sent to the UI: [step, name, value (null = non-finite), unix seconds]. */
export const MetricTuple = z.tuple([z.number(), z.string(), z.number().nullable(), z.number()]);
export type MetricTuple = z.infer<typeof MetricTuple>;

export interface CatalogFamily {
  id: string;
  name: string;
  modelType: string;
  language: string;
  template: string;
  loraConfig: string;
  models: { hfId: string; params: string; needsMerge?: boolean }[];
}
export interface LocalModel {
  path: string;
  name: string;
  modelType: string | null;
  source: 'registered' | 'scanned';
}
export interface LoraPreset {
  name: string;
  file: string;
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[];
  modulesToSave: string[] | null;
}
/** The engine's inspection of a model folder (no weights loaded; fields in native/addon/index.d.ts), with the
 *  catalog family it belongs to and that family's template, if any. */
export type ModelInspection = NativeInspection & { catalogFamily?: string | null; template?: string | null };
export interface DatasetPreview {
  file: string;
  bytes: number;
  kind: string;
  format: string | null;
  formatHint: string | null;
  columns: string[];
  records: number;
  errors: { line: number; reason: string }[];
  errorCount: number;
  types: Record<string, number>;
  rows: { line: number; raw: unknown; segments: { text: string; trained: boolean }[]; tokens: number; truncated: number }[];
  stats: {
    sampled: number;
    unit: 'tokens' | 'characters';
    lengths: { min: number; max: number; mean: number; p50: number; p95: number; histogram: { upTo: number; count: number }[] };
    truncatedPercent: number;
    trainedTokensPercent: number;
  };
}
export interface RunPlan {
  /** the validated RunSpec with every default filled in */
  spec: Record<string, unknown>;
  cli: string;
  warnings: string[];
  unsupported: string | null;
  /** why starting it will be refused as it stands (its output folder is another recorded run's), or null */
  blocked: string | null;
  fits: boolean;
  /** free memory of the run's device; several GPUs: the least free among them */
  freeBytes: number;
  /** GPU runs: each selected GPU (every worker holds the whole model, so the estimate is per GPU); empty on the CPU */
  gpus: { index: number; freeBytes: number; fits: boolean }[];
  suggestions: string[];
  summary: string | null;
  estimate: { bytes: Record<string, number>; stepSeconds: number | null; totalSeconds: number | null; steps: number | null } | null;
}
export interface SamplingParams {
  max_new_tokens?: number;
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  seed?: number;
}
export interface ChatSessionInfo {
  id: number;
  title: string;
  model: string;
  adapter: string | null;
  template: string;
  system: string | null;
  params: Required<SamplingParams>;
  createdAt: string;
  updatedAt: string;
  messageCount?: number;
}
export interface ChatMessageInfo {
  id: number;
  role: 'system' | 'user' | 'assistant';
  content: string;
  meta: unknown;
  createdAt: string;
}
export interface AnswerInfo {
  text: string;
  tokens: number;
  promptTokens: number;
  finish: 'stop' | 'length' | 'aborted';
  seconds: number;
  /** where it was generated: "cpu", "cuda:0" */
  device: string;
  /** the engine host had died and was restarted before this answer (why), or null */
  restarted: string | null;
}
/** One stored evaluation of a checkpoint (see docs/metrics.md). */
export interface EvalInfo {
  evalId: number;
  runId: number | null;
  checkpoint: string;
  step: number | null;
  data: string;
  loss: { loss: number; perplexity: number; tokens: number } | null;
  report: unknown;
  predictions: string | null;
  /** the predictions: records skipped as bad, answers that stopped at the model's context (null: no hard limit) */
  generation?: { skipped: number; contextStops: number; context: number | null };
  best?: { metric: string; value: number } | false;
  seconds: number;
  createdAt: string;
}
/** A PEFT adapter folder that a new run can continue training (lora.init_adapter): what it holds. */
export interface AdapterInspection {
  path: string;
  r: number;
  alpha: number;
  dropout: number;
  /** a list of module names, one regex / "all-linear", or null (the family's default) */
  targetModules: string[] | string | null;
  modulesToSave: string[] | null;
  useDora: boolean;
  useRslora: boolean;
  /** the PEFT options beyond those above that it sets (rank_pattern, bias, …) */
  options: string[];
  /** adapter_config.json's base_model_name_or_path (null when absent) */
  baseModel: string | null;
  /** the adapter's LoRA settings as a RunSpec's lora object (init_adapter included) */
  lora: Record<string, unknown>;
}
/** An adapter a recorded LoRA run wrote: its final output or one of its checkpoints. */
export interface TrainedAdapter {
  path: string;
  runId: number;
  runName: string;
  /** null: the run's final adapter */
  step: number | null;
  /** the base model it was trained on */
  model: string;
  /** the prompt template its data was laid out in (chat and predict prompt it the same way) */
  template: string | null;
  /** a full fine-tune's saved model (listed with includeFull), not an adapter */
  full: boolean;
}
export interface CheckpointInfo {
  id: number;
  step: number;
  path: string;
  sizeBytes: number | null;
  isFinal: boolean;
  createdAt: string;
  /** its folder no longer exists (deleted by hand or with an output folder) */
  missing?: boolean;
}
export interface RunComparison {
  runs: (z.infer<typeof RunSummary> & { spec: unknown })[];
  /** the RunSpec fields (dotted paths) whose values differ, with each run's value */
  diff: { path: string; values: unknown[] }[];
  evals: { runId: number; checkpointStep: number | null; dataPath: string; metrics: unknown; createdAt: string }[];
}

// ---- methods --------------------------------------------------------------------------------------

function method<Req extends z.ZodType, Res extends z.ZodType>(request: Req, response: Res, doc: string) {
  return { request, response, doc };
}

export const methods = {
  getStatus: method(Empty, AppStatus, 'Version, engine state, devices and data locations (the status bar).'),
  getSettings: method(Empty, Settings, 'User settings.'),
  updateSettings: method(Settings.partial().strict(), Settings, 'Change some settings; returns all of them.'),
  listExperiments: method(Empty, z.array(Experiment), 'Every experiment with its number of runs.'),
  createExperiment: method(
    z.object({ name: z.string().trim().min(1).max(200), description: z.string().max(10_000).optional() }).strict(),
    Experiment,
    'Create a named group of runs. Names are unique.',
  ),
  listRuns: method(RunsQuery, z.array(RunSummary), 'Runs, newest first unless sort/dir say otherwise; at most limit (default 1,000) from offset.'),
  listRunsPage: method(
    RunsQuery,
    RunsPage,
    'One page of runs (limit, default 1,000, from offset) filtered and sorted in the database over every run, with how many match in all and every tag in use.',
  ),
  getRun: method(z.object({ id: Id }).strict(), Run, 'One run with its RunSpec.'),
  listModels: method(Empty, z.array(ModelEntry), 'Models known to the workbench.'),
  listDatasets: method(Empty, z.array(DatasetEntry), 'Datasets known to the workbench.'),
  modelCatalog: method(
    Empty,
    z.custom<{ families: CatalogFamily[]; local: LocalModel[]; templates: string[]; presets: LoraPreset[] }>(),
    "The seed's model families with their HF ids, local model folders (registered and found under the model directories), templates and LoRA presets.",
  ),
  inspectModel: method(z.object({ path: z.string().min(1).max(4096) }).strict(), z.custom<ModelInspection>(), 'Architecture, size, dtype, vocabulary, context, LoRA target names and whether the engine supports a model folder.'),
  inspectAdapter: method(
    z.object({ path: z.string().min(1).max(4096) }).strict(),
    z.custom<AdapterInspection>(),
    'A PEFT adapter folder to continue training from (the seed\'s --peft_path): its LoRA configuration and base model, or why it cannot be trained.',
  ),
  listAdapters: method(
    z.object({ model: z.string().min(1).max(4096).optional(), includeFull: z.boolean().optional() }).strict(),
    z.custom<TrainedAdapter[]>(),
    'The adapters that recorded LoRA runs wrote (final outputs and checkpoints whose folders still exist), newest run first: on one base model, or (without model) on every model, at most 500; includeFull adds the models full fine-tunes saved.',
  ),
  previewDataset: method(
    z
      .object({
        path: z.string().min(1).max(4096),
        format: z.string().nullable().optional(),
        template: z.string().optional(),
        promptColumn: z.string().optional(),
        responseColumn: z.string().optional(),
        historyColumn: z.string().optional(),
        modelPath: z.string().nullable().optional(),
        maxSourceLength: z.number().int().min(2).max(1_000_000).optional(),
        maxTargetLength: z.number().int().min(3).max(1_000_000).optional(),
        rows: z.number().int().min(0).max(50).optional(),
      })
      .strict(),
    z.custom<DatasetPreview>(),
    'Detected format, columns, the first rows through the template with trained tokens marked, length statistics and bad lines.',
  ),
  importDataset: method(
    z
      .object({
        name: z.string().trim().min(1).max(255),
        // a 64 MiB file: as text, or base64 (4/3 larger) for a gzip-compressed one
        content: z.string().max(88 * 2 ** 20),
        encoding: z.enum(['utf8', 'base64']).optional(),
      })
      .strict(),
    DatasetEntry,
    "Saves an uploaded dataset file into the app's data folder and registers it (browser file picker, drag-and-drop); a gzip-compressed file comes as base64 (encoding).",
  ),
  addDataset: method(z.object({ path: z.string().min(1).max(4096), name: z.string().max(255).optional() }).strict(), DatasetEntry, 'Registers a dataset file by path.'),
  removeDataset: method(
    z.object({ id: Id, deleteFile: z.boolean() }).strict(),
    z.object({ id: Id, fileRemoved: z.boolean() }),
    "Forgets a dataset; with deleteFile also removes its file when it is a copy the app imported (inside its datasets folder) — a file elsewhere is the user's and stays.",
  ),
  planRun: method(
    z.object({ spec: z.unknown() }).strict(),
    z.custom<RunPlan>(),
    'Validates a RunSpec (field errors as 400) and returns it complete, its CLI command and the memory/time estimate.',
  ),
  startRun: method(
    z.object({ spec: z.unknown(), experimentId: Id.optional(), tags: z.array(z.string().min(1).max(64)).max(32).optional(), ignoreEstimate: z.boolean().optional() }).strict(),
    RunSummary,
    'Launches a run (queued behind other runs on the same devices). An output folder that another recorded run uses is refused (CONFLICT, naming that run) unless the spec resumes from a checkpoint (resume_from).',
  ),
  stopRun: method(z.object({ id: Id, force: z.boolean().optional() }).strict(), RunSummary, 'Stops a run gracefully (a checkpoint is written); force kills the worker.'),
  resumeRun: method(z.object({ id: Id }).strict(), RunSummary, 'Continues a stopped, failed or interrupted run from its last checkpoint (same run).'),
  deleteRun: method(z.object({ id: Id, deleteFiles: z.boolean() }).strict(), z.object({ id: Id, filesRemoved: z.boolean(), keptFiles: z.array(z.string()).optional() }), 'Deletes a run (and, if asked, the files it wrote in its output folder — the folder too when nothing else is left; keptFiles names what stays, e.g. a base model the run wrote its adapter beside — refused with CONFLICT naming the other run when another recorded run uses that folder, one inside it or one above it).'),
  updateRun: method(
    z.object({ id: Id, name: z.string().trim().min(1).max(200).optional(), tags: z.array(z.string().trim().min(1).max(64)).max(32).optional(), notes: z.string().max(10_000).optional() }).strict(),
    RunSummary,
    "Renames a run or changes its tags or notes.",
  ),
  getMetrics: method(
    z
      .object({
        id: Id,
        afterRowid: z.number().int().min(0).optional(),
        names: z.array(z.string()).max(64).optional(),
        fromStep: z.number().int().min(0).optional(),
        toStep: z.number().int().min(0).optional(),
        maxPoints: z.number().int().min(10).max(MAX_METRIC_POINTS).optional(),
      })
      .strict(),
    z.object({ points: z.array(MetricTuple), lastRowid: z.number().int(), maxPoints: z.number().int(), downsampled: z.array(z.string()) }),
    `A run's metric points ordered by step: every series (or \`names\`) over steps fromStep..toStep (default all), each series whole when it has at most maxPoints points there (default ${METRIC_POINT_BUDGET}), else its lowest, highest and first non-finite point per step bucket plus its first and last point (src-main/api/downsample.ts); \`downsampled\` names those series. With afterRowid: the points added after that rowid (budgeted the same way). lastRowid: every point up to it is accounted for (push events with a larger lastRowid are newer).`,
  ),
  exportMetrics: method(
    z.object({ id: Id, format: z.enum(['csv', 'json']), out: z.string().min(1).max(4096), names: z.array(z.string()).max(64).optional(), overwrite: z.boolean().optional() }).strict(),
    z.object({ out: z.string(), rows: z.number().int(), names: z.array(z.string()), bytes: z.number().int() }),
    "Writes every logged point of a run (or of `names`) at full resolution to a file, one row per step: CSV (step, time, one column per metric; NaN for a non-finite value, empty where nothing was logged) or JSON (an array of {step, time, <metric>: value}; null for a non-finite value). Streamed to disk, never built in memory. An existing file is refused with code EXISTS (HTTP 409) unless overwrite is true.",
  ),
  listCheckpoints: method(z.object({ id: Id }).strict(), z.custom<CheckpointInfo[]>(), "A run's checkpoints."),
  getRunLog: method(z.object({ id: Id, lines: z.number().int().min(1).max(5000).optional() }).strict(), z.object({ lines: z.array(z.string()) }), "The tail of a run's log (train-<id>.log in its output folder; train.log for runs recorded before logs were per run)."),
  compareRuns: method(z.object({ ids: z.array(Id).min(1).max(16) }).strict(), z.custom<RunComparison>(), 'Several runs with their specs, the spec fields that differ, and their evaluations.'),
  listChatSessions: method(Empty, z.custom<ChatSessionInfo[]>(), 'Saved chat sessions, most recent first.'),
  createChatSession: method(
    z.object({ model: z.string().min(1).max(4096), adapter: z.string().max(4096).nullable().optional(), tokenizer: z.string().max(4096).nullable().optional(), template: z.string().optional(), system: z.string().max(20_000).nullable().optional(), title: z.string().max(200).optional(), params: Sampling.optional() }).strict(),
    z.custom<ChatSessionInfo>(),
    "A new chat with a base model and an adapter or checkpoint (or none) — or a full fine-tune's checkpoint as the model, with the base's tokenizer when it has none — a template, a system prompt and sampling settings.",
  ),
  getChatSession: method(z.object({ id: Id }).strict(), z.custom<ChatSessionInfo & { messages: ChatMessageInfo[] }>(), 'A chat session with its messages.'),
  updateChatSession: method(
    z.object({ id: Id, title: z.string().max(200).optional(), adapter: z.string().max(4096).nullable().optional(), template: z.string().optional(), system: z.string().max(20_000).nullable().optional(), params: Sampling.optional() }).strict(),
    z.custom<ChatSessionInfo>(),
    "Changes a session's title, adapter, template, system prompt or sampling.",
  ),
  deleteChatSession: method(z.object({ id: Id }).strict(), z.object({ id: Id }), 'Deletes a chat session and its messages.'),
  clearChatSession: method(z.object({ id: Id }).strict(), z.object({ removed: z.number().int() }), "Removes a session's messages."),
  sendChat: method(
    z.object({ id: Id, text: z.string().min(1).max(100_000), params: Sampling.optional() }).strict(),
    z.custom<{ user: ChatMessageInfo; assistant: ChatMessageInfo; answer: AnswerInfo }>(),
    'Adds a user message and answers it through the session template; tokens stream as chatDelta events.',
  ),
  stopChat: method(Empty, z.object({ stopped: z.boolean() }), 'Stops every answer being generated (what was generated is kept).'),
  compareAnswers: method(
    z.object({ requestId: z.string().min(1).max(64), a: ChatTarget, b: ChatTarget, prompt: z.string().min(1).max(100_000), system: z.string().max(20_000).nullable().optional(), params: Sampling.optional() }).strict(),
    z.custom<{ a: AnswerInfo | { error: { code: string; message: string } }; b: AnswerInfo | { error: { code: string; message: string } } }>(),
    'A/B: one prompt answered by two (model, adapter) choices side by side; deltas stream as chatDelta events with side a/b.',
  ),
  evaluateCheckpoint: method(
    z.object({ runId: Id, checkpointPath: z.string().min(1).max(4096), data: z.string().min(1).max(4096), limit: z.number().int().min(1).optional(), predict: z.boolean().optional(), loss: z.boolean().optional() }).strict(),
    z.custom<EvalInfo>(),
    'Predictions + metrics (per task type) and eval loss/perplexity of one checkpoint on a test file; stored with the run.',
  ),
  evaluateAllCheckpoints: method(
    z.object({ runId: Id, data: z.string().min(1).max(4096), metric: z.string().optional(), limit: z.number().int().min(1).optional(), predict: z.boolean().optional(), loss: z.boolean().optional() }).strict(),
    z.custom<{ evals: EvalInfo[]; best: { evalId: number; checkpoint: string; metric: string; value: number } | null }>(),
    "Evaluates every checkpoint of a run and marks the best (eval loss by default).",
  ),
  listEvals: method(z.object({ runId: Id }).strict(), z.custom<EvalInfo[]>(), "A run's stored evaluations."),
  downloadModel: method(
    z.object({ opId: OpId, repo: z.string().regex(/^[\w.-]+\/[\w.-]+$/, 'owner/name'), revision: z.string().max(200).optional(), endpoint: z.string().url().optional(), token: z.string().max(500).optional() }).strict(),
    z.object({ dir: z.string(), files: z.array(z.string()), bytes: z.number() }),
    "Downloads a Hugging Face model (resumable, checksums verified) into the app's model folder and registers it; progress as modelProgress events.",
  ),
  convertModel: method(z.object({ opId: OpId, path: z.string().min(1).max(4096), out: z.string().max(4096).optional() }).strict(), z.custom<{ out: string; files: string[]; tensors: number; bytes: number }>(), 'pytorch_model.bin → safetensors, read without running any code from the file.'),
  mergeAdapter: method(
    z.object({ opId: OpId, model: z.string().min(1).max(4096), adapter: z.string().min(1).max(4096), out: z.string().min(1).max(4096), dtype: z.enum(['auto', 'float32', 'float16', 'bfloat16']).optional() }).strict(),
    z.custom<{ out: string; dtype: string; merged_modules: number; files: string[]; bytes: number }>(),
    'Merges an adapter into its base and saves an HF model folder (registered as a model).',
  ),
  exportGguf: method(
    z.object({ opId: OpId, model: z.string().min(1).max(4096), adapter: z.string().max(4096).optional(), adapterOnly: z.boolean().optional(), out: z.string().min(1).max(4096), dtype: z.enum(['f32', 'f16', 'bf16']).optional(), template: z.string().optional(), name: z.string().max(200).optional(), overwrite: z.boolean().optional() }).strict(),
    z.custom<{ out: string; modelfile: string | null; bytes: number }>(),
    'GGUF export (merging an adapter first) with an Ollama Modelfile matching the training template. An existing output file (.gguf or .Modelfile) is refused with code EXISTS (HTTP 409) unless overwrite is true; the output may never be inside the model or adapter folder.',
  ),
  cancelModelOp: method(z.object({ opId: OpId }).strict(), z.object({ cancelled: z.boolean() }), 'Cancels a download, conversion, merge or export (nothing half-written is left).'),
  deleteModel: method(z.object({ path: z.string().min(1).max(4096), deleteFiles: z.boolean() }).strict(), z.object({ path: z.string(), filesRemoved: z.boolean() }), "Forgets a model; with deleteFiles also removes its folder (only inside the app's model folder)."),
} as const;

export type Methods = typeof methods;
export type MethodName = keyof Methods;
export type Req<K extends MethodName> = z.input<Methods[K]['request']>;
export type ParsedReq<K extends MethodName> = z.output<Methods[K]['request']>;
export type Res<K extends MethodName> = z.output<Methods[K]['response']>;
export const methodNames = Object.keys(methods) as MethodName[];

// ---- push events ----------------------------------------------------------------------------------

export const events = {
  /** Sent on connect and whenever devices or the engine state change (and every few seconds). */
  status: AppStatus,
  /** A run changed state (queued → running → completed/failed/...). */
  runChanged: RunSummary,
  /** New metric points of a run (batched, at most every 500 ms). */
  metrics: z.object({ runId: Id, points: z.array(MetricTuple), lastRowid: z.number().int() }),
  /** More points were written at once than pushes carry (another process wrote a long history): they are not pushed;
   *  whoever shows metrics fetches them again (getMetrics). */
  metricsResync: z.object({ lastRowid: z.number().int() }),
  /** Generated text as it streams: a session's answer, or one side of an A/B request. */
  chatDelta: z.object({ sessionId: Id.optional(), requestId: z.string().optional(), side: z.enum(['a', 'b']).optional(), delta: z.string() }),
  /** The engine host (interactive generation) died and will restart on the next request. */
  engineHost: z.object({ event: z.enum(['exit', 'restart']), message: z.string() }),
  /** Progress of a model operation (download: bytes/speed/eta; convert/merge/export: tensors). */
  modelProgress: z.object({
    opId: z.string(),
    stage: z.string(),
    done: z.number(),
    total: z.number(),
    name: z.string(),
    speed: z.number().nullable(),
    eta: z.number().nullable(),
  }),
  /** Progress of an evaluation. */
  evalProgress: z.object({ runId: Id, phase: z.enum(['predict', 'loss']), done: z.number().int(), total: z.number().int(), checkpoint: z.string() }),
} as const;

export type Events = typeof events;
export type EventName = keyof Events;
export type EventPayload<K extends EventName> = z.output<Events[K]>;
export const eventNames = Object.keys(events) as EventName[];

// ---- errors ---------------------------------------------------------------------------------------

/** Codes carried in `{error: {code, message}}`. Engine codes (OOM, NAN, ...) pass through unchanged. */
export const ErrorCode = z.enum([
  'BAD_REQUEST',
  'UNAUTHORIZED',
  'NOT_FOUND',
  'CONFLICT',
  'INTERNAL',
  'UNAVAILABLE',
  'BAD_INPUT',
  'IO',
  'OOM',
  'NAN',
  'CUDA',
  'UNSUPPORTED',
  'ABORTED',
  /** the output file already exists: ask "Replace?" and retry with overwrite: true */
  'EXISTS',
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

export const FieldError = z.object({ path: z.string(), message: z.string() });
export type FieldError = z.infer<typeof FieldError>;

export const ErrorBody = z.object({
  code: z.string(),
  message: z.string(),
  hint: z.string().optional(),
  fields: z.array(FieldError).optional(),
});
export type ErrorBody = z.infer<typeof ErrorBody>;

export type Envelope<T> = { ok: true; result: T } | { ok: false; error: ErrorBody };
