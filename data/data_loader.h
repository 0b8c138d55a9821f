// DataLoader: files -> records -> examples -> shuffle buffer -> (packed) batches, with a resumable cursor.
//
//   DataLoader train(cfg, tok, Split::kTrain, /*micro_batch_size=*/4, /*seed=*/1234, /*max_epochs=*/0);
//   while (auto batch = train.next()) { ... if (save) ckpt["data"] = train.state(); }
//   // later, in a fresh process: DataLoader again with the same arguments, then restore(ckpt["data"]).
//
// Pipeline, in order:
//   1. Records are read as a stream from the split's files (data/record_source.h). The eval split is the
//      data.eval files, or (data.eval_fraction) the train records whose index hashes below the fraction; the
//      train split then gets the others, so both agree without loading anything. With world_size > 1, rank r
//      takes the records whose index % world_size == r.
//   2. Each record is parsed, rendered with the template, tokenized and masked (data/tokenize.h), then
//      truncated to max_seq_len keeping the start (or dropped with drop_long). Bad records (malformed JSON,
//      missing or mistyped fields, nothing to train on) fail with FILE:LINE, or are counted and skipped with
//      on_bad_line: skip. An example whose trained tokens were all truncated away is always counted and
//      skipped with a warning naming FILE:LINE.
//   3. Train examples pass through a shuffle buffer of shuffle_buffer examples (a uniformly random buffered
//      example is emitted per example read; the buffer drains at the end of each epoch) driven by our own
//      std::mt19937_64 seeded with `seed`. The eval split is never shuffled.
//   4. Batches of micro_batch_size rows: one example per row (padding collator), or rows packed with whole
//      examples (packing: true; rows of max_seq_len; a packed row may span an epoch boundary).
// The last batch of the last epoch may have fewer rows. max_epochs 0 loops forever.
//
// state() (call between next() calls) is the cursor: source position, epoch, the shuffle buffer as source
// positions (re-read and re-tokenized on restore), the RNG state, the tokens of the row being packed and
// the stats. restore() on a fresh loader built with the same config, split, batch size and rank
// reproduces exactly the batches the uninterrupted loader would have produced.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/collate.h"
#include "data/data_config.h"
#include "data/record_source.h"
#include "data/tokenize.h"
#include "tokenizer/tokenizer.h"

namespace qlora::data {

enum class Split { kTrain, kEval };
const char* split_name(Split s);

// Counts since the start of the stream (cumulative over epochs; kept in the cursor).
struct DataStats {
  int64_t records_read = 0;          // records of this split and rank read from the files
  int64_t examples = 0;              // examples produced (after truncation and skips)
  int64_t tokens = 0;                // tokens of the produced examples
  int64_t label_tokens = 0;          // of which trained (label != -100)
  int64_t truncated = 0;             // examples cut to max_seq_len
  int64_t dropped_long = 0;          // examples over max_seq_len dropped (drop_long: true)
  int64_t bad_lines_skipped = 0;     // bad records skipped (on_bad_line: skip)
  int64_t fully_masked_skipped = 0;  // examples whose trained tokens were truncated away
  int64_t batches = 0;

  nlohmann::json to_json() const;
  static DataStats from_json(const nlohmann::json& j);
};

class DataLoader {
 public:
  DataLoader(const DataConfig& cfg, const tokenizer::Tokenizer& tok, Split split, int64_t micro_batch_size,
             uint64_t seed, int64_t max_epochs, int rank = 0, int world_size = 1);

  // The next batch, or nullopt once max_epochs epochs are done.
  std::optional<Batch> next();

  nlohmann::json state() const;
  void restore(const nlohmann::json& state);
  // Back to the start of epoch 0 with a freshly seeded RNG and zeroed stats.
  void reset();

  int64_t epoch() const { return epoch_; }  // epochs completed so far
  DataStats stats() const { return stats_; }
  const std::vector<fs::path>& files() const { return source_.files(); }
  // Per file of files(), the longest prefix this loader has read of it and its hash (RecordSource::read_digests();
  // the trainer's resume fingerprint). A restored loader counts from its cursor's file on.
  std::vector<ReadDigest> read_digests() const { return source_.read_digests(); }
  int32_t pad_id() const { return pad_id_; }

  // The first n examples of this split and rank in file order (no shuffle); does not move the cursor or count
  // stats. Bad records are skipped silently here.
  std::vector<TokenizedExample> preview(int64_t n) const;

 private:
  struct Buffered {
    SourcePos pos;
    TokenizedExample ex;
  };

  std::optional<TokenizedExample> next_example();
  std::optional<Buffered> read_example();
  enum class Outcome { kOk, kTruncated, kBad, kDroppedLong, kFullyMasked };
  struct Processed {
    std::optional<TokenizedExample> ex;  // set for kOk and kTruncated
    Outcome outcome = Outcome::kOk;
    std::string what;  // kBad: the problem
    int64_t original_len = 0;
  };
  // Parse, render, tokenize, mask, truncate; no side effects.
  Processed process(const RawRecord& rec) const;
  // Stats, warnings and the on_bad_line policy for one processed record.
  void account(const SourcePos& pos, const Processed& p);
  bool take_record(int64_t record_index) const;
  void bad_record(const SourcePos& pos, const std::string& what);
  uint64_t random_index(uint64_t n) { return rng_() % n; }
  void setup_chat_template();
  void check_pending_row(const PackedRow& p) const;  // restore(): a saved row collation can index safely

  DataConfig cfg_;
  const tokenizer::Tokenizer& tok_;
  Split split_;
  int64_t micro_batch_size_;
  uint64_t seed_;
  int64_t max_epochs_;
  int rank_;
  int world_size_;
  int64_t shuffle_capacity_;
  int32_t pad_id_;

  RecordSource source_;
  std::mt19937_64 rng_;
  std::vector<Buffered> buffer_;
  bool draining_ = false;  // the source is exhausted for this epoch; emptying the buffer
  bool finished_ = false;
  int64_t epoch_ = 0;
  int64_t epoch_examples_ = 0;  // examples read from the source this epoch (0 at an epoch's end: no data)
  PackedRow pending_;
  std::shared_ptr<const ChatTemplateRenderer> chat_;  // data.template: auto
  DataStats stats_;
  int64_t warnings_ = 0;
};

}  // namespace qlora::data
