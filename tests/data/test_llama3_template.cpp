// The `llama3` template with Meta's real Llama 3 tokenizer gives exactly the ids of Meta's own chat_template
// (rendered and tokenized by transformers' apply_chat_template: tests/interop_bpe/make_chat_golden.py), trains only
// the assistant turns and their <|eot_id|>, and refuses a tokenizer without the Llama 3 special tokens.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "common/error.h"
#include "data/prompt_template.h"
#include "data/tokenize.h"
#include "data_test_util.h"
#include "test_util.h"
#include "tokenizer/bpe_tokenizer.h"

namespace qlora::data {
namespace {

using nlohmann::json;

fs::path llama3_tokenizer_dir() {
  return test::source_dir() / "assets" / "llama3-tokenizer";
}

TEST(Llama3Template, IdsEqualMetaChatTemplate) {
  const auto tok = tokenizer::BpeTokenizer::load(llama3_tokenizer_dir());
  // QLORA_LLAMA3_CHAT_GOLDEN: a file just made by make_chat_golden.py (the `interop` ctest regenerates it).
  const char* env = std::getenv("QLORA_LLAMA3_CHAT_GOLDEN");
  const fs::path path = env ? fs::path(env) : test::fixtures_dir() / "llama3_chat_golden.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "missing " << path;
  const json golden = json::parse(in);
  ASSERT_GE(golden.size(), 3u);
  const DataConfig cfg = test::make_config("train: t\nformat: chat\ntemplate: llama3\nadd_eos: false\n");
  const int32_t eot = tok->piece_to_id("<|eot_id|>");
  for (const auto& g : golden) {
    const Record rec = parse_record(json{{"messages", g["messages"]}}, cfg);
    const TokenizedExample ex = tokenize_segments(render_record(rec, cfg), *tok, /*train_on_prompt=*/false);
    EXPECT_EQ(ex.ids, g["ids"].get<std::vector<int32_t>>()) << g["messages"].dump();
    // Trained: every assistant turn's content and its <|eot_id|>; the turn's last label is that <|eot_id|>.
    int64_t trained_eots = 0;
    for (size_t i = 0; i < ex.ids.size(); ++i) {
      if (ex.labels[i] == kIgnoreIndex) continue;
      EXPECT_EQ(ex.labels[i], ex.ids[i]);
      if (ex.ids[i] == eot) ++trained_eots;
    }
    int64_t assistant_turns = 0;
    for (const auto& m : g["messages"]) assistant_turns += m["role"] == "assistant";
    EXPECT_EQ(trained_eots, assistant_turns);
  }
}

TEST(Llama3Template, TokenizerWithoutTheSpecialTokensIsAClearError) {
  const DataConfig cfg = test::make_config("train: t\nformat: chat\ntemplate: llama3\n");
  const json rec = {{"messages", {{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Yo"}}}}};
  const test::ByteTokenizer bytes;
  try {
    tokenize_segments(render_record(parse_record(rec, cfg), cfg), bytes, false);
    FAIL() << "expected qlora::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("<|start_header_id|>"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qlora::data
