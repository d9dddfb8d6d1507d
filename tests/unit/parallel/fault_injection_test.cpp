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
  }
}

TEST(FaultSpec, BadValuesNameTheVariableTheValueAndTheForm) {
  const std::string form =
      "expected POINT:RANK:STEP with POINT one of all_to_all, grad_sync, optimizer_step, "
      "checkpoint_write, evaluation, data_read (docs/reliability.md), e.g. MOETRAIN_FAULT=all_to_all:1:3";
  EXPECT_EQ(error_of("all_to_all:1"), "MOETRAIN_FAULT=\"all_to_all:1\": not three fields; " + form);
  EXPECT_EQ(error_of("kill:1:3"), "MOETRAIN_FAULT=\"kill:1:3\": unknown point \"kill\"; " + form);
  EXPECT_EQ(error_of("grad_sync:x:3"),
            "MOETRAIN_FAULT=\"grad_sync:x:3\": rank \"x\" is not a non-negative integer; " + form);
  EXPECT_EQ(error_of("grad_sync:1:-2"),
            "MOETRAIN_FAULT=\"grad_sync:1:-2\": step \"-2\" is not a non-negative integer; " + form);
  EXPECT_EQ(error_of("grad_sync:1:3:4"), "MOETRAIN_FAULT=\"grad_sync:1:3:4\": not three fields; " + form);
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
