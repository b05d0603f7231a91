// test_resident.cpp — device-resident model state, checked on the CPU (no GPU needed). A "fake device" backend runs
// the CPU kernels but says its memory is not host memory (Backend::host_memory() false), so the model takes the
// path it takes on CUDA: parameters, gradients, AdamW moments, activations and KV caches in alloc() memory, moved
// only with upload()/download(). The fake device records its allocations and counts every op argument that is NOT
// one of them — what the CUDA backend would have to stage per op. Checks: (1) that count is 0 in training and in
// cached generation; (2) host↔device copies per training step stay bounded (token I/O up, loss/norm scalars down);
// (3) the results are bit-identical to the CPU backend (same kernels, same order); (4) after to_device the host
// holds only the trainable weights (frozen fp32 and 4-bit weights freed, Model::host_weight_bytes), and save_model,
// a weight made trainable later and set_backend(cpu) bring them back bit-exact.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../engine/backend.hpp"
#include "../engine/model.hpp"
#include "../engine/quant.hpp"
#include "../engine/rng.hpp"
#include "llmt.h"

using namespace llmt;

namespace {

int g_fail = 0, g_checks = 0;

void check(bool ok, const std::string &what) {
  ++g_checks;
  if (!ok) ++g_fail;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

// The CPU kernels behind a device-like memory contract; counts foreign (host) pointers handed to ops.
class FakeDevice final : public Backend {
 public:
  int64_t foreign = 0;  // op arguments outside alloc() memory (what a device backend would stage)
  int64_t args = 0;     // all non-null op arguments (what per-op staging copied before state was resident)
  std::string first_foreign;

  const char *name() const override { return "fake-device"; }
  DeviceKind kind() const override { return DeviceKind::CPU; }
  ComputeType compute_type() const override { return ComputeType::F32; }
  void *alloc(size_t bytes) override {
    void *p = cpu().alloc(bytes);
    live_[reinterpret_cast<uintptr_t>(p)] = bytes ? bytes : 1;
    return p;
  }
  void release(void *p) override {
    live_.erase(reinterpret_cast<uintptr_t>(p));
    cpu().release(p);
  }
  void upload(void *dst, const void *src, size_t bytes) override {
    ++xfer_.uploads;
    xfer_.bytes_up += int64_t(bytes);
    need(dst, "upload");
    std::memcpy(dst, src, bytes);
  }
  void download(void *dst, const void *src, size_t bytes) override {
    ++xfer_.downloads;
    xfer_.bytes_down += int64_t(bytes);
    need(src, "download");
    std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}

#define D(p) need(p, __func__)
  void matmul_nt(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    D(A), D(B), D(C);
    cpu().matmul_nt(A, B, C, M, N, K, acc);
  }
  void matmul_nn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    D(A), D(B), D(C);
    cpu().matmul_nn(A, B, C, M, N, K, acc);
  }
  void matmul_tn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    D(A), D(B), D(C);
    cpu().matmul_tn(A, B, C, M, N, K, acc);
  }
  void add_bias(float *y, const float *b, int64_t r, int64_t c) override {
    D(y), D(b);
    cpu().add_bias(y, b, r, c);
  }
  void bias_backward(const float *dy, float *db, int64_t r, int64_t c) override {
    D(dy), D(db);
    cpu().bias_backward(dy, db, r, c);
  }
  void rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t r, int64_t c, float eps) override {
    D(x), D(w), D(y), D(rstd);
    cpu().rmsnorm_forward(x, w, y, rstd, r, c, eps);
  }
  void rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw, int64_t r,
                        int64_t c) override {
    D(dy), D(x), D(w), D(rstd), D(dx), D(dw);
    cpu().rmsnorm_backward(dy, x, w, rstd, dx, dw, r, c);
  }
  void layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, int64_t r,
                         int64_t c, float eps) override {
    D(x), D(w), D(b), D(y), D(mean), D(rstd);
    cpu().layernorm_forward(x, w, b, y, mean, rstd, r, c, eps);
  }
  void layernorm_backward(const float *dy, const float *x, const float *w, const float *mean, const float *rstd, float *dx,
                          float *dw, float *db, int64_t r, int64_t c) override {
    D(dy), D(x), D(w), D(mean), D(rstd), D(dx), D(dw), D(db);
    cpu().layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, r, c);
  }
  void rope_forward(float *x, const int32_t *pos, const float *f, int64_t r, int64_t h, int64_t hd, int64_t rot, float ps,
                    bool il) override {
    D(x), D(pos), D(f);
    cpu().rope_forward(x, pos, f, r, h, hd, rot, ps, il);
  }
  void rope_backward(float *x, const int32_t *pos, const float *f, int64_t r, int64_t h, int64_t hd, int64_t rot, float ps,
                     bool il) override {
    D(x), D(pos), D(f);
    cpu().rope_backward(x, pos, f, r, h, hd, rot, ps, il);
  }
  void swiglu_forward(const float *g, const float *u, float *o, int64_t n) override {
    D(g), D(u), D(o);
    cpu().swiglu_forward(g, u, o, n);
  }
  void swiglu_backward(const float *d, const float *g, const float *u, float *dg, float *du, int64_t n) override {
    D(d), D(g), D(u), D(dg), D(du);
    cpu().swiglu_backward(d, g, u, dg, du, n);
  }
  void gelu_forward(const float *x, float *y, int64_t n, cpu::Gelu k) override {
    D(x), D(y);
    cpu().gelu_forward(x, y, n, k);
  }
  void gelu_backward(const float *dy, const float *x, float *dx, int64_t n, cpu::Gelu k) override {
    D(dy), D(x), D(dx);
    cpu().gelu_backward(dy, x, dx, n, k);
  }
  void attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                         int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg, const float *alibi,
                         const int32_t *prefix) override {
    D(q), D(k), D(v), D(out), D(lse), D(seg), D(alibi), D(prefix);
    cpu().attention_forward(q, k, v, out, lse, B, T, nh, nkv, hd, scale, seg, alibi, prefix);
  }
  void attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                          const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh, int64_t nkv,
                          int64_t hd, float scale, const int32_t *seg, const float *alibi, const int32_t *prefix) override {
    D(dout), D(q), D(k), D(v), D(out), D(lse), D(dq), D(dk), D(dv), D(seg), D(alibi), D(prefix);
    cpu().attention_backward(dout, q, k, v, out, lse, dq, dk, dv, B, T, nh, nkv, hd, scale, seg, alibi, prefix);
  }
  void attention_cached(const float *q, const float *kc, const float *vc, float *out, int64_t p0, int64_t n, int64_t nh,
                        int64_t nkv, int64_t hd, float scale, const float *alibi, int64_t prefix, int64_t window) override {
    D(q), D(kc), D(vc), D(out), D(alibi);
    cpu().attention_cached(q, kc, vc, out, p0, n, nh, nkv, hd, scale, alibi, prefix, window);
  }
  double cross_entropy_forward(const float *lg, const int32_t *t, float *lse, int64_t N, int64_t V, int64_t *count) override {
    D(lg), D(t), D(lse);
    return cpu().cross_entropy_forward(lg, t, lse, N, V, count);
  }
  void cross_entropy_forward_acc(const float *lg, const int32_t *t, float *lse, int64_t N, int64_t V, double *loss_acc,
                                 int64_t *count_acc, bool acc) override {
    D(lg), D(t), D(lse), D(loss_acc), D(count_acc);
    cpu().cross_entropy_forward_acc(lg, t, lse, N, V, loss_acc, count_acc, acc);
  }
  void cross_entropy_backward(const float *lg, const int32_t *t, const float *lse, float *d, int64_t N, int64_t V,
                              float s) override {
    D(lg), D(t), D(lse), D(d);
    cpu().cross_entropy_backward(lg, t, lse, d, N, V, s);
  }
  void embedding_forward(const float *tb, const int32_t *ids, float *out, int64_t N, int64_t H) override {
    D(tb), D(ids), D(out);
    cpu().embedding_forward(tb, ids, out, N, H);
  }
  void embedding_backward(const float *d, const int32_t *ids, float *dt, int64_t N, int64_t H, int64_t V) override {
    D(d), D(ids), D(dt);
    cpu().embedding_backward(d, ids, dt, N, H, V);
  }
  void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1, float b2, float eps, float wd,
                  int64_t step) override {
    D(p), D(g), D(m), D(v);
    cpu().adamw_step(p, g, m, v, n, lr, b1, b2, eps, wd, step);
  }
  double sum_squares(const float *x, int64_t n) override {
    D(x);
    return cpu().sum_squares(x, n);
  }
  void scale_inplace(float *x, float s, int64_t n) override {
    D(x);
    cpu().scale_inplace(x, s, n);
  }
  void sum_squares_acc(const float *x, int64_t n, double *acc) override {
    D(x), D(acc);
    cpu().sum_squares_acc(x, n, acc);
  }
  void fill(float *x, float v, int64_t n) override {
    D(x);
    cpu().fill(x, v, n);
  }
  void copy(float *dst, const float *src, int64_t n) override {
    D(dst), D(src);
    cpu().copy(dst, src, n);
  }
  void transpose(const float *in, float *o, int64_t rows, int64_t cols, bool acc) override {
    D(in), D(o);
    cpu().transpose(in, o, rows, cols, acc);
  }
  void add(float *o, const float *a, const float *b, const float *c, int64_t n) override {
    D(o), D(a), D(b), D(c);
    cpu().add(o, a, b, c, n);
  }
  void dora_scale(const float *wn2, const float *WAt, const float *B, const float *G, const float *m, float s, float *g,
                  float *inv_n, int64_t out, int64_t r) override {
    D(wn2), D(WAt), D(B), D(G), D(m), D(g), D(inv_n);
    cpu().dora_scale(wn2, WAt, B, G, m, s, g, inv_n, out, r);
  }
  void scale_cols(float *y, const float *x, const float *g, float offset, bool keep, int64_t N, int64_t C) override {
    D(y), D(x), D(g);
    cpu().scale_cols(y, x, g, offset, keep, N, C);
  }
  void col_dot(const float *dy, const float *z, const float *inv_n, float *dm, int64_t N, int64_t C) override {
    D(dy), D(z), D(inv_n), D(dm);
    cpu().col_dot(dy, z, inv_n, dm, N, C);
  }
  void axpby(float *o, float al, const float *a, float be, const float *b, int64_t n) override {
    D(o), D(a), D(b);
    cpu().axpby(o, al, a, be, b, n);
  }
  void split_cols(float *f, float *a, float *b, int64_t N, int64_t wa, int64_t wb, bool merge) override {
    D(f), D(a), D(b);
    cpu().split_cols(f, a, b, N, wa, wb, merge);
  }
  void qkv_split(float *f, float *q, float *k, float *v, int64_t N, int64_t nh, int64_t nkv, int64_t hd, QkvSplit l,
                 bool merge) override {
    D(f), D(q), D(k), D(v);
    cpu().qkv_split(f, q, k, v, N, nh, nkv, hd, l, merge);
  }
  void add_uniform_noise(float *x, int64_t n, float mag, uint64_t stream) override {
    D(x);
    cpu().add_uniform_noise(x, n, mag, stream);
  }
  void dropout_forward(const float *x, float *o, int64_t n, float p, uint64_t s) override {
    D(x), D(o);
    cpu().dropout_forward(x, o, n, p, s);
  }
  void dropout_backward(const float *dy, float *dx, int64_t n, float p, uint64_t s) override {
    D(dy), D(dx);
    cpu().dropout_backward(dy, dx, n, p, s);
  }
  bool supports_q4() const override { return true; }
  void matmul_nt_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    D(A), D(C), D(W.packed), D(W.absmax), D(W.qabsmax), D(W.absmax2), D(W.code2);
    cpu().matmul_nt_q4(A, W, C, M, N, K, acc);
  }
  void matmul_nn_q4(const float *A, const cpu::Q4View &W, float *C, int64_t M, int64_t N, int64_t K, bool acc) override {
    D(A), D(C), D(W.packed), D(W.absmax), D(W.qabsmax), D(W.absmax2), D(W.code2);
    cpu().matmul_nn_q4(A, W, C, M, N, K, acc);
  }
