// Atomic outputs: a file or a directory is written under a temporary name in the same directory, fsynced,
// then renamed over the final name, so a crash at any moment leaves either the old or the new version.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace qlora {

namespace fs = std::filesystem;

// Writes through a POSIX fd; every error (ENOSPC included) throws qlora::Error naming the path.
class FileWriter {
 public:
  explicit FileWriter(const fs::path& path);  // creates/truncates
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void pad_to(uint64_t offset, char fill = '\0');  // zero-pad up to an absolute offset
  uint64_t offset() const { return offset_; }
  void close();  // fsync + close; throws on failure

 private:
  fs::path path_;
  int fd_ = -1;
  uint64_t offset_ = 0;
};

// Writes `path` atomically: `fill` writes into a temp file next to it, which is fsynced and renamed.
void write_file_atomic(const fs::path& path, const std::function<void(FileWriter&)>& fill);
void write_file_atomic(const fs::path& path, std::string_view contents);

// fsync a directory so a rename inside it is durable.
void fsync_dir(const fs::path& dir);

// Refuses to touch an existing output unless overwrite is set (the `--overwrite` contract).
void check_output_path(const fs::path& path, bool overwrite);

// A directory built under "<final>.tmp-<pid>" and renamed into place by commit(). If commit() is never
// reached (exception, crash), the destructor removes the temp dir and the final path is untouched.
class AtomicDir {
 public:
  AtomicDir(const fs::path& final_path, bool overwrite);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const fs::path& path() const { return tmp_; }  // write files here
  const fs::path& final_path() const { return final_; }
  void commit();  // fsync every file, rename (replacing an existing dir when overwrite), fsync parent

 private:
  fs::path final_;
  fs::path tmp_;
  bool overwrite_;
  bool committed_ = false;
};

// Puts the finished directory `tmp` at `final_path`, replacing what is there without a moment with neither: one
// renameat2(RENAME_EXCHANGE) (Linux), after which the old one (now at `tmp`) is removed. Where the filesystem
// cannot exchange (or `exchange` is false, for tests), the old one is moved to "<final>.old-<pid>" first, the new one
// renamed in, and the old one removed; a crash between the two renames leaves the old one there under that name.
void install_dir(const fs::path& tmp, const fs::path& final_path, bool exchange = true);

// Reads a whole (small) file; throws qlora::Error naming it if missing or unreadable.
std::string read_file(const fs::path& path);

}  // namespace qlora
