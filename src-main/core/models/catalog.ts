// catalog.ts — the model families of the seed project's table (plus Falcon, BLOOM and MiniCPM) with their
// Hugging Face ids, the prompt template their users train with, and the LoRA preset from configs/. The wizard
// shows it beside the local folders found under the configured model directories.
import fs from 'node:fs';
import path from 'node:path';

import type { TemplateName } from '../data/templates.js';

export interface CatalogModel {
  hfId: string;
  /** approximate parameter count, for display */
  params: string;
  /** Chinese-LLaMA-Alpaca's LoRA deltas need merging into the original LLaMA first (see docs/models.md). */
  needsMerge?: boolean;
}

export interface CatalogFamily {
  id: string;
  name: string;
  /** The engine family (model_type) the weights load as. */
  modelType: string;
  language: 'zh' | 'en' | 'zh+en';
  template: TemplateName;
  /** configs/<file> — the seed's LoRA config for this family. */
  loraConfig: string;
  models: CatalogModel[];
}

export const CATALOG: readonly CatalogFamily[] = [
  {
    id: 'chinese-llama-alpaca', name: 'Chinese-LLaMA-Alpaca', modelType: 'llama', language: 'zh', template: 'alpaca', loraConfig: 'lora_config_llama.json',
    models: [
      { hfId: 'ziqingyang/chinese-llama-plus-lora-7b', params: '7B', needsMerge: true },
      { hfId: 'ziqingyang/chinese-llama-plus-lora-13b', params: '13B', needsMerge: true },
      { hfId: 'ziqingyang/chinese-alpaca-plus-lora-7b', params: '7B', needsMerge: true },
      { hfId: 'ziqingyang/chinese-alpaca-plus-lora-13b', params: '13B', needsMerge: true },
    ],
  },
  {
    id: 'open-llama', name: 'Open-LLaMA', modelType: 'llama', language: 'en', template: 'alpaca', loraConfig: 'lora_config_llama.json',
    models: [
      { hfId: 'openlm-research/open_llama_7b', params: '7B' },
      { hfId: 'openlm-research/open_llama_13b', params: '13B' },
    ],
  },
  {
    id: 'belle', name: 'BELLE', modelType: 'llama', language: 'zh', template: 'belle', loraConfig: 'lora_config_llama.json',
    models: [
      { hfId: 'BelleGroup/BELLE-LLaMA-EXT-7B', params: '7B', needsMerge: true },
      { hfId: 'BelleGroup/BELLE-LLaMA-EXT-13B', params: '13B', needsMerge: true },
    ],
  },
  {
    id: 'chatglm', name: 'ChatGLM-6B', modelType: 'chatglm', language: 'zh+en', template: 'chatglm', loraConfig: 'lora_config_chatglm_6b.json',
    models: [{ hfId: 'THUDM/chatglm-6b', params: '6.2B' }],
  },
  {
    id: 'chatglm2', name: 'ChatGLM2-6B', modelType: 'chatglm', language: 'zh+en', template: 'chatglm2', loraConfig: 'lora_config_chatglm2_6b.json',
    models: [{ hfId: 'THUDM/chatglm2-6b', params: '6.2B' }],
  },
  {
    id: 'baichuan', name: 'Baichuan', modelType: 'baichuan', language: 'zh+en', template: 'baichuan-chat', loraConfig: 'lora_config_baichuan.json',
    models: [
      { hfId: 'baichuan-inc/baichuan-7B', params: '7B' },
      { hfId: 'baichuan-inc/Baichuan-13B-Chat', params: '13B' },
    ],
  },
  {
    id: 'tigerbot', name: 'TigerBot', modelType: 'bloom', language: 'zh+en', template: 'raw', loraConfig: 'lora_config_bloom.json',
    models: [
      { hfId: 'TigerResearch/tigerbot-7b-sft', params: '7B' },
      { hfId: 'TigerResearch/tigerbot-7b-base', params: '7B' },
    ],
  },
  {
    id: 'pythia', name: 'Pythia', modelType: 'gpt_neox', language: 'en', template: 'raw', loraConfig: 'lora_config_pythia.json',
    models: [
      { hfId: 'EleutherAI/pythia-70m-deduped', params: '70M' },
      { hfId: 'EleutherAI/pythia-1b-deduped', params: '1B' },
      { hfId: 'EleutherAI/pythia-6.9b-deduped', params: '6.9B' },
      { hfId: 'EleutherAI/pythia-12b-deduped', params: '12B' },
    ],
  },
  {
    id: 'bloom', name: 'BLOOM', modelType: 'bloom', language: 'zh+en', template: 'raw', loraConfig: 'lora_config_bloom.json',
    models: [
      { hfId: 'bigscience/bloom-560m', params: '560M' },
      { hfId: 'bigscience/bloomz-7b1-mt', params: '7.1B' },
    ],
  },
  {
    id: 'falcon', name: 'Falcon', modelType: 'falcon', language: 'en', template: 'raw', loraConfig: 'lora_config_falcon.json',
    models: [
      { hfId: 'tiiuae/falcon-7b', params: '7B' },
      { hfId: 'tiiuae/falcon-7b-instruct', params: '7B' },
      { hfId: 'tiiuae/falcon-40b', params: '40B' },
    ],
  },
  {
    id: 'minicpm', name: 'MiniCPM', modelType: 'minicpm', language: 'zh+en', template: 'minicpm', loraConfig: 'lora_config_minicpm.json',
    models: [{ hfId: 'openbmb/MiniCPM-2B-sft-bf16', params: '2.7B' }],
  },
];

