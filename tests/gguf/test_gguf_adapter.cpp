// GGUF LoRA adapters (llama.cpp --lora) and adapters merged into a model export, read back by the test reader:
// keys, tensor names and types, B rows with the q/k permutation undone by an inverse written here, alpha and rslora,
// the merged weights against a float64 W + scale * B @ A.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "common/error.h"
#include "gguf/gguf_export.h"
#include "gguf/gguf_llama.h"
#include "gguf/gguf_test_model.h"
#include "gguf/gguf_test_reader.h"
#include "io/bnb_format.h"
#include "io/hf_config.h"
#include "quant/quantized_tensor.h"
#include "test_util.h"

namespace qlora::gguf {
namespace {

namespace rd = qlora::test::gguf_reader;
using qlora::test::make_mini_llama;
using qlora::test::make_peft_adapter;
using qlora::test::MiniLlama;
using qlora::test::temp_dir;
using qlora::test::to_vec;
using qlora::test::unpermute_rows;

struct AdapterCase {
  MiniLlama m;
  std::vector<std::pair<std::string, std::pair<torch::Tensor, torch::Tensor>>> mods;
};

AdapterCase make_adapter_case(int64_t r) {
  AdapterCase c;
  torch::manual_seed(11);
  const int64_t h = c.m.hidden, hd = h / c.m.heads;
  auto ab = [&](int64_t out, int64_t in) {
    return std::make_pair(torch::randn({r, in}) * 0.1, torch::randn({out, r}) * 0.1);
  };
  c.mods = {{"model.layers.0.self_attn.q_proj", ab(c.m.heads * hd, h)},
            {"model.layers.0.self_attn.k_proj", ab(c.m.kv_heads * hd, h)},
            {"model.layers.1.self_attn.v_proj", ab(c.m.kv_heads * hd, h)},
            {"model.layers.1.mlp.down_proj", ab(h, c.m.inter)}};
  return c;
}

TEST(GgufExport, AdapterKeysTensorsAndPermutedB) {
  const auto dir = temp_dir();
  const int64_t r = 4;
  auto c = make_adapter_case(r);
  make_mini_llama(dir / "base", c.m);
  make_peft_adapter(dir / "ad", c.mods, r, 8.0);
  const auto s = export_adapter_gguf(dir / "ad", dir / "base", dir / "ad.gguf");
  EXPECT_EQ(s.tensors, 8);
  const auto f = rd::read(dir / "ad.gguf");
  EXPECT_EQ(f.at("general.architecture").s(), "llama");
  EXPECT_EQ(f.at("general.type").s(), "adapter");
  EXPECT_EQ(f.at("adapter.type").s(), "lora");
  EXPECT_EQ(f.at("adapter.lora.alpha").type, 6u);
  EXPECT_EQ(f.at("adapter.lora.alpha").n(), 8.0);
  EXPECT_EQ(f.at("general.file_type").n(), 0);
  const int64_t hd = c.m.hidden / c.m.heads;
  const std::map<std::string, std::pair<std::string, int64_t>> gname = {
      {"model.layers.0.self_attn.q_proj", {"blk.0.attn_q.weight", c.m.heads}},
      {"model.layers.0.self_attn.k_proj", {"blk.0.attn_k.weight", c.m.kv_heads}},
      {"model.layers.1.self_attn.v_proj", {"blk.1.attn_v.weight", 0}},
      {"model.layers.1.mlp.down_proj", {"blk.1.ffn_down.weight", 0}}};
  for (const auto& [module, ab] : c.mods) {
    SCOPED_TRACE(module);
    const auto& [g, heads] = gname.at(module);
    const auto& a = f.tensor(g + ".lora_a");
    const auto& b = f.tensor(g + ".lora_b");
    EXPECT_EQ(a.type, 0u);
    EXPECT_EQ(b.type, 0u);
    EXPECT_EQ(a.ne, (std::vector<uint64_t>{uint64_t(ab.first.size(1)), uint64_t(r)}));   // [in, r]
    EXPECT_EQ(b.ne, (std::vector<uint64_t>{uint64_t(r), uint64_t(ab.second.size(0))}));  // [r, out]
    EXPECT_EQ(f.decode(g + ".lora_a"), to_vec(ab.first));
    auto bd = f.decode(g + ".lora_b");
    if (heads) bd = unpermute_rows(bd, ab.second.size(0), r, heads);
    EXPECT_EQ(bd, to_vec(ab.second));
  }
  (void)hd;
}

TEST(GgufExport, AdapterRsloraAlphaAndErrors) {
  const auto dir = temp_dir();
  auto c = make_adapter_case(4);
  make_mini_llama(dir / "base", c.m);
  make_peft_adapter(dir / "rs", c.mods, 4, 8.0, /*rslora=*/true);
  export_adapter_gguf(dir / "rs", dir / "base", dir / "rs.gguf");
  // llama.cpp scales by alpha / r: alpha' = 8 * sqrt(4) = 16 gives 16 / 4 = 8 / sqrt(4).
  EXPECT_EQ(rd::read(dir / "rs.gguf").at("adapter.lora.alpha").n(), 16.0);

  auto bad = c.mods;
  bad.push_back({"lm_head", {torch::randn({4, c.m.hidden}), torch::randn({c.m.vocab, 4})}});
  make_peft_adapter(dir / "head", bad, 4, 8.0);
  try {
    export_adapter_gguf(dir / "head", dir / "base", dir / "head.gguf");
    ADD_FAILURE() << "lm_head adapter must be refused";
  } catch (const qlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    // load_adapter may refuse it first; any clear error naming the module is fine
    EXPECT_NE(std::string(e.what()).find("lm_head"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "head.gguf"));
  // q8_0 adapters: A rows (in = 64) quantize, B rows (r = 4) fall back to F16
  AdapterExportOptions q;
  q.out_type = OutType::kQ8_0;
  export_adapter_gguf(dir / "rs", dir / "base", dir / "q.gguf", q);
  const auto f = rd::read(dir / "q.gguf");
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.lora_a").type, 8u);
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.lora_b").type, 1u);
  EXPECT_EQ(f.at("general.quantization_version").n(), 2);
}

TEST(GgufExport, MergedAdapterEqualsBasePlusScaledDelta) {
  const auto dir = temp_dir();
  const int64_t r = 4;
  auto c = make_adapter_case(r);
  make_mini_llama(dir / "base", c.m);
  make_peft_adapter(dir / "ad", c.mods, r, 8.0);
  ExportOptions o;
  o.out_type = OutType::kF32;
  o.adapter_dir = dir / "ad";
  o.show_progress = false;
  const auto s = export_model_gguf(dir / "base", dir / "merged.gguf", o);
  EXPECT_EQ(s.merged_modules, 4);
  const auto f = rd::read(dir / "merged.gguf");
  const auto src = qlora::test::mini_weights(c.m, 7);
  std::map<std::string, torch::Tensor> by_name(src.begin(), src.end());
  const double scale = 8.0 / r;
  const int64_t hd = c.m.hidden / c.m.heads;
  // q_proj: float64 reference W + scale * B @ A, compared after undoing the permutation
  const auto& [a, b] = c.mods[0].second;
  const auto want = (by_name["model.layers.0.self_attn.q_proj.weight"].to(torch::kFloat64) +
                     scale * torch::matmul(b.to(torch::kFloat64), a.to(torch::kFloat64)))
                        .to(torch::kFloat32);
  const auto got = unpermute_rows(f.decode("blk.0.attn_q.weight"), c.m.heads * hd, c.m.hidden, c.m.heads);
  const auto wv = to_vec(want);
  for (size_t i = 0; i < wv.size(); ++i) ASSERT_NEAR(got[i], wv[i], 1e-6) << i;
  // an unadapted tensor is untouched
  EXPECT_EQ(f.decode("blk.0.attn_v.weight"), to_vec(by_name["model.layers.0.self_attn.v_proj.weight"]));
}

TEST(GgufExportApp, ExportsAndReportsErrors) {
  const auto dir = temp_dir();
  auto c = make_adapter_case(4);
  make_mini_llama(dir / "mini", c.m);
  make_peft_adapter(dir / "ad", c.mods, 4, 8.0);
  const std::string model = (dir / "mini").string(), out = (dir / "m.gguf").string();
  auto r = qlora::test::run_app("qlora-export-gguf", "--model " + model + " --out " + out + " --outtype q8_0");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote"), std::string::npos) << r.output;
  EXPECT_EQ(rd::read(out).at("general.file_type").n(), 7);
  r = qlora::test::run_app("qlora-export-gguf", "--model " + model + " --out " + out);
  EXPECT_EQ(r.exit_code, 2) << r.output;  // exists, no --overwrite
  r = qlora::test::run_app("qlora-export-gguf", "--model " + model + " --out " + out + " --overwrite --outtype q4_k");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = qlora::test::run_app("qlora-export-gguf", "--adapter " + (dir / "ad").string() + " --base " + model + " --out " +
                                                    (dir / "ad.gguf").string() + " --adapter-only");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(rd::read(dir / "ad.gguf").at("general.type").s(), "adapter");
  r = qlora::test::run_app("qlora-export-gguf", "--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--adapter-only"), std::string::npos);
}

}  // namespace
}  // namespace qlora::gguf
