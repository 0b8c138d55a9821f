#include "io/safetensors.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"

namespace qlora::io {

namespace {

using nlohmann::json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

struct DtypeEntry {
  const char* name;
  torch::ScalarType dtype;
  size_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {"BOOL", torch::kBool, 1},   {"U8", torch::kUInt8, 1},      {"I8", torch::kInt8, 1},
    {"I16", torch::kInt16, 2},   {"I32", torch::kInt32, 4},     {"I64", torch::kInt64, 8},
    {"F16", torch::kFloat16, 2}, {"BF16", torch::kBFloat16, 2}, {"F32", torch::kFloat32, 4},
    {"F64", torch::kFloat64, 8},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string supported_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : " ") + d.name;
  return s;
}

std::string errno_text() {
  return std::strerror(errno);
}

// Error about one tensor of a file: "<path>: tensor '<name>': <what>".
[[noreturn]] void tensor_error(const fs::path& path, const std::string& name, const std::string& what,
                               const std::string& hint = "") {
  throw_file_error(path.string(), "tensor '" + name + "': " + what, hint);
}

// Builds the header JSON (space padded to a multiple of 8) for tensors laid out contiguously in order.
// Returns the header bytes without the 8-byte length prefix.
std::string build_header(const fs::path& path,
                         const std::vector<std::tuple<std::string, torch::ScalarType, std::vector<int64_t>>>& entries,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& [name, dtype, shape] : entries) {
    if (name.empty() || name == "__metadata__") {
      throw_file_error(path.string(), "invalid tensor name '" + name + "'");
    }
    if (header.contains(name)) throw_file_error(path.string(), "duplicate tensor name '" + name + "'");
    uint64_t numel = 1;
    for (int64_t d : shape) {
      TORCH_CHECK(d >= 0, "negative dimension in shape of ", name);
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t nbytes = numel * dtype_size(dtype);
    header[name] = {
        {"dtype", dtype_to_safetensors(dtype)}, {"shape", shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_u64_le(FileWriter& w, uint64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  w.write(b, 8);
}

// Writes the raw little-endian bytes of a tensor (any device, any layout).
void write_tensor_bytes(FileWriter& w, const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU).contiguous();
  const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
  if (n > 0) w.write(c.data_ptr(), n);
}

bool json_is_nonneg_int(const json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

torch::ScalarType dtype_from_safetensors(const std::string& name) {
  const DtypeEntry* d = find_dtype(name);
  if (!d) throw Error("unsupported safetensors dtype '" + name + "' (supported: " + supported_dtypes() + ")");
  return d->dtype;
}

std::string dtype_to_safetensors(torch::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  throw Error(std::string("torch dtype ") + c10::toString(dtype) +
              " cannot be stored in safetensors (supported: " + supported_dtypes() + ")");
}

size_t dtype_size(torch::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.size;
  }
  throw Error(std::string("torch dtype ") + c10::toString(dtype) + " is not a safetensors dtype");
}

// ------------------------------------------------------------------------------------------------------------
// SafetensorsFile

namespace {

// The 8-byte little-endian header length, bounded by the limit and the file size.
uint64_t read_header_length(const std::string& p, const unsigned char* bytes, uint64_t file_size) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (n > kMaxSafetensorsHeader) {
    throw_file_error(p, "header length " + std::to_string(n) + " exceeds the limit of " +
                            std::to_string(kMaxSafetensorsHeader) +
                            " bytes (100 MiB); corrupt or not a safetensors file");
  }
  if (n > file_size - 8) {
    throw_file_error(p, "header length " + std::to_string(n) + " goes beyond the end of the file (" +
                            std::to_string(file_size) + " bytes); truncated or not a safetensors file");
  }
  return n;
}

json parse_header(const std::string& p, const unsigned char* bytes, uint64_t n) {
  const json header = parse_json(std::string_view(reinterpret_cast<const char*>(bytes + 8), n), p + ": header");
  if (!header.is_object()) {
    throw_file_error(p, std::string("header JSON is not an object (got ") + header.type_name() + ")");
  }
  return header;
}

void parse_metadata(const std::string& p, const json& v, std::map<std::string, std::string>* metadata) {
  if (!v.is_object()) throw_file_error(p, "__metadata__ must be an object of string values");
  for (auto m = v.begin(); m != v.end(); ++m) {
    if (!m.value().is_string()) {
      throw_file_error(p, "__metadata__ value of '" + m.key() + "' is not a string (got " + m.value().type_name() +
                              "); safetensors metadata maps strings to strings");
    }
    (*metadata)[m.key()] = m.value().get<std::string>();
  }
}

// One tensor entry of the header: dtype, shape, data_offsets, each checked against the others and the data size.
TensorInfo parse_tensor_entry(const fs::path& path, const std::string& name, const json& v, uint64_t data_size) {
  if (!v.is_object()) tensor_error(path, name, std::string("entry is not an object (got ") + v.type_name() + ")");
  TensorInfo info;
  info.name = name;
  // dtype
  if (!v.contains("dtype")) tensor_error(path, name, "missing dtype");
  if (!v["dtype"].is_string()) tensor_error(path, name, "dtype is not a string");
  info.dtype_name = v["dtype"].get<std::string>();
  const DtypeEntry* de = find_dtype(info.dtype_name);
  if (!de) {
    tensor_error(path, name, "unknown or unsupported dtype '" + info.dtype_name + "'",
                 "supported dtypes: " + supported_dtypes());
  }
  info.dtype = de->dtype;
  // shape
  if (!v.contains("shape")) tensor_error(path, name, "missing shape");
  if (!v["shape"].is_array()) tensor_error(path, name, "shape is not an array");
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : v["shape"]) {
    if (!json_is_nonneg_int(d))
      tensor_error(path, name, "shape " + json_excerpt(v["shape"]) + " has a negative or non-integer dimension");
    const uint64_t du = d.get<uint64_t>();
    if (du > static_cast<uint64_t>(INT64_MAX)) tensor_error(path, name, "shape dimension too large");
    info.shape.push_back(static_cast<int64_t>(du));
    overflow = overflow || __builtin_mul_overflow(numel, du, &numel);
  }
  uint64_t nbytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(de->size), &nbytes);
  // data_offsets
  if (!v.contains("data_offsets")) tensor_error(path, name, "missing data_offsets");
  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !json_is_nonneg_int(off[0]) || !json_is_nonneg_int(off[1])) {
    tensor_error(path, name,
                 "data_offsets must be [begin, end] with non-negative integers (got " + json_excerpt(off) + ")");
  }
  info.begin = off[0].get<uint64_t>();
  info.end = off[1].get<uint64_t>();
  if (info.end < info.begin) {
    tensor_error(path, name, "data_offsets " + json_excerpt(off) + " end before they begin");
  }
  if (overflow || nbytes != info.end - info.begin) {
    tensor_error(path, name,
                 "shape " + json_excerpt(v["shape"]) + " x " + info.dtype_name + " (" + std::to_string(de->size) +
                     " bytes) does not match the data_offsets span of " + std::to_string(info.end - info.begin) +
                     " bytes (size mismatch)");
  }
  if (info.end > data_size) {
    tensor_error(path, name,
                 "data_offsets " + json_excerpt(off) + " out of range: the data section has only " +
                     std::to_string(data_size) + " bytes (file truncated?)");
  }
  return info;
}

// Like the reference: tensors tile the data section exactly (no overlaps, no holes, no trailing bytes).
void check_tiling(const fs::path& path, const std::vector<TensorInfo>& tensors, uint64_t data_size) {
  uint64_t expect = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    if (t.begin < expect) {
      tensor_error(path, t.name,
                   "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] overlap tensor '" +
                       tensors[i - 1].name + "' (which ends at " + std::to_string(expect) + ")");
    }
    if (t.begin > expect) {
      tensor_error(path, t.name,
                   "hole in the data section: bytes [" + std::to_string(expect) + ", " + std::to_string(t.begin) +
                       ") before this tensor belong to no tensor");
    }
    expect = t.end;
  }
  if (expect != data_size) {
    throw_file_error(path.string(), std::to_string(data_size - expect) +
                                        " trailing bytes after the last tensor (the data section has " +
                                        std::to_string(data_size) + " bytes, the tensors cover " +
                                        std::to_string(expect) + ")");
  }
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->self_ = f;
  f->path_ = path;
  const std::string p = path.string();

  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) {
    throw_file_error(p, "cannot open safetensors file: " + errno_text(),
                     errno == ENOENT ? "check the path; a model folder should contain model.safetensors" : "");
  }
  struct stat st {};
  if (::fstat(f->fd_, &st) != 0) throw_file_error(p, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) throw_file_error(p, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size == 0) throw_file_error(p, "empty file: not a safetensors file (no 8-byte header length)");
  if (file_size < 8) {
    throw_file_error(p, "truncated file: " + std::to_string(file_size) +
                            " bytes is too short for the 8-byte header length; not a safetensors file");
  }
  f->map_size_ = static_cast<size_t>(file_size);
  void* m = ::mmap(nullptr, f->map_size_, PROT_READ, MAP_PRIVATE, f->fd_, 0);
  if (m == MAP_FAILED) {
    f->map_size_ = 0;
    throw_file_error(p, "mmap failed: " + errno_text());
  }
  f->map_ = m;
  ::close(f->fd_);  // the mapping stays valid without the descriptor
  f->fd_ = -1;

  const auto* bytes = static_cast<const unsigned char*>(f->map_);
  const uint64_t n = read_header_length(p, bytes, file_size);
  f->data_start_ = 8 + n;
  const uint64_t data_size = file_size - f->data_start_;
  const json header = parse_header(p, bytes, n);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_null()) parse_metadata(p, it.value(), &f->metadata_);
    } else {
      f->tensors_.push_back(parse_tensor_entry(path, it.key(), it.value(), data_size));
    }
  }
  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  check_tiling(path, f->tensors_, data_size);
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
  if (fd_ >= 0) ::close(fd_);
}

