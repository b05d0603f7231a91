// addon.cpp — the node-addon-api binding over the C API (llmt.h), loaded by src-main/core/engine.
// Rules: include only llmt.h from the engine; every call that can take long (inspecting weights,
// loading, generating) runs on a worker thread (AsyncWorker) and settles a Promise; generated tokens
// stream back through a ThreadSafeFunction; failures reject with an Error whose `code` is the engine
// status name (BAD_INPUT, IO, OOM, ...). The JS surface is typed by hand in index.d.ts.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "llmt.h"

namespace {

Napi::Error engine_error(Napi::Env env, llmt_status st, const std::string &msg) {
  Napi::Error err = Napi::Error::New(env, std::string(llmt_status_name(st)) + ": " + msg);
  err.Set("code", Napi::String::New(env, llmt_status_name(st)));
  return err;
}

Napi::Object device_object(Napi::Env env, const llmt_device_info &d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", d.index);
  o.Set("kind", d.kind == LLMT_DEVICE_CUDA ? "cuda" : "cpu");
  o.Set("name", d.name);
  o.Set("memoryTotal", static_cast<double>(d.memory_total));
  o.Set("memoryFree", static_cast<double>(d.memory_free));
  o.Set("threads", d.threads);
  o.Set("utilization", d.utilization);
  o.Set("computeCapability", d.compute_capability);
  return o;
}

Napi::Value Version(const Napi::CallbackInfo &info) { return Napi::String::New(info.Env(), llmt_version()); }
Napi::Value ApiVersion(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), llmt_api_version()); }
Napi::Value BuildInfo(const Napi::CallbackInfo &info) { return Napi::String::New(info.Env(), llmt_build_info()); }

Napi::Value ListDevices(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int count = 0;
  llmt_status st = llmt_device_count(&count);
  if (st != LLMT_OK) {
    engine_error(env, st, llmt_last_error()).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    llmt_device_info d;
    st = llmt_device_info_get(i, &d);
    if (st != LLMT_OK) {
      engine_error(env, st, llmt_last_error()).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    out.Set(static_cast<uint32_t>(i), device_object(env, d));
  }
  return out;
}

bool need_number(const Napi::CallbackInfo &info, size_t i, const char *what) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string(what) + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

Napi::Value DeviceInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!need_number(info, 0, "deviceInfo(index): index")) return env.Undefined();
  llmt_device_info d;
  llmt_status st = llmt_device_info_get(info[0].As<Napi::Number>().Int32Value(), &d);
  if (st != LLMT_OK) {
    engine_error(env, st, llmt_last_error()).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return device_object(env, d);
}

// ---- Promise-based workers -------------------------------------------------------------------------------

/**
 * Runs `work` off the event loop and settles a Promise: rejected with the engine's code on failure; else
 * resolved with `resolve(env)` when given, or with the JSON-parsed result string (undefined when empty).
 */
class JsonWorker : public Napi::AsyncWorker {
 public:
  JsonWorker(Napi::Env env, std::function<llmt_status(std::string &)> work,
             std::function<Napi::Value(Napi::Env)> resolve = nullptr)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)), resolve_(std::move(resolve)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    status_ = work_(result_);
    if (status_ != LLMT_OK) message_ = llmt_last_error();
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (status_ != LLMT_OK) {
      deferred_.Reject(engine_error(env, status_, message_).Value());
      return;
    }
    if (resolve_) {
      deferred_.Resolve(resolve_(env));
      return;
    }
    if (result_.empty()) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    Napi::Object json = env.Global().Get("JSON").As<Napi::Object>();
    Napi::Function parse = json.Get("parse").As<Napi::Function>();
    deferred_.Resolve(parse.Call(json, {Napi::String::New(env, result_)}));
  }
  void OnError(const Napi::Error &e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<llmt_status(std::string &)> work_;
  std::function<Napi::Value(Napi::Env)> resolve_;
  llmt_status status_ = LLMT_OK;
  std::string message_, result_;
};

bool need_string(const Napi::CallbackInfo &info, size_t i, const char *what, std::string &out) {
  if (info.Length() <= i || !info[i].IsString()) {
    Napi::TypeError::New(info.Env(), std::string(what) + " must be a string").ThrowAsJavaScriptException();
    return false;
  }
  out = info[i].As<Napi::String>().Utf8Value();
  return true;
}

