#include "parallel/communicator_mpi.h"

#include "parallel/comm_clock.h"

#include <sched.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <optional>
#include <string>
#include <thread>

namespace moetrain::parallel {
namespace {

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kUInt8:
    case torch::kBool: return MPI_UINT8_T;
    case torch::kBFloat16:
    case torch::kHalf: return MPI_UINT16_T;  // moved bit for bit; summed by sum_op
    default:
      throw CommError("MPI communicator: unsupported dtype " + std::string(c10::toString(t.scalar_type())));
  }
}

// MPI sums only the types it knows: 16-bit floats are summed by user operations on MPI_UINT16_T that
// add in fp32 and round to the tensor's dtype at each step of the reduction, as NCCL does. With two ranks
// that is the fp32 sum rounded once; with more, each partial sum is rounded (the reduction's order is
// MPI's, as for fp32). The message stays 16-bit: half the bytes of widening to fp32.
template <typename T>
void sum_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

MPI_Op sum_op(const torch::Tensor& t) {
  static MPI_Op bf16 = MPI_OP_NULL, fp16 = MPI_OP_NULL;  // created on first use (after MPI_Init), kept
  if (t.scalar_type() == torch::kBFloat16) {
    if (bf16 == MPI_OP_NULL) MPI_Op_create(&sum_16bit<c10::BFloat16>, /*commute=*/1, &bf16);
    return bf16;
  }
  if (t.scalar_type() == torch::kHalf) {
    if (fp16 == MPI_OP_NULL) MPI_Op_create(&sum_16bit<c10::Half>, /*commute=*/1, &fp16);
    return fp16;
  }
  return MPI_SUM;
}

// Host staging, written once for every operation. MPI reads and writes host memory, so each operation
// runs on staged(t): t itself when it is a contiguous CPU tensor (the CPU path copies nothing), else a
// contiguous host copy (CUDA tensors go through host memory). unstaged() takes a result back to the
// caller's device (no copy when it is the host tensor's).
torch::Tensor staged(const torch::Tensor& t) { return t.to(torch::kCPU).contiguous(); }
torch::Tensor unstaged(const torch::Tensor& host, const torch::Tensor& like) {
  return host.to(like.device(), like.scalar_type());
}
// In-place operations: the staged result back into t (nothing to do when the operation ran on t).
void write_back(torch::Tensor& t, const torch::Tensor& host) {
  if (!host.is_same(t)) t.copy_(host);
}

// The watchdog's alarm channel: reports travel as MPI_CHAR messages with their own tag on a duplicate of
// MPI_COMM_WORLD, so they never match a collective's traffic. Sends are buffered by MPI (the buffers live
// until the process exits); receiving only takes what has already arrived.
class MpiAlarmChannel : public AlarmChannel {
 public:
  MpiAlarmChannel() {
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  void raise(const std::string& report) override {
    sent_.push_back(report);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request request;
      MPI_Isend(sent_.back().data(), static_cast<int>(sent_.back().size()), MPI_CHAR, r, kTag, comm_, &request);
      MPI_Request_free(&request);
    }
  }
  std::vector<std::string> receive() override {
    std::vector<std::string> out;
    while (true) {
      int arrived = 0, length = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, kTag, comm_, &arrived, &status) != MPI_SUCCESS || !arrived) break;
      MPI_Get_count(&status, MPI_CHAR, &length);
      std::string text(static_cast<size_t>(length), '\0');
      MPI_Recv(text.data(), length, MPI_CHAR, status.MPI_SOURCE, kTag, comm_, MPI_STATUS_IGNORE);
      out.push_back(std::move(text));
    }
    return out;
  }

 private:
  static constexpr int kTag = 7401;
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::deque<std::string> sent_;  // stable addresses for MPI_Isend
};

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  int initialized = 0, provided = MPI_THREAD_SINGLE;
  MPI_Initialized(&initialized);
  if (!initialized) {
    MPI_Init_thread(nullptr, nullptr, kMpiThreadLevel, &provided);
    std::atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < kMpiThreadLevel) {
    throw CommError("MPI provides thread level " + std::to_string(provided) +
                    ", below MPI_THREAD_SERIALIZED (" + std::to_string(kMpiThreadLevel) +
                    "), which moe-train needs: autograd runs the backward of a collective on its device thread "
                    "when the tensors are on a GPU. Use an MPI built with thread support (Open MPI 4.1 from "
                    "Debian provides MPI_THREAD_MULTIPLE)");
  }
  watchdog().set_alarm_channel(std::make_shared<MpiAlarmChannel>());
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", /*owned=*/false);
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
    : comm_(comm), name_(std::move(name)), owned_(owned) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  // The members' world ranks, for the watchdog's reports.
  MPI_Group group, world;
  MPI_Comm_group(comm_, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> mine(size_);
  identity_ = {name_, "mpi", std::vector<int>(size_)};
  for (int r = 0; r < size_; ++r) mine[r] = r;
  MPI_Group_translate_ranks(group, size_, mine.data(), world, identity_.world_ranks.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized) MPI_Comm_free(&comm_);
}

