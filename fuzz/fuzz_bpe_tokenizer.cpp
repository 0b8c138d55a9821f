// Fuzz target: a tokenizer.json (byte-level BPE: vocab, merges, added tokens, normalizer, pre-tokenizer, post-
// processor, decoder), read by BpeTokenizer::load from a model folder, then used on a few texts. Every id encode()
// gives must be a valid index into the vocabulary.
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "tokenizer/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::vector<std::string> kTexts = {"Hello world", "  two  spaces\tand\ttabs\n\nnewlines ",
                                                  "caf\xC3\xA9 \xF0\x9F\x98\x80 1234567 it's",
                                                  std::string("\0\x01\xFF\xFE", 4), "<s>x</s> [X] <|eot_id|>"};
  const fuzz::fs::path dir = fuzz::work_dir() / "bpe";
  fuzz::fs::create_directories(dir);
  fuzz::write_file(dir / "tokenizer.json", fuzz::as_view(data, size));
  fuzz::run_reader([&] {
    const auto tok = tokenizer::BpeTokenizer::load(dir);
    const int32_t vocab = tok->vocab_size();
    for (const std::string& text : kTexts) {
      for (const std::vector<int32_t>& ids : {tok->encode(text, true, true), tok->encode_hf(text),
                                              tok->encode_with_specials(text, /*parse_special=*/false)}) {
        for (int32_t id : ids) {
          if (id < 0 || id >= vocab) std::abort();
        }
        (void)tok->decode(ids);
      }
    }
  });
  return 0;
}
