// Text pieces of a byte-level BPE tokenizer (HF tokenizers' tokenizer.json), before the BPE model runs:
// UTF-8 repair, the GPT-2 byte <-> unicode table, and the pre-tokenizer pipeline (Split by regex through PCRE2,
// ByteLevel). Everything works on raw UTF-8 bytes; the byte-level unicode form only appears in vocab strings.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qlora::tokenizer::bpe {

// GPT-2's bytes_to_unicode(): each byte maps to one printable code point (printable Latin-1 maps to itself,
// the other 68 bytes to U+0100..U+0143). byte_to_unicode(b) is that code point as UTF-8 (e.g. ' ' -> "Ġ").
const std::string& byte_to_unicode(uint8_t b);
// Inverse: the byte a code point stands for, or -1 when it is not in the table.
int unicode_to_byte(uint32_t cp);
// Converts a byte-level string (e.g. a vocab entry "Ġthe") to raw bytes (" the"). Returns false when some code
// point is not in the table (the string is then not byte-level; HF's ByteLevel decoder keeps such tokens as-is).
bool byte_level_to_bytes(std::string_view s, std::string* out);

// Replaces every invalid UTF-8 sequence by U+FFFD (one per maximal invalid subpart, as Rust's
// String::from_utf8_lossy and Python's errors="replace" do). Returns true when the input was already valid
// (out untouched then).
bool repair_utf8(std::string_view in, std::string* out);
// Length of the longest prefix of s that does not end inside an incomplete (but so far valid) UTF-8 sequence.
size_t complete_utf8_prefix(std::string_view s);
// Appends code point cp as UTF-8.
void append_utf8(uint32_t cp, std::string* out);

// A PCRE2 regex compiled in UTF + UCP mode (JIT when available), with HF Oniguruma-compatible \s.
class Regex {
 public:
  // `source` names where the pattern came from for error messages (e.g. "tokenizer.json: pre_tokenizer...").
  Regex(const std::string& pattern, const std::string& source);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends [begin, end) byte offsets of all non-overlapping matches in `text` (valid UTF-8), left to right.
  // Empty matches are skipped.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// HF SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// One pre-tokenizer step; a piece is a byte range [begin, end) of the (normalized) text.
struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  // kSplit: the regex (a String pattern is compiled as an escaped literal), behaviour and invert.
  std::shared_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // kByteLevel: add_prefix_space (prepends ' ' to each piece not starting with one) and use_regex (splits with
  // the GPT-2 pattern).
  bool add_prefix_space = false;
  bool use_regex = false;
};

// The pre-tokenizer pipeline.
class PreTokenizer {
 public:
  PreTokenizer() = default;
  void add_step(PreTokenizerStep step);
  bool empty() const { return steps_.empty(); }
  // Splits `text` (valid UTF-8) into pieces; each piece is then encoded by the BPE model on its own. Pieces view
  // either `text` or `*storage` (used when a ByteLevel step adds prefix spaces); both must outlive them.
  void split(std::string_view text, std::string* storage, std::vector<std::string_view>* pieces) const;

 private:
  std::vector<PreTokenizerStep> steps_;
  bool adds_prefix_space_ = false;
};

// The GPT-2 pattern HF's ByteLevel pre-tokenizer uses when use_regex is true.
extern const char* const kGpt2Pattern;

}  // namespace qlora::tokenizer::bpe
