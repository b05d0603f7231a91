// torchbin.cpp — PyTorch zip checkpoints read without running any of their code (see torchbin.hpp).
// Layout (torch.save since 1.6): a zip (zip64 when large) of uncompressed records `<archive>/data.pkl`
// (pickle protocol 2, the object), `<archive>/data/<key>` (one raw little-endian storage each),
// `<archive>/version`, `<archive>/byteorder` (newer). A tensor pickles as
//   torch._utils._rebuild_tensor_v2(PERSID('storage', torch.FloatStorage, key, location, numel),
//                                   storage_offset, size, stride, requires_grad, OrderedDict())
// and a state dict as collections.OrderedDict() + SETITEMS (+ BUILD with its `_metadata`).
#include "torchbin.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#ifdef _WIN32
#include <io.h>
#else
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "status.hpp"

namespace llmt {

namespace {

// ---- CRC-32 (zip's polynomial), slicing-by-8 -------------------------------------------------------------

struct CrcTables {
  uint32_t t[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

uint32_t crc32(const uint8_t *p, size_t n) {
  static const CrcTables T;
  uint32_t c = 0xFFFFFFFFu;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = T.t[7][lo & 0xff] ^ T.t[6][(lo >> 8) & 0xff] ^ T.t[5][(lo >> 16) & 0xff] ^ T.t[4][lo >> 24] ^
        T.t[3][hi & 0xff] ^ T.t[2][(hi >> 8) & 0xff] ^ T.t[1][(hi >> 16) & 0xff] ^ T.t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = T.t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint16_t rd16(const uint8_t *p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t *p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t rd64(const uint8_t *p) { return rd32(p) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }

// ---- the mapped file -------------------------------------------------------------------------------------

struct Mapping {
  void *data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (!data) return;
#ifdef _WIN32
    std::free(data);
#else
    ::munmap(data, size);
#endif
  }
  void *release() {
    void *d = data;
    data = nullptr;
    return d;
  }
};

llmt_status map_file(const std::string &path, Mapping &m) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    const int err = errno;
    return set_error(LLMT_ERR_IO, "cannot open " + path + ": " + std::strerror(err));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return set_error(LLMT_ERR_IO, "cannot stat " + path + ": " + std::strerror(err));
  }
  m.size = static_cast<size_t>(st.st_size);
  if (m.size == 0) {
    ::close(fd);
    return LLMT_OK;
  }
#ifdef _WIN32
  m.data = std::malloc(m.size);
  if (!m.data) {
    ::close(fd);
    return set_error(LLMT_ERR_OOM, "cannot read " + path + ": out of memory");
  }
  size_t got = 0;
  while (got < m.size) {
    const int n = ::read(fd, static_cast<char *>(m.data) + got, static_cast<unsigned>(std::min<size_t>(m.size - got, 1 << 30)));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got != m.size) return set_error(LLMT_ERR_IO, "cannot read " + path);
#else
  void *p = ::mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) return set_error(LLMT_ERR_IO, "cannot map " + path + ": " + std::strerror(err));
  m.data = p;
#endif
  return LLMT_OK;
}

// ---- zip ---------------------------------------------------------------------------------------------------

struct ZipEntry {
  std::string name;
  const uint8_t *data = nullptr;
  uint64_t size = 0;
  uint32_t crc = 0;
};

// Reads the central directory. `err` gets a message (without the file name) on failure.
bool read_zip(const uint8_t *base, size_t size, std::map<std::string, ZipEntry> &out, std::string &err,
              llmt_status &code) {
  code = LLMT_ERR_BAD_INPUT;
  const char *trunc = "it is truncated or damaged (no zip end record; an interrupted download?)";
  if (size < 22) return err = trunc, false;
  // End of central directory: last 22..(22 + 65535) bytes.
  size_t eocd = SIZE_MAX;
  const size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (size_t i = size - 22 + 1; i-- > lo;) {
    if (rd32(base + i) == 0x06054b50u && i + 22 + rd16(base + i + 20) <= size) {
      eocd = i;
      break;
    }
  }
  if (eocd == SIZE_MAX) return err = trunc, false;
  uint64_t count = rd16(base + eocd + 10);
  uint64_t cd_size = rd32(base + eocd + 12);
  uint64_t cd_off = rd32(base + eocd + 16);
  if (eocd >= 20 && rd32(base + eocd - 20) == 0x07064b50u) {  // zip64 locator
    const uint64_t z = rd64(base + eocd - 20 + 8);
    if (z + 56 > size || rd32(base + z) != 0x06064b50u) return err = "its zip64 end record is damaged", false;
    count = rd64(base + z + 32);
    cd_size = rd64(base + z + 40);
    cd_off = rd64(base + z + 48);
  }
  if (cd_off > size || cd_size > size - cd_off) return err = "its zip directory lies outside the file (truncated?)", false;
  const uint8_t *p = base + cd_off, *end = base + cd_off + cd_size;
  for (uint64_t e = 0; e < count; ++e) {
    if (end - p < 46 || rd32(p) != 0x02014b50u) return err = "its zip directory is damaged", false;
    const uint16_t method = rd16(p + 10);
    const uint32_t crc = rd32(p + 16);
    uint64_t csize = rd32(p + 20), usize = rd32(p + 24);
    const uint16_t nlen = rd16(p + 28), xlen = rd16(p + 30), clen = rd16(p + 32);
    uint64_t local = rd32(p + 42);
    if (static_cast<size_t>(end - p) < 46u + nlen + xlen + clen) return err = "its zip directory is damaged", false;
    std::string name(reinterpret_cast<const char *>(p + 46), nlen);
    // zip64 extra field: only the fields whose 32-bit value is 0xFFFFFFFF, in this order.
    const uint8_t *x = p + 46 + nlen, *xend = x + xlen;
    while (xend - x >= 4) {
      const uint16_t id = rd16(x), len = rd16(x + 2);
      if (xend - x - 4 < len) break;
      if (id == 0x0001) {
        const uint8_t *f = x + 4, *fend = f + len;
        if (usize == 0xFFFFFFFFu && fend - f >= 8) usize = rd64(f), f += 8;
        if (csize == 0xFFFFFFFFu && fend - f >= 8) csize = rd64(f), f += 8;
        if (local == 0xFFFFFFFFu && fend - f >= 8) local = rd64(f), f += 8;
      }
      x += 4 + len;
    }
    p += 46 + nlen + xlen + clen;
    if (method != 0) {
      code = LLMT_ERR_UNSUPPORTED;
      return err = "record '" + name + "' is compressed (zip method " + std::to_string(method) +
                   "); torch.save writes uncompressed records — was the file re-zipped? Save it again with torch.save",
             false;
    }
    if (csize != usize) return err = "record '" + name + "' has inconsistent sizes", false;
    if (local > size || size - local < 30 || rd32(base + local) != 0x04034b50u)
      return err = "the local header of record '" + name + "' is missing (truncated or damaged)", false;
    const uint64_t data_off = local + 30 + rd16(base + local + 26) + rd16(base + local + 28);
    if (data_off > size || usize > size - data_off)
      return err = "record '" + name + "' ends past the end of the file (truncated download?)", false;
    ZipEntry ze;
    ze.name = name;
    ze.data = base + data_off;
    ze.size = usize;
    ze.crc = crc;
    out[name] = ze;
  }
  return true;
}

// ---- the restricted unpickler ------------------------------------------------------------------------------

enum class Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor, Mark };

struct Obj;
using Ref = std::shared_ptr<Obj>;

struct Obj {
  Kind kind = Kind::None;
  int64_t i = 0;  // Bool, Int; Tensor: index
  double f = 0;
  std::string s;  // Str; Global: "module.name"; Storage: key
  std::vector<Ref> items;                 // Tuple, List
  std::vector<std::pair<Ref, Ref>> dict;  // Dict, in insertion order
  DType dtype = DType::F32;               // Storage; Global of a storage class
  bool storage_class = false;             // Global naming a typed storage class
};

Ref make(Kind k) {
  auto r = std::make_shared<Obj>();
  r->kind = k;
  return r;
}

const char *kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "a bool";
    case Kind::Int: return "an int";
    case Kind::Float: return "a float";
    case Kind::Str: return "a string";
    case Kind::Tuple: return "a tuple";
    case Kind::List: return "a list";
    case Kind::Dict: return "a dict";
    case Kind::Global: return "a class or function";
    case Kind::Storage: return "a storage";
    case Kind::Tensor: return "a tensor";
    case Kind::Mark: return "a mark";
  }
  return "?";
}

