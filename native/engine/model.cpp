// model.cpp — loading HF weights into fp32 parameters, LoRA (PEFT semantics), and the forward/backward
// of every family in the family table, on the CPU kernels (cpu/ops.hpp). See model.hpp for conventions.
#include "model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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
  return ends_with(name, "rotary_emb.inv_freq") || ends_with(name, "attention.masked_bias") ||
         ends_with(name, "attention.bias");
}

enum Role { kQ, kK, kV, kQKV, kO, kGate, kUp, kDown, kFc1, kFc2, kNumRoles };

}  // namespace

bool peft_target_matches(const LoraSpec &spec, const std::string &module) {
  if (!spec.target_regex.empty()) {
    try {
      return std::regex_match(module, std::regex(spec.target_regex));
    } catch (const std::regex_error &) {
      return false;
    }
  }
  for (const auto &t : spec.targets)
    if (module == t || ends_with(module, "." + t)) return true;
  return false;
}

// ---- per-call activation storage -----------------------------------------------------------------------
struct LinearActs {
  uint64_t stream = 0;       // dropout RNG stream (mask regenerated in the backward)
  std::vector<float> xdrop;  // dropout(x) when dropout > 0 in training (mask and 1/(1-p) applied)
  std::vector<float> u;      // dropout(x)·Aᵀ [N, r]
};

struct LayerActs {
  std::vector<float> x_in, h1, mean1, rstd1, q, k, v, attn, lse, x_mid, h2, mean2, rstd2, a, b, act;
  LinearActs lin[kNumRoles];
};

struct Model::Impl {
  std::vector<LayerActs> acts;  // per layer (only x_in kept under checkpointing)
  LayerActs scratch;            // recomputation target under checkpointing
  std::vector<int32_t> pos;
};

Model::~Model() = default;

Param *Model::new_param(const std::string &name, std::vector<int64_t> shape) {
  auto p = std::make_unique<Param>();
  p->name = name;
  p->shape = std::move(shape);
  p->data.assign(static_cast<size_t>(p->numel()), 0.0f);
  params.push_back(std::move(p));
  return params.back().get();
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const auto &p : params) n += p->numel();
  return n;
}

int64_t Model::num_trainable() const {
  int64_t n = 0;
  for (const auto &p : params)
    if (p->trainable) n += p->numel();
  return n;
}

