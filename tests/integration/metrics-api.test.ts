// A long run's metrics through the API of browser mode (Core + the HTTP server, in this process): charts get every
// series within the point budget with its spikes and NaNs, a zoomed range at full resolution, live points by rowid
// (also after the newest rows were deleted), the export streams every point to a file, and deleting a long run or
// exporting it lets other requests through meanwhile.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { EventPayload, MetricTuple } from '../../src-main/api/contract';
import { METRIC_POINT_BUDGET } from '../../src-main/api/downsample';
import { Core } from '../../src-main/core/core';
import { type RunningServer, startServer } from '../../src-main/server/server';
import type { MetricPoint } from '../../src-main/core/store/store';
import { ROOT } from '../helpers/app';

const STEPS = 100_000;
let tmp: string;
let core: Core;
let srv: RunningServer;
let longId: number;

function lossAt(step: number): number | null {
  if (step === 61_000) return null; // the NaN of one step
  if (step === 42_424) return 40; // a spike
  return 2 + Math.exp(-step / 20_000) + 0.01 * Math.sin(step);
}

function fill(name: string, steps: number): number {
  const r = core.store.runs.create({ name, spec: { training: { max_steps: steps } }, specVersion: 1, ownerPid: null });
  for (let s = 1; s <= steps; s += 20_000) {
    const pts: MetricPoint[] = [];
    for (let step = s; step < Math.min(s + 20_000, steps + 1); step++) {
      pts.push({ step, name: 'loss', value: lossAt(step), time: 1_700_000_000 + step }, { step, name: 'lr', value: 1e-4, time: 1_700_000_000 + step }, { step, name: 'tokens', value: step * 512, time: 1_700_000_000 + step });
      if (step % 1000 === 0) pts.push({ step, name: 'eval_loss', value: 3 - step / 1e6, time: 1_700_000_000 + step });
    }
    core.store.metrics.add(r.id, pts);
  }
  core.store.runs.markRunning(r.id, null);
  core.store.runs.finish(r.id, 'completed');
  return r.id;
}

