// collective_nccl.cpp — the Collective interface over NCCL, loaded at run time with dlopen (libnccl.so.2 and
// the CUDA runtime), so the engine builds and runs without either. The few NCCL/CUDA typedefs and prototypes
// it needs are declared here (stable ABI since NCCL 2.x), or taken from nccl.h when the build has it.
//
// Not yet run on GPUs: the trainer drives it over the CUDA backend's device buffers, tested under cuemu (its test
// NCCL and CUDA runtime: native/tests/cuemu), whose collectives follow NCCL's semantics between processes.
//
// Design: rank 0 makes the ncclUniqueId and publishes it through the rendezvous store; every rank then
// creates its communicator on device LOCAL_RANK, non-blocking (ncclCommInitRankConfig with blocking = 0, NCCL
// >= 2.14) and polled with ncclCommGetAsyncError against the same deadline as the collectives, so a peer lost
// during start-up fails the rank instead of hanging it (the communicator is aborted). Older NCCLs fall back to
// the blocking ncclCommInitRank, which has no timeout. Each collective is enqueued on the caller's stream and then
// waited for by polling cudaStreamQuery and ncclCommGetAsyncError with a deadline; on a timeout or an
// asynchronous error (a dead peer) the communicator is aborted (ncclCommAbort), so a rank that loses its
// peers returns an error instead of hanging in a kernel forever.
#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "collective.hpp"
#include "status.hpp"

namespace llmt {
namespace {

// ---- the slice of nccl.h / cuda_runtime_api.h we use (values fixed by NVIDIA's ABI) ----
using ncclResult_t = int;
constexpr ncclResult_t kNcclSuccess = 0, kNcclInProgress = 7;
using ncclComm_t = void *;
struct ncclUniqueId {
  char internal[128];
};
constexpr int kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclSum = 0;
// ncclConfig_t as NCCL 2.14 introduced it. NCCL copies `size` bytes and gives fields newer than `version` their
// defaults, so this prefix is valid for every later release (NCCL_CONFIG_INITIALIZER with blocking set).
struct ncclConfig214 {
  size_t size = sizeof(ncclConfig214);
  unsigned int magic = 0xcafebeef;
  unsigned int version = 21400;  // NCCL_VERSION(2, 14, 0)
  int blocking = 0;
};
using cudaError_t = int;
constexpr cudaError_t kCudaSuccess = 0, kCudaErrorNotReady = 600;

struct NcclApi {
  ncclResult_t (*GetUniqueId)(ncclUniqueId *) = nullptr;
  ncclResult_t (*CommInitRank)(ncclComm_t *, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*CommInitRankConfig)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig214 *) = nullptr;  // NCCL >= 2.14
  ncclResult_t (*AllReduce)(const void *, void *, size_t, int, int, ncclComm_t, void *) = nullptr;
  ncclResult_t (*Broadcast)(const void *, void *, size_t, int, int, ncclComm_t, void *) = nullptr;
  ncclResult_t (*Reduce)(const void *, void *, size_t, int, int, int, ncclComm_t, void *) = nullptr;
  ncclResult_t (*GroupStart)() = nullptr;
  ncclResult_t (*GroupEnd)() = nullptr;
  ncclResult_t (*CommDestroy)(ncclComm_t) = nullptr;
  ncclResult_t (*CommAbort)(ncclComm_t) = nullptr;
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *) = nullptr;
  const char *(*GetErrorString)(ncclResult_t) = nullptr;
  cudaError_t (*SetDevice)(int) = nullptr;
  cudaError_t (*StreamQuery)(void *) = nullptr;
  const char *(*CudaErrorString)(cudaError_t) = nullptr;
};

