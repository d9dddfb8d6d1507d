// moe-ablate STUDY|DIR [--out OUT] [--set field.path=value]... [--launcher "mpirun -np 2 ..."] [--parallel N]
//            [--baseline NAME]
// Trains every run of an ablation study (variants x seeds, docs/ablations.md), each in
// OUT/runs/VARIANT/seed-SEED, N at a time; skips runs already finished, resumes interrupted ones from
// their checkpoints, prints progress and an ETA, then writes OUT/report.md, report.json and figures.
// DIR (a folder of variant recipes) is a study of that folder with one seed, 1234.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <chrono>
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
namespace ab = moetrain::trainer::ablation;

volatile sig_atomic_t g_stop_signal = 0;  // SIGTERM or SIGINT received: start nothing, stop the runs
void on_stop(int sig) { g_stop_signal = sig; }

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
  std::string partial;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '/');) {
    partial += part + "/";
    ::mkdir(partial.c_str(), 0755);
  }
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

std::string duration(double s) {
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof(buf), "%ldh %02ldm", t / 3600, t / 60 % 60);
  else std::snprintf(buf, sizeof(buf), "%ldm %02lds", t / 60, t % 60);
  return buf;
}

struct Plan {
  std::string source, out, launcher, baseline;
  std::vector<std::string> sets;
  long parallel = 1;
};

std::string run_name(const ab::Study& study, const ab::Run& run) {
  return study.variants[run.variant].name + "/seed-" + std::to_string(run.seed);
}

// A finished run's marker, RUN/.complete, holds its training time ("seconds S"); NaN when absent or
// written by an older moe-ablate ("done").
bool finished(const ab::Run& run, double* seconds) {
  std::ifstream in(run.dir + "/.complete");
  *seconds = NAN;
  if (!in) return false;
  std::string word;
  if (in >> word && word == "seconds") in >> *seconds;
  return true;
}

// Whether the run's metrics reached its planned steps (a run stopped by a signal or train.exit_interval
// exits 0 before that).
bool reached_end(const ab::Run& run) {
  try {
    return ab::read_run_metrics(run.dir).steps >= run.steps;
  } catch (const std::exception&) {
    return false;  // no metrics yet: not finished
  }
}

// moe-train's command line for one run, behind the launcher's words.
std::vector<std::string> train_command(const Plan& plan, const ab::Study& study, const ab::Run& run) {
  std::vector<std::string> cmd;
  std::stringstream prefix(plan.launcher);
  for (std::string w; prefix >> w;) cmd.push_back(w);
  cmd.insert(cmd.end(), {self_dir() + "/moe-train", "--recipe", study.variants[run.variant].recipe,
                         "--run-dir", run.dir});
  for (const auto& s : run.overrides) cmd.insert(cmd.end(), {"--set", s});
  return cmd;
}

// Progress over the whole study: finished runs' times give the ETA of the rest at `parallel` at once.
struct Progress {
  size_t done = 0, total = 0;
  double seconds = 0;  // summed over the runs whose time is known
  size_t timed = 0;
  void add(double s) {
    ++done;
    if (!std::isnan(s)) seconds += s, ++timed;
  }
  std::string line(long parallel) const {
    std::string out = std::to_string(done) + "/" + std::to_string(total) + " runs done";
    if (done == total) return out;
    if (timed == 0) return out + " | ETA after the first run";
    const double left = static_cast<double>(total - done);
    return out + " | ETA " + duration(seconds / timed * left / std::min<double>(parallel, left));
  }
};

using Clock = std::chrono::steady_clock;
using Running = std::map<pid_t, std::pair<size_t, Clock::time_point>>;  // pid -> (run index, start)

// Waits for one of `running` to end and returns its pid and exit status. Checks for a stop signal
// every 50 ms, and on the first passes SIGTERM on to every running training.
pid_t wait_any(const Running& running, bool* forwarded, int* status) {
  while (true) {
    if (g_stop_signal && !*forwarded) {
      for (const auto& [pid, r] : running) ::kill(pid, SIGTERM);
      *forwarded = true;
    }
    const pid_t pid = ::waitpid(-1, status, WNOHANG);
    if (pid > 0 && running.count(pid)) return pid;
    if (pid < 0 && errno != EINTR)
      throw std::runtime_error("waitpid failed with no training left to wait for");
    if (pid == 0 || pid < 0) ::usleep(50000);
  }
}

