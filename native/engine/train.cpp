// train.cpp — the training loop (see train.hpp). HF Trainer semantics, stated here once:
//  - loss per token: cross-entropy of shifted labels, −100 ignored;
//  - gradient accumulation: "token_mean" divides the summed token losses of all micro-batches of a step by
//    their total token count (transformers ≥ 4.46 for models that accept num_items_in_batch: llama,
//    gpt_neox); "mean_of_means" averages each micro-batch's mean loss over the GA micro-batches
//    (transformers ≤ 4.45, and remote-code models such as Baichuan). "auto" picks per family;
//  - logged loss: the mean of the step losses since the last log; grad_norm: the global L2 norm before
//    clipping; lr: the rate used by this step's update;
//  - AdamW (torch) with decay on all but biases and norm weights; schedules as transformers.get_scheduler.
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
#include <memory>
#include <set>
#include <vector>

#include "../cpu/ops.hpp"
#include "backend.hpp"
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
  LoraSpec lora;
  std::string train_path, eval_path;
  double lr = 2e-4, warmup_ratio = 0, max_grad_norm = 1.0, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::string schedule = "linear", loss_norm = "auto";
  int64_t warmup_steps = 0, max_steps = -1, epochs = 3, micro_batch = 4, grad_accum = 1, eval_batch = 4;
  uint64_t seed = 42;
  bool checkpointing = false;
  std::string out_dir;
  int64_t logging_steps = 10, save_steps = 500, eval_steps = 0, save_total_limit = 0;
  std::string resume_from;
  int64_t threads = 0;
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

