// Small control-plane collectives: every rank learns what every other rank has to say, and a failure
// on any rank becomes the same error on every rank (no rank left waiting in a later collective).
#pragma once

#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moetrain::parallel {

// Result[r] is rank r's `mine`. Collective over `group`.
std::vector<std::string> all_gather_strings(Communicator& group, const std::string& mine);

// `error` is empty when this rank succeeded. If any rank failed, every rank throws std::runtime_error
// with the message of the lowest failing rank ("rank R: ...") and how many ranks failed.
void agree_or_throw(Communicator& group, const std::string& error);

// True on every rank when `flag` is true on any rank (a preemption request, for example).
bool any_rank(Communicator& group, bool flag);

}  // namespace moetrain::parallel
