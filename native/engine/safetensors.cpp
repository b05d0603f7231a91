// safetensors.cpp — reading (memory-mapped, fully validated before use), writing (atomic: temp file,
// fsync, rename) and sharded weight sets of safetensors files; fp16/bf16 conversions; small atomic
// file helpers. Every failure is a status plus a message naming the file, the tensor and a hint.
#include "safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>

#ifdef _WIN32
#include <io.h>
#include <windows.h>
#ifndef S_ISREG
#define S_ISREG(m) (((m) & S_IFMT) == S_IFREG)
#endif
#ifndef S_ISDIR
#define S_ISDIR(m) (((m) & S_IFMT) == S_IFDIR)
#endif
#else
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "json.hpp"
#include "status.hpp"
#include "torchbin.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this reader assumes a little-endian host");
#endif

namespace llmt {

namespace {

constexpr uint64_t kMaxHeaderSize = 100000000;  // the reference implementation's limit (100 MB)

// Dtypes the safetensors format defines that this engine has no DType for.
const char *const kSpecOnlyDtypes[] = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
                                       "U16",     "U32",     "U64",     "C64"};

std::string errno_text(int err) { return std::strerror(err); }

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string join_path(const std::string &dir, const std::string &name) {
  if (dir.empty()) return name;
  const char last = dir.back();
  if (last == '/' || last == '\\') return dir + name;
  return dir + "/" + name;
}

bool path_exists(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string shape_text(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// numel × element size with overflow detection (false when it does not fit in 64 bits).
bool byte_size(const std::vector<int64_t> &shape, size_t elem, uint64_t &out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    const auto ud = static_cast<uint64_t>(d);
    if (ud != 0 && n > UINT64_MAX / ud) return false;
    n *= ud;
  }
  if (n > UINT64_MAX / elem) return false;
  out = n * elem;
  return true;
}

// A shard name from an index: relative, with no ".." component (it must stay inside the model folder).
bool is_plain_relative_path(const std::string &p) {
  if (p.empty() || p[0] == '/' || p[0] == '\\' || (p.size() > 1 && p[1] == ':')) return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t stop = p.find_first_of("/\\", start);
    if (stop == std::string::npos) stop = p.size();
    if (p.compare(start, stop - start, "..") == 0) return false;
    start = stop + 1;
  }
  return true;
}

void remove_quietly(const std::string &path) { std::remove(path.c_str()); }

#ifndef _WIN32
// Makes a completed rename durable; best effort (some filesystems refuse fsync on a directory).
void fsync_parent_dir(const std::string &path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int flags = O_RDONLY;
#ifdef O_DIRECTORY
  flags |= O_DIRECTORY;
#endif
  const int fd = ::open(dir.c_str(), flags);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}
#endif

struct Chunk {
  const void *data;
  size_t size;
};

// Writes the chunks to `path`.tmp, flushes, fsyncs, closes and renames it over `path`. On failure the
// temp file is removed, `path` is untouched, and the status is LLMT_ERR_IO with the OS reason.
llmt_status write_chunks_atomic(const std::string &path, const std::vector<Chunk> &chunks) {
  const std::string tmp = path + ".tmp";
  std::FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    const int err = errno;
    return set_error(LLMT_ERR_IO, "cannot write " + path + ": cannot create " + tmp + ": " + errno_text(err));
  }
  auto fail = [&](const char *what, int err) {
    if (f) std::fclose(f);
    remove_quietly(tmp);
    return set_error(LLMT_ERR_IO, "cannot write " + path + ": " + what + " " + tmp + " failed: " +
                                      errno_text(err) + " (the previous " + path + ", if any, is unchanged)");
  };
  for (const Chunk &c : chunks) {
    if (c.size == 0) continue;
    errno = 0;
    if (std::fwrite(c.data, 1, c.size, f) != c.size) return fail("writing", errno ? errno : EIO);
  }
  errno = 0;
  if (std::fflush(f) != 0) return fail("flushing", errno ? errno : EIO);
#ifdef _WIN32
  if (::_commit(::_fileno(f)) != 0) return fail("syncing", errno ? errno : EIO);
#else
  if (::fsync(::fileno(f)) != 0) return fail("syncing", errno ? errno : EIO);
#endif
  std::FILE *closing = f;
  f = nullptr;
  errno = 0;
  if (std::fclose(closing) != 0) return fail("closing", errno ? errno : EIO);
#ifdef _WIN32
  if (!MoveFileExA(tmp.c_str(), path.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
    remove_quietly(tmp);
    return set_error(LLMT_ERR_IO, "cannot write " + path + ": renaming " + tmp + " into place failed (Windows error " +
                                      std::to_string(GetLastError()) + ")");
  }
#else
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    remove_quietly(tmp);
    return set_error(LLMT_ERR_IO, "cannot write " + path + ": renaming " + tmp + " into place failed: " +
                                      errno_text(err));
  }
  fsync_parent_dir(path);
#endif
  return LLMT_OK;
}

}  // namespace

