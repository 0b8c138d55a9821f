// PEFT adapter files: exact round trip, PEFT key/config layout (fixture written from the format spec by
// tests/fixtures/make_lora_peft_fixture.py), `.default` keys, and the error cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "io/safetensors.h"
#include "lora/peft_io.h"
#include "test_util.h"

namespace qlora::lora {
namespace {

using qlora::test::fixtures_dir;
using qlora::test::temp_dir;

fs::path peft_fixture() {
  return fixtures_dir() / "lora_peft_fixture";
}

// The tiny test model's attention shapes (hidden 128, 4 heads, 2 kv heads): enough for the fixture.
io::LlamaConfig tiny_like_config() {
  io::LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 128;
  c.intermediate_size = 160;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 64;
  return c;
}

model::LlamaModel random_model(uint64_t seed = 1) {
  torch::manual_seed(seed);
  model::LlamaModel m(tiny_like_config(), torch::kFloat32);
  m->init_weights(0.05);
  m->eval();
  return m;
}

// Fixture values, as the generator script defines them.
double fixture_a(int m, int64_t i, int64_t j) {
  return static_cast<double>((i * 7 + j * 3 + m) % 17 - 8) / 64.0;
}
double fixture_b(int m, int64_t i, int64_t j) {
  return static_cast<double>((i * 5 + j * 11 + 2 * m) % 13 - 6) / 128.0;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PeftIo, SaveLoadRoundTripIsBitwiseAndReproducesTheModel) {
  auto m = random_model();
  LoraConfig c;
  c.r = 8;
  c.alpha = 16;
  c.dropout = 0.1;
  c.targets = {"q_proj", "k_proj", "down_proj"};
  auto adapters = attach_lora(m, c, /*seed=*/5);
  torch::manual_seed(9);
  for (auto& [name, layer] : adapters.modules) {
    layer->set_weights(layer->lora_A(), torch::randn(layer->lora_B().sizes()) * 0.05);
  }
  const fs::path work = temp_dir();  // (temp_dir() empties the folder on each call)
  const fs::path dir = work / "adapter";
  SaveAdapterOptions so;
  so.base_model_name_or_path = "tiny";
  save_adapter(dir, adapters, so);
  EXPECT_THROW(save_adapter(dir, adapters, so), Error);  // refuses to overwrite
  so.overwrite = true;
  save_adapter(dir, adapters, so);

  const AdapterFile f = load_adapter(dir);
  ASSERT_EQ(f.modules.size(), adapters.modules.size());
  EXPECT_EQ(f.base_model_name_or_path, "tiny");
  EXPECT_EQ(f.config.r, 8);
  EXPECT_DOUBLE_EQ(f.config.alpha, 16.0);
  EXPECT_DOUBLE_EQ(f.config.dropout, 0.1);
  for (const auto& [name, layer] : adapters.modules) {
    const AdapterModule* am = f.find(name);
    ASSERT_NE(am, nullptr) << name;
    EXPECT_TRUE(torch::equal(am->a, layer->lora_A())) << name;
    EXPECT_TRUE(torch::equal(am->b, layer->lora_B())) << name;
    EXPECT_DOUBLE_EQ(am->scale(), 2.0);
  }

  auto ids = torch::randint(0, 64, {2, 6}, torch::kLong);
  torch::NoGradGuard no_grad;
  const auto want = m->forward(ids);
  auto m2 = random_model();
  auto applied = apply_adapter(m2, f);
  EXPECT_EQ(applied.modules.size(), adapters.modules.size());
  EXPECT_TRUE(torch::equal(m2->forward(ids), want));

  // bf16 adapter files hold the bf16-rounded masters.
  so.dtype = torch::kBFloat16;
  save_adapter(work / "bf16", adapters, so);
  auto st = io::SafetensorsFile::open(work / "bf16" / kAdapterWeightsFile);
  EXPECT_EQ(st->info(peft_key("model.layers.0.self_attn.q_proj", 'A')).dtype_name, "BF16");
}

TEST(PeftIo, KeysShapesAndConfigFollowPeft) {
  auto m = random_model();
  LoraConfig c;
  c.r = 4;
  c.alpha = 16;
  c.dropout = 0.05;
  c.targets = {"q_proj", "v_proj"};
  c.rank_pattern = {{"v_proj", 2}};
  c.alpha_pattern = {{"model.layers.1.self_attn.q_proj", 32}};
  auto adapters = attach_lora(m, c, 1);
  const fs::path dir = temp_dir() / "adapter";
  SaveAdapterOptions so;
  so.base_model_name_or_path = "tiny-llama-test";
  save_adapter(dir, adapters, so);

  // Same tensor names, shapes and dtypes as the PEFT-layout fixture, same metadata.
  auto ours = io::SafetensorsFile::open(dir / kAdapterWeightsFile);
  auto peft = io::SafetensorsFile::open(peft_fixture() / kAdapterWeightsFile);
  ASSERT_EQ(ours->tensors().size(), peft->tensors().size());
  for (const auto& info : peft->tensors()) {
    ASSERT_TRUE(ours->contains(info.name)) << info.name;
    EXPECT_EQ(ours->info(info.name).shape, info.shape) << info.name;
    EXPECT_EQ(ours->info(info.name).dtype_name, info.dtype_name) << info.name;
  }
  EXPECT_EQ(ours->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  // adapter_config.json: every field we write is a PEFT LoraConfig field with the value PEFT writes here.
  const auto our_cfg = nlohmann::json::parse(read_file(dir / kAdapterConfigFile));
  const auto peft_cfg = nlohmann::json::parse(read_file(peft_fixture() / kAdapterConfigFile));
  for (const auto& [k, v] : our_cfg.items()) {
    ASSERT_TRUE(peft_cfg.contains(k)) << "not a PEFT field: " << k;
    if (k == "target_modules") {
      auto a = v.get<std::vector<std::string>>(), b = peft_cfg[k].get<std::vector<std::string>>();
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      EXPECT_EQ(a, b);
    } else {
      EXPECT_EQ(v, peft_cfg[k]) << k;
    }
  }
  for (const auto& [k, v] : peft_cfg.items()) {
    if (k != "trainable_token_indices") {
      EXPECT_TRUE(our_cfg.contains(k)) << "missing PEFT field: " << k;
    }
  }
  // Text layout of json.dumps(indent=2, sort_keys=True): re-dumping Python's file reproduces it byte for byte.
  EXPECT_EQ(dump_python_json(peft_cfg), read_file(peft_fixture() / kAdapterConfigFile));
  const std::string text = read_file(dir / kAdapterConfigFile);
  EXPECT_NE(text.find("\n  \"lora_alpha\": 16,\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\n  \"lora_dropout\": 0.05,\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\"loftq_config\": {},"), std::string::npos) << text;
}

void expect_fixture_modules(const AdapterFile& f) {
  ASSERT_EQ(f.modules.size(), 4u);
  const char* names[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                         "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};
  for (int m = 0; m < 4; ++m) {
    const AdapterModule* am = f.find(names[m]);
    ASSERT_NE(am, nullptr) << names[m];
    const int64_t r = (m % 2 == 0) ? 4 : 2, out = (m % 2 == 0) ? 128 : 64;
    EXPECT_EQ(am->options.r, r);
    ASSERT_EQ(am->a.sizes(), (std::vector<int64_t>{r, 128}));
    ASSERT_EQ(am->b.sizes(), (std::vector<int64_t>{out, r}));
    auto a = am->a.to(torch::kFloat64), b = am->b.to(torch::kFloat64);
    auto pa = a.accessor<double, 2>(), pb = b.accessor<double, 2>();
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < 128; ++j) ASSERT_EQ(pa[i][j], fixture_a(m, i, j)) << names[m] << " A " << i << "," << j;
    for (int64_t i = 0; i < out; ++i)
      for (int64_t j = 0; j < r; ++j) ASSERT_EQ(pb[i][j], fixture_b(m, i, j)) << names[m] << " B " << i << "," << j;
  }
  // scale = alpha / r with alpha 16 (alpha_pattern: 32 for layer 1 q_proj), r 4 (rank_pattern: 2 for v_proj).
  EXPECT_DOUBLE_EQ(f.find(names[0])->scale(), 16.0 / 4);
  EXPECT_DOUBLE_EQ(f.find(names[1])->scale(), 16.0 / 2);
  EXPECT_DOUBLE_EQ(f.find(names[2])->scale(), 32.0 / 4);
  EXPECT_DOUBLE_EQ(f.find(names[3])->scale(), 16.0 / 2);
}

TEST(PeftIo, LoadsPeftWrittenFixture) {
  const AdapterFile f = load_adapter(peft_fixture());
  expect_fixture_modules(f);
  EXPECT_EQ(f.base_model_name_or_path, "tiny-llama-test");
  EXPECT_DOUBLE_EQ(f.config.dropout, 0.05);
  EXPECT_FALSE(f.config.rslora);
  // Applies to a model with the tiny model's shapes; the wrapped layer's delta is scale * B A.
  auto m = random_model();
  auto adapters = apply_adapter(m, f);
  ASSERT_EQ(adapters.modules.size(), 4u);
  auto layer = adapters.find("model.layers.1.self_attn.q_proj");
  auto want = f.find("model.layers.1.self_attn.q_proj");
  auto delta_ref = want->b.to(torch::kFloat64).matmul(want->a.to(torch::kFloat64)) * 8.0;
  EXPECT_LT((layer->delta_weight().to(torch::kFloat64) - delta_ref).abs().max().item<double>(), 1e-6);
}

// Copies the fixture with its tensors renamed / extended / replaced.
fs::path rewrite_fixture(const fs::path& dir, const std::function<void(io::NamedTensors&)>& edit,
                         const std::function<void(nlohmann::json&)>& edit_config = {}) {
  fs::create_directories(dir);
  auto src = io::SafetensorsFile::open(peft_fixture() / kAdapterWeightsFile);
  io::NamedTensors t;
  for (const auto& info : src->tensors()) t.emplace_back(info.name, src->get(info.name).clone());
  edit(t);
  io::save_safetensors(dir / kAdapterWeightsFile, t);
  auto cfg = nlohmann::json::parse(read_file(peft_fixture() / kAdapterConfigFile));
  if (edit_config) edit_config(cfg);
  write_file_atomic(dir / kAdapterConfigFile, cfg.dump(2));
  return dir;
}

TEST(PeftIo, AcceptsKeysWithDefaultAdapterName) {
  const fs::path dir = rewrite_fixture(temp_dir() / "with_default", [](io::NamedTensors& t) {
    for (auto& [name, tensor] : t) name.replace(name.size() - 7, 7, ".default.weight");
  });
  expect_fixture_modules(load_adapter(dir));
}

TEST(PeftIo, UnknownKeyIsAClearError) {
  const std::string dora_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight";
  const fs::path dir =
      rewrite_fixture(temp_dir() / "dora", [&](io::NamedTensors& t) { t.emplace_back(dora_key, torch::ones({128})); });
  const std::string msg = error_of([&] { load_adapter(dir); });
  EXPECT_NE(msg.find(dora_key), std::string::npos) << msg;
  EXPECT_NE(msg.find("DoRA"), std::string::npos) << msg;

  const fs::path dir2 = rewrite_fixture(temp_dir() / "emb", [&](io::NamedTensors& t) {
    t.emplace_back("base_model.model.model.embed_tokens.lora_embedding_A", torch::ones({4, 64}));
  });
  EXPECT_NE(error_of([&] { load_adapter(dir2); }).find("lora_embedding_A"), std::string::npos);

  const fs::path dir3 = rewrite_fixture(
      temp_dir() / "dora_cfg", [](io::NamedTensors&) {}, [](nlohmann::json& j) { j["use_dora"] = true; });
  EXPECT_NE(error_of([&] { load_adapter(dir3); }).find("use_dora"), std::string::npos);

  const fs::path dir4 = rewrite_fixture(temp_dir() / "lonely_a", [](io::NamedTensors& t) {
    t.erase(std::remove_if(t.begin(), t.end(),
                           [](const auto& p) {
                             return p.first == "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
                           }),
            t.end());
  });
  EXPECT_NE(error_of([&] { load_adapter(dir4); }).find("no lora_B"), std::string::npos);
}

TEST(PeftIo, ShapeMismatchAndMissingModuleAreClearErrors) {
  // lora_A of layer 0 q_proj with in = 96 instead of 128.
  const fs::path dir = rewrite_fixture(temp_dir() / "bad_shape", [](io::NamedTensors& t) {
    for (auto& [name, tensor] : t) {
      if (name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") tensor = torch::zeros({4, 96});
    }
  });
  const AdapterFile f = load_adapter(dir);  // file itself is consistent
  auto m = random_model();
  const std::string msg = error_of([&] { apply_adapter(m, f); });
  EXPECT_NE(msg.find("model.layers.0.self_attn.q_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4, 96]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4, 128]"), std::string::npos) << msg;
  // Nothing was attached.
  for (const auto& [name, layer] : m->named_linears())
    EXPECT_EQ(std::dynamic_pointer_cast<LoraLinearImpl>(layer), nullptr);

  const fs::path dir2 = rewrite_fixture(temp_dir() / "layer9", [](io::NamedTensors& t) {
    t.emplace_back("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", torch::zeros({4, 128}));
    t.emplace_back("base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight", torch::zeros({128, 4}));
  });
  const std::string msg2 = error_of([&] { apply_adapter(m, load_adapter(dir2)); });
  EXPECT_NE(msg2.find("model.layers.9.self_attn.q_proj"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("does not exist"), std::string::npos) << msg2;

  // Rank in the weights disagrees with r in adapter_config.json.
  const fs::path dir3 = rewrite_fixture(
      temp_dir() / "rank", [](io::NamedTensors&) {}, [](nlohmann::json& j) { j["r"] = 8; });
  EXPECT_NE(error_of([&] { load_adapter(dir3); }).find("rank 4"), std::string::npos);
}

}  // namespace
}  // namespace qlora::lora
