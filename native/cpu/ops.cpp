// ops.cpp — the CPU kernels declared in ops.hpp: packed, cache-blocked matmuls (AVX2/FMA micro-kernel picked
// at run time on x86 when the CPU has it, portable C++ otherwise), norms, RoPE, activations, causal GQA
// attention with a saved log-sum-exp, cross-entropy, embedding, AdamW and reductions. Work is split so that
// every output element is reduced by one thread in a fixed order: results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops.hpp"

// GEMM micro-kernels: AVX2+FMA compiled for run-time selection on x86 (GCC/Clang via a target attribute,
// MSVC needs none), SSE2 (the x86-64 baseline) otherwise; plain C++ elsewhere, or everywhere with
// -DLLMT_PORTABLE_KERNELS (also turns off the 4-float vector extensions the attention kernels use).
#if !defined(LLMT_PORTABLE_KERNELS) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#include <immintrin.h>
#define LLMT_X86_SIMD 1
#define LLMT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#elif !defined(LLMT_PORTABLE_KERNELS) && defined(_MSC_VER) && \
    (defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2))
#include <immintrin.h>
#include <intrin.h>
#define LLMT_X86_SIMD 1
#define LLMT_TARGET_AVX2
#else
#define LLMT_X86_SIMD 0
#endif

// Bodies compiled twice (a plain wrapper and an LLMT_TARGET_AVX2 one) are forced inline into each wrapper.
#if defined(__GNUC__) || defined(__clang__)
#define LLMT_INLINE inline __attribute__((always_inline))
#else
#define LLMT_INLINE inline
#endif

namespace llmt::cpu::detail {
// Defined in threadpool.cpp: fn(ctx, begin, end) over min(nchunks, threads) contiguous chunks of [0, n).
using ChunkFn = void (*)(void *ctx, int64_t begin, int64_t end);
void run_chunks(int64_t n, int64_t nchunks, ChunkFn fn, void *ctx);
}  // namespace llmt::cpu::detail

namespace llmt::cpu {
namespace {

// ---- parallel helpers -------------------------------------------------------------------------------------

// Runs f(begin, end) over nchunks contiguous chunks of [0, n) without a std::function (no allocation).
template <class F>
void par(int64_t n, int64_t nchunks, F &&f) {
  if (n <= 0) return;
  if (nchunks <= 1 || n == 1) {
    f(int64_t{0}, n);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  detail::run_chunks(
      n, nchunks, [](void *ctx, int64_t b, int64_t e) { (*static_cast<Fn *>(ctx))(b, e); },
      const_cast<void *>(static_cast<const void *>(&f)));
}

// How many chunks a job of `work` (≈ flops) over `items` independent items deserves.
int64_t chunks_for(int64_t items, double work) {
  constexpr double kGrain = 32768.0;  // below this much work per thread the hand-off costs more than it saves
  int64_t k = static_cast<int64_t>(work / kGrain);
  k = std::min<int64_t>(k, num_threads());
  k = std::min<int64_t>(k, items);
  return std::max<int64_t>(k, 1);
}

// Per-thread scratch that grows to the largest size asked for and is then reused (no per-call allocation
// once warm). Slot 0..3 are distinct buffers.
float *scratch(int slot, size_t n) {
  thread_local std::vector<float> bufs[4];
  std::vector<float> &v = bufs[slot];
  if (v.size() < n) v.resize(n);
  return v.data();
}

// ---- vector-friendly primitives (8 fixed lanes: vectorised, and the order is fixed) -----------------------

inline float dot(const float *__restrict a, const float *__restrict b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline float sum(const float *__restrict a, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i];
  return s;
}

// y[n] += a · x[n]
inline void axpy(float *__restrict y, float a, const float *__restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// x[n] = sqrt(x[n]), correctly rounded; std::sqrt alone does not vectorise (errno) without -fno-math-errno.
inline void sqrt_inplace(float *x, int64_t n) {
  int64_t i = 0;
#if LLMT_X86_SIMD
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// exp(x) in fp32 to ~1.4 ulp (Cephes polynomial), branch-free so loops over it vectorise. exp(x) = 0 for
// x < −86 (true value < 4.5e-38, so no denormals), +inf for x > 88.7228 (overflow), NaN propagates.
inline float exp_fast(float x) {
  const uint32_t xb = bits_of(x);
  // All-ones masks from integer compares (float compares and selects keep GCC from if-converting the loop
  // under the default -ftrapping-math). Sign-magnitude bits: unsigned > 0xC2AC0000 ⇔ x < −86.
  const uint32_t m_nan = 0u - static_cast<uint32_t>((xb & 0x7fffffffu) > 0x7f800000u);
  const uint32_t m_under = 0u - static_cast<uint32_t>(xb > 0xC2AC0000u);
  const uint32_t m_over = 0u - static_cast<uint32_t>(static_cast<int32_t>(xb) > 0x42B17217);  // x > 88.7228
  uint32_t cb = xb > 0xC2AC0000u ? 0xC2AC0000u : xb;
  cb = static_cast<int32_t>(cb) > 0x42B17217 ? 0x42B17217u : cb;  // clamp to [−86, 88.7228]
  const float xc = float_of(cb);
  const float shift = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits
  float fn = xc * 1.44269504088896341f + shift;
  const int32_t n = static_cast<int32_t>(bits_of(fn)) - 0x4B400000;  // n = round(x·log2 e) ∈ [−124, 128]
  fn -= shift;
  float r = xc - fn * 0.693359375f;  // r = x − n·ln 2 in two steps (Cody–Waite)
  r = r - fn * -2.12194440e-4f;
  const float z = r * r;
  float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
             1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;  // e^r, r ∈ [−0.35, 0.35]
  // y·2^n as (y·2^(n−1))·2 so that n = 128 still builds a normal float; the ×2 is exact (or overflows).
  uint32_t yb = bits_of(y) + static_cast<uint32_t>(n - 1) * (1u << 23);
  yb = bits_of(float_of(yb) * 2.0f);
  yb &= ~m_under;
  yb = (yb & ~m_over) | (0x7f800000u & m_over);
  yb = (yb & ~m_nan) | ((xb | 0x00400000u) & m_nan);
  return float_of(yb);
}

// ---- matmul: packed GEMM (BLIS-style loops) ----------------------------------------------------------------
// C[i,j] (+)= Σ_k A(i,k)·B(k,j) with A(i,k) = A[i·rs + k·cs], B(k,j) = B[k·rs + j·cs]; all three variants are
// this with different strides. Loops: jc (kNC columns) → pc (kKC depth; B panel packed once, shared) → tasks
// over (M part, N panel range) → ic (kMC rows; A block packed per task unless N is narrow, where the
// micro-kernel reads A in place) → micro-tiles of kMR×NR. Each C element is summed by one task in k order,
// k-blocks in order, with the same operations whatever the split: the result is independent of the thread
// count (and of whether A was packed).

constexpr int64_t kMR = 6;
constexpr int64_t kMaxNR = 16;
constexpr int64_t kKC = 512;
constexpr int64_t kMC = 96;    // multiple of kMR
constexpr int64_t kNC = 2048;  // multiple of every NR
constexpr int64_t kFewRows = 24;  // up to this many rows of A, B's panels are packed by the tasks that use them

struct View {
  const float *p;
  int64_t rs, cs;
  const BDecoder *dec = nullptr;  // B only: decode instead of reading p (p is then null; offsets index B's elements)
};

// Micro-kernel: C[kMR, nr] (leading dimension ldc) = (add ? C : 0) + Σ_k A(i,k)·Bp[k, nr], where row i of A
// reads a[i·ars + k·acs] for i < h (rows i ≥ h repeat row h−1, in bounds; the caller drops them) and Bp is a
// packed panel. Packed A is ars = 1, acs = kMR.
using Ukr = void (*)(int64_t kc, const float *a, int64_t ars, int64_t acs, int64_t h, const float *b, float *c,
                     int64_t ldc, bool add);

inline void row_ptrs(const float *a, int64_t ars, int64_t h, const float *r[kMR]) {
  for (int64_t i = 0; i < kMR; ++i) r[i] = a + std::min(i, h - 1) * ars;
}

#if !LLMT_X86_SIMD
template <int NR>
void ukr_generic(int64_t kc, const float *a, int64_t ars, int64_t acs, int64_t h, const float *__restrict b,
                 float *__restrict c, int64_t ldc, bool add) {
  const float *r[kMR];
  row_ptrs(a, ars, h, r);
  float acc[kMR][NR];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = 0.0f;
  for (int64_t k = 0, off = 0; k < kc; ++k, off += acs) {
    for (int i = 0; i < kMR; ++i) {
      const float ai = r[i][off];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
    b += NR;
  }
  for (int i = 0; i < kMR; ++i) {
    float *ci = c + i * ldc;
    if (add) {
      for (int j = 0; j < NR; ++j) ci[j] = ci[j] + acc[i][j];
    } else {
      for (int j = 0; j < NR; ++j) ci[j] = acc[i][j];
    }
  }
}
#endif

#if LLMT_X86_SIMD
LLMT_TARGET_AVX2 void ukr_avx2_6x16(int64_t kc, const float *a, int64_t ars, int64_t acs, int64_t h,
                                    const float *__restrict b, float *__restrict c, int64_t ldc, bool add) {
  const float *r[kMR];
  row_ptrs(a, ars, h, r);
  const float *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3], *r4 = r[4], *r5 = r[5];
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
         c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
         c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
         c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0, off = 0; k < kc; ++k, off += acs) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 ai = _mm256_broadcast_ss(r0 + off);
    c00 = _mm256_fmadd_ps(ai, b0, c00);
    c01 = _mm256_fmadd_ps(ai, b1, c01);
    ai = _mm256_broadcast_ss(r1 + off);
    c10 = _mm256_fmadd_ps(ai, b0, c10);
    c11 = _mm256_fmadd_ps(ai, b1, c11);
    ai = _mm256_broadcast_ss(r2 + off);
    c20 = _mm256_fmadd_ps(ai, b0, c20);
    c21 = _mm256_fmadd_ps(ai, b1, c21);
    ai = _mm256_broadcast_ss(r3 + off);
    c30 = _mm256_fmadd_ps(ai, b0, c30);
    c31 = _mm256_fmadd_ps(ai, b1, c31);
    ai = _mm256_broadcast_ss(r4 + off);
    c40 = _mm256_fmadd_ps(ai, b0, c40);
    c41 = _mm256_fmadd_ps(ai, b1, c41);
    ai = _mm256_broadcast_ss(r5 + off);
    c50 = _mm256_fmadd_ps(ai, b0, c50);
    c51 = _mm256_fmadd_ps(ai, b1, c51);
    b += 16;
  }
  const __m256 rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < 6; ++i) {
    float *ci = c + i * ldc;
    __m256 v0 = rows[i][0], v1 = rows[i][1];
    if (add) {
      v0 = _mm256_add_ps(_mm256_loadu_ps(ci), v0);
      v1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), v1);
    }
    _mm256_storeu_ps(ci, v0);
    _mm256_storeu_ps(ci + 8, v1);
  }
}

