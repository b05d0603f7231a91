// generate.cpp — sampling and the generation loop (see generate.hpp). Matches transformers' logits
// processors: RepetitionPenaltyLogitsProcessor (score < 0 ? score·p : score/p over every token already in
// the sequence), TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (keep the smallest set whose
// probability mass exceeds top_p, at least one token), then a draw from the softmax.
#include "generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "status.hpp"

namespace llmt {

int32_t pick_token(std::vector<float> &logits, const std::vector<int32_t> &seen, const GenParams &p, Rng &rng) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (p.repetition_penalty != 1.0) {
    std::set<int32_t> uniq(seen.begin(), seen.end());
    const float pen = static_cast<float>(p.repetition_penalty);
    for (int32_t t : uniq) {
      if (t < 0 || t >= V) continue;
      float &s = logits[static_cast<size_t>(t)];
      s = s < 0 ? s * pen : s / pen;
    }
  }
  const bool greedy = !p.do_sample || p.temperature <= 0;
  if (greedy) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const float inv_t = static_cast<float>(1.0 / p.temperature);
  for (float &s : logits) s *= inv_t;
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  // stable sort by descending score (ties keep the lower id first)
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = V;
  if (p.top_k > 0) keep = std::min<int64_t>(keep, p.top_k);
  const float mx = logits[idx[0]];
  std::vector<double> prob(static_cast<size_t>(keep));
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += prob[i] = std::exp(static_cast<double>(logits[idx[i]] - mx));
  for (double &x : prob) x /= sum;
  if (p.top_p < 1.0) {
    // HF: sort ascending, drop tokens whose cumulative mass is <= 1 - top_p (keeping at least one).
    double cum_from_low = 0;
    int64_t drop = 0;
    for (int64_t i = keep - 1; i >= 1; --i) {
      cum_from_low += prob[i];
      if (cum_from_low <= 1.0 - p.top_p) drop = keep - i;
      else break;
    }
    keep -= drop;
    double s2 = 0;
    for (int64_t i = 0; i < keep; ++i) s2 += prob[i];
    for (int64_t i = 0; i < keep; ++i) prob[i] /= s2;
  }
  double u = rng.uniform_double(), acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (u < acc) return idx[i];
  }
  return idx[keep - 1];
}

llmt_status generate(Model &m, const std::vector<int32_t> &prompt, const GenParams &p,
                     const std::function<bool(int32_t)> &on_token, std::atomic<bool> *abort,
                     std::vector<int32_t> &out) {
  out.clear();
  if (prompt.empty()) return set_error(LLMT_ERR_BAD_INPUT, "generate: the prompt has no tokens");
  if (p.max_new_tokens < 0) return set_error(LLMT_ERR_BAD_INPUT, "generate: max_new_tokens must be >= 0");
  if (p.top_p <= 0 || p.top_p > 1) return set_error(LLMT_ERR_BAD_INPUT, "generate: top_p must be in (0, 1]");
  if (p.repetition_penalty <= 0) return set_error(LLMT_ERR_BAD_INPUT, "generate: repetition_penalty must be positive");
  Model::KvCache cache;
  m.init_cache(cache, static_cast<int64_t>(prompt.size()) + p.max_new_tokens + 1);
  std::vector<float> logits;
  llmt_status st = m.infer(cache, prompt.data(), static_cast<int64_t>(prompt.size()), logits);
  if (st) return st;
  std::vector<int32_t> seen = prompt;
  Rng rng(p.seed);
  for (int64_t i = 0; i < p.max_new_tokens; ++i) {
    if (abort && abort->load()) return set_error(LLMT_ERR_ABORTED, "generation stopped");
    const int32_t tok = pick_token(logits, seen, p, rng);
    out.push_back(tok);
    seen.push_back(tok);
    if (on_token && !on_token(tok)) break;
    if (std::find(p.stop_ids.begin(), p.stop_ids.end(), tok) != p.stop_ids.end()) break;
    if (i + 1 == p.max_new_tokens) break;
    if ((st = m.infer(cache, &tok, 1, logits))) return st;
  }
  return LLMT_OK;
}

}  // namespace llmt