#undef D

 private:
  static Backend &cpu() { return cpu_backend(); }
  void need(const void *p, const char *op) {
    if (!p) return;
    ++args;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = live_.upper_bound(a);
    if (it != live_.begin() && a < std::prev(it)->first + std::prev(it)->second) return;
    if (!foreign++) first_foreign = op;
  }
  std::map<uintptr_t, size_t> live_;
};

template <typename T>
bool same_bits(const std::vector<T> &a, const std::vector<T> &b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0);
}

// Every weight of two models (fp32, 16-bit, 4-bit host arrays) bit for bit.
bool same_weights(const Model &a, const Model &b) {
  if (a.params.size() != b.params.size() || a.q4_weights.size() != b.q4_weights.size()) return false;
  for (size_t i = 0; i < a.params.size(); ++i)
    if (!same_bits(a.params[i]->data, b.params[i]->data) || !same_bits(a.params[i]->half, b.params[i]->half)) return false;
  for (size_t i = 0; i < a.q4_weights.size(); ++i) {
    const Q4Weight &x = *a.q4_weights[i], &y = *b.q4_weights[i];
    if (!same_bits(x.packed, y.packed) || !same_bits(x.absmax, y.absmax) || !same_bits(x.qabsmax, y.qabsmax) ||
        !same_bits(x.absmax2, y.absmax2) || x.offset != y.offset)
      return false;
  }
  return true;
}

