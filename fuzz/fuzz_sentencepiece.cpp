// Fuzz target: a tokenizer.model (sentencepiece ModelProto, parsed natively), then encoding and decoding a few
// texts with it. Every id encode() gives must be a valid index into the vocabulary (the embedding table).
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "tokenizer/sentencepiece_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::vector<std::string> kTexts = {"Hello world", "  two  spaces\tand\ttabs\n\nnewlines ",
                                                  "caf\xC3\xA9 \xE2\x96\x81 \xF0\x9F\x98\x80",
                                                  std::string("\0\x01\xFF\xFE", 4), "<s> </s> <unk> <0x41>"};
  fuzz::run_reader([&] {
    tokenizer::SentencePieceModel model =
        tokenizer::SentencePieceModel::parse(std::string(fuzz::as_view(data, size)), "tokenizer.model");
    const tokenizer::SentencePieceBpe bpe(std::move(model), "tokenizer.model");
    const auto vocab = static_cast<int32_t>(bpe.model().pieces.size());
    for (const std::string& text : kTexts) {
      const std::vector<int32_t> ids = bpe.encode(text);
      for (int32_t id : ids) {
        if (id < 0 || id >= vocab) std::abort();
      }
      (void)bpe.decode(ids);
    }
    (void)bpe.piece_to_id("\xE2\x96\x81");
  });
  return 0;
}
