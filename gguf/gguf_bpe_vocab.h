// The byte-level BPE vocabulary of a model folder (tokenizer.json: Llama 3, Qwen2/2.5/3) as llama.cpp's
// convert_hf_to_gguf.py writes it (_set_vocab_gpt2 with gguf-py's SpecialVocab): tokenizer.ggml.model "gpt2", the
// pre-tokenizer name llama.cpp selects its split regex by, tokens as their byte-level vocab strings, token types,
// merges, special token ids, add_bos/add_eos where the files say, and the chat template.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "io/hf_config.h"

namespace qlora::gguf {

struct BpeVocab {
  // tokenizer.ggml.pre. The converter picks it from a hash of the ids the tokenizer gives on a test text, which only
  // identifies published vocabularies; we pick it from the pre-tokenizer's split regex (the thing the name selects):
  //   Llama 3's regex -> "llama-bpe", Qwen2's -> "qwen2", GPT-2's ByteLevel regex -> "gpt-2". Others: an error.
  std::string pre;
  std::vector<std::string> tokens;  // vocab strings ("Ġthe"), added-token contents, "[PAD<i>]" for holes
  std::vector<int32_t> types;       // 1 normal, 3 control, 4 user-defined, 5 unused
  std::vector<std::string> merges;  // "a b"
  // gguf-py SpecialVocab: tokenizer_config.json's <typ>_token looked up among added_tokens, else config.json's
  // <typ>_token_id (an integer).
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, sep_id = -1, pad_id = -1;
  // From the post-processor's TemplateProcessing (leading BOS, trailing EOS), overridden by tokenizer_config.json's
  // add_bos_token / add_eos_token. Unset: the key is not written (llama.cpp's default for the pre type applies).
  std::optional<bool> add_bos, add_eos;
  std::string chat_template;
};

// `vocab_size`: config.json's (the embedding rows); ids past the tokenizer's are "[PAD<i>]" UNUSED entries.
// qlora::Error naming the file for a tokenizer.json that is not byte-level BPE or whose regex is unknown to llama.cpp.
BpeVocab load_bpe_vocab(const std::filesystem::path& model_dir, int64_t vocab_size);
void add_bpe_vocab(GgufWriter& w, const BpeVocab& vocab);

// Whether llama.cpp's converter treats an added token as CONTROL although it is not marked special
// (does_token_look_special: <|...|>, <｜...｜>, <unused...>, <pad>, <mask>, <2mass>, [@BOS@]).
bool token_looks_special(const std::string& text);

}  // namespace qlora::gguf
