#include "parallel/communicator.h"

#include <algorithm>

namespace moetrain::parallel {
namespace {

// A rank's header: dtype, number of dims, then up to kMaxDims sizes (zero beyond).
constexpr int64_t kMaxDims = 8, kFields = 2 + kMaxDims;

std::string describe(const int64_t* header) {
  std::string s = "[";
  for (int64_t d = 0; d < std::min(header[1], kMaxDims); ++d)
    s += (d ? ", " : "") + std::to_string(header[2 + d]);
  if (header[1] > kMaxDims) s += ", ...";
  return s + "] " + c10::toString(static_cast<c10::ScalarType>(header[0]));
}

}  // namespace

void Communicator::fail(const std::string& op, const std::string& what) const {
  throw CommError("rank " + std::to_string(rank()) + " of group " + name() + ": " + op + ": " + what);
}

void Communicator::agree_on_rows(const std::string& op, const torch::Tensor& t, bool divisible_rows) {
  auto all = torch::zeros({size(), kFields}, torch::kInt64);  // (ranks, header): row r written by rank r only
  int64_t* mine = all.data_ptr<int64_t>() + rank() * kFields;
  mine[0] = static_cast<int64_t>(t.scalar_type());
  mine[1] = t.dim();
  for (int64_t d = 0; d < std::min<int64_t>(t.dim(), kMaxDims); ++d) mine[2 + d] = t.size(d);
  all_reduce_sum(all);  // an all-gather of the headers
  const int64_t* h = all.data_ptr<int64_t>();
  bool same = true;
  std::string shapes;
  for (int r = 0; r < size(); ++r) {
    same = same && std::equal(h, h + kFields, h + r * kFields);
    shapes += (r ? ", rank " : "rank ") + std::to_string(r) + " " + describe(h + r * kFields);
  }
  if (!same)
    fail(op, "ranks pass different shapes or dtypes (" + shapes + "); every rank must pass the same");
  if (t.dim() == 0 || t.dim() > kMaxDims) {
    fail(op, "shape " + describe(h) + ": needs 1 to " + std::to_string(kMaxDims) +
                 " dimensions, rows along dim 0");
  }
  if (divisible_rows && t.size(0) % size() != 0) {
    fail(op, "shape " + describe(h) + ": dim 0 (" + std::to_string(t.size(0)) +
                 " rows) is not divisible by the group size " + std::to_string(size()));
  }
}

}  // namespace moetrain::parallel
