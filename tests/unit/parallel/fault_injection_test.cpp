#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>

#include "csrc/util/fault_injection.h"
#include "csrc/util/run_position.h"

namespace moetrain::util {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_fault_spec(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(FaultSpec, ParsesEveryPoint) {
  for (auto p : {FaultPoint::kAllToAll, FaultPoint::kGradSync, FaultPoint::kOptimizerStep,
                 FaultPoint::kCheckpointWrite, FaultPoint::kEvaluation, FaultPoint::kDataRead}) {
    const FaultSpec s = parse_fault_spec(std::string(fault_point_name(p)) + ":3:12");
    EXPECT_EQ(s.point, p);
    EXPECT_EQ(s.rank, 3);
    EXPECT_EQ(s.step, 12);
    EXPECT_FALSE(s.stop);
  }
  const FaultSpec s = parse_fault_spec("all_to_all:1:25:stop");
  EXPECT_EQ(s.point, FaultPoint::kAllToAll);
  EXPECT_EQ(s.rank, 1);
  EXPECT_EQ(s.step, 25);
  EXPECT_TRUE(s.stop);
}

TEST(FaultSpec, BadValuesNameTheVariableTheValueAndTheForm) {
  const std::string form =
      "expected POINT:RANK:STEP or POINT:RANK:STEP:stop with POINT one of all_to_all, grad_sync, optimizer_step, "
      "checkpoint_write, evaluation, data_read (docs/reliability.md), e.g. MOETRAIN_FAULT=all_to_all:1:3";
  const std::string fields = "not three fields (or four, the last \"stop\"); ";
  EXPECT_EQ(error_of("all_to_all:1"), "MOETRAIN_FAULT=\"all_to_all:1\": " + fields + form);
  EXPECT_EQ(error_of("kill:1:3"), "MOETRAIN_FAULT=\"kill:1:3\": unknown point \"kill\"; " + form);
  EXPECT_EQ(error_of("grad_sync:x:3"),
            "MOETRAIN_FAULT=\"grad_sync:x:3\": rank \"x\" is not a non-negative integer; " + form);
  EXPECT_EQ(error_of("grad_sync:1:-2"),
            "MOETRAIN_FAULT=\"grad_sync:1:-2\": step \"-2\" is not a non-negative integer; " + form);
  EXPECT_EQ(error_of("grad_sync:1:3:4"),
            "MOETRAIN_FAULT=\"grad_sync:1:3:4\": fourth field \"4\" is not \"stop\"; " + form);
  EXPECT_EQ(error_of("grad_sync:1:3:stop:5"), "MOETRAIN_FAULT=\"grad_sync:1:3:stop:5\": " + fields + form);
  EXPECT_EQ(error_of("checkpoint_write:1:3:stop"),
            "MOETRAIN_FAULT=\"checkpoint_write:1:3:stop\": checkpoint_write cannot stop, only kill; " + form);
}

// The armed fault fires only at its point, on its rank, at its step.
TEST(FaultSpec, DueOnlyAtItsPointRankAndStep) {
  ::setenv("MOETRAIN_FAULT", "grad_sync:1:3", 1);
  ::unsetenv("TORCHELASTIC_RESTART_COUNT");
  set_run_rank(1);
  set_run_step(3, "training");
  EXPECT_TRUE(fault_due(FaultPoint::kGradSync));
  EXPECT_FALSE(fault_due(FaultPoint::kAllToAll));
  set_run_step(4, "training");
  EXPECT_FALSE(fault_due(FaultPoint::kGradSync));
  set_run_rank(0);
  set_run_step(3, "training");
  EXPECT_FALSE(fault_due(FaultPoint::kGradSync));
}

}  // namespace
}  // namespace moetrain::util
