// evaluate.hpp — the evaluation loss of a model on a tokenized dataset, shared by the trainer's eval
// (train.cpp) and llmt_model_eval_loss (capi.cpp), so both give the same number bit for bit: batches of
// `batch` consecutive samples in file order, right-padded with the file's pad id (make_batch), the summed
// token cross-entropies and token counts accumulated in double in batch order; loss = sum / tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "llmt.h"
#include "model.hpp"
#include "tokdata.hpp"

namespace llmt {

/** Samples `idx` of `data` as one right-padded batch (ids: pad, labels: −100; packed files: positions). */
void make_batch(const TokData &data, const std::vector<int64_t> &idx, int64_t pad, Batch &b);
/** The same samples without most of the padding: rows as long as the longest sample, the samples placed first-fit
 *  in decreasing length, positions restarting at 0 with each (attention never crosses a sample: Batch::pos). Every
 *  sample is computed as in make_batch's batch — the same losses and gradients up to rounding — in fewer rows. Falls
 *  back to make_batch when that saves no row (and for packed files). Returns the number of rows saved. */
int64_t make_batch_padding_free(const TokData &data, const std::vector<int64_t> &idx, int64_t pad, Batch &b);

struct EvalProgress {
  std::function<bool()> aborted;                           // polled after each batch; true: LLMT_ERR_ABORTED
  std::function<void(int64_t done, int64_t total)> batch;  // after each batch, in samples
};

/** Sums over the batches b with b % world == rank (data parallelism deals them round-robin): acc[0] += the
 *  summed token losses, acc[1] += the token count. No dropout. */
llmt_status eval_loss_sums(Model &m, const TokData &data, int64_t batch, int rank, int world, const EvalProgress &p,
                           double acc[2]);

}  // namespace llmt
