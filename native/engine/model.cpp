// model.cpp — loading HF weights into fp32 parameters, LoRA (PEFT semantics), and the forward/backward
// of every family in the family table, as Backend ops (backend.hpp). See model.hpp for conventions.
// Memory: parameters per model.hpp (Param::w()/g()); every activation, scratch buffer, index array and KV cache
// of run()/infer() lives in backend memory (Buf, DevArray), so on a device backend nothing is copied per op —
// only token ids/labels/positions go up once per call, and the loss and sampled logits come down.
#include "model.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <regex>
#include <set>

#include "../cpu/ops.hpp"
#include "backend.hpp"
#include "rng.hpp"
#include "safetensors.hpp"
#include "status.hpp"

namespace llmt {

int64_t Param::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

std::string shape_str(const std::vector<int64_t> &s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool ends_with(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Known non-parameter buffers some checkpoints carry; ignored when present.
bool ignorable_tensor(const std::string &name) {
  return ends_with(name, "rotary_emb.inv_freq") || ends_with(name, "rotary_pos_emb.inv_freq") ||
         ends_with(name, "attention.masked_bias") ||
         ends_with(name, "attention.bias");
}

enum Role { kQ, kK, kV, kQKV, kO, kGate, kUp, kDown, kFc1, kFc2, kNumRoles };

}  // namespace

bool python_regex(const std::string &pattern, std::regex &out, std::string &why) {
  std::string e;
  e.reserve(pattern.size());
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char ch = pattern[i];
    if (ch == '\\' && i + 1 < pattern.size()) {
      const char nx = pattern[i + 1];
      if (!in_class && (nx == 'A' || nx == 'Z')) {
        e += nx == 'A' ? '^' : '$';
      } else {
        e += ch;
        e += nx;
      }
      ++i;
      continue;
    }
    if (in_class) {
      if (ch == ']') in_class = false;
      e += ch;
      continue;
    }
    if (ch == '[') {
      in_class = true;
      e += ch;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') e += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') e += pattern[++i];  // a leading ']' is a literal
      continue;
    }
    if (ch == '(' && i + 1 < pattern.size() && pattern[i + 1] == '?') {
      const std::string rest = pattern.substr(i + 2, 3);
      if (rest.compare(0, 2, "P<") == 0) {  // (?P<name>…): a plain group
        const size_t close = pattern.find('>', i);
        if (close == std::string::npos) {
          why = "an unterminated (?P<name> group";
          return false;
        }
        e += '(';
        i = close;
        continue;
      }
      if (rest.compare(0, 1, ":") == 0 || rest.compare(0, 1, "=") == 0 || rest.compare(0, 1, "!") == 0) {
        e += "(?";
        e += rest[0];
        i += 2;
        continue;
      }
      if (rest.compare(0, 2, "<=") == 0 || rest.compare(0, 2, "<!") == 0) {
        why = "a lookbehind (" + std::string("(?") + rest.substr(0, 2) + "…)";
      } else if (rest.compare(0, 2, "P=") == 0) {
        why = "a named back-reference ((?P=name))";
      } else {
        why = "the construct (?" + rest.substr(0, 1) + "…)";
      }
      why += ", which only Python's re module supports";
      return false;
    }
    e += ch;
  }
  try {
    out = std::regex(e, std::regex::ECMAScript);
  } catch (const std::regex_error &err) {
    why = std::string("it is not a valid regular expression (") + err.what() + ")";
    return false;
  }
  return true;
}

namespace {

bool regex_full(const std::string &pattern, const std::string &s) {
  std::regex re;
  std::string why;
  return python_regex(pattern, re, why) && std::regex_match(s, re);
}

// PEFT: the layer index of a module path — the first numbered component after `pattern` (any component when no
// pattern is given), "-1" when there is none.
int64_t layer_index_of(const std::string &module, const std::vector<std::string> &patterns) {
  auto index_after = [&](size_t at) -> int64_t {  // digits from `at` up to the next '.'
    size_t end = at;
    while (end < module.size() && std::isdigit(static_cast<unsigned char>(module[end]))) ++end;
    if (end == at || end >= module.size() || module[end] != '.') return -1;
    return std::atoll(module.substr(at, end - at).c_str());
  };
  if (patterns.empty()) {
    // re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key): the first ".<component>.<digits>." from the left
    for (size_t dot = module.find('.'); dot != std::string::npos; dot = module.find('.', dot + 1)) {
      const size_t next = module.find('.', dot + 1);
      if (next == std::string::npos) break;
      const int64_t idx = index_after(next + 1);
      if (idx >= 0) return idx;
    }
    return -1;
  }
  for (const auto &p : patterns) {  // re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key), the first pattern that matches
    std::regex re;
    std::string why;
    if (!python_regex("(?:^|.*?\\.)(?:" + p + ")\\.(\\d+)\\..*", re, why)) continue;
    std::smatch m;
    if (std::regex_match(module, m, re)) return std::atoll(m[1].str().c_str());
  }
  return -1;
}

}  // namespace

bool peft_target_matches(const LoraSpec &spec, const std::string &module) {
  if (!spec.exclude_regex.empty()) {
    if (regex_full(spec.exclude_regex, module)) return false;
  } else {
    for (const auto &x : spec.exclude_modules)
      if (module == x || ends_with(module, "." + x)) return false;
  }
  // a module trained whole (modules_to_save) never gets LoRA: re.match(rf"(^|.*\.){m}($|\..*)", key)
  for (const auto &m : spec.modules_to_save)
    if (regex_full("(^|.*\\.)(?:" + m + ")($|\\..*)", module)) return false;
  if (!spec.target_regex.empty()) return regex_full(spec.target_regex, module);
  bool found = false;
  for (const auto &t : spec.targets)
    if (module == t || ends_with(module, "." + t)) found = true;
  if (!found || spec.layers_to_transform.empty()) return found;
  const int64_t idx = layer_index_of(module, spec.layers_pattern);
  return idx >= 0 && std::find(spec.layers_to_transform.begin(), spec.layers_to_transform.end(), idx) !=
                         spec.layers_to_transform.end();
}

// ---- backend memory for activations ------------------------------------------------------------------------
namespace {

// LLMT_POISON_UNINIT=1 (the test suites set it): buffers sized for overwriting (Buf::resize_overwrite) are filled
// with NaN, so an op that reads an element no op wrote turns the result into NaN instead of silently using stale
// device memory (a real GPU's caching allocator hands out blocks with old contents).
bool poison_uninit() {
  static const bool on = [] {
    const char *e = std::getenv("LLMT_POISON_UNINIT");
    return e && *e && std::strcmp(e, "0") != 0;
  }();
  return on;
}

struct Overwrite {};  // Buf(be, n, kOverwrite): sized for an op that writes every element (no zero-fill)
constexpr Overwrite kOverwrite{};

// A float buffer in backend memory (Backend::alloc). resize() keeps the contents and zero-fills what it adds, as
// std::vector does, so the CPU path computes exactly what it did with vectors; resize_overwrite() is for a buffer the
// next op overwrites entirely (cpu/ops.hpp: outputs are overwritten unless accumulate is asked for): no fill kernel,
// no pass over the memory — on a GPU that is one launch and one write of the buffer saved per activation and
// temporary. Grows, never shrinks; move-only.
class Buf {
 public:
  Buf() = default;
  explicit Buf(Backend &be) : be_(&be) {}
  Buf(Backend &be, int64_t n) : be_(&be) { resize(n); }
  Buf(Backend &be, int64_t n, Overwrite) : be_(&be) { resize_overwrite(n); }
  Buf(const Buf &) = delete;
  Buf &operator=(const Buf &) = delete;
  Buf(Buf &&o) noexcept { swap(o); }
  Buf &operator=(Buf &&o) noexcept {
    swap(o);
    return *this;
  }
  ~Buf() { reset(); }
  void bind(Backend *be) {
    if (be_ != be) reset();
    be_ = be;
  }
  float *data() { return p_; }
  const float *data() const { return p_; }
  int64_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  void clear() { n_ = 0; }
  /** Gives the memory back (clear() keeps it for reuse). */
  void free() { reset(); }
  /** The first n floats from host memory (Backend::upload). */
  void upload_from(const float *host, int64_t n) {
    if (n > cap_) {
      if (p_) be_->release(p_);
      p_ = static_cast<float *>(be_->alloc(sizeof(float) * static_cast<size_t>(n)));
      cap_ = n;
    }
    n_ = n;
    if (n > 0) be_->upload(p_, host, sizeof(float) * static_cast<size_t>(n));
  }
  void resize(int64_t n) {
    if (n > cap_) {
      float *q = static_cast<float *>(be_->alloc(sizeof(float) * static_cast<size_t>(n)));
      if (n_ > 0) be_->copy(q, p_, n_);
      if (p_) be_->release(p_);
      p_ = q;
      cap_ = n;
    }
    if (n > n_) be_->fill(p_ + n_, 0.0f, n - n_);
    n_ = n;
  }
  /** n elements whose contents do not matter: the caller's next op writes all of them. */
  void resize_overwrite(int64_t n) {
    if (n > cap_) {
      if (p_) be_->release(p_);
      p_ = nullptr;
      cap_ = 0;
      p_ = static_cast<float *>(be_->alloc(sizeof(float) * static_cast<size_t>(n)));
      cap_ = n;
    }
    n_ = n;
    if (n > 0 && poison_uninit()) be_->fill(p_, std::numeric_limits<float>::quiet_NaN(), n);
  }
  /** *this = o (the same length and contents). */
  void copy_from(const Buf &o) {
    if (o.n_ > cap_) {
      if (p_) be_->release(p_);
      p_ = static_cast<float *>(be_->alloc(sizeof(float) * static_cast<size_t>(o.n_)));
      cap_ = o.n_;
    }
    n_ = o.n_;
    if (n_ > 0) be_->copy(p_, o.p_, n_);
  }
  void swap(Buf &o) {
    std::swap(be_, o.be_);
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(cap_, o.cap_);
  }

 private:
  void reset() {
    if (p_) be_->release(p_);
    p_ = nullptr;
    n_ = cap_ = 0;
  }
  Backend *be_ = nullptr;
  float *p_ = nullptr;
  int64_t n_ = 0, cap_ = 0;
};

// A host array the ops of one call read (token ids, positions, targets, rotary frequencies, ALiBi slopes): one
// upload into backend memory, or the host array itself on a host-memory backend.
template <typename T>
class DevArray {
 public:
  DevArray(Backend &be, const T *host, int64_t n) : be_(be) {
    if (!host || n <= 0) return;
    if (be.host_memory()) {
      p_ = host;
      return;
    }
    own_ = static_cast<T *>(be.alloc(sizeof(T) * static_cast<size_t>(n)));
    be.upload(own_, host, sizeof(T) * static_cast<size_t>(n));
    p_ = own_;
  }
  DevArray(Backend &be, const std::vector<T> &v) : DevArray(be, v.empty() ? nullptr : v.data(), static_cast<int64_t>(v.size())) {}
  DevArray(const DevArray &) = delete;
  DevArray &operator=(const DevArray &) = delete;
  ~DevArray() {
    if (own_) be_.release(own_);
  }
  const T *get() const { return p_; }

 private:
  Backend &be_;
  const T *p_ = nullptr;
  T *own_ = nullptr;
};

}  // namespace

// ---- per-call activation storage -----------------------------------------------------------------------
struct LinearActs {
  uint64_t stream = 0;  // dropout RNG stream (mask regenerated in the backward)
  Buf xdrop;            // dropout(x) when dropout > 0 in training (mask and 1/(1-p) applied)
  Buf u;                // dropout(x)·Aᵀ [N, r]
  // DoRA: z = W·xin + u·Bᵀ [N, out] (what the magnitude's gradient reads), g = m/‖W + s·B·A‖ and 1/‖…‖ [out]
  Buf z, g, inv_n;
};

struct LayerActs {
  Buf x_in, h1, mean1, rstd1, q, k, v, attn, lse, x_mid, h2, mean2, rstd2, a, b, act;
  LinearActs lin[kNumRoles];
  void bind(Backend *be) {
    for (Buf *p : {&x_in, &h1, &mean1, &rstd1, &q, &k, &v, &attn, &lse, &x_mid, &h2, &mean2, &rstd2, &a, &b, &act}) p->bind(be);
    for (LinearActs &l : lin)
      for (Buf *p : {&l.xdrop, &l.u, &l.z, &l.g, &l.inv_n}) p->bind(be);
  }
  /** Gives back every activation buffer (x_in too unless keep_input). */
  void release(bool keep_input) {
    for (Buf *p : {&h1, &mean1, &rstd1, &q, &k, &v, &attn, &lse, &x_mid, &h2, &mean2, &rstd2, &a, &b, &act}) p->free();
    if (!keep_input) x_in.free();
    for (LinearActs &l : lin)
      for (Buf *p : {&l.xdrop, &l.u, &l.z, &l.g, &l.inv_n}) p->free();
  }
};

// Floats in host memory from Backend::alloc_host (page-locked on a GPU, so the offload copies run asynchronously at full
// PCIe speed). Freed after the device is done with it. Grows, never shrinks; move-only.
class HostBuf {
 public:
  HostBuf() = default;
  HostBuf(const HostBuf &) = delete;
  HostBuf &operator=(const HostBuf &) = delete;
  HostBuf(HostBuf &&o) noexcept { std::swap(be_, o.be_), std::swap(p_, o.p_), std::swap(cap_, o.cap_); }
  HostBuf &operator=(HostBuf &&o) noexcept {
    std::swap(be_, o.be_), std::swap(p_, o.p_), std::swap(cap_, o.cap_);
    return *this;
  }
  ~HostBuf() { reset(); }
  /** At least n floats for backend `be` (contents undefined after growth). */
  float *get(Backend &be, int64_t n) {
    if (n > cap_ || be_ != &be) {
      reset();
      p_ = static_cast<float *>(be.alloc_host(sizeof(float) * static_cast<size_t>(std::max<int64_t>(n, 1))));
      be_ = &be;
      cap_ = n;
    }
    return p_;
  }
  float *data() const { return p_; }

 private:
  void reset() {
    if (!p_) return;
    try {
      be_->synchronize();  // an asynchronous copy may still target it
    } catch (...) {        // a failed device: its error was reported by whoever saw it first
    }
    be_->free_host(p_);
    p_ = nullptr;
    cap_ = 0;
  }
  Backend *be_ = nullptr;
  float *p_ = nullptr;
  int64_t cap_ = 0;
};

// DoRA's per-row scale of a linear in a forward-only call (evaluation, generation), kept until the weights change
struct DoraNorms {
  Buf g, inv_n;
};

struct Model::Impl {
  std::map<const Linear *, std::unique_ptr<DoraNorms>> dora;  // cleared by every backward call and upload
  std::vector<LayerActs> acts;  // per layer (only x_in kept under checkpointing)
  LayerActs scratch;            // recomputation target under checkpointing
  std::vector<HostBuf> host_x;  // checkpointed block inputs in host memory (RunOptions::offload_checkpoints)
  std::vector<int32_t> pos;
};

