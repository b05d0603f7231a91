// test_ops.cpp — checks for the CPU kernels (cpu/ops.hpp): forwards against naive double references, every
// backward against central finite differences of L = Σ out·R, accumulate/overwrite rules, determinism and
// thread-count independence, and the thread pool itself. Plain checks with messages; non-zero exit on failure.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../cpu/ops.hpp"
#include "../engine/family.hpp"

using namespace llmt::cpu;
using Vec = std::vector<float>;

static std::atomic<int> g_failures{0};  // CHECK may run inside pool chunks
#define CHECK(cond, ...)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s — ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                          \
      std::fprintf(stderr, "\n");                                                 \
      ++g_failures;                                                               \
    }                                                                             \
  } while (0)

static std::mt19937 g_rng(12345);

static Vec rnd(size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  Vec v(n);
  for (auto &x : v) x = u(g_rng);
  return v;
}

static double dotd(const Vec &a, const Vec &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

static bool near(double got, double want, double rtol, double atol) {
  return std::fabs(got - want) <= atol + rtol * std::max(std::fabs(got), std::fabs(want));
}

// Element-wise comparison; reports the first few mismatches.
static void expect_close(const std::string &what, const float *got, const double *want, size_t n, double rtol,
                         double atol) {
  int bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!near(got[i], want[i], rtol, atol)) {
      if (bad < 3) CHECK(false, "%s[%zu]: got %.8g want %.8g", what.c_str(), i, got[i], want[i]);
      ++bad;
    }
  }
  if (bad > 3) std::fprintf(stderr, "  (%s: %d mismatches in all)\n", what.c_str(), bad);
}
static void expect_close(const std::string &what, const Vec &got, const std::vector<double> &want, double rtol,
                         double atol) {
  CHECK(got.size() == want.size(), "%s: size", what.c_str());
  expect_close(what, got.data(), want.data(), std::min(got.size(), want.size()), rtol, atol);
}
static void expect_close(const std::string &what, const Vec &got, const Vec &want, double rtol, double atol) {
  std::vector<double> w(want.begin(), want.end());
  expect_close(what, got, w, rtol, atol);
}

static bool bit_equal(const Vec &a, const Vec &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Central differences of loss() w.r.t. x[i] (x perturbed by ±eps in float) against grad[i], for up to
// max_n evenly spread indices.
static void fd_check(const std::string &what, Vec &x, const Vec &grad, const std::function<double()> &loss,
                     double rtol = 1e-2, double atol = 2e-3, float eps = 1e-3f, size_t max_n = 400) {
  CHECK(x.size() == grad.size(), "%s: gradient size", what.c_str());
  const size_t n = x.size(), stride = n > max_n ? (n + max_n - 1) / max_n : 1;
  int bad = 0;
  for (size_t i = (n > max_n ? 1 : 0); i < n; i += stride) {
    const float x0 = x[i], xp = x0 + eps, xm = x0 - eps;
    x[i] = xp;
    const double lp = loss();
    x[i] = xm;
    const double lm = loss();
    x[i] = x0;
    const double num = (lp - lm) / (static_cast<double>(xp) - static_cast<double>(xm));
    if (!near(grad[i], num, rtol, atol)) {
      if (bad < 3) CHECK(false, "%s: d/dx[%zu] analytic %.7g vs numeric %.7g", what.c_str(), i, grad[i], num);
      ++bad;
    }
  }
  if (bad > 3) std::fprintf(stderr, "  (%s: %d mismatches in all)\n", what.c_str(), bad);
}

// ---- thread pool ----------------------------------------------------------------------------------------------

static void test_pool() {
  const int saved = num_threads();
  CHECK(saved >= 1, "num_threads() >= 1");
  for (int t : {1, 2, 3, 5}) {
    set_num_threads(t);
    CHECK(num_threads() == t, "set_num_threads(%d)", t);
    for (int64_t n : {0, 1, 2, 5, 1000, 100003}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (auto &h : hits) h.store(0);
      std::atomic<int> calls{0};
      parallel_for(n, [&](int64_t b, int64_t e) {
        CHECK(0 <= b && b < e && e <= n, "chunk [%lld, %lld) of %lld", (long long)b, (long long)e, (long long)n);
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
        calls++;
      });
      bool once = true;
      for (auto &h : hits) once = once && h.load() == 1;
      CHECK(once, "every index visited exactly once (threads %d, n %lld)", t, (long long)n);
      CHECK(calls.load() <= std::max(1, t), "at most one chunk per thread (got %d)", calls.load());
    }
  }
  // Nested calls run inline; callers on several threads (serialised inside) all complete.
  set_num_threads(3);
  std::atomic<int64_t> total{0};
  parallel_for(4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      parallel_for(10, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
  });
  CHECK(total.load() == 40, "nested parallel_for covers everything (%lld)", (long long)total.load());
  std::atomic<int64_t> sum{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep)
        parallel_for(1000, [&](int64_t b, int64_t e) { sum += e - b; });
    });
  for (auto &th : callers) th.join();
  CHECK(sum.load() == 3 * 50 * 1000, "concurrent callers: %lld", (long long)sum.load());
  // An exception from any chunk reaches the caller after every chunk is done; the pool keeps working.
  for (int64_t thrower : {0, 2}) {
    bool caught = false;
    try {
      parallel_for(3, [&](int64_t b, int64_t e) {
        if (b <= thrower && thrower < e) throw std::runtime_error("chunk failed");
      });
    } catch (const std::runtime_error &) {
      caught = true;
    }
    CHECK(caught, "exception from chunk holding index %lld reaches the caller", (long long)thrower);
  }
  std::atomic<int64_t> after{0};
  parallel_for(100, [&](int64_t b, int64_t e) { after += e - b; });
  CHECK(after.load() == 100, "pool still works after an exception");
  set_num_threads(saved);
}

// ---- matmul ---------------------------------------------------------------------------------------------------

enum class MM { NT, NN, TN };

static void naive_mm(MM kind, const Vec &A, const Vec &B, std::vector<double> &C, int64_t M, int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = kind == MM::TN ? A[k * M + i] : A[i * K + k];
        const double b = kind == MM::NT ? B[j * K + k] : B[k * N + j];
        s += a * b;
      }
      C[i * N + j] += s;
    }
}

static void run_mm(MM kind, const Vec &A, const Vec &B, Vec &C, int64_t M, int64_t N, int64_t K, bool acc) {
  if (kind == MM::NT) matmul_nt(A.data(), B.data(), C.data(), M, N, K, acc);
  if (kind == MM::NN) matmul_nn(A.data(), B.data(), C.data(), M, N, K, acc);
  if (kind == MM::TN) matmul_tn(A.data(), B.data(), C.data(), M, N, K, acc);
}

