#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "csrc/config/recipe_loader.h"
#include "csrc/io/safetensors.h"
#include "csrc/io/sha256.h"
#include "csrc/model/sharding.h"
#include "csrc/util/fault_injection.h"
#include "parallel/agreement.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/mesh.h"

namespace moetrain::trainer {
namespace fs = std::filesystem;
using nlohmann::json;
namespace {

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot open to fsync");
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error(path.string() + ": fsync failed; is the disk full?");
}

// Note [remove_tree]: the PyPI libtorch.so exports its own std::filesystem::remove_all, which the
// dynamic linker binds ahead of libstdc++'s and which crashes on a non-empty directory. We remove
// trees with POSIX nftw instead (test CheckpointerTest.KeepsTheNewestAndRemovesOlderOnes).
void remove_tree(const fs::path& path) {
  if (::access(path.c_str(), F_OK) != 0) return;
  auto remove_entry = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    throw std::runtime_error(path.string() + ": cannot remove; check permissions of the run directory");
  }
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string rank_file(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank%05d.safetensors", rank);
  return buf;
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

int64_t volume(const std::vector<int64_t>& shape) {
  int64_t v = 1;
  for (auto d : shape) v *= d;
  return v;
}

// Runs f and returns its error text (empty on success), so that every rank can agree on the outcome.
template <class F>
std::string attempt(F&& f) {
  try {
    f();
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

// This process's place in the mesh, and the collectives the checkpoint needs (trivial for one process).
struct Ranks {
  parallel::ProcessMesh* mesh;
  int rank() const { return mesh ? mesh->world().rank() : 0; }
  int world() const { return mesh ? mesh->sizes().world : 1; }
  int tp() const { return mesh ? mesh->sizes().tp : 1; }
  int ep() const { return mesh ? mesh->sizes().ep : 1; }
  int etp() const { return mesh ? mesh->sizes().etp : 1; }
  int tp_rank() const { return mesh ? mesh->tp_rank() : 0; }
  int dp_rank() const { return mesh ? mesh->dp_rank() : 0; }
  int expert_dp_rank() const { return mesh ? mesh->expert_dp_rank() : 0; }
  std::vector<std::string> gather(const std::string& s) const {
    return mesh ? parallel::all_gather_strings(mesh->world(), s) : std::vector<std::string>{s};
  }
  void agree(const std::string& error) const {
    if (mesh) parallel::agree_or_throw(mesh->world(), error);
    else if (!error.empty()) throw std::runtime_error(error);
  }
  // The lowest rank holding a block writes it: expert shards by the first replica of their
  // expert-data-parallel group; tensor-parallel slices by the first data-parallel replica; replicated
  // tensors by rank 0.
  bool writes(const model::ShardBox& box) const {
    switch (box.kind) {
      case model::ShardBox::Kind::kExpertSharded: return expert_dp_rank() == 0;
      case model::ShardBox::Kind::kTensorParallel: return dp_rank() == 0;
      default: return rank() == 0;
    }
  }
};

model::ShardBox whole(const torch::Tensor& t) {
  model::ShardBox box;
  box.global_view = box.local_view = t.sizes().vec();
  box.offsets.assign(t.dim(), 0);
  return box;
}

struct Block {
  std::string name;
  torch::Tensor data;  // shape box.local_view
  model::ShardBox box;
  std::string key;  // the tensor's key in the rank's file when a rank writes several pieces of `name`; "" = name
};

torch::optim::AdamWParamState* adam_state(torch::optim::AdamW& optimizer, const torch::Tensor& p) {
  auto it = optimizer.state().find(p.unsafeGetTensorImpl());
  return it == optimizer.state().end() ? nullptr
                                       : static_cast<torch::optim::AdamWParamState*>(it->second.get());
}

// Checks that the shards of one tensor lie inside it, do not overlap, and cover it exactly.
std::string coverage_error(const std::string& name, const json& tensor) {
  const auto global = tensor.at("shape").get<std::vector<int64_t>>();
  const auto& shards = tensor.at("shards");
  int64_t covered = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const auto off = shards[i].at("offsets").get<std::vector<int64_t>>(),
               shape = shards[i].at("shape").get<std::vector<int64_t>>();
    if (off.size() != global.size() || shape.size() != global.size())
      return name + ": a shard has the wrong number of dimensions";
    for (size_t d = 0; d < global.size(); ++d) {
      if (off[d] < 0 || off[d] + shape[d] > global[d])
        return name + ": shard in " + shards[i].at("file").get<std::string>() + " lies outside " +
               shape_text(global);
    }
    for (size_t j = 0; j < i; ++j) {
      const auto o2 = shards[j].at("offsets").get<std::vector<int64_t>>(),
                 s2 = shards[j].at("shape").get<std::vector<int64_t>>();
      bool overlap = volume(shape) > 0 && volume(s2) > 0;
      for (size_t d = 0; d < global.size() && overlap; ++d)
        overlap = off[d] < o2[d] + s2[d] && o2[d] < off[d] + shape[d];
      if (overlap)
        return name + ": shards in " + shards[i].at("file").get<std::string>() + " and " +
               shards[j].at("file").get<std::string>() + " overlap";
    }
    covered += volume(shape);
  }
  if (covered != volume(global)) {
    return name + ": shards cover " + std::to_string(covered) + " of " + std::to_string(volume(global)) +
           " elements";
  }
  return {};
}

// Fault injection (docs/reliability.md): MOETRAIN_FAULT=checkpoint_write:RANK:STEP makes that rank
// SIGKILL itself halfway through writing its file of that step's checkpoint.
bool fault_during_save(int rank, int64_t step) {
  const auto fault = util::armed_fault();
  return fault && fault->point == util::FaultPoint::kCheckpointWrite && fault->rank == rank &&
         fault->step == step;
}

// Checkpoint shards hold host tensors: a run saved on a GPU resumes on the CPU and the other way round.
torch::Tensor host(const torch::Tensor& t) { return t.to(torch::kCPU).contiguous(); }

// The random-number generator of the GPU the model is on; none when it is on the CPU.
std::optional<at::Generator> cuda_generator(model::TransformerImpl& model) {
  for (const auto& p : model.parameters()) {
    if (p.is_cuda()) return at::globalContext().defaultGenerator(p.device());
    break;
  }
  return std::nullopt;
}

// "rng/cpu/rank00003": the name of a rank's random-number state; `device` is "cpu" or "cuda".
std::string rng_name(const char* device, int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rng/%s/rank%05d", device, rank);
  return buf;
}

// What one rank writes into a checkpoint, and what the commit compares across ranks.
struct RankBlocks {
  std::vector<Block> blocks;
  int64_t optimizer_step = 0;  // the largest AdamW step count of the model's parameters
  std::string replicas;        // bytes of the replicated buffers: every rank must hold the same
};

// The distributed optimizer's moments (and, for bf16 parameters, their fp32 master weights): this rank's
// piece of each parameter, as boxes of the global tensor
// (a flat range of the rank's block is up to 2·dims − 1 boxes), keyed "NAME#i" in the file. Every
// data-parallel rank writes its pieces; of the ranks that hold the same pieces (tensor-parallel ranks
// of replicated tensors) only tp rank 0. Expert pieces are never held twice: their shards are cut over the
// expert_dp group, which holds every copy of an expert shard.
void add_moment_pieces(const Ranks& ranks, model::TransformerImpl& model,
                       parallel::DistributedOptimizer& optimizer, std::vector<Block>& blocks) {
  int64_t index = 0;
  for (auto& piece : optimizer.pieces()) {
    if (!piece.exp_avg.defined() && !piece.bf16) continue;  // never stepped, and nothing else to save
    const auto box = model::shard_box(model.options(), piece.name, piece.param.sizes().vec());
    if (box.kind == model::ShardBox::Kind::kReplicated && ranks.tp_rank() != 0) continue;
    // The piece's tensors by name: its moments once stepped; a bf16 parameter's weights as fp32 masters.
    std::vector<std::pair<std::string, torch::Tensor>> values;
    if (piece.exp_avg.defined()) {
      values.emplace_back("optim/exp_avg/" + piece.name, piece.exp_avg);
      values.emplace_back("optim/exp_avg_sq/" + piece.name, piece.exp_avg_sq);
    }
    if (piece.bf16) values.emplace_back("model/" + piece.name, piece.master);
    int64_t at = 0;
    for (const auto& sub : parallel::flat_range_boxes(box.local_view, piece.begin, piece.end)) {
      model::ShardBox part = box;
      part.local_view = sub.sizes;
      for (size_t d = 0; d < sub.offsets.size(); ++d) part.offsets[d] += sub.offsets[d];
      int64_t count = 1;
      for (auto s : sub.sizes) count *= s;
      for (const auto& [name, flat] : values) {
        blocks.push_back({name, host(flat.narrow(0, at, count)).reshape(sub.sizes), part,
                          name + "#" + std::to_string(index)});
      }
      at += count, ++index;
    }
  }
}

// The blocks `ranks` writes: the parameters it owns with their AdamW moments (once stepped), the
// replicated buffers (rank 0; every rank hashes its copy) and its random-number streams.
RankBlocks owned_blocks(const Ranks& ranks, model::TransformerImpl& model, torch::optim::AdamW& optimizer,
                        parallel::DistributedOptimizer* distributed) {
  RankBlocks out;
  if (distributed) {
    add_moment_pieces(ranks, model, *distributed, out.blocks);
    out.optimizer_step = distributed->steps();
  }
  for (const auto& p : model.named_parameters()) {
    const auto box = model::shard_box(model.options(), p.key(), p.value().sizes().vec());
    if (!ranks.writes(box)) continue;
    const bool from_master = distributed && distributed->keeps_master() &&
                             p.value().scalar_type() == torch::kBFloat16;
    if (!from_master)  // (a bf16 parameter of the distributed optimizer: its fp32 master, as pieces above)
      out.blocks.push_back({"model/" + p.key(), host(p.value().detach()).reshape(box.local_view), box, ""});
    if (auto* s = distributed ? nullptr : adam_state(optimizer, p.value())) {
      out.blocks.push_back({"optim/exp_avg/" + p.key(), host(s->exp_avg()).reshape(box.local_view), box, ""});
      out.blocks.push_back(
          {"optim/exp_avg_sq/" + p.key(), host(s->exp_avg_sq()).reshape(box.local_view), box, ""});
    }
  }
  for (const auto& p : model.parameters())
    if (auto* s = adam_state(optimizer, p)) out.optimizer_step = std::max(out.optimizer_step, s->step());
  for (const auto& b : model.named_buffers()) {  // expert selection biases of aux-loss-free balancing
    auto c = host(b.value().detach());
    if (ranks.rank() == 0) out.blocks.push_back({"model/" + b.key(), c, whole(b.value()), ""});
    out.replicas.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  auto rng = at::detail::getDefaultCPUGenerator().get_state();
  out.blocks.push_back({rng_name("cpu", ranks.rank()), rng, whole(rng), ""});
  if (auto gpu = cuda_generator(model)) {  // the GPU's stream too, when training on one
    auto gpu_rng = gpu->get_state();
    out.blocks.push_back({rng_name("cuda", ranks.rank()), gpu_rng, whole(gpu_rng), ""});
  }
  return out;
}

// Writes `owned` to tmp_dir/rankRRRRR.safetensors, fsynced, and returns the rank's report to the commit:
// {file, bytes, sha256, blocks: [{name, global, offsets, shape}], optimizer_step, buffers_sha256}.
json write_rank_file(const RankBlocks& owned, const fs::path& tmp_dir, int rank, int64_t step) {
  io::NamedTensors tensors;
  json entries = json::array();
  for (const auto& b : owned.blocks) {
    tensors.emplace_back(b.key.empty() ? b.name : b.key, b.data);
    json entry = {{"name", b.name},
                  {"global", b.box.global_view},
                  {"offsets", b.box.offsets},
                  {"shape", b.box.local_view}};
    if (!b.key.empty()) entry["key"] = b.key;
    entries.push_back(entry);
  }
  const std::map<std::string, std::string> metadata{{"format", "moetrain-checkpoint-shard"}};
  const std::string file = rank_file(rank), path = (tmp_dir / file).string();
  if (fault_during_save(rank, step)) {
    const std::string bytes = io::encode_safetensors(tensors, metadata);
    io::write_file_synced(path, bytes.substr(0, bytes.size() / 2));
    util::kill_for_fault(util::FaultPoint::kCheckpointWrite);
  }
  // Streamed one tensor at a time (the file is never a copy in memory). Floating-point tensors are stored
  // fp32 whatever their dtype in memory: a bf16 base (finetune.base_dtype) is widened exactly, so every
  // reader sees one format and a resumed run continues from the same values.
  const int64_t bytes = io::write_safetensors_synced(path, tensors, metadata, torch::kFloat32);
  const json report = {{"file", file},
                       {"bytes", bytes},
                       {"sha256", io::sha256_file(path)},
                       {"blocks", entries},
                       {"optimizer_step", owned.optimizer_step},
                       {"buffers_sha256", io::sha256_hex(owned.replicas)}};
  return report;
}

// Adds every rank's report (write_rank_file) to `manifest`: its file, its shards, the largest optimizer
// step. Throws when the ranks disagree on the replicated buffers or on a tensor's global shape.
void add_rank_reports(json& manifest, const std::vector<std::string>& reports) {
  const std::string rank0_buffers = json::parse(reports[0])["buffers_sha256"];
  for (size_t rank = 0; rank < reports.size(); ++rank) {
    const json r = json::parse(reports[rank]);
    if (r["buffers_sha256"] != rank0_buffers) {
      throw std::runtime_error(
          "checkpoint: the expert biases of rank " + std::to_string(rank) +
          " differ from rank 0's; the ranks have diverged (a bug: please report it with the run directory)");
    }
    manifest["files"][r["file"].get<std::string>()] = {{"bytes", r["bytes"]}, {"sha256", r["sha256"]}};
    manifest["optimizer_step"] = std::max(manifest["optimizer_step"].get<int64_t>(),
                                          r["optimizer_step"].get<int64_t>());
    for (const auto& b : r["blocks"]) {
      auto& t = manifest["tensors"][b["name"].get<std::string>()];
      if (t.is_null()) t = {{"shape", b["global"]}, {"dtype", "F32"}, {"shards", json::array()}};
      if (t["shape"] != b["global"])
        throw std::runtime_error("checkpoint: ranks disagree on the global shape of " +
                                 b["name"].get<std::string>());
      json shard = {{"file", r["file"]}, {"offsets", b["offsets"]}, {"shape", b["shape"]}};
      if (b.contains("key")) shard["key"] = b["key"];
      t["shards"].push_back(shard);
    }
  }
  for (auto& [name, t] : manifest["tensors"].items()) {
    if (name.rfind("rng/", 0) == 0) t["dtype"] = "U8";
    if (auto error = coverage_error(name, t); !error.empty())
      throw std::runtime_error("checkpoint coverage check failed: " + error);
  }
}

// Commits root/NAME.tmp as root/NAME with `manifest`, then points root/latest at it. Each rename is
// fsynced before the next: a crash anywhere leaves the previous checkpoint and pointer.
void publish(const json& manifest, const fs::path& root, const std::string& name) {
  const fs::path final_dir = root / name, tmp_dir = root / (name + ".tmp");
  const fs::path manifest_tmp = tmp_dir / "manifest.json.tmp";
  io::write_file_synced(manifest_tmp.string(), manifest.dump(1));
  fs::rename(manifest_tmp, tmp_dir / "manifest.json");
  fsync_path(tmp_dir);
  remove_tree(final_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_path(root);

  const fs::path pointer_tmp = root / "latest.tmp";
  io::write_file_synced(pointer_tmp.string(), name + "\n");
  fs::rename(pointer_tmp, root / "latest");
  fsync_path(root);
}

// Keeps the newest keep_last committed checkpoints in `root` (never `current`, the one just written);
// drops leftovers of interrupted saves.
void prune(const fs::path& root, int64_t keep_last, const fs::path& current) {
  std::vector<fs::path> committed;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind("step_", 0) != 0) continue;
    if (name.find(".tmp") != std::string::npos) remove_tree(entry.path());
    else if (fs::exists(entry.path() / "manifest.json")) committed.push_back(entry.path());
  }
  std::sort(committed.begin(), committed.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < committed.size(); ++i) {
    if (committed[i] != current) remove_tree(committed[i]);
  }
}

// The manifest of the checkpoint in `dir`; refused when it was written for another model section.
json checked_manifest(const std::string& dir, const std::string& model_section) {
  json manifest = json::parse(read_manifest(dir));
  if (manifest.at("model_digest").get<std::string>() != io::sha256_hex(model_section)) {
    throw std::runtime_error(dir + " was written for a different model section:\n" +
                             manifest.at("model_section").get<std::string>() + "the recipe now says:\n" +
                             model_section +
                             "use a new --run-dir, or --set checkpoint.resume=false to start from scratch");
  }
  return manifest;
}

// The intersection of a saved shard (offsets `off`, shape `shape`) with `box`: its first index `lo` and
// its extent `len` in each dimension, in the tensor's global coordinates. False when it is empty.
bool intersect(const std::vector<int64_t>& off, const std::vector<int64_t>& shape, const model::ShardBox& box,
               std::vector<int64_t>& lo, std::vector<int64_t>& len) {
  lo.assign(off.size(), 0), len.assign(off.size(), 0);
  bool empty = false;
  for (size_t d = 0; d < off.size(); ++d) {
    lo[d] = std::max(off[d], box.offsets[d]);
    len[d] = std::min(off[d] + shape[d], box.offsets[d] + box.local_view[d]) - lo[d];
    empty = empty || len[d] <= 0;
  }
  return !empty;
}

// Reads this process's blocks of a checkpoint's tensors from the shards the manifest lists. Files are
// verified (size and SHA-256 against the manifest) the first time this rank reads them.
class ShardReader {
 public:
  ShardReader(const std::string& dir, json& manifest) : dir_(dir), manifest_(manifest) {}

  const json& manifest() const { return manifest_; }
  bool saved(const std::string& name) { return manifest_["tensors"].contains(name); }
  // The checkpoint's file `file` (dir/file), verified and opened once.
  io::SafetensorsFile& open(const std::string& file);
  // This process's block of the saved tensor `name` (shape box.local_view), assembled from the saved
  // shards that intersect it.
  torch::Tensor assemble(const std::string& name, const model::ShardBox& box);

 private:
  // Copies the intersection [lo, lo + len) of the shard of `name` in `file` (offsets `off`, shape `shape`)
  // into `out`, this rank's block `box`; `out` is created (zeros) by the first shard read.
  void copy_intersection(const std::string& name, const std::string& file, const std::vector<int64_t>& off,
                         const std::vector<int64_t>& shape, const std::vector<int64_t>& lo,
                         const std::vector<int64_t>& len, const model::ShardBox& box, torch::Tensor& out);

  const std::string& dir_;
  json& manifest_;
  std::map<std::string, std::unique_ptr<io::SafetensorsFile>> files_;
};

io::SafetensorsFile& ShardReader::open(const std::string& file) {
  auto& slot = files_[file];
  if (slot) return *slot;
  const fs::path path = fs::path(dir_) / file;
  if (!manifest_["files"].contains(file))
    throw std::runtime_error(dir_ + "/manifest.json does not list " + file);
  const auto& meta = manifest_["files"][file];
  if (!fs::exists(path))
    throw std::runtime_error(path.string() + " is missing; the checkpoint is incomplete: use an earlier one");
  const auto size = fs::file_size(path);
  if (size != meta["bytes"].get<uint64_t>()) {
    throw std::runtime_error(path.string() + " has " + std::to_string(size) + " bytes, the manifest says " +
                             meta["bytes"].dump() +
                             " (truncated?); the checkpoint is damaged: use an earlier one");
  }
  if (io::sha256_file(path.string()) != meta["sha256"].get<std::string>()) {
    throw std::runtime_error(
        path.string() +
        " does not match its SHA-256 in the manifest; the checkpoint is corrupted: use an earlier one");
  }
  slot = std::make_unique<io::SafetensorsFile>(path.string());
  return *slot;
}

torch::Tensor ShardReader::assemble(const std::string& name, const model::ShardBox& box) {
  if (!saved(name)) throw std::runtime_error(dir_ + " has no tensor " + name);
  const auto& t = manifest_["tensors"][name];
  if (t["shape"].get<std::vector<int64_t>>() != box.global_view) {
    throw std::runtime_error(dir_ + ": " + name + " has shape " +
                             shape_text(t["shape"].get<std::vector<int64_t>>()) + ", the model expects " +
                             shape_text(box.global_view));
  }
  torch::Tensor out;
  int64_t covered = 0;
  for (const auto& s : t["shards"]) {
    const auto off = s["offsets"].get<std::vector<int64_t>>(), shape = s["shape"].get<std::vector<int64_t>>();
    std::vector<int64_t> lo, len;
    if (!intersect(off, shape, box, lo, len)) continue;
    copy_intersection(s.value("key", name), s["file"].get<std::string>(), off, shape, lo, len, box, out);
    covered += volume(len);
  }
  if (covered != volume(box.local_view)) {
    throw std::runtime_error(dir_ + ": the shards of " + name + " cover " + std::to_string(covered) +
                             " of the " + std::to_string(volume(box.local_view)) +
                             " elements this rank needs; the checkpoint is incomplete");
  }
  return out;
}

void ShardReader::copy_intersection(const std::string& name, const std::string& file,
                                    const std::vector<int64_t>& off, const std::vector<int64_t>& shape,
                                    const std::vector<int64_t>& lo, const std::vector<int64_t>& len,
                                    const model::ShardBox& box, torch::Tensor& out) {
  const io::SafetensorsFile& f = open(file);
  if (f.shape(name) != shape)
    throw std::runtime_error(dir_ + ": " + name + " in " + file + " does not have the shape the manifest says");
  // Read only the rows of dim 0 this rank needs (its experts of an expert-sharded tensor, any layout's).
  torch::Tensor src = off.empty() ? f.get(name) : f.get_rows(name, lo[0] - off[0], len[0]);
  if (!out.defined()) out = torch::zeros(box.local_view, src.options());
  torch::Tensor dst = out;
  for (size_t d = 0; d < off.size(); ++d) {
    src = src.narrow(static_cast<int64_t>(d), d == 0 ? 0 : lo[d] - off[d], len[d]);
    dst = dst.narrow(static_cast<int64_t>(d), lo[d] - box.offsets[d], len[d]);
  }
  dst.copy_(src);
}

// Copies the saved weights and buffers into `model` (LoRA adapters the checkpoint lacks keep their
// values when options.adapters_may_be_missing).
void restore_model(ShardReader& reader, model::TransformerImpl& model, const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters()) {
    if (options.adapters_may_be_missing && p.key().find("_lora_") != std::string::npos &&
        !reader.saved("model/" + p.key())) {
      continue;
    }
    const auto box = model::shard_box(model.options(), p.key(), p.value().sizes().vec());
    p.value().copy_(reader.assemble("model/" + p.key(), box).reshape(p.value().sizes()));
  }
  for (auto& b : model.named_buffers())
    b.value().copy_(reader.assemble("model/" + b.key(), whole(b.value())));
}

// Replaces the AdamW state of every parameter the checkpoint has moments for (the others never stepped).
void restore_optimizer(ShardReader& reader, model::TransformerImpl& model, torch::optim::AdamW& optimizer,
                       int64_t optimizer_step) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters()) {
    if (!reader.saved("optim/exp_avg/" + p.key())) continue;  // never stepped
    const auto box = model::shard_box(model.options(), p.key(), p.value().sizes().vec());
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(optimizer_step);
    s->exp_avg(
        reader.assemble("optim/exp_avg/" + p.key(), box).reshape(p.value().sizes()).to(p.value().device()));
    s->exp_avg_sq(
        reader.assemble("optim/exp_avg_sq/" + p.key(), box).reshape(p.value().sizes()).to(p.value().device()));
    optimizer.state()[p.value().unsafeGetTensorImpl()] = std::move(s);
  }
}

