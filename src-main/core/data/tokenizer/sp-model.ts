// sp-model.ts — reads a SentencePiece model file (the `ModelProto` protobuf behind tokenizer.model and
// ice_text.model) far enough to know its pieces, their types and the unk/bos/eos/pad ids: the WASM
// SentencePiece we encode with exposes neither the vocabulary size nor id → piece.

/** SentencePiece piece types (sentencepiece_model.proto `SentencePiece.Type`). */
export enum PieceType {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

export interface SpModelInfo {
  pieces: string[];
  types: PieceType[];
  pieceToId: Map<string, number>;
  /** trainer_spec.model_type: 1 unigram, 2 bpe, 3 word, 4 char. */
  modelType: number;
  byteFallback: boolean;
  /** sentencepiece's own answers: -1 when the model has none. */
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
}

class Reader {
  pos = 0;
  constructor(
    readonly buf: Uint8Array,
    readonly end = buf.length,
  ) {}

  varint(): number {
    // Unsigned (tags, lengths): bit ops for the first 28 bits, arithmetic past them.
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++]!;
      if (shift < 28) result |= (b & 0x7f) << shift;
      else if (shift < 64) result += (b & 0x7f) * 2 ** shift;
      else throw new Error('varint too long');
      if ((b & 0x80) === 0) break;
      shift += 7;
    }
    return result;
  }

  /** An int32 field: sign-extended 64-bit varint → its low 32 bits, signed. */
  int32(): number {
    const start = this.pos;
    let lo = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++]!;
      if (shift < 32) lo |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) break;
      shift += 7;
      if (this.pos - start > 10) throw new Error('varint too long');
    }
    return lo | 0;
  }

  bytes(): Uint8Array {
    const n = this.varint();
    if (n < 0 || this.pos + n > this.end) throw new Error('truncated length-delimited field');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.int32();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.bytes();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new Error(`unsupported protobuf wire type ${wireType}`);
    }
    if (this.pos > this.end) throw new Error('truncated fixed-size field');
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Parses a SentencePiece `ModelProto`; throws on anything that is not one. */
export function parseSpModel(buf: Uint8Array): SpModelInfo {
  const pieces: string[] = [];
  const types: PieceType[] = [];
  let modelType = 1;
  let byteFallback = false;
  const names = { unk: '<unk>', bos: '<s>', eos: '</s>', pad: '<pad>' };
  const r = new Reader(buf);
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 1 && wire === 2) {
      // repeated SentencePiece pieces = 1 { string piece = 1; float score = 2; Type type = 3; }
      const sub = r.bytes();
      const pr = new Reader(sub);
      let piece: string | null = null;
      let type = PieceType.Normal;
      while (pr.pos < pr.end) {
        const t = pr.varint();
        const f = Math.floor(t / 8);
        const w = t & 7;
        if (f === 1 && w === 2) piece = utf8.decode(pr.bytes());
        else if (f === 3 && w === 0) type = pr.int32() as PieceType;
        else pr.skip(w);
      }
      if (piece === null) throw new Error(`piece #${pieces.length} has no text`);
      if (type < PieceType.Normal || type > PieceType.Byte) throw new Error(`piece #${pieces.length} has unknown type ${type}`);
      pieces.push(piece);
      types.push(type);
    } else if (field === 2 && wire === 2) {
      // TrainerSpec trainer_spec = 2
      const tr = new Reader(r.bytes());
      while (tr.pos < tr.end) {
        const t = tr.varint();
        const f = Math.floor(t / 8);
        const w = t & 7;
        if (f === 3 && w === 0) modelType = tr.int32();
        else if (f === 35 && w === 0) byteFallback = tr.int32() !== 0;
        else if (f === 45 && w === 2) names.unk = utf8.decode(tr.bytes());
        else if (f === 46 && w === 2) names.bos = utf8.decode(tr.bytes());
        else if (f === 47 && w === 2) names.eos = utf8.decode(tr.bytes());
        else if (f === 48 && w === 2) names.pad = utf8.decode(tr.bytes());
        else tr.skip(w);
      }
    } else if (field >= 1 && field <= 5) {
      // normalizer_spec = 3, self_test_data = 4, denormalizer_spec = 5
      if (wire !== 2) throw new Error(`field ${field} has wire type ${wire}`);
      r.bytes();
    } else if (field === 0) {
      throw new Error('invalid field number 0');
    } else {
      r.skip(wire);
    }
  }
  if (pieces.length === 0) throw new Error('no pieces');
  const pieceToId = new Map<string, number>();
  pieces.forEach((p, i) => {
    if (!pieceToId.has(p)) pieceToId.set(p, i);
  });
  // As sentencepiece does: unk is the UNKNOWN piece; bos/eos/pad are the trainer spec's pieces when present.
  const unkId = types.indexOf(PieceType.Unknown);
  const idOf = (name: string) => pieceToId.get(name) ?? -1;
  return {
    pieces,
    types,
    pieceToId,
    modelType,
    byteFallback,
    unkId,
    bosId: idOf(names.bos),
    eosId: idOf(names.eos),
    padId: idOf(names.pad),
  };
}

function varintBytes(n: number): number[] {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

/**
 * The model with `normalizer_spec.add_dummy_prefix` false: SentencePiece then puts no "▁" before the text it encodes
 * (what transformers does to the model of a LlamaTokenizer with `legacy: false`, whose pre-tokenizer places the "▁"
 * itself). Every other field is copied byte for byte.
 */
export function withoutDummyPrefix(buf: Uint8Array): Uint8Array {
  const concat = (parts: Uint8Array[]) => {
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  };
  const noPrefix = Uint8Array.of(0x18, 0x00); // add_dummy_prefix (field 3, varint) = false
  const r = new Reader(buf);
  const parts: Uint8Array[] = [];
  let normalizer: Uint8Array = noPrefix;
  while (r.pos < r.end) {
    const start = r.pos;
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 3 && wire === 2) {
      // NormalizerSpec: its fields but add_dummy_prefix, then add_dummy_prefix = false
      const sub = r.bytes();
      const nr = new Reader(sub);
      const kept: Uint8Array[] = [];
      while (nr.pos < nr.end) {
        const s = nr.pos;
        const t = nr.varint();
        nr.skip(t & 7);
        if (Math.floor(t / 8) !== 3) kept.push(sub.subarray(s, nr.pos));
      }
      kept.push(noPrefix);
      normalizer = concat(kept);
      continue;
    }
    r.skip(wire);
    parts.push(buf.subarray(start, r.pos));
  }
  parts.push(Uint8Array.from([0x1a, ...varintBytes(normalizer.length)]), normalizer);
  return concat(parts);
}
