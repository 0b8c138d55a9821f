// Size: one benchmark, one self-contained program (options, model, measurement, report), read top to bottom.
//
// One Llama-3-70B-shaped decoder layer (or N of them) trained as qlora-train would: NF4 + double-quant frozen
// projections, LoRA on all 7 projections, bf16 compute, causal-LM loss. Measures forward + backward wall time,
// the achieved FLOP rate against the bf16 matmul rate measured in the same run, and peak memory against the
// memory plan (plan/memory_plan.h) built for the same configuration the way the trainer builds it.
//
//   build/bin/bench_layer [--json FILE]                           (CUDA, the real shapes: scripts/gpu-check.sh)
//   build/bin/bench_layer --device cpu --hidden 1024 --intermediate 3584 --heads 8 --kv-heads 1 --seq 256
//                                                                  (a scaled-down dry run on the CPU)
//
// The model: configs/models/llama-3.1-70b.json (hidden 8192, intermediate 28672, 64 heads, 8 KV heads, head_dim
// 128, rope theta 500000 with llama3 scaling) with --layers decoder layers (default 1) and a --vocab of 256: the
// embedding and lm_head are not what is measured. Weights N(0, 0.02) quantized to NF4 + double quant, blocksize
// 64 (as model::load_model does); LoRA r 64, alpha 16, dropout 0.05, adapters stored in bf16 (configs/llama3-70b.yaml),
// B drawn N(0, 0.02) instead of PEFT's zeros so no gradient is trivially zero.
// The loss is the model's causal-LM loss (LlamaModel::causal_lm_loss, chunked as the trainer does) on random token
// ids, divided by the token count, as Trainer::train does; one AdamW step (trainer::AdapterAdamW) follows each
// backward, timed separately, so that the peak holds what a training step holds (optimizer states included).
//
// Time: best of --reps iterations after one warm-up (CUDA: synchronized). Peak memory, reset after the warm-up:
// CUDA: the caching allocator's peak allocated bytes (what the plan counts; peak reserved is printed too);
// CPU: the peak RSS (VmHWM, reset through /proc/self/clear_refs after the warm-up; with the apps' default glibc
// tuning freed memory stays resident, QLORA_MALLOC_TUNING=rss returns it as qlora-train does).
//
// Model FLOPs per iteration, N = B*T tokens (bench_train's convention: full T for attention, no causal discount):
//   N * (4 * L * N_layer + 6 * L * N_lora + 12 * L * Dq * T - 2 * H * (Dq + 2 * Dkv) - 2 * r * 3 * H)
//   + 4 * B * (T - 1) * V * H
// with N_layer = the frozen projections of one layer (forward 2, backward 2 for the input gradient only: no weight
// gradient), N_lora = r * (in + out) summed over a layer's adapters (forward 2, backward 4), Dq = heads * head_dim,
// Dkv = kv heads * head_dim; the first layer's q/k/v input gradients are never computed (the embedding is frozen);
// lm_head runs on the T - 1 positions that have a label. PyTorch's FlopCounterMode over transformers' Llama + PEFT
// LoRA of the same shape counts exactly this (plus lm_head on the T-th position, which HF computes).
// Gradient checkpointing reruns each layer's forward in backward, N * L * (2 * N_layer + 2 * N_lora + 4 * Dq * T)
// more (and lm_head's forward when the loss is chunked), reported as "with recompute" next to the model figure.
//
// Exit codes: 0 measured, 2 bad arguments or config file, 3 --device cuda without a CUDA device (or a build
// without CUDA), 1 anything else (e.g. a non-finite loss or gradient).
#include <fmt/format.h>
#include <torch/torch.h>

#if defined(QLORA_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "bench/machine_limits.h"
#include "common/error.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/threads.h"
#include "io/hf_config.h"
#include "lora/lora_model.h"
#include "model/llama.h"
#include "plan/memory_plan.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"
#include "trainer/run_plan.h"

