// backend_cuda.cpp — the CUDA implementation of engine/backend.hpp (fp32, the CPU contracts exactly): device memory
// from a caching allocator, one non-blocking stream, kernels from kernels.cu (an embedded fatbin loaded with the
// driver API), GEMMs through cuBLAS when it can be dlopen'ed (else the fatbin's tiled GEMM). No CUDA library is
// linked: everything comes through cuda/loader.cpp, so this file builds without CUDA headers too.
//
// Host pointers. Today's model code keeps parameters and activations in host std::vectors (model.cpp); so that a
// model runs on this backend unchanged, every op accepts host pointers too: inputs that are not ours are staged
// into device scratch, outputs copied back, and the op then completes before returning (CPU-like semantics).
// Pointers from alloc() stay on the device and ops on them are asynchronous (stream order) as backend.hpp says.
// Staging is correct but slow; device-resident model state is the next step (docs/cuda.md).
//
// STATUS: compiled and run under cuemu (native/tests/cuemu: the driver API emulated on the CPU), NOT yet run on a GPU.
// test_cuda validates it (bench/gpu.sh on a GPU server).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "../engine/backend.hpp"
#include "cuda.hpp"
#include "loader.hpp"
#include "mt.hpp"

extern "C" {
extern const unsigned char llmt_cuda_fatbin[];  // embed_fatbin.c
}

namespace llmt {

using namespace cudadl;

namespace {

/** Device out-of-memory: a std::bad_alloc (→ LLMT_ERR_OOM) that says what was being allocated. */
struct CudaOom : std::bad_alloc {
  std::string msg;
  explicit CudaOom(std::string m) : msg(std::move(m)) {}
  const char *what() const noexcept override { return msg.c_str(); }
};

// Kernels looked up at init (a fatbin without one of them is refused then); any other is looked up on first use.
const char *kKernels[] = {"k_gemm", "k_add_bias", "k_col_sum", "k_add", "k_axpby", "k_scale", "k_split_cols",
                          "k_qkv_split", "k_dropout_fwd", "k_dropout_bwd", "k_rms_fwd", "k_rms_bwd", "k_rms_dw",
                          "k_ln_fwd", "k_ln_bwd", "k_ln_dwdb", "k_rope", "k_swiglu_fwd", "k_swiglu_bwd", "k_gelu_fwd",
                          "k_gelu_bwd", "k_attn_fwd", "k_attn_delta", "k_attn_bwd_dq", "k_attn_bwd_dkdv",
                          "k_attn_cached", "k_ce_fwd", "k_ce_bwd", "k_embed_fwd", "k_embed_bwd", "k_adamw", "k_sumsq",
                          "k_sumsq_acc", "k_fill", "k_gemm_q4_nt", "k_gemm_q4_nn"};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int index) : d_(driver()), index_(index) {}

  /** Creates the context, stream, module and cuBLAS handle; false with *why on failure. */
  bool init(std::string *why) {
    if (d_.cuDeviceGet(&dev_, index_) != 0) return fail(why, "no CUDA device " + std::to_string(index_));
    int major = 0, minor = 0;
    d_.cuDeviceGetAttribute(&major, kAttrCcMajor, dev_);
    d_.cuDeviceGetAttribute(&minor, kAttrCcMinor, dev_);
    if (major < 8)
      return fail(why, "GPU " + std::to_string(index_) + " has compute capability " + std::to_string(major) + "." +
                           std::to_string(minor) + "; this engine's kernels need 8.0 or newer (Ampere+)");
    cc_major_ = major;
    CUresult r;
    if ((r = d_.cuDevicePrimaryCtxRetain(&ctx_, dev_)) != 0) return fail(why, "cuDevicePrimaryCtxRetain: " + d_.error(r));
    if ((r = d_.cuCtxSetCurrent(ctx_)) != 0) return fail(why, "cuCtxSetCurrent: " + d_.error(r));
    if ((r = d_.cuModuleLoadData(&mod_, llmt_cuda_fatbin)) != 0)
      return fail(why, "loading the engine's kernels failed: " + d_.error(r) +
                           " (driver too old for this build's CUDA toolkit? driver " + std::to_string(d_.version) + ")");
    for (const char *k : kKernels) {
      CUfunction f = nullptr;
      if ((r = d_.cuModuleGetFunction(&f, mod_, k)) != 0) return fail(why, std::string("kernel ") + k + ": " + d_.error(r));
      fn_[k] = f;
    }
    if ((r = d_.cuStreamCreate(&stream_, kStreamNonBlocking)) != 0) return fail(why, "cuStreamCreate: " + d_.error(r));
    sync_each_ = std::getenv("LLMT_CUDA_SYNC") && std::strcmp(std::getenv("LLMT_CUDA_SYNC"), "0") != 0;
    const Cublas &cb = cublas();
    if (cb.ok && cb.create(&blas_) == 0) {
      cb.set_stream(blas_, stream_);
      const char *tf = std::getenv("LLMT_CUDA_TF32");
      cb.set_math_mode(blas_, tf && std::strcmp(tf, "1") == 0 ? kCublasTf32Math : kCublasDefaultMath);
    } else {
      blas_ = nullptr;
      blas_note_ = cb.ok ? "cublasCreate failed" : cb.why;
    }
    name_ = "cuda:" + std::to_string(index_);
    return true;
  }

  const char *name() const override { return name_.c_str(); }
  DeviceKind kind() const override { return DeviceKind::CUDA; }
  ComputeType compute_type() const override { return ComputeType::F32; }
  bool has_cublas() const { return blas_ != nullptr; }
  const std::string &cublas_note() const { return blas_note_; }

