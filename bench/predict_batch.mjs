// predict_batch.mjs — batched vs one-at-a-time `predict` on the sample test split (docs/BENCHMARKS.md): the same
// records through the engine host with --batch_size 1 and with --batch_size B, checking that both write the same
// file, and the speed-up. Models: the embedded demo (590k parameters) and a larger random llama (hidden 512,
// 8 layers, ~27M parameters) sharing the demo's tokenizer. Needs `npm run build` first.
// Usage: node bench/predict_batch.mjs [--batch 8] [--limit 150] [--max-new-tokens 32] [--threads 2] [--work DIR]
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const { ensureDemoModel } = require(path.join(ROOT, 'dist/main/core/runs/demo.js'));
const { predict } = require(path.join(ROOT, 'dist/main/core/eval/predict.js'));
const { EngineHost } = require(path.join(ROOT, 'dist/main/core/engine/host.js'));

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const batch = Number(arg('batch', 8));
const limit = Number(arg('limit', 150));
const maxNew = Number(arg('max-new-tokens', 32));
const threads = Number(arg('threads', 2));
const work = arg('work', path.join(os.tmpdir(), 'llmt-bench-predict'));

// A random llama as an HF folder (fp32 safetensors), deterministic.
function writeLlama(dir, { hidden, layers, heads, inter, vocab }) {
  if (fs.existsSync(path.join(dir, 'model.safetensors'))) return dir;
  fs.mkdirSync(dir, { recursive: true });
  const tensors = [];
  const add = (name, shape, init) => tensors.push({ name, shape, init });
  const std = 0.02;
  add('model.embed_tokens.weight', [vocab, hidden], 'normal');
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [hidden], 'one');
    add(`${p}post_attention_layernorm.weight`, [hidden], 'one');
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) add(`${p}self_attn.${m}.weight`, [hidden, hidden], 'normal');
    add(`${p}mlp.gate_proj.weight`, [inter, hidden], 'normal');
    add(`${p}mlp.up_proj.weight`, [inter, hidden], 'normal');
    add(`${p}mlp.down_proj.weight`, [hidden, inter], 'normal');
  }
  add('model.norm.weight', [hidden], 'one');
  add('lm_head.weight', [vocab, hidden], 'normal');
  const header = {};
  let off = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [off, off + 4 * n] };
    off += 4 * n;
  }
  let h = Buffer.from(JSON.stringify(header));
  h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const fd = fs.openSync(path.join(dir, 'model.safetensors'), 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  fs.writeSync(fd, len);
  fs.writeSync(fd, h);
  let s = 12345;
  const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296) * 2 - 1;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = t.init === 'one' ? 1 : rand() * std * Math.sqrt(3);
    fs.writeSync(fd, Buffer.from(a.buffer));
  }
  fs.closeSync(fd);
  const config = {
    model_type: 'llama', architectures: ['LlamaForCausalLM'], vocab_size: vocab, hidden_size: hidden, intermediate_size: inter,
    num_hidden_layers: layers, num_attention_heads: heads, num_key_value_heads: heads, hidden_act: 'silu', rms_norm_eps: 1e-6,
    rope_theta: 10000, max_position_embeddings: 1024, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, pad_token_id: 0,
    torch_dtype: 'float32',
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return dir;
}

const demo = ensureDemoModel(work);
const large = writeLlama(path.join(work, 'models', 'llama-27m'), { hidden: 512, layers: 8, heads: 8, inter: 1376, vocab: 1024 });
for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) {
  if (fs.existsSync(path.join(demo, f))) fs.copyFileSync(path.join(demo, f), path.join(large, f));
}

const data = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo', 'test.json');
const host = new EngineHost({ threads });
const rows = [];
try {
  for (const [name, model] of [['demo (590k)', demo], ['llama-27m', large]]) {
    await host.load({ model });  // loading is not timed
    const time = async (b) => {
      const out = path.join(work, 'pred', `${path.basename(model)}-b${b}.jsonl`);
      const t0 = process.hrtime.bigint();
      const r = await predict({ model, data, out, limit, maxSourceLength: 128, params: { max_new_tokens: maxNew }, batchSize: b, resume: false, host });
      return { s: Number(process.hrtime.bigint() - t0) / 1e9, tokens: r.tokens, out };
    };
    const one = await time(1);
    const many = await time(batch);
    const same = fs.readFileSync(one.out, 'utf8') === fs.readFileSync(many.out, 'utf8');
    rows.push({ name, one, many, same });
    console.log(`${name}: batch 1 ${one.s.toFixed(2)} s (${(one.tokens / one.s).toFixed(0)} tok/s), batch ${batch} ${many.s.toFixed(2)} s (${(many.tokens / many.s).toFixed(0)} tok/s), speed-up ${(one.s / many.s).toFixed(2)}x, identical output: ${same}`);
  }
} finally {
  await host.dispose();
}
if (rows.some((r) => !r.same)) process.exitCode = 1;
