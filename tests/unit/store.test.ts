// The SQLite store: pragmas, forward-only migrations in transactions, repositories, bulk metrics.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { StoreError, migrate, openDatabase, schemaVersion } from '../../src-main/core/store/db';
import { LATEST_SCHEMA_VERSION, migrations } from '../../src-main/core/store/migrations';
import { Store } from '../../src-main/core/store/store';

const dirs: string[] = [];
function dbFile(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-store-'));
  dirs.push(d);
  return path.join(d, 'nested', 'llms-train.db');
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('openDatabase', () => {
  it('creates the file with WAL, foreign keys and the latest schema', () => {
    const file = dbFile();
    const db = openDatabase(file);
    expect(fs.existsSync(file)).toBe(true);
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    expect(schemaVersion(db)).toBe(LATEST_SCHEMA_VERSION);
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
    expect(tables).toEqual(expect.arrayContaining(['models', 'datasets', 'experiments', 'runs', 'metrics', 'checkpoints', 'evals', 'chat_sessions', 'chat_messages', 'settings']));
    db.close();
  });

  it('is idempotent: reopening applies nothing', () => {
    const file = dbFile();
    openDatabase(file).close();
    const db = openDatabase(file);
    expect(migrate(db)).toEqual([]);
    db.close();
  });

  it('refuses a database written by a newer version, with a hint', () => {
    const file = dbFile();
    const db = openDatabase(file);
    db.pragma(`user_version = ${LATEST_SCHEMA_VERSION + 5}`);
    db.close();
    try {
      openDatabase(file);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(StoreError);
      expect((err as StoreError).message).toMatch(/newer than this LLMs-train understands/);
      expect((err as StoreError).hint).toMatch(/LLMS_TRAIN_HOME/);
    }
  });

  it('rolls back a failing migration completely', () => {
    const file = dbFile();
    const bad = [...migrations, { version: migrations.length + 1, name: 'broken', sql: 'CREATE TABLE half_done(x INTEGER); SELECT * FROM no_such_table;' }];
    expect(() => openDatabase(file, { migrations: bad })).toThrow(new RegExp(`migration ${migrations.length + 1} \\(broken\\) failed and was rolled back`));
    const db = openDatabase(file);
    expect(schemaVersion(db)).toBe(LATEST_SCHEMA_VERSION);
    expect(db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'half_done'").get()).toEqual({ n: 0 });
    db.close();
  });

  it('applies migrations in version order from an older schema', () => {
    const file = dbFile();
    // a database of schema 1 (as the first release wrote it) is brought up to date, in order
    const db1 = openDatabase(file, { migrations: migrations.slice(0, 1) });
    db1.prepare("INSERT INTO runs(name, spec_json, spec_version, status, created_at) VALUES ('old', '{}', 1, 'completed', 'x')").run();
    db1.close();
    const next = [...migrations, { version: migrations.length + 1, name: 'add a column', sql: 'ALTER TABLE runs ADD COLUMN extra TEXT' }];
    const db = openDatabase(file, { migrations: next });
    expect(schemaVersion(db)).toBe(migrations.length + 1);
    const cols = (db.prepare('PRAGMA table_info(runs)').all() as { name: string }[]).map((c) => c.name);
    expect(cols).toEqual(expect.arrayContaining(['tags_json', 'notes', 'extra']));
    expect(db.prepare("SELECT tags_json AS t FROM runs WHERE name = 'old'").get()).toEqual({ t: '[]' });
    db.close();
  });

  it('waits for another process that holds the write lock past busy_timeout, and applies nothing it already applied', async () => {
    // the app and a CLI run opened together after an upgrade: the other process migrates (a long index build) while
    // this one waits; before, this one failed with SQLITE_BUSY after 5 s, or re-ran the migration ("already exists")
    const file = dbFile();
    openDatabase(file).close();
    const extra = { version: migrations.length + 1, name: 'a long upgrade', sql: 'CREATE TABLE upgraded(x INTEGER)' };
    const marker = path.join(path.dirname(file), 'locked');
    const script = `
      const Database = require('better-sqlite3');
      const db = new Database(${JSON.stringify(file)});
      db.exec('BEGIN IMMEDIATE');
      require('fs').writeFileSync(${JSON.stringify(marker)}, '1');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 6500);
      db.exec(${JSON.stringify(extra.sql)});
      db.pragma('user_version = ${extra.version}');
      db.exec('COMMIT');
      db.close();`;
    const child = spawn(process.execPath, ['-e', script], { cwd: path.join(__dirname, '..', '..'), stdio: ['ignore', 'ignore', 'pipe'] });
    let childErr = '';
    child.stderr.on('data', (d: Buffer) => (childErr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    const t0 = Date.now();
    while (!fs.existsSync(marker) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 20));
    expect(fs.existsSync(marker)).toBe(true);
    const seen: number[] = [];
    const db = openDatabase(file, { migrations: [...migrations, extra], onMigrate: (m) => seen.push(m.version) });
    expect(Date.now() - t0).toBeGreaterThan(5000); // it did wait past busy_timeout
    expect(seen).toEqual([]); // the other process applied it
    expect(schemaVersion(db)).toBe(extra.version);
    expect(db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'upgraded'").get()).toEqual({ n: 1 });
    db.close();
    expect(await exited, childErr).toBe(0);
  }, 30_000);

  it('refuses a gap in the migration list', () => {
    const db = openDatabase(':memory:');
    expect(() => migrate(db, [...migrations, { version: migrations.length + 2, name: 'gap', sql: '' }])).toThrow(/not contiguous/);
    db.close();
  });

  it('explains a file that is not a database', () => {
    const file = dbFile();
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, 'this is not sqlite'.repeat(200));
    expect(() => openDatabase(file)).toThrow(/cannot use the database .*not a database/);
  });
});

describe('Store repositories', () => {
  it('creates experiments with unique names and counts their runs', () => {
    const s = Store.open(dbFile());
    const e = s.experiments.create('baseline', 'r=8');
    expect(() => s.experiments.create('baseline')).toThrow(/already exists/);
    s.runs.create({ name: 'r1', spec: { a: 1 }, specVersion: 1, experimentId: e.id });
    expect(s.experiments.list()).toEqual([{ ...e, runCount: 1 }]);
    s.close();
  });

  it('tracks a run through its states and filters the list', () => {
    const s = Store.open(dbFile());
    const r = s.runs.create({ name: 'run', spec: { lr: 2e-4 }, specVersion: 1, outputDir: '/out' });
    expect(r.status).toBe('queued');
    expect(r.spec).toEqual({ lr: 2e-4 });
    s.runs.markRunning(r.id, 1234);
    expect(s.runs.get(r.id)).toMatchObject({ status: 'running', workerPid: 1234 });
    s.runs.finish(r.id, 'failed', { errorCode: 'OOM', errorMessage: 'out of memory', errorHint: 'lower the micro-batch', exitCode: 1 });
    expect(s.runs.get(r.id)).toMatchObject({ status: 'failed', errorCode: 'OOM', errorHint: 'lower the micro-batch', workerPid: null, exitCode: 1 });
    const r2 = s.runs.create({ name: 'run2', spec: {}, specVersion: 1 });
    expect(s.runs.list().map((x) => x.id)).toEqual([r2.id, r.id]);
    expect(s.runs.list({ status: 'failed' }).map((x) => x.id)).toEqual([r.id]);
    expect(s.runs.list({ limit: 1 }).length).toBe(1);
    s.close();
  });

  it('never gives a run id twice, even after the newest run is deleted (its log file and folder may stay)', () => {
    const file = dbFile();
    const s = Store.open(file);
    const ids = [1, 2, 3].map((i) => s.runs.create({ name: `r${i}`, spec: {}, specVersion: 1 }).id);
    s.runs.delete(ids[2]!);
    s.runs.delete(ids[1]!);
    const next = s.runs.create({ name: 'after', spec: {}, specVersion: 1 }).id;
    expect(next).toBe(ids[2]! + 1);
    s.close();
    // across processes (the high-water mark is in the database)
    const again = Store.open(file);
    again.runs.delete(next);
    expect(again.runs.create({ name: 'later', spec: {}, specVersion: 1 }).id).toBe(next + 1);
    again.close();
  });

  it("times a run's attempts: a pause between a stop and a resume is not training time", () => {
    const s = Store.open(dbFile());
    const r = s.runs.create({ name: 'timed', spec: {}, specVersion: 1 });
    expect(s.runs.get(r.id)).toMatchObject({ activeSeconds: null, attemptStartedAt: null });
    const ago = (sec: number) => new Date(Date.now() - sec * 1000).toISOString();
    s.runs.markRunning(r.id, 1);
    expect(s.runs.get(r.id)!.attemptStartedAt).not.toBeNull();
    s.db.prepare('UPDATE runs SET attempt_started_at = ?, started_at = ? WHERE id = ?').run(ago(10), ago(3600), r.id); // trained 10 s
    s.runs.finish(r.id, 'stopped');
    const first = s.runs.get(r.id)!;
    expect(first.activeSeconds).toBeGreaterThan(9.5);
    expect(first.activeSeconds).toBeLessThan(11);
    expect(first.attemptStartedAt).toBeNull();
    // an hour later: resumed, 5 s more, then the app dies (interrupted) — 15 s in all, not the hour
    s.runs.requeue(r.id);
    s.runs.markRunning(r.id, 2);
    s.db.prepare('UPDATE runs SET attempt_started_at = ? WHERE id = ?').run(ago(5), r.id);
    s.runs.markInterrupted(() => false);
    const second = s.runs.get(r.id)!;
    expect(second.status).toBe('interrupted');
    expect(second.activeSeconds).toBeGreaterThan(14.5);
    expect(second.activeSeconds).toBeLessThan(16.5);
    // a run from before attempts were timed: its earlier span counts once, then its attempts add up
    const old = s.runs.create({ name: 'old', spec: {}, specVersion: 1 });
    s.db.prepare("UPDATE runs SET status = 'stopped', started_at = '2024-01-01T00:00:00.000Z', ended_at = '2024-01-01T00:01:40.000Z' WHERE id = ?").run(old.id);
    s.runs.requeue(old.id);
    expect(s.runs.get(old.id)!.activeSeconds).toBeCloseTo(100, 3);
    s.close();
  });

  it('marks runs left running as interrupted at start-up', () => {
    const file = dbFile();
    const s = Store.open(file);
    const r = s.runs.create({ name: 'crashed', spec: {}, specVersion: 1 });
    s.runs.markRunning(r.id, 99);
    const live = s.runs.create({ name: 'another process runs this one', spec: {}, specVersion: 1 });
    s.runs.markRunning(live.id, 100);
    s.close();
    const s2 = Store.open(file);
    expect(s2.runs.markInterrupted((pid) => pid === 100)).toBe(1);
    expect(s2.runs.get(live.id)).toMatchObject({ status: 'running', workerPid: 100 });
    expect(s2.runs.get(r.id)).toMatchObject({ status: 'interrupted', workerPid: null });
    expect(s2.runs.get(r.id)!.errorMessage).toMatch(/app stopped/);
    s2.close();
  });

  it('repairs a run left queued by a dead process, never one of a live process or of its own', () => {
    const file = dbFile();
    const s = Store.open(file);
    const dead = s.runs.create({ name: 'queued by a killed CLI', spec: {}, specVersion: 1, ownerPid: 4242 });
    const live = s.runs.create({ name: 'queued by a live CLI', spec: {}, specVersion: 1, ownerPid: 4343 });
    const legacy = s.runs.create({ name: 'queued before owners were recorded', spec: {}, specVersion: 1, ownerPid: null });
    const mine = s.runs.create({ name: 'queued by this process', spec: {}, specVersion: 1 });
    const reused = s.runs.create({ name: 'an earlier process with this pid', spec: {}, specVersion: 1 });
    expect(s.runs.get(mine.id)!.workerPid).toBe(process.pid); // the owner, while queued
    const alive = (pid: number) => pid === 4343 || pid === process.pid;
    expect(s.runs.markInterrupted(alive, (id) => id === mine.id)).toBe(2);
    expect(s.runs.get(dead.id)).toMatchObject({ status: 'interrupted', workerPid: null, errorMessage: expect.stringMatching(/ended before training began/) });
    expect(s.runs.get(reused.id)).toMatchObject({ status: 'interrupted' });
    for (const r of [live, legacy, mine]) expect(s.runs.get(r.id)!.status).toBe('queued');
    // requeue (a resume) makes this process the owner again
    s.runs.requeue(dead.id);
    expect(s.runs.get(dead.id)).toMatchObject({ status: 'queued', workerPid: process.pid });
    // running rows as before: a live worker is left alone, a dead one's row repaired
    s.runs.markRunning(live.id, 5555);
    s.runs.markRunning(legacy.id, 5656);
    expect(s.runs.markInterrupted((pid) => pid === 5656, (id) => id === dead.id || id === mine.id)).toBe(1);
    expect(s.runs.get(legacy.id)).toMatchObject({ status: 'running', workerPid: 5656 });
    expect(s.runs.get(live.id)).toMatchObject({ status: 'interrupted', errorMessage: expect.stringMatching(/app stopped/) });
    s.close();
  });

  it('enforces the run status set and foreign keys', () => {
    const s = Store.open(dbFile());
    expect(() => s.db.prepare("INSERT INTO runs(name, spec_json, spec_version, status, created_at) VALUES ('x','{}',1,'bogus','t')").run()).toThrow(/CHECK/);
    expect(() => s.metrics.add(424242, [{ step: 1, name: 'loss', value: 1, time: 0 }])).toThrow(/FOREIGN KEY/);
    s.close();
  });

  it('bulk-inserts metrics in one transaction, non-finite values as null', () => {
    const s = Store.open(dbFile());
    const r = s.runs.create({ name: 'm', spec: {}, specVersion: 1 });
    const pts = Array.from({ length: 2000 }, (_, i) => ({ step: i + 1, name: 'loss', value: 3 - i / 1000, time: 1700000000 + i }));
    s.metrics.add(r.id, pts);
    s.metrics.add(r.id, [{ step: 2001, name: 'loss', value: Number.NaN, time: 1 }, { step: 1, name: 'lr', value: 2e-4, time: 1 }]);
    const loss = s.metrics.series(r.id, 'loss');
    expect(loss.length).toBe(2001);
    expect(loss[0]).toEqual({ step: 1, name: 'loss', value: 3, time: 1700000000 });
    expect(loss[2000]!.value).toBeNull();
    expect(s.metrics.series(r.id, 'loss', { sinceStep: 1999 }).map((p) => p.step)).toEqual([2000, 2001]);
    expect(s.metrics.names(r.id)).toEqual(['loss', 'lr']);
    // all-or-nothing: a bad point in the batch leaves nothing behind
    expect(() => s.metrics.add(r.id, [{ step: 5000, name: 'loss', value: 1, time: 1 }, { step: 5001, name: null as unknown as string, value: 1, time: 1 }])).toThrow();
    expect(s.metrics.series(r.id, 'loss', { sinceStep: 4000 })).toEqual([]);
    // deleting the run deletes its metrics
    s.db.prepare('DELETE FROM runs WHERE id = ?').run(r.id);
    expect(s.metrics.series(r.id, 'loss')).toEqual([]);
    s.close();
  });

  it('stores checkpoints, evals, models, datasets, chat and settings', () => {
    const s = Store.open(dbFile());
    const r = s.runs.create({ name: 'c', spec: {}, specVersion: 1 });
    s.checkpoints.add({ runId: r.id, step: 300, path: '/o/checkpoint-300', sizeBytes: 10 });
    const c = s.checkpoints.add({ runId: r.id, step: 600, path: '/o/checkpoint-600', isFinal: true });
    expect(s.checkpoints.list(r.id).map((x) => [x.step, x.isFinal])).toEqual([[300, false], [600, true]]);
    const ev = s.evals.add({ runId: r.id, checkpointId: c.id, dataPath: '/d/test.json', metrics: { bleu4: 12.5 } });
    expect(s.evals.list({ runId: r.id })).toEqual([ev]);
    expect(ev.metrics).toEqual({ bleu4: 12.5 });
    const m = s.models.upsert({ path: '/m/llama', name: 'llama', family: 'llama', info: { params: 7e9 } });
    expect(s.models.upsert({ path: '/m/llama', name: 'llama-7b' }).id).toBe(m.id);
    expect(s.models.list()).toHaveLength(1);
    s.datasets.upsert({ path: '/d/train.json', name: 'train', format: 'promptcblue', records: 6000 });
    expect(s.datasets.list()[0]).toMatchObject({ format: 'promptcblue', records: 6000 });
    const cs = s.chat.createSession({ title: 'hi', modelPath: '/m/llama' });
    s.chat.addMessage(cs.id, 'user', '你好');
    s.chat.addMessage(cs.id, 'assistant', '你好！', { tokens: 3 });
    expect(s.chat.messages(cs.id).map((x) => [x.role, x.content, x.meta])).toEqual([['user', '你好', null], ['assistant', '你好！', { tokens: 3 }]]);
    expect(() => s.chat.addMessage(cs.id, 'robot' as 'user', 'x')).toThrow(/CHECK/);
    expect(s.settings.get('x', 5)).toBe(5);
    s.settings.set('x', { a: [1] });
    expect(s.settings.get('x', null)).toEqual({ a: [1] });
    s.close();
  });
});
