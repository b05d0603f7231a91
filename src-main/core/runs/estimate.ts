// estimate.ts — the pre-flight estimate of a run's memory (and, on the CPU, step time), from the model's inspection
// (no weights loaded) and the RunSpec. It mirrors what the engine allocates: weights, trainable parameters with
// their gradients and AdamW moments, the activations each block keeps for the backward (all blocks, or only their
// inputs plus one block under gradient checkpointing), the backward's temporaries, the logits chunk, and the process
// itself. Calibrated against measured peak RSS (VmHWM) on the CPU, and against the CUDA backend's allocator peak
// (under cuemu) for GPU runs, where "process" is the GPU's CUDA context instead.
import fs from 'node:fs';
import path from 'node:path';

import type { ModelInspection } from '../../../native/addon/index.js';
import type { RunSpec } from './runspec.js';

export interface Estimate {
  bytes: {
    weights: number;
    trainable: number;
    optimizer: number;
    activations: number;
    temporaries: number;
    logits: number;
    process: number;
    total: number;
  };
  trainableParams: number;
  /** tokens per micro-batch at the longest sequence the data can produce */
  tokens: number;
  /** a rough step time on this CPU (s), from the FLOPs and a conservative throughput; null for a GPU run */
  stepSeconds: number | null;
  /** what `bytes` is of: this machine's memory (one CPU worker's) or one GPU's (one GPU worker's: `process` is then the
   *  CUDA context, an assumption, not a measurement) */
  device: 'cpu' | 'cuda';
}

const F = 4; // bytes per float (fp32)
const PROCESS_BASELINE = 9.5 * 2 ** 20; // the engine process with its thread pool and scratch buffers
// A GPU run: what the GPU holds beside the engine's allocations — the CUDA context with the kernel image, cuBLAS's
// workspace (typically 300–600 MB on current GPUs and drivers). The rest of the estimate is the engine's
// allocations, which the emulated CUDA backend measures exactly (tests/integration/cuda-emulated.test.ts).
const GPU_CONTEXT = 512 * 2 ** 20;
/** The engine's gradient bucket for several workers (job distributed.bucket_mb, 25 MB, which the RunSpec leaves at its default), in floats. */
const BUCKET_FLOATS = (25 * 2 ** 20) / F;

/** A Python regex as JS, or null where JS cannot read it (named groups (?P<..>), inline flags, ...). */
function jsRegex(src: string): RegExp | null {
  try {
    return new RegExp(src);
  } catch {
    return null;
  }
}

/** The module path of block linear `name` in layer `l` (HF's names for the family), for PEFT's path-based rules. */
function modulePath(info: ModelInspection, name: string, l: number): string {
  const mlp = /gate_proj|up_proj|down_proj|dense_h_to_4h|dense_4h_to_h/.test(name);
  const t = info.model_type;
  const block =
    t === 'gpt_neox' ? `gpt_neox.layers.${l}.${mlp ? 'mlp' : 'attention'}`
    : t === 'bloom' || t === 'falcon' ? `transformer.h.${l}.${mlp ? 'mlp' : 'self_attention'}`
    : t === 'chatglm' ? (/ChatGLM2/.test(info.family ?? '') ? `transformer.encoder.layers.${l}.${mlp ? 'mlp' : 'self_attention'}` : `transformer.layers.${l}.${mlp ? 'mlp' : 'attention'}`)
    : `model.layers.${l}.${mlp ? 'mlp' : 'self_attn'}`;
  return `${block}.${name}`;
}

/** PEFT's list rule: exact name or ".name" suffix of the module path. */
const listed = (names: string[], p: string) => names.some((t) => p === t || p.endsWith(`.${t}`));
/** PEFT's string rule: re.fullmatch against the module path (a regex JS cannot read counts as matching: the estimate errs high). */
const fullmatch = (re: string, p: string) => {
  const r = jsRegex(`^(?:${re})$`);
  return r ? r.test(p) : true;
};

/**
 * The LoRA rank of block linear `name` in layer `l`, or 0 when it gets none: PEFT's target rules (a list, "all-linear",
 * or a regex; null = the family's default), exclude_modules, layers_to_transform, and rank_pattern (first key
 * matching (.*\.)?(key)$ wins).
 */
