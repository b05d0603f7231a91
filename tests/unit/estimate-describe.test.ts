// The pre-flight estimate's one-line summary (the CLI's "estimate:" line, the refusal of a run that does not fit, the
// wizard's summary): binary units named as such, and a GPU run's figure said to be of GPU memory, its CUDA context an
// assumption.
import { describe, expect, it } from 'vitest';

import { describeEstimate, estimateRun } from '../../src-main/core/runs/estimate';
import { parseRunSpec } from '../../src-main/core/runs/runspec';

const info = { supported: true, model_type: 'llama', hidden: 4096, intermediate: 11008, layers: 32, vocab: 32000, heads: 32, kv_heads: 32, parameters: 6_738_415_616, default_lora_targets: 'q_proj,v_proj' } as Parameters<typeof estimateRun>[0];
const base = { model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } };

describe('describeEstimate', () => {
  it('says MiB and GiB for binary figures (not MB)', () => {
    const e = estimateRun(info, parseRunSpec({ ...base, devices: { kind: 'cpu', ids: [] } }), 2);
    const s = describeEstimate(e);
    expect(e.device).toBe('cpu');
    expect(s).not.toMatch(/\d MB\b/);
    expect(s).toContain(`memory ≈ ${(e.bytes.total / 2 ** 30).toFixed(2)} GiB`);
    expect(s).toContain(`process ${(e.bytes.process / 2 ** 20).toFixed(1)} MiB`);
    expect(s).toMatch(/on this CPU$/);
  });

  it('a GPU run: GPU memory, and the CUDA context named as the assumption it is', () => {
    const e = estimateRun(info, parseRunSpec({ ...base, devices: { kind: 'cuda', ids: [0] } }), 2);
    expect(e.device).toBe('cuda');
    const s = describeEstimate(e);
    expect(s).toMatch(/^GPU memory ≈ [\d.]+ GiB/);
    expect(s).toContain('CUDA context ≈ 512.0 MiB assumed');
    expect(s).not.toContain('process');
  });
});