llmt_status parse_job(const Json &j, Job &job) {
  llmt_status st = check_keys(j, "(job)", {"version", "model", "method", "lora", "data", "training", "output", "resume_from", "threads"});
  if (st) return st;
  job.raw = j;
  const Json &m = j.get("model");
  job.model_dir = m.is_string() ? m.as_string() : m.get_string("path");
  if (job.model_dir.empty()) return set_error(LLMT_ERR_BAD_INPUT, "job: \"model\" (the HF model folder) is required");
  job.method = j.get_string("method", "lora");
  if (job.method != "lora" && job.method != "full") return set_error(LLMT_ERR_BAD_INPUT, "job: method must be \"lora\" or \"full\"");
  const Json &l = j.get("lora");
  if (!l.is_null()) {
    if ((st = check_keys(l, "lora", {"r", "alpha", "dropout", "target_modules", "modules_to_save", "bias", "use_rslora", "init_adapter"}))) return st;
    job.lora.r = l.get_int("r", 8);
    job.lora.alpha = l.get_number("alpha", 16);
    job.lora.dropout = l.get_number("dropout", 0.0);
    job.lora.bias = l.get_string("bias", "none");
    job.lora.use_rslora = l.get_bool("use_rslora", false);
    const Json &t = l.get("target_modules");
    if (t.is_string()) job.lora.target_regex = t.as_string();
    for (const auto &x : t.items())
      if (x.is_string()) job.lora.targets.push_back(x.as_string());
    for (const auto &x : l.get("modules_to_save").items())
      if (x.is_string()) job.lora.modules_to_save.push_back(x.as_string());
    job.init_adapter = l.get_string("init_adapter");
  }
  const Json &d = j.get("data");
  if ((st = check_keys(d, "data", {"train", "eval"}))) return st;
  job.train_path = d.get_string("train");
  job.eval_path = d.get_string("eval");
  if (job.train_path.empty()) return set_error(LLMT_ERR_BAD_INPUT, "job: data.train (a .tok or JSON tokens file) is required");
  const Json &t = j.get("training");
  if (!t.is_null()) {
    if ((st = check_keys(t, "training", {"learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio", "max_steps", "num_epochs",
                                          "micro_batch_size", "gradient_accumulation_steps", "max_grad_norm", "weight_decay",
                                          "adam_beta1", "adam_beta2", "adam_epsilon", "seed", "gradient_checkpointing",
                                          "loss_normalization", "eval_batch_size"})))
      return st;
    job.lr = t.get_number("learning_rate", job.lr);
    job.schedule = t.get_string("lr_scheduler", job.schedule);
    job.warmup_steps = t.get_int("warmup_steps", 0);
    job.warmup_ratio = t.get_number("warmup_ratio", 0);
    job.max_steps = t.get_int("max_steps", -1);
    job.epochs = t.get_int("num_epochs", 3);
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
  }
  const Json &o = j.get("output");
  if ((st = check_keys(o, "output", {"dir", "logging_steps", "save_steps", "eval_steps", "save_total_limit"}))) return st;
  job.out_dir = o.get_string("dir");
  if (job.out_dir.empty()) return set_error(LLMT_ERR_BAD_INPUT, "job: output.dir is required");
  job.logging_steps = o.get_int("logging_steps", 10);
  job.save_steps = o.get_int("save_steps", 500);
  job.eval_steps = o.get_int("eval_steps", 0);
  job.save_total_limit = o.get_int("save_total_limit", 0);
  job.resume_from = j.get_string("resume_from");
  job.threads = j.get_int("threads", 0);
  auto positive = [](int64_t v, const char *name) -> llmt_status {
    return v > 0 ? LLMT_OK : set_error(LLMT_ERR_BAD_INPUT, std::string("job: ") + name + " must be a positive integer");
  };
  if ((st = positive(job.micro_batch, "training.micro_batch_size")) || (st = positive(job.grad_accum, "training.gradient_accumulation_steps")) ||
      (st = positive(job.eval_batch, "training.eval_batch_size")) || (st = positive(job.logging_steps, "output.logging_steps")) ||
      (st = positive(job.save_steps, "output.save_steps")))
    return st;
  if (job.max_steps <= 0 && job.epochs <= 0) return set_error(LLMT_ERR_BAD_INPUT, "job: set training.max_steps or training.num_epochs");
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

void make_batch(const TokData &data, const std::vector<int64_t> &idx, int64_t pad, Batch &b) {
  int64_t T = 0;
  for (int64_t i : idx) T = std::max(T, data.length(i));
  b.B = static_cast<int64_t>(idx.size());
  b.T = T;
  b.ids.assign(static_cast<size_t>(b.B * T), static_cast<int32_t>(pad));
  b.labels.assign(static_cast<size_t>(b.B * T), -100);
  if (data.packed()) b.pos.assign(static_cast<size_t>(b.B * T), 0);
  std::vector<int32_t> ids, labels, pos;
  for (size_t r = 0; r < idx.size(); ++r) {
    data.sample(idx[r], ids, labels);
    std::copy(ids.begin(), ids.end(), b.ids.begin() + static_cast<int64_t>(r) * T);
    std::copy(labels.begin(), labels.end(), b.labels.begin() + static_cast<int64_t>(r) * T);
    if (data.packed()) {
      data.positions(idx[r], pos);
      int32_t next = 0;
      for (int64_t t = 0; t < T; ++t) {  // padding continues the row's last sample
        const int32_t v = t < static_cast<int64_t>(pos.size()) ? pos[static_cast<size_t>(t)] : next;
        b.pos[static_cast<size_t>(static_cast<int64_t>(r) * T + t)] = v;
        next = v + 1;
      }
    }
  }
}

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

}  // namespace

