// io-error.ts — file-system errors said plainly: which path, what went wrong (disk full, read-only, no
// permission…) and what to do, instead of Node's raw "ENOSPC: no space left on device, write".
import fs from 'node:fs';
import path from 'node:path';

/** An error writing or creating a file: `code` is 'IO' (as the engine's), `errno` the system's code. */
export class IoError extends Error {
  readonly code = 'IO';
  hint?: string;
  constructor(
    message: string,
    readonly errno: string | undefined,
    hint?: string,
  ) {
    super(message);
    this.name = 'IoError';
    if (hint) this.hint = hint;
  }
}

const CAUSES: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is exceeded',
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'the operation is not permitted',
  ENOENT: 'a folder on its path does not exist',
  ENOTDIR: 'a part of its path is a file, not a folder',
  EISDIR: 'it is a folder',
  EMFILE: 'too many open files',
  EIO: 'an input/output error of the device',
  EFBIG: 'the file is too large for this file system',
};

/** The hint for a failed write under `dir` (the flag that chooses another place, when there is one). */
function hintFor(errno: string | undefined, where: string, flags: string): string | undefined {
  const other = flags ? `, or choose another ${flags}` : ', or write somewhere else';
  if (errno === 'ENOSPC' || errno === 'EDQUOT') return `Free some space on the disk that holds ${where}${other}.`;
  if (errno === 'EROFS') return `${where} is on a read-only file system: choose a writable place${flags ? ` with ${flags}` : ''}.`;
  if (errno === 'EACCES' || errno === 'EPERM') return `You may not write to ${where}: fix its permissions${other}.`;
  return undefined;
}

/**
 * Wraps a Node error of an operation on `file` into an IoError "cannot <action> <file>: <cause>", with a hint
 * naming the flags that choose another place (e.g. "--output_dir"). Errors without an errno pass through.
 */
export function ioError(err: unknown, file: string | undefined, action = 'write', flags = ''): Error {
  if (err instanceof IoError) {
    // said by a lower layer without the caller's flags: the hint now names them
    if (flags && err.errno) err.hint = hintFor(err.errno, path.dirname(path.resolve(file ?? '.')), flags) ?? err.hint;
    return err;
  }
  const e = err as NodeJS.ErrnoException & { dest?: string };
  if (!e || typeof e.code !== 'string' || !/^E[A-Z]+$/.test(e.code)) return err as Error;
  file ??= e.dest ?? e.path ?? 'a file';
  const cause = CAUSES[e.code] ?? (e.message ?? String(e)).replace(/^E[A-Z]+: /, '').replace(/, \w+ '.*'$/, '');
  const where = action === 'write to' ? path.resolve(file) : path.dirname(path.resolve(file));
  return new IoError(`cannot ${action} ${file}: ${cause} (${e.code})`, e.code, hintFor(e.code, where, flags));
}

/** A write that failed for lack of room or a read-only file system (whatever the call): never a read error. */
export function isWriteFailure(err: unknown): boolean {
  const c = (err as NodeJS.ErrnoException | null)?.code;
  return c === 'ENOSPC' || c === 'EDQUOT' || c === 'EROFS';
}

/**
 * mkdir -p, one level at a time from the nearest existing folder, with the real cause when it fails. Not Node's
 * recursive mkdir: it reports ENOENT for a folder it cannot create on a read-only file system, and loops forever on
 * procfs (`/proc/x` froze the whole server on the main thread); creating each missing folder on its own gives
 * EROFS/EACCES/ENOENT at once.
 */
export function ensureDir(dir: string, flags = ''): void {
  const abs = path.resolve(dir);
  const missing: string[] = [];
  let p = abs;
  while (!fs.existsSync(p)) {
    missing.unshift(p);
    const up = path.dirname(p);
    if (up === p) break;
    p = up;
  }
  try {
    if (fs.existsSync(p) && !fs.statSync(p).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${abs}'`), { code: 'ENOTDIR' });
    for (const m of missing) {
      try {
        fs.mkdirSync(m);
      } catch (err) {
        // made meanwhile by someone else (two runs preparing at once): fine when it is a folder
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.statSync(m).isDirectory()) throw err;
      }
    }
  } catch (err) {
    throw ioError(err, dir, 'create the folder', flags);
  }
}
