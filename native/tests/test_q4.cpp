// test_q4.cpp — QLoRA on the CPU: bitsandbytes' 4-bit format (codes, packing, double quantization) against
// hard-coded values from bitsandbytes' kernels, quantize→dequantize error bounds, the 4-bit matmuls bit-equal
// to the fp32 GEMM on the dequantized weight, and a tiny model whose QLoRA forward and LoRA gradients equal,
// bit for bit, those of the same model holding the dequantized weights in fp32 (plus finite differences).
// A saved bnb 4-bit checkpoint (llmt_quantize_model) loads as stored, bit-equal to quantizing on load.
// The comparison with bitsandbytes on many tensors is tests/python/bnb_reference.py (tests/integration/qlora).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../cpu/ops.hpp"
#include "../cpu/q4.hpp"
#include "../engine/json.hpp"
#include "../engine/model.hpp"
#include "../engine/quant.hpp"
#include "../engine/rng.hpp"
#include "llmt.h"

using namespace llmt;

#include "check.hpp"

static std::vector<float> normal(int64_t n, uint64_t seed, float scale) {
  Rng r(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto &x : v) {  // Box–Muller
    const float u1 = std::max(r.uniform(), 1e-7f), u2 = r.uniform();
    x = scale * std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
  return v;
}

static bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

static void test_codes() {
  const float *nf4 = cpu::q4_code(cpu::Q4Type::NF4);
  // each code value quantizes to itself; the tree's thresholds sit between neighbours
  for (int i = 0; i < 16; ++i) CHECK(cpu::nf4_quantize_one(nf4[i]) == i, "nf4 code " + std::to_string(i));
  CHECK(cpu::nf4_quantize_one(0.0f) == 7, "0 → 0b0111");
  CHECK(cpu::nf4_quantize_one(0.8614784f) == 14 && cpu::nf4_quantize_one(0.8614785f) == 15, "nf4 top threshold");
  CHECK(cpu::nf4_quantize_one(std::nanf("")) == 0, "NaN → 0b0000 (CUDA's tree)");
  const float *fp4 = cpu::q4_code(cpu::Q4Type::FP4);
  for (int i = 0; i < 16; ++i)
    if (i != 8) CHECK(cpu::fp4_quantize_one(fp4[i]) == i, "fp4 code " + std::to_string(i));
  CHECK(fp4[3] == 1.0f && fp4[2] == 8.0f / 12.0f && fp4[1] == 0.0625f / 12.0f, "fp4 values");
  // q4_quantize (branch-free threshold counts) against the trees, element by element: the codes of x·(1/absmax), the
  // scale of every block, and the padding nibble of an odd length
  auto tree_mismatches = [](const std::vector<float> &w, cpu::Q4Type t) {
    const int64_t n = static_cast<int64_t>(w.size());
    std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
    std::vector<float> am(static_cast<size_t>((n + 63) / 64));
    cpu::q4_quantize(w.data(), n, t, packed.data(), am.data());
    int bad = 0;
    for (int64_t b = 0; b * 64 < n; ++b) {
      float m = -std::numeric_limits<float>::max();
      for (int64_t i = b * 64; i < std::min(n, b * 64 + 64); ++i) m = std::fmax(m, std::fabs(w[static_cast<size_t>(i)]));
      bad += !(am[static_cast<size_t>(b)] == m);
      const float inv = 1.0f / m;
      for (int64_t i = b * 64; i < std::min(n, b * 64 + 64); ++i) {
        const float a = w[static_cast<size_t>(i)] * inv;
        const uint8_t want = t == cpu::Q4Type::NF4 ? cpu::nf4_quantize_one(a) : cpu::fp4_quantize_one(a);
        const uint8_t byte = packed[static_cast<size_t>(i >> 1)], got = (i & 1) ? (byte & 0x0F) : (byte >> 4);
        bad += got != want;
      }
    }
    // an odd length's last low nibble: CUDA quantizes a loaded 0 (NF4 0b0111, FP4 0)
    if (n % 2 && (packed.back() & 0x0F) != (t == cpu::Q4Type::NF4 ? 0b0111 : 0)) ++bad;
    return bad;
  };
  // every float that matters to the trees — each threshold and its two neighbours, the code values, ±0, NaN, tiny
  // values — in blocks led by 1.0 (absmax 1: they reach the trees unscaled); then ±inf, and 200 000 values across the
  // range and far outside it
  {
    std::vector<float> edge = {0.0f, -0.0f, std::nanf(""), -std::nanf(""), 1e-30f, -1e-30f};
    const float splits[] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
                            -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
                            0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
                            0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f, 0.00260417f, 0.0859375f,
                            0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};
    for (float t : splits)
      for (float v : {t, -t})
        for (float w : {v, std::nextafter(v, INFINITY), std::nextafter(v, -INFINITY)}) edge.push_back(w);
    for (int i = 0; i < 16; ++i) edge.push_back(nf4[i]), edge.push_back(fp4[i]);
    std::vector<float> probe;
    for (float v : edge) {
      if (probe.size() % 64 == 0) probe.push_back(1.0f);
      probe.push_back(v);
    }
    probe.resize((probe.size() + 63) / 64 * 64, 0.5f);
    probe.push_back(INFINITY), probe.push_back(-INFINITY);
    probe.resize((probe.size() + 63) / 64 * 64, 0.25f);
    uint64_t st = 12345;
    for (int i = 0; i < 200001; ++i) {
      st = st * 6364136223846793005ULL + 1442695040888963407ULL;
      const float u = static_cast<float>(st >> 40) / static_cast<float>(1ULL << 24);  // [0, 1)
      probe.push_back(i % 10 == 0 ? (u - 0.5f) * 1e6f : (u - 0.5f) * 2.4f);
    }
    const int bn = tree_mismatches(probe, cpu::Q4Type::NF4), bf = tree_mismatches(probe, cpu::Q4Type::FP4);
    CHECK(bn == 0 && bf == 0, "q4_quantize's codes equal the trees' on " + std::to_string(probe.size()) +
                                  " floats (nf4 " + std::to_string(bn) + ", fp4 " + std::to_string(bf) + " differ)");
  }
  // random weights in blocks of every kind: a partial last block of odd length, an all-zero block, a block with a NaN
  for (cpu::Q4Type t : {cpu::Q4Type::NF4, cpu::Q4Type::FP4}) {
    std::vector<float> w(static_cast<size_t>(64 * 37 + 29));
    uint64_t st = 777;
    for (float &v : w) {
      st = st * 6364136223846793005ULL + 1442695040888963407ULL;
      v = (static_cast<float>(st >> 40) / static_cast<float>(1ULL << 24) - 0.5f) * 0.3f;
    }
    for (int64_t i = 64 * 5; i < 64 * 6; ++i) w[static_cast<size_t>(i)] = 0.0f;
    // the first non-finite element is reported (the loaders refuse such a weight: a NaN would vanish into the codes)
    std::vector<uint8_t> pk(w.size() / 2 + 1);
    std::vector<float> am(w.size() / 64 + 1);
    const int64_t n = static_cast<int64_t>(w.size());
    CHECK(cpu::q4_quantize(w.data(), n, t, pk.data(), am.data()) == -1, "all finite: -1");
    w[64 * 30 + 7] = -INFINITY;
    w[n - 1] = INFINITY;
    w[64 * 9 + 3] = std::nanf("");
    CHECK(cpu::q4_quantize(w.data(), n, t, pk.data(), am.data()) == 64 * 9 + 3, "the first NaN/inf, over every thread's blocks");
    w[64 * 5 + 10] = std::nanf("");  // in the all-zero block (absmax 0: every scaled value is NaN there anyway)
    CHECK(cpu::q4_quantize(w.data(), n, t, pk.data(), am.data()) == 64 * 5 + 10, "a NaN among zeros");
    w[64 * 5 + 10] = 0.0f;
    std::vector<float> tiny_block(64, 1e-40f);  // subnormal absmax: 1/absmax overflows to inf, no NaN anywhere
    tiny_block[7] = 0.0f;
    CHECK(cpu::q4_quantize(tiny_block.data(), 64, t, pk.data(), am.data()) == -1, "subnormal weights are finite");
    w[64 * 30 + 7] = 0.01f;
    w[n - 1] = 0.01f;
    const int bad = tree_mismatches(w, t);
    CHECK(bad == 0, std::string(t == cpu::Q4Type::NF4 ? "nf4" : "fp4") +
                        ": q4_quantize's codes, scales and padding equal the trees' (" + std::to_string(bad) + " differ)");
  }
  const float *dm = cpu::dynamic_map();
  CHECK(dm[0] == -0.99296874f && dm[127] == 0.0f && dm[255] == 1.0f && dm[128] == 5.5000004e-07f, "dynamic map ends");
  for (int i = 1; i < 256; ++i) CHECK(dm[i] > dm[i - 1], "dynamic map sorted");
  for (int i = 0; i < 256; ++i) CHECK(cpu::dynamic_quantize_one(dm, dm[i]) == i, "dynamic code " + std::to_string(i));
  CHECK(cpu::dynamic_quantize_one(dm, -1.0f) == 0 && cpu::dynamic_quantize_one(dm, 1.0f) == 255, "±1");
  // a hand-made block: absmax 2, x·(1/2) lands on known codes; element 2i in the high nibble
  std::vector<float> x(64, 0.0f);
  x[0] = 2.0f;     // 1.0 → 15
  x[1] = -2.0f;    // −1.0 → 0
  x[2] = 0.1f;     // 0.05 → 8 (0.0796)
  x[3] = -0.5f;    // −0.25 → 4 (−0.2844)
  std::vector<uint8_t> packed(32);
  std::vector<float> absmax(1);
  cpu::q4_quantize(x.data(), 64, cpu::Q4Type::NF4, packed.data(), absmax.data());
  CHECK(absmax[0] == 2.0f, "absmax");
  CHECK(packed[0] == 0xF0 && packed[1] == 0x84 && packed[2] == 0x77, "nibble order: high = even element");
  // odd length: the padded low nibble is NF4's 0.0 code, as bitsandbytes writes it
  std::vector<float> y = {1.0f, -1.0f, 0.5f};
  std::vector<uint8_t> p2(2);
  cpu::q4_quantize(y.data(), 3, cpu::Q4Type::NF4, p2.data(), absmax.data());
  CHECK(p2[0] == 0xF0 && p2[1] == 0xC7, "odd n packing (0.5 → 0b1100)");
  // an all-zero block: 1/0 = inf, 0·inf = NaN → code 0 and scale 0 (dequantizes to −0), as on CUDA
  std::vector<float> z(64, 0.0f);
  cpu::q4_quantize(z.data(), 64, cpu::Q4Type::NF4, packed.data(), absmax.data());
  CHECK(absmax[0] == 0.0f && packed[0] == 0x00, "zero block");
}

