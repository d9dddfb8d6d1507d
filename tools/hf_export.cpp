#include "tools/hf_export.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "csrc/io/safetensors.h"
#include "hf/export_rules.h"
#include "hf/family_spec.h"
#include "hf/peft.h"
#include "hf/tokenizer.h"
#include "hf/weights.h"
#include "tools/checkpoint_model.h"

namespace moetrain::tools {
using namespace moetrain::hf;  // the bridge this call drives
namespace {

using Note = std::function<void(const std::string&)>;

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Entries of a directory other than . and .. (-1 if it cannot be read).
int entries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(d)) n += std::string(e->d_name) != "." && std::string(e->d_name) != "..";
  ::closedir(d);
  return n;
}

// Removes a flat directory of files (what export writes); best effort, for cleanup after a failure.
void remove_flat_dir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink((dir + "/" + name).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

void write_json(const std::string& path, const nlohmann::json& value) {
  io::write_file_synced(path, value.dump(2) + "\n");
}

// Throws when `dir` (the value of `flag`) exists and holds anything.
void require_empty(const std::string& dir, const std::string& flag) {
  if (!dir.empty() && exists(dir) && entries(dir) != 0) {
    throw std::runtime_error(flag + " " + dir + " exists and is not empty; choose a new directory or remove it");
  }
}

// The format: the one asked for, or the one auto_family picks (with a note when Mixtral cannot hold the
// model). Throws naming every recipe field the format does not compute exactly.
Family choose_family(const ExportOptions& options, const tools::CheckpointModel& cm, const Note& note) {
  const Family family = options.family ? *options.family : auto_family(cm.recipe, *cm.model);
  const std::string target = info(family).title;
  const auto problems = export_problems(family, cm.recipe, *cm.model);
  if (!problems.empty()) {
    std::string text = "--checkpoint " + cm.dir + ": Hugging Face " + target +
                       " cannot represent this model exactly:";
    for (const auto& p : problems) text += "\n  " + p;
    text += "\n" + target + ": " + spec(family).holds +
            "; softmax over all experts, top-k, no selection bias, no gate scaling." +
            (options.family ? "" : " (--format names another family.)");
    throw std::runtime_error(text);
  }
  if (!options.family && family == Family::kQwen2Moe) {
    std::string why;
    for (const auto& p : export_problems(Family::kMixtral, cm.recipe, *cm.model)) why += "\n  " + p;
    note("exporting as Qwen2-MoE (Qwen2MoeForCausalLM); Mixtral cannot hold this model:" + why);
  }
  for (const auto& n : export_notes(cm.recipe, target, options.adapter_out.empty())) note(n);
  return family;
}

// The tokenizer shipped, read (and checked against the model) before anything is written.
struct Tokenizer {
  std::string path;                  // empty: none
  std::string flag = "--tokenizer";  // where the path came from, for messages
  std::optional<SentencePieceModel> sp;
  std::optional<HfTokenizerDir> dir;
  SpecialTokens special() const { return sp ? sp->special() : dir ? dir->special : SpecialTokens{}; }
};

Tokenizer read_tokenizer(const ExportOptions& options, const config::Recipe& recipe, const Note& note) {
  Tokenizer t;
  if (!options.ship_tokenizer) return t;
  t.path = options.tokenizer;
  if (t.path.empty()) {
    t.path = recipe.data().tokenizer();
    t.flag = "the recipe's data.tokenizer";
    if (t.path.empty()) {
      note(
          "the recipe names no data.tokenizer; exporting without a tokenizer (pass --tokenizer FILE to ship "
          "one)");
      return t;
    }
    if (!exists(t.path)) {
      throw std::runtime_error("the recipe's data.tokenizer = \"" + t.path +
                               "\" does not exist here (relative paths "
                               "are relative to where moe-train ran); pass --tokenizer FILE, or --no-tokenizer");
    }
  } else if (!exists(t.path)) {
    throw std::runtime_error("--tokenizer " + t.path +
                             ": no such file or directory; pass the SentencePiece .model or the "
                             "Hugging Face tokenizer directory the data was encoded with");
  }
  if (is_directory(t.path)) t.dir = read_hf_tokenizer_dir(t.path, t.flag);
  else t.sp = read_sentencepiece(t.path);
  return t;
}

// With adapter_out: the PEFT adapter, and the model left as its base (every *_lora_b zeroed, so the
// adapters' update is 0). Throws when the run has no adapters.
std::optional<PeftAdapter> split_adapter(const ExportOptions& options, Family family,
                                         model::TransformerImpl& model) {
  if (options.adapter_out.empty()) return std::nullopt;
  auto adapter = peft_adapter(family, model);
  torch::NoGradGuard no_grad;
  const std::string suffix = "_lora_b";
  for (auto& p : model.named_parameters()) {
    const std::string& name = p.key();
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      p.value().zero_();
    }
  }
  return adapter;
}

