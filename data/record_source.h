// Streaming record sources. Files are read a line at a time (never whole); every record carries its
// position (file index, byte offset of its first line, 1-based line number, record index) so a cursor can
// seek straight back to it.
//
// A record is
//   - in a JSONL file (.jsonl / .json / anything but .txt): one non-blank line;
//   - in a JSON array file (a .json file whose first non-blank byte is '[', e.g. Stanford's alpaca_data.json):
//     one top-level element of the array, cut out by a byte scanner that tracks strings, escapes and bracket
//     depth (the file is never read whole; an element may span many lines); its position is its first byte;
//   - in a plain text file (.txt, format text only): one paragraph, i.e. a run of non-blank lines joined with
//     "\n"; blank (whitespace-only) lines separate documents.
// A JSON array whose structure is broken (unclosed, junk between elements, a trailing comma) is a qlora::Error
// naming FILE:LINE and what was expected; a well-formed element that is not a valid record (a number, a bad
// object) is an ordinary bad record, subject to data.on_bad_line.
// Record indices count records across all files of a split in order; they drive the eval_fraction split
// and the rank sharding, so every loader over the same files agrees on them.
//
// What was read: the source folds every byte its parser consumes into a running FNV-1a 64 (common/hash.h) as it
// goes, so read_digests() says, per file, how many bytes from its start were read and their hash, at no second pass
// over the data. The trainer puts them in its resume fingerprint (trainer/data_fingerprint.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <istream>
#include <memory>
#include <optional>
#include <streambuf>
#include <string>
#include <vector>

#include "common/hash.h"

namespace qlora::data {

namespace fs = std::filesystem;

// Expands path specs (a file, a glob such as data/*.jsonl, or a directory: its *.jsonl, *.json and *.txt
// files) into a sorted, de-duplicated file list. Relative specs are tried against the working directory,
// then against base_dir. Nothing found is a qlora::Error naming `key` and the spec.
std::vector<fs::path> resolve_data_files(const std::vector<std::string>& specs, const fs::path& base_dir,
                                         const std::string& key);

struct SourcePos {
  int64_t file = 0;    // index into the file list
  int64_t offset = 0;  // byte offset of the record's first line
  int64_t line = 1;    // 1-based line number of that line
  int64_t record = 0;  // index of the record over the whole file list
};

// How a file's records are laid out (file_layout()).
enum class FileLayout { kLines, kParagraphs, kJsonArray };
// .txt: paragraphs; .json whose first non-blank byte (after an optional UTF-8 BOM) is '[': a JSON array; else lines.
FileLayout file_layout(const fs::path& p);

struct RawRecord {
  std::string text;  // empty when too_long
  SourcePos pos;
  bool plain_text = false;  // from a .txt file (the text itself is the document)
  bool too_long = false;    // longer than the source's max_record_bytes: skipped over, never held whole
};

// The default bound on one record (data.max_record_bytes): far above any real training example, far below what
// would strain memory (a 300 MB line must not be read whole).
inline constexpr int64_t kDefaultMaxRecordBytes = int64_t{4} << 20;

// The first `bytes` bytes of a file and their FNV-1a 64: what a reader consumed of it.
struct ReadDigest {
  int64_t bytes = 0;
  uint64_t fnv1a64 = kFnv1a64Offset;  // fnv1a64() of those bytes (the offset basis for none)
};

// fnv1a64() of the first `bytes` bytes of `file` (read in chunks, never whole); nullopt when it is not a readable
// regular file of at least that many bytes.
std::optional<uint64_t> hash_file_prefix(const fs::path& file, int64_t bytes);

namespace detail {
// A read buffer over one file that folds each byte the reader consumes (moves past; a peek does not count) into a
// running FNV-1a, in order from the file's start.
class HashingFileBuf : public std::streambuf {
 public:
  // Opens `file` and consumes its first `offset` bytes, hashing them; false when it cannot be opened or is shorter.
  bool open(const fs::path& file, int64_t offset);
  // What was consumed so far.
  ReadDigest digest() const;

 protected:
  int_type underflow() override;

 private:
  static constexpr size_t kChunk = size_t{1} << 16;
  std::filebuf file_;
  std::vector<char> buf_;
  ReadDigest folded_;             // the bytes before hashed_
  const char* hashed_ = nullptr;  // the first consumed byte of buf_ not yet in folded_
};
}  // namespace detail

// Reads records from a list of files in order; seekable to any SourcePos it produced. A record longer than
// max_record_bytes comes back as too_long (its position kept, its text not), having held at most that many bytes.
class RecordSource {
 public:
  explicit RecordSource(std::vector<fs::path> files, int64_t max_record_bytes = kDefaultMaxRecordBytes);

  // The next record, or nullopt at the end of the last file.
  std::optional<RawRecord> next();
  // Position of the next record to be read (the cursor).
  const SourcePos& position() const { return pos_; }
  void seek(const SourcePos& pos);
  // Reads the one record at `pos` without moving the cursor.
  RawRecord read_at(const SourcePos& pos) const;

  const std::vector<fs::path>& files() const { return files_; }
  std::string where(const SourcePos& pos) const;  // "FILE:LINE"

  // Per file (as files()), the longest prefix next() has consumed of it since this source was made: the whole file
  // once a pass went through it, up to the cursor in the file being read, nothing for a file not reached. Reopening
  // a file at a saved cursor (seek, then next) reads and hashes the bytes before it once. read_at() does not count.
  std::vector<ReadDigest> read_digests() const;

 private:
  // The file next() reads, with the stream the parsers use over it.
  struct OpenFile {
    detail::HashingFileBuf buf;
    std::istream in{&buf};
  };
  bool open_current();
  void close_current();  // records what was read of the open file first
  // Reads one line (without "\n" or "\r\n") from `in`, keeping at most `limit` bytes of it (*cut: it was longer);
  // advances offset/line; false at EOF.
  static bool read_line(std::istream& in, std::string& line, int64_t& offset, int64_t& line_no, size_t limit,
                        bool* cut);
  std::optional<RawRecord> read_record(std::istream& in, FileLayout layout, SourcePos& pos) const;
  // The next element of a JSON array file; `pos` is the file's start, an element's first byte or the byte after
  // an element (the cursor after next()).
  std::optional<RawRecord> read_array_element(std::istream& in, SourcePos& pos) const;

  std::vector<fs::path> files_;
  size_t max_record_bytes_;
  SourcePos pos_;
  std::unique_ptr<OpenFile> open_;          // null: no file open
  FileLayout layout_ = FileLayout::kLines;  // of the open file
  std::vector<ReadDigest> read_;            // per file: the longest prefix read (read_digests())
};

bool is_plain_text_file(const fs::path& p);

}  // namespace qlora::data