namespace {

// QLoRA on a device backend: each 4-bit weight's arrays are uploaded once (frozen: later to_device() calls skip them)
// with one shared copy of the nested-scale map; view() then hands the backend these device pointers.
template <typename T>
void q4_put(Backend &be, T *&d, const std::vector<T> &h) {
  if (h.empty()) return;
  d = static_cast<T *>(be.alloc(sizeof(T) * h.size()));
  be.upload(d, h.data(), sizeof(T) * h.size());
}

void q4_to_device(Backend &be, Model &m) {
  if (m.q4_weights.empty()) return;
  if (!m.q4_dev_code2) {
    m.q4_dev_code2 = static_cast<float *>(be.alloc(sizeof(float) * 256));
    be.upload(m.q4_dev_code2, cpu::dynamic_map(), sizeof(float) * 256);
  }
  for (auto &q : m.q4_weights) {
    if (q->host_freed) continue;
    if (!q->dev_packed) {
      q4_put(be, q->dev_absmax, q->absmax);
      q4_put(be, q->dev_qabsmax, q->qabsmax);
      q4_put(be, q->dev_absmax2, q->absmax2);
      q->dev_code2 = q->qabsmax.empty() ? nullptr : m.q4_dev_code2;
      q4_put(be, q->dev_packed, q->packed);  // last: it marks the weight as uploaded
    }
    // frozen: the device copy is the only one from now on (q4_fetch re-creates the host arrays when leaving)
    std::vector<uint8_t>().swap(q->packed);
    std::vector<float>().swap(q->absmax);
    std::vector<uint8_t>().swap(q->qabsmax);
    std::vector<float>().swap(q->absmax2);
    q->host_freed = true;
  }
}

template <typename T>
void q4_get(Backend &be, std::vector<T> &h, const T *d, int64_t n) {
  if (!d) return;
  h.resize(static_cast<size_t>(n));
  be.download(h.data(), d, sizeof(T) * h.size());
}

// The host arrays of a 4-bit weight whose host copy q4_to_device freed, downloaded (the device copy stays).
void q4_fetch(Backend &be, Q4Weight &q) {
  if (!q.host_freed || !q.dev_packed) return;
  const int64_t n = q.numel(), nb = (n + cpu::kQ4Block - 1) / cpu::kQ4Block;
  q4_get(be, q.packed, q.dev_packed, (n + 1) / 2);
  q4_get(be, q.absmax, q.dev_absmax, nb);
  q4_get(be, q.qabsmax, q.dev_qabsmax, nb);
  q4_get(be, q.absmax2, q.dev_absmax2, (nb + cpu::kQ4Block2 - 1) / cpu::kQ4Block2);
  q.host_freed = false;
}

void release_q4_device(Backend &be, Model &m) {
  for (auto &q : m.q4_weights) {
    for (uint8_t **d : {&q->dev_packed, &q->dev_qabsmax})
      if (*d) be.release(*d), *d = nullptr;
    for (float **d : {&q->dev_absmax, &q->dev_absmax2})
      if (*d) be.release(*d), *d = nullptr;
    q->dev_code2 = nullptr;
  }
  if (m.q4_dev_code2) be.release(m.q4_dev_code2), m.q4_dev_code2 = nullptr;
}

}  // namespace

Model::~Model() {
  impl_.reset();  // activations first (they hold backend memory)
  release_device();
}

void Model::release_device() {
  if (!be_) return;
  for (auto &p : params) {
    for (float **d : {&p->dev_w, &p->dev_g, &p->dev_m, &p->dev_v})
      if (*d) {
        be_->release(*d);
        *d = nullptr;
      }
    if (p->dev_half) {
      be_->release(p->dev_half);
      p->dev_half = nullptr;
    }
  }
  release_q4_device(*be_, *this);
}

void Model::set_backend(Backend &be) {
  if (&be == be_) return;
  to_host(true, true);  // the state the old backend holds comes back to the host vectors first
  fetch_host_weights();  // and the frozen weights it alone held
  release_device();
  if (impl_) {
    impl_->acts.clear();
    impl_->scratch.bind(&be);
  }
  be_ = &be;
  dirty_ = !be.host_memory();
}

void Model::to_device() {
  dirty_ = false;
  if (impl_) impl_->dora.clear();  // host values (resume, a loaded adapter) replace the device ones
  Backend &be = *be_;
  if (be.host_memory()) return;
  auto put = [&](float *&d, const std::vector<float> &h) {
    if (h.empty()) {
      if (d) be.release(d);
      d = nullptr;
      return;
    }
    if (!d) d = static_cast<float *>(be.alloc(sizeof(float) * h.size()));
    be.upload(d, h.data(), sizeof(float) * h.size());
  };
  for (auto &p : params) {
    if (p->host_freed && p->trainable) {  // made trainable behind the model's back: its values from the device
      fetch_host(*p);
      if (p->grad.size() != p->data.size()) p->grad.assign(p->data.size(), 0.0f);
    }
    if (p->host_freed) continue;  // frozen and uploaded: the device copy is current (and the only one)
    if (!p->half.empty() && !p->dev_half) {  // frozen 16-bit weights never change: uploaded once
      p->dev_half = static_cast<uint16_t *>(be.alloc(sizeof(uint16_t) * p->half.size()));
      be.upload(p->dev_half, p->half.data(), sizeof(uint16_t) * p->half.size());
    }
    put(p->dev_w, p->data);
    put(p->dev_g, p->trainable ? p->grad : std::vector<float>());
    put(p->dev_m, p->host_optimizer ? std::vector<float>() : p->adam_m);
    put(p->dev_v, p->host_optimizer ? std::vector<float>() : p->adam_v);
    if (!p->trainable && (p->dev_w || p->dev_half)) {  // frozen: never changes on the device, so the host copy goes
      std::vector<float>().swap(p->data);
      std::vector<uint16_t>().swap(p->half);
      p->host_freed = true;
    }
  }
  q4_to_device(be, *this);
}

void Model::fetch_host(Param &p) const {
  if (!p.host_freed || !be_) return;
  const size_t n = static_cast<size_t>(p.numel());
  if (p.dev_half) {
    p.half.resize(n);
    be_->download(p.half.data(), p.dev_half, sizeof(uint16_t) * n);
  } else if (p.dev_w) {
    p.data.resize(n);
    be_->download(p.data.data(), p.dev_w, sizeof(float) * n);
  }
  p.host_freed = false;
}

void Model::fetch_host_weights() const {
  for (const auto &p : params) fetch_host(*p);
  if (be_)
    for (const auto &q : q4_weights) q4_fetch(*be_, *q);
}

void Model::free_frozen_host() const {
  // dirty_: a host vector may be newer than its device copy; the next to_device() uploads and frees it instead
  if (!be_ || be_->host_memory() || dirty_) return;
  for (const auto &p : params)
    if (!p->trainable && !p->host_freed && (p->dev_w || p->dev_half)) {
      std::vector<float>().swap(p->data);
      std::vector<uint16_t>().swap(p->half);
      p->host_freed = true;
    }
  for (const auto &q : q4_weights)
    if (!q->host_freed && q->dev_packed) {
      std::vector<uint8_t>().swap(q->packed);
      std::vector<float>().swap(q->absmax);
      std::vector<uint8_t>().swap(q->qabsmax);
      std::vector<float>().swap(q->absmax2);
      q->host_freed = true;
    }
}

int64_t Model::host_weight_bytes() const {
  int64_t b = 0;
  for (const auto &p : params)
    b += static_cast<int64_t>(p->data.capacity() * sizeof(float) + p->half.capacity() * sizeof(uint16_t));
  for (const auto &q : q4_weights)
    b += static_cast<int64_t>(q->packed.capacity() + q->absmax.capacity() * sizeof(float) + q->qabsmax.capacity() +
                              q->absmax2.capacity() * sizeof(float));
  return b;
}

void Model::to_host(bool grads, bool optimizer) const {
  if (!be_ || be_->host_memory()) return;
  auto get = [&](std::vector<float> &h, const float *d) {
    if (d && !h.empty()) be_->download(h.data(), d, sizeof(float) * h.size());
  };
  for (const auto &p : params) {
    if (p->trainable) get(p->data, p->dev_w);  // frozen weights never change on the device
    if (grads) get(p->grad, p->dev_g);
    if (optimizer) {
      get(p->adam_m, p->dev_m);
      get(p->adam_v, p->dev_v);
    }
  }
}

llmt_status Model::restore_fp32(Param &p) {
  if (!p.half_type) return LLMT_OK;
  llmt_status st;
  std::unique_ptr<WeightSet> ws = WeightSet::open_dir(dir_, st);
  if (!ws) return st;
  const std::string bare = cfg_.family->bare_prefix ? cfg_.family->bare_prefix : "";
  std::string fname = p.name;
  if (!ws->find(fname) && !bare.empty() && fname.compare(0, bare.size(), bare) == 0) fname = fname.substr(bare.size());
  std::vector<float> data(static_cast<size_t>(p.numel()));
  if ((st = ws->read_f32(fname, data.data())) != LLMT_OK) return st;
  p.data.swap(data);
  std::vector<uint16_t>().swap(p.half);
  p.half_type = 0;
  p.host_freed = false;  // the fp32 values come from the folder, whatever the device held
  if (p.dev_half) {
    be_->release(p.dev_half);
    p.dev_half = nullptr;
  }
  if (!be_->host_memory()) dirty_ = true;
  return LLMT_OK;
}

llmt_status Model::set_precision(const std::string &precision) {
  if (precision.empty() || precision == "fp32") return LLMT_OK;
  if (precision != "bf16" && precision != "fp16")
    return set_error(LLMT_ERR_BAD_INPUT, "precision must be \"fp32\", \"bf16\" or \"fp16\" (got \"" + precision + "\")");
  const Half t = precision == "bf16" ? Half::BF16 : Half::F16;
  if (precision_ != "fp32" && precision_ != precision)
    return set_error(LLMT_ERR_BAD_INPUT, "this model already keeps its frozen weights in " + precision_);
  if (!be_->supports_half())
    return set_error(LLMT_ERR_UNSUPPORTED, std::string("the ") + be_->name() + " backend has no 16-bit weights; use precision fp32");
  std::vector<Param *> todo;
  auto fp32_frozen = [](const Param *p) { return !p->trainable && !p->half_type && (p->host_freed || !p->data.empty()); };
  for (auto &L : linears)
    if (!L->q4 && fp32_frozen(L->W)) todo.push_back(L->W);
  if (lm_head && lm_head != embed && fp32_frozen(lm_head)) todo.push_back(lm_head);
  if (embed && fp32_frozen(embed)) todo.push_back(embed);
  for (Param *p : todo) fetch_host(*p);  // freed on the host after an upload: the fp32 values back first
  for (Param *p : todo) {  // check first: a failure leaves the model unchanged
    if (t != Half::F16) break;
    for (float v : p->data)
      if (std::isfinite(v) && !std::isfinite(f16_to_f32(f32_to_f16(v))))
        return set_error(LLMT_ERR_BAD_INPUT, p->name + " holds " + std::to_string(v) +
                                                 ", beyond fp16's range (±65504); use precision bf16 (or fp32)");
  }
  for (Param *p : todo) {
    p->half.resize(p->data.size());
    for (size_t i = 0; i < p->data.size(); ++i) p->half[i] = to_half(p->data[i], int(t));
    p->half_type = static_cast<uint8_t>(t);
    std::vector<float>().swap(p->data);
    if (p->dev_w) {
      be_->release(p->dev_w);
      p->dev_w = nullptr;
    }
    if (!be_->host_memory()) dirty_ = true;
  }
  precision_ = precision;
  refresh_dora_norms();  // DoRA's ‖W‖² follows the weights the forward multiplies with (the 16-bit values, on the host now)
  return LLMT_OK;
}

Param *Model::new_param(const std::string &name, std::vector<int64_t> shape, bool alloc) {
  auto p = std::make_unique<Param>();
  p->name = name;
  p->shape = std::move(shape);
  if (alloc) p->data.assign(static_cast<size_t>(p->numel()), 0.0f);
  params.push_back(std::move(p));
  return params.back().get();
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const auto &p : params)
    if (!p->derived) n += p->numel();
  return n;
}

int64_t Model::num_trainable() const {
  int64_t n = 0;
  for (const auto &p : params)
    if (p->trainable) n += p->numel();
  return n;
}

std::unique_ptr<Model> Model::load(const std::string &dir, llmt_status &st) { return load(dir, st, QuantSpec()); }

std::unique_ptr<Model> Model::load(const std::string &dir, llmt_status &st, const QuantSpec &requested) {
  return load(dir, st, requested, "fp32");
}

std::unique_ptr<Model> Model::load(const std::string &dir, llmt_status &st, const QuantSpec &requested,
                                   const std::string &precision) {
  return load_impl(dir, st, requested, precision, false);
}

llmt_status Model::check_folder(const std::string &dir) {
  llmt_status st;
  load_impl(dir, st, QuantSpec(), "fp32", true);
  return st;
}

// The first eight names of a list for a message, and how many there are in all.
static std::string first_names(const std::vector<std::string> &names) {
  std::string list;
  for (size_t i = 0; i < names.size() && i < 8; ++i) list += (i ? ", " : "") + names[i];
  if (names.size() > 8) list += ", … (" + std::to_string(names.size()) + " in all)";
  return list;
}