llmt_status run_training(const Json &job_json, TrainControl &ctl) {
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
    if (!h.empty()) e.set("hint", Json::string(h));
    if (ctl.emit) ctl.emit(e);
    return st;
  };
  Job job;
  llmt_status st = parse_job(job_json, job);
  if (st) return fail(st);
  if (job.threads > 0) cpu::set_num_threads(static_cast<int>(job.threads));

  auto model = Model::load(job.model_dir, st);
  if (!model) return fail(st);
  const ModelConfig &cfg = model->config();
  if (job.method == "lora") {
    if (!job.init_adapter.empty()) st = model->load_adapter(job.init_adapter, true);
    else st = model->add_lora(job.lora, job.seed);
    if (st) return fail(st);
  } else {
    model->make_all_trainable();
  }
  std::string loss_norm = job.loss_norm;
  if (loss_norm == "auto") loss_norm = cfg.model_type == "baichuan" ? "mean_of_means" : "token_mean";

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
  const int64_t batches_per_epoch = (n + job.micro_batch - 1) / job.micro_batch;
  const int64_t steps_per_epoch = std::max<int64_t>(1, (batches_per_epoch + job.grad_accum - 1) / job.grad_accum);
  const int64_t total = job.max_steps > 0 ? job.max_steps : job.epochs * steps_per_epoch;
  const int64_t warmup = job.warmup_steps > 0 ? job.warmup_steps : static_cast<int64_t>(std::ceil(job.warmup_ratio * total));
  std::vector<Param *> tp = model->trainable_params();
  for (Param *p : tp) {
    p->adam_m.assign(p->data.size(), 0.0f);
    p->adam_v.assign(p->data.size(), 0.0f);
  }
  if ((st = make_directories(job.out_dir))) return fail(st);

  // ---- resume ----
  int64_t step = 0;
  Cursor cur;
  Json log_history = Json::array();
  std::string resumed;
  if (!job.resume_from.empty()) {
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
    if (ts.get("log_history").is_array()) log_history = ts.get("log_history");
    auto w = SafetensorsFile::open(ck + (job.method == "lora" ? "/adapter_model.safetensors" : "/model.safetensors"), st);
    if (!w) return fail(st);
    auto opt = SafetensorsFile::open(ck + "/optimizer.safetensors", st);
    if (!opt) return fail(st);
    for (Param *p : tp) {
      const std::string key = job.method == "lora" ? p->save_name : p->name;
      const TensorInfo *a = w->find(key), *m = opt->find(key + ".exp_avg"), *v = opt->find(key + ".exp_avg_sq");
      if (!a || !m || !v || a->numel() != p->numel() || m->numel() != p->numel() || v->numel() != p->numel()) {
        return fail(set_error(LLMT_ERR_BAD_INPUT, "checkpoint " + ck + " does not match this job (tensor " + key +
                                                      " missing or of another shape): was it written by another run?"));
      }
      if ((st = w->read_f32(*a, p->data.data())) || (st = opt->read_f32(*m, p->adam_m.data())) ||
          (st = opt->read_f32(*v, p->adam_v.data())))
        return fail(st);
    }
    resumed = ck;
  }

  {
    Json e = ev("started");
    e.set("model", Json::string(job.model_dir));
    e.set("model_type", Json::string(cfg.model_type));
    e.set("method", Json::string(job.method));
    e.set("total_params", Json::integer(model->num_parameters()));
    e.set("trainable_params", Json::integer(model->num_trainable()));
    e.set("train_samples", Json::integer(n));
    e.set("eval_samples", Json::integer(eval ? eval->size() : 0));
    e.set("max_steps", Json::integer(total));
    e.set("warmup_steps", Json::integer(warmup));
    e.set("loss_normalization", Json::string(loss_norm));
    e.set("threads", Json::integer(cpu::num_threads()));
    e.set("start_step", Json::integer(step));
    if (!resumed.empty()) e.set("resumed_from", Json::string(resumed));
    ctl.emit(e);
  }

  std::vector<int64_t> order = epoch_order(n, job.seed, cur.epoch);
  auto next_indices = [&](std::vector<int64_t> &idx) {
    if (cur.index >= n) {
      ++cur.epoch;
      cur.index = 0;
      order = epoch_order(n, job.seed, cur.epoch);
    }
    const int64_t take = std::min(job.micro_batch, n - cur.index);
    idx.assign(order.begin() + cur.index, order.begin() + cur.index + take);
    cur.index += take;
  };

  auto evaluate = [&](double &loss, int64_t &tokens) -> llmt_status {
    double sum = 0;
    tokens = 0;
    for (int64_t b0 = 0; b0 < eval->size(); b0 += job.eval_batch) {
      std::vector<int64_t> idx;
      for (int64_t i = b0; i < std::min(eval->size(), b0 + job.eval_batch); ++i) idx.push_back(i);
      Batch b;
      make_batch(*eval, idx, eval->pad_id(), b);
      RunOptions o;
      RunResult r;
      if (llmt_status s = model->run(b, o, r)) return s;
      sum += r.loss_sum;
      tokens += r.count;
      if (ctl.poll && ctl.poll() == 2) return set_error(LLMT_ERR_ABORTED, "aborted during evaluation");
    }
    loss = tokens ? sum / static_cast<double>(tokens) : NAN;
    return LLMT_OK;
  };

  auto save_checkpoint = [&](int64_t at_step) -> llmt_status {
    const std::string final_dir = job.out_dir + "/checkpoint-" + std::to_string(at_step);
    const std::string tmp = final_dir + ".tmp-" + std::to_string(::getpid());
    remove_tree(tmp);
    llmt_status s = job.method == "lora" ? model->save_adapter(tmp) : model->save_model(tmp);
    if (s) return s;
    std::vector<TensorToWrite> opt;
    std::vector<std::string> names;
    names.reserve(tp.size() * 2);
    for (Param *p : tp) {
      const std::string key = job.method == "lora" ? p->save_name : p->name;
      names.push_back(key + ".exp_avg");
      names.push_back(key + ".exp_avg_sq");
    }
    for (size_t i = 0; i < tp.size(); ++i) {
      opt.push_back({names[2 * i], DType::F32, tp[i]->shape, tp[i]->adam_m.data()});
      opt.push_back({names[2 * i + 1], DType::F32, tp[i]->shape, tp[i]->adam_v.data()});
    }
    if ((s = write_safetensors(tmp + "/optimizer.safetensors", opt, {{"step", std::to_string(at_step)}}))) return s;
    Json ts = Json::object();
    ts.set("global_step", Json::integer(at_step));
    ts.set("max_steps", Json::integer(total));
    ts.set("epoch", Json::number(cur.epoch + static_cast<double>(cur.index) / static_cast<double>(n)));
    Json dc = Json::object();
    dc.set("epoch", Json::integer(cur.epoch));
    dc.set("index", Json::integer(cur.index));
    ts.set("data_cursor", dc);
    ts.set("seed", Json::integer(static_cast<int64_t>(job.seed)));
    ts.set("log_history", log_history);
    if ((s = write_text_file_atomic(tmp + "/trainer_state.json", ts.dump(2) + "\n"))) return s;
    Json rng = Json::object();
    rng.set("seed", Json::integer(static_cast<int64_t>(job.seed)));
    rng.set("data_epoch", Json::integer(cur.epoch));
    rng.set("data_index", Json::integer(cur.index));
    rng.set("dropout_stream", Json::string("mix64(seed, step, micro_batch)"));
    if ((s = write_text_file_atomic(tmp + "/rng_state.json", rng.dump(2) + "\n"))) return s;
    if ((s = write_text_file_atomic(tmp + "/training_args.json", job.raw.dump(2) + "\n"))) return s;
    remove_tree(final_dir);
    if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      return set_error(LLMT_ERR_IO, "cannot move checkpoint into place at " + final_dir + ": " + std::strerror(errno));
    }
    Json e = ev("checkpoint");
    e.set("step", Json::integer(at_step));
    e.set("path", Json::string(final_dir));
    ctl.emit(e);
    if (job.save_total_limit > 0) {
      auto steps = list_checkpoints(job.out_dir);
      while (static_cast<int64_t>(steps.size()) > job.save_total_limit) {
        remove_tree(job.out_dir + "/checkpoint-" + std::to_string(steps.front()));
        steps.erase(steps.begin());
      }
    }
    return LLMT_OK;
  };

  auto eval_and_emit = [&]() -> llmt_status {
    double el = NAN;
    int64_t et = 0;
    if (llmt_status s = evaluate(el, et)) return s;
    Json e = ev("eval");
    e.set("step", Json::integer(step));
    e.set("eval_loss", Json::number(el));
    e.set("eval_tokens", Json::integer(et));
    ctl.emit(e);
    Json h = Json::object();
    h.set("step", Json::integer(step));
    h.set("eval_loss", Json::number(el));
    log_history.push(h);
    return LLMT_OK;
  };

  double log_loss_sum = 0;
  int64_t log_steps = 0, log_tokens = 0;
  double log_t0 = now_s();
  double last_loss = NAN;
  bool stopped = false;
  while (step < total) {
    if (ctl.poll && ctl.poll() == 2) return fail(set_error(LLMT_ERR_ABORTED, "training aborted at step " + std::to_string(step)));
    if (ctl.poll && ctl.poll() == 1) {
      stopped = true;
      break;
    }
    model->zero_grad();
    std::vector<Batch> micro(static_cast<size_t>(job.grad_accum));
    int64_t total_tokens = 0;
    std::vector<int64_t> counts(micro.size());
    for (size_t k = 0; k < micro.size(); ++k) {
      std::vector<int64_t> idx;
      next_indices(idx);
      make_batch(*train, idx, train->pad_id(), micro[k]);
      counts[k] = count_targets(micro[k]);
      total_tokens += counts[k];
    }
    double step_loss = 0;
    int64_t step_tokens = 0;
    for (size_t k = 0; k < micro.size(); ++k) {
      RunOptions o;
      o.training = true;
      o.backward = true;
      o.checkpointing = job.checkpointing;
      o.seed = mix64(job.seed ^ mix64(static_cast<uint64_t>(step) * 1315423911ull + k + 1));
      if (loss_norm == "token_mean") o.grad_scale = total_tokens ? 1.0f / static_cast<float>(total_tokens) : 0.0f;
      else o.grad_scale = counts[k] ? 1.0f / (static_cast<float>(counts[k]) * static_cast<float>(micro.size())) : 0.0f;
      RunResult r;
      if ((st = model->run(micro[k], o, r))) {
        if (st == LLMT_ERR_NAN) set_error(st, std::string(llmt_last_error()) + " (step " + std::to_string(step + 1) + ")");
        return fail(st);
      }
      step_tokens += micro[k].B * micro[k].T;
      if (loss_norm == "token_mean") step_loss += r.loss_sum;
      else step_loss += r.count ? r.loss_sum / static_cast<double>(r.count) / static_cast<double>(micro.size()) : 0.0;
      if (ctl.poll && ctl.poll() == 2) return fail(set_error(LLMT_ERR_ABORTED, "training aborted at step " + std::to_string(step)));
    }
    if (loss_norm == "token_mean") step_loss = total_tokens ? step_loss / static_cast<double>(total_tokens) : NAN;
    if (total_tokens == 0) {
      Json w = ev("warning");
      w.set("message", Json::string("step " + std::to_string(step + 1) + " had no target tokens (every label is -100); HF would report a NaN loss"));
      ctl.emit(w);
    }
    double sq = 0;
    for (Param *p : tp) sq += model->backend().sum_squares(p->grad.data(), p->numel());
    const double gnorm = std::sqrt(sq);
    if (!std::isfinite(gnorm) || (total_tokens > 0 && !std::isfinite(step_loss))) {
      return fail(set_error(LLMT_ERR_NAN, "the loss or gradient became " + std::string(std::isnan(gnorm) || std::isnan(step_loss) ? "NaN" : "infinite") +
                                              " at step " + std::to_string(step + 1)));
    }
    if (job.max_grad_norm > 0 && gnorm > job.max_grad_norm) {
      const float coef = static_cast<float>(job.max_grad_norm / (gnorm + 1e-6));
      for (Param *p : tp) model->backend().scale_inplace(p->grad.data(), coef, p->numel());
    }
    const double lr = job.lr * lr_factor(job.schedule, step, warmup, total);
    for (Param *p : tp) {
      model->backend().adamw_step(p->data.data(), p->grad.data(), p->adam_m.data(), p->adam_v.data(), p->numel(), static_cast<float>(lr),
                      static_cast<float>(job.beta1), static_cast<float>(job.beta2), static_cast<float>(job.eps),
                      p->decay ? static_cast<float>(job.weight_decay) : 0.0f, step + 1);
    }
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
      e.set("epoch", Json::number(cur.epoch + static_cast<double>(cur.index) / static_cast<double>(n)));
      e.set("loss", log_steps ? Json::number(log_loss_sum / static_cast<double>(log_steps)) : Json());
      e.set("lr", Json::number(lr));
      e.set("grad_norm", Json::number(gnorm));
      e.set("tokens", Json::integer(log_tokens));
      e.set("tokens_per_s", Json::number(log_tokens / std::max(1e-9, t - log_t0)));
      e.set("mem_bytes", Json::integer(rss_bytes()));
      e.set("peak_mem_bytes", Json::integer(peak_rss_bytes()));
      e.set("time", Json::number(t));
      ctl.emit(e);
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
    if (eval && job.eval_steps > 0 && step % job.eval_steps == 0) {
      if ((st = eval_and_emit())) return fail(st);
    }
    if (step % job.save_steps == 0 && step < total) {
      if ((st = save_checkpoint(step))) return fail(st);
    }
  }
  if (!stopped && eval && (job.eval_steps <= 0 || step % job.eval_steps != 0)) {
    if ((st = eval_and_emit())) return fail(st);
  }
  // the final state is always checkpointed, so a finished run can be extended and a stopped one resumed
  if ((st = save_checkpoint(step))) return fail(st);
  if (!stopped) {
    st = job.method == "lora" ? model->save_adapter(job.out_dir) : model->save_model(job.out_dir);
    if (st) return fail(st);
  }
  Json e = ev("done");
  e.set("status", Json::string(stopped ? "stopped" : "completed"));
  e.set("step", Json::integer(step));
  e.set("output_dir", Json::string(job.out_dir));
  e.set("last_loss", std::isfinite(last_loss) ? Json::number(last_loss) : Json());
  ctl.emit(e);
  return LLMT_OK;
}

}  // namespace llmt
