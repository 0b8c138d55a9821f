// bench_quant [threads=2] [linear]: NF4 dequant throughput per CPU path vs the machine's copy bandwidth, and the
// frozen 4-bit linear (forward + backward, 512 tokens) vs a dense bf16 linear of the same shape.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "bench/machine_limits.h"
#include "common/host_memory.h"
#include "quant/dequant_kernels.h"
#include "quant/linear_4bit.h"
#include "quant/quantized_tensor.h"

using namespace qlora;
using qlora::bench::time_best;

namespace {

double seconds(const std::function<void()>& fn) {
  auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void bench_dequant(int64_t out, int64_t in, double copy_gbs) {
  const int64_t n = out * in;
  torch::Tensor w = torch::randn({out, in}, torch::kBFloat16);
  quant::QuantizedTensor q;
  const double tq = seconds([&] { q = quant::quantize_4bit(w, quant::QuantType::kNF4, 64, true); });
  std::printf("quantize_4bit %lldx%lld (bf16 in, NF4+DQ, %s): %.2f s = %.0f Mparam/s", (long long)out, (long long)in,
              isa_name(active_isa()), tq, n / tq / 1e6);
  if (n <= (int64_t{1} << 24)) {
    const double ts =
        seconds([&] { quant::detail::quantize_4bit_with(w, quant::QuantType::kNF4, 64, true, Isa::kScalar); });
    std::printf("  (scalar _ref path: %.2f s = %.0f Mparam/s)", ts, n / ts / 1e6);
  }
  std::printf("\n");
  w = torch::Tensor();
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    torch::Tensor dst = torch::empty({out, in}, torch::TensorOptions().dtype(dt));
    const double out_bytes = static_cast<double>(dst.element_size());
    for (auto isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!cpu_supports(isa)) continue;
      quant::detail::dequantize_cpu_into(q, dst, isa);  // warm-up (faults the pages in)
      const double s = time_best([&] { quant::detail::dequantize_cpu_into(q, dst, isa); }, 5);
      const double gbs = (0.5 + out_bytes) * static_cast<double>(n) / s / 1e9;
      std::printf("  dequant %-6s -> %-8s %7.2f ms  %6.2f Gparam/s  %6.2f GB/s  = %5.1f%% of copy bandwidth\n",
                  isa_name(isa), c10::toString(dt), s * 1e3, n / s / 1e9, gbs, 100.0 * gbs / copy_gbs);
    }
  }
}

void bench_linear(int64_t out, int64_t in, int64_t tokens) {
  torch::Tensor wd = (torch::randn({out, in}) * 0.02).to(torch::kBFloat16);
  auto q = quant::quantize_4bit(wd, quant::QuantType::kNF4, 64, true);
  torch::Tensor x = torch::randn({tokens, in}).to(torch::kBFloat16).requires_grad_(true);
  torch::Tensor g = torch::randn({tokens, out}).to(torch::kBFloat16);
  auto dense = [&] {
    x.mutable_grad() = torch::Tensor();
    torch::linear(x, wd).backward(g);  // frozen dense weight: backward computes grad_x only
  };
  auto nf4 = [&] {
    x.mutable_grad() = torch::Tensor();
    quant::linear_4bit(x, q).backward(g);
  };
  auto fresh = [&] {  // dense autograd on a freshly dequantized (non-grad) weight: isolates the custom Function
    x.mutable_grad() = torch::Tensor();
    torch::linear(x, quant::dequantize_4bit(q, torch::kBFloat16)).backward(g);
  };
  dense();
  nf4();
  fresh();
  const double td = time_best(dense, 3);
  const double tn = time_best(nf4, 3);
  const double tf = time_best(fresh, 3);
  double tfwd_d, tfwd_n;
  {
    torch::NoGradGuard ng;
    tfwd_d = time_best([&] { torch::linear(x, wd); }, 3);
    tfwd_n = time_best([&] { quant::linear_4bit(x, q); }, 3);
  }
  std::printf("  fwd only: dense %.1f ms, NF4 %.1f ms; dense autograd on fresh dequant fwd+bwd: %.1f ms\n",
              tfwd_d * 1e3, tfwd_n * 1e3, tf * 1e3);
  torch::Tensor tmp = torch::empty({out, in}, torch::kBFloat16);
  const double tdq = time_best([&] { quant::dequantize_4bit_into(q, tmp); }, 3);
  std::printf(
      "linear %lldx%lld, %lld tokens, fwd+bwd bf16: dense %.1f ms, NF4 %.1f ms  (ratio %.3f; 2 dequants = %.1f ms)\n",
      (long long)out, (long long)in, (long long)tokens, td * 1e3, tn * 1e3, tn / td, 2 * tdq * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  at::set_num_threads(threads);
  const bool tuned = qlora::configure_host_allocator();  // as every qlora-* app does (QLORA_MALLOC_TUNING=0: off)
  std::printf("threads: %d, active dequant path: %s, host allocator tuning: %s\n", at::get_num_threads(),
              isa_name(active_isa()), tuned ? "on" : "off");
  const double copy = qlora::bench::measure_copy_bandwidth_gbs();
  std::printf("memory copy bandwidth: %.2f GB/s (read + write)\n", copy);
  std::printf("bf16 matmul 2048^3: %.1f GFLOP/s; fp32: %.1f GFLOP/s\n",
              qlora::bench::measure_matmul_gflops(torch::kBFloat16),
              qlora::bench::measure_matmul_gflops(torch::kFloat32));
  const bool linear_only = argc > 2 && std::string(argv[2]) == "linear";
  if (!linear_only) {
    bench_dequant(4096, 4096, copy);
    bench_dequant(8192, 28672, copy);
  }
  bench_linear(4096, 4096, 512);
  bench_linear(11008, 4096, 512);
  return 0;
}
