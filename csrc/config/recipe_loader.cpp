#include "csrc/config/recipe_loader.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <climits>
#include <cstdlib>

#include <algorithm>
#include <fstream>
#include <regex>
#include <sstream>

namespace moetrain::config {
namespace {

namespace pb = google::protobuf;

std::string known_fields(const pb::Descriptor* d) {
  std::string out;
  for (int i = 0; i < d->field_count(); ++i) out += (i ? ", " : "") + d->field(i)->name();
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// "unknown field" help: the message's fields and the closest name when it is a likely typo.
std::string unknown_field_help(const pb::Descriptor* d, const std::string& name) {
  std::string best;
  size_t best_dist = 3;
  for (int i = 0; i < d->field_count(); ++i) {
    size_t dist = edit_distance(name, d->field(i)->name());
    if (dist < best_dist) best_dist = dist, best = d->field(i)->name();
  }
  std::string help = best.empty() ? "" : "did you mean \"" + best + "\"? ";
  return help + "known fields: " + known_fields(d);
}

// Rewrites protobuf's parser messages into ones that say what to do; `docs` documents the schema.
std::string explain(const std::string& message, const std::string& docs) {
  static const std::regex unknown(R"(Message type \"([\w.]+)\" has no field named \"(\w+)\"\.?)");
  std::smatch m;
  if (std::regex_search(message, m, unknown)) {
    const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(m[1]);
    std::string where = d ? d->name() : std::string(m[1]);
    return "unknown field \"" + std::string(m[2]) + "\" in " + where + "; " +
           (d ? unknown_field_help(d, m[2]) : "see " + docs);
  }
  return message + " (see " + docs + " for the field's type)";
}

// Keeps the first parse error: its 1-based position and its explained message.
class CollectErrors : public pb::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string docs) : docs_(std::move(docs)) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!message_.empty()) return;
    position_ = std::to_string(line + 1) + ":" + std::to_string(column + 1);
    message_ = explain(message, docs_);
  }
  const std::string& position() const { return position_; }
  const std::string& message() const { return message_; }

 private:
  std::string docs_;
  std::string position_;
  std::string message_;
};

