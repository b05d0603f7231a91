// dist_overlap.mjs — how long 2 CPU workers (Gloo, loopback) wait for the gradient all-reduce after the backward,
// with the all-reduce started bucket by bucket during the backward (distributed.overlap_backward, the default)
// and after it (overlap_backward: false). Full fine-tuning of a random 19.6M-parameter llama (hidden 512, 6 layers,
// MLP 1408, vocab 320: 78 MB of fp32 gradients per step, 25 MB buckets). Prints the per-step medians of rank_stats.
//   node bench/dist_overlap.mjs [native bin dir, default native/build/bin] [steps, default 8] [--old] [--zero]
// --old: a build from before the overlap (no overlap_backward key; only comm_wait_s exists there).
// --zero: instead, ZeRO stages 0, 1 and 2 (overlap on) of a deeper model (16 layers, 51M parameters): each rank's peak
// memory (rank_stats peak_mem_bytes: the process's peak RSS) and step time — ZeRO-1 drops half the AdamW moments,
// ZeRO-2 half the gradients too, less its two staging slots of one block.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const old = process.argv.includes('--old');
const zeroMode = process.argv.includes('--zero');
const bin = path.resolve(args[0] ?? path.join(root, 'native/build/bin'));
const steps = Number(args[1] ?? 8);
const engine = path.join(bin, 'llmt-engine');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-bench-ovl-'));

// ---- the model: create-tiny's llama files (tokenizer, config keys), scaled up, random N(0, 0.02) weights ----
const V = 320, H = 512, L = zeroMode ? 16 : 6, I = 1408, NH = 8;
const model = path.join(tmp, 'model');
if (spawnSync(engine, ['create-tiny', '--family', 'llama', '--out', model]).status !== 0) throw new Error('create-tiny failed');
const cfg = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8'));
Object.assign(cfg, { hidden_size: H, num_hidden_layers: L, intermediate_size: I, num_attention_heads: NH, num_key_value_heads: NH, vocab_size: V });
fs.writeFileSync(path.join(model, 'config.json'), JSON.stringify(cfg, null, 2));
const tensors = [['model.embed_tokens.weight', [V, H]]];
for (let l = 0; l < L; ++l) {
  const p = `model.layers.${l}.`;
  tensors.push([p + 'input_layernorm.weight', [H]], [p + 'post_attention_layernorm.weight', [H]]);
  for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) tensors.push([`${p}self_attn.${n}.weight`, [H, H]]);
  tensors.push([p + 'mlp.gate_proj.weight', [I, H]], [p + 'mlp.up_proj.weight', [I, H]], [p + 'mlp.down_proj.weight', [H, I]]);
}
tensors.push(['model.norm.weight', [H]]);
if (!cfg.tie_word_embeddings) tensors.push(['lm_head.weight', [V, H]]);
const header = {};
let off = 0;
for (const [name, shape] of tensors) {
  const n = shape.reduce((a, b) => a * b, 1);
  header[name] = { dtype: 'F32', shape, data_offsets: [off, off + 4 * n] };
  off += 4 * n;
}
let hj = JSON.stringify(header);
hj += ' '.repeat((8 - (hj.length % 8)) % 8);
const data = new Float32Array(off / 4);
let s = 12345;
const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
for (const [name, shape] of tensors) {
  const [a, b] = header[name].data_offsets.map((x) => x / 4);
  if (shape.length === 1) data.fill(1, a, b);
  else for (let i = a; i < b; ++i) data[i] = (rnd() + rnd() + rnd() - 1.5) * 0.04;  // ≈ N(0, 0.02)
}
const len = Buffer.alloc(8);
len.writeBigUInt64LE(BigInt(hj.length));
for (const f of fs.readdirSync(model)) if (f.endsWith('.safetensors')) fs.rmSync(path.join(model, f));
fs.writeFileSync(path.join(model, 'model.safetensors'), Buffer.concat([len, Buffer.from(hj), Buffer.from(data.buffer)]));
console.log(`model: ${(off / 4 / 1e6).toFixed(1)}M parameters, ${(off / 1e6).toFixed(0)} MB of fp32 gradients per step`);

