// modelops.hpp — whole-folder operations of the model manager: converting a PyTorch checkpoint to
// safetensors once (fast later loads), and merging a PEFT LoRA adapter (or a Chinese-LLaMA-Alpaca style
// delta with an extended vocabulary) into its base, saved as an HF folder in the base dtype.
// Both stream tensor by tensor (the whole model is never held in float32) and write atomically: the
// output folder appears complete under its final name or not at all.
#pragma once

#include <string>

#include "json.hpp"
#include "llmt.h"

namespace llmt {

struct OpCallbacks {
  llmt_event_fn on_event = nullptr;  // {"event":"progress","stage":..,"done":i,"total":n,"name":..}
  llmt_abort_fn abort = nullptr;
  void *user = nullptr;
};

/**
 * `dir` holds pytorch_model.bin (or its sharded index), or is a PEFT adapter folder with adapter_model.bin.
 * Writes model.safetensors (+ model-0000i-of-0000n.safetensors and model.safetensors.index.json when the
 * source was sharded or exceeds `max_shard_bytes`), or adapter_model.safetensors, into `out` (empty or equal
 * to `dir`: next to the .bin; otherwise a new folder with every other file copied). Tensors keep their
 * names, dtypes and values bit for bit. `report` describes what was written.
 */
llmt_status convert_checkpoint(const std::string &dir, const std::string &out, uint64_t max_shard_bytes,
                               const OpCallbacks &cb, Json &report);

/**
 * merged W = W + s·(B·A) for every LoRA pair of the adapter (s = alpha/r, or alpha/√r with rsLoRA; rank and
 * alpha patterns honoured), full tensors (modules_to_save, biases) replace the base's. A full embedding /
 * lm_head with more rows than the base extends the vocabulary (Chinese-LLaMA-Alpaca): config.json's
 * vocab_size follows, and the adapter folder's tokenizer is required to have exactly that many tokens.
 * options: {"dtype": "auto"|"float32"|"float16"|"bfloat16", "max_shard_bytes": N}. `out` must not exist
 * (or be an empty folder). config.json, generation_config.json, tokenizer and remote-code files are copied
 * (the adapter folder's tokenizer files win).
 */
llmt_status merge_adapter(const std::string &model_dir, const std::string &adapter_dir, const std::string &out,
                          const Json &options, const OpCallbacks &cb, Json &report);

/** Number of tokens of the tokenizer in `dir` (tokenizer.json, or tokenizer.model + added_tokens.json);
 *  -1 when the folder has no tokenizer. Errors: BAD_INPUT for a damaged tokenizer file. */
llmt_status tokenizer_size(const std::string &dir, int64_t &out);

}  // namespace llmt
