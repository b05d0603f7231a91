// gguf.ts — exports a (merged) HF model folder as a GGUF file for llama.cpp / Ollama / LM Studio, plus an
// Ollama Modelfile whose TEMPLATE and stop tokens match the training template (data/templates.ts).
// GGUF v3 as llama.cpp's gguf-py writes it: header, metadata KVs, tensor infos, data aligned to 32 bytes.
// Families: llama (LLaMA, Chinese-LLaMA, BELLE-LLaMA, TigerBot, …) and baichuan (Baichuan-7B, exported as the
// llama architecture with W_pack split, as llama.cpp's converter does). Q/K rows are permuted from HF's
// rotate-half layout to GGML's interleaved RoPE layout (convert_hf_to_gguf.py `LlamaModel.permute`).
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
function floatToBf16(v: number): number {
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
    else if (wire === 2) p += varint(end);
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
      model: { type: string; vocab: Record<string, number>; merges?: (string | [string, string])[] };
      added_tokens?: { id: number; content: string; special?: boolean }[];
      pre_tokenizer?: { type?: string; use_regex?: boolean; pretokenizers?: { type?: string }[] } | null;
    };
    if (tj.model.type !== 'BPE') throw new Error(`tokenizer.json model type ${tj.model.type} cannot be exported to GGUF yet (BPE or tokenizer.model only)`);
    model = 'gpt2';
    const byteLevel = tj.pre_tokenizer?.type === 'ByteLevel' || (tj.pre_tokenizer?.pretokenizers ?? []).some((p) => p.type === 'ByteLevel');
    if (!byteLevel) throw new Error('tokenizer.json is a BPE without a ByteLevel pre-tokenizer; llama.cpp needs a tokenizer.model for it');
    pre = tj.pre_tokenizer?.type === 'ByteLevel' && tj.pre_tokenizer.use_regex !== false ? 'gpt-2' : 'default';
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
  return { model, pre, tokens, scores, types, merges, bos: idOf('bos_token', 'bos_token_id'), eos: idOf('eos_token', 'eos_token_id'), unk: idOf('unk_token', 'unk_token_id'), pad: idOf('pad_token', 'pad_token_id') };
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

