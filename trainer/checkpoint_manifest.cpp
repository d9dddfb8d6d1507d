#include "trainer/checkpoint_manifest.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace moetrain::trainer {
namespace {

using nlohmann::json;

constexpr int64_t kMaxElements = int64_t{1} << 62;  // a tensor's element count (and every product of its dims)

// A value as an error message shows it: JSON text, at most 80 characters.
std::string shown(const json& value) {
  std::string text = value.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
  return text.size() > 80 ? text.substr(0, 77) + "..." : text;
}

// Throws for one field of one manifest: "<path>: <field> = <value>: <what is wrong>; <fix>".
struct ManifestCheck {
  const std::string& path;

  [[noreturn]] void fail(const std::string& field, const json* value, const std::string& what) const {
    throw std::runtime_error(path + ": " + field + " = " + (value ? shown(*value) : "(absent)") + ": " +
                             what + "; the manifest is damaged or not moetrain's: use an earlier checkpoint");
  }
  const json& member(const json& object, const std::string& key, const std::string& field) const {
    auto it = object.find(key);
    if (it == object.end()) fail(field, nullptr, "missing");
    return *it;
  }
  const json& object(const json& parent, const std::string& key, const std::string& field) const {
    const json& v = member(parent, key, field);
    if (!v.is_object()) fail(field, &v, "must be a JSON object");
    return v;
  }
  const std::string& string(const json& parent, const std::string& key, const std::string& field) const {
    const json& v = member(parent, key, field);
    if (!v.is_string()) fail(field, &v, "must be a string");
    return v.get_ref<const std::string&>();
  }
  int64_t integer(const json& v, const std::string& field, int64_t least) const {
    if (!v.is_number_integer()) fail(field, &v, "must be an integer");
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(field, &v, "is too large");
    }
    const int64_t n = v.get<int64_t>();
    if (n < least) fail(field, &v, "must be >= " + std::to_string(least));
    return n;
  }
  int64_t integer(const json& parent, const std::string& key, const std::string& field, int64_t least) const {
    return integer(member(parent, key, field), field, least);
  }
  // An array of integers >= 0; `rank` >= 0 demands that many entries.
  std::vector<int64_t> dims(const json& parent, const std::string& key, const std::string& field,
                            int64_t rank) const {
    const json& v = member(parent, key, field);
    if (!v.is_array()) fail(field, &v, "must be an array of integers");
    if (rank >= 0 && static_cast<int64_t>(v.size()) != rank) {
      fail(field, &v, "must have " + std::to_string(rank) + " entries, one per dimension of the tensor");
    }
    std::vector<int64_t> out;
    for (size_t i = 0; i < v.size(); ++i)
      out.push_back(integer(v[i], field + "[" + std::to_string(i) + "]", 0));
    return out;
  }
};

bool is_sha256_hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

json parse_manifest(const std::string& text, const std::string& path) {
  json m;
  try {
    m = json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + " is not valid JSON (" + e.what() +
                             "); the checkpoint is damaged: use an earlier one");
  }
  if (!m.is_object() || m.find("format") == m.end() || m["format"] != "moetrain-checkpoint") {
    throw std::runtime_error(
        path + " is not a moetrain checkpoint manifest (no \"format\": \"moetrain-checkpoint\")");
  }
  const ManifestCheck check{path};
  const json& version = check.member(m, "version", "version");
  if (!version.is_number_integer() || version != kCheckpointFormatVersion) {
    throw std::runtime_error(path + " has format version " + shown(version) +
                             "; this moetrain reads version " + std::to_string(kCheckpointFormatVersion) +
                             ": use the moetrain release that wrote it");
  }
  for (const char* key : {"step", "samples_consumed", "tokens", "optimizer_step"})
    check.integer(m, key, key, 0);
  const json& layout = check.object(m, "layout", "layout");
  for (const char* key : {"world", "tp", "ep"}) check.integer(layout, key, std::string("layout.") + key, 1);
  if (layout.contains("expert_tensor"))  // absent in checkpoints written before expert tensor parallelism: 1
    check.integer(layout, "expert_tensor", "layout.expert_tensor", 1);
  for (const char* key : {"model_digest", "recipe_digest", "model_section", "recipe"})
    check.string(m, key, key);

  const json& files = check.object(m, "files", "files");
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string field = "files[\"" + it.key() + "\"]";
    if (!it->is_object()) check.fail(field, &*it, "must be a JSON object with bytes and sha256");
    check.integer(*it, "bytes", field + ".bytes", 0);
    const std::string& digest = check.string(*it, "sha256", field + ".sha256");
    if (!is_sha256_hex(digest))
      check.fail(field + ".sha256", &(*it)["sha256"], "must be 64 lower-case hex digits");
  }

  const json& tensors = check.object(m, "tensors", "tensors");
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    const std::string field = "tensors[\"" + it.key() + "\"]";
    if (!it->is_object()) check.fail(field, &*it, "must be a JSON object with shape and shards");
    const auto global = check.dims(*it, "shape", field + ".shape", -1);
    int64_t elements = 1;
    for (int64_t d : global) {
      if (d > 0 && elements > kMaxElements / d)
        check.fail(field + ".shape", &(*it)["shape"], "has more than 2^62 elements");
      elements *= d;
    }
    const json& shards = check.member(*it, "shards", field + ".shards");
    if (!shards.is_array()) check.fail(field + ".shards", &shards, "must be an array");
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string sf = field + ".shards[" + std::to_string(s) + "]";
      if (!shards[s].is_object())
        check.fail(sf, &shards[s], "must be a JSON object with file, offsets and shape");
      const std::string& file = check.string(shards[s], "file", sf + ".file");
      if (files.find(file) == files.end())
        check.fail(sf + ".file", &shards[s]["file"], "is not listed in files");
      const auto rank = static_cast<int64_t>(global.size());
      const auto offsets = check.dims(shards[s], "offsets", sf + ".offsets", rank);
      const auto shape = check.dims(shards[s], "shape", sf + ".shape", rank);
      for (size_t d = 0; d < global.size(); ++d) {
        if (shape[d] > global[d] || offsets[d] > global[d] - shape[d]) {
          check.fail(sf, &shards[s], "lies outside the tensor's shape " + (*it)["shape"].dump());
        }
      }
    }
  }
  return m;
}

std::string read_manifest(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "manifest.json";
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error(
        path.string() + " is missing: " + dir +
        " is not a committed moetrain checkpoint (an interrupted save, or a checkpoint of an older format)");
  }
  std::stringstream text;
  text << in.rdbuf();
  parse_manifest(text.str(), path.string());
  return text.str();
}

}  // namespace moetrain::trainer
