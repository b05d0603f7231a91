// `llms-train demo`: the embedded default fine-tune on the bundled sample data, on CPU, must clearly learn
// the task (test accuracy near chance before, ≥ 0.8 after) within minutes, recording the run like any other.
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { pickChoice } from '../../src-main/core/eval/classify';
import { Store } from '../../src-main/core/store/store';
import { runCli, tempHome } from '../helpers/app';

describe('llms-train demo', () => {
  it('picks the earliest (then longest) answer choice in a generation', () => {
    expect(pickChoice('答：药物。', ['疾病', '药物'])).toBe('药物');
    expect(pickChoice('实验室检查和疾病', ['疾病', '实验室检查'])).toBe('实验室检查');
    expect(pickChoice('怀孕相关', ['怀孕', '怀孕相关'])).toBe('怀孕相关');
    expect(pickChoice('none', ['疾病'])).toBeNull();
  });

  it('fine-tunes the demo model and the test accuracy rises from near chance to at least 0.8', async () => {
    const home = tempHome('llmt-demo-');
    const t0 = Date.now();
    const r = await runCli(['demo'], { home, timeoutMs: 300_000 });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const m = /before ([\d.]+) → after ([\d.]+)/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    const [before, after] = [Number(m![1]), Number(m![2])];
    expect(before).toBeLessThan(0.3);
    expect(after).toBeGreaterThanOrEqual(0.8);
    expect((Date.now() - t0) / 1000).toBeLessThan(300);
    const store = Store.open(path.join(home, 'llms-train.db'));
    const run = store.runs.list()[0]!;
    expect(run.status).toBe('completed');
    expect(store.metrics.series(run.id, 'loss').length).toBe(12);
    store.close();
  }, 320_000);
});
