// quant.cpp — the model-level QLoRA objects of quant.hpp, the bnb 4-bit checkpoint format (writing a folder,
// reading its weights back as stored), and the Backend defaults for 4-bit ops.
#include "quant.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <vector>
#include <algorithm>

#include "json.hpp"
#include "safetensors.hpp"

#include "backend.hpp"
#include "family.hpp"
#include "status.hpp"

namespace llmt {

llmt_status make_directories(const std::string &dir);  // adapter.cpp

void Backend::matmul_nt_q4(const float *, const cpu::Q4View &, float *, int64_t, int64_t, int64_t, bool) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 4-bit matmul");
}
void Backend::matmul_nn_q4(const float *, const cpu::Q4View &, float *, int64_t, int64_t, int64_t, bool) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 4-bit matmul");
}

void Backend::q4_dequantize_half(const cpu::Q4View &W, Half t, uint16_t *out, int64_t N, int64_t K) {
  if (!host_memory()) throw std::logic_error(std::string("the ") + name() + " backend has no 4-bit decode");
  if (W.n != N * K)
    throw std::invalid_argument("q4_dequantize_half: the 4-bit weight has " + std::to_string(W.n) + " elements, not " +
                                std::to_string(N) + "×" + std::to_string(K));
  std::vector<float> f(static_cast<size_t>(std::min<int64_t>(W.n, int64_t(1) << 16)));
  for (int64_t b = 0; b < W.n; b += static_cast<int64_t>(f.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(f.size()), W.n - b);
    cpu::q4_dequantize_half(W, t, b, n, f.data());  // already rounded to t: the conversion below is exact
    for (int64_t i = 0; i < n; ++i) out[b + i] = to_half(f[static_cast<size_t>(i)], int(t));
  }
}

void Backend::matmul_nt_half(const float *, const uint16_t *, Half, float *, int64_t, int64_t, int64_t, bool) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 16-bit-weight matmul");
}
void Backend::matmul_nn_half(const float *, const uint16_t *, Half, float *, int64_t, int64_t, int64_t, bool) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 16-bit-weight matmul");
}
void Backend::embedding_forward_half(const uint16_t *, Half, const int32_t *, float *, int64_t, int64_t) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 16-bit embedding");
}

llmt_status parse_quant_spec(const std::string &s, QuantSpec &out) {
  out = QuantSpec();
  if (s.empty() || s == "none") return LLMT_OK;
  if (s[0] == '{') {  // a job's object form, {"type": "nf4", "double_quant": false}, as text
    Json j;
    std::string err;
    if (!Json::parse(s, j, err) || !j.is_object())
      return set_error(LLMT_ERR_BAD_INPUT, "quantization " + s + ": not a JSON object (" + err + ")");
    for (const auto &kv : j.members())
      if (kv.first != "type" && kv.first != "double_quant")
        return set_error(LLMT_ERR_BAD_INPUT, "quantization: unknown key \"" + kv.first + "\" (known: type, double_quant)");
    if (!j.get("type").is_null() && !j.get("type").is_string()) return set_error(LLMT_ERR_BAD_INPUT, "quantization.type must be \"nf4\" or \"fp4\"");
    if (!j.get("double_quant").is_null() && !j.get("double_quant").is_bool()) return set_error(LLMT_ERR_BAD_INPUT, "quantization.double_quant must be true or false");
    const std::string t = j.get_string("type", "nf4");
    if (t != "nf4" && t != "fp4") return set_error(LLMT_ERR_BAD_INPUT, "quantization.type must be \"nf4\" or \"fp4\" (got \"" + t + "\")");
    out.enabled = true;
    out.type = t == "nf4" ? cpu::Q4Type::NF4 : cpu::Q4Type::FP4;
    out.double_quant = j.get_bool("double_quant", true);
    return LLMT_OK;
  }
  if (s == "nf4" || s == "fp4") {
    out.enabled = true;
    out.type = s == "nf4" ? cpu::Q4Type::NF4 : cpu::Q4Type::FP4;
    return LLMT_OK;
  }
  return set_error(LLMT_ERR_BAD_INPUT, "quantization must be \"nf4\", \"fp4\" or \"none\" (got \"" + s + "\")");
}

