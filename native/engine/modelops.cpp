// modelops.cpp — convert (PyTorch checkpoint → safetensors) and merge (base + LoRA adapter → HF folder),
// see modelops.hpp. Output goes to `<out>.tmp-<pid>/` first and is renamed into place when complete
// (in-place conversion writes each file atomically and the index last). Shards are planned up front from
// the tensors' sizes; each shard is filled, written and freed before the next, so memory stays near one
// shard plus the mapped inputs.
#include "modelops.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <vector>

#include <unistd.h>

#include "model.hpp"
#include "safetensors.hpp"
#include "status.hpp"
#include "torchbin.hpp"

namespace fs = std::filesystem;

namespace llmt {

namespace {

constexpr uint64_t kDefaultShard = 5000000000ull;  // HF's default max_shard_size "5GB"

struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<llmt_status(uint8_t *dst)> fill;  // writes numel × dtype_size bytes
  uint64_t nbytes() const {
    uint64_t n = dtype_size(dtype);
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
  }
};

bool aborted(const OpCallbacks &cb) { return cb.abort && cb.abort(cb.user) != 0; }

void progress(const OpCallbacks &cb, const char *stage, size_t done, size_t total, const std::string &name) {
  if (!cb.on_event) return;
  Json e = Json::object();
  e.set("event", Json::string("progress"));
  e.set("stage", Json::string(stage));
  e.set("done", Json::integer(static_cast<int64_t>(done)));
  e.set("total", Json::integer(static_cast<int64_t>(total)));
  e.set("name", Json::string(name));
  cb.on_event(cb.user, e.dump().c_str());
}

std::string shard_name(const std::string &stem, size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i + 1, n);
  return stem + buf;
}

// Writes `tensors` into `dir` as `<stem>.safetensors`, or shards + `<stem>.safetensors.index.json` when
// `force_shards` > 1 or they exceed max_shard bytes. `plan`, when not empty, gives each tensor's shard.
llmt_status write_weights(const std::string &dir, const std::string &stem, std::vector<OutTensor> &tensors,
                          uint64_t max_shard, std::vector<size_t> plan, const OpCallbacks &cb, Json &report) {
  if (max_shard == 0) max_shard = kDefaultShard;
  uint64_t total = 0;
  for (const auto &t : tensors) total += t.nbytes();
  size_t nshards = 1;
  if (plan.empty()) {
    plan.assign(tensors.size(), 0);
    uint64_t cur = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const uint64_t b = tensors[i].nbytes();
      if (cur > 0 && cur + b > max_shard) {
        ++nshards;
        cur = 0;
      }
      plan[i] = nshards - 1;
      cur += b;
    }
  } else {
    for (size_t s : plan) nshards = std::max(nshards, s + 1);
  }
  Json files = Json::array();
  Json weight_map = Json::object();
  size_t done = 0;
  for (size_t s = 0; s < nshards; ++s) {
    const std::string fname = nshards == 1 ? stem + ".safetensors" : shard_name(stem, s, nshards);
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<TensorToWrite> tw;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (plan[i] != s) continue;
      if (aborted(cb)) return set_error(LLMT_ERR_ABORTED, "stopped on request; nothing was written under the final name");
      OutTensor &t = tensors[i];
      bufs.emplace_back(static_cast<size_t>(t.nbytes()));
      llmt_status st = t.fill(bufs.back().data());
      if (st != LLMT_OK) return st;
      tw.push_back({t.name, t.dtype, t.shape, bufs.back().data()});
      weight_map.set(t.name, Json::string(fname));
      progress(cb, "tensors", ++done, tensors.size(), t.name);
    }
    llmt_status st = write_safetensors(dir + "/" + fname, tw, {{"format", "pt"}});
    if (st != LLMT_OK) return st;
    files.push(Json::string(fname));
  }
  if (nshards > 1) {
    Json idx = Json::object();
    Json meta = Json::object();
    meta.set("total_size", Json::integer(static_cast<int64_t>(total)));
    idx.set("metadata", meta);
    idx.set("weight_map", weight_map);
    llmt_status st = write_text_file_atomic(dir + "/" + stem + ".safetensors.index.json", idx.dump(2) + "\n");
    if (st != LLMT_OK) return st;
    files.push(Json::string(stem + ".safetensors.index.json"));
  }
  report.set("files", files);
  report.set("tensors", Json::integer(static_cast<int64_t>(tensors.size())));
  report.set("bytes", Json::integer(static_cast<int64_t>(total)));
  return LLMT_OK;
}

bool is_weight_file(const std::string &n) {
  auto ends = [&](const char *s) {
    const size_t k = std::strlen(s);
    return n.size() >= k && n.compare(n.size() - k, k, s) == 0;
  };
  return ends(".safetensors") || ends(".bin") || ends(".pt") || ends(".pth") || ends(".ckpt") || ends(".h5") ||
         ends(".msgpack") || ends(".gguf") || ends(".index.json") || ends(".tmp") || n.find(".tmp-") != std::string::npos;
}