static void check_mm(MM kind, int64_t M, int64_t N, int64_t K, bool acc) {
  static const char *names[] = {"matmul_nt", "matmul_nn", "matmul_tn"};
  const Vec A = rnd(static_cast<size_t>(M * K)), B = rnd(static_cast<size_t>(N * K));
  Vec C = rnd(static_cast<size_t>(M * N));
  std::vector<double> ref(C.size(), 0.0);
  if (acc) std::copy(C.begin(), C.end(), ref.begin());
  naive_mm(kind, A, B, ref, M, N, K);
  run_mm(kind, A, B, C, M, N, K, acc);
  char what[96];
  std::snprintf(what, sizeof what, "%s M=%lld N=%lld K=%lld acc=%d", names[static_cast<int>(kind)], (long long)M,
                (long long)N, (long long)K, acc ? 1 : 0);
  expect_close(what, C, ref, 1e-4, 1e-5 * std::sqrt(static_cast<double>(K) + 1.0));
}

static void test_matmul() {
  const int64_t sizes[] = {1, 7, 33, 65, 130};
  for (MM kind : {MM::NT, MM::NN, MM::TN})
    for (int64_t M : sizes)
      for (int64_t N : sizes)
        for (int64_t K : sizes) check_mm(kind, M, N, K, ((M + N + K) % 2) == 1);
  for (MM kind : {MM::NT, MM::NN, MM::TN}) {
    for (bool acc : {false, true}) {
      check_mm(kind, 130, 65, 33, acc);
      check_mm(kind, 13, 2100, 700, acc);  // crosses the depth block (512) and the column block (2048)
      check_mm(kind, 301, 17, 1030, acc);  // narrow N: A read in place, three depth blocks
      check_mm(kind, 200, 300, 16, acc);   // skinny K (LoRA)
    }
    // Degenerate sizes: M/N = 0 touch nothing; K = 0 zeroes C (or leaves it, accumulating).
    Vec A(10, 1.0f), B(10, 1.0f), C(12, 7.0f);
    run_mm(kind, A, B, C, 0, 3, 2, false);
    run_mm(kind, A, B, C, 3, 0, 2, false);
    CHECK(std::all_of(C.begin(), C.end(), [](float v) { return v == 7.0f; }), "M or N = 0 leaves C alone");
    run_mm(kind, A, B, C, 3, 4, 0, true);
    CHECK(std::all_of(C.begin(), C.end(), [](float v) { return v == 7.0f; }), "K = 0 with accumulate leaves C");
    run_mm(kind, A, B, C, 3, 4, 0, false);
    CHECK(std::all_of(C.begin(), C.end(), [](float v) { return v == 0.0f; }), "K = 0 overwrite zeroes C");
  }
}

static void test_bias() {
  const int64_t rows = 9, cols = 300;  // cols crosses the 256-column strip
  Vec y = rnd(rows * cols), b = rnd(cols);
  std::vector<double> ref(y.begin(), y.end());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] += b[c];
  add_bias(y.data(), b.data(), rows, cols);
  expect_close("add_bias", y, ref, 1e-6, 1e-7);

  const Vec dy = rnd(rows * cols);
  Vec db(cols, 0.0f);
  bias_backward(dy.data(), db.data(), rows, cols);
  Vec x0 = rnd(rows * cols);
  auto loss = [&]() {
    Vec yy = x0;
    add_bias(yy.data(), b.data(), rows, cols);
    return dotd(yy, dy);
  };
  fd_check("bias_backward db", b, db, loss);
  Vec db2 = db;
  bias_backward(dy.data(), db2.data(), rows, cols);
  bool doubled = true;
  for (int64_t c = 0; c < cols; ++c) doubled = doubled && db2[c] == 2.0f * db[c];
  CHECK(doubled, "bias_backward accumulates (twice = 2x)");
}

// ---- normalisation --------------------------------------------------------------------------------------------

static void test_rmsnorm() {
  const int64_t rows = 4, cols = 37;
  const float eps = 1e-5f;
  Vec x = rnd(rows * cols), w = rnd(cols, 0.5f, 1.5f), y(rows * cols), rstd(rows);
  rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, cols, eps);
  std::vector<double> ref(y.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t c = 0; c < cols; ++c) ms += static_cast<double>(x[r * cols + c]) * x[r * cols + c];
    const double rs = 1.0 / std::sqrt(ms / cols + eps);
    CHECK(near(rstd[r], rs, 1e-5, 0), "rmsnorm rstd[%lld]", (long long)r);
    for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] = w[c] * x[r * cols + c] * rs;
  }
  expect_close("rmsnorm_forward", y, ref, 1e-5, 1e-6);

  const Vec R = rnd(rows * cols);
  Vec dx(rows * cols, 123.0f), dw(cols, 0.0f);
  rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows, cols);
  auto loss = [&]() {
    Vec yy(rows * cols), rr(rows);
    rmsnorm_forward(x.data(), w.data(), yy.data(), rr.data(), rows, cols, eps);
    return dotd(yy, R);
  };
  fd_check("rmsnorm dx", x, dx, loss);
  fd_check("rmsnorm dw", w, dw, loss);
  Vec dx2(rows * cols, -5.0f), dw2 = dw;
  rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), dx2.data(), dw2.data(), rows, cols);
  CHECK(bit_equal(dx, dx2), "rmsnorm dx is overwritten");
  bool doubled = true;
  for (int64_t c = 0; c < cols; ++c) doubled = doubled && dw2[c] == 2.0f * dw[c];
  CHECK(doubled, "rmsnorm dw accumulates");
  Vec dx3(rows * cols);
  rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), dx3.data(), nullptr, rows, cols);
  CHECK(bit_equal(dx, dx3), "rmsnorm with dw = null gives the same dx");
  Vec inplace = R, dw4(cols, 0.0f);
  rmsnorm_backward(inplace.data(), x.data(), w.data(), rstd.data(), inplace.data(), dw4.data(), rows, cols);
  Vec dw1(cols, 0.0f), dx1(rows * cols);
  rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), dx1.data(), dw1.data(), rows, cols);
  CHECK(bit_equal(inplace, dx1) && bit_equal(dw4, dw1), "rmsnorm backward with dx aliasing dy");
}

