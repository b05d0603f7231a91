// q4.hpp — 4-bit weights as bitsandbytes stores them (QLoRA's NF4, and FP4) and the CPU kernels that use
// them: blockwise quantization, double quantization of the scales, dequantization, and matmuls that decode
// the weight panel by panel inside the packed GEMM (cpu/ops.cpp), so no fp32 copy of a weight ever exists.
//
// Bit-exact with bitsandbytes' CUDA kernels (csrc/kernels.cu kQuantizeBlockwise / kDequantizeBlockwise):
//  - blocks of kQ4Block = 64 consecutive elements of the flat row-major tensor; absmax = max |x| (fp32);
//    x is scaled by (1.0f / absmax) (a multiply by the fp32 reciprocal, not a division) and mapped to a code
//    by the kernel's decision tree (dQuantizeNF4 / dQuantizeFP4: thresholds at the code midpoints);
//    an all-zero block scales to NaN and takes code 0 (NF4: −1.0·0 = −0) exactly as on CUDA.
//  - packing: element 2i in the HIGH nibble of byte i, element 2i+1 in the low nibble; an odd count leaves the
//    last low nibble 0.
//  - double quantization (compress_statistics=True): offset = mean(absmax) (fp32; computed here in double and
//    rounded once — bitsandbytes uses torch's fp32 mean, which may differ in the last bit, see docs/formats.md),
//    then absmax − offset is quantized blockwise (kQ4Block2 = 256) to 8 bits with the signed "dynamic" map
//    (create_dynamic_map(), 256 values) by the kernel's binary search dQuantize<0>. Decoding a block's scale:
//    code2[qabsmax[b]] · absmax2[b / 256] + offset, in fp32, then value = code4[q] · scale.
// Shapes: a weight [rows, cols] is a flat tensor of n = rows·cols elements; block b covers [64b, 64b+64).
#pragma once

#include <cstdint>

#include "half.hpp"

namespace llmt::cpu {

enum class Q4Type : uint8_t { NF4 = 1, FP4 = 2 };
constexpr int64_t kQ4Block = 64;    // bitsandbytes' default (and transformers' only) 4-bit blocksize
constexpr int64_t kQ4Block2 = 256;  // the nested (double-quantization) blocksize

/** The 16 code values (bitsandbytes get_4bit_type("nf4") / ("fp4") as fp32). */
const float *q4_code(Q4Type t);
/** bitsandbytes' create_dynamic_map(signed=True): 256 sorted fp32 values in [−0.99297, 1]. */
const float *dynamic_map();

uint8_t nf4_quantize_one(float x);        // dQuantizeNF4
uint8_t fp4_quantize_one(float x);        // dQuantizeFP4
uint8_t dynamic_quantize_one(const float *code, float x);  // dQuantize<0> (binary search, midpoints)

/** A 4-bit tensor in the backend's memory (host memory here). Either absmax (fp32 per block) or, when
 *  double-quantized, qabsmax + absmax2 + code2 + offset. */
struct Q4View {
  Q4Type type = Q4Type::NF4;
  int64_t n = 0;                       // elements
  const uint8_t *packed = nullptr;     // [(n+1)/2]
  const float *absmax = nullptr;       // [ceil(n/64)] or null when nested
  const uint8_t *qabsmax = nullptr;    // [ceil(n/64)] 8-bit codes into code2 (nested)
  const float *absmax2 = nullptr;      // [ceil(ceil(n/64)/256)]
  const float *code2 = nullptr;        // [256] nested quant map
  float offset = 0.0f;
};

/** The fp32 scale of block b. */
inline float q4_block_scale(const Q4View &w, int64_t b) {
  if (!w.qabsmax) return w.absmax[b];
  return w.code2[w.qabsmax[b]] * w.absmax2[b / kQ4Block2] + w.offset;
}

/** out[0..count) = the dequantized elements [begin, begin+count) (any alignment). */
void q4_dequantize(const Q4View &w, int64_t begin, int64_t count, float *out);
/** The same elements each rounded to bf16/fp16 (round to nearest even, cpu/half.hpp) and widened back to fp32: the
 *  weight as a 16-bit tensor-core GEMM reads it after decoding (Backend::matmul_*_q4_lp). */
void q4_dequantize_half(const Q4View &w, Half t, int64_t begin, int64_t count, float *out);

/** 4-bit blockwise quantization of x[n]: packed[(n+1)/2], absmax[ceil(n/64)]. Multi-threaded, deterministic.
 *  Returns the index of the first element that is NaN or ±inf, else −1 (the codes are bitsandbytes' either way:
 *  a NaN drops out of its block's absmax, so without this check a damaged weight would load as a finite one). */
int64_t q4_quantize(const float *x, int64_t n, Q4Type t, uint8_t *packed, float *absmax);
/** 8-bit blockwise quantization with a 256-value code (bitsandbytes quantize_blockwise): q[n], absmax[ceil(n/block)]. */
void q8_quantize_blockwise(const float *x, int64_t n, int64_t block, const float *code, uint8_t *q, float *absmax);
/** Double quantization of the 4-bit scales absmax[nb]: qabsmax[nb], absmax2[ceil(nb/256)], *offset. */
void q4_double_quantize(const float *absmax, int64_t nb, uint8_t *qabsmax, float *absmax2, float *offset);

// ---- matmuls with a 4-bit B (frozen base weight W [out, in], as nn.Linear) ----------------------------------
// Bit-identical to matmul_nt / matmul_nn on the dequantized matrix (same packed GEMM, same order).
// "nt": C[M,N] (+)= A[M,K] · Wᵀ, W = B [N,K] (y = x·Wᵀ)
void matmul_nt_q4(const float *A, const Q4View &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);
// "nn": C[M,N] (+)= A[M,K] · W, W = B [K,N] (dx = dy·W)
void matmul_nn_q4(const float *A, const Q4View &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);
// The same with every decoded weight element rounded to t (q4_dequantize_half); A is used as given (the CPU backend's
// matmul_*_q4_lp rounds it first). Bit-identical to matmul_nt / matmul_nn on the rounded dequantized matrix.
void matmul_nt_q4_half(const float *A, const Q4View &B, Half t, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);
void matmul_nn_q4_half(const float *A, const Q4View &B, Half t, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);

}  // namespace llmt::cpu
