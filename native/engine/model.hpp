// model.hpp — a loaded model: fp32 parameters on the CPU backend, optional LoRA adapters (PEFT's math),
// and the forward/backward of a causal-LM batch for every family in the family table.
//
// Conventions
//  - Activations are row-major [N, C] with N = B·T rows (batch-major); attention views q as [B,T,nh,hd].
//  - The loss is returned as a SUM of token cross-entropies plus the token count; the caller chooses how
//    to normalise (see train.cpp: HF Trainer semantics). Backward multiplies d(sum) by `grad_scale`.
//  - Parameter gradients accumulate (+=) across calls until zero_grad(); that is how gradient
//    accumulation works. Only trainable parameters own gradient buffers.
//  - Dropout (LoRA input path only, as PEFT) uses a counter-based RNG keyed by (seed, layer, module,
//    element): recomputation under gradient checkpointing regenerates the same masks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "family.hpp"
#include "llmt.h"
#include "quant.hpp"

namespace llmt {

class Backend;

// Where a parameter lives. On a backend whose memory is host memory (CPU: Backend::host_memory()) the host
// vectors ARE the backend's memory and the dev_* pointers stay null. On any other backend (CUDA) the model keeps
// the state in backend memory (dev_*: weights, gradient, AdamW moments) and the host vectors are only the
// load/save copies: Model::to_device() uploads them, Model::to_host() downloads them. Ops always take w(), g(),
// m(), v(); host code reads data/grad/adam_* only after to_host(). Frozen weights keep no host copy there at all
// (host_freed below): the model downloads one where it needs it, and set_backend() restores them all.
struct Param {
  std::string name;               // HF tensor name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  std::vector<float> data;
  std::vector<float> grad;        // allocated only when trainable
  std::vector<float> adam_m, adam_v;  // allocated by the optimizer
  bool trainable = false;
  bool host_optimizer = false;    // AdamW moments stay in host memory on a device backend (training.offload_optimizer)
  bool decay = true;              // weight decay applies (HF: not to biases and norm weights)
  std::string save_name;          // key in adapter_model.safetensors when trainable
  int64_t numel() const;
  float *dev_w = nullptr, *dev_g = nullptr, *dev_m = nullptr, *dev_v = nullptr;  // backend copies [numel] or null
  // ZeRO-2 (train.cpp, full fine-tuning on several workers): a parameter another rank owns has no gradient buffer of
  // its own (grad_staged; `grad` empty, no dev_g); during the backward stage that computes its gradient, the trainer
  // binds stage_g to a slot of a staging buffer (RunOptions::grad_bind), and takes it away once the slot is reduced.
  bool grad_staged = false;
  float *stage_g = nullptr;
  // Mixed precision (Model::set_precision): a frozen weight kept as bf16/fp16 bits; `data` is empty then.
  uint8_t half_type = 0;          // 0: fp32 in data; else a Half (cpu/half.hpp)
  std::vector<uint16_t> half;     // [numel] 16-bit weight (host copy)
  uint16_t *dev_half = nullptr;   // backend copy or null
  // A frozen weight on a device backend: after the upload its host vector (`data`, or `half`) is freed — the device
  // copy never changes and is the only one (Model::to_device); Model re-creates it by download when host code needs
  // it (set_backend, save_model, save_adapter, a weight becoming trainable, set_precision). Always false on a
  // host-memory backend.
  bool host_freed = false;
  bool derived = false;           // a constant the model derives from its weights (DoRA's ‖W‖²): not a parameter
  const uint16_t *h() const { return dev_half ? dev_half : half.data(); }
  float *w() { return dev_w ? dev_w : data.data(); }
  const float *w() const { return dev_w ? dev_w : data.data(); }
  float *g() { return stage_g ? stage_g : dev_g ? dev_g : grad.data(); }
  float *m() { return dev_m ? dev_m : adam_m.data(); }
  float *v() { return dev_v ? dev_v : adam_v.data(); }
};

struct LoraSpec {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;               // PEFT's DoRA: a trainable magnitude per output row of each adapted linear
  std::vector<std::string> targets;    // PEFT list semantics (exact or ".{name}" suffix)
  std::string target_regex;            // PEFT string semantics (re.fullmatch); used when non-empty
  std::vector<std::string> modules_to_save;
  std::map<std::string, int64_t> rank_pattern;  // PEFT: keys are regexes matched as (.*\.)?(key)$, first match wins
  std::map<std::string, double> alpha_pattern;
  std::vector<std::string> exclude_modules;      // PEFT ≥ 0.14: names (exact or ".{name}" suffix) never targeted
  std::string exclude_regex;                     // the same as one regex (re.fullmatch)
  std::vector<int64_t> layers_to_transform;      // only these layer indices (list targets only, as PEFT)
  std::vector<std::string> layers_pattern;       // the module-path component before the layer index (empty: any)
  std::string bias = "none";
  // PEFT's ensure_weight_tying: a tied embedding/head listed in modules_to_save stays tied, one trained copy serving
  // both (saved under both names); without it PEFT trains a separate copy of the listed side
  bool ensure_weight_tying = false;
  // tensors the adapter file may hold that the forward does not read (PEFT variants whose inference is plain LoRA:
  // VeLoRA's lora_velora_embed, MonteCLoRA's sampler state): matched as ".<suffix>" or ".<suffix>." in a key
  std::vector<std::string> inert_tensors;
};

struct Lora {
  int64_t r = 0;
  float scaling = 1.0f;
  float dropout = 0.0f;
  Param *A = nullptr;  // [r, in]
  Param *B = nullptr;  // [out, r]
  // DoRA (PEFT use_dora): the magnitude m [out] (trainable, saved as <module>.lora_magnitude_vector) and ‖W_j‖² of
  // the frozen base weight per output row [out] (a derived constant, not saved; Model::prepare_dora)
  Param *M = nullptr;
  Param *wn2 = nullptr;
};

struct Linear {
  std::string module;   // full module path, e.g. "model.layers.0.self_attn.q_proj"
  std::string short_name;  // last component, e.g. "q_proj"
  int64_t in = 0, out = 0;
  Param *W = nullptr;   // [out, in]
  Param *b = nullptr;   // [out] or null
  Lora lora;            // r == 0: none
  int role = 0;
  const Q4Weight *q4 = nullptr;  // QLoRA: the frozen 4-bit base weight; W keeps its shape, W->data is empty
};

struct Layer {
  // norm2 is null when one norm feeds both parallel branches (falcon-7b)
  Param *norm1_w = nullptr, *norm1_b = nullptr, *norm2_w = nullptr, *norm2_b = nullptr;
  // by role; unused roles are null
  Linear *q = nullptr, *k = nullptr, *v = nullptr, *qkv = nullptr, *o = nullptr;
  Linear *gate = nullptr, *up = nullptr, *down = nullptr, *fc1 = nullptr, *fc2 = nullptr;
  // sliding-window attention in this layer (ModelConfig::sliding_window; Qwen2: from max_window_layers on)
  bool windowed = false;
};

struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> ids;     // [B·T]
  std::vector<int32_t> labels;  // [B·T] unshifted (HF `labels`), −100 = ignored; empty: no loss
  /** [B·T] position ids, or empty for 0…T−1 in every row. Packed rows restart at 0 where each sample
   *  begins; attention then never crosses a sample boundary and the positions restart with each sample. */
  std::vector<int32_t> pos;
};

