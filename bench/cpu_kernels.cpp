// CPU kernel microbenchmarks: the engine's attention (forward, backward, one cached decoding step), cross-entropy
// and 4-bit quantization / decoding, timed alone (best of N) on random inputs. Our kernels only — the side-by-side
// comparison with PyTorch + PEFT is bench/cpu_bench.py; this says where a step's time goes and what a kernel change did.
//
//   npm run build:native
//   g++ -O3 -std=c++17 bench/cpu_kernels.cpp native/build/lib/libllmt_engine.a -lpthread -ldl -o /tmp/cpu_kernels
//   /tmp/cpu_kernels [--threads 1]
//
// Link another build's libllmt_engine.a to compare two versions on the same machine in the same minute.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../native/cpu/ops.hpp"
#include "../native/cpu/q4.hpp"

using namespace llmt::cpu;

namespace {
template <class F>
double best_of(int reps, F &&f) {
  f();  // warm-up: scratch buffers grow once
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<float> randn(size_t n, float sd, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float &x : v) x = d(g);
  return v;
}

void attention(int64_t T, int64_t nh, int64_t nkv, int64_t hd) {
  const size_t nq = static_cast<size_t>(T * nh * hd), nk = static_cast<size_t>(T * nkv * hd);
  const std::vector<float> q = randn(nq, 1, 1), k = randn(nk, 1, 2), v = randn(nk, 1, 3), dout = randn(nq, 1, 4);
  std::vector<float> out(nq), lse(static_cast<size_t>(nh * T)), dq(nq), dk(nk), dv(nk);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // causal FLOPs: 4·hd per visible (query, key) pair forward (S and P·V), 2.5× that backward (S again, dP, dV, dK, dQ)
  const double flops = 4.0 * static_cast<double>(nh) * static_cast<double>(T) * static_cast<double>(T + 1) / 2 *
                       static_cast<double>(hd);
  const double tf = best_of(7, [&] {
    attention_forward(q.data(), k.data(), v.data(), out.data(), lse.data(), 1, T, nh, nkv, hd, scale);
  });
  const double tb = best_of(7, [&] {
    attention_backward(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), dq.data(), dk.data(),
                       dv.data(), 1, T, nh, nkv, hd, scale);
  });
  std::printf("attention T %5lld, %2lld heads (%2lld kv) x %3lld: forward %8.2f ms %6.1f GFLOP/s | backward %8.2f ms %6.1f GFLOP/s\n",
              (long long)T, (long long)nh, (long long)nkv, (long long)hd, tf * 1e3, flops / tf / 1e9, tb * 1e3,
              2.5 * flops / tb / 1e9);
}

void cached_attention(int64_t P, int64_t nh, int64_t hd) {
  const std::vector<float> q = randn(static_cast<size_t>(nh * hd), 1, 5), kc = randn(static_cast<size_t>(P * nh * hd), 1, 6),
                           vc = randn(static_cast<size_t>(P * nh * hd), 1, 7);
  std::vector<float> out(static_cast<size_t>(nh * hd));
  const double t = best_of(20, [&] {
    attention_cached(q.data(), kc.data(), vc.data(), out.data(), P - 1, 1, nh, nh, hd, 1.0f / std::sqrt(float(hd)));
  });
  std::printf("cached attention: 1 token against %lld keys, %lld heads x %lld: %.3f ms\n", (long long)P, (long long)nh,
              (long long)hd, t * 1e3);
}

void cross_entropy(int64_t N, int64_t V) {
  const std::vector<float> x = randn(static_cast<size_t>(N * V), 3, 8);
  std::vector<float> lse(static_cast<size_t>(N)), d(static_cast<size_t>(N * V));
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % V);
  int64_t count = 0;
  const double tf = best_of(5, [&] { cross_entropy_forward(x.data(), t.data(), lse.data(), N, V, &count); });
  const double tb = best_of(5, [&] { cross_entropy_backward(x.data(), t.data(), lse.data(), d.data(), N, V, 1.0f / N); });
  std::printf("cross-entropy %lld x %lld: forward %.1f ms (%.2f ns/logit), backward %.1f ms (%.2f ns/logit)\n",
              (long long)N, (long long)V, tf * 1e3, tf * 1e9 / double(N * V), tb * 1e3, tb * 1e9 / double(N * V));
}

void q4(int64_t n) {
  const std::vector<float> w = randn(static_cast<size_t>(n), 0.02f, 9);
  std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
  std::vector<float> absmax(static_cast<size_t>((n + 63) / 64)), y(static_cast<size_t>(n));
  const double tq = best_of(3, [&] { q4_quantize(w.data(), n, Q4Type::NF4, packed.data(), absmax.data()); });
  Q4View view;
  view.type = Q4Type::NF4;
  view.n = n;
  view.packed = packed.data();
  view.absmax = absmax.data();
  const double td = best_of(5, [&] { q4_dequantize(view, 0, n, y.data()); });
  std::printf("nf4 %lld weights: quantize %.2f ns/weight, dequantize %.2f ns/weight\n", (long long)n, tq * 1e9 / double(n),
              td * 1e9 / double(n));
}
}  // namespace

int main(int argc, char **argv) {
  int threads = 1;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
  set_num_threads(std::max(1, threads));
  std::printf("%d thread(s)\n", num_threads());
  attention(1024, 8, 8, 32);
  attention(1024, 8, 8, 64);
  attention(1024, 4, 4, 128);
  attention(512, 16, 1, 64);  // MQA (Falcon-7B's layout)
  cached_attention(1024, 32, 128);
  cross_entropy(1024, 32000);
  q4(int64_t(1) << 24);
  return 0;
}