function loraRank(info: ModelInspection, lora: RunSpec['lora'], name: string, l: number): number {
  const p = modulePath(info, name, l);
  const ex = lora.exclude_modules;
  if (ex && (typeof ex === 'string' ? fullmatch(ex, p) : listed(ex, p))) return 0;
  const tm = lora.target_modules ?? (info.default_lora_targets ?? '').split(',').filter(Boolean);
  if (typeof tm === 'string') {
    if (tm.toLowerCase() !== 'all-linear' && !fullmatch(tm, p)) return 0;
  } else {
    if (!(tm.length === 1 && tm[0]!.toLowerCase() === 'all-linear') && !listed(tm, p)) return 0;
    const lt = lora.layers_to_transform;
    if (lt !== undefined && lt !== null && !(Array.isArray(lt) ? lt : [lt]).includes(l)) return 0;
  }
  for (const [key, r] of Object.entries(lora.rank_pattern ?? {})) if (jsRegex(`^(.*\\.)?(${key})$`)?.test(p)) return r;
  return lora.r;
}

/** The LoRA rank a whole-model module (the embedding, the LM head) gets from target_modules, or 0 (as PEFT matches it:
 *  a listed name equal to the path or a suffix after a dot, a string as a full-match regex; never by all-linear or
 *  layers_to_transform, and not when modules_to_save trains it whole). */
function moduleRank(info: ModelInspection, lora: RunSpec['lora'], p: string): number {
  const tm = lora.target_modules ?? (info.default_lora_targets ?? '').split(',').filter(Boolean);
  const ex = lora.exclude_modules;
  if (ex && (typeof ex === 'string' ? fullmatch(ex, p) : listed(ex, p))) return 0;
  if ((lora.modules_to_save ?? []).some((m) => jsRegex(`^(.*\\.)?(?:${m})($|\\..*)`)?.test(p))) return 0;
  if (typeof tm === 'string' ? tm.toLowerCase() === 'all-linear' || !fullmatch(tm, p) : !listed(tm, p)) return 0;
  if (typeof tm !== 'string' && lora.layers_to_transform !== undefined && lora.layers_to_transform !== null) return 0;
  for (const [key, r] of Object.entries(lora.rank_pattern ?? {})) if (jsRegex(`^(.*\\.)?(${key})$`)?.test(p)) return r;
  return lora.r;
}

