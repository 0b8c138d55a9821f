#include "ops/dense_gemv.h"

#include <algorithm>

#include "ops/kernel_loop.h"
#include "ops/simd_avx2.h"
#include "ops/simd_avx512.h"

namespace qlora::ops {
namespace detail {
namespace {

// The specification: one row's products in fp32, summed in order (the caller rounds the sum to x's dtype).
struct RefKernels {
  template <class T>
  static float row(const c10::BFloat16* w, const T* x, int64_t in) {
    float acc = 0.0f;
    for (int64_t i = 0; i < in; ++i) acc += static_cast<float>(w[i]) * static_cast<float>(x[i]);
    return acc;
  }
};

}  // namespace

// The vector kernel, compiled once per ISA (see ops/fused_kernels.cpp's head comment).
#define QLORA_SIMD_KERNELS "ops/dense_gemv_simd.h"
#include "ops/simd_each_isa.h"

using DenseGemv = KernelSet<RefKernels, avx2::DenseGemvKernels, avx512::DenseGemvKernels>;

}  // namespace detail

torch::Tensor gemv_bf16(const torch::Tensor& w, const torch::Tensor& x, Isa isa) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == torch::kBFloat16 && w.dim() == 2 && w.is_contiguous(),
              "gemv_bf16: w must be a contiguous (out, in) bf16 CPU tensor, got ", w.sizes(), " ", w.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16) &&
                  x.dim() == 1 && x.is_contiguous() && x.size(0) == w.size(1),
              "gemv_bf16: x must be a contiguous fp32 or bf16 CPU vector of ", w.size(1), " elements, got ", x.sizes(),
              " ", x.scalar_type());
  const int64_t out = w.size(0), in = w.size(1);
  torch::Tensor y = torch::empty({out}, x.options());
  const auto* wp = static_cast<const c10::BFloat16*>(w.data_ptr());
  // ~32 KB of weight a chunk at least: a vocabulary's rows spread over every thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, in));
  detail::dispatch_dtype(x.scalar_type(), [&](auto tag) {  // fp32 or bf16 (checked above)
    using T = decltype(tag);
    const T* xp = detail::data<T>(x);
    T* yp = detail::data<T>(y);
    detail::for_each_row<detail::DenseGemv>(
        out, grain, isa, [&](int64_t r, auto kernels) { yp[r] = static_cast<T>(kernels.row(wp + r * in, xp, in)); });
  });
  return y;
}

}  // namespace qlora::ops
