// postinstall: fetch Electron's binary when this machine can, without ever failing `npm install`.
// npm's "allowScripts" keeps electron's own install script from running (it fails the whole install
// where the binary cannot be downloaded); we run it here ourselves, bounded in time, and on failure say
// in one line that the desktop window is unavailable and `npm start` will use browser mode.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);

function electronBinaryPresent(dir) {
  return existsSync(path.join(dir, 'path.txt'));
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
  if (electronBinaryPresent(dir)) return;
  const res = spawnSync(process.execPath, [path.join(dir, 'install.js')], {
    cwd: dir,
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 180_000,
    env: process.env,
  });
  if (res.status === 0 && electronBinaryPresent(dir)) {
    console.log('llms-train: Electron binary installed; `npm start` opens the desktop window.');
    return;
  }
  const why = res.error ? res.error.message : (String(res.stderr || '').trim().split('\n').pop() || `exit ${res.status}`);
  console.log(`llms-train: Electron's binary could not be downloaded (${why.slice(0, 160)}); the desktop window is unavailable and \`npm start\` will use browser mode.`);
}

main();
