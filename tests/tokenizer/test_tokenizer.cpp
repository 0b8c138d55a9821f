// SentencePiece tokenizer on the tiny model's trained tokenizer.model (made by the make_tiny_model fixture),
// and the errors for missing / corrupt files.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>

#include "common/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace qlora::tokenizer {
namespace {

using qlora::test::temp_dir;
using qlora::test::tiny_model_dir;

const Tokenizer& tiny_tokenizer() {
  static const std::unique_ptr<Tokenizer> tok = load_tokenizer(tiny_model_dir());
  return *tok;
}

void expect_error_mentions(const std::function<void()>& f, const std::vector<std::string>& substrings) {
  try {
    f();
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& s : substrings) EXPECT_NE(msg.find(s), std::string::npos) << "missing '" << s << "' in: " << msg;
  }
}

TEST(SentencePieceTokenizer, SpecialIdsLikeLlama) {
  const Tokenizer& tok = tiny_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 1024);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.id_to_piece(0), "<unk>");
  EXPECT_EQ(tok.id_to_piece(1), "<s>");
  EXPECT_EQ(tok.id_to_piece(2), "</s>");
  EXPECT_EQ(tok.piece_to_id("</s>"), 2);
  EXPECT_EQ(tok.piece_to_id("<0x41>"), 3 + 0x41);  // byte-fallback pieces follow the specials, as in Llama
  EXPECT_EQ(tok.piece_to_id("no-such-piece-xyz"), 0);
  EXPECT_THROW(tok.id_to_piece(1024), Error);
}

TEST(SentencePieceTokenizer, BosEosAdded) {
  const Tokenizer& tok = tiny_tokenizer();
  const auto plain = tok.encode("What is 2 plus 3?");
  const auto both = tok.encode("What is 2 plus 3?", true, true);
  ASSERT_EQ(both.size(), plain.size() + 2);
  EXPECT_EQ(both.front(), 1);
  EXPECT_EQ(both.back(), 2);
  EXPECT_EQ(std::vector<int32_t>(both.begin() + 1, both.end() - 1), plain);
  // Special-token text is not interpreted.
  const auto literal = tok.encode("</s>");
  EXPECT_EQ(std::find(literal.begin(), literal.end(), 2), literal.end());
}

TEST(SentencePieceTokenizer, RoundTrip) {
  const Tokenizer& tok = tiny_tokenizer();
  for (const std::string text :
       {"Hello world", "Below is an instruction that describes a task.\n\n### Instruction:\nWhat is 12 plus 30?",
        "The capital of France is Paris.", "  two  spaces and\ttabs", "naïve café — ☃ 日本語 🙂",
        "1234567890", "x"}) {
    const auto ids = tok.encode(text);
    for (int32_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, tok.vocab_size());
      EXPECT_NE(id, tok.unk_id()) << "byte fallback should avoid <unk> in: " << text;
    }
    EXPECT_EQ(tok.decode(ids), text);
  }
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_EQ(tok.decode({}), "");
}

TEST(SentencePieceTokenizer, SplitsDigitsAndLearnedCorpusWords) {
  const Tokenizer& tok = tiny_tokenizer();
  const auto ids = tok.encode("2024");
  std::string digits;
  for (int32_t id : ids) {
    std::string p = tok.id_to_piece(id);
    if (p.rfind("\xE2\x96\x81", 0) == 0) p = p.substr(3);  // leading "▁"
    EXPECT_LE(p.size(), 1u) << "digit piece '" << p << "' should be a single digit";
    digits += p;
  }
  EXPECT_EQ(digits, "2024");
  // Frequent corpus words are single pieces (BPE learned them).
  EXPECT_EQ(tok.encode("Instruction").size(), 1u);
  EXPECT_EQ(tok.encode("Response").size(), 1u);
}

TEST(SentencePieceTokenizer, DecodeRejectsOutOfRangeIds) {
  EXPECT_THROW(tiny_tokenizer().decode({5, 100000}), Error);
  EXPECT_THROW(tiny_tokenizer().decode({-1}), Error);
}

TEST(SentencePieceTokenizer, MissingFile) {
  const fs::path p = temp_dir() / "tokenizer.model";
  expect_error_mentions([&] { load_sentencepiece_tokenizer(p); }, {p.string(), "not found"});
}

TEST(SentencePieceTokenizer, CorruptFile) {
  const fs::path p = temp_dir() / "tokenizer.model";
  std::ofstream(p) << "this is not a protobuf at all \x01\x02\x03";
  expect_error_mentions([&] { load_sentencepiece_tokenizer(p); }, {p.string(), "not a valid sentencepiece model"});
}

TEST(LoadTokenizer, PicksTokenizerModel) {
  const auto tok = load_tokenizer(tiny_model_dir());
  EXPECT_EQ(tok->vocab_size(), 1024);
}

TEST(LoadTokenizer, EmptyFolderAndMissingFolder) {
  const fs::path dir = temp_dir();
  expect_error_mentions([&] { load_tokenizer(dir); }, {dir.string(), "no tokenizer found", "tokenizer.model"});
  expect_error_mentions([&] { load_tokenizer(dir / "nope"); }, {"nope", "does not exist"});
}

TEST(LoadTokenizer, TokenizerJsonGoesToBpe) {
  // A folder with only tokenizer.json is handed to the byte-level BPE loader; a broken one is an error naming it.
  const fs::path dir = temp_dir();
  std::ofstream(dir / "tokenizer.json") << "{ not json";
  expect_error_mentions([&] { load_tokenizer(dir); }, {"tokenizer.json"});
}

}  // namespace
}  // namespace qlora::tokenizer
