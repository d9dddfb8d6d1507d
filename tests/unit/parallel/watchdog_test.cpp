#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "csrc/util/run_position.h"
#include "parallel/watchdog.h"

namespace moetrain::parallel {
namespace {

using nlohmann::json;

CollectiveRecord record(int64_t sequence) {
  CollectiveRecord r;
  r.sequence = sequence;
  r.group = "ep";
  r.backend = "mpi";
  r.op = "all_to_all_v";
  r.start_s = static_cast<double>(sequence);
  return r;
}

TEST(FlightRecorder, KeepsTheLastCapacityCollectivesOldestFirst) {
  FlightRecorder recorder(4);
  std::vector<int64_t> numbers;
  for (int64_t s = 0; s < 6; ++s) numbers.push_back(recorder.begin(record(s)));
  recorder.finish(numbers[5], 99.0);
  recorder.finish(numbers[0], 42.0);  // overwritten: ignored
  const auto kept = recorder.records();
  ASSERT_EQ(kept.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(kept[i].sequence, static_cast<int64_t>(i) + 2);
  EXPECT_EQ(kept[3].end_s, 99.0);
  EXPECT_LT(kept[0].end_s, 0);  // still in flight
  const json j = recorder.to_json();
  ASSERT_EQ(j.size(), 4u);
  EXPECT_TRUE(j[0]["end_s"].is_null());
  EXPECT_EQ(j[3]["end_s"], 99.0);
  EXPECT_EQ(j[3]["op"], "all_to_all_v");
}

std::string report(int rank, const std::string& group, std::vector<int> ranks, const std::string& op,
                   int64_t sequence, json entered) {
  return json{{"rank", rank},
              {"timed_out", false},
              {"step", 3},
              {"phase", "training"},
              {"waiting",
               {{"group", group},
                {"backend", "mpi"},
                {"ranks", ranks},
                {"op", op},
                {"sequence", sequence},
                {"waited_s", 4.0}}},
              {"entered", entered}}
      .dump();
}

TEST(WatchdogReport, NamesPeersThatDidNotAnswerOrHaveNotReachedTheCollective) {
  // Rank 0 waits in ep collective #41 with ranks 0, 1, 2; ranks 0 and 2 run on node0, rank 1 on node1.
  const std::vector<std::string> processes{"node0/boot-a 100", "node1/boot-b 200", "node0/boot-a 101"};
  const std::string mine = report(0, "ep", {0, 1, 2}, "all_to_all_v", 41, {{"ep/mpi", 41}});
  // Rank 1 did not answer; rank 2 is in the same collective: only rank 1 is late, named with its host.
  auto late = late_peers(mine, {{2, report(2, "ep", {0, 1, 2}, "all_to_all_v", 41, {{"ep/mpi", 41}})}},
                         processes);
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0], "rank 1 (node1): no answer (stopped, dead, or busy outside communication)");
  // Processes unknown: the rank alone.
  late = late_peers(mine, {{2, report(2, "ep", {0, 1, 2}, "all_to_all_v", 41, {{"ep/mpi", 41}})}});
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0], "rank 1: no answer (stopped, dead, or busy outside communication)");
  // Rank 2 entered only 40 ep collectives and waits in a dp all-reduce: it is late too, and says where it is.
  late = late_peers(mine,
                    {{1, report(1, "ep", {0, 1, 2}, "all_to_all_v", 41, {{"ep/mpi", 41}})},
                     {2, report(2, "dp", {2, 3}, "all_reduce_sum", 7, {{"ep/mpi", 40}, {"dp/mpi", 7}})}},
                    processes);
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0],
            "rank 2 (node0): has not reached it; it waits in all_reduce_sum in group dp (mpi, world ranks 2 3), "
            "collective #7 of the group, at step 3 (training) since 4.0 s");
  // Everyone arrived: nobody to name.
  EXPECT_TRUE(late_peers(mine, {{1, report(1, "ep", {0, 1, 2}, "all_to_all_v", 41, {{"ep/mpi", 41}})},
                                {2, report(2, "ep", {0, 1, 2}, "all_to_all_v", 41, {{"ep/mpi", 41}})}})
                  .empty());
}

TEST(WatchdogReport, NamesAPeerWithTheHostOfItsProcess) {
  const std::vector<std::string> processes{"node0/boot-a 100", "gpu-07.cluster/boot-b 200", ""};
  EXPECT_EQ(host_of("node1/0f3c 4242"), "node1");
  EXPECT_EQ(peer_name(0, processes), "rank 0 (node0)");
  EXPECT_EQ(peer_name(1, processes), "rank 1 (gpu-07.cluster)");
  EXPECT_EQ(peer_name(2, processes), "rank 2");  // no host known
  EXPECT_EQ(peer_name(3, processes), "rank 3");  // beyond the processes gathered
  EXPECT_EQ(peer_name(1, {}), "rank 1");         // one process: none gathered
}

