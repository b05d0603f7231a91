// torchbin.hpp — safe reading of PyTorch checkpoints (`torch.save` zip format, torch >= 1.6:
// pytorch_model.bin, adapter_model.bin, and shards named by pytorch_model.bin.index.json).
//
// No code from a model file ever runs. The pickle inside (`<archive>/data.pkl`) is read by a restricted
// unpickler that knows only the opcodes a state dict uses and only these globals:
//   collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and the
//   typed storage classes torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage.
// Any other callable (os.system, builtins.eval, ...) is refused by name before anything else happens;
// nothing is ever called anyway — the "globals" are only tags the reader interprets.
// Storages are the zip's uncompressed records `<archive>/data/<key>`, memory-mapped; every record's CRC-32
// is checked. A tensor is a view (offset, size, stride) of a storage: contiguous views point into the
// mapping, others are copied out. The legacy pre-1.6 format (a bare pickle stream) is refused with a hint.
#pragma once

#include <memory>
#include <string>

#include "llmt.h"
#include "safetensors.hpp"

namespace llmt {

/** True if `path` starts like a zip archive ("PK\3\4"). */
bool is_zip_file(const std::string &path);

/**
 * Opens a PyTorch zip checkpoint holding a flat state dict {name: tensor} (an OrderedDict or dict).
 * The result behaves like a safetensors file (tensors(), find(), read_f32()) and keeps the file mapped.
 * Errors (status + message naming the file): IO (missing/unreadable), BAD_INPUT (not a zip, truncated,
 * CRC mismatch, a pickle that asks for a callable a state dict never needs, a storage that is too small),
 * UNSUPPORTED (legacy format, compressed records, a value that is not a tensor).
 */
std::unique_ptr<SafetensorsFile> open_torch_checkpoint(const std::string &path, llmt_status &status);

}  // namespace llmt
