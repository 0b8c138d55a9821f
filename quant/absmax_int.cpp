// Symmetric absmax INT4 / INT8 blockwise quantization (comparison baseline for NF4).
#include "quant/absmax_int.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace qlora::quant {
namespace {

AbsmaxIntQuantized quantize_absmax(const torch::Tensor& w, int64_t blocksize, int bits) {
  TORCH_CHECK(blocksize > 0, "quantize_absmax: blocksize must be positive");
  const torch::Tensor x = w.to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t n = x.numel();
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  const float qmax = bits == 4 ? 7.0f : 127.0f;
  AbsmaxIntQuantized q;
  q.bits = bits;
  q.blocksize = blocksize;
  q.shape = x.sizes().vec();
  q.codes = torch::empty({n}, torch::kInt8);
  q.scales = torch::empty({nblocks}, torch::kFloat32);
  const float* src = x.data_ptr<float>();
  int8_t* codes = q.codes.data_ptr<int8_t>();
  float* scales = q.scales.data_ptr<float>();
  at::parallel_for(0, nblocks, std::max<int64_t>(1, 16384 / blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t e0 = b * blocksize;
      const int64_t e1 = std::min(n, e0 + blocksize);
      float m = 0.0f;
      for (int64_t e = e0; e < e1; ++e) m = std::max(m, std::fabs(src[e]));
      scales[b] = m;
      const float inv = m > 0.0f ? qmax / m : 0.0f;
      for (int64_t e = e0; e < e1; ++e) {
        codes[e] = static_cast<int8_t>(std::clamp(std::nearbyint(src[e] * inv), -qmax, qmax));
      }
    }
  });
  return q;
}

}  // namespace

AbsmaxIntQuantized quantize_int4_absmax(const torch::Tensor& w, int64_t blocksize) {
  return quantize_absmax(w, blocksize, 4);
}

AbsmaxIntQuantized quantize_int8_absmax(const torch::Tensor& w, int64_t blocksize) {
  return quantize_absmax(w, blocksize, 8);
}

torch::Tensor dequantize_absmax_int(const AbsmaxIntQuantized& q) {
  const int64_t n = q.codes.numel();
  const int64_t nblocks = q.scales.numel();
  const float qmax = q.bits == 4 ? 7.0f : 127.0f;
  auto vals = torch::constant_pad_nd(q.codes.to(torch::kFloat32), {0, nblocks * q.blocksize - n}, 0);
  auto out = vals.view({nblocks, q.blocksize}) * (q.scales / qmax).view({nblocks, 1});
  return out.view({-1}).narrow(0, 0, n).view(q.shape);
}

}  // namespace qlora::quant
