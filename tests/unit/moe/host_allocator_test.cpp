// util::keep_freed_host_memory: glibc serves blocks up to 32 MiB from its heap after the tuning, not from
// mmap (a fresh, kernel-zeroed mapping on every allocation), and the user's choice wins.
// Each test runs in its own process under CTest; within one process the control test must come first.
#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "csrc/util/host_allocator.h"

using moetrain::util::keep_freed_host_memory;

namespace {

constexpr size_t kBlock = 16u << 20;  // 16 MiB: above glibc's default mmap threshold, below 32 MiB

// How many mmapped blocks glibc holds while one block of kBlock bytes is live.
size_t mmapped_blocks_while_holding_a_block() {
  void* volatile p = std::malloc(kBlock);
  static_cast<char*>(p)[0] = 1;
  const size_t held = mallinfo2().hblks;
  std::free(p);
  return held;
}

void clear_env() {
  for (const char* name :
       {"MOETRAIN_HOST_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    unsetenv(name);
  }
}

}  // namespace

TEST(HostAllocator, OptedOutGlibcStillMapsA16MiBBlock) {
  clear_env();
  setenv("MOETRAIN_HOST_MALLOC", "system", 1);
  const size_t before = mallinfo2().hblks;
  EXPECT_FALSE(keep_freed_host_memory());
  EXPECT_EQ(mmapped_blocks_while_holding_a_block(), before + 1);
  clear_env();
}

TEST(HostAllocator, TunedA16MiBBlockComesFromTheHeap) {
  clear_env();
  ASSERT_TRUE(keep_freed_host_memory());
  const size_t before = mallinfo2().hblks;
  EXPECT_EQ(mmapped_blocks_while_holding_a_block(), before);
}

TEST(HostAllocator, GlibcSettingsOfTheUserWinAndABadChoiceIsNamed) {
  clear_env();
  setenv("MALLOC_TRIM_THRESHOLD_", "1000000", 1);
  EXPECT_FALSE(keep_freed_host_memory());
  clear_env();
  setenv("MOETRAIN_HOST_MALLOC", "jemalloc", 1);
  try {
    keep_freed_host_memory();
    ADD_FAILURE() << "MOETRAIN_HOST_MALLOC=jemalloc accepted";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("MOETRAIN_HOST_MALLOC=jemalloc"), std::string::npos) << m;
    EXPECT_NE(m.find("keep"), std::string::npos) << m;
    EXPECT_NE(m.find("system"), std::string::npos) << m;
  }
  clear_env();
}