// ---- dtypes and conversions -----------------------------------------------------------------------

const char *dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16: return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL: return 1;
  }
  return 0;
}

bool dtype_from_name(const std::string &name, DType &out) {
  static const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64,
                              DType::I32, DType::I16, DType::I8,   DType::U8,  DType::BOOL};
  for (DType t : all) {
    if (name == dtype_name(t)) {
      out = t;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  if (exp == 0x1F) return bits_f32(sign | 0x7F800000 | (mant << 13));  // inf / NaN (payload kept)
  if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return bits_f32(sign);  // ±0
  // Subnormal: mant × 2^-24. Normalize into an fp32 normal.
  int e = -1;
  do {
    mant <<= 1;
    ++e;
  } while ((mant & 0x400) == 0);
  return bits_f32(sign | static_cast<uint32_t>(112 - e) << 23 | ((mant & 0x3FF) << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7FFFFFFF;
  if (x >= 0x7F800000) {
    if (x > 0x7F800000) return static_cast<uint16_t>(sign | 0x7E00 | ((x >> 13) & 0x3FF));  // quiet NaN
    return static_cast<uint16_t>(sign | 0x7C00);
  }
  if (x >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);  // >= 65520 rounds to inf
  if (x >= 0x38800000) {  // fp16 normal range (>= 2^-14)
    const uint32_t odd = (x >> 13) & 1;
    x += 0xC8000FFFu + odd;  // re-bias the exponent (-112 << 23) and round half to even
    return static_cast<uint16_t>(sign | (x >> 13));
  }
  // fp16 subnormal or zero: the result counts units of 2^-24.
  const int e = static_cast<int>(x >> 23);
  if (e < 102) return sign;  // below 2^-25: rounds to ±0
  const uint32_t m = (x & 0x7FFFFF) | 0x800000;
  const int shift = 126 - e;  // 14..24
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;  // may carry into the smallest normal: still right
  return static_cast<uint16_t>(sign | q);
}

float bf16_to_f32(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x0040);  // quiet NaN
  const uint32_t odd = (x >> 16) & 1;
  return static_cast<uint16_t>((x + 0x7FFF + odd) >> 16);  // round half to even; overflow gives inf
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- reading --------------------------------------------------------------------------------------

SafetensorsFile::~SafetensorsFile() {
  if (!map_) return;
#ifdef _WIN32
  std::free(map_);
#else
  ::munmap(map_, map_size_);
#endif
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string &path, llmt_status &status) {
  const std::string file = "file " + path;
  auto bad = [&](const std::string &msg) {
    status = set_error(LLMT_ERR_BAD_INPUT, msg);
    return nullptr;
  };
  auto io = [&](const std::string &msg) {
    status = set_error(LLMT_ERR_IO, msg);
    return nullptr;
  };

  std::unique_ptr<SafetensorsFile> sf(new SafetensorsFile());
  sf->path_ = path;

  // ---- map the file ----
  int flags = O_RDONLY;
#ifdef O_CLOEXEC
  flags |= O_CLOEXEC;
#endif
#ifdef _WIN32
  flags |= O_BINARY;
#endif
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) {
    const int err = errno;
    return io("cannot open safetensors " + file + ": " + errno_text(err));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return io("cannot read safetensors " + file + ": " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return io("cannot read safetensors " + file + ": not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return bad(file + " is too small to be a safetensors file (" + std::to_string(file_size) +
               " bytes); the download may be truncated");
  }
  if (file_size > static_cast<uint64_t>(SIZE_MAX)) {
    ::close(fd);
    return io("cannot map " + file + ": it is too large for this process's address space");
  }
  const auto size = static_cast<size_t>(file_size);
#ifdef _WIN32
  void *buf = std::malloc(size);
  if (!buf) {
    ::close(fd);
    status = set_error(LLMT_ERR_OOM, "cannot load " + file + ": out of memory for " + std::to_string(size) + " bytes");
    return nullptr;
  }
  size_t got = 0;
  while (got < size) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(size - got, 1u << 30));
    const int r = ::_read(fd, static_cast<char *>(buf) + got, chunk);
    if (r <= 0) {
      const int err = r < 0 ? errno : EIO;
      std::free(buf);
      ::close(fd);
      return io("cannot read " + file + ": " + errno_text(err));
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  sf->map_ = buf;
#else
  void *m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (m == MAP_FAILED) return io("cannot map " + file + " into memory: " + errno_text(map_err));
  sf->map_ = m;
#endif
  sf->map_size_ = size;
  const auto *base = static_cast<const uint8_t *>(sf->map_);

  // ---- header length ----
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > kMaxHeaderSize)
    return bad(file + ": header length " + std::to_string(header_len) +
               " bytes exceeds the 100 MB limit of the format; the file is corrupt or not a safetensors file "
               "(truncated or corrupt download?)");
  if (header_len > file_size - 8)
    return bad(file + ": header length " + std::to_string(header_len) + " bytes is larger than the " +
               std::to_string(file_size - 8) + " bytes after the length field; the download is truncated or corrupt");

  // ---- header JSON ----
  const std::string header_text(reinterpret_cast<const char *>(base + 8), static_cast<size_t>(header_len));
  Json header;
  std::string jerr;
  if (!Json::parse(header_text, header, jerr))
    return bad(file + ": the header is not valid JSON (" + jerr +
               "); the file is corrupt or not a safetensors file");
  if (!header.is_object())
    return bad(file + ": the header is not a JSON object; the file is corrupt or not a safetensors file");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;

  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<TensorInfo> tensors;
  std::vector<Span> spans;
  tensors.reserve(header.size());
  spans.reserve(header.size());

  std::set<std::string> seen;
  for (const auto &member : header.members()) {
    const std::string &name = member.first;
    const Json &entry = member.second;
    if (!seen.insert(name).second)
      return bad(file + " names tensor '" + name + "' twice in its header; the header is malformed");
    if (name == "__metadata__") {
      if (!entry.is_object())
        return bad(file + ": \"__metadata__\" must be an object of string values; the header is malformed");
      for (const auto &kv : entry.members()) {
        if (!kv.second.is_string())
          return bad(file + ": \"__metadata__\" value for key '" + kv.first +
                     "' is not a string (the format allows only string -> string); the header is malformed");
        sf->metadata_[kv.first] = kv.second.as_string();
      }
      continue;
    }
    const std::string tensor = "tensor '" + name + "' in " + file;
    if (!entry.is_object()) return bad(tensor + ": the header entry is not an object; the header is malformed");
    const Json &jdtype = entry.get("dtype");
    const Json &jshape = entry.get("shape");
    const Json &joffsets = entry.get("data_offsets");
    if (!jdtype.is_string()) return bad(tensor + " has no \"dtype\" string; the header is malformed");
    if (!jshape.is_array()) return bad(tensor + " has no \"shape\" array; the header is malformed");
    if (!joffsets.is_array()) return bad(tensor + " has no \"data_offsets\" array; the header is malformed");

    TensorInfo info;
    info.name = name;
    if (!dtype_from_name(jdtype.as_string(), info.dtype)) {
      for (const char *spec : kSpecOnlyDtypes) {
        if (jdtype.as_string() == spec) {
          status = set_error(LLMT_ERR_UNSUPPORTED,
                             tensor + " has dtype " + spec +
                                 ", which this engine does not support (supported: F32, F16, BF16, F64, I64, I32, "
                                 "I16, I8, U8, BOOL); convert the checkpoint first");
          return nullptr;
        }
      }
      return bad(tensor + " has unknown dtype '" + jdtype.as_string() +
                 "' (expected one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL); the header is malformed");
    }
    for (const Json &d : jshape.items()) {
      if (!d.is_integer())
        return bad(tensor + ": shape must be an array of non-negative integers; the header is malformed");
      if (d.as_int() < 0)
        return bad(tensor + " has a negative dimension (" + std::to_string(d.as_int()) +
                   ") in its shape; the header is malformed");
      info.shape.push_back(d.as_int());
    }
    if (joffsets.size() != 2 || !joffsets[0].is_integer() || !joffsets[1].is_integer() ||
        joffsets[0].as_int() < 0 || joffsets[1].as_int() < 0)
      return bad(tensor + ": data_offsets must be two non-negative integers [begin, end]; the header is malformed");
    const auto begin = static_cast<uint64_t>(joffsets[0].as_int());
    const auto end = static_cast<uint64_t>(joffsets[1].as_int());
    if (end < begin)
      return bad(tensor + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                 "] end before they begin; the header is malformed");
    uint64_t need = 0;
    if (!byte_size(info.shape, dtype_size(info.dtype), need))
      return bad(tensor + ": shape " + shape_text(info.shape) + " is too large (overflows 64 bits); the header is malformed");
    if (need != end - begin)
      return bad(tensor + ": shape " + shape_text(info.shape) + " with dtype " + dtype_name(info.dtype) + " needs " +
                 std::to_string(need) + " bytes but data_offsets [" + std::to_string(begin) + ", " +
                 std::to_string(end) + "] span " + std::to_string(end - begin) +
                 " bytes; the header is inconsistent (corrupt file?)");
    if (end > data_size)
      return bad(tensor + " ends at byte " + std::to_string(end) + " but the file's data is only " +
                 std::to_string(data_size) + " bytes: the file is truncated (re-download it)");
    info.data = base + data_start + begin;
    info.nbytes = static_cast<size_t>(need);
    spans.push_back(Span{begin, end, tensors.size()});
    tensors.push_back(std::move(info));
  }

  // ---- the spans must tile the data area exactly, in order ----
  std::sort(spans.begin(), spans.end(), [](const Span &a, const Span &b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const std::string *prev = nullptr;
  for (const Span &s : spans) {
    const std::string &name = tensors[s.index].name;
    if (s.begin < pos)
      return bad("tensors '" + *prev + "' and '" + name + "' in " + file + " overlap (byte " +
                 std::to_string(s.begin) + " is used by both); the header is corrupt");
    if (s.begin > pos)
      return bad(file + " has a gap of " + std::to_string(s.begin - pos) + " unused bytes " +
                 (prev ? "between tensors '" + *prev + "' and '" + name + "'" : "before tensor '" + name + "'") +
                 " (tensor data must be contiguous); the file is corrupt");
    pos = s.end;
    prev = &name;
  }
  if (pos != data_size)
    return bad(file + " has " + std::to_string(data_size - pos) + " extra bytes after the last tensor" +
               (prev ? " ('" + *prev + "')" : std::string()) +
               " that no header entry describes; the file is corrupt or was not written completely");

  // ---- file order (by data offset) and the name index ----
  sf->tensors_.reserve(tensors.size());
  for (const Span &s : spans) sf->tensors_.push_back(std::move(tensors[s.index]));
  for (const TensorInfo &t : sf->tensors_) sf->index_[t.name] = &t;
  status = LLMT_OK;
  return sf;
}

const TensorInfo *SafetensorsFile::find(const std::string &name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::adopt(const std::string &path, void *map, size_t map_size,
                                                        std::vector<std::vector<uint8_t>> owned,
                                                        std::vector<TensorInfo> tensors, const std::string &format) {
  std::unique_ptr<SafetensorsFile> sf(new SafetensorsFile());
  sf->path_ = path;
  sf->map_ = map;
  sf->map_size_ = map_size;
  sf->owned_ = std::move(owned);
  sf->tensors_ = std::move(tensors);
  sf->format_ = format;
  for (const TensorInfo &t : sf->tensors_) sf->index_[t.name] = &t;
  return sf;
}

llmt_status SafetensorsFile::read_f32(const TensorInfo &t, float *out) const {
  const auto *lo = static_cast<const uint8_t *>(map_);
  bool inside = lo && t.data >= lo && t.data + t.nbytes <= lo + map_size_;
  for (const auto &b : owned_) inside = inside || (t.data >= b.data() && t.data + t.nbytes <= b.data() + b.size());
  if (!inside && t.nbytes > 0)
    return set_error(LLMT_ERR_BAD_INPUT, "tensor '" + t.name + "' does not belong to file " + path_);
  if (!out && t.nbytes > 0)
    return set_error(LLMT_ERR_BAD_INPUT, "read_f32 of tensor '" + t.name + "': output pointer is NULL");
  const size_t n = t.nbytes / dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::F32:
      if (n) std::memcpy(out, t.data, n * 4);
      return LLMT_OK;
    case DType::F16:
    case DType::BF16: {
      const bool half = t.dtype == DType::F16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.data + 2 * i, 2);  // the data may be unaligned
        out[i] = half ? f16_to_f32(v) : bf16_to_f32(v);
      }
      return LLMT_OK;
    }
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, t.data + 8 * i, 8);
        out[i] = static_cast<float>(v);
      }
      return LLMT_OK;
    default:
      return set_error(LLMT_ERR_BAD_INPUT, "tensor '" + t.name + "' in file " + path_ + " has dtype " +
                                               dtype_name(t.dtype) + ", which cannot be read as float32");
  }
}

// ---- writing --------------------------------------------------------------------------------------

llmt_status write_safetensors(const std::string &path, const std::vector<TensorToWrite> &tensors,
                              const std::map<std::string, std::string> &metadata) {
  const std::string file = "file " + path;
  std::vector<const TensorToWrite *> order;
  order.reserve(tensors.size());
  for (const TensorToWrite &t : tensors) order.push_back(&t);
  // As the Python library: larger element sizes first, then by name — keeps every tensor's data aligned
  // to its element size (the header is padded to 8 bytes).
  std::sort(order.begin(), order.end(), [](const TensorToWrite *a, const TensorToWrite *b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto &kv : metadata) meta.set(kv.first, Json::string(kv.second));
    header.set("__metadata__", std::move(meta));
  }
  std::vector<uint64_t> sizes;
  sizes.reserve(order.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const TensorToWrite &t = *order[i];
    if (t.name.empty()) return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + file + ": a tensor has an empty name");
    if (t.name == "__metadata__")
      return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + file + ": '__metadata__' is reserved, not a tensor name");
    if (i > 0 && order[i - 1]->name == t.name)
      return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + file + ": tensor '" + t.name + "' is given twice");
    uint64_t nbytes = 0;
    for (int64_t d : t.shape)
      if (d < 0)
        return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + file + ": tensor '" + t.name + "' has a negative dimension in shape " +
                                                 shape_text(t.shape));
    if (!byte_size(t.shape, dtype_size(t.dtype), nbytes) || nbytes > static_cast<uint64_t>(SIZE_MAX) ||
        offset + nbytes < offset)
      return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + file + ": tensor '" + t.name + "' shape " +
                                               shape_text(t.shape) + " is too large");
    if (nbytes > 0 && !t.data)
      return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + file + ": tensor '" + t.name + "' has no data");
    Json entry = Json::object();
    entry.set("dtype", Json::string(dtype_name(t.dtype)));
    Json shape = Json::array();
    for (int64_t d : t.shape) shape.push(Json::integer(d));
    entry.set("shape", std::move(shape));
    Json offsets = Json::array();
    offsets.push(Json::integer(static_cast<int64_t>(offset)));
    offsets.push(Json::integer(static_cast<int64_t>(offset + nbytes)));
    entry.set("data_offsets", std::move(offsets));
    header.set(t.name, std::move(entry));
    sizes.push_back(nbytes);
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad to a multiple of 8, as the Python library does
  uint8_t len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));

  std::vector<Chunk> chunks;
  chunks.reserve(order.size() + 2);
  chunks.push_back(Chunk{len, 8});
  chunks.push_back(Chunk{text.data(), text.size()});
  for (size_t i = 0; i < order.size(); ++i) chunks.push_back(Chunk{order[i]->data, static_cast<size_t>(sizes[i])});
  return write_chunks_atomic(path, chunks);
}

