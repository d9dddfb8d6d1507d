// All-gather and reduce-scatter of rows on real ranks, over both CPU backends (MPI, and the TCP store
// with its server on rank 0): exact values for int64 and float, errors on shapes the ranks disagree on,
// the bytes each sends, tensor parallelism's token gather built on them, and the MPI backend's host
// staging (exercised on the CPU through non-contiguous and bf16 tensors).
#include <gtest/gtest.h>
#include <mpi.h>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <functional>
#include <thread>

#include "parallel/comm_clock.h"
#include "parallel/communicator_mpi.h"
#include "parallel/communicator_store.h"
#include "parallel/tensor_parallel.h"

using namespace moetrain;

namespace {

// One TCP store per process for the whole binary: rank 0 serves on a free port, MPI tells the others.
c10::intrusive_ptr<c10d::Store> shared_store(int rank, int size) {
  static c10::intrusive_ptr<c10d::Store> store;
  if (store) return store;
  c10d::TCPStoreOptions options;
  options.isServer = rank == 0;
  options.port = 0;  // the server picks a free port
  options.numWorkers = std::nullopt;
  options.waitWorkers = false;
  options.timeout = std::chrono::seconds(60);
  int port = 0;
  c10::intrusive_ptr<c10d::TCPStore> server;
  if (rank == 0) {
    server = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
    port = server->getPort();
  }
  MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    store = server;
  } else {
    options.port = static_cast<uint16_t>(port);
    store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
  }
  (void)size;
  return store;
}

// The world over the backend named by the test parameter. Store groups get a fresh key prefix per
// test (every rank counts the same tests).
std::unique_ptr<parallel::Communicator> world(const std::string& backend) {
  auto mpi = parallel::MpiCommunicator::world();
  if (backend == "mpi") return mpi;
  static int instance = 0;
  std::vector<int> members(mpi->size());
  for (int r = 0; r < mpi->size(); ++r) members[r] = r;
  return std::make_unique<parallel::StoreCommunicator>(shared_store(mpi->rank(), mpi->size()),
                                                       "test/" + std::to_string(instance++), "world",
                                                       mpi->rank(), members);
}

// The CommError message of fn, or "" if it returns.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const parallel::CommError& e) {
    return e.what();
  }
  return "";
}

// Rows of rank r: (n, 3), values r·1000 + 0, 1, 2, ... (exact in float).
torch::Tensor rows_of(int r, int64_t n, torch::ScalarType dtype) {
  return (torch::arange(n * 3, torch::kInt64).view({n, 3}) + r * 1000).to(dtype);
}

class Collectives : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(Collectives, AllGatherRowsConcatenatesTheRanksRowsInRankOrder) {
  auto comm = world(GetParam());
  const int p = comm->size(), me = comm->rank();
  for (auto dtype : {torch::kInt64, torch::kFloat32}) {
    for (int64_t n : {int64_t{2}, int64_t{0}}) {
      std::vector<torch::Tensor> expected;
      for (int r = 0; r < p; ++r) expected.push_back(rows_of(r, n, dtype));
      auto got = comm->all_gather_rows(rows_of(me, n, dtype));
      EXPECT_EQ(got.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(got, torch::cat(expected))) << c10::toString(dtype) << " n " << n << "\n"
                                                           << got;
    }
  }
  // More dims: rows are (2, 2) blocks.
  auto rows = rows_of(me, 4, torch::kFloat32).view({2, 2, 3});
  auto got = comm->all_gather_rows(rows);
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2 * p, 2, 3}));
  EXPECT_TRUE(torch::equal(got.narrow(0, 2 * me, 2), rows));
}

TEST_P(Collectives, ReduceScatterRowsSumGivesEachRankTheSumOfItsBlock) {
  auto comm = world(GetParam());
  const int p = comm->size(), me = comm->rank();
  for (auto dtype : {torch::kInt64, torch::kFloat32}) {
    // Rank r passes (r+1)·base with base (2p, 3) = 0, 1, 2, ...: the sum over ranks is p(p+1)/2 · base.
    auto base = torch::arange(2 * p * 3, torch::kInt64).view({2 * p, 3});
    auto t = (base * (me + 1)).to(dtype);
    auto got = comm->reduce_scatter_rows_sum(t);
    auto expected = (base.narrow(0, 2 * me, 2) * (p * (p + 1) / 2)).to(dtype);
    EXPECT_EQ(got.scalar_type(), dtype);
    EXPECT_TRUE(torch::equal(got, expected)) << c10::toString(dtype) << "\n" << got;
    // The same as this rank's block of an all-reduce.
    auto all = t.clone();
    comm->all_reduce_sum(all);
    EXPECT_TRUE(torch::equal(got, all.narrow(0, 2 * me, 2)));
  }
}

