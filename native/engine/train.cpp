// train.cpp — the training loop (see train.hpp). HF Trainer semantics, stated here once:
//  - loss per token: cross-entropy of shifted labels, −100 ignored;
//  - gradient accumulation: "token_mean" divides the summed token losses of all micro-batches of a step by
//    their total token count (transformers ≥ 4.46 for models that accept num_items_in_batch: llama,
//    gpt_neox); "mean_of_means" averages each micro-batch's mean loss over the GA micro-batches
//    (transformers ≤ 4.45, and remote-code models such as Baichuan). "auto" picks per family;
//  - an optimizer step never spans two epochs: the last step of an epoch takes the micro-batches that are left
//    (transformers ≥ 4.46; mean_of_means then averages over that many), and num_epochs E gives
//    ceil(E · ceil(micro-batches per epoch / GA)) steps (HF's max_steps, fractional E included);
//  - logged loss: the mean of the step losses since the last log; grad_norm: the global L2 norm before
//    clipping; lr: the rate used by this step's update (HF logs that since transformers#36973; 4.45 logged the
//    next step's); epoch: as HF's state.epoch, epochs done + micro-batches done / micro-batches per epoch;
//  - AdamW (torch) with decay on all but biases and norm weights; schedules as transformers.get_scheduler.
// Data parallelism (docs/distributed.md): N ranks each load the model; rank 0's trainable weights (and, on
// resume, its checkpoint) are broadcast; micro-batch k of a step is the slice [r·b, (r+1)·b) of the global
// micro-batch of N·b samples, and every normalisation uses GLOBAL token counts (all-reduced before the
// backward), so the summed gradients and the reduced loss are those of one worker with micro-batch N·b.
// Gradients are summed in buckets on a communication thread, each started by Model::run's gradient-ready hook
// during the last micro-batch's backward as soon as it is complete; every rank then clips and steps identically
// (ranks stay bit-identical without re-broadcasting weights). Only rank 0 emits the run's events and writes
// the output folder; other ranks emit only their `error`.
#include "train.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <map>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "../cpu/ops.hpp"
#include "backend.hpp"
#include "../cuda/cuda.hpp"
#include "collective.hpp"
#include "evaluate.hpp"
#include "model.hpp"
#include "rng.hpp"
#include "safetensors.hpp"
#include "status.hpp"
#include "tokdata.hpp"

namespace llmt {

llmt_status make_directories(const std::string &dir);  // adapter.cpp

double lr_factor(const std::string &schedule, int64_t step, int64_t warmup, int64_t total) {
  if (schedule == "constant") return 1.0;
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (schedule == "constant_with_warmup") return 1.0;
  if (schedule == "linear") {
    return std::max(0.0, static_cast<double>(total - step) / static_cast<double>(std::max<int64_t>(1, total - warmup)));
  }
  // cosine (num_cycles = 0.5)
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 2.0 * 0.5 * progress)));
}

