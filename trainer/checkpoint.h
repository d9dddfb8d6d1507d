// Distributed checkpoints of a training run (format version 1; docs/checkpoints.md):
//
//   RUN_DIR/checkpoints/step_NNNNNNNN/manifest.json          layout, train state, digests, tensor map
//   RUN_DIR/checkpoints/step_NNNNNNNN/rankRRRRR.safetensors  one file per rank: the blocks it writes
//   RUN_DIR/checkpoints/latest                               name of the newest committed step
//
// Every tensor is stored under its *global* name and shape (csrc/model/sharding.h): experts under their
// global expert index, tensor-parallel slices with their offsets. A block replicated over several ranks
// is written once (by the lowest rank holding it). Model weights, expert biases and the AdamW moments
// use the same blocks, so a checkpoint loads into any (TP, EP, DP) layout: each rank reads the
// intersection of the saved blocks with its own.
//
// Commit: every rank writes and fsyncs its file into step_N.tmp/ and reports (file, bytes, SHA-256,
// blocks); rank 0 checks that every tensor is covered exactly once, writes manifest.json.tmp, fsyncs,
// renames it to manifest.json, fsyncs the directory, renames step_N.tmp to step_N, fsyncs the root, and
// only then replaces `latest` (by rename). A crash anywhere leaves the previous checkpoint and pointer.
// Any failure on any rank is raised on every rank with the same message.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>

#include "csrc/config/recipe.pb.h"
#include "csrc/io/safetensors.h"
#include "csrc/model/transformer.h"
#include "trainer/checkpoint_manifest.h"  // read_manifest, kCheckpointFormatVersion

namespace moetrain::parallel {
class ProcessMesh;
class DistributedOptimizer;
}  // namespace moetrain::parallel

namespace moetrain::trainer {

// Everything besides weights and optimizer moments that a run needs to continue exactly.
struct TrainState {
  int64_t step = 0;              // optimizer steps completed
  int64_t samples_consumed = 0;  // global sampler position
  int64_t tokens = 0;            // training tokens seen
};

struct LoadOptions {
  bool optimizer = true;    // AdamW moments and step counts (off: fine-tuning from pretrained weights)
  bool train_state = true;  // step, data position, RNG (off: a new run initialised from the weights)
  bool adapters_may_be_missing = false;  // LoRA adapters absent from the checkpoint keep their values
};

class Checkpointer {
 public:
  // `model_section`: text of the recipe's model section (its SHA-256 is the checkpoint's model digest:
  // a load into a different model is refused). `recipe_text`: the resolved recipe, kept in the manifest.
  // `mesh`: null for one process. Every method is collective over the mesh's world.
  Checkpointer(std::string run_dir, int64_t keep_last, std::string model_section,
               std::string recipe_text = "", parallel::ProcessMesh* mesh = nullptr);

  // optimizer.distributed: save() writes, and load() restores, the sharded moments of `optimizer` (owned by
  // the caller) instead of torch::optim::AdamW's. Null (the default): the replicated optimizer's.
  void set_distributed_optimizer(parallel::DistributedOptimizer* optimizer) { distributed_ = optimizer; }

  // Returns the committed directory.
  std::string save(const TrainState& state, model::TransformerImpl& model, torch::optim::AdamW& optimizer);

  // One process, no model built: saves `parameters` (model names without "model/", the shapes of the
  // model's parameters) and `buffers` (the expert biases) as save() would for a model holding them, with
  // no optimizer state, reading each tensor as its bytes are written. moe-import converts a model of any
  // size in the memory of its largest tensor this way. Refused (logic_error) with a mesh.
  std::string save_streamed(const TrainState& state, const model::TransformerOptions& options,
                            const std::vector<io::LazyTensor>& parameters,
                            const std::vector<io::LazyTensor>& buffers);
  // The committed checkpoint `latest` points to, if any.
  std::optional<std::string> latest() const;

  // Restores weights, buffers (expert biases), optimizer state and RNG from a checkpoint saved in any
  // layout; verifies every file it reads against the manifest's size and SHA-256. The balancing
  // accumulators need no saving: they are empty at every step boundary, where saves happen.
  TrainState load(const std::string& dir, model::TransformerImpl& model, torch::optim::AdamW* optimizer,
                  const LoadOptions& options = {});
  TrainState load(const std::string& dir, model::TransformerImpl& model, torch::optim::AdamW& optimizer) {
    return load(dir, model, &optimizer);
  }

 private:
  // Rank 0 after every rank wrote its file into step_N.tmp: checks that the `reports` (one per rank) cover
  // every tensor once, writes the manifest, renames step_N.tmp to step_N, then moves `latest`; prunes.
  void commit(const TrainState& state, const std::vector<std::string>& reports, int world, int tp, int ep,
              int etp = 1) const;

  std::string root_;
  int64_t keep_last_;
  std::string model_section_, recipe_text_;
  parallel::ProcessMesh* mesh_;
  parallel::DistributedOptimizer* distributed_ = nullptr;
};

// The text a checkpoint's model digest covers: the recipe's model section (fine-tuning and parallel
// sections may change between save and load; the model may not).
std::string model_section_text(const config::Recipe& recipe);

}  // namespace moetrain::trainer
