// family.cpp — the rows of the model-family table and config.json parsing (see family.hpp).
// Facts per family come from shared/MODEL-FAMILIES.md (HF transformers / the families' own code).
#include "family.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>

#include "safetensors.hpp"
#include "status.hpp"

namespace llmt {

const std::vector<FamilyRow> &families() {
  static const std::vector<FamilyRow> rows = {
      {"llama", "LLaMA (Llama 2/3.x, Chinese-LLaMA-Alpaca, Open-LLaMA, BELLE-LLaMA, TigerBot v2)", NormKind::RMS, QkvLayout::Separate,
       MlpKind::SwiGLU, false, "model.embed_tokens", "model.layers.{i}", "input_layernorm", "post_attention_layernorm",
       "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", nullptr, "self_attn.o_proj", "mlp.gate_proj",
       "mlp.up_proj", "mlp.down_proj", nullptr, nullptr, "model.norm", "lm_head", "q_proj,v_proj",
       "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"},
      // Mistral and Qwen2/Qwen2.5: LLaMA's block and tensor names (Qwen2: q/k/v biases; Mistral v0.1: sliding window)
      {"mistral", "Mistral", NormKind::RMS, QkvLayout::Separate, MlpKind::SwiGLU, false, "model.embed_tokens",
       "model.layers.{i}", "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
       "self_attn.v_proj", nullptr, "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", nullptr, nullptr,
       "model.norm", "lm_head", "q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"},
      {"qwen2", "Qwen2 / Qwen2.5", NormKind::RMS, QkvLayout::Separate, MlpKind::SwiGLU, false, "model.embed_tokens",
       "model.layers.{i}", "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
       "self_attn.v_proj", nullptr, "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", nullptr, nullptr,
       "model.norm", "lm_head", "q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"},
      {"baichuan", "Baichuan-7B", NormKind::RMS, QkvLayout::PackedBlocks, MlpKind::SwiGLU, false, "model.embed_tokens",
       "model.layers.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr, nullptr, "self_attn.W_pack",
       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", nullptr, nullptr, "model.norm", "lm_head",
       "W_pack", "W_pack,o_proj,gate_proj,up_proj,down_proj"},
      {"gpt_neox", "GPT-NeoX / Pythia", NormKind::Layer, QkvLayout::PerHeadFused, MlpKind::Gelu, true, "gpt_neox.embed_in",
       "gpt_neox.layers.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr, nullptr,
       "attention.query_key_value", "attention.dense", nullptr, nullptr, nullptr, "mlp.dense_h_to_4h",
       "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "embed_out", "query_key_value",
       "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"},
      // Baichuan-13B: Baichuan-7B's tensors, ALiBi instead of RoPE (told apart by config.json, see parse_config)
      {"baichuan", "Baichuan-13B (ALiBi)", NormKind::RMS, QkvLayout::PackedBlocks, MlpKind::SwiGLU, false,
       "model.embed_tokens", "model.layers.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr, nullptr,
       "self_attn.W_pack", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", nullptr, nullptr,
       "model.norm", "lm_head", "W_pack", "W_pack,o_proj,gate_proj,up_proj,down_proj", "baichuan13b"},
      {"bloom", "BLOOM / BLOOMZ / TigerBot v1", NormKind::Layer, QkvLayout::PerHeadFused, MlpKind::GeluTanh, true,
       "transformer.word_embeddings", "transformer.h.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr,
       nullptr, "self_attention.query_key_value", "self_attention.dense", nullptr, nullptr, nullptr, "mlp.dense_h_to_4h",
       "mlp.dense_4h_to_h", "transformer.ln_f", "lm_head", "query_key_value",
       "query_key_value,dense,dense_h_to_4h,dense_4h_to_h", "bloom", "transformer.word_embeddings_layernorm",
       "transformer."},
      // Falcon: qkv layout, norms, biases and residual style come from config.json (see parse_config)
      {"falcon", "Falcon", NormKind::Layer, QkvLayout::PackedBlocks, MlpKind::Gelu, false, "transformer.word_embeddings",
       "transformer.h.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr, nullptr,
       "self_attention.query_key_value", "self_attention.dense", nullptr, nullptr, nullptr, "mlp.dense_h_to_4h",
       "mlp.dense_4h_to_h", "transformer.ln_f", "lm_head", "query_key_value",
       "query_key_value,dense,dense_h_to_4h,dense_4h_to_h", "falcon", nullptr, "transformer."},
      {"minicpm", "MiniCPM", NormKind::RMS, QkvLayout::Separate, MlpKind::SwiGLU, false, "model.embed_tokens",
       "model.layers.{i}", "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
       "self_attn.v_proj", nullptr, "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", nullptr, nullptr,
       "model.norm", "lm_head", "q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "minicpm"},
      {"chatglm", "ChatGLM-6B", NormKind::Layer, QkvLayout::PerHeadFused, MlpKind::GeluTanh, true,
       "transformer.word_embeddings", "transformer.layers.{i}", "input_layernorm", "post_attention_layernorm", nullptr,
       nullptr, nullptr, "attention.query_key_value", "attention.dense", nullptr, nullptr, nullptr, "mlp.dense_h_to_4h",
       "mlp.dense_4h_to_h", "transformer.final_layernorm", "lm_head", "query_key_value",
       "query_key_value,dense,dense_h_to_4h,dense_4h_to_h", "chatglm"},
      {"chatglm", "ChatGLM2-6B / ChatGLM3-6B", NormKind::RMS, QkvLayout::PackedBlocks, MlpKind::SwiGLUFused, false,
       "transformer.embedding.word_embeddings", "transformer.encoder.layers.{i}", "input_layernorm",
       "post_attention_layernorm", nullptr, nullptr, nullptr, "self_attention.query_key_value", "self_attention.dense",
       nullptr, nullptr, nullptr, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", "transformer.encoder.final_layernorm",
       "transformer.output_layer", "query_key_value", "query_key_value,dense,dense_h_to_4h,dense_4h_to_h", "chatglm2"},
  };
  return rows;
}

const FamilyRow *find_family(const std::string &model_type) {
  // legacy custom-code Falcon configs (convert_custom_code_checkpoint.py)
  const std::string mt = model_type == "RefinedWebModel" || model_type == "RefinedWeb" ? "falcon" : model_type;
  for (const auto &r : families())
    if (mt == r.model_type) return &r;
  return nullptr;
}

const FamilyRow *find_family_id(const std::string &id) {
  for (const auto &r : families())
    if (id == r.key()) return &r;
  return nullptr;
}

std::string supported_model_types() {
  std::vector<std::string> seen;
  std::string s;
  for (const auto &r : families()) {
    if (std::find(seen.begin(), seen.end(), r.model_type) != seen.end()) continue;
    seen.push_back(r.model_type);
    s += (s.empty() ? "" : ", ") + std::string(r.model_type);
  }
  return s + ", RefinedWebModel, RefinedWeb";
}

std::string layer_name(const char *pattern, int64_t i) {
  std::string p = pattern;
  size_t at = p.find("{i}");
  if (at != std::string::npos) p.replace(at, 3, std::to_string(i));
  return p;
}

namespace {

int64_t first_int(const Json &v, int64_t def, std::vector<int64_t> *rest = nullptr) {
  if (v.is_integer()) return v.as_int();
  if (v.is_array() && v.size() > 0 && v[0].is_integer()) {
    if (rest)
      for (size_t i = 1; i < v.size(); ++i)
        if (v[i].is_integer()) rest->push_back(v[i].as_int());
    return v[0].as_int();
  }
  return def;
}

// The first of `keys` present in j (config.json field names differ between families and releases).
const Json &field(const Json &j, std::initializer_list<const char *> keys) {
  for (const char *k : keys)
    if (j.has(k) && !j.get(k).is_null()) return j.get(k);
  static const Json null_json;
  return null_json;
}

llmt_status need_int_of(const Json &j, std::initializer_list<const char *> keys, const std::string &where, int64_t &out) {
  const Json &v = field(j, keys);
  if (!v.is_integer() || v.as_int() <= 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": \"" + *keys.begin() + "\" must be a positive integer" +
                                             (v.is_null() ? " (it is missing)" : ""));
  }
  out = v.as_int();
  return LLMT_OK;
}

// ALiBi slopes, BLOOM's recipe (build_alibi_tensor): fp32 torch.pow(base, k).
std::vector<float> alibi_bloom(int64_t n) {
  const int64_t m = int64_t(1) << static_cast<int>(std::floor(std::log2(static_cast<double>(n))));
  std::vector<float> s;
  const float base = static_cast<float>(std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(m)) - 3))));
  for (int64_t k = 1; k <= m; ++k) s.push_back(std::pow(base, static_cast<float>(k)));
  if (m != n) {
    const float extra = static_cast<float>(std::pow(2.0, -std::pow(2.0, -(std::log2(2.0 * static_cast<double>(m)) - 3))));
    const int64_t rem = std::min(m, n - m);
    for (int64_t k = 1; k < 1 + 2 * rem; k += 2) s.push_back(std::pow(extra, static_cast<float>(k)));
  }
  return s;
}

