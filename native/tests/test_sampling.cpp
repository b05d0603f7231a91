// test_sampling.cpp — the sampling processors (generate.cpp) against transformers 4.45's logits processors:
// RepetitionPenaltyLogitsProcessor → TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper, then softmax.
// The expected probabilities were computed with those classes in Python (float32) for the same logits.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "../engine/generate.hpp"
#include "check.hpp"

using namespace llmt;

static const std::vector<float> L = {2.0f, -1.0f, 0.5f, 3.0f, 3.0f, 1.0f, -2.0f, 0.0f};

static void expect_dist(const std::vector<int32_t> &seen, double rp, double t, int64_t k, double top_p, const std::vector<double> &hf, const char *what) {
  GenParams p;
  p.repetition_penalty = rp;
  p.temperature = t;
  p.top_k = k;
  p.top_p = top_p;
  std::vector<float> logits = L;
  std::vector<double> got(L.size(), 0.0);
  for (const auto &[id, pr] : sampling_distribution(logits, seen, p)) got[static_cast<size_t>(id)] = pr;
  for (size_t i = 0; i < L.size(); ++i)
    CHECK(std::fabs(got[i] - hf[i]) < 2e-6, std::string(what) + ": token " + std::to_string(i) + " p=" + std::to_string(got[i]) + " HF " + std::to_string(hf[i]));
}

int main() {
  // repetition penalty on the prompt+generated ids (a repeated id counts once), temperature, no filter
  expect_dist({0, 1, 1}, 1.3, 0.7, 0, 1.0, {0.055676, 0.000965, 0.012629, 0.449197, 0.449197, 0.025799, 0.000355, 0.006183}, "penalty+temperature");
  expect_dist({0, 1}, 1.3, 0.7, 3, 1.0, {0.058356, 0, 0, 0.470822, 0.470822, 0, 0, 0}, "top_k=3");
  expect_dist({3}, 1.0, 1.0, 4, 0.8, {0.155362, 0, 0, 0.422319, 0.422319, 0, 0, 0}, "top_k=4 then top_p=0.8");
  expect_dist({}, 1.0, 2.0, 0, 0.9, {0.174088, 0, 0.082233, 0.287023, 0.287023, 0.10559, 0, 0.064043}, "temperature 2, top_p=0.9");
  expect_dist({6, 7}, 1.2, 1.0, 2, 1.0, {0, 0, 0, 0.5, 0.5, 0, 0, 0}, "penalty on negative logits, top_k=2");
  // HF keeps every token tied with the k-th largest score: top_k=1 over two equal maxima keeps both
  expect_dist({}, 1.0, 1.0, 1, 1.0, {0, 0, 0, 0.5, 0.5, 0, 0, 0}, "top_k=1 with a tie at the top");
  expect_dist({}, 1.0, 1.0, 3, 1.0, {0.155362, 0, 0, 0.422319, 0.422319, 0, 0, 0}, "top_k=3");
  // top_p=0 is allowed by HF and keeps the single most likely token (min_tokens_to_keep=1)
  expect_dist({3}, 1.5, 1.0, 0, 0.0, {0, 0, 0, 0, 1, 0, 0, 0}, "top_p=0");
  {
    // temperature 0 (HF refuses it for do_sample=True): greedy after the repetition penalty
    GenParams p;
    p.temperature = 0;
    p.repetition_penalty = 2.0;
    Rng rng(1);
    std::vector<float> logits = L;
    CHECK(pick_token(logits, {3, 4}, p, rng) == 0, "temperature 0 is greedy over the penalized logits");
  }
  {
    // the draw follows the distribution: 20000 draws, top_k=4/top_p=0.8 as above
    GenParams p;
    p.repetition_penalty = 1.0;
    p.temperature = 1.0;
    p.top_k = 4;
    p.top_p = 0.8;
    Rng rng(7);
    std::vector<int> count(L.size(), 0);
    const int N = 20000;
    for (int i = 0; i < N; ++i) {
      std::vector<float> logits = L;
      ++count[static_cast<size_t>(pick_token(logits, {3}, p, rng))];
    }
    const double hf[] = {0.155362, 0, 0, 0.422319, 0.422319, 0, 0, 0};
    for (size_t i = 0; i < L.size(); ++i)
      CHECK(std::fabs(count[i] / double(N) - hf[i]) < 0.015, "sampled frequency of token " + std::to_string(i));
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_sampling: %d checks passed\n", g_checks);
  return 0;
}
