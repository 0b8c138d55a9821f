// attach_lora on small random Llama models: targets, patterns, freezing, determinism, B = 0 equals the base.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "common/error.h"
#include "lora/lora_model.h"

namespace qlora::lora {
namespace {

io::LlamaConfig small_config() {
  io::LlamaConfig c;
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 64;
  return c;
}

model::LlamaModel random_model(torch::ScalarType dtype = torch::kFloat32, uint64_t seed = 1) {
  torch::manual_seed(seed);
  model::LlamaModel m(small_config(), dtype);
  m->init_weights(0.05);
  m->eval();
  return m;
}

LoraConfig config_r4() {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0.0;
  return c;
}

TEST(LoraModel, AllLinearWrapsSevenProjectionsPerLayerNotLmHead) {
  auto m = random_model();
  auto adapters = attach_lora(m, config_r4(), /*seed=*/1);
  ASSERT_EQ(adapters.modules.size(), 2u * 7u);
  EXPECT_EQ(adapters.modules[0].first, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(adapters.modules[6].first, "model.layers.0.mlp.down_proj");
  EXPECT_EQ(adapters.find("lm_head"), nullptr);
  for (const auto& [name, layer] : m->named_linears()) {
    EXPECT_EQ(std::dynamic_pointer_cast<LoraLinearImpl>(layer) != nullptr, name != "lm_head") << name;
  }
  EXPECT_EQ(adapters.target_module_suffixes(),
            (std::vector<std::string>{"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}));
  // Parameter count from the shapes: per layer r*(in+out) summed over the 7 projections.
  const auto c = small_config();
  const int64_t per_layer = 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64) + 2 * (64 + 96) + (96 + 64));
  EXPECT_EQ(adapters.num_parameters(), c.num_hidden_layers * per_layer);
}

TEST(LoraModel, OnlyAdapterParametersRequireGrad) {
  auto m = random_model();
  for (auto& p : m->parameters()) p.set_requires_grad(true);  // even if something was trainable before
  auto adapters = attach_lora(m, config_r4(), /*seed=*/1);
  const auto params = adapters.adapter_parameters();
  ASSERT_EQ(params.size(), adapters.modules.size() * 2);
  std::set<const void*> mine;
  for (const auto& p : params) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_EQ(p.scalar_type(), torch::kFloat32);
    mine.insert(p.unsafeGetTensorImpl());
  }
  int64_t seen = 0;
  for (const auto& np : m->named_parameters()) {
    const bool is_adapter = mine.count(np.value().unsafeGetTensorImpl()) > 0;
    seen += is_adapter;
    EXPECT_EQ(np.value().requires_grad(), is_adapter) << np.key();
  }
  EXPECT_EQ(seen, static_cast<int64_t>(params.size()));  // the adapters are registered in the model
  // A backward pass reaches exactly the adapters (B = 0 at init, so A gets zero grad but B a nonzero one).
  auto ids = torch::randint(0, 96, {2, 5}, torch::kLong);
  m->forward(ids).sum().backward();
  for (const auto& [name, layer] : adapters.modules) {
    ASSERT_TRUE(layer->lora_B().grad().defined()) << name;
    EXPECT_GT(layer->lora_B().grad().abs().sum().item<double>(), 0.0) << name;
  }
}

TEST(LoraModel, ZeroBEqualsBaseExactly) {
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto m = random_model(dtype);
    auto ids = torch::randint(0, 96, {2, 7}, torch::kLong);
    torch::NoGradGuard no_grad;
    auto before = m->forward(ids);
    auto adapters = attach_lora(m, config_r4(), /*seed=*/3);
    auto after = m->forward(ids);
    EXPECT_TRUE(torch::equal(before, after)) << dtype;
    // A nonzero B changes the output.
    adapters.modules[0].second->set_weights(adapters.modules[0].second->lora_A(), torch::full({64, 4}, 0.1));
    EXPECT_FALSE(torch::equal(before, m->forward(ids))) << dtype;
  }
}

TEST(LoraModel, InitIsDeterministicPerModule) {
  auto m1 = random_model(), m2 = random_model(), m3 = random_model();
  auto a1 = attach_lora(m1, config_r4(), /*seed=*/7);
  auto a2 = attach_lora(m2, config_r4(), /*seed=*/7);
  auto a3 = attach_lora(m3, config_r4(), /*seed=*/8);
  for (size_t i = 0; i < a1.modules.size(); ++i) {
    EXPECT_TRUE(torch::equal(a1.modules[i].second->lora_A(), a2.modules[i].second->lora_A()));
    EXPECT_FALSE(torch::equal(a1.modules[i].second->lora_A(), a3.modules[i].second->lora_A()));
  }
  // A module's init does not depend on which other modules are targeted.
  auto m4 = random_model();
  LoraConfig only_v = config_r4();
  only_v.targets = {"v_proj"};
  auto a4 = attach_lora(m4, only_v, /*seed=*/7);
  EXPECT_TRUE(torch::equal(a4.find("model.layers.1.self_attn.v_proj")->lora_A(),
                           a1.find("model.layers.1.self_attn.v_proj")->lora_A()));
}

TEST(LoraModel, TargetsAndPatterns) {
  auto m = random_model();
  LoraConfig c = config_r4();
  c.targets = {"q_proj", "v_proj"};
  c.rank_pattern = {{"v_proj", 2}};
  c.alpha_pattern = {{"model.layers.1.self_attn.q_proj", 32.0}};
  c.rslora = true;
  auto a = attach_lora(m, c, /*seed=*/1);
  ASSERT_EQ(a.modules.size(), 4u);
  EXPECT_EQ(a.find("model.layers.0.self_attn.q_proj")->rank(), 4);
  EXPECT_EQ(a.find("model.layers.0.self_attn.v_proj")->rank(), 2);
  EXPECT_DOUBLE_EQ(a.find("model.layers.0.self_attn.q_proj")->scale(), 8.0 / 2.0);   // 8/sqrt(4)
  EXPECT_DOUBLE_EQ(a.find("model.layers.1.self_attn.q_proj")->scale(), 32.0 / 2.0);  // alpha_pattern
  EXPECT_DOUBLE_EQ(a.find("model.layers.0.self_attn.v_proj")->scale(), 8.0 / std::sqrt(2.0));
  EXPECT_EQ(a.find("model.layers.0.self_attn.v_proj")->lora_A().sizes(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(a.find("model.layers.0.self_attn.v_proj")->lora_B().sizes(), (std::vector<int64_t>{32, 2}));
}

TEST(LoraModel, BadTargetsAreClearErrors) {
  auto m = random_model();
  LoraConfig c = config_r4();
  c.targets = {"q_prj"};
  try {
    attach_lora(m, c, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_prj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("HINT"), std::string::npos) << e.what();
  }
  auto m2 = random_model();
  attach_lora(m2, config_r4(), 1);
  EXPECT_THROW(attach_lora(m2, config_r4(), 1), Error);  // already attached
  LoraConfig bad = config_r4();
  bad.r = 0;
  EXPECT_THROW(attach_lora(m, bad, 1), Error);
}

TEST(LoraModel, DetachRestoresBase) {
  auto m = random_model();
  auto ids = torch::randint(0, 96, {1, 6}, torch::kLong);
  torch::NoGradGuard no_grad;
  auto before = m->forward(ids);
  auto a = attach_lora(m, config_r4(), 1);
  for (auto& [n, l] : a.modules) l->set_weights(l->lora_A(), torch::ones_like(l->lora_B()));
  EXPECT_FALSE(torch::equal(before, m->forward(ids)));
  EXPECT_EQ(detach_lora(m, a), 14);
  EXPECT_TRUE(torch::equal(before, m->forward(ids)));
}

}  // namespace
}  // namespace qlora::lora
