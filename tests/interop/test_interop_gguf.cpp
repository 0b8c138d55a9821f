// GGUF exports run by real llama.cpp (llama-cpp-python 0.3.36's libllama, CPU, F32 KV cache, no flash attention;
// tests/interop/check_gguf.py run by the project's .venv python, QLORA_PYTHON), compared with a float64 Llama
// forward written here from HF transformers' semantics (RMSNorm, half-split RoPE, GQA, SwiGLU) on the same weights:
//   - F32 export: next-token probabilities within 1e-5, greedy continuation identical;
//   - F16: probabilities within 2e-3, greedy identical; Q8_0: probabilities within 2e-2, first greedy token identical;
//   - Q4_0: the reference runs on the weights decoded from the file (tests/gguf/gguf_test_reader.h, no code shared
//     with gguf/), so what is left is llama.cpp's own Q8_0 rounding of the activations: probabilities within 2e-2
//     (the Q8_0 tolerance), first greedy token identical;
//   - base GGUF + exported LoRA adapter (llama.cpp applies it at run time) and the merged GGUF vs the reference on
//     W + scale * B @ A;
//   - llama.cpp's tokenizer on the exported vocabulary vs sentencepiece's ids (golden, from Python);
//   - llama.cpp's greedy tokens vs `qlora-generate`'s (fp32, dense base; with --adapter for the LoRA case): identical
//     for F32 and F16 exports, the first token for Q8_0.
// A missing python or llama_cpp module is a failure, not a skip: `make test` installs them (make deps-interop).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gguf/gguf_export.h"
#include "gguf/gguf_llama.h"
#include "gguf/gguf_test_model.h"
#include "gguf/gguf_test_reader.h"
#include "test_util.h"

namespace qlora::gguf {
namespace {

using qlora::test::MiniLlama;
namespace fs = std::filesystem;

constexpr double kProbTolF32 = 1e-5;
constexpr double kProbTolF16 = 2e-3;
constexpr double kProbTolQ8 = 2e-2;
constexpr int kPredict = 8;
// /usr/bin/python3: sentencepiece.SentencePieceProcessor(model_file="tests/fixtures/gguf_tokenizer.model")
//                   .encode("the quick brown fox jumps")
const std::vector<int64_t> kGoldenIds = {263, 273, 298, 288, 279, 287, 293, 271, 280, 277, 286,
                                         278, 268, 277, 297, 273, 296, 288, 285, 289, 282};

using Weights = std::map<std::string, torch::Tensor>;

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

// ids (T) -> logits (T, V), float64, HF LlamaForCausalLM semantics.
torch::Tensor reference_logits(const MiniLlama& m, const Weights& w, const std::vector<int64_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size()), hd = m.hidden / m.heads;
  const double eps = 1e-5;
  auto W = [&](const std::string& n) { return w.at(n); };
  auto x = W("model.embed_tokens.weight").index_select(0, torch::tensor(ids, torch::kInt64));      // (T, H)
  const auto inv_freq = 1.0 / torch::pow(10000.0, torch::arange(0, hd, 2, torch::kFloat64) / hd);  // (hd/2)
  const auto freqs = torch::outer(torch::arange(T, torch::kFloat64), inv_freq);                    // (T, hd/2)
  const auto cos = torch::cat({freqs, freqs}, -1).cos(), sin = torch::cat({freqs, freqs}, -1).sin();
  const auto mask = torch::full({T, T}, -INFINITY, torch::kFloat64).triu(1);
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto h = rms_norm(x, W(p + "input_layernorm.weight"), eps);
    auto q = torch::matmul(h, W(p + "self_attn.q_proj.weight").t()).view({T, m.heads, hd}).transpose(0, 1);
    auto k = torch::matmul(h, W(p + "self_attn.k_proj.weight").t()).view({T, m.kv_heads, hd}).transpose(0, 1);
    auto v = torch::matmul(h, W(p + "self_attn.v_proj.weight").t()).view({T, m.kv_heads, hd}).transpose(0, 1);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    k = k.repeat_interleave(m.heads / m.kv_heads, 0);
    v = v.repeat_interleave(m.heads / m.kv_heads, 0);
    const auto att = torch::softmax(torch::matmul(q, k.transpose(1, 2)) / std::sqrt(double(hd)) + mask, -1);
    const auto o = torch::matmul(att, v).transpose(0, 1).reshape({T, m.heads * hd});
    x = x + torch::matmul(o, W(p + "self_attn.o_proj.weight").t());
    const auto n = rms_norm(x, W(p + "post_attention_layernorm.weight"), eps);
    const auto g = torch::matmul(n, W(p + "mlp.gate_proj.weight").t());
    const auto u = torch::matmul(n, W(p + "mlp.up_proj.weight").t());
    x = x + torch::matmul(g * torch::sigmoid(g) * u, W(p + "mlp.down_proj.weight").t());
  }
  x = rms_norm(x, W("model.norm.weight"), eps);
  return torch::matmul(x, W(m.tied ? "model.embed_tokens.weight" : "lm_head.weight").t());
}

