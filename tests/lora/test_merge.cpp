// Merging adapters into the tiny model: merged logits vs base + adapter logits (16-bit and nf4 outputs, 16-bit and
// bnb-4bit bases), sharding, and a mismatched adapter failing before anything is written.
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "io/safetensors.h"
#include "lora/merge.h"
#include "lora/peft_io.h"
#include "model/llama.h"
#include "test_util.h"

namespace qlora::lora {
namespace {

using qlora::test::temp_dir;
using qlora::test::tiny_model_dir;

// Merged bf16 weights: each W' is rounded to bf16 (rel. 2^-9); logits move by about that relative amount.
constexpr double kBf16LogitsTol = 2e-2;  // max |diff| / max |logit|
// nf4 output: the whole model is 4-bit (the reference is the 16-bit base + adapter).
// Measured 0.29 on a 4-layer hidden-128 stand-in model (weights std 0.05); bound leaves headroom.
constexpr double kNf4LogitsTol = 0.5;       // max |diff| / max |logit|
constexpr double kNf4MeanRelErrMax = 0.15;  // per projection mean |dq(q(W')) - W'| / mean |W'|

model::LlamaModel load(const fs::path& dir, bool nf4) {
  model::LoadOptions o;
  o.compute_dtype = torch::kFloat32;
  if (!nf4) o.quant = std::nullopt;
  o.show_progress = false;
  auto m = model::load_model(dir, o);
  m->eval();
  return m;
}

double rel_err(const torch::Tensor& got, const torch::Tensor& ref) {
  return (got.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>() /
         ref.to(torch::kFloat64).abs().max().item<double>();
}

// Attaches an adapter with random nonzero B to `m`, saves it to `dir`, returns the adapters.
LoraAdapters make_adapter(model::LlamaModel& m, const fs::path& dir, uint64_t seed, double b_std = 0.02) {
  LoraConfig c;
  c.r = 8;
  c.alpha = 16;
  c.dropout = 0.0;
  auto adapters = attach_lora(m, c, seed);
  torch::manual_seed(seed);
  for (auto& [name, layer] : adapters.modules) {
    layer->set_weights(layer->lora_A(), torch::randn(layer->lora_B().sizes()) * b_std);
  }
  SaveAdapterOptions so;
  so.base_model_name_or_path = tiny_model_dir().string();
  save_adapter(dir, adapters, so);
  return adapters;
}

torch::Tensor sample_ids(const model::LlamaModel& m) {
  torch::manual_seed(123);
  return torch::randint(0, m->config().vocab_size, {2, 12}, torch::kLong);
}

TEST(Merge, Bf16MergedLogitsEqualBasePlusAdapter) {
  const fs::path work = temp_dir();
  auto m = load(tiny_model_dir(), /*nf4=*/false);
  make_adapter(m, work / "adapter", /*seed=*/1);
  const auto ids = sample_ids(m);
  torch::NoGradGuard no_grad;
  const auto want = m->forward(ids);
  const auto base_only = load(tiny_model_dir(), false)->forward(ids);

  MergeOptions o;
  o.base_dir = tiny_model_dir();
  o.adapter_dir = work / "adapter";
  o.out_dir = work / "merged";
  o.format = MergeFormat::kBF16;
  o.max_shard_bytes = 200'000;  // force several shards + index
  o.show_progress = false;
  const MergeReport r = merge_adapter(o);
  EXPECT_EQ(r.modules_merged, m->config().num_hidden_layers * 7);
  EXPECT_FALSE(r.base_was_4bit);
  EXPECT_TRUE(fs::exists(o.out_dir / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(o.out_dir / "tokenizer.model"));
  const auto cfg = nlohmann::json::parse(read_file(o.out_dir / "config.json"));
  EXPECT_EQ(cfg.value("torch_dtype", ""), "bfloat16");
  EXPECT_FALSE(cfg.contains("quantization_config"));

  auto merged = load(o.out_dir, false);
  const auto got = merged->forward(ids);
  const double err = rel_err(got, want), effect = rel_err(base_only, want);
  std::printf("[bf16 merge] logits rel err %.3e (adapter effect %.3e)\n", err, effect);
  EXPECT_LT(err, kBf16LogitsTol);
  EXPECT_GT(effect, 5 * err);  // the adapter changes the logits far more than the merge error
  auto ckpt = io::Checkpoint::open(o.out_dir);
  for (const auto& n : ckpt.names()) EXPECT_EQ(ckpt.info(n).dtype, torch::kBFloat16) << n;
}

TEST(Merge, Nf4MergedLogitsCloseAndBnbBaseMerges) {
  const fs::path work = temp_dir();
  auto m = load(tiny_model_dir(), false);
  make_adapter(m, work / "adapter", /*seed=*/2);
  const auto ids = sample_ids(m);
  torch::NoGradGuard no_grad;
  const auto want = m->forward(ids);

  MergeOptions o;
  o.base_dir = tiny_model_dir();
  o.adapter_dir = work / "adapter";
  o.out_dir = work / "merged_nf4";
  o.format = MergeFormat::kNF4;
  o.show_progress = false;
  const MergeReport r = merge_adapter(o);
  ASSERT_EQ(r.requant.size(), static_cast<size_t>(m->config().num_hidden_layers * 7));
  std::printf("[nf4 merge] requant mean rel err %.4f, max rel err %.4f\n", r.requant_mean_rel, r.requant_max_rel);
  for (const auto& e : r.requant) {
    EXPECT_GT(e.mean_rel, 0.0) << e.module;
    EXPECT_LT(e.mean_rel, kNf4MeanRelErrMax) << e.module;
  }
  const auto cfg = nlohmann::json::parse(read_file(o.out_dir / "config.json"));
  ASSERT_TRUE(cfg.contains("quantization_config"));
  EXPECT_EQ(cfg["quantization_config"].value("bnb_4bit_quant_type", ""), "nf4");
  EXPECT_EQ(cfg["quantization_config"].value("bnb_4bit_use_double_quant", false), true);
  auto ckpt = io::Checkpoint::open(o.out_dir);
  EXPECT_TRUE(ckpt.contains("model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"));

  auto merged = load(o.out_dir, /*nf4=*/true);
  const auto got = merged->forward(ids);
  const double err = rel_err(got, want);
  std::printf("[nf4 merge] logits rel err vs 16-bit base + adapter %.3e\n", err);
  EXPECT_LT(err, kNf4LogitsTol);

  // The nf4 folder as a bnb-4bit base: merge a second adapter into it (dequantize, add, write bf16).
  auto m4 = load(o.out_dir, /*nf4=*/true);
  make_adapter(m4, work / "adapter2", /*seed=*/3);
  const auto want2 = m4->forward(ids);
  MergeOptions o2 = o;
  o2.base_dir = o.out_dir;
  o2.adapter_dir = work / "adapter2";
  o2.out_dir = work / "merged_from_4bit";
  o2.format = MergeFormat::kBF16;
  const MergeReport r2 = merge_adapter(o2);
  EXPECT_TRUE(r2.base_was_4bit);
  const double err2 = rel_err(load(o2.out_dir, false)->forward(ids), want2);
  std::printf("[bnb base -> bf16 merge] logits rel err %.3e\n", err2);
  EXPECT_LT(err2, kBf16LogitsTol);

  // nf4 output from a bnb base with a partial adapter (the PEFT fixture: q/v of layers 0-1): only those are
  // re-quantized; every other projection is copied byte for byte.
  MergeOptions o3 = o;
  o3.base_dir = o.out_dir;
  o3.adapter_dir = qlora::test::fixtures_dir() / "lora_peft_fixture";
  o3.out_dir = work / "merged_nf4_again";
  const MergeReport r3 = merge_adapter(o3);
  EXPECT_TRUE(r3.base_was_4bit);
  EXPECT_EQ(r3.modules_merged, 4);
  ASSERT_EQ(r3.requant.size(), 4u);
  auto before = io::Checkpoint::open(o.out_dir), after = io::Checkpoint::open(o3.out_dir);
  for (const auto& n : before.names()) {
    ASSERT_TRUE(after.contains(n)) << n;
    const bool touched = n.find("layers.0.self_attn.q_proj") != std::string::npos ||
                         n.find("layers.0.self_attn.v_proj") != std::string::npos ||
                         n.find("layers.1.self_attn.q_proj") != std::string::npos ||
                         n.find("layers.1.self_attn.v_proj") != std::string::npos;
    if (!touched) {
      EXPECT_TRUE(torch::equal(before.get(n), after.get(n))) << n;
    }
  }
  EXPECT_FALSE(torch::equal(before.get("model.layers.0.self_attn.q_proj.weight"),
                            after.get("model.layers.0.self_attn.q_proj.weight")));
}

TEST(Merge, MismatchedAdapterFailsAndWritesNothing) {
  const fs::path work = temp_dir();
  // An adapter for a model with another hidden size.
  io::LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 96;
  c.intermediate_size = 160;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 24;
  torch::manual_seed(1);
  model::LlamaModel other(c, torch::kFloat32);
  other->init_weights(0.02);
  LoraConfig lc;
  lc.r = 4;
  auto adapters = attach_lora(other, lc, 1);
  save_adapter(work / "wrong", adapters);

  MergeOptions o;
  o.base_dir = tiny_model_dir();
  o.adapter_dir = work / "wrong";
  o.out_dir = work / "out" / "merged";
  o.show_progress = false;
  try {
    merge_adapter(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    // Modules are checked in name order: layer 0 down_proj (hidden 96 vs 128) comes first.
    EXPECT_NE(msg.find("model.layers.0.mlp.down_proj"), std::string::npos) << msg;
    EXPECT_NE(msg.find("has shape"), std::string::npos) << msg;
    EXPECT_NE(msg.find("HINT"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(o.out_dir));
  for (const auto& e : fs::directory_iterator(work)) {
    EXPECT_EQ(e.path().filename().string().find("merged"), std::string::npos) << e.path();
  }

  // Same through the app: exit code 2, one clear message, nothing written.
  const auto res = qlora::test::run_app("qlora-merge", "--base " + tiny_model_dir().string() + " --adapter " +
                                                           (work / "wrong").string() + " --out " + o.out_dir.string());
  EXPECT_EQ(res.exit_code, 2) << res.output;
  EXPECT_NE(res.output.find("model.layers.0.mlp.down_proj"), std::string::npos) << res.output;
  EXPECT_FALSE(fs::exists(o.out_dir));
}

TEST(Merge, AppMergesAndRefusesToOverwrite) {
  const fs::path work = temp_dir();
  auto m = load(tiny_model_dir(), false);
  make_adapter(m, work / "adapter", /*seed=*/4);
  const std::string args = "--base " + tiny_model_dir().string() + " --adapter " + (work / "adapter").string() +
                           " --out " + (work / "merged").string() + " --dtype fp16 --max-shard-size 1MB";
  auto res = qlora::test::run_app("qlora-merge", args);
  ASSERT_EQ(res.exit_code, 0) << res.output;
  EXPECT_NE(res.output.find("merged 28 adapter modules"), std::string::npos) << res.output;
  auto ckpt = io::Checkpoint::open(work / "merged");
  EXPECT_EQ(ckpt.info("model.layers.0.self_attn.q_proj.weight").dtype, torch::kFloat16);
  res = qlora::test::run_app("qlora-merge", args);
  EXPECT_EQ(res.exit_code, 2) << res.output;
  EXPECT_NE(res.output.find("--overwrite"), std::string::npos) << res.output;
  EXPECT_EQ(qlora::test::run_app("qlora-merge", args + " --overwrite").exit_code, 0);
  EXPECT_EQ(qlora::test::run_app("qlora-merge", "--help").exit_code, 0);
}

TEST(Merge, ParsesShardSizes) {
  EXPECT_EQ(parse_size_bytes("5GB"), 5'000'000'000ull);
  EXPECT_EQ(parse_size_bytes("500MB"), 500'000'000ull);
  EXPECT_EQ(parse_size_bytes("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_size_bytes("1000"), 1000ull);
  EXPECT_THROW(parse_size_bytes("GB"), Error);
  EXPECT_THROW(parse_size_bytes("5XB"), Error);
  EXPECT_EQ(parse_merge_format("nf4"), MergeFormat::kNF4);
  EXPECT_THROW(parse_merge_format("int8"), Error);
}

}  // namespace
}  // namespace qlora::lora
