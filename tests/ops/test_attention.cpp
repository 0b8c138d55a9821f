// grouped_query_attention (ops/attention.h: LibTorch's SDPA with enable_gqa) against a float64 reference written
// here head by head (query head h reads kv head h / (nH / nKV), scores scaled by d^-0.5, masked to -inf,
// softmax, times v): the output and the gradients of q, k and v (k/v gradients summed over the query heads of
// their group), causal without a mask, with padding and packing masks from build_attention_mask, with a KV-cache
// shaped mask (T new queries over past + T keys), for GQA, MQA and MHA head counts, in fp32 and bf16. The one-query
// decode kernel (ops/fused_kernels.h decode_attention_cpu, both paths) against the same reference, on strided cache
// views with holes in the mask, and grouped_query_attention's decode route against SDPA itself. The blocked bf16
// kernel (ops/flash_attention.h: every row path, several blocks, causal / padding / packing / cache-shaped masks)
// against the same reference and against SDPA, and the mask shapes it declines.
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_isa.h"
#include "ops/attention.h"
#include "ops/flash_attention.h"
#include "ops/fused_kernels.h"

namespace qlora::ops {
namespace {

// Max |ours - reference| over max |reference|, per tensor. fp32: the kernel's fp32 accumulation (measured <= 5e-7
// on these shapes). bf16: the inputs are bf16 values (the reference uses them exactly); the error is the kernel's
// bf16 roundings of the probabilities and the score gradients and of each output (measured <= 9e-3, about 2 ulp
// of 2^-8 at the tensor's largest value).
constexpr double kFp32RelTol = 1e-5;
constexpr double kBf16RelTol = 3e-2;

class Attention : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(1234); }
};

struct Result {
  torch::Tensor out, dq, dk, dv;
};

// keep: (B, 1, T, S) bool. The loss is sum(out * g).
Result reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& keep,
                 const torch::Tensor& g) {
  const torch::Tensor qd = q.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor kd = k.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor vd = v.to(torch::kFloat64).requires_grad_(true);
  const int64_t heads = q.size(1), group = heads / k.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  std::vector<torch::Tensor> outs;
  for (int64_t h = 0; h < heads; ++h) {
    const torch::Tensor kh = kd.select(1, h / group), vh = vd.select(1, h / group);  // (B, S, d)
    torch::Tensor s = torch::matmul(qd.select(1, h), kh.transpose(1, 2)) * scale;    // (B, T, S)
    s = s.masked_fill(keep.select(1, 0).logical_not(), -std::numeric_limits<double>::infinity());
    outs.push_back(torch::matmul(torch::softmax(s, -1), vh));  // (B, T, d)
  }
  const torch::Tensor out = torch::stack(outs, 1);
  (out * g.to(torch::kFloat64)).sum().backward();
  return {out.detach(), qd.grad(), kd.grad(), vd.grad()};
}

Result ours(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask,
            const torch::Tensor& g) {
  const torch::Tensor qr = q.clone().requires_grad_(true);
  const torch::Tensor kr = k.clone().requires_grad_(true);
  const torch::Tensor vr = v.clone().requires_grad_(true);
  const torch::Tensor out = grouped_query_attention(qr, kr, vr, mask);
  (out * g).sum().backward();
  return {out.detach(), qr.grad(), kr.grad(), vr.grad()};
}

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  return (a.to(torch::kFloat64) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
}

// Runs one case in fp32 and bf16. mask undefined = causal over S == T keys.
void check_case(int64_t b, int64_t heads, int64_t kv_heads, int64_t t, int64_t s, const torch::Tensor& mask,
                const std::string& what) {
  const int64_t d = 16;
  const torch::Tensor keep = mask.defined() ? mask : torch::ones({t, s}, torch::kBool).tril().expand({b, 1, t, s});
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(what + " " + std::string(c10::toString(dt)));
    const torch::Tensor q = torch::randn({b, heads, t, d}).to(dt);
    const torch::Tensor k = torch::randn({b, kv_heads, s, d}).to(dt);
    const torch::Tensor v = torch::randn({b, kv_heads, s, d}).to(dt);
    const torch::Tensor g = torch::randn({b, heads, t, d}).to(dt);
    const Result ref = reference(q, k, v, keep, g);
    const Result got = ours(q, k, v, mask, g);
    ASSERT_EQ(got.out.sizes(), q.sizes());
    EXPECT_EQ(got.out.scalar_type(), dt);
    ASSERT_EQ(got.dk.sizes(), k.sizes());  // gradients at the kv heads, not per query head
    ASSERT_EQ(got.dv.sizes(), v.sizes());
    const double tol = dt == torch::kFloat32 ? kFp32RelTol : kBf16RelTol;
    EXPECT_LT(rel_err(got.out, ref.out), tol);
    EXPECT_LT(rel_err(got.dq, ref.dq), tol);
    EXPECT_LT(rel_err(got.dk, ref.dk), tol);
    EXPECT_LT(rel_err(got.dv, ref.dv), tol);
  }
}