static void test_layernorm() {
  const int64_t rows = 5, cols = 29;
  const float eps = 1e-5f;
  Vec x = rnd(rows * cols, -2.0f, 3.0f), w = rnd(cols, 0.5f, 1.5f), b = rnd(cols), y(rows * cols), mean(rows),
      rstd(rows);
  layernorm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, cols, eps);
  std::vector<double> ref(y.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c) mu += x[r * cols + c];
    mu /= cols;
    for (int64_t c = 0; c < cols; ++c) var += (x[r * cols + c] - mu) * (x[r * cols + c] - mu);
    var /= cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    CHECK(near(mean[r], mu, 1e-5, 1e-6) && near(rstd[r], rs, 1e-5, 0), "layernorm mean/rstd[%lld]", (long long)r);
    for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] = (x[r * cols + c] - mu) * rs * w[c] + b[c];
  }
  expect_close("layernorm_forward", y, ref, 1e-5, 1e-5);

  const Vec R = rnd(rows * cols);
  Vec dx(rows * cols, 9.0f), dw(cols, 0.0f), db(cols, 0.0f);
  layernorm_backward(R.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), rows,
                     cols);
  auto loss = [&]() {
    Vec yy(rows * cols), mm(rows), rr(rows);
    layernorm_forward(x.data(), w.data(), b.data(), yy.data(), mm.data(), rr.data(), rows, cols, eps);
    return dotd(yy, R);
  };
  fd_check("layernorm dx", x, dx, loss);
  fd_check("layernorm dw", w, dw, loss);
  fd_check("layernorm db", b, db, loss);
  Vec dx2(rows * cols, 1.0f), dw2 = dw, db2 = db;
  layernorm_backward(R.data(), x.data(), w.data(), mean.data(), rstd.data(), dx2.data(), dw2.data(), db2.data(),
                     rows, cols);
  CHECK(bit_equal(dx, dx2), "layernorm dx is overwritten");
  bool doubled = true;
  for (int64_t c = 0; c < cols; ++c) doubled = doubled && dw2[c] == 2.0f * dw[c] && db2[c] == 2.0f * db[c];
  CHECK(doubled, "layernorm dw, db accumulate");
  Vec dx3(rows * cols);
  layernorm_backward(R.data(), x.data(), w.data(), mean.data(), rstd.data(), dx3.data(), nullptr, nullptr, rows,
                     cols);
  CHECK(bit_equal(dx, dx3), "layernorm with dw = db = null gives the same dx");
  Vec inplace = R, dw4(cols, 0.0f), db4(cols, 0.0f);
  layernorm_backward(inplace.data(), x.data(), w.data(), mean.data(), rstd.data(), inplace.data(), dw4.data(),
                     db4.data(), rows, cols);
  Vec dw1(cols, 0.0f), db1(cols, 0.0f), dx1(rows * cols);
  layernorm_backward(R.data(), x.data(), w.data(), mean.data(), rstd.data(), dx1.data(), dw1.data(), db1.data(), rows,
                     cols);
  CHECK(bit_equal(inplace, dx1) && bit_equal(dw4, dw1) && bit_equal(db4, db1),
        "layernorm backward with dx aliasing dy");
}

// ---- RoPE -----------------------------------------------------------------------------------------------------

static void test_rope() {
  const int64_t rows = 5, heads = 3, hd = 10, rot = 8, half = rot / 2;
  const float pos_scale = 0.5f;
  const std::vector<int32_t> pos = {0, 1, 3, 7, 1000};
  Vec inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(rot)));

  Vec x = rnd(rows * heads * hd);
  // HF: cos/sin = cat(freqs, freqs) in fp32; q_rot·cos + rotate_half(q_rot)·sin, rotate_half = cat(−x2, x1).
  Vec ref = x;
  for (int64_t r = 0; r < rows; ++r) {
    float cosv[rot], sinv[rot];
    const float t = static_cast<float>(pos[r]) * pos_scale;
    for (int64_t i = 0; i < rot; ++i) {
      const float ang = t * inv_freq[i % half];
      cosv[i] = std::cos(ang);
      sinv[i] = std::sin(ang);
    }
    for (int64_t h = 0; h < heads; ++h) {
      const float *xi = &x[(r * heads + h) * hd];
      float rh[rot];
      for (int64_t i = 0; i < half; ++i) {
        rh[i] = -xi[i + half];
        rh[i + half] = xi[i];
      }
      for (int64_t i = 0; i < rot; ++i) ref[(r * heads + h) * hd + i] = xi[i] * cosv[i] + rh[i] * sinv[i];
    }
  }
  Vec y = x;
  rope_forward(y.data(), pos.data(), inv_freq.data(), rows, heads, hd, rot, pos_scale);
  expect_close("rope_forward vs HF rotate_half", y, ref, 1e-6, 1e-6);
  bool untouched = true;
  for (int64_t r = 0; r < rows * heads; ++r)
    for (int64_t i = rot; i < hd; ++i) untouched = untouched && y[r * hd + i] == x[r * hd + i];
  CHECK(untouched, "rope leaves dims >= rot_dims alone");

  Vec back = y;
  rope_backward(back.data(), pos.data(), inv_freq.data(), rows, heads, hd, rot, pos_scale);
  expect_close("rope backward∘forward = identity", back, x, 1e-5, 1e-6);

  const Vec R = rnd(rows * heads * hd);
  Vec dx = R;
  rope_backward(dx.data(), pos.data(), inv_freq.data(), rows, heads, hd, rot, pos_scale);
  auto loss = [&]() {
    Vec yy = x;
    rope_forward(yy.data(), pos.data(), inv_freq.data(), rows, heads, hd, rot, pos_scale);
    return dotd(yy, R);
  };
  fd_check("rope dx", x, dx, loss);
}

// ---- activations ----------------------------------------------------------------------------------------------

static void test_swiglu() {
  const int64_t n = 45;
  Vec gate = rnd(n, -4.0f, 4.0f), up = rnd(n, -2.0f, 2.0f), out(n);
  gate[0] = 30.0f;
  gate[1] = -30.0f;
  gate[2] = 0.0f;
  swiglu_forward(gate.data(), up.data(), out.data(), n);
  std::vector<double> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i]))) * up[i];
  expect_close("swiglu_forward", out, ref, 1e-5, 1e-7);

  const Vec R = rnd(n);
  Vec dg(n, 3.0f), du(n, 3.0f);
  swiglu_backward(R.data(), gate.data(), up.data(), dg.data(), du.data(), n);
  auto loss = [&]() {
    Vec o(n);
    swiglu_forward(gate.data(), up.data(), o.data(), n);
    return dotd(o, R);
  };
  fd_check("swiglu dgate", gate, dg, loss);
  fd_check("swiglu dup", up, du, loss);
}

static void test_gelu() {
  const int64_t n = 41;
  for (Gelu kind : {Gelu::Erf, Gelu::Tanh}) {
    const char *name = kind == Gelu::Erf ? "gelu(erf)" : "gelu(tanh)";
    Vec x = rnd(n, -5.0f, 5.0f), y(n);
    x[0] = 0.0f;
    x[1] = -12.0f;
    x[2] = 12.0f;
    gelu_forward(x.data(), y.data(), n, kind);
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) {
      const double v = x[i];
      ref[i] = kind == Gelu::Erf
                   ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))
                   : 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    }
    expect_close(std::string(name) + " forward", y, ref, 1e-5, 1e-6);
    const Vec R = rnd(n);
    Vec dx(n, 2.0f);
    gelu_backward(R.data(), x.data(), dx.data(), n, kind);
    auto loss = [&]() {
      Vec yy(n);
      gelu_forward(x.data(), yy.data(), n, kind);
      return dotd(yy, R);
    };
    fd_check(std::string(name) + " dx", x, dx, loss);
  }
}

// ---- attention ------------------------------------------------------------------------------------------------

struct AttnShape {
  int64_t B, T, nh, nkv, hd;
};

