#include "data/record_source.h"

#include <glob.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <string_view>

#include "common/error.h"

namespace qlora::data {

namespace {

bool has_glob_chars(const std::string& s) {
  return s.find_first_of("*?[") != std::string::npos;
}

std::vector<fs::path> expand_glob(const std::string& pattern) {
  std::vector<fs::path> out;
  glob_t g{};
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      fs::path p = g.gl_pathv[i];
      if (fs::is_regular_file(p)) out.push_back(p);
    }
  }
  ::globfree(&g);
  return out;
}

bool is_data_extension(const fs::path& p) {
  const std::string ext = p.extension().string();
  return ext == ".jsonl" || ext == ".json" || ext == ".txt";
}

// Files matched by one spec, looked up as given.
std::vector<fs::path> expand_spec(const fs::path& spec) {
  if (has_glob_chars(spec.string())) return expand_glob(spec.string());
  std::error_code ec;
  if (fs::is_directory(spec, ec)) {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(spec)) {
      if (e.is_regular_file() && is_data_extension(e.path())) out.push_back(e.path());
    }
    return out;
  }
  if (fs::is_regular_file(spec, ec)) return {spec};
  return {};
}

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; });
}

constexpr int kEof = std::char_traits<char>::eof();

bool is_json_space(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

const char* const kArrayHint =
    "a .json file holds one JSON array of objects, [{...}, {...}], or one object per line (JSONL); "
    "data.on_bad_line: skip cannot skip this, as the array structure itself is broken";

// Reads a JSON array file byte by byte, keeping the byte offset and the 1-based line of the next byte.
class ArrayScanner {
 public:
  ArrayScanner(std::streambuf* buf, SourcePos& pos, std::string file) : buf_(buf), pos_(pos), file_(std::move(file)) {}

  int peek() const { return buf_->sgetc(); }
  int get() {
    const int c = buf_->sbumpc();
    if (c == kEof) return c;
    pos_.offset += 1;
    if (c == '\n') pos_.line += 1;
    return c;
  }
  void skip_space() {
    while (is_json_space(peek())) get();
  }
  // Past the optional UTF-8 byte order mark at the start of the file.
  void skip_bom() {
    static const std::string kBom = "\xEF\xBB\xBF";
    if (peek() != static_cast<unsigned char>(kBom[0])) return;
    for (char b : kBom) {
      if (get() != static_cast<unsigned char>(b)) fail("unexpected bytes at the start of the file", kArrayHint);
    }
  }
  [[noreturn]] void fail(const std::string& what, const std::string& hint) const {
    throw_file_error(file_ + ":" + std::to_string(pos_.line), what, hint);
  }
  static std::string describe(int c) {
    if (c == kEof) return "the end of the file";
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    char buf[16];
    std::snprintf(buf, sizeof(buf), "byte 0x%02X", c);
    return buf;
  }
  // After the array's closing ']': only whitespace may follow.
  void expect_end() {
    skip_space();
    if (peek() != kEof) fail("unexpected " + describe(peek()) + " after the array's closing ']'", kArrayHint);
  }
  // Reads one element starting at the next byte into `text` (at most `limit` bytes kept; *cut: it was longer).
  void scan_element(std::string& text, size_t limit, bool* cut);

 private:
  std::streambuf* buf_;
  SourcePos& pos_;
  std::string file_;
};

// An element is an object or array (up to its matching bracket, outside strings), a string, or a bare scalar (up
// to whitespace, ',' or ']'). Brackets are matched with a stack held up to `limit` deep (deeper ones are counted).
void ArrayScanner::scan_element(std::string& text, size_t limit, bool* cut) {
  text.clear();
  *cut = false;
  const int64_t start_line = pos_.line;
  const int first = peek();
  if (first == kEof || first == ',' || first == ']' || first == '}') {
    fail("expected an array element, got " + describe(first), kArrayHint);
  }
  const bool bare = first != '{' && first != '[' && first != '"';
  std::string closers;  // the expected closing brackets, innermost last
  int64_t deep = 0;     // nesting beyond what `closers` holds
  bool in_string = false, escaped = false;
  for (;;) {
    const int c = peek();
    if (c == kEof) {
      fail("the file ends inside the array element that starts at line " + std::to_string(start_line) +
               (in_string ? " (an unclosed string)" : " (an unclosed '{' or '[')"),
           kArrayHint);
    }
    if (bare && (is_json_space(c) || c == ',' || c == ']')) break;
    get();
    if (text.size() < limit) {
      text.push_back(static_cast<char>(c));
    } else {
      *cut = true;  // read past, never stored
    }
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (closers.size() < limit) {
        closers.push_back(c == '{' ? '}' : ']');
      } else {
        ++deep;
      }
    } else if (c == '}' || c == ']') {
      if (deep > 0) {
        --deep;
      } else if (closers.empty() || closers.back() != c) {
        fail("unexpected '" + std::string(1, static_cast<char>(c)) + "' in the array element that starts at line " +
                 std::to_string(start_line) +
                 (closers.empty() ? std::string() : ", expected '" + std::string(1, closers.back()) + "'"),
             kArrayHint);
      } else {
        closers.pop_back();
      }
    }
    if (!bare && !in_string && closers.empty() && deep == 0) break;
  }
  const int next = peek();
  if (!is_json_space(next) && next != ',' && next != ']' && next != kEof) {
    fail("expected ',' or ']' after the array element that starts at line " + std::to_string(start_line) + ", got " +
             describe(next),
         kArrayHint);
  }
}

}  // namespace

