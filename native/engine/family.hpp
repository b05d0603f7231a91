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
  PackedBlocks,   // one fused linear, rows [Q | K | V] (baichuan W_pack)
  PerHeadFused,   // one fused linear, rows per head [q_h, k_h, v_h] (gpt_neox, bloom)
};
enum class MlpKind { SwiGLU, Gelu };
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
};

/** The table. */
const std::vector<FamilyRow> &families();
/** Row for a model_type, or null. */
const FamilyRow *find_family(const std::string &model_type);
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
  double norm_eps = 1e-6;
  int64_t max_positions = 2048;
  bool tie_embeddings = false;
  bool parallel_residual = false;  // gpt_neox use_parallel_residual
  int64_t bos_id = -1, eos_id = -1, pad_id = -1;
  std::vector<int64_t> extra_eos;  // eos_token_id given as a list
};

/**
 * Reads `dir/config.json` into `out`. Errors: IO (missing file), BAD_INPUT (bad JSON, missing or
 * inconsistent fields, e.g. hidden_size not divisible by num_attention_heads), UNSUPPORTED (model_type
 * not in the table — the message lists the supported ones — or a rope_scaling type we do not implement).
 */
llmt_status load_config(const std::string &dir, ModelConfig &out);
llmt_status parse_config(const Json &j, const std::string &where, ModelConfig &out);

/** Expands "{i}" in a name pattern. */
std::string layer_name(const char *pattern, int64_t i);

}  // namespace llmt
