// Autoregressive generation with a KV cache: one batched forward over the prompt, then one token at a time; the cache
// is allocated once for prompt + max_new_tokens positions and written in place, and lm_head runs on the last
// position only.
// Sampling: temperature 0 = greedy (argmax); else logits / T, top-k, top-p (nucleus), then a draw from a
// generator seeded with `seed` (deterministic for a given seed, independent of the global RNG).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "model/llama.h"
#include "quant/linear_4bit.h"

namespace qlora::model {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0 -> greedy
  int64_t top_k = 0;         // 0 -> off
  double top_p = 1.0;        // 1 -> off
  uint64_t seed = 0;
  std::vector<int64_t> eos_token_ids;             // stop after emitting one of these (it is included in the output)
  bool use_cache = true;                          // false: recompute the whole sequence each step (tests, debugging)
  bool fused_decode = true;                       // KVCache::fused_decode (false: decode steps through LibTorch ops)
  quant::CpuGemv cpu_gemv = quant::CpuGemv::kQ8;  // the CPU GEMV one-row 4-bit projections take (linear_4bit.h)
  // Sample only ids below this (the tokenizer's vocabulary when the model pads its embedding rows); 0 = all.
  int64_t vocab_limit = 0;
};

// Called with each new token; return false to stop.
using TokenCallback = std::function<bool(int64_t token)>;

struct GenerateResult {
  std::vector<int64_t> tokens;  // new tokens only
  bool stopped_on_eos = false;
  double prompt_seconds = 0.0;  // prefill
  double decode_seconds = 0.0;  // the remaining steps
};

// prompt: token ids (non-empty). Runs under c10::InferenceMode (so one-row 4-bit projections on the CPU take the
// GEMV kernel, quant::gemv_4bit_applies).
GenerateResult generate(LlamaModelImpl& model, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                        const TokenCallback& on_token = {});

// logits: (V) fp32 -> next token id, per the sampling options (gen used only when temperature > 0).
int64_t sample_token(const torch::Tensor& logits, const GenerateOptions& options, torch::Generator& gen);

}  // namespace qlora::model