/** The catalog family a local folder belongs to, from its config.json (model_type, and a few names). */
export function familyOf(modelType: string | null | undefined, nameHint = ''): CatalogFamily | undefined {
  const n = nameHint.toLowerCase();
  if (modelType === 'chatglm') return CATALOG.find((f) => f.id === (/chatglm-?6b$|chatglm-6b/.test(n) && !/chatglm2/.test(n) ? 'chatglm' : 'chatglm2'));
  if (modelType === 'llama') {
    if (/belle/.test(n)) return CATALOG.find((f) => f.id === 'belle');
    if (/chinese/.test(n)) return CATALOG.find((f) => f.id === 'chinese-llama-alpaca');
    return CATALOG.find((f) => f.id === 'open-llama');
  }
  if (modelType === 'bloom' && /tigerbot/.test(n)) return CATALOG.find((f) => f.id === 'tigerbot');
  if (modelType === 'RefinedWebModel' || modelType === 'RefinedWeb') return CATALOG.find((f) => f.id === 'falcon');
  return CATALOG.find((f) => f.modelType === modelType && f.id !== 'tigerbot');
}

export interface LocalModel {
  path: string;
  name: string;
  modelType: string | null;
  /** where it was found: a configured folder, or registered (downloaded, the demo) */
  source: 'registered' | 'scanned';
}

/** Folders with a config.json directly under each directory (and one level deeper: org/name layouts). */
export function scanModelDirs(dirs: readonly string[], limit = 500): LocalModel[] {
  const out: LocalModel[] = [];
  const seen = new Set<string>();
  const consider = (dir: string) => {
    const cfg = path.join(dir, 'config.json');
    if (seen.has(dir) || !fs.existsSync(cfg)) return false;
    seen.add(dir);
    let modelType: string | null = null;
    try {
      const j = JSON.parse(fs.readFileSync(cfg, 'utf8')) as { model_type?: unknown };
      modelType = typeof j.model_type === 'string' ? j.model_type : null;
    } catch {
      /* a broken config.json is reported when the folder is inspected */
    }
    out.push({ path: dir, name: path.basename(dir), modelType, source: 'scanned' });
    return true;
  };
  const list = (d: string) => {
    try {
      return fs.readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => path.join(d, e.name));
    } catch {
      return [];
    }
  };
  for (const root of dirs) {
    if (consider(root)) continue;
    for (const a of list(root)) {
      if (out.length >= limit) return out;
      if (!consider(a)) for (const b of list(a)) if (out.length < limit) consider(b);
    }
  }
  return out;
}

/** The seed's LoRA presets (configs/lora_config_*.json) with their values. */
export function loraPresets(configsDir: string): { name: string; file: string; r: number; alpha: number; dropout: number; targetModules: string[]; modulesToSave: string[] | null }[] {
  if (!fs.existsSync(configsDir)) return [];
  return fs
    .readdirSync(configsDir)
    .filter((f) => /^lora_config_.+\.json$/.test(f))
    .sort()
    .flatMap((f) => {
      try {
        const j = JSON.parse(fs.readFileSync(path.join(configsDir, f), 'utf8')) as Record<string, unknown>;
        return [{
          name: f.replace(/^lora_config_|\.json$/g, ''),
          file: path.join(configsDir, f),
          r: Number(j.lora_r ?? 8),
          alpha: Number(j.lora_alpha ?? 32),
          dropout: Number(j.lora_dropout ?? 0.05),
          targetModules: Array.isArray(j.lora_target_modules) ? j.lora_target_modules.map(String) : [],
          modulesToSave: Array.isArray(j.modules_to_save) ? j.modules_to_save.map(String) : null,
        }];
      } catch {
        return [];
      }
    });
}
