// bench_fused_ops [threads=2]: forward + backward time of each fused training op (ops/fused_ops.h, ops/rope.h) next to
// the LibTorch composite it replaced (the ops fallbacks are the old code), at the shapes of configs/bench.yaml (micro
// batch 4 x 512 tokens, hidden 768, intermediate 2048, 12 heads, vocab 32000, loss chunks of 1024 tokens, bf16), with
// the machine's copy bandwidth. Then one-query decode attention (forward, InferenceMode) against SDPA on the same
// KV-cache view and mask, at the bench model's heads and at Llama 3 8B's; GB/s there counts the K and V bytes read.
// Last, training attention (forward + backward) against SDPA, with the machine's bf16 matmul rate.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bench/machine_limits.h"
#include "common/host_memory.h"
#include "ops/attention.h"
#include "ops/fused_ops.h"
#include "ops/rope.h"
#include "quant/dequant_kernels.h"

using namespace qlora;
using qlora::bench::time_best;

namespace {

constexpr int kReps = 5;
constexpr int64_t kIgnore = -100;

// Best-of-`reps` time (ms) of forward + backward of fn(xs) with upstream gradient g, every input requiring grad.
double fwd_bwd_ms(const std::vector<torch::Tensor>& xs0, const torch::Tensor& g,
                  const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& fn, int reps = kReps) {
  auto once = [&] {
    std::vector<torch::Tensor> xs;
    for (const torch::Tensor& x0 : xs0) xs.push_back(x0.detach().requires_grad_(true));
    fn(xs).backward(g);
  };
  once();  // warm-up
  return 1e3 * time_best(once, reps);
}

// The same for one input.
double fwd_bwd_ms(const torch::Tensor& x0, const torch::Tensor& g,
                  const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  return fwd_bwd_ms(std::vector<torch::Tensor>{x0}, g, [&](const std::vector<torch::Tensor>& xs) { return fn(xs[0]); });
}

void row(const char* op, const char* shape, double old_ms, double new_ms, double bytes) {
  std::printf("%-22s %-26s %9.2f %9.2f %7.1fx %8.2f\n", op, shape, old_ms, new_ms, old_ms / new_ms,
              bytes / (new_ms * 1e-3) / 1e9);
}

// One-query decode attention (forward, InferenceMode): SDPA and ours on the same cache view and mask.
void decode_attention_rows() {
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  std::printf("%-22s %-26s %9s %9s %8s %8s\n", "decode attention", "heads/kv x keys x d", "sdpa ms", "ours ms",
              "speedup", "GB/s");
  struct DecodeShape {
    int64_t heads, kv_heads, keys, d;
  };
  for (const DecodeShape& sh : {DecodeShape{12, 4, 96, 64}, DecodeShape{12, 4, 512, 64}, DecodeShape{12, 4, 2048, 64},
                                DecodeShape{32, 8, 2048, 128}}) {
    c10::InferenceMode inference;
    const torch::Tensor q = torch::randn({1, sh.heads, 1, sh.d}, bf16);
    // Views of a larger cache, as KVCache hands them to attention; the mask build_attention_mask makes for a step.
    const torch::Tensor k = torch::randn({1, sh.kv_heads, sh.keys + 64, sh.d}, bf16).narrow(2, 0, sh.keys);
    const torch::Tensor v = torch::randn({1, sh.kv_heads, sh.keys + 64, sh.d}, bf16).narrow(2, 0, sh.keys);
    const torch::Tensor mask = ops::build_attention_mask(1, 1, sh.keys - 1, {}, {}, torch::kCPU);
    constexpr int kCalls = 50;
    auto per_call_ms = [&](auto&& fn) {
      return 1e3 *
             time_best(
                 [&] {
                   for (int i = 0; i < kCalls; ++i) fn();
                 },
                 kReps) /
             kCalls;
    };
    const double old_ms = per_call_ms(
        [&] { return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, std::nullopt, /*enable_gqa=*/true); });
    const double new_ms = per_call_ms([&] { return ops::grouped_query_attention(q, k, v, mask); });
    const std::string shape = std::to_string(sh.heads) + "/" + std::to_string(sh.kv_heads) + " x " +
                              std::to_string(sh.keys) + " x " + std::to_string(sh.d);
    row("decode attention", shape.c_str(), old_ms, new_ms, 2.0 * 2 * sh.kv_heads * sh.keys * sh.d);
  }
}

