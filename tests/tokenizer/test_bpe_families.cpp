// BPE tokenizer.json files of the Qwen2/2.5/3 (byte-level, NFC) and Gemma (char-level, byte fallback) shapes, made by
// transformers' own tokenizer classes (tests/interop_bpe/make_family_tokenizers.py): every golden string gives the
// ids of Hugging Face `tokenizers`, with and without special-token parsing, and decodes to what it decodes.
// The NFC normalizer on its own against hand-checked Unicode examples (UAX #15 and the Unicode data).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_nfc.h"

namespace qlora::tokenizer {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// QLORA_BPE_FAMILIES: a folder made by make_family_tokenizers.py with other seeds (the `interop` ctest).
fs::path families_dir() {
  const char* env = std::getenv("QLORA_BPE_FAMILIES");
  return env ? fs::path(env) : test::fixtures_dir() / "bpe_families";
}

void check_golden(const std::string& family) {
  const fs::path dir = families_dir() / family;
  const auto tok = BpeTokenizer::load(dir);
  std::ifstream in(dir / "golden.jsonl");
  ASSERT_TRUE(in) << "missing " << dir / "golden.jsonl";
  std::string line;
  int n = 0, bad_ids = 0, bad_plain = 0, bad_decode = 0;
  while (std::getline(in, line)) {
    const json rec = json::parse(line);
    const auto text = rec["text"].get<std::string>();
    const auto want = rec["ids"].get<Ids>();
    ++n;
    if (tok->encode_with_specials(text, true) != want && ++bad_ids <= 5)
      ADD_FAILURE() << family << ": ids differ for " << json(text).dump();
    if (tok->encode_with_specials(text, false) != rec["ids_plain"].get<Ids>() && ++bad_plain <= 5)
      ADD_FAILURE() << family << ": plain ids differ for " << json(text).dump();
    const std::string decoded = rec["decoded"].get<std::string>();
    // HF decodes an invalid run of byte tokens to U+FFFD; ours returns the bytes (bpe_tokenizer.h): compare the rest.
    if (decoded.find("\xEF\xBF\xBD") == std::string::npos && tok->decode(want) != decoded && ++bad_decode <= 5)
      ADD_FAILURE() << family << ": decode differs for " << json(text).dump();
  }
  EXPECT_GT(n, 600);
  EXPECT_EQ(bad_ids, 0) << "of " << n;
  EXPECT_EQ(bad_plain, 0) << "of " << n;
  EXPECT_EQ(bad_decode, 0) << "of " << n;
}

TEST(BpeFamilies, Qwen2MatchesGoldenIds) {
  check_golden("qwen2");
}

TEST(BpeFamilies, GemmaMatchesGoldenIds) {
  check_golden("gemma");
}

TEST(BpeFamilies, GemmaByteFallbackAndSpecials) {
  const auto tok = BpeTokenizer::load(test::fixtures_dir() / "bpe_families" / "gemma");
  // U+1F600 is not in the 700-token vocabulary: its four UTF-8 bytes become <0xF0> <0x9F> <0x98> <0x80>.
  const Ids ids = tok->encode_with_specials("\xF0\x9F\x98\x80", true);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(tok->id_to_piece(ids[0]), "<0xF0>");
  EXPECT_EQ(tok->id_to_piece(ids[3]), "<0x80>");
  EXPECT_EQ(tok->decode(ids), "\xF0\x9F\x98\x80");
  // Spaces are U+2581 in the vocabulary and spaces again when decoded; no dummy prefix (Gemma).
  const Ids hw = tok->encode_with_specials("a b", true);
  EXPECT_EQ(tok->decode(hw), "a b");
  EXPECT_EQ(tok->id_to_piece(hw.back()).rfind("\xE2\x96\x81", 0), 0u) << tok->id_to_piece(hw.back());
  EXPECT_EQ(tok->piece_to_id("<start_of_turn>"), 4);
  EXPECT_EQ(tok->bos_id(), 2);
  EXPECT_EQ(tok->eos_id(), 1);
  // A folder with only this tokenizer.json loads through the generic entry point.
  EXPECT_EQ(load_tokenizer(test::fixtures_dir() / "bpe_families" / "gemma")->encode("a b", false, false), hw);
}

TEST(BpeFamilies, QwenNormalizesToNfcBeforeSplitting) {
  const auto tok = BpeTokenizer::load(test::fixtures_dir() / "bpe_families" / "qwen2");
  // "e" + COMBINING ACUTE is "é" after NFC: the same ids as the precomposed text.
  EXPECT_EQ(tok->encode_with_specials("cafe\xCC\x81", true), tok->encode_with_specials("caf\xC3\xA9", true));
  EXPECT_EQ(tok->piece_to_id("<|im_start|>"), 1002);
  EXPECT_TRUE(tok->is_special(1002));
  EXPECT_FALSE(tok->is_special(1003));  // <tool_call>: an added token that is not special
}

TEST(Nfc, ComposesReordersAndKeepsExclusions) {
  EXPECT_EQ(nfc("abc"), "abc");
  EXPECT_EQ(nfc("e\xCC\x81"), "\xC3\xA9");                     // e + U+0301 -> U+00E9
  EXPECT_EQ(nfc("\xE2\x84\xAB"), "\xC3\x85");                  // ANGSTROM SIGN U+212B -> U+00C5 (singleton)
  EXPECT_EQ(nfc("\xE2\x84\xA6"), "\xCE\xA9");                  // OHM SIGN U+2126 -> U+03A9
  EXPECT_EQ(nfc("\xEF\xAC\x81"), "\xEF\xAC\x81");              // U+FB01 ligature: a compatibility mapping only
  EXPECT_EQ(nfc("\xE1\x84\x80\xE1\x85\xA1"), "\xEA\xB0\x80");  // Hangul L + V -> U+AC00
  EXPECT_EQ(nfc("\xEA\xB0\x80\xE1\x86\xA8"), "\xEA\xB0\x81");  // LV + T -> LVT U+AC01
  // U+0958 DEVANAGARI QA is a composition exclusion: it decomposes to U+0915 U+093C and stays so.
  EXPECT_EQ(nfc("\xE0\xA5\x98"), "\xE0\xA4\x95\xE0\xA4\xBC");
  // Canonical order: dot below (ccc 220) before dot above (230), then composition: q + U+0323 U+0307 stays
  // (no composite), s + U+0323 + U+0307 -> U+1E69.
  EXPECT_EQ(nfc("s\xCC\x87\xCC\xA3"), "\xE1\xB9\xA9");
  EXPECT_EQ(nfc("q\xCC\x87\xCC\xA3"), "q\xCC\xA3\xCC\x87");
  // A blocked mark: a + U+0328 (ogonek, ccc 202) + U+0301 (230) -> U+0105 U+0301 (ogonek composes first).
  EXPECT_EQ(nfc("a\xCC\xA8\xCC\x81"), "\xC4\x85\xCC\x81");
  EXPECT_STREQ(nfc_unicode_version(), "14.0.0");
}

}  // namespace
}  // namespace qlora::tokenizer

