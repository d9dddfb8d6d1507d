// SentencePiece, kept in the moe-data process only: Debian's libsentencepiece carries its own protobuf
// and must never share a process with libprotobuf or LibTorch.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace moetrain::data {

// Trains a BPE model on the text files (one sentence per line is sampled, up to a cap).
// Special ids: 0 <unk>, 1 <s>, 2 </s> (end of document), 3 <pad>; 256 byte pieces <0x00>..<0xFF>
// make every text encodable.
void train_tokenizer(const std::vector<std::string>& text_files, int64_t vocab_size,
                     const std::string& model_prefix);

class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);
  ~Tokenizer();
  // A document: each line encoded, lines joined by the <0x0A> byte piece, then </s> appended. Models are
  // trained without the dummy-prefix space, so SentencePiece decoding of the ids gives the text back exactly.
  std::vector<int32_t> encode_document(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moetrain::data
