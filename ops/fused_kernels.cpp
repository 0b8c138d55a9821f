// CPU kernels behind ops/fused_ops.h and ops/rope.h: causal-LM cross entropy, RMSNorm, RoPE, SwiGLU and
// counter-based dropout (one-query decode attention: ops/decode_attention.cpp).
//
// Naming (ggml's rule): `<thing>_ref` is the scalar kernel and the specification (plain C++, std::exp, one row or
// element range at a time); `<thing>_avx512` computes the same fp32 operations on 16 lanes with a Cephes-style exp
// (about 2 ulp) and masked loads for the tails, and is tested against the float64 references next to `_ref`
// (tests/ops/test_fused_ops.cpp runs every launcher with Isa::kScalar, i.e. the `_ref` kernels, and Isa::kAvx512).
// `<op>_{forward,backward}_cpu` / `<op>_cpu` launchers check their tensors, pick the dtype and hand one kernel pair
// to for_each_row / for_each_range (ops/kernel_loop.h).
#include "ops/fused_kernels.h"

#include <immintrin.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/kernel_loop.h"
#include "ops/simd_avx512.h"

namespace qlora::ops::detail {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

void check_cpu_contiguous(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), what, " must be a contiguous CPU tensor");
  TORCH_CHECK(fused_dtype_supported(t.scalar_type()), what, ": unsupported dtype ", t.scalar_type());
}

// ---------------------------------------------------------------------------------------------------
// _ref kernels: the specification.
template <class T>
float ce_row_lse_ref(const T* x, int64_t v) {
  float m = -kInf;
  bool nan = false;
  for (int64_t j = 0; j < v; ++j) {
    const float a = static_cast<float>(x[j]);
    nan |= std::isnan(a);
    m = std::max(m, a);
  }
  if (nan) return kNaN;
  float sum = 0.0f;
  for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<float>(x[j]) - m);
  return m + std::log(sum);
}

template <class T>
void ce_row_grad_ref(const T* x, int64_t v, float lse, float g, T* out) {
  for (int64_t j = 0; j < v; ++j) out[j] = static_cast<T>(std::exp(static_cast<float>(x[j]) - lse) * g);
}

// w: the weight already rounded to x's dtype, as fp32.
template <class T>
float rms_norm_row_ref(const T* x, const float* w, int64_t h, float eps, T* out) {
  float ss = 0.0f;
  for (int64_t j = 0; j < h; ++j) ss += static_cast<float>(x[j]) * static_cast<float>(x[j]);
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
  for (int64_t j = 0; j < h; ++j)
    out[j] = static_cast<T>(static_cast<float>(static_cast<T>(static_cast<float>(x[j]) * r)) * w[j]);
  return r;
}

template <class T>
void rms_norm_grad_row_ref(const T* x, const float* w, const T* g, int64_t h, float r, T* out) {
  float dot = 0.0f;
  for (int64_t j = 0; j < h; ++j) dot += static_cast<float>(g[j]) * w[j] * static_cast<float>(x[j]);
  const float c = r * r * r * dot / static_cast<float>(h);
  for (int64_t j = 0; j < h; ++j) {
    out[j] = static_cast<T>(r * static_cast<float>(g[j]) * w[j] - static_cast<float>(x[j]) * c);
  }
}

// One RoPE row: (p, q) = (-sin[:half], sin[half:]) forward, (sin[half:], -sin[:half]) backward.
template <class T>
void rope_row_ref(const T* x, const T* c, const T* s, int64_t half, bool backward, T* out) {
  for (int64_t j = 0; j < half; ++j) {
    const float a = static_cast<float>(x[j]), b = static_cast<float>(x[j + half]);
    const float p = backward ? static_cast<float>(s[j + half]) : -static_cast<float>(s[j]);
    const float q = backward ? -static_cast<float>(s[j]) : static_cast<float>(s[j + half]);
    out[j] = static_cast<T>(a * static_cast<float>(c[j]) + b * p);
    out[j + half] = static_cast<T>(b * static_cast<float>(c[j + half]) + a * q);
  }
}

