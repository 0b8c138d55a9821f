// Fused training ops (ops/fused_ops.h, ops/rope.h's apply_rope) against float64 references computed here with plain
// LibTorch ops: values and gradients (the fp64 autograd gradient of the reference), on every CPU path (the `Ref`
// kernels, the AVX2 and AVX-512 ones when the CPU has them, the public autograd op, the LibTorch-ops fallback), odd
// sizes, bf16 and fp32; and the vector kernels against the `Ref` ones directly. Dropout: keep rate and pair
// statistics, exact scale of kept elements, same mask in backward, reproducible from the generator state.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "ops/fused_kernels.h"
#include "ops/fused_ops.h"
#include "ops/rope.h"

namespace qlora::ops {
namespace {

using qlora::Isa;

constexpr int64_t kIgnore = -100;
constexpr double kGradScale = 0.7;  // upstream gradient of the loss
// Tolerances against the fp64 reference, per output dtype (bf16: half an ulp of 2^-8 plus fp32 work).
constexpr double kF32Rtol = 2e-5, kF32Atol = 1e-6;
constexpr double kBf16Rtol = 1e-2, kBf16Atol = 1e-3;
constexpr double kLossRtol = 1e-5;

double rtol(torch::ScalarType dt) {
  return dt == torch::kFloat32 ? kF32Rtol : kBf16Rtol;
}
double atol(torch::ScalarType dt) {
  return dt == torch::kFloat32 ? kF32Atol : kBf16Atol;
}
// The LibTorch-ops fallbacks of RoPE/SwiGLU round every intermediate product to bf16 (the fused kernels round
// once), so with cancelling terms their absolute error is a bf16 ulp of the terms, not of the result.
constexpr double kBf16ComposedAtol = 5e-2;
double composed_atol(torch::ScalarType dt, bool fallback) {
  return fallback && dt != torch::kFloat32 ? kBf16ComposedAtol : atol(dt);
}

// Largest |a - b| - (atol + rtol |b|) over all elements; <= 0 means allclose.
double excess(const torch::Tensor& a, const torch::Tensor& b, double rt, double at) {
  const torch::Tensor ad = a.to(torch::kFloat64), bd = b.to(torch::kFloat64);
  return ((ad - bd).abs() - (at + rt * bd.abs())).max().item<double>();
}

// The vector paths this CPU runs: Isa::kAvx2 and Isa::kAvx512 run those kernels (ops/kernel_loop.h's kernel_path).
std::vector<Isa> simd_paths() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_supports(isa)) out.push_back(isa);
  }
  return out;
}
// Isa::kScalar runs the `Ref` kernels (the specification), then every vector path.
std::vector<Isa> cpu_paths() {
  std::vector<Isa> out = {Isa::kScalar};
  for (Isa isa : simd_paths()) out.push_back(isa);
  return out;
}

class FusedOps : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(1234); }
};

// ---------------------------------------------------------------------------------------------------------------
// Cross entropy.

struct CeCase {
  torch::Tensor x;     // (N, V) in the tested dtype
  torch::Tensor y;     // (N) int64 with ignored rows
  double loss;         // fp64 reference
  torch::Tensor grad;  // fp64 reference gradient of kGradScale * loss
};

CeCase make_ce_case(int64_t n, int64_t v, torch::ScalarType dt, double spread) {
  CeCase c;
  // Wide logits so exp underflows for part of each row (the vector exp's cut-off).
  c.x = (torch::randn({n, v}) * spread).to(dt);
  c.y = torch::randint(0, v, {n}, torch::kInt64);
  for (int64_t i = 0; i < n; i += 3) c.y[i] = kIgnore;
  const torch::Tensor xd = c.x.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor valid = c.y != kIgnore;
  const torch::Tensor safe = torch::where(valid, c.y, torch::zeros_like(c.y));
  const torch::Tensor nll = torch::logsumexp(xd, 1) - xd.gather(1, safe.view({-1, 1})).view({-1});
  const torch::Tensor loss = (nll * valid.to(torch::kFloat64)).sum();
  c.loss = loss.item<double>();
  (loss * kGradScale).backward();
  c.grad = xd.grad().clone();
  return c;
}