std::unique_ptr<Model> Model::load_impl(const std::string &dir, llmt_status &st, const QuantSpec &requested,
                                        const std::string &precision, bool headers_only) {
  int half = 0;  // 16-bit type the frozen weights stream into (0: fp32)
  if (precision == "bf16") half = int(Half::BF16);
  else if (precision == "fp16") half = int(Half::F16);
  else if (!precision.empty() && precision != "fp32") {
    st = set_error(LLMT_ERR_BAD_INPUT, "precision must be \"fp32\", \"bf16\" or \"fp16\" (got \"" + precision + "\")");
    return nullptr;
  }
  // a bnb 4-bit checkpoint (`llmt-engine quantize`, transformers' save_pretrained) loads as stored
  QuantSpec stored;
  if ((st = stored_quant_spec(dir, stored)) != LLMT_OK) return nullptr;
  const bool prequantized = stored.enabled;
  if (prequantized && requested.enabled && requested.type != stored.type) {
    st = set_error(LLMT_ERR_BAD_INPUT, dir + " is already quantized as " + quant_name(stored) + "; ask for \"" +
                                           quant_name(stored) + "\" (or \"none\") or use the full-precision model");
    return nullptr;
  }
  const QuantSpec quant = prequantized ? stored : requested;
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->be_ = &cpu_backend();
  m->quant_ = quant;
  m->precision_ = half ? precision : "fp32";
  m->impl_ = std::make_unique<Impl>();
  st = load_config(dir, m->cfg_);
  if (st != LLMT_OK) return nullptr;
  const ModelConfig &c = m->cfg_;
  const FamilyRow &f = *c.family;
  std::unique_ptr<WeightSet> ws = WeightSet::open_dir(dir, st);
  if (!ws) return nullptr;

  const int64_t H = c.hidden, I = c.inter, V = c.vocab, hd = c.head_dim;
  const int64_t qd = c.heads * hd, kvd = c.kv_heads * hd;
  const bool ln = c.norm == NormKind::Layer;
  // checkpoints saved from the bare base model (e.g. bigscience/bloom-560m) lack the "transformer." prefix
  const std::string bare = f.bare_prefix ? f.bare_prefix : "";
  auto file_name = [&](const std::string &name) -> std::string {
    if (ws->find(name) || bare.empty() || name.compare(0, bare.size(), bare) != 0) return name;
    return name.substr(bare.size());
  };
  // the layer count before a layer is built from it (num_hidden_layers 1e12 would build layers until memory ran out):
  // the weights must hold the last layer config.json implies
  auto layer_in_weights = [&](int64_t l) { return ws->find(file_name(layer_name(f.layer, l) + "." + c.attn_norm + ".weight")) != nullptr; };
  if (c.layers > 0 && !layer_in_weights(c.layers - 1)) {
    int64_t have = 0;
    while (have < c.layers && layer_in_weights(have)) ++have;  // (at most one step per tensor in the weights)
    st = set_error(LLMT_ERR_BAD_INPUT, dir + "/config.json gives num_hidden_layers " + std::to_string(c.layers) + " but the weights hold " +
                                           std::to_string(have) + " layer(s) (no tensor '" +
                                           file_name(layer_name(f.layer, c.layers - 1) + "." + c.attn_norm + ".weight") +
                                           "'): config.json and the weights do not belong together (or the download is incomplete)");
    return nullptr;
  }
  // config.json against the weights before anything is allocated from its sizes (a vocab_size of 1e12 would
  // otherwise end as "out of memory")
  if (const TensorInfo *e = ws->find(std::string(f.embed) + ".weight")) {
    if (e->shape.size() != 2 || e->shape[0] != V || e->shape[1] != H) {
      std::string shp;
      for (size_t i = 0; i < e->shape.size(); ++i) shp += (i ? ", " : "") + std::to_string(e->shape[i]);
      st = set_error(LLMT_ERR_BAD_INPUT, dir + "/config.json gives a " + std::to_string(V) + "-token vocabulary of width " + std::to_string(H) +
                                             " but the weights' " + e->name + " is [" + shp + "]: the config does not belong to these weights");
      return nullptr;
    }
  }

  // The skeleton first: every parameter with its shape, none allocated (new_param(..., false)) until the weights'
  // headers agree with config.json below — an intermediate_size of 1e8 must end as a shape mismatch, not out of memory.
  std::set<const Param *> q4_params;  // the block linears stored or made 4-bit
  m->embed = m->new_param(std::string(f.embed) + ".weight", {V, H}, false);
  // the frozen table in 16 bits too (also when tied: the head's GEMM reads it as a 16-bit weight)
  if (half) m->embed->half_type = static_cast<uint8_t>(half);
  if (f.embed_norm) {
    m->embed_norm_w = m->new_param(std::string(f.embed_norm) + ".weight", {H}, false);
    m->embed_norm_b = m->new_param(std::string(f.embed_norm) + ".bias", {H}, false);
    m->embed_norm_w->decay = m->embed_norm_b->decay = false;
  }
  auto add_linear = [&](int64_t layer, const char *name, int64_t out, int64_t in, int role) -> Linear * {
    auto lin = std::make_unique<Linear>();
    lin->module = layer_name(f.layer, layer) + "." + name;
    lin->short_name = lin->module.substr(lin->module.rfind('.') + 1);
    lin->in = in;
    lin->out = out;
    lin->role = role;
    lin->W = m->new_param(lin->module + ".weight", {out, in}, false);  // filled as fp32, 4-bit or 16-bit while loading
    if (quant.enabled) q4_params.insert(lin->W);
    if (half && !quant.enabled) lin->W->half_type = static_cast<uint8_t>(half);
    if (role == kQKV || role == kQ || role == kK || role == kV ? c.qkv_bias : role == kO ? c.o_bias : c.mlp_bias) {
      lin->b = m->new_param(lin->module + ".bias", {out}, false);
      lin->b->decay = false;
    }
    m->linears.push_back(std::move(lin));
    return m->linears.back().get();
  };
  for (int64_t l = 0; l < c.layers; ++l) {
    Layer L;
    std::string pre = layer_name(f.layer, l) + ".";
    L.norm1_w = m->new_param(pre + c.attn_norm + ".weight", {H}, false);
    L.norm1_w->decay = false;
    if (ln) {
      L.norm1_b = m->new_param(pre + c.attn_norm + ".bias", {H}, false);
      L.norm1_b->decay = false;
    }
    if (!c.mlp_norm.empty()) {
      L.norm2_w = m->new_param(pre + c.mlp_norm + ".weight", {H}, false);
      L.norm2_w->decay = false;
      if (ln) {
        L.norm2_b = m->new_param(pre + c.mlp_norm + ".bias", {H}, false);
        L.norm2_b->decay = false;
      }
    }
    if (c.qkv_layout == QkvLayout::Separate) {
      L.q = add_linear(l, f.q, qd, H, kQ);
      L.k = add_linear(l, f.k, kvd, H, kK);
      L.v = add_linear(l, f.v, kvd, H, kV);
    } else {
      L.qkv = add_linear(l, f.qkv, qd + 2 * kvd, H, kQKV);
    }
    L.o = add_linear(l, f.o, H, qd, kO);
    if (c.mlp == MlpKind::SwiGLU) {
      L.gate = add_linear(l, f.gate, I, H, kGate);
      L.up = add_linear(l, f.up, I, H, kUp);
      L.down = add_linear(l, f.down, H, I, kDown);
    } else {
      L.fc1 = add_linear(l, f.fc1, c.mlp == MlpKind::SwiGLUFused ? 2 * I : I, H, kFc1);
      L.fc2 = add_linear(l, f.fc2, H, I, kFc2);
    }
    L.windowed = c.sliding_window > 0 && l >= c.window_from_layer;
    m->layers.push_back(L);
  }
  m->final_w = m->new_param(std::string(f.final_norm) + ".weight", {H}, false);
  m->final_w->decay = false;
  if (ln) {
    m->final_b = m->new_param(std::string(f.final_norm) + ".bias", {H}, false);
    m->final_b->decay = false;
  }
  const std::string head_name = std::string(f.lm_head) + ".weight";
  if (c.tie_embeddings) {
    m->lm_head = m->embed;
  } else {
    m->lm_head = m->new_param(head_name, {V, H}, false);
    if (half) m->lm_head->half_type = static_cast<uint8_t>(half);
  }

  // The headers against the skeleton, before a byte is allocated or read: what is missing, what has another shape.
  std::vector<std::string> missing;
  std::set<std::string> expected;
  for (auto &p : m->params) {
    const std::string fname = file_name(p->name);
    expected.insert(fname);
    const TensorInfo *t = ws->find(fname);
    if (!t) {
      missing.push_back(p->name);
      continue;
    }
    if (prequantized && q4_params.count(p.get())) {
      // stored 4-bit: uint8 [(n+1)/2, 1] for the [out, in] config.json implies (read_q4_weight checks the rest)
      if (t->dtype == DType::U8 && t->numel() != (p->numel() + 1) / 2) {
        st = set_error(LLMT_ERR_BAD_INPUT, "4-bit weight '" + p->name + "' in " + ws->file_of(fname) + " packs " +
                                               std::to_string(t->numel() * 2) + " values but config.json implies " + shape_str(p->shape) +
                                               "; config.json and the weights do not belong together");
        return nullptr;
      }
      continue;
    }
    if (t->shape != p->shape) {
      st = set_error(LLMT_ERR_BAD_INPUT, "tensor '" + p->name + "' in " + ws->file_of(fname) + " has shape " +
                                             shape_str(t->shape) + " but config.json implies " + shape_str(p->shape) +
                                             "; config.json and the weights do not belong together");
      return nullptr;
    }
  }
  if (!missing.empty()) {
    st = set_error(LLMT_ERR_BAD_INPUT, "the weights in " + dir + " lack tensors the " + f.model_type +
                                           " architecture needs: " + first_names(missing) +
                                           ". Is the download complete and config.json the right one?");
    return nullptr;
  }
  if (headers_only) {
    st = LLMT_OK;
    clear_error();
    return nullptr;
  }

  // Load every parameter, one tensor at a time.
  for (auto &p : m->params) {
    const std::string fname = file_name(p->name);
    if (prequantized && q4_params.count(p.get())) {  // a block linear stored 4-bit: used as stored, no re-quantization
      auto q = std::make_unique<Q4Weight>();
      std::vector<std::string> used;
      if ((st = read_q4_weight(*ws, fname, p->shape, quant, *q, used)) != LLMT_OK) return nullptr;
      expected.insert(used.begin(), used.end());
      for (auto &lin : m->linears)
        if (lin->W == p.get()) lin->q4 = q.get();
      m->q4_weights.push_back(std::move(q));
      continue;
    }
    if (p->half_type && p->half.empty()) {  // mixed precision: stream in, round to 16 bits, drop the fp32 tensor
      std::vector<float> tmp(static_cast<size_t>(p->numel()));
      if ((st = ws->read_f32(fname, tmp.data())) != LLMT_OK) return nullptr;
      p->half.resize(tmp.size());
      for (size_t i = 0; i < tmp.size(); ++i) {
        p->half[i] = to_half(tmp[i], p->half_type);
        if (p->half_type == uint8_t(Half::F16) && std::isfinite(tmp[i]) && !std::isfinite(f16_to_f32(p->half[i]))) {
          st = set_error(LLMT_ERR_BAD_INPUT, p->name + " holds " + std::to_string(tmp[i]) +
                                                 ", beyond fp16's range (±65504); use precision bf16 (or fp32)");
          return nullptr;
        }
      }
      continue;
    }
    if (quant.enabled && q4_params.count(p.get())) {  // a block linear of a QLoRA load: stream in, quantize, drop
      std::vector<float> tmp(static_cast<size_t>(p->numel()));
      if ((st = ws->read_f32(fname, tmp.data())) != LLMT_OK) return nullptr;
      auto q = std::make_unique<Q4Weight>();
      // a NaN/inf would vanish into finite 4-bit codes (fp32 and 16-bit loads keep it, and the forward reports NAN)
      const int64_t bad = quantize_weight(tmp.data(), p->shape[0], p->shape[1], quant, *q);
      if (bad >= 0) {
        st = non_finite_weight_error(p->name, ws->file_of(fname), p->shape, bad, tmp[static_cast<size_t>(bad)]);
        return nullptr;
      }
      for (auto &lin : m->linears)
        if (lin->W == p.get()) lin->q4 = q.get();
      m->q4_weights.push_back(std::move(q));
      continue;
    }
    p->data.assign(static_cast<size_t>(p->numel()), 0.0f);
    st = ws->read_f32(fname, p->data.data());
    if (st != LLMT_OK) return nullptr;
  }
  std::vector<std::string> unexpected;
  for (const auto &n : ws->names()) {
    if (expected.count(n) || ignorable_tensor(n)) continue;
    if (c.tie_embeddings && (n == head_name || n == file_name(head_name))) continue;  // tied: HF ignores a saved copy too
    unexpected.push_back(n);
  }
  if (!unexpected.empty()) {
    st = set_error(LLMT_ERR_BAD_INPUT, "the weights in " + dir + " hold tensors a " + f.model_type +
                                           " model does not have: " + first_names(unexpected) +
                                           ". Does config.json's model_type match the weights?");
    return nullptr;
  }
  st = LLMT_OK;
  clear_error();
  return m;
}

// ---- LoRA -----------------------------------------------------------------------------------------------------

llmt_status Model::attach_lora(Linear &lin, int64_t r, double alpha, double dropout, bool rslora, bool dora) {
  if (r <= 0) return set_error(LLMT_ERR_BAD_INPUT, "LoRA rank for " + lin.module + " must be positive");
  lin.lora.r = r;
  lin.lora.scaling = static_cast<float>(rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r);
  lin.lora.dropout = static_cast<float>(dropout);
  const std::string base = "base_model.model." + lin.module;
  lin.lora.A = new_param(lin.module + ".lora_A.weight", {r, lin.in});
  lin.lora.B = new_param(lin.module + ".lora_B.weight", {lin.out, r});
  lin.lora.A->save_name = base + ".lora_A.weight";
  lin.lora.B->save_name = base + ".lora_B.weight";
  if (dora) {
    // PEFT ≥ 0.10 saves the magnitude (module lora_magnitude_vector.<adapter>, parameter weight) under this key;
    // at init it is ‖W_j‖, the row norms of the base weight (B = 0), so the adapted layer starts as the base one
    lin.lora.M = new_param(lin.module + ".lora_magnitude_vector.weight", {lin.out});
    lin.lora.M->save_name = base + ".lora_magnitude_vector";
    lin.lora.wn2 = new_param(lin.module + ".lora_dora_wn2", {lin.out});
    lin.lora.wn2->derived = true;
    const std::vector<double> n2 = weight_row_norms2(lin);
    for (int64_t j = 0; j < lin.out; ++j) {
      lin.lora.wn2->data[static_cast<size_t>(j)] = static_cast<float>(n2[static_cast<size_t>(j)]);
      lin.lora.M->data[static_cast<size_t>(j)] = static_cast<float>(std::sqrt(n2[static_cast<size_t>(j)]));
    }
  }
  return LLMT_OK;
}

std::vector<double> Model::weight_row_norms2(const Linear &lin) const {
  std::vector<double> out(static_cast<size_t>(lin.out), 0.0);
  if (lin.q4) {
    Q4Weight *q = nullptr;
    for (const auto &w : q4_weights)
      if (w.get() == lin.q4) q = w.get();
    if (be_ && q) q4_fetch(*be_, *q);
    cpu::Q4View v;  // the host arrays (view() gives the device copies once uploaded)
    v.type = lin.q4->type;
    v.n = lin.q4->numel();
    v.packed = lin.q4->packed.data();
    if (lin.q4->qabsmax.empty()) {
      v.absmax = lin.q4->absmax.data();
    } else {
      v.qabsmax = lin.q4->qabsmax.data();
      v.absmax2 = lin.q4->absmax2.data();
      v.code2 = cpu::dynamic_map();
      v.offset = lin.q4->offset;
    }
    cpu::parallel_for(lin.out, [&](int64_t beg, int64_t end) {
      std::vector<float> row(static_cast<size_t>(lin.in));
      for (int64_t j = beg; j < end; ++j) {
        cpu::q4_dequantize(v, j * lin.in, lin.in, row.data());
        double acc = 0.0;
        for (float x : row) acc += static_cast<double>(x) * x;
        out[static_cast<size_t>(j)] = acc;
      }
    });
  } else {
    fetch_host(*lin.W);
    const Param &W = *lin.W;
    cpu::parallel_for(lin.out, [&](int64_t beg, int64_t end) {
      for (int64_t j = beg; j < end; ++j) {
        double acc = 0.0;
        for (int64_t i = 0; i < lin.in; ++i) {
          const size_t k = static_cast<size_t>(j * lin.in + i);
          const double x = W.half_type ? static_cast<double>(from_half(W.half[k], W.half_type)) : static_cast<double>(W.data[k]);
          acc += x * x;
        }
        out[static_cast<size_t>(j)] = acc;
      }
    });
  }
  free_frozen_host();
  return out;
}

void Model::refresh_dora_norms() {
  if (impl_) impl_->dora.clear();
  for (auto &lin : linears) {
    if (!lin->lora.wn2) continue;
    const std::vector<double> n2 = weight_row_norms2(*lin);
    Param &p = *lin->lora.wn2;
    p.data.resize(static_cast<size_t>(lin->out));
    for (int64_t j = 0; j < lin->out; ++j) p.data[static_cast<size_t>(j)] = static_cast<float>(n2[static_cast<size_t>(j)]);
    p.host_freed = false;
    // an untrained adapter (B = 0) starts from the norms of these weights, as PEFT's init on a 16-bit model does
    to_host();
    Param &M = *lin->lora.M;
    const std::vector<float> &B = lin->lora.B->data;
    if (!B.empty() && std::all_of(B.begin(), B.end(), [](float x) { return x == 0.0f; }) && !M.data.empty())
      for (int64_t j = 0; j < lin->out; ++j) M.data[static_cast<size_t>(j)] = static_cast<float>(std::sqrt(n2[static_cast<size_t>(j)]));
    dirty_ = !be_->host_memory();
  }
}

static int64_t pattern_lookup_r(const LoraSpec &s, const std::string &module, int64_t def) {
  const int64_t *v = peft_pattern_value(s.rank_pattern, module);
  return v ? *v : def;
}
static double pattern_lookup_alpha(const LoraSpec &s, const std::string &module, double def) {
  const double *v = peft_pattern_value(s.alpha_pattern, module);
  return v ? *v : def;
}

// Every regex of a LoRA spec compiles (PEFT's configs hold Python `re` patterns): an error names the field.
static llmt_status check_lora_regexes(const LoraSpec &s) {
  std::regex re;
  std::string why;
  auto bad = [&](const std::string &field, const std::string &pattern) {
    return set_error(LLMT_ERR_BAD_INPUT, "LoRA " + field + " \"" + pattern + "\" cannot be used: " + why +
                                             "; write it with plain groups and alternatives, or list the module names");
  };
  if (!s.target_regex.empty() && !python_regex(s.target_regex, re, why)) return bad("target_modules", s.target_regex);
  if (!s.exclude_regex.empty() && !python_regex(s.exclude_regex, re, why)) return bad("exclude_modules", s.exclude_regex);
  for (const auto &kv : s.rank_pattern)
    if (!python_regex(kv.first, re, why)) return bad("rank_pattern key", kv.first);
  for (const auto &kv : s.alpha_pattern)
    if (!python_regex(kv.first, re, why)) return bad("alpha_pattern key", kv.first);
  for (const auto &m : s.modules_to_save)
    if (!python_regex(m, re, why)) return bad("modules_to_save entry", m);
  for (const auto &p : s.layers_pattern)
    if (!python_regex(p, re, why)) return bad("layers_pattern", p);
  return LLMT_OK;
}

