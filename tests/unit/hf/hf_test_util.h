// What the hf tests share: temporary directories, the message of an expected error, a small recipe.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "csrc/config/recipe_loader.h"

namespace moetrain::hf::testing {

// A new directory /tmp/moetrain_hf_<name>_XXXXXX.
inline std::string temp_dir(const std::string& name) {
  char tmpl[256];
  std::snprintf(tmpl, sizeof(tmpl), "/tmp/moetrain_hf_%s_XXXXXX", name.c_str());
  return ::mkdtemp(tmpl);
}

// What f throws, or "" when it returns.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// A small all-MoE recipe, defaults filled.
inline config::Recipe small_recipe(const std::vector<std::string>& overrides = {}) {
  config::Recipe r = config::parse_recipe(
      "model { vocab_size: 40 d_model: 16 num_layers: 2 num_heads: 2 ffn_hidden: 24 num_experts: 4 top_k: 2 "
      "moe_ffn_hidden: 8 } data { train_prefix: \"x\" seq_len: 8 }",
      "<test>");
  for (const auto& o : overrides) config::apply_override(r, o);
  config::fill_defaults(r);
  return r;
}

}  // namespace moetrain::hf::testing
