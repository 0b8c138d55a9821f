// Byte-level BPE tokenizer: golden ids from Hugging Face tokenizers (the Rust library) on Meta's Llama 3
// tokenizer.json (tests/interop_bpe/make_golden.py), round trips, special tokens, UTF-8 handling, streaming, and
// clear errors for unsupported tokenizer.json components (small hand-written files with hand-computed ids).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "test_util.h"
#include "tokenizer/bpe_pretokenizer.h"
#include "tokenizer/bpe_tokenizer.h"

namespace qlora::tokenizer {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

fs::path llama3_dir() {
  return test::source_dir() / "assets" / "llama3-tokenizer";
}

const BpeTokenizer& llama3() {
  static const std::unique_ptr<BpeTokenizer> tok = BpeTokenizer::load(llama3_dir());
  return *tok;
}

bool is_valid_utf8(const std::string& s) {
  std::string unused;
  return bpe::repair_utf8(s, &unused);
}

TEST(BpeLlama3, MatchesGoldenIds) {
  const auto& tok = llama3();
  // QLORA_BPE_GOLDEN: another file made by make_golden.py (the `interop` ctest uses fresh seeds).
  const char* env = std::getenv("QLORA_BPE_GOLDEN");
  const fs::path golden = env ? fs::path(env) : test::fixtures_dir() / "bpe_golden_llama3.jsonl";
  std::ifstream in(golden);
  ASSERT_TRUE(in) << "missing " << golden;
  std::string line;
  int n = 0, bad_ids = 0, bad_plain = 0, bad_decode = 0;
  while (std::getline(in, line)) {
    const json rec = json::parse(line);
    const auto text = rec["text"].get<std::string>();
    const auto want = rec["ids"].get<Ids>();
    const auto want_plain = rec["ids_plain"].get<Ids>();
    ++n;
    const Ids got = tok.encode_with_specials(text, /*parse_special=*/true);
    if (got != want && ++bad_ids <= 5) ADD_FAILURE() << "ids differ for " << json(text).dump();
    const Ids got_plain = tok.encode_with_specials(text, /*parse_special=*/false);
    if (got_plain != want_plain && ++bad_plain <= 5) ADD_FAILURE() << "plain ids differ for " << json(text).dump();
    if (tok.decode(want) != text && ++bad_decode <= 5) ADD_FAILURE() << "decode differs for " << json(text).dump();
    if (tok.decode(want_plain) != text) ++bad_decode;
  }
  EXPECT_GT(n, 3000);
  EXPECT_EQ(bad_ids, 0) << "of " << n;
  EXPECT_EQ(bad_plain, 0) << "of " << n;
  EXPECT_EQ(bad_decode, 0) << "of " << n;
}

TEST(BpeLlama3, KnownIdsAndVocabulary) {
  const auto& tok = llama3();
  // Well-known Llama 3 ids (e.g. from the model card examples).
  EXPECT_EQ(tok.encode("Hello world"), (Ids{9906, 1917}));
  EXPECT_EQ(tok.encode(" Hello world"), (Ids{22691, 1917}));
  EXPECT_EQ(tok.vocab_size(), 128256);
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.eos_id(), 128001);
  EXPECT_EQ(tok.unk_id(), -1);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.piece_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(tok.piece_to_id("<|start_header_id|>"), 128006);
  EXPECT_EQ(tok.piece_to_id("<|end_header_id|>"), 128007);
  EXPECT_EQ(tok.piece_to_id("no such piece"), -1);
  EXPECT_EQ(tok.id_to_piece(1917), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(tok.id_to_piece(128009), "<|eot_id|>");
  EXPECT_EQ(tok.token_bytes(1917), " world");
  EXPECT_TRUE(tok.is_special(128009));
  EXPECT_FALSE(tok.is_special(1917));
  EXPECT_THROW(tok.id_to_piece(128256), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
  // Meta's original file: ByteLevel post-processor and no add_bos_token, so HF's encode(text) adds nothing.
  EXPECT_FALSE(tok.adds_bos_by_default());
  EXPECT_EQ(tok.encode_hf("Hello world"), (Ids{9906, 1917}));
  EXPECT_NE(tok.chat_template().find("<|start_header_id|>"), std::string::npos);
}

TEST(BpeLlama3, BosEosAndSpecialTokens) {
  const auto& tok = llama3();
  EXPECT_EQ(tok.encode("Hello world", true, true), (Ids{128000, 9906, 1917, 128001}));
  EXPECT_EQ(tok.encode("", true, false), (Ids{128000}));
  // Specials are parsed by encode() (HF behaviour) and kept as text by encode_with_specials(.., false).
  EXPECT_EQ(tok.encode("Hi<|eot_id|>"), (Ids{13347, 128009}));
  const Ids plain = tok.encode_with_specials("Hi<|eot_id|>", false);
  for (int32_t id : plain) EXPECT_FALSE(tok.is_special(id));
  EXPECT_EQ(tok.decode(plain), "Hi<|eot_id|>");
  EXPECT_EQ(tok.decode({128006}), "<|start_header_id|>");
  // The Tokenizer-interface loader gives the same tokenizer.
  const auto base = load_bpe_tokenizer(llama3_dir());
  EXPECT_EQ(base->encode("<|begin_of_text|>Hello world"), (Ids{128000, 9906, 1917}));
}

TEST(BpeLlama3, InvalidUtf8IsReplaced) {
  const auto& tok = llama3();
  const std::string fffd = "\xEF\xBF\xBD";
  // One U+FFFD per maximal invalid subpart (Unicode / Python errors="replace" / Rust from_utf8_lossy).
  struct Case {
    std::string in, want;
  };
  const std::vector<Case> cases = {
      {"a\xFF"
       "b",
       "a" + fffd + "b"},
      {"\xC0\x80", fffd + fffd},
      {"\xE2\x82(", fffd + "("},
      {"x\xF0\x9F\x98", "x" + fffd},
      {"\xED\xA0\x80", fffd + fffd + fffd},  // a surrogate is not UTF-8
      {"\xF4\x90\x80\x80", fffd + fffd + fffd + fffd},
      {"ok \xC3\xA9", "ok \xC3\xA9"},
  };
  for (const auto& c : cases) {
    std::string out;
    const bool valid = bpe::repair_utf8(c.in, &out);
    EXPECT_EQ(valid ? c.in : out, c.want) << json(c.want).dump();
    EXPECT_EQ(tok.encode(c.in), tok.encode(c.want));
  }
}

TEST(BpeLlama3, StreamDecoderHoldsBackSplitCharacters) {
  const auto& tok = llama3();
  // "😀" = F0 9F 98 80 fed as four single-byte tokens.
  const std::string emoji = "\xF0\x9F\x98\x80";
  BpeStreamDecoder dec(tok);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(dec.push(tok.piece_to_id(bpe::byte_to_unicode(uint8_t(emoji[k])))), "") << k;
  }
  EXPECT_EQ(dec.push(tok.piece_to_id(bpe::byte_to_unicode(uint8_t(emoji[3])))), emoji);
  EXPECT_EQ(dec.finish(), "");
  // An incomplete tail is flushed as U+FFFD.
  EXPECT_EQ(dec.push(tok.piece_to_id(bpe::byte_to_unicode(0xE4))), "");
  EXPECT_EQ(dec.finish(), "\xEF\xBF\xBD");
  // Streaming real text: every chunk is valid UTF-8 and the chunks add up to the text.
  const std::string text = "Emoji 👨‍👩‍👧‍👦 🫠 and 你好世界, Ångström — ok<|eot_id|>";
  BpeStreamDecoder dec2(tok);
  std::string joined;
  int held_back = 0;
  for (int32_t id : tok.encode(text)) {
    const std::string chunk = dec2.push(id);
    EXPECT_TRUE(is_valid_utf8(chunk));
    if (chunk.empty()) ++held_back;
    joined += chunk;
  }
  joined += dec2.finish();
  EXPECT_EQ(joined, text);
  EXPECT_GT(held_back, 0);  // some character was split across tokens
  Utf8StreamBuffer buf;
  EXPECT_EQ(buf.push("a\xE4\xBD"), "a");
  EXPECT_EQ(buf.push("\xA0z"), "\xE4\xBD\xA0z");
}

// ---- Small hand-written tokenizer.json files ----

// Vocab: the 256 byte-level characters (id = byte value) plus a few merges.
json tiny_tokenizer_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[bpe::byte_to_unicode(uint8_t(b))] = b;
  const std::string G = "\xC4\xA0";  // "Ġ" = byte ' '
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  vocab[G + "w"] = 260;
  vocab["lo"] = 261;
  json j;
  j["version"] = "1.0";
  j["added_tokens"] =
      json::array({{{"id", 262}, {"content", "<s>"}, {"special", true}},
                   {{"id", 263}, {"content", "</s>"}, {"special", true}},
                   {{"id", 264}, {"content", "[X]"}, {"special", false}, {"lstrip", true}, {"rstrip", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {262}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {{"type", "ByteLevel"}};
  // Rank order: "l l" before "h e" before "l o": "hello" -> h e ll o -> he ll o -> hell o -> hello.
  j["model"] = {{"type", "BPE"},
                {"vocab", vocab},
                {"ignore_merges", false},
                {"byte_fallback", false},
                {"merges", json::array({"l l", "h e", "l o", "he ll", "hell o", G + " w"})}};
  return j;
}

fs::path write_tokenizer(const json& j, const json& config = json()) {
  const fs::path dir = test::temp_dir();
  std::ofstream(dir / "tokenizer.json") << j.dump();
  if (!config.is_null()) std::ofstream(dir / "tokenizer_config.json") << config.dump();
  return dir;
}

TEST(BpeTiny, MergesByRankAndTemplate) {
  const auto tok = BpeTokenizer::load(write_tokenizer(tiny_tokenizer_json()));
  EXPECT_EQ(tok->vocab_size(), 265);
  EXPECT_EQ(tok->encode("hello"), (Ids{259}));
  // " wallo": GPT-2 regex gives " wallo"; Ġ w -> Ġw; "l l" -> ll; "lo" never forms since ll took the l.
  EXPECT_EQ(tok->encode(" wallo"), (Ids{260, 'a', 257, 'o'}));
  EXPECT_EQ(tok->encode("lo"), (Ids{261}));
  EXPECT_EQ(tok->encode("hel lo"), (Ids{256, 'l', ' ', 261}));
  // No tokenizer_config.json: BOS comes from the template; encode_hf applies the template.
  EXPECT_EQ(tok->bos_id(), 262);
  EXPECT_EQ(tok->eos_id(), -1);
  EXPECT_TRUE(tok->adds_bos_by_default());
  EXPECT_EQ(tok->encode_hf("hello"), (Ids{262, 259}));
  EXPECT_EQ(tok->encode("hello", true, true), (Ids{262, 259}));  // no EOS known
  EXPECT_EQ(tok->decode({262, 259, 260}), "<s>hello w");
}

TEST(BpeTiny, PairMergesAndIgnoreMerges) {
  json j = tiny_tokenizer_json();
  json pairs = json::array();
  for (const auto& m : j["model"]["merges"]) {
    const auto s = m.get<std::string>();
    pairs.push_back(json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)}));
  }
  j["model"]["merges"] = pairs;
  // Drop the "hell o" merge: "hello" now needs ignore_merges to become one token.
  j["model"]["merges"].erase(4);
  auto tok = BpeTokenizer::load(write_tokenizer(j));
  EXPECT_EQ(tok->encode("hello"), (Ids{258, 'o'}));
  j["model"]["ignore_merges"] = true;
  tok = BpeTokenizer::load(write_tokenizer(j));
  EXPECT_EQ(tok->encode("hello"), (Ids{259}));
}

TEST(BpeTiny, AddedTokensStripAndConfig) {
  json config = {{"bos_token", "<s>"},
                 {"eos_token", {{"content", "</s>"}, {"__type", "AddedToken"}}},
                 {"add_bos_token", true},
                 {"chat_template", "{{ messages }}"}};
  const auto tok = BpeTokenizer::load(write_tokenizer(tiny_tokenizer_json(), config));
  EXPECT_EQ(tok->eos_id(), 263);
  EXPECT_EQ(tok->chat_template(), "{{ messages }}");
  // [X] has lstrip + rstrip: the spaces around it are swallowed.
  EXPECT_EQ(tok->encode("lo  [X]  lo"), (Ids{261, 264, 261}));
  // Non-special added tokens stay parsed when specials are not.
  EXPECT_EQ(tok->encode_with_specials("<s>[X]", false), (Ids{'<', 's', '>', 264}));
  EXPECT_EQ(tok->encode("</s><s>"), (Ids{263, 262}));
}

TEST(BpeTiny, SplitPreTokenizerBehaviours) {
  json j = tiny_tokenizer_json();
  auto with_split = [&](const std::string& behavior, bool invert) {
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}},
                      {{"type", "ByteLevel"}, {"use_regex", false}}})}};
    return BpeTokenizer::load(write_tokenizer(j));
  };
  // Pieces of "lo-lo--lo" are merged separately: "lo" only forms inside a piece.
  EXPECT_EQ(with_split("Removed", false)->encode("lo-lo--lo"), (Ids{261, 261, 261}));
  EXPECT_EQ(with_split("Isolated", false)->encode("lo-lo"), (Ids{261, '-', 261}));
  // MergedWithNext on "l-lo": pieces "l", "-lo" -> l, -, lo.
  EXPECT_EQ(with_split("MergedWithNext", false)->encode("l-lo"), (Ids{'l', '-', 261}));
  // MergedWithPrevious on "lo-o": pieces "lo-", "o".
  EXPECT_EQ(with_split("MergedWithPrevious", false)->encode("lo-o"), (Ids{261, '-', 'o'}));
  // Invert: "-" pieces are the kept content, the rest is the delimiter -> Removed keeps only the dashes.
  EXPECT_EQ(with_split("Removed", true)->encode("lo-lo"), (Ids{'-'}));
}

