// Ablation studies: a study file (schema: study.proto) or a folder of variant recipes, resolved into
// the runs to train, variants x seeds, each in its own directory OUT/runs/VARIANT/seed-SEED.
//
// Contract: every error is a std::runtime_error naming the file, the field, the value and the fix.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moetrain::trainer::ablation {

struct Variant {
  std::string name;    // the recipe's file name without .textproto
  std::string recipe;  // its path
};

struct Study {
  std::string source;  // the study file, or the folder of the folder form
  std::vector<Variant> variants;
  std::string baseline;           // a variant's name
  std::vector<uint64_t> seeds;    // distinct, at least one
  int64_t steps = 0;              // 0: each recipe's own (or from `tokens`)
  int64_t tokens = 0;             // 0: no token budget
  std::vector<std::string> sets;  // overrides for every run (the file's, then the command line's)
};

// One training run of a study.
struct Run {
  size_t variant = 0;  // index into Study::variants
  uint64_t seed = 0;
  int64_t steps = 0;                   // train.steps of the run's resolved recipe: reached = finished
  std::string dir;                     // OUT/runs/VARIANT/seed-SEED
  std::vector<std::string> overrides;  // moe-train --set values: the study's sets, train.seed, train.steps
};

// Reads a study file (protobuf text, schema trainer/ablation/study.proto); default seeds 1234, 1235,
// 1236 and the first variant as baseline when the file names none.
Study load_study(const std::string& path);

// The folder form `moe-ablate DIR`: DIR's variant recipes, one seed (1234, train.seed's default), the
// first variant (in name order) as baseline.
Study folder_study(const std::string& dir);

// Every *.textproto of `dir` but base.textproto, in name order; throws when there is none.
std::vector<Variant> folder_variants(const std::string& dir);

// The runs, variant-major (every seed of the first variant, then the next variant's); loads each
// variant's recipe with its overrides (so a bad recipe or override fails here, before any training)
// and turns a token budget into steps. An override of train.seed, or of train.steps when the study has
// a budget, is an error (the study decides them).
std::vector<Run> plan_runs(const Study& study, const std::string& out_dir);

}  // namespace moetrain::trainer::ablation
