// index.d.ts — hand-written types of the native addon (native/addon/addon.cpp). Keep in step with it.
// Failed calls throw (or reject with) an Error whose `code` is the engine status name
// (BAD_INPUT, IO, OOM, NAN, CUDA, UNSUPPORTED, ABORTED, INTERNAL).

export interface NativeDevice {
  index: number;
  kind: 'cpu' | 'cuda';
  name: string;
  /** bytes */
  memoryTotal: number;
  /** bytes available now; 0 if unknown */
  memoryFree: number;
  /** CPU worker threads; 0 for GPUs */
  threads: number;
  /** GPU busy percent (NVML); -1 if unknown or the CPU */
  utilization: number;
  /** GPUs: major*10 + minor (90 = sm_90); 0 for the CPU */
  computeCapability: number;
}

/** What `inspect` reports of an HF model folder (no weights loaded). */
export interface ModelInspection {
  path: string;
  model_type: string;
  architectures?: string[] | null;
  supported: boolean;
  /** why not, when unsupported */
  reason?: string;
  family?: string;
  parameters?: number;
  dtype?: string;
  vocab?: number;
  hidden?: number;
  intermediate?: number;
  layers?: number;
  heads?: number;
  kv_heads?: number;
  /** config.json's length (max_position_embeddings, seq_length, …; 2048 when it names none) */
  context?: number;
  /** the context as a hard limit (learned or rotary positions, a linear rope_scaling factor counted): what generation
   *  refuses to pass; 0 when there is none (ALiBi, or a config that names no length) */
  context_limit?: number;
  tie_embeddings?: boolean;
  /** the attention head size (config.json head_dim when given, as in Mistral-Nemo; else hidden / heads) */
  head_dim?: number;
  /** sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window): keys per query; 0 for full causal. Past
   *  it each query attends to its last sliding_window keys (training and generation); no limit on the context */
  sliding_window?: number;
  /** the first layer with that window (Qwen2: max_window_layers; 0 for Mistral) */
  window_from_layer?: number;
  /** config.json's rope_scaling type when one is set ("linear", "llama3", "dynamic"), else null */
  rope_scaling?: string | null;
  /** a saved 4-bit (bitsandbytes layout) folder: "nf4" or "fp4"; absent or "none" otherwise */
  quantization?: string;
  /** the LoRA-targetable linear module names of a block */
  lora_targets?: string[];
  default_lora_targets?: string;
  /** the input embedding's and the LM head's module paths ("model.embed_tokens", "lm_head"): LoRA targets too */
  embed_module?: string;
  lm_head_module?: string;
}

export interface GenerateParams {
  max_new_tokens?: number;
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  seed?: number;
  /** defaults to the model's eos ids */
  stop_ids?: number[];
}

export interface EvalLossResult {
  /** mean token loss (labels ≠ −100, shifted) over the whole set */
  loss: number;
  /** scored tokens */
  tokens: number;
  samples: number;
  /** exp(loss) */
  perplexity: number;
}

export interface NativeModel {
  /** Streams each token to onToken; resolves when done (aborted: true after abort()). One at a time. */
  generate(promptIds: number[], params?: GenerateParams, onToken?: (e: { token: number; index: number }) => void): Promise<{ ids: number[]; aborted: boolean }>;
  /**
   * Generates after several prompts at once (one forward per step over the unfinished ones, each stopping on its
   * own). Row r equals generate(prompts[r]) with seed params.seeds[r] (default params.seed), bit for bit.
   * onToken receives each token with its row. Resolves with the ids per prompt (aborted: true after abort()).
   */
  generateBatch(
    prompts: number[][],
    params?: GenerateParams & { seeds?: number[] },
    onToken?: (e: { row: number; token: number; index: number }) => void,
  ): Promise<{ ids: number[][]; aborted: boolean }>;
  /**
   * Evaluation loss on a tokenized dataset (.tok), computed as a training job's eval with eval_batch_size =
   * batchSize (default 4): the same value bit for bit. onProgress after each batch (samples done/total).
   * abort() rejects it with code ABORTED. One operation (generate or evalLoss) at a time per model.
   */
  evalLoss(tokPath: string, options?: { batchSize?: number }, onProgress?: (e: { event: 'progress'; done: number; total: number }) => void): Promise<EvalLossResult>;
  /** Stops the running generate/evalLoss/generateBatch. */
  abort(): void;
  info(): { model_type: string; vocab: number; hidden: number; layers: number; parameters: number; trainable: number; adapter: string | null; eos_ids: number[]; bos_id: number; pad_id: number; device: string; /** "none", or the 4-bit type of the block linears ("nf4", "fp4") */ quantization: string; /** the model's context (config.json max_position_embeddings, seq_length, …): a hard limit of generation unless alibi */ context: number; alibi: boolean; device_memory: { allocated: number; peak_allocated: number; reserved: number; peak_reserved: number } };
  /** Releases the weights now (else when garbage-collected). Throws while generating or evaluating. */
  free(): void;
}

export interface LlmtAddon {
  version(): string;
  apiVersion(): number;
  /** JSON text: {"version","api_version","cuda","compiler"} */
  buildInfo(): string;
  listDevices(): NativeDevice[];
  deviceInfo(index: number): NativeDevice;
  inspect(dir: string): Promise<ModelInspection>;
  createTiny(family: 'llama' | 'llama3' | 'llama_bias' | 'mistral' | 'qwen2' | 'baichuan' | 'gpt_neox', dir: string, seed?: number): Promise<void>;
  /** device: "cpu" (default), "cuda", "cuda:N" or "auto" (a GPU that cannot be used leaves the model on the CPU:
   *  info().device says where it is); precision: "fp32" (default), "bf16", "fp16" (frozen weights in 16 bits);
   *  quantization: "none" (default), "nf4", "fp4", or the job's object form as JSON text (QLoRA: the block linears
   *  quantized to 4 bits while loading; info().quantization says what the model holds). */
  loadModel(dir: string, adapter?: string, options?: { device?: string; precision?: string; quantization?: string }): Promise<NativeModel>;
  setThreads(n: number): void;
}