std::vector<int64_t> reference_greedy(const MiniLlama& m, const Weights& w, std::vector<int64_t> ids, int n) {
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    const int64_t next = reference_logits(m, w, ids)[-1].argmax().item<int64_t>();
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

struct LlamaCppResult {
  std::vector<std::vector<int64_t>> greedy;
  std::vector<std::vector<double>> probs;
  std::vector<int64_t> tokenize;
};

fs::path check_gguf_script() {
  return qlora::test::source_dir() / "tests" / "interop" / "check_gguf.py";
}

// check_gguf.py REQUEST > RESULT: one JSON line on stdout; llama.cpp's log (stderr) is kept for failure messages.
LlamaCppResult run_llama_cpp(const fs::path& work, const fs::path& model,
                             const std::vector<std::vector<int64_t>>& prompts,
                             const nlohmann::json& lora = nlohmann::json::array(), const std::string& text = "") {
  nlohmann::json req = {{"model", model.string()}, {"lora", lora}, {"prompts", prompts}, {"n_predict", kPredict}};
  if (!text.empty()) req["text"] = text;
  const auto req_path = work / (model.stem().string() + "-request.json");
  const auto out_path = work / (model.stem().string() + "-llama_cpp.json");
  std::ofstream(req_path) << req.dump();
  const auto r = qlora::test::run_command(std::string(QLORA_PYTHON) + " " + check_gguf_script().string() + " " +
                                          req_path.string() + " > " + out_path.string());
  LlamaCppResult out;
  EXPECT_EQ(r.exit_code, 0) << "check_gguf.py on " << model << ":\n" << r.output;
  if (r.exit_code != 0) return out;
  std::ifstream in(out_path);
  const auto j = nlohmann::json::parse(in);
  out.greedy = j["greedy"].get<std::vector<std::vector<int64_t>>>();
  out.probs = j["probs"].get<std::vector<std::vector<double>>>();
  out.tokenize = j["tokenize"].get<std::vector<int64_t>>();
  return out;
}

// qlora-generate's greedy continuation (fp32 compute, unquantized base, EOS ignored like llama.cpp's evaluate).
std::vector<int64_t> qlora_greedy(const fs::path& model, const std::vector<int64_t>& prompt,
                                  const fs::path& adapter = {}) {
  // Built with append: GCC 12's C++20 `"literal" + std::string&&` trips a false -Wstringop-overflow at -O3.
  std::string ids;
  for (int64_t t : prompt) ids.append(ids.empty() ? "" : " ").append(std::to_string(t));
  std::string args = "--model ";
  args.append(model.string())
      .append(" --quant none --dtype fp32 --threads 2 --temperature 0 --ignore-eos --print-ids --max-new-tokens ")
      .append(std::to_string(kPredict))
      .append(" --prompt-ids \"")
      .append(ids)
      .append("\"");
  if (!adapter.empty()) args.append(" --adapter ").append(adapter.string());
  const auto r = qlora::test::run_app("qlora-generate", args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // stdout and stderr arrive together: the ids are the one line made of digits and spaces only.
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line.find_first_not_of("0123456789 ") != std::string::npos) continue;
    std::vector<int64_t> out;
    std::istringstream in(line);
    for (int64_t t; in >> t;) out.push_back(t);
    return out;
  }
  ADD_FAILURE() << "no id line in qlora-generate's output:\n" << r.output;
  return {};
}