TEST_F(FusedOps, CrossEntropyKernelsMatchFloat64) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (auto [n, v, spread] : {std::tuple<int64_t, int64_t, double>{7, 1003, 3.0}, {5, 17, 1.0}, {4, 3, 40.0}}) {
      const CeCase c = make_ce_case(n, v, dt, spread);
      for (Isa isa : cpu_paths()) {
        SCOPED_TRACE(std::string(isa_name(isa)) + " " + c10::toString(dt) + " V=" + std::to_string(v));
        torch::Tensor lse = torch::empty({n}, torch::kFloat32);
        const double loss = detail::cross_entropy_forward_cpu(c.x, c.y, kIgnore, lse, isa);
        EXPECT_NEAR(loss, c.loss, kLossRtol * std::abs(c.loss) + 1e-5);
        torch::Tensor grad = torch::full_like(c.x, 9.0);
        detail::cross_entropy_backward_cpu(c.x, c.y, kIgnore, lse, static_cast<float>(kGradScale), grad, isa);
        EXPECT_EQ(grad.scalar_type(), dt);
        EXPECT_LE(excess(grad, c.grad, rtol(dt), atol(dt)), 0.0);
        // Ignored rows: exactly zero.
        EXPECT_EQ(grad.index({c.y == kIgnore}).abs().max().item<double>(), 0.0);
      }
    }
  }
}

TEST_F(FusedOps, CrossEntropyOpAndFallbackGradients) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    const CeCase c = make_ce_case(9, 517, dt, 2.0);
    for (bool fallback : {false, true}) {
      SCOPED_TRACE(std::string(fallback ? "ops" : "fused") + " " + c10::toString(dt));
      const torch::Tensor x = c.x.clone().requires_grad_(true);
      const torch::Tensor loss =
          fallback ? detail::cross_entropy_sum_ops(x, c.y, kIgnore) : cross_entropy_sum(x, c.y, kIgnore);
      EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
      EXPECT_EQ(loss.dim(), 0);
      EXPECT_NEAR(loss.item<double>(), c.loss, kLossRtol * std::abs(c.loss));
      (loss * kGradScale).backward();
      EXPECT_EQ(x.grad().scalar_type(), dt);
      EXPECT_LE(excess(x.grad(), c.grad, rtol(dt), atol(dt)), 0.0);
    }
  }
}

