// GGUF v3 writer (ggml's file format for llama.cpp; formats.md section 6, ggml docs/gguf.md):
//
//   u32 magic "GGUF" | u32 version 3 | u64 n_tensors | u64 n_kv | KV pairs | tensor infos | pad to alignment | data
//   string  = u64 length + bytes (no NUL)
//   KV      = string key + u32 value type + value; array = u32 element type + u64 count + elements
//   info    = string name (<= 64 bytes) + u32 n_dims + u64 ne[n_dims] + u32 ggml type + u64 offset
//
// ne is ggml's dimension order, the PyTorch shape reversed ([out, in] -> ne = {in, out}). Offsets are relative to
// the start of the data section and multiples of general.alignment (32 unless set); each tensor is zero-padded
// to the alignment. All values little-endian.
//
// Streaming: declare every tensor first (name, torch shape, type), then write_file() asks for them one at a time
// in declaration order and encodes each into its ggml type, so peak memory is about one tensor. The file is
// written atomically (temp file, fsync, rename).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gguf/ggml_quants.h"

namespace qlora::gguf {

namespace fs = std::filesystem;

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGgufVersion = 3;
constexpr uint32_t kGgufDefaultAlignment = 32;
constexpr size_t kGgufMaxTensorName = 64;  // GGML_MAX_NAME - 1 (the NUL)
constexpr int kGgufMaxDims = 4;

enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // PyTorch order (row-major, last dim contiguous)
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;              // relative to the data section (filled by add_tensor)
  uint64_t nbytes = 0;              // encoded size without padding
  std::vector<int64_t> ne() const;  // ggml order = shape reversed
};

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = kGgufDefaultAlignment);

  // Metadata, written in the order added. A key added twice is an internal error (TORCH_CHECK).
  void add_u8(const std::string& key, uint8_t v);
  void add_i8(const std::string& key, int8_t v);
  void add_u16(const std::string& key, uint16_t v);
  void add_i16(const std::string& key, int16_t v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_u64(const std::string& key, uint64_t v);
  void add_i64(const std::string& key, int64_t v);
  void add_f64(const std::string& key, double v);
  void add_array_u8(const std::string& key, const std::vector<uint8_t>& v);
  void add_array_i32(const std::string& key, const std::vector<int32_t>& v);
  void add_array_u32(const std::string& key, const std::vector<uint32_t>& v);
  void add_array_i64(const std::string& key, const std::vector<int64_t>& v);
  void add_array_f32(const std::string& key, const std::vector<float>& v);
  void add_array_f64(const std::string& key, const std::vector<double>& v);
  void add_array_bool(const std::string& key, const std::vector<bool>& v);
  void add_array_string(const std::string& key, const std::vector<std::string>& v);

  // Declares a tensor; its data offset follows the previous tensor's, aligned. Checks: name length <= 64, unique,
  // 1..4 dims, positive sizes, and for block types a row length that is a multiple of the block size
  // (qlora::Error naming the tensor otherwise).
  const TensorSpec& add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  size_t kv_count() const { return kv_count_; }
  uint32_t alignment() const { return alignment_; }
  // Bytes of everything before the data section (header, KVs, infos, padding) and the whole file.
  uint64_t header_bytes() const;
  uint64_t file_bytes() const;

  // Produces tensor `i` (in declaration order) as a CPU tensor of the declared torch shape, any float dtype;
  // it is converted to the declared ggml type (F16/BF16 round to nearest even, Q8_0/Q4_0/Q5_0/Q5_1 and
  // Q4_K/Q5_K/Q6_K with ggml's reference quantizers) and written. `produce` may return a view of mapped data; it is
  // dropped right after encoding.
  using TensorProducer = std::function<torch::Tensor(size_t index, const TensorSpec& spec)>;
  // Writes the file atomically; `on_tensor` (optional) is called after each tensor with its index.
  void write_file(const fs::path& path, const TensorProducer& produce,
                  const std::function<void(size_t index, const TensorSpec& spec)>& on_tensor = {}) const;

 private:
  void begin_kv(const std::string& key, ValueType type);
  void put_string(const std::string& s);
  template <typename T>
  void put(T v);

  uint32_t alignment_;
  std::string kv_bytes_;  // encoded KV section
  std::vector<std::string> keys_;
  size_t kv_count_ = 0;
  std::vector<TensorSpec> tensors_;
  uint64_t data_bytes_ = 0;  // data section size so far (aligned end of the last tensor)
};

// Encodes a tensor (any float dtype, any layout) into the bytes of ggml type `type`, row-major. The last dim must be
// a multiple of the block size (32 for Q8_0/Q4_0/Q5_0/Q5_1, 256 for Q4_K/Q5_K/Q6_K).
std::vector<uint8_t> encode_tensor(const torch::Tensor& t, GgmlType type);

}  // namespace qlora::gguf
