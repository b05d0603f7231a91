// evaluate.cpp — batches of a tokenized dataset and the evaluation loss over them (see evaluate.hpp).
#include "evaluate.hpp"

#include <algorithm>

#include "status.hpp"

namespace llmt {

void make_batch(const TokData &data, const std::vector<int64_t> &idx, int64_t pad, Batch &b) {
  int64_t T = 0;
  for (int64_t i : idx) T = std::max(T, data.length(i));
  b.B = static_cast<int64_t>(idx.size());
  b.T = T;
  b.ids.assign(static_cast<size_t>(b.B * T), static_cast<int32_t>(pad));
  b.labels.assign(static_cast<size_t>(b.B * T), -100);
  if (data.packed()) b.pos.assign(static_cast<size_t>(b.B * T), 0);
  std::vector<int32_t> ids, labels, pos;
  for (size_t r = 0; r < idx.size(); ++r) {
    data.sample(idx[r], ids, labels);
    std::copy(ids.begin(), ids.end(), b.ids.begin() + static_cast<int64_t>(r) * T);
    std::copy(labels.begin(), labels.end(), b.labels.begin() + static_cast<int64_t>(r) * T);
    if (data.packed()) {
      data.positions(idx[r], pos);
      int32_t next = 0;
      for (int64_t t = 0; t < T; ++t) {  // padding continues the row's last sample
        const int32_t v = t < static_cast<int64_t>(pos.size()) ? pos[static_cast<size_t>(t)] : next;
        b.pos[static_cast<size_t>(static_cast<int64_t>(r) * T + t)] = v;
        next = v + 1;
      }
    }
  }
}

int64_t make_batch_padding_free(const TokData &data, const std::vector<int64_t> &idx, int64_t pad, Batch &b) {
  int64_t T = 0;
  for (int64_t i : idx) T = std::max(T, data.length(i));
  if (data.packed() || idx.size() < 2 || T <= 0) {
    make_batch(data, idx, pad, b);
    return 0;
  }
  // first-fit decreasing (ties in sample order): rows[r] lists the samples of row r, used[r] its tokens
  std::vector<size_t> order(idx.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return data.length(idx[a]) > data.length(idx[c]); });
  std::vector<std::vector<size_t>> rows;
  std::vector<int64_t> used;
  for (size_t o : order) {
    const int64_t len = data.length(idx[o]);
    size_t r = 0;
    while (r < rows.size() && used[r] + len > T) ++r;
    if (r == rows.size()) {
      rows.emplace_back();
      used.push_back(0);
    }
    rows[r].push_back(o);
    used[r] += len;
  }
  if (rows.size() == idx.size()) {
    make_batch(data, idx, pad, b);
    return 0;
  }
  b.B = static_cast<int64_t>(rows.size());
  b.T = T;
  b.ids.assign(static_cast<size_t>(b.B * T), static_cast<int32_t>(pad));
  b.labels.assign(static_cast<size_t>(b.B * T), -100);
  b.pos.assign(static_cast<size_t>(b.B * T), 0);
  std::vector<int32_t> ids, labels;
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t at = static_cast<int64_t>(r) * T, p = 0;
    for (size_t o : rows[r]) {
      data.sample(idx[o], ids, labels);
      std::copy(ids.begin(), ids.end(), b.ids.begin() + at);
      std::copy(labels.begin(), labels.end(), b.labels.begin() + at);
      for (size_t t = 0; t < ids.size(); ++t) b.pos[static_cast<size_t>(at) + t] = static_cast<int32_t>(t);
      at += static_cast<int64_t>(ids.size());
      p = static_cast<int64_t>(ids.size());
    }
    for (; at < static_cast<int64_t>(r + 1) * T; ++at) b.pos[static_cast<size_t>(at)] = static_cast<int32_t>(p++);  // padding continues the last sample
  }
  return static_cast<int64_t>(idx.size() - rows.size());
}

llmt_status eval_loss_sums(Model &m, const TokData &data, int64_t batch, int rank, int world, const EvalProgress &p,
                           double acc[2]) {
  if (batch <= 0) return set_error(LLMT_ERR_BAD_INPUT, "the evaluation batch size must be positive");
  if (world <= 0 || rank < 0 || rank >= world) return set_error(LLMT_ERR_BAD_INPUT, "evaluation: bad rank/world");
  int64_t bi = 0;
  for (int64_t b0 = 0; b0 < data.size(); b0 += batch, ++bi) {
    if (bi % world != rank) continue;
    std::vector<int64_t> idx;
    for (int64_t i = b0; i < std::min(data.size(), b0 + batch); ++i) idx.push_back(i);
    Batch b;
    make_batch(data, idx, data.pad_id(), b);
    RunOptions o;
    RunResult r;
    if (llmt_status s = m.run(b, o, r)) return s;
    acc[0] += r.loss_sum;
    acc[1] += static_cast<double>(r.count);
    if (p.batch) p.batch(std::min(data.size(), b0 + batch), data.size());
    if (p.aborted && p.aborted()) return set_error(LLMT_ERR_ABORTED, "aborted during evaluation");
  }
  return LLMT_OK;
}

}  // namespace llmt
