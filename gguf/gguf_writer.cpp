#include "gguf/gguf_writer.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <cstring>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "gguf/ggml_kquants.h"

namespace qlora::gguf {

namespace {

uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

bool host_is_little_endian() {
  const uint16_t one = 1;
  uint8_t b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

}  // namespace

std::vector<int64_t> TensorSpec::ne() const {
  return {shape.rbegin(), shape.rend()};
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  TORCH_CHECK(host_is_little_endian(), "GGUF writer: big-endian hosts are not supported");
  TORCH_CHECK(alignment > 0 && alignment % 8 == 0, "GGUF alignment must be a positive multiple of 8, got ", alignment);
}

template <typename T>
void GgufWriter::put(T v) {
  kv_bytes_.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void GgufWriter::put_string(const std::string& s) {
  put<uint64_t>(s.size());
  kv_bytes_.append(s);
}

void GgufWriter::begin_kv(const std::string& key, ValueType type) {
  TORCH_CHECK(!key.empty() && key.size() < 65536, "GGUF key length must be 1..65535: '", key, "'");
  for (const auto& k : keys_) TORCH_CHECK(k != key, "GGUF key added twice: ", key);
  keys_.push_back(key);
  ++kv_count_;
  put_string(key);
  put<uint32_t>(static_cast<uint32_t>(type));
}

void GgufWriter::add_u8(const std::string& key, uint8_t v) {
  begin_kv(key, ValueType::kUint8), put(v);
}
void GgufWriter::add_i8(const std::string& key, int8_t v) {
  begin_kv(key, ValueType::kInt8), put(v);
}
void GgufWriter::add_u16(const std::string& key, uint16_t v) {
  begin_kv(key, ValueType::kUint16), put(v);
}
void GgufWriter::add_i16(const std::string& key, int16_t v) {
  begin_kv(key, ValueType::kInt16), put(v);
}
void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  begin_kv(key, ValueType::kUint32), put(v);
}
void GgufWriter::add_i32(const std::string& key, int32_t v) {
  begin_kv(key, ValueType::kInt32), put(v);
}
void GgufWriter::add_f32(const std::string& key, float v) {
  begin_kv(key, ValueType::kFloat32), put(v);
}
void GgufWriter::add_u64(const std::string& key, uint64_t v) {
  begin_kv(key, ValueType::kUint64), put(v);
}
void GgufWriter::add_i64(const std::string& key, int64_t v) {
  begin_kv(key, ValueType::kInt64), put(v);
}
void GgufWriter::add_f64(const std::string& key, double v) {
  begin_kv(key, ValueType::kFloat64), put(v);
}
void GgufWriter::add_bool(const std::string& key, bool v) {
  begin_kv(key, ValueType::kBool);
  put<uint8_t>(v ? 1 : 0);
}
void GgufWriter::add_string(const std::string& key, const std::string& v) {
  begin_kv(key, ValueType::kString);
  put_string(v);
}

#define QLORA_GGUF_ARRAY(fn, T, vt)                                      \
  void GgufWriter::fn(const std::string& key, const std::vector<T>& v) { \
    begin_kv(key, ValueType::kArray);                                    \
    put<uint32_t>(static_cast<uint32_t>(vt));                            \
    put<uint64_t>(v.size());                                             \
    for (const T& x : v) put<T>(x);                                      \
  }
QLORA_GGUF_ARRAY(add_array_u8, uint8_t, ValueType::kUint8)
QLORA_GGUF_ARRAY(add_array_i32, int32_t, ValueType::kInt32)
QLORA_GGUF_ARRAY(add_array_u32, uint32_t, ValueType::kUint32)
QLORA_GGUF_ARRAY(add_array_i64, int64_t, ValueType::kInt64)
QLORA_GGUF_ARRAY(add_array_f32, float, ValueType::kFloat32)
QLORA_GGUF_ARRAY(add_array_f64, double, ValueType::kFloat64)
#undef QLORA_GGUF_ARRAY

void GgufWriter::add_array_bool(const std::string& key, const std::vector<bool>& v) {
  begin_kv(key, ValueType::kArray);
  put<uint32_t>(static_cast<uint32_t>(ValueType::kBool));
  put<uint64_t>(v.size());
  for (bool x : v) put<uint8_t>(x ? 1 : 0);
}

void GgufWriter::add_array_string(const std::string& key, const std::vector<std::string>& v) {
  begin_kv(key, ValueType::kArray);
  put<uint32_t>(static_cast<uint32_t>(ValueType::kString));
  put<uint64_t>(v.size());
  for (const auto& s : v) put_string(s);
}

const TensorSpec& GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type) {
  if (name.empty() || name.size() > kGgufMaxTensorName) {
    throw Error("GGUF tensor name '" + name + "' has " + std::to_string(name.size()) + " bytes; llama.cpp accepts 1.." +
                std::to_string(kGgufMaxTensorName));
  }
  for (const auto& t : tensors_) TORCH_CHECK(t.name != name, "GGUF tensor declared twice: ", name);
  if (shape.empty() || shape.size() > static_cast<size_t>(kGgufMaxDims)) {
    throw Error("GGUF tensor '" + name + "': " + std::to_string(shape.size()) + " dims (1..4 allowed)");
  }
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d <= 0) throw Error("GGUF tensor '" + name + "': every dimension must be positive");
    numel *= d;
  }
  const int64_t bs = ggml_block_size(type);
  if (shape.back() % bs != 0) {
    throw Error("GGUF tensor '" + name + "': row length " + std::to_string(shape.back()) + " is not a multiple of " +
                std::to_string(bs) + " as " + ggml_type_name(type) + " needs\nHINT: use f16/bf16/f32 for it");
  }
  TensorSpec spec;
  spec.name = name;
  spec.shape = shape;
  spec.type = type;
  spec.offset = align_up(data_bytes_, alignment_);
  spec.nbytes = ggml_nbytes(type, numel);
  data_bytes_ = spec.offset + spec.nbytes;
  tensors_.push_back(std::move(spec));
  return tensors_.back();
}

