// Blocked CPU attention (ops/flash_attention.h): the operand packing, the products through cpublas::brgemm and the
// loops over blocks. `RefRows` is the specification of the row work between the products; `FlashRows`
// (ops/flash_attention_simd.h) computes the same on vector lanes.
//
// Products take B in oneDNN's VNNI layout for bf16: element (k, n) of a (K, N) operand at ((k / 2) * ldb + n) * 2 +
// k % 2, i.e. pairs of consecutive k as one 32-bit word. Forward works on query blocks (S = Q Kᵀ, then O = P V);
// backward on key blocks of one kv head, so that dK and dV accumulate in place, one (64 keys x 64 queries) tile at a
// time: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, then dV += Pᵀ dO, dK += dSᵀ Q and dQᵀ += Kᵀ dSᵀ (dQ kept transposed per query head,
// turned once at the end).
// Column ranges skip the blocks no row of the block may see (causal: the upper triangle; packing: other segments).
#include "ops/flash_attention.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/kernel_loop.h"
#include "ops/simd_avx2.h"
#include "ops/simd_avx512.h"

namespace qlora::ops::detail {
namespace {

using Bf16 = c10::BFloat16;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBlock = 64;  // query rows (forward) or key rows (backward) per block; columns per product call
constexpr int64_t kAlign = 16;  // column ranges start and end on multiples of this (a few product shapes only)
constexpr int64_t kTurn = 16;   // rows per step of a transpose

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

bool allowed(int32_t key, int32_t lo, int32_t hi, int32_t self) {
  return (key >= lo && key < hi) || key == self;
}

struct RefRows {
  // s: the scores of columns [c0, c1) of one query row (s[0] is column c0), overwritten by the scaled, masked ones;
  // p: exp(s - m) in bf16 (0 where masked); m_out / l_out: the row's max and sum of exp(s - m) (fp32).
  static void softmax_row(float* s, int64_t c0, int64_t c1, int32_t lo, int32_t hi, int32_t self, float scale, Bf16* p,
                          float* m_out, float* l_out) {
    float m = -kInf;
    for (int64_t j = c0; j < c1; ++j) {
      float& x = s[j - c0];
      x = allowed(static_cast<int32_t>(j), lo, hi, self) ? x * scale : -kInf;
      m = std::max(m, x);
    }
    float l = 0.0f;
    for (int64_t j = c0; j < c1; ++j) {
      const float e = m == -kInf ? 0.0f : std::exp(s[j - c0] - m);
      l += e;
      p[j - c0] = static_cast<Bf16>(e);
    }
    *m_out = m;
    *l_out = l;
  }

  // One key row of the transposed scores: s (Sᵀ) and dp (dPᵀ) for query columns [c0, c1); lo / hi / self / lse /
  // dsum indexed by query (lo null: every query may see `key`). p = exp(s * scale - lse) where `key` is allowed (0
  // elsewhere), ds = p (dp - dsum); both rounded to bf16.
  static void grad_row(const float* s, const float* dp, int64_t c0, int64_t c1, int32_t key, const int32_t* lo,
                       const int32_t* hi, const int32_t* self, const float* lse, const float* dsum, float scale,
                       Bf16* p, Bf16* ds) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t x = c - c0;
      const bool ok = lo == nullptr || allowed(key, lo[c], hi[c], self[c]);
      const float pv = ok ? std::exp(std::fma(s[x], scale, -lse[c])) : 0.0f;
      p[x] = static_cast<Bf16>(pv);
      ds[x] = static_cast<Bf16>(pv * (dp[x] - dsum[c]));
    }
  }
};

}  // namespace

#define QLORA_SIMD_KERNELS "ops/flash_attention_simd.h"
#include "ops/simd_each_isa.h"

namespace {

using Flash = KernelSet<RefRows, avx2::FlashRows, avx512::FlashRows>;

// C (m x n, ldc) = [C +] A (m x k, lda) . B (k x n in VNNI pairs, ldb); k even.
void product(int64_t m, int64_t n, int64_t k, const Bf16* a, int64_t lda, const uint32_t* b, int64_t ldb, float* c,
             int64_t ldc, bool add) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, add, a, reinterpret_cast<const Bf16*>(b), c, true);
}

