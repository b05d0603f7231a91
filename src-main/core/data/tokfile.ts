// tokfile.ts — the tokenized dataset file (.tok, version 1; layout in docs/formats.md): a streaming writer
// (samples appended one by one, assembled and renamed into place atomically at the end) and a reader for
// `data show` and tests. The engine memory-maps the same layout (native/engine/tokdata.cpp).
import fs from 'node:fs';
import path from 'node:path';

import { ensureDir, ioError } from '../io-error.js';

const MAGIC = Buffer.from('LLMTTOK1', 'ascii');

export interface TokHeader {
  num_samples: number;
  num_tokens: number;
  [key: string]: unknown;
}

export class TokWriter {
  private readonly tmpIds: string;
  private readonly tmpMask: string;
  private readonly tmpPos: string;
  private readonly ids: fs.WriteStream;
  private readonly mask: fs.WriteStream;
  private readonly pos: fs.WriteStream | null;
  private readonly offsets: number[] = [0];
  private tokens = 0;
  /** The first write error of a temp stream (disk full, …): add() and finish() throw it. */
  private failed: Error | null = null;
  /** Writers with temp files on disk (removed by removeTokTempFiles() on a hard exit). */
  private static readonly live = new Set<TokWriter>();

  /** packed: rows of several samples, each row with position ids restarting at 0 per sample. */
  constructor(
    readonly file: string,
    readonly packed = false,
  ) {
    ensureDir(path.dirname(path.resolve(file)));
    const base = `${file}.${process.pid}.tmp`;
    this.tmpIds = `${base}.ids`;
    this.tmpMask = `${base}.mask`;
    this.tmpPos = `${base}.pos`;
    // the streams open lazily: an error (read-only folder, full disk) arrives as an 'error' event, kept here
    const open = (f: string) => fs.createWriteStream(f).on('error', (err) => (this.failed ??= ioError(err, this.file)));
    this.ids = open(this.tmpIds);
    this.mask = open(this.tmpMask);
    this.pos = packed ? open(this.tmpPos) : null;
    TokWriter.live.add(this);
  }

  /** Removes every live writer's temp files at once (synchronous: for a process about to exit). */
  static removeTempFiles(): void {
    for (const w of TokWriter.live) w.cleanup();
  }

  get count(): number {
    return this.offsets.length - 1;
  }

  add(ids: readonly number[], mask: readonly boolean[], positions?: readonly number[]): void {
    if (this.failed) throw this.failed;
    if (ids.length === 0) throw new Error('a sample has no tokens');
    if (ids.length !== mask.length) throw new Error('ids and mask differ in length');
    if (this.pos) {
      if (!positions || positions.length !== ids.length || positions[0] !== 0) throw new Error('a packed row needs position ids starting at 0');
      const p = Buffer.alloc(positions.length * 4);
      positions.forEach((v, i) => p.writeInt32LE(v, i * 4));
      this.pos.write(p);
    }
    const b = Buffer.alloc(ids.length * 4);
    const m = Buffer.alloc(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) throw new Error(`token id ${id} is not a valid id`);
      b.writeInt32LE(id, i * 4);
      m[i] = mask[i] ? 1 : 0;
    }
    this.ids.write(b);
    this.mask.write(m);
    this.tokens += ids.length;
    this.offsets.push(this.tokens);
  }

  /** Writes the final file (header, offsets, ids, mask) to a temp name, syncs it and renames it into place. */
  async finish(header: Record<string, unknown>): Promise<TokHeader> {
    try {
      await Promise.all([end(this.ids), end(this.mask), ...(this.pos ? [end(this.pos)] : [])]);
    } catch (err) {
      this.cleanup();
      throw this.failed ?? ioError(err, this.file);
    }
    if (this.failed) {
      this.cleanup();
      throw this.failed;
    }
    const full: TokHeader = { ...header, ...(this.pos ? { packed: true } : {}), num_samples: this.count, num_tokens: this.tokens };
    const h = Buffer.from(JSON.stringify(full), 'utf8');
    const fixed = Buffer.alloc(16);
    MAGIC.copy(fixed, 0);
    fixed.writeUInt32LE(1, 8);
    fixed.writeUInt32LE(h.length, 12);
    const pad = (8 - ((16 + h.length) % 8)) % 8;
    const off = Buffer.alloc(this.offsets.length * 8);
    this.offsets.forEach((o, i) => off.writeBigUInt64LE(BigInt(o), i * 8));
    const tmp = `${this.file}.${process.pid}.tmp`;
    let fd: number;
    try {
      fd = fs.openSync(tmp, 'w');
    } catch (err) {
      this.cleanup();
      throw ioError(err, this.file);
    }
    try {
      fs.writeSync(fd, fixed);
      fs.writeSync(fd, h);
      fs.writeSync(fd, Buffer.alloc(pad));
      fs.writeSync(fd, off);
      for (const part of this.pos ? [this.tmpIds, this.tmpMask, this.tmpPos] : [this.tmpIds, this.tmpMask]) {
        const rfd = fs.openSync(part, 'r');
        const buf = Buffer.alloc(1 << 20);
        for (;;) {
          const n = fs.readSync(rfd, buf, 0, buf.length, null);
          if (!n) break;
          fs.writeSync(fd, buf, 0, n);
        }
        fs.closeSync(rfd);
      }
      fs.fsyncSync(fd);
    } catch (err) {
      fs.closeSync(fd);
      this.cleanup(tmp);
      throw ioError(err, this.file);
    }
    fs.closeSync(fd);
    try {
      fs.renameSync(tmp, this.file);
    } catch (err) {
      this.cleanup(tmp);
      throw ioError(err, this.file);
    }
    this.cleanup();
    return full;
  }

  /** Removes the temporary files (after finish, or when giving up). */
  cleanup(extra?: string): void {
    for (const f of [this.tmpIds, this.tmpMask, this.tmpPos, extra]) if (f) fs.rmSync(f, { force: true });
    TokWriter.live.delete(this);
  }

  /** Gives up: closes the temp streams (their errors do not matter any more) and removes the temp files. */
  async abort(): Promise<void> {
    await Promise.all([this.ids, this.mask, ...(this.pos ? [this.pos] : [])].map((s) => end(s).catch(() => {})));
    this.cleanup();
  }
}