const char *quant_name(const QuantSpec &q) {
  if (!q.enabled) return "none";
  return q.type == cpu::Q4Type::NF4 ? "nf4" : "fp4";
}

size_t Q4Weight::bytes() const {
  return packed.size() + absmax.size() * sizeof(float) + qabsmax.size() + absmax2.size() * sizeof(float);
}

cpu::Q4View Q4Weight::view() const {
  cpu::Q4View v;
  v.type = type;
  v.n = numel();
  const bool dev = dev_packed != nullptr;
  v.packed = dev ? dev_packed : packed.data();
  if (!nested()) {
    v.absmax = dev ? dev_absmax : absmax.data();
  } else {
    v.qabsmax = dev ? dev_qabsmax : qabsmax.data();
    v.absmax2 = dev ? dev_absmax2 : absmax2.data();
    v.code2 = dev ? dev_code2 : cpu::dynamic_map();
    v.offset = offset;
  }
  return v;
}

llmt_status non_finite_weight_error(const std::string &tensor, const std::string &file, const std::vector<int64_t> &shape,
                                    int64_t flat_index, float value) {
  // the element as [row, col] (a weight is a matrix here)
  std::string at;
  int64_t rest = flat_index;
  std::vector<int64_t> idx(shape.size(), 0);
  for (size_t d = shape.size(); d-- > 0;) {
    const int64_t n = shape[d] > 0 ? shape[d] : 1;
    idx[d] = rest % n;
    rest /= n;
  }
  for (size_t d = 0; d < idx.size(); ++d) at += (d ? ", " : "") + std::to_string(idx[d]);
  const std::string v = std::isnan(value) ? "NaN" : value > 0 ? "inf" : "-inf";
  return set_error(LLMT_ERR_BAD_INPUT, "tensor '" + tensor + "' in " + file + " holds " + v + " (element [" + at +
                                           "]): the model file is damaged (a broken download or a diverged save); "
                                           "re-download or re-export the model — 4-bit quantization would hide it");
}

int64_t quantize_weight(const float *w, int64_t rows, int64_t cols, const QuantSpec &spec, Q4Weight &out) {
  out = Q4Weight();
  out.type = spec.type;
  out.rows = rows;
  out.cols = cols;
  const int64_t n = rows * cols, nb = (n + cpu::kQ4Block - 1) / cpu::kQ4Block;
  out.packed.assign(static_cast<size_t>((n + 1) / 2), 0);
  out.absmax.assign(static_cast<size_t>(nb), 0.0f);
  const int64_t bad = cpu::q4_quantize(w, n, spec.type, out.packed.data(), out.absmax.data());
  if (spec.double_quant) {
    out.qabsmax.assign(static_cast<size_t>(nb), 0);
    out.absmax2.assign(static_cast<size_t>((nb + cpu::kQ4Block2 - 1) / cpu::kQ4Block2), 0.0f);
    cpu::q4_double_quantize(out.absmax.data(), nb, out.qabsmax.data(), out.absmax2.data(), &out.offset);
    std::vector<float>().swap(out.absmax);
  }
  return bad;
}

std::vector<float> dequantize_weight(const Q4Weight &q) {
  std::vector<float> out(static_cast<size_t>(q.numel()));
  cpu::q4_dequantize(q.view(), 0, q.numel(), out.data());
  return out;
}

static const char *torch_dtype(DType t) {
  return t == DType::BF16 ? "bfloat16" : t == DType::F16 ? "float16" : t == DType::F64 ? "float64" : "float32";
}

