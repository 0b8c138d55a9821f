// Training throughput of the QLoRA loop on configs/bench.yaml (~100M-parameter model, seq 512, NF4+DQ, compute
// dtype auto: bf16 where the CPU multiplies bf16 natively, else fp32), with gradient checkpointing on and off:
// tokens/s, model FLOPs utilisation against the matmul rate of the run's compute dtype measured in the same run,
// and peak RSS (each configuration runs in its own forked process so its peak RSS is its own).
//
//   build/bin/bench_train [configs/bench.yaml] [--steps N] [--threads T]
//   (make the model first: build/bin/qlora-make-tiny --out models/bench --preset bench)
//
// Model FLOPs per trained token (frozen base + LoRA; stated, not the 6N full-finetune convention):
//   4 * N_mm          forward 2N + backward 2N for the input gradients only (no weight gradients: frozen)
// + 6 * N_lora        LoRA A/B: forward 2N + backward 4N (input and weight gradients)
// + 12 * L * H * T    attention scores and values (QK^T, AV), forward + backward, full T (no causal discount)
// where N_mm = matmul weights (all projections + lm_head; embedding lookups are free), L layers, H = heads *
// head_dim, T = sequence length. Recomputation under gradient checkpointing is NOT counted (it is overhead),
// so MFU drops when checkpointing is on. The 6 * N_params figure (full fine-tuning convention) is printed too.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/machine_limits.h"
#include "common/error.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/threads.h"
#include "io/hf_config.h"
#include "model/compute_dtype.h"
#include "plan/time_plan.h"
#include "trainer/run_plan.h"
#include "trainer/trainer.h"

namespace {

using namespace qlora;

struct Result {
  bool checkpointing = false;
  double tokens_per_s = 0;
  double peak_rss = 0;
  double steps = 0;
  double loss = 0;
  bool ok = false;
  std::string error;
};

// Runs one configuration in a child process (bench::run_in_child).
Result run_forked(const std::string& config_file, bool checkpointing, int steps, int threads,
                  const std::string& profile_prefix) {
  Result r;
  r.checkpointing = checkpointing;
  const nlohmann::json j = bench::run_in_child([&]() -> nlohmann::json {
    const std::string tag = checkpointing ? "ckpt_on" : "ckpt_off";
    const std::string dir = "runs/bench/" + tag;
    auto cfg = trainer::load_config(
        config_file, {"model.gradient_checkpointing=" + std::string(checkpointing ? "true" : "false"),
                      "train.max_steps=" + std::to_string(steps), "train.threads=" + std::to_string(threads),
                      "checkpoint.dir=" + dir, "checkpoint.every=0", "checkpoint.resume=none",
                      "log.metrics=" + dir + "/metrics.jsonl", "eval.every=0", "eval.at_end=false"});
    trainer::TrainerOptions opts;
    opts.overwrite = true;
    opts.write_outputs = false;
    std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
    if (!profile_prefix.empty()) {
      profile = std::make_unique<torch::autograd::profiler::RecordProfile>(profile_prefix + "-" + tag + ".json");
    }
    auto s = trainer::run_training(cfg, opts);
    profile.reset();
    return {{"ok", true},
            {"tokens_per_s", s.steady_tokens_per_s},
            {"peak_rss", s.peak_rss_bytes},
            {"steps", s.steps},
            {"loss", s.final_loss}};
  });
  r.ok = j.value("ok", false);
  r.error = j.value("error", "");
  r.tokens_per_s = j.value("tokens_per_s", 0.0);
  r.peak_rss = j.value("peak_rss", 0.0);
  r.steps = j.value("steps", 0.0);
  r.loss = j.value("loss", 0.0);
  return r;
}

struct Args {
  std::string config_file = "configs/bench.yaml";
  int steps = 6, threads = 0;
  std::string profile_prefix, only;
  bool help = false;
};

Args parse_args(int argc, char** argv) {
  Args o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) {
      o.steps = std::atoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      o.threads = std::atoi(argv[++i]);
    } else if (a == "--profile" && i + 1 < argc) {
      o.profile_prefix = argv[++i];
    } else if (a == "--only" && i + 1 < argc) {
      o.only = argv[++i];
    } else if (a == "--help" || a == "-h") {
      o.help = true;
    } else {
      o.config_file = a;
    }
  }
  return o;
}

// Model FLOPs per trained token (forward + backward), plan/time_plan.h's accounting (what `qlora-train --plan`
// estimates run times with): 4 N_frozen + 6 N_lora + 12 L q T, recomputation not counted.
plan::TokenFlops token_flops(const trainer::TrainConfig& cfg, const io::LlamaConfig& mc) {
  return plan::token_flops(trainer::plan_inputs(cfg, mc));
}

