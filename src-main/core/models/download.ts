// download.ts — model downloads from the Hugging Face Hub or a mirror with the same URL layout
// (`HF_ENDPOINT`, e.g. https://hf-mirror.com): the file list from `{endpoint}/api/models/{repo}/revision/{rev}`
// (sizes, LFS sha256, git blob ids), each file from `{endpoint}/{repo}/resolve/{rev}/{file}`.
// Every file is written to `<file>.part`, resumed with an HTTP Range request after an interruption (also in a
// later session), verified (size; sha256 for LFS files, the git blob SHA-1 for the others) and only then renamed
// to its final name: a failed download never leaves a half file under the final name.
// No Electron import; progress through a callback, cancellation through an AbortSignal.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { dataHome } from '../paths.js';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export interface HubFile {
  path: string;
  size: number;
  /** LFS files: sha256 of the content. */
  sha256?: string;
  /** git blob SHA-1 (non-LFS files). */
  blobId?: string;
}

export interface DownloadProgress {
  file: string;
  fileBytes: number;
  fileTotal: number;
  /** all files */
  bytes: number;
  total: number;
  filesDone: number;
  filesTotal: number;
  /** bytes per second (recent average) */
  speed: number;
  /** seconds left at this speed; null while unknown */
  eta: number | null;
}

export interface HubOptions {
  /** Hub or mirror; default $HF_ENDPOINT or https://huggingface.co */
  endpoint?: string;
  revision?: string;
  /** for gated and private models; default $HF_TOKEN */
  token?: string;
  signal?: AbortSignal;
}

export interface DownloadOptions extends HubOptions {
  repo: string;
  /** target folder; default <data home>/models/<owner>--<name> */
  dest?: string;
  /** which files (default: all but other frameworks' weights when safetensors exist) */
  include?: (f: HubFile) => boolean;
  onProgress?: (p: DownloadProgress) => void;
  /** attempts per file after a dropped connection (default 5) */
  retries?: number;
}

export class DownloadError extends Error {
  constructor(
    message: string,
    readonly code: 'AUTH' | 'NOT_FOUND' | 'HTTP' | 'CHECKSUM' | 'ABORTED' | 'IO' | 'BAD_INPUT',
    readonly hint?: string,
  ) {
    super(message);
  }
}

export function modelsHome(home = dataHome()): string {
  return path.join(home, 'models');
}

export function defaultModelDir(repo: string, home = dataHome()): string {
  return path.join(modelsHome(home), repo.replace('/', '--'));
}

function endpointOf(o: HubOptions): string {
  return (o.endpoint || process.env.HF_ENDPOINT || DEFAULT_ENDPOINT).replace(/\/+$/, '');
}

function headers(o: HubOptions): Record<string, string> {
  const token = o.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  return { 'user-agent': 'llms-train', ...(token ? { authorization: `Bearer ${token}` } : {}) };
}

function checkRepo(repo: string) {
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repo) || repo.includes('..')) throw new DownloadError(`"${repo}" is not a Hub repository id (owner/name)`, 'BAD_INPUT');
}

function httpError(status: number, what: string, repo: string): DownloadError {
  if (status === 401 || status === 403)
    return new DownloadError(`${what}: the Hub answered ${status} — ${repo} is gated or private`, 'AUTH', 'accept its licence on the Hub and give a token (--token or HF_TOKEN)');
  if (status === 404) return new DownloadError(`${what}: not found (404) — check the repository id and revision`, 'NOT_FOUND');
  return new DownloadError(`${what}: HTTP ${status}`, 'HTTP');
}

function aborted(): DownloadError {
  return new DownloadError('download stopped; the partial files are kept and the next download resumes them', 'ABORTED');
}