std::unique_ptr<Model> Model::load(const std::string &dir, llmt_status &st) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->be_ = &cpu_backend();
  m->impl_ = std::make_unique<Impl>();
  st = load_config(dir, m->cfg_);
  if (st != LLMT_OK) return nullptr;
  const ModelConfig &c = m->cfg_;
  const FamilyRow &f = *c.family;
  std::unique_ptr<WeightSet> ws = WeightSet::open_dir(dir, st);
  if (!ws) return nullptr;

  const int64_t H = c.hidden, I = c.inter, V = c.vocab, hd = c.head_dim;
  const int64_t qd = c.heads * hd, kvd = c.kv_heads * hd;
  const bool ln = f.norm == NormKind::Layer;

  m->embed = m->new_param(std::string(f.embed) + ".weight", {V, H});
  auto add_linear = [&](int64_t layer, const char *name, int64_t out, int64_t in, int role) -> Linear * {
    auto lin = std::make_unique<Linear>();
    lin->module = layer_name(f.layer, layer) + "." + name;
    lin->short_name = lin->module.substr(lin->module.rfind('.') + 1);
    lin->in = in;
    lin->out = out;
    lin->role = role;
    lin->W = m->new_param(lin->module + ".weight", {out, in});
    if (f.linear_bias) {
      lin->b = m->new_param(lin->module + ".bias", {out});
      lin->b->decay = false;
    }
    m->linears.push_back(std::move(lin));
    return m->linears.back().get();
  };
  for (int64_t l = 0; l < c.layers; ++l) {
    Layer L;
    std::string pre = layer_name(f.layer, l) + ".";
    L.norm1_w = m->new_param(pre + f.attn_norm + ".weight", {H});
    L.norm2_w = m->new_param(pre + f.mlp_norm + ".weight", {H});
    L.norm1_w->decay = L.norm2_w->decay = false;
    if (ln) {
      L.norm1_b = m->new_param(pre + f.attn_norm + ".bias", {H});
      L.norm2_b = m->new_param(pre + f.mlp_norm + ".bias", {H});
      L.norm1_b->decay = L.norm2_b->decay = false;
    }
    if (f.qkv_layout == QkvLayout::Separate) {
      L.q = add_linear(l, f.q, qd, H, kQ);
      L.k = add_linear(l, f.k, kvd, H, kK);
      L.v = add_linear(l, f.v, kvd, H, kV);
    } else {
      L.qkv = add_linear(l, f.qkv, qd + 2 * kvd, H, kQKV);
    }
    L.o = add_linear(l, f.o, H, qd, kO);
    if (f.mlp == MlpKind::SwiGLU) {
      L.gate = add_linear(l, f.gate, I, H, kGate);
      L.up = add_linear(l, f.up, I, H, kUp);
      L.down = add_linear(l, f.down, H, I, kDown);
    } else {
      L.fc1 = add_linear(l, f.fc1, I, H, kFc1);
      L.fc2 = add_linear(l, f.fc2, H, I, kFc2);
    }
    m->layers.push_back(L);
  }
  m->final_w = m->new_param(std::string(f.final_norm) + ".weight", {H});
  m->final_w->decay = false;
  if (ln) {
    m->final_b = m->new_param(std::string(f.final_norm) + ".bias", {H});
    m->final_b->decay = false;
  }
  const std::string head_name = std::string(f.lm_head) + ".weight";
  if (c.tie_embeddings) {
    m->lm_head = m->embed;
  } else {
    m->lm_head = m->new_param(head_name, {V, H});
  }

  // Load every parameter; collect what is missing or mis-shaped.
  std::vector<std::string> missing;
  std::set<std::string> expected;
  for (auto &p : m->params) {
    expected.insert(p->name);
    const TensorInfo *t = ws->find(p->name);
    if (!t) {
      missing.push_back(p->name);
      continue;
    }
    if (t->shape != p->shape) {
      st = set_error(LLMT_ERR_BAD_INPUT, "tensor '" + p->name + "' in " + ws->file_of(p->name) + " has shape " +
                                             shape_str(t->shape) + " but config.json implies " + shape_str(p->shape) +
                                             "; config.json and the weights do not belong together");
      return nullptr;
    }
    st = ws->read_f32(p->name, p->data.data());
    if (st != LLMT_OK) return nullptr;
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 8) list += ", … (" + std::to_string(missing.size()) + " in all)";
    st = set_error(LLMT_ERR_BAD_INPUT, "the weights in " + dir + " lack tensors the " + f.model_type +
                                           " architecture needs: " + list +
                                           ". Is the download complete and config.json the right one?");
    return nullptr;
  }
  std::vector<std::string> unexpected;
  for (const auto &n : ws->names()) {
    if (expected.count(n) || ignorable_tensor(n)) continue;
    if (c.tie_embeddings && n == head_name) continue;  // tied: HF ignores a saved copy too
    unexpected.push_back(n);
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 8; ++i) list += (i ? ", " : "") + unexpected[i];
    if (unexpected.size() > 8) list += ", … (" + std::to_string(unexpected.size()) + " in all)";
    st = set_error(LLMT_ERR_BAD_INPUT, "the weights in " + dir + " hold tensors a " + f.model_type +
                                           " model does not have: " + list +
                                           ". Does config.json's model_type match the weights?");
    return nullptr;
  }
  st = LLMT_OK;
  clear_error();
  return m;
}

// ---- LoRA -----------------------------------------------------------------------------------------------------

llmt_status Model::attach_lora(Linear &lin, int64_t r, double alpha, double dropout, bool rslora) {
  if (r <= 0) return set_error(LLMT_ERR_BAD_INPUT, "LoRA rank for " + lin.module + " must be positive");
  lin.lora.r = r;
  lin.lora.scaling = static_cast<float>(rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r);
  lin.lora.dropout = static_cast<float>(dropout);
  const std::string base = "base_model.model." + lin.module;
  lin.lora.A = new_param(lin.module + ".lora_A.weight", {r, lin.in});
  lin.lora.B = new_param(lin.module + ".lora_B.weight", {lin.out, r});
  lin.lora.A->save_name = base + ".lora_A.weight";
  lin.lora.B->save_name = base + ".lora_B.weight";
  return LLMT_OK;
}

static int64_t pattern_lookup_r(const LoraSpec &s, const std::string &module, int64_t def) {
  for (const auto &kv : s.rank_pattern)
    if (module == kv.first || ends_with(module, "." + kv.first)) return kv.second;
  return def;
}
static double pattern_lookup_alpha(const LoraSpec &s, const std::string &module, double def) {
  for (const auto &kv : s.alpha_pattern)
    if (module == kv.first || ends_with(module, "." + kv.first)) return kv.second;
  return def;
}

