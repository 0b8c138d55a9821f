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
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

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

 private:
  bool open_current();
  // Reads one line (without "\n" or "\r\n") from `in`, keeping at most `limit` bytes of it (*cut: it was longer);
  // advances offset/line; false at EOF.
  static bool read_line(std::ifstream& in, std::string& line, int64_t& offset, int64_t& line_no, size_t limit,
                        bool* cut);
  std::optional<RawRecord> read_record(std::ifstream& in, FileLayout layout, SourcePos& pos) const;
  // The next element of a JSON array file; `pos` is the file's start, an element's first byte or the byte after
  // an element (the cursor after next()).
  std::optional<RawRecord> read_array_element(std::ifstream& in, SourcePos& pos) const;

  std::vector<fs::path> files_;
  size_t max_record_bytes_;
  SourcePos pos_;
  std::ifstream in_;
  bool open_ = false;
  FileLayout layout_ = FileLayout::kLines;  // of the open file
};

bool is_plain_text_file(const fs::path& p);

}  // namespace qlora::data