void MpiCommunicator::check(int rc, const char* op) const {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": MPI " + op +
                  " failed: " + std::string(text, len));
}

int MpiCommunicator::count(int64_t elements, const char* op) const {
  if (elements >= INT32_MAX)
    fail(op, "message of " + std::to_string(elements) + " elements, over MPI's 2^31 - 1");
  return static_cast<int>(elements);
}

Watchdog::Wait MpiCommunicator::watched(const char* op, int64_t bytes) {
  return watchdog().enter(identity_, sequence_++, op, bytes);
}

// MOETRAIN_MPI_WAIT: "poll" (default: the watched wait below) or "block" (MPI_Wait: no deadline, so
// parallel.timeout_s does not apply to MPI collectives). "block" is the baseline of `moe-bench
// collectives` and a way out should polling ever cost a machine more than it saves.
static bool blocking_wait() {
  static const bool block = [] {
    const char* v = std::getenv("MOETRAIN_MPI_WAIT");
    const std::string mode = v ? v : "poll";
    if (mode != "poll" && mode != "block") {
      throw CommError("MOETRAIN_MPI_WAIT=" + mode +
                      ": expected poll (the default: collectives time out after "
                      "parallel.timeout_s) or block (MPI_Wait, no timeout); unset it or pick one");
    }
    return mode == "block";
  }();
  return block;
}

// Polls MPI_Test (which also progresses the operation) and ticks the watchdog. For the first millisecond it
// spins, as MPI_Wait does; then it yields the core at every poll (CI runs more ranks than cores); after
// 100 ms it sleeps 1 ms between polls. A sleep while the peers are still busy costs a scheduler tick
// (4 ms at HZ=250) when the machine is loaded: short sleeps made a 4 KiB all-reduce take 4 ms instead of
// 10 us (moe-bench collectives, docs/benchmarks.md).
void MpiCommunicator::complete(MPI_Request& request, Watchdog::Wait& wait, const char* op) const {
  if (blocking_wait()) {
    check(MPI_Wait(&request, MPI_STATUS_IGNORE), op);
    return;
  }
  for (int64_t polls = 0;; ++polls) {
    int done = 0;
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), op);
    if (done) return;
    wait.tick();
    if (polls < 100) continue;
    const double waited = wait.waited_s();
    if (waited < 1e-3) continue;
    if (waited < 0.1) sched_yield();
    else std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void MpiCommunicator::all_reduce_sum(torch::Tensor& t) {
  auto host = staged(t);
  auto wait = watched("all_reduce_sum", static_cast<int64_t>(host.nbytes()));
  MPI_Request request;
  check(MPI_Iallreduce(MPI_IN_PLACE, host.data_ptr(), count(host.numel(), "all_reduce_sum"), mpi_type(host),
                       sum_op(host), comm_, &request),
        "Iallreduce");
  complete(request, wait, "Iallreduce");
  write_back(t, host);
}

// An MPI_Iallreduce in flight: its staged host tensor, its request and its watchdog entry.
class MpiWork : public Work {
 public:
  MpiWork(const MpiCommunicator& comm, torch::Tensor t, torch::Tensor host, Watchdog::Wait wait)
      : comm_(comm), t_(std::move(t)), host_(std::move(host)), wait_(std::move(wait)) {}
  ~MpiWork() override {
    if (done_) return;
    try {
      wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "moe-train: an all-reduce dropped unwaited failed: %s\n", e.what());
    }
  }
  MPI_Request request = MPI_REQUEST_NULL;

  void wait() override {
    if (done_) return;
    const auto start = std::chrono::steady_clock::now();
    comm_.complete(request, *wait_, "Iallreduce");
    finish();
    comm_clock().add(comm_.name(), "all_reduce_sum_async/wait",
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 0);
  }
  bool completed() override {
    if (done_) return true;
    int flag = 0;
    comm_.check(MPI_Test(&request, &flag, MPI_STATUS_IGNORE), "Iallreduce");
    if (flag) finish();
    return done_;
  }

 private:
  void finish() {
    write_back(t_, host_);
    done_ = true;
    wait_.reset();  // the collective's end, for the flight record and the step's communication time
  }
  const MpiCommunicator& comm_;
  torch::Tensor t_, host_;
  std::optional<Watchdog::Wait> wait_;
  bool done_ = false;
};

std::unique_ptr<Work> MpiCommunicator::all_reduce_sum_async(torch::Tensor& t) {
  auto host = staged(t);
  auto work = std::make_unique<MpiWork>(*this, t, host,
                                        watched("all_reduce_sum_async", static_cast<int64_t>(host.nbytes())));
  check(MPI_Iallreduce(MPI_IN_PLACE, host.data_ptr(), count(host.numel(), "all_reduce_sum"), mpi_type(host),
                       sum_op(host), comm_, &work->request),
        "Iallreduce");
  return work;
}