llmt_status Model::apply_modules_to_save(const std::vector<std::string> &names) {
  if (names.empty()) return LLMT_OK;
  // Untie a tied head when either side is trained on its own (PEFT trains a separate copy).
  const std::string head_module = cfg_.family->lm_head;
  const std::string embed_module = cfg_.family->embed;
  auto listed = [&](const std::string &module) {
    for (const auto &n : names)
      if (ends_with(module, n)) return true;  // PEFT: key.endswith(target_key)
    return false;
  };
  if (lm_head == embed && (listed(head_module) || listed(embed_module))) {
    Param *head = new_param(head_module + ".weight", embed->shape);
    head->data = embed->data;
    lm_head = head;
  }
  bool any = false;
  for (auto &p : params) {
    if (p->name.find(".lora_") != std::string::npos) continue;
    std::string module = p->name.substr(0, p->name.rfind('.'));
    if (!listed(module)) continue;
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
  if (peft_target_matches(s, cfg_.family->lm_head) || peft_target_matches(s, cfg_.family->embed)) {
    return set_error(LLMT_ERR_UNSUPPORTED, "LoRA on the embedding or the LM head is not supported yet; train them with modules_to_save instead");
  }
  int matched = 0;
  for (auto &lin : linears) {
    if (!peft_target_matches(s, lin->module)) continue;
    llmt_status st = attach_lora(*lin, pattern_lookup_r(s, lin->module, s.r),
                                 pattern_lookup_alpha(s, lin->module, s.alpha), s.dropout, s.use_rslora);
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
  for (auto &lin : linears) {
    if (!lin->lora.r) continue;
    lin->lora.A->trainable = lin->lora.B->trainable = true;
    if (s.bias == "lora_only" && lin->b) {
      lin->b->trainable = true;
      lin->b->save_name = "base_model.model." + lin->b->name;
    }
  }
  if (s.bias == "all") {
    for (auto &p : params)
      if (ends_with(p->name, ".bias")) {
        p->trainable = true;
        p->save_name = "base_model.model." + p->name;
      }
  } else if (s.bias != "none" && s.bias != "lora_only") {
    return set_error(LLMT_ERR_BAD_INPUT, "LoRA bias must be \"none\", \"all\" or \"lora_only\" (got \"" + s.bias + "\")");
  }
  llmt_status st = apply_modules_to_save(s.modules_to_save);
  if (st != LLMT_OK) return st;
  for (auto &p : params)
    if (p->trainable) p->grad.assign(p->data.size(), 0.0f);
  return LLMT_OK;
}

void Model::make_all_trainable() {
  for (auto &p : params) {
    p->trainable = true;
    p->save_name = p->name;
    p->grad.assign(p->data.size(), 0.0f);
  }
}

std::vector<Param *> Model::trainable_params() {
  std::vector<Param *> out;
  for (auto &p : params)
    if (p->trainable) out.push_back(p.get());
  return out;
}

void Model::zero_grad() {
  for (auto &p : params)
    if (p->trainable) std::fill(p->grad.begin(), p->grad.end(), 0.0f);
}

// ---- building blocks -----------------------------------------------------------------------------------------

namespace {

struct Ctx {
  int64_t B, T, N;
  bool training;
  uint64_t seed;
  Backend *be;
};

uint64_t dropout_stream(uint64_t seed, int64_t layer, int role) {
  return mix64(seed ^ mix64(static_cast<uint64_t>(layer) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(role) + 1));
}

// y[N,out] = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ ; saves LoRA intermediates into `a`.
void linear_forward(const Linear &L, const float *x, float *y, int64_t N, const Ctx &c, int64_t layer, LinearActs &a) {
  Backend &be = *c.be;
  be.matmul_nt(x, L.W->data.data(), y, N, L.out, L.in, false);
  if (L.b) be.add_bias(y, L.b->data.data(), N, L.out);
  if (!L.lora.r) return;
  const int64_t r = L.lora.r;
  const float *xin = x;
  if (c.training && L.lora.dropout > 0) {
    a.xdrop.resize(static_cast<size_t>(N * L.in));
    a.stream = dropout_stream(c.seed, layer, L.role);
    be.dropout_forward(x, a.xdrop.data(), N * L.in, L.lora.dropout, a.stream);
    xin = a.xdrop.data();
  } else {
    a.xdrop.clear();
  }
  a.u.resize(static_cast<size_t>(N * r));
  be.matmul_nt(xin, L.lora.A->data.data(), a.u.data(), N, r, L.in, false);
  // y += s · u·Bᵀ : scale u into a temporary to keep `u` for the backward
  std::vector<float> us(a.u);
  be.scale_inplace(us.data(), L.lora.scaling, N * r);
  be.matmul_nt(us.data(), L.lora.B->data.data(), y, N, L.out, r, true);
}

// Backward of linear_forward. dx is overwritten (accumulate=false) or added to.
void linear_backward(Backend &be, Linear &L, const float *x, const float *dy, float *dx, bool accumulate, int64_t N,
                     const LinearActs &a) {
  be.matmul_nn(dy, L.W->data.data(), dx, N, L.in, L.out, accumulate);
  if (L.W->trainable) be.matmul_tn(dy, x, L.W->grad.data(), L.out, L.in, N, true);
  if (L.b && L.b->trainable) be.bias_backward(dy, L.b->grad.data(), N, L.out);
  if (!L.lora.r) return;
  const int64_t r = L.lora.r;
  const float s = L.lora.scaling;
  // du = s · dy·B  [N, r]
  std::vector<float> du(static_cast<size_t>(N * r));
  be.matmul_nn(dy, L.lora.B->data.data(), du.data(), N, r, L.out, false);
  be.scale_inplace(du.data(), s, N * r);
  if (L.lora.B->trainable) {
    // dB += s · dyᵀ·u
    std::vector<float> us(a.u);
    be.scale_inplace(us.data(), s, N * r);
    be.matmul_tn(dy, us.data(), L.lora.B->grad.data(), L.out, r, N, true);
  }
  const float *xin = a.xdrop.empty() ? x : a.xdrop.data();
  if (L.lora.A->trainable) be.matmul_tn(du.data(), xin, L.lora.A->grad.data(), r, L.in, N, true);
  // dx += dropout'(du·A)
  if (a.xdrop.empty()) {
    be.matmul_nn(du.data(), L.lora.A->data.data(), dx, N, L.in, r, true);
  } else {
    std::vector<float> t(static_cast<size_t>(N * L.in));
    be.matmul_nn(du.data(), L.lora.A->data.data(), t.data(), N, L.in, r, false);
    be.dropout_backward(t.data(), dx, N * L.in, L.lora.dropout, a.stream);
  }
}

void norm_forward(Backend &be, const ModelConfig &c, const Param *w, const Param *b, const float *x, float *y, float *mean,
                  float *rstd, int64_t N) {
  if (c.family->norm == NormKind::RMS)
    be.rmsnorm_forward(x, w->data.data(), y, rstd, N, c.hidden, static_cast<float>(c.norm_eps));
  else
    be.layernorm_forward(x, w->data.data(), b->data.data(), y, mean, rstd, N, c.hidden, static_cast<float>(c.norm_eps));
}

void norm_backward(Backend &be, const ModelConfig &c, Param *w, Param *b, const float *x, const float *mean, const float *rstd,
                   const float *dy, float *dx, int64_t N) {
  float *dw = w->trainable ? w->grad.data() : nullptr;
  if (c.family->norm == NormKind::RMS) {
    be.rmsnorm_backward(dy, x, w->data.data(), rstd, dx, dw, N, c.hidden);
  } else {
    float *db = b && b->trainable ? b->grad.data() : nullptr;
    be.layernorm_backward(dy, x, w->data.data(), mean, rstd, dx, dw, db, N, c.hidden);
  }
}

std::vector<float> inv_freq(const ModelConfig &c) {
  // HF: 1 / base^(arange(0, D, 2).float() / D), in fp32
  std::vector<float> f(static_cast<size_t>(c.rot_dims / 2));
  for (int64_t i = 0; i < c.rot_dims / 2; ++i) {
    float e = static_cast<float>(2 * i) / static_cast<float>(c.rot_dims);
    f[static_cast<size_t>(i)] = 1.0f / static_cast<float>(std::pow(c.rope_theta, static_cast<double>(e)));
  }
  return f;
}

QkvSplit split_layout(QkvLayout l) { return l == QkvLayout::PackedBlocks ? QkvSplit::Blocks : QkvSplit::PerHead; }

void resize(std::vector<float> &v, int64_t n) { v.resize(static_cast<size_t>(n)); }

}  // namespace

// ---- forward / backward of a batch ---------------------------------------------------------------------------

llmt_status Model::run(const Batch &batch, const RunOptions &opt, RunResult &out) {
  const ModelConfig &c = cfg_;
  const FamilyRow &f = *c.family;
  const int64_t B = batch.B, T = batch.T, N = B * T, H = c.hidden, I = c.inter, V = c.vocab;
  const int64_t nh = c.heads, nkv = c.kv_heads, hd = c.head_dim, qd = nh * hd, kvd = nkv * hd;
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
  if (T > c.max_positions && c.rope_linear_factor == 1.0) {
    // HF computes positions past max_position_embeddings the same way; only warn-worthy, not an error.
  }
  const bool bwd = opt.backward;
  const bool ckpt = bwd && opt.checkpointing;
  Backend &be = *be_;
  Ctx ctx{B, T, N, opt.training, opt.seed, &be};
  Impl &im = *impl_;
  im.acts.resize(static_cast<size_t>(c.layers));
  im.pos.resize(static_cast<size_t>(N));
  std::vector<int32_t> seg;  // per token: where its sample starts within the row (packed rows only)
  if (!batch.pos.empty()) {
    if (static_cast<int64_t>(batch.pos.size()) != N) return set_error(LLMT_ERR_BAD_INPUT, "position ids must have the same shape as input_ids");
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
  } else {
    for (int64_t n = 0; n < N; ++n) im.pos[n] = static_cast<int32_t>(n % T);
  }
  const int32_t *seg_ptr = seg.empty() ? nullptr : seg.data();
  const std::vector<float> freqs = inv_freq(c);
  const float pos_scale = static_cast<float>(1.0 / c.rope_linear_factor);
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool seq_residual = f.norm == NormKind::RMS || !c.parallel_residual;

  // The forward of one block from acts.x_in; fills every saved activation of `a`.
  auto block_forward = [&](int64_t l, LayerActs &a, float *x_out) {
    Layer &L = layers[static_cast<size_t>(l)];
    resize(a.h1, N * H);
    resize(a.mean1, N);
    resize(a.rstd1, N);
    norm_forward(be, c, L.norm1_w, L.norm1_b, a.x_in.data(), a.h1.data(), a.mean1.data(), a.rstd1.data(), N);
    resize(a.q, N * qd);
    resize(a.k, N * kvd);
    resize(a.v, N * kvd);
    if (L.qkv) {
      std::vector<float> fused(static_cast<size_t>(N * (qd + 2 * kvd)));
      linear_forward(*L.qkv, a.h1.data(), fused.data(), N, ctx, l, a.lin[kQKV]);
      be.qkv_split(fused.data(), a.q.data(), a.k.data(), a.v.data(), N, nh, nkv, hd, split_layout(f.qkv_layout), false);
    } else {
      linear_forward(*L.q, a.h1.data(), a.q.data(), N, ctx, l, a.lin[kQ]);
      linear_forward(*L.k, a.h1.data(), a.k.data(), N, ctx, l, a.lin[kK]);
      linear_forward(*L.v, a.h1.data(), a.v.data(), N, ctx, l, a.lin[kV]);
    }
    if (c.rot_dims > 0) {
      be.rope_forward(a.q.data(), im.pos.data(), freqs.data(), N, nh, hd, c.rot_dims, pos_scale);
      be.rope_forward(a.k.data(), im.pos.data(), freqs.data(), N, nkv, hd, c.rot_dims, pos_scale);
    }
    resize(a.attn, N * qd);
    resize(a.lse, B * nh * T);
    be.attention_forward(a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), B, T, nh, nkv, hd, attn_scale, seg_ptr);
    std::vector<float> y(static_cast<size_t>(N * H));
    linear_forward(*L.o, a.attn.data(), y.data(), N, ctx, l, a.lin[kO]);
    const float *mlp_in_src;
    if (seq_residual) {
      resize(a.x_mid, N * H);
      be.add(a.x_mid.data(), a.x_in.data(), y.data(), nullptr, N * H);
      mlp_in_src = a.x_mid.data();
    } else {
      a.x_mid.clear();
      mlp_in_src = a.x_in.data();
    }
    resize(a.h2, N * H);
    resize(a.mean2, N);
    resize(a.rstd2, N);
    norm_forward(be, c, L.norm2_w, L.norm2_b, mlp_in_src, a.h2.data(), a.mean2.data(), a.rstd2.data(), N);
    std::vector<float> ym(static_cast<size_t>(N * H));
    resize(a.act, N * I);
    if (f.mlp == MlpKind::SwiGLU) {
      resize(a.a, N * I);
      resize(a.b, N * I);
      linear_forward(*L.gate, a.h2.data(), a.a.data(), N, ctx, l, a.lin[kGate]);
      linear_forward(*L.up, a.h2.data(), a.b.data(), N, ctx, l, a.lin[kUp]);
      be.swiglu_forward(a.a.data(), a.b.data(), a.act.data(), N * I);
      linear_forward(*L.down, a.act.data(), ym.data(), N, ctx, l, a.lin[kDown]);
    } else {
      resize(a.a, N * I);
      a.b.clear();
      linear_forward(*L.fc1, a.h2.data(), a.a.data(), N, ctx, l, a.lin[kFc1]);
      be.gelu_forward(a.a.data(), a.act.data(), N * I, cpu::Gelu::Erf);
      linear_forward(*L.fc2, a.act.data(), ym.data(), N, ctx, l, a.lin[kFc2]);
    }
    if (seq_residual) {
      be.add(x_out, a.x_mid.data(), ym.data(), nullptr, N * H);
    } else {
      be.add(x_out, a.x_in.data(), y.data(), ym.data(), N * H);
    }
  };

  // ---- forward ----
  std::vector<float> x(static_cast<size_t>(N * H));
  be.embedding_forward(embed->data.data(), batch.ids.data(), x.data(), N, H);
  for (int64_t l = 0; l < c.layers; ++l) {
    LayerActs &a = im.acts[static_cast<size_t>(l)];
    a.x_in = x;
    LayerActs &work = ckpt ? im.scratch : a;
    if (ckpt) work.x_in = a.x_in;
    block_forward(l, work, x.data());
  }
  std::vector<float> hf(static_cast<size_t>(N * H)), fmean(static_cast<size_t>(N)), frstd(static_cast<size_t>(N));
  norm_forward(be, c, final_w, final_b, x.data(), hf.data(), fmean.data(), frstd.data(), N);

  // targets: labels shifted left by one within each row (HF: shift_labels = labels[..., 1:])
  std::vector<int32_t> targets(static_cast<size_t>(N), -100);
  if (!batch.labels.empty())
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t)
        if (seg.empty() || batch.pos[b * T + t + 1] != 0) targets[b * T + t] = batch.labels[b * T + t + 1];

  // logits and loss in row chunks: the full [N, V] matrix is only materialised when asked for.
  std::vector<float> dhf;
  if (bwd) dhf.assign(static_cast<size_t>(N * H), 0.0f);
  if (opt.want_logits) out.logits.resize(static_cast<size_t>(N * V));
  out.loss_sum = 0.0;
  out.count = 0;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 22) / std::max<int64_t>(V, 1)));
  std::vector<float> lg, lse, dlg;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    float *logits;
    if (opt.want_logits) {
      logits = out.logits.data() + r0 * V;
    } else {
      resize(lg, rows * V);
      logits = lg.data();
    }
    be.matmul_nt(hf.data() + r0 * H, lm_head->data.data(), logits, rows, V, H, false);
    resize(lse, rows);
    int64_t cnt = 0;
    out.loss_sum += be.cross_entropy_forward(logits, targets.data() + r0, lse.data(), rows, V, &cnt);
    out.count += cnt;
    if (bwd && cnt > 0) {
      resize(dlg, rows * V);
      be.cross_entropy_backward(logits, targets.data() + r0, lse.data(), dlg.data(), rows, V, opt.grad_scale);
      be.matmul_nn(dlg.data(), lm_head->data.data(), dhf.data() + r0 * H, rows, H, V, false);
      if (lm_head->trainable) be.matmul_tn(dlg.data(), hf.data() + r0 * H, lm_head->grad.data(), V, H, rows, true);
    }
  }
  if (!std::isfinite(out.loss_sum)) {
    return set_error(LLMT_ERR_NAN, "the loss is not finite (" + std::to_string(out.loss_sum) +
                                       "); the weights or the learning rate may have diverged");
  }
  if (!bwd) return LLMT_OK;

  // ---- backward ----
  std::vector<float> dx(static_cast<size_t>(N * H));
  norm_backward(be, c, final_w, final_b, x.data(), fmean.data(), frstd.data(), dhf.data(), dx.data(), N);
  std::vector<float> dy(static_cast<size_t>(N * H)), tmp(static_cast<size_t>(N * H)), dxin(static_cast<size_t>(N * H));
  for (int64_t l = c.layers - 1; l >= 0; --l) {
    Layer &L = layers[static_cast<size_t>(l)];
    LayerActs *ap = &im.acts[static_cast<size_t>(l)];
    if (ckpt) {
      im.scratch.x_in = ap->x_in;
      block_forward(l, im.scratch, tmp.data());
      ap = &im.scratch;
    }
    LayerActs &a = *ap;
    // MLP branch: d(ym) = dx
    std::vector<float> dact(static_cast<size_t>(N * I)), dh2(static_cast<size_t>(N * H));
    if (f.mlp == MlpKind::SwiGLU) {
      linear_backward(be, *L.down, a.act.data(), dx.data(), dact.data(), false, N, a.lin[kDown]);
      std::vector<float> dg(static_cast<size_t>(N * I)), du(static_cast<size_t>(N * I));
      be.swiglu_backward(dact.data(), a.a.data(), a.b.data(), dg.data(), du.data(), N * I);
      linear_backward(be, *L.gate, a.h2.data(), dg.data(), dh2.data(), false, N, a.lin[kGate]);
      linear_backward(be, *L.up, a.h2.data(), du.data(), dh2.data(), true, N, a.lin[kUp]);
    } else {
      linear_backward(be, *L.fc2, a.act.data(), dx.data(), dact.data(), false, N, a.lin[kFc2]);
      std::vector<float> df(static_cast<size_t>(N * I));
      be.gelu_backward(dact.data(), a.a.data(), df.data(), N * I, cpu::Gelu::Erf);
      linear_backward(be, *L.fc1, a.h2.data(), df.data(), dh2.data(), false, N, a.lin[kFc1]);
    }
    // d(attention output y): sequential → d(x_mid) = dx + dnorm2; parallel → dx
    if (seq_residual) {
      norm_backward(be, c, L.norm2_w, L.norm2_b, a.x_mid.data(), a.mean2.data(), a.rstd2.data(), dh2.data(), tmp.data(), N);
      be.add(dy.data(), dx.data(), tmp.data(), nullptr, N * H);  // d(x_mid)
    } else {
      norm_backward(be, c, L.norm2_w, L.norm2_b, a.x_in.data(), a.mean2.data(), a.rstd2.data(), dh2.data(), tmp.data(), N);
      dy = dx;  // d(y_attn) = d(x_out)
    }
    // attention branch
    std::vector<float> dattn(static_cast<size_t>(N * qd));
    linear_backward(be, *L.o, a.attn.data(), dy.data(), dattn.data(), false, N, a.lin[kO]);
    std::vector<float> dq(static_cast<size_t>(N * qd)), dk(static_cast<size_t>(N * kvd)), dv(static_cast<size_t>(N * kvd));
    be.attention_backward(dattn.data(), a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), dq.data(),
                            dk.data(), dv.data(), B, T, nh, nkv, hd, attn_scale, seg_ptr);
    if (c.rot_dims > 0) {
      be.rope_backward(dq.data(), im.pos.data(), freqs.data(), N, nh, hd, c.rot_dims, pos_scale);
      be.rope_backward(dk.data(), im.pos.data(), freqs.data(), N, nkv, hd, c.rot_dims, pos_scale);
    }
    std::vector<float> dh1(static_cast<size_t>(N * H));
    if (L.qkv) {
      std::vector<float> dfused(static_cast<size_t>(N * (qd + 2 * kvd)));
      be.qkv_split(dfused.data(), dq.data(), dk.data(), dv.data(), N, nh, nkv, hd, split_layout(f.qkv_layout), true);
      linear_backward(be, *L.qkv, a.h1.data(), dfused.data(), dh1.data(), false, N, a.lin[kQKV]);
    } else {
      linear_backward(be, *L.q, a.h1.data(), dq.data(), dh1.data(), false, N, a.lin[kQ]);
      linear_backward(be, *L.k, a.h1.data(), dk.data(), dh1.data(), true, N, a.lin[kK]);
      linear_backward(be, *L.v, a.h1.data(), dv.data(), dh1.data(), true, N, a.lin[kV]);
    }
    norm_backward(be, c, L.norm1_w, L.norm1_b, a.x_in.data(), a.mean1.data(), a.rstd1.data(), dh1.data(), dxin.data(), N);
    if (seq_residual) {
      be.add(dx.data(), dy.data(), dxin.data(), nullptr, N * H);
    } else {
      be.add(dx.data(), dx.data(), tmp.data(), dxin.data(), N * H);
    }
  }
  if (embed->trainable) be.embedding_backward(dx.data(), batch.ids.data(), embed->grad.data(), N, H, V);
  return LLMT_OK;
}