namespace {

// One weight in transformers' bnb 4-bit layout, owning what the written tensors point to.
struct Q4Item {
  Q4Weight q;
  std::vector<uint8_t> state;  // the quant_state JSON bytes
  std::vector<float> deq;
};

const char *qt_name(cpu::Q4Type t) { return t == cpu::Q4Type::NF4 ? "nf4" : "fp4"; }

// Quantizes x (the tensor `name` of `shape`, originally `dtype`, read from `file`) into `item` and appends its
// tensors to `t`. A NaN/inf element is refused by name (the 4-bit codes would turn it into finite values).
llmt_status add_q4_tensors(const std::string &name, const std::string &file, const std::vector<int64_t> &shape, DType dtype,
                           const float *x, const QuantSpec &spec, bool dequantized, Q4Item &m, std::vector<TensorToWrite> &t) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const int64_t bad = quantize_weight(x, n, 1, spec, m.q);  // flat: the layout does not depend on the shape
  if (bad >= 0) return non_finite_weight_error(name, file, shape, bad, x[bad]);
  const int64_t nb = (n + cpu::kQ4Block - 1) / cpu::kQ4Block;
  // the keys in bitsandbytes' QuantState.as_dict order
  Json js = Json::object();
  js.set("quant_type", Json::string(qt_name(spec.type)));
  js.set("blocksize", Json::integer(cpu::kQ4Block));
  js.set("dtype", Json::string(torch_dtype(dtype)));
  Json shp = Json::array();
  for (int64_t d : shape) shp.push(Json::integer(d));
  js.set("shape", shp);
  if (spec.double_quant) {
    js.set("nested_blocksize", Json::integer(cpu::kQ4Block2));
    js.set("nested_dtype", Json::string("float32"));
    js.set("nested_offset", Json::number(m.q.offset));
  }
  const std::string text = js.dump();
  m.state.assign(text.begin(), text.end());
  if (dequantized) m.deq = dequantize_weight(m.q);
  const char *qt = qt_name(spec.type);
  t.push_back({name, DType::U8, {static_cast<int64_t>(m.q.packed.size()), 1}, m.q.packed.data()});
  if (spec.double_quant) {
    t.push_back({name + ".absmax", DType::U8, {nb}, m.q.qabsmax.data()});
    t.push_back({name + ".nested_absmax", DType::F32, {static_cast<int64_t>(m.q.absmax2.size())}, m.q.absmax2.data()});
    t.push_back({name + ".nested_quant_map", DType::F32, {256}, cpu::dynamic_map()});
  } else {
    t.push_back({name + ".absmax", DType::F32, {nb}, m.q.absmax.data()});
  }
  t.push_back({name + ".quant_map", DType::F32, {16}, cpu::q4_code(spec.type)});
  t.push_back({name + ".quant_state.bitsandbytes__" + qt, DType::U8, {static_cast<int64_t>(m.state.size())}, m.state.data()});
  if (dequantized) t.push_back({name + ".dequantized", DType::F32, shape, m.deq.data()});
  return LLMT_OK;
}

bool ends_with(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The quant_state tensor of a stored 4-bit weight (either type), or null.
const TensorInfo *find_state(const WeightSet &ws, const std::string &name, std::string *type = nullptr) {
  for (const char *qt : {"nf4", "fp4"}) {
    if (const TensorInfo *t = ws.find(name + ".quant_state.bitsandbytes__" + qt)) {
      if (type) *type = qt;
      return t;
    }
  }
  return nullptr;
}

bool parse_state(const TensorInfo &t, Json &out, std::string &err) {
  if (t.dtype != DType::U8) {
    err = "is not uint8";
    return false;
  }
  return Json::parse(std::string(reinterpret_cast<const char *>(t.data), t.nbytes), out, err);
}

// The names of the weights Model::load quantizes (the block linears), as model.cpp's add_linear builds them.
std::vector<std::string> block_linear_weights(const ModelConfig &c) {
  const FamilyRow &f = *c.family;
  std::vector<std::string> out;
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string pre = layer_name(f.layer, l) + ".";
    std::vector<const char *> roles;
    if (c.qkv_layout == QkvLayout::Separate)
      roles = {f.q, f.k, f.v};
    else
      roles = {f.qkv};
    roles.push_back(f.o);
    if (c.mlp == MlpKind::SwiGLU) {
      roles.insert(roles.end(), {f.gate, f.up, f.down});
    } else {
      roles.insert(roles.end(), {f.fc1, f.fc2});
    }
    for (const char *r : roles) out.push_back(pre + r + ".weight");
  }
  return out;
}

}  // namespace

