// postinstall: fetch Electron's binary when this machine can, without ever failing `npm install`.
// npm's "allowScripts" keeps electron's own install script from running (it fails the whole install
// where the binary cannot be downloaded); we run it here ourselves, bounded in time, and on failure say
// in one line that the desktop window is unavailable and `npm start` will use browser mode.
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);

function electronBinaryPresent(dir) {
  return existsSync(path.join(dir, 'path.txt'));
}

/**
 * better-sqlite3 is compiled for Node's ABI (browser mode, CLI, tests). The desktop window needs a build
 * for Electron's ABI: fetch better-sqlite3's prebuilt binary for this Electron into native/electron/,
 * from a scratch copy of the package so Node's build stays in place. src-main/app loads it from there.
 */
function electronSqlite(electronDir) {
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
  const target = path.join(root, 'native', 'electron', 'better_sqlite3.node');
  if (existsSync(target)) return;
  let pkgDir;
  let prebuild;
  try {
    pkgDir = path.dirname(require.resolve('better-sqlite3/package.json'));
    prebuild = require.resolve('prebuild-install/bin.js', { paths: [pkgDir] });
  } catch {
    return;
  }
  const version = JSON.parse(readFileSync(path.join(electronDir, 'package.json'), 'utf8')).version;
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'llmt-sqlite-'));
  try {
    cpSync(pkgDir, scratch, { recursive: true, filter: (src) => !src.includes(`${path.sep}build${path.sep}`) });
    const res = spawnSync(process.execPath, [prebuild, '--runtime', 'electron', '--target', version, '--arch', process.arch, '--platform', process.platform], {
      cwd: scratch,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 180_000,
    });
    const built = path.join(scratch, 'build', 'Release', 'better_sqlite3.node');
    if (res.status === 0 && existsSync(built)) {
      mkdirSync(path.dirname(target), { recursive: true });
      copyFileSync(built, target + '.tmp');
      renameSync(target + '.tmp', target);
      console.log(`llms-train: better-sqlite3 for Electron ${version} installed in native/electron/.`);
    } else {
      console.log(`llms-train: could not fetch better-sqlite3 for Electron ${version}; the desktop window will report the database as unavailable (browser mode works). Retry with \`npm rebuild llms-train\` or run \`npx electron-builder install-app-deps\` in a copy.`);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

function main() {
  if (process.env.LLMS_TRAIN_SKIP_ELECTRON_DOWNLOAD === '1') {
    console.log('llms-train: skipping the Electron download (LLMS_TRAIN_SKIP_ELECTRON_DOWNLOAD=1); `npm start` will use browser mode.');
    return;
  }
  let dir;
  try {
    dir = path.dirname(require.resolve('electron/package.json'));
  } catch {
    return; // production install without devDependencies: nothing to do
  }
  if (electronBinaryPresent(dir)) {
    electronSqlite(dir);
    return;
  }
  const res = spawnSync(process.execPath, [path.join(dir, 'install.js')], {
    cwd: dir,
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 180_000,
    env: process.env,
  });
  if (res.status === 0 && electronBinaryPresent(dir)) {
    console.log('llms-train: Electron binary installed; `npm start` opens the desktop window.');
    electronSqlite(dir);
    return;
  }
  const lines = String(res.stderr || '').split('\n').map((l) => l.trim()).filter(Boolean);
  const why = res.error ? res.error.message : (lines.find((l) => /error/i.test(l) && !l.startsWith('at ')) ?? lines[0] ?? `exit ${res.status}`);
  console.log(`llms-train: Electron's binary could not be downloaded (${why.slice(0, 160)}); the desktop window is unavailable and \`npm start\` will use browser mode.`);
}

main();
