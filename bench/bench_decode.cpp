// Batch-1 decoding on the CPU, as qlora-generate runs it (model::generate: the prompt in one forward, then one token
// per step with the preallocated KV cache, each 4-bit projection a GEMV that reads its codes once): decode tokens/s,
// the bytes of weights one token reads, and that traffic per second against the copy bandwidth measured in the same
// run. Before it, the GEMV kernel alone on each projection shape of the model, per CPU path, next to what the CPU
// decode did before it had one (dequantize the projection to bf16, then a one-row matmul). Decode runs with the
// default GEMV, 8-bit activations (qlora-generate --gemv q8, quant/gemv_q8.h), and again with the exact one
// (--gemv exact, quant/gemv_4bit.h: the CUDA kernel's arithmetic).
//
//   build/bin/bench_decode [--model models/bench] [--prompt 32] [--tokens 64] [--reps 3] [--threads 0]
//                          [--no-kernels | --kernels-only]
//   (make the model first: build/bin/qlora-make-tiny --out models/bench --preset bench, as bench_train)
//   build/bin/bench_decode --config configs/models/llama-3.1-8b.json --layers 2 --vocab 32000
//   build/bin/bench_decode --no-kernels --llama-cpp .venv/bin/python [--gguf-dir build/bench-decode-gguf] [--rounds N]
//   (side by side with llama.cpp: the same --model exported to Q4_0 and Q8_0 GGUF by our exporter, each decoded by
//    llama-cpp-python's libllama with the same threads, prompt ids and token count: bench/llama_cpp_decode.py)
//   (a random model of a published shape, built in memory as bench_layer builds its layer: NF4 + double quant,
//    blocksize 64, lm_head dense)
//
// A second decode run loads lm_head in NF4 + DQ too (qlora-generate --quantize-lm-head; untied models only), as
// llama.cpp's exports quantize their output tensor (Q8_0 in our Q4_0 and Q8_0 exports), and on that model the decode
// with each layer through model/decode_layer.h (the default) against through its LibTorch ops, generations of the two
// alternated so that both see the same machine. --rounds N then alternates that decode with llama.cpp's Q4_0 N times
// (a round: the read bandwidth, then best of --reps of each), for the ratio on a machine whose speed drifts between
// minutes, and each decoder's weight traffic as a share of that round's read bandwidth (the ceiling of both: at
// equal shares, the speed ratio is the ratio of the bytes a token reads).
// Under fp32 compute (the default on CPUs without native bf16) a dense lm_head either lives as an fp32 copy or stays
// in the checkpoint's bf16 (LoadOptions::lm_head_16bit, qlora-generate's default): the kernel table times its one-row
// product both ways, and decode runs both ways alternated (--model only).
// Bytes per token: every projection's 4-bit parts (codes, absmax, nested absmax: QuantizedTensor::nbytes) plus the
// dense lm_head (bf16; the embedding when tied); the KV cache read by attention is printed apart (it grows with the
// position: given at the mean decode position). The copy bandwidth counts bytes read + written (machine_limits.h);
// decoding only reads, so the ratio is a lower bound on how far from the memory limit it is. "no GEMV" runs the same
// cached loop under NoGradGuard instead of InferenceMode, which keeps one-row projections on dequant + matmul (the
// numerics of training), for the speed-up of the GEMV alone.
#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "bench/machine_limits.h"
#include "common/cpu_isa.h"
#include "common/error.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/threads.h"
#include "gguf/gguf_export.h"
#include "io/hf_config.h"
#include "model/generate.h"
#include "model/llama.h"
#include "ops/dense_gemv.h"
#include "quant/dequant_kernels.h"
#include "quant/gemv_4bit.h"
#include "quant/gemv_q8.h"
#include "quant/linear_4bit.h"

