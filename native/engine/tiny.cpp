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

Json tokenizer_json() {
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
  } else {
    return set_error(LLMT_ERR_UNSUPPORTED, "create-tiny: unknown family \"" + family + "\" (supported: " + supported_model_types() + ", demo)");
  }
  c.set("architectures", arch);
  c.set("vocab_size", Json::integer(V));
  c.set("hidden_size", Json::integer(H));
  c.set("num_hidden_layers", Json::integer(L));
  c.set("num_attention_heads", Json::integer(nh));
  c.set("max_position_embeddings", Json::integer(512));
  (void)H;
  c.set("tie_word_embeddings", Json::boolean(false));
  c.set("bos_token_id", Json::integer(1));
  c.set("eos_token_id", Json::integer(2));
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
  const bool ln = f.norm == NormKind::Layer;
  for (int64_t l = 0; l < L; ++l) {
    std::string p = layer_name(f.layer, l) + ".";
    for (const char *nm : {f.attn_norm, f.mlp_norm}) {
      shapes.push_back({p + nm + ".weight", {H}});
      if (ln) shapes.push_back({p + nm + ".bias", {H}});
    }
    auto lin = [&](const char *nm, int64_t o, int64_t i) {
      shapes.push_back({p + nm + ".weight", {o, i}});
      if (f.linear_bias) shapes.push_back({p + nm + ".bias", {o}});
    };
    if (f.qkv_layout == QkvLayout::Separate) {
      lin(f.q, qd, H);
      lin(f.k, kvd, H);
      lin(f.v, kvd, H);
    } else {
      lin(f.qkv, qd + 2 * kvd, H);
    }
    lin(f.o, H, qd);
    if (f.mlp == MlpKind::SwiGLU) {
      lin(f.gate, I, H);
      lin(f.up, I, H);
      lin(f.down, H, I);
    } else {
      lin(f.fc1, I, H);
      lin(f.fc2, H, I);
    }
  }
  shapes.push_back({std::string(f.final_norm) + ".weight", {H}});
  if (ln) shapes.push_back({std::string(f.final_norm) + ".bias", {H}});
  shapes.push_back({std::string(f.lm_head) + ".weight", {V, H}});

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
    const bool is_norm = nm.find("norm") != std::string::npos;
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

  if ((st = write_text_file_atomic(out + "/tokenizer.json", tokenizer_json().dump() + "\n"))) return st;
  Json tc = Json::object();
  tc.set("tokenizer_class", Json::string("PreTrainedTokenizerFast"));
  tc.set("bos_token", Json::string("<s>"));
  tc.set("eos_token", Json::string("</s>"));
  tc.set("pad_token", Json::string("<pad>"));
  tc.set("unk_token", Json::string("<unk>"));
  tc.set("model_max_length", Json::integer(512));
  tc.set("clean_up_tokenization_spaces", Json::boolean(false));
  if ((st = write_text_file_atomic(out + "/tokenizer_config.json", tc.dump(2) + "\n"))) return st;
  Json sm = Json::object();
  sm.set("bos_token", Json::string("<s>"));
  sm.set("eos_token", Json::string("</s>"));
  sm.set("pad_token", Json::string("<pad>"));
  sm.set("unk_token", Json::string("<unk>"));
  if ((st = write_text_file_atomic(out + "/special_tokens_map.json", sm.dump(2) + "\n"))) return st;
  Json gc = Json::object();
  gc.set("bos_token_id", Json::integer(1));
  gc.set("eos_token_id", Json::integer(2));
  gc.set("pad_token_id", Json::integer(0));
  return write_text_file_atomic(out + "/generation_config.json", gc.dump(2) + "\n");
}

}  // namespace llmt
