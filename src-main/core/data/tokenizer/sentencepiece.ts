// sentencepiece.ts — the Tokenizer for tokenizer.model / ice_text.model folders (LLaMA, Baichuan, ChatGLM2,
// ChatGLM-6B v1): real SentencePiece (WASM, @sctg/sentencepiece-js) for the pieces, plus what each family's
// Python tokenizer does around it: added-token splitting, ChatGLM2's extra ids, ChatGLM v1's text preprocessing.
import type { Tokenizer } from './types.js';
import { allSpecialTokens, resolveEosIds, resolveRoleId, type FolderConfig, type Role, type TokenSpec } from './config.js';
import { PieceType, parseSpModel, withoutDummyPrefix, type SpModelInfo } from './sp-model.js';
import { AddedTokenSplitter } from './split.js';

export type SpFlavor = 'plain' | 'chatglm2' | 'chatglm1';

/** The WASM processor's surface that we use. */
interface SpProcessor {
  loadFromB64StringModel(b64: string): Promise<void>;
  encodeIds(text: string): number[];
  decodeIds(ids: number[]): string;
}
interface SpModule {
  SentencePieceProcessor: new () => SpProcessor;
}

// A non-literal specifier keeps TypeScript from loading the package's 3 MB .d.ts; import() because the
// package is ESM-only and this code compiles to CommonJS.
const SP_PACKAGE: string = '@sctg/sentencepiece-js';
let spModule: Promise<SpModule> | undefined;
function loadSpModule(): Promise<SpModule> {
  spModule ??= import(SP_PACKAGE) as Promise<SpModule>;
  return spModule;
}

/** ChatGLM2's SPTokenizer numbers these from the SentencePiece size (tokenization_chatglm.py). */
const CHATGLM2_SPECIALS = ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'];
/** ChatGLM-6B v1 ChatGLMTokenizer's defaults for its extra attributes. */
const CHATGLM1_DEFAULTS: Record<string, string[]> = {
  bos_token: ['<sop>', 'sop'],
  eos_token: ['<eop>', 'eop'],
  end_token: ['</s>'],
  mask_token: ['[MASK]'],
  gmask_token: ['[gMASK]'],
  pad_token: ['<pad>'],
  unk_token: ['<unk>'],
};

export interface SpOptions {
  flavor: SpFlavor;
  modelFile: string;
  modelBytes: Buffer;
  cfg: FolderConfig;
  hash: string;
}

export type SentencePieceTokenizer = Tokenizer & {
  readonly flavor: SpFlavor;
  /** Many texts at once (same result as encode on each). */
  encodeBatch(texts: string[]): Promise<number[][]>;
  dispose(): void;
};

export async function loadSentencePiece(o: SpOptions): Promise<SentencePieceTokenizer> {
  let info: SpModelInfo;
  try {
    info = parseSpModel(o.modelBytes);
  } catch (e) {
    throw new Error(`${o.modelFile} is not a valid SentencePiece model: ${(e as Error).message}`);
  }
  const { SentencePieceProcessor } = await loadSpModule();
  const sp = new SentencePieceProcessor();
  await sp.loadFromB64StringModel(o.modelBytes.toString('base64'));
  // The WASM wrapper drops Load()'s status; a loaded model gives at least <unk> for any text.
  if (sp.encodeIds('a').length === 0) throw new Error(`${o.modelFile}: SentencePiece could not load the model`);
  // LlamaTokenizer with `legacy: false` (Mistral v0.3, Llama-2 folders saved by recent transformers): the "▁" before a
  // text is placed by the pre-tokenizer, the model itself adds none
  let bare: SpProcessor | null = null;
  if (o.flavor === 'plain' && o.cfg.tokenizerConfig?.legacy === false) {
    bare = new SentencePieceProcessor();
    await bare.loadFromB64StringModel(Buffer.from(withoutDummyPrefix(o.modelBytes)).toString('base64'));
  }
  return new SpTokenizer(o, info, sp, bare);
}

class SpTokenizer implements Tokenizer {
  readonly kind = 'sentencepiece' as const;
  readonly flavor: SpFlavor;
  readonly hash: string;
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly eosIds: readonly number[];
  readonly padId: number | null;
  readonly unkId: number | null;
  readonly specialTokens: Readonly<Record<string, number>>;
  readonly specialIds: ReadonlySet<number>;
  private readonly specials: Record<string, number> = {};
  /** id → text for ids decode renders itself (specials, added tokens). */
  private readonly render = new Map<number, string>();
  private readonly added = new Map<string, number>();
  private readonly splitter: AddedTokenSplitter;
  /** ChatGLM v1: ids are piece ids + num_image_tokens. */
  private readonly offset: number;
  private readonly removeSpace: boolean;
  private readonly lowerCase: boolean;