namespace {

using namespace qlora;
using bench::time_best;

constexpr int kExitBadArgs = 2;
constexpr double kInitStd = 0.02;                  // HF initializer_range (the --config model)
constexpr int64_t kColdBytes = int64_t{64} << 20;  // past the last-level cache of the machines we run on
constexpr int kKernelReps = 5;                     // best-of for the kernel table
constexpr int64_t kFirstTokenId = 3;               // prompt ids drawn above <unk> <s> </s>

struct Options {
  std::string model = "models/bench";
  std::string config;  // non-empty: a random model of this config.json's shape instead of --model
  std::optional<int64_t> layers, vocab;
  int64_t prompt = 32;
  int64_t tokens = 64;
  int reps = 3;
  int rounds = 0;  // > 0: our decode (lm_head NF4) and llama.cpp's Q4_0 alternated this many times (--llama-cpp)
  int threads = 0;
  bool kernels = true;
  bool decode = true;
  std::string llama_cpp_python;  // non-empty: also run llama.cpp on Q4_0 / Q8_0 exports with this python
  std::string gguf_dir = "build/bench-decode-gguf";
};

int64_t parse_int(const std::string& flag, const char* v, int64_t min) {
  char* end = nullptr;
  const long long x = v ? std::strtoll(v, &end, 10) : 0;
  if (!v || *end != '\0' || end == v || x < min) {
    throw Error(flag + ": expected an integer >= " + std::to_string(min) + ", got '" + (v ? v : "") + "'");
  }
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--no-kernels" || a == "--kernels-only") {
      (a == "--no-kernels" ? o.kernels : o.decode) = false;
      continue;
    }
    if (!v) throw Error(a + ": unknown option or missing value (see the usage at the top of bench/bench_decode.cpp)");
    ++i;
    if (a == "--model") {
      o.model = v;
    } else if (a == "--config") {
      o.config = v;
    } else if (a == "--layers") {
      o.layers = parse_int(a, v, 1);
    } else if (a == "--vocab") {
      o.vocab = parse_int(a, v, kFirstTokenId + 1);
    } else if (a == "--prompt") {
      o.prompt = parse_int(a, v, 1);
    } else if (a == "--tokens") {
      o.tokens = parse_int(a, v, 2);
    } else if (a == "--reps") {
      o.reps = static_cast<int>(parse_int(a, v, 1));
    } else if (a == "--rounds") {
      o.rounds = static_cast<int>(parse_int(a, v, 1));
    } else if (a == "--threads") {
      o.threads = static_cast<int>(parse_int(a, v, 0));
    } else if (a == "--llama-cpp") {
      o.llama_cpp_python = v;
    } else if (a == "--gguf-dir") {
      o.gguf_dir = v;
    } else {
      throw Error(a + ": unknown option (see the usage at the top of bench/bench_decode.cpp)");
    }
  }
  if (!o.llama_cpp_python.empty() && (!o.config.empty() || !o.decode)) {
    throw Error("--llama-cpp: needs a --model folder (not --config) and the decode run (not --kernels-only)");
  }
  if (o.rounds > 0 && o.llama_cpp_python.empty()) throw Error("--rounds: needs --llama-cpp");
  return o;
}

// The model: an HF folder loaded as qlora-generate loads it, or random weights of a config's shape.
// quantize_lm_head: lm_head in NF4 + DQ too (qlora-generate --quantize-lm-head); dense (bf16) otherwise.
model::LlamaModel build_model(const Options& o, bool quantize_lm_head, torch::ScalarType compute = torch::kBFloat16,
                              bool lm_head_16bit = false) {
  if (o.config.empty()) {
    if (!std::filesystem::exists(std::filesystem::path(o.model) / "config.json")) {
      throw Error("--model " + o.model + ": no config.json\nHINT: build/bin/qlora-make-tiny --out " + o.model +
                  " --preset bench, or pass --config configs/models/<name>.json");
    }
    model::LoadOptions lo;
    lo.show_progress = false;
    lo.quantize_lm_head = quantize_lm_head;
    lo.compute_dtype = compute;
    lo.lm_head_16bit = lm_head_16bit;
    return model::load_model(o.model, lo);  // NF4 + double quant, blocksize 64
  }
  io::LlamaConfig c = io::load_llama_config(o.config);
  if (o.layers) c.num_hidden_layers = *o.layers;
  if (o.vocab) c.vocab_size = *o.vocab;
  torch::manual_seed(0);
  model::LlamaModel m(c, torch::kBFloat16);
  m->init_weights(kInitStd);
  torch::NoGradGuard no_grad;
  for (auto& [name, lin] : m->named_linears()) {
    if (name == "lm_head" && !quantize_lm_head) continue;  // dense, as the loader keeps it by default
    m->replace_linear(name, model::FrozenLinearImpl::quantized(quant::quantize_4bit(
                                lin->frozen_base()->dense_weight_ref(), quant::QuantType::kNF4, 64, true)));
  }
  return m;
}

