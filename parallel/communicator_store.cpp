#include "parallel/communicator_store.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace moetrain::parallel {
namespace {

std::vector<uint8_t> bytes_of(const torch::Tensor& t) {
  auto c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + c.numel() * c.element_size());
}

void copy_into(torch::Tensor& dst, const std::vector<uint8_t>& bytes) {
  TORCH_CHECK(static_cast<int64_t>(bytes.size()) == dst.numel() * dst.element_size(),
              "store message size mismatch");
  if (!bytes.empty()) std::memcpy(dst.data_ptr(), bytes.data(), bytes.size());
}

// Keys of this launch: torchrun's agent keeps its store across restarts of the group.
std::string launch_prefix() {
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  return std::string("moetrain/") + (restarts && *restarts ? restarts : "0");
}

// The watchdog's alarm channel: each rank's report under <prefix>/<rank>, and a counter of reports that
// lets a rank see in one round trip whether anything new arrived.
class StoreAlarmChannel : public AlarmChannel {
 public:
  StoreAlarmChannel(c10::intrusive_ptr<c10d::Store> store, std::string prefix, int rank, int size)
      : store_(std::move(store)), prefix_(std::move(prefix)), rank_(rank), taken_(size, false) {}
  void raise(const std::string& report) override {
    store_->set(prefix_ + "/" + std::to_string(rank_), std::vector<uint8_t>(report.begin(), report.end()));
    store_->add(prefix_ + "/count", 1);
  }
  std::vector<std::string> receive() override {
    std::vector<std::string> out;
    const int64_t raised = store_->add(prefix_ + "/count", 0);
    if (raised <= seen_) return out;
    seen_ = raised;
    for (size_t r = 0; r < taken_.size(); ++r) {
      const std::string key = prefix_ + "/" + std::to_string(r);
      if (static_cast<int>(r) == rank_ || taken_[r] || !store_->check({key})) continue;
      const auto bytes = store_->get(key);
      out.emplace_back(bytes.begin(), bytes.end());
      taken_[r] = true;
    }
    return out;
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  std::string prefix_;
  int rank_;
  std::vector<bool> taken_;
  int64_t seen_ = 0;
};

}  // namespace

std::unique_ptr<StoreCommunicator> StoreCommunicator::world(const std::string& host, int port, int rank,
                                                            int size, bool serve) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(port);
  options.isServer = serve;
  options.numWorkers = serve ? std::optional<std::size_t>(size) : std::nullopt;
  options.waitWorkers = false;
  const double watched = watchdog().settings().timeout_s;
  options.timeout = std::chrono::seconds(watched > 0 ? static_cast<int64_t>(watched) + 60 : 300);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(host, options);
  } catch (const std::exception& e) {
    throw CommError("rank " + std::to_string(rank) + ": cannot reach the TCP store at " + host + ":" +
                    std::to_string(port) + " (MASTER_ADDR/MASTER_PORT): " + e.what());
  }
  std::vector<int> members(size);
  for (int r = 0; r < size; ++r) members[r] = r;
  watchdog().set_alarm_channel(
      std::make_shared<StoreAlarmChannel>(store, launch_prefix() + "/alarm", rank, size));
  return std::make_unique<StoreCommunicator>(store, launch_prefix() + "/world", "world", rank, members);
}

StoreCommunicator::StoreCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix,
                                     std::string name, int rank, std::vector<int> members)
    : store_(std::move(store)),
      prefix_(std::move(prefix)),
      name_(std::move(name)),
      rank_(rank),
      members_(std::move(members)),
      identity_{name_, "store", members_} {}

template <typename Fn>
auto StoreCommunicator::guarded(const char* op, Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": store " + op +
                    " failed: " + e.what());
  }
}

std::string StoreCommunicator::next_op(const char* op) {
  return prefix_ + "/" + std::to_string(sequence_++) + "/" + op;
}

Watchdog::Wait StoreCommunicator::watched(const char* op, int64_t bytes) {
  return watchdog().enter(identity_, sequence_, op, bytes);  // before next_op: the operation's sequence number
}

