// What a RecordSource has read of each file (the data part of the trainer's resume fingerprint): after every record
// the digest is exactly the FNV-1a of the file's bytes up to the cursor, computed here straight from the file
// (fnv1a64 itself is checked against FNV's published vectors in common/hash.h), for every layout, across the read
// buffer's chunk boundaries, after a seek to a saved cursor and over a second epoch.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/hash.h"
#include "data/record_source.h"
#include "test_util.h"

namespace qlora::data {
namespace {

// A file well over the reader's 64 KiB chunk, so that digests cross chunk boundaries.
constexpr int kRecords = 5000;

std::string jsonl_text() {
  std::string s;
  for (int i = 0; i < kRecords; ++i) {
    s += R"({"text": "record )" + std::to_string(i) + std::string(static_cast<size_t>(i % 37), 'x') + "\"}" +
         (i % 5 == 0 ? "\r\n" : "\n");
    if (i % 11 == 0) s += "\n  \n";  // blank lines between records
  }
  return s;
}

std::string array_text() {
  std::string s = "\xEF\xBB\xBF [\n";
  for (int i = 0; i < kRecords; ++i) {
    s += std::string(i ? ",\n  " : "  ") + R"({"text": "element )" + std::to_string(i) + " [with] {brackets}\"}";
  }
  return s + "\n]\n";
}

std::string paragraphs_text() {
  std::string s;
  for (int i = 0; i < kRecords; ++i) s += "Paragraph " + std::to_string(i) + "\nsecond line\n\n";
  return s;
}

uint64_t prefix_hash(const std::string& bytes, int64_t n) {
  return fnv1a64(std::string_view(bytes).substr(0, static_cast<size_t>(n)));
}

// Reads `file` to the end, checking the digest against the file's bytes after the records (each of the first 100,
// then every 37th) and at the end.
void expect_digests_follow_the_cursor(const fs::path& file, const std::string& bytes) {
  RecordSource src({file});
  EXPECT_EQ(src.read_digests().at(0).bytes, 0);
  int64_t records = 0;
  while (auto rec = src.next()) {
    if (++records > 100 && records % 37 != 0) continue;  // every record near the start, then a sample
    const ReadDigest d = src.read_digests().at(0);
    ASSERT_EQ(d.bytes, src.position().offset) << file << " record " << records;
    ASSERT_EQ(d.fnv1a64, prefix_hash(bytes, d.bytes)) << file << " record " << records;
  }
  EXPECT_EQ(records, kRecords) << file;
  const ReadDigest end = src.read_digests().at(0);
  EXPECT_EQ(end.bytes, static_cast<int64_t>(bytes.size())) << file;
  EXPECT_EQ(end.fnv1a64, fnv1a64(bytes)) << file;
}

TEST(ReadDigest, FollowsTheCursorInEveryLayout) {
  const fs::path dir = test::temp_dir();
  const std::vector<std::pair<std::string, std::string>> files = {
      {"lines.jsonl", jsonl_text()}, {"array.json", array_text()}, {"paragraphs.txt", paragraphs_text()}};
  for (const auto& [name, bytes] : files) {
    ASSERT_GT(bytes.size(), size_t{2} << 16) << name;  // crosses chunk boundaries
    write_file_atomic(dir / name, bytes);
    expect_digests_follow_the_cursor(dir / name, bytes);
  }
}

TEST(ReadDigest, ASeekToASavedCursorHashesThePrefixOnceAndASecondEpochKeepsTheLongest) {
  const fs::path dir = test::temp_dir();
  const std::string a = jsonl_text(), b = paragraphs_text();
  write_file_atomic(dir / "a.jsonl", a);
  write_file_atomic(dir / "b.txt", b);
  RecordSource first({dir / "a.jsonl", dir / "b.txt"});
  for (int i = 0; i < kRecords + 700; ++i) ASSERT_TRUE(first.next());
  const SourcePos saved = first.position();
  ASSERT_EQ(saved.file, 1);

  // A fresh source at the saved cursor (a resumed run): nothing read until next(), then b's prefix to the cursor.
  RecordSource resumed({dir / "a.jsonl", dir / "b.txt"});
  resumed.seek(saved);
  EXPECT_EQ(resumed.read_digests().at(1).bytes, 0);
  ASSERT_TRUE(resumed.next());
  const auto d = resumed.read_digests();
  EXPECT_EQ(d.at(0).bytes, 0) << "a.jsonl was read before the seek, by another source";
  EXPECT_EQ(d.at(1).bytes, resumed.position().offset);
  EXPECT_EQ(d.at(1).fnv1a64, prefix_hash(b, d.at(1).bytes));

  // To the end, then a second epoch from the start: the digests stay those of the whole files.
  while (first.next()) {
  }
  first.seek(SourcePos{});
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(first.next());
  const auto again = first.read_digests();
  EXPECT_EQ(again.at(0).bytes, static_cast<int64_t>(a.size()));
  EXPECT_EQ(again.at(0).fnv1a64, fnv1a64(a));
  EXPECT_EQ(again.at(1).bytes, static_cast<int64_t>(b.size()));
  EXPECT_EQ(again.at(1).fnv1a64, fnv1a64(b));
  // read_at (the shuffle buffer's re-read) counts nothing.
  RecordSource peek({dir / "a.jsonl", dir / "b.txt"});
  (void)peek.read_at(saved);
  EXPECT_EQ(peek.read_digests().at(1).bytes, 0);
}

TEST(ReadDigest, HashFilePrefix) {
  const fs::path dir = test::temp_dir();
  const std::string bytes = array_text();
  write_file_atomic(dir / "f.json", bytes);
  for (int64_t n :
       {int64_t{0}, int64_t{1}, int64_t{65535}, int64_t{65536}, int64_t{65537}, static_cast<int64_t>(bytes.size())}) {
    EXPECT_EQ(hash_file_prefix(dir / "f.json", n), prefix_hash(bytes, n)) << n;
  }
  EXPECT_EQ(hash_file_prefix(dir / "f.json", static_cast<int64_t>(bytes.size()) + 1), std::nullopt);
  EXPECT_EQ(hash_file_prefix(dir / "f.json", -1), std::nullopt);
  EXPECT_EQ(hash_file_prefix(dir / "missing.json", 0), std::nullopt);
  EXPECT_EQ(hash_file_prefix(dir, 0), std::nullopt);  // a directory
}

TEST(ReadDigest, ACursorPastTheEndOfATruncatedFileIsAnError) {
  const fs::path dir = test::temp_dir();
  const std::string bytes = jsonl_text();
  write_file_atomic(dir / "a.jsonl", bytes);
  RecordSource src({dir / "a.jsonl"});
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(src.next());
  const SourcePos saved = src.position();
  write_file_atomic(dir / "a.jsonl", bytes.substr(0, static_cast<size_t>(saved.offset - 1)));
  RecordSource resumed({dir / "a.jsonl"});
  resumed.seek(saved);
  const std::string msg = test::error_of([&] { (void)resumed.next(); });
  EXPECT_CONTAINS(msg, (dir / "a.jsonl").string() + ": cannot seek to byte " + std::to_string(saved.offset) +
                           ": the file has only " + std::to_string(saved.offset - 1) + " bytes");
}

}  // namespace
}  // namespace qlora::data
