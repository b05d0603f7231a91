// quant.hpp — QLoRA at the model level: which weights become 4-bit, the quantized weight object the model
// owns (bitsandbytes' Linear4bit state: packed codes, double-quantized scales), and the quantization options
// of a load. The kernels and the exact format live in cpu/q4.hpp; this file never computes on activations.
//
// Recipe (bitsandbytes + PEFT QLoRA, transformers' BitsAndBytesConfig(load_in_4bit=True)): every Linear of the
// transformer blocks (q/k/v/o, fused qkv, gate/up/down, fc1/fc2) becomes 4-bit; embeddings, norms, biases and
// lm_head stay full precision. Quantization happens while loading, one tensor at a time (model.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../cpu/q4.hpp"
#include "llmt.h"

namespace llmt {

struct QuantSpec {
  bool enabled = false;
  cpu::Q4Type type = cpu::Q4Type::NF4;
  bool double_quant = true;  // bnb_4bit_use_double_quant (QLoRA's default)
};

/** Parses "none" | "nf4" | "fp4" (case-sensitive), as the job field and the CLI flag spell it. */
llmt_status parse_quant_spec(const std::string &s, QuantSpec &out);
/** "nf4", "fp4" or "none". */
const char *quant_name(const QuantSpec &q);

/** One frozen 4-bit weight [rows, cols] in host memory. */
struct Q4Weight {
  cpu::Q4Type type = cpu::Q4Type::NF4;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> packed;    // [(n+1)/2]
  std::vector<float> absmax;      // [ceil(n/64)] (empty when double-quantized)
  std::vector<uint8_t> qabsmax;   // [ceil(n/64)] (double-quantized)
  std::vector<float> absmax2;     // [ceil(nb/256)]
  float offset = 0.0f;
  int64_t numel() const { return rows * cols; }
  size_t bytes() const;           // memory held
  cpu::Q4View view() const;
};

/** Quantizes w[rows·cols] (fp32, row-major) as bitsandbytes.functional.quantize_4bit(w, blocksize=64,
 *  quant_type, compress_statistics=double_quant) does. */
void quantize_weight(const float *w, int64_t rows, int64_t cols, const QuantSpec &spec, Q4Weight &out);
/** The dequantized weight (tests and tools only: the model never builds it). */
std::vector<float> dequantize_weight(const Q4Weight &q);

/** Quantizes every floating tensor of a safetensors file and writes them in transformers' bitsandbytes 4-bit
 *  layout: `<name>` uint8 [(n+1)/2, 1], `<name>.absmax` (uint8 codes when double-quantized, else fp32),
 *  `<name>.quant_map` fp32[16], `<name>.nested_absmax` fp32, `<name>.nested_quant_map` fp32[256],
 *  `<name>.quant_state.bitsandbytes__<nf4|fp4>` (uint8 bytes of the JSON {quant_type, blocksize, dtype, shape,
 *  nested_blocksize, nested_offset, nested_dtype}); with `dequantized`, also `<name>.dequantized` fp32 (ours,
 *  for verification against bitsandbytes: tests/python/bnb_reference.py). */
llmt_status quantize_safetensors(const std::string &in, const std::string &out, const QuantSpec &spec, bool dequantized);

}  // namespace llmt
