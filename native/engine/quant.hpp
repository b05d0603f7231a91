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

#include "json.hpp"

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

/** One frozen 4-bit weight [rows, cols] in host memory, plus its backend copy on a device backend. */
struct Q4Weight {
  cpu::Q4Type type = cpu::Q4Type::NF4;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> packed;    // [(n+1)/2]
  std::vector<float> absmax;      // [ceil(n/64)] (empty when double-quantized)
  std::vector<uint8_t> qabsmax;   // [ceil(n/64)] (double-quantized)
  std::vector<float> absmax2;     // [ceil(nb/256)]
  float offset = 0.0f;
  // The same arrays in backend memory (a backend without host memory: Model::to_device uploads them once, the weight
  // being frozen; Model releases them), else null. dev_code2 is the model's one copy of cpu::dynamic_map().
  uint8_t *dev_packed = nullptr, *dev_qabsmax = nullptr;
  float *dev_absmax = nullptr, *dev_absmax2 = nullptr;
  const float *dev_code2 = nullptr;
  // The host arrays were freed after the upload (the backend copies are the only ones; Model re-creates them by
  // download when it leaves the device backend). Never true on a host-memory backend.
  bool host_freed = false;
  int64_t numel() const { return rows * cols; }
  bool nested() const { return dev_packed ? dev_qabsmax != nullptr : !qabsmax.empty(); }  // double-quantized scales
  size_t bytes() const;           // memory held (host)
  /** The host arrays, or the backend copies once uploaded (dev_packed set). */
  cpu::Q4View view() const;
};

/** Quantizes w[rows·cols] (fp32, row-major) as bitsandbytes.functional.quantize_4bit(w, blocksize=64,
 *  quant_type, compress_statistics=double_quant) does. Returns the flat index of the first NaN/±inf element, −1
 *  when all are finite (the check rides on the quantization itself: see cpu::q4_quantize); callers refuse such a weight. */
int64_t quantize_weight(const float *w, int64_t rows, int64_t cols, const QuantSpec &spec, Q4Weight &out);
/** The error for a weight quantize_weight found non-finite: BAD_INPUT naming the tensor, the element, its file. */
llmt_status non_finite_weight_error(const std::string &tensor, const std::string &file, const std::vector<int64_t> &shape,
                                    int64_t flat_index, float value);
/** The dequantized weight (tests and tools only: the model never builds it). */
std::vector<float> dequantize_weight(const Q4Weight &q);

/** Quantizes every floating tensor of a safetensors file and writes them in transformers' bitsandbytes 4-bit
 *  layout: `<name>` uint8 [(n+1)/2, 1], `<name>.absmax` (uint8 codes when double-quantized, else fp32),
 *  `<name>.quant_map` fp32[16], `<name>.nested_absmax` fp32, `<name>.nested_quant_map` fp32[256],
 *  `<name>.quant_state.bitsandbytes__<nf4|fp4>` (uint8 bytes of the JSON {quant_type, blocksize, dtype, shape,
 *  nested_blocksize, nested_offset, nested_dtype}); with `dequantized`, also `<name>.dequantized` fp32 (ours,
 *  for verification against bitsandbytes: tests/python/bnb_reference.py). */
llmt_status quantize_safetensors(const std::string &in, const std::string &out, const QuantSpec &spec, bool dequantized);

// ---- pre-quantized model folders (transformers' bnb 4-bit checkpoints) ---------------------------------------
// A folder is pre-quantized when config.json holds transformers' BitsAndBytesConfig.to_dict() as
// "quantization_config" with quant_method "bitsandbytes" and load_in_4bit true. Its block linears are stored as
// `quantize_safetensors` writes them; everything else keeps its dtype. The model loads them as stored.

/** From a parsed config.json: `out.enabled` when it describes a bnb 4-bit checkpoint (type, double_quant from
 *  bnb_4bit_quant_type / bnb_4bit_use_double_quant). Errors: UNSUPPORTED for another quant_method (gptq, awq,
 *  …), bnb 8-bit, or a quant storage other than uint8; BAD_INPUT for a malformed quantization_config. */
llmt_status folder_quant_spec(const Json &config, const std::string &where, QuantSpec &out);
/** The same for `dir/config.json`; a missing or unparsable file gives OK with `out` disabled (load_config
 *  reports it). */
llmt_status stored_quant_spec(const std::string &dir, QuantSpec &out);
/** transformers' BitsAndBytesConfig(load_in_4bit=True, …).to_dict() for `spec` (compute dtype float32). */
Json bnb_quantization_config(const QuantSpec &spec);

class WeightSet;
/** True for the tensors that carry a 4-bit weight's state: `<W>.absmax`, `.quant_map`, `.nested_absmax`,
 *  `.nested_quant_map`, `.quant_state.bitsandbytes__nf4|fp4`. */
bool is_q4_state_tensor(const std::string &name);
/** Reads the stored 4-bit weight `name` (with its state tensors) of logical shape `shape` = [rows, cols]:
 *  checks the quant_state JSON (quant_type = spec's, blocksize 64, shape, nested 256 / float32), the sizes, and
 *  that quant_map / nested_quant_map are bitsandbytes' standard maps; appends the names it used to `used`.
 *  Errors: BAD_INPUT naming the tensor and what is wrong. */
llmt_status read_q4_weight(const WeightSet &ws, const std::string &name, const std::vector<int64_t> &shape,
                           const QuantSpec &spec, Q4Weight &out, std::vector<std::string> &used);
/** The logical element count and original dtype ("bfloat16", …) of a stored 4-bit weight, from its quant_state;
 *  false when `name` is not one. */
bool stored_q4_info(const WeightSet &ws, const std::string &name, int64_t &numel, std::string &dtype);

/** `llmt-engine quantize --model DIR --out DIR`: writes a bnb 4-bit checkpoint of the HF folder `in_dir` — the
 *  block linears (the weights Model::load quantizes) in the layout above, every other tensor unchanged in its
 *  dtype, config.json plus "quantization_config", the other files (tokenizer, generation config) copied. Streams:
 *  one fp32 tensor at a time; the output holds the 4-bit weights in memory until written (≈ 0.53 byte/param).
 *  Errors: IO, BAD_INPUT, UNSUPPORTED (the folder's family, or a folder already quantized). */
llmt_status quantize_model_dir(const std::string &in_dir, const std::string &out_dir, const QuantSpec &spec);

}  // namespace llmt