struct RunOptions {
  bool training = false;        // dropout on
  /** NEFTune (HF Trainer's neftune_noise_alpha) when training: the input embeddings get uniform noise in
   *  ±alpha/sqrt(T·H) (T the batch's padded length), before any embedding norm or scaling; 0: off. */
  float neftune_alpha = 0.0f;
  bool backward = false;        // compute gradients
  float grad_scale = 1.0f;      // d(loss_sum) multiplier, e.g. 1/token_count
  bool checkpointing = false;   // keep only each block's input, recompute in the backward
  bool offload_checkpoints = false;  // with checkpointing on a device backend: those inputs in host memory
  uint64_t seed = 0;            // dropout RNG stream
  /** QLoRA with checkpointing in bf16/fp16: each recomputed block's 4-bit weights decoded to 16 bits once, for its
   *  recomputation and its backward together (one layer's weights in 16 bits at a time: 386 MiB at the 7B shape),
   *  instead of once per GEMM — 2 decodes of each weight per step instead of 3, and 16-bit GEMMs (cuBLAS) in the
   *  recomputation and the backward. Off by default: QLoRA's promise (issue 11) is that no 16-bit copy of a whole
   *  weight exists; this trades that for speed. −1: the LLMT_Q4_LAYER_CACHE environment variable ("1": on), else
   *  off; 0: off; 1: on. The same numbers either way (the decoded values are the ones the 4-bit GEMMs multiply by). */
  int q4_layer_cache = -1;
  bool want_logits = false;     // fill RunResult::logits [B·T, V]
  /** Gradient-ready hook (data parallelism: train.cpp starts each all-reduce bucket as soon as it is complete).
   *  When set, the backward calls it each time a group of trainable parameters has received its last gradient
   *  contribution of this call, in backward order, exactly once per group: stage `layers` = the head (lm_head
   *  unless tied to the embedding, the final norm), then each block l = layers−1 … 0 (its norms, linears and
   *  their LoRA factors), then stage −1 = the embeddings (embedding, bloom's embedding norm, a tied head).
   *  `ready` lists the group's trainable parameters (maybe none); their gradients are not touched again by this
   *  call. Set it only on the last call before the gradients are used (the last micro-batch of an accumulation
   *  step): earlier micro-batches' gradients are not final. Empty (the default): no cost. */
  std::function<void(int64_t stage, const std::vector<Param *> &ready)> grad_ready;
  /** Gradient-bind hook (ZeRO-2): called before each stage of the backward writes its first gradient (the head's
   *  before the loss, whose chunks already accumulate lm_head's gradient), with the same stages and lists as
   *  grad_ready, so the trainer can point the stage's staged parameters (Param::stage_g) at zeroed memory. */
  std::function<void(int64_t stage, const std::vector<Param *> &params)> grad_bind;
};