static void naive_attention(const AttnShape &s, const Vec &q, const Vec &k, const Vec &v, float scale,
                            std::vector<double> &out, std::vector<double> &lse) {
  const int64_t group = s.nh / s.nkv;
  out.assign(static_cast<size_t>(s.B * s.T * s.nh * s.hd), 0.0);
  lse.assign(static_cast<size_t>(s.B * s.nh * s.T), 0.0);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.nh; ++h)
      for (int64_t i = 0; i < s.T; ++i) {
        // Full row of scores with the causal mask as −inf, then an ordinary softmax.
        std::vector<double> sc(static_cast<size_t>(s.T));
        double m = -INFINITY;
        for (int64_t j = 0; j < s.T; ++j) {
          double d = 0;
          for (int64_t e = 0; e < s.hd; ++e)
            d += static_cast<double>(q[((b * s.T + i) * s.nh + h) * s.hd + e]) *
                 k[((b * s.T + j) * s.nkv + h / group) * s.hd + e];
          sc[j] = j <= i ? d * scale : -INFINITY;
          m = std::max(m, sc[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < s.T; ++j) z += std::exp(sc[j] - m);
        lse[(b * s.nh + h) * s.T + i] = m + std::log(z);
        for (int64_t j = 0; j < s.T; ++j) {
          const double p = std::exp(sc[j] - m) / z;
          for (int64_t e = 0; e < s.hd; ++e)
            out[((b * s.T + i) * s.nh + h) * s.hd + e] += p * v[((b * s.T + j) * s.nkv + h / group) * s.hd + e];
        }
      }
}

static void test_attention_shape(const AttnShape &s, bool fd) {
  char tag[96];
  std::snprintf(tag, sizeof tag, "attention B=%lld T=%lld nh=%lld nkv=%lld hd=%lld", (long long)s.B, (long long)s.T,
                (long long)s.nh, (long long)s.nkv, (long long)s.hd);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  const size_t nq = static_cast<size_t>(s.B * s.T * s.nh * s.hd), nk = static_cast<size_t>(s.B * s.T * s.nkv * s.hd);
  Vec q = rnd(nq, -2.0f, 2.0f), k = rnd(nk, -2.0f, 2.0f), v = rnd(nk), out(nq), lse(s.B * s.nh * s.T);
  attention_forward(q.data(), k.data(), v.data(), out.data(), lse.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale);
  std::vector<double> rout, rlse;
  naive_attention(s, q, k, v, scale, rout, rlse);
  expect_close(std::string(tag) + " out", out, rout, 1e-4, 1e-5);
  expect_close(std::string(tag) + " lse", lse, rlse, 1e-5, 1e-5);

  const Vec R = rnd(nq);
  Vec dq(nq, 7.0f), dk(nk, 7.0f), dv(nk, 7.0f);
  attention_backward(R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dq.data(), dk.data(), dv.data(),
                     s.B, s.T, s.nh, s.nkv, s.hd, scale);
  Vec dq2(nq, -1.0f), dk2(nk, -1.0f), dv2(nk, -1.0f);
  attention_backward(R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dq2.data(), dk2.data(),
                     dv2.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale);
  CHECK(bit_equal(dq, dq2) && bit_equal(dk, dk2) && bit_equal(dv, dv2),
        "%s: dq/dk/dv overwritten, bit-identical on a rerun", tag);
  if (!fd) return;
  auto loss = [&]() {
    Vec o(nq), l(s.B * s.nh * s.T);
    attention_forward(q.data(), k.data(), v.data(), o.data(), l.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale);
    return dotd(o, R);
  };
  fd_check(std::string(tag) + " dq", q, dq, loss);
  fd_check(std::string(tag) + " dk", k, dk, loss);
  fd_check(std::string(tag) + " dv", v, dv, loss);
}

static void test_attention() {
  test_attention_shape({2, 5, 4, 2, 8}, true);   // GQA
  test_attention_shape({2, 5, 4, 1, 8}, true);   // MQA
  test_attention_shape({2, 5, 4, 4, 8}, true);   // MHA
  test_attention_shape({1, 37, 2, 1, 13}, true);  // several key blocks, odd head_dim
  test_attention_shape({1, 1, 3, 3, 4}, true);   // a single position
  test_attention_shape({2, 70, 6, 2, 16}, false);
}

// ---- loss -----------------------------------------------------------------------------------------------------

static void test_cross_entropy() {
  const int64_t N = 7, V = 37;
  Vec logits = rnd(N * V, -3.0f, 3.0f);
  for (int64_t c = 0; c < V; ++c) logits[2 * V + c] += 500.0f;  // needs the max subtracted
  const std::vector<int32_t> targets = {3, -100, 36, 0, -1, 17, 5};
  Vec lse(N);
  int64_t count = -1;
  const double total = cross_entropy_forward(logits.data(), targets.data(), lse.data(), N, V, &count);
  double ref = 0;
  int64_t rcount = 0;
  for (int64_t r = 0; r < N; ++r) {
    double m = -INFINITY, z = 0;
    for (int64_t c = 0; c < V; ++c) m = std::max(m, static_cast<double>(logits[r * V + c]));
    for (int64_t c = 0; c < V; ++c) z += std::exp(logits[r * V + c] - m);
    const double l = m + std::log(z);
    CHECK(near(lse[r], l, 1e-6, 1e-6), "cross-entropy lse[%lld] %.8g vs %.8g", (long long)r, lse[r], l);
    if (targets[r] >= 0) {
      ref += l - logits[r * V + targets[r]];
      ++rcount;
    }
  }
  CHECK(count == rcount, "cross-entropy count %lld vs %lld", (long long)count, (long long)rcount);
  CHECK(near(total, ref, 1e-6, 1e-5), "cross-entropy sum %.10g vs %.10g", total, ref);

  // Backward on moderate logits (at 500 a ±1e-3 float difference of the loss is mostly rounding).
  for (int64_t c = 0; c < V; ++c) logits[2 * V + c] -= 500.0f;
  cross_entropy_forward(logits.data(), targets.data(), lse.data(), N, V, &count);
  const float scale = 1.0f / static_cast<float>(count);
  Vec dl(N * V, 5.0f);
  cross_entropy_backward(logits.data(), targets.data(), lse.data(), dl.data(), N, V, scale);
  bool zero = true;
  for (int64_t r : {1, 4})
    for (int64_t c = 0; c < V; ++c) zero = zero && dl[r * V + c] == 0.0f;
  CHECK(zero, "ignored rows get zero gradient");
  Vec inplace = logits;  // dlogits written over the logits (llm.c style)
  cross_entropy_backward(inplace.data(), targets.data(), lse.data(), inplace.data(), N, V, scale);
  CHECK(bit_equal(inplace, dl), "cross-entropy backward in place (dlogits == logits)");
  auto loss = [&]() {
    Vec l(N);
    int64_t cnt = 0;
    return scale * cross_entropy_forward(logits.data(), targets.data(), l.data(), N, V, &cnt);
  };
  fd_check("cross-entropy dlogits", logits, dl, loss, 1e-2, 1e-3);
}

// ---- embedding ------------------------------------------------------------------------------------------------

static void test_embedding() {
  const int64_t V = 5, H = 70, N = 9;  // H crosses a 64-column strip
  const std::vector<int32_t> ids = {3, 1, 3, 0, 4, 3, 1, 2, 3};
  Vec table = rnd(V * H), out(N * H);
  embedding_forward(table.data(), ids.data(), out.data(), N, H);
  bool ok = true;
  for (int64_t n = 0; n < N; ++n)
    ok = ok && std::memcmp(&out[n * H], &table[ids[n] * H], sizeof(float) * H) == 0;
  CHECK(ok, "embedding_forward copies rows");

  const Vec R = rnd(N * H);
  const Vec d0 = rnd(V * H);
  Vec dt = d0, ref = d0;
  embedding_backward(R.data(), ids.data(), dt.data(), N, H, V);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < H; ++c) ref[ids[n] * H + c] += R[n * H + c];
  CHECK(bit_equal(dt, ref), "embedding_backward accumulates in row order (repeated ids)");
  Vec grad(V * H, 0.0f);
  embedding_backward(R.data(), ids.data(), grad.data(), N, H, V);
  auto loss = [&]() {
    Vec o(N * H);
    embedding_forward(table.data(), ids.data(), o.data(), N, H);
    return dotd(o, R);
  };
  fd_check("embedding dtable", table, grad, loss);
}

