#include "csrc/util/run_position.h"

namespace moetrain::util {
namespace {

RunPosition g_position;

}  // namespace

void set_run_rank(int rank) { g_position.rank = rank; }

void set_run_step(int64_t step, const char* phase) {
  g_position.step = step;
  g_position.phase = phase;
}

const RunPosition& run_position() { return g_position; }

}  // namespace moetrain::util
