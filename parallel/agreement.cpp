#include "parallel/agreement.h"

#include <stdexcept>

namespace moetrain::parallel {

std::vector<std::string> all_gather_strings(Communicator& group, const std::string& mine) {
  const int n = group.size(), me = group.rank();
  auto lengths = torch::zeros({n}, torch::kInt64);
  lengths[me] = static_cast<int64_t>(mine.size());
  group.all_reduce_sum(lengths);
  std::vector<int64_t> len(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + n);
  int64_t total = 0, start = 0;
  for (int r = 0; r < n; ++r) {
    if (r == me) start = total;
    total += len[r];
  }
  // Bytes travel as int32 so the sum of zeros and one writer is exact on every backend.
  auto bytes = torch::zeros({std::max<int64_t>(total, 1)}, torch::kInt32);
  auto* b = bytes.data_ptr<int32_t>();
  for (size_t i = 0; i < mine.size(); ++i)
    b[start + static_cast<int64_t>(i)] = static_cast<unsigned char>(mine[i]);
  group.all_reduce_sum(bytes);
  std::vector<std::string> out(n);
  int64_t offset = 0;
  for (int r = 0; r < n; ++r) {
    out[r].resize(static_cast<size_t>(len[r]));
    for (int64_t i = 0; i < len[r]; ++i) out[r][static_cast<size_t>(i)] = static_cast<char>(b[offset + i]);
    offset += len[r];
  }
  return out;
}

void agree_or_throw(Communicator& group, const std::string& error) {
  auto failed = torch::zeros({group.size()}, torch::kInt64);
  if (!error.empty()) failed[group.rank()] = 1;
  group.all_reduce_sum(failed);
  const int64_t count = failed.sum().item<int64_t>();
  if (count == 0) return;
  int first = 0;
  while (failed[first].item<int64_t>() == 0) ++first;
  const auto messages = all_gather_strings(group, group.rank() == first ? error : std::string());
  std::string msg = messages[first];
  if (count > 1) msg += " (" + std::to_string(count) + " ranks failed; this is the lowest)";
  throw std::runtime_error(group.size() > 1 ? "rank " + std::to_string(first) + ": " + msg : msg);
}

bool any_rank(Communicator& group, bool flag) {
  auto t = torch::tensor({flag ? 1 : 0}, torch::kInt64);
  group.all_reduce_sum(t);
  return t.item<int64_t>() > 0;
}

}  // namespace moetrain::parallel