// The weights llama.cpp sees: every tensor of `path` decoded to float by the test's own GGUF reader, mapped back to
// HF names and layout (q/k rows un-permuted: llama.cpp's interleaved RoPE pairs -> HF's half split).
Weights weights_from_gguf(const fs::path& path, const MiniLlama& m, const Weights& like) {
  const auto f = qlora::test::gguf_reader::read(path);
  const int64_t hd = m.hidden / m.heads;
  Weights w;
  for (const auto& [name, ref] : like) {
    const auto gname = gguf_tensor_name(name);
    if (!gname) continue;
    const auto vals = f.decode(*gname);
    auto t = torch::tensor(vals, torch::kFloat32).to(torch::kFloat64).view(ref.sizes());
    const bool q = name.ends_with("self_attn.q_proj.weight"), k = name.ends_with("self_attn.k_proj.weight");
    if (q || k) {
      // (heads, hd/2, 2, H) -> (heads, 2, hd/2, H): row h*hd + 2i + j goes back to h*hd + j*hd/2 + i.
      const int64_t n_head = q ? m.heads : m.kv_heads;
      t = t.view({n_head, hd / 2, 2, m.hidden}).transpose(1, 2).reshape(ref.sizes()).contiguous();
    }
    w[name] = t;
  }
  return w;
}

uint32_t gguf_tensor_type(const fs::path& path, const std::string& name) {
  return qlora::test::gguf_reader::read(path).tensor(name).type;
}

class InteropGguf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    probe_ = qlora::test::run_command(std::string(QLORA_PYTHON) +
                                      " -c 'import llama_cpp, numpy; print(llama_cpp.__version__)'");
  }
  void SetUp() override {
    // A failure, not a skip: in `make test` the .venv is always there.
    ASSERT_EQ(probe_.exit_code, 0) << QLORA_PYTHON << " cannot import llama_cpp:\n"
                                   << probe_.output
                                   << "HINT: run `make deps-interop` (installs requirements/interop.txt into .venv)";
  }
  // Larger weights than the unit tests so the next-token distribution is peaked (clear top-1 margins).
  static MiniLlama model_spec() {
    MiniLlama m;
    m.stddev = 0.25;
    return m;
  }
  static Weights weights_f64(const MiniLlama& m, uint64_t seed) {
    Weights w;
    for (auto& [n, t] : qlora::test::mini_weights(m, seed)) w[n] = t.to(torch::kFloat64);
    return w;
  }
  static std::vector<std::vector<int64_t>> prompts() { return {{1, 263, 273, 298, 288}, {1, 279, 287, 293, 271, 280}}; }
  static inline qlora::test::CommandResult probe_{-1, "not run"};
};

void expect_probs_close(const std::vector<double>& got, const torch::Tensor& ref_logits_last, double tol) {
  const auto ref = torch::softmax(ref_logits_last, -1);
  ASSERT_EQ(static_cast<int64_t>(got.size()), ref.size(0));
  double max_diff = 0, sum = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(got[i] - ref[i].item<double>()));
    sum += got[i];
  }
  EXPECT_NEAR(sum, 1.0, 1e-3);
  EXPECT_LE(max_diff, tol);
  std::printf("    max |p_llama.cpp - p_ref| = %.3g (tolerance %.3g), ref top-1 p = %.3f\n", max_diff, tol,
              ref.max().item<double>());
}