namespace {

using namespace qlora;

constexpr int kExitBadArgs = 2;
constexpr int kExitNoCuda = 3;
constexpr double kInitStd = 0.02;       // HF initializer_range: frozen weights and LoRA B
constexpr double kAdamLr = 1e-4;        // configs/llama3-70b.yaml
constexpr int64_t kCpuMatmulN = 2048;   // bench_train's CPU matmul probe
constexpr int64_t kCudaMatmulN = 8192;  // the layer's hidden size: a GEMM large enough to reach the device's rate
constexpr int kMatmulInner = 10;        // CUDA: matmuls per timed batch (launch overhead amortized)

struct Options {
  std::string config = "configs/models/llama-3.1-70b.json";
  std::string device = "cuda";
  int64_t seq = 2048;
  int64_t micro_batch = 1;
  bool checkpointing = true;
  int reps = 5;
  int64_t layers = 1;
  int64_t vocab = 256;
  std::optional<int64_t> hidden, intermediate, heads, kv_heads;
  int64_t r = 64;
  double alpha = 16.0;  // configs/llama3-70b.yaml (alpha changes no time or memory: not an option)
  double dropout = 0.05;
  std::string lora_dtype = "bf16";
  bool optimizer_offload = false;
  int64_t loss_chunk_tokens = 1024;  // train.loss_chunk_tokens default
  int threads = 0;
  uint64_t seed = 0;
  std::string json;
};

// The whole of `v` as an integer >= min (or as a number in [min, max) for double), else qlora::Error.
template <class T>
T parse_number(const std::string& flag, const std::string& v, T min, T max = std::numeric_limits<T>::max()) {
  size_t pos = 0;
  T x{};
  try {
    x = std::is_integral_v<T> ? static_cast<T>(std::stoll(v, &pos)) : static_cast<T>(std::stod(v, &pos));
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || pos == 0 || x < min || x >= max) {
    throw Error(fmt::format("{}: expected {} >= {}{}, got '{}'", flag,
                            std::is_integral_v<T> ? "an integer" : "a number", min,
                            max < std::numeric_limits<T>::max() ? fmt::format(" and < {}", max) : "", v));
  }
  return x;
}

bool parse_on_off(const std::string& flag, const std::string& v) {
  if (v == "on" || v == "true") return true;
  if (v == "off" || v == "false") return false;
  throw Error(flag + ": expected on or off, got '" + v + "'");
}

// Every flag once: name, value placeholder, help, and how it sets Options (the llama.cpp common/arg.cpp way).
struct Flag {
  const char* name;
  const char* value;
  const char* help;
  std::function<void(Options&, const std::string&)> set;
};

const std::vector<Flag>& flags() {
  static const std::vector<Flag> kFlags = {
      {"--config", "FILE", "HF config.json of the shapes (default configs/models/llama-3.1-70b.json)",
       [](Options& o, const std::string& v) { o.config = v; }},
      {"--device", "cuda|cpu", "where the layer runs (default cuda; cuda:N for another device)",
       [](Options& o, const std::string& v) {
         if (v != "cpu" && v.rfind("cuda", 0) != 0)
           throw Error("--device: expected cuda, cuda:N or cpu, got '" + v + "'");
         o.device = v;
       }},
      {"--seq", "N", "sequence length (default 2048)",
       [](Options& o, const std::string& v) { o.seq = parse_number<int64_t>("--seq", v, 2); }},
      {"--micro-batch", "N", "rows per micro-batch (default 1)",
       [](Options& o, const std::string& v) { o.micro_batch = parse_number<int64_t>("--micro-batch", v, 1); }},
      {"--checkpointing", "on|off", "gradient checkpointing (default on)",
       [](Options& o, const std::string& v) { o.checkpointing = parse_on_off("--checkpointing", v); }},
      {"--reps", "N", "timed iterations after one warm-up; the best is reported (default 5)",
       [](Options& o, const std::string& v) { o.reps = parse_number<int>("--reps", v, 1); }},
      {"--layers", "N", "decoder layers (default 1)",
       [](Options& o, const std::string& v) { o.layers = parse_number<int64_t>("--layers", v, 1); }},
      {"--vocab", "N", "vocabulary size (default 256: embedding and lm_head are not what is measured)",
       [](Options& o, const std::string& v) { o.vocab = parse_number<int64_t>("--vocab", v, 2); }},
      {"--hidden", "N", "override hidden_size (head_dim becomes hidden / heads)",
       [](Options& o, const std::string& v) { o.hidden = parse_number<int64_t>("--hidden", v, 1); }},
      {"--intermediate", "N", "override intermediate_size",
       [](Options& o, const std::string& v) { o.intermediate = parse_number<int64_t>("--intermediate", v, 1); }},
      {"--heads", "N", "override num_attention_heads",
       [](Options& o, const std::string& v) { o.heads = parse_number<int64_t>("--heads", v, 1); }},
      {"--kv-heads", "N", "override num_key_value_heads",
       [](Options& o, const std::string& v) { o.kv_heads = parse_number<int64_t>("--kv-heads", v, 1); }},
      {"--r", "N", "LoRA rank (default 64)",
       [](Options& o, const std::string& v) { o.r = parse_number<int64_t>("--r", v, 1); }},
      {"--dropout", "X", "LoRA dropout (default 0.05)",
       [](Options& o, const std::string& v) { o.dropout = parse_number<double>("--dropout", v, 0.0, 1.0); }},
      {"--lora-dtype", "bf16|fp32", "adapter storage dtype (default bf16)",
       [](Options& o, const std::string& v) {
         if (v != "bf16" && v != "fp32") throw Error("--lora-dtype: expected bf16 or fp32, got '" + v + "'");
         o.lora_dtype = v;
       }},
      {"--optimizer-offload", "on|off", "AdamW states in host memory (default off)",
       [](Options& o, const std::string& v) { o.optimizer_offload = parse_on_off("--optimizer-offload", v); }},
      {"--threads", "N", "CPU threads (default 0: all cores)",
       [](Options& o, const std::string& v) { o.threads = parse_number<int>("--threads", v, 0); }},
      {"--json", "FILE", "also write the results as JSON", [](Options& o, const std::string& v) { o.json = v; }},
  };
  return kFlags;
}

void print_usage() {
  std::printf("usage: bench_layer [options]\n");
  for (const auto& f : flags()) std::printf("  %-20s %-10s %s\n", f.name, f.value, f.help);
}

// nullopt: --help was given (usage printed).
std::optional<Options> parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_usage();
      return std::nullopt;
    }
    const Flag* flag = nullptr;
    for (const auto& f : flags()) {
      if (a == f.name) flag = &f;
    }
    if (!flag) throw Error("unknown argument '" + a + "'\nHINT: bench_layer --help lists the options");
    if (i + 1 >= argc) throw Error(a + ": missing value (" + flag->value + ")");
    flag->set(o, argv[++i]);
  }
  return o;
}

