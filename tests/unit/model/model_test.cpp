// Model pieces: RMSNorm, rotary embedding, causal attention, the transformer and its seeded init.
#include <gtest/gtest.h>

#include <algorithm>

#include "csrc/model/transformer.h"

using namespace moetrain::model;

namespace {

TransformerOptions tiny_options(bool tie = false) {
  moetrain::config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(32), m.set_num_layers(2), m.set_num_heads(4), m.set_ffn_hidden(48);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(24), m.set_moe_layer_freq(2);
  m.set_tie_embeddings(tie);
  moetrain::config::RoutingConfig r;
  r.set_aux_loss_coeff(0.01);
  return TransformerOptions::from_recipe(m, r);
}

}  // namespace

TEST(RMSNorm, MatchesDefinition) {
  RMSNorm norm(4, 1e-6);
  auto x = torch::tensor({{1.0f, 2.0f, 3.0f, 4.0f}});
  auto expected = x / std::sqrt((1.0 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-6);
  EXPECT_TRUE(torch::allclose(norm(x), expected, 1e-6, 1e-7));
}

TEST(Rotary, PreservesNormAndLeavesPositionZeroUnchanged) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 3, 5, 8});
  auto y = apply_rotary(x, 10000.0);
  EXPECT_TRUE(torch::allclose(y.norm(2, -1), x.norm(2, -1), 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(y.select(2, 0), x.select(2, 0)));
}

TEST(Rotary, DotProductDependsOnlyOnRelativePosition) {
  torch::manual_seed(0);
  auto q = torch::randn({8}), k = torch::randn({8});
  // Place the same q and k at every position, then compare <q_m, k_n> for equal m − n.
  auto qs = apply_rotary(q.expand({1, 1, 10, 8}).contiguous(), 100.0)[0][0];
  auto ks = apply_rotary(k.expand({1, 1, 10, 8}).contiguous(), 100.0)[0][0];
  const float d_7_4 = qs[7].dot(ks[4]).item<float>(), d_3_0 = qs[3].dot(ks[0]).item<float>();
  const float d_9_2 = qs[9].dot(ks[2]).item<float>(), d_8_1 = qs[8].dot(ks[1]).item<float>();
  EXPECT_NEAR(d_7_4, d_3_0, 1e-5);
  EXPECT_NEAR(d_9_2, d_8_1, 1e-5);
  EXPECT_GT(std::abs(d_7_4 - d_9_2), 1e-3) << "different offsets give different scores";
}

TEST(Attention, IsCausal) {
  torch::manual_seed(0);
  AttentionOptions o;
  o.d_model = 16, o.num_heads = 2;
  Attention attn(o);
  auto x = torch::randn({1, 6, 16});
  auto y = attn(x);
  auto x2 = x.clone();
  x2.narrow(1, 4, 2).normal_();  // change the future of position 3
  auto y2 = attn(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 4), y2.narrow(1, 0, 4), 0, 1e-6));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 4, 2), y2.narrow(1, 4, 2), 0, 1e-3));
}

TEST(Transformer, ShapesAuxLossAndExpertCounts) {
  Transformer model(tiny_options());
  init_weights(*model, 7, 0.02);
  auto tokens = torch::randint(0, 64, {3, 10});
  auto out = model(tokens);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 10, 64}));
  ASSERT_EQ(out.moe_measures.size(), 1u) << "moe_layer_freq 2 over 2 layers: layer 0 only";
  EXPECT_EQ(out.moe_measures[0].tokens_per_expert_E.sum().item<int64_t>(), 3 * 10 * 2);
  EXPECT_EQ(out.moe_measures[0].dropped_pairs.item<int64_t>(), 0) << "dropless by default";
  auto loss = lm_loss(out.logits, tokens);
  EXPECT_NEAR(loss.item<float>(), std::log(64.0f), 0.1f) << "small init predicts close to uniform";
}

