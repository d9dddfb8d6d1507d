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

#include "trainer/ablation/report.h"

namespace {

constexpr const char* kUsage =
    "usage: moe-ablate DIR [--out OUT] [--set field.path=value]... [--launcher \"mpirun -np 2\"]\n"
    "  DIR         folder of variant recipes (*.textproto; base.textproto is the shared base, not a variant)\n"
    "  --out OUT   output folder: OUT/runs/<variant>/ and OUT/report.md (default: runs/ablation-<DIR name>)\n"
    "  --set A=V   override applied to every variant (for example train.steps=200)\n"
    "  --launcher  command prefix for each moe-train run (several ranks per variant)\n"
    "  --parallel N  train up to N variants at once (each its own process or launcher job; console output\n"
    "              goes to OUT/runs/<variant>/train.log); give each a share of the cores with\n"
    "              --set train.threads=T\n";

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
  if (out.empty()) throw std::runtime_error(dir + ": no variant recipes (*.textproto other than base.textproto)");
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
    if (!log.empty() && (!std::freopen(log.c_str(), "a", stdout) || !std::freopen(log.c_str(), "a", stderr))) ::_exit(126);
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

}  // namespace

int main(int argc, char** argv) {
  std::string dir, out, launcher;
  std::vector<std::string> sets;
  long parallel = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    if ((a == "--out" || a == "--set" || a == "--launcher") && i + 1 < argc) {
      (a == "--out" ? out : a == "--launcher" ? launcher : sets.emplace_back()) = argv[++i];
    } else if (a == "--parallel" && i + 1 < argc) {
      char* end = nullptr;
      parallel = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || parallel < 1) {
        std::fprintf(stderr, "moe-ablate: error: --parallel %s: give a whole number of variants >= 1\n%s", argv[i], kUsage);
        return 2;
      }
    } else if (a.rfind("--", 0) == 0 || !dir.empty()) {
      std::fprintf(stderr, "moe-ablate: error: unexpected argument \"%s\"\n%s", a.c_str(), kUsage);
      return 2;
    } else {
      dir = a;
    }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "moe-ablate: error: name the folder of variant recipes\n%s", kUsage);
    return 2;
  }
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (out.empty()) out = "runs/ablation-" + dir.substr(dir.rfind('/') + 1);
  try {
    const auto files = variant_files(dir);
    std::vector<std::pair<std::string, std::string>> variants;
    std::vector<size_t> pending;  // indices into variants
    for (const auto& file : files) {
      const std::string name = file.substr(0, file.size() - 10), run_dir = out + "/runs/" + name;
      variants.emplace_back(name, run_dir);
      if (exists(run_dir + "/.complete")) {
        std::printf("[ablate] %s: already finished, skipped\n", name.c_str());
      } else {
        pending.push_back(variants.size() - 1);
      }
    }
    std::map<pid_t, size_t> running;
    std::vector<std::string> failed;
    size_t next = 0, started = 0;
    while (next < pending.size() || !running.empty()) {
      while (next < pending.size() && static_cast<long>(running.size()) < parallel) {
        const auto& [name, run_dir] = variants[pending[next]];
        make_dirs(run_dir);
        std::vector<std::string> cmd;
        std::stringstream prefix(launcher);
        for (std::string w; prefix >> w;) cmd.push_back(w);
        cmd.insert(cmd.end(), {self_dir() + "/moe-train", "--recipe", dir + "/" + name + ".textproto", "--run-dir", run_dir});
        for (const auto& s : sets) cmd.insert(cmd.end(), {"--set", s});
        std::printf("[ablate] %s: training (%zu of %zu to run)%s\n", name.c_str(), ++started, pending.size(),
                    parallel > 1 ? (", log in " + run_dir + "/train.log").c_str() : "");
        running[start(cmd, parallel > 1 ? run_dir + "/train.log" : "")] = pending[next++];
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
                     parallel > 1 ? ("; see " + run_dir + "/train.log").c_str() : "");
        failed.push_back(name);
        next = pending.size();  // start nothing new; let the running ones finish
      } else {
        std::ofstream(run_dir + "/.complete") << "done\n";
        if (parallel > 1) std::printf("[ablate] %s: finished\n", name.c_str());
      }
    }
    if (!failed.empty()) {
      std::fprintf(stderr, "moe-ablate: error: %zu variant(s) failed (first: %s); finished variants are kept, rerun to "
                           "continue from their checkpoints\n", failed.size(), failed[0].c_str());
      return 1;
    }
    std::string command = "moe-ablate " + dir + " --out " + out;
    for (const auto& s : sets) command += " --set " + s;
    if (!launcher.empty()) command += " --launcher \"" + launcher + "\"";
    if (parallel > 1) command += " --parallel " + std::to_string(parallel);
    const auto summaries = moetrain::trainer::write_report(variants, out, command);
    std::printf("[ablate] report: %s/report.md (%zu variants)\n", out.c_str(), summaries.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-ablate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
