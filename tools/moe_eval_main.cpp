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
#include "tools/cli.h"
#include "trainer/data_feed.h"
#include "trainer/evaluator.h"

namespace {

namespace cli = moetrain::tools::cli;

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

struct EvalArgs {
  std::string checkpoint, data, dump_path;
  int64_t sequences = 0, seq_len = 0, batch = 0, dump_count = 4;  // 0: the recipe's
  std::optional<moetrain::config::TrainConfig::Precision> precision;
};

// Throws unless PREFIX.idx and PREFIX.bin exist: a wrong prefix should not cost a model load.
void check_shards(const std::string& data) {
  for (const char* ext : {".idx", ".bin"}) {
    if (!file_exists(data + ext)) {
      throw std::runtime_error(
          "--data " + data + ": " + data + ext +
          " does not exist; pass the path prefix of token "
          "shards (PREFIX.bin + PREFIX.idx) made by moe-data encode, without the extension");
    }
  }
}

// Throws unless every token id of the shards fits the model's vocabulary.
void check_vocab(const std::string& data, const moetrain::tools::CheckpointModel& cm) {
  const auto& recipe = cm.recipe;
  const int64_t vocab = recipe.model().vocab_size();
  const int64_t max_id = moetrain::data::IndexedDataset::open(data).max_token_id();
  if (max_id >= vocab) {
    throw std::runtime_error("--data " + data + ": token id " + std::to_string(max_id) +
                             " does not fit the model's vocab_size " + std::to_string(vocab) + " (" + cm.dir +
                             "); these shards were made with another tokenizer: "
                             "encode the text with the model's tokenizer (" +
                             (recipe.data().tokenizer().empty() ? std::string("the recipe names none")
                                                                : recipe.data().tokenizer()) +
                             ")");
  }
}

// Writes the windows and the logits of the first dump_count windows (safetensors).
void dump_logits(const EvalArgs& a, moetrain::tools::CheckpointModel& cm,
                 const std::vector<torch::Tensor>& windows, int64_t seq_len) {
  torch::NoGradGuard no_grad;
  const auto all = torch::cat(windows, 0);  // (n, L + 1)
  const auto first = all.narrow(0, 0, std::min(a.dump_count, all.size(0)));
  const auto logits = cm.model->forward(first.narrow(1, 0, seq_len)).logits.to(torch::kFloat32);
  moetrain::io::write_file_synced(a.dump_path,
                                  moetrain::io::encode_safetensors({{"windows", all}, {"logits", logits}},
                                                                   {{"checkpoint", cm.dir},
                                                                    {"step", std::to_string(cm.step)}}));
}

// Scores the checkpoint and prints the JSON line.
int evaluate(EvalArgs a) {
  check_shards(a.data);
  auto cm = moetrain::tools::load_checkpoint_model(a.checkpoint, "--checkpoint", a.precision);
  const auto& recipe = cm.recipe;
  check_vocab(a.data, cm);
  const int64_t seq_len = a.seq_len ? a.seq_len : recipe.data().seq_len();
  const int64_t sequences = a.sequences ? a.sequences : recipe.train().eval_sequences();
  const int64_t batch = a.batch ? a.batch : recipe.train().micro_batch_size();
  const auto windows = moetrain::trainer::load_eval_windows(a.data, seq_len, sequences,
                                                            recipe.model().vocab_size());
  int64_t count = 0;
  for (const auto& w : windows.windows) count += w.size(0);
  if (count == 0) {
    throw std::runtime_error("--data " + a.data + ": no domain holds " + std::to_string(seq_len + 1) +
                             " tokens, so there is no evaluation window; lower --seq-len");
  }
  const auto result = moetrain::trainer::evaluate(*cm.model, windows, batch);
  if (!a.dump_path.empty()) dump_logits(a, cm, windows.windows, seq_len);

  nlohmann::json domains = nlohmann::json::object();
  for (const auto& [name, loss] : result.domain_loss) domains[name] = loss;
  const nlohmann::json out = {{"loss", result.loss},
                              {"ppl", result.ppl},
                              {"tokens", count * seq_len},
                              {"sequences", count},
                              {"checkpoint", cm.dir},
                              {"step", cm.step},
                              {"domains", domains},
                              {"precision", recipe.train().precision() == moetrain::config::TrainConfig::BF16
                                                ? "bf16"
                                                : "fp32"}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cli::Command cmd("moe-eval",
                   "usage: moe-eval --checkpoint STEP_DIR --data SHARD_PREFIX [--sequences N] [--seq-len L] [--batch B]\n"
                   "                [--precision fp32|bf16] [--dump-logits FILE [--dump-sequences K]]\n");
  cmd.required("--checkpoint", "DIR",
               "RUN_DIR/checkpoints/step_NNNNNNNN (any parallel layout), or RUN_DIR (its latest)")
      .required("--data", "PREFIX",
                "token shards PREFIX.bin + PREFIX.idx (+ PREFIX.domains), made with the model's tokenizer")
      .option("--sequences", "N", "windows per data domain (default: the recipe's train.eval_sequences)")
      .option("--seq-len", "L", "tokens per window (default: the recipe's data.seq_len)")
      .option("--batch", "B", "windows per forward pass (default: the recipe's train.micro_batch_size)")
      .option("--precision", "P",
              "fp32 or bf16 matmuls (default: the recipe's train.precision); fp32 to compare with\n"
              "another implementation's fp32 outputs")
      .option("--dump-logits", "FILE",
              "also write the windows and the logits of the first K windows (safetensors)")
      .option("--dump-sequences", "K", "windows whose logits are dumped (default 4)");
  return cmd.run(argc, argv, [&] {
    EvalArgs a;
    a.checkpoint = cmd.get("--checkpoint");
    a.data = cmd.get("--data");
    a.dump_path = cmd.get("--dump-logits");
    a.sequences = cmd.integer("--sequences", 0, 1);
    a.seq_len = cmd.integer("--seq-len", 0, 1);
    a.batch = cmd.integer("--batch", 0, 1);
    a.dump_count = cmd.integer("--dump-sequences", 4, 1);
    const std::string precision = cmd.choice("--precision", {"fp32", "bf16"}, "");
    if (!precision.empty()) {
      a.precision = precision == "bf16" ? moetrain::config::TrainConfig::BF16
                                        : moetrain::config::TrainConfig::FP32;
    }
    return evaluate(a);
  });
}
