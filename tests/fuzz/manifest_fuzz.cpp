// Fuzz target: the checkpoint manifest reader (trainer/checkpoint_manifest.*). Input: manifest.json text.
// Contract: parse_manifest accepts a manifest whose every field has its type and range, or throws
// std::runtime_error naming the field.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "trainer/checkpoint_manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    moetrain::trainer::parse_manifest(std::string(reinterpret_cast<const char*>(data), size), "manifest.json");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