bool is_plain_text_file(const fs::path& p) {
  return p.extension() == ".txt";
}

FileLayout file_layout(const fs::path& p) {
  if (is_plain_text_file(p)) return FileLayout::kParagraphs;
  if (p.extension() != ".json") return FileLayout::kLines;
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_file_error(p.string(), "cannot open data file", "check the path and its permissions");
  SourcePos pos;
  ArrayScanner scan(in.rdbuf(), pos, p.string());
  scan.skip_bom();
  scan.skip_space();
  return scan.peek() == '[' ? FileLayout::kJsonArray : FileLayout::kLines;
}

std::vector<fs::path> resolve_data_files(const std::vector<std::string>& specs, const fs::path& base_dir,
                                         const std::string& key) {
  std::vector<fs::path> all;
  for (const auto& spec : specs) {
    std::vector<fs::path> found = expand_spec(spec);
    if (found.empty() && fs::path(spec).is_relative() && !base_dir.empty()) found = expand_spec(base_dir / spec);
    if (found.empty()) {
      throw_file_error(spec, key + ": no data file found",
                       "give an existing file, a glob (data/*.jsonl) or a directory holding .jsonl/.json/.txt files; "
                       "relative paths are tried against the working directory and the config's folder");
    }
    std::sort(found.begin(), found.end());
    all.insert(all.end(), found.begin(), found.end());
  }
  // De-duplicate, keeping the first occurrence (order of specs, sorted within a spec).
  std::vector<fs::path> out;
  std::set<std::string> seen;
  for (const auto& p : all) {
    std::error_code ec;
    const std::string canon = fs::weakly_canonical(p, ec).string();
    if (seen.insert(ec ? p.string() : canon).second) out.push_back(p);
  }
  return out;
}

namespace detail {

bool HashingFileBuf::open(const fs::path& file, int64_t offset) {
  if (file_.is_open()) file_.close();
  buf_.resize(kChunk);
  setg(buf_.data(), buf_.data(), buf_.data());
  hashed_ = buf_.data();
  folded_ = ReadDigest{};
  file_.pubsetbuf(nullptr, 0);  // unbuffered: chunks are read straight into buf_
  if (!file_.open(file, std::ios::in | std::ios::binary)) return false;
  for (int64_t left = offset; left > 0;) {  // consume the bytes before `offset`, hashing them
    if (gptr() == egptr() && underflow() == traits_type::eof()) break;
    const int64_t n = std::min<int64_t>(left, egptr() - gptr());
    gbump(static_cast<int>(n));
    left -= n;
  }
  return true;
}

ReadDigest HashingFileBuf::digest() const {
  ReadDigest d = folded_;
  if (hashed_ == nullptr) return d;
  const auto n = static_cast<size_t>(gptr() - hashed_);
  d.fnv1a64 = fnv1a64(std::string_view(hashed_, n), d.fnv1a64);
  d.bytes += static_cast<int64_t>(n);
  return d;
}

HashingFileBuf::int_type HashingFileBuf::underflow() {
  if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
  folded_ = digest();  // every byte of the buffer was consumed
  const std::streamsize n = file_.is_open() ? file_.sgetn(buf_.data(), static_cast<std::streamsize>(buf_.size())) : 0;
  setg(buf_.data(), buf_.data(), buf_.data() + std::max<std::streamsize>(n, 0));
  hashed_ = buf_.data();
  return n > 0 ? traits_type::to_int_type(*gptr()) : traits_type::eof();
}

}  // namespace detail