// The same with a 6×8 tile in SSE2 (mul + add, no FMA): 12 accumulators + 2 B vectors + 1 broadcast.
void ukr_sse_6x8(int64_t kc, const float *a, int64_t ars, int64_t acs, int64_t h, const float *__restrict b,
                 float *__restrict c, int64_t ldc, bool add) {
  const float *r[kMR];
  row_ptrs(a, ars, h, r);
  __m128 acc[6][2];
  for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm_setzero_ps();
  for (int64_t k = 0, off = 0; k < kc; ++k, off += acs) {
    const __m128 b0 = _mm_loadu_ps(b), b1 = _mm_loadu_ps(b + 4);
    for (int i = 0; i < 6; ++i) {
      const __m128 ai = _mm_set1_ps(r[i][off]);
      acc[i][0] = _mm_add_ps(acc[i][0], _mm_mul_ps(ai, b0));
      acc[i][1] = _mm_add_ps(acc[i][1], _mm_mul_ps(ai, b1));
    }
    b += 8;
  }
  for (int i = 0; i < 6; ++i) {
    float *ci = c + i * ldc;
    __m128 v0 = acc[i][0], v1 = acc[i][1];
    if (add) {
      v0 = _mm_add_ps(_mm_loadu_ps(ci), v0);
      v1 = _mm_add_ps(_mm_loadu_ps(ci + 4), v1);
    }
    _mm_storeu_ps(ci, v0);
    _mm_storeu_ps(ci + 4, v1);
  }
}

bool cpu_has_avx2_fma() {
#if defined(_MSC_VER) && !defined(__clang__)
  int r[4];
  __cpuid(r, 0);
  if (r[0] < 7) return false;
  __cpuid(r, 1);
  const bool fma = (r[2] & (1 << 12)) != 0, osxsave = (r[2] & (1 << 27)) != 0, avx = (r[2] & (1 << 28)) != 0;
  if (!fma || !osxsave || !avx || (_xgetbv(0) & 6) != 6) return false;  // the OS saves ymm state
  __cpuidex(r, 7, 0);
  return (r[1] & (1 << 5)) != 0;
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}
#endif

struct GemmKernel {
  int64_t nr;
  Ukr ukr;
};

GemmKernel select_kernel() {
  const char *env = std::getenv("LLMT_CPU_KERNELS");  // "generic": skip AVX2 (SSE2 on x86)
  const bool generic = env != nullptr && std::strcmp(env, "generic") == 0;
#if LLMT_X86_SIMD
  if (!generic && cpu_has_avx2_fma()) return {16, ukr_avx2_6x16};
  return {8, ukr_sse_6x8};
#else
  (void)generic;
  return {8, ukr_generic<8>};
#endif
}

const GemmKernel &gemm_kernel() {
  static const GemmKernel k = select_kernel();
  return k;
}

// Packs rows [i0, i0+mc) × depth [k0, k0+kc) of A into kMR-row panels: dst[panel][k][kMR], zero-padded.
void pack_a(const View &A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float *__restrict dst) {
  for (int64_t ip = 0; ip < mc; ip += kMR) {
    const int64_t h = std::min(kMR, mc - ip);
    float *__restrict d = dst + ip * kc;
    if (A.cs == 1) {
      for (int64_t i = 0; i < h; ++i) {
        const float *__restrict s = A.p + (i0 + ip + i) * A.rs + k0;
        for (int64_t k = 0; k < kc; ++k) d[k * kMR + i] = s[k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float *__restrict s = A.p + (k0 + k) * A.cs + (i0 + ip) * A.rs;
        for (int64_t i = 0; i < h; ++i) d[k * kMR + i] = s[i * A.rs];
      }
    }
    for (int64_t i = h; i < kMR; ++i)
      for (int64_t k = 0; k < kc; ++k) d[k * kMR + i] = 0.0f;
  }
}

// Copies w ≤ 4 rows of kc floats (row j at s + j·ld) into 4 columns of d (row stride nr): d[k·nr + j] = row j [k].
// Rows w..3 are zeros. Four rows at a time in 4×4 register transposes: each store writes 16 contiguous bytes, where
// one element at a time would touch a new cache line per write (the source rows are K apart: an nt GEMM's weight).
inline void transpose_rows4(const float *s, int64_t ld, int64_t w, int64_t kc, int64_t nr, float *__restrict d) {
  int64_t k = 0;
#if LLMT_X86_SIMD
  if (w == 4) {
    const float *s0 = s, *s1 = s + ld, *s2 = s + 2 * ld, *s3 = s + 3 * ld;
    for (; k + 4 <= kc; k += 4) {
      __m128 r0 = _mm_loadu_ps(s0 + k), r1 = _mm_loadu_ps(s1 + k), r2 = _mm_loadu_ps(s2 + k), r3 = _mm_loadu_ps(s3 + k);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(d + (k + 0) * nr, r0);
      _mm_storeu_ps(d + (k + 1) * nr, r1);
      _mm_storeu_ps(d + (k + 2) * nr, r2);
      _mm_storeu_ps(d + (k + 3) * nr, r3);
    }
  }
#endif
  for (; k < kc; ++k) {
    float *dk = d + k * nr;
    for (int64_t j = 0; j < 4; ++j) dk[j] = j < w ? s[j * ld + k] : 0.0f;
  }
}

// Packs one panel: B's columns [j, j+w) (w ≤ nr, zero-padded to nr) × depth [k0, k0+kc) into d[k][nr].
void pack_panel(const View &B, int64_t nr, int64_t j, int64_t w, int64_t k0, int64_t kc, float *__restrict d) {
  if (B.dec) {  // decoded B: same panel layout, elements fetched through the decoder
    if (B.cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        float *dk = d + k * nr;
        B.dec->fn(B.dec->ctx, (k0 + k) * B.rs + j, w, dk);
        for (int64_t jj = w; jj < nr; ++jj) dk[jj] = 0.0f;
      }
    } else {  // B.rs == 1 (nt): four columns decoded, then transposed into place
      float *cols = scratch(2, static_cast<size_t>(4 * kc));
      for (int64_t j4 = 0; j4 < nr; j4 += 4) {
        const int64_t w4 = std::max<int64_t>(0, std::min<int64_t>(4, w - j4));
        for (int64_t jj = 0; jj < w4; ++jj) B.dec->fn(B.dec->ctx, (j + j4 + jj) * B.cs + k0 * B.rs, kc, cols + jj * kc);
        transpose_rows4(cols, kc, w4, kc, nr, d + j4);
      }
    }
    return;
  }
  if (B.cs == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const float *__restrict s = B.p + (k0 + k) * B.rs + j;
      float *__restrict dk = d + k * nr;
      for (int64_t jj = 0; jj < w; ++jj) dk[jj] = s[jj];
      for (int64_t jj = w; jj < nr; ++jj) dk[jj] = 0.0f;
    }
  } else if (B.rs == 1) {  // nt: column j is a contiguous row of the weight
    for (int64_t j4 = 0; j4 < nr; j4 += 4) {
      const int64_t w4 = std::max<int64_t>(0, std::min<int64_t>(4, w - j4));
      transpose_rows4(B.p + (j + j4) * B.cs + k0, B.cs, w4, kc, nr, d + j4);
    }
  } else {
    for (int64_t jj = 0; jj < w; ++jj) {
      const float *__restrict s = B.p + (j + jj) * B.cs + k0 * B.rs;
      for (int64_t k = 0; k < kc; ++k) d[k * nr + jj] = s[k * B.rs];
    }
    for (int64_t jj = w; jj < nr; ++jj)
      for (int64_t k = 0; k < kc; ++k) d[k * nr + jj] = 0.0f;
  }
}

