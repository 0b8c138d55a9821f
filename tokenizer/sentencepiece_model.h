// Native reader of sentencepiece `tokenizer.model` files (a serialized ModelProto) and the BPE encoder
// sentencepiece applies to them. We do not link libsentencepiece: Debian's build carries its own copy of
// protobuf 3.14 whose exported symbols clash with the protobuf 3.21 that LibTorch loads, and a process
// holding both crashes before main. The file format is a handful of protobuf fields, and BPE encoding is
// a short greedy merge loop, so reading it directly is simpler than isolating the library.
//
// Supported: model_type BPE (Llama 1/2, Mistral, TinyLlama), identity normalization (or no charsmap),
// add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces, byte_fallback, user-defined symbols.
// Anything else (unigram models, precompiled nmt_nfkc charsmaps) is a clear qlora::Error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

namespace qlora::tokenizer {

namespace fs = std::filesystem;

struct SentencePieceModel {
  enum class PieceType : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string piece;
    float score = 0.0f;
    PieceType type = PieceType::kNormal;
  };

  std::vector<Piece> pieces;
  int model_type = 1;  // 1 unigram, 2 bpe, 3 word, 4 char
  bool byte_fallback = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "
  std::string normalizer_name;
  bool has_charsmap = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  bool treat_whitespace_as_suffix = false;

  // Parses the protobuf bytes; `source` names the file in errors.
  static SentencePieceModel parse(const std::string& bytes, const std::string& source);
  static SentencePieceModel load(const fs::path& file);
};

// Encoder/decoder over a parsed model, matching SentencePieceProcessor::Encode / Decode for BPE models.
class SentencePieceBpe {
 public:
  SentencePieceBpe(SentencePieceModel model, std::string source);

  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int32_t piece_to_id(const std::string& piece) const;  // unk_id when absent
  const SentencePieceModel& model() const { return model_; }

 private:
  std::string normalize(const std::string& text) const;
  SentencePieceModel model_;
  std::string source_;
  std::unordered_map<std::string, int32_t> mergeable_;  // normal, user-defined and unused pieces
  std::unordered_map<std::string, int32_t> all_;        // every piece
  std::vector<std::string> user_defined_;               // matched whole before splitting into characters
  int32_t byte_ids_[256];
};

}  // namespace qlora::tokenizer