// The matmuls of one micro-batch alone, each at the rate this machine gives its shape on its own (best of 5, the
// step's operands fresh in cache): the time a step cannot go below without faster matmuls, and so the MFU it
// cannot exceed. The shapes are the step's: every frozen projection forward and input gradient, lm_head in the
// loss's chunks, each adapter's forward and three backward products, and attention's six (B heads, T, T) products
// at full T (the FLOP accounting's; causal skipping would beat it). Softmax, norms, dequantization, optimizer: none.
struct MatmulFloor {
  double layers_fwd = 0, lm_head_fwd = 0, frozen_bwd = 0;  // frozen weights
  double lora_layers_fwd = 0, lora_lm_head_fwd = 0, lora_bwd = 0;
  double attn_fwd = 0, attn_bwd = 0;
  double tokens = 0;  // per micro-batch
  double off() const {
    return layers_fwd + lm_head_fwd + frozen_bwd + lora_layers_fwd + lora_lm_head_fwd + lora_bwd + attn_fwd + attn_bwd;
  }
  // Checkpointing recomputes each decoder layer's forward (not lm_head's) during backward.
  double on() const { return off() + layers_fwd + lora_layers_fwd + attn_fwd; }
};

MatmulFloor measure_matmul_floor(const trainer::TrainConfig& cfg, const io::LlamaConfig& mc) {
  const auto opts = torch::TensorOptions().dtype(cfg.model.dtype());
  const int64_t seq = cfg.data_config.max_seq_len, batch = cfg.train.micro_batch_size, m = batch * seq;
  std::map<std::string, double> memo;  // shape key -> seconds (the same shape recurs in every layer)
  // make() builds the operands and returns the product to time; it runs only for a shape not timed yet.
  using Product = std::function<void()>;
  auto timed = [&](const std::string& key, const std::function<Product()>& make) {
    auto it = memo.find(key);
    if (it != memo.end()) return it->second;
    const Product fn = make();
    fn();  // warm-up: the operands in cache, the kernel chosen
    return memo[key] = bench::time_best(fn, 5);
  };
  auto key = [](const char* op, std::initializer_list<int64_t> dims) {
    return fmt::format("{} {}", op, fmt::join(dims, " "));
  };
  // y = x W^T (forward) and dx = dy W (input gradient) of a frozen (out, in) weight, for `rows` tokens.
  auto frozen_fwd = [&](int64_t rows, int64_t in, int64_t out) {
    return timed(key("fwd", {rows, in, out}), [&] {
      const auto x = torch::randn({rows, in}, opts), w = torch::randn({out, in}, opts);
      return Product([x, w] { torch::mm(x, w.t()); });
    });
  };
  auto frozen_bwd = [&](int64_t rows, int64_t in, int64_t out) {
    return timed(key("bwd", {rows, in, out}), [&] {
      const auto dy = torch::randn({rows, out}, opts), w = torch::randn({out, in}, opts);
      return Product([dy, w] { torch::mm(dy, w); });
    });
  };
  // LoRA: low = x A^T, y + low B^T (one addmm); backward dlow = dy B, dB = dy^T low, dA = dlow^T x, dx = dlow A.
  auto lora_fwd = [&](int64_t in, int64_t out, int64_t r) {
    return timed(key("lora fwd", {in, out, r}), [&] {
      const auto x = torch::randn({m, in}, opts), a = torch::randn({r, in}, opts);
      const auto b = torch::randn({out, r}, opts), low = torch::randn({m, r}, opts), y = torch::randn({m, out}, opts);
      return Product([x, a, b, low, y] {
        torch::mm(x, a.t());
        torch::addmm(y, low, b.t());
      });
    });
  };
  auto lora_bwd = [&](int64_t in, int64_t out, int64_t r) {
    return timed(key("lora bwd", {in, out, r}), [&] {
      const auto x = torch::randn({m, in}, opts), a = torch::randn({r, in}, opts), b = torch::randn({out, r}, opts);
      const auto low = torch::randn({m, r}, opts), dy = torch::randn({m, out}, opts), dlow = torch::randn({m, r}, opts);
      return Product([x, a, b, low, dy, dlow] {
        torch::mm(dy, b);
        torch::mm(dy.t(), low);
        torch::mm(dlow.t(), x);
        torch::mm(dlow, a);
      });
    });
  };
  MatmulFloor f;
  f.tokens = static_cast<double>(m);
  const int64_t layers = mc.num_hidden_layers;
  for (const auto& p : io::layer_projections(mc)) {
    f.layers_fwd += layers * frozen_fwd(m, p.in, p.out);
    f.frozen_bwd += layers * frozen_bwd(m, p.in, p.out);
  }
  // lm_head runs inside the loss, train.loss_chunk_tokens rows at a time.
  const int64_t chunk = cfg.train.loss_chunk_tokens > 0 ? std::min(cfg.train.loss_chunk_tokens, m) : m;
  for (int64_t done = 0; done < m; done += chunk) {
    const int64_t rows = std::min(chunk, m - done);
    f.lm_head_fwd += frozen_fwd(rows, mc.hidden_size, mc.vocab_size);
    f.frozen_bwd += frozen_bwd(rows, mc.hidden_size, mc.vocab_size);
  }
  for (const auto& l : trainer::plan_inputs(cfg, mc).lora) {
    (l.layer < 0 ? f.lora_lm_head_fwd : f.lora_layers_fwd) += lora_fwd(l.in, l.out, l.r);
    f.lora_bwd += lora_bwd(l.in, l.out, l.r);
  }
  // Attention per layer on (batch x heads, T, head_dim): forward S = Q K^T, O = P V; backward dP = dO V^T,
  // dV = P^T dO, dQ = dS K, dK = dS^T Q.
  const int64_t bh = batch * mc.num_attention_heads, hd = mc.head_dim;
  const auto q = torch::randn({bh, seq, hd}, opts), k = torch::randn({bh, seq, hd}, opts);
  const auto p = torch::randn({bh, seq, seq}, opts);
  const double qk = timed("attn qk", [&] { return Product([&] { torch::bmm(q, k.transpose(1, 2)); }); });  // dP too
  const double pv = timed("attn pv", [&] { return Product([&] { torch::bmm(p, k); }); });  // also dQ = dS K
  const double ptq = timed("attn ptq", [&] { return Product([&] { torch::bmm(p.transpose(1, 2), q); }); });  // dV, dK
  f.attn_fwd = layers * (qk + pv);
  f.attn_bwd = layers * (qk + pv + 2 * ptq);
  return f;
}

