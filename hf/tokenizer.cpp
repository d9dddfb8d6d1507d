#include "hf/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace moetrain::hf {
namespace {

using nlohmann::json;

// Minimal protobuf wire-format reader: enough to walk ModelProto's fields.
struct Wire {
  const std::string& s;
  size_t pos, end;
  bool done() const { return pos >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= end) throw std::runtime_error("truncated varint");
      const auto byte = static_cast<unsigned char>(s[pos++]);
      v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return v;
    }
    throw std::runtime_error("varint longer than 10 bytes");
  }
  // Reads a tag; for length-delimited fields returns the payload's [begin, end) through `sub`.
  bool next(int& field, int& type, size_t& sub_begin, size_t& sub_end, uint64_t& value) {
    if (done()) return false;
    const uint64_t tag = varint();
    field = static_cast<int>(tag >> 3), type = static_cast<int>(tag & 7);
    switch (type) {
      case 0: value = varint(); break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2: {
        const uint64_t n = varint();
        if (n > end - pos) throw std::runtime_error("length-delimited field runs past the end");
        sub_begin = pos, sub_end = pos + n, pos += n;
        break;
      }
      default: throw std::runtime_error("unsupported wire type " + std::to_string(type));
    }
    if (pos > end) throw std::runtime_error("field runs past the end");
    return true;
  }
};

}  // namespace

SpecialTokens SentencePieceModel::special() const {
  SpecialTokens t;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto& p = pieces[i];
    const auto id = static_cast<int64_t>(i);
    if (p.type == 2) t.unk = id;
    if (p.type != 3) continue;  // control pieces only
    if (p.text == "<s>") t.bos = id;
    if (p.text == "</s>") t.eos = id;
    if (p.text == "<pad>") t.pad = id;
  }
  return t;
}