inline float sigmoid(float v) {
  return 1.0f / (1.0f + std::exp(-v));
}

template <class T>
void swiglu_ref(const T* g, const T* u, int64_t e0, int64_t e1, T* out) {
  for (int64_t e = e0; e < e1; ++e) {
    const float a = static_cast<float>(g[e]);
    out[e] = static_cast<T>(a * sigmoid(a) * static_cast<float>(u[e]));
  }
}

template <class T>
void swiglu_grad_ref(const T* g, const T* u, const T* go, int64_t e0, int64_t e1, T* gg, T* gu) {
  for (int64_t e = e0; e < e1; ++e) {
    const float a = static_cast<float>(g[e]), sg = sigmoid(a), d = static_cast<float>(go[e]);
    gg[e] = static_cast<T>(d * static_cast<float>(u[e]) * sg * (1.0f + a * (1.0f - sg)));
    gu[e] = static_cast<T>(d * a * sg);
  }
}

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

template <class T>
void dropout_ref(const T* x, int64_t e0, int64_t e1, uint64_t seed, uint32_t thr, float scale, T* out) {
  for (int64_t e = e0; e < e1; ++e) {
    const bool keep = dropout_bits(seed, static_cast<uint32_t>(e)) >= thr;
    out[e] = static_cast<T>(keep ? static_cast<float>(x[e]) * scale : 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------------
// _avx512 kernels: 16 fp32 lanes; tails through masked loads and stores.
//
// GCC 12 reports false "(maybe-)uninitialized" warnings inside its own AVX-512 intrinsic headers: many intrinsics
// pass _mm512_undefined_ps() (`__m512 __Y = __Y;`) as the unused merge source, and the warning fires where they
// are inlined. The warnings are off for this AVX-512 section only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

template <class T>
QLORA_AVX512 float ce_row_lse_avx512(const T* x, int64_t v) {
  __m512 vmax = _mm512_set1_ps(-kInf);
  __mmask16 nan = 0;
  for (int64_t j = 0; j < v; j += 16) {
    const __mmask16 m = lanes(v - j);
    const __m512 a = load16(x + j, m);
    nan |= _mm512_mask_cmp_ps_mask(m, a, a, _CMP_UNORD_Q);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, a);
  }
  if (nan) return kNaN;
  const float mx = _mm512_reduce_max_ps(vmax);
  if (mx == -kInf) return -kInf;
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < v; j += 16) {
    const __mmask16 m = lanes(v - j);
    sum = _mm512_mask_add_ps(sum, m, sum, exp16(_mm512_sub_ps(load16(x + j, m), vm)));
  }
  return mx + std::log(_mm512_reduce_add_ps(sum));
}

template <class T>
QLORA_AVX512 void ce_row_grad_avx512(const T* x, int64_t v, float lse, float g, T* out) {
  const __m512 vl = _mm512_set1_ps(lse), vg = _mm512_set1_ps(g);
  for (int64_t j = 0; j < v; j += 16) {
    const __mmask16 m = lanes(v - j);
    store16(out + j, m, _mm512_mul_ps(exp16(_mm512_sub_ps(load16(x + j, m), vl)), vg));
  }
}

template <class T>
QLORA_AVX512 float rms_norm_row_avx512(const T* x, const float* w, int64_t h, float eps, T* out) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t j = 0; j < h; j += 16) {
    const __m512 a = load16(x + j, lanes(h - j));
    ss = _mm512_fmadd_ps(a, a, ss);
  }
  const float r = 1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(h) + eps);
  const __m512 vr = _mm512_set1_ps(r);
  for (int64_t j = 0; j < h; j += 16) {
    const __mmask16 m = lanes(h - j);
    const __m512 n = round_to(static_cast<T*>(nullptr), _mm512_mul_ps(load16(x + j, m), vr));
    store16(out + j, m, _mm512_mul_ps(n, _mm512_maskz_loadu_ps(m, w + j)));
  }
  return r;
}

