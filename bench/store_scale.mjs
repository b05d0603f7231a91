// store_scale.mjs — the store and the API on a demanding user's history (docs/BENCHMARKS.md, "Store and API at
// scale"): a temporary database with hundreds of runs, several of them long (200,000 steps logged every step: ~1.4M
// metric rows each), then timings of what the app does with it, through the real HTTP server of browser mode:
// opening it (migrations), listing runs, a run's metrics (all series, one series, a zoomed range), the compare view's
// requests for 10 long runs, a live run streaming metrics (insert batches and the live push), exporting a run's
// metrics, and deleting a long run while another request is timed every 5 ms.
// Needs `npm run build:main` first. Works against an older build too (--dist), skipping what it lacks.
// Usage: node bench/store_scale.mjs [--runs 300] [--long 10] [--steps 200000] [--short-steps 1000] [--dist DIR]
//        [--work DIR] [--keep] [--reuse]
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const flag = (name) => process.argv.includes(`--${name}`);
const RUNS = Number(arg('runs', 300));
const LONG = Number(arg('long', 10));
const STEPS = Number(arg('steps', 200_000));
const SHORT_STEPS = Number(arg('short-steps', 1000));
const DIST = path.resolve(arg('dist', path.join(ROOT, 'dist')));
const WORK = path.resolve(arg('work', path.join(os.tmpdir(), 'llmt-bench-store')));
const REUSE = flag('reuse');

const require = createRequire(path.join(DIST, 'main', 'x.js'));
const { Store } = require(path.join(DIST, 'main/core/store/store.js'));
const { Core } = require(path.join(DIST, 'main/core/core.js'));
const { startServer } = require(path.join(DIST, 'main/server/server.js'));
const { methods } = require(path.join(DIST, 'main/api/contract.js'));

const NAMES = ['loss', 'lr', 'grad_norm', 'tokens_per_s', 'mem_bytes', 'epoch', 'tokens'];
const T0 = 1_700_000_000;
const ms = (t) => `${t.toFixed(t < 10 ? 2 : 1)} ms`;
const mb = (n) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const pct = (a, p) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(a.length * p))];
const results = [];
const report = (what, value) => {
  results.push([what, value]);
  console.log(`${what.padEnd(64)} ${value}`);
};

/** The points one training step logs (as the run service stores them), plus an eval every 1000 steps. */
function stepPoints(step, seed, tokens) {
  const loss = 1.5 + Math.exp(-step / 40_000) + 0.05 * Math.sin(step * 0.37 + seed) + (step % 50_000 === 25_000 ? 5 : 0);
  const time = T0 + seed * 1e6 + step * 0.25;
  const pts = [
    { step, name: 'loss', value: loss, time },
    { step, name: 'lr', value: 2e-4 * Math.min(1, step / 1000), time },
    { step, name: 'grad_norm', value: 0.5 + 0.1 * Math.cos(step), time },
    { step, name: 'tokens_per_s', value: 5000 + (step % 97), time },
    { step, name: 'mem_bytes', value: 2.1e9 + (step % 13) * 1e6, time },
    { step, name: 'epoch', value: step / 5000, time },
    { step, name: 'tokens', value: tokens, time },
  ];
  if (step % 1000 === 0) pts.push({ step, name: 'eval_loss', value: loss + 0.1, time });
  return pts;
}

function fill(home) {
  fs.mkdirSync(home, { recursive: true });
  const store = Store.open(path.join(home, 'llms-train.db'));
  const t = performance.now();
  let rows = 0;
  const ids = [];
  for (let i = 0; i < RUNS; i++) {
    const long = i < LONG;
    const steps = long ? STEPS : SHORT_STEPS;
    const spec = { name: `run ${i}`, method: 'lora', model: { path: `/models/m${i % 7}` }, data: { train: `/data/d${i % 5}.json` }, output: { dir: `/out/run-${i}` }, training: { max_steps: steps, learning_rate: 1e-4 * (1 + (i % 4)) } };
    const r = store.runs.create({ name: long ? `long ${i}` : `run ${i}`, spec, specVersion: 1, tags: [`t${i % 10}`], ownerPid: null });
    store.runs.markRunning(r.id, null);
    let batch = [];
    for (let s = 1; s <= steps; s++) {
      for (const p of stepPoints(s, i, s * 2048)) batch.push(p);
      if (batch.length >= 70_000) {
        store.metrics.add(r.id, batch);
        rows += batch.length;
        batch = [];
      }
    }
    store.metrics.add(r.id, batch);
    rows += batch.length;
    store.runs.finish(r.id, i % 9 === 4 ? 'failed' : 'completed');
    ids.push(r.id);
    if (long) process.stdout.write(`  filled long run ${i + 1}/${LONG} (${rows.toLocaleString()} rows, ${((performance.now() - t) / 1000).toFixed(0)} s)\n`);
  }
  store.close();
  return { rows, seconds: (performance.now() - t) / 1000 };
}