TEST_P(Collectives, EveryRankThrowsWhenTheRanksPassDifferentShapes) {
  auto comm = world(GetParam());
  const int me = comm->rank();
  const std::string who = "rank " + std::to_string(me) + " of group world: ";
  // Rank 0 passes 3 rows, the others 2.
  auto e = error_of([&] { comm->all_gather_rows(rows_of(me, me == 0 ? 3 : 2, torch::kFloat32)); });
  EXPECT_NE(e.find(who + "all_gather_rows: ranks pass different shapes"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 0 [3, 3] Float, rank 1 [2, 3] Float"), std::string::npos) << e;
  // Different dtypes.
  e = error_of([&] { comm->all_gather_rows(rows_of(me, 2, me == 0 ? torch::kInt64 : torch::kFloat32)); });
  EXPECT_NE(e.find("rank 0 [2, 3] Long, rank 1 [2, 3] Float"), std::string::npos) << e;
  e = error_of([&] { comm->reduce_scatter_rows_sum(torch::zeros({2 * comm->size(), me == 0 ? 4 : 3})); });
  EXPECT_NE(e.find(who + "reduce_scatter_rows_sum: ranks pass different shapes"), std::string::npos) << e;
  // The same shape everywhere, but rows that the group cannot share out.
  e = error_of([&] { comm->reduce_scatter_rows_sum(torch::zeros({comm->size() + 1, 3})); });
  EXPECT_NE(e.find(who + "reduce_scatter_rows_sum: shape [" + std::to_string(comm->size() + 1) +
                   ", 3] Float: dim 0 (" + std::to_string(comm->size() + 1) +
                   " rows) is not divisible by the group size " + std::to_string(comm->size())),
            std::string::npos)
      << e;
  e = error_of([&] { comm->all_gather_rows(torch::zeros({})); });
  EXPECT_NE(e.find(who + "all_gather_rows: shape [] Float: needs 1 to 8 dimensions"), std::string::npos) << e;
  // No rank was left inside a collective: the group still works.
  EXPECT_EQ(comm->all_gather_rows(rows_of(me, 1, torch::kInt64)).size(0), comm->size());
}

TEST_P(Collectives, BytesSentAreWhatTheOtherRanksReceive) {
  auto comm = world(GetParam());
  const int p = comm->size();
  auto rows = rows_of(comm->rank(), 5, torch::kFloat32);  // 60 bytes
  const int64_t gathered = comm->all_gather_bytes_sent(), scattered = comm->reduce_scatter_bytes_sent();
  comm->all_gather_rows(rows);
  EXPECT_EQ(comm->all_gather_bytes_sent() - gathered, (p - 1) * 60);
  auto t = torch::ones({3 * p, 4}, torch::kInt64);  // p blocks of 96 bytes
  comm->reduce_scatter_rows_sum(t);
  EXPECT_EQ(comm->reduce_scatter_bytes_sent() - scattered, (p - 1) * 96);
}

TEST_P(Collectives, SubgroupsGatherAndScatterAmongTheirOwnMembers) {
  auto comm = world(GetParam());
  if (comm->size() < 4) GTEST_SKIP() << "needs 4 ranks";
  auto pair = comm->split(comm->rank() / 2, comm->rank(), "pair");  // {0,1} {2,3}
  const int first = comm->rank() / 2 * 2;
  auto got = pair->all_gather_rows(rows_of(comm->rank(), 1, torch::kInt64));
  EXPECT_TRUE(
      torch::equal(got, torch::cat({rows_of(first, 1, torch::kInt64), rows_of(first + 1, 1, torch::kInt64)})));
  auto sum = pair->reduce_scatter_rows_sum(torch::full({2, 1}, comm->rank(), torch::kInt64));
  EXPECT_EQ(sum.item<int64_t>(), 2 * first + 1);
}

// Tensor parallelism's token gather: forward the all-gather, backward this rank's slice; scatter's
// backward the all-gather. It sends (p−1)/p of the p-copy send buffer the all-to-all version built,
// the same rows to other ranks, and no all-to-all.
TEST_P(Collectives, TensorParallelGatherIsOneAllGatherAndKeepsItsBackward) {
  auto comm = world(GetParam());
  const int p = comm->size(), me = comm->rank();
  parallel::TensorParallel tp(*comm);
  const int64_t n = 3, D = 4, row_bytes = D * 4;
  auto x = rows_of(me, n, torch::kFloat32).repeat({1, 2}).narrow(1, 0, D).contiguous().requires_grad_();
  const int64_t a2a = comm->all_to_all_bytes_sent(), gathered = comm->all_gather_bytes_sent();
  auto y = tp.gather_tokens(x);
  const int64_t sent = comm->all_gather_bytes_sent() - gathered;
  EXPECT_EQ(comm->all_to_all_bytes_sent() - a2a, 0);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{p * n, D}));
  EXPECT_TRUE(torch::equal(y.narrow(0, me * n, n), x.detach()));

  // The all-to-all version, measured on the same group: p copies of the rows as the send buffer.
  std::vector<int64_t> counts(p, n);
  auto copies = x.detach().repeat({p, 1});
  const int64_t before = comm->all_to_all_bytes_sent();
  auto y_a2a = comm->all_to_all_v(copies, counts, counts);
  const int64_t a2a_sent = comm->all_to_all_bytes_sent() - before;
  EXPECT_TRUE(torch::equal(y.detach(), y_a2a));
  const int64_t buffer = static_cast<int64_t>(copies.nbytes());
  EXPECT_EQ(buffer, p * n * row_bytes);
  EXPECT_EQ(sent, (p - 1) * n * row_bytes);
  EXPECT_EQ(sent * p, buffer * (p - 1));  // (p−1)/p of the all-to-all version's send buffer
  EXPECT_EQ(sent, a2a_sent);              // the rows reaching other ranks are the same
  if (me == 0) {
    std::printf(
        "[ bytes    ] %s p=%d: TP gather of %lld bytes/rank: all-gather sent %lld; all-to-all send buffer %lld, "
        "of which %lld to other ranks\n",
        GetParam().c_str(), p, static_cast<long long>(n * row_bytes), static_cast<long long>(sent),
        static_cast<long long>(buffer), static_cast<long long>(a2a_sent));
  }

  // Backward of gather: this rank's slice of the (replicated) gradient.
  auto g = torch::arange(p * n * D, torch::kFloat32).view({p * n, D});
  y.backward(g);
  EXPECT_TRUE(torch::equal(x.grad(), g.narrow(0, me * n, n)));
  // Backward of scatter: the ranks' gradient slices, all-gathered.
  auto full = torch::zeros({p * n, D}).requires_grad_();
  auto mine = tp.scatter_tokens(full);
  ASSERT_EQ(mine.sizes(), (std::vector<int64_t>{n, D}));
  mine.backward(torch::full({n, D}, static_cast<float>(me)));
  for (int r = 0; r < p; ++r)
    EXPECT_TRUE(torch::equal(full.grad().narrow(0, r * n, n), torch::full({n, D}, static_cast<float>(r))));
}

