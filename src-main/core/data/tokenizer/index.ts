// index.ts — loadTokenizer(modelDir): the tokenizer of a model folder, as the data pipeline's `Tokenizer`.
// tokenizer.json (HF Rust tokenizers) is preferred, else tokenizer.model / ice_text.model (SentencePiece);
// special tokens come from the folder's JSON files. Code in the folder (tokenization_*.py) is never run.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { readFolderConfig, type FolderConfig } from './config.js';
import { loadHfTokenizer, type HfTokenizer } from './hf-tokenizer.js';
import { loadSentencePiece, type SentencePieceTokenizer, type SpFlavor } from './sentencepiece.js';

export type { Tokenizer } from './types.js';
export type { HfTokenizer } from './hf-tokenizer.js';
export type { SentencePieceTokenizer, SpFlavor } from './sentencepiece.js';

/** What loadTokenizer returns: the `Tokenizer` interface plus a batch encode and dispose(). */
export type LoadedTokenizer = HfTokenizer | SentencePieceTokenizer;

/** The files looked for, in order of preference. */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer.model', 'ice_text.model'] as const;

/**
 * sha256 over the files used, sorted by name: for each, its name, a NUL, its byte length in decimal,
 * a NUL, then its bytes.
 */
export function hashFiles(files: Map<string, Buffer>): string {
  const h = createHash('sha256');
  for (const name of [...files.keys()].sort()) {
    const buf = files.get(name)!;
    h.update(`${name}\0${buf.length}\0`);
    h.update(buf);
  }
  return h.digest('hex');
}

/**
 * transformers' `clean_up_tokenization` (PreTrainedTokenizerBase): the spaces English word-level tokenizers left
 * before punctuation and contractions, removed by `decode` when the tokenizer's `clean_up_tokenization_spaces` is
 * true. Llama 3's tokenizer_config.json sets it; transformers ≥ 4.45 defaults to false, so only an explicit true
 * turns it on (as there). The same replacements in the same order, each over the whole text.
 */
export function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/** decode as HF's: cleaned up when tokenizer_config.json says `clean_up_tokenization_spaces: true`. */
function withCleanUp<T extends LoadedTokenizer>(tok: T, cfg: FolderConfig): T {
  if (cfg.tokenizerConfig?.clean_up_tokenization_spaces !== true) return tok;
  const decode = tok.decode.bind(tok);
  return Object.assign(tok, { decode: (ids: number[]) => cleanUpTokenization(decode(ids)) });
}

function isChatGlm(cfg: FolderConfig): boolean {
  const tc = cfg.tokenizerConfig ?? {};
  const mc = cfg.modelConfig ?? {};
  const cls = typeof tc.tokenizer_class === 'string' ? tc.tokenizer_class : '';
  const autoMap = JSON.stringify(tc.auto_map ?? '');
  return /chatglm/i.test(cls) || mc.model_type === 'chatglm' || /tokenization_chatglm/i.test(autoMap);
}

export async function loadTokenizer(modelDir: string): Promise<LoadedTokenizer> {
  const dir = path.resolve(modelDir);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new Error(`tokenizer folder ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new Error(`${dir} is not a folder`);
  const name = TOKENIZER_FILES.find((f) => fs.existsSync(path.join(dir, f)));
  if (!name) {
    // a PEFT adapter folder given as the model (it holds adapter_config.json, no config.json): say what it is
    const adapterCfg = path.join(dir, 'adapter_config.json');
    if (fs.existsSync(adapterCfg) && !fs.existsSync(path.join(dir, 'config.json'))) {
      let base = '';
      try {
        const b = (JSON.parse(fs.readFileSync(adapterCfg, 'utf8')) as { base_model_name_or_path?: unknown }).base_model_name_or_path;
        if (typeof b === 'string' && b) base = b;
      } catch {
        /* an unreadable config: the adapter's loader says what is wrong with it */
      }
      throw Object.assign(new Error(`${dir} is a PEFT adapter${base ? ` for ${base}` : ''}, not a model folder`), {
        code: 'BAD_INPUT',
        hint: `Give it as the adapter (--adapter ${dir}) and its base model${base ? ` (${base})` : ''} as the model (--model).`,
      });
    }
    throw new Error(`no tokenizer in ${dir}: looked for ${TOKENIZER_FILES.join(', ')}`);
  }
  const file = path.join(dir, name);
  const cfg = readFolderConfig(dir);
  const bytes = fs.readFileSync(file);
  const hash = hashFiles(new Map([...cfg.raw, [name, bytes]]));

  if (name === 'tokenizer.json') {
    const text = bytes.toString('utf8');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new Error(`${file} is not a valid tokenizer.json: ${(e as Error).message}`);
    }
    if (typeof json !== 'object' || json === null || !('model' in json)) throw new Error(`${file} is not a valid tokenizer.json: no "model"`);
    return withCleanUp(loadHfTokenizer(file, text, json, cfg, hash), cfg);
  }
  const flavor: SpFlavor = name === 'ice_text.model' ? 'chatglm1' : isChatGlm(cfg) ? 'chatglm2' : 'plain';
  return withCleanUp(await loadSentencePiece({ flavor, modelFile: file, modelBytes: bytes, cfg, hash }), cfg);
}
