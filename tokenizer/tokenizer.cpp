#include "tokenizer/tokenizer.h"

#include "common/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/sentencepiece_model.h"

namespace qlora::tokenizer {

// tokenizer.model (a sentencepiece ModelProto), read and encoded natively (tokenizer/sentencepiece_model.h).
class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const fs::path& model_file)
      : path_(model_file), bpe_(SentencePieceModel::load(model_file), model_file.string()) {}

  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int32_t> out;
    if (add_bos && bos_id() >= 0) out.push_back(bos_id());
    const auto ids = bpe_.encode(text);
    out.insert(out.end(), ids.begin(), ids.end());
    if (add_eos && eos_id() >= 0) out.push_back(eos_id());
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override { return bpe_.decode(ids); }

  std::string id_to_piece(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) {
      throw Error(path_.string() + ": token id " + std::to_string(id) + " out of range [0, " +
                  std::to_string(vocab_size()) + ")");
    }
    return bpe_.model().pieces[id].piece;
  }
  int32_t piece_to_id(const std::string& piece) const override { return bpe_.piece_to_id(piece); }
  int32_t vocab_size() const override { return static_cast<int32_t>(bpe_.model().pieces.size()); }
  int32_t bos_id() const override { return bpe_.model().bos_id; }
  int32_t eos_id() const override { return bpe_.model().eos_id; }
  int32_t unk_id() const override { return bpe_.model().unk_id; }
  int32_t pad_id() const override { return bpe_.model().pad_id; }

 private:
  fs::path path_;
  SentencePieceBpe bpe_;
};

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const fs::path& model_file) {
  return std::make_unique<SentencePieceTokenizer>(model_file);
}

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& model_dir) {
  if (!fs::is_directory(model_dir)) throw_file_error(model_dir.string(), "model folder does not exist");
  const fs::path spm = model_dir / "tokenizer.model";
  if (fs::exists(spm)) return load_sentencepiece_tokenizer(spm);
  // Byte-level BPE (Llama 3 and others that ship only tokenizer.json): tokenizer/bpe_tokenizer.h.
  if (fs::exists(model_dir / "tokenizer.json")) return load_bpe_tokenizer(model_dir);
  throw_file_error(model_dir.string(), "no tokenizer found (expected tokenizer.model or tokenizer.json)",
                   "copy tokenizer.model (or tokenizer.json) from the base model's folder");
}

}  // namespace qlora::tokenizer
