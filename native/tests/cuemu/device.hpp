// device.hpp — what kernels.cu needs from CUDA's device side, for compiling it as ordinary C++ and running it on the
// CPU (cuemu: a test harness, never part of the product). Each CUDA thread of a block is a fiber with its own stack;
// __syncthreads() and warp shuffles are scheduling points of a per-block scheduler (scheduler.cpp), so code that
// relies on block barriers and warp exchanges runs with CUDA's semantics. Blocks run one after another on the calling
// thread, so `__shared__` (a function-local static here) is per block as on a GPU.
//
// What this validates: index arithmetic, bounds, barrier/shuffle logic, numerics (same float operations, host libm),
// launch configurations, and the host code's use of the driver API. What it cannot: timing, memory-model races between
// threads of a block that a GPU could reorder, tensor-core instructions, real device limits beyond those it checks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

namespace cuemu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct Fiber;
/** The fiber (CUDA thread) now running; set by the scheduler. */
extern thread_local Fiber *g_current;

struct ThreadCoords {
  Dim3 thread, block, block_dim, grid_dim;
  int lane, warp;
};
const ThreadCoords &coords();

/** Block-wide barrier: returns when every live thread of the block has called it. */
void syncthreads();
/** Warp exchange: every live thread of the warp publishes `v`; returns the value published by lane `src`. */
uint64_t warp_exchange(uint64_t v, int src);

template <typename T>
T shfl_from(T v, int src) {
  static_assert(sizeof(T) <= 8, "warp shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace cuemu

#define threadIdx (::cuemu::coords().thread)
#define blockIdx (::cuemu::coords().block)
#define blockDim (::cuemu::coords().block_dim)
#define gridDim (::cuemu::coords().grid_dim)

inline void __syncthreads() { ::cuemu::syncthreads(); }
// A warp barrier (the emulated lanes run one after another, so lanes reading what others wrote need it as on Volta+)
inline void __syncwarp(unsigned = 0xffffffffu) { ::cuemu::warp_exchange(0, 0); }
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = ::cuemu::coords().lane;
  return ::cuemu::shfl_from(v, (lane & ~(width - 1)) | ((lane ^ mask) & (width - 1)));
}
template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = ::cuemu::coords().lane;
  return ::cuemu::shfl_from(v, (lane & ~(width - 1)) | (src & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
  const int lane = ::cuemu::coords().lane, base = lane & ~(width - 1), off = lane - base;
  return ::cuemu::shfl_from(v, off + int(d) < width ? lane + int(d) : lane);
}
// Atomics: fibers of a launch never run at the same time, so a plain read-modify-write is atomic here.
template <typename T>
T atomicAdd(T *p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
T atomicMax(T *p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}

inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
// one IEEE operation each, round to nearest (the product is stored through a volatile so that a host build with FMA
// (-march=native) cannot contract __fadd_rn(__fmul_rn(a, b), c) into an fma, just as nvcc never contracts these)
inline float __fmul_rn(float a, float b) {
  volatile float p = a * b;
  return p;
}
inline float __fadd_rn(float a, float b) { return a + b; }

// ---- 16-bit types and WMMA (tensor-core fragments) ---------------------------------------------------------------
// __nv_bfloat16 / __half hold the bits; conversions are cpu/half.hpp's (round to nearest even, as the intrinsics).
// A WMMA fragment here holds its whole tile in every lane (the hardware spreads it over the warp in an unspecified
// layout, so kernels may only use load/store/fill/mma on fragments — exactly what this supports); mma_sync sums in
// fp32. All lanes of a warp call these collectively, as CUDA requires.
#include <type_traits>

#include "../../cpu/half.hpp"

// CUDA's vector type for 16-byte loads (vector_types.h)
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct __nv_bfloat16 {
  unsigned short x;
};
struct __half {
  unsigned short x;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{llmt::f32_to_bf16(f)}; }
inline __half __float2half_rn(float f) { return __half{llmt::f32_to_f16(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return llmt::bf16_to_f32(h.x); }
inline float __half2float(__half h) { return llmt::f16_to_f32(h.x); }

namespace cuemu {
inline float wmma_float(float v) { return v; }
inline float wmma_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float wmma_float(__half v) { return __half2float(v); }
// CUDA's contract for wmma::load_matrix_sync / store_matrix_sync: the pointer 256-bit (32-byte) aligned, ldm a multiple
// of 16 bytes (8 16-bit elements, 4 floats). A GPU gives a misaligned-address error or wrong tiles otherwise; here it
// is fatal at once, naming the call.
inline void wmma_check(const void *p, unsigned ldm, size_t element_bytes, const char *what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 == 0 && (ldm * element_bytes) % 16 == 0) return;
  std::fprintf(stderr, "cuemu: wmma::%s: pointer %p must be 32-byte aligned and ldm (%u elements of %zu bytes) a multiple of 16 bytes\n",
               what, p, ldm, element_bytes);
  std::abort();
}
// A load or store of `bytes` through p: a GPU faults unless p is aligned to it (x86 does not, so say so here).
inline void align_check(const void *p, size_t bytes, const char *what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes == 0) return;
  std::fprintf(stderr, "cuemu: %s: pointer %p is not %zu-byte aligned (a GPU faults: misaligned address)\n", what, p, bytes);
  std::abort();
}
}  // namespace cuemu

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int R = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int C = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = R * C;
  float v[R * C];
};

template <class Use, int M, int N, int K, class T, class Layout, class P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &f, const P *p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  static_assert(!std::is_same<Use, accumulator>::value, "accumulators load with a layout_t");
  ::cuemu::wmma_check(p, ldm, sizeof(P), "load_matrix_sync");
  for (int r = 0; r < F::R; ++r)
    for (int c = 0; c < F::C; ++c)
      f.v[r * F::C + c] = ::cuemu::wmma_float(std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
}
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm, layout_t l) {
  ::cuemu::wmma_check(p, ldm, sizeof(float), "load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.v[r * N + c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
template <int M, int N, int K>
void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm, layout_t l) {
  ::cuemu::wmma_check(p, ldm, sizeof(float), "store_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r * N + c];
  ::cuemu::warp_exchange(0, 0);  // the tile is the warp's only once every lane has stored (kernels __syncwarp anyway)
}
template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout> &f, float v) {
  for (float &x : f.v) x = v;
}
template <int M, int N, int K, class TA, class LA, class TB, class LB>
void mma_sync(fragment<accumulator, M, N, K, float> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
              const fragment<matrix_b, M, N, K, TB, LB> &b, const fragment<accumulator, M, N, K, float> &c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.v[i * N + j];
      for (int k = 0; k < K; ++k) s += a.v[i * K + k] * b.v[k * N + j];
      out[i * N + j] = s;
    }
  std::memcpy(d.v, out, sizeof out);
}
}  // namespace wmma
}  // namespace nvcuda