void fill_message_defaults(pb::Message& msg) {
  const pb::Descriptor* d = msg.GetDescriptor();
  const pb::Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      fill_message_defaults(*r->MutableMessage(&msg, f));
      continue;
    }
    if (r->HasField(msg, f)) continue;
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32: r->SetInt32(&msg, f, r->GetInt32(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_INT64: r->SetInt64(&msg, f, r->GetInt64(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(&msg, f, r->GetUInt32(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(&msg, f, r->GetUInt64(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(&msg, f, r->GetDouble(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(&msg, f, r->GetFloat(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_BOOL: r->SetBool(&msg, f, r->GetBool(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(&msg, f, r->GetEnum(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_STRING: r->SetString(&msg, f, r->GetString(msg, f)); break;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE: break;
    }
  }
}

}  // namespace

void parse_text(const std::string& text, const std::string& source, const std::string& docs,
                google::protobuf::Message& out, google::protobuf::TextFormat::ParseInfoTree* tree) {
  pb::TextFormat::Parser parser;
  CollectErrors errors(docs);
  parser.RecordErrorsTo(&errors);
  if (tree) parser.WriteLocationsTo(tree);
  if (!parser.ParseFromString(text, &out))
    throw RecipeError(source + ":" + errors.position() + ": " + errors.message());
}

namespace {

// Parses like parse_recipe and records where each field set in the text was set.
Recipe parse_with_locations(const std::string& text, const std::string& source,
                            pb::TextFormat::ParseInfoTree* tree) {
  Recipe recipe;
  parse_text(text, source, "docs/recipes.md", recipe, tree);
  return recipe;
}

// The text form of the value of a --set of field `f`. Strings may be given bare: a bare word is quoted
// (" and \ escaped) and a list of bare words, [gate,up], becomes ["gate","up"]. Anything else is as written.
std::string value_text(const pb::FieldDescriptor* f, const std::string& value) {
  const bool is_string = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING;
  const bool bare_list = !value.empty() && value[0] == '[' && value.find('"') == std::string::npos;
  if (f->is_repeated() && is_string && bare_list) {
    std::string quoted = "[";
    std::string item;
    auto flush = [&] {
      while (!item.empty() && item.back() == ' ') item.pop_back();
      if (!item.empty()) quoted += (quoted.size() > 1 ? ",\"" : "\"") + item + "\"";
      item.clear();
    };
    for (size_t c = 1; c < value.size(); ++c) {
      if (value[c] == ',' || value[c] == ']') flush();
      else if (!(item.empty() && value[c] == ' ')) item += value[c];
    }
    return quoted + "]";
  }
  if (is_string && (value.empty() || (value[0] != '"' && !(f->is_repeated() && value[0] == '[')))) {
    std::string quoted = "\"";
    for (char c : value) quoted += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
    return quoted + "\"";
  }
  return value;
}

// Sets field `f` of `msg` from `text` ("leaf: value"): parsed into a scratch message of msg's type, then
// the field is moved across, so type errors come from the same parser as the file's ("WHERE: error").
void set_field(pb::Message* msg, const pb::FieldDescriptor* f, const std::string& text,
               const std::string& where) {
  std::unique_ptr<pb::Message> scratch(msg->New());
  pb::TextFormat::Parser parser;
  CollectErrors errors("docs/recipes.md");
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, scratch.get())) {
    throw RecipeError(where + ": " + errors.message());
  }
  msg->GetReflection()->ClearField(msg, f);
  std::vector<const pb::FieldDescriptor*> only{f};
  msg->GetReflection()->SwapFields(msg, scratch.get(), only);
}

// origins[path] = "source:line:col" for every field set in `msg` (sections are walked into).
void record_origins(const pb::Message& msg, const pb::TextFormat::ParseInfoTree* tree,
                    const std::string& prefix, const std::string& source, FieldOrigins& origins) {
  std::vector<const pb::FieldDescriptor*> fields;
  msg.GetReflection()->ListFields(msg, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated()) {
      record_origins(msg.GetReflection()->GetMessage(msg, f), tree ? tree->GetTreeForNested(f, -1) : nullptr,
                     path, source, origins);
      continue;
    }
    // ParseInfoTree indexes a singular field as -1 and a list by element (the first one marks the list).
    const pb::TextFormat::ParseLocation at = tree ? tree->GetLocation(f, f->is_repeated() ? 0 : -1)
                                                  : pb::TextFormat::ParseLocation();
    origins[path] = at.line >= 0
                        ? source + ":" + std::to_string(at.line + 1) + ":" + std::to_string(at.column + 1)
                        : source;
  }
}

}  // namespace

Recipe parse_recipe(const std::string& text, const std::string& source) {
  return parse_with_locations(text, source, nullptr);
}

void apply_override(Recipe& recipe, const std::string& assignment) {
  const std::string where = "--set " + assignment;
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw RecipeError(where + ": expected field.path=value, for example --set train.steps=100");
  }
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);

  // Walk the path through the schema so an unknown name is reported with its parent's fields.
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  pb::Message* msg = &recipe;
  std::string prefix;
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::FieldDescriptor* f = d->FindFieldByName(parts[i]);
    const std::string parent = prefix.empty() ? "the recipe" : prefix;
    if (!f) {
      throw RecipeError(where + ": unknown field \"" + parts[i] + "\" in " + parent + "; " +
                        unknown_field_help(d, parts[i]));
    }
    const bool last = i + 1 == parts.size();
    const bool is_msg = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    if (!last && (!is_msg || f->is_repeated())) {
      throw RecipeError(where + ": \"" + prefix + (prefix.empty() ? "" : ".") + parts[i] +
                        "\" is a value, not a section; override it as " + prefix +
                        (prefix.empty() ? "" : ".") + parts[i] + "=VALUE");
    }
    if (last && is_msg) {
      throw RecipeError(where + ": \"" + path +
                        "\" is a section; set one of its fields: " + known_fields(f->message_type()));
    }
    if (last) {
      set_field(msg, f, parts[i] + ": " + value_text(f, value), where);
      return;
    }
    msg = msg->GetReflection()->MutableMessage(msg, f);
    prefix += (prefix.empty() ? "" : ".") + parts[i];
  }
}

void fill_defaults(Recipe& recipe) { fill_message_defaults(recipe); }

std::string to_text(const Recipe& recipe) {
  std::string out;
  pb::TextFormat::Printer printer;
  printer.PrintToString(recipe, &out);
  return out;
}

void overlay(pb::Message& base, const pb::Message& top) {
  const pb::Reflection* r = top.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(top, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    if (!f->is_repeated() && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      overlay(*base.GetReflection()->MutableMessage(&base, f), r->GetMessage(top, f));
      continue;
    }
    base.GetReflection()->ClearField(&base, f);
    std::unique_ptr<pb::Message> copy(top.New());
    copy->CopyFrom(top);
    std::vector<const pb::FieldDescriptor*> only{f};
    base.GetReflection()->SwapFields(&base, copy.get(), only);
  }
}

namespace {

// Parses `path` and the chain of bases under it; `chain` holds the files being loaded (cycle check).
Recipe load_with_bases(const std::string& path, std::vector<std::string>& chain, const std::string& named_by,
                       FieldOrigins& origins) {
  std::ifstream in(path);
  if (!in) {
    throw RecipeError(named_by.empty() ? path + ": cannot open recipe file; check the path given to --recipe"
                                       : named_by + ": base \"" + path +
                                             "\" cannot be opened; base paths are "
                                             "relative to the recipe that names them");
  }
  // POSIX realpath, not std::filesystem: see Note [remove_tree] in trainer/checkpoint.cpp (libtorch.so
  // exports its own std::filesystem, which may bind ahead of libstdc++'s).
  char resolved[PATH_MAX];
  const std::string canonical = ::realpath(path.c_str(), resolved) ? resolved : path;
  for (const auto& c : chain) {
    if (c == canonical) {
      std::string cycle;
      for (const auto& link : chain) cycle += link + " -> ";
      throw RecipeError("recipe base cycle: " + cycle + canonical + "; remove one of the base fields");
    }
  }
  chain.push_back(canonical);
  std::stringstream text;
  text << in.rdbuf();
  pb::TextFormat::ParseInfoTree locations;
  Recipe recipe = parse_with_locations(text.str(), path, &locations);
  if (recipe.has_base()) {
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    const std::string base_path = !recipe.base().empty() && recipe.base()[0] == '/' ? recipe.base()
                                                                                    : dir + recipe.base();
    Recipe merged = load_with_bases(base_path, chain, path, origins);  // the base's origins first...
    recipe.clear_base();
    overlay(merged, recipe);
    record_origins(recipe, &locations, "", path, origins);  // ...then this file's, which win
    recipe = merged;
  } else {
    record_origins(recipe, &locations, "", path, origins);
  }
  chain.pop_back();
  return recipe;
}

}  // namespace

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::vector<std::string> chain;
  FieldOrigins origins;
  Recipe recipe = load_with_bases(path, chain, "", origins);
  for (const std::string& o : overrides) {
    apply_override(recipe, o);
    origins[o.substr(0, o.find('='))] = "--set " + o;
  }
  fill_defaults(recipe);
  recipe.clear_base();  // resolved: the bases are folded in
  validate_recipe(recipe, path, &origins);
  return recipe;
}

}  // namespace moetrain::config
