// One-query attention for decoding (ops/fused_kernels.h decode_attention_cpu, behind ops/attention.h's
// grouped_query_attention): `RefKernels::row`, the specification (plain C++, std::exp), and `DecodeKernels::row`
// (ops/decode_attention_simd.h), the same fp32 operations on 16 (AVX-512) or 8 (AVX2) lanes with vexp for std::exp,
// all tested against float64 and against SDPA in tests/ops/test_attention.cpp.
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "ops/fused_kernels.h"
#include "ops/kernel_loop.h"
#include "ops/simd_avx2.h"
#include "ops/simd_avx512.h"

namespace qlora::ops::detail {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One (batch, head) row of batch-1 decode attention (decode_attention_cpu): q (d), keys / values row j at k + j * ks,
// v + j * vs, allowed (S) or null (all). scratch: S floats, acc: d floats.
struct RefKernels {
  template <class T>
  static void row(const T* q, const T* k, const T* v, int64_t ks, int64_t vs, const bool* allowed, int64_t s_len,
                  int64_t d, float scale, float* scratch, float* acc, T* out) {
    float m = -kInf;
    for (int64_t j = 0; j < s_len; ++j) {
      if (allowed != nullptr && !allowed[j]) {
        scratch[j] = -kInf;
        continue;
      }
      float dot = 0.0f;
      for (int64_t i = 0; i < d; ++i) dot += static_cast<float>(q[i]) * static_cast<float>(k[j * ks + i]);
      scratch[j] = dot * scale;
      m = std::max(m, scratch[j]);
    }
    float l = 0.0f;
    for (int64_t j = 0; j < s_len; ++j) {
      const float p = std::exp(scratch[j] - m);
      l += p;
      scratch[j] = static_cast<float>(static_cast<T>(p));  // the P.V product reads p in the input dtype
    }
    std::fill(acc, acc + d, 0.0f);
    for (int64_t j = 0; j < s_len; ++j) {
      if (allowed != nullptr && !allowed[j]) continue;
      for (int64_t i = 0; i < d; ++i) acc[i] += scratch[j] * static_cast<float>(v[j * vs + i]);
    }
    for (int64_t i = 0; i < d; ++i) out[i] = static_cast<T>(acc[i] / l);
  }
};

}  // namespace

// The vector kernel, compiled once per ISA (see ops/fused_kernels.cpp's head comment).
#define QLORA_SIMD_KERNELS "ops/decode_attention_simd.h"
#include "ops/simd_each_isa.h"

using Decode = KernelSet<RefKernels, avx2::DecodeKernels, avx512::DecodeKernels>;

void decode_attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& allowed, double scale, torch::Tensor& out, Isa isa) {
  TORCH_CHECK(q.device().is_cpu() && fused_dtype_supported(q.scalar_type()) && q.dim() == 4 && q.size(2) == 1,
              "decode attention: q must be a (B, nH, 1, d) CPU tensor of fp32/bf16/fp16, got ", q.sizes());
  const int64_t b = q.size(0), nh = q.size(1), d = q.size(3);
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.size(0) == b && k.size(3) == d && k.size(2) > 0,
              "decode attention: k and v must be (", b, ", nKV, S > 0, ", d, "), got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.device().is_cpu() && v.device().is_cpu() && k.scalar_type() == q.scalar_type() &&
                  v.scalar_type() == q.scalar_type(),
              "decode attention: k and v must be CPU tensors of q's dtype");
  const int64_t nkv = k.size(1), s_len = k.size(2);
  TORCH_CHECK(nkv > 0 && nh % nkv == 0, "decode attention: heads ", nh, " not a multiple of kv heads ", nkv);
  TORCH_CHECK(d > 0 && q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "decode attention: the head dim must have unit stride");
  TORCH_CHECK(!allowed.defined() || (allowed.scalar_type() == torch::kBool && allowed.is_contiguous() &&
                                     allowed.dim() == 2 && allowed.size(0) == b && allowed.size(1) == s_len),
              "decode attention: allowed must be a contiguous (", b, ", ", s_len, ") bool tensor");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type(),
              "decode attention: output must be contiguous like q");
  TORCH_CHECK(scale > 0, "decode attention: scale must be positive, got ", scale);
  const int64_t group = nh / nkv;
  const auto fscale = static_cast<float>(scale);
  const bool* ap = allowed.defined() ? allowed.data_ptr<bool>() : nullptr;
  // A row (one query head) reads S x d keys and values; small rows stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, s_len * d));
  dispatch_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* qp = data<T>(q);
    const T* kp = data<T>(k);
    const T* vp = data<T>(v);
    T* op = data<T>(out);
    for_each_row<Decode>(b * nh, grain, isa, [&](int64_t r, auto kernels) {
      thread_local std::vector<float> scratch;
      scratch.resize(static_cast<size_t>(s_len + d));
      const int64_t bi = r / nh, hi = r % nh, kh = hi / group;
      kernels.row(qp + bi * q.stride(0) + hi * q.stride(1), kp + bi * k.stride(0) + kh * k.stride(1),
                  vp + bi * v.stride(0) + kh * v.stride(1), k.stride(2), v.stride(2),
                  ap == nullptr ? nullptr : ap + bi * s_len, s_len, d, fscale, scratch.data(), scratch.data() + s_len,
                  op + r * d);
    });
  });
}

template <class T>
void decode_attention_row_cpu(const T* q, const T* k, const T* v, int64_t ks, int64_t vs, const bool* allowed,
                              int64_t s_len, int64_t d, float scale, float* scratch, T* out, Isa isa) {
  with_kernels<Decode>(isa, [&](auto kernels) {
    kernels.row(q, k, v, ks, vs, allowed, s_len, d, scale, scratch, scratch + s_len, out);
  });
}

template void decode_attention_row_cpu<float>(const float*, const float*, const float*, int64_t, int64_t, const bool*,
                                              int64_t, int64_t, float, float*, float*, Isa);
template void decode_attention_row_cpu<c10::BFloat16>(const c10::BFloat16*, const c10::BFloat16*, const c10::BFloat16*,
                                                      int64_t, int64_t, const bool*, int64_t, int64_t, float, float*,
                                                      c10::BFloat16*, Isa);

}  // namespace qlora::ops::detail