template <class T>
QLORA_AVX512 void rms_norm_grad_row_avx512(const T* x, const float* w, const T* g, int64_t h, float r, T* out) {
  __m512 dot = _mm512_setzero_ps();
  for (int64_t j = 0; j < h; j += 16) {
    const __mmask16 m = lanes(h - j);
    const __m512 gn = _mm512_mul_ps(load16(g + j, m), _mm512_maskz_loadu_ps(m, w + j));
    dot = _mm512_fmadd_ps(gn, load16(x + j, m), dot);
  }
  const __m512 c = _mm512_set1_ps(r * r * r * _mm512_reduce_add_ps(dot) / static_cast<float>(h));
  const __m512 vr = _mm512_set1_ps(r);
  for (int64_t j = 0; j < h; j += 16) {
    const __mmask16 m = lanes(h - j);
    const __m512 gn = _mm512_mul_ps(load16(g + j, m), _mm512_maskz_loadu_ps(m, w + j));
    store16(out + j, m, _mm512_fnmadd_ps(load16(x + j, m), c, _mm512_mul_ps(vr, gn)));
  }
}

template <class T>
QLORA_AVX512 void rope_row_avx512(const T* x, const T* c, const T* s, int64_t half, bool backward, T* out) {
  const __m512 neg = _mm512_set1_ps(-1.0f);
  for (int64_t j = 0; j < half; j += 16) {
    const __mmask16 m = lanes(half - j);
    const __m512 a = load16(x + j, m), b = load16(x + half + j, m);
    const __m512 s0 = load16(s + j, m), s1 = load16(s + half + j, m);
    const __m512 p = backward ? s1 : _mm512_mul_ps(s0, neg);
    const __m512 q = backward ? _mm512_mul_ps(s0, neg) : s1;
    store16(out + j, m, _mm512_add_ps(_mm512_mul_ps(a, load16(c + j, m)), _mm512_mul_ps(b, p)));
    store16(out + half + j, m, _mm512_add_ps(_mm512_mul_ps(b, load16(c + half + j, m)), _mm512_mul_ps(a, q)));
  }
}

QLORA_AVX512 inline __m512 sigmoid16(__m512 v) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
}

template <class T>
QLORA_AVX512 void swiglu_avx512(const T* g, const T* u, int64_t e0, int64_t e1, T* out) {
  for (int64_t e = e0; e < e1; e += 16) {
    const __mmask16 m = lanes(e1 - e);
    const __m512 a = load16(g + e, m);
    store16(out + e, m, _mm512_mul_ps(_mm512_mul_ps(a, sigmoid16(a)), load16(u + e, m)));
  }
}

template <class T>
QLORA_AVX512 void swiglu_grad_avx512(const T* g, const T* u, const T* go, int64_t e0, int64_t e1, T* gg, T* gu) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t e = e0; e < e1; e += 16) {
    const __mmask16 m = lanes(e1 - e);
    const __m512 a = load16(g + e, m), sg = sigmoid16(a), d = load16(go + e, m);
    const __m512 ds = _mm512_mul_ps(sg, _mm512_add_ps(one, _mm512_mul_ps(a, _mm512_sub_ps(one, sg))));
    store16(gg + e, m, _mm512_mul_ps(_mm512_mul_ps(d, load16(u + e, m)), ds));
    store16(gu + e, m, _mm512_mul_ps(d, _mm512_mul_ps(a, sg)));
  }
}

QLORA_AVX512 inline __m512i lowbias32_16(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(static_cast<int>(0x846ca68bU)));
  return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

