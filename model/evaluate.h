// Language-model evaluation: mean token loss and perplexity over tokenized documents.
#pragma once

#include <cstdint>
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

}  // namespace qlora::model
