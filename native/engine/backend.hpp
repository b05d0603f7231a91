// backend.hpp — the seam between the model code (model.cpp, train.cpp, generate.cpp) and a device.
// The model never touches activation memory itself: every op, including element-wise residual adds,
// head splitting and dropout, is a Backend call on pointers the backend owns, so the CUDA backend (its own
// issue) plugs in by implementing this class with device pointers, a stream and bf16/fp16 compute.
//
// Contracts
//  - Every op has the signature and semantics documented in cpu/ops.hpp (shapes, accumulate vs overwrite);
//    the CPU backend is the reference implementation and the oracle for the others.
//  - Pointers passed to ops are the backend's memory (host memory for the CPU backend, device memory for
//    CUDA). Ops are enqueued in order on the backend's stream; results are visible to the host only after
//    download() or synchronize().
//  - alloc() throws std::bad_alloc when memory is exhausted; the C API turns that into LLMT_ERR_OOM.
//  - compute_type() is the precision of matmul inputs (parameters and activations kept in it); master
//    weights of trainable parameters and optimizer state stay fp32 in every backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "../cpu/ops.hpp"
#include "../cpu/half.hpp"
#include "../cpu/q4.hpp"

namespace llmt {

enum class DeviceKind { CPU, CUDA };
enum class ComputeType { F32, BF16, F16 };
enum class QkvSplit { Blocks, PerHead, Grouped };  // fused projection layouts, see family.hpp QkvLayout

/** Host↔device copies a backend has made (upload/download calls, plus the per-op staging of host pointers a CUDA
 *  backend still does for memory that is not its own). Tests bound these per training step. */
// Device memory of a backend's allocator, in bytes: `allocated` is what callers hold now, `reserved` what the
// allocator holds from the device (allocated + its cache of freed blocks) — the counterparts of PyTorch's
// memory_allocated / memory_reserved; peaks since the backend was made. Zero on backends that use host memory.
struct MemoryStats {
  int64_t allocated = 0, peak_allocated = 0, reserved = 0, peak_reserved = 0;
};

// One line of a device profile (Backend::profile_stop): what ran under `name` (a kernel, or a library call with its
// shape, e.g. "cublasGemmEx bf16 nt 512x4096x4096"), how often, for how long in total on the device, and the
// floating-point operations it did when the name implies them (GEMMs: 2·M·N·K per call; 0 otherwise).
struct ProfileRow {
  std::string name;
  int64_t calls = 0;
  double ms = 0;
  double flops = 0;
};

// One tensor of a multi-tensor op (Backend::*_multi): a trainable parameter's weights, gradient and AdamW moments in
// backend memory, n elements; decay: AdamW's weight decay applies to it. Ops that need fewer pointers ignore the rest.
struct TensorSlot {
  float *w = nullptr, *g = nullptr, *m = nullptr, *v = nullptr;
  int64_t n = 0;
  bool decay = false;
};

struct TransferStats {
  int64_t uploads = 0, downloads = 0;      // calls
  int64_t bytes_up = 0, bytes_down = 0;
  int64_t staged = 0;                      // op arguments that were host memory (each one copy at least)
  int64_t syncs = 0;                       // times the host waited for the device (synchronize, downloads)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char *name() const = 0;
  virtual DeviceKind kind() const = 0;
  virtual ComputeType compute_type() const = 0;