uint32_t bits(Bf16 x) {
  return x.x;
}

// B = src (rows x cols, row stride ld) with k = row: dst ((rows_pad / 2) x cols words, row stride ld_out), zero
// rows past `rows`.
void pack_rows(const Bf16* src, int64_t ld, int64_t rows, int64_t cols, int64_t rows_pad, uint32_t* dst,
               int64_t ld_out) {
  for (int64_t r = 0; r < rows_pad; r += 2) {
    uint32_t* out = dst + (r / 2) * ld_out;
    if (r >= rows) {
      std::fill(out, out + cols, 0U);
      continue;
    }
    const Bf16* a = src + r * ld;
    if (r + 1 < rows) {
      const Bf16* b = a + ld;
      for (int64_t c = 0; c < cols; ++c) out[c] = bits(a[c]) | (bits(b[c]) << 16);
    } else {
      for (int64_t c = 0; c < cols; ++c) out[c] = bits(a[c]);
    }
  }
}

// B = srcᵀ for src (rows x cols, contiguous, cols even), k = column of src: dst ((cols / 2) x ld_out words), zero
// columns past `rows`.
void pack_cols(const Bf16* src, int64_t rows, int64_t cols, int64_t ld_out, uint32_t* dst) {
  const int64_t pairs = cols / 2;
  for (int64_t p = 0; p < pairs; ++p) std::fill(dst + p * ld_out + rows, dst + (p + 1) * ld_out, 0U);
  for (int64_t r0 = 0; r0 < rows; r0 += kTurn) {  // kTurn source rows at a time: contiguous writes, reads in L1
    const int64_t r1 = std::min(rows, r0 + kTurn);
    for (int64_t p = 0; p < pairs; ++p) {
      for (int64_t r = r0; r < r1; ++r)
        dst[p * ld_out + r] = bits(src[r * cols + 2 * p]) | (bits(src[r * cols + 2 * p + 1]) << 16);
    }
  }
}

// dst (cols x ld_out) = srcᵀ (src rows x cols, row stride ld), dst[c * ld_out + r] = f(src[r * ld + c]).
template <class In, class Out, class F>
void turn(const In* src, int64_t ld, int64_t rows, int64_t cols, Out* dst, int64_t ld_out, F f) {
  for (int64_t r0 = 0; r0 < rows; r0 += kTurn) {
    const int64_t r1 = std::min(rows, r0 + kTurn);
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = r0; r < r1; ++r) dst[c * ld_out + r] = f(src[r * ld + c]);
    }
  }
}

// The interval columns of one batch row of `intervals` (Bm, T, 3), padded to `pad` rows that allow nothing.
struct RowMasks {
  std::vector<int32_t> lo, hi, self;
  RowMasks(const int32_t* iv, int64_t t, int64_t pad) : lo(pad, 0), hi(pad, 0), self(pad, -1) {
    for (int64_t i = 0; i < t; ++i) {
      lo[i] = iv[3 * i];
      hi[i] = iv[3 * i + 1];
      self[i] = iv[3 * i + 2];
    }
  }
  // Rows [c0, c1) (of the first t) that may see some key in [k0, k1).
  void key_span(int64_t t, int64_t k0, int64_t k1, int64_t* c0, int64_t* c1) const {
    *c0 = std::numeric_limits<int64_t>::max();
    *c1 = 0;
    for (int64_t i = 0; i < t; ++i) {
      const bool in = (lo[i] < hi[i] && lo[i] < k1 && hi[i] > k0) || (self[i] >= k0 && self[i] < k1);
      if (in) *c0 = std::min(*c0, i), *c1 = i + 1;
    }
  }
};

// [c0, c1) widened to multiples of kAlign within [0, limit).
void align_span(int64_t* c0, int64_t* c1, int64_t limit) {
  *c0 = *c0 / kAlign * kAlign;
  *c1 = std::min(round_up(*c1, kAlign), limit);
}