// ---- data: 64 rows of 64 tokens ----
const rows = Array.from({ length: 64 }, (_, i) => Array.from({ length: 64 }, (_, t) => 4 + ((i * 131 + t * 17) % (V - 4))));
const tokens = path.join(tmp, 'tokens.json');
fs.writeFileSync(tokens, JSON.stringify({ input_ids: rows, labels: rows }));

const freePort = () =>
  new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = srv.address().port;
      srv.close(() => resolve(p));
    });
  });
const runRank = (file, r, port) =>
  new Promise((resolve) => {
    const env = { ...process.env, RANK: String(r), WORLD_SIZE: '2', LOCAL_WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) };
    const c = spawn(engine, ['train', '--job', file], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('close', (code) => resolve({ code, out, err }));
  });
const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length ? (v[(v.length - 1) >> 1] + v[v.length >> 1]) / 2 : NaN;
};

// the job both ranks run: a full fine-tune of the model with `distributed` (world_size 2 added); its ranks' outputs
async function runBoth(tag, distributed) {
  const job = {
    model,
    method: 'full',
    data: { train: tokens },
    training: { learning_rate: 1e-4, max_steps: steps, micro_batch_size: 2, gradient_accumulation_steps: 1, seed: 1 },
    output: { dir: path.join(tmp, `out-${tag}`), logging_steps: 1, save_steps: 100000 },
    distributed: { world_size: 2, ...distributed },
  };
  const file = path.join(tmp, `job-${tag}.json`);
  fs.writeFileSync(file, JSON.stringify(job));
  const port = await freePort();
  const rs = await Promise.all([0, 1].map((r) => runRank(file, r, port)));
  for (const r of rs) if (r.code !== 0) throw new Error(r.err || r.out);
  return rs;
}

async function measure(overlap) {
  const rs = await runBoth(String(overlap), old ? {} : { overlap_backward: overlap });
  const stats = rs[0].out.split('\n').filter((l) => l.startsWith('{"event":"rank_stats"')).map((l) => JSON.parse(l)).slice(1);  // step 1 warms up
  const pick = (f) => [0, 1].map((r) => median(stats.map((e) => e.ranks[r][f] ?? NaN)));
  const fmt = (xs, d = 3) => xs.map((x) => (Number.isFinite(x) ? x.toFixed(d) : '-')).join(' / ');
  const label = old ? 'old build (after backward)' : overlap ? 'overlap_backward: true ' : 'overlap_backward: false';
  console.log(`${label}  step ${fmt([median(stats.map((e) => e.interval_s))])} s` +
    `  compute_s ${fmt(pick('compute_s'))}  comm_wait_s ${fmt(pick('comm_wait_s'))}  grad_wait_s ${fmt(pick('grad_wait_s'))}` +
    `  buckets ${fmt(pick('buckets'), 0)} (overlapped ${fmt(pick('buckets_overlapped'), 0)})   [rank 0 / rank 1, medians of steps 2–${steps}]`);
}

async function measureZero(stage) {
  const rs = await runBoth(`z${stage}`, { zero_stage: stage });
  const events = rs[0].out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const stats = events.filter((e) => e.event === 'rank_stats');
  const last = stats.at(-1);
  const mib = (b) => (b / 2 ** 20).toFixed(1);
  const slots = events.find((e) => e.event === 'started').zero2_slot_bytes;
  console.log(`zero_stage ${stage}: peak memory ${[0, 1].map((r) => mib(last.ranks[r].peak_mem_bytes)).join(' / ')} MiB` +
    `  step ${median(stats.slice(1).map((e) => e.interval_s)).toFixed(3)} s` + (slots ? `  (slots ${mib(slots)} MiB)` : '') + '   [rank 0 / rank 1]');
}

if (zeroMode) for (const stage of [0, 1, 2]) await measureZero(stage);
else if (old) await measure(false);
else {
  await measure(false);
  await measure(true);
}
fs.rmSync(tmp, { recursive: true, force: true });
