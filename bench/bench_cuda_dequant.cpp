// CUDA 4-bit dequant and GEMV throughput against the device's own copy bandwidth, measured in the same run.
//
//   build/bin/bench_cuda_dequant [--json FILE]
//
// Bandwidth figures count bytes read + bytes written, for the copy (a device-to-device tensor copy of 1 GiB) and for
// the dequant (packed codes + absmax codes + nested scales read, 16-bit or 32-bit output written). Exits 3 with a
// message when this build has no CUDA or no CUDA device is visible (nothing is measured then).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "quant/linear_4bit.h"
#include "quant/quantized_tensor.h"

namespace {

using namespace qlora;

// Seconds per call of fn on the GPU: warm-up, then the best of `reps` timed batches of `inner` calls.
template <class F>
double gpu_seconds(F&& fn, int inner = 20, int reps = 5) {
  fn();
  torch::cuda::synchronize();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < inner; ++i) fn();
    torch::cuda::synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / inner;
    if (s < best) best = s;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json_path = argv[++i];
  }
#if !defined(QLORA_WITH_CUDA)
  std::fprintf(stderr, "bench_cuda_dequant: this build has no CUDA kernels (configure with -DQLORA_CUDA=ON)\n");
  return 3;
#else
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "bench_cuda_dequant: no CUDA device visible: nothing measured\n");
    return 3;
  }
  const torch::Device dev(torch::kCUDA, 0);
  nlohmann::json out;
  const int64_t copy_bytes = int64_t{1} << 30;
  torch::Tensor src = torch::empty({copy_bytes}, torch::TensorOptions().dtype(torch::kUInt8).device(dev)).fill_(1);
  torch::Tensor dst = torch::empty_like(src);
  const double copy_s = gpu_seconds([&] { dst.copy_(src); });
  const double copy_gbs = 2.0 * static_cast<double>(copy_bytes) / copy_s / 1e9;
  std::printf("device copy bandwidth: %.1f GB/s (read + write, 1 GiB device-to-device)\n", copy_gbs);
  out["copy_gbs"] = copy_gbs;
  src = torch::Tensor();
  dst = torch::Tensor();

  std::printf("| weight | quant | output | time | GB/s | of copy bandwidth |\n|---|---|---|---|---|---|\n");
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{4096, 4096}, {8192, 28672}}) {
    const torch::Tensor w = torch::randn({rows, cols}, torch::kBFloat16);
    for (bool dq : {true, false}) {
      const quant::QuantizedTensor q = quant::quantize_4bit(w, quant::QuantType::kNF4, 64, dq).to(dev);
      const int64_t read = q.packed.nbytes() + q.absmax.nbytes() + (dq ? q.absmax2.nbytes() : 0);
      for (torch::ScalarType t : {torch::kBFloat16, torch::kFloat32}) {
        torch::Tensor o = torch::empty({rows, cols}, torch::TensorOptions().dtype(t).device(dev));
        const double s = gpu_seconds([&] { quant::dequantize_4bit_into(q, o); });
        const double gbs = static_cast<double>(read + o.nbytes()) / s / 1e9;
        const std::string name = std::to_string(rows) + "x" + std::to_string(cols);
        std::printf("| %s | nf4%s | %s | %.3f ms | %.1f | %.1f%% |\n", name.c_str(), dq ? "+dq" : "",
                    t == torch::kBFloat16 ? "bf16" : "fp32", s * 1e3, gbs, 100.0 * gbs / copy_gbs);
        out["dequant"].push_back({{"weight", name},
                                  {"double_quant", dq},
                                  {"out", t == torch::kBFloat16 ? "bf16" : "fp32"},
                                  {"ms", s * 1e3},
                                  {"gbs", gbs},
                                  {"of_copy", gbs / copy_gbs}});
      }
    }
  }
  // Batch-1 GEMV (decoding): bytes = the 4-bit weight (codes + absmax codes + nested scales) + x + y, read once.
  std::printf("\n| GEMV weight (out x in) | time | GB/s | of copy bandwidth |\n|---|---|---|---|\n");
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{8192, 8192}, {28672, 8192}, {8192, 28672}}) {
    const quant::QuantizedTensor q =
        quant::quantize_4bit(torch::randn({rows, cols}, torch::kBFloat16), quant::QuantType::kNF4, 64, true).to(dev);
    const torch::Tensor x = torch::randn({cols}, torch::TensorOptions().dtype(torch::kBFloat16).device(dev));
    const int64_t bytes = q.packed.nbytes() + q.absmax.nbytes() + q.absmax2.nbytes() + x.nbytes() + rows * 2;
    const double s = gpu_seconds([&] { quant::gemv_4bit(q, x); }, 50);
    const double gbs = static_cast<double>(bytes) / s / 1e9;
    const std::string name = std::to_string(rows) + "x" + std::to_string(cols);
    std::printf("| %s | %.1f us | %.1f | %.1f%% |\n", name.c_str(), s * 1e6, gbs, 100.0 * gbs / copy_gbs);
    out["gemv"].push_back({{"weight", name}, {"us", s * 1e6}, {"gbs", gbs}, {"of_copy", gbs / copy_gbs}});
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
#endif
}