// Polls for the key (check() answers at once; a timed-out store wait would log a warning each time),
// ticking the watchdog and backing off from none to 5 ms between polls.
std::vector<uint8_t> StoreCommunicator::get(const std::string& key, Watchdog::Wait& wait) {
  for (int polls = 0; !store_->check({key}); ++polls) {
    wait.tick();
    if (polls >= 10)
      std::this_thread::sleep_for(std::chrono::microseconds(std::min(5000, 50 << std::min(polls - 10, 7))));
  }
  return store_->get(key);
}

void StoreCommunicator::release(const std::string& op, const std::vector<std::string>& keys) {
  if (store_->add(op + "/read", 1) == size()) {
    for (const auto& k : keys) store_->deleteKey(k);
    store_->deleteKey(op + "/read");
  }
}

void StoreCommunicator::all_reduce_sum(torch::Tensor& t) {
  guarded("all_reduce", [&] {
    auto wait = watched("all_reduce_sum", static_cast<int64_t>(t.nbytes()));
    const std::string op = next_op("all_reduce");
    store_->set(op + "/" + std::to_string(rank_), bytes_of(t));
    std::vector<std::string> keys;
    auto sum = torch::zeros_like(t), part = torch::empty_like(t);
    for (int r = 0; r < size(); ++r) {  // rank order: the same bits on every rank
      keys.push_back(op + "/" + std::to_string(r));
      copy_into(part, get(keys.back(), wait));
      sum += part;
    }
    t.copy_(sum);
    release(op, keys);
  });
}

void StoreCommunicator::broadcast(torch::Tensor& t, int root) {
  guarded("broadcast", [&] {
    auto wait = watched("broadcast", static_cast<int64_t>(t.nbytes()));
    const std::string key = next_op("broadcast");
    if (rank_ == root) store_->set(key, bytes_of(t));
    auto buffer = t.contiguous();  // t itself when contiguous
    copy_into(buffer, get(key, wait));
    if (!buffer.is_same(t)) t.copy_(buffer);
    release(key, {key});
  });
}

torch::Tensor StoreCommunicator::all_to_all_v(const torch::Tensor& send,
                                              const std::vector<int64_t>& send_counts,
                                              const std::vector<int64_t>& recv_counts) {
  return guarded("all_to_all_v", [&] {
    TORCH_CHECK(static_cast<int>(send_counts.size()) == size() && static_cast<int>(recv_counts.size()) == size(),
                "all_to_all_v: one count per rank of group ", name_);
    auto in = send.contiguous();
    auto wait = watched("all_to_all_v", static_cast<int64_t>(in.nbytes()));
    const std::string op = next_op("all_to_all");
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
      copy_into(block, get(keys.back(), wait));
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
    auto in = rows.contiguous();
    auto wait = watched("all_gather_rows", static_cast<int64_t>(in.nbytes()));
    const std::string op = next_op("all_gather");
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
      copy_into(part, get(keys.back(), wait));
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
    auto in = t.contiguous();
    auto wait = watched("reduce_scatter_rows_sum", static_cast<int64_t>(in.nbytes()));
    const std::string op = next_op("reduce_scatter");
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
      copy_into(part, get(key, wait));
      store_->deleteKey(key);  // read by this rank only
      sum += part;
    }
    return sum;
  });
}

void StoreCommunicator::barrier() {
  guarded("barrier", [&] {
    auto wait = watched("barrier", 0);
    const std::string op = next_op("barrier");
    if (store_->add(op + "/arrived", 1) == size()) store_->set(op + "/go", std::vector<uint8_t>{1});
    get(op + "/go", wait);
    release(op, {op + "/arrived", op + "/go"});
  });
}

std::unique_ptr<Communicator> StoreCommunicator::split(int color, int key, const std::string& name) {
  return guarded("split", [&]() -> std::unique_ptr<Communicator> {
    auto mine = torch::tensor({static_cast<int64_t>(color), static_cast<int64_t>(key)}, torch::kInt64);
    auto all = torch::zeros({size(), 2}, torch::kInt64);
    all[rank_] = mine;
    all_reduce_sum(all);                         // an all-gather through the sum of one-hot rows
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
    return std::make_unique<StoreCommunicator>(store_, prefix_ + "/" + name + std::to_string(color), name,
                                               new_rank, members);
  });
}

}  // namespace moetrain::parallel
