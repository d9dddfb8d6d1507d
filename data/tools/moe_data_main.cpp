// moe-data: tokenizer training and token shards in Megatron's indexed dataset format.
//
//   moe-data train-tokenizer --input FILE... --vocab-size N --model-prefix PREFIX
//   moe-data encode --tokenizer MODEL --input FILE... --output-prefix PREFIX [--domain NAME]
//   moe-data stats --prefix PREFIX [--vocab-size N]
//   moe-data unigram --train PREFIX --valid PREFIX --vocab-size N
//   moe-data decode --tokenizer MODEL --prefix PREFIX --document I
//
// Inputs: .jsonl files hold one document per line, {"text": "...", "domain": "..."} ("domain" optional,
// default --domain or "all"); any other file is plain text holding one document.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/domains.h"
#include "data/indexed_dataset.h"
#include "data/tools/tokenizer.h"
#include "data/unigram.h"

namespace {

using moetrain::data::IndexedDataset;

constexpr const char* kUsage =
    "usage:\n"
    "  moe-data train-tokenizer --input FILE [--input FILE]... --vocab-size N --model-prefix PREFIX\n"
    "  moe-data encode --tokenizer MODEL --input FILE [--input FILE]... --output-prefix PREFIX [--domain NAME]\n"
    "  moe-data stats --prefix PREFIX [--vocab-size N]\n"
    "  moe-data unigram --train PREFIX --valid PREFIX --vocab-size N\n"
    "  moe-data decode --tokenizer MODEL --prefix PREFIX --document I\n"
    "inputs: *.jsonl = one {\"text\": ..., \"domain\": ...} per line; other files = one plain-text document\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::map<std::string, std::vector<std::string>> values;
  const std::string& one(const std::string& flag) const {
    auto it = values.find(flag);
    if (it == values.end() || it->second.empty()) throw UsageError("--" + flag + " is required");
    if (it->second.size() > 1) throw UsageError("--" + flag + " given more than once");
    return it->second.front();
  }
  std::string optional(const std::string& flag, const std::string& fallback) const {
    return values.count(flag) ? one(flag) : fallback;
  }
  int64_t integer(const std::string& flag) const {
    const std::string& v = one(flag);
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 0)
      throw UsageError("--" + flag + " " + v + " is not a non-negative integer");
    return n;
  }
};

using DomainCounts = std::map<std::string, std::pair<int64_t, int64_t>>;  // domain -> documents, tokens

nlohmann::json domain_table(const DomainCounts& per_domain) {
  nlohmann::json table = nlohmann::json::object();
  for (const auto& [d, c] : per_domain) table[d] = {{"documents", c.first}, {"tokens", c.second}};
  return table;
}

// One line of JSON on stdout; invalid UTF-8 in names is replaced rather than thrown on.
void print_json(const nlohmann::json& j) {
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Calls fn(text, domain) for every document of every input.
template <typename Fn>
void for_each_document(const std::vector<std::string>& inputs, const std::string& default_domain, Fn fn) {
  for (const auto& path : inputs) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open input file");
    if (!ends_with(path, ".jsonl")) {
      std::stringstream all;
      all << in.rdbuf();
      fn(all.str(), default_domain);
      continue;
    }
    std::string line;
    for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path + ":" + std::to_string(line_no);
      nlohmann::json doc;
      try {
        doc = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        throw std::runtime_error(where + ": not valid JSON (" + std::string(e.what()) +
                                 "); each line must be one JSON object");
      }
      if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string()) {
        throw std::runtime_error(
            where +
            ": expected an object with a string \"text\" field, e.g. {\"text\": \"...\", \"domain\": \"en\"}");
      }
      std::string domain = default_domain;
      if (doc.contains("domain")) {
        if (!doc["domain"].is_string()) throw std::runtime_error(where + ": \"domain\" must be a string");
        domain = doc["domain"].get<std::string>();
        if (domain.empty() || domain.find_first_of(" \t\r\n") != std::string::npos) {
          throw std::runtime_error(where + ": domain \"" + domain +
                                   "\" must be a non-empty name without spaces");
        }
      }
      fn(doc["text"].get<std::string>(), domain);
    }
  }
}

int train_tokenizer(const Args& a) {
  auto inputs = a.values.count("input") ? a.values.at("input") : std::vector<std::string>{};
  if (inputs.empty()) throw UsageError("--input is required");
  const std::string prefix = a.one("model-prefix");
  // SentencePiece samples lines: give it the documents' text, one line per line.
  const int64_t vocab_size = a.integer("vocab-size");
  const std::string text_path = prefix + ".train.txt";
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() { std::remove(path.c_str()); }
  } cleanup{text_path};
  {
    std::ofstream text(text_path, std::ios::trunc);
    if (!text)
      throw std::runtime_error(text_path +
                               ": cannot create; check the --model-prefix directory exists and is writable");
    for_each_document(inputs, "all", [&](const std::string& doc, const std::string&) { text << doc << "\n"; });
  }
  moetrain::data::train_tokenizer({text_path}, vocab_size, prefix);
  print_json({{"tokenizer", prefix + ".model"}, {"vocab_size", vocab_size}});
  return 0;
}