TEST_F(Attention, CausalWithoutMaskMatchesFloat64ForGqaMqaMha) {
  for (int64_t kv : {2, 1, 6}) check_case(2, 6, kv, 37, 37, {}, "kv heads " + std::to_string(kv));
}

TEST_F(Attention, PaddingAndPackingMasksMatchFloat64) {
  const int64_t b = 2, t = 29;
  torch::Tensor am = torch::ones({b, t}, torch::kInt64);
  am.index_put_({0, torch::indexing::Slice(0, 5)}, 0);   // left padding
  am.index_put_({1, torch::indexing::Slice(24, t)}, 0);  // right padding
  const torch::Tensor padded = build_attention_mask(b, t, 0, am, {}, torch::kCPU);
  check_case(b, 6, 2, t, t, padded, "padding");
  torch::Tensor seg = torch::ones({b, t}, torch::kInt64);
  seg.index_put_({0, torch::indexing::Slice(11, t)}, 2);
  seg.index_put_({1, torch::indexing::Slice(7, 20)}, 2);
  seg.index_put_({1, torch::indexing::Slice(20, t)}, 3);
  const torch::Tensor packed = build_attention_mask(b, t, 0, am, seg, torch::kCPU);
  check_case(b, 6, 2, t, t, packed, "packing");
}

TEST_F(Attention, CacheShapedMaskMatchesFloat64) {
  // 5 new queries over 11 cached + 5 new keys; one row has its first 3 cached keys padded.
  const int64_t b = 2, t = 5, past = 11;
  torch::Tensor am = torch::ones({b, past + t}, torch::kInt64);
  am.index_put_({1, torch::indexing::Slice(0, 3)}, 0);
  const torch::Tensor mask = build_attention_mask(b, t, past, am, {}, torch::kCPU);
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{b, 1, t, past + t}));
  check_case(b, 8, 2, t, past + t, mask, "cache");
}

// One query per sequence over the S keys of a strided cache view (the layout KVCache hands attention), some keys
// masked out: every kernel path (Ref, AVX2, AVX-512 where the CPU has them), three dtypes, three head dims (80: not
// a multiple of 16; 136: more than one P.V slab on both vector paths), against float64.
TEST_F(Attention, DecodeKernelsMatchFloat64OnEveryPath) {
  std::vector<Isa> isas = {Isa::kScalar};
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_supports(isa)) isas.push_back(isa);
  }
  const int64_t b = 2, heads = 8, kv_heads = 2;
  for (int64_t d : {64, 80, 136}) {
    for (int64_t s : {1, 17, 100}) {
      torch::Tensor allowed = torch::rand({b, s}) > 0.3;
      allowed.select(1, s - 1).fill_(true);  // the query's own key
      const torch::Tensor keep = allowed.view({b, 1, 1, s});
      for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
        const torch::Tensor q = torch::randn({b, heads, 1, d}).to(dt);
        const torch::Tensor k = torch::randn({b, kv_heads, s + 7, d}).to(dt).narrow(2, 0, s);
        const torch::Tensor v = torch::randn({b, kv_heads, s + 7, d}).to(dt).narrow(2, 0, s);
        const Result ref = reference(q, k, v, keep, torch::ones_like(q));
        const double tol = dt == torch::kFloat32 ? kFp32RelTol : dt == torch::kHalf ? 5e-3 : kBf16RelTol;
        for (Isa isa : isas) {
          SCOPED_TRACE("d " + std::to_string(d) + " S " + std::to_string(s) + " " + c10::toString(dt) + " " +
                       isa_name(isa));
          torch::Tensor out = torch::empty_like(q);
          detail::decode_attention_cpu(q, k, v, allowed, 1.0 / std::sqrt(static_cast<double>(d)), out, isa);
          EXPECT_LT(rel_err(out, ref.out), tol);
        }
      }
    }
  }
}

