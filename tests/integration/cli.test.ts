// `llms-train` subcommands other than serve, and `npm start`'s fallback to browser mode.
import fs from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { post, runCli, startCli, tempHome } from '../helpers/app';

describe('llms-train start', () => {
  it('falls back to browser mode in one line when no desktop window can open, and prints the URL', async () => {
    // No display here (and in CI), whether or not Electron's binary is installed.
    const s = await startCli(['start'], { env: { DISPLAY: '', WAYLAND_DISPLAY: '' } });
    try {
      const lines = s.output().split('\n');
      const why = lines.filter((l) => l.includes('desktop window is unavailable'));
      expect(why).toHaveLength(1);
      expect(why[0]).toMatch(/starting browser mode on loopback/);
      expect(s.origin).toMatch(/^http:\/\/127\.0\.0\.1:/);
      expect((await fetch(s.url)).status).toBe(200);
      expect((await fetch(s.origin + '/')).status).toBe(401);
      expect((await post(s.origin, 'getStatus', {}, { 'X-LLMT-Token': s.token })).json.result.gpus).toEqual([]);
      // a first start opens on the embedded defaults: the demo model and the bundled sample data
      const models = (await post(s.origin, 'listModels', {}, { 'X-LLMT-Token': s.token })).json.result;
      expect(models).toEqual([expect.objectContaining({ family: 'llama', name: expect.stringMatching(/demo/) })]);
      expect(fs.existsSync(path.join(models[0].path, 'model.safetensors'))).toBe(true);
      const datasets = (await post(s.origin, 'listDatasets', {}, { 'X-LLMT-Token': s.token })).json.result;
      expect(datasets.map((d: { records: number }) => d.records).sort()).toEqual([150, 150, 800]);
    } finally {
      await s.stop();
    }
  });
});

describe('llms-train CLI', () => {
  it('gpus says CPU only here', async () => {
    const r = await runCli(['gpus']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/CPU only/);
    const j = await runCli(['gpus', '--json']);
    expect(JSON.parse(j.stdout)[0].kind).toBe('cpu');
  });

  it('runs lists what the database holds', async () => {
    const home = tempHome();
    expect((await runCli(['runs'], { home })).stdout).toMatch(/no runs yet/);
    const store = Store.open(path.join(home, 'llms-train.db'));
    const r = store.runs.create({ name: 'chatglm-lora', spec: {}, specVersion: 1 });
    store.runs.finish(r.id, 'failed', { errorCode: 'NAN', errorMessage: 'loss became NaN at step 12' });
    store.close();
    const out = await runCli(['runs'], { home });
    expect(out.stdout).toMatch(/#1\tfailed\t.*chatglm-lora\t\(NAN: loss became NaN at step 12\)/);
    const j = JSON.parse((await runCli(['runs', '--json'], { home })).stdout);
    expect(j[0]).toMatchObject({ name: 'chatglm-lora', status: 'failed', errorCode: 'NAN' });
  });

  it('info names the data home from LLMS_TRAIN_HOME', async () => {
    const home = tempHome();
    const r = await runCli(['info'], { home });
    expect(r.stdout).toContain(`data home: ${home}`);
    expect(r.stdout).toMatch(/engine: +llmt-engine \d/);
  });

  it('reports a database from a newer version with its hint, without touching it', async () => {
    const home = tempHome();
    const store = Store.open(path.join(home, 'llms-train.db'));
    store.db.pragma('user_version = 99');
    store.close();
    const before = fs.readFileSync(path.join(home, 'llms-train.db'));
    const r = await runCli(['serve', '--port', '0'], { home });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/schema version 99, newer than this LLMs-train understands/);
    expect(r.stderr).toMatch(/hint: .*LLMS_TRAIN_HOME/);
    expect(fs.readFileSync(path.join(home, 'llms-train.db')).equals(before)).toBe(true);
  });

  it('marks runs left running as interrupted when the app starts', async () => {
    const home = tempHome();
    const store = Store.open(path.join(home, 'llms-train.db'));
    const r = store.runs.create({ name: 'was-running', spec: {}, specVersion: 1 });
    store.runs.markRunning(r.id, 99999999); // a pid that cannot exist: the worker is gone
    store.close();
    const s = await startCli(['serve', '--port', '0'], { home });
    try {
      expect(s.output()).toMatch(/1 run\(s\) were still marked running/);
      const runs = await post(s.origin, 'listRuns', {}, { 'X-LLMT-Token': s.token });
      expect(runs.json.result[0].status).toBe('interrupted');
    } finally {
      await s.stop();
    }
  });
});