void *open_first(std::initializer_list<const char *> names, std::string &tried) {
  // LLMT_CUDA_LIB_DIRS first (pip's nvidia-* lib folders, as for the driver and cuBLAS: cuda/loader.cpp)
  if (const char *dirs = std::getenv("LLMT_CUDA_LIB_DIRS")) {
    const std::string s = dirs;
    for (size_t at = 0; at <= s.size();) {
      size_t c = s.find(':', at);
      if (c == std::string::npos) c = s.size();
      if (c > at)
        for (const char *n : names)
          if (void *h = ::dlopen((s.substr(at, c - at) + "/" + n).c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
      at = c + 1;
    }
  }
  for (const char *n : names) {
    if (void *h = ::dlopen(n, RTLD_NOW | RTLD_LOCAL)) return h;
    const char *e = ::dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e ? e : n);
  }
  return nullptr;
}

template <typename F>
bool sym(void *h, const char *name, F &out) {
  out = reinterpret_cast<F>(::dlsym(h, name));
  return out != nullptr;
}

llmt_status load_api(NcclApi &api) {
  std::string tried;
  void *nccl = open_first({"libnccl.so.2", "libnccl.so"}, tried);
  if (!nccl) {
    return set_error(LLMT_ERR_UNSUPPORTED, "NCCL (libnccl.so.2) cannot be loaded: " + tried +
                                               ". Install NVIDIA's NCCL (e.g. the libnccl2 package, or pip's nvidia-nccl-cu12 with its "
                                               "lib folder on LD_LIBRARY_PATH)");
  }
  void *rt = open_first({"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}, tried);
  if (!rt) return set_error(LLMT_ERR_UNSUPPORTED, "the CUDA runtime (libcudart.so) cannot be loaded: " + tried);
  bool ok = sym(nccl, "ncclGetUniqueId", api.GetUniqueId) && sym(nccl, "ncclCommInitRank", api.CommInitRank) &&
            sym(nccl, "ncclAllReduce", api.AllReduce) && sym(nccl, "ncclBroadcast", api.Broadcast) &&
            sym(nccl, "ncclGroupStart", api.GroupStart) && sym(nccl, "ncclGroupEnd", api.GroupEnd) &&
            sym(nccl, "ncclCommDestroy", api.CommDestroy) && sym(nccl, "ncclCommAbort", api.CommAbort) &&
            sym(nccl, "ncclCommGetAsyncError", api.CommGetAsyncError) && sym(nccl, "ncclGetErrorString", api.GetErrorString) &&
            sym(rt, "cudaSetDevice", api.SetDevice) && sym(rt, "cudaStreamQuery", api.StreamQuery) &&
            sym(rt, "cudaGetErrorString", api.CudaErrorString);
  if (!ok) return set_error(LLMT_ERR_UNSUPPORTED, "libnccl.so.2 or libcudart lacks a needed function (NCCL >= 2.4 is required)");
  sym(nccl, "ncclCommInitRankConfig", api.CommInitRankConfig);  // optional: without it, no start-up timeout
  sym(nccl, "ncclReduce", api.Reduce);  // in every NCCL 2; without it reduce_sum falls back to an all-reduce
  return LLMT_OK;
}

class NcclCollective : public Collective {
 public:
  NcclCollective(NcclApi api, ncclComm_t comm, int rank, int size, int device, int64_t timeout_ms)
      : api_(api), comm_(comm), rank_(rank), size_(size), device_(device), timeout_ms_(timeout_ms) {}
  ~NcclCollective() override {
    if (comm_) (broken_ ? api_.CommAbort : api_.CommDestroy)(comm_);
  }
  const char *name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  int allreduce_sum(void *buf, size_t count, CollDType type, void *stream) override {
    if (broken_) return unusable();
    if (int r = bind()) return r;
    const int dt = type == CollDType::F32 ? kNcclFloat32 : kNcclFloat64;
    return finish("all-reduce", api_.AllReduce(buf, buf, count, dt, kNcclSum, comm_, stream), stream);
  }
  // one group: NCCL fuses the all-reduces of a gradient bucket into one launch, no packing copy
  int allreduce_sum_many(const std::vector<std::pair<void *, size_t>> &bufs, CollDType type, void *stream) override {
    const int dt = type == CollDType::F32 ? kNcclFloat32 : kNcclFloat64;
    return grouped("grouped all-reduce", bufs.size(), stream,
                   [&](size_t i) { return api_.AllReduce(bufs[i].first, bufs[i].first, bufs[i].second, dt, kNcclSum, comm_, stream); });
  }
  int reduce_sum(void *buf, size_t count, CollDType type, int root, void *stream) override { return reduce_sum_many({{buf, count, root}}, type, stream); }
  // one group of rooted reduces (each gradient to the rank that owns it: ZeRO-2)
  int reduce_sum_many(const std::vector<Rooted> &bufs, CollDType type, void *stream) override {
    const int dt = type == CollDType::F32 ? kNcclFloat32 : kNcclFloat64;
    return grouped("grouped reduce", bufs.size(), stream, [&](size_t i) {
      const Rooted &b = bufs[i];
      return api_.Reduce ? api_.Reduce(b.buf, b.buf, b.count, dt, kNcclSum, b.root, comm_, stream) : api_.AllReduce(b.buf, b.buf, b.count, dt, kNcclSum, comm_, stream);
    });
  }
  bool device_buffers() const override { return true; }
  int broadcast(void *buf, size_t count, CollDType type, int root, void *stream) override {
    if (broken_) return unusable();
    if (int r = bind()) return r;
    const int dt = type == CollDType::F32 ? kNcclFloat32 : kNcclFloat64;
    return finish("broadcast", api_.Broadcast(buf, buf, count, dt, root, comm_, stream), stream);
  }
  int barrier() override {
    // NCCL has no barrier: an all-reduce of one element on the default stream needs device memory, which the
    // CUDA backend provides; until then the trainer uses the store for start-up ordering only.
    error_ = "nccl: barrier() needs a device buffer; use allreduce_sum on a one-element device buffer";
    return LLMT_ERR_UNSUPPORTED;
  }
  const char *last_error() const override { return error_.c_str(); }

 private:
  // The CUDA runtime's current device is per thread, and the trainer calls from its communication thread too:
  // every call names this rank's device first (what NCCL's own examples do per thread).
  int bind() {
    if (cudaError_t e = api_.SetDevice(device_)) return fail("cudaSetDevice", std::to_string(device_) + ": " + api_.CudaErrorString(e));
    return 0;
  }
  // n calls of `enqueue` as one NCCL group (GroupEnd always closes it, even after a failed enqueue)
  template <typename F>
  int grouped(const char *what, size_t n, void *stream, F &&enqueue) {
    if (broken_) return unusable();
    if (int r = bind()) return r;
    ncclResult_t r = api_.GroupStart();
    for (size_t i = 0; i < n && (r == kNcclSuccess || r == kNcclInProgress); ++i) r = enqueue(i);
    const ncclResult_t e = api_.GroupEnd();
    return finish(what, r != kNcclSuccess && r != kNcclInProgress ? r : e, stream);
  }
  int unusable() {
    error_ = "nccl: the communicator was aborted after an earlier error";
    return LLMT_ERR_CUDA;
  }
  // Waits for the enqueued operation with a deadline, watching NCCL's asynchronous errors (a dead peer). A
  // non-blocking communicator may still be enqueuing (ncclInProgress): the stream is queried only after that.
  int finish(const char *what, ncclResult_t r, void *stream) {
    if (r != kNcclSuccess && r != kNcclInProgress) return fail(what, std::string("ncclResult ") + api_.GetErrorString(r));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    for (;;) {
      ncclResult_t async = kNcclSuccess;
      api_.CommGetAsyncError(comm_, &async);
      if (async != kNcclSuccess && async != kNcclInProgress) return fail(what, std::string("a peer failed: ") + api_.GetErrorString(async));
      if (async == kNcclSuccess) {
        cudaError_t q = api_.StreamQuery(stream);
        if (q == kCudaSuccess) return 0;
        if (q != kCudaErrorNotReady) return fail(what, std::string("CUDA: ") + api_.CudaErrorString(q));
      }
      if (std::chrono::steady_clock::now() > deadline) return fail(what, "timed out after " + std::to_string(timeout_ms_ / 1000) + " s");
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  int fail(const char *what, const std::string &why) {
    broken_ = true;
    error_ = std::string("nccl ") + what + " failed on rank " + std::to_string(rank_) + ": " + why;
    return LLMT_ERR_CUDA;
  }
  NcclApi api_;
  ncclComm_t comm_;
  int rank_, size_, device_;
  int64_t timeout_ms_;
  bool broken_ = false;
  std::string error_;
};

}  // namespace

std::unique_ptr<Collective> open_nccl(const DistEnv &env, KvStore &store, int device, int64_t timeout_ms, llmt_status &st) {
  NcclApi api;
  if ((st = load_api(api))) return nullptr;
  if (cudaError_t e = api.SetDevice(device)) {
    st = set_error(LLMT_ERR_CUDA, "cudaSetDevice(" + std::to_string(device) + "): " + api.CudaErrorString(e));
    return nullptr;
  }
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (env.rank == 0) {
    if (ncclResult_t r = api.GetUniqueId(&id)) {
      st = set_error(LLMT_ERR_CUDA, std::string("ncclGetUniqueId: ") + api.GetErrorString(r));
      return nullptr;
    }
    if (store.set("nccl/unique_id", std::vector<char>(id.internal, id.internal + sizeof id.internal))) {
      st = set_error(LLMT_ERR_IO, store.last_error());
      return nullptr;
    }
  } else {
    std::vector<char> v;
    if (store.get("nccl/unique_id", v, timeout_ms) || v.size() != sizeof id.internal) {
      st = set_error(LLMT_ERR_IO, std::string("nccl: no unique id from rank 0: ") + store.last_error());
      return nullptr;
    }
    std::memcpy(id.internal, v.data(), sizeof id.internal);
  }
  ncclComm_t comm = nullptr;
  if (!api.CommInitRankConfig) {  // NCCL < 2.14: blocking, no timeout
    if (ncclResult_t r = api.CommInitRank(&comm, env.world_size, id, env.rank)) {
      st = set_error(LLMT_ERR_CUDA, std::string("ncclCommInitRank: ") + api.GetErrorString(r));
      return nullptr;
    }
  } else {
    // non-blocking: returns at once (ncclInProgress) and connects in the background; poll with a deadline
    ncclConfig214 cfg;
    ncclResult_t r = api.CommInitRankConfig(&comm, env.world_size, id, env.rank, &cfg);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (r == kNcclInProgress) {
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (ncclResult_t q = api.CommGetAsyncError(comm, &r)) {
        r = q;
        break;
      }
    }
    if (r != kNcclSuccess) {
      const bool timed_out = r == kNcclInProgress;
      if (comm) api.CommAbort(comm);
      st = set_error(timed_out ? LLMT_ERR_IO : LLMT_ERR_CUDA,
                     "ncclCommInitRankConfig on rank " + std::to_string(env.rank) + ": " +
                         (timed_out ? "timed out after " + std::to_string(timeout_ms / 1000) + " s (a peer never joined: it died or is unreachable)"
                                    : std::string(api.GetErrorString(r))));
      return nullptr;
    }
  }
  st = LLMT_OK;
  return std::make_unique<NcclCollective>(api, comm, env.rank, env.world_size, device, timeout_ms);
}

}  // namespace llmt
