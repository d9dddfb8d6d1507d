// parallel::WorkMonitor, the thread that watches collectives left running on a device stream (NCCL), driven
// here with flags in place of CUDA events and NCCL's error state: what it releases when a work ends, what it
// aborts and reports when one fails or passes its deadline, and the process exit of the default handler.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "csrc/util/run_position.h"
#include "parallel/comm_clock.h"
#include "parallel/work_monitor.h"

namespace moetrain::parallel {
namespace {

using namespace std::chrono_literals;

// A fake transport: done/error/abort read and write these flags.
struct FakeTransport {
  std::atomic<bool> done{false}, aborted{false};
  std::atomic<int> aborts{0};
  std::string error;  // set before the work is added
  PendingWork work(const void* owner, const char* op, int64_t sequence) {
    PendingWork w;
    w.owner = owner;
    w.group = "dp";
    w.op = op;
    w.sequence = sequence;
    w.step = 3;
    w.done = [this] { return done.load(); };
    w.error = [this] { return error; };
    w.abort = [this] {
      aborted = true;
      ++aborts;
    };
    return w;
  }
};

bool eventually(const std::function<bool()>& condition) {
  for (int i = 0; i < 4000 && !condition(); ++i) std::this_thread::sleep_for(1ms);
  return condition();
}

TEST(WorkMonitor, AFinishedWorkReleasesItsTensorsAndTalliesItsTimeInFlight) {
  std::vector<WorkFailure> failures;
  WorkMonitor monitor(/*timeout_s=*/0, [&](const WorkFailure& f) { failures.push_back(f); }, 100us);
  FakeTransport transport;
  auto buffer = torch::zeros({4});
  Watchdog dog;
  const GroupIdentity group{"dp", "nccl", {0, 1}};
  comm_clock().take();
  auto w = transport.work(&transport, "all_reduce_sum_async", 1);
  w.keep_alive = {buffer};
  auto wait = dog.enter(group, 1, "all_reduce_sum_async", 16);
  wait.mark_on_stream();
  w.wait.emplace(std::move(wait));
  monitor.add(std::move(w));
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(monitor.pending(), 1u);
  EXPECT_EQ(buffer.use_count(), 2) << "held while the device may still write it";
  transport.done = true;
  ASSERT_TRUE(eventually([&] { return monitor.pending() == 0; }));
  EXPECT_TRUE(eventually([&] { return buffer.use_count() == 1; })) << "released once done";
  EXPECT_TRUE(monitor.drain(&transport));
  EXPECT_FALSE(monitor.failure_of(&transport));
  EXPECT_TRUE(failures.empty());
  EXPECT_FALSE(transport.aborted);
  const auto tallies = comm_clock().take();
  ASSERT_EQ(tallies.size(), 1u);
  EXPECT_EQ(tallies[0].op, "all_reduce_sum_async/on_stream");
  EXPECT_TRUE(tallies[0].overlapped) << "time on the stream is not a host wait";
  EXPECT_GT(dog.recorder().records().at(0).end_s, 0) << "the flight record marks its end";
}

TEST(WorkMonitor, APassedDeadlineAbortsEveryTransportAndReportsTheCollective) {
  std::vector<WorkFailure> failures;
  std::mutex m;
  WorkMonitor monitor(
      /*timeout_s=*/0.05,
      [&](const WorkFailure& f) {
    std::lock_guard<std::mutex> lock(m);
    failures.push_back(f);
      },
      100us);
  FakeTransport stuck, other;
  monitor.add(stuck.work(&stuck, "all_to_all_v", 41));
  monitor.add(other.work(&other, "all_reduce_sum_async", 7));
  ASSERT_TRUE(eventually([&] { return monitor.pending() == 0; }));
  EXPECT_TRUE(stuck.aborted);
  EXPECT_TRUE(other.aborted) << "kernels behind a lost peer must return on every communicator";
  std::lock_guard<std::mutex> lock(m);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].kind, WorkFailure::Kind::kTimeout);
  EXPECT_EQ(failures[0].describe().rfind("all_to_all_v in group dp, collective #41 of the group, at step 3: no "
                                         "completion after 0.",
                                         0),
            0u)
      << failures[0].describe();
  EXPECT_FALSE(monitor.drain(&stuck)) << "the owner learns its work did not complete";
  ASSERT_TRUE(monitor.failure_of(&other));
  EXPECT_EQ(monitor.failure_of(&other)->op, "all_to_all_v");
}