/** config.json of the inspected folder (the bias flags the inspection does not carry), or {} when unreadable. */
function folderConfig(info: ModelInspection): Record<string, unknown> {
  try {
    const v: unknown = info.path ? JSON.parse(fs.readFileSync(path.join(info.path, 'config.json'), 'utf8')) : null;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/**
 * The bias length of each block linear that has one, as the engine loads the family (family.cpp): Qwen2 on q/k/v;
 * LLaMA with config.json's attention_bias on q/k/v/o and mlp_bias on the MLP; GPT-NeoX, BLOOM and ChatGLM-6B on every
 * linear; Falcon with `bias`; ChatGLM2 with add_qkv_bias / add_bias_linear; Mistral, MiniCPM and Baichuan on none.
 * `norms`: the LayerNorm biases (per block, and once more for the final norm) that LoRA's bias "all" trains too.
 */
function biases(info: ModelInspection, mods: [string, number, number][]): { linear: Map<string, number>; normsPerBlock: number; normsOnce: number } {
  const cfg = folderConfig(info);
  const on = (k: string) => cfg[k] === true;
  const t = info.model_type;
  const glm2 = t === 'chatglm' && /ChatGLM2/.test(info.family ?? '');
  const has = (name: string): boolean => {
    if (t === 'qwen2') return ['q_proj', 'k_proj', 'v_proj'].includes(name);
    if (t === 'llama') return /^[qkvo]_proj$/.test(name) ? on('attention_bias') : /^(gate|up|down)_proj$/.test(name) && on('mlp_bias');
    if (t === 'gpt_neox' || t === 'bloom' || (t === 'chatglm' && !glm2)) return true;
    if (t === 'falcon' || t === 'RefinedWeb' || t === 'RefinedWebModel') return on('bias');
    if (glm2) return name === 'query_key_value' ? on('add_qkv_bias') : on('add_bias_linear');
    return false;
  };
  const linear = new Map<string, number>();
  for (const [name, , out] of mods) if (has(name)) linear.set(name, out);
  const H = info.hidden ?? 0;
  const falcon = t === 'falcon' || t === 'RefinedWeb' || t === 'RefinedWebModel';
  const layerNorm = t === 'gpt_neox' || t === 'bloom' || falcon || (t === 'chatglm' && !glm2);
  // Falcon-7B's parallel block has one LayerNorm (falcon-40b's new decoder architecture two: ln_attn, ln_mlp)
  const one = blockShape(info, cfg).oneNorm;
  return { linear, normsPerBlock: layerNorm ? (one ? H : 2 * H) : 0, normsOnce: layerNorm ? (t === 'bloom' ? 2 * H : H) : 0 };
}

/**
 * How the engine builds a block of the family (family.cpp): a gated MLP (SwiGLU: gate, up and their product kept, I
 * each) or a GELU one (its pre-activation and activation); a parallel residual (GPT-NeoX's use_parallel_residual,
 * Falcon's parallel_attn: no x_mid); one norm feeding both branches (falcon-7b, or the new decoder architecture with
 * num_ln_in_parallel_attn 1); the q/k/v as one fused GEMM (whose [N, qd + 2·kvd] output and gradient are temporaries).
 */
function blockShape(info: ModelInspection, cfg: Record<string, unknown>): { gated: boolean; parallel: boolean; oneNorm: boolean } {
  const t = info.model_type;
  const falcon = t === 'falcon' || t === 'RefinedWeb' || t === 'RefinedWebModel';
  const glm1 = t === 'chatglm' && !/ChatGLM2/.test(info.family ?? '');
  const gated = !(t === 'gpt_neox' || t === 'bloom' || falcon || glm1);
  const parallel = (t === 'gpt_neox' && cfg.use_parallel_residual !== false) || (falcon && cfg.parallel_attn !== false);
  // legacy RW configs: the new decoder architecture ⇔ n_head_kv present
  const newArch = t === 'falcon' ? cfg.new_decoder_architecture === true : falcon && cfg.n_head_kv !== undefined && cfg.n_head_kv !== null;
  const nln = cfg.num_ln_in_parallel_attn;
  const oneNorm = falcon && parallel && (!newArch || (typeof nln === 'number' && nln !== 2));
  return { gated, parallel, oneNorm };
}

export function estimateRun(info: ModelInspection, spec: RunSpec, threads: number): Estimate {
  const H = info.hidden ?? 0;
  const I = info.intermediate ?? 0;
  const L = info.layers ?? 0;
  const V = info.vocab ?? 0;
  const nh = info.heads ?? 1;
  // the attention widths: heads · head_dim (config.json's head_dim when it gives one, as Mistral-Nemo and Qwen3 do:
  // then q_proj has heads · head_dim rows and o_proj as many columns, not hidden_size), kv_heads · head_dim
  const hd = info.head_dim ?? H / nh;
  const qd = nh * hd;
  const kvd = (info.kv_heads ?? nh) * hd;
  const P = info.parameters ?? 0;
  const neox = info.model_type === 'gpt_neox';
  const T = spec.data.max_source_length + spec.data.max_target_length;
  const N = spec.training.micro_batch_size * T;

  // linear modules of a block: [name, in, out]
  const targets = new Set(info.lora_targets ?? []);
  const fusedQkv = neox || targets.has('query_key_value');
  const mods: [string, number, number][] = fusedQkv
    ? // GPT-NeoX, BLOOM, Falcon, ChatGLM: one fused qkv (grouped/multi-query KV where the family has it)
      [['query_key_value', H, qd + 2 * kvd], ['dense', qd, H], ['dense_h_to_4h', H, info.model_type === 'chatglm' && /ChatGLM2/.test(info.family ?? '') ? 2 * I : I], ['dense_4h_to_h', I, H]]
    : info.model_type === 'baichuan'
      ? [['W_pack', H, 3 * qd], ['o_proj', qd, H], ['gate_proj', H, I], ['up_proj', H, I], ['down_proj', I, H]]
      : [['q_proj', H, qd], ['k_proj', H, kvd], ['v_proj', H, kvd], ['o_proj', qd, H], ['gate_proj', H, I], ['up_proj', H, I], ['down_proj', I, H]];
  let trainableParams = P;
  // floats the LoRA pairs keep per token for the backward: summed over the blocks, and the most of one block
  let loraSum = 0;
  let loraMax = 0;
  if (spec.method === 'lora') {
    trainableParams = 0;
    // LoRA's bias "all" trains every bias of the model, "lora_only" those of the linears that get LoRA (as PEFT)
    const bias = spec.lora.bias ?? 'none';
    const b = bias === 'none' ? null : biases(info, mods);
    if (b && bias === 'all') trainableParams += L * (b.normsPerBlock + [...b.linear.values()].reduce((a, x) => a + x, 0)) + b.normsOnce;
    for (let l = 0; l < L; l++) {
      let block = 0;
      for (const [name, inn, out] of mods) {
        const r = loraRank(info, spec.lora, name, l);
        if (!r) continue;
        trainableParams += r * (inn + out);
        if (b && bias === 'lora_only') trainableParams += b.linear.get(name) ?? 0;
        block += r + (spec.lora.dropout > 0 ? inn : 0);
        // DoRA: the magnitude (one per output row) and the [N, out] product its gradient reads
        if (spec.lora.use_dora) {
          trainableParams += out;
          block += out;
        }
      }
      loraSum += block;
      loraMax = Math.max(loraMax, block);
    }
    for (const m of spec.lora.modules_to_save ?? []) if (/embed|lm_head|embed_out/.test(m)) trainableParams += V * H;
    // LoRA on the input embedding (lora_embedding_A [r, V], B [H, r]) and on the LM head (A [r, H], B [V, r])
    for (const module of [info.embed_module, info.lm_head_module]) if (module) trainableParams += moduleRank(info, spec.lora, module) * (V + H);
  }
  // floats each block keeps per token for its backward (LoRA's apart): the block input, the norm outputs (two, or one
  // where a parallel block has one norm) and the residual between the halves of a sequential block (H each), q and the
  // attention output (heads · head_dim each), k and v (kv_heads · head_dim each), the MLP's three (gated: gate, up,
  // their product) or two (GELU: pre-activation, activation) of I each, the softmax statistics (one per head)
  const shape = blockShape(info, folderConfig(info));
  const perToken = (2 + (shape.oneNorm ? 0 : 1) + (shape.parallel ? 0 : 1)) * H + 2 * qd + 2 * kvd + (shape.gated ? 3 : 2) * I + nh;
  // checkpointing keeps each block's input but the last's (its backward reads the set its forward left), on the GPU
  // unless offload_checkpoints moves them to host memory
  const kept = spec.training.offload_checkpoints && spec.devices.kind === 'cuda' ? 0 : Math.max(L - 1, 0) * N * H;
  const activations = (spec.training.gradient_checkpointing ? kept + N * (perToken + loraMax) : L * N * perToken + N * loraSum) * F;
  // the backward: dx, two norm-gradient buffers, the attention gradients, the head's
  // hidden state and its gradient, a 16-bit copy of a GEMM input; the MLP gradients reuse its activations' buffers
  // (mixed precision: more 16-bit copies, and, for head sizes without tensor-core attention, rounded q, k, v and dout)
  const lowpTemps = spec.method === 'lora' && spec.training.precision !== 'fp32' ? N * (4 * H + I / 2) * F : 0;
  // (dx and the two norm-gradient buffers, H each — four in a parallel block, whose branches' gradients meet at the
  // end; d(attention output) and dq, heads · head_dim each; dk and dv; a fused q/k/v's gradient, qd + 2·kvd; the
  // head's hidden state and its gradient, H each)
  const temporaries = N * ((shape.parallel ? 7 : 5) * H + 2 * qd + 2 * kvd + (fusedQkv || info.model_type === 'baichuan' ? qd + 2 * kvd : 0) + I / 2) * F + lowpTemps;
  let chunk = Math.max(1, Math.min(N, Math.floor(2 ** 23 / Math.max(V, 1))));
  if (chunk >= 128 && chunk < N) chunk -= chunk % 128; // the engine's logits chunk (model.cpp), its gradient in place
  const logitsChunk = chunk * V;
  // QLoRA: the block linears are bitsandbytes 4-bit — 0.5 byte per weight plus per 64-weight block one scale
  // (1 byte when double-quantized, + 4 bytes per 256 blocks); embeddings, norms and the head stay fp32
  const linearParams = mods.reduce((a, [, inn, out]) => a + L * inn * out, 0);
  // quantized on load (RunSpec), or a folder saved 4-bit (the inspection says so)
  const stored4bit = info.quantization !== undefined && info.quantization !== 'none';
  const q4 = spec.model.quantization !== 'none' || stored4bit ? Math.min(linearParams, P) : 0;
  // mixed precision (training.precision bf16/fp16, LoRA): the frozen block linears (unless 4-bit), the frozen
  // embedding table and an untied frozen head are kept at 2 bytes per weight (Model::set_precision); norms and LoRA
  // stay fp32, and so does a table trained through modules_to_save (a tied one untied for it: both copies)
  const lowp = spec.method === 'lora' && spec.training.precision !== 'fp32';
  const headListed = (spec.lora.modules_to_save ?? []).some((m) => /lm_head|embed_out|output_layer/.test(m));
  const embedListed = (spec.lora.modules_to_save ?? []).some((m) => /embed_tokens|embed_in|word_embeddings|wte|embedding/.test(m));
  const embedHalf = lowp && !embedListed && !(info.tie_embeddings && headListed) ? V * H : 0;
  const headHalf = lowp && !info.tie_embeddings && !headListed ? V * H : 0;
  const half16 = lowp ? (q4 ? 0 : Math.min(linearParams, P)) + embedHalf + headHalf : 0;
  const weights = (P - q4 - half16) * F + q4 * (0.5 + 1 / 64 + 4 / (64 * 256)) + half16 * 2;
  const trainable = spec.method === 'full' ? 0 : trainableParams * F; // full: the weights are the parameters
  // gradient, exp_avg, exp_avg_sq; a GPU run with offload_optimizer keeps only the gradient on the GPU; ZeRO-1 (a full
  // fine-tune on several workers) leaves each worker the moments of its 1/N of the parameters, ZeRO-2 the gradients too
  const workers = spec.devices.kind === 'cuda' ? Math.max(1, spec.devices.ids.length) : spec.distributed.nproc_per_node;
  const zero1 = spec.distributed.zero_stage >= 1 && spec.method === 'full' && workers > 1;
  const moments = spec.training.offload_optimizer && spec.devices.kind === 'cuda' ? 0 : zero1 ? 2 / workers : 2;
  // ZeRO-2 also leaves each worker the gradients of its share only, plus two staging slots for the others' parameters
  // of one backward stage (the largest: a block's linears or the embedding/head table, which some rank's share leaves
  // out whole)
  const stageMax = Math.max(L > 0 ? linearParams / L : 0, V * H);
  const zero2 = zero1 && spec.distributed.zero_stage === 2;
  const gradients = zero2 ? Math.min(trainableParams, trainableParams / workers + 2 * stageMax) : trainableParams;
  const optimizer = (gradients + trainableParams * moments) * F;
  const gpu = spec.devices.kind === 'cuda';
  // the logits chunk, its gradient in place; a 16-bit head (mixed precision: an untied frozen head, or the frozen
  // tied table) takes d(hidden) = d(logits)·W through a rounded copy of the chunk's gradient — fp32 on the CPU
  // (round_half), 16-bit on the GPU
  const head16 = info.tie_embeddings ? embedHalf > 0 : headHalf > 0;
  const logits = logitsChunk * F + (head16 ? logitsChunk * (gpu ? 2 : F) : 0);
  // data parallelism over CPU workers (Gloo): the gradient reducer packs each bucket (bucket_mb, 25 MB, or one larger
  // parameter alone: a full fine-tune's embedding table) into a host buffer the size of the largest bucket, which
  // Gloo's ring all-reduce works through with a scratch of about 1/(2·workers) of it, plus its threads and sockets.
  // NCCL (GPU workers) reduces the gradients in place, and so does ZeRO-2 on CPU workers (tensor by tensor: only
  // Gloo's scratch of the largest).
  const largest = spec.method === 'full' ? Math.max(V * H, I * H, (qd + 2 * kvd) * H) : 0;
  const bucket = zero2 ? 0 : Math.max(Math.min(trainableParams, BUCKET_FLOATS), largest > BUCKET_FLOATS ? largest : 0);
  const scratch = (zero2 ? largest : bucket) / (2 * spec.distributed.nproc_per_node);
  const reducer = !gpu && spec.distributed.nproc_per_node > 1 ? (bucket + scratch) * F + 2 * 2 ** 20 : 0;
  const process = (gpu ? GPU_CONTEXT : PROCESS_BASELINE) + reducer;
  const total = weights + trainable + optimizer + activations + temporaries + logits + process;
  // FLOPs: forward 2PN; backward 2PN for the inputs (+2PN for full weight gradients); attention 4·L·N·T·H·2
  const flops = (spec.method === 'full' ? 6 : 4) * P * N + 8 * L * N * T * H * (spec.training.gradient_checkpointing ? 1.5 : 1);
  // the CPU's throughput is known well enough to guess a step; a GPU's is not (its first steps say)
  const stepSeconds = gpu ? null : (flops * spec.training.gradient_accumulation_steps) / (Math.max(1, threads) * 25e9);
  return {
    bytes: { weights, trainable, optimizer, activations, temporaries, logits, process, total },
    trainableParams,
    tokens: N,
    stepSeconds,
    device: gpu ? 'cuda' : 'cpu',
  };
}

// binary units, named as such (the fit check and the refusal say GiB too)
const mib = (b: number) => (b < 2 ** 30 ? `${(b / 2 ** 20).toFixed(1)} MiB` : `${(b / 2 ** 30).toFixed(2)} GiB`);

/** One line: the peak while training (the weight files, mapped while they load, are not counted: the kernel can drop
 *  those pages) and its parts; on a GPU, of each GPU's memory, the CUDA context an assumed figure. */
export function describeEstimate(e: Estimate): string {
  const b = e.bytes;
  const gpu = e.device === 'cuda';
  return (
    `${gpu ? 'GPU memory' : 'memory'} ≈ ${mib(b.total)} (weights ${mib(b.weights)}, trainable ${mib(b.trainable)}, optimizer ${mib(b.optimizer)}, ` +
    `activations ${mib(b.activations)}, temporaries ${mib(b.temporaries + b.logits)}, ${gpu ? `CUDA context ≈ ${mib(b.process)} assumed` : `process ${mib(b.process)}`})` +
    (e.stepSeconds === null
      ? ''
      : `; step ≈ ${e.stepSeconds < 1 ? `${(e.stepSeconds * 1000).toFixed(0)} ms` : `${e.stepSeconds.toFixed(1)} s`} on this CPU`)
  );
}

/** Concrete ways to make a run that does not fit, fit. */
export function suggestions(spec: RunSpec): string[] {
  const s: string[] = [];
  if (spec.training.micro_batch_size > 1) s.push(`lower --per_device_train_batch_size (now ${spec.training.micro_batch_size}) and raise --gradient_accumulation_steps to keep the batch`);
  if (!spec.training.gradient_checkpointing) s.push('turn on --gradient_checkpointing (activations of one block at a time)');
  s.push(`shorten --max_source_length / --max_target_length (now ${spec.data.max_source_length} / ${spec.data.max_target_length})`);
  if (spec.method === 'full') s.push('use LoRA (--use_lora True): no gradients or optimizer state for the base weights');
  if (spec.devices.kind === 'cuda' && !spec.training.offload_optimizer) s.push('turn on --offload_optimizer (the AdamW state in host memory, 8 bytes per trainable parameter off the GPU)');
  return s;
}