llmt_status Model::apply_modules_to_save(const std::vector<std::string> &names) {
  if (names.empty()) return LLMT_OK;
  const std::string head_module = cfg_.family->lm_head;
  const std::string embed_module = cfg_.family->embed;
  // PEFT wraps every module whose name ends with an entry (key.endswith(entry)), a container ("layers.1.mlp") as
  // well as a leaf: a parameter is trained when its module or a module above it is listed (a linear inside a listed
  // container gets no LoRA: peft_target_matches)
  auto listed = [&](const std::string &module) {
    for (std::string m = module;;) {
      for (const auto &n : names)
        if (ends_with(m, n)) return true;
      const size_t dot = m.rfind('.');
      if (dot == std::string::npos) return false;
      m.resize(dot);
    }
  };
  // A tied embedding/head where either side is listed: PEFT's ensure_weight_tying keeps them tied (when an entry is
  // embed_tokens or lm_head, its EMBEDDING_LAYER_NAMES), one trained table serving both; otherwise PEFT trains a
  // separate copy of the listed side, so the head is untied.
  bool keep_tied = false;
  if (lm_head == embed && spec_.ensure_weight_tying)
    for (const auto &n : names) {
      const std::string last = n.substr(n.rfind('.') == std::string::npos ? 0 : n.rfind('.') + 1);
      if (last == "embed_tokens" || last == "lm_head") keep_tied = true;
    }
  auto trained = [&](const Param &p) {
    return p.name.find(".lora_") == std::string::npos && (listed(p.name.substr(0, p.name.rfind('.'))) || (keep_tied && &p == embed));
  };
  for (auto &p : params) {  // a 16-bit frozen weight that becomes trainable is re-read in fp32
    if (!p->half_type || !trained(*p)) continue;
    if (llmt_status st = restore_fp32(*p)) return st;
  }
  if (lm_head == embed && !keep_tied && (listed(head_module) || listed(embed_module))) {
    Param *head = new_param(head_module + ".weight", embed->shape);
    // the untied copy starts from the table's fp32 values: a 16-bit frozen table is re-read in fp32 (and stays so)
    if (llmt_status st = restore_fp32(*embed)) return st;
    fetch_host(*embed);  // on a device backend its host copy may have been freed after the upload
    head->data = embed->data;
    lm_head = head;
  }
  bool any = false;
  for (auto &p : params) {
    if (!trained(*p)) continue;
    fetch_host(*p);  // a frozen weight freed on the host after its upload: trainable state lives on both sides
    p->trainable = true;
    p->save_name = "base_model.model." + p->name;
    any = true;
  }
  if (!any) {
    std::string list;
    for (const auto &n : names) list += (list.empty() ? "" : ", ") + n;
    return set_error(LLMT_ERR_BAD_INPUT, "modules_to_save (" + list + ") matches no module of this " + cfg_.model_type +
                                             " model; e.g. " + embed_module + ", " + head_module);
  }
  return LLMT_OK;
}