// bf16 parameters: the fp32 master weights of this rank's shard, from the checkpoint's fp32 weights (one
// parameter at a time), not from the bf16 values they were rounded to.
void restore_master_weights(ShardReader& reader, model::TransformerImpl& model,
                            parallel::DistributedOptimizer& optimizer) {
  torch::NoGradGuard no_grad;
  for (auto& piece : optimizer.pieces()) {
    const auto box = model::shard_box(model.options(), piece.name, piece.param.sizes().vec());
    auto whole = reader.assemble("model/" + piece.name, box).reshape({-1});
    piece.master.copy_(whole.narrow(0, piece.begin, piece.end - piece.begin));
  }
}

// The distributed optimizer's pieces from a checkpoint of any layout: each parameter's moments assembled
// for this rank's block (one parameter at a time), then the piece's elements taken.
void restore_distributed_optimizer(ShardReader& reader, model::TransformerImpl& model,
                                   parallel::DistributedOptimizer& optimizer, int64_t optimizer_step) {
  torch::NoGradGuard no_grad;
  optimizer.prepare_to_load(optimizer_step);
  for (auto& piece : optimizer.pieces()) {
    if (!reader.saved("optim/exp_avg/" + piece.name)) continue;  // never stepped
    const auto box = model::shard_box(model.options(), piece.name, piece.param.sizes().vec());
    for (auto [moment, values] :
         {std::pair{"exp_avg", piece.exp_avg}, std::pair{"exp_avg_sq", piece.exp_avg_sq}}) {
      auto whole = reader.assemble(std::string("optim/") + moment + "/" + piece.name, box).reshape({-1});
      values.copy_(whole.narrow(0, piece.begin, piece.end - piece.begin));
    }
  }
}

