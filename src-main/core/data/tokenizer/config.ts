// config.ts — what a model folder's JSON files say about special tokens, read the way HF transformers'
// `from_pretrained` reads them (tokenizer_config.json with `added_tokens_decoder`, or the legacy
// special_tokens_map.json + added_tokens.json), plus the bos/eos/pad ids of generation_config.json and config.json.
import fs from 'node:fs';
import path from 'node:path';

export type Json = Record<string, unknown>;

/** An added/special token as HF's `AddedToken` describes it. */
export interface TokenSpec {
  content: string;
  lstrip: boolean;
  rstrip: boolean;
  singleWord: boolean;
  /** null: the HF default (not special → normalized). */
  normalized: boolean | null;
  special: boolean;
}

export const ROLES = ['bos', 'eos', 'unk', 'pad'] as const;
export type Role = (typeof ROLES)[number];

/** transformers' SPECIAL_TOKENS_ATTRIBUTES, less additional_special_tokens (a list). */
export const SPECIAL_ATTRS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** The JSON files consulted next to the tokenizer file; each one present is part of the hash. */
export const CONFIG_FILES = ['tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'generation_config.json', 'config.json'] as const;

export interface FolderConfig {
  /** file name → contents, for the config files that exist. */
  raw: Map<string, Buffer>;
  tokenizerConfig: Json | null;
  generationConfig: Json | null;
  modelConfig: Json | null;
  /** The special-token attributes after HF's merge (value null: explicitly none). */
  specialAttrs: Map<string, TokenSpec | null>;
  additionalSpecial: TokenSpec[];
  /** Added tokens with the ids the folder gives them (added_tokens_decoder, or legacy added_tokens.json). */
  addedById: Map<number, TokenSpec>;
}

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readJson(dir: string, name: string, raw: Map<string, Buffer>): Json | null {
  const file = path.join(dir, name);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  raw.set(name, buf);
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObj(v)) throw new Error(`${file} is not a JSON object`);
  return v;
}

/** A token given as a string or as an AddedToken object ({"content": ...}); null for null, undefined if unusable. */
export function toTokenSpec(v: unknown, special: boolean): TokenSpec | null | undefined {
  if (v === null) return null;
  if (typeof v === 'string') return { content: v, lstrip: false, rstrip: false, singleWord: false, normalized: null, special };
  if (isObj(v) && typeof v.content === 'string') {
    return {
      content: v.content,
      lstrip: v.lstrip === true,
      rstrip: v.rstrip === true,
      singleWord: v.single_word === true,
      normalized: typeof v.normalized === 'boolean' ? v.normalized : null,
      special: typeof v.special === 'boolean' ? v.special : special,
    };
  }
  return undefined;
}

