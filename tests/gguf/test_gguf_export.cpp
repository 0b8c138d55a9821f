// GGUF export of a Llama folder and of a PEFT adapter, read back by the test reader: every metadata key, tensor
// name, ggml shape, type and offset; weights against the source with the q/k permutation undone by an inverse
// written here; llama3 rope factors against a float64 formula; hand-computed permutation example.
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

TEST(GgufLlama, PermuteHandExample) {
  // n_head 2, 8 rows (head dim 4): per head rows [a b c d] (half-split: a,b first half; c,d second) -> [a c b d]
  const auto w = torch::arange(8, torch::kFloat32).reshape({8, 1});
  EXPECT_EQ(to_vec(permute_qk(w, 2)), (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
  // with 2 columns the rows move as a whole
  const auto w2 = torch::arange(16, torch::kFloat32).reshape({8, 2});
  EXPECT_EQ(to_vec(permute_qk(w2, 2)), (std::vector<float>{0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15}));
  // one head of dim 8: [0 1 2 3 | 4 5 6 7] -> pairs (0,4) (1,5) (2,6) (3,7)
  EXPECT_EQ(to_vec(permute_qk(torch::arange(8, torch::kFloat32), 1)), (std::vector<float>{0, 4, 1, 5, 2, 6, 3, 7}));
}

TEST(GgufLlama, PermuteRoundTripsThroughIndependentInverse) {
  torch::manual_seed(1);
  for (int64_t heads : {1, 2, 4, 8}) {
    const auto w = torch::randn({heads * 16, 12});
    const auto p = permute_qk(w, heads);
    EXPECT_EQ(unpermute_rows(to_vec(p), heads * 16, 12, heads), to_vec(w)) << heads;
  }
}

TEST(GgufLlama, TensorNames) {
  EXPECT_EQ(*gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(*gguf_tensor_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(*gguf_tensor_name("lm_head.weight"), "output.weight");
  const std::vector<std::pair<std::string, std::string>> layer = {
      {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"},      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},   {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},           {"mlp.down_proj", "ffn_down"}};
  for (const auto& [hf, gg] : layer) {
    EXPECT_EQ(*gguf_tensor_name("model.layers.17." + hf + ".weight"), "blk.17." + gg + ".weight");
  }
  EXPECT_FALSE(gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq").has_value());
  EXPECT_THROW(gguf_tensor_name("model.layers.0.self_attn.q_proj.bias"), qlora::Error);
  EXPECT_THROW(gguf_tensor_name("vision_tower.weight"), qlora::Error);
}

TEST(GgufLlama, TensorTypes) {
  EXPECT_EQ(tensor_type_for("blk.0.attn_norm.weight", {64}, OutType::kQ8_0), GgmlType::kF32);
  EXPECT_EQ(tensor_type_for("blk.0.attn_q.weight", {64, 64}, OutType::kQ8_0), GgmlType::kQ8_0);
  EXPECT_EQ(tensor_type_for("blk.0.ffn_down.weight", {64, 80}, OutType::kQ8_0), GgmlType::kF16);
  EXPECT_EQ(tensor_type_for("token_embd.weight", {300, 64}, OutType::kQ8_0), GgmlType::kQ8_0);
  EXPECT_EQ(tensor_type_for("output.weight", {300, 64}, OutType::kQ4_0), GgmlType::kQ8_0);
  EXPECT_EQ(tensor_type_for("blk.1.ffn_up.weight", {96, 64}, OutType::kQ4_0), GgmlType::kQ4_0);
  EXPECT_EQ(tensor_type_for("blk.1.ffn_up.weight", {96, 64}, OutType::kBF16), GgmlType::kBF16);
  EXPECT_EQ(tensor_type_for("blk.1.ffn_up.weight", {96, 64}, OutType::kF32), GgmlType::kF32);
  EXPECT_EQ(llama_file_type(OutType::kF32), 0u);
  EXPECT_EQ(llama_file_type(OutType::kF16), 1u);
  EXPECT_EQ(llama_file_type(OutType::kQ4_0), 2u);
  EXPECT_EQ(llama_file_type(OutType::kQ8_0), 7u);
  EXPECT_EQ(llama_file_type(OutType::kBF16), 32u);
  EXPECT_THROW(parse_out_type("q4_k"), qlora::Error);
}

// Llama 3.1 numbers: theta 500000, head_dim 128, factor 8, low 1, high 4, original context 8192.
TEST(GgufLlama, Llama3RopeFactorsMatchFloat64Formula) {
  io::LlamaConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  const auto f = llama3_rope_factors(c);
  ASSERT_EQ(f.size(), 64u);
  int ones = 0, eights = 0, between = 0;
  for (int i = 0; i < 64; ++i) {
    const double freq = std::pow(500000.0, -2.0 * i / 128.0);
    const double wavelen = 2 * M_PI / freq;
    double want;
    if (wavelen < 8192.0 / 4.0) {
      want = 1.0, ++ones;
    } else if (wavelen > 8192.0) {
      want = 8.0, ++eights;
    } else {
      const double s = (8192.0 / wavelen - 1.0) / 3.0;
      want = 1.0 / ((1.0 - s) / 8.0 + s), ++between;
    }
    EXPECT_NEAR(f[i], want, 1e-5 * want) << i;
  }
  EXPECT_GT(ones, 0);
  EXPECT_GT(eights, 0);
  EXPECT_GT(between, 0);
  EXPECT_EQ(f.front(), 1.0f);
  EXPECT_EQ(f.back(), 8.0f);
  c.rope_scaling.type = "";
  EXPECT_TRUE(llama3_rope_factors(c).empty());
}

// Every key an F32 export of the mini model must carry, with its value.
void expect_model_metadata(const rd::File& f, const MiniLlama& m, uint32_t file_type, bool quantized) {
  EXPECT_EQ(f.at("general.architecture").s(), "llama");
  EXPECT_EQ(f.at("general.type").s(), "model");
  EXPECT_EQ(f.at("general.name").s(), "mini");
  EXPECT_EQ(f.at("general.alignment").type, 4u);
  EXPECT_EQ(f.at("general.alignment").n(), 32);
  EXPECT_EQ(f.at("general.file_type").type, 4u);
  EXPECT_EQ(f.at("general.file_type").n(), file_type);
  EXPECT_EQ(f.kv.count("general.quantization_version"), quantized ? 1u : 0u);
  if (quantized) {
    EXPECT_EQ(f.at("general.quantization_version").n(), 2);
  }
  const std::vector<std::pair<std::string, double>> u32s = {{"llama.context_length", 256},
                                                            {"llama.embedding_length", m.hidden},
                                                            {"llama.block_count", m.layers},
                                                            {"llama.feed_forward_length", m.inter},
                                                            {"llama.attention.head_count", m.heads},
                                                            {"llama.attention.head_count_kv", m.kv_heads},
                                                            {"llama.attention.key_length", m.hidden / m.heads},
                                                            {"llama.attention.value_length", m.hidden / m.heads},
                                                            {"llama.rope.dimension_count", m.hidden / m.heads},
                                                            {"llama.vocab_size", m.vocab},
                                                            {"tokenizer.ggml.bos_token_id", 1},
                                                            {"tokenizer.ggml.eos_token_id", 2},
                                                            {"tokenizer.ggml.unknown_token_id", 0}};
  for (const auto& [k, v] : u32s) {
    SCOPED_TRACE(k);
    EXPECT_EQ(f.at(k).type, 4u);
    EXPECT_EQ(f.at(k).n(), v);
  }
  EXPECT_EQ(f.at("llama.rope.freq_base").type, 6u);
  EXPECT_EQ(f.at("llama.rope.freq_base").n(), 10000.0);
  EXPECT_EQ(f.at("llama.attention.layer_norm_rms_epsilon").type, 6u);
  EXPECT_EQ(f.at("llama.attention.layer_norm_rms_epsilon").n(), static_cast<double>(1e-5f));
  EXPECT_EQ(f.at("tokenizer.ggml.model").s(), "llama");
  EXPECT_EQ(f.at("tokenizer.ggml.pre").s(), "default");
  EXPECT_EQ(f.at("tokenizer.ggml.add_bos_token").type, 7u);
  EXPECT_EQ(f.at("tokenizer.ggml.add_bos_token").n(), 1);
  EXPECT_EQ(f.at("tokenizer.ggml.add_eos_token").n(), 0);
  EXPECT_EQ(f.kv.count("tokenizer.ggml.padding_token_id"), 0u);  // the fixture tokenizer has no pad
  // vocabulary: values known from the fixture (tests/fixtures/gguf_make_tokenizer.py)
  const auto& tokens = f.at("tokenizer.ggml.tokens");
  const auto& scores = f.at("tokenizer.ggml.scores");
  const auto& types = f.at("tokenizer.ggml.token_type");
  EXPECT_EQ(tokens.elem_type, 8u);
  EXPECT_EQ(scores.elem_type, 6u);
  EXPECT_EQ(types.elem_type, 5u);
  ASSERT_EQ(tokens.str.size(), static_cast<size_t>(m.vocab));
  ASSERT_EQ(scores.num.size(), static_cast<size_t>(m.vocab));
  ASSERT_EQ(types.num.size(), static_cast<size_t>(m.vocab));
  EXPECT_EQ(tokens.str[0], "<unk>");
  EXPECT_EQ(types.num[0], 2);
  EXPECT_EQ(tokens.str[1], "<s>");
  EXPECT_EQ(types.num[1], 3);
  EXPECT_EQ(tokens.str[2], "</s>");
  EXPECT_EQ(types.num[2], 3);
  EXPECT_EQ(tokens.str[3], "<tool>");  // sentencepiece user_defined_symbols: the ModelProto type USER_DEFINED
  EXPECT_EQ(types.num[3], 4);
  EXPECT_EQ(tokens.str[4], "<0x00>");
  EXPECT_EQ(types.num[4], 6);
  EXPECT_EQ(tokens.str[259], "<0xFF>");
  EXPECT_EQ(types.num[259], 6);
  EXPECT_EQ(tokens.str[260], "\xe2\x96\x81t");
  EXPECT_EQ(types.num[260], 1);
  for (int64_t i = 261; i < std::min<int64_t>(300, m.vocab); ++i) EXPECT_LE(scores.num[i], scores.num[i - 1]) << i;
  for (int64_t i = 300; i < m.vocab; ++i) {
    EXPECT_EQ(tokens.str[i], "[PAD" + std::to_string(i) + "]");
    EXPECT_EQ(types.num[i], 5);
    EXPECT_EQ(scores.num[i], -10000.0);
  }
}

// The tensors of the mini model in the file: names, ggml shapes (reversed), types.
void expect_model_tensors(const rd::File& f, const MiniLlama& m, OutType out) {
  const int64_t hd = m.hidden / m.heads;
  std::vector<std::pair<std::string, std::vector<uint64_t>>> want = {
      {"token_embd.weight", {uint64_t(m.hidden), uint64_t(m.vocab)}}};
  for (int64_t i = 0; i < m.layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    want.push_back({p + "attn_norm.weight", {uint64_t(m.hidden)}});
    want.push_back({p + "attn_q.weight", {uint64_t(m.hidden), uint64_t(m.heads * hd)}});
    want.push_back({p + "attn_k.weight", {uint64_t(m.hidden), uint64_t(m.kv_heads * hd)}});
    want.push_back({p + "attn_v.weight", {uint64_t(m.hidden), uint64_t(m.kv_heads * hd)}});
    want.push_back({p + "attn_output.weight", {uint64_t(m.heads * hd), uint64_t(m.hidden)}});
    want.push_back({p + "ffn_norm.weight", {uint64_t(m.hidden)}});
    want.push_back({p + "ffn_gate.weight", {uint64_t(m.hidden), uint64_t(m.inter)}});
    want.push_back({p + "ffn_up.weight", {uint64_t(m.hidden), uint64_t(m.inter)}});
    want.push_back({p + "ffn_down.weight", {uint64_t(m.inter), uint64_t(m.hidden)}});
  }
  want.push_back({"output_norm.weight", {uint64_t(m.hidden)}});
  if (!m.tied) want.push_back({"output.weight", {uint64_t(m.hidden), uint64_t(m.vocab)}});
  ASSERT_EQ(f.tensors.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].first);
    const auto& t = f.tensors[i];
    EXPECT_EQ(t.name, want[i].first);
    EXPECT_EQ(t.ne, want[i].second);
    EXPECT_EQ(t.offset % 32, 0u);
    uint32_t type = 0;  // expected ggml type id
    if (t.ne.size() == 1) {
      type = 0;
    } else {
      const bool div32 = t.ne[0] % 32 == 0;
      switch (out) {
        case OutType::kF32:
          type = 0;
          break;
        case OutType::kF16:
          type = 1;
          break;
        case OutType::kBF16:
          type = 30;
          break;
        case OutType::kQ8_0:
          type = div32 ? 8 : 1;
          break;
        case OutType::kQ4_0:
          type = !div32 ? 1 : t.name == "output.weight" ? 8 : 2;
          break;
        default:  // the K-quant mixes are checked in test_kquants.cpp and tests/interop/check_kquants.py
          ADD_FAILURE() << "no expected types for " << out_type_name(out);
          break;
      }
    }
    EXPECT_EQ(t.type, type);
  }
}

TEST(GgufExport, MiniModelF32MetadataTensorsAndData) {
  const auto dir = temp_dir();
  MiniLlama m;
  m.vocab = 320;  // 20 padding entries
  make_mini_llama(dir / "mini", m);
  ExportOptions o;
  o.out_type = OutType::kF32;
  o.show_progress = false;
  const auto s = export_model_gguf(dir / "mini", dir / "mini.gguf", o);
  EXPECT_EQ(s.tensors, 2 + 9 * m.layers + 1);
  EXPECT_EQ(s.bytes, fs::file_size(dir / "mini.gguf"));
  const auto f = rd::read(dir / "mini.gguf");
  expect_model_metadata(f, m, 0, false);
  expect_model_tensors(f, m, OutType::kF32);
  EXPECT_FALSE(f.has_tensor("rope_freqs.weight"));

  // Data: bf16 source values exactly, q/k rows permuted (undone by the test's inverse).
  const auto src = qlora::test::mini_weights(m, 7);
  std::map<std::string, torch::Tensor> by_name(src.begin(), src.end());
  const int64_t hd = m.hidden / m.heads;
  for (int64_t i = 0; i < m.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const std::string g = "blk." + std::to_string(i) + ".";
    EXPECT_EQ(unpermute_rows(f.decode(g + "attn_q.weight"), m.heads * hd, m.hidden, m.heads),
              to_vec(by_name[p + "self_attn.q_proj.weight"]));
    EXPECT_EQ(unpermute_rows(f.decode(g + "attn_k.weight"), m.kv_heads * hd, m.hidden, m.kv_heads),
              to_vec(by_name[p + "self_attn.k_proj.weight"]));
    EXPECT_EQ(f.decode(g + "attn_v.weight"), to_vec(by_name[p + "self_attn.v_proj.weight"]));
    EXPECT_EQ(f.decode(g + "ffn_down.weight"), to_vec(by_name[p + "mlp.down_proj.weight"]));
    EXPECT_EQ(f.decode(g + "attn_norm.weight"), to_vec(by_name[p + "input_layernorm.weight"]));
  }
  EXPECT_EQ(f.decode("token_embd.weight"), to_vec(by_name["model.embed_tokens.weight"]));
  EXPECT_EQ(f.decode("output.weight"), to_vec(by_name["lm_head.weight"]));
}

TEST(GgufExport, EveryOutTypeHasTheRightTypesAndDecodesClose) {
  const auto dir = temp_dir();
  MiniLlama m;
  m.inter = 80;  // ffn_down rows of 80: not a multiple of 32 -> F16 fallback for q8_0 / q4_0
  make_mini_llama(dir / "mini", m);
  const auto src = qlora::test::mini_weights(m, 7);
  std::map<std::string, torch::Tensor> by_name(src.begin(), src.end());
  for (OutType out : {OutType::kF16, OutType::kBF16, OutType::kQ8_0, OutType::kQ4_0}) {
    SCOPED_TRACE(out_type_name(out));
    ExportOptions o;
    o.out_type = out;
    o.show_progress = false;
    const auto path = dir / ("mini-" + out_type_name(out) + ".gguf");
    export_model_gguf(dir / "mini", path, o);
    const auto f = rd::read(path);
    const bool quantized = out == OutType::kQ8_0 || out == OutType::kQ4_0;
    expect_model_metadata(f, m, llama_file_type(out), quantized);
    expect_model_tensors(f, m, out);
    // Reconstruction error of a quantized weight relative to its scale (bounds from the quant tests, loosest case).
    const auto v = f.decode("blk.1.attn_v.weight");
    const auto want = to_vec(by_name["model.layers.1.self_attn.v_proj.weight"]);
    ASSERT_EQ(v.size(), want.size());
    for (size_t b = 0; b < want.size() / 32; ++b) {
      double amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<double>(want[32 * b + j])));
      double bound;
      switch (out) {
        case OutType::kF16:
          bound = amax / 2048.0;
          break;
        case OutType::kBF16:
          bound = 0;
          break;  // bf16 source
        case OutType::kQ8_0:
          bound = amax / 127.0 * (0.5 + 127.0 / 2048.0);
          break;
        default:
          bound = amax / 8.0 * (1.0 + 8.0 / 2048.0);
          break;
      }
      for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(v[32 * b + j] - want[32 * b + j]), bound + 1e-12);
    }
  }
}

TEST(GgufExport, TiedEmbeddingsAndLlama3RopeFreqs) {
  const auto dir = temp_dir();
  MiniLlama m;
  m.tied = true;
  m.rope_scaling = {{"rope_type", "llama3"},
                    {"factor", 8.0},
                    {"low_freq_factor", 1.0},
                    {"high_freq_factor", 4.0},
                    {"original_max_position_embeddings", 64}};
  make_mini_llama(dir / "mini", m);
  ExportOptions o;
  o.out_type = OutType::kQ8_0;
  o.show_progress = false;
  export_model_gguf(dir / "mini", dir / "m.gguf", o);
  const auto f = rd::read(dir / "m.gguf");
  EXPECT_FALSE(f.has_tensor("output.weight"));
  ASSERT_TRUE(f.has_tensor("rope_freqs.weight"));
  const auto& rf = f.tensor("rope_freqs.weight");
  EXPECT_EQ(rf.type, 0u);
  EXPECT_EQ(rf.ne, (std::vector<uint64_t>{8}));  // head_dim 16 / 2
  const auto factors = f.decode("rope_freqs.weight");
  for (int i = 0; i < 8; ++i) {
    const double wavelen = 2 * M_PI / std::pow(10000.0, -2.0 * i / 16.0);
    double want = wavelen < 16.0 ? 1.0 : wavelen > 64.0 ? 8.0 : 0.0;
    if (want == 0.0) {
      const double s = (64.0 / wavelen - 1.0) / 3.0;
      want = 1.0 / ((1.0 - s) / 8.0 + s);
    }
    EXPECT_NEAR(factors[i], want, 1e-5 * want) << i;
  }
  EXPECT_EQ(f.kv.count("llama.rope.scaling.type"), 0u);
}

TEST(GgufExport, LinearRopeScalingKeys) {
  const auto dir = temp_dir();
  MiniLlama m;
  m.rope_scaling = {{"type", "linear"}, {"factor", 4.0}};
  make_mini_llama(dir / "mini", m);
  ExportOptions o;
  o.show_progress = false;
  export_model_gguf(dir / "mini", dir / "m.gguf", o);
  const auto f = rd::read(dir / "m.gguf");
  EXPECT_EQ(f.at("llama.rope.scaling.type").s(), "linear");
  EXPECT_EQ(f.at("llama.rope.scaling.factor").n(), 4.0);
  EXPECT_FALSE(f.has_tensor("rope_freqs.weight"));
}

TEST(GgufExport, RefusesExistingOutputAndBrokenFolders) {
  const auto dir = temp_dir();
  make_mini_llama(dir / "mini");
  ExportOptions o;
  o.show_progress = false;
  export_model_gguf(dir / "mini", dir / "m.gguf", o);
  EXPECT_THROW(export_model_gguf(dir / "mini", dir / "m.gguf", o), qlora::Error);
  o.overwrite = true;
  EXPECT_NO_THROW(export_model_gguf(dir / "mini", dir / "m.gguf", o));
  fs::remove(dir / "mini" / "tokenizer.model");
  EXPECT_THROW(export_model_gguf(dir / "mini", dir / "m2.gguf", o), qlora::Error);
  EXPECT_FALSE(fs::exists(dir / "m2.gguf"));
}

// The ctest fixture's tiny model (qlora-make-tiny), when it exists: exports as Q8_0 and reads back.
TEST(GgufExport, TinyFixtureModelExports) {
  const auto tiny = qlora::test::tiny_model_dir();
  if (!fs::exists(tiny / "config.json")) GTEST_SKIP() << "no tiny model at " << tiny;
  const auto dir = temp_dir();
  ExportOptions o;
  o.out_type = OutType::kQ8_0;
  o.show_progress = false;
  export_model_gguf(tiny, dir / "tiny.gguf", o);
  const auto f = rd::read(dir / "tiny.gguf");
  const auto cfg = io::load_llama_config(tiny / "config.json");
  EXPECT_EQ(f.at("llama.block_count").n(), cfg.num_hidden_layers);
  EXPECT_EQ(f.at("llama.embedding_length").n(), cfg.hidden_size);
  EXPECT_EQ(f.at("tokenizer.ggml.tokens").str.size(), static_cast<size_t>(cfg.vocab_size));
  EXPECT_EQ(f.tensor("blk.0.attn_k.weight").ne,
            (std::vector<uint64_t>{uint64_t(cfg.hidden_size), uint64_t(cfg.kv_dim())}));
}

}  // namespace
}  // namespace qlora::gguf

