// tiny.cpp — `create-tiny`: a tiny random model of a family as a real HF folder (config.json,
// model.safetensors, a byte-level BPE tokenizer.json with its configs, generation_config.json), for tests,
// parity checks against HF transformers and the embedded demo. Deterministic for a given seed.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "family.hpp"
#include "json.hpp"
#include "model.hpp"
#include "rng.hpp"
#include "safetensors.hpp"
#include "status.hpp"

namespace llmt {

llmt_status make_directories(const std::string &dir);  // adapter.cpp

namespace {

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// GPT-2's bytes_to_unicode table: printable bytes map to themselves, the rest to 256 + n.
std::vector<uint32_t> byte_chars() {
  std::vector<uint32_t> out(256);
  std::vector<bool> printable(256, false);
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) out[b] = printable[b] ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
  return out;
}

const char *kSpecials[4] = {"<pad>", "<s>", "</s>", "<unk>"};

// Family-specific special tokens appended after the 256 byte tokens (ids 260…): ChatGLM's mask/sop/eop.
std::vector<std::string> family_specials(const std::string &family) {
  if (family == "chatglm") return {"[MASK]", "[gMASK]", "<sop>", "<eop>"};            // 260 … 263
  if (family == "chatglm2") return {"[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"};  // 260 … 264
  return {};
}

Json tokenizer_json(const std::vector<std::string> &extra) {
  Json t = Json::object();
  t.set("version", Json::string("1.0"));
  t.set("truncation", Json());
  t.set("padding", Json());
  Json added = Json::array();
  for (int i = 0; i < 4; ++i) {
    Json a = Json::object();
    a.set("id", Json::integer(i));
    a.set("content", Json::string(kSpecials[i]));
    a.set("single_word", Json::boolean(false));
    a.set("lstrip", Json::boolean(false));
    a.set("rstrip", Json::boolean(false));
    a.set("normalized", Json::boolean(false));
    a.set("special", Json::boolean(true));
    added.push(a);
  }
  for (size_t i = 0; i < extra.size(); ++i) {
    Json a = Json::object();
    a.set("id", Json::integer(static_cast<int64_t>(260 + i)));
    a.set("content", Json::string(extra[i]));
    a.set("single_word", Json::boolean(false));
    a.set("lstrip", Json::boolean(false));
    a.set("rstrip", Json::boolean(false));
    a.set("normalized", Json::boolean(false));
    a.set("special", Json::boolean(true));
    added.push(a);
  }
  t.set("added_tokens", added);
  t.set("normalizer", Json());
  Json pre = Json::object();
  pre.set("type", Json::string("ByteLevel"));
  pre.set("add_prefix_space", Json::boolean(false));
  pre.set("trim_offsets", Json::boolean(true));
  pre.set("use_regex", Json::boolean(true));
  t.set("pre_tokenizer", pre);
  t.set("post_processor", Json());
  Json dec = Json::object();
  dec.set("type", Json::string("ByteLevel"));
  dec.set("add_prefix_space", Json::boolean(true));
  dec.set("trim_offsets", Json::boolean(true));
  dec.set("use_regex", Json::boolean(true));
  t.set("decoder", dec);
  Json model = Json::object();
  model.set("type", Json::string("BPE"));
  model.set("dropout", Json());
  model.set("unk_token", Json());
  model.set("continuing_subword_prefix", Json());
  model.set("end_of_word_suffix", Json());
  model.set("fuse_unk", Json::boolean(false));
  model.set("byte_fallback", Json::boolean(false));
  Json vocab = Json::object();
  for (int i = 0; i < 4; ++i) vocab.set(kSpecials[i], Json::integer(i));
  auto chars = byte_chars();
  for (int b = 0; b < 256; ++b) vocab.set(utf8(chars[b]), Json::integer(4 + b));
  for (size_t i = 0; i < extra.size(); ++i) vocab.set(extra[i], Json::integer(static_cast<int64_t>(260 + i)));
  model.set("vocab", vocab);
  model.set("merges", Json::array());
  t.set("model", model);
  return t;
}

}  // namespace