// The shapes: config.json with the overrides, validated by the same parser as any config.json.
io::LlamaConfig layer_config(const Options& o) {
  if (!std::filesystem::is_regular_file(o.config)) {
    throw Error("--config " + o.config +
                ": no such file\nHINT: run from the repository root, or pass --config configs/models/<model>.json");
  }
  io::LlamaConfig c = io::load_llama_config(o.config);
  c.num_hidden_layers = o.layers;
  c.vocab_size = o.vocab;
  c.tie_word_embeddings = false;
  if (o.hidden) c.hidden_size = *o.hidden;
  if (o.intermediate) c.intermediate_size = *o.intermediate;
  if (o.heads) c.num_attention_heads = *o.heads;
  if (o.kv_heads) c.num_key_value_heads = *o.kv_heads;
  if (o.hidden || o.heads) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      throw Error("--hidden " + std::to_string(c.hidden_size) + " is not a multiple of --heads " +
                  std::to_string(c.num_attention_heads));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  return io::parse_llama_config(io::llama_config_to_json(c), o.config + " (with bench_layer's overrides)");
}

// The training configuration the plan is made for: the same fields Trainer::setup reads to build the run.
trainer::TrainConfig train_config(const Options& o) {
  trainer::TrainConfig t;
  t.model.compute_dtype = "bf16";
  t.model.quant_type = "nf4";
  t.model.quant_blocksize = quant::kDefaultBlocksize;
  t.model.double_quant = true;
  t.model.gradient_checkpointing = o.checkpointing;
  t.lora.r = o.r;
  t.lora.alpha = o.alpha;
  t.lora.dropout = o.dropout;
  t.lora.targets = {lora::kAllLinear};
  t.lora.dtype = o.lora_dtype;
  t.train.micro_batch_size = o.micro_batch;
  t.train.loss_chunk_tokens = o.loss_chunk_tokens;
  t.train.optimizer_offload = o.optimizer_offload;
  t.train.seed = o.seed;
  t.data_config.max_seq_len = o.seq;
  t.device = o.device;
  return t;
}

