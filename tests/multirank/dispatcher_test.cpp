// The expert-parallel all-to-all dispatcher across real MPI ranks, against the local dispatcher run on
// the same tokens in one process: forward, gradients, padding, and bytes on the wire.
#include <gtest/gtest.h>

#include "csrc/layers/precision.h"
#include "csrc/moe/dispatch.h"
#include "csrc/moe/experts.h"
#include "csrc/moe/moe_layer.h"
#include "csrc/util/host_sync.h"
#include "parallel/alltoall_dispatcher.h"
#include "parallel/model_parallel.h"
#include "parallel/communicator_mpi.h"
#include "parallel/mesh.h"

using namespace moetrain;

namespace {

constexpr int64_t kE = 8, kD = 8, kF = 16, kT = 12, kK = 2;

struct RankData {
  std::unique_ptr<parallel::Communicator> world = parallel::MpiCommunicator::world();
  int rank = world->rank(), size = world->size();
  // Every rank builds every rank's tokens from one seed, so the single-process reference is known.
  std::vector<torch::Tensor> x, kept, gates;
  moe::GroupedExperts all_experts{kE, kD, kF};
  RankData() {
    torch::manual_seed(11);
    for (auto& p : all_experts->parameters()) p.data().normal_(0, 0.3);
    for (int r = 0; r < size; ++r) {
      x.push_back(torch::randn({kT, kD}));
      auto idx = std::get<1>(torch::rand({kT, kE}).topk(kK, -1));
      kept.push_back(torch::zeros({kT, kE}, torch::kBool).scatter_(1, idx, true));
      gates.push_back(torch::zeros({kT, kE}).scatter_(1, idx, torch::rand({kT, kK})));
    }
  }
};

// Local experts [rank·El, (rank+1)·El) sharing the global weights.
moe::GroupedExperts local_shard(moe::GroupedExperts& all, int rank, int size) {
  const int64_t El = kE / size;
  moe::GroupedExperts local(El, kD, kF);
  torch::NoGradGuard no_grad;
  local->w1_EDF.copy_(all->w1_EDF.narrow(0, rank * El, El));
  local->w2_EFD.copy_(all->w2_EFD.narrow(0, rank * El, El));
  local->w3_EDF.copy_(all->w3_EDF.narrow(0, rank * El, El));
  return local;
}

torch::Tensor run_moe(moe::TokenDispatcher& d, moe::GroupedExperts& ex, const torch::Tensor& x,
                      const torch::Tensor& kept, const torch::Tensor& gates, const moe::RowLayout& layout) {
  auto dispatched = d.dispatch(x, kept, layout);
  return d.combine(ex(dispatched.tokens_ND, dispatched.tokens_per_expert_El), gates);
}

}  // namespace

TEST(AllToAllDispatcher, MatchesLocalDispatcherForwardAndBackward) {
  RankData s;
  for (int64_t pad : {int64_t{0}, int64_t{kT}}) {
    const auto layout = pad ? moe::RowLayout::padded(kE, pad) : moe::RowLayout::dropless(kT * kK);
    auto local = local_shard(s.all_experts, s.rank, s.size);
    auto x = s.x[s.rank].clone().requires_grad_();
    parallel::AllToAllDispatcher ep(*s.world, nullptr, kE);
    auto y = run_moe(ep, local, x, s.kept[s.rank], s.gates[s.rank], layout);

    moe::LocalDispatcher ref_dispatch(kE);
    auto x_ref = s.x[s.rank].clone().requires_grad_();
    auto y_ref = run_moe(ref_dispatch, s.all_experts, x_ref, s.kept[s.rank], s.gates[s.rank],
                         moe::RowLayout::dropless(kT * kK));
    EXPECT_TRUE(torch::allclose(y, y_ref, 1e-5, 1e-6)) << "pad " << pad;

    // Gradients: loss = Σ over ranks of Σ y·g_r. The input gradient is local; an expert shard's
    // gradient collects every rank's tokens, so compare with the sum of the references over ranks.
    auto g = torch::ones_like(y) * (s.rank + 1);
    (y * g).sum().backward();
    (y_ref * g).sum().backward();
    EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad(), 1e-5, 1e-6));
    auto ref_w1 = torch::zeros_like(s.all_experts->w1_EDF);
    for (int r = 0; r < s.size; ++r) {
      auto xr = s.x[r].clone();
      moe::LocalDispatcher d(kE);
      auto yr = run_moe(d, s.all_experts, xr, s.kept[r], s.gates[r], moe::RowLayout::dropless(kT * kK));
      ref_w1 += torch::autograd::grad({(yr * (r + 1)).sum()}, {s.all_experts->w1_EDF}).at(0);
    }
    const int64_t El = kE / s.size;
    EXPECT_TRUE(torch::allclose(local->w1_EDF.grad(), ref_w1.narrow(0, s.rank * El, El), 1e-4, 1e-5))
        << "pad " << pad;
    s.all_experts->zero_grad();
  }
}