TEST_F(InteropGguf, ModelF32F16Q8MatchReference) {
  const auto dir = qlora::test::temp_dir();
  const auto m = model_spec();
  qlora::test::make_mini_llama(dir / "mini", m, 21);
  const auto w = weights_f64(m, 21);
  for (OutType out : {OutType::kF32, OutType::kF16, OutType::kQ8_0}) {
    SCOPED_TRACE(out_type_name(out));
    ExportOptions o;
    o.out_type = out;
    o.show_progress = false;
    const auto path = dir / ("mini-" + out_type_name(out) + ".gguf");
    export_model_gguf(dir / "mini", path, o);
    const auto res = run_llama_cpp(dir, path, prompts(), nlohmann::json::array(), "the quick brown fox jumps");
    ASSERT_EQ(res.greedy.size(), prompts().size());
    for (size_t i = 0; i < prompts().size(); ++i) {
      const auto ours = qlora_greedy(dir / "mini", prompts()[i]);
      ASSERT_EQ(ours.size(), static_cast<size_t>(kPredict));
      if (out == OutType::kQ8_0) {
        EXPECT_EQ(res.greedy[i].at(0), ours.at(0)) << "llama.cpp vs qlora-generate, first greedy token";
      } else {
        EXPECT_EQ(res.greedy[i], ours) << "llama.cpp vs qlora-generate greedy tokens";
      }
      const auto logits = reference_logits(m, w, prompts()[i]);
      const double tol = out == OutType::kF32 ? kProbTolF32 : out == OutType::kF16 ? kProbTolF16 : kProbTolQ8;
      expect_probs_close(res.probs[i], logits[-1], tol);
      const auto ref_greedy = reference_greedy(m, w, prompts()[i], kPredict);
      if (out == OutType::kQ8_0) {
        EXPECT_EQ(res.greedy[i].at(0), ref_greedy.at(0));
      } else {
        EXPECT_EQ(res.greedy[i], ref_greedy);
      }
    }
    // llama.cpp's tokenizer on the exported vocabulary == sentencepiece 0.1.97 (Python) on tokenizer.model
    // (golden ids; llama.cpp adds the leading space but no BOS)
    EXPECT_EQ(res.tokenize, kGoldenIds);
  }
}

// Q4_0 changes the weights too much for the dense reference; the reference runs on the weights in the file instead
// (an independent decode), which checks that llama.cpp reads our Q4_0 (and the Q8_0 output.weight) blocks as we mean
// them. llama.cpp still rounds the activations to Q8_0 for these dot products: the Q8_0 tolerance.
TEST_F(InteropGguf, ModelQ4_0MatchesReferenceOnItsDecodedWeights) {
  const auto dir = qlora::test::temp_dir();
  const auto m = model_spec();
  qlora::test::make_mini_llama(dir / "mini", m, 23);
  ExportOptions o;
  o.out_type = OutType::kQ4_0;
  o.show_progress = false;
  const auto path = dir / "mini-q4_0.gguf";
  export_model_gguf(dir / "mini", path, o);
  ASSERT_EQ(gguf_tensor_type(path, "blk.0.attn_q.weight"), static_cast<uint32_t>(GgmlType::kQ4_0));
  ASSERT_EQ(gguf_tensor_type(path, "output.weight"), static_cast<uint32_t>(GgmlType::kQ8_0));
  const auto dense = weights_f64(m, 23);
  const auto w = weights_from_gguf(path, m, dense);
  ASSERT_EQ(w.size(), dense.size());
  // The decoded weights really are 4-bit (relative error far above F16's), so the test below is not the dense one.
  const auto& wq = w.at("model.layers.0.mlp.up_proj.weight");
  const auto& wd = dense.at("model.layers.0.mlp.up_proj.weight");
  EXPECT_GT(((wq - wd).norm() / wd.norm()).item<double>(), 1e-2);
  const auto res = run_llama_cpp(dir, path, prompts());
  ASSERT_EQ(res.greedy.size(), prompts().size());
  for (size_t i = 0; i < prompts().size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    expect_probs_close(res.probs[i], reference_logits(m, w, prompts()[i])[-1], kProbTolQ8);
    EXPECT_EQ(res.greedy[i].at(0), reference_greedy(m, w, prompts()[i], 1).at(0));
  }
}

