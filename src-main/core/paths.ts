// paths.ts — where things live: the app's own files (package root, built renderer, native binaries) and
// the user's data home (database, runs, models). The data home is the OS's app-data folder, overridable
// with LLMS_TRAIN_HOME. No Electron import: the CLI and server use the same answers as the window.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const APP_NAME = 'LLMs-train';

let cachedRoot: string | undefined;

/** The package root (the folder holding our package.json), also inside an Electron asar. */
export function appRoot(): string {
  if (cachedRoot) return cachedRoot;
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        if ((JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name === 'llms-train') {
          cachedRoot = dir;
          return dir;
        }
      } catch {
        /* keep walking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the llms-train package root above ${__dirname}`);
    dir = up;
  }
}

export function appVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(appRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** Files that must live outside the asar archive (native binaries) are unpacked next to it. */
export function unpacked(p: string): string {
  return p.replace(`${path.sep}app.asar${path.sep}`, `${path.sep}app.asar.unpacked${path.sep}`);
}

export function rendererDir(): string {
  return path.join(appRoot(), 'dist', 'renderer');
}

/** Folder of the native build outputs (llmt.node, llmt-engine). LLMS_TRAIN_NATIVE_DIR overrides. */
export function nativeDir(): string {
  return process.env.LLMS_TRAIN_NATIVE_DIR || unpacked(path.join(appRoot(), 'native', 'build', 'bin'));
}

/** The OS's per-user app-data folder, as Electron's app.getPath('userData') would give it. */
export function defaultHome(platform = process.platform, env = process.env, home = os.homedir()): string {
  if (platform === 'win32') return path.win32.join(env.APPDATA || path.win32.join(home, 'AppData', 'Roaming'), APP_NAME);
  if (platform === 'darwin') return path.posix.join(home, 'Library', 'Application Support', APP_NAME);
  return path.posix.join(env.XDG_CONFIG_HOME || path.posix.join(home, '.config'), APP_NAME);
}

export function dataHome(env = process.env): string {
  const override = env.LLMS_TRAIN_HOME;
  return override && override.trim() ? path.resolve(override) : defaultHome();
}

export function databaseFile(home = dataHome()): string {
  return path.join(home, 'llms-train.db');
}

/** `p` with its nearest existing ancestor's real path (a symlinked folder compares as the folder it points to). */
export function realish(p: string): string {
  let cur = path.resolve(p);
  const rest: string[] = [];
  for (;;) {
    try {
      return path.join(fs.realpathSync(cur), ...rest.reverse());
    } catch {
      const up = path.dirname(cur);
      if (up === cur) return path.resolve(p);
      rest.push(path.basename(cur));
      cur = up;
    }
  }
}