namespace {

// The tensor-info section plus the fixed header, encoded.
std::string encode_header(size_t n_kv, const std::string& kv_bytes, const std::vector<TensorSpec>& tensors) {
  std::string out;
  auto put32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  auto put64 = [&](uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); };
  put32(kGgufMagic);
  put32(kGgufVersion);
  put64(tensors.size());
  put64(n_kv);
  out += kv_bytes;
  for (const auto& t : tensors) {
    put64(t.name.size());
    out += t.name;
    put32(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.ne()) put64(static_cast<uint64_t>(d));
    put32(static_cast<uint32_t>(t.type));
    put64(t.offset);
  }
  return out;
}

}  // namespace

uint64_t GgufWriter::header_bytes() const {
  // The alignment KV is part of the caller's metadata; we only pad what is there.
  return align_up(encode_header(kv_count_, kv_bytes_, tensors_).size(), alignment_);
}

uint64_t GgufWriter::file_bytes() const {
  return header_bytes() + align_up(data_bytes_, alignment_);
}

namespace {

// n floats -> n / block_size blocks with a row quantizer, `grain` blocks per parallel task (blocks are independent).
template <typename Block>
void quantize_blocks(const float* x, Block* y, int64_t n, int64_t block_size, int64_t grain,
                     void (*quantize_row)(const float*, Block*, int64_t)) {
  at::parallel_for(0, n / block_size, grain,
                   [&](int64_t b, int64_t e) { quantize_row(x + b * block_size, y + b, (e - b) * block_size); });
}

}  // namespace

