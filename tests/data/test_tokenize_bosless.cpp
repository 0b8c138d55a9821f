// Templates on a tokenizer without a BOS token (Qwen2/2.5/3: bos_token null): the BOS segment adds nothing, as HF
// does, instead of an id of -1 that crashed the embedding lookup; a tokenizer without an EOS token is a clear error.
#include <gtest/gtest.h>

#include "common/error.h"
#include "data/tokenize.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace qlora::data {
namespace {

TEST(TokenizeBosless, QwenTokenizerStartsWithTheText) {
  const auto tok = tokenizer::load_tokenizer(test::fixtures_dir() / "bpe_families" / "qwen2");
  ASSERT_LT(tok->bos_id(), 0);
  const std::vector<Segment> segs = {{Segment::Kind::kBos, "", false},
                                     {Segment::Kind::kText, "Hello", false},
                                     {Segment::Kind::kText, " world", true},
                                     {Segment::Kind::kEos, "", true}};
  const TokenizedExample ex = tokenize_segments(segs, *tok, false);
  std::vector<int32_t> want = tok->encode("Hello");
  const auto world = tok->encode(" world");
  want.insert(want.end(), world.begin(), world.end());
  want.push_back(tok->eos_id());
  EXPECT_EQ(ex.ids, want);
  for (int32_t id : ex.ids) EXPECT_GE(id, 0);
}

TEST(TokenizeBosless, NoEosTokenIsAClearError) {
  const fs::path dir = test::temp_dir();
  fs::copy_file(test::fixtures_dir() / "bpe_families" / "qwen2" / "tokenizer.json", dir / "tokenizer.json");
  const auto tok = tokenizer::load_tokenizer(dir);  // no tokenizer_config.json: no EOS
  ASSERT_LT(tok->eos_id(), 0);
  const std::string msg = test::error_of([&] { tokenize_segments({{Segment::Kind::kEos, "", true}}, *tok, false); });
  EXPECT_CONTAINS(msg, "the tokenizer has no EOS token");
}

}  // namespace
}  // namespace qlora::data
