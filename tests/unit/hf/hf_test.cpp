// The Hugging Face bridge's pieces without transformers: sharded weight directories, the Mixtral and
// Qwen2-MoE mappings and their refusals, config.json import rules, the SentencePiece piece reader.
// (tests/e2e/hf_bridge.py checks the same files against the real transformers.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <nlohmann/json.hpp>

#include "csrc/config/recipe_loader.h"
#include "hf/hf_dir.h"
#include "hf/families.h"
#include "hf/weights.h"
#include "hf/tokenizer.h"
#include "tests/unit/hf/hf_test_util.h"

namespace moetrain::hf {
namespace {

using nlohmann::json;

using testing::error_of;
using testing::small_recipe;
using testing::temp_dir;

// A small recipe's one-process model with seeded weights.
model::Transformer small_model(const config::Recipe& r) {
  model::Transformer m(model::TransformerOptions::from_recipe(r));
  model::init_weights(*m, 7, 0.5);
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters())
    if (p.value().dim() == 1) p.value().uniform_(0.5, 1.5);  // norms not all ones
  return m;
}

TEST(HfWeights, ShardsAboveTheLimitWithAnIndex) {
  const std::string dir = temp_dir("shards");
  // 400, 400, 400 bytes with a 1000-byte limit: [a, b] [c]; a 2000-byte tensor gets its own shard.
  io::NamedTensors t{{"a", torch::full({100}, 1.0f)},
                     {"b", torch::full({100}, 2.0f)},
                     {"c", torch::full({100}, 3.0f)},
                     {"big", torch::arange(500, torch::kFloat32)},
                     {"d", torch::full({10}, 4.0f)}};
  const auto w = write_weights(dir, t, 1000);
  ASSERT_TRUE(w.indexed);
  EXPECT_EQ(w.files,
            (std::vector<std::string>{"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"}));
  EXPECT_EQ(w.total_bytes, 3 * 400 + 2000 + 40);
  std::ifstream in(dir + "/model.safetensors.index.json");
  const json index = json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"], w.total_bytes);
  EXPECT_EQ(index["weight_map"]["b"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["c"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00003-of-00004.safetensors");
  const HfWeights back(dir);
  EXPECT_EQ(back.names(), (std::vector<std::string>{"a", "b", "big", "c", "d"}));
  for (const auto& [name, tensor] : t) EXPECT_TRUE(torch::equal(back.get(name), tensor)) << name;
  EXPECT_EQ(io::SafetensorsFile(dir + "/" + w.files[0]).metadata().at("format"), "pt");

  std::remove((dir + "/" + w.files[1]).c_str());
  EXPECT_NE(error_of([&] { HfWeights{dir}; }).find("model-00002-of-00004.safetensors, which is missing"),
            std::string::npos);
}

TEST(HfWeights, OneFileWhenItFits) {
  const std::string dir = temp_dir("single");
  const auto w = write_weights(dir, {{"a", torch::ones({3, 2})}}, 1 << 20);
  EXPECT_FALSE(w.indexed);
  EXPECT_EQ(w.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(HfWeights(dir).shape("a"), (std::vector<int64_t>{3, 2}));
  EXPECT_NE(error_of([&] { HfWeights{temp_dir("empty")}; }).find("has neither model.safetensors"),
            std::string::npos);
}

TEST(Mixtral, TensorsRoundTripInBothExpertLayouts) {
  const auto recipe = small_recipe({"model.tie_embeddings=true"});
  auto model = small_model(recipe);
  const auto tensors = export_tensors(Family::kMixtral, *model);
  // Per-expert layout: what moe-export writes.
  const std::string classic = temp_dir("classic");
  write_weights(classic, tensors, 1 << 20);
  // transformers 5's fused layout, built from the same tensors.
  io::NamedTensors fused;
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  for (const auto& [name, t] : tensors) {
    if (name.find(".experts.") != std::string::npos) continue;
    fused.emplace_back(std::regex_replace(name, std::regex("block_sparse_moe"), "mlp"), t);
  }
  for (int l = 0; l < 2; ++l) {
    std::vector<torch::Tensor> gate_up, down;
    for (int e = 0; e < 4; ++e) {
      const std::string p = "model.layers." + std::to_string(l) + ".block_sparse_moe.experts." +
                            std::to_string(e) + ".";
      gate_up.push_back(torch::cat({by_name[p + "w1.weight"], by_name[p + "w3.weight"]}, 0));  // (2F, D)
      down.push_back(by_name[p + "w2.weight"]);                                                // (D, F)
    }
    fused.emplace_back("model.layers." + std::to_string(l) + ".mlp.experts.gate_up_proj",
                       torch::stack(gate_up));
    fused.emplace_back("model.layers." + std::to_string(l) + ".mlp.experts.down_proj", torch::stack(down));
  }
  const std::string fused_dir = temp_dir("fused");
  write_weights(fused_dir, fused, 1 << 20);
  EXPECT_EQ(by_name.count("lm_head.weight"), 0u);  // tied

  for (const auto& dir : {classic, fused_dir}) {
    model::Transformer back(model::TransformerOptions::from_recipe(recipe));
    load_hf_tensors(Family::kMixtral, HfWeights(dir), *back);
    for (const auto& p : model->named_parameters())
      EXPECT_TRUE(torch::equal(p.value(), back->named_parameters()[p.key()])) << dir << " " << p.key();
  }
  // A tensor with no place in the model is an error naming it.
  io::NamedTensors extra = tensors;
  extra.emplace_back("model.layers.0.self_attn.q_proj.bias", torch::zeros({16}));
  const std::string extra_dir = temp_dir("extra");
  write_weights(extra_dir, extra, 1 << 20);
  model::Transformer back(model::TransformerOptions::from_recipe(recipe));
  EXPECT_NE(error_of([&] {
              load_hf_tensors(Family::kMixtral, HfWeights(extra_dir), *back);
            }).find("model.layers.0.self_attn.q_proj.bias"),
            std::string::npos);
}

TEST(Mixtral, RefusesWhatItCannotComputeAndQwenTakesSome) {
  auto model = small_model(small_recipe());
  EXPECT_TRUE(export_problems(Family::kMixtral, small_recipe(), *model).empty());
  EXPECT_TRUE(
      export_problems(Family::kMixtral,
                      small_recipe({"routing.topk_order=TOPK_THEN_SOFTMAX", "routing.normalize_gates=false"}),
                      *model)
          .empty());

  const auto r = small_recipe(
      {"model.moe_layer_freq=2", "model.num_shared_experts=1", "routing.normalize_gates=false"});
  auto dense = small_model(r);
  const auto mixtral = export_problems(Family::kMixtral, r, *dense);
  ASSERT_EQ(mixtral.size(), 3u);
  EXPECT_EQ(mixtral[0].rfind("model.moe_layer_freq = 2: layer 1 is a dense SwiGLU layer", 0), 0u) << mixtral[0];
  EXPECT_TRUE(export_problems(Family::kQwen2Moe, r, *dense).empty());
  const json config = export_config(Family::kQwen2Moe, r, *dense, {}, torch::kFloat32);
  EXPECT_EQ(config["mlp_only_layers"], json::array({1}));
  EXPECT_EQ(config["norm_topk_prob"], false);
  EXPECT_EQ(config["shared_expert_intermediate_size"], 8);  // moe_ffn_hidden × 1 shared expert
  const auto tensors = export_tensors(Family::kQwen2Moe, *dense);
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  EXPECT_TRUE(torch::equal(by_name["model.layers.0.mlp.shared_expert.down_proj.weight"],
                           dense->named_parameters()["layers.0.moe.shared.w2.weight"] * 2));
  EXPECT_TRUE(torch::equal(by_name["model.layers.1.mlp.gate_proj.weight"],
                           dense->named_parameters()["layers.1.mlp.w1.weight"]));

  const auto sigmoid = small_recipe({"routing.score_function=SIGMOID", "routing.gate_scale=2.5"});
  const auto q = export_problems(Family::kQwen2Moe, sigmoid, *model);
  ASSERT_EQ(q.size(), 2u);
  EXPECT_EQ(q[0],
            "routing.score_function = SIGMOID: Qwen2-MoE scores experts with a softmax over all experts (SOFTMAX)");
  EXPECT_EQ(q[1], "routing.gate_scale = 2.5: Qwen2-MoE applies no gate scaling factor; it supports 1");

  torch::NoGradGuard no_grad;
  model->named_buffers()["layers.1.moe.router.expert_bias"][2] = 0.25;
  const auto biased = export_problems(Family::kMixtral, small_recipe({"routing.bias_update_rate=0.001"}),
                                      *model);
  ASSERT_EQ(biased.size(), 1u);
  EXPECT_NE(
      biased[0].find(
          "routing.bias_update_rate = 0.001: the expert selection biases of layers 1 are non-zero (max |bias| 0.25)"),
      std::string::npos);
}

TEST(Mixtral, ConfigImportDefaultsAndRefusals) {
  const json minimal = {{"model_type", "mixtral"}, {"vocab_size", 40},         {"hidden_size", 16},
                        {"num_hidden_layers", 2},  {"num_attention_heads", 2}, {"num_key_value_heads", 2},
                        {"intermediate_size", 8}};
  const auto r = recipe_from_hf_config(minimal, "config.json").recipe;
  EXPECT_EQ(r.model().num_experts(), 8);  // MixtralConfig defaults
  EXPECT_EQ(r.model().top_k(), 2);
  EXPECT_EQ(r.model().rope_theta(), 1e6);
  EXPECT_EQ(r.model().moe_ffn_hidden(), 8);
  EXPECT_EQ(r.routing().topk_order(), config::RoutingConfig::SOFTMAX_THEN_TOPK);
  EXPECT_TRUE(r.routing().normalize_gates());
  json with_rope = minimal;
  with_rope["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500.0}};
  EXPECT_EQ(recipe_from_hf_config(with_rope, "config.json").recipe.model().rope_theta(), 500);

  auto refusal = [&](json patch) {
    json c = minimal;
    c.update(patch);
    return error_of([&] { recipe_from_hf_config(c, "config.json"); });
  };
  EXPECT_NE(refusal({{"num_key_value_heads", 3}})
                .find("num_key_value_heads = 3: must divide num_attention_heads = 2"),
            std::string::npos);
  EXPECT_NE(refusal({{"model_type", "llama"}})
                .find("model_type = \"llama\"; moe-import reads mixtral (MixtralForCausalLM)"),
            std::string::npos);
  EXPECT_NE(refusal({{"sliding_window", 4096}}).find("sliding_window = 4096"), std::string::npos);
  EXPECT_NE(refusal({{"rope_parameters", {{"rope_type", "yarn"}}}}).find("rope_type = \"yarn\""),
            std::string::npos);
  EXPECT_NE(refusal({{"hidden_act", "gelu"}}).find("hidden_act = \"gelu\""), std::string::npos);
  EXPECT_NE(refusal({{"hidden_size", 12}, {"num_attention_heads", 2}}).find("model.d_model"),
            std::string::npos);
}

// Hugging Face's q, k, v <-> the fused slot layout: query head h = j·G + s sits in slot s of key/value head
// j. Catches a (3, ·) split of a GQA projection and a q block in the wrong head order.
TEST(Qkv, FuseAndSplitAreInversesAndPutQueryHeadsInSlots) {
  const int64_t H = 6, Hkv = 2, Dh = 3, D = 5;
  auto q = torch::arange(H * Dh * D, torch::kFloat32).view({H * Dh, D});
  auto k = -torch::arange(Hkv * Dh * D, torch::kFloat32).view({Hkv * Dh, D}) - 1, v = k - 1000;
  auto fused = fuse_qkv(q, k, v, H, Hkv);
  ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{(3 + 2) * Hkv * Dh, D}));
  // Slot 1 of key/value head 1 = query head 1·3 + 1 = 4.
  EXPECT_TRUE(torch::equal(fused.view({5, Hkv, Dh, D})[1][1], q.view({H, Dh, D})[4]));
  EXPECT_TRUE(torch::equal(fused.view({5, Hkv, Dh, D})[3], k.view({Hkv, Dh, D})));
  const auto back = split_qkv(fused, H, Hkv);
  EXPECT_TRUE(torch::equal(back.q, q) && torch::equal(back.k, k) && torch::equal(back.v, v));
  const auto b = split_qkv(fuse_qkv(q.select(1, 0), k.select(1, 0), v.select(1, 0), H, Hkv), H, Hkv);  // biases
  EXPECT_TRUE(torch::equal(b.q, q.select(1, 0)) && torch::equal(b.v, v.select(1, 0)));
}

// Every family's export, written and read back, gives the same model: GQA with a head size other than
// D/H, each family's attention extras (Qwen2-MoE biases and gated shared expert, Qwen3-MoE per-head norm
// with a dense layer, OLMoE full-width norm). Catches a tensor written under one name and read under another.
TEST(Families, ExportThenImportIsIdentityForEveryFamily) {
  const std::string gqa = "model.num_heads=4";
  const std::map<Family, std::vector<std::string>> recipes = {
      {Family::kMixtral, {gqa, "model.num_kv_heads=2", "model.head_dim=6"}},
      {Family::kQwen2Moe,
       {gqa, "model.num_kv_heads=2", "model.qkv_bias=true", "model.num_shared_experts=1",
        "model.shared_expert_gate=true", "routing.normalize_gates=false"}},
      {Family::kQwen3Moe,
       {gqa, "model.num_kv_heads=1", "model.head_dim=8", "model.qk_norm=PER_HEAD", "model.moe_layers=[1]"}},
      {Family::kOlmoe,
       {gqa, "model.num_kv_heads=2", "model.qk_norm=FULL_WIDTH", "routing.normalize_gates=false"}}};
  for (const auto& [family, overrides] : recipes) {
    const auto recipe = small_recipe(overrides);
    auto model = small_model(recipe);
    EXPECT_EQ(auto_family(recipe, *model), family) << info(family).title;
    EXPECT_TRUE(export_problems(family, recipe, *model).empty()) << info(family).title;
    const std::string dir = temp_dir(info(family).model_type);
    write_weights(dir, export_tensors(family, *model), 2000);  // sharded
    const auto imported = recipe_from_hf_config(export_config(family, recipe, *model, {}, torch::kFloat32),
                                                "config.json");
    EXPECT_EQ(imported.family, family);
    model::Transformer back(model::TransformerOptions::from_recipe(imported.recipe));
    load_hf_tensors(family, HfWeights(dir), *back);
    auto back_params = back->named_parameters();
    EXPECT_EQ(back_params.size(), model->named_parameters().size()) << info(family).title;
    for (const auto& p : model->named_parameters()) {
      ASSERT_TRUE(back_params.find(p.key())) << info(family).title << " " << p.key();
      EXPECT_TRUE(torch::equal(p.value(), back_params[p.key()])) << info(family).title << " " << p.key();
    }
    auto tokens = torch::randint(0, 40, {2, 8});
    model->eval(), back->eval();
    EXPECT_TRUE(torch::equal(model->forward(tokens).logits, back->forward(tokens).logits))
        << info(family).title;
  }
}

// A SentencePiece ModelProto written by hand: pieces <unk> (type 2), <s>, </s>, <pad> (type 3), "a".
std::string piece(const std::string& text, int type) {
  std::string p;
  p += static_cast<char>(0x0a), p += static_cast<char>(text.size()), p += text;  // field 1: piece
  p += static_cast<char>(0x18), p += static_cast<char>(type);                    // field 3: type
  std::string out;
  out += static_cast<char>(0x0a), out += static_cast<char>(p.size()), out += p;  // ModelProto field 1
  return out;
}

TEST(Tokenizer, ReadsPiecesAndSpecialTokens) {
  const std::string dir = temp_dir("spm");
  const std::string path = dir + "/tokenizer.model";
  std::string bytes = piece("<unk>", 2) + piece("<s>", 3) + piece("</s>", 3) + piece("<pad>", 3) +
                      piece("a", 1);
  bytes += std::string{0x1a, 0x02, 0x18, 0x00};  // NormalizerSpec { add_dummy_prefix: false }
  std::ofstream(path, std::ios::binary) << bytes;
  const auto sp = read_sentencepiece(path);
  ASSERT_EQ(sp.pieces.size(), 5u);
  EXPECT_FALSE(sp.add_dummy_prefix);
  const auto s = sp.special();
  EXPECT_EQ(s.unk, 0);
  EXPECT_EQ(s.bos, 1);
  EXPECT_EQ(s.eos, 2);
  EXPECT_EQ(s.pad, 3);
  EXPECT_NE(error_of([&] {
              write_tokenizer_files(dir, sp, 4, path, "--tokenizer");
            }).find("the tokenizer has 5 pieces but the model's vocab_size is 4"),
            std::string::npos);
  write_tokenizer_files(dir, sp, 5, path, "--tokenizer");
  std::ifstream in(dir + "/tokenizer_config.json");
  const json config = json::parse(in);
  EXPECT_EQ(config["eos_token"], "</s>");
  EXPECT_EQ(config["add_prefix_space"], false);
  std::ofstream(dir + "/bad.model", std::ios::binary) << std::string("\xff\xff\xff", 3);
  EXPECT_NE(error_of([&] { read_sentencepiece(dir + "/bad.model"); }).find("not a SentencePiece model"),
            std::string::npos);
}

}  // namespace
}  // namespace moetrain::hf
