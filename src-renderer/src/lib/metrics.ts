// metrics.ts — metric series in the renderer: the overview a chart gets from getMetrics (each series within the
// point budget, see src-main/api/downsample.ts), live points appended to it without refetching (and folded back to
// the budget when they pile up), and a zoomed range fetched at full resolution laid over the overview.
import type { MetricTuple } from '../../../src-main/api/contract';
import { downsampleMinMax, METRIC_POINT_BUDGET } from '../../../src-main/api/downsample';

export { METRIC_POINT_BUDGET };

export type Pt = { step: number; value: number | null; time: number };
export type SeriesMap = Record<string, Pt[]>;

/** getMetrics points grouped by series (they come ordered by step). */
export function groupPoints(points: readonly MetricTuple[]): SeriesMap {
  const out: SeriesMap = {};
  for (const [step, name, value, time] of points) (out[name] ??= []).push({ step, value, time });
  return out;
}

/**
 * Live points appended to series: only steps after a series' last one (a push can overlap what getMetrics already
 * returned); a series that grows past twice the budget is downsampled back to it. Returns a new map (and new arrays
 * for the series it touched), or the same map when nothing was new.
 */
export function appendPoints(series: SeriesMap, points: readonly MetricTuple[], budget = METRIC_POINT_BUDGET, only?: ReadonlySet<string>): SeriesMap {
  let next: SeriesMap | null = null;
  const touched = new Set<string>();
  for (const [step, name, value, time] of points) {
    if (only && !only.has(name)) continue;
    const cur = (next ?? series)[name];
    if (cur?.length && cur[cur.length - 1]!.step >= step) continue;
    next ??= { ...series };
    if (!touched.has(name)) {
      touched.add(name);
      next[name] = cur ? cur.slice() : [];
    }
    next[name]!.push({ step, value, time });
  }
  if (!next) return series;
  for (const name of touched) {
    const s = next[name]!;
    if (s.length > 2 * budget) next[name] = downsampleMinMax(s, budget, (p) => p.step, (p) => p.value) as Pt[];
  }
  return next;
}

/**
 * The steps a chart's visible x range [min, max] covers, from the points it draws (x grows with the step on every
 * axis: step, time, tokens). A little wider than the view (the neighbouring points), so that the edges are drawn.
 */
export function stepRange(points: readonly Pt[], xOf: (p: Pt) => number | null, min: number, max: number): { fromStep: number; toStep: number } | null {
  let from: number | null = null;
  let to: number | null = null;
  let prev: Pt | null = null;
  for (const p of points) {
    const x = xOf(p);
    if (x === null) continue;
    if (x < min) prev = p;
    else {
      if (from === null) from = (prev ?? p).step;
      to = p.step;
      if (x > max) break;
    }
  }
  if (from === null) return prev ? { fromStep: prev.step, toStep: prev.step } : null;
  return { fromStep: Math.max(0, Math.floor(from)), toStep: Math.ceil(to ?? from) };
}

/** The overview with a zoomed range's points in place of its own inside [fromStep, toStep]. */
export function overlay(overview: readonly Pt[], detail: { fromStep: number; toStep: number; points: readonly Pt[] } | undefined): readonly Pt[] {
  if (!detail) return overview;
  const out: Pt[] = [];
  for (const p of overview) if (p.step < detail.fromStep) out.push(p);
  for (const p of detail.points) out.push(p);
  for (const p of overview) if (p.step > detail.toStep) out.push(p);
  return out;
}
