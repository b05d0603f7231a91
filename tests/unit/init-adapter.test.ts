// Continuing an existing PEFT adapter (`lora.init_adapter`; the seed's --peft_path, which loads it with
// PeftModel.from_pretrained(is_trainable=True) and leaves --lora_config unused): the folder is read, its own LoRA
// configuration replaces the run's lora settings (a setting it overrides is named), the engine job carries the folder
// (not when resuming: the checkpoint holds every adapter tensor), and bad folders are refused with the field named.
import fs from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import { cliArgs } from '../../src-main/core/runs/cli-command';
import { parseRunSpec, readAdapterFolder, resolveInitAdapter, RunSpecError, toEngineJob } from '../../src-main/core/runs/runspec';
import { flags } from '../helpers/cli-flags';
import { PEFT_SAVED, tempDirs } from '../helpers/tmp';

const tmpDir = tempDirs('init-adapter');

/** What PEFT's save_pretrained writes for LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=[q_proj, v_proj],
 *  modules_to_save=[lm_head], use_dora=True, rank_pattern={q_proj: 8}). */
const PEFT_CONFIG = { ...PEFT_SAVED, r: 16, lora_alpha: 32, lora_dropout: 0.1, modules_to_save: ['lm_head'], rank_pattern: { q_proj: 8 }, use_dora: true };

function adapter(cfg: unknown = PEFT_CONFIG, weights: string | null = 'adapter_model.safetensors'): string {
  const d = path.join(tmpDir(), 'adapter');
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'adapter_config.json'), JSON.stringify(cfg));
  if (weights) fs.writeFileSync(path.join(d, weights), 'x');
  return d;
}

// the model the adapters below were made for (their base_model_name_or_path)
const base = (out: string) => ({ model_name_or_path: '/models/llama-7b', train_file: '/t.json', output_dir: out });