struct RunResult {
  double loss_sum = 0.0;
  int64_t count = 0;            // tokens counted in loss_sum
  std::vector<float> logits;
};

class Model {
 public:
  /** Loads config.json + safetensors from an HF folder (fp32 copies of the weights). */
  static std::unique_ptr<Model> load(const std::string &dir, llmt_status &st);
  /** The same, quantizing the linear weights of the blocks to 4 bits while streaming them in (quant.hpp):
   *  each is read in fp32, quantized and dropped before the next, so the fp32 model never exists at once.
   *  A folder that already is a bnb 4-bit checkpoint (config.json "quantization_config": `llmt-engine quantize`,
   *  transformers' save_pretrained) loads its 4-bit weights as stored, whatever `quant` asks for (another type:
   *  BAD_INPUT); quantization() then reports the stored spec. */
  static std::unique_ptr<Model> load(const std::string &dir, llmt_status &st, const QuantSpec &quant);
  /** As above, with mixed precision applied while streaming the weights in ("bf16"/"fp16": every block linear that
   *  is not 4-bit and an untied head are read one tensor at a time and kept only as 16-bit values — the fp32 model
   *  never exists in memory). A weight made trainable later (modules_to_save, make_all_trainable) is re-read in
   *  fp32 from the folder. Errors as set_precision. */
  static std::unique_ptr<Model> load(const std::string &dir, llmt_status &st, const QuantSpec &quant,
                                     const std::string &precision);
  /** The checks a load makes before it allocates or reads a weight — config.json's sizes against the weights'
   *  headers: the layer count, each tensor's presence and shape (a 4-bit folder's packed sizes) — without loading
   *  anything (inspect). OK, or the error a load would give. */
  static llmt_status check_folder(const std::string &dir);
  const QuantSpec &quantization() const { return quant_; }
  /** Mixed precision: "bf16" or "fp16" keeps every frozen base weight (block linears and an untied, frozen LM head;
   *  not the embedding, norms, biases, LoRA factors or anything trainable) as 16-bit values — half the memory — and
   *  their GEMMs read the activations rounded to that type with fp32 accumulation (Backend::matmul_*_half); LoRA
   *  weights, gradients and AdamW state stay fp32. Call after add_lora / load_adapter / make_all_trainable: weights
   *  made trainable later must still be fp32. "fp32" (the default) changes nothing. Errors: BAD_INPUT (unknown name,
   *  a weight beyond fp16's range), UNSUPPORTED (the backend has no 16-bit GEMM). */
  llmt_status set_precision(const std::string &precision);
  const std::string &precision() const { return precision_; }
  ~Model();

