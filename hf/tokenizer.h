// The SentencePiece tokenizer next to an exported model: its piece list (read from the .model file's
// protobuf wire format by hand: libsentencepiece must not share a process with libprotobuf and LibTorch,
// docs/architecture.md) and the files transformers' AutoTokenizer reads.
#pragma once

#include <string>
#include <vector>

#include "hf/families.h"

namespace moetrain::hf {

struct SentencePieceModel {
  struct Piece {
    std::string text;
    int type = 1;  // SentencePiece's ModelProto.SentencePiece.Type: 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte
  };
  std::vector<Piece> pieces;      // index = token id
  bool add_dummy_prefix = true;   // NormalizerSpec.add_dummy_prefix (SentencePiece's default: true)
  std::string bytes;              // the whole file
  SpecialTokens special() const;  // ids of <s>, </s>, <pad>, <unk> (control/unknown pieces), -1 if absent
};

// Throws naming the path when the file is missing or not a SentencePiece model.
SentencePieceModel read_sentencepiece(const std::string& path);

// Writes tokenizer.model (a copy), tokenizer_config.json and special_tokens_map.json into `dir`.
// `model_vocab`: the model's vocabulary size; a tokenizer with more pieces is refused (naming `flag`).
void write_tokenizer_files(const std::string& dir, const SentencePieceModel& sp, int64_t model_vocab,
                           const std::string& path, const std::string& flag);

// A Hugging Face tokenizer directory: tokenizer.json (the byte-level BPE that Qwen2, Qwen3 and OLMoE ship;
// any `tokenizers` model) and the files beside it that AutoTokenizer and generate() read. Exported as they
// are: moetrain never runs this tokenizer (data/tools/encode_hf.py does, through transformers).
struct HfTokenizerDir {
  std::string dir;
  std::vector<std::string> files;  // which of kHfTokenizerFiles the directory has (tokenizer.json always)
  SpecialTokens special;  // ids of tokenizer_config.json's bos/eos/pad/unk tokens in tokenizer.json, -1 if unset
  int64_t size = 0;       // 1 + the largest id of tokenizer.json (its model's vocabulary and added tokens)
};

// Throws naming `flag` and the file when tokenizer.json is missing or not a tokenizer, or a special token
// of tokenizer_config.json is not one of its tokens.
HfTokenizerDir read_hf_tokenizer_dir(const std::string& dir, const std::string& flag);

// Copies the directory's tokenizer files into `out_dir`; a tokenizer with more ids than the model's
// vocab_size is refused (naming `flag`), as it belongs to another model.
void copy_hf_tokenizer_files(const std::string& out_dir, const HfTokenizerDir& tokenizer, int64_t model_vocab,
                             const std::string& flag);

}  // namespace moetrain::hf