void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& intervals) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(0) == k.size(0) &&
                  q.size(3) == k.size(3) && q.size(3) % 2 == 0 && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "flash attention: q (B, nH, T, d) and k, v (B, nKV, S, d) with d even and nH a multiple of nKV, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  for (const torch::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kBFloat16 && t->is_contiguous(),
                "flash attention: q, k, v must be contiguous bf16 CPU tensors");
  }
  TORCH_CHECK(intervals.scalar_type() == torch::kInt32 && intervals.is_contiguous() && intervals.dim() == 3 &&
                  (intervals.size(0) == 1 || intervals.size(0) == q.size(0)) && intervals.size(1) == q.size(2) &&
                  intervals.size(2) == 3,
              "flash attention: intervals must be (1 or B, T, 3) int32, got ", intervals.sizes());
}

}  // namespace

bool flash_attention_available() {
  static const bool ok = [] {
    if (!cpu_supports(Isa::kAvx512) || !__builtin_cpu_supports("avx512bf16")) return false;
    // AMX CPUs: oneDNN's kernel wants B in its own blocked layout there (cpublas::pack), not plain VNNI pairs; they
    // keep SDPA, whose MKL GEMM runs Intel's own kernels on them.
    if (at::native::cpublas::could_pack(torch::kBFloat16)) return false;
    try {  // LibTorch builds without oneDNN's ukernel API reject the VNNI layout
      std::vector<Bf16> a(4, Bf16(1.0f)), b(4, Bf16(1.0f));
      std::vector<float> c(4, 0.0f);
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a.data(), b.data(), c.data(), true);
      return c[0] == 2.0f && c[3] == 2.0f;
    } catch (const std::exception&) {
      return false;
    }
  }();
  return ok;
}

torch::Tensor mask_intervals(const torch::Tensor& mask, int64_t t, int64_t s) {
  if (!mask.defined()) {
    TORCH_CHECK(t == s, "flash attention: an undefined mask means causal with as many keys as queries");
    torch::Tensor iv = torch::empty({1, t, 3}, torch::kInt32);
    int32_t* p = iv.data_ptr<int32_t>();
    for (int64_t i = 0; i < t; ++i) p[3 * i] = 0, p[3 * i + 1] = static_cast<int32_t>(i + 1), p[3 * i + 2] = -1;
    return iv;
  }
  TORCH_CHECK(mask.scalar_type() == torch::kBool && mask.dim() == 4 && mask.size(1) == 1 && mask.size(2) == t &&
                  mask.size(3) == s,
              "flash attention: mask must be (Bm, 1, ", t, ", ", s, ") bool, got ", mask.sizes());
  const torch::Tensor m = mask.contiguous();
  const int64_t bm = m.size(0);
  torch::Tensor iv = torch::empty({bm, t, 3}, torch::kInt32);
  const auto* base = reinterpret_cast<const unsigned char*>(m.data_ptr<bool>());
  int32_t* out = iv.data_ptr<int32_t>();
  for (int64_t r = 0; r < bm * t; ++r) {
    const unsigned char* row = base + r * s;
    const int64_t own = r % t + (s - t);  // the query's own key: an extra allowed key outside the interval
    const void* first = std::memchr(row, 1, static_cast<size_t>(s));
    int32_t lo = 0, hi = 0, self = -1;
    if (first != nullptr) {
      int64_t a = static_cast<const unsigned char*>(first) - row;
      int64_t z = static_cast<const unsigned char*>(memrchr(row, 1, static_cast<size_t>(s))) - row + 1;
      if (std::memchr(row + a, 0, static_cast<size_t>(z - a)) != nullptr) {  // a hole: only the own key may be apart
        if (own == z - 1) {
          const void* prev = own > a ? memrchr(row + a, 1, static_cast<size_t>(own - a)) : nullptr;
          if (prev == nullptr) return {};
          z = static_cast<const unsigned char*>(prev) - row + 1;
        } else if (own == a) {
          a = static_cast<const unsigned char*>(std::memchr(row + own + 1, 1, static_cast<size_t>(s - own - 1))) - row;
        } else {
          return {};
        }
        if (std::memchr(row + a, 0, static_cast<size_t>(z - a)) != nullptr) return {};
        self = static_cast<int32_t>(own);
      }
      lo = static_cast<int32_t>(a);
      hi = static_cast<int32_t>(z);
    }
    out[3 * r] = lo, out[3 * r + 1] = hi, out[3 * r + 2] = self;
  }
  return iv;
}