// Random N(0, kInitStd) projections quantized as model::load_model quantizes a 16-bit checkpoint (on the CPU, then
// moved), embeddings/norms/lm_head dense; then LoRA on every projection, with B drawn N(0, kInitStd).
std::pair<model::LlamaModel, lora::LoraAdapters> build_model(const io::LlamaConfig& c, const trainer::TrainConfig& t,
                                                             const torch::Device& dev) {
  torch::manual_seed(t.train.seed);
  model::LlamaModel m(c, t.model.dtype());
  m->init_weights(kInitStd);  // dense bf16 projections on the CPU, quantized one by one below
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, lin] : m->named_linears()) {
      if (name == "lm_head") continue;  // dense, as the loader keeps it (quantize_lm_head = false)
      const quant::QuantizedTensor q =
          quant::quantize_4bit(lin->frozen_base()->dense_weight_ref(), quant::parse_quant_type(t.model.quant_type),
                               t.model.quant_blocksize, t.model.double_quant);
      m->replace_linear(name, model::FrozenLinearImpl::quantized(q.to(dev)));
    }
  }
  m->to(dev);
  m->set_gradient_checkpointing(t.model.gradient_checkpointing);
  lora::LoraAdapters adapters = lora::attach_lora(m, trainer::lora_config(t), t.train.seed);
  for (auto& [name, mod] : adapters.modules) {
    mod->set_weights(mod->lora_A(),
                     kInitStd * torch::randn({mod->out_features(), mod->rank()}, torch::TensorOptions().device(dev)));
  }
  m->train();
  return {m, std::move(adapters)};
}

// Bytes the model holds in tensors (frozen 4-bit parts, dense tensors, LoRA A/B), summed over its registered
// buffers and parameters.
int64_t held_bytes(const model::LlamaModel& m) {
  int64_t b = 0;
  for (const auto& t : m->buffers(/*recurse=*/true)) b += static_cast<int64_t>(t.nbytes());
  for (const auto& t : m->parameters(/*recurse=*/true)) b += static_cast<int64_t>(t.nbytes());
  return b;
}

void synchronize(const torch::Device& dev) {
  if (dev.is_cuda()) torch::cuda::synchronize(dev.index());
}

// Resets the peak-memory counter the run reports: CUDA the allocator's peak stats, CPU VmHWM through
// /proc/self/clear_refs (Linux >= 4.0; false when refused: the peak is then the lifetime peak).
bool reset_peak(const torch::Device& dev) {
#if defined(QLORA_WITH_CUDA)
  if (dev.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(dev.index());
    return true;
  }
#endif
  (void)dev;
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

int64_t peak_reserved_bytes(const torch::Device& dev) {
#if defined(QLORA_WITH_CUDA)
  if (dev.is_cuda()) {
    return static_cast<int64_t>(c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index()).reserved_bytes[0].peak);
  }
#endif
  (void)dev;
  return 0;
}

// bf16 (n, n) x (n, n) matmul rate on a CUDA device in GFLOP/s: best of `reps` synchronized batches.
double cuda_matmul_gflops(const torch::Device& dev, int64_t n, int reps) {
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(dev);
  const torch::Tensor a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  torch::Tensor c = torch::matmul(a, b);  // warm-up (cuBLAS handle, workspace)
  synchronize(dev);
  const double s = bench::time_best(
                       [&] {
                         for (int i = 0; i < kMatmulInner; ++i) c = torch::matmul(a, b);
                         synchronize(dev);
                       },
                       reps) /
                   kMatmulInner;
  return 2.0 * static_cast<double>(n * n * n) / s / 1e9;
}

struct Flops {
  double model = 0;      // per iteration, the formula in the header
  double recompute = 0;  // extra forward work under gradient checkpointing
};