struct WeightBytes {
  double quant4 = 0, dense = 0;
  std::set<std::pair<int64_t, int64_t>> shapes;  // (out, in) of the 4-bit projections
};

WeightBytes weight_bytes(model::LlamaModelImpl& m) {
  WeightBytes b;
  for (auto& [name, lin] : m.named_linears()) {
    auto f = lin->frozen_base();
    if (f->is_quantized()) {
      b.quant4 += static_cast<double>(f->quantized_weight().nbytes());
      b.shapes.insert({f->out_features(), f->in_features()});
    } else {
      b.dense += static_cast<double>(f->dense_weight_ref().nbytes());
    }
  }
  if (m.config().tie_word_embeddings) {  // lm_head is the embedding
    for (auto& [name, t] : m.named_dense_tensors()) {
      if (name == "model.embed_tokens.weight") b.dense += static_cast<double>(t.nbytes());
    }
  }
  return b;
}

// The GEMV per CPU path on one projection shape, and dequant-to-bf16 + one-row matmul (the CPU decode before it).
void bench_kernels(int64_t out, int64_t in, double copy_gbs) {
  torch::manual_seed(1);
  const quant::QuantizedTensor q =
      quant::quantize_4bit((torch::randn({out, in}) * kInitStd).to(torch::kBFloat16), quant::QuantType::kNF4, 64, true);
  const torch::Tensor x = torch::randn({in}).to(torch::kBFloat16);
  const double bytes = static_cast<double>(q.nbytes());
  torch::Tensor y = torch::empty({out}, torch::kBFloat16);
  const quant::Gemv4bitArgs a = quant::detail::gemv_args(q, x.data_ptr(), y.data_ptr(), /*out_bf16=*/true);
  auto row = [&](const char* what, double s) {
    std::printf("  %5lld x %-5lld %-22s %9.3f ms %8.2f GB/s %6.1f%%\n", static_cast<long long>(out),
                static_cast<long long>(in), what, s * 1e3, bytes / s / 1e9, 100.0 * bytes / s / 1e9 / copy_gbs);
  };
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!cpu_supports(isa)) continue;
    quant::gemv_4bit_cpu(a, isa);  // warm-up
    row((std::string("gemv ") + isa_name(isa)).c_str(), time_best([&] { quant::gemv_4bit_cpu(a, isa); }, kKernelReps));
  }
  // With 8-bit activations (quant/gemv_q8.h): the AVX-512 (VNNI + VBMI; else AVX2) and AVX2 kernels, the reference.
  const quant::GemvQ8Args a8 = quant::detail::gemv_q8_args(q, x.data_ptr(), /*x_bf16=*/true, y.data_ptr(), true);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!cpu_supports(isa)) continue;
    quant::gemv_q8_cpu(a8, isa);  // warm-up
    row((std::string("gemv q8 ") + isa_name(isa)).c_str(),
        time_best([&] { quant::gemv_q8_cpu(a8, isa); }, kKernelReps));
  }
  // From memory, as decoding reads it: copies of the weight (different codes) totalling past the last-level cache,
  // one GEMV on each in turn per timed pass.
  {
    const int64_t copies = std::max<int64_t>(2, (kColdBytes + q.nbytes() - 1) / q.nbytes());
    std::vector<quant::QuantizedTensor> qs;
    std::vector<quant::GemvQ8Args> as;
    for (int64_t i = 0; i < copies; ++i) {
      qs.push_back(quant::quantize_4bit((torch::randn({out, in}) * kInitStd).to(torch::kBFloat16),
                                        quant::QuantType::kNF4, 64, true));
    }
    for (const auto& qi : qs) as.push_back(quant::detail::gemv_q8_args(qi, x.data_ptr(), true, y.data_ptr(), true));
    auto pass = [&] {
      for (const auto& ai : as) quant::gemv_q8_cpu(ai);
    };
    pass();
    row("gemv q8, from memory", time_best(pass, kKernelReps) / static_cast<double>(copies));
  }
  torch::NoGradGuard no_grad;
  // linear_4bit outside InferenceMode: its dequant into a reused bf16 buffer + torch::linear on a (1, 1, in) row.
  const torch::Tensor x3 = x.view({1, 1, in});
  auto dequant_matmul = [&] { quant::linear_4bit(x3, q); };
  dequant_matmul();
  row("dequant bf16 + matmul", time_best(dequant_matmul, kKernelReps));
}