template <class T>
QLORA_AVX512 void dropout_avx512(const T* x, int64_t e0, int64_t e1, uint64_t seed, uint32_t thr, float scale, T* out) {
  const __m512i k0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed)));
  const __m512i k1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed >> 32)));
  const __m512i vthr = _mm512_set1_epi32(static_cast<int>(thr));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t e = e0; e < e1; e += 16) {
    const __mmask16 m = lanes(e1 - e);
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(e))), iota);
    const __m512i h = lowbias32_16(_mm512_add_epi32(lowbias32_16(_mm512_xor_si512(idx, k0)), k1));
    const __mmask16 keep = _mm512_cmpge_epu32_mask(h, vthr);
    store16(out + e, m, _mm512_maskz_mul_ps(keep, load16(x + e, m), vs));
  }
}

#pragma GCC diagnostic pop

}  // namespace

bool fused_dtype_supported(torch::ScalarType dt) {
  return dt == torch::kFloat32 || dt == torch::kBFloat16 || dt == torch::kHalf;
}

double cross_entropy_forward_cpu(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index,
                                 torch::Tensor& lse, Isa isa) {
  check_cpu_contiguous(logits, "cross_entropy logits");
  TORCH_CHECK(logits.dim() == 2, "cross_entropy logits must be (N, V), got ", logits.sizes());
  const int64_t n = logits.size(0), v = logits.size(1);
  TORCH_CHECK(labels.scalar_type() == torch::kInt64 && labels.is_contiguous() && labels.numel() == n,
              "cross_entropy labels must be contiguous int64 (", n, "), got ", labels.scalar_type(), " ",
              labels.sizes());
  TORCH_CHECK(lse.scalar_type() == torch::kFloat32 && lse.is_contiguous() && lse.numel() == n,
              "cross_entropy lse must be contiguous fp32 (", n, ")");
  const int64_t* y = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(y[i] == ignore_index || (y[i] >= 0 && y[i] < v), "cross_entropy: label ", y[i], " of row ", i,
                " is outside [0, ", v, ") and not ignore_index ", ignore_index);
  }
  float* out = lse.data_ptr<float>();
  double total = 0.0;
  dispatch_dtype(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = data<T>(logits);
    for_each_row(
        n, kLongRowGrain, isa, [&](int64_t i) { out[i] = ce_row_lse_ref(x + i * v, v); },
        [&](int64_t i) { out[i] = ce_row_lse_avx512(x + i * v, v); });
    for (int64_t i = 0; i < n; ++i) {
      if (y[i] != ignore_index) total += static_cast<double>(out[i]) - static_cast<double>(x[i * v + y[i]]);
    }
  });
  return total;
}

void cross_entropy_backward_cpu(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index,
                                const torch::Tensor& lse, float g, torch::Tensor& grad, Isa isa) {
  check_cpu_contiguous(logits, "cross_entropy logits");
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == logits.sizes() && grad.scalar_type() == logits.scalar_type(),
              "cross_entropy grad must match the logits");
  const int64_t n = logits.size(0), v = logits.size(1);
  const int64_t* y = labels.data_ptr<int64_t>();
  const float* l = lse.data_ptr<float>();
  dispatch_dtype(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = data<T>(logits);
    T* out = data<T>(grad);
    // Row i with the kernel grad_row: zeros for an ignored label, else softmax * g with the label's entry fixed up
    // from its fp32 softmax value (so the - 1 is not applied to a rounded number).
    auto row = [&](int64_t i, auto grad_row) {
      const T* xi = x + i * v;
      T* oi = out + i * v;
      if (y[i] == ignore_index) {
        std::fill(oi, oi + v, static_cast<T>(0.0f));
        return;
      }
      grad_row(xi, v, l[i], g, oi);
      oi[y[i]] = static_cast<T>((std::exp(static_cast<float>(xi[y[i]]) - l[i]) - 1.0f) * g);
    };
    for_each_row(
        n, kLongRowGrain, isa, [&](int64_t i) { row(i, ce_row_grad_ref<T>); },
        [&](int64_t i) { row(i, ce_row_grad_avx512<T>); });
  });
}