namespace {

struct Job {
  std::string model_dir, method = "lora", init_adapter;
  QuantSpec quant;  // "quantization": QLoRA base weights (quant.hpp)
  LoraSpec lora;
  std::string train_path, eval_path;
  double neftune_alpha = 0;  // NEFTune (HF Trainer's neftune_noise_alpha): noise on the input embeddings in training
  bool padding_free = true;  // micro-batches packed into fewer rows (make_batch_padding_free): same numbers, less padding
  double loraplus_ratio = 0;  // LoRA+ (PEFT's create_loraplus_optimizer): lora_B and 1-D parameters at lr × this
  double lr = 2e-4, warmup_ratio = 0, max_grad_norm = 1.0, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::string schedule = "linear", loss_norm = "auto";
  int64_t warmup_steps = 0, max_steps = -1, micro_batch = 4, grad_accum = 1, eval_batch = 4;
  double epochs = 3;  // training.num_epochs: fractional as HF's num_train_epochs
  uint64_t seed = 42;
  bool checkpointing = false;
  std::string precision = "fp32";  // training.precision: frozen base weights in bf16/fp16 (Model::set_precision)
  bool offload_optimizer = false;  // training.offload_optimizer: AdamW state and step in host memory (GPU runs)
  bool offload_checkpoints = false;  // training.offload_checkpoints: checkpointed block inputs in host memory (GPU runs)
  std::string out_dir;
  int64_t logging_steps = 10, save_steps = 500, eval_steps = 0, save_total_limit = 0;
  // HF Trainer's load_best_model_at_end (metric: eval_loss, lower is better) and EarlyStoppingCallback
  bool load_best = false;
  int64_t es_patience = 0;
  double es_threshold = 0;
  std::string resume_from;
  int64_t threads = 0;
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N", "auto" (cuda/cuda.hpp select_backend)
  // distributed (docs/formats.md "distributed"); the world itself comes from the environment
  std::string dist_backend = "auto";
  double dist_timeout_s = 300, bucket_mb = 25;
  int64_t dist_world_size = 0, zero_stage = 0;
  bool overlap = true;  // start gradient buckets during the backward (false: after it, for measurements)
  Json raw;
};

llmt_status check_keys(const Json &o, const std::string &where, std::initializer_list<const char *> allowed) {
  if (!o.is_object()) return set_error(LLMT_ERR_BAD_INPUT, "job: " + where + " must be an object");
  for (const auto &kv : o.members()) {
    bool ok = false;
    for (const char *a : allowed) ok = ok || kv.first == a;
    if (!ok) {
      std::string list;
      for (const char *a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      return set_error(LLMT_ERR_BAD_INPUT, "job: unknown field \"" + where + "." + kv.first + "\" (known: " + list + ")");
    }
  }
  return LLMT_OK;
}

// A present field of the wrong JSON type is an error naming it (a typo such as "learning_rate": "2e-4" must not
// train with the default); null counts as absent.
enum class Kind { Int, Num, Bool, Str, StrList, StrOrStrList, Obj, StrOrObj, IntOrIntList };

bool kind_ok(const Json &v, Kind k) {
  auto str_list = [&] {
    if (!v.is_array()) return false;
    for (const auto &x : v.items())
      if (!x.is_string()) return false;
    return true;
  };
  switch (k) {
    case Kind::Int: return v.is_integer();
    case Kind::Num: return v.is_number();
    case Kind::Bool: return v.is_bool();
    case Kind::Str: return v.is_string();
    case Kind::StrList: return str_list();
    case Kind::StrOrStrList: return v.is_string() || str_list();
    case Kind::Obj: return v.is_object();
    case Kind::StrOrObj: return v.is_string() || v.is_object();
    case Kind::IntOrIntList:
      if (v.is_integer()) return true;
      if (!v.is_array()) return false;
      for (const auto &x : v.items())
        if (!x.is_integer()) return false;
      return true;
  }
  return false;
}

const char *kind_name(Kind k) {
  switch (k) {
    case Kind::Int: return "an integer";
    case Kind::Num: return "a number";
    case Kind::Bool: return "true or false";
    case Kind::Str: return "a string";
    case Kind::StrList: return "a list of strings";
    case Kind::StrOrStrList: return "a string or a list of strings";
    case Kind::Obj: return "an object";
    case Kind::StrOrObj: return "a string or an object";
    case Kind::IntOrIntList: return "an integer or a list of integers";
  }
  return "?";
}

llmt_status check_types(const Json &o, const std::string &where, std::initializer_list<std::pair<const char *, Kind>> fields) {
  if (!o.is_object()) return LLMT_OK;
  for (const auto &f : fields) {
    const Json &v = o.get(f.first);
    if (v.is_null() || kind_ok(v, f.second)) continue;
    std::string got = v.dump();
    if (got.size() > 60) got = got.substr(0, 57) + "...";
    return set_error(LLMT_ERR_BAD_INPUT, "job: " + where + f.first + " must be " + kind_name(f.second) + " (got " + got + ")");
  }
  return LLMT_OK;
}

llmt_status check_job_types(const Json &j) {
  llmt_status st;
  if ((st = check_types(j, "", {{"version", Kind::Int}, {"model", Kind::StrOrObj}, {"method", Kind::Str}, {"lora", Kind::Obj},
                                {"data", Kind::Obj}, {"training", Kind::Obj}, {"output", Kind::Obj}, {"resume_from", Kind::Str},
                                {"threads", Kind::Int}, {"distributed", Kind::Obj}, {"quantization", Kind::StrOrObj}, {"device", Kind::Str}})))
    return st;
  if ((st = check_types(j.get("model"), "model.", {{"path", Kind::Str}}))) return st;
  if ((st = check_types(j.get("quantization"), "quantization.", {{"type", Kind::Str}, {"double_quant", Kind::Bool}}))) return st;
  if ((st = check_types(j.get("lora"), "lora.", {{"r", Kind::Int}, {"alpha", Kind::Num}, {"dropout", Kind::Num},
                                                 {"target_modules", Kind::StrOrStrList}, {"modules_to_save", Kind::StrList},
                                                 {"bias", Kind::Str}, {"use_rslora", Kind::Bool}, {"use_dora", Kind::Bool}, {"init_adapter", Kind::Str},
                                                 {"rank_pattern", Kind::Obj}, {"alpha_pattern", Kind::Obj},
                                                 {"exclude_modules", Kind::StrOrStrList}, {"layers_to_transform", Kind::IntOrIntList},
                                                 {"layers_pattern", Kind::StrOrStrList}})))
    return st;
  if ((st = check_types(j.get("data"), "data.", {{"train", Kind::Str}, {"eval", Kind::Str}}))) return st;
  if ((st = check_types(j.get("training"), "training.",
                        {{"learning_rate", Kind::Num}, {"lr_scheduler", Kind::Str}, {"warmup_steps", Kind::Int}, {"warmup_ratio", Kind::Num}, {"neftune_noise_alpha", Kind::Num}, {"loraplus_lr_ratio", Kind::Num}, {"padding_free", Kind::Bool},
                         {"max_steps", Kind::Int}, {"num_epochs", Kind::Num}, {"micro_batch_size", Kind::Int},
                         {"gradient_accumulation_steps", Kind::Int}, {"max_grad_norm", Kind::Num}, {"weight_decay", Kind::Num},
                         {"adam_beta1", Kind::Num}, {"adam_beta2", Kind::Num}, {"adam_epsilon", Kind::Num}, {"seed", Kind::Int},
                         {"gradient_checkpointing", Kind::Bool}, {"loss_normalization", Kind::Str}, {"eval_batch_size", Kind::Int},
                         {"precision", Kind::Str}, {"offload_optimizer", Kind::Bool}, {"offload_checkpoints", Kind::Bool}})))
    return st;
  if ((st = check_types(j.get("output"), "output.", {{"dir", Kind::Str}, {"logging_steps", Kind::Int}, {"save_steps", Kind::Int},
                                                     {"eval_steps", Kind::Int}, {"save_total_limit", Kind::Int},
                                                     {"load_best_model_at_end", Kind::Bool}, {"early_stopping_patience", Kind::Int},
                                                     {"early_stopping_threshold", Kind::Num}})))
    return st;
  return check_types(j.get("distributed"), "distributed.", {{"backend", Kind::Str}, {"world_size", Kind::Int}, {"timeout_s", Kind::Num},
                                                            {"bucket_mb", Kind::Num}, {"zero_stage", Kind::Int}, {"overlap_backward", Kind::Bool}});
}

llmt_status parse_job(const Json &j, Job &job) {
  llmt_status st = check_keys(j, "(job)", {"version", "model", "method", "lora", "data", "training", "output", "resume_from", "threads", "distributed", "quantization", "device"});
  if (st) return st;
  if ((st = check_job_types(j))) return st;
  job.raw = j;
  job.device = j.get_string("device", "cpu");
  const Json &m = j.get("model");
  job.model_dir = m.is_string() ? m.as_string() : m.get_string("path");
  if (job.model_dir.empty()) return set_error(LLMT_ERR_BAD_INPUT, "job: \"model\" (the HF model folder) is required");
  job.method = j.get_string("method", "lora");
  if (job.method != "lora" && job.method != "full") return set_error(LLMT_ERR_BAD_INPUT, "job: method must be \"lora\" or \"full\"");
  {
    const Json &q = j.get("quantization");
    if (!q.is_null() && !q.is_string() && !q.is_object())
      return set_error(LLMT_ERR_BAD_INPUT, "job: quantization must be \"nf4\", \"fp4\", \"none\" or {\"type\", \"double_quant\"}");
    if (q.is_object() && (st = check_keys(q, "quantization", {"type", "double_quant"}))) return st;
    if ((st = parse_quant_spec(q.is_string() ? q.as_string() : q.is_object() ? q.get_string("type", "nf4") : "", job.quant))) return st;
    if (q.is_object()) job.quant.double_quant = q.get_bool("double_quant", true);
    if (job.quant.enabled && job.method != "lora")
      return set_error(LLMT_ERR_BAD_INPUT, "job: quantization (QLoRA) needs method \"lora\": the 4-bit base weights are frozen");
  }
  const Json &l = j.get("lora");
  if (!l.is_null()) {
    if ((st = check_keys(l, "lora", {"r", "alpha", "dropout", "target_modules", "modules_to_save", "bias", "use_rslora", "use_dora", "init_adapter",
                                     "rank_pattern", "alpha_pattern", "exclude_modules", "layers_to_transform", "layers_pattern"})))
      return st;
    job.lora.r = l.get_int("r", 8);
    job.lora.alpha = l.get_number("alpha", 16);
    job.lora.dropout = l.get_number("dropout", 0.0);
    job.lora.bias = l.get_string("bias", "none");
    job.lora.use_rslora = l.get_bool("use_rslora", false);
    job.lora.use_dora = l.get_bool("use_dora", false);
    const Json &t = l.get("target_modules");
    if (t.is_string()) job.lora.target_regex = t.as_string();
    for (const auto &x : t.items())
      if (x.is_string()) job.lora.targets.push_back(x.as_string());
    for (const auto &x : l.get("modules_to_save").items())
      if (x.is_string()) job.lora.modules_to_save.push_back(x.as_string());
    for (const char *key : {"rank_pattern", "alpha_pattern"}) {
      const Json &pat = l.get(key);
      if (!pat.is_null() && !pat.is_object())
        return set_error(LLMT_ERR_BAD_INPUT, std::string("job: lora.") + key + " must be an object {module name or regex: value}");
      for (const auto &kv : pat.members()) {
        const bool rank = key[0] == 'r';
        if (rank ? !(kv.second.is_integer() && kv.second.as_int() > 0) : !kv.second.is_number())
          return set_error(LLMT_ERR_BAD_INPUT, std::string("job: lora.") + key + "[\"" + kv.first + "\"] must be " +
                                                   (rank ? "a positive integer" : "a number"));
        if (rank) job.lora.rank_pattern[kv.first] = kv.second.as_int();
        else job.lora.alpha_pattern[kv.first] = kv.second.as_double();
      }
    }
    const Json &ex = l.get("exclude_modules");
    if (ex.is_string()) {
      job.lora.exclude_regex = ex.as_string();
    } else {
      for (const auto &x : ex.items())
        if (x.is_string()) job.lora.exclude_modules.push_back(x.as_string());
    }
    if ((st = peft_layer_options(l, "job: lora", job.lora))) return st;
    job.init_adapter = l.get_string("init_adapter");
  }
  const Json &d = j.get("data");
  if ((st = check_keys(d, "data", {"train", "eval"}))) return st;
  job.train_path = d.get_string("train");
  job.eval_path = d.get_string("eval");
  if (job.train_path.empty()) return set_error(LLMT_ERR_BAD_INPUT, "job: data.train (a .tok or JSON tokens file) is required");
  const Json &t = j.get("training");
  if (!t.is_null()) {
    if ((st = check_keys(t, "training", {"learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio", "neftune_noise_alpha", "loraplus_lr_ratio", "padding_free", "max_steps", "num_epochs",
                                          "micro_batch_size", "gradient_accumulation_steps", "max_grad_norm", "weight_decay",
                                          "adam_beta1", "adam_beta2", "adam_epsilon", "seed", "gradient_checkpointing",
                                          "loss_normalization", "eval_batch_size", "precision", "offload_optimizer",
                                          "offload_checkpoints"})))
      return st;
    job.lr = t.get_number("learning_rate", job.lr);
    job.schedule = t.get_string("lr_scheduler", job.schedule);
    job.warmup_steps = t.get_int("warmup_steps", 0);
    job.warmup_ratio = t.get_number("warmup_ratio", 0);
    job.neftune_alpha = t.get_number("neftune_noise_alpha", 0);
    job.loraplus_ratio = t.get_number("loraplus_lr_ratio", 0);
    job.padding_free = t.get_bool("padding_free", true);
    if (!(job.loraplus_ratio >= 0) || !std::isfinite(job.loraplus_ratio))
      return set_error(LLMT_ERR_BAD_INPUT, "job: training.loraplus_lr_ratio must be a number >= 0 (LoRA+'s lr_B / lr_A, e.g. 16; 0 turns it off)");
    if (!(job.neftune_alpha >= 0) || !std::isfinite(job.neftune_alpha))
      return set_error(LLMT_ERR_BAD_INPUT, "job: training.neftune_noise_alpha must be a number >= 0 (HF's neftune_noise_alpha; 0 turns it off)");
    job.max_steps = t.get_int("max_steps", -1);
    job.epochs = t.get_number("num_epochs", 3);
    job.micro_batch = t.get_int("micro_batch_size", 4);
    job.grad_accum = t.get_int("gradient_accumulation_steps", 1);
    job.max_grad_norm = t.get_number("max_grad_norm", 1.0);
    job.weight_decay = t.get_number("weight_decay", 0.0);
    job.beta1 = t.get_number("adam_beta1", 0.9);
    job.beta2 = t.get_number("adam_beta2", 0.999);
    job.eps = t.get_number("adam_epsilon", 1e-8);
    job.seed = static_cast<uint64_t>(t.get_int("seed", 42));
    job.checkpointing = t.get_bool("gradient_checkpointing", false);
    job.loss_norm = t.get_string("loss_normalization", "auto");
    job.eval_batch = t.get_int("eval_batch_size", job.micro_batch);
    job.precision = t.get_string("precision", "fp32");
    if (t.has("offload_optimizer") && !t.get("offload_optimizer").is_bool())
      return set_error(LLMT_ERR_BAD_INPUT, "job: training.offload_optimizer must be true or false");
    job.offload_optimizer = t.get_bool("offload_optimizer", false);
    if (t.has("offload_checkpoints") && !t.get("offload_checkpoints").is_bool())
      return set_error(LLMT_ERR_BAD_INPUT, "job: training.offload_checkpoints must be true or false");
    job.offload_checkpoints = t.get_bool("offload_checkpoints", false);
    if (job.offload_checkpoints && !job.checkpointing)
      return set_error(LLMT_ERR_BAD_INPUT, "job: training.offload_checkpoints moves the checkpointed block inputs to host memory, so it needs gradient_checkpointing: true");
    if (job.precision != "fp32" && job.precision != "bf16" && job.precision != "fp16")
      return set_error(LLMT_ERR_BAD_INPUT, "job: training.precision must be \"fp32\", \"bf16\" or \"fp16\" (got \"" + job.precision + "\")");
  }
  const Json &o = j.get("output");
  if ((st = check_keys(o, "output", {"dir", "logging_steps", "save_steps", "eval_steps", "save_total_limit", "load_best_model_at_end",
                                      "early_stopping_patience", "early_stopping_threshold"})))
    return st;
  job.out_dir = o.get_string("dir");
  if (job.out_dir.empty()) return set_error(LLMT_ERR_BAD_INPUT, "job: output.dir is required");
  job.logging_steps = o.get_int("logging_steps", 10);
  job.save_steps = o.get_int("save_steps", 500);
  job.eval_steps = o.get_int("eval_steps", 0);
  job.save_total_limit = o.get_int("save_total_limit", 0);
  job.load_best = o.get_bool("load_best_model_at_end", false);
  job.es_patience = o.get_int("early_stopping_patience", 0);
  job.es_threshold = o.get_number("early_stopping_threshold", 0);
  if (job.save_total_limit < 0) return set_error(LLMT_ERR_BAD_INPUT, "job: output.save_total_limit must be 0 (keep every checkpoint) or more");
  if (job.es_patience < 0 || !(job.es_threshold >= 0))
    return set_error(LLMT_ERR_BAD_INPUT, "job: output.early_stopping_patience and early_stopping_threshold must be 0 (off) or more");
  if (job.load_best || job.es_patience > 0) {
    const std::string what = job.load_best ? "output.load_best_model_at_end" : "output.early_stopping_patience";
    if (job.eval_path.empty() || job.eval_steps <= 0)
      return set_error(LLMT_ERR_BAD_INPUT, "job: " + what + " compares evaluation losses, so it needs evaluation data (data.eval) and output.eval_steps > 0");
    if (job.load_best && job.save_steps % job.eval_steps != 0)
      return set_error(LLMT_ERR_BAD_INPUT, "job: output.load_best_model_at_end needs a checkpoint at evaluations: save_steps (" + std::to_string(job.save_steps) +
                                               ") must be a multiple of eval_steps (" + std::to_string(job.eval_steps) + "), as HF Trainer requires");
  }
  job.resume_from = j.get_string("resume_from");
  job.threads = j.get_int("threads", 0);
  const Json &dj = j.get("distributed");
  if (!dj.is_null()) {
    if ((st = check_keys(dj, "distributed", {"backend", "world_size", "timeout_s", "bucket_mb", "zero_stage", "overlap_backward"}))) return st;
    job.dist_backend = dj.get_string("backend", "auto");
    job.dist_world_size = dj.get_int("world_size", 0);
    job.dist_timeout_s = dj.get_number("timeout_s", 300);
    job.bucket_mb = dj.get_number("bucket_mb", 25);
    job.zero_stage = dj.get_int("zero_stage", 0);
    job.overlap = dj.get_bool("overlap_backward", true);
    if (job.dist_backend != "auto" && job.dist_backend != "gloo" && job.dist_backend != "nccl")
      return set_error(LLMT_ERR_BAD_INPUT, "job: distributed.backend must be auto, gloo or nccl");
    if (!(job.dist_timeout_s > 0)) return set_error(LLMT_ERR_BAD_INPUT, "job: distributed.timeout_s must be positive");
    if (!(job.bucket_mb > 0)) return set_error(LLMT_ERR_BAD_INPUT, "job: distributed.bucket_mb must be positive");
    if (job.zero_stage < 0 || job.zero_stage > 2)
      return set_error(LLMT_ERR_BAD_INPUT, "job: distributed.zero_stage must be 0, 1 or 2 (ZeRO-3, parameter sharding, is not supported)");
  }
  auto positive = [](int64_t v, const char *name) -> llmt_status {
    return v > 0 ? LLMT_OK : set_error(LLMT_ERR_BAD_INPUT, std::string("job: ") + name + " must be a positive integer");
  };
  if ((st = positive(job.micro_batch, "training.micro_batch_size")) || (st = positive(job.grad_accum, "training.gradient_accumulation_steps")) ||
      (st = positive(job.eval_batch, "training.eval_batch_size")) || (st = positive(job.logging_steps, "output.logging_steps")) ||
      (st = positive(job.save_steps, "output.save_steps")))
    return st;
  if (job.max_steps <= 0 && !(job.epochs > 0 && std::isfinite(job.epochs)))
    return set_error(LLMT_ERR_BAD_INPUT, "job: set training.max_steps or a positive training.num_epochs");
  if (!(job.lr > 0) || !std::isfinite(job.lr)) return set_error(LLMT_ERR_BAD_INPUT, "job: training.learning_rate must be positive");
  const std::set<std::string> schedules = {"linear", "cosine", "constant", "constant_with_warmup"};
  if (!schedules.count(job.schedule)) return set_error(LLMT_ERR_BAD_INPUT, "job: lr_scheduler must be linear, cosine, constant or constant_with_warmup");
  if (job.loss_norm != "auto" && job.loss_norm != "token_mean" && job.loss_norm != "mean_of_means")
    return set_error(LLMT_ERR_BAD_INPUT, "job: loss_normalization must be auto, token_mean or mean_of_means");
  return LLMT_OK;
}

// Peak resident set (VmHWM), for checking the pre-flight memory estimate.
int64_t peak_rss_bytes() {
  int64_t kb = 0;
  if (FILE *f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::atoll(line + 6);
    std::fclose(f);
  }
  return kb * 1024;
}

int64_t rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE *f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<int64_t>(resident) * ::sysconf(_SC_PAGESIZE);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool is_dir(const std::string &p) {
  struct stat sb;
  return ::stat(p.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode);
}

void remove_tree(const std::string &p) {
  if (DIR *d = ::opendir(p.c_str())) {
    while (dirent *e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      std::string c = p + "/" + n;
      if (is_dir(c)) remove_tree(c);
      else ::unlink(c.c_str());
    }
    ::closedir(d);
  }
  ::rmdir(p.c_str());
}

std::vector<int64_t> list_checkpoints(const std::string &out) {
  std::vector<int64_t> steps;
  if (DIR *d = ::opendir(out.c_str())) {
    while (dirent *e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("checkpoint-", 0) == 0 && n.find(".tmp") == std::string::npos) {
        char *end = nullptr;
        long long s = std::strtoll(n.c_str() + 11, &end, 10);
        if (end && *end == '\0' && s > 0) steps.push_back(s);
      }
    }
    ::closedir(d);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

// The tensors of tp that pick(i) selects, as multi-tensor slots (Backend::*_multi: the optimizer step's ops in a few
// launches on a GPU).
template <typename Pick>
std::vector<TensorSlot> slots(const std::vector<Param *> &tp, Pick pick) {
  std::vector<TensorSlot> ts;
  for (size_t i = 0; i < tp.size(); ++i) {
    if (!pick(i)) continue;
    TensorSlot t;
    t.w = tp[i]->w();
    t.g = tp[i]->g();
    t.m = tp[i]->m();
    t.v = tp[i]->v();
    t.n = tp[i]->numel();
    t.decay = tp[i]->decay;
    ts.push_back(t);
  }
  return ts;
}

// Data order: one permutation per epoch from (seed, epoch); the cursor is (epoch, index).
struct Cursor {
  int64_t epoch = 0, index = 0;
};

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  Rng r(seed ^ mix64(0xDA7A0000ull + static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[static_cast<int64_t>(r.below(static_cast<uint64_t>(i + 1)))]);
  return p;
}

// make_batch: evaluate.cpp (shared with llmt_model_eval_loss)

int64_t count_targets(const Batch &b) {
  int64_t c = 0;
  for (int64_t r = 0; r < b.B; ++r)
    for (int64_t t = 1; t < b.T; ++t) c += b.labels[r * b.T + t] != -100;
  return c;
}

Json ev(const char *name) {
  Json e = Json::object();
  e.set("event", Json::string(name));
  return e;
}

// ---- data parallelism ----

double mono_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One rank's place in the world and its communicator; world_size 1 means none of this is used.
struct Dist {
  DistEnv env;
  std::unique_ptr<KvStore> store;
  std::unique_ptr<Collective> comm;
  double comm_wait_s = 0;  // time this rank spent blocked in collectives (since the last log)
  int64_t timeout_ms = 300000;
  bool on() const { return env.world_size > 1; }
  int rank() const { return env.rank; }
  int world() const { return env.world_size; }

  // A failed collective: the peer is gone (or timed out). Name the rank that failed first when it left a
  // note in the store, so every rank's error points at the cause.
  llmt_status lost(const std::string &what, Json *extra) {
    std::string msg = std::string(comm ? comm->last_error() : "") + " (during " + what + ")";
    int first = -1;
    std::string note;
    if (store) {
      const double until = mono_s() + 1.0;
      while (first < 0 && mono_s() < until) {
        for (int r = 0; r < world() && first < 0; ++r) {
          std::vector<char> v;
          if (r != rank() && store->try_get("failed/" + std::to_string(r), v) == 1) {
            first = r;
            note.assign(v.begin(), v.end());
          }
        }
        if (first < 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    if (extra) {
      extra->set("peer_lost", Json::boolean(true));
      if (first >= 0) extra->set("failed_rank", Json::integer(first));
    }
    return set_error(LLMT_ERR_IO, "rank " + std::to_string(rank()) + " lost its peers: " +
                                      (first >= 0 ? "rank " + std::to_string(first) + " failed first (" + note + "); " : "") + msg);
  }
  // A communicator on device buffers (NCCL) gets host values through this backend's memory, on its stream.
  Backend *staging = nullptr;
  template <typename T>
  int collective(T *v, size_t n, bool bcast) {
    const CollDType t = sizeof(T) == 8 ? CollDType::F64 : CollDType::F32;
    if (!staging) return bcast ? comm->broadcast(v, n, t, 0) : comm->allreduce_sum(v, n, t);
    if (n == 0) return 0;
    const size_t bytes = sizeof(T) * n;
    void *d = staging->alloc(bytes);
    staging->upload(d, v, bytes);
    void *s = staging->stream_handle();
    const int r = bcast ? comm->broadcast(d, n, t, 0, s) : comm->allreduce_sum(d, n, t, s);
    if (!r) staging->download(v, d, bytes);
    staging->release(d);
    return r;
  }
  int allreduce(double *v, size_t n) {
    const double t = mono_s();
    int r = collective(v, n, false);
    comm_wait_s += mono_s() - t;
    return r;
  }
  int allreduce(float *v, size_t n) {
    const double t = mono_s();
    int r = collective(v, n, false);
    comm_wait_s += mono_s() - t;
    return r;
  }
  int broadcast(float *v, size_t n) { return collective(v, n, true); }
  int broadcast(double *v, size_t n) { return collective(v, n, true); }
  // NCCL has no barrier: a one-element all-reduce is one
  int barrier() {
    if (!staging) return comm->barrier();
    double x = 0;
    return collective(&x, 1, false);
  }
};

// The gradient memory of `ps`, as (pointer, count) pairs.
std::vector<std::pair<void *, size_t>> grad_bufs(const std::vector<Param *> &ps) {
  std::vector<std::pair<void *, size_t>> bufs;
  for (Param *p : ps) bufs.emplace_back(p->g(), static_cast<size_t>(p->numel()));
  return bufs;
}

// Sums float buffers over the ranks in place, as one group. NCCL: on the device, in the backend's stream. Gloo
// reduces host memory: buffers in backend memory are staged through `flat` (download → reduce → upload; it must hold
// them all); on a host-memory backend a single buffer is reduced in place.
int allreduce_grads(Collective &comm, Backend &be, const std::vector<std::pair<void *, size_t>> &bufs, std::vector<float> &flat) {
  if (comm.device_buffers()) return comm.allreduce_sum_many(bufs, CollDType::F32, be.stream_handle());
  if (bufs.size() == 1 && be.host_memory()) return comm.allreduce_sum(bufs[0].first, bufs[0].second, CollDType::F32);
  size_t total = 0;
  for (const auto &b : bufs) total += b.second;
  float *dst = flat.data();
  for (const auto &b : bufs) {
    be.download(dst, b.first, sizeof(float) * b.second);
    dst += b.second;
  }
  if (int r = comm.allreduce_sum(flat.data(), total, CollDType::F32)) return r;
  const float *src = flat.data();
  for (const auto &b : bufs) {
    be.upload(b.first, src, sizeof(float) * b.second);
    src += b.second;
  }
  return 0;
}

// Sums gradients over the ranks in buckets of about bucket_mb on a communication thread, overlapped with the
// backward pass. Buckets follow the parameters in reverse (the order a backward finishes them: head, last block
// … first block, embeddings). On the last micro-batch of a step, Model::run's gradient-ready hook calls ready()
// after each stage; every bucket whose parameters are all final is handed to the thread at once, in bucket order,
// so the last layers are on the wire while earlier layers are still in backward. The thread packs a bucket,
// all-reduces it and unpacks it (a bucket of one parameter is reduced in place); the main thread takes the
// squared norm of the summed buckets in bucket order, whenever one is done, then waits for the rest in finish().
// The norm accumulates in one double in backend memory (sum_squares_acc, stream-ordered after the bucket's
// reduction): on a GPU no wait per tensor, one download per step in finish().
// Bucket boundaries, the summation order and the norm's order are those of a reduction after the backward, so
// the result is bit-identical with or without overlap.
class GradReducer {
 public:
  GradReducer(Collective &comm, std::vector<Param *> params, double bucket_mb, Backend &be) : comm_(comm), be_(be) {
    const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024 / sizeof(float)));
    std::reverse(params.begin(), params.end());
    for (Param *p : params) {
      if (buckets_.empty() || (buckets_.back().numel > 0 && buckets_.back().numel + p->numel() > cap)) buckets_.emplace_back();
      buckets_.back().params.push_back(p);
      buckets_.back().numel += p->numel();
      bucket_of_[p] = buckets_.size() - 1;
      max_numel_ = std::max(max_numel_, buckets_.back().numel);
    }
    pending_.resize(buckets_.size());
    if (!comm.device_buffers()) flat_.resize(static_cast<size_t>(max_numel_));  // Gloo packs buckets in host memory
    acc_ = static_cast<double *>(be_.alloc(sizeof(double)));
    thread_ = std::thread([this] { loop(); });
  }
  ~GradReducer() {
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
    be_.release(acc_);
  }
  size_t num_buckets() const { return buckets_.size(); }
  /** Buckets handed to the thread by ready(), i.e. before the backward finished, in the last step. */
  size_t overlapped() const { return early_; }

  /** A new step: no gradient is final yet. */
  void begin() {
    for (size_t i = 0; i < buckets_.size(); ++i) pending_[i] = buckets_[i].params.size();
    next_submit_ = next_norm_ = early_ = 0;
    const double zero = 0;
    be_.upload(acc_, &zero, sizeof zero);
  }
  /** The gradient-ready hook: these parameters' gradients are final. Never waits for the network. */
  void ready(const std::vector<Param *> &ps) {
    for (Param *p : ps) {
      auto it = bucket_of_.find(p);
      if (it != bucket_of_.end() && pending_[it->second] > 0) --pending_[it->second];
    }
    while (next_submit_ < buckets_.size() && pending_[next_submit_] == 0) {
      submit(next_submit_++);
      ++early_;
    }
    while (next_norm_ < next_submit_ && done(next_norm_) == 0) norm(next_norm_++);
  }
  /** After the backward: hands over what is left, waits for every bucket and gives the squared L2 norm of the
   *  summed gradients. wait_s: time the main thread waited for the network (the exposed communication). */
  int finish(double &sum_sq, double &wait_s, std::string &err) {
    wait_s = 0;
    while (next_submit_ < buckets_.size()) submit(next_submit_++);
    int rc = 0;
    for (; next_norm_ < buckets_.size(); ++next_norm_) {
      const double t = mono_s();
      const int r = wait(next_norm_);
      wait_s += mono_s() - t;
      if (r) {
        rc = r;
        err = comm_.last_error();
        break;
      }
      norm(next_norm_);
    }
    sum_sq = 0;
    if (rc == 0) be_.download(&sum_sq, acc_, sizeof sum_sq);
    // drain what is still queued so the next step starts clean
    std::unique_lock<std::mutex> g(mu_);
    cv_.wait(g, [&] { return queue_.empty() && !busy_; });
    done_.clear();
    return rc;
  }

 private:
  struct Bucket {
    std::vector<Param *> params;
    int64_t numel = 0;
  };
  void norm(size_t i) {
    for (Param *p : buckets_[i].params) be_.sum_squares_acc(p->g(), p->numel(), acc_);
  }
  void submit(size_t i) {
    {
      std::lock_guard<std::mutex> g(mu_);
      queue_.push_back(i);
    }
    cv_.notify_all();
  }
  int done(size_t i) {  // 0: reduced; −1: not yet; else the error
    std::lock_guard<std::mutex> g(mu_);
    auto it = done_.find(i);
    return it == done_.end() ? -1 : it->second;
  }
  int wait(size_t i) {
    std::unique_lock<std::mutex> g(mu_);
    cv_.wait(g, [&] { return done_.count(i) > 0; });
    return done_[i];
  }
  int reduce(size_t i) { return allreduce_grads(comm_, be_, grad_bufs(buckets_[i].params), flat_); }
  void loop() {
    for (;;) {
      size_t i;
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return quit_ || !queue_.empty(); });
        if (quit_) return;
        i = queue_.front();
        queue_.erase(queue_.begin());
        busy_ = true;
      }
      const int r = failed_ ? LLMT_ERR_IO : reduce(i);
      if (r) failed_ = true;
      {
        std::lock_guard<std::mutex> g(mu_);
        done_[i] = r;
        busy_ = false;
      }
      cv_.notify_all();
    }
  }
  Collective &comm_;
  Backend &be_;
  std::vector<Bucket> buckets_;
  std::map<const Param *, size_t> bucket_of_;
  int64_t max_numel_ = 0;
  std::vector<float> flat_;  // the thread's packing buffer
  // main thread only
  std::vector<size_t> pending_;  // per bucket: parameters not yet final
  size_t next_submit_ = 0, next_norm_ = 0, early_ = 0;
  double *acc_ = nullptr;  // Σ g² of the summed buckets, in backend memory
  // shared with the thread, under mu_
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<size_t> queue_;
  std::map<size_t, int> done_;
  bool busy_ = false, quit_ = false, failed_ = false;
};

// ZeRO-2 (distributed.zero_stage 2, full fine-tuning): the gradients are sharded too, as DeepSpeed's stage 2 does.
// Each rank keeps a gradient buffer only for the parameters it owns (shard_owners: the same groups as its AdamW
// state). A parameter another rank owns gets gradient memory only while the backward stage that computes it runs
// (Model::grad_stages: the head, each block, the embeddings): Model::run's bind hook points it at one of two staging
// slots, zeroed, each as large as the largest stage's staged parameters; the ready hook hands the stage's gradients
// (owned and staged) to the communication thread, which sums them over the ranks in place, and the slot is used again
// two stages later, once that sum is done — so one stage computes while the one before is on the wire. Each
// gradient is summed into its owner only (a rooted reduce: NCCL's ncclReduce, Gloo's ring reduce — half the bytes of
// an all-reduce); the others' copies are left holding partial sums, which nothing reads. Every
// micro-batch is reduced this way (no rank can keep another's gradient until the step ends): an owner's buffer
// holds the sum of the earlier micro-batches plus its own new contribution, the others send theirs alone, so the
// owner ends with the step's total — each rank's gradient memory is its share plus the two slots, instead of the
// whole model's. A rank without data in a global micro-batch still takes part, with zeros. Kept whole on every rank
// (own buffer, zeroed before each micro-batch when another rank owns it): a tied head's weight (two stages write
// it) and any trainable parameter no stage lists (reduced after the backward).
class StageReducer {
 public:
  /** Which parameters a rank stages (another rank owns them, one stage writes them), and the slot size: the largest
   *  stage's staged elements. */
  struct Plan {
    std::set<const Param *> staged, listed;
    int64_t slot_elems = 0;
  };
  static Plan plan(const Model &m, const std::vector<Param *> &tp, const std::vector<int> &owner, int rank) {
    std::map<const Param *, bool> own;
    for (size_t i = 0; i < tp.size(); ++i) own[tp[i]] = owner[i] == rank;
    Plan pl;
    for (auto &st : m.grad_stages()) {
      int64_t n = 0;
      for (Param *p : st.second) {
        pl.listed.insert(p);
        if (own[p] || (m.head_tied() && p == m.embed)) continue;
        pl.staged.insert(p);
        n += p->numel();
      }
      pl.slot_elems = std::max(pl.slot_elems, n);
    }
    return pl;
  }
  StageReducer(Collective &comm, Backend &be, const Model &m, const std::vector<Param *> &tp, const std::vector<int> &owner, int rank, bool overlap)
      : comm_(comm), be_(be), overlap_(overlap) {
    const Plan pl = plan(m, tp, owner, rank);
    slot_elems_ = pl.slot_elems;
    for (auto &st : m.grad_stages()) stages_[st.first] = st.second;
    for (Param *p : tp) p->grad_staged = pl.staged.count(p) > 0;
    for (size_t i = 0; i < tp.size(); ++i) owner_[tp[i]] = owner[i];
    const std::set<const Param *> &listed = pl.listed;
    for (size_t i = 0; i < tp.size(); ++i) {
      Param *p = tp[i];
      if (!listed.count(p)) rest_.push_back(p);
      if (p->grad_staged) {  // its gradient memory is a slot's
        std::vector<float>().swap(p->grad);
        if (p->dev_g) be_.release(p->dev_g), p->dev_g = nullptr;
        staged_.push_back(p);
      } else if (owner[i] != rank) {
        zeroed_.push_back(p);
      }
      if (!be.host_memory() && !comm.device_buffers()) flat_elems_ = std::max(flat_elems_, p->numel());
    }
    flat_.resize(static_cast<size_t>(flat_elems_));
    for (float *&sl : slots_) sl = slot_elems_ ? static_cast<float *>(be_.alloc(sizeof(float) * static_cast<size_t>(slot_elems_))) : nullptr;
    thread_ = std::thread([this] { loop(); });
  }
  ~StageReducer() {
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
    for (Param *p : staged_) p->stage_g = nullptr;
    for (float *sl : slots_)
      if (sl) be_.release(sl);
  }
  size_t stages() const { return stages_.size() + (rest_.empty() ? 0 : 1); }