// ---- weight sets ----------------------------------------------------------------------------------

std::unique_ptr<WeightSet> WeightSet::open_dir(const std::string &dir, llmt_status &status) {
  static const char *const kIndexName = "model.safetensors.index.json";
  static const char *const kBinIndexName = "pytorch_model.bin.index.json";
  auto fail = [&](llmt_status code, const std::string &msg) {
    status = set_error(code, msg);
    return nullptr;
  };
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    const int err = errno;
    return fail(LLMT_ERR_IO, "cannot open model directory " + dir + ": " + errno_text(err));
  }
  if (!S_ISDIR(st.st_mode)) return fail(LLMT_ERR_IO, "cannot open model directory " + dir + ": not a directory");

  std::unique_ptr<WeightSet> ws(new WeightSet());
  const std::string index_path = join_path(dir, kIndexName);
  const std::string single_path = join_path(dir, "model.safetensors");
  const std::string bin_index_path = join_path(dir, kBinIndexName);
  const std::string bin_path = join_path(dir, "pytorch_model.bin");
  using Opener = std::unique_ptr<SafetensorsFile> (*)(const std::string &, llmt_status &);

  // A sharded set: `index` names each tensor's shard; every shard must exist before any is opened.
  auto open_indexed = [&](const std::string &index_file, const char *index_name, Opener opener) -> bool {
    std::string text;
    llmt_status s = read_text_file(index_file, text);
    if (s != LLMT_OK) {
      status = s;
      return false;
    }
    Json index;
    std::string jerr;
    if (!Json::parse(text, index, jerr))
      return fail(LLMT_ERR_BAD_INPUT, index_file + " is not valid JSON (" + jerr + "); re-download it"), false;
    const Json &map = index.get("weight_map");
    if (!map.is_object())
      return fail(LLMT_ERR_BAD_INPUT, index_file + " has no \"weight_map\" object; re-download it"), false;

    // Shards in order of first mention; all must exist before any is opened.
    std::vector<std::string> shards;
    std::set<std::string> seen;
    for (const auto &kv : map.members()) {
      if (!kv.second.is_string())
        return fail(LLMT_ERR_BAD_INPUT, index_file + ": the weight_map entry for tensor '" + kv.first +
                                            "' is not a file name string"), false;
      const std::string &shard = kv.second.as_string();
      if (!is_plain_relative_path(shard))
        return fail(LLMT_ERR_BAD_INPUT, index_file + ": the weight_map entry for tensor '" + kv.first +
                                            "' names an invalid shard file '" + shard + "'"), false;
      if (seen.insert(shard).second) shards.push_back(shard);
    }
    for (const std::string &shard : shards) {
      if (!path_exists(join_path(dir, shard)))
        return fail(LLMT_ERR_IO, shard + " is missing (listed in " + std::string(index_name) + "); the download of " +
                                     dir + " is incomplete"), false;
    }
    std::map<std::string, const SafetensorsFile *> by_name;
    for (const std::string &shard : shards) {
      llmt_status s2 = LLMT_OK;
      auto f = opener(join_path(dir, shard), s2);
      if (!f) {
        status = s2;
        return false;
      }
      by_name[shard] = f.get();
      ws->files_.push_back(std::move(f));
    }
    for (const auto &kv : map.members()) {
      const SafetensorsFile *f = by_name[kv.second.as_string()];
      if (!f->find(kv.first))
        return fail(LLMT_ERR_BAD_INPUT, "tensor '" + kv.first + "' is listed in " + std::string(index_name) +
                                            " under " + kv.second.as_string() +
                                            " but that shard does not contain it; the index and shards do not match "
                                            "(mixed downloads?)"), false;
    }
    return true;
  };
  auto open_single = [&](const std::string &file, Opener opener) -> bool {
    llmt_status s = LLMT_OK;
    auto f = opener(file, s);
    if (!f) {
      status = s;
      return false;
    }
    ws->files_.push_back(std::move(f));
    return true;
  };

  if (path_exists(index_path)) {
    if (!open_indexed(index_path, kIndexName, &SafetensorsFile::open)) return nullptr;
  } else if (path_exists(single_path)) {
    if (!open_single(single_path, &SafetensorsFile::open)) return nullptr;
  } else if (path_exists(bin_index_path)) {
    ws->format_ = "pt";
    if (!open_indexed(bin_index_path, kBinIndexName, &open_torch_checkpoint)) return nullptr;
  } else if (path_exists(bin_path)) {
    ws->format_ = "pt";
    if (!open_single(bin_path, &open_torch_checkpoint)) return nullptr;
  } else {
    return fail(LLMT_ERR_BAD_INPUT, "no weights found in " + dir + " (expected model.safetensors, " + kIndexName +
                                        ", pytorch_model.bin or " + kBinIndexName + ")");
  }

  for (const auto &f : ws->files_) {
    for (const TensorInfo &t : f->tensors()) {
      auto ins = ws->index_.emplace(t.name, std::make_pair(f.get(), &t));
      if (!ins.second)
        return fail(LLMT_ERR_BAD_INPUT, "tensor '" + t.name + "' is present in both " + ins.first->second.first->path() +
                                            " and " + f->path() + "; the shards do not match (mixed downloads?)");
    }
  }
  status = LLMT_OK;
  return ws;
}