/** Multi-turn layouts of templates.ts (per round: user text, then the answer, then eos). */
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
  g += `${goEscape(t.first)}{{ else }}${goEscape(t.later)}{{ end }}${goEscape(t.pre)}{{ .Content }}${goEscape(t.post)}${between}{{ $n = 1 }}`;
  g += `{{ else if eq .Role "assistant" }}{{ .Content }}${eos}{{ end }}{{ end }}`;
  const lines = [
    `# Ollama Modelfile written by LLMs-train: training template "${name}"`,
    `# ollama create my-model -f Modelfile`,
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

/** HF [n_head·hd, in] rows (rotate-half) → GGML's interleaved rows (convert_hf_to_gguf.py permute). */
export function permuteQK(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  const hd = rows / nHead;
  const half = hd / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHead; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const src = (h * hd + j * half + i) * cols;
        const dst = (h * hd + i * 2 + j) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
  return out;
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

/** Writes the GGUF (and the Modelfile), yielding to the event loop between tensors. Rejects with a message
 *  naming what is unsupported or damaged; an aborted or failed export leaves no file under the final name. */
export async function exportGguf(o: ExportOptions): Promise<ExportResult> {
  const cfg = JSON.parse(fs.readFileSync(path.join(o.modelDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const num = (k: string, def?: number): number => {
    const v = cfg[k];
    if (typeof v === 'number') return v;
    if (def !== undefined) return def;
    throw new Error(`config.json lacks ${k}`);
  };
  const mt = String(cfg.model_type ?? '');
  if (mt !== 'llama' && mt !== 'baichuan')
    throw new Error(`GGUF export supports the llama and baichuan (7B) families for now, not model_type "${mt}"`);
  if (o.template && !TEMPLATES.includes(o.template)) throw new Error(`unknown template "${o.template}"`);
  const dtype = o.dtype ?? 'f16';
  const wtype = dtype === 'f32' ? GGML.F32 : dtype === 'f16' ? GGML.F16 : GGML.BF16;
  const st = openSafetensorsDir(o.modelDir);
  const H = num('hidden_size');
  const nh = num('num_attention_heads');
  const nkv = num('num_key_value_heads', nh);
  const L = num('num_hidden_layers');
  const V = num('vocab_size');
  const hd = num('head_dim', H / nh);
  const tensor = (n: string) => {
    const t = st.get(n);
    if (!t) throw new Error(`the weights lack '${n}'`);
    return t;
  };
  const out: OutTensor[] = [];
  const add = (name: string, src: string, is1d = false, f?: (x: Float32Array) => Float32Array) => {
    const t = tensor(src);
    out.push({ name, shape: t.shape, type: is1d ? GGML.F32 : wtype, data: () => (f ? f(readF32(t)) : readF32(t)) });
  };
  add('token_embd.weight', 'model.embed_tokens.weight');
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    const b = `blk.${l}.`;
    add(`${b}attn_norm.weight`, `${p}input_layernorm.weight`, true);
    if (mt === 'baichuan') {
      const w = tensor(`${p}self_attn.W_pack.weight`);
      const part = (k: number) => () => readF32(w).subarray(k * H * H, (k + 1) * H * H);
      out.push({ name: `${b}attn_q.weight`, shape: [H, H], type: wtype, data: () => permuteQK(part(0)(), H, H, nh) });
      out.push({ name: `${b}attn_k.weight`, shape: [H, H], type: wtype, data: () => permuteQK(part(1)(), H, H, nh) });
      out.push({ name: `${b}attn_v.weight`, shape: [H, H], type: wtype, data: () => part(2)().slice() });
    } else {
      add(`${b}attn_q.weight`, `${p}self_attn.q_proj.weight`, false, (x) => permuteQK(x, nh * hd, H, nh));
      add(`${b}attn_k.weight`, `${p}self_attn.k_proj.weight`, false, (x) => permuteQK(x, nkv * hd, H, nkv));
      add(`${b}attn_v.weight`, `${p}self_attn.v_proj.weight`);
    }
    add(`${b}attn_output.weight`, `${p}self_attn.o_proj.weight`);
    add(`${b}ffn_norm.weight`, `${p}post_attention_layernorm.weight`, true);
    add(`${b}ffn_gate.weight`, `${p}mlp.gate_proj.weight`);
    add(`${b}ffn_up.weight`, `${p}mlp.up_proj.weight`);
    add(`${b}ffn_down.weight`, `${p}mlp.down_proj.weight`);
  }
  add('output_norm.weight', 'model.norm.weight', true);
  if (st.has('lm_head.weight') && !cfg.tie_word_embeddings) add('output.weight', 'lm_head.weight');

  const vocab = readVocab(o.modelDir, V);
  const tcfg = readJsonIf(path.join(o.modelDir, 'tokenizer_config.json')) ?? {};
  const turns = o.template ? TURNS[o.template] : undefined;
  if (o.template && o.template !== 'chat_template' && !turns) throw new Error(`no export layout for template "${o.template}" (known: ${EXPORT_TEMPLATES.join(', ')})`);
  const chatTemplate = turns ? jinjaTemplate(o.template!) : typeof tcfg.chat_template === 'string' ? tcfg.chat_template : null;

  const kv: [string, KvValue][] = [
    ['general.architecture', { t: 'str', v: 'llama' }],
    ['general.name', { t: 'str', v: o.name ?? path.basename(path.resolve(o.modelDir)) }],
    ['general.file_type', { t: 'u32', v: dtype === 'f32' ? 0 : dtype === 'f16' ? 1 : 32 }],
    ['general.alignment', { t: 'u32', v: ALIGN }],
    ['llama.vocab_size', { t: 'u32', v: V }],
    ['llama.context_length', { t: 'u32', v: num('max_position_embeddings', num('model_max_length', 2048)) }],
    ['llama.embedding_length', { t: 'u32', v: H }],
    ['llama.block_count', { t: 'u32', v: L }],
    ['llama.feed_forward_length', { t: 'u32', v: num('intermediate_size') }],
    ['llama.rope.dimension_count', { t: 'u32', v: hd }],
    ['llama.attention.head_count', { t: 'u32', v: nh }],
    ['llama.attention.head_count_kv', { t: 'u32', v: nkv }],
    ['llama.attention.layer_norm_rms_epsilon', { t: 'f32', v: num('rms_norm_eps', 1e-6) }],
    ['llama.rope.freq_base', { t: 'f32', v: num('rope_theta', 10000) }],
  ];
  const rs = cfg.rope_scaling as { type?: string; rope_type?: string; factor?: number } | null | undefined;
  if (rs && (rs.type ?? rs.rope_type) === 'linear' && typeof rs.factor === 'number') {
    kv.push(['llama.rope.scaling.type', { t: 'str', v: 'linear' }], ['llama.rope.scaling.factor', { t: 'f32', v: rs.factor }]);
  } else if (rs) throw new Error(`rope_scaling ${JSON.stringify(rs)} cannot be exported yet (linear only)`);
  kv.push(['tokenizer.ggml.model', { t: 'str', v: vocab.model }]);
  if (vocab.pre) kv.push(['tokenizer.ggml.pre', { t: 'str', v: vocab.pre }]);
  kv.push(['tokenizer.ggml.tokens', { t: 'arr', of: 'str', v: vocab.tokens }]);
  if (vocab.scores) kv.push(['tokenizer.ggml.scores', { t: 'arr', of: 'f32', v: vocab.scores }]);
  kv.push(['tokenizer.ggml.token_type', { t: 'arr', of: 'i32', v: vocab.types }]);
  if (vocab.merges) kv.push(['tokenizer.ggml.merges', { t: 'arr', of: 'str', v: vocab.merges }]);
  for (const [k, v] of [['bos', vocab.bos], ['eos', vocab.eos], ['unknown', vocab.unk], ['padding', vocab.pad]] as const)
    if (v !== null && v >= 0) kv.push([`tokenizer.ggml.${k}_token_id`, { t: 'u32', v }]);
  const addBos = turns ? turns.bos : typeof tcfg.add_bos_token === 'boolean' ? tcfg.add_bos_token : vocab.model === 'llama';
  kv.push(['tokenizer.ggml.add_bos_token', { t: 'bool', v: addBos }], ['tokenizer.ggml.add_eos_token', { t: 'bool', v: false }]);
  if (chatTemplate) kv.push(['tokenizer.chat_template', { t: 'str', v: chatTemplate }]);

  // Header + metadata + tensor infos, then the data, each tensor aligned.
  const head = new Buf();
  head.push(Buffer.from('GGUF', 'ascii'));
  head.u32(3);
  head.u64(out.length);
  head.u64(kv.length);
  for (const [k, v] of kv) writeKv(head, k, v);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of out) {
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
  fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
  const tmp = `${o.out}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  let ok = false;
  try {
    for (const p of head.parts) fs.writeSync(fd, p);
    fs.writeSync(fd, pad(head.size));
    let written = 0;
    for (let i = 0; i < out.length; i++) {
      const t = out[i]!;
      if (o.signal?.aborted) throw Object.assign(new Error('export stopped on request'), { code: 'ABORTED' });
      const b = encodeData(t, t.data());
      if (written !== offsets[i]) throw new Error('internal: GGUF offsets out of step');
      fs.writeSync(fd, b);
      fs.writeSync(fd, pad(b.length));
      written += b.length + pad(b.length).length;
      o.onProgress?.(i + 1, out.length, t.name);
      await new Promise((r) => setImmediate(r));
    }
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(tmp, { force: true });
  }
  fs.renameSync(tmp, o.out);
  let modelfile: string | null = null;
  if (turns && o.modelfile !== false) {
    modelfile = path.join(path.dirname(o.out), 'Modelfile');
    fs.writeFileSync(`${modelfile}.tmp`, ollamaModelfile(path.basename(o.out), o.template!, vocab));
    fs.renameSync(`${modelfile}.tmp`, modelfile);
  }
  return { gguf: o.out, modelfile, architecture: 'llama', tensors: out.length, bytes: fs.statSync(o.out).size, vocab: vocab.tokens.length, tokenizer: vocab.model };
}
