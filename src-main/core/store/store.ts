// store.ts — the repositories over the database: one small class per table group, typed rows in and
// out, prepared statements reused. The rest of the core talks to SQLite only through these.
import { RUN_SORT_KEYS, type RunSort, type SortDir } from '../../api/contract.js';
import { bucketBounds } from '../../api/downsample.js';
import type { DB } from './db.js';
import { StoreError, openDatabase, type OpenOptions } from './db.js';

export type RunStatus = 'queued' | 'running' | 'completed' | 'failed' | 'stopped' | 'interrupted';

const now = () => new Date().toISOString();

export interface ExperimentRow {
  id: number;
  name: string;
  description: string;
  createdAt: string;
  runCount: number;
}

export interface RunRow {
  id: number;
  experimentId: number | null;
  modelId: number | null;
  datasetId: number | null;
  name: string;
  spec: unknown;
  specVersion: number;
  status: RunStatus;
  outputDir: string | null;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  errorCode: string | null;
  errorMessage: string | null;
  errorHint: string | null;
  workerPid: number | null;
  exitCode: number | null;
  exitSignal: string | null;
  tags: string[];
  notes: string;
  /** seconds its worker ran over the finished attempts (a resumed run's pauses not counted); null: not recorded */
  activeSeconds: number | null;
  /** the running attempt's start (null when none runs) */
  attemptStartedAt: string | null;
}

export interface MetricPoint {
  step: number;
  name: string;
  /** Non-finite values are stored as NULL and read back as null. */
  value: number | null;
  /** unix seconds */
  time: number;
}

export interface CheckpointRow {
  id: number;
  runId: number;
  step: number;
  path: string;
  sizeBytes: number | null;
  isFinal: boolean;
  createdAt: string;
}

export interface ModelRow {
  id: number;
  path: string;
  name: string;
  family: string | null;
  modelType: string | null;
  hfId: string | null;
  info: unknown;
  addedAt: string;
}

export interface DatasetRow {
  id: number;
  path: string;
  name: string;
  format: string | null;
  records: number | null;
  info: unknown;
  addedAt: string;
}

export interface EvalRow {
  id: number;
  runId: number | null;
  checkpointId: number | null;
  dataPath: string;
  metrics: unknown;
  createdAt: string;
}

export interface ChatSessionRow {
  id: number;
  title: string;
  modelPath: string;
  adapterPath: string | null;
  template: string | null;
  systemPrompt: string | null;
  params: unknown;
  createdAt: string;
  updatedAt: string;
}

export interface ChatMessageRow {
  id: number;
  sessionId: number;
  role: 'system' | 'user' | 'assistant';
  content: string;
  meta: unknown;
  createdAt: string;
}

const json = (v: unknown) => (v === undefined ? null : JSON.stringify(v));
const parse = (s: string | null): unknown => (s == null ? null : JSON.parse(s));

function isUniqueViolation(err: unknown): boolean {
  return err instanceof Error && 'code' in err && String((err as { code: unknown }).code).startsWith('SQLITE_CONSTRAINT_UNIQUE');
}

export class SettingsRepo {
  constructor(private readonly db: DB) {}
  get<T>(key: string, fallback: T): T {
    const row = this.db.prepare('SELECT value FROM settings WHERE key = ?').get(key) as { value: string } | undefined;
    return row ? (JSON.parse(row.value) as T) : fallback;
  }
  set(key: string, value: unknown): void {
    this.db
      .prepare('INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value')
      .run(key, JSON.stringify(value));
  }
}

export class ExperimentsRepo {
  constructor(private readonly db: DB) {}
  create(name: string, description = ''): ExperimentRow {
    try {
      const info = this.db
        .prepare('INSERT INTO experiments(name, description, created_at) VALUES (?, ?, ?)')
        .run(name, description, now());
      return this.get(Number(info.lastInsertRowid))!;
    } catch (err) {
      if (isUniqueViolation(err)) throw new StoreError(`an experiment named '${name}' already exists`, 'Choose another name.');
      throw err;
    }
  }
  get(id: number): ExperimentRow | undefined {
    return this.db
      .prepare(
        `SELECT e.id, e.name, e.description, e.created_at AS createdAt,
                (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = e.id) AS runCount
         FROM experiments e WHERE e.id = ?`,
      )
      .get(id) as ExperimentRow | undefined;
  }
  list(): ExperimentRow[] {
    return this.db
      .prepare(
        `SELECT e.id, e.name, e.description, e.created_at AS createdAt,
                (SELECT COUNT(*) FROM runs r WHERE r.experiment_id = e.id) AS runCount
         FROM experiments e ORDER BY e.id DESC`,
      )
      .all() as ExperimentRow[];
  }
}

/** SET clause ending the open attempt at the next bound time (a parameter): its seconds added to active_s. */
const CLOSE_ATTEMPT = `active_s = CASE WHEN attempt_started_at IS NOT NULL
    THEN COALESCE(active_s, 0) + (julianday(?) - julianday(attempt_started_at)) * 86400 ELSE active_s END, attempt_started_at = NULL`;

