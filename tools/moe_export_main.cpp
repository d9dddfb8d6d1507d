// moe-export --checkpoint STEP_DIR --out HF_DIR [--format auto|mixtral|qwen2_moe|qwen3_moe|olmoe]
//            [--dtype fp32|bf16] [--tokenizer FILE|DIR | --no-tokenizer] [--max-shard-bytes N] [--adapter-out DIR]
// Writes a Hugging Face model directory (docs/huggingface.md) from a moetrain checkpoint saved in any
// parallel layout: config.json, generation_config.json, model.safetensors (or shards of at most
// --max-shard-bytes tensor bytes + model.safetensors.index.json), and the tokenizer: a SentencePiece
// model (tokenizer.model, tokenizer_config.json, special_tokens_map.json written for it) or a Hugging Face
// tokenizer directory's files (tokenizer.json and what lies beside it, copied). The format (hf/families.h) is the
// one whose attention the model has (q/k norm per head: Qwen3-MoE, full width: OLMoE), else Mixtral when it
// computes the model exactly, else Qwen2-MoE (dense layers, shared experts, q/k/v biases, unnormalised
// gates); anything the format does not compute exactly is refused, naming the recipe field. --dtype bf16
// writes the weights rounded to bfloat16 (config.json says so). The directory appears
// complete or not at all (written as HF_DIR.tmp-<pid>, then renamed). A LoRA run exports merged
// (W + (alpha/rank)·A·B); with --adapter-out, HF_DIR gets the base model and DIR the PEFT adapter
// (hf/peft.h) that peft loads onto it.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "hf/export_rules.h"
#include "hf/families.h"
#include "hf/peft.h"
#include "hf/tokenizer.h"
#include "hf/weights.h"
#include "tools/checkpoint_model.h"

namespace {

constexpr const char* kUsage =
    "usage: moe-export --checkpoint STEP_DIR --out HF_DIR [--format auto|mixtral|qwen2_moe|qwen3_moe|olmoe]\n"
    "                  [--dtype fp32|bf16] [--tokenizer FILE|DIR | --no-tokenizer] [--max-shard-bytes N]\n"
    "                  [--adapter-out DIR]\n"
    "  --checkpoint DIR       RUN_DIR/checkpoints/step_NNNNNNNN (any parallel layout), or RUN_DIR (its latest)\n"
    "  --out HF_DIR           new directory for the Hugging Face model (must not exist, or be empty)\n"
    "  --format F             mixtral (MixtralForCausalLM), qwen2_moe (Qwen2MoeForCausalLM: dense layers, shared\n"
    "                         expert, q/k/v biases, unnormalised gates), qwen3_moe (Qwen3MoeForCausalLM: q/k norm\n"
    "                         per head), olmoe (OlmoeForCausalLM: full-width q/k norm), or auto (default): the\n"
    "                         family of the model's q/k norm, else mixtral when exact, else qwen2_moe\n"
    "  --dtype D              fp32 (default) or bf16: the dtype of the written weights\n"
    "  --tokenizer FILE|DIR   tokenizer to ship: a SentencePiece .model, or a Hugging Face model or tokenizer\n"
    "                         directory with tokenizer.json, copied as it is (default: the recipe's data.tokenizer)\n"
    "  --no-tokenizer         export the weights and configs only\n"
    "  --max-shard-bytes N    largest weight file; bigger models get shards + model.safetensors.index.json\n"
    "                         (default 5000000000)\n"
    "  --adapter-out DIR      LoRA runs: write the base model to HF_DIR and the PEFT adapter\n"
    "                         (adapter_config.json, adapter_model.safetensors) to DIR; without it the adapters\n"
    "                         are merged into HF_DIR's expert weights\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "moe-export: error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// Entries of a directory other than . and .. (-1 if it cannot be read).
bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int entries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(d)) n += std::string(e->d_name) != "." && std::string(e->d_name) != "..";
  ::closedir(d);
  return n;
}