async function main() {
  const home = path.join(WORK, 'home');
  const dbFile = path.join(home, 'llms-train.db');
  console.log(`build: ${DIST}\ndatabase: ${dbFile}`);
  if (!REUSE || !fs.existsSync(dbFile)) {
    fs.rmSync(WORK, { recursive: true, force: true });
    const f = fill(home);
    report(`fill: ${RUNS} runs (${LONG} × ${STEPS} steps), metric rows`, f.rows.toLocaleString());
    report('fill: seconds (bulk, 70k rows per transaction)', `${f.seconds.toFixed(1)} s, ${((f.rows / f.seconds) | 0).toLocaleString()} rows/s`);
  }
  const size = ['', '-wal'].reduce((n, s) => n + (fs.existsSync(dbFile + s) ? fs.statSync(dbFile + s).size : 0), 0);
  report('database size', mb(size));

  // opening: the migrations an older database needs run here
  const { Store: S } = require(path.join(DIST, 'main/core/store/store.js'));
  const pre = S.open(dbFile, { readonly: true });
  const version = pre.db.pragma('user_version', { simple: true });
  pre.close();
  let t = performance.now();
  const core = new Core({ home, mode: 'browser', statusIntervalMs: 0, runsPollMs: 0, metricsPushMs: 0 });
  const nowVersion = core.store.db.pragma('user_version', { simple: true });
  report(`open (Core${nowVersion !== version ? `, migrating schema ${version} → ${nowVersion}` : ''})`, ms(performance.now() - t));
  const srv = await startServer(core, { rendererDir: path.join(DIST, 'renderer'), port: 0 });
  const call = async (method, body, retry = true) => {
    const t0 = performance.now();
    let res;
    try {
      res = await fetch(`${srv.origin}/api/${method}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-LLMT-Token': srv.token }, body: JSON.stringify(body) });
    } catch (err) {
      // a kept-alive connection the server closed while this process was busy: once more on a new one
      if (retry && err.cause?.code === 'ECONNRESET') return call(method, body, false);
      throw err;
    }
    const text = await res.text();
    const dt = performance.now() - t0;
    const j = JSON.parse(text);
    if (j.error) throw new Error(`${method}: ${j.error.message}`);
    return { result: j.result, ms: dt, bytes: text.length };
  };
  const timed = async (label, method, body, n = 5) => {
    const times = [];
    let last;
    for (let i = 0; i < n; i++) {
      last = await call(method, body);
      times.push(last.ms);
    }
    report(label, `${ms(median(times))} (median of ${n}), ${mb(last.bytes)}`);
    return last;
  };
  const has = (m, field) => m in methods && (!field || field in (methods[m].request.shape ?? {}));

  const runs = (await call('listRuns', {})).result;
  const longIds = runs.filter((r) => r.name.startsWith('long ')).map((r) => r.id).sort((a, b) => a - b);
  const longId = longIds[longIds.length - 1];
  await timed(`listRuns, all ${runs.length} runs with their summaries`, 'listRuns', {});
  await timed('listRuns, status = failed', 'listRuns', { status: 'failed' });
  await timed('getRun (long run)', 'getRun', { id: longId });
  const all = await timed('getMetrics, long run, every series', 'getMetrics', { id: longId }, 3);
  report('  points returned', all.result.points.length.toLocaleString());
  const loss = await timed('getMetrics, long run, loss only', 'getMetrics', { id: longId, names: ['loss'] }, 3);
  report('  points returned', loss.result.points.length.toLocaleString());
  if (has('getMetrics', 'fromStep')) {
    const mid = Math.floor(STEPS / 2);
    const z = await timed(`getMetrics, long run, zoom: loss of steps ${mid}–${mid + 999}`, 'getMetrics', { id: longId, names: ['loss'], fromStep: mid, toStep: mid + 999 });
    report('  points returned (full resolution)', z.result.points.length.toLocaleString());
  } else report('getMetrics, zoomed range', 'not supported by this build');

  // the compare view: 10 long runs selected
  const sel = longIds.slice(0, 10);
  await timed(`compareRuns, ${sel.length} long runs`, 'compareRuns', { ids: sel });
  for (const [label, body] of [
    ['every series (what Compare asked before)', (id) => ({ id })],
    ['loss (what Compare asks now, aligned by step)', (id) => ({ id, names: ['loss'] })],
    ['tokens (added to align by tokens)', (id) => ({ id, names: ['tokens'] })],
  ]) {
    t = performance.now();
    let bytes = 0;
    let pts = 0;
    await Promise.all(sel.map(async (id) => {
      const r = await call('getMetrics', body(id));
      bytes += r.bytes;
      pts += r.result.points.length;
    }));
    report(`compare overlay: getMetrics × ${sel.length}, ${label}`, `${ms(performance.now() - t)}, ${mb(bytes)}, ${pts.toLocaleString()} points`);
  }

  // a live run at step 150,000 of 200,000 streaming: a batch of 250 steps (500 ms at a step per 2 ms) per tick,
  // then the live push the core does every 500 ms
  const live = core.store.runs.create({ name: 'live', spec: { training: { max_steps: STEPS } }, specVersion: 1, ownerPid: null });
  const startAt = Math.floor(STEPS * 0.75);
  for (let s = 1; s <= startAt; s += 10_000) {
    const b = [];
    for (let k = s; k < Math.min(s + 10_000, startAt + 1); k++) b.push(...stepPoints(k, 999, k * 2048));
    core.store.metrics.add(live.id, b);
  }
  core.store.runs.markRunning(live.id, null);
  for (let i = 0; i < 200; i++) core.pushMetrics(); // what the prefill left to push (a newer build pushes in slices)
  let pushedBytes = 0;
  const off = core.events.subscribe((name, payload) => {
    if (name === 'metrics') pushedBytes += JSON.stringify({ event: name, payload }).length;
  });
  const ins = [];
  const push = [];
  let step = startAt;
  for (let tick = 0; tick < 100; tick++) {
    const b = [];
    for (let k = 0; k < 250; k++) b.push(...stepPoints(++step, 999, step * 2048));
    let t1 = performance.now();
    core.store.metrics.add(live.id, b);
    ins.push(performance.now() - t1);
    t1 = performance.now();
    core.pushMetrics();
    push.push(performance.now() - t1);
    await new Promise((res) => setImmediate(res));
  }
  off();
  report('live run: insert one 500 ms batch (250 steps, 1750 rows)', `p50 ${ms(median(ins))}, p99 ${ms(pct(ins, 0.99))}, max ${ms(Math.max(...ins))}`);
  report('live run: push of new points (every 500 ms)', `p50 ${ms(median(push))}, max ${ms(Math.max(...push))}, ${mb(pushedBytes / 100)} per push`);
  const after = core.store.metrics.maxRowid() - 7 * 250;
  const tail = await timed('getMetrics, live run, points after a rowid (reconnect)', 'getMetrics', { id: live.id, afterRowid: after });
  report('  points returned', tail.result.points.length.toLocaleString());

  // other requests while something long runs: getRun timed every 5 ms
  async function whilePinging(label, fn) {
    const lat = [];
    let running = true;
    const pinger = (async () => {
      while (running) {
        const r = await call('getRun', { id: longId });
        lat.push(r.ms);
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    const loop = monitorEventLoopDelay({ resolution: 1 });
    loop.enable();
    const t1 = performance.now();
    const out = await fn();
    const total = performance.now() - t1;
    loop.disable();
    running = false;
    await pinger;
    // the server shares this process's event loop: its longest stall is how long any other request could wait
    report(label, `${ms(total)}; event loop blocked at most ${ms(loop.max / 1e6)}; getRun meanwhile: max ${ms(Math.max(...lat))} (${lat.length} requests)`);
    return out;
  }
  if (has('exportMetrics')) {
    const out = path.join(WORK, 'export', 'metrics.csv');
    const r = await whilePinging('exportMetrics, long run, CSV, every series', () => call('exportMetrics', { id: longId, format: 'csv', out, overwrite: true }));
    report('  rows, file size', `${r.result.rows.toLocaleString()}, ${mb(fs.statSync(out).size)}`);
  } else report('exportMetrics', 'not in this build');
  await whilePinging(`deleteRun, long run (${(7 * STEPS).toLocaleString()} metric rows)`, () => call('deleteRun', { id: longIds[0], deleteFiles: false }).then((r) => r.result));
  const rest = (await call('listRuns', {})).result;
  if (rest.some((r) => r.id === longIds[0])) throw new Error('the deleted run is still listed');

  await srv.close();
  core.close();
  if (!flag('keep') && !REUSE) fs.rmSync(WORK, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
