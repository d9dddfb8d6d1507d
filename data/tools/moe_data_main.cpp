// moe-data: tokenizer training and token shards in Megatron's indexed dataset format.
//
//   moe-data train-tokenizer --input FILE... --vocab-size N --model-prefix PREFIX
//   moe-data encode --tokenizer MODEL --input FILE... --output-prefix PREFIX [--domain NAME]
//   moe-data stats --prefix PREFIX
//   moe-data unigram --train PREFIX --valid PREFIX --vocab-size N
//   moe-data decode --tokenizer MODEL --prefix PREFIX --document I
//
// Inputs: .jsonl files hold one document per line, {"text": "...", "domain": "..."} ("domain" optional,
// default --domain or "all"); any other file is plain text holding one document.
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
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
    "  moe-data stats --prefix PREFIX\n"
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
    if (v.empty() || *end != '\0' || n < 0) throw UsageError("--" + flag + " " + v + " is not a non-negative integer");
    return n;
  }
};

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
        throw std::runtime_error(where + ": not valid JSON (" + std::string(e.what()) + "); each line must be one JSON object");
      }
      if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string()) {
        throw std::runtime_error(where + ": expected an object with a string \"text\" field, e.g. {\"text\": \"...\", \"domain\": \"en\"}");
      }
      std::string domain = default_domain;
      if (doc.contains("domain")) {
        if (!doc["domain"].is_string()) throw std::runtime_error(where + ": \"domain\" must be a string");
        domain = doc["domain"].get<std::string>();
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
  const std::string text_path = prefix + ".train.txt";
  {
    std::ofstream text(text_path, std::ios::trunc);
    for_each_document(inputs, "all", [&](const std::string& doc, const std::string&) { text << doc << "\n"; });
  }
  moetrain::data::train_tokenizer({text_path}, a.integer("vocab-size"), prefix);
  std::remove(text_path.c_str());
  std::printf("{\"tokenizer\": \"%s.model\", \"vocab_size\": %lld}\n", prefix.c_str(), static_cast<long long>(a.integer("vocab-size")));
  return 0;
}

int encode(const Args& a) {
  auto inputs = a.values.count("input") ? a.values.at("input") : std::vector<std::string>{};
  if (inputs.empty()) throw UsageError("--input is required");
  moetrain::data::Tokenizer tokenizer(a.one("tokenizer"));
  const std::string prefix = a.one("output-prefix");
  moetrain::data::IndexedDatasetWriter writer(prefix, tokenizer.vocab_size());
  std::vector<std::string> domains;
  std::map<std::string, std::pair<int64_t, int64_t>> per_domain;  // documents, tokens
  for_each_document(inputs, a.optional("domain", "all"), [&](const std::string& text, const std::string& domain) {
    auto ids = tokenizer.encode_document(text);
    writer.add_document(ids);
    domains.push_back(domain);
    per_domain[domain].first += 1;
    per_domain[domain].second += static_cast<int64_t>(ids.size());
  });
  writer.finish();
  moetrain::data::write_domains(prefix, domains);
  std::printf("{\"prefix\": \"%s\", \"documents\": %zu, \"domains\": {", prefix.c_str(), domains.size());
  bool first = true;
  for (const auto& [d, c] : per_domain) {
    std::printf("%s\"%s\": {\"documents\": %lld, \"tokens\": %lld}", first ? "" : ", ", d.c_str(),
                static_cast<long long>(c.first), static_cast<long long>(c.second));
    first = false;
  }
  std::printf("}}\n");
  return 0;
}

int stats(const Args& a) {
  const std::string prefix = a.one("prefix");
  auto ds = IndexedDataset::open(prefix);
  auto domains = moetrain::data::read_domains(prefix, ds);
  std::map<std::string, std::pair<int64_t, int64_t>> per_domain;
  for (int64_t d = 0; d < ds.num_documents(); ++d) {
    per_domain[domains[d]].first += 1;
    per_domain[domains[d]].second += ds.document_range(d).second;
  }
  std::printf("{\"prefix\": \"%s\", \"documents\": %lld, \"tokens\": %lld, \"dtype_code\": %d, \"max_token_id\": %lld, \"domains\": {",
              prefix.c_str(), static_cast<long long>(ds.num_documents()), static_cast<long long>(ds.num_tokens()),
              static_cast<int>(ds.dtype()), static_cast<long long>(ds.max_token_id()));
  bool first = true;
  for (const auto& [d, c] : per_domain) {
    std::printf("%s\"%s\": {\"documents\": %lld, \"tokens\": %lld}", first ? "" : ", ", d.c_str(),
                static_cast<long long>(c.first), static_cast<long long>(c.second));
    first = false;
  }
  std::printf("}}\n");
  return 0;
}

int unigram(const Args& a) {
  auto train = IndexedDataset::open(a.one("train"));
  auto valid = IndexedDataset::open(a.one("valid"));
  std::printf("{\"unigram_ppl\": %.6f}\n", moetrain::data::unigram_perplexity(train, valid, a.integer("vocab-size")));
  return 0;
}

int decode(const Args& a) {
  moetrain::data::Tokenizer tokenizer(a.one("tokenizer"));
  auto ds = IndexedDataset::open(a.one("prefix"));
  const auto [first, length] = ds.document_range(a.integer("document"));
  std::vector<int64_t> ids(length);
  ds.read_tokens(first, length, ids.data());
  std::printf("%s\n", tokenizer.decode(std::vector<int32_t>(ids.begin(), ids.end())).c_str());
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
    Args args;
    for (int i = 2; i < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag.rfind("--", 0) != 0) throw UsageError("unexpected argument \"" + flag + "\"");
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