/** The files of a model repository at a revision, with sizes and checksums. */
export async function listRepoFiles(repo: string, o: HubOptions = {}): Promise<HubFile[]> {
  checkRepo(repo);
  const rev = encodeURIComponent(o.revision ?? 'main');
  const url = `${endpointOf(o)}/api/models/${repo}/revision/${rev}?blobs=true`;
  let res: Response;
  try {
    res = await fetch(url, { headers: headers(o), signal: o.signal });
  } catch (e) {
    if (o.signal?.aborted) throw aborted();
    throw new DownloadError(`cannot reach ${endpointOf(o)}: ${(e as Error).message}`, 'HTTP', 'check the network, or use a Hub mirror (the endpoint field in the app, --endpoint or $HF_ENDPOINT; e.g. https://hf-mirror.com)');
  }
  if (!res.ok) throw httpError(res.status, `listing ${repo}`, repo);
  const j = (await res.json()) as { siblings?: { rfilename: string; size?: number; blobId?: string; lfs?: { sha256?: string; size?: number } }[] };
  if (!Array.isArray(j.siblings)) throw new DownloadError(`the answer for ${repo} has no file list (siblings)`, 'HTTP');
  return j.siblings.map((s) => ({
    path: s.rfilename,
    size: s.lfs?.size ?? s.size ?? -1,
    ...(s.lfs?.sha256 ? { sha256: s.lfs.sha256 } : {}),
    ...(!s.lfs && s.blobId ? { blobId: s.blobId } : {}),
  }));
}

/** Default choice: skip other frameworks' weights, .bin weights when safetensors are there, and — beside the HF-format
 *  weights (model*.safetensors) — the original checkpoints some repositories also carry: Meta's `original/` folder
 *  (Llama 3.x: consolidated.00.pth, params.json, tokenizer.model; ≈ 16 GB for 8B) and mistral-inference's
 *  `consolidated.safetensors` (Mistral-7B-Instruct-v0.3: ≈ 14 GB), which no HF loader reads. */
export function defaultInclude(files: HubFile[]): (f: HubFile) => boolean {
  const hasSt = files.some((f) => f.path.endsWith('.safetensors'));
  const hasHf = files.some((f) => /^model(-\d+-of-\d+)?\.safetensors$|^model\.safetensors\.index\.json$/.test(f.path));
  return (f) => {
    const p = f.path;
    if (/\.(h5|msgpack|ot|onnx|tflite|mlmodel|gguf)$/.test(p) || p.startsWith('.') || p.includes('/.')) return false;
    if (hasSt && /(^|\/)pytorch_model.*\.bin(\.index\.json)?$/.test(p)) return false;
    if (hasHf && (p.startsWith('original/') || /^consolidated(\.\d+)?\.(safetensors|pth)$/.test(p))) return false;
    return true;
  };
}

function safeJoin(dir: string, rel: string): string {
  if (path.isAbsolute(rel) || rel.split(/[\\/]/).includes('..')) throw new DownloadError(`refusing the file name "${rel}" (outside the model folder)`, 'BAD_INPUT');
  return path.join(dir, rel);
}

async function hashFile(file: string, algo: string, prefix?: Buffer): Promise<crypto.Hash> {
  const h = crypto.createHash(algo);
  if (prefix) h.update(prefix);
  for await (const chunk of fs.createReadStream(file)) h.update(chunk as Buffer);
  return h;
}

/**
 * Downloads a repository's files into `dest` (resuming `.part` files), verifying each, and returns the folder.
 * Errors are DownloadError with a code (AUTH for 401/403, NOT_FOUND, CHECKSUM, ABORTED, HTTP, IO).
 */
