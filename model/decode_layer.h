// One decoder layer for one token of batch-1 decoding on the CPU, straight through the kernels: the same kernels and
// roundings as the layer's LibTorch-op forward (model/llama.cpp), without the per-op dispatch, allocation and views,
// which took ~20% of a decoded token on the bench model (bench/RESULTS.md). The layer runs in one parallel region of
// LibTorch's threads (a team): each step (q/k/v, RoPE and the cache write, attention, o_proj, gate/up/SwiGLU, down)
// is split over the team by rows or heads, and a member that finishes its share early prefetches its rows of the
// next projection while it waits for the others, so the weights keep streaming between steps. Every output element
// is computed by one thread as the kernels compute it alone: the bits do not depend on the thread count. Buffers are
// per calling thread and reused.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "quant/quantized_tensor.h"

namespace qlora::model {

// A plain Llama layer (pre-norms, no biases, SwiGLU, separate q/k/v and gate/up), every projection frozen 4-bit.
struct DecodeLayerWeights {
  const quant::QuantizedTensor *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  const quant::QuantizedTensor *gate = nullptr, *up = nullptr, *down = nullptr;
  torch::Tensor input_norm, post_attention_norm;  // (H)
  double eps = 1e-6;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  double scale = 0.0;  // the score scale; 0: head_dim^-0.5 (as ops::grouped_query_attention)
};

// Whether decode_layer_cpu computes this call: x (1, 1, H) contiguous on the CPU under c10::InferenceMode, bf16, or
// fp32 where this thread's CPU GEMV takes fp32 rows (quant::CpuGemv::kQ8), cos / sin (1, 1, head_dim) contiguous of
// x's dtype, every 4-bit part resident on the CPU, in_features multiples of 32, norm weights contiguous fp32 / bf16 /
// fp16 CPU tensors of H elements, and a mask that is undefined (the first position: all keys, one) or a contiguous
// (1, 1, 1, S) bool one.
bool decode_layer_applies(const DecodeLayerWeights& w, const torch::Tensor& x, const torch::Tensor& cos,
                          const torch::Tensor& sin, const torch::Tensor& mask);

// x (1, 1, H) -> (1, 1, H): writes this position's keys and values (after RoPE) at `past` of the cache buffers kb, vb
// (1, kv_heads, capacity > past, head_dim), contiguous, of x's dtype, and attends over positions [0, past]. The result
// is a per-thread buffer that the second layer computed after this one overwrites (a layer's input is never its
// output).
torch::Tensor decode_layer_cpu(const DecodeLayerWeights& w, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& mask, torch::Tensor& kb,
                               torch::Tensor& vb, int64_t past);

// One layer of decode_layers_cpu: its weights, mask and cache buffers, as decode_layer_cpu takes them.
struct DecodeLayerStep {
  const DecodeLayerWeights* w = nullptr;
  torch::Tensor mask;
  torch::Tensor* kb = nullptr;
  torch::Tensor* vb = nullptr;
};

// The layers one after the other, as many decode_layer_cpu calls give (the same bits), in one parallel region: the
// team goes from one layer to the next at a barrier (while prefetching the next layer's q/k/v rows) instead of a join
// and a fork. Every layer must satisfy decode_layer_applies with its mask. x, if an earlier call's result, is
// overwritten from the second layer on.
torch::Tensor decode_layers_cpu(const std::vector<DecodeLayerStep>& layers, const torch::Tensor& x,
                                const torch::Tensor& cos, const torch::Tensor& sin, int64_t past);

}  // namespace qlora::model
