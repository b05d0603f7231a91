// backend_cpu.cpp — the CPU implementation of engine/backend.hpp: host memory, no stream (ops run when
// called), fp32 compute, every op forwarded to the reference kernels in ops.cpp.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "../engine/backend.hpp"
#include "../engine/rng.hpp"
#include "ops.hpp"

namespace llmt {

namespace {

void decode_bf16(const void *ctx, int64_t begin, int64_t n, float *out) {
  const uint16_t *w = static_cast<const uint16_t *>(ctx) + begin;
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(w[i]);
}
void decode_f16(const void *ctx, int64_t begin, int64_t n, float *out) {
  const uint16_t *w = static_cast<const uint16_t *>(ctx) + begin;
  for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(w[i]);
}
// The GEMM's A operand as a 16-bit tensor core reads it: each element rounded to the weight's type.
std::vector<float> round_half(const float *A, int64_t n, Half t) {
  std::vector<float> a(static_cast<size_t>(n));
  if (t == Half::F16)
    for (int64_t i = 0; i < n; ++i) a[size_t(i)] = f16_to_f32(f32_to_f16(A[i]));
  else
    for (int64_t i = 0; i < n; ++i) a[size_t(i)] = bf16_to_f32(f32_to_bf16(A[i]));
  return a;
}

class CpuBackend final : public Backend {
 public:
  const char *name() const override { return "cpu"; }
  DeviceKind kind() const override { return DeviceKind::CPU; }
  ComputeType compute_type() const override { return ComputeType::F32; }