Napi::Value Inspect(const Napi::CallbackInfo &info) {
  std::string dir;
  if (!need_string(info, 0, "inspect(dir): dir", dir)) return info.Env().Undefined();
  auto *w = new JsonWorker(info.Env(), [dir](std::string &out) {
    char *json = nullptr;
    llmt_status st = llmt_model_inspect(dir.c_str(), &json);
    if (st == LLMT_OK) {
      out = json;
      llmt_free_string(json);
    }
    return st;
  });
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value CreateTiny(const Napi::CallbackInfo &info) {
  std::string family, dir;
  if (!need_string(info, 0, "createTiny(family, dir, seed?): family", family) ||
      !need_string(info, 1, "createTiny(family, dir, seed?): dir", dir))
    return info.Env().Undefined();
  uint64_t seed = info.Length() > 2 && info[2].IsNumber() ? static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value()) : 0;
  auto *w = new JsonWorker(info.Env(), [family, dir, seed](std::string &) { return llmt_create_tiny(family.c_str(), dir.c_str(), seed); });
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// ---- models ------------------------------------------------------------------------------------------------

/** A loaded model. One generation at a time; free() (or GC) releases it once no generation runs. */
class Model : public Napi::ObjectWrap<Model> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Model",
                       {InstanceMethod<&Model::Generate>("generate"), InstanceMethod<&Model::EvalLoss>("evalLoss"),
                        InstanceMethod<&Model::GenerateBatch>("generateBatch"),
                        InstanceMethod<&Model::Abort>("abort"),
                        InstanceMethod<&Model::Info>("info"), InstanceMethod<&Model::Free>("free")});
  }
  explicit Model(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Model>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      Napi::TypeError::New(info.Env(), "use loadModel(dir, adapter?) to create a Model").ThrowAsJavaScriptException();
      return;
    }
    handle_ = info[0].As<Napi::External<llmt_model>>().Data();
  }
  ~Model() override {
    if (handle_ && !busy_) llmt_model_free(handle_);
  }

  llmt_model *handle() const { return handle_; }
  std::atomic<bool> busy_{false};
  std::atomic<bool> abort_{false};

 private:
  Napi::Value Info(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!handle_) {
      engine_error(env, LLMT_ERR_BAD_INPUT, "the model was freed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    char *json = nullptr;
    llmt_status st = llmt_model_info(handle_, &json);
    if (st) {
      engine_error(env, st, llmt_last_error()).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object J = env.Global().Get("JSON").As<Napi::Object>();
    Napi::Value v = J.Get("parse").As<Napi::Function>().Call(J, {Napi::String::New(env, json)});
    llmt_free_string(json);
    return v;
  }
  Napi::Value Abort(const Napi::CallbackInfo &info) {
    abort_ = true;
    return info.Env().Undefined();
  }
  Napi::Value Free(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (busy_) {
      engine_error(env, LLMT_ERR_BAD_INPUT, "cannot free a model while it generates; abort() first").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    llmt_model_free(handle_);
    handle_ = nullptr;
    return env.Undefined();
  }
  Napi::Value Generate(const Napi::CallbackInfo &info) { return StartGenerate(info, false); }
  Napi::Value GenerateBatch(const Napi::CallbackInfo &info) { return StartGenerate(info, true); }
  Napi::Value StartGenerate(const Napi::CallbackInfo &info, bool batch);
  Napi::Value EvalLoss(const Napi::CallbackInfo &info);
  llmt_model *handle_ = nullptr;
};

// An engine call on a worker thread that streams JSON events to an optional JS callback through a
// ThreadSafeFunction. The Promise settles only after both the worker finished AND every queued callback ran
// (the TSFN's finalizer), so a caller always sees every event before the result. Subclasses make the engine
// call in Run() and build the resolved value in Result(); Rejects() says which statuses reject.
class StreamingWorker : public Napi::AsyncWorker {
 public:
  /** blocking: events wait for room in the queue (tokens must all arrive); else they may be dropped (progress). */
  StreamingWorker(Napi::Env env, Model *model, Napi::ObjectReference ref, Napi::Function on_event, const char *name, bool blocking)
      : Napi::AsyncWorker(env), model_(model), deferred_(Napi::Promise::Deferred::New(env)), ref_(std::move(ref)), blocking_(blocking) {
    SuppressDestruct();
    if (!on_event.IsEmpty() && !on_event.IsUndefined()) {
      pending_ = 2;
      tsfn_ = Napi::ThreadSafeFunction::New(env, on_event, name, 0, 1, this, [](Napi::Env, StreamingWorker *self) { self->Settle(); });
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() final {
    status_ = Run();
    if (status_ != LLMT_OK) message_ = llmt_last_error();
    if (tsfn_) tsfn_.Release();
  }
  void OnOK() final { Settle(); }
  void OnError(const Napi::Error &e) final {
    error_ = Napi::Persistent(e.Value());
    Settle();
  }

 protected:
  virtual llmt_status Run() = 0;
  virtual Napi::Value Result(Napi::Env env) = 0;
  virtual bool Rejects(llmt_status s) const { return s != LLMT_OK; }
  /** llmt_event_fn: one engine event (JSON text) to the JS callback, parsed. */
  static void Emit(void *user, const char *event) {
    auto *self = static_cast<StreamingWorker *>(user);
    if (!self->tsfn_) return;
    std::string *copy = new std::string(event);
    auto call = [](Napi::Env env, Napi::Function fn, std::string *e) {
      if (env != nullptr && !fn.IsEmpty()) {
        Napi::Object J = env.Global().Get("JSON").As<Napi::Object>();
        fn.Call({J.Get("parse").As<Napi::Function>().Call(J, {Napi::String::New(env, *e)})});
      }
      delete e;
    };
    napi_status s = self->blocking_ ? self->tsfn_.BlockingCall(copy, call) : self->tsfn_.NonBlockingCall(copy, call);
    if (s != napi_ok) delete copy;
  }
  /** llmt_abort_fn: the model's abort() flag. */
  static int Aborted(void *user) { return static_cast<StreamingWorker *>(user)->model_->abort_.load() ? 1 : 0; }

  Model *model_;
  llmt_status status_ = LLMT_OK;
  std::string message_;

 private:
  void Settle() {
    if (--pending_ > 0) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    model_->busy_ = false;
    if (!error_.IsEmpty()) deferred_.Reject(error_.Value());
    else if (Rejects(status_)) deferred_.Reject(engine_error(env, status_, message_).Value());
    else deferred_.Resolve(Result(env));
    delete this;
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference ref_;  // keeps the JS Model alive while the call runs
  bool blocking_;
  Napi::ThreadSafeFunction tsfn_;
  Napi::ObjectReference error_;
  int pending_ = 1;
};

// Generation (one prompt, or a batch): tokens stream as {"token", "index"[, "row"]}; abort() resolves with
// aborted: true and the tokens generated so far.
class GenerateWorker : public StreamingWorker {
 public:
  /** batch: resolve with ids per prompt (generateBatch); else with the one prompt's ids (generate). */
  GenerateWorker(Napi::Env env, Model *model, Napi::ObjectReference ref, std::vector<std::vector<int32_t>> prompts,
                 std::string params, Napi::Function on_token, bool batch)
      : StreamingWorker(env, model, std::move(ref), on_token, "llmt.generate.onToken", true),
        prompts_(std::move(prompts)),
        params_(std::move(params)),
        batch_(batch) {}

 protected:
  llmt_status Run() override {
    int64_t cap = 512;
    // max_new_tokens bounds the output buffer; parse it cheaply from the params string
    size_t at = params_.find("\"max_new_tokens\"");
    if (at != std::string::npos) cap = std::max<int64_t>(1, std::atoll(params_.c_str() + params_.find(':', at) + 1));
    cap_ = cap;
    const int64_t R = static_cast<int64_t>(prompts_.size());
    out_.resize(static_cast<size_t>(cap * R));
    n_.assign(static_cast<size_t>(R), 0);
    std::vector<int32_t> flat;
    std::vector<int64_t> lengths;
    for (const auto &p : prompts_) {
      flat.insert(flat.end(), p.begin(), p.end());
      lengths.push_back(static_cast<int64_t>(p.size()));
    }
    if (batch_)
      return llmt_model_generate_batch(model_->handle(), flat.data(), lengths.data(), R, params_.c_str(), Emit, Aborted, this,
                                       out_.data(), cap, n_.data());
    return llmt_model_generate(model_->handle(), flat.data(), lengths[0], params_.c_str(), Emit, Aborted, this, out_.data(), cap,
                               n_.data());
  }
  bool Rejects(llmt_status s) const override { return s != LLMT_OK && s != LLMT_ERR_ABORTED; }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object r = Napi::Object::New(env);
    auto row = [&](size_t k) {
      Napi::Array ids = Napi::Array::New(env, static_cast<size_t>(std::min<int64_t>(n_[k], cap_)));
      for (uint32_t i = 0; i < ids.Length(); ++i) ids.Set(i, out_[k * static_cast<size_t>(cap_) + i]);
      return ids;
    };
    if (batch_) {
      Napi::Array all = Napi::Array::New(env, prompts_.size());
      for (size_t k = 0; k < prompts_.size(); ++k) all.Set(static_cast<uint32_t>(k), row(k));
      r.Set("ids", all);
    } else {
      r.Set("ids", row(0));
    }
    r.Set("aborted", status_ == LLMT_ERR_ABORTED);
    return r;
  }

 private:
  std::vector<std::vector<int32_t>> prompts_;
  std::string params_;
  bool batch_;
  std::vector<int32_t> out_;  // [prompts × cap_]
  std::vector<int64_t> n_;
  int64_t cap_ = 0;
};

// ids of one prompt from a JS array; false (with a TypeError thrown) when it is not an array of numbers
bool prompt_ids(Napi::Env env, Napi::Value v, const std::string &what, std::vector<int32_t> &out) {
  if (!v.IsArray()) {
    Napi::TypeError::New(env, what + " must be an array of token ids").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Array arr = v.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value x = arr.Get(i);
    if (!x.IsNumber()) {
      Napi::TypeError::New(env, what + "[" + std::to_string(i) + "] is not a number").ThrowAsJavaScriptException();
      return false;
    }
    out.push_back(x.As<Napi::Number>().Int32Value());
  }
  return true;
}

Napi::Value Model::StartGenerate(const Napi::CallbackInfo &info, bool batch) {
  Napi::Env env = info.Env();
  if (!handle_) {
    engine_error(env, LLMT_ERR_BAD_INPUT, "the model was freed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<std::vector<int32_t>> prompts;
  if (batch) {
    if (info.Length() < 1 || !info[0].IsArray() || info[0].As<Napi::Array>().Length() == 0) {
      Napi::TypeError::New(env, "generateBatch(prompts, params?, onToken?): prompts must be a non-empty array of token id arrays").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array all = info[0].As<Napi::Array>();
    for (uint32_t k = 0; k < all.Length(); ++k) {
      prompts.emplace_back();
      if (!prompt_ids(env, all.Get(k), "generateBatch: prompts[" + std::to_string(k) + "]", prompts.back())) return env.Undefined();
    }
  } else {
    prompts.emplace_back();
    if (!prompt_ids(env, info.Length() > 0 ? info[0] : env.Undefined(), "generate(promptIds, params?, onToken?): promptIds", prompts.back()))
      return env.Undefined();
  }
  std::string params = "{}";
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object J = env.Global().Get("JSON").As<Napi::Object>();
    params = J.Get("stringify").As<Napi::Function>().Call(J, {info[1]}).As<Napi::String>().Utf8Value();
  }
  Napi::Function on_token;
  if (info.Length() > 2 && info[2].IsFunction()) on_token = info[2].As<Napi::Function>();
  bool expected = false;
  if (!busy_.compare_exchange_strong(expected, true)) {
    engine_error(env, LLMT_ERR_BAD_INPUT, "this model is already generating; wait for it or abort() it").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  abort_ = false;
  auto *w = new GenerateWorker(env, this, Napi::Persistent(Value()), std::move(prompts), params, on_token, batch);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// The evaluation loss (llmt_model_eval_loss): progress events to the callback (may be dropped when JS is
// busy); abort() rejects with ABORTED.
class EvalWorker : public StreamingWorker {
 public:
  EvalWorker(Napi::Env env, Model *model, Napi::ObjectReference ref, std::string path, int64_t batch, Napi::Function on_progress)
      : StreamingWorker(env, model, std::move(ref), on_progress, "llmt.evalLoss.onProgress", false), path_(std::move(path)), batch_(batch) {}

 protected:
  llmt_status Run() override {
    char *out = nullptr;
    llmt_status st = llmt_model_eval_loss(model_->handle(), path_.c_str(), batch_, Emit, Aborted, this, &out);
    if (st == LLMT_OK) {
      result_ = out;
      llmt_free_string(out);
    }
    return st;
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object J = env.Global().Get("JSON").As<Napi::Object>();
    return J.Get("parse").As<Napi::Function>().Call(J, {Napi::String::New(env, result_)});
  }

 private:
  std::string path_;
  int64_t batch_;
  std::string result_;
};

Napi::Value Model::EvalLoss(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!handle_) {
    engine_error(env, LLMT_ERR_BAD_INPUT, "the model was freed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path;
  if (!need_string(info, 0, "evalLoss(tokPath, options?, onProgress?): tokPath", path)) return env.Undefined();
  int64_t batch = 4;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Value b = info[1].As<Napi::Object>().Get("batchSize");
    if (!b.IsUndefined()) {
      if (!b.IsNumber() || b.As<Napi::Number>().DoubleValue() < 1 ||
          b.As<Napi::Number>().DoubleValue() != static_cast<double>(b.As<Napi::Number>().Int64Value())) {
        Napi::TypeError::New(env, "evalLoss: options.batchSize must be a positive integer").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      batch = b.As<Napi::Number>().Int64Value();
    }
  }
  Napi::Function on_progress;
  if (info.Length() > 2 && info[2].IsFunction()) on_progress = info[2].As<Napi::Function>();
  bool expected = false;
  if (!busy_.compare_exchange_strong(expected, true)) {
    engine_error(env, LLMT_ERR_BAD_INPUT, "this model is busy (generating or evaluating); wait for it or abort() it").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  abort_ = false;
  auto *w = new EvalWorker(env, this, Napi::Persistent(Value()), std::move(path), batch, on_progress);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

struct AddonData {
  Napi::FunctionReference model_ctor;
};

// loadModel(dir, adapter?, {device?, precision?, quantization?}): device "cpu" (default), "cuda", "cuda:N" or "auto" — a
// GPU that cannot be used leaves the model on the CPU (info().device says where it is); precision "fp32" (default),
// "bf16" or "fp16" streams the frozen weights in as 16-bit values; quantization "none" (default), "nf4" or "fp4" (or
// the job's object form as JSON text) quantizes the block linears to 4 bits while loading, as QLoRA trains them.
Napi::Value LoadModel(const Napi::CallbackInfo &info) {
  std::string dir, adapter, device = "cpu", precision = "fp32", quantization;
  if (!need_string(info, 0, "loadModel(dir, adapter?, options?): dir", dir)) return info.Env().Undefined();
  if (info.Length() > 1 && info[1].IsString()) adapter = info[1].As<Napi::String>().Utf8Value();
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    if (o.Has("device") && o.Get("device").IsString()) device = o.Get("device").As<Napi::String>().Utf8Value();
    if (o.Has("precision") && o.Get("precision").IsString()) precision = o.Get("precision").As<Napi::String>().Utf8Value();
    if (o.Has("quantization") && o.Get("quantization").IsString()) quantization = o.Get("quantization").As<Napi::String>().Utf8Value();
  }
  auto model = std::make_shared<llmt_model *>(nullptr);
  auto *w = new JsonWorker(
      info.Env(),
      [dir, adapter, device, precision, quantization, model](std::string &) {
        llmt_status st = llmt_model_load_mixed(dir.c_str(), adapter.empty() ? nullptr : adapter.c_str(), quantization.c_str(), precision.c_str(), model.get());
        if (st) return st;
        char note[512] = {0};
        if ((st = llmt_model_set_device(*model, device.c_str(), note, sizeof note))) {
          llmt_model_free(*model);
          *model = nullptr;
        }
        return st;
      },
      [model](Napi::Env env) -> Napi::Value {
        return env.GetInstanceData<AddonData>()->model_ctor.New({Napi::External<llmt_model>::New(env, *model)});
      });
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value SetThreads(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!need_number(info, 0, "setThreads(n): n")) return env.Undefined();
  llmt_status st = llmt_set_threads(info[0].As<Napi::Number>().Int32Value());
  if (st) engine_error(env, st, llmt_last_error()).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto *data = new AddonData();
  Napi::Function ctor = Model::Define(env);
  data->model_ctor = Napi::Persistent(ctor);
  env.SetInstanceData<AddonData>(data);
  exports.Set("version", Napi::Function::New(env, Version, "version"));
  exports.Set("apiVersion", Napi::Function::New(env, ApiVersion, "apiVersion"));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("listDevices", Napi::Function::New(env, ListDevices, "listDevices"));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo, "deviceInfo"));
  exports.Set("inspect", Napi::Function::New(env, Inspect, "inspect"));
  exports.Set("createTiny", Napi::Function::New(env, CreateTiny, "createTiny"));
  exports.Set("loadModel", Napi::Function::New(env, LoadModel, "loadModel"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("Model", ctor);
  return exports;
}

}  // namespace

NODE_API_MODULE(llmt, Init)
