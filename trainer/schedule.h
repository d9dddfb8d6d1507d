// Learning-rate schedule: linear warmup from 0 to lr, then cosine/linear decay to min_lr, or constant.
#pragma once

#include <cstdint>

#include "csrc/config/recipe.pb.h"

namespace moetrain::trainer {

// Learning rate for optimizer step `step` (0-based). Warmup step s uses lr·(s+1)/warmup_steps.
// decay_steps = schedule.decay_steps, or train.steps − warmup_steps when 0; min_lr after the decay.
double learning_rate(const config::Recipe& recipe, int64_t step);

}  // namespace moetrain::trainer
