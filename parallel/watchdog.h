// The collective watchdog (docs/reliability.md): no rank waits forever for a peer that stopped.
//
// Every communicator announces each collective it enters (group, operation, sequence number in the group,
// bytes) and, while it waits for the peers, calls Wait::tick(). The watchdog keeps the last 64 in a
// FlightRecorder. When one wait passes parallel.timeout_s, this rank raises the alarm: it sends its
// report (which collective it waits in, and how many collectives it entered in each of its groups) to
// every other rank over the backend's AlarmChannel. A rank that sees the alarm while it waits does the
// same. Each rank then gathers the reports for a few seconds, prints which group, operation, step and
// peer(s) it waits on, each with its host (a peer that sent no report is stopped, dead or busy outside
// communication; one that reported fewer collectives in the group has not reached this one), writes its
// flight record to RUN_DIR/flight_recorder/rank<N>.json, and exits with kCollectiveTimeoutExitCode. The
// launcher (mpirun, torchrun) then ends the job. Under torchrun it first kills (SIGKILL) the ranks of its
// own machine that sent no report: a stopped process ignores the agent's SIGTERM, and the agent waits 30 s
// before SIGKILL (mpirun kills the other ranks at once, and reports the first exit code: 124 stays the
// job's).
//
// All calls come from the thread that runs the collectives (the only one that communicates), except the
// end of a Wait and expire_detached, which the device-side monitor's thread may call (parallel/work_monitor.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parallel/flight_recorder.h"

namespace moetrain::parallel {

inline constexpr int kCollectiveTimeoutExitCode = 124;

// What a communicator tells the watchdog about its group. `world_ranks`: the members by group rank.
struct GroupIdentity {
  std::string name;     // "world", "dp", "ep", "expert_dp", "tp"
  std::string backend;  // "mpi", "store", "nccl"
  std::vector<int> world_ranks;
  std::string key() const { return name + "/" + backend; }  // the same on every member of the group
  std::string describe() const;                             // "ep (mpi, world ranks 0 1)"
};

// How reports travel between ranks once the alarm is raised. Neither call may wait on another rank.
class AlarmChannel {
 public:
  virtual ~AlarmChannel() = default;
  virtual void raise(const std::string& report) = 0;  // to every other rank of the world
  virtual std::vector<std::string> receive() = 0;     // the reports that arrived since the last call
};

struct WatchdogSettings {
  double timeout_s = 0;  // parallel.timeout_s; 0: no deadline (the flight recorder still records)
  std::string run_dir;   // the flight record goes to run_dir/flight_recorder/ (none when empty)
  int world_rank = 0;
  double report_window_s = 3;  // after the alarm: how long a rank gathers the others' reports
  double linger_s = 2;         // after printing: how long before exiting (the others print meanwhile)
  bool kill_silent_local_ranks = false;  // on expiry, SIGKILL this machine's ranks that sent no report (torchrun)
};

class Watchdog {
 public:
  // One collective in flight, from enter() to its destruction. tick() while waiting for the peers: it
  // returns when there is nothing to report, and ends the process when the wait has timed out or
  // another rank raised the alarm.
  class Wait {
   public:
    Wait(Wait&& other) noexcept;
    Wait(const Wait&) = delete;
    Wait& operator=(const Wait&) = delete;
    Wait& operator=(Wait&&) = delete;
    ~Wait();
    void tick();
    double waited_s() const;
    // For a collective left running on a device stream (NCCL): its end is tallied as time in flight
    // ("OP/on_stream", overlapped), not as a host wait; the communicator tallies its host time itself.
    void mark_on_stream() { in_flight_.on_stream = true; }
    // For a collective that failed: ends nothing (its flight record stays in flight, nothing is tallied).
    void abandon() { owner_ = nullptr; }

   private:
    friend class Watchdog;
    struct InFlight {
      const GroupIdentity* group = nullptr;
      const char* op = "";
      int64_t sequence = 0, record = 0, step = 0, bytes = 0;
      const char* phase = "";
      bool on_stream = false;
      std::chrono::steady_clock::time_point start;
    };
    Wait(Watchdog* owner, InFlight in_flight);
    Watchdog* owner_;
    InFlight in_flight_;
  };

  void configure(const WatchdogSettings& settings);
  // Which process each world rank is (this_process() of every rank, by world rank), gathered once the
  // world exists: on expiry the silent ranks of this machine are killed.
  void set_world_processes(std::vector<std::string> processes) { processes_ = std::move(processes); }
  const WatchdogSettings& settings() const { return settings_; }
  void set_alarm_channel(std::shared_ptr<AlarmChannel> channel) { channel_ = std::move(channel); }

  // `group` must outlive the returned Wait (communicators pass their own member).
  Wait enter(const GroupIdentity& group, int64_t sequence, const char* op, int64_t bytes);

  const FlightRecorder& recorder() const { return recorder_; }

  // For the device-side monitor (parallel/work_monitor.h), from its own thread: prints "moe-train: rank R:
  // WHAT", writes this rank's flight record (without the other ranks' reports: the alarm channel belongs
  // to the communicating thread) and ends the process with kCollectiveTimeoutExitCode.
  [[noreturn]] void expire_detached(const std::string& what);

 private:
  void tick(const Wait::InFlight& in_flight);
  [[noreturn]] void expire(const Wait::InFlight& in_flight, bool timed_out,
                           std::vector<std::string> early_reports);
  std::string report(const Wait::InFlight& in_flight, bool timed_out) const;

  WatchdogSettings settings_;
  std::shared_ptr<AlarmChannel> channel_;
  FlightRecorder recorder_;
  std::map<std::string, int64_t> entered_;  // group key → sequence of the last collective entered
  std::vector<std::string> processes_;      // this_process() by world rank; empty: unknown
  std::chrono::steady_clock::time_point last_probe_;
};

// The process's watchdog.
Watchdog& watchdog();

// This process, as "MACHINE PID": MACHINE is the host name and the kernel's boot id, so that two hosts (or
// containers) with one name are not taken for one machine.
std::string this_process();

// Pure, for expire() and its tests: the PIDs of the world ranks other than `me` that run on `me`'s machine
// (`processes`: this_process() by world rank) and gave no report (`answers`, by world rank).
std::vector<int> silent_local_pids(int me, const std::vector<std::string>& processes,
                                   const std::map<int, std::string>& answers);

// The host name of a this_process() text ("node1/BOOT_ID PID" -> "node1").
std::string host_of(const std::string& process);

// "rank R (HOST)": how the report names a peer (`processes`: this_process() by world rank); "rank R" when
// its process is unknown (one process, or before the world was gathered).
std::string peer_name(int rank, const std::vector<std::string>& processes);

// Pure, for the report and its tests: the lines naming the peers of `mine`'s collective that have not
// reached it, each with its host (`processes`, as for peer_name), given the other ranks' reports (JSON
// texts of Watchdog reports, by rank).
std::vector<std::string> late_peers(const std::string& mine, const std::map<int, std::string>& answers,
                                    const std::vector<std::string>& processes = {});

}  // namespace moetrain::parallel
