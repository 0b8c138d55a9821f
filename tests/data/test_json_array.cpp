// JSON array files (a .json file holding one top-level array, like Stanford's alpaca_data.json), read as a stream of
// elements: positions, seeking, resuming, elements split across the stream buffer, strings holding brackets and
// escaped quotes, the record size bound, malformed arrays, and the loader on top. The reference for each element is
// its exact byte range in the file as written here, and nlohmann's parse of the whole array.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/data_loader.h"
#include "data/record_source.h"
#include "data_test_util.h"
#include "test_util.h"

namespace qlora::data {
namespace {

using test::ByteTokenizer;
using test::make_config;
using test::temp_dir;
using test::write_text_file;

// Reads every record of `files`.
std::vector<RawRecord> read_all(RecordSource& src) {
  std::vector<RawRecord> out;
  while (auto r = src.next()) out.push_back(*r);
  return out;
}

// The byte offset and 1-based line of the first occurrence of `needle` in `text`.
std::pair<int64_t, int64_t> locate(const std::string& text, const std::string& needle) {
  const size_t at = text.find(needle);
  EXPECT_NE(at, std::string::npos) << needle;
  return {static_cast<int64_t>(at), 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n')};
}

// Pretty-printed, with strings that hold brackets, braces, commas and escaped quotes and backslashes.
const std::string kElem1 = R"({"instruction": "Say [1, {2}] \"hi\", please", "input": "", "output": "ok\\"})";
const std::string kElem2 =
    "{\n    \"instruction\": \"nested\",\n    \"meta\": {\"a\": [1, [2, {\"b\": \"]}\"}]]},\n"
    "    \"output\": \"done\"\n  }";
const std::string kElem3 = R"({"instruction": "third", "output": "\u00e9\n"})";

std::string array_text() {
  return "\xEF\xBB\xBF  \n[\n  " + kElem1 + ",\n  " + kElem2 + " ,  " + kElem3 + "\n]\n\n";
}

TEST(JsonArray, ElementsComeOutWholeWithTheirPositions) {
  const auto dir = temp_dir();
  const std::string text = array_text();
  write_text_file(dir / "a.json", text);
  EXPECT_EQ(file_layout(dir / "a.json"), FileLayout::kJsonArray);
  RecordSource src({dir / "a.json"});
  const auto recs = read_all(src);
  ASSERT_EQ(recs.size(), 3u);
  const std::vector<std::string> want = {kElem1, kElem2, kElem3};
  const auto whole = nlohmann::json::parse(text.substr(3));  // the independent reference: the whole array parsed
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(recs[i].text, want[i]);
    EXPECT_FALSE(recs[i].too_long);
    EXPECT_FALSE(recs[i].plain_text);
    EXPECT_EQ(nlohmann::json::parse(recs[i].text), whole[i]);
    const auto [offset, line] = locate(text, want[i]);
    EXPECT_EQ(recs[i].pos.offset, offset) << i;
    EXPECT_EQ(recs[i].pos.line, line) << i;
    EXPECT_EQ(recs[i].pos.record, static_cast<int64_t>(i));
    EXPECT_EQ(src.read_at(recs[i].pos).text, want[i]);  // seekable by its position
  }
  EXPECT_EQ(recs[1].pos.line, 4);
  EXPECT_EQ(src.where(recs[2].pos), (dir / "a.json").string() + ":8");
}

TEST(JsonArray, SeekToAnElementOrToTheCursorResumes) {
  const auto dir = temp_dir();
  write_text_file(dir / "a.json", array_text());
  write_text_file(dir / "b.jsonl", "{\"instruction\": \"jsonl\", \"output\": \"x\"}\n");
  RecordSource src({dir / "a.json", dir / "b.jsonl"});
  const auto all = read_all(src);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[3].pos.record, 3);
  // The cursor after each record (the byte after an element) resumes with the next record.
  for (size_t k = 0; k < all.size(); ++k) {
    RecordSource a({dir / "a.json", dir / "b.jsonl"});
    for (size_t i = 0; i < k; ++i) a.next();
    const SourcePos cursor = a.position();
    RecordSource b({dir / "a.json", dir / "b.jsonl"});
    b.seek(cursor);
    const auto rest = read_all(b);
    ASSERT_EQ(rest.size(), all.size() - k) << k;
    for (size_t i = 0; i < rest.size(); ++i) {
      EXPECT_EQ(rest[i].text, all[k + i].text);
      EXPECT_EQ(rest[i].pos.offset, all[k + i].pos.offset);
      EXPECT_EQ(rest[i].pos.record, all[k + i].pos.record);
    }
  }
  // Seeking to an element's own position reads from it on.
  src.seek(all[1].pos);
  EXPECT_EQ(src.next()->text, kElem2);
  EXPECT_EQ(src.next()->text, kElem3);
}