// Training attention (forward + backward, bf16): SDPA and grouped_query_attention (the blocked CPU kernel where
// ops::blocked_cpu_attention_runs()) on the same q, k, v and mask: causal at the bench model's shape, the same with
// a packing mask (the bench config packs), the bench model's heads at 4096 tokens, and Llama 3 8B's at 2048. GFLOP/s
// counts 4 B nH T S d forward and twice that backward (the full (T, S) products, as bench_train's MFU does), against
// the bf16 matmul rate.
void training_attention_rows(double matmul_gflops) {
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  std::printf("%-22s %-26s %9s %9s %8s %8s %7s\n", "attention (fwd+bwd)", "B x heads/kv x T x d", "sdpa ms", "ours ms",
              "speedup", "GFLOP/s", "of mm");
  struct Shape {
    int64_t b, heads, kv_heads, t, d;
    bool packed;
  };
  for (const Shape& sh : {Shape{4, 12, 4, 512, 64, false}, Shape{4, 12, 4, 512, 64, true},
                          Shape{1, 12, 4, 4096, 64, false}, Shape{1, 32, 8, 2048, 128, false}}) {
    const torch::Tensor q0 = torch::randn({sh.b, sh.heads, sh.t, sh.d}, bf16);
    const torch::Tensor k0 = torch::randn({sh.b, sh.kv_heads, sh.t, sh.d}, bf16);
    const torch::Tensor v0 = torch::randn({sh.b, sh.kv_heads, sh.t, sh.d}, bf16);
    const torch::Tensor g = torch::randn({sh.b, sh.heads, sh.t, sh.d}, bf16);
    torch::Tensor mask;  // undefined: causal
    if (sh.packed) {     // documents of 60-260 tokens packed into each row
      torch::Tensor seg = torch::zeros({sh.b, sh.t}, torch::kInt64);
      for (int64_t r = 0; r < sh.b; ++r) {
        int64_t at = 0, id = 1;
        while (at < sh.t) {
          const int64_t len = 60 + torch::randint(0, 200, {1}).item<int64_t>();
          seg.index_put_({r, torch::indexing::Slice(at, std::min(sh.t, at + len))}, id++);
          at += len;
        }
      }
      mask = ops::build_attention_mask(sh.b, sh.t, 0, {}, seg, torch::kCPU);
    }
    const std::vector<torch::Tensor> qkv = {q0, k0, v0};
    const int reps = sh.t > 1024 ? 2 : kReps;
    const double old_ms = fwd_bwd_ms(
        qkv, g,
        [&](const std::vector<torch::Tensor>& x) {
          const std::optional<torch::Tensor> m = mask.defined() ? std::optional<torch::Tensor>(mask) : std::nullopt;
          return at::scaled_dot_product_attention(x[0], x[1], x[2], m, 0.0, !mask.defined(), std::nullopt, true);
        },
        reps);
    const double new_ms = fwd_bwd_ms(
        qkv, g,
        [&](const std::vector<torch::Tensor>& x) { return ops::grouped_query_attention(x[0], x[1], x[2], mask); },
        reps);
    const double flops = 12.0 * sh.b * sh.heads * sh.t * sh.t * sh.d;
    const double gflops = flops / (new_ms * 1e-3) / 1e9;
    const std::string shape = std::to_string(sh.b) + " x " + std::to_string(sh.heads) + "/" +
                              std::to_string(sh.kv_heads) + " x " + std::to_string(sh.t) + " x " +
                              std::to_string(sh.d) + (sh.packed ? " packed" : " causal");
    std::printf("%-22s %-26s %9.2f %9.2f %7.1fx %8.1f %6.0f%%\n", "attention", shape.c_str(), old_ms, new_ms,
                old_ms / new_ms, gflops, 100.0 * gflops / matmul_gflops);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  at::set_num_threads(threads);
  configure_host_allocator();
  torch::manual_seed(0);
  const double copy_gbs = bench::measure_copy_bandwidth_gbs();
  std::printf("threads: %d, kernel path: %s, copy bandwidth %.1f GB/s\n", at::get_num_threads(), isa_name(active_isa()),
              copy_gbs);
  std::printf("%-22s %-26s %9s %9s %8s %8s\n", "op (fwd+bwd)", "shape", "torch ms", "fused ms", "speedup", "GB/s");
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);

  {  // Loss of one chunk: (B * 256, V) logits.
    const torch::Tensor x = torch::randn({1024, 32000}, bf16) * 2;
    torch::Tensor y = torch::randint(0, 32000, {1024}, torch::kInt64);
    y.narrow(0, 0, 100).fill_(kIgnore);
    const torch::Tensor g = torch::ones({}, torch::kFloat32);
    const double old_ms =
        fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::detail::cross_entropy_sum_ops(v, y, kIgnore); });
    const double new_ms =
        fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::cross_entropy_sum(v, y, kIgnore); });
    row("cross_entropy_sum", "(1024, 32000) bf16", old_ms, new_ms, 3.0 * 2 * x.numel());  // read x twice, write grad
  }
  {  // Input / post-attention norm of one layer.
    const torch::Tensor x = torch::randn({4, 512, 768}, bf16);
    const torch::Tensor w = (1.0 + 0.1 * torch::randn({768})).to(torch::kBFloat16);
    const torch::Tensor g = torch::randn({4, 512, 768}, bf16);
    const double old_ms =
        fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::detail::rms_norm_ops(v, w, 1e-5); });
    const double new_ms = fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::rms_norm(v, w, 1e-5); });
    row("rms_norm", "(4, 512, 768) bf16", old_ms, new_ms, 5.0 * 2 * x.numel());
  }
  {  // RoPE on q: (B, T, H, d) projections viewed as (B, H, T, d).
    const torch::Tensor x = torch::randn({4, 512, 12, 64}, bf16).transpose(1, 2);
    const torch::Tensor cos = torch::randn({4, 512, 64}, bf16), sin = torch::randn({4, 512, 64}, bf16);
    const torch::Tensor g = torch::randn({4, 12, 512, 64}, bf16);
    const double old_ms =
        fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::detail::apply_rope_ops(v, cos, sin); });
    const double new_ms = fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::apply_rope(v, cos, sin); });
    row("apply_rope (q)", "(4, 12, 512, 64) bf16", old_ms, new_ms, 4.0 * 2 * x.numel());
  }
  {  // silu(gate) * up of the MLP; in training both inputs need their gradient (LoRA on gate_proj and up_proj).
    const torch::Tensor up = torch::randn({4, 512, 2048}, bf16).requires_grad_(true);
    const torch::Tensor x = torch::randn({4, 512, 2048}, bf16);
    const torch::Tensor g = torch::randn({4, 512, 2048}, bf16);
    const double old_ms = fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::detail::swiglu_ops(v, up); });
    const double new_ms = fwd_bwd_ms(x, g, [&](const torch::Tensor& v) { return ops::swiglu(v, up); });
    row("swiglu (both grads)", "(4, 512, 2048) bf16", old_ms, new_ms, 7.0 * 2 * x.numel());
  }
  for (int64_t width : {768, 2048}) {  // LoRA input dropout: attention/MLP inputs, down_proj's input
    const torch::Tensor x = torch::randn({4, 512, width}, bf16);
    const torch::Tensor g = torch::randn({4, 512, width}, bf16);
    const double old_ms =
        fwd_bwd_ms(x, g, [](const torch::Tensor& v) { return torch::dropout(v, 0.05, /*train=*/true); });
    const double new_ms =
        fwd_bwd_ms(x, g, [](const torch::Tensor& v) { return ops::dropout(v, 0.05, /*train=*/true); });
    const std::string shape = "(4, 512, " + std::to_string(width) + ") bf16";
    row("dropout p=0.05", shape.c_str(), old_ms, new_ms, 4.0 * 2 * x.numel());
  }
  decode_attention_rows();
  const double mm = bench::measure_matmul_gflops(torch::kBFloat16);
  std::printf("bf16 matmul %.1f GFLOP/s (2048^3); training attention %s\n", mm,
              ops::blocked_cpu_attention_runs() ? "runs the blocked CPU kernel" : "runs SDPA (blocked kernel off)");
  training_attention_rows(mm);
  return 0;
}