async function call<T>(method: string, body: unknown): Promise<{ status: number; result: T; error?: { code: string; message: string } }> {
  const res = await fetch(`${srv.origin}/api/${method}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-LLMT-Token': srv.token }, body: JSON.stringify(body) });
  const j = (await res.json()) as { result: T; error?: { code: string; message: string } };
  return { status: res.status, ...j };
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-metrics-api-'));
  core = new Core({ home: path.join(tmp, 'home'), mode: 'browser', statusIntervalMs: 0, runsPollMs: 0, metricsPushMs: 0 });
  longId = fill('long', STEPS);
  for (let i = 0; i < 20; i++) fill(`short ${i}`, 200);
  srv = await startServer(core, { rendererDir: path.join(ROOT, 'dist', 'renderer') });
});
afterAll(async () => {
  await srv?.close();
  core?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('getMetrics within a point budget', () => {
  it('lists runs with their summaries (last loss, best eval, tokens) from index seeks', async () => {
    const { result: runs } = await call<{ id: number; finalLoss: number; lastStep: number; bestEvalLoss: number; bestEvalStep: number; tokens: number }[]>('listRuns', {});
    expect(runs).toHaveLength(21);
    expect(runs.find((r) => r.id === longId)).toMatchObject({ finalLoss: lossAt(STEPS), lastStep: STEPS, bestEvalLoss: 3 - STEPS / 1e6, bestEvalStep: STEPS, tokens: STEPS * 512 });
  });

  it('sends every series of a 100,000-step run downsampled, with its spike, its NaN, first and last points', async () => {
    const res = await fetch(`${srv.origin}/api/getMetrics`, { method: 'POST', headers: { 'X-LLMT-Token': srv.token }, body: JSON.stringify({ id: longId }) });
    const text = await res.text();
    const { result } = JSON.parse(text) as { result: { points: MetricTuple[]; maxPoints: number; downsampled: string[]; lastRowid: number } };
    expect(result.maxPoints).toBe(METRIC_POINT_BUDGET);
    expect(result.downsampled.sort()).toEqual(['loss', 'lr', 'tokens']);
    expect(text.length).toBeLessThan(500_000); // instead of ~12 MB for 300,100 points
    const loss = result.points.filter((p) => p[1] === 'loss');
    expect(loss.length).toBeLessThanOrEqual(METRIC_POINT_BUDGET);
    expect(loss[0]![0]).toBe(1);
    expect(loss.at(-1)).toEqual([STEPS, 'loss', lossAt(STEPS), 1_700_000_000 + STEPS]);
    expect(loss.find((p) => p[0] === 42_424)?.[2]).toBe(40);
    expect(loss.find((p) => p[0] === 61_000)?.[2]).toBeNull();
    // a sparse series within the budget comes whole; the points are ordered by step
    expect(result.points.filter((p) => p[1] === 'eval_loss')).toHaveLength(100);
    for (let i = 1; i < result.points.length; i++) expect(result.points[i]![0]).toBeGreaterThanOrEqual(result.points[i - 1]![0]);
    expect(result.lastRowid).toBe(core.store.metrics.maxRowid());
  });

  it('sends a zoomed range at full resolution, and refuses a reversed one', async () => {
    const { result } = await call<{ points: MetricTuple[]; downsampled: string[] }>('getMetrics', { id: longId, names: ['loss'], fromStep: 60_500, toStep: 61_499 });
    expect(result.downsampled).toEqual([]);
    expect(result.points.map((p) => p[0])).toEqual(Array.from({ length: 1000 }, (_, i) => 60_500 + i));
    expect(result.points.find((p) => p[0] === 61_000)![2]).toBeNull();
    const wide = await call<{ points: MetricTuple[]; downsampled: string[] }>('getMetrics', { id: longId, names: ['loss'], fromStep: 10_000, toStep: 60_000, maxPoints: 500 });
    expect(wide.result.downsampled).toEqual(['loss']);
    expect(wide.result.points.length).toBeLessThanOrEqual(500);
    expect(wide.result.points[0]![0]).toBe(10_000);
    expect(wide.result.points.at(-1)![0]).toBe(60_000);
    const bad = await call('getMetrics', { id: longId, fromStep: 10, toStep: 5 });
    expect(bad.status).toBe(400);
    expect(bad.error!.message).toMatch(/fromStep/);
    expect((await call('getMetrics', { id: longId, maxPoints: 1_000_000 })).status).toBe(400);
  });

  it('sends the points after a rowid, and a far-behind client a budgeted range instead of everything', async () => {
    const since = core.store.metrics.maxRowid();
    core.store.metrics.add(longId, [{ step: STEPS + 1, name: 'loss', value: 1.5, time: 1 }, { step: STEPS + 1, name: 'lr', value: 1e-4, time: 1 }]);
    const tail = await call<{ points: MetricTuple[]; lastRowid: number }>('getMetrics', { id: longId, afterRowid: since });
    expect(tail.result.points).toEqual([[STEPS + 1, 'loss', 1.5, 1], [STEPS + 1, 'lr', 1e-4, 1]]);
    expect(tail.result.lastRowid).toBe(since + 2);
    const far = await call<{ points: MetricTuple[]; downsampled: string[] }>('getMetrics', { id: longId, afterRowid: 1 });
    expect(far.result.downsampled.sort()).toEqual(['loss', 'lr', 'tokens']);
    expect(far.result.points.filter((p) => p[1] === 'loss').length).toBeLessThanOrEqual(METRIC_POINT_BUDGET);
    core.store.metrics.deleteAfter(longId, STEPS);
  });
});

describe('live push', () => {
  it('pushes new points by rowid, also once the newest rows were deleted and their rowids come again', async () => {
    const got: EventPayload<'metrics'>[] = [];
    const resync: EventPayload<'metricsResync'>[] = [];
    const off = core.events.subscribe((name, payload) => {
      if (name === 'metrics') got.push(payload as EventPayload<'metrics'>);
      if (name === 'metricsResync') resync.push(payload as EventPayload<'metricsResync'>);
    });
    try {
      // the history written at once before (300,000 points) is not pushed: clients are told to fetch again
      core.pushMetrics();
      expect(got).toEqual([]);
      expect(resync).toEqual([{ lastRowid: core.store.metrics.maxRowid() }]);
      // a smaller backlog goes in slices of at most 20,000 points
      const c = fill('sliced', 10_000);
      core.pushMetrics();
      core.pushMetrics();
      expect(got.map((e) => [e.runId, e.points.length])).toEqual([[c, 20_000], [c, 10_010]]); // 3 series × 10,000 steps + 10 evals
      expect(got[1]!.points[0]![0]).toBeGreaterThanOrEqual(got[0]!.points.at(-1)![0]); // in step order (a slice may end inside a step)
      got.length = 0;
      const a = fill('pushed', 300);
      core.pushMetrics();
      expect(got.filter((e) => e.runId === a).flatMap((e) => e.points)).toHaveLength(300 * 3);
      // the newest run goes (its rows had the largest rowids); a new one reuses them and is still pushed
      expect((await call('deleteRun', { id: a, deleteFiles: false })).status).toBe(200);
      got.length = 0;
      const b = core.store.runs.create({ name: 'after', spec: {}, specVersion: 1, ownerPid: null });
      core.store.metrics.add(b.id, [{ step: 1, name: 'loss', value: 2, time: 1 }]);
      core.pushMetrics();
      expect(got).toEqual([{ runId: b.id, points: [[1, 'loss', 2, 1]], lastRowid: core.store.metrics.maxRowid() }]);
    } finally {
      off();
    }
  });
});

describe('long jobs let other requests through', () => {
  it('exports every point of the long run as CSV, refuses to overwrite unless asked, and answers getRun meanwhile', async () => {
    const out = path.join(tmp, 'export', 'long.csv');
    let exportDone = false;
    let getRunBeforeExport = false;
    const exp = call<{ out: string; rows: number; names: string[]; bytes: number }>('exportMetrics', { id: longId, format: 'csv', out }).then((r) => ((exportDone = true), r));
    await new Promise((r) => setTimeout(r, 20));
    await call('getRun', { id: longId }).then(() => (getRunBeforeExport = !exportDone));
    const { status, result } = await exp;
    expect(status).toBe(200);
    expect(getRunBeforeExport).toBe(true);
    expect(result).toMatchObject({ out, rows: STEPS, names: ['loss', 'eval_loss', 'lr', 'tokens'] });
    const text = fs.readFileSync(out, 'utf8');
    expect(result.bytes).toBe(Buffer.byteLength(text));
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(STEPS + 1);
    expect(lines[61_000]).toBe(`61000,${1_700_000_000 + 61_000},NaN,${3 - 61_000 / 1e6},0.0001,${61_000 * 512}`);
    expect(lines[61_001]).toBe(`61001,${1_700_000_000 + 61_001},${lossAt(61_001)},,0.0001,${61_001 * 512}`);
    const again = await call('exportMetrics', { id: longId, format: 'csv', out });
    expect(again.status).toBe(409);
    expect(again.error!.code).toBe('EXISTS');
    const json = await call<{ rows: number }>('exportMetrics', { id: longId, format: 'json', out: path.join(tmp, 'export', 'long.json'), names: ['eval_loss'] });
    expect(json.result.rows).toBe(100);
    expect((JSON.parse(fs.readFileSync(path.join(tmp, 'export', 'long.json'), 'utf8')) as unknown[])[0]).toEqual({ step: 1000, time: 1_700_001_000, eval_loss: 3 - 1000 / 1e6 });
  });

  it('deletes a long run in chunks: other requests are answered meanwhile, resuming it is refused until it is gone', async () => {
    const id = fill('to delete', 60_000);
    const del = core.dispatcher.call('deleteRun', { id, deleteFiles: false });
    // deletion is under way (the first chunk went at once): the run still answers, resume is refused
    expect(await core.dispatcher.call('getRun', { id })).toMatchObject({ ok: true });
    expect(await core.dispatcher.call('resumeRun', { id })).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringMatching(/being deleted/) } });
    expect(await core.dispatcher.call('deleteRun', { id, deleteFiles: false })).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
    expect(await del).toEqual({ ok: true, result: { id, filesRemoved: false } });
    expect(await core.dispatcher.call('getRun', { id })).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    expect(core.store.metrics.names(id)).toEqual([]);
  });
});