namespace qlora::tokenizer {
namespace {

TEST(TokenizerVsConfig, MoreTokensThanTheEmbeddingIsAClearError) {
  const fs::path dir = test::temp_dir();
  fs::copy_file(test::fixtures_dir() / "bpe_families" / "qwen2" / "tokenizer.json", dir / "tokenizer.json");
  write_file_atomic(dir / "config.json", R"({"vocab_size": 2048})");  // padding beyond the tokenizer: fine
  EXPECT_EQ(load_tokenizer(dir)->vocab_size(), 1005);
  write_file_atomic(dir / "config.json", R"({"vocab_size": 1000})");  // 5 added tokens past the embedding
  const std::string msg = test::error_of([&] { load_tokenizer(dir); });
  EXPECT_CONTAINS(msg, "tokenizer.json: 1005 tokens, but");
  EXPECT_CONTAINS(msg, "says vocab_size 1000");
}

// Found by reading after fuzz_trainer_state's float-to-integer finding: a Strip decoder's start / stop went through
// value(key, size_t(0)), so 1e30 was a float-to-integer conversion out of range (undefined behaviour). HF tokenizers
// reads them as usize: integers >= 0 only.
TEST(BpeFamilies, StripDecoderCountsMustBeNonNegativeIntegers) {
  const fs::path dir = test::temp_dir();
  json j = json::parse(read_file(test::fixtures_dir() / "bpe_families" / "gemma" / "tokenizer.json"));
  auto with_strip = [&](const json& start) {
    json t = j;
    t["decoder"]["decoders"].push_back({{"type", "Strip"}, {"content", " "}, {"start", start}, {"stop", 0}});
    write_file_atomic(dir / "tokenizer.json", t.dump());
  };
  with_strip(1);
  EXPECT_NO_THROW((void)BpeTokenizer::load(dir));
  for (const json& bad : {json(1e30), json(-1), json(1.5), json("1")}) {
    with_strip(bad);
    const std::string msg = test::error_of([&] { (void)BpeTokenizer::load(dir); });
    EXPECT_CONTAINS(msg, "tokenizer.json");
    EXPECT_CONTAINS(msg, "decoder Strip: start");
  }
}

}  // namespace
}  // namespace qlora::tokenizer
