// GGUF export of config variants the engine runs but the first exporter wrote wrongly (each checked against
// llama.cpp through node-llama-cpp when found; here the file is read back and compared with the layout llama.cpp
// expects, after convert_hf_to_gguf.py):
// - ChatGLM2 without multi-query attention: the fused QKV is per head [n_head, 3, hd] and must be reordered to
//   [Q | K | V] (weight and bias); it was written as is (llama.cpp's log-probs off by 4.2);
// - ChatGLM2 with kv_channels × heads ≠ hidden_size: llama.cpp cannot load it (UNSUPPORTED, was a file that fails
//   to load);
// - legacy Falcon-40B configs (model_type RefinedWeb, n_head_kv, no new_decoder_architecture): were exported with
//   the 7B multi-query layout (one kv head);
// - BLOOM with apply_residual_connection_post_layernorm: llama.cpp's bloom graph cannot run it (UNSUPPORTED);
// - the tied output head follows the family's tie_word_embeddings default (MiniCPM, BLOOM, Falcon tied): a stray
//   lm_head.weight of a tied model was written as output.weight; tied gpt_neox / ChatGLM2 use the embedding;
// - llama head_dim ≠ hidden/heads writes attention.key_length/value_length; attention_bias/mlp_bias keep biases
//   (q/k biases permuted like their rows);
// - Llama 3.x (rope_scaling rope_type llama3): the rope_freqs.weight tensor (head_dim/2 divisors, first, as
//   LlamaModel.generate_extra_tensors yields it), no scaling keys (was UNSUPPORTED); dynamic NTK writes nothing; YaRN
//   as rope.scaling.type/factor/original_context_length (was UNSUPPORTED), non-default betas etc. UNSUPPORTED;
// - Mistral (model_type mistral): arch llama as LlamaModel converts MistralForCausalLM (was UNSUPPORTED);
// - Qwen2 (model_type qwen2): arch qwen2, q/k/v weights and biases copied unpermuted (Qwen2Model; llama.cpp's qwen2
//   uses NeoX RoPE), no vocab_size / rope.dimension_count keys; head_dim × heads ≠ hidden UNSUPPORTED (was
//   UNSUPPORTED altogether);
// - byte-level BPE tokenizer.json with Llama 3's / Qwen2's Split regex: tokenizer.ggml.pre llama-bpe (smaug-bpe
//   without ignore_merges) / qwen2 (was "default"), add_bos_token from a TemplateProcessing post-processor (was
//   false).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { exportGguf, llama3RopeFactors, permuteRows } from '../../src-main/core/models/gguf';
import { writeSafetensors } from '../helpers/native';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-gguf-var-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Tensors = Record<string, { shape: number[]; data: Float32Array }>;
let seed = 7;
const rnd = (n: number) => Float32Array.from({ length: n }, () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5);
const T = (...shape: number[]) => ({ shape, data: rnd(shape.reduce((a, b) => a * b, 1)) });

function writeModel(name: string, config: Record<string, unknown>, tensors: Tensors): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const vocab: Record<string, number> = { '<pad>': 0, '<s>': 1, '</s>': 2, a: 3, b: 4 };
  fs.writeFileSync(
    path.join(dir, 'tokenizer.json'),
    JSON.stringify({ model: { type: 'BPE', vocab, merges: [] }, pre_tokenizer: { type: 'ByteLevel' }, added_tokens: [] }),
  );
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', pad_token: '<pad>' }));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return dir;
}

