// moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]
// Trains the recipe's model; resumes from DIR/checkpoints/latest when present.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "csrc/config/recipe_loader.h"
#include "csrc/util/fault_injection.h"
#include "csrc/util/host_allocator.h"
#include "csrc/util/memory_stats.h"
#include "csrc/util/run_position.h"
#include "parallel/agreement.h"
#include "parallel/data_plane.h"
#include "parallel/launch_env.h"
#include "parallel/mesh.h"
#include "parallel/watchdog.h"
#include "parallel/world.h"
#include "tools/cli.h"
#include "trainer/placement.h"
#include "trainer/trainer.h"

namespace {

namespace cli = moetrain::tools::cli;

// What a run needs, resolved and checked before any allocation or collective.
struct Setup {
  moetrain::config::Recipe recipe;
  moetrain::parallel::LaunchInfo launch;
  moetrain::parallel::MeshSizes sizes;
  moetrain::trainer::Placement placement;
  moetrain::parallel::DataPlane data_plane = moetrain::parallel::DataPlane::kHost;
  int error_rank() const { return launch.world_size > 1 ? launch.rank : -1; }  // for cli::print_error
};

// Loads the recipe and checks the launch against it: the same verdict on every rank. Throws.
void prepare(Setup& s, const std::string& recipe_path, const std::vector<std::string>& overrides,
             const std::string& run_dir) {
  s.launch = moetrain::parallel::detect_launch();
  s.recipe = moetrain::config::load_recipe(recipe_path, overrides);
  const auto& recipe = s.recipe;
  s.sizes = moetrain::parallel::MeshSizes::from_recipe(recipe.parallel(), s.launch.world_size);
  moetrain::parallel::validate_mesh(s.sizes, recipe.model());
  moetrain::parallel::validate_tensor_parallel_recipe(s.sizes, recipe);
  s.placement = moetrain::trainer::resolve_placement(recipe.train().device(), s.launch.local_rank,
                                                     s.launch.local_world_size,
                                                     moetrain::trainer::visible_gpu_count());
  // Whether local ranks share a GPU is settled in make_mesh from the GPUs they bind (several processes
  // may each see one GPU of their own); here the other reasons to refuse NCCL are checked.
  const bool settled_later = s.launch.world_size > 1 && s.placement.device.is_cuda();
  s.data_plane = moetrain::parallel::resolve_data_plane(recipe.parallel().data_plane(),
                                                        s.placement.device.is_cuda(),
                                                        s.placement.shares_gpu && !settled_later,
                                                        moetrain::parallel::nccl_built());
  if (s.launch.world_size > 1 && s.launch.launcher == "torchrun" &&
      (s.launch.master_addr.empty() || s.launch.master_port == 0)) {
    throw std::invalid_argument(
        "launched by torchrun without MASTER_ADDR/MASTER_PORT; use torchrun's rendezvous "
        "options (--standalone, or --rdzv-endpoint HOST:PORT)");
  }
  moetrain::util::set_run_rank(s.launch.rank);
  moetrain::util::armed_fault();  // a malformed MOETRAIN_FAULT is refused here, on every rank
  // Every collective from here on is watched (docs/reliability.md).
  moetrain::parallel::WatchdogSettings watch;
  watch.timeout_s = static_cast<double>(recipe.parallel().timeout_s());
  watch.run_dir = run_dir;
  watch.world_rank = s.launch.rank;
  watch.kill_silent_local_ranks = s.launch.launcher == "torchrun";  // mpirun and srun end the job themselves
  moetrain::parallel::watchdog().configure(watch);
}

// Settles whether local ranks share a GPU from the device each rank bound (its UUID), and with it the
// data plane: the same verdict on every rank (all see the same list). Several processes on GPUs only.
void settle_gpu_sharing(Setup& s, moetrain::parallel::Communicator& host_world) {
  if (s.launch.world_size == 1 || !s.placement.device.is_cuda()) return;
  const auto bound = moetrain::parallel::all_gather_strings(host_world, moetrain::parallel::host_name() + " " +
                                                                            moetrain::trainer::device_identity(
                                                                                s.placement.device));
  s.placement.shares_gpu = moetrain::trainer::local_ranks_share_a_gpu(bound);
  s.data_plane = moetrain::parallel::resolve_data_plane(s.recipe.parallel().data_plane(), true,
                                                        s.placement.shares_gpu,
                                                        moetrain::parallel::nccl_built());
}

// Builds the process mesh (when there are several processes, or an explicit NCCL data plane, so that a
// one-rank run checks it); rank 0 alone keeps its stdout. Null for one process.
std::unique_ptr<moetrain::parallel::ProcessMesh> make_mesh(Setup& s) {
  const bool nccl = s.data_plane == moetrain::parallel::DataPlane::kNccl;
  if (s.launch.world_size == 1 && !nccl) return nullptr;
  auto host_world = moetrain::parallel::world_communicator(s.launch);
  settle_gpu_sharing(s, *host_world);
  auto world = moetrain::parallel::with_data_plane(std::move(host_world), s.data_plane, s.placement.device);
  auto mesh = std::make_unique<moetrain::parallel::ProcessMesh>(std::move(world), s.sizes);
  moetrain::parallel::watchdog().set_world_processes(
      moetrain::parallel::all_gather_strings(mesh->world(), moetrain::parallel::this_process()));
  const auto hosts = moetrain::parallel::all_gather_strings(mesh->world(),
                                                            moetrain::parallel::host_name() + " " +
                                                                std::to_string(s.launch.local_rank));
  if (s.launch.rank == 0 && s.launch.world_size > 1)
    std::printf("launch: %s\n", moetrain::parallel::describe_hosts(s.launch.launcher, hosts).c_str());
  if (s.launch.rank != 0 && !std::freopen("/dev/null", "w", stdout))
    throw std::runtime_error("cannot silence stdout");
  return mesh;
}

// Trains; 0, or 1 after reporting the error (and taking the whole job down: peers may be blocked in a
// collective with us).
int train(Setup& s, const std::string& run_dir) {
  std::unique_ptr<moetrain::parallel::ProcessMesh> mesh;
  try {
    moetrain::trainer::bind_device(s.placement);
    mesh = make_mesh(s);
    if (s.launch.rank == 0 &&
        (s.placement.device.is_cuda() || s.data_plane == moetrain::parallel::DataPlane::kNccl)) {
      std::printf("device: %s; data plane: %s\n", s.placement.describe().c_str(),
                  moetrain::parallel::data_plane_name(s.data_plane));
    }
    moetrain::trainer::Trainer trainer(s.recipe, run_dir, mesh.get(), s.placement);
    const auto summary = trainer.run();
    if (summary.val_ppl == summary.val_ppl) {
      std::printf(
          "final: step %lld | train loss %.4f | validation loss %.4f | validation perplexity %.2f "
          "(unigram baseline %.2f)\n",
          static_cast<long long>(summary.steps), summary.final_loss, summary.val_loss, summary.val_ppl,
          summary.unigram_ppl);
    }
    if (mesh) mesh->world().barrier();
  } catch (const std::exception& e) {
    cli::print_error("moe-train", e.what(), s.error_rank());
    std::fflush(stderr);
    if (mesh) moetrain::parallel::abort_job(s.launch, 1);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Before the first tensor; a malformed MOETRAIN_HOST_MALLOC is a usage error.
  if (const int rc = cli::setup_error("moe-train", moetrain::util::keep_freed_host_memory)) return rc;
  moetrain::util::track_cpu_memory();  // mem_allocated_mib / mem_peak_mib in the step metrics
  cli::Command cmd("moe-train", "usage: moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]\n");
  cmd.required("--recipe", "FILE",
               "recipe in Protobuf text format (schema: csrc/config/recipe.proto, docs/recipes.md)")
      .repeated("--set", "A.B=V", "override one recipe field, typed like the file (repeatable)")
      .option("--run-dir", "DIR",
              "where metrics, TensorBoard events, checkpoints and the resolved recipe go\n"
              "(default: runs/<recipe file name>); an existing run there is resumed");
  return cmd.run(argc, argv, [&] {
    const std::string recipe_path = cmd.get("--recipe");
    std::string run_dir = cmd.get("--run-dir");
    if (run_dir.empty()) run_dir = "runs/" + std::filesystem::path(recipe_path).stem().string();
    Setup setup;
    try {
      prepare(setup, recipe_path, cmd.all("--set"), run_dir);
    } catch (const std::exception& e) {
      cli::print_error("moe-train", e.what(), setup.error_rank());
      return 2;
    }
    return train(setup, run_dir);
  });
}
