#include "tools/cli.h"

#include <algorithm>
#include <cstdio>

namespace moetrain::tools::cli {
namespace {

// Edits (insertions, deletions, substitutions) between a and b.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// "  LABEL  help", the help's lines aligned at `column`.
std::string help_lines(const std::string& label, const std::string& help, size_t column) {
  std::string out = "  " + label;
  out += out.size() + 2 <= column ? std::string(column - out.size(), ' ') : "  ";
  for (const char c : help) out += c == '\n' ? "\n" + std::string(column, ' ') : std::string(1, c);
  return out + "\n";
}

}  // namespace

Command::Command(std::string tool, std::string synopsis)
    : tool_(std::move(tool)), synopsis_(std::move(synopsis)) {}

Command& Command::declare(Flag flag) {
  flags_.push_back(std::move(flag));
  return *this;
}

Command& Command::option(const std::string& name, const std::string& meta, const std::string& help) {
  return declare({name, meta, help, Kind::kOption});
}

Command& Command::required(const std::string& name, const std::string& meta, const std::string& help) {
  return declare({name, meta, help, Kind::kRequired});
}

Command& Command::repeated(const std::string& name, const std::string& meta, const std::string& help) {
  return declare({name, meta, help, Kind::kRepeated});
}

Command& Command::toggle(const std::string& name, const std::string& help) {
  return declare({name, "", help, Kind::kToggle});
}

Command& Command::retired(const std::string& name, const std::string& fix) {
  return declare({name, "", fix, Kind::kRetired});
}

Command& Command::operand(const std::string& meta, const std::string& help, const std::string& missing) {
  operands_.push_back({meta, help, missing});
  return *this;
}

const Command::Flag* Command::find(const std::string& name) const {
  for (const auto& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

std::string Command::unknown(const std::string& arg) const {
  std::string message = "unknown argument \"" + arg + "\"";
  for (const auto& f : flags_) {
    if (f.kind != Kind::kRetired && edit_distance(arg, f.name) <= 2)
      return message + "; did you mean " + f.name + "?";
  }
  return message + "; the flags are listed below";
}

void Command::take_flag(const Flag& flag, int argc, char** argv, int& i) {
  const bool next = i + 1 < argc;
  const std::string value = next ? argv[i + 1] : "";
  if (flag.kind == Kind::kRetired) {
    const bool has_value = next && value.rfind("--", 0) != 0;
    throw UsageError(flag.name + (has_value ? " " + value : "") + ": " + flag.help);
  }
  if (flag.kind == Kind::kToggle) {
    if (next && (value == "0" || value == "1")) {
      throw UsageError(flag.name + " " + value + ": " + flag.name + " takes no value; pass " + flag.name +
                       " alone to turn it on, or leave it out");
    }
    values_[flag.name].emplace_back();
    return;
  }
  if (!next) throw UsageError(flag.name + " needs a value; pass " + flag.name + " " + flag.meta);
  auto& slot = values_[flag.name];
  if (flag.kind != Kind::kRepeated) slot.clear();
  slot.push_back(value);
  ++i;
}

void Command::check_required() const {
  if (given_operands_.size() < operands_.size()) throw UsageError(operands_[given_operands_.size()].missing);
  for (const auto& f : flags_) {
    if (f.kind == Kind::kRequired && !has(f.name)) {
      throw UsageError(f.name + " is required; pass " + f.name + " " + f.meta + " (" +
                       f.help.substr(0, f.help.find('\n')) + ")");
    }
  }
}

bool Command::parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return false;
    if (arg.rfind("--", 0) == 0) {
      const Flag* flag = find(arg);
      if (!flag) throw UsageError(unknown(arg));
      take_flag(*flag, argc, argv, i);
    } else if (given_operands_.size() < operands_.size()) {
      given_operands_.push_back(arg);
    } else {
      throw UsageError("unexpected argument \"" + arg + "\"; " + tool_ + " takes " +
                       (operands_.empty() ? std::string("only flags") : "one " + operands_[0].meta) +
                       " and the flags below");
    }
  }
  check_required();
  return true;
}

int Command::run(int argc, char** argv, const std::function<int()>& body, int first, int failure) {
  try {
    if (!parse(argc, argv, first)) {
      std::printf("%s", usage().c_str());
      return 0;
    }
    return body();
  } catch (const UsageError& e) {
    return fail(e.what());
  } catch (const std::exception& e) {
    print_error(tool_, e.what());
    return failure;
  }
}

int Command::fail(const std::string& message) const {
  std::fprintf(stderr, "%s: error: %s\n%s", tool_.c_str(), message.c_str(), usage().c_str());
  return 2;
}

bool Command::has(const std::string& name) const { return values_.count(name) != 0; }

std::string Command::get(const std::string& name, const std::string& fallback) const {
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Command::all(const std::string& name) const {
  const auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

const std::string& Command::operand(size_t index) const { return given_operands_.at(index); }

int64_t Command::integer(const std::string& name, int64_t fallback, int64_t min,
                         const std::string& expected) const {
  if (!has(name)) return fallback;
  const std::string value = get(name);
  try {
    size_t used = 0;
    const long long v = std::stoll(value, &used);
    if (used == value.size() && v >= min) return v;
  } catch (const std::exception&) {
  }
  throw UsageError(name + " " + value + ": " +
                   (!expected.empty() ? expected
                    : min == 1        ? std::string("expected a positive integer")
                    : min == 0        ? std::string("expected a non-negative integer")
                                      : "expected an integer >= " + std::to_string(min)));
}

std::string Command::choice(const std::string& name, const std::vector<std::string>& choices,
                            const std::string& fallback, const std::string& expected) const {
  if (!has(name)) return fallback;
  const std::string value = get(name);
  if (std::find(choices.begin(), choices.end(), value) != choices.end()) return value;
  std::string list;
  for (size_t i = 0; i < choices.size(); ++i)
    list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  throw UsageError(name + " " + value + ": " + (expected.empty() ? "expected " + list : expected));
}

std::string Command::usage() const {
  size_t column = 0;
  for (const auto& o : operands_) column = std::max(column, o.meta.size());
  for (const auto& f : flags_) column = std::max(column, f.name.size() + 1 + f.meta.size());
  column = std::min<size_t>(column + 4, 26);
  std::string out = synopsis_;
  for (const auto& o : operands_) out += help_lines(o.meta, o.help, column);
  for (const auto& f : flags_) {
    if (f.kind != Kind::kRetired)
      out += help_lines(f.meta.empty() ? f.name : f.name + " " + f.meta, f.help, column);
  }
  return out;
}

int setup_error(const std::string& tool, const std::function<void()>& setup) {
  try {
    setup();
  } catch (const std::invalid_argument& e) {
    print_error(tool, e.what());
    return 2;
  }
  return 0;
}

void print_error(const std::string& tool, const std::string& message, int rank) {
  std::fprintf(stderr, "%s: error%s: %s\n", tool.c_str(),
               rank >= 0 ? (" (rank " + std::to_string(rank) + ")").c_str() : "", message.c_str());
}

}  // namespace moetrain::tools::cli
