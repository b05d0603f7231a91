// tokdata.hpp — the training data the engine reads: the tokenized dataset file (.tok, layout in
// docs/formats.md, memory-mapped) or, for tests and the verification subcommands, a JSON tokens file
// {"input_ids": [[...]], "labels": [[...]]}. The engine never sees text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "json.hpp"
#include "llmt.h"

namespace llmt {

class TokData {
 public:
  ~TokData();
  /** Opens a .tok file (by magic) or a JSON tokens file. Errors name the file and the problem. */
  static std::unique_ptr<TokData> open(const std::string &path, llmt_status &st);
  int64_t size() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t length(int64_t i) const { return static_cast<int64_t>(offsets_[i + 1] - offsets_[i]); }
  /** Sample i: ids and labels (HF-style, unshifted; −100 where not trained on). */
  void sample(int64_t i, std::vector<int32_t> &ids, std::vector<int32_t> &labels) const;
  const Json &header() const { return header_; }
  /** Packed rows carry position ids that restart at 0 where each sample begins. */
  bool packed() const { return pos_ != nullptr; }
  void positions(int64_t i, std::vector<int32_t> &pos) const;
  int64_t pad_id() const { return pad_id_; }
  int64_t max_token_id() const { return max_id_; }

 private:
  TokData() = default;
  Json header_;
  std::vector<uint64_t> offsets_;
  // either owned vectors (JSON) or pointers into a mapping (.tok)
  std::vector<int32_t> own_ids_;
  std::vector<int32_t> own_labels_;
  const int32_t *ids_ = nullptr;
  const uint8_t *mask_ = nullptr;
  const int32_t *pos_ = nullptr;  // packed files only
  void *map_ = nullptr;
  size_t map_size_ = 0;
  int64_t pad_id_ = 0;
  int64_t max_id_ = -1;
};

/** Writes a .tok file (used by tests and by `llmt-engine` tooling; the app's writer is in TypeScript). */
llmt_status write_tok(const std::string &path, const Json &header, const std::vector<std::vector<int32_t>> &ids,
                      const std::vector<std::vector<int32_t>> &labels);

}  // namespace llmt