static void test_error_bounds() {
  const int64_t n = 64 * 1000 + 37;  // not a multiple of 64
  auto x = normal(n, 11, 0.02f);
  for (auto t : {cpu::Q4Type::NF4, cpu::Q4Type::FP4}) {
    for (bool dq : {false, true}) {
      QuantSpec s;
      s.enabled = true;
      s.type = t;
      s.double_quant = dq;
      Q4Weight q;
      quantize_weight(x.data(), 1, n, s, q);
      CHECK(q.packed.size() == static_cast<size_t>((n + 1) / 2), "packed size");
      auto d = dequantize_weight(q);
      // bound: half the widest gap between neighbouring codes (NF4: −1…−0.696; FP4: 0.667…1) times the
      // block's scale, plus the scale's own 8-bit error when double-quantized
      const float half_gap = t == cpu::Q4Type::NF4 ? 0.5f * (1.0f - 0.6961928f) : 0.5f * (1.0f - 0.6666667f);
      std::vector<float> am(static_cast<size_t>((n + 63) / 64));
      std::vector<uint8_t> pk(static_cast<size_t>((n + 1) / 2));
      cpu::q4_quantize(x.data(), n, t, pk.data(), am.data());
      double err = 0, mag = 0;
      int bad = 0;
      const cpu::Q4View v = q.view();
      for (int64_t i = 0; i < n; ++i) {
        const float s_true = am[static_cast<size_t>(i / 64)], s_q = cpu::q4_block_scale(v, i / 64);
        const double bound = half_gap * s_true + std::fabs(s_q - s_true) + 1e-6 * s_true;
        if (std::fabs(d[i] - x[i]) > bound) ++bad;
        err += std::fabs(d[i] - x[i]);
        mag += std::fabs(x[i]);
        if (dq) CHECK(std::fabs(s_q - s_true) <= 0.01f * s_true + 1e-6f || i % 64, "double-quantized scale within 1%");
      }
      CHECK(bad == 0, std::to_string(bad) + " elements beyond the bound");
      const double rel = err / mag;
      std::printf("  %s%s: mean |error| / mean |x| = %.4f\n", t == cpu::Q4Type::NF4 ? "nf4" : "fp4", dq ? "+dq" : "", rel);
      CHECK(rel < (t == cpu::Q4Type::NF4 ? 0.12 : 0.16), "relative error");
      CHECK(q.bytes() < static_cast<size_t>(n) * (dq ? 0.53 : 0.57), "memory ≈ 0.5 byte/param + scales");
    }
  }
}

