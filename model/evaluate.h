// Language-model evaluation: mean token loss and perplexity over tokenized documents.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "model/llama.h"

namespace qlora::model {

// Summed token loss over the predicted (label) tokens; qlora-eval's documents and the trainer's eval split alike.
struct EvalResult {
  double loss_sum = 0.0;
  int64_t tokens = 0;  // predicted tokens counted
  // Mean token loss; NaN when no token was counted (no loss is not a zero loss).
  double mean_loss() const;
  double perplexity() const;  // exp(mean_loss())
};

// Each document is split into windows of at most max_seq_len tokens (no overlap); every token after the
// first of a window is predicted. Runs under NoGrad, one window at a time; progress when show_progress.
EvalResult evaluate_documents(LlamaModelImpl& model, const std::vector<std::vector<int64_t>>& documents,
                              int64_t max_seq_len, bool show_progress = true);

// One batch of already masked examples (the trainer's batches: data/collate.h): input_ids and labels (B, T),
// label -100 where nothing is predicted, and the padding / packing inputs.
struct EvalBatch {
  torch::Tensor input_ids;
  torch::Tensor labels;
  ForwardInputs inputs;
};

// The causal-LM loss summed over every batch `next` yields (until nullopt), counted over the label tokens, exactly
// as the trainer's eval computes it (model.causal_lm_loss). Runs under NoGrad on `device`.
EvalResult evaluate_batches(LlamaModelImpl& model, const std::function<std::optional<EvalBatch>()>& next,
                            torch::Device device, bool show_progress = true);

}  // namespace qlora::model
