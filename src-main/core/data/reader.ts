// reader.ts — streams records out of a dataset file without loading it whole: JSON Lines, a JSON array (scanned
// element by element, also when the whole array is one line), a JSON object wrapping the list of records
// ({"data": [...]}), CSV/TSV with a header row (RFC 4180 quoting), or plain text (one record per line). UTF-8
// with or without BOM, LF or CRLF, optionally gzip-compressed (`.json.gz`, `.jsonl.gz`, … — told by the gzip
// magic bytes). Every record carries the line it starts on, and every problem (invalid JSON, invalid UTF-8, a
// non-object, a CSV row of the wrong width) is a record-level error with that line number, so the caller can
// fail or skip by policy.
import fs from 'node:fs';
import type { Readable } from 'node:stream';
import zlib from 'node:zlib';

/** `element`: for a JSON array (top-level or wrapped in an object), the element's index (0-based, as `data[i]`),
 *  which tells records that start on the same line apart (a one-line array). */
export type RawRecord = { line: number; element?: number; value: unknown } | { line: number; element?: number; error: string };

/** Where a record is, for messages: "file:7", or "file:1 (element 5)" in a JSON array. */
export function recordAt(file: string, r: { line: number; element?: number }): string {
  return `${file}:${r.line}${r.element !== undefined ? ` (element ${r.element})` : ''}`;
}

/** `json-object`: one JSON object whose list field holds the records (`{"data": [...]}`), or a single
 *  pretty-printed record. */
export type FileKind = 'jsonl' | 'json-array' | 'json-object' | 'csv' | 'tsv' | 'text';

/** Fields whose value is a list inside one record (a conversation, TRL's conversational prompt/completion,
 *  history pairs, PromptCBLUE's choices): an object holding one of these is a record, not a wrapper of records. */
const RECORD_LIST_KEYS = new Set(['conversations', 'messages', 'prompt', 'completion', 'chosen', 'rejected', 'history', 'answer_choices', 'tools', 'images', 'videos', 'audios']);

/** Fields of the records of every format: an object holding one is a record. */
const RECORD_FIELDS = new Set([...RECORD_LIST_KEYS, 'input', 'target', 'instruction', 'output', 'response', 'text', 'system']);

const utf8 = () => new TextDecoder('utf-8', { fatal: true });

/** How much of a file's start is checked for binary content. */
const SNIFF_BYTES = 64 * 1024;

/**
 * A binary file offered as a dataset (model weights, an archive, UTF-16 text): a NUL byte, or mostly invalid
 * UTF-8, in the first 64 KiB. Without this a model.safetensors was read as a 1,546-record "text" dataset. A text
 * file with a few bad bytes is not binary: those lines are named one by one ("invalid UTF-8") like any bad record.
 */
export function binaryContent(head: Buffer): string | null {
  const nul = head.indexOf(0);
  if (nul >= 0) return `a NUL byte at offset ${nul}`;
  const text = new TextDecoder('utf-8').decode(head, { stream: true }); // an incomplete last character is fine
  // replacement characters the decoder made, not the ones the text holds (U+FFFD is valid UTF-8: EF BF BD)
  let bad = 0;
  for (let i = text.indexOf('\ufffd'); i >= 0; i = text.indexOf('\ufffd', i + 1)) bad++;
  const literal = Buffer.from([0xef, 0xbf, 0xbd]);
  for (let i = head.indexOf(literal); i >= 0; i = head.indexOf(literal, i + 3)) bad--;
  if (bad > Math.max(16, text.length / 50)) return `${bad} byte sequences that are not UTF-8 text`;
  return null;
}

const TEXT_HINT =
  'Datasets are UTF-8 text: .json (an array of records, or an object holding one), .jsonl (one JSON record per line), .csv/.tsv (a header row of column names) or .txt, optionally gzip-compressed (.gz). Check that you picked the data file, not a model file.';

function badInput(message: string, hint = TEXT_HINT): Error {
  return Object.assign(new Error(message), { code: 'BAD_INPUT', hint });
}

