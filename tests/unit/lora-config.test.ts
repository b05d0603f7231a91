// LoRA settings beyond the seed's five keys: a PEFT LoraConfig JSON as --lora_config (what is used, what is refused
// by name, what is only warned about), --lora_target_modules as a list, "all-linear" or a regex, --lora_options,
// the RunSpec rules PEFT has, the engine job's "lora" object, the CLI round trip and the memory estimate.
import fs from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import { cliArgs, cliCommand } from '../../src-main/core/runs/cli-command';
import { estimateRun } from '../../src-main/core/runs/estimate';
import { parseRunSpec, parseTargetModules, readLoraConfigFile, toEngineJob } from '../../src-main/core/runs/runspec';
import { PEFT_SAVED, tempDirs } from '../helpers/tmp';

const tmpDir = tempDirs('lora');
function writeJson(obj: unknown): string {
  const f = path.join(tmpDir(), 'adapter_config.json');
  fs.writeFileSync(f, JSON.stringify(obj));
  return f;
}

const base = { model_name_or_path: '/m', train_file: '/t.json', output_dir: '/o' };
const job = (spec: ReturnType<typeof parseRunSpec>) => (toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { lora: Record<string, unknown> }).lora;

describe('a PEFT LoraConfig JSON as --lora_config', () => {
  it('is accepted as PEFT saves it: its settings reach the job, the bookkeeping keys are ignored', () => {
    const { spec, warnings } = specFromFlags({ ...base, lora_config: writeJson(PEFT_SAVED) });
    expect(warnings).toEqual([]);
    expect(spec.lora).toEqual({ r: 8, alpha: 16, dropout: 0.05, target_modules: ['v_proj', 'q_proj'], modules_to_save: null });
    expect(job(spec)).toEqual({ r: 8, alpha: 16, dropout: 0.05, target_modules: ['v_proj', 'q_proj'], modules_to_save: null });
  });

  it('carries rank_pattern, alpha_pattern, exclude_modules, layers_to_transform, layers_pattern, bias and use_rslora into the job', () => {
    const cfg = {
      ...PEFT_SAVED,
      rank_pattern: { q_proj: 16, 'model.layers.0.self_attn.v_proj': 4 },
      alpha_pattern: { q_proj: 32 },
      exclude_modules: ['o_proj'],
      layers_to_transform: [0, 2],
      layers_pattern: 'layers',
      bias: 'lora_only',
      use_rslora: true,
      modules_to_save: ['lm_head'],
    };
    const { spec } = specFromFlags({ ...base, lora_config: writeJson(cfg) });
    expect(job(spec)).toEqual({
      r: 8,
      alpha: 16,
      dropout: 0.05,
      target_modules: ['v_proj', 'q_proj'],
      modules_to_save: ['lm_head'],
      bias: 'lora_only',
      use_rslora: true,
      rank_pattern: { q_proj: 16, 'model.layers.0.self_attn.v_proj': 4 },
      alpha_pattern: { q_proj: 32 },
      exclude_modules: ['o_proj'],
      layers_to_transform: [0, 2],
      layers_pattern: 'layers',
    });
    // a regex target_modules / exclude_modules and a single layer index pass as given
    const rx = { ...PEFT_SAVED, target_modules: '.*\\.(q_proj|v_proj)', exclude_modules: '.*layers\\.0\\..*' };
    expect(job(specFromFlags({ ...base, lora_config: writeJson(rx) }).spec)).toMatchObject({ target_modules: '.*\\.(q_proj|v_proj)', exclude_modules: '.*layers\\.0\\..*' });
    const one = { ...PEFT_SAVED, layers_to_transform: 3 };
    expect(job(specFromFlags({ ...base, lora_config: writeJson(one) }).spec).layers_to_transform).toBe(3);
  });

  it('refuses, by name, the PEFT features the engine cannot honour', () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ fan_in_fan_out: true }, /fan_in_fan_out true/],
      [{ lora_bias: true }, /lora_bias true/],
      [{ layer_replication: [[0, 4], [2, 6]] }, /layer_replication/],
      [{ trainable_token_indices: [5, 6] }, /trainable_token_indices/],
      [{ target_parameters: ['experts.gate_up_proj'] }, /target_parameters/],
      [{ megatron_config: { tensor_model_parallel_size: 2 } }, /megatron_config/],
      [{ init_lora_weights: 'pissa' }, /init_lora_weights "pissa" is not supported/],
      [{ peft_type: 'ADALORA' }, /peft_type "ADALORA" is not a LoRA config/],
    ];
    for (const [patch, msg] of cases) expect(() => specFromFlags({ ...base, lora_config: writeJson({ ...PEFT_SAVED, ...patch }) }), JSON.stringify(patch)).toThrow(msg);
  });

  it('warns that init_lora_weights "gaussian" / false train with the default initialisation', () => {
    for (const init of ['gaussian', false]) {
      const { warnings } = readLoraConfigFile(writeJson({ ...PEFT_SAVED, init_lora_weights: init }));
      expect(warnings.join('\n')).toMatch(/init_lora_weights .* is not done here: LoRA starts as PEFT's default/);
    }
  });

  it('still refuses unknown keys (typos) by name, and both spellings of one setting', () => {
    expect(() => readLoraConfigFile(writeJson({ ...PEFT_SAVED, lora_alpah: 8 }))).toThrow(/unknown field\(s\) lora_alpah/);
    expect(() => readLoraConfigFile(writeJson({ lora_r: 8, r: 16 }))).toThrow(/both lora_r .* and r/);
    // the seed's format is read as before
    const seed = readLoraConfigFile(path.join(__dirname, '..', '..', 'configs', 'lora_config_llama.json'));
    expect(seed).toEqual({ lora: { r: 8, alpha: 32, dropout: 0.05, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], modules_to_save: null }, warnings: [] });
  });

  it('applies PEFT\'s own rules: layers_to_transform needs list targets; layers_pattern needs layers_to_transform', () => {
    expect(() => specFromFlags({ ...base, lora_config: writeJson({ ...PEFT_SAVED, target_modules: '.*q_proj', layers_to_transform: [0] }) })).toThrow(/lora\.layers_to_transform: .*list of module names/);
    expect(() => specFromFlags({ ...base, lora_config: writeJson({ ...PEFT_SAVED, layers_pattern: 'layers' }) })).toThrow(/lora\.layers_pattern: .*give layers_to_transform/);
    expect(() => parseRunSpec({ model: { path: '/m' }, data: { train: '/t' }, output: { dir: '/o' }, lora: { bias: 'some' } })).toThrow(/lora\.bias/);
  });
});