std::optional<uint64_t> hash_file_prefix(const fs::path& file, int64_t bytes) {
  std::error_code ec;
  if (bytes < 0 || !fs::is_regular_file(file, ec)) return std::nullopt;
  detail::HashingFileBuf buf;
  if (!buf.open(file, bytes)) return std::nullopt;
  const ReadDigest d = buf.digest();
  if (d.bytes != bytes) return std::nullopt;
  return d.fnv1a64;
}

RecordSource::RecordSource(std::vector<fs::path> files, int64_t max_record_bytes)
    : files_(std::move(files)),
      max_record_bytes_(static_cast<size_t>(std::max<int64_t>(max_record_bytes, 1))),
      read_(files_.size()) {}

std::string RecordSource::where(const SourcePos& pos) const {
  const std::string name =
      pos.file >= 0 && pos.file < static_cast<int64_t>(files_.size()) ? files_[pos.file].string() : "?";
  return name + ":" + std::to_string(pos.line);
}

bool RecordSource::read_line(std::istream& in, std::string& line, int64_t& offset, int64_t& line_no, size_t limit,
                             bool* cut) {
  line.clear();
  *cut = false;
  std::streambuf* buf = in.rdbuf();
  int64_t length = 0;  // bytes before the newline, kept or not
  bool newline = false;
  for (int c; (c = buf->sbumpc()) != std::char_traits<char>::eof();) {
    if (c == '\n') {
      newline = true;
      break;
    }
    ++length;
    if (line.size() <= limit) {  // one byte over: room for a "\r" that is not part of the record
      line.push_back(static_cast<char>(c));
    } else {
      *cut = true;  // the rest of the line is read past, never stored
    }
  }
  if (length == 0 && !newline) {
    in.setstate(std::ios::eofbit | std::ios::failbit);
    return false;
  }
  if (!newline) in.setstate(std::ios::eofbit);
  offset += length + (newline ? 1 : 0);
  line_no += 1;
  if (!*cut && !line.empty() && line.back() == '\r') line.pop_back();
  if (line.size() > limit) *cut = true;
  return true;
}

std::optional<RawRecord> RecordSource::read_array_element(std::istream& in, SourcePos& pos) const {
  ArrayScanner scan(in.rdbuf(), pos, files_[pos.file].string());
  if (pos.offset == 0) {  // the start of the file: past the '['
    scan.skip_bom();
    scan.skip_space();
    if (scan.get() != '[') scan.fail("expected '[' (the start of a JSON array)", kArrayHint);
    scan.skip_space();
    if (scan.peek() == ']') {  // []
      scan.get();
      scan.expect_end();
      return std::nullopt;
    }
  } else if (const int c = scan.peek(); is_json_space(c) || c == ',' || c == ']') {  // after an element
    scan.skip_space();
    const int sep = scan.get();
    if (sep == ']') {
      scan.expect_end();
      return std::nullopt;
    }
    if (sep != ',') {
      scan.fail(sep == kEof ? "the array is not closed: the file ends where ',' or ']' was expected"
                            : "expected ',' or ']' between array elements, got " + ArrayScanner::describe(sep),
                kArrayHint);
    }
    scan.skip_space();
    const int after = scan.peek();
    if (after == ']' || after == ',' || after == kEof) {
      scan.fail("expected an array element after ',', got " + ArrayScanner::describe(after) +
                    (after == ']' ? " (a trailing comma is not JSON)" : ""),
                kArrayHint);
    }
  }
  RawRecord rec;
  rec.pos = pos;  // the element's first byte
  bool cut = false;
  scan.scan_element(rec.text, max_record_bytes_, &cut);
  rec.too_long = cut;
  if (cut) rec.text = std::string();  // release what was read
  pos.record += 1;
  return rec;
}