struct PendingTensor {
  std::string key;       // storage record
  DType dtype;
  int64_t storage_numel;
  int64_t offset;
  std::vector<int64_t> size, stride;
};

// The only globals a state dict needs. The storage classes carry their dtype.
bool allowed_global(const std::string &full, Obj &g) {
  static const std::pair<const char *, DType> kStorages[] = {
      {"torch.FloatStorage", DType::F32}, {"torch.HalfStorage", DType::F16},  {"torch.BFloat16Storage", DType::BF16},
      {"torch.DoubleStorage", DType::F64}, {"torch.LongStorage", DType::I64}, {"torch.IntStorage", DType::I32},
      {"torch.ShortStorage", DType::I16}, {"torch.CharStorage", DType::I8},   {"torch.ByteStorage", DType::U8},
      {"torch.BoolStorage", DType::BOOL}};
  for (const auto &kv : kStorages)
    if (full == kv.first) {
      g.storage_class = true;
      g.dtype = kv.second;
      return true;
    }
  return full == "collections.OrderedDict" || full == "torch._utils._rebuild_tensor_v2" ||
         full == "torch._utils._rebuild_parameter";
}

class Unpickler {
 public:
  Unpickler(const uint8_t *p, size_t n, std::string file) : p_(p), n_(n), file_(std::move(file)) {}

