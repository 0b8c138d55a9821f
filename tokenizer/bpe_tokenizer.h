// BPE tokenizer read from an HF model folder's tokenizer.json (+ tokenizer_config.json), exact to Hugging Face
// tokenizers for byte-level files (Llama 3, Qwen2/2.5/3, GPT-2: checked against golden ids of Meta's Llama 3 file and
// of Qwen2-style files) and char-level files with byte fallback (Gemma, Llama 2 style: golden ids of a Gemma-style
// file made by transformers' own converter).
//
// Supported tokenizer.json components (anything else is a qlora::Error naming the component and the file):
//   model:          BPE (vocab; merges as "a b" strings or ["a", "b"] pairs; ignore_merges; dropout null; no
//                   continuing_subword_prefix / end_of_word_suffix). Byte-level when the pre-tokenizer has a
//                   ByteLevel step; otherwise char-level: symbols are UTF-8 characters, unknown ones become "<0xHH>"
//                   byte tokens (byte_fallback) or unk (fused when fuse_unk)
//   added_tokens:   matched in the raw text before normalization (leftmost-longest; lstrip / rstrip / single_word)
//   normalizer:     null, Sequence, Prepend, Replace (String pattern), NFC (tokenizer/unicode_nfc.h)
//   pre_tokenizer:  Sequence, Split (Regex or String pattern; any behaviour; invert), ByteLevel (last step or alone)
//   decoder:        byte-level: ByteLevel (or null / Sequence containing only ByteLevel); char-level: Replace
//                   (String), ByteFallback, Fuse, Strip, in that order (or a Sequence of them)
//   post_processor: null, ByteLevel, TemplateProcessing (single template), Sequence of these
//
// Differences from HF worth knowing:
//   * Invalid UTF-8 in the input (HF takes Rust Strings, so never sees any) is replaced by U+FFFD, one per maximal
//     invalid subpart, before encoding (what Python's bytes.decode(errors="replace") gives).
//   * decode() returns the exact bytes of the tokens (special tokens as their text); it does not apply
//     clean_up_tokenization_spaces and does not replace a UTF-8 sequence cut by the end of `ids` (or an invalid run of
//     byte-fallback tokens) with U+FFFD. For generation use BpeStreamDecoder, which holds back incomplete sequences.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace qlora::tokenizer {

class BpeTokenizer : public Tokenizer {
 public:
  // Reads model_dir/tokenizer.json and, when present, model_dir/tokenizer_config.json (bos/eos/pad/unk tokens,
  // add_bos_token, add_eos_token, chat_template). Errors name the file and the component.
  static std::unique_ptr<BpeTokenizer> load(const fs::path& model_dir);
  ~BpeTokenizer() override;

  // HF `tokenizer.encode(text, add_special_tokens=False)`: special-token strings in the text (e.g. "<|eot_id|>")
  // ARE parsed into their ids, unlike the sentencepiece tokenizer. add_bos / add_eos prepend bos_id() / append
  // eos_id() (when the model has one).
  std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const override;
  // parse_special = false treats special-token strings as plain text (HF encode_special_tokens=True); added tokens
  // that are not special are still matched. No BOS/EOS added.
  std::vector<int32_t> encode_with_specials(std::string_view text, bool parse_special) const;
  // HF `tokenizer.encode(text)` with add_special_tokens=True: applies the post-processor template (for Llama 3.1
  // files: BOS first; the original Llama 3 file's ByteLevel post-processor adds nothing).
  std::vector<int32_t> encode_hf(std::string_view text) const;

  std::string decode(const std::vector<int32_t>& ids) const override;
  // The bytes one token decodes to (special tokens: their text). Throws qlora::Error for ids out of range.
  const std::string& token_bytes(int32_t id) const;

  std::string id_to_piece(int32_t id) const override;            // vocab string ("Ġthe") or added-token content
  int32_t piece_to_id(const std::string& piece) const override;  // also finds added tokens; unk_id() if unknown
  int32_t vocab_size() const override;                           // model vocab + added tokens (Llama 3: 128256)
  int32_t bos_id() const override;  // tokenizer_config bos_token, else the template's leading special token
  int32_t eos_id() const override;  // tokenizer_config eos_token
  int32_t unk_id() const override;  // model.unk_token; -1 when none (Llama 3)
  int32_t pad_id() const override;  // tokenizer_config pad_token; -1 when none

  bool is_special(int32_t id) const;         // an added token marked "special"
  bool adds_bos_by_default() const;          // post-processor template starts with BOS, or add_bos_token is true
  bool adds_eos_by_default() const;          // template ends with EOS, or add_eos_token is true
  const std::string& chat_template() const;  // tokenizer_config chat_template ("default" one when a list); "" if none
  const fs::path& tokenizer_file() const;

 private:
  BpeTokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The Tokenizer-interface entry point for folders with tokenizer.json.
std::unique_ptr<Tokenizer> load_bpe_tokenizer(const fs::path& model_dir);

// Incremental detokenizer for generation: push() returns the text that is complete so far, holding back the bytes
// of a UTF-8 character split across tokens; finish() flushes the rest (an incomplete tail becomes U+FFFD).
// Concatenating all push() results and finish() gives decode(all ids) for output that is valid UTF-8.
class BpeStreamDecoder {
 public:
  explicit BpeStreamDecoder(const BpeTokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string finish();

 private:
  const BpeTokenizer& tokenizer_;
  std::string pending_;
};

// The same hold-back logic on raw bytes, for any tokenizer whose tokens decode to byte strings.
class Utf8StreamBuffer {
 public:
  std::string push(std::string_view bytes);
  std::string finish();

 private:
  std::string pending_;
};

}  // namespace qlora::tokenizer