// What generation runs: under InferenceMode a one-query step with a cache-shaped mask goes to the decode kernel, and
// its output is SDPA's to within the bf16 rounding of the output (the two sum in different orders).
TEST_F(Attention, DecodeRouteAgreesWithSdpa) {
  const int64_t b = 2, past = 40, d = 64;
  torch::Tensor am = torch::ones({b, past + 1}, torch::kInt64);
  am.index_put_({1, torch::indexing::Slice(0, 6)}, 0);  // left padding in the second row
  const torch::Tensor mask = build_attention_mask(b, 1, past, am, {}, torch::kCPU);
  const torch::Tensor q = torch::randn({b, 12, 1, d}).to(torch::kBFloat16);
  const torch::Tensor k = torch::randn({b, 4, past + 9, d}).to(torch::kBFloat16).narrow(2, 0, past + 1);
  const torch::Tensor v = torch::randn({b, 4, past + 9, d}).to(torch::kBFloat16).narrow(2, 0, past + 1);
  const Result ref = reference(q, k, v, mask, torch::ones_like(q));
  EXPECT_FALSE(decode_attention_applies(q, k, mask));  // autograd on: SDPA keeps what backward needs
  c10::InferenceMode inference;
  ASSERT_TRUE(decode_attention_applies(q, k, mask));
  EXPECT_FALSE(decode_attention_applies(q, k, mask, /*softcap=*/50.0));
  EXPECT_FALSE(decode_attention_applies(torch::randn({b, 12, 2, d}).to(torch::kBFloat16), k, mask));
  const torch::Tensor got = grouped_query_attention(q, k, v, mask);
  const torch::Tensor sdpa = at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, std::nullopt, true);
  EXPECT_LT(rel_err(got, sdpa.to(torch::kFloat64)), 1e-2);
  EXPECT_LT(rel_err(got, ref.out), kBf16RelTol);
}

// The blocked kernel called directly on one row path: output and gradients (loss sum(out * g)).
Result flash(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask,
             const torch::Tensor& g, Isa isa) {
  const torch::Tensor iv = detail::mask_intervals(mask, q.size(2), k.size(2));
  EXPECT_TRUE(iv.defined());
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor out = torch::empty_like(q), lse = torch::empty({q.size(0), q.size(1), q.size(2)});
  detail::flash_attention_forward_cpu(q, k, v, iv, scale, out, lse, isa);
  torch::Tensor dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  detail::flash_attention_backward_cpu(q, k, v, iv, out, lse, g, scale, dq, dk, dv, isa);
  return {out, dq, dk, dv};
}

// T past one block (64 rows) with a partial last block, odd T, head dims 64 and 80, every mask shape
// build_attention_mask makes, every row path, against float64; and the grouped_query_attention route.
TEST_F(Attention, FlashKernelMatchesFloat64OnEveryPath) {
  if (!detail::flash_attention_available()) GTEST_SKIP() << "no AVX-512 BF16 / oneDNN micro-kernel on this CPU";
  std::vector<Isa> isas = {Isa::kScalar};
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_supports(isa)) isas.push_back(isa);
  }
  const int64_t b = 2, t = 157;
  torch::Tensor am = torch::ones({b, t}, torch::kInt64);
  am.index_put_({0, torch::indexing::Slice(0, 70)}, 0);   // left padding over a block boundary
  am.index_put_({1, torch::indexing::Slice(100, t)}, 0);  // right padding: padded rows see keys 0..99 and themselves
  torch::Tensor seg = torch::ones({b, t}, torch::kInt64);
  seg.index_put_({0, torch::indexing::Slice(90, t)}, 2);
  seg.index_put_({1, torch::indexing::Slice(30, 131)}, 2);
  seg.index_put_({1, torch::indexing::Slice(131, t)}, 3);
  struct Case {
    std::string what;
    torch::Tensor mask;
    int64_t t, s;
  };
  const int64_t past = 70, tc = 9;
  torch::Tensor am_cache = torch::ones({b, past + tc}, torch::kInt64);
  am_cache.index_put_({1, torch::indexing::Slice(0, 3)}, 0);
  const std::vector<Case> cases = {
      {"causal", {}, t, t},
      {"padding", build_attention_mask(b, t, 0, am, {}, torch::kCPU), t, t},
      {"packing", build_attention_mask(b, t, 0, {}, seg, torch::kCPU), t, t},
      {"sliding window", build_attention_mask(b, t, 0, {}, {}, torch::kCPU, 40), t, t},
      {"cache", build_attention_mask(b, tc, past, am_cache, {}, torch::kCPU), tc, past + tc},
  };
  for (const Case& c : cases) {
    for (int64_t d : {64, 80}) {
      const torch::Tensor keep =
          c.mask.defined() ? c.mask : torch::ones({c.t, c.s}, torch::kBool).tril().expand({b, 1, c.t, c.s});
      const torch::Tensor q = torch::randn({b, 6, c.t, d}).to(torch::kBFloat16);
      const torch::Tensor k = torch::randn({b, 2, c.s, d}).to(torch::kBFloat16);
      const torch::Tensor v = torch::randn({b, 2, c.s, d}).to(torch::kBFloat16);
      const torch::Tensor g = torch::randn({b, 6, c.t, d}).to(torch::kBFloat16);
      const Result ref = reference(q, k, v, keep, g);
      for (Isa isa : isas) {
        SCOPED_TRACE(c.what + " d " + std::to_string(d) + " " + isa_name(isa));
        const Result got = flash(q, k, v, c.mask, g, isa);
        EXPECT_LT(rel_err(got.out, ref.out), kBf16RelTol);
        EXPECT_LT(rel_err(got.dq, ref.dq), kBf16RelTol);
        EXPECT_LT(rel_err(got.dk, ref.dk), kBf16RelTol);
        EXPECT_LT(rel_err(got.dv, ref.dv), kBf16RelTol);
      }
      SCOPED_TRACE(c.what + " d " + std::to_string(d) + " grouped_query_attention");
      const Result routed = ours(q, k, v, c.mask, g);
      EXPECT_LT(rel_err(routed.out, ref.out), kBf16RelTol);
      EXPECT_LT(rel_err(routed.dk, ref.dk), kBf16RelTol);
    }
  }
}