llmt_status Model::add_lora(const LoraSpec &spec, uint64_t seed) {
  if (has_lora_) return set_error(LLMT_ERR_BAD_INPUT, "this model already has a LoRA adapter");
  if (spec.r <= 0) return set_error(LLMT_ERR_BAD_INPUT, "lora_r must be a positive integer");
  if (!(spec.dropout >= 0 && spec.dropout < 1)) return set_error(LLMT_ERR_BAD_INPUT, "lora_dropout must be in [0, 1)");
  LoraSpec s = spec;
  std::string lower = s.target_regex;
  for (char &ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower == "all-linear" || (s.target_regex.empty() && s.targets.size() == 1 && s.targets[0] == "all-linear")) {
    // PEFT's shorthand: every linear layer but the output layer, saved as the expanded list of names
    s.target_regex.clear();
    s.targets.clear();
    std::set<std::string> seen;
    for (auto &lin : linears)
      if (seen.insert(lin->short_name).second) s.targets.push_back(lin->short_name);
  }
  if (llmt_status st = check_lora_regexes(s)) return st;
  if (s.targets.empty() && s.target_regex.empty()) {
    // PEFT's default for the model type
    std::string d = cfg_.family->default_lora_targets;
    size_t at = 0;
    while (at <= d.size()) {
      size_t comma = d.find(',', at);
      s.targets.push_back(d.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
  }
  // the LM head and the input embedding take LoRA too when listed (PEFT: a Linear and a lora.Embedding)
  const std::string head_module = cfg_.family->lm_head, embed_module = cfg_.family->embed;
  const bool on_head = peft_target_matches(s, head_module), on_embed = peft_target_matches(s, embed_module);
  if ((on_head || on_embed) && s.use_dora)
    return set_error(LLMT_ERR_UNSUPPORTED, "DoRA on the " + std::string(on_embed ? "embedding (" + embed_module : "LM head (" + head_module) +
                                               ") is not supported: leave it out of target_modules, or train it whole with modules_to_save");
  int matched = 0;
  // one whole-model module's pair: rank and alpha from the patterns, PEFT's names under `a_name` / `b_name`
  auto attach_whole = [&](Lora &l, const std::string &module, const char *a_name, std::vector<int64_t> a_shape, const char *b_name,
                          std::vector<int64_t> b_shape) -> llmt_status {
    const int64_t r = pattern_lookup_r(s, module, s.r);
    if (r <= 0) return set_error(LLMT_ERR_BAD_INPUT, "LoRA rank for " + module + " must be positive");
    const double alpha = pattern_lookup_alpha(s, module, s.alpha);
    l.r = r;
    l.scaling = static_cast<float>(s.use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r);
    a_shape[0] = r;
    b_shape[1] = r;
    l.A = new_param(module + a_name, a_shape);
    l.B = new_param(module + b_name, b_shape);
    l.A->save_name = "base_model.model." + module + a_name;
    l.B->save_name = "base_model.model." + module + b_name;
    ++matched;
    return LLMT_OK;
  };
  if (on_head) {
    if (llmt_status st = attach_whole(head_lora, head_module, ".lora_A.weight", {0, cfg_.hidden}, ".lora_B.weight", {cfg_.vocab, 0})) return st;
    head_lora.dropout = static_cast<float>(s.dropout);
    Rng rng(seed ^ fnv1a(head_module));  // as a linear: A ~ U(−1/√in, 1/√in), B = 0
    const float bound = 1.0f / std::sqrt(static_cast<float>(cfg_.hidden));
    for (float &x : head_lora.A->data) x = (rng.uniform() * 2.0f - 1.0f) * bound;
  }
  if (on_embed) {
    if (llmt_status st = attach_whole(embed_lora, embed_module, ".lora_embedding_A", {0, cfg_.vocab}, ".lora_embedding_B", {cfg_.hidden, 0}))
      return st;
    // PEFT's lora.Embedding: A = 0, B ~ N(0, 1) (the reverse of a linear's)
    Rng rng(seed ^ fnv1a(embed_module));
    for (float &x : embed_lora.B->data) {
      const double u1 = 1.0 - rng.uniform_double(), u2 = rng.uniform_double();
      x = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
  }
  for (auto &lin : linears) {
    if (!peft_target_matches(s, lin->module)) continue;
    llmt_status st = attach_lora(*lin, pattern_lookup_r(s, lin->module, s.r),
                                 pattern_lookup_alpha(s, lin->module, s.alpha), s.dropout, s.use_rslora, s.use_dora);
    if (st != LLMT_OK) return st;
    ++matched;
    // PEFT init: kaiming_uniform_(a=√5) on A [r, in] → U(−1/√in, 1/√in); B zeros.
    Rng rng(seed ^ fnv1a(lin->module));
    const float bound = 1.0f / std::sqrt(static_cast<float>(lin->in));
    for (float &x : lin->lora.A->data) x = (rng.uniform() * 2.0f - 1.0f) * bound;
  }
  if (matched == 0) {
    std::string avail;
    std::set<std::string> seen;
    for (auto &lin : linears)
      if (seen.insert(lin->short_name).second) avail += (avail.empty() ? "" : ", ") + lin->short_name;
    std::string t = s.target_regex;
    for (const auto &x : s.targets) t += (t.empty() ? "" : ", ") + x;
    return set_error(LLMT_ERR_BAD_INPUT, "LoRA target modules {" + t + "} not found in this " + cfg_.model_type +
                                             " model; its linear modules are: " + avail);
  }
  spec_ = s;
  has_lora_ = true;
  if (s.bias != "none" && s.bias != "all" && s.bias != "lora_only") {
    return set_error(LLMT_ERR_BAD_INPUT, "LoRA bias must be \"none\", \"all\" or \"lora_only\" (got \"" + s.bias + "\")");
  }
  if (s.bias == "all") {
    for (auto &p : params)
      if (ends_with(p->name, ".bias")) {
        p->trainable = true;
        p->save_name = "base_model.model." + p->name;
      }
  }
  for (Lora *l : {&head_lora, &embed_lora})
    if (l->r) l->A->trainable = l->B->trainable = true;
  for (auto &lin : linears) {
    if (!lin->lora.r) continue;
    lin->lora.A->trainable = lin->lora.B->trainable = true;
    if (lin->lora.M) lin->lora.M->trainable = true;
    if (s.bias != "none" && lin->b) {
      // PEFT ≥ 0.7 wraps the linear: its bias is the wrapped layer's, saved as <module>.base_layer.bias
      lin->b->trainable = true;
      lin->b->save_name = "base_model.model." + lin->module + ".base_layer.bias";
    }
  }
  llmt_status st = apply_modules_to_save(s.modules_to_save);
  if (st != LLMT_OK) return st;
  for (auto &lin : linears)
    if (lin->q4 && lin->W->trainable)
      return set_error(LLMT_ERR_UNSUPPORTED, "modules_to_save lists " + lin->module + ", which is 4-bit under QLoRA; it cannot be trained");
  for (auto &p : params)
    if (p->trainable) {
      fetch_host(*p);  // LoRA biases made trainable above
      p->grad.assign(p->data.size(), 0.0f);
    }
  dirty_ = !be_->host_memory();
  return LLMT_OK;
}

llmt_status Model::make_all_trainable() {
  for (auto &p : params)
    if (llmt_status st = restore_fp32(*p)) return st;
  precision_ = "fp32";
  for (auto &p : params) {
    fetch_host(*p);  // fp32 weights freed on the host after their upload
    p->trainable = true;
    p->save_name = p->name;
    p->grad.assign(p->data.size(), 0.0f);
  }
  dirty_ = !be_->host_memory();
  return LLMT_OK;
}

std::vector<Param *> Model::trainable_params() {
  std::vector<Param *> out;
  for (auto &p : params)
    if (p->trainable) out.push_back(p.get());
  return out;
}

void Model::zero_grad() {
  if (dirty_) to_device();
  std::vector<TensorSlot> ts;
  for (auto &p : params)
    if (p->trainable && !p->grad_staged) {
      TensorSlot t;
      t.g = p->g();
      t.n = p->numel();
      ts.push_back(t);
    }
  be_->zero_multi(ts);  // one launch on a GPU instead of one per tensor
}

// ---- building blocks -----------------------------------------------------------------------------------------

namespace {

struct Ctx {
  int64_t B, T, N;
  bool training;
  uint64_t seed;
  Backend *be;
  int half = 0;  // mixed precision (Model::set_precision): the 4-bit GEMMs run as matmul_*_q4_lp with this Half type
  bool bwd = false;  // a backward follows (DoRA keeps z for it)
  std::map<const Linear *, std::unique_ptr<DoraNorms>> *dora_cache = nullptr;  // forward-only calls: DoRA scales reused
};

uint64_t dropout_stream(uint64_t seed, int64_t layer, int role) {
  return mix64(seed ^ mix64(static_cast<uint64_t>(layer) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(role) + 1));
}

// C (+)= A·Wᵀ / A·W for a weight that may be stored in 16 bits (Model::set_precision)
void weight_nt(Backend &be, const Param &W, const float *A, float *C, int64_t M, int64_t N, int64_t K, bool acc) {
  if (W.half_type) be.matmul_nt_half(A, W.h(), Half(W.half_type), C, M, N, K, acc);
  else be.matmul_nt(A, W.w(), C, M, N, K, acc);
}
void weight_nn(Backend &be, const Param &W, const float *A, float *C, int64_t M, int64_t N, int64_t K, bool acc) {
  if (W.half_type) be.matmul_nn_half(A, W.h(), Half(W.half_type), C, M, N, K, acc);
  else be.matmul_nn(A, W.w(), C, M, N, K, acc);
}

// x[n,:] = table[ids[n],:] from an fp32 or (mixed precision, frozen) 16-bit table
void embed_rows(Backend &be, const Param &table, const int32_t *ids, float *x, int64_t N, int64_t H) {
  if (table.half_type) be.embedding_forward_half(table.h(), Half(table.half_type), ids, x, N, H);
  else be.embedding_forward(table.w(), ids, x, N, H);
}

void linear_lora_forward(const Linear &L, const float *x, float *y, int64_t N, const Ctx &c, int64_t layer, LinearActs &a);

// y[N,out] = x·Wᵀ with the frozen base weight as stored (fp32, 16-bit, 4-bit)
void base_forward(const Linear &L, const float *x, float *y, int64_t N, const Ctx &c) {
  Backend &be = *c.be;
  if (L.q4 && c.half) be.matmul_nt_q4_lp(x, L.q4->view(), Half(c.half), y, N, L.out, L.in, false);
  else if (L.q4) be.matmul_nt_q4(x, L.q4->view(), y, N, L.out, L.in, false);
  else weight_nt(be, *L.W, x, y, N, L.out, L.in, false);
}
// dx (+)= dy·W with the frozen base weight (half: Ctx::half, the 4-bit weight's input gradient on tensor cores)
void base_backward(Backend &be, const Linear &L, const float *dy, float *dx, int64_t N, bool accumulate, int half) {
  if (L.q4 && half) be.matmul_nn_q4_lp(dy, L.q4->view(), Half(half), dx, N, L.in, L.out, accumulate);
  else if (L.q4) be.matmul_nn_q4(dy, L.q4->view(), dx, N, L.in, L.out, accumulate);
  else weight_nn(be, *L.W, dy, dx, N, L.in, L.out, accumulate);
}

// y[N,out] = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ ; saves LoRA intermediates into `a`.
void linear_forward(const Linear &L, const float *x, float *y, int64_t N, const Ctx &c, int64_t layer, LinearActs &a) {
  base_forward(L, x, y, N, c);
  linear_lora_forward(L, x, y, N, c, layer, a);
}

// DoRA's per-row scale g = m / ‖W + s·B·A‖ and 1/‖…‖ (PEFT: the norm is treated as a constant). ‖W_j + s·(BA)_j‖² is
// ‖W_j‖² (wn2, once per weight) + 2s·B_j·(A·W_jᵀ) + s²·B_j·(A·Aᵀ)·B_jᵀ: one small GEMM with W, no W + s·B·A in memory.
void dora_norms(const Linear &L, const Ctx &c, LinearActs &a, const float **g, const float **inv_n) {
  Backend &be = *c.be;
  DoraNorms *cached = nullptr;
  if (c.dora_cache) {
    auto it = c.dora_cache->find(&L);
    if (it != c.dora_cache->end()) {
      *g = it->second->g.data();
      *inv_n = it->second->inv_n.data();
      return;
    }
    auto d = std::make_unique<DoraNorms>();
    d->g.bind(&be);
    d->inv_n.bind(&be);
    cached = d.get();
    (*c.dora_cache)[&L] = std::move(d);
  }
  Buf &gb = cached ? cached->g : a.g, &nb = cached ? cached->inv_n : a.inv_n;
  const int64_t r = L.lora.r;
  gb.resize_overwrite(L.out);
  nb.resize_overwrite(L.out);
  Buf wat(be, r * L.out, kOverwrite), gram(be, r * r, kOverwrite);
  base_forward(L, L.lora.A->w(), wat.data(), r, c);  // A·Wᵀ [r, out]
  be.matmul_nt(L.lora.A->w(), L.lora.A->w(), gram.data(), r, r, L.in, false);
  be.dora_scale(L.lora.wn2->w(), wat.data(), L.lora.B->w(), gram.data(), L.lora.M->w(), L.lora.scaling, gb.data(), nb.data(),
                L.out, r);
  *g = gb.data();
  *inv_n = nb.data();
}

// linear_forward of several linears reading the same x (q, k, v; gate, up): with 16-bit frozen weights of one type (or
// 4-bit ones in a mixed-precision run) the backend may round x once for all of their GEMMs
// (Backend::matmul_nt_half_shared, matmul_nt_q4_lp_shared); the same values as one by one.
void linears_forward_shared(const std::vector<const Linear *> &ls, const float *x, const std::vector<float *> &ys, int64_t N,
                            const Ctx &c, int64_t layer, const std::vector<LinearActs *> &as) {
  // 4-bit weights in a mixed-precision run (QLoRA): Backend::matmul_nt_q4_lp_shared
  bool q4 = ls.size() > 1 && c.half;
  for (const Linear *L : ls) q4 = q4 && L->q4 && L->in == ls[0]->in;
  if (q4) {
    std::vector<Backend::Q4Out> outs;
    std::vector<cpu::Q4View> views;
    views.reserve(ls.size());
    for (size_t i = 0; i < ls.size(); ++i) {
      views.push_back(ls[i]->q4->view());
      outs.push_back({&views.back(), ys[i], ls[i]->out});
    }
    c.be->matmul_nt_q4_lp_shared(x, outs, Half(c.half), N, ls[0]->in);
    for (size_t i = 0; i < ls.size(); ++i) linear_lora_forward(*ls[i], x, ys[i], N, c, layer, *as[i]);
    return;
  }
  bool shared = ls.size() > 1;
  for (const Linear *L : ls) shared = shared && !L->q4 && L->W->half_type && L->W->half_type == ls[0]->W->half_type && L->in == ls[0]->in;
  if (!shared) {
    for (size_t i = 0; i < ls.size(); ++i) linear_forward(*ls[i], x, ys[i], N, c, layer, *as[i]);
    return;
  }
  std::vector<Backend::HalfOut> outs;
  for (size_t i = 0; i < ls.size(); ++i) outs.push_back({ls[i]->W->h(), ys[i], ls[i]->out});
  c.be->matmul_nt_half_shared(x, outs, Half(ls[0]->W->half_type), N, ls[0]->in);
  for (size_t i = 0; i < ls.size(); ++i) linear_lora_forward(*ls[i], x, ys[i], N, c, layer, *as[i]);
}

// The bias and the LoRA branch of linear_forward, added to y (the base product already in it). With y null, only what
// linear_backward reads from `a` (dropout(x), u): a checkpointed block's recomputation does not need the output of a
// linear that feeds nothing but the block's output (Recompute).
void linear_lora_forward(const Linear &L, const float *x, float *y, int64_t N, const Ctx &c, int64_t layer, LinearActs &a) {
  Backend &be = *c.be;
  const bool dora = L.lora.r && L.lora.M;
  if (L.b && y && !dora) be.add_bias(y, L.b->w(), N, L.out);
  if (!L.lora.r) return;
  const int64_t r = L.lora.r;
  const float *xin = x;
  if (c.training && L.lora.dropout > 0) {
    a.xdrop.resize_overwrite(N * L.in);
    a.stream = dropout_stream(c.seed, layer, L.role);
    be.dropout_forward(x, a.xdrop.data(), N * L.in, L.lora.dropout, a.stream);
    xin = a.xdrop.data();
  } else {
    a.xdrop.clear();
  }
  // a.u = s·(x·Aᵀ), kept scaled: y += a.u·Bᵀ now and dB += dyᵀ·a.u in the backward use the same values (on a GPU the
  // scale rides in the GEMM: one launch)
  a.u.resize_overwrite(N * r);
  be.matmul_nt_scaled(xin, L.lora.A->w(), a.u.data(), N, r, L.in, L.lora.scaling, false);
  if (!dora) {
    if (y) be.matmul_nt(a.u.data(), L.lora.B->w(), y, N, L.out, r, true);
    return;
  }
  // DoRA (PEFT): y = x·Wᵀ + b + (g − 1)⊙(xin·Wᵀ) + g⊙(u·Bᵀ), g = m/‖W + s·B·A‖ per output; without dropout (xin = x)
  // that is g⊙z + b with z = x·Wᵀ + u·Bᵀ. The backward reads z (= xin·Wᵀ + u·Bᵀ in both cases), g and 1/‖…‖.
  const float *g = nullptr, *inv_n = nullptr;
  dora_norms(L, c, a, &g, &inv_n);
  const bool drop = !a.xdrop.empty();
  if (!y) {  // recomputation for the backward (checkpointing): z alone
    a.z.resize_overwrite(N * L.out);
    base_forward(L, xin, a.z.data(), N, c);
    be.matmul_nt(a.u.data(), L.lora.B->w(), a.z.data(), N, L.out, r, true);
    return;
  }
  if (!drop) {
    be.matmul_nt(a.u.data(), L.lora.B->w(), y, N, L.out, r, true);  // y = z
    if (c.bwd) {
      a.z.resize_overwrite(N * L.out);
      be.copy(a.z.data(), y, N * L.out);
    }
    be.scale_cols(y, y, g, 0.0f, false, N, L.out);
  } else {
    a.z.resize_overwrite(N * L.out);
    base_forward(L, xin, a.z.data(), N, c);                              // xin·Wᵀ
    be.axpby(y, 1.0f, y, -1.0f, a.z.data(), N * L.out);                  // x·Wᵀ − xin·Wᵀ
    be.matmul_nt(a.u.data(), L.lora.B->w(), a.z.data(), N, L.out, r, true);  // z
    be.scale_cols(y, a.z.data(), g, 0.0f, true, N, L.out);                 // + g⊙z
  }
  if (L.b) be.add_bias(y, L.b->w(), N, L.out);
}

// Backward of a DoRA linear (linear_forward above, the norm held constant as PEFT does): dm += (1/‖…‖)·Σ dy⊙z; the LoRA
// factors see g⊙dy; dx = W·(g⊙dy) + (g⊙dy)·B·A without dropout, else W·dy + drop'(W·((g − 1)⊙dy) + (g⊙dy)·B·A).
void dora_backward(Backend &be, Linear &L, const float *x, const float *dy, float *dx, bool accumulate, int64_t N,
                   const LinearActs &a, int half) {
  const int64_t r = L.lora.r, out = L.out;
  if (L.b && L.b->trainable) be.bias_backward(dy, L.b->g(), N, out);
  if (L.lora.M->trainable) be.col_dot(dy, a.z.data(), a.inv_n.data(), L.lora.M->g(), N, out);
  Buf dz(be, N * out, kOverwrite), du(be, N * r, kOverwrite);
  be.scale_cols(dz.data(), dy, a.g.data(), 0.0f, false, N, out);
  be.matmul_nn_scaled(dz.data(), L.lora.B->w(), du.data(), N, r, out, L.lora.scaling, false);
  if (L.lora.B->trainable) be.matmul_tn(dz.data(), a.u.data(), L.lora.B->g(), out, r, N, true);
  const bool drop = !a.xdrop.empty();
  const float *xin = drop ? a.xdrop.data() : x;
  if (L.lora.A->trainable) be.matmul_tn(du.data(), xin, L.lora.A->g(), r, L.in, N, true);
  base_backward(be, L, drop ? dy : dz.data(), dx, N, accumulate, half);
  if (!drop) {
    be.matmul_nn(du.data(), L.lora.A->w(), dx, N, L.in, r, true);
    return;
  }
  be.scale_cols(dz.data(), dy, a.g.data(), -1.0f, false, N, out);  // (g − 1)⊙dy
  Buf t(be, N * L.in, kOverwrite);
  base_backward(be, L, dz.data(), t.data(), N, false, half);
  be.matmul_nn(du.data(), L.lora.A->w(), t.data(), N, L.in, r, true);
  be.dropout_backward(t.data(), dx, N * L.in, L.lora.dropout, a.stream);
}

// linear_forward for the backward's sake only (no y): the base GEMM — the linear's whole cost without LoRA — is skipped.
void linear_saved_forward(const Linear &L, const float *x, int64_t N, const Ctx &c, int64_t layer, LinearActs &a) {
  linear_lora_forward(L, x, nullptr, N, c, layer, a);
}

// Backward of linear_forward. dx is overwritten (accumulate=false) or added to. Everything that reads x comes before
// dx is written, so with accumulate=false dx may be x's own buffer (mlp_backward puts d(act) into act).
// half: Ctx::half (the 4-bit weight's input gradient in bf16/fp16 on tensor cores, as its forward).
void linear_backward(Backend &be, Linear &L, const float *x, const float *dy, float *dx, bool accumulate, int64_t N,
                     const LinearActs &a, int half) {
  if (L.lora.r && L.lora.M) return dora_backward(be, L, x, dy, dx, accumulate, N, a, half);
  if (L.W->trainable && !L.q4) be.matmul_tn(dy, x, L.W->g(), L.out, L.in, N, true);
  if (L.b && L.b->trainable) be.bias_backward(dy, L.b->g(), N, L.out);
  const int64_t r = L.lora.r;
  const float s = L.lora.scaling;
  Buf du(be);
  if (r) {
    // du = s · dy·B  [N, r]
    du.resize_overwrite(N * r);
    be.matmul_nn_scaled(dy, L.lora.B->w(), du.data(), N, r, L.out, s, false);
    // dB += s · dyᵀ·(x·Aᵀ) = dyᵀ·a.u (a.u is kept scaled)
    if (L.lora.B->trainable) be.matmul_tn(dy, a.u.data(), L.lora.B->g(), L.out, r, N, true);
    const float *xin = a.xdrop.empty() ? x : a.xdrop.data();
    if (L.lora.A->trainable) be.matmul_tn(du.data(), xin, L.lora.A->g(), r, L.in, N, true);
  }
  if (L.q4 && half) be.matmul_nn_q4_lp(dy, L.q4->view(), Half(half), dx, N, L.in, L.out, accumulate);  // frozen: no dW
  else if (L.q4) be.matmul_nn_q4(dy, L.q4->view(), dx, N, L.in, L.out, accumulate);
  else weight_nn(be, *L.W, dy, dx, N, L.in, L.out, accumulate);
  if (!r) return;
  // dx += dropout'(du·A)
  if (a.xdrop.empty()) {
    be.matmul_nn(du.data(), L.lora.A->w(), dx, N, L.in, r, true);
  } else {
    Buf t(be, N * L.in, kOverwrite);
    be.matmul_nn(du.data(), L.lora.A->w(), t.data(), N, L.in, r, false);
    be.dropout_backward(t.data(), dx, N * L.in, L.lora.dropout, a.stream);
  }
}

void norm_forward(Backend &be, const ModelConfig &c, const Param *w, const Param *b, const float *x, float *y, float *mean,
                  float *rstd, int64_t N) {
  if (c.norm == NormKind::RMS)
    be.rmsnorm_forward(x, w->w(), y, rstd, N, c.hidden, static_cast<float>(c.norm_eps));
  else
    be.layernorm_forward(x, w->w(), b->w(), y, mean, rstd, N, c.hidden, static_cast<float>(c.norm_eps));
}

void norm_backward(Backend &be, const ModelConfig &c, Param *w, Param *b, const float *x, const float *mean, const float *rstd,
                   const float *dy, float *dx, int64_t N) {
  float *dw = w->trainable ? w->g() : nullptr;
  if (c.norm == NormKind::RMS) {
    be.rmsnorm_backward(dy, x, w->w(), rstd, dx, dw, N, c.hidden);
  } else {
    float *db = b && b->trainable ? b->g() : nullptr;
    be.layernorm_backward(dy, x, w->w(), mean, rstd, dx, dw, db, N, c.hidden);
  }
}

std::vector<float> inv_freq(const ModelConfig &c) {
  if (!c.rope_freqs.empty()) return c.rope_freqs;  // the family fixes its table (chatglm v1: fp16-valued)
  // HF: 1 / base^(arange(0, D, 2).float() / D), in fp32
  std::vector<float> f(static_cast<size_t>(c.rot_dims / 2));
  for (int64_t i = 0; i < c.rot_dims / 2; ++i) {
    float e = static_cast<float>(2 * i) / static_cast<float>(c.rot_dims);
    f[static_cast<size_t>(i)] = 1.0f / static_cast<float>(std::pow(c.rope_theta, static_cast<double>(e)));
  }
  return f;
}

QkvSplit split_layout(QkvLayout l) {
  return l == QkvLayout::PackedBlocks ? QkvSplit::Blocks : l == QkvLayout::GroupedFused ? QkvSplit::Grouped : QkvSplit::PerHead;
}

void resize(Buf &v, int64_t n) { v.resize(n); }
void resize_ow(Buf &v, int64_t n) { v.resize_overwrite(n); }

// LoRA on the input embedding (PEFT's lora.Embedding): x[N, H] += s·A[:, ids]ᵀ·Bᵀ, no dropout. u [N, r] keeps
// s·A[:, ids]ᵀ for the backward (rows of Aᵀ, which a transpose of A [r, V] lays out for the lookup).
void embed_lora_forward(Backend &be, const Lora &L, const int32_t *ids, float *x, Buf &u, int64_t N, int64_t H, int64_t V) {
  const int64_t r = L.r;
  Buf at(be, V * r, kOverwrite);
  be.transpose(L.A->w(), at.data(), r, V, false);
  u.resize_overwrite(N * r);
  be.embedding_forward(at.data(), ids, u.data(), N, r);
  be.scale_inplace(u.data(), L.scaling, N * r);
  be.matmul_nt(u.data(), L.B->w(), x, N, H, r, true);
}
// Its backward from d(embedding output) dx [N, H]: dB += dxᵀ·u, dA[:, v] += Σ_{n: ids[n]=v} s·(dx·B)[n, :].
void embed_lora_backward(Backend &be, Lora &L, const int32_t *ids, const float *dx, const Buf &u, int64_t N, int64_t H, int64_t V) {
  const int64_t r = L.r;
  if (L.B->trainable) be.matmul_tn(dx, u.data(), L.B->g(), H, r, N, true);
  if (!L.A->trainable) return;
  Buf du(be, N * r, kOverwrite), dat(be, V * r);  // dat: zeroed, the lookup's gradient accumulates into it
  be.matmul_nn_scaled(dx, L.B->w(), du.data(), N, r, H, L.scaling, false);
  be.embedding_backward(du.data(), ids, dat.data(), N, r, V);
  be.transpose(dat.data(), L.A->g(), V, r, true);
}

// LoRA on the LM head (a Linear in PEFT): logits[rows, V] += s·(drop(h)·Aᵀ)·Bᵀ. u [rows, r] keeps s·drop(h)·Aᵀ, and hd
// the dropped-out input when dropout applies (training with lora_dropout > 0), both for the backward.
void head_lora_forward(Backend &be, const Lora &L, const float *h, float *logits, float *u, float *hd, int64_t rows, int64_t V,
                       int64_t H, uint64_t stream) {
  const float *in = h;
  if (hd) {
    be.dropout_forward(h, hd, rows * H, L.dropout, stream);
    in = hd;
  }
  be.matmul_nt_scaled(in, L.A->w(), u, rows, L.r, H, L.scaling, false);
  be.matmul_nt(u, L.B->w(), logits, rows, V, L.r, true);
}
// Its backward: dB += dlogitsᵀ·u; du = s·dlogits·B; dA += duᵀ·drop(h); dh += drop'(du·A).
void head_lora_backward(Backend &be, Lora &L, const float *h, const float *hd, const float *u, const float *dlogits, float *dh,
                        int64_t rows, int64_t V, int64_t H, uint64_t stream) {
  const int64_t r = L.r;
  Buf du(be, rows * r, kOverwrite);
  if (L.B->trainable) be.matmul_tn(dlogits, u, L.B->g(), V, r, rows, true);
  be.matmul_nn_scaled(dlogits, L.B->w(), du.data(), rows, r, V, L.scaling, false);
  if (L.A->trainable) be.matmul_tn(du.data(), hd ? hd : h, L.A->g(), r, H, rows, true);
  if (!hd) {
    be.matmul_nn(du.data(), L.A->w(), dh, rows, H, r, true);
    return;
  }
  Buf t(be, rows * H, kOverwrite);
  be.matmul_nn(du.data(), L.A->w(), t.data(), rows, H, r, false);
  be.dropout_backward(t.data(), dh, rows * H, L.dropout, stream);
}

// What one block call needs besides the layer's parameters: positions and the attention flavour.
struct Fwd {
  Fwd(const ModelConfig &cfg, Backend &backend, Ctx cx) : c(cfg), be(backend), ctx(cx) {}
  const ModelConfig &c;
  Backend &be;
  Ctx ctx;
  const int32_t *pos = nullptr;    // [N] rotary positions (chatglm v1: position ids)
  const int32_t *block = nullptr;  // [N] chatglm v1 block position ids (second half of each head)
  const float *freqs = nullptr;    // [rot_dims/2] rotary inverse frequencies (backend memory)
  const float *alibi = nullptr;    // [nh] ALiBi slopes or null (backend memory)
  float pos_scale = 1.0f, scale = 1.0f;
  int attn_half = 0;  // mixed precision (Model::set_precision): attention_*_lp with this Half type
  // training attention (B, T from ctx)
  const int32_t *seg = nullptr, *prefix = nullptr;
  // seg with the sliding window folded in (key j visible to query i only if j > i − window), for the windowed
  // layers; null when no row is longer than the window (then the window hides nothing)
  const int32_t *seg_window = nullptr;
  const int32_t *seg_of(const Layer &L) const { return L.windowed && seg_window ? seg_window : seg; }
  // cached attention (inference): per sequence, its rows [row0, row0+n) of the chunk go to cache rows p0… of
  // layer l and attend to that cache (ChatGLM-6B: with its prefix)
  struct CachedSeq {
    Model::KvCache *cache;
    int64_t row0, n, p0, prefix;
  };
  std::vector<CachedSeq> cached;
};

// Rotary positions on q [N, nh, hd] and k [N, nkv, hd]; `back` applies the transpose (the backward).
void apply_positions(const Fwd &F, float *q, float *k, bool back) {
  const ModelConfig &c = F.c;
  const int64_t N = F.ctx.N, nh = c.heads, nkv = c.kv_heads, hd = c.head_dim;
  auto rope = [&](float *x, int64_t heads, const int32_t *pos, int64_t rot, float ps, bool il) {
    if (back) F.be.rope_backward(x, pos, F.freqs, N, heads, hd, rot, ps, il);
    else F.be.rope_forward(x, pos, F.freqs, N, heads, hd, rot, ps, il);
  };
  switch (c.pos) {
    case PosKind::Rope:
      if (c.rot_dims > 0) {
        rope(q, nh, F.pos, c.rot_dims, F.pos_scale, false);
        rope(k, nkv, F.pos, c.rot_dims, F.pos_scale, false);
      }
      break;
    case PosKind::RopeInterleaved:
      rope(q, nh, F.pos, c.rot_dims, 1.0f, true);
      rope(k, nkv, F.pos, c.rot_dims, 1.0f, true);
      break;
    case PosKind::Rope2D:  // first half of each head by position, second half by block position
      rope(q, nh, F.pos, hd / 2, 1.0f, false);
      rope(k, nkv, F.pos, hd / 2, 1.0f, false);
      rope(q + hd / 2, nh, F.block, hd / 2, 1.0f, false);
      rope(k + hd / 2, nkv, F.block, hd / 2, 1.0f, false);
      break;
    case PosKind::Alibi:
      break;
  }
}

const float *alibi_of(const ModelConfig &c) { return c.pos == PosKind::Alibi ? c.alibi.data() : nullptr; }

// ym null: a recomputation (block_forward without x_out) — the last linear only saves what its backward reads.
void mlp_forward(const Fwd &F, Layer &L, int64_t l, LayerActs &a, const float *in, float *ym) {
  Backend &be = F.be;
  const int64_t N = F.ctx.N, I = F.c.inter;
  auto last = [&](const Linear &lin, LinearActs &la) {
    if (ym) linear_forward(lin, a.act.data(), ym, N, F.ctx, l, la);
    else linear_saved_forward(lin, a.act.data(), N, F.ctx, l, la);
  };
  resize_ow(a.act, N * I);
  resize_ow(a.a, N * I);
  switch (F.c.mlp) {
    case MlpKind::SwiGLU:
      resize_ow(a.b, N * I);
      linears_forward_shared({L.gate, L.up}, in, {a.a.data(), a.b.data()}, N, F.ctx, l, {&a.lin[kGate], &a.lin[kUp]});
      be.swiglu_forward(a.a.data(), a.b.data(), a.act.data(), N * I);
      last(*L.down, a.lin[kDown]);
      break;
    case MlpKind::SwiGLUFused: {
      resize_ow(a.b, N * I);
      Buf fused(be, N * 2 * I, kOverwrite);
      linear_forward(*L.fc1, in, fused.data(), N, F.ctx, l, a.lin[kFc1]);
      be.split_cols(fused.data(), a.a.data(), a.b.data(), N, I, I, false);
      be.swiglu_forward(a.a.data(), a.b.data(), a.act.data(), N * I);
      last(*L.fc2, a.lin[kFc2]);
      break;
    }
    case MlpKind::Gelu:
    case MlpKind::GeluTanh:
      a.b.clear();
      linear_forward(*L.fc1, in, a.a.data(), N, F.ctx, l, a.lin[kFc1]);
      be.gelu_forward(a.a.data(), a.act.data(), N * I, F.c.mlp == MlpKind::Gelu ? cpu::Gelu::Erf : cpu::Gelu::Tanh);
      last(*L.fc2, a.lin[kFc2]);
      break;
  }
}

// d(mlp input) into dh (overwritten) from d(mlp output) dym. The layer's MLP activations are not needed after their own
// backward, so the gradients take their buffers (no N×I temporaries): d(act) goes into act (linear_backward reads x
// before writing dx), d(gate), d(up) into a, b (element-wise in place), d(fc1 output) of GELU into a.
void mlp_backward(const Fwd &F, Layer &L, LayerActs &a, const float *in, const float *dym, float *dh) {
  Backend &be = F.be;
  const int64_t N = F.ctx.N, I = F.c.inter;
  float *dact = a.act.data();
  switch (F.c.mlp) {
    case MlpKind::SwiGLU: {
      linear_backward(be, *L.down, a.act.data(), dym, dact, false, N, a.lin[kDown], F.ctx.half);
      float *dg = a.a.data(), *du = a.b.data();
      be.swiglu_backward(dact, a.a.data(), a.b.data(), dg, du, N * I);
      linear_backward(be, *L.gate, in, dg, dh, false, N, a.lin[kGate], F.ctx.half);
      linear_backward(be, *L.up, in, du, dh, true, N, a.lin[kUp], F.ctx.half);
      break;
    }
    case MlpKind::SwiGLUFused: {
      linear_backward(be, *L.fc2, a.act.data(), dym, dact, false, N, a.lin[kFc2], F.ctx.half);
      float *dg = a.a.data(), *du = a.b.data();
      be.swiglu_backward(dact, a.a.data(), a.b.data(), dg, du, N * I);
      Buf dfused(be, N * 2 * I, kOverwrite);
      be.split_cols(dfused.data(), dg, du, N, I, I, true);
      linear_backward(be, *L.fc1, in, dfused.data(), dh, false, N, a.lin[kFc1], F.ctx.half);
      break;
    }
    case MlpKind::Gelu:
    case MlpKind::GeluTanh: {
      linear_backward(be, *L.fc2, a.act.data(), dym, dact, false, N, a.lin[kFc2], F.ctx.half);
      float *df = a.a.data();
      be.gelu_backward(dact, a.a.data(), df, N * I, F.c.mlp == MlpKind::Gelu ? cpu::Gelu::Erf : cpu::Gelu::Tanh);
      linear_backward(be, *L.fc1, in, df, dh, false, N, a.lin[kFc1], F.ctx.half);
      break;
    }
  }
}

// The forward of one block from a.x_in into x_out, saving every activation the backward needs. x_out null: the
// recomputation of a checkpointed block, whose output the backward never reads — so neither the adds that make it nor
// the linears that only feed it run their base GEMMs (the MLP's last linear; with a parallel residual, the attention
// output projection too): a LLaMA block's recomputation skips down_proj, 22 % of its GEMM FLOPs.
void block_forward(const Fwd &F, Layer &L, int64_t l, LayerActs &a, float *x_out) {
  const ModelConfig &c = F.c;
  Backend &be = F.be;
  const int64_t N = F.ctx.N, H = c.hidden, nh = c.heads, nkv = c.kv_heads, hd = c.head_dim;
  const int64_t qd = nh * hd, kvd = nkv * hd;
  const float s = c.branch_scale, alpha = c.residual_alpha;
  resize_ow(a.h1, N * H);
  resize(a.mean1, N);
  resize(a.rstd1, N);
  norm_forward(be, c, L.norm1_w, L.norm1_b, a.x_in.data(), a.h1.data(), a.mean1.data(), a.rstd1.data(), N);
  resize_ow(a.q, N * qd);
  resize_ow(a.k, N * kvd);
  resize_ow(a.v, N * kvd);
  if (L.qkv) {
    Buf fused(be, N * (qd + 2 * kvd), kOverwrite);
    linear_forward(*L.qkv, a.h1.data(), fused.data(), N, F.ctx, l, a.lin[kQKV]);
    be.qkv_split(fused.data(), a.q.data(), a.k.data(), a.v.data(), N, nh, nkv, hd, split_layout(c.qkv_layout), false);
  } else {
    linears_forward_shared({L.q, L.k, L.v}, a.h1.data(), {a.q.data(), a.k.data(), a.v.data()}, N, F.ctx, l,
                           {&a.lin[kQ], &a.lin[kK], &a.lin[kV]});
  }
  apply_positions(F, a.q.data(), a.k.data(), false);
  if (!F.cached.empty()) {
    resize(a.attn, N * qd);  // the cached sequences' rows are written; keep the rest defined
    for (const Fwd::CachedSeq &cs : F.cached) {
      const size_t li = static_cast<size_t>(l);
      float *kc = cs.cache->dk.empty() ? cs.cache->k[li].data() : cs.cache->dk[li].get();
      float *vc = cs.cache->dv.empty() ? cs.cache->v[li].data() : cs.cache->dv[li].get();
      be.copy(kc + cs.p0 * kvd, a.k.data() + cs.row0 * kvd, cs.n * kvd);
      be.copy(vc + cs.p0 * kvd, a.v.data() + cs.row0 * kvd, cs.n * kvd);
      be.attention_cached(a.q.data() + cs.row0 * qd, kc, vc, a.attn.data() + cs.row0 * qd, cs.p0, cs.n, nh, nkv, hd, F.scale,
                          F.alibi, cs.prefix, L.windowed ? c.sliding_window : 0);
    }
  } else {
    resize_ow(a.attn, N * qd);
    resize_ow(a.lse, F.ctx.B * nh * F.ctx.T);
    if (F.attn_half)
      be.attention_forward_lp(a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), F.ctx.B, F.ctx.T, nh, nkv, hd,
                              F.scale, F.seg_of(L), F.alibi, F.prefix, Half(F.attn_half));
    else
      be.attention_forward(a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), F.ctx.B, F.ctx.T, nh, nkv, hd,
                           F.scale, F.seg_of(L), F.alibi, F.prefix);
  }
  Buf y(be), ym(be);
  if (x_out) ym.resize_overwrite(N * H);
  if (c.parallel_residual) {  // x' = x + attn(N1(x)) + mlp(N2(x)) (N2 = N1 when the layer has one norm)
    if (x_out) {
      y.resize_overwrite(N * H);
      linear_forward(*L.o, a.attn.data(), y.data(), N, F.ctx, l, a.lin[kO]);
    } else {
      linear_saved_forward(*L.o, a.attn.data(), N, F.ctx, l, a.lin[kO]);
    }
    a.x_mid.clear();
    const float *mlp_in = a.h1.data();
    if (L.norm2_w) {
      resize_ow(a.h2, N * H);
      resize(a.mean2, N);
      resize(a.rstd2, N);
      norm_forward(be, c, L.norm2_w, L.norm2_b, a.x_in.data(), a.h2.data(), a.mean2.data(), a.rstd2.data(), N);
      mlp_in = a.h2.data();
    } else {
      a.h2.clear();
    }
    mlp_forward(F, L, l, a, mlp_in, x_out ? ym.data() : nullptr);
    if (!x_out) return;
    if (s == 1.0f) {
      be.add(x_out, a.x_in.data(), y.data(), ym.data(), N * H);
    } else {
      be.add(ym.data(), y.data(), ym.data(), nullptr, N * H);
      be.axpby(x_out, 1.0f, a.x_in.data(), s, ym.data(), N * H);
    }
    return;
  }
  // sequential: x_mid = R(x) + s·attn(N1(x)); x' = R(x_mid) + s·mlp(N2(x_mid)); R = identity or α·norm output
  y.resize_overwrite(N * H);
  linear_forward(*L.o, a.attn.data(), y.data(), N, F.ctx, l, a.lin[kO]);
  resize_ow(a.x_mid, N * H);
  if (!c.residual_from_norm && s == 1.0f) be.add(a.x_mid.data(), a.x_in.data(), y.data(), nullptr, N * H);
  else if (!c.residual_from_norm) be.axpby(a.x_mid.data(), 1.0f, a.x_in.data(), s, y.data(), N * H);
  else be.axpby(a.x_mid.data(), alpha, a.h1.data(), s, y.data(), N * H);
  resize_ow(a.h2, N * H);
  resize(a.mean2, N);
  resize(a.rstd2, N);
  norm_forward(be, c, L.norm2_w, L.norm2_b, a.x_mid.data(), a.h2.data(), a.mean2.data(), a.rstd2.data(), N);
  y.free();
  mlp_forward(F, L, l, a, a.h2.data(), x_out ? ym.data() : nullptr);
  if (!x_out) return;
  if (!c.residual_from_norm && s == 1.0f) be.add(x_out, a.x_mid.data(), ym.data(), nullptr, N * H);
  else if (!c.residual_from_norm) be.axpby(x_out, 1.0f, a.x_mid.data(), s, ym.data(), N * H);
  else be.axpby(x_out, alpha, a.h2.data(), s, ym.data(), N * H);
}

// Backward of the attention branch: from d(attention output) dy to d(N1 output) dh1 (overwritten).
void attention_branch_backward(const Fwd &F, Layer &L, LayerActs &a, const float *dy, float *dh1) {
  const ModelConfig &c = F.c;
  Backend &be = F.be;
  const int64_t N = F.ctx.N, nh = c.heads, nkv = c.kv_heads, hd = c.head_dim, qd = nh * hd, kvd = nkv * hd;
  Buf dattn(be, N * qd, kOverwrite);
  linear_backward(be, *L.o, a.attn.data(), dy, dattn.data(), false, N, a.lin[kO], F.ctx.half);
  Buf dq(be, N * qd, kOverwrite), dk(be, N * kvd, kOverwrite), dv(be, N * kvd, kOverwrite);
  if (F.attn_half)
    be.attention_backward_lp(dattn.data(), a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), dq.data(),
                             dk.data(), dv.data(), F.ctx.B, F.ctx.T, nh, nkv, hd, F.scale, F.seg_of(L), F.alibi, F.prefix,
                             Half(F.attn_half));
  else
    be.attention_backward(dattn.data(), a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), dq.data(), dk.data(),
                          dv.data(), F.ctx.B, F.ctx.T, nh, nkv, hd, F.scale, F.seg_of(L), F.alibi, F.prefix);
  apply_positions(F, dq.data(), dk.data(), true);
  if (L.qkv) {
    Buf dfused(be, N * (qd + 2 * kvd), kOverwrite);
    be.qkv_split(dfused.data(), dq.data(), dk.data(), dv.data(), N, nh, nkv, hd, split_layout(c.qkv_layout), true);
    linear_backward(be, *L.qkv, a.h1.data(), dfused.data(), dh1, false, N, a.lin[kQKV], F.ctx.half);
  } else {
    linear_backward(be, *L.q, a.h1.data(), dq.data(), dh1, false, N, a.lin[kQ], F.ctx.half);
    linear_backward(be, *L.k, a.h1.data(), dk.data(), dh1, true, N, a.lin[kK], F.ctx.half);
    linear_backward(be, *L.v, a.h1.data(), dv.data(), dh1, true, N, a.lin[kV], F.ctx.half);
  }
}

