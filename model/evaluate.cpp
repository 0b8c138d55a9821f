#include "model/evaluate.h"

#include <cmath>

#include "common/progress.h"
#include "common/threads.h"

namespace qlora::model {

double EvalResult::mean_loss() const {
  return tokens > 0 ? loss_sum / static_cast<double>(tokens) : std::nan("");
}

double EvalResult::perplexity() const {
  return std::exp(mean_loss());
}

EvalResult evaluate_documents(LlamaModelImpl& model, const std::vector<std::vector<int64_t>>& documents,
                              int64_t max_seq_len, bool show_progress) {
  TORCH_CHECK(max_seq_len >= 2, "max_seq_len must be at least 2");
  torch::NoGradGuard no_grad;
  int64_t total = 0;
  for (const auto& d : documents) total += static_cast<int64_t>(d.size());
  Progress progress("evaluating", static_cast<double>(total), "tok");
  EvalResult r;
  for (const auto& doc : documents) {
    for (size_t s = 0; s < doc.size(); s += static_cast<size_t>(max_seq_len)) {
      if (stop_requested()) return r;
      const size_t len = std::min(doc.size() - s, static_cast<size_t>(max_seq_len));
      if (len >= 2) {
        std::vector<int64_t> w(doc.begin() + static_cast<std::ptrdiff_t>(s),
                               doc.begin() + static_cast<std::ptrdiff_t>(s + len));
        torch::Tensor ids = torch::tensor(w, torch::kInt64).view({1, -1});
        auto [loss, n] = model.causal_lm_loss(ids, ids);
        r.loss_sum += loss.item<double>();
        r.tokens += n;
      }
      if (show_progress) progress.advance(static_cast<double>(len), "loss " + std::to_string(r.mean_loss()));
    }
  }
  if (show_progress) progress.finish();
  return r;
}

EvalResult evaluate_batches(LlamaModelImpl& model, const std::function<std::optional<EvalBatch>()>& next,
                            torch::Device device, bool show_progress) {
  torch::NoGradGuard no_grad;
  Progress progress("evaluating", 0.0, "tok");
  EvalResult r;
  while (auto b = next()) {
    if (stop_requested()) return r;
    ForwardInputs in{b->inputs.attention_mask.defined() ? b->inputs.attention_mask.to(device) : torch::Tensor(),
                     b->inputs.position_ids.defined() ? b->inputs.position_ids.to(device) : torch::Tensor(),
                     b->inputs.segment_ids.defined() ? b->inputs.segment_ids.to(device) : torch::Tensor()};
    auto [loss, n] = model.causal_lm_loss(b->input_ids.to(device), b->labels.to(device), in);
    r.loss_sum += loss.item<double>();
    r.tokens += n;
    if (show_progress) progress.advance(static_cast<double>(n), "loss " + std::to_string(r.mean_loss()));
  }
  if (show_progress) progress.finish();
  return r;
}

}  // namespace qlora::model