llmt_status quantize_safetensors(const std::string &in, const std::string &out, const QuantSpec &spec, bool dequantized) {
  llmt_status st;
  auto f = SafetensorsFile::open(in, st);
  if (!f) return st;
  std::vector<std::unique_ptr<Q4Item>> items;
  std::vector<TensorToWrite> t;
  for (const TensorInfo &ti : f->tensors()) {
    if (ti.dtype != DType::F32 && ti.dtype != DType::F16 && ti.dtype != DType::BF16) continue;
    std::vector<float> x(static_cast<size_t>(ti.numel()));
    if ((st = f->read_f32(ti, x.data()))) return st;
    items.push_back(std::make_unique<Q4Item>());
    if ((st = add_q4_tensors(ti.name, in, ti.shape, ti.dtype, x.data(), spec, dequantized, *items.back(), t))) return st;
  }
  return write_safetensors(out, t, {{"format", "pt"}});
}

// ---- pre-quantized folders -------------------------------------------------------------------------------

llmt_status folder_quant_spec(const Json &config, const std::string &where, QuantSpec &out) {
  out = QuantSpec();
  const Json &q = config.get("quantization_config");
  if (q.is_null()) return LLMT_OK;
  if (!q.is_object()) return set_error(LLMT_ERR_BAD_INPUT, where + ": quantization_config must be an object");
  const std::string method = q.get_string("quant_method", "bitsandbytes");
  if (method != "bitsandbytes")
    return set_error(LLMT_ERR_UNSUPPORTED, where + ": the model is quantized with \"" + method +
                                               "\"; only bitsandbytes 4-bit (nf4/fp4) checkpoints load — use the full-precision model");
  if (q.get_bool("load_in_8bit", q.get_bool("_load_in_8bit", false)))
    return set_error(LLMT_ERR_UNSUPPORTED, where + ": bitsandbytes 8-bit checkpoints are not supported; use the full-precision model "
                                               "(with --quantization nf4 for QLoRA)");
  if (!q.get_bool("load_in_4bit", q.get_bool("_load_in_4bit", false))) return LLMT_OK;
  const std::string storage = q.get_string("bnb_4bit_quant_storage", "uint8");
  if (storage != "uint8")
    return set_error(LLMT_ERR_UNSUPPORTED, where + ": bnb_4bit_quant_storage \"" + storage + "\" is not supported (only uint8)");
  llmt_status st = parse_quant_spec(q.get_string("bnb_4bit_quant_type", "fp4"), out);  // transformers' default is fp4
  if (st || !out.enabled) {
    out = QuantSpec();
    return set_error(LLMT_ERR_BAD_INPUT, where + ": quantization_config.bnb_4bit_quant_type must be \"nf4\" or \"fp4\"");
  }
  out.double_quant = q.get_bool("bnb_4bit_use_double_quant", false);
  return LLMT_OK;
}

llmt_status stored_quant_spec(const std::string &dir, QuantSpec &out) {
  out = QuantSpec();
  std::string text, err;
  Json cj;
  if (read_text_file(dir + "/config.json", text) != LLMT_OK || !Json::parse(text, cj, err)) {
    clear_error();
    return LLMT_OK;
  }
  return folder_quant_spec(cj, dir + "/config.json", out);
}