struct Decode {
  double prompt_tok_s = 0, decode_tok_s = 0;
};

// As qlora-generate reports it: the first token comes with the prompt, the others cost one step each.
double decode_tok_s(const model::GenerateResult& res) {
  return static_cast<double>(res.tokens.size() - 1) / res.decode_seconds;
}

// Best of `reps` generations (greedy, no eos) of o.tokens tokens after a prompt of o.prompt random ids.
Decode bench_generate(model::LlamaModelImpl& m, const Options& o, const std::vector<int64_t>& prompt,
                      quant::CpuGemv gemv = quant::CpuGemv::kQ8) {
  model::GenerateOptions g;
  g.max_new_tokens = o.tokens;
  g.cpu_gemv = gemv;
  Decode best;
  for (int r = 0; r <= o.reps; ++r) {  // r == 0: warm-up
    const auto res = model::generate(m, prompt, g);
    const Decode d{static_cast<double>(prompt.size()) / res.prompt_seconds, decode_tok_s(res)};
    if (r > 0 && d.decode_tok_s > best.decode_tok_s) best = d;
  }
  return best;
}

// The dense lm_head's one-row product: under fp32 compute through an fp32 copy of the weight (LibTorch's linear, as
// before LoadOptions::lm_head_16bit) and through the bf16 weight itself; under bf16 compute through LibTorch's bf16
// linear and ops::gemv_bf16; per CPU path. GB/s of the weight bytes each reads, against the read bandwidth (the
// weight is read again each repetition, so part of it may come from the last-level cache).
void bench_dense_head(int64_t vocab, int64_t hidden, double read_gbs) {
  torch::manual_seed(3);
  c10::InferenceMode inference;
  const torch::Tensor w = (torch::randn({vocab, hidden}) * kInitStd).to(torch::kBFloat16);
  const torch::Tensor w32 = w.to(torch::kFloat32);
  std::printf("\ndense lm_head, one row; GB/s of weight bytes read, %% of read bandwidth\n");
  auto row = [&](const std::string& what, double bytes, double s) {
    std::printf("  %5lld x %-5lld %-34s %9.3f ms %8.2f GB/s %6.1f%%\n", static_cast<long long>(vocab),
                static_cast<long long>(hidden), what.c_str(), s * 1e3, bytes / s / 1e9,
                100.0 * bytes / s / 1e9 / read_gbs);
  };
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor x = torch::randn({hidden}).to(dt), x2 = x.view({1, hidden});
    const torch::Tensor& wl = dt == torch::kFloat32 ? w32 : w;  // what LibTorch's linear multiplies
    const std::string row_dtype = dt == torch::kFloat32 ? "fp32 row, " : "bf16 row, ";
    torch::nn::functional::linear(x2, wl);  // warm-up
    row(row_dtype + (dt == torch::kFloat32 ? "fp32 copy, linear" : "LibTorch linear"), static_cast<double>(wl.nbytes()),
        time_best([&] { torch::nn::functional::linear(x2, wl); }, kKernelReps));
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!cpu_supports(isa)) continue;
      ops::gemv_bf16(w, x, isa);  // warm-up
      row(row_dtype + "gemv_bf16 " + isa_name(isa), static_cast<double>(w.nbytes()),
          time_best([&] { ops::gemv_bf16(w, x, isa); }, kKernelReps));
    }
    // From memory, as decoding reads it: copies of the weight totalling past the last-level cache, one product on
    // each in turn per timed pass (the CPU's best path).
    const int64_t copies = std::max<int64_t>(2, (kColdBytes + w.nbytes() - 1) / w.nbytes());
    std::vector<torch::Tensor> ws(static_cast<size_t>(copies), w);
    for (size_t i = 1; i < ws.size(); ++i) ws[i] = w.clone();
    auto pass = [&] {
      for (const auto& wi : ws) ops::gemv_bf16(wi, x);
    };
    pass();
    row(row_dtype + "gemv_bf16, from memory", static_cast<double>(w.nbytes()),
        time_best(pass, kKernelReps) / static_cast<double>(copies));
  }
}