// transpose (LoRA on an embedding looks lora_embedding_A [r, V] up through it): sizes off the 32×32 tiles, += too
static void test_transpose() {
  const int64_t R = 37, C = 70;
  const Vec in = rnd(R * C), base = rnd(C * R);
  Vec out(C * R), acc = base;
  transpose(in.data(), out.data(), R, C, false);
  transpose(in.data(), acc.data(), R, C, true);
  bool ok = true, ok_acc = true;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      ok = ok && out[c * R + r] == in[r * C + c];
      ok_acc = ok_acc && acc[c * R + r] == base[c * R + r] + in[r * C + c];
    }
  CHECK(ok, "transpose: out[c][r] = in[r][c]");
  CHECK(ok_acc, "transpose with acc adds to out");
}

// ---- optimizer and reductions -----------------------------------------------------------------------------------

static void test_adamw() {
  const int64_t n = 6;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
  Vec p = rnd(n), m(n, 0.0f), v(n, 0.0f);
  std::vector<double> pd(p.begin(), p.end()), md(n, 0.0), vd(n, 0.0);
  for (int64_t step = 1; step <= 3; ++step) {
    Vec g = rnd(n);
    g[0] = 0.0f;  // a zero gradient: only the decay moves it on step 1
    adamw_step(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, step);
    for (int64_t i = 0; i < n; ++i) {
      pd[i] *= 1.0 - static_cast<double>(lr) * wd;
      md[i] = b1 * md[i] + (1.0 - b1) * g[i];
      vd[i] = b2 * vd[i] + (1.0 - b2) * static_cast<double>(g[i]) * g[i];
      const double bc1 = 1.0 - std::pow(static_cast<double>(b1), step);
      const double bc2 = 1.0 - std::pow(static_cast<double>(b2), step);
      pd[i] -= (lr / bc1) * md[i] / (std::sqrt(vd[i]) / std::sqrt(bc2) + eps);
    }
    expect_close("adamw p step " + std::to_string(step), p, pd, 1e-5, 1e-7);
    expect_close("adamw m step " + std::to_string(step), m, md, 1e-5, 1e-8);
    expect_close("adamw v step " + std::to_string(step), v, vd, 1e-5, 1e-10);
  }
}

static void test_reductions() {
  const int64_t n = 300007;
  Vec x = rnd(n);
  double ref = 0;
  for (float f : x) ref += static_cast<double>(f) * f;
  CHECK(near(sum_squares(x.data(), n), ref, 1e-12, 0), "sum_squares %.15g vs %.15g", sum_squares(x.data(), n), ref);
  CHECK(sum_squares(x.data(), 0) == 0.0, "sum_squares of nothing");
  Vec y = x;
  scale_inplace(y.data(), 0.25f, n);
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok = ok && y[i] == x[i] * 0.25f;
  CHECK(ok, "scale_inplace");
}

// ---- determinism ----------------------------------------------------------------------------------------------

// Runs every kernel with a reduction on fixed inputs and returns all outputs concatenated.
static Vec reduction_outputs() {
  std::mt19937 saved = g_rng;
  g_rng.seed(777);
  Vec all;
  auto add = [&](const Vec &v) { all.insert(all.end(), v.begin(), v.end()); };
  {
    const int64_t M = 150, N = 70, K = 600;
    Vec A = rnd(M * K), B = rnd(N * K), C(M * N), C2(M * N), Bt = rnd(K * N), C3(M * N);
    matmul_nt(A.data(), B.data(), C.data(), M, N, K, false);
    matmul_nn(A.data(), Bt.data(), C2.data(), M, N, K, false);
    Vec At = rnd(K * M);
    matmul_tn(At.data(), Bt.data(), C3.data(), M, N, K, false);
    add(C), add(C2), add(C3);
    Vec W = rnd(300 * 500), X = rnd(64 * 500), Y(64 * 300);
    matmul_nt(X.data(), W.data(), Y.data(), 64, 300, 500, false);
    add(Y);
  }
  for (const AttnShape s : {AttnShape{2, 45, 4, 2, 16}, AttnShape{1, 230, 4, 1, 40}}) {  // (MQA: key tiles cut by threads)
    const size_t nq = s.B * s.T * s.nh * s.hd, nk = s.B * s.T * s.nkv * s.hd;
    Vec q = rnd(nq), k = rnd(nk), v = rnd(nk), o(nq), l(s.B * s.nh * s.T), R = rnd(nq), dq(nq), dk(nk), dv(nk);
    attention_forward(q.data(), k.data(), v.data(), o.data(), l.data(), s.B, s.T, s.nh, s.nkv, s.hd, 0.25f);
    attention_backward(R.data(), q.data(), k.data(), v.data(), o.data(), l.data(), dq.data(), dk.data(), dv.data(),
                       s.B, s.T, s.nh, s.nkv, s.hd, 0.25f);
    add(o), add(l), add(dq), add(dk), add(dv);
  }
  {
    const int64_t rows = 300, cols = 530;
    Vec x = rnd(rows * cols), w = rnd(cols), b = rnd(cols), y(rows * cols), mu(rows), rs(rows), dy = rnd(rows * cols),
        dx(rows * cols), dw(cols, 0.0f), db(cols, 0.0f);
    rmsnorm_forward(x.data(), w.data(), y.data(), rs.data(), rows, cols, 1e-6f);
    rmsnorm_backward(dy.data(), x.data(), w.data(), rs.data(), dx.data(), dw.data(), rows, cols);
    add(y), add(dx), add(dw);
    layernorm_forward(x.data(), w.data(), b.data(), y.data(), mu.data(), rs.data(), rows, cols, 1e-5f);
    layernorm_backward(dy.data(), x.data(), w.data(), mu.data(), rs.data(), dx.data(), dw.data(), db.data(), rows,
                       cols);
    add(y), add(dx), add(dw), add(db);
    const double ss = sum_squares(x.data(), rows * cols);
    all.push_back(static_cast<float>(ss));
    all.push_back(static_cast<float>(ss - static_cast<float>(ss)));
  }
  {
    const int64_t N = 600, V = 257;
    Vec logits = rnd(N * V, -4.0f, 4.0f), lse(N), dl(N * V);
    std::vector<int32_t> t(N);
    for (int64_t i = 0; i < N; ++i) t[i] = i % 5 == 0 ? -100 : static_cast<int32_t>((i * 31) % V);
    int64_t cnt = 0;
    const double tot = cross_entropy_forward(logits.data(), t.data(), lse.data(), N, V, &cnt);
    cross_entropy_backward(logits.data(), t.data(), lse.data(), dl.data(), N, V, 1.0f / cnt);
    all.push_back(static_cast<float>(tot));
    all.push_back(static_cast<float>(tot - static_cast<float>(tot)));
    add(lse), add(dl);
  }
  {
    const int64_t N = 1000, H = 200, V = 37;
    std::vector<int32_t> ids(N);
    for (int64_t i = 0; i < N; ++i) ids[i] = static_cast<int32_t>((i * 7) % V);
    Vec dout = rnd(N * H), dt(V * H, 0.0f);
    embedding_backward(dout.data(), ids.data(), dt.data(), N, H, V);
    add(dt);
  }
  g_rng = saved;
  return all;
}