static void test_matmuls() {
  struct Case { int64_t M, N, K; };
  const Case cases[] = {{1, 3, 100}, {7, 37, 64}, {37, 300, 700}, {96, 2100, 130}, {5, 17, 1025}};
  QuantSpec s;
  s.enabled = true;
  for (const Case &c : cases) {
    for (bool dq : {false, true}) {
      s.double_quant = dq;
      auto w = normal(c.N * c.K, 5 + static_cast<uint64_t>(c.K), 0.05f);
      Q4Weight q;
      quantize_weight(w.data(), c.N, c.K, s, q);
      auto wd = dequantize_weight(q);
      auto a = normal(c.M * c.K, 9, 1.0f);
      std::vector<float> c1(static_cast<size_t>(c.M * c.N), 0.5f), c2 = c1;
      cpu::matmul_nt(a.data(), wd.data(), c1.data(), c.M, c.N, c.K, true);
      cpu::matmul_nt_q4(a.data(), q.view(), c2.data(), c.M, c.N, c.K, true);
      CHECK(same_bits(c1, c2), "nt " + std::to_string(c.M) + "x" + std::to_string(c.N) + "x" + std::to_string(c.K));
      // nn: dx[M, K] = dy[M, N]·W[N, K]
      auto dy = normal(c.M * c.N, 10, 1.0f);
      std::vector<float> d1(static_cast<size_t>(c.M * c.K)), d2 = d1;
      cpu::matmul_nn(dy.data(), wd.data(), d1.data(), c.M, c.K, c.N, false);
      cpu::matmul_nn_q4(dy.data(), q.view(), d2.data(), c.M, c.K, c.N, false);
      CHECK(same_bits(d1, d2), "nn " + std::to_string(c.M) + "x" + std::to_string(c.K) + "x" + std::to_string(c.N));
    }
  }
}