  // ---- memory and ordering ----
  virtual void *alloc(size_t bytes) = 0;
  virtual void release(void *p) = 0;
  virtual void upload(void *dst, const void *host_src, size_t bytes) = 0;
  virtual void download(void *host_dst, const void *src, size_t bytes) = 0;
  virtual void synchronize() = 0;
  /** Host memory for asynchronous copies: page-locked on a GPU (copies at full PCIe speed that return at once), plain
   *  memory elsewhere. Throws std::bad_alloc. Give it back with free_host() once the device is done with it. */
  virtual void *alloc_host(size_t bytes) {
    void *p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    return p;
  }
  virtual void free_host(void *p) { std::free(p); }
  /** download() without waiting, into memory from alloc_host(): the bytes are there once the stream has passed this
   *  point (after the next synchronize() or download()); the host must not read or write host_dst before. For data
   *  only the device reads back (offloaded activations, uploaded again later on the same stream). */
  virtual void download_async(void *host_dst, const void *src, size_t bytes) { download(host_dst, src, bytes); }
  /** True when alloc() returns plain host memory that host code may read and write directly (the CPU backend):
   *  the model then keeps its parameters in their host vectors and uses them in place (no copies). False: the
   *  model keeps its own copies in alloc() memory and moves data only with upload()/download(). */
  virtual bool host_memory() const { return false; }
  virtual MemoryStats memory_stats() const { return MemoryStats(); }
  /** The device stream this backend orders its work on (a CUstream, for NCCL's collectives), or null. */
  virtual void *stream_handle() const { return nullptr; }
  /** Starts timing each kernel and library call this backend enqueues (CUDA: an event pair around every launch —
   *  for a profiling run, not the timed one). False when this backend cannot (the CPU backend's ops are not timed). */
  virtual bool profile_start() { return false; }
  /** Stops timing and returns the totals per name, longest first (waits for the device). Empty when not started. */
  virtual std::vector<ProfileRow> profile_stop() { return {}; }
  const TransferStats &transfers() const { return xfer_; }
  /** C (+)= alpha·P where product(out, acc) writes P into out (the defaults of the *_scaled ops). */
  template <typename Product>
  void scaled_product(float *C, int64_t n, float alpha, bool acc, Product product) {
    if (alpha == 1.0f) return product(C, acc);
    if (!acc) {
      product(C, false);
      scale_inplace(C, alpha, n);
      return;
    }
    struct Tmp {
      Backend &be;
      float *p;
      ~Tmp() { be.release(p); }
    } t{*this, static_cast<float *>(alloc(sizeof(float) * static_cast<size_t>(n > 0 ? n : 1)))};
    product(t.p, false);
    axpby(C, 1.0f, C, alpha, t.p, n);
  }
  void reset_transfers() { xfer_ = TransferStats(); }