function end(s: fs.WriteStream): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.destroyed) {
      // a stream that failed is destroyed: end() would never call back
      if (s.errored) reject(s.errored);
      else resolve();
      return;
    }
    s.once('error', reject);
    s.end((err?: Error | null) => (err ? reject(err) : resolve()));
  });
}

/**
 * Reads a .tok file without loading it whole: the header and offsets at open, each sample's bytes on demand
 * (positioned reads), so `data show` on a multi-GB file stays instant.
 */
export class TokReader {
  readonly header: TokHeader;
  private readonly offsets: BigUint64Array;
  private readonly idsAt: number;
  private readonly maskAt: number;
  private readonly posAt: number | null;

  private constructor(
    private readonly fd: number,
    readonly file: string,
  ) {
    const bad = (why: string) => new Error(`${file} is not a valid .tok file: ${why}`);
    const size = fs.fstatSync(fd).size;
    const fixed = this.read(0, Math.min(16, size));
    if (size < 16 || !fixed.subarray(0, 8).equals(MAGIC)) throw bad('wrong magic (not prepared by llms-train data prepare?)');
    if (fixed.readUInt32LE(8) !== 1) throw bad(`unsupported version ${fixed.readUInt32LE(8)}`);
    const hl = fixed.readUInt32LE(12);
    if (16 + hl > size) throw bad('truncated header');
    try {
      this.header = JSON.parse(this.read(16, hl).toString('utf8')) as TokHeader;
    } catch {
      throw bad('the header is not JSON');
    }
    // the checks the engine makes (native/engine/tokdata.cpp), so a damaged file is named, not a RangeError
    const damaged = (why: string) => new Error(`${file} is damaged: ${why}; prepare it again (llms-train data prepare)`);
    if (typeof this.header !== 'object' || this.header === null || Array.isArray(this.header)) throw damaged('its header is not a JSON object');
    const off = Math.ceil((16 + hl) / 8) * 8;
    const n = this.header.num_samples;
    const m = this.header.num_tokens;
    if (!Number.isSafeInteger(n) || !Number.isSafeInteger(m) || n < 0 || m < 0) throw damaged('its header lacks num_samples/num_tokens');
    const packed = this.header.packed === true;
    const need = off + 8 * (n + 1) + (packed ? 9 : 5) * m;
    if (need !== size) throw damaged(`it is ${size} bytes but its header implies ${need} (truncated?)`);
    const ob = this.read(off, 8 * (n + 1));
    this.offsets = new BigUint64Array(ob.buffer.slice(ob.byteOffset, ob.byteOffset + ob.byteLength));
    if (this.offsets[0] !== 0n || this.offsets[n] !== BigInt(m)) throw damaged('its sample offsets do not span the tokens');
    for (let i = 0; i < n; i++) if (this.offsets[i + 1]! <= this.offsets[i]!) throw damaged(`sample ${i} is empty or its offsets decrease`);
    this.idsAt = off + 8 * (n + 1);
    this.maskAt = this.idsAt + 4 * m;
    this.posAt = packed ? this.maskAt + m : null;
  }