// FLOPs per forward + backward iteration of B*T tokens (the formula in the header).
Flops iteration_flops(const io::LlamaConfig& c, const plan::MemoryPlanInputs& in) {
  const double h = static_cast<double>(c.hidden_size), im = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  const double l = static_cast<double>(c.num_hidden_layers), v = static_cast<double>(c.vocab_size);
  const double b = static_cast<double>(in.micro_batch), t = static_cast<double>(in.seq_len), n = b * t;
  const double n_layer = h * q + 2 * h * kv + q * h + 3 * h * im;
  double n_lora_layer = 0, lora_qkv_in = 0;
  for (const auto& m : in.lora) {
    if (m.layer != 0) continue;
    n_lora_layer += static_cast<double>(m.r * (m.in + m.out));
    if (m.proj == "q_proj" || m.proj == "k_proj" || m.proj == "v_proj") lora_qkv_in += static_cast<double>(m.r * m.in);
  }
  // Layer 0's q/k/v read the norm of the frozen embedding, which needs no gradient: autograd never computes their
  // input gradients (base and LoRA A).
  const double first_layer_skipped = 2 * h * (q + 2 * kv) + 2 * lora_qkv_in;
  const double head_tokens = b * (t - 1);  // causal_lm_loss runs lm_head on the positions that have a label
  Flops f;
  f.model =
      n * (4 * l * n_layer + 6 * l * n_lora_layer + 12 * l * q * t - first_layer_skipped) + 4 * head_tokens * v * h;
  if (in.gradient_checkpointing) {
    f.recompute = n * l * (2 * n_layer + 2 * n_lora_layer + 4 * q * t);
    const bool loss_chunked = std::max<int64_t>(1, in.loss_chunk_tokens / in.micro_batch) < in.seq_len - 1;
    if (loss_chunked) f.recompute += 2 * head_tokens * v * h;  // each checkpointed loss chunk reruns lm_head
  }
  return f;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Measured {
  double build_s = 0, warmup_s = 0, warmup_loss = 0, final_loss = 0;
  double fwd_bwd_s = 1e30, optimizer_s = 1e30;  // best of the timed iterations
  int64_t held_bytes = 0;                       // tensors the model holds after building
  int64_t peak_bytes = 0, peak_reserved_bytes = 0;
  std::string peak_kind;
  double matmul_gflops = 0;
  int64_t matmul_n = 0;
};

// Builds the model, runs one checked warm-up step and `reps` timed ones, then the matmul probe.
Measured measure(const Options& o, const io::LlamaConfig& mc, const trainer::TrainConfig& tc,
                 const torch::Device& dev) {
  Measured r;
  const auto t_build = std::chrono::steady_clock::now();
  auto built = build_model(mc, tc, dev);
  model::LlamaModel& m = built.first;
  const lora::LoraAdapters& adapters = built.second;
  r.build_s = seconds_since(t_build);
#if defined(__GLIBC__)
  malloc_trim(0);  // the dense weights quantized above are gone; their heap pages are not the training step's
#endif
  r.held_bytes = held_bytes(m);
  trainer::AdapterAdamW optimizer(adapters.adapter_parameters(), torch::optim::AdamWOptions(kAdamLr),
                                  o.optimizer_offload ? std::optional<torch::Device>(torch::kCPU) : std::nullopt);

  torch::manual_seed(o.seed + 1);
  const torch::Tensor ids =
      torch::randint(mc.vocab_size, {o.micro_batch, o.seq}, torch::TensorOptions().dtype(torch::kInt64)).to(dev);
  torch::Tensor loss;  // mean token loss of the last iteration (fp32 scalar)
  auto forward_backward = [&] {
    auto [sum, count] = m->causal_lm_loss(ids, ids, {}, o.loss_chunk_tokens);
    const torch::Tensor mean = sum / static_cast<double>(count);  // as Trainer::train scales it (one micro-batch)
    mean.backward();
    loss = mean.detach();
  };
  auto optimizer_step = [&] {
    optimizer.step();
    optimizer.zero_grad();
  };

  // Warm-up (allocator pools, dequant buffers, optimizer states), with the sanity checks: a finite loss (printed
  // next to ln(vocab) for scale) and finite, non-zero adapter gradients.
  const auto t_warm = std::chrono::steady_clock::now();
  forward_backward();
  synchronize(dev);
  r.warmup_s = seconds_since(t_warm);
  double grad_sq = 0;
  for (const auto& p : adapters.adapter_parameters()) {
    TORCH_CHECK(p.grad().defined(), "bench_layer: an adapter parameter got no gradient");
    grad_sq += p.grad().to(torch::kFloat32).pow(2).sum().item<double>();
  }
  r.warmup_loss = loss.item<double>();
  TORCH_CHECK(std::isfinite(r.warmup_loss) && std::isfinite(grad_sq) && grad_sq > 0, "bench_layer: warm-up loss ",
              r.warmup_loss, ", adapter gradient norm^2 ", grad_sq, ": not a valid training step");
  optimizer_step();
  synchronize(dev);

  const bool peak_reset = reset_peak(dev);
  for (int i = 0; i < o.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    forward_backward();
    synchronize(dev);
    r.fwd_bwd_s = std::min(r.fwd_bwd_s, seconds_since(t0));
    const auto t1 = std::chrono::steady_clock::now();
    optimizer_step();
    synchronize(dev);
    r.optimizer_s = std::min(r.optimizer_s, seconds_since(t1));
  }
  r.final_loss = loss.item<double>();
  TORCH_CHECK(std::isfinite(r.final_loss), "bench_layer: non-finite loss ", r.final_loss, " in the timed iterations");
  const std::optional<int64_t> cuda_peak = trainer::device_peak_allocated_bytes(dev);
  TORCH_CHECK(!dev.is_cuda() || cuda_peak, "bench_layer: no CUDA allocator statistics in this build");
  r.peak_bytes = cuda_peak ? *cuda_peak : static_cast<int64_t>(peak_rss_bytes());
  r.peak_reserved_bytes = peak_reserved_bytes(dev);
  r.peak_kind = dev.is_cuda() ? "CUDA peak allocated"
                : peak_reset  ? "peak RSS (since the warm-up)"
                              : "peak RSS (process lifetime: clear_refs refused)";

  // The machine's own limit, measured after the layer (no large matrices alive during it).
  r.matmul_n = dev.is_cuda() ? kCudaMatmulN : kCpuMatmulN;
  r.matmul_gflops = dev.is_cuda() ? cuda_matmul_gflops(dev, r.matmul_n, o.reps)
                                  : bench::measure_matmul_gflops(c10::ScalarType::BFloat16, r.matmul_n, r.matmul_n,
                                                                 r.matmul_n, o.reps);
  return r;
}

// The plan's items summed by group, in print order.
std::vector<std::pair<std::string, int64_t>> plan_groups(const plan::MemoryPlan& plan) {
  std::vector<std::pair<std::string, int64_t>> groups;
  for (const auto& it : plan.items) {
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == it.group; });
    if (g == groups.end()) {
      groups.emplace_back(it.group, it.bytes);
    } else {
      g->second += it.bytes;
    }
  }
  return groups;
}