// The model's aux loss is the sum over its MoE layers of each layer's loss, coefficient applied, in
// training only. Zero router weights make every p = 1/E, so each layer's Switch loss is exactly 1 and
// its aux loss exactly α (T·k = 32 pairs, E = 4: every f_i, P_i and sum is a dyadic fraction).
TEST(Transformer, AuxLossIsTheSumOfTheLayersCoefficientTimesLossInTrainingOnly) {
  auto options = tiny_options();
  std::fill(options.is_moe.begin(), options.is_moe.end(), true);  // both layers MoE
  Transformer model(options);
  init_weights(*model, 7, 0.02);
  for (auto& layer : model->moe_layers()) layer->router->weight.data().zero_();
  auto tokens = torch::randint(0, 64, {2, 8});
  auto out = model(tokens);
  ASSERT_EQ(out.moe_measures.size(), 2u);
  const float alpha = 0.01f;
  for (const auto& measures : out.moe_measures) EXPECT_EQ(measures.aux_loss.item<float>(), alpha);
  EXPECT_EQ(out.aux_loss.item<float>(), alpha + alpha) << "Σ over the two MoE layers";
  EXPECT_EQ(out.z_loss.item<float>(), 0.0f) << "z_loss_coeff 0";
  model->eval();
  EXPECT_EQ(model(tokens).aux_loss.item<float>(), 0.0f) << "no balancing loss in evaluation";
}

TEST(Transformer, InitDependsOnSeedAndNameOnly) {
  Transformer a(tiny_options()), b(tiny_options()), c(tiny_options());
  init_weights(*a, 7, 0.02);
  init_weights(*b, 7, 0.02);
  init_weights(*c, 8, 0.02);
  auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  for (const auto& p : pa) {
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
    if (p.value().dim() > 1) {
      EXPECT_FALSE(torch::equal(p.value(), pc[p.key()])) << p.key();
    }
  }
  // Output projections are scaled by 1/sqrt(2·layers).
  const double std_wo = pa["layers.0.attn.wo.weight"].std().item<double>();
  EXPECT_NEAR(std_wo, 0.02 / 2.0, 0.002);
}

TEST(Transformer, TiedEmbeddingsShareOneMatrix) {
  Transformer model(tiny_options(/*tie=*/true));
  EXPECT_FALSE(model->lm_head);
  EXPECT_EQ(model->named_parameters().find("lm_head.weight"), nullptr);
  auto out = model(torch::randint(0, 64, {1, 4}));
  EXPECT_EQ(out.logits.size(-1), 64);
}