TEST(AllToAllDispatcher, DroplessBytesOnTheWireEqualTheRoutedRowsLeavingThisRank) {
  RankData s;
  auto local = local_shard(s.all_experts, s.rank, s.size);
  parallel::AllToAllDispatcher ep(*s.world, nullptr, kE);
  const int64_t before = s.world->all_to_all_bytes_sent();
  run_moe(ep, local, s.x[s.rank], s.kept[s.rank], s.gates[s.rank], moe::RowLayout::dropless(kT * kK));
  const int64_t sent = s.world->all_to_all_bytes_sent() - before;
  // Expected: counts exchange (E_l int64 per other rank) + routed rows to other ranks, there and back
  // (the rows coming back from other ranks count on their side: the same number, by symmetry of the
  // test, is computed from what this rank receives).
  const int64_t El = kE / s.size;
  int64_t rows_out = 0, rows_back = 0;
  for (int64_t e = 0; e < kE; ++e) {
    if (e / El != s.rank) rows_out += s.kept[s.rank].select(1, e).sum().item<int64_t>();
  }
  for (int r = 0; r < s.size; ++r) {
    if (r == s.rank) continue;
    rows_back += s.kept[r].narrow(1, s.rank * El, El).sum().item<int64_t>();
  }
  const int64_t expected = (s.size - 1) * El * 8 + (rows_out + rows_back) * kD * 4;
  EXPECT_EQ(sent, expected);
}

// Under mixed precision (autocast to bf16) the dispatched rows travel in bf16 and come back in bf16: half
// the fp32 bytes. The result and the input gradient are those of fp32 rows cast by the experts, bit for bit.
TEST(AllToAllDispatcher, MixedPrecisionRowsTravelInTheComputeDtype) {
  RankData s;
  auto local = local_shard(s.all_experts, s.rank, s.size);
  parallel::AllToAllDispatcher ep(*s.world, nullptr, kE);
  const auto layout = moe::RowLayout::dropless(kT * kK);
  std::vector<int64_t> bytes;
  std::vector<torch::Tensor> outputs, grads;
  for (const bool wire_bf16 : {false, true}) {
    auto x = s.x[s.rank].clone().requires_grad_();
    torch::Tensor y;
    const int64_t before = s.world->all_to_all_bytes_sent();
    if (wire_bf16) {
      layers::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
      y = run_moe(ep, local, x, s.kept[s.rank], s.gates[s.rank], layout);
    } else {  // fp32 rows out (dispatched outside autocast), cast by the experts: the trip before
      auto dispatched = ep.dispatch(x, s.kept[s.rank], layout);
      layers::AutocastScope bf16(torch::kCPU, torch::kBFloat16);
      y = ep.combine(local(dispatched.tokens_ND, dispatched.tokens_per_expert_El), s.gates[s.rank]);
    }
    bytes.push_back(s.world->all_to_all_bytes_sent() - before);
    (y * (s.rank + 1)).sum().backward();
    outputs.push_back(y.detach());
    grads.push_back(x.grad());
  }
  EXPECT_TRUE(torch::equal(outputs[0], outputs[1]));
  EXPECT_TRUE(torch::equal(grads[0], grads[1]));
  EXPECT_EQ(outputs[1].scalar_type(), torch::kFloat32);
  EXPECT_EQ(grads[1].scalar_type(), torch::kFloat32);
  const int64_t counts = (s.size - 1) * (kE / s.size) * 8;  // the count exchange, int64
  EXPECT_LT(bytes[1] - counts, bytes[0] - counts) << "bf16 rows must be fewer bytes than fp32 rows";
}

// Capacity without padding: the unused tail of the rows stays on this rank, and the result equals the
// local dispatcher's on the same kept pairs.
TEST(AllToAllDispatcher, CappedLayoutSendsOnlyTheKeptRows) {
  RankData s;
  auto local = local_shard(s.all_experts, s.rank, s.size);
  auto kept = s.kept[s.rank].clone();
  kept.select(0, 0).fill_(false);  // fewer kept pairs than the bound
  auto x = s.x[s.rank].clone().requires_grad_();
  auto x_ref = s.x[s.rank].clone().requires_grad_();
  parallel::AllToAllDispatcher ep(*s.world, nullptr, kE);
  moe::LocalDispatcher ref(kE);
  auto y = run_moe(ep, local, x, kept, s.gates[s.rank], moe::RowLayout::capped(kT * kK));
  auto y_ref = run_moe(ref, s.all_experts, x_ref, kept, s.gates[s.rank], moe::RowLayout::capped(kT * kK));
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-5, 1e-6));
  y.sum().backward();
  y_ref.sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad(), 1e-5, 1e-6));
}