std::string gib(int64_t bytes) {
  return format_bytes(static_cast<double>(bytes));
}

// The figures derived from one measurement and the plan of the same configuration.
struct Figures {
  Flops fl;
  double tokens = 0, model_tflops = 0, hw_tflops = 0, mm_tflops = 0;
  int64_t plan_weights = 0;
  std::vector<std::pair<std::string, int64_t>> groups;
};

Figures figures_of(const Options& o, const io::LlamaConfig& mc, const trainer::TrainConfig& tc,
                   const plan::MemoryPlan& plan, const Measured& r) {
  Figures f;
  f.fl = iteration_flops(mc, plan.inputs);
  f.tokens = static_cast<double>(o.micro_batch * o.seq);
  f.model_tflops = f.fl.model / r.fwd_bwd_s / 1e12;
  f.hw_tflops = (f.fl.model + f.fl.recompute) / r.fwd_bwd_s / 1e12;
  f.mm_tflops = r.matmul_gflops / 1e3;
  // The plan's frozen base plus the adapters' A and B in their storage dtype (its "lora" group adds their
  // gradients, AdamW states and compute copies on top): what the model holds once built.
  f.plan_weights = plan.frozen_bytes + static_cast<int64_t>(c10::elementSize(tc.lora.torch_dtype())) * plan.lora_params;
  f.groups = plan_groups(plan);
  return f;
}

void print_header(const Options& o, const io::LlamaConfig& mc, const trainer::TrainConfig& tc, const torch::Device& dev,
                  int threads) {
  std::printf(
      "bench_layer: %s shapes, %lld layer(s), hidden %lld, intermediate %lld, heads %lld/%lld kv, head_dim %lld, "
      "vocab %lld; seq %lld x micro batch %lld; checkpointing %s; NF4+DQ blocksize %lld; LoRA r %lld alpha %g "
      "dropout %g %s on all 7 projections; bf16 compute; loss: causal-LM on random ids; device %s (%d CPU threads)\n",
      o.config.c_str(), static_cast<long long>(mc.num_hidden_layers), static_cast<long long>(mc.hidden_size),
      static_cast<long long>(mc.intermediate_size), static_cast<long long>(mc.num_attention_heads),
      static_cast<long long>(mc.num_key_value_heads), static_cast<long long>(mc.head_dim),
      static_cast<long long>(mc.vocab_size), static_cast<long long>(o.seq), static_cast<long long>(o.micro_batch),
      o.checkpointing ? "on" : "off", static_cast<long long>(tc.model.quant_blocksize), static_cast<long long>(o.r),
      o.alpha, o.dropout, o.lora_dtype.c_str(), dev.str().c_str(), threads);
  std::fflush(stdout);
}