INSTANTIATE_TEST_SUITE_P(Backends, Collectives, ::testing::Values("mpi", "store"));

// The MPI backend runs every operation on host memory: a CUDA tensor is copied to the host and back.
// The same staging path is taken on the CPU by tensors that are not already contiguous host tensors
// of an MPI type, which is how it is tested here (no GPU on CI).
// Non-blocking all-reduces: several in flight at once, waited in another order than started, give the
// blocking call's exact result, over MPI (MPI_Iallreduce) and the store (which runs it at the start).
TEST_P(Collectives, AllReducesInFlightAtOnceEqualTheBlockingCall) {
  auto comm = world(GetParam());
  const int p = comm->size(), me = comm->rank();
  torch::manual_seed(3 + me);
  std::vector<torch::Tensor> sync, async;
  for (int64_t n : {1, 1000, 70000}) {
    async.push_back(torch::randn({n}) * (me + 1));
    sync.push_back(async.back().clone());
  }
  async.push_back(torch::arange(5, torch::kInt64) * (me + 1));
  sync.push_back(async.back().clone());
  std::vector<std::unique_ptr<parallel::Work>> works;
  for (auto& t : async) works.push_back(comm->all_reduce_sum_async(t));
  for (auto it = works.rbegin(); it != works.rend(); ++it) (*it)->wait();
  for (auto& t : sync) comm->all_reduce_sum(t);
  for (size_t i = 0; i < sync.size(); ++i) EXPECT_TRUE(torch::equal(async[i], sync[i])) << i;
  EXPECT_TRUE(torch::equal(async.back(), torch::arange(5, torch::kInt64) * (p * (p + 1) / 2)));
  // completed(): true once every rank has started it (MPI progresses it when polled).
  auto x = torch::full({4}, 1.0f);
  auto work = comm->all_reduce_sum_async(x);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!work->completed() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  EXPECT_TRUE(work->completed());
  EXPECT_TRUE(torch::equal(x, torch::full({4}, static_cast<float>(p))));
}

