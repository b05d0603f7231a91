// tmp.ts — temporary folders for unit tests, removed after each test.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach } from 'vitest';

/** A function making a fresh temporary folder (prefix llmt-<name>-); every one made is removed after each test. */
export function tempDirs(name: string): () => string {
  const made: string[] = [];
  afterEach(() => {
    for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });
  return () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `llmt-${name}-`));
    made.push(d);
    return d;
  };
}

/** What `LoraConfig(r=8, lora_alpha=16, target_modules=[v_proj, q_proj]).save_pretrained()` writes (PEFT 0.17): every
 *  key at PEFT's default but the ones set. */
export const PEFT_SAVED = {
  alpha_pattern: {},
  auto_mapping: null,
  base_model_name_or_path: '/models/llama-7b',
  bias: 'none',
  corda_config: null,
  eva_config: null,
  exclude_modules: null,
  fan_in_fan_out: false,
  inference_mode: true,
  init_lora_weights: true,
  layer_replication: null,
  layers_pattern: null,
  layers_to_transform: null,
  loftq_config: {},
  lora_alpha: 16,
  lora_bias: false,
  lora_dropout: 0.05,
  megatron_config: null,
  megatron_core: 'megatron.core',
  modules_to_save: null,
  peft_type: 'LORA',
  qalora_group_size: 16,
  r: 8,
  rank_pattern: {},
  revision: null,
  runtime_config: { ephemeral_gpu_offload: false },
  target_modules: ['v_proj', 'q_proj'],
  target_parameters: null,
  task_type: 'CAUSAL_LM',
  trainable_token_indices: null,
  use_dora: false,
  use_qalora: false,
  use_rslora: false,
};
