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
    {"BOOL", torch::kBool, 1},  {"U8", torch::kUInt8, 1},     {"I8", torch::kInt8, 1},
    {"I16", torch::kInt16, 2},  {"I32", torch::kInt32, 4},    {"I64", torch::kInt64, 8},
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

std::string errno_text() { return std::strerror(errno); }

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
    header[name] = {{"dtype", dtype_to_safetensors(dtype)}, {"shape", shape}, {"data_offsets", {offset, offset + nbytes}}};
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
  throw Error(std::string("torch dtype ") + c10::toString(dtype) + " cannot be stored in safetensors (supported: " +
              supported_dtypes() + ")");
}

size_t dtype_size(torch::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.size;
  }
  throw Error(std::string("torch dtype ") + c10::toString(dtype) + " is not a safetensors dtype");
}

// ------------------------------------------------------------------------------------------------------------
// SafetensorsFile

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
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (n > kMaxSafetensorsHeader) {
    throw_file_error(p, "header length " + std::to_string(n) + " exceeds the limit of " +
                            std::to_string(kMaxSafetensorsHeader) + " bytes (100 MiB); corrupt or not a safetensors file");
  }
  if (n > file_size - 8) {
    throw_file_error(p, "header length " + std::to_string(n) + " goes beyond the end of the file (" +
                            std::to_string(file_size) + " bytes); truncated or not a safetensors file");
  }
  f->data_start_ = 8 + n;
  const uint64_t data_size = file_size - f->data_start_;

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + n));
  } catch (const json::exception& e) {
    throw_file_error(p, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) {
    throw_file_error(p, std::string("header JSON is not an object (got ") + header.type_name() + ")");
  }

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object()) throw_file_error(p, "__metadata__ must be an object of string values");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          throw_file_error(p, "__metadata__ value of '" + m.key() + "' is not a string (got " +
                                  m.value().type_name() + "); safetensors metadata maps strings to strings");
        }
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
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
      if (!json_is_nonneg_int(d)) tensor_error(path, name, "shape " + v["shape"].dump() + " has a negative or non-integer dimension");
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
      tensor_error(path, name, "data_offsets must be [begin, end] with non-negative integers (got " + off.dump() + ")");
    }
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.end < info.begin) {
      tensor_error(path, name, "data_offsets " + off.dump() + " end before they begin");
    }
    if (overflow || nbytes != info.end - info.begin) {
      tensor_error(path, name,
                   "shape " + v["shape"].dump() + " x " + info.dtype_name + " (" + std::to_string(de->size) +
                       " bytes) does not match the data_offsets span of " + std::to_string(info.end - info.begin) +
                       " bytes (size mismatch)");
    }
    if (info.end > data_size) {
      tensor_error(path, name,
                   "data_offsets " + off.dump() + " out of range: the data section has only " +
                       std::to_string(data_size) + " bytes (file truncated?)");
    }
    f->tensors_.push_back(std::move(info));
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Like the reference: tensors tile the data section exactly (no overlaps, no holes, no trailing bytes).
  uint64_t expect = 0;
  for (size_t i = 0; i < f->tensors_.size(); ++i) {
    const TensorInfo& t = f->tensors_[i];
    if (t.begin < expect) {
      tensor_error(path, t.name,
                   "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] overlap tensor '" +
                       f->tensors_[i - 1].name + "' (which ends at " + std::to_string(expect) + ")");
    }
    if (t.begin > expect) {
      tensor_error(path, t.name,
                   "hole in the data section: bytes [" + std::to_string(expect) + ", " + std::to_string(t.begin) +
                       ") before this tensor belong to no tensor");
    }
    expect = t.end;
    f->index_[t.name] = i;
  }
  if (expect != data_size) {
    throw_file_error(p, std::to_string(data_size - expect) + " trailing bytes after the last tensor (the data section has " +
                            std::to_string(data_size) + " bytes, the tensors cover " + std::to_string(expect) + ")");
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
  if (fd_ >= 0) ::close(fd_);
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) > 0; }

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
  TORCH_CHECK(t.sizes().vec() == e.shape, "SafetensorsWriter: tensor '", name, "' has shape ", t.sizes(),
              ", declared ", c10::IntArrayRef(e.shape));
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

// ------------------------------------------------------------------------------------------------------------
// Checkpoint