// A tiny llama loaded with NF4 against the same model whose block linears hold the dequantized weights (fp32).
static void test_model(const std::string &tmp) {
  const std::string dir = tmp + "/llama";
  CHECK(llmt_create_tiny("llama", dir.c_str(), 3) == LLMT_OK, llmt_last_error());
  for (auto t : {cpu::Q4Type::NF4, cpu::Q4Type::FP4}) {
    QuantSpec s;
    s.enabled = true;
    s.type = t;
    llmt_status st;
    auto mq = Model::load(dir, st, s);
    CHECK(mq != nullptr, llmt_last_error());
    auto md = Model::load(dir, st);
    CHECK(md != nullptr, llmt_last_error());
    if (!mq || !md) return;
    int quantized = 0;
    for (size_t i = 0; i < mq->linears.size(); ++i) {
      const Linear &lq = *mq->linears[i];
      CHECK(lq.q4 != nullptr && lq.W->data.empty(), lq.module + " is 4-bit and holds no fp32 copy");
      if (!lq.q4) return;
      md->linears[i]->W->data = dequantize_weight(*lq.q4);
      ++quantized;
    }
    CHECK(mq->lm_head->data.size() > 0 && mq->embed->data.size() > 0, "embeddings and head stay fp32");
    CHECK(mq->num_parameters() == md->num_parameters(), "parameter count unchanged");
    LoraSpec ls;
    ls.r = 4;
    ls.alpha = 8;
    ls.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    CHECK(mq->add_lora(ls, 7) == LLMT_OK && md->add_lora(ls, 7) == LLMT_OK, llmt_last_error());
    // non-zero B so the LoRA branch matters
    for (size_t i = 0; i < mq->params.size(); ++i) {
      Param &p = *mq->params[i];
      if (p.name.find("lora_B") == std::string::npos) continue;
      Rng r(i);
      for (float &x : p.data) x = (r.uniform() * 2 - 1) * 0.05f;
      md->params[i]->data = p.data;
    }
    Batch b;
    b.B = 2;
    b.T = 9;
    Rng r(5);
    for (int i = 0; i < 18; ++i) {
      b.ids.push_back(static_cast<int32_t>(3 + r.below(static_cast<uint64_t>(mq->config().vocab - 3))));
      b.labels.push_back(i % 9 < 2 ? -100 : b.ids.back());
    }
    RunOptions o;
    o.want_logits = true;
    RunResult rq, rd;
    CHECK(mq->run(b, o, rq) == LLMT_OK && md->run(b, o, rd) == LLMT_OK, llmt_last_error());
    CHECK(same_bits(rq.logits, rd.logits), "QLoRA logits == dequantized-model logits, bit for bit");
    CHECK(rq.loss_sum == rd.loss_sum, "loss");
    o.want_logits = false;
    o.backward = true;
    o.grad_scale = 1.0f / static_cast<float>(rq.count);
    mq->zero_grad();
    md->zero_grad();
    CHECK(mq->run(b, o, rq) == LLMT_OK && md->run(b, o, rd) == LLMT_OK, llmt_last_error());
    auto tq = mq->trainable_params(), td = md->trainable_params();
    bool same = tq.size() == td.size();
    for (size_t i = 0; same && i < tq.size(); ++i) same = same_bits(tq[i]->grad, td[i]->grad);
    CHECK(same, "LoRA gradients through the 4-bit dX path == the dequantized model's, bit for bit");
    // finite differences on a few LoRA A entries (their gradient flows through every 4-bit dX above them)
    int bad = 0;
    Rng pick(3);
    for (int k = 0; k < 12; ++k) {
      Param *p = tq[static_cast<size_t>(pick.below(tq.size()))];
      const size_t i = static_cast<size_t>(pick.below(static_cast<uint64_t>(p->numel())));
      const float orig = p->data[i], eps = 1e-2f * std::max(1.0f, std::fabs(orig));
      RunOptions f;
      RunResult a1, a2;
      p->data[i] = orig + eps;
      mq->run(b, f, a1);
      p->data[i] = orig - eps;
      mq->run(b, f, a2);
      p->data[i] = orig;
      const double fd = (a1.loss_sum - a2.loss_sum) / a1.count / (2.0 * eps), an = p->grad[i];
      if (std::fabs(fd - an) / std::max(5e-3, std::fabs(fd) + std::fabs(an)) > 3e-2) {
        ++bad;
        std::fprintf(stderr, "  %s[%zu]: fd %.6g vs analytic %.6g\n", p->name.c_str(), i, fd, an);
      }
    }
    CHECK(bad == 0, "finite differences");
    std::printf("  tiny llama %s: %d linears 4-bit, logits and gradients bit-equal to the dequantized model\n",
                t == cpu::Q4Type::NF4 ? "nf4" : "fp4", quantized);
  }
  // full fine-tuning and saving a merged model are refused on 4-bit weights
  QuantSpec s;
  s.enabled = true;
  llmt_status st;
  auto mq = Model::load(dir, st, s);
  CHECK(mq && mq->save_model(tmp + "/merged") == LLMT_ERR_UNSUPPORTED, "save_model refuses a 4-bit model");
  QuantSpec bad;
  CHECK(parse_quant_spec("int8", bad) == LLMT_ERR_BAD_INPUT, "unknown quantization");
}