// docs/routing.md, "Host reads": an expert-parallel MoE layer's forward and backward read the device on
// the host once when dropless or capped (the all-to-all count matrix), never when padded.
TEST(AllToAllDispatcher, HostReadsPerLayerForwardAndBackward) {
  auto world = parallel::MpiCommunicator::world();
  const int P = world->size(), rank = world->rank();
  struct Case {
    const char* name;
    double capacity_factor;
    bool pad;
    int64_t reads;
  };
  for (const Case& c :
       {Case{"dropless", 0.0, false, 1}, Case{"capacity", 1.0, false, 1}, Case{"padded", 1.0, true, 0}}) {
    moe::MoEOptions o;
    o.d_model = kD, o.num_experts = kE, o.top_k = kK, o.expert_hidden = kF;
    o.local_experts = kE / P, o.first_local_expert = rank * (kE / P);
    o.routing.set_capacity_factor(c.capacity_factor), o.routing.set_pad_to_capacity(c.pad);
    o.routing.set_z_loss_coeff(1e-3);
    torch::manual_seed(3 + rank);
    moe::MoELayer layer(o);
    for (auto& p : layer->parameters()) p.data().normal_(0, 0.3);
    layer->set_parallel_context(
        std::make_shared<parallel::MeshMoEContext>(world.get(), nullptr, nullptr, world.get()));
    auto x = torch::randn({2, kT / 2, kD}, torch::requires_grad());
    util::HostReadCount count;
    auto out = layer(x);
    (out.y.square().sum() + out.aux_loss + out.z_loss).backward();
    std::string names;
    for (const auto& n : count.names()) names += n + "; ";
    EXPECT_EQ(count.reads(), c.reads) << c.name << " on rank " << rank << ": " << names;
  }
}

TEST(ProcessMesh, GroupsFollowTheDocumentedLayout) {
  auto world = parallel::MpiCommunicator::world();
  const int size = world->size(), rank = world->rank();
  if (size % 2 != 0) GTEST_SKIP() << "needs an even world";
  parallel::ProcessMesh mesh(std::move(world), {size, 1, 2, 1});
  EXPECT_EQ(mesh.dp().size(), size);
  EXPECT_EQ(mesh.ep().size(), 2);
  EXPECT_EQ(mesh.ep().rank(), rank % 2);
  EXPECT_EQ(mesh.expert_dp().size(), size / 2);
  EXPECT_EQ(mesh.expert_dp().rank(), rank / 2);
  // Ranks of one ep group are adjacent: all-reduce the world rank over it.
  auto t = torch::tensor({static_cast<int64_t>(rank)});
  mesh.ep().all_reduce_sum(t);
  EXPECT_EQ(t.item<int64_t>(), (rank / 2) * 4 + 1);
}

// MoE parallel folding (parallel/mesh.h): the expert mesh ETP × EP × EDP is laid over the world apart from
// the attention mesh TP × DP, so EP may exceed DP and an EP group may span tensor-parallel ranks.
TEST(ProcessMesh, ExpertMeshFoldsOntoTheWorldApartFromTheAttentionMesh) {
  auto world = parallel::MpiCommunicator::world();
  const int size = world->size(), rank = world->rank();
  if (size != 4) GTEST_SKIP() << "the documented examples have 4 ranks";
  auto ranks_of = [&](parallel::Communicator& group) {  // the group's world ranks, in group order
    auto mine = torch::zeros({group.size()}, torch::kInt64);
    mine[group.rank()] = rank;
    group.all_reduce_sum(mine);
    return std::vector<int64_t>(mine.data_ptr<int64_t>(), mine.data_ptr<int64_t>() + mine.numel());
  };
  {  // TP 2 × EP 4: the expert-parallel group is the world, wider than dp (2)
    parallel::ProcessMesh mesh(world->split(0, rank, "world"), {4, 2, 4, 1});
    EXPECT_EQ(ranks_of(mesh.tp()), (std::vector<int64_t>{rank / 2 * 2, rank / 2 * 2 + 1}));
    EXPECT_EQ(mesh.dp().size(), 2);
    EXPECT_EQ(ranks_of(mesh.ep()), (std::vector<int64_t>{0, 1, 2, 3}));
    EXPECT_EQ(mesh.expert_dp().size(), 1);
    EXPECT_EQ(mesh.placement().ep_rank, rank);
  }
  {  // ETP 2 × EP 2: expert-tensor ranks adjacent, expert-parallel ranks 2 apart
    parallel::ProcessMesh mesh(world->split(0, rank, "world"), {4, 1, 2, 2});
    EXPECT_EQ(ranks_of(mesh.expert_tp()), (std::vector<int64_t>{rank / 2 * 2, rank / 2 * 2 + 1}));
    EXPECT_EQ(ranks_of(mesh.ep()), (std::vector<int64_t>{rank % 2, rank % 2 + 2}));
    EXPECT_EQ(mesh.expert_dp().size(), 1);
    EXPECT_EQ(mesh.placement().etp_rank, rank % 2);
    EXPECT_EQ(mesh.placement().ep_rank, rank / 2);
  }
  {  // TP 2 × EP 2 × EDP 2: the expert shard of ranks 0 and 2 is the same
    parallel::ProcessMesh mesh(world->split(0, rank, "world"), {4, 2, 2, 1});
    EXPECT_EQ(ranks_of(mesh.ep()), (std::vector<int64_t>{rank / 2 * 2, rank / 2 * 2 + 1}));
    EXPECT_EQ(ranks_of(mesh.expert_dp()), (std::vector<int64_t>{rank % 2, rank % 2 + 2}));
  }
}

