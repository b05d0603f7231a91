// train.hpp — the training loop behind `llmt-engine train --job JOB.json` and llmt_train(): LoRA or full
// fine-tuning with HF Trainer's semantics (loss normalisation across gradient accumulation, AdamW,
// schedules with warmup, global-norm clipping), eval loss, checkpoints written atomically, resume, and
// one JSON event per line through the event callback. The job format is documented in docs/formats.md.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "json.hpp"
#include "llmt.h"

namespace llmt {

struct TrainControl {
  std::function<void(const Json &event)> emit;  // one event object
  /** Polled between micro-batches: 0 go on, 1 stop gracefully (checkpoint, then return), 2 abort now. */
  std::function<int()> poll;
};

/** Validates the job JSON and runs it to the end. Errors are also emitted as an `error` event. */
llmt_status run_training(const Json &job, TrainControl &control);

/** HF's scheduler factor for optimizer step `step` (0-based count of steps done before this one). */
double lr_factor(const std::string &schedule, int64_t step, int64_t warmup, int64_t total);

}  // namespace llmt
