// Hostile tokenizer files (issue #20): each is a clear qlora::Error naming the file and the field, never a crash.
// The references are the formats' own rules: sentencepiece byte pieces read exactly "<0xHH>", token ids run from 0
// to the vocabulary size minus one, and real tokenizer.json files nest Sequence steps one level deep.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <utility>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"
#include "tokenizer/bpe_pretokenizer.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/sentencepiece_model.h"

namespace qlora::tokenizer {
namespace {

using test::error_of;

// `s` with the first `from` replaced by `to`.
std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  if (at == std::string::npos) {
    ADD_FAILURE() << "'" << from << "' not found";
    return s;
  }
  return s.substr(0, at) + to + s.substr(at + from.size());
}

// llama_like.model with its byte piece "<0x41>" rewritten (same length, so the protobuf framing stays valid).
std::string spm_with_byte_piece(const std::string& replacement) {
  EXPECT_EQ(replacement.size(), 6u);
  return replaced(read_file(test::fixtures_dir() / "spm" / "llama_like.model"), "<0x41>", replacement);
}

TEST(HostileSpm, BytePieceMustBeExactlyTwoHexDigits) {
  for (const std::string bad : {"<0x-1>", "<0x+1>", "<0x 1>", "<0xG1>", "<0x4g>", "<0X41>", "<0x41]"}) {
    const std::string msg = error_of([&] {
      SentencePieceBpe bpe(SentencePieceModel::parse(spm_with_byte_piece(bad), "x/tokenizer.model"),
                           "x/tokenizer.model");
    });
    EXPECT_CONTAINS(msg, "x/tokenizer.model: byte piece 68 reads '" + bad + "', expected <0xHH>");
  }
  // Lower-case hex digits are still two hex digits: accepted, same byte.
  const std::string lower = replaced(read_file(test::fixtures_dir() / "spm" / "llama_like.model"), "<0x4A>", "<0x4a>");
  SentencePieceBpe ok(SentencePieceModel::parse(lower, "ok.model"), "ok.model");
  EXPECT_EQ(ok.decode({3 + 0x4A}), "J");
}

// ---- tokenizer.json ----

// A byte-level BPE tokenizer.json with 256 byte tokens and no merges; `extra` is spliced into the top object.
std::string tokenizer_json(const std::string& extra, const std::string& added = "[]") {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[bpe::byte_to_unicode(uint8_t(b))] = b;
  std::string text = R"({"version":"1.0","added_tokens":)";
  text.append(added);
  text.append(R"(,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},)");
  text.append(R"("decoder":{"type":"ByteLevel"},"model":{"type":"BPE","merges":[],"vocab":)");
  text.append(vocab.dump());
  text.append("}");
  text.append(extra);
  text.append("}");
  return text;
}

fs::path write_tokenizer_dir(const std::string& text) {
  const fs::path dir = test::temp_dir();
  write_file_atomic(dir / "tokenizer.json", text);
  return dir;
}

TEST(HostileBpe, TheBaseFileLoads) {
  const auto tok = BpeTokenizer::load(write_tokenizer_dir(tokenizer_json("")));
  EXPECT_EQ(tok->encode("hi"), (std::vector<int32_t>{'h', 'i'}));
}

TEST(HostileBpe, NormalizersNestedAHundredThousandDeep) {
  std::string n;
  constexpr int kDepth = 100000;
  for (int i = 0; i < kDepth; ++i) n += R"({"type":"Sequence","normalizers":[)";
  n += R"({"type":"Prepend","prepend":"x"})";
  for (int i = 0; i < kDepth; ++i) n += "]}";
  const fs::path dir = write_tokenizer_dir(tokenizer_json(",\"normalizer\":" + n));
  const std::string msg = error_of([&] { BpeTokenizer::load(dir); });
  EXPECT_CONTAINS(msg, (dir / "tokenizer.json").string() + ": JSON nested deeper than 64 levels");
}

TEST(HostileBpe, SequencesNestedPastTheLimitWithinTheJsonDepth) {
  // 10 levels of Sequence is 21 levels of JSON: the JSON limit lets it through, the Sequence bound stops it.
  for (const auto& [key, list, leaf] : {std::tuple{"normalizer", "normalizers", R"({"type":"Prepend","prepend":"x"})"},
                                        std::tuple{"pre_tokenizer", "pretokenizers", R"({"type":"ByteLevel"})"},
                                        std::tuple{"decoder", "decoders", R"({"type":"ByteLevel"})"},
                                        std::tuple{"post_processor", "processors", R"({"type":"ByteLevel"})"}}) {
    std::string n;
    for (int i = 0; i < 10; ++i) n += std::string(R"({"type":"Sequence",")") + list + "\":[";
    n += leaf;
    for (int i = 0; i < 10; ++i) n += "]}";
    std::string text = tokenizer_json(std::string(",\"") + key + "\":" + n);
    // The spliced key comes last and so replaces the base file's pre_tokenizer / decoder (JSON: last one wins).
    const fs::path dir = write_tokenizer_dir(text);
    const std::string msg = error_of([&] { BpeTokenizer::load(dir); });
    EXPECT_CONTAINS(msg, std::string(key) + ": Sequence nested deeper than 8");
  }
}

TEST(HostileBpe, VocabIdsAreBoundedByTheVocab) {
  const std::string text = tokenizer_json("");
  for (const auto& [id, want] :
       {std::pair{"2000000000", "id 2000000000 is not an integer in [0, 256)"},
        std::pair{"-3", "id -3 is not an integer in [0, 256)"}, std::pair{"1e300", "is not an integer in [0, 256)"}}) {
    const fs::path dir = write_tokenizer_dir(replaced(text, "\"a\":97", std::string("\"a\":") + id));
    EXPECT_CONTAINS(error_of([&] { BpeTokenizer::load(dir); }), want);
  }
}

TEST(HostileBpe, AddedTokenIdsAreBoundedByTheVocab) {
  const std::string added = R"([{"id":4000000000,"content":"<s>","special":true}])";
  const fs::path dir = write_tokenizer_dir(tokenizer_json("", added));
  const std::string msg = error_of([&] { BpeTokenizer::load(dir); });
  EXPECT_CONTAINS(msg, "added_tokens[\"<s>\"]: id 4000000000 is not an integer in [0, 257)");
  // The next id after the vocab is fine.
  const auto tok = BpeTokenizer::load(write_tokenizer_dir(tokenizer_json("", R"([{"id":256,"content":"<s>"}])")));
  EXPECT_EQ(tok->vocab_size(), 257);
}

TEST(HostileBpe, ErrorMessagesQuoteAnExcerptNotTheDocument) {
  std::string big = "[";
  for (int i = 0; i < 100000; ++i) {
    if (i) big.push_back(',');
    big.append(std::to_string(i));
  }
  big.push_back(']');
  const fs::path dir = write_tokenizer_dir(tokenizer_json(",\"normalizer\":{\"unknown\":" + big + "}"));
  const std::string msg = error_of([&] { BpeTokenizer::load(dir); });
  EXPECT_CONTAINS(msg, "unsupported normalizer: {\"unknown\":[0,1,2,");
  EXPECT_LT(msg.size(), 1000u);
}

TEST(HostileBpe, TokenizerConfigNestedDeepIsAnError) {
  const fs::path dir = write_tokenizer_dir(tokenizer_json(""));
  write_file_atomic(dir / "tokenizer_config.json", "{\"chat_template\":" + std::string(200000, '[') + "}");
  const std::string msg = error_of([&] { BpeTokenizer::load(dir); });
  EXPECT_CONTAINS(msg, (dir / "tokenizer_config.json").string() + ": JSON nested deeper than 64 levels");
}

// Through the CLI: exit 2 (a qlora::Error), one message naming the file; never a signal.
TEST(HostileTokenizerApp, ExitsTwoNamingTheFile) {
  const fs::path deep = write_tokenizer_dir(tokenizer_json(",\"normalizer\":" + std::string(200000, '[')));
  auto r = test::run_app("qlora-tokenize", "--model " + deep.string() + " --text hi");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_CONTAINS(r.output, (deep / "tokenizer.json").string() + ": JSON nested deeper than 64 levels");
  const fs::path spm = test::temp_dir() / "spm";
  fs::create_directories(spm);
  write_file_atomic(spm / "tokenizer.model", spm_with_byte_piece("<0x-1>"));
  r = test::run_app("qlora-tokenize", "--model " + spm.string() + " --text hi");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_CONTAINS(r.output, (spm / "tokenizer.model").string() + ": byte piece 68 reads '<0x-1>'");
}

}  // namespace
}  // namespace qlora::tokenizer
