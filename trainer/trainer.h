// The training loop of one process: data → model → loss → backward → clip → AdamW → schedule, with
// periodic evaluation, metrics and checkpoints. Resumes from RUN_DIR/checkpoints/latest when present.
#pragma once

#include <memory>
#include <string>

#include "csrc/config/recipe.pb.h"
#include "trainer/placement.h"

namespace moetrain::parallel {
class ProcessMesh;
}

namespace moetrain::trainer {

struct TrainSummary {
  int64_t steps = 0;      // optimizer steps completed in total
  double final_loss = 0;  // training loss of the last step
  double val_loss = 0;    // last evaluation (NaN when there is no validation set)
  double val_ppl = 0;
  double unigram_ppl = 0;        // baseline: unigram model of the training tokens on the validation set
  bool preempted = false;        // stopped by SIGTERM/SIGUSR1 after saving a checkpoint
  double router_max_change = 0;  // frozen router: largest change of a router weight or expert bias (0 expected)
};

class Trainer {
 public:
  // `recipe` must be validated and have its defaults filled (config::load_recipe does both).
  // `mesh`: the process mesh of a distributed run (null: one process). Every rank constructs a Trainer
  // and calls run(); rank 0 writes the run directory's logs, every rank its own checkpoint shard.
  // `placement`: this process's device (resolve_placement), bound already (bind_device). The model is
  // initialised on the CPU, the same in every layout and on every device, then moved there.
  Trainer(const config::Recipe& recipe, const std::string& run_dir, parallel::ProcessMesh* mesh = nullptr,
          const Placement& placement = {});
  ~Trainer();
  TrainSummary run();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace moetrain::trainer
