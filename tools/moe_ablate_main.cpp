// moe-ablate DIR [--out OUT] [--set field.path=value]... [--launcher "mpirun -np 2 ..."] [--parallel N]
// Trains every variant recipe of DIR (each *.textproto but base.textproto, in name order) with the same
// seed, data order and token budget, one after another or N at a time; skips variants already
// finished, resumes an interrupted one from its checkpoint, then writes OUT/report.md with figures.
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tools/cli.h"
#include "trainer/ablation/report.h"

namespace {

namespace cli = moetrain::tools::cli;

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void make_dirs(const std::string& path) {
  std::string partial;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '/');) {
    partial += part + "/";
    ::mkdir(partial.c_str(), 0755);
  }
}

std::vector<std::string> variant_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw std::runtime_error(dir + ": cannot open the variants folder");
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() > 10 && name.compare(name.size() - 10, 10, ".textproto") == 0 && name != "base.textproto")
      out.push_back(name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  if (out.empty())
    throw std::runtime_error(dir + ": no variant recipes (*.textproto other than base.textproto)");
  return out;
}

// Starts argv; with `log` set, the child's stdout and stderr go to that file.
pid_t start(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (!log.empty() && (!std::freopen(log.c_str(), "a", stdout) || !std::freopen(log.c_str(), "a", stderr)))
      ::_exit(126);
    ::execvp(args[0], args.data());
    std::perror(args[0]);
    ::_exit(127);
  }
  if (pid < 0) throw std::runtime_error("cannot start " + argv[0] + " (fork failed)");
  return pid;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

std::string self_dir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string path(buf, n > 0 ? n : 0);
  return path.substr(0, path.rfind('/'));
}

struct Plan {
  std::string dir, out, launcher;
  std::vector<std::string> sets;
  long parallel = 1;
};
using Variants = std::vector<std::pair<std::string, std::string>>;  // (name, run directory)

// moe-train's command line for one variant, behind the launcher's words.
std::vector<std::string> train_command(const Plan& plan, const std::string& name, const std::string& run_dir) {
  std::vector<std::string> cmd;
  std::stringstream prefix(plan.launcher);
  for (std::string w; prefix >> w;) cmd.push_back(w);
  cmd.insert(cmd.end(), {self_dir() + "/moe-train", "--recipe", plan.dir + "/" + name + ".textproto",
                         "--run-dir", run_dir});
  for (const auto& s : plan.sets) cmd.insert(cmd.end(), {"--set", s});
  return cmd;
}

// Trains the variants `pending` indexes, up to plan.parallel at once; after a failure starts nothing new
// and lets the running ones finish. Returns the names of those that failed.
std::vector<std::string> train_variants(const Plan& plan, const Variants& variants,
                                        const std::vector<size_t>& pending) {
  std::map<pid_t, size_t> running;
  std::vector<std::string> failed;
  size_t next = 0, started = 0;
  while (next < pending.size() || !running.empty()) {
    while (next < pending.size() && static_cast<long>(running.size()) < plan.parallel) {
      const auto& [name, run_dir] = variants[pending[next]];
      make_dirs(run_dir);
      std::printf("[ablate] %s: training (%zu of %zu to run)%s\n", name.c_str(), ++started, pending.size(),
                  plan.parallel > 1 ? (", log in " + run_dir + "/train.log").c_str() : "");
      running[start(train_command(plan, name, run_dir), plan.parallel > 1 ? run_dir + "/train.log" : "")] =
          pending[next++];
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) throw std::runtime_error("waitpid failed");
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const auto& [name, run_dir] = variants[it->second];
    running.erase(it);
    if (const int rc = exit_code(status); rc != 0) {
      std::fprintf(stderr, "moe-ablate: variant %s failed (exit %d)%s\n", name.c_str(), rc,
                   plan.parallel > 1 ? ("; see " + run_dir + "/train.log").c_str() : "");
      failed.push_back(name);
      next = pending.size();
    } else {
      std::ofstream(run_dir + "/.complete") << "done\n";
      if (plan.parallel > 1) std::printf("[ablate] %s: finished\n", name.c_str());
    }
  }
  return failed;
}

// Trains what is not finished yet, then writes OUT/report.md.
int ablate(const Plan& plan) {
  Variants variants;
  std::vector<size_t> pending;  // indices into variants
  for (const auto& file : variant_files(plan.dir)) {
    const std::string name = file.substr(0, file.size() - 10), run_dir = plan.out + "/runs/" + name;
    variants.emplace_back(name, run_dir);
    if (exists(run_dir + "/.complete")) std::printf("[ablate] %s: already finished, skipped\n", name.c_str());
    else pending.push_back(variants.size() - 1);
  }
  const auto failed = train_variants(plan, variants, pending);
  if (!failed.empty()) {
    std::fprintf(stderr,
                 "moe-ablate: error: %zu variant(s) failed (first: %s); finished variants are kept, rerun to "
                 "continue from their checkpoints\n",
                 failed.size(), failed[0].c_str());
    return 1;
  }
  std::string command = "moe-ablate " + plan.dir + " --out " + plan.out;
  for (const auto& s : plan.sets) command += " --set " + s;
  if (!plan.launcher.empty()) command += " --launcher \"" + plan.launcher + "\"";
  if (plan.parallel > 1) command += " --parallel " + std::to_string(plan.parallel);
  const auto summaries = moetrain::trainer::write_report(variants, plan.out, command);
  std::printf("[ablate] report: %s/report.md (%zu variants)\n", plan.out.c_str(), summaries.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cli::Command cmd("moe-ablate",
                   "usage: moe-ablate DIR [--out OUT] [--set field.path=value]... [--launcher \"mpirun -np "
                   "2\"] [--parallel N]\n");
  cmd.operand("DIR",
              "folder of variant recipes (*.textproto; base.textproto is the shared base, not a variant)",
              "name the folder of variant recipes")
      .option("--out", "OUT",
              "output folder: OUT/runs/<variant>/ and OUT/report.md (default: runs/ablation-<DIR name>)")
      .repeated("--set", "A=V", "override applied to every variant (for example train.steps=200)")
      .option("--launcher", "CMD", "command prefix for each moe-train run (several ranks per variant)")
      .option("--parallel", "N",
              "train up to N variants at once (each its own process or launcher job; console output\n"
              "goes to OUT/runs/<variant>/train.log); give each a share of the cores with\n"
              "--set train.threads=T");
  return cmd.run(argc, argv, [&] {
    Plan plan{cmd.operand(0), cmd.get("--out"), cmd.get("--launcher"), cmd.all("--set"), 1};
    plan.parallel = cmd.integer("--parallel", 1, 1, "give a whole number of variants >= 1");
    while (plan.dir.size() > 1 && plan.dir.back() == '/') plan.dir.pop_back();
    if (plan.out.empty()) plan.out = "runs/ablation-" + plan.dir.substr(plan.dir.rfind('/') + 1);
    return ablate(plan);
  });
}