  // Runs to STOP. On failure returns false with code_/err_ set.
  bool run(Ref &result) {
    while (true) {
      if (pos_ >= n_) return bad("the pickle ends without its STOP opcode (truncated)");
      const size_t at = pos_;
      const uint8_t op = p_[pos_++];
      switch (op) {
        case 0x80:  // PROTO
          if (!skip(1)) return false;
          break;
        case 0x95:  // FRAME
          if (!skip(8)) return false;
          break;
        case '.':  // STOP
          if (stack_.size() != 1) return bad("the pickle's stack is malformed at STOP");
          result = stack_.back();
          return true;
        case '(':
          stack_.push_back(make(Kind::Mark));
          break;
        case ')':
          stack_.push_back(make(Kind::Tuple));
          break;
        case 't': {
          Ref t = make(Kind::Tuple);
          if (!pop_mark(t->items)) return false;
          stack_.push_back(t);
          break;
        }
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
          const size_t k = op - 0x84u;
          if (stack_.size() < k) return underflow(at);
          Ref t = make(Kind::Tuple);
          t->items.assign(stack_.end() - k, stack_.end());
          stack_.resize(stack_.size() - k);
          stack_.push_back(t);
          break;
        }
        case ']':
          stack_.push_back(make(Kind::List));
          break;
        case 'l': {
          Ref t = make(Kind::List);
          if (!pop_mark(t->items)) return false;
          stack_.push_back(t);
          break;
        }
        case 'a': {
          if (stack_.size() < 2 || stack_[stack_.size() - 2]->kind != Kind::List) return underflow(at);
          Ref v = stack_.back();
          stack_.pop_back();
          stack_.back()->items.push_back(v);
          break;
        }
        case 'e': {
          std::vector<Ref> v;
          if (!pop_mark(v)) return false;
          if (stack_.empty() || stack_.back()->kind != Kind::List) return underflow(at);
          for (auto &x : v) stack_.back()->items.push_back(x);
          break;
        }
        case '}':
          stack_.push_back(make(Kind::Dict));
          break;
        case 'd': {
          std::vector<Ref> v;
          if (!pop_mark(v) || v.size() % 2) return v.size() % 2 ? bad("odd DICT item count") : false;
          Ref d = make(Kind::Dict);
          for (size_t i = 0; i < v.size(); i += 2) set_item(*d, v[i], v[i + 1]);
          stack_.push_back(d);
          break;
        }
        case 's': {
          if (stack_.size() < 3 || stack_[stack_.size() - 3]->kind != Kind::Dict) return underflow(at);
          Ref v = stack_.back();
          stack_.pop_back();
          Ref k = stack_.back();
          stack_.pop_back();
          set_item(*stack_.back(), k, v);
          break;
        }
        case 'u': {
          std::vector<Ref> v;
          if (!pop_mark(v)) return false;
          if (v.size() % 2 || stack_.empty() || stack_.back()->kind != Kind::Dict) return underflow(at);
          for (size_t i = 0; i < v.size(); i += 2) set_item(*stack_.back(), v[i], v[i + 1]);
          break;
        }
        case 'N':
          stack_.push_back(make(Kind::None));
          break;
        case 0x88: case 0x89: {
          Ref b = make(Kind::Bool);
          b->i = op == 0x88;
          stack_.push_back(b);
          break;
        }
        case 'J': case 'K': case 'M': {
          const size_t w = op == 'J' ? 4 : op == 'K' ? 1 : 2;
          if (!need(w)) return false;
          Ref v = make(Kind::Int);
          v->i = op == 'J' ? static_cast<int32_t>(rd32(p_ + pos_)) : op == 'K' ? p_[pos_] : rd16(p_ + pos_);
          pos_ += w;
          stack_.push_back(v);
          break;
        }
        case 0x8a: {  // LONG1
          if (!need(1)) return false;
          const size_t w = p_[pos_++];
          if (w > 8 || !need(w)) return w > 8 ? bad("an integer too large for a tensor shape") : false;
          uint64_t u = 0;
          for (size_t k = 0; k < w; ++k) u |= static_cast<uint64_t>(p_[pos_ + k]) << (8 * k);
          if (w > 0 && w < 8 && (p_[pos_ + w - 1] & 0x80)) u |= ~uint64_t(0) << (8 * w);  // sign-extend
          pos_ += w;
          Ref v = make(Kind::Int);
          v->i = static_cast<int64_t>(u);
          stack_.push_back(v);
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          if (!need(8)) return false;
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | p_[pos_ + k];
          pos_ += 8;
          Ref v = make(Kind::Float);
          std::memcpy(&v->f, &u, 8);
          stack_.push_back(v);
          break;
        }
        case 'X': case 0x8c: case 0x8d: case 'T': case 'U': {  // BINUNICODE(8), SHORT_BINUNICODE, BINSTRING
          const size_t w = (op == 0x8c || op == 'U') ? 1 : op == 0x8d ? 8 : 4;
          if (!need(w)) return false;
          const uint64_t len = w == 1 ? p_[pos_] : w == 4 ? rd32(p_ + pos_) : rd64(p_ + pos_);
          pos_ += w;
          if (len > n_ - pos_) return bad("a string runs past the end of the pickle (truncated)");
          Ref v = make(Kind::Str);
          v->s.assign(reinterpret_cast<const char *>(p_ + pos_), static_cast<size_t>(len));
          pos_ += static_cast<size_t>(len);
          stack_.push_back(v);
          break;
        }
        case 'q': case 'r': case 0x94: {  // BINPUT, LONG_BINPUT, MEMOIZE
          uint32_t idx;
          if (op == 0x94) {
            idx = static_cast<uint32_t>(memo_.size());
          } else {
            const size_t w = op == 'q' ? 1 : 4;
            if (!need(w)) return false;
            idx = w == 1 ? p_[pos_] : rd32(p_ + pos_);
            pos_ += w;
          }
          if (stack_.empty()) return underflow(at);
          if (idx > (1u << 26)) return bad("a memo index out of range");
          memo_[idx] = stack_.back();
          break;
        }
        case 'h': case 'j': {  // BINGET, LONG_BINGET
          const size_t w = op == 'h' ? 1 : 4;
          if (!need(w)) return false;
          const uint32_t idx = w == 1 ? p_[pos_] : rd32(p_ + pos_);
          pos_ += w;
          auto it = memo_.find(idx);
          if (it == memo_.end()) return bad("a memo reference to nothing (damaged pickle)");
          stack_.push_back(it->second);
          break;
        }
        case '0':
          if (stack_.empty()) return underflow(at);
          stack_.pop_back();
          break;
        case '1': {
          std::vector<Ref> v;
          if (!pop_mark(v)) return false;
          break;
        }
        case '2':
          if (stack_.empty()) return underflow(at);
          stack_.push_back(stack_.back());
          break;
        case 'c': {  // GLOBAL "module\nname\n"
          std::string mod, name;
          if (!read_line(mod) || !read_line(name)) return false;
          if (!push_global(mod, name)) return false;
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          if (stack_.size() < 2) return underflow(at);
          Ref name = stack_.back();
          stack_.pop_back();
          Ref mod = stack_.back();
          stack_.pop_back();
          if (mod->kind != Kind::Str || name->kind != Kind::Str) return bad("STACK_GLOBAL without names");
          if (!push_global(mod->s, name->s)) return false;
          break;
        }
        case 'Q': {  // BINPERSID: ('storage', storage_class, key, location, numel)
          if (stack_.empty()) return underflow(at);
          Ref pid = stack_.back();
          stack_.pop_back();
          if (pid->kind != Kind::Tuple || pid->items.size() < 5 || pid->items[0]->kind != Kind::Str ||
              pid->items[0]->s != "storage" || pid->items[1]->kind != Kind::Global || !pid->items[1]->storage_class ||
              pid->items[2]->kind != Kind::Str || pid->items[4]->kind != Kind::Int)
            return bad("a persistent id that is not a tensor storage");
          Ref st = make(Kind::Storage);
          st->dtype = pid->items[1]->dtype;
          st->s = pid->items[2]->s;
          st->i = pid->items[4]->i;
          stack_.push_back(st);
          break;
        }
        case 'R': {  // REDUCE: callable(*args)
          if (stack_.size() < 2) return underflow(at);
          Ref args = stack_.back();
          stack_.pop_back();
          Ref fn = stack_.back();
          stack_.pop_back();
          Ref out;
          if (!reduce(fn, args, out)) return false;
          stack_.push_back(out);
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args) — only an OrderedDict
          if (stack_.size() < 2) return underflow(at);
          Ref args = stack_.back();
          stack_.pop_back();
          Ref cls = stack_.back();
          stack_.pop_back();
          if (cls->kind != Kind::Global || cls->s != "collections.OrderedDict")
            return bad("NEWOBJ of " + (cls->kind == Kind::Global ? cls->s : std::string("a non-class")));
          stack_.push_back(make(Kind::Dict));
          break;
        }
        case 'b': {  // BUILD: obj.__setstate__(state) — only a dict's attributes (a state dict's _metadata)
          if (stack_.size() < 2) return underflow(at);
          stack_.pop_back();
          if (stack_.back()->kind != Kind::Dict && stack_.back()->kind != Kind::Tensor)
            return bad("BUILD on " + std::string(kind_name(stack_.back()->kind)));
          break;
        }
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          return bad(std::string("pickle opcode ") + hex + " at byte " + std::to_string(at) +
                     " is not one a state dict uses");
        }
      }
    }
  }

  std::vector<PendingTensor> tensors;
  llmt_status code_ = LLMT_OK;
  std::string err_;

 private:
  bool bad(const std::string &m) {
    code_ = LLMT_ERR_BAD_INPUT;
    err_ = m;
    return false;
  }
  bool underflow(size_t at) { return bad("the pickle's stack is malformed at byte " + std::to_string(at)); }
  bool need(size_t w) { return w <= n_ - pos_ ? true : bad("the pickle ends in the middle of an opcode (truncated)"); }
  bool skip(size_t w) {
    if (!need(w)) return false;
    pos_ += w;
    return true;
  }
  bool read_line(std::string &out) {
    const void *nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    if (!nl) return bad("a GLOBAL opcode without its newline (truncated)");
    const size_t len = static_cast<const uint8_t *>(nl) - (p_ + pos_);
    out.assign(reinterpret_cast<const char *>(p_ + pos_), len);
    pos_ += len + 1;
    return true;
  }
  bool pop_mark(std::vector<Ref> &out) {
    size_t k = stack_.size();
    while (k > 0 && stack_[k - 1]->kind != Kind::Mark) --k;
    if (k == 0) return bad("the pickle's stack is malformed (no MARK)");
    out.assign(stack_.begin() + k, stack_.end());
    stack_.resize(k - 1);
    return true;
  }
  static void set_item(Obj &d, const Ref &k, const Ref &v) {
    if (k->kind == Kind::Str)
      for (auto &kv : d.dict)
        if (kv.first->kind == Kind::Str && kv.first->s == k->s) {
          kv.second = v;
          return;
        }
    d.dict.emplace_back(k, v);
  }
  bool push_global(const std::string &mod, const std::string &name) {
    Ref g = make(Kind::Global);
    g->s = mod + "." + name;
    if (!allowed_global(g->s, *g)) {
      code_ = LLMT_ERR_BAD_INPUT;
      std::string shown = g->s;
      if (mod == "posix" || mod == "nt") shown += " (os." + name + ")";
      err_ = "refusing to load " + file_ + ": it asks for " + shown +
             ", which a state dict never needs (a pickle can run any code it names; nothing from this file was run)";
      refused_ = true;
      return false;
    }
    stack_.push_back(g);
    return true;
  }
  bool shape_of(const Ref &t, std::vector<int64_t> &out, const char *what) {
    if (t->kind != Kind::Tuple) return bad(std::string("a tensor's ") + what + " is not a tuple");
    out.clear();
    for (const Ref &x : t->items) {
      if (x->kind != Kind::Int) return bad(std::string("a tensor's ") + what + " holds a non-integer");
      if (x->i < 0) return bad(std::string("a tensor's ") + what + " holds a negative value (" + std::to_string(x->i) + ")");
      out.push_back(x->i);
    }
    return true;
  }
  bool reduce(const Ref &fn, const Ref &args, Ref &out) {
    if (fn->kind != Kind::Global || fn->storage_class) return bad("REDUCE of " + std::string(kind_name(fn->kind)));
    if (args->kind != Kind::Tuple) return bad("REDUCE arguments are not a tuple");
    const auto &a = args->items;
    if (fn->s == "collections.OrderedDict") {
      out = make(Kind::Dict);
      if (!a.empty() && a[0]->kind == Kind::List)
        for (const Ref &kv : a[0]->items)
          if (kv->kind == Kind::Tuple && kv->items.size() == 2) set_item(*out, kv->items[0], kv->items[1]);
      return true;
    }
    if (fn->s == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->kind != Kind::Tensor) return bad("_rebuild_parameter without a tensor");
      out = a[0];
      return true;
    }
    // torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])
    if (a.size() < 4 || a[0]->kind != Kind::Storage || a[1]->kind != Kind::Int)
      return bad("_rebuild_tensor_v2 with unexpected arguments");
    PendingTensor t;
    t.key = a[0]->s;
    t.dtype = a[0]->dtype;
    t.storage_numel = a[0]->i;
    t.offset = a[1]->i;
    if (!shape_of(a[2], t.size, "size") || !shape_of(a[3], t.stride, "stride")) return false;
    if (t.size.size() != t.stride.size()) return bad("a tensor's size and stride differ in length");
    out = make(Kind::Tensor);
    out->i = static_cast<int64_t>(tensors.size());
    tensors.push_back(std::move(t));
    return true;
  }

  const uint8_t *p_;
  size_t n_, pos_ = 0;
  std::string file_;
  std::vector<Ref> stack_;
  std::map<uint32_t, Ref> memo_;

 public:
  bool refused_ = false;
};

}  // namespace