std::optional<RawRecord> RecordSource::read_record(std::istream& in, FileLayout layout, SourcePos& pos) const {
  if (layout == FileLayout::kJsonArray) return read_array_element(in, pos);
  const bool plain_text = layout == FileLayout::kParagraphs;
  std::string line;
  bool cut = false;
  // Skip blank lines up to the record's first line.
  for (;;) {
    const SourcePos start = pos;
    if (!read_line(in, line, pos.offset, pos.line, max_record_bytes_, &cut)) return std::nullopt;
    if (!cut && is_blank(line)) continue;
    RawRecord rec;
    rec.pos = start;
    rec.plain_text = plain_text;
    rec.text = std::move(line);
    rec.too_long = cut;
    if (plain_text) {  // a paragraph: lines up to the next blank line, bounded as a whole
      std::string more;
      while (read_line(in, more, pos.offset, pos.line, max_record_bytes_, &cut) && (cut || !is_blank(more))) {
        rec.too_long = rec.too_long || cut || rec.text.size() + 1 + more.size() > max_record_bytes_;
        if (!rec.too_long) rec.text += "\n" + more;
      }
    }
    if (rec.too_long) rec.text = std::string();  // release what was read
    pos.record += 1;
    return rec;
  }
}

bool RecordSource::open_current() {
  if (pos_.file >= static_cast<int64_t>(files_.size())) return false;
  if (open_) return true;
  const fs::path& p = files_[pos_.file];
  auto f = std::make_unique<OpenFile>();
  if (!f->buf.open(p, pos_.offset)) {
    throw_file_error(p.string(), "cannot open data file", "check the path and its permissions");
  }
  if (const int64_t size = f->buf.digest().bytes; size != pos_.offset) {
    throw_file_error(p.string(),
                     "cannot seek to byte " + std::to_string(pos_.offset) +
                         (size < pos_.offset ? ": the file has only " + std::to_string(size) + " bytes" : ""),
                     "the file changed since the cursor was saved");
  }
  layout_ = file_layout(p);
  open_ = std::move(f);
  return true;
}

void RecordSource::close_current() {
  if (!open_) return;
  const ReadDigest d = open_->buf.digest();
  ReadDigest& longest = read_[static_cast<size_t>(pos_.file)];
  if (d.bytes > longest.bytes) longest = d;
  open_.reset();
}

std::vector<ReadDigest> RecordSource::read_digests() const {
  std::vector<ReadDigest> out = read_;
  if (open_) {
    const ReadDigest d = open_->buf.digest();
    ReadDigest& longest = out[static_cast<size_t>(pos_.file)];
    if (d.bytes > longest.bytes) longest = d;
  }
  return out;
}

std::optional<RawRecord> RecordSource::next() {
  while (open_current()) {
    SourcePos pos = pos_;
    auto rec = read_record(open_->in, layout_, pos);
    if (rec) {
      pos_ = pos;
      return rec;
    }
    if (open_->in.bad()) throw_file_error(files_[pos_.file].string(), "read error");
    // End of this file: on to the next one, keeping the record count.
    close_current();
    pos_ = SourcePos{pos_.file + 1, 0, 1, pos.record};
  }
  return std::nullopt;
}

void RecordSource::seek(const SourcePos& pos) {
  if (pos.file < 0 || pos.file > static_cast<int64_t>(files_.size())) {
    throw Error("data cursor: file index " + std::to_string(pos.file) + " out of range (" +
                std::to_string(files_.size()) + " files)");
  }
  close_current();
  pos_ = pos;
}

RawRecord RecordSource::read_at(const SourcePos& pos) const {
  if (pos.file < 0 || pos.file >= static_cast<int64_t>(files_.size())) {
    throw Error("data cursor: file index " + std::to_string(pos.file) + " out of range");
  }
  const fs::path& p = files_[pos.file];
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_file_error(p.string(), "cannot open data file");
  in.seekg(pos.offset);
  SourcePos cur = pos;
  auto rec = read_record(in, file_layout(p), cur);
  if (!rec || rec->pos.offset != pos.offset) {
    throw_file_error(where(pos), "no record at byte " + std::to_string(pos.offset),
                     "the data file changed since the cursor was saved; restart the data stream");
  }
  return *rec;
}

}  // namespace qlora::data
