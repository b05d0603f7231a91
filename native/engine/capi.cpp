// capi.cpp — the C API (include/llmt.h) over the engine's C++ classes. Every entry point catches
// everything: a C++ exception (std::bad_alloc included) becomes a status code and a message, never an
// abort of the host process (the Electron app, the CLI worker).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "../cpu/ops.hpp"
#include "../cuda/cuda.hpp"
#include "backend.hpp"
#include "evaluate.hpp"
#include "family.hpp"
#include "generate.hpp"
#include "json.hpp"
#include "model.hpp"
#include "modelops.hpp"
#include "safetensors.hpp"
#include "status.hpp"
#include "train.hpp"

namespace llmt {
llmt_status create_tiny(const std::string &family, const std::string &out, uint64_t seed);  // tiny.cpp
}

using namespace llmt;

struct llmt_model {
  std::unique_ptr<Model> m;
  std::string adapter;
  bool profiling = false;      // llmt_model_profile started
  bool checkpointing = false;  // llmt_model_set_checkpointing: llmt_model_backward recomputes each block
  bool offload_checkpoints = false;  // ... keeping the block inputs in host memory (on = 2)
};

namespace {

char *dup_string(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

/** The status (and last error) for the exception being handled, as guarded() maps it. Call inside a catch block. */
llmt_status status_of_current_exception(const char *what) {
  try {
    throw;
  } catch (const CudaError &e) {
    return set_error(LLMT_ERR_CUDA, std::string(what) + ": " + e.what());
  } catch (const std::bad_alloc &e) {
    if (std::strncmp(e.what(), "CUDA out of memory", 18) == 0) return set_error(LLMT_ERR_OOM, std::string(what) + ": " + e.what());
    return set_error(LLMT_ERR_OOM, std::string(what) + ": out of memory; lower the batch size or the sequence length (or use a machine with more memory)");
  } catch (const std::exception &e) {
    return set_error(LLMT_ERR_INTERNAL, std::string(what) + ": " + e.what());
  } catch (...) {
    return set_error(LLMT_ERR_INTERNAL, std::string(what) + ": unknown error");
  }
}

template <typename F>
llmt_status guarded(const char *what, F &&f) {
  try {
    return f();
  } catch (...) {
    return status_of_current_exception(what);
  }
}

Json lora_targets_json(const ModelConfig &c) {
  Json a = Json::array();
  std::string all = c.family->all_lora_targets;
  size_t at = 0;
  while (true) {
    size_t comma = all.find(',', at);
    a.push(Json::string(all.substr(at, comma == std::string::npos ? std::string::npos : comma - at)));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return a;
}

// Generation parameters (llmt.h, llmt_model_generate); `seeds` (may be null) receives the batch's per-row seeds.
llmt_status parse_gen_params(const Model &m, const char *params_json, GenParams &p, std::vector<uint64_t> *seeds) {
  const ModelConfig &c = m.config();
  for (auto e : c.stop_ids) p.stop_ids.push_back(static_cast<int32_t>(e));
  if (!params_json || !*params_json) return LLMT_OK;
  Json j;
  std::string err;
  if (!Json::parse(params_json, j, err) || !j.is_object()) return set_error(LLMT_ERR_BAD_INPUT, "generation parameters are not a JSON object: " + err);
  p.max_new_tokens = j.get_int("max_new_tokens", p.max_new_tokens);
  p.do_sample = j.get_bool("do_sample", p.do_sample);
  p.temperature = j.get_number("temperature", p.temperature);
  p.top_k = j.get_int("top_k", p.top_k);
  p.top_p = j.get_number("top_p", p.top_p);
  p.repetition_penalty = j.get_number("repetition_penalty", p.repetition_penalty);
  p.seed = static_cast<uint64_t>(j.get_int("seed", 0));
  if (j.get("stop_ids").is_array()) {
    p.stop_ids.clear();
    for (const auto &x : j.get("stop_ids").items())
      if (x.is_integer()) p.stop_ids.push_back(static_cast<int32_t>(x.as_int()));
  }
  if (seeds && j.get("seeds").is_array()) {
    for (const auto &x : j.get("seeds").items()) {
      if (!x.is_integer()) return set_error(LLMT_ERR_BAD_INPUT, "generation parameters: \"seeds\" must be a list of integers");
      seeds->push_back(static_cast<uint64_t>(x.as_int()));
    }
  }
  return LLMT_OK;
}

}  // namespace

extern "C" {

void llmt_free_string(char *s) { std::free(s); }

llmt_status llmt_set_threads(int n) {
  if (n < 1) return set_error(LLMT_ERR_BAD_INPUT, "llmt_set_threads: n must be >= 1");
  cpu::set_num_threads(n);
  clear_error();
  return LLMT_OK;
}

llmt_status llmt_model_inspect(const char *dir, char **out_json) {
  return guarded("inspect", [&]() -> llmt_status {
    if (!dir || !out_json) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_inspect: NULL argument");
    std::string d = dir;
    std::string text;
    llmt_status st = read_model_config(d, text);
    if (st) return st;
    Json cj;
    std::string err;
    if (!Json::parse(text, cj, err)) return set_error(LLMT_ERR_BAD_INPUT, d + "/config.json is not valid JSON: " + err);
    Json out = Json::object();
    out.set("path", Json::string(d));
    out.set("model_type", Json::string(cj.get_string("model_type")));
    out.set("architectures", cj.get("architectures"));
    ModelConfig c;
    st = parse_config(cj, d + "/config.json", c);
    if (st == LLMT_ERR_UNSUPPORTED) {
      out.set("supported", Json::boolean(false));
      out.set("reason", Json::string(llmt_last_error()));
      *out_json = dup_string(out.dump());
      clear_error();
      return LLMT_OK;
    }
    if (st) return st;
    QuantSpec quant;
    if ((st = folder_quant_spec(cj, d + "/config.json", quant))) return st;
    // the sizes below feed the memory estimate of a run: first that config.json agrees with the weights' headers (a
    // layer count or intermediate_size the weights do not have would estimate hundreds of GiB instead of saying so)
    if ((st = Model::check_folder(d))) return st;
    auto ws = WeightSet::open_dir(d, st);
    if (!ws) return st;
    int64_t params = 0;
    std::map<std::string, int64_t> dtypes;
    for (const auto &n : ws->names()) {
      const TensorInfo *t = ws->find(n);
      if (quant.enabled) {  // a 4-bit checkpoint: count each weight as its logical shape, in its original dtype
        int64_t numel = 0;
        std::string orig;
        if (is_q4_state_tensor(n)) continue;
        if (stored_q4_info(*ws, n, numel, orig)) {
          params += numel;
          dtypes[orig == "bfloat16" ? "BF16" : orig == "float16" ? "F16" : "F32"] += numel;
          continue;
        }
      }
      params += t->numel();
      dtypes[dtype_name(t->dtype)] += t->numel();
    }
    std::string dtype;
    int64_t most = -1;
    for (const auto &kv : dtypes)
      if (kv.second > most) {
        most = kv.second;
        dtype = kv.first;
      }
    out.set("supported", Json::boolean(true));
    out.set("family", Json::string(c.family->display));
    out.set("parameters", Json::integer(params));
    out.set("dtype", Json::string(dtype));
    out.set("quantization", Json::string(quant_name(quant)));  // stored 4-bit weights (bnb checkpoint), else "none"
    if (quant.enabled) out.set("double_quant", Json::boolean(quant.double_quant));
    out.set("vocab", Json::integer(c.vocab));
    out.set("hidden", Json::integer(c.hidden));
    out.set("intermediate", Json::integer(c.inter));
    out.set("layers", Json::integer(c.layers));
    out.set("heads", Json::integer(c.heads));
    out.set("kv_heads", Json::integer(c.kv_heads));
    out.set("context", Json::integer(c.max_positions));
    // the hard limit of generation (learned/rotary positions; rope_scaling linear counted); 0: none (ALiBi, no length named)
    out.set("context_limit", Json::integer(context_limit(c)));
    out.set("tie_embeddings", Json::boolean(c.tie_embeddings));
    out.set("head_dim", Json::integer(c.head_dim));
    out.set("sliding_window", Json::integer(c.sliding_window));  // 0: full causal attention
    out.set("window_from_layer", Json::integer(c.window_from_layer));  // the first windowed layer
    out.set("rope_scaling", c.rope_scaling.empty() ? Json() : Json::string(c.rope_scaling));
    out.set("lora_targets", lora_targets_json(c));
    // LoRA on the input embedding and the LM head: their module paths (PEFT matches a listed name as a suffix)
    out.set("embed_module", Json::string(c.family->embed));
    out.set("lm_head_module", Json::string(c.family->lm_head));
    out.set("default_lora_targets", Json::string(c.family->default_lora_targets));
    *out_json = dup_string(out.dump());
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_create_tiny(const char *family, const char *out_dir, uint64_t seed) {
  return guarded("create-tiny", [&]() -> llmt_status {
    if (!family || !out_dir) return set_error(LLMT_ERR_BAD_INPUT, "llmt_create_tiny: NULL argument");
    llmt_status st = create_tiny(family, out_dir, seed);
    if (st == LLMT_OK) clear_error();
    return st;
  });
}

// Loads a model (quantized on load when `q` asks for it), attaches the adapter, and hands out the handle.
static llmt_status load_model_handle(const char *dir, const char *adapter_dir, const QuantSpec &q, llmt_model **out,
                                     const std::string &precision = "fp32") {
  *out = nullptr;
  llmt_status st;
  auto m = Model::load(dir, st, q, precision);
  if (!m) return st;
  if (adapter_dir && *adapter_dir) {
    if ((st = m->load_adapter(adapter_dir, true))) return st;
  }
  auto *h = new llmt_model();
  h->m = std::move(m);
  h->adapter = adapter_dir ? adapter_dir : "";
  *out = h;
  clear_error();
  return LLMT_OK;
}

llmt_status llmt_model_load(const char *dir, const char *adapter_dir, llmt_model **out) {
  return guarded("load", [&]() -> llmt_status {
    if (!dir || !out) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_load: NULL argument");
    return load_model_handle(dir, adapter_dir, QuantSpec{}, out);
  });
}

llmt_status llmt_model_load_quantized(const char *dir, const char *adapter_dir, const char *quantization,
                                      llmt_model **out) {
  return guarded("load", [&]() -> llmt_status {
    if (!dir || !out) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_load_quantized: NULL argument");
    *out = nullptr;
    QuantSpec q;
    if (llmt_status st = parse_quant_spec(quantization ? quantization : "", q)) return st;
    return load_model_handle(dir, adapter_dir, q, out);
  });
}

llmt_status llmt_model_load_mixed(const char *dir, const char *adapter_dir, const char *quantization, const char *precision,
                                  llmt_model **out) {
  return guarded("load", [&]() -> llmt_status {
    if (!dir || !out) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_load_mixed: NULL argument");
    *out = nullptr;
    QuantSpec q;
    if (llmt_status st = parse_quant_spec(quantization ? quantization : "", q)) return st;
    return load_model_handle(dir, adapter_dir, q, out, precision && *precision ? precision : "fp32");
  });
}

llmt_status llmt_quantize_file(const char *in_path, const char *out_path, const char *quantization, int double_quant,
                               int with_dequantized) {
  return guarded("quantize", [&]() -> llmt_status {
    if (!in_path || !out_path) return set_error(LLMT_ERR_BAD_INPUT, "llmt_quantize_file: NULL argument");
    QuantSpec q;
    llmt_status st = parse_quant_spec(quantization ? quantization : "nf4", q);
    if (st) return st;
    if (!q.enabled) return set_error(LLMT_ERR_BAD_INPUT, "llmt_quantize_file: quantization must be \"nf4\" or \"fp4\"");
    q.double_quant = double_quant != 0;
    if ((st = quantize_safetensors(in_path, out_path, q, with_dequantized != 0))) return st;
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_quantize_model(const char *dir, const char *out_dir, const char *quantization, int double_quant) {
  return guarded("quantize", [&]() -> llmt_status {
    if (!dir || !out_dir) return set_error(LLMT_ERR_BAD_INPUT, "llmt_quantize_model: NULL argument");
    QuantSpec q;
    llmt_status st = parse_quant_spec(quantization ? quantization : "nf4", q);
    if (st) return st;
    if (!q.enabled) return set_error(LLMT_ERR_BAD_INPUT, "llmt_quantize_model: quantization must be \"nf4\" or \"fp4\"");
    q.double_quant = double_quant != 0;
    if ((st = quantize_model_dir(dir, out_dir, q))) return st;
    clear_error();
    return LLMT_OK;
  });
}

void llmt_model_free(llmt_model *model) { delete model; }

llmt_status llmt_model_info(llmt_model *model, char **out_json) {
  return guarded("info", [&]() -> llmt_status {
    if (!model || !out_json) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_info: NULL argument");
    const ModelConfig &c = model->m->config();
    Json o = Json::object();
    o.set("model_type", Json::string(c.model_type));
    o.set("vocab", Json::integer(c.vocab));
    o.set("hidden", Json::integer(c.hidden));
    o.set("layers", Json::integer(c.layers));
    o.set("parameters", Json::integer(model->m->num_parameters()));
    o.set("trainable", Json::integer(model->m->num_trainable()));
    o.set("adapter", model->adapter.empty() ? Json() : Json::string(model->adapter));
    Json eos = Json::array();
    for (auto e : c.stop_ids) eos.push(Json::integer(e));
    o.set("eos_ids", eos);
    o.set("bos_id", Json::integer(c.bos_id));
    o.set("pad_id", Json::integer(c.pad_id));
    o.set("device", Json::string(model->m->backend().name()));
    o.set("quantization", Json::string(quant_name(model->m->quantization())));  // 4-bit block linears (quantized on load or stored)
    // the trained length: the hard limit (rotary/learned), ALiBi's trained length, 0 when the config names none
    o.set("context", Json::integer(c.pos == PosKind::Alibi ? (c.max_positions_given ? c.max_positions : 0) : context_limit(c)));
    o.set("alibi", Json::boolean(c.pos == PosKind::Alibi));  // no hard limit at the context
    const MemoryStats ms = model->m->backend().memory_stats();
    Json mem = Json::object();  // the device allocator's bytes (zero on the CPU backend): see backend.hpp
    mem.set("allocated", Json::integer(ms.allocated));
    mem.set("peak_allocated", Json::integer(ms.peak_allocated));
    mem.set("reserved", Json::integer(ms.reserved));
    mem.set("peak_reserved", Json::integer(ms.peak_reserved));
    o.set("device_memory", mem);
    *out_json = dup_string(o.dump());
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_forward(llmt_model *model, const int32_t *ids, const int32_t *labels, int64_t batch, int64_t seq,
                               float *logits_out, double *loss_out, int64_t *tokens_out) {
  return guarded("forward", [&]() -> llmt_status {
    if (!model || !ids || batch <= 0 || seq <= 0) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_forward: bad arguments");
    Batch b;
    b.B = batch;
    b.T = seq;
    b.ids.assign(ids, ids + batch * seq);
    if (labels) b.labels.assign(labels, labels + batch * seq);
    RunOptions o;
    o.want_logits = logits_out != nullptr;
    RunResult r;
    llmt_status st = model->m->run(b, o, r);
    if (st) return st;
    if (logits_out) std::memcpy(logits_out, r.logits.data(), sizeof(float) * r.logits.size());
    if (loss_out) *loss_out = r.count ? r.loss_sum / static_cast<double>(r.count) : NAN;
    if (tokens_out) *tokens_out = r.count;
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_backward(llmt_model *model, const int32_t *ids, const int32_t *labels, int64_t batch, int64_t seq,
                                double *loss_out) {
  return guarded("backward", [&]() -> llmt_status {
    if (!model || !ids || !labels || batch <= 0 || seq <= 0)
      return set_error(LLMT_ERR_BAD_INPUT, "backward: needs ids and labels");
    if (model->m->trainable_params().empty())
      return set_error(LLMT_ERR_BAD_INPUT, "backward: the model has no trainable parameters; load an adapter (--adapter)");
    int64_t count = 0;
    for (int64_t r = 0; r < batch; ++r)
      for (int64_t t = 1; t < seq; ++t) count += labels[r * seq + t] != -100;
    if (count == 0) return set_error(LLMT_ERR_BAD_INPUT, "backward: no label other than -100 after the shift: the loss is undefined");
    Batch b;
    b.B = batch;
    b.T = seq;
    b.ids.assign(ids, ids + batch * seq);
    b.labels.assign(labels, labels + batch * seq);
    model->m->zero_grad();
    RunOptions o;
    o.backward = true;
    o.checkpointing = model->checkpointing;
    o.offload_checkpoints = model->offload_checkpoints;
    o.grad_scale = 1.0f / static_cast<float>(count);
    RunResult r;
    llmt_status st = model->m->run(b, o, r);
    if (st) return st;
    if (loss_out) *loss_out = r.loss_sum / static_cast<double>(r.count);
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_grad(llmt_model *model, const int32_t *ids, const int32_t *labels, int64_t batch, int64_t seq,
                            const char *out_path, double *loss_out) {
  return guarded("grad", [&]() -> llmt_status {
    if (!out_path) return set_error(LLMT_ERR_BAD_INPUT, "grad: needs an output path");
    llmt_status st = llmt_model_backward(model, ids, labels, batch, seq, loss_out);
    if (st) return st;
    std::vector<TensorToWrite> t;
    model->m->to_host(true);  // the gradients from backend memory (a no-op on the CPU backend)
    for (Param *p : model->m->trainable_params())
      t.push_back({p->save_name.empty() ? p->name : p->save_name, DType::F32, p->shape, p->grad.data()});
    if ((st = write_safetensors(out_path, t, {{"format", "pt"}}))) return st;
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_generate(llmt_model *model, const int32_t *prompt, int64_t n, const char *params_json,
                                llmt_event_fn on_token, llmt_abort_fn abort, void *user, int32_t *out_ids, int64_t out_cap,
                                int64_t *out_n) {
  return guarded("generate", [&]() -> llmt_status {
    if (out_n) *out_n = 0;
    if (!model || !prompt || n <= 0) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_generate: empty prompt");
    GenParams p;
    if (llmt_status st = parse_gen_params(*model->m, params_json, p, nullptr)) return st;
    std::atomic<bool> stop{false};
    int64_t index = 0;
    std::vector<int32_t> out;
    std::vector<int32_t> pr(prompt, prompt + n);
    auto cb = [&](int32_t tok) {
      if (on_token) {
        std::string e = "{\"token\":" + std::to_string(tok) + ",\"index\":" + std::to_string(index) + "}";
        on_token(user, e.c_str());
      }
      ++index;
      if (abort && abort(user)) stop = true;
      return true;
    };
    if (abort && abort(user)) stop = true;
    llmt_status st = generate(*model->m, pr, p, cb, &stop, out);
    const int64_t k = std::min<int64_t>(out_cap, static_cast<int64_t>(out.size()));
    if (out_ids && k > 0) std::memcpy(out_ids, out.data(), sizeof(int32_t) * static_cast<size_t>(k));
    if (out_n) *out_n = static_cast<int64_t>(out.size());
    if (st == LLMT_OK) clear_error();
    return st;
  });
}

llmt_status llmt_model_generate_batch(llmt_model *model, const int32_t *prompts, const int64_t *lengths, int64_t n_prompts,
                                      const char *params_json, llmt_event_fn on_token, llmt_abort_fn abort, void *user,
                                      int32_t *out_ids, int64_t out_cap, int64_t *out_n) {
  return guarded("generate", [&]() -> llmt_status {
    if (out_n && n_prompts > 0) std::fill(out_n, out_n + n_prompts, 0);
    if (!model || !prompts || !lengths || n_prompts <= 0) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_generate_batch: no prompts");
    GenParams p;
    std::vector<uint64_t> seeds;
    if (llmt_status st = parse_gen_params(*model->m, params_json, p, &seeds)) return st;
    std::vector<std::vector<int32_t>> pr(static_cast<size_t>(n_prompts));
    for (int64_t r = 0, at = 0; r < n_prompts; at += lengths[r], ++r) {
      if (lengths[r] <= 0) return set_error(LLMT_ERR_BAD_INPUT, "generate: prompt " + std::to_string(r) + " has no tokens");
      pr[r].assign(prompts + at, prompts + at + lengths[r]);
    }
    std::atomic<bool> stop{false};
    std::vector<int64_t> index(static_cast<size_t>(n_prompts), 0);
    auto cb = [&](int64_t r, int32_t tok) {
      if (on_token) {
        std::string e = "{\"row\":" + std::to_string(r) + ",\"token\":" + std::to_string(tok) + ",\"index\":" + std::to_string(index[r]) + "}";
        on_token(user, e.c_str());
      }
      ++index[r];
      if (abort && abort(user)) stop = true;
      return true;
    };
    if (abort && abort(user)) stop = true;
    std::vector<std::vector<int32_t>> out;
    llmt_status st = generate_batch(*model->m, pr, p, seeds, cb, &stop, out);
    for (int64_t r = 0; r < n_prompts && r < static_cast<int64_t>(out.size()); ++r) {
      const int64_t k = std::min<int64_t>(out_cap, static_cast<int64_t>(out[r].size()));
      if (out_ids && k > 0) std::memcpy(out_ids + r * out_cap, out[r].data(), sizeof(int32_t) * static_cast<size_t>(k));
      if (out_n) out_n[r] = static_cast<int64_t>(out[r].size());
    }
    if (st == LLMT_OK) clear_error();
    return st;
  });
}

llmt_status llmt_model_eval_loss(llmt_model *model, const char *tok_path, int64_t batch_size, llmt_event_fn on_event,
                                 llmt_abort_fn abort, void *user, char **out_json) {
  return guarded("eval", [&]() -> llmt_status {
    if (out_json) *out_json = nullptr;
    if (!model || !tok_path || !out_json) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_eval_loss: NULL argument");
    if (batch_size < 1) return set_error(LLMT_ERR_BAD_INPUT, "eval: the batch size must be at least 1");
    llmt_status st;
    auto data = TokData::open(tok_path, st);
    if (!data) return st;
    const ModelConfig &c = model->m->config();
    if (data->max_token_id() >= c.vocab) {
      return set_error(LLMT_ERR_BAD_INPUT, std::string(tok_path) + " uses token id " + std::to_string(data->max_token_id()) +
                                               " but the model's vocabulary has " + std::to_string(c.vocab) +
                                               " tokens: was it tokenized for another model?");
    }
    EvalProgress p;
    if (abort) p.aborted = [&] { return abort(user) != 0; };
    if (on_event) {
      p.batch = [&](int64_t done, int64_t total) {
        std::string e = "{\"event\":\"progress\",\"done\":" + std::to_string(done) + ",\"total\":" + std::to_string(total) + "}";
        on_event(user, e.c_str());
      };
    }
    double acc[2] = {0, 0};
    if ((st = eval_loss_sums(*model->m, *data, batch_size, 0, 1, p, acc))) return st;
    const int64_t tokens = static_cast<int64_t>(acc[1]);
    if (!tokens) return set_error(LLMT_ERR_BAD_INPUT, std::string("eval: no token of ") + tok_path + " is scored (every label is -100)");
    const double loss = acc[0] / acc[1];
    Json o = Json::object();
    o.set("loss", Json::number(loss));
    o.set("tokens", Json::integer(tokens));
    o.set("samples", Json::integer(data->size()));
    o.set("perplexity", Json::number(std::exp(loss)));
    *out_json = dup_string(o.dump());
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_train(const char *job_json, llmt_event_fn on_event, llmt_abort_fn control, void *user) {
  return guarded("train", [&]() -> llmt_status {
    if (!job_json) return set_error(LLMT_ERR_BAD_INPUT, "llmt_train: NULL job");
    Json job;
    std::string err;
    TrainControl ctl;
    bool error_sent = false;
    ctl.emit = [&](const Json &e) {
      error_sent = error_sent || e.get_string("event") == "error";
      if (on_event) on_event(user, e.dump().c_str());
    };
    if (control) ctl.poll = [&]() { return control(user); };
    if (!Json::parse(job_json, job, err)) {
      llmt_status st = set_error(LLMT_ERR_BAD_INPUT, "the job is not valid JSON: " + err);
      Json e = Json::object();
      e.set("event", Json::string("error"));
      e.set("code", Json::string("BAD_INPUT"));
      e.set("message", Json::string(llmt_last_error()));
      ctl.emit(e);
      return st;
    }
    llmt_status st;
    try {
      st = run_training(job, ctl);
    } catch (...) {  // a device error or out-of-memory thrown from an op: still one error event with a hint
      st = status_of_current_exception("train");
    }
    if (st != LLMT_OK && !error_sent) {
      Json e = Json::object();
      e.set("event", Json::string("error"));
      e.set("code", Json::string(llmt_status_name(st)));
      e.set("message", Json::string(llmt_last_error()));
      const char *hint = st == LLMT_ERR_OOM ? "Lower micro_batch_size or the sequence lengths, enable gradient_checkpointing, or use QLoRA; the last checkpoint is intact."
                         : st == LLMT_ERR_CUDA ? "A CUDA kernel or library call failed: rerun with LLMT_CUDA_SYNC=1 to name the failing kernel exactly, then resume from the last checkpoint."
                         : st == LLMT_ERR_INTERNAL ? "An internal engine error: please report it with the job file; resume from the last checkpoint."
                                                   : nullptr;
      if (hint) e.set("hint", Json::string(hint));
      ctl.emit(e);
    }
    if (st == LLMT_OK) clear_error();
    return st;
  });
}

llmt_status llmt_model_convert(const char *dir, const char *out_dir, const char *options_json, llmt_event_fn on_event,
                               llmt_abort_fn abort, void *user, char **out_json) {
  return guarded("convert", [&]() -> llmt_status {
    if (!dir) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_convert: NULL dir");
    Json opts = Json::object();
    std::string err;
    if (options_json && *options_json && !Json::parse(options_json, opts, err))
      return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_convert: options are not valid JSON: " + err);
    OpCallbacks cb{on_event, abort, user};
    Json report;
    llmt_status st = convert_checkpoint(dir, out_dir ? out_dir : "", static_cast<uint64_t>(opts.get_int("max_shard_bytes", 0)),
                                        cb, report);
    if (st) return st;
    if (out_json) *out_json = dup_string(report.dump());
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_merge(const char *model_dir, const char *adapter_dir, const char *out_dir, const char *options_json,
                             llmt_event_fn on_event, llmt_abort_fn abort, void *user, char **out_json) {
  return guarded("merge", [&]() -> llmt_status {
    if (!model_dir || !adapter_dir || !out_dir || !*out_dir)
      return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_merge: model_dir, adapter_dir and out_dir are required");
    Json opts = Json::object();
    std::string err;
    if (options_json && *options_json && !Json::parse(options_json, opts, err))
      return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_merge: options are not valid JSON: " + err);
    OpCallbacks cb{on_event, abort, user};
    Json report;
    llmt_status st = merge_adapter(model_dir, adapter_dir, out_dir, opts, cb, report);
    if (st) return st;
    if (out_json) *out_json = dup_string(report.dump());
    clear_error();
    return LLMT_OK;
  });
}

// ---- compute devices of a loaded model (CUDA backend: cuda/, docs/cuda.md) ----------------------------------------
llmt_status llmt_model_set_device(llmt_model *model, const char *device, char *fallback_note, size_t note_cap) {
  return guarded("set-device", [&]() -> llmt_status {
    if (!model || !device) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_set_device: NULL argument");
    std::string fallback, err;
    Backend *be = select_backend(device, &fallback, &err);
    if (!be) return set_error(LLMT_ERR_BAD_INPUT, err);
    if (model->m->quantization().enabled && !be->supports_q4())  // CPU and CUDA both have 4-bit kernels
      return set_error(LLMT_ERR_UNSUPPORTED, std::string("the ") + be->name() +
                                                 " backend has no 4-bit (QLoRA) kernels: load the model without quantization for this device");
    model->m->set_backend(*be);
    if (fallback_note && note_cap) {
      std::strncpy(fallback_note, fallback.c_str(), note_cap - 1);
      fallback_note[note_cap - 1] = 0;
    }
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_set_precision(llmt_model *model, const char *precision) {
  return guarded("set-precision", [&]() -> llmt_status {
    if (!model || !precision) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_set_precision: NULL argument");
    llmt_status st = model->m->set_precision(precision);
    if (st) return st;
    clear_error();
    return LLMT_OK;
  });
}

llmt_status llmt_model_set_checkpointing(llmt_model *model, int on) {
  if (!model) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_set_checkpointing: NULL model");
  if (on < 0 || on > 2) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_set_checkpointing: on must be 0, 1 or 2");
  model->checkpointing = on != 0;
  model->offload_checkpoints = on == 2;
  clear_error();
  return LLMT_OK;
}

llmt_status llmt_model_profile(llmt_model *model, int on, char **out_json) {
  return guarded("profile", [&]() -> llmt_status {
    if (!model) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_profile: NULL model");
    Backend &be = model->m->backend();
    if (on) {
      if (!be.profile_start())
        return set_error(LLMT_ERR_UNSUPPORTED, std::string("profiling times device kernels: the ") + be.name() +
                                                   " backend has none (or the CUDA driver has no events)");
      model->profiling = true;
      clear_error();
      return LLMT_OK;
    }
    if (!model->profiling) return set_error(LLMT_ERR_BAD_INPUT, "llmt_model_profile: stop without a start");
    model->profiling = false;
    const std::vector<ProfileRow> rows = be.profile_stop();
    double total = 0;
    Json arr = Json::array();
    for (const ProfileRow &r : rows) {
      total += r.ms;
      Json o = Json::object();
      o.set("name", Json::string(r.name));
      o.set("calls", Json::integer(r.calls));
      o.set("ms", Json::number(r.ms));
      o.set("flops", Json::number(r.flops));
      o.set("tflops", r.flops > 0 && r.ms > 0 ? Json::number(r.flops / (r.ms * 1e-3) / 1e12) : Json());
      arr.push(o);
    }
    Json o = Json::object();
    o.set("device", Json::string(be.name()));
    o.set("kernel_ms", Json::number(total));
    o.set("rows", arr);
    if (out_json) *out_json = dup_string(o.dump());
    clear_error();
    return LLMT_OK;
  });
}

const char *llmt_backends_info(void) {
  static const std::string s = "backends: " + compiled_backends() + "\n" + runnable_backends();
  return s.c_str();
}

}  // extern "C"