int64_t trainable_bytes(Model &m) {
  int64_t b = 0;
  for (Param *p : m.trainable_params()) b += p->numel() * int64_t(sizeof(float));
  return b;
}

// Logits and loss of a plain forward (no dropout, no backward).
bool forward(Model &m, const Batch &batch, std::vector<float> &logits, double &loss) {
  RunOptions o;
  o.want_logits = true;
  RunResult r;
  if (m.run(batch, o, r) != LLMT_OK) return false;
  logits = r.logits;
  loss = r.loss_sum;
  return true;
}

std::string file_bytes(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Batch make_batch(int64_t V) {
  Batch batch;
  batch.B = 2;
  batch.T = 20;
  Rng r(9);
  for (int64_t i = 0; i < batch.B * batch.T; ++i) {
    batch.ids.push_back(int32_t(4 + r.below(uint64_t(V - 4))));
    batch.labels.push_back(i % batch.T < 3 ? -100 : batch.ids.back());
  }
  return batch;
}

// One optimizer step as train.cpp does it (no clipping): zero, forward+backward, global norm, AdamW.
double train_step(Model &m, const Batch &batch, int64_t step, double *norm) {
  Backend &be = m.backend();
  m.zero_grad();
  RunOptions o;
  o.backward = true;
  o.training = true;
  o.seed = 11 + uint64_t(step);
  o.grad_scale = 1.0f / 40.0f;
  RunResult r;
  if (m.run(batch, o, r) != LLMT_OK) return NAN;
  double *acc = static_cast<double *>(be.alloc(sizeof(double)));
  double sq = 0.0;
  be.upload(acc, &sq, sizeof sq);
  for (Param *p : m.trainable_params()) be.sum_squares_acc(p->g(), p->numel(), acc);
  be.download(&sq, acc, sizeof sq);
  be.release(acc);
  *norm = std::sqrt(sq);
  for (Param *p : m.trainable_params())
    be.adamw_step(p->w(), p->g(), p->m(), p->v(), p->numel(), 1e-2f, 0.9f, 0.999f, 1e-8f, p->decay ? 0.01f : 0.0f, step);
  return r.loss_sum / double(r.count);
}

void family_check(const std::string &family, const std::string &tmp) {
  const std::string dir = tmp + "/tiny-" + family;
  struct stat sb;
  if (::stat(dir.c_str(), &sb) != 0 && llmt_create_tiny(family.c_str(), dir.c_str(), 3) != LLMT_OK) {
    check(false, "create_tiny " + family + ": " + llmt_last_error());
    return;
  }
  FakeDevice dev;  // outlives the models (they release into it)
  llmt_status st;
  auto a = Model::load(dir, st), b = Model::load(dir, st);
  if (!a || !b) {
    check(false, "load " + family + ": " + llmt_last_error());
    return;
  }
  b->set_backend(dev);  // before LoRA, as the trainer does
  LoraSpec spec;
  spec.r = 4;
  spec.alpha = 8;
  spec.dropout = 0.1;
  spec.targets = {"q_proj", "v_proj", "o_proj", "down_proj", "query_key_value", "dense", "dense_4h_to_h"};
  if (a->add_lora(spec, 5) != LLMT_OK || b->add_lora(spec, 5) != LLMT_OK) {
    check(false, family + " add_lora: " + llmt_last_error());
    return;
  }
  const int64_t host_before = b->host_weight_bytes();
  for (Model *m : {a.get(), b.get()}) {
    for (Param *p : m->trainable_params()) {  // AdamW moments made on the host, then moved once (train.cpp)
      p->adam_m.assign(size_t(p->numel()), 0.0f);
      p->adam_v.assign(size_t(p->numel()), 0.0f);
    }
    m->to_device();
  }
  // the frozen weights live on the device only: the host keeps the trainable ones (the CPU model keeps everything)
  const int64_t host_after = b->host_weight_bytes(), tb = trainable_bytes(*b);
  std::printf("     %s host weight bytes: %lld before to_device, %lld after (trainable %lld; the CPU model %lld)\n",
              family.c_str(), (long long)host_before, (long long)host_after, (long long)tb, (long long)a->host_weight_bytes());
  check(host_after == tb && a->host_weight_bytes() == host_before && host_after < host_before,
        family + ": after to_device the host holds only the trainable weights (" + std::to_string(host_after) + " of " +
            std::to_string(host_before) + " bytes)");
  const Batch batch = make_batch(a->config().vocab);
  bool same_loss = true;
  int64_t worst_up = 0, worst_down = 0;
  for (int64_t step = 1; step <= 3; ++step) {
    double na = 0, nb = 0;
    const double la = train_step(*a, batch, step, &na);
    dev.reset_transfers();
    const int64_t args0 = dev.args;
    const double lb = train_step(*b, batch, step, &nb);
    worst_up = std::max(worst_up, dev.transfers().uploads);
    worst_down = std::max(worst_down, dev.transfers().downloads);
    std::printf("     %s step %lld: loss %.6f / %.6f, |g| %.6f / %.6f, op args %lld (each one a staged copy before), "
                "transfers up %lld (%lld B), down %lld (%lld B)\n",
                family.c_str(), (long long)step, la, lb, na, nb, (long long)(dev.args - args0), (long long)dev.transfers().uploads,
                (long long)dev.transfers().bytes_up, (long long)dev.transfers().downloads,
                (long long)dev.transfers().bytes_down);
    same_loss = same_loss && la == lb && na == nb && std::isfinite(la);
  }
  check(same_loss, family + ": loss curve and grad norms bit-identical to the CPU backend (3 steps)");
  check(dev.foreign == 0, family + ": no op argument outside backend memory in training (" + std::to_string(dev.foreign) +
                              (dev.foreign ? ", first in " + dev.first_foreign : std::string()) + ")");
  // per step: the ids, positions and targets go up (+ rotary table or ALiBi slopes, grad-norm accumulator); the loss
  // (sum and count accumulated on the device: one 16-byte download per run) and the norm come down
  check(worst_up <= 5 && worst_down <= 2, family + ": host↔device copies per step bounded (up " + std::to_string(worst_up) +
                                             " ≤ 5, down " + std::to_string(worst_down) + " ≤ 2)");
  b->to_host(true, true);
  bool same_params = true;
  auto pa = a->trainable_params(), pb = b->trainable_params();
  for (size_t i = 0; i < pa.size(); ++i)
    same_params = same_params && same_bits(pa[i]->data, pb[i]->data) && same_bits(pa[i]->adam_m, pb[i]->adam_m) &&
                  same_bits(pa[i]->adam_v, pb[i]->adam_v);
  check(same_params, family + ": final adapter and AdamW moments bit-identical after to_host()");

  // cached generation: logits identical, no staging, only token ids up and the last logits down per chunk
  Model::KvCache ca, cb;
  a->init_cache(ca, 16);
  b->init_cache(cb, 16);
  std::vector<float> ga, gb;
  const int32_t prompt[4] = {5, 9, 7, 11};
  bool same_gen = a->infer(ca, prompt, 4, ga) == LLMT_OK && b->infer(cb, prompt, 4, gb) == LLMT_OK && same_bits(ga, gb);
  dev.reset_transfers();
  for (int32_t t = 0; t < 3 && same_gen; ++t) {
    const int32_t id = 6 + t;
    same_gen = a->infer(ca, &id, 1, ga) == LLMT_OK && b->infer(cb, &id, 1, gb) == LLMT_OK && same_bits(ga, gb);
  }
  check(same_gen, family + ": KV-cache decoding logits bit-identical");
  check(dev.foreign == 0 && dev.transfers().downloads == 3,
        family + ": decoding keeps the cache in backend memory (foreign " + std::to_string(dev.foreign) + ", downloads " +
            std::to_string(dev.transfers().downloads) + " for 3 tokens)");

  // save_model: the frozen weights come down for the write only, and the file is the CPU model's
  if (a->save_model(tmp + "/saved-" + family + "-cpu") != LLMT_OK || b->save_model(tmp + "/saved-" + family + "-dev") != LLMT_OK) {
    check(false, family + " save_model: " + llmt_last_error());
    return;
  }
  const std::string fa = file_bytes(tmp + "/saved-" + family + "-cpu/model.safetensors"),
                    fb = file_bytes(tmp + "/saved-" + family + "-dev/model.safetensors");
  check(!fa.empty() && fa == fb && b->host_weight_bytes() == tb,
        family + ": save_model from the device writes the CPU model's file (" + std::to_string(fb.size()) +
            " bytes), then frees the host copies again (" + std::to_string(b->host_weight_bytes()) + " bytes held)");

  // back to the CPU: every frozen weight downloaded, the model computes exactly as one that never left the CPU
  b->set_backend(cpu_backend());
  std::vector<float> lga, lgb;
  double lsa = 0, lsb = 0;
  const bool fwd_ok = forward(*a, batch, lga, lsa) && forward(*b, batch, lgb, lsb);
  check(fwd_ok && same_weights(*a, *b) && b->host_weight_bytes() == host_before && same_bits(lga, lgb) && lsa == lsb,
        family + ": set_backend(cpu) restores every host weight (" + std::to_string(b->host_weight_bytes()) +
            " bytes) and the forward is bit-identical to the CPU model's");
}

// A model that ran on the device before any weight was trainable (so none stayed on the host), then gets LoRA plus a
// fully trained head (modules_to_save; a tied head is untied from the embedding): the weights that become
// trainable come back from the device, and training matches the CPU bit for bit.
void late_trainable_check(const std::string &family, const std::string &tmp) {
  const std::string dir = tmp + "/tiny-" + family;
  FakeDevice dev;
  llmt_status st;
  auto a = Model::load(dir, st), b = Model::load(dir, st);
  if (!a || !b) {
    check(false, "load " + family + ": " + llmt_last_error());
    return;
  }
  b->set_backend(dev);
  const Batch batch = make_batch(a->config().vocab);
  std::vector<float> lga, lgb;
  double lsa = 0, lsb = 0;
  bool ok = forward(*a, batch, lga, lsa) && forward(*b, batch, lgb, lsb);
  check(ok && b->host_weight_bytes() == 0 && same_bits(lga, lgb) && lsa == lsb,
        family + ": a frozen model on the device keeps no weight on the host (" + std::to_string(b->host_weight_bytes()) +
            " bytes), forward bit-identical");
  LoraSpec spec;
  spec.r = 4;
  spec.alpha = 8;
  spec.targets = {"q_proj", "v_proj", "query_key_value"};
  spec.modules_to_save = {a->config().family->lm_head};
  for (Model *m : {a.get(), b.get()}) {
    if (m->add_lora(spec, 7) != LLMT_OK) {
      check(false, family + " add_lora (modules_to_save): " + llmt_last_error());
      return;
    }
    for (Param *p : m->trainable_params()) {
      p->adam_m.assign(size_t(p->numel()), 0.0f);
      p->adam_v.assign(size_t(p->numel()), 0.0f);
    }
    m->to_device();
  }
  bool same = true;
  for (int64_t step = 1; step <= 2; ++step) {
    double na = 0, nb = 0;
    const double la = train_step(*a, batch, step, &na), lb = train_step(*b, batch, step, &nb);
    same = same && la == lb && na == nb && std::isfinite(la);
  }
  const int64_t host_dev = b->host_weight_bytes();
  // the trained adapter loaded frozen onto another device model: its forward and its saved file match the CPU's
  const std::string ad = tmp + "/adapter-" + family, ae = tmp + "/adapter-" + family + "-again";
  auto e = Model::load(dir, st);
  ok = e && a->save_adapter(ad) == LLMT_OK;
  if (ok) e->set_backend(dev);
  ok = ok && e->load_adapter(ad, false) == LLMT_OK && forward(*a, batch, lga, lsa) && forward(*e, batch, lgb, lsb) &&
       e->save_adapter(ae) == LLMT_OK;
  const std::string fa = file_bytes(ad + "/adapter_model.safetensors"), fe = file_bytes(ae + "/adapter_model.safetensors");
  check(ok && same_bits(lga, lgb) && lsa == lsb && !fa.empty() && fa == fe && e->host_weight_bytes() == 0,
        family + ": a frozen adapter on the device (host " + std::to_string(e ? e->host_weight_bytes() : -1) +
            " bytes): forward bit-identical, save_adapter writes the same file");
  b->set_backend(cpu_backend());
  check(same && host_dev == trainable_bytes(*b) && same_weights(*a, *b),
        family + ": LoRA + trained head added after the weights left the host: 2 steps bit-identical (host " +
            std::to_string(host_dev) + " bytes = the trainable ones), every weight bit-identical back on the CPU");
}

// QLoRA (NF4 with double-quantized scales, FP4 with plain ones) on the fake device: the 4-bit host arrays are freed
// after the upload and come back bit-exact with set_backend(cpu).
void qlora_check(const std::string &tmp) {
  const std::string dir = tmp + "/tiny-llama";
  for (cpu::Q4Type t : {cpu::Q4Type::NF4, cpu::Q4Type::FP4}) {
    const std::string tag = t == cpu::Q4Type::NF4 ? "qlora nf4 (double quant)" : "qlora fp4";
    QuantSpec qs;
    qs.enabled = true;
    qs.type = t;
    qs.double_quant = t == cpu::Q4Type::NF4;
    FakeDevice dev;
    llmt_status st;
    auto a = Model::load(dir, st, qs), b = Model::load(dir, st, qs);
    if (!a || !b) {
      check(false, "load " + tag + ": " + llmt_last_error());
      return;
    }
    b->set_backend(dev);
    LoraSpec spec;
    spec.r = 4;
    spec.alpha = 8;
    spec.targets = {"q_proj", "v_proj", "down_proj"};
    const int64_t host_before = b->host_weight_bytes();
    for (Model *m : {a.get(), b.get()}) {
      m->add_lora(spec, 5);
      for (Param *p : m->trainable_params()) {
        p->adam_m.assign(size_t(p->numel()), 0.0f);
        p->adam_v.assign(size_t(p->numel()), 0.0f);
      }
      m->to_device();
    }
    const int64_t host_after = b->host_weight_bytes();
    std::printf("     %s host weight bytes: %lld before to_device, %lld after\n", tag.c_str(), (long long)host_before,
                (long long)host_after);
    const Batch batch = make_batch(a->config().vocab);
    bool same = true;
    for (int64_t step = 1; step <= 2; ++step) {
      double na = 0, nb = 0;
      const double la = train_step(*a, batch, step, &na), lb = train_step(*b, batch, step, &nb);
      same = same && la == lb && na == nb && std::isfinite(la);
    }
    check(same && host_after == trainable_bytes(*b) && dev.foreign == 0,
          tag + ": 4-bit host arrays freed after the upload (host " + std::to_string(host_after) +
              " bytes = the trainable ones), 2 steps bit-identical, nothing staged");
    b->set_backend(cpu_backend());
    std::vector<float> lga, lgb;
    double lsa = 0, lsb = 0;
    const bool ok = forward(*a, batch, lga, lsa) && forward(*b, batch, lgb, lsb);
    check(ok && same_weights(*a, *b) && b->host_weight_bytes() == a->host_weight_bytes() && same_bits(lga, lgb),
          tag + ": set_backend(cpu) brings the 4-bit arrays back bit-exact; forward bit-identical");
  }
}

}  // namespace

int main() {
  std::string tmp = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/llmt_test_resident";
  ::mkdir(tmp.c_str(), 0755);
  try {
    for (const char *f : {"llama", "gpt_neox", "bloom"}) family_check(f, tmp);
    for (const char *f : {"llama", "bloom"}) late_trainable_check(f, tmp);
    qlora_check(tmp);
  } catch (const std::exception &e) {
    check(false, std::string("exception: ") + e.what());
  }
  std::printf("%s: %d checks, %d failed\n", g_fail ? "FAILED" : "PASS", g_checks, g_fail);
  return g_fail ? 1 : 0;
}