void flash_attention_forward_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& intervals, double scale, torch::Tensor& out, torch::Tensor& lse,
                                 Isa isa) {
  check_inputs(q, k, v, intervals);
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == torch::kBFloat16 && out.is_contiguous() &&
                  lse.scalar_type() == torch::kFloat32 && lse.is_contiguous() &&
                  lse.numel() == q.size(0) * q.size(1) * q.size(2),
              "flash attention: out must be like q and lse (B, nH, T) fp32");
  const int64_t b = q.size(0), nh = q.size(1), t = q.size(2), d = q.size(3), nkv = k.size(1), s = k.size(2);
  const int64_t group = nh / nkv, sp = round_up(s, kAlign), blocks = (t + kBlock - 1) / kBlock;
  const auto fscale = static_cast<float>(scale);
  const Bf16* qp = q.data_ptr<Bf16>();
  const Bf16* kp = k.data_ptr<Bf16>();
  const Bf16* vp = v.data_ptr<Bf16>();
  Bf16* op = out.data_ptr<Bf16>();
  float* lp = lse.data_ptr<float>();
  const int32_t* ivp = intervals.data_ptr<int32_t>();
  const int64_t iv_stride = intervals.size(0) == 1 ? 0 : t * 3;

  // Kᵀ (k = head dim) and V (k = key) of every kv head in VNNI pairs.
  const int64_t kt_words = (d / 2) * sp, v_words = (sp / 2) * d;
  std::vector<uint32_t> kpack(static_cast<size_t>(b * nkv * kt_words)), vpack(static_cast<size_t>(b * nkv * v_words));
  at::parallel_for(0, b * nkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      pack_cols(kp + i * s * d, s, d, sp, kpack.data() + i * kt_words);
      pack_rows(vp + i * s * d, d, s, d, sp, vpack.data() + i * v_words, d);
    }
  });

  with_kernels<Flash>(isa, [&](auto rows_k) {
    at::parallel_for(0, b * nh * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> sbuf(static_cast<size_t>(kBlock * sp)), oacc(static_cast<size_t>(kBlock * d));
      std::vector<float> m(kBlock), l(kBlock);
      std::vector<Bf16> pbuf(static_cast<size_t>(kBlock * sp));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bi = item / (nh * blocks), h = item / blocks % nh, r0 = item % blocks * kBlock;
        const int64_t rows = std::min(kBlock, t - r0), kv = bi * nkv + h / group;
        const int32_t* iv = ivp + bi * iv_stride + r0 * 3;
        int64_t c0 = std::numeric_limits<int64_t>::max(), c1 = 0;  // the keys some row of the block may see
        for (int64_t r = 0; r < rows; ++r) {
          const int32_t lo = iv[3 * r], hi = iv[3 * r + 1], self = iv[3 * r + 2];
          if (lo < hi) c0 = std::min<int64_t>(c0, lo), c1 = std::max<int64_t>(c1, hi);
          if (self >= 0) c0 = std::min<int64_t>(c0, self), c1 = std::max<int64_t>(c1, self + 1);
        }
        const int64_t row0 = (bi * nh + h) * t + r0;
        if (c1 <= c0) {  // no row of the block sees a key
          std::fill(op + row0 * d, op + (row0 + rows) * d, Bf16(0.0f));
          std::fill(lp + row0, lp + row0 + rows, kInf);
          continue;
        }
        align_span(&c0, &c1, sp);
        const Bf16* qrow = qp + row0 * d;
        for (int64_t cc = c0; cc < c1; cc += kBlock) {
          product(rows, std::min(kBlock, c1 - cc), d, qrow, d, kpack.data() + kv * kt_words + cc, sp,
                  sbuf.data() + (cc - c0), sp, false);
        }
        for (int64_t r = 0; r < rows; ++r) {
          rows_k.softmax_row(sbuf.data() + r * sp, c0, c1, iv[3 * r], iv[3 * r + 1], iv[3 * r + 2], fscale,
                             pbuf.data() + r * sp, &m[r], &l[r]);
        }
        for (int64_t cc = c0; cc < c1; cc += kBlock) {
          product(rows, d, std::min(kBlock, c1 - cc), pbuf.data() + (cc - c0), sp,
                  vpack.data() + kv * v_words + (cc / 2) * d, d, oacc.data(), d, cc != c0);
        }
        for (int64_t r = 0; r < rows; ++r) {
          Bf16* o = op + (row0 + r) * d;
          for (int64_t i = 0; i < d; ++i) o[i] = static_cast<Bf16>(l[r] > 0.0f ? oacc[r * d + i] / l[r] : 0.0f);
          lp[row0 + r] = l[r] > 0.0f ? m[r] + std::log(l[r]) : kInf;
        }
      }
    });
  });
}

