#include "csrc/util/fault_injection.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "csrc/util/run_position.h"

namespace moetrain::util {
namespace {

constexpr FaultPoint kPoints[] = {FaultPoint::kAllToAll,      FaultPoint::kGradSync,
                                  FaultPoint::kOptimizerStep, FaultPoint::kCheckpointWrite,
                                  FaultPoint::kEvaluation,    FaultPoint::kDataRead};

std::string point_list() {
  std::string out;
  for (FaultPoint p : kPoints) out += (out.empty() ? "" : ", ") + std::string(fault_point_name(p));
  return out;
}

bool first_launch() {
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  return !restarts || std::strcmp(restarts, "0") == 0;
}

}  // namespace

const char* fault_point_name(FaultPoint point) {
  switch (point) {
    case FaultPoint::kAllToAll: return "all_to_all";
    case FaultPoint::kGradSync: return "grad_sync";
    case FaultPoint::kOptimizerStep: return "optimizer_step";
    case FaultPoint::kCheckpointWrite: return "checkpoint_write";
    case FaultPoint::kEvaluation: return "evaluation";
    case FaultPoint::kDataRead: return "data_read";
  }
  return "?";
}

FaultSpec parse_fault_spec(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("MOETRAIN_FAULT=\"" + text + "\": " + why +
                                 "; expected POINT:RANK:STEP or POINT:RANK:STEP:stop with POINT one of " +
                                 point_list() + " (docs/reliability.md), e.g. MOETRAIN_FAULT=all_to_all:1:3");
  };
  const size_t a = text.find(':'), b = a == std::string::npos ? a : text.find(':', a + 1);
  const size_t c = b == std::string::npos ? b : text.find(':', b + 1);
  if (b == std::string::npos || (c != std::string::npos && text.find(':', c + 1) != std::string::npos))
    throw bad("not three fields (or four, the last \"stop\")");
  const std::string name = text.substr(0, a), rank = text.substr(a + 1, b - a - 1),
                    step = text.substr(b + 1, c == std::string::npos ? c : c - b - 1),
                    action = c == std::string::npos ? "" : text.substr(c + 1);
  FaultSpec spec{};
  bool known = false;
  for (FaultPoint p : kPoints) {
    if (name == fault_point_name(p)) spec.point = p, known = true;
  }
  if (!known) throw bad("unknown point \"" + name + "\"");
  auto number = [&](const std::string& field, const char* what) {
    char* end = nullptr;
    const long long v = std::strtoll(field.c_str(), &end, 10);
    if (field.empty() || *end != '\0' || v < 0)
      throw bad(std::string(what) + " \"" + field + "\" is not a non-negative integer");
    return v;
  };
  spec.rank = static_cast<int>(number(rank, "rank"));
  spec.step = number(step, "step");
  if (c != std::string::npos) {
    if (action != "stop") throw bad("fourth field \"" + action + "\" is not \"stop\"");
    if (spec.point == FaultPoint::kCheckpointWrite) throw bad("checkpoint_write cannot stop, only kill");
    spec.stop = true;
  }
  return spec;
}

std::optional<FaultSpec> armed_fault() {
  static const std::optional<FaultSpec> armed = []() -> std::optional<FaultSpec> {
    const char* text = std::getenv("MOETRAIN_FAULT");
    if (!text || !*text || !first_launch()) return std::nullopt;
    return parse_fault_spec(text);
  }();
  return armed;
}

bool fault_due(FaultPoint point) {
  const auto armed = armed_fault();
  const RunPosition& at = run_position();
  return armed && armed->point == point && armed->rank == at.rank && armed->step == at.step;
}

void kill_for_fault(FaultPoint point) {
  const RunPosition& at = run_position();
  std::fprintf(stderr, "moe-train: rank %d: MOETRAIN_FAULT: killing this process at %s of step %lld (%s)\n",
               at.rank, fault_point_name(point), static_cast<long long>(at.step), at.phase);
  std::fflush(stderr);
  std::raise(SIGKILL);
  std::abort();  // not reached
}

void inject_fault(FaultPoint point) {
  static bool stopped = false;  // a continued process goes on past the point (it may come again in the step)
  if (stopped || !fault_due(point)) return;
  if (!armed_fault()->stop) kill_for_fault(point);
  const RunPosition& at = run_position();
  std::fprintf(stderr,
               "moe-train: rank %d: MOETRAIN_FAULT: stopping this process (SIGSTOP) at %s of step %lld (%s)\n",
               at.rank, fault_point_name(point), static_cast<long long>(at.step), at.phase);
  std::fflush(stderr);
  stopped = true;
  std::raise(SIGSTOP);
}

}  // namespace moetrain::util
