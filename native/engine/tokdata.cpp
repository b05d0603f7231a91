// tokdata.cpp — reading the .tok tokenized dataset (memory-mapped, validated) and JSON token files.
// Layout (little-endian; docs/formats.md is the reference):
//   "LLMTTOK1" | u32 version=1 | u32 header_len | header JSON | zero padding to a multiple of 8 |
//   u64 offsets[num_samples + 1] | i32 ids[num_tokens] | u8 mask[num_tokens]
//   [| i32 position_ids[num_tokens]   when the header says "packed": true]
// mask[t] = 1 when ids[t] is a label (HF labels[t] = ids[t]), 0 when labels[t] = −100.
#include "tokdata.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "safetensors.hpp"
#include "status.hpp"

namespace llmt {

namespace {
const char kMagic[8] = {'L', 'L', 'M', 'T', 'T', 'O', 'K', '1'};
size_t align8(size_t n) { return (n + 7) & ~size_t(7); }
}  // namespace

TokData::~TokData() {
  if (map_) ::munmap(map_, map_size_);
}

std::unique_ptr<TokData> TokData::open(const std::string &path, llmt_status &st) {
  std::unique_ptr<TokData> d(new TokData());
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    st = set_error(LLMT_ERR_IO, "cannot open dataset " + path + ": " + std::strerror(errno));
    return nullptr;
  }
  struct stat sb;
  ::fstat(fd, &sb);
  const size_t size = static_cast<size_t>(sb.st_size);
  char head[8] = {0};
  ssize_t got = size >= 8 ? ::pread(fd, head, 8, 0) : 0;
  if (got == 8 && std::memcmp(head, kMagic, 8) == 0) {
    void *m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) {
      st = set_error(LLMT_ERR_IO, "cannot map " + path + ": " + std::strerror(errno));
      return nullptr;
    }
    d->map_ = m;
    d->map_size_ = size;
    const uint8_t *p = static_cast<const uint8_t *>(m);
    auto bad = [&](const std::string &why) {
      st = set_error(LLMT_ERR_BAD_INPUT, "dataset " + path + " is damaged: " + why +
                                             "; prepare it again (llms-train data prepare)");
      return nullptr;
    };
    if (size < 16) return bad("the file is shorter than its fixed header");
    uint32_t version, hlen;
    std::memcpy(&version, p + 8, 4);
    std::memcpy(&hlen, p + 12, 4);
    if (version != 1) {
      st = set_error(LLMT_ERR_UNSUPPORTED, "dataset " + path + " has .tok version " + std::to_string(version) +
                                               "; this engine reads version 1 — prepare it again with this version");
      return nullptr;
    }
    if (16 + static_cast<size_t>(hlen) > size) return bad("the header length runs past the end of the file");
    std::string err;
    if (!Json::parse(std::string(reinterpret_cast<const char *>(p + 16), hlen), d->header_, err) || !d->header_.is_object()) {
      return bad("its header is not a JSON object (" + err + ")");
    }
    const int64_t ns = d->header_.get_int("num_samples", -1), nt = d->header_.get_int("num_tokens", -1);
    if (ns < 0 || nt < 0) return bad("its header lacks num_samples/num_tokens");
    const size_t off = align8(16 + hlen);
    const bool packed = d->header_.get_bool("packed", false);
    const size_t need = off + 8 * static_cast<size_t>(ns + 1) + 4 * static_cast<size_t>(nt) + static_cast<size_t>(nt) +
                        (packed ? 4 * static_cast<size_t>(nt) : 0);
    if (need != size) {
      return bad("it is " + std::to_string(size) + " bytes but its header implies " + std::to_string(need) + " (truncated?)");
    }
    d->offsets_.resize(static_cast<size_t>(ns + 1));
    std::memcpy(d->offsets_.data(), p + off, 8 * static_cast<size_t>(ns + 1));
    if (d->offsets_[0] != 0 || d->offsets_.back() != static_cast<uint64_t>(nt)) return bad("its sample offsets do not span the tokens");
    for (int64_t i = 0; i < ns; ++i)
      if (d->offsets_[i + 1] <= d->offsets_[i]) return bad("sample " + std::to_string(i) + " is empty or its offsets decrease");
    d->ids_ = reinterpret_cast<const int32_t *>(p + off + 8 * static_cast<size_t>(ns + 1));
    d->mask_ = p + off + 8 * static_cast<size_t>(ns + 1) + 4 * static_cast<size_t>(nt);
    if (packed) {
      d->pos_ = reinterpret_cast<const int32_t *>(d->mask_ + nt);
      for (int64_t i = 0; i < ns; ++i) {
        int32_t first;
        std::memcpy(&first, d->pos_ + d->offsets_[i], 4);
        if (first != 0) return bad("packed row " + std::to_string(i) + " does not start at position 0");
        for (uint64_t t = d->offsets_[i] + 1; t < d->offsets_[i + 1]; ++t) {
          int32_t cur, prev;
          std::memcpy(&cur, d->pos_ + t, 4);
          std::memcpy(&prev, d->pos_ + t - 1, 4);
          if (cur != 0 && cur != prev + 1) return bad("packed row " + std::to_string(i) + " has position ids that neither count up nor restart");
        }
      }
    }
    for (int64_t t = 0; t < nt; ++t) {
      int32_t id;
      std::memcpy(&id, d->ids_ + t, 4);
      if (id < 0) return bad("token " + std::to_string(t) + " has a negative id");
      if (id > d->max_id_) d->max_id_ = id;
    }
    d->pad_id_ = d->header_.get_int("pad_id", 0);
    if (d->pad_id_ < 0) d->pad_id_ = 0;
    st = LLMT_OK;
    return d;
  }
  ::close(fd);
  // JSON tokens file
  std::string text;
  st = read_text_file(path, text);
  if (st != LLMT_OK) return nullptr;
  Json j;
  std::string err;
  if (!Json::parse(text, j, err)) {
    st = set_error(LLMT_ERR_BAD_INPUT, path + " is neither a .tok dataset nor valid JSON: " + err);
    return nullptr;
  }
  const Json &ids = j.get("input_ids");
  const Json &labels = j.get("labels");
  if (!ids.is_array() || ids.size() == 0) {
    st = set_error(LLMT_ERR_BAD_INPUT, path + ": \"input_ids\" must be a non-empty list of lists of token ids");
    return nullptr;
  }
  if (!labels.is_null() && (!labels.is_array() || labels.size() != ids.size())) {
    st = set_error(LLMT_ERR_BAD_INPUT, path + ": \"labels\" must be a list with one row per input_ids row");
    return nullptr;
  }
  d->offsets_.push_back(0);
  for (size_t r = 0; r < ids.size(); ++r) {
    const Json &row = ids[r];
    if (!row.is_array() || row.size() == 0) {
      st = set_error(LLMT_ERR_BAD_INPUT, path + ": input_ids row " + std::to_string(r) + " must be a non-empty list");
      return nullptr;
    }
    const Json *lrow = labels.is_null() ? nullptr : &labels[r];
    if (lrow && (!lrow->is_array() || lrow->size() != row.size())) {
      st = set_error(LLMT_ERR_BAD_INPUT, path + ": labels row " + std::to_string(r) + " must have the same length as input_ids row " + std::to_string(r));
      return nullptr;
    }
    for (size_t t = 0; t < row.size(); ++t) {
      if (!row[t].is_integer() || row[t].as_int() < 0 || row[t].as_int() > INT32_MAX) {
        st = set_error(LLMT_ERR_BAD_INPUT, path + ": input_ids[" + std::to_string(r) + "][" + std::to_string(t) + "] is not a token id");
        return nullptr;
      }
      d->own_ids_.push_back(static_cast<int32_t>(row[t].as_int()));
      d->max_id_ = std::max<int64_t>(d->max_id_, row[t].as_int());
      int64_t lab = row[t].as_int();  // no labels: every token is one (HF's causal-LM collator: labels = input_ids)
      if (lrow) {
        const Json &lv = (*lrow)[t];
        if (!lv.is_integer() || (lv.as_int() != -100 && (lv.as_int() < 0 || lv.as_int() > INT32_MAX))) {
          st = set_error(LLMT_ERR_BAD_INPUT, path + ": labels[" + std::to_string(r) + "][" + std::to_string(t) + "] must be a token id or -100");
          return nullptr;
        }
        lab = lv.as_int();
      }
      d->own_labels_.push_back(static_cast<int32_t>(lab));
    }
    d->offsets_.push_back(d->own_ids_.size());
  }
  d->ids_ = d->own_ids_.data();
  d->header_ = Json::object();
  d->pad_id_ = j.get_int("pad_id", 0);
  st = LLMT_OK;
  return d;
}

