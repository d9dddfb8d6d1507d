// parallel::CommClock: tallies by group and operation, in order of first use, emptied by take().
#include <gtest/gtest.h>

#include "parallel/comm_clock.h"

namespace moetrain::parallel {
namespace {

TEST(CommClock, TalliesByGroupAndOperationUntilTaken) {
  CommClock clock;
  clock.add("ep", "all_to_all_v", 0.5, 100);
  clock.add("dp", "all_reduce_sum", 0.25, 40);
  clock.add("ep", "all_to_all_v", 0.125, 60);
  clock.add("ep", "all_reduce_sum", 0.0, 8);
  const auto tallies = clock.take();
  ASSERT_EQ(tallies.size(), 3u);
  EXPECT_EQ(tallies[0].group, "ep");
  EXPECT_EQ(tallies[0].op, "all_to_all_v");
  EXPECT_EQ(tallies[0].calls, 2);
  EXPECT_DOUBLE_EQ(tallies[0].seconds, 0.625);
  EXPECT_EQ(tallies[0].bytes, 160);
  EXPECT_EQ(tallies[1].group, "dp");
  EXPECT_EQ(tallies[2].op, "all_reduce_sum");
  EXPECT_TRUE(clock.take().empty());
  EXPECT_FALSE(tallies[0].overlapped);
  clock.add("dp", "all_reduce_sum_async", 0.5, 64);
  clock.add("dp", "all_reduce_sum_async/wait", 0.125, 0);
  const auto async = clock.take();
  ASSERT_EQ(async.size(), 2u);
  EXPECT_TRUE(async[0].overlapped);   // in flight, beside other work
  EXPECT_FALSE(async[1].overlapped);  // the host waited
  EXPECT_EQ(async[0].host_waits, 0);
  EXPECT_EQ(async[1].host_waits, 1);
}

// A host backend's collective is one host wait per call; a stream-ordered enqueue (NCCL) and its time on
// the stream are none.
TEST(CommClock, CountsTheCallsThatHeldTheHost) {
  CommClock clock;
  clock.add("ep", "all_to_all_v", 0.5, 100);
  clock.add("ep", "all_to_all_v", 0.5, 100);
  clock.add("tp", "all_reduce_sum", 1e-5, 64, /*host_waits=*/0);
  clock.add("tp", "all_reduce_sum/on_stream", 0.25, 0);
  const auto tallies = clock.take();
  ASSERT_EQ(tallies.size(), 3u);
  EXPECT_EQ(tallies[0].host_waits, 2);
  EXPECT_EQ(tallies[1].host_waits, 0);
  EXPECT_FALSE(tallies[1].overlapped);  // the enqueue is host time, though not a wait
  EXPECT_EQ(tallies[2].host_waits, 0);
  EXPECT_TRUE(tallies[2].overlapped);
}

}  // namespace
}  // namespace moetrain::parallel