llmt_status create_tiny(const std::string &family, const std::string &out, uint64_t seed) {
  Json c = Json::object();
  // "demo": the embedded demo's model (a llama of 590k parameters, HF's random init, vocab 1024 for the
  // BPE tokenizer shipped in resources/demo; recipe in bench/demo-recipe/RECIPE.md)
  const bool demo = family == "demo";
  const int64_t V = demo ? 1024 : 320, H = demo ? 128 : 64, L = 2, nh = 4;
  Json arch = Json::array();
  if (demo) {
    arch.push(Json::string("LlamaForCausalLM"));
    c.set("model_type", Json::string("llama"));
    c.set("intermediate_size", Json::integer(256));
    c.set("num_key_value_heads", Json::integer(4));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-6));
    c.set("rope_theta", Json::number(10000.0));
  } else if (family == "llama") {
    arch.push(Json::string("LlamaForCausalLM"));
    c.set("model_type", Json::string("llama"));
    c.set("intermediate_size", Json::integer(128));
    c.set("num_key_value_heads", Json::integer(2));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-6));
    c.set("rope_theta", Json::number(10000.0));
  } else if (family == "llama3" || family == "llama_bias") {
    // llama3: Llama 3.1/3.2's recipe (rope_type llama3 — original length 64 here, so the 8 frequencies of a 16-wide
    // head fall in all three bands — rope_theta 500000, a tied head as Llama-3.2-1B/3B); llama_bias: LlamaConfig's
    // attention_bias (q, k, v, o) and a head_dim other than hidden_size / heads (24 × 4 heads on a 64-wide model)
    arch.push(Json::string("LlamaForCausalLM"));
    c.set("model_type", Json::string("llama"));
    c.set("intermediate_size", Json::integer(128));
    c.set("num_key_value_heads", Json::integer(2));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-5));
    if (family == "llama3") {
      c.set("rope_theta", Json::number(500000.0));
      Json rs = Json::object();
      rs.set("rope_type", Json::string("llama3"));
      rs.set("factor", Json::number(8.0));
      rs.set("low_freq_factor", Json::number(1.0));
      rs.set("high_freq_factor", Json::number(4.0));
      rs.set("original_max_position_embeddings", Json::integer(64));
      c.set("rope_scaling", rs);
    } else {
      c.set("rope_theta", Json::number(10000.0));
      c.set("attention_bias", Json::boolean(true));
      c.set("mlp_bias", Json::boolean(false));
      c.set("head_dim", Json::integer(24));
    }
  } else if (family == "mistral") {  // Mistral-7B-v0.1's fields; head_dim ≠ hidden / heads as Mistral-Nemo
    arch.push(Json::string("MistralForCausalLM"));
    c.set("model_type", Json::string("mistral"));
    c.set("intermediate_size", Json::integer(128));
    c.set("num_key_value_heads", Json::integer(2));
    c.set("head_dim", Json::integer(24));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-5));
    c.set("rope_theta", Json::number(1000000.0));
    c.set("sliding_window", Json::integer(4096));
  } else if (family == "qwen2") {  // Qwen2.5-0.5B's fields: q/k/v biases, tied head, window off
    arch.push(Json::string("Qwen2ForCausalLM"));
    c.set("model_type", Json::string("qwen2"));
    c.set("intermediate_size", Json::integer(128));
    c.set("num_key_value_heads", Json::integer(2));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-6));
    c.set("rope_theta", Json::number(1000000.0));
    c.set("use_sliding_window", Json::boolean(false));
    c.set("sliding_window", Json::integer(4096));
    c.set("max_window_layers", Json::integer(2));
  } else if (family == "baichuan") {
    arch.push(Json::string("BaiChuanForCausalLM"));
    c.set("model_type", Json::string("baichuan"));
    c.set("intermediate_size", Json::integer(128));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-6));
  } else if (family == "gpt_neox") {
    arch.push(Json::string("GPTNeoXForCausalLM"));
    c.set("model_type", Json::string("gpt_neox"));
    c.set("intermediate_size", Json::integer(256));
    c.set("hidden_act", Json::string("gelu"));
    c.set("rotary_pct", Json::number(0.25));
    c.set("rotary_emb_base", Json::integer(10000));
    c.set("layer_norm_eps", Json::number(1e-5));
    c.set("use_parallel_residual", Json::boolean(true));
  } else if (family == "bloom") {  // also TigerBot-7b v1; real BloomConfig field names (n_layer, n_head)
    arch.push(Json::string("BloomForCausalLM"));
    c.set("model_type", Json::string("bloom"));
    c.set("n_layer", Json::integer(L));
    c.set("n_head", Json::integer(nh));
    c.set("layer_norm_epsilon", Json::number(1e-5));
    c.set("apply_residual_connection_post_layernorm", Json::boolean(false));
    c.set("pretraining_tp", Json::integer(1));
    c.set("slow_but_exact", Json::boolean(false));
  } else if (family == "falcon" || family == "falcon40b") {
    // falcon: falcon-7b's layout (multi-query, parallel attention + MLP, one norm); falcon40b: the new decoder
    // architecture (grouped kv heads, ln_attn + ln_mlp)
    arch.push(Json::string("FalconForCausalLM"));
    c.set("model_type", Json::string("falcon"));
    const bool big = family == "falcon40b";
    c.set("new_decoder_architecture", Json::boolean(big));
    c.set("multi_query", Json::boolean(!big));
    c.set("num_kv_heads", big ? Json::integer(2) : Json());
    c.set("parallel_attn", Json::boolean(true));
    c.set("bias", Json::boolean(false));
    c.set("alibi", Json::boolean(false));
    c.set("layer_norm_epsilon", Json::number(1e-5));
    c.set("rope_theta", Json::number(10000.0));
    c.set("activation", Json::string("gelu"));
  } else if (family == "minicpm") {
    arch.push(Json::string("MiniCPMForCausalLM"));
    c.set("model_type", Json::string("minicpm"));
    Json am = Json::object();
    am.set("AutoConfig", Json::string("configuration_minicpm.MiniCPMConfig"));
    am.set("AutoModelForCausalLM", Json::string("modeling_minicpm.MiniCPMForCausalLM"));
    c.set("auto_map", am);
    c.set("intermediate_size", Json::integer(128));
    c.set("num_key_value_heads", Json::integer(2));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-5));
    c.set("rope_theta", Json::number(10000.0));
    c.set("scale_emb", Json::number(12));
    c.set("dim_model_base", Json::integer(16));  // H / dim_model_base = 4: logits = lm_head(norm(x) / 4)
    c.set("scale_depth", Json::number(1.4));
  } else if (family == "baichuan13b") {  // Baichuan-13B: model_max_length instead of max_position_embeddings
    arch.push(Json::string("BaichuanForCausalLM"));
    c.set("model_type", Json::string("baichuan"));
    Json am = Json::object();
    am.set("AutoConfig", Json::string("configuration_baichuan.BaichuanConfig"));
    am.set("AutoModelForCausalLM", Json::string("modeling_baichuan.BaichuanForCausalLM"));
    c.set("auto_map", am);
    c.set("intermediate_size", Json::integer(128));
    c.set("hidden_act", Json::string("silu"));
    c.set("rms_norm_eps", Json::number(1e-6));
    c.set("model_max_length", Json::integer(512));
    c.set("gradient_checkpointing", Json::boolean(false));
  } else if (family == "chatglm2") {  // THUDM/chatglm2-6b's config.json fields
    arch.push(Json::string("ChatGLMModel"));
    c.set("model_type", Json::string("chatglm"));
    Json am = Json::object();
    am.set("AutoConfig", Json::string("configuration_chatglm.ChatGLMConfig"));
    am.set("AutoModel", Json::string("modeling_chatglm.ChatGLMForConditionalGeneration"));
    am.set("AutoModelForCausalLM", Json::string("modeling_chatglm.ChatGLMForConditionalGeneration"));
    c.set("auto_map", am);
    c.set("padded_vocab_size", Json::integer(V));
    c.set("num_layers", Json::integer(L));
    c.set("kv_channels", Json::integer(H / nh));
    c.set("ffn_hidden_size", Json::integer(96));
    c.set("multi_query_attention", Json::boolean(true));
    c.set("multi_query_group_num", Json::integer(2));
    c.set("add_qkv_bias", Json::boolean(true));
    c.set("add_bias_linear", Json::boolean(false));
    c.set("rmsnorm", Json::boolean(true));
    c.set("layernorm_epsilon", Json::number(1e-5));
    c.set("post_layer_norm", Json::boolean(true));
    c.set("apply_residual_connection_post_layernorm", Json::boolean(false));
    c.set("apply_query_key_layer_scaling", Json::boolean(true));
    c.set("attention_softmax_in_fp32", Json::boolean(true));
    c.set("fp32_residual_connection", Json::boolean(false));
    c.set("seq_length", Json::integer(512));
    c.set("original_rope", Json::boolean(true));
  } else if (family == "chatglm") {  // THUDM/chatglm-6b (v1)'s config.json fields
    arch.push(Json::string("ChatGLMModel"));
    c.set("model_type", Json::string("chatglm"));
    Json am = Json::object();
    am.set("AutoConfig", Json::string("configuration_chatglm.ChatGLMConfig"));
    am.set("AutoModel", Json::string("modeling_chatglm.ChatGLMForConditionalGeneration"));
    am.set("AutoModelForSeq2SeqLM", Json::string("modeling_chatglm.ChatGLMForConditionalGeneration"));
    c.set("auto_map", am);
    c.set("num_layers", Json::integer(L));
    c.set("inner_hidden_size", Json::integer(256));
    c.set("layernorm_epsilon", Json::number(1e-5));
    c.set("max_sequence_length", Json::integer(512));
    c.set("position_encoding_2d", Json::boolean(true));
    c.set("mask_token_id", Json::integer(260));
    c.set("gmask_token_id", Json::integer(261));
    c.set("quantization_bit", Json::integer(0));
    c.set("pre_seq_len", Json());
    c.set("prefix_projection", Json::boolean(false));
  } else {
    return set_error(LLMT_ERR_UNSUPPORTED, "create-tiny: unknown family \"" + family +
                                               "\" (supported: llama, llama3, llama_bias, mistral, qwen2, baichuan, baichuan13b, gpt_neox, bloom, falcon, falcon40b, minicpm, chatglm, chatglm2, demo)");
  }
  const bool glm1 = family == "chatglm", glm2 = family == "chatglm2";
  c.set("architectures", arch);
  c.set("vocab_size", Json::integer(V));
  c.set("hidden_size", Json::integer(H));
  if (family != "bloom" && !glm1 && !glm2) {
    c.set("num_hidden_layers", Json::integer(L));
  }
  if (family != "bloom") c.set("num_attention_heads", Json::integer(nh));
  if (family != "baichuan13b" && family != "bloom" && !glm1 && !glm2) c.set("max_position_embeddings", Json::integer(512));
  // tied heads: HF's defaults for bloom, falcon, minicpm and chatglm v1, and the small Llama 3.2 / Qwen2.5 (written explicitly)
  const bool tied = family == "llama3" || family == "qwen2" || family == "bloom" || family == "falcon" || family == "falcon40b" || family == "minicpm" || glm1;
  c.set("tie_word_embeddings", Json::boolean(tied));
  const int64_t bos = glm1 ? 262 : 1, eos = glm1 ? 263 : 2;
  if (!glm2) c.set("bos_token_id", Json::integer(bos));
  c.set("eos_token_id", Json::integer(eos));
  c.set("pad_token_id", Json::integer(0));
  c.set("torch_dtype", Json::string("float32"));
  c.set("initializer_range", Json::number(0.02));

  ModelConfig mc;
  llmt_status st = parse_config(c, "create-tiny", mc);
  if (st) return st;
  llmt_status mk = make_directories(out);
  if (mk) return mk;
  if ((st = write_text_file_atomic(out + "/config.json", c.dump(2) + "\n"))) return st;

  // Build the parameter list the engine expects for this config by name and shape.
  const FamilyRow &f = *mc.family;
  const int64_t I = mc.inter, hd = mc.head_dim, qd = nh * hd, kvd = mc.kv_heads * hd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  shapes.push_back({std::string(f.embed) + ".weight", {V, H}});
  const bool ln = mc.norm == NormKind::Layer;
  if (f.embed_norm) {
    shapes.push_back({std::string(f.embed_norm) + ".weight", {H}});
    shapes.push_back({std::string(f.embed_norm) + ".bias", {H}});
  }
  for (int64_t l = 0; l < L; ++l) {
    std::string p = layer_name(f.layer, l) + ".";
    std::vector<std::string> norms = {mc.attn_norm};
    if (!mc.mlp_norm.empty()) norms.push_back(mc.mlp_norm);
    for (const auto &nm : norms) {
      shapes.push_back({p + nm + ".weight", {H}});
      if (ln) shapes.push_back({p + nm + ".bias", {H}});
    }
    auto lin = [&](const char *nm, int64_t o, int64_t i, bool bias) {
      shapes.push_back({p + nm + ".weight", {o, i}});
      if (bias) shapes.push_back({p + nm + ".bias", {o}});
    };
    if (mc.qkv_layout == QkvLayout::Separate) {
      lin(f.q, qd, H, mc.qkv_bias);
      lin(f.k, kvd, H, mc.qkv_bias);
      lin(f.v, kvd, H, mc.qkv_bias);
    } else {
      lin(f.qkv, qd + 2 * kvd, H, mc.qkv_bias);
    }
    lin(f.o, H, qd, mc.o_bias);
    if (mc.mlp == MlpKind::SwiGLU) {
      lin(f.gate, I, H, mc.mlp_bias);
      lin(f.up, I, H, mc.mlp_bias);
      lin(f.down, H, I, mc.mlp_bias);
    } else {
      lin(f.fc1, mc.mlp == MlpKind::SwiGLUFused ? 2 * I : I, H, mc.mlp_bias);
      lin(f.fc2, H, I, mc.mlp_bias);
    }
  }
  shapes.push_back({std::string(f.final_norm) + ".weight", {H}});
  if (ln) shapes.push_back({std::string(f.final_norm) + ".bias", {H}});
  if (!mc.tie_embeddings) shapes.push_back({std::string(f.lm_head) + ".weight", {V, H}});

  Rng rng(seed);
  auto normal = [&]() {
    double u1 = std::max(rng.uniform_double(), 1e-12), u2 = rng.uniform_double();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  };
  std::vector<std::vector<float>> data(shapes.size());
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto &nm = shapes[i].first;
    int64_t n = 1;
    for (int64_t d : shapes[i].second) n *= d;
    data[i].resize(static_cast<size_t>(n));
    const bool is_norm = nm.find("norm") != std::string::npos || nm.find(".ln_") != std::string::npos;
    const bool is_bias = nm.size() > 5 && nm.compare(nm.size() - 5, 5, ".bias") == 0;
    const float fan_in = shapes[i].second.size() == 2 ? static_cast<float>(shapes[i].second[1]) : 1.0f;
    for (float &x : data[i]) {
      if (demo) {  // HF's init: normal(0, initializer_range) for weights, ones for norms, zeros for biases
        x = is_norm && !is_bias ? 1.0f : is_bias ? 0.0f : 0.02f * normal();
        continue;
      }
      if (is_norm && !is_bias) x = 1.0f + 0.1f * normal();
      else if (is_bias) x = 0.05f * normal();
      else x = normal() * (nm.find("embed") != std::string::npos ? 0.5f : 1.0f / std::sqrt(fan_in));
    }
    tensors.push_back({nm, DType::F32, shapes[i].second, data[i].data()});
  }
  if ((st = write_safetensors(out + "/model.safetensors", tensors, {{"format", "pt"}}))) return st;

  const std::vector<std::string> extra = family_specials(family);
  if ((st = write_text_file_atomic(out + "/tokenizer.json", tokenizer_json(extra).dump() + "\n"))) return st;
  // chatglm v1: <sop> is bos and <eop> eos (ids 262/263, as config.json says); the other specials are listed
  const std::string bos_tok = glm1 ? "<sop>" : "<s>", eos_tok = glm1 ? "<eop>" : "</s>";
  Json extra_list = Json::array();
  for (const auto &e : extra)
    if (e != bos_tok && e != eos_tok) extra_list.push(Json::string(e));
  Json tc = Json::object();
  tc.set("tokenizer_class", Json::string("PreTrainedTokenizerFast"));
  tc.set("bos_token", Json::string(bos_tok));
  tc.set("eos_token", Json::string(eos_tok));
  tc.set("pad_token", Json::string("<pad>"));
  tc.set("unk_token", Json::string("<unk>"));
  if (!extra.empty()) tc.set("additional_special_tokens", extra_list);
  tc.set("model_max_length", Json::integer(512));
  tc.set("clean_up_tokenization_spaces", Json::boolean(false));
  if ((st = write_text_file_atomic(out + "/tokenizer_config.json", tc.dump(2) + "\n"))) return st;
  Json sm = Json::object();
  sm.set("bos_token", Json::string(bos_tok));
  sm.set("eos_token", Json::string(eos_tok));
  sm.set("pad_token", Json::string("<pad>"));
  sm.set("unk_token", Json::string("<unk>"));
  if (!extra.empty()) sm.set("additional_special_tokens", extra_list);
  if ((st = write_text_file_atomic(out + "/special_tokens_map.json", sm.dump(2) + "\n"))) return st;
  Json gc = Json::object();
  gc.set("bos_token_id", Json::integer(bos));
  gc.set("eos_token_id", Json::integer(eos));
  gc.set("pad_token_id", Json::integer(0));
  return write_text_file_atomic(out + "/generation_config.json", gc.dump(2) + "\n");
}

}  // namespace llmt
