// Device-to-host reads of the training hot path, counted (docs/routing.md, "Host reads").
//
// Reading a device tensor's values on the host (item(), a copy to the CPU, data_ptr of a CUDA tensor, an
// op whose output size depends on values, such as nonzero) makes the host wait until the device has run
// everything queued before it. The MoE layer, its dispatchers and the trainer's per-step measures never
// do that directly: they call read_to_host, which counts every read. On the CPU a read costs nothing and
// the count is what would have synchronised on a GPU, so CPU tests assert the number of reads per layer
// forward and backward (HostReadCount). On CUDA a read made here is sanctioned: it runs with CUDA's sync
// debug mode off, so a check that sets that mode to "error" fails on every other synchronisation only.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace moetrain::util {

// A contiguous CPU copy of `t` (t itself when it is already a contiguous CPU tensor). `what` names the
// read (a string literal) for HostReadCount::names.
torch::Tensor read_to_host(const torch::Tensor& t, const char* what);

// Counts the reads made by any thread between its construction and its destruction. Counts nest.
class HostReadCount {
 public:
  HostReadCount();
  ~HostReadCount();
  HostReadCount(const HostReadCount&) = delete;
  HostReadCount& operator=(const HostReadCount&) = delete;

  int64_t reads() const;
  std::vector<std::string> names() const;  // one per read, in order

 private:
  std::vector<std::string> names_;
};

}  // namespace moetrain::util