// Packs panels [p0, p1) (nr columns each) of B's columns [j0, j0+nc) × depth [k0, k0+kc): dst[panel][k][nr].
void pack_b(const View &B, int64_t nr, int64_t j0, int64_t nc, int64_t k0, int64_t kc, int64_t p0, int64_t p1,
            float *__restrict dst) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t jp = p * nr;
    pack_panel(B, nr, j0 + jp, std::min(nr, nc - jp), k0, kc, dst + jp * kc);
  }
}

// One micro-tile of C (h ≤ kMR rows, w ≤ nr columns) from a packed panel: the full-tile kernel in place, an edge
// tile through a scratch tile with the same arithmetic.
inline void micro_tile(Ukr ukr, int64_t nr, int64_t kc, const float *ap, int64_t ars, int64_t acs, int64_t h,
                       const float *bp, float *c, int64_t ldc, int64_t w, bool add) {
  if (h == kMR && w == nr) {
    ukr(kc, ap, ars, acs, h, bp, c, ldc, add);
    return;
  }
  float tile[kMR * kMaxNR];
  ukr(kc, ap, ars, acs, h, bp, tile, nr, false);
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) c[i * ldc + j] = add ? c[i * ldc + j] + tile[i * nr + j] : tile[i * nr + j];
}

void gemm(const View &A, const View &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const int64_t ldc = N;
  if (K <= 0) {
    if (!accumulate) std::memset(C, 0, sizeof(float) * static_cast<size_t>(M * N));
    return;
  }
  const GemmKernel &gk = gemm_kernel();
  const int64_t nr = gk.nr;
  const Ukr ukr = gk.ukr;
  const int64_t threads = num_threads();
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  // Few rows (a decoding step: one row per sequence): a B panel serves only them, so each task packs its panels one
  // at a time into its own L1-sized buffer and uses each at once — a shared packed copy of all of B (a weight's
  // size, written and read back through memory) would cost more than the products. A is read in place.
  const bool few_rows = M <= kFewRows;
  // Narrow N: an A block would serve few panels, so packing it costs more than it saves; read it in place.
  const bool direct_a = few_rows || N <= 4 * nr;
  float *bbuf = few_rows ? nullptr : scratch(0, static_cast<size_t>(kKC * kNC));  // the caller's: shared by the tasks

  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    const int64_t panels = (nc + nr - 1) / nr;
    // Task grid: M split into parts of whole micro-rows; when M is short, N panels are split too.
    const int64_t units = (M + kMR - 1) / kMR;
    const int64_t want = flops < 2e5 ? 1 : threads;
    const int64_t mparts = few_rows ? 1 : std::min(want, units);
    const int64_t nparts = std::max<int64_t>(1, std::min(want / mparts, panels));
    const int64_t tasks = mparts * nparts;

    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const bool add = accumulate || pc > 0;
      if (few_rows) {
        par(tasks, tasks, [&](int64_t t0, int64_t t1) {
          float *pb = scratch(1, static_cast<size_t>(kKC * kMaxNR));
          for (int64_t t = t0; t < t1; ++t) {
            for (int64_t p = panels * t / nparts; p < panels * (t + 1) / nparts; ++p) {
              const int64_t jp = p * nr, w = std::min(nr, nc - jp);
              pack_panel(B, nr, jc + jp, w, pc, kc, pb);
              for (int64_t ir = 0; ir < M; ir += kMR)
                micro_tile(ukr, nr, kc, A.p + ir * A.rs + pc * A.cs, A.rs, A.cs, std::min(kMR, M - ir), pb,
                           C + ir * ldc + jc + jp, ldc, w, add);
            }
          }
        });
        continue;
      }
      par(panels, chunks_for(panels, 4.0 * static_cast<double>(kc * nc)),
          [&](int64_t p0, int64_t p1) { pack_b(B, nr, jc, nc, pc, kc, p0, p1, bbuf); });
      par(tasks, tasks, [&](int64_t t0, int64_t t1) {
        float *abuf = direct_a ? nullptr : scratch(1, static_cast<size_t>(kMC * kKC));
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t mq = t / nparts, nq = t % nparts;
          const int64_t m0 = std::min(M, units * mq / mparts * kMR);
          const int64_t m1 = std::min(M, units * (mq + 1) / mparts * kMR);
          const int64_t p0 = panels * nq / nparts, p1 = panels * (nq + 1) / nparts;
          for (int64_t ic = m0; ic < m1; ic += kMC) {
            const int64_t mc = std::min(kMC, m1 - ic);
            if (!direct_a) pack_a(A, ic, mc, pc, kc, abuf);
            for (int64_t p = p0; p < p1; ++p) {
              const int64_t jp = p * nr, w = std::min(nr, nc - jp);
              const float *bp = bbuf + jp * kc;
              for (int64_t ir = 0; ir < mc; ir += kMR) {
                const float *ap = direct_a ? A.p + (ic + ir) * A.rs + pc * A.cs : abuf + ir * kc;
                micro_tile(ukr, nr, kc, ap, direct_a ? A.rs : 1, direct_a ? A.cs : kMR, std::min(kMR, mc - ir), bp,
                           C + (ic + ir) * ldc + jc + jp, ldc, w, add);
              }
            }
          }
        }
      });
    }
  }
}

}  // namespace

// ---- matrix products ---------------------------------------------------------------------------------------

void matmul_nt(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  gemm(View{A, K, 1}, View{B, 1, K}, C, M, N, K, accumulate);  // B(k,j) = B[j·K + k]
}

void matmul_nn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  gemm(View{A, K, 1}, View{B, N, 1}, C, M, N, K, accumulate);
}

void matmul_tn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  gemm(View{A, 1, M}, View{B, N, 1}, C, M, N, K, accumulate);  // A(i,k) = A[k·M + i]
}

void matmul_nt_dec(const float *A, const BDecoder &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  gemm(View{A, K, 1}, View{nullptr, 1, K, &B}, C, M, N, K, accumulate);
}

void matmul_nn_dec(const float *A, const BDecoder &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  gemm(View{A, K, 1}, View{nullptr, N, 1, &B}, C, M, N, K, accumulate);
}

// y[rows,cols] += b[cols]
void add_bias(float *y, const float *b, int64_t rows, int64_t cols) {
  par(rows, chunks_for(rows, static_cast<double>(rows * cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float *__restrict yr = y + r * cols;
      for (int64_t c = 0; c < cols; ++c) yr[c] += b[c];
    }
  });
}

namespace {
constexpr int64_t kColBlock = 256;  // column strip reduced by one task over all rows (in row order)

// out[c] += Σ_r f(r, c) for c in [0, cols): each strip of kColBlock columns is summed by one thread over rows
// in order, into a local strip, then added to out — so calling twice from 0 gives exactly 2× the first call.
template <class RowFn>
void column_reduce(float *out, int64_t rows, int64_t cols, double work_per_elem, RowFn &&row) {
  const int64_t strips = (cols + kColBlock - 1) / kColBlock;
  par(strips, chunks_for(strips, work_per_elem * static_cast<double>(rows * cols)), [&](int64_t s0, int64_t s1) {
    float acc[kColBlock];
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t c0 = s * kColBlock, w = std::min(kColBlock, cols - c0);
      for (int64_t c = 0; c < w; ++c) acc[c] = 0.0f;
      for (int64_t r = 0; r < rows; ++r) row(r, c0, w, acc);
      for (int64_t c = 0; c < w; ++c) out[c0 + c] += acc[c];
    }
  });
}
}  // namespace

// db[cols] += Σ_rows dy[rows,cols]
void bias_backward(const float *dy, float *db, int64_t rows, int64_t cols) {
  column_reduce(db, rows, cols, 1.0, [&](int64_t r, int64_t c0, int64_t w, float *__restrict acc) {
    const float *__restrict d = dy + r * cols + c0;
    for (int64_t c = 0; c < w; ++c) acc[c] += d[c];
  });
}

// ---- normalisation -------------------------------------------------------------------------------------------

void rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols, float eps) {
  par(rows, chunks_for(rows, 3.0 * static_cast<double>(rows * cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *__restrict xr = x + r * cols;
      float *__restrict yr = y + r * cols;
      const float ms = dot(xr, xr, cols) / static_cast<float>(cols);
      const float rs = 1.0f / std::sqrt(ms + eps);
      if (rstd) rstd[r] = rs;
      if (w) {
        for (int64_t c = 0; c < cols; ++c) yr[c] = w[c] * (xr[c] * rs);
      } else {
        for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] * rs;
      }
    }
  });
}