  /** A micro-batch starts: the whole-kept gradients of parameters other ranks own start from zero. */
  void micro_begin() {
    std::vector<TensorSlot> ts;
    for (Param *p : zeroed_) {
      TensorSlot t;
      t.g = p->g();
      t.n = p->numel();
      ts.push_back(t);
    }
    if (!ts.empty()) be_.zero_multi(ts);
  }
  /** The bind hook: the stage's staged parameters get zeroed memory in the next slot (once its last sum is done). */
  void bind(const std::vector<Param *> &ps) {
    cur_ = turn_++ % 2;
    if (slot_job_[cur_] != 0) wait(slot_job_[cur_]);
    int64_t at = 0;
    for (Param *p : ps)
      if (p->grad_staged) {
        p->stage_g = slots_[cur_] + at;
        at += p->numel();
      }
    if (at > 0) {
      TensorSlot t;
      t.g = slots_[cur_];
      t.n = at;
      be_.zero_multi({t});
    }
  }
  /** The ready hook: the stage's gradients go to the communication thread. */
  void ready(const std::vector<Param *> &ps) {
    slot_job_[cur_] = submit(rooted(ps));
    if (!overlap_) wait(slot_job_[cur_]);
  }
  /** A micro-batch this rank has no data for: every stage contributes zeros (and the owned sums so far). */
  void zero_pass() {
    for (auto it = stages_.rbegin(); it != stages_.rend(); ++it) {  // backward order: head (largest stage id) first
      bind(it->second);
      ready(it->second);
    }
  }
  /** After the backward: the parameters no stage lists, then waits for every sum. 0 or the collective's error. */
  int micro_end(double &wait_s, std::string &err) {
    if (!rest_.empty()) submit(rooted(rest_));
    const double t = mono_s();
    std::unique_lock<std::mutex> g(mu_);
    cv_.wait(g, [&] { return done_ == submitted_; });
    wait_s = mono_s() - t;
    slot_job_[0] = slot_job_[1] = 0;
    for (Param *p : staged_) p->stage_g = nullptr;
    if (failed_) err = comm_.last_error();
    return failed_ ? LLMT_ERR_IO : 0;
  }

