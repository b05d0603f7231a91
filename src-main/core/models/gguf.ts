// gguf.ts — exports a (merged) HF model folder as a GGUF file for llama.cpp / Ollama / LM Studio, plus an
// Ollama Modelfile whose TEMPLATE and stop tokens match the training template (data/templates.ts).
// GGUF v3 as llama.cpp's gguf-py writes it: header, metadata KVs, tensor infos, data aligned to 32 bytes.
// Llama-style Q/K rows are permuted from HF's rotate-half layout to GGML's interleaved RoPE layout.
// Families (planFor, after convert_hf_to_gguf.py): llama (Llama 3.x's llama3 RoPE as a rope_freqs tensor), mistral
// (as llama), qwen2 (no Q/K permutation: llama.cpp runs it with NeoX RoPE), baichuan (7B as llama with W_pack
// split; 13B only at 40 layers, where llama.cpp picks ALiBi), minicpm, gpt_neox, bloom, falcon (7B and 40B
// layouts), chatglm2/3;
// anything else (ChatGLM-6B v1, falcon-rw, …) fails with code UNSUPPORTED. Fused QKV rows are reordered to
// llama.cpp's [Q|K|V]. exportAdapterGguf writes llama.cpp's LoRA adapter GGUF for the same families.
// Reads safetensors only (convert a pytorch_model.bin folder first). Writes `<out>.tmp` and renames it.
import fs from 'node:fs';
import path from 'node:path';

import { TEMPLATES, type TemplateName } from '../data/templates.js';

// ---- safetensors (read side) ---------------------------------------------------------------------------

type StDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

interface StTensor {
  name: string;
  dtype: StDtype;
  shape: number[];
  file: string;
  offset: number; // absolute byte offset in file
  nbytes: number;
}

