// moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]
// Trains the recipe's model; resumes from DIR/checkpoints/latest when present.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "csrc/config/recipe_loader.h"
#include "csrc/util/fault_injection.h"
#include "csrc/util/host_allocator.h"
#include "csrc/util/run_position.h"
#include "parallel/agreement.h"
#include "parallel/data_plane.h"
#include "parallel/launch_env.h"
#include "parallel/mesh.h"
#include "parallel/watchdog.h"
#include "parallel/world.h"
#include "trainer/placement.h"
#include "trainer/trainer.h"

namespace {

constexpr const char* kUsage =
    "usage: moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]\n"
    "  --recipe FILE   recipe in Protobuf text format (schema: csrc/config/recipe.proto, docs/recipes.md)\n"
    "  --set A.B=V     override one recipe field, typed like the file (repeatable)\n"
    "  --run-dir DIR   where metrics, TensorBoard events, checkpoints and the resolved recipe go\n"
    "                  (default: runs/<recipe file name>); an existing run there is resumed\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "moe-train: error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    moetrain::util::keep_freed_host_memory();  // before the first tensor
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "moe-train: error: %s\n", e.what());
    return 2;
  }
  std::string recipe_path, run_dir;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (arg == "--recipe" || arg == "--set" || arg == "--run-dir") {
      const char* v = value();
      if (!v) return usage_error(arg + " needs a value");
      if (arg == "--recipe") recipe_path = v;
      else if (arg == "--set") overrides.emplace_back(v);
      else run_dir = v;
    } else {
      return usage_error("unknown argument \"" + arg + "\"");
    }
  }
  if (recipe_path.empty()) return usage_error("--recipe is required");
  if (run_dir.empty()) run_dir = "runs/" + std::filesystem::path(recipe_path).stem().string();

  moetrain::config::Recipe recipe;
  moetrain::parallel::LaunchInfo launch;
  moetrain::parallel::MeshSizes sizes;
  moetrain::trainer::Placement placement;
  moetrain::parallel::DataPlane data_plane = moetrain::parallel::DataPlane::HOST;
  try {
    launch = moetrain::parallel::detect_launch();
    recipe = moetrain::config::load_recipe(recipe_path, overrides);
    sizes.world = launch.world_size;
    sizes.tp = static_cast<int>(recipe.parallel().tensor());
    sizes.ep = static_cast<int>(recipe.parallel().expert());
    // Same verdict on every rank, before any allocation or collective.
    moetrain::parallel::validate_mesh(sizes, recipe.model().num_experts(), recipe.model().num_heads());
    moetrain::parallel::validate_tensor_parallel_recipe(sizes, recipe);
    placement = moetrain::trainer::resolve_placement(recipe.train().device(), launch.local_rank, launch.local_world_size,
                                                     moetrain::trainer::visible_gpu_count());
    data_plane = moetrain::parallel::resolve_data_plane(recipe.parallel().data_plane(), placement.device.is_cuda(),
                                                        placement.shares_gpu, moetrain::parallel::nccl_built());
    if (launch.world_size > 1 && launch.launcher == "torchrun" && (launch.master_addr.empty() || launch.master_port == 0)) {
      throw std::invalid_argument("launched by torchrun without MASTER_ADDR/MASTER_PORT; use torchrun's rendezvous "
                                  "options (--standalone, or --rdzv-endpoint HOST:PORT)");
    }
    moetrain::util::set_run_rank(launch.rank);
    moetrain::util::armed_fault();  // a malformed MOETRAIN_FAULT is refused here, on every rank
    // Every collective from here on is watched (docs/reliability.md).
    moetrain::parallel::WatchdogSettings watch;
    watch.timeout_s = static_cast<double>(recipe.parallel().timeout_s());
    watch.run_dir = run_dir;
    watch.world_rank = launch.rank;
    watch.kill_silent_local_ranks = launch.launcher == "torchrun";  // mpirun and srun end the job themselves
    moetrain::parallel::watchdog().configure(watch);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-train: error%s: %s\n",
                 launch.world_size > 1 ? (" (rank " + std::to_string(launch.rank) + ")").c_str() : "", e.what());
    return 2;
  }

  std::unique_ptr<moetrain::parallel::ProcessMesh> mesh;
  try {
    moetrain::trainer::bind_device(placement);
    // An explicit NCCL data plane builds the mesh even for one process, so that a one-rank run checks it.
    const bool nccl = data_plane == moetrain::parallel::DataPlane::NCCL;
    if (launch.world_size > 1 || nccl) {
      auto world = moetrain::parallel::with_data_plane(moetrain::parallel::world_communicator(launch), data_plane,
                                                       placement.device);
      mesh = std::make_unique<moetrain::parallel::ProcessMesh>(std::move(world), sizes);
      moetrain::parallel::watchdog().set_world_processes(
          moetrain::parallel::all_gather_strings(mesh->world(), moetrain::parallel::this_process()));
      if (launch.rank != 0 && !std::freopen("/dev/null", "w", stdout)) return 1;  // progress from rank 0 only
    }
    if (launch.rank == 0 && (placement.device.is_cuda() || nccl)) {
      std::printf("device: %s; data plane: %s\n", placement.describe().c_str(), moetrain::parallel::data_plane_name(data_plane));
    }
    moetrain::trainer::Trainer trainer(recipe, run_dir, mesh.get(), placement);
    const auto summary = trainer.run();
    if (summary.val_ppl == summary.val_ppl) {
      std::printf("final: step %lld | train loss %.4f | validation loss %.4f | validation perplexity %.2f "
                  "(unigram baseline %.2f)\n",
                  static_cast<long long>(summary.steps), summary.final_loss, summary.val_loss, summary.val_ppl,
                  summary.unigram_ppl);
    }
    if (mesh) mesh->world().barrier();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-train: error%s: %s\n",
                 launch.world_size > 1 ? (" (rank " + std::to_string(launch.rank) + ")").c_str() : "", e.what());
    std::fflush(stderr);
    // Peers may be blocked in a collective with us: take the whole job down rather than hang.
    if (mesh) moetrain::parallel::abort_job(launch, 1);
    return 1;
  }
  return 0;
}
