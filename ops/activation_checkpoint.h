// Activation checkpointing (reentrant style, as torch.utils.checkpoint): the forward runs `fn` without
// recording a graph and keeps only its inputs; backward re-runs `fn` with grad enabled on detached copies
// of the inputs and backpropagates through it. Gradients of parameters used inside `fn` (e.g. LoRA weights)
// accumulate into their .grad as in a plain backward. The RNG state (CPU, and the inputs' accelerator) is
// saved before the forward and restored for the recompute, so dropout draws the same mask.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace qlora::ops {

using CheckpointFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

// inputs: the tensors whose gradients are wanted (others go in fn's closure as constants).
// Outside grad mode this just calls fn.
std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs);

}  // namespace qlora::ops
