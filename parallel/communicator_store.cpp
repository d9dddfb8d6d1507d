#include "parallel/communicator_store.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace moetrain::parallel {
namespace {

std::vector<uint8_t> bytes_of(const torch::Tensor& t) {
  auto c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + c.numel() * c.element_size());
}

void copy_into(torch::Tensor& dst, const std::vector<uint8_t>& bytes) {
  TORCH_CHECK(static_cast<int64_t>(bytes.size()) == dst.numel() * dst.element_size(), "store message size mismatch");
  if (!bytes.empty()) std::memcpy(dst.data_ptr(), bytes.data(), bytes.size());
}

}  // namespace

std::unique_ptr<StoreCommunicator> StoreCommunicator::world(const std::string& host, int port, int rank, int size, bool serve) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(port);
  options.isServer = serve;
  options.numWorkers = serve ? std::optional<std::size_t>(size) : std::nullopt;
  options.waitWorkers = false;
  options.timeout = std::chrono::seconds(300);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(host, options);
  } catch (const std::exception& e) {
    throw CommError("rank " + std::to_string(rank) + ": cannot reach the TCP store at " + host + ":" + std::to_string(port) +
                    " (MASTER_ADDR/MASTER_PORT): " + e.what());
  }
  std::vector<int> members(size);
  for (int r = 0; r < size; ++r) members[r] = r;
  return std::make_unique<StoreCommunicator>(store, "moetrain/world", "world", rank, members);
}

StoreCommunicator::StoreCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix, std::string name, int rank,
                                     std::vector<int> members)
    : store_(std::move(store)), prefix_(std::move(prefix)), name_(std::move(name)), rank_(rank), members_(std::move(members)) {}

template <typename Fn>
auto StoreCommunicator::guarded(const char* op, Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": store " + op + " failed: " + e.what());
  }
}

std::string StoreCommunicator::next_op(const char* op) {
  return prefix_ + "/" + std::to_string(sequence_++) + "/" + op;
}

void StoreCommunicator::release(const std::string& op, const std::vector<std::string>& keys) {
  if (store_->add(op + "/read", 1) == size()) {
    for (const auto& k : keys) store_->deleteKey(k);
    store_->deleteKey(op + "/read");
  }
}

void StoreCommunicator::all_reduce_sum(torch::Tensor& t) {
  guarded("all_reduce", [&] {
    const std::string op = next_op("all_reduce");
    store_->set(op + "/" + std::to_string(rank_), bytes_of(t));
    std::vector<std::string> keys;
    auto sum = torch::zeros_like(t), part = torch::empty_like(t);
    for (int r = 0; r < size(); ++r) {  // rank order: the same bits on every rank
      keys.push_back(op + "/" + std::to_string(r));
      copy_into(part, store_->get(keys.back()));
      sum += part;
    }
    t.copy_(sum);
    release(op, keys);
  });
}

void StoreCommunicator::broadcast(torch::Tensor& t, int root) {
  guarded("broadcast", [&] {
    const std::string key = next_op("broadcast");
    if (rank_ == root) store_->set(key, bytes_of(t));
    auto buffer = t.contiguous();  // t itself when contiguous
    copy_into(buffer, store_->get(key));
    if (!buffer.is_same(t)) t.copy_(buffer);
    release(key, {key});
  });
}

torch::Tensor StoreCommunicator::all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                              const std::vector<int64_t>& recv_counts) {
  return guarded("all_to_all_v", [&] {
    TORCH_CHECK(static_cast<int>(send_counts.size()) == size() && static_cast<int>(recv_counts.size()) == size(),
                "all_to_all_v: one count per rank of group ", name_);
    const std::string op = next_op("all_to_all");
    auto in = send.contiguous();
    std::vector<torch::Tensor> blocks(size());
    int64_t offset = 0;
    for (int r = 0; r < size(); ++r) {
      auto block = in.narrow(0, offset, send_counts[r]);
      offset += send_counts[r];
      if (r == rank_) {
        blocks[r] = block;
      } else {
        store_->set(op + "/" + std::to_string(rank_) + ">" + std::to_string(r), bytes_of(block));
        a2a_bytes_ += block.numel() * block.element_size();
      }
    }
    std::vector<std::string> keys;
    std::vector<torch::Tensor> received;
    for (int r = 0; r < size(); ++r) {
      if (r == rank_) {
        received.push_back(blocks[r]);
        continue;
      }
      auto shape = in.sizes().vec();
      shape[0] = recv_counts[r];
      auto block = torch::empty(shape, in.options());
      keys.push_back(op + "/" + std::to_string(r) + ">" + std::to_string(rank_));
      copy_into(block, store_->get(keys.back()));
      received.push_back(block);
    }
    // Each key is read by exactly one rank: delete our own inbox after reading.
    for (const auto& k : keys) store_->deleteKey(k);
    return torch::cat(received);
  });
}

