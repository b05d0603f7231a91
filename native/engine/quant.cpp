// quant.cpp — the model-level QLoRA objects of quant.hpp, and the Backend defaults for 4-bit ops.
#include "quant.hpp"

#include <map>
#include <memory>
#include <stdexcept>

#include "json.hpp"
#include "safetensors.hpp"

#include "backend.hpp"
#include "status.hpp"

namespace llmt {

void Backend::matmul_nt_q4(const float *, const cpu::Q4View &, float *, int64_t, int64_t, int64_t, bool) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 4-bit matmul");
}
void Backend::matmul_nn_q4(const float *, const cpu::Q4View &, float *, int64_t, int64_t, int64_t, bool) {
  throw std::logic_error(std::string("the ") + name() + " backend has no 4-bit matmul");
}

llmt_status parse_quant_spec(const std::string &s, QuantSpec &out) {
  out = QuantSpec();
  if (s.empty() || s == "none") return LLMT_OK;
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
  v.packed = packed.data();
  if (qabsmax.empty()) {
    v.absmax = absmax.data();
  } else {
    v.qabsmax = qabsmax.data();
    v.absmax2 = absmax2.data();
    v.code2 = cpu::dynamic_map();
    v.offset = offset;
  }
  return v;
}

void quantize_weight(const float *w, int64_t rows, int64_t cols, const QuantSpec &spec, Q4Weight &out) {
  out = Q4Weight();
  out.type = spec.type;
  out.rows = rows;
  out.cols = cols;
  const int64_t n = rows * cols, nb = (n + cpu::kQ4Block - 1) / cpu::kQ4Block;
  out.packed.assign(static_cast<size_t>((n + 1) / 2), 0);
  out.absmax.assign(static_cast<size_t>(nb), 0.0f);
  cpu::q4_quantize(w, n, spec.type, out.packed.data(), out.absmax.data());
  if (spec.double_quant) {
    out.qabsmax.assign(static_cast<size_t>(nb), 0);
    out.absmax2.assign(static_cast<size_t>((nb + cpu::kQ4Block2 - 1) / cpu::kQ4Block2), 0.0f);
    cpu::q4_double_quantize(out.absmax.data(), nb, out.qabsmax.data(), out.absmax2.data(), &out.offset);
    std::vector<float>().swap(out.absmax);
  }
}

std::vector<float> dequantize_weight(const Q4Weight &q) {
  std::vector<float> out(static_cast<size_t>(q.numel()));
  cpu::q4_dequantize(q.view(), 0, q.numel(), out.data());
  return out;
}

static const char *torch_dtype(DType t) {
  return t == DType::BF16 ? "bfloat16" : t == DType::F16 ? "float16" : t == DType::F64 ? "float64" : "float32";
}

llmt_status quantize_safetensors(const std::string &in, const std::string &out, const QuantSpec &spec, bool dequantized) {
  llmt_status st;
  auto f = SafetensorsFile::open(in, st);
  if (!f) return st;
  struct Item {
    Q4Weight q;
    std::vector<int64_t> shape;
    std::string dtype;
    std::vector<uint8_t> state;
    std::vector<float> deq;
    int64_t nb = 0;
  };
  std::vector<std::unique_ptr<Item>> items;
  std::vector<TensorToWrite> t;
  const char *qt = spec.type == cpu::Q4Type::NF4 ? "nf4" : "fp4";
  for (const TensorInfo &ti : f->tensors()) {
    if (ti.dtype != DType::F32 && ti.dtype != DType::F16 && ti.dtype != DType::BF16) continue;
    auto it = std::make_unique<Item>();
    std::vector<float> x(static_cast<size_t>(ti.numel()));
    if ((st = f->read_f32(ti, x.data()))) return st;
    quantize_weight(x.data(), 1, ti.numel(), spec, it->q);
    it->q.rows = ti.numel();  // flat: the layout does not depend on the shape
    it->q.cols = 1;
    it->shape = ti.shape;
    it->nb = (ti.numel() + cpu::kQ4Block - 1) / cpu::kQ4Block;
    Json js = Json::object();
    js.set("quant_type", Json::string(qt));
    js.set("blocksize", Json::integer(cpu::kQ4Block));
    js.set("dtype", Json::string(torch_dtype(ti.dtype)));
    Json shp = Json::array();
    for (int64_t d : ti.shape) shp.push(Json::integer(d));
    js.set("shape", shp);
    if (spec.double_quant) {
      js.set("nested_blocksize", Json::integer(cpu::kQ4Block2));
      js.set("nested_offset", Json::number(it->q.offset));
      js.set("nested_dtype", Json::string("float32"));
    }
    const std::string text = js.dump();
    it->state.assign(text.begin(), text.end());
    if (dequantized) it->deq = dequantize_weight(it->q);
    items.push_back(std::move(it));
    Item &m = *items.back();
    const std::string &n = ti.name;
    t.push_back({n, DType::U8, {static_cast<int64_t>(m.q.packed.size()), 1}, m.q.packed.data()});
    if (spec.double_quant) {
      t.push_back({n + ".absmax", DType::U8, {m.nb}, m.q.qabsmax.data()});
      t.push_back({n + ".nested_absmax", DType::F32, {static_cast<int64_t>(m.q.absmax2.size())}, m.q.absmax2.data()});
      t.push_back({n + ".nested_quant_map", DType::F32, {256}, cpu::dynamic_map()});
    } else {
      t.push_back({n + ".absmax", DType::F32, {m.nb}, m.q.absmax.data()});
    }
    t.push_back({n + ".quant_map", DType::F32, {16}, cpu::q4_code(spec.type)});
    t.push_back({n + ".quant_state.bitsandbytes__" + qt, DType::U8, {static_cast<int64_t>(m.state.size())}, m.state.data()});
    if (dequantized) t.push_back({n + ".dequantized", DType::F32, ti.shape, m.deq.data()});
  }
  return write_safetensors(out, t, {{"format", "pt"}});
}

}  // namespace llmt