// ALiBi slopes, Baichuan-13B's recipe (_get_interleave): start·ratio^i in double, then fp32.
std::vector<double> interleave_pow2(int64_t n) {
  const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(n)) - 3)));
  std::vector<double> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(start * std::pow(start, static_cast<double>(i)));
  return out;
}
std::vector<double> interleave(int64_t n) {
  const double l = std::log2(static_cast<double>(n));
  if (l == std::floor(l)) return interleave_pow2(n);
  const int64_t m = int64_t(1) << static_cast<int>(std::floor(l));
  std::vector<double> out = interleave_pow2(m), more = interleave(2 * m);
  for (int64_t i = 0; i < n - m; ++i) out.push_back(more[static_cast<size_t>(2 * i)]);
  return out;
}

// fp32 → fp16 → fp32 (round to nearest even), for ChatGLM-6B's half-precision inv_freq.
float round_to_half(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t absu = u & 0x7fffffffu;
  float a;
  std::memcpy(&a, &absu, 4);
  if (a < 6.103515625e-05f) {  // subnormal half: quantum 2^-24
    const float q = 5.9604644775390625e-08f;
    float r = std::nearbyint(a / q) * q;
    uint32_t ru;
    std::memcpy(&ru, &r, 4);
    ru |= sign;
    std::memcpy(&r, &ru, 4);
    return r;
  }
  // keep 10 mantissa bits: add half of the dropped 13 bits (ties to even), then truncate
  const uint32_t lsb = (absu >> 13) & 1u;
  uint32_t r = (absu + 0x0fffu + lsb) & ~0x1fffu;
  r |= sign;
  float out;
  std::memcpy(&out, &r, 4);
  return out;
}

}  // namespace

