// generate.cpp — sampling and the generation loop (see generate.hpp). Matches transformers' logits
// processors: RepetitionPenaltyLogitsProcessor (score < 0 ? score·p : score/p over every token already in
// the sequence), TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (keep the smallest set whose
// probability mass exceeds top_p, at least one token), then a draw from the softmax. One loop serves one prompt
// and a batch: every unfinished sequence advances by one token per Model::infer_batch call (own cache, own
// positions, own RNG), so a row of a batch is bit-identical to its prompt generated alone. Models with learned or
// rotary positions never see a position past their context (config.json max_position_embeddings, seq_length, …):
// a prompt that fills it is refused, and an answer ends (as at max_new_tokens) when the sequence reaches it.
#include "generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "status.hpp"

namespace llmt {

void apply_repetition_penalty(std::vector<float> &logits, const std::vector<int32_t> &seen, double penalty) {
  if (penalty == 1.0) return;
  const int64_t V = static_cast<int64_t>(logits.size());
  std::set<int32_t> uniq(seen.begin(), seen.end());
  const float pen = static_cast<float>(penalty);
  for (int32_t t : uniq) {
    if (t < 0 || t >= V) continue;
    float &s = logits[static_cast<size_t>(t)];
    s = s < 0 ? s * pen : s / pen;
  }
}

std::vector<std::pair<int32_t, double>> sampling_distribution(std::vector<float> &logits, const std::vector<int32_t> &seen, const GenParams &p) {
  const int64_t V = static_cast<int64_t>(logits.size());
  apply_repetition_penalty(logits, seen, p.repetition_penalty);
  // HF TemperatureLogitsWarper: scores / temperature (float32 division, not a multiply by the reciprocal)
  const float t = static_cast<float>(p.temperature);
  if (p.temperature != 1.0)
    for (float &s : logits) s /= t;
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  // stable sort by descending score (ties keep the lower id first)
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = V;
  if (p.top_k > 0 && p.top_k < V) {
    // HF TopKLogitsWarper removes scores < the k-th largest: every token tied with the k-th stays
    keep = p.top_k;
    while (keep < V && logits[idx[keep]] == logits[idx[keep - 1]]) ++keep;
  }
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
  std::vector<std::pair<int32_t, double>> out(static_cast<size_t>(keep));
  for (int64_t i = 0; i < keep; ++i) out[i] = {idx[i], prob[i]};
  return out;
}

int32_t pick_token(std::vector<float> &logits, const std::vector<int32_t> &seen, const GenParams &p, Rng &rng) {
  // temperature <= 0 (HF rejects it for do_sample=True) is taken as greedy decoding, as do_sample=False is
  if (!p.do_sample || p.temperature <= 0) {
    apply_repetition_penalty(logits, seen, p.repetition_penalty);
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const std::vector<std::pair<int32_t, double>> dist = sampling_distribution(logits, seen, p);
  double u = rng.uniform_double(), acc = 0;
  for (const auto &[id, pr] : dist) {
    acc += pr;
    if (u < acc) return id;
  }
  return dist.back().first;
}


llmt_status generate(Model &m, const std::vector<int32_t> &prompt, const GenParams &p,
                     const std::function<bool(int32_t)> &on_token, std::atomic<bool> *abort,
                     std::vector<int32_t> &out) {
  std::vector<std::vector<int32_t>> outs;
  llmt_status st = generate_batch(m, {prompt}, p, {}, on_token ? [&](int64_t, int32_t t) { return on_token(t); } : std::function<bool(int64_t, int32_t)>(),
                                  abort, outs);
  out = outs.empty() ? std::vector<int32_t>() : std::move(outs[0]);
  return st;
}

llmt_status generate_batch(Model &m, const std::vector<std::vector<int32_t>> &prompts, const GenParams &p,
                           const std::vector<uint64_t> &seeds, const std::function<bool(int64_t, int32_t)> &on_token,
                           std::atomic<bool> *abort, std::vector<std::vector<int32_t>> &out) {
  const int64_t R = static_cast<int64_t>(prompts.size());
  out.assign(static_cast<size_t>(R), {});
  if (R == 0) return set_error(LLMT_ERR_BAD_INPUT, "generate: no prompts");
  for (int64_t r = 0; r < R; ++r)
    if (prompts[r].empty()) return set_error(LLMT_ERR_BAD_INPUT, R == 1 ? "generate: the prompt has no tokens" : "generate: prompt " + std::to_string(r) + " has no tokens");
  if (!seeds.empty() && static_cast<int64_t>(seeds.size()) != R) return set_error(LLMT_ERR_BAD_INPUT, "generate: one seed per prompt");
  if (p.max_new_tokens < 0) return set_error(LLMT_ERR_BAD_INPUT, "generate: max_new_tokens must be >= 0");
  if (!(p.top_p >= 0 && p.top_p <= 1)) return set_error(LLMT_ERR_BAD_INPUT, "generate: top_p must be in [0, 1]");
  if (p.repetition_penalty <= 0) return set_error(LLMT_ERR_BAD_INPUT, "generate: repetition_penalty must be positive");
  const int64_t V = m.config().vocab;
  // learned / rotary positions: nothing past the context was trained (ALiBi has no hard limit)
  const int64_t ctx = context_limit(m.config());
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = static_cast<int64_t>(prompts[r].size());
    if (ctx > 0 && n >= ctx)
      return set_error(LLMT_ERR_BAD_INPUT, std::string(R == 1 ? "generate: the prompt" : "generate: prompt " + std::to_string(r)) + " (" + std::to_string(n) +
                                               " tokens) " + (n == ctx ? "fills" : "is longer than") + " the model's context (" + std::to_string(ctx) +
                                               " positions) and leaves no room for an answer: shorten it");
  }
  std::vector<Model::KvCache> caches(static_cast<size_t>(R));
  std::vector<std::vector<int32_t>> seen(prompts);
  std::vector<Rng> rng;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t want = static_cast<int64_t>(prompts[r].size()) + p.max_new_tokens + 1;
    m.init_cache(caches[r], ctx > 0 ? std::min(want, ctx) : want);
    rng.emplace_back(seeds.empty() ? p.seed : seeds[r]);
  }
  std::vector<float> logits(static_cast<size_t>(R * V)), chunk, row(static_cast<size_t>(V));
  // prefill: prompts grouped up to ~4096 tokens per forward (rows are independent: grouping changes no value)
  for (int64_t r0 = 0; r0 < R;) {
    std::vector<Model::KvCache *> cs;
    std::vector<const int32_t *> ids;
    std::vector<int64_t> ns;
    int64_t tokens = 0;
    for (int64_t r = r0; r < R && (cs.empty() || tokens + static_cast<int64_t>(prompts[r].size()) <= 4096); ++r) {
      cs.push_back(&caches[r]);
      ids.push_back(prompts[r].data());
      ns.push_back(static_cast<int64_t>(prompts[r].size()));
      tokens += ns.back();
    }
    if (llmt_status st = m.infer_batch(cs.data(), ids.data(), ns.data(), static_cast<int64_t>(cs.size()), chunk)) return st;
    std::copy(chunk.begin(), chunk.end(), logits.begin() + r0 * V);
    r0 += static_cast<int64_t>(cs.size());
  }
  std::vector<int64_t> active(static_cast<size_t>(R));  // rows still generating; logits row i belongs to active[i]
  for (int64_t r = 0; r < R; ++r) active[r] = r;
  for (int64_t i = 0; i < p.max_new_tokens && !active.empty(); ++i) {
    if (abort && abort->load()) return set_error(LLMT_ERR_ABORTED, "generation stopped");
    std::vector<int64_t> next;
    std::vector<int32_t> toks;
    for (size_t k = 0; k < active.size(); ++k) {
      const int64_t r = active[k];
      std::copy(logits.begin() + static_cast<int64_t>(k) * V, logits.begin() + static_cast<int64_t>(k + 1) * V, row.begin());
      const int32_t tok = pick_token(row, seen[r], p, rng[r]);
      out[r].push_back(tok);
      seen[r].push_back(tok);
      if (on_token && !on_token(r, tok)) continue;
      if (std::find(p.stop_ids.begin(), p.stop_ids.end(), tok) != p.stop_ids.end()) continue;
      if (i + 1 == p.max_new_tokens) continue;
      // the sequence fills the context: the answer ends there (finish "length"), no token fed past it
      if (ctx > 0 && static_cast<int64_t>(prompts[r].size() + out[r].size()) >= ctx) continue;
      next.push_back(r);
      toks.push_back(tok);
    }
    active.swap(next);
    if (active.empty()) break;
    std::vector<Model::KvCache *> cs;
    std::vector<const int32_t *> ids;
    std::vector<int64_t> ns(active.size(), 1);
    for (size_t k = 0; k < active.size(); ++k) {
      cs.push_back(&caches[active[k]]);
      ids.push_back(&toks[k]);
    }
    if (llmt_status st = m.infer_batch(cs.data(), ids.data(), ns.data(), static_cast<int64_t>(active.size()), logits)) return st;
  }
  return LLMT_OK;
}

}  // namespace llmt