// The saved step and data position; sets this process's random-number streams. Same layout: each rank
// continues its own stream. New layout: every rank takes rank 0's (router jitter and random routing draw
// from it; the streams cannot map onto a new layout).
TrainState restore_train_state(ShardReader& reader, model::TransformerImpl& model, const Ranks& ranks) {
  const json& manifest = reader.manifest();
  TrainState state;
  state.step = manifest.at("step").get<int64_t>();
  state.samples_consumed = manifest.at("samples_consumed").get<int64_t>();
  state.tokens = manifest.at("tokens").get<int64_t>();
  const auto& layout = manifest.at("layout");
  const bool same_layout = layout.at("world") == ranks.world() && layout.at("tp") == ranks.tp() &&
                           layout.at("ep") == ranks.ep() && layout.value("expert_tensor", 1) == ranks.etp();
  const int source = same_layout ? ranks.rank() : 0;
  const std::string file = rank_file(source);
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(reader.open(file).get(rng_name("cpu", source)));
  // A run saved on the CPU has no GPU stream: the GPU keeps its seeded one (and a run saved on a GPU
  // that resumes on the CPU leaves its GPU stream unused).
  auto gpu = cuda_generator(model);
  const std::string gpu_rng = rng_name("cuda", source);
  if (gpu && reader.saved(gpu_rng)) gpu->set_state(reader.open(file).get(gpu_rng));
  return state;
}

}  // namespace

