#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>

namespace moetrain::trainer {

double learning_rate(const config::Recipe& recipe, int64_t step) {
  const auto& s = recipe.schedule();
  const double lr = recipe.optimizer().lr(), min_lr = recipe.optimizer().min_lr();
  const int64_t warmup = s.warmup_steps();
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (s.decay() == config::ScheduleConfig::CONSTANT) return lr;
  const int64_t decay_steps = s.decay_steps() > 0 ? s.decay_steps()
                                                  : std::max<int64_t>(1, recipe.train().steps() - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(decay_steps));
  const double factor = s.decay() == config::ScheduleConfig::COSINE ? 0.5 * (1.0 + std::cos(M_PI * progress))
                                                                    : 1.0 - progress;
  return min_lr + (lr - min_lr) * factor;
}

}  // namespace moetrain::trainer