static void test_determinism() {
  const int saved = num_threads();
  set_num_threads(std::max(2, saved));
  const Vec a = reduction_outputs(), b = reduction_outputs();
  CHECK(bit_equal(a, b), "two identical runs give bit-identical results");
  for (int t : {1, 3, 4}) {
    set_num_threads(t);
    CHECK(bit_equal(a, reduction_outputs()), "results do not depend on the thread count (%d threads)", t);
  }
  set_num_threads(saved);
}


// ---- attention with ALiBi, a bidirectional prefix (ChatGLM-6B) and packed segments; the KV-cache kernel ----------

// Full-row reference: s_ij = scale·q·k + slope_h·j; visible iff (j ≤ i or j < prefix[b]) and j ≥ seg_start.
static void naive_attention_ex(const AttnShape &s, const Vec &q, const Vec &k, const Vec &v, float scale,
                               const float *alibi, const int32_t *prefix, const int32_t *seg,
                               std::vector<double> &out) {
  const int64_t group = s.nh / s.nkv;
  out.assign(static_cast<size_t>(s.B * s.T * s.nh * s.hd), 0.0);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.nh; ++h)
      for (int64_t i = 0; i < s.T; ++i) {
        std::vector<double> sc(static_cast<size_t>(s.T));
        double m = -INFINITY;
        for (int64_t j = 0; j < s.T; ++j) {
          const bool vis = (j <= i || (prefix && j < prefix[b])) && (!seg || j >= seg[b * s.T + i]);
          double d = 0;
          for (int64_t e = 0; e < s.hd; ++e)
            d += static_cast<double>(q[((b * s.T + i) * s.nh + h) * s.hd + e]) * k[((b * s.T + j) * s.nkv + h / group) * s.hd + e];
          sc[j] = vis ? d * scale + (alibi ? static_cast<double>(alibi[h]) * j : 0.0) : -INFINITY;
          m = std::max(m, sc[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < s.T; ++j) z += std::exp(sc[j] - m);
        for (int64_t j = 0; j < s.T; ++j) {
          const double p = std::exp(sc[j] - m) / z;
          for (int64_t e = 0; e < s.hd; ++e)
            out[((b * s.T + i) * s.nh + h) * s.hd + e] += p * v[((b * s.T + j) * s.nkv + h / group) * s.hd + e];
        }
      }
}

static void test_attention_ex(const AttnShape &s, bool use_alibi, bool use_prefix, bool use_seg) {
  char tag[128];
  std::snprintf(tag, sizeof tag, "attention%s%s%s B=%lld T=%lld nh=%lld nkv=%lld", use_alibi ? " alibi" : "",
                use_prefix ? " prefix" : "", use_seg ? " segments" : "", (long long)s.B, (long long)s.T, (long long)s.nh,
                (long long)s.nkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  const size_t nq = static_cast<size_t>(s.B * s.T * s.nh * s.hd), nk = static_cast<size_t>(s.B * s.T * s.nkv * s.hd);
  Vec q = rnd(nq, -2.0f, 2.0f), k = rnd(nk, -2.0f, 2.0f), v = rnd(nk), out(nq), lse(s.B * s.nh * s.T);
  std::vector<float> slopes;
  if (use_alibi) slopes = llmt::alibi_slopes_bloom(s.nh);
  std::vector<int32_t> prefix, seg;
  for (int64_t b = 0; b < s.B; ++b) prefix.push_back(static_cast<int32_t>(std::min<int64_t>(s.T, 3 + 17 * b)));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t) seg.push_back(static_cast<int32_t>(t < s.T / 2 ? 0 : s.T / 2));
  const float *al = use_alibi ? slopes.data() : nullptr;
  const int32_t *pf = use_prefix ? prefix.data() : nullptr, *sg = use_seg ? seg.data() : nullptr;
  attention_forward(q.data(), k.data(), v.data(), out.data(), lse.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale, sg, al, pf);
  std::vector<double> ref;
  naive_attention_ex(s, q, k, v, scale, al, pf, sg, ref);
  expect_close(std::string(tag) + " out", out, ref, 1e-4, 1e-5);
  const Vec R = rnd(nq);
  Vec dq(nq), dk(nk), dv(nk);
  attention_backward(R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dq.data(), dk.data(), dv.data(), s.B,
                     s.T, s.nh, s.nkv, s.hd, scale, sg, al, pf);
  auto loss = [&]() {
    Vec o(nq), l(s.B * s.nh * s.T);
    attention_forward(q.data(), k.data(), v.data(), o.data(), l.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale, sg, al, pf);
    return dotd(o, R);
  };
  fd_check(std::string(tag) + " dq", q, dq, loss);
  fd_check(std::string(tag) + " dk", k, dk, loss);
  fd_check(std::string(tag) + " dv", v, dv, loss);
  if (use_seg || s.B != 1) return;
  // the KV-cache kernel: a prompt chunk then one token at a time gives the full attention's rows
  Vec cached(nq);
  const int64_t first = std::max<int64_t>(1, use_prefix ? prefix[0] : s.T / 2), qd = s.nh * s.hd;
  attention_cached(q.data(), k.data(), v.data(), cached.data(), 0, first, s.nh, s.nkv, s.hd, scale, al, use_prefix ? prefix[0] : 0);
  for (int64_t p = first; p < s.T; ++p)
    attention_cached(q.data() + p * qd, k.data(), v.data(), cached.data() + p * qd, p, 1, s.nh, s.nkv, s.hd, scale, al,
                     use_prefix ? prefix[0] : 0);
  expect_close(std::string(tag) + " cached", cached, ref, 1e-4, 1e-5);
  if (use_prefix || s.T < 8) return;
  // sliding-window attention (the model folds the window into seg_start: key j visible to query i iff j > i − W):
  // the KV-cache kernel with `window` W — a prompt chunk, then a token at a time — gives the windowed rows too
  const int64_t W = 5;
  std::vector<int32_t> wseg;
  for (int64_t t = 0; t < s.T; ++t) wseg.push_back(static_cast<int32_t>(std::max<int64_t>(0, t - W + 1)));
  std::vector<double> wref;
  naive_attention_ex(s, q, k, v, scale, al, nullptr, wseg.data(), wref);
  Vec wout(nq), wlse(s.B * s.nh * s.T), wcached(nq);
  attention_forward(q.data(), k.data(), v.data(), wout.data(), wlse.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale, wseg.data(), al);
  expect_close(std::string(tag) + " window out", wout, wref, 1e-4, 1e-5);
  attention_cached(q.data(), k.data(), v.data(), wcached.data(), 0, first, s.nh, s.nkv, s.hd, scale, al, 0, W);
  for (int64_t p = first; p < s.T; ++p)
    attention_cached(q.data() + p * qd, k.data(), v.data(), wcached.data() + p * qd, p, 1, s.nh, s.nkv, s.hd, scale, al, 0, W);
  expect_close(std::string(tag) + " window cached", wcached, wref, 1e-4, 1e-5);
  double moved = 0;  // (and the window matters: rows past it differ from full attention)
  for (size_t e = 0; e < wref.size(); ++e) moved = std::max(moved, std::abs(wref[e] - ref[e]));
  CHECK(moved > 1e-3, "%s: the window changes nothing (max diff %g)", tag, moved);
}

// The forward and backward in double, straight from the definitions (P, dP, D, dS), every mask option: the
// reference for shapes with many tiles of queries and keys, where finite differences would be slow.
struct AttnGrads {
  std::vector<double> out, lse, dq, dk, dv;
};
static AttnGrads exact_attention(const AttnShape &s, const Vec &q, const Vec &k, const Vec &v, const Vec &R, float scale,
                                 const float *alibi, const int32_t *prefix, const int32_t *seg) {
  const int64_t group = s.nh / s.nkv, hd = s.hd, T = s.T;
  AttnGrads g;
  g.out.assign(q.size(), 0.0), g.dq.assign(q.size(), 0.0), g.dk.assign(k.size(), 0.0), g.dv.assign(k.size(), 0.0);
  g.lse.assign(static_cast<size_t>(s.B * s.nh * T), 0.0);
  std::vector<double> p(static_cast<size_t>(T)), dp(static_cast<size_t>(T));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.nh; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const size_t qi = static_cast<size_t>(((b * T + i) * s.nh + h) * hd);
        auto kv = [&](int64_t j) { return static_cast<size_t>(((b * T + j) * s.nkv + h / group) * hd); };
        double m = -INFINITY;
        for (int64_t j = 0; j < T; ++j) {
          const bool vis = (j <= i || (prefix && j < prefix[b])) && (!seg || j >= seg[b * T + i]);
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) d += static_cast<double>(q[qi + e]) * k[kv(j) + e];
          p[j] = vis ? d * scale + (alibi ? static_cast<double>(alibi[h]) * j : 0.0) : -INFINITY;
          m = std::max(m, p[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < T; ++j) z += std::exp(p[j] - m);
        g.lse[static_cast<size_t>((b * s.nh + h) * T + i)] = m + std::log(z);
        for (int64_t j = 0; j < T; ++j) p[j] = std::exp(p[j] - m) / z;
        double D = 0;
        for (int64_t j = 0; j < T; ++j)
          for (int64_t e = 0; e < hd; ++e) g.out[qi + e] += p[j] * v[kv(j) + e];
        for (int64_t e = 0; e < hd; ++e) D += R[qi + e] * g.out[qi + e];
        for (int64_t j = 0; j < T; ++j) {
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) d += static_cast<double>(R[qi + e]) * v[kv(j) + e];
          const double ds = p[j] * (d - D);
          for (int64_t e = 0; e < hd; ++e) {
            g.dq[qi + e] += scale * ds * k[kv(j) + e];
            g.dk[kv(j) + e] += scale * ds * q[qi + e];
            g.dv[kv(j) + e] += p[j] * R[qi + e];
          }
        }
      }
  return g;
}

