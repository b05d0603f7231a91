// adapter.cpp — PEFT LoRA adapters in and out: adapter_config.json (the keys PEFT 0.6 writes, so old and
// new PEFT both load it) and adapter_model.safetensors with keys base_model.model.<module>.lora_A.weight
// [r, in] / .lora_B.weight [out, r] (+ modules_to_save copies under their plain names). Also writes a
// whole model back as an HF folder (full fine-tuning, merges).
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "../cpu/half.hpp"
#include "backend.hpp"
#include "json.hpp"
#include "model.hpp"
#include "safetensors.hpp"
#include "status.hpp"
#include "torchbin.hpp"

namespace llmt {

namespace {

llmt_status make_dirs(const std::string &dir) {
  std::string cur;
  size_t i = 0;
  while (i <= dir.size()) {
    size_t slash = dir.find('/', i);
    cur = dir.substr(0, slash == std::string::npos ? dir.size() : slash);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      return set_error(LLMT_ERR_IO, "cannot create folder " + cur + ": " + std::strerror(errno));
    }
    if (slash == std::string::npos) break;
    i = slash + 1;
  }
  return LLMT_OK;
}

bool ends_with_str(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Json string_list(const std::vector<std::string> &v) {
  Json a = Json::array();
  for (const auto &s : v) a.push(Json::string(s));
  return a;
}

}  // namespace

llmt_status make_directories(const std::string &dir) { return make_dirs(dir); }

llmt_status Model::save_adapter(const std::string &dir) const {
  if (!has_lora_) return set_error(LLMT_ERR_BAD_INPUT, "this model has no LoRA adapter to save");
  llmt_status st = make_dirs(dir);
  if (st != LLMT_OK) return st;
  to_host();  // trained weights from backend memory (a no-op on the CPU backend)
  std::vector<TensorToWrite> tensors;
  for (const auto &p : params) {
    if (p->save_name.empty()) continue;
    fetch_host(*p);  // an adapter loaded frozen lives on the device only
    tensors.push_back({p->save_name, DType::F32, p->shape, p->data.data()});
  }
  // ensure_weight_tying kept the table tied: written under the head's name too, as PEFT saves it
  const bool tied_copy = spec_.ensure_weight_tying && lm_head == embed && !embed->save_name.empty();
  if (tied_copy)
    tensors.push_back({"base_model.model." + std::string(cfg_.family->lm_head) + ".weight", DType::F32, embed->shape, embed->data.data()});
  st = write_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  free_frozen_host();
  if (st != LLMT_OK) return st;
  // Keys sorted, as PEFT writes them (json.dumps(sort_keys=True)).
  Json cfg = Json::object();
  Json empty_obj = Json::object();
  Json alpha_pattern = Json::object();
  for (const auto &kv : spec_.alpha_pattern) alpha_pattern.set(kv.first, Json::number(kv.second));
  Json rank_pattern = Json::object();
  for (const auto &kv : spec_.rank_pattern) rank_pattern.set(kv.first, Json::integer(kv.second));
  cfg.set("alpha_pattern", alpha_pattern);
  cfg.set("auto_mapping", Json());
  // an absolute path: AutoPeftModelForCausalLM.from_pretrained(adapter) finds the base from any working folder
  std::string base = dir_;
  if (!base.empty() && std::filesystem::path(base).is_relative()) {
    std::error_code ec;
    const std::filesystem::path abs = std::filesystem::absolute(base, ec);
    if (!ec) base = abs.lexically_normal().string();
    while (base.size() > 1 && base.back() == '/') base.pop_back();
  }
  cfg.set("base_model_name_or_path", Json::string(base));
  cfg.set("bias", Json::string(spec_.bias));
  if (tied_copy) cfg.set("ensure_weight_tying", Json::boolean(true));  // (only then: older PEFT releases do not know the key)
  if (!spec_.exclude_regex.empty()) cfg.set("exclude_modules", Json::string(spec_.exclude_regex));
  else if (!spec_.exclude_modules.empty()) cfg.set("exclude_modules", string_list(spec_.exclude_modules));
  // (no null entry otherwise: PEFT before 0.14 does not know the key)
  cfg.set("fan_in_fan_out", Json::boolean(false));
  cfg.set("inference_mode", Json::boolean(true));
  cfg.set("init_lora_weights", Json::boolean(true));
  cfg.set("layers_pattern", spec_.layers_pattern.empty() ? Json()
                            : spec_.layers_pattern.size() == 1 ? Json::string(spec_.layers_pattern[0])
                                                               : string_list(spec_.layers_pattern));
  if (spec_.layers_to_transform.empty()) {
    cfg.set("layers_to_transform", Json());
  } else {
    Json lt = Json::array();
    for (int64_t i : spec_.layers_to_transform) lt.push(Json::integer(i));
    cfg.set("layers_to_transform", lt);
  }
  cfg.set("lora_alpha", spec_.alpha == static_cast<double>(static_cast<int64_t>(spec_.alpha))
                            ? Json::integer(static_cast<int64_t>(spec_.alpha))
                            : Json::number(spec_.alpha));
  cfg.set("lora_dropout", Json::number(spec_.dropout));
  cfg.set("modules_to_save", spec_.modules_to_save.empty() ? Json() : string_list(spec_.modules_to_save));
  cfg.set("peft_type", Json::string("LORA"));
  cfg.set("r", Json::integer(spec_.r));
  cfg.set("rank_pattern", rank_pattern);
  cfg.set("revision", Json());
  if (!spec_.target_regex.empty()) {
    cfg.set("target_modules", Json::string(spec_.target_regex));
  } else {
    std::vector<std::string> t = spec_.targets;
    std::sort(t.begin(), t.end());
    cfg.set("target_modules", string_list(t));
  }
  cfg.set("task_type", Json::string("CAUSAL_LM"));
  if (spec_.use_rslora) cfg.set("use_rslora", Json::boolean(true));
  if (spec_.use_dora) cfg.set("use_dora", Json::boolean(true));
  return write_text_file_atomic(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

bool inert_adapter_tensor(const LoraSpec &s, const std::string &name) {
  for (const auto &t : s.inert_tensors) {
    const size_t at = name.find("." + t);
    if (at != std::string::npos && (at + 1 + t.size() == name.size() || name[at + 1 + t.size()] == '.')) return true;
  }
  return false;
}

llmt_status unsupported_peft_options(const Json &j, const std::string &where) {
  auto on = [&](const char *key) {
    const Json &v = j.get(key);
    if (v.is_null()) return false;
    if (v.is_bool()) return v.as_bool();
    if (v.is_array()) return !v.items().empty();
    if (v.is_object()) return !v.members().empty();
    return true;
  };
  const struct {
    const char *key, *what;
  } options[] = {
      {"lora_bias", "a bias on lora_B (lora_bias)"},
      {"trainable_token_indices", "trainable token embeddings (trainable_token_indices)"},
      {"layer_replication", "layer replication (layer_replication)"},
      {"target_parameters", "LoRA on parameters (target_parameters)"},
      {"alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"},
      {"use_qalora", "QALoRA (use_qalora)"},
      {"megatron_config", "Megatron-parallel layers (megatron_config)"},
      {"arrow_config", "Arrow routing (arrow_config)"},
  };
  for (const auto &o : options)
    if (on(o.key))
      return set_error(LLMT_ERR_UNSUPPORTED, where + ": " + o.what + " is not supported by this engine; " +
                                                 "train or save the adapter without it");
  // variants whose adapted weight is not base + scaling·B·A on the unchanged base; PEFT turns them on with any
  // sub-config, {} included (its defaults)
  auto given = [&](const char *key) {
    const Json &v = j.get(key);
    return !v.is_null() && !(v.is_bool() && !v.as_bool());
  };
  if (given("kasa_config"))
    return set_error(LLMT_ERR_UNSUPPORTED, where + ": KaSA (kasa_config) is not supported by this engine: it truncates the base "
                                                   "weights' smallest singular values and scales B·A by a trained diagonal (lora_diag); "
                                                   "train the adapter without it");
  if (given("use_bdlora"))
    return set_error(LLMT_ERR_UNSUPPORTED, where + ": block-diagonal LoRA (use_bdlora) is not supported by this engine: its lora_A / lora_B "
                                                   "are stored as diagonal blocks; train the adapter without it");
  // an initialisation that rewrote the base weights (W_res = W − scaling·B₀A₀ for PiSSA/OLoRA/CorDA/LoRA-GA, a quantized W
  // for LoftQ): PEFT redoes it on the base when it loads the adapter, so the trained A and B belong to that residual
  // base, not to the model as stored. PEFT's conversion leaves a plain LoRA adapter (init_lora_weights true).
  const Json &init = j.get("init_lora_weights");
  if (init.is_string()) {
    std::string v = init.as_string();
    for (char &ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const bool loftq = v.rfind("loftq", 0) == 0;
    if (loftq || v.rfind("pissa", 0) == 0 || v.rfind("olora", 0) == 0 || v.rfind("corda", 0) == 0 || v.rfind("lora_ga", 0) == 0 ||
        v.rfind("lora-ga", 0) == 0)
      return set_error(LLMT_ERR_UNSUPPORTED,
                       where + ": init_lora_weights \"" + init.as_string() + "\" changed the base weights when the adapter was made, so its " +
                           "A and B do not apply to the original model; " +
                           (loftq ? std::string("save the base model LoftQ made and set init_lora_weights to true in adapter_config.json "
                                                "(as PEFT's LoftQ example does), then give that base as the model")
                                  : std::string("convert it to a plain LoRA adapter first (PEFT: save_pretrained(..., "
                                                "path_initial_model_for_weight_conversion=<the initial adapter>), which writes "
                                                "init_lora_weights true)")));
  }
  return LLMT_OK;
}

llmt_status peft_layer_options(const Json &j, const std::string &where, LoraSpec &s) {
  const Json &lt = j.get("layers_to_transform");
  if (lt.is_integer()) {
    s.layers_to_transform.push_back(lt.as_int());
  } else if (lt.is_array()) {
    for (const auto &x : lt.items()) {
      if (!x.is_integer()) return set_error(LLMT_ERR_BAD_INPUT, where + ": layers_to_transform must be an integer or a list of integers");
      s.layers_to_transform.push_back(x.as_int());
    }
  } else if (!lt.is_null()) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": layers_to_transform must be an integer or a list of integers");
  }
  const Json &lp = j.get("layers_pattern");
  if (lp.is_string()) {
    if (!lp.as_string().empty()) s.layers_pattern.push_back(lp.as_string());
  } else if (lp.is_array()) {
    for (const auto &x : lp.items()) {
      if (!x.is_string()) return set_error(LLMT_ERR_BAD_INPUT, where + ": layers_pattern must be a string or a list of strings");
      s.layers_pattern.push_back(x.as_string());
    }
  } else if (!lp.is_null()) {
    return set_error(LLMT_ERR_BAD_INPUT, where + ": layers_pattern must be a string or a list of strings");
  }
  return LLMT_OK;
}

llmt_status parse_peft_lora_config(const Json &j, const std::string &cfg_path, LoraSpec &s) {
  // a present key of the wrong type is an error naming it ("lora_alpha": "32" must not load as the default 8)
  auto typed = [&](const char *key, bool ok, const char *want) -> llmt_status {
    if (j.get(key).is_null() || ok) return LLMT_OK;
    return set_error(LLMT_ERR_BAD_INPUT, cfg_path + ": " + key + " must be " + want + " (got " + j.get(key).dump() + ")");
  };
  auto str_list = [](const Json &v) {
    if (!v.is_array()) return false;
    for (const auto &x : v.items())
      if (!x.is_string()) return false;
    return true;
  };
  auto values = [](const Json &v, bool ints) {
    if (!v.is_object()) return false;
    for (const auto &kv : v.members())
      if (ints ? !(kv.second.is_integer() && kv.second.as_int() > 0) : !kv.second.is_number()) return false;
    return true;
  };
  llmt_status st;
  if ((st = typed("r", j.get("r").is_integer() && j.get("r").as_int() > 0, "a positive integer")) ||
      (st = typed("lora_alpha", j.get("lora_alpha").is_number(), "a number")) ||
      (st = typed("lora_dropout", j.get("lora_dropout").is_number(), "a number")) ||
      (st = typed("use_rslora", j.get("use_rslora").is_bool(), "true or false")) ||
      (st = typed("use_dora", j.get("use_dora").is_bool(), "true or false")) ||
      (st = typed("fan_in_fan_out", j.get("fan_in_fan_out").is_bool(), "true or false")) ||
      (st = typed("bias", j.get("bias").is_string(), "\"none\", \"all\" or \"lora_only\"")) ||
      (st = typed("peft_type", j.get("peft_type").is_string(), "a string")) ||
      (st = typed("target_modules", j.get("target_modules").is_string() || str_list(j.get("target_modules")),
                  "a list of module names or a regex string")) ||
      (st = typed("modules_to_save", str_list(j.get("modules_to_save")), "a list of module names")) ||
      (st = typed("exclude_modules", j.get("exclude_modules").is_string() || str_list(j.get("exclude_modules")),
                  "a list of module names or a regex string")) ||
      (st = typed("rank_pattern", values(j.get("rank_pattern"), true), "an object of positive integers")) ||
      (st = typed("alpha_pattern", values(j.get("alpha_pattern"), false), "an object of numbers")) ||
      (st = typed("init_lora_weights", j.get("init_lora_weights").is_bool() || j.get("init_lora_weights").is_string(),
                  "true, false or an initialisation name")) ||
      (st = typed("ensure_weight_tying", j.get("ensure_weight_tying").is_bool(), "true or false")))
    return st;
  std::string type = j.get_string("peft_type", "LORA");
  if (type != "LORA") {
    return set_error(LLMT_ERR_UNSUPPORTED, cfg_path + ": peft_type \"" + type + "\" is not supported (only LORA)");
  }
  if (j.get_bool("fan_in_fan_out", false)) {
    return set_error(LLMT_ERR_UNSUPPORTED, cfg_path + ": fan_in_fan_out adapters (Conv1D models) are not supported");
  }
  if ((st = unsupported_peft_options(j, cfg_path)) != LLMT_OK) return st;
  if ((st = peft_layer_options(j, cfg_path, s)) != LLMT_OK) return st;
  s.r = j.get_int("r", 8);
  s.alpha = j.get_number("lora_alpha", 8);
  s.dropout = j.get_number("lora_dropout", 0.0);
  s.use_rslora = j.get_bool("use_rslora", false);
  s.use_dora = j.get_bool("use_dora", false);
  s.bias = j.get_string("bias", "none");
  const Json &t = j.get("target_modules");
  if (t.is_string()) {
    s.target_regex = t.as_string();
  } else if (t.is_array()) {
    for (const auto &x : t.items()) s.targets.push_back(x.as_string());
  }
  for (const auto &x : j.get("modules_to_save").items()) s.modules_to_save.push_back(x.as_string());
  for (const auto &kv : j.get("rank_pattern").members()) s.rank_pattern[kv.first] = kv.second.as_int();
  for (const auto &kv : j.get("alpha_pattern").members()) s.alpha_pattern[kv.first] = kv.second.as_double();
  const Json &ex = j.get("exclude_modules");
  if (ex.is_string()) {
    s.exclude_regex = ex.as_string();
  } else {
    for (const auto &x : ex.items()) s.exclude_modules.push_back(x.as_string());
  }
  s.ensure_weight_tying = j.get_bool("ensure_weight_tying", false);
  // VeLoRA changes only the backward of training and MonteCLoRA samples A only in training: outside it both are
  // plain LoRA, and the state they save (a buffer per module) is not read
  auto set = [&](const char *key) {
    const Json &v = j.get(key);
    return v.is_object() || (v.is_bool() && v.as_bool());
  };
  if (set("velora_config")) s.inert_tensors.push_back("lora_velora_embed");
  if (set("monteclora_config")) s.inert_tensors.push_back("lora_monteclora_sampler");
  return LLMT_OK;
}

llmt_status Model::load_adapter(const std::string &dir, bool trainable) {
  const std::string cfg_path = dir + "/adapter_config.json";
  std::string text;
  llmt_status st = read_text_file(cfg_path, text);
  if (st != LLMT_OK) return set_error(st, std::string(llmt_last_error()) + " (a PEFT adapter folder holds adapter_config.json)");
  Json j;
  std::string err;
  if (!Json::parse(text, j, err)) return set_error(LLMT_ERR_BAD_INPUT, cfg_path + " is not valid JSON: " + err);
  if (!j.is_object()) return set_error(LLMT_ERR_BAD_INPUT, cfg_path + " is not a JSON object");
  LoraSpec s;
  if ((st = parse_peft_lora_config(j, cfg_path, s)) != LLMT_OK) return st;

  std::string wpath = dir + "/adapter_model.safetensors";
  struct stat sb;
  std::unique_ptr<SafetensorsFile> f;
  if (::stat(wpath.c_str(), &sb) != 0) {
    if (::stat((dir + "/adapter_model.bin").c_str(), &sb) != 0) return set_error(LLMT_ERR_IO, wpath + " is missing");
    // A PyTorch pickle: read by the restricted unpickler (torchbin.hpp), which runs no code from the file.
    wpath = dir + "/adapter_model.bin";
    f = open_torch_checkpoint(wpath, st);
  } else {
    f = SafetensorsFile::open(wpath, st);
  }
  if (!f) return st;
  st = add_lora(s, 0);
  if (st != LLMT_OK) return set_error(st, "adapter " + dir + " does not fit the model in " + dir_ + ": " + llmt_last_error());
  std::set<std::string> used;
  std::vector<std::string> missing;
  // ensure_weight_tying on a tied model: PEFT saves the one trained table under the head's name too
  if (s.ensure_weight_tying && lm_head == embed && !embed->save_name.empty())
    if (const TensorInfo *h = f->find("base_model.model." + std::string(cfg_.family->lm_head) + ".weight")) used.insert(h->name);
  for (const auto &ti : f->tensors())
    if (inert_adapter_tensor(s, ti.name)) used.insert(ti.name);
  // PEFT (save_embedding_layers "auto") saves the embedding and the head it put LoRA on as <module>.base_layer.weight,
  // the weights it loads in place of the model's: mostly the base's own values; others (a retrained table) replace
  // the model's here as they do there
  struct BaseLayer {
    const Lora *lora;
    std::string module;
    Param *param;
  };
  for (const BaseLayer &bl : {BaseLayer{&embed_lora, cfg_.family->embed, embed}, BaseLayer{&head_lora, cfg_.family->lm_head, lm_head}}) {
    if (!bl.lora->r) continue;
    const TensorInfo *ti = f->find("base_model.model." + bl.module + ".base_layer.weight");
    if (!ti) continue;
    used.insert(ti->name);
    if (ti->shape != bl.param->shape)
      return set_error(LLMT_ERR_BAD_INPUT, "adapter tensor '" + ti->name + "' in " + wpath + " has shape [" + std::to_string(ti->shape.empty() ? 0 : ti->shape[0]) +
                                               ", …] but this model's " + bl.module + " has " + std::to_string(bl.param->shape[0]) +
                                               " rows: the adapter was trained with another vocabulary (merge it into its own base model instead)");
    const size_t n = static_cast<size_t>(bl.param->numel());
    std::vector<float> w(n), cur(n);
    if ((st = f->read_f32(*ti, w.data())) != LLMT_OK) return st;
    fetch_host(*bl.param);
    for (size_t i = 0; i < n; ++i) cur[i] = bl.param->half_type ? from_half(bl.param->half[i], bl.param->half_type) : bl.param->data[i];
    if (w == cur) continue;
    if ((st = restore_fp32(*bl.param)) != LLMT_OK) return st;
    bl.param->data.swap(w);
  }
  for (auto &p : params) {
    if (p->save_name.empty()) continue;
    const TensorInfo *ti = f->find(p->save_name);
    if (!ti) {
      // PEFT variants that kept the adapter name in the key
      std::string alt = p->save_name;
      size_t at = alt.rfind(".weight");
      if (at != std::string::npos && alt.find(".lora_") != std::string::npos) alt.insert(at, ".default");
      ti = f->find(alt);
    }
    if (!ti && ends_with_str(p->save_name, ".base_layer.bias")) {
      // PEFT before 0.7 (and this engine before it followed) saved a LoRA linear's bias as <module>.bias
      ti = f->find(p->save_name.substr(0, p->save_name.size() - 16) + ".bias");
    }
    if (!ti) {
      missing.push_back(p->save_name);
      continue;
    }
    if (ti->shape != p->shape) {
      // a LoRA tensor whose other side fits: the config's rank (r / rank_pattern) is not the tensors' rank
      const bool is_a = ends_with_str(p->save_name, ".lora_A.weight"), is_b = ends_with_str(p->save_name, ".lora_B.weight");
      if ((is_a || is_b) && ti->shape.size() == 2 && p->shape.size() == 2 &&
          (is_a ? ti->shape[1] == p->shape[1] : ti->shape[0] == p->shape[0])) {
        const int64_t have = is_a ? ti->shape[0] : ti->shape[1], want = is_a ? p->shape[0] : p->shape[1];
        return set_error(LLMT_ERR_BAD_INPUT, cfg_path + " gives " + ti->name + " rank " + std::to_string(want) +
                                                 " (r / rank_pattern) but the tensor in " + wpath + " has rank " + std::to_string(have) +
                                                 ": the config and the weights do not belong together");
      }
      std::string a = "[", b = "[";
      for (size_t i = 0; i < ti->shape.size(); ++i) a += (i ? ", " : "") + std::to_string(ti->shape[i]);
      for (size_t i = 0; i < p->shape.size(); ++i) b += (i ? ", " : "") + std::to_string(p->shape[i]);
      return set_error(LLMT_ERR_BAD_INPUT, "adapter tensor '" + ti->name + "' in " + wpath + " has shape " + a +
                                               "] but this model needs " + b + "]: the adapter was trained on a different base model");
    }
    used.insert(ti->name);
    st = f->read_f32(*ti, p->data.data());
    if (st != LLMT_OK) return st;
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 6; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 6) list += ", … (" + std::to_string(missing.size()) + " in all)";
    return set_error(LLMT_ERR_BAD_INPUT, wpath + " lacks tensors its adapter_config.json implies for this model: " + list);
  }
  std::vector<std::string> extra;
  for (const auto &ti : f->tensors())
    if (!used.count(ti.name)) extra.push_back(ti.name);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 6; ++i) list += (i ? ", " : "") + extra[i];
    if (extra.size() > 6) list += ", … (" + std::to_string(extra.size()) + " in all)";
    return set_error(LLMT_ERR_BAD_INPUT, wpath + " holds tensors that match no module of this model: " + list +
                                             "; was it trained on another architecture?");
  }
  if (!trainable) {
    for (auto &p : params) {
      p->trainable = false;
      p->grad.clear();
    }
  }
  dirty_ = !be_->host_memory();  // the host vectors changed: run() uploads them
  return LLMT_OK;
}