// Trains `pending` (indices into runs), up to plan.parallel at once. After a failure or a stop signal
// it starts nothing new (a signal is passed on to the running trainings, which save a checkpoint and
// stop). Returns the names of the runs that failed.
std::vector<std::string> train_runs(const Plan& plan, const ab::Study& study, const std::vector<ab::Run>& runs,
                                    const std::vector<size_t>& pending, Progress& progress) {
  Running running;
  std::vector<std::string> failed;
  size_t next = 0;
  bool forwarded = false;
  const bool logs = plan.parallel > 1;
  while (next < pending.size() || !running.empty()) {
    if (g_stop_signal || !failed.empty()) next = pending.size();
    while (next < pending.size() && static_cast<long>(running.size()) < plan.parallel) {
      const ab::Run& run = runs[pending[next]];
      make_dirs(run.dir);
      std::printf("[ablate] %s: training%s\n", run_name(study, run).c_str(),
                  logs ? (", log in " + run.dir + "/train.log").c_str() : "");
      running[start(train_command(plan, study, run), logs ? run.dir + "/train.log" : "")] = {pending[next++],
                                                                                             Clock::now()};
    }
    if (running.empty()) break;
    int status = 0;
    const auto it = running.find(wait_any(running, &forwarded, &status));
    const ab::Run& run = runs[it->second.first];
    const double seconds = std::chrono::duration<double>(Clock::now() - it->second.second).count();
    running.erase(it);
    const int rc = exit_code(status);
    if (rc == 0 && reached_end(run)) {
      std::ofstream(run.dir + "/.complete") << "seconds " << seconds << "\n";
      progress.add(seconds);
      std::printf("[ablate] %s: finished in %s | %s\n", run_name(study, run).c_str(),
                  duration(seconds).c_str(), progress.line(plan.parallel).c_str());
    } else if (rc == 0 || g_stop_signal) {  // stopped by the signal, or by train.exit_interval
      std::printf("[ablate] %s: stopped before step %lld; it resumes from its checkpoint on the next moe-ablate\n",
                  run_name(study, run).c_str(), static_cast<long long>(run.steps));
    } else {
      std::fprintf(stderr, "moe-ablate: run %s failed (exit %d)%s\n", run_name(study, run).c_str(), rc,
                   logs ? ("; see " + run.dir + "/train.log").c_str() : "");
      failed.push_back(run_name(study, run));
    }
  }
  return failed;
}

std::string command_line(const Plan& plan) {
  std::string command = "moe-ablate " + plan.source + " --out " + plan.out;
  for (const auto& s : plan.sets) command += " --set " + s;
  if (!plan.launcher.empty()) command += " --launcher \"" + plan.launcher + "\"";
  if (!plan.baseline.empty()) command += " --baseline " + plan.baseline;
  if (plan.parallel > 1) command += " --parallel " + std::to_string(plan.parallel);
  return command;
}

// Trains what is not finished yet, then writes the report.
int ablate(const Plan& plan, ab::Study study) {
  study.sets.insert(study.sets.end(), plan.sets.begin(), plan.sets.end());
  if (!plan.baseline.empty()) study.baseline = plan.baseline;
  const auto runs = ab::plan_runs(study, plan.out);
  Progress progress;
  progress.total = runs.size();
  std::vector<size_t> pending;
  for (size_t i = 0; i < runs.size(); ++i) {
    double seconds;
    if (!finished(runs[i], &seconds)) {
      pending.push_back(i);
      continue;
    }
    if (const int64_t steps = ab::read_run_metrics(runs[i].dir).steps; steps != runs[i].steps)
      throw std::runtime_error(runs[i].dir + " finished at step " + std::to_string(steps) +
                               " but the study now asks " + std::to_string(runs[i].steps) +
                               " steps; give another budget its own --out folder");
    progress.add(seconds);
  }
  std::printf("[ablate] %zu variants x %zu seeds: %s, %zu to train, %ld at a time\n", study.variants.size(),
              study.seeds.size(), progress.line(plan.parallel).c_str(), pending.size(), plan.parallel);
  const auto failed = train_runs(plan, study, runs, pending, progress);
  if (!failed.empty()) {
    std::fprintf(stderr,
                 "moe-ablate: error: %zu run(s) failed (first: %s); finished runs are kept, fix the cause and "
                 "rerun the same command to continue\n",
                 failed.size(), failed[0].c_str());
    return 1;
  }
  if (progress.done < progress.total) {
    std::fprintf(stderr, "moe-ablate: stopped with %s; rerun the same command to continue\n",
                 progress.line(plan.parallel).c_str());
    return g_stop_signal ? 128 + static_cast<int>(g_stop_signal) : 1;  // else a run stopped by exit_interval
  }
  const auto results = ab::study_results(study, runs);
  ab::write_report(study, results, runs, plan.out, command_line(plan));
  std::printf("[ablate] report: %s/report.md and report.json (%zu variants x %zu seeds)\n", plan.out.c_str(),
              results.size(), study.seeds.size());
  return 0;
}