  const ModelConfig &config() const { return cfg_; }
  const std::string &dir() const { return dir_; }
  Backend &backend() const { return *be_; }
  /** Computes on `be` from now on (cuda/cuda.hpp select_backend). The state the old backend held comes back to
   *  the host vectors first (trainable weights, gradients, AdamW moments, and the frozen weights to_device() freed
   *  on the host, downloaded), so a model moved back to the CPU computes exactly as one that never left it. */
  void set_backend(Backend &be);
  /** Backend copies of the parameters (device-resident state): uploads every parameter's host data, and the
   *  gradient and AdamW moments where the host holds them, into backend memory, allocating what is missing.
   *  Frozen weights (fp32, 16-bit and 4-bit) are uploaded once and their host vectors then freed (Param::host_freed,
   *  Q4Weight::host_freed): the host keeps only trainable state (host_weight_bytes()).
   *  A no-op on a host-memory backend (CPU). run()/infer() call it when the host side changed (set_backend,
   *  add_lora, load_adapter, make_all_trainable); call it after writing host vectors yourself (resume). */
  void to_device();
  /** Bytes of weights held in host memory: every Param's `data` and `half` vectors and the 4-bit weights' host
   *  arrays (not gradients or AdamW moments). After to_device() on a device backend: the trainable weights only. */
  int64_t host_weight_bytes() const;
  /** Re-creates (downloads) the host copy of every frozen weight to_device() freed; the device copies stay. A no-op
   *  when none was freed. The model calls it itself where host code needs them (set_backend, save_model, …). */
  void fetch_host_weights() const;
  /** Downloads the trainable weights (and, when asked, gradients and AdamW moments) into the host vectors,
   *  for saving or inspection. A no-op on a host-memory backend. */
  void to_host(bool grads = false, bool optimizer = false) const;
  int64_t num_parameters() const;
  int64_t num_trainable() const;

  /** Adds fresh LoRA adapters (PEFT init: A Kaiming-uniform(a=√5) = U(±1/√in), B = 0). */
  llmt_status add_lora(const LoraSpec &spec, uint64_t seed);
  /** Loads a PEFT adapter folder (adapter_config.json + adapter_model.safetensors). */
  llmt_status load_adapter(const std::string &dir, bool trainable);
  /** Writes a PEFT adapter folder atomically: adapter_config.json + adapter_model.safetensors. */
  llmt_status save_adapter(const std::string &dir) const;
  /** Writes the whole model as an HF folder (config.json + model.safetensors, and the source folder's tokenizer files,
   *  generation_config.json and remote-code modules: copy_model_side_files), atomically per file. */
  llmt_status save_model(const std::string &dir) const;
  /** Makes every parameter trainable (full fine-tuning). */
  /** Every weight trainable (full fine-tuning); 16-bit weights are re-read in fp32 first (IO errors). */
  llmt_status make_all_trainable();
  bool has_lora() const { return has_lora_; }
  const LoraSpec &lora_spec() const { return spec_; }

