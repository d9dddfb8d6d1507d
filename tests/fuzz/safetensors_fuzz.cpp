// Fuzz target: the safetensors reader (csrc/io/safetensors.*), which reads checkpoint shards and
// Hugging Face weights. Input: the file's bytes.
// Contract: the constructor validates the header against the file or throws std::runtime_error; every
// tensor of an accepted file can then be read with the shape and byte count its header declares.
#include <cstdint>
#include <stdexcept>

#include "csrc/io/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = moetrain::fuzz::write_scratch("weights.safetensors", data, size);
  try {
    moetrain::io::SafetensorsFile file(path);
    for (const auto& name : file.names()) {
      const auto shape = file.shape(name);
      const torch::Tensor t = file.get(name);
      if (t.sizes().vec() != shape) __builtin_trap();
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