/** A GGUF v3 file read back: metadata (scalars and string/number arrays) and F32 tensors (shape in HF order). */
function readGguf(file: string): { kv: Record<string, unknown>; tensors: Record<string, { shape: number[]; data: Float32Array }> } {
  const b = fs.readFileSync(file);
  let p = 0;
  const u32 = () => ((p += 4), b.readUInt32LE(p - 4));
  const u64 = () => ((p += 8), Number(b.readBigUInt64LE(p - 8)));
  const str = () => {
    const n = u64();
    p += n;
    return b.toString('utf8', p - n, p);
  };
  const val = (t: number): unknown => {
    if (t === 4) return u32();
    if (t === 5) return (p += 4), b.readInt32LE(p - 4);
    if (t === 6) return (p += 4), b.readFloatLE(p - 4);
    if (t === 7) return (p += 1), b[p - 1] === 1;
    if (t === 8) return str();
    if (t === 10) return u64();
    if (t === 9) {
      const et = u32();
      const n = u64();
      return Array.from({ length: n }, () => val(et));
    }
    throw new Error(`type ${t}`);
  };
  expect(b.toString('ascii', 0, 4)).toBe('GGUF');
  p = 4;
  expect(u32()).toBe(3);
  const nt = u64();
  const nkv = u64();
  const kv: Record<string, unknown> = {};
  for (let i = 0; i < nkv; i++) {
    const k = str();
    kv[k] = val(u32());
  }
  const infos: { name: string; shape: number[]; type: number; off: number }[] = [];
  for (let i = 0; i < nt; i++) {
    const name = str();
    const nd = u32();
    const ne = Array.from({ length: nd }, () => u64());
    infos.push({ name, shape: ne.reverse(), type: u32(), off: u64() });
  }
  const base = Math.ceil(p / 32) * 32;
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const t of infos) {
    expect(t.type).toBe(0); // exported as f32 here
    expect(t.off % 32).toBe(0);
    const n = t.shape.reduce((a, c) => a * c, 1);
    tensors[t.name] = { shape: t.shape, data: new Float32Array(b.buffer.slice(b.byteOffset + base + t.off, b.byteOffset + base + t.off + 4 * n)) };
  }
  return { kv, tensors };
}

/** rows of a [rows, cols] matrix picked by `map` */
const rows = (w: Float32Array, cols: number, map: ArrayLike<number>) => {
  const out = new Float32Array(map.length * cols);
  for (let i = 0; i < map.length; i++) out.set(w.subarray(map[i]! * cols, (map[i]! + 1) * cols), i * cols);
  return out;
};
/** [n_head, 3, hd] → [Q | K | V] row order */
const perHead = (nh: number, hd: number) => {
  const m: number[] = [];
  for (let k = 0; k < 3; k++) for (let h = 0; h < nh; h++) for (let d = 0; d < hd; d++) m.push((h * 3 + k) * hd + d);
  return m;
};

const V = 8;
const H = 16;

function chatglm2(name: string, extra: Record<string, unknown>, qkvRows: number, denseCols = H, more: Tensors = {}): string {
  const t: Tensors = { 'transformer.embedding.word_embeddings.weight': T(V, H) };
  const p = 'transformer.encoder.layers.0.';
  Object.assign(t, {
    [`${p}input_layernorm.weight`]: T(H),
    [`${p}self_attention.query_key_value.weight`]: T(qkvRows, H),
    [`${p}self_attention.query_key_value.bias`]: T(qkvRows),
    [`${p}self_attention.dense.weight`]: T(H, denseCols),
    [`${p}post_attention_layernorm.weight`]: T(H),
    [`${p}mlp.dense_h_to_4h.weight`]: T(48, H),
    [`${p}mlp.dense_4h_to_h.weight`]: T(H, 24),
    'transformer.encoder.final_layernorm.weight': T(H),
    ...more,
  });
  const cfg = { model_type: 'chatglm', padded_vocab_size: V, num_layers: 1, hidden_size: H, num_attention_heads: 2, kv_channels: 8, ffn_hidden_size: 24, add_qkv_bias: true, seq_length: 64, ...extra };
  return writeModel(name, cfg, t);
}