void rms_norm_forward_cpu(const torch::Tensor& x, const torch::Tensor& weight, double eps, torch::Tensor& out,
                          torch::Tensor& rstd, Isa isa) {
  check_cpu_contiguous(x, "rms_norm input");
  const int64_t h = x.size(-1), rows = h == 0 ? 0 : x.numel() / h;
  TORCH_CHECK(weight.numel() == h, "rms_norm weight has ", weight.numel(), " elements, input rows ", h);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "rms_norm output must match the input");
  TORCH_CHECK(rstd.scalar_type() == torch::kFloat32 && rstd.is_contiguous() && rstd.numel() == rows,
              "rms_norm rstd must be contiguous fp32 (", rows, ")");
  // The weight as the reference uses it: cast to x's dtype, then read in fp32.
  const torch::Tensor w = weight.to(torch::kCPU).to(x.scalar_type()).to(torch::kFloat32).contiguous();
  const float* wp = w.data_ptr<float>();
  float* rp = rstd.data_ptr<float>();
  const auto e = static_cast<float>(eps);
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = data<T>(x);
    T* op = data<T>(out);
    for_each_row(
        rows, kShortRowGrain, isa, [&](int64_t r) { rp[r] = rms_norm_row_ref(xp + r * h, wp, h, e, op + r * h); },
        [&](int64_t r) { rp[r] = rms_norm_row_avx512(xp + r * h, wp, h, e, op + r * h); });
  });
}

void rms_norm_backward_cpu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& rstd,
                           const torch::Tensor& grad, torch::Tensor& grad_x, Isa isa) {
  check_cpu_contiguous(x, "rms_norm input");
  check_cpu_contiguous(grad, "rms_norm grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad_x.is_contiguous() &&
                  grad_x.sizes() == x.sizes() && grad_x.scalar_type() == x.scalar_type(),
              "rms_norm backward: tensors must share shape and dtype");
  const int64_t h = x.size(-1), rows = h == 0 ? 0 : x.numel() / h;
  const torch::Tensor w = weight.to(torch::kCPU).to(x.scalar_type()).to(torch::kFloat32).contiguous();
  const float* wp = w.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = data<T>(x);
    const T* gp = data<T>(grad);
    T* op = data<T>(grad_x);
    for_each_row(
        rows, kShortRowGrain, isa,
        [&](int64_t r) { rms_norm_grad_row_ref(xp + r * h, wp, gp + r * h, h, rp[r], op + r * h); },
        [&](int64_t r) { rms_norm_grad_row_avx512(xp + r * h, wp, gp + r * h, h, rp[r], op + r * h); });
  });
}

void rope_cpu(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool backward,
              torch::Tensor& out, Isa isa) {
  TORCH_CHECK(x.device().is_cpu() && fused_dtype_supported(x.scalar_type()) && x.dim() == 4,
              "rope: x must be a (B, H, T, d) CPU tensor of fp32/bf16/fp16, got ", x.sizes());
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3), half = d / 2;
  TORCH_CHECK(d % 2 == 0 && (d == 0 || x.stride(3) == 1), "rope: head dim ", d, " must be even with unit stride");
  for (const torch::Tensor* cs : {&cos, &sin}) {
    TORCH_CHECK(cs->is_contiguous() && cs->scalar_type() == x.scalar_type() && cs->dim() == 3 && cs->size(0) == b &&
                    cs->size(1) == t && cs->size(2) == d,
                "rope: cos/sin must be contiguous (", b, ", ", t, ", ", d, ") of x's dtype, got ", cs->sizes());
  }
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "rope: output must be contiguous like x");
  const int64_t sb = x.stride(0), sh = x.stride(1), st = x.stride(2);
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = data<T>(x);
    const T* cp = data<T>(cos);
    const T* sp = data<T>(sin);
    T* op = data<T>(out);
    // Row r = (bi, hi, ti) of the contiguous output, read from x through its strides; cos/sin row (bi, ti).
    auto row = [&](int64_t r, auto rope_row) {
      const int64_t bi = r / (h * t), hi = (r / t) % h, ti = r % t;
      const int64_t cs = (bi * t + ti) * d;
      rope_row(xp + bi * sb + hi * sh + ti * st, cp + cs, sp + cs, half, backward, op + r * d);
    };
    for_each_row(
        b * h * t, kShortRowGrain, isa, [&](int64_t r) { row(r, rope_row_ref<T>); },
        [&](int64_t r) { row(r, rope_row_avx512<T>); });
  });
}

