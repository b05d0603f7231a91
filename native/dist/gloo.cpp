// gloo.cpp — the Gloo plug-in (libllmt_gloo.so): the Collective interface of engine/collective.hpp over
// Debian's libgloo (TCP transport, ring all-reduce, ring reduce to a root, one-to-all broadcast, barrier). It is loaded at run time
// by the engine only when a job has several CPU ranks, so the engine and the addon never need libgloo
// otherwise. No Gloo exception crosses the C entry point: each one becomes a status and a message.
// The rendezvous goes through the engine's KvStore (rank 0's TCP store), wrapped as Gloo's
// rendezvous::Store under the "gloo/" prefix.
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/reduce.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "../engine/collective.hpp"

namespace {

using llmt::CollDType;

// Gloo's Store over the engine's KvStore; failures become Gloo IoExceptions inside connectFullMesh.
class StoreAdapter : public gloo::rendezvous::Store {
 public:
  StoreAdapter(llmt::KvStore &kv, int64_t timeout_ms) : kv_(kv), timeout_ms_(timeout_ms) {}
  void set(const std::string &key, const std::vector<char> &data) override {
    if (kv_.set(key, data) != 0) throw gloo::IoException(kv_.last_error());
  }
  std::vector<char> get(const std::string &key) override {
    std::vector<char> v;
    if (kv_.get(key, v, timeout_ms_) != 0) throw gloo::IoException(kv_.last_error());
    return v;
  }
  void wait(const std::vector<std::string> &keys) override { wait(keys, std::chrono::milliseconds(timeout_ms_)); }
  void wait(const std::vector<std::string> &keys, const std::chrono::milliseconds &timeout) override {
    std::vector<char> v;
    for (const auto &k : keys)
      if (kv_.get(k, v, timeout.count()) != 0) throw gloo::IoException(kv_.last_error());
  }

 private:
  llmt::KvStore &kv_;
  int64_t timeout_ms_;
};

class GlooCollective : public llmt::Collective {
 public:
  GlooCollective(std::shared_ptr<gloo::Context> ctx, int64_t timeout_ms) : ctx_(std::move(ctx)), timeout_(timeout_ms) {}
  const char *name() const override { return "gloo"; }
  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }

  int allreduce_sum(void *buf, size_t count, CollDType type, void *) override {
    if (count == 0) return 0;
    return guarded("all-reduce", [&] {
      gloo::AllreduceOptions o(ctx_);
      summing(o, buf, count, type);
      gloo::allreduce(o);
    });
  }

  // ring reduce-scatter, then the chunks to root (gloo::reduce, in place: no input buffer set)
  int reduce_sum(void *buf, size_t count, CollDType type, int root, void *) override {
    if (count == 0) return 0;
    return guarded("reduce", [&] {
      gloo::ReduceOptions o(ctx_);
      summing(o, buf, count, type);
      o.setRoot(root);
      gloo::reduce(o);
    });
  }

  int broadcast(void *buf, size_t count, CollDType type, int root, void *) override {
    if (count == 0) return 0;
    return guarded("broadcast", [&] {
      gloo::BroadcastOptions o(ctx_);
      o.setTag(next_tag());
      o.setTimeout(timeout_);
      o.setRoot(root);
      if (type == CollDType::F32) {
        if (ctx_->rank == root) o.setInput(static_cast<float *>(buf), count);
        o.setOutput(static_cast<float *>(buf), count);
      } else {
        if (ctx_->rank == root) o.setInput(static_cast<double *>(buf), count);
        o.setOutput(static_cast<double *>(buf), count);
      }
      gloo::broadcast(o);
    });
  }

  int barrier() override {
    return guarded("barrier", [&] {
      gloo::BarrierOptions o(ctx_);
      o.setTag(next_tag());
      o.setTimeout(timeout_);
      gloo::barrier(o);
    });
  }

  const char *last_error() const override { return error_.c_str(); }

 private:
  uint32_t next_tag() { return tag_++ & 0x7fffffffu; }
  // an in-place sum of buf (all-reduce or reduce options): tag, timeout, the buffer and gloo::sum of its type
  template <typename Options>
  void summing(Options &o, void *buf, size_t count, CollDType type) {
    o.setTag(next_tag());
    o.setTimeout(timeout_);
    if (type == CollDType::F32) {
      o.setOutput(static_cast<float *>(buf), count);
      o.setReduceFunction(static_cast<void (*)(void *, const void *, const void *, size_t)>(&gloo::sum<float>));
    } else {
      o.setOutput(static_cast<double *>(buf), count);
      o.setReduceFunction(static_cast<void (*)(void *, const void *, const void *, size_t)>(&gloo::sum<double>));
    }
  }
  template <typename F>
  int guarded(const char *what, F &&f) {
    if (broken_) {
      error_ = std::string("gloo: the communicator is unusable after an earlier error: ") + first_error_;
      return LLMT_ERR_IO;
    }
    try {
      f();
      return 0;
    } catch (const std::exception &e) {
      broken_ = true;
      error_ = std::string("gloo ") + what + " failed on rank " + std::to_string(ctx_->rank) + ": " + e.what();
      first_error_ = error_;
      return LLMT_ERR_IO;
    }
  }
  std::shared_ptr<gloo::Context> ctx_;
  std::chrono::milliseconds timeout_;
  uint32_t tag_ = 1;
  bool broken_ = false;
  std::string error_, first_error_;
};

}  // namespace

extern "C" __attribute__((visibility("default"))) int llmt_gloo_create(int abi, int rank, int size, llmt::KvStore *kv,
                                                                      const char *host, const char *iface,
                                                                      int64_t timeout_ms, llmt::Collective **out,
                                                                      char *err, size_t err_len) {
  auto say = [&](const std::string &m) {
    if (err && err_len) {
      std::strncpy(err, m.c_str(), err_len - 1);
      err[err_len - 1] = '\0';
    }
  };
  if (abi != llmt::kGlooPluginAbi) {
    say("the Gloo plug-in was built for another engine version (ABI " + std::to_string(llmt::kGlooPluginAbi) + ", engine asks for " +
        std::to_string(abi) + "): rebuild the engine");
    return LLMT_ERR_UNSUPPORTED;
  }
  try {
    gloo::transport::tcp::attr attr;
    if (iface && *iface) attr.iface = iface;
    else if (host && *host) attr.hostname = host;
    auto dev = gloo::transport::tcp::CreateDevice(attr);
    StoreAdapter store(*kv, timeout_ms);
    gloo::rendezvous::PrefixStore prefixed("gloo", store);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->setTimeout(std::chrono::milliseconds(timeout_ms));
    ctx->connectFullMesh(prefixed, dev);
    *out = new GlooCollective(ctx, timeout_ms);
    return 0;
  } catch (const std::exception &e) {
    say(std::string("gloo: rank ") + std::to_string(rank) + " could not connect to its peers: " + e.what());
    return LLMT_ERR_IO;
  }
}
