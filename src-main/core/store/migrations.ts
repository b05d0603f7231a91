// migrations.ts — the database schema as versioned, forward-only migrations. Never edit a migration that
// has shipped: add the next one. Each runs in its own transaction together with the `user_version` bump,
// so a failing migration leaves the database exactly as it was.
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
      CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL               -- JSON
      );

      CREATE TABLE models (
        id         INTEGER PRIMARY KEY,
        path       TEXT NOT NULL UNIQUE,  -- local HF model folder
        name       TEXT NOT NULL,
        family     TEXT,                  -- catalog family (llama, chatglm2, ...)
        model_type TEXT,                  -- config.json model_type
        hf_id      TEXT,
        info_json  TEXT,                  -- inspection result (params, dtype, vocab, context, ...)
        added_at   TEXT NOT NULL
      );

      CREATE TABLE datasets (
        id        INTEGER PRIMARY KEY,
        path      TEXT NOT NULL UNIQUE,
        name      TEXT NOT NULL,
        format    TEXT,                   -- promptcblue, alpaca, sharegpt, columns, text
        records   INTEGER,
        info_json TEXT,
        added_at  TEXT NOT NULL
      );

      CREATE TABLE experiments (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        created_at  TEXT NOT NULL
      );

      CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        experiment_id INTEGER REFERENCES experiments(id) ON DELETE SET NULL,
        model_id      INTEGER REFERENCES models(id) ON DELETE SET NULL,
        dataset_id    INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
        name          TEXT NOT NULL,
        spec_json     TEXT NOT NULL,      -- the RunSpec, as validated
        spec_version  INTEGER NOT NULL,
        status        TEXT NOT NULL CHECK (status IN
                        ('queued','running','completed','failed','stopped','interrupted')),
        output_dir    TEXT,
        created_at    TEXT NOT NULL,
        started_at    TEXT,
        ended_at      TEXT,
        error_code    TEXT,
        error_message TEXT,
        error_hint    TEXT,
        worker_pid    INTEGER,
        exit_code     INTEGER,
        exit_signal   TEXT
      );
      CREATE INDEX runs_by_status ON runs(status);
      CREATE INDEX runs_by_experiment ON runs(experiment_id);

      -- One row per (run, step, metric). value NULL means non-finite (NaN/Inf), which SQLite cannot store.
      CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step   INTEGER NOT NULL,
        name   TEXT NOT NULL,             -- loss, eval_loss, lr, grad_norm, tokens_per_s, mem_bytes, ...
        value  REAL,
        time   REAL NOT NULL              -- unix seconds
      );
      CREATE INDEX metrics_by_run_name_step ON metrics(run_id, name, step);

      CREATE TABLE checkpoints (
        id         INTEGER PRIMARY KEY,
        run_id     INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step       INTEGER NOT NULL,
        path       TEXT NOT NULL,
        size_bytes INTEGER,
        is_final   INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        UNIQUE (run_id, step)
      );

      CREATE TABLE evals (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER REFERENCES runs(id) ON DELETE CASCADE,
        checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,
        data_path     TEXT NOT NULL,
        metrics_json  TEXT NOT NULL,
        created_at    TEXT NOT NULL
      );
      CREATE INDEX evals_by_run ON evals(run_id);

      CREATE TABLE chat_sessions (
        id            INTEGER PRIMARY KEY,
        title         TEXT NOT NULL,
        model_path    TEXT NOT NULL,
        adapter_path  TEXT,
        template      TEXT,
        system_prompt TEXT,
        params_json   TEXT NOT NULL DEFAULT '{}',
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
      );

      CREATE TABLE chat_messages (
        id         INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
        role       TEXT NOT NULL CHECK (role IN ('system','user','assistant')),
        content    TEXT NOT NULL,
        meta_json  TEXT,
        created_at TEXT NOT NULL
      );
      CREATE INDEX chat_messages_by_session ON chat_messages(session_id, id);
    `,
  },
  {
    version: 2,
    name: 'run tags, checkpoint evaluation marks',
    sql: `
      ALTER TABLE runs ADD COLUMN tags_json TEXT NOT NULL DEFAULT '[]';
      ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
      CREATE INDEX metrics_by_run_step ON metrics(run_id, step);
    `,
  },
  {
    version: 3,
    name: 'metrics: one covering index per series',
    // A chart reads one series (run, name) over a step range: with value and time in the index that is one
    // sequential index scan instead of a table lookup per point (a 200,000-step series: ~0.1 s instead of ~2 s), and
    // the last/lowest/largest point of a series is one index seek. It replaces both earlier metric indices (every
    // query they served has run_id first), so a logged point still updates one index. Rebuilding it over an existing
    // history takes a while once (16M points: see docs/BENCHMARKS.md, "Store and API at scale").
    sql: `
      CREATE INDEX metrics_series ON metrics(run_id, name, step, value, time);
      DROP INDEX metrics_by_run_name_step;
      DROP INDEX metrics_by_run_step;
    `,
  },
  {
    version: 4,
    name: 'runs sortable by best eval loss',
    // The runs list sorts in SQL (RunsRepo.page), every matching run's key computed: the best eval loss of a run is
    // then one seek in this partial index instead of a scan of its eval points. Partial: only eval_loss rows (a few
    // per thousand points) are in it, so logging a train step updates no extra index. The last loss and the tokens
    // are seeks in metrics_series already; created/finished/status/lr/r/duration read the runs row.
    sql: `
      CREATE INDEX metrics_eval_loss ON metrics(run_id, value, step) WHERE name = 'eval_loss';
    `,
  },
  {
    version: 5,
    name: 'runs: time spent training over all attempts',
    // A stopped (or killed) run resumed later keeps its id: started_at … ended_at then counts the pause too. active_s
    // sums each attempt's running time (markRunning → finish/markInterrupted); attempt_started_at is the open attempt's
    // start. NULL active_s: a run from before (its duration stays started_at … ended_at until it is resumed).
    sql: `
      ALTER TABLE runs ADD COLUMN active_s REAL;
      ALTER TABLE runs ADD COLUMN attempt_started_at TEXT;
    `,
  },
];

export const LATEST_SCHEMA_VERSION = migrations.reduce((v, m) => Math.max(v, m.version), 0);