std::vector<uint8_t> encode_tensor(const torch::Tensor& t, GgmlType type) {
  TORCH_CHECK(t.defined() && t.is_floating_point(), "encode_tensor: needs a floating-point tensor");
  const torch::Tensor src = t.device().is_cpu() ? t : t.cpu();
  const int64_t n = src.numel();
  std::vector<uint8_t> out(ggml_nbytes(type, n));
  if (type == GgmlType::kBF16 && src.scalar_type() == torch::kBFloat16) {  // exact copy
    const auto c = src.contiguous();
    std::memcpy(out.data(), c.data_ptr(), out.size());
    return out;
  }
  if (type == GgmlType::kF16 && src.scalar_type() == torch::kHalf) {
    const auto c = src.contiguous();
    std::memcpy(out.data(), c.data_ptr(), out.size());
    return out;
  }
  const auto f = src.to(torch::kFloat32).contiguous();
  const float* x = f.data_ptr<float>();
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out.data(), x, out.size());
      break;
    case GgmlType::kF16: {
      auto* y = reinterpret_cast<uint16_t*>(out.data());
      at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) y[i] = fp32_to_fp16(x[i]);
      });
      break;
    }
    case GgmlType::kBF16: {
      auto* y = reinterpret_cast<uint16_t*>(out.data());
      at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) y[i] = fp32_to_bf16(x[i]);
      });
      break;
    }
    case GgmlType::kQ8_0:
      quantize_blocks(x, reinterpret_cast<BlockQ8_0*>(out.data()), n, kQK8_0, 2048, quantize_row_q8_0_ref);
      break;
    case GgmlType::kQ4_0:
      quantize_blocks(x, reinterpret_cast<BlockQ4_0*>(out.data()), n, kQK4_0, 2048, quantize_row_q4_0_ref);
      break;
    case GgmlType::kQ5_0:
      quantize_blocks(x, reinterpret_cast<BlockQ5_0*>(out.data()), n, kQK5_0, 2048, quantize_row_q5_0_ref);
      break;
    case GgmlType::kQ5_1:
      quantize_blocks(x, reinterpret_cast<BlockQ5_1*>(out.data()), n, kQK5_1, 2048, quantize_row_q5_1_ref);
      break;
    case GgmlType::kQ4_K:
      quantize_blocks(x, reinterpret_cast<BlockQ4K*>(out.data()), n, kQK_K, 64, quantize_row_q4_K_ref);
      break;
    case GgmlType::kQ5_K:
      quantize_blocks(x, reinterpret_cast<BlockQ5K*>(out.data()), n, kQK_K, 64, quantize_row_q5_K_ref);
      break;
    case GgmlType::kQ6_K:
      quantize_blocks(x, reinterpret_cast<BlockQ6K*>(out.data()), n, kQK_K, 64, quantize_row_q6_K_ref);
      break;
  }
  return out;
}

void GgufWriter::write_file(const fs::path& path, const TensorProducer& produce,
                            const std::function<void(size_t, const TensorSpec&)>& on_tensor) const {
  const std::string header = encode_header(kv_count_, kv_bytes_, tensors_);
  write_file_atomic(path, [&](FileWriter& w) {
    w.write(header);
    w.pad_to(align_up(w.offset(), alignment_));
    const uint64_t data_start = w.offset();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorSpec& spec = tensors_[i];
      std::vector<uint8_t> bytes;
      {
        torch::Tensor t = produce(i, spec);
        TORCH_CHECK(t.defined(), "GGUF: no data produced for ", spec.name);
        TORCH_CHECK(t.sizes().vec() == spec.shape, "GGUF: tensor ", spec.name, " produced with shape ", t.sizes(),
                    ", declared ", c10::IntArrayRef(spec.shape));
        bytes = encode_tensor(t, spec.type);
      }
      TORCH_CHECK(bytes.size() == spec.nbytes, "GGUF: ", spec.name, " encoded to ", bytes.size(), " bytes, expected ",
                  spec.nbytes);
      w.pad_to(data_start + spec.offset);
      w.write(bytes.data(), bytes.size());
      if (on_tensor) on_tensor(i, spec);
    }
    w.pad_to(align_up(w.offset(), alignment_));
  });
}

}  // namespace qlora::gguf
