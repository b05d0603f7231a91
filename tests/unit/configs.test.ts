// The shipped LoRA configs keep the seed's format and each family's real module names.
import fs from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

const dir = path.resolve(__dirname, '..', '..', 'configs');
const files = fs.readdirSync(dir).filter((f) => /^lora_config_.*\.json$/.test(f));

describe('configs/lora_config_*.json', () => {
  it('ships one per family of the seed, and for Llama 3.x, Qwen2.5 and Mistral', () => {
    expect(files.sort()).toEqual(
      ['baichuan', 'bloom', 'chatglm2_6b', 'chatglm_6b', 'falcon', 'llama', 'llama3', 'minicpm', 'mistral', 'pythia', 'qwen2'].map((f) => `lora_config_${f}.json`).sort(),
    );
  });

  it.each(files)('%s has exactly the seed keys with sane values', (f) => {
    const c = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
    expect(Object.keys(c).sort()).toEqual(['lora_alpha', 'lora_dropout', 'lora_r', 'lora_target_modules', 'modules_to_save']);
    expect(Number.isInteger(c.lora_r) && c.lora_r > 0).toBe(true);
    expect(c.lora_alpha).toBeGreaterThan(0);
    expect(c.lora_dropout).toBeGreaterThanOrEqual(0);
    expect(c.lora_dropout).toBeLessThan(1);
    expect(c.lora_target_modules.length).toBeGreaterThan(0);
    expect(c.modules_to_save === null || Array.isArray(c.modules_to_save)).toBe(true);
  });

  it('uses the module names of each family', () => {
    const targets = (f: string) => JSON.parse(fs.readFileSync(path.join(dir, `lora_config_${f}.json`), 'utf8')).lora_target_modules;
    expect(targets('llama')).toContain('q_proj');
    expect(targets('baichuan')).toContain('W_pack');
    expect(targets('chatglm_6b')).toContain('query_key_value');
    for (const f of ['llama3', 'qwen2', 'mistral']) expect(targets(f)).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
  });
});
