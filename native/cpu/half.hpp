// half.hpp — 16-bit floating-point storage for mixed precision: bfloat16 and IEEE binary16 (fp16), conversions with
// round-to-nearest-even (what torch's .to(bfloat16/float16), __float2bfloat16_rn and __float2half_rn do), shared by
// the CPU backend, the CUDA kernels (kernels.cu includes this file) and the tests, so every backend rounds alike.
//  - bf16: the upper 16 bits of an fp32, rounded; NaN stays a (quiet) NaN, overflow rounds to ±inf as in fp32.
//  - fp16: 1-5-10 bits; |x| ≥ 65520 → ±inf, subnormals down to 2⁻²⁴ (rounded to even), NaN → quiet NaN.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LLMT_HD __host__ __device__ __forceinline__
#else
#define LLMT_HD inline
#endif

namespace llmt {

/** Storage types of frozen weights (engine/backend.hpp matmul_*_half). */
enum class Half : uint8_t { BF16 = 1, F16 = 2 };

LLMT_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
LLMT_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

LLMT_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN: keep it quiet
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
LLMT_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

LLMT_HD uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // ≥ 65520 (incl. inf): rounds to inf
  const uint32_t exp = ax >> 23;
  if (exp < 113) {  // below 2⁻¹⁴: a subnormal (or zero) in fp16
    const uint32_t shift = 126 - exp;
    if (shift > 24) return static_cast<uint16_t>(sign);
    const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((exp - 112) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry into the exponent is the right result
  return static_cast<uint16_t>(sign | r);
}
LLMT_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;  // m·2⁻²⁴ (exact)
    return sign ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

LLMT_HD uint16_t to_half(float f, int type) { return type == 2 ? f32_to_f16(f) : f32_to_bf16(f); }
LLMT_HD float from_half(uint16_t h, int type) { return type == 2 ? f16_to_f32(h) : bf16_to_f32(h); }

}  // namespace llmt
