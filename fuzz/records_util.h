// Shared by fuzz_records and fuzz_chat_records: one data file run through the whole DataLoader (record source,
// parse, template, tokenizer, truncation, packing, collation) with a real sentencepiece tokenizer, checking that
// every batch holds only valid token ids and labels.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "data/data_loader.h"
#include "fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace qlora::fuzz {

inline const tokenizer::Tokenizer& records_tokenizer() {
  static const std::unique_ptr<tokenizer::Tokenizer> tok =
      tokenizer::load_sentencepiece_tokenizer(source_dir() / "tests" / "fixtures" / "spm" / "llama_like.model");
  return *tok;
}

// Reads every batch of one epoch of `cfg`; aborts on a batch with an id outside the vocabulary.
inline void read_all_batches(const data::DataConfig& cfg) {
  const tokenizer::Tokenizer& tok = records_tokenizer();
  data::DataLoader loader(cfg, tok, data::Split::kTrain, /*micro_batch_size=*/2, /*seed=*/1, /*max_epochs=*/1);
  while (auto batch = loader.next()) {
    const torch::Tensor ids = batch->input_ids;
    const torch::Tensor labels = batch->labels;
    if (ids.numel() == 0) continue;
    if (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= tok.vocab_size()) std::abort();
    const torch::Tensor trained = labels.masked_select(labels != -100);
    if (trained.numel() > 0 && (trained.min().item<int64_t>() < 0 || trained.max().item<int64_t>() >= tok.vocab_size()))
      std::abort();
  }
  (void)loader.state().dump();
}

}  // namespace qlora::fuzz