void print_report(const Options& o, const io::LlamaConfig& mc, const torch::Device& dev, const plan::MemoryPlan& plan,
                  const Measured& r, const Figures& f, int64_t baseline) {
  const auto& [fl, tokens, model_tflops, hw_tflops, mm_tflops, plan_weights, groups] = f;
  const std::string plan_note = dev.is_cuda() ? "no process baseline on CUDA"
                                              : "baseline " + gib(baseline) + " measured before the model, malloc " +
                                                    (trainer::rss_tuning_requested() ? "rss tuning" : "apps' tuning");
  std::printf("model built in %.1f s; warm-up iteration %.2f s, loss %.4f (ln vocab %.4f)\n\n", r.build_s, r.warmup_s,
              r.warmup_loss, std::log(static_cast<double>(mc.vocab_size)));
  std::printf("| measure | value | reference | ratio |\n|---|---|---|---|\n");
  std::printf("| forward + backward | %.2f ms (best of %d) | | |\n", r.fwd_bwd_s * 1e3, o.reps);
  std::printf("| AdamW step%s | %.2f ms | | |\n", o.optimizer_offload ? " (offloaded)" : "", r.optimizer_s * 1e3);
  std::printf("| tokens/s (forward + backward) | %.0f | | |\n", tokens / r.fwd_bwd_s);
  std::printf("| model TFLOP/s (%.3f TFLOP/iter) | %.3f | bf16 matmul %lld^3: %.3f TFLOP/s | %.1f%% |\n",
              fl.model / 1e12, model_tflops, static_cast<long long>(r.matmul_n), mm_tflops,
              100.0 * model_tflops / mm_tflops);
  if (o.checkpointing) {
    std::printf("| with recompute TFLOP/s (%.3f TFLOP/iter) | %.3f | same | %.1f%% |\n",
                (fl.model + fl.recompute) / 1e12, hw_tflops, 100.0 * hw_tflops / mm_tflops);
  }
  std::printf("| weights held (4-bit base + dense + LoRA A/B) | %s | plan %s | %.3f |\n", gib(r.held_bytes).c_str(),
              gib(plan_weights).c_str(), static_cast<double>(r.held_bytes) / static_cast<double>(plan_weights));
  std::printf("| %s | %s | plan total %s | %.3f |\n", r.peak_kind.c_str(), gib(r.peak_bytes).c_str(),
              gib(plan.total_bytes).c_str(), static_cast<double>(r.peak_bytes) / static_cast<double>(plan.total_bytes));
  if (dev.is_cuda()) std::printf("| CUDA peak reserved | %s | | |\n", gib(r.peak_reserved_bytes).c_str());
  std::printf("\n| plan group (peak phase: %s; %s) | bytes |\n|---|---|\n", plan.peak_phase.c_str(), plan_note.c_str());
  for (const auto& [g, b] : groups) std::printf("| %s | %s |\n", g.c_str(), gib(b).c_str());
  std::printf("| total | %s |\n", gib(plan.total_bytes).c_str());
  if (plan.host_bytes > 0) std::printf("| (host: offloaded AdamW states) | %s |\n", gib(plan.host_bytes).c_str());
  std::fflush(stdout);
}

