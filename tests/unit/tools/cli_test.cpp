// tools/cli.h: declared flags, their values and every usage error's wording (the flag, the value, the
// fix), without a process. The tools' own messages and exit codes are checked by tests/e2e.
#include "tools/cli.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace moetrain::tools::cli {
namespace {

// A moe-eval-like command: two required flags, options, a repeated flag, a switch and a retired flag.
Command eval_like() {
  Command cmd("moe-x", "usage: moe-x --checkpoint DIR --data PREFIX [...]\n");
  cmd.required("--checkpoint", "DIR", "a step_* directory\nor a run directory")
      .required("--data", "PREFIX", "token shards")
      .option("--seq-len", "L", "tokens per window")
      .option("--precision", "P", "fp32 or bf16")
      .repeated("--set", "A.B=V", "override")
      .toggle("--breakdown", "phases too")
      .retired("--bf16", "pass --precision fp32|bf16");
  return cmd;
}

// parse() over `args` (after the program name).
bool parse(Command& cmd, std::vector<std::string> args) {
  args.insert(args.begin(), "moe-x");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return cmd.parse(static_cast<int>(argv.size()), argv.data());
}

std::string usage_error(Command cmd, const std::vector<std::string>& args) {
  try {
    parse(cmd, args);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(parsed)";
}

const std::vector<std::string> kRequired{"--checkpoint", "run", "--data", "valid"};

std::vector<std::string> with_required(std::vector<std::string> args) {
  args.insert(args.begin(), kRequired.begin(), kRequired.end());
  return args;
}

TEST(Cli, ValuesRepeatsAndSwitches) {
  Command cmd = eval_like();
  ASSERT_TRUE(parse(cmd, with_required({"--set", "a=1", "--seq-len", "8", "--set", "b=2", "--seq-len", "16",
                                        "--breakdown"})));
  EXPECT_EQ(cmd.get("--checkpoint"), "run");
  EXPECT_EQ(cmd.integer("--seq-len", 0, 1), 16);  // the last value wins
  EXPECT_EQ(cmd.all("--set"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_TRUE(cmd.has("--breakdown"));
  EXPECT_FALSE(cmd.has("--precision"));
  EXPECT_EQ(cmd.get("--precision", "fp32"), "fp32");
  EXPECT_EQ(cmd.choice("--precision", {"fp32", "bf16"}, "fp32"), "fp32");
  EXPECT_EQ(cmd.integer("--missing", 7, 1), 7);
}

TEST(Cli, HelpStopsParsing) {
  Command cmd = eval_like();
  EXPECT_FALSE(parse(cmd, {"--help"}));
  Command again = eval_like();
  EXPECT_FALSE(parse(again, {"--seq-len", "4", "-h"}));  // before the required flags are checked
}

TEST(Cli, UsageErrorsNameTheFlagTheValueAndTheFix) {
  EXPECT_EQ(usage_error(eval_like(), {"--data", "x"}),
            "--checkpoint is required; pass --checkpoint DIR (a step_* directory)");
  EXPECT_EQ(usage_error(eval_like(), with_required({"--seq-len"})),
            "--seq-len needs a value; pass --seq-len L");
  EXPECT_EQ(usage_error(eval_like(), with_required({"--seq-lem", "4"})),
            "unknown argument \"--seq-lem\"; did you mean --seq-len?");
  EXPECT_EQ(usage_error(eval_like(), with_required({"--zzz"})),
            "unknown argument \"--zzz\"; the flags are listed below");
  EXPECT_EQ(usage_error(eval_like(), with_required({"stray"})),
            "unexpected argument \"stray\"; moe-x takes only flags and the flags below");
  EXPECT_EQ(usage_error(eval_like(), with_required({"--bf16", "1"})), "--bf16 1: pass --precision fp32|bf16");
  EXPECT_EQ(usage_error(eval_like(), with_required({"--bf16"})), "--bf16: pass --precision fp32|bf16");
  EXPECT_EQ(usage_error(eval_like(), with_required({"--breakdown", "1"})),
            "--breakdown 1: --breakdown takes no value; pass --breakdown alone to turn it on, or leave it out");
}

TEST(Cli, IntegersAndChoicesAreChecked) {
  Command cmd = eval_like();
  ASSERT_TRUE(parse(cmd, with_required({"--seq-len", "0", "--precision", "fp16"})));
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(message([&] { cmd.integer("--seq-len", 0, 1); }), "--seq-len 0: expected a positive integer");
  EXPECT_EQ(cmd.integer("--seq-len", 5, 0), 0);
  EXPECT_EQ(message([&] { cmd.integer("--seq-len", 0, 1, "give a whole number >= 1"); }),
            "--seq-len 0: give a whole number >= 1");
  EXPECT_EQ(message([&] {
              cmd.choice("--precision", {"fp32", "bf16"}, "fp32");
            }),
            "--precision fp16: expected fp32 or bf16");
  EXPECT_EQ(message([&] {
              cmd.choice("--precision", {"a", "b", "c"}, "a");
            }),
            "--precision fp16: expected a, b or c");
  Command text = eval_like();
  ASSERT_TRUE(parse(text, with_required({"--seq-len", "12abc"})));
  EXPECT_EQ(message([&] { text.integer("--seq-len", 0, 0); }),
            "--seq-len 12abc: expected a non-negative integer");
}

TEST(Cli, Operands) {
  Command cmd("moe-y", "usage: moe-y DIR\n");
  cmd.operand("DIR", "a folder", "name the folder").option("--out", "OUT", "output");
  EXPECT_EQ(usage_error(cmd, {"--out", "o"}), "name the folder");
  EXPECT_EQ(usage_error(cmd, {"a", "b"}), "unexpected argument \"b\"; moe-y takes one DIR and the flags below");
  ASSERT_TRUE(parse(cmd, {"--out", "o", "dir"}));
  EXPECT_EQ(cmd.operand(0), "dir");
}

TEST(Cli, UsageTextListsTheFlagsAligned) {
  EXPECT_EQ(eval_like().usage(),
            "usage: moe-x --checkpoint DIR --data PREFIX [...]\n"
            "  --checkpoint DIR  a step_* directory\n"
            "                    or a run directory\n"
            "  --data PREFIX     token shards\n"
            "  --seq-len L       tokens per window\n"
            "  --precision P     fp32 or bf16\n"
            "  --set A.B=V       override\n"
            "  --breakdown       phases too\n");
}

TEST(Cli, RunTurnsErrorsIntoExitCodes) {
  auto run = [](std::vector<std::string> args, const std::function<int()>& body) {
    Command cmd = eval_like();
    args.insert(args.begin(), "moe-x");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return cmd.run(static_cast<int>(argv.size()), argv.data(), body);
  };
  EXPECT_EQ(run({"--help"}, [] { return 5; }), 0);
  EXPECT_EQ(run(kRequired, [] { return 5; }), 5);
  EXPECT_EQ(run({}, [] { return 5; }), 2);
  EXPECT_EQ(run(kRequired, []() -> int { throw UsageError("--x y: expected z"); }), 2);
  EXPECT_EQ(run(kRequired, []() -> int { throw std::runtime_error("disk full"); }), 1);
}

}  // namespace
}  // namespace moetrain::tools::cli
