#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

namespace moetrain::trainer {
namespace fs = std::filesystem;
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

}  // namespace

Checkpointer::Checkpointer(std::string run_dir, int64_t keep_last, std::string model_signature)
    : root_(run_dir + "/checkpoints"), keep_last_(keep_last), model_signature_(std::move(model_signature)) {}

std::string Checkpointer::save(const TrainState& state, model::TransformerImpl& model, torch::optim::Optimizer& optimizer) {
  fs::create_directories(root_);
  const fs::path final_dir = fs::path(root_) / step_name(state.step);
  const fs::path tmp_dir = fs::path(root_) / (step_name(state.step) + ".tmp");
  remove_tree(tmp_dir);
  fs::create_directories(tmp_dir);

  {
    torch::serialize::OutputArchive archive;
    for (const auto& p : model.named_parameters()) archive.write(p.key(), p.value());
    for (const auto& b : model.named_buffers()) archive.write(b.key(), b.value(), /*is_buffer=*/true);
    archive.save_to((tmp_dir / "model.pt").string());
  }
  {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to((tmp_dir / "optimizer.pt").string());
  }
  {
    torch::serialize::OutputArchive archive;
    archive.write("step", c10::IValue(state.step));
    archive.write("samples_consumed", c10::IValue(state.samples_consumed));
    archive.write("tokens", c10::IValue(state.tokens));
    archive.write("model_signature", c10::IValue(model_signature_));
    archive.write("cpu_rng", at::detail::getDefaultCPUGenerator().get_state());
    archive.save_to((tmp_dir / "state.pt").string());
  }
  for (const char* f : {"model.pt", "optimizer.pt", "state.pt"}) fsync_path(tmp_dir / f);
  fsync_path(tmp_dir);
  remove_tree(final_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_path(root_);

  const fs::path pointer_tmp = fs::path(root_) / "latest.tmp";
  {
    std::ofstream out(pointer_tmp, std::ios::trunc);
    out << step_name(state.step) << "\n";
  }
  fsync_path(pointer_tmp);
  fs::rename(pointer_tmp, fs::path(root_) / "latest");
  fsync_path(root_);

  std::vector<fs::path> committed;
  for (const auto& entry : fs::directory_iterator(root_)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step_", 0) == 0 && name.find(".tmp") == std::string::npos)
      committed.push_back(entry.path());
  }
  std::sort(committed.begin(), committed.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last_) < committed.size(); ++i) {
    if (committed[i] != final_dir) remove_tree(committed[i]);
  }
  return final_dir.string();
}

std::optional<std::string> Checkpointer::latest() const {
  std::ifstream in(fs::path(root_) / "latest");
  std::string name;
  if (!(in >> name)) return std::nullopt;
  const fs::path dir = fs::path(root_) / name;
  if (!fs::is_directory(dir)) {
    throw std::runtime_error((fs::path(root_) / "latest").string() + " points to " + name +
                             ", which does not exist; restore it or remove the pointer to start over");
  }
  return dir.string();
}

TrainState Checkpointer::load(const std::string& dir, model::TransformerImpl& model, torch::optim::Optimizer& optimizer) {
  TrainState state;
  torch::serialize::InputArchive meta;
  meta.load_from(dir + "/state.pt");
  c10::IValue v;
  meta.read("model_signature", v);
  if (v.toStringRef() != model_signature_) {
    throw std::runtime_error(dir + " was written for a different model section:\n" + v.toStringRef() +
                             "the recipe now says:\n" + model_signature_ +
                             "use a new --run-dir, or --set checkpoint.resume=false to start from scratch");
  }
  meta.read("step", v), state.step = v.toInt();
  meta.read("samples_consumed", v), state.samples_consumed = v.toInt();
  meta.read("tokens", v), state.tokens = v.toInt();
  torch::Tensor rng;
  meta.read("cpu_rng", rng);
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);

  torch::serialize::InputArchive weights;
  weights.load_from(dir + "/model.pt");
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model.named_parameters()) {
      torch::Tensor saved;
      weights.read(p.key(), saved);
      p.value().copy_(saved);
    }
    for (auto& b : model.named_buffers()) {  // expert selection biases of aux-loss-free balancing
      torch::Tensor saved;
      weights.read(b.key(), saved, /*is_buffer=*/true);
      b.value().copy_(saved);
    }
  }
  torch::serialize::InputArchive opt;
  opt.load_from(dir + "/optimizer.pt");
  optimizer.load(opt);
  return state;
}

}  // namespace moetrain::trainer
