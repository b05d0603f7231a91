// DoRA (PEFT's LoraConfig(use_dora=True), weight-decomposed LoRA) on the app's side: a PEFT config with use_dora true
// is honoured (it used to be refused by name), `--use_dora` sets it, the engine job carries lora.use_dora, the
// command line round-trips it, a full fine-tune refuses it, resuming across LoRA/DoRA is named, and llama.cpp's
// adapter-only GGUF refuses a DoRA adapter (no magnitude vectors there) with a hint to merge. The merge itself is
// checked against PEFT in tests/integration/dora-merge.test.ts.
import fs from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import * as models from '../../src-main/core/models/manager';
import { exportAdapterGguf } from '../../src-main/core/models/gguf';
import { cliArgs, cliCommand } from '../../src-main/core/runs/cli-command';
import { parseRunSpec, readLoraConfigFile, toEngineJob } from '../../src-main/core/runs/runspec';
import { resumeMismatch } from '../../src-main/core/runs/service';
import { flags } from '../helpers/cli-flags';
import { writeSafetensors } from '../helpers/native';
import { PEFT_SAVED, tempDirs } from '../helpers/tmp';

const tmpDir = tempDirs('dora');
function writeJson(obj: unknown, name = 'adapter_config.json'): string {
  const f = path.join(tmpDir(), name);
  fs.writeFileSync(f, JSON.stringify(obj));
  return f;
}

/** What PEFT 0.21's LoraConfig(use_dora=True, ...).save_pretrained() writes (the keys the app reads and refuses). */
const PEFT_DORA = { ...PEFT_SAVED, peft_version: '0.21.2', use_dora: true };
const base = ['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o'];
const job = (spec: ReturnType<typeof parseRunSpec>) => (toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { lora?: Record<string, unknown> }).lora;

describe('DoRA in the RunSpec and the engine job', () => {
  it('a PEFT LoraConfig JSON with use_dora true is honoured: spec.lora.use_dora and the job\'s lora.use_dora', () => {
    const { spec, warnings } = specFromFlags(flags([...base, '--lora_config', writeJson(PEFT_DORA)]));
    expect(warnings).toEqual([]);
    expect(spec.lora).toEqual({ r: 8, alpha: 16, dropout: 0.05, target_modules: ['v_proj', 'q_proj'], modules_to_save: null, use_dora: true });
    expect(job(spec)).toEqual({ r: 8, alpha: 16, dropout: 0.05, target_modules: ['v_proj', 'q_proj'], modules_to_save: null, use_dora: true });
    expect(readLoraConfigFile(writeJson({ ...PEFT_DORA, use_dora: false })).lora).not.toHaveProperty('use_dora');
    // a wrong type is named, not taken as off
    expect(() => specFromFlags(flags([...base, '--lora_config', writeJson({ ...PEFT_DORA, use_dora: 'yes' })]))).toThrow(/lora\.use_dora/);
  });

  it('--use_dora (bare, or True/False) sets it over --lora_config; plain LoRA leaves it out of the job', () => {
    expect(job(specFromFlags(flags([...base, '--use_dora'])).spec)).toMatchObject({ use_dora: true });
    expect(job(specFromFlags(flags([...base, '--use_dora', 'True', '--lora_r', '16'])).spec)).toMatchObject({ r: 16, use_dora: true });
    const off = specFromFlags(flags([...base, '--lora_config', writeJson(PEFT_DORA), '--use_dora', 'False'])).spec;
    expect(off.lora).not.toHaveProperty('use_dora');
    expect(job(off)).not.toHaveProperty('use_dora');
    expect(job(specFromFlags(flags(base)).spec)).not.toHaveProperty('use_dora');
    expect(() => specFromFlags(flags([...base, '--use_dora', 'maybe']))).toThrow(/--use_dora maybe: a truthy or falsy value/);
  });

  it('is refused with a full fine-tune (--use_lora False), from the flag, a LoRA config or a RunSpec', () => {
    expect(() => specFromFlags(flags([...base, '--use_lora', 'False', '--use_dora']))).toThrow(/--use_dora: DoRA is a kind of LoRA adapter, and --use_lora False trains every weight in full/);
    expect(() => specFromFlags(flags([...base, '--use_lora', 'False', '--lora_config', writeJson(PEFT_DORA)]))).toThrow(/lora\.use_dora: .*needs method "lora", not a full fine-tune/);
    expect(() => parseRunSpec({ model: { path: '/m' }, data: { train: '/t' }, output: { dir: '/o' }, method: 'full', lora: { use_dora: true } })).toThrow(/lora\.use_dora/);
    // --use_dora False with a full fine-tune says nothing
    expect(specFromFlags(flags([...base, '--use_lora', 'False', '--use_dora', 'False'])).spec.method).toBe('full');
  });

  it('round-trips through the equivalent command line as --use_dora', () => {
    const s = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora: { r: 16, use_dora: true, use_rslora: true } });
    const args = cliArgs(s);
    expect(args).toContain('--use_dora');
    expect(specFromFlags(flags(args)).spec).toEqual(s);
    expect(cliCommand(s)).toMatch(/\n {2}--use_dora/);
    expect(cliArgs(parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } }))).not.toContain('--use_dora');
  });

  it('resuming names a LoRA checkpoint for a DoRA run, and the reverse', () => {
    const ck = tmpDir();
    fs.writeFileSync(path.join(ck, 'adapter_config.json'), JSON.stringify({ r: 8, target_modules: ['q_proj'] }));
    const spec = (use_dora?: boolean) => parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora: { r: 8, target_modules: ['q_proj'], ...(use_dora ? { use_dora } : {}) } });
    expect(resumeMismatch(spec(), ck)).toEqual([]);
    expect(resumeMismatch(spec(true), ck).join()).toMatch(/plain LoRA adapter but this run trains DoRA/);
    fs.writeFileSync(path.join(ck, 'adapter_config.json'), JSON.stringify({ r: 8, target_modules: ['q_proj'], use_dora: true }));
    expect(resumeMismatch(spec(), ck).join()).toMatch(/DoRA adapter but this run trains plain LoRA/);
    expect(resumeMismatch(spec(true), ck)).toEqual([]);
  });
});

describe("llama.cpp's adapter-only GGUF and DoRA", () => {
  function doraAdapter(): string {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(PEFT_DORA));
    const m = 'base_model.model.model.layers.0.self_attn.q_proj';
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), {
      [`${m}.lora_A.weight`]: { shape: [8, 4], data: new Float32Array(32).fill(0.1) },
      [`${m}.lora_B.weight`]: { shape: [4, 8], data: new Float32Array(32).fill(0.1) },
      [`${m}.lora_magnitude_vector`]: { shape: [4], data: new Float32Array(4).fill(1) },
    });
    return dir;
  }

  it('refuses a DoRA adapter with UNSUPPORTED, saying why and to merge first (or export with --adapter)', async () => {
    const ad = doraAdapter();
    const out = path.join(tmpDir(), 'ad.gguf');
    const why = /UNSUPPORTED: .* is a DoRA adapter \(use_dora true\): llama\.cpp's LoRA GGUF .* no place for DoRA's magnitude vectors.*llms-train model merge.*--adapter \(without --adapter-only\)/;
    await expect(exportAdapterGguf({ modelDir: tmpDir(), adapterDir: ad, out })).rejects.toThrow(why);
    await expect(models.exportModel({ model: tmpDir(), adapter: ad, adapterOnly: true, out })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(why) });
    expect(fs.existsSync(out)).toBe(false);
  });
});
