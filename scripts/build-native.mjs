// build-native.mjs — configures and builds native/ (engine library, llmt-engine CLI, Node addon, C++
// tests) with cmake-js into native/build. cmake-js reads Node's headers location only from the
// environment, so where Node's headers are installed locally (Debian: /usr/include/node) we point it
// there instead of letting it download them. Extra CMake options: LLMT_CMAKE_ARGS="-DLLMT_CUDA=ON ...".
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const env = { ...process.env };
if (!env.npm_config_nodedir) {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  if (fs.existsSync(path.join(prefix, 'include', 'node', 'node.h'))) env.npm_config_nodedir = prefix;
}

const args = [
  path.join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js'),
  'build',
  '--directory', path.join(root, 'native'),
  '--out', path.join(root, 'native', 'build'),
  '--config', 'Release',
  '--parallel', String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length)),
];
for (const a of (env.LLMT_CMAKE_ARGS ?? '').split(/\s+/).filter(Boolean)) {
  if (!a.startsWith('-D')) {
    console.error(`build-native: LLMT_CMAKE_ARGS entries must look like -DNAME=VALUE (got '${a}')`);
    process.exit(2);
  }
  args.push(`--CD${a.slice(2)}`);
}
const res = spawnSync(process.execPath, args, { stdio: 'inherit', env, cwd: root });
if (res.status !== 0) {
  console.error('build-native: the native build failed (see above). It needs CMake >= 3.18 and a C++17 compiler.');
  process.exit(res.status ?? 1);
}
for (const f of ['llmt.node', process.platform === 'win32' ? 'llmt-engine.exe' : 'llmt-engine']) {
  const p = path.join(root, 'native', 'build', 'bin', f);
  if (!fs.existsSync(p)) {
    console.error(`build-native: expected ${path.relative(root, p)} after the build, but it is missing`);
    process.exit(1);
  }
}
