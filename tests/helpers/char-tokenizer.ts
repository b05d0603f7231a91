// char-tokenizer.ts — a character-level stand-in tokenizer for the unit tests of the data pipeline and
// generation: one id per character (code point + 10), specials below 10. Not a real tokenizer's ids.
import type { Tokenizer } from '../../src-main/core/data/tokenizer/types';

export const charTok: Tokenizer = {
  kind: 'tokenizers',
  hash: 'char-tokenizer-v1',
  vocabSize: 0x110000 + 10,
  bosId: 1,
  eosId: 2,
  eosIds: [2],
  padId: 0,
  unkId: 3,
  specialTokens: { '<s>': 1, '</s>': 2, '[gMASK]': 4, sop: 5, eop: 6 },
  specialIds: new Set([1, 2, 4, 5, 6]),
  encode: (t) => [...t].map((c) => c.codePointAt(0)! + 10),
  decode: (ids) => ids.map((i) => (i >= 10 ? String.fromCodePoint(i - 10) : `<${i}>`)).join(''),
  tokenToId: (s) => ({ '<s>': 1, '</s>': 2, '[gMASK]': 4, sop: 5, eop: 6 })[s] ?? null,
};
