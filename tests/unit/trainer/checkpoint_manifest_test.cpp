// The manifest reader (trainer/checkpoint_manifest.h): a malformed manifest is refused with the field,
// its value and the fix, never with a JSON library exception or a crash later in load. Regression inputs
// of the fuzz target are in tests/fuzz/manifest/corpus/; real saved manifests pass through every load in
// checkpoint_test.cpp.
#include <gtest/gtest.h>

#include "trainer/checkpoint_manifest.h"

using moetrain::trainer::parse_manifest;
using nlohmann::json;

namespace {

json valid_manifest() {
  const std::string digest(64, 'a');
  return {{"format", "moetrain-checkpoint"},
          {"version", 1},
          {"step", 2},
          {"samples_consumed", 32},
          {"tokens", 4096},
          {"optimizer_step", 2},
          {"layout", {{"world", 2}, {"tp", 1}, {"ep", 2}, {"dp", 2}}},
          {"model_digest", digest},
          {"recipe_digest", digest},
          {"model_section", "model { }"},
          {"recipe", ""},
          {"files",
           {{"rank00000.safetensors", {{"bytes", 10}, {"sha256", digest}}},
            {"rank00001.safetensors", {{"bytes", 10}, {"sha256", digest}}}}},
          {"tensors",
           {{"w",
             {{"shape", {4, 3}},
              {"dtype", "F32"},
              {"shards",
               {{{"file", "rank00000.safetensors"}, {"offsets", {0, 0}}, {"shape", {2, 3}}},
                {{"file", "rank00001.safetensors"}, {"offsets", {2, 0}}, {"shape", {2, 3}}}}}}}}}};
}

std::string error_of(const json& manifest) {
  try {
    parse_manifest(manifest.dump(), "step_2/manifest.json");
    return "";
  } catch (const std::runtime_error& e) {
    return e.what();
  }
}

}  // namespace

TEST(CheckpointManifest, AValidManifestIsAccepted) { EXPECT_EQ(error_of(valid_manifest()), ""); }

// Each case breaks one field that load() or moe-ckpt would otherwise trust; the message must name it.
TEST(CheckpointManifest, MalformedFieldsAreRefusedNamingTheFieldAndValue) {
  struct Case {
    std::string pointer;  // JSON pointer of the field to replace
    json value;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"/step", "2", "step = \"2\": must be an integer"},
      {"/tokens", -1, "tokens = -1: must be >= 0"},
      {"/samples_consumed", 18446744073709551615ull, "samples_consumed = 18446744073709551615: is too large"},
      {"/layout/tp", 0, "layout.tp = 0: must be >= 1"},
      {"/layout", json::array(), "layout = []: must be a JSON object"},
      {"/recipe", 3, "recipe = 3: must be a string"},
      {"/files/rank00000.safetensors/bytes", 1.5,
       "files[\"rank00000.safetensors\"].bytes = 1.5: must be an integer"},
      {"/files/rank00000.safetensors/sha256", "abc",
       "files[\"rank00000.safetensors\"].sha256 = \"abc\": must be 64"},
      {"/tensors/w/shape", {4, -3}, "tensors[\"w\"].shape[1] = -3: must be >= 0"},
      {"/tensors/w/shape", {int64_t{1} << 40, int64_t{1} << 40}, "has more than 2^62 elements"},
      {"/tensors/w/shards/1/file", "rank00002.safetensors",
       "shards[1].file = \"rank00002.safetensors\": is not listed in files"},
      {"/tensors/w/shards/1/offsets",
       {3, 0},
       "tensors[\"w\"].shards[1] = {\"file\":\"rank00001.safetensors\",\"offsets\":[3,0]"},
      {"/tensors/w/shards/1/offsets", {0}, "shards[1].offsets = [0]: must have 2 entries"},
      {"/tensors/w/shards", json::object(), "tensors[\"w\"].shards = {}: must be an array"},
  };
  for (const auto& c : cases) {
    json m = valid_manifest();
    m[json::json_pointer(c.pointer)] = c.value;
    const std::string error = error_of(m);
    EXPECT_NE(error.find("step_2/manifest.json: "), std::string::npos) << c.pointer << ": " << error;
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.pointer << ": " << error;
    EXPECT_NE(error.find("use an earlier checkpoint"), std::string::npos) << c.pointer << ": " << error;
  }
  json outside = valid_manifest();
  outside["tensors"]["w"]["shards"][1]["offsets"] = {3, 0};
  EXPECT_NE(error_of(outside).find("lies outside the tensor's shape [4,3]"), std::string::npos)
      << error_of(outside);
  json missing = valid_manifest();
  missing.erase("layout");
  EXPECT_NE(error_of(missing).find("layout = (absent): missing"), std::string::npos) << error_of(missing);
}

TEST(CheckpointManifest, HeaderErrorsSayWhatTheFileIs) {
  EXPECT_NE(error_of(json::array()).find("is not a moetrain checkpoint manifest"), std::string::npos);
  json v = valid_manifest();
  v["version"] = "1";
  EXPECT_NE(error_of(v).find("has format version \"1\"; this moetrain reads version 1"), std::string::npos)
      << error_of(v);
  try {
    parse_manifest("{\"format\": ", "m.json");
    FAIL() << "truncated JSON accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("m.json is not valid JSON"), std::string::npos) << e.what();
  }
}
