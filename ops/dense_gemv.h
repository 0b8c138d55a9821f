// One row through a bf16 weight: y = W x with fp32 products and sums, rounded once to x's dtype, reading the weight's
// two bytes an element. For a dense lm_head when one token is decoded: under fp32 compute (the default on CPUs without
// native bf16) it would otherwise be an fp32 copy read at four bytes an element, and under bf16 compute LibTorch's
// one-row bf16 linear took about twice this kernel's time on the bench model's lm_head (bench/RESULTS.md).
#pragma once

#include <torch/torch.h>

#include "common/cpu_isa.h"

namespace qlora::ops {

// w (out, in) bf16, x (in) fp32 or bf16, both contiguous CPU tensors -> y (out) of x's dtype. Every row is one
// thread's, summed in the kernel's fixed order: the bits do not depend on the thread count.
torch::Tensor gemv_bf16(const torch::Tensor& w, const torch::Tensor& x, Isa isa = active_isa());

}  // namespace qlora::ops