namespace {
// RMSNorm over the last dim, the definition.
torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

// Attention computed directly from separate q, k, v projections in Hugging Face's layout (rows of head h
// at [h·Dh, (h+1)·Dh)), with explicit softmax and causal mask: the reference for AttentionImpl.
torch::Tensor reference_attention(const torch::Tensor& x, const torch::Tensor& wq, const torch::Tensor& wk,
                                  const torch::Tensor& wv, const torch::Tensor& bq, const torch::Tensor& bk,
                                  const torch::Tensor& bv, const torch::Tensor& wo, const AttentionOptions& o,
                                  const torch::Tensor& qn, const torch::Tensor& kn) {
  const int64_t B = x.size(0), S = x.size(1), H = o.num_heads, Hkv = o.kv_heads(), Dh = o.head_size();
  auto q = torch::linear(x, wq, bq), k = torch::linear(x, wk, bk), v = torch::linear(x, wv, bv);
  if (o.qk_norm == QkNorm::kFullWidth) q = rms(q, qn, o.norm_eps), k = rms(k, kn, o.norm_eps);
  q = q.view({B, S, H, Dh}), k = k.view({B, S, Hkv, Dh}), v = v.view({B, S, Hkv, Dh});
  if (o.qk_norm == QkNorm::kPerHead) q = rms(q, qn, o.norm_eps), k = rms(k, kn, o.norm_eps);
  // Rotary embedding, rotate-half, written out.
  auto pos = torch::arange(S, torch::kFloat64).unsqueeze(1);
  auto inv = torch::pow(o.rope_theta, -torch::arange(0, Dh / 2, torch::kFloat64) * 2.0 / Dh).unsqueeze(0);
  auto ang = torch::cat({pos * inv, pos * inv}, 1).to(torch::kFloat32);  // (S, Dh)
  auto rot = [&](const torch::Tensor& t) {                               // (B, S, h, Dh)
    auto half1 = t.narrow(-1, 0, Dh / 2), half2 = t.narrow(-1, Dh / 2, Dh / 2);
    return t * ang.cos().unsqueeze(1) + torch::cat({-half2, half1}, -1) * ang.sin().unsqueeze(1);
  };
  q = rot(q), k = rot(k);
  const int64_t G = H / Hkv;
  std::vector<torch::Tensor> heads;
  auto mask = torch::ones({S, S}).triu(1).to(torch::kBool);
  for (int64_t h = 0; h < H; ++h) {
    auto qh = q.select(2, h), kh = k.select(2, h / G), vh = v.select(2, h / G);  // (B, S, Dh)
    auto scores = torch::matmul(qh, kh.transpose(1, 2)) / std::sqrt(static_cast<double>(Dh));
    heads.push_back(torch::matmul(torch::softmax(scores.masked_fill(mask, -INFINITY), -1), vh));
  }
  return torch::linear(torch::cat(heads, -1), wo);
}

// Copies HF-layout projections into the fused slot layout of wqkv (csrc/model/attention.h).
void load_attention(AttentionImpl& a, const torch::Tensor& wq, const torch::Tensor& wk,
                    const torch::Tensor& wv, const torch::Tensor& bq, const torch::Tensor& bk,
                    const torch::Tensor& bv, const torch::Tensor& wo) {
  const auto& o = a.options();
  const int64_t Hkv = o.kv_heads(), G = o.groups(), Dh = o.head_size();
  // q (H·Dh[, D]) -> slots (G, Hkv·Dh[, D]): slot s, key/value head j holds query head j·G + s; then k, v.
  auto fuse = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    const int64_t cols = q.dim() == 2 ? q.size(1) : 1;
    auto q_slots = q.reshape({Hkv, G, Dh, cols}).transpose(0, 1).reshape({G * Hkv * Dh, cols});
    auto fused = torch::cat({q_slots, k.reshape({Hkv * Dh, cols}), v.reshape({Hkv * Dh, cols})}, 0);
    return q.dim() == 2 ? fused : fused.reshape({-1});
  };
  torch::NoGradGuard no_grad;
  a.wqkv->weight.copy_(fuse(wq, wk, wv));
  if (a.wqkv->bias.defined()) a.wqkv->bias.copy_(fuse(bq, bk, bv));
  a.wo->weight.copy_(wo);
}

struct AttentionCase {
  const char* name;
  int64_t heads, kv_heads, head_dim;
  QkNorm qk_norm;
  bool bias;
};
}  // namespace