namespace {

// One backward call: shapes, pointers and per-thread buffers; kv_head() does the work of one (batch, kv head).
struct Backward {
  int64_t nh, t, d, nkv, s, group, sp, tp, key_blocks;
  float scale;
  const Bf16 *q, *k, *v, *out, *dout;
  const float* lse;
  const int32_t* intervals;
  int64_t iv_stride;
  Bf16 *dq, *dk, *dv;

  Backward(const torch::Tensor& q_, const torch::Tensor& k_, const torch::Tensor& v_, const torch::Tensor& iv,
           const torch::Tensor& out_, const torch::Tensor& lse_, const torch::Tensor& dout_, double scale_,
           torch::Tensor& dq_, torch::Tensor& dk_, torch::Tensor& dv_)
      : nh(q_.size(1)),
        t(q_.size(2)),
        d(q_.size(3)),
        nkv(k_.size(1)),
        s(k_.size(2)),
        group(nh / nkv),
        sp(round_up(s, kAlign)),
        tp(round_up(t, kAlign)),
        key_blocks((s + kBlock - 1) / kBlock),
        scale(static_cast<float>(scale_)),
        q(q_.data_ptr<Bf16>()),
        k(k_.data_ptr<Bf16>()),
        v(v_.data_ptr<Bf16>()),
        out(out_.data_ptr<Bf16>()),
        dout(dout_.data_ptr<Bf16>()),
        lse(lse_.data_ptr<float>()),
        intervals(iv.data_ptr<int32_t>()),
        iv_stride(iv.size(0) == 1 ? 0 : t * 3),
        dq(dq_.data_ptr<Bf16>()),
        dk(dk_.data_ptr<Bf16>()),
        dv(dv_.data_ptr<Bf16>()) {}