bool is_zip_file(const std::string &path) {
  std::FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  unsigned char b[4] = {0, 0, 0, 0};
  const size_t n = std::fread(b, 1, 4, f);
  std::fclose(f);
  return n == 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4;
}

std::unique_ptr<SafetensorsFile> open_torch_checkpoint(const std::string &path, llmt_status &status) {
  auto fail = [&](llmt_status code, const std::string &msg) {
    status = set_error(code, msg);
    return nullptr;
  };
  Mapping m;
  if ((status = map_file(path, m)) != LLMT_OK) return nullptr;
  const auto *base = static_cast<const uint8_t *>(m.data);
  if (m.size >= 2 && base[0] == 0x80 && base[1] <= 5)
    return fail(LLMT_ERR_UNSUPPORTED, path + " is a legacy PyTorch checkpoint (torch < 1.6, a bare pickle stream), which "
                                         "this reader does not support; load and save it again with torch >= 1.6, or "
                                         "convert it to safetensors");
  if (m.size >= 4 && !(base[0] == 'P' && base[1] == 'K'))
    return fail(LLMT_ERR_BAD_INPUT, path + " is not a PyTorch checkpoint (not a zip archive)");

  std::map<std::string, ZipEntry> zip;
  std::string err;
  llmt_status code = LLMT_OK;
  if (!read_zip(base, m.size, zip, err, code)) return fail(code, "cannot read " + path + ": " + err);

  // The archive folder: the one holding data.pkl (torch names it after the file, or "archive").
  std::string prefix;
  int pickles = 0;
  for (const auto &kv : zip) {
    const std::string &n = kv.first;
    if (n.size() >= 9 && n.compare(n.size() - 9, 9, "/data.pkl") == 0 && n.find('/') == n.size() - 9) {
      prefix = n.substr(0, n.size() - 8);
      ++pickles;
    }
  }
  if (pickles != 1)
    return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": it is a zip but not a PyTorch checkpoint (" +
                                        (pickles ? "several" : "no") + " <archive>/data.pkl records)");
  const ZipEntry &pkl = zip[prefix + "data.pkl"];
  if (crc32(pkl.data, static_cast<size_t>(pkl.size)) != pkl.crc)
    return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": record " + pkl.name +
                                        " fails its CRC-32 check (the file is corrupt; re-download it)");

  Unpickler up(pkl.data, static_cast<size_t>(pkl.size), path);
  Ref root;
  if (!up.run(root)) {
    if (up.refused_) return fail(up.code_, up.err_);
    return fail(up.code_, "cannot read " + path + ": " + up.err_);
  }
  if (root->kind != Kind::Dict)
    return fail(LLMT_ERR_UNSUPPORTED, "cannot read " + path + ": it holds " + kind_name(root->kind) +
                                          ", not a state dict {name: tensor}");

  std::map<std::string, bool> crc_checked;
  std::vector<TensorInfo> tensors;
  std::vector<std::vector<uint8_t>> owned;
  for (const auto &kv : root->dict) {
    if (kv.first->kind != Kind::Str)
      return fail(LLMT_ERR_UNSUPPORTED, "cannot read " + path + ": a state dict key is " + kind_name(kv.first->kind));
    const std::string &name = kv.first->s;
    if (kv.second->kind != Kind::Tensor)
      return fail(LLMT_ERR_UNSUPPORTED, "cannot read " + path + ": entry '" + name + "' holds " +
                                            kind_name(kv.second->kind) + ", not a tensor (a training checkpoint rather "
                                            "than a model's state dict?)");
    const PendingTensor &pt = up.tensors[static_cast<size_t>(kv.second->i)];
    const std::string rec = prefix + "data/" + pt.key;
    auto it = zip.find(rec);
    if (it == zip.end())
      return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": tensor '" + name + "' needs storage record " + rec +
                                          ", which the archive lacks (damaged file)");
    const ZipEntry &ze = it->second;
    const size_t es = dtype_size(pt.dtype);
    if (pt.storage_numel < 0 || static_cast<uint64_t>(pt.storage_numel) > ze.size / es ||
        ze.size != static_cast<uint64_t>(pt.storage_numel) * es)
      return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": storage " + rec + " holds " + std::to_string(ze.size) +
                                          " bytes but its tensors need " + std::to_string(pt.storage_numel) + " × " +
                                          std::to_string(es) + " (the file is corrupt)");
    if (!crc_checked[rec]) {
      if (crc32(ze.data, static_cast<size_t>(ze.size)) != ze.crc)
        return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": storage record " + rec + " (tensor '" + name +
                                            "') fails its CRC-32 check (the file is corrupt; re-download it)");
      crc_checked[rec] = true;
    }
    // The view: contiguous → points into the mapping; otherwise gathered into a copy.
    int64_t numel = 1, extent = 0;
    bool contiguous = true;
    int64_t expect = 1;
    for (size_t d = pt.size.size(); d-- > 0;) {
      numel *= pt.size[d];
      if (pt.size[d] > 1 && pt.stride[d] != expect) contiguous = false;
      expect *= pt.size[d];
      if (pt.size[d] > 0) extent += (pt.size[d] - 1) * pt.stride[d];
    }
    if (numel > 0 && (pt.offset < 0 || pt.offset + extent >= pt.storage_numel + (numel > 0 ? 0 : 1)))
      return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": tensor '" + name + "' reaches past the end of its storage " +
                                          rec + " (the file is corrupt)");
    TensorInfo ti;
    ti.name = name;
    ti.dtype = pt.dtype;
    ti.shape = pt.size;
    ti.nbytes = static_cast<size_t>(numel) * es;
    if (contiguous || numel == 0) {
      ti.data = ze.data + static_cast<size_t>(pt.offset) * es;
    } else {
      std::vector<uint8_t> buf(ti.nbytes);
      const size_t nd = pt.size.size();
      std::vector<int64_t> idx(nd, 0);
      for (int64_t e = 0; e < numel; ++e) {
        int64_t off = pt.offset;
        for (size_t d = 0; d < nd; ++d) off += idx[d] * pt.stride[d];
        std::memcpy(buf.data() + static_cast<size_t>(e) * es, ze.data + static_cast<size_t>(off) * es, es);
        for (size_t d = nd; d-- > 0;) {
          if (++idx[d] < pt.size[d]) break;
          idx[d] = 0;
        }
      }
      ti.data = buf.data();
      owned.push_back(std::move(buf));
    }
    for (const TensorInfo &prev : tensors)
      if (prev.name == name)
        return fail(LLMT_ERR_BAD_INPUT, "cannot read " + path + ": tensor '" + name + "' appears twice");
    tensors.push_back(std::move(ti));
  }
  status = LLMT_OK;
  const size_t size = m.size;
  return SafetensorsFile::adopt(path, m.release(), size, std::move(owned), std::move(tensors), "pt");
}

}  // namespace llmt