describe('--lora_target_modules', () => {
  it('is a comma list of names, "all-linear", or (with a regex metacharacter) one regex never split on commas', () => {
    expect(parseTargetModules('q_proj,v_proj')).toEqual(['q_proj', 'v_proj']);
    expect(parseTargetModules(' q_proj , self_attn.o_proj ')).toEqual(['q_proj', 'self_attn.o_proj']);
    expect(parseTargetModules('all-linear')).toBe('all-linear');
    expect(parseTargetModules('ALL-LINEAR')).toBe('all-linear');
    expect(parseTargetModules('.*\\.(q_proj|v_proj)')).toBe('.*\\.(q_proj|v_proj)');
    expect(parseTargetModules('model\\.layers\\.[0-9]{1,2}\\.self_attn\\.q_proj')).toBe('model\\.layers\\.[0-9]{1,2}\\.self_attn\\.q_proj');
    expect(parseTargetModules('.*(q|v)_proj')).toBe('.*(q|v)_proj');
    const all = specFromFlags({ ...base, lora_target_modules: 'all-linear' }).spec;
    expect(job(all).target_modules).toBe('all-linear');
    const rx = specFromFlags({ ...base, lora_target_modules: '.*layers\\.(0|1)\\..*(q_proj|v_proj)' }).spec;
    expect(job(rx).target_modules).toBe('.*layers\\.(0|1)\\..*(q_proj|v_proj)');
    expect(job(specFromFlags({ ...base, lora_target_modules: 'q_proj,v_proj' }).spec).target_modules).toEqual(['q_proj', 'v_proj']);
  });
});

describe('--lora_options and the CLI round trip', () => {
  it('sets the keys without a flag of their own, refuses others by name, and cliArgs writes them back', () => {
    const { spec } = specFromFlags({ ...base, lora_options: '{"use_rslora": true, "rank_pattern": {"q_proj": 16}, "layers_to_transform": [1]}' });
    expect(job(spec)).toMatchObject({ use_rslora: true, rank_pattern: { q_proj: 16 }, layers_to_transform: [1] });
    expect(() => specFromFlags({ ...base, lora_options: '{"use_dora": true}' })).toThrow(/--lora_options: unknown key\(s\) use_dora .*use_dora have their own flags/);
    expect(() => specFromFlags({ ...base, lora_options: 'nope' })).toThrow(/--lora_options: not JSON/);

    const flags = (args: string[]) => {
      const o: Record<string, string | number | boolean> = {};
      for (let i = 0; i < args.length; i += 2) o[args[i]!.replace(/^--/, '')] = /^-?\d+(\.\d+)?$/.test(args[i + 1]!) ? Number(args[i + 1]) : args[i + 1]!;
      return o;
    };
    for (const lora of [
      { target_modules: '.*\\.(q_proj|v_proj)', rank_pattern: { q_proj: 16 }, alpha_pattern: { v_proj: 64 }, exclude_modules: 'lm_head', bias: 'all' as const, use_rslora: true },
      { target_modules: 'all-linear' },
      { target_modules: ['q_proj', 'v_proj'], layers_to_transform: [0, 1], layers_pattern: 'layers', exclude_modules: ['o_proj'] },
    ]) {
      const s = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora });
      expect(specFromFlags(flags(cliArgs(s))).spec).toEqual(s);
    }
    expect(cliCommand(parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora: { target_modules: '.*(q|v)_proj' } }))).toContain("--lora_target_modules '.*(q|v)_proj'");
  });
});

