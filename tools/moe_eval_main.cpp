// moe-eval --checkpoint STEP_DIR --data SHARD_PREFIX [--sequences N] [--seq-len L] [--batch B]
//          [--precision fp32|bf16] [--dump-logits FILE [--dump-sequences K]]
// Scores a checkpoint (saved in any parallel layout) on token shards: the LM loss over the fixed
// evaluation windows of trainer::load_eval_windows (per domain, documents in order, non-overlapping
// windows of L + 1 tokens, at most N per domain), in one process. Prints one JSON line:
//   {"loss": ..., "ppl": ..., "tokens": ..., "sequences": ..., "checkpoint": "...", "step": ..., "domains": {...}}
// --dump-logits writes a safetensors file: "windows" int64 (all windows, (n, L + 1), in evaluation
// order) and "logits" f32 (K, L, V) of the first K windows (inputs = window[:, :L]).
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "csrc/io/safetensors.h"
#include "data/indexed_dataset.h"
#include "tools/checkpoint_model.h"
#include "trainer/data_feed.h"
#include "trainer/evaluator.h"

namespace {

constexpr const char* kUsage =
    "usage: moe-eval --checkpoint STEP_DIR --data SHARD_PREFIX [--sequences N] [--seq-len L] [--batch B]\n"
    "                [--precision fp32|bf16] [--dump-logits FILE [--dump-sequences K]]\n"
    "  --checkpoint DIR     RUN_DIR/checkpoints/step_NNNNNNNN (any parallel layout), or RUN_DIR (its latest)\n"
    "  --data PREFIX        token shards PREFIX.bin + PREFIX.idx (+ PREFIX.domains), made with the model's tokenizer\n"
    "  --sequences N        windows per data domain (default: the recipe's train.eval_sequences)\n"
    "  --seq-len L          tokens per window (default: the recipe's data.seq_len)\n"
    "  --batch B            windows per forward pass (default: the recipe's train.micro_batch_size)\n"
    "  --precision P        fp32 or bf16 matmuls (default: the recipe's train.precision); fp32 to compare with\n"
    "                       another implementation's fp32 outputs\n"
    "  --dump-logits FILE   also write the windows and the logits of the first K windows (safetensors)\n"
    "  --dump-sequences K   windows whose logits are dumped (default 4)\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "moe-eval: error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// A positive integer flag value; throws naming the flag otherwise.
int64_t positive(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const long long v = std::stoll(value, &used);
    if (used == value.size() && v > 0) return v;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(flag + " " + value + ": expected a positive integer");
}

}  // namespace

int main(int argc, char** argv) {
  std::string checkpoint, data, dump_path;
  std::string sequences_arg, seq_len_arg, batch_arg, dump_count_arg, precision_arg;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    std::string* slot = arg == "--checkpoint"       ? &checkpoint
                         : arg == "--data"           ? &data
                         : arg == "--sequences"      ? &sequences_arg
                         : arg == "--seq-len"        ? &seq_len_arg
                         : arg == "--batch"          ? &batch_arg
                         : arg == "--dump-logits"    ? &dump_path
                         : arg == "--dump-sequences" ? &dump_count_arg
                         : arg == "--precision"      ? &precision_arg
                                                     : nullptr;
    if (!slot) return usage_error("unknown argument \"" + arg + "\"");
    if (i + 1 >= argc) return usage_error(arg + " needs a value");
    *slot = argv[++i];
  }
  if (checkpoint.empty()) return usage_error("--checkpoint is required (a step_* directory or a run directory)");
  if (data.empty()) return usage_error("--data is required (the path prefix of PREFIX.bin and PREFIX.idx)");
  int64_t sequences = 0, seq_len = 0, batch = 0, dump_count = 4;
  try {
    if (!sequences_arg.empty()) sequences = positive("--sequences", sequences_arg);
    if (!seq_len_arg.empty()) seq_len = positive("--seq-len", seq_len_arg);
    if (!batch_arg.empty()) batch = positive("--batch", batch_arg);
    if (!dump_count_arg.empty()) dump_count = positive("--dump-sequences", dump_count_arg);
  } catch (const std::exception& e) {
    return usage_error(e.what());
  }
  std::optional<moetrain::config::TrainConfig::Precision> precision;
  if (precision_arg == "fp32") precision = moetrain::config::TrainConfig::FP32;
  else if (precision_arg == "bf16") precision = moetrain::config::TrainConfig::BF16;
  else if (!precision_arg.empty()) return usage_error("--precision " + precision_arg + ": expected fp32 or bf16");

  try {
    // Data first: a wrong prefix should not cost a model load.
    for (const char* ext : {".idx", ".bin"}) {
      if (!file_exists(data + ext)) {
        throw std::runtime_error("--data " + data + ": " + data + ext + " does not exist; pass the path prefix of token "
                                 "shards (PREFIX.bin + PREFIX.idx) made by moe-data encode, without the extension");
      }
    }
    auto cm = moetrain::tools::load_checkpoint_model(checkpoint, "--checkpoint", precision);
    const auto& recipe = cm.recipe;
    const int64_t vocab = recipe.model().vocab_size();
    {
      auto ds = moetrain::data::IndexedDataset::open(data);
      const int64_t max_id = ds.max_token_id();
      if (max_id >= vocab) {
        throw std::runtime_error("--data " + data + ": token id " + std::to_string(max_id) + " does not fit the model's vocab_size " +
                                 std::to_string(vocab) + " (" + cm.dir + "); these shards were made with another tokenizer: "
                                 "encode the text with the model's tokenizer (" +
                                 (recipe.data().tokenizer().empty() ? std::string("the recipe names none") : recipe.data().tokenizer()) + ")");
      }
    }
    if (seq_len == 0) seq_len = recipe.data().seq_len();
    if (sequences == 0) sequences = recipe.train().eval_sequences();
    if (batch == 0) batch = recipe.train().micro_batch_size();
    const auto windows = moetrain::trainer::load_eval_windows(data, seq_len, sequences, vocab);
    int64_t count = 0;
    for (const auto& w : windows.windows) count += w.size(0);
    if (count == 0) {
      throw std::runtime_error("--data " + data + ": no domain holds " + std::to_string(seq_len + 1) +
                               " tokens, so there is no evaluation window; lower --seq-len");
    }
    const auto result = moetrain::trainer::evaluate(*cm.model, windows, batch);

    if (!dump_path.empty()) {
      torch::NoGradGuard no_grad;
      const auto all = torch::cat(windows.windows, 0);  // (n, L + 1)
      const auto first = all.narrow(0, 0, std::min(dump_count, all.size(0)));
      const auto logits = cm.model->forward(first.narrow(1, 0, seq_len)).logits.to(torch::kFloat32);
      moetrain::io::write_file_synced(
          dump_path, moetrain::io::encode_safetensors({{"windows", all}, {"logits", logits}},
                                                      {{"checkpoint", cm.dir}, {"step", std::to_string(cm.step)}}));
    }

    nlohmann::json domains = nlohmann::json::object();
    for (const auto& [name, loss] : result.domain_loss) domains[name] = loss;
    const nlohmann::json out = {{"loss", result.loss},         {"ppl", result.ppl},   {"tokens", count * seq_len},
                                {"sequences", count},          {"checkpoint", cm.dir}, {"step", cm.step},
                                {"domains", domains},
                                {"precision", recipe.train().precision() == moetrain::config::TrainConfig::BF16 ? "bf16" : "fp32"}};
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-eval: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