// Makes `tmp` (and the parents of `out`, as save_pretrained does).
void make_temporary_dir(const std::string& out, const std::string& tmp) {
  if (const size_t slash = out.rfind('/'); slash != std::string::npos && slash > 0) {
    std::error_code ignored;  // a failure shows just below
    std::filesystem::create_directories(out.substr(0, slash), ignored);
  }
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    throw std::runtime_error("--out " + out + ": cannot create " + tmp + " (" + std::strerror(errno) +
                             "); check that the parent directory exists and is writable");
  }
}

// Writes the whole model directory into `dir`; fills the result's tensors, bytes and files.
void write_model_dir(const std::string& dir, const ExportOptions& options, Family family,
                     tools::CheckpointModel& cm, const Tokenizer& tokenizer, ExportResult& result) {
  const SpecialTokens special = tokenizer.special();
  write_json(dir + "/config.json", export_config(family, cm.recipe, *cm.model, special, options.dtype));
  nlohmann::json generation = {{"_from_model_config", true}};
  if (special.bos >= 0) generation["bos_token_id"] = special.bos;
  if (special.eos >= 0) generation["eos_token_id"] = special.eos;
  if (special.pad >= 0) generation["pad_token_id"] = special.pad;
  write_json(dir + "/generation_config.json", generation);
  merge_adapters(*cm.model);  // LoRA runs: W += (alpha / rank)·A·B (no-op after split_adapter)
  auto tensors = export_tensors(family, *cm.model);
  for (auto& item : tensors) item.second = item.second.to(options.dtype).contiguous();
  const auto written = write_weights(dir, tensors, options.max_shard_bytes);
  const int64_t vocab = cm.recipe.model().vocab_size();
  if (tokenizer.sp) write_tokenizer_files(dir, *tokenizer.sp, vocab, tokenizer.path, tokenizer.flag);
  if (tokenizer.dir) copy_hf_tokenizer_files(dir, *tokenizer.dir, vocab, tokenizer.flag);
  result.tensors = tensors.size();
  result.bytes = written.total_bytes;
  result.files = written.files;
}

void check_options(const ExportOptions& options) {
  if (options.checkpoint.empty())
    throw std::invalid_argument("--checkpoint is required (a step_* directory or a run directory)");
  if (options.out.empty())
    throw std::invalid_argument("--out is required (a new directory for the Hugging Face model)");
  if (!options.ship_tokenizer && !options.tokenizer.empty()) {
    throw std::invalid_argument("--tokenizer and --no-tokenizer exclude each other; pass one");
  }
  if (options.dtype != torch::kFloat32 && options.dtype != torch::kBFloat16) {
    throw std::invalid_argument(std::string("--dtype ") + c10::toString(options.dtype) +
                                ": expected fp32 or bf16");
  }
  if (options.max_shard_bytes <= 0) {
    throw std::invalid_argument("--max-shard-bytes " + std::to_string(options.max_shard_bytes) +
                                ": expected a positive number of bytes (for example 5000000000)");
  }
}

}  // namespace

nlohmann::json ExportResult::summary() const {
  return {{"out", out},
          {"adapter", adapter_out.empty() ? nlohmann::json(nullptr) : nlohmann::json(adapter_out)},
          {"format", info(family).model_type},
          {"dtype", dtype == torch::kBFloat16 ? "bf16" : "fp32"},
          {"checkpoint", checkpoint},
          {"step", step},
          {"tensors", tensors},
          {"bytes", bytes},
          {"files", files},
          {"tokenizer", tokenizer.empty() ? nlohmann::json(nullptr) : nlohmann::json(tokenizer)}};
}

ExportResult export_checkpoint(const ExportOptions& options) {
  check_options(options);
  const Note note = options.note ? options.note : [](const std::string&) {};
  ExportResult result;
  result.out = options.out;
  while (result.out.size() > 1 && result.out.back() == '/') result.out.pop_back();
  require_empty(result.out, "--out");
  require_empty(options.adapter_out, "--adapter-out");
  const std::string tmp = result.out + ".tmp-" + std::to_string(::getpid());
  try {
    auto cm = tools::load_checkpoint_model(options.checkpoint, "--checkpoint");
    result.family = choose_family(options, cm, note);
    result.dtype = options.dtype;
    result.checkpoint = cm.dir;
    result.step = cm.step;
    const Tokenizer tokenizer = read_tokenizer(options, cm.recipe, note);
    make_temporary_dir(result.out, tmp);
    const auto adapter = split_adapter(options, result.family, *cm.model);
    write_model_dir(tmp, options, result.family, cm, tokenizer, result);
    if (exists(result.out)) ::rmdir(result.out.c_str());  // empty (checked above)
    if (::rename(tmp.c_str(), result.out.c_str()) != 0) {
      throw std::runtime_error("--out " + result.out + ": cannot rename " + tmp + " into place (" +
                               std::strerror(errno) + ")");
    }
    if (adapter) {
      write_peft_adapter(*adapter, options.adapter_out);
      result.adapter_out = options.adapter_out;
    }
    result.tokenizer = tokenizer.sp || tokenizer.dir ? tokenizer.path : "";
  } catch (...) {
    remove_flat_dir(tmp);
    throw;
  }
  return result;
}

}  // namespace moetrain::tools