static bool same_q4(const Q4Weight &a, const Q4Weight &b) {
  return a.type == b.type && a.rows == b.rows && a.cols == b.cols && a.packed == b.packed && a.qabsmax == b.qabsmax &&
         a.absmax2 == b.absmax2 && std::memcmp(&a.offset, &b.offset, sizeof(float)) == 0 &&
         a.absmax.size() == b.absmax.size() &&
         std::memcmp(a.absmax.data(), b.absmax.data(), a.absmax.size() * sizeof(float)) == 0;
}

// `quantize --model` → a bnb 4-bit folder; loading it uses the stored weights: the same 4-bit weights, logits and
// LoRA gradients, bit for bit, as quantizing the original on load.
static void test_saved(const std::string &tmp) {
  const std::string dir = tmp + "/llama";  // made by test_model
  struct Case { const char *type; bool dq; };
  for (Case k : {Case{"nf4", true}, Case{"fp4", true}, Case{"nf4", false}}) {
    const std::string out = tmp + "/q-" + k.type + (k.dq ? "" : "-nodq");
    CHECK(llmt_quantize_model(dir.c_str(), out.c_str(), k.type, k.dq ? 1 : 0) == LLMT_OK, llmt_last_error());
    QuantSpec s;
    CHECK(parse_quant_spec(k.type, s) == LLMT_OK, "spec");
    s.double_quant = k.dq;
    llmt_status st;
    auto ml = Model::load(dir, st, s);     // quantized on load
    auto ms = Model::load(out, st);        // stored 4-bit, nothing asked
    CHECK(ml && ms, llmt_last_error());
    if (!ml || !ms) return;
    CHECK(ms->quantization().enabled && ms->quantization().type == s.type && ms->quantization().double_quant == k.dq,
          "the stored spec is the model's");
    bool same = ml->linears.size() == ms->linears.size();
    for (size_t i = 0; same && i < ml->linears.size(); ++i)
      same = ms->linears[i]->q4 && ms->linears[i]->W->data.empty() && same_q4(*ml->linears[i]->q4, *ms->linears[i]->q4);
    CHECK(same, std::string(k.type) + ": stored 4-bit weights == quantize-on-load's");
    for (size_t i = 0; i < ml->params.size(); ++i)
      CHECK(same_bits(ml->params[i]->data, ms->params[i]->data), "unquantized tensor " + ml->params[i]->name);
    LoraSpec ls;
    ls.r = 4;
    ls.alpha = 8;
    ls.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    CHECK(ml->add_lora(ls, 7) == LLMT_OK && ms->add_lora(ls, 7) == LLMT_OK, llmt_last_error());
    for (size_t i = 0; i < ml->params.size(); ++i) {
      Param &p = *ml->params[i];
      if (p.name.find("lora_B") == std::string::npos) continue;
      Rng r(i);
      for (float &x : p.data) x = (r.uniform() * 2 - 1) * 0.05f;
      ms->params[i]->data = p.data;
    }
    Batch b;
    b.B = 2;
    b.T = 7;
    Rng r(11);
    for (int i = 0; i < 14; ++i) {
      b.ids.push_back(static_cast<int32_t>(3 + r.below(static_cast<uint64_t>(ml->config().vocab - 3))));
      b.labels.push_back(b.ids.back());
    }
    RunOptions o;
    o.want_logits = true;
    o.backward = true;
    RunResult rl, rs;
    ml->zero_grad();
    ms->zero_grad();
    CHECK(ml->run(b, o, rl) == LLMT_OK && ms->run(b, o, rs) == LLMT_OK, llmt_last_error());
    CHECK(same_bits(rl.logits, rs.logits) && rl.loss_sum == rs.loss_sum, std::string(k.type) + ": logits bit-identical");
    auto tl = ml->trainable_params(), ts = ms->trainable_params();
    bool g = tl.size() == ts.size() && !tl.empty();
    for (size_t i = 0; g && i < tl.size(); ++i) g = same_bits(tl[i]->grad, ts[i]->grad);
    CHECK(g, std::string(k.type) + ": LoRA gradients bit-identical");
    std::printf("  saved %s%s checkpoint: 4-bit weights, logits and LoRA gradients bit-equal to quantize-on-load\n", k.type,
                k.dq ? "" : " (no double quant)");
  }
  // refusals: another type than stored, quantizing a 4-bit folder again, writing over the input
  QuantSpec fp4;
  CHECK(parse_quant_spec("fp4", fp4) == LLMT_OK, "spec");
  llmt_status st;
  CHECK(!Model::load(tmp + "/q-nf4", st, fp4) && st == LLMT_ERR_BAD_INPUT, "nf4 folder asked as fp4");
  CHECK(llmt_quantize_model((tmp + "/q-nf4").c_str(), (tmp + "/again").c_str(), "nf4", 1) == LLMT_ERR_BAD_INPUT, "already 4-bit");
  CHECK(llmt_quantize_model(dir.c_str(), dir.c_str(), "nf4", 1) == LLMT_ERR_BAD_INPUT, "out == in");
  char *js = nullptr;
  CHECK(llmt_model_inspect((tmp + "/q-nf4").c_str(), &js) == LLMT_OK, llmt_last_error());
  char *js0 = nullptr;
  CHECK(llmt_model_inspect(dir.c_str(), &js0) == LLMT_OK, llmt_last_error());
  if (js && js0) {
    Json a, b0;
    std::string err;
    CHECK(Json::parse(js, a, err) && Json::parse(js0, b0, err), err);
    CHECK(a.get_string("quantization") == "nf4" && a.get_bool("double_quant", false) && b0.get_string("quantization") == "none",
          "inspect reports the quantization");
    CHECK(a.get_int("parameters", 0) == b0.get_int("parameters", -1) && a.get_string("dtype") == b0.get_string("dtype"),
          "inspect counts a 4-bit checkpoint's logical parameters");
  }
  llmt_free_string(js);
  llmt_free_string(js0);
}

int main() {
  char tmpl[] = "/tmp/llmt-q4-XXXXXX";
  const std::string tmp = ::mkdtemp(tmpl);
  cpu::set_num_threads(2);
  test_codes();
  test_error_bounds();
  test_matmuls();
  test_model(tmp);
  test_saved(tmp);
  std::string rm = "rm -rf " + tmp;
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", tmp.c_str());
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_q4: all checks passed\n");
  return 0;
}