TEST(Watchdog, RecordsEachCollectiveWithTheStepItBeganIn) {
  Watchdog dog;
  GroupIdentity group{"tp", "store", {0, 1}};
  util::set_run_step(5, "evaluation");
  { auto wait = dog.enter(group, 12, "all_gather_rows", 256); }
  const auto kept = dog.recorder().records();
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].sequence, 12);
  EXPECT_EQ(kept[0].group, "tp");
  EXPECT_EQ(kept[0].backend, "store");
  EXPECT_EQ(kept[0].bytes, 256);
  EXPECT_EQ(kept[0].step, 5);
  EXPECT_EQ(kept[0].phase, "evaluation");
  EXPECT_GE(kept[0].end_s, kept[0].start_s);
}

// The flight record's file and folders (libtorch's std::filesystem::remove_all crashes on a non-empty
// directory: Note [remove_tree] in trainer/checkpoint.cpp).
void remove_flight_record(const std::filesystem::path& run_dir) {
  for (const auto& p : {run_dir / "flight_recorder" / "rank0.json", run_dir / "flight_recorder", run_dir})
    std::remove(p.c_str());
}

// Past the deadline, tick() prints the report, writes the flight record and exits with code 124.
TEST(WatchdogDeathTest, TimeoutReportsTheCollectiveAndExits) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // A fixed path: the death test's child re-runs this test in a new process (another pid).
  const auto run_dir = std::filesystem::temp_directory_path() / "moetrain_watchdog_test";
  remove_flight_record(run_dir);
  auto wait_forever = [&] {
    Watchdog dog;
    WatchdogSettings settings;
    settings.timeout_s = 0.2;
    settings.run_dir = run_dir.string();
    settings.world_rank = 0;
    settings.report_window_s = 0;
    settings.linger_s = 0;
    dog.configure(settings);
    GroupIdentity group{"ep", "mpi", {0, 1}};
    util::set_run_step(7, "training");
    { auto done = dog.enter(group, 0, "all_reduce_sum", 8); }
    auto wait = dog.enter(group, 1, "all_to_all_v", 64);
    while (true) wait.tick();
  };
  EXPECT_EXIT(
      wait_forever(), ::testing::ExitedWithCode(kCollectiveTimeoutExitCode),
      "rank 0: collective timed out after 0\\.2 s \\(parallel\\.timeout_s = 0\\.2\\): all_to_all_v in group ep \\(mpi, "
      "world ranks 0 1\\), collective #1 of the group, at step 7 \\(training\\)\n  waiting on rank 1: no answer");
  std::ifstream in(run_dir / "flight_recorder" / "rank0.json");
  ASSERT_TRUE(in.good()) << "flight record written";
  const json record = json::parse(in);
  ASSERT_EQ(record["collectives"].size(), 2u);
  EXPECT_EQ(record["collectives"][0]["op"], "all_reduce_sum");
  EXPECT_FALSE(record["collectives"][0]["end_s"].is_null());
  EXPECT_EQ(record["collectives"][1]["op"], "all_to_all_v");
  EXPECT_TRUE(record["collectives"][1]["end_s"].is_null());
  EXPECT_EQ(record["report"]["waiting"]["sequence"], 1);
  remove_flight_record(run_dir);
}

}  // namespace
}  // namespace moetrain::parallel

// On expiry a rank kills the ranks of its own machine that sent no report, and only those: not itself,
// not a rank that answered, not a rank of another machine (same host name, another boot id included).
TEST(Watchdog, SilentRanksOfThisMachineAreTheOnesKilled) {
  const std::vector<std::string> processes{"node1/boot-a 100", "node1/boot-a 101", "node1/boot-a 102",
                                           "node2/boot-b 100", "node1/boot-c 103"};
  const std::string answer = "{}";
  EXPECT_EQ(moetrain::parallel::silent_local_pids(0, processes, {{2, answer}}), std::vector<int>{101});
  EXPECT_EQ(moetrain::parallel::silent_local_pids(0, processes, {}), (std::vector<int>{101, 102}));
  EXPECT_EQ(moetrain::parallel::silent_local_pids(3, processes, {}), std::vector<int>{});  // alone on node2
  EXPECT_EQ(moetrain::parallel::silent_local_pids(0, {}, {}),
            std::vector<int>{});  // processes unknown (one process)
  const std::string me = moetrain::parallel::this_process();
  EXPECT_NE(me.find(' '), std::string::npos);
  EXPECT_EQ(me.substr(me.rfind(' ') + 1), std::to_string(::getpid()));
}
