#include "data/tools/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <sstream>
#include <stdexcept>

namespace moetrain::data {

void train_tokenizer(const std::vector<std::string>& text_files, int64_t vocab_size,
                     const std::string& model_prefix) {
  std::string inputs;
  for (const auto& f : text_files) inputs += (inputs.empty() ? "" : ",") + f;
  std::ostringstream args;
  args << "--input=" << inputs << " --model_prefix=" << model_prefix << " --vocab_size=" << vocab_size
       << " --model_type=bpe --character_coverage=0.9995 --byte_fallback=true --split_digits=true"
       << " --normalization_rule_name=identity --add_dummy_prefix=false --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true"
       << " --input_sentence_size=300000 --shuffle_input_sentence=true --max_sentence_length=8192"
       << " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 --num_threads=2 --minloglevel=2";
  // SentencePiece samples input_sentence_size sentences with a generator seeded from std::random_device
  // unless a seed is set: a fixed seed makes the same text give the same tokenizer on every run and machine.
  sentencepiece::SetRandomGeneratorSeed(20240613);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args.str());
  if (!status.ok()) {
    throw std::runtime_error(
        "training the tokenizer failed: " + status.ToString() +
        "; check the input files hold text and --vocab-size is not larger than the text allows");
  }
}

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  int newline_id = -1;
};

Tokenizer::Tokenizer(const std::string& model_path) : impl_(std::make_unique<Impl>()) {
  const auto status = impl_->sp.Load(model_path);
  if (!status.ok())
    throw std::runtime_error(model_path + ": cannot load SentencePiece model: " + status.ToString());
  impl_->newline_id = impl_->sp.PieceToId("<0x0A>");
  if (impl_->newline_id == impl_->sp.unk_id()) {
    throw std::runtime_error(
        model_path +
        ": no <0x0A> byte piece; train the tokenizer with moe-data train-tokenizer (byte fallback)");
  }
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode_document(const std::string& text) const {
  std::vector<int32_t> out;
  std::vector<int> ids;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    if (begin > 0) out.push_back(impl_->newline_id);
    impl_->sp.Encode(text.substr(begin, end - begin), &ids);
    out.insert(out.end(), ids.begin(), ids.end());
    begin = end + 1;
  }
  out.push_back(impl_->sp.eos_id());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  impl_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  return text;
}

int64_t Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }

}  // namespace moetrain::data
