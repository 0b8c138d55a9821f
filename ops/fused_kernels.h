// Internal CPU kernels behind ops/fused_ops.h and ops/rope.h (not part of the public API; tests and the benchmark
// call them to force a path). Each launcher runs one kernel set of ops/fused_kernels.cpp: `RefKernels`, the scalar
// specification, or the AVX2 / AVX-512 kernels (one body, ops/fused_kernels_simd.h), tested against it and against
// float64 references. Tensors are contiguous CPU tensors of fp32, bf16 or fp16 unless stated; all arithmetic is fp32
// and every output is rounded once (round to nearest even) into its dtype. `isa` picks the path (Isa::kScalar: the
// reference); a vector ISA the CPU lacks falls back to the best one it has (ops/kernel_loop.h's kernel_path).
#pragma once

#include <torch/types.h>

#include <cstdint>

#include "common/cpu_isa.h"

namespace qlora::ops::detail {

// Whether the fused CPU kernels handle tensors of this dtype (fp32, bf16, fp16).
bool fused_dtype_supported(torch::ScalarType dt);

// logits: (N, V), labels: (N) int64 in [0, V) or == ignore_index. Writes lse[i] = logsumexp(logits[i]) (fp32, N)
// and returns sum over rows with a label of lse[i] - logits[i, label] (accumulated in double).
double cross_entropy_forward_cpu(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index,
                                 torch::Tensor& lse, Isa isa);
// grad: (N, V) in the logits' dtype = (softmax(logits[i]) - onehot(label)) * g; zero rows where label is ignored.
void cross_entropy_backward_cpu(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index,
                                const torch::Tensor& lse, float g, torch::Tensor& grad, Isa isa);

// x: (R, H), weight: (H) -> out = round(round(x * r) * weight) with r = 1 / sqrt(mean_H(x^2) + eps) per row (written
// to rstd, fp32 R): LlamaRMSNorm's two roundings. weight may have another dtype than x (cast to x's dtype first).
void rms_norm_forward_cpu(const torch::Tensor& x, const torch::Tensor& weight, double eps, torch::Tensor& out,
                          torch::Tensor& rstd, Isa isa);
// Gradient in x of the above (weight frozen): with gn = grad * weight, grad_x = r * gn - x * r^3 * mean_H(gn * x).
void rms_norm_backward_cpu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& rstd,
                           const torch::Tensor& grad, torch::Tensor& grad_x, Isa isa);

// RoPE (rotary embedding), HF rotate_half convention, on rows of d = 2 * half: with a = x[:half], b = x[half:],
// out[:half] = a * cos[:half] - b * sin[:half], out[half:] = b * cos[half:] + a * sin[half:]. `backward` applies the
// transpose instead (the input gradient): out[:half] = a * cos[:half] + b * sin[half:], out[half:] = b * cos[half:] -
// a * sin[:half]. x: (B, H, T, d) with any strides but a unit last one; cos, sin: contiguous (B, T, d) of x's dtype;
// out: contiguous (B, H, T, d).
void rope_cpu(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool backward,
              torch::Tensor& out, Isa isa);

// SwiGLU: out = silu(gate) * up; backward: grad_gate = g * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate),
// grad_up = g * silu(gate). All contiguous, same shape and dtype.
void swiglu_forward_cpu(const torch::Tensor& gate, const torch::Tensor& up, torch::Tensor& out, Isa isa);
void swiglu_backward_cpu(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& grad,
                         torch::Tensor& grad_gate, torch::Tensor& grad_up, Isa isa);

// Counter-based dropout keep bits: element e (flat index, numel < 2^32) of a call with `seed` is kept iff
// dropout_bits(seed, e) >= dropout_threshold(p). Two rounds of the lowbias32 integer hash (C. Wellons), keyed by
// the two halves of the seed; the same on every path and independent of the thread split.
uint32_t dropout_bits(uint64_t seed, uint32_t e);
uint32_t dropout_threshold(double p);  // round(p * 2^32), p in [0, 1)
// out = x * (keep ? 1 / (1 - p) : 0), the scale applied in fp32. out may not alias x.
void dropout_cpu(const torch::Tensor& x, uint64_t seed, double p, torch::Tensor& out, Isa isa);

// Attention of one query per sequence (batch-1 decoding with a KV cache; ops/decode_attention.cpp): q (B, nH, 1, d), k
// and v (B, nKV, S, d) with any strides but a unit last one (views of the cache), allowed (B, S) contiguous bool or
// undefined (all keys allowed), out (B, nH, 1, d) contiguous; query head h reads kv head h / (nH / nKV). The arithmetic
// of LibTorch's CPU flash kernel (ops/attention.h): scores s_j = (q . k_j) * scale in fp32, masked keys left out, m =
// max s, p_j = exp(s_j - m) and l = sum p_j in fp32, then out = (sum_j round(p_j) v_j) / l with p_j rounded to the
// input dtype for the product and the output rounded once. NaN when no key is allowed. scale > 0.
void decode_attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& allowed, double scale, torch::Tensor& out, Isa isa);

// Single rows of the launchers above on raw pointers, computed on the calling thread by the same kernel set (so with
// the same bits), for callers that run their own parallel region (model/decode_layer.cpp); T is float or
// c10::BFloat16. rms_norm_row_cpu takes the weight as rms_norm_forward_cpu reads it (cast to T, then to fp32) and
// returns the row's rstd; rope_row_cpu is the forward rotation of one d-row; swiglu_range_cpu computes elements
// [e0, e1) of the arrays; decode_attention_row_cpu one query head of decode_attention_cpu (keys / values row j at
// k + j * ks, v + j * vs; allowed (S) or null; scratch of S + d floats).
template <class T>
float rms_norm_row_cpu(const T* x, const float* weight, int64_t h, float eps, T* out, Isa isa);
template <class T>
void rope_row_cpu(const T* x, const T* cos, const T* sin, int64_t d, T* out, Isa isa);
template <class T>
void swiglu_range_cpu(const T* gate, const T* up, int64_t e0, int64_t e1, T* out, Isa isa);
template <class T>
void decode_attention_row_cpu(const T* q, const T* k, const T* v, int64_t ks, int64_t vs, const bool* allowed,
                              int64_t s_len, int64_t d, float scale, float* scratch, T* out, Isa isa);

}  // namespace qlora::ops::detail
