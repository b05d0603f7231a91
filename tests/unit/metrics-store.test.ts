// Metrics at scale in the store: the series index of migration 3 (and that a database of the previous schema opens
// with its history), budgeted reads that keep spikes and NaNs (the same points in SQL and in the shared JS
// downsampler), summaries by index seeks, the live push by rowid, chunked deletion, and the streamed export.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { bucketBounds, downsampleMinMax, METRIC_POINT_BUDGET } from '../../src-main/api/downsample';
import { exportColumns, exportMetrics } from '../../src-main/core/runs/metrics-export';
import { openDatabase, schemaVersion } from '../../src-main/core/store/db';
import { LATEST_SCHEMA_VERSION, migrations } from '../../src-main/core/store/migrations';
import { type MetricPoint, Store } from '../../src-main/core/store/store';

const dirs: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-metrics-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** A noisy decaying loss with a spike at step 777 and NaNs at 1234 and 5001..5003. */
function lossAt(step: number): number | null {
  if (step === 1234 || (step >= 5001 && step <= 5003)) return null;
  if (step === 777) return 50;
  return 2 + Math.exp(-step / 3000) + 0.01 * Math.sin(step);
}
function fillRun(s: Store, steps: number, name = 'r'): number {
  const r = s.runs.create({ name, spec: {}, specVersion: 1 });
  const pts: MetricPoint[] = [];
  for (let step = 1; step <= steps; step++) {
    pts.push({ step, name: 'loss', value: lossAt(step), time: 1000 + step }, { step, name: 'lr', value: 1e-4, time: 1000 + step }, { step, name: 'tokens', value: step * 64, time: 1000 + step });
    if (step % 500 === 0) pts.push({ step, name: 'eval_loss', value: 3 - step / 10_000, time: 1000 + step });
  }
  s.metrics.add(r.id, pts);
  return r.id;
}
const plan = (s: Store, sql: string, ...args: unknown[]) => (s.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[]).map((r) => r.detail).join('; ');

