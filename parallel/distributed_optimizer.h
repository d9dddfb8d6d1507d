// The distributed optimizer (optimizer.distributed, ZeRO stage 1, as Megatron-Core's DistributedOptimizer):
// AdamW's moments sharded over the ranks that hold the same parameters, instead of replicated on each.
//
// Groups, as gradient synchronisation has them (parallel/grad_sync.h): dense parameters over dp, expert
// parameters over expert_dp. Each group's trainable parameters, in named_parameters() order, form one flat
// fp32 vector of n elements, padded to a multiple of the group size d; rank r owns elements
// [r·s, (r+1)·s) with s = ceil(n / d), and the AdamW moments of those elements only (8·s bytes instead of
// 8·n). A parameter may straddle two shards.
//
// A step: after backward, tensor-parallel shares are summed over tp (as before); each group's gradients are
// reduce-scattered over the group and divided by the dp size: rank r receives the mean gradient of its
// shard only, and the full gradients are freed. The gradient norm sums the shards' squares (fp64) over the
// group, then over tp and ep as global_grad_norm does; clipping scales the shards. AdamW updates the
// parameters' shard (elementwise: the same operations torch::optim::AdamW applies, on slices), and the
// updated shards are all-gathered back into every rank's parameters.
//
// Equality with the replicated optimizer: the reduce-scatter adds the same values as the all-reduce, so with
// 2 ranks the gradients are bitwise equal (a + b); AdamW is elementwise, so equal gradients give bitwise
// equal parameters. The gradient norm adds the same squares in another order (per shard, then over the
// group): it may differ in the last bits of its fp64 value, and so may the clipping factor; steps where
// the norm is below optimizer.grad_clip are then unaffected. tests/e2e/distributed_optimizer.py holds
// every step's loss to 1e-6 relative and reports whether it was bitwise.
//
// With gradient buckets (parallel.grad_bucket_mb > 0) the gradients are all-reduced in buckets during backward
// instead (parallel/grad_buckets.h) and each rank takes its shard of the means (shard_reduced_gradients): the
// moments stay sharded, the reduction overlaps backward, and it moves twice the reduce-scatter's bytes (a
// reduce-scatter per bucket, as Megatron-Core does, is not built yet).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "csrc/config/recipe.pb.h"
#include "csrc/model/sharding.h"
#include "csrc/model/transformer.h"
#include "parallel/mesh.h"

namespace moetrain::parallel {

// Rank r's shard of a flat vector of n elements over d ranks: [r·s, min((r+1)·s, n)) with s = ceil(n / d)
// (the last ranks may own fewer elements, or none).
struct FlatRange {
  int64_t begin = 0, end = 0;
};
FlatRange shard_range(int64_t n, int64_t d, int64_t r);

// Boxes (offsets, sizes) whose union is the elements [begin, end) of a row-major tensor of `shape`, in
// order: at most 2·dims − 1 of them. How a shard's piece of a parameter is saved in a checkpoint.
struct FlatBox {
  std::vector<int64_t> offsets, sizes;
};
std::vector<FlatBox> flat_range_boxes(const std::vector<int64_t>& shape, int64_t begin, int64_t end);

class DistributedOptimizer {
 public:
  DistributedOptimizer(model::TransformerImpl& model, ProcessMesh& mesh,
                       const config::OptimizerConfig& options);

  // optimizer.param_dtype BF16: the parameters `in_bf16` selects are converted to bf16, and this rank's
  // shard of every parameter is kept in fp32 (the master weights) and updated there. Call it once, after
  // initialisation and before the first step. `reduce_in_bf16` (optimizer.grad_dtype BF16): gradients stay
  // bf16 and are reduce-scattered in bf16; otherwise each micro-batch's are accumulated in fp32
  // (accumulate_gradients) and reduce-scattered in fp32.
  void hold_params_in_bf16(const std::function<bool(const std::string&, const torch::Tensor&)>& in_bf16,
                           bool reduce_in_bf16);
  bool keeps_master() const { return bf16_params_; }
  // After each micro-batch's backward: bf16 gradients added into fp32 buffers and freed (bf16 parameters
  // with fp32 gradients; otherwise nothing).
  void accumulate_gradients();

  void set_lr(double lr) { lr_ = lr; }
  // After the step's last backward: the tensor-parallel sums, then the reduce-scatter of each group.
  // Parameters without a gradient count zeros. The parameters' .grad are freed.
  void reduce_scatter_gradients();
  // Instead, with gradient buckets (parallel.grad_bucket_mb > 0): the .grad already hold the means, all-reduced
  // in buckets during backward (parallel/grad_buckets.h); each group keeps its shard of them. Twice the bytes
  // of the reduce-scatter, overlapped with backward; the .grad stay (they are views into the buckets).
  void shard_reduced_gradients();
  // L2 norm of the whole model's gradient (fp64 scalar, the same on every rank), from the shards.
  torch::Tensor grad_norm();
  // Scales the shards' gradients by min(1, max_norm / (norm + 1e-6)), as trainer::clip_gradients does.
  void clip(double max_norm, const torch::Tensor& norm);
  // AdamW on this rank's shards, then the all-gather of the updated parameters.
  void step();
  int64_t steps() const { return steps_; }

  // This rank's part of one parameter's AdamW state: elements [begin, end) of the parameter flattened,
  // and the moments of those elements (views of the shard; undefined before the first step).
  struct Piece {
    std::string name;  // the parameter's name in named_parameters()
    torch::Tensor param;
    int64_t begin = 0, end = 0;
    torch::Tensor exp_avg, exp_avg_sq;  // (end − begin) fp32
    torch::Tensor master;               // bf16 parameters: the fp32 master values of those elements
    bool bf16 = false;                  // the parameter is held in bf16 (its weights are saved from `master`)
  };
  std::vector<Piece> pieces();
  // Starts the moments (zeros) so that a checkpoint can fill the pieces, with the step count it saved.
  void prepare_to_load(int64_t steps);

  // Bytes of AdamW state this rank holds (both moments).
  int64_t state_bytes() const;

 private:
  struct Member {  // one parameter of a group
    std::string name;
    torch::Tensor param;
    model::ParamRole role;
    int64_t offset = 0;      // in the group's flat vector
    bool decay = false;      // weight decay applies (matrices)
    bool bf16 = false;       // held in bf16 (optimizer.param_dtype BF16)
    torch::Tensor grad_sum;  // fp32 sum of its bf16 gradients over the step's micro-batches
  };
  struct Group {
    Communicator* comm = nullptr;
    std::vector<Member> members;
    int64_t numel = 0, shard_size = 0;
    FlatRange shard;
    torch::Tensor grad_shard;           // (shard_size) fp32, this step's mean gradient
    torch::Tensor exp_avg, exp_avg_sq;  // (shard_size) fp32, from the first step
    torch::Tensor master;               // (shard_size) fp32 master weights (bf16 parameters)
  };
  // The members' elements intersecting the shard: (member, first element in it, count, position in shard).
  struct Segment {
    const Member* member;
    int64_t begin, count, at;
  };
  static std::vector<Segment> segments(const Group& g);

  ProcessMesh& mesh_;
  std::vector<Group> groups_;           // dense (over dp), expert (over expert_dp)
  std::vector<torch::Tensor> partial_;  // tp shares, summed over tp before the reduce-scatter
  double lr_, beta1_, beta2_, eps_, weight_decay_;
  int64_t steps_ = 0;
  bool bf16_params_ = false, reduce_in_bf16_ = false;
};

}  // namespace moetrain::parallel