namespace {
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir) {
  Checkpoint ck;
  ck.dir_ = dir;
  if (fs::is_regular_file(dir)) {  // a bare .safetensors file
    ck.dir_ = dir.parent_path();
    ck.shards_.push_back(SafetensorsFile::open(dir));
  } else if (!fs::is_directory(dir)) {
    throw_file_error(dir.string(), "model folder does not exist",
                     "pass a folder with config.json and model.safetensors (or a sharded index)");
  } else if (fs::exists(dir / kIndexFile)) {
    const fs::path index_path = dir / kIndexFile;
    const std::string ip = index_path.string();
    json index;
    try {
      index = json::parse(read_file(index_path));
    } catch (const json::exception& e) {
      throw_file_error(ip, std::string("not valid JSON: ") + e.what());
    }
    if (!index.is_object()) throw_file_error(ip, "index is not a JSON object");
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw_file_error(ip, "missing or invalid \"weight_map\" (an object mapping tensor names to shard files)");
    }
    const json& wm = index["weight_map"];
    std::map<std::string, size_t> shard_index;  // file name -> position in shards_ (opened in file-name order)
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it.value().is_string()) {
        throw_file_error(ip, "weight_map entry of '" + it.key() + "' is not a string file name");
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        throw_file_error(ip, "weight_map entry of '" + it.key() + "' names an invalid shard file '" + shard + "'");
      }
      if (!shard_index.count(shard) && !fs::exists(dir / shard)) {
        throw_file_error(ip, "shard '" + shard + "' (listed for tensor '" + it.key() + "') is missing from " +
                                 dir.string(),
                         "the download is incomplete; fetch every model-*-of-*.safetensors file");
      }
      shard_index[shard] = 0;
    }
    for (auto& [shard, pos] : shard_index) {
      pos = ck.shards_.size();
      ck.shards_.push_back(SafetensorsFile::open(dir / shard));
    }
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      const std::string shard = it.value().get<std::string>();
      const size_t pos = shard_index.at(shard);
      if (!ck.shards_[pos]->contains(it.key())) {
        throw_file_error(ip, "tensor '" + it.key() + "' is listed in shard '" + shard + "' but that shard has no such tensor");
      }
      ck.shard_of_[it.key()] = pos;
    }
    for (const auto& f : ck.shards_) {
      for (const auto& t : f->tensors()) {
        if (!ck.shard_of_.count(t.name)) {
          spdlog::warn("{}: tensor '{}' is not in the index; ignored", f->path().string(), t.name);
        }
      }
    }
    return ck;
  } else if (fs::exists(dir / kSingleFile)) {
    ck.shards_.push_back(SafetensorsFile::open(dir / kSingleFile));
  } else {
    std::string hint = "expected model.safetensors or model.safetensors.index.json";
    if (fs::exists(dir / "pytorch_model.bin") || fs::exists(dir / "pytorch_model.bin.index.json")) {
      hint += "; this folder has only PyTorch .bin weights: convert them to safetensors first";
    }
    throw_file_error(dir.string(), "no safetensors weights found", hint);
  }
  for (const auto& t : ck.shards_[0]->tensors()) ck.shard_of_[t.name] = 0;
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (size_t s = 0; s < shards_.size(); ++s) {
    for (const auto& t : shards_[s]->tensors()) {
      auto it = shard_of_.find(t.name);
      if (it != shard_of_.end() && it->second == s) out.push_back(t.name);
    }
  }
  return out;
}

bool Checkpoint::contains(const std::string& name) const { return shard_of_.count(name) > 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw_file_error(dir_.string(), "checkpoint has no tensor named '" + name + "'");
  return shards_[it->second]->info(name);
}

torch::Tensor Checkpoint::get(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw_file_error(dir_.string(), "checkpoint has no tensor named '" + name + "'");
  return shards_[it->second]->get(name);
}

void Checkpoint::release(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it != shard_of_.end()) shards_[it->second]->release(name);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, s] : shard_of_) total += shards_[s]->info(name).nbytes();
  return total;
}

// ------------------------------------------------------------------------------------------------------------
// ShardedWriter

namespace {
std::string shard_number(size_t k) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%05zu", k);
  return buf;
}
}  // namespace

ShardedWriter::ShardedWriter(const fs::path& dir, uint64_t max_shard_bytes, std::string prefix)
    : dir_(dir), max_shard_bytes_(max_shard_bytes), prefix_(std::move(prefix)) {
  TORCH_CHECK(max_shard_bytes_ > 0, "ShardedWriter: max_shard_bytes must be positive");
}

void ShardedWriter::add(const std::string& name, const torch::Tensor& t) {
  const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.scalar_type());
  if (!pending_.empty() && pending_bytes_ + nbytes > max_shard_bytes_) flush();
  pending_.emplace_back(name, t);
  pending_bytes_ += nbytes;
  total_bytes_ += nbytes;
}

void ShardedWriter::flush() {
  const fs::path tmp = dir_ / (prefix_ + "-" + shard_number(written_.size() + 1) + ".partial.safetensors");
  save_safetensors(tmp, pending_);
  std::vector<std::string> names;
  for (const auto& [n, t] : pending_) names.push_back(n);
  written_.emplace_back(tmp, std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

void ShardedWriter::finish() {
  if (written_.empty()) {
    save_safetensors(dir_ / (prefix_ + ".safetensors"), pending_);
    pending_.clear();
    pending_bytes_ = 0;
    return;
  }
  if (!pending_.empty()) flush();
  const size_t n = written_.size();
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t k = 0; k < n; ++k) {
    const std::string final_name = prefix_ + "-" + shard_number(k + 1) + "-of-" + shard_number(n) + ".safetensors";
    fs::rename(written_[k].first, dir_ / final_name);
    for (const auto& name : written_[k].second) weight_map[name] = final_name;
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
  write_file_atomic(dir_ / (prefix_ + ".safetensors.index.json"), index.dump(2) + "\n");
  fsync_dir(dir_);
  written_.clear();
}

}  // namespace qlora::io
