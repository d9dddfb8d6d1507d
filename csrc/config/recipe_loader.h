// Loading, overriding, validating and printing recipes (schema: csrc/config/recipe.proto).
//
// Contract: every function throws RecipeError with a message that names the source (file:line:col or
// the --set override), the field, the value and the fix. Nothing else in moetrain parses recipe text.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>

#include "csrc/config/recipe.pb.h"

namespace moetrain::config {

struct RecipeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses recipe text; `source` names it in errors (a file path or "<string>"). Unknown fields, type
// mismatches and repeated singular fields are errors.
Recipe parse_recipe(const std::string& text, const std::string& source);

// Parses protobuf text into `out` (any message: recipes, ablation studies) with the same errors as
// recipes: "SOURCE:LINE:COL: what is wrong", an unknown field with the likely name and the known ones, a
// type error pointing at `docs` (the page documenting the schema). Records locations in `tree` if given.
void parse_text(const std::string& text, const std::string& source, const std::string& docs,
                google::protobuf::Message& out, google::protobuf::TextFormat::ParseInfoTree* tree = nullptr);

// Applies one `field.path=value` override, typed and checked like the file. Repeated fields take a
// list (`model.moe_layers=[0,2]`) and replace the whole list.
void apply_override(Recipe& recipe, const std::string& assignment);

// Where each field of a loaded recipe was last set, by dotted path ("model.top_k"): "FILE:LINE:COL"
// for a recipe file (or one of its bases), "--set PATH=VALUE" for an override.
using FieldOrigins = std::map<std::string, std::string>;

// Checks value ranges and combinations; throws one RecipeError listing every problem found, each
// line starting with where its field was set when `origins` knows it.
void validate_recipe(const Recipe& recipe, const std::string& source, const FieldOrigins* origins = nullptr);

// Reads the file and, recursively, the recipes it names as `base` (paths relative to the naming file;
// a cycle is an error), lays each file's fields over its base's, applies the overrides in order, fills
// in every default and validates.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides);

// Lays the fields set in `top` over `base`: scalars replace, lists replace whole, sections merge.
void overlay(google::protobuf::Message& base, const google::protobuf::Message& top);

// Sets every unset optional field to its schema default (so the resolved recipe is explicit).
void fill_defaults(Recipe& recipe);

// Text format of the recipe, as written to RUN_DIR/recipe.textproto.
std::string to_text(const Recipe& recipe);

}  // namespace moetrain::config