void MpiCommunicator::broadcast(torch::Tensor& t, int root) {
  auto host = staged(t);
  auto wait = watched("broadcast", static_cast<int64_t>(host.nbytes()));
  MPI_Request request;
  check(MPI_Ibcast(host.data_ptr(), count(host.numel(), "broadcast"), mpi_type(host), root, comm_, &request),
        "Ibcast");
  complete(request, wait, "Ibcast");
  write_back(t, host);
}

torch::Tensor MpiCommunicator::all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                            const std::vector<int64_t>& recv_counts) {
  TORCH_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
              "all_to_all_v: one count per rank of group ", name_);
  auto in = staged(send);
  int64_t row = 1;  // elements per row (the tensor may have no rows at all)
  for (int64_t d = 1; d < in.dim(); ++d) row *= in.size(d);
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t s_off = 0, r_off = 0, r_rows = 0;
  for (int r = 0; r < size_; ++r) {
    TORCH_CHECK(send_counts[r] * row < INT32_MAX && s_off < INT32_MAX && r_off < INT32_MAX,
                "all_to_all_v: message over 2^31 elements");
    sc[r] = static_cast<int>(send_counts[r] * row), sd[r] = static_cast<int>(s_off), s_off += sc[r];
    rc[r] = static_cast<int>(recv_counts[r] * row), rd[r] = static_cast<int>(r_off), r_off += rc[r];
    r_rows += recv_counts[r];
    if (r != rank_) a2a_bytes_ += sc[r] * static_cast<int64_t>(in.element_size());
  }
  TORCH_CHECK(s_off == in.numel(), "all_to_all_v: send counts cover ", s_off, " elements, tensor has ",
              in.numel());
  auto shape = in.sizes().vec();
  shape[0] = r_rows;
  auto out = torch::empty(shape, in.options());
  auto wait = watched("all_to_all_v", static_cast<int64_t>(in.nbytes()));
  MPI_Request request;
  check(MPI_Ialltoallv(in.data_ptr(), sc.data(), sd.data(), mpi_type(in), out.data_ptr(), rc.data(),
                       rd.data(), mpi_type(in), comm_, &request),
        "Ialltoallv");
  complete(request, wait, "Ialltoallv");
  return unstaged(out, send);
}

torch::Tensor MpiCommunicator::all_gather_rows(const torch::Tensor& rows) {
  agree_on_rows("all_gather_rows", rows, /*divisible_rows=*/false);
  auto in = staged(rows);
  auto shape = in.sizes().vec();
  shape[0] *= size_;
  auto out = torch::empty(shape, in.options());  // (size·n, ...)
  const int n = count(in.numel(), "all_gather_rows");
  count(out.numel(), "all_gather_rows");
  auto wait = watched("all_gather_rows", static_cast<int64_t>(in.nbytes()));
  MPI_Request request;
  check(MPI_Iallgather(in.data_ptr(), n, mpi_type(in), out.data_ptr(), n, mpi_type(in), comm_, &request),
        "Iallgather");
  complete(request, wait, "Iallgather");
  all_gather_bytes_ += (size_ - 1) * static_cast<int64_t>(in.nbytes());
  return unstaged(out, rows);
}

torch::Tensor MpiCommunicator::reduce_scatter_rows_sum(const torch::Tensor& t) {
  agree_on_rows("reduce_scatter_rows_sum", t, /*divisible_rows=*/true);
  auto in = staged(t);
  auto shape = in.sizes().vec();
  shape[0] /= size_;
  auto out = torch::empty(shape, in.options());  // (n, ...)
  count(in.numel(), "reduce_scatter_rows_sum");
  auto wait = watched("reduce_scatter_rows_sum", static_cast<int64_t>(in.nbytes()));
  MPI_Request request;
  check(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), count(out.numel(), "reduce_scatter_rows_sum"),
                                  mpi_type(in), sum_op(in), comm_, &request),
        "Ireduce_scatter_block");
  complete(request, wait, "Ireduce_scatter_block");
  reduce_scatter_bytes_ += (size_ - 1) * static_cast<int64_t>(out.nbytes());
  return unstaged(out, t);
}

void MpiCommunicator::barrier() {
  auto wait = watched("barrier", 0);
  MPI_Request request;
  check(MPI_Ibarrier(comm_, &request), "Ibarrier");
  complete(request, wait, "Ibarrier");
}

void abort_job(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  // MPI_Comm_split blocks and cannot be watched: a watched barrier first proves every rank is alive
  // and splitting, so the split itself cannot wait for a missing peer.
  barrier();
  MPI_Comm sub;
  check(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
  return std::make_unique<MpiCommunicator>(sub, name, /*owned=*/true);
}

}  // namespace moetrain::parallel