int encode(const Args& a) {
  auto inputs = a.values.count("input") ? a.values.at("input") : std::vector<std::string>{};
  if (inputs.empty()) throw UsageError("--input is required");
  moetrain::data::Tokenizer tokenizer(a.one("tokenizer"));
  const std::string prefix = a.one("output-prefix");
  const std::string default_domain = a.optional("domain", "all");
  if (default_domain.empty() || default_domain.find_first_of(" \t\r\n") != std::string::npos) {
    throw UsageError("--domain \"" + default_domain + "\" must be a non-empty name without spaces");
  }
  moetrain::data::IndexedDatasetWriter writer(prefix, tokenizer.vocab_size());
  std::vector<std::string> domains;
  DomainCounts per_domain;
  for_each_document(inputs, default_domain, [&](const std::string& text, const std::string& domain) {
    auto ids = tokenizer.encode_document(text);
    writer.add_document(ids);
    domains.push_back(domain);
    per_domain[domain].first += 1;
    per_domain[domain].second += static_cast<int64_t>(ids.size());
  });
  std::remove((prefix + ".domains").c_str());  // never leave an old sidecar next to new shards
  writer.finish();
  moetrain::data::write_domains(prefix, domains);
  int64_t tokens = 0;
  for (const auto& [d, c] : per_domain) tokens += c.second;
  print_json({{"prefix", prefix},
              {"documents", domains.size()},
              {"tokens", tokens},
              {"domains", domain_table(per_domain)}});
  return 0;
}

int stats(const Args& a) {
  const std::string prefix = a.one("prefix");
  auto ds = IndexedDataset::open(prefix);
  auto domains = moetrain::data::read_domains(prefix, ds);
  DomainCounts per_domain;
  for (int64_t d = 0; d < ds.num_documents(); ++d) {
    per_domain[domains[d]].first += 1;
    per_domain[domains[d]].second += ds.document_range(d).second;
  }
  const int64_t max_id = ds.max_token_id();
  if (a.values.count("vocab-size") && max_id >= a.integer("vocab-size")) {
    throw std::runtime_error(prefix + ".bin: token id " + std::to_string(max_id) +
                             " does not fit --vocab-size " + a.one("vocab-size") +
                             "; use the tokenizer's vocabulary size (at least " + std::to_string(max_id + 1) +
                             ")");
  }
  print_json({{"prefix", prefix},
              {"documents", ds.num_documents()},
              {"sequences", ds.num_sequences()},
              {"tokens", ds.num_tokens()},
              {"dtype_code", static_cast<int>(ds.dtype())},
              {"max_token_id", max_id},
              {"domains", domain_table(per_domain)}});
  return 0;
}

int unigram(const Args& a) {
  auto train = IndexedDataset::open(a.one("train"));
  auto valid = IndexedDataset::open(a.one("valid"));
  print_json({{"unigram_ppl", moetrain::data::unigram_perplexity(train, valid, a.integer("vocab-size"))}});
  return 0;
}

int decode(const Args& a) {
  moetrain::data::Tokenizer tokenizer(a.one("tokenizer"));
  auto ds = IndexedDataset::open(a.one("prefix"));
  const int64_t doc = a.integer("document");
  if (doc >= ds.num_documents()) {
    throw std::runtime_error(a.one("prefix") + ": --document " + std::to_string(doc) + " out of range; it has " +
                             std::to_string(ds.num_documents()) + " documents (0-based)");
  }
  const auto [first, length] = ds.document_range(doc);
  std::vector<int64_t> ids(length);
  ds.read_tokens(first, length, ids.data());
  const std::string text = tokenizer.decode(std::vector<int32_t>(ids.begin(), ids.end())) + "\n";
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fprintf(argc < 2 ? stderr : stdout, "%s", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  try {
    // Every flag must belong to the command: a misspelt one is an error, never silently ignored.
    static const std::map<std::string, std::vector<std::string>> kFlags = {
        {"train-tokenizer", {"input", "vocab-size", "model-prefix"}},
        {"encode", {"tokenizer", "input", "output-prefix", "domain"}},
        {"stats", {"prefix", "vocab-size"}},
        {"unigram", {"train", "valid", "vocab-size"}},
        {"decode", {"tokenizer", "prefix", "document"}}};
    const auto known = kFlags.find(command);
    if (known == kFlags.end()) throw UsageError("unknown command \"" + command + "\"");
    const std::vector<std::string>& flags = known->second;
    Args args;
    for (int i = 2; i < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag.rfind("--", 0) != 0) throw UsageError("unexpected argument \"" + flag + "\"");
      if (std::find(flags.begin(), flags.end(), flag.substr(2)) == flags.end()) {
        std::string valid;
        for (const auto& f : flags) valid += (valid.empty() ? "--" : ", --") + f;
        throw UsageError("unknown flag " + flag + " for " + command + "; valid flags: " + valid);
      }
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      args.values[flag.substr(2)].push_back(argv[i + 1]);
    }
    if (command == "train-tokenizer") return train_tokenizer(args);
    if (command == "encode") return encode(args);
    if (command == "stats") return stats(args);
    if (command == "unigram") return unigram(args);
    if (command == "decode") return decode(args);
    throw UsageError("unknown command \"" + command + "\"");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "moe-data: error: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-data: error: %s\n", e.what());
    return 1;
  }
}