describe('GGUF export of config variants', () => {
  it('ChatGLM2 without multi-query attention: the per-head fused QKV (weight and bias) becomes [Q | K | V]', async () => {
    const dir = chatglm2('glm-nomqa', { multi_query_attention: false }, 3 * H, H, { 'transformer.output_layer.weight': T(V, H) });
    const r = await exportGguf({ modelDir: dir, out: path.join(tmp, 'glm-nomqa.gguf'), dtype: 'f32' });
    const g = readGguf(r.gguf);
    expect(g.kv['chatglm.attention.head_count_kv']).toBe(2);
    expect(g.kv['chatglm.rope.dimension_count']).toBe(4);
    const st = readBack(dir);
    const w = st['transformer.encoder.layers.0.self_attention.query_key_value.weight']!;
    const bias = st['transformer.encoder.layers.0.self_attention.query_key_value.bias']!;
    expect(g.tensors['blk.0.attn_qkv.weight']!.data).toEqual(rows(w, H, perHead(2, 8)));
    expect(g.tensors['blk.0.attn_qkv.bias']!.data).toEqual(rows(bias, 1, perHead(2, 8)));
    expect(g.tensors['output.weight']!.data).toEqual(st['transformer.output_layer.weight']);
  });

  it('ChatGLM2 with multi-query attention keeps its [Q | K | V] rows; tied: the embedding is the output head', async () => {
    const dir = chatglm2('glm-mqa-tied', { multi_query_attention: true, multi_query_group_num: 1, tie_word_embeddings: true }, H + 2 * 8);
    const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'glm-mqa.gguf'), dtype: 'f32' })).gguf);
    const st = readBack(dir);
    expect(g.kv['chatglm.attention.head_count_kv']).toBe(1);
    expect(g.tensors['blk.0.attn_qkv.weight']!.data).toEqual(st['transformer.encoder.layers.0.self_attention.query_key_value.weight']);
    expect(g.tensors['output.weight']!.data).toEqual(st['transformer.embedding.word_embeddings.weight']);
  });

  it('ChatGLM2 whose kv_channels × heads ≠ hidden_size is UNSUPPORTED (llama.cpp does not load it)', async () => {
    const dir = chatglm2('glm-kv', { multi_query_attention: true, multi_query_group_num: 1, kv_channels: 16 }, 2 * 16 + 2 * 16, 32, { 'transformer.output_layer.weight': T(V, H) });
    await expect(exportGguf({ modelDir: dir, out: path.join(tmp, 'glm-kv.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('kv_channels 16') });
    expect(fs.existsSync(path.join(tmp, 'glm-kv.gguf'))).toBe(false);
  });

  it('legacy Falcon-40B config (RefinedWeb, n_head_kv): grouped QKV with n_head_kv kv heads', async () => {
    const nh = 4;
    const nkv = 2;
    const hd = 4;
    const p = 'transformer.h.0.';
    const dir = writeModel(
      'rw40',
      { model_type: 'RefinedWeb', n_embed: H, n_head: nh, n_head_kv: nkv, n_layer: 1, vocab_size: V, parallel_attn: true, bias: false, alibi: false },
      {
        'transformer.word_embeddings.weight': T(V, H),
        [`${p}ln_attn.weight`]: T(H),
        [`${p}ln_attn.bias`]: T(H),
        [`${p}ln_mlp.weight`]: T(H),
        [`${p}ln_mlp.bias`]: T(H),
        [`${p}self_attention.query_key_value.weight`]: T((nh + 2 * nkv) * hd, H),
        [`${p}self_attention.dense.weight`]: T(H, H),
        [`${p}mlp.dense_h_to_4h.weight`]: T(4 * H, H),
        [`${p}mlp.dense_4h_to_h.weight`]: T(H, 4 * H),
        'transformer.ln_f.weight': T(H),
        'transformer.ln_f.bias': T(H),
      },
    );
    const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'rw40.gguf'), dtype: 'f32' })).gguf);
    expect(g.kv['falcon.attention.head_count_kv']).toBe(nkv);
    expect(g.tensors['blk.0.attn_norm_2.weight']).toBeDefined();
    // [n_kv, n_head/n_kv + 2, hd] → [Q | K | V]
    const map: number[] = [];
    const slots = nh / nkv + 2;
    for (let gi = 0; gi < nkv; gi++) for (let q = 0; q < nh / nkv; q++) for (let d = 0; d < hd; d++) map.push((gi * slots + q) * hd + d);
    for (const k of [slots - 2, slots - 1]) for (let gi = 0; gi < nkv; gi++) for (let d = 0; d < hd; d++) map.push((gi * slots + k) * hd + d);
    expect(g.tensors['blk.0.attn_qkv.weight']!.data).toEqual(rows(readBack(dir)[`${p}self_attention.query_key_value.weight`]!, H, map));
    expect(g.tensors['output.weight']).toBeUndefined(); // tied by default: llama.cpp reuses token_embd
  });

  it('BLOOM with apply_residual_connection_post_layernorm is UNSUPPORTED', async () => {
    const dir = writeModel('bloom-postln', { model_type: 'bloom', hidden_size: H, n_head: 2, n_layer: 1, vocab_size: V, apply_residual_connection_post_layernorm: true }, { 'word_embeddings.weight': T(V, H) });
    await expect(exportGguf({ modelDir: dir, out: path.join(tmp, 'bloom.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('apply_residual_connection_post_layernorm') });
  });

  function llamaLike(name: string, cfg: Record<string, unknown>, hd: number, bias: boolean, head: boolean): string {
    const nh = 2;
    const nkv = 1;
    const p = 'model.layers.0.';
    const t: Tensors = {
      'model.embed_tokens.weight': T(V, H),
      [`${p}input_layernorm.weight`]: T(H),
      [`${p}self_attn.q_proj.weight`]: T(nh * hd, H),
      [`${p}self_attn.k_proj.weight`]: T(nkv * hd, H),
      [`${p}self_attn.v_proj.weight`]: T(nkv * hd, H),
      [`${p}self_attn.o_proj.weight`]: T(H, nh * hd),
      [`${p}post_attention_layernorm.weight`]: T(H),
      [`${p}mlp.gate_proj.weight`]: T(24, H),
      [`${p}mlp.up_proj.weight`]: T(24, H),
      [`${p}mlp.down_proj.weight`]: T(H, 24),
      'model.norm.weight': T(H),
    };
    if (bias) Object.assign(t, { [`${p}self_attn.q_proj.bias`]: T(nh * hd), [`${p}self_attn.k_proj.bias`]: T(nkv * hd), [`${p}self_attn.v_proj.bias`]: T(nkv * hd) });
    if (head) t['lm_head.weight'] = T(V, H);
    return writeModel(name, { hidden_size: H, num_attention_heads: nh, num_key_value_heads: nkv, num_hidden_layers: 1, intermediate_size: 24, vocab_size: V, ...cfg }, t);
  }

  it('MiniCPM without tie_word_embeddings is tied (its default): a stray lm_head.weight is not the output head', async () => {
    const dir = llamaLike('minicpm', { model_type: 'minicpm', scale_emb: 12, scale_depth: 1.4, dim_model_base: 4 }, 8, false, true);
    const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'minicpm.gguf'), dtype: 'f32' })).gguf);
    expect(g.tensors['output.weight']).toBeUndefined();
    // llama keeps its untied default
    const dir2 = llamaLike('llama-head', { model_type: 'llama' }, 8, false, true);
    const g2 = readGguf((await exportGguf({ modelDir: dir2, out: path.join(tmp, 'llama-head.gguf'), dtype: 'f32' })).gguf);
    expect(g2.tensors['output.weight']!.data).toEqual(readBack(dir2)['lm_head.weight']);
  });

  it('llama with head_dim ≠ hidden/heads writes key_length/value_length; attention biases are kept and permuted', async () => {
    const dir = llamaLike('llama-hd', { model_type: 'llama', head_dim: 16, attention_bias: true }, 16, true, false);
    const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'llama-hd.gguf'), dtype: 'f32' })).gguf);
    expect(g.kv).toMatchObject({ 'llama.attention.key_length': 16, 'llama.attention.value_length': 16, 'llama.rope.dimension_count': 16 });
    expect(g.tensors['blk.0.attn_q.weight']!.shape).toEqual([32, 16]);
    const st = readBack(dir);
    expect(g.tensors['blk.0.attn_q.bias']!.data).toEqual(rows(st['model.layers.0.self_attn.q_proj.bias']!, 1, permuteRows(32, 2)));
    expect(g.tensors['blk.0.attn_k.bias']!.data).toEqual(rows(st['model.layers.0.self_attn.k_proj.bias']!, 1, permuteRows(16, 1)));
    expect(g.tensors['blk.0.attn_v.bias']!.data).toEqual(st['model.layers.0.self_attn.v_proj.bias']);
    // the usual head size writes neither key
    const dir2 = llamaLike('llama-plain', { model_type: 'llama' }, 8, false, false);
    const g2 = readGguf((await exportGguf({ modelDir: dir2, out: path.join(tmp, 'llama-plain.gguf'), dtype: 'f32' })).gguf);
    expect(g2.kv['llama.attention.key_length']).toBeUndefined();
  });

  /** transformers' _compute_llama3_parameters in double, written as llama.cpp's divisor of each base frequency. */
  const llama3Divisors = (theta: number, dim: number, factor: number, low: number, high: number, orig: number) =>
    Array.from({ length: dim / 2 }, (_, i) => {
      const inv = theta ** (-(2 * i) / dim);
      const wl = (2 * Math.PI) / inv;
      if (wl < orig / high) return 1;
      if (wl > orig / low) return factor;
      const sm = (orig / wl - low) / (high - low);
      return inv / ((1 - sm) * (inv / factor) + sm * inv); // HF's smoothed inv_freq, as a divisor
    });

  it('Llama 3 rope_scaling llama3: a rope_freqs.weight tensor of head_dim/2 divisors first, no scaling keys; tied: no output', async () => {
    // original length 256 with head_dim 8 and base 5e5: wavelengths 6.3 (kept), 167 (blended), 4.4e3 and 1.2e5 (÷8)
    const rs = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 256 };
    const dir = llamaLike('llama3', { model_type: 'llama', rope_theta: 500000, rope_scaling: rs, tie_word_embeddings: true, max_position_embeddings: 2048 }, 8, false, false);
    const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'llama3.gguf'), dtype: 'f32' })).gguf);
    expect(g.kv['general.architecture']).toBe('llama');
    expect(g.kv['llama.rope.freq_base']).toBe(500000);
    expect(Object.keys(g.kv).filter((k) => k.includes('scaling'))).toEqual([]);
    expect(Object.keys(g.tensors)[0]).toBe('rope_freqs.weight');
    const want = llama3Divisors(500000, 8, 8, 1, 4, 256);
    expect(want[0]).toBe(1);
    expect(want[1]).toBeGreaterThan(1);
    expect(want[1]).toBeLessThan(8);
    expect(want.slice(2)).toEqual([8, 8]);
    const got = g.tensors['rope_freqs.weight']!;
    expect(got.shape).toEqual([4]);
    got.data.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 5));
    expect(g.tensors['output.weight']).toBeUndefined();
    expect(g.tensors['blk.0.attn_q.weight']!.data).toEqual(rows(readBack(dir)['model.layers.0.self_attn.q_proj.weight']!, H, permuteRows(16, 2)));
    // transformers 5's rope_parameters layout gives the same file; Llama 3.1's own numbers (8192, head_dim 128)
    const dir5 = llamaLike('llama3-tf5', { model_type: 'llama', rope_parameters: { ...rs, rope_theta: 500000 }, tie_word_embeddings: true }, 8, false, false);
    const g5 = readGguf((await exportGguf({ modelDir: dir5, out: path.join(tmp, 'llama3-tf5.gguf'), dtype: 'f32' })).gguf);
    expect(g5.tensors['rope_freqs.weight']!.data).toEqual(got.data);
    const l31 = llama3RopeFactors({ rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }, 500000, 128);
    const w31 = llama3Divisors(500000, 128, 8, 1, 4, 8192);
    expect(l31.length).toBe(64);
    l31.forEach((x, i) => expect(x).toBeCloseTo(w31[i]!, 4));
    expect(w31.filter((x) => x !== 1 && x !== 8).length).toBeGreaterThan(0);
  });

  it('rope_scaling dynamic writes nothing (as the converter: the default RoPE within the context)', async () => {
    const dir = llamaLike('llama-dyn', { model_type: 'llama', rope_scaling: { type: 'dynamic', factor: 2 } }, 8, false, false);
    const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'llama-dyn.gguf'), dtype: 'f32' })).gguf);
    expect(Object.keys(g.kv).filter((k) => k.includes('scaling'))).toEqual([]);
    expect(g.tensors['rope_freqs.weight']).toBeUndefined();
  });

  it('rope_scaling yarn: type, factor and original context length as keys; what llama.cpp cannot express is UNSUPPORTED', async () => {
    const yarn = async (name: string, cfg: Record<string, unknown>) => {
      const dir = llamaLike(name, { model_type: 'llama', ...cfg }, 8, false, false);
      return readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, `${name}.gguf`), dtype: 'f32' })).gguf);
    };
    const g = await yarn('llama-yarn', { rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32 }, max_position_embeddings: 128 });
    expect(Object.fromEntries(Object.entries(g.kv).filter(([k]) => k.includes('scaling')))).toEqual({
      'llama.rope.scaling.type': 'yarn', 'llama.rope.scaling.factor': 4, 'llama.rope.scaling.original_context_length': 32,
    });
    expect(g.tensors['rope_freqs.weight']).toBeUndefined();
    // transformers 4.45's layout: no original length in rope_scaling, max_position_embeddings is it (as the engine
    // reads it); transformers 5's rope_parameters; the defaults written out explicitly change nothing
    const old = await yarn('llama-yarn-old', { rope_scaling: { type: 'yarn', factor: 2 }, max_position_embeddings: 64 });
    expect(old.kv['llama.rope.scaling.original_context_length']).toBe(64);
    expect(old.kv['llama.rope.scaling.factor']).toBe(2);
    const tf5 = await yarn('llama-yarn-tf5', { rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, factor: 4, original_max_position_embeddings: 32, beta_fast: 32, beta_slow: 1, attention_factor: 0.1 * Math.log(4) + 1 } });
    expect(tf5.kv['llama.rope.scaling.type']).toBe('yarn');
    expect(tf5.kv['llama.rope.freq_base']).toBe(1e6);
    for (const [extra, says] of [
      [{ beta_fast: 16 }, 'beta_fast 16'], [{ beta_slow: 2 }, 'beta_slow 2'], [{ attention_factor: 1 }, 'attention_factor 1'],
      [{ mscale: 0.707, mscale_all_dim: 0.707 }, 'mscale 0.707'], [{ truncate: false }, 'truncate false'],
    ] as const) {
      const dir = llamaLike('llama-yarn-x', { model_type: 'llama', rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32, ...extra } }, 8, false, false);
      await expect(exportGguf({ modelDir: dir, out: path.join(tmp, 'llama-yarn-x.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining(says) });
    }
    const bad = llamaLike('llama-yarn-bad', { model_type: 'llama', rope_scaling: { rope_type: 'yarn', factor: 0.5, original_max_position_embeddings: 32 } }, 8, false, false);
    await expect(exportGguf({ modelDir: bad, out: path.join(tmp, 'llama-yarn-bad.gguf') })).rejects.toThrow(/factor >= 1/);
    expect(fs.existsSync(path.join(tmp, 'llama-yarn-bad.gguf'))).toBe(false);
  });

  it('Mistral exports as llama (LlamaModel converts MistralForCausalLM): Q/K permuted, head_dim as key_length', async () => {
    const dir = llamaLike('mistral', { model_type: 'mistral', head_dim: 16, sliding_window: 4096, rope_theta: 1e6 }, 16, false, true);
    const r = await exportGguf({ modelDir: dir, out: path.join(tmp, 'mistral.gguf'), dtype: 'f32' });
    expect(r.architecture).toBe('llama');
    const g = readGguf(r.gguf);
    expect(g.kv).toMatchObject({ 'general.architecture': 'llama', 'llama.attention.key_length': 16, 'llama.attention.value_length': 16, 'llama.rope.dimension_count': 16, 'llama.rope.freq_base': 1e6, 'llama.vocab_size': V });
    const st = readBack(dir);
    expect(g.tensors['blk.0.attn_q.weight']!.data).toEqual(rows(st['model.layers.0.self_attn.q_proj.weight']!, H, permuteRows(32, 2)));
    expect(g.tensors['blk.0.attn_k.weight']!.data).toEqual(rows(st['model.layers.0.self_attn.k_proj.weight']!, H, permuteRows(16, 1)));
    expect(g.tensors['output.weight']!.data).toEqual(st['lm_head.weight']);
  });

  it('Qwen2 exports as qwen2: q/k/v weights and biases unpermuted, tied without output; head_dim × heads ≠ hidden is UNSUPPORTED', async () => {
    const dir = llamaLike('qwen2', { model_type: 'qwen2', tie_word_embeddings: true, rope_theta: 1e6, rms_norm_eps: 1e-6 }, 8, true, false);
    const r = await exportGguf({ modelDir: dir, out: path.join(tmp, 'qwen2.gguf'), dtype: 'f32' });
    expect(r.architecture).toBe('qwen2');
    const g = readGguf(r.gguf);
    expect(g.kv).toMatchObject({
      'general.architecture': 'qwen2',
      'qwen2.context_length': 2048,
      'qwen2.embedding_length': H,
      'qwen2.block_count': 1,
      'qwen2.feed_forward_length': 24,
      'qwen2.attention.head_count': 2,
      'qwen2.attention.head_count_kv': 1,
      'qwen2.rope.freq_base': 1e6,
      'qwen2.attention.layer_norm_rms_epsilon': Math.fround(1e-6),
    });
    expect(Object.keys(g.kv).filter((k) => k.startsWith('llama.') || k === 'qwen2.vocab_size' || k === 'qwen2.rope.dimension_count' || k.includes('key_length'))).toEqual([]);
    const st = readBack(dir);
    for (const m of ['q', 'k', 'v']) {
      expect(g.tensors[`blk.0.attn_${m}.weight`]!.data, m).toEqual(st[`model.layers.0.self_attn.${m}_proj.weight`]);
      expect(g.tensors[`blk.0.attn_${m}.bias`]!.data, m).toEqual(st[`model.layers.0.self_attn.${m}_proj.bias`]);
    }
    expect(Object.keys(g.tensors).sort()).toEqual(
      ['token_embd', 'blk.0.attn_norm', 'blk.0.attn_q', 'blk.0.attn_q.bias', 'blk.0.attn_k', 'blk.0.attn_k.bias', 'blk.0.attn_v', 'blk.0.attn_v.bias', 'blk.0.attn_output', 'blk.0.ffn_norm', 'blk.0.ffn_gate', 'blk.0.ffn_up', 'blk.0.ffn_down', 'output_norm']
        .map((n) => (n.endsWith('.bias') ? n : `${n}.weight`))
        .sort(),
    );
    // untied: lm_head is the output head
    const dir2 = llamaLike('qwen2-head', { model_type: 'qwen2', tie_word_embeddings: false }, 8, true, true);
    expect(readGguf((await exportGguf({ modelDir: dir2, out: path.join(tmp, 'qwen2-head.gguf'), dtype: 'f32' })).gguf).tensors['output.weight']!.data).toEqual(readBack(dir2)['lm_head.weight']);
    // llama.cpp's qwen2 sizes Q and o_proj by hidden_size; it has no rope_freqs for llama3 scaling
    const dir3 = llamaLike('qwen2-hd', { model_type: 'qwen2', head_dim: 16 }, 16, true, false);
    await expect(exportGguf({ modelDir: dir3, out: path.join(tmp, 'qwen2-hd.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('head_dim 16') });
    const dir4 = llamaLike('qwen2-l3', { model_type: 'qwen2', rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 } }, 8, true, false);
    await expect(exportGguf({ modelDir: dir4, out: path.join(tmp, 'qwen2-l3.gguf') })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('llama3') });
  });

  const LLAMA3_RE = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
  const QWEN2_RE = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
  /** the folder's tokenizer.json with a Split(regex) + ByteLevel(use_regex false) pre-tokenizer, as Llama 3 / Qwen2 */
  function splitTokenizer(dir: string, regex: string, ignoreMerges: boolean, bosFirst: boolean) {
    const f = path.join(dir, 'tokenizer.json');
    const tj = JSON.parse(fs.readFileSync(f, 'utf8')) as { model: Record<string, unknown> } & Record<string, unknown>;
    tj.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    };
    tj.model.ignore_merges = ignoreMerges;
    if (bosFirst)
      tj.post_processor = {
        type: 'Sequence',
        processors: [
          { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
          { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: {} },
        ],
      };
    fs.writeFileSync(f, JSON.stringify(tj));
  }

  it("byte-level BPE pre-tokenizers: Llama 3's regex is llama-bpe (smaug-bpe without ignore_merges), Qwen2's qwen2; a bos-first post-processor sets add_bos_token", async () => {
    const cases: [name: string, regex: string, ignoreMerges: boolean, bosFirst: boolean, pre: string, addBos: boolean][] = [
      ['tok-llama3', LLAMA3_RE, true, true, 'llama-bpe', true],
      ['tok-smaug', LLAMA3_RE, false, false, 'smaug-bpe', false],
      ['tok-qwen2', QWEN2_RE, false, false, 'qwen2', false],
      ['tok-other', String.raw`\p{N}+|\s+`, false, false, 'default', false],
    ];
    for (const [name, regex, im, bosFirst, pre, addBos] of cases) {
      const dir = llamaLike(name, { model_type: name === 'tok-qwen2' ? 'qwen2' : 'llama' }, 8, name === 'tok-qwen2', false);
      splitTokenizer(dir, regex, im, bosFirst);
      const g = readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, `${name}.gguf`), dtype: 'f32' })).gguf);
      expect(g.kv, name).toMatchObject({ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': pre, 'tokenizer.ggml.add_bos_token': addBos, 'tokenizer.ggml.bos_token_id': 1 });
    }
    // the plain GPT-2 ByteLevel stays gpt-2; tokenizer_config's add_bos_token wins over the post-processor
    const dir = llamaLike('tok-gpt2', { model_type: 'llama' }, 8, false, false);
    expect(readGguf((await exportGguf({ modelDir: dir, out: path.join(tmp, 'tok-gpt2.gguf'), dtype: 'f32' })).gguf).kv['tokenizer.ggml.pre']).toBe('gpt-2');
    const dir2 = llamaLike('tok-llama3-nobos', { model_type: 'llama' }, 8, false, false);
    splitTokenizer(dir2, LLAMA3_RE, true, true);
    fs.writeFileSync(path.join(dir2, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', add_bos_token: false }));
    expect(readGguf((await exportGguf({ modelDir: dir2, out: path.join(tmp, 'tok-nobos.gguf'), dtype: 'f32' })).gguf).kv['tokenizer.ggml.add_bos_token']).toBe(false);
  });
});

/** The F32 tensors of a folder's model.safetensors. */
function readBack(dir: string): Record<string, Float32Array> {
  const b = fs.readFileSync(path.join(dir, 'model.safetensors'));
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.toString('utf8', 8, 8 + n)) as Record<string, { data_offsets: [number, number] }>;
  const out: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(h)) out[k] = new Float32Array(b.buffer.slice(b.byteOffset + 8 + n + v.data_offsets[0], b.byteOffset + 8 + n + v.data_offsets[1]));
  return out;
}