// Expert tensor parallelism: experts sharded over EP = size/2 and each expert's hidden dimension over
// ETP = 2. The dispatcher gathers the expert-tensor peers' rows and sums their partial down projections,
// so each rank's output and input gradient equal one process's, and each rank's weight slice gets the
// gradient of every rank's tokens (ETP × EP = world: no expert-data-parallel copies).
TEST(AllToAllDispatcher, ExpertTensorParallelMatchesLocalDispatcher) {
  RankData s;
  if (s.size % 2 != 0) GTEST_SKIP() << "needs an even world";
  parallel::ProcessMesh mesh(s.world->split(0, s.rank, "world"), {s.size, 1, s.size / 2, 2});
  const auto at = mesh.placement();
  const int64_t El = kE / at.ep_size, Fl = kF / 2;
  auto slice = [&](const torch::Tensor& w_EDF, int64_t hidden_dim) {
    return w_EDF.narrow(0, at.ep_rank * El, El).narrow(hidden_dim, at.etp_rank * Fl, Fl);
  };
  for (int64_t pad : {int64_t{0}, int64_t{kT}}) {
    const auto layout = pad ? moe::RowLayout::padded(kE, pad) : moe::RowLayout::dropless(kT * kK);
    moe::GroupedExperts local(El, kD, Fl);
    {
      torch::NoGradGuard no_grad;
      local->w1_EDF.copy_(slice(s.all_experts->w1_EDF, 2));
      local->w3_EDF.copy_(slice(s.all_experts->w3_EDF, 2));
      local->w2_EFD.copy_(slice(s.all_experts->w2_EFD, 1));
    }
    auto x = s.x[s.rank].clone().requires_grad_();
    parallel::AllToAllDispatcher d(mesh.ep(), &mesh.expert_tp(), kE);
    util::HostReadCount reads;
    auto y = run_moe(d, local, x, s.kept[s.rank], s.gates[s.rank], layout);
    EXPECT_EQ(reads.reads(), pad ? 0 : 1) << "one host read (dropless), none padded";

    moe::LocalDispatcher ref_dispatch(kE);
    auto x_ref = s.x[s.rank].clone().requires_grad_();
    auto y_ref = run_moe(ref_dispatch, s.all_experts, x_ref, s.kept[s.rank], s.gates[s.rank],
                         moe::RowLayout::dropless(kT * kK));
    EXPECT_TRUE(torch::allclose(y, y_ref, 1e-5, 1e-6)) << "pad " << pad;
    auto g = torch::ones_like(y) * (s.rank + 1);
    (y * g).sum().backward();
    (y_ref * g).sum().backward();
    EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad(), 1e-5, 1e-6)) << "pad " << pad;
    auto ref_w1 = torch::zeros_like(s.all_experts->w1_EDF), ref_w2 = torch::zeros_like(s.all_experts->w2_EFD);
    for (int r = 0; r < s.size; ++r) {
      moe::LocalDispatcher dr(kE);
      auto yr = run_moe(dr, s.all_experts, s.x[r], s.kept[r], s.gates[r], moe::RowLayout::dropless(kT * kK));
      auto grads = torch::autograd::grad({(yr * (r + 1)).sum()},
                                         {s.all_experts->w1_EDF, s.all_experts->w2_EFD});
      ref_w1 += grads[0], ref_w2 += grads[1];
    }
    EXPECT_TRUE(torch::allclose(local->w1_EDF.grad(), slice(ref_w1, 2), 1e-4, 1e-5)) << "pad " << pad;
    EXPECT_TRUE(torch::allclose(local->w2_EFD.grad(), slice(ref_w2, 1), 1e-4, 1e-5)) << "pad " << pad;
    s.all_experts->zero_grad();
  }
}
