// Model manager against real references: checkpoints written by PyTorch's torch.save (safe .bin loading,
// convert), a planted os.system pickle (refused, never run), adapter merge vs the engine's base+adapter and
// vs PEFT's merge_and_unload, a Chinese-LLaMA-Alpaca style vocabulary-extending delta vs the merge script's
// recipe (resize_token_embeddings + PEFT merge), and the GGUF export read by llama.cpp's gguf-py and — when
// node-llama-cpp is installed (LLMT_NODE_LLAMA_CPP=<folder with node_modules>, see docs/models.md) — run by
// llama.cpp itself with log-probabilities compared to ours: every family llama.cpp knows, a LoRA adapter GGUF on
// its base GGUF, a SentencePiece tokenizer.model (token ids too), and the Llama 3 / Mistral / Qwen2 kinds (llama3
// RoPE as rope_freqs, Qwen2 unpermuted, their byte-level BPE pre-tokenizers with token ids compared).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadTokenizer } from '../../src-main/core/data/tokenizer/index';
import { exportGguf } from '../../src-main/core/models/gguf';
import { llamaSpModel } from '../fixtures/tokenizers/fixtures';
import { ROOT, runCli } from '../helpers/app';
import { writeSafetensors } from '../helpers/native';
import { ENGINE, NATIVE, PY } from '../helpers/native';

const REF = path.join(ROOT, 'tests', 'python', 'model_manager_ref.py');
const HF = path.join(ROOT, 'tests', 'python', 'hf_reference.py');
let tmp: string;

function run(cmd: string, args: string[], ok = true) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  if (ok && r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  return r;
}
const ref = (args: string[]) => run(PY, [REF, ...args]).stdout;
const engine = (args: string[]) => run(ENGINE, args).stdout;
const t = (name: string) => path.join(tmp, name);
type Logits = number[][][];
function logits(model: string, tokens: string, adapter?: string): Logits {
  const out = t(`logits-${Math.random().toString(36).slice(2)}.json`);
  engine(['forward', '--model', model, ...(adapter ? ['--adapter', adapter] : []), '--tokens', tokens, '--out', out]);
  return (JSON.parse(fs.readFileSync(out, 'utf8')) as { logits: Logits }).logits;
}
type StMap = Record<string, { shape: number[]; data: Float32Array }>;
function readSafetensors(file: string): StMap {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out: StMap = {};
  for (const [k, v] of Object.entries(h)) {
    if (k === '__metadata__') continue;
    const s = b.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
    out[k] = { shape: v.shape, data: new Float32Array(s.buffer.slice(s.byteOffset, s.byteOffset + s.length)) };
  }
  return out;
}
function maxAbsDiff(a: Logits, b: Logits): number {
  let m = 0;
  a.forEach((r, i) => r.forEach((tok, j) => tok.forEach((x, k) => (m = Math.max(m, Math.abs(x - b[i]![j]![k]!))))));
  return m;
}

beforeAll(() => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-models-'));
  engine(['create-tiny', '--family', 'llama', '--out', t('base')]);
  fs.writeFileSync(t('tokens.json'), JSON.stringify({ input_ids: [[1, 37, 99, 14, 250, 61, 8, 77, 300, 12]] }));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('PyTorch .bin checkpoints (restricted unpickler)', () => {
  it('a folder with only pytorch_model.bin (torch.save) loads, inspects and gives its safetensors twin\'s logits', () => {
    ref(['torch-save', '--model', t('base'), '--out', t('bin')]);
    expect(fs.readdirSync(t('bin'))).toContain('pytorch_model.bin');
    const info = JSON.parse(engine(['inspect', '--model', t('bin')])) as { parameters: number; dtype: string };
    expect(info).toMatchObject({ supported: true, dtype: 'F32', parameters: 115008 });
    expect(logits(t('bin'), t('tokens.json'))).toEqual(logits(t('base'), t('tokens.json')));
  });

  it('sharded fp16 .bin (pytorch_model.bin.index.json) converts once to identical safetensors shards', () => {
    ref(['torch-save', '--model', t('base'), '--out', t('bin16'), '--dtype', 'f16', '--shards', '2']);
    const before = logits(t('bin16'), t('tokens.json'));
    const rep = JSON.parse(engine(['convert', t('bin16'), '--out', t('conv16')])) as { files: string[] };
    expect(rep.files).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
    expect(fs.existsSync(t('conv16/tokenizer.json'))).toBe(true);
    expect(fs.readdirSync(t('conv16')).some((f) => f.endsWith('.bin'))).toBe(false);
    expect(logits(t('conv16'), t('tokens.json'))).toEqual(before);
    expect(JSON.parse(engine(['inspect', '--model', t('conv16')])).dtype).toBe('F16');
    // a missing shard is named
    fs.rmSync(t('bin16/pytorch_model-00002-of-00002.bin'));
    const r = run(ENGINE, ['inspect', '--model', t('bin16')], false);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('pytorch_model-00002-of-00002.bin is missing');
  });

  it('refuses a pickle that asks for os.system by name, and the planted command never runs', () => {
    const marker = t('PWNED');
    ref(['evil', '--out', t('evil'), '--marker', marker]);
    fs.copyFileSync(t('base/config.json'), t('evil/config.json'));
    for (const args of [['convert', t('evil')], ['inspect', '--model', t('evil')], ['forward', '--model', t('evil'), '--tokens', t('tokens.json'), '--out', t('x.json')]]) {
      const r = run(ENGINE, args, false);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/refusing to load .*pytorch_model\.bin: it asks for posix\.system \(os\.system\), which a state dict never needs/);
    }
    expect(fs.existsSync(marker)).toBe(false);
    expect(fs.existsSync(t('evil/model.safetensors'))).toBe(false);
  });

  it('a truncated checkpoint gets a specific error', () => {
    fs.mkdirSync(t('trunc'));
    const b = fs.readFileSync(t('bin/pytorch_model.bin'));
    fs.writeFileSync(t('trunc/pytorch_model.bin'), b.subarray(0, b.length - 1000));
    fs.copyFileSync(t('base/config.json'), t('trunc/config.json'));
    const r = run(ENGINE, ['inspect', '--model', t('trunc')], false);
    expect(r.stderr).toMatch(/BAD_INPUT: cannot read .*pytorch_model\.bin: it is truncated or damaged/);
  });
});

