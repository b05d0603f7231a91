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
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __constant__
#define __launch_bounds__(...)

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
inline void __syncwarp(unsigned = 0xffffffffu) {}
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
