#include "parallel/launch_env.h"

#include <unistd.h>

#include <algorithm>
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

// Tasks of this step on this node under srun. srun sets SLURM_STEP_TASKS_PER_NODE (and sbatch
// SLURM_TASKS_PER_NODE) on every task, one count per node of the step in the form "2(x3),1";
// SLURM_NODEID picks this node's. SLURM_NTASKS_PER_NODE is set only when --ntasks-per-node was given.
int slurm_tasks_on_this_node(const Env& env) {
  const char* name = env.has("SLURM_STEP_TASKS_PER_NODE") ? "SLURM_STEP_TASKS_PER_NODE"
                     : env.has("SLURM_TASKS_PER_NODE")    ? "SLURM_TASKS_PER_NODE"
                                                          : nullptr;
  if (!name) return env.integer_or("SLURM_NTASKS_PER_NODE", 1);
  const std::string list = env.get(name);
  const int node = env.integer_or("SLURM_NODEID", 0);
  const auto malformed = [&] {
    return LaunchError(std::string("launch environment: ") + name + "=\"" + list +
                       "\" is not a list of task counts like \"2(x3),1\" covering SLURM_NODEID=" +
                       std::to_string(node) + "; check the launcher command line");
  };
  int first_node = 0;  // of the current entry
  for (size_t pos = 0; pos < list.size();) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    const std::string entry = list.substr(pos, comma - pos);
    char* end = nullptr;
    const long count = std::strtol(entry.c_str(), &end, 10);
    long repeat = 1;
    if (end == entry.c_str() || count < 1) throw malformed();
    if (*end == '(') {  // "N(xR)": R nodes with N tasks each
      const char* digits = end + 2;
      if (end[1] != 'x') throw malformed();
      repeat = std::strtol(digits, &end, 10);
      if (end == digits || repeat < 1 || std::string(end) != ")") throw malformed();
    } else if (*end != '\0') {
      throw malformed();
    }
    if (node < first_node + repeat) return static_cast<int>(count);
    first_node += static_cast<int>(repeat);
    pos = comma + 1;
  }
  throw malformed();
}

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
    info.local_world_size = slurm_tasks_on_this_node(env);
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
  if (info.local_rank >= info.local_world_size && info.local_world_size > 0) {
    throw LaunchError("launch environment (" + info.launcher + "): local rank " +
                      std::to_string(info.local_rank) + " is outside 0.." +
                      std::to_string(info.local_world_size - 1) +
                      "; the launcher's variables are inconsistent");
  }
  return info;
}

namespace {

// "0-3,6,8-9" for {0,1,2,3,6,8,9}.
std::string ranges(const std::vector<int>& values) {
  std::string out;
  for (size_t i = 0; i < values.size();) {
    size_t j = i;
    while (j + 1 < values.size() && values[j + 1] == values[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(values[i]);
    if (j > i) out += "-" + std::to_string(values[j]);
    i = j + 1;
  }
  return out;
}

}  // namespace

std::string host_name() {
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "?";
  return host;
}

std::string describe_hosts(const std::string& launcher, const std::vector<std::string>& hosts_and_local_ranks) {
  struct Host {
    std::string name;
    std::vector<int> ranks, local_ranks;
  };
  std::vector<Host> hosts;
  for (size_t r = 0; r < hosts_and_local_ranks.size(); ++r) {
    const std::string& entry = hosts_and_local_ranks[r];
    const auto space = entry.rfind(' ');
    const std::string name = entry.substr(0, space);
    const int local = space == std::string::npos ? 0 : std::atoi(entry.c_str() + space + 1);
    auto it = std::find_if(hosts.begin(), hosts.end(), [&](const Host& h) { return h.name == name; });
    if (it == hosts.end()) it = hosts.insert(hosts.end(), Host{name, {}, {}});
    it->ranks.push_back(static_cast<int>(r));
    it->local_ranks.push_back(local);
  }
  const size_t n = hosts_and_local_ranks.size();
  std::string out = launcher + ", " + std::to_string(n) + (n == 1 ? " rank" : " ranks") + " on " +
                    std::to_string(hosts.size()) + (hosts.size() == 1 ? " host: " : " hosts: ");
  constexpr size_t kShown = 8;
  for (size_t h = 0; h < hosts.size() && h < kShown; ++h) {
    if (h) out += ", ";
    out += hosts[h].name + (hosts[h].ranks.size() == 1 ? " rank " : " ranks ") + ranges(hosts[h].ranks) +
           " (local " + ranges(hosts[h].local_ranks) + ")";
  }
  if (hosts.size() > kShown) out += " ... and " + std::to_string(hosts.size() - kShown) + " more hosts";
  return out;
}

LaunchInfo detect_launch() {
  return detect_launch([](const char* name) { return std::getenv(name); });
}

}  // namespace moetrain::parallel
