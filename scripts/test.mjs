// test.mjs — `npm test`: every suite, in order — the native C++ tests (ctest), then the TS suites (vitest:
// unit, integration, e2e in Chromium, Electron smoke where possible). Needs `npm run build` first.
// Ends with one summary line, "tests: N passed, N failed, N skipped", and a non-zero exit on any failure.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Buffers the engine sizes for overwriting are NaN-filled under test (engine/model.cpp Buf::resize_overwrite), so a
// read of memory no op wrote fails a test instead of passing on stale or zeroed memory. Inherited by ctest, vitest and
// every engine they start.
process.env.LLMT_POISON_UNINIT ??= '1';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const extra = process.argv.slice(2);
let passed = 0;
let failed = 0;
let skipped = 0;
let ok = true;

// 1. native
const build = path.join(root, 'native', 'build');
if (!fs.existsSync(path.join(build, 'CTestTestfile.cmake'))) {
  console.error('npm test: native/build is missing — run `npm run build` first.');
  process.exit(1);
}
const ctest = spawnSync('ctest', ['--test-dir', build, '--output-on-failure'], { encoding: 'utf8' });
process.stdout.write(ctest.stdout ?? '');
process.stderr.write(ctest.stderr ?? '');
const m = /(\d+)% tests passed, (\d+) tests failed out of (\d+)/.exec(ctest.stdout ?? '');
if (m) {
  failed += Number(m[2]);
  passed += Number(m[3]) - Number(m[2]);
}
if (ctest.status !== 0 || !m) ok = false;

// 2. the reference Python for the parity and metrics tests (HF transformers + PEFT, sacrebleu, rouge-score,
// scikit-learn): setup.sh is idempotent (a hash check when up to date) and rebuilds the venv when
// requirements.txt changed since it was made
if (!process.env.LLMT_PY) {
  const venvPy = path.join(root, '.venv-test', 'bin', 'python');
  if (!fs.existsSync(venvPy)) console.log('npm test: setting up the reference Python (tests/python/setup.sh) for the parity tests…');
  const s = spawnSync('bash', [path.join(root, 'tests', 'python', 'setup.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (s.status !== 0) {
    console.error('npm test: tests/python/setup.sh failed; the parity tests will report it.');
    ok = false;
  }
}

// 3. TypeScript suites
const report = path.join(root, 'test-results', 'vitest.json');
fs.mkdirSync(path.dirname(report), { recursive: true });
fs.rmSync(report, { force: true });
const vitest = spawnSync(
  process.execPath,
  [path.join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...extra],
  { stdio: 'inherit', cwd: root },
);
if (vitest.status !== 0) ok = false;
if (fs.existsSync(report)) {
  const r = JSON.parse(fs.readFileSync(report, 'utf8'));
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  // a file that fails outside its tests (an import error, a throwing beforeAll) has no failed test of its own but
  // fails the run: counted as one failure, so the summary never says "0 failed" on a red run
  for (const f of r.testResults ?? []) {
    if (f.status === 'failed' && !(f.assertionResults ?? []).some((a) => a.status === 'failed')) {
      failed += 1;
      console.error(`npm test: ${path.relative(root, f.name)} failed to run: ${String(f.message ?? '').split('\n')[0]}`);
    }
  }
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  if ((r.numTotalTests ?? 0) === 0) ok = false;
} else {
  ok = false;
}

console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(ok && failed === 0 ? 0 : 1);
