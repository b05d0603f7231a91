// db.ts — opening the SQLite database: WAL, foreign keys, busy timeout, and the migration runner.
// Only the main process opens the database (one writer); engine workers never do.
import fs from 'node:fs';
import path from 'node:path';

import Database from 'better-sqlite3';

import { type Migration, LATEST_SCHEMA_VERSION, migrations as defaultMigrations } from './migrations.js';

export class StoreError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

export type DB = Database.Database;

export interface OpenOptions {
  /** Path to better-sqlite3's .node built for this runtime (Electron needs its own build). */
  nativeBinding?: string;
  /** For tests: a different migration list. */
  migrations?: readonly Migration[];
  readonly?: boolean;
  /** Told before each migration of an existing database (schema > 0) runs; default: one line on stderr, since
   *  rebuilding an index over a long history takes a while (once). */
  onMigrate?: (m: Migration, from: number) => void;
}

function migrationNotice(m: Migration, from: number): void {
  process.stderr.write(`LLMs-train: upgrading the database (schema ${from} → ${m.version}: ${m.name}); with a long history this takes a while, once\n`);
}

export function schemaVersion(db: DB): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/** Apply pending migrations in order, each in its own transaction. Returns the versions applied. */
export function migrate(db: DB, list: readonly Migration[] = defaultMigrations, onMigrate?: (m: Migration, from: number) => void): number[] {
  const sorted = [...list].sort((a, b) => a.version - b.version);
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i]!.version !== i + 1) {
      throw new StoreError(`migration list is not contiguous: expected version ${i + 1}, found ${sorted[i]!.version}`);
    }
  }
  const latest = sorted.length;
  const current = schemaVersion(db);
  if (current > latest) {
    throw new StoreError(
      `the database is at schema version ${current}, newer than this LLMs-train understands (${latest})`,
      'It was written by a newer version of LLMs-train: upgrade the app, or set LLMS_TRAIN_HOME to another folder.',
    );
  }
  const applied: number[] = [];
  for (const m of sorted) {
    if (m.version <= current) continue;
    // The write lock first (BEGIN IMMEDIATE), then the version again: another LLMs-train process (the app and a CLI
    // run started together after an upgrade) may have applied this migration while this one waited for the lock.
    const run = db.transaction(() => {
      if (schemaVersion(db) >= m.version) return false;
      if (current > 0) onMigrate?.(m, m.version - 1);
      db.exec(m.sql);
      db.pragma(`user_version = ${m.version}`);
      return true;
    });
    const waitUntil = Date.now() + MIGRATION_WAIT_MS;
    let told = false;
    for (;;) {
      try {
        if (run.immediate()) applied.push(m.version);
        break;
      } catch (err) {
        // busy past busy_timeout: another process holds the write lock — a long migration (a big index over a long
        // history) or a run's metrics batch; wait for it rather than fail the app's start
        if ((err as { code?: string }).code === 'SQLITE_BUSY' && Date.now() < waitUntil) {
          if (!told) process.stderr.write('LLMs-train: another LLMs-train process is using the database (upgrading it?); waiting\n');
          told = true;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
          continue;
        }
        if ((err as { code?: string }).code === 'SQLITE_BUSY')
          throw new StoreError(
            `database migration ${m.version} (${m.name}) could not start: another process kept the database locked for ${Math.round(MIGRATION_WAIT_MS / 60_000)} minutes`,
            'Close other LLMs-train windows and runs using this data folder, then start again. The database is unchanged.',
          );
        throw new StoreError(
          `database migration ${m.version} (${m.name}) failed and was rolled back: ${(err as Error).message}`,
          'The database is unchanged. Please report this with the message above.',
        );
      }
    }
  }
  return applied;
}

/** How long a migration waits for another process's write lock (beyond busy_timeout) before giving up. */
const MIGRATION_WAIT_MS = 10 * 60_000;

export function openDatabase(file: string, opts: OpenOptions = {}): DB {
  if (file !== ':memory:') fs.mkdirSync(path.dirname(file), { recursive: true });
  let db: DB;
  try {
    const dbOpts: Database.Options = {};
    if (opts.nativeBinding) dbOpts.nativeBinding = opts.nativeBinding;
    if (opts.readonly) dbOpts.readonly = true;
    db = new Database(file, dbOpts);
  } catch (err) {
    throw new StoreError(
      `cannot open the database ${file}: ${(err as Error).message}`,
      'Check that the folder is writable and the file is an LLMs-train database (or set LLMS_TRAIN_HOME).',
    );
  }
  try {
    // the busy handler first: two processes opening a new database at once (two `llms-train train` started together)
    // both switch it to WAL, which needs a moment of exclusive access — without it the second got "database is locked"
    db.pragma('busy_timeout = 5000');
    // Fails on a file that is not SQLite at all ("file is not a database").
    if (!opts.readonly) {
      const until = Date.now() + 30_000;
      for (;;) {
        try {
          db.pragma('journal_mode = WAL');
          break;
        } catch (err) {
          if ((err as { code?: string }).code !== 'SQLITE_BUSY' || Date.now() > until) throw err;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
        }
      }
    }
    db.pragma('foreign_keys = ON');
    db.pragma('synchronous = NORMAL');
    if (!opts.readonly) migrate(db, opts.migrations ?? defaultMigrations, opts.onMigrate ?? migrationNotice);
  } catch (err) {
    db.close();
    if (err instanceof StoreError) throw err;
    throw new StoreError(
      `cannot use the database ${file}: ${(err as Error).message}`,
      'The file may be damaged or not an LLMs-train database; move it aside to start fresh.',
    );
  }
  return db;
}

export { LATEST_SCHEMA_VERSION };