void TokData::sample(int64_t i, std::vector<int32_t> &ids, std::vector<int32_t> &labels) const {
  const uint64_t b = offsets_[i], e = offsets_[i + 1];
  ids.resize(e - b);
  labels.resize(e - b);
  for (uint64_t t = b; t < e; ++t) {
    int32_t id;
    std::memcpy(&id, ids_ + t, 4);
    ids[t - b] = id;
    if (mask_) labels[t - b] = mask_[t] ? id : -100;
    else labels[t - b] = own_labels_[t];
  }
}

void TokData::positions(int64_t i, std::vector<int32_t> &pos) const {
  const uint64_t b = offsets_[i], e = offsets_[i + 1];
  pos.resize(e - b);
  for (uint64_t t = b; t < e; ++t) {
    if (pos_) std::memcpy(&pos[t - b], pos_ + t, 4);
    else pos[t - b] = static_cast<int32_t>(t - b);
  }
}

llmt_status write_tok(const std::string &path, const Json &header_in, const std::vector<std::vector<int32_t>> &ids,
                      const std::vector<std::vector<int32_t>> &labels) {
  if (ids.size() != labels.size()) return set_error(LLMT_ERR_BAD_INPUT, "write_tok: ids and labels differ in rows");
  Json header = header_in.is_object() ? header_in : Json::object();
  uint64_t nt = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i].empty() || ids[i].size() != labels[i].size()) return set_error(LLMT_ERR_BAD_INPUT, "write_tok: row " + std::to_string(i) + " is empty or mismatched");
    nt += ids[i].size();
    for (size_t t = 0; t < ids[i].size(); ++t)
      if (labels[i][t] != -100 && labels[i][t] != ids[i][t])
        return set_error(LLMT_ERR_BAD_INPUT, "write_tok: a .tok label must be -100 or the token id itself (row " + std::to_string(i) + ", position " + std::to_string(t) + ")");
  }
  header.set("num_samples", Json::integer(static_cast<int64_t>(ids.size())));
  header.set("num_tokens", Json::integer(static_cast<int64_t>(nt)));
  const std::string h = header.dump();
  std::string out(kMagic, 8);
  uint32_t version = 1, hlen = static_cast<uint32_t>(h.size());
  out.append(reinterpret_cast<const char *>(&version), 4);
  out.append(reinterpret_cast<const char *>(&hlen), 4);
  out += h;
  out.resize(align8(out.size()), '\0');
  uint64_t off = 0;
  out.append(reinterpret_cast<const char *>(&off), 8);
  for (const auto &r : ids) {
    off += r.size();
    out.append(reinterpret_cast<const char *>(&off), 8);
  }
  for (const auto &r : ids) out.append(reinterpret_cast<const char *>(r.data()), 4 * r.size());
  for (size_t i = 0; i < ids.size(); ++i)
    for (size_t t = 0; t < ids[i].size(); ++t) out.push_back(labels[i][t] == -100 ? 0 : 1);
  return write_file_atomic(path, out.data(), out.size());
}

}  // namespace llmt