TEST(JsonArray, ElementsLongerThanTheStreamBufferAndTheRecordBound) {
  // Elements of 10 kB and 20 kB straddle any stream buffer boundary; the bound keeps the short ones and skips the
  // 20 kB one without holding it.
  const auto dir = temp_dir();
  const std::string a = "{\"output\": \"" + std::string(10000, 'a') + "\", \"instruction\": \"[{\\\"\"}";
  const std::string b = "{\"output\": \"" + std::string(20000, 'b') + "\"}";
  const std::string c = "{\"output\": \"c\", \"instruction\": \"}]\"}";
  const std::string text = "[" + a + "," + b + "," + c + "]";
  write_text_file(dir / "big.json", text);
  RecordSource src({dir / "big.json"}, /*max_record_bytes=*/16384);
  const auto recs = read_all(src);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].text, a);
  EXPECT_TRUE(recs[1].too_long);
  EXPECT_TRUE(recs[1].text.empty());
  EXPECT_EQ(recs[1].pos.offset, static_cast<int64_t>(1 + a.size() + 1));
  EXPECT_EQ(recs[2].text, c);
  EXPECT_TRUE(src.read_at(recs[1].pos).too_long);
  // Exactly the bound is kept whole.
  RecordSource exact({dir / "big.json"}, /*max_record_bytes=*/static_cast<int64_t>(b.size()));
  exact.next();
  EXPECT_EQ(exact.next()->text, b);
}

TEST(JsonArray, JsonlNamedJsonAndEmptyArraysStillWork) {
  const auto dir = temp_dir();
  write_text_file(dir / "lines.json", "{\"a\": [1]}\n\n{\"b\": 2}\n");
  EXPECT_EQ(file_layout(dir / "lines.json"), FileLayout::kLines);
  RecordSource lines({dir / "lines.json"});
  EXPECT_EQ(read_all(lines).size(), 2u);
  write_text_file(dir / "empty.json", " [ \n ] \n");
  RecordSource empty({dir / "empty.json"});
  EXPECT_TRUE(read_all(empty).empty());
  // A .jsonl file is never an array file, whatever its first byte.
  write_text_file(dir / "x.jsonl", "[1]\n");
  EXPECT_EQ(file_layout(dir / "x.jsonl"), FileLayout::kLines);
}

// The qlora::Error text of reading all of `text` as a .json file.
std::string array_error(const std::string& text) {
  const auto dir = temp_dir();
  write_text_file(dir / "bad.json", text);
  RecordSource src({dir / "bad.json"});
  return test::error_of([&] { read_all(src); });
}

TEST(JsonArray, MalformedArraysNameFileLineAndWhatWasExpected) {
  const std::string ok = "{\"output\": \"x\"}";
  const auto expect = [](const std::string& text, const std::string& where, const std::string& what) {
    SCOPED_TRACE(text);
    const std::string err = array_error(text);
    EXPECT_CONTAINS(err, "bad.json:" + where + ": " + what);
    EXPECT_CONTAINS(err, "HINT: a .json file holds one JSON array of objects");
  };
  expect("[\n" + ok + ",\n" + ok + "\n", "4", "the array is not closed: the file ends where ',' or ']' was expected");
  expect("[\n" + ok + "\n  x " + ok + "]", "3", "expected ',' or ']' between array elements, got 'x'");
  expect("[" + ok + "x]", "1", "expected ',' or ']' after the array element that starts at line 1");
  expect("[" + ok + ",\n]", "2", "expected an array element after ',', got ']' (a trailing comma");
  expect("[,\n" + ok + "]", "1", "expected an array element, got ','");
  expect("[" + ok + "]\n\njunk", "3", "unexpected 'j' after the array's closing ']'");
  expect("[\n{\"a\": \"unclosed}]\n", "3",
         "the file ends inside the array element that starts at line 2 (an unclosed string)");
  expect("[\n{\"a\": [1}]", "2", "unexpected '}' in the array element that starts at line 2, expected ']'");
  expect("[\n{\"a\": 1", "2", "the file ends inside the array element that starts at line 2 (an unclosed '{' or '[')");
}