std::vector<float> alibi_slopes_bloom(int64_t n) { return alibi_bloom(n); }
std::vector<float> alibi_slopes_baichuan(int64_t n) {
  std::vector<float> out;
  for (double x : interleave(n)) out.push_back(static_cast<float>(x));
  return out;
}

namespace {
// Llama 3.1's frequency-dependent RoPE scaling (transformers' _compute_llama3_parameters, fp32 as torch computes it):
// wavelengths longer than original_max_position_embeddings / low_freq_factor are divided by `factor`, shorter than
// … / high_freq_factor kept, and those between blended linearly in 1/wavelength. Sets c.rope_freqs.
llmt_status llama3_inv_freq(const Json &rs, const std::string &where, ModelConfig &c) {
  const double factor = rs.get_number("factor", 0.0), low = rs.get_number("low_freq_factor", 0.0),
               high = rs.get_number("high_freq_factor", 0.0);
  const Json &orig = rs.get("original_max_position_embeddings");
  if (!(factor >= 1.0) || !(low > 0) || !(high > low) || !orig.is_integer() || orig.as_int() <= 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": rope_scaling of type llama3 needs factor >= 1, 0 < low_freq_factor < "
                                                 "high_freq_factor and original_max_position_embeddings (Llama 3.1: 8, 1, 4, 8192)");
  }
  const float f = static_cast<float>(factor), lo = static_cast<float>(low), hi = static_cast<float>(high);
  const float old_len = static_cast<float>(orig.as_int());
  const float low_wavelen = old_len / lo, high_wavelen = old_len / hi;
  const float two_pi = static_cast<float>(2.0 * 3.14159265358979323846);
  c.rope_freqs.clear();
  for (int64_t i = 0; i < c.rot_dims / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(c.rot_dims);
    const float inv = 1.0f / static_cast<float>(std::pow(c.rope_theta, static_cast<double>(e)));
    const float wavelen = two_pi / inv;
    const float scaled = wavelen > low_wavelen ? inv / f : inv;  // inv_freq_llama
    float out = scaled;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {  // medium frequencies: smoothed
      const float smooth = (old_len / wavelen - lo) / (hi - lo);
      out = (1.0f - smooth) * scaled / f + smooth * scaled;
    }
    c.rope_freqs.push_back(out);
  }
  return LLMT_OK;
}
// YaRN (transformers' _compute_yarn_parameters): per frequency, a blend of the original (extrapolation) and the
// factor-divided (interpolation) inverse frequency, by a linear ramp between the dimensions that turn beta_fast and
// beta_slow times over the original length; cos and sin are multiplied by the attention factor (0.1·ln(factor) + 1
// unless given). The original length: rope_scaling.original_max_position_embeddings when given (transformers ≥ 4.48
// reads it there), else max_position_embeddings (4.45) — one number when a config has both equal, as Qwen2.5's has.
llmt_status yarn_inv_freq(const Json &rs, const Json &j, const std::string &where, ModelConfig &c) {
  const double factor = rs.get_number("factor", 0.0);
  const Json &orig = rs.get("original_max_position_embeddings");
  const Json &mp = j.get("max_position_embeddings");
  const int64_t L = orig.is_integer() ? orig.as_int() : mp.is_integer() ? mp.as_int() : 0;
  if (!(factor >= 1.0) || L <= 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": rope_scaling of type yarn needs factor >= 1 and a length (original_max_position_embeddings or max_position_embeddings)");
  }
  if (c.rot_dims != c.head_dim) {
    return set_error(LLMT_ERR_UNSUPPORTED, where + ": YaRN with a partial rotary embedding is not supported");
  }
  const Json &af = rs.get("attention_factor");
  double attention = af.is_number() ? af.as_double() : 0.1 * std::log(factor) + 1.0;
  const double beta_fast = rs.get_number("beta_fast", 0.0) > 0 ? rs.get_number("beta_fast", 32.0) : 32.0;
  const double beta_slow = rs.get_number("beta_slow", 0.0) > 0 ? rs.get_number("beta_slow", 1.0) : 1.0;
  const int64_t dim = c.rot_dims;
  const double base = c.rope_theta, pi = 3.14159265358979323846;
  auto corr = [&](double rot) { return (static_cast<double>(dim) * std::log(static_cast<double>(L) / (rot * 2.0 * pi))) / (2.0 * std::log(base)); };
  double low = std::max(std::floor(corr(beta_fast)), 0.0), high = std::min(std::ceil(corr(beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // (as transformers: no division by zero)
  c.rope_freqs.clear();
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float pos = static_cast<float>(std::pow(base, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(dim))));
    const float extrap = 1.0f / pos, interp = 1.0f / (static_cast<float>(factor) * pos);
    const float ramp = std::min(1.0f, std::max(0.0f, static_cast<float>((static_cast<double>(i) - low) / (high - low))));
    const float w = 1.0f - ramp;  // the extrapolation share
    c.rope_freqs.push_back(interp * (1.0f - w) + extrap * w);
  }
  c.attn_factor = static_cast<float>(attention);
  c.rope_extended = static_cast<int64_t>(static_cast<double>(L) * factor);
  return LLMT_OK;
}
}  // namespace