std::string model_section_text(const config::Recipe& recipe) {
  config::Recipe only_model;
  *only_model.mutable_model() = recipe.model();
  return config::to_text(only_model);
}

Checkpointer::Checkpointer(std::string run_dir, int64_t keep_last, std::string model_section,
                           std::string recipe_text, parallel::ProcessMesh* mesh)
    : root_(run_dir + "/checkpoints"),
      keep_last_(std::max<int64_t>(keep_last, 1)),
      model_section_(std::move(model_section)),
      recipe_text_(std::move(recipe_text)),
      mesh_(mesh) {}

std::string Checkpointer::save(const TrainState& state, model::TransformerImpl& model,
                               torch::optim::AdamW& optimizer) {
  const Ranks ranks{mesh_};
  const fs::path final_dir = fs::path(root_) / step_name(state.step);
  const fs::path tmp_dir = fs::path(root_) / (step_name(state.step) + ".tmp");
  ranks.agree(attempt([&] {
    if (ranks.rank() != 0) return;
    fs::create_directories(root_);
    remove_tree(tmp_dir);
    fs::create_directories(tmp_dir);
  }));

  // 1. Every rank writes the blocks it owns.
  json report;
  ranks.agree(attempt([&] {
    report = write_rank_file(owned_blocks(ranks, model, optimizer, distributed_), tmp_dir, ranks.rank(),
                             state.step);
  }));

  // 2. Rank 0 checks coverage, writes the manifest and commits.
  const auto reports = ranks.gather(report.dump());
  ranks.agree(attempt([&] {
    if (ranks.rank() == 0) commit(state, reports, ranks.world(), ranks.tp(), ranks.ep(), ranks.etp());
  }));
  return final_dir.string();
}

