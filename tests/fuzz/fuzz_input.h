// Helpers shared by the fuzz targets (tests/fuzz/README.md): the readers under test take file paths, so
// each input is written to a scratch file of this process first.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moetrain::fuzz {

// A directory for this process's scratch files: $MOETRAIN_FUZZ_TMP, else /dev/shm (memory, fast), else /tmp.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* env = std::getenv("MOETRAIN_FUZZ_TMP");
    std::string base = env ? env : (::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    return base + "/moetrain-fuzz-" + std::to_string(::getpid());
  }();
  return dir;
}

// Writes `size` bytes to scratch_dir()/name (creating the directory) and returns the path.
inline std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  static bool made = false;
  if (!made) {
    std::string mk = "mkdir -p '" + scratch_dir() + "'";
    if (std::system(mk.c_str()) != 0) std::abort();
    made = true;
  }
  const std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

}  // namespace moetrain::fuzz
