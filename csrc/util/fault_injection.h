// Fault injection for the reliability tests (docs/reliability.md). MOETRAIN_FAULT=POINT:RANK:STEP makes
// world rank RANK kill itself with SIGKILL when it reaches POINT during step STEP (run_position.h: the
// step being trained, or the step just completed for an evaluation or a checkpoint). Points:
//
//   all_to_all        the expert all-to-all of the forward pass (parallel/alltoall_dispatcher.cpp)
//   grad_sync         the gradient reduction over the data-parallel groups (parallel/grad_sync.cpp)
//   optimizer_step    between the gradient reduction and AdamW's update (trainer/trainer.cpp)
//   checkpoint_write  halfway through writing this rank's checkpoint file (trainer/checkpoint.cpp)
//   evaluation        in the validation pass (trainer/evaluator.cpp)
//   data_read         while reading a training batch (trainer/data_feed.cpp)
//
// POINT:RANK:STEP:stop makes the rank stop itself (SIGSTOP) there instead, as a frozen node would: its
// peers wait for it inside the same collective until it is continued (SIGCONT: it goes on where it was)
// or killed (the lost-node test kills its whole node then). Not at checkpoint_write, which kills halfway
// through its own work.
//
// The fault fires once per process and only in a first launch: under torchrun, not in a restarted
// group (TORCHELASTIC_RESTART_COUNT > 0), so that the restarted group can resume past it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace moetrain::util {

enum class FaultPoint { kAllToAll, kGradSync, kOptimizerStep, kCheckpointWrite, kEvaluation, kDataRead };

const char* fault_point_name(FaultPoint point);

struct FaultSpec {
  FaultPoint point;
  int rank;
  int64_t step;
  bool stop = false;  // ":stop": SIGSTOP instead of SIGKILL
};

// Parses a MOETRAIN_FAULT value; throws std::invalid_argument naming the variable, the value and the
// expected form.
FaultSpec parse_fault_spec(const std::string& text);

// The fault armed in this process (MOETRAIN_FAULT, parsed once; a bad value throws), or none.
std::optional<FaultSpec> armed_fault();

// Whether the armed fault names `point`, this rank and the current step (run_position()).
bool fault_due(FaultPoint point);

// SIGKILLs (or, with ":stop", SIGSTOPs) this process, after one line on stderr, when fault_due(point).
void inject_fault(FaultPoint point);

// Prints the line and SIGKILLs this process (for points that first do part of their work).
[[noreturn]] void kill_for_fault(FaultPoint point);

}  // namespace moetrain::util