  /** `legacy: false` — how the "▁" before a text is placed (transformers' Metaspace pre-tokenizer prepend_scheme):
   *  "first", only before a text at the very start of the input (not after a special token), or "never"
   *  (add_prefix_space false); null: legacy, SentencePiece's own dummy prefix before every text. */
  private readonly prependScheme: 'first' | 'never' | null;

  constructor(
    o: SpOptions,
    private readonly info: SpModelInfo,
    private readonly sp: SpProcessor,
    /** the model without its dummy prefix (legacy: false) */
    private readonly bare: SpProcessor | null = null,
  ) {
    this.flavor = o.flavor;
    this.prependScheme = bare ? (o.cfg.tokenizerConfig?.add_prefix_space === false ? 'never' : 'first') : null;
    this.hash = o.hash;
    const cfg = o.cfg;
    const tc = cfg.tokenizerConfig ?? {};
    const nImage = typeof tc.num_image_tokens === 'number' ? tc.num_image_tokens : 20000;
    this.offset = o.flavor === 'chatglm1' ? nImage : 0;
    this.removeSpace = o.flavor === 'chatglm1' && tc.remove_space === true;
    this.lowerCase = o.flavor === 'chatglm1' && tc.do_lower_case === true;
    let size = info.pieces.length + this.offset;

    const specials = this.specials;
    const addSpecial = (content: string, id: number) => {
      if (!(content in specials)) specials[content] = id;
    };
    // The model's own control/unknown pieces (<unk>, <s>, </s>, ...).
    info.types.forEach((t, i) => {
      if (t === PieceType.Control || t === PieceType.Unknown) {
        addSpecial(info.pieces[i]!, i + this.offset);
        this.render.set(i + this.offset, info.pieces[i]!);
      }
    });
    if (o.flavor === 'chatglm2') {
      CHATGLM2_SPECIALS.forEach((t, k) => {
        const id = info.pieces.length + k;
        addSpecial(t, id);
        this.render.set(id, t);
      });
      size = info.pieces.length + CHATGLM2_SPECIALS.length;
    }

    // HF's added tokens: added_tokens_decoder / added_tokens.json with their ids, then special-token strings
    // (new ones numbered from the current size, as `_add_tokens` does).
    const splitSpecs: TokenSpec[] = [];
    for (const [id, s] of [...cfg.addedById].sort((a, b) => a[0] - b[0])) {
      this.added.set(s.content, id);
      this.render.set(id, s.content);
      splitSpecs.push(s);
      size = Math.max(size, id + 1);
    }
    for (const s of allSpecialTokens(cfg)) {
      if (this.added.has(s.content)) continue;
      const id = this.tokenToId(s.content) ?? size++;
      this.added.set(s.content, id);
      if (!this.render.has(id) && (id >= info.pieces.length + this.offset || id < this.offset)) this.render.set(id, s.content);
      splitSpecs.push(s);
    }
    if (o.flavor === 'plain') {
      // LlamaTokenizer (and Baichuan's copy) default unk/bos/eos to "<unk>", "<s>", "</s>" when the config
      // does not name them (null: none): they are added tokens then, cut out of text like the others.
      const defaults: [string, number][] = [['unk_token', info.unkId], ['bos_token', info.bosId], ['eos_token', info.eosId]];
      for (const [attr, id] of defaults) {
        if (cfg.specialAttrs.has(attr) || id < 0 || this.added.has(info.pieces[id]!)) continue;
        const content = info.pieces[id]!;
        this.added.set(content, id);
        splitSpecs.push({ content, lstrip: false, rstrip: false, singleWord: false, normalized: false, special: true });
      }
    }
    // ChatGLM names like "sop"/"eop" are words: never cut them out of running text ("people").
    const splittable = o.flavor === 'plain' ? splitSpecs : splitSpecs.filter((s) => !/^[\p{L}\p{N}_]+$/u.test(s.content));
    this.splitter = new AddedTokenSplitter(splittable);
    for (const [c, id] of this.added) addSpecial(c, id);

    const intrinsic: Record<Role, number | null> = {
      unk: info.unkId >= 0 ? info.unkId + this.offset : null,
      bos: info.bosId >= 0 ? info.bosId + this.offset : null,
      eos: info.eosId >= 0 ? info.eosId + this.offset : null,
      pad: info.padId >= 0 ? info.padId + this.offset : null,
    };
    if (o.flavor === 'chatglm2') {
      // ChatGLMTokenizer (v2): pad = unk, eos = </s>, and no bos (the prefix is [gMASK] sop).
      intrinsic.pad = intrinsic.unk;
      intrinsic.bos = null;
    }
    if (o.flavor === 'chatglm1') {
      for (const [attr, names] of Object.entries(CHATGLM1_DEFAULTS)) {
        const given = typeof tc[attr] === 'string' ? [tc[attr] as string] : [];
        const name = [...given, ...names].find((n) => this.pieceId(n) !== null);
        if (name === undefined) continue;
        const id = this.pieceId(name)!;
        addSpecial(name, id);
        this.render.set(id, name);
        const role = attr.replace(/_token$/, '') as Role;
        if ((['bos', 'eos', 'unk', 'pad'] as string[]).includes(role)) intrinsic[role] = id;
      }
    }
    this.specialTokens = Object.freeze({ ...specials });
    this.specialIds = new Set(Object.values(specials)); // SentencePiece control and user-defined specials
    for (const id of Object.values(specials)) size = Math.max(size, id + 1);
    this.vocabSize = size;
    const lookup = (t: string) => this.tokenToId(t);
    this.bosId = resolveRoleId(cfg, 'bos', lookup, intrinsic.bos);
    this.eosId = resolveRoleId(cfg, 'eos', lookup, intrinsic.eos);
    this.eosIds = Object.freeze(resolveEosIds(cfg, this.eosId));
    this.unkId = resolveRoleId(cfg, 'unk', lookup, intrinsic.unk);
    this.padId = resolveRoleId(cfg, 'pad', lookup, intrinsic.pad);
  }