  // Per-thread buffers for one kv head.
  struct Scratch {
    std::vector<Bf16> kt;               // Kᵀ (d x sp): the A operand of dQᵀ
    std::vector<float> dk_acc, dv_acc;  // (sp x d), over the group's query heads
    std::vector<float> dqt;             // dQᵀ (d x tp) of one query head
    std::vector<uint32_t> q_t, g_t;     // Qᵀ, dOᵀ in VNNI pairs of the head dim (B of Sᵀ, dPᵀ)
    std::vector<uint32_t> q_r, g_r;     // Q, dO in VNNI pairs of queries (B of dK, dV)
    std::vector<float> st, dpt;         // Sᵀ, dPᵀ of a key block's query chunk (kBlock x kBlock)
    std::vector<float> lse, dsum;       // per query: logsumexp, rowsum(dO O)
    std::vector<Bf16> pt, dst;          // Pᵀ, dSᵀ of a key block's query chunk (kBlock x kBlock)
    std::vector<uint32_t> dst_pairs;    // dSᵀ in VNNI pairs of keys (B of dQᵀ)
    explicit Scratch(const Backward& a)
        : kt(n(a.d * a.sp)),
          dk_acc(n(a.sp * a.d)),
          dv_acc(n(a.sp * a.d)),
          dqt(n(a.d * a.tp)),
          q_t(n(a.d / 2 * a.tp)),
          g_t(n(a.d / 2 * a.tp)),
          q_r(n(a.tp / 2 * a.d)),
          g_r(n(a.tp / 2 * a.d)),
          st(n(kBlock * kBlock)),
          dpt(n(kBlock * kBlock)),
          lse(n(a.tp)),
          dsum(n(a.tp)),
          pt(n(kBlock * kBlock)),
          dst(n(kBlock * kBlock)),
          dst_pairs(n(kBlock / 2 * kBlock)) {}
    static size_t n(int64_t x) { return static_cast<size_t>(x); }
  };

  // kv head `item` (batch item / nkv): dK and dV of its keys, dQ of its group's query heads.
  template <class Rows>
  void kv_head(int64_t item, Scratch& w, Rows rows) const {
    const int64_t bi = item / nkv;
    const RowMasks rm(intervals + bi * iv_stride, t, tp);
    std::vector<int64_t> span0(Scratch::n(key_blocks)), span1(Scratch::n(key_blocks));
    for (int64_t kb = 0; kb < key_blocks; ++kb) {
      rm.key_span(t, kb * kBlock, std::min(s, (kb + 1) * kBlock), &span0[Scratch::n(kb)], &span1[Scratch::n(kb)]);
    }
    const Bf16* kh = k + item * s * d;
    std::fill(w.kt.begin(), w.kt.end(), Bf16(0.0f));
    turn(kh, d, s, d, w.kt.data(), sp, [](Bf16 x) { return x; });
    std::fill(w.dk_acc.begin(), w.dk_acc.end(), 0.0f);
    std::fill(w.dv_acc.begin(), w.dv_acc.end(), 0.0f);
    for (int64_t g = 0; g < group; ++g) {
      query_head(bi * nh + (item % nkv) * group + g, item, rm, span0, span1, w, rows);
    }
    for (int64_t j = 0; j < s * d; ++j) {
      dk[item * s * d + j] = static_cast<Bf16>(w.dk_acc[Scratch::n(j)] * scale);
      dv[item * s * d + j] = static_cast<Bf16>(w.dv_acc[Scratch::n(j)]);
    }
  }

