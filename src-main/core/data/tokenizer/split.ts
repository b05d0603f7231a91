// split.ts — cuts added/special token strings out of text the way HF's slow `PreTrainedTokenizer.tokenize`
// does (its Trie: leftmost, then longest match; then the lstrip/rstrip/single_word rules), so that a
// SentencePiece tokenizer gives the ids HF's Python tokenizer gives for text that contains "<s>" and the like.
import type { TokenSpec } from './config.js';

/** Python's str.isspace() characters (differs from JS \s: has \x1c-\x1f and \x85, lacks \ufeff). */
const PY_SPACE = '\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000';
const isPySpace = (ch: string) => PY_SPACE.includes(ch);

function pyLstrip(s: string): string {
  let i = 0;
  while (i < s.length && isPySpace(s[i]!)) i++;
  return s.slice(i);
}
function pyRstrip(s: string): string {
  let j = s.length;
  while (j > 0 && isPySpace(s[j - 1]!)) j--;
  return s.slice(0, j);
}

export type Piece = { text: string } | { token: string };

export class AddedTokenSplitter {
  private readonly byFirst = new Map<string, string[]>();
  private readonly specs = new Map<string, TokenSpec>();

  constructor(tokens: Iterable<TokenSpec>) {
    for (const t of tokens) {
      if (!t.content || this.specs.has(t.content)) continue;
      this.specs.set(t.content, t);
      const first = t.content[0]!;
      const list = this.byFirst.get(first) ?? [];
      list.push(t.content);
      this.byFirst.set(first, list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.length - a.length);
  }

  get size(): number {
    return this.specs.size;
  }

  has(token: string): boolean {
    return this.specs.has(token);
  }

  /** Text → plain-text pieces and added tokens, in order (never empty pieces). */
  split(text: string): Piece[] {
    if (this.specs.size === 0) return text ? [{ text }] : [];
    // HF's Trie.split + cut_text: cut at each match (leftmost, longest first), dropping zero-width pieces.
    const parts: string[] = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      const hit = this.byFirst.get(text[i]!)?.find((c) => text.startsWith(c, i));
      if (hit) {
        if (i > start) parts.push(text.slice(start, i));
        parts.push(hit);
        i += hit.length;
        start = i;
      } else i++;
    }
    if (start < text.length) parts.push(text.slice(start));
    // HF's PreTrainedTokenizer.tokenize, line for line: the strip rules use the neighbours as they were.
    for (let k = 0; k < parts.length; k++) {
      const tok = parts[k]!;
      const spec = this.specs.get(tok);
      if (!spec) continue;
      const left = k > 0 ? parts[k - 1]! : null;
      const right = k < parts.length - 1 ? parts[k + 1]! : null;
      if (spec.rstrip && right) parts[k + 1] = pyLstrip(right);
      if (spec.lstrip && left) parts[k - 1] = pyRstrip(left);
      if (spec.singleWord && left && left[left.length - 1] !== ' ') {
        parts[k - 1] += tok;
        parts[k] = '';
      } else if (spec.singleWord && right && right[0] !== ' ') {
        parts[k] += right;
        parts[k + 1] = '';
      }
    }
    const out: Piece[] = [];
    for (const p of parts) {
      if (!p) continue;
      out.push(this.specs.has(p) ? { token: p } : { text: p });
    }
    return out;
  }
}