describe('the memory estimate with PEFT target rules', () => {
  // a 7B LLaMA shape
  const info = { supported: true, model_type: 'llama', hidden: 4096, intermediate: 11008, layers: 32, vocab: 32000, heads: 32, kv_heads: 32, parameters: 6_738_415_616, default_lora_targets: 'q_proj,v_proj' } as Parameters<typeof estimateRun>[0];
  const est = (lora: Record<string, unknown>) => estimateRun(info, parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora: { r: 16, dropout: 0, ...lora } }), 1);
  const qv = 32 * 16 * (4096 + 4096) * 2; // q_proj and v_proj in every layer

  it('counts a regex, "all-linear", exclude_modules and layers_to_transform as PEFT targets them', () => {
    expect(est({ target_modules: ['q_proj', 'v_proj'] }).trainableParams).toBe(qv);
    expect(est({ target_modules: '.*\\.(q_proj|v_proj)' }).trainableParams).toBe(qv);
    expect(est({ target_modules: 'model\\.layers\\.(0|1)\\.self_attn\\.q_proj' }).trainableParams).toBe(2 * 16 * 8192);
    expect(est({ target_modules: 'all-linear' }).trainableParams).toBe(39_976_960);
    expect(est({ target_modules: 'all-linear', exclude_modules: ['k_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] }).trainableParams).toBe(qv);
    expect(est({ target_modules: ['q_proj', 'v_proj'], layers_to_transform: [0, 1] }).trainableParams).toBe(qv / 16);
    expect(est({ target_modules: ['q_proj', 'v_proj'], layers_to_transform: 5 }).trainableParams).toBe(qv / 32);
  });

  it('uses the rank rank_pattern gives each module', () => {
    expect(est({ target_modules: ['q_proj', 'v_proj'], rank_pattern: { q_proj: 64 } }).trainableParams).toBe(32 * 8192 * (64 + 16));
    // a key names a path: only layer 0's v_proj gets rank 4
    expect(est({ target_modules: ['q_proj', 'v_proj'], rank_pattern: { 'model.layers.0.self_attn.v_proj': 4 } }).trainableParams).toBe(qv - 8192 * 12);
    // more rank somewhere keeps more activations
    const a = est({ target_modules: ['q_proj'] }).bytes.activations;
    expect(est({ target_modules: ['q_proj'], rank_pattern: { q_proj: 64 } }).bytes.activations).toBeGreaterThan(a);
    // a regex JavaScript cannot read (Python's named group) does not crash the estimate
    expect(est({ target_modules: '(?P<m>q_proj)' }).trainableParams).toBeGreaterThan(0);
  });
  it('counts LoRA on the embedding and the LM head: r·(V + H) each, by name, regex and rank_pattern; not by all-linear', () => {
    const withMods = { ...info, embed_module: 'model.embed_tokens', lm_head_module: 'lm_head' } as Parameters<typeof estimateRun>[0];
    const e = (lora: Record<string, unknown>) => estimateRun(withMods, parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora: { r: 16, dropout: 0, ...lora } }), 1).trainableParams;
    const table = 16 * (32000 + 4096);
    expect(e({ target_modules: ['q_proj', 'v_proj'] })).toBe(qv);
    expect(e({ target_modules: ['q_proj', 'v_proj', 'embed_tokens', 'lm_head'] })).toBe(qv + 2 * table);
    expect(e({ target_modules: ['q_proj', 'v_proj', 'lm_head'], rank_pattern: { lm_head: 4 } })).toBe(qv + table / 4);
    expect(e({ target_modules: '.*(q_proj|v_proj|embed_tokens)' })).toBe(qv + table);
    expect(e({ target_modules: 'all-linear' })).toBe(39_976_960);
    // trained whole instead (modules_to_save): no LoRA on it, its table counted once
    expect(e({ target_modules: ['q_proj', 'v_proj', 'lm_head'], modules_to_save: ['lm_head'] })).toBe(qv + 32000 * 4096);
  });
});