// GQA, a head size other than D/H, both q/k norms and q/k/v biases against the direct computation.
// Catches a wrong slot order in wqkv (query heads matched to the wrong key/value head), a norm over the
// wrong width, a norm after RoPE instead of before, and a missing or misplaced bias.
TEST(Attention, MatchesDirectComputation) {
  const AttentionCase cases[] = {{"MHA", 4, 4, 8, QkNorm::kNone, false},
                                 {"GQA 4/2, head_dim 12", 4, 2, 12, QkNorm::kNone, false},
                                 {"GQA 6/2, per-head norm", 6, 2, 8, QkNorm::kPerHead, false},
                                 {"GQA 4/2, full-width norm", 4, 2, 8, QkNorm::kFullWidth, false},
                                 {"MQA 4/1, bias", 4, 1, 16, QkNorm::kNone, true}};
  for (const auto& c : cases) {
    torch::manual_seed(1);
    AttentionOptions o;
    o.d_model = 32, o.num_heads = c.heads, o.num_kv_heads = c.kv_heads, o.head_dim = c.head_dim;
    o.qk_norm = c.qk_norm, o.qkv_bias = c.bias, o.rope_theta = 500.0, o.norm_eps = 1e-6;
    Attention attn(o);
    const int64_t D = 32, Hq = c.heads * c.head_dim, Hk = c.kv_heads * c.head_dim;
    auto wq = torch::randn({Hq, D}) * 0.3, wk = torch::randn({Hk, D}) * 0.3, wv = torch::randn({Hk, D}) * 0.3;
    auto bq = c.bias ? torch::randn({Hq}) : torch::zeros({Hq}),
         bk = c.bias ? torch::randn({Hk}) : torch::zeros({Hk});
    auto bv = c.bias ? torch::randn({Hk}) : torch::zeros({Hk});
    auto wo = torch::randn({D, Hq}) * 0.3;
    load_attention(*attn, wq, wk, wv, bq, bk, bv, wo);
    torch::Tensor qn, kn;
    if (c.qk_norm != QkNorm::kNone) {
      torch::NoGradGuard no_grad;
      attn->q_norm->weight.uniform_(0.5, 1.5), attn->k_norm->weight.uniform_(0.5, 1.5);
      qn = attn->q_norm->weight.detach(), kn = attn->k_norm->weight.detach();
    }
    auto x = torch::randn({2, 7, D});
    auto want = reference_attention(x, wq, wk, wv, bq, bk, bv, wo, o, qn, kn);
    auto got = attn(x);
    EXPECT_TRUE(torch::allclose(got, want, 1e-4, 1e-5))
        << c.name << ": max diff " << (got - want).abs().max().item<float>();
    if (c.qk_norm != QkNorm::kNone) {  // the norms must matter: the same weights without them differ
      auto o2 = o;
      o2.qk_norm = QkNorm::kNone;
      Attention plain(o2);
      load_attention(*plain, wq, wk, wv, bq, bk, bv, wo);
      EXPECT_FALSE(torch::allclose(plain(x), want, 1e-3, 1e-3)) << c.name;
    }
  }
}

// Tensor-parallel shards of a GQA model are boxes of the one-process tensors (csrc/model/sharding.h): the
// seeded init of tp rank r equals rows [r·Hkv/tp·Dh, +Hkv/tp·Dh) of every wqkv slot of the tp-1 model, so
// checkpoints reshard between layouts. Catches a box that mixes query and key rows (a (3, ·) view of GQA).
TEST(Sharding, GqaAttentionShardsAreSlicesOfTheGlobalTensor) {
  moetrain::config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(32), m.set_num_layers(1), m.set_num_heads(8), m.set_num_kv_heads(2);
  m.set_head_dim(6), m.set_qkv_bias(true), m.set_qk_norm(moetrain::config::ModelConfig::FULL_WIDTH);
  m.set_ffn_hidden(48), m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(24);
  moetrain::config::RoutingConfig r;
  Transformer one(TransformerOptions::from_recipe(m, r));
  init_weights(*one, 5, 0.02);
  const int64_t slots = 8 / 2 + 2, rows = 2 * 6;  // G + 2 slots of Hkv·Dh rows
  auto global = one->named_parameters()["layers.0.attn.wqkv.weight"].view({slots, rows, 32});
  auto global_bias = one->named_parameters()["layers.0.attn.wqkv.bias"];
  EXPECT_EQ(global_bias.abs().max().item<float>(), 0.0f) << "biases start at 0";
  for (int64_t rank = 0; rank < 2; ++rank) {
    Transformer part(TransformerOptions::from_recipe(m, r, {.tp_size = 2, .tp_rank = rank}));
    init_weights(*part, 5, 0.02);
    auto params = part->named_parameters();
    auto local = params["layers.0.attn.wqkv.weight"];
    ASSERT_EQ(local.size(0), slots * rows / 2);
    EXPECT_TRUE(torch::equal(local.view({slots, rows / 2, 32}), global.narrow(1, rank * rows / 2, rows / 2)))
        << "rank " << rank;
    EXPECT_EQ(params["layers.0.attn.q_norm.weight"].size(0), 8 * 6 / 2);
    EXPECT_EQ(params["layers.0.attn.k_norm.weight"].size(0), 2 * 6 / 2);
    EXPECT_EQ(params["layers.0.attn.wo.weight"].size(1), 8 * 6 / 2);
  }
}