llmt_status parse_config(const Json &j, const std::string &where, ModelConfig &c) {
  if (!j.is_object()) return set_error(LLMT_ERR_BAD_INPUT, where + " is not a JSON object");
  c.model_type = j.get_string("model_type");
  if (c.model_type.empty()) {
    return set_error(LLMT_ERR_BAD_INPUT, where + " has no \"model_type\"; is this a Hugging Face model folder?");
  }
  c.family = find_family(c.model_type);
  if (!c.family) {
    return set_error(LLMT_ERR_UNSUPPORTED, "model_type \"" + c.model_type + "\" (" + where +
                                               ") is not supported by this engine; supported: " +
                                               supported_model_types());
  }
  const std::string &mt = c.model_type;
  // rows that share a model_type: told apart by config.json
  if (mt == "chatglm") {
    // ChatGLM2/3 configs carry multi-query/RMSNorm/kv_channels fields; ChatGLM-6B v1 has position_encoding_2d,
    // inner_hidden_size and max_sequence_length instead.
    const bool v2 = j.has("padded_vocab_size") || j.has("multi_query_attention") || j.has("kv_channels") ||
                    j.has("ffn_hidden_size") || j.has("rmsnorm");
    c.family = find_family_id(v2 ? "chatglm2" : "chatglm");
  } else if (mt == "baichuan") {
    // Baichuan-13B has model_max_length and no max_position_embeddings (MODEL-FAMILIES §4)
    const bool alibi = !j.has("max_position_embeddings") && j.has("model_max_length");
    c.family = find_family_id(alibi ? "baichuan13b" : "baichuan");
  }
  const FamilyRow &f = *c.family;
  const std::string id = f.key();
  c.norm = f.norm;
  c.qkv_layout = f.qkv_layout;
  c.mlp = f.mlp;
  c.attn_norm = f.attn_norm;
  c.mlp_norm = f.mlp_norm;
  c.qkv_bias = c.linear_bias = f.linear_bias;

  llmt_status st;
  const bool glm1 = id == "chatglm", glm2 = id == "chatglm2";
  if ((st = need_int_of(j, {glm2 ? "padded_vocab_size" : "vocab_size", "vocab_size"}, where, c.vocab))) return st;
  if ((st = need_int_of(j, {"hidden_size", "n_embed"}, where, c.hidden))) return st;
  if ((st = need_int_of(j, {"num_hidden_layers", "n_layer", "num_layers"}, where, c.layers))) return st;
  if ((st = need_int_of(j, {"num_attention_heads", "n_head"}, where, c.heads))) return st;
  if (id == "bloom") {
    c.inter = 4 * c.hidden;  // BLOOM's MLP width is fixed at 4H
  } else if (id == "falcon") {
    const Json &ffn = j.get("ffn_hidden_size");
    c.inter = ffn.is_integer() && ffn.as_int() > 0 ? ffn.as_int() : 4 * c.hidden;
  } else if (glm1) {
    const Json &ffn = j.get("inner_hidden_size");
    c.inter = ffn.is_integer() && ffn.as_int() > 0 ? ffn.as_int() : 4 * c.hidden;
  } else if (glm2) {
    if ((st = need_int_of(j, {"ffn_hidden_size"}, where, c.inter))) return st;
  } else {
    if ((st = need_int_of(j, {"intermediate_size"}, where, c.inter))) return st;
  }
  if (glm2 && j.get("kv_channels").is_integer() && j.get("kv_channels").as_int() > 0) {
    c.head_dim = j.get("kv_channels").as_int();  // ChatGLM2's head size need not be hidden / heads
  } else {
    if (c.hidden % c.heads != 0) {
      return set_error(LLMT_ERR_BAD_INPUT, where + ": hidden_size " + std::to_string(c.hidden) +
                                               " is not divisible by num_attention_heads " + std::to_string(c.heads));
    }
    c.head_dim = c.hidden / c.heads;
  }
  c.kv_heads = c.heads;
  auto kv_from = [&](const Json &kv, const char *name) -> llmt_status {
    if (kv.is_null()) return LLMT_OK;
    if (!kv.is_integer() || kv.as_int() <= 0 || c.heads % kv.as_int() != 0) {
      return set_error(LLMT_ERR_BAD_INPUT, where + ": " + name + " must be a positive divisor of num_attention_heads (" +
                                               std::to_string(c.heads) + ")");
    }
    c.kv_heads = kv.as_int();
    return LLMT_OK;
  };
  bool bias_split = false;  // o_bias / mlp_bias set here (else both follow linear_bias)
  const bool llama_like = mt == "llama" || mt == "mistral" || mt == "qwen2";
  if (llama_like || id == "minicpm") {
    if ((st = kv_from(j.get("num_key_value_heads"), "num_key_value_heads"))) return st;
  }
  if (llama_like) {
    // head_dim may differ from hidden_size / heads (Mistral-Nemo: 5120 / 32 heads of 128): q_proj has heads·head_dim
    // rows and o_proj as many columns, as in transformers' LlamaAttention
    const Json &hd = j.get("head_dim");
    if (!hd.is_null()) {
      if (!hd.is_integer() || hd.as_int() <= 0) return set_error(LLMT_ERR_BAD_INPUT, where + ": head_dim must be a positive integer");
      c.head_dim = hd.as_int();
    }
    // the biases: Qwen2Attention has them on q/k/v (not o), MistralAttention nowhere — both fixed in their code, not
    // in config.json; LlamaConfig's attention_bias puts them on q, k, v and o, its mlp_bias on the MLP
    if (mt == "qwen2") c.qkv_bias = true;
    if (mt == "llama") {
      c.qkv_bias = c.o_bias = j.get_bool("attention_bias", false);
      c.mlp_bias = j.get_bool("mlp_bias", false);
      bias_split = true;
    }
    // sliding-window attention: Mistral's sliding_window (null in v0.2 and later) in every layer; Qwen2's only with
    // use_sliding_window, and then in the layers from max_window_layers on (Qwen2Config's default 28; transformers'
    // layer_types): with that at or past the layer count no layer is windowed
    const Json &sw = j.get("sliding_window");
    const bool windowed = mt == "mistral" ? !sw.is_null() : mt == "qwen2" && j.get_bool("use_sliding_window", false) && !sw.is_null();
    if (windowed) {
      if (!sw.is_integer() || sw.as_int() <= 0) return set_error(LLMT_ERR_BAD_INPUT, where + ": sliding_window must be a positive integer or null");
      const int64_t from = mt == "qwen2" ? std::max<int64_t>(0, j.get_int("max_window_layers", 28)) : 0;
      if (from < j.get_int("num_hidden_layers", 0)) {
        c.sliding_window = sw.as_int();
        c.window_from_layer = from;
      }
    }
  }
  // the per-head tables (ALiBi slopes, RoPE frequencies) are built below, before any weight is seen: a head count or
  // size no model comes near (1e9 heads: gigabytes of slopes) is refused here; the load checks the real sizes against
  // the weights' headers
  constexpr int64_t kMaxPerHead = int64_t(1) << 20;
  if (c.heads > kMaxPerHead || c.head_dim > kMaxPerHead) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": " + std::to_string(c.heads) + " attention heads of size " +
                                             std::to_string(c.head_dim) + " is far beyond any model (at most " +
                                             std::to_string(kMaxPerHead) + " of each); is config.json damaged?");
  }
  c.rot_dims = c.head_dim;
  c.rope_theta = 10000.0;
  if (mt == "gpt_neox") {
    // transformers ≥ 4.45 also writes partial_rotary_factor (and newer configs may carry only it); with neither,
    // GPTNeoXConfig's default rotary_pct is 0.25 (a quarter of each head rotated), not the whole head
    double pct = j.get_number("rotary_pct", j.get_number("partial_rotary_factor", 0.25));
    c.rot_dims = static_cast<int64_t>(c.head_dim * pct);  // int(head_dim * rotary_pct), as HF
    c.rope_theta = j.get_number("rotary_emb_base", j.get_number("rope_theta", 10000.0));
    c.norm_eps = j.get_number("layer_norm_eps", 1e-5);
    c.parallel_residual = j.get_bool("use_parallel_residual", true);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", false);
    if (j.get_string("hidden_act", "gelu") != "gelu") {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": gpt_neox hidden_act \"" + j.get_string("hidden_act") + "\" is not supported (only \"gelu\")");
    }
    if (j.get_bool("attention_bias", true) == false) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": gpt_neox without attention biases is not supported yet");
    }
  } else if (id == "bloom") {
    c.pos = PosKind::Alibi;
    c.alibi = alibi_bloom(c.heads);
    c.rot_dims = 0;
    c.norm_eps = j.get_number("layer_norm_epsilon", 1e-5);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", true);
    if (j.get_bool("apply_residual_connection_post_layernorm", false)) c.residual_from_norm = true;
  } else if (id == "falcon") {
    // legacy RW configs: new_decoder_architecture ⇔ n_head_kv present (convert_custom_code_checkpoint.py)
    const bool legacy = mt != "falcon";
    const bool new_arch = legacy ? j.has("n_head_kv") : j.get_bool("new_decoder_architecture", false);
    const bool multi_query = j.get_bool("multi_query", true);
    c.parallel_residual = j.get_bool("parallel_attn", true);
    c.qkv_bias = c.linear_bias = j.get_bool("bias", false);
    c.norm_eps = j.get_number("layer_norm_epsilon", 1e-5);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", true);
    c.rope_theta = j.get_number("rope_theta", 10000.0);
    if (j.get_bool("alibi", false)) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": Falcon with alibi (falcon-rw) is not supported yet; falcon-7b/40b use RoPE");
    }
    if (j.get_string("activation", "gelu") != "gelu") {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": Falcon activation \"" + j.get_string("activation") + "\" is not supported (only \"gelu\")");
    }
    const Json &kv = field(j, {"num_kv_heads", "n_head_kv"});
    if (new_arch) {
      if ((st = kv_from(kv, "num_kv_heads"))) return st;
      c.qkv_layout = QkvLayout::GroupedFused;
      if (!c.parallel_residual) {
        return set_error(LLMT_ERR_UNSUPPORTED, where + ": Falcon's new decoder architecture without parallel_attn is not supported");
      }
      const Json &nln = j.get("num_ln_in_parallel_attn");
      if (nln.is_null() || nln.as_int() == 2) {
        c.attn_norm = "ln_attn";
        c.mlp_norm = "ln_mlp";
      } else {
        c.attn_norm = "input_layernorm";
        c.mlp_norm.clear();  // one norm feeds both branches
      }
    } else if (multi_query) {
      c.kv_heads = 1;
      c.qkv_layout = QkvLayout::PackedBlocks;  // [Q (n·d) | K (d) | V (d)]
    } else {
      if ((st = kv_from(kv, "num_kv_heads"))) return st;
      if (c.kv_heads != c.heads) {
        return set_error(LLMT_ERR_UNSUPPORTED, where + ": Falcon with num_kv_heads < heads needs new_decoder_architecture");
      }
      c.qkv_layout = QkvLayout::PerHeadFused;
    }
    if (!new_arch && c.parallel_residual) c.mlp_norm.clear();  // falcon-7b: one input_layernorm for both branches
  } else if (glm1) {
    if (!j.get_bool("position_encoding_2d", true)) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": ChatGLM-6B with position_encoding_2d false is not supported");
    }
    if (!j.get("pre_seq_len").is_null() || j.get_int("quantization_bit", 0) != 0) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": P-tuning (pre_seq_len) and quantized (quantization_bit) ChatGLM checkpoints are not supported; use the fp16 base model");
    }
    c.pos = PosKind::Rope2D;
    c.rot_dims = c.head_dim / 2;
    c.norm_eps = j.get_number("layernorm_epsilon", 1e-5);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", true);
    c.residual_from_norm = true;
    c.residual_alpha = static_cast<float>(std::sqrt(2.0 * 28.0));  // GLMBlock's num_layers=28 default, never overridden
    c.mask_id = j.get_int("mask_token_id", 130000);
    c.gmask_id = j.get_int("gmask_token_id", 130001);
    // inv_freq = (1/10000^(arange(0, d/2, 2)/(d/2))).half(): fp16-valued
    const int64_t dim = c.head_dim / 2;
    for (int64_t i = 0; i < dim / 2; ++i) {
      const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
      c.rope_freqs.push_back(round_to_half(1.0f / static_cast<float>(std::pow(10000.0, static_cast<double>(e)))));
    }
    if (c.head_dim % 4 != 0) return set_error(LLMT_ERR_BAD_INPUT, where + ": ChatGLM-6B needs a head size divisible by 4");
  } else if (glm2) {
    if (j.get_bool("multi_query_attention", false)) {  // [Q | K (G·c) | V (G·c)]
      if ((st = kv_from(j.get("multi_query_group_num"), "multi_query_group_num"))) return st;
      if (j.get("multi_query_group_num").is_null()) c.kv_heads = 1;
    } else {
      c.qkv_layout = QkvLayout::PerHeadFused;  // view [n, 3c], split in three
    }
    if (!j.get_bool("rmsnorm", true) || !j.get_bool("post_layer_norm", true)) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": ChatGLM2 with rmsnorm or post_layer_norm false is not supported");
    }
    if (!j.get("pre_seq_len").is_null()) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": P-tuning v2 checkpoints (pre_seq_len) are not supported");
    }
    c.qkv_bias = j.get_bool("add_qkv_bias", false);
    c.linear_bias = j.get_bool("add_bias_linear", false);
    c.pos = PosKind::RopeInterleaved;
    c.rot_dims = c.head_dim / 2;
    c.norm_eps = j.get_number("layernorm_epsilon", 1e-5);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", false);
    if (j.get_bool("apply_residual_connection_post_layernorm", false)) c.residual_from_norm = true;
    if (c.head_dim % 4 != 0) return set_error(LLMT_ERR_BAD_INPUT, where + ": ChatGLM2 needs kv_channels divisible by 4");
  } else {
    // llama-like: llama, mistral, qwen2, baichuan (7B and 13B), minicpm
    c.rope_theta = j.get_number("rope_theta", 10000.0);
    c.norm_eps = j.get_number("rms_norm_eps", 1e-6);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", id == "minicpm");
    std::string act = j.get_string("hidden_act", "silu");
    if (act != "silu" && act != "swish") {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": hidden_act \"" + act + "\" is not supported for " + mt + " (only \"silu\")");
    }
    if (id == "baichuan13b") {
      c.pos = PosKind::Alibi;
      c.alibi = alibi_slopes_baichuan(c.heads);
      c.rot_dims = 0;
    }
    if (id == "minicpm") {
      const double scale_emb = j.get_number("scale_emb", 1.0), base = j.get_number("dim_model_base", 1.0),
                   depth = j.get_number("scale_depth", 1.0);
      if (!(base > 0)) return set_error(LLMT_ERR_BAD_INPUT, where + ": dim_model_base must be positive");
      if (j.get_int("pretraining_tp", 1) > 1) {
        return set_error(LLMT_ERR_UNSUPPORTED, where + ": MiniCPM with pretraining_tp > 1 (which skips the logit scaling) is not supported");
      }
      c.embed_scale = static_cast<float>(scale_emb);
      c.branch_scale = static_cast<float>(depth / std::sqrt(static_cast<double>(c.layers)));
      c.logit_scale = static_cast<float>(1.0 / (static_cast<double>(c.hidden) / base));
    }
  }
  if (c.rot_dims % 2 != 0 || c.rot_dims < 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": rotary dims per head (" + std::to_string(c.rot_dims) + ") must be even");
  }
  if (c.pos == PosKind::Rope) {
    // transformers 5 folds rope_theta and the scaling into "rope_parameters"
    const Json &rp = j.get("rope_parameters");
    if (rp.is_object() && rp.has("rope_theta")) c.rope_theta = rp.get_number("rope_theta", c.rope_theta);
    const Json &rs = !j.get("rope_scaling").is_null() ? j.get("rope_scaling") : rp;
    if (!rs.is_null()) {
      // transformers ≥ 4.43 names it rope_type (and maps a "type" to it); either may be present
      std::string type = rs.get_string("rope_type", rs.get_string("type"));
      double factor = rs.get_number("factor", 1.0);
      if (type == "linear") {
        if (!(factor >= 1.0)) return set_error(LLMT_ERR_BAD_INPUT, where + ": rope_scaling.factor must be >= 1");
        c.rope_linear_factor = factor;
      } else if (type == "llama3") {
        if ((st = llama3_inv_freq(rs, where, c))) return st;
      } else if (type == "yarn") {
        if ((st = yarn_inv_freq(rs, j, where, c))) return st;
      } else if (type == "dynamic") {
        // dynamic NTK: transformers rescales the base only for sequences longer than max_position_embeddings; within
        // them the frequencies are the default ones — and the engine keeps to them (context_limit)
        if (!(factor >= 1.0)) return set_error(LLMT_ERR_BAD_INPUT, where + ": rope_scaling.factor must be >= 1");
      } else if (type != "default" && !type.empty()) {
        return set_error(LLMT_ERR_UNSUPPORTED, where + ": rope_scaling type \"" + type +
                                                   "\" is not supported yet (supported: linear, llama3, yarn, dynamic within max_position_embeddings)");
      }
      if (type != "default") c.rope_scaling = type;
    }
  }
  if (!bias_split) c.o_bias = c.mlp_bias = c.linear_bias;
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps)) return set_error(LLMT_ERR_BAD_INPUT, where + ": the norm epsilon must be positive");
  c.max_positions_given = field(j, {"max_position_embeddings", "model_max_length", "max_sequence_length", "seq_length", "n_positions"}).is_integer();
  c.max_positions = c.max_positions_given
                        ? field(j, {"max_position_embeddings", "model_max_length", "max_sequence_length", "seq_length", "n_positions"}).as_int()
                        : 2048;
  c.bos_id = first_int(j.get("bos_token_id"), -1);
  c.eos_id = first_int(j.get("eos_token_id"), -1, &c.extra_eos);
  c.pad_id = first_int(j.get("pad_token_id"), -1);
  c.stop_ids.clear();
  if (c.eos_id >= 0) c.stop_ids.push_back(c.eos_id);
  for (auto e : c.extra_eos) c.stop_ids.push_back(e);
  return LLMT_OK;
}

