// Sorting the runs list where it scales (RunsRepo.page): every column sorted in SQL over every matching run, NaN and
// missing values last in both directions, the id as a stable tie-break, pages with the total, filters with the sort,
// and the partial index that makes "best eval loss" one seek per run (migration 4).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { methods } from '../../src-main/api/contract';
import { type MetricPoint, RUN_SORT_KEYS, type RunSortKey, Store } from '../../src-main/core/store/store';

const dirs: string[] = [];
const stores: Store[] = [];
function open(): Store {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-sort-'));
  dirs.push(d);
  const s = Store.open(path.join(d, 'llms-train.db'));
  stores.push(s);
  return s;
}
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

interface Seed {
  name: string;
  lr?: unknown;
  r?: number;
  evals?: (number | null)[];
  loss?: (number | null)[];
  tokens?: number;
  status?: 'completed' | 'failed' | 'stopped' | 'queued';
  tags?: string[];
  model?: string;
}
function seed(s: Store, list: Seed[]): number[] {
  return list.map((x) => {
    const spec: Record<string, unknown> = { method: 'lora', model: { path: x.model ?? '/models/tiny' }, data: { train: '/data/a.json' } };
    if (x.lr !== undefined) spec.training = { learning_rate: x.lr };
    if (x.r !== undefined) spec.lora = { r: x.r };
    const run = s.runs.create({ name: x.name, spec, specVersion: 1, tags: x.tags ?? [], ownerPid: null });
    const pts: MetricPoint[] = [];
    (x.loss ?? []).forEach((v, i) => pts.push({ step: i + 1, name: 'loss', value: v, time: i }));
    (x.evals ?? []).forEach((v, i) => pts.push({ step: (i + 1) * 10, name: 'eval_loss', value: v, time: i }));
    if (x.tokens !== undefined) pts.push({ step: 1, name: 'tokens', value: x.tokens / 2, time: 0 }, { step: 2, name: 'tokens', value: x.tokens, time: 1 });
    s.metrics.add(run.id, pts);
    if (x.status !== 'queued') {
      s.runs.markRunning(run.id, null);
      s.runs.finish(run.id, x.status ?? 'completed');
    }
    return run.id;
  });
}
const names = (s: Store, sort: RunSortKey, dir: 'asc' | 'desc', more: Parameters<Store['runs']['page']>[0] = {}) => s.runs.page({ sort, dir, ...more }).rows.map((r) => r.name);