describe('merge an adapter into its base', () => {
  it('merged logits equal base+adapter (engine) and PEFT merge_and_unload; dtype and atomic output', () => {
    run(PY, [HF, 'make-adapter', '--model', t('base'), '--out', t('ad'), '--targets', 'q_proj,v_proj,gate_proj,down_proj', '--r', '4', '--alpha', '8', '--modules-to-save', 'lm_head']);
    const rep = JSON.parse(engine(['merge', '--model', t('base'), '--adapter', t('ad'), '--out', t('merged')])) as Record<string, unknown>;
    expect(rep).toMatchObject({ dtype: 'float32', merged_modules: 8, replaced_tensors: 1, vocab_after: 320 });
    const merged = logits(t('merged'), t('tokens.json'));
    const withAdapter = logits(t('base'), t('tokens.json'), t('ad'));
    expect(maxAbsDiff(merged, withAdapter)).toBeLessThan(5e-5);
    ref(['peft-merge', '--model', t('base'), '--adapter', t('ad'), '--tokens', t('tokens.json'), '--out', t('peft.json')]);
    const peft = (JSON.parse(fs.readFileSync(t('peft.json'), 'utf8')) as { logits: Logits }).logits;
    expect(maxAbsDiff(merged, peft)).toBeLessThan(5e-5);
    expect(fs.readdirSync(t('merged')).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
    // an existing output is refused; no temp folder is left behind
    const again = run(ENGINE, ['merge', '--model', t('base'), '--adapter', t('ad'), '--out', t('merged')], false);
    expect(again.stderr).toContain('already exists and is not empty');
    expect(fs.readdirSync(tmp).some((f) => f.includes('.tmp-'))).toBe(false);
    engine(['merge', '--model', t('base'), '--adapter', t('ad'), '--out', t('merged16'), '--dtype', 'float16']);
    expect(JSON.parse(engine(['inspect', '--model', t('merged16')])).dtype).toBe('F16');
    expect(JSON.parse(fs.readFileSync(t('merged16/config.json'), 'utf8')).torch_dtype).toBe('float16');
  });

  it('Chinese-LLaMA-Alpaca style delta (adapter_model.bin, extended vocabulary) matches resize + PEFT merge', () => {
    ref(['vocab-delta', '--model', t('base'), '--out', t('zh'), '--extra', '68']);
    const rep = JSON.parse(engine(['merge', '--model', t('base'), '--adapter', t('zh'), '--out', t('zhm')])) as Record<string, unknown>;
    expect(rep).toMatchObject({ vocab_before: 320, vocab_after: 328, tokenizer_from: 'adapter' });
    expect(JSON.parse(fs.readFileSync(t('zhm/config.json'), 'utf8')).vocab_size).toBe(328);
    fs.writeFileSync(t('tokens-zh.json'), JSON.stringify({ input_ids: [[1, 20, 325, 50, 327, 7, 8]] }));
    ref(['peft-merge', '--model', t('base'), '--adapter', t('zh'), '--tokens', t('tokens-zh.json'), '--out', t('zh.json')]);
    const want = (JSON.parse(fs.readFileSync(t('zh.json'), 'utf8')) as { logits: Logits }).logits;
    expect(maxAbsDiff(logits(t('zhm'), t('tokens-zh.json')), want)).toBeLessThan(5e-5);
    // the delta's tokenizer must match its embeddings: a wrong tokenizer is a clear error
    fs.mkdirSync(t('zhbad'));
    for (const f of ['adapter_config.json', 'adapter_model.bin']) fs.copyFileSync(t(`zh/${f}`), t(`zhbad/${f}`));
    fs.copyFileSync(t('base/tokenizer.json'), t('zhbad/tokenizer.json'));
    const r = run(ENGINE, ['merge', '--model', t('base'), '--adapter', t('zhbad'), '--out', t('zhbadm')], false);
    expect(r.stderr).toContain("vocabulary mismatch: the adapter's embeddings have 328 rows but the tokenizer in");
    expect(fs.existsSync(t('zhbadm'))).toBe(false);
  });
});

// llama.cpp itself, when node-llama-cpp is available (LLMT_NODE_LLAMA_CPP=<folder with node_modules>).
// node-llama-cpp is not a dependency (its install pulls ~700 MB of GPU builds): typed here by hand.
type Ctx = { getSequence(): { controlledEvaluate(i: unknown): Promise<unknown[]> }; dispose(): Promise<void> };
type NlcModel = { createContext(o: unknown): Promise<Ctx>; tokenize(text: string): number[]; dispose(): Promise<void> };
type Llama = { loadModel(o: unknown): Promise<NlcModel>; dispose(): Promise<void> };
type Nlc = { LlamaLogLevel: { error: unknown }; getLlama(o: unknown): Promise<Llama> };
let llamaCpp: Llama | null | undefined;
async function getLlamaCpp(): Promise<Llama | null> {
  if (llamaCpp !== undefined) return llamaCpp;
  const nlcDir = process.env.LLMT_NODE_LLAMA_CPP;
  try {
    const req = createRequire(nlcDir ? path.join(path.resolve(nlcDir), 'index.js') : __filename);
    const mod = (await import(req.resolve('node-llama-cpp'))) as Nlc;
    llamaCpp = await mod.getLlama({ gpu: false, build: 'never', logLevel: mod.LlamaLogLevel.error });
  } catch {
    console.warn('node-llama-cpp is not installed: the GGUFs are checked with gguf-py only (set LLMT_NODE_LLAMA_CPP)');
    llamaCpp = null;
  }
  return llamaCpp;
}
afterAll(async () => llamaCpp?.dispose());

const IDS = [1, 37, 99, 14, 250, 61, 8, 77, 300, 12];
/** Max |log p| difference between llama.cpp's next-token distribution (f32 KV cache, no flash attention) on the
 *  GGUF `file` (+ a LoRA GGUF) and the engine's logits for `modelDir` (+ the PEFT `adapter`), over all tokens. */
async function llamaCppDiff(llama: Llama, file: string, modelDir: string, o: { lora?: string; adapter?: string; ids?: number[]; model?: NlcModel } = {}): Promise<number> {
  const ids = o.ids ?? IDS;
  const model = o.model ?? (await llama.loadModel({ modelPath: file }));
  const ctx = await model.createContext({
    contextSize: 64, threads: 2, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', flashAttention: false,
    ...(o.lora ? { lora: { adapters: [{ filePath: o.lora }] } } : {}),
  });
  const out = await ctx.getSequence().controlledEvaluate(ids.map((x) => [x, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }] as const));
  const tokens = t(`ids-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(tokens, JSON.stringify({ input_ids: [ids] }));
  const ours = logits(modelDir, tokens, o.adapter)[0]!;
  let worst = 0;
  ids.forEach((_, i) => {
    const row = ours[i]!;
    const mx = Math.max(...row);
    const lse = mx + Math.log(row.reduce((a, x) => a + Math.exp(x - mx), 0));
    const probs = (out[i] as { next: { probabilities: Map<number, number> } }).next.probabilities;
    for (let v = 0; v < row.length; v++) worst = Math.max(worst, Math.abs(Math.log(probs.get(v) ?? 0) - (row[v]! - lse)));
  });
  await ctx.dispose();
  if (!o.model) await model.dispose();
  return worst;
}
type Dump = { fields: Record<string, unknown>; tensors: { name: string; shape: number[]; type: string }[] };
function ggufDump(file: string): Dump {
  const out = `${file}.dump.json`;
  ref(['gguf-dump', '--file', file, '--out', out]);
  return JSON.parse(fs.readFileSync(out, 'utf8')) as Dump;
}

describe('GGUF export', () => {
  it('`llms-train model export`: a Modelfile with an exportable template; without one it says why there is none; other templates are not offered', async () => {
    const out = t('cli-export');
    const a = await runCli(['model', 'export', '--model', t('merged'), '--out', path.join(out, 'plain.gguf'), '--dtype', 'f32']);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stdout).toMatch(/no Ollama Modelfile: it needs the layout the model was trained with — give --template raw, alpaca, belle or vicuna/);
    expect(fs.readdirSync(out)).toEqual(['plain.gguf']);
    const b = await runCli(['model', 'export', '--model', t('merged'), '--out', path.join(out, 'alp.gguf'), '--dtype', 'f32', '--template', 'alpaca']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toMatch(/Ollama: cd .* && ollama create my-model -f alp\.Modelfile/);
    const c = await runCli(['model', 'export', '--model', t('merged'), '--out', path.join(out, 'glm.gguf'), '--template', 'chatglm2']);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/--template.*chatglm2.*Allowed choices are raw, alpaca, belle, vicuna, chat_template/s);
    expect(fs.existsSync(path.join(out, 'glm.gguf'))).toBe(false);
  });

  it('writes llama-architecture GGUF (+ <name>.Modelfile) that llama.cpp reads, with logits close to ours', async () => {
    const gguf = t('export/model.gguf');
    const res = await exportGguf({ modelDir: t('merged'), out: gguf, dtype: 'f32', template: 'alpaca' });
    expect(res).toMatchObject({ architecture: 'llama', tensors: 21, vocab: 320, tokenizer: 'gpt2', modelfile: t('export/model.Modelfile') });
    const modelfile = fs.readFileSync(t('export/model.Modelfile'), 'utf8');
    expect(modelfile).toContain('FROM ./model.gguf');
    expect(modelfile).toContain('### Instruction:\n{{ .Content }}\n\n### Response:\n');
    expect(modelfile).toContain('PARAMETER stop "</s>"');
    const dump = ggufDump(gguf);
    expect(dump.fields).toMatchObject({
      'general.architecture': 'llama',
      'llama.block_count': 2,
      'llama.attention.head_count': 4,
      'llama.attention.head_count_kv': 2,
      'tokenizer.ggml.model': 'gpt2',
      'tokenizer.ggml.eos_token_id': 2,
    });
    expect(String(dump.fields['tokenizer.chat_template'])).toContain('### Instruction:');
    expect(dump.tensors.find((x) => x.name === 'blk.0.attn_k.weight')).toMatchObject({ shape: [64, 32], type: 'F32' });
    // Baichuan-7B (W_pack split into q/k/v, written as the llama architecture) into the same folder: each
    // export keeps its own Modelfile
    engine(['create-tiny', '--family', 'baichuan', '--out', t('baichuan')]);
    await exportGguf({ modelDir: t('baichuan'), out: t('export/bc.gguf'), dtype: 'f32', template: 'vicuna' });
    expect(fs.readdirSync(t('export')).filter((f) => !f.endsWith('.json')).sort()).toEqual(['bc.Modelfile', 'bc.gguf', 'model.Modelfile', 'model.gguf']);
    expect(fs.readFileSync(t('export/bc.Modelfile'), 'utf8')).toContain('FROM ./bc.gguf');
    expect(fs.readFileSync(t('export/model.Modelfile'), 'utf8')).toContain('FROM ./model.gguf');

    const llama = await getLlamaCpp();
    if (!llama) return;
    const worst = await llamaCppDiff(llama, gguf, t('merged'));
    console.log(`llama.cpp vs engine (llama): max |log-prob diff| ${worst.toExponential(2)} over ${IDS.length}×320`);
    expect(worst).toBeLessThan(1e-3);
    const worstBc = await llamaCppDiff(llama, t('export/bc.gguf'), t('baichuan'));
    console.log(`llama.cpp vs engine (baichuan): max |log-prob diff| ${worstBc.toExponential(2)}`);
    expect(worstBc).toBeLessThan(1e-3);
  });

  // The GELU families differ from the engine by llama.cpp's GELU: tanh approximation looked up in an f16
  // table (ggml_vec_gelu_f32). Emulating that GELU in transformers gives the same differences (5.3e-3
  // gpt_neox, 4.1e-3 bloom, 6.2e-3 falcon), so 1e-2 there; 1e-3 for the others.
  const FAMILIES: [family: string, arch: string, tol: number, keys: Record<string, unknown>][] = [
    ['gpt_neox', 'gptneox', 1e-2, { 'gptneox.rope.dimension_count': 4, 'gptneox.use_parallel_residual': true }],
    ['bloom', 'bloom', 1e-2, { 'bloom.attention.head_count': 4 }],
    ['falcon', 'falcon', 1e-2, { 'falcon.attention.head_count_kv': 1 }],
    ['falcon40b', 'falcon', 1e-2, { 'falcon.attention.head_count_kv': 2 }],
    ['minicpm', 'minicpm', 1e-3, { 'minicpm.embedding_scale': 12, 'minicpm.logit_scale': 4 }],
    ['chatglm2', 'chatglm', 1e-3, { 'chatglm.rope.dimension_count': 8, 'chatglm.attention.head_count_kv': 2 }],
  ];
  it('gpt_neox, bloom, falcon (7B and 40B layouts), minicpm and chatglm2 export and run in llama.cpp', async () => {
    const llama = await getLlamaCpp();
    for (const [family, arch, tol, keys] of FAMILIES) {
      const dir = t(`fam-${family}`);
      engine(['create-tiny', '--family', family, '--out', dir]);
      const r = await exportGguf({ modelDir: dir, out: t(`fam/${family}.gguf`), dtype: 'f32' });
      expect(r.architecture).toBe(arch);
      if (!llama) {
        const dump = ggufDump(r.gguf);
        expect(dump.fields).toMatchObject({ 'general.architecture': arch, ...keys });
        continue;
      }
      const worst = await llamaCppDiff(llama, r.gguf, dir);
      console.log(`llama.cpp vs engine (${family} as ${arch}): max |log-prob diff| ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(tol);
    }
  });

  // The model kinds the engine gained with Llama 3.x, Mistral and Qwen2 (each checked against transformers in
  // engine.test.ts), written as convert_hf_to_gguf.py writes them: llama3 RoPE as the rope_freqs tensor (tied: no
  // output.weight), Mistral as llama with key_length/value_length for its head_dim, Qwen2 as qwen2 with q/k/v biases
  // and Q/K rows left in HF's order (NeoX RoPE); llama_bias keeps LlamaConfig's attention_bias on q/k/v/o.
  const NEW_FAMILIES: [family: string, arch: string, fields: Record<string, unknown>, tensors: Record<string, number[] | null>][] = [
    ['llama3', 'llama', { 'llama.rope.freq_base': 500000, 'llama.vocab_size': 320 }, { 'rope_freqs.weight': [8], 'output.weight': null }],
    ['llama_bias', 'llama', { 'llama.attention.key_length': 24, 'llama.attention.value_length': 24, 'llama.rope.dimension_count': 24 }, { 'blk.0.attn_q.bias': [96], 'blk.0.attn_output.bias': [64], 'rope_freqs.weight': null }],
    ['mistral', 'llama', { 'llama.attention.key_length': 24, 'llama.rope.freq_base': 1e6 }, { 'blk.0.attn_q.weight': [64, 96], 'blk.0.attn_q.bias': null }],
    ['qwen2', 'qwen2', { 'qwen2.rope.freq_base': 1e6, 'qwen2.attention.head_count_kv': 2, 'qwen2.attention.layer_norm_rms_epsilon': Math.fround(1e-6) }, { 'blk.1.attn_k.bias': [32], 'blk.0.attn_output.bias': null, 'output.weight': null }],
  ];
  it('Llama 3 (llama3 RoPE), llama with biases and head_dim, Mistral and Qwen2 export as the converter lays them out and run in llama.cpp', async () => {
    const llama = await getLlamaCpp();
    // 40 positions: far enough for the llama3 frequency scaling to matter (positions × frequency)
    const ids = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 320);
    for (const [family, arch, fields, tensors] of NEW_FAMILIES) {
      const dir = t(`fam-${family}`);
      engine(['create-tiny', '--family', family, '--out', dir, '--seed', '7']);
      const r = await exportGguf({ modelDir: dir, out: t(`fam/${family}.gguf`), dtype: 'f32' });
      expect(r.architecture).toBe(arch);
      const dump = ggufDump(r.gguf);
      expect(dump.fields).toMatchObject({ 'general.architecture': arch, ...fields });
      for (const [name, shape] of Object.entries(tensors)) {
        const x = dump.tensors.find((d) => d.name === name);
        if (shape === null) expect(x, `${family}: ${name}`).toBeUndefined();
        else expect(x, `${family}: ${name}`).toMatchObject({ shape, type: 'F32' });
      }
      if (!llama) continue;
      const worst = await llamaCppDiff(llama, r.gguf, dir, { ids });
      console.log(`llama.cpp vs engine (${family} as ${arch}, ${ids.length}×320): max |log-prob diff| ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(1e-3);
    }
  });

  // YaRN (rope_scaling type yarn, as Qwen2.5 ships for long contexts): the scaling type, factor and original context
  // length as keys; llama.cpp then computes the same blended frequencies and attention factor as the engine (which
  // follows transformers) — checked at 40 positions, well past the original length of 16, where the interpolated
  // frequencies matter; the same weights exported without the keys are far off, so the keys are what llama.cpp runs.
  it('YaRN RoPE (llama and qwen2) exports as rope.scaling keys and runs in llama.cpp as in the engine', async () => {
    const llama = await getLlamaCpp();
    const ids = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 320);
    for (const [family, arch] of [['llama', 'llama'], ['qwen2', 'qwen2']] as const) {
      const plain = t(`yarn-plain-${family}`);
      engine(['create-tiny', '--family', family, '--out', plain, '--seed', '5']);
      const dir = t(`yarn-${family}`);
      fs.cpSync(plain, dir, { recursive: true });
      const cfgFile = path.join(dir, 'config.json');
      const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
      cfg.rope_scaling = { type: 'yarn', factor: 4, original_max_position_embeddings: 16 };
      fs.writeFileSync(cfgFile, JSON.stringify(cfg));
      const r = await exportGguf({ modelDir: dir, out: t(`yarn/${family}.gguf`), dtype: 'f32' });
      expect(r.architecture).toBe(arch);
      expect(ggufDump(r.gguf).fields).toMatchObject({
        [`${arch}.rope.scaling.type`]: 'yarn', [`${arch}.rope.scaling.factor`]: 4, [`${arch}.rope.scaling.original_context_length`]: 16,
      });
      if (!llama) continue;
      const worst = await llamaCppDiff(llama, r.gguf, dir, { ids });
      const plainGguf = (await exportGguf({ modelDir: plain, out: t(`yarn/${family}-plain.gguf`), dtype: 'f32' })).gguf;
      const without = await llamaCppDiff(llama, plainGguf, dir, { ids });
      console.log(`llama.cpp vs engine (${family}, YaRN ×4 from 16): max |log-prob diff| ${worst.toExponential(2)} (exported without YaRN: ${without.toExponential(2)})`);
      expect(worst).toBeLessThan(1e-3);
      expect(without).toBeGreaterThan(2e-2);
    }
  });

  // Llama 3's and Qwen2's tokenizer.json pre-tokenize with a Split regex before a regex-free ByteLevel (Llama 3's
  // digits in runs of up to 3 and ignore_merges, Qwen2's digits one by one); the converter names them llama-bpe and
  // qwen2, and Llama 3's post-processor puts bos first (add_bos_token). Given merges for "333" and a whole-word token
  // "Ġapples" (no merges reach it: only ignore_merges takes it), llama.cpp must tokenize as HF's tokenizers do.
  const SPLITS: [family: string, regex: string, ignoreMerges: boolean, pre: string][] = [
    ['llama3', String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, true, 'llama-bpe'],
    ['qwen2', String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, false, 'qwen2'],
  ];
  it('Llama 3 / Qwen2 pre-tokenizers: tokenizer.ggml.pre llama-bpe / qwen2, and llama.cpp tokenizes as we do', async () => {
    const text = "I've 3333333 apples, you'RE sure?\n\n  12345 apples\tok";
    const seen: number[][] = [];
    for (const [family, regex, ignoreMerges, pre] of SPLITS) {
      const dir = t(`tok-${family}`);
      engine(['create-tiny', '--family', family, '--out', dir, '--seed', '7']);
      const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } & Record<string, unknown> } & Record<string, unknown>;
      tj.pre_tokenizer = {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
        ],
      };
      Object.assign(tj.model.vocab, { '33': 260, '333': 261, 'Ġapples': 262 });
      tj.model.merges = ['3 3', '33 3'];
      tj.model.ignore_merges = ignoreMerges;
      if (family === 'llama3')
        tj.post_processor = {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
        };
      fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
      const r = await exportGguf({ modelDir: dir, out: t(`tok/${family}.gguf`), dtype: 'f32' });
      const dump = ggufDump(r.gguf);
      expect(dump.fields).toMatchObject({ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': pre, 'tokenizer.ggml.add_bos_token': family === 'llama3' });
      const tok = await loadTokenizer(dir);
      const ours = tok.encode(text);
      tok.dispose();
      seen.push(ours);
      // Llama 3 merges the digit runs of 3 ("333"), Qwen2 sees single digits (no merge applies)
      if (family === 'llama3') expect(ours).toContain(261);
      else expect(ours.filter((x) => x === 260 || x === 261)).toEqual([]);
      const llama = await getLlamaCpp();
      if (!llama) continue;
      const model = await llama.loadModel({ modelPath: r.gguf });
      expect([...model.tokenize(text)], family).toEqual(ours);
      const worst = await llamaCppDiff(llama, r.gguf, dir, { ids: [1, ...ours], model });
      await model.dispose();
      console.log(`llama.cpp vs engine (${family}, pre ${pre}, ${ours.length + 1} tokens): max |log-prob diff| ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(1e-3);
    }
    // the two pre-tokenizers do split this text differently (digits, ignore_merges)
    expect(seen[0]).not.toEqual(seen[1]);
    expect(seen[0]).toContain(262);
    expect(seen[1]).not.toContain(262);
  });

  it('families llama.cpp cannot run fail with UNSUPPORTED, naming the family', async () => {
    engine(['create-tiny', '--family', 'chatglm', '--out', t('fam-chatglm')]);
    await expect(exportGguf({ modelDir: t('fam-chatglm'), out: t('fam/chatglm.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('ChatGLM-6B (v1)') });
    engine(['create-tiny', '--family', 'baichuan13b', '--out', t('fam-bc13')]);
    await expect(exportGguf({ modelDir: t('fam-bc13'), out: t('fam/bc13.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('Baichuan-13B') });
    expect(fs.readdirSync(t('fam')).filter((f) => f.includes('chatglm.') || f.includes('bc13'))).toEqual([]);
  });

  it('a LoRA adapter alone as llama.cpp\'s adapter GGUF: base GGUF + adapter GGUF give the engine\'s base+adapter', async () => {
    run(PY, [HF, 'make-adapter', '--model', t('base'), '--out', t('ad-qkv'), '--targets', 'q_proj,k_proj,v_proj,o_proj,gate_proj,down_proj', '--r', '4', '--alpha', '8']);
    const models = await import('../../src-main/core/models/manager');
    const r = await models.exportModel({ model: t('base'), adapter: t('ad-qkv'), adapterOnly: true, out: t('lora/ad.gguf'), dtype: 'f32' });
    expect(r).toMatchObject({ architecture: 'llama', tensors: 24, modelfile: null });
    const dump = ggufDump(r.gguf);
    expect(dump.fields).toMatchObject({ 'general.architecture': 'llama', 'general.type': 'adapter', 'adapter.type': 'lora', 'adapter.lora.alpha': 8 });
    expect(dump.tensors.find((x) => x.name === 'blk.0.attn_k.weight.lora_a')).toMatchObject({ shape: [64, 4] });
    expect(dump.tensors.find((x) => x.name === 'blk.0.attn_k.weight.lora_b')).toMatchObject({ shape: [4, 32] });
    // modules_to_save (a full lm_head) has no place in a LoRA GGUF
    await expect(models.exportModel({ model: t('base'), adapter: t('ad'), adapterOnly: true, out: t('lora/bad.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('lm_head') });
    expect(fs.existsSync(t('lora/bad.gguf'))).toBe(false);

    const llama = await getLlamaCpp();
    if (!llama) return;
    const base = await exportGguf({ modelDir: t('base'), out: t('lora/base.gguf'), dtype: 'f32' });
    const model = await llama.loadModel({ modelPath: base.gguf });
    const worst = await llamaCppDiff(llama, base.gguf, t('base'), { lora: r.gguf, adapter: t('ad-qkv'), model });
    const without = await llamaCppDiff(llama, base.gguf, t('base'), { adapter: t('ad-qkv'), model });
    await model.dispose();
    console.log(`llama.cpp base+LoRA GGUF vs engine base+adapter: max |log-prob diff| ${worst.toExponential(2)} (base alone: ${without.toExponential(2)})`);
    expect(worst).toBeLessThan(1e-3);
    expect(without).toBeGreaterThan(1e-2); // the adapter matters
  });

  it('LoRA adapter GGUFs on the Qwen2 (rows unpermuted) and Llama 3 (rope_freqs) bases give the engine\'s base+adapter', async () => {
    const llama = await getLlamaCpp();
    for (const family of ['qwen2', 'llama3']) {
      const dir = t(`lora-${family}`);
      engine(['create-tiny', '--family', family, '--out', dir, '--seed', '7']);
      run(PY, [HF, 'make-adapter', '--model', dir, '--out', `${dir}-ad`, '--targets', 'q_proj,k_proj,v_proj,o_proj,gate_proj,down_proj', '--r', '4', '--alpha', '8']);
      const models = await import('../../src-main/core/models/manager');
      const ad = await models.exportModel({ model: dir, adapter: `${dir}-ad`, adapterOnly: true, out: t(`lora/${family}-ad.gguf`), dtype: 'f32' });
      expect(ad).toMatchObject({ architecture: family === 'qwen2' ? 'qwen2' : 'llama', tensors: 24 });
      if (!llama) continue;
      const base = await exportGguf({ modelDir: dir, out: t(`lora/${family}-base.gguf`), dtype: 'f32' });
      const model = await llama.loadModel({ modelPath: base.gguf });
      const worst = await llamaCppDiff(llama, base.gguf, dir, { lora: ad.gguf, adapter: `${dir}-ad`, model });
      const without = await llamaCppDiff(llama, base.gguf, dir, { adapter: `${dir}-ad`, model });
      await model.dispose();
      console.log(`llama.cpp ${family} base+LoRA GGUF vs engine base+adapter: max |log-prob diff| ${worst.toExponential(2)} (base alone: ${without.toExponential(2)})`);
      expect(worst).toBeLessThan(1e-3);
      expect(without).toBeGreaterThan(1e-2); // the adapter matters
    }
  });

  it('a SentencePiece tokenizer.model (LLaMA-2, 32000 pieces): llama.cpp tokenizes as we do and gives our logits', async () => {
    const dir = t('llama-sp');
    fs.mkdirSync(dir);
    const cfg = JSON.parse(fs.readFileSync(t('base/config.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, vocab_size: 32000 }));
    const st = readSafetensors(t('base/model.safetensors'));
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5;
    for (const k of ['model.embed_tokens.weight', 'lm_head.weight']) st[k] = { shape: [32000, 64], data: Float32Array.from({ length: 32000 * 64 }, rnd) };
    writeSafetensors(path.join(dir, 'model.safetensors'), st);
    fs.writeFileSync(path.join(dir, 'tokenizer.model'), await llamaSpModel());
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: true, tokenizer_class: 'LlamaTokenizer' }));
    const r = await exportGguf({ modelDir: dir, out: t('sp/sp.gguf'), dtype: 'f32' });
    expect(r).toMatchObject({ architecture: 'llama', vocab: 32000, tokenizer: 'llama' });
    const tok = await loadTokenizer(dir);
    const text = 'Hello world! Ünïcödé 你好, tabs\tand  spaces 123';
    const ours = tok.encode(text);
    const llama = await getLlamaCpp();
    if (!llama) {
      const dump = ggufDump(r.gguf);
      expect(dump.fields).toMatchObject({ 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.bos_token_id': 1, 'tokenizer.ggml.add_bos_token': true });
      return;
    }
    const model = await llama.loadModel({ modelPath: r.gguf });
    expect([...model.tokenize(text)]).toEqual(ours);
    const worst = await llamaCppDiff(llama, r.gguf, dir, { ids: [1, ...ours], model });
    await model.dispose();
    console.log(`llama.cpp vs engine (SentencePiece llama, ${ours.length + 1}×32000): max |log-prob diff| ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-3);
  });
});

describe('model manager service (src-main/core/models/manager.ts)', () => {
  it('convert, merge and export report progress; an aborted merge leaves nothing; delete stays inside the model folder', async () => {
    const models = await import('../../src-main/core/models/manager');
    process.env.LLMS_TRAIN_NATIVE_DIR = NATIVE;
    const seen: string[] = [];
    const conv = await models.convert(t('bin'), { out: t('svc-conv'), onProgress: (p) => seen.push(`${p.done}/${p.total}`) });
    expect(conv.files).toEqual(['model.safetensors']);
    expect(seen.at(-1)).toBe('21/21');
    const ac = new AbortController();
    const p = models.merge({ model: t('base'), adapter: t('ad'), out: t('svc-aborted'), signal: ac.signal });
    ac.abort(); // SIGTERM to the worker at once (a tiny merge would otherwise finish first)
    await expect(p).rejects.toMatchObject({ code: 'ABORTED' });
    expect(fs.existsSync(t('svc-aborted'))).toBe(false);
    expect(fs.readdirSync(tmp).some((f) => f.startsWith('svc-aborted'))).toBe(false);
    await expect(models.merge({ model: t('base'), adapter: t('zhbad'), out: t('svc-bad') })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('vocabulary mismatch') });
    // export straight from a .bin base plus an adapter: merged, then written with the belle template's Modelfile
    const r = await models.exportModel({ model: t('bin'), adapter: t('ad'), out: t('svc-export/m.gguf'), template: 'belle' });
    expect(r).toMatchObject({ tensors: 21, vocab: 320 });
    expect(fs.readFileSync(t('svc-export/m.Modelfile'), 'utf8')).toContain('Human: \n{{ .Content }}\n\nAssistant: \n');
    expect(fs.readdirSync(t('svc-export')).sort()).toEqual(['m.Modelfile', 'm.gguf']);
    const info = await models.inspect(t('bin'));
    expect(info.supported).toBe(true);
    expect(() => models.remove(t('base'), { home: t('home') })).toThrow(/not a model folder inside/);
    fs.mkdirSync(t('home/models/x'), { recursive: true });
    fs.copyFileSync(t('base/config.json'), t('home/models/x/config.json'));
    expect(models.list(t('home')).map((m) => [m.name, m.kind])).toEqual([['x', 'model']]);
    models.remove(t('home/models/x'), { home: t('home') });
    expect(fs.existsSync(t('home/models/x'))).toBe(false);
  });
});
