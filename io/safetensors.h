// safetensors I/O (https://github.com/huggingface/safetensors): mmapped, validated reading with zero-copy
// tensor views, atomic writing, and sharded HF checkpoints (model.safetensors.index.json).
//
// File layout: u64 LE header length N | N bytes of JSON header (space padded to a multiple of 8) | data.
// Header: {"<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qlora::io {

namespace fs = std::filesystem;

// Upper bound on the JSON header (same as the reference implementation).
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

struct TensorInfo {
  std::string name;
  std::string dtype_name;   // "BF16", "F32", ... as in the header
  torch::ScalarType dtype;  // the matching torch dtype
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section, end exclusive
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// "BF16" <-> torch::kBFloat16. Supported: BOOL U8 I8 I16 I32 I64 F16 BF16 F32 F64.
// Unknown names throw qlora::Error.
torch::ScalarType dtype_from_safetensors(const std::string& name);
std::string dtype_to_safetensors(torch::ScalarType dtype);
size_t dtype_size(torch::ScalarType dtype);

// One mmapped .safetensors file. Opening validates the whole header (length bound, JSON, dtypes,
// shape x dtype size == span, offsets in range, no overlaps or holes); any problem throws qlora::Error
// naming the file and the tensor.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const fs::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const fs::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by data offset
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws qlora::Error if absent

  // Zero-copy CPU view into the mapping (read-only data; clone() or .to() before writing). The view keeps
  // the mapping alive.
  torch::Tensor get(const std::string& name) const;
  // Tells the kernel the pages of this tensor are no longer needed (MADV_DONTNEED), so streaming loads keep
  // RSS near one tensor. Views of it must not be used afterwards (they re-read from disk if they are).
  void release(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  fs::path path_;
  int fd_ = -1;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// Writes a whole file atomically (temp file, fsync, rename). Tensors are written contiguous, in the given
// order; metadata defaults to {"format": "pt"} (transformers requires it).
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
void save_safetensors(const fs::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Streaming writer: declare every tensor first (name, dtype, shape), then write them one by one in the
// declared order; the header is known up front so only one tensor is ever in memory. commit() fsyncs and
// renames; destroying without commit() removes the temp file.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsWriter(const fs::path& path, std::vector<Entry> entries,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  void write(const std::string& name, const torch::Tensor& t);  // must match the next declared entry
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// An HF checkpoint folder's weights: either model.safetensors or model.safetensors.index.json + shards.
// Each tensor name maps to exactly one shard; a missing shard or a name listed in the index but absent from
// its shard is a qlora::Error naming both.
class Checkpoint {
 public:
  static Checkpoint open(const fs::path& dir);

  const fs::path& dir() const { return dir_; }
  std::vector<std::string> names() const;  // grouped by shard, in each shard's data order (streaming order)
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  torch::Tensor get(const std::string& name) const;  // zero-copy view
  void release(const std::string& name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& shards() const { return shards_; }
  uint64_t total_bytes() const;

 private:
  fs::path dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> shard_of_;
};

// Writes tensors into a folder as HF does: a single model.safetensors if the total fits max_shard_bytes,
// else model-0000k-of-0000n.safetensors + model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}).
// Streaming: add() buffers at most one shard's worth. Files land in `dir` (the caller makes it atomic via AtomicDir).
class ShardedWriter {
 public:
  ShardedWriter(const fs::path& dir, uint64_t max_shard_bytes = 5ull << 30, std::string prefix = "model");
  void add(const std::string& name, const torch::Tensor& t);
  void finish();  // flushes the last shard, renames shards to -of-N names, writes the index when > 1 shard

 private:
  void flush();
  fs::path dir_;
  uint64_t max_shard_bytes_;
  std::string prefix_;
  NamedTensors pending_;
  uint64_t pending_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  std::vector<std::pair<fs::path, std::vector<std::string>>> written_;  // temp shard path, names
};

}  // namespace qlora::io