// Decode under fp32 compute (the default on CPUs without native bf16) with the checkpoint's bf16 lm_head kept bf16
// (qlora-generate's default) and as an fp32 copy, generations of the two alternated, best of 2 x reps each.
void print_fp32_compute(const Options& o, const std::vector<int64_t>& prompt) {
  model::LlamaModel copy = build_model(o, false, torch::kFloat32, /*lm_head_16bit=*/false);
  model::LlamaModel kept = build_model(o, false, torch::kFloat32, /*lm_head_16bit=*/true);
  copy->eval();
  kept->eval();
  const WeightBytes bc = weight_bytes(*copy), bk = weight_bytes(*kept);
  model::GenerateOptions g;
  g.max_new_tokens = o.tokens;
  double best_copy = 0, best_kept = 0;
  for (int r = 0; r <= 2 * o.reps; ++r) {  // r == 0: warm-up
    const double c = decode_tok_s(model::generate(*copy, prompt, g)),
                 k = decode_tok_s(model::generate(*kept, prompt, g));
    if (r == 0) continue;
    best_copy = std::max(best_copy, c);
    best_kept = std::max(best_kept, k);
  }
  std::printf(
      "  fp32 compute (CPUs without native bf16), bf16 lm_head kept bf16 vs an fp32 copy (alternated, best of %d "
      "each): %.2f MB vs %.2f MB read per token; %.2f vs %.2f tok/s, %.2fx\n",
      2 * o.reps, (bk.quant4 + bk.dense) / 1e6, (bc.quant4 + bc.dense) / 1e6, best_kept, best_copy,
      best_kept / best_copy);
}

// Prints decode tokens/s with each layer through model/decode_layer.h and through its LibTorch ops, generations of
// the two alternated (2 x reps of each after a warm-up of each), best of each: both see the same machine.
void print_fused_vs_layer_ops(model::LlamaModelImpl& m, const Options& o, const std::vector<int64_t>& prompt) {
  model::GenerateOptions g;
  g.max_new_tokens = o.tokens;
  double best[2] = {0, 0};
  for (int r = 0; r <= 2 * o.reps; ++r) {
    for (int fused = 1; fused >= 0; --fused) {
      g.fused_decode = fused == 1;
      const auto res = model::generate(m, prompt, g);
      if (r > 0) best[fused] = std::max(best[fused], decode_tok_s(res));
    }
  }
  std::printf(
      "  layers through model/decode_layer.h vs through LibTorch ops (lm_head NF4, generations alternated, best of %d "
      "each): %.2f vs %.2f tok/s, %.2fx\n",
      2 * o.reps, best[1], best[0], best[1] / best[0]);
}

// The same cached greedy loop under NoGradGuard (no InferenceMode): one-row projections dequantize + matmul.
double bench_no_gemv(model::LlamaModelImpl& m, const Options& o, const std::vector<int64_t>& prompt) {
  torch::NoGradGuard no_grad;
  double best = 0;
  for (int r = 0; r <= o.reps; ++r) {
    model::KVCache cache;
    cache.reserve(static_cast<int64_t>(prompt.size()) + o.tokens);
    torch::Tensor h = m.forward_hidden(torch::tensor(prompt).view({1, -1}), {}, &cache);
    int64_t tok = m.logits(h.narrow(1, h.size(1) - 1, 1).contiguous()).argmax().item<int64_t>();
    const double s = time_best(
        [&] {
          for (int64_t i = 1; i < o.tokens; ++i) {
            h = m.forward_hidden(torch::tensor({tok}).view({1, 1}), {}, &cache);
            tok = m.logits(h).argmax().item<int64_t>();
          }
        },
        1);
    if (r > 0) best = std::max(best, static_cast<double>(o.tokens - 1) / s);
  }
  return best;
}

struct LlamaCpp {
  double decode_tok_s = 0, decode_tok_s_internal = 0, prompt_tok_s = 0, weight_bytes = 0;
  std::string version;
};

// Where o.model's `type` ("q4_0" | "q8_0") export lives.
std::filesystem::path gguf_path(const Options& o, const std::string& type) {
  return std::filesystem::path(o.gguf_dir) / ("bench-" + type + ".gguf");
}