  // One query head of kv head `item`: its key blocks' products, dQ written, dK / dV accumulated.
  template <class Rows>
  void query_head(int64_t head, int64_t item, const RowMasks& rm, const std::vector<int64_t>& span0,
                  const std::vector<int64_t>& span1, Scratch& w, Rows rows) const {
    const Bf16 *qh = q + head * t * d, *gh = dout + head * t * d, *oh = out + head * t * d;
    const Bf16 *kh = k + item * s * d, *vh = v + item * s * d;
    pack_cols(qh, t, d, tp, w.q_t.data());
    pack_cols(gh, t, d, tp, w.g_t.data());
    pack_rows(qh, d, t, d, tp, w.q_r.data(), d);
    pack_rows(gh, d, t, d, tp, w.g_r.data(), d);
    std::fill(w.lse.begin() + t, w.lse.end(), kInf);  // padding queries: P = 0
    std::fill(w.dsum.begin() + t, w.dsum.end(), 0.0f);
    for (int64_t i = 0; i < t; ++i) {
      w.lse[Scratch::n(i)] = lse[head * t + i];
      float acc = 0.0f;
      for (int64_t c = 0; c < d; ++c) acc += static_cast<float>(gh[i * d + c]) * static_cast<float>(oh[i * d + c]);
      w.dsum[Scratch::n(i)] = acc;
    }
    std::fill(w.dqt.begin(), w.dqt.end(), 0.0f);
    for (int64_t kb = 0; kb < key_blocks; ++kb) {
      int64_t c0 = span0[Scratch::n(kb)], c1 = span1[Scratch::n(kb)];
      if (c1 <= c0) continue;
      align_span(&c0, &c1, tp);
      const int64_t k0 = kb * kBlock, krows = std::min(kBlock, s - k0), kpad = round_up(krows, 2);
      for (int64_t cc = c0; cc < c1; cc += kBlock) {  // query columns a chunk at a time: the buffers stay in cache
        const int64_t nc = std::min(kBlock, c1 - cc);
        product(krows, nc, d, kh + k0 * d, d, w.q_t.data() + cc, tp, w.st.data(), kBlock, false);
        product(krows, nc, d, vh + k0 * d, d, w.g_t.data() + cc, tp, w.dpt.data(), kBlock, false);
        bool whole = cc + nc <= t;  // every query of the chunk sees every key of the block: no mask in the rows
        for (int64_t i = cc; whole && i < cc + nc; ++i) whole = rm.lo[i] <= k0 && rm.hi[i] >= k0 + krows;
        for (int64_t j = 0; j < krows; ++j) {
          rows.grad_row(w.st.data() + j * kBlock, w.dpt.data() + j * kBlock, cc, cc + nc, static_cast<int32_t>(k0 + j),
                        whole ? nullptr : rm.lo.data(), rm.hi.data(), rm.self.data(), w.lse.data(), w.dsum.data(),
                        scale, w.pt.data() + j * kBlock, w.dst.data() + j * kBlock);
        }
        product(krows, d, nc, w.pt.data(), kBlock, w.g_r.data() + (cc / 2) * d, d, w.dv_acc.data() + k0 * d, d, true);
        product(krows, d, nc, w.dst.data(), kBlock, w.q_r.data() + (cc / 2) * d, d, w.dk_acc.data() + k0 * d, d, true);
        pack_rows(w.dst.data(), kBlock, krows, nc, kpad, w.dst_pairs.data(), kBlock);
        product(d, nc, kpad, w.kt.data() + k0, sp, w.dst_pairs.data(), kBlock, w.dqt.data() + cc, tp, true);
      }
    }
    turn(w.dqt.data(), tp, d, t, dq + head * t * d, d, [this](float x) { return static_cast<Bf16>(x * scale); });
  }
};

}  // namespace

void flash_attention_backward_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& intervals, const torch::Tensor& out, const torch::Tensor& lse,
                                  const torch::Tensor& dout, double scale, torch::Tensor& dq, torch::Tensor& dk,
                                  torch::Tensor& dv, Isa isa) {
  check_inputs(q, k, v, intervals);
  for (const torch::Tensor* x : std::initializer_list<const torch::Tensor*>{&out, &dout, &dq}) {
    TORCH_CHECK(x->sizes() == q.sizes() && x->scalar_type() == torch::kBFloat16 && x->is_contiguous(),
                "flash attention backward: out, dout and dq must be contiguous like q");
  }
  TORCH_CHECK(dk.sizes() == k.sizes() && dv.sizes() == v.sizes() && dk.is_contiguous() && dv.is_contiguous() &&
                  dk.scalar_type() == torch::kBFloat16 && dv.scalar_type() == torch::kBFloat16,
              "flash attention backward: dk and dv must be contiguous like k and v");
  TORCH_CHECK(
      lse.scalar_type() == torch::kFloat32 && lse.is_contiguous() && lse.numel() == q.size(0) * q.size(1) * q.size(2),
      "flash attention backward: lse must be (B, nH, T) fp32");
  const Backward job(q, k, v, intervals, out, lse, dout, scale, dq, dk, dv);
  with_kernels<Flash>(isa, [&](auto rows) {
    at::parallel_for(0, q.size(0) * k.size(1), 1, [&](int64_t begin, int64_t end) {
      Backward::Scratch scratch(job);
      for (int64_t item = begin; item < end; ++item) job.kv_head(item, scratch, rows);
    });
  });
}

}  // namespace qlora::ops::detail