std::string Checkpointer::save_streamed(const TrainState& state, const model::TransformerOptions& options,
                                        const std::vector<io::LazyTensor>& parameters,
                                        const std::vector<io::LazyTensor>& buffers) {
  if (mesh_)
    throw std::logic_error("Checkpointer::save_streamed writes a one-process checkpoint; this one has a mesh");
  const fs::path final_dir = fs::path(root_) / step_name(state.step);
  const fs::path tmp_dir = fs::path(root_) / (step_name(state.step) + ".tmp");
  fs::create_directories(root_);
  remove_tree(tmp_dir);
  fs::create_directories(tmp_dir);
  // The same blocks as save() writes for one process, each read as it is written.
  std::vector<io::LazyTensor> stored;
  json entries = json::array();
  auto add = [&](const std::string& name, const model::ShardBox& box, const io::LazyTensor& t) {
    stored.push_back(
        {name, box.local_view, t.dtype, [&t, shape = box.local_view] { return t.read().reshape(shape); }});
    entries.push_back(
        {{"name", name}, {"global", box.global_view}, {"offsets", box.offsets}, {"shape", box.local_view}});
  };
  for (const auto& p : parameters) add("model/" + p.name, model::shard_box(options, p.name, p.shape), p);
  std::string replicas;
  std::vector<torch::Tensor> buffer_values;  // small (one bias per expert and MoE layer): read once, hashed
  for (const auto& b : buffers) {
    buffer_values.push_back(host(b.read().to(b.dtype)));
    const auto& c = buffer_values.back();
    replicas.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  std::vector<io::LazyTensor> buffer_blocks;
  buffer_blocks.reserve(buffers.size() + 1);  // `add` keeps references: no reallocation
  for (size_t i = 0; i < buffers.size(); ++i) {
    buffer_blocks.push_back(
        {buffers[i].name, buffers[i].shape, buffers[i].dtype, [v = buffer_values[i]] { return v; }});
    add("model/" + buffers[i].name, whole(buffer_values[i]), buffer_blocks.back());
  }
  const auto rng = at::detail::getDefaultCPUGenerator().get_state();
  buffer_blocks.push_back({"rng/cpu/rank00000", rng.sizes().vec(), rng.scalar_type(), [rng] { return rng; }});
  add("rng/cpu/rank00000", whole(rng), buffer_blocks.back());

  const std::string file = rank_file(0), path = (tmp_dir / file).string();
  const int64_t bytes = io::write_safetensors_synced(path, stored, {{"format", "moetrain-checkpoint-shard"}},
                                                     torch::kFloat32);
  const json report = {
      {"file", file},      {"bytes", bytes},      {"sha256", io::sha256_file(path)},
      {"blocks", entries}, {"optimizer_step", 0}, {"buffers_sha256", io::sha256_hex(replicas)}};
  commit(state, {report.dump()}, 1, 1, 1);
  return final_dir.string();
}

void Checkpointer::commit(const TrainState& state, const std::vector<std::string>& reports, int world, int tp,
                          int ep, int etp) const {
  json manifest = {{"format", "moetrain-checkpoint"},
                   {"version", kCheckpointFormatVersion},
                   {"step", state.step},
                   {"samples_consumed", state.samples_consumed},
                   {"tokens", state.tokens},
                   {"optimizer_step", 0},
                   {"layout",
                    {{"world", world}, {"tp", tp}, {"ep", ep}, {"expert_tensor", etp}, {"dp", world / tp}}},
                   {"model_digest", io::sha256_hex(model_section_)},
                   {"recipe_digest", io::sha256_hex(recipe_text_)},
                   {"model_section", model_section_},
                   {"recipe", recipe_text_},
                   {"files", json::object()},
                   {"tensors", json::object()}};
  add_rank_reports(manifest, reports);
  publish(manifest, root_, step_name(state.step));
  prune(root_, keep_last_, fs::path(root_) / step_name(state.step));
}

std::optional<std::string> Checkpointer::latest() const {
  const Ranks ranks{mesh_};
  std::string found;
  ranks.agree(attempt([&] {
    std::ifstream in(fs::path(root_) / "latest");
    std::string name;
    if (!(in >> name)) return;
    const fs::path dir = fs::path(root_) / name;
    if (!fs::exists(dir / "manifest.json")) {
      throw std::runtime_error(
          (fs::path(root_) / "latest").string() + " points to " + name +
          ", which is not a committed checkpoint; point it at an existing step_* directory or remove it to start over");
    }
    found = dir.string();
  }));
  const auto seen = ranks.gather(found);
  for (size_t r = 1; r < seen.size(); ++r) {
    if (seen[r] != seen[0]) {
      throw std::runtime_error("ranks see different checkpoints in " + root_ + ": rank 0 sees '" + seen[0] +
                               "', rank " + std::to_string(r) + " sees '" + seen[r] +
                               "'; the run directory must be on a filesystem shared by every node");
    }
  }
  if (found.empty()) return std::nullopt;
  return found;
}

TrainState Checkpointer::load(const std::string& dir, model::TransformerImpl& model,
                              torch::optim::AdamW* optimizer, const LoadOptions& options) {
  const Ranks ranks{mesh_};
  json manifest;
  ranks.agree(attempt([&] { manifest = checked_manifest(dir, model_section_); }));

  TrainState state;
  ranks.agree(attempt([&] {
    ShardReader reader(dir, manifest);
    restore_model(reader, model, options);
    if (distributed_ && distributed_->keeps_master()) restore_master_weights(reader, model, *distributed_);
    const int64_t optimizer_step = manifest.value("optimizer_step", int64_t{0});
    if (optimizer && options.optimizer && optimizer_step > 0) {
      if (distributed_) {
        restore_distributed_optimizer(reader, model, *distributed_, optimizer_step);
      } else {
        restore_optimizer(reader, model, *optimizer, optimizer_step);
      }
    }
    if (options.train_state) state = restore_train_state(reader, model, ranks);
  }));
  return state;
}

}  // namespace moetrain::trainer