// Backward of block_forward: dx holds d(x_out) on entry and d(x_in) on return.
void block_backward(const Fwd &F, Layer &L, LayerActs &a, Buf &dx) {
  const ModelConfig &c = F.c;
  Backend &be = F.be;
  const int64_t N = F.ctx.N, H = c.hidden;
  const float s = c.branch_scale, alpha = c.residual_alpha;
  Buf dyb(be);  // s·(a branch output's gradient), only when s != 1
  if (s != 1.0f) dyb.resize_overwrite(N * H);
  if (c.parallel_residual) {
    Buf dh1(be, N * H, kOverwrite), dh2(be, N * H, kOverwrite), tmp(be, N * H, kOverwrite), dxin(be, N * H, kOverwrite);
    const float *dbr = dx.data();  // d(branch outputs) = s·d(x_out)
    if (s != 1.0f) {
      be.axpby(dyb.data(), s, dx.data(), 0.0f, dx.data(), N * H);
      dbr = dyb.data();
    }
    mlp_backward(F, L, a, L.norm2_w ? a.h2.data() : a.h1.data(), dbr, dh2.data());
    attention_branch_backward(F, L, a, dbr, dh1.data());
    if (L.norm2_w) {
      norm_backward(be, c, L.norm2_w, L.norm2_b, a.x_in.data(), a.mean2.data(), a.rstd2.data(), dh2.data(), tmp.data(), N);
      norm_backward(be, c, L.norm1_w, L.norm1_b, a.x_in.data(), a.mean1.data(), a.rstd1.data(), dh1.data(), dxin.data(), N);
      be.add(dx.data(), dx.data(), tmp.data(), dxin.data(), N * H);
    } else {
      be.add(dh1.data(), dh1.data(), dh2.data(), nullptr, N * H);
      norm_backward(be, c, L.norm1_w, L.norm1_b, a.x_in.data(), a.mean1.data(), a.rstd1.data(), dh1.data(), dxin.data(), N);
      be.add(dx.data(), dx.data(), dxin.data(), nullptr, N * H);
    }
    return;
  }
  // Sequential, with two N×H temporaries: g, the gradient of a norm's output, and t, of its input; d(x_mid) is built in
  // dx itself (d(x_out) is not needed once the MLP half is done).
  Buf g(be, N * H, kOverwrite), t(be, N * H, kOverwrite);
  // MLP half: d(ym) = s·dx; d(h2) += α·dx when the residual comes from the norm
  const float *dym = dx.data();
  if (s != 1.0f) {
    be.axpby(dyb.data(), s, dx.data(), 0.0f, dx.data(), N * H);
    dym = dyb.data();
  }
  mlp_backward(F, L, a, a.h2.data(), dym, g.data());
  if (c.residual_from_norm) be.axpby(g.data(), 1.0f, g.data(), alpha, dx.data(), N * H);
  norm_backward(be, c, L.norm2_w, L.norm2_b, a.x_mid.data(), a.mean2.data(), a.rstd2.data(), g.data(), t.data(), N);
  if (c.residual_from_norm) dx.copy_from(t);  // dx = d(x_mid)
  else be.add(dx.data(), dx.data(), t.data(), nullptr, N * H);
  // attention half
  const float *dy = dx.data();
  if (s != 1.0f) {
    be.axpby(dyb.data(), s, dx.data(), 0.0f, dx.data(), N * H);
    dy = dyb.data();
  }
  attention_branch_backward(F, L, a, dy, g.data());
  if (c.residual_from_norm) be.axpby(g.data(), 1.0f, g.data(), alpha, dx.data(), N * H);
  norm_backward(be, c, L.norm1_w, L.norm1_b, a.x_in.data(), a.mean1.data(), a.rstd1.data(), g.data(), t.data(), N);
  if (c.residual_from_norm) dx.copy_from(t);
  else be.add(dx.data(), dx.data(), t.data(), nullptr, N * H);
}

