// CPU kernels behind ops/fused_ops.h and ops/rope.h: causal-LM cross entropy, RMSNorm, RoPE, SwiGLU and
// counter-based dropout (one-query decode attention: ops/decode_attention.cpp).
//
// Three kernel structs with the same static kernels (ggml's rule, one struct per path): `RefKernels`, the scalar
// specification (plain C++, std::exp, one row or element range at a time), and `avx2::FusedKernels` /
// `avx512::FusedKernels`, the same fp32 operations on 8 / 16 lanes with a Cephes-style exp (about 2 ulp). The vector
// kernels are written once (ops/fused_kernels_simd.h, over ops/simd_math.h) and compiled twice below
// (ops/simd_each_isa.h), in each ISA's namespace with its target attributes: the vector layer (ops/simd_avx2.h,
// ops/simd_avx512.h) gives both ISAs the same names. tests/ops/test_fused_ops.cpp runs every launcher on every path
// against float64 references, and the vector paths against `RefKernels`. `<op>_{forward,backward}_cpu` / `<op>_cpu`
// launchers check their tensors, pick the dtype and hand the kernel set to for_each_row / for_each_range
// (ops/kernel_loop.h), which picks the path.
#include "ops/fused_kernels.h"

#include <immintrin.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/kernel_loop.h"
#include "ops/simd_avx2.h"
#include "ops/simd_avx512.h"

namespace qlora::ops::detail {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

void check_cpu_contiguous(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), what, " must be a contiguous CPU tensor");
  TORCH_CHECK(fused_dtype_supported(t.scalar_type()), what, ": unsupported dtype ", t.scalar_type());
}

inline float sigmoid(float v) {
  return 1.0f / (1.0f + std::exp(-v));
}

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The specification: scalar kernels, one row or element range at a time.
struct RefKernels {
  template <class T>
  static float ce_row_lse(const T* x, int64_t v) {
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
  static void ce_row_grad(const T* x, int64_t v, float lse, float g, T* out) {
    for (int64_t j = 0; j < v; ++j) out[j] = static_cast<T>(std::exp(static_cast<float>(x[j]) - lse) * g);
  }

  // w: the weight already rounded to x's dtype, as fp32.
  template <class T>
  static float rms_norm_row(const T* x, const float* w, int64_t h, float eps, T* out) {
    float ss = 0.0f;
    for (int64_t j = 0; j < h; ++j) ss += static_cast<float>(x[j]) * static_cast<float>(x[j]);
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
    for (int64_t j = 0; j < h; ++j)
      out[j] = static_cast<T>(static_cast<float>(static_cast<T>(static_cast<float>(x[j]) * r)) * w[j]);
    return r;
  }

  template <class T>
  static void rms_norm_grad_row(const T* x, const float* w, const T* g, int64_t h, float r, T* out) {
    float dot = 0.0f;
    for (int64_t j = 0; j < h; ++j) dot += static_cast<float>(g[j]) * w[j] * static_cast<float>(x[j]);
    const float c = r * r * r * dot / static_cast<float>(h);
    for (int64_t j = 0; j < h; ++j) {
      out[j] = static_cast<T>(r * static_cast<float>(g[j]) * w[j] - static_cast<float>(x[j]) * c);
    }
  }

  // One RoPE row: (p, q) = (-sin[:half], sin[half:]) forward, (sin[half:], -sin[:half]) backward.
  template <class T>
  static void rope_row(const T* x, const T* c, const T* s, int64_t half, bool backward, T* out) {
    for (int64_t j = 0; j < half; ++j) {
      const float a = static_cast<float>(x[j]), b = static_cast<float>(x[j + half]);
      const float p = backward ? static_cast<float>(s[j + half]) : -static_cast<float>(s[j]);
      const float q = backward ? -static_cast<float>(s[j]) : static_cast<float>(s[j + half]);
      out[j] = static_cast<T>(a * static_cast<float>(c[j]) + b * p);
      out[j + half] = static_cast<T>(b * static_cast<float>(c[j + half]) + a * q);
    }
  }

  template <class T>
  static void swiglu(const T* g, const T* u, int64_t e0, int64_t e1, T* out) {
    for (int64_t e = e0; e < e1; ++e) {
      const float a = static_cast<float>(g[e]);
      out[e] = static_cast<T>(a * sigmoid(a) * static_cast<float>(u[e]));
    }
  }

  template <class T>
  static void swiglu_grad(const T* g, const T* u, const T* go, int64_t e0, int64_t e1, T* gg, T* gu) {
    for (int64_t e = e0; e < e1; ++e) {
      const float a = static_cast<float>(g[e]), sg = sigmoid(a), d = static_cast<float>(go[e]);
      gg[e] = static_cast<T>(d * static_cast<float>(u[e]) * sg * (1.0f + a * (1.0f - sg)));
      gu[e] = static_cast<T>(d * a * sg);
    }
  }

  template <class T>
  static void dropout(const T* x, int64_t e0, int64_t e1, uint64_t seed, uint32_t thr, float scale, T* out) {
    for (int64_t e = e0; e < e1; ++e) {
      const bool keep = dropout_bits(seed, static_cast<uint32_t>(e)) >= thr;
      out[e] = static_cast<T>(keep ? static_cast<float>(x[e]) * scale : 0.0f);
    }
  }
};

}  // namespace