// Removes a flat directory of files (what this tool writes); best effort, for cleanup after a failure.
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
  moetrain::io::write_file_synced(path, value.dump(2) + "\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string checkpoint, out, tokenizer, shard_arg, format = "auto", adapter_out, dtype_arg = "fp32";
  bool no_tokenizer = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    if (arg == "--no-tokenizer") {
      no_tokenizer = true;
      continue;
    }
    std::string* slot = arg == "--checkpoint"        ? &checkpoint
                         : arg == "--out"             ? &out
                         : arg == "--tokenizer"       ? &tokenizer
                         : arg == "--max-shard-bytes" ? &shard_arg
                         : arg == "--format"          ? &format
                         : arg == "--adapter-out"     ? &adapter_out
                         : arg == "--dtype"           ? &dtype_arg
                                                      : nullptr;
    if (!slot) return usage_error("unknown argument \"" + arg + "\"");
    if (i + 1 >= argc) return usage_error(arg + " needs a value");
    *slot = argv[++i];
  }
  if (checkpoint.empty()) return usage_error("--checkpoint is required (a step_* directory or a run directory)");
  if (out.empty()) return usage_error("--out is required (a new directory for the Hugging Face model)");
  if (no_tokenizer && !tokenizer.empty()) return usage_error("--tokenizer and --no-tokenizer exclude each other; pass one");
  if (format != "auto" && !moetrain::hf::family_named(format)) {
    return usage_error("--format " + format + ": expected auto, mixtral, qwen2_moe, qwen3_moe or olmoe");
  }
  if (dtype_arg != "fp32" && dtype_arg != "bf16") return usage_error("--dtype " + dtype_arg + ": expected fp32 or bf16");
  const torch::ScalarType dtype = dtype_arg == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  int64_t max_shard_bytes = 5000000000LL;
  if (!shard_arg.empty()) {
    try {
      size_t used = 0;
      max_shard_bytes = std::stoll(shard_arg, &used);
      if (used != shard_arg.size() || max_shard_bytes <= 0) throw std::invalid_argument("");
    } catch (const std::exception&) {
      return usage_error("--max-shard-bytes " + shard_arg + ": expected a positive number of bytes (for example 5000000000)");
    }
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (exists(out) && entries(out) != 0) {
    std::fprintf(stderr, "moe-export: error: --out %s exists and is not empty; choose a new directory or remove it\n", out.c_str());
    return 1;
  }

  if (!adapter_out.empty() && exists(adapter_out) && entries(adapter_out) != 0) {
    std::fprintf(stderr, "moe-export: error: --adapter-out %s exists and is not empty; choose a new directory or remove it\n",
                 adapter_out.c_str());
    return 1;
  }
  const std::string tmp = out + ".tmp-" + std::to_string(::getpid());
  try {
    auto cm = moetrain::tools::load_checkpoint_model(checkpoint, "--checkpoint");
    // The format: the one asked for, or (auto) the one hf::auto_family picks.
    namespace hf = moetrain::hf;
    const hf::Family family = format == "auto" ? hf::auto_family(cm.recipe, *cm.model) : *hf::family_named(format);
    const std::string target = hf::info(family).title;
    const auto problems = hf::export_problems(family, cm.recipe, *cm.model);
    if (!problems.empty()) {
      std::string text = "--checkpoint " + cm.dir + ": Hugging Face " + target + " cannot represent this model exactly:";
      for (const auto& p : problems) text += "\n  " + p;
      text += "\n" + target + ": " +
              (family == hf::Family::kMixtral   ? "an MoE block in every layer, gates renormalised to sum to 1, no shared experts, no q/k norm, no biases"
               : family == hf::Family::kQwen2Moe ? "dense layers, a shared expert and q/k/v biases allowed, gates renormalised or not, no q/k norm"
               : family == hf::Family::kQwen3Moe ? "q/k RMSNorm per head, dense layers allowed, gates renormalised or not, no shared experts, no biases"
                                                 : "q/k RMSNorm over the full width, an MoE block in every layer, no shared experts, no biases") +
              "; softmax over all experts, top-k, no selection bias, no gate scaling." +
              (format == "auto" ? std::string(" (--format names another family.)") : "");
      throw std::runtime_error(text);
    }
    if (format == "auto" && family == hf::Family::kQwen2Moe) {
      std::string why;
      for (const auto& p : hf::export_problems(hf::Family::kMixtral, cm.recipe, *cm.model)) why += "\n  " + p;
      std::fprintf(stderr, "moe-export: note: exporting as Qwen2-MoE (Qwen2MoeForCausalLM); Mixtral cannot hold this model:%s\n",
                   why.c_str());
    }
    for (const auto& note : moetrain::hf::export_notes(cm.recipe, target, adapter_out.empty())) std::fprintf(stderr, "moe-export: note: %s\n", note.c_str());

    // The tokenizer: read (and checked against the model) before anything is written.
    std::optional<moetrain::hf::SentencePieceModel> sp;
    std::optional<moetrain::hf::HfTokenizerDir> hf_tokenizer;
    std::string tokenizer_flag = "--tokenizer";
    if (!no_tokenizer) {
      if (tokenizer.empty()) {
        tokenizer = cm.recipe.data().tokenizer();
        tokenizer_flag = "the recipe's data.tokenizer";
        if (tokenizer.empty()) {
          std::fprintf(stderr, "moe-export: note: the recipe names no data.tokenizer; exporting without a tokenizer "
                               "(pass --tokenizer FILE to ship one)\n");
        } else if (!exists(tokenizer)) {
          throw std::runtime_error("the recipe's data.tokenizer = \"" + tokenizer + "\" does not exist here (relative paths "
                                   "are relative to where moe-train ran); pass --tokenizer FILE, or --no-tokenizer");
        }
      } else if (!exists(tokenizer)) {
        throw std::runtime_error("--tokenizer " + tokenizer + ": no such file or directory; pass the SentencePiece .model or the "
                                 "Hugging Face tokenizer directory the data was encoded with");
      }
      if (is_directory(tokenizer)) {
        hf_tokenizer = moetrain::hf::read_hf_tokenizer_dir(tokenizer, tokenizer_flag);
      } else if (!tokenizer.empty()) {
        sp = moetrain::hf::read_sentencepiece(tokenizer);
      }
    }
    const moetrain::hf::SpecialTokens special = sp ? sp->special() : hf_tokenizer ? hf_tokenizer->special : moetrain::hf::SpecialTokens{};

    if (const size_t slash = out.rfind('/'); slash != std::string::npos && slash > 0) {
      std::error_code ignored;  // parents are made as save_pretrained makes them; a failure shows just below
      std::filesystem::create_directories(out.substr(0, slash), ignored);
    }
    if (::mkdir(tmp.c_str(), 0755) != 0) {
      throw std::runtime_error("--out " + out + ": cannot create " + tmp + " (" + std::strerror(errno) +
                               "); check that the parent directory exists and is writable");
    }
    write_json(tmp + "/config.json", hf::export_config(family, cm.recipe, *cm.model, special, dtype));
    nlohmann::json generation = {{"_from_model_config", true}};
    if (special.bos >= 0) generation["bos_token_id"] = special.bos;
    if (special.eos >= 0) generation["eos_token_id"] = special.eos;
    if (special.pad >= 0) generation["pad_token_id"] = special.pad;
    write_json(tmp + "/generation_config.json", generation);
    std::optional<moetrain::hf::PeftAdapter> adapter;
    if (!adapter_out.empty()) {
      adapter = hf::peft_adapter(family, *cm.model);  // throws when the run has no adapters
      for (auto& p : cm.model->named_parameters()) {  // HF_DIR gets the base model: the adapters' update set to 0
        torch::NoGradGuard no_grad;
        if (p.key().size() > 7 && p.key().compare(p.key().size() - 7, 7, "_lora_b") == 0) p.value().zero_();
      }
    }
    moetrain::hf::merge_adapters(*cm.model);  // LoRA runs: W += (alpha / rank)·A·B
    auto tensors = hf::export_tensors(family, *cm.model);
    for (auto& item : tensors) item.second = item.second.to(dtype).contiguous();
    const auto written = moetrain::hf::write_weights(tmp, tensors, max_shard_bytes);
    if (sp) moetrain::hf::write_tokenizer_files(tmp, *sp, cm.recipe.model().vocab_size(), tokenizer, tokenizer_flag);
    if (hf_tokenizer) moetrain::hf::copy_hf_tokenizer_files(tmp, *hf_tokenizer, cm.recipe.model().vocab_size(), tokenizer_flag);
    if (exists(out)) ::rmdir(out.c_str());  // empty (checked above)
    if (::rename(tmp.c_str(), out.c_str()) != 0) {
      throw std::runtime_error("--out " + out + ": cannot rename " + tmp + " into place (" + std::strerror(errno) + ")");
    }
    if (adapter) moetrain::hf::write_peft_adapter(*adapter, adapter_out);
    const nlohmann::json summary = {{"out", out},
                                    {"adapter", adapter ? nlohmann::json(adapter_out) : nlohmann::json(nullptr)},
                                    {"format", hf::info(family).model_type},
                                    {"dtype", dtype_arg},
                                    {"checkpoint", cm.dir},
                                    {"step", cm.step},
                                    {"tensors", tensors.size()},
                                    {"bytes", written.total_bytes},
                                    {"files", written.files},
                                    {"tokenizer", sp || hf_tokenizer ? nlohmann::json(tokenizer) : nlohmann::json(nullptr)}};
    std::printf("%s\n", summary.dump().c_str());
  } catch (const std::exception& e) {
    remove_flat_dir(tmp);
    std::fprintf(stderr, "moe-export: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
