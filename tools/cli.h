// The tools' command lines, one shape for all: flags declared with their help (the usage text is made from
// the declarations), `--flag value` arguments, bare switches, positional operands, and one form of error:
//   TOOL: error: MESSAGE            (+ the usage text, exit 2, for a usage error)
// where MESSAGE names the flag, the value and the fix. `--flag=value` is not taken: no tool ever took it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetrain::tools::cli {

// A command line the tool does not take. Its message names the flag, the value and the fix; main prints
// it with the usage text and exits 2 (Command::run does both).
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class Command {
 public:
  // `tool`: the program's name in errors ("moe-eval"). `synopsis`: the first lines of the usage text
  // ("usage: moe-eval --checkpoint STEP_DIR ..."), ending in '\n'; the declared flags' help follows.
  Command(std::string tool, std::string synopsis);

  // Declarations, listed in the usage text in this order. `meta` names the value ("FILE"); `help` may span
  // lines ('\n'). Given twice, a flag keeps its last value. A required flag missing is a usage error
  // that names it and what to pass.
  Command& option(const std::string& name, const std::string& meta, const std::string& help);
  Command& required(const std::string& name, const std::string& meta, const std::string& help);
  // Taken any number of times; all() returns the values in order.
  Command& repeated(const std::string& name, const std::string& meta, const std::string& help);
  // A bare switch (no value): has() says whether it was given. Followed by 0 or 1 it is a usage error
  // saying it takes no value.
  Command& toggle(const std::string& name, const std::string& help);
  // The next operand (an argument not starting with "--"), in order; a missing one is a usage error with
  // `missing` as its message. Operands beyond those declared are usage errors.
  Command& operand(const std::string& meta, const std::string& help, const std::string& missing);
  // A flag the tool no longer takes: passing it (with its value, if any) is a usage error
  // "NAME VALUE: FIX", FIX naming the flag that replaced it.
  Command& retired(const std::string& name, const std::string& fix);

  // Reads argv[first..]. Throws UsageError. Returns false for --help or -h (the caller prints usage()
  // to stdout and exits 0).
  bool parse(int argc, char** argv, int first = 1);
  // parse(), then body(); the whole of a tool's main. --help: the usage on stdout, 0. A UsageError
  // from either: "TOOL: error: MESSAGE" and the usage on stderr, 2. Any other exception from body:
  // "TOOL: error: MESSAGE", `failure` (1). Otherwise body's return value.
  int run(int argc, char** argv, const std::function<int()>& body, int first = 1, int failure = 1);

  // A usage error found outside parse(): "TOOL: error: MESSAGE" and the usage on stderr; returns 2.
  int fail(const std::string& message) const;

  bool has(const std::string& name) const;
  // The flag's value, or `fallback` when it was not given.
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::vector<std::string> all(const std::string& name) const;
  const std::string& operand(size_t index) const;
  // The flag's value as an integer >= `min`, or `fallback` when not given. Otherwise a UsageError
  // "NAME VALUE: " + `expected` (default: "expected a positive integer", or "non-negative" for min 0).
  int64_t integer(const std::string& name, int64_t fallback, int64_t min,
                  const std::string& expected = "") const;
  // The flag's value when it is one of `choices`, `fallback` when not given; otherwise a UsageError
  // "NAME VALUE: expected A, B or C" (or `expected` when given).
  std::string choice(const std::string& name, const std::vector<std::string>& choices,
                     const std::string& fallback, const std::string& expected = "") const;

  const std::string& tool() const { return tool_; }
  std::string usage() const;

 private:
  enum class Kind { kOption, kRequired, kRepeated, kToggle, kRetired };
  struct Flag {
    std::string name, meta, help;
    Kind kind;
  };
  struct Operand {
    std::string meta, help, missing;
  };
  Command& declare(Flag flag);
  const Flag* find(const std::string& name) const;
  void take_flag(const Flag& flag, int argc, char** argv, int& i);
  std::string unknown(const std::string& arg) const;
  void check_required() const;

  std::string tool_, synopsis_;
  std::vector<Flag> flags_;
  std::vector<Operand> operands_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> given_operands_;
};

// Runs `setup` (a tool's first step, such as reading an environment variable); a std::invalid_argument from
// it is printed as "TOOL: error: MESSAGE" and returns 2. 0 when it succeeds.
int setup_error(const std::string& tool, const std::function<void()>& setup);

// Prints "TOOL: error: MESSAGE" on stderr, or "TOOL: error (rank R): MESSAGE" when `rank` >= 0 (a
// process of a multi-rank job).
void print_error(const std::string& tool, const std::string& message, int rank = -1);

}  // namespace moetrain::tools::cli