const RUN_COLUMNS = `id, experiment_id AS experimentId, model_id AS modelId, dataset_id AS datasetId, name,
  spec_json AS spec, spec_version AS specVersion, status, output_dir AS outputDir, created_at AS createdAt,
  started_at AS startedAt, ended_at AS endedAt, error_code AS errorCode, error_message AS errorMessage,
  error_hint AS errorHint, worker_pid AS workerPid, exit_code AS exitCode, exit_signal AS exitSignal,
  tags_json AS tags, notes, active_s AS activeSeconds, attempt_started_at AS attemptStartedAt`;

function runFromRow(row: Record<string, unknown> | undefined): RunRow | undefined {
  if (!row) return undefined;
  const tags = parse(row.tags as string);
  return { ...(row as unknown as RunRow), spec: parse(row.spec as string), tags: Array.isArray(tags) ? tags.map(String) : [] };
}

/** The columns a runs list sorts by (the contract's list, RunsRepo.page): every one computed in SQL, so a capped
 *  list is the first page of the whole sorted set, never a sort of the newest 1,000 only. */
export { RUN_SORT_KEYS };
export type RunSortKey = RunSort;

/** A number from the spec JSON, or NULL where the field is missing or not a number (sorted last). */
const specNumber = (path: string) => `(CASE WHEN json_type(r.spec_json, '${path}') IN ('integer', 'real') THEN json_extract(r.spec_json, '${path}') END)`;
/** ISO timestamps (…Z) as seconds; julianday() reads the trailing Z */
const SORT_SQL: Record<RunSortKey, string> = {
  created: 'r.created_at',
  finished: 'r.ended_at',
  name: 'llmt_fold(r.name)',
  // the order the UI lists statuses in (waiting, live, then how it ended)
  status: `(CASE r.status WHEN 'queued' THEN 0 WHEN 'running' THEN 1 WHEN 'completed' THEN 2 WHEN 'failed' THEN 3 WHEN 'stopped' THEN 4 ELSE 5 END)`,
  // one seek per run in the partial index metrics_eval_loss (migration 4); NaN is stored as NULL and MIN skips it
  bestEval: `(SELECT MIN(m.value) FROM metrics m WHERE m.run_id = r.id AND m.name = 'eval_loss')`,
  // the last logged train loss (NULL when it was NaN, as the summary shows it): one seek in metrics_series
  finalLoss: `(SELECT m.value FROM metrics m WHERE m.run_id = r.id AND m.name = 'loss' ORDER BY m.step DESC LIMIT 1)`,
  lr: specNumber('$.training.learning_rate'),
  // (a full fine-tune's LoRA defaults are no rank: NULL, sorted with the runs that have none)
  loraR: `(CASE WHEN json_extract(r.spec_json, '$.method') = 'full' THEN NULL ELSE ${specNumber('$.lora.r')} END)`,
  tokens: `(SELECT m.value FROM metrics m WHERE m.run_id = r.id AND m.name = 'tokens' AND m.value IS NOT NULL ORDER BY m.step DESC LIMIT 1)`,
  // a running run's duration grows until now; one that never started has none
  // (in days, as julianday differences) the attempts' running time; a run from before active_s: started … ended
  duration: `(CASE WHEN r.started_at IS NULL THEN NULL
    WHEN r.active_s IS NOT NULL THEN (r.active_s + CASE WHEN r.status = 'running' AND r.attempt_started_at IS NOT NULL
      THEN (julianday('now') - julianday(r.attempt_started_at)) * 86400 ELSE 0 END) / 86400.0
    ELSE julianday(COALESCE(r.ended_at, CASE WHEN r.status = 'running' THEN 'now' END, r.started_at)) - julianday(r.started_at) END)`,
};

export interface RunPageQuery {
  experimentId?: number;
  status?: RunStatus;
  /** runs carrying this tag */
  tag?: string;
  /** words, each contained (case-insensitively) in the run's #id, name, status, model or data path, method or tags */
  query?: string;
  sort?: RunSortKey;
  dir?: SortDir;
  offset?: number;
  limit?: number;
}

export interface NewRun {
  name: string;
  spec: unknown;
  specVersion: number;
  experimentId?: number | null;
  modelId?: number | null;
  datasetId?: number | null;
  outputDir?: string | null;
  tags?: string[];
  /** The process that will run it (worker_pid while queued; default: this one), so a dead one's row can be repaired. */
  ownerPid?: number | null;
}

/** The settings key holding the highest run id ever given (RunsRepo.create). */
const RUN_ID_KEY = 'store.last_run_id';