// Exports o.model to `type` with our exporter (to gguf_path).
void export_gguf(const Options& o, const std::string& type) {
  std::filesystem::create_directories(o.gguf_dir);
  gguf::ExportOptions eo;
  eo.out_type = gguf::parse_out_type(type);
  eo.overwrite = true;
  eo.show_progress = false;
  gguf::export_model_gguf(o.model, gguf_path(o, type), eo);
}

// Decodes the `type` export in llama.cpp (bench/llama_cpp_decode.py, run by o.llama_cpp_python) with the same
// threads, prompt ids and token count.
LlamaCpp run_llama_cpp(const Options& o, const std::string& type, int threads, const std::vector<int64_t>& prompt) {
  namespace fs = std::filesystem;
  const fs::path out = gguf_path(o, type);
  std::string ids;
  for (int64_t id : prompt) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const fs::path script = fs::path(__FILE__).parent_path() / "llama_cpp_decode.py";
  const std::string cmd = "'" + o.llama_cpp_python + "' '" + script.string() + "' --model '" + out.string() +
                          "' --threads " + std::to_string(threads) + " --prompt " + ids + " --tokens " +
                          std::to_string(o.tokens) + " --reps " + std::to_string(o.reps);
  const fs::path log = fs::path(o.gguf_dir) / ("llama_cpp-" + type + ".log");  // llama.cpp's own logging
  FILE* pipe = ::popen((cmd + " 2>'" + log.string() + "'").c_str(), "r");
  if (!pipe) throw Error("--llama-cpp: cannot start " + o.llama_cpp_python);
  std::string text;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, pipe)) text.append(buf, n);
  const int status = ::pclose(pipe);
  if (status != 0 || text.empty()) {
    throw Error("--llama-cpp: " + script.string() + " failed on " + out.string() + " (exit status " +
                std::to_string(status) + "); its messages are in " + log.string() + "\n  " + cmd);
  }
  const nlohmann::json j = nlohmann::json::parse(text);
  return {j.at("decode_tok_s").get<double>(), j.at("decode_tok_s_internal").get<double>(),
          j.at("prompt_tok_s").get<double>(), j.at("weight_bytes").get<double>(),
          j.at("llama_cpp_python").get<std::string>()};
}

// llama.cpp on our Q4_0 and Q8_0 exports of the same model, and our decode (d; dq: with lm_head in NF4) against it.
void print_llama_cpp(const Options& o, int threads, const std::vector<int64_t>& prompt, double copy_gbs,
                     const Decode& d, const std::optional<Decode>& dq) {
  std::vector<std::pair<std::string, LlamaCpp>> ref;
  for (const char* type : {"q4_0", "q8_0"}) {
    export_gguf(o, type);
    ref.emplace_back(type, run_llama_cpp(o, type, threads, prompt));
  }
  std::printf(
      "\nllama.cpp (llama-cpp-python %s, CPU), our GGUF export of the same model; same threads, prompt ids, "
      "tokens; greedy, best of %d\n",
      ref[0].second.version.c_str(), o.reps);
  for (const auto& [type, r] : ref) {
    std::printf(
        "  %s: weights read per token %.2f MB; prompt %.1f tok/s; decode %.2f tok/s (llama.cpp's own counters "
        "%.2f tok/s) = %.2f GB/s, %.1f%% of copy bandwidth\n",
        type.c_str(), r.weight_bytes / 1e6, r.prompt_tok_s, r.decode_tok_s, r.decode_tok_s_internal,
        r.weight_bytes * r.decode_tok_s_internal / 1e9,
        100.0 * r.weight_bytes * r.decode_tok_s_internal / 1e9 / copy_gbs);
  }
  for (const auto& [type, r] : ref) {
    std::printf("  qlora decode / llama.cpp %s decode: %.2fx (%.2fx against llama.cpp's own counters)\n", type.c_str(),
                d.decode_tok_s / r.decode_tok_s, d.decode_tok_s / r.decode_tok_s_internal);
    if (dq) {
      std::printf("  qlora decode, lm_head NF4 / llama.cpp %s decode: %.2fx (%.2fx against its own counters)\n",
                  type.c_str(), dq->decode_tok_s / r.decode_tok_s, dq->decode_tok_s / r.decode_tok_s_internal);
    }
  }
}