TEST_F(FusedOps, CrossEntropyAllIgnoredAndBadLabels) {
  const torch::Tensor x = torch::randn({3, 11}).requires_grad_(true);
  const torch::Tensor y = torch::full({3}, kIgnore, torch::kInt64);
  const torch::Tensor loss = cross_entropy_sum(x, y, kIgnore);
  EXPECT_EQ(loss.item<double>(), 0.0);
  loss.backward();
  EXPECT_EQ(x.grad().abs().max().item<double>(), 0.0);
  const torch::Tensor bad = torch::tensor({0, 11, 2}, torch::kInt64);
  EXPECT_THROW(cross_entropy_sum(x, bad, kIgnore), c10::Error);
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm.

TEST_F(FusedOps, RmsNormMatchesFloat64OnEveryPath) {
  const double eps = 1e-5;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (int64_t h : {101, 768}) {
      for (bool fp32_weight : {false, true}) {
        // Rows of different magnitude; the weight around 1 like a trained norm.
        const torch::Tensor x = (torch::randn({3, 4, h}) * torch::exp(torch::randn({3, 4, 1}))).to(dt);
        const torch::Tensor w = (1.0 + 0.2 * torch::randn({h})).to(fp32_weight ? torch::kFloat32 : dt);
        const torch::Tensor g = torch::randn({3, 4, h}).to(dt);
        const torch::Tensor xd = x.to(torch::kFloat64).requires_grad_(true);
        const torch::Tensor wd = w.to(dt).to(torch::kFloat64);
        const torch::Tensor ref = xd * torch::rsqrt(xd.pow(2).mean(-1, true) + eps) * wd;
        (ref * g.to(torch::kFloat64)).sum().backward();
        const std::string what =
            std::string(c10::toString(dt)) + " H=" + std::to_string(h) + (fp32_weight ? " fp32 weight" : "");
        for (Isa isa : cpu_paths()) {
          SCOPED_TRACE(std::string(isa_name(isa)) + " " + what);
          torch::Tensor out = torch::full_like(x, 9.0);
          torch::Tensor rstd = torch::empty({12}, torch::kFloat32);
          detail::rms_norm_forward_cpu(x, w, eps, out, rstd, isa);
          EXPECT_LE(excess(out, ref.detach(), rtol(dt), atol(dt)), 0.0);
          torch::Tensor gx = torch::full_like(x, 9.0);
          detail::rms_norm_backward_cpu(x, w, rstd, g, gx, isa);
          EXPECT_LE(excess(gx, xd.grad(), rtol(dt), atol(dt)), 0.0);
        }
        for (bool fallback : {false, true}) {
          SCOPED_TRACE(std::string(fallback ? "ops " : "fused ") + what);
          const torch::Tensor xr = x.clone().requires_grad_(true);
          const torch::Tensor out = fallback ? detail::rms_norm_ops(xr, w, eps) : rms_norm(xr, w, eps);
          EXPECT_EQ(out.scalar_type(), dt);
          EXPECT_LE(excess(out, ref.detach(), rtol(dt), atol(dt)), 0.0);
          out.backward(g);
          EXPECT_LE(excess(xr.grad(), xd.grad(), rtol(dt), atol(dt)), 0.0);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE and SwiGLU.

TEST_F(FusedOps, RopeMatchesFloat64OnEveryPath) {
  const int64_t b = 2, h = 3, t = 5;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (int64_t d : {64, 38}) {  // half = 19: a partial vector
      // x as the model makes it: (B, T, H, d) transposed to (B, H, T, d), not contiguous. cos/sin not of the
      // cat(f, f) form, so the transpose in backward is checked in general.
      const torch::Tensor x = torch::randn({b, t, h, d}).to(dt).transpose(1, 2);
      const torch::Tensor cos = torch::randn({b, t, d}).to(dt), sin = torch::randn({b, t, d}).to(dt);
      const torch::Tensor g = torch::randn({b, h, t, d}).to(dt);
      const torch::Tensor xd = x.to(torch::kFloat64).requires_grad_(true);
      const torch::Tensor rot = torch::cat({-xd.narrow(-1, d / 2, d / 2), xd.narrow(-1, 0, d / 2)}, -1);
      const torch::Tensor ref = xd * cos.to(torch::kFloat64).unsqueeze(1) + rot * sin.to(torch::kFloat64).unsqueeze(1);
      (ref * g.to(torch::kFloat64)).sum().backward();
      const std::string what = std::string(c10::toString(dt)) + " d=" + std::to_string(d);
      for (Isa isa : cpu_paths()) {
        SCOPED_TRACE(std::string(isa_name(isa)) + " " + what);
        torch::Tensor out = torch::full({b, h, t, d}, 9.0, torch::TensorOptions().dtype(dt));
        detail::rope_cpu(x, cos, sin, /*backward=*/false, out, isa);
        EXPECT_LE(excess(out, ref.detach(), rtol(dt), atol(dt)), 0.0);
        torch::Tensor gx = torch::full({b, h, t, d}, 9.0, torch::TensorOptions().dtype(dt));
        detail::rope_cpu(g, cos, sin, /*backward=*/true, gx, isa);
        EXPECT_LE(excess(gx, xd.grad(), rtol(dt), atol(dt)), 0.0);
      }
      for (bool fallback : {false, true}) {
        SCOPED_TRACE(std::string(fallback ? "ops " : "fused ") + what);
        const torch::Tensor xr = x.detach().requires_grad_(true);
        const torch::Tensor out = fallback ? detail::apply_rope_ops(xr, cos, sin) : apply_rope(xr, cos, sin);
        EXPECT_LE(excess(out, ref.detach(), rtol(dt), composed_atol(dt, fallback)), 0.0);
        out.backward(g);
        EXPECT_LE(excess(xr.grad(), xd.grad(), rtol(dt), composed_atol(dt, fallback)), 0.0);
      }
    }
  }
}

TEST_F(FusedOps, SwigluMatchesFloat64OnEveryPath) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    // Gate values from deep negative to large positive (both sigmoid tails), odd element count.
    const torch::Tensor gate = (torch::randn({3, 7, 45}) * 6.0).to(dt);
    const torch::Tensor up = torch::randn({3, 7, 45}).to(dt);
    const torch::Tensor g = torch::randn({3, 7, 45}).to(dt);
    const torch::Tensor gd = gate.to(torch::kFloat64).requires_grad_(true);
    const torch::Tensor ud = up.to(torch::kFloat64).requires_grad_(true);
    const torch::Tensor ref = gd * torch::sigmoid(gd) * ud;
    (ref * g.to(torch::kFloat64)).sum().backward();
    for (Isa isa : cpu_paths()) {
      SCOPED_TRACE(std::string(isa_name(isa)) + " " + c10::toString(dt));
      torch::Tensor out = torch::full_like(gate, 9.0), gg = torch::full_like(gate, 9.0),
                    gu = torch::full_like(gate, 9.0);
      detail::swiglu_forward_cpu(gate, up, out, isa);
      EXPECT_LE(excess(out, ref.detach(), rtol(dt), atol(dt)), 0.0);
      detail::swiglu_backward_cpu(gate, up, g, gg, gu, isa);
      EXPECT_LE(excess(gg, gd.grad(), rtol(dt), atol(dt)), 0.0);
      EXPECT_LE(excess(gu, ud.grad(), rtol(dt), atol(dt)), 0.0);
    }
    for (bool fallback : {false, true}) {
      SCOPED_TRACE(std::string(fallback ? "ops " : "fused ") + c10::toString(dt));
      const torch::Tensor a = gate.clone().requires_grad_(true), u = up.clone().requires_grad_(true);
      const torch::Tensor out = fallback ? detail::swiglu_ops(a, u) : swiglu(a, u);
      EXPECT_LE(excess(out, ref.detach(), rtol(dt), composed_atol(dt, fallback)), 0.0);
      out.backward(g);
      EXPECT_LE(excess(a.grad(), gd.grad(), rtol(dt), composed_atol(dt, fallback)), 0.0);
      EXPECT_LE(excess(u.grad(), ud.grad(), rtol(dt), composed_atol(dt, fallback)), 0.0);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The vector kernels against the `Ref` ones on the same awkward sizes. Dropout does the same single fp32 multiply
// on both paths: equal bits. The others differ by the vector exp (about 2 ulp) and by fused multiply-adds (sums, and
// the mul + add pairs the compiler contracts on the FMA-enabled path): within a few fp32 ulp, i.e. at most one ulp of
// a bf16 output.
constexpr double kSimdF32Rtol = 1e-5, kSimdF32Atol = 1e-6;    // atol: a few ulp of O(1) terms that cancel
constexpr double kSimdBf16Rtol = 8e-3, kSimdBf16Atol = 1e-6;  // rtol 2^-7: one bf16 ulp

std::vector<std::pair<torch::ScalarType, Isa>> dtypes_by_paths() {
  std::vector<std::pair<torch::ScalarType, Isa>> out;
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
    for (Isa isa : simd_paths()) out.emplace_back(dt, isa);
  }
  return out;
}

TEST_F(FusedOps, SimdKernelsMatchRef) {
  if (simd_paths().empty()) GTEST_SKIP() << "neither AVX2 nor AVX-512 on this CPU";
  for (auto [dt, path] : dtypes_by_paths()) {
    SCOPED_TRACE(std::string(c10::toString(dt)) + " " + isa_name(path));
    const double rt = dt == torch::kFloat32 ? kSimdF32Rtol : kSimdBf16Rtol;
    const double at = dt == torch::kFloat32 ? kSimdF32Atol : kSimdBf16Atol;
    auto both = [path = path](auto&& run) { return std::pair{run(Isa::kScalar), run(path)}; };
    {  // cross entropy: lse and gradient
      const CeCase c = make_ce_case(6, 1003, dt, 3.0);
      const auto [ref, simd] = both([&](Isa isa) {
        torch::Tensor lse = torch::empty({6}, torch::kFloat32), grad = torch::empty_like(c.x);
        detail::cross_entropy_forward_cpu(c.x, c.y, kIgnore, lse, isa);
        detail::cross_entropy_backward_cpu(c.x, c.y, kIgnore, lse, static_cast<float>(kGradScale), grad, isa);
        return std::pair{lse, grad};
      });
      EXPECT_LE(excess(simd.first, ref.first, kSimdF32Rtol, kSimdF32Atol), 0.0) << "lse";
      EXPECT_LE(excess(simd.second, ref.second, rt, at), 0.0) << "cross_entropy grad";
    }
    {  // RMSNorm forward and backward
      const torch::Tensor x = torch::randn({5, 101}).to(dt), w = (1.0 + 0.2 * torch::randn({101})).to(dt);
      const torch::Tensor g = torch::randn({5, 101}).to(dt);
      const auto [ref, simd] = both([&](Isa isa) {
        torch::Tensor out = torch::empty_like(x), rstd = torch::empty({5}, torch::kFloat32), gx = torch::empty_like(x);
        detail::rms_norm_forward_cpu(x, w, 1e-5, out, rstd, isa);
        detail::rms_norm_backward_cpu(x, w, rstd, g, gx, isa);
        return std::pair{out, gx};
      });
      EXPECT_LE(excess(simd.first, ref.first, rt, at), 0.0) << "rms_norm";
      EXPECT_LE(excess(simd.second, ref.second, rt, at), 0.0) << "rms_norm grad";
    }
    {  // SwiGLU forward and backward
      const torch::Tensor gate = (torch::randn({1001}) * 6.0).to(dt), up = torch::randn({1001}).to(dt);
      const torch::Tensor g = torch::randn({1001}).to(dt);
      // The outputs are the front of larger buffers: a tail store may not write past its last element.
      constexpr float kSentinel = 7.0f;
      const auto [ref, simd] = both([&](Isa isa) {
        std::vector<torch::Tensor> bufs;
        for (int i = 0; i < 3; ++i) bufs.push_back(torch::full({1001 + 40}, kSentinel, gate.options()));
        torch::Tensor out = bufs[0].narrow(0, 0, 1001), gg = bufs[1].narrow(0, 0, 1001);
        torch::Tensor gu = bufs[2].narrow(0, 0, 1001);
        detail::swiglu_forward_cpu(gate, up, out, isa);
        detail::swiglu_backward_cpu(gate, up, g, gg, gu, isa);
        return bufs;
      });
      for (size_t i = 0; i < 3; ++i) {
        EXPECT_LE(excess(simd[i].narrow(0, 0, 1001), ref[i].narrow(0, 0, 1001), rt, at), 0.0) << "swiglu output " << i;
        EXPECT_TRUE(simd[i].narrow(0, 1001, 40).eq(kSentinel).all().item<bool>()) << "swiglu output " << i;
      }
    }
    {  // RoPE, both directions
      const torch::Tensor x = torch::randn({2, 5, 3, 38}).to(dt).transpose(1, 2);
      const torch::Tensor cos = torch::randn({2, 5, 38}).to(dt), sin = torch::randn({2, 5, 38}).to(dt);
      for (bool backward : {false, true}) {
        const auto [ref, simd] = both([&](Isa isa) {
          torch::Tensor out = torch::empty({2, 3, 5, 38}, torch::TensorOptions().dtype(dt));
          detail::rope_cpu(x, cos, sin, backward, out, isa);
          return out;
        });
        EXPECT_LE(excess(simd, ref, rt, at), 0.0) << "rope backward=" << backward;
      }
    }
    {  // dropout: equal bits
      const torch::Tensor d = torch::randn({1001}).to(dt);
      const auto [ref, simd] = both([&](Isa isa) {
        torch::Tensor out = torch::empty_like(d);
        detail::dropout_cpu(d, /*seed=*/42, /*p=*/0.3, out, isa);
        return out;
      });
      EXPECT_TRUE(torch::equal(simd, ref)) << "dropout";
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Dropout.

constexpr double kSigmas = 5.0;  // binomial tolerance of the statistical checks

TEST_F(FusedOps, DropoutKeepRateAndPairsAreBinomial) {
  const int64_t n = (1 << 20) + 7;
  for (double p : {0.05, 0.5}) {
    const torch::Tensor x = torch::rand({n}) + 0.5;  // never zero
    const torch::Tensor kept = ops::dropout(x, p, /*train=*/true) != 0;
    const double q = 1.0 - p;
    const double rate = kept.to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(rate, q, kSigmas * std::sqrt(p * q / n)) << "p=" << p;
    // Neighbours are independent: both kept with probability q^2.
    const double pair = (kept.narrow(0, 0, n - 1) & kept.narrow(0, 1, n - 1)).to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(pair, q * q, kSigmas * std::sqrt(q * q * (1 - q * q) / n)) << "p=" << p;
    // The next call draws a new seed: an independent mask.
    const torch::Tensor kept2 = ops::dropout(x, p, /*train=*/true) != 0;
    const double both = (kept & kept2).to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(both, q * q, kSigmas * std::sqrt(q * q * (1 - q * q) / n)) << "p=" << p;
  }
}

TEST_F(FusedOps, DropoutScalesKeptElementsExactlyAndPathsAgree) {
  const double p = 0.05;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor x = (torch::randn({3, 1001}) + 4.0).to(dt);  // never zero
    const auto scale = static_cast<float>(1.0 / (1.0 - p));
    const torch::Tensor scaled = (x.to(torch::kFloat32) * scale).to(dt);
    torch::Tensor ref;
    for (Isa isa : cpu_paths()) {
      torch::Tensor out = torch::full_like(x, 9.0);
      detail::dropout_cpu(x, /*seed=*/0x1234567890abcdefULL, p, out, isa);
      const torch::Tensor kept = out != 0;
      EXPECT_TRUE(torch::equal(out, torch::where(kept, scaled, torch::zeros_like(x))));
      // The mask is the documented counter hash of each flat index.
      for (int64_t e : {0, 1, 15, 16, 17, 1000, 3002}) {
        const bool want =
            detail::dropout_bits(0x1234567890abcdefULL, static_cast<uint32_t>(e)) >= detail::dropout_threshold(p);
        EXPECT_EQ(kept.view({-1})[e].item<bool>(), want) << "e=" << e;
      }
      if (!ref.defined()) ref = out;
      EXPECT_TRUE(torch::equal(out, ref)) << isa_name(isa);
    }
  }
}

TEST_F(FusedOps, DropoutBackwardUsesTheForwardMask) {
  const double p = 0.3;
  const torch::Tensor x = (torch::rand({4, 333}) + 0.5).to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor y = ops::dropout(x, p, /*train=*/true);
  const torch::Tensor g = (torch::randn({4, 333}) + 3.0).to(torch::kBFloat16);
  y.backward(g);
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  const torch::Tensor want =
      torch::where(y != 0, (g.to(torch::kFloat32) * scale).to(torch::kBFloat16), torch::zeros_like(g));
  EXPECT_TRUE(torch::equal(x.grad(), want));
  EXPECT_GT((y == 0).sum().item<int64_t>(), 0);
}

TEST_F(FusedOps, DropoutIsReproducibleFromTheGeneratorState) {
  const torch::Tensor x = torch::rand({50001}) + 0.5;
  torch::manual_seed(7);
  const torch::Tensor a = ops::dropout(x, 0.1, /*train=*/true);
  torch::manual_seed(7);
  const torch::Tensor b = ops::dropout(x, 0.1, /*train=*/true);
  EXPECT_TRUE(torch::equal(a, b));
  at::Generator gen = at::globalContext().defaultGenerator(torch::kCPU);
  const torch::Tensor state = gen.get_state();
  const torch::Tensor c = ops::dropout(x, 0.1, /*train=*/true);
  EXPECT_FALSE(torch::equal(c, a));  // the generator moved on
  gen.set_state(state);
  EXPECT_TRUE(torch::equal(ops::dropout(x, 0.1, /*train=*/true), c));
  // The mask does not depend on how the elements are split over threads.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  gen.set_state(state);
  const torch::Tensor one_thread = ops::dropout(x, 0.1, /*train=*/true);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one_thread, c));
  // Off in eval or at p = 0: the input itself.
  EXPECT_TRUE(ops::dropout(x, 0.1, /*train=*/false).is_same(x));
  EXPECT_TRUE(ops::dropout(x, 0.0, /*train=*/true).is_same(x));
}

}  // namespace
}  // namespace qlora::ops
