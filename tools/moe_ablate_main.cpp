// moe-ablate DIR [--out OUT] [--set field.path=value]... [--launcher "mpirun -np 2 ..."]
// Trains every variant recipe of DIR (each *.textproto but base.textproto, in name order) with the same
// seed, data order and token budget, one after another; skips variants already finished, resumes an
// interrupted one from its checkpoint, then writes OUT/report.md with figures.
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
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
    "  --launcher  command prefix for each moe-train run (several ranks per variant)\n";

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

int run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execvp(args[0], args.data());
    std::perror(args[0]);
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

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
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    if ((a == "--out" || a == "--set" || a == "--launcher") && i + 1 < argc) {
      (a == "--out" ? out : a == "--launcher" ? launcher : sets.emplace_back()) = argv[++i];
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
    for (const auto& file : files) {
      const std::string name = file.substr(0, file.size() - 10), run_dir = out + "/runs/" + name;
      variants.emplace_back(name, run_dir);
      if (exists(run_dir + "/.complete")) {
        std::printf("[ablate] %s: already finished, skipped\n", name.c_str());
        continue;
      }
      make_dirs(run_dir);
      std::vector<std::string> cmd;
      std::stringstream prefix(launcher);
      for (std::string w; prefix >> w;) cmd.push_back(w);
      cmd.insert(cmd.end(), {self_dir() + "/moe-train", "--recipe", dir + "/" + file, "--run-dir", run_dir});
      for (const auto& s : sets) cmd.insert(cmd.end(), {"--set", s});
      std::printf("[ablate] %s: training (%zu of %zu)\n", name.c_str(), variants.size(), files.size());
      const int rc = run(cmd);
      if (rc != 0) {
        std::fprintf(stderr, "moe-ablate: error: variant %s failed (exit %d); finished variants are kept, rerun to "
                             "continue from its checkpoint\n", name.c_str(), rc);
        return 1;
      }
      std::ofstream(run_dir + "/.complete") << "done\n";
    }
    std::string command = "moe-ablate " + dir + " --out " + out;
    for (const auto& s : sets) command += " --set " + s;
    if (!launcher.empty()) command += " --launcher \"" + launcher + "\"";
    const auto summaries = moetrain::trainer::write_report(variants, out, command);
    std::printf("[ablate] report: %s/report.md (%zu variants)\n", out.c_str(), summaries.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-ablate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