void expect_unsupported(const json& j, const std::string& component) {
  try {
    BpeTokenizer::load(write_tokenizer(j));
    ADD_FAILURE() << "expected an error naming " << component;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(component), std::string::npos) << msg;
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  }
}

TEST(BpeTiny, UnsupportedComponentsAreClearErrors) {
  json j = tiny_tokenizer_json();
  j["normalizer"] = {{"type", "NFKC"}};
  expect_unsupported(j, "normalizer");
  j = tiny_tokenizer_json();
  j["model"]["type"] = "Unigram";
  expect_unsupported(j, "model");
  j = tiny_tokenizer_json();
  j["model"]["byte_fallback"] = true;
  expect_unsupported(j, "byte_fallback");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}};
  expect_unsupported(j, "pre_tokenizer");
  j = tiny_tokenizer_json();
  // No ByteLevel step makes a char-level BPE, which cannot decode with ByteLevel.
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}};
  expect_unsupported(j, "decoder: ByteLevel");
  j = tiny_tokenizer_json();
  j["decoder"] = {{"type", "Metaspace"}};
  expect_unsupported(j, "decoder");
  j = tiny_tokenizer_json();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  expect_unsupported(j, "post_processor");
  j = tiny_tokenizer_json();
  j["model"]["merges"].push_back("q z");  // "qz" is not in the vocab
  expect_unsupported(j, "merges");
  // Missing file and bad JSON name the file.
  const fs::path dir = test::temp_dir();
  EXPECT_THROW(BpeTokenizer::load(dir), Error);
  std::ofstream(dir / "tokenizer.json") << "{ not json";
  EXPECT_THROW(BpeTokenizer::load(dir), Error);
}

TEST(BpeApp, TokenizeAndDecode) {
  if (!fs::exists(test::bin_dir() / "qlora-tokenize")) GTEST_SKIP() << "qlora-tokenize not built";
  const std::string dir = llama3_dir().string();
  auto r = test::run_app("qlora-tokenize", "--model " + dir + " --text 'Hello world<|eot_id|>' --special");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "9906 1917 128009\n");
  r = test::run_app("qlora-tokenize", "--model " + dir + " --decode --text '9906 1917 128009'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "Hello world<|eot_id|>");
  r = test::run_app("qlora-tokenize", "--model " + dir + " --decode --text '9906 999999'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
}  // namespace qlora::tokenizer
