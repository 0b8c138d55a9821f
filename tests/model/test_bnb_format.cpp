// bnb-4bit safetensors layout: quant_state JSON bytes exactly as Python writes them, and write -> read round
// trips that reproduce the quantized bytes.
#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "io/bnb_format.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/llama_test_util.h"
#include "model/quantize_checkpoint.h"
#include "test_util.h"

namespace qlora::test {
namespace {

quant::QuantizedTensor fake_state(bool dq, float offset) {
  quant::QuantizedTensor q;
  q.type = quant::QuantType::kNF4;
  q.blocksize = 64;
  q.dtype = torch::kBFloat16;
  q.shape = {6912, 1152};
  q.double_quant = dq;
  q.offset = offset;
  return q;
}

TEST(BnbFormat, QuantStateJsonMatchesPythonJsonDumps) {
  // formats.md 2: the 82-byte example (no double quant).
  const std::string plain = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [6912, 1152]})";
  EXPECT_EQ(plain.size(), 82u);
  EXPECT_EQ(io::bnb_quant_state_json(fake_state(false, 0.f)), plain);
  // json.dumps of QuantState.as_dict with nested_offset = float32(0.0239).item() (Python 3, torch 1.13).
  EXPECT_EQ(io::bnb_quant_state_json(fake_state(true, 0.0239f)),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [6912, 1152], )"
            R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.023900000378489494})");
}

TEST(BnbFormat, PythonFloatRepr) {
  // Expected strings are Python's repr() of the same doubles.
  EXPECT_EQ(io::python_float_repr(static_cast<double>(0.0239f)), "0.023900000378489494");
  EXPECT_EQ(io::python_float_repr(static_cast<double>(1e-5f)), "9.999999747378752e-06");
  EXPECT_EQ(io::python_float_repr(static_cast<double>(1e-4f)), "9.999999747378752e-05");
  EXPECT_EQ(io::python_float_repr(static_cast<double>(0.1f)), "0.10000000149011612");
  EXPECT_EQ(io::python_float_repr(static_cast<double>(-2.5e-7f)), "-2.499999993688107e-07");
  EXPECT_EQ(io::python_float_repr(static_cast<double>(1e16f)), "1.0000000272564224e+16");
  EXPECT_EQ(io::python_float_repr(static_cast<double>(12345678.9f)), "12345679.0");
  EXPECT_EQ(io::python_float_repr(123.0), "123.0");
  EXPECT_EQ(io::python_float_repr(1e-5), "1e-05");
  EXPECT_EQ(io::python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(io::python_float_repr(1e16), "1e+16");
  EXPECT_EQ(io::python_float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(io::python_float_repr(0.0), "0.0");
  EXPECT_EQ(io::python_float_repr(3.0517578125e-05), "3.0517578125e-05");
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.numel() == b.numel() &&
         torch::equal(a.reshape({-1}).cpu(), b.reshape({-1}).cpu());
}

TEST(BnbFormat, WriteReadRoundTripKeepsQuantizedBytes) {
  const fs::path dir = temp_dir();
  torch::manual_seed(4);
  struct Case {
    quant::QuantType type;
    bool dq;
    int64_t blocksize;
    std::vector<int64_t> shape;
  };
  // Odd numel (padding nibble), partial last block, > 256 blocks for the nested level.
  const std::vector<Case> cases = {{quant::QuantType::kNF4, true, 64, {33, 47}},
                                   {quant::QuantType::kFP4, false, 128, {20, 64}},
                                   {quant::QuantType::kNF4, true, 32, {96, 97}},
                                   {quant::QuantType::kNF4, false, 64, {8, 16}}};
  io::NamedTensors all;
  std::vector<quant::QuantizedTensor> qs;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    torch::Tensor w = (torch::randn(c.shape) * 0.05).to(torch::kBFloat16);
    qs.push_back(quant::quantize_4bit(w, c.type, c.blocksize, c.dq));
    auto ts = io::bnb_tensors("model.layers." + std::to_string(i) + ".mlp.up_proj", qs.back());
    const int64_t n = c.shape[0] * c.shape[1];
    EXPECT_EQ(ts[0].first, "model.layers." + std::to_string(i) + ".mlp.up_proj.weight");
    EXPECT_EQ(ts[0].second.sizes(), (std::vector<int64_t>{(n + 1) / 2, 1}));
    EXPECT_EQ(ts[1].second.scalar_type(), c.dq ? torch::kUInt8 : torch::kFloat32);
    EXPECT_EQ(ts.size(), c.dq ? 6u : 4u);
    EXPECT_NE(ts.back().first.find(c.type == quant::QuantType::kNF4 ? "bitsandbytes__nf4" : "bitsandbytes__fp4"),
              std::string::npos);
    all.insert(all.end(), ts.begin(), ts.end());
  }
  io::save_safetensors(dir / "model.safetensors", all);
  auto ckpt = io::Checkpoint::open(dir);
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".mlp.up_proj";
    ASSERT_TRUE(io::bnb_is_quantized(ckpt, p));
    EXPECT_EQ(io::bnb_keys(ckpt, p).size(), cases[i].dq ? 6u : 4u);
    quant::QuantizedTensor r = io::bnb_read(ckpt, p);
    const auto& q = qs[i];
    EXPECT_EQ(r.type, q.type);
    EXPECT_EQ(r.blocksize, q.blocksize);
    EXPECT_EQ(r.shape, q.shape);
    EXPECT_EQ(r.dtype, torch::kBFloat16);
    EXPECT_EQ(r.double_quant, q.double_quant);
    EXPECT_TRUE(same_bytes(r.packed, q.packed));
    EXPECT_TRUE(same_bytes(r.absmax, q.absmax));
    EXPECT_TRUE(same_bytes(r.code, q.code));
    if (q.double_quant) {
      EXPECT_EQ(r.offset, q.offset);
      EXPECT_TRUE(same_bytes(r.absmax2, q.absmax2));
      EXPECT_TRUE(same_bytes(r.nested_code, q.nested_code));
    }
  }
}