SentencePieceModel read_sentencepiece(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open the tokenizer");
  SentencePieceModel out;
  std::stringstream buf;
  buf << in.rdbuf();
  out.bytes = buf.str();
  try {
    Wire top{out.bytes, 0, out.bytes.size()};
    int field, type;
    size_t b = 0, e = 0;
    uint64_t v = 0;
    while (top.next(field, type, b, e, v)) {
      if (field == 1 && type == 2) {  // repeated SentencePiece pieces
        SentencePieceModel::Piece piece;
        Wire p{out.bytes, b, e};
        int f2, t2;
        size_t b2 = 0, e2 = 0;
        uint64_t v2 = 0;
        while (p.next(f2, t2, b2, e2, v2)) {
          if (f2 == 1 && t2 == 2) piece.text = out.bytes.substr(b2, e2 - b2);
          if (f2 == 3 && t2 == 0) piece.type = static_cast<int>(v2);
        }
        out.pieces.push_back(piece);
      } else if (field == 3 && type == 2) {  // NormalizerSpec
        Wire n{out.bytes, b, e};
        int f2, t2;
        size_t b2 = 0, e2 = 0;
        uint64_t v2 = 0;
        while (n.next(f2, t2, b2, e2, v2))
          if (f2 == 3 && t2 == 0) out.add_dummy_prefix = v2 != 0;
      }
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not a SentencePiece model (" + e.what() +
                             "); pass the tokenizer.model that made the data");
  }
  if (out.pieces.empty())
    throw std::runtime_error(
        path + ": not a SentencePiece model (no pieces); pass the tokenizer.model that made the data");
  return out;
}

void write_tokenizer_files(const std::string& dir, const SentencePieceModel& sp, int64_t model_vocab,
                           const std::string& path, const std::string& flag) {
  const auto n = static_cast<int64_t>(sp.pieces.size());
  if (n > model_vocab) {
    throw std::runtime_error(flag + " " + path + ": the tokenizer has " + std::to_string(n) +
                             " pieces but the model's vocab_size is " + std::to_string(model_vocab) +
                             "; pass the tokenizer the training data was encoded with");
  }
  const SpecialTokens s = sp.special();
  auto piece = [&](int64_t id) {
    return id >= 0 ? json(sp.pieces[static_cast<size_t>(id)].text) : json(nullptr);
  };
  // LlamaTokenizer reads tokenizer.model with the `sentencepiece` package. moetrain's data carries no
  // <s> at document starts and </s> at document ends (appended by moe-data), so the tokenizer adds
  // neither; add_prefix_space mirrors the model's add_dummy_prefix.
  const json config = {
      {"tokenizer_class", "LlamaTokenizer"},
      {"add_bos_token", false},
      {"add_eos_token", false},
      {"add_prefix_space", sp.add_dummy_prefix},
      {"legacy", false},
      {"clean_up_tokenization_spaces", false},
      {"bos_token", piece(s.bos)},
      {"eos_token", piece(s.eos)},
      {"unk_token", piece(s.unk)},
      {"pad_token", piece(s.pad)},
  };
  json special = json::object();
  for (const auto& [key, id] : {std::pair<const char*, int64_t>{"bos_token", s.bos},
                                {"eos_token", s.eos},
                                {"unk_token", s.unk},
                                {"pad_token", s.pad}}) {
    if (id >= 0) special[key] = sp.pieces[static_cast<size_t>(id)].text;
  }
  io::write_file_synced(dir + "/tokenizer.model", sp.bytes);
  io::write_file_synced(dir + "/tokenizer_config.json", config.dump(2) + "\n");
  io::write_file_synced(dir + "/special_tokens_map.json", special.dump(2) + "\n");
}

namespace {

// What AutoTokenizer and generate() read from a model directory besides the weights and config.json.
constexpr const char* kHfTokenizerFiles[] = {"tokenizer.json",
                                             "tokenizer_config.json",
                                             "special_tokens_map.json",
                                             "vocab.json",
                                             "merges.txt",
                                             "added_tokens.json",
                                             "chat_template.jinja",
                                             "chat_template.json",
                                             "generation_config.json"};

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

json parse_json_file(const std::string& path, const std::string& flag) {
  try {
    return json::parse(read_text(path));
  } catch (const json::exception& e) {
    throw std::runtime_error(flag + ": " + path + " is not valid JSON (" + e.what() + ")");
  }
}

}  // namespace

HfTokenizerDir read_hf_tokenizer_dir(const std::string& dir, const std::string& flag) {
  HfTokenizerDir out;
  out.dir = dir;
  const std::string main = dir + "/tokenizer.json";
  if (!is_file(main)) {
    throw std::runtime_error(flag + " " + dir +
                             ": has no tokenizer.json; pass a Hugging Face model or tokenizer directory "
                             "(as Qwen2, Qwen3 and OLMoE ship them) or a SentencePiece .model file");
  }
  for (const char* name : kHfTokenizerFiles)
    if (is_file(dir + "/" + name)) out.files.push_back(name);

  // Token ids: the model's vocabulary ({"piece": id} for BPE and WordPiece, [[piece, score], ...] for
  // Unigram) and the added tokens, which hold the special ones.
  const json tok = parse_json_file(main, flag);
  std::map<std::string, int64_t> ids;
  auto note = [&](const std::string& piece, int64_t id) {
    if (id < 0)
      throw std::runtime_error(flag + ": " + main + " gives \"" + piece + "\" the negative id " +
                               std::to_string(id));
    ids.emplace(piece, id);
    out.size = std::max(out.size, id + 1);
  };
  try {
    const json& vocab = tok.at("model").at("vocab");
    if (vocab.is_object()) {
      for (const auto& [piece, id] : vocab.items()) note(piece, id.get<int64_t>());
    } else {
      for (size_t i = 0; i < vocab.size(); ++i)
        note(vocab[i].at(0).get<std::string>(), static_cast<int64_t>(i));
    }
    if (tok.contains("added_tokens"))
      for (const auto& t : tok.at("added_tokens"))
        note(t.at("content").get<std::string>(), t.at("id").get<int64_t>());
  } catch (const json::exception& e) {
    throw std::runtime_error(flag + ": " + main +
                             " is not a tokenizers file (model.vocab, added_tokens: " + e.what() + ")");
  }
  if (out.size == 0) throw std::runtime_error(flag + ": " + main + " has no tokens");

  // Special tokens: named in tokenizer_config.json (a string, or {"content": ...}).
  const std::string config_path = dir + "/tokenizer_config.json";
  if (is_file(config_path)) {
    const json config = parse_json_file(config_path, flag);
    for (const auto& [key, slot] : {std::pair<const char*, int64_t*>{"bos_token", &out.special.bos},
                                    {"eos_token", &out.special.eos},
                                    {"pad_token", &out.special.pad},
                                    {"unk_token", &out.special.unk}}) {
      if (!config.contains(key) || config[key].is_null()) continue;
      const json& v = config[key];
      const std::string piece = v.is_string()                            ? v.get<std::string>()
                                : v.is_object() && v.contains("content") ? v["content"].get<std::string>()
                                                                         : "";
      const auto found = ids.find(piece);
      if (found == ids.end()) {
        throw std::runtime_error(flag + ": " + config_path + " names " + key + " \"" + piece +
                                 "\", which is not a token of " + main +
                                 "; the files belong to different tokenizers");
      }
      *slot = found->second;
    }
  }
  return out;
}

void copy_hf_tokenizer_files(const std::string& out_dir, const HfTokenizerDir& tokenizer, int64_t model_vocab,
                             const std::string& flag) {
  if (tokenizer.size > model_vocab) {
    throw std::runtime_error(flag + " " + tokenizer.dir + ": the tokenizer has ids up to " +
                             std::to_string(tokenizer.size - 1) + " but the model's vocab_size is " +
                             std::to_string(model_vocab) +
                             "; pass the tokenizer the training data was encoded with");
  }
  for (const auto& name : tokenizer.files)
    io::write_file_synced(out_dir + "/" + name, read_text(tokenizer.dir + "/" + name));
}

}  // namespace moetrain::hf