describe('--peft_path / lora.init_adapter', () => {
  it("trains the adapter's own configuration, names the flags it overrides, and the job carries the folder", () => {
    const a = adapter();
    const out = path.join(tmpDir(), 'out');
    const { spec, warnings } = specFromFlags({ ...base(out), peft_path: a, lora_r: 4, lora_alpha: 32 });
    expect(spec.lora).toEqual({
      r: 16,
      alpha: 32,
      dropout: 0.1,
      target_modules: ['v_proj', 'q_proj'],
      modules_to_save: ['lm_head'],
      use_dora: true,
      rank_pattern: { q_proj: 8 },
      init_adapter: a,
    });
    // r 4 differs from the adapter's 16 and is named; alpha 32 agrees and is not
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`continuing the adapter in ${a}`);
    expect(warnings[0]).toContain("r 4 (the adapter's: 16)");
    expect(warnings[0]).not.toContain('alpha');
    const job = toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { lora: Record<string, unknown> };
    expect(job.lora.init_adapter).toBe(a);
    expect(job.lora.r).toBe(16);
    expect(job.lora.use_dora).toBe(true);
    // resuming: every adapter tensor comes from the checkpoint, the folder it started from is not read again
    const resumed = toEngineJob(spec, { train: '/t.tok', eval: null }, path.join(out, 'checkpoint-10')) as { lora: Record<string, unknown> };
    expect(resumed.lora.init_adapter).toBeUndefined();
    expect(resumed.lora.r).toBe(16);
  });

  it('gives no warning without lora flags, and a relative --peft_path becomes absolute', () => {
    const a = adapter();
    const cwd = process.cwd();
    process.chdir(path.dirname(a));
    try {
      const { spec, warnings } = specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: 'adapter' });
      expect(warnings).toEqual([]);
      expect(spec.lora.init_adapter).toBe(fs.realpathSync(a));
    } finally {
      process.chdir(cwd);
    }
  });

  it('writes --peft_path (and no lora flags) in the command line, which gives the same spec back', () => {
    const a = adapter();
    const { spec } = specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: a });
    const args = cliArgs(spec);
    expect(args).toContain('--peft_path');
    expect(args).not.toContain('--lora_r');
    expect(args).not.toContain('--use_dora');
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
  });

  it('refuses what cannot be continued, naming lora.init_adapter', () => {
    const out = path.join(tmpDir(), 'out');
    const refused = (o: Record<string, unknown>, re: RegExp) => {
      let err: unknown;
      try {
        specFromFlags({ ...base(out), ...o });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RunSpecError);
      expect((err as Error).message).toMatch(re);
      return err as RunSpecError;
    };
    expect(refused({ peft_path: path.join(out, 'nope') }, /does not exist/).fields[0]!.path).toBe('lora.init_adapter');
    const noCfg = tmpDir();
    expect(refused({ peft_path: noCfg }, /holds no adapter_config\.json, so it is not a PEFT adapter folder/).fields[0]!.path).toBe('lora.init_adapter');
    refused({ peft_path: adapter(PEFT_CONFIG, null) }, /no adapter_model\.safetensors/);
    // the seed era's adapter_model.bin is accepted (the engine reads it without running pickle code)
    expect(readAdapterFolder(adapter(PEFT_CONFIG, 'adapter_model.bin')).weights).toMatch(/adapter_model\.bin$/);
    refused({ peft_path: adapter({ ...PEFT_CONFIG, fan_in_fan_out: true }) }, /fan_in_fan_out/);
    refused({ peft_path: adapter({ ...PEFT_CONFIG, peft_type: 'IA3' }) }, /not a LoRA config/);
    refused({ peft_path: adapter(), use_lora: 'False' }, /--use_lora False trains every weight in full/);
    // an adapter inside (or being) the output folder: a fresh run there would remove it
    const a = adapter();
    refused({ peft_path: a, output_dir: path.dirname(a) }, /is inside the output folder/);
    refused({ peft_path: a, output_dir: a }, /is the output folder/);
  });

  it('resolves a spec from the app the same way (a full fine-tune from an adapter is refused)', () => {
    const a = adapter();
    const out = path.join(tmpDir(), 'out');
    const spec = parseRunSpec({ model: { path: '/models/llama-7b' }, data: { train: '/t' }, output: { dir: out }, lora: { init_adapter: a } });
    const r = resolveInitAdapter(spec, { init_adapter: a });
    expect(r.warnings).toEqual([]);
    expect(r.spec.lora.r).toBe(16);
    // resolving twice changes nothing (a stored spec resumed later)
    expect(resolveInitAdapter(r.spec, null).spec).toEqual(r.spec);
    const full = parseRunSpec({ model: { path: '/m' }, data: { train: '/t' }, output: { dir: out }, method: 'full', lora: { init_adapter: a } });
    expect(() => resolveInitAdapter(full)).toThrow(/full fine-tune/);
  });

  it('follows symbolic links when it checks that the output folder does not hold the adapter', () => {
    const a = adapter();
    const link = path.join(tmpDir(), 'link');
    fs.symlinkSync(path.dirname(a), link);
    expect(() => specFromFlags({ ...base(link), peft_path: a })).toThrow(/is inside the output folder .* \(through a symbolic link\)/);
    const link2 = path.join(tmpDir(), 'link-to-adapter');
    fs.symlinkSync(a, link2);
    expect(() => specFromFlags({ ...base(link2), peft_path: a })).toThrow(/is the output folder/);
  });

  it('a run that resumes does not need the adapter it started from: its checkpoint holds the configuration', () => {
    const a = adapter();
    const out = path.join(tmpDir(), 'out');
    const ck = path.join(out, 'checkpoint-20');
    fs.mkdirSync(ck, { recursive: true });
    fs.writeFileSync(path.join(ck, 'adapter_config.json'), JSON.stringify(PEFT_CONFIG));
    fs.writeFileSync(path.join(ck, 'adapter_model.safetensors'), 'x');
    fs.writeFileSync(path.join(ck, 'trainer_state.json'), '{"global_step": 20}');
    fs.rmSync(a, { recursive: true });
    const { spec, warnings } = specFromFlags({ ...base(out), peft_path: a });
    expect(spec.lora).toMatchObject({ r: 16, alpha: 32, use_dora: true, init_adapter: a });
    expect(warnings.join('\n')).toMatch(/is not there any more: the run resumes from .*checkpoint-20/);
    // the job of that resumed attempt does not name it
    expect((toEngineJob(spec, { train: '/t.tok', eval: null }, ck) as { lora: Record<string, unknown> }).lora.init_adapter).toBeUndefined();
    // starting afresh, it is needed
    expect(() => specFromFlags({ ...base(out), peft_path: a, overwrite_output_dir: true })).toThrow(/does not exist/);
  });

  it("reads what other PEFT versions wrote: unknown keys and a trained adapter's initialisation are ignored, a base-changing one is refused", () => {
    const seedEra = adapter({ ...PEFT_CONFIG, enable_lora: null, merge_weights: false, some_future_key: 1 });
    const r = specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: seedEra });
    expect(r.spec.lora.r).toBe(16);
    expect(r.warnings.join('\n')).toMatch(/some_future_key are not known here and are ignored/);
    expect(() => specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: adapter({ ...PEFT_CONFIG, enable_lora: [true, false, true] }) })).toThrow(/enable_lora/);
    for (const init of ['orthogonal', 'gaussian', false]) expect(specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: adapter({ ...PEFT_CONFIG, init_lora_weights: init }) }).spec.lora.r).toBe(16);
    expect(specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: adapter({ ...PEFT_CONFIG, init_lora_weights: 'eva', eva_config: { rho: 2 } }) }).spec.lora.r).toBe(16);
    expect(() => specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: adapter({ ...PEFT_CONFIG, init_lora_weights: 'pissa' }) })).toThrow(/changed the base weights .* convert it to a plain LoRA adapter first/);
    // PEFT's conversion to a plain adapter writes init_lora_weights true and leaves the initialiser's settings
    for (const k of ['corda_config', 'lora_ga_config', 'loftq_config'])
      expect(specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: adapter({ ...PEFT_CONFIG, init_lora_weights: true, [k]: { rank: 16 } }) }).spec.lora.r, k).toBe(16);
    // KaSA and block-diagonal LoRA are on with any sub-config, {} included (PEFT's defaults)
    for (const [k, v] of [['kasa_config', {}], ['use_bdlora', {}], ['use_bdlora', true]] as const)
      expect(() => specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: adapter({ ...PEFT_CONFIG, [k]: v }) }), k).toThrow(new RegExp(`${k} .*is not supported`));
    // a config file given to set a run up is still checked for typos
    expect(() => specFromFlags({ ...base('/o'), lora_config: path.join(seedEra, 'adapter_config.json') })).toThrow(/unknown field\(s\) some_future_key/);
  });

  it('names --use_dora False against a DoRA adapter, and an adapter made for another base', () => {
    const a = adapter();
    const r = specFromFlags({ ...base(path.join(tmpDir(), 'out')), model_name_or_path: '/m', peft_path: a, use_dora: 'False' });
    expect(r.spec.lora.use_dora).toBe(true);
    expect(r.warnings.join('\n')).toMatch(/use_dora false \(the adapter's: true\)/);
    // made for /models/llama-7b: this run's /m is another model; the same folder name elsewhere is not
    expect(r.warnings.join('\n')).toMatch(/was made for \/models\/llama-7b .* and this run's model is \/m/);
    const same = specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: a, model_name_or_path: '/elsewhere/llama-7b' });
    expect(same.warnings.join('\n')).not.toMatch(/was made for/);
  });

  it('a whole model folder is not an adapter: the error says to use it as the model', () => {
    const d = tmpDir();
    fs.writeFileSync(path.join(d, 'config.json'), '{}');
    fs.writeFileSync(path.join(d, 'model.safetensors'), 'x');
    expect(() => specFromFlags({ ...base(path.join(tmpDir(), 'out')), peft_path: d })).toThrow(/holds a whole model .* give it as the model \(--model_name_or_path\)/);
  });
});