  // ---- ops (cpu/ops.hpp has the contract of each) ----
  virtual void matmul_nt(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) = 0;
  virtual void matmul_nn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) = 0;
  virtual void matmul_tn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) = 0;
  /** C = alpha·(A·Bᵀ) (acc false) or C += alpha·(A·Bᵀ): matmul_nt with its product scaled (LoRA's scaling). Default:
   *  the product, then scale_inplace — or, accumulating, through a temporary and axpby; the CUDA backend passes alpha
   *  to cuBLAS (one launch, the scale applied before the product is rounded). */
  virtual void matmul_nt_scaled(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, float alpha, bool acc) {
    scaled_product(C, M * N, alpha, acc, [&](float *out, bool a) { matmul_nt(A, B, out, M, N, K, a); });
  }
  /** The same for matmul_nn. */
  virtual void matmul_nn_scaled(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, float alpha, bool acc) {
    scaled_product(C, M * N, alpha, acc, [&](float *out, bool a) { matmul_nn(A, B, out, M, N, K, a); });
  }
  virtual void add_bias(float *y, const float *b, int64_t rows, int64_t cols) = 0;
  virtual void bias_backward(const float *dy, float *db, int64_t rows, int64_t cols) = 0;
  virtual void rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols, float eps) = 0;
  virtual void rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw,
                                int64_t rows, int64_t cols) = 0;
  virtual void layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                                 int64_t rows, int64_t cols, float eps) = 0;
  virtual void layernorm_backward(const float *dy, const float *x, const float *w, const float *mean, const float *rstd,
                                  float *dx, float *dw, float *db, int64_t rows, int64_t cols) = 0;
  virtual void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads,
                            int64_t head_dim, int64_t rot_dims, float pos_scale, bool interleaved) = 0;
  virtual void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads,
                             int64_t head_dim, int64_t rot_dims, float pos_scale, bool interleaved) = 0;
  virtual void swiglu_forward(const float *gate, const float *up, float *out, int64_t n) = 0;
  virtual void swiglu_backward(const float *dout, const float *gate, const float *up, float *dgate, float *dup, int64_t n) = 0;
  virtual void gelu_forward(const float *x, float *y, int64_t n, cpu::Gelu kind) = 0;
  virtual void gelu_backward(const float *dy, const float *x, float *dx, int64_t n, cpu::Gelu kind) = 0;
  virtual void attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B,
                                 int64_t T, int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start,
                                 const float *alibi, const int32_t *prefix) = 0;
  virtual void attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                                  const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh,
                                  int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                                  const int32_t *prefix) = 0;
  /** One decoding chunk against a KV cache: queries q[n, nh, hd] at positions p0…p0+n−1 attend to cache
   *  rows 0…max(own position, prefix−1) of kc, vc [capacity, nkv, hd]; out[n, nh, hd]; optional ALiBi. */
  /** attention_forward for mixed-precision runs: q, k, v rounded to `t` for the products (tensor cores), masks,
   *  softmax statistics and accumulation in fp32 (the probabilities rounded to `t` for P·V, as FlashAttention-2).
   *  Default: the fp32 op. */
  virtual void attention_forward_lp(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B,
                                    int64_t T, int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start,
                                    const float *alibi, const int32_t *prefix, Half t) {
    (void)t;
    attention_forward(q, k, v, out, lse, B, T, nh, nkv, hd, scale, seg_start, alibi, prefix);
  }
  /** attention_backward for mixed-precision runs (dout, q, k, v rounded to `t` for the products). Default: fp32. */
  virtual void attention_backward_lp(const float *dout, const float *q, const float *k, const float *v, const float *out,
                                     const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh,
                                     int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                                     const int32_t *prefix, Half t) {
    (void)t;
    attention_backward(dout, q, k, v, out, lse, dq, dk, dv, B, T, nh, nkv, hd, scale, seg_start, alibi, prefix);
  }
  virtual void attention_cached(const float *q, const float *kc, const float *vc, float *out, int64_t p0, int64_t n,
                                int64_t nh, int64_t nkv, int64_t hd, float scale, const float *alibi,
                                int64_t prefix, int64_t window) = 0;
  virtual double cross_entropy_forward(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V,
                                       int64_t *count) = 0;
  /** The same loss, kept in this backend's memory: *loss_acc (one double) and *count_acc (one int64) receive this
   *  chunk's loss sum and counted rows — added to them when `accumulate`, else overwriting them — so a model's
   *  loss over many logits chunks costs one download (Model::run) instead of a host sync per chunk. The default
   *  runs cross_entropy_forward and adds on the host (a host-memory backend writes in place; any other downloads and
   *  uploads the two scalars: correct, not fast). A device backend overrides it with a device-side reduction.
   *  Deterministic. On the CPU bit-identical to `acc = (accumulate ? acc : 0) + cross_entropy_forward(...)`. */
  virtual void cross_entropy_forward_acc(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V,
                                         double *loss_acc, int64_t *count_acc, bool accumulate) {
    int64_t cnt = 0;
    const double l = cross_entropy_forward(logits, targets, lse, N, V, &cnt);
    if (host_memory()) {
      *loss_acc = (accumulate ? *loss_acc : 0.0) + l;
      *count_acc = (accumulate ? *count_acc : 0) + cnt;
      return;
    }
    double hl = 0.0;
    int64_t hc = 0;
    if (accumulate) {
      download(&hl, loss_acc, sizeof hl);
      download(&hc, count_acc, sizeof hc);
    }
    hl += l;
    hc += cnt;
    upload(loss_acc, &hl, sizeof hl);
    upload(count_acc, &hc, sizeof hc);
  }
  virtual void cross_entropy_backward(const float *logits, const int32_t *targets, const float *lse, float *dlogits,
                                      int64_t N, int64_t V, float scale) = 0;
  virtual void embedding_forward(const float *table, const int32_t *ids, float *out, int64_t N, int64_t H) = 0;
  virtual void embedding_backward(const float *dout, const int32_t *ids, float *dtable, int64_t N, int64_t H, int64_t V) = 0;
  virtual void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2,
                          float eps, float weight_decay, int64_t step) = 0;
  virtual double sum_squares(const float *x, int64_t n) = 0;
  virtual void scale_inplace(float *x, float s, int64_t n) = 0;
  /** *acc += Σ x² in double; acc is this backend's memory (one double), so a global norm over many tensors costs
   *  one download. Bit-identical to `acc += sum_squares(x, n)`. */
  virtual void sum_squares_acc(const float *x, int64_t n, double *acc) = 0;
  /** x[i] = value (zeroing gradients and fresh buffers). */
  virtual void fill(float *x, float value, int64_t n) = 0;

  // ---- the optimizer step's per-parameter ops over many tensors at once (a GPU: a few launches instead of one per
  // tensor and op). Each means exactly the single-tensor op applied to the slots in order; the defaults do that. ----
  /** adamw_step on each slot, weight_decay where slot.decay (else 0). Element for element the same as adamw_step. */
  virtual void adamw_multi(const std::vector<TensorSlot> &ts, float lr, float beta1, float beta2, float eps,
                           float weight_decay, int64_t step) {
    for (const TensorSlot &t : ts) adamw_step(t.w, t.g, t.m, t.v, t.n, lr, beta1, beta2, eps, t.decay ? weight_decay : 0.0f, step);
  }
  /** *acc += Σ over the slots of Σ g² (double). A device may split the sum differently from sum_squares_acc per slot
   *  (rounding order), deterministically. */
  virtual void sum_squares_acc_multi(const std::vector<TensorSlot> &ts, double *acc) {
    for (const TensorSlot &t : ts) sum_squares_acc(t.g, t.n, acc);
  }
  /** g *= s on every slot (unscale, clip). */
  virtual void scale_multi(const std::vector<TensorSlot> &ts, float s) {
    for (const TensorSlot &t : ts) scale_inplace(t.g, s, t.n);
  }
  /** g = 0 on every slot (zero_grad). */
  virtual void zero_multi(const std::vector<TensorSlot> &ts) {
    for (const TensorSlot &t : ts) fill(t.g, 0.0f, t.n);
  }
  /** dst[i] = src[i] within this backend's memory (bit-exact; no host round trip). */
  virtual void copy(float *dst, const float *src, int64_t n) = 0;
  /** out[c·rows + r] = in[r·cols + c] (acc: +=) — in [rows, cols] → out [cols, rows]; bit-exact (LoRA on an embedding:
   *  PEFT's lora_embedding_A [r, V] looked up by token as rows of its transpose). */
  virtual void transpose(const float *in, float *out, int64_t rows, int64_t cols, bool acc) = 0;

  // ---- element-wise and layout ops the model needs between the big ones ----
  /** out[i] = a[i] + b[i] (+ c[i] when c is not null); out may alias a. */
  virtual void add(float *out, const float *a, const float *b, const float *c, int64_t n) = 0;
  /** out[i] = alpha·a[i] + beta·b[i] (residual and branch scaling: ChatGLM-6B, MiniCPM); out may alias a or b. */
  virtual void axpby(float *out, float alpha, const float *a, float beta, const float *b, int64_t n) = 0;
  // ---- DoRA (PEFT use_dora): y = diag(m / ‖W + s·B·A‖_row)·(W + s·B·A)·x, the norm per output row, held constant ----
  /** Per output row j of a DoRA linear: n_j = sqrt(wn2_j + 2s·Σ_k B[j,k]·WAt[k,j] + s²·Σ_kl B[j,k]·G[k,l]·B[j,l])
   *  = ‖W_j + s·(B·A)_j‖ (wn2 = ‖W_j‖², WAt = A·Wᵀ [r, out], G = A·Aᵀ [r, r], B [out, r]); g_j = m_j / n_j and
   *  inv_n_j = 1 / n_j. */
  virtual void dora_scale(const float *wn2, const float *WAt, const float *B, const float *G, const float *m, float s,
                          float *g, float *inv_n, int64_t out, int64_t r) = 0;
  /** y[n,j] = (keep ? y[n,j] : 0) + (g[j] + offset)·x[n,j] over [N, C]; y may alias x (keep false). */
  virtual void scale_cols(float *y, const float *x, const float *g, float offset, bool keep, int64_t N, int64_t C) = 0;
  /** dm[j] += inv_n[j]·Σ_n dy[n,j]·z[n,j] over [N, C] (rows in order). */
  virtual void col_dot(const float *dy, const float *z, const float *inv_n, float *dm, int64_t N, int64_t C) = 0;

  /** Column split of fused rows [N, wa + wb] into a[N, wa], b[N, wb] (merge = the reverse). */
  virtual void split_cols(float *fused, float *a, float *b, int64_t N, int64_t wa, int64_t wb, bool merge) = 0;
  /** Splits fused q/k/v rows [N, nh·hd + 2·nkv·hd] into q[N, nh·hd], k, v[N, nkv·hd]; merge = the reverse.
   *  Blocks: [Q | K | V]; PerHead: per head [q_h, k_h, v_h] (nh == nkv); Grouped (Falcon new decoder
   *  architecture): per kv group g [q_{g·r} … q_{g·r+r−1}, k_g, v_g], r = nh/nkv. */
  virtual void qkv_split(float *fused, float *q, float *k, float *v, int64_t N, int64_t nh, int64_t nkv, int64_t hd,
                         QkvSplit layout, bool merge) = 0;
  /** x[i] += mag·(2·u_i − 1), u_i = uniform01(stream, i) (NEFTune's noise on the input embeddings). */
  virtual void add_uniform_noise(float *x, int64_t n, float mag, uint64_t stream) = 0;
  /** Inverted dropout with a counter-based mask: out = x·mask/(1−p), mask_i = uniform(stream, i) ≥ p. */
  virtual void dropout_forward(const float *x, float *out, int64_t n, float p, uint64_t stream) = 0;
  /** dx += dy·mask/(1−p) with the same mask as dropout_forward(stream). */
  virtual void dropout_backward(const float *dy, float *dx, int64_t n, float p, uint64_t stream) = 0;

  // ---- 4-bit base weights (QLoRA; layout and exact semantics in cpu/q4.hpp) ----
  // W is a Q4View over this backend's memory; the weight is decoded tile by tile inside the GEMM, never
  // materialised in full. Bit-identical to matmul_nt/matmul_nn on the dequantized weight on the CPU backend.
  // A backend that returns false from supports_q4() is never handed a 4-bit weight (the model refuses to load
  // one with LLMT_ERR_UNSUPPORTED), so its defaults below are unreachable.
  virtual bool supports_q4() const { return false; }
  /** C[M,N] (+)= A[M,K]·Wᵀ, W [N,K] (the forward y = x·Wᵀ). */
  virtual void matmul_nt_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc);
  /** C[M,N] (+)= A[M,K]·W, W [K,N] (the input gradient dx = dy·W; the frozen weight gets no gradient). */
  virtual void matmul_nn_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc);
  /** matmul_nt_q4 for mixed-precision runs (QLoRA's compute_dtype bf16/fp16): A rounded to `t`, each weight element
   *  decoded exactly as matmul_nt_q4 does (code·scale in fp32) and then rounded to `t`, products summed in fp32, C fp32
   *  (a 16-bit tensor-core GEMM on the decoded tile). Default: the fp32 op. */
  virtual void matmul_nt_q4_lp(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K,
                               bool acc) {
    (void)t;
    matmul_nt_q4(A, W, C, M, N, K, acc);
  }
  /** matmul_nn_q4 with the rounding of matmul_nt_q4_lp (the input gradient of a mixed-precision QLoRA run). */
  virtual void matmul_nn_q4_lp(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K,
                               bool acc) {
    (void)t;
    matmul_nn_q4(A, W, C, M, N, K, acc);
  }
  /** out[N·K] (this backend's memory) = the whole 4-bit weight [N,K] decoded and rounded to t: the 16-bit values
   *  matmul_*_q4_lp multiply by, so matmul_*_half on `out` gives what they give. The model decodes one checkpointed
   *  layer's weights once for its recomputation and backward (Model::run, RunOptions::q4_layer_cache). */
  virtual void q4_dequantize_half(const cpu::Q4View &W, Half t, uint16_t *out, int64_t N, int64_t K);
  struct Q4Out {
    const cpu::Q4View *W;
    float *C;
    int64_t N;
  };
  /** matmul_nt_q4_lp for several 4-bit weights reading the same input (q, k, v; gate, up): C_i[M, N_i] =
   *  A·W_iᵀ, overwritten — exactly matmul_nt_q4_lp on each (the default); the CUDA backend's decode path rounds A
   *  to 16 bits once for all of them. */
  virtual void matmul_nt_q4_lp_shared(const float *A, const std::vector<Q4Out> &outs, Half t, int64_t M, int64_t K) {
    for (const Q4Out &o : outs) matmul_nt_q4_lp(A, *o.W, t, o.C, M, o.N, K, false);
  }

  // ---- 16-bit frozen weights (mixed precision: Model::set_precision, cpu/half.hpp) ----
  // W holds bf16 or fp16 bits in this backend's memory. A is rounded to W's type first (round-to-nearest-even, as
  // autocast does before a tensor-core GEMM with 16-bit inputs), products are summed in fp32 and C stays fp32.
  // A backend that returns false from supports_half() is never handed a 16-bit weight.
  virtual bool supports_half() const { return false; }
  /** C[M,N] (+)= half(A)[M,K]·Wᵀ, W [N,K] (the forward y = x·Wᵀ). */
  virtual void matmul_nt_half(const float *A, const uint16_t *W, Half type, float *C, int64_t M, int64_t N, int64_t K,
                              bool acc);
  /** One 16-bit-weight GEMM per output from the same input (q, k, v from one norm output; gate and up): out i is
   *  C_i[M, N_i] = half(A)[M,K]·W_iᵀ, overwritten — exactly matmul_nt_half on each (the default); the CUDA backend
   *  rounds A to 16 bits once for all of them. */
  struct HalfOut {
    const uint16_t *W;
    float *C;
    int64_t N;
  };
  virtual void matmul_nt_half_shared(const float *A, const std::vector<HalfOut> &outs, Half type, int64_t M, int64_t K) {
    for (const HalfOut &o : outs) matmul_nt_half(A, o.W, type, o.C, M, o.N, K, false);
  }
  /** C[M,N] (+)= half(A)[M,K]·W, W [K,N] (the input gradient dx = dy·W; a frozen weight gets no gradient). */
  virtual void matmul_nn_half(const float *A, const uint16_t *W, Half type, float *C, int64_t M, int64_t N, int64_t K,
                              bool acc);
  /** out[n,:] = fp32(table[ids[n],:]) for a 16-bit frozen embedding table [V,H] (exact: widening only). */
  virtual void embedding_forward_half(const uint16_t *table, Half type, const int32_t *ids, float *out, int64_t N,
                                      int64_t H);

 protected:
  TransferStats xfer_;  // implementations count every host↔device copy here
};

/** The CPU backend (fp32, the reference). */
Backend &cpu_backend();

}  // namespace llmt