bool is_tokenizer_file(const std::string &n) {
  return n == "tokenizer.json" || n == "tokenizer.model" || n == "tokenizer_config.json" ||
         n == "special_tokens_map.json" || n == "added_tokens.json" || n == "vocab.json" || n == "merges.txt" ||
         n == "ice_text.model" || n == "chat_template.json" || n == "chat_template.jinja";
}

// Copies the plain files of `from` (not weights, not folders) into `to`; `filter` may skip some.
llmt_status copy_side_files(const std::string &from, const std::string &to,
                            const std::function<bool(const std::string &)> &want) {
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(from, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string n = e.path().filename().string();
    if (is_weight_file(n) || !want(n)) continue;
    std::string text;
    llmt_status st = read_text_file(e.path().string(), text);
    if (st != LLMT_OK) return st;
    if ((st = write_file_atomic(to + "/" + n, text.data(), text.size())) != LLMT_OK) return st;
  }
  if (ec) return set_error(LLMT_ERR_IO, "cannot list " + from + ": " + ec.message());
  return LLMT_OK;
}

// A fresh `<out>.tmp-<pid>` folder; `out` must not exist or be an empty folder.
llmt_status begin_output(const std::string &out, std::string &tmp) {
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec) || !fs::is_empty(out, ec))
      return set_error(LLMT_ERR_BAD_INPUT, "the output folder " + out + " already exists and is not empty; choose a new one");
  }
  tmp = out + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return set_error(LLMT_ERR_IO, "cannot create " + tmp + ": " + ec.message());
  return LLMT_OK;
}

llmt_status finish_output(const std::string &tmp, const std::string &out) {
  std::error_code ec;
  if (fs::exists(out, ec)) fs::remove(out, ec);  // an empty folder (checked in begin_output)
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code ec2;
    fs::remove_all(tmp, ec2);
    return set_error(LLMT_ERR_IO, "cannot move " + tmp + " to " + out + ": " + ec.message());
  }
  return LLMT_OK;
}

