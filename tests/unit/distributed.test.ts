// The RunSpec's `distributed` block: validation (strict, bounded), the CLI flags round-trip (--nproc_per_node,
// --zero_stage), the engine job it produces, and the seed's DeepSpeed ZeRO setting mapped onto it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import { cliArgs } from '../../src-main/core/runs/cli-command';
import { applyDeepspeed, parseRunSpec, toEngineJob } from '../../src-main/core/runs/runspec';

const base = { model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } };

describe('RunSpec.distributed', () => {
  it('defaults to one worker and writes no distributed block into the job', () => {
    const spec = parseRunSpec(base);
    expect(spec.distributed).toEqual({ nproc_per_node: 1, zero_stage: 0 });
    expect(toEngineJob(spec, { train: 't.tok', eval: null }, null)).not.toHaveProperty('distributed');
    expect(cliArgs(spec)).not.toContain('--nproc_per_node');
  });

  it('is strict and bounded', () => {
    expect(() => parseRunSpec({ ...base, distributed: { nproc_per_node: 0 } })).toThrow(/distributed.nproc_per_node/);
    expect(() => parseRunSpec({ ...base, distributed: { zero_stage: 3 } })).toThrow(/distributed.zero_stage/);
    expect(() => parseRunSpec({ ...base, distributed: { nnodes: 2 } })).toThrow(/distributed/);
  });

  it('round-trips through the CLI flags and becomes the job field', () => {
    const spec = parseRunSpec({ ...base, method: 'full', distributed: { nproc_per_node: 4, zero_stage: 1 } });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--nproc_per_node', '4', '--zero_stage', '1']));
    const flags: Record<string, string | number> = {};
    for (let i = 0; i < args.length; i += 2) flags[args[i]!.slice(2)] = /^\d+$/.test(args[i + 1]!) ? Number(args[i + 1]) : args[i + 1]!;
    expect(specFromFlags(flags).spec).toEqual(spec);
    expect(toEngineJob(spec, { train: 't.tok', eval: null }, null).distributed).toEqual({ world_size: 4, backend: 'gloo', zero_stage: 1 });
  });

  it("maps the seed's DeepSpeed zero_optimization (stage 2) onto ZeRO-2, naming the keys with no meaning", () => {
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-ds-')), 'ds.json');
    fs.writeFileSync(f, JSON.stringify({ zero_optimization: { stage: 2, allgather_bucket_size: 5e8 }, gradient_clipping: 1.0 }));
    const r = applyDeepspeed(base, f);
    expect(parseRunSpec(r.spec).distributed).toEqual({ nproc_per_node: 1, zero_stage: 2 });
    expect(r.warnings.join('\n')).not.toMatch(/stage 2/);
    expect(r.warnings.join('\n')).toMatch(/allgather_bucket_size/);
    fs.rmSync(path.dirname(f), { recursive: true, force: true });
  });
});