// x̂ = x·r; y = w⊙x̂. dx = r·(w⊙dy) − r³/cols · Σ(w⊙dy⊙x) · x;  dw += Σ_rows dy⊙x̂. dw first, and dy is
// read whole before dx is written, so dx may alias dy.
void rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw,
                      int64_t rows, int64_t cols) {
  if (dw) {
    column_reduce(dw, rows, cols, 2.0, [&](int64_t r, int64_t c0, int64_t w_, float *__restrict acc) {
      const float *__restrict xr = x + r * cols + c0;
      const float *__restrict dyr = dy + r * cols + c0;
      const float rs = rstd[r];
      for (int64_t c = 0; c < w_; ++c) acc[c] += dyr[c] * (xr[c] * rs);
    });
  }
  par(rows, chunks_for(rows, 6.0 * static_cast<double>(rows * cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = x + r * cols, *dyr = dy + r * cols;
      float *dxr = dx + r * cols;
      const float rs = rstd[r];
      float *g = scratch(2, static_cast<size_t>(cols));  // w⊙dy
      if (w) {
        for (int64_t c = 0; c < cols; ++c) g[c] = w[c] * dyr[c];
      } else {
        for (int64_t c = 0; c < cols; ++c) g[c] = dyr[c];
      }
      const float s = dot(g, xr, cols);
      const float coef = rs * rs * rs * s / static_cast<float>(cols);
      for (int64_t c = 0; c < cols; ++c) dxr[c] = rs * g[c] - coef * xr[c];
    }
  });
}

void layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                       int64_t rows, int64_t cols, float eps) {
  par(rows, chunks_for(rows, 5.0 * static_cast<double>(rows * cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *__restrict xr = x + r * cols;
      float *__restrict yr = y + r * cols;
      const float mu = sum(xr, cols) / static_cast<float>(cols);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 8 <= cols; c += 8)
        for (int u = 0; u < 8; ++u) {
          const float d = xr[c + u] - mu;
          acc[u] += d * d;
        }
      float var = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      for (; c < cols; ++c) var += (xr[c] - mu) * (xr[c] - mu);
      var /= static_cast<float>(cols);
      const float rs = 1.0f / std::sqrt(var + eps);
      if (mean) mean[r] = mu;
      if (rstd) rstd[r] = rs;
      for (int64_t j = 0; j < cols; ++j) {
        const float xh = (xr[j] - mu) * rs;
        yr[j] = (w ? xh * w[j] : xh) + (b ? b[j] : 0.0f);
      }
    }
  });
}

// x̂ = (x−μ)·r; g = w⊙dy. dx = r·(g − mean(g) − x̂·mean(g⊙x̂)); dw += Σ dy⊙x̂; db += Σ dy. As in RMSNorm,
// dx may alias dy.
void layernorm_backward(const float *dy, const float *x, const float *w, const float *mean, const float *rstd,
                        float *dx, float *dw, float *db, int64_t rows, int64_t cols) {
  if (dw) {
    column_reduce(dw, rows, cols, 3.0, [&](int64_t r, int64_t c0, int64_t w_, float *__restrict acc) {
      const float *__restrict xr = x + r * cols + c0;
      const float *__restrict dyr = dy + r * cols + c0;
      const float mu = mean[r], rs = rstd[r];
      for (int64_t c = 0; c < w_; ++c) acc[c] += dyr[c] * ((xr[c] - mu) * rs);
    });
  }
  if (db) bias_backward(dy, db, rows, cols);
  par(rows, chunks_for(rows, 8.0 * static_cast<double>(rows * cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = x + r * cols, *dyr = dy + r * cols;
      float *dxr = dx + r * cols;
      const float mu = mean[r], rs = rstd[r];
      float *g = scratch(2, static_cast<size_t>(cols));
      float *xh = scratch(3, static_cast<size_t>(cols));
      for (int64_t c = 0; c < cols; ++c) {
        g[c] = w ? w[c] * dyr[c] : dyr[c];
        xh[c] = (xr[c] - mu) * rs;
      }
      const float mg = sum(g, cols) / static_cast<float>(cols);
      const float mgx = dot(g, xh, cols) / static_cast<float>(cols);
      for (int64_t c = 0; c < cols; ++c) dxr[c] = rs * (g[c] - mg - xh[c] * mgx);
    }
  });
}

// ---- rotary embeddings ---------------------------------------------------------------------------------------

namespace {
// Rotates the first rot_dims of every head of x[rows, heads, head_dim] by sign·angle (pairs i, i + rot_dims/2).
void rope_apply(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim,
                int64_t rot_dims, float pos_scale, float sign, bool interleaved) {
  const int64_t half = rot_dims / 2;
  if (half <= 0 || rows <= 0 || heads <= 0) return;
  par(rows, chunks_for(rows, 6.0 * static_cast<double>(rows * heads * rot_dims)), [&](int64_t r0, int64_t r1) {
    float *cs = scratch(2, static_cast<size_t>(2 * half));
    float *sn = cs + half;
    for (int64_t r = r0; r < r1; ++r) {
      const float t = static_cast<float>(pos[r]) * pos_scale;  // fp32, as HF
      for (int64_t i = 0; i < half; ++i) {
        const float ang = t * inv_freq[i];
        cs[i] = std::cos(ang);
        sn[i] = sign * std::sin(ang);
      }
      for (int64_t h = 0; h < heads; ++h) {
        float *__restrict xh = x + (r * heads + h) * head_dim;
        if (interleaved) {  // ChatGLM2: pairs (2i, 2i+1)
          for (int64_t i = 0; i < half; ++i) {
            const float a = xh[2 * i], b = xh[2 * i + 1];
            xh[2 * i] = a * cs[i] - b * sn[i];
            xh[2 * i + 1] = b * cs[i] + a * sn[i];
          }
          continue;
        }
        float *__restrict x1 = xh;
        float *__restrict x2 = x1 + half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = x1[i], b = x2[i];
          x1[i] = a * cs[i] - b * sn[i];  // HF: x·cos + rotate_half(x)·sin, rotate_half = cat(−x2, x1)
          x2[i] = b * cs[i] + a * sn[i];
        }
      }
    }
  });
}
}  // namespace

void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads, int64_t head_dim,
                  int64_t rot_dims, float pos_scale, bool interleaved) {
  rope_apply(x, pos, inv_freq, rows, heads, head_dim, rot_dims, pos_scale, 1.0f, interleaved);
}

void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads,
                   int64_t head_dim, int64_t rot_dims, float pos_scale, bool interleaved) {
  rope_apply(dx, pos, inv_freq, rows, heads, head_dim, rot_dims, pos_scale, -1.0f, interleaved);
}

// ---- activations -----------------------------------------------------------------------------------------------

void swiglu_forward(const float *gate, const float *up, float *out, int64_t n) {
  par(n, chunks_for(n, 20.0 * static_cast<double>(n)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = gate[i];
      const float sg = 1.0f / (1.0f + exp_fast(-g));
      out[i] = (g * sg) * up[i];
    }
  });
}

// out = g·σ(g)·u: dgate = dout·u·σ(g)·(1 + g·(1 − σ(g))), dup = dout·g·σ(g).
void swiglu_backward(const float *dout, const float *gate, const float *up, float *dgate, float *dup, int64_t n) {
  par(n, chunks_for(n, 25.0 * static_cast<double>(n)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = gate[i], u = up[i], d = dout[i];
      const float sg = 1.0f / (1.0f + exp_fast(-g));
      dgate[i] = d * u * (sg * (1.0f + g * (1.0f - sg)));
      dup[i] = d * (g * sg);
    }
  });
}

namespace {
constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/π)
constexpr float kGeluA = 0.044715f;
}  // namespace

void gelu_forward(const float *x, float *y, int64_t n, Gelu kind) {
  par(n, chunks_for(n, 40.0 * static_cast<double>(n)), [&](int64_t b, int64_t e) {
    if (kind == Gelu::Erf) {
      for (int64_t i = b; i < e; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kSqrt1_2));
    } else {  // ½x(1 + tanh u) = x·σ(2u): exact identity, vectorises, keeps relative accuracy for x ≪ 0
      for (int64_t i = b; i < e; ++i) {
        const float v = x[i];
        const float u = kGeluC * (v + kGeluA * v * v * v);
        y[i] = v / (1.0f + exp_fast(-2.0f * u));
      }
    }
  });
}

void gelu_backward(const float *dy, const float *x, float *dx, int64_t n, Gelu kind) {
  par(n, chunks_for(n, 60.0 * static_cast<double>(n)), [&](int64_t b, int64_t e) {
    if (kind == Gelu::Erf) {  // d/dx x·Φ(x) = Φ(x) + x·φ(x)
      for (int64_t i = b; i < e; ++i) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + std::erf(v * kSqrt1_2));
        const float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
      }
    } else {  // y = x·s, s = σ(2u) = ½(1 + tanh u), u = c(x + a·x³): y' = s + 2x·s(1−s)·c(1 + 3a·x²)
      for (int64_t i = b; i < e; ++i) {
        const float v = x[i];
        const float u = kGeluC * (v + kGeluA * v * v * v);
        const float sg = 1.0f / (1.0f + exp_fast(-2.0f * u));
        dx[i] = dy[i] * (sg + 2.0f * v * sg * (1.0f - sg) * kGeluC * (1.0f + 3.0f * kGeluA * v * v));
      }
    }
  });
}

