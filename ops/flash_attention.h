// Blocked CPU attention for training and prefill (internal to ops/; ops/attention.h's grouped_query_attention
// decides when it runs): bf16 q, k, v with grouped kv heads, a mask given as one key interval per query row, the
// score and P.V products through oneDNN's bf16 micro-kernel (LibTorch's cpublas::brgemm, vdpbf16ps on AVX-512 BF16
// CPUs), the softmax and its gradient in this project's vector rows (ops/flash_attention_simd.h, specified by
// RefRows in flash_attention.cpp).
//
// Why: LibTorch's CPU flash kernel (SDPA) multiplies through MKL's bf16 GEMM, which runs its generic code on AMD
// CPUs: 124-142 GFLOP/s on two Zen 4 cores against ~420 for oneDNN (bench/RESULTS.md, #22).
//
// Arithmetic (as SDPA's CPU flash kernel, ops/attention.h): scores q.k in fp32, times scale, masked to -inf, the row
// max m and sum l of exp(s - m) in fp32, exp(s - m) rounded to bf16 for the P.V product (fp32 accumulation), the
// output (P.V) / l rounded once, logsumexp m + log l in fp32. Backward recomputes P = exp(s - logsumexp) in fp32
// from the saved logsumexp, dP = dO.Vᵀ in fp32, dS = P (dP - rowsum(dO * O)); P and dS are rounded to bf16 for the
// products dV = Pᵀ dO, dQ = dS K * scale, dK = dSᵀ Q * scale (fp32 accumulation over query heads and blocks, one
// rounding at the end). A row with no allowed key gives a zero output, logsumexp +inf and zero gradients.
// Each (batch, query head, query block) of forward and each (batch, kv head) of backward is one thread's work, in a
// fixed order: the bits do not depend on the thread count.
#pragma once

#include <torch/torch.h>

#include "common/cpu_isa.h"

namespace qlora::ops::detail {

// Whether this CPU and LibTorch run the bf16 micro-kernel on plain VNNI operands (AVX-512 BF16 without AMX, and
// oneDNN's ukernel API in LibTorch; tried once).
bool flash_attention_available();

// The mask as intervals: (Bm, T, 3) int32 with, per query row, [lo, hi) and one more allowed key `self` (-1: none):
// key j is allowed iff lo <= j < hi or j == self. From a bool (Bm, 1, T, S) mask; an undefined mask means causal
// with S == T (lo 0, hi i + 1). Returns an undefined tensor when some row is not of that shape (the caller falls back
// to SDPA). build_attention_mask's masks always are (causal, packing segments, padding, sliding window).
torch::Tensor mask_intervals(const torch::Tensor& mask, int64_t t, int64_t s);

// q (B, nH, T, d), k / v (B, nKV, S, d): contiguous bf16, d even; intervals as mask_intervals gives (Bm 1 or B).
// out (B, nH, T, d) bf16 and lse (B, nH, T) fp32, both contiguous, are written.
void flash_attention_forward_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& intervals, double scale, torch::Tensor& out, torch::Tensor& lse,
                                 Isa isa);

// Gradients of q, k, v (shapes and dtype of q, k, v, contiguous) from dout (like out).
void flash_attention_backward_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& intervals, const torch::Tensor& out, const torch::Tensor& lse,
                                  const torch::Tensor& dout, double scale, torch::Tensor& dq, torch::Tensor& dk,
                                  torch::Tensor& dv, Isa isa);

}  // namespace qlora::ops::detail
