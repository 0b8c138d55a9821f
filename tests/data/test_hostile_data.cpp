// Hostile training data (issue #20): a line far longer than any example, or a record nested deep, is a bad record
// naming FILE:LINE (an error, or skipped per data.on_bad_line) and is never read whole into memory. The reference is
// the file as written here: its line numbers and byte offsets, counted independently of the reader.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>

#include "common/error.h"
#include "common/log.h"
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

using test::error_of;

const std::string kGood = R"({"prompt": "a", "completion": "b"})";

// A completion record whose prompt is `n` bytes of 'x'.
std::string long_record(size_t n) {
  std::string r = R"({"prompt": ")";
  r.append(n, 'x');
  r.append(R"(", "completion": "b"})");
  return r;
}

// The parts joined by appending (GCC 12 misreads long chains of operator+ on strings as overflows).
std::string joined(std::initializer_list<std::string> parts) {
  std::string out;
  for (const auto& p : parts) out.append(p);
  return out;
}

void drain(DataLoader& dl) {
  while (dl.next()) {
  }
}

DataConfig config_for(const fs::path& dir, const std::string& extra) {
  return make_config("train: " + (dir / "train.jsonl").string() +
                     "\nformat: completion\nshuffle_buffer: 0\nmax_seq_len: 64\npacking: false\n" + extra);
}

TEST(HostileRecords, ALongLineIsReadPastKeepingPositions) {
  const auto dir = temp_dir();
  const std::string long_line = long_record(5000);
  write_text_file(dir / "train.jsonl", joined({kGood, "\n", long_line, "\r\n\n", kGood, "\n"}));
  RecordSource src({dir / "train.jsonl"}, /*max_record_bytes=*/1024);
  const auto r1 = src.next();
  ASSERT_TRUE(r1);
  EXPECT_FALSE(r1->too_long);
  EXPECT_EQ(r1->text, kGood);
  const auto r2 = src.next();
  ASSERT_TRUE(r2);
  EXPECT_TRUE(r2->too_long);
  EXPECT_TRUE(r2->text.empty());
  EXPECT_EQ(r2->pos.line, 2);
  EXPECT_EQ(r2->pos.offset, int64_t(kGood.size() + 1));
  const auto r3 = src.next();
  ASSERT_TRUE(r3);
  EXPECT_EQ(r3->text, kGood);
  EXPECT_EQ(r3->pos.line, 4);
  EXPECT_EQ(r3->pos.offset, int64_t(kGood.size() + 1 + long_line.size() + 2 + 1));
  EXPECT_EQ(r3->pos.record, 2);
  EXPECT_FALSE(src.next());
  // Seeking back to the long record finds it again, still too long.
  EXPECT_TRUE(src.read_at(r2->pos).too_long);
  // A record of exactly the limit is kept whole.
  RecordSource exact({dir / "train.jsonl"}, /*max_record_bytes=*/int64_t(long_line.size()));
  exact.next();
  EXPECT_EQ(exact.next()->text, long_line);
}

TEST(HostileRecords, ALongParagraphInATextFileIsTooLong) {
  const auto dir = temp_dir();
  write_text_file(dir / "t.txt",
                  joined({"short one\n\n", std::string(600, 'y'), "\n", std::string(600, 'z'), "\n\nend\n"}));
  RecordSource src({dir / "t.txt"}, /*max_record_bytes=*/1024);
  EXPECT_EQ(src.next()->text, "short one");
  const auto big = src.next();
  EXPECT_TRUE(big->too_long);
  EXPECT_EQ(big->pos.line, 3);
  EXPECT_EQ(src.next()->text, "end");
}

TEST(HostileRecords, ALongLineFailsNamingFileAndLine) {
  const auto dir = temp_dir();
  write_text_file(dir / "train.jsonl", joined({kGood, "\n", long_record(5000), "\n", kGood, "\n"}));
  ByteTokenizer tok;
  const std::string msg = error_of([&] {
    DataLoader dl(config_for(dir, "max_record_bytes: 1024\n"), tok, Split::kTrain, 1, 1, 1);
    drain(dl);
  });
  EXPECT_CONTAINS(msg, (dir / "train.jsonl").string() +
                           ":2: bad completion record: longer than data.max_record_bytes = 1024 bytes");
  EXPECT_CONTAINS(msg, "on_bad_line: skip");
}

TEST(HostileRecords, ALongLineIsSkippedWhenAsked) {
  const auto dir = temp_dir();
  write_text_file(dir / "train.jsonl", joined({kGood, "\n", long_record(5000), "\n", kGood, "\n"}));
  ByteTokenizer tok;
  DataLoader dl(config_for(dir, "max_record_bytes: 1024\non_bad_line: skip\n"), tok, Split::kTrain, 1, 1, 1);
  int64_t examples = 0;
  while (auto b = dl.next()) examples += b->num_examples;
  EXPECT_EQ(examples, 2);
  EXPECT_EQ(dl.stats().bad_lines_skipped, 1);
}

TEST(HostileRecords, AHundredMegabyteLineNeverSitsInMemory) {
  const auto dir = temp_dir();
  constexpr size_t kLineBytes = size_t{100} << 20;
  {
    std::ofstream out(dir / "train.jsonl", std::ios::binary);
    out << kGood << "\n"
        << R"({"prompt": ")";
    const std::string chunk(1 << 20, 'x');
    for (size_t i = 0; i < kLineBytes / chunk.size(); ++i) out << chunk;
    out << R"(", "completion": "b"})"
        << "\n"
        << kGood << "\n";
  }
  ByteTokenizer tok;
  const size_t before = current_rss_bytes();
  DataLoader dl(config_for(dir, "on_bad_line: skip\n"), tok, Split::kTrain, 1, 1, 1);  // the default bound
  drain(dl);
  const size_t growth = current_rss_bytes() - std::min(before, current_rss_bytes());
  EXPECT_EQ(dl.stats().bad_lines_skipped, 1);
  constexpr size_t kMaxGrowth = size_t{32} << 20;  // the default bound is 4 MiB; the line is 100 MiB
  EXPECT_LT(growth, kMaxGrowth);
}

TEST(HostileRecords, ARecordNestedDeepIsABadRecord) {
  const auto dir = temp_dir();
  write_text_file(dir / "train.jsonl",
                  joined({kGood, "\n{\"prompt\": ", std::string(200000, '['), std::string(200000, ']'), "}\n"}));
  ByteTokenizer tok;
  const std::string msg = error_of([&] {
    DataLoader dl(config_for(dir, ""), tok, Split::kTrain, 1, 1, 1);
    drain(dl);
  });
  EXPECT_CONTAINS(msg, (dir / "train.jsonl").string() +
                           ":2: bad completion record: malformed JSON (JSON nested deeper than 64 levels)");
}

TEST(HostileRecords, MaxRecordBytesIsValidated) {
  const auto c = make_config("train: t\nmax_record_bytes: 2048\n");
  EXPECT_EQ(c.max_record_bytes, 2048);
  EXPECT_EQ(make_config("train: t\n").max_record_bytes, int64_t{4} << 20);
  const std::string msg = error_of([] { make_config("train: t\nmax_record_bytes: 10\n"); });
  EXPECT_CONTAINS(msg, "cfg.yaml:2");
  EXPECT_CONTAINS(msg, "data.max_record_bytes");
  EXPECT_CONTAINS(msg, "must be >= 1024 (got 10)");
}

}  // namespace
}  // namespace qlora::data