// ---- attention ---------------------------------------------------------------------------------------------------
// q row (b,i,h) at q + ((b·T + i)·nh + h)·hd; k/v row (b,j,g) at k + ((b·T + j)·nkv + g)·hd; lse at (b·nh + h)·T + i.
// Flash-style, in tiles of kAQ queries × kAK keys: every product of a tile (S = Q·Kᵀ, dP = dO·Vᵀ, P·V, Pᵀ·dO,
// dSᵀ·Q, dS·K) runs on the GEMM micro-kernel over operands packed into its panels, and the forward keeps an
// online softmax (running max, sum, output) per query row across key tiles — per-thread scratch O(kAQ·(kAK + hd)),
// never a row of T scores; the packed operands (the size of K and V, and of Q and dO in the backward) are shared by
// the threads. Each element of a product is one dot product in a fixed order, the same
// whichever rows share its tile, and a row's softmax depends only on the key tiles (aligned at key 0), so a
// query's result does not depend on T, B or the thread count. Work items pair block p with block n−1−p so
// contiguous chunks carry equal work under the causal triangle.

namespace {
constexpr int64_t kAQ = 96;  // queries per tile (a multiple of kMR)
constexpr int64_t kAK = 64;  // keys per tile (a multiple of every NR)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The 1 or 2 blocks of work-item pair `pair` out of nblocks: p and n−1−p.
inline int pair_blocks(int64_t pair, int64_t nblocks, int64_t out[2]) {
  out[0] = pair;
  out[1] = nblocks - 1 - pair;
  return out[1] == pair ? 1 : 2;
}

// Panels of a product's right operand, dst[p][k][nr] (kc × nr each, zero-padded):
// pack_t: column c of the product is row c of src (stride rs) and depth k its element k — Kᵀ or Vᵀ for S, dP;
// pack_n: depth k is row k of src (stride rs, rows ≥ kc_valid zero) and column c its element c — V, K, dO, Q.
void pack_t(const float *src, int64_t rs, int64_t n, int64_t kc, int64_t nr, int64_t panels, float *__restrict dst) {
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t c = 0; c < nr; ++c) {
      const int64_t col = p * nr + c;
      float *__restrict d = dst + p * kc * nr + c;
      if (col < n) {
        const float *__restrict s = src + col * rs;
        for (int64_t k = 0; k < kc; ++k) d[k * nr] = s[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) d[k * nr] = 0.0f;
      }
    }
}
void pack_n(const float *src, int64_t rs, int64_t kc, int64_t n, int64_t nr, int64_t panels, float *__restrict dst) {
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < kc; ++k) {
      const float *__restrict s = src + k * rs + p * nr;
      float *__restrict d = dst + (p * kc + k) * nr;
      const int64_t w = std::min(nr, n - p * nr);
      for (int64_t c = 0; c < w; ++c) d[c] = s[c];
      for (int64_t c = w; c < nr; ++c) d[c] = 0.0f;
    }
}

// C[rows, panels·nr] (+)= A[rows, kc]·Bp, A(r, k) = a[r·ars + k·acs], Bp packed by pack_t/pack_n; C has row stride
// ldc and room for ⌈rows/kMR⌉·kMR rows (the micro-kernel writes whole tiles).
void tile_mm(const GemmKernel &gk, const float *a, int64_t ars, int64_t acs, int64_t rows, int64_t kc, const float *bp,
             int64_t panels, float *c, int64_t ldc, bool add) {
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t r = 0; r < rows; r += kMR)
      gk.ukr(kc, a + r * ars, ars, acs, std::min(kMR, rows - r), bp + p * kc * gk.nr, c + r * ldc + p * gk.nr, ldc,
             add);
}

// Every tile of the operands below packed once per call into the calling thread's scratch, shared read-only by
// the work items: an operand x[B, T, heads, hd] (row stride heads·hd) in tiles of tr rows, by pack_t (t) or
// pack_n; tile jt of (b, head) at dst + ((b·heads + head)·ntiles + jt)·tr·hdp.
struct PackJob {
  const float *x;
  bool t;
  float *dst;
};
void pack_all(const GemmKernel &gk, int64_t B, int64_t T, int64_t heads, int64_t hd, int64_t hdp, int64_t tr,
              std::initializer_list<PackJob> jobs) {
  const int64_t ntiles = (T + tr - 1) / tr, n = B * heads * ntiles, nr = gk.nr, rs = heads * hd;
  par(n, chunks_for(n, 2.0 * static_cast<double>(jobs.size()) * static_cast<double>(B * T * heads * hd)),
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t b = t / (heads * ntiles), head = (t / ntiles) % heads, j0 = (t % ntiles) * tr;
          const int64_t nj = std::min(tr, T - j0);
          for (const PackJob &j : jobs) {
            const float *src = j.x + (b * T + j0) * rs + head * hd;
            if (j.t)
              pack_t(src, rs, nj, hd, nr, (nj + nr - 1) / nr, j.dst + t * tr * hdp);
            else
              pack_n(src, rs, nj, hd, nr, hdp / nr, j.dst + t * tr * hdp);
          }
        }
      });
}

// The keys of a key tile that query i sees, tile-relative [lo, hi] (hi < lo: none): causal (or the prefix for
// every query), and not before the query's sample in a packed row.
struct Visible {
  int64_t lo, hi;
};
inline Visible visible(int64_t i, int64_t j0, int64_t nj, int64_t P, int64_t seg) {
  return {std::max<int64_t>(seg - j0, 0), std::min(std::max(i, P - 1) - j0, nj - 1)};
}

// One head's view of the inputs and the tile geometry shared by the forward and both backward passes.
struct AttnTile {
  const GemmKernel &gk;
  int64_t T, nh, nkv, hd, hdp, qs, ks;
  float scale;
  const int32_t *seg_start;
  const float *alibi;
  const int32_t *prefix;

  int64_t seg(int64_t b, int64_t i) const { return seg_start ? seg_start[b * T + i] : 0; }
  int64_t pref(int64_t b) const { return prefix ? std::min<int64_t>(prefix[b], T) : 0; }
  // No row of queries [i0, i0+ni) sees keys [j0, j0+nj) (their samples begin after the tile).
  bool tile_hidden(int64_t b, int64_t i0, int64_t ni, int64_t j0, int64_t nj) const {
    if (!seg_start) return false;
    for (int64_t r = 0; r < ni; ++r)
      if (seg(b, i0 + r) < j0 + nj) return false;
    return true;
  }
  // S[ni, kp] = x-rows · Kᵀ-panels (x row r at x + r·xs), kp = the tile's panels·nr columns.
  void product_t(const float *x, int64_t xs, int64_t ni, const float *panels_t, int64_t panels, float *S) const {
    tile_mm(gk, x, xs, 1, ni, hd, panels_t, panels, S, panels * gk.nr, false);
  }
};

// The per-row softmax steps, written once and compiled twice on x86 (AVX2+FMA, and the baseline), the version
// picked with the GEMM micro-kernel: they are a third of the work at head_dim 64 when compiled for SSE alone.

// A row of dot products → the scaled scores (ALiBi added: slope·key index in the row) on the visible keys.
LLMT_INLINE void scale_scores(float *__restrict s, Visible vk, int64_t j0, float scale, float slope) {
  for (int64_t jj = vk.lo; jj <= vk.hi; ++jj) s[jj] = scale * s[jj];
  if (slope != 0.0f)
    for (int64_t jj = vk.lo; jj <= vk.hi; ++jj) s[jj] += slope * static_cast<float>(j0 + jj);
}
// The row's probabilities exp(s − ref) on its visible keys, 0 on the others (up to nj).
LLMT_INLINE void exp_visible(float *__restrict s, Visible vk, int64_t nj, float ref) {
  for (int64_t jj = 0; jj < std::min(vk.lo, nj); ++jj) s[jj] = 0.0f;
  for (int64_t jj = vk.lo; jj <= vk.hi; ++jj) s[jj] = exp_fast(s[jj] - ref);
  for (int64_t jj = std::max(vk.hi + 1, vk.lo); jj < nj; ++jj) s[jj] = 0.0f;
}
// Forward, one row with visible keys: P = exp(s − m′) in s (zeros up to a multiple of 8 keys past nj),
// m′ = max(*m, the row's max); *l ← *l·α + ΣP, *m ← m′; returns α = exp(m − m′) (0 while m = −inf).
LLMT_INLINE float row_fwd_body(float *__restrict s, Visible vk, int64_t nj, int64_t j0, float scale, float slope,
                               float *m, float *l) {
  scale_scores(s, vk, j0, scale, slope);
  float bm = *m;
  for (int64_t jj = vk.lo; jj <= vk.hi; ++jj) bm = s[jj] > bm ? s[jj] : bm;
  const float alpha = exp_fast(*m - bm);
  // Σ P in 8 fixed lanes over whole groups of 8 keys (zeros past nj; s has room: its row is whole panels), so a key
  // tile cut short by T sums its row as the full tile would.
  const int64_t n8 = (nj + 7) / 8 * 8;
  exp_visible(s, vk, n8, bm);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t jj = 0; jj < n8; jj += 8)
    for (int u = 0; u < 8; ++u) acc[u] += s[jj + u];
  *l = *l * alpha + (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
  *m = bm;
  return alpha;
}
// Backward, one row: P = exp(s − lse) in s (0 where not visible), dS = P·(dP − D) in dp.
LLMT_INLINE void row_bwd_body(float *__restrict s, float *__restrict dp, Visible vk, int64_t nj, int64_t j0,
                              float scale, float slope, float lse, float D) {
  scale_scores(s, vk, j0, scale, slope);
  exp_visible(s, vk, nj, lse);
  for (int64_t jj = 0; jj < nj; ++jj) dp[jj] = s[jj] * (dp[jj] - D);
}
float row_fwd_base(float *s, Visible vk, int64_t nj, int64_t j0, float scale, float slope, float *m, float *l) {
  return row_fwd_body(s, vk, nj, j0, scale, slope, m, l);
}
void row_bwd_base(float *s, float *dp, Visible vk, int64_t nj, int64_t j0, float scale, float slope, float lse,
                  float D) {
  row_bwd_body(s, dp, vk, nj, j0, scale, slope, lse, D);
}
#if LLMT_X86_SIMD
LLMT_TARGET_AVX2 float row_fwd_avx2(float *s, Visible vk, int64_t nj, int64_t j0, float scale, float slope, float *m,
                                    float *l) {
  return row_fwd_body(s, vk, nj, j0, scale, slope, m, l);
}
LLMT_TARGET_AVX2 void row_bwd_avx2(float *s, float *dp, Visible vk, int64_t nj, int64_t j0, float scale, float slope,
                                   float lse, float D) {
  row_bwd_body(s, dp, vk, nj, j0, scale, slope, lse, D);
}
#endif
struct RowOps {
  float (*fwd)(float *, Visible, int64_t, int64_t, float, float, float *, float *);
  void (*bwd)(float *, float *, Visible, int64_t, int64_t, float, float, float, float);
};
RowOps row_ops(const GemmKernel &gk) {
#if LLMT_X86_SIMD
  if (gk.ukr == ukr_avx2_6x16) return {row_fwd_avx2, row_bwd_avx2};
#endif
  (void)gk;
  return {row_fwd_base, row_bwd_base};
}
}  // namespace

void attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                       int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                       const int32_t *prefix) {
  if (B <= 0 || T <= 0 || nh <= 0 || hd <= 0) return;
  const GemmKernel &gk = gemm_kernel();
  const int64_t nr = gk.nr, hdp = round_up(hd, nr), group = nh / nkv;
  const AttnTile at{gk, T, nh, nkv, hd, hdp, nh * hd, nkv * hd, scale, seg_start, alibi, prefix};
  const RowOps ro = row_ops(gk);
  const int64_t nqb = (T + kAQ - 1) / kAQ, pairs = (nqb + 1) / 2, items = B * nh * pairs;
  const double work = 4.0 * static_cast<double>(B * nh) * static_cast<double>(T) * static_cast<double>(T + 1) / 2 *
                      static_cast<double>(hd + 4);
  // Kᵀ and V of every key tile, packed once: tile jt of (b, g) at ((b·nkv + g)·nkb + jt)·kAK·hdp
  const int64_t nkb = (T + kAK - 1) / kAK, kvsz = B * nkv * nkb * kAK * hdp;
  float *const kTall = scratch(0, static_cast<size_t>(2 * kvsz)), *const vPall = kTall + kvsz;
  pack_all(gk, B, T, nkv, hd, hdp, kAK, {{k, true, kTall}, {v, false, vPall}});
  par(items, chunks_for(items, work), [&](int64_t it0, int64_t it1) {
    // S [kAQ][kAK], O [kAQ][hdp], m, l [kAQ]
    float *S = scratch(3, static_cast<size_t>(kAQ * kAK + kAQ * hdp + 2 * kAQ));
    float *O = S + kAQ * kAK, *m = O + kAQ * hdp, *l = m + kAQ;
    for (int64_t it = it0; it < it1; ++it) {
      const int64_t b = it / (nh * pairs), h = (it / pairs) % nh, g = h / group;
      const float slope = alibi ? alibi[h] : 0.0f;
      const int64_t P = at.pref(b);
      int64_t blocks[2];
      const int nbl = pair_blocks(it % pairs, nqb, blocks);
      for (int bi = 0; bi < nbl; ++bi) {
        const int64_t i0 = blocks[bi] * kAQ, ni = std::min(kAQ, T - i0);
        const float *qb = q + (b * T + i0) * at.qs + h * hd;
        std::fill(m, m + ni, -std::numeric_limits<float>::infinity());
        std::fill(l, l + ni, 0.0f);
        std::fill(O, O + ni * hdp, 0.0f);
        for (int64_t j0 = 0; j0 < std::max(i0 + ni, P); j0 += kAK) {
          const int64_t nj = std::min(kAK, T - j0), panels = (nj + nr - 1) / nr, kp = panels * nr;
          if (at.tile_hidden(b, i0, ni, j0, nj)) continue;
          const int64_t tile = ((b * nkv + g) * nkb + j0 / kAK) * kAK * hdp;
          const float *kT = kTall + tile, *vP = vPall + tile;
          at.product_t(qb, at.qs, ni, kT, panels, S);
          for (int64_t r = 0; r < ni; ++r) {
            const Visible vk = visible(i0 + r, j0, nj, P, at.seg(b, i0 + r));
            float *s = S + r * kp;
            if (vk.hi < vk.lo) {  // nothing visible here: the row's state stays, its P row is zero
              std::fill(s, s + nj, 0.0f);
              continue;
            }
            const float alpha = ro.fwd(s, vk, nj, j0, scale, slope, m + r, l + r);
            if (alpha != 1.0f) {
              float *o = O + r * hdp;
              for (int64_t d = 0; d < hdp; ++d) o[d] *= alpha;
            }
          }
          tile_mm(gk, S, kp, 1, ni, nj, vP, hdp / nr, O, hdp, true);  // O += P·V
        }
        for (int64_t r = 0; r < ni; ++r) {
          const int64_t i = i0 + r;
          const float inv = 1.0f / l[r];
          float *oi = out + (b * T + i) * at.qs + h * hd;
          const float *o = O + r * hdp;
          for (int64_t d = 0; d < hd; ++d) oi[d] = o[d] * inv;
          lse[(b * nh + h) * T + i] = m[r] + std::log(l[r]);
        }
      }
    }
  });
}

// P_ij = exp(s_ij − lse_i), dP_ij = dout_i·v_j, D_i = dout_i·out_i, dS_ij = P_ij(dP_ij − D_i):
// dq_i = scale·Σ_j dS_ij k_j, dk_j = scale·Σ_(h in group, i≥j) dS_ij q_i, dv_j = Σ_(h, i≥j) P_ij dout_i.
// Three passes, each element reduced by one thread in a fixed order: (0) D_i, parked in dq[row·hd] (dq is
// overwritten at the end anyway); (1) dk, dv by key tiles over the group's heads, query tiles in order;
// (2) dq by query tiles, key tiles in order.
namespace {
// P and dS of one tile: S[ni, kp] (queries × keys) in, P out in S and dS in dP.
void tile_probs(const AttnTile &at, int64_t b, int64_t h, int64_t i0, int64_t ni, int64_t j0, int64_t nj, int64_t kp,
                const float *lse, const float *D, float *S, float *dP) {
  const RowOps ro = row_ops(at.gk);
  const float slope = at.alibi ? at.alibi[h] : 0.0f;
  const int64_t P = at.pref(b);
  for (int64_t r = 0; r < ni; ++r) {
    const int64_t i = i0 + r;
    ro.bwd(S + r * kp, dP + r * kp, visible(i, j0, nj, P, at.seg(b, i)), nj, j0, at.scale, slope,
           lse[(b * at.nh + h) * at.T + i], D[r]);
  }
}
}  // namespace

void attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                        const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh,
                        int64_t nkv, int64_t hd, float scale, const int32_t *seg_start, const float *alibi,
                        const int32_t *prefix) {
  if (B <= 0 || T <= 0 || nh <= 0 || hd <= 0) return;
  const GemmKernel &gk = gemm_kernel();
  const int64_t nr = gk.nr, hdp = round_up(hd, nr), group = nh / nkv;
  const AttnTile at{gk, T, nh, nkv, hd, hdp, nh * hd, nkv * hd, scale, seg_start, alibi, prefix};
  const int64_t qs = at.qs, ks = at.ks;
  const double tri = static_cast<double>(T) * static_cast<double>(T + 1) / 2;

  // (0) D_i into dq[row·hd].
  const int64_t qrows = B * T * nh;
  par(qrows, chunks_for(qrows, 2.0 * static_cast<double>(qrows * hd)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) dq[r * hd] = dot(dout + r * hd, out + r * hd, hd);
  });

  // Every operand tile packed once: Kᵀ, Vᵀ and K by key tiles of (b, g), Q and dO by query tiles of (b, h).
  const int64_t nkb = (T + kAK - 1) / kAK, nqb = (T + kAQ - 1) / kAQ;
  const int64_t kvsz = B * nkv * nkb * kAK * hdp, qsz = B * nh * nqb * kAQ * hdp;
  float *const kTall = scratch(0, static_cast<size_t>(3 * kvsz + 2 * qsz)), *const vTall = kTall + kvsz;
  float *const kPall = vTall + kvsz, *const qPall = kPall + kvsz, *const oPall = qPall + qsz;
  pack_all(gk, B, T, nkv, hd, hdp, kAK, {{k, true, kTall}, {v, true, vTall}, {k, false, kPall}});
  pack_all(gk, B, T, nh, hd, hdp, kAQ, {{q, false, qPall}, {dout, false, oPall}});
  auto ktile = [&](int64_t b, int64_t g, int64_t j0) { return ((b * nkv + g) * nkb + j0 / kAK) * kAK * hdp; };

  // (1) dk, dv: item = (b, g, key-tile pair). With few KV heads (MQA, GQA) and many threads the key tiles are cut into
  // sub-tiles of 32 or 16 keys (whole panels of the packed tiles): each dK/dV element sums over the same heads and query
  // tiles in the same order whatever the cut, so only the sharing of the work changes, not the results.
  int64_t sub = kAK;
  while (sub > nr && B * nkv * (((T + sub - 1) / sub + 1) / 2) < 4 * static_cast<int64_t>(num_threads())) sub /= 2;
  const int64_t nsb = (T + sub - 1) / sub, kpairs = (nsb + 1) / 2, items1 = B * nkv * kpairs;
  par(items1, chunks_for(items1, 8.0 * static_cast<double>(B * nh) * tri * static_cast<double>(hd + 4)),
      [&](int64_t it0, int64_t it1) {
        float *dK = scratch(2, static_cast<size_t>(2 * (kAK + kMR) * hdp));  // dK, dV [kAK + kMR][hdp]
        float *dV = dK + (kAK + kMR) * hdp;
        float *S = scratch(3, static_cast<size_t>(2 * kAQ * kAK + kAQ));
        float *dP = S + kAQ * kAK, *D = dP + kAQ * kAK;
        for (int64_t it = it0; it < it1; ++it) {
          const int64_t b = it / (nkv * kpairs), g = (it / kpairs) % nkv;
          const int64_t P = at.pref(b);
          int64_t blocks[2];
          const int nbl = pair_blocks(it % kpairs, nsb, blocks);
          for (int bi = 0; bi < nbl; ++bi) {
            const int64_t j0 = blocks[bi] * sub, nj = std::min(sub, T - j0), panels = (nj + nr - 1) / nr,
                          kp = panels * nr;
            const int64_t at_panel = ktile(b, g, j0) + (j0 % kAK) / nr * hd * nr;  // the sub-tile's first panel
            const float *kT = kTall + at_panel, *vT = vTall + at_panel;
            std::fill(dK, dK + nj * hdp, 0.0f);
            std::fill(dV, dV + nj * hdp, 0.0f);
            for (int64_t hh = 0; hh < group; ++hh) {
              const int64_t h = g * group + hh;
              for (int64_t i0 = j0 < P ? 0 : j0 / kAQ * kAQ; i0 < T; i0 += kAQ) {
                const int64_t ni = std::min(kAQ, T - i0);
                if (at.tile_hidden(b, i0, ni, j0, nj)) continue;
                const float *qb = q + (b * T + i0) * qs + h * hd, *ob = dout + (b * T + i0) * qs + h * hd;
                for (int64_t r = 0; r < ni; ++r) D[r] = dq[((b * T + i0 + r) * nh + h) * hd];
                at.product_t(qb, qs, ni, kT, panels, S);
                at.product_t(ob, qs, ni, vT, panels, dP);
                tile_probs(at, b, h, i0, ni, j0, nj, kp, lse, D, S, dP);
                const int64_t qtile = ((b * nh + h) * nqb + i0 / kAQ) * kAQ * hdp;
                const float *qP = qPall + qtile, *oP = oPall + qtile;
                tile_mm(gk, S, 1, kp, nj, ni, oP, hdp / nr, dV, hdp, true);   // dV += Pᵀ·dO
                tile_mm(gk, dP, 1, kp, nj, ni, qP, hdp / nr, dK, hdp, true);  // dK += dSᵀ·Q
              }
            }
            for (int64_t jj = 0; jj < nj; ++jj) {
              float *dkj = dk + (b * T + j0 + jj) * ks + g * hd, *dvj = dv + (b * T + j0 + jj) * ks + g * hd;
              const float *a = dK + jj * hdp, *c = dV + jj * hdp;
              for (int64_t d = 0; d < hd; ++d) {
                dkj[d] = scale * a[d];
                dvj[d] = c[d];
              }
            }
          }
        }
      });

  // (2) dq: item = (b, h, query-tile pair).
  const int64_t qpairs = (nqb + 1) / 2, items2 = B * nh * qpairs;
  par(items2, chunks_for(items2, 6.0 * static_cast<double>(B * nh) * tri * static_cast<double>(hd + 4)),
      [&](int64_t it0, int64_t it1) {
        float *dQ = scratch(2, static_cast<size_t>(kAQ * hdp));
        float *S = scratch(3, static_cast<size_t>(2 * kAQ * kAK + kAQ));
        float *dP = S + kAQ * kAK, *D = dP + kAQ * kAK;
        for (int64_t it = it0; it < it1; ++it) {
          const int64_t b = it / (nh * qpairs), h = (it / qpairs) % nh, g = h / group;
          const int64_t P = at.pref(b);
          int64_t blocks[2];
          const int nbl = pair_blocks(it % qpairs, nqb, blocks);
          for (int bi = 0; bi < nbl; ++bi) {
            const int64_t i0 = blocks[bi] * kAQ, ni = std::min(kAQ, T - i0);
            const float *qb = q + (b * T + i0) * qs + h * hd, *ob = dout + (b * T + i0) * qs + h * hd;
            for (int64_t r = 0; r < ni; ++r) D[r] = dq[((b * T + i0 + r) * nh + h) * hd];
            std::fill(dQ, dQ + ni * hdp, 0.0f);
            for (int64_t j0 = 0; j0 < std::max(i0 + ni, P); j0 += kAK) {
              const int64_t nj = std::min(kAK, T - j0), panels = (nj + nr - 1) / nr, kp = panels * nr;
              if (at.tile_hidden(b, i0, ni, j0, nj)) continue;
              const int64_t tile = ktile(b, g, j0);
              const float *kT = kTall + tile, *vT = vTall + tile, *kP = kPall + tile;
              at.product_t(qb, qs, ni, kT, panels, S);
              at.product_t(ob, qs, ni, vT, panels, dP);
              tile_probs(at, b, h, i0, ni, j0, nj, kp, lse, D, S, dP);
              tile_mm(gk, dP, kp, 1, ni, nj, kP, hdp / nr, dQ, hdp, true);  // dQ += dS·K
            }
            for (int64_t r = 0; r < ni; ++r) {
              float *dqi = dq + ((b * T + i0 + r) * nh + h) * hd;
              const float *a = dQ + r * hdp;
              for (int64_t d = 0; d < hd; ++d) dqi[d] = scale * a[d];
            }
          }
        }
      });
}

void attention_cached(const float *q, const float *kc, const float *vc, float *out, int64_t p0, int64_t n, int64_t nh,
                      int64_t nkv, int64_t hd, float scale, const float *alibi, int64_t prefix, int64_t window) {
  const int64_t qd = nh * hd, kvd = nkv * hd, group = nh / nkv;
  par(n * nh, chunks_for(n * nh, 4.0 * static_cast<double>(n * nh) * static_cast<double>(p0 + n) * static_cast<double>(hd)),
      [&](int64_t beg, int64_t end) {
        float *s = scratch(2, static_cast<size_t>(p0 + n));
        for (int64_t w = beg; w < end; ++w) {
          const int64_t i = w / nh, hh = w % nh, g = hh / group;
          const int64_t last = std::min(std::max(p0 + i, prefix - 1), p0 + n - 1);
          const int64_t first = window > 0 ? std::max<int64_t>(0, p0 + i - window + 1) : 0;
          const float slope = alibi ? alibi[hh] : 0.0f;
          const float *qi = q + i * qd + hh * hd;
          float mx = -INFINITY;
          for (int64_t j = first; j <= last; ++j) {
            const float d = dot(qi, kc + j * kvd + g * hd, hd);  // 8 fixed lanes: vectorised, a fixed order
            s[j] = d * scale;
            if (alibi) s[j] += slope * static_cast<float>(j);
            mx = std::max(mx, s[j]);
          }
          double z = 0;
          for (int64_t j = first; j <= last; ++j) {
            s[j] = std::exp(s[j] - mx);
            z += s[j];
          }
          float *o = out + i * qd + hh * hd;
          for (int64_t e = 0; e < hd; ++e) o[e] = 0;
          const float inv = static_cast<float>(1.0 / z);
          for (int64_t j = first; j <= last; ++j) axpy(o, s[j] * inv, vc + j * kvd + g * hd, hd);
        }
      });
}

// ---- loss ---------------------------------------------------------------------------------------------------------

namespace {
// Fixed blocking of [0, n) for reductions, a function of n only (≤ 256 blocks of ≥ min_block items), so the
// summation order — and the result — is the same for every thread count.
constexpr int64_t kMaxBlocks = 256;
int64_t reduce_blocks(int64_t n, int64_t min_block) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (n + min_block - 1) / min_block));
}