// The vector kernels, compiled once per ISA (see the head comment).
#define QLORA_SIMD_KERNELS "ops/fused_kernels_simd.h"
#include "ops/simd_each_isa.h"

using Fused = KernelSet<RefKernels, avx2::FusedKernels, avx512::FusedKernels>;

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
    for_each_row<Fused>(n, kLongRowGrain, isa, [&](int64_t i, auto k) { out[i] = k.ce_row_lse(x + i * v, v); });
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
    // Zeros for an ignored label, else softmax * g with the label's entry fixed up from its fp32 softmax value (so
    // the - 1 is not applied to a rounded number).
    for_each_row<Fused>(n, kLongRowGrain, isa, [&](int64_t i, auto k) {
      const T* xi = x + i * v;
      T* oi = out + i * v;
      if (y[i] == ignore_index) {
        std::fill(oi, oi + v, static_cast<T>(0.0f));
        return;
      }
      k.ce_row_grad(xi, v, l[i], g, oi);
      oi[y[i]] = static_cast<T>((std::exp(static_cast<float>(xi[y[i]]) - l[i]) - 1.0f) * g);
    });
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
    for_each_row<Fused>(rows, kShortRowGrain, isa,
                        [&](int64_t r, auto k) { rp[r] = k.rms_norm_row(xp + r * h, wp, h, e, op + r * h); });
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
    for_each_row<Fused>(rows, kShortRowGrain, isa, [&](int64_t r, auto k) {
      k.rms_norm_grad_row(xp + r * h, wp, gp + r * h, h, rp[r], op + r * h);
    });
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
    for_each_row<Fused>(b * h * t, kShortRowGrain, isa, [&](int64_t r, auto k) {
      const int64_t bi = r / (h * t), hi = (r / t) % h, ti = r % t;
      const int64_t cs = (bi * t + ti) * d;
      k.rope_row(xp + bi * sb + hi * sh + ti * st, cp + cs, sp + cs, half, backward, op + r * d);
    });
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
    for_each_range<Fused>(gate.numel(), isa, [&](int64_t e0, int64_t e1, auto k) { k.swiglu(g, u, e0, e1, o); });
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
    for_each_range<Fused>(gate.numel(), isa,
                          [&](int64_t e0, int64_t e1, auto k) { k.swiglu_grad(g, u, go, e0, e1, gg, gu); });
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
    for_each_range<Fused>(x.numel(), isa,
                          [&](int64_t e0, int64_t e1, auto k) { k.dropout(xp, e0, e1, seed, thr, scale, op); });
  });
}

template <class T>
float rms_norm_row_cpu(const T* x, const float* weight, int64_t h, float eps, T* out, Isa isa) {
  float rstd = 0.0f;
  with_kernels<Fused>(isa, [&](auto k) { rstd = k.rms_norm_row(x, weight, h, eps, out); });
  return rstd;
}

template <class T>
void rope_row_cpu(const T* x, const T* cos, const T* sin, int64_t d, T* out, Isa isa) {
  with_kernels<Fused>(isa, [&](auto k) { k.rope_row(x, cos, sin, d / 2, /*backward=*/false, out); });
}

template <class T>
void swiglu_range_cpu(const T* gate, const T* up, int64_t e0, int64_t e1, T* out, Isa isa) {
  with_kernels<Fused>(isa, [&](auto k) { k.swiglu(gate, up, e0, e1, out); });
}

#define QLORA_ROW_KERNELS(T)                                                           \
  template float rms_norm_row_cpu<T>(const T*, const float*, int64_t, float, T*, Isa); \
  template void rope_row_cpu<T>(const T*, const T*, const T*, int64_t, T*, Isa);       \
  template void swiglu_range_cpu<T>(const T*, const T*, int64_t, int64_t, T*, Isa);
QLORA_ROW_KERNELS(float)
QLORA_ROW_KERNELS(c10::BFloat16)
#undef QLORA_ROW_KERNELS

}  // namespace qlora::ops::detail
