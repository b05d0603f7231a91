// types.ts — what the data pipeline needs from a tokenizer, whatever implements it (HF `tokenizers` for
// tokenizer.json, SentencePiece for tokenizer.model). Templates add every special token themselves.
export interface Tokenizer {
  readonly kind: 'tokenizers' | 'sentencepiece';
  /** sha256 (hex) over the tokenizer files' names and contents: part of the .tok cache key. */
  readonly hash: string;
  /** Number of ids the tokenizer can produce (incl. added tokens). */
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  /**
   * Every id that ends a generation, as HF's `generate` stops: eosId, plus each id of generation_config.json's
   * `eos_token_id` (an int or a list, e.g. Llama-3-Instruct's [128001, 128009]), or config.json's when
   * generation_config.json has no such key. Without duplicates, eosId first.
   */
  readonly eosIds: readonly number[];
  readonly padId: number | null;
  readonly unkId: number | null;
  /** Special/added tokens by content, e.g. {"<s>": 1, "[gMASK]": 64790}. */
  readonly specialTokens: Readonly<Record<string, number>>;
  /** The ids HF's `decode(ids, skip_special_tokens=True)` leaves out: added tokens flagged special and the tokens the
   *  config names (bos, eos, unk, pad, additional_special_tokens). Added tokens not flagged special (Qwen2.5's
   *  `<tool_call>`, `<think>`) are text and stay. */
  readonly specialIds: ReadonlySet<number>;
  /** Text → ids exactly as HF's `tokenizer(text, add_special_tokens=False).input_ids` (no bos/eos added). */
  encode(text: string): number[];
  /** ids → text, skipping nothing (special tokens are rendered); an id past the vocabulary renders as '' (as HF). */
  decode(ids: number[]): string;
  /** The id of a token string (special or regular), or null. */
  tokenToId(token: string): number | null;
  /** Optional: many texts at once (same result as encode on each), used by `data prepare` for speed. */
  encodeBatch?(texts: string[]): Promise<number[][]>;
}