// ChatGLM-6B v1: per row, context length (index of the first bos = <sop>) and the [gMASK] (else [MASK]) index;
// HF's get_position_ids/get_masks raise without them.
llmt_status glm_row_info(const ModelConfig &c, const int32_t *ids, int64_t T, int64_t row, int64_t &ctx_len, int64_t &mask_pos) {
  ctx_len = mask_pos = -1;
  int64_t m = -1, g = -1;
  for (int64_t t = 0; t < T; ++t) {
    if (ctx_len < 0 && ids[t] == c.bos_id) ctx_len = t;
    if (g < 0 && ids[t] == c.gmask_id) g = t;
    if (m < 0 && ids[t] == c.mask_id) m = t;
  }
  mask_pos = g >= 0 ? g : m;
  if (ctx_len < 0 || mask_pos < 0) {
    return set_error(LLMT_ERR_BAD_INPUT, "ChatGLM-6B needs [gMASK] (id " + std::to_string(c.gmask_id) + ") or [MASK] and then <sop> (bos, id " +
                                             std::to_string(c.bos_id) + ") in every row (row " + std::to_string(row) +
                                             " lacks " + (mask_pos < 0 ? "the mask token" : "<sop>") +
                                             "); use the chatglm template, which appends them to the prompt");
  }
  return LLMT_OK;
}

// The trainable parameters of one stage of the backward, for RunOptions::grad_ready.
void push_trainable(std::vector<Param *> &v, Param *p) {
  if (p && p->trainable) v.push_back(p);
}
void push_linear(std::vector<Param *> &v, const Linear *L) {
  if (!L) return;
  push_trainable(v, L->W);
  push_trainable(v, L->b);
  if (L->lora.r) {
    push_trainable(v, L->lora.A);
    push_trainable(v, L->lora.B);
  }
}
void block_params(std::vector<Param *> &v, const Layer &L) {
  for (Param *p : {L.norm1_w, L.norm1_b, L.norm2_w, L.norm2_b}) push_trainable(v, p);
  for (const Linear *lin : {L.q, L.k, L.v, L.qkv, L.o, L.gate, L.up, L.down, L.fc1, L.fc2}) push_linear(v, lin);
}
}  // namespace

std::vector<std::pair<int64_t, std::vector<Param *>>> Model::grad_stages() const {
  std::vector<std::pair<int64_t, std::vector<Param *>>> out;
  const int64_t n = static_cast<int64_t>(layers.size());
  out.emplace_back(n, std::vector<Param *>());
  if (lm_head != embed) push_trainable(out.back().second, lm_head);  // a tied head also collects the embedding's gradient
  push_trainable(out.back().second, final_w);
  push_trainable(out.back().second, final_b);
  push_trainable(out.back().second, head_lora.A);
  push_trainable(out.back().second, head_lora.B);
  for (int64_t l = n - 1; l >= 0; --l) {
    out.emplace_back(l, std::vector<Param *>());
    block_params(out.back().second, layers[static_cast<size_t>(l)]);
  }
  out.emplace_back(-1, std::vector<Param *>());
  push_trainable(out.back().second, embed);
  push_trainable(out.back().second, embed_norm_w);
  push_trainable(out.back().second, embed_norm_b);
  push_trainable(out.back().second, embed_lora.A);
  push_trainable(out.back().second, embed_lora.B);
  return out;
}

// ---- forward / backward of a batch ---------------------------------------------------------------------------

// RunOptions::q4_layer_cache: −1 reads LLMT_Q4_LAYER_CACHE ("1": on; unset, "0" or anything else: off)
bool q4_layer_cache_on(const RunOptions &opt) {
  if (opt.q4_layer_cache >= 0) return opt.q4_layer_cache > 0;
  const char *e = std::getenv("LLMT_Q4_LAYER_CACHE");
  return e && std::strcmp(e, "1") == 0;
}

// One layer's 4-bit weights decoded to 16 bits for as long as this object lives (RunOptions::q4_layer_cache): each
// such Linear is the 16-bit weight it decodes to meanwhile (W->half_type, W->dev_half: the mixed-precision path of a
// bf16/fp16 model, cuBLAS on the whole weight), and gets its 4-bit weight back at the end, also when an op throws.
// t == 0: nothing to do.
class Q4LayerDecoded {
 public:
  Q4LayerDecoded(Backend &be, Layer &L, Half t) : be_(be) {
    if (int(t) == 0) return;
    try {
      for (Linear *lin : {L.q, L.k, L.v, L.qkv, L.o, L.gate, L.up, L.down, L.fc1, L.fc2}) {
        if (!lin || !lin->q4) continue;
        Saved sv{lin, lin->q4, lin->W->half_type, lin->W->dev_half, nullptr};
        sv.buf = static_cast<uint16_t *>(be_.alloc(sizeof(uint16_t) * static_cast<size_t>(std::max<int64_t>(lin->out * lin->in, 1))));
        saved_.push_back(sv);
        be_.q4_dequantize_half(sv.q4->view(), t, sv.buf, lin->out, lin->in);
        lin->W->half_type = static_cast<uint8_t>(t);
        lin->W->dev_half = sv.buf;
        lin->q4 = nullptr;
      }
    } catch (...) {  // (out of memory): the model as it was, then the error
      restore();
      throw;
    }
  }
  ~Q4LayerDecoded() { restore(); }
  Q4LayerDecoded(const Q4LayerDecoded &) = delete;
  Q4LayerDecoded &operator=(const Q4LayerDecoded &) = delete;

 private:
  void restore() {
    for (const Saved &sv : saved_) {
      sv.lin->q4 = sv.q4;
      sv.lin->W->half_type = sv.half_type;
      sv.lin->W->dev_half = sv.dev_half;
      be_.release(sv.buf);
    }
    saved_.clear();
  }
  struct Saved {
    Linear *lin;
    const Q4Weight *q4;
    uint8_t half_type;
    uint16_t *dev_half;
    uint16_t *buf;
  };
  Backend &be_;
  std::vector<Saved> saved_;
};

