// hf-tokenizer.ts — the Tokenizer for tokenizer.json folders, through npm `tokenizers` (HF's Rust library,
// the same code as Python's PreTrainedTokenizerFast). Like transformers, special tokens named in the
// config files but missing from tokenizer.json are added before use.
import { createRequire } from 'node:module';
import path from 'node:path';

import { AddedToken, Tokenizer as RustTokenizer } from 'tokenizers';

import type { Tokenizer } from './types.js';
import { allSpecialTokens, resolveEosIds, resolveRoleId, type FolderConfig, type TokenSpec } from './config.js';
import { SyncTokenizerWorker, type ExtraToken } from './sync-worker.js';

export type HfTokenizer = Tokenizer & {
  /** Many texts at once, in parallel in Rust (same result as encode on each). */
  encodeBatch(texts: string[]): Promise<number[][]>;
  /** Stops the worker thread behind the synchronous encode/decode. */
  dispose(): void;
};

interface JsonAddedToken {
  id: number;
  content: string;
  special?: boolean;
}

function tokenizersPath(): string {
  return createRequire(path.join(__dirname, 'noop.js')).resolve('tokenizers');
}

/**
 * What PreTrainedTokenizerFast.__init__ adds on load: added_tokens_decoder entries and special-token
 * strings that tokenizer.json does not list as added tokens (in that order, special flag as HF sets it).
 */
function tokensToAdd(cfg: FolderConfig, jsonAdded: Set<string>): ExtraToken[] {
  const specials = allSpecialTokens(cfg);
  const specialNames = new Set(specials.map((s) => s.content));
  const out: TokenSpec[] = [];
  const seen = new Set(jsonAdded);
  for (const [, s] of [...cfg.addedById].sort((a, b) => a[0] - b[0])) {
    if (seen.has(s.content)) continue;
    seen.add(s.content);
    out.push(s);
  }
  for (const s of specials) {
    if (seen.has(s.content)) continue;
    seen.add(s.content);
    out.push(s);
  }
  return out.map((s) => {
    const special = s.special || specialNames.has(s.content);
    return { ...s, special, normalized: s.normalized ?? !special };
  });
}

/** `text`: tokenizer.json as read once (hashed, parsed as `json`): the worker loads the same snapshot. */
export function loadHfTokenizer(file: string, text: string, json: unknown, cfg: FolderConfig, hash: string): HfTokenizer {
  let rust: RustTokenizer;
  try {
    rust = RustTokenizer.fromString(text);
  } catch (e) {
    throw new Error(`${file} is not a valid tokenizer.json: ${(e as Error).message}`);
  }
  const jsonAddedList: JsonAddedToken[] = [];
  const rawAdded = (json as { added_tokens?: unknown }).added_tokens;
  if (Array.isArray(rawAdded)) {
    for (const t of rawAdded as Partial<JsonAddedToken>[]) {
      if (typeof t?.content === 'string' && typeof t.id === 'number') jsonAddedList.push({ id: t.id, content: t.content, special: t.special === true });
    }
  }
  const extra = tokensToAdd(cfg, new Set(jsonAddedList.map((t) => t.content)));
  for (const t of extra) {
    rust.addAddedTokens([new AddedToken(t.content, t.special, { singleWord: t.singleWord, leftStrip: t.lstrip, rightStrip: t.rstrip, normalized: t.normalized })]);
  }
  const worker = new SyncTokenizerWorker(tokenizersPath(), file, text, extra);

  const specials: Record<string, number> = {};
  let maxId = -1;
  for (const t of [...jsonAddedList, ...extra]) {
    const id = rust.tokenToId(t.content);
    if (id !== null && !(t.content in specials)) specials[t.content] = id;
    if (id !== null) maxId = Math.max(maxId, id);
  }
  const vocabSize = Math.max(rust.getVocabSize(true), maxId + 1);
  // what decode(skip_special_tokens=True) skips: added tokens flagged special, and every token the config names
  const specialIds = new Set<number>();
  for (const t of [...jsonAddedList, ...extra]) {
    const id = rust.tokenToId(t.content);
    if (id !== null && t.special) specialIds.add(id);
  }
  for (const t of allSpecialTokens(cfg)) {
    const id = rust.tokenToId(t.content);
    if (id !== null) specialIds.add(id);
  }
  // Ids past the tokenizer (a model's padded embedding rows: Pythia 50304 vs 50277, ChatGLM2 65024 vs 64794) are
  // no token: decode renders nothing for them, as HF's `tokenizer.decode` does. A value that is no id at all
  // (negative, fractional) is still an error.
  const knownIds = (ids: number[]) => {
    for (const id of ids) if (!Number.isInteger(id) || id < 0) throw new RangeError(`${id} is not a token id (a non-negative integer)`);
    return ids.some((id) => id >= vocabSize) ? ids.filter((id) => id < vocabSize) : ids;
  };
  const lookup = (t: string) => rust.tokenToId(t);
  const modelUnk = (json as { model?: { unk_token?: unknown } }).model?.unk_token;
  const eosId = resolveRoleId(cfg, 'eos', lookup, null);
  const tok: HfTokenizer = {
    kind: 'tokenizers',
    hash,
    vocabSize,
    bosId: resolveRoleId(cfg, 'bos', lookup, null),
    eosId,
    eosIds: Object.freeze(resolveEosIds(cfg, eosId)),
    unkId: resolveRoleId(cfg, 'unk', lookup, typeof modelUnk === 'string' ? rust.tokenToId(modelUnk) : null),
    padId: resolveRoleId(cfg, 'pad', lookup, null),
    specialTokens: Object.freeze(specials),
    specialIds,
    encode: (text: string) => worker.call<number[]>({ op: 'encode', text }),
    decode: (ids: number[]) => worker.call<string>({ op: 'decode', ids: knownIds(ids) }),
    tokenToId: (token: string) => rust.tokenToId(token),
    encodeBatch: async (texts: string[]) => {
      const encs = await rust.encodeBatch(texts, { addSpecialTokens: false });
      return encs.map((e) => e.getIds());
    },
    dispose: () => worker.dispose(),
  };
  return tok;
}
