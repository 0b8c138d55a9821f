// Tokenizer interface used by data/, generation and evaluation, with two implementations: SentencePiece
// (tokenizer.model, Llama 2 and Mistral style) and byte-level BPE (tokenizer.json, Llama 3 and Qwen style,
// tokenizer/bpe_tokenizer.h). load_tokenizer() picks one from what a model folder holds.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace qlora::tokenizer {

namespace fs = std::filesystem;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text; adds BOS/EOS ids when asked. Special-token strings in the text are NOT interpreted.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // Piece string of one id (e.g. "▁the", "<s>").
  virtual std::string id_to_piece(int32_t id) const = 0;
  virtual int32_t piece_to_id(const std::string& piece) const = 0;  // unk id if unknown
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;
  virtual int32_t pad_id() const = 0;  // -1 when the model has none
};

// sentencepiece tokenizer.model. A missing or corrupt file is a qlora::Error naming it.
class SentencePieceTokenizer;
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const fs::path& model_file);

// Picks the tokenizer of an HF model folder: tokenizer.model when present, else tokenizer.json. Errors name the
// folder and what is missing.
std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& model_dir);

}  // namespace qlora::tokenizer