  std::vector<Param *> trainable_params();
  /** The gradient stages of the backward in the order it runs them (the stages of RunOptions::grad_ready: the head,
   *  blocks layers−1 … 0, the embeddings), each with its trainable parameters. A tied head's weight is listed with
   *  the embeddings, yet the head's stage writes to its gradient too (head_tied()). */
  std::vector<std::pair<int64_t, std::vector<Param *>>> grad_stages() const;
  bool head_tied() const { return lm_head == embed; }
  /** Zeroes every trainable parameter's gradient (a staged one, without a buffer of its own, is skipped). */
  void zero_grad();

  /** Forward (and optionally backward) of one batch. */
  llmt_status run(const Batch &batch, const RunOptions &opt, RunResult &out);

  // Inference with a KV cache (generation). The cache holds post-RoPE keys and values per layer.
  struct KvCache {
    int64_t capacity = 0, length = 0;
    std::vector<std::vector<float>> k, v;  // per layer [capacity, nkv, hd] (host-memory backends)
    std::vector<std::shared_ptr<float>> dk, dv;  // the same in backend memory (other backends; released with it)
    int64_t glm_ctx = -1, glm_mask_pos = -1;  // ChatGLM-6B: <sop> and [gMASK] indices of the prompt
  };
  void init_cache(KvCache &c, int64_t capacity) const;
  /** Feeds `n` tokens at positions cache.length… and returns the logits of the last one [V]. */
  llmt_status infer(KvCache &cache, const int32_t *ids, int64_t n, std::vector<float> &last_logits);
  /** One chunk of each of S sequences, each with its own cache: sequence s feeds n[s] ≥ 1 tokens ids[s] at
   *  positions caches[s]->length…. One forward over all Σn tokens (every op but attention treats rows alone;
   *  attention runs per sequence against its cache), so each sequence's logits are bit-identical to infer() on
   *  it alone. last_logits receives [S, V]: the logits of each sequence's last token. */
  llmt_status infer_batch(KvCache *const *caches, const int32_t *const *ids, const int64_t *n, int64_t S,
                          std::vector<float> &last_logits);

  std::vector<Layer> layers;
  std::vector<std::unique_ptr<Linear>> linears;
  /** LoRA on the LM head (PEFT: a Linear — lora_A [r, H], lora_B [V, r], lora_dropout on its input) and on the input
   *  embedding (PEFT's lora.Embedding — lora_embedding_A [r, V], lora_embedding_B [H, r], no dropout; its rows are
   *  looked up per token through Aᵀ); r == 0: none. Listed in target_modules by their module names. */
  Lora head_lora, embed_lora;
  Param *embed = nullptr, *final_w = nullptr, *final_b = nullptr, *lm_head = nullptr;
  Param *embed_norm_w = nullptr, *embed_norm_b = nullptr;  // bloom's word_embeddings_layernorm
  std::vector<std::unique_ptr<Param>> params;
  std::vector<std::unique_ptr<Q4Weight>> q4_weights;  // QLoRA base weights, referenced by Linear::q4
  float *q4_dev_code2 = nullptr;  // backend copy of cpu::dynamic_map() shared by the q4 weights (device backends)

 private:
  Model() = default;
  struct Impl;
  /** A parameter of `shape`, zero-filled fp32 unless !alloc (load: allocated once the headers are checked). */
  Param *new_param(const std::string &name, std::vector<int64_t> shape, bool alloc = true);
  static std::unique_ptr<Model> load_impl(const std::string &dir, llmt_status &st, const QuantSpec &quant,
                                          const std::string &precision, bool headers_only);
  llmt_status attach_lora(Linear &lin, int64_t r, double alpha, double dropout, bool rslora, bool dora = false);
  /** ‖W_j‖² per output row of a linear's frozen base weight as the forward sees it (fp32, 16-bit or 4-bit values),
   *  computed on the host in double. */
  std::vector<double> weight_row_norms2(const Linear &lin) const;
  /** Recomputes every DoRA linear's wn2 from its weight as stored now (set_precision: the 16-bit values). */
  void refresh_dora_norms();
  llmt_status apply_modules_to_save(const std::vector<std::string> &names);
  ModelConfig cfg_;
  Backend *be_ = nullptr;  // the device this model computes on (cpu_backend() unless set_backend)
  bool dirty_ = false;     // host vectors changed since the last to_device() (non-host backends only)
  void release_device();
  /** The host copy of one frozen weight to_device() freed, downloaded (a no-op unless p.host_freed). */
  void fetch_host(Param &p) const;
  /** After a fetch: frees the host copies of frozen weights whose device copy is current again (save_model,
   *  save_adapter); nothing while dirty_ (to_device() does it then). */
  void free_frozen_host() const;
  /** A 16-bit frozen weight becoming trainable: its fp32 values re-read from the model folder. */
  llmt_status restore_fp32(Param &p);
  std::string dir_;
  LoraSpec spec_;
  bool has_lora_ = false;
  QuantSpec quant_;
  std::string precision_ = "fp32";
  std::unique_ptr<Impl> impl_;
};

