#include "parallel/communicator_mpi.h"

#include <cstdlib>

namespace moetrain::parallel {
namespace {

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kUInt8: case torch::kBool: return MPI_UINT8_T;
    default: throw CommError("MPI communicator: unsupported dtype " + std::string(c10::toString(t.scalar_type())));
  }
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    MPI_Init(nullptr, nullptr);
    std::atexit(finalize_at_exit);
  }
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", /*owned=*/false);
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
    : comm_(comm), name_(std::move(name)), owned_(owned) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
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
  throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": MPI " + op + " failed: " + std::string(text, len));
}

void MpiCommunicator::all_reduce_sum(torch::Tensor& t) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "all_reduce_sum needs a contiguous CPU tensor");
  check(MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), MPI_SUM, comm_), "Allreduce");
}

void MpiCommunicator::broadcast(torch::Tensor& t, int root) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "broadcast needs a contiguous CPU tensor");
  check(MPI_Bcast(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), root, comm_), "Bcast");
}

torch::Tensor MpiCommunicator::all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                            const std::vector<int64_t>& recv_counts) {
  TORCH_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
              "all_to_all_v: one count per rank of group ", name_);
  auto in = send.contiguous();
  int64_t row = 1;  // elements per row (the tensor may have no rows at all)
  for (int64_t d = 1; d < in.dim(); ++d) row *= in.size(d);
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t s_off = 0, r_off = 0, r_rows = 0;
  for (int r = 0; r < size_; ++r) {
    TORCH_CHECK(send_counts[r] * row < INT32_MAX && s_off < INT32_MAX && r_off < INT32_MAX, "all_to_all_v: message over 2^31 elements");
    sc[r] = static_cast<int>(send_counts[r] * row), sd[r] = static_cast<int>(s_off), s_off += sc[r];
    rc[r] = static_cast<int>(recv_counts[r] * row), rd[r] = static_cast<int>(r_off), r_off += rc[r];
    r_rows += recv_counts[r];
    if (r != rank_) a2a_bytes_ += sc[r] * static_cast<int64_t>(in.element_size());
  }
  TORCH_CHECK(s_off == in.numel(), "all_to_all_v: send counts cover ", s_off, " elements, tensor has ", in.numel());
  auto shape = in.sizes().vec();
  shape[0] = r_rows;
  auto out = torch::empty(shape, in.options());
  check(MPI_Alltoallv(in.data_ptr(), sc.data(), sd.data(), mpi_type(in), out.data_ptr(), rc.data(), rd.data(),
                      mpi_type(in), comm_),
        "Alltoallv");
  return out;
}

void MpiCommunicator::barrier() { check(MPI_Barrier(comm_), "Barrier"); }

void abort_job(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  MPI_Comm sub;
  check(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
  return std::make_unique<MpiCommunicator>(sub, name, /*owned=*/true);
}

}  // namespace moetrain::parallel