 private:
  // each gradient with the rank it is summed into
  std::vector<Collective::Rooted> rooted(const std::vector<Param *> &ps) {
    std::vector<Collective::Rooted> v;
    for (Param *p : ps) v.push_back({p->g(), static_cast<size_t>(p->numel()), owner_.at(p)});
    return v;
  }
  uint64_t submit(std::vector<Collective::Rooted> bufs) {
    std::lock_guard<std::mutex> g(mu_);
    queue_.push_back(std::move(bufs));
    cv_.notify_all();
    return ++submitted_;
  }
  void wait(uint64_t job) {
    std::unique_lock<std::mutex> g(mu_);
    cv_.wait(g, [&] { return done_ >= job; });
  }
  int reduce(const std::vector<Collective::Rooted> &bufs) {
    if (comm_.device_buffers()) return comm_.reduce_sum_many(bufs, CollDType::F32, be_.stream_handle());  // NCCL: one group
    for (const auto &b : bufs) {
      if (be_.host_memory()) {  // each tensor in place, no packing buffer
        if (int r = comm_.reduce_sum(b.buf, b.count, CollDType::F32, b.root)) return r;
        continue;
      }
      // Gloo from device memory: one tensor at a time through flat_, back up on its owner only
      be_.download(flat_.data(), b.buf, sizeof(float) * b.count);
      if (int r = comm_.reduce_sum(flat_.data(), b.count, CollDType::F32, b.root)) return r;
      if (b.root == comm_.rank()) be_.upload(b.buf, flat_.data(), sizeof(float) * b.count);
    }
    return 0;
  }
  void loop() {
    for (;;) {
      std::vector<Collective::Rooted> job;
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return quit_ || !queue_.empty(); });
        if (quit_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      const bool fail = failed_ || reduce(job) != 0;
      {
        std::lock_guard<std::mutex> g(mu_);
        if (fail) failed_ = true;
        ++done_;
      }
      cv_.notify_all();
    }
  }
  Collective &comm_;
  Backend &be_;
  const bool overlap_;
  std::map<int64_t, std::vector<Param *>> stages_;  // by stage id (−1 the embeddings … layers the head)
  std::vector<Param *> staged_, zeroed_, rest_;
  std::map<const Param *, int> owner_;
  int64_t slot_elems_ = 0, flat_elems_ = 0;
  float *slots_[2] = {nullptr, nullptr};
  std::vector<float> flat_;
  // main thread only
  size_t turn_ = 0, cur_ = 0;
  uint64_t slot_job_[2] = {0, 0};  // the job that last used each slot (0: none in this micro-batch)
  // shared with the thread, under mu_
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<Collective::Rooted>> queue_;
  uint64_t submitted_ = 0, done_ = 0;
  bool quit_ = false, failed_ = false;
};

// ZeRO-1-like optimizer-state sharding (full fine-tuning, distributed.zero_stage 1): parameters are split
// into N contiguous groups of about equal size; rank r keeps AdamW state only for group r, updates only those
// parameters, and the updated values reach every rank through one all-reduce in which the other ranks
// contribute zeros (exact: x + 0 = x). An all-gather would move half the bytes; the small Collective
// interface has none yet.
std::vector<int> shard_owners(const std::vector<Param *> &tp, int world) {
  int64_t total = 0;
  for (Param *p : tp) total += p->numel();
  std::vector<int> owner(tp.size(), 0);
  int64_t acc = 0;
  for (size_t i = 0; i < tp.size(); ++i) {
    owner[i] = std::min<int>(world - 1, static_cast<int>((acc + tp[i]->numel() / 2) * world / std::max<int64_t>(1, total)));
    acc += tp[i]->numel();
  }
  return owner;
}

// The end of the bucket of the ZeRO-1 exchanges that starts at tp[i]: parameters in order, about bucket_elems
// values each (a larger parameter alone); `n` gets its values. Both exchanges below bucket alike.
size_t bucket_end(const std::vector<Param *> &tp, size_t i, int64_t bucket_elems, int64_t &n) {
  size_t j = i;
  n = 0;
  while (j < tp.size() && (n == 0 || n + tp[j]->numel() <= bucket_elems)) n += tp[j++]->numel();
  return j;
}

// The ZeRO-1 parameter exchange after a step on a device backend (the CUDA backend): every rank's weights in backend
// memory, the non-owners' zeroed, are summed in place in buckets — with NCCL on the device as one group per bucket
// (no copy), with Gloo staged through one host buffer per bucket. Same bucket boundaries and the same exact sums
// (owner's value + zeros) as gather_from_owners on host memory.
int gather_params_device(Dist &d, Backend &be, const std::vector<Param *> &tp, const std::vector<int> &owner, int64_t bucket_elems) {
  for (size_t k = 0; k < tp.size(); ++k)
    if (owner[k] != d.rank()) be.fill(tp[k]->w(), 0.0f, tp[k]->numel());
  std::vector<float> flat;
  size_t i = 0;
  while (i < tp.size()) {
    int64_t n = 0;
    const size_t j = bucket_end(tp, i, bucket_elems, n);
    const double t0 = mono_s();
    if (d.comm->device_buffers()) {
      std::vector<std::pair<void *, size_t>> bufs;
      for (size_t k = i; k < j; ++k) bufs.emplace_back(tp[k]->w(), static_cast<size_t>(tp[k]->numel()));
      if (int r = d.comm->allreduce_sum_many(bufs, CollDType::F32, be.stream_handle())) return r;
    } else {
      flat.resize(static_cast<size_t>(n));
      int64_t at = 0;
      for (size_t k = i; k < j; ++k) {
        be.download(flat.data() + at, tp[k]->w(), sizeof(float) * static_cast<size_t>(tp[k]->numel()));
        at += tp[k]->numel();
      }
      if (int r = d.comm->allreduce_sum(flat.data(), flat.size(), CollDType::F32)) return r;
      at = 0;
      for (size_t k = i; k < j; ++k) {
        if (owner[k] != d.rank()) be.upload(tp[k]->w(), flat.data() + at, sizeof(float) * static_cast<size_t>(tp[k]->numel()));
        at += tp[k]->numel();
      }
    }
    d.comm_wait_s += mono_s() - t0;
    i = j;
  }
  return 0;
}

// Moves every parameter (or, with which = 1/2, its AdamW m/v) so that each rank has the owner's values:
// non-owners contribute zeros to a bucketed all-reduce. Ranks without the state pass empty vectors.
int gather_from_owners(Dist &d, const std::vector<Param *> &tp, const std::vector<int> &owner, int which,
                       std::vector<std::vector<float>> *out, int64_t bucket_elems) {
  std::vector<float> flat;
  size_t i = 0;
  while (i < tp.size()) {
    int64_t n = 0;
    const size_t j = bucket_end(tp, i, bucket_elems, n);
    flat.assign(static_cast<size_t>(n), 0.0f);
    int64_t at = 0;
    for (size_t k = i; k < j; ++k) {
      const Param *p = tp[k];
      if (owner[k] == d.rank()) {
        const float *src = which == 0 ? p->data.data() : which == 1 ? p->adam_m.data() : p->adam_v.data();
        std::memcpy(flat.data() + at, src, sizeof(float) * static_cast<size_t>(p->numel()));
      }
      at += p->numel();
    }
    if (int r = d.allreduce(flat.data(), flat.size())) return r;
    at = 0;
    for (size_t k = i; k < j; ++k) {
      Param *p = tp[k];
      float *dst = which == 0 ? p->data.data() : out ? (*out)[k].data() : nullptr;
      if (dst) std::memcpy(dst, flat.data() + at, sizeof(float) * static_cast<size_t>(p->numel()));
      at += p->numel();
    }
    i = j;
  }
  return 0;
}

}  // namespace