Json bnb_quantization_config(const QuantSpec &spec) {
  // BitsAndBytesConfig.to_dict() of transformers 4.45: __dict__ in __init__ order, then the two properties
  Json q = Json::object();
  q.set("quant_method", Json::string("bitsandbytes"));
  q.set("_load_in_8bit", Json::boolean(false));
  q.set("_load_in_4bit", Json::boolean(true));
  q.set("llm_int8_threshold", Json::number(6.0));
  q.set("llm_int8_skip_modules", Json());
  q.set("llm_int8_enable_fp32_cpu_offload", Json::boolean(false));
  q.set("llm_int8_has_fp16_weight", Json::boolean(false));
  q.set("bnb_4bit_quant_type", Json::string(qt_name(spec.type)));
  q.set("bnb_4bit_use_double_quant", Json::boolean(spec.double_quant));
  q.set("bnb_4bit_compute_dtype", Json::string("float32"));
  q.set("bnb_4bit_quant_storage", Json::string("uint8"));
  q.set("load_in_4bit", Json::boolean(true));
  q.set("load_in_8bit", Json::boolean(false));
  return q;
}

bool is_q4_state_tensor(const std::string &name) {
  return ends_with(name, ".absmax") || ends_with(name, ".quant_map") || ends_with(name, ".nested_absmax") ||
         ends_with(name, ".nested_quant_map") || ends_with(name, ".quant_state.bitsandbytes__nf4") ||
         ends_with(name, ".quant_state.bitsandbytes__fp4");
}

bool stored_q4_info(const WeightSet &ws, const std::string &name, int64_t &numel, std::string &dtype) {
  const TensorInfo *s = find_state(ws, name);
  Json js;
  std::string err;
  if (!s || !parse_state(*s, js, err) || !js.get("shape").is_array()) return false;
  numel = 1;
  for (const Json &d : js.get("shape").items()) numel *= d.as_int();
  dtype = js.get_string("dtype", "float32");
  return true;
}

