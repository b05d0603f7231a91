// demo.ts — the embedded default fine-tune (`llms-train demo`): the tiny demo model (created on first use:
// a 590k-parameter llama with HF's random init and the BPE tokenizer shipped in resources/demo), fully
// fine-tuned on the bundled sample data on CPU, with the test split's classification accuracy before and
// after. Recipe and measurements: bench/demo-recipe/RECIPE.md.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { prepareDataset } from '../data/prepare.js';
import { TokReader } from '../data/tokfile.js';
import { loadTokenizer } from '../data/tokenizer/index.js';
import { type ClsRecord, type ClsResult, classificationAccuracy } from '../eval/classify.js';
import { engineBinary } from '../engine/native.js';
import { appRoot } from '../paths.js';
import { parseRunSpec } from './runspec.js';
import type { EngineEvent, RunService } from './service.js';

export interface DemoResult {
  modelDir: string;
  outputDir: string;
  runId: number;
  before: ClsResult;
  after: ClsResult;
  seconds: number;
}

function readJsonl<T>(file: string): T[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as T);
}

/** Creates the demo model folder if it is missing. */
export function ensureDemoModel(home: string): string {
  const dir = path.join(home, 'models', 'llms-train-demo');
  if (fs.existsSync(path.join(dir, 'model.safetensors')) && fs.existsSync(path.join(dir, 'tokenizer.json'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  const r = spawnSync(engineBinary(), ['create-tiny', '--family', 'demo', '--out', tmp, '--seed', '1'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot create the demo model: ${r.stderr || r.error?.message}`);
  fs.copyFileSync(path.join(appRoot(), 'resources', 'demo', 'tokenizer.json'), path.join(tmp, 'tokenizer.json'));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(tmp, dir);
  return dir;
}

export async function runDemo(service: RunService, home: string, opt: { onLog?: (l: string) => void; onEvent?: (e: EngineEvent) => void } = {}): Promise<DemoResult> {
  const t0 = Date.now();
  const log = opt.onLog ?? (() => {});
  const data = path.join(appRoot(), 'resources', 'datasets', 'promptcblue-demo');
  const modelDir = ensureDemoModel(home);
  log(`demo model: ${modelDir}`);
  const tokenizer = await loadTokenizer(modelDir);
  const work = path.join(home, 'demo');
  const testTok = path.join(work, 'test.tok');
  await prepareDataset({ dataFile: path.join(data, 'test.json'), out: testTok, tokenizer, maxSourceLength: 128, maxTargetLength: 32 });
  const records = readJsonl<ClsRecord>(path.join(data, 'test.json'));
  const tok = TokReader.open(testTok);
  try {
    log('evaluating the untrained model on the test split…');
    const before = await classificationAccuracy(modelDir, tokenizer, records, tok);
    log(`before: accuracy ${before.accuracy.toFixed(3)} (${before.correct}/${before.total})`);
    const out = path.join(work, `run-${new Date().toISOString().replace(/[:.]/g, '-')}`);
    const spec = parseRunSpec({
      name: 'demo: tiny llama on the PromptCBLUE sample',
      model: { path: modelDir },
      method: 'full',
      data: { train: path.join(data, 'train.json'), validation: path.join(data, 'dev.json'), max_source_length: 128, max_target_length: 32 },
      training: { learning_rate: 1e-3, lr_scheduler: 'cosine', warmup_steps: 15, max_steps: 300, micro_batch_size: 16, eval_batch_size: 16, seed: 42 },
      output: { dir: out, logging_steps: 25, save_steps: 300, eval_steps: 100, overwrite: true },
    });
    const handle = await service.start(spec, { onLog: log, ...(opt.onEvent ? { onEvent: opt.onEvent } : {}) });
    const run = await handle.done;
    if (run.status !== 'completed') throw new Error(`the demo run ${run.status}: ${run.errorCode ?? ''} ${run.errorMessage ?? ''}`);
    const after = await classificationAccuracy(out, tokenizer, records, tok);
    return { modelDir, outputDir: out, runId: run.id, before, after, seconds: (Date.now() - t0) / 1000 };
  } finally {
    tok.close();
  }
}
