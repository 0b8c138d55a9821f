// Batches: tokenized examples -> (B, T) int64 CPU tensors.
//
// Padding collator: one example per row, padded on the right to the longest row (or to a fixed length).
// Packing: whole examples are greedily appended to a row of max_seq_len tokens; an example that does not fit
// closes the row and starts the next one. position_ids restart at 0 for each example; segment_ids number the
// examples of a row 1, 2, 3, ... (0 on padding). The model builds a block-diagonal causal mask from
// segment_ids (token t may attend to token s iff s <= t and segment_ids[s] == segment_ids[t] != 0). Every
// example's labels[0] is -100, so no label is predicted across an example boundary.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "data/tokenize.h"

namespace qlora::data {

struct Batch {
  torch::Tensor input_ids;       // (B, T) int64; pad id on padding
  torch::Tensor labels;          // (B, T) int64; -100 on masked tokens and padding
  torch::Tensor attention_mask;  // (B, T) int64; 1 on tokens, 0 on padding
  torch::Tensor position_ids;    // (B, T) int64; 0.. per example, 0 on padding
  torch::Tensor segment_ids;     // (B, T) int64; 1.. per example in a row, 0 on padding
  int64_t num_tokens = 0;        // non-padding tokens
  int64_t num_label_tokens = 0;  // labels != -100
  int64_t num_examples = 0;
};

// A row being packed: concatenated examples and their lengths.
struct PackedRow {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;
  std::vector<int64_t> lengths;  // one per example, in order

  int64_t size() const { return static_cast<int64_t>(ids.size()); }
  bool empty() const { return ids.empty(); }
  void append(const TokenizedExample& ex);
};

// Pads to the longest example, or to pad_to when pad_to > 0 (it must be >= the longest).
Batch collate_padded(const std::vector<TokenizedExample>& examples, int32_t pad_id, int64_t pad_to = 0);
// Packed rows -> (B, row_len); rows shorter than row_len are padded.
Batch collate_packed(const std::vector<PackedRow>& rows, int32_t pad_id, int64_t row_len);

// The pad id the collators use: the tokenizer's pad, else EOS (padding is masked out either way).
int32_t choose_pad_id(const tokenizer::Tokenizer& tok);

}  // namespace qlora::data
