// Atomic outputs: a failed or interrupted write never leaves a partial file or directory behind.
#include <gtest/gtest.h>

#include <stdexcept>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"

namespace qlora {
namespace {

TEST(AtomicFile, WritesContentsAndLeavesNoTempFile) {
  const auto dir = test::temp_dir();
  write_file_atomic(dir / "a.txt", "hello\n");
  EXPECT_EQ(read_file(dir / "a.txt"), "hello\n");
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1);
}

TEST(AtomicFile, FailureKeepsPreviousVersion) {
  const auto dir = test::temp_dir();
  write_file_atomic(dir / "a.txt", "old");
  EXPECT_THROW(write_file_atomic(dir / "a.txt",
                                 [](FileWriter& w) {
                                   w.write("partial new contents");
                                   throw std::runtime_error("injected failure");
                                 }),
               std::runtime_error);
  EXPECT_EQ(read_file(dir / "a.txt"), "old");
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1) << "temp file left behind";
}

TEST(AtomicFile, PadToWritesZeros) {
  const auto dir = test::temp_dir();
  write_file_atomic(dir / "p.bin", [](FileWriter& w) {
    w.write("ab");
    w.pad_to(8);
    EXPECT_EQ(w.offset(), 8u);
  });
  EXPECT_EQ(read_file(dir / "p.bin"), std::string("ab\0\0\0\0\0\0", 8));
}

TEST(AtomicFile, UnwritableDirectoryNamesThePath) {
  try {
    write_file_atomic("/nonexistent-dir/x.txt", "x");
    FAIL() << "expected qlora::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x.txt"), std::string::npos) << e.what();
  }
}

TEST(AtomicDir, CommitPublishesAndAbandonLeavesNothing) {
  const auto dir = test::temp_dir();
  {
    AtomicDir out(dir / "out", /*overwrite=*/false);
    write_file_atomic(out.path() / "f.txt", "1");
    EXPECT_FALSE(fs::exists(dir / "out"));
    out.commit();
  }
  EXPECT_EQ(read_file(dir / "out" / "f.txt"), "1");
  {
    AtomicDir abandoned(dir / "other", /*overwrite=*/false);
    write_file_atomic(abandoned.path() / "f.txt", "2");
  }  // no commit
  EXPECT_FALSE(fs::exists(dir / "other"));
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1);
}

TEST(AtomicDir, RefusesExistingOutputWithoutOverwrite) {
  const auto dir = test::temp_dir();
  fs::create_directories(dir / "out");
  write_file_atomic(dir / "out" / "keep.txt", "keep");
  try {
    AtomicDir out(dir / "out", /*overwrite=*/false);
    FAIL() << "expected qlora::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir / "out" / "keep.txt"), "keep");
  {
    AtomicDir out(dir / "out", /*overwrite=*/true);
    write_file_atomic(out.path() / "new.txt", "new");
    out.commit();
  }
  EXPECT_FALSE(fs::exists(dir / "out" / "keep.txt"));
  EXPECT_EQ(read_file(dir / "out" / "new.txt"), "new");
}

TEST(ReadFile, MissingFileNamesIt) {
  try {
    read_file("/no/such/file.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/no/such/file.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace qlora
