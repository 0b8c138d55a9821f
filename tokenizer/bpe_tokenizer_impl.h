// The state of a loaded byte-level BPE tokenizer, shared by its loader (bpe_tokenizer_load.cpp: tokenizer.json and
// tokenizer_config.json) and its encoder/decoder (bpe_tokenizer.cpp). Private to tokenizer/.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe_pretokenizer.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/string_id_map.h"

namespace qlora::tokenizer {

namespace detail {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace, kNfc } kind;
  std::string a, b;  // Prepend: a = prefix. Replace: a -> b.
};

// What the decoder does to the tokens of a char-level (sentencepiece-style) BPE: Replace steps on each token's
// string, ByteFallback (a "<0xHH>" token is byte HH), then Fuse and an optional Strip of the joined text.
struct CharDecoder {
  std::vector<std::pair<std::string, std::string>> replace;  // in order
  bool byte_fallback = false;
  std::string strip_content;  // one character; empty: no Strip
  size_t strip_start = 0, strip_stop = 0;
};

struct Merge {
  int32_t rank;
  int32_t new_id;
};

}  // namespace detail

struct BpeTokenizer::Impl {
  fs::path file;
  // Model.
  detail::StringIdMap bytes_to_id;  // raw bytes of each vocab entry -> id
  detail::StringIdMap piece_to_id;  // vocab strings and added-token contents -> id
  std::vector<std::string> pieces;  // id -> vocab string / added content
  std::vector<std::string> bytes;   // id -> decoded bytes
  std::vector<uint8_t> special;     // id -> is a special added token
  std::array<int32_t, 256> byte_ids{};
  std::unordered_map<uint64_t, detail::Merge> merges;
  bool ignore_merges = false;
  int32_t unk = -1;
  // Byte-level BPE (a ByteLevel pre-tokenizer: vocab strings are GPT-2 byte-unicode) or char-level BPE (Gemma,
  // Llama 2 style tokenizer.json: vocab strings are text with U+2581 for spaces, unknown characters fall back to
  // "<0xHH>" byte tokens when model.byte_fallback is true, else to unk, fused when model.fuse_unk).
  bool byte_level = true;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::array<int32_t, 256> fallback_ids{};  // id of "<0xHH>", -1 when missing
  detail::CharDecoder char_decoder;
  // Text pipeline.
  std::vector<detail::AddedToken> added;
  std::array<std::vector<int32_t>, 256> added_by_first_byte;  // indices into `added`, longest first
  std::vector<detail::NormalizerStep> normalizer;
  bpe::PreTokenizer pre;
  std::vector<int32_t> template_prefix, template_suffix;
  // tokenizer_config.json.
  int32_t bos = -1, eos = -1, pad = -1;
  std::optional<bool> add_bos_token, add_eos_token;
  std::string chat_template;
  // Word cache (piece bytes -> ids) for words that needed merges.
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void load_model(const nlohmann::json& model);
  void load_added_tokens(const nlohmann::json& list);
  // `depth` counts the Sequence steps around this one (bounded by kMaxSequenceDepth).
  void load_normalizer(const nlohmann::json& n, int depth = 0);
  void load_pre_tokenizer(const nlohmann::json& p, bool* has_byte_level, int depth = 0);
  void load_decoder(const nlohmann::json& d, int depth = 0);
  // A token's decoded bytes in char-level mode (the CharDecoder applied to one vocab string).
  std::string char_token_bytes(const std::string& piece) const;
  void load_post_processor(const nlohmann::json& p, int depth = 0);
  void load_config(const fs::path& config_file);

  int32_t find(std::string_view piece) const { return piece_to_id.find(piece); }
  void encode_text(std::string_view text, std::vector<int32_t>* out) const;
  void encode_word(std::string_view word, std::vector<int32_t>* out) const;
  void merge_word(std::string_view word, std::vector<int32_t>* out) const;
  // The initial symbols of a char-level word: one per UTF-8 character (its vocab id, else its byte-fallback ids,
  // else unk).
  void char_symbols(std::string_view word, std::vector<int32_t>* ids) const;
};

}  // namespace qlora::tokenizer