TEST_F(InteropGguf, LoraAdapterAndMergedModelMatchReference) {
  const auto dir = qlora::test::temp_dir();
  const auto m = model_spec();
  qlora::test::make_mini_llama(dir / "base", m, 22);
  auto w = weights_f64(m, 22);
  // Adapter on q, k, v, o and down of both layers (non-zero B so it changes the output).
  const int64_t r = 4;
  const double alpha = 8.0;
  torch::manual_seed(5);
  std::vector<std::pair<std::string, std::pair<torch::Tensor, torch::Tensor>>> mods;
  for (int64_t l = 0; l < m.layers; ++l) {
    for (const char* s :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"}) {
      const std::string module = "model.layers." + std::to_string(l) + "." + s;
      const auto& base = w.at(module + ".weight");
      mods.push_back({module, {torch::randn({r, base.size(1)}) * 0.2, torch::randn({base.size(0), r}) * 0.2}});
    }
  }
  qlora::test::make_peft_adapter(dir / "ad", mods, r, alpha);
  for (const auto& [module, ab] : mods) {
    w[module + ".weight"] = w[module + ".weight"] +
                            (alpha / r) * torch::matmul(ab.second.to(torch::kFloat64), ab.first.to(torch::kFloat64));
  }

  ExportOptions o;
  o.out_type = OutType::kF32;
  o.show_progress = false;
  export_model_gguf(dir / "base", dir / "base.gguf", o);
  export_adapter_gguf(dir / "ad", dir / "base", dir / "ad.gguf");
  o.adapter_dir = dir / "ad";
  export_model_gguf(dir / "base", dir / "merged.gguf", o);

  const auto with_lora =
      run_llama_cpp(dir, dir / "base.gguf", prompts(),
                    nlohmann::json::array({{{"filePath", (dir / "ad.gguf").string()}, {"scale", 1.0}}}));
  const auto merged = run_llama_cpp(dir, dir / "merged.gguf", prompts());
  ASSERT_EQ(with_lora.greedy.size(), prompts().size());
  ASSERT_EQ(merged.greedy.size(), prompts().size());
  for (size_t i = 0; i < prompts().size(); ++i) {
    const auto logits = reference_logits(m, w, prompts()[i]);
    const auto ref_greedy = reference_greedy(m, w, prompts()[i], kPredict);
    SCOPED_TRACE("prompt " + std::to_string(i));
    // Our model with the adapter applied (what qlora-merge folds into the weights).
    const auto ours = qlora_greedy(dir / "base", prompts()[i], dir / "ad");
    EXPECT_EQ(with_lora.greedy[i], ours) << "llama.cpp base + LoRA GGUF vs qlora-generate --adapter";
    EXPECT_EQ(merged.greedy[i], ours) << "llama.cpp merged GGUF vs qlora-generate --adapter";
    {
      SCOPED_TRACE("base + LoRA adapter");
      expect_probs_close(with_lora.probs[i], logits[-1], kProbTolF32);
      EXPECT_EQ(with_lora.greedy[i], ref_greedy);
    }
    {
      SCOPED_TRACE("merged");
      expect_probs_close(merged.probs[i], logits[-1], kProbTolF32);
      EXPECT_EQ(merged.greedy[i], ref_greedy);
    }
  }
}

}  // namespace
}  // namespace qlora::gguf
