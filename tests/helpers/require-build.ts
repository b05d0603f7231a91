// require-build.ts — integration and e2e suites test the built app; fail at once, clearly, if it is not built.
import fs from 'node:fs';
import path from 'node:path';

export default function setup(): void {
  const root = path.resolve(__dirname, '..', '..');
  const needed = ['dist/main/cli/index.js', 'dist/main/app/preload.js', 'dist/renderer/index.html', 'native/build/bin/llmt.node', 'native/build/bin/llmt-engine'];
  const missing = needed.filter((p) => !fs.existsSync(path.join(root, p)));
  if (missing.length) throw new Error(`the app is not built (missing ${missing.join(', ')}): run \`npm run build\` before these tests`);
}
