// family.cpp — the rows of the model-family table and config.json parsing (see family.hpp).
// Facts per family come from shared/MODEL-FAMILIES.md (HF transformers / the families' own code).
#include "family.hpp"

#include <cmath>

#include "safetensors.hpp"
#include "status.hpp"

namespace llmt {

const std::vector<FamilyRow> &families() {
  static const std::vector<FamilyRow> rows = {
      {"llama", "LLaMA (Chinese-LLaMA-Alpaca, Open-LLaMA, BELLE-LLaMA, TigerBot v2)", NormKind::RMS, QkvLayout::Separate,
       MlpKind::SwiGLU, false, "model.embed_tokens", "model.layers.{i}", "input_layernorm", "post_attention_layernorm",
       "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", nullptr, "self_attn.o_proj", "mlp.gate_proj",
       "mlp.up_proj", "mlp.down_proj", nullptr, nullptr, "model.norm", "lm_head", "q_proj,v_proj",
       "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"},
      {"baichuan", "Baichuan-7B", NormKind::RMS, QkvLayout::PackedBlocks, MlpKind::SwiGLU, false, "model.embed_tokens",
       "model.layers.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr, nullptr, "self_attn.W_pack",
       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", nullptr, nullptr, "model.norm", "lm_head",
       "W_pack", "W_pack,o_proj,gate_proj,up_proj,down_proj"},
      {"gpt_neox", "GPT-NeoX / Pythia", NormKind::Layer, QkvLayout::PerHeadFused, MlpKind::Gelu, true, "gpt_neox.embed_in",
       "gpt_neox.layers.{i}", "input_layernorm", "post_attention_layernorm", nullptr, nullptr, nullptr,
       "attention.query_key_value", "attention.dense", nullptr, nullptr, nullptr, "mlp.dense_h_to_4h",
       "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "embed_out", "query_key_value",
       "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"},
  };
  return rows;
}

const FamilyRow *find_family(const std::string &model_type) {
  for (const auto &r : families())
    if (model_type == r.model_type) return &r;
  return nullptr;
}

std::string supported_model_types() {
  std::string s;
  for (const auto &r : families()) {
    if (!s.empty()) s += ", ";
    s += r.model_type;
  }
  return s;
}

std::string layer_name(const char *pattern, int64_t i) {
  std::string p = pattern;
  size_t at = p.find("{i}");
  if (at != std::string::npos) p.replace(at, 3, std::to_string(i));
  return p;
}

namespace {

llmt_status need_int(const Json &j, const char *key, const std::string &where, int64_t &out) {
  const Json &v = j.get(key);
  if (!v.is_integer() || v.as_int() <= 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": \"" + key + "\" must be a positive integer" +
                                             (v.is_null() ? " (it is missing)" : ""));
  }
  out = v.as_int();
  return LLMT_OK;
}

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
  llmt_status st;
  if ((st = need_int(j, "vocab_size", where, c.vocab))) return st;
  if ((st = need_int(j, "hidden_size", where, c.hidden))) return st;
  if ((st = need_int(j, "intermediate_size", where, c.inter))) return st;
  if ((st = need_int(j, "num_hidden_layers", where, c.layers))) return st;
  if ((st = need_int(j, "num_attention_heads", where, c.heads))) return st;
  if (c.hidden % c.heads != 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": hidden_size " + std::to_string(c.hidden) +
                                             " is not divisible by num_attention_heads " + std::to_string(c.heads));
  }
  c.head_dim = c.hidden / c.heads;
  c.kv_heads = c.heads;
  const std::string &mt = c.model_type;
  if (mt == "llama") {
    const Json &kv = j.get("num_key_value_heads");
    if (!kv.is_null()) {
      if (!kv.is_integer() || kv.as_int() <= 0 || c.heads % kv.as_int() != 0) {
        return set_error(LLMT_ERR_BAD_INPUT, where + ": num_key_value_heads must be a positive divisor of "
                                                     "num_attention_heads (" + std::to_string(c.heads) + ")");
      }
      c.kv_heads = kv.as_int();
    }
    if (j.has("head_dim") && j.get("head_dim").is_integer() && j.get("head_dim").as_int() != c.head_dim) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": a head_dim different from hidden_size / num_attention_heads is not supported yet");
    }
    if (j.get_bool("attention_bias", false) || j.get_bool("mlp_bias", false)) {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": attention_bias/mlp_bias LLaMA variants are not supported yet");
    }
  }
  c.rot_dims = c.head_dim;
  if (mt == "gpt_neox") {
    // transformers ≥ 4.45 also writes partial_rotary_factor (and newer configs may carry only it)
    double pct = j.get_number("rotary_pct", j.get_number("partial_rotary_factor", 1.0));
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
  } else {
    c.rope_theta = j.get_number("rope_theta", 10000.0);
    c.norm_eps = j.get_number("rms_norm_eps", 1e-6);
    c.tie_embeddings = j.get_bool("tie_word_embeddings", false);
    std::string act = j.get_string("hidden_act", "silu");
    if (act != "silu" && act != "swish") {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": hidden_act \"" + act + "\" is not supported for " + mt + " (only \"silu\")");
    }
  }
  if (c.rot_dims % 2 != 0 || c.rot_dims < 0) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": rotary dims per head (" + std::to_string(c.rot_dims) + ") must be even");
  }
  // transformers 5 folds rope_theta and the scaling into "rope_parameters"
  const Json &rp = j.get("rope_parameters");
  if (rp.is_object() && rp.has("rope_theta")) c.rope_theta = rp.get_number("rope_theta", c.rope_theta);
  const Json &rs = !j.get("rope_scaling").is_null() ? j.get("rope_scaling") : rp;
  if (!rs.is_null()) {
    std::string type = rs.get_string("type", rs.get_string("rope_type"));
    double factor = rs.get_number("factor", 1.0);
    if (type == "linear") {
      if (!(factor >= 1.0)) return set_error(LLMT_ERR_BAD_INPUT, where + ": rope_scaling.factor must be >= 1");
      c.rope_linear_factor = factor;
    } else if (type != "default") {
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": rope_scaling type \"" + type + "\" is not supported yet (only \"linear\")");
    }
  }
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps)) return set_error(LLMT_ERR_BAD_INPUT, where + ": the norm epsilon must be positive");
  c.max_positions = j.get_int("max_position_embeddings", 2048);
  c.bos_id = first_int(j.get("bos_token_id"), -1);
  c.eos_id = first_int(j.get("eos_token_id"), -1, &c.extra_eos);
  c.pad_id = first_int(j.get("pad_token_id"), -1);
  return LLMT_OK;
}

llmt_status load_config(const std::string &dir, ModelConfig &out) {
  std::string path = dir + "/config.json";
  std::string text;
  llmt_status st = read_text_file(path, text);
  if (st != LLMT_OK) {
    return set_error(st, std::string(llmt_last_error()) + " (a Hugging Face model folder must contain config.json)");
  }
  Json j;
  std::string err;
  if (!Json::parse(text, j, err)) return set_error(LLMT_ERR_BAD_INPUT, path + " is not valid JSON: " + err);
  return parse_config(j, path, out);
}

}  // namespace llmt
