// Fuzz target: the SentencePiece model reader (hf/tokenizer.cpp: the .model protobuf read by hand).
// Input: the .model file's bytes.
// Contract: read_sentencepiece returns the pieces or throws std::runtime_error naming the file.
#include <cstdint>
#include <stdexcept>

#include "hf/tokenizer.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = moetrain::fuzz::write_scratch("tokenizer.model", data, size);
  try {
    const auto model = moetrain::hf::read_sentencepiece(path);
    const auto special = model.special();
    const auto n = static_cast<int64_t>(model.pieces.size());
    for (int64_t id : {special.bos, special.eos, special.pad, special.unk})
      if (id < -1 || id >= n) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