struct TmpGuard {
  std::string path;
  ~TmpGuard() {
    if (path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Float conversion of one value into the output dtype.
void store(DType t, uint8_t *dst, size_t i, float v) {
  switch (t) {
    case DType::F32: std::memcpy(dst + 4 * i, &v, 4); break;
    case DType::F16: { const uint16_t h = f32_to_f16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
    case DType::BF16: { const uint16_t h = f32_to_bf16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
    default: break;
  }
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

std::string shape_str(const std::vector<int64_t> &s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// Protobuf walk of a SentencePiece ModelProto: counts the repeated field 1 (pieces).
bool count_sp_pieces(const std::string &b, int64_t &n) {
  size_t p = 0;
  n = 0;
  auto varint = [&](uint64_t &v) {
    v = 0;
    for (int s = 0; s < 64; s += 7) {
      if (p >= b.size()) return false;
      const uint8_t c = static_cast<uint8_t>(b[p++]);
      v |= static_cast<uint64_t>(c & 0x7f) << s;
      if (!(c & 0x80)) return true;
    }
    return false;
  };
  while (p < b.size()) {
    uint64_t key, len;
    if (!varint(key)) return false;
    switch (key & 7) {
      case 0: if (!varint(len)) return false; break;
      case 1: p += 8; break;
      case 5: p += 4; break;
      case 2:
        if (!varint(len) || len > b.size() - p) return false;
        if ((key >> 3) == 1) ++n;
        p += static_cast<size_t>(len);
        break;
      default: return false;
    }
    if (p > b.size()) return false;
  }
  return true;
}

}  // namespace

llmt_status tokenizer_size(const std::string &dir, int64_t &out) {
  out = -1;
  std::error_code ec;
  std::string text;
  if (fs::exists(dir + "/tokenizer.json", ec)) {
    llmt_status st = read_text_file(dir + "/tokenizer.json", text);
    if (st != LLMT_OK) return st;
    Json j;
    std::string err;
    if (!Json::parse(text, j, err)) return set_error(LLMT_ERR_BAD_INPUT, dir + "/tokenizer.json is not valid JSON: " + err);
    int64_t mx = -1;
    for (const auto &kv : j.get("model").get("vocab").members())
      if (kv.second.is_integer()) mx = std::max(mx, kv.second.as_int());
    for (const auto &t : j.get("added_tokens").items()) mx = std::max(mx, t.get_int("id", -1));
    out = mx + 1;
    return LLMT_OK;
  }
  if (fs::exists(dir + "/tokenizer.model", ec)) {
    llmt_status st = read_text_file(dir + "/tokenizer.model", text);
    if (st != LLMT_OK) return st;
    int64_t n = 0;
    if (!count_sp_pieces(text, n) || n == 0)
      return set_error(LLMT_ERR_BAD_INPUT, dir + "/tokenizer.model is not a SentencePiece model (damaged?)");
    out = n;
    if (fs::exists(dir + "/added_tokens.json", ec) && read_text_file(dir + "/added_tokens.json", text) == LLMT_OK) {
      Json j;
      std::string err;
      if (Json::parse(text, j, err))
        for (const auto &kv : j.members())
          if (kv.second.is_integer()) out = std::max(out, kv.second.as_int() + 1);
    }
  }
  return LLMT_OK;
}

// ---- convert ---------------------------------------------------------------------------------------------

llmt_status convert_checkpoint(const std::string &dir_in, const std::string &out_in, uint64_t max_shard,
                               const OpCallbacks &cb, Json &report) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::string out = out_in.empty() ? dir : out_in;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  std::error_code ec;
  const bool in_place = fs::equivalent(dir, out, ec) || out == dir;
  report = Json::object();
  const bool adapter = fs::exists(dir + "/adapter_config.json", ec) && fs::exists(dir + "/adapter_model.bin", ec);

  std::unique_ptr<WeightSet> ws;
  std::unique_ptr<SafetensorsFile> af;
  std::vector<OutTensor> tensors;
  std::vector<size_t> plan;
  llmt_status st = LLMT_OK;
  auto raw_copy = [](const TensorInfo *t) {
    return [t](uint8_t *dst) {
      if (t->nbytes) std::memcpy(dst, t->data, t->nbytes);
      return LLMT_OK;
    };
  };
  if (adapter) {
    af = open_torch_checkpoint(dir + "/adapter_model.bin", st);
    if (!af) return st;
    for (const auto &t : af->tensors()) tensors.push_back({t.name, t.dtype, t.shape, raw_copy(&t)});
  } else {
    ws = WeightSet::open_dir(dir, st);
    if (!ws) return st;
    if (ws->format() != "pt")
      return set_error(LLMT_ERR_BAD_INPUT, dir + " already holds safetensors weights; there is nothing to convert");
    // Keep the source's sharding: shard i of the .bin set becomes shard i of the safetensors set.
    for (size_t s = 0; s < ws->files().size(); ++s)
      for (const auto &t : ws->files()[s]->tensors()) {
        if (ws->file_of(t.name) != ws->files()[s]->path()) continue;
        tensors.push_back({t.name, t.dtype, t.shape, raw_copy(&t)});
        if (ws->files().size() > 1) plan.push_back(s);
      }
  }
  std::string target = out;
  TmpGuard guard;
  if (!in_place) {
    if ((st = begin_output(out, target)) != LLMT_OK) return st;
    guard.path = target;
  }
  Json w = Json::object();
  st = write_weights(target, adapter ? "adapter_model" : "model", tensors, max_shard, plan, cb, w);
  if (st != LLMT_OK) return st;
  if (!in_place) {
    if ((st = copy_side_files(dir, target, [](const std::string &) { return true; })) != LLMT_OK) return st;
    if ((st = finish_output(target, out)) != LLMT_OK) return st;
    guard.path.clear();
  }
  report.set("out", Json::string(out));
  report.set("kind", Json::string(adapter ? "adapter" : "model"));
  for (const auto &kv : w.members()) report.set(kv.first, kv.second);
  return LLMT_OK;
}

// ---- merge -----------------------------------------------------------------------------------------------

namespace {

struct LoraPair {
  const TensorInfo *A = nullptr, *B = nullptr;
  const TensorInfo *M = nullptr;  // DoRA's magnitude [out] (use_dora), else null
  std::string key_a;
  std::string module;      // the adapted module (its alpha_pattern entry), even when merged into another tensor (a tied head)
  bool embedding = false;  // PEFT's lora.Embedding: A = lora_embedding_A [r, V], B = lora_embedding_B [H, r]; W [V, H] += s·(B·A)ᵀ
};

// "base_model.model.<module>.lora_embedding_A[.<adapter>]" (PEFT's LoRA on an embedding) -> module, "A"/"B".
bool split_lora_embedding_key(const std::string &key, std::string &module, char &which) {
  const std::string pre = "base_model.model.";
  std::string k = key.compare(0, pre.size(), pre) == 0 ? key.substr(pre.size()) : key;
  for (const char *tag : {".lora_embedding_A", ".lora_embedding_B"}) {
    const size_t at = k.find(tag);
    if (at == std::string::npos) continue;
    const std::string rest = k.substr(at + 17);
    if (!rest.empty() && (rest[0] != '.' || rest.find('.', 1) != std::string::npos)) return false;
    module = k.substr(0, at);
    which = tag[16];
    return true;
  }
  return false;
}

// "base_model.model.<module>.lora_magnitude_vector[.<adapter>.weight]" (PEFT's DoRA) -> module; false otherwise.
bool split_magnitude_key(const std::string &key, std::string &module) {
  const std::string pre = "base_model.model.";
  std::string k = key.compare(0, pre.size(), pre) == 0 ? key.substr(pre.size()) : key;
  const size_t at = k.find(".lora_magnitude_vector");
  if (at == std::string::npos) return false;
  const std::string rest = k.substr(at + 22);
  if (!rest.empty() && !(rest.size() > 7 && rest.compare(rest.size() - 7, 7, ".weight") == 0)) return false;
  module = k.substr(0, at);
  return true;
}

// "base_model.model.<module>.lora_A[.adapter].weight" -> module, "A"/"B"; false for other keys.
bool split_lora_key(const std::string &key, std::string &module, char &which) {
  const std::string pre = "base_model.model.";
  std::string k = key.compare(0, pre.size(), pre) == 0 ? key.substr(pre.size()) : key;
  for (const char *tag : {".lora_A.", ".lora_B."}) {
    const size_t at = k.find(tag);
    if (at == std::string::npos) continue;
    const std::string rest = k.substr(at + 8);
    if (rest != "weight" && !(rest.size() > 7 && rest.compare(rest.size() - 7, 7, ".weight") == 0)) return false;
    module = k.substr(0, at);
    which = tag[6];
    return true;
  }
  return false;
}

// "base_model.model.<path>[.modules_to_save[.<adapter>]].weight" -> "<path>.weight"; `copy` tells whether the
// key was a modules_to_save copy (it wins over a plain saved layer, as PEFT loads it).
std::string full_key(const std::string &key, bool &copy) {
  const std::string pre = "base_model.model.";
  std::string k = key.compare(0, pre.size(), pre) == 0 ? key.substr(pre.size()) : key;
  copy = false;
  const size_t m = k.find(".modules_to_save.");
  if (m != std::string::npos) {
    copy = true;
    std::string rest = k.substr(m + 17);  // "weight", "bias" or "<adapter>.weight"
    const size_t dot = rest.find('.');
    if (dot != std::string::npos) rest = rest.substr(dot + 1);
    k = k.substr(0, m) + "." + rest;
  }
  // PEFT ≥ 0.7: the bias of a linear that carries LoRA belongs to the wrapped layer (<module>.base_layer.bias)
  const size_t b = k.rfind(".base_layer.");
  if (b != std::string::npos) k = k.substr(0, b) + k.substr(b + 11);
  return k;
}

bool dtype_option(const std::string &s, DType &out) {
  if (s == "float32" || s == "F32" || s == "fp32") return out = DType::F32, true;
  if (s == "float16" || s == "F16" || s == "fp16") return out = DType::F16, true;
  if (s == "bfloat16" || s == "BF16" || s == "bf16") return out = DType::BF16, true;
  return false;
}

const char *torch_dtype_name(DType t) {
  return t == DType::F16 ? "float16" : t == DType::BF16 ? "bfloat16" : "float32";
}

}  // namespace

llmt_status merge_adapter(const std::string &model_dir, const std::string &adapter_dir, const std::string &out,
                          const Json &options, const OpCallbacks &cb, Json &report) {
  report = Json::object();
  llmt_status st = LLMT_OK;
  // -- the adapter --
  std::string text;
  const std::string cfg_path = adapter_dir + "/adapter_config.json";
  if ((st = read_text_file(cfg_path, text)) != LLMT_OK)
    return set_error(st, std::string(llmt_last_error()) + " (a PEFT adapter folder holds adapter_config.json)");
  Json acfg;
  std::string err;
  if (!Json::parse(text, acfg, err) || !acfg.is_object())
    return set_error(LLMT_ERR_BAD_INPUT, cfg_path + " is not a valid JSON object " + err);
  if (acfg.get_string("peft_type", "LORA") != "LORA")
    return set_error(LLMT_ERR_UNSUPPORTED, cfg_path + ": only LORA adapters can be merged (peft_type \"" +
                                               acfg.get_string("peft_type") + "\")");
  // the same reading of the config as a forward with the adapter (types, unsupported options, regexes)
  LoraSpec spec;
  if ((st = parse_peft_lora_config(acfg, cfg_path, spec)) != LLMT_OK) return st;
  {
    std::regex re;
    std::string why;
    for (const auto &kv : spec.alpha_pattern)
      if (!python_regex(kv.first, re, why))
        return set_error(LLMT_ERR_BAD_INPUT, cfg_path + ": alpha_pattern key \"" + kv.first + "\" cannot be used: " + why);
    for (const auto &kv : spec.rank_pattern)
      if (!python_regex(kv.first, re, why))
        return set_error(LLMT_ERR_BAD_INPUT, cfg_path + ": rank_pattern key \"" + kv.first + "\" cannot be used: " + why);
    if (!spec.target_regex.empty() && !python_regex(spec.target_regex, re, why))
      return set_error(LLMT_ERR_BAD_INPUT, cfg_path + ": target_modules \"" + spec.target_regex + "\" cannot be used: " + why);
  }
  const double alpha = spec.alpha;
  const bool rslora = spec.use_rslora;
  std::error_code ec;
  std::unique_ptr<SafetensorsFile> af;
  if (fs::exists(adapter_dir + "/adapter_model.safetensors", ec))
    af = SafetensorsFile::open(adapter_dir + "/adapter_model.safetensors", st);
  else if (fs::exists(adapter_dir + "/adapter_model.bin", ec))
    af = open_torch_checkpoint(adapter_dir + "/adapter_model.bin", st);
  else
    return set_error(LLMT_ERR_IO, adapter_dir + " has neither adapter_model.safetensors nor adapter_model.bin");
  if (!af) return st;

  // -- the base --
  if ((st = read_model_config(model_dir, text)) != LLMT_OK) return st;
  Json mcfg;
  if (!Json::parse(text, mcfg, err) || !mcfg.is_object())
    return set_error(LLMT_ERR_BAD_INPUT, model_dir + "/config.json is not a valid JSON object " + err);
  std::unique_ptr<WeightSet> ws = WeightSet::open_dir(model_dir, st);
  if (!ws) return st;
  const int64_t base_vocab = mcfg.get_int("vocab_size", -1);

  // Output dtype: the option, else the base's dominant float dtype.
  DType out_dtype = DType::F32;
  const std::string dopt = options.get_string("dtype", "auto");
  if (dopt != "auto" && !dtype_option(dopt, out_dtype))
    return set_error(LLMT_ERR_BAD_INPUT, "unknown dtype \"" + dopt + "\" (use auto, float32, float16 or bfloat16)");
  if (dopt == "auto") {
    std::map<DType, int64_t> count;
    for (const auto &n : ws->names()) {
      const TensorInfo *t = ws->find(n);
      if (is_float(t->dtype)) count[t->dtype == DType::F64 ? DType::F32 : t->dtype] += t->numel();
    }
    int64_t most = -1;
    for (const auto &kv : count)
      if (kv.second > most) most = kv.second, out_dtype = kv.first;
  }

  // -- classify the adapter's tensors --
  std::map<std::string, LoraPair> loras;   // base tensor name -> pair
  std::map<std::string, const TensorInfo *> full;  // base tensor name -> replacement
  std::map<std::string, bool> full_is_copy;
  for (const auto &t : af->tensors()) {
    std::string module;
    char which = 0;
    if (inert_adapter_tensor(spec, t.name)) continue;  // a variant's training state (VeLoRA, MonteCLoRA): no part of the weight
    if (split_lora_embedding_key(t.name, module, which)) {
      LoraPair &p = loras[module + ".weight"];
      (which == 'A' ? p.A : p.B) = &t;
      p.embedding = true;
      p.module = module;
    } else if (split_lora_key(t.name, module, which)) {
      LoraPair &p = loras[module + ".weight"];
      (which == 'A' ? p.A : p.B) = &t;
      p.module = module;
    } else if (split_magnitude_key(t.name, module)) {
      if (!spec.use_dora)
        return set_error(LLMT_ERR_BAD_INPUT, "the adapter in " + adapter_dir + " holds DoRA magnitudes (" + t.name +
                                                 ") but its adapter_config.json does not say use_dora: the config and the weights do not belong together");
      loras[module + ".weight"].M = &t;
    } else if (t.name.find(".original_module.") == std::string::npos) {  // PEFT's copy of the untouched base layer
      bool copy = false;
      const std::string k = full_key(t.name, copy);
      if (copy || !full.count(k) || !full_is_copy[k]) {
        full[k] = &t;
        full_is_copy[k] = copy;
      }
    }
  }
  for (const auto &kv : loras) {
    if (!kv.second.A || !kv.second.B)
      return set_error(LLMT_ERR_BAD_INPUT, "the adapter in " + adapter_dir + " has only one of lora_A/lora_B for " + kv.first);
    if (spec.use_dora && !kv.second.M)
      return set_error(LLMT_ERR_BAD_INPUT, cfg_path + " says use_dora but " + adapter_dir + " has no lora_magnitude_vector for " +
                                               kv.first.substr(0, kv.first.size() - 7));
    if (kv.second.M && (kv.second.M->shape.size() != 1 || kv.second.B->shape.empty() || kv.second.M->shape[0] != kv.second.B->shape[0]))
      return set_error(LLMT_ERR_BAD_INPUT, "the DoRA magnitude " + kv.second.M->name + " has shape " + shape_str(kv.second.M->shape) +
                                               ", not [" + std::to_string(kv.second.B->shape.empty() ? 0 : kv.second.B->shape[0]) + "]");
  }
  // what PEFT would load: LoRA tensors for modules the config targets, of the rank it gives them (a forward with the
  // adapter refuses the same files)
  std::string tlower = spec.target_regex;
  for (char &ch : tlower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const bool targets_known = !(spec.targets.empty() && spec.target_regex.empty()) && tlower != "all-linear" &&
                             !(spec.targets.size() == 1 && spec.targets[0] == "all-linear");
  for (const auto &kv : loras) {
    const std::string module = kv.first.substr(0, kv.first.size() - 7);
    if (targets_known && !peft_target_matches(spec, module))
      return set_error(LLMT_ERR_BAD_INPUT, adapter_dir + " holds LoRA tensors for " + module + ", which its adapter_config.json "
                                               "does not target (PEFT would not load them): the config and the weights do not belong together");
    const int64_t *pr = peft_pattern_value(spec.rank_pattern, module);
    const int64_t want = pr ? *pr : spec.r;
    const int64_t have = kv.second.A->shape.empty() ? -1 : kv.second.A->shape[0];
    if (have != want)
      return set_error(LLMT_ERR_BAD_INPUT, cfg_path + " gives " + module + " rank " + std::to_string(want) + " but its LoRA tensors have rank " +
                                               std::to_string(have) + ": the config and the weights do not belong together");
  }

  // -- tied embeddings: the base stores one table for the embedding and the head; an adapter that trains either on
  // its own (modules_to_save: PEFT's separate copy; or LoRA on either) gives a model with two — the head is written out (the base's
  // table where the adapter has no head) and config.json says tie_word_embeddings false --
  bool untie = false, head_stored = false;
  std::string head_t, embed_t;
  {
    ModelConfig mc;
    if (parse_config(mcfg, model_dir + "/config.json", mc) == LLMT_OK && mc.tie_embeddings) {
      head_t = std::string(mc.family->lm_head) + ".weight";
      embed_t = std::string(mc.family->embed) + ".weight";
      head_stored = ws->find(head_t) != nullptr;  // some tied checkpoints store both
      // (LoRA on the tied head or the embedding as well: PEFT's own merge would write either delta into the one shared
      // table, changing the other side too — untied, the merged model computes what the adapter does)
      untie = head_t != embed_t && ws->find(embed_t) &&
              (full.count(head_t) || full.count(embed_t) || loras.count(head_t) || loras.count(embed_t));
    }
    clear_error();  // a family this engine does not model: merged tensor by tensor as before
  }
  // the base tensor a name reads (the untied head starts as the table)
  auto base_name = [&](const std::string &n) { return untie && !head_stored && n == head_t ? embed_t : n; };

  // -- vocabulary extension (Chinese-LLaMA-Alpaca): full embedding / lm_head with more rows --
  int64_t new_vocab = base_vocab;
  std::vector<std::string> resized;
  for (const auto &kv : full) {
    const TensorInfo *b = ws->find(base_name(kv.first));
    const TensorInfo *a = kv.second;
    if (!b) {
      return set_error(LLMT_ERR_BAD_INPUT, "adapter tensor '" + a->name + "' replaces '" + kv.first + "', which the base model in " +
                                               model_dir + " does not have: the adapter belongs to another architecture");
    }
    if (a->shape == b->shape) continue;
    const bool vocab_tensor = b->shape.size() == 2 && a->shape.size() == 2 && a->shape[1] == b->shape[1] &&
                              b->shape[0] == base_vocab;
    if (!vocab_tensor)
      return set_error(LLMT_ERR_BAD_INPUT, "adapter tensor '" + a->name + "' has shape " + shape_str(a->shape) + " but the base's '" +
                                               kv.first + "' is " + shape_str(b->shape) + ": the adapter was made for another base model");
    if (a->shape[0] < base_vocab)
      return set_error(LLMT_ERR_BAD_INPUT, "vocabulary mismatch: the adapter's '" + a->name + "' has " + std::to_string(a->shape[0]) +
                                               " rows but the base model's vocabulary has " + std::to_string(base_vocab) +
                                               " tokens; a delta can only extend a vocabulary — is this the right base?");
    if (new_vocab != base_vocab && new_vocab != a->shape[0])
      return set_error(LLMT_ERR_BAD_INPUT, "vocabulary mismatch inside the adapter: its embedding and lm_head have " +
                                               std::to_string(new_vocab) + " and " + std::to_string(a->shape[0]) + " rows");
    new_vocab = a->shape[0];
    resized.push_back(kv.first);
  }
  if (untie && new_vocab != base_vocab && !full.count(head_t))
    return set_error(LLMT_ERR_BAD_INPUT, "the adapter extends the tied embedding table to " + std::to_string(new_vocab) +
                                             " rows but carries no " + head_t + " of that size: the untied head would keep " +
                                             std::to_string(base_vocab) + " rows");
  if (new_vocab != base_vocab) {
    // Every vocabulary-sized base tensor must be replaced (a resized embedding with untrained rows would be garbage).
    for (const auto &n : ws->names()) {
      const TensorInfo *b = ws->find(n);
      if (b->shape.size() == 2 && b->shape[0] == base_vocab && !full.count(n))
        return set_error(LLMT_ERR_BAD_INPUT, "vocabulary mismatch: the adapter extends the vocabulary from " + std::to_string(base_vocab) +
                                                 " to " + std::to_string(new_vocab) + " tokens but carries no full '" + n +
                                                 "' of that size (the merge cannot invent its rows)");
    }
    int64_t tok = -1;
    if ((st = tokenizer_size(adapter_dir, tok)) != LLMT_OK) return st;
    if (tok < 0)
      return set_error(LLMT_ERR_BAD_INPUT, "the adapter extends the vocabulary to " + std::to_string(new_vocab) +
                                               " tokens but its folder " + adapter_dir + " has no tokenizer (tokenizer.model or "
                                               "tokenizer.json) to go with it; put the delta's tokenizer files there");
    if (tok != new_vocab)
      return set_error(LLMT_ERR_BAD_INPUT, "vocabulary mismatch: the adapter's embeddings have " + std::to_string(new_vocab) +
                                               " rows but the tokenizer in " + adapter_dir + " has " + std::to_string(tok) +
                                               " tokens (a delta of another release?)");
  }

  // -- plan the output tensors --
  std::vector<OutTensor> tensors;
  std::set<std::string> used_lora, used_full;
  int64_t merged = 0, replaced = 0;
  std::vector<std::string> names = ws->names();
  if (untie && !head_stored) names.push_back(head_t);
  for (const auto &name : names) {
    const std::string bname = base_name(name);
    const TensorInfo *b = ws->find(bname);
    auto fi = full.find(name);
    auto li = loras.find(name);
    const TensorInfo *src = fi != full.end() ? fi->second : b;
    if (fi != full.end()) used_full.insert(name), ++replaced;
    OutTensor o;
    o.name = name;
    o.shape = src->shape;
    o.dtype = is_float(b->dtype) ? out_dtype : b->dtype;
    if (!is_float(b->dtype)) {
      if (li != loras.end()) return set_error(LLMT_ERR_BAD_INPUT, "LoRA on the non-float tensor '" + name + "'");
      o.fill = [src](uint8_t *dst) {
        if (src->nbytes) std::memcpy(dst, src->data, src->nbytes);
        return LLMT_OK;
      };
      tensors.push_back(std::move(o));
      continue;
    }
    const SafetensorsFile *src_file = nullptr;
    if (fi != full.end()) src_file = af.get();
    LoraPair pair;
    double scale = 0;
    if (li != loras.end()) {
      pair = li->second;
      used_lora.insert(name);
      ++merged;
      const int64_t r = pair.A->shape.size() == 2 ? pair.A->shape[0] : 0;
      // a linear: A [r, in], B [out, r] against W [out, in]; an embedding: A [r, V], B [H, r] against W [V, H]
      const size_t ai = pair.embedding ? 0 : 1, bo = pair.embedding ? 1 : 0;
      if (src->shape.size() != 2 || pair.A->shape.size() != 2 || pair.B->shape.size() != 2 || pair.A->shape[1] != src->shape[ai] ||
          pair.B->shape[0] != src->shape[bo] || pair.B->shape[1] != r || r <= 0)
        return set_error(LLMT_ERR_BAD_INPUT, "the adapter's LoRA for '" + name + "' (A " + shape_str(pair.A->shape) + ", B " +
                                                 shape_str(pair.B->shape) + ") does not fit the base weight " +
                                                 shape_str(src->shape) + ": the adapter was made for another base model");
      const std::string module = pair.module.empty() ? name.substr(0, name.size() - 7) : pair.module;
      const double *pa = peft_pattern_value(spec.alpha_pattern, module);
      const double a = pa ? *pa : alpha;
      scale = rslora ? a / std::sqrt(static_cast<double>(r)) : a / static_cast<double>(r);
    }
    const WeightSet *wsp = ws.get();
    const SafetensorsFile *afp = af.get();
    const DType od = o.dtype;
    o.fill = [=](uint8_t *dst) -> llmt_status {
      const size_t n = static_cast<size_t>(src->numel());
      std::vector<float> w(n);
      llmt_status s = src_file ? src_file->read_f32(*src, w.data()) : wsp->read_f32(bname, w.data());
      if (s != LLMT_OK) return s;
      if (pair.A && pair.embedding) {  // W[v, h] += s·Σ_k B[h, k]·A[k, v]
        const int64_t r = pair.A->shape[0], V = pair.A->shape[1], H = pair.B->shape[0];
        std::vector<float> A(static_cast<size_t>(r * V)), B(static_cast<size_t>(H * r));
        if ((s = afp->read_f32(*pair.A, A.data())) != LLMT_OK || (s = afp->read_f32(*pair.B, B.data())) != LLMT_OK) return s;
        const float sc = static_cast<float>(scale);
        std::vector<float> row(static_cast<size_t>(H));
        for (int64_t v = 0; v < V; ++v) {
          std::fill(row.begin(), row.end(), 0.0f);
          for (int64_t k = 0; k < r; ++k) {
            const float ak = A[static_cast<size_t>(k * V + v)];
            for (int64_t h = 0; h < H; ++h) row[static_cast<size_t>(h)] += B[static_cast<size_t>(h * r + k)] * ak;
          }
          float *wr = &w[static_cast<size_t>(v * H)];
          for (int64_t h = 0; h < H; ++h) wr[h] += row[static_cast<size_t>(h)] * sc;
        }
      } else if (pair.A) {
        const int64_t r = pair.A->shape[0], in = pair.A->shape[1], outd = pair.B->shape[0];
        std::vector<float> A(static_cast<size_t>(r * in)), B(static_cast<size_t>(outd * r)), row(static_cast<size_t>(in));
        if ((s = afp->read_f32(*pair.A, A.data())) != LLMT_OK || (s = afp->read_f32(*pair.B, B.data())) != LLMT_OK) return s;
        std::vector<float> mag;
        if (pair.M) {
          mag.resize(static_cast<size_t>(outd));
          if ((s = afp->read_f32(*pair.M, mag.data())) != LLMT_OK) return s;
        }
        const float sc = static_cast<float>(scale);
        for (int64_t o2 = 0; o2 < outd; ++o2) {
          std::fill(row.begin(), row.end(), 0.0f);
          for (int64_t k = 0; k < r; ++k) {
            const float bk = B[static_cast<size_t>(o2 * r + k)];
            const float *ak = &A[static_cast<size_t>(k * in)];
            for (int64_t i = 0; i < in; ++i) row[static_cast<size_t>(i)] += bk * ak[i];
          }
          float *wr = &w[static_cast<size_t>(o2 * in)];
          for (int64_t i = 0; i < in; ++i) wr[i] += row[static_cast<size_t>(i)] * sc;
          if (pair.M) {
            // DoRA (PEFT's merge): W' = (m / ‖W + s·B·A‖_row)·(W + s·B·A), the norm of this row in double
            double n2 = 0.0;
            for (int64_t i = 0; i < in; ++i) n2 += static_cast<double>(wr[i]) * wr[i];
            const double f = static_cast<double>(mag[static_cast<size_t>(o2)]) / std::sqrt(n2);
            for (int64_t i = 0; i < in; ++i) wr[i] = static_cast<float>(wr[i] * f);
          }
        }
      }
      for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(w[i]) && pair.A)
          return set_error(LLMT_ERR_NAN, "merging '" + name + "' gave a non-finite value; the adapter is damaged");
        store(od, dst, i, w[i]);
      }
      return LLMT_OK;
    };
    tensors.push_back(std::move(o));
  }
  for (const auto &kv : loras)
    if (!used_lora.count(kv.first))
      return set_error(LLMT_ERR_BAD_INPUT, "the adapter's LoRA tensors " + kv.second.A->name + " target '" + kv.first +
                                               "', which the base model in " + model_dir + " does not have: the adapter "
                                               "belongs to another architecture");

  // -- write --
  std::string tmp;
  if ((st = begin_output(out, tmp)) != LLMT_OK) return st;
  TmpGuard guard{tmp};
  Json w = Json::object();
  const uint64_t max_shard = static_cast<uint64_t>(options.get_int("max_shard_bytes", 0));
  if ((st = write_weights(tmp, "model", tensors, max_shard, {}, cb, w)) != LLMT_OK) return st;
  const bool adapter_tokenizer = fs::exists(adapter_dir + "/tokenizer.model", ec) || fs::exists(adapter_dir + "/tokenizer.json", ec);
  if ((st = copy_side_files(model_dir, tmp, [&](const std::string &n) {
         return n != "config.json" && !(adapter_tokenizer && is_tokenizer_file(n)) && n != "README.md";
       })) != LLMT_OK)
    return st;
  if (adapter_tokenizer &&
      (st = copy_side_files(adapter_dir, tmp, [](const std::string &n) { return is_tokenizer_file(n); })) != LLMT_OK)
    return st;
  Json cfg = mcfg;
  if (new_vocab != base_vocab) cfg.set("vocab_size", Json::integer(new_vocab));
  if (untie) cfg.set("tie_word_embeddings", Json::boolean(false));
  cfg.set("torch_dtype", Json::string(torch_dtype_name(out_dtype)));
  if ((st = write_text_file_atomic(tmp + "/config.json", cfg.dump(2) + "\n")) != LLMT_OK) return st;
  if ((st = finish_output(tmp, out)) != LLMT_OK) return st;
  guard.path.clear();

  report.set("out", Json::string(out));
  report.set("dtype", Json::string(torch_dtype_name(out_dtype)));
  report.set("merged_modules", Json::integer(merged));
  int64_t dora = 0;
  for (const auto &kv : loras) dora += kv.second.M != nullptr;
  report.set("dora_modules", Json::integer(dora));
  report.set("replaced_tensors", Json::integer(replaced));
  report.set("vocab_before", Json::integer(base_vocab));
  report.set("vocab_after", Json::integer(new_vocab));
  report.set("tokenizer_from", Json::string(adapter_tokenizer ? "adapter" : "base"));
  for (const auto &kv : w.members()) report.set(kv.first, kv.second);
  (void)used_full;
  return LLMT_OK;
}

}  // namespace llmt
