// common/json_read: a depth limit enforced while parsing, errors that name the file, excerpts that stay short on
// any document. The reference for excerpts of small values is nlohmann's own dump().
#include <gtest/gtest.h>

#include <string>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "test_util.h"

namespace qlora {
namespace {

using json = nlohmann::json;

std::string nested_arrays(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

using test::error_of;

TEST(JsonRead, DepthAtTheLimitParses) {
  const json j = parse_json(nested_arrays(kJsonMaxDepth), "at_limit.json");
  EXPECT_EQ(j.dump(), nested_arrays(kJsonMaxDepth));
}

TEST(JsonRead, OneLevelPastTheLimitIsAnError) {
  const std::string msg = error_of([] { (void)parse_json(nested_arrays(kJsonMaxDepth + 1), "deep.json"); });
  EXPECT_NE(msg.find("deep.json: JSON nested deeper than 64 levels"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HINT:"), std::string::npos) << msg;
}

TEST(JsonRead, NestedTwoHundredThousandDeepIsAnErrorNotACrash) {
  // Objects and arrays mixed, the shape of a hostile config.json value: {"a":[{"a":[ ... ]}]}.
  std::string text;
  constexpr size_t kPairs = 100000;
  for (size_t i = 0; i < kPairs; ++i) text += "{\"a\":[";
  for (size_t i = 0; i < kPairs; ++i) text += "]}";
  const auto dir = test::temp_dir();
  write_file_atomic(dir / "config.json", text);
  const std::string msg = error_of([&] { (void)read_json_file(dir / "config.json"); });
  EXPECT_NE(msg.find((dir / "config.json").string() + ": JSON nested deeper than"), std::string::npos) << msg;
}

TEST(JsonRead, OrderedParseKeepsKeyOrderAndTheSameLimit) {
  const nlohmann::ordered_json j = parse_ordered_json(R"({"b": 1, "a": [2, {"d": 3, "c": 4}]})", "t.json");
  EXPECT_EQ(j.dump(), R"({"b":1,"a":[2,{"d":3,"c":4}]})");
  EXPECT_EQ(json_excerpt(j, /*max_chars=*/1000), j.dump());
  const std::string msg = error_of([] { (void)parse_ordered_json(nested_arrays(100000), "o.json"); });
  EXPECT_NE(msg.find("o.json: JSON nested deeper than 64 levels"), std::string::npos) << msg;
}

TEST(JsonRead, TryParseGivesTheReasonWithoutASource) {
  std::string why;
  EXPECT_FALSE(try_parse_json(nested_arrays(65), &why).has_value());
  EXPECT_EQ(why, "JSON nested deeper than 64 levels");
  EXPECT_FALSE(try_parse_json("{", &why).has_value());
  EXPECT_EQ(why.rfind("not valid JSON: ", 0), 0u) << why;
  EXPECT_EQ(try_parse_json("[1]", &why)->dump(), "[1]");
}

TEST(JsonRead, InvalidJsonNamesTheSource) {
  const std::string msg = error_of([] { (void)parse_json("{\"a\": [1, 2", "x/tokenizer.json"); });
  EXPECT_EQ(msg.rfind("x/tokenizer.json: not valid JSON: ", 0), 0u) << msg;
}

TEST(JsonRead, MissingFileIsAnError) {
  const auto dir = test::temp_dir();
  EXPECT_THROW((void)read_json_file(dir / "absent.json"), Error);
}

TEST(JsonRead, ExcerptOfASmallValueIsItsDump) {
  const json cases[] = {json::parse(R"({"a":[1,2.5,"x"],"b":{"c":null,"d":true}})"),
                        json(42),
                        json("h\u00e9"),
                        json::array(),
                        json::object(),
                        json::parse(R"([[[[1]]]])")};
  for (const json& j : cases) EXPECT_EQ(json_excerpt(j, /*max_chars=*/1000), j.dump());
}

TEST(JsonRead, ExcerptOfALargeValueIsCut) {
  json big = json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  const std::string e = json_excerpt(big, /*max_chars=*/50);
  EXPECT_EQ(e, big.dump().substr(0, 50) + "...");
  const std::string long_string(1 << 20, 'x');
  EXPECT_EQ(json_excerpt(json(long_string), /*max_chars=*/10), "\"xxxxxxxxx...");
}

TEST(JsonRead, ExcerptOfADeepValueBuiltInCodeStaysShallow) {
  // Built by hand (not parsed), so no parse-time limit applies: the excerpt must still not recurse to the bottom.
  json j = 1;
  for (int i = 0; i < 200000; ++i) {
    json outer = json::array();
    outer.push_back(std::move(j));
    j = std::move(outer);
  }
  EXPECT_EQ(json_excerpt(j, /*max_chars=*/100), "[[[[[...]]]]]");
}

TEST(JsonRead, ExcerptCutInsideAMultiByteCharacterStaysValidText) {
  const std::string e = json_excerpt(json("\u00e9\u00e9\u00e9"), /*max_chars=*/4);
  EXPECT_FALSE(e.empty());
  EXPECT_NO_THROW((void)json(e).dump());  // valid UTF-8 (a cut byte became U+FFFD)
}

// fuzz_trainer_state, 2026-12-04: a data cursor position of 1844674407370955161512 (parsed as a double) reached
// get<int64_t>(), a float-to-integer conversion out of range (undefined behaviour; UBSan stopped the fuzzer).
// json_int64 takes JSON integers only, the whole int64 range and no more.
TEST(JsonRead, Int64TakesIntegersOnlyAndTheirWholeRange) {
  EXPECT_EQ(json_int64(parse_json("-9223372036854775808", "t")), INT64_MIN);
  EXPECT_EQ(json_int64(parse_json("9223372036854775807", "t")), INT64_MAX);
  EXPECT_EQ(json_int64(parse_json("42", "t")), 42);
  for (const char* bad : {"9223372036854775808", "18446744073709551615", "1844674407370955161512", "1e21", "1.0",
                          "-0.5", "\"7\"", "true", "null", "[1]"}) {
    EXPECT_THROW((void)json_int64(parse_json(bad, "t")), nlohmann::json::type_error) << bad;
  }
}

}  // namespace
}  // namespace qlora