// Shapes of several query and key tiles (partial last tiles, head_dim not a multiple of the micro-kernel's width,
// GQA), each mask option: outputs and all three gradients against the exact reference; a row's result does not
// depend on the rows after it (T), on the batch, or on the thread count.
static void test_attention_tiles() {
  struct Case {
    AttnShape s;
    bool alibi, prefix, seg;
  };
  const Case cases[] = {
      {{1, 211, 4, 2, 40}, false, false, false},  // 3 query tiles, 4 key tiles, GQA, head_dim 40
      {{2, 130, 2, 2, 64}, false, false, false},
      {{1, 97, 2, 1, 128}, false, false, false},  // one query past a tile, MQA
      {{1, 230, 3, 3, 24}, false, false, true},   // packed samples: whole tiles of another sample skipped
      {{2, 150, 4, 2, 16}, true, true, false},    // ALiBi + a prefix longer than a key tile in row 1
      {{1, 200, 2, 2, 32}, true, false, true},
  };
  for (const Case &c : cases) {
    const AttnShape &s = c.s;
    char tag[160];
    std::snprintf(tag, sizeof tag, "attention tiles%s%s%s B=%lld T=%lld nh=%lld nkv=%lld hd=%lld", c.alibi ? " alibi" : "",
                  c.prefix ? " prefix" : "", c.seg ? " segments" : "", (long long)s.B, (long long)s.T, (long long)s.nh,
                  (long long)s.nkv, (long long)s.hd);
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
    const size_t nq = static_cast<size_t>(s.B * s.T * s.nh * s.hd), nk = static_cast<size_t>(s.B * s.T * s.nkv * s.hd);
    Vec q = rnd(nq, -1.5f, 1.5f), k = rnd(nk, -1.5f, 1.5f), v = rnd(nk), R = rnd(nq), out(nq), lse(s.B * s.nh * s.T);
    std::vector<float> slopes;
    if (c.alibi) slopes = llmt::alibi_slopes_bloom(s.nh);
    std::vector<int32_t> prefix, seg;
    for (int64_t b = 0; b < s.B; ++b) prefix.push_back(static_cast<int32_t>(std::min<int64_t>(s.T, 5 + 80 * b)));
    const int64_t starts[] = {0, 50, 130, 210};
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t t = 0; t < s.T; ++t) {
        int64_t st = 0;
        for (int64_t x : starts) st = t >= x ? x : st;
        seg.push_back(static_cast<int32_t>(st));
      }
    const float *al = c.alibi ? slopes.data() : nullptr;
    const int32_t *pf = c.prefix ? prefix.data() : nullptr, *sg = c.seg ? seg.data() : nullptr;
    attention_forward(q.data(), k.data(), v.data(), out.data(), lse.data(), s.B, s.T, s.nh, s.nkv, s.hd, scale, sg, al,
                      pf);
    Vec dq(nq, 3.0f), dk(nk, 3.0f), dv(nk, 3.0f);
    attention_backward(R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dq.data(), dk.data(), dv.data(),
                       s.B, s.T, s.nh, s.nkv, s.hd, scale, sg, al, pf);
    const AttnGrads ref = exact_attention(s, q, k, v, R, scale, al, pf, sg);
    expect_close(std::string(tag) + " out", out, ref.out, 2e-4, 2e-5);
    expect_close(std::string(tag) + " lse", lse, ref.lse, 1e-5, 1e-5);
    expect_close(std::string(tag) + " dq", dq, ref.dq, 2e-3, 2e-4);
    expect_close(std::string(tag) + " dk", dk, ref.dk, 2e-3, 2e-4);
    expect_close(std::string(tag) + " dv", dv, ref.dv, 2e-3, 2e-4);

    // the first T' rows alone (T' = 101: mid-tile) give the same values, bit for bit, as those rows of the whole
    const int64_t Tp = 101;
    if (c.s.B != 1 || c.prefix || s.T <= Tp) continue;
    const int64_t qd = s.nh * s.hd, kd = s.nkv * s.hd;
    Vec q2(q.begin(), q.begin() + Tp * qd), k2(k.begin(), k.begin() + Tp * kd), v2(v.begin(), v.begin() + Tp * kd);
    Vec o2(Tp * qd), l2(s.nh * Tp);
    attention_forward(q2.data(), k2.data(), v2.data(), o2.data(), l2.data(), 1, Tp, s.nh, s.nkv, s.hd, scale, sg, al,
                      nullptr);
    CHECK(std::memcmp(o2.data(), out.data(), sizeof(float) * o2.size()) == 0,
          "%s: the first %lld rows alone equal those rows of the whole, bit for bit", tag, (long long)Tp);
    bool lse_same = true;
    for (int64_t h = 0; h < s.nh; ++h)
      lse_same = lse_same && std::memcmp(l2.data() + h * Tp, lse.data() + h * s.T, sizeof(float) * Tp) == 0;
    CHECK(lse_same, "%s: lse of the first %lld rows alone, bit for bit", tag, (long long)Tp);
  }
}