/** Refuses a binary file with a message naming it (code BAD_INPUT). */
export function assertTextFile(file: string, head: Buffer): void {
  const why = binaryContent(head);
  if (why) throw badInput(`${file} is not a text dataset: it holds binary content (${why} in its first ${Math.round(SNIFF_BYTES / 1024)} KiB)`);
}

function isGzip(b: Buffer): boolean {
  return b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b;
}

/** Whether the file starts with gzip's magic bytes. */
async function gzipped(file: string): Promise<boolean> {
  const fd = await fs.promises.open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    const { bytesRead } = await fd.read(b, 0, 2, 0);
    return isGzip(b.subarray(0, bytesRead));
  } finally {
    await fd.close();
  }
}

/** The file name that says the kind: lower case, without a trailing ".gz". */
function kindName(file: string): string {
  return file.toLowerCase().replace(/\.gz$/, '');
}

/** The first `n` bytes of the file's content: decompressed when it is gzip'd (`gz`). */
async function readHead(file: string, n = SNIFF_BYTES): Promise<{ bytes: Buffer; gz: boolean; full: boolean }> {
  // (every reader of a dataset starts here: a folder given as the dataset is said so, not as EISDIR)
  if ((await fs.promises.stat(file)).isDirectory()) throw badInput(`the dataset ${file} is a folder, not a data file`, 'Give the JSON/JSONL/CSV file inside it.');
  const fd = await fs.promises.open(file, 'r');
  let raw: Buffer;
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fd.read(buf, 0, n, 0);
    raw = buf.subarray(0, bytesRead);
  } finally {
    await fd.close();
  }
  if (raw.length >= 4 && raw.toString('latin1', 0, 4) === 'PAR1') {
    throw badInput(
      `${file} is not a text dataset: it holds binary content (a Parquet file), which the data pipeline does not read`,
      `Convert it to JSON Lines first, e.g. python -c "import pandas as pd; pd.read_parquet('${file}').to_json('data.jsonl', orient='records', lines=True, force_ascii=False)"`,
    );
  }
  if (!isGzip(raw)) return { bytes: raw, gz: false, full: raw.length === n };
  let bytes: Buffer;
  try {
    // a prefix of the compressed stream: SYNC_FLUSH decompresses what it holds without asking for the end
    bytes = zlib.gunzipSync(raw, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  } catch (err) {
    throw badInput(`${file} is a damaged gzip file: ${(err as Error).message}`);
  }
  return { bytes: bytes.subarray(0, n), gz: true, full: bytes.length >= n };
}

/**
 * Whether a file that starts with "{" is one JSON object rather than JSON Lines: its first line opens an object
 * it does not close (pretty-printed: "{", '{"data": [', …), or — a first line longer than the sniffed head — it
 * starts as a list of records wrapped in an object ('{"data": [{…').
 */