llmt_status read_model_config(const std::string &dir, std::string &text) {
  llmt_status st = read_text_file(dir + "/config.json", text);
  if (st == LLMT_OK) return st;
  const std::string why = llmt_last_error();
  // an adapter folder given where the model goes (a common slip: the run's output folder holds only the adapter)
  std::string atext, err;
  Json a;
  std::error_code ec;
  if (std::filesystem::exists(dir + "/adapter_config.json", ec) && read_text_file(dir + "/adapter_config.json", atext) == LLMT_OK &&
      Json::parse(atext, a, err) && a.is_object()) {
    const std::string base = a.get_string("base_model_name_or_path");
    return set_error(LLMT_ERR_BAD_INPUT, dir + " is a PEFT adapter (it holds adapter_config.json, no config.json), not a model: " +
                                             "give it as the adapter (--adapter " + dir + ") and its base model" +
                                             (base.empty() ? "" : " (" + base + ", from its adapter_config.json)") + " as the model");
  }
  clear_error();
  return set_error(st, why + " (a Hugging Face model folder must contain config.json)");
}

llmt_status load_config(const std::string &dir, ModelConfig &out) {
  std::string path = dir + "/config.json";
  std::string text;
  llmt_status st = read_model_config(dir, text);
  if (st != LLMT_OK) return st;
  Json j;
  std::string err;
  if (!Json::parse(text, j, err)) return set_error(LLMT_ERR_BAD_INPUT, path + " is not valid JSON: " + err);
  // transformers 5 writes rope_theta (and partial_rotary_factor) inside "rope_parameters": the top level wins when
  // both are present, as in transformers' own back-compatibility
  const Json rp = j.get("rope_parameters");
  if (j.is_object() && rp.is_object())
    for (const char *k : {"rope_theta", "partial_rotary_factor"})
      if (!j.has(k) && rp.has(k)) j.set(k, rp.get(k));
  if ((st = parse_config(j, path, out)) != LLMT_OK) return st;
  // generation_config.json's eos_token_id decides where HF's generate stops (a list, e.g. Llama-3-Instruct's [eos,
  // eot]). Without that key HF would not stop at all; we keep config.json's ids (the app's tokenizer does the same).
  // A file that does not parse is left alone here (training does not need it)
  std::string gtext;
  Json g;
  std::string gerr;
  std::error_code ec;
  if (std::filesystem::exists(dir + "/generation_config.json", ec) && read_text_file(dir + "/generation_config.json", gtext) == LLMT_OK &&
      Json::parse(gtext, g, gerr) && g.is_object() && g.has("eos_token_id") && !g.get("eos_token_id").is_null()) {
    out.stop_ids.clear();
    std::vector<int64_t> rest;
    const int64_t first = first_int(g.get("eos_token_id"), -1, &rest);
    if (first >= 0) out.stop_ids.push_back(first);
    for (auto e : rest)
      if (e >= 0) out.stop_ids.push_back(e);
  }
  clear_error();
  return LLMT_OK;
}

}  // namespace llmt
