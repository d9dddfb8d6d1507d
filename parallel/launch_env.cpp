#include "parallel/launch_env.h"

#include <cstdlib>

namespace moetrain::parallel {
namespace {

struct Env {
  const std::function<const char*(const char*)>& get;

  bool has(const char* name) const { return get(name) != nullptr; }
  int integer(const char* name) const {
    const char* raw = get(name);
    if (!raw) throw LaunchError(std::string("launch environment: ") + name + " is not set");
    char* end = nullptr;
    long v = std::strtol(raw, &end, 10);
    if (*raw == '\0' || *end != '\0' || v < 0) {
      throw LaunchError(std::string("launch environment: ") + name + "=\"" + raw +
                        "\" is not a non-negative integer; check the launcher command line");
    }
    return static_cast<int>(v);
  }
  int integer_or(const char* name, int fallback) const { return has(name) ? integer(name) : fallback; }
};

}  // namespace

LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv_fn) {
  Env env{getenv_fn};
  LaunchInfo info;
  const char* rank_var = nullptr;
  const char* size_var = nullptr;
  if (env.has("OMPI_COMM_WORLD_SIZE")) {
    info.launcher = "mpirun";
    rank_var = "OMPI_COMM_WORLD_RANK", size_var = "OMPI_COMM_WORLD_SIZE";
    info.local_rank = env.integer_or("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    info.local_world_size = env.integer_or("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env.has("WORLD_SIZE") && env.has("RANK")) {
    info.launcher = "torchrun";
    rank_var = "RANK", size_var = "WORLD_SIZE";
    info.local_rank = env.integer_or("LOCAL_RANK", 0);
    info.local_world_size = env.integer_or("LOCAL_WORLD_SIZE", 1);
    if (const char* addr = getenv_fn("MASTER_ADDR")) info.master_addr = addr;
    info.master_port = env.integer_or("MASTER_PORT", 0);
  } else if (env.has("SLURM_NTASKS") && env.has("SLURM_PROCID")) {
    info.launcher = "slurm";
    rank_var = "SLURM_PROCID", size_var = "SLURM_NTASKS";
    info.local_rank = env.integer_or("SLURM_LOCALID", 0);
    info.local_world_size = env.integer_or("SLURM_NTASKS_PER_NODE", 1);
  } else {
    return info;
  }
  info.rank = env.integer(rank_var);
  info.world_size = env.integer(size_var);
  if (info.world_size < 1 || info.rank >= info.world_size) {
    throw LaunchError("launch environment (" + info.launcher + "): " + rank_var + "=" +
                      std::to_string(info.rank) + " is outside 0.." + std::to_string(info.world_size - 1) +
                      " given " + size_var + "=" + std::to_string(info.world_size) +
                      "; the launcher's variables are inconsistent");
  }
  if (info.local_rank >= info.local_world_size && info.local_world_size > 0 && info.launcher != "slurm") {
    throw LaunchError("launch environment (" + info.launcher + "): local rank " +
                      std::to_string(info.local_rank) + " is outside 0.." +
                      std::to_string(info.local_world_size - 1) +
                      "; the launcher's variables are inconsistent");
  }
  return info;
}

LaunchInfo detect_launch() {
  return detect_launch([](const char* name) { return std::getenv(name); });
}

}  // namespace moetrain::parallel