llmt_status Model::save_model(const std::string &dir) const {
  if (!q4_weights.empty()) {
    return set_error(LLMT_ERR_UNSUPPORTED, "this model was loaded with 4-bit quantization; merge or save from the unquantized base model");
  }
  llmt_status st = make_dirs(dir);
  if (st != LLMT_OK) return st;
  to_host();
  // a device backend keeps the frozen weights only in its memory: their host copies exist for the write alone
  fetch_host_weights();
  std::vector<TensorToWrite> tensors;
  for (const auto &p : params) {
    if (p->name.find(".lora_") != std::string::npos) continue;
    if (p->half_type) tensors.push_back({p->name, p->half_type == uint8_t(Half::F16) ? DType::F16 : DType::BF16, p->shape, p->half.data()});
    else tensors.push_back({p->name, DType::F32, p->shape, p->data.data()});
  }
  st = write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  free_frozen_host();
  if (st != LLMT_OK) return st;
  std::string text;
  st = read_text_file(dir_ + "/config.json", text);
  if (st != LLMT_OK) return st;
  if ((st = write_text_file_atomic(dir + "/config.json", text)) != LLMT_OK) return st;
  // the rest of a loadable HF folder, as save_pretrained + the tokenizer's save do: the tokenizer's files, the generation
  // config and a remote-code family's modules (copied as files, never run); weights and other files stay behind
  return copy_model_side_files(dir_, dir);
}

bool is_model_side_file(const std::string &name) {
  auto ends = [&](const char *suffix) {
    const size_t n = std::strlen(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  if (name.rfind("tokenizer", 0) == 0) return !ends(".safetensors") && !ends(".bin");  // tokenizer.json/.model/_config.json
  static const std::set<std::string> exact = {"special_tokens_map.json", "added_tokens.json", "generation_config.json", "chat_template.json",
                                              "chat_template.jinja", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                                              "ice_text.model", "sentencepiece.bpe.model"};
  return exact.count(name) > 0 || ends(".tiktoken") || ends(".py");
}

llmt_status copy_model_side_files(const std::string &from, const std::string &to) {
  std::error_code ec;
  for (const auto &e : std::filesystem::directory_iterator(from, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file(ec) || !is_model_side_file(name)) continue;
    std::string bytes;
    if (llmt_status st = read_text_file(e.path().string(), bytes)) return st;
    if (llmt_status st = write_text_file_atomic(to + "/" + name, bytes)) return st;
  }
  if (ec) return set_error(LLMT_ERR_IO, "cannot list " + from + ": " + ec.message());
  return LLMT_OK;
}

}  // namespace llmt