export function readFolderConfig(dir: string): FolderConfig {
  const raw = new Map<string, Buffer>();
  const tokenizerConfig = readJson(dir, 'tokenizer_config.json', raw);
  const specialMap = readJson(dir, 'special_tokens_map.json', raw);
  const addedJson = readJson(dir, 'added_tokens.json', raw);
  const generationConfig = readJson(dir, 'generation_config.json', raw);
  const modelConfig = readJson(dir, 'config.json', raw);

  const specialAttrs = new Map<string, TokenSpec | null>();
  let additionalSpecial: TokenSpec[] = [];
  const addedById = new Map<number, TokenSpec>();
  const tc = tokenizerConfig ?? {};
  for (const k of SPECIAL_ATTRS) {
    if (!(k in tc)) continue;
    const s = toTokenSpec(tc[k], true);
    if (s !== undefined) specialAttrs.set(k, s);
  }
  const addList = (v: unknown, into: TokenSpec[]) => {
    if (!Array.isArray(v)) return;
    for (const t of v) {
      const s = toTokenSpec(t, true);
      if (s && !into.some((x) => x.content === s.content)) into.push({ ...s, special: true });
    }
  };
  addList(tc.additional_special_tokens, additionalSpecial);

  if (isObj(tc.added_tokens_decoder)) {
    // Modern folders: added_tokens_decoder is the whole truth; special_tokens_map / added_tokens.json are ignored.
    for (const [idx, t] of Object.entries(tc.added_tokens_decoder)) {
      const s = toTokenSpec(t, false);
      const id = Number(idx);
      if (s && Number.isInteger(id) && id >= 0) addedById.set(id, s);
    }
  } else {
    // Legacy: special_tokens_map.json overrides tokenizer_config.json; added_tokens.json gives added ids.
    if (specialMap) {
      for (const [k, v] of Object.entries(specialMap)) {
        if (k === 'additional_special_tokens') {
          const merged = [...additionalSpecial];
          addList(v, merged);
          additionalSpecial = merged;
        } else if ((SPECIAL_ATTRS as readonly string[]).includes(k)) {
          const s = toTokenSpec(v, true);
          if (s !== undefined) specialAttrs.set(k, s && { ...s, special: true });
        }
      }
    }
    if (addedJson) {
      const specials = new Set([...[...specialAttrs.values()].filter((s) => s).map((s) => s!.content), ...additionalSpecial.map((s) => s.content)]);
      for (const [content, idx] of Object.entries(addedJson)) {
        if (typeof idx !== 'number' || !Number.isInteger(idx) || idx < 0) continue;
        const special = specials.has(content);
        addedById.set(idx, { content, lstrip: false, rstrip: false, singleWord: false, normalized: !special, special });
      }
    }
  }
  // HF passes the added_tokens_decoder's AddedToken (with its flags) for a special attribute of the same text.
  const byContent = new Map([...addedById.values()].map((s) => [s.content, s]));
  for (const [k, s] of specialAttrs) if (s && byContent.has(s.content)) specialAttrs.set(k, { ...byContent.get(s.content)!, special: true });

  return { raw, tokenizerConfig, generationConfig, modelConfig, specialAttrs, additionalSpecial, addedById };
}

/** All special-token strings (HF's `all_special_tokens_extended`): attributes first, then additional ones. */
export function allSpecialTokens(cfg: FolderConfig): TokenSpec[] {
  const out: TokenSpec[] = [];
  for (const k of SPECIAL_ATTRS) {
    const s = cfg.specialAttrs.get(k);
    if (s && !out.some((x) => x.content === s.content)) out.push(s);
  }
  for (const s of cfg.additionalSpecial) if (!out.some((x) => x.content === s.content)) out.push(s);
  return out;
}

const isId = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/** Every id of a `*_token_id` value from generation_config.json / config.json: an integer or a list of them. */
export function idList(v: unknown): number[] {
  return [...new Set((Array.isArray(v) ? v : [v]).filter(isId))];
}

/** A `*_token_id` value as one id: a non-negative integer or the first of a list (a role has one token). */
function idValue(v: unknown): number | null {
  return idList(v)[0] ?? null;
}

/**
 * The id for a role: the tokenizer config's token string (resolved by `lookup`), else generation_config.json's
 * then config.json's `<role>_token_id`, else the tokenizer's own default (`intrinsic`).
 */
export function resolveRoleId(cfg: FolderConfig, role: Role, lookup: (token: string) => number | null, intrinsic: number | null): number | null {
  const s = cfg.specialAttrs.get(`${role}_token`);
  if (s) {
    const id = lookup(s.content);
    if (id !== null) return id;
  }
  for (const c of [cfg.generationConfig, cfg.modelConfig]) {
    const id = c ? idValue(c[`${role}_token_id`]) : null;
    if (id !== null) return id;
  }
  return intrinsic;
}

/**
 * The ids that end a generation (HF `generate`'s eos_token_id): `eosId` (the tokenizer's eos) and every id of
 * generation_config.json's `eos_token_id` — config.json's when generation_config.json has no such key (the
 * engine reports the same ids in `info().eos_ids`). A list (Llama-3-Instruct: [128001, 128009]) counts whole.
 */
export function resolveEosIds(cfg: FolderConfig, eosId: number | null): number[] {
  const gen = cfg.generationConfig;
  const v = gen && 'eos_token_id' in gen ? gen.eos_token_id : cfg.modelConfig?.eos_token_id;
  return [...new Set([...(eosId !== null ? [eosId] : []), ...idList(v)])];
}