llmt_status run_training(const Json &job_json, TrainControl &ctl) {
  Dist dist;
  // Only rank 0 speaks for the run; other ranks emit only their own errors (tagged with their rank).
  auto emit = [&](const Json &e) {
    if (!ctl.emit) return;
    if (!dist.on() || dist.rank() == 0) ctl.emit(e);
  };
  bool peer_lost = false;
  Json lost_extra = Json::object();
  auto fail = [&](llmt_status st, const std::string &hint = "") {
    Json e = ev("error");
    e.set("code", Json::string(llmt_status_name(st)));
    e.set("message", Json::string(llmt_last_error()));
    std::string h = hint;
    if (h.empty()) {
      switch (st) {
        case LLMT_ERR_OOM: h = "Lower micro_batch_size or the sequence lengths, or enable gradient_checkpointing."; break;
        case LLMT_ERR_NAN: h = "Lower the learning rate, check the data for empty targets, or resume from an earlier checkpoint."; break;
        case LLMT_ERR_IO: h = "Check that the path exists and the disk has free space."; break;
        default: break;
      }
    }
    if (peer_lost) h = "Another rank failed or was killed: its own error names the cause. Resume from the last checkpoint.";
    if (!h.empty()) e.set("hint", Json::string(h));
    if (dist.on()) {
      e.set("rank", Json::integer(dist.rank()));
      for (const auto &kv : lost_extra.members()) e.set(kv.first, kv.second);
      // leave a note for the peers, so their "lost my peers" errors can name this rank as the cause
      if (!peer_lost && dist.store) dist.store->set("failed/" + std::to_string(dist.rank()), [&] {
        const std::string m = std::string(llmt_status_name(st)) + ": " + llmt_last_error();
        return std::vector<char>(m.begin(), m.end());
      }());
    }
    if (ctl.emit) ctl.emit(e);
    return st;
  };
  // a failed collective: the error names the step and, when known, the rank that failed first
  auto comm_fail = [&](const std::string &what) {
    peer_lost = true;
    return fail(dist.lost(what, &lost_extra));
  };
  Job job;
  llmt_status st = parse_job(job_json, job);
  if (st) return fail(st);

  // ---- the world: torchrun / Slurm variables; a rendezvous and a communicator when there are several ranks ----
  if ((st = read_dist_env(dist.env))) return fail(st);
  if (job.dist_world_size > 0 && job.dist_world_size != dist.env.world_size) {
    return fail(set_error(LLMT_ERR_BAD_INPUT, "job: distributed.world_size is " + std::to_string(job.dist_world_size) + " but the environment says " +
                                                  std::to_string(dist.env.world_size) + " (" +
                                                  (dist.env.source == "single" ? "no RANK/WORLD_SIZE or SLURM_* variables" : dist.env.source) +
                                                  "): start the workers with `llms-train train --nproc_per_node N`, torchrun-style variables or srun"));
  }
  if (job.threads > 0) cpu::set_num_threads(static_cast<int>(job.threads));
  else if (dist.env.local_world_size > 1) {  // ranks on one machine share its cores
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    cpu::set_num_threads(std::max(1, hw / dist.env.local_world_size));
  }
  dist.timeout_ms = static_cast<int64_t>(job.dist_timeout_s * 1000);
  // ---- the compute device: a rank of a data-parallel job on GPUs takes cuda:LOCAL_RANK of the visible GPUs (the
  // launcher picks them with CUDA_VISIBLE_DEVICES, as torchrun users do) ----
  std::string device = job.device;
  if (dist.on() && (device == "cuda" || device == "auto")) {
    device = "cuda:" + std::to_string(dist.env.local_rank);
    if (job.device == "auto") device = "auto:" + std::to_string(dist.env.local_rank);
  } else if (dist.on() && device.compare(0, 5, "cuda:") == 0) {
    return fail(set_error(LLMT_ERR_BAD_INPUT, "job: device \"" + device + "\" in a data-parallel job: name no GPU index (\"device\": \"cuda\"); each rank uses cuda:LOCAL_RANK, and CUDA_VISIBLE_DEVICES chooses the GPUs"));
  }
  std::string fallback;
  Backend *be = nullptr;
  {
    std::string derr;
    be = select_backend(device.compare(0, 5, "auto:") == 0 ? "cuda:" + device.substr(5) : device, &fallback, &derr);
    if (!be) return fail(set_error(LLMT_ERR_BAD_INPUT, "job: " + derr));
    if (device.compare(0, 5, "auto:") == 0) fallback.clear();  // "auto" takes the CPU without a word
  }
  std::string backend_name = "none";
  Json rank_info = Json::array();
  if (dist.on()) {
    const bool gpu = be->kind() == DeviceKind::CUDA;
    backend_name = job.dist_backend == "auto" ? (gpu ? "nccl" : "gloo") : job.dist_backend;
    if (backend_name == "nccl" && !gpu)
      return fail(set_error(LLMT_ERR_UNSUPPORTED, "distributed.backend \"nccl\" needs GPU workers (\"device\": \"cuda\"); this rank runs on " +
                                                      std::string(be->name()) + (fallback.empty() ? "" : " (" + fallback + ")") + "; use gloo"));
    dist.store = open_tcp_store(dist.env, dist.timeout_ms, st);
    if (!dist.store) return fail(st);
    dist.comm = open_collective(backend_name, dist.env, *dist.store, dist.timeout_ms, st);
    if (!dist.comm && st == LLMT_ERR_UNSUPPORTED && job.dist_backend == "auto" && backend_name == "nccl") {
      // NCCL cannot load (the same on every rank of this machine): Gloo, with the gradients staged through host memory
      const std::string why = llmt_last_error();
      backend_name = "gloo";
      dist.comm = open_collective(backend_name, dist.env, *dist.store, dist.timeout_ms, st);
      if (dist.comm) {
        Json w = ev("warning");
        w.set("message", Json::string("NCCL is unavailable (" + why + "): the GPU workers all-reduce through host memory with Gloo, which is slower"));
        emit(w);
      }
    }
    if (!dist.comm) return fail(st);
    if (dist.comm->device_buffers()) dist.staging = be;
    // who is who, for the run view (host, pid, local rank)
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    Json me = Json::object();
    me.set("rank", Json::integer(dist.rank()));
    me.set("local_rank", Json::integer(dist.env.local_rank));
    me.set("host", Json::string(host));
    me.set("pid", Json::integer(static_cast<int64_t>(::getpid())));
    me.set("device", Json::string(be->name()));
    const std::string mine = me.dump();
    if (dist.store->set("info/" + std::to_string(dist.rank()), std::vector<char>(mine.begin(), mine.end()))) return fail(set_error(LLMT_ERR_IO, dist.store->last_error()));
    if (dist.rank() == 0) {
      for (int r = 0; r < dist.world(); ++r) {
        std::vector<char> v;
        Json j;
        std::string err;
        if (dist.store->get("info/" + std::to_string(r), v, dist.timeout_ms) == 0 && Json::parse(std::string(v.begin(), v.end()), j, err)) rank_info.push(j);
      }
    }
  }
  const int W = dist.world();
  // ZeRO-1 (optimizer state sharded) and ZeRO-2 (gradients too): full fine-tuning on several workers
  const bool zero1 = dist.on() && job.zero_stage >= 1 && job.method == "full";
  const bool zero2 = zero1 && job.zero_stage == 2;

  // LoRA in bf16/fp16: the frozen weights stream in as 16-bit (the fp32 model never exists in memory); a full
  // fine-tune loads fp32 (every weight trains)
  auto model = Model::load(job.model_dir, st, job.quant, job.method == "lora" ? job.precision : "fp32");
  if (!model) return fail(st);
  {  // compute device (the CUDA backend is validated under cuemu, not yet on a GPU: docs/cuda.md)
    if (model->quantization().enabled && !be->supports_q4())  // CPU and CUDA both have 4-bit kernels
      return fail(set_error(LLMT_ERR_UNSUPPORTED, std::string("the ") + be->name() +
                                                      " backend has no 4-bit (QLoRA) kernels. Use \"device\": \"cpu\" or \"quantization\": \"none\""));
    model->set_backend(*be);
    if (!fallback.empty()) {
      Json w = ev("warning");
      w.set("message", Json::string(fallback));
      emit(w);
    }
  }
  const ModelConfig &cfg = model->config();
  // a folder saved 4-bit loads its weights as stored: they are frozen, so only LoRA can train it
  if (model->quantization().enabled && job.method != "lora")
    return fail(set_error(LLMT_ERR_BAD_INPUT, "job: " + job.model_dir + " holds 4-bit (QLoRA) weights, which cannot be trained in full; use method \"lora\" (or train the original full-precision folder)"));
  if (job.method == "lora") {
    if (!job.init_adapter.empty()) st = model->load_adapter(job.init_adapter, true);
    else st = model->add_lora(job.lora, job.seed);
    if (st) return fail(st);
    // PEFT skips a list entry that matches nothing; a typo ("v_porj") would silently halve the adapter: say so
    if (job.init_adapter.empty() && job.lora.target_regex.empty()) {
      for (const auto &t : job.lora.targets) {
        if (t == "all-linear") continue;
        bool hit = false;
        auto matches = [&](const std::string &module) {
          return module == t || (module.size() > t.size() && module.compare(module.size() - t.size() - 1, std::string::npos, "." + t) == 0);
        };
        for (const auto &lin : model->linears) hit = hit || matches(lin->module);
        hit = hit || (model->head_lora.r && matches(cfg.family->lm_head)) || (model->embed_lora.r && matches(cfg.family->embed));
        if (hit) continue;
        std::string names;
        std::set<std::string> seen;
        for (const auto &lin : model->linears)
          if (seen.insert(lin->short_name).second) names += (names.empty() ? "" : ", ") + lin->short_name;
        Json w = ev("warning");
        w.set("message", Json::string("LoRA target module \"" + t + "\" matches no module of this " + cfg.model_type +
                                      " model (its linear modules: " + names + "); the other targets are trained"));
        emit(w);
      }
    }
  } else {
    if ((st = model->make_all_trainable())) return fail(st);
  }
  if (job.precision != "fp32") {
    if (job.method == "full") {
      Json w = ev("warning");
      w.set("message", Json::string("training.precision " + job.precision + " applies to frozen base weights; a full fine-tune trains every weight, so it computes in fp32"));
      emit(w);
    } else if ((st = model->set_precision(job.precision))) {
      return fail(st);
    }
  }
  std::string loss_norm = job.loss_norm;
  // auto: what HF Trainer ≥ 4.46 does for the model's published forward — the remote-code ChatGLM v1/v2, Baichuan and
  // MiniCPM forwards take no num_items_in_batch (mean of the micro-batch means); the in-library models do (token mean)
  if (loss_norm == "auto")
    loss_norm = cfg.model_type == "baichuan" || cfg.model_type == "chatglm" || cfg.model_type == "minicpm" ? "mean_of_means" : "token_mean";

  auto train = TokData::open(job.train_path, st);
  if (!train) return fail(st);
  if (train->size() == 0) return fail(set_error(LLMT_ERR_BAD_INPUT, "the training set " + job.train_path + " has no samples"));
  if (train->max_token_id() >= cfg.vocab) {
    return fail(set_error(LLMT_ERR_BAD_INPUT, "the training set uses token id " + std::to_string(train->max_token_id()) +
                                                  " but the model's vocabulary has " + std::to_string(cfg.vocab) +
                                                  " tokens: was it tokenized for another model?"));
  }
  std::unique_ptr<TokData> eval;
  if (!job.eval_path.empty()) {
    eval = TokData::open(job.eval_path, st);
    if (!eval) return fail(st);
    if (eval->max_token_id() >= cfg.vocab) return fail(set_error(LLMT_ERR_BAD_INPUT, "the eval set uses token ids beyond the model's vocabulary"));
  }
  const int64_t n = train->size();
  const int64_t global_micro = job.micro_batch * W;  // samples of one micro-batch over all ranks
  const int64_t batches_per_epoch = (n + global_micro - 1) / global_micro;
  const int64_t steps_per_epoch = std::max<int64_t>(1, (batches_per_epoch + job.grad_accum - 1) / job.grad_accum);
  // HF Trainer: max_steps = ceil(num_train_epochs · update steps per epoch), the last step of each epoch short
  const int64_t total = job.max_steps > 0 ? job.max_steps
                                          : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(job.epochs * static_cast<double>(steps_per_epoch))));
  // the epoch as HF's state.epoch reports it: epochs done + micro-batches done / micro-batches per epoch
  auto epoch_progress = [&](const Cursor &c) {
    return static_cast<double>(c.epoch) +
           static_cast<double>((c.index + global_micro - 1) / global_micro) / static_cast<double>(batches_per_epoch);
  };
  const int64_t warmup = job.warmup_steps > 0 ? job.warmup_steps : static_cast<int64_t>(std::ceil(job.warmup_ratio * total));
  std::vector<Param *> tp = model->trainable_params();
  // padding-free micro-batches (make_batch_padding_free): the same samples and numbers in fewer rows; not for ChatGLM-6B,
  // whose 2-D positions and prefix mask come per row from its [gMASK]/<sop>
  const bool padding_free = job.padding_free && cfg.pos != PosKind::Rope2D;
  // LoRA+ (PEFT's create_loraplus_optimizer, LLaMA-Factory's loraplus_lr_ratio): lora_B and every 1-D trainable tensor
  // (biases, norm weights, DoRA magnitudes) step at lr × ratio, the rest at lr; weight decay as without it
  const bool loraplus = job.loraplus_ratio > 0 && job.method == "lora";
  if (loraplus && model->embed_lora.r)  // PEFT's create_loraplus_optimizer puts them in a group of their own (lr 1e-6)
    return fail(set_error(LLMT_ERR_UNSUPPORTED, "LoRA+ (training.loraplus_lr_ratio) with LoRA on the embedding: PEFT trains lora_embedding_A/B at "
                                                "loraplus_lr_embedding (1e-6), which this engine does not offer; leave the embedding out of "
                                                "target_modules, or turn LoRA+ off"));
  std::vector<char> loraplus_b(tp.size(), 0);
  for (size_t i = 0; i < tp.size(); ++i)
    loraplus_b[i] = tp[i]->name.find("lora_B") != std::string::npos || tp[i]->shape.size() == 1;
  const std::vector<int> owner = zero1 ? shard_owners(tp, W) : std::vector<int>(tp.size(), dist.rank());
  auto owns = [&](size_t i) { return owner[i] == dist.rank(); };
  for (size_t i = 0; i < tp.size(); ++i) {
    // with ZeRO-1 a rank holds AdamW state only for the parameters it owns (rank 0 gathers the rest to save)
    tp[i]->adam_m.assign(owns(i) ? tp[i]->data.size() : 0, 0.0f);
    tp[i]->adam_v.assign(owns(i) ? tp[i]->data.size() : 0, 0.0f);
  }
  const int64_t bucket_elems = std::max<int64_t>(1, static_cast<int64_t>(job.bucket_mb * 1024 * 1024 / sizeof(float)));
  if (dist.rank() == 0 && (st = make_directories(job.out_dir))) return fail(st);

  // ---- resume: rank 0 reads the checkpoint; the others receive it below ----
  int64_t step = 0;
  Cursor cur;
  Json log_history = Json::array();
  std::string resumed;
  std::vector<std::vector<float>> full_m, full_v;  // ZeRO-1 on rank 0: the whole AdamW state, for resume/save
  // evaluations so far (HF's state.best_metric: the lowest eval_loss, every evaluation; the early-stopping counter) and
  // the best checkpointed one (HF's best_model_checkpoint: what load_best_model_at_end loads and rotation keeps)
  double best_eval = INFINITY, best_ckpt_eval = INFINITY;
  int64_t best_eval_step = -1, best_ckpt = -1, es_counter = 0;
  std::string best_ckpt_path;  // rank 0: where the best checkpoint is (HF's best_model_checkpoint; a resumed run's may be elsewhere)
  bool ended_early = false;    // the checkpoint resumed from is where early stopping ended the training
  // optimizer steps taken (HF's scheduler steps only when the optimizer ran, and AdamW counts only its updates: an fp16
  // step skipped on overflow advances neither), and the fp16 loss scale with its clean-step count (torch's GradScaler
  // state): in the checkpoint, so a resumed run goes on exactly as the uninterrupted one. -1: not in the checkpoint.
  int64_t updates = -1, clean_steps = 0;
  double resumed_scale = 0;
  if (!job.resume_from.empty() && dist.rank() == 0) {
    std::string ck = job.resume_from;
    if (ck == "latest") {
      auto steps = list_checkpoints(job.out_dir);
      if (steps.empty()) return fail(set_error(LLMT_ERR_BAD_INPUT, "resume_from \"latest\": no checkpoint-* folder in " + job.out_dir));
      ck = job.out_dir + "/checkpoint-" + std::to_string(steps.back());
    }
    std::string text;
    if ((st = read_text_file(ck + "/trainer_state.json", text))) return fail(st, "Pick a complete checkpoint-<step> folder.");
    Json ts;
    std::string err;
    if (!Json::parse(text, ts, err)) return fail(set_error(LLMT_ERR_BAD_INPUT, ck + "/trainer_state.json: " + err));
    step = ts.get_int("global_step", 0);
    cur.epoch = ts.get("data_cursor").get_int("epoch", 0);
    cur.index = ts.get("data_cursor").get_int("index", 0);
    if (!ts.get("global_step").is_integer() || step < 0 || cur.epoch < 0 || cur.index < 0)
      return fail(set_error(LLMT_ERR_BAD_INPUT, ck + "/trainer_state.json: global_step and data_cursor must be non-negative integers "
                                                     "(the checkpoint is damaged)"),
                  "Pick another checkpoint-<step> folder.");
    {  // values no run writes: a checkpoint-<K> folder holds global_step K, an epoch takes at least one step, and the
       // cursor lies within the data (a checkpoint of other data, or a damaged file, would train from nowhere)
      const std::string base = ck.substr(ck.find_last_of('/') + 1);
      int64_t named = -1;
      if (base.rfind("checkpoint-", 0) == 0 && base.size() > 11 && base.find_first_not_of("0123456789", 11) == std::string::npos && base.size() < 11 + 19)
        named = std::stoll(base.substr(11));
      if (named >= 0 && named != step)
        return fail(set_error(LLMT_ERR_BAD_INPUT, ck + "/trainer_state.json: global_step " + std::to_string(step) + " is not the step of " + base +
                                                       " (the checkpoint is damaged)"),
                    "Pick another checkpoint-<step> folder.");
      if (cur.epoch > step)
        return fail(set_error(LLMT_ERR_BAD_INPUT, ck + "/trainer_state.json: data_cursor.epoch " + std::to_string(cur.epoch) + " is more than its global_step " +
                                                       std::to_string(step) + " (the checkpoint is damaged)"),
                    "Pick another checkpoint-<step> folder.");
      if (cur.index > n)
        return fail(set_error(LLMT_ERR_BAD_INPUT, ck + "/trainer_state.json: data_cursor.index " + std::to_string(cur.index) + " is past the end of the training data (" +
                                                       std::to_string(n) + " samples): the checkpoint was trained on other data, or is damaged"),
                    "Resume with the data it was trained on, or start afresh (--overwrite_output_dir, or another output folder).");
    }
    if (ts.get("log_history").is_array()) log_history = ts.get("log_history");
    if (ts.get("best_global_step").is_integer() && ts.get("best_metric").is_number()) {
      best_ckpt = ts.get_int("best_global_step", -1);
      best_ckpt_eval = ts.get_number("best_metric", INFINITY);
      best_ckpt_path = ts.get_string("best_model_checkpoint", job.out_dir + "/checkpoint-" + std::to_string(best_ckpt));
    }
    ended_early = ts.get_bool("llmt_early_stopped", false);
    if (ts.get("llmt_optimizer_steps").is_integer()) updates = ts.get_int("llmt_optimizer_steps", -1);
    if (updates < -1 || updates > step)
      return fail(set_error(LLMT_ERR_BAD_INPUT, ck + "/trainer_state.json: llmt_optimizer_steps " + std::to_string(updates) + " is not between 0 and global_step " +
                                                     std::to_string(step) + " (the checkpoint is damaged)"),
                  "Pick another checkpoint-<step> folder.");
    if (ts.get("llmt_loss_scale").is_object()) {
      resumed_scale = ts.get("llmt_loss_scale").get_number("scale", 0);
      clean_steps = ts.get("llmt_loss_scale").get_int("growth_tracker", 0);
      if (!(resumed_scale >= 1.0) || !std::isfinite(resumed_scale) || clean_steps < 0) resumed_scale = 0, clean_steps = 0;  // damaged: start over at 2¹⁶
    }
    if (ts.get("llmt_best_eval").is_object()) {
      best_eval = ts.get("llmt_best_eval").get_number("eval_loss", INFINITY);
      best_eval_step = ts.get("llmt_best_eval").get_int("step", -1);
    }
    es_counter = ts.get("stateful_callbacks").get("EarlyStoppingCallback").get("attributes").get_int("early_stopping_patience_counter", 0);
    const char *reconfigured = "Resume with the configuration the checkpoint was trained with, or start afresh (--overwrite_output_dir, or another output folder).";
    {  // a LoRA run's checkpoint for a full fine-tune (or the other way round): say so, not "cannot open …"
      struct stat sb;
      const auto has = [&](const char *f) { return ::stat((ck + f).c_str(), &sb) == 0; };
      const bool lora_ck = has("/adapter_model.safetensors"), full_ck = has("/model.safetensors");
      if (job.method == "full" && lora_ck && !full_ck)
        return fail(set_error(LLMT_ERR_BAD_INPUT, "checkpoint " + ck + " holds a LoRA adapter, and this job is a full fine-tune (method \"full\")"), reconfigured);
      if (job.method == "lora" && full_ck && !lora_ck)
        return fail(set_error(LLMT_ERR_BAD_INPUT, "checkpoint " + ck + " holds a full fine-tune's weights, and this job trains a LoRA adapter"), reconfigured);
    }
    auto w = SafetensorsFile::open(ck + (job.method == "lora" ? "/adapter_model.safetensors" : "/model.safetensors"), st);
    if (!w) return fail(st);
    auto opt = SafetensorsFile::open(ck + "/optimizer.safetensors", st);
    if (!opt) return fail(st);
    std::set<std::string> used;  // the checkpoint's tensors this job reads
    for (size_t i = 0; i < tp.size(); ++i) {
      Param *p = tp[i];
      const std::string key = job.method == "lora" ? p->save_name : p->name;
      std::string k = key;
      // checkpoints written before a LoRA linear's trained bias took PEFT's name (<module>.base_layer.bias)
      const std::string suffix = ".base_layer.bias";
      if (!w->find(k) && k.size() > suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0)
        k = k.substr(0, k.size() - suffix.size()) + ".bias";
      const TensorInfo *a = w->find(k), *m = opt->find(k + ".exp_avg"), *v = opt->find(k + ".exp_avg_sq");
      if (!a || !m || !v || a->numel() != p->numel() || m->numel() != p->numel() || v->numel() != p->numel()) {
        return fail(set_error(LLMT_ERR_BAD_INPUT, "checkpoint " + ck + " does not match this job (tensor " + key +
                                                      " missing or of another shape): it was written with another configuration (LoRA rank, "
                                                      "target modules) or model"),
                    reconfigured);
      }
      used.insert(k);
      used.insert(k + ".exp_avg");
      used.insert(k + ".exp_avg_sq");
      if (!owns(i)) {  // ZeRO-1: read into scratch, sent to the owner below
        full_m.resize(tp.size());
        full_v.resize(tp.size());
        full_m[i].resize(static_cast<size_t>(p->numel()));
        full_v[i].resize(static_cast<size_t>(p->numel()));
      }
      float *mdst = owns(i) ? p->adam_m.data() : full_m[i].data();
      float *vdst = owns(i) ? p->adam_v.data() : full_v[i].data();
      if ((st = w->read_f32(*a, p->data.data())) || (st = opt->read_f32(*m, mdst)) || (st = opt->read_f32(*v, vdst))) return fail(st);
    }
    // ...and nothing else: a checkpoint that trained more (other target modules, modules_to_save, biases) would lose
    // those tensors' training silently when this job writes its adapter
    std::vector<std::string> extra;
    for (const SafetensorsFile *f : {job.method == "lora" ? w.get() : nullptr, opt.get()})
      if (f)
        for (const TensorInfo &t : f->tensors())
          if (!used.count(t.name)) extra.push_back(t.name);
    if (!extra.empty())
      return fail(set_error(LLMT_ERR_BAD_INPUT, "checkpoint " + ck + " holds " + std::to_string(extra.size()) + " tensor(s) this job does not train (" +
                                                    extra.front() + (extra.size() > 1 ? ", …" : "") +
                                                    "): it was written with another configuration (LoRA target modules, modules_to_save, bias) or model"),
                  reconfigured);
    resumed = ck;
  }

  // ---- one start for every rank: rank 0's trainable weights, its resume point and optimizer state ----
  if (dist.on()) {
    double meta[13] = {static_cast<double>(step), static_cast<double>(cur.epoch), static_cast<double>(cur.index), resumed.empty() ? 0.0 : 1.0,
                       best_eval, static_cast<double>(best_eval_step), best_ckpt_eval, static_cast<double>(best_ckpt), static_cast<double>(es_counter),
                       ended_early ? 1.0 : 0.0, static_cast<double>(updates), resumed_scale, static_cast<double>(clean_steps)};
    if (dist.broadcast(meta, 13)) return comm_fail("the start-up broadcast");
    updates = static_cast<int64_t>(meta[10]);
    resumed_scale = meta[11];
    clean_steps = static_cast<int64_t>(meta[12]);
    step = static_cast<int64_t>(meta[0]);
    cur.epoch = static_cast<int64_t>(meta[1]);
    cur.index = static_cast<int64_t>(meta[2]);
    best_eval = meta[4];
    best_eval_step = static_cast<int64_t>(meta[5]);
    best_ckpt_eval = meta[6];
    best_ckpt = static_cast<int64_t>(meta[7]);
    es_counter = static_cast<int64_t>(meta[8]);
    ended_early = meta[9] != 0;
    for (Param *p : tp)
      if (dist.broadcast(p->data.data(), static_cast<size_t>(p->numel()))) return comm_fail("the broadcast of rank 0's weights");
    if (meta[3] != 0) {  // resumed: AdamW state from rank 0 (to its owner under ZeRO-1)
      std::vector<float> scratch;
      for (size_t i = 0; i < tp.size(); ++i) {
        Param *p = tp[i];
        for (int which = 1; which <= 2; ++which) {
          float *buf;
          if (owns(i)) buf = which == 1 ? p->adam_m.data() : p->adam_v.data();
          else if (dist.rank() == 0) buf = which == 1 ? full_m[i].data() : full_v[i].data();
          else {
            scratch.resize(static_cast<size_t>(p->numel()));
            buf = scratch.data();
          }
          if (dist.broadcast(buf, static_cast<size_t>(p->numel()))) return comm_fail("the broadcast of the optimizer state");
        }
      }
      full_m.clear();
      full_v.clear();
    }
  }

  {
    Json e = ev("started");
    e.set("model", Json::string(job.model_dir));
    e.set("model_type", Json::string(cfg.model_type));
    e.set("method", Json::string(job.method));
    e.set("quantization", Json::string(quant_name(model->quantization())));
    e.set("total_params", Json::integer(model->num_parameters()));
    e.set("trainable_params", Json::integer(model->num_trainable()));
    e.set("train_samples", Json::integer(n));
    e.set("eval_samples", Json::integer(eval ? eval->size() : 0));
    e.set("max_steps", Json::integer(total));
    e.set("warmup_steps", Json::integer(warmup));
    e.set("loss_normalization", Json::string(loss_norm));
    e.set("threads", Json::integer(cpu::num_threads()));
    e.set("offload_optimizer", Json::boolean(job.offload_optimizer && !model->backend().host_memory()));
    e.set("offload_checkpoints", Json::boolean(job.offload_checkpoints && !model->backend().host_memory()));
    e.set("start_step", Json::integer(step));
    if (!resumed.empty()) e.set("resumed_from", Json::string(resumed));
    e.set("world_size", Json::integer(W));
    if (dist.on()) {
      e.set("backend", Json::string(backend_name));
      e.set("global_batch_size", Json::integer(global_micro * job.grad_accum));
      e.set("zero_stage", Json::integer(zero1 ? job.zero_stage : 0));
      // ZeRO-2: this rank's two gradient staging slots (its gradient memory: its share's buffers and these)
      if (zero2) e.set("zero2_slot_bytes", Json::integer(2 * sizeof(float) * StageReducer::plan(*model, tp, owner, dist.rank()).slot_elems));
      e.set("ranks", rank_info);
    }
    emit(e);
    if (job.offload_optimizer && model->backend().host_memory()) {
      Json w = ev("warning");
      w.set("message", Json::string("training.offload_optimizer applies to GPU runs: on the CPU the optimizer state is in host memory already"));
      emit(w);
    }
    if (job.offload_checkpoints && model->backend().host_memory()) {
      Json w = ev("warning");
      w.set("message", Json::string("training.offload_checkpoints applies to GPU runs: on the CPU the checkpointed activations are in host memory already"));
      emit(w);
    }
    if (!resumed.empty() && step >= total) {  // HF Trainer trains nothing then either; say so rather than look like a run
      Json w = ev("warning");
      w.set("message", Json::string("resumed from " + resumed + " at step " + std::to_string(step) + ", which is already max_steps (" + std::to_string(total) +
                                    ") or beyond: nothing is left to train; the outputs are the checkpoint's weights (raise max_steps or "
                                    "num_train_epochs to train on)"));
      emit(w);
    }
    if (job.zero_stage >= 1 && !zero1) {  // accepted, but it shards nothing here: say so rather than ignore it
      const std::string z = "distributed.zero_stage " + std::to_string(job.zero_stage);
      const std::string what = job.zero_stage == 1 ? "the optimizer state" : "the optimizer state and the gradients";
      Json w = ev("warning");
      w.set("message", Json::string(!dist.on() ? z + " shards " + what + " across workers: a single-worker run has nothing to "
                                                     "shard, so it has no effect (start several workers, e.g. with torchrun, to use it)"
                                               : z + " applies to full fine-tuning: a LoRA run's optimizer state and gradients are small "
                                                     "and stay whole on every worker (no effect)"));
      emit(w);
    }
  }

  std::vector<int64_t> order = epoch_order(n, job.seed, cur.epoch);
  // A step starts the next epoch when this one is done; within a step the epoch never changes (its last step takes
  // what is left of it, as HF Trainer ≥ 4.46).
  auto start_step_epoch = [&] {
    if (cur.index >= n) {
      ++cur.epoch;
      cur.index = 0;
      order = epoch_order(n, job.seed, cur.epoch);
    }
  };
  // The global micro-batch (N·b samples of the epoch order), of which this rank takes [r·b, (r+1)·b); false when
  // the epoch has no sample left for this step.
  auto next_indices = [&](std::vector<int64_t> &idx) -> bool {
    idx.clear();
    if (cur.index >= n) return false;
    const int64_t take = std::min(global_micro, n - cur.index);
    const int64_t lo = std::min(take, dist.rank() * job.micro_batch), hi = std::min(take, lo + job.micro_batch);
    idx.assign(order.begin() + cur.index + lo, order.begin() + cur.index + hi);
    cur.index += take;
    return true;
  };

  // Evaluation: eval batches dealt round-robin over the ranks; the sums are all-reduced.
  bool eval_comm_failed = false;
  auto evaluate = [&](double &loss, int64_t &tokens) -> llmt_status {
    double acc[2] = {0, 0};
    EvalProgress ep;
    ep.aborted = [&] { return ctl.poll && ctl.poll() == 2; };
    if (llmt_status s = eval_loss_sums(*model, *eval, job.eval_batch, dist.rank(), W, ep, acc)) return s;
    if (dist.on() && dist.allreduce(acc, 2)) {
      eval_comm_failed = true;
      return LLMT_ERR_IO;
    }
    tokens = static_cast<int64_t>(acc[1]);
    loss = tokens ? acc[0] / acc[1] : NAN;
    return LLMT_OK;
  };

  // Every rank calls this at the same steps (under ZeRO-1 the AdamW state is gathered to rank 0); only rank 0 writes.
  bool save_comm_failed = false;
  bool early_stopped = false;  // set at the step early stopping ends the run (its checkpoint records it)
  // fp16: dynamic loss scaling as torch.cuda.amp.GradScaler (init 2¹⁶, ×0.5 and the step skipped on an inf/NaN
  // gradient, ×2 after 2000 clean steps): the gradients reaching the fp16-rounded GEMM inputs stay in range.
  const bool scaled = job.precision == "fp16" && job.method == "lora";
  double loss_scale = scaled ? (resumed_scale >= 1.0 ? resumed_scale : 65536.0) : 1.0;
  if (!scaled) clean_steps = 0;
  if (updates < 0) updates = step;  // a checkpoint from before the count was kept: every step was an update
  auto save_checkpoint = [&](int64_t at_step, bool scheduled) -> llmt_status {
    std::vector<std::vector<float>> gm, gv;
    if (zero1) {
      // each owner's moments into its host vectors first (on a device backend: a download; with offload_optimizer they
      // are there already), then gathered to rank 0 through the host (Dist stages them for NCCL)
      model->to_host(false, true);
      gm.resize(tp.size());
      gv.resize(tp.size());
      if (dist.rank() == 0)
        for (size_t i = 0; i < tp.size(); ++i) {
          gm[i].resize(static_cast<size_t>(tp[i]->numel()));
          gv[i].resize(static_cast<size_t>(tp[i]->numel()));
        }
      if (gather_from_owners(dist, tp, owner, 1, dist.rank() == 0 ? &gm : nullptr, bucket_elems) ||
          gather_from_owners(dist, tp, owner, 2, dist.rank() == 0 ? &gv : nullptr, bucket_elems)) {
        save_comm_failed = true;
        return LLMT_ERR_IO;
      }
    }
    if (dist.rank() != 0) return LLMT_OK;
    model->to_host(false, true);  // weights and AdamW moments from backend memory (a no-op on the CPU backend)
    // An update that overflowed leaves non-finite weights behind a finite loss (the loss came before it): such a
    // checkpoint would poison every resume from "latest". Not written; the previous one stays the newest.
    for (Param *p : tp) {
      int64_t bad = 0;
      for (float x : p->data) bad += !std::isfinite(x);
      if (bad)
        return set_error(LLMT_ERR_NAN, "after the update of step " + std::to_string(at_step) + ", " + std::to_string(bad) + " of " +
                                           std::to_string(p->data.size()) + " values of " + p->name +
                                           " are not finite (the update diverged); checkpoint-" + std::to_string(at_step) +
                                           " was not written, so the newest checkpoint on disk is still a good one");
    }
    const std::string final_dir = job.out_dir + "/checkpoint-" + std::to_string(at_step);
    const std::string tmp = final_dir + ".tmp-" + std::to_string(::getpid());
    remove_tree(tmp);
    // a failed save (a full disk, a vanished folder) leaves nothing half-written behind, and says which checkpoint it was
    auto not_saved = [&](llmt_status st) {
      const std::string why = llmt_last_error();
      remove_tree(tmp);
      return set_error(st, "checkpoint-" + std::to_string(at_step) + " was not saved: " + why +
                               " (its temporary folder is removed; the checkpoints saved before it are intact)");
    };
    llmt_status s = job.method == "lora" ? model->save_adapter(tmp) : model->save_model(tmp);
    if (s) return not_saved(s);
    std::vector<TensorToWrite> opt;
    std::vector<std::string> names;
    names.reserve(tp.size() * 2);
    for (Param *p : tp) {
      const std::string key = job.method == "lora" ? p->save_name : p->name;
      names.push_back(key + ".exp_avg");
      names.push_back(key + ".exp_avg_sq");
    }
    for (size_t i = 0; i < tp.size(); ++i) {
      const float *m = owns(i) ? tp[i]->adam_m.data() : gm[i].data();
      const float *v = owns(i) ? tp[i]->adam_v.data() : gv[i].data();
      opt.push_back({names[2 * i], DType::F32, tp[i]->shape, m});
      opt.push_back({names[2 * i + 1], DType::F32, tp[i]->shape, v});
    }
    if ((s = write_safetensors(tmp + "/optimizer.safetensors", opt, {{"step", std::to_string(at_step)}}))) return not_saved(s);
    Json ts = Json::object();
    ts.set("global_step", Json::integer(at_step));
    ts.set("max_steps", Json::integer(total));
    ts.set("epoch", Json::number(epoch_progress(cur)));
    Json dc = Json::object();
    dc.set("epoch", Json::integer(cur.epoch));
    dc.set("index", Json::integer(cur.index));
    ts.set("data_cursor", dc);
    ts.set("seed", Json::integer(static_cast<int64_t>(job.seed)));
    if (W > 1) ts.set("world_size", Json::integer(W));
    ts.set("log_history", log_history);
    if (best_ckpt > 0) {  // HF's names: what load_best_model_at_end loads
      ts.set("best_metric", Json::number(best_ckpt_eval));
      ts.set("best_global_step", Json::integer(best_ckpt));
      ts.set("best_model_checkpoint", Json::string(best_ckpt_path));
    }
    if (early_stopped) ts.set("llmt_early_stopped", Json::boolean(true));  // a resume trains no further
    ts.set("llmt_optimizer_steps", Json::integer(updates));               // the schedule's and AdamW's count
    if (scaled) {                                                          // torch GradScaler's state
      Json ls = Json::object();
      ls.set("scale", Json::number(loss_scale));
      ls.set("growth_tracker", Json::integer(clean_steps));
      ts.set("llmt_loss_scale", ls);
    }
    if (best_eval_step > 0) {
      Json be = Json::object();
      be.set("eval_loss", Json::number(best_eval));
      be.set("step", Json::integer(best_eval_step));
      ts.set("llmt_best_eval", be);
    }
    if (job.es_patience > 0) {  // HF's EarlyStoppingCallback state
      Json args = Json::object(), attrs = Json::object(), cb = Json::object(), scb = Json::object();
      args.set("early_stopping_patience", Json::integer(job.es_patience));
      args.set("early_stopping_threshold", Json::number(job.es_threshold));
      attrs.set("early_stopping_patience_counter", Json::integer(es_counter));
      cb.set("args", args);
      cb.set("attributes", attrs);
      scb.set("EarlyStoppingCallback", cb);
      ts.set("stateful_callbacks", scb);
    }
    if ((s = write_text_file_atomic(tmp + "/trainer_state.json", ts.dump(2) + "\n"))) return not_saved(s);
    Json rng = Json::object();
    rng.set("seed", Json::integer(static_cast<int64_t>(job.seed)));
    rng.set("data_epoch", Json::integer(cur.epoch));
    rng.set("data_index", Json::integer(cur.index));
    rng.set("dropout_stream", Json::string("mix64(seed, step, micro_batch)"));
    if ((s = write_text_file_atomic(tmp + "/rng_state.json", rng.dump(2) + "\n"))) return not_saved(s);
    if ((s = write_text_file_atomic(tmp + "/training_args.json", job.raw.dump(2) + "\n"))) return not_saved(s);
    remove_tree(final_dir);
    if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      const int err = errno;
      return not_saved(set_error(LLMT_ERR_IO, "cannot move it into place at " + final_dir + ": " + std::strerror(err)));
    }
    Json e = ev("checkpoint");
    e.set("step", Json::integer(at_step));
    e.set("path", Json::string(final_dir));
    emit(e);
    // HF's rotation, after each save it makes (a stop's checkpoint is ours alone and rotates nothing): the oldest go
    // first; with load_best_model_at_end never the best
    if (scheduled && job.save_total_limit > 0) {
      const auto steps = list_checkpoints(job.out_dir);
      const bool keep_best = job.load_best && best_ckpt_path == job.out_dir + "/checkpoint-" + std::to_string(best_ckpt) &&
                             std::find(steps.begin(), steps.end(), best_ckpt) != steps.end();
      int64_t limit = job.save_total_limit;
      if (keep_best && limit == 1 && steps.back() != best_ckpt) limit = 2;  // the best and the newest (as HF)
      int64_t excess = static_cast<int64_t>(steps.size()) - limit;
      for (size_t i = 0; i < steps.size() && excess > 0; ++i) {
        if ((keep_best && steps[i] == best_ckpt) || steps[i] == at_step) continue;
        const std::string dir = job.out_dir + "/checkpoint-" + std::to_string(steps[i]);
        remove_tree(dir);
        Json r = ev("checkpoint_removed");
        r.set("step", Json::integer(steps[i]));
        r.set("path", Json::string(dir));
        r.set("reason", Json::string("save_total_limit " + std::to_string(job.save_total_limit)));
        emit(r);
        --excess;
      }
    }
    return LLMT_OK;
  };
  // the step whose checkpoint this run has written: a stop right after a save_steps checkpoint does not write (and
  // announce) the same checkpoint twice. The same on every rank (a checkpoint is a collective under ZeRO-1).
  int64_t saved_at = -1;
  double last_eval = NAN;
  int64_t last_eval_step = -1;
  // `scheduled`: a save HF Trainer makes too (every save_steps, and at max_steps); a stop's or early stop's checkpoint
  // between them is ours alone: it neither becomes the best nor rotates others out
  auto checkpoint = [&](int64_t at_step, bool scheduled) -> llmt_status {
    if (at_step == saved_at) return LLMT_OK;
    // the scheduled evaluation of this very step, if any, makes it the best checkpoint when it beats the earlier ones
    // (the extra evaluation at a last step that is not an eval step is not one: HF does not evaluate there)
    if (scheduled && last_eval_step == at_step && job.eval_steps > 0 && at_step % job.eval_steps == 0 && std::isfinite(last_eval) &&
        last_eval < best_ckpt_eval) {
      best_ckpt_eval = last_eval;
      best_ckpt = at_step;
      best_ckpt_path = job.out_dir + "/checkpoint-" + std::to_string(at_step);
    }
    llmt_status s = save_checkpoint(at_step, scheduled);
    if (s && save_comm_failed) return comm_fail("the optimizer-state gather for checkpoint-" + std::to_string(at_step));
    if (!s) saved_at = at_step;
    return s ? fail(s) : LLMT_OK;
  };

  auto eval_and_emit = [&]() -> llmt_status {
    double el = NAN;
    int64_t et = 0;
    if (llmt_status s = evaluate(el, et)) return eval_comm_failed ? comm_fail("evaluation at step " + std::to_string(step)) : fail(s);
    Json e = ev("eval");
    e.set("step", Json::integer(step));
    e.set("eval_loss", Json::number(el));
    e.set("eval_tokens", Json::integer(et));
    emit(e);
    Json h = Json::object();
    h.set("step", Json::integer(step));
    h.set("eval_loss", Json::number(el));
    log_history.push(h);
    last_eval = el;
    last_eval_step = step;
    if (std::isfinite(el)) {
      // HF's EarlyStoppingCallback: the counter restarts only when the loss beats the best so far by more than the
      // threshold; the best (state.best_metric) follows any improvement, after the comparison
      if (best_eval_step < 0 || (el < best_eval && best_eval - el > job.es_threshold)) es_counter = 0;
      else ++es_counter;
      if (el < best_eval) {
        best_eval = el;
        best_eval_step = step;
      }
    } else {
      ++es_counter;
    }
    return LLMT_OK;
  };

  std::unique_ptr<GradReducer> reducer;
  // everything the host wrote (LoRA init, resume, rank 0's broadcast) goes to backend memory once; from here on the
  // state stays there and only scalars (loss, grad norm) and checkpoints cross to the host. With offload_optimizer on
  // a GPU, the AdamW moments never go there: the step runs on the host (ZeRO-Offload's CPU Adam), taking the clipped
  // gradients down and the updated weights up (8 bytes of GPU memory per trainable parameter saved).
  const bool host_adam = job.offload_optimizer && !model->backend().host_memory();
  for (Param *p : tp) p->host_optimizer = host_adam;
  if (zero2) {  // ZeRO-2: the gradients other ranks own get no memory of their own (StageReducer)
    const StageReducer::Plan pl = StageReducer::plan(*model, tp, owner, dist.rank());
    for (Param *p : tp)
      if (pl.staged.count(p)) p->grad_staged = true, std::vector<float>().swap(p->grad);
  }
  model->to_device();
  std::shared_ptr<double> sq_acc;  // the grad-norm accumulator in backend memory
  std::unique_ptr<StageReducer> stager;  // ZeRO-2: gradients reduced stage by stage into their owners' buffers
  if (zero2) stager = std::make_unique<StageReducer>(*dist.comm, model->backend(), *model, tp, owner, dist.rank(), job.overlap);
  else if (dist.on()) reducer = std::make_unique<GradReducer>(*dist.comm, tp, job.bucket_mb, model->backend());

  double log_loss_sum = 0;
  int64_t log_steps = 0, log_tokens = 0;
  double log_t0 = now_s();
  double last_loss = NAN;
  // this rank's own numbers since the last log, for `rank_stats`
  double my_tokens = 0, my_compute_s = 0, my_grad_wait_s = 0, my_t0 = mono_s();
  double my_buckets = 0, my_buckets_early = 0;  // gradient buckets reduced, and of those started during the backward
  bool stopped = false;
  const size_t GA = static_cast<size_t>(job.grad_accum);
  if (ended_early && step < total) {  // HF's EarlyStoppingCallback ended this training: a resume has nothing to add
    early_stopped = true;
    Json w = ev("warning");
    w.set("message", Json::string("resumed from " + resumed + ", where early stopping ended the training at step " + std::to_string(step) +
                                  ": nothing is left to train; the outputs are written again (start afresh, e.g. --overwrite_output_dir, to train anew)"));
    emit(w);
  }
  while (step < total && !ended_early) {
    if (ctl.poll && ctl.poll() == 2) return fail(set_error(LLMT_ERR_ABORTED, "training aborted at step " + std::to_string(step)));
    bool want_stop = ctl.poll && ctl.poll() == 1;
    if (!dist.on() && want_stop) {
      stopped = true;
      break;
    }
    model->zero_grad();
    start_step_epoch();
    const Cursor cur_before = cur;
    std::vector<Batch> micro(GA);
    // global target-token counts per micro-batch (+ the ranks' stop votes), all-reduced before any backward
    std::vector<double> counts(GA + 1, 0.0);
    size_t window = 0;  // global micro-batches in this step: GA, fewer in the last step of an epoch
    std::vector<char> global(GA, 0);  // micro-batch k exists on some rank
    for (size_t k = 0; k < GA; ++k) {
      std::vector<int64_t> idx;
      if (next_indices(idx)) ++window, global[k] = 1;
      if (!idx.empty()) {
        if (padding_free) make_batch_padding_free(*train, idx, train->pad_id(), micro[k]);
        else make_batch(*train, idx, train->pad_id(), micro[k]);
      }
      counts[k] = static_cast<double>(count_targets(micro[k]));
    }
    if (dist.on()) {
      counts[GA] = want_stop ? 1.0 : 0.0;
      if (dist.allreduce(counts.data(), counts.size())) return comm_fail("the token-count all-reduce of step " + std::to_string(step + 1));
      if (counts[GA] > 0) {  // a rank was asked to stop: every rank stops before this step, cursor untouched
        cur = cur_before;
        order = epoch_order(n, job.seed, cur.epoch);
        stopped = true;
        break;
      }
    }
    double total_tokens = 0;
    for (size_t k = 0; k < GA; ++k) total_tokens += counts[k];
    // per micro-batch loss sums (this rank's, then all ranks'), and this rank's padded tokens
    std::vector<double> losses(GA + 1, 0.0);
    // the last micro-batch this rank computes: its backward finalises the gradients, bucket by bucket
    size_t last = GA;
    for (size_t k = 0; k < GA; ++k)
      if (micro[k].B > 0) last = k;
    if (reducer) reducer->begin();
    const double tc0 = mono_s();
    double stage_wait_s = 0;
    for (size_t k = 0; k < GA; ++k) {
      if (stager && global[k]) {  // ZeRO-2: every global micro-batch is reduced, by every rank (with zeros if it has no data)
        stager->micro_begin();
        if (micro[k].B == 0) {
          stager->zero_pass();
          double w = 0;
          std::string err;
          if (stager->micro_end(w, err)) return comm_fail("the ZeRO-2 gradient reduction of step " + std::to_string(step + 1));
          stage_wait_s += w;
          continue;
        }
      }
      if (micro[k].B == 0) continue;  // the epoch's last global micro-batch left this rank nothing
      RunOptions o;
      o.training = true;
      o.backward = true;
      o.checkpointing = job.checkpointing;
      o.offload_checkpoints = job.offload_checkpoints;
      o.seed = mix64(job.seed ^ mix64(static_cast<uint64_t>(step) * 1315423911ull + k + 1));
      o.neftune_alpha = static_cast<float>(job.neftune_alpha);
      if (loss_norm == "token_mean") o.grad_scale = total_tokens > 0 ? 1.0f / static_cast<float>(total_tokens) : 0.0f;
      else o.grad_scale = counts[k] > 0 ? 1.0f / (static_cast<float>(counts[k]) * static_cast<float>(window)) : 0.0f;
      o.grad_scale *= static_cast<float>(loss_scale);
      if (reducer && job.overlap && k == last) o.grad_ready = [&](int64_t, const std::vector<Param *> &ready) { reducer->ready(ready); };
      if (stager) {
        o.grad_bind = [&](int64_t, const std::vector<Param *> &ps) { stager->bind(ps); };
        o.grad_ready = [&](int64_t, const std::vector<Param *> &ps) { stager->ready(ps); };
      }
      RunResult r;
      if ((st = model->run(micro[k], o, r))) {
        if (st == LLMT_ERR_NAN) set_error(st, std::string(llmt_last_error()) + " (step " + std::to_string(step + 1) + ")");
        return fail(st);
      }
      if (stager) {
        double w = 0;
        std::string err;
        if (stager->micro_end(w, err)) return comm_fail("the ZeRO-2 gradient reduction of step " + std::to_string(step + 1));
        stage_wait_s += w;
      }
      losses[k] = r.loss_sum;
      losses[GA] += static_cast<double>(micro[k].B * micro[k].T);
      // (not after the last: its buckets are on the wire; the abort is seen at the top of the next step)
      if (!(reducer && k == last) && !stager && ctl.poll && ctl.poll() == 2) return fail(set_error(LLMT_ERR_ABORTED, "training aborted at step " + std::to_string(step)));
    }
    my_compute_s += mono_s() - tc0;
    my_tokens += losses[GA];
    double sq = 0;
    if (stager) {
      // each rank holds the summed gradients it owns: Σg² over those, summed over the ranks with the losses
      Backend &be = model->backend();
      if (!sq_acc) {
        Backend *bp = &be;
        sq_acc.reset(static_cast<double *>(be.alloc(sizeof(double))), [bp](double *q) { bp->release(q); });
      }
      be.upload(sq_acc.get(), &sq, sizeof(double));
      be.sum_squares_acc_multi(slots(tp, owns), sq_acc.get());
      be.download(&sq, sq_acc.get(), sizeof(double));
      losses.push_back(sq);
      dist.comm_wait_s += stage_wait_s;
      my_grad_wait_s += stage_wait_s;
      const double per_micro = static_cast<double>(stager->stages());
      double micro_n = 0;
      for (size_t k = 0; k < GA; ++k) micro_n += global[k] ? 1 : 0;
      my_buckets += per_micro * micro_n;
      my_buckets_early += (per_micro - 1) * micro_n;
      if (dist.allreduce(losses.data(), losses.size())) return comm_fail("the loss all-reduce of step " + std::to_string(step + 1));
      sq = losses.back();
      losses.pop_back();
    } else if (dist.on()) {
      double wait_s = 0;
      std::string err;
      if (reducer->finish(sq, wait_s, err)) return comm_fail("the gradient all-reduce of step " + std::to_string(step + 1));
      dist.comm_wait_s += wait_s;
      my_grad_wait_s += wait_s;
      my_buckets += static_cast<double>(reducer->num_buckets());
      my_buckets_early += static_cast<double>(reducer->overlapped());
      if (dist.allreduce(losses.data(), losses.size())) return comm_fail("the loss all-reduce of step " + std::to_string(step + 1));
    } else {
      // one double in backend memory accumulates Σg² over every tensor: one download per step (the logged norm)
      Backend &be = model->backend();
      if (!sq_acc) {
        Backend *bp = &be;
        sq_acc.reset(static_cast<double *>(be.alloc(sizeof(double))), [bp](double *q) { bp->release(q); });
      }
      be.upload(sq_acc.get(), &sq, sizeof(double));
      be.sum_squares_acc_multi(slots(tp, [](size_t) { return true; }), sq_acc.get());
      be.download(&sq, sq_acc.get(), sizeof(double));
    }
    double step_loss = 0;
    for (size_t k = 0; k < GA; ++k) {
      if (loss_norm == "token_mean") step_loss += losses[k];
      else step_loss += counts[k] > 0 ? losses[k] / counts[k] / static_cast<double>(window) : 0.0;
    }
    const int64_t step_tokens = static_cast<int64_t>(losses[GA]);
    if (loss_norm == "token_mean") step_loss = total_tokens > 0 ? step_loss / total_tokens : NAN;
    if (total_tokens == 0) {
      Json w = ev("warning");
      w.set("message", Json::string("step " + std::to_string(step + 1) + " had no target tokens (every label is -100); HF would report a NaN loss"));
      emit(w);
    }
    double gnorm = std::sqrt(sq) / loss_scale;
    bool skip_update = false;
    if (scaled && !std::isfinite(gnorm) && !(total_tokens > 0 && !std::isfinite(step_loss))) {
      // an fp16 overflow in the scaled gradients: skip this update, back off the scale
      loss_scale *= 0.5;
      clean_steps = 0;
      if (loss_scale < 1.0)
        return fail(set_error(LLMT_ERR_NAN, "the fp16 gradients overflow even with a loss scale below 1 (step " + std::to_string(step + 1) +
                                                "); train with precision bf16 or fp32"));
      Json w = ev("warning");
      w.set("message", Json::string("fp16: the gradients overflowed at step " + std::to_string(step + 1) + "; update skipped, loss scale now " +
                                    std::to_string(static_cast<int64_t>(loss_scale))));
      emit(w);
      skip_update = true;
      gnorm = NAN;
    }
    if (!skip_update && (!std::isfinite(gnorm) || (total_tokens > 0 && !std::isfinite(step_loss)))) {
      return fail(set_error(LLMT_ERR_NAN, "the loss or gradient became " + std::string(std::isnan(gnorm) || std::isnan(step_loss) ? "NaN" : "infinite") +
                                              " at step " + std::to_string(step + 1)));
    }
    if (!skip_update) {  // unscale (fp16) and clip in one pass
      double coef = 1.0 / loss_scale;
      if (job.max_grad_norm > 0 && gnorm > job.max_grad_norm) coef *= job.max_grad_norm / (gnorm + 1e-6);
      if (coef != 1.0) model->backend().scale_multi(slots(tp, owns), static_cast<float>(coef));
    }
    if (scaled && !skip_update && ++clean_steps % 2000 == 0) loss_scale *= 2.0;
    const double lr = job.lr * lr_factor(job.schedule, updates, warmup, total);
    if (!skip_update && !host_adam)  // every owned tensor in one multi-tensor AdamW per learning rate (a few launches on a GPU)
      for (const bool plus : {false, true}) {
        if (plus && !loraplus) break;
        auto pick = [&](size_t i) { return owns(i) && (loraplus && loraplus_b[i]) == plus; };
        model->backend().adamw_multi(slots(tp, pick), static_cast<float>(plus ? lr * job.loraplus_ratio : lr), static_cast<float>(job.beta1),
                                     static_cast<float>(job.beta2), static_cast<float>(job.eps),
                                     static_cast<float>(job.weight_decay), updates + 1);
      }
    for (size_t i = 0; i < tp.size() && !skip_update; ++i) {
      if (!owns(i)) {
        if (zero1 && model->backend().host_memory()) std::fill(tp[i]->data.begin(), tp[i]->data.end(), 0.0f);  // refilled from its owner below
        continue;
      }
      Param *p = tp[i];
      Backend &be = model->backend();
      const float wd = p->decay ? static_cast<float>(job.weight_decay) : 0.0f;
      if (!host_adam) continue;  // stepped above
      {  // the host holds the master weights and the moments; the device gets the new weights
        const size_t bytes = sizeof(float) * static_cast<size_t>(p->numel());
        be.download(p->grad.data(), p->g(), bytes);
        cpu_backend().adamw_step(p->data.data(), p->grad.data(), p->adam_m.data(), p->adam_v.data(), p->numel(),
                                 static_cast<float>(loraplus && loraplus_b[i] ? lr * job.loraplus_ratio : lr), static_cast<float>(job.beta1), static_cast<float>(job.beta2),
                                 static_cast<float>(job.eps), wd, updates + 1);
        be.upload(p->w(), p->data.data(), bytes);
      }
    }
    if (zero1 && (model->backend().host_memory() ? gather_from_owners(dist, tp, owner, 0, nullptr, bucket_elems)
                                                 : gather_params_device(dist, model->backend(), tp, owner, bucket_elems)))
      return comm_fail("the ZeRO-1 parameter all-gather of step " + std::to_string(step + 1));
    if (!skip_update) ++updates;
    ++step;
    if (total_tokens > 0) {
      log_loss_sum += step_loss;
      ++log_steps;
    }
    log_tokens += step_tokens;
    last_loss = step_loss;
    if (step % job.logging_steps == 0 || step == total) {
      const double t = now_s();
      Json e = ev("step");
      e.set("step", Json::integer(step));
      e.set("epoch", Json::number(epoch_progress(cur)));
      e.set("loss", log_steps ? Json::number(log_loss_sum / static_cast<double>(log_steps)) : Json());
      e.set("lr", Json::number(lr));
      e.set("grad_norm", std::isfinite(gnorm) ? Json::number(gnorm) : Json());  // null: an fp16 step skipped
      e.set("tokens", Json::integer(log_tokens));
      e.set("tokens_per_s", Json::number(log_tokens / std::max(1e-9, t - log_t0)));
      e.set("mem_bytes", Json::integer(rss_bytes()));
      e.set("peak_mem_bytes", Json::integer(peak_rss_bytes()));
      const MemoryStats gm = be->memory_stats();  // a GPU's memory as its allocator holds it (0 on the CPU backend)
      if (!be->host_memory()) {
        e.set("gpu_mem_bytes", Json::integer(gm.reserved));
        e.set("gpu_peak_mem_bytes", Json::integer(gm.peak_reserved));
      }
      e.set("time", Json::number(t));
      emit(e);
      if (dist.on()) {
        // every rank's own throughput and memory, gathered into one event (slot r of a zeroed table)
        constexpr int K = 11;
        const double wall = std::max(1e-9, mono_s() - my_t0);
        std::vector<double> table(static_cast<size_t>(K * W), 0.0);
        double *row = table.data() + K * dist.rank();
        row[0] = my_tokens;
        row[1] = my_tokens / wall;
        row[2] = my_compute_s;
        row[3] = dist.comm_wait_s;
        row[4] = static_cast<double>(rss_bytes());
        row[5] = static_cast<double>(peak_rss_bytes());
        row[6] = my_grad_wait_s;
        row[7] = my_buckets;
        row[8] = my_buckets_early;
        row[9] = static_cast<double>(gm.reserved);
        row[10] = static_cast<double>(gm.peak_reserved);
        if (dist.allreduce(table.data(), table.size())) return comm_fail("the per-rank statistics of step " + std::to_string(step));
        Json rs = ev("rank_stats");
        rs.set("step", Json::integer(step));
        rs.set("interval_s", Json::number(wall));
        Json ranks = Json::array();
        for (int r = 0; r < W; ++r) {
          const double *x = table.data() + K * r;
          Json o = Json::object();
          o.set("rank", Json::integer(r));
          o.set("tokens", Json::integer(static_cast<int64_t>(x[0])));
          o.set("tokens_per_s", Json::number(x[1]));
          o.set("compute_s", Json::number(x[2]));
          o.set("comm_wait_s", Json::number(x[3]));
          o.set("mem_bytes", Json::integer(static_cast<int64_t>(x[4])));
          o.set("peak_mem_bytes", Json::integer(static_cast<int64_t>(x[5])));
          o.set("grad_wait_s", Json::number(x[6]));
          o.set("buckets", Json::integer(static_cast<int64_t>(x[7])));
          o.set("buckets_overlapped", Json::integer(static_cast<int64_t>(x[8])));
          if (!be->host_memory()) {  // every rank of a job runs on the same kind of device
            o.set("gpu_mem_bytes", Json::integer(static_cast<int64_t>(x[9])));
            o.set("gpu_peak_mem_bytes", Json::integer(static_cast<int64_t>(x[10])));
          }
          ranks.push(o);
        }
        rs.set("ranks", ranks);
        emit(rs);
        my_tokens = 0;
        my_compute_s = 0;
        my_grad_wait_s = my_buckets = my_buckets_early = 0;
        dist.comm_wait_s = 0;
        my_t0 = mono_s();
      }
      Json h = Json::object();
      h.set("step", Json::integer(step));
      h.set("loss", e.get("loss"));
      h.set("learning_rate", Json::number(lr));
      h.set("grad_norm", Json::number(gnorm));
      log_history.push(h);
      log_loss_sum = 0;
      log_steps = 0;
      log_tokens = 0;
      log_t0 = t;
    }
    bool early_stop = false;
    if (eval && job.eval_steps > 0 && step % job.eval_steps == 0) {
      if ((st = eval_and_emit())) return st;
      early_stop = job.es_patience > 0 && es_counter >= job.es_patience && step < total;
      early_stopped = early_stop;  // (recorded in this step's checkpoint)
    }
    if (step % job.save_steps == 0 && step < total) {
      if ((st = checkpoint(step, true))) return st;
    }
    if (early_stop) {  // HF's EarlyStoppingCallback: training ends here, as a completed run
      Json e = ev("early_stopping");
      e.set("step", Json::integer(step));
      e.set("patience", Json::integer(job.es_patience));
      e.set("best_eval_loss", Json::number(best_eval));
      e.set("best_step", Json::integer(best_eval_step));
      char best_txt[32];
      std::snprintf(best_txt, sizeof best_txt, "%.4f", best_eval);
      std::string by;
      if (job.es_threshold > 0) {
        char th[32];
        std::snprintf(th, sizeof th, "%g", job.es_threshold);
        by = std::string(" by more than ") + th;
      }
      e.set("message", Json::string("early stopping at step " + std::to_string(step) + " of " + std::to_string(total) + ": " + std::to_string(es_counter) +
                                    " evaluation(s) in a row without the eval loss improving" + by + " (early_stopping_patience " +
                                    std::to_string(job.es_patience) + "); the lowest was " + best_txt + " at step " + std::to_string(best_eval_step)));
      emit(e);
      break;
    }
  }
  reducer.reset();
  if (!stopped && eval && (job.eval_steps <= 0 || step % job.eval_steps != 0)) {
    if ((st = eval_and_emit())) return st;
  }
  // the final state is always checkpointed, so a finished run can be extended and a stopped one resumed (HF saves
  // at max_steps too: that one is scheduled)
  if ((st = checkpoint(step, !stopped && !early_stopped && step == total))) return st;
  bool from_best = false;  // rank 0: the output holds the best checkpoint's weights
  if (!stopped && dist.rank() == 0) {
    model->to_host();
    if (job.load_best && best_ckpt > 0 && best_ckpt == step && best_ckpt_path == job.out_dir + "/checkpoint-" + std::to_string(step)) {
      from_best = true;  // the last step is the best
    } else if (job.load_best && best_ckpt > 0) {
      // HF's load_best_model_at_end: the best checkpoint's trained tensors are what the run outputs; a best checkpoint
      // that is gone (removed by hand, or rotated out before load_best_model_at_end was asked for) leaves the last
      // step's, as HF does ("Could not locate the best model")
      const std::string ck = best_ckpt_path;
      const std::string file = ck + (job.method == "lora" ? "/adapter_model.safetensors" : "/model.safetensors");
      struct stat sb;
      if (::stat(file.c_str(), &sb) != 0) {
        Json w = ev("warning");
        w.set("message", Json::string("load_best_model_at_end: the best checkpoint, " + ck + " (eval loss " + std::to_string(best_ckpt_eval) +
                                      "), is not there any more; the output holds the last step's weights"));
        emit(w);
      } else {
        auto w = SafetensorsFile::open(file, st);
        if (!w) return fail(st, "load_best_model_at_end reads the best checkpoint, " + ck + ": leave it in place while the run trains");
        for (Param *p : tp) {
          const TensorInfo *a = w->find(job.method == "lora" ? p->save_name : p->name);
          if (!a || a->numel() != p->numel())
            return fail(set_error(LLMT_ERR_BAD_INPUT, "the best checkpoint " + ck + " lacks " + (job.method == "lora" ? p->save_name : p->name) + " (it was changed on disk)"));
          if ((st = w->read_f32(*a, p->data.data()))) return fail(st);
        }
        from_best = true;
      }
    }
    st = job.method == "lora" ? model->save_adapter(job.out_dir) : model->save_model(job.out_dir);
    if (st) return fail(st);
  }
  // ranks leave together, so none sees another's exit as a failure while it is still finishing
  if (dist.on() && dist.barrier()) return comm_fail("the final barrier");
  Json e = ev("done");
  e.set("status", Json::string(stopped ? "stopped" : "completed"));
  e.set("step", Json::integer(step));
  e.set("output_dir", Json::string(job.out_dir));
  e.set("last_loss", std::isfinite(last_loss) ? Json::number(last_loss) : Json());
  if (early_stopped) e.set("early_stopped", Json::boolean(true));
  if (job.load_best && best_ckpt > 0) {  // which checkpoint the output holds
    e.set("best_checkpoint", Json::string(best_ckpt_path));
    e.set("best_eval_loss", Json::number(best_ckpt_eval));
    e.set("output_from_best", Json::boolean(from_best));
  }
  emit(e);
  return LLMT_OK;
}

}  // namespace llmt