export async function downloadModel(o: DownloadOptions): Promise<{ dir: string; files: string[]; bytes: number }> {
  checkRepo(o.repo);
  const files = await listRepoFiles(o.repo, o);
  const pick = o.include ?? defaultInclude(files);
  const chosen = files.filter(pick);
  const dir = o.dest ?? defaultModelDir(o.repo);
  fs.mkdirSync(dir, { recursive: true });
  const total = chosen.reduce((a, f) => a + Math.max(0, f.size), 0);
  const rev = encodeURIComponent(o.revision ?? 'main');
  let doneBytes = 0;
  let filesDone = 0;
  // speed over the last ~5 s
  const samples: [number, number][] = [];
  let lastEmit = 0;
  const emit = (file: HubFile, fileBytes: number, force = false) => {
    const now = Date.now();
    const bytes = doneBytes + fileBytes;
    samples.push([now, bytes]);
    while (samples.length > 2 && now - samples[0]![0] > 5000) samples.shift();
    if (!o.onProgress || (!force && now - lastEmit < 200)) return;
    lastEmit = now;
    const [t0, b0] = samples[0]!;
    const speed = now > t0 ? ((bytes - b0) * 1000) / (now - t0) : 0;
    o.onProgress({ file: file.path, fileBytes, fileTotal: file.size, bytes, total, filesDone, filesTotal: chosen.length, speed, eta: speed > 0 ? (total - bytes) / speed : null });
  };

  for (const f of chosen) {
    const final = safeJoin(dir, f.path);
    const part = `${final}.part`;
    fs.mkdirSync(path.dirname(final), { recursive: true });
    if (fs.existsSync(final) && (f.size < 0 || fs.statSync(final).size === f.size)) {
      doneBytes += Math.max(0, f.size);
      filesDone++;
      emit(f, 0, true);
      continue;
    }
    const url = `${endpointOf(o)}/${o.repo}/resolve/${rev}/${f.path.split('/').map(encodeURIComponent).join('/')}`;
    let attempt = 0;
    for (;;) {
      if (o.signal?.aborted) throw aborted();
      let have = fs.existsSync(part) ? fs.statSync(part).size : 0;
      if (f.size >= 0 && have > f.size) (fs.rmSync(part), (have = 0));
      try {
        if (f.size < 0 || have < f.size) {
          const res = await fetch(url, { headers: { ...headers(o), ...(have > 0 ? { range: `bytes=${have}-` } : {}) }, signal: o.signal, redirect: 'follow' });
          if (res.status === 416 && have > 0) {
            /* the part is already complete */
          } else if (!res.ok) {
            throw httpError(res.status, `downloading ${f.path}`, o.repo);
          } else {
            if (res.status !== 206) have = 0; // the server ignored the range: start over
            const out = fs.createWriteStream(part, { flags: have > 0 ? 'a' : 'w' });
            let got = have;
            try {
              for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
                if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
                got += chunk.length;
                emit(f, got);
              }
            } finally {
              await new Promise<void>((r, j) => out.end((e?: Error | null) => (e ? j(e) : r())));
            }
          }
        }
        // verify, then rename into place
        const size = fs.statSync(part).size;
        if (f.size >= 0 && size !== f.size) throw new Error(`connection closed early (${size} of ${f.size} bytes)`);
        if (f.sha256) {
          const got = (await hashFile(part, 'sha256')).digest('hex');
          if (got !== f.sha256) {
            fs.rmSync(part, { force: true });
            throw new DownloadError(`${f.path}: sha256 ${got} does not match the Hub's ${f.sha256}; the damaged download was removed`, 'CHECKSUM', 'try again; if it persists, the mirror serves a different file');
          }
        } else if (f.blobId) {
          const got = (await hashFile(part, 'sha1', Buffer.from(`blob ${size}\0`))).digest('hex');
          if (got !== f.blobId) {
            fs.rmSync(part, { force: true });
            throw new DownloadError(`${f.path}: git blob id ${got} does not match the Hub's ${f.blobId}; the damaged download was removed`, 'CHECKSUM');
          }
        }
        fs.renameSync(part, final);
        doneBytes += size;
        filesDone++;
        emit(f, 0, true);
        break;
      } catch (e) {
        if (o.signal?.aborted) throw aborted();
        if (e instanceof DownloadError) throw e;
        if (++attempt > (o.retries ?? 5)) throw new DownloadError(`downloading ${f.path} failed: ${(e as Error).message}; run the download again to resume`, 'HTTP');
        await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** attempt, 5000)));
      }
    }
  }
  return { dir, files: chosen.map((f) => f.path), bytes: doneBytes };
}