void write_json(const Options& o, const io::LlamaConfig& mc, const torch::Device& dev, int threads,
                const plan::MemoryPlan& plan, const Measured& r, const Figures& f) {
  const auto& [fl, tokens, model_tflops, hw_tflops, mm_tflops, plan_weights, groups] = f;
  nlohmann::json items = nlohmann::json::array(), by_group = nlohmann::json::object();
  for (const auto& it : plan.items) items.push_back({{"group", it.group}, {"name", it.name}, {"bytes", it.bytes}});
  for (const auto& [g, b] : groups) by_group[g] = b;
  const nlohmann::json out = {
      {"config", o.config},
      {"device", dev.str()},
      {"shape",
       {{"layers", mc.num_hidden_layers},
        {"hidden", mc.hidden_size},
        {"intermediate", mc.intermediate_size},
        {"heads", mc.num_attention_heads},
        {"kv_heads", mc.num_key_value_heads},
        {"head_dim", mc.head_dim},
        {"vocab", mc.vocab_size}}},
      {"seq", o.seq},
      {"micro_batch", o.micro_batch},
      {"checkpointing", o.checkpointing},
      {"lora", {{"r", o.r}, {"alpha", o.alpha}, {"dropout", o.dropout}, {"dtype", o.lora_dtype}}},
      {"optimizer_offload", o.optimizer_offload},
      {"loss", "causal-LM mean token loss on random ids"},
      {"reps", o.reps},
      {"threads", threads},
      {"build_s", r.build_s},
      {"warmup_loss", r.warmup_loss},
      {"final_loss", r.final_loss},
      {"fwd_bwd_ms", r.fwd_bwd_s * 1e3},
      {"optimizer_ms", r.optimizer_s * 1e3},
      {"tokens_per_s", tokens / r.fwd_bwd_s},
      {"model_flops_per_iter", fl.model},
      {"recompute_flops_per_iter", fl.recompute},
      {"model_tflops", model_tflops},
      {"with_recompute_tflops", hw_tflops},
      {"matmul_n", r.matmul_n},
      {"matmul_bf16_tflops", mm_tflops},
      {"model_tflops_of_matmul", model_tflops / mm_tflops},
      {"peak_kind", r.peak_kind},
      {"peak_bytes", r.peak_bytes},
      {"peak_reserved_bytes", r.peak_reserved_bytes},
      {"held_weight_bytes", r.held_bytes},
      {"plan_weight_bytes", plan_weights},
      {"plan_total_bytes", plan.total_bytes},
      {"peak_over_plan", static_cast<double>(r.peak_bytes) / static_cast<double>(plan.total_bytes)},
      {"plan_host_bytes", plan.host_bytes},
      {"plan_peak_phase", plan.peak_phase},
      {"plan_baseline_bytes", plan.inputs.baseline_bytes},
      {"plan_groups", by_group},
      {"plan_items", items},
      {"malloc_tuning", trainer::rss_tuning_requested() ? "rss" : "default"},
  };
  std::ofstream file(o.json);
  if (!file) throw Error("--json " + o.json + ": cannot write");
  file << out.dump(2) << "\n";
}

int run(const Options& o) {
  torch::Device dev(o.device);
  if (dev.is_cuda() && !dev.has_index()) dev = torch::Device(torch::kCUDA, 0);
  const int threads = configure_threads(o.threads);
  const io::LlamaConfig mc = layer_config(o);
  const trainer::TrainConfig tc = train_config(o);
  trainer::return_freed_tensor_memory_to_os();  // QLORA_MALLOC_TUNING=rss, as Trainer::setup
  const auto baseline = static_cast<int64_t>(current_rss_bytes());
  const plan::MemoryPlan plan = plan::plan_memory(trainer::plan_inputs(tc, mc, baseline));
  print_header(o, mc, tc, dev, threads);
  const Measured r = measure(o, mc, tc, dev);
  const Figures f = figures_of(o, mc, tc, plan, r);
  print_report(o, mc, dev, plan, r, f, baseline);
  if (!o.json.empty()) write_json(o, mc, dev, threads, plan, r, f);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  init_logging("warn");
  std::optional<Options> opts;
  try {
    opts = parse_args(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_layer: %s\n", e.what());
    return kExitBadArgs;
  }
  if (!opts) return 0;
  if (opts->device.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      std::fprintf(stderr,
                   "bench_layer: no CUDA device visible (--device %s): nothing measured\n"
                   "HINT: on a CPU machine run a scaled-down layer: bench_layer --device cpu --hidden 1024 "
                   "--intermediate 3584 --heads 8 --kv-heads 1 --seq 256\n",
                   opts->device.c_str());
      return kExitNoCuda;
    }
#if !defined(QLORA_WITH_CUDA)
    std::fprintf(stderr,
                 "bench_layer: this build has no CUDA kernels or allocator statistics, so no CUDA device to run on "
                 "(configure with -DQLORA_CUDA=ON): nothing measured\n");
    return kExitNoCuda;
#endif
  }
  configure_host_allocator();  // as the apps do (qlora-train)
  try {
    return run(*opts);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_layer: %s\n", e.what());
    return kExitBadArgs;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_layer: error: %s\n", e.what());
    return 1;
  }
}
