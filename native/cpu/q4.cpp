// q4.cpp — bitsandbytes-compatible 4-bit quantization (NF4/FP4, blocksize 64, double-quantized scales) and
// the matmuls that decode a 4-bit weight inside the packed GEMM. See q4.hpp for the exact semantics.
#include "q4.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.hpp"

namespace llmt::cpu {
namespace {

// get_4bit_type("nf4"): bitsandbytes' published NF4 values (also its CUDA LUT nf4_dequantization_lut).
const float kNF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// get_4bit_type("fp4") = [0, 0.0625, 8, 12, 4, 6, 2, 3, −0, −0.0625, −8, −12, −4, −6, −2, −3] / 12 in fp32
// (equal to the CUDA kernel's fp4_dequantization_lut · sign).
const float kFP4[16] = {0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 1.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f, 3.0f / 12.0f,
                        -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -1.0f, -4.0f / 12.0f, -6.0f / 12.0f, -2.0f / 12.0f,
                        -3.0f / 12.0f};
// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), generated with bitsandbytes' code on
// torch (its torch.linspace in fp32 matters in the last bit); tests/python/bnb_reference.py re-derives it.
const float kDynamic[256] = {
    -0x1.fc66660000000p-1f, -0x1.f533320000000p-1f, -0x1.ee00000000000p-1f, -0x1.e6cccc0000000p-1f,
    -0x1.df99980000000p-1f, -0x1.d866660000000p-1f, -0x1.d133340000000p-1f, -0x1.ca00000000000p-1f,
    -0x1.c2cccc0000000p-1f, -0x1.bb99980000000p-1f, -0x1.b466660000000p-1f, -0x1.ad33320000000p-1f,
    -0x1.a600000000000p-1f, -0x1.9ecccc0000000p-1f, -0x1.9799980000000p-1f, -0x1.9066660000000p-1f,
    -0x1.8933340000000p-1f, -0x1.8200000000000p-1f, -0x1.7accce0000000p-1f, -0x1.73999a0000000p-1f,
    -0x1.6c66680000000p-1f, -0x1.6533340000000p-1f, -0x1.5e00000000000p-1f, -0x1.56ccce0000000p-1f,
    -0x1.4f999a0000000p-1f, -0x1.4866660000000p-1f, -0x1.4133340000000p-1f, -0x1.3a00000000000p-1f,
    -0x1.32cccc0000000p-1f, -0x1.2b999a0000000p-1f, -0x1.2466680000000p-1f, -0x1.1d33340000000p-1f,
    -0x1.1600000000000p-1f, -0x1.0ecccc0000000p-1f, -0x1.07999a0000000p-1f, -0x1.0066660000000p-1f,
    -0x1.f266680000000p-2f, -0x1.e400000000000p-2f, -0x1.d599980000000p-2f, -0x1.c733340000000p-2f,
    -0x1.b8cccc0000000p-2f, -0x1.aa66640000000p-2f, -0x1.9c00000000000p-2f, -0x1.8d99980000000p-2f,
    -0x1.7f33340000000p-2f, -0x1.70cccc0000000p-2f, -0x1.6266640000000p-2f, -0x1.5400000000000p-2f,
    -0x1.4599980000000p-2f, -0x1.3733340000000p-2f, -0x1.28cccc0000000p-2f, -0x1.1a66680000000p-2f,
    -0x1.0c00000000000p-2f, -0x1.fb33340000000p-3f, -0x1.de66680000000p-3f, -0x1.c1999a0000000p-3f,
    -0x1.a4cccc0000000p-3f, -0x1.8800000000000p-3f, -0x1.6b33320000000p-3f, -0x1.4e66660000000p-3f,
    -0x1.31999a0000000p-3f, -0x1.14cccc0000000p-3f, -0x1.f000000000000p-4f, -0x1.b666680000000p-4f,
    -0x1.93d70a0000000p-4f, -0x1.8851ea0000000p-4f, -0x1.7cccce0000000p-4f, -0x1.7147ae0000000p-4f,
    -0x1.65c2900000000p-4f, -0x1.5a3d700000000p-4f, -0x1.4eb8500000000p-4f, -0x1.4333340000000p-4f,
    -0x1.37ae140000000p-4f, -0x1.2c28f60000000p-4f, -0x1.20a3d60000000p-4f, -0x1.151eba0000000p-4f,
    -0x1.09999a0000000p-4f, -0x1.fc28f40000000p-5f, -0x1.e51eba0000000p-5f, -0x1.ce147a0000000p-5f,
    -0x1.b70a3e0000000p-5f, -0x1.a000000000000p-5f, -0x1.88f5c20000000p-5f, -0x1.71eb860000000p-5f,
    -0x1.5ae1460000000p-5f, -0x1.43d70a0000000p-5f, -0x1.2cccce0000000p-5f, -0x1.15c28e0000000p-5f,
    -0x1.fd70a40000000p-6f, -0x1.cf5c260000000p-6f, -0x1.a147ae0000000p-6f, -0x1.7333340000000p-6f,
    -0x1.451eb80000000p-6f, -0x1.170a3e0000000p-6f, -0x1.d1eb860000000p-7f, -0x1.75c2900000000p-7f,
    -0x1.3e76c80000000p-7f, -0x1.2c08300000000p-7f, -0x1.19999a0000000p-7f, -0x1.072b020000000p-7f,
    -0x1.e978d40000000p-8f, -0x1.c49ba60000000p-8f, -0x1.9fbe760000000p-8f, -0x1.7ae1480000000p-8f,
    -0x1.56041a0000000p-8f, -0x1.3126e80000000p-8f, -0x1.0c49ba0000000p-8f, -0x1.ced9140000000p-9f,
    -0x1.851eb80000000p-9f, -0x1.3b645a0000000p-9f, -0x1.e353f80000000p-10f, -0x1.4fdf3a0000000p-10f,
    -0x1.eecbfe0000000p-11f, -0x1.b3d07c0000000p-11f, -0x1.78d5000000000p-11f, -0x1.3dd9820000000p-11f,
    -0x1.02de020000000p-11f, -0x1.8fc5060000000p-12f, -0x1.19ce0a0000000p-12f, -0x1.47ae160000000p-13f,
    -0x1.743e960000000p-14f, -0x1.15df660000000p-14f, -0x1.6f00680000000p-15f, -0x1.64840c0000000p-16f,
    -0x1.040bfe0000000p-17f, -0x1.b435280000000p-19f, -0x1.27476e0000000p-21f, 0x0.0p+0f,
    0x1.27476e0000000p-21f, 0x1.b435280000000p-19f, 0x1.040bfe0000000p-17f, 0x1.64840c0000000p-16f,
    0x1.6f00680000000p-15f, 0x1.15df660000000p-14f, 0x1.743e960000000p-14f, 0x1.47ae160000000p-13f,
    0x1.19ce0a0000000p-12f, 0x1.8fc5060000000p-12f, 0x1.02de020000000p-11f, 0x1.3dd9820000000p-11f,
    0x1.78d5000000000p-11f, 0x1.b3d07c0000000p-11f, 0x1.eecbfe0000000p-11f, 0x1.4fdf3a0000000p-10f,
    0x1.e353f80000000p-10f, 0x1.3b645a0000000p-9f, 0x1.851eb80000000p-9f, 0x1.ced9140000000p-9f,
    0x1.0c49ba0000000p-8f, 0x1.3126e80000000p-8f, 0x1.56041a0000000p-8f, 0x1.7ae1480000000p-8f,
    0x1.9fbe760000000p-8f, 0x1.c49ba60000000p-8f, 0x1.e978d40000000p-8f, 0x1.072b020000000p-7f,
    0x1.19999a0000000p-7f, 0x1.2c08300000000p-7f, 0x1.3e76c80000000p-7f, 0x1.75c2900000000p-7f,
    0x1.d1eb860000000p-7f, 0x1.170a3e0000000p-6f, 0x1.451eb80000000p-6f, 0x1.7333340000000p-6f,
    0x1.a147ae0000000p-6f, 0x1.cf5c260000000p-6f, 0x1.fd70a40000000p-6f, 0x1.15c28e0000000p-5f,
    0x1.2cccce0000000p-5f, 0x1.43d70a0000000p-5f, 0x1.5ae1460000000p-5f, 0x1.71eb860000000p-5f,
    0x1.88f5c20000000p-5f, 0x1.a000000000000p-5f, 0x1.b70a3e0000000p-5f, 0x1.ce147a0000000p-5f,
    0x1.e51eba0000000p-5f, 0x1.fc28f40000000p-5f, 0x1.09999a0000000p-4f, 0x1.151eba0000000p-4f,
    0x1.20a3d60000000p-4f, 0x1.2c28f60000000p-4f, 0x1.37ae140000000p-4f, 0x1.4333340000000p-4f,
    0x1.4eb8500000000p-4f, 0x1.5a3d700000000p-4f, 0x1.65c2900000000p-4f, 0x1.7147ae0000000p-4f,
    0x1.7cccce0000000p-4f, 0x1.8851ea0000000p-4f, 0x1.93d70a0000000p-4f, 0x1.b666680000000p-4f,
    0x1.f000000000000p-4f, 0x1.14cccc0000000p-3f, 0x1.31999a0000000p-3f, 0x1.4e66660000000p-3f,
    0x1.6b33320000000p-3f, 0x1.8800000000000p-3f, 0x1.a4cccc0000000p-3f, 0x1.c1999a0000000p-3f,
    0x1.de66680000000p-3f, 0x1.fb33340000000p-3f, 0x1.0c00000000000p-2f, 0x1.1a66680000000p-2f,
    0x1.28cccc0000000p-2f, 0x1.3733340000000p-2f, 0x1.4599980000000p-2f, 0x1.5400000000000p-2f,
    0x1.6266640000000p-2f, 0x1.70cccc0000000p-2f, 0x1.7f33340000000p-2f, 0x1.8d99980000000p-2f,
    0x1.9c00000000000p-2f, 0x1.aa66640000000p-2f, 0x1.b8cccc0000000p-2f, 0x1.c733340000000p-2f,
    0x1.d599980000000p-2f, 0x1.e400000000000p-2f, 0x1.f266680000000p-2f, 0x1.0066660000000p-1f,
    0x1.07999a0000000p-1f, 0x1.0ecccc0000000p-1f, 0x1.1600000000000p-1f, 0x1.1d33340000000p-1f,
    0x1.2466680000000p-1f, 0x1.2b999a0000000p-1f, 0x1.32cccc0000000p-1f, 0x1.3a00000000000p-1f,
    0x1.4133340000000p-1f, 0x1.4866660000000p-1f, 0x1.4f999a0000000p-1f, 0x1.56ccce0000000p-1f,
    0x1.5e00000000000p-1f, 0x1.6533340000000p-1f, 0x1.6c66680000000p-1f, 0x1.73999a0000000p-1f,
    0x1.7accce0000000p-1f, 0x1.8200000000000p-1f, 0x1.8933340000000p-1f, 0x1.9066660000000p-1f,
    0x1.9799980000000p-1f, 0x1.9ecccc0000000p-1f, 0x1.a600000000000p-1f, 0x1.ad33320000000p-1f,
    0x1.b466660000000p-1f, 0x1.bb99980000000p-1f, 0x1.c2cccc0000000p-1f, 0x1.ca00000000000p-1f,
    0x1.d133340000000p-1f, 0x1.d866660000000p-1f, 0x1.df99980000000p-1f, 0x1.e6cccc0000000p-1f,
    0x1.ee00000000000p-1f, 0x1.f533320000000p-1f, 0x1.fc66660000000p-1f, 0x1.0000000000000p+0f,
};

}  // namespace

const float *q4_code(Q4Type t) { return t == Q4Type::FP4 ? kFP4 : kNF4; }
const float *dynamic_map() { return kDynamic; }

// dQuantizeNF4 (csrc/kernels.cu): the tree "generated by test_normal_map_tree"; NaN ends at 0b0000.
uint8_t nf4_quantize_one(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 0b1111 : 0b1110;
      return x > 0.5016634166240692f ? 0b1101 : 0b1100;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 0b1011 : 0b1010;
    return x > 0.1202552504837513f ? 0b1001 : 0b1000;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 0b0111 : 0b0110;
    return x > -0.23460740596055984f ? 0b0101 : 0b0100;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 0b0011 : 0b0010;
  return x > -0.8480964004993439f ? 0b0001 : 0b0000;
}

// dQuantizeFP4: sign bit 0b1000, then a tree on |x| (pivots = FP4 midpoints / 12).
uint8_t fp4_quantize_one(float x) {
  const uint8_t sign = x < 0 ? 0b1000 : 0b0000;
  x = std::fabs(x);
  if (x > 0.29166667f) {
    if (x > 0.583333f) return static_cast<uint8_t>((x > 0.8333333f ? 0b0011 : 0b0010) + sign);
    return static_cast<uint8_t>((x > 0.4166667f ? 0b0101 : 0b0100) + sign);
  }
  if (x > 0.0859375f) return static_cast<uint8_t>((x > 0.20833333f ? 0b0111 : 0b0110) + sign);
  return static_cast<uint8_t>((x > 0.00260417f ? 0b0001 : 0b0000) + sign);
}

// dQuantize<0>: binary search over the sorted 256-value code, then the nearer neighbour by midpoint.
uint8_t dynamic_quantize_one(const float *code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

namespace {
// Every byte value as its two code values (high nibble first): one table load decodes two elements.
struct CodePairs {
  float v[256][2];
  explicit CodePairs(const float *code) {
    for (int b = 0; b < 256; ++b) v[b][0] = code[b >> 4], v[b][1] = code[b & 0x0F];
  }
};
const float (*code_pairs(Q4Type t))[2] {
  static const CodePairs nf4(kNF4), fp4(kFP4);
  return t == Q4Type::FP4 ? fp4.v : nf4.v;
}
}  // namespace

void q4_dequantize(const Q4View &w, int64_t begin, int64_t count, float *out) {
  const float *code = q4_code(w.type);
  const float(*pairs)[2] = code_pairs(w.type);
  int64_t i = begin;
  const int64_t end = begin + count;
  while (i < end) {
    const int64_t b = i / kQ4Block;
    const int64_t stop = std::min(end, (b + 1) * kQ4Block);  // blocks start at even elements
    const float s = q4_block_scale(w, b);
    if (i & 1) *out++ = code[w.packed[i >> 1] & 0x0F] * s, ++i;  // a run starting on a low nibble
    for (; i + 2 <= stop; i += 2, out += 2) {
      const float *p = pairs[w.packed[i >> 1]];
      out[0] = p[0] * s;
      out[1] = p[1] * s;
    }
    if (i < stop) *out++ = code[w.packed[i >> 1] >> 4] * s, ++i;  // a run ending on a high nibble
  }
}

void q4_dequantize_half(const Q4View &w, Half t, int64_t begin, int64_t count, float *out) {
  q4_dequantize(w, begin, count, out);
  if (t == Half::F16)
    for (int64_t i = 0; i < count; ++i) out[i] = f16_to_f32(f32_to_f16(out[i]));
  else
    for (int64_t i = 0; i < count; ++i) out[i] = bf16_to_f32(f32_to_bf16(out[i]));
}

namespace {
// q4_quantize runs the decision trees of nf4_quantize_one / fp4_quantize_one as counts of the thresholds that x
// exceeds (the same fp32 constants, the same strict '>', so the same code for every float, NaN included — test_q4
// compares its output with the trees'): no branches, so a block's 64 codes vectorise (the trees mispredict on weights).
const float kNF4Split[15] = {-0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f, -0.33967943489551544f,
                             -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
                             0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,   0.3893125355243683f,
                             0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
const float kFP4Split[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};
const uint8_t kFP4ByRank[8] = {0b0000, 0b0001, 0b0110, 0b0111, 0b0100, 0b0101, 0b0010, 0b0011};

}  // namespace

int64_t q4_quantize(const float *x, int64_t n, Q4Type t, uint8_t *packed, float *absmax) {
  const int64_t nb = (n + kQ4Block - 1) / kQ4Block;
  std::atomic<int64_t> first_bad{n};  // the first NaN/±inf (n: none)
  parallel_for(nb, [&](int64_t b0, int64_t b1) {
    int32_t q[kQ4Block];
    float a[kQ4Block];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kQ4Block, len = std::min(n - i0, kQ4Block);
      // max |x| (as std::fmax: a NaN element leaves it as it is), in 8 lanes: one running max is a dependency chain
      float m8[8];
      for (int u = 0; u < 8; ++u) m8[u] = -std::numeric_limits<float>::max();
      int64_t i = 0;
      for (; i + 8 <= len; i += 8)
        for (int u = 0; u < 8; ++u) {
          const float v = std::fabs(x[i0 + i + u]);
          m8[u] = v > m8[u] ? v : m8[u];
        }
      for (; i < len; ++i) {
        const float v = std::fabs(x[i0 + i]);
        m8[0] = v > m8[0] ? v : m8[0];
      }
      float m = m8[0];
      for (int u = 1; u < 8; ++u) m = m8[u] > m ? m8[u] : m;
      absmax[b] = m;
      const float inv = 1.0f / m;
      // CUDA loads 0 past the end: bitsandbytes quantizes the zero padding of a partial last pair too; its nibble
      // is 0b0111 (NF4 0.0) or 0 (FP4), never read back
      for (i = 0; i < kQ4Block; ++i) a[i] = (i < len ? x[i0 + i] : 0.0f) * inv;
      // a NaN or ±inf in the block leaves a NaN in x·(1/absmax) (inf makes absmax inf, and inf·0 is NaN); so does an
      // all-zero block (0·inf): a NaN there sends us to look at x itself. One vectorised pass over the 64 scaled
      // values while they are in registers (≈ +12% on this kernel, one core), not another pass over the weight.
      int32_t nan_seen = 0;
      for (i = 0; i < kQ4Block; ++i) nan_seen |= a[i] != a[i] ? 1 : 0;
      if (nan_seen) {
        int64_t at = i0;
        while (at < i0 + len && std::fabs(x[at]) <= std::numeric_limits<float>::max()) ++at;
        int64_t cur = first_bad.load(std::memory_order_relaxed);  // the lowest index over the threads
        while (at < i0 + len && at < cur && !first_bad.compare_exchange_weak(cur, at, std::memory_order_relaxed)) {
        }
      }
      // the threshold counts over the block, threshold by threshold (a loop the compiler vectorises); FP4: the rank of
      // |x| mapped to its code, plus the sign bit
      for (int64_t i = 0; i < kQ4Block; ++i) q[i] = 0;
      if (t == Q4Type::NF4) {
        for (float split : kNF4Split)
          for (int64_t i = 0; i < kQ4Block; ++i) q[i] += a[i] > split ? 1 : 0;
      } else {
        for (float split : kFP4Split)
          for (int64_t i = 0; i < kQ4Block; ++i) q[i] += std::fabs(a[i]) > split ? 1 : 0;
        for (int64_t i = 0; i < kQ4Block; ++i) q[i] = kFP4ByRank[q[i]] + (a[i] < 0 ? 0b1000 : 0);
      }
      for (int64_t i = 0; i < len; i += 2) packed[(i0 + i) >> 1] = static_cast<uint8_t>((q[i] << 4) | q[i + 1]);
    }
  });
  const int64_t at = first_bad.load();
  return at < n ? at : -1;
}

void q8_quantize_blockwise(const float *x, int64_t n, int64_t block, const float *code, uint8_t *q, float *absmax) {
  const int64_t nb = (n + block - 1) / block;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * block, i1 = std::min(n, i0 + block);
    float m = -std::numeric_limits<float>::max();
    for (int64_t i = i0; i < i1; ++i) m = std::fmax(m, std::fabs(x[i]));
    absmax[b] = m;
    const float inv = 1.0f / m;
    for (int64_t i = i0; i < i1; ++i) q[i] = dynamic_quantize_one(code, x[i] * inv);
  }
}

void q4_double_quantize(const float *absmax, int64_t nb, uint8_t *qabsmax, float *absmax2, float *offset) {
  double s = 0.0;
  for (int64_t b = 0; b < nb; ++b) s += absmax[b];
  const float off = nb > 0 ? static_cast<float>(s / static_cast<double>(nb)) : 0.0f;
  std::vector<float> centered(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) centered[static_cast<size_t>(b)] = absmax[b] - off;
  q8_quantize_blockwise(centered.data(), nb, kQ4Block2, kDynamic, qabsmax, absmax2);
  *offset = off;
}

// ---- matmuls: B decoded panel by panel inside the GEMM (ops.cpp gemm with a BDecoder) ----------------------

namespace {
void decode_q4(const void *ctx, int64_t begin, int64_t count, float *out) {
  q4_dequantize(*static_cast<const Q4View *>(ctx), begin, count, out);
}
// the weight as a 16-bit tensor-core GEMM reads it: each decoded element rounded to bf16/fp16
struct Q4Half {
  const Q4View *w;
  Half t;
};
void decode_q4_half(const void *ctx, int64_t begin, int64_t count, float *out) {
  const Q4Half &q = *static_cast<const Q4Half *>(ctx);
  q4_dequantize_half(*q.w, q.t, begin, count, out);
}
}  // namespace

void matmul_nt_q4(const float *A, const Q4View &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  matmul_nt_dec(A, BDecoder{decode_q4, &B}, C, M, N, K, accumulate);
}

void matmul_nn_q4(const float *A, const Q4View &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  matmul_nn_dec(A, BDecoder{decode_q4, &B}, C, M, N, K, accumulate);
}

void matmul_nt_q4_half(const float *A, const Q4View &B, Half t, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  const Q4Half q{&B, t};
  matmul_nt_dec(A, BDecoder{decode_q4_half, &q}, C, M, N, K, accumulate);
}

void matmul_nn_q4_half(const float *A, const Q4View &B, Half t, float *C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  const Q4Half q{&B, t};
  matmul_nn_dec(A, BDecoder{decode_q4_half, &q}, C, M, N, K, accumulate);
}

}  // namespace llmt::cpu
