#include "model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace qlora::model {

int64_t sample_token(const torch::Tensor& logits, const GenerateOptions& o, torch::Generator& gen) {
  torch::Tensor l = logits.to(torch::kCPU, torch::kFloat32).reshape({-1});
  if (o.vocab_limit > 0 && o.vocab_limit < l.size(0)) l = l.slice(0, 0, o.vocab_limit);
  if (o.temperature <= 0.0) return l.argmax().item<int64_t>();
  l = l / o.temperature;
  const int64_t v = l.size(0);
  if (o.top_k > 0 && o.top_k < v) {
    torch::Tensor kth = std::get<0>(l.topk(o.top_k)).index({o.top_k - 1});
    l = l.masked_fill(l < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p > 0.0 && o.top_p < 1.0) {
    auto [sorted, idx] = l.sort(/*dim=*/-1, /*descending=*/true);
    torch::Tensor cum = torch::softmax(sorted, -1).cumsum(-1);
    // Drop a token when the mass before it already reaches top_p (the first token is always kept).
    torch::Tensor remove_sorted = (cum - torch::softmax(sorted, -1)) >= o.top_p;
    torch::Tensor remove = torch::zeros_like(remove_sorted).scatter(0, idx, remove_sorted);
    l = l.masked_fill(remove, -std::numeric_limits<float>::infinity());
  }
  torch::Tensor probs = torch::softmax(l, -1);
  return torch::multinomial(probs, 1, /*replacement=*/false, gen).item<int64_t>();
}

GenerateResult generate(LlamaModelImpl& model, const std::vector<int64_t>& prompt, const GenerateOptions& o,
                        const TokenCallback& on_token) {
  if (prompt.empty()) throw Error("generate: the prompt is empty (no tokens)");
  // No autograd anywhere (the CPU takes the 4-bit GEMV path for one-row projections: quant::gemv_4bit_applies).
  c10::InferenceMode inference;
  const quant::CpuGemvScope gemv(o.cpu_gemv);
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  GenerateResult r;
  std::vector<int64_t> seq = prompt;
  KVCache cache;
  cache.fused_decode = o.fused_decode;
  cache.reserve(static_cast<int64_t>(prompt.size()) + std::max<int64_t>(0, o.max_new_tokens));
  auto clock = std::chrono::steady_clock::now;
  auto to_ids = [&](const std::vector<int64_t>& ids) { return torch::tensor(ids, torch::kInt64).view({1, -1}); };
  // ids (1, T) -> fp32 logits (V) of the last position only: lm_head runs on one row, never on the whole prompt.
  auto next_logits = [&](const std::vector<int64_t>& ids, KVCache* c) {
    const torch::Tensor hidden = model.forward_hidden(to_ids(ids), {}, c);  // (1, T, H)
    return model.logits(hidden.narrow(1, hidden.size(1) - 1, 1).contiguous()).view({-1});
  };
  auto t0 = clock();
  torch::Tensor logits = next_logits(seq, o.use_cache ? &cache : nullptr);  // the prompt in one batched forward
  r.prompt_seconds = std::chrono::duration<double>(clock() - t0).count();
  auto t1 = clock();
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const int64_t tok = sample_token(logits, o, gen);
    r.tokens.push_back(tok);
    seq.push_back(tok);
    const bool keep_going = !on_token || on_token(tok);
    if (std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), tok) != o.eos_token_ids.end()) {
      r.stopped_on_eos = true;
      break;
    }
    if (!keep_going || step + 1 == o.max_new_tokens) break;
    logits = o.use_cache ? next_logits({tok}, &cache) : next_logits(seq, nullptr);
  }
  r.decode_seconds = std::chrono::duration<double>(clock() - t1).count();
  return r;
}

}  // namespace qlora::model
