// The TS side of the train-fault fixes: HF's string_to_bool for [bool] flags, --on_error into the RunSpec (and
// back into the command line), the --eval_steps warning, what --overwrite_output_dir may remove, and file-system
// errors said with the path, the cause and a hint.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { bool, parseBool } from '../../src-main/cli/options';
import { specFromFlags } from '../../src-main/cli/train';
import { ensureDir, ioError } from '../../src-main/core/io-error';
import { cliArgs } from '../../src-main/core/runs/cli-command';
import { earlierRunOutputs } from '../../src-main/core/runs/service';

let tmp: string;
beforeAll(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-faults-'))));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const base = { model_name_or_path: '/m', train_file: '/t.json', output_dir: '/o' };

describe('[bool] flags', () => {
  it('take HF\'s truthy and falsy values in any case, and refuse anything else', () => {
    for (const v of ['True', 'true', 'YES', 'y', 't', '1', 'on', undefined]) expect(parseBool(v), String(v)).toBe(true);
    for (const v of ['False', 'false', 'No', 'n', 'F', '0', 'off']) expect(parseBool(v), v).toBe(false);
    for (const v of ['Flase', 'ture', '2', '', 'lora']) expect(parseBool(v), v).toBeNull();
    expect(() => bool('Flase')).toThrow(/truthy or falsy/);
  });

  it('--use_lora: a typo is an error naming the flag, not full fine-tuning', () => {
    expect(() => specFromFlags({ ...base, use_lora: 'Flase' })).toThrow(/--use_lora Flase: a truthy or falsy value is expected/);
    expect(specFromFlags({ ...base, use_lora: 'no' }).spec.method).toBe('full');
    expect(specFromFlags({ ...base, use_lora: true }).spec.method).toBe('lora');
    expect(specFromFlags({ ...base, use_lora: false }).spec.method).toBe('full');
  });
});

describe('train flags', () => {
  it('--on_error (or --on-error) sets data.on_error, default fail, and is written back to the command line', () => {
    expect(specFromFlags(base).spec.data.on_error).toBe('fail');
    const skip = specFromFlags({ ...base, on_error: 'skip' }).spec;
    expect(skip.data.on_error).toBe('skip');
    expect(specFromFlags({ ...base, onError: 'skip' }).spec.data.on_error).toBe('skip');
    const args = cliArgs(skip);
    expect(args.join(' ')).toContain('--on_error skip');
    expect(cliArgs(specFromFlags(base).spec)).not.toContain('--on_error');
  });

  it('warns once when --eval_steps has no evaluation data', () => {
    expect(specFromFlags({ ...base, eval_steps: 5 }).warnings).toEqual([expect.stringMatching(/^--eval_steps 5: there is no evaluation data/)]);
    expect(specFromFlags({ ...base, eval_steps: 5, validation_file: '/v.json' }).warnings).toEqual([]);
    expect(specFromFlags({ ...base, eval_steps: 5, validation_split_percentage: 10 }).warnings).toEqual([]);
  });
});

describe('--overwrite_output_dir', () => {
  const folder = (name: string, files: Record<string, string>, dirs: string[] = []) => {
    const d = path.join(tmp, name);
    for (const x of dirs) fs.mkdirSync(path.join(d, x), { recursive: true });
    for (const [f, c] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(d, f)), { recursive: true });
      fs.writeFileSync(path.join(d, f), c);
    }
    return d;
  };

  it('removes a LoRA run\'s checkpoints and adapter, never the user\'s files', () => {
    const d = folder('lora', { 'runspec.json': JSON.stringify({ method: 'lora', model: { path: '/m' } }), 'adapter_config.json': '{}', 'adapter_model.safetensors': 'x', 'notes.txt': 'mine', 'train.json': '[]', 'config.json': '{}' }, ['checkpoint-2', 'checkpoint-4', 'checkpoint-x']);
    expect(earlierRunOutputs(d).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors', 'checkpoint-2', 'checkpoint-4']);
  });

  it('removes a full fine-tune\'s model and config.json, but not a base model that was trained from this folder', () => {
    const full = folder('full', { 'runspec.json': JSON.stringify({ method: 'full', model: { path: '/m' } }), 'config.json': '{}', 'model-00001-of-00002.safetensors': 'x', 'model-00002-of-00002.safetensors': 'x', 'model.safetensors.index.json': '{}', 'tokenizer.json': '{}' }, ['checkpoint-8']);
    expect(earlierRunOutputs(full).sort()).toEqual(['checkpoint-8', 'config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
    const own = folder('own', { config: '', 'config.json': '{}', 'model.safetensors': 'x' });
    fs.writeFileSync(path.join(own, 'runspec.json'), JSON.stringify({ method: 'full', model: { path: own } }));
    expect(earlierRunOutputs(own)).toEqual([]);
    // no runspec.json: not a run's folder, only checkpoint-* folders count
    const user = folder('user', { 'config.json': '{}', 'model.safetensors': 'x', 'adapter_config.json': '{}' }, ['checkpoint-1']);
    expect(earlierRunOutputs(user)).toEqual(['checkpoint-1']);
  });
});

describe('file-system errors', () => {
  it('name the path, the cause and what to do', () => {
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const e = ioError(enospc, '/data/out/x.tok', 'write', '--out') as Error & { hint?: string; code?: string };
    expect(e.message).toBe('cannot write /data/out/x.tok: no space left on the device (ENOSPC)');
    expect(e.code).toBe('IO');
    expect(e.hint).toBe('Free some space on the disk that holds /data/out, or choose another --out.');
    const erofs = Object.assign(new Error("EROFS: read-only file system, open '/ro/a'"), { code: 'EROFS', path: '/ro/a' });
    expect((ioError(erofs, undefined, 'write', '--output_dir') as Error & { hint?: string }).hint).toBe('/ro is on a read-only file system: choose a writable place with --output_dir.');
    const plain = new Error('not a file-system error');
    expect(ioError(plain, '/x')).toBe(plain);
  });

  it('ensureDir says why a folder cannot be created', () => {
    fs.writeFileSync(path.join(tmp, 'afile'), '');
    expect(() => ensureDir(path.join(tmp, 'afile', 'sub', 'dir'), '--output_dir')).toThrow(/^cannot create the folder .*afile\/sub\/dir: a part of its path is a file, not a folder \(ENOTDIR\)$/);
    expect(() => ensureDir(path.join(tmp, 'afile'))).toThrow(/ENOTDIR/);
    ensureDir(path.join(tmp, 'new', 'a', 'b'));
    expect(fs.statSync(path.join(tmp, 'new', 'a', 'b')).isDirectory()).toBe(true);
    ensureDir(path.join(tmp, 'new', 'a', 'b')); // there already: nothing to do
  });

  it.runIf(fs.existsSync('/proc/self'))('ensureDir under /proc fails at once (Node\'s recursive mkdir loops forever there, freezing the server)', () => {
    const t0 = Date.now();
    expect(() => ensureDir('/proc/llmt-out/sub', '--output_dir')).toThrow(/^cannot create the folder \/proc\/llmt-out\/sub: /);
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});
