// family.hpp — the model-family table: each supported HF `model_type` is one row saying how its blocks
// are built (norm, positions, attention layout, MLP, residual) and how its tensors are named. Adding an
// architecture means adding a row here and, only if it needs new math, a case in model.cpp.
// Also parses config.json into ModelConfig with the family's defaults and checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "json.hpp"
#include "llmt.h"

namespace llmt {

enum class NormKind { RMS, Layer };
enum class QkvLayout {
  Separate,       // q_proj, k_proj, v_proj (llama)
  PackedBlocks,   // one fused linear, rows [Q | K | V] (baichuan W_pack, chatglm2, falcon-7b multi-query)
  PerHeadFused,   // one fused linear, rows per head [q_h, k_h, v_h] (gpt_neox, bloom, chatglm v1)
  GroupedFused,   // one fused linear, rows per kv group [q × n/G, k, v] (falcon new decoder architecture)
};
enum class MlpKind {
  SwiGLU,       // down(silu(gate·x) ⊙ up·x) (llama)
  Gelu,         // fc2(gelu_erf(fc1·x)) (gpt_neox, falcon)
  GeluTanh,     // fc2(gelu_tanh(fc1·x)) (bloom, chatglm v1)
  SwiGLUFused,  // fc2(silu(u₁) ⊙ u₂), [u₁ | u₂] = fc1·x (chatglm2 dense_h_to_4h)
};
enum class PosKind {
  Rope,             // half-split RoPE on the first rot_dims of each head
  RopeInterleaved,  // pairs (2i, 2i+1) on the first rot_dims (chatglm2: half of each head)
  Rope2D,           // chatglm v1: half-split RoPE of width d/2 on each half, positions and block positions
  Alibi,            // no rotation; ALiBi bias in attention (bloom, baichuan-13b)
};
enum class LinearRole { Q, K, V, QKV, O, Gate, Up, Down, Fc1, Fc2 };

struct FamilyRow {
  const char *model_type;      // config.json "model_type"
  const char *display;         // human name
  NormKind norm;
  QkvLayout qkv_layout;
  MlpKind mlp;
  bool linear_bias;            // attention/MLP linears carry biases
  // tensor names; "{i}" is the layer index
  const char *embed;           // e.g. "model.embed_tokens"
  const char *layer;           // e.g. "model.layers.{i}"
  const char *attn_norm;       // relative to layer
  const char *mlp_norm;
  const char *q, *k, *v, *qkv, *o;
  const char *gate, *up, *down, *fc1, *fc2;
  const char *final_norm;
  const char *lm_head;
  const char *default_lora_targets;  // PEFT's default for this model_type (comma list), or the usual set
  const char *all_lora_targets;      // every linear module name of a block
  const char *id = nullptr;          // unique family id (create-tiny --family); null: model_type
  const char *embed_norm = nullptr;  // LayerNorm right after the embedding (bloom word_embeddings_layernorm)
  const char *bare_prefix = nullptr;  // prefix absent from checkpoints saved from the bare model (bloom-560m)