TEST(BnbFormat, InconsistentPartsGiveClearErrors) {
  torch::manual_seed(5);
  auto q = quant::quantize_4bit(torch::randn({16, 64}), quant::QuantType::kNF4, 64, true);
  auto ts = io::bnb_tensors("p", q);
  auto write_without = [&](const std::string& drop, const fs::path& dir, bool shrink_absmax = false) {
    io::NamedTensors out;
    for (auto& [k, t] : ts) {
      if (k == drop) continue;
      out.emplace_back(k, shrink_absmax && k == "p.weight.absmax" ? t.narrow(0, 0, t.size(0) - 1).clone() : t);
    }
    io::save_safetensors(dir / "model.safetensors", out);
    return io::Checkpoint::open(dir);
  };
  const fs::path base = temp_dir();
  fs::create_directories(base / "a");
  fs::create_directories(base / "b");
  fs::create_directories(base / "c");
  try {
    io::bnb_read(write_without("p.weight.nested_absmax", base / "a"), "p");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("p.weight.nested_absmax"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  try {
    io::bnb_read(write_without("", base / "b", /*shrink_absmax=*/true), "p");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("p.weight.absmax"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("shape [15]"), std::string::npos) << e.what();
  }
  try {
    io::bnb_read(write_without("p.weight.quant_state.bitsandbytes__nf4", base / "c"), "p");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quant_state"), std::string::npos) << e.what();
  }
}

TEST(BnbFormat, QuantizationConfigFields) {
  auto j = io::bnb_quantization_config(quant::QuantType::kNF4, true, "bfloat16");
  EXPECT_EQ(j.dump(),
            R"({"_load_in_4bit":true,"_load_in_8bit":false,"bnb_4bit_compute_dtype":"bfloat16",)"
            R"("bnb_4bit_quant_storage":"uint8","bnb_4bit_quant_type":"nf4","bnb_4bit_use_double_quant":true,)"
            R"("llm_int8_enable_fp32_cpu_offload":false,"llm_int8_has_fp16_weight":false,)"
            R"("llm_int8_skip_modules":null,"llm_int8_threshold":6.0,"load_in_4bit":true,"load_in_8bit":false,)"
            R"("quant_method":"bitsandbytes"})");
}

// 16-bit folder -> quantize_checkpoint (what qlora-quantize runs) -> load_model reads the 4-bit parts back
// without re-quantizing: the bytes equal quantizing the 16-bit tensors directly, and logits agree exactly.
TEST(BnbFormat, QuantizedFolderLoadsWithIdenticalBytes) {
  auto cfg = small_config();
  auto m = random_model(cfg);
  const fs::path root = temp_dir();
  fs::create_directories(root / "bf16");
  write_file_atomic(root / "bf16" / "config.json", io::llama_config_to_json(cfg).dump(2));
  io::NamedTensors ts;
  for (auto& [n, t] : m->named_dense_tensors()) ts.emplace_back(n, t.to(torch::kBFloat16));
  for (auto& [n, lin] : m->named_linears()) {
    if (n != "lm_head") ts.emplace_back(n + ".weight", lin->dense_weight(torch::kBFloat16));
  }
  io::save_safetensors(root / "bf16" / "model.safetensors", ts);
  model::QuantizeCheckpointOptions qo;
  qo.show_progress = false;
  auto s = model::quantize_checkpoint(root / "bf16", root / "nf4", qo);
  EXPECT_EQ(s.tensors_quantized, 14);
  auto cfg_json = nlohmann::json::parse(read_file(root / "nf4" / "config.json"));
  EXPECT_EQ(cfg_json.at("quantization_config").at("bnb_4bit_quant_type"), "nf4");
  EXPECT_THROW(model::quantize_checkpoint(root / "bf16", root / "nf4", qo), Error);  // exists, no --overwrite

  model::LoadOptions lo;
  lo.show_progress = false;
  lo.compute_dtype = torch::kFloat32;
  auto from16 = model::load_model(root / "bf16", lo);
  auto from4 = model::load_model(root / "nf4", lo);
  auto a = from16->named_linears(), b = from4->named_linears();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i + 1 < a.size(); ++i) {
    auto fa = std::dynamic_pointer_cast<model::FrozenLinearImpl>(a[i].second);
    auto fb = std::dynamic_pointer_cast<model::FrozenLinearImpl>(b[i].second);
    ASSERT_TRUE(fa->is_quantized() && fb->is_quantized()) << a[i].first;
    EXPECT_TRUE(same_bytes(fa->quantized_weight().packed, fb->quantized_weight().packed)) << a[i].first;
    EXPECT_TRUE(same_bytes(fa->quantized_weight().absmax, fb->quantized_weight().absmax)) << a[i].first;
    EXPECT_EQ(fa->quantized_weight().offset, fb->quantized_weight().offset) << a[i].first;
  }
  torch::NoGradGuard ng;
  torch::Tensor ids = ids_tensor({{1, 2, 3, 4}});
  EXPECT_TRUE(torch::equal(from16->forward(ids), from4->forward(ids)));
  // The 4-bit folder can be loaded dense too (dequantized on load).
  lo.quant = std::nullopt;
  auto dense = model::load_model(root / "nf4", lo);
  EXPECT_FALSE(std::dynamic_pointer_cast<model::FrozenLinearImpl>(dense->named_linears()[0].second)->is_quantized());
}

}  // namespace
}  // namespace qlora::test
