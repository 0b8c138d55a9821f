// qlora-make-tiny: determinism, HF layout (names/shapes written out by hand from the Llama architecture),
// init statistics, and the output-folder contract.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tools/tiny_model.h"

namespace qlora::tools {
namespace {

using qlora::test::run_app;
using qlora::test::temp_dir;
using qlora::test::tiny_model_dir;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TinyModel, SameSeedSameBytesDifferentSeedDifferentWeights) {
  const fs::path dir = temp_dir();
  for (const char* name : {"a", "b"}) {
    const auto r = run_app("qlora-make-tiny", "--out " + (dir / name).string() + " --preset tiny --seed 7");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const auto r = run_app("qlora-make-tiny", "--out " + (dir / "c").string() + " --seed 8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* f : {"model.safetensors", "tokenizer.model", "config.json", "generation_config.json"}) {
    const std::string a = slurp(dir / "a" / f);
    ASSERT_FALSE(a.empty()) << f;
    EXPECT_TRUE(a == slurp(dir / "b" / f)) << f << " differs between two runs with the same seed";
  }
  EXPECT_TRUE(slurp(dir / "a" / "tokenizer.model") == slurp(dir / "c" / "tokenizer.model"));
  EXPECT_FALSE(slurp(dir / "a" / "model.safetensors") == slurp(dir / "c" / "model.safetensors"));
}

TEST(TinyModel, OutputFolderContract) {
  const fs::path out = temp_dir() / "m";
  ASSERT_EQ(run_app("qlora-make-tiny", "--out " + out.string()).exit_code, 0);
  const auto again = run_app("qlora-make-tiny", "--out " + out.string());
  EXPECT_EQ(again.exit_code, 2) << again.output;
  EXPECT_NE(again.output.find("already exists"), std::string::npos) << again.output;
  EXPECT_EQ(run_app("qlora-make-tiny", "--out " + out.string() + " --overwrite --seed 3").exit_code, 0);
  EXPECT_EQ(run_app("qlora-make-tiny", "--out " + out.string() + "2 --preset huge").exit_code, 2);
  EXPECT_FALSE(fs::exists(out.string() + "2"));
  EXPECT_EQ(run_app("qlora-make-tiny", "--help").exit_code, 0);
  for (const auto& e : fs::directory_iterator(out.parent_path())) {
    EXPECT_EQ(e.path().filename().string(), "m") << "left behind: " << e.path().string();
  }
}

TEST(TinyModel, ConfigOfTinyPreset) {
  const io::LlamaConfig c = io::load_llama_config(tiny_model_dir() / "config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_hidden_layers, 4);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.intermediate_size, 352);
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  const auto gen = nlohmann::json::parse(slurp(tiny_model_dir() / "generation_config.json"));
  EXPECT_EQ(gen.at("bos_token_id"), 1);
  EXPECT_EQ(gen.at("eos_token_id"), 2);
  EXPECT_EQ(tokenizer::load_tokenizer(tiny_model_dir())->vocab_size(), c.vocab_size);
}

TEST(TinyModel, WeightsHaveHfNamesShapesAndInit) {
  // Expected layout written out by hand for hidden 128, 4 heads x 32, 2 kv heads, ffn 352, vocab 1024, 4 layers.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {{"model.embed_tokens.weight", {1024, 128}}};
  for (int l = 0; l < 4; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    expected.push_back({p + "input_layernorm.weight", {128}});
    expected.push_back({p + "self_attn.q_proj.weight", {128, 128}});
    expected.push_back({p + "self_attn.k_proj.weight", {64, 128}});
    expected.push_back({p + "self_attn.v_proj.weight", {64, 128}});
    expected.push_back({p + "self_attn.o_proj.weight", {128, 128}});
    expected.push_back({p + "post_attention_layernorm.weight", {128}});
    expected.push_back({p + "mlp.gate_proj.weight", {352, 128}});
    expected.push_back({p + "mlp.up_proj.weight", {352, 128}});
    expected.push_back({p + "mlp.down_proj.weight", {128, 352}});
  }
  expected.push_back({"model.norm.weight", {128}});
  expected.push_back({"lm_head.weight", {1024, 128}});

  const io::Checkpoint ck = io::Checkpoint::open(tiny_model_dir());
  std::vector<std::string> names;
  for (const auto& [n, s] : expected) names.push_back(n);
  EXPECT_EQ(ck.names(), names);
  EXPECT_EQ(ck.shards().at(0)->metadata().at("format"), "pt");
  int64_t params = 0;
  constexpr double kStdTol = 0.1;  // relative, for >= 8k samples of N(0, 0.02) in bf16
  for (const auto& [name, shape] : expected) {
    const io::TensorInfo& info = ck.info(name);
    EXPECT_EQ(info.shape, shape) << name;
    EXPECT_EQ(info.dtype_name, "BF16") << name;
    const torch::Tensor w = ck.get(name).to(torch::kFloat64);
    params += w.numel();
    if (name.find("norm") != std::string::npos) {
      EXPECT_TRUE(torch::equal(w, torch::ones_like(w))) << name;
    } else {
      // lm_head: 1.5 / sqrt(hidden) (hand value 0.1326 for hidden 128); everything else 0.02.
      const double want = name == "lm_head.weight" ? 1.5 / std::sqrt(128.0) : 0.02;
      EXPECT_NEAR(w.std().item<double>(), want, want * kStdTol) << name;
      EXPECT_NEAR(w.mean().item<double>(), 0.0, want / 10) << name;
    }
  }
  // 2*1024*128 + 4*(2*128 + 128*128*2 + 2*64*128 + 3*352*128) + 128
  EXPECT_EQ(params, 262144 + 4 * (256 + 32768 + 16384 + 135168) + 128);
  EXPECT_EQ(io::load_llama_config(tiny_model_dir() / "config.json").num_parameters(), params);
}

TEST(TinyModel, BenchPresetSize) {
  const io::LlamaConfig c = tiny_model_config("bench", kTinyTokenizerVocab);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.intermediate_size, 2048);
  // 2*32000*768 + 12*(2*768 + 2*768*768 + 2*256*768 + 3*768*2048) + 768
  EXPECT_EQ(c.num_parameters(), 124668672);
  EXPECT_THROW(tiny_model_config("huge", 1024), Error);
}

TEST(TinyModel, TokenizerTrainingIsDeterministic) {
  const fs::path dir = temp_dir();
  train_tiny_tokenizer(find_tiny_corpus(), dir / "a.model", 400);
  train_tiny_tokenizer(find_tiny_corpus(), dir / "b.model", 400);
  EXPECT_TRUE(slurp(dir / "a.model") == slurp(dir / "b.model"));
  EXPECT_EQ(tokenizer::load_sentencepiece_tokenizer(dir / "a.model")->vocab_size(), 400);
  EXPECT_THROW(train_tiny_tokenizer(dir / "no-corpus.txt", dir / "c.model"), Error);
}

}  // namespace
}  // namespace qlora::tools
