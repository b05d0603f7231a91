// catalog.ts — the model families of the seed project's table (plus Falcon, BLOOM, MiniCPM, Llama 3.x, Qwen2.5 and
// Mistral) with their Hugging Face ids, the prompt template their users train with, and the LoRA preset from
// configs/. The wizard shows it beside the local folders found under the configured model directories.
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
  // The instruct models of these families are trained and prompted with their own chat_template (tokenizer_config.json):
  // Llama 3.x's <|start_header_id|>…<|eot_id|>, Qwen2.5's ChatML <|im_start|>…<|im_end|>, Mistral's [INST] … [/INST].
  // meta-llama's repositories are gated: accept the license on the Hub and give a token.
  {
    id: 'llama3', name: 'Llama 3.x', modelType: 'llama', language: 'en', template: 'chat_template', loraConfig: 'lora_config_llama3.json',
    models: [
      { hfId: 'meta-llama/Llama-3.2-1B-Instruct', params: '1.2B' },
      { hfId: 'meta-llama/Llama-3.2-3B-Instruct', params: '3.2B' },
      { hfId: 'meta-llama/Llama-3.1-8B-Instruct', params: '8B' },
    ],
  },
  {
    id: 'qwen2', name: 'Qwen2.5', modelType: 'qwen2', language: 'zh+en', template: 'chat_template', loraConfig: 'lora_config_qwen2.json',
    models: [
      { hfId: 'Qwen/Qwen2.5-0.5B-Instruct', params: '0.5B' },
      { hfId: 'Qwen/Qwen2.5-1.5B-Instruct', params: '1.5B' },
      { hfId: 'Qwen/Qwen2.5-7B-Instruct', params: '7.6B' },
    ],
  },
  {
    id: 'mistral', name: 'Mistral', modelType: 'mistral', language: 'en', template: 'chat_template', loraConfig: 'lora_config_mistral.json',
    models: [{ hfId: 'mistralai/Mistral-7B-Instruct-v0.3', params: '7.2B' }],
  },
];

type Json = Record<string, unknown>;

/** A JSON file of a model folder, or null (absent, unreadable, not an object). */
function readJson(dir: string, name: string): Json | null {
  try {
    const v: unknown = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : null;
  } catch {
    return null;
  }
}

/** A Llama 3.x config.json (model_type "llama"): rope_scaling of rope_type "llama3" (3.1 and later), or Llama 3's
 *  128256-token vocabulary with <|begin_of_text|> = 128000 as bos (3.0). */
export function isLlama3Config(cfg: Json | null | undefined): boolean {
  if (!cfg) return false;
  const rs = cfg.rope_scaling as Json | null | undefined;
  if (rs && typeof rs === 'object' && (rs.rope_type === 'llama3' || rs.type === 'llama3')) return true;
  return cfg.vocab_size === 128256 && (cfg.bos_token_id === 128000 || cfg.bos_token_id === undefined);
}

/**
 * The catalog family a local folder belongs to, from its config.json (model_type, and a few names). `nameHint` is the
 * folder's path or name; when it is a folder, its config.json tells Llama 3.x from the LLaMA 1/2 family (both are
 * model_type "llama"), and a chat_template family whose folder has no chat_template (a base model:
 * tokenizer_config.json without one) gets the alpaca template instead.
 */
export function familyOf(modelType: string | null | undefined, nameHint = ''): CatalogFamily | undefined {
  const n = nameHint.toLowerCase();
  const byId = (id: string) => CATALOG.find((f) => f.id === id);
  let fam: CatalogFamily | undefined;
  if (modelType === 'chatglm') fam = byId(/chatglm-?6b$|chatglm-6b/.test(n) && !/chatglm2/.test(n) ? 'chatglm' : 'chatglm2');
  else if (modelType === 'llama') {
    if (/belle/.test(n)) fam = byId('belle');
    else if (/llama-?3(?![0-9]|b\b)/.test(n) || (nameHint && isLlama3Config(readJson(nameHint, 'config.json')))) fam = byId('llama3');
    else if (/chinese/.test(n)) fam = byId('chinese-llama-alpaca');
    else fam = byId('open-llama');
  } else if (modelType === 'bloom' && /tigerbot/.test(n)) fam = byId('tigerbot');
  else if (modelType === 'RefinedWebModel' || modelType === 'RefinedWeb') fam = byId('falcon');
  else fam = CATALOG.find((f) => f.modelType === modelType && f.id !== 'tigerbot');
  if (fam?.template === 'chat_template') {
    const tc = nameHint ? readJson(nameHint, 'tokenizer_config.json') : null;
    const tpl = tc?.chat_template;
    if (tc && !(typeof tpl === 'string' ? tpl.trim() : Array.isArray(tpl) && tpl.length)) return { ...fam, template: 'alpaca' };
  }
  return fam;
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