// Our decode with lm_head NF4 (q_bytes of weights a token) and llama.cpp's Q4_0 (the file print_llama_cpp exported)
// alternated o.rounds times, each best of o.reps per round: both see the same stretch of a machine whose speed may
// drift from minute to minute. Each round measures the read bandwidth first: the ceiling of both decoders, which
// read their weights once a token (at equal shares of it the speed ratio is the byte ratio).
void print_rounds(model::LlamaModelImpl& mq, double q_bytes, const Options& o, int threads,
                  const std::vector<int64_t>& prompt) {
  std::printf(
      "\nalternated rounds: qlora decode (lm_head NF4) and llama.cpp Q4_0, each best of %d per round, after "
      "the read bandwidth\n",
      o.reps);
  double best_q = 0, best_l = 0, lo = 1e9, hi = 0, share_q = 0, share_l = 0, l_bytes = 0;
  for (int r = 1; r <= o.rounds; ++r) {
    const double read_gbs = bench::measure_read_bandwidth_gbs(size_t(256) << 20, 3);
    const double q = bench_generate(mq, o, prompt).decode_tok_s;
    const LlamaCpp l = run_llama_cpp(o, "q4_0", threads, prompt);
    l_bytes = l.weight_bytes;
    best_q = std::max(best_q, q);
    best_l = std::max(best_l, l.decode_tok_s);
    lo = std::min(lo, q / l.decode_tok_s);
    hi = std::max(hi, q / l.decode_tok_s);
    const double q_gbs = q_bytes * q / 1e9, l_gbs = l.weight_bytes * l.decode_tok_s / 1e9;
    share_q = std::max(share_q, q_gbs / read_gbs);
    share_l = std::max(share_l, l_gbs / read_gbs);
    std::printf(
        "  round %d: read bandwidth %.2f GB/s; qlora %.2f tok/s (%.2f GB/s, %.0f%%), llama.cpp Q4_0 %.2f tok/s "
        "(%.2f GB/s, %.0f%%; its own counters %.2f tok/s): %.2fx\n",
        r, read_gbs, q, q_gbs, 100.0 * q_gbs / read_gbs, l.decode_tok_s, l_gbs, 100.0 * l_gbs / read_gbs,
        l.decode_tok_s_internal, q / l.decode_tok_s);
  }
  std::printf("  rounds %.2fx to %.2fx; best of all rounds: qlora %.2f, llama.cpp Q4_0 %.2f tok/s: %.2fx\n", lo, hi,
              best_q, best_l, best_q / best_l);
  std::printf(
      "  highest share of the round's read bandwidth: qlora %.0f%%, llama.cpp %.0f%%; bytes a token %.2f vs %.2f MB: "
      "at equal shares qlora would run %.2fx llama.cpp\n",
      100.0 * share_q, 100.0 * share_l, q_bytes / 1e6, l_bytes / 1e6, l_bytes / q_bytes);
}