/** PEFT's target matching for one module path (check_target_module_exists: exclude_modules, modules_to_save,
 *  target_modules as a list or a regex, layers_to_transform). The spec's regexes must have passed
 *  check_lora_regexes (one that does not compile matches nothing here). */
bool peft_target_matches(const LoraSpec &spec, const std::string &module);

class Json;

/** Refuses, by name, the adapter_config.json options this engine cannot honour (PEFT ≥ 0.14's lora_bias,
 *  trainable_token_indices, layer_replication, target_parameters, aLoRA, QALoRA, Megatron layers, Arrow, KaSA,
 *  block-diagonal LoRA) and an init_lora_weights that rewrote the base weights (PiSSA, OLoRA, CorDA, LoRA-GA,
 *  LoftQ: the message names PEFT's conversion to a plain LoRA adapter). */
llmt_status unsupported_peft_options(const Json &cfg, const std::string &where);

/** A PEFT adapter_config.json as a LoraSpec: the types of its keys checked (a present key of the wrong type is an
 *  error naming it), the options this engine cannot honour refused by name. */
llmt_status parse_peft_lora_config(const Json &cfg, const std::string &where, LoraSpec &s);
/** True for an adapter tensor the forward does not read (LoraSpec::inert_tensors: a variant's training state). */
bool inert_adapter_tensor(const LoraSpec &s, const std::string &name);

/** layers_to_transform (an int or a list) and layers_pattern (a string or a list) of a PEFT LoRA config into `s`. */
llmt_status peft_layer_options(const Json &cfg, const std::string &where, LoraSpec &s);

/** A Python `re` pattern (as PEFT's configs hold them) as a std::regex (ECMAScript): named groups (?P<n>…) become
 *  plain groups, \A and \Z anchors; what ECMAScript cannot express (lookbehind, (?P=name), inline flags, …) is an
 *  error naming the construct. False with `why` set when the pattern cannot be used. */
bool python_regex(const std::string &pattern, std::regex &out, std::string &why);

/** PEFT's rank_pattern/alpha_pattern lookup (peft.utils.other.get_pattern_key): the first key, in the dict's order
 *  (sorted, as PEFT saves it), whose regex matches the module as (.*\.)?(key)$. Null when none does. */
template <class Pairs>
auto peft_pattern_value(const Pairs &patterns, const std::string &module) -> decltype(&patterns.begin()->second) {
  for (const auto &kv : patterns) {
    std::regex re;
    std::string why;
    if (python_regex("(.*\\.)?(" + kv.first + ")", re, why) && std::regex_match(module, re)) return &kv.second;
  }
  return nullptr;
}

/** The files of an HF model folder that are neither weights nor config.json but belong to a loadable copy of it: the
 *  tokenizer's (tokenizer*.json/.model, vocab/merges, special/added tokens, *.tiktoken), generation_config.json, chat
 *  templates and remote-code modules (*.py: copied, never run). */
bool is_model_side_file(const std::string &name);
/** Copies those files of `from` into `to` (atomically per file). */
llmt_status copy_model_side_files(const std::string &from, const std::string &to);

}  // namespace llmt