// ---- inference with a KV cache ----------------------------------------------------------------------------------

void Model::init_cache(KvCache &c, int64_t capacity) const {
  c.capacity = capacity;
  c.length = 0;
  const size_t per = static_cast<size_t>(capacity * cfg_.kv_heads * cfg_.head_dim);
  c.k.assign(static_cast<size_t>(cfg_.layers), std::vector<float>(per));
  c.v.assign(static_cast<size_t>(cfg_.layers), std::vector<float>(per));
}

llmt_status Model::infer(KvCache &cache, const int32_t *ids, int64_t n, std::vector<float> &last_logits) {
  const ModelConfig &c = cfg_;
  const FamilyRow &f = *c.family;
  const int64_t H = c.hidden, I = c.inter, V = c.vocab, nh = c.heads, nkv = c.kv_heads, hd = c.head_dim;
  const int64_t qd = nh * hd, kvd = nkv * hd, p0 = cache.length;
  if (n <= 0) return set_error(LLMT_ERR_BAD_INPUT, "infer: no tokens");
  if (p0 + n > cache.capacity) {
    return set_error(LLMT_ERR_BAD_INPUT, "the sequence (" + std::to_string(p0 + n) + " tokens) is longer than the cache (" +
                                             std::to_string(cache.capacity) + "); lower max_new_tokens or the prompt length");
  }
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V)
      return set_error(LLMT_ERR_BAD_INPUT, "token id " + std::to_string(ids[i]) + " is outside the vocabulary (size " + std::to_string(V) + ")");
  Backend &be = *be_;
  Ctx ctx{1, n, n, false, 0, &be};
  LinearActs scratch;
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(p0 + i);
  const std::vector<float> freqs = inv_freq(c);
  const float pos_scale = static_cast<float>(1.0 / c.rope_linear_factor);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool seq_residual = f.norm == NormKind::RMS || !c.parallel_residual;

  std::vector<float> x(static_cast<size_t>(n * H)), h(static_cast<size_t>(n * H)), mean(static_cast<size_t>(n)),
      rstd(static_cast<size_t>(n)), q(static_cast<size_t>(n * qd)), k(static_cast<size_t>(n * kvd)),
      v(static_cast<size_t>(n * kvd)), att(static_cast<size_t>(n * qd)), y(static_cast<size_t>(n * H)),
      ym(static_cast<size_t>(n * H)), a(static_cast<size_t>(n * I)), b(static_cast<size_t>(n * I)),
      act(static_cast<size_t>(n * I)), mid(static_cast<size_t>(n * H));
  be.embedding_forward(embed->data.data(), ids, x.data(), n, H);
  for (int64_t l = 0; l < c.layers; ++l) {
    Layer &L = layers[static_cast<size_t>(l)];
    norm_forward(be, c, L.norm1_w, L.norm1_b, x.data(), h.data(), mean.data(), rstd.data(), n);
    if (L.qkv) {
      std::vector<float> fused(static_cast<size_t>(n * (qd + 2 * kvd)));
      linear_forward(*L.qkv, h.data(), fused.data(), n, ctx, l, scratch);
      be.qkv_split(fused.data(), q.data(), k.data(), v.data(), n, nh, nkv, hd, split_layout(f.qkv_layout), false);
    } else {
      linear_forward(*L.q, h.data(), q.data(), n, ctx, l, scratch);
      linear_forward(*L.k, h.data(), k.data(), n, ctx, l, scratch);
      linear_forward(*L.v, h.data(), v.data(), n, ctx, l, scratch);
    }
    if (c.rot_dims > 0) {
      be.rope_forward(q.data(), pos.data(), freqs.data(), n, nh, hd, c.rot_dims, pos_scale);
      be.rope_forward(k.data(), pos.data(), freqs.data(), n, nkv, hd, c.rot_dims, pos_scale);
    }
    float *kc = cache.k[static_cast<size_t>(l)].data(), *vc = cache.v[static_cast<size_t>(l)].data();
    std::memcpy(kc + p0 * kvd, k.data(), sizeof(float) * static_cast<size_t>(n * kvd));
    std::memcpy(vc + p0 * kvd, v.data(), sizeof(float) * static_cast<size_t>(n * kvd));
    be.attention_cached(q.data(), kc, vc, att.data(), p0, n, nh, nkv, hd, scale);
    linear_forward(*L.o, att.data(), y.data(), n, ctx, l, scratch);
    const float *mlp_src = x.data();
    if (seq_residual) {
      be.add(mid.data(), x.data(), y.data(), nullptr, n * H);
      mlp_src = mid.data();
    }
    norm_forward(be, c, L.norm2_w, L.norm2_b, mlp_src, h.data(), mean.data(), rstd.data(), n);
    if (f.mlp == MlpKind::SwiGLU) {
      linear_forward(*L.gate, h.data(), a.data(), n, ctx, l, scratch);
      linear_forward(*L.up, h.data(), b.data(), n, ctx, l, scratch);
      be.swiglu_forward(a.data(), b.data(), act.data(), n * I);
      linear_forward(*L.down, act.data(), ym.data(), n, ctx, l, scratch);
    } else {
      linear_forward(*L.fc1, h.data(), a.data(), n, ctx, l, scratch);
      be.gelu_forward(a.data(), act.data(), n * I, cpu::Gelu::Erf);
      linear_forward(*L.fc2, act.data(), ym.data(), n, ctx, l, scratch);
    }
    if (seq_residual) {
      be.add(x.data(), mid.data(), ym.data(), nullptr, n * H);
    } else {
      be.add(x.data(), x.data(), y.data(), ym.data(), n * H);
    }
  }
  cache.length = p0 + n;
  norm_forward(be, c, final_w, final_b, x.data() + (n - 1) * H, h.data(), mean.data(), rstd.data(), 1);
  last_logits.resize(static_cast<size_t>(V));
  be.matmul_nt(h.data(), lm_head->data.data(), last_logits.data(), 1, V, H, false);
  for (float z : last_logits)
    if (!std::isfinite(z)) return set_error(LLMT_ERR_NAN, "the model produced non-finite logits");
  return LLMT_OK;
}

}  // namespace llmt