  private pieceId(piece: string): number | null {
    const id = this.info.pieceToId.get(piece);
    return id === undefined ? null : id + this.offset;
  }

  tokenToId(token: string): number | null {
    return this.added.get(token) ?? this.specials[token] ?? this.pieceId(token);
  }

  private encodeText(text: string): number[] {
    if (this.flavor !== 'chatglm1') return this.sp.encodeIds(text);
    // ChatGLM-6B v1 (tokenization_chatglm.py): optional space squeeze / lower case, then \n → <n>,
    // \t → <|tab|>, runs of 2–80 spaces → <|blank_n|>, then SentencePiece ids shifted by num_image_tokens.
    let t = text;
    if (this.removeSpace) t = t.trim().split(/\s+/).join(' ');
    if (this.lowerCase) t = t.toLowerCase();
    t = t.replace(/\n/g, '<n>').replace(/\t/g, '<|tab|>');
    t = t.replace(/ {2,}/g, (m) => {
      let out = '';
      let n = m.length;
      while (n > 80) {
        out += '<|blank_80|>';
        n -= 80;
      }
      return out + (n >= 2 ? `<|blank_${n}|>` : ' ');
    });
    return this.sp.encodeIds(t).map((id) => id + this.offset);
  }

  /**
   * A text between added tokens as LlamaTokenizerFast with `legacy: false` encodes it (transformers converts the
   * model with no normalizer and a Metaspace pre-tokenizer, prepend_scheme "first"): spaces become "▁", and a "▁" is
   * put before the text only when it starts the input and does not start with one already — so "[INST] Hi" is
   * [INST], "▁Hi", where the legacy layout gives [INST], "▁▁Hi".
   */
  private encodeNonLegacy(text: string, atStart: boolean): number[] {
    let s = text.replace(/ /g, '\u2581');
    if (this.prependScheme === 'first' && atStart && !s.startsWith('\u2581')) s = '\u2581' + s;
    return this.bare!.encodeIds(s);
  }

  encode(text: string): number[] {
    const out: number[] = [];
    this.splitter.split(text).forEach((p, k) => {
      if ('token' in p) out.push(this.tokenToId(p.token)!);
      else for (const id of this.bare ? this.encodeNonLegacy(p.text, k === 0) : this.encodeText(p.text)) out.push(id);
    });
    return out;
  }

  async encodeBatch(texts: string[]): Promise<number[][]> {
    return texts.map((t) => this.encode(t));
  }

  private decodeRun(ids: number[]): string {
    if (ids.length === 0) return '';
    if (this.flavor !== 'chatglm1') return this.sp.decodeIds(ids);
    const t = this.sp.decodeIds(ids.map((id) => id - this.offset).filter((id) => id >= 0));
    let s = t.replace(/<n>/g, '\n').replace(/<\|tab\|>/g, '\t');
    s = s.replace(/<\|blank_(\d+)\|>/g, (m, n: string) => (Number(n) >= 2 && Number(n) <= 80 ? ' '.repeat(Number(n)) : m));
    return s;
  }

  decode(ids: number[]): string {
    let out = '';
    let run: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0) throw new RangeError(`${id} is not a token id (a non-negative integer)`);
      const r = this.render.get(id);
      if (r !== undefined) {
        out += this.decodeRun(run) + r;
        run = [];
      } else if (id < this.info.pieces.length + this.offset) run.push(id);
      // else: an id past the model with no token (a gap, or past the tokenizer: a model's padded embedding rows,
      // e.g. ChatGLM2's 65024 vs 64794) renders nothing and leaves the text around it whole, as HF's fast decode.
    }
    return out + this.decodeRun(run);
  }

  dispose(): void {
    // The WASM instance is freed with this object.
  }
}
