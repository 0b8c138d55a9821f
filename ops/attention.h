// Attention pieces of the Llama decoder: the boolean attention mask (causal x padding x packing segments)
// and grouped-query scaled-dot-product attention (LibTorch's fused SDPA kernel, kv heads shared natively).
#pragma once

#include <torch/torch.h>

namespace qlora::ops {

// Builds the (B, 1, T, past + T) boolean mask, true = may attend:
//   causal on sequence index (query i sits at past + i), keys masked by attention_mask (B, past + T) or
//   (B, T) when past == 0, and block diagonal by segment_ids (B, T) (packing; only without a cache).
// A query always sees itself, so padding rows never become all-masked (no NaN).
// sliding_window > 0 also hides keys more than sliding_window - 1 places before the query (transformers'
// sliding_window_overlay: kv_idx > q_idx - sliding_window, on sequence indices).
// Returns an undefined tensor when the mask is purely causal with past == 0 and no padding (fast path).
torch::Tensor build_attention_mask(int64_t batch, int64_t seq, int64_t past, const torch::Tensor& attention_mask,
                                   const torch::Tensor& segment_ids, torch::Device device, int64_t sliding_window = 0);

// q: (B, nH, T, d), k/v: (B, nKV, S, d), mask: (B, 1, T, S) bool or undefined (= causal with S == T)
// -> (B, nH, T, d) in q's dtype: softmax(q kᵀ * d^-0.5 + mask) v, query head h reading kv head h / (nH / nKV)
// (HF repeat_kv's grouping) without copying k and v per query head: at::scaled_dot_product_attention with
// enable_gqa. On CPU LibTorch 2.15 runs its flash kernel (_scaled_dot_product_flash_attention_for_cpu) for fp32,
// bf16 and fp16, causal or masked (checked through the autograd node it records); the math backend, which would
// keep (T, S) probabilities, is only for inputs it rejects. For bf16/fp16 that kernel (upstream
// aten/src/ATen/native/cpu/FlashAttentionKernel.cpp, accum_t = at::opmath_type<scalar_t> = fp32) computes the scores,
// the mask add and the online softmax's running max and sum in fp32, rounds exp(score - max) to the input dtype for
// the P·V GEMM, which accumulates in fp32, divides by the fp32 sum and rounds the output once. For backward it keeps
// q, k, v (kv heads only), the output, an fp32 logsumexp per row and head and, when a mask is given, that mask
// converted to an additive one in q's dtype (0 / -inf, (B, 1, T, S), a new tensor per call); no (T, S) scores.
// On CUDA the backend is LibTorch's choice (flash, memory-efficient or cuDNN; not checked here).
// bf16 on CPU, T > 1, where blocked_cpu_attention_runs(): ops/flash_attention.h's blocked kernel instead of SDPA, with
// SDPA's arithmetic (its products through oneDNN's bf16 micro-kernel rather than MKL's GEMM, which runs generic code
// on AMD CPUs); it keeps q, k, v, the output, the logsumexp and the mask as (T, 3) int32 intervals, no (T, S) mask.
// scale: the score scale (0: d^-0.5). softcap > 0 (Gemma 2) caps the scaled scores at softcap * tanh(s / softcap)
// before the mask, which SDPA cannot do: that path computes transformers' eager attention (scores and their tanh in
// q's dtype, softmax in fp32 rounded to q's dtype, then P·V) with kv heads broadcast, not copied; it keeps (T, S)
// scores for backward.
// Decoding (one query per sequence, CPU, no autograd: InferenceMode or NoGradGuard, no softcap, a bool mask or none)
// does not call SDPA: ops/fused_kernels.h's decode_attention_cpu computes the same arithmetic for the one row,
// 5.6-6.5x faster than SDPA's flash kernel (blocks of 32 queries) at 96-2048 cached keys (bench_fused_ops).
torch::Tensor grouped_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& mask, double scale = 0.0, double softcap = 0.0);

// Whether bf16 attention with more than one query (training, prefill) runs ops/flash_attention.h's blocked kernel on
// this CPU: AVX-512 BF16 without AMX, oneDNN's micro-kernel, the AVX-512 path active (QLORA_QUANT_ISA), not turned off
// by QLORA_CPU_ATTENTION=sdpa. It then also needs a mask of one key interval per query row (plus the query's own
// key), which every build_attention_mask mask is; other masks go to SDPA.
bool blocked_cpu_attention_runs();

// Whether grouped_query_attention takes the one-query decode kernel for these arguments.
bool decode_attention_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& mask,
                              double softcap = 0.0);

}  // namespace qlora::ops