TEST(JsonArray, LoaderReadsAlpacaArraysAndReportsBadElements) {
  const auto dir = temp_dir();
  const std::string text =
      "[\n  {\"instruction\": \"i1\", \"input\": \"\", \"output\": \"o1\"},\n  42,\n"
      "  {\"instruction\": \"i3\", \"output\": \"o3\"}\n]\n";
  write_text_file(dir / "alpaca_data.json", text);
  write_text_file(dir / "same.jsonl",
                  "{\"instruction\": \"i1\", \"input\": \"\", \"output\": \"o1\"}\n"
                  "{\"instruction\": \"i3\", \"output\": \"o3\"}\n");
  ByteTokenizer tok;
  const std::string common = "\nformat: alpaca\nshuffle_buffer: 0\npacking: false\nmax_seq_len: 512\n";
  // A non-object element is a bad record at its line (the array itself is sound).
  DataLoader strict(make_config("train: " + (dir / "alpaca_data.json").string() + common), tok, Split::kTrain, 8, 1, 1);
  const std::string err = test::error_of([&] { strict.next(); });
  EXPECT_CONTAINS(err, "alpaca_data.json:3: bad alpaca record: expected a JSON object, got number");
  // With on_bad_line: skip it is skipped, and the rest is exactly what the same records as JSONL give.
  DataLoader lenient(make_config("train: " + (dir / "alpaca_data.json").string() + common + "on_bad_line: skip\n"), tok,
                     Split::kTrain, 8, 1, 1);
  DataLoader jsonl(make_config("train: " + (dir / "same.jsonl").string() + common), tok, Split::kTrain, 8, 1, 1);
  const auto a = lenient.next();
  const auto b = jsonl.next();
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(torch::equal(a->input_ids, b->input_ids));
  EXPECT_TRUE(torch::equal(a->labels, b->labels));
  EXPECT_EQ(lenient.stats().bad_lines_skipped, 1);
}

TEST(JsonArray, LoaderResumesMidArrayWithTheEvalSplit) {
  const auto dir = temp_dir();
  std::string text = "[";
  for (int i = 0; i < 40; ++i) {
    text += std::string(i ? ",\n" : "\n") + "  {\"prompt\": \"p" + std::to_string(i) + "\",\n   \"completion\": \"c" +
            std::to_string(i) + "\"}";
  }
  text += "\n]";
  write_text_file(dir / "d.json", text);
  ByteTokenizer tok;
  const auto cfg = make_config("train: " + (dir / "d.json").string() +
                               "\nformat: completion\neval_fraction: 0.25\nshuffle_buffer: 4\nmax_seq_len: 64\n");
  // Uninterrupted vs stopped after 3 batches and resumed in a fresh loader: the same batches.
  DataLoader full(cfg, tok, Split::kTrain, 2, 7, 2);
  std::vector<torch::Tensor> want;
  while (auto b = full.next()) want.push_back(b->input_ids);
  DataLoader first(cfg, tok, Split::kTrain, 2, 7, 2);
  for (int i = 0; i < 3; ++i) first.next();
  DataLoader resumed(cfg, tok, Split::kTrain, 2, 7, 2);
  resumed.restore(first.state());
  std::vector<torch::Tensor> got;
  while (auto b = resumed.next()) got.push_back(b->input_ids);
  ASSERT_EQ(got.size() + 3, want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(torch::equal(got[i], want[i + 3])) << i;
  // The eval split takes the records the train split does not.
  DataLoader eval(cfg, tok, Split::kEval, 64, 7, 1);
  DataLoader train(cfg, tok, Split::kTrain, 64, 7, 1);
  while (eval.next()) {
  }
  while (train.next()) {
  }
  EXPECT_EQ(eval.stats().examples + train.stats().examples, 40);
  EXPECT_GT(eval.stats().examples, 0);
}

}  // namespace
}  // namespace qlora::data