// Runs at once when --parallel is not given: the cores over each run's threads (train.threads from the
// overrides, else OMP_NUM_THREADS); 1 when neither says, since a run then uses every core.
long default_parallel(const std::vector<std::string>& sets, const std::string& launcher) {
  if (!launcher.empty()) return 1;
  long threads = 0;
  for (const auto& s : sets)
    if (s.rfind("train.threads=", 0) == 0) threads = std::atol(s.c_str() + 14);
  if (threads <= 0 && std::getenv("OMP_NUM_THREADS")) threads = std::atol(std::getenv("OMP_NUM_THREADS"));
  const long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
  return threads > 0 && cores > threads ? cores / threads : 1;
}

}  // namespace

int main(int argc, char** argv) {
  cli::Command cmd("moe-ablate",
                   "usage: moe-ablate STUDY|DIR [--out OUT] [--set field.path=value]... [--launcher \"mpirun -np "
                   "2\"] [--parallel N] [--baseline NAME]\n");
  cmd.operand("STUDY|DIR",
              "a study file (variants, seeds, budget: docs/ablations.md), or a folder of variant recipes\n"
              "(*.textproto; base.textproto is the shared base, not a variant), a study with one seed",
              "name a study file or a folder of variant recipes")
      .option("--out", "OUT",
              "output folder: OUT/runs/<variant>/seed-<seed>/, OUT/report.md, OUT/report.json\n"
              "(default: runs/ablation-<STUDY or DIR name>)")
      .repeated("--set", "A=V", "override applied to every run after the study's (for example train.threads=1)")
      .option("--launcher", "CMD", "command prefix for each moe-train run (several ranks per run)")
      .option("--parallel", "N",
              "train up to N runs at once, each one's console output in its train.log (default: the\n"
              "cores over train.threads or OMP_NUM_THREADS; 1 with --launcher or when neither is set)")
      .option("--baseline", "NAME", "the variant the others are compared with (default: the study's)");
  return cmd.run(argc, argv, [&] {
    Plan plan{cmd.operand(0),        cmd.get("--out"), cmd.get("--launcher"),
              cmd.get("--baseline"), cmd.all("--set"), 1};
    while (plan.source.size() > 1 && plan.source.back() == '/') plan.source.pop_back();
    const bool folder = is_dir(plan.source);
    ab::Study study = folder ? ab::folder_study(plan.source) : ab::load_study(plan.source);
    if (study.tokens > 0 && !plan.launcher.empty())
      throw std::runtime_error(plan.source + ": tokens: " + std::to_string(study.tokens) +
                               " with --launcher: a token budget counts one data-parallel replica's tokens; give "
                               "the budget as steps: instead");
    std::vector<std::string> all_sets = study.sets;
    all_sets.insert(all_sets.end(), plan.sets.begin(), plan.sets.end());
    plan.parallel = cmd.has("--parallel") ? cmd.integer("--parallel", 1, 1, "give a whole number of runs >= 1")
                                          : default_parallel(all_sets, plan.launcher);
    if (plan.out.empty()) {
      std::string name = plan.source.substr(plan.source.rfind('/') + 1);
      if (!folder && name.size() > 10 && name.compare(name.size() - 10, 10, ".textproto") == 0)
        name.resize(name.size() - 10);
      plan.out = "runs/ablation-" + name;
    }
    struct sigaction sa {};
    sa.sa_handler = on_stop;  // wait_any passes the signal on to the running trainings
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
    return ablate(plan, study);
  });
}
