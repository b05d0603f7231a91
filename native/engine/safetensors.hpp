// safetensors.hpp — reading and writing the safetensors format (8-byte little-endian header length,
// JSON header {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {str: str}}, then data).
// Reading memory-maps the file and validates everything before any tensor is used: header length within
// the file and below 100 MB, valid UTF-8 JSON object, known dtype, shape × dtype size = byte span, spans
// inside the data area, sorted and neither overlapping nor leaving gaps (as the reference implementation
// requires). Errors name the file and the tensor and carry a hint ("truncated download?").
// Writing goes to `<path>.tmp` and is renamed into place only after a successful flush + fsync: a failed
// or interrupted write never leaves a half-written file under the final name.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "llmt.h"

namespace llmt {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

/** "F32", "F16", ... as spelled in safetensors headers. */
const char *dtype_name(DType t);
size_t dtype_size(DType t);
bool dtype_from_name(const std::string &name, DType &out);

/** fp16 / bf16 <-> fp32 conversions (round-to-nearest-even when narrowing; NaN stays NaN). */
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t b);
uint16_t f32_to_bf16(float f);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t *data = nullptr;  // inside the mapping; valid while the SafetensorsFile lives
  size_t nbytes = 0;
  int64_t numel() const;
};

/** A memory-mapped, validated safetensors file. */
class SafetensorsFile {
 public:
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  /** Opens and validates. On failure returns null, sets `status` and llmt_last_error via set_error(). */
  static std::unique_ptr<SafetensorsFile> open(const std::string &path, llmt_status &status);

  const std::string &path() const { return path_; }
  const std::vector<TensorInfo> &tensors() const { return tensors_; }  // in file order
  const TensorInfo *find(const std::string &name) const;               // null if absent
  const std::map<std::string, std::string> &metadata() const { return metadata_; }

  /** Copies a tensor into `out` as float32 (converting F16/BF16/F64). Errors: BAD_INPUT for other dtypes. */
  llmt_status read_f32(const TensorInfo &t, float *out) const;

  /** Wraps tensors another reader found (torchbin.cpp: PyTorch checkpoints). Their data lies inside `map`
   *  (`map_size` bytes, now owned: unmapped — freed on Windows — with this object) or inside `owned`
   *  (copies of non-contiguous views). `format` is "pt" for PyTorch checkpoints. */
  static std::unique_ptr<SafetensorsFile> adopt(const std::string &path, void *map, size_t map_size,
                                                std::vector<std::vector<uint8_t>> owned, std::vector<TensorInfo> tensors,
                                                const std::string &format);
  /** "safetensors", or what adopt() was given ("pt"). */
  const std::string &format() const { return format_; }

 private:
  SafetensorsFile() = default;
  std::string format_ = "safetensors";
  std::vector<std::vector<uint8_t>> owned_;
  std::string path_;
  void *map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, const TensorInfo *> index_;
  std::map<std::string, std::string> metadata_;
};

/** A tensor to write. `data` holds numel × dtype_size bytes in the given dtype. */
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void *data;
};

/**
 * Writes a safetensors file atomically (temp file, fsync, rename). Tensors are written ordered by element
 * size (largest first), then name, as the Python library does, so data stays aligned; `metadata` becomes "__metadata__" (e.g. {"format": "pt"}).
 * Errors: IO (with the OS reason, e.g. "No space left on device") — the final path is left untouched.
 */
llmt_status write_safetensors(const std::string &path, const std::vector<TensorToWrite> &tensors,
                              const std::map<std::string, std::string> &metadata);

/**
 * A model's weights across one file or a sharded set (`model.safetensors.index.json` with a
 * "weight_map" of tensor name -> shard file). Every shard named by the index must exist and be valid;
 * a tensor listed in the index must be in the shard it names.
 */
class WeightSet {
 public:
  /** Opens `dir/model.safetensors` or `dir/model.safetensors.index.json` (+ shards); where neither exists,
   *  `dir/pytorch_model.bin.index.json` (+ shards) or `dir/pytorch_model.bin` (see torchbin.hpp). */
  static std::unique_ptr<WeightSet> open_dir(const std::string &dir, llmt_status &status);
  const TensorInfo *find(const std::string &name) const;
  std::vector<std::string> names() const;  // sorted
  /** The file a tensor lives in (for error messages). */
  std::string file_of(const std::string &name) const;
  llmt_status read_f32(const std::string &name, float *out) const;
  /** The files in order (shards in order of first mention in the index). */
  const std::vector<std::unique_ptr<SafetensorsFile>> &files() const { return files_; }
  /** "safetensors" or "pt" (pytorch_model.bin checkpoints, read by torchbin.cpp's restricted unpickler). */
  const std::string &format() const { return format_; }

 private:
  std::string format_ = "safetensors";
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile *, const TensorInfo *>> index_;
};

/** Reads a whole small text file (config.json etc.). IO error names the path. */
llmt_status read_text_file(const std::string &path, std::string &out);
/** Writes a text file atomically (temp + fsync + rename). */
llmt_status write_text_file_atomic(const std::string &path, const std::string &text);
/** Writes raw bytes atomically. */
llmt_status write_file_atomic(const std::string &path, const void *data, size_t size);

}  // namespace llmt
