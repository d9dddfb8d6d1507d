// Study files: defaults, the runs they plan, and errors that name the field, the value and the fix.
#include "trainer/ablation/study.h"

#include <gtest/gtest.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace moetrain::trainer::ablation {
namespace {

// A temporary folder with two variant recipes over the tiny recipe (tests run in the source root).
class StudyFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/study_test_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    const std::string tiny = std::string(::getcwd(nullptr, 0)) + "/recipes/pretrain/tiny.textproto";
    write("v/base.textproto", "base: \"" + tiny + "\"\n");
    write("v/b_bias.textproto", "base: \"base.textproto\"\nrouting { bias_update_rate: 0.001 }\n");
    write("v/a_aux.textproto", "base: \"base.textproto\"\nrouting { aux_loss_coeff: 0.01 }\n");
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string write(const std::string& name, const std::string& text) {
    if (name.find('/') != std::string::npos)
      ::mkdir((dir_ + "/" + name.substr(0, name.find('/'))).c_str(), 0755);
    std::ofstream(dir_ + "/" + name) << text;
    return dir_ + "/" + name;
  }
  // The message load_study throws for a study file of `text`.
  std::string error_of(const std::string& text) {
    try {
      load_study(write("s.textproto", text));
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::string dir_;
};

TEST_F(StudyFiles, DefaultsAreThreeSeedsAndTheFirstVariantAsBaseline) {
  const Study s = load_study(
      write("s.textproto", "variants_dir: \"v\"\nsteps: 7\nset: \"train.eval_interval=7\"\n"));
  ASSERT_EQ(s.variants.size(), 2u);
  EXPECT_EQ(s.variants[0].name, "a_aux");  // name order; base.textproto is not a variant
  EXPECT_EQ(s.baseline, "a_aux");
  EXPECT_EQ(s.seeds, (std::vector<uint64_t>{1234, 1235, 1236}));
  const auto runs = plan_runs(s, "/out");
  ASSERT_EQ(runs.size(), 6u);
  EXPECT_EQ(runs[4].dir, "/out/runs/b_bias/seed-1235");
  EXPECT_EQ(runs[4].steps, 7);
  EXPECT_EQ(runs[4].overrides,
            (std::vector<std::string>{"train.eval_interval=7", "train.steps=7", "train.seed=1235"}));
}

TEST_F(StudyFiles, TokenBudgetBecomesSteps) {
  // tiny: 16 sequences x 128 tokens per step, so 5000 tokens take ceil(5000 / 2048) = 3 steps.
  const Study s = load_study(
      write("s.textproto", "variants: \"v/b_bias.textproto\"\nseeds: [7]\ntokens: 5000\n"));
  const auto runs = plan_runs(s, "o");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].steps, 3);
  EXPECT_EQ(s.baseline, "b_bias");
}

TEST_F(StudyFiles, FolderFormIsOneSeed) {
  const Study s = folder_study(dir_ + "/v");
  EXPECT_EQ(s.seeds, (std::vector<uint64_t>{1234}));
  EXPECT_EQ(s.variants.size(), 2u);
}

TEST_F(StudyFiles, ErrorsNameTheFieldTheValueAndTheFix) {
  EXPECT_NE(error_of("variants_dir: \"v\"\nseed: [1]\n")
                .find("unknown field \"seed\" in Study; did you mean \"seeds\"?"),
            std::string::npos);
  EXPECT_NE(error_of("variants_dir: \"v\"\nseeds: [1, 1]\n").find("seeds: 1 is given twice; give distinct seeds"),
            std::string::npos);
  EXPECT_NE(error_of("variants_dir: \"v\"\nbaseline: \"switch\"\n")
                .find("baseline: \"switch\" is not a variant of the study (a_aux, b_bias); name one of them"),
            std::string::npos);
  EXPECT_NE(error_of("variants_dir: \"v\"\nsteps: 5\ntokens: 9\n").find("give one budget, steps or tokens"),
            std::string::npos);
  EXPECT_NE(
      error_of("variants: \"v/nope.textproto\"\n").find("variants: \"v/nope.textproto\" is not a recipe file"),
      std::string::npos);
  EXPECT_NE(error_of("steps: 3\n").find("the study names no variant; add variants_dir"), std::string::npos);
  EXPECT_NE(error_of("variants_dir: \"missing\"\n").find("missing: cannot open the variants folder"),
            std::string::npos);
  Study seeded = load_study(write("s.textproto", "variants_dir: \"v\"\nsteps: 4\n"));
  seeded.sets = {"train.seed=3"};
  EXPECT_THROW(plan_runs(seeded, "o"), std::runtime_error);
  seeded.sets = {"train.steps=3"};
  try {
    plan_runs(seeded, "o");
    FAIL() << "train.steps beside the study's budget";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "set train.steps=3: the study's budget (steps: or tokens:) sets train.steps"),
              std::string::npos)
        << e.what();
  }
  const Study bad_set = load_study(write("s.textproto", "variants_dir: \"v\"\nset: \"train.stepz=3\"\n"));
  try {
    plan_runs(bad_set, "o");
    FAIL() << "a bad override must fail before training";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("variant a_aux"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("stepz"), std::string::npos) << e.what();
  }
}

// Every study file shipped in recipes/ (*.study.textproto) loads and plans; the routing study is
// 3 seeds of its folder at 300 steps.
TEST(Study, TheShippedStudiesPlan) {
  static std::vector<std::string> found;
  nftw(
      "recipes",
      [](const char* path, const struct stat*, int type, struct FTW*) {
    const std::string p = path;
    if (type == FTW_F && p.size() > 16 && p.compare(p.size() - 16, 16, ".study.textproto") == 0)
      found.push_back(p);
    return 0;
      },
      16, FTW_PHYS);
  ASSERT_FALSE(found.empty());
  for (const auto& path : found) EXPECT_NO_THROW(plan_runs(load_study(path), "o")) << path;
  const Study s = load_study("recipes/ablations/routing.study.textproto");
  EXPECT_EQ(s.baseline, "switch_aux");
  const auto runs = plan_runs(s, "o");
  EXPECT_EQ(runs.size(), s.variants.size() * 3);
  EXPECT_EQ(runs.front().steps, 300);
}

}  // namespace
}  // namespace moetrain::trainer::ablation