TEST(WorkMonitor, AnAsynchronousErrorIsKeptForItsOwnerWithTheTransportsMessage) {
  std::atomic<int> calls{0};
  WorkMonitor monitor(
      /*timeout_s=*/0,
      [&](const WorkFailure& f) {
    EXPECT_EQ(f.kind, WorkFailure::Kind::kError);
    ++calls;
      },
      100us);
  FakeTransport broken;
  broken.error = "NCCL error: remote process exited or there was a network error";
  monitor.add(broken.work(&broken, "all_reduce_sum_async", 2));
  ASSERT_TRUE(eventually([&] { return monitor.failure_of(&broken).has_value(); }));
  EXPECT_NE(monitor.failure_of(&broken)->describe().find("remote process exited"), std::string::npos);
  EXPECT_TRUE(eventually([&] { return calls.load() == 1; }));
  EXPECT_EQ(broken.aborts.load(), 1);
}

TEST(WorkMonitor, DrainWaitsForItsOwnersWorksOnly) {
  WorkMonitor monitor(/*timeout_s=*/0, [](const WorkFailure&) {}, 100us);
  FakeTransport mine, theirs;
  monitor.add(mine.work(&mine, "broadcast", 1));
  monitor.add(theirs.work(&theirs, "broadcast", 1));
  std::thread finisher([&] {
    std::this_thread::sleep_for(20ms);
    mine.done = true;
  });
  EXPECT_TRUE(monitor.drain(&mine));
  EXPECT_TRUE(mine.done);
  EXPECT_EQ(monitor.pending(), 1u) << "the other communicator's work is still in flight";
  finisher.join();
  theirs.done = true;
  EXPECT_TRUE(monitor.drain(&theirs));
}

// std::remove, not std::filesystem::remove_all: libtorch exports a filesystem of another ABI.
void remove_flight_record(const std::filesystem::path& run_dir) {
  for (const auto& p : {run_dir / "flight_recorder" / "rank2.json", run_dir / "flight_recorder", run_dir})
    std::remove(p.c_str());
}

// The default handler ends the process as the watchdog does: exit code 124, the collective named, this
// rank's flight record written.
TEST(WorkMonitorDeathTest, ByDefaultATimeoutEndsTheProcessWithTheWatchdogsExitCodeAndFlightRecord) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto run_dir = std::filesystem::temp_directory_path() / "moetrain_work_monitor_test";
  remove_flight_record(run_dir);
  auto time_out = [&] {
    WatchdogSettings settings;
    settings.timeout_s = 0.1;
    settings.run_dir = run_dir.string();
    settings.world_rank = 2;
    settings.linger_s = 0;
    watchdog().configure(settings);
    util::set_run_step(5, "training");
    const GroupIdentity group{"ep", "nccl", {2, 3}};
    FakeTransport stuck;
    auto w = stuck.work(&stuck, "all_to_all_v", 9);
    w.wait.emplace(watchdog().enter(group, 9, "all_to_all_v", 64));
    WorkMonitor monitor(settings.timeout_s);
    monitor.add(std::move(w));
    std::this_thread::sleep_for(10s);
  };
  EXPECT_EXIT(time_out(), ::testing::ExitedWithCode(kCollectiveTimeoutExitCode),
              "moe-train: rank 2: collective on the device timed out: all_to_all_v in group dp, collective #9 of "
              "the group, at step 3: no completion after 0\\.1 s \\(parallel\\.timeout_s = 0\\.1\\)");
  std::ifstream in(run_dir / "flight_recorder" / "rank2.json");
  ASSERT_TRUE(in.good()) << "flight record written";
  const auto record = nlohmann::json::parse(in);
  EXPECT_EQ(record["collectives"].back()["op"], "all_to_all_v");
  EXPECT_TRUE(record["collectives"].back()["end_s"].is_null()) << "still in flight when the process ended";
  remove_flight_record(run_dir);
}

}  // namespace
}  // namespace moetrain::parallel
