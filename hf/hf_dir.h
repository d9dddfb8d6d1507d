// The weight files of a Hugging Face model directory (what `from_pretrained` reads and
// `save_pretrained` writes):
//   one file:   DIR/model.safetensors
//   sharded:    DIR/model-00001-of-0000N.safetensors ... + DIR/model.safetensors.index.json
//               {"metadata": {"total_size": <tensor bytes>}, "weight_map": {"<tensor name>": "<file>", ...}}
// Every safetensors header carries {"format": "pt"}, which transformers expects of PyTorch weights.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "csrc/io/safetensors.h"

namespace moetrain::hf {

// What write_weights wrote: file names (relative to the directory) and Σ tensor bytes.
struct WrittenWeights {
  std::vector<std::string> files;
  int64_t total_bytes = 0;
  bool indexed = false;  // model.safetensors.index.json was written
};

// Writes `tensors` (in order) into `dir` (which must exist). All in model.safetensors when their bytes
// fit `max_shard_bytes`; otherwise consecutive shards of at most `max_shard_bytes` tensor bytes each (a
// single larger tensor gets a shard of its own) plus the index. Files are fsynced.
WrittenWeights write_weights(const std::string& dir, const io::NamedTensors& tensors, int64_t max_shard_bytes);

// Read side: the tensors of a directory written by write_weights, by transformers' save_pretrained, or
// downloaded from the Hub. Throws naming the file when the index and the shards disagree.
class HfWeights {
 public:
  explicit HfWeights(const std::string& dir);
  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  std::vector<int64_t> shape(const std::string& name) const;
  torch::Tensor get(const std::string& name) const;  // a copy in the stored dtype
  // The file a tensor lives in (for error messages).
  std::string file_of(const std::string& name) const;

 private:
  std::string dir_;
  std::map<std::string, std::unique_ptr<io::SafetensorsFile>> files_;
  std::map<std::string, std::string> where_;  // tensor name -> file name
};

}  // namespace moetrain::hf