// log Σ exp(x[V]) with the max subtracted; sums in double lanes.
LLMT_INLINE float row_lse_body(const float *__restrict x, int64_t V) {
  float mx[8], nf[8];
  for (int u = 0; u < 8; ++u) mx[u] = -std::numeric_limits<float>::infinity(), nf[u] = 0.0f;
  // x·0 is NaN for a NaN or ±inf logit: poisons the result as it should (in 8 lanes: one running sum would be a
  // chain of V dependent adds, the slowest part of the row)
  int64_t c = 0;
  for (; c + 8 <= V; c += 8)
    for (int u = 0; u < 8; ++u) {
      mx[u] = x[c + u] > mx[u] ? x[c + u] : mx[u];
      nf[u] += x[c + u] * 0.0f;
    }
  float m = -std::numeric_limits<float>::infinity(), nanflag = 0.0f;
  for (int u = 0; u < 8; ++u) m = mx[u] > m ? mx[u] : m, nanflag += nf[u];
  for (; c < V; ++c) {
    m = x[c] > m ? x[c] : m;
    nanflag += x[c] * 0.0f;
  }
  if (!(m > -std::numeric_limits<float>::infinity())) m = 0.0f;
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  c = 0;
  for (; c + 8 <= V; c += 8)
    for (int u = 0; u < 8; ++u) acc[u] += static_cast<double>(exp_fast(x[c + u] - m));
  double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; c < V; ++c) s += static_cast<double>(exp_fast(x[c] - m));
  return m + static_cast<float>(std::log(s)) + nanflag;
}
// d[V] = scale·exp(x[V] − l); d may be x (element-wise).
LLMT_INLINE void softmax_row_body(const float *x, float *d, int64_t V, float l, float scale) {
  for (int64_t c = 0; c < V; ++c) d[c] = scale * exp_fast(x[c] - l);
}
// Both compiled twice like the attention's row steps (a vocabulary row is 32k+ exponentials): the AVX2+FMA version
// where the GEMM uses its micro-kernel.
float row_lse_base(const float *x, int64_t V) { return row_lse_body(x, V); }
void softmax_row_base(const float *x, float *d, int64_t V, float l, float scale) { softmax_row_body(x, d, V, l, scale); }
#if LLMT_X86_SIMD
LLMT_TARGET_AVX2 float row_lse_avx2(const float *x, int64_t V) { return row_lse_body(x, V); }
LLMT_TARGET_AVX2 void softmax_row_avx2(const float *x, float *d, int64_t V, float l, float scale) {
  softmax_row_body(x, d, V, l, scale);
}
#endif
struct LossRowOps {
  float (*lse)(const float *, int64_t);
  void (*softmax)(const float *, float *, int64_t, float, float);
};
LossRowOps loss_row_ops() {
#if LLMT_X86_SIMD
  if (gemm_kernel().ukr == ukr_avx2_6x16) return {row_lse_avx2, softmax_row_avx2};
#endif
  return {row_lse_base, softmax_row_base};
}

}  // namespace

double cross_entropy_forward(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V,
                             int64_t *count) {
  if (N <= 0) {
    if (count) *count = 0;
    return 0.0;
  }
  const int64_t nb = reduce_blocks(N, 64);
  const LossRowOps ro = loss_row_ops();
  double part[kMaxBlocks];
  int64_t cnt[kMaxBlocks];
  par(nb, chunks_for(nb, 12.0 * static_cast<double>(N * V)), [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      double s = 0.0;
      int64_t c = 0;
      for (int64_t r = N * blk / nb; r < N * (blk + 1) / nb; ++r) {
        const float *xr = logits + r * V;
        const float l = ro.lse(xr, V);
        lse[r] = l;
        const int32_t t = targets[r];
        if (t >= 0) {
          s += static_cast<double>(l) - static_cast<double>(xr[t]);
          ++c;
        }
      }
      part[blk] = s;
      cnt[blk] = c;
    }
  });
  double total = 0.0;
  int64_t n = 0;
  for (int64_t blk = 0; blk < nb; ++blk) {
    total += part[blk];
    n += cnt[blk];
  }
  if (count) *count = n;
  return total;
}

void cross_entropy_backward(const float *logits, const int32_t *targets, const float *lse, float *dlogits, int64_t N,
                            int64_t V, float scale) {
  const LossRowOps ro = loss_row_ops();
  par(N, chunks_for(N, 10.0 * static_cast<double>(N * V)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = logits + r * V;
      float *dr = dlogits + r * V;
      const int32_t t = targets[r];
      if (t < 0) {
        std::memset(dr, 0, sizeof(float) * static_cast<size_t>(V));
        continue;
      }
      const float l = lse[r];
      const float pt = exp_fast(xr[t] - l);  // before the row may be overwritten (dlogits == logits is fine)
      ro.softmax(xr, dr, V, l, scale);
      dr[t] = scale * (pt - 1.0f);
    }
  });
}

// ---- embedding ----------------------------------------------------------------------------------------------------

void embedding_forward(const float *table, const int32_t *ids, float *out, int64_t N, int64_t H) {
  par(N, chunks_for(N, static_cast<double>(N * H)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(out + r * H, table + static_cast<int64_t>(ids[r]) * H, sizeof(float) * static_cast<size_t>(H));
  });
}

// Split over column strips (64 floats = whole cache lines), rows in order: deterministic, no atomics.
void embedding_backward(const float *dout, const int32_t *ids, float *dtable, int64_t N, int64_t H,
                        int64_t /*V*/) {
  constexpr int64_t kStrip = 64;
  const int64_t strips = (H + kStrip - 1) / kStrip;
  par(strips, chunks_for(strips, static_cast<double>(N * H)), [&](int64_t s0, int64_t s1) {
    const int64_t c0 = s0 * kStrip, c1 = std::min(H, s1 * kStrip);
    for (int64_t r = 0; r < N; ++r) {
      float *__restrict d = dtable + static_cast<int64_t>(ids[r]) * H;
      const float *__restrict g = dout + r * H;
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  });
}

// ---- optimizer ----------------------------------------------------------------------------------------------------

void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2, float eps,
                float weight_decay, int64_t step) {
  // Scalars in double then rounded once, as torch does with its Python-float hyper-parameters.
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * static_cast<double>(weight_decay));
  const float step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
  par(n, chunks_for(n, 12.0 * static_cast<double>(n)), [&](int64_t b, int64_t e) {
    constexpr int64_t kBlk = 256;
    float den[kBlk];
    for (int64_t i0 = b; i0 < e; i0 += kBlk) {
      const int64_t len = std::min(kBlk, e - i0);
      float *__restrict pp = p + i0, *__restrict mm = m + i0, *__restrict vv = v + i0;
      const float *__restrict gg = g + i0;
      for (int64_t i = 0; i < len; ++i) {
        const float gi = gg[i];
        mm[i] = beta1 * mm[i] + omb1 * gi;
        vv[i] = beta2 * vv[i] + omb2 * gi * gi;
        den[i] = vv[i];
      }
      sqrt_inplace(den, len);
      for (int64_t i = 0; i < len; ++i) pp[i] = pp[i] * decay - step_size * (mm[i] / (den[i] / bc2_sqrt + eps));
    }
  });
}

// ---- reductions ---------------------------------------------------------------------------------------------------

double sum_squares(const float *x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t nb = reduce_blocks(n, 1 << 14);
  double part[kMaxBlocks];
  par(nb, chunks_for(nb, 2.0 * static_cast<double>(n)), [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t lo = n * blk / nb, hi = n * (blk + 1) / nb;
      const float *__restrict xs = x + lo;
      const int64_t len = hi - lo;
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= len; i += 8)
        for (int u = 0; u < 8; ++u) {
          const double d = static_cast<double>(xs[i + u]);
          acc[u] += d * d;
        }
      double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      for (; i < len; ++i) s += static_cast<double>(xs[i]) * static_cast<double>(xs[i]);
      part[blk] = s;
    }
  });
  double total = 0.0;
  for (int64_t blk = 0; blk < nb; ++blk) total += part[blk];
  return total;
}

void scale_inplace(float *x, float s, int64_t n) {
  par(n, chunks_for(n, static_cast<double>(n)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] *= s;
  });
}

}  // namespace llmt::cpu

namespace llmt::cpu {

void sum_squares_acc(const float *x, int64_t n, double *acc) { *acc += sum_squares(x, n); }

void fill(float *x, float value, int64_t n) {
  if (n > 0) std::fill(x, x + n, value);
}

void transpose(const float *in, float *out, int64_t rows, int64_t cols, bool acc) {
  // 32×32 tiles: both sides touch whole cache lines
  constexpr int64_t T = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += T)
    for (int64_t c0 = 0; c0 < cols; c0 += T)
      for (int64_t c = c0; c < std::min(cols, c0 + T); ++c)
        for (int64_t r = r0; r < std::min(rows, r0 + T); ++r) {
          const float v = in[r * cols + c];
          out[c * rows + r] = acc ? out[c * rows + r] + v : v;
        }
}

void copy(float *dst, const float *src, int64_t n) {
  if (n > 0 && dst != src) std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
}

}  // namespace llmt::cpu
