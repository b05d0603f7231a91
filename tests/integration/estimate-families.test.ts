// The pre-flight memory estimate (src-main/core/runs/estimate.ts) against the peak the engine measures (VmHWM), across
// the families' block shapes (gated or GELU MLP, sequential or parallel residual, one or two norms, fused q/k/v),
// mixed precision and CPU data parallelism. The models are create-tiny's folders widened ×4 (hidden 256, 4 layers,
// vocab 8000), so that activations, the logits chunk and the weights — not the process's fixed baseline — set the peak.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { estimateRun } from '../../src-main/core/runs/estimate';
import { parseRunSpec, toEngineJob } from '../../src-main/core/runs/runspec';
import { ENGINE } from '../helpers/native';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-estimate-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** create-tiny's folder of `family` with every width ×k, the vocabulary V and L layers (copies of layer 1's shapes). */
function widened(family: string, k = 4, V = 8000, L = 4): string {
  const src = path.join(tmp, `tiny-${family}`);
  const out = path.join(tmp, `wide-${family}`);
  if (fs.existsSync(out)) return out;
  expect(spawnSync(ENGINE, ['create-tiny', '--family', family, '--out', src]).status).toBe(0);
  fs.mkdirSync(out);
  for (const f of fs.readdirSync(src)) if (f !== 'model.safetensors' && f !== 'config.json') fs.copyFileSync(path.join(src, f), path.join(out, f));
  const c = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const V0 = c.vocab_size as number;
  for (const key of ['hidden_size', 'intermediate_size', 'inner_hidden_size', 'ffn_hidden_size', 'kv_channels', 'head_dim']) if (typeof c[key] === 'number') c[key] = (c[key] as number) * k;
  for (const key of ['vocab_size', 'padded_vocab_size']) if (key in c) c[key] = V;
  for (const key of ['num_hidden_layers', 'n_layer', 'num_layers']) if (key in c) c[key] = L;
  for (const key of ['max_position_embeddings', 'seq_length', 'max_sequence_length']) if (key in c) c[key] = 4096;
  fs.writeFileSync(path.join(out, 'config.json'), JSON.stringify(c, null, 2));
  const buf = fs.readFileSync(path.join(src, 'model.safetensors'));
  const hlen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + hlen).toString('utf8')) as Record<string, { dtype: string; shape: number[] }>;
  const layer = /(\.(?:layers|h)\.)(\d+)(\.)/;
  const tensors: [string, number[]][] = [];
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const m = layer.exec(name);
    if (m && m[2] !== '1') continue;
    const shape = t.shape.map((d) => (d === V0 ? V : d * k));
    if (m) for (let l = 0; l < L; l++) tensors.push([name.replace(layer, `$1${l}$3`), shape]);
    else tensors.push([name, shape]);
  }
  const meta: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let at = 0;
  const datas: Buffer[] = [];
  let seed = 1;
  for (const [name, shape] of tensors) {
    const n = shape.reduce((a, b) => a * b, 1);
    const f = new Float32Array(n);
    const norm = shape.length === 1 && !name.endsWith('bias');
    for (let i = 0; i < n; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      f[i] = norm ? 1 : name.endsWith('bias') ? 0 : ((seed / 2 ** 32) - 0.5) * 0.04;
    }
    meta[name] = { dtype: 'F32', shape, data_offsets: [at, at + 4 * n] };
    at += 4 * n;
    datas.push(Buffer.from(f.buffer));
  }
  let h = JSON.stringify(meta);
  h += ' '.repeat((8 - (h.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
  fs.writeFileSync(path.join(out, 'model.safetensors'), Buffer.concat([len, Buffer.from(h), ...datas]));
  return out;
}

interface Case {
  family: string;
  method?: 'lora' | 'full';
  T: number;
  mb: number;
  ckpt?: boolean;
  precision?: 'fp32' | 'bf16';
  workers?: number;
  zero?: 0 | 1 | 2;
}

/** [estimate, measured peak] in bytes: the RunSpec's engine job (toEngineJob) run for 2 steps on samples of exactly T tokens. */
async function measure(c: Case): Promise<[number, number]> {
  const model = widened(c.family);
  const tok = path.join(tmp, `data-${c.T}.json`);
  const ids = Array.from({ length: 16 }, (_, i) => Array.from({ length: c.T }, (_, j) => ((7 * i + j) % 250) + 4));
  fs.writeFileSync(tok, JSON.stringify({ input_ids: ids, labels: ids }));
  const name = `${c.family}-${c.method ?? 'lora'}-${c.T}-${c.mb}-${c.ckpt ? 1 : 0}-${c.precision ?? 'fp32'}-${c.workers ?? 1}-${c.zero ?? 0}`;
  const spec = parseRunSpec({
    model: { path: model },
    method: c.method ?? 'lora',
    lora: { r: 8, alpha: 16, dropout: 0, target_modules: 'all-linear' },
    data: { train: tok, max_source_length: c.T - 16, max_target_length: 16 },
    training: { max_steps: 2, micro_batch_size: c.mb, gradient_checkpointing: !!c.ckpt, precision: c.precision ?? 'fp32' },
    distributed: { nproc_per_node: c.workers ?? 1, zero_stage: c.zero ?? 0 },
    output: { dir: path.join(tmp, `out-${name}`), logging_steps: 1, save_steps: 100000 },
  });
  const job = { ...toEngineJob(spec, { train: tok, eval: null }, null), threads: 1 };
  const jobFile = path.join(tmp, `job-${name}.json`);
  fs.writeFileSync(jobFile, JSON.stringify(job));
  const n = c.workers ?? 1;
  const port = String(29000 + Math.floor(Math.random() * 2000));
  const outs = await Promise.all(
    Array.from({ length: n }, (_, r) =>
      new Promise<string>((resolve, reject) => {
        const env = n > 1 ? { ...process.env, RANK: String(r), WORLD_SIZE: String(n), LOCAL_RANK: String(r), LOCAL_WORLD_SIZE: String(n), MASTER_ADDR: '127.0.0.1', MASTER_PORT: port } : process.env;
        const p = spawn(ENGINE, ['train', '--job', jobFile], { env });
        let out = '';
        let err = '';
        p.stdout.on('data', (d: Buffer) => (out += d.toString()));
        p.stderr.on('data', (d: Buffer) => (err += d.toString()));
        p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${name} rank ${r}: exit ${code}\n${err}`))));
      }),
    ),
  );
  // rank 0 speaks for the run: its step events, and with several workers each rank's peak in rank_stats
  type Ev = { event: string; peak_mem_bytes?: number; ranks?: { peak_mem_bytes: number }[] };
  const events = outs[0]!.trim().split('\n').map((l) => JSON.parse(l) as Ev);
  const peaks = events.flatMap((e) => (e.event === 'step' ? [e.peak_mem_bytes!] : e.event === 'rank_stats' ? e.ranks!.map((r) => r.peak_mem_bytes) : []));
  expect(peaks.length).toBeGreaterThan(n > 1 ? 2 : 1);
  const info = JSON.parse(spawnSync(ENGINE, ['inspect', '--model', model], { encoding: 'utf8' }).stdout);
  return [estimateRun(info, spec, 1).bytes.total, Math.max(...peaks)];
}

const within = async (c: Case, tol: number) => {
  const [est, peak] = await measure(c);
  expect(Math.abs(est - peak) / peak, `${JSON.stringify(c)}: estimate ${(est / 2 ** 20).toFixed(1)} MiB, measured ${(peak / 2 ** 20).toFixed(1)} MiB`).toBeLessThan(tol);
};

describe('the memory estimate against the measured peak', () => {
  // falcon-7b: parallel block, one norm, GELU MLP (estimated as LLaMA's block: 17 % high); GPT-NeoX: parallel, its k and
  // v were left out (13 % low); BLOOM, ChatGLM2: fused q/k/v; LLaMA: the calibrated case
  it.each(['falcon', 'gpt_neox', 'bloom', 'chatglm2', 'llama'])('%s, LoRA and full fine-tuning, with and without checkpointing', async (family) => {
    for (const [method, ckpt] of [['lora', false], ['full', false], ['lora', true]] as const) await within({ family, method, T: 512, mb: 2, ckpt }, 0.05);
  }, 120_000);

  it('bf16 with a 16-bit head: the rounded copy of the logits gradient counted', async () => {
    for (const family of ['llama', 'bloom']) for (const ckpt of [false, true]) await within({ family, T: 1024, mb: 2, ckpt, precision: 'bf16' }, 0.08);
  }, 120_000);

  it('two CPU workers: the gradient reducer\'s bucket and Gloo\'s scratch counted (full fine-tuning, ZeRO-1 and ZeRO-2 too)', async () => {
    await within({ family: 'llama', method: 'full', T: 256, mb: 2, workers: 2 }, 0.07);
    await within({ family: 'llama', method: 'full', T: 256, mb: 2, workers: 2, zero: 1 }, 0.07);
    // ZeRO-2: half the gradients, two staging slots, no packing buffer
    await within({ family: 'llama', method: 'full', T: 256, mb: 2, workers: 2, zero: 2 }, 0.07);
  }, 120_000);
});
