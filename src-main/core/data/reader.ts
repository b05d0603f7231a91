// reader.ts — streams records out of a dataset file without loading it whole: JSON Lines, or a JSON array
// (scanned element by element), UTF-8 with or without BOM, LF or CRLF. Every record carries the line it
// starts on, and every problem (invalid JSON, invalid UTF-8, a non-object) is a record-level error with that
// line number, so the caller can fail or skip by policy. Plain .txt files yield one record per line.
import fs from 'node:fs';

/** `element`: for a top-level JSON array, the element's index (0-based, as `data[i]`), which tells records that
 *  start on the same line apart (a one-line array). */
export type RawRecord = { line: number; element?: number; value: unknown } | { line: number; element?: number; error: string };

/** Where a record is, for messages: "file:7", or "file:1 (element 5)" in a JSON array. */
export function recordAt(file: string, r: { line: number; element?: number }): string {
  return `${file}:${r.line}${r.element !== undefined ? ` (element ${r.element})` : ''}`;
}

export type FileKind = 'jsonl' | 'json-array' | 'text';

const utf8 = new TextDecoder('utf-8', { fatal: true });

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

/** Refuses a binary file with a message naming it (code BAD_INPUT). */
export function assertTextFile(file: string, head: Buffer): void {
  const why = binaryContent(head);
  if (why)
    throw Object.assign(new Error(`${file} is not a text dataset: it holds binary content (${why} in its first ${Math.round(SNIFF_BYTES / 1024)} KiB)`), {
      code: 'BAD_INPUT',
      hint: 'Datasets are UTF-8 text: .json (an array of records), .jsonl (one JSON record per line) or .txt. Check that you picked the data file, not a model file.',
    });
}

/** Decides from the extension and the first non-space byte; refuses binary content (see binaryContent). */
export async function detectFileKind(file: string): Promise<FileKind> {
  const fd = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(SNIFF_BYTES);
    const { bytesRead } = await fd.read(buf, 0, buf.length, 0);
    assertTextFile(file, buf.subarray(0, bytesRead));
    let s = buf.subarray(0, Math.min(bytesRead, 4096)).toString('utf8');
    if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
    const first = s.trimStart()[0];
    if (first === '[') return 'json-array';
    if (first === '{' || first === undefined) return file.endsWith('.txt') ? 'text' : 'jsonl';
    return file.endsWith('.json') || file.endsWith('.jsonl') ? 'jsonl' : 'text';
  } finally {
    await fd.close();
  }
}

/** Splits a byte stream into lines (LF or CRLF), keeping line numbers; decodes each line strictly. */
async function* lines(file: string): AsyncGenerator<{ line: number; text: string | null }> {
  const stream = fs.createReadStream(file, { highWaterMark: 1 << 20 });
  let carry: Buffer | null = null;
  let lineNo = 0;
  let first = true;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    let buf: Buffer = carry ? Buffer.concat([carry, chunk]) : chunk;
    if (first) {
      if (buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) buf = buf.subarray(3);
      first = false;
    }
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(10, start);
      if (nl < 0) break;
      let end = nl;
      if (end > start && buf[end - 1] === 13) end--;
      lineNo++;
      yield { line: lineNo, text: decode(buf.subarray(start, end)) };
      start = nl + 1;
    }
    carry = start < buf.length ? Buffer.from(buf.subarray(start)) : null;
  }
  if (carry && carry.length) {
    let end = carry.length;
    if (carry[end - 1] === 13) end--;
    lineNo++;
    yield { line: lineNo, text: decode(carry.subarray(0, end)) };
  }
}

function decode(b: Buffer): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

async function* readJsonl(file: string): AsyncGenerator<RawRecord> {
  for await (const { line, text } of lines(file)) {
    if (text === null) {
      yield { line, error: 'invalid UTF-8' };
      continue;
    }
    if (!text.trim()) continue;
    try {
      const value = JSON.parse(text) as unknown;
      if (value === null || typeof value !== 'object' || Array.isArray(value)) yield { line, error: 'a record must be a JSON object' };
      else yield { line, value };
    } catch (err) {
      yield { line, error: `invalid JSON: ${(err as Error).message}` };
    }
  }
}

/**
 * A top-level JSON array, element by element: a small scanner tracks strings and nesting to cut each
 * element's text, which is then parsed alone. Memory stays at one element (plus a 1 MB read buffer).
 */
async function* readJsonArray(file: string): AsyncGenerator<RawRecord> {
  let depth = 0;
  let inString = false;
  let escape = false;
  let elem: string[] = [];
  let elemLine = 0;
  let started = false;
  let ended = false;
  let index = 0; // of the element being read
  const at = (r: RawRecord): RawRecord => ({ ...r, element: index++ });
  for await (const { line, text } of lines(file)) {
    if (text === null) {
      yield { line, error: 'invalid UTF-8' };
      continue;
    }
    let segStart = 0;
    for (let i = 0; i < text.length; i++) {
      const ch = text[i]!;
      if (ended) {
        if (!/\s/.test(ch)) {
          yield { line, error: 'unexpected text after the end of the top-level JSON array' };
          return;
        }
        continue;
      }
      if (!started) {
        if (ch === '[') {
          started = true;
          segStart = i + 1;
        } else if (!/\s/.test(ch)) {
          yield { line, error: 'expected a JSON array' };
          return;
        }
        continue;
      }
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
          const rec = finish(elem.join('\n'), elemLine || line);
          if (rec) yield at(rec);
          elem = [];
          elemLine = 0;
          ended = true;
          continue;
        }
        depth--;
      } else if (ch === ',' && depth === 0) {
        elem.push(text.slice(segStart, i));
        const rec = finish(elem.join('\n'), elemLine || line);
        yield at(rec ?? { line, error: 'empty element in the JSON array (two commas?)' });
        elem = [];
        elemLine = 0;
        segStart = i + 1;
      } else if (depth === 0 && !/\s/.test(ch) && !elemLine) {
        elemLine = line;
      }
    }
    if (started && !ended) elem.push(text.slice(segStart));
  }
  if (!started) return;
  if (!ended) yield { line: elemLine || 1, element: index, error: 'the JSON array is not closed (truncated file?)' };
}

function finish(text: string, line: number): RawRecord | null {
  if (!text.trim()) return null;
  try {
    const value = JSON.parse(text) as unknown;
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return { line, error: 'a record must be a JSON object' };
    return { line, value };
  } catch (err) {
    return { line, error: `invalid JSON: ${(err as Error).message}` };
  }
}

async function* readText(file: string): AsyncGenerator<RawRecord> {
  for await (const { line, text } of lines(file)) {
    if (text === null) yield { line, error: 'invalid UTF-8' };
    else if (text.trim()) yield { line, value: { text } };
  }
}

export async function* readRecords(file: string, kind?: FileKind): AsyncGenerator<RawRecord> {
  const k = kind ?? (await detectFileKind(file));
  if (k === 'json-array') yield* readJsonArray(file);
  else if (k === 'text') yield* readText(file);
  else yield* readJsonl(file);
}