namespace qlora::gguf {
namespace {

// A bnb-4bit checkpoint (NF4 + double quant projections, 16-bit rest) exports by dequantizing each projection:
// the F32 export holds dequantize_4bit of the stored codes, within NF4's error of the original weights
// (half the widest gap of the NF4 codebook, 0.5 * (1 - 0.6962), times the block absmax, plus slack for the
// double-quantized absmax).
TEST(GgufExport, Bnb4bitCheckpointIsDequantized) {
  const auto dir = temp_dir();
  MiniLlama m;
  make_mini_llama(dir / "mini", m);
  const auto src = qlora::test::mini_weights(m, 7);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::map<std::string, quant::QuantizedTensor> quantized;
  for (const auto& [name, t] : src) {
    if (name.find("_proj.weight") != std::string::npos) {
      const auto q = quant::quantize_4bit(t, quant::QuantType::kNF4, 64, true);
      quantized[name] = q;
      for (auto& kv : io::bnb_tensors(name.substr(0, name.size() - 7), q)) out.push_back(kv);
    } else {
      out.emplace_back(name, t);
    }
  }
  fs::remove(dir / "mini" / "model.safetensors");
  io::save_safetensors(dir / "mini" / "model.safetensors", out);
  auto cfg = qlora::test::mini_config_json(m);
  cfg["quantization_config"] = io::bnb_quantization_config(quant::QuantType::kNF4, true, "bfloat16");
  std::ofstream(dir / "mini" / "config.json") << cfg.dump(2);

  ExportOptions o;
  o.out_type = OutType::kF32;
  o.show_progress = false;
  export_model_gguf(dir / "mini", dir / "bnb.gguf", o);
  const auto f = rd::read(dir / "bnb.gguf");
  expect_model_tensors(f, m, OutType::kF32);
  std::map<std::string, torch::Tensor> by_name(src.begin(), src.end());
  const auto v = f.decode("blk.1.ffn_up.weight");
  EXPECT_EQ(v, to_vec(quant::dequantize_4bit(quantized.at("model.layers.1.mlp.up_proj.weight"), torch::kFloat32)));
  const auto orig = to_vec(by_name.at("model.layers.1.mlp.up_proj.weight"));
  for (size_t b = 0; b < orig.size() / 64; ++b) {
    double amax = 0;
    for (int j = 0; j < 64; ++j) amax = std::max(amax, std::fabs(static_cast<double>(orig[64 * b + j])));
    for (int j = 0; j < 64; ++j) ASSERT_LE(std::fabs(v[64 * b + j] - orig[64 * b + j]), amax * (0.152 + 0.02));
  }
  // q rows permuted after dequantization
  const auto q = f.decode("blk.0.attn_q.weight");
  EXPECT_EQ(unpermute_rows(q, m.hidden, m.hidden, m.heads),
            to_vec(quant::dequantize_4bit(quantized.at("model.layers.0.self_attn.q_proj.weight"), torch::kFloat32)));
  // norms and embeddings untouched
  EXPECT_EQ(f.decode("token_embd.weight"), to_vec(by_name.at("model.embed_tokens.weight")));
}

}  // namespace
}  // namespace qlora::gguf