bool SafetensorsFile::contains(const std::string& name) const {
  return index_.count(name) > 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_file_error(path_.string(), "no tensor named '" + name + "'");
  return tensors_[it->second];
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  char* ptr = static_cast<char*>(map_) + data_start_ + ti.begin;
  auto options = torch::TensorOptions().dtype(ti.dtype).device(torch::kCPU);
  const size_t esize = dtype_size(ti.dtype);
  if (reinterpret_cast<uintptr_t>(ptr) % esize != 0) {
    // Misaligned for its dtype (a writer that did not pad its header): copy into aligned memory.
    spdlog::debug("{}: tensor '{}' is misaligned in the file; copying it", path_.string(), name);
    torch::Tensor out = torch::empty(ti.shape, options);
    if (ti.nbytes() > 0) std::memcpy(out.data_ptr(), ptr, ti.nbytes());
    return out;
  }
  std::shared_ptr<const SafetensorsFile> keep = self_.lock();
  TORCH_CHECK(keep, "SafetensorsFile::get on a file not owned by a shared_ptr");
  return torch::from_blob(
      ptr, ti.shape, [keep](void*) mutable { keep.reset(); }, options);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(map_) + data_start_ + ti.begin;
  const uintptr_t hi = lo + ti.nbytes();
  const uintptr_t a = (lo + page - 1) / page * page;
  const uintptr_t b = hi / page * page;
  if (a < b) {
    if (::madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED) != 0) {
      spdlog::debug("{}: madvise(DONTNEED) for '{}' failed: {}", path_.string(), name, errno_text());
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Writing

void save_safetensors(const fs::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<std::tuple<std::string, torch::ScalarType, std::vector<int64_t>>> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    entries.emplace_back(name, t.scalar_type(), t.sizes().vec());
  }
  const std::string header = build_header(path, entries, metadata);
  write_file_atomic(path, [&](FileWriter& w) {
    write_u64_le(w, header.size());
    w.write(header);
    for (const auto& [name, t] : tensors) write_tensor_bytes(w, t);
  });
}

struct SafetensorsWriter::Impl {
  fs::path path;
  fs::path tmp;
  std::vector<Entry> entries;
  size_t next = 0;
  std::unique_ptr<FileWriter> writer;
  bool committed = false;
};

SafetensorsWriter::SafetensorsWriter(const fs::path& path, std::vector<Entry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->tmp = path.parent_path() / (path.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::vector<std::tuple<std::string, torch::ScalarType, std::vector<int64_t>>> list;
  for (const auto& e : entries) list.emplace_back(e.name, e.dtype, e.shape);
  const std::string header = build_header(path, list, metadata);
  impl_->entries = std::move(entries);
  impl_->writer = std::make_unique<FileWriter>(impl_->tmp);
  write_u64_le(*impl_->writer, header.size());
  impl_->writer->write(header);
}

SafetensorsWriter::~SafetensorsWriter() {
  if (impl_ && !impl_->committed) {
    impl_->writer.reset();
    std::error_code ec;
    fs::remove(impl_->tmp, ec);
  }
}

void SafetensorsWriter::write(const std::string& name, const torch::Tensor& t) {
  TORCH_CHECK(!impl_->committed, "SafetensorsWriter::write after commit");
  TORCH_CHECK(impl_->next < impl_->entries.size(), "SafetensorsWriter: '", name, "' written but all ",
              impl_->entries.size(), " declared tensors were already written");
  const Entry& e = impl_->entries[impl_->next];
  TORCH_CHECK(e.name == name, "SafetensorsWriter: expected tensor '", e.name, "' next, got '", name, "'");
  TORCH_CHECK(t.scalar_type() == e.dtype, "SafetensorsWriter: tensor '", name, "' has dtype ", t.scalar_type(),
              ", declared ", e.dtype);
  TORCH_CHECK(t.sizes().vec() == e.shape, "SafetensorsWriter: tensor '", name, "' has shape ", t.sizes(), ", declared ",
              c10::IntArrayRef(e.shape));
  write_tensor_bytes(*impl_->writer, t);
  ++impl_->next;
}

void SafetensorsWriter::commit() {
  TORCH_CHECK(!impl_->committed, "SafetensorsWriter::commit called twice");
  TORCH_CHECK(impl_->next == impl_->entries.size(), "SafetensorsWriter::commit: only ", impl_->next, " of ",
              impl_->entries.size(), " declared tensors were written");
  impl_->writer->close();
  impl_->writer.reset();
  fs::rename(impl_->tmp, impl_->path);
  impl_->committed = true;
  fsync_dir(impl_->path.parent_path());
}

}  // namespace qlora::io
