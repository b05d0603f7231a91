// contract.ts — the one typed contract between the UI and the core. Every request, response and push
// event is a zod schema here: the TypeScript types and the run-time checks come from the same line.
// Both transports (Electron IPC in app/, HTTP + WebSocket in server/) serve exactly this table.
// No Electron, no Node-only imports: the renderer imports this file's types.
import { z } from 'zod';

// ---- shared shapes -------------------------------------------------------------------------------

export const Locale = z.enum(['en', 'zh-CN']);
export type Locale = z.infer<typeof Locale>;

export const RunStatus = z.enum(['queued', 'running', 'completed', 'failed', 'stopped', 'interrupted']);
export type RunStatus = z.infer<typeof RunStatus>;

const Id = z.number().int().positive();

export const Device = z.object({
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
});
export type AppStatus = z.infer<typeof AppStatus>;

export const Settings = z.object({
  locale: Locale,
  /** Folders scanned for local Hugging Face model folders. */
  modelDirs: z.array(z.string().min(1).max(4096)).max(64),
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
});
export type RunSummary = z.infer<typeof RunSummary>;

export const Run = RunSummary.extend({
  spec: z.unknown(),
  specVersion: z.number().int(),
  outputDir: z.string().nullable(),
  errorHint: z.string().nullable(),
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
});

const Empty = z.object({}).strict();

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
  listRuns: method(
    z
      .object({
        experimentId: Id.optional(),
        status: RunStatus.optional(),
        limit: z.number().int().min(1).max(10_000).optional(),
      })
      .strict(),
    z.array(RunSummary),
    'Runs, newest first.',
  ),
  getRun: method(z.object({ id: Id }).strict(), Run, 'One run with its RunSpec.'),
  listModels: method(Empty, z.array(ModelEntry), 'Models known to the workbench.'),
  listDatasets: method(Empty, z.array(DatasetEntry), 'Datasets known to the workbench.'),
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