export class RunsRepo {
  constructor(private readonly db: DB) {
    // JavaScript's case folding (every script, as the renderer's filters fold), for searching and sorting by name
    db.function('llmt_fold', { deterministic: true }, (v: unknown) => (v == null ? null : String(v).toLowerCase()));
  }
  /**
   * A new run row. Ids are never given twice, even after the newest run was deleted (SQLite would reuse MAX(id)+1):
   * a run's id names its log file (train-<id>.log) and its checkpoints in the output folder that a deletion may keep,
   * so the highest id ever given is kept in the settings table and the next one is above both.
   */
  create(r: NewRun): RunRow {
    const id = this.db.transaction(() => {
      const top = Math.max(
        Number(this.db.prepare('SELECT COALESCE(MAX(id), 0) FROM runs').pluck().get()),
        Number(JSON.parse(String(this.db.prepare(`SELECT value FROM settings WHERE key = '${RUN_ID_KEY}'`).pluck().get() ?? '0'))) || 0,
      );
      this.db
        .prepare(
          `INSERT INTO runs(id, experiment_id, model_id, dataset_id, name, spec_json, spec_version, status, output_dir, created_at, tags_json, worker_pid)
           VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)`,
        )
        .run(top + 1, r.experimentId ?? null, r.modelId ?? null, r.datasetId ?? null, r.name, JSON.stringify(r.spec), r.specVersion, r.outputDir ?? null, now(), JSON.stringify(r.tags ?? []), r.ownerPid === undefined ? process.pid : r.ownerPid);
      this.db.prepare(`INSERT INTO settings(key, value) VALUES ('${RUN_ID_KEY}', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`).run(String(top + 1));
      return top + 1;
    }).immediate();
    return this.get(id)!;
  }
  get(id: number): RunRow | undefined {
    return runFromRow(this.db.prepare(`SELECT ${RUN_COLUMNS} FROM runs WHERE id = ?`).get(id) as Record<string, unknown> | undefined);
  }
  /** Runs, newest first (at most `limit`, default 1,000); `page` sorts, filters and counts. */
  list(filter: { experimentId?: number; status?: RunStatus; limit?: number } = {}): RunRow[] {
    return this.page({ ...filter, limit: filter.limit ?? 1000 }).rows;
  }
  /**
   * One page of runs matching the filters, sorted by `sort` (default: created) in `dir` (default: desc) with the id
   * in the same direction as the tie-break (so desc is exactly asc reversed), NULL/NaN/missing values always last;
   * `total` counts every match. The sort key is computed for every matching run in SQL (a few index seeks each: 5,000
   * runs by best eval loss in a few tens of ms), so the page is right for the whole set, not just the rows loaded.
   */
  page(q: RunPageQuery = {}): { rows: RunRow[]; total: number } {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.experimentId !== undefined) {
      where.push('r.experiment_id = ?');
      args.push(q.experimentId);
    }
    if (q.status !== undefined) {
      where.push('r.status = ?');
      args.push(q.status);
    }
    if (q.tag) {
      where.push('EXISTS (SELECT 1 FROM json_each(r.tags_json) t WHERE t.value = ?)');
      args.push(q.tag);
    }
    const words = (q.query ?? '').trim().toLowerCase().split(/\s+/).filter(Boolean).slice(0, 16);
    if (words.length) {
      // folded as the renderer folds (String.prototype.toLowerCase), not SQLite's ASCII-only lower()
      const hay = `llmt_fold('#' || r.id || char(10) || r.name || char(10) || r.status || char(10) || COALESCE(json_extract(r.spec_json, '$.model.path'), '')
        || char(10) || COALESCE(json_extract(r.spec_json, '$.data.train'), '') || char(10) || COALESCE(json_extract(r.spec_json, '$.method'), '')
        || char(10) || r.tags_json)`;
      for (const w of words) {
        where.push(`instr(${hay}, ?) > 0`);
        args.push(w);
      }
    }
    const whereSql = where.length ? `WHERE ${where.join(' AND ')}` : '';
    const key = SORT_SQL[q.sort ?? 'created'] ?? SORT_SQL.created;
    const dir = q.dir === 'asc' ? 'ASC' : 'DESC';
    const limit = Math.max(0, Math.min(q.limit ?? 1000, 1_000_000));
    const offset = Math.max(0, q.offset ?? 0);
    const read = this.db.transaction(() => {
      const total = (this.db.prepare(`SELECT COUNT(*) AS n FROM runs r ${whereSql}`).get(...args) as { n: number }).n;
      const sql = `SELECT ${RUN_COLUMNS} FROM (SELECT r.*, ${key} AS sort_key FROM runs r ${whereSql}) r
        ORDER BY sort_key IS NULL, sort_key ${dir}, r.id ${dir} LIMIT ? OFFSET ?`;
      const rows = (this.db.prepare(sql).all(...args, limit, offset) as Record<string, unknown>[]).map((r) => runFromRow(r)!);
      return { rows, total };
    });
    return read();
  }
  /** Every tag any run carries, sorted (the runs list's tag filter offers them all, not only the loaded page's). */
  tags(): string[] {
    return this.db.prepare(`SELECT DISTINCT t.value FROM runs r, json_each(r.tags_json) t WHERE t.type = 'text' ORDER BY t.value`).pluck().all() as string[];
  }
  /** Rename, retag or annotate a run. */
  update(id: number, patch: { name?: string; tags?: string[]; notes?: string }): void {
    const tx = this.db.transaction(() => {
      if (patch.name !== undefined) this.db.prepare('UPDATE runs SET name = ? WHERE id = ?').run(patch.name, id);
      if (patch.tags !== undefined) this.db.prepare('UPDATE runs SET tags_json = ? WHERE id = ?').run(JSON.stringify([...new Set(patch.tags)]), id);
      if (patch.notes !== undefined) this.db.prepare('UPDATE runs SET notes = ? WHERE id = ?').run(patch.notes, id);
    });
    tx();
  }
  /** Deletes a run with its metrics, checkpoints rows and evaluations (ON DELETE CASCADE). */
  delete(id: number): void {
    this.db.prepare('DELETE FROM runs WHERE id = ?').run(id);
  }
  /** A stopped/failed/interrupted run goes back to the queue (resume keeps its id, metrics and checkpoints), owned by this process. */
  requeue(id: number): void {
    this.db
      .prepare(
        `UPDATE runs SET status = 'queued', ended_at = NULL, error_code = NULL, error_message = NULL, error_hint = NULL,
           exit_code = NULL, exit_signal = NULL, worker_pid = ?,
           -- a run from before active_s: its earlier attempts as one (the best there is), from here on counted
           active_s = COALESCE(active_s, CASE WHEN started_at IS NOT NULL AND ended_at IS NOT NULL
             THEN (julianday(ended_at) - julianday(started_at)) * 86400 END)
         WHERE id = ?`,
      )
      .run(process.pid, id);
  }
  markRunning(id: number, pid: number | null): void {
    const t = now();
    this.db
      .prepare(`UPDATE runs SET status = 'running', started_at = COALESCE(started_at, ?), worker_pid = ?, attempt_started_at = ?, active_s = COALESCE(active_s, 0) WHERE id = ?`)
      .run(t, pid, t, id);
  }
  finish(
    id: number,
    status: Exclude<RunStatus, 'queued' | 'running'>,
    detail: { errorCode?: string; errorMessage?: string; errorHint?: string; exitCode?: number | null; exitSignal?: string | null } = {},
  ): void {
    const t = now();
    this.db
      .prepare(
        `UPDATE runs SET status = ?, ended_at = ?, error_code = ?, error_message = ?, error_hint = ?,
           exit_code = ?, exit_signal = ?, worker_pid = NULL, ${CLOSE_ATTEMPT} WHERE id = ?`,
      )
      .run(status, t, detail.errorCode ?? null, detail.errorMessage ?? null, detail.errorHint ?? null, detail.exitCode ?? null, detail.exitSignal ?? null, t, id);
  }
  /**
   * Repairs rows no live process will finish: runs left 'running' by a crashed app or CLI, and runs left
   * 'queued' (waiting, preparing their data) by a process that died, become 'interrupted' (offered for resume).
   * Attribution is by pid: a running row's worker_pid is its engine worker's, a queued row's is the pid of the
   * process that will run it (create/requeue record it). A row whose process is still alive belongs to another
   * live process (e.g. a CLI `train` next to the app) and is left alone; `alive` decides (default: a signal-0
   * probe). `own` names the runs this process supervises (left alone); a queued row that names this process's
   * pid but is not its own was left by an earlier process with the same pid (a container restart). A queued row
   * without a pid (written before owners were recorded) cannot be attributed and is left as it is.
   * Safe to call at any time (start-up, listing runs).
   */
  markInterrupted(alive: (pid: number) => boolean = pidAlive, own: (runId: number) => boolean = () => false): number {
    const rows = this.db.prepare(`SELECT id, status, worker_pid AS pid FROM runs WHERE status IN ('running', 'queued')`).all() as { id: number; status: 'running' | 'queued'; pid: number | null }[];
    const stale = rows.filter((r) => {
      if (own(r.id)) return false;
      if (r.status === 'running') return r.pid === null || !alive(r.pid);
      return r.pid !== null && (r.pid === process.pid || !alive(r.pid));
    });
    const mark = this.db.prepare(
      `UPDATE runs SET status = 'interrupted', ended_at = ?, worker_pid = NULL,
         error_message = COALESCE(error_message, ?), ${CLOSE_ATTEMPT} WHERE id = ? AND status = ? AND worker_pid IS ?`,
    );
    const t = now();
    const why = { running: 'the app stopped while this run was running', queued: 'the process that started this run ended before training began' };
    let n = 0;
    this.db.transaction(() => stale.forEach((r) => (n += mark.run(t, why[r.status], t, r.id, r.status, r.pid).changes)))();
    return n;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One series of a run over a step range, as a chart gets it (see src-main/api/downsample.ts). */
export interface SeriesSlice {
  name: string;
  /** step order */
  points: MetricPoint[];
  /** points the series has in the range */
  total: number;
  /** true when `points` is the min/max-per-bucket selection of `total` points */
  downsampled: boolean;
}

type Row3 = [step: number, value: number | null, time: number];

export class MetricsRepo {
  private readonly insert;
  private readonly insertMany;
  private readonly q;
  constructor(private readonly db: DB) {
    this.insert = db.prepare('INSERT INTO metrics(run_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)');
    this.insertMany = db.transaction((runId: number, points: readonly MetricPoint[]) => {
      for (const p of points) {
        const v = p.value !== null && Number.isFinite(p.value) ? p.value : null;
        this.insert.run(runId, p.step, p.name, v, p.time);
      }
    });
    // every statement below reads one series through the index (run_id, name, step, value, time) (migration 3)
    const series = 'FROM metrics WHERE run_id = ? AND name = ? AND step BETWEEN ? AND ?';
    this.q = {
      stat: db.prepare(`SELECT COUNT(*) AS n, MIN(step) AS first, MAX(step) AS last ${series}`),
      rows: db.prepare(`SELECT step, value, time ${series} ORDER BY step`).raw(true),
      firstRow: db.prepare(`SELECT step, value, time ${series} ORDER BY step LIMIT 1`).raw(true),
      lastRow: db.prepare(`SELECT step, value, time ${series} ORDER BY step DESC LIMIT 1`).raw(true),
      // one min() or max() per query: SQLite then takes step and time from the row holding it (the earliest such row)
      bucketMin: db.prepare(`SELECT step, MIN(value) AS value, time, COUNT(*) - COUNT(value) AS bad ${series}`).raw(true),
      bucketMax: db.prepare(`SELECT step, MAX(value) AS value, time ${series}`).raw(true),
      bucketBad: db.prepare(`SELECT step, value, time ${series} AND value IS NULL ORDER BY step LIMIT 1`).raw(true),
      // the series names of a run: one index seek per name instead of a scan of every point
      names: db.prepare(
        `WITH RECURSIVE n(name) AS (
           SELECT (SELECT MIN(name) FROM metrics WHERE run_id = @run)
           UNION ALL
           SELECT (SELECT MIN(name) FROM metrics WHERE run_id = @run AND name > n.name) FROM n WHERE n.name IS NOT NULL
         ) SELECT name FROM n WHERE name IS NOT NULL`,
      ).pluck(),
      last: db.prepare('SELECT step, value FROM metrics WHERE run_id = ? AND name = ? AND value IS NOT NULL ORDER BY step DESC LIMIT 1'),
      lastAny: db.prepare('SELECT step, value FROM metrics WHERE run_id = ? AND name = ? ORDER BY step DESC LIMIT 1'),
      lowest: db.prepare('SELECT step, value FROM metrics WHERE run_id = ? AND name = ? AND value IS NOT NULL ORDER BY value, step LIMIT 1'),
      maxValue: db.prepare('SELECT MAX(value) FROM metrics WHERE run_id = ? AND name = ?').pluck(),
      nextStep: db.prepare('SELECT MIN(step) FROM metrics WHERE run_id = ? AND name = ? AND step >= ?').pluck(),
      // the live push: by rowid (the table's own order), never by a scan of a long run's index entries
      since: db.prepare('SELECT rowid, run_id AS runId, step, name, value, time FROM metrics WHERE rowid > ? ORDER BY rowid LIMIT ?'),
      firstName: db.prepare('SELECT MIN(name) FROM metrics WHERE run_id = ?').pluck(),
      deleteSteps: db.prepare('DELETE FROM metrics WHERE run_id = ? AND name = ? AND step BETWEEN ? AND ?'),
    };
  }
  /** Bulk insert in one transaction (all or nothing). */
  add(runId: number, points: readonly MetricPoint[]): void {
    if (points.length) this.insertMany(runId, points);
  }
  series(runId: number, name: string, opts: { sinceStep?: number } = {}): MetricPoint[] {
    return this.db
      .prepare('SELECT step, name, value, time FROM metrics WHERE run_id = ? AND name = ? AND step > ? ORDER BY step, rowid')
      .all(runId, name, opts.sinceStep ?? -1) as MetricPoint[];
  }
  /**
   * Every point of a run (optionally only the newer ones, by rowid), ordered by step. Unbounded: for small runs and
   * tests; charts read `range()`, exports `window()`.
   */
  all(runId: number, opts: { afterRowid?: number; names?: readonly string[] } = {}): (MetricPoint & { rowid: number })[] {
    const names = opts.names?.length ? ` AND name IN (${opts.names.map(() => '?').join(',')})` : '';
    // after a rowid: the table's rowid range (`+run_id` keeps SQLite from scanning the run's whole index range instead)
    const where = opts.afterRowid ? 'rowid > ? AND +run_id = ?' : 'run_id = ? AND rowid > ?';
    const args = opts.afterRowid ? [opts.afterRowid, runId] : [runId, 0];
    return this.db
      .prepare(`SELECT rowid, step, name, value, time FROM metrics WHERE ${where}${names} ORDER BY step, rowid`)
      .all(...args, ...(opts.names ?? [])) as (MetricPoint & { rowid: number })[];
  }
  /** Points of any run logged after `rowid`, oldest first, at most `limit` of them (the live push). */
  since(rowid: number, limit: number): (MetricPoint & { rowid: number; runId: number })[] {
    return this.q.since.all(rowid, limit) as (MetricPoint & { rowid: number; runId: number })[];
  }
  /**
   * One series over steps [fromStep, toStep] (default: all), whole when it has at most `maxPoints` points there,
   * else min/max per bucket (src-main/api/downsample.ts: same buckets, same kept points), read bucket by bucket
   * through the index.
   */
  range(runId: number, name: string, opts: { fromStep?: number; toStep?: number; maxPoints: number }): SeriesSlice {
    const lo = opts.fromStep ?? Number.MIN_SAFE_INTEGER;
    const hi = opts.toStep ?? Number.MAX_SAFE_INTEGER;
    const st = this.q.stat.get(runId, name, lo, hi) as { n: number; first: number | null; last: number | null };
    const point = (r: Row3): MetricPoint => ({ step: r[0], name, value: r[1], time: r[2] });
    if (st.n <= opts.maxPoints) return { name, points: (this.q.rows.all(runId, name, lo, hi) as Row3[]).map(point), total: st.n, downsampled: false };
    const kept: Row3[] = [this.q.firstRow.get(runId, name, lo, hi) as Row3, this.q.lastRow.get(runId, name, lo, hi) as Row3];
    for (const b of bucketBounds(st.first!, st.last!, opts.maxPoints)) {
      const min = this.q.bucketMin.get(runId, name, b.from, b.to) as [number | null, number | null, number, number];
      if (min[0] === null) continue; // an empty bucket
      if (min[1] !== null) kept.push([min[0], min[1], min[2]]);
      const max = this.q.bucketMax.get(runId, name, b.from, b.to) as Row3;
      if (max[1] !== null) kept.push(max);
      if (min[3] > 0) kept.push(this.q.bucketBad.get(runId, name, b.from, b.to) as Row3);
    }
    const seen = new Set<string>();
    const points = kept
      .filter((r) => {
        const k = `${r[0]}|${r[1]}|${r[2]}`;
        return seen.has(k) ? false : (seen.add(k), true);
      })
      .sort((a, b) => a[0] - b[0])
      .map(point);
    return { name, points, total: st.n, downsampled: true };
  }
  /** Rows of one series with steps in [fromStep, toStep], in step order (the export reads a run window by window). */
  window(runId: number, name: string, fromStep: number, toStep: number): Row3[] {
    return this.q.rows.all(runId, name, fromStep, toStep) as Row3[];
  }
  /** The first step ≥ `step` the series has, or null. */
  nextStep(runId: number, name: string, step: number): number | null {
    return this.q.nextStep.get(runId, name, step) as number | null;
  }
  /** The largest value of a series (e.g. the cumulative `tokens`), or null. */
  maxValue(runId: number, name: string): number | null {
    return this.q.maxValue.get(runId, name) as number | null;
  }
  /** Runs with points added after `rowid` (for live push), with the newest rowid. */
  changedSince(rowid: number): { runId: number; maxRowid: number }[] {
    return this.db.prepare('SELECT run_id AS runId, MAX(rowid) AS maxRowid FROM metrics WHERE rowid > ? GROUP BY run_id').all(rowid) as { runId: number; maxRowid: number }[];
  }
  maxRowid(): number {
    return (this.db.prepare('SELECT COALESCE(MAX(rowid), 0) AS m FROM metrics').get() as { m: number }).m;
  }
  /** Points after a step are dropped when a run resumes from that step's checkpoint (they are recomputed). */
  deleteAfter(runId: number, step: number): number {
    const del = this.db.prepare('DELETE FROM metrics WHERE run_id = ? AND name = ? AND step > ?');
    return this.db.transaction(() => this.names(runId).reduce((n, name) => n + del.run(runId, name, step).changes, 0))();
  }
  /**
   * Deletes the next chunk of a run's points: the first `steps` steps left of its first series (one index range, as
   * fast per point as one DELETE of the whole run); returns how many went, 0 once none is left. A run's points go
   * chunk by chunk so that other requests are served in between (Core.deleteRun).
   */
  deleteChunk(runId: number, steps: number): number {
    const name = this.q.firstName.get(runId) as string | null;
    if (name === null) return 0;
    const first = this.nextStep(runId, name, Number.MIN_SAFE_INTEGER)!;
    return this.q.deleteSteps.run(runId, name, first, first + steps - 1).changes;
  }
  /**
   * Per run: the last train loss and its step, the best (lowest) eval loss and its step (the earliest, on a tie), and
   * the cumulative tokens (the last logged value: it only grows). A few index seeks per run.
   */
  summaries(runIds: readonly number[]): Map<number, { finalLoss: number | null; bestEvalLoss: number | null; bestEvalStep: number | null; lastStep: number | null; tokens: number | null }> {
    const out = new Map<number, { finalLoss: number | null; bestEvalLoss: number | null; bestEvalStep: number | null; lastStep: number | null; tokens: number | null }>();
    const read = this.db.transaction(() => {
      for (const id of runIds) {
        const last = this.q.lastAny.get(id, 'loss') as { step: number; value: number | null } | undefined;
        const best = this.q.lowest.get(id, 'eval_loss') as { step: number; value: number } | undefined;
        const tok = this.q.last.get(id, 'tokens') as { step: number; value: number } | undefined;
        out.set(id, { finalLoss: last?.value ?? null, lastStep: last?.step ?? null, bestEvalLoss: best?.value ?? null, bestEvalStep: best?.step ?? null, tokens: tok?.value ?? null });
      }
    });
    read(); // one read transaction: one snapshot for every run
    return out;
  }
  /** The names of a run's series, sorted. */
  names(runId: number): string[] {
    return this.q.names.all({ run: runId }) as string[];
  }
}

export class CheckpointsRepo {
  constructor(private readonly db: DB) {}
  add(c: { runId: number; step: number; path: string; sizeBytes?: number | null; isFinal?: boolean }): CheckpointRow {
    const info = this.db
      .prepare(
        `INSERT INTO checkpoints(run_id, step, path, size_bytes, is_final, created_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(run_id, step) DO UPDATE SET path = excluded.path, size_bytes = excluded.size_bytes, is_final = excluded.is_final`,
      )
      .run(c.runId, c.step, c.path, c.sizeBytes ?? null, c.isFinal ? 1 : 0, now());
    void info;
    return this.list(c.runId).find((r) => r.step === c.step)!;
  }
  list(runId: number): CheckpointRow[] {
    const rows = this.db
      .prepare(
        `SELECT id, run_id AS runId, step, path, size_bytes AS sizeBytes, is_final AS isFinal, created_at AS createdAt
         FROM checkpoints WHERE run_id = ? ORDER BY step`,
      )
      .all(runId) as (Omit<CheckpointRow, 'isFinal'> & { isFinal: number })[];
    return rows.map((r) => ({ ...r, isFinal: r.isFinal === 1 }));
  }
  /** A checkpoint folder the engine removed (save_total_limit): every row naming it goes (an evaluation of it keeps its
   *  numbers); several runs name one folder when a run in it was resumed from the command line. */
  removePath(p: string): void {
    this.db.prepare('DELETE FROM checkpoints WHERE path = ?').run(p);
  }
  /** Checkpoint rows after a step are dropped when a run resumes from an earlier one. */
  deleteAfter(runId: number, step: number): void {
    this.db.prepare('DELETE FROM checkpoints WHERE run_id = ? AND step > ?').run(runId, step);
  }
}

export class ModelsRepo {
  constructor(private readonly db: DB) {}
  upsert(m: { path: string; name: string; family?: string | null; modelType?: string | null; hfId?: string | null; info?: unknown }): ModelRow {
    this.db
      .prepare(
        `INSERT INTO models(path, name, family, model_type, hf_id, info_json, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(path) DO UPDATE SET name = excluded.name, family = excluded.family, model_type = excluded.model_type,
           hf_id = excluded.hf_id, info_json = excluded.info_json`,
      )
      .run(m.path, m.name, m.family ?? null, m.modelType ?? null, m.hfId ?? null, json(m.info), now());
    return this.list().find((r) => r.path === m.path)!;
  }
  list(): ModelRow[] {
    const rows = this.db
      .prepare(
        `SELECT id, path, name, family, model_type AS modelType, hf_id AS hfId, info_json AS info, added_at AS addedAt
         FROM models ORDER BY name`,
      )
      .all() as (Omit<ModelRow, 'info'> & { info: string | null })[];
    return rows.map((r) => ({ ...r, info: parse(r.info) }));
  }
}

export class DatasetsRepo {
  constructor(private readonly db: DB) {}
  upsert(d: { path: string; name: string; format?: string | null; records?: number | null; info?: unknown }): DatasetRow {
    this.db
      .prepare(
        `INSERT INTO datasets(path, name, format, records, info_json, added_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(path) DO UPDATE SET name = excluded.name, format = excluded.format, records = excluded.records,
           info_json = excluded.info_json`,
      )
      .run(d.path, d.name, d.format ?? null, d.records ?? null, json(d.info), now());
    return this.list().find((r) => r.path === d.path)!;
  }
  /** Forgets a dataset (runs that used it keep their data path; their dataset link becomes null). */
  delete(id: number): boolean {
    return this.db.prepare('DELETE FROM datasets WHERE id = ?').run(id).changes > 0;
  }
  list(): DatasetRow[] {
    const rows = this.db
      .prepare(
        `SELECT id, path, name, format, records, info_json AS info, added_at AS addedAt FROM datasets ORDER BY name`,
      )
      .all() as (Omit<DatasetRow, 'info'> & { info: string | null })[];
    return rows.map((r) => ({ ...r, info: parse(r.info) }));
  }
}

export class EvalsRepo {
  constructor(private readonly db: DB) {}
  add(e: { runId?: number | null; checkpointId?: number | null; dataPath: string; metrics: unknown }): EvalRow {
    const info = this.db
      .prepare('INSERT INTO evals(run_id, checkpoint_id, data_path, metrics_json, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(e.runId ?? null, e.checkpointId ?? null, e.dataPath, JSON.stringify(e.metrics), now());
    return this.list({ id: Number(info.lastInsertRowid) })[0]!;
  }
  list(filter: { runId?: number; id?: number } = {}): EvalRow[] {
    const [col, val] = filter.id !== undefined ? ['id', filter.id] : filter.runId !== undefined ? ['run_id', filter.runId] : ['1', 1];
    const rows = this.db
      .prepare(
        `SELECT id, run_id AS runId, checkpoint_id AS checkpointId, data_path AS dataPath, metrics_json AS metrics,
           created_at AS createdAt FROM evals WHERE ${col} = ? ORDER BY id`,
      )
      .all(val) as (Omit<EvalRow, 'metrics'> & { metrics: string })[];
    return rows.map((r) => ({ ...r, metrics: parse(r.metrics) }));
  }
  /** Replaces one evaluation's metrics (e.g. to mark it best). */
  setMetrics(id: number, metrics: unknown): void {
    this.db.prepare('UPDATE evals SET metrics_json = ? WHERE id = ?').run(JSON.stringify(metrics), id);
  }
  delete(id: number): boolean {
    return this.db.prepare('DELETE FROM evals WHERE id = ?').run(id).changes > 0;
  }
}

export class ChatRepo {
  constructor(private readonly db: DB) {}
  createSession(s: { title: string; modelPath: string; adapterPath?: string | null; template?: string | null; systemPrompt?: string | null; params?: unknown }): ChatSessionRow {
    const t = now();
    const info = this.db
      .prepare(
        `INSERT INTO chat_sessions(title, model_path, adapter_path, template, system_prompt, params_json, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(s.title, s.modelPath, s.adapterPath ?? null, s.template ?? null, s.systemPrompt ?? null, JSON.stringify(s.params ?? {}), t, t);
    return this.getSession(Number(info.lastInsertRowid))!;
  }
  getSession(id: number): ChatSessionRow | undefined {
    const r = this.db
      .prepare(
        `SELECT id, title, model_path AS modelPath, adapter_path AS adapterPath, template, system_prompt AS systemPrompt,
           params_json AS params, created_at AS createdAt, updated_at AS updatedAt FROM chat_sessions WHERE id = ?`,
      )
      .get(id) as (Omit<ChatSessionRow, 'params'> & { params: string }) | undefined;
    return r ? { ...r, params: parse(r.params) } : undefined;
  }
  /** Sessions, most recently used first, with their message counts. */
  listSessions(): (ChatSessionRow & { messageCount: number })[] {
    const rows = this.db
      .prepare(
        `SELECT s.id, s.title, s.model_path AS modelPath, s.adapter_path AS adapterPath, s.template, s.system_prompt AS systemPrompt,
           s.params_json AS params, s.created_at AS createdAt, s.updated_at AS updatedAt,
           (SELECT COUNT(*) FROM chat_messages m WHERE m.session_id = s.id) AS messageCount
         FROM chat_sessions s ORDER BY s.updated_at DESC, s.id DESC`,
      )
      .all() as (Omit<ChatSessionRow, 'params'> & { params: string; messageCount: number })[];
    return rows.map((r) => ({ ...r, params: parse(r.params) }));
  }
  updateSession(
    id: number,
    patch: { title?: string; modelPath?: string; adapterPath?: string | null; template?: string | null; systemPrompt?: string | null; params?: unknown },
  ): ChatSessionRow | undefined {
    const cols: [string, unknown][] = [];
    if (patch.title !== undefined) cols.push(['title', patch.title]);
    if (patch.modelPath !== undefined) cols.push(['model_path', patch.modelPath]);
    if (patch.adapterPath !== undefined) cols.push(['adapter_path', patch.adapterPath]);
    if (patch.template !== undefined) cols.push(['template', patch.template]);
    if (patch.systemPrompt !== undefined) cols.push(['system_prompt', patch.systemPrompt]);
    if (patch.params !== undefined) cols.push(['params_json', JSON.stringify(patch.params ?? {})]);
    cols.push(['updated_at', now()]);
    this.db.prepare(`UPDATE chat_sessions SET ${cols.map(([c]) => `${c} = ?`).join(', ')} WHERE id = ?`).run(...cols.map(([, v]) => v), id);
    return this.getSession(id);
  }
  /** Deletes a session and its messages. */
  deleteSession(id: number): boolean {
    return this.db.prepare('DELETE FROM chat_sessions WHERE id = ?').run(id).changes > 0;
  }
  /** Deletes a session's messages (all, or those after message `afterId`). */
  clearMessages(sessionId: number, afterId = 0): number {
    return this.db.prepare('DELETE FROM chat_messages WHERE session_id = ? AND id > ?').run(sessionId, afterId).changes;
  }
  addMessage(sessionId: number, role: ChatMessageRow['role'], content: string, meta?: unknown): ChatMessageRow {
    const t = now();
    const tx = this.db.transaction(() => {
      const info = this.db
        .prepare('INSERT INTO chat_messages(session_id, role, content, meta_json, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(sessionId, role, content, json(meta), t);
      this.db.prepare('UPDATE chat_sessions SET updated_at = ? WHERE id = ?').run(t, sessionId);
      return Number(info.lastInsertRowid);
    });
    const id = tx();
    return this.messages(sessionId).find((m) => m.id === id)!;
  }
  messages(sessionId: number): ChatMessageRow[] {
    const rows = this.db
      .prepare(
        `SELECT id, session_id AS sessionId, role, content, meta_json AS meta, created_at AS createdAt
         FROM chat_messages WHERE session_id = ? ORDER BY id`,
      )
      .all(sessionId) as (Omit<ChatMessageRow, 'meta'> & { meta: string | null })[];
    return rows.map((r) => ({ ...r, meta: parse(r.meta) }));
  }
}

/** The whole store: one database connection, one repository per table group. */
export class Store {
  readonly settings: SettingsRepo;
  readonly experiments: ExperimentsRepo;
  readonly runs: RunsRepo;
  readonly metrics: MetricsRepo;
  readonly checkpoints: CheckpointsRepo;
  readonly models: ModelsRepo;
  readonly datasets: DatasetsRepo;
  readonly evals: EvalsRepo;
  readonly chat: ChatRepo;

  private constructor(
    readonly db: DB,
    readonly file: string,
  ) {
    this.settings = new SettingsRepo(db);
    this.experiments = new ExperimentsRepo(db);
    this.runs = new RunsRepo(db);
    this.metrics = new MetricsRepo(db);
    this.checkpoints = new CheckpointsRepo(db);
    this.models = new ModelsRepo(db);
    this.datasets = new DatasetsRepo(db);
    this.evals = new EvalsRepo(db);
    this.chat = new ChatRepo(db);
  }

  static open(file: string, opts: OpenOptions = {}): Store {
    return new Store(openDatabase(file, opts), file);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