describe('schema 3: the series index', () => {
  it('opens a database of the previous schema with its history, and reads series through the covering index', () => {
    const file = path.join(tmp(), 'llms-train.db');
    // the database as the previous release (schema 2) left it, with a run and its points
    const old = openDatabase(file, { migrations: migrations.slice(0, 2) });
    expect(schemaVersion(old)).toBe(2);
    old.prepare("INSERT INTO runs(id, name, spec_json, spec_version, status, created_at, tags_json) VALUES (7, 'old run', '{}', 1, 'completed', 'x', '[\"a\"]')").run();
    const ins = old.prepare('INSERT INTO metrics(run_id, step, name, value, time) VALUES (7, ?, ?, ?, ?)');
    old.transaction(() => {
      for (let step = 1; step <= 5000; step++) {
        ins.run(step, 'loss', lossAt(step), step);
        ins.run(step, 'tokens', step * 10, step);
      }
    })();
    old.close();

    const told: [number, number][] = [];
    const s = Store.open(file, { onMigrate: (m, from) => told.push([m.version, from]) });
    try {
      expect(schemaVersion(s.db)).toBe(LATEST_SCHEMA_VERSION);
      expect(told).toEqual([[3, 2], [4, 3], [5, 4]]); // each upgrade step is announced (default: a line on stderr)
      const idx = (s.db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'metrics'").all() as { name: string }[]).map((r) => r.name);
      expect(idx.sort()).toEqual(['metrics_eval_loss', 'metrics_series']);
      expect(s.runs.get(7)).toMatchObject({ name: 'old run', tags: ['a'] });
      expect(s.metrics.series(7, 'loss')).toHaveLength(5000);
      expect(s.metrics.summaries([7]).get(7)).toEqual({ finalLoss: lossAt(5000), lastStep: 5000, bestEvalLoss: null, bestEvalStep: null, tokens: 50_000 });
      // one index range, no table lookups, no sort
      const q = plan(s, 'SELECT step, value, time FROM metrics WHERE run_id = ? AND name = ? AND step BETWEEN ? AND ? ORDER BY step', 7, 'loss', 0, 10);
      expect(q).toMatch(/COVERING INDEX metrics_series/);
      expect(q).not.toMatch(/TEMP B-TREE/);
      // the live push reads by rowid
      expect(plan(s, 'SELECT rowid, run_id, step, name, value, time FROM metrics WHERE rowid > ? ORDER BY rowid LIMIT ?', 1, 10)).toMatch(/INTEGER PRIMARY KEY \(rowid>\?\)/);
      expect(plan(s, 'SELECT rowid FROM metrics WHERE rowid > ? AND +run_id = ?', 1, 7)).toMatch(/INTEGER PRIMARY KEY/);
    } finally {
      s.close();
    }
  });

  it('keeps WAL and foreign keys on', () => {
    const s = Store.open(path.join(tmp(), 'db.sqlite'));
    expect(s.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(s.db.pragma('foreign_keys', { simple: true })).toBe(1);
    s.close();
  });
});

describe('downsampling (src-main/api/downsample.ts)', () => {
  const pts = Array.from({ length: 200_000 }, (_, i) => ({ step: i + 1, value: lossAt(i + 1) }));
  const ds = (p: readonly { step: number; value: number | null }[], n: number) =>
    downsampleMinMax(
      p,
      n,
      (x) => x.step,
      (x) => x.value,
    );

  it('returns a series within the budget whole', () => {
    const few = pts.slice(0, 3000);
    expect(ds(few, 3000)).toBe(few);
  });

  it('keeps at most the budget, the first and last points, every spike and NaN, in step order', () => {
    const out = ds(pts, METRIC_POINT_BUDGET);
    expect(out.length).toBeLessThanOrEqual(METRIC_POINT_BUDGET);
    expect(out.length).toBeGreaterThan(METRIC_POINT_BUDGET / 2);
    expect(out[0]).toBe(pts[0]);
    expect(out.at(-1)).toBe(pts.at(-1));
    expect(out.find((p) => p.step === 777)?.value).toBe(50);
    const nulls = out.filter((p) => p.value === null).map((p) => p.step);
    expect(nulls).toContain(1234);
    expect(nulls).toContain(5001);
    const lowest = (l: readonly { value: number | null }[]) => l.reduce((m, p) => (p.value !== null && p.value < m ? p.value : m), Infinity);
    expect(lowest(out)).toBe(lowest(pts));
    for (let i = 1; i < out.length; i++) expect(out[i]!.step).toBeGreaterThan(out[i - 1]!.step);
    // a tiny budget still keeps the extremes
    const tiny = ds(pts, 11);
    expect(tiny.length).toBeLessThanOrEqual(11);
    expect(tiny.some((p) => p.value === 50)).toBe(true);
    expect(tiny.some((p) => p.value === null)).toBe(true);
  });

  it('cuts a range into equal step buckets that cover it exactly', () => {
    const b = bucketBounds(1, 200_000, 3000);
    expect(b).toHaveLength(999);
    expect(b[0]!.from).toBe(1);
    expect(b.at(-1)!.to).toBe(200_000);
    for (let i = 1; i < b.length; i++) expect(b[i]!.from).toBe(b[i - 1]!.to + 1);
    expect(bucketBounds(10, 12, 3000)).toEqual([
      { from: 10, to: 10 },
      { from: 11, to: 11 },
      { from: 12, to: 12 },
    ]);
  });
});

describe('MetricsRepo at scale', () => {
  it('reads a series within a budget: the same points as the shared downsampler, and full resolution when zoomed in', () => {
    const s = Store.open(path.join(tmp(), 'db.sqlite'));
    try {
      const id = fillRun(s, 20_000);
      const all = s.metrics.series(id, 'loss');
      const slice = s.metrics.range(id, 'loss', { maxPoints: 600 });
      expect(slice.total).toBe(20_000);
      expect(slice.downsampled).toBe(true);
      expect(slice.points.length).toBeLessThanOrEqual(600);
      expect(slice.points).toEqual(downsampleMinMax(all, 600, (p) => p.step, (p) => p.value));
      expect(slice.points.some((p) => p.step === 777 && p.value === 50)).toBe(true);
      expect(slice.points.filter((p) => p.value === null).map((p) => p.step)).toEqual(expect.arrayContaining([1234, 5001]));
      // a zoomed range that fits the budget comes back whole
      const zoom = s.metrics.range(id, 'loss', { fromStep: 1000, toStep: 1499, maxPoints: 600 });
      expect(zoom).toMatchObject({ total: 500, downsampled: false });
      expect(zoom.points.map((p) => p.step)).toEqual(Array.from({ length: 500 }, (_, i) => 1000 + i));
      expect(zoom.points.find((p) => p.step === 1234)!.value).toBeNull();
      // a sparse series within the budget is whole; an unknown one is empty
      expect(s.metrics.range(id, 'eval_loss', { maxPoints: 600 })).toMatchObject({ total: 40, downsampled: false });
      expect(s.metrics.range(id, 'nope', { maxPoints: 600 })).toEqual({ name: 'nope', points: [], total: 0, downsampled: false });
    } finally {
      s.close();
    }
  });

  it('summarises many runs, names series, pushes by rowid and deletes in chunks', () => {
    const s = Store.open(path.join(tmp(), 'db.sqlite'));
    try {
      const a = fillRun(s, 3000, 'a');
      const b = fillRun(s, 1000, 'b');
      const empty = s.runs.create({ name: 'empty', spec: {}, specVersion: 1 }).id;
      const sum = s.metrics.summaries([a, b, empty]);
      expect(sum.get(a)).toEqual({ finalLoss: lossAt(3000), lastStep: 3000, bestEvalLoss: 3 - 0.3, bestEvalStep: 3000, tokens: 3000 * 64 });
      expect(sum.get(b)).toMatchObject({ lastStep: 1000, tokens: 64_000, bestEvalStep: 1000 });
      expect(sum.get(empty)).toEqual({ finalLoss: null, lastStep: null, bestEvalLoss: null, bestEvalStep: null, tokens: null });
      expect(s.metrics.names(a)).toEqual(['eval_loss', 'loss', 'lr', 'tokens']);
      expect(s.metrics.names(empty)).toEqual([]);
      expect(s.metrics.maxValue(a, 'tokens')).toBe(192_000);

      const from = s.metrics.maxRowid();
      s.metrics.add(b, [{ step: 1001, name: 'loss', value: 1, time: 1 }]);
      s.metrics.add(a, [{ step: 3001, name: 'loss', value: 2, time: 2 }, { step: 3001, name: 'lr', value: 3, time: 2 }]);
      const since = s.metrics.since(from, 10);
      expect(since.map((p) => [p.runId, p.step, p.name])).toEqual([[b, 1001, 'loss'], [a, 3001, 'loss'], [a, 3001, 'lr']]);
      expect(s.metrics.since(from, 2)).toHaveLength(2);

      // resuming from step 2000 drops every series' later points
      expect(s.metrics.deleteAfter(a, 2000)).toBe(1000 * 3 + 2 + 2);
      expect(s.metrics.summaries([a]).get(a)).toMatchObject({ lastStep: 2000, bestEvalStep: 2000 });

      const n = s.metrics.series(b, 'loss').length + s.metrics.series(b, 'lr').length + s.metrics.series(b, 'tokens').length + 2;
      let deleted = 0;
      for (let k; (k = s.metrics.deleteChunk(b, 1000)); ) deleted += k;
      expect(deleted).toBe(n);
      expect(s.metrics.names(b)).toEqual([]);
      expect(s.metrics.names(a)).toHaveLength(4);
    } finally {
      s.close();
    }
  });
});

describe('metrics export', () => {
  it('writes one CSV row per step with every series, NaN for non-finite values and empty cells where nothing was logged', async () => {
    const d = tmp();
    const s = Store.open(path.join(d, 'db.sqlite'));
    try {
      const id = fillRun(s, 5000);
      const out = path.join(d, 'sub', 'm.csv');
      const r = await exportMetrics(s, { runId: id, format: 'csv', out });
      expect(r).toMatchObject({ out, rows: 5000, names: ['loss', 'eval_loss', 'lr', 'tokens'] });
      const lines = fs.readFileSync(out, 'utf8').trimEnd().split('\n');
      expect(lines).toHaveLength(5001);
      expect(lines[0]).toBe('step,time,loss,eval_loss,lr,tokens');
      expect(lines[1]).toBe(`1,1001,${lossAt(1)},,0.0001,64`);
      expect(lines[500]).toBe(`500,1500,${lossAt(500)},${3 - 500 / 10_000},0.0001,32000`);
      expect(lines[777]).toBe('777,1777,50,,0.0001,49728');
      expect(lines[1234]).toBe('1234,2234,NaN,,0.0001,78976');
      expect(r.bytes).toBe(fs.statSync(out).size);
      // an existing file is refused unless overwrite; nothing is left half-written
      await expect(exportMetrics(s, { runId: id, format: 'csv', out })).rejects.toMatchObject({ code: 'EXISTS' });
      const only = await exportMetrics(s, { runId: id, format: 'csv', out, names: ['lr', 'loss', 'missing'], overwrite: true });
      expect(only.names).toEqual(['loss', 'lr']);
      expect(fs.readFileSync(out, 'utf8').split('\n')[0]).toBe('step,time,loss,lr');
      expect(fs.readdirSync(path.dirname(out))).toEqual(['m.csv']);
    } finally {
      s.close();
    }
  });

  it('writes JSON that parses to one object per step (null for non-finite, keys only where logged)', async () => {
    const d = tmp();
    const s = Store.open(path.join(d, 'db.sqlite'));
    try {
      const id = fillRun(s, 3000);
      const out = path.join(d, 'm.json');
      const r = await exportMetrics(s, { runId: id, format: 'json', out });
      const rows = JSON.parse(fs.readFileSync(out, 'utf8')) as Record<string, number | null>[];
      expect(rows).toHaveLength(3000);
      expect(r.rows).toBe(3000);
      expect(rows[0]).toEqual({ step: 1, time: 1001, loss: lossAt(1), lr: 1e-4, tokens: 64 });
      expect(rows[499]).toEqual({ step: 500, time: 1500, loss: lossAt(500), eval_loss: 3 - 500 / 10_000, lr: 1e-4, tokens: 32_000 });
      expect(rows[1233]!.loss).toBeNull();
      // a run without points: an empty array
      const empty = s.runs.create({ name: 'e', spec: {}, specVersion: 1 }).id;
      await exportMetrics(s, { runId: empty, format: 'json', out: path.join(d, 'e.json') });
      expect(JSON.parse(fs.readFileSync(path.join(d, 'e.json'), 'utf8'))).toEqual([]);
      await expect(exportMetrics(s, { runId: id, format: 'json', out: d })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    } finally {
      s.close();
    }
  });

  it('orders columns: the usual series first, then the rest by name', () => {
    expect(exportColumns(['rank1.mem_bytes', 'tokens_per_s', 'rank0.mem_bytes', 'loss', 'epoch'])).toEqual(['loss', 'tokens_per_s', 'epoch', 'rank0.mem_bytes', 'rank1.mem_bytes']);
  });
});