// Training's bf16 attention goes to the blocked kernel where it runs, and agrees with SDPA to within bf16 roundings.
TEST_F(Attention, FlashRouteAgreesWithSdpa) {
  if (!detail::flash_attention_available() || active_isa() != Isa::kAvx512) {
    GTEST_SKIP() << "the blocked kernel does not run here";
  }
  const int64_t b = 2, t = 130, d = 64;
  const torch::Tensor q = torch::randn({b, 12, t, d}).to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor k = torch::randn({b, 4, t, d}).to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor v = torch::randn({b, 4, t, d}).to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor got = grouped_query_attention(q, k, v, {});
  ASSERT_TRUE(got.grad_fn());
  EXPECT_NE(got.grad_fn()->name().find("FlashAttention"), std::string::npos) << got.grad_fn()->name();
  const torch::Tensor sdpa = at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, std::nullopt, true);
  EXPECT_LT(rel_err(got, sdpa.to(torch::kFloat64)), 1e-2);
}

// The own key apart from the interval on either side, and a row that may see nothing: the intervals as documented,
// the kernel against float64 on the other rows, and zeros (output, logsumexp +inf, dQ) on the empty row.
TEST_F(Attention, FlashMaskIntervalsOwnKeyApartAndAnEmptyRow) {
  if (!detail::flash_attention_available()) GTEST_SKIP() << "no AVX-512 BF16 / oneDNN micro-kernel on this CPU";
  const int64_t b = 1, t = 70, d = 16;
  torch::Tensor keep = torch::ones({t, t}, torch::kBool).tril().view({b, 1, t, t}).clone();
  using torch::indexing::Slice;
  keep.index_put_({0, 0, 2}, false);  // row 2: its own key and keys 5..7 (future keys, a made-up mask)
  keep.index_put_({0, 0, 2, 2}, true);
  keep.index_put_({0, 0, 2, Slice(5, 8)}, true);
  keep.index_put_({0, 0, 40, Slice(0, 30)}, false);  // row 40: keys 30..39 and its own key 40 (a hole before)
  keep.index_put_({0, 0, 40, Slice(30, 35)}, true);
  keep.index_put_({0, 0, 40, Slice(35, 40)}, false);
  keep.index_put_({0, 0, 50}, false);  // row 50 sees nothing
  const torch::Tensor iv = detail::mask_intervals(keep, t, t);
  ASSERT_TRUE(iv.defined());
  const auto row = [&](int64_t i) {
    return std::vector<int32_t>{iv[0][i][0].item<int32_t>(), iv[0][i][1].item<int32_t>(), iv[0][i][2].item<int32_t>()};
  };
  EXPECT_EQ(row(2), (std::vector<int32_t>{5, 8, 2}));
  EXPECT_EQ(row(40), (std::vector<int32_t>{30, 35, 40}));
  EXPECT_EQ(row(50), (std::vector<int32_t>{0, 0, -1}));
  EXPECT_EQ(row(60), (std::vector<int32_t>{0, 61, -1}));
  const torch::Tensor q = torch::randn({b, 4, t, d}).to(torch::kBFloat16);
  const torch::Tensor k = torch::randn({b, 2, t, d}).to(torch::kBFloat16);
  const torch::Tensor v = torch::randn({b, 2, t, d}).to(torch::kBFloat16);
  const torch::Tensor g = torch::randn({b, 4, t, d}).to(torch::kBFloat16);
  torch::Tensor ref_keep = keep.clone();
  ref_keep.index_put_({0, 0, 50, 50}, true);  // the float64 reference needs a key on every row; row 50 is not compared
  torch::Tensor g50 = g.clone();  // row 50's upstream gradient is 0, so the reference's stand-in key adds nothing
  g50.index_put_({Slice(), Slice(), 50}, 0);
  const Result ref = reference(q, k, v, ref_keep, g50);
  const Result got = flash(q, k, v, keep, g50, active_isa());
  const torch::Tensor others = torch::arange(t) != 50;
  const auto rows_but_50 = [&](const torch::Tensor& x) { return x.index({Slice(), Slice(), others}); };
  EXPECT_LT(rel_err(rows_but_50(got.out), rows_but_50(ref.out)), kBf16RelTol);
  EXPECT_LT(rel_err(rows_but_50(got.dq), rows_but_50(ref.dq)), kBf16RelTol);
  EXPECT_LT(rel_err(got.dk, ref.dk), kBf16RelTol);
  EXPECT_LT(rel_err(got.dv, ref.dv), kBf16RelTol);
  EXPECT_EQ(got.out.select(2, 50).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(got.dq.select(2, 50).abs().max().item<float>(), 0.0f);
}

// Same bits on 1 and 2 threads (flash_attention.h: one thread per block of work, a fixed order within it).
TEST_F(Attention, FlashBitsDoNotDependOnTheThreadCount) {
  if (!detail::flash_attention_available()) GTEST_SKIP() << "no AVX-512 BF16 / oneDNN micro-kernel on this CPU";
  const int64_t b = 2, t = 150, d = 64;
  const torch::Tensor q = torch::randn({b, 6, t, d}).to(torch::kBFloat16);
  const torch::Tensor k = torch::randn({b, 2, t, d}).to(torch::kBFloat16);
  const torch::Tensor v = torch::randn({b, 2, t, d}).to(torch::kBFloat16);
  const torch::Tensor g = torch::randn({b, 6, t, d}).to(torch::kBFloat16);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const Result one = flash(q, k, v, {}, g, active_isa());
  at::set_num_threads(2);
  const Result two = flash(q, k, v, {}, g, active_isa());
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.out, two.out));
  EXPECT_TRUE(torch::equal(one.dq, two.dq));
  EXPECT_TRUE(torch::equal(one.dk, two.dk));
  EXPECT_TRUE(torch::equal(one.dv, two.dv));
}

