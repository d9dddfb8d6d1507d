// moe-ckpt: inspect, verify and reshard moetrain checkpoints.
//   moe-ckpt verify --checkpoint STEP_DIR
//       checks every file against the manifest (size, SHA-256) and every tensor's coverage; prints a summary
//   [mpirun -np N] moe-ckpt reshard --checkpoint STEP_DIR --out RUN_DIR [--set field.path=value]...
//       loads the checkpoint (weights, expert biases, optimizer moments, train state) into the layout of
//       the launch (--set parallel.expert=E --set parallel.tensor=T) and saves it there: the offline
//       form of what moe-train does when it resumes in a new layout. Needs no data.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "csrc/config/recipe_loader.h"
#include "csrc/io/sha256.h"
#include "parallel/agreement.h"
#include "parallel/launch_env.h"
#include "parallel/mesh.h"
#include "parallel/watchdog.h"
#include "parallel/world.h"
#include "tools/cli.h"
#include "trainer/checkpoint.h"

namespace {

namespace cli = moetrain::tools::cli;

constexpr const char* kSynopsis =
    "usage: moe-ckpt verify --checkpoint STEP_DIR\n"
    "       [mpirun -np N] moe-ckpt reshard --checkpoint STEP_DIR --out RUN_DIR [--set field.path=value]...\n";

int verify(const std::string& dir) {
  const auto manifest = nlohmann::json::parse(moetrain::trainer::read_manifest(dir));
  int64_t bytes = 0;
  for (const auto& [file, meta] : manifest["files"].items()) {
    const std::string path = dir + "/" + file;
    if (moetrain::io::sha256_file(path) != meta["sha256"].get<std::string>()) {
      throw std::runtime_error(path +
                               " does not match its SHA-256 in the manifest; the checkpoint is corrupted");
    }
    bytes += meta["bytes"].get<int64_t>();
  }
  // Loading into one process checks coverage and shapes of every model tensor.
  auto recipe = moetrain::config::parse_recipe(manifest["recipe"].get<std::string>(), dir + "/manifest.json");
  moetrain::config::fill_defaults(recipe);
  moetrain::model::Transformer model(moetrain::model::TransformerOptions::from_recipe(recipe));
  torch::optim::AdamW optimizer(model->parameters());
  moetrain::trainer::Checkpointer(dir + "/..", 1, moetrain::trainer::model_section_text(recipe))
      .load(dir, *model, &optimizer);
  const auto& layout = manifest["layout"];
  std::printf(
      "{\"checkpoint\": \"%s\", \"ok\": true, \"step\": %lld, \"files\": %zu, \"bytes\": %lld, \"tensors\": %zu, "
      "\"layout\": {\"world\": %d, \"tp\": %d, \"ep\": %d, \"expert_tensor\": %d}}\n",
      dir.c_str(), static_cast<long long>(manifest["step"].get<int64_t>()), manifest["files"].size(),
      static_cast<long long>(bytes), manifest["tensors"].size(), layout["world"].get<int>(),
      layout["tp"].get<int>(), layout["ep"].get<int>(), layout.value("expert_tensor", 1));
  return 0;
}

// The checkpoint's recipe with the overrides applied (the layout of the launch among them), checked.
moetrain::config::Recipe resharded_recipe(const std::string& source, const std::vector<std::string>& overrides) {
  const auto manifest = nlohmann::json::parse(moetrain::trainer::read_manifest(source));
  auto recipe = moetrain::config::parse_recipe(manifest["recipe"].get<std::string>(),
                                               source + "/manifest.json");
  for (const auto& o : overrides) moetrain::config::apply_override(recipe, o);
  moetrain::config::fill_defaults(recipe);
  moetrain::config::validate_recipe(recipe, source + "/manifest.json");
  return recipe;
}

// Collectives are watched as in moe-train: a rank that stops ends the job after parallel.timeout_s (the
// checkpoint's, or --set's), with the report and flight record under RUN_DIR.
void watch_collectives(const moetrain::config::Recipe& recipe, const moetrain::parallel::LaunchInfo& launch,
                       const std::string& out) {
  moetrain::parallel::WatchdogSettings watch;
  watch.timeout_s = static_cast<double>(recipe.parallel().timeout_s());
  watch.run_dir = out;
  watch.world_rank = launch.rank;
  watch.kill_silent_local_ranks = launch.launcher == "torchrun";
  moetrain::parallel::watchdog().configure(watch);
}

// Loads `source` into the layout of the launch and saves it under `out`; 0, or 1 after reporting the
// error (and taking the whole job down).
int reshard(const std::string& source, const std::string& out, const std::vector<std::string>& overrides) {
  moetrain::parallel::LaunchInfo launch;
  std::unique_ptr<moetrain::parallel::ProcessMesh> mesh;
  try {
    launch = moetrain::parallel::detect_launch();
    const auto recipe = resharded_recipe(source, overrides);
    const auto sizes = moetrain::parallel::MeshSizes::from_recipe(recipe.parallel(), launch.world_size);
    moetrain::parallel::validate_mesh(sizes, recipe.model());
    watch_collectives(recipe, launch, out);
    if (launch.world_size > 1) {
      mesh = std::make_unique<moetrain::parallel::ProcessMesh>(moetrain::parallel::world_communicator(launch),
                                                               sizes);
      moetrain::parallel::watchdog().set_world_processes(
          moetrain::parallel::all_gather_strings(mesh->world(), moetrain::parallel::this_process()));
    }
    moetrain::model::Transformer model(
        moetrain::model::TransformerOptions::from_recipe(recipe, mesh ? mesh->placement()
                                                                      : moetrain::model::ModelPlacement{}));
    torch::optim::AdamW optimizer(model->parameters());
    const std::string section = moetrain::trainer::model_section_text(recipe);
    const auto state = moetrain::trainer::Checkpointer(source + "/..", 1, section, "", mesh.get())
                           .load(source, *model, &optimizer);
    const std::string saved = moetrain::trainer::Checkpointer(out, recipe.checkpoint().keep_last(), section,
                                                              moetrain::config::to_text(recipe), mesh.get())
                                  .save(state, *model, optimizer);
    if (launch.rank == 0)
      std::printf("resharded %s into %s (world %d, tp %d, ep %d, expert_tensor %d)\n", source.c_str(),
                  saved.c_str(), sizes.world, sizes.tp, sizes.ep, sizes.etp);
    if (mesh) mesh->world().barrier();
  } catch (const std::exception& e) {
    cli::print_error("moe-ckpt", e.what(), launch.world_size > 1 ? launch.rank : -1);
    std::fflush(stderr);
    if (mesh) moetrain::parallel::abort_job(launch, 1);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  cli::Command cmd("moe-ckpt", kSynopsis);
  const std::string step_help = "a checkpoint: RUN_DIR/checkpoints/step_NNNNNNNN";
  if (command == "verify") {
    cmd.required("--checkpoint", "STEP_DIR",
                 step_help +
                     "; checks every file against the manifest (size,\n"
                     "SHA-256) and every tensor's coverage, prints a JSON summary");
    if (argc == 3 && std::string(argv[2]).rfind("-", 0) != 0) {
      return cmd.fail(std::string("verify ") + argv[2] +
                      ": the checkpoint is a flag, as in reshard; pass verify --checkpoint " + argv[2]);
    }
    return cmd.run(
        argc, argv, [&] { return verify(cmd.get("--checkpoint")); }, 2);
  }
  if (command == "reshard") {
    cmd.required("--checkpoint", "STEP_DIR", step_help + ", loaded into the layout of the launch")
        .required("--out", "RUN_DIR", "run directory the resharded checkpoint is saved in")
        .repeated("--set", "A.B=V",
                  "override of the checkpoint's recipe, such as parallel.expert=E or parallel.tensor=T");
    return cmd.run(
        argc, argv, [&] { return reshard(cmd.get("--checkpoint"), cmd.get("--out"), cmd.all("--set")); }, 2);
  }
  cmd.operand("COMMAND", "verify (a checkpoint's files and coverage) or reshard (into the launch's layout)",
              "a command is required: verify or reshard");
  return cmd.run(argc, argv, [&]() -> int {
    throw cli::UsageError("unknown command \"" + command + "\"; pass verify or reshard");
  });
}