void print_floor(const MatmulFloor& fl, const plan::TokenFlops& f, double peak) {
  const double per_step = f.per_token * fl.tokens;
  std::printf(
      "matmul floor per micro-batch (%.0f tokens; the step's matmuls alone, each shape at this machine's rate): "
      "frozen forward %.1f ms (lm_head %.1f), frozen input gradients %.1f ms, LoRA %.1f + %.1f ms, attention %.1f + "
      "%.1f ms\n",
      fl.tokens, 1e3 * (fl.layers_fwd + fl.lm_head_fwd), 1e3 * fl.lm_head_fwd, 1e3 * fl.frozen_bwd,
      1e3 * (fl.lora_layers_fwd + fl.lora_lm_head_fwd), 1e3 * fl.lora_bwd, 1e3 * fl.attn_fwd, 1e3 * fl.attn_bwd);
  for (bool ck : {true, false}) {
    const double s = ck ? fl.on() : fl.off();
    std::printf("  checkpointing %-3s: %.1f ms = %.1f tokens/s at most, MFU ceiling %.1f%%\n", ck ? "on" : "off",
                1e3 * s, fl.tokens / s, 100 * per_step / s / (peak * 1e9));
  }
}

void print_results(const std::vector<Result>& results, const plan::TokenFlops& f, double n_params, double peak,
                   const std::string& dtype, int steps, const MatmulFloor& floor) {
  std::printf("%-26s %12s %14s %10s %10s %12s %12s\n", "gradient checkpointing", "tokens/s", "model GFLOP/s",
              ("MFU(" + dtype + ")").c_str(), "6N MFU", "of floor", "peak RSS");
  for (const auto& res : results) {
    if (!res.ok) {
      std::printf("%-26s failed: %s\n", res.checkpointing ? "on" : "off", res.error.c_str());
      continue;
    }
    const double gflops = res.tokens_per_s * f.per_token / 1e9;
    const double gflops_6n = res.tokens_per_s * 6 * n_params / 1e9;
    const double floor_tps = floor.tokens / (res.checkpointing ? floor.on() : floor.off());
    std::printf("%-26s %12.1f %14.1f %9.1f%% %9.1f%% %11.1f%% %12s\n", res.checkpointing ? "on" : "off",
                res.tokens_per_s, gflops, 100 * gflops / peak, 100 * gflops_6n / peak,
                100 * res.tokens_per_s / floor_tps, format_bytes(res.peak_rss).c_str());
  }
  std::printf(
      "(tokens/s excludes the first step; %d steps per configuration; \"of floor\": tokens/s as a share of the "
      "matmul floor's)\n",
      steps);
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  if (args.help) {
    std::printf(
        "usage: bench_train [CONFIG=configs/bench.yaml] [--steps N=6] [--threads T=0 (all)] [--only on|off]\n"
        "                   [--profile PREFIX (LibTorch op trace per run: PREFIX-ckpt_on.json, chrome://tracing)]\n");
    return 0;
  }
  const std::string& config_file = args.config_file;
  const int steps = args.steps, threads = args.threads;
  init_logging("warn");
  const bool tuned = configure_host_allocator();  // as qlora-train does
  std::printf("host allocator tuning: %s\n", tuned ? "on" : "off (QLORA_MALLOC_TUNING=0)");
  try {
    const auto cfg = trainer::load_config(config_file);
    const auto mc = io::load_llama_config(cfg.model.path / "config.json");
    const plan::TokenFlops f = token_flops(cfg, mc);
    const double n_params = static_cast<double>(mc.num_parameters());
    std::printf("bench_train: %s  (%s, %.1fM params, %lld layers, hidden %lld, seq %.0f, micro batch %lld, %s %s)\n",
                config_file.c_str(), cfg.model.path.c_str(), n_params / 1e6,
                static_cast<long long>(mc.num_hidden_layers), static_cast<long long>(mc.hidden_size), f.seq,
                static_cast<long long>(cfg.train.micro_batch_size), cfg.model.quant_type.c_str(),
                cfg.model.compute_dtype.c_str());
    // The matmul rate of the run's compute dtype is the MFU denominator (bf16; fp32 where `auto` chose it, the
    // CPU having no bf16 matmul instructions). On a shared VM it swings between runs, so it is measured three
    // times: in a child before the training runs, and twice in this process after them (2048^3, best of 5 each);
    // MFU is taken against the highest rate seen, i.e. the conservative figure.
    const c10::ScalarType dtype = cfg.model.dtype();
    // 2048^3, or 512^3 for a dtype in LibTorch's reference loops (2048^3 would take minutes there).
    auto rate_size = [](c10::ScalarType t) -> int64_t { return model::cpu_matmul_native(t) ? 2048 : 512; };
    const int64_t mm = rate_size(dtype);
    auto measure_peak = [&] {
      configure_threads(threads);
      return bench::measure_matmul_gflops(dtype, mm, mm, mm, 5);
    };
    const nlohmann::json before = bench::run_in_child([&]() -> nlohmann::json { return {{"gflops", measure_peak()}}; });
    std::vector<Result> results;
    for (bool ck : {true, false}) {
      if (args.only == (ck ? "off" : "on")) continue;
      results.push_back(run_forked(config_file, ck, steps, threads, args.profile_prefix));
    }

    // Machine limits, measured after the children (no OpenMP pool in the parent before fork).
    const int nthreads = configure_threads(threads);
    const double rate_before = before.value("gflops", 0.0);
    const double rate_after1 = measure_peak();
    const double rate_after2 = measure_peak();
    const double peak = std::max({rate_before, rate_after1, rate_after2});
    // The other dtype for reference (bf16 at 512^3 where it runs in reference loops).
    const bool run_fp32 = dtype == c10::ScalarType::Float;
    const c10::ScalarType other = run_fp32 ? c10::ScalarType::BFloat16 : c10::ScalarType::Float;
    const int64_t other_mm = rate_size(other);
    const double other_rate = bench::measure_matmul_gflops(other, other_mm, other_mm, other_mm, 3);
    std::printf(
        "machine: %d threads, matmul %s %.1f GFLOP/s (max of %.1f before, %.1f and %.1f after the runs; %lld^3, "
        "best of 5 each), %s %.1f GFLOP/s (%lld^3)\n",
        nthreads, cfg.model.compute_dtype.c_str(), peak, rate_before, rate_after1, rate_after2,
        static_cast<long long>(mm), run_fp32 ? "bf16" : "fp32", other_rate, static_cast<long long>(other_mm));
    std::printf(
        "model FLOPs/token: 4*N_frozen + 6*N_lora + 12*L*q*T = %.3f GFLOP (N_frozen %.1fM, N_lora %.2fM); "
        "6*N_params = %.3f GFLOP\n",
        f.per_token / 1e9, f.n_frozen / 1e6, f.n_lora / 1e6, 6 * n_params / 1e9);
    const MatmulFloor floor = measure_matmul_floor(cfg, mc);
    print_floor(floor, f, peak);
    print_results(results, f, n_params, peak, cfg.model.compute_dtype, steps, floor);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