// Masks that are not one interval (plus the query's own key) per row go to SDPA, with the same result.
TEST_F(Attention, FlashDeclinesOtherMaskShapes) {
  const int64_t b = 1, t = 20, d = 16;
  torch::Tensor keep = torch::ones({t, t}, torch::kBool).tril().expand({b, 1, t, t}).clone();
  EXPECT_TRUE(detail::mask_intervals(keep, t, t).defined());
  keep.index_put_({0, 0, 12, 5}, false);  // a hole inside row 12's keys
  EXPECT_FALSE(detail::mask_intervals(keep, t, t).defined());
  const torch::Tensor q = torch::randn({b, 4, t, d}).to(torch::kBFloat16);
  const torch::Tensor k = torch::randn({b, 2, t, d}).to(torch::kBFloat16);
  const torch::Tensor v = torch::randn({b, 2, t, d}).to(torch::kBFloat16);
  const torch::Tensor g = torch::randn({b, 4, t, d}).to(torch::kBFloat16);
  const Result ref = reference(q, k, v, keep, g);
  const Result got = ours(q, k, v, keep, g);
  EXPECT_LT(rel_err(got.out, ref.out), kBf16RelTol);
  EXPECT_LT(rel_err(got.dq, ref.dq), kBf16RelTol);
}

TEST_F(Attention, HeadsNotAMultipleOfKvHeadsIsAnError) {
  const torch::Tensor q = torch::randn({1, 6, 4, 8}), kv = torch::randn({1, 4, 4, 8});
  EXPECT_THROW(grouped_query_attention(q, kv, kv, {}), c10::Error);
}

}  // namespace
}  // namespace qlora::ops
