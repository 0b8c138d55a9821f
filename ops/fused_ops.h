// Fused training ops with their own autograd: causal-LM cross entropy, RMSNorm, SwiGLU and counter-based dropout
// (RoPE, built the same way, is ops/rope.h). On CPU tensors of fp32/bf16/fp16 they run the kernels of
// ops/fused_kernels.h (one pass over the data in fp32, outputs and gradients written straight in the input's dtype,
// no fp32 copies kept for backward); on other devices and dtypes they fall back to the equivalent LibTorch ops (the
// *_ops functions), so callers in model/ and lora/ stay device-generic.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace qlora::ops {

// logits: (N, V), labels: (N) int64 -> fp32 scalar: sum over rows whose label != ignore_index of
// logsumexp(logits[i]) - logits[i, label] (cross_entropy(logits.float(), labels, reduction=sum)). Differentiable in
// logits; the gradient has the logits' dtype.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index);

// LlamaRMSNorm: x (..., H) -> (..., H) in x's dtype: round(x * rsqrt(mean(x^2) + eps)) in fp32, times weight (H)
// cast to x's dtype. Differentiable in x; a weight that requires grad takes the LibTorch-ops path.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// SwiGLU: silu(gate) * up (same shapes), in fp32 and rounded once. Differentiable in both.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// Inverted dropout: zeroes each element with probability p and scales the rest by 1 / (1 - p); x itself when p is
// 0 or `train` is false. CPU: each call draws one 64-bit seed from LibTorch's default CPU generator (so
// torch::manual_seed and saving/restoring the generator state reproduce the mask) and regenerates the mask from it
// in backward, keeping nothing but the seed. Other devices: torch::dropout.
torch::Tensor dropout(const torch::Tensor& x, double p, bool train);

namespace detail {
// The LibTorch-ops versions (the non-CPU path; tests run them on CPU too).
torch::Tensor cross_entropy_sum_ops(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index);
torch::Tensor rms_norm_ops(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor swiglu_ops(const torch::Tensor& gate, const torch::Tensor& up);
}  // namespace detail

}  // namespace qlora::ops