llmt_status read_q4_weight(const WeightSet &ws, const std::string &name, const std::vector<int64_t> &shape,
                           const QuantSpec &spec, Q4Weight &out, std::vector<std::string> &used) {
  auto bad = [&](const std::string &what) {
    return set_error(LLMT_ERR_BAD_INPUT, "4-bit weight '" + name + "' in " + ws.file_of(name) + ": " + what +
                                             " (re-create the folder with `llmt-engine quantize`)");
  };
  out = Q4Weight();
  out.type = spec.type;
  out.rows = shape.at(0);
  out.cols = shape.at(1);
  const int64_t n = out.numel(), nb = (n + cpu::kQ4Block - 1) / cpu::kQ4Block;
  std::string qt;
  const TensorInfo *s = find_state(ws, name, &qt);
  if (!s) return bad("no quant_state.bitsandbytes__nf4/fp4 tensor next to it: the folder is not a bnb 4-bit checkpoint");
  if (qt != qt_name(spec.type)) return bad("stored as " + qt + " but config.json's bnb_4bit_quant_type says " + qt_name(spec.type));
  Json js;
  std::string err;
  if (!parse_state(*s, js, err)) return bad("quant_state " + err);
  std::vector<int64_t> sshape;
  for (const Json &d : js.get("shape").items()) sshape.push_back(d.as_int());
  if (sshape != shape) return bad("quant_state shape does not match config.json's");
  if (js.get_string("quant_type") != qt || js.get_int("blocksize", 0) != cpu::kQ4Block)
    return bad("quant_state must say quant_type " + qt + ", blocksize 64");
  const bool nested = js.has("nested_offset");
  if (nested && (js.get_int("nested_blocksize", 0) != cpu::kQ4Block2 || js.get_string("nested_dtype") != "float32" ||
                 !js.get("nested_offset").is_number()))
    return bad("quant_state must say nested_blocksize 256, nested_dtype float32 and a numeric nested_offset");
  auto tensor = [&](const std::string &suffix, DType dt, int64_t count, const TensorInfo *&t) -> bool {
    t = ws.find(name + suffix);
    if (!t || t->dtype != dt || t->numel() != count) return false;
    used.push_back(name + suffix);
    return true;
  };
  const TensorInfo *packed = ws.find(name), *absmax = nullptr, *qmap = nullptr, *absmax2 = nullptr, *qmap2 = nullptr;
  if (!packed || packed->dtype != DType::U8 || packed->numel() != (n + 1) / 2)
    return bad("expected uint8 with " + std::to_string((n + 1) / 2) + " elements (bnb_4bit_quant_storage uint8)");
  used.push_back(name);
  used.push_back(s->name);
  if (!tensor(".quant_map", DType::F32, 16, qmap) || std::memcmp(qmap->data, cpu::q4_code(spec.type), 16 * sizeof(float)) != 0)
    return bad("quant_map must be bitsandbytes' standard " + qt + " code (float32[16])");
  out.packed.assign(packed->data, packed->data + packed->nbytes);
  if (!nested) {
    if (!tensor(".absmax", DType::F32, nb, absmax)) return bad("absmax must be float32[" + std::to_string(nb) + "]");
    out.absmax.resize(static_cast<size_t>(nb));
    std::memcpy(out.absmax.data(), absmax->data, absmax->nbytes);
    return LLMT_OK;
  }
  const int64_t nb2 = (nb + cpu::kQ4Block2 - 1) / cpu::kQ4Block2;
  if (!tensor(".absmax", DType::U8, nb, absmax)) return bad("absmax must be uint8[" + std::to_string(nb) + "] (double quantization)");
  if (!tensor(".nested_absmax", DType::F32, nb2, absmax2)) return bad("nested_absmax must be float32[" + std::to_string(nb2) + "]");
  if (!tensor(".nested_quant_map", DType::F32, 256, qmap2) || std::memcmp(qmap2->data, cpu::dynamic_map(), 256 * sizeof(float)) != 0)
    return bad("nested_quant_map must be bitsandbytes' create_dynamic_map() (float32[256])");
  out.qabsmax.assign(absmax->data, absmax->data + absmax->nbytes);
  out.absmax2.resize(static_cast<size_t>(nb2));
  std::memcpy(out.absmax2.data(), absmax2->data, absmax2->nbytes);
  out.offset = static_cast<float>(js.get("nested_offset").as_double());
  return LLMT_OK;
}

static llmt_status quantize_model_dir_impl(const std::string &in_dir, const std::string &out_dir, const QuantSpec &spec);

// A failed quantization leaves no folder of its own behind (one that existed before stays, with what it held).
llmt_status quantize_model_dir(const std::string &in_dir, const std::string &out_dir, const QuantSpec &spec) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool existed = fs::exists(out_dir, ec);
  const llmt_status st = quantize_model_dir_impl(in_dir, out_dir, spec);
  if (st && !existed && fs::is_directory(out_dir, ec) && fs::is_empty(out_dir, ec)) fs::remove(out_dir, ec);
  return st;
}