llmt_status Model::run(const Batch &batch, const RunOptions &opt, RunResult &out) {
  const ModelConfig &c = cfg_;
  const int64_t B = batch.B, T = batch.T, N = B * T, H = c.hidden, V = c.vocab;
  if (B <= 0 || T <= 0 || static_cast<int64_t>(batch.ids.size()) != N) {
    return set_error(LLMT_ERR_BAD_INPUT, "batch shape: " + std::to_string(batch.ids.size()) + " ids for B=" +
                                             std::to_string(B) + ", T=" + std::to_string(T));
  }
  if (!batch.labels.empty() && static_cast<int64_t>(batch.labels.size()) != N) {
    return set_error(LLMT_ERR_BAD_INPUT, "labels must have the same shape as input_ids");
  }
  for (int64_t n = 0; n < N; ++n) {
    if (batch.ids[n] < 0 || batch.ids[n] >= V) {
      return set_error(LLMT_ERR_BAD_INPUT, "token id " + std::to_string(batch.ids[n]) + " at position " +
                                               std::to_string(n % T) + " of row " + std::to_string(n / T) +
                                               " is outside the vocabulary (size " + std::to_string(V) + ")");
    }
    if (!batch.labels.empty() && batch.labels[n] != -100 && (batch.labels[n] < 0 || batch.labels[n] >= V)) {
      return set_error(LLMT_ERR_BAD_INPUT, "label " + std::to_string(batch.labels[n]) + " at position " +
                                               std::to_string(n % T) + " of row " + std::to_string(n / T) +
                                               " is neither -100 nor a token id below " + std::to_string(V));
    }
  }
  const bool bwd = opt.backward;
  const bool ckpt = bwd && opt.checkpointing;
  if (dirty_) to_device();
  if (bwd) impl_->dora.clear();  // a training step changes the adapter: generation computes DoRA's scales afresh
  Backend &be = *be_;
  Impl &im = *impl_;
  im.acts.resize(static_cast<size_t>(c.layers));
  for (LayerActs &a : im.acts) a.bind(&be);
  im.scratch.bind(&be);
  im.pos.resize(static_cast<size_t>(N));
  std::vector<int32_t> seg;  // per token: where its sample starts within the row (packed rows only)
  std::vector<int32_t> block, prefix;  // chatglm v1
  if (!batch.pos.empty()) {
    if (static_cast<int64_t>(batch.pos.size()) != N) return set_error(LLMT_ERR_BAD_INPUT, "position ids must have the same shape as input_ids");
    if (c.pos == PosKind::Rope2D) {
      return set_error(LLMT_ERR_UNSUPPORTED, "packed rows are not supported for ChatGLM-6B (its positions and prefix mask come from [gMASK]/<sop> per row); turn packing off");
    }
    im.pos = batch.pos;
    seg.resize(static_cast<size_t>(N));
    for (int64_t b = 0; b < B; ++b) {
      int32_t start = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int32_t p = batch.pos[b * T + t];
        if (p == 0) start = static_cast<int32_t>(t);
        else if (t == 0 || p != batch.pos[b * T + t - 1] + 1)
          return set_error(LLMT_ERR_BAD_INPUT, "position ids must count up by one within a sample and restart at 0 (row " + std::to_string(b) + ", position " + std::to_string(t) + ")");
        seg[b * T + t] = start;
      }
    }
  } else if (c.pos == PosKind::Rope2D) {
    block.resize(static_cast<size_t>(N));
    prefix.resize(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      int64_t ctx_len, mask_pos;
      llmt_status st = glm_row_info(c, batch.ids.data() + b * T, T, b, ctx_len, mask_pos);
      if (st) return st;
      prefix[b] = static_cast<int32_t>(ctx_len);
      for (int64_t t = 0; t < T; ++t) {
        im.pos[b * T + t] = static_cast<int32_t>(t < ctx_len ? t : mask_pos);
        block[b * T + t] = static_cast<int32_t>(t < ctx_len ? 0 : t - ctx_len + 1);
      }
    }
  } else {
    for (int64_t n = 0; n < N; ++n) im.pos[n] = static_cast<int32_t>(n % T);
  }
  // sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window; transformers' sliding-window causal mask):
  // query i sees keys i−window+1 … i — its sample's start, or that, whichever is later; rows no longer than the
  // window are unaffected
  std::vector<int32_t> seg_window;
  if (c.sliding_window > 0 && T > c.sliding_window) {
    seg_window.resize(static_cast<size_t>(N));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t from = std::max<int64_t>(seg.empty() ? 0 : seg[b * T + t], t - c.sliding_window + 1);
        seg_window[b * T + t] = static_cast<int32_t>(from);
      }
  }
  // targets: labels shifted left by one within each row (HF: shift_labels = labels[..., 1:])
  std::vector<int32_t> targets(static_cast<size_t>(N), -100);
  if (!batch.labels.empty())
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t)
        if (seg.empty() || batch.pos[b * T + t + 1] != 0) targets[b * T + t] = batch.labels[b * T + t + 1];
  // the host arrays the ops read, in backend memory once per call (token I/O)
  const std::vector<float> freqs = inv_freq(c);
  DevArray<int32_t> d_ids(be, batch.ids), d_pos(be, im.pos), d_block(be, block), d_seg(be, seg), d_prefix(be, prefix),
      d_targets(be, targets), d_seg_window(be, seg_window);
  DevArray<float> d_freqs(be, freqs), d_alibi(be, alibi_of(c), c.heads);
  Fwd F(c, be, Ctx{B, T, N, opt.training, opt.seed, &be});
  F.ctx.bwd = bwd;  // (DoRA's scales are cached for generation only: a forward here sees the weights as they are now)
  F.attn_half = precision_ == "bf16" ? int(Half::BF16) : precision_ == "fp16" ? int(Half::F16) : 0;
  F.ctx.half = F.attn_half;
  F.pos = d_pos.get();
  F.block = d_block.get();
  F.freqs = d_freqs.get();
  F.alibi = d_alibi.get();
  F.pos_scale = static_cast<float>(1.0 / c.rope_linear_factor);
  F.scale = c.attn_factor * c.attn_factor / std::sqrt(static_cast<float>(c.head_dim));  // (YaRN: scaled cos and sin)
  F.seg = d_seg.get();
  F.seg_window = d_seg_window.get();
  F.prefix = d_prefix.get();

  // ---- forward ----
  Buf x(be, N * H, kOverwrite), x_emb(be), emb_mean(be), emb_rstd(be), emb_u(be);
  embed_rows(be, *embed, d_ids.get(), x.data(), N, H);
  if (embed_lora.r) embed_lora_forward(be, embed_lora, d_ids.get(), x.data(), emb_u, N, H, V);
  if (opt.training && opt.neftune_alpha > 0) {
    // NEFTune (HF's neftune_post_forward_hook on the input embedding module): + U(−mag, mag), mag = alpha/sqrt(T·H); the
    // noise is additive, so the backward is unchanged (and a checkpointed block 0 recomputes from the noisy input)
    const float mag = static_cast<float>(opt.neftune_alpha / std::sqrt(static_cast<double>(T) * static_cast<double>(H)));
    be.add_uniform_noise(x.data(), N * H, mag, mix64(opt.seed ^ 0x4E4546546E756E65ull));
  }
  if (embed_norm_w) {  // bloom: LayerNorm on the embeddings
    x_emb.copy_from(x);
    emb_mean.resize(N);
    emb_rstd.resize(N);
    be.layernorm_forward(x_emb.data(), embed_norm_w->w(), embed_norm_b->w(), x.data(), emb_mean.data(),
                         emb_rstd.data(), N, H, static_cast<float>(c.norm_eps));
  }
  if (c.embed_scale != 1.0f) be.scale_inplace(x.data(), c.embed_scale, N * H);
  // checkpointed block inputs go to host memory (a device backend only: on the CPU they are host memory already)
  const bool offload = ckpt && opt.offload_checkpoints && !be.host_memory();
  if (offload) im.host_x.resize(static_cast<size_t>(c.layers));
  else im.host_x.clear();
  // Per layer, a backward without checkpointing keeps every activation (acts[l]); with checkpointing only the layer's
  // input (acts[l].x_in, or host memory when offloaded); a forward alone keeps nothing — each block runs in the one
  // scratch set. What an earlier call of another kind left per layer is given back first, so an evaluation between
  // training steps, or a forward before a checkpointed step, never holds a model's worth of activations beside it.
  const bool per_layer = bwd && !ckpt;
  if (!per_layer)
    for (LayerActs &a : im.acts) a.release(ckpt && !offload);
  else
    im.scratch.release(false);  // (a forward's or a checkpointed step's set: not used by this call)
  for (int64_t l = 0; l < c.layers; ++l) {
    LayerActs &a = im.acts[static_cast<size_t>(l)];
    if (ckpt && l == c.layers - 1) {
      a.x_in.free();  // the last block's backward reads the scratch set this forward leaves behind
    } else if (offload) {
      // no wait: the copy runs in stream order, and only the backward's upload (later on the same stream) reads it
      float *h = im.host_x[static_cast<size_t>(l)].get(be, N * H);
      be.download_async(h, x.data(), sizeof(float) * static_cast<size_t>(N * H));
    } else if (bwd) {
      a.x_in.copy_from(x);
    }
    LayerActs &work = per_layer ? a : im.scratch;
    if (!per_layer) work.x_in.copy_from(x);
    block_forward(F, layers[static_cast<size_t>(l)], l, work, x.data());
  }
  Buf hf(be, N * H, kOverwrite), fmean(be, N), frstd(be, N);
  norm_forward(be, c, final_w, final_b, x.data(), hf.data(), fmean.data(), frstd.data(), N);
  if (c.logit_scale != 1.0f) be.scale_inplace(hf.data(), c.logit_scale, N * H);

  // logits and loss in row chunks: the full [N, V] matrix is only materialised when asked for.
  Buf dhf(be);
  if (bwd) dhf.resize(N * H);
  if (opt.want_logits) out.logits.resize(static_cast<size_t>(N * V));
  out.loss_sum = 0.0;
  out.count = 0;
  // The loss sum and the counted rows accumulate in backend memory (cross_entropy_forward_acc) and come down once, at
  // the end of the call (loss_out): no host synchronisation per chunk. The host counts each chunk's targets itself
  // to skip the backward of chunks without any.
  struct LossAcc {
    double loss;
    int64_t count;
  };
  struct AccRelease {
    Backend &be;
    void *p;
    ~AccRelease() { be.release(p); }
  };
  LossAcc *d_acc = static_cast<LossAcc *>(be.alloc(sizeof(LossAcc)));
  AccRelease acc_release{be, d_acc};
  double *d_loss = reinterpret_cast<double *>(d_acc);
  int64_t *d_count = reinterpret_cast<int64_t *>(reinterpret_cast<char *>(d_acc) + offsetof(LossAcc, count));
  auto loss_out = [&]() -> llmt_status {
    LossAcc h{0.0, 0};
    be.download(&h, d_acc, sizeof h);
    out.loss_sum = h.loss;
    out.count = h.count;
    if (!std::isfinite(out.loss_sum)) {
      return set_error(LLMT_ERR_NAN, "the loss is not finite (" + std::to_string(out.loss_sum) +
                                         "); the weights or the learning rate may have diverged");
    }
    return LLMT_OK;
  };
  // (≤ 2²³ logits per chunk, one buffer: the gradient of the logits overwrites them; rows a multiple of 128 where that
  // allows: GEMM tiles are 64–128 rows, so a 32000-word vocabulary's 262 rows would compute 384 — 256 waste nothing.
  // Each chunk packs the head's V × H weight for its GEMMs again, so fewer, larger chunks cost less)
  int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 23) / std::max<int64_t>(V, 1)));
  if (chunk >= 128 && chunk < N) chunk -= chunk % 128;
  // the gradient stages of the hooks (grad_stages(): the head, blocks layers−1 … 0, the embeddings), in that order
  std::vector<std::pair<int64_t, std::vector<Param *>>> stages;
  if (bwd && (opt.grad_ready || opt.grad_bind)) stages = grad_stages();
  auto bind = [&](size_t i) {
    if (opt.grad_bind) opt.grad_bind(stages[i].first, stages[i].second);
  };
  auto ready = [&](size_t i) {
    if (opt.grad_ready) opt.grad_ready(stages[i].first, stages[i].second);
  };
  if (bwd) bind(0);  // the head's chunks below write lm_head's gradient
  Buf lg(be), lse(be), hu(be), hd(be);
  const bool head_drop = head_lora.r && opt.training && head_lora.dropout > 0;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    resize_ow(lg, rows * V);
    float *logits = lg.data();
    weight_nt(be, *lm_head, hf.data() + r0 * H, logits, rows, V, H, false);
    const uint64_t head_stream = mix64(opt.seed ^ 0x4C4D48454144ull ^ static_cast<uint64_t>(r0));  // the head's dropout mask
    if (head_lora.r) {
      resize_ow(hu, rows * head_lora.r);
      if (head_drop) resize_ow(hd, rows * H);
      head_lora_forward(be, head_lora, hf.data() + r0 * H, logits, hu.data(), head_drop ? hd.data() : nullptr, rows, V, H, head_stream);
    }
    if (opt.want_logits) be.download(out.logits.data() + r0 * V, logits, sizeof(float) * static_cast<size_t>(rows * V));
    resize(lse, rows);
    int64_t cnt = 0;
    for (int64_t r = r0; r < r0 + rows; ++r) cnt += targets[static_cast<size_t>(r)] >= 0;
    be.cross_entropy_forward_acc(logits, d_targets.get() + r0, lse.data(), rows, V, d_loss, d_count, r0 > 0);
    if (bwd && cnt > 0) {
      float *dlogits = logits;  // in place: each gradient reads only its own logit and its row's lse
      be.cross_entropy_backward(logits, d_targets.get() + r0, lse.data(), dlogits, rows, V, opt.grad_scale);
      weight_nn(be, *lm_head, dlogits, dhf.data() + r0 * H, rows, H, V, false);
      if (lm_head->trainable) be.matmul_tn(dlogits, hf.data() + r0 * H, lm_head->g(), V, H, rows, true);
      if (head_lora.r)
        head_lora_backward(be, head_lora, hf.data() + r0 * H, head_drop ? hd.data() : nullptr, hu.data(), dlogits, dhf.data() + r0 * H, rows, V, H,
                           head_stream);
    }
  }
  // without a backward the loss comes down now; with one, after it (the check then fails the call as before, the
  // gradients of a non-finite loss being no use either)
  if (!bwd) return loss_out();

  // ---- backward ----
  // gradient hooks: each stage's trainable parameters, bound before its first gradient and reported once complete
  if (c.logit_scale != 1.0f) be.scale_inplace(dhf.data(), c.logit_scale, N * H);
  Buf dx(be, N * H, kOverwrite);
  norm_backward(be, c, final_w, final_b, x.data(), fmean.data(), frstd.data(), dhf.data(), dx.data(), N);
  ready(0);
  const bool q4_cache = ckpt && F.ctx.half && !q4_weights.empty() && q4_layer_cache_on(opt);
  for (int64_t l = c.layers - 1; l >= 0; --l) {
    Layer &L = layers[static_cast<size_t>(l)];
    LayerActs *ap = &im.acts[static_cast<size_t>(l)];
    // (the last block is not recomputed: its backward alone decodes each weight once either way)
    Q4LayerDecoded decoded(be, L, q4_cache && l != c.layers - 1 ? Half(F.ctx.half) : Half(0));
    if (ckpt) {
      // the last block's activations are still in the scratch set from the forward: no recomputation
      if (l != c.layers - 1) {
        if (offload) im.scratch.x_in.upload_from(im.host_x[static_cast<size_t>(l)].data(), N * H);
        else im.scratch.x_in.copy_from(ap->x_in);
        block_forward(F, L, l, im.scratch, nullptr);
      }
      ap = &im.scratch;
    }
    const size_t stage = static_cast<size_t>(c.layers - l);
    bind(stage);
    block_backward(F, L, *ap, dx);
    ready(stage);
  }
  const size_t emb_stage = static_cast<size_t>(c.layers + 1);
  bind(emb_stage);
  if (c.embed_scale != 1.0f) be.scale_inplace(dx.data(), c.embed_scale, N * H);
  if (embed_norm_w && (embed->trainable || embed_norm_w->trainable || embed_norm_b->trainable || embed_lora.r)) {
    Buf tmp(be, N * H, kOverwrite);
    be.layernorm_backward(dx.data(), x_emb.data(), embed_norm_w->w(), emb_mean.data(), emb_rstd.data(), tmp.data(),
                          embed_norm_w->trainable ? embed_norm_w->g() : nullptr,
                          embed_norm_b->trainable ? embed_norm_b->g() : nullptr, N, H);
    dx.swap(tmp);
  }
  if (embed->trainable) be.embedding_backward(dx.data(), d_ids.get(), embed->g(), N, H, V);
  if (embed_lora.r) embed_lora_backward(be, embed_lora, d_ids.get(), dx.data(), emb_u, N, H, V);
  ready(emb_stage);
  return loss_out();
}

// ---- inference with a KV cache ----------------------------------------------------------------------------------

void Model::init_cache(KvCache &c, int64_t capacity) const {
  c.capacity = capacity;
  c.length = 0;
  c.glm_ctx = c.glm_mask_pos = -1;
  const size_t per = static_cast<size_t>(capacity * cfg_.kv_heads * cfg_.head_dim);
  c.k.clear();
  c.v.clear();
  c.dk.clear();
  c.dv.clear();
  if (be_->host_memory()) {
    c.k.assign(static_cast<size_t>(cfg_.layers), std::vector<float>(per));
    c.v.assign(static_cast<size_t>(cfg_.layers), std::vector<float>(per));
    return;
  }
  Backend *be = be_;  // in backend memory, released with the cache
  for (int64_t l = 0; l < cfg_.layers; ++l)
    for (auto *side : {&c.dk, &c.dv}) {
      float *p = static_cast<float *>(be->alloc(sizeof(float) * std::max<size_t>(per, 1)));
      be->fill(p, 0.0f, static_cast<int64_t>(per));
      side->emplace_back(p, [be](float *q) { be->release(q); });
    }
}

llmt_status Model::infer(KvCache &cache, const int32_t *ids, int64_t n, std::vector<float> &last_logits) {
  KvCache *c = &cache;
  return infer_batch(&c, &ids, &n, 1, last_logits);
}

llmt_status Model::infer_batch(KvCache *const *caches, const int32_t *const *ids, const int64_t *n, int64_t S,
                               std::vector<float> &last_logits) {
  const ModelConfig &c = cfg_;
  const int64_t H = c.hidden, V = c.vocab;
  if (S <= 0) return set_error(LLMT_ERR_BAD_INPUT, "infer: no sequences");
  int64_t N = 0;
  for (int64_t s = 0; s < S; ++s) {
    const KvCache &cache = *caches[s];
    if (n[s] <= 0) return set_error(LLMT_ERR_BAD_INPUT, "infer: no tokens");
    if (cache.length + n[s] > cache.capacity) {
      return set_error(LLMT_ERR_BAD_INPUT, "the sequence (" + std::to_string(cache.length + n[s]) + " tokens) is longer than the cache (" +
                                               std::to_string(cache.capacity) + "); lower max_new_tokens or the prompt length");
    }
    if (const int64_t ctx = context_limit(c); ctx > 0 && cache.length + n[s] > ctx)
      return set_error(LLMT_ERR_BAD_INPUT, "the sequence (" + std::to_string(cache.length + n[s]) + " tokens) is longer than the model's context (" +
                                               std::to_string(ctx) + " positions)");
    for (int64_t i = 0; i < n[s]; ++i)
      if (ids[s][i] < 0 || ids[s][i] >= V)
        return set_error(LLMT_ERR_BAD_INPUT, "token id " + std::to_string(ids[s][i]) + " is outside the vocabulary (size " + std::to_string(V) + ")");
    N += n[s];
  }
  if (dirty_) to_device();
  Backend &be = *be_;
  std::vector<int32_t> flat(static_cast<size_t>(N)), pos(static_cast<size_t>(N)), block;
  if (c.pos == PosKind::Rope2D) block.resize(static_cast<size_t>(N));
  Fwd F(c, be, Ctx{1, N, N, false, 0, &be});
  F.ctx.dora_cache = &impl_->dora;
  F.ctx.half = precision_ == "bf16" ? int(Half::BF16) : precision_ == "fp16" ? int(Half::F16) : 0;  // as run()
  for (int64_t s = 0, row = 0; s < S; row += n[s], ++s) {
    KvCache &cache = *caches[s];
    const int64_t p0 = cache.length;
    std::copy(ids[s], ids[s] + n[s], flat.begin() + row);
    for (int64_t i = 0; i < n[s]; ++i) pos[row + i] = static_cast<int32_t>(p0 + i);
    if (c.pos == PosKind::Rope2D) {
      // ChatGLM-6B: the prompt (first chunk) must hold [gMASK] and <sop>; later tokens keep position = mask
      // position and count block positions up (HF prepare_inputs_for_generation / get_position_ids)
      if (p0 == 0) {
        int64_t ctx_len, mask_pos;
        llmt_status st = glm_row_info(c, ids[s], n[s], s, ctx_len, mask_pos);
        if (st) return st;
        cache.glm_ctx = ctx_len;
        cache.glm_mask_pos = mask_pos;
      }
      for (int64_t i = 0; i < n[s]; ++i) {
        const int64_t t = p0 + i;
        pos[row + i] = static_cast<int32_t>(t < cache.glm_ctx ? t : cache.glm_mask_pos);
        block[row + i] = static_cast<int32_t>(t < cache.glm_ctx ? 0 : t - cache.glm_ctx + 1);
      }
    }
    F.cached.push_back({&cache, row, n[s], p0, c.pos == PosKind::Rope2D ? cache.glm_ctx : 0});
  }
  const std::vector<float> freqs = inv_freq(c);
  DevArray<int32_t> d_ids(be, flat), d_pos(be, pos), d_block(be, block);
  DevArray<float> d_freqs(be, freqs), d_alibi(be, alibi_of(c), c.heads);
  F.block = d_block.get();
  F.pos = d_pos.get();
  F.freqs = d_freqs.get();
  F.alibi = d_alibi.get();
  F.pos_scale = static_cast<float>(1.0 / c.rope_linear_factor);
  F.scale = c.attn_factor * c.attn_factor / std::sqrt(static_cast<float>(c.head_dim));  // (YaRN: scaled cos and sin)

  Buf x(be, N * H), tmp(be, N * H), mean(be, N),
      rstd(be, N);
  embed_rows(be, *embed, d_ids.get(), x.data(), N, H);
  if (embed_lora.r) {
    Buf u(be);
    embed_lora_forward(be, embed_lora, d_ids.get(), x.data(), u, N, H, V);
  }
  if (embed_norm_w) {
    be.layernorm_forward(x.data(), embed_norm_w->w(), embed_norm_b->w(), tmp.data(), mean.data(), rstd.data(),
                         N, H, static_cast<float>(c.norm_eps));
    x.swap(tmp);
  }
  if (c.embed_scale != 1.0f) be.scale_inplace(x.data(), c.embed_scale, N * H);
  LayerActs a;
  a.bind(&be);
  for (int64_t l = 0; l < c.layers; ++l) {
    a.x_in.copy_from(x);
    block_forward(F, layers[static_cast<size_t>(l)], l, a, x.data());
  }
  for (int64_t s = 0; s < S; ++s) caches[s]->length += n[s];
  // the last row of each sequence: final norm and the head on S rows
  Buf last(be, S * H), h(be, S * H);
  for (int64_t s = 0, row = 0; s < S; ++s) {
    row += n[s];
    be.copy(last.data() + s * H, x.data() + (row - 1) * H, H);
  }
  norm_forward(be, c, final_w, final_b, last.data(), h.data(), mean.data(), rstd.data(), S);
  if (c.logit_scale != 1.0f) be.scale_inplace(h.data(), c.logit_scale, S * H);
  last_logits.resize(static_cast<size_t>(S * V));
  Buf lg(be, S * V);
  weight_nt(be, *lm_head, h.data(), lg.data(), S, V, H, false);
  if (head_lora.r) {
    Buf u(be, S * head_lora.r, kOverwrite);
    head_lora_forward(be, head_lora, h.data(), lg.data(), u.data(), nullptr, S, V, H, 0);
  }
  be.download(last_logits.data(), lg.data(), sizeof(float) * last_logits.size());  // the sampler reads them on the host
  for (float z : last_logits)
    if (!std::isfinite(z)) return set_error(LLMT_ERR_NAN, "the model produced non-finite logits");
  return LLMT_OK;
}

}  // namespace llmt