  private read(at: number, length: number): Buffer {
    const b = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const n = fs.readSync(this.fd, b, got, length - got, at + got);
      if (n === 0) break;
      got += n;
    }
    return b;
  }

  static open(file: string): TokReader {
    if (!fs.existsSync(file)) throw Object.assign(new Error(`${file} does not exist`), { code: 'BAD_INPUT' });
    if (fs.statSync(file).isDirectory()) throw Object.assign(new Error(`${file} is a folder, not a .tok file`), { code: 'BAD_INPUT', hint: 'A run keeps its prepared data in <output folder>/data/train.tok.' });
    const fd = fs.openSync(file, 'r');
    try {
      return new TokReader(fd, file);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  get size(): number {
    return this.header.num_samples;
  }

  /** Sample i as HF input_ids and labels (−100 where not trained on), plus position_ids when packed. */
  sample(i: number): { input_ids: number[]; labels: number[]; position_ids?: number[] } {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) throw new Error(`index ${i} is out of range (the file has ${this.size} samples)`);
    const b = Number(this.offsets[i]);
    const e = Number(this.offsets[i + 1]);
    const ids = this.read(this.idsAt + 4 * b, 4 * (e - b));
    const mask = this.read(this.maskAt + b, e - b);
    const input_ids: number[] = [];
    const labels: number[] = [];
    for (let t = 0; t < e - b; t++) {
      const id = ids.readInt32LE(4 * t);
      input_ids.push(id);
      labels.push(mask[t] ? id : -100);
    }
    if (this.posAt === null) return { input_ids, labels };
    const pos = this.read(this.posAt + 4 * b, 4 * (e - b));
    const position_ids: number[] = [];
    for (let t = 0; t < e - b; t++) position_ids.push(pos.readInt32LE(4 * t));
    return { input_ids, labels, position_ids };
  }

  length(i: number): number {
    return Number(this.offsets[i + 1]! - this.offsets[i]!);
  }
}

/**
 * Several prepared files as one (the samples of each in order): a run's training files, each prepared on its own
 * (its own format, its own cache entry), become the one .tok the engine reads. The header is the first file's,
 * with `source.data` listing every file and `format` each one's when they differ. Written atomically, as TokWriter
 * writes; all inputs must share the tokenizer and be packed alike.
 */
export async function concatTok(inputs: readonly string[], out: string): Promise<TokHeader> {
  if (!inputs.length) throw new Error('concatTok: no input file');
  const readers = inputs.map((f) => TokReader.open(f));
  try {
    const first = readers[0]!.header;
    const packed = first.packed === true;
    for (const r of readers) {
      if (r.header.tokenizer_hash !== first.tokenizer_hash) throw new Error(`${r.file} was prepared with another tokenizer than ${readers[0]!.file}`);
      if ((r.header.packed === true) !== packed) throw new Error(`${r.file} is ${packed ? 'not ' : ''}packed, unlike ${readers[0]!.file}`);
    }
    const w = new TokWriter(out, packed);
    try {
      for (const r of readers)
        for (let i = 0; i < r.size; i++) {
          const s = r.sample(i);
          w.add(
            s.input_ids,
            s.labels.map((l) => l !== -100),
            s.position_ids,
          );
        }
    } catch (err) {
      await w.abort();
      throw err;
    }
    const src = (h: TokHeader) => (h.source && typeof h.source === 'object' ? (h.source as Record<string, unknown>) : {});
    const formats = [...new Set(readers.map((r) => r.header.format))];
    const { num_samples: _n, num_tokens: _t, packed: _p, ...rest } = first;
    void _n;
    void _t;
    void _p;
    return await w.finish({
      ...rest,
      format: formats.length === 1 ? formats[0] : readers.map((r) => r.header.format),
      source: { ...src(first), data: readers.map((r) => src(r.header).data ?? r.file) },
    });
  } finally {
    for (const r of readers) r.close();
  }
}