function readStHeader(file: string): StTensor[] {
  const fd = fs.openSync(file, 'r');
  try {
    const lenBuf = Buffer.alloc(8);
    if (fs.readSync(fd, lenBuf, 0, 8, 0) !== 8) throw new Error(`${file} is truncated (no safetensors header)`);
    const n = Number(lenBuf.readBigUInt64LE(0));
    const size = fs.fstatSync(fd).size;
    if (n > 100_000_000 || 8 + n > size) throw new Error(`${file} has a damaged safetensors header`);
    const hb = Buffer.alloc(n);
    fs.readSync(fd, hb, 0, n, 8);
    const h = JSON.parse(hb.toString('utf8')) as Record<string, { dtype: StDtype; shape: number[]; data_offsets: [number, number] }>;
    const out: StTensor[] = [];
    for (const [name, v] of Object.entries(h)) {
      if (name === '__metadata__') continue;
      const [b, e] = v.data_offsets;
      if (8 + n + e > size) throw new Error(`${file}: tensor '${name}' ends past the end of the file (truncated download?)`);
      out.push({ name, dtype: v.dtype, shape: v.shape, file, offset: 8 + n + b, nbytes: e - b });
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** The tensors of a folder's model.safetensors or sharded model.safetensors.index.json. */
export function openSafetensorsDir(dir: string): Map<string, StTensor> {
  const index = path.join(dir, 'model.safetensors.index.json');
  const single = path.join(dir, 'model.safetensors');
  const files: string[] = [];
  if (fs.existsSync(index)) {
    const j = JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> };
    if (!j.weight_map) throw new Error(`${index} has no weight_map`);
    for (const f of new Set(Object.values(j.weight_map))) files.push(path.join(dir, f));
  } else if (fs.existsSync(single)) {
    files.push(single);
  } else if (fs.existsSync(path.join(dir, 'pytorch_model.bin')) || fs.existsSync(path.join(dir, 'pytorch_model.bin.index.json'))) {
    throw new Error(`${dir} holds pytorch_model.bin only: convert it to safetensors first (llms-train model convert)`);
  } else {
    throw new Error(`no model.safetensors in ${dir}`);
  }
  const m = new Map<string, StTensor>();
  for (const f of files) {
    if (!fs.existsSync(f)) throw new Error(`${path.basename(f)} is missing (listed in the index); the download of ${dir} is incomplete`);
    for (const t of readStHeader(f)) m.set(t.name, t);
  }
  return m;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
function floatToHalf(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0]!;
  const sign = (x >>> 16) & 0x8000;
  let e = (x >>> 23) & 0xff;
  let m = x & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  e = e - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e;
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++;
  return sign | r;
}
export function floatToBf16(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0]!;
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

function readF32(t: StTensor): Float32Array {
  const buf = Buffer.alloc(t.nbytes);
  const fd = fs.openSync(t.file, 'r');
  try {
    let got = 0;
    while (got < t.nbytes) {
      const n = fs.readSync(fd, buf, got, Math.min(t.nbytes - got, 1 << 30), t.offset + got);
      if (n <= 0) throw new Error(`${t.file}: cannot read tensor '${t.name}' (truncated?)`);
      got += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  const n = t.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  if (t.dtype === 'F32') out.set(new Float32Array(buf.buffer, buf.byteOffset, n));
  else if (t.dtype === 'F16') for (let i = 0; i < n; i++) out[i] = halfToFloat(buf.readUInt16LE(2 * i));
  else if (t.dtype === 'BF16') for (let i = 0; i < n; i++) (u32buf[0] = buf.readUInt16LE(2 * i) << 16), (out[i] = f32buf[0]!);
  else if (t.dtype === 'F64') for (let i = 0; i < n; i++) out[i] = buf.readDoubleLE(8 * i);
  else throw new Error(`tensor '${t.name}' has dtype ${t.dtype}, not a float type`);
  return out;
}

// ---- tokenizer → GGUF vocabulary ----------------------------------------------------------------------------

/** GGUF token types (llama.cpp's llama_token_type; the same numbers as SentencePiece piece types). */
const TT = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

export interface GgufVocab {
  model: 'llama' | 'gpt2';
  pre?: string;
  /** whether tokenizer.json's post-processor puts bos first (gguf-py's SpecialVocab reads it so) */
  addBos?: boolean;
  tokens: string[];
  scores?: number[];
  types: number[];
  merges?: string[];
  bos: number | null;
  eos: number | null;
  unk: number | null;
  pad: number | null;
}

function readJsonIf(file: string): Record<string, unknown> | null {
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>) : null;
}

/** The Split regexes of the byte-level BPE tokenizers llama.cpp names (llama-vocab.cpp keeps each tokenizer.json
 *  original beside its adapted form): Llama 3's digits in runs of up to 3, Qwen2's one by one. */
const LLAMA3_SPLIT = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN2_SPLIT = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

type PreTok = { type?: string; use_regex?: boolean; pattern?: { Regex?: string; String?: string }; pretokenizers?: PreTok[] } | null | undefined;

/** tokenizer.ggml.pre for a byte-level BPE's pre-tokenizer, as convert_hf_to_gguf.py names it (it hashes a test
 *  string's tokens; here the pre-tokenizer itself is read): a lone ByteLevel with its own (GPT-2) regex is "gpt-2";
 *  a Split with Llama 3's regex before a regex-free ByteLevel is "llama-bpe" (Llama 3's ignore_merges: a piece that
 *  is itself a token is taken whole) or, without ignore_merges, "smaug-bpe" (the same regex in llama.cpp); Qwen2's
 *  regex is "qwen2"; anything else "default". */
function bpePre(pt: PreTok, ignoreMerges: boolean): string {
  if (pt?.type === 'ByteLevel') return pt.use_regex !== false ? 'gpt-2' : 'default';
  const parts = pt?.type === 'Sequence' ? (pt.pretokenizers ?? []) : [];
  const splits = parts.filter((p) => p?.type === 'Split');
  const bl = parts.filter((p) => p?.type === 'ByteLevel');
  if (parts.length === 2 && splits.length === 1 && bl.length === 1 && bl[0]!.use_regex === false) {
    const re = splits[0]!.pattern?.Regex;
    if (re === LLAMA3_SPLIT) return ignoreMerges ? 'llama-bpe' : 'smaug-bpe';
    if (re === QWEN2_SPLIT) return 'qwen2';
  }
  return 'default';
}

/** gguf-py's reading of a TemplateProcessing post-processor: bos is added when the single-sequence template
 *  starts with a special token that is the bos (or cls) token; undefined without such a template. */
function postProcessorAddsBos(pp: unknown, bos: string | null): boolean | undefined {
  if (!pp || typeof pp !== 'object') return undefined;
  const o = pp as { type?: string; single?: { SpecialToken?: { id?: string } }[]; processors?: unknown[] };
  let out: boolean | undefined;
  for (const p of o.type === 'Sequence' && Array.isArray(o.processors) ? o.processors : [o]) {
    const q = p as { type?: string; single?: { SpecialToken?: { id?: string } }[] };
    if (q?.type === 'RobertaProcessing') out = true;
    else if (q?.type === 'TemplateProcessing' && Array.isArray(q.single) && q.single.length > 1) {
      const first = q.single[0]?.SpecialToken?.id;
      if (first) out = bos === null || first === bos;
    }
  }
  return out;
}

function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/** SentencePiece ModelProto pieces with scores and types (protobuf field 1: {1 piece, 2 score, 3 type}). */
function spPieces(buf: Buffer): { piece: string; score: number; type: number }[] {
  const out: { piece: string; score: number; type: number }[] = [];
  let p = 0;
  const varint = (end: number) => {
    let v = 0;
    let s = 0;
    for (;;) {
      if (p >= end) throw new Error('tokenizer.model is truncated');
      const b = buf[p++]!;
      v += (b & 0x7f) * 2 ** s;
      if (!(b & 0x80)) return v;
      s += 7;
    }
  };
  const skip = (wire: number, end: number) => {
    if (wire === 0) varint(end);
    else if (wire === 1) p += 8;
    else if (wire === 5) p += 4;
    else if (wire === 2) {
      const l = varint(end); // not `p += varint(end)`: that reads p before varint moves it
      p += l;
    }
    else throw new Error('tokenizer.model is not a SentencePiece model');
  };
  while (p < buf.length) {
    const tag = varint(buf.length);
    if (tag >>> 3 === 1 && (tag & 7) === 2) {
      const len = varint(buf.length);
      const end = p + len;
      let piece = '';
      let score = 0;
      let type = 1;
      while (p < end) {
        const t = varint(end);
        const f = t >>> 3;
        if (f === 1 && (t & 7) === 2) {
          const l = varint(end);
          piece = buf.toString('utf8', p, p + l);
          p += l;
        } else if (f === 2 && (t & 7) === 5) {
          score = buf.readFloatLE(p);
          p += 4;
        } else if (f === 3 && (t & 7) === 0) type = varint(end);
        else skip(t & 7, end);
      }
      out.push({ piece, score, type });
    } else skip(tag & 7, buf.length);
  }
  if (!out.length) throw new Error('tokenizer.model holds no pieces');
  return out;
}

/** The folder's tokenizer as GGUF sees it, padded with unused [PAD{i}] tokens up to vocab_size rows. */
export function readVocab(dir: string, vocabSize: number): GgufVocab {
  const tcfg = readJsonIf(path.join(dir, 'tokenizer_config.json')) ?? {};
  const smap = readJsonIf(path.join(dir, 'special_tokens_map.json')) ?? {};
  const cfg = readJsonIf(path.join(dir, 'config.json')) ?? {};
  const tokens: string[] = [];
  const types: number[] = [];
  let scores: number[] | undefined;
  let merges: string[] | undefined;
  let model: GgufVocab['model'];
  let pre: string | undefined;
  let addBos: boolean | undefined;
  const special = new Set<string>();
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
    const c = tokenContent(tcfg[k]) ?? tokenContent(smap[k]);
    if (c) special.add(c);
  }
  const put = (id: number, tok: string, type: number, score = 0) => {
    while (tokens.length < id) (tokens.push(`[PAD${tokens.length}]`), types.push(TT.unused), scores?.push(0));
    tokens[id] = tok;
    types[id] = type;
    if (scores) scores[id] = score;
  };
  const spFile = path.join(dir, 'tokenizer.model');
  const tjFile = path.join(dir, 'tokenizer.json');
  if (fs.existsSync(spFile)) {
    model = 'llama';
    scores = [];
    spPieces(fs.readFileSync(spFile)).forEach((pc, i) => put(i, pc.piece, pc.type >= 1 && pc.type <= 6 ? pc.type : TT.normal, pc.score));
    const added = readJsonIf(path.join(dir, 'added_tokens.json')) ?? {};
    for (const [tok, id] of Object.entries(added)) if (typeof id === 'number' && id >= tokens.length) put(id, tok, TT.userDefined);
    const dec = (tcfg.added_tokens_decoder ?? {}) as Record<string, { content: string; special?: boolean }>;
    for (const [id, t] of Object.entries(dec)) if (Number(id) >= tokens.length) put(Number(id), t.content, t.special ? TT.control : TT.userDefined);
  } else if (fs.existsSync(tjFile)) {
    const tj = JSON.parse(fs.readFileSync(tjFile, 'utf8')) as {
      model: { type: string; vocab: Record<string, number>; merges?: (string | [string, string])[]; ignore_merges?: boolean };
      added_tokens?: { id: number; content: string; special?: boolean }[];
      pre_tokenizer?: PreTok;
      post_processor?: unknown;
    };
    if (tj.model.type !== 'BPE') throw new Error(`tokenizer.json model type ${tj.model.type} cannot be exported to GGUF yet (BPE or tokenizer.model only)`);
    model = 'gpt2';
    const byteLevel = tj.pre_tokenizer?.type === 'ByteLevel' || (tj.pre_tokenizer?.pretokenizers ?? []).some((p) => p?.type === 'ByteLevel');
    if (!byteLevel) throw new Error('tokenizer.json is a BPE without a ByteLevel pre-tokenizer; llama.cpp needs a tokenizer.model for it');
    pre = bpePre(tj.pre_tokenizer, tj.model.ignore_merges === true);
    addBos = postProcessorAddsBos(tj.post_processor, tokenContent(tcfg.bos_token) ?? tokenContent(smap.bos_token));
    for (const [tok, id] of Object.entries(tj.model.vocab)) put(id, tok, TT.normal);
    for (const a of tj.added_tokens ?? []) put(a.id, a.content, a.special ? TT.control : TT.userDefined);
    merges = (tj.model.merges ?? []).map((m) => (Array.isArray(m) ? `${m[0]} ${m[1]}` : m));
  } else {
    throw new Error(`no tokenizer.model or tokenizer.json in ${dir}; the GGUF needs the tokenizer`);
  }
  for (let i = 0; i < tokens.length; i++) if (tokens[i] === undefined) (tokens[i] = `[PAD${i}]`), (types[i] = TT.unused);
  if (tokens.length > vocabSize) throw new Error(`the tokenizer has ${tokens.length} tokens but the model's vocabulary only ${vocabSize} rows`);
  while (tokens.length < vocabSize) (tokens.push(`[PAD${tokens.length}]`), types.push(TT.unused), scores?.push(0));
  for (let i = 0; i < tokens.length; i++) if (special.has(tokens[i]!) && types[i] === TT.normal) types[i] = TT.control;
  const idOf = (k: string, cfgKey: string): number | null => {
    const c = tokenContent(tcfg[k]) ?? tokenContent(smap[k]);
    const i = c !== null ? tokens.indexOf(c) : -1;
    if (i >= 0) return i;
    const v = cfg[cfgKey];
    return typeof v === 'number' ? v : Array.isArray(v) && typeof v[0] === 'number' ? (v[0] as number) : null;
  };
  return { model, pre, addBos, tokens, scores, types, merges, bos: idOf('bos_token', 'bos_token_id'), eos: idOf('eos_token', 'eos_token_id'), unk: idOf('unk_token', 'unk_token_id'), pad: idOf('pad_token', 'pad_token_id') };
}

// ---- chat templates: GGUF (Jinja) and Ollama (Go) ------------------------------------------------------------

interface TurnSpec {
  bos: boolean; // the prompt starts with bos
  first: string; // before the first user turn
  later: string; // before each later user turn
  pre: string;
  post: string; // after the user text (before the answer)
  between: string[]; // special tokens between prompt and answer (token strings: 'eos', 'bos')
  stops: string[]; // text stops besides eos
  systemDefault?: string; // vicuna: the system prompt (replaced by a system message)
}

const ALPACA_INTRO = 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n';
const VICUNA_SYSTEM =
  "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/** Multi-turn layouts of templates.ts (per round: user text, then the answer, then eos; a system prompt opens the
 *  first round on a line of its own, vicuna's replaces its default) — the layout training and inference share. */
const TURNS: Partial<Record<TemplateName, TurnSpec>> = {
  raw: { bos: false, first: '', later: '', pre: '', post: '', between: ['eos', 'bos'], stops: [] },
  alpaca: { bos: true, first: ALPACA_INTRO, later: '\n\n', pre: '### Instruction:\n', post: '\n\n### Response:\n', between: [], stops: ['### Instruction:'] },
  belle: { bos: false, first: '', later: '\n\n', pre: 'Human: \n', post: '\n\nAssistant: \n', between: [], stops: ['Human:'] },
  vicuna: { bos: true, first: '', later: '', pre: ' USER: ', post: ' ASSISTANT:', between: [], stops: ['USER:'], systemDefault: VICUNA_SYSTEM },
};

export const EXPORT_TEMPLATES = Object.keys(TURNS) as TemplateName[];

function jinjaText(s: string): string {
  return `{{ ${JSON.stringify(s)} }}`;
}

/** A Jinja chat_template (HF / llama.cpp) equivalent to a training template's multi-turn layout. */
export function jinjaTemplate(name: TemplateName): string {
  const t = TURNS[name];
  if (!t) throw new Error(`no export layout for template "${name}" (known: ${EXPORT_TEMPLATES.join(', ')})`);
  const tok = (w: string) => (w === 'eos' ? '{{ eos_token }}' : '{{ bos_token }}');
  let s = (t.bos ? '{{ bos_token }}' : '') + '{% set ns = namespace(n=0, sys=none) %}';
  s += "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.sys = m['content'] %}";
  s += "{% elif m['role'] == 'user' %}{% if ns.n == 0 %}";
  if (t.systemDefault !== undefined) s += `{% if ns.sys is not none %}{{ ns.sys }}{% else %}${jinjaText(t.systemDefault)}{% endif %}`;
  // training opens the first round with the system prompt on a line of its own (templates.ts roundPrompt)
  else s += "{% if ns.sys is not none and (ns.sys | trim) %}{{ ns.sys }}{{ '\\n' }}{% endif %}";
  s += `${jinjaText(t.first)}{% else %}${jinjaText(t.later)}{% endif %}${jinjaText(t.pre)}{{ m['content'] }}${jinjaText(t.post)}`;
  s += `${t.between.map(tok).join('')}{% set ns.n = 1 %}`;
  s += "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}";
  return s;
}

function goEscape(s: string): string {
  return s.replace(/{{/g, '{{ "{{" }}');
}

/** An Ollama Modelfile for `ggufName` whose TEMPLATE renders the training template and stops at its markers. */
export function ollamaModelfile(ggufName: string, name: TemplateName, vocab: Pick<GgufVocab, 'tokens' | 'bos' | 'eos'>): string {
  const t = TURNS[name];
  if (!t) throw new Error(`no Ollama template for "${name}" (known: ${EXPORT_TEMPLATES.join(', ')})`);
  const eos = vocab.eos !== null ? vocab.tokens[vocab.eos]! : '';
  const bos = vocab.bos !== null ? vocab.tokens[vocab.bos]! : '';
  const between = t.between.map((w) => (w === 'eos' ? eos : bos)).join('');
  let g = '{{- $n := 0 }}{{ range .Messages }}{{ if eq .Role "user" }}{{ if eq $n 0 }}';
  if (t.systemDefault !== undefined) g += `{{ if $.System }}{{ $.System }}{{ else }}${goEscape(t.systemDefault)}{{ end }}`;
  else g += '{{ if $.System }}{{ $.System }}\n{{ end }}';
  g += `${goEscape(t.first)}{{ else }}${goEscape(t.later)}{{ end }}${goEscape(t.pre)}{{ .Content }}${goEscape(t.post)}${between}{{ $n = 1 }}`;
  g += `{{ else if eq .Role "assistant" }}{{ .Content }}${eos}{{ end }}{{ end }}`;
  const lines = [
    `# Ollama Modelfile written by LLMs-train: training template "${name}"`,
    `# ollama create my-model -f ${ggufName.replace(/\.gguf$/i, '')}.Modelfile`,
    `FROM ./${ggufName}`,
    `TEMPLATE """${g}"""`,
  ];
  for (const s of [eos, ...t.stops]) if (s) lines.push(`PARAMETER stop ${JSON.stringify(s)}`);
  return lines.join('\n') + '\n';
}

// ---- the GGUF writer -------------------------------------------------------------------------------------------

const GGUF_TYPE = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10, i64: 11, f64: 12 } as const;
type KvValue =
  | { t: 'u32' | 'i32' | 'f32' | 'u64'; v: number }
  | { t: 'bool'; v: boolean }
  | { t: 'str'; v: string }
  | { t: 'arr'; of: 'str'; v: string[] }
  | { t: 'arr'; of: 'f32' | 'i32'; v: number[] };

const GGML = { F32: 0, F16: 1, BF16: 30 } as const;
export type GgufDtype = 'f32' | 'f16' | 'bf16';
const ALIGN = 32;

class Buf {
  parts: Buffer[] = [];
  size = 0;
  push(b: Buffer) {
    this.parts.push(b);
    this.size += b.length;
  }
  u32(v: number) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.push(b);
  }
  i32(v: number) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number) {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
}

function writeKv(b: Buf, key: string, val: KvValue) {
  b.str(key);
  if (val.t === 'arr') {
    b.u32(GGUF_TYPE.arr);
    b.u32(GGUF_TYPE[val.of]);
    b.u64(val.v.length);
    for (const x of val.v) {
      if (val.of === 'str') b.str(x as string);
      else if (val.of === 'f32') b.f32(x as number);
      else b.i32(x as number);
    }
    return;
  }
  b.u32(GGUF_TYPE[val.t]);
  if (val.t === 'u32') b.u32(val.v);
  else if (val.t === 'i32') b.i32(val.v);
  else if (val.t === 'f32') b.f32(val.v);
  else if (val.t === 'u64') b.u64(val.v);
  else if (val.t === 'bool') b.push(Buffer.from([val.v ? 1 : 0]));
  else b.str(val.v as string);
}

interface OutTensor {
  name: string;
  shape: number[]; // HF order (outermost first)
  type: number; // GGML type
  data: () => Float32Array;
}

function encodeData(t: OutTensor, f: Float32Array): Buffer {
  if (t.type === GGML.F32) return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
  const out = Buffer.alloc(f.length * 2);
  for (let i = 0; i < f.length; i++) out.writeUInt16LE(t.type === GGML.F16 ? floatToHalf(f[i]!) : floatToBf16(f[i]!), 2 * i);
  return out;
}

// ---- tensor plans: which GGUF tensor comes from which HF tensor, and how its rows are reordered -----------

/** A row map: output row i is source row map[i]. Every layout change the export needs (Q/K permutation, fused
 *  QKV reordering, W_pack split) only moves rows, so the same map also turns a LoRA B into the GGUF's lora_b. */
type RowMap = Int32Array;

const seq = (start: number, n: number): RowMap => Int32Array.from({ length: n }, (_, i) => start + i);
/** a ∘ b: first select `a`'s rows, then reorder them by `b`. */
const compose = (a: RowMap, b: RowMap): RowMap => b.map((i) => a[i]!);

/** HF rotate-half rows [n_head·hd] → GGML's interleaved rows (convert_hf_to_gguf.py `LlamaModel.permute`). */
export function permuteRows(rows: number, nHead: number): RowMap {
  const hd = rows / nHead;
  const half = hd / 2;
  const out = new Int32Array(rows);
  for (let h = 0; h < nHead; h++) for (let i = 0; i < half; i++) for (let j = 0; j < 2; j++) out[h * hd + i * 2 + j] = h * hd + j * half + i;
  return out;
}

/** GPT-NeoX/BLOOM fused QKV, per head [n_head, 3, hd] → [Q all heads | K | V] (the layout llama.cpp views). */
function qkvPerHead(nHead: number, hd: number): RowMap {
  const out: number[] = [];
  for (let k = 0; k < 3; k++) for (let h = 0; h < nHead; h++) for (let d = 0; d < hd; d++) out.push((h * 3 + k) * hd + d);
  return Int32Array.from(out);
}

/** Falcon's grouped QKV [n_kv, n_head/n_kv + 2, hd] (7B: one group) → [Q | K | V] ("jploski" layout). */
function falconQkv(nHead: number, nKv: number, hd: number): RowMap {
  const nq = nHead / nKv;
  const slots = nq + 2;
  const out: number[] = [];
  for (let g = 0; g < nKv; g++) for (let q = 0; q < nq; q++) for (let d = 0; d < hd; d++) out.push((g * slots + q) * hd + d);
  for (const k of [nq, nq + 1]) for (let g = 0; g < nKv; g++) for (let d = 0; d < hd; d++) out.push((g * slots + k) * hd + d);
  return Int32Array.from(out);
}

function gatherRows(w: Float32Array, cols: number, map: RowMap | undefined): Float32Array {
  if (!map) return w;
  const out = new Float32Array(map.length * cols);
  map.forEach((r, i) => out.set(w.subarray(r * cols, (r + 1) * cols), i * cols));
  return out;
}

/** HF [n_head·hd, in] rows (rotate-half) → GGML's interleaved rows. */
export function permuteQK(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  return gatherRows(w, cols, permuteRows(rows, nHead));
}

/** One GGUF tensor: from HF tensor `src`, rows reordered/selected by `rows`; `vec` = 1-D (norms, biases: f32).
 *  `gen`: a tensor the converter computes instead of copying (Llama 3's rope_freqs; `src` is then empty). */
interface Spec {
  name: string;
  src: string;
  rows?: RowMap;
  vec?: boolean;
  gen?: { shape: number[]; data: () => Float32Array };
}

/** Llama 3.1's RoPE frequency scaling as llama.cpp takes it: the `rope_freqs.weight` tensor of head_dim/2 divisors
 *  of the base frequencies (ggml_rope_ext's freq_factors), computed as convert_hf_to_gguf.py's
 *  LlamaModel.generate_extra_tensors does in float32 (its defaults: factor 8, low_freq_factor 1, high_freq_factor 4,
 *  original_max_position_embeddings 8192): wavelengths 2π/freq shorter than original/high keep 1, longer than
 *  original/low take `factor`, those between 1 / ((1 − s)/factor + s) with s = (original/wavelength − low)/(high − low)
 *  — transformers' _compute_llama3_parameters written as a divisor. */
export function llama3RopeFactors(rs: Record<string, unknown>, theta: number, dim: number): Float32Array {
  const f = Math.fround;
  const n = (k: string, def: number) => (typeof rs[k] === 'number' ? (rs[k] as number) : def);
  const factor = n('factor', 8);
  const low = n('low_freq_factor', 1);
  const high = n('high_freq_factor', 4);
  const orig = n('original_max_position_embeddings', 8192);
  if (!(factor >= 1) || !(low > 0) || !(high > low) || !(orig > 0))
    throw new Error(`config.json: rope_scaling of type llama3 needs factor >= 1, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0 (got ${JSON.stringify(rs)})`);
  const lowWavelen = orig / low;
  const highWavelen = orig / high;
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const freq = f(1 / f(Math.pow(theta, f((2 * i) / dim))));
    const wavelen = f(f(2 * Math.PI) / freq);
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = factor;
    else {
      const smooth = f(f(f(orig / wavelen) - low) / f(high - low));
      out[i] = f(1 / f(f(f(1 - smooth) / factor) + smooth));
    }
  }
  return out;
}

interface Plan {
  /** general.architecture */
  arch: string;
  /** what the user calls it, for messages */
  family: string;
  specs: Spec[];
  /** the architecture's own keys (prefixed) */
  kv: [string, KvValue][];
  vocabSize: number;
  /** tokenizer.ggml.add_bos_token when the tokenizer config does not say */
  addBos?: boolean;
}

/** YaRN (Qwen2.5's long-context setting, rope_scaling type yarn) as llama.cpp takes it: the scaling type, the factor
 *  and the original context length as keys (convert_hf_to_gguf.py's add_rope_scaling_type / _factor /
 *  _orig_ctx_len); llama.cpp then blends the interpolated and extrapolated frequencies over the same ramp as
 *  transformers (beta_fast 32, beta_slow 1) and scales cos and sin by 0.1·ln(factor) + 1. The original length is the
 *  engine's: rope_scaling.original_max_position_embeddings, else max_position_embeddings. Settings llama.cpp's
 *  defaults cannot express (other betas, an explicit attention_factor, DeepSeek's mscale, a partial rotary
 *  embedding) are refused rather than exported to a model that would compute something else. */
export function yarnRopeKv(arch: string, rs: Record<string, unknown>, cfg: Record<string, unknown>): [string, KvValue][] {
  const factor = rs.factor;
  const orig = typeof rs.original_max_position_embeddings === 'number' ? rs.original_max_position_embeddings : cfg.max_position_embeddings;
  if (typeof factor !== 'number' || !(factor >= 1) || typeof orig !== 'number' || !Number.isInteger(orig) || orig <= 0)
    throw new Error(`config.json: rope_scaling of type yarn needs factor >= 1 and a length (original_max_position_embeddings or max_position_embeddings) (got ${JSON.stringify(rs)})`);
  const notDefault: string[] = [];
  const differs = (k: string, def: number) => rs[k] !== undefined && rs[k] !== null && !(typeof rs[k] === 'number' && (rs[k] as number) === def);
  if (differs('beta_fast', 32)) notDefault.push(`beta_fast ${String(rs.beta_fast)}`);
  if (differs('beta_slow', 1)) notDefault.push(`beta_slow ${String(rs.beta_slow)}`);
  const defaultAttn = 0.1 * Math.log(factor) + 1;
  if (rs.attention_factor !== undefined && rs.attention_factor !== null &&
      !(typeof rs.attention_factor === 'number' && Math.abs(rs.attention_factor - defaultAttn) <= 1e-6 * defaultAttn))
    notDefault.push(`attention_factor ${String(rs.attention_factor)} (llama.cpp uses 0.1·ln(factor) + 1 = ${defaultAttn.toFixed(6)})`);
  for (const k of ['mscale', 'mscale_all_dim']) if (rs[k] !== undefined && rs[k] !== null && rs[k] !== 0) notDefault.push(`${k} ${String(rs[k])}`);
  if (rs.truncate === false) notDefault.push('truncate false');
  const partial = typeof cfg.partial_rotary_factor === 'number' && cfg.partial_rotary_factor !== 1;
  if (partial) notDefault.push(`partial_rotary_factor ${String(cfg.partial_rotary_factor)}`);
  if (notDefault.length)
    throw unsupported(`rope_scaling of type yarn with ${notDefault.join(', ')}: the GGUF would run another RoPE in llama.cpp (only the factor and the original length are exported)`);
  return [
    [`${arch}.rope.scaling.type`, { t: 'str', v: 'yarn' }],
    [`${arch}.rope.scaling.factor`, { t: 'f32', v: factor }],
    [`${arch}.rope.scaling.original_context_length`, { t: 'u32', v: orig }],
  ];
}

/** An error with a status code the CLI and the API show (UNSUPPORTED: llama.cpp cannot run it). */
function unsupported(msg: string): Error {
  return Object.assign(new Error(`UNSUPPORTED: ${msg}`), { code: 'UNSUPPORTED' });
}

/** transformers 5 writes the RoPE settings as one "rope_parameters" object (rope_type, rope_theta, factor,
 *  partial_rotary_factor, ...) instead of top-level rope_theta / rope_scaling: read either layout (the top level wins
 *  where both are present). */
export function withRopeParameters(cfg: Record<string, unknown>): Record<string, unknown> {
  const rp = cfg.rope_parameters;
  if (!rp || typeof rp !== 'object' || Array.isArray(rp)) return cfg;
  const p = rp as Record<string, unknown>;
  const out: Record<string, unknown> = { ...cfg };
  for (const k of ['rope_theta', 'partial_rotary_factor']) if (out[k] === undefined && typeof p[k] === 'number') out[k] = p[k];
  const type = p.rope_type ?? p.type;
  if ((out.rope_scaling === undefined || out.rope_scaling === null) && typeof type === 'string' && type !== 'default') out.rope_scaling = p;
  return out;
}

/** The tensor plan and metadata for a model folder's config.json, after convert_hf_to_gguf.py's model classes
 *  (GPTNeoXModel, BloomModel, FalconModel, MiniCPMModel, ChatGLMModel, LlamaModel, BaichuanModel). */
function planFor(config: Record<string, unknown>, has: (name: string) => boolean): Plan {
  const cfg = withRopeParameters(config);
  const num = (keys: string | string[], def?: number): number => {
    for (const k of Array.isArray(keys) ? keys : [keys]) if (typeof cfg[k] === 'number') return cfg[k] as number;
    if (def !== undefined) return def;
    throw new Error(`config.json lacks ${Array.isArray(keys) ? keys.join(' / ') : keys}`);
  };
  const u32 = (v: number): KvValue => ({ t: 'u32', v });
  const f32 = (v: number): KvValue => ({ t: 'f32', v });
  const mt = String(cfg.model_type ?? '');
  const H = num(['hidden_size', 'n_embed', 'd_model']);
  const nh = num(['num_attention_heads', 'n_head']);
  const L = num(['num_hidden_layers', 'n_layer', 'num_layers']);
  const V = num(['padded_vocab_size', 'vocab_size']);
  const specs: Spec[] = [];
  const add = (name: string, src: string, rows?: RowMap) => specs.push({ name, src, rows });
  /** weight + bias (when the checkpoint has one) */
  const addWB = (name: string, src: string, rows?: RowMap, vec = false) => {
    specs.push({ name: `${name}.weight`, src: `${src}.weight`, rows, vec });
    if (has(`${src}.bias`)) specs.push({ name: `${name}.bias`, src: `${src}.bias`, rows, vec: true });
  };
  const norm = (name: string, src: string) => addWB(name, src, undefined, true);
  /** Whether the output head is the token embedding: tie_word_embeddings, else the family's default as the engine
   *  and transformers read it (tied: minicpm, bloom, falcon; untied: llama, baichuan, gpt_neox, chatglm2). */
  const tied = (byDefault: boolean) => (typeof cfg.tie_word_embeddings === 'boolean' ? cfg.tie_word_embeddings : byDefault);
  /** lm_head unless tied (an lm_head.weight left in a tied checkpoint is not what the model runs); without one,
   *  llama.cpp reuses token_embd for these architectures. */
  const untiedOutput = (src: string, byDefault: boolean) => {
    if (has(src) && !tied(byDefault)) add('output.weight', src);
  };

  if (mt === 'llama' || mt === 'mistral' || mt === 'qwen2' || mt === 'baichuan' || mt === 'minicpm') {
    const nkv = num('num_key_value_heads', nh);
    const hd = num('head_dim', H / nh);
    // Baichuan-13B (ALiBi) is told apart as the engine does: model_max_length and no max_position_embeddings.
    const alibi = mt === 'baichuan' && cfg.max_position_embeddings === undefined && cfg.model_max_length !== undefined;
    if (alibi && L !== 40)
      throw unsupported(`Baichuan-13B-style (ALiBi) model with ${L} layers: llama.cpp's "baichuan" architecture picks ALiBi only for 40-layer models`);
    // MistralForCausalLM is converted by LlamaModel (arch llama, Q/K permuted); Qwen2ForCausalLM by Qwen2Model: arch
    // qwen2, tensors copied as they are (llama.cpp runs qwen2 with NeoX RoPE, HF's rotate-half layout)
    const qwen2 = mt === 'qwen2';
    const arch = mt === 'minicpm' ? 'minicpm' : alibi ? 'baichuan' : qwen2 ? 'qwen2' : 'llama';
    // llama.cpp's qwen2 sizes Q and the attention output as n_embd: another head size does not load there
    if (qwen2 && hd * nh !== H)
      throw unsupported(`Qwen2 with head_dim ${hd} × ${nh} heads ≠ hidden_size ${H}: llama.cpp's "qwen2" architecture needs heads × head size = hidden size`);
    const qk = (rows: number, heads: number) => (qwen2 ? undefined : permuteRows(rows, heads));
    // RoPE scaling: linear as keys; Llama 3's llama3 as the rope_freqs tensor (no scaling keys); dynamic NTK changes
    // nothing within max_position_embeddings (the GGUF's context_length), so — as the converter — nothing is written
    const rs = cfg.rope_scaling as Record<string, unknown> | null | undefined;
    const rsType = rs ? String(rs.rope_type ?? rs.type ?? '') : '';
    const ropeKv: [string, KvValue][] = [];
    if (rs && rsType === 'linear' && typeof rs.factor === 'number') {
      ropeKv.push([`${arch}.rope.scaling.type`, { t: 'str', v: 'linear' }], [`${arch}.rope.scaling.factor`, f32(rs.factor)]);
    } else if (rs && rsType.toLowerCase() === 'llama3') {
      if (arch !== 'llama') throw unsupported(`rope_scaling of type llama3 on a ${mt} model: llama.cpp's "${arch}" architecture takes no rope_freqs tensor`);
      const factors = llama3RopeFactors(rs, num('rope_theta', 10000), hd);
      specs.push({ name: 'rope_freqs.weight', src: '', vec: true, gen: { shape: [factors.length], data: () => factors } });
    } else if (rs && rsType === 'yarn') {
      ropeKv.push(...yarnRopeKv(arch, rs, cfg));
    } else if (rs && rsType !== 'dynamic' && rsType !== 'default' && rsType !== '') {
      throw unsupported(`rope_scaling ${JSON.stringify(rs)} cannot be exported yet (linear, llama3, yarn and dynamic only)`);
    }
    add('token_embd.weight', 'model.embed_tokens.weight');
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}.`;
      const b = `blk.${l}.`;
      norm(`${b}attn_norm`, `${p}input_layernorm`);
      if (mt === 'baichuan') {
        add(`${b}attn_q.weight`, `${p}self_attn.W_pack.weight`, compose(seq(0, H), permuteRows(H, nh)));
        add(`${b}attn_k.weight`, `${p}self_attn.W_pack.weight`, compose(seq(H, H), permuteRows(H, nh)));
        add(`${b}attn_v.weight`, `${p}self_attn.W_pack.weight`, seq(2 * H, H));
      } else {
        // attention_bias / mlp_bias checkpoints (and Qwen2's q/k/v) keep their biases (q/k biases permuted like
        // their rows where the rows are)
        addWB(`${b}attn_q`, `${p}self_attn.q_proj`, qk(nh * hd, nh));
        addWB(`${b}attn_k`, `${p}self_attn.k_proj`, qk(nkv * hd, nkv));
        addWB(`${b}attn_v`, `${p}self_attn.v_proj`);
      }
      addWB(`${b}attn_output`, `${p}self_attn.o_proj`);
      norm(`${b}ffn_norm`, `${p}post_attention_layernorm`);
      addWB(`${b}ffn_gate`, `${p}mlp.gate_proj`);
      addWB(`${b}ffn_up`, `${p}mlp.up_proj`);
      addWB(`${b}ffn_down`, `${p}mlp.down_proj`);
    }
    norm('output_norm', 'model.norm');
    untiedOutput('lm_head.weight', mt === 'minicpm');
    const kv: [string, KvValue][] = [
      // LlamaModel's own keys (Qwen2Model writes neither: llama.cpp takes the vocabulary from the token list and the
      // rotary width from the head size)
      ...(qwen2 ? [] : ([[`${arch}.vocab_size`, u32(V)]] as [string, KvValue][])),
      [`${arch}.context_length`, u32(num(['max_position_embeddings', 'model_max_length'], 2048))],
      [`${arch}.embedding_length`, u32(H)],
      [`${arch}.block_count`, u32(L)],
      [`${arch}.feed_forward_length`, u32(num('intermediate_size'))],
      ...(qwen2 ? [] : ([[`${arch}.rope.dimension_count`, u32(hd)]] as [string, KvValue][])),
      [`${arch}.attention.head_count`, u32(nh)],
      [`${arch}.attention.head_count_kv`, u32(nkv)],
      [`${arch}.attention.layer_norm_rms_epsilon`, f32(num('rms_norm_eps', 1e-6))],
      [`${arch}.rope.freq_base`, f32(num('rope_theta', 10000))],
      ...ropeKv,
    ];
    // a head_dim other than hidden/heads: llama.cpp takes the head size from key_length/value_length
    if (hd * nh !== H) kv.push([`${arch}.attention.key_length`, u32(hd)], [`${arch}.attention.value_length`, u32(hd)]);
    if (mt === 'minicpm') {
      // MiniCPM's muP scales (llama.cpp runs it with the granite graph: embeddings ×scale_emb, residual branches
      // ×scale_depth/√L, logits ÷ hidden/dim_model_base)
      kv.push(
        ['minicpm.embedding_scale', f32(num('scale_emb'))],
        ['minicpm.residual_scale', f32(num('scale_depth') / Math.sqrt(L))],
        ['minicpm.logit_scale', f32(H / num('dim_model_base'))],
      );
    }
    return { arch, family: mt === 'baichuan' ? (alibi ? 'Baichuan-13B' : 'Baichuan-7B') : mt, specs, kv, vocabSize: V };
  }

  if (mt === 'gpt_neox') {
    const hd = H / nh;
    add('token_embd.weight', 'gpt_neox.embed_in.weight');
    for (let l = 0; l < L; l++) {
      const p = `gpt_neox.layers.${l}.`;
      const b = `blk.${l}.`;
      norm(`${b}attn_norm`, `${p}input_layernorm`);
      addWB(`${b}attn_qkv`, `${p}attention.query_key_value`, qkvPerHead(nh, hd));
      addWB(`${b}attn_output`, `${p}attention.dense`);
      norm(`${b}ffn_norm`, `${p}post_attention_layernorm`);
      addWB(`${b}ffn_up`, `${p}mlp.dense_h_to_4h`);
      addWB(`${b}ffn_down`, `${p}mlp.dense_4h_to_h`);
    }
    norm('output_norm', 'gpt_neox.final_layer_norm');
    // llama.cpp's gptneox needs output.weight: the embedding when tied
    add('output.weight', has('embed_out.weight') && !tied(false) ? 'embed_out.weight' : 'gpt_neox.embed_in.weight');
    const kv: [string, KvValue][] = [
      ['gptneox.context_length', u32(num('max_position_embeddings', 2048))],
      ['gptneox.embedding_length', u32(H)],
      ['gptneox.block_count', u32(L)],
      ['gptneox.feed_forward_length', u32(num('intermediate_size', 4 * H))],
      ['gptneox.rope.dimension_count', u32(Math.floor(num(['rotary_pct', 'partial_rotary_factor'], 1) * hd))],
      ['gptneox.rope.freq_base', f32(num(['rotary_emb_base', 'rope_theta'], 10000))],
      ['gptneox.attention.head_count', u32(nh)],
      ['gptneox.use_parallel_residual', { t: 'bool', v: cfg.use_parallel_residual !== false }],
      ['gptneox.attention.layer_norm_epsilon', f32(num('layer_norm_eps', 1e-5))],
    ];
    return { arch: 'gptneox', family: 'gpt_neox', specs, kv, vocabSize: V };
  }

  if (mt === 'bloom') {
    if (cfg.apply_residual_connection_post_layernorm === true)
      throw unsupported('BLOOM with apply_residual_connection_post_layernorm: llama.cpp\'s "bloom" architecture adds the residual before the layer norm');
    const t = has('transformer.word_embeddings.weight') ? 'transformer.' : '';
    add('token_embd.weight', `${t}word_embeddings.weight`);
    norm('token_embd_norm', `${t}word_embeddings_layernorm`);
    for (let l = 0; l < L; l++) {
      const p = `${t}h.${l}.`;
      const b = `blk.${l}.`;
      norm(`${b}attn_norm`, `${p}input_layernorm`);
      addWB(`${b}attn_qkv`, `${p}self_attention.query_key_value`, qkvPerHead(nh, H / nh));
      addWB(`${b}attn_output`, `${p}self_attention.dense`);
      norm(`${b}ffn_norm`, `${p}post_attention_layernorm`);
      addWB(`${b}ffn_up`, `${p}mlp.dense_h_to_4h`);
      addWB(`${b}ffn_down`, `${p}mlp.dense_4h_to_h`);
    }
    norm('output_norm', `${t}ln_f`);
    untiedOutput('lm_head.weight', true);
    const kv: [string, KvValue][] = [
      ['bloom.context_length', u32(num(['seq_length', 'n_positions', 'max_position_embeddings'], 2048))],
      ['bloom.embedding_length', u32(H)],
      ['bloom.feed_forward_length', u32(4 * H)],
      ['bloom.block_count', u32(L)],
      ['bloom.attention.head_count', u32(nh)],
      ['bloom.attention.head_count_kv', u32(nh)],
      ['bloom.attention.layer_norm_epsilon', f32(num('layer_norm_epsilon', 1e-5))],
    ];
    return { arch: 'bloom', family: 'bloom', specs, kv, vocabSize: V };
  }

  if (mt === 'falcon' || mt === 'RefinedWeb' || mt === 'RefinedWebModel') {
    // the legacy RefinedWeb/RefinedWebModel configs have no new_decoder_architecture: n_head_kv marks the 40B
    // layout there (as transformers' conversion of them and the engine read it)
    const newDec = mt === 'falcon' ? cfg.new_decoder_architecture === true : cfg.n_head_kv !== undefined && cfg.n_head_kv !== null;
    if (cfg.alibi === true) throw unsupported('Falcon with ALiBi (falcon-rw): llama.cpp\'s "falcon" architecture uses RoPE');
    if (cfg.bias === true) throw unsupported('Falcon with linear biases: llama.cpp\'s "falcon" architecture has none');
    if (!newDec && cfg.parallel_attn === false) throw unsupported('Falcon without parallel attention: llama.cpp\'s "falcon" architecture runs attention and MLP in parallel');
    const nkv = newDec ? num(['num_kv_heads', 'n_head_kv'], nh) : cfg.multi_query === false ? nh : 1;
    if (nh % nkv !== 0) throw new Error(`config.json: ${nkv} kv heads do not divide ${nh} attention heads`);
    const hd = H / nh;
    const t = has('transformer.word_embeddings.weight') ? 'transformer.' : '';
    add('token_embd.weight', `${t}word_embeddings.weight`);
    for (let l = 0; l < L; l++) {
      const p = `${t}h.${l}.`;
      const b = `blk.${l}.`;
      if (has(`${p}ln_attn.weight`)) {
        // llama.cpp feeds attn_norm_2 to attention and attn_norm to the MLP (gguf-py's tensor map)
        norm(`${b}attn_norm`, `${p}ln_mlp`);
        norm(`${b}attn_norm_2`, `${p}ln_attn`);
      } else norm(`${b}attn_norm`, `${p}input_layernorm`);
      add(`${b}attn_qkv.weight`, `${p}self_attention.query_key_value.weight`, falconQkv(nh, nkv, hd));
      add(`${b}attn_output.weight`, `${p}self_attention.dense.weight`);
      add(`${b}ffn_up.weight`, `${p}mlp.dense_h_to_4h.weight`);
      add(`${b}ffn_down.weight`, `${p}mlp.dense_4h_to_h.weight`);
    }
    norm('output_norm', `${t}ln_f`);
    untiedOutput('lm_head.weight', true);
    const kv: [string, KvValue][] = [
      ['falcon.context_length', u32(num('max_position_embeddings', 2048))],
      ['falcon.tensor_data_layout', { t: 'str', v: 'jploski' }],
      ['falcon.embedding_length', u32(H)],
      ['falcon.feed_forward_length', u32(num('ffn_hidden_size', 4 * H))],
      ['falcon.block_count', u32(L)],
      ['falcon.attention.head_count', u32(nh)],
      ['falcon.attention.head_count_kv', u32(nkv)],
      ['falcon.attention.layer_norm_epsilon', f32(num('layer_norm_epsilon', 1e-5))],
      ['falcon.rope.freq_base', f32(num('rope_theta', 10000))],
    ];
    return { arch: 'falcon', family: newDec ? 'falcon (new decoder, 40B-style)' : 'falcon (7B-style)', specs, kv, vocabSize: V };
  }

  if (mt === 'chatglm') {
    if (cfg.position_encoding_2d === true || cfg.padded_vocab_size === undefined)
      throw unsupported('ChatGLM-6B (v1): llama.cpp has no architecture for its 2-D positions and GLM blocks ("chatglm" there is ChatGLM2/3 and GLM-4); export ChatGLM2-6B or later');
    if (cfg.rmsnorm === false || cfg.post_layer_norm === false || cfg.add_bias_linear === true || cfg.apply_residual_connection_post_layernorm === true)
      throw unsupported('a ChatGLM2 variant (layer norm / linear biases / post-layernorm residual) that llama.cpp\'s "chatglm" architecture does not run');
    const mqa = cfg.multi_query_attention === true;
    const nkv = mqa ? num('multi_query_group_num', 1) : nh;
    const hd = num('kv_channels', H / nh);
    // llama.cpp's chatglm views Q as the first n_embd rows of the fused QKV: a head size (kv_channels) with
    // heads·kv_channels ≠ hidden_size does not load there
    if (hd * nh !== H)
      throw unsupported(`ChatGLM2 with kv_channels ${hd} × ${nh} heads ≠ hidden_size ${H}: llama.cpp's "chatglm" architecture needs heads × head size = hidden size`);
    const e = 'transformer.encoder.';
    add('token_embd.weight', 'transformer.embedding.word_embeddings.weight');
    for (let l = 0; l < L; l++) {
      const p = `${e}layers.${l}.`;
      const b = `blk.${l}.`;
      norm(`${b}attn_norm`, `${p}input_layernorm`);
      // without multi-query attention the fused QKV is per head [n_head, 3, hd] (as gpt_neox): → [Q | K | V]
      addWB(`${b}attn_qkv`, `${p}self_attention.query_key_value`, mqa ? undefined : qkvPerHead(nh, hd));
      add(`${b}attn_output.weight`, `${p}self_attention.dense.weight`);
      norm(`${b}ffn_norm`, `${p}post_attention_layernorm`);
      add(`${b}ffn_up.weight`, `${p}mlp.dense_h_to_4h.weight`);
      add(`${b}ffn_down.weight`, `${p}mlp.dense_4h_to_h.weight`);
    }
    norm('output_norm', `${e}final_layernorm`);
    // llama.cpp's chatglm needs output.weight: the embedding when tied
    add('output.weight', tied(false) ? 'transformer.embedding.word_embeddings.weight' : 'transformer.output_layer.weight');
    const kv: [string, KvValue][] = [
      ['chatglm.context_length', u32(num('seq_length', H))],
      ['chatglm.embedding_length', u32(H)],
      ['chatglm.feed_forward_length', u32(num('ffn_hidden_size'))],
      ['chatglm.block_count', u32(L)],
      ['chatglm.attention.head_count', u32(nh)],
      ['chatglm.attention.head_count_kv', u32(nkv)],
      ['chatglm.attention.layer_norm_rms_epsilon', f32(num('layernorm_epsilon', 1e-5))],
      // RoPE on the first half of each head, interleaved pairs (GLM's original rope)
      ['chatglm.rope.dimension_count', u32(Math.floor(hd * num('partial_rotary_factor', 0.5)))],
      ['chatglm.rope.freq_base', f32(10000 * num('rope_ratio', 1))],
    ];
    return { arch: 'chatglm', family: 'chatglm2', specs, kv, vocabSize: V, addBos: false };
  }

  throw unsupported(`model_type "${mt}": GGUF export covers llama, mistral, qwen2, baichuan, minicpm, gpt_neox, bloom, falcon and chatglm2`);
}

