#include "tokenizer/tokenizer.h"

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
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

namespace {

// Every id the tokenizer can produce must index the model's embedding: config.json's vocab_size bounds them (a
// larger model vocabulary is normal padding; a larger tokenizer would index past the embedding rows).
std::unique_ptr<Tokenizer> checked_against_config(std::unique_ptr<Tokenizer> tok, const fs::path& model_dir,
                                                  const fs::path& tokenizer_file) {
  const fs::path config = model_dir / "config.json";
  if (!fs::exists(config)) return tok;
  std::string why;
  const auto j = try_parse_json(read_file(config), &why);
  if (!j || !j->is_object() || !j->contains("vocab_size") || !(*j)["vocab_size"].is_number_integer()) return tok;
  const int64_t vocab = (*j)["vocab_size"].get<int64_t>();
  if (tok->vocab_size() > vocab) {
    throw_file_error(tokenizer_file.string(),
                     std::to_string(tok->vocab_size()) + " tokens, but " + config.string() + " says vocab_size " +
                         std::to_string(vocab) + ": ids from " + std::to_string(vocab) +
                         " on would index past the model's embedding",
                     "the tokenizer belongs to another model, or tokens were added without resizing the "
                     "embeddings; use the tokenizer files the model was trained with");
  }
  return tok;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& model_dir) {
  if (!fs::is_directory(model_dir)) throw_file_error(model_dir.string(), "model folder does not exist");
  const fs::path spm = model_dir / "tokenizer.model";
  if (fs::exists(spm)) return checked_against_config(load_sentencepiece_tokenizer(spm), model_dir, spm);
  // Byte-level BPE (Llama 3 and others that ship only tokenizer.json): tokenizer/bpe_tokenizer.h.
  if (fs::exists(model_dir / "tokenizer.json")) {
    return checked_against_config(load_bpe_tokenizer(model_dir), model_dir, model_dir / "tokenizer.json");
  }
  throw_file_error(model_dir.string(), "no tokenizer found (expected tokenizer.model or tokenizer.json)",
                   "copy tokenizer.model (or tokenizer.json) from the base model's folder");
}

}  // namespace qlora::tokenizer
