#include "csrc/util/host_allocator.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace moetrain::util {

bool keep_freed_host_memory() {
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    if (std::getenv(name)) return false;  // the user's choice
  }
  const char* choice = std::getenv("MOETRAIN_HOST_MALLOC");
  if (choice && std::strcmp(choice, "system") == 0) return false;
  if (choice && std::strcmp(choice, "keep") != 0) {
    throw std::invalid_argument(std::string("MOETRAIN_HOST_MALLOC=") + choice +
                                ": must be keep (the default: freed host memory kept for the next step) or system "
                                "(glibc's defaults); unset it or set one of those");
  }
  constexpr int kMiB = 1 << 20;
  // mallopt fails only for a value outside glibc's range; these are inside it on 64-bit Linux.
  return mallopt(M_MMAP_THRESHOLD, 32 * kMiB) == 1 && mallopt(M_TRIM_THRESHOLD, 1024 * kMiB) == 1 &&
         mallopt(M_TOP_PAD, 256 * kMiB) == 1;
}

}  // namespace moetrain::util
