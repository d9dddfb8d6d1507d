#include "hf/hf_dir.h"

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace moetrain::hf {
namespace {

using nlohmann::json;

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string shard_name(size_t index, size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buf;
}

int64_t tensor_bytes(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

}  // namespace

WrittenWeights write_weights(const std::string& dir, const io::NamedTensors& tensors, int64_t max_shard_bytes) {
  if (max_shard_bytes <= 0) {
    throw std::invalid_argument("--max-shard-bytes " + std::to_string(max_shard_bytes) +
                                ": must be > 0 (for example 5000000000)");
  }
  // Greedy split in order: a shard closes when the next tensor would take it over the limit.
  std::vector<io::NamedTensors> shards(1);
  int64_t in_shard = 0, total = 0;
  for (const auto& item : tensors) {
    const int64_t bytes = tensor_bytes(item.second);
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(item);
    in_shard += bytes;
    total += bytes;
  }
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  WrittenWeights out;
  out.total_bytes = total;
  if (shards.size() == 1) {
    io::write_file_synced(dir + "/model.safetensors", io::encode_safetensors(shards[0], metadata));
    out.files.push_back("model.safetensors");
    return out;
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", json::object()}};
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shard_name(s, shards.size());
    io::write_file_synced(dir + "/" + name, io::encode_safetensors(shards[s], metadata));
    for (const auto& item : shards[s]) index["weight_map"][item.first] = name;
    out.files.push_back(name);
  }
  io::write_file_synced(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
  out.indexed = true;
  return out;
}

HfWeights::HfWeights(const std::string& dir) : dir_(dir) {
  const std::string index_path = dir + "/model.safetensors.index.json";
  auto open = [&](const std::string& file) {
    auto& slot = files_[file];
    if (!slot) {
      const std::string path = dir + "/" + file;
      if (!file_exists(path)) {
        throw std::runtime_error(index_path + " names " + file + ", which is missing from " + dir +
                                 "; download or copy every shard the index lists");
      }
      slot = std::make_unique<io::SafetensorsFile>(path);
    }
    return slot.get();
  };
  if (file_exists(index_path)) {
    std::ifstream in(index_path);
    std::stringstream text;
    text << in.rdbuf();
    json index;
    try {
      index = json::parse(text.str());
    } catch (const std::exception& e) {
      throw std::runtime_error(index_path + " is not valid JSON (" + e.what() + ")");
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw std::runtime_error(index_path + " has no \"weight_map\" object; it is not a safetensors index");
    }
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string())
        throw std::runtime_error(index_path + ": weight_map[\"" + name + "\"] is not a file name");
      if (!open(file.get<std::string>())->contains(name)) {
        throw std::runtime_error(index_path + " puts " + name + " in " + file.get<std::string>() +
                                 ", which does not hold it");
      }
      where_[name] = file.get<std::string>();
    }
  } else if (file_exists(dir + "/model.safetensors")) {
    for (const auto& name : open("model.safetensors")->names()) where_[name] = "model.safetensors";
  } else {
    const bool has_bin = file_exists(dir + "/pytorch_model.bin") ||
                         file_exists(dir + "/pytorch_model.bin.index.json");
    throw std::runtime_error(dir + " has neither model.safetensors nor model.safetensors.index.json" +
                             std::string(has_bin ? "; it holds PyTorch pickles (pytorch_model.bin): re-save it with "
                                                   "save_pretrained(dir, safe_serialization=True)"
                                                 : "; pass a directory written by save_pretrained"));
  }
}

std::vector<std::string> HfWeights::names() const {
  std::vector<std::string> out;
  for (const auto& item : where_) out.push_back(item.first);
  return out;
}

std::string HfWeights::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw std::runtime_error(dir_ + " has no tensor " + name);
  return it->second;
}

std::vector<int64_t> HfWeights::shape(const std::string& name) const {
  return files_.at(file_of(name))->shape(name);
}

torch::Tensor HfWeights::get(const std::string& name) const { return files_.at(file_of(name))->get(name); }

}  // namespace moetrain::hf
