#include "trainer/cadence.h"

namespace moetrain::trainer {

Cadence Cadence::from_recipe(const config::Recipe& r) {
  Cadence c;
  c.steps = r.train().steps();
  c.eval_interval = r.train().eval_interval();
  c.save_interval = r.checkpoint().interval();
  c.save_final = r.checkpoint().save_final();
  c.exit_interval = r.train().exit_interval();
  c.log_interval = r.logging().log_interval();
  return c;
}

bool Cadence::should_evaluate(int64_t step) const {
  return (eval_interval > 0 && step % eval_interval == 0) || step == steps;
}

bool Cadence::should_exit(int64_t step) const {
  return exit_interval > 0 && step % exit_interval == 0 && step < steps;
}

bool Cadence::should_save(int64_t step, bool preempted) const {
  return (save_interval > 0 && step % save_interval == 0) || (step == steps && save_final) ||
         should_exit(step) || stops_for_preemption(step, preempted);
}

bool Cadence::should_log(int64_t step, int64_t first_step) const {
  return step % log_interval == 0 || step == steps || step == first_step + 1;
}

}  // namespace moetrain::trainer