void swiglu_forward_cpu(const torch::Tensor& gate, const torch::Tensor& up, torch::Tensor& out, Isa isa) {
  check_cpu_contiguous(gate, "swiglu gate");
  check_cpu_contiguous(up, "swiglu up");
  TORCH_CHECK(up.sizes() == gate.sizes() && up.scalar_type() == gate.scalar_type() && out.is_contiguous() &&
                  out.sizes() == gate.sizes() && out.scalar_type() == gate.scalar_type(),
              "swiglu: gate, up and output must share shape and dtype");
  dispatch_dtype(gate.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = data<T>(gate);
    const T* u = data<T>(up);
    T* o = data<T>(out);
    for_each_range(
        gate.numel(), isa, [&](int64_t e0, int64_t e1) { swiglu_ref(g, u, e0, e1, o); },
        [&](int64_t e0, int64_t e1) { swiglu_avx512(g, u, e0, e1, o); });
  });
}

void swiglu_backward_cpu(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& grad,
                         torch::Tensor& grad_gate, torch::Tensor& grad_up, Isa isa) {
  check_cpu_contiguous(gate, "swiglu gate");
  check_cpu_contiguous(up, "swiglu up");
  check_cpu_contiguous(grad, "swiglu grad");
  for (const torch::Tensor* t :
       {&up, &grad, static_cast<const torch::Tensor*>(&grad_gate), static_cast<const torch::Tensor*>(&grad_up)}) {
    TORCH_CHECK(t->is_contiguous() && t->sizes() == gate.sizes() && t->scalar_type() == gate.scalar_type(),
                "swiglu backward: tensors must share shape and dtype");
  }
  dispatch_dtype(gate.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = data<T>(gate);
    const T* u = data<T>(up);
    const T* go = data<T>(grad);
    T* gg = data<T>(grad_gate);
    T* gu = data<T>(grad_up);
    for_each_range(
        gate.numel(), isa, [&](int64_t e0, int64_t e1) { swiglu_grad_ref(g, u, go, e0, e1, gg, gu); },
        [&](int64_t e0, int64_t e1) { swiglu_grad_avx512(g, u, go, e0, e1, gg, gu); });
  });
}

uint32_t dropout_bits(uint64_t seed, uint32_t e) {
  return lowbias32(lowbias32(e ^ static_cast<uint32_t>(seed)) + static_cast<uint32_t>(seed >> 32));
}

uint32_t dropout_threshold(double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
  return static_cast<uint32_t>(std::min(std::llround(p * 4294967296.0), static_cast<long long>(UINT32_MAX)));
}

void dropout_cpu(const torch::Tensor& x, uint64_t seed, double p, torch::Tensor& out, Isa isa) {
  check_cpu_contiguous(x, "dropout input");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "dropout output must match the input");
  TORCH_CHECK(x.numel() <= static_cast<int64_t>(UINT32_MAX), "dropout: ", x.numel(),
              " elements exceed the 32-bit counter");
  const uint32_t thr = dropout_threshold(p);
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = data<T>(x);
    T* op = data<T>(out);
    for_each_range(
        x.numel(), isa, [&](int64_t e0, int64_t e1) { dropout_ref(xp, e0, e1, seed, thr, scale, op); },
        [&](int64_t e0, int64_t e1) { dropout_avx512(xp, e0, e1, seed, thr, scale, op); });
  });
}

}  // namespace qlora::ops::detail