int run(const Options& o) {
  const int threads = configure_threads(o.threads);
  const double copy_gbs = bench::measure_copy_bandwidth_gbs();
  const double read_gbs = bench::measure_read_bandwidth_gbs();
  model::LlamaModel m = build_model(o, /*quantize_lm_head=*/false);
  m->eval();
  const io::LlamaConfig& c = m->config();
  const WeightBytes wb = weight_bytes(*m);
  std::printf("threads %d, CPU path %s; memory copy bandwidth %.2f GB/s (read + write), read bandwidth %.2f GB/s\n",
              threads, isa_name(active_isa()), copy_gbs, read_gbs);
  std::printf("model %s: %lld layers, hidden %lld, intermediate %lld, heads %lld / kv %lld, vocab %lld; NF4 + DQ\n",
              o.config.empty() ? o.model.c_str() : o.config.c_str(), static_cast<long long>(c.num_hidden_layers),
              static_cast<long long>(c.hidden_size), static_cast<long long>(c.intermediate_size),
              static_cast<long long>(c.num_attention_heads), static_cast<long long>(c.num_key_value_heads),
              static_cast<long long>(c.vocab_size));
  if (o.kernels) {
    std::printf(
        "\n4-bit GEMV on one bf16 row (NF4 + DQ, blocksize 64); GB/s of 4-bit bytes read, %% of copy bandwidth\n");
    for (const auto& [out, in] : wb.shapes) bench_kernels(out, in, copy_gbs);
    if (!c.tie_word_embeddings) bench_dense_head(c.vocab_size, c.hidden_size, read_gbs);
  }
  if (!o.decode) return 0;
  std::vector<int64_t> prompt;
  torch::manual_seed(2);
  const torch::Tensor ids = torch::randint(kFirstTokenId, c.vocab_size, {o.prompt}, torch::kInt64);
  for (int64_t i = 0; i < o.prompt; ++i) prompt.push_back(ids[i].item<int64_t>());
  const Decode d = bench_generate(*m, o, prompt);
  const Decode exact = bench_generate(*m, o, prompt, quant::CpuGemv::kExact);
  const double no_gemv = bench_no_gemv(*m, o, prompt);
  const double per_token = wb.quant4 + wb.dense;
  const double kv_per_token = 2.0 * static_cast<double>(c.num_hidden_layers * c.kv_dim()) *
                              static_cast<double>(c10::elementSize(m->compute_dtype())) *
                              (static_cast<double>(o.prompt) + static_cast<double>(o.tokens) / 2);
  std::printf("\ndecode (--gemv q8, the default): prompt %lld tokens, %lld new tokens, greedy, best of %d\n",
              static_cast<long long>(o.prompt), static_cast<long long>(o.tokens), o.reps);
  std::printf("  weights read per token: %.2f MB 4-bit + %.2f MB dense (lm_head) = %.2f MB; KV cache %.2f MB\n",
              wb.quant4 / 1e6, wb.dense / 1e6, per_token / 1e6, kv_per_token / 1e6);
  std::printf("  prompt: %.1f tok/s\n", d.prompt_tok_s);
  std::printf(
      "  decode: %.2f tok/s (%.2f ms/token): 4-bit %.2f GB/s, all weights %.2f GB/s = %.1f%% of copy bandwidth\n",
      d.decode_tok_s, 1e3 / d.decode_tok_s, wb.quant4 * d.decode_tok_s / 1e9, per_token * d.decode_tok_s / 1e9,
      100.0 * per_token * d.decode_tok_s / 1e9 / copy_gbs);
  std::printf(
      "  decode with the exact GEMV (--gemv exact: fp32 products, CUDA's bits): %.2f tok/s; q8 speed-up %.2fx\n",
      exact.decode_tok_s, d.decode_tok_s / exact.decode_tok_s);
  std::printf("  decode without the GEMV (dequant + matmul per projection): %.2f tok/s; GEMV speed-up %.2fx\n", no_gemv,
              d.decode_tok_s / no_gemv);
  if (o.config.empty() && !c.tie_word_embeddings) print_fp32_compute(o, prompt);
  // The same with lm_head quantized too (qlora-generate --quantize-lm-head); not for a tied lm_head (the embedding).
  std::optional<Decode> dq;
  double bytes_q = 0;
  model::LlamaModel mq{nullptr};
  if (!c.tie_word_embeddings) {
    mq = build_model(o, /*quantize_lm_head=*/true);
    mq->eval();
    const WeightBytes wq = weight_bytes(*mq);
    dq = bench_generate(*mq, o, prompt);
    bytes_q = wq.quant4 + wq.dense;
    std::printf(
        "  with lm_head in NF4 too (--quantize-lm-head): %.2f MB read per token; decode %.2f tok/s (%.2f ms/token) "
        "= %.2f GB/s, %.1f%% of copy bandwidth; %.2fx the bf16-lm_head decode\n",
        bytes_q / 1e6, dq->decode_tok_s, 1e3 / dq->decode_tok_s, bytes_q * dq->decode_tok_s / 1e9,
        100.0 * bytes_q * dq->decode_tok_s / 1e9 / copy_gbs, dq->decode_tok_s / d.decode_tok_s);
    print_fused_vs_layer_ops(*mq, o, prompt);
  }
  if (o.llama_cpp_python.empty()) return 0;
  print_llama_cpp(o, threads, prompt, copy_gbs, d, dq);
  if (o.rounds > 0 && dq) print_rounds(*mq, bytes_q, o, threads, prompt);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  init_logging("warn");
  configure_host_allocator();  // as the apps do
  try {
    return run(parse_args(argc, argv));
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_decode: %s\n", e.what());
    return kExitBadArgs;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
    return 1;
  }
}