export interface ExportOptions {
  /** The HF folder (safetensors; merge an adapter first). */
  modelDir: string;
  /** The .gguf file to write. */
  out: string;
  dtype?: GgufDtype;
  /** Training template for the chat template and the Modelfile; default: the model's own chat_template if any. */
  template?: TemplateName;
  /** Also write an Ollama Modelfile next to the .gguf (default true when a template is known). */
  modelfile?: boolean;
  name?: string;
  onProgress?: (done: number, total: number, tensor: string) => void;
  signal?: AbortSignal;
}

export interface ExportResult {
  gguf: string;
  modelfile: string | null;
  architecture: string;
  tensors: number;
  bytes: number;
  vocab: number;
  tokenizer: string;
}

/** Writes header, metadata and tensors to `<out>.tmp`, then renames it; yields to the event loop per tensor. */
async function writeGguf(out: string, kv: [string, KvValue][], tensors: OutTensor[], o: Pick<ExportOptions, 'signal' | 'onProgress'>): Promise<void> {
  const head = new Buf();
  head.push(Buffer.from('GGUF', 'ascii'));
  head.u32(3);
  head.u64(tensors.length);
  head.u64(kv.length);
  for (const [k, v] of kv) writeKv(head, k, v);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    head.str(t.name);
    head.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) head.u64(d); // GGML: ne[0] is the innermost dimension
    head.u32(t.type);
    head.u64(offset);
    offsets.push(offset);
    offset += Math.ceil((n * (t.type === GGML.F32 ? 4 : 2)) / ALIGN) * ALIGN;
  }
  const pad = (n: number) => Buffer.alloc((ALIGN - (n % ALIGN)) % ALIGN);
  refuseFolder(out);
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  const tmp = tempName(out);
  const fd = fs.openSync(tmp, 'w');
  let ok = false;
  try {
    for (const p of head.parts) fs.writeSync(fd, p);
    fs.writeSync(fd, pad(head.size));
    let written = 0;
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      if (o.signal?.aborted) throw Object.assign(new Error('export stopped on request'), { code: 'ABORTED' });
      const b = encodeData(t, t.data());
      if (written !== offsets[i]) throw new Error('internal: GGUF offsets out of step');
      fs.writeSync(fd, b);
      fs.writeSync(fd, pad(b.length));
      written += b.length + pad(b.length).length;
      o.onProgress?.(i + 1, tensors.length, t.name);
      await new Promise((r) => setImmediate(r));
    }
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(tmp, { force: true });
  }
  renameInto(tmp, out);
}

