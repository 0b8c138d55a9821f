#include "data/record_source.h"

#include <glob.h>

#include <algorithm>
#include <set>

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

}  // namespace

bool is_plain_text_file(const fs::path& p) {
  return p.extension() == ".txt";
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

RecordSource::RecordSource(std::vector<fs::path> files, int64_t max_record_bytes)
    : files_(std::move(files)), max_record_bytes_(static_cast<size_t>(std::max<int64_t>(max_record_bytes, 1))) {}

std::string RecordSource::where(const SourcePos& pos) const {
  const std::string name =
      pos.file >= 0 && pos.file < static_cast<int64_t>(files_.size()) ? files_[pos.file].string() : "?";
  return name + ":" + std::to_string(pos.line);
}

bool RecordSource::read_line(std::ifstream& in, std::string& line, int64_t& offset, int64_t& line_no, size_t limit,
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

std::optional<RawRecord> RecordSource::read_record(std::ifstream& in, bool plain_text, SourcePos& pos) const {
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
  while (pos_.file < static_cast<int64_t>(files_.size())) {
    if (!open_) {
      const fs::path& p = files_[pos_.file];
      in_ = std::ifstream(p, std::ios::binary);
      if (!in_) throw_file_error(p.string(), "cannot open data file", "check the path and its permissions");
      in_.seekg(pos_.offset);
      if (!in_)
        throw_file_error(p.string(), "cannot seek to byte " + std::to_string(pos_.offset),
                         "the file changed since the cursor was saved");
      open_ = true;
    }
    return true;
  }
  return false;
}

std::optional<RawRecord> RecordSource::next() {
  while (open_current()) {
    SourcePos pos = pos_;
    auto rec = read_record(in_, is_plain_text_file(files_[pos_.file]), pos);
    if (rec) {
      pos_ = pos;
      return rec;
    }
    if (in_.bad()) throw_file_error(files_[pos_.file].string(), "read error");
    // End of this file: on to the next one, keeping the record count.
    open_ = false;
    in_.close();
    pos_ = SourcePos{pos_.file + 1, 0, 1, pos.record};
  }
  return std::nullopt;
}

void RecordSource::seek(const SourcePos& pos) {
  if (pos.file < 0 || pos.file > static_cast<int64_t>(files_.size())) {
    throw Error("data cursor: file index " + std::to_string(pos.file) + " out of range (" +
                std::to_string(files_.size()) + " files)");
  }
  open_ = false;
  in_.close();
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
  auto rec = read_record(in, is_plain_text_file(p), cur);
  if (!rec || rec->pos.offset != pos.offset) {
    throw_file_error(where(pos), "no record at byte " + std::to_string(pos.offset),
                     "the data file changed since the cursor was saved; restart the data stream");
  }
  return *rec;
}

}  // namespace qlora::data
