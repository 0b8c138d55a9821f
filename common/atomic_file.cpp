#include "common/atomic_file.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc, _GNU_SOURCE)
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/error.h"

namespace qlora {

namespace {

std::string errno_text() {
  return std::strerror(errno);
}

fs::path temp_sibling(const fs::path& path) {
  return path.parent_path() / (path.filename().string() + ".tmp-" + std::to_string(::getpid()));
}

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) throw_file_error(p.string(), "cannot open for fsync: " + errno_text());
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw_file_error(p.string(), "fsync failed: " + errno_text());
}

}  // namespace

FileWriter::FileWriter(const fs::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_file_error(path.string(), "cannot create file: " + errno_text());
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_file_error(path_.string(), "write failed: " + errno_text(),
                       errno == ENOSPC ? "the disk is full; free space and rerun (the previous output is intact)" : "");
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset_ += static_cast<uint64_t>(w);
  }
}

void FileWriter::pad_to(uint64_t offset, char fill) {
  if (offset < offset_) throw_file_error(path_.string(), "internal: pad_to before current offset");
  std::vector<char> pad(offset - offset_, fill);
  write(pad.data(), pad.size());
}

void FileWriter::close() {
  if (fd_ < 0) return;
  int rc = ::fsync(fd_);
  int err = errno;
  ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw_file_error(path_.string(), std::string("fsync failed: ") + std::strerror(err));
}

void fsync_dir(const fs::path& dir) {
  fsync_path(dir.empty() ? fs::path(".") : dir);
}

void write_file_atomic(const fs::path& path, const std::function<void(FileWriter&)>& fill) {
  const fs::path tmp = temp_sibling(path);
  try {
    FileWriter w(tmp);
    fill(w);
    w.close();
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  fsync_dir(path.parent_path());
}

void write_file_atomic(const fs::path& path, std::string_view contents) {
  write_file_atomic(path, [&](FileWriter& w) { w.write(contents); });
}

void check_output_path(const fs::path& path, bool overwrite) {
  if (fs::exists(path) && !overwrite) {
    throw_file_error(path.string(), "output already exists", "pass --overwrite to replace it, or choose another path");
  }
}

AtomicDir::AtomicDir(const fs::path& final_path, bool overwrite)
    : final_(final_path), tmp_(temp_sibling(final_path)), overwrite_(overwrite) {
  check_output_path(final_, overwrite_);
  if (!final_.parent_path().empty()) fs::create_directories(final_.parent_path());
  std::error_code ec;
  fs::remove_all(tmp_, ec);  // leftover of a crashed run with the same pid
  if (!fs::create_directory(tmp_, ec) || ec) {
    throw_file_error(tmp_.string(), "cannot create directory: " + ec.message());
  }
}

AtomicDir::~AtomicDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void AtomicDir::commit() {
  for (const auto& entry : fs::recursive_directory_iterator(tmp_)) {
    if (entry.is_regular_file()) fsync_path(entry.path());
  }
  fsync_path(tmp_);
  if (fs::exists(final_) && !overwrite_) {
    throw_file_error(final_.string(), "output appeared while writing", "rerun with --overwrite");
  }
  install_dir(tmp_, final_);
  committed_ = true;
}

void install_dir(const fs::path& tmp, const fs::path& final_path, bool exchange) {
  const fs::path parent = final_path.parent_path();
  std::error_code ec;
  if (!fs::exists(final_path)) {
    fs::rename(tmp, final_path);
  } else if (exchange && ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_path.c_str(), RENAME_EXCHANGE) == 0) {
    fsync_dir(parent);        // the new one is in place for good ...
    fs::remove_all(tmp, ec);  // ... before the old one, now at tmp, goes
  } else {
    if (exchange && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
      throw_file_error(final_path.string(), "cannot exchange with " + tmp.string() + ": " + errno_text());
    }
    const fs::path old = parent / (final_path.filename().string() + ".old-" + std::to_string(::getpid()));
    fs::remove_all(old, ec);
    fs::rename(final_path, old);
    fs::rename(tmp, final_path);
    fsync_dir(parent);
    fs::remove_all(old, ec);
  }
  fsync_dir(parent);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path.string(), "cannot open file: " + errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace qlora