/** A temporary name beside `out`, unique to this process and call (never a user's `<out>.tmp`). */
function tempName(out: string): string {
  return path.join(path.dirname(path.resolve(out)), `.${path.basename(out)}.${process.pid}-${Math.random().toString(36).slice(2, 8)}.tmp`);
}

/** An export target that is a folder: said before anything is written (the rename used to fail with EISDIR). */
function refuseFolder(out: string): void {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(out);
  } catch {
    return;
  }
  if (st.isDirectory())
    throw Object.assign(new Error(`${path.resolve(out)} is a folder; give a file name such as ${path.join(path.resolve(out), 'model.gguf')}`), { code: 'BAD_INPUT' });
}

/** rename(tmp, out); the temporary file is removed when the rename fails (no `.tmp` is ever left behind). */
function renameInto(tmp: string, out: string): void {
  try {
    fs.renameSync(tmp, out);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EISDIR' || err.code === 'ENOTEMPTY' || err.code === 'EEXIST') refuseFolder(out);
    throw Object.assign(new Error(`cannot write ${path.resolve(out)}: ${err.code ?? ''} ${err.message.replace(/^[A-Z]+: /, '')}`.replace(/\s+/g, ' ')), { code: 'IO' });
  }
}

/** Whether an export with this template writes an Ollama Modelfile beside the GGUF. */
export function writesModelfile(template: TemplateName | undefined): boolean {
  return template !== undefined && TURNS[template] !== undefined;
}