static llmt_status quantize_model_dir_impl(const std::string &in_dir, const std::string &out_dir, const QuantSpec &spec) {
  namespace fs = std::filesystem;
  if (!spec.enabled) return set_error(LLMT_ERR_BAD_INPUT, "quantize: the type must be \"nf4\" or \"fp4\"");
  std::error_code ec;
  if (fs::equivalent(in_dir, out_dir, ec))
    return set_error(LLMT_ERR_BAD_INPUT, "quantize: --out must be a new folder, not the model's own (" + out_dir + ")");
  std::string text;
  llmt_status st = read_model_config(in_dir, text);
  if (st) return st;
  Json cj;
  std::string err;
  if (!Json::parse(text, cj, err)) return set_error(LLMT_ERR_BAD_INPUT, in_dir + "/config.json is not valid JSON: " + err);
  QuantSpec stored;
  if ((st = folder_quant_spec(cj, in_dir + "/config.json", stored))) return st;
  if (stored.enabled) return set_error(LLMT_ERR_BAD_INPUT, "quantize: " + in_dir + " is already a 4-bit checkpoint");
  ModelConfig c;
  if ((st = parse_config(cj, in_dir + "/config.json", c))) return st;
  auto ws = WeightSet::open_dir(in_dir, st);
  if (!ws) return st;
  std::set<std::string> linear;
  const std::string bare = c.family->bare_prefix ? c.family->bare_prefix : "";
  for (const std::string &n : block_linear_weights(c)) {
    if (ws->find(n) || bare.empty() || n.compare(0, bare.size(), bare) != 0)
      linear.insert(n);
    else
      linear.insert(n.substr(bare.size()));
  }
  for (const char *w : {"model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"})
    if (fs::exists(fs::path(out_dir) / w, ec))
      return set_error(LLMT_ERR_BAD_INPUT, "quantize: " + out_dir + " already holds other weights (" + w + "); choose an empty folder");
  if ((st = make_directories(out_dir))) return st;

  std::vector<std::unique_ptr<Q4Item>> items;
  std::vector<TensorToWrite> t;
  std::vector<float> x;
  int quantized = 0;
  for (const std::string &name : ws->names()) {
    const TensorInfo *ti = ws->find(name);
    if (!linear.count(name)) {  // unchanged, straight from the (memory-mapped) input
      t.push_back({name, ti->dtype, ti->shape, ti->data});
      continue;
    }
    if (ti->shape.size() != 2) return set_error(LLMT_ERR_BAD_INPUT, "quantize: '" + name + "' is not a matrix");
    x.resize(static_cast<size_t>(ti->numel()));
    if ((st = ws->read_f32(name, x.data()))) return st;
    items.push_back(std::make_unique<Q4Item>());
    if ((st = add_q4_tensors(name, ws->file_of(name), ti->shape, ti->dtype, x.data(), spec, false, *items.back(), t))) return st;
    ++quantized;
  }
  std::vector<float>().swap(x);
  if (quantized != static_cast<int>(linear.size()))
    return set_error(LLMT_ERR_BAD_INPUT, "quantize: " + in_dir + " lacks some of the block linears of a " + c.model_type + " model");
  if ((st = write_safetensors(out_dir + "/model.safetensors", t, {{"format", "pt"}}))) return st;
  cj.set("quantization_config", bnb_quantization_config(spec));
  std::string config = cj.dump(2);
  // BitsAndBytesConfig insists that llm_int8_threshold is a Python float: write 6.0, not our integral "6"
  const std::string thr = "\"llm_int8_threshold\": 6";
  const size_t at = config.find(thr);
  if (at != std::string::npos && config[at + thr.size()] != '.') config.insert(at + thr.size(), ".0");
  if ((st = write_text_file_atomic(out_dir + "/config.json", config + "\n"))) return st;
  // tokenizer, generation config, …: everything but the weights and config.json
  for (const auto &e : fs::directory_iterator(in_dir, ec)) {
    const std::string fn = e.path().filename().string();
    if (!e.is_regular_file() || fn == "config.json" || ends_with(fn, ".safetensors") || ends_with(fn, ".bin") ||
        ends_with(fn, ".index.json") || ends_with(fn, ".pt") || ends_with(fn, ".pth"))
      continue;
    fs::copy_file(e.path(), fs::path(out_dir) / fn, fs::copy_options::overwrite_existing, ec);
    if (ec) return set_error(LLMT_ERR_IO, "quantize: could not copy " + e.path().string() + ": " + ec.message());
  }
  if (ec) return set_error(LLMT_ERR_IO, "quantize: could not list " + in_dir + ": " + ec.message());
  return LLMT_OK;
}

}  // namespace llmt
