// downsample.ts — how many metric points a chart gets, and the min/max-per-bucket downsampling that keeps every
// spike. Shared by the core (getMetrics answers, store.ts does the same in SQL) and the renderer (live points
// appended to a downsampled series are folded back to the budget). No imports: the renderer loads this file.
//
// A series with more points in the asked step range than the budget (`maxPoints`) is cut into equal step-width
// buckets; each bucket keeps its lowest point, its highest point and its first non-finite point (a NaN or ±Inf
// loss, stored as null), and the range's first and last points are always kept. A bucket keeps at most 3 points, so
// `maxPoints` allows (maxPoints − 2) / 3 buckets and the answer never holds more than `maxPoints` points. The kept
// points are real logged points (their step, value and time), never averages: a loss spike or a NaN logged at one
// step of 200,000 stays on the chart. A range with at most `maxPoints` points comes back whole (full resolution) —
// that is what zooming in fetches.

/** Points per series the UI asks for by default: ~1,000 buckets, about one per pixel column of a wide chart. */
export const METRIC_POINT_BUDGET = 3000;
/** The largest budget a request may ask for. */
export const MAX_METRIC_POINTS = 20_000;

/** The number of buckets a budget allows. */
export function bucketCount(maxPoints: number): number {
  return Math.max(1, Math.floor((maxPoints - 2) / 3));
}

/** The equal step-width buckets over the steps lo..hi (inclusive): bucket b holds the steps [from, to]. Fewer
 *  buckets than steps when the range is short. */
export function bucketBounds(lo: number, hi: number, maxPoints: number): { from: number; to: number }[] {
  const n = Math.max(1, Math.min(bucketCount(maxPoints), hi - lo + 1));
  const width = (hi - lo + 1) / n;
  const out: { from: number; to: number }[] = [];
  for (let b = 0; b < n; b++) {
    const from = lo + Math.ceil(b * width);
    const to = b === n - 1 ? hi : lo + Math.ceil((b + 1) * width) - 1;
    if (to >= from) out.push({ from, to });
  }
  return out;
}

/**
 * Min/max-per-bucket downsampling of points sorted by step (see above). Returns the input itself when it already
 * fits the budget; otherwise a new array, in step order, of at most `maxPoints` of its points.
 */
export function downsampleMinMax<P>(points: readonly P[], maxPoints: number, stepOf: (p: P) => number, valueOf: (p: P) => number | null): readonly P[] {
  if (points.length <= maxPoints) return points;
  const first = points[0]!;
  const last = points[points.length - 1]!;
  const bounds = bucketBounds(stepOf(first), stepOf(last), maxPoints);
  const keep = new Set<number>([0, points.length - 1]);
  let i = 0;
  for (const { to } of bounds) {
    let lo = -1;
    let hi = -1;
    let bad = -1;
    for (; i < points.length && stepOf(points[i]!) <= to; i++) {
      const v = valueOf(points[i]!);
      if (v === null || !Number.isFinite(v)) {
        if (bad < 0) bad = i;
        continue;
      }
      if (lo < 0 || v < valueOf(points[lo]!)!) lo = i;
      if (hi < 0 || v > valueOf(points[hi]!)!) hi = i;
    }
    for (const k of [lo, hi, bad]) if (k >= 0) keep.add(k);
  }
  return [...keep].sort((a, b) => a - b).map((k) => points[k]!);
}