function readConfig(dir: string): Record<string, unknown> {
  const f = path.join(dir, 'config.json');
  if (!fs.existsSync(f)) throw new Error(`no config.json in ${dir}`);
  return JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
}

const fileType = (d: GgufDtype) => (d === 'f32' ? 0 : d === 'f16' ? 1 : 32);
const ggmlType = (d: GgufDtype) => (d === 'f32' ? GGML.F32 : d === 'f16' ? GGML.F16 : GGML.BF16);

/** `<dir>/<name>.Modelfile` for `<dir>/<name>.gguf`: two exports into one folder keep their own Modelfile. */
export function modelfilePath(gguf: string): string {
  return path.join(path.dirname(gguf), `${path.basename(gguf).replace(/\.gguf$/i, '')}.Modelfile`);
}

/** Writes the GGUF (and the Modelfile), yielding to the event loop between tensors. Rejects with a message
 *  naming what is unsupported (code UNSUPPORTED) or damaged; an aborted or failed export leaves no file under
 *  the final name. */
export async function exportGguf(o: ExportOptions): Promise<ExportResult> {
  const cfg = readConfig(o.modelDir);
  if (o.template && !TEMPLATES.includes(o.template)) throw new Error(`unknown template "${o.template}"`);
  const st = openSafetensorsDir(o.modelDir);
  const plan = planFor(cfg, (n) => st.has(n));
  const dtype = o.dtype ?? 'f16';
  const wtype = ggmlType(dtype);
  const out: OutTensor[] = plan.specs.map((s) => {
    if (s.gen) return { name: s.name, shape: s.gen.shape, type: GGML.F32, data: s.gen.data };
    const t = st.get(s.src);
    if (!t) throw new Error(`the weights lack '${s.src}' (needed for ${s.name} of the ${plan.family} export)`);
    const cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    return { name: s.name, shape: s.rows ? [s.rows.length, ...t.shape.slice(1)] : t.shape, type: s.vec ? GGML.F32 : wtype, data: () => gatherRows(readF32(t), cols, s.rows) };
  });

  const vocab = readVocab(o.modelDir, plan.vocabSize);
  const tcfg = readJsonIf(path.join(o.modelDir, 'tokenizer_config.json')) ?? {};
  const turns = o.template ? TURNS[o.template] : undefined;
  if (o.template && o.template !== 'chat_template' && !turns) throw new Error(`no export layout for template "${o.template}" (known: ${EXPORT_TEMPLATES.join(', ')})`);
  const chatTemplate = turns ? jinjaTemplate(o.template!) : typeof tcfg.chat_template === 'string' ? tcfg.chat_template : null;

  const kv: [string, KvValue][] = [
    ['general.architecture', { t: 'str', v: plan.arch }],
    ['general.name', { t: 'str', v: o.name ?? path.basename(path.resolve(o.modelDir)) }],
    ['general.file_type', { t: 'u32', v: fileType(dtype) }],
    ['general.alignment', { t: 'u32', v: ALIGN }],
    ...plan.kv,
  ];
  kv.push(['tokenizer.ggml.model', { t: 'str', v: vocab.model }]);
  if (vocab.pre) kv.push(['tokenizer.ggml.pre', { t: 'str', v: vocab.pre }]);
  kv.push(['tokenizer.ggml.tokens', { t: 'arr', of: 'str', v: vocab.tokens }]);
  if (vocab.scores) kv.push(['tokenizer.ggml.scores', { t: 'arr', of: 'f32', v: vocab.scores }]);
  kv.push(['tokenizer.ggml.token_type', { t: 'arr', of: 'i32', v: vocab.types }]);
  if (vocab.merges) kv.push(['tokenizer.ggml.merges', { t: 'arr', of: 'str', v: vocab.merges }]);
  for (const [k, v] of [['bos', vocab.bos], ['eos', vocab.eos], ['unknown', vocab.unk], ['padding', vocab.pad]] as const)
    if (v !== null && v >= 0) kv.push([`tokenizer.ggml.${k}_token_id`, { t: 'u32', v }]);
  const addBos = turns ? turns.bos : typeof tcfg.add_bos_token === 'boolean' ? tcfg.add_bos_token : (vocab.addBos ?? plan.addBos ?? vocab.model === 'llama');
  kv.push(['tokenizer.ggml.add_bos_token', { t: 'bool', v: addBos }], ['tokenizer.ggml.add_eos_token', { t: 'bool', v: false }]);
  if (chatTemplate) kv.push(['tokenizer.chat_template', { t: 'str', v: chatTemplate }]);

  await writeGguf(o.out, kv, out, o);
  let modelfile: string | null = null;
  if (turns && o.modelfile !== false) {
    modelfile = modelfilePath(o.out);
    const tmp = tempName(modelfile);
    try {
      fs.writeFileSync(tmp, ollamaModelfile(path.basename(o.out), o.template!, vocab));
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    renameInto(tmp, modelfile);
  }
  return { gguf: o.out, modelfile, architecture: plan.arch, tensors: out.length, bytes: fs.statSync(o.out).size, vocab: vocab.tokens.length, tokenizer: vocab.model };
}

// ---- a LoRA adapter alone (llama.cpp's adapter GGUF, as convert_lora_to_gguf.py writes it) ------------------

export interface AdapterExportOptions {
  /** the base model folder the adapter was trained on (for the architecture and the tensor layout) */
  modelDir: string;
  /** the PEFT adapter folder (adapter_config.json + adapter_model.safetensors) */
  adapterDir: string;
  out: string;
  dtype?: GgufDtype;
  name?: string;
  onProgress?: (done: number, total: number, tensor: string) => void;
  signal?: AbortSignal;
}

/** Which tensors the base has, without reading weights: safetensors headers, or a sharded .bin's index. */
function baseTensorNames(dir: string): (name: string) => boolean {
  const binIndex = path.join(dir, 'pytorch_model.bin.index.json');
  if (!fs.existsSync(path.join(dir, 'model.safetensors')) && !fs.existsSync(path.join(dir, 'model.safetensors.index.json')) && fs.existsSync(binIndex)) {
    const wm = (JSON.parse(fs.readFileSync(binIndex, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
    return (n) => n in wm;
  }
  const st = openSafetensorsDir(dir);
  return (n) => st.has(n);
}

/** PEFT's per-module pattern lookup (rank_pattern / alpha_pattern keys match a suffix of the module name). */
function patternValue(patterns: unknown, module: string): number | undefined {
  if (!patterns || typeof patterns !== 'object') return undefined;
  for (const [k, v] of Object.entries(patterns as Record<string, number>)) if (new RegExp(`(^|.*\\.)${k}$`).test(module)) return v;
  return undefined;
}

/** Why a DoRA adapter (use_dora true) cannot be written as llama.cpp's LoRA GGUF, and what to do instead. */
export function doraAdapterOnlyMessage(adapterDir: string): string {
  return (
    `${adapterDir} is a DoRA adapter (use_dora true): llama.cpp's LoRA GGUF holds LoRA pairs only and has no place for DoRA's ` +
    `magnitude vectors, so it cannot be exported alone. Merge it into its base first (llms-train model merge) and export the merged ` +
    `folder, or export with --adapter (without --adapter-only), which merges it on the way`
  );
}

/** Writes llama.cpp's LoRA adapter GGUF: general.type = adapter, adapter.type = lora, adapter.lora.alpha, and
 *  for each adapted base tensor `<gguf name>.lora_a` [r, in] and `.lora_b` [out, r] (HF order; B's rows moved
 *  like the base tensor's rows). llama.cpp scales by alpha / r of each pair, so per-module scales that differ
 *  (rsLoRA, rank_pattern, alpha_pattern) are folded into lora_b. Load it with the base GGUF of the same model. */
export async function exportAdapterGguf(o: AdapterExportOptions): Promise<ExportResult> {
  const acfgFile = path.join(o.adapterDir, 'adapter_config.json');
  if (!fs.existsSync(acfgFile)) throw new Error(`no adapter_config.json in ${o.adapterDir}`);
  const acfg = JSON.parse(fs.readFileSync(acfgFile, 'utf8')) as Record<string, unknown>;
  if (acfg.peft_type !== undefined && acfg.peft_type !== 'LORA') throw unsupported(`adapter type ${String(acfg.peft_type)}: llama.cpp loads LoRA adapters only`);
  if (acfg.use_dora === true) throw unsupported(doraAdapterOnlyMessage(o.adapterDir));
  const cfg = readConfig(o.modelDir);
  const single = path.join(o.adapterDir, 'adapter_model.safetensors');
  if (!fs.existsSync(single)) {
    if (fs.existsSync(path.join(o.adapterDir, 'adapter_model.bin'))) throw new Error(`${o.adapterDir} holds adapter_model.bin only: convert it to safetensors first (llms-train model convert)`);
    throw new Error(`no adapter_model.safetensors in ${o.adapterDir}`);
  }
  const ad = new Map(readStHeader(single).map((t) => [t.name.replace(/^base_model\.model\./, ''), t]));
  const plan = planFor(cfg, baseTensorNames(o.modelDir));
  const r0 = typeof acfg.r === 'number' ? acfg.r : 8;
  const alpha0 = typeof acfg.lora_alpha === 'number' ? acfg.lora_alpha : r0;
  const dtype = o.dtype ?? 'f16';
  const wtype = ggmlType(dtype);
  const used = new Set<string>();
  const out: OutTensor[] = [];
  for (const s of plan.specs) {
    if (s.vec || !s.src.endsWith('.weight')) continue;
    const module = s.src.slice(0, -'.weight'.length);
    const a = ad.get(`${module}.lora_A.weight`);
    const b = ad.get(`${module}.lora_B.weight`);
    if (!a || !b) continue;
    used.add(`${module}.lora_A.weight`).add(`${module}.lora_B.weight`);
    const r = a.shape[0]!;
    if (b.shape[1] !== r) throw new Error(`${module}: lora_A has ${r} rows but lora_B ${b.shape[1]} columns`);
    const alpha = patternValue(acfg.alpha_pattern, module) ?? alpha0;
    const rank = patternValue(acfg.rank_pattern, module) ?? r;
    const scale = acfg.use_rslora === true ? alpha / Math.sqrt(rank) : alpha / rank;
    const fold = (scale * r) / alpha0; // llama.cpp applies alpha0 / r
    out.push({ name: `${s.name}.lora_a`, shape: a.shape, type: wtype, data: () => readF32(a) });
    out.push({
      name: `${s.name}.lora_b`,
      shape: s.rows ? [s.rows.length, r] : b.shape,
      type: wtype,
      data: () => {
        const x = gatherRows(readF32(b), r, s.rows);
        return fold === 1 ? x : x.map((v) => v * fold);
      },
    });
  }
  const left = [...ad.keys()].filter((k) => !used.has(k));
  if (left.length)
    throw unsupported(
      `adapter tensor '${left[0]}'${left.length > 1 ? ` (and ${left.length - 1} more)` : ''} has no place in llama.cpp's LoRA GGUF (only LoRA pairs on the ${plan.family} model's linear weights; modules_to_save, embedding LoRA and biases need a merged export)`,
    );
  if (!out.length) throw new Error(`${o.adapterDir} holds no LoRA pairs`);
  const kv: [string, KvValue][] = [
    ['general.architecture', { t: 'str', v: plan.arch }],
    ['general.type', { t: 'str', v: 'adapter' }],
    ['general.name', { t: 'str', v: o.name ?? path.basename(path.resolve(o.adapterDir)) }],
    ['general.file_type', { t: 'u32', v: fileType(dtype) }],
    ['general.alignment', { t: 'u32', v: ALIGN }],
    ['adapter.type', { t: 'str', v: 'lora' }],
    ['adapter.lora.alpha', { t: 'f32', v: alpha0 }],
  ];
  await writeGguf(o.out, kv, out, o);
  return { gguf: o.out, modelfile: null, architecture: plan.arch, tensors: out.length, bytes: fs.statSync(o.out).size, vocab: 0, tokenizer: 'none' };
}
