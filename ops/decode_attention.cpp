// One-query attention for decoding (ops/fused_kernels.h decode_attention_cpu, behind ops/attention.h's
// grouped_query_attention): `decode_attention_row_ref`, the specification (plain C++, std::exp), and
// `decode_attention_row_avx512`, the same fp32 operations on 16 lanes (exp16 for std::exp), both tested against
// float64 and against SDPA in tests/ops/test_attention.cpp.
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "ops/fused_kernels.h"
#include "ops/kernel_loop.h"
#include "ops/simd_avx512.h"

namespace qlora::ops::detail {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One (batch, head) row of batch-1 decode attention (decode_attention_cpu): q (d), keys / values row j at k + j * ks,
// v + j * vs, allowed (S) or null (all). scratch: S floats, acc: d floats.
template <class T>
void decode_attention_row_ref(const T* q, const T* k, const T* v, int64_t ks, int64_t vs, const bool* allowed,
                              int64_t s_len, int64_t d, float scale, float* scratch, float* acc, T* out) {
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

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// decode_attention_row_ref on 16 lanes: the scores' dot products over d, the exponentials over 16 keys at a time,
// the P.V sum over d (exp16 for std::exp; a NaN score stays NaN). The accumulators of the P.V sum stay in registers
// for up to 8 chunks of d (128 values) at a time, so V is read once per 128 columns.
template <int NC, class T>
QLORA_AVX512 void decode_pv_slab_avx512(const T* v, int64_t vs, const bool* allowed, int64_t s_len, int64_t cols,
                                        const float* p, float l, T* out) {
  __m512 acc[NC];
  for (int c = 0; c < NC; ++c) acc[c] = _mm512_setzero_ps();
  const __mmask16 last = lanes(cols - 16 * (NC - 1));
  for (int64_t j = 0; j < s_len; ++j) {
    if (allowed != nullptr && !allowed[j]) continue;
    const __m512 pj = _mm512_set1_ps(p[j]);
    const T* vj = v + j * vs;
    for (int c = 0; c < NC; ++c) {
      acc[c] = _mm512_fmadd_ps(pj, load16(vj + 16 * c, c == NC - 1 ? last : static_cast<__mmask16>(0xFFFF)), acc[c]);
    }
  }
  const __m512 vl = _mm512_set1_ps(l);
  for (int c = 0; c < NC; ++c) {
    store16(out + 16 * c, c == NC - 1 ? last : static_cast<__mmask16>(0xFFFF), _mm512_div_ps(acc[c], vl));
  }
}

// decode_pv_slab_avx512<NC> for NC = 1..8, by NC - 1.
template <class T, int... I>
constexpr auto pv_slab_table(std::integer_sequence<int, I...>) {
  return std::array{&decode_pv_slab_avx512<I + 1, T>...};
}
template <class T>
constexpr auto kPvSlabs = pv_slab_table<T>(std::make_integer_sequence<int, 8>{});

template <class T>
QLORA_AVX512 void decode_attention_row_avx512(const T* q, const T* k, const T* v, int64_t ks, int64_t vs,
                                              const bool* allowed, int64_t s_len, int64_t d, float scale,
                                              float* scratch, float* /*acc*/, T* out) {
  float m = -kInf;
  for (int64_t j = 0; j < s_len; ++j) {
    if (allowed != nullptr && !allowed[j]) {
      scratch[j] = -kInf;
      continue;
    }
    const T* kj = k + j * ks;
    __m512 dot = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 mi = lanes(d - i);
      dot = _mm512_fmadd_ps(load16(q + i, mi), load16(kj + i, mi), dot);
    }
    scratch[j] = _mm512_reduce_add_ps(dot) * scale;
    m = std::max(m, scratch[j]);
  }
  const __m512 vm = _mm512_set1_ps(m);
  __m512 vl = _mm512_setzero_ps();
  for (int64_t j = 0; j < s_len; j += 16) {
    const __mmask16 mj = lanes(s_len - j);
    const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(mj, scratch + j), vm);
    const __m512 p = _mm512_mask_mov_ps(exp16(x), _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
    vl = _mm512_mask_add_ps(vl, mj, vl, p);
    _mm512_mask_storeu_ps(scratch + j, mj, round_to(static_cast<T*>(nullptr), p));
  }
  const float l = _mm512_reduce_add_ps(vl);
  for (int64_t c0 = 0; c0 < d; c0 += 128) {
    const int64_t cols = std::min<int64_t>(128, d - c0);
    kPvSlabs<T>[(cols + 15) / 16 - 1](v + c0, vs, allowed, s_len, cols, scratch, l, out + c0);
  }
}

#pragma GCC diagnostic pop

}  // namespace

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
    auto row = [&](int64_t r, auto kernel) {
      thread_local std::vector<float> scratch;
      scratch.resize(static_cast<size_t>(s_len + d));
      const int64_t bi = r / nh, hi = r % nh, kh = hi / group;
      kernel(qp + bi * q.stride(0) + hi * q.stride(1), kp + bi * k.stride(0) + kh * k.stride(1),
             vp + bi * v.stride(0) + kh * v.stride(1), k.stride(2), v.stride(2),
             ap == nullptr ? nullptr : ap + bi * s_len, s_len, d, fscale, scratch.data(), scratch.data() + s_len,
             op + r * d);
    };
    for_each_row(
        b * nh, grain, isa, [&](int64_t r) { row(r, decode_attention_row_ref<T>); },
        [&](int64_t r) { row(r, decode_attention_row_avx512<T>); });
  });
}

}  // namespace qlora::ops::detail