const TensorInfo *WeightSet::find(const std::string &name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.second;
}

std::vector<std::string> WeightSet::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto &kv : index_) out.push_back(kv.first);
  return out;
}

std::string WeightSet::file_of(const std::string &name) const {
  auto it = index_.find(name);
  return it == index_.end() ? std::string() : it->second.first->path();
}

llmt_status WeightSet::read_f32(const std::string &name, float *out) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    std::string where = files_.empty() ? std::string("the weights") : files_.front()->path();
    if (files_.size() > 1) where += " and " + std::to_string(files_.size() - 1) + " other shard(s)";
    return set_error(LLMT_ERR_BAD_INPUT, "tensor '" + name + "' not found in " + where);
  }
  return it->second.first->read_f32(*it->second.second, out);
}

// ---- small files ----------------------------------------------------------------------------------

llmt_status read_text_file(const std::string &path, std::string &out) {
  std::FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    return set_error(LLMT_ERR_IO, "cannot read " + path + ": " + errno_text(err));
  }
  std::string text;
  char buf[65536];
  errno = 0;
  for (;;) {
    const size_t n = std::fread(buf, 1, sizeof(buf), f);
    text.append(buf, n);
    if (n < sizeof(buf)) break;
  }
  if (std::ferror(f)) {
    const int err = errno ? errno : EIO;
    std::fclose(f);
    return set_error(LLMT_ERR_IO, "cannot read " + path + ": " + errno_text(err));
  }
  std::fclose(f);
  out = std::move(text);
  return LLMT_OK;
}

llmt_status write_text_file_atomic(const std::string &path, const std::string &text) {
  return write_chunks_atomic(path, {Chunk{text.data(), text.size()}});
}

llmt_status write_file_atomic(const std::string &path, const void *data, size_t size) {
  if (size > 0 && !data) return set_error(LLMT_ERR_BAD_INPUT, "cannot write " + path + ": no data given");
  return write_chunks_atomic(path, {Chunk{data, size}});
}

}  // namespace llmt
