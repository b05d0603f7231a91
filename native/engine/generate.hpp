// generate.hpp — text generation on token ids with a KV cache: greedy or sampled (HF's processor order:
// repetition penalty, then temperature, top-k, top-p), stop tokens, abort, one callback per token; one prompt
// or a batch of prompts of any lengths (generate_batch), each row as if generated alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "llmt.h"
#include "model.hpp"
#include "rng.hpp"

namespace llmt {

struct GenParams {
  int64_t max_new_tokens = 512;
  bool do_sample = true;
  double temperature = 0.001;     // the seed project's defaults
  int64_t top_k = 30;
  double top_p = 0.85;
  double repetition_penalty = 1.2;
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these (it is included)
};


/** Generates after `prompt`. A prompt of context_limit() tokens or more is refused (BAD_INPUT); the answer ends
 *  when prompt + answer reach it, as at max_new_tokens. on_token(id) returning false stops early. Returns the generated ids. */
llmt_status generate(Model &m, const std::vector<int32_t> &prompt, const GenParams &p,
                     const std::function<bool(int32_t)> &on_token, std::atomic<bool> *abort,
                     std::vector<int32_t> &out);

/** Generates after each of `prompts` at once: one forward per step over every unfinished sequence (each with its
 *  own KV cache and positions, so no padding), each stopping at its own stop id / max_new_tokens, the
 *  processors applied per row with its own RNG seeded by seeds[r] (empty: p.seed for every row). Row r's output
 *  equals generate(prompts[r]) with seed seeds[r], bit for bit. on_token(r, id) returning false stops row r.
 *  abort stops all rows (LLMT_ERR_ABORTED; `out` keeps what was generated). */
llmt_status generate_batch(Model &m, const std::vector<std::vector<int32_t>> &prompts, const GenParams &p,
                           const std::vector<uint64_t> &seeds, const std::function<bool(int64_t, int32_t)> &on_token,
                           std::atomic<bool> *abort, std::vector<std::vector<int32_t>> &out);

/** HF's processors for do_sample=True on one row of logits (modified in place): repetition penalty, temperature,
 *  top-k (ties with the k-th kept), top-p; returns the kept ids, most likely first, with their probabilities. */
std::vector<std::pair<int32_t, double>> sampling_distribution(std::vector<float> &logits, const std::vector<int32_t> &seen, const GenParams &p);

/** Applies the processors to one row of logits and picks the next token (exposed for tests). */
int32_t pick_token(std::vector<float> &logits, const std::vector<int32_t> &seen, const GenParams &p, Rng &rng);

}  // namespace llmt
