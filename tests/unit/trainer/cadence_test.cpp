// The loop's decisions after each step (trainer/cadence.h).
#include <gtest/gtest.h>

#include "trainer/cadence.h"

using moetrain::trainer::Cadence;

namespace {
Cadence cadence() {
  Cadence c;
  c.steps = 10, c.eval_interval = 4, c.save_interval = 3, c.save_final = true, c.exit_interval = 5,
  c.log_interval = 2;
  return c;
}
}  // namespace

TEST(Cadence, EvaluatesOnTheIntervalAndAtTheEnd) {
  const Cadence c = cadence();
  std::vector<int64_t> at;
  for (int64_t s = 1; s <= c.steps; ++s)
    if (c.should_evaluate(s)) at.push_back(s);
  EXPECT_EQ(at, (std::vector<int64_t>{4, 8, 10}));
  Cadence end_only = c;
  end_only.eval_interval = 0;
  EXPECT_FALSE(end_only.should_evaluate(4));
  EXPECT_TRUE(end_only.should_evaluate(10));
}

TEST(Cadence, SavesOnTheIntervalAtTheEndBeforeAnExitAndOnPreemption) {
  const Cadence c = cadence();
  std::vector<int64_t> at;
  for (int64_t s = 1; s <= c.steps; ++s)
    if (c.should_save(s, false)) at.push_back(s);
  EXPECT_EQ(at, (std::vector<int64_t>{3, 5, 6, 9, 10}));  // 5: exit_interval; 10: save_final
  EXPECT_TRUE(c.should_save(7, /*preempted=*/true));
  EXPECT_TRUE(c.stops_for_preemption(7, true));
  EXPECT_FALSE(c.stops_for_preemption(10, true)) << "the last step ends the run anyway";
  Cadence no_final = c;
  no_final.save_final = false, no_final.save_interval = 0, no_final.exit_interval = 0;
  EXPECT_FALSE(no_final.should_save(10, false));
}

TEST(Cadence, ExitsOnlyBeforeTheEnd) {
  Cadence c = cadence();
  EXPECT_TRUE(c.should_exit(5));
  EXPECT_FALSE(c.should_exit(10)) << "step 10 is the end, not an exit";
  c.exit_interval = 0;
  EXPECT_FALSE(c.should_exit(5));
}

TEST(Cadence, WholeProgressLinesOnTheIntervalTheFirstStepOfAProcessAndTheLast) {
  const Cadence c = cadence();
  std::vector<int64_t> at;
  for (int64_t s = 4; s <= c.steps; ++s)  // a process resumed at step 3
    if (c.should_log(s, 3)) at.push_back(s);
  EXPECT_EQ(at, (std::vector<int64_t>{4, 6, 8, 10}));
  EXPECT_TRUE(c.should_log(5, 4)) << "the first step of a process resumed at step 4";
}

TEST(Cadence, ReadsTheRecipeFields) {
  moetrain::config::Recipe r;
  r.mutable_train()->set_steps(7), r.mutable_train()->set_eval_interval(2),
      r.mutable_train()->set_exit_interval(3);
  r.mutable_checkpoint()->set_interval(5), r.mutable_checkpoint()->set_save_final(false);
  r.mutable_logging()->set_log_interval(4);
  const Cadence c = Cadence::from_recipe(r);
  EXPECT_EQ(c.steps, 7);
  EXPECT_EQ(c.eval_interval, 2);
  EXPECT_EQ(c.exit_interval, 3);
  EXPECT_EQ(c.save_interval, 5);
  EXPECT_FALSE(c.save_final);
  EXPECT_EQ(c.log_interval, 4);
}