  void *alloc(size_t bytes) override {
    void *p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void release(void *p) override { std::free(p); }
  void upload(void *dst, const void *src, size_t bytes) override {
    ++xfer_.uploads;
    xfer_.bytes_up += static_cast<int64_t>(bytes);
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void download(void *dst, const void *src, size_t bytes) override {
    ++xfer_.downloads;
    xfer_.bytes_down += static_cast<int64_t>(bytes);
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}
  bool host_memory() const override { return true; }
  void sum_squares_acc(const float *x, int64_t n, double *acc) override { cpu::sum_squares_acc(x, n, acc); }
  void fill(float *x, float value, int64_t n) override { cpu::fill(x, value, n); }
  void copy(float *dst, const float *src, int64_t n) override { cpu::copy(dst, src, n); }
  void transpose(const float *in, float *out, int64_t rows, int64_t cols, bool acc) override { cpu::transpose(in, out, rows, cols, acc); }

  void matmul_nt(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override { cpu::matmul_nt(A, B, C, M, N, K, acc); }
  void matmul_nn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override { cpu::matmul_nn(A, B, C, M, N, K, acc); }
  void matmul_tn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override { cpu::matmul_tn(A, B, C, M, N, K, acc); }
  bool supports_half() const override { return true; }
  void matmul_nt_half(const float *A, const uint16_t *W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    std::vector<float> a = round_half(A, M * K, t);
    cpu::matmul_nt_dec(a.data(), cpu::BDecoder{t == Half::F16 ? decode_f16 : decode_bf16, W}, C, M, N, K, acc);
  }
  void matmul_nn_half(const float *A, const uint16_t *W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    std::vector<float> a = round_half(A, M * K, t);
    cpu::matmul_nn_dec(a.data(), cpu::BDecoder{t == Half::F16 ? decode_f16 : decode_bf16, W}, C, M, N, K, acc);
  }
  void embedding_forward_half(const uint16_t *table, Half t, const int32_t *ids, float *out, int64_t N, int64_t H) override {
    for (int64_t n = 0; n < N; ++n) {
      const uint16_t *row = table + static_cast<int64_t>(ids[n]) * H;
      float *o = out + n * H;
      if (t == Half::F16) decode_f16(row, 0, H, o);
      else decode_bf16(row, 0, H, o);
    }
  }
  bool supports_q4() const override { return true; }
  void matmul_nt_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    cpu::matmul_nt_q4(A, W, C, M, N, K, acc);
  }
  void matmul_nn_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    cpu::matmul_nn_q4(A, W, C, M, N, K, acc);
  }
  // mixed precision: A rounded, then the exact 4-bit GEMM on a decoder that rounds each weight element (cpu/q4.hpp)
  void matmul_nt_q4_lp(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    std::vector<float> a = round_half(A, M * K, t);
    cpu::matmul_nt_q4_half(a.data(), W, t, C, M, N, K, acc);
  }
  void matmul_nn_q4_lp(const float *A, const cpu::Q4View &W, Half t, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    std::vector<float> a = round_half(A, M * K, t);
    cpu::matmul_nn_q4_half(a.data(), W, t, C, M, N, K, acc);
  }
  void add_bias(float *y, const float *b, int64_t rows, int64_t cols) override { cpu::add_bias(y, b, rows, cols); }
  void bias_backward(const float *dy, float *db, int64_t rows, int64_t cols) override { cpu::bias_backward(dy, db, rows, cols); }
  void rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols, float eps) override {
    cpu::rmsnorm_forward(x, w, y, rstd, rows, cols, eps);
  }
  void rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw, int64_t rows,
                        int64_t cols) override {
    cpu::rmsnorm_backward(dy, x, w, rstd, dx, dw, rows, cols);
  }
  void layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, int64_t rows,
                         int64_t cols, float eps) override {
    cpu::layernorm_forward(x, w, b, y, mean, rstd, rows, cols, eps);
  }
  void layernorm_backward(const float *dy, const float *x, const float *w, const float *mean, const float *rstd, float *dx,
                          float *dw, float *db, int64_t rows, int64_t cols) override {
    cpu::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, rows, cols);
  }
  void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim,
                    int64_t rot_dims, float pos_scale, bool interleaved) override {
    cpu::rope_forward(x, pos, inv_freq, rows, heads, head_dim, rot_dims, pos_scale, interleaved);
  }
  void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim,
                     int64_t rot_dims, float pos_scale, bool interleaved) override {
    cpu::rope_backward(dx, pos, inv_freq, rows, heads, head_dim, rot_dims, pos_scale, interleaved);
  }
  void swiglu_forward(const float *gate, const float *up, float *out, int64_t n) override { cpu::swiglu_forward(gate, up, out, n); }
  void swiglu_backward(const float *dout, const float *gate, const float *up, float *dgate, float *dup, int64_t n) override {
    cpu::swiglu_backward(dout, gate, up, dgate, dup, n);
  }
  void gelu_forward(const float *x, float *y, int64_t n, cpu::Gelu kind) override { cpu::gelu_forward(x, y, n, kind); }
  void gelu_backward(const float *dy, const float *x, float *dx, int64_t n, cpu::Gelu kind) override {
    cpu::gelu_backward(dy, x, dx, n, kind);
  }
  void attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                         int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                         const int32_t *prefix) override {
    cpu::attention_forward(q, k, v, out, lse, B, T, nh, nkv, hd, scale, seg_start, alibi, prefix);
  }
  void attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse,
                          float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
                          float scale, const int32_t *seg_start, const float *alibi, const int32_t *prefix) override {
    cpu::attention_backward(dout, q, k, v, out, lse, dq, dk, dv, B, T, nh, nkv, hd, scale, seg_start, alibi, prefix);
  }
  // Mixed precision: the inputs rounded as the tensor-core kernels read them, then the fp32 reference (the
  // probabilities stay fp32 here: the CUDA kernels' rounding of P is within the mixed-precision tolerance)
  void attention_forward_lp(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                            int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                            const int32_t *prefix, Half t) override {
    const std::vector<float> qr = round_half(q, B * T * nh * hd, t), kr = round_half(k, B * T * nkv * hd, t),
                             vr = round_half(v, B * T * nkv * hd, t);
    cpu::attention_forward(qr.data(), kr.data(), vr.data(), out, lse, B, T, nh, nkv, hd, scale, seg_start, alibi, prefix);
  }
  void attention_backward_lp(const float *dout, const float *q, const float *k, const float *v, const float *out,
                             const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh, int64_t nkv,
                             int64_t hd, float scale, const int32_t *seg_start, const float *alibi, const int32_t *prefix,
                             Half t) override {
    const int64_t nq = B * T * nh * hd, nk = B * T * nkv * hd;
    const std::vector<float> dr = round_half(dout, nq, t), qr = round_half(q, nq, t), kr = round_half(k, nk, t),
                             vr = round_half(v, nk, t);
    cpu::attention_backward(dr.data(), qr.data(), kr.data(), vr.data(), out, lse, dq, dk, dv, B, T, nh, nkv, hd, scale,
                            seg_start, alibi, prefix);
  }
  void attention_cached(const float *q, const float *kc, const float *vc, float *out, int64_t p0, int64_t n, int64_t nh,
                        int64_t nkv, int64_t hd, float scale, const float *alibi, int64_t prefix, int64_t window) override {
    cpu::attention_cached(q, kc, vc, out, p0, n, nh, nkv, hd, scale, alibi, prefix, window);
  }
  double cross_entropy_forward(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V, int64_t *count) override {
    return cpu::cross_entropy_forward(logits, targets, lse, N, V, count);
  }
  void cross_entropy_backward(const float *logits, const int32_t *targets, const float *lse, float *dlogits, int64_t N, int64_t V,
                              float scale) override {
    cpu::cross_entropy_backward(logits, targets, lse, dlogits, N, V, scale);
  }
  void embedding_forward(const float *table, const int32_t *ids, float *out, int64_t N, int64_t H) override {
    cpu::embedding_forward(table, ids, out, N, H);
  }
  void embedding_backward(const float *dout, const int32_t *ids, float *dtable, int64_t N, int64_t H, int64_t V) override {
    cpu::embedding_backward(dout, ids, dtable, N, H, V);
  }
  void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t step) override {
    cpu::adamw_step(p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
  }
  double sum_squares(const float *x, int64_t n) override { return cpu::sum_squares(x, n); }
  void scale_inplace(float *x, float s, int64_t n) override { cpu::scale_inplace(x, s, n); }

  void add(float *out, const float *a, const float *b, const float *c, int64_t n) override {
    cpu::parallel_for(n, [&](int64_t beg, int64_t end) {
      if (c)
        for (int64_t i = beg; i < end; ++i) out[i] = a[i] + b[i] + c[i];
      else
        for (int64_t i = beg; i < end; ++i) out[i] = a[i] + b[i];
    });
  }
  void dora_scale(const float *wn2, const float *WAt, const float *B, const float *G, const float *m, float s, float *g,
                  float *inv_n, int64_t out, int64_t r) override {
    cpu::parallel_for(out, [&](int64_t beg, int64_t end) {
      for (int64_t j = beg; j < end; ++j) {
        const float *b = B + j * r;
        double d = 0.0, q = 0.0;
        for (int64_t k = 0; k < r; ++k) {
          d += static_cast<double>(b[k]) * WAt[k * out + j];
          double gb = 0.0;
          for (int64_t l = 0; l < r; ++l) gb += static_cast<double>(G[k * r + l]) * b[l];
          q += b[k] * gb;
        }
        const double n = std::sqrt(std::max(0.0, static_cast<double>(wn2[j]) + 2.0 * s * d + static_cast<double>(s) * s * q));
        g[j] = static_cast<float>(m[j] / n);
        inv_n[j] = static_cast<float>(1.0 / n);
      }
    });
  }
  void scale_cols(float *y, const float *x, const float *g, float offset, bool keep, int64_t N, int64_t C) override {
    cpu::parallel_for(N, [&](int64_t beg, int64_t end) {
      for (int64_t n = beg; n < end; ++n) {
        float *yr = y + n * C;
        const float *xr = x + n * C;
        if (keep)
          for (int64_t j = 0; j < C; ++j) yr[j] += (g[j] + offset) * xr[j];
        else
          for (int64_t j = 0; j < C; ++j) yr[j] = (g[j] + offset) * xr[j];
      }
    });
  }
  void col_dot(const float *dy, const float *z, const float *inv_n, float *dm, int64_t N, int64_t C) override {
    cpu::parallel_for(C, [&](int64_t beg, int64_t end) {
      for (int64_t j = beg; j < end; ++j) {
        float acc = 0.0f;
        for (int64_t n = 0; n < N; ++n) acc += dy[n * C + j] * z[n * C + j];
        dm[j] += inv_n[j] * acc;
      }
    });
  }
  void axpby(float *out, float alpha, const float *a, float beta, const float *b, int64_t n) override {
    cpu::parallel_for(n, [&](int64_t beg, int64_t end) {
      for (int64_t i = beg; i < end; ++i) out[i] = alpha * a[i] + beta * b[i];
    });
  }
  void split_cols(float *fused, float *a, float *b, int64_t N, int64_t wa, int64_t wb, bool merge) override {
    cpu::parallel_for(N, [&](int64_t beg, int64_t end) {
      for (int64_t n = beg; n < end; ++n) {
        float *row = fused + n * (wa + wb);
        if (merge) {
          std::memcpy(row, a + n * wa, sizeof(float) * static_cast<size_t>(wa));
          std::memcpy(row + wa, b + n * wb, sizeof(float) * static_cast<size_t>(wb));
        } else {
          std::memcpy(a + n * wa, row, sizeof(float) * static_cast<size_t>(wa));
          std::memcpy(b + n * wb, row + wa, sizeof(float) * static_cast<size_t>(wb));
        }
      }
    });
  }
  void qkv_split(float *fused, float *q, float *k, float *v, int64_t N, int64_t nh, int64_t nkv, int64_t hd, QkvSplit layout,
                 bool merge) override {
    const int64_t qd = nh * hd, kvd = nkv * hd, W = qd + 2 * kvd;
    auto mv = [merge](float *fused_part, float *sep, int64_t len) {
      if (merge) std::memcpy(fused_part, sep, sizeof(float) * static_cast<size_t>(len));
      else std::memcpy(sep, fused_part, sizeof(float) * static_cast<size_t>(len));
    };
    cpu::parallel_for(N, [&](int64_t beg, int64_t end) {
      for (int64_t n = beg; n < end; ++n) {
        float *row = fused + n * W;
        if (layout == QkvSplit::Blocks) {
          mv(row, q + n * qd, qd);
          mv(row + qd, k + n * kvd, kvd);
          mv(row + qd + kvd, v + n * kvd, kvd);
        } else if (layout == QkvSplit::Grouped) {  // per kv group [q × r, k, v]
          const int64_t r = nh / nkv;
          for (int64_t g = 0; g < nkv; ++g) {
            float *src = row + g * (r + 2) * hd;
            mv(src, q + n * qd + g * r * hd, r * hd);
            mv(src + r * hd, k + n * kvd + g * hd, hd);
            mv(src + (r + 1) * hd, v + n * kvd + g * hd, hd);
          }
        } else {  // per head [q_h, k_h, v_h] (nh == nkv)
          for (int64_t h = 0; h < nh; ++h) {
            float *src = row + h * 3 * hd;
            mv(src, q + n * qd + h * hd, hd);
            mv(src + hd, k + n * kvd + h * hd, hd);
            mv(src + 2 * hd, v + n * kvd + h * hd, hd);
          }
        }
      }
    });
  }
  void add_uniform_noise(float *x, int64_t n, float mag, uint64_t stream) override {
    cpu::parallel_for(n, [&](int64_t beg, int64_t end) {
      for (int64_t i = beg; i < end; ++i) x[i] += mag * (2.0f * uniform01(stream, static_cast<uint64_t>(i)) - 1.0f);
    });
  }
  void dropout_forward(const float *x, float *out, int64_t n, float p, uint64_t stream) override {
    const float keep = 1.0f / (1.0f - p);
    cpu::parallel_for(n, [&](int64_t beg, int64_t end) {
      for (int64_t i = beg; i < end; ++i) out[i] = uniform01(stream, static_cast<uint64_t>(i)) < p ? 0.0f : x[i] * keep;
    });
  }
  void dropout_backward(const float *dy, float *dx, int64_t n, float p, uint64_t stream) override {
    const float keep = 1.0f / (1.0f - p);
    cpu::parallel_for(n, [&](int64_t beg, int64_t end) {
      for (int64_t i = beg; i < end; ++i)
        if (!(uniform01(stream, static_cast<uint64_t>(i)) < p)) dx[i] += dy[i] * keep;
    });
  }
};

}  // namespace

Backend &cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace llmt