function oneObject(head: string, full: boolean): boolean {
  const t = head.trimStart();
  const nl = t.indexOf('\n');
  if (nl < 0) {
    if (!full) return false; // a one-line file: JSON Lines (a small wrapper is unwrapped by the JSONL reader)
    const m = /^\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*\[\s*\{/.exec(t);
    return !!m && !RECORD_LIST_KEYS.has(m[1]!);
  }
  const line = t.slice(0, nl).trim();
  try {
    JSON.parse(line);
    return false;
  } catch {
    return line === '{' || /[[{,:]$/.test(line);
  }
}

/** Decides from the extension and the first bytes; refuses binary content (see binaryContent) and Parquet. */
export async function detectFileKind(file: string): Promise<FileKind> {
  const { bytes, full } = await readHead(file);
  assertTextFile(file, bytes);
  const name = kindName(file);
  if (name.endsWith('.csv')) return 'csv';
  if (name.endsWith('.tsv') || name.endsWith('.tab')) return 'tsv';
  let s = bytes.toString('utf8');
  if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
  const first = s.trimStart()[0];
  const txt = name.endsWith('.txt');
  if (first === '[') return 'json-array';
  if (first === '{') return txt ? 'text' : oneObject(s, full) ? 'json-object' : 'jsonl';
  if (first === undefined) return txt ? 'text' : 'jsonl';
  return name.endsWith('.json') || name.endsWith('.jsonl') ? 'jsonl' : 'text';
}

/** A piece of one line: a line longer than a read chunk comes in several (`eol` on its last). `text` is null
 *  when the line is not UTF-8 (then only its last piece comes); `fatal`: the stream broke (damaged gzip). */
type Seg = { line: number; text: string | null; eol: boolean; fatal?: string };

function openStream(file: string, gz: boolean): { stream: Readable; close(): void } {
  const raw = fs.createReadStream(file, { highWaterMark: 1 << 20 });
  if (!gz) return { stream: raw, close: () => raw.destroy() };
  const gunzip = zlib.createGunzip({ chunkSize: 1 << 20 });
  raw.on('error', (err) => gunzip.destroy(err));
  raw.pipe(gunzip);
  return {
    stream: gunzip,
    close: () => {
      raw.destroy();
      gunzip.destroy();
    },
  };
}

/**
 * The file's lines, in pieces of at most one read chunk (1 MiB): a 2 GB one-line JSON array streams through
 * without ever being one string. LF or CRLF; a BOM is dropped; each line is decoded strictly.
 */
async function* segments(file: string): AsyncGenerator<Seg> {
  const gz = await gzipped(file);
  const { stream, close } = openStream(file, gz);
  let lineNo = 1;
  let first = true;
  let dec = utf8();
  let bad = false; // the current line holds invalid UTF-8
  let pending = false; // the current line has bytes not yet ended by a newline
  let cr: Buffer | null = null; // a CR at the end of a chunk, held back until we know whether LF follows
  const piece = (b: Buffer, eol: boolean): Seg | null => {
    if (eol && b.length && b[b.length - 1] === 13) b = b.subarray(0, b.length - 1);
    if (!bad) {
      try {
        const text = dec.decode(b, { stream: !eol });
        if (!eol) return text ? { line: lineNo, text, eol } : null;
        return { line: lineNo, text, eol };
      } catch {
        bad = true;
      }
    }
    return eol ? { line: lineNo, text: null, eol } : null;
  };
  const endLine = () => {
    lineNo++;
    pending = false;
    if (bad) dec = utf8();
    bad = false;
  };
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      let buf: Buffer = cr ? Buffer.concat([cr, chunk]) : chunk;
      cr = null;
      if (first) {
        if (buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) buf = buf.subarray(3);
        first = false;
      }
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(10, start);
        if (nl < 0) break;
        const s = piece(buf.subarray(start, nl), true);
        if (s) yield s;
        endLine();
        start = nl + 1;
      }
      if (start < buf.length) {
        let rest = buf.subarray(start);
        if (rest[rest.length - 1] === 13) {
          cr = Buffer.from(rest.subarray(rest.length - 1));
          rest = rest.subarray(0, rest.length - 1);
        }
        pending = true;
        const s = piece(rest, false);
        if (s) yield s;
      }
    }
  } catch (err) {
    if (!gz) throw err;
    yield { line: lineNo, text: null, eol: true, fatal: `the gzip data is damaged (${(err as Error).message}); the rest of the file cannot be read` };
    return;
  } finally {
    close();
  }
  if (pending || cr) {
    const s = piece(cr ?? Buffer.alloc(0), true);
    if (s) yield s;
  }
}

/** Whole lines (pieces joined); `text` null for a line that is not UTF-8. */
async function* lines(segs: AsyncGenerator<Seg>): AsyncGenerator<{ line: number; text: string | null; fatal?: string }> {
  let parts: string[] = [];
  for await (const s of segs) {
    if (s.text === null) {
      parts = [];
      yield { line: s.line, text: null, ...(s.fatal ? { fatal: s.fatal } : {}) };
      continue;
    }
    parts.push(s.text);
    if (!s.eol) continue;
    const text = parts.length === 1 ? parts[0]! : parts.join('');
    parts = [];
    yield { line: s.line, text };
  }
}

function plainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The list of records a lone object wraps (`{"data": [{…}, …]}`, metadata beside it allowed), or null when the
 *  object is itself a record. */
function wrappedList(obj: Record<string, unknown>): { key: string; list: unknown[] } | null {
  const keys = Object.keys(obj);
  if (keys.some((k) => RECORD_FIELDS.has(k))) return null;
  if (keys.length === 1 && Array.isArray(obj[keys[0]!]) && !(obj[keys[0]!] as unknown[]).length) return { key: keys[0]!, list: [] }; // {"data": []}
  let found: { key: string; list: unknown[] } | null = null;
  for (const [k, v] of Object.entries(obj)) {
    if (Array.isArray(v) && v.length && v.every(plainObject) && !RECORD_LIST_KEYS.has(k)) {
      if (found) return null;
      found = { key: k, list: v };
    } else if (v !== null && typeof v === 'object') return null;
  }
  return found;
}

async function* readJsonl(file: string): AsyncGenerator<RawRecord> {
  // the first record is held until the second line: a file of one line that wraps a list ({"data": [...]}) is that list
  let held: { line: number; value: Record<string, unknown> } | null = null;
  let count = 0;
  for await (const { line, text, fatal } of lines(segments(file))) {
    let rec: RawRecord | null;
    if (text === null) rec = { line, error: fatal ?? 'invalid UTF-8' };
    else if (!text.trim()) rec = null;
    else {
      try {
        const value = JSON.parse(text) as unknown;
        rec = plainObject(value) ? { line, value } : { line, error: 'a record must be a JSON object' };
      } catch (err) {
        rec = { line, error: `invalid JSON: ${(err as Error).message}` };
      }
    }
    if (!rec) continue;
    count++;
    if (count === 1 && 'value' in rec && wrappedList(rec.value as Record<string, unknown>)) {
      held = rec as { line: number; value: Record<string, unknown> };
      continue;
    }
    if (held) {
      yield held;
      held = null;
    }
    yield rec;
  }
  if (held) {
    const w = wrappedList(held.value)!;
    for (const [i, v] of w.list.entries()) yield { line: held.line, element: i, value: v };
  }
}

function parseElement(text: string, line: number): RawRecord | null {
  if (!text.trim()) return null;
  try {
    const value = JSON.parse(text) as unknown;
    if (!plainObject(value)) return { line, error: 'a record must be a JSON object' };
    return { line, value };
  } catch (err) {
    return { line, error: `invalid JSON: ${(err as Error).message}` };
  }
}

/**
 * A top-level JSON array, or a top-level object whose list of records is streamed (`{"data": [...]}`), element
 * by element: a small scanner tracks strings and nesting to cut each element's text, which is then parsed alone.
 * Memory stays at one element plus a read chunk. The object's other fields (metadata) are parsed and set aside;
 * an object without a list of records is one record itself (a single pretty-printed record).
 */
async function* readJsonDocument(file: string, top: '[' | '{'): AsyncGenerator<RawRecord> {
  const WS = /\s/;
  type Mode = 'pre' | 'arr' | 'key' | 'keystr' | 'colon' | 'value' | 'peek' | 'buf' | 'after' | 'end';
  let mode: Mode = 'pre';
  const what = top === '[' ? 'array' : 'object';
  // element cutting (mode 'arr')
  let depth = 0;
  let inString = false;
  let escape = false;
  let elem: string[] = [];
  let elemLine = 0;
  let index = 0;
  let streamed: string | null = null; // the key of the streamed list (object), '' for a top-level array
  // the object's other fields (modes key … after)
  let key: string[] = [];
  let currentKey = '';
  let val: string[] = [];
  let valScalar = false;
  let objLine = 0;
  const rest = new Map<string, string>();
  const at = (r: RawRecord): RawRecord => ({ ...r, element: index++ });
  let lastLine = 1;
  let concatenated = false; // several top-level objects, each a record
  let failed = false;
  /** The records of the object just closed: none when it wrapped the list (already streamed), else itself. */
  const finishObject = (): RawRecord[] => {
    const obj: Record<string, unknown> = {};
    for (const [k, v] of rest) {
      try {
        obj[k] = JSON.parse(v) as unknown;
      } catch (err) {
        failed = true;
        return [{ line: objLine, error: `invalid JSON in the field "${k}" of the top-level object: ${(err as Error).message}` }];
      }
    }
    if (streamed !== null) {
      const other = Object.entries(obj).find(([, v]) => Array.isArray(v) && v.length && v.every(plainObject));
      return other ? [{ line: objLine, error: `the top-level object holds a second list of records, "${other[0]}", besides "${streamed}" (which was read); a file holds one list` }] : [];
    }
    const keys = Object.keys(obj);
    if (!concatenated && keys.length === 1 && Array.isArray(obj[keys[0]!]) && !(obj[keys[0]!] as unknown[]).length) return []; // {"data": []}
    return [{ line: objLine, value: obj }];
  };
  for await (const seg of segments(file)) {
    const { line, text, eol } = seg;
    lastLine = line;
    if (text === null) {
      yield { line, error: seg.fatal ?? 'invalid UTF-8' };
      if (seg.fatal) return;
      continue;
    }
    let segStart = 0; // where the current element's / value's text starts in this piece
    for (let i = 0; i < text.length; i++) {
      const ch = text[i]!;
      switch (mode) {
        case 'pre':
          if (ch === top) {
            if (top === '[') {
              mode = 'arr';
              streamed = '';
              segStart = i + 1;
            } else {
              mode = 'key';
              objLine = line;
            }
          } else if (!WS.test(ch)) {
            yield { line, error: `expected a JSON ${what}` };
            return;
          }
          continue;
        case 'end':
          if (top === '{' && ch === '{' && streamed === null) {
            // pretty-printed objects one after another (`jq .` output): each is a record
            for (const r of finishObject()) yield r;
            if (failed) return;
            concatenated = true;
            rest.clear();
            objLine = line;
            mode = 'key';
            continue;
          }
          if (!WS.test(ch)) {
            yield { line, error: `unexpected text after the end of the top-level JSON ${what}` };
            return;
          }
          continue;
        case 'key':
          if (ch === '"') {
            mode = 'keystr';
            key = [];
            escape = false;
          } else if (ch === '}') mode = 'end';
          else if (!WS.test(ch)) {
            yield { line, error: `invalid JSON: expected a field name in the top-level object, found "${ch}"` };
            return;
          }
          continue;
        case 'keystr':
          if (escape) escape = false;
          else if (ch === '\\') escape = true;
          else if (ch === '"') {
            try {
              currentKey = JSON.parse(`"${key.join('')}"`) as string;
            } catch {
              currentKey = key.join('');
            }
            mode = 'colon';
            continue;
          }
          key.push(ch);
          continue;
        case 'colon':
          if (ch === ':') mode = 'value';
          else if (!WS.test(ch)) {
            yield { line, error: `invalid JSON: expected ":" after "${currentKey}" in the top-level object` };
            return;
          }
          continue;
        case 'value':
          if (WS.test(ch)) continue;
          val = [];
          if (ch === '[' && streamed === null && !concatenated && !RECORD_LIST_KEYS.has(currentKey)) {
            mode = 'peek';
            val.push('[');
            continue;
          }
          mode = 'buf';
          segStart = i;
          depth = 0;
          inString = false;
          escape = false;
          valScalar = ch !== '{' && ch !== '[' && ch !== '"';
          i--; // the value's first character is read in 'buf'
          continue;
        case 'peek':
          if (WS.test(ch)) continue;
          if (ch === '{') {
            // a list of objects: the records
            streamed = currentKey;
            mode = 'arr';
            depth = 0;
            inString = false;
            escape = false;
            elem = [];
            elemLine = 0;
            segStart = i;
            i--;
            continue;
          }
          // any other list is an ordinary field
          mode = 'buf';
          depth = 1;
          inString = false;
          escape = false;
          valScalar = false;
          segStart = i;
          i--;
          continue;
        case 'buf': {
          if (valScalar) {
            if (ch === ',' || ch === '}' || WS.test(ch)) {
              val.push(text.slice(segStart, i));
              rest.set(currentKey, val.join(''));
              mode = 'after';
              i--;
            }
            continue;
          }
          if (inString) {
            if (escape) escape = false;
            else if (ch === '\\') escape = true;
            else if (ch === '"') {
              inString = false;
              if (depth === 0) {
                val.push(text.slice(segStart, i + 1));
                rest.set(currentKey, val.join(''));
                mode = 'after';
              }
            }
            continue;
          }
          if (ch === '"') inString = true;
          else if (ch === '{' || ch === '[') depth++;
          else if (ch === '}' || ch === ']') {
            depth--;
            if (depth === 0) {
              val.push(text.slice(segStart, i + 1));
              rest.set(currentKey, val.join(''));
              mode = 'after';
            }
          }
          continue;
        }
        case 'after':
          if (ch === ',') mode = 'key';
          else if (ch === '}') mode = 'end';
          else if (!WS.test(ch)) {
            yield { line, error: `invalid JSON: expected "," or "}" after the field "${currentKey}" of the top-level object, found "${ch}"` };
            return;
          }
          continue;
        case 'arr': {
          if (inString) {
            if (escape) escape = false;
            else if (ch === '\\') escape = true;
            else if (ch === '"') inString = false;
            continue;
          }
          if (ch === '"') {
            inString = true;
            if (depth === 0 && !elemLine) elemLine = line;
          } else if (ch === '{' || ch === '[') {
            if (depth === 0 && !elemLine) elemLine = line;
            depth++;
          } else if (ch === '}' || ch === ']') {
            if (depth === 0 && ch === ']') {
              elem.push(text.slice(segStart, i));
              const rec = parseElement(elem.join(''), elemLine || line);
              if (rec) yield at(rec);
              elem = [];
              elemLine = 0;
              mode = top === '[' ? 'end' : 'after';
              continue;
            }
            if (depth === 0) {
              // a stray closing brace: part of a broken element (which fails to parse, naming its line)
              if (!elemLine) elemLine = line;
            } else depth--;
          } else if (ch === ',' && depth === 0) {
            elem.push(text.slice(segStart, i));
            const rec = parseElement(elem.join(''), elemLine || line);
            yield at(rec ?? { line, error: 'empty element in the JSON array (two commas?)' });
            elem = [];
            elemLine = 0;
            segStart = i + 1;
          } else if (depth === 0 && !elemLine && !WS.test(ch)) {
            elemLine = line;
          }
          continue;
        }
      }
    }
    if (mode === 'arr') {
      elem.push(text.slice(segStart));
      if (eol) elem.push('\n');
    } else if (mode === 'buf') {
      val.push(text.slice(segStart));
      if (eol) val.push('\n');
    } else if (mode === 'keystr' && eol) key.push('\n');
  }
  if (mode === 'pre') return; // an empty file
  if (mode === 'arr') {
    yield { line: elemLine || lastLine, element: index, error: `the JSON ${what === 'array' ? 'array' : `list "${streamed}"`} is not closed (truncated file?)` };
    return;
  }
  if (mode !== 'end') {
    if (mode === 'buf' && valScalar) {
      val.push('');
      rest.set(currentKey, val.join(''));
    }
    yield { line: lastLine, error: `the top-level JSON ${what} is not closed (truncated file?)` };
    return;
  }
  if (top === '[') return;
  for (const r of finishObject()) yield r;
}

async function* readText(file: string): AsyncGenerator<RawRecord> {
  for await (const { line, text, fatal } of lines(segments(file))) {
    if (text === null) yield { line, error: fatal ?? 'invalid UTF-8' };
    else if (text.trim()) yield { line, value: { text } };
  }
}

/**
 * CSV (comma) or TSV (tab) with a header row naming the columns, quoted as RFC 4180 says (and Python's csv and
 * pandas write): a field in double quotes may hold separators, quotes doubled ("") and line breaks. Every value
 * is a string. A header cell that is empty (pandas' unnamed index column) is named `column_<n>`. A row with
 * another number of fields than the header is a bad record; blank lines are skipped.
 */
async function* readDelimited(file: string, sep: ',' | '\t'): AsyncGenerator<RawRecord> {
  let header: string[] | null = null;
  let row: string[] = [];
  let field = '';
  let inQuotes = false;
  let quoteSeen = false; // a '"' inside quotes: either the closing quote or the first of a doubled one
  let rowLine = 0;
  let rowHasText = false;
  const reset = () => {
    row = [];
    field = '';
    inQuotes = false;
    quoteSeen = false;
    rowHasText = false;
  };
  const endRow = (): RawRecord | null => {
    row.push(field);
    const cells = row;
    const line = rowLine;
    const blank = !rowHasText;
    reset();
    if (blank) return null;
    if (!header) {
      const seen = new Set<string>();
      const names = cells.map((c, i) => c.trim() || `column_${i + 1}`);
      for (const n of names) {
        if (seen.has(n)) return { line, error: `the header row names the column "${n}" twice` };
        seen.add(n);
      }
      header = names;
      return null;
    }
    if (cells.length !== header.length) {
      return { line, error: `this row has ${cells.length} field(s), the header has ${header.length} (${header.slice(0, 8).join(', ')}${header.length > 8 ? ', …' : ''}); quote fields that hold "${sep === ',' ? ',' : '\\t'}", quotes or line breaks` };
    }
    const value: Record<string, string> = {};
    header.forEach((h, i) => (value[h] = cells[i]!));
    return { line, value };
  };
  let headerError = false;
  for await (const seg of segments(file)) {
    if (seg.text === null) {
      yield { line: seg.line, error: seg.fatal ?? 'invalid UTF-8' };
      if (seg.fatal) return;
      reset();
      continue;
    }
    const text = seg.text;
    if (!rowHasText && !row.length && !field && !inQuotes) rowLine = seg.line;
    for (let i = 0; i < text.length; i++) {
      const ch = text[i]!;
      if (!rowHasText && !row.length && !field) rowLine = seg.line;
      if (inQuotes) {
        if (quoteSeen) {
          quoteSeen = false;
          if (ch === '"') {
            field += '"';
            continue;
          }
          inQuotes = false; // the quote closed the field: this character is read as outside quotes
        } else {
          if (ch === '"') quoteSeen = true;
          else field += ch;
          continue;
        }
      }
      if (ch === sep) {
        row.push(field);
        field = '';
        rowHasText = true;
      } else if (ch === '"' && !field) {
        inQuotes = true;
        rowHasText = true;
      } else {
        field += ch;
        if (ch !== ' ' && ch !== '\t') rowHasText = true;
      }
    }
    if (!seg.eol) continue;
    if (quoteSeen) {
      quoteSeen = false;
      inQuotes = false;
    }
    if (inQuotes) {
      field += '\n'; // a line break inside a quoted field
      continue;
    }
    const rec = endRow();
    if (!rec) continue;
    if (!header && 'error' in rec) headerError = true;
    yield rec;
    if (headerError) return;
  }
  if (inQuotes) {
    yield { line: rowLine, error: 'a quoted field is not closed (a missing ")' };
    return;
  }
  if (row.length || field) {
    const rec = endRow();
    if (rec) yield rec;
  }
}

export async function* readRecords(file: string, kind?: FileKind): AsyncGenerator<RawRecord> {
  const k = kind ?? (await detectFileKind(file));
  if (k === 'json-array') yield* readJsonDocument(file, '[');
  else if (k === 'json-object') yield* readJsonDocument(file, '{');
  else if (k === 'csv') yield* readDelimited(file, ',');
  else if (k === 'tsv') yield* readDelimited(file, '\t');
  else if (k === 'text') yield* readText(file);
  else yield* readJsonl(file);
}