// Autograd's device thread may run a collective's backward while the main thread waits: MPI must allow calls
// from more than one thread (one at a time).
TEST(MpiWorld, RunsAtTheThreadLevelItNeeds) {
  auto comm = parallel::MpiCommunicator::world();
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  EXPECT_GE(provided, parallel::kMpiThreadLevel);
  EXPECT_GE(provided, MPI_THREAD_SERIALIZED);
}

TEST(MpiStaging, NonContiguousTensorsAreStagedAndWrittenBack) {
  auto comm = parallel::MpiCommunicator::world();
  const int p = comm->size(), me = comm->rank();
  auto base = torch::arange(6, torch::kFloat32).view({2, 3}) + 1;
  auto t = (base * (me + 1)).t();  // (3, 2), a transposed view
  ASSERT_FALSE(t.is_contiguous());
  comm->all_reduce_sum(t);
  EXPECT_TRUE(torch::equal(t, base.t() * (p * (p + 1) / 2)));
  auto b = torch::full({2, 3}, static_cast<float>(me)).t();
  comm->broadcast(b, p - 1);
  EXPECT_TRUE(torch::equal(b, torch::full({3, 2}, static_cast<float>(p - 1))));
  auto rows = rows_of(me, 2, torch::kInt64).t();  // (3, 2) view
  auto got = comm->all_gather_rows(rows);
  EXPECT_TRUE(torch::equal(got.narrow(0, 3 * me, 3), rows));
}

TEST(MpiStaging, Bf16IsMovedBitForBitAndSummedInBf16OnTheWire) {
  auto comm = parallel::MpiCommunicator::world();
  const int p = comm->size(), me = comm->rank();
  auto x = torch::full({4}, 1.0 + me / 128.0, torch::kBFloat16);  // exact in bf16
  auto got = comm->all_gather_rows(x);
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  for (int r = 0; r < p; ++r) EXPECT_EQ(got[r * 4].item<float>(), static_cast<float>(1.0 + r / 128.0));
  // Sums travel in bf16 (2 bytes an element, as NCCL's), each partial sum added in fp32 and rounded to bf16.
  // Two ranks: the fp32 sum rounded once, 256 + 1 = 257 -> 256 (to even). Partial sums exact in bf16 give
  // the exact sum in any order.
  parallel::comm_clock().take();
  auto s = torch::full({2}, me == 0 ? 256.0 : 1.0, torch::kBFloat16);
  comm->all_reduce_sum(s);
  EXPECT_EQ(s.scalar_type(), torch::kBFloat16);
  if (p == 2) {
    EXPECT_EQ(s[0].item<float>(), 256.0f);
  }
  const auto tallies = parallel::comm_clock().take();
  ASSERT_FALSE(tallies.empty());
  EXPECT_EQ(tallies.back().bytes, 2 * 2) << "two bf16 elements on the wire, not widened to fp32";
  auto e = torch::full({3}, 0.25 * (me + 1), torch::kBFloat16);
  comm->all_reduce_sum(e);
  EXPECT_EQ(e[1].item<float>(), static_cast<float>(0.25 * p * (p + 1) / 2));
  auto rs = comm->reduce_scatter_rows_sum(torch::full({p, 2}, 0.5, torch::kBFloat16));
  EXPECT_EQ(rs.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(rs, torch::full({1, 2}, 0.5 * p, torch::kBFloat16)));
}
