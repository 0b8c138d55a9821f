// Segments -> token ids and labels (HF convention: labels aligned with input_ids; the model shifts, i.e.
// predicts labels[t + 1] from token t). Each text segment is encoded on its own, without BOS/EOS; BOS/EOS
// segments are the tokenizer's ids. Labels are the ids on trained segments and kIgnoreIndex (-100) on the
// rest; labels[0] is always -100 (nothing predicts the first token, and in a packed row it would be
// predicted across the example boundary).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/labels.h"
#include "data/prompt_template.h"
#include "tokenizer/tokenizer.h"

namespace qlora::data {

struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  // same length as ids

  int64_t size() const { return static_cast<int64_t>(ids.size()); }
  int64_t num_label_tokens() const;
};

// train_on_prompt: every token (but the first) is a label.
TokenizedExample tokenize_segments(const std::vector<Segment>& segments, const tokenizer::Tokenizer& tok,
                                   bool train_on_prompt);

// Keeps the first max_len tokens; returns true when something was cut.
bool truncate_example(TokenizedExample& ex, int64_t max_len);

// Human-readable view: masked spans in [[...]], trained spans bare, BOS/EOS as <s> </s>.
std::string format_masked(const TokenizedExample& ex, const tokenizer::Tokenizer& tok);
// Two-part view "PROMPT: ...\nTRAINED: ..." (text of masked tokens, text of trained tokens).
std::string format_prompt_trained(const TokenizedExample& ex, const tokenizer::Tokenizer& tok);

}  // namespace qlora::data
