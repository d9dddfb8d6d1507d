#include "parallel/watchdog.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "csrc/util/run_position.h"
#include "parallel/comm_clock.h"

namespace moetrain::parallel {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double wall_clock_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string fixed(double v) {  // seconds, to a tenth
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", v);
  return buf;
}

std::string general(double v) {  // a setting, as written
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// "all_to_all_v in group ep (mpi, world ranks 0 1), collective #41 of the group, at step 3 (training)"
std::string where(const json& waiting, const json& report) {
  std::string ranks;
  for (const auto& r : waiting.at("ranks")) ranks += " " + std::to_string(r.get<int>());
  return waiting.at("op").get<std::string>() + " in group " + waiting.at("group").get<std::string>() + " (" +
         waiting.at("backend").get<std::string>() + ", world ranks" + ranks + "), collective #" +
         std::to_string(waiting.at("sequence").get<int64_t>()) + " of the group, at step " +
         std::to_string(report.at("step").get<int64_t>()) + " (" + report.at("phase").get<std::string>() + ")";
}

}  // namespace

std::string GroupIdentity::describe() const {
  std::string ranks;
  for (int r : world_ranks) ranks += " " + std::to_string(r);
  return name + " (" + backend + ", world ranks" + ranks + ")";
}

Watchdog& watchdog() {
  static Watchdog instance;
  return instance;
}

void Watchdog::configure(const WatchdogSettings& settings) { settings_ = settings; }

Watchdog::Wait Watchdog::enter(const GroupIdentity& group, int64_t sequence, const char* op, int64_t bytes) {
  const util::RunPosition& at = util::run_position();
  CollectiveRecord record;
  record.sequence = sequence;
  record.group = group.name;
  record.backend = group.backend;
  record.op = op;
  record.bytes = bytes;
  record.step = at.step;
  record.phase = at.phase;
  record.start_s = wall_clock_s();
  Wait::InFlight in_flight;
  in_flight.group = &group;
  in_flight.op = op;
  in_flight.sequence = sequence;
  in_flight.bytes = bytes;
  in_flight.record = recorder_.begin(std::move(record));
  in_flight.step = at.step;
  in_flight.phase = at.phase;
  in_flight.start = Clock::now();
  entered_[group.key()] = sequence;
  return Wait(this, in_flight);
}

Watchdog::Wait::Wait(Watchdog* owner, InFlight in_flight) : owner_(owner), in_flight_(in_flight) {}

Watchdog::Wait::Wait(Wait&& other) noexcept : owner_(other.owner_), in_flight_(other.in_flight_) {
  other.owner_ = nullptr;
}

Watchdog::Wait::~Wait() {
  if (!owner_) return;
  owner_->recorder_.finish(in_flight_.record, wall_clock_s());
  if (in_flight_.on_stream) {
    comm_clock().add(in_flight_.group->name, std::string(in_flight_.op) + "/on_stream", waited_s(), 0);
  } else {
    comm_clock().add(in_flight_.group->name, in_flight_.op, waited_s(), in_flight_.bytes);
  }
}

void Watchdog::Wait::tick() { owner_->tick(in_flight_); }

double Watchdog::Wait::waited_s() const { return seconds(Clock::now() - in_flight_.start); }

void Watchdog::tick(const Wait::InFlight& in_flight) {
  const auto now = Clock::now();
  const double waited = seconds(now - in_flight.start);
  if (settings_.timeout_s > 0 && waited >= settings_.timeout_s) expire(in_flight, /*timed_out=*/true, {});
  // Another rank's alarm: looked for only in waits longer than 50 ms, at most every 50 ms.
  if (!channel_ || waited < 0.05 || seconds(now - last_probe_) < 0.05) return;
  last_probe_ = now;
  std::vector<std::string> reports;
  try {
    reports = channel_->receive();
  } catch (const std::exception&) {
    return;  // the channel is best effort; the deadline still holds
  }
  if (!reports.empty()) expire(in_flight, /*timed_out=*/false, std::move(reports));
}

std::string Watchdog::report(const Wait::InFlight& in_flight, bool timed_out) const {
  json entered = json::object();
  for (const auto& [key, sequence] : entered_) entered[key] = sequence;
  return json{{"rank", settings_.world_rank},
              {"timed_out", timed_out},
              {"step", in_flight.step},
              {"phase", in_flight.phase},
              {"waiting",
               {{"group", in_flight.group->name},
                {"backend", in_flight.group->backend},
                {"ranks", in_flight.group->world_ranks},
                {"op", in_flight.op},
                {"sequence", in_flight.sequence},
                {"waited_s", seconds(Clock::now() - in_flight.start)}}},
              {"entered", entered}}
      .dump();
}

std::string host_of(const std::string& process) {
  const std::string machine = process.substr(0, process.find(' '));
  return machine.substr(0, machine.find('/'));
}

std::string peer_name(int rank, const std::vector<std::string>& processes) {
  std::string name = "rank " + std::to_string(rank);
  if (rank >= 0 && rank < static_cast<int>(processes.size())) {
    const std::string host = host_of(processes[static_cast<size_t>(rank)]);
    if (!host.empty()) name += " (" + host + ")";
  }
  return name;
}

std::vector<std::string> late_peers(const std::string& mine_text, const std::map<int, std::string>& answers,
                                    const std::vector<std::string>& processes) {
  const json mine = json::parse(mine_text);
  const json& waiting = mine.at("waiting");
  const std::string key = waiting.at("group").get<std::string>() + "/" +
                          waiting.at("backend").get<std::string>();
  const int64_t sequence = waiting.at("sequence").get<int64_t>();
  std::vector<std::string> lines;
  for (const auto& member : waiting.at("ranks")) {
    const int m = member.get<int>();
    if (m == mine.at("rank").get<int>()) continue;
    const auto it = answers.find(m);
    if (it == answers.end()) {
      lines.push_back(peer_name(m, processes) + ": no answer (stopped, dead, or busy outside communication)");
      continue;
    }
    const json other = json::parse(it->second);
    const json& entered = other.at("entered");
    if (entered.contains(key) && entered.at(key).get<int64_t>() >= sequence)
      continue;  // waits in this collective too
    lines.push_back(peer_name(m, processes) + ": has not reached it; it waits in " +
                    where(other.at("waiting"), other) + " since " +
                    fixed(other.at("waiting").at("waited_s").get<double>()) + " s");
  }
  return lines;
}

std::string this_process() {
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return std::string(host) + "/" + boot + " " + std::to_string(::getpid());
}

std::vector<int> silent_local_pids(int me, const std::vector<std::string>& processes,
                                   const std::map<int, std::string>& answers) {
  std::vector<int> pids;
  if (me < 0 || me >= static_cast<int>(processes.size())) return pids;
  auto split = [](const std::string& p) {
    std::istringstream in(p);
    std::string machine;
    int pid = -1;
    in >> machine >> pid;
    return std::make_pair(machine, pid);
  };
  const std::string mine = split(processes[static_cast<size_t>(me)]).first;
  for (int r = 0; r < static_cast<int>(processes.size()); ++r) {
    if (r == me || answers.count(r)) continue;
    const auto [machine, pid] = split(processes[static_cast<size_t>(r)]);
    if (machine == mine && pid > 0) pids.push_back(pid);
  }
  return pids;
}

namespace {

// The other ranks' reports (by rank; one that does not parse is dropped) and the first that timed out.
struct Answers {
  std::map<int, std::string> reports;
  int alarm_from = -1;  // the first rank whose report says it timed out; -1: none
  void take(int me, const std::vector<std::string>& texts) {
    for (const auto& text : texts) {
      try {
        const json r = json::parse(text);
        const int rank = r.at("rank").get<int>();
        if (rank == me) continue;
        reports[rank] = text;
        if (alarm_from < 0 && r.value("timed_out", false)) alarm_from = rank;
      } catch (const std::exception&) {
      }
    }
  }
};

// Gathers the others' reports for window_s seconds (some may already have come with the alarm: `early`).
Answers gather_answers(AlarmChannel* channel, int me, double window_s, const std::vector<std::string>& early) {
  Answers answers;
  answers.take(me, early);
  const auto window_end = Clock::now() + std::chrono::duration<double>(window_s);
  while (channel && Clock::now() < window_end) {
    try {
      answers.take(me, channel->receive());
    } catch (const std::exception&) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return answers;
}

// "moe-train: rank R: collective timed out after ..." or "...: stopping: rank A reported ...", then one
// line per peer this rank waits on (`mine`: this rank's report, Watchdog::report).
std::string expiry_text(const std::string& mine, bool timed_out, const WatchdogSettings& settings,
                        const Answers& answers, const std::vector<std::string>& processes) {
  const json m = json::parse(mine);
  const std::string where_i_wait = where(m.at("waiting"), m);
  const double waited_s = m.at("waiting").at("waited_s").get<double>();
  std::string text = "moe-train: rank " + std::to_string(settings.world_rank) + ": ";
  if (timed_out) {
    text += "collective timed out after " + fixed(waited_s) +
            " s (parallel.timeout_s = " + general(settings.timeout_s) + "): " + where_i_wait;
  } else {
    text += "stopping: " +
            (answers.alarm_from >= 0 ? peer_name(answers.alarm_from, processes) : std::string("another rank")) +
            " reported a collective timeout; this rank has waited " + fixed(waited_s) + " s in " + where_i_wait;
  }
  const auto late = late_peers(mine, answers.reports, processes);
  if (late.empty()) text += "\n  every member has entered it: the transport itself is stuck";
  for (const auto& line : late) text += "\n  waiting on " + line;
  return text;
}

// Writes RUN_DIR/flight_recorder/rank<N>.json (this rank's report, the others' and its last collectives);
// returns the line that says where, or why it was not written.
std::string write_flight_record(const WatchdogSettings& settings, const json& mine, const Answers& answers,
                                const FlightRecorder& recorder) {
  try {
    const auto dir = std::filesystem::path(settings.run_dir) / "flight_recorder";
    std::filesystem::create_directories(dir);
    const auto path = dir / ("rank" + std::to_string(settings.world_rank) + ".json");
    json record = {{"rank", settings.world_rank},
                   {"timeout_s", settings.timeout_s},
                   {"report", mine},
                   {"answers", json::object()},
                   {"collectives", recorder.to_json()}};
    for (const auto& [rank, answer] : answers.reports)
      record["answers"][std::to_string(rank)] = json::parse(answer);
    std::ofstream(path) << record.dump(1) << "\n";
    return "\n  the last " + std::to_string(recorder.records().size()) +
           " collectives of this rank: " + path.string();
  } catch (const std::exception& e) {
    return std::string("\n  (flight record not written: ") + e.what() + ")";
  }
}

// The end of an expiry: the text (and a newline) to stderr, then, after `linger_s` for the other ranks to print
// theirs, the process ends with kCollectiveTimeoutExitCode.
[[noreturn]] void print_and_exit(std::string text, double linger_s) {
  text += "\n";
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::duration<double>(linger_s));
  std::_Exit(kCollectiveTimeoutExitCode);
}

}  // namespace

void Watchdog::expire(const Wait::InFlight& in_flight, bool timed_out, std::vector<std::string> early_reports) {
  const int me = settings_.world_rank;
  const std::string mine = report(in_flight, timed_out);
  if (channel_) {
    try {
      channel_->raise(mine);
    } catch (const std::exception&) {
    }
  }
  const Answers answers = gather_answers(channel_.get(), me, settings_.report_window_s, early_reports);
  std::string text = expiry_text(mine, timed_out, settings_, answers, processes_);
  if (!settings_.run_dir.empty())
    text += write_flight_record(settings_, json::parse(mine), answers, recorder_);
  // The silent ranks of this machine are stopped or stuck: a stopped process ignores the launcher's SIGTERM
  // (torchrun's agent would wait 30 s for it), so end them now. The job is ending; checkpoints are atomic.
  if (settings_.kill_silent_local_ranks) {
    for (const int pid : silent_local_pids(me, processes_, answers.reports)) {
      if (::kill(pid, SIGKILL) == 0) {
        text += "\n  killed process " + std::to_string(pid) + " of this machine, a rank that sent no report";
      }
    }
  }
  print_and_exit(text, settings_.linger_s);
}

void Watchdog::expire_detached(const std::string& what) {
  std::string text = "moe-train: rank " + std::to_string(settings_.world_rank) + ": " + what;
  if (!settings_.run_dir.empty()) {
    const json mine = {{"rank", settings_.world_rank}, {"timed_out", true}, {"detached", what}};
    text += write_flight_record(settings_, mine, Answers{}, recorder_);
  }
  print_and_exit(text, settings_.linger_s);
}

}  // namespace moetrain::parallel