  const char *key() const { return id ? id : model_type; }
};

/** The table. */
const std::vector<FamilyRow> &families();
/** Row for a model_type (or its legacy alias, e.g. RefinedWebModel → falcon), or null. Where several rows
 *  share a model_type (chatglm v1/v2, baichuan 7B/13B) this is the first; parse_config picks by config.json. */
const FamilyRow *find_family(const std::string &model_type);
/** Row by family id (FamilyRow::key()), or null. */
const FamilyRow *find_family_id(const std::string &id);
/** "llama, baichuan, gpt_neox" — for error messages. */
std::string supported_model_types();

struct ModelConfig {
  const FamilyRow *family = nullptr;
  std::string model_type;
  int64_t vocab = 0;
  int64_t hidden = 0;
  int64_t inter = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t rot_dims = 0;           // rotary dims per head (partial rotary for gpt_neox)
  double rope_theta = 10000.0;
  double rope_linear_factor = 1.0;  // rope_scaling {"type":"linear","factor":f}
  std::string rope_scaling;         // rope_scaling's type when one is set ("linear", "llama3", "dynamic", "yarn"), else empty
  float attn_factor = 1.0f;         // YaRN's attention factor: cos and sin times it, so the attention scores times its square
  int64_t rope_extended = 0;        // YaRN: the positions the scaled frequencies reach (original length × factor)
  int64_t sliding_window = 0;       // Mistral / Qwen2 sliding-window attention: keys per query (0: full causal)
  int64_t window_from_layer = 0;    // the first layer with that window (Qwen2: max_window_layers; earlier ones: full)
  double norm_eps = 1e-6;
  int64_t max_positions = 2048;
  bool max_positions_given = false;  // config.json names it (else 2048 is a guess, never a limit)
  bool tie_embeddings = false;
  bool parallel_residual = false;  // gpt_neox use_parallel_residual, falcon parallel_attn
  // the block recipe, resolved from the row and config.json
  PosKind pos = PosKind::Rope;
  QkvLayout qkv_layout = QkvLayout::Separate;
  MlpKind mlp = MlpKind::SwiGLU;
  NormKind norm = NormKind::RMS;
  std::string attn_norm, mlp_norm;  // norm module names in a layer; mlp_norm empty: both branches share attn_norm
  bool qkv_bias = false;            // the q/k/v (or fused) projection has a bias
  bool linear_bias = false;         // the other linears have biases (o and the MLP, unless set apart below)
  bool o_bias = false;              // the attention output projection has a bias (default: linear_bias)
  bool mlp_bias = false;            // the MLP linears have biases (default: linear_bias)
  bool residual_from_norm = false;  // residual taken from the norm output (chatglm v1, bloom's flag)
  float residual_alpha = 1.0f;      // ... times this (chatglm v1: sqrt(2·28))
  float branch_scale = 1.0f;        // attention/MLP outputs scaled before the residual add (minicpm)
  float embed_scale = 1.0f;         // embedding output scale (minicpm scale_emb)
  float logit_scale = 1.0f;         // final-norm output scale before the LM head (minicpm 1/(H/dim_model_base))
  std::vector<float> alibi;         // [heads] slopes when pos == Alibi
  std::vector<float> rope_freqs;    // inv_freq when the family fixes it (chatglm v1: fp16-rounded), else empty
  int64_t mask_id = -1, gmask_id = -1;  // chatglm v1 [MASK], [gMASK]
  int64_t bos_id = -1, eos_id = -1, pad_id = -1;
  std::vector<int64_t> extra_eos;  // eos_token_id given as a list
  /** Where generation stops (HF's generate): generation_config.json's eos_token_id (an int or a list) when that
   *  file has one, else config.json's. */
  std::vector<int64_t> stop_ids;
};

/**
 * Reads `dir/config.json` into `out`. Errors: IO (missing file), BAD_INPUT (bad JSON, missing or
 * inconsistent fields, e.g. hidden_size not divisible by num_attention_heads), UNSUPPORTED (model_type
 * not in the table — the message lists the supported ones — or a rope_scaling type we do not implement).
 */
llmt_status load_config(const std::string &dir, ModelConfig &out);
/** The text of `dir/config.json`. Errors: IO naming the file; where the folder has no config.json but holds a PEFT
 *  adapter (adapter_config.json), the message says so, names the adapter's base model and how to give both. */
llmt_status read_model_config(const std::string &dir, std::string &text);
llmt_status parse_config(const Json &j, const std::string &where, ModelConfig &out);

/** ALiBi slopes per head: BLOOM's recipe (fp32 powers) and Baichuan-13B's (_get_interleave, double then fp32);
 *  the same values except for rounding (MODEL-FAMILIES §1). */
std::vector<float> alibi_slopes_bloom(int64_t heads);
std::vector<float> alibi_slopes_baichuan(int64_t heads);

/** Expands "{i}" in a name pattern. */
std::string layer_name(const char *pattern, int64_t i);

/** The positions a model can be fed when they are a hard limit (learned or rotary positions): config.json's
 *  max_position_embeddings (seq_length, …), times a linear rope_scaling factor (configs differ on whether the field
 *  already counts it; the larger reading is taken, so a long-context model is never cut short); 0 when there is no
 *  such limit: ALiBi (a trained length, not a limit) or a config that names no length. */
inline int64_t context_limit(const ModelConfig &c) {
  int64_t lim = 0;
  if (c.pos != PosKind::Alibi && c.max_positions_given && c.max_positions > 0)
    lim = c.rope_linear_factor > 1.0 ? static_cast<int64_t>(static_cast<double>(c.max_positions) * c.rope_linear_factor) : c.max_positions;
  // (a sliding window — Mistral v0.1, Qwen2 with use_sliding_window — is no limit: past it each query attends to its
  // last `sliding_window` keys, in training and in generation)
  if (lim > 0 && c.rope_extended > lim) lim = c.rope_extended;
  return lim;
}

}  // namespace llmt