  // ---- memory: a caching allocator (size classes of 512 B, blocks reused in stream order) ----
  void *alloc(size_t bytes) override {
    cur();
    const size_t sz = std::max<size_t>(512, (bytes + 511) / 512 * 512);
    std::lock_guard<std::mutex> lk(mu_);
    auto it = cache_.lower_bound(sz);
    if (it != cache_.end() && it->first <= sz * 2) {  // a cached block that wastes at most half
      CUdeviceptr p = it->second;
      live_[p] = it->first;
      cache_.erase(it);
      note_alloc(static_cast<int64_t>(live_[p]), 0);
      return reinterpret_cast<void *>(p);
    }
    CUdeviceptr p = 0;
    CUresult r = d_.cuMemAlloc(&p, sz);
    if (r == kErrOutOfMemory) {  // give the cache back to the driver and retry once
      d_.cuStreamSynchronize(stream_);
      for (auto &c : cache_) {
        d_.cuMemFree(c.second);
        mem_.reserved -= static_cast<int64_t>(c.first);
      }
      cache_.clear();
      r = d_.cuMemAlloc(&p, sz);
    }
    if (r != 0) {
      size_t fr = 0, tot = 0;
      d_.cuMemGetInfo(&fr, &tot);
      throw CudaOom("CUDA out of memory allocating " + mib(sz) + " on " + name_ + " (" + mib(fr) + " free of " + mib(tot) +
                    ", " + mib(in_use()) + " held by the engine); use a smaller micro-batch or sequence length, "
                    "gradient checkpointing, or QLoRA");
    }
    live_[p] = sz;
    note_alloc(static_cast<int64_t>(sz), static_cast<int64_t>(sz));
    return reinterpret_cast<void *>(p);
  }
  void *stream_handle() const override { return stream_; }
  void *alloc_host(size_t bytes) override {
    if (d_.cuMemHostAlloc && d_.cuMemFreeHost) {
      cur();
      void *p = nullptr;
      if (d_.cuMemHostAlloc(&p, bytes ? bytes : 1, 0) == 0 && p) {
        std::lock_guard<std::mutex> lk(mu_);
        pinned_.insert(p);
        return p;
      }
    }
    return Backend::alloc_host(bytes);  // page-locked memory refused (ulimit -l, a container): plain memory still works
  }
  void free_host(void *p) override {
    if (!p) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = pinned_.find(p);
      if (it == pinned_.end()) return Backend::free_host(p);
      pinned_.erase(it);
    }
    d_.cuMemFreeHost(p);
  }
  void download_async(void *dst, const void *src, size_t bytes) override { enqueue_download(dst, src, bytes); }

  // ---- profile: an event pair around every launch, cuBLAS call and copy while on (backend.hpp) ----
  bool profile_start() override {
    if (!d_.has_events()) return false;
    cur();
    recycle_marks();
    prof_ = true;
    return true;
  }
  std::vector<ProfileRow> profile_stop() override {
    if (!prof_) return {};
    prof_ = false;
    synchronize();
    std::map<std::string, ProfileRow> by;
    for (const Mark &m : marks_) {
      float ms = 0;
      check(d_.cuEventElapsedTime(&ms, m.a, m.b), "profile: cuEventElapsedTime");
      ProfileRow &r = by[m.name];
      r.name = m.name;
      ++r.calls;
      r.ms += ms;
      r.flops += m.flops;
    }
    recycle_marks();
    std::vector<ProfileRow> rows;
    for (auto &e : by) rows.push_back(e.second);
    std::stable_sort(rows.begin(), rows.end(), [](const ProfileRow &a, const ProfileRow &b) { return a.ms > b.ms; });
    return rows;
  }
  MemoryStats memory_stats() const override {
    std::lock_guard<std::mutex> lk(mu_);
    return mem_;
  }
  void release(void *p) override {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(reinterpret_cast<CUdeviceptr>(p));
    if (it == live_.end()) return;  // not ours
    cache_.emplace(it->second, it->first);
    mem_.allocated -= static_cast<int64_t>(it->second);
    live_.erase(it);
  }
  void upload(void *dst, const void *src, size_t bytes) override {
    cur();
    if (!is_dev(dst)) {
      synchronize();
      std::memcpy(dst, src, bytes);
      return;
    }
    ++xfer_.uploads;
    xfer_.bytes_up += static_cast<int64_t>(bytes);
    Timed t(*this, "memcpy host to device");
    check(d_.cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), src, bytes, stream_), "upload");
  }
  void download(void *dst, const void *src, size_t bytes) override {
    if (enqueue_download(dst, src, bytes)) synchronize();
  }
  // Copies src (device memory) to host memory in stream order and returns true; src that is host memory is copied at
  // once, after the stream has finished (false: nothing left to wait for).
  bool enqueue_download(void *dst, const void *src, size_t bytes) {
    cur();
    if (!is_dev(src)) {
      synchronize();
      std::memcpy(dst, src, bytes);
      return false;
    }
    ++xfer_.downloads;
    xfer_.bytes_down += static_cast<int64_t>(bytes);
    Timed t(*this, "memcpy device to host");
    check(d_.cuMemcpyDtoHAsync(dst, reinterpret_cast<CUdeviceptr>(src), bytes, stream_), "download");
    return true;
  }
  void synchronize() override {
    cur();
    ++xfer_.syncs;
    check(d_.cuStreamSynchronize(stream_), last_kernel_.empty() ? "synchronize" : ("a kernel up to " + last_kernel_).c_str());
  }

  // ---- ops ----
  void matmul_nt(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    Stage s(*this);
    gemm(s.in(A, M * K), s.in(B, N * K), s.out(C, M * N, acc), M, N, K, acc, /*nt*/ 0);
    s.done();
  }
  void matmul_nn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    Stage s(*this);
    gemm(s.in(A, M * K), s.in(B, K * N), s.out(C, M * N, acc), M, N, K, acc, 1);
    s.done();
  }
  void matmul_tn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    Stage s(*this);
    gemm(s.in(A, K * M), s.in(B, K * N), s.out(C, M * N, acc), M, N, K, acc, 2);
    s.done();
  }
  void matmul_nt_scaled(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, float alpha, bool acc) override {
    if (!blas_) return Backend::matmul_nt_scaled(A, B, C, M, N, K, alpha, acc);
    Stage s(*this);
    gemm(s.in(A, M * K), s.in(B, N * K), s.out(C, M * N, acc), M, N, K, acc, 0, alpha);
    s.done();
  }
  void matmul_nn_scaled(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, float alpha, bool acc) override {
    if (!blas_) return Backend::matmul_nn_scaled(A, B, C, M, N, K, alpha, acc);
    Stage s(*this);
    gemm(s.in(A, M * K), s.in(B, K * N), s.out(C, M * N, acc), M, N, K, acc, 1, alpha);
    s.done();
  }
  bool supports_half() const override { return true; }
  void matmul_nt_half(const float *A, const uint16_t *W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    Stage s(*this);
    gemm_half(s.in(A, M * K), s.in(W, N * K), t, s.out(C, M * N, acc), M, N, K, acc, 0);
    s.done();
  }
  void matmul_nt_half_shared(const float *A, const std::vector<HalfOut> &outs, Half t, int64_t M, int64_t K) override {
    if (!blas_ || !cublas().gemm_ex || M >= (1LL << 31) || K >= (1LL << 31)) return Backend::matmul_nt_half_shared(A, outs, t, M, K);
    Stage s(*this);
    const float *dA = s.in(A, M * K);
    uint16_t *Ah = s.scratch<uint16_t>(M * K);  // A rounded once for every output
    const int type = t == Half::F16 ? 2 : 1;
    ew("k_to_half", M * K, dA, Ah, ll(M * K), type);
    for (const HalfOut &o : outs) gemm_half_rounded(Ah, s.in(o.W, o.N * K), t, s.out(o.C, M * o.N), M, o.N, K, false, 0);
    s.done();
  }
  void matmul_nn_half(const float *A, const uint16_t *W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    Stage s(*this);
    gemm_half(s.in(A, M * K), s.in(W, K * N), t, s.out(C, M * N, acc), M, N, K, acc, 1);
    s.done();
  }
  void add_bias(float *y, const float *b, int64_t rows, int64_t cols) override {
    Stage s(*this);
    ew("k_add_bias", rows * cols, s.out(y, rows * cols, true), s.in(b, cols), ll(rows), ll(cols));
    s.done();
  }
  void bias_backward(const float *dy, float *db, int64_t rows, int64_t cols) override {
    Stage s(*this);
    ew("k_col_sum", cols, s.in(dy, rows * cols), s.out(db, cols, true), ll(rows), ll(cols));
    s.done();
  }
  void rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols, float eps) override {
    Stage s(*this);
    rowk("k_rms_fwd", rows, s.in(x, rows * cols), s.in(w, cols), s.out(y, rows * cols), s.out(rstd, rows), ll(rows), ll(cols), eps);
    s.done();
  }
  void rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw, int64_t rows,
                        int64_t cols) override {
    Stage s(*this);
    const float *ddy = s.in(dy, rows * cols), *dxx = s.in(x, rows * cols), *drs = s.in(rstd, rows);
    float *ddw = s.out(dw, cols, true);
    if (ddw) ew("k_rms_dw", cols, ddy, dxx, drs, ddw, ll(rows), ll(cols));  // before dx: dx may alias dy
    rowk("k_rms_bwd", rows, ddy, dxx, s.in(w, cols), drs, s.out(dx, rows * cols), ll(rows), ll(cols));
    s.done();
  }
  void layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, int64_t rows,
                         int64_t cols, float eps) override {
    Stage s(*this);
    rowk("k_ln_fwd", rows, s.in(x, rows * cols), s.in(w, cols), s.in(b, cols), s.out(y, rows * cols), s.out(mean, rows),
         s.out(rstd, rows), ll(rows), ll(cols), eps);
    s.done();
  }
  void layernorm_backward(const float *dy, const float *x, const float *w, const float *mean, const float *rstd, float *dx,
                          float *dw, float *db, int64_t rows, int64_t cols) override {
    Stage s(*this);
    const float *ddy = s.in(dy, rows * cols), *dxx = s.in(x, rows * cols), *dm = s.in(mean, rows), *drs = s.in(rstd, rows);
    float *ddw = s.out(dw, cols, true), *ddb = s.out(db, cols, true);
    if (ddw || ddb) ew("k_ln_dwdb", cols, ddy, dxx, dm, drs, ddw, ddb, ll(rows), ll(cols));
    rowk("k_ln_bwd", rows, ddy, dxx, s.in(w, cols), dm, drs, s.out(dx, rows * cols), ll(rows), ll(cols));
    s.done();
  }
  void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim,
                    int64_t rot_dims, float pos_scale, bool interleaved) override {
    rope(x, pos, inv_freq, rows, heads, head_dim, rot_dims, pos_scale, 1.0f, interleaved);
  }
  void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim,
                     int64_t rot_dims, float pos_scale, bool interleaved) override {
    rope(dx, pos, inv_freq, rows, heads, head_dim, rot_dims, pos_scale, -1.0f, interleaved);
  }
  void swiglu_forward(const float *gate, const float *up, float *out, int64_t n) override {
    Stage s(*this);
    ew("k_swiglu_fwd", n, s.in(gate, n), s.in(up, n), s.out(out, n), ll(n));
    s.done();
  }
  void swiglu_backward(const float *dout, const float *gate, const float *up, float *dgate, float *dup, int64_t n) override {
    Stage s(*this);
    ew("k_swiglu_bwd", n, s.in(dout, n), s.in(gate, n), s.in(up, n), s.out(dgate, n), s.out(dup, n), ll(n));
    s.done();
  }
  void gelu_forward(const float *x, float *y, int64_t n, cpu::Gelu kind) override {
    Stage s(*this);
    ew("k_gelu_fwd", n, s.in(x, n), s.out(y, n), ll(n), int(kind == cpu::Gelu::Erf ? 0 : 1));
    s.done();
  }
  void gelu_backward(const float *dy, const float *x, float *dx, int64_t n, cpu::Gelu kind) override {
    Stage s(*this);
    ew("k_gelu_bwd", n, s.in(dy, n), s.in(x, n), s.out(dx, n), ll(n), int(kind == cpu::Gelu::Erf ? 0 : 1));
    s.done();
  }
  void attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                         int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                         const int32_t *prefix) override {
    check_hd(hd);
    Stage s(*this);
    warps("k_attn_fwd", B * nh * T, s.in(q, B * T * nh * hd), s.in(k, B * T * nkv * hd), s.in(v, B * T * nkv * hd),
          s.out(out, B * T * nh * hd), s.out(lse, B * nh * T), ll(B), ll(T), ll(nh), ll(nkv), ll(hd), scale,
          s.in(seg_start, B * T), s.in(alibi, nh), s.in(prefix, B));
    s.done();
  }
  void attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse,
                          float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
                          float scale, const int32_t *seg_start, const float *alibi, const int32_t *prefix) override {
    check_hd(hd);
    Stage s(*this);
    const int64_t nq = B * T * nh * hd, nk = B * T * nkv * hd;
    const float *ddo = s.in(dout, nq), *dq_ = s.in(q, nq), *dk_ = s.in(k, nk), *dv_ = s.in(v, nk), *dl = s.in(lse, B * nh * T);
    const int32_t *dseg = s.in(seg_start, B * T), *dpre = s.in(prefix, B);
    const float *dal = s.in(alibi, nh);
    float *D = s.scratch<float>(B * T * nh);
    warps("k_attn_delta", B * T * nh, ddo, s.in(out, nq), D, ll(B * T * nh), ll(hd));
    warps("k_attn_bwd_dq", B * nh * T, ddo, dq_, dk_, dv_, dl, static_cast<const float *>(D), s.out(dq, nq), ll(B), ll(T),
          ll(nh), ll(nkv), ll(hd), scale, dseg, dal, dpre);
    warps("k_attn_bwd_dkdv", B * nkv * T, ddo, dq_, dk_, dv_, dl, static_cast<const float *>(D), s.out(dk, nk),
          s.out(dv, nk), ll(B), ll(T), ll(nh), ll(nkv), ll(hd), scale, dseg, dal, dpre);
    s.done();
  }
  // Mixed precision: the tensor-core (WMMA) flash-attention kernels for head_dim 64 and 128; anything else, fp32.
  void attention_forward_lp(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                            int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                            const int32_t *prefix, Half t) override {
    if (!tc_attention(hd, T, B, nh, nkv)) {  // the fp32 kernels on rounded inputs (the CPU's semantics)
      Stage s(*this);
      const float *qr = rounded(s, q, B * T * nh * hd, t), *kr = rounded(s, k, B * T * nkv * hd, t), *vr = rounded(s, v, B * T * nkv * hd, t);
      attention_forward(qr, kr, vr, s.out(out, B * T * nh * hd), s.out(lse, B * nh * T), B, T, nh, nkv, hd, scale,
                        s.in(seg_start, B * T), s.in(alibi, nh), s.in(prefix, B));
      s.done();
      return;
    }
    Stage s(*this);
    // the 4-warp kernels (lazy rescaling in the forward) unless LLMT_ATTN_TC=v1 (read per call: `bench --attn both`
    // times both)
    const bool v1 = attn_v1_mode();
    const std::string kn = tc_name(v1 ? "k_attn_fwd_tc_" : "k_attn_fwd_tc4_", t, hd);
    const unsigned rows = v1 ? 32 : 64;
    launch_grid(kn.c_str(), unsigned((T + rows - 1) / rows), unsigned(nh), unsigned(B), v1 ? 64 : 128, s.in(q, B * T * nh * hd),
                s.in(k, B * T * nkv * hd), s.in(v, B * T * nkv * hd), s.out(out, B * T * nh * hd), s.out(lse, B * nh * T), ll(T),
                ll(nh), ll(nkv), scale, s.in(seg_start, B * T), s.in(alibi, nh), s.in(prefix, B));
    s.done();
  }
  void attention_backward_lp(const float *dout, const float *q, const float *k, const float *v, const float *out,
                             const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh, int64_t nkv,
                             int64_t hd, float scale, const int32_t *seg_start, const float *alibi, const int32_t *prefix,
                             Half t) override {
    if (!tc_attention(hd, T, B, nh, nkv)) {
      Stage s(*this);
      const int64_t nq = B * T * nh * hd, nk = B * T * nkv * hd;
      const float *dr = rounded(s, dout, nq, t), *qr = rounded(s, q, nq, t), *kr = rounded(s, k, nk, t), *vr = rounded(s, v, nk, t);
      attention_backward(dr, qr, kr, vr, s.in(out, nq), s.in(lse, B * nh * T), s.out(dq, nq), s.out(dk, nk), s.out(dv, nk), B, T,
                         nh, nkv, hd, scale, s.in(seg_start, B * T), s.in(alibi, nh), s.in(prefix, B));
      s.done();
      return;
    }
    Stage s(*this);
    const int64_t nq = B * T * nh * hd, nk = B * T * nkv * hd;
    const float *ddo = s.in(dout, nq), *dq_ = s.in(q, nq), *dk_ = s.in(k, nk), *dv_ = s.in(v, nk), *dl = s.in(lse, B * nh * T);
    const int32_t *dseg = s.in(seg_start, B * T), *dpre = s.in(prefix, B);
    const float *dal = s.in(alibi, nh);
    float *D = s.scratch<float>(B * T * nh);
    warps("k_attn_delta", B * T * nh, ddo, s.in(out, nq), D, ll(B * T * nh), ll(hd));
    const bool v1 = attn_v1_mode();
    const unsigned rows = v1 ? 32 : 64, threads = v1 ? 64 : 128;
    const std::string kq = tc_name(v1 ? "k_attn_dq_tc_" : "k_attn_dq_tc4_", t, hd),
                      kkv = tc_name(v1 ? "k_attn_dkdv_tc_" : "k_attn_dkdv_tc4_", t, hd);
    launch_grid(kq.c_str(), unsigned((T + rows - 1) / rows), unsigned(nh), unsigned(B), threads, ddo, dq_, dk_, dv_, dl,
                static_cast<const float *>(D), s.out(dq, nq), ll(T), ll(nh), ll(nkv), scale, dseg, dal, dpre);
    launch_grid(kkv.c_str(), unsigned((T + rows - 1) / rows), unsigned(nkv), unsigned(B), threads, ddo, dq_, dk_, dv_, dl,
                static_cast<const float *>(D), s.out(dk, nk), s.out(dv, nk), ll(T), ll(nh), ll(nkv), scale, dseg, dal, dpre);
    s.done();
  }
  void attention_cached(const float *q, const float *kc, const float *vc, float *out, int64_t p0, int64_t n, int64_t nh,
                        int64_t nkv, int64_t hd, float scale, const float *alibi, int64_t prefix, int64_t window) override {
    check_hd(hd);
    Stage s(*this);
    // cache rows any query can see: the kernel (as the CPU) stops at the chunk's last row p0+n−1 even under a longer
    // prefix, so a staged cache is copied up to there — not up to the prefix, past the cache's filled rows and
    // possibly its end (a host cache of capacity p0+n under a prefix beyond it was read out of bounds)
    const int64_t rows = p0 + n;
    warps("k_attn_cached", n * nh, s.in(q, n * nh * hd), s.in(kc, rows * nkv * hd), s.in(vc, rows * nkv * hd),
          s.out(out, n * nh * hd), ll(p0), ll(n), ll(nh), ll(nkv), ll(hd), scale, s.in(alibi, nh), ll(prefix), ll(window));
    s.done();
  }
  double cross_entropy_forward(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V,
                               int64_t *count) override {
    if (N <= 0) {
      if (count) *count = 0;
      return 0.0;
    }
    Stage s(*this);
    const int32_t *dt = s.in(targets, N);
    double *loss = s.scratch<double>(N);
    launch("k_ce_fwd", unsigned(N), 256, s.in(logits, N * V), dt, s.out(lse, N), loss, ll(N), ll(V));
    s.done();
    std::vector<double> l(static_cast<size_t>(N));
    std::vector<int32_t> t(static_cast<size_t>(N));
    download(l.data(), loss, sizeof(double) * l.size());
    download(t.data(), dt, sizeof(int32_t) * t.size());
    double total = 0.0;
    int64_t c = 0;
    for (int64_t r = 0; r < N; ++r)
      if (t[static_cast<size_t>(r)] >= 0) {
        total += l[static_cast<size_t>(r)];
        ++c;
      }
    if (count) *count = c;
    return total;
  }
  // The loss stays on the device: per-row losses (k_ce_fwd) reduced by one block in a fixed order (k_ce_acc) into the
  // two scalars; no download, no synchronisation (the model downloads them once per run).
  void cross_entropy_forward_acc(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V,
                                 double *loss_acc, int64_t *count_acc, bool accumulate) override {
    Stage s(*this);
    const int32_t *dt = s.in(targets, N);
    double *loss = static_cast<double *>(alloc(sizeof(double) * static_cast<size_t>(std::max<int64_t>(N, 1))));
    if (N > 0) launch("k_ce_fwd", unsigned(N), 256, s.in(logits, N * V), dt, s.out(lse, N), loss, ll(N), ll(V));
    launch("k_ce_acc", 1, 256, static_cast<const double *>(loss), dt, ll(N), s.out(loss_acc, 1, accumulate),
           reinterpret_cast<long long *>(s.out(count_acc, 1, accumulate)), int(accumulate));
    release(loss);  // stream-ordered reuse: safe with one stream
    s.done();
  }
  void cross_entropy_backward(const float *logits, const int32_t *targets, const float *lse, float *dlogits, int64_t N, int64_t V,
                              float scale) override {
    Stage s(*this);
    ew("k_ce_bwd", N * V, s.in(logits, N * V), s.in(targets, N), s.in(lse, N), s.out(dlogits, N * V), ll(N), ll(V), scale);
    s.done();
  }
  void embedding_forward(const float *table, const int32_t *ids, float *out, int64_t N, int64_t H) override {
    Stage s(*this);
    const int64_t V = is_dev(table) ? 0 : rows_needed(ids, N);
    ew("k_embed_fwd", N * H, s.in(table, V * H), s.in(ids, N), s.out(out, N * H), ll(N), ll(H));
    s.done();
  }
  void embedding_forward_half(const uint16_t *table, Half t, const int32_t *ids, float *out, int64_t N, int64_t H) override {
    Stage s(*this);
    const int64_t V = is_dev(table) ? 0 : rows_needed(ids, N);
    ew("k_embed_fwd_half", N * H, s.in(table, V * H), s.in(ids, N), s.out(out, N * H), ll(N), ll(H), int(t));
    s.done();
  }
  void embedding_backward(const float *dout, const int32_t *ids, float *dtable, int64_t N, int64_t H, int64_t V) override {
    Stage s(*this);
    ew("k_embed_bwd", H, s.in(dout, N * H), s.in(ids, N), s.out(dtable, V * H, true), ll(N), ll(H));
    s.done();
  }
  void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t step) override {
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * static_cast<double>(weight_decay));
    const float step_size = static_cast<float>(static_cast<double>(lr) / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    Stage s(*this);
    ew("k_adamw", n, s.out(p, n, true), s.in(g, n), s.out(m, n, true), s.out(v, n, true), ll(n), beta1, beta2, 1.0f - beta1,
       1.0f - beta2, eps, decay, step_size, bc2_sqrt);
    s.done();
  }
  double sum_squares(const float *x, int64_t n) override {
    if (n <= 0) return 0.0;
    Stage s(*this);
    const unsigned nb = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(256, (n + (1 << 14) - 1) >> 14)));
    double *part = s.scratch<double>(nb);
    launch("k_sumsq", nb, 256, s.in(x, n), ll(n), part);
    s.done();
    std::vector<double> h(nb);
    download(h.data(), part, sizeof(double) * nb);
    double t = 0.0;
    for (double v : h) t += v;
    return t;
  }
  void scale_inplace(float *x, float sc, int64_t n) override {
    Stage s(*this);
    ew("k_scale", n, s.out(x, n, true), sc, ll(n));
    s.done();
  }
  void sum_squares_acc(const float *x, int64_t n, double *acc) override {
    if (n <= 0) return;
    Stage s(*this);
    const unsigned nb = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(256, (n + (1 << 14) - 1) >> 14)));
    double *part = s.scratch<double>(nb);
    launch("k_sumsq", nb, 256, s.in(x, n), ll(n), part);
    launch("k_sumsq_acc", 1, 1, static_cast<const double *>(part), int(nb), s.out(acc, 1, true));
    s.done();
  }
  // ---- multi-tensor ops (backend.hpp): one table of the tensors on the device, a few launches per call ----
  void adamw_multi(const std::vector<TensorSlot> &ts, float lr, float beta1, float beta2, float eps, float weight_decay,
                   int64_t step) override {
    ll chunks = 0;
    int T = 0;
    const MtSlot *t = mt_table(ts, true, &chunks, &T);
    if (!t) return Backend::adamw_multi(ts, lr, beta1, beta2, eps, weight_decay, step);
    if (!chunks) return;
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * static_cast<double>(weight_decay));
    const float step_size = static_cast<float>(static_cast<double>(lr) / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    mt_launch("k_mt_adamw", chunks, t, T, beta1, beta2, 1.0f - beta1, 1.0f - beta2, eps, decay, step_size, bc2_sqrt);
  }
  void sum_squares_acc_multi(const std::vector<TensorSlot> &ts, double *acc) override {
    ll chunks = 0;
    int T = 0;
    const MtSlot *t = mt_table(ts, false, &chunks, &T);
    if (!t || !is_dev(acc)) return Backend::sum_squares_acc_multi(ts, acc);
    if (!chunks) return;
    Stage s(*this);
    double *part = s.scratch<double>(chunks);
    mt_launch("k_mt_sumsq", chunks, t, T, part);
    launch("k_mt_sumsq_acc", 1, 1, static_cast<const double *>(part), chunks, acc);
    s.done();
  }
  void scale_multi(const std::vector<TensorSlot> &ts, float sc) override {
    ll chunks = 0;
    int T = 0;
    const MtSlot *t = mt_table(ts, false, &chunks, &T);
    if (!t) return Backend::scale_multi(ts, sc);
    mt_launch("k_mt_scale", chunks, t, T, sc, 0);
  }
  void zero_multi(const std::vector<TensorSlot> &ts) override {
    ll chunks = 0;
    int T = 0;
    const MtSlot *t = mt_table(ts, false, &chunks, &T);
    if (!t) return Backend::zero_multi(ts);
    mt_launch("k_mt_scale", chunks, t, T, 0.0f, 1);
  }

  void fill(float *x, float v, int64_t n) override {
    Stage s(*this);
    ew("k_fill", n, s.out(x, n), v, ll(n));
    s.done();
  }
  void copy(float *dst, const float *src, int64_t n) override {
    if (n <= 0 || dst == src) return;
    Stage s(*this);
    const float *ds = s.in(src, n);
    float *dd = s.out(dst, n);
    Timed t(*this, "memcpy device to device");
    check(d_.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dd), reinterpret_cast<CUdeviceptr>(ds), sizeof(float) * size_t(n), stream_),
          "copy");
    s.done();
  }
  void transpose(const float *in, float *out, int64_t rows, int64_t cols, bool acc) override {
    Stage s(*this);
    const float *di = s.in(in, rows * cols);
    ew("k_transpose", rows * cols, di, s.out(out, rows * cols, acc), ll(rows), ll(cols), int(acc));
    s.done();
  }
  void add(float *out, const float *a, const float *b, const float *c, int64_t n) override {
    Stage s(*this);
    const float *da = s.in(a, n), *db = s.in(b, n), *dc = s.in(c, n);
    ew("k_add", n, s.out(out, n), da, db, dc, ll(n));
    s.done();
  }
  void dora_scale(const float *wn2, const float *WAt, const float *B, const float *G, const float *m, float sc, float *g,
                  float *inv_n, int64_t out, int64_t r) override {
    Stage s(*this);
    const float *dw = s.in(wn2, out), *dwa = s.in(WAt, r * out), *db = s.in(B, out * r), *dg = s.in(G, r * r), *dm = s.in(m, out);
    ew("k_dora_scale", out, dw, dwa, db, dg, dm, sc, s.out(g, out), s.out(inv_n, out), ll(out), ll(r));
    s.done();
  }
  void scale_cols(float *y, const float *x, const float *g, float offset, bool keep, int64_t N, int64_t C) override {
    Stage s(*this);
    float *dy = s.out(y, N * C, keep || x == y);
    const float *dx = x == y ? dy : s.in(x, N * C);
    ew("k_scale_cols", N * C, dy, dx, s.in(g, C), offset, int(keep), ll(N), ll(C));
    s.done();
  }
  void col_dot(const float *dy, const float *z, const float *inv_n, float *dm, int64_t N, int64_t C) override {
    Stage s(*this);
    const float *ddy = s.in(dy, N * C), *dz = s.in(z, N * C), *dn = s.in(inv_n, C);
    ew("k_col_dot", C, ddy, dz, dn, s.out(dm, C, true), ll(N), ll(C));
    s.done();
  }
  void axpby(float *out, float alpha, const float *a, float beta, const float *b, int64_t n) override {
    Stage s(*this);
    const float *da = s.in(a, n), *db = s.in(b, n);
    ew("k_axpby", n, s.out(out, n), alpha, da, beta, db, ll(n));
    s.done();
  }
  void split_cols(float *fused, float *a, float *b, int64_t N, int64_t wa, int64_t wb, bool merge) override {
    Stage s(*this);
    float *df = merge ? s.out(fused, N * (wa + wb)) : const_cast<float *>(s.in(fused, N * (wa + wb)));
    float *da = merge ? const_cast<float *>(s.in(a, N * wa)) : s.out(a, N * wa);
    float *db = merge ? const_cast<float *>(s.in(b, N * wb)) : s.out(b, N * wb);
    ew("k_split_cols", N * (wa + wb), df, da, db, ll(N), ll(wa), ll(wb), int(merge));
    s.done();
  }
  void qkv_split(float *fused, float *q, float *k, float *v, int64_t N, int64_t nh, int64_t nkv, int64_t hd, QkvSplit layout,
                 bool merge) override {
    const int64_t qd = nh * hd, kvd = nkv * hd, W = qd + 2 * kvd;
    Stage s(*this);
    auto io = [&](float *p, int64_t n, bool written) { return written ? s.out(p, n) : const_cast<float *>(s.in(p, n)); };
    float *df = io(fused, N * W, merge), *dq = io(q, N * qd, !merge), *dk = io(k, N * kvd, !merge), *dv = io(v, N * kvd, !merge);
    const int lay = layout == QkvSplit::Blocks ? 0 : layout == QkvSplit::PerHead ? 1 : 2;
    ew("k_qkv_split", N * W, df, dq, dk, dv, ll(N), ll(nh), ll(nkv), ll(hd), lay, int(merge));
    s.done();
  }
  void add_uniform_noise(float *x, int64_t n, float mag, uint64_t stream) override {
    Stage s(*this);
    ew("k_uniform_noise", n, s.out(x, n, true), ll(n), mag, static_cast<unsigned long long>(stream));
    s.done();
  }
  void dropout_forward(const float *x, float *out, int64_t n, float p, uint64_t stream) override {
    Stage s(*this);
    ew("k_dropout_fwd", n, s.in(x, n), s.out(out, n), ll(n), p, static_cast<unsigned long long>(stream));
    s.done();
  }
  void dropout_backward(const float *dy, float *dx, int64_t n, float p, uint64_t stream) override {
    Stage s(*this);
    ew("k_dropout_bwd", n, s.in(dy, n), s.out(dx, n, true), ll(n), p, static_cast<unsigned long long>(stream));
    s.done();
  }

  // ---- 4-bit base weights (QLoRA): the weight stays packed in device memory and is decoded per tile inside the
  // GEMM kernel (kernels.cu q4_gemm); a view over host memory is staged like any other op argument.
  bool supports_q4() const override { return true; }
  void matmul_nt_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    gemm_q4("k_gemm_q4_nt", A, W, C, M, N, K, acc);
  }
  void matmul_nn_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    gemm_q4("k_gemm_q4_nn", A, W, C, M, N, K, acc);
  }
  // Mixed precision (QLoRA with compute in bf16/fp16), two paths with the same values (A and each decoded element
  // rounded, fp32 sums), neither holding a 16-bit copy of a whole weight: the fused tensor-core kernels, which decode
  // the weight tile into 16-bit shared memory and run WMMA with fp32 accumulation (kernels.cu q4_gemm_tc; 128×64 tiles
  // of C), or slices decoded into an L2-sized scratch, then cublasGemmEx (q4_dequant_gemm). q4_dequant_mode() picks.
  void matmul_nt_q4_lp(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    if (q4_dequant_mode()) return q4_dequant_gemm(A, W, t, C, M, N, K, acc, 0);
    gemm_q4(t == Half::F16 ? "k_gemm_q4_nt_tc_f16" : "k_gemm_q4_nt_tc_bf16", A, W, C, M, N, K, acc, 128, 256);
  }
  void matmul_nn_q4_lp(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    if (q4_dequant_mode()) return q4_dequant_gemm(A, W, t, C, M, N, K, acc, 1);
    gemm_q4(t == Half::F16 ? "k_gemm_q4_nn_tc_f16" : "k_gemm_q4_nn_tc_bf16", A, W, C, M, N, K, acc, 128, 256);
  }

 private:
  using ll = long long;

  // Profiling (profile_start): `Timed t(*this, name, flops)` brackets what follows up to its end of scope with two
  // events on the stream; nothing when profiling is off. Events are reused between profiles.
  struct Mark {
    CUevent a, b;
    std::string name;
    double flops;
  };
  CUevent event() {
    if (!free_events_.empty()) {
      CUevent e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    CUevent e = nullptr;
    check(d_.cuEventCreate(&e, 0), "profile: cuEventCreate");
    return e;
  }
  void recycle_marks() {
    for (Mark &m : marks_) {
      free_events_.push_back(m.a);
      free_events_.push_back(m.b);
    }
    marks_.clear();
  }
  class Timed {
   public:
    Timed(CudaBackend &be, std::string name, double flops = 0) : be_(be) {
      if (!be_.prof_) return;
      m_.name = std::move(name);
      m_.flops = flops;
      m_.a = be_.event();
      m_.b = be_.event();
      be_.check(be_.d_.cuEventRecord(m_.a, be_.stream_), "profile: cuEventRecord");
      on_ = true;
    }
    ~Timed() {
      if (!on_) return;
      if (be_.d_.cuEventRecord(m_.b, be_.stream_) == 0) be_.marks_.push_back(std::move(m_));
      else {
        be_.free_events_.push_back(m_.a);
        be_.free_events_.push_back(m_.b);
      }
    }
    Timed(const Timed &) = delete;
    Timed &operator=(const Timed &) = delete;

   private:
    CudaBackend &be_;
    Mark m_{};
    bool on_ = false;
  };
  // The device table of a multi-tensor call (mt.hpp), or null when a tensor is not device memory (the caller then
  // loops over the single-tensor ops, which stage). Tables are cached by content: the trainable parameters do not move
  // between steps, so a training run uploads each table once.
  const MtSlot *mt_table(const std::vector<TensorSlot> &ts, bool adam, ll *chunks, int *count) {
    std::vector<MtSlot> h;
    h.reserve(ts.size());
    ll c = 0;
    for (const TensorSlot &t : ts) {
      if (t.n <= 0) continue;
      if (!is_dev(t.g) || (adam && (!is_dev(t.w) || !is_dev(t.m) || !is_dev(t.v)))) return nullptr;
      MtSlot e{};
      e.w = adam ? t.w : nullptr;
      e.g = t.g;
      e.m = adam ? t.m : nullptr;
      e.v = adam ? t.v : nullptr;
      e.n = t.n;
      e.chunk0 = c;
      e.decay = adam && t.decay ? 1 : 0;
      h.push_back(e);
      c += (t.n + kMtChunk - 1) / kMtChunk;
    }
    *chunks = c;
    *count = static_cast<int>(h.size());
    static const MtSlot none{};
    if (h.empty()) return &none;  // nothing to do: chunks is 0, so no kernel ever sees it
    const size_t bytes = sizeof(MtSlot) * h.size();
    for (MtTable &e : mt_cache_)
      if (e.host.size() == h.size() && std::memcmp(e.host.data(), h.data(), bytes) == 0) return e.dev;
    if (mt_cache_.size() >= 8) {  // stream-ordered release: a kernel still reading it finishes first
      release(const_cast<MtSlot *>(mt_cache_.front().dev));
      mt_cache_.erase(mt_cache_.begin());
    }
    MtSlot *d = static_cast<MtSlot *>(alloc(bytes));
    upload(d, h.data(), bytes);
    mt_cache_.push_back({std::move(h), d});
    return d;
  }
  template <typename... A>
  void mt_launch(const char *k, ll chunks, A... args) {
    if (chunks <= 0) return;
    // block (x, y) is chunk x + y·gx (MT_CHUNK_RANGE); blocks past the last chunk return at once
    ll max_x = 65535;
    if (const char *e = std::getenv("LLMT_CUDA_MT_GRIDX")) max_x = std::max<ll>(1, std::atoll(e));  // tests: 2-D grids
    const unsigned gx = static_cast<unsigned>(std::min<ll>(chunks, max_x)), gy = static_cast<unsigned>((chunks + gx - 1) / gx);
    launch_grid(k, gx, gy, 1, 256, args...);
  }
  static std::string shape(int64_t M, int64_t N, int64_t K) {
    return std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
  }
  static const char *kind_name(int kind) { return kind == 0 ? "nt" : kind == 1 ? "nn" : "tn"; }

  // Per-op staging of host pointers (see the file comment). in(): device pointer to read; out(): device pointer to
  // write (inout: its current contents are uploaded first); done(): copies outputs back and completes the op when
  // anything was staged. Nulls stay null. Scratch is released in stream order (safe with one stream).
  class Stage {
   public:
    explicit Stage(CudaBackend &be) : be_(be) { be_.cur(); }
    ~Stage() {
      for (void *p : tmp_) be_.release(p);
    }
    template <typename T>
    const T *in(const T *p, int64_t n) {
      if (!p || be_.is_dev(p)) return p;
      ++be_.xfer_.staged;
      ++be_.xfer_.uploads;
      be_.xfer_.bytes_up += static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(n, 0);
      T *d = static_cast<T *>(take(sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1))));
      if (n > 0) be_.check(be_.d_.cuMemcpyHtoDAsync(ptr(d), p, sizeof(T) * static_cast<size_t>(n), be_.stream_), "staging upload");
      return d;
    }
    template <typename T>
    T *out(T *p, int64_t n, bool inout = false) {
      if (!p || be_.is_dev(p)) return p;
      if (!inout) ++be_.xfer_.staged;
      ++be_.xfer_.downloads;
      be_.xfer_.bytes_down += static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(n, 0);
      T *d = inout ? const_cast<T *>(in(static_cast<const T *>(p), n))
                   : static_cast<T *>(take(sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1))));
      outs_.push_back({p, d, sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 0))});
      return d;
    }
    // Device-only temporaries: released in stream order like the rest, but no host copy is involved, so unlike
    // staged arguments they do not make done() synchronise (sum_squares_acc, called per tensor, stays asynchronous).
    template <typename T>
    T *scratch(int64_t n) {
      void *d = be_.alloc(sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1)));
      tmp_.push_back(d);
      return static_cast<T *>(d);
    }
    void done() {
      for (auto &o : outs_)
        if (o.bytes) be_.check(be_.d_.cuMemcpyDtoHAsync(o.host, ptr(o.dev), o.bytes, be_.stream_), "staging download");
      if (staged_) be_.synchronize();
    }

   private:
    struct Out {
      void *host;
      void *dev;
      size_t bytes;
    };
    static CUdeviceptr ptr(const void *p) { return reinterpret_cast<CUdeviceptr>(p); }
    void *take(size_t bytes) {
      void *d = be_.alloc(bytes);
      tmp_.push_back(d);
      staged_ = true;
      return d;
    }
    CudaBackend &be_;
    std::vector<void *> tmp_;
    std::vector<Out> outs_;
    bool staged_ = false;
  };

  static bool fail(std::string *why, const std::string &m) {
    if (why) *why = m;
    return false;
  }
  static std::string mib(size_t b) { return std::to_string(b >> 20) + " MiB"; }
  size_t in_use() const {
    size_t t = 0;
    for (auto &l : live_) t += l.second;
    for (auto &c : cache_) t += c.first;
    return t;
  }
  void cur() {
    CUresult r = d_.cuCtxSetCurrent(ctx_);
    if (r != 0) throw CudaError("CUDA: cuCtxSetCurrent failed: " + d_.error(r));
  }
  bool is_dev(const void *p) {
    if (!p) return false;
    const CUdeviceptr a = reinterpret_cast<CUdeviceptr>(p);
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.upper_bound(a);
    if (it == live_.begin()) return false;
    --it;
    return a < it->first + it->second;
  }
  void check(CUresult r, const std::string &what) {
    if (r == 0) return;
    if (r == kErrOutOfMemory) throw CudaOom("CUDA out of memory in " + what + " on " + name_);
    throw CudaError("CUDA error in " + what + " on " + name_ + ": " + d_.error(r));
  }
  void check_hd(int64_t hd) {
    if (hd > 256) throw CudaError("CUDA attention supports head_dim ≤ 256 (got " + std::to_string(hd) + ")");
  }
  int64_t rows_needed(const int32_t *ids, int64_t N) {
    std::vector<int32_t> h(static_cast<size_t>(N));
    if (N > 0) download(h.data(), ids, sizeof(int32_t) * h.size());
    int64_t mx = -1;
    for (int32_t v : h) mx = std::max<int64_t>(mx, v);
    return mx + 1;
  }

  template <class S>
  const float *rounded(S &s, const float *x, int64_t n, Half t) {
    float *y = s.template scratch<float>(n);
    ew("k_round_half", n, s.in(x, n), y, ll(n), int(t == Half::F16 ? 2 : 1));
    return y;
  }
  static bool tc_attention(int64_t hd, int64_t T, int64_t B, int64_t nh, int64_t nkv) {
    if (std::getenv("LLMT_CUDA_NO_TC_ATTENTION")) return false;  // A/B measurements and bisecting
    return (hd == 64 || hd == 128) && nkv > 0 && nh % nkv == 0 && B <= 65535 && nh <= 65535 && (T + 31) / 32 < (1LL << 31);
  }
  static std::string tc_name(const char *prefix, Half t, int64_t hd) {
    return std::string(prefix) + (t == Half::F16 ? "f16_" : "bf16_") + std::to_string(hd);
  }
  template <typename... A>
  void launch_grid(const char *k, unsigned gx, unsigned gy, unsigned gz, unsigned block, A... args) {
    if (gx == 0 || gy == 0 || gz == 0) return;
    void *params[] = {static_cast<void *>(&args)...};
    last_kernel_ = k;
    Timed t(*this, k);
    check(d_.cuLaunchKernel(fn(k), gx, gy, gz, block, 1, 1, 0, stream_, params, nullptr), std::string("kernel ") + k);
    if (sync_each_) check(d_.cuStreamSynchronize(stream_), std::string("kernel ") + k);
  }
  CUfunction fn(const char *k) {
    auto it = fn_.find(k);
    if (it != fn_.end()) return it->second;
    CUfunction f = nullptr;
    CUresult r = d_.cuModuleGetFunction(&f, mod_, k);
    if (r != 0) throw CudaError(std::string("CUDA kernel ") + k + " is not in this engine's fatbin: " + d_.error(r));
    return fn_[k] = f;
  }
  template <typename... A>
  void launch(const char *k, unsigned grid, unsigned block, A... args) {
    launch_grid(k, grid, 1, 1, block, args...);
  }
  // element-wise / grid-stride kernels over n items
  template <typename... A>
  void ew(const char *k, int64_t n, A... args) {
    if (n <= 0) return;
    launch(k, static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535LL * 16)), 256, args...);
  }
  // one block per row
  template <typename... A>
  void rowk(const char *k, int64_t rows, A... args) {
    if (rows <= 0) return;
    launch(k, static_cast<unsigned>(rows), 256, args...);
  }
  // one warp per item, 4 warps per block
  template <typename... A>
  void warps(const char *k, int64_t items, A... args) {
    if (items <= 0) return;
    launch(k, static_cast<unsigned>((items + 3) / 4), 128, args...);
  }
  void rope(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim, int64_t rot,
            float ps, float sign, bool il) {
    const int64_t half = rot / 2;
    if (half <= 0 || rows <= 0 || heads <= 0) return;
    Stage s(*this);
    // the elements the kernel touches: x may point into a row (ChatGLM's 2-D rotary rotates the second half of each
    // head through x + head_dim/2), so a staged copy must end at the last head's last rotated element, not a whole
    // head_dim further (that read, and wrote back, past the end of the caller's buffer)
    const int64_t extent = (rows * heads - 1) * head_dim + 2 * half;
    ew("k_rope", rows * heads * half, s.out(x, extent, true), s.in(pos, rows), s.in(inv_freq, half), ll(rows),
       ll(heads), ll(head_dim), ll(half), ps, sign, int(il));
    s.done();
  }
  // C[M,N] (+)= op(A)·op(B); kind 0 nt, 1 nn, 2 tn (cpu/ops.hpp). cuBLAS is column-major: compute Cᵀ = op(B)ᵀ·op(A)ᵀ.
  // alpha: cuBLAS only (the *_scaled ops route around this without cuBLAS)
  void gemm(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc, int kind, float alpha = 1.0f) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      if (!acc) check(d_.cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(C), 0, sizeof(float) * M * N, stream_), "gemm zero");
      return;
    }
    const double flops = 2.0 * double(M) * double(N) * double(K);
    if (blas_ && M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31)) {
      const float one = alpha, beta = acc ? 1.0f : 0.0f;
      const int m = int(M), n = int(N), k = int(K);
      cublasStatus_t st;
      last_kernel_ = "cublasSgemm";
      Timed t(*this, std::string("cublasSgemm ") + kind_name(kind) + " " + shape(M, N, K), flops);
      if (kind == 0) st = cublas().sgemm(blas_, kCublasOpT, kCublasOpN, n, m, k, &one, B, k, A, k, &beta, C, n);
      else if (kind == 1) st = cublas().sgemm(blas_, kCublasOpN, kCublasOpN, n, m, k, &one, B, n, A, k, &beta, C, n);
      else st = cublas().sgemm(blas_, kCublasOpN, kCublasOpT, n, m, k, &one, B, n, A, m, &beta, C, n);
      if (st != 0)
        throw CudaError("cuBLAS sgemm failed on " + name_ + ": " +
                        (cublas().status_string ? cublas().status_string(st) : ("status " + std::to_string(st))));
      return;
    }
    ll sam, sak, sbk, sbn;
    if (kind == 0) sam = K, sak = 1, sbk = 1, sbn = K;
    else if (kind == 1) sam = K, sak = 1, sbk = N, sbn = 1;
    else sam = 1, sak = M, sbk = N, sbn = 1;
    int acci = acc ? 1 : 0;
    last_kernel_ = "k_gemm";
    Timed t(*this, std::string("k_gemm ") + kind_name(kind) + " " + shape(M, N, K), flops);
    own_gemm_rows("k_gemm", M, N, [&](int64_t m0, ll m, unsigned gx, unsigned gy) {
      const float *a = A + m0 * sam;
      float *c = C + m0 * N;
      ll n = N, k = K;
      void *params[] = {&a, &B, &c, &m, &n, &k, &sam, &sak, &sbk, &sbn, &acci};
      check(d_.cuLaunchKernel(fn("k_gemm"), gx, gy, 1, 16, 16, 1, 0, stream_, params, nullptr), "kernel k_gemm");
    });
  }
  // The fatbin's 16×16-tile GEMMs (k_gemm, k_gemm_half) over C's rows in launches of at most 65 535 row tiles (the
  // grid's y limit: one launch would fail from M = 1 048 561 rows on, e.g. 8 sequences of 128 K tokens):
  // launch(m0, rows, grid x, grid y) per block of rows.
  template <class F>
  void own_gemm_rows(const char *k, int64_t M, int64_t N, F launch) {
    const int64_t per = max_grid_y() * 16;
    for (int64_t m0 = 0; m0 < M; m0 += per) {
      const ll m = std::min<int64_t>(per, M - m0);
      launch(m0, m, unsigned((N + 15) / 16), unsigned((m + 15) / 16));
      if (sync_each_) check(d_.cuStreamSynchronize(stream_), std::string("kernel ") + k);
    }
  }

  // C[M,N] (+)= half(A)·op(W), W 16-bit; kind 0: W [N,K] (nt), 1: W [K,N] (nn). With cuBLAS: A is rounded into a
  // 16-bit scratch and cublasGemmEx runs on the tensor cores (fp32 compute and output); else k_gemm_half.
  void gemm_half(const float *A, const uint16_t *W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc, int kind) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      if (!acc) check(d_.cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(C), 0, sizeof(float) * M * N, stream_), "gemm zero");
      return;
    }
    const int type = t == Half::F16 ? 2 : 1;
    if (blas_ && cublas().gemm_ex && M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31)) {
      uint16_t *Ah = static_cast<uint16_t *>(alloc(sizeof(uint16_t) * size_t(M * K)));
      ew("k_to_half", M * K, A, Ah, ll(M * K), type);
      try {
        gemm_half_rounded(Ah, W, t, C, M, N, K, acc, kind);
      } catch (...) {
        release(Ah);
        throw;
      }
      release(Ah);  // stream-ordered reuse: safe with one stream
      return;
    }
    ll sam = K, sak = 1, sbk, sbn;
    if (kind == 0) sbk = 1, sbn = K;
    else sbk = N, sbn = 1;
    int acci = acc ? 1 : 0, typ = type;
    last_kernel_ = "k_gemm_half";
    Timed tm(*this, std::string("k_gemm_half ") + kind_name(kind) + " " + shape(M, N, K), 2.0 * double(M) * double(N) * double(K));
    own_gemm_rows("k_gemm_half", M, N, [&](int64_t m0, ll m, unsigned gx, unsigned gy) {
      const float *a = A + m0 * sam;
      float *c = C + m0 * N;
      ll n = N, k = K;
      void *params[] = {&a, &W, &c, &m, &n, &k, &sam, &sak, &sbk, &sbn, &acci, &typ};
      check(d_.cuLaunchKernel(fn("k_gemm_half"), gx, gy, 1, 16, 16, 1, 0, stream_, params, nullptr), "kernel k_gemm_half");
    });
  }

  static bool attn_v1_mode() {
    const char *e = std::getenv("LLMT_ATTN_TC");
    return e && std::strcmp(e, "v1") == 0;
  }
  // The mixed-precision 4-bit GEMMs: LLMT_Q4_GEMM=fused (our tensor-core kernels, decoding per tile) or dequant
  // (L2-sized slices decoded, then cuBLAS), read per call; by default dequant on Hopper and newer (compute capability
  // ≥ 9: cuBLAS's wgmma GEMMs run at about twice what WMMA can reach there), fused on Ampere and Ada.
  bool q4_dequant_mode() const {
    if (!(blas_ && cublas().gemm_ex)) return false;
    const char *e = std::getenv("LLMT_Q4_GEMM");
    if (e && std::strcmp(e, "dequant") == 0) return true;
    if (e && std::strcmp(e, "fused") == 0) return false;
    return cc_major_ >= 9;
  }
  // C (+)= half(A)·op(dequant(W)) by slices of W, each decoded into one 16-bit scratch of at most LLMT_Q4_SLICE_MB
  // (default 16 MiB: it stays in the GPU's L2 cache between the decode and the GEMM that reads it, so the decode costs
  // L2 bandwidth, not memory bandwidth, and no 16-bit copy of a whole weight ever exists), then cublasGemmEx on it. A
  // slice is always a block of output columns of C — nt (kind 0, W [N,K]): rows n0… of W; nn (kind 1, W [K,N]):
  // columns n0… of W — so each element of C is written once, by one GEMM. A is rounded to 16 bits once per call.
  void q4_dequant_gemm(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc, int kind) {
    q4_check(W, N, K);
    if (M <= 0 || N <= 0) return;
    Stage s(*this);
    if (K <= 0) {  // an empty sum
      float *dC = s.out(C, M * N, acc);
      if (!acc) check(d_.cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(dC), 0, sizeof(float) * M * N, stream_), "gemm zero");
      s.done();
      return;
    }
    const uint16_t *Ah = rounded_half(s, A, M * K, t);
    q4_dequant_slices(s, Ah, W, t, s.out(C, M * N, acc), M, N, K, acc, kind);
    s.done();
  }
  // The shared-input form (matmul_nt_q4_lp_shared): A rounded once, then each weight's slices.
  void matmul_nt_q4_lp_shared(const float *A, const std::vector<Q4Out> &outs, Half t, int64_t M, int64_t K) override {
    if (!q4_dequant_mode() || outs.size() < 2 || M <= 0 || K <= 0) return Backend::matmul_nt_q4_lp_shared(A, outs, t, M, K);
    Stage s(*this);
    const uint16_t *Ah = rounded_half(s, A, M * K, t);
    for (const Q4Out &o : outs) {
      q4_check(*o.W, o.N, K);
      q4_dequant_slices(s, Ah, *o.W, t, s.out(o.C, M * o.N), M, o.N, K, false, 0);
    }
    s.done();
  }
  // The whole weight decoded once into 16 bits (out: device memory from alloc), the same kernel as a slice
  void q4_dequantize_half(const cpu::Q4View &W, Half t, uint16_t *out, int64_t N, int64_t K) override {
    q4_check(W, N, K);
    if (N <= 0 || K <= 0) return;
    Stage s(*this);
    const Q4In q = q4_inputs(s, W);
    ew("k_q4_dequant_half", (N * K + 7) / 8, q.pk, q.am, q.qa, q.a2, q.c2, W.offset, W.type == cpu::Q4Type::FP4 ? 2 : 1,
       reinterpret_cast<unsigned short *>(s.out(out, N * K)), ll(N), ll(K), ll(K), ll(0), ll(0), t == Half::F16 ? 2 : 1);
    s.done();
  }
  // A 4-bit weight's arrays in device memory for k_q4_dequant_half: codes, then fp32 absmax or (double quantization)
  // the 8-bit scales with their fp32 block scales and code book
  struct Q4In {
    const unsigned char *pk, *qa;
    const float *am, *a2, *c2;
  };
  template <class S>
  static Q4In q4_inputs(S &s, const cpu::Q4View &W) {
    const int64_t nb = (W.n + cpu::kQ4Block - 1) / cpu::kQ4Block;
    Q4In q{};
    q.pk = s.in(W.packed, (W.n + 1) / 2);
    if (W.qabsmax) {
      q.qa = s.in(W.qabsmax, nb);
      q.a2 = s.in(W.absmax2, (nb + cpu::kQ4Block2 - 1) / cpu::kQ4Block2);
      q.c2 = s.in(W.code2, 256);
    } else {
      q.am = s.in(W.absmax, nb);
    }
    return q;
  }
  static void q4_check(const cpu::Q4View &W, int64_t N, int64_t K) {
    if (W.n != N * K)
      throw CudaError("k_q4_dequant_half: the 4-bit weight has " + std::to_string(W.n) + " elements, not " + std::to_string(N) +
                      "×" + std::to_string(K));
    if (!W.qabsmax && !W.absmax) throw CudaError("k_q4_dequant_half: the 4-bit weight has no scales");
  }
  // n floats of A rounded to 16 bits in a scratch of the op
  template <class S>
  uint16_t *rounded_half(S &s, const float *A, int64_t n, Half t) {
    uint16_t *Ah = s.template scratch<uint16_t>(n);
    ew("k_to_half", n, s.in(A, n), Ah, ll(n), int(t == Half::F16 ? 2 : 1));
    return Ah;
  }
  // dC[M,N] (+)= Ah·op(dequant(W)) slice by slice (q4_dequant_gemm's comment); dC in device memory.
  template <class S>
  void q4_dequant_slices(S &s, const uint16_t *Ah, const cpu::Q4View &W, Half t, float *dC, int64_t M, int64_t N, int64_t K,
                         bool acc, int kind) {
    const Q4In q = q4_inputs(s, W);
    const int type = t == Half::F16 ? 2 : 1, q4type = W.type == cpu::Q4Type::FP4 ? 2 : 1;
    // output columns per slice: K 16-bit elements each; a multiple of 8 where N is more (the 8-at-a-time decode)
    int64_t per = std::max<int64_t>(1, q4_slice_bytes() / (2 * K));
    if (per >= 8) per -= per % 8;
    per = std::min(per, N);
    // (given back at the end, in stream order: the next weight of a shared call reuses the same block)
    struct Scratch {
      CudaBackend &be;
      uint16_t *p;
      ~Scratch() { be.release(p); }
    } sc{*this, static_cast<uint16_t *>(alloc(sizeof(uint16_t) * size_t(per * K)))};
    uint16_t *wh = sc.p;
    for (int64_t n0 = 0; n0 < N; n0 += per) {
      const int64_t w = std::min(per, N - n0);
      if (kind == 0) {  // rows n0… of W [N,K]; C[:, n0:n0+w] (+)= Ah · whᵀ
        ew("k_q4_dequant_half", (w * K + 7) / 8, q.pk, q.am, q.qa, q.a2, q.c2, W.offset, q4type, static_cast<unsigned short *>(wh), ll(w),
           ll(K), ll(K), ll(n0), ll(0), type);
        gemm_lp(wh, K, Ah, K, dC + n0, N, t, M, w, K, acc, 0);
      } else {  // columns n0… of W [K,N]; C[:, n0:n0+w] (+)= Ah · wh
        ew("k_q4_dequant_half", (K * w + 7) / 8, q.pk, q.am, q.qa, q.a2, q.c2, W.offset, q4type, static_cast<unsigned short *>(wh), ll(K),
           ll(w), ll(N), ll(0), ll(n0), type);
        gemm_lp(wh, w, Ah, K, dC + n0, N, t, M, w, K, acc, 1);
      }
    }
  }
  // LLMT_Q4_SLICE_MB: a positive number of MiB (≥ 4 KB used); anything else is reported once and the default used
  static int64_t q4_slice_bytes() {
    const char *e = std::getenv("LLMT_Q4_SLICE_MB");
    double mb = 16.0;
    if (e && *e) {
      char *end = nullptr;
      const double v = std::strtod(e, &end);
      if (end && *end == '\0' && v > 0 && v < 1e6) {
        mb = v;
      } else {
        static bool told = false;
        if (!told) std::fprintf(stderr, "llmt: LLMT_Q4_SLICE_MB=%s is not a positive number of MiB; using 16\n", e);
        told = true;
      }
    }
    return std::max<int64_t>(4096, int64_t(mb * 1048576.0));
  }
  // cublasGemmEx, row-major: C[M,N] (+)= Ah[M,K]·op(W) with leading dimensions (elements): Ah lda, W ldw (kind 0: W
  // [N,K], op = ᵀ; 1: W [K,N]), C ldc. Needs cuBLAS.
  void gemm_lp(const uint16_t *W, int64_t ldw, const uint16_t *Ah, int64_t lda, float *C, int64_t ldc, Half t, int64_t M,
               int64_t N, int64_t K, bool acc, int kind) {
    if (M <= 0 || N <= 0) return;
    const int type = t == Half::F16 ? 2 : 1;
    const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
    const int m = int(M), n = int(N), k = int(K), dt = type == 2 ? kCudaR16F : kCudaR16BF;
    last_kernel_ = "cublasGemmEx";
    Timed tm(*this, std::string("cublasGemmEx ") + (type == 2 ? "fp16 " : "bf16 ") + kind_name(kind) + " " + shape(M, N, K),
             2.0 * double(M) * double(N) * double(K));
    const cublasStatus_t st =
        kind == 0 ? cublas().gemm_ex(blas_, kCublasOpT, kCublasOpN, n, m, k, &one, W, dt, int(ldw), Ah, dt, int(lda), &beta, C,
                                     kCudaR32F, int(ldc), kCublasCompute32F, kCublasGemmDefault)
                  : cublas().gemm_ex(blas_, kCublasOpN, kCublasOpN, n, m, k, &one, W, dt, int(ldw), Ah, dt, int(lda), &beta, C,
                                     kCudaR32F, int(ldc), kCublasCompute32F, kCublasGemmDefault);
    if (st != 0)
      throw CudaError("cuBLAS GemmEx failed on " + name_ + ": " +
                      (cublas().status_string ? cublas().status_string(st) : ("status " + std::to_string(st))));
  }

  // cublasGemmEx on an A already rounded to 16 bits (Ah, [M,K]); W, kind and acc as gemm_half. Needs cuBLAS.
  void gemm_half_rounded(const uint16_t *Ah, const uint16_t *W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc, int kind) {
    gemm_lp(W, kind == 0 ? K : N, Ah, K, C, N, t, M, N, K, acc, kind);
  }

  // C[M,N] (+)= A[M,K]·op(W), W 4-bit with N·K elements (op: k_gemm_q4_nt* Wᵀ, k_gemm_q4_nn* W); tiles of tile_m × 64
  // of C (k_gemm_q4_nt/nn: 64 rows, 256 threads; the tensor-core k_gemm_q4_*_tc_*: 128 rows, 256 threads).
  void gemm_q4(const char *k, const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc,
               int64_t tile_m = 64, unsigned threads = 256) {
    if (M <= 0 || N <= 0) return;
    if (W.n != N * K)
      throw CudaError(std::string(k) + ": the 4-bit weight has " + std::to_string(W.n) + " elements, not " +
                      std::to_string(N) + "×" + std::to_string(K));
    Stage s(*this);
    const int64_t nb = (W.n + cpu::kQ4Block - 1) / cpu::kQ4Block;
    const float *dA = s.in(A, M * K);
    const unsigned char *pk = s.in(W.packed, (W.n + 1) / 2);
    const float *am = W.qabsmax ? nullptr : s.in(W.absmax, nb);
    const unsigned char *qa = W.qabsmax ? s.in(W.qabsmax, nb) : nullptr;
    const float *a2 = W.qabsmax ? s.in(W.absmax2, (nb + cpu::kQ4Block2 - 1) / cpu::kQ4Block2) : nullptr;
    const float *c2 = W.qabsmax ? s.in(W.code2, 256) : nullptr;
    if (!W.qabsmax && !am) throw CudaError(std::string(k) + ": the 4-bit weight has no scales");
    float *dC = s.out(C, M * N, acc);
    float off = W.offset;
    int type = W.type == cpu::Q4Type::FP4 ? 2 : 1, acci = acc ? 1 : 0;
    ll n = N, kk = K;
    const unsigned gx = unsigned((N + 63) / 64);
    const int64_t rows_per_launch = max_grid_y() * tile_m;  // grid.y limit
    for (int64_t m0 = 0; m0 < M; m0 += rows_per_launch) {
      const float *a = dA + m0 * K;
      float *c = dC + m0 * N;
      ll m = std::min<int64_t>(rows_per_launch, M - m0);
      void *params[] = {&a, &pk, &am, &qa, &a2, &c2, &off, &type, &c, &m, &n, &kk, &acci};
      last_kernel_ = k;
      Timed tm(*this, std::string(k) + " " + shape(m, N, K), 2.0 * double(m) * double(N) * double(K));
      check(d_.cuLaunchKernel(fn(k), gx, unsigned((m + tile_m - 1) / tile_m), 1, threads, 1, 1, 0, stream_, params, nullptr),
            std::string("kernel ") + k);
      if (sync_each_) check(d_.cuStreamSynchronize(stream_), std::string("kernel ") + k);
    }
    s.done();
  }

  // a launch's grid y (and z) limit; LLMT_CUDA_GRIDY_MAX, read per call, lowers it (tests: the row-block loops without
  // giant tensors)
  static int64_t max_grid_y() {
    const char *e = std::getenv("LLMT_CUDA_GRIDY_MAX");
    const long long v = e ? std::atoll(e) : 0;
    return v > 0 && v < 65535 ? int64_t(v) : int64_t(65535);
  }
  const Driver &d_;
  int index_;
  int cc_major_ = 8;  // compute capability (major)
  std::string name_ = "cuda";
  CUdevice dev_ = 0;
  CUcontext ctx_ = nullptr;
  CUmodule mod_ = nullptr;
  CUstream stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::string blas_note_;
  std::map<std::string, CUfunction> fn_;
  mutable std::mutex mu_;
  std::map<CUdeviceptr, size_t> live_;       // base → size of blocks handed out
  std::set<void *> pinned_;                  // alloc_host blocks that are page-locked
  struct MtTable {
    std::vector<MtSlot> host;
    const MtSlot *dev;
  };
  std::vector<MtTable> mt_cache_;  // multi-tensor tables by content (mt_table)
  std::multimap<size_t, CUdeviceptr> cache_;  // size → free cached blocks
  MemoryStats mem_;                            // under mu_
  void note_alloc(int64_t handed_out, int64_t new_from_driver) {  // under mu_
    mem_.allocated += handed_out;
    mem_.reserved += new_from_driver;
    mem_.peak_allocated = std::max(mem_.peak_allocated, mem_.allocated);
    mem_.peak_reserved = std::max(mem_.peak_reserved, mem_.reserved);
  }
  bool sync_each_ = false;
  std::string last_kernel_;
  bool prof_ = false;
  std::vector<Mark> marks_;
  std::vector<CUevent> free_events_;
};

}  // namespace

Backend *cuda_backend(int index, std::string *why) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<CudaBackend>> made;
  static std::map<int, std::string> failed;
  std::lock_guard<std::mutex> lk(mu);
  if (made.count(index)) return made[index].get();
  if (failed.count(index)) {
    if (why) *why = failed[index];
    return nullptr;
  }
  const Driver &d = driver();
  std::string reason;
  if (!d.ok) {
    reason = "no device (" + d.why + ")";
  } else if (index < 0 || index >= d.devices) {
    reason = "no CUDA device " + std::to_string(index) + " (this machine has " + std::to_string(d.devices) + ")";
  } else {
    auto be = std::make_unique<CudaBackend>(index);
    if (be->init(&reason)) {
      static bool said = false;
      if (!be->has_cublas() && !said) {
        said = true;
        std::fprintf(stderr, "llmt: cuBLAS not loadable (%s): the CUDA backend uses its own GEMM kernel (slower)\n",
                     be->cublas_note().c_str());
      }
      made[index] = std::move(be);
      return made[index].get();
    }
  }
  failed[index] = reason;
  if (why) *why = reason;
  return nullptr;
}

}  // namespace llmt