torch::Tensor StoreCommunicator::all_gather_rows(const torch::Tensor& rows) {
  agree_on_rows("all_gather_rows", rows, /*divisible_rows=*/false);
  return guarded("all_gather_rows", [&] {
    // One key per rank, read by every other rank: the rows go to the store once.
    const std::string op = next_op("all_gather");
    auto in = rows.contiguous();
    store_->set(op + "/" + std::to_string(rank_), bytes_of(in));
    std::vector<std::string> keys;
    std::vector<torch::Tensor> parts;
    for (int r = 0; r < size(); ++r) {
      if (r == rank_) {
        parts.push_back(in);
        continue;
      }
      auto part = torch::empty_like(in);
      keys.push_back(op + "/" + std::to_string(r));
      copy_into(part, store_->get(keys.back()));
      parts.push_back(part);
    }
    keys.push_back(op + "/" + std::to_string(rank_));
    release(op, keys);
    all_gather_bytes_ += (size() - 1) * static_cast<int64_t>(in.nbytes());
    return torch::cat(parts);
  });
}

torch::Tensor StoreCommunicator::reduce_scatter_rows_sum(const torch::Tensor& t) {
  agree_on_rows("reduce_scatter_rows_sum", t, /*divisible_rows=*/true);
  return guarded("reduce_scatter_rows_sum", [&] {
    // Block q of this rank goes to rank q under its own key; rank q sums the blocks in rank order.
    const std::string op = next_op("reduce_scatter");
    auto in = t.contiguous();
    const int64_t n = in.size(0) / size();
    for (int q = 0; q < size(); ++q) {
      if (q == rank_) continue;
      auto block = in.narrow(0, q * n, n);
      store_->set(op + "/" + std::to_string(rank_) + ">" + std::to_string(q), bytes_of(block));
      reduce_scatter_bytes_ += static_cast<int64_t>(block.nbytes());
    }
    auto sum = torch::zeros_like(in.narrow(0, 0, n)), part = torch::empty_like(sum);
    for (int r = 0; r < size(); ++r) {
      if (r == rank_) {
        sum += in.narrow(0, rank_ * n, n);
        continue;
      }
      const std::string key = op + "/" + std::to_string(r) + ">" + std::to_string(rank_);
      copy_into(part, store_->get(key));
      store_->deleteKey(key);  // read by this rank only
      sum += part;
    }
    return sum;
  });
}

void StoreCommunicator::barrier() {
  guarded("barrier", [&] {
    const std::string op = next_op("barrier");
    if (store_->add(op + "/arrived", 1) == size()) store_->set(op + "/go", std::vector<uint8_t>{1});
    store_->get(op + "/go");
    release(op, {op + "/arrived", op + "/go"});
  });
}

std::unique_ptr<Communicator> StoreCommunicator::split(int color, int key, const std::string& name) {
  return guarded("split", [&]() -> std::unique_ptr<Communicator> {
    auto mine = torch::tensor({static_cast<int64_t>(color), static_cast<int64_t>(key)}, torch::kInt64);
    auto all = torch::zeros({size(), 2}, torch::kInt64);
    all[rank_] = mine;
    all_reduce_sum(all);  // an all-gather through the sum of one-hot rows
    std::vector<std::pair<int64_t, int>> group;  // (key, group member's rank here)
    for (int r = 0; r < size(); ++r) {
      if (all[r][0].item<int64_t>() == color) group.emplace_back(all[r][1].item<int64_t>(), r);
    }
    std::sort(group.begin(), group.end());
    std::vector<int> members;
    int new_rank = 0;
    for (size_t i = 0; i < group.size(); ++i) {
      members.push_back(members_[group[i].second]);
      if (group[i].second == rank_) new_rank = static_cast<int>(i);
    }
    return std::make_unique<StoreCommunicator>(store_, prefix_ + "/" + name + std::to_string(color), name, new_rank, members);
  });
}

}  // namespace moetrain::parallel