static void test_attention_variants() {
  // ALiBi slopes (MODEL-FAMILIES §1): n = 6 → [1/4, 1/16, 1/64, 1/256, 1/2, 1/8]; both recipes agree there
  const std::vector<float> want = {0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f};
  CHECK(llmt::alibi_slopes_bloom(6) == want, "bloom ALiBi slopes for 6 heads");
  CHECK(llmt::alibi_slopes_baichuan(6) == want, "baichuan ALiBi slopes for 6 heads");
  const auto b40 = llmt::alibi_slopes_bloom(40), c40 = llmt::alibi_slopes_baichuan(40);
  double worst = 0;
  for (size_t i = 0; i < b40.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(b40[i]) - c40[i]));
  CHECK(b40.size() == 40 && c40.size() == 40 && worst < 1e-6, "40-head slopes: recipes within rounding (%g)", worst);
  for (bool al : {false, true})
    for (bool pf : {false, true}) {
      if (!al && !pf) continue;
      test_attention_ex({1, 37, 6, 2, 8}, al, pf, false);  // several key blocks, GQA
      test_attention_ex({2, 21, 4, 4, 8}, al, pf, false);  // prefix longer than a block in row 1
    }
  test_attention_ex({2, 40, 4, 1, 8}, true, false, true);  // ALiBi in packed rows
}

// ---- interleaved RoPE (ChatGLM2) and 2-D RoPE (ChatGLM-6B) ---------------------------------------------------------

static void test_rope_variants() {
  const int64_t rows = 4, heads = 3, hd = 16, rot = 8;
  const std::vector<int32_t> pos = {0, 1, 5, 300}, blk = {0, 0, 1, 2};
  Vec inv(rot / 2);
  for (int64_t i = 0; i < rot / 2; ++i) inv[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / rot));
  // interleaved: pairs (2i, 2i+1) of the first rot dims (ChatGLM2's apply_rotary_pos_emb)
  Vec x = rnd(rows * heads * hd), y = x, ref = x;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < rot / 2; ++i) {
        const float ang = static_cast<float>(pos[r]) * inv[i], c = std::cos(ang), sn = std::sin(ang);
        const float *xi = &x[(r * heads + h) * hd];
        ref[(r * heads + h) * hd + 2 * i] = xi[2 * i] * c - xi[2 * i + 1] * sn;
        ref[(r * heads + h) * hd + 2 * i + 1] = xi[2 * i + 1] * c + xi[2 * i] * sn;
      }
  rope_forward(y.data(), pos.data(), inv.data(), rows, heads, hd, rot, 1.0f, true);
  expect_close("interleaved rope vs ChatGLM2's formula", y, ref, 1e-6, 1e-6);
  const Vec R = rnd(rows * heads * hd);
  Vec dx = R;
  rope_backward(dx.data(), pos.data(), inv.data(), rows, heads, hd, rot, 1.0f, true);
  fd_check("interleaved rope dx", x, dx, [&]() {
    Vec yy = x;
    rope_forward(yy.data(), pos.data(), inv.data(), rows, heads, hd, rot, 1.0f, true);
    return dotd(yy, R);
  });
  // 2-D: half-split RoPE of width hd/2 on each half, positions then block positions (two calls, same stride)
  auto two_d = [&](Vec &z, bool back) {
    if (back) {
      rope_backward(z.data(), pos.data(), inv.data(), rows, heads, hd, hd / 2, 1.0f);
      rope_backward(z.data() + hd / 2, blk.data(), inv.data(), rows, heads, hd, hd / 2, 1.0f);
    } else {
      rope_forward(z.data(), pos.data(), inv.data(), rows, heads, hd, hd / 2, 1.0f);
      rope_forward(z.data() + hd / 2, blk.data(), inv.data(), rows, heads, hd, hd / 2, 1.0f);
    }
  };
  Vec z = x;
  two_d(z, false);
  Vec ref2 = x;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int half = 0; half < 2; ++half) {
        const float t = static_cast<float>(half ? blk[r] : pos[r]);
        float *o = &ref2[(r * heads + h) * hd + half * hd / 2];
        const float *xi = &x[(r * heads + h) * hd + half * hd / 2];
        for (int64_t i = 0; i < hd / 4; ++i) {  // pairs (i, i + hd/4) within the half
          const float ang = t * inv[i], c = std::cos(ang), sn = std::sin(ang);
          o[i] = xi[i] * c - xi[i + hd / 4] * sn;
          o[i + hd / 4] = xi[i + hd / 4] * c + xi[i] * sn;
        }
      }
  expect_close("2-D rope vs ChatGLM-6B's formula", z, ref2, 1e-6, 1e-6);
  Vec dz = R;
  two_d(dz, true);
  fd_check("2-D rope dx", x, dz, [&]() {
    Vec yy = x;
    two_d(yy, false);
    return dotd(yy, R);
  });
}

int main() {
  test_pool();
  test_matmul();
  test_bias();
  test_rmsnorm();
  test_layernorm();
  test_rope();
  test_swiglu();
  test_gelu();
  test_attention();
  test_attention_variants();
  test_attention_tiles();
  test_rope_variants();
  test_cross_entropy();
  test_embedding();
  test_transpose();
  test_adamw();
  test_reductions();
  test_determinism();
  if (g_failures != 0) {
    std::fprintf(stderr, "test_ops: %d check(s) failed\n", g_failures.load());
    return 1;
  }
  std::printf("test_ops: all checks passed\n");
  return 0;
}