describe('RunsRepo.page: sorting in SQL', () => {
  it('sorts by best eval loss with NaN-only and missing evals last, in both directions', () => {
    const s = open();
    seed(s, [
      { name: 'a', evals: [2.0, 1.5, 1.7] },
      { name: 'nan', evals: [null, null] },
      { name: 'b', evals: [1.2, null] },
      { name: 'none' },
      { name: 'c', evals: [3.0] },
    ]);
    expect(names(s, 'bestEval', 'asc')).toEqual(['b', 'a', 'c', 'nan', 'none']); // missing ones by id, in the sort's direction
    expect(names(s, 'bestEval', 'desc')).toEqual(['c', 'a', 'b', 'none', 'nan']);
  });

  it('sorts by the last train loss (a NaN last loss counts as missing, like the summary shows it)', () => {
    const s = open();
    seed(s, [{ name: 'x', loss: [3, 2] }, { name: 'lastNaN', loss: [1, null] }, { name: 'y', loss: [5, 0.5] }, { name: 'empty' }]);
    expect(names(s, 'finalLoss', 'asc')).toEqual(['y', 'x', 'lastNaN', 'empty']);
    expect(names(s, 'finalLoss', 'desc')).toEqual(['x', 'y', 'empty', 'lastNaN']);
  });

  it('sorts by spec numbers (learning rate, LoRA r), a missing or non-numeric field last', () => {
    const s = open();
    seed(s, [{ name: 'lr3', lr: 3e-4, r: 16 }, { name: 'lrText', lr: 'fast', r: 4 }, { name: 'lr1', lr: 1e-4, r: 8 }, { name: 'noLr' }]);
    expect(names(s, 'lr', 'asc')).toEqual(['lr1', 'lr3', 'lrText', 'noLr']);
    expect(names(s, 'lr', 'desc')).toEqual(['lr3', 'lr1', 'noLr', 'lrText']);
    expect(names(s, 'loraR', 'asc')).toEqual(['lrText', 'lr1', 'lr3', 'noLr']);
    expect(names(s, 'loraR', 'desc')).toEqual(['lr3', 'lr1', 'lrText', 'noLr']);
  });

  it('sorts by tokens, status, name (case-insensitively), created, finished and duration', () => {
    const s = open();
    const ids = seed(s, [
      { name: 'beta', tokens: 500, status: 'failed' },
      { name: 'Alpha', tokens: 2000, status: 'completed' },
      { name: 'gamma', status: 'queued' },
      { name: 'delta', tokens: 1000, status: 'stopped' },
    ]);
    expect(names(s, 'tokens', 'desc')).toEqual(['Alpha', 'delta', 'beta', 'gamma']);
    expect(names(s, 'tokens', 'asc')).toEqual(['beta', 'delta', 'Alpha', 'gamma']);
    expect(names(s, 'status', 'asc')).toEqual(['gamma', 'Alpha', 'beta', 'delta']);
    expect(names(s, 'name', 'asc')).toEqual(['Alpha', 'beta', 'delta', 'gamma']);
    expect(names(s, 'created', 'desc')).toEqual(['delta', 'gamma', 'Alpha', 'beta']);
    expect(s.runs.page().rows.map((r) => r.id)).toEqual([...ids].reverse()); // the default: newest first
    // a queued run has neither an end nor a duration: last both ways
    expect(names(s, 'finished', 'asc').at(-1)).toBe('gamma');
    expect(names(s, 'finished', 'desc').at(-1)).toBe('gamma');
    // runs recorded before attempts were timed (no active_s): started … ended
    s.db.prepare("UPDATE runs SET active_s = NULL, started_at = '2024-01-01T00:00:00.000Z', ended_at = ? WHERE name = ?").run('2024-01-01T00:00:10.000Z', 'beta');
    s.db.prepare("UPDATE runs SET active_s = NULL, started_at = '2024-01-01T00:00:00.000Z', ended_at = ? WHERE name = ?").run('2024-01-01T01:00:00.000Z', 'Alpha');
    s.db.prepare("UPDATE runs SET active_s = NULL, started_at = '2024-01-01T00:00:00.000Z', ended_at = ? WHERE name = ?").run('2024-01-01T00:05:00.000Z', 'delta');
    expect(names(s, 'duration', 'desc')).toEqual(['Alpha', 'delta', 'beta', 'gamma']);
    expect(names(s, 'duration', 'asc')).toEqual(['beta', 'delta', 'Alpha', 'gamma']);
    // timed attempts: the training time, not the span (Alpha trained 20 s over an hour with a long pause)
    s.db.prepare('UPDATE runs SET active_s = ? WHERE name = ?').run(20, 'Alpha');
    s.db.prepare('UPDATE runs SET active_s = ? WHERE name = ?').run(60, 'beta');
    expect(names(s, 'duration', 'desc')).toEqual(['delta', 'beta', 'Alpha', 'gamma']);
    expect(names(s, 'finished', 'desc')).toEqual(['Alpha', 'delta', 'beta', 'gamma']);
  });

  it('breaks ties by id in the sort direction, so a page boundary never splits or repeats runs', () => {
    const s = open();
    const ids = seed(s, Array.from({ length: 9 }, (_, i) => ({ name: `t${i}`, evals: [i % 3 === 0 ? null : 1 + (i % 2)] })));
    for (const dir of ['asc', 'desc'] as const) {
      const all = s.runs.page({ sort: 'bestEval', dir }).rows.map((r) => r.id);
      expect(new Set(all).size).toBe(9);
      const paged = [0, 2, 4, 6, 8].flatMap((offset) => s.runs.page({ sort: 'bestEval', dir, offset, limit: 2 }).rows.map((r) => r.id));
      expect(paged).toEqual(all);
      // within equal values the ids run in the sort's direction
      const ones = all.filter((id) => ids.indexOf(id) % 3 !== 0 && ids.indexOf(id) % 2 === 0);
      expect(ones).toEqual([...ones].sort((a, b) => (dir === 'asc' ? a - b : b - a)));
    }
    // desc is asc reversed, except that missing values stay last
    const asc = names(s, 'bestEval', 'asc');
    const desc = names(s, 'bestEval', 'desc');
    expect(asc.slice(0, 6)).toEqual(desc.slice(0, 6).reverse());
    expect(asc.slice(6)).toEqual(['t0', 't3', 't6']);
    expect(desc.slice(6)).toEqual(['t6', 't3', 't0']);
  });

  it('pages with the total and filters (status, tag, words) together with the sort', () => {
    const s = open();
    seed(s, [
      { name: 'exp lr sweep 1', lr: 1e-4, tags: ['sweep'], evals: [1.4] },
      { name: 'exp lr sweep 2', lr: 2e-4, tags: ['sweep'], evals: [1.1], status: 'failed' },
      { name: 'baseline', lr: 5e-5, tags: ['base'], evals: [1.3], model: '/models/Qwen-Éclair' },
      { name: 'exp lr sweep 3', lr: 3e-4, tags: ['sweep', 'best'], evals: [1.2] },
    ]);
    const p = s.runs.page({ sort: 'bestEval', dir: 'asc', limit: 2 });
    expect(p.total).toBe(4);
    expect(p.rows.map((r) => r.name)).toEqual(['exp lr sweep 2', 'exp lr sweep 3']);
    expect(names(s, 'bestEval', 'asc', { tag: 'sweep' })).toEqual(['exp lr sweep 2', 'exp lr sweep 3', 'exp lr sweep 1']);
    expect(s.runs.page({ tag: 'sweep', limit: 1 }).total).toBe(3);
    expect(names(s, 'lr', 'desc', { query: 'SWEEP' })).toEqual(['exp lr sweep 3', 'exp lr sweep 2', 'exp lr sweep 1']);
    expect(names(s, 'lr', 'desc', { query: 'sweep failed' })).toEqual(['exp lr sweep 2']);
    expect(names(s, 'lr', 'desc', { query: 'sweep', status: 'completed' })).toEqual(['exp lr sweep 3', 'exp lr sweep 1']);
    // model path, #id, tags; non-ASCII folded as the renderer folds it
    expect(names(s, 'created', 'asc', { query: 'éclair' })).toEqual(['baseline']);
    expect(names(s, 'created', 'asc', { query: '#3' })).toEqual(['baseline']);
    expect(names(s, 'created', 'asc', { query: 'best' })).toEqual(['exp lr sweep 3']);
    expect(s.runs.page({ query: 'nothing-like-this' })).toEqual({ rows: [], total: 0 });
    expect(s.runs.tags()).toEqual(['base', 'best', 'sweep']);
  });

  it('sorts 5,000 runs by best eval loss over all of them (the best is the oldest, far past the first 1,000)', () => {
    const s = open();
    const ins = s.db.prepare("INSERT INTO runs(name, spec_json, spec_version, status, created_at) VALUES (?, '{}', 1, 'completed', ?)");
    const pt = s.db.prepare("INSERT INTO metrics(run_id, step, name, value, time) VALUES (?, ?, 'eval_loss', ?, 0)");
    s.db.transaction(() => {
      for (let i = 0; i < 5000; i++) {
        const id = Number(ins.run(`run ${i}`, new Date(1.7e12 + i * 1000).toISOString()).lastInsertRowid);
        for (let step = 1; step <= 10; step++) pt.run(id, step * 100, i === 0 ? 0.5 : 1 + ((i * 7919) % 5000) / 5000 + step / 100);
      }
    })();
    const t = performance.now();
    const p = s.runs.page({ sort: 'bestEval', dir: 'asc', limit: 1000 });
    const ms = performance.now() - t;
    expect(p.total).toBe(5000);
    expect(p.rows[0]!.name).toBe('run 0');
    expect(s.runs.list().map((r) => r.name)).not.toContain('run 0'); // the newest 1,000 (the old default) miss it
    expect(ms).toBeLessThan(2000); // a few tens of ms on a laptop; generous for a shared CI core
    // the best eval loss is one seek in the partial index, not a scan of the run's points
    const plan = (s.db.prepare("EXPLAIN QUERY PLAN SELECT MIN(m.value) FROM metrics m WHERE m.run_id = ? AND m.name = 'eval_loss'").all(1) as { detail: string }[]).map((r) => r.detail).join('; ');
    expect(plan).toMatch(/metrics_eval_loss/);
  });

  it('the API takes only known sort keys and directions', () => {
    const req = methods.listRunsPage.request;
    for (const sort of RUN_SORT_KEYS) expect(req.safeParse({ sort, dir: 'asc' }).success).toBe(true);
    expect(req.safeParse({ sort: 'id; DROP TABLE runs' }).success).toBe(false);
    expect(req.safeParse({ dir: 'up' }).success).toBe(false);
    expect(req.safeParse({ offset: -1 }).success).toBe(false);
    expect(req.safeParse({ query: 'x'.repeat(1001) }).success).toBe(false);
    expect(methods.listRuns.request.safeParse({ sort: 'bestEval', dir: 'desc', offset: 1000 }).success).toBe(true);
  });
});
