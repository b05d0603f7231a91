// addon.cpp — the node-addon-api binding over the C API (llmt.h), loaded by src-main/core/engine.
// Rules: include only llmt.h from the engine; throw a JS Error carrying the status name as `code`
// for every failed call; anything that can block (loading, generation) becomes an AsyncWorker.
// The JS surface is typed by hand in index.d.ts; keep the two in step.
#include <napi.h>

#include "llmt.h"

namespace {

Napi::Error engine_error(Napi::Env env, llmt_status st) {
  Napi::Error err = Napi::Error::New(env, std::string(llmt_status_name(st)) + ": " + llmt_last_error());
  err.Set("code", Napi::String::New(env, llmt_status_name(st)));
  return err;
}

Napi::Value Version(const Napi::CallbackInfo &info) { return Napi::String::New(info.Env(), llmt_version()); }

Napi::Value ApiVersion(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), llmt_api_version());
}

Napi::Value BuildInfo(const Napi::CallbackInfo &info) {
  return Napi::String::New(info.Env(), llmt_build_info());
}

Napi::Value ListDevices(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int count = 0;
  llmt_status st = llmt_device_count(&count);
  if (st != LLMT_OK) {
    engine_error(env, st).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    llmt_device_info d;
    st = llmt_device_info_get(i, &d);
    if (st != LLMT_OK) {
      engine_error(env, st).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", d.index);
    o.Set("kind", d.kind == LLMT_DEVICE_CUDA ? "cuda" : "cpu");
    o.Set("name", d.name);
    o.Set("memoryTotal", static_cast<double>(d.memory_total));
    o.Set("memoryFree", static_cast<double>(d.memory_free));
    o.Set("threads", d.threads);
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// Exposed for tests of the error path: asks for a device that does not exist.
Napi::Value DeviceInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "deviceInfo(index): index must be a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  llmt_device_info d;
  llmt_status st = llmt_device_info_get(info[0].As<Napi::Number>().Int32Value(), &d);
  if (st != LLMT_OK) {
    engine_error(env, st).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", d.index);
  o.Set("kind", d.kind == LLMT_DEVICE_CUDA ? "cuda" : "cpu");
  o.Set("name", d.name);
  o.Set("memoryTotal", static_cast<double>(d.memory_total));
  o.Set("memoryFree", static_cast<double>(d.memory_free));
  o.Set("threads", d.threads);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::Function::New(env, Version, "version"));
  exports.Set("apiVersion", Napi::Function::New(env, ApiVersion, "apiVersion"));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("listDevices", Napi::Function::New(env, ListDevices, "listDevices"));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo, "deviceInfo"));
  return exports;
}

}  // namespace

NODE_API_MODULE(llmt, Init)
