// The native sentencepiece reader/encoder against ids produced by the real sentencepiece library
// (tests/fixtures/make_spm_golden.py, python3-sentencepiece 0.1.97) for three models trained with spm_train.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"
#include "tokenizer/sentencepiece_model.h"

namespace qlora::tokenizer {
namespace {

const nlohmann::json& golden() {
  static const nlohmann::json j = nlohmann::json::parse(read_file(test::fixtures_dir() / "spm_golden.json"));
  return j;
}

class SpmGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SpmGolden, EncodeDecodeMatchSentencepiece) {
  const auto& g = golden()["models"][GetParam()];
  const auto path = test::fixtures_dir() / "spm" / GetParam();
  SentencePieceBpe bpe(SentencePieceModel::load(path), path.string());
  const auto& m = bpe.model();
  EXPECT_EQ(static_cast<int64_t>(m.pieces.size()), g["vocab_size"].get<int64_t>());
  EXPECT_EQ(m.unk_id, g["unk_id"].get<int>());
  EXPECT_EQ(m.bos_id, g["bos_id"].get<int>());
  EXPECT_EQ(m.eos_id, g["eos_id"].get<int>());
  EXPECT_EQ(m.pad_id, g["pad_id"].get<int>());
  for (int i = 0; i < 20; ++i) EXPECT_EQ(m.pieces[i].piece, g["pieces_0_20"][i].get<std::string>()) << i;
  const auto& strings = golden()["strings"];
  for (size_t i = 0; i < strings.size(); ++i) {
    const auto text = strings[i].get<std::string>();
    const auto expected = g["ids"][i].get<std::vector<int32_t>>();
    const auto ids = bpe.encode(text);
    EXPECT_EQ(ids, expected) << "string #" << i << ": '" << text << "'";
    EXPECT_EQ(bpe.decode(expected), g["decoded"][i].get<std::string>()) << "string #" << i;
  }
}

// gemma_like.model has Gemma's tokenizer.model settings (no dummy prefix, byte fallback, turn markers as
// user-defined pieces, pad/eos/bos/unk at 0..3); llama_like.model has Llama 2's, which Phi-3 and Mistral share.
INSTANTIATE_TEST_SUITE_P(Models, SpmGolden,
                         ::testing::Values("llama_like.model", "identity_user_symbols.model", "gemma_like.model"));

TEST(SpmModel, ByteFallbackAndSpecialPieces) {
  const auto path = test::fixtures_dir() / "spm" / "llama_like.model";
  SentencePieceBpe bpe(SentencePieceModel::load(path), path.string());
  EXPECT_EQ(bpe.piece_to_id("<s>"), 1);
  EXPECT_EQ(bpe.piece_to_id("</s>"), 2);
  EXPECT_EQ(bpe.piece_to_id("<0x41>"), 3 + 0x41);  // byte pieces follow the 3 specials
  EXPECT_EQ(bpe.piece_to_id("no-such-piece"), 0);
  // Control ids decode to nothing; a lone continuation byte decodes to U+FFFD.
  EXPECT_EQ(bpe.decode({1, 2}), "");
  EXPECT_EQ(bpe.decode({3 + 0x80}), "\xEF\xBF\xBD");
  // A split multi-byte character decodes whole when its bytes are adjacent.
  EXPECT_EQ(bpe.decode({3 + 0xC3, 3 + 0xA9}), "\xC3\xA9");
  EXPECT_THROW(bpe.decode({100000}), Error);
}

TEST(SpmModel, CorruptAndMissingFilesNameThePath) {
  const auto dir = test::temp_dir();
  write_file_atomic(dir / "bad.model", std::string("\x0a\xff\xff\xff\xff\x0f garbage", 12));
  for (const auto& p : {dir / "bad.model", dir / "missing.model"}) {
    try {
      SentencePieceModel::load(p);
      FAIL() << "expected qlora::Error for " << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    }
  }
  write_file_atomic(dir / "empty.model", "");
  EXPECT_THROW(SentencePieceModel::load(dir / "empty.model"), Error);
}

}  // namespace
}  // namespace qlora::tokenizer
