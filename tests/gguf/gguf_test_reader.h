// A GGUF v3 reader for the tests, written from the format description (formats.md section 6) and sharing no code
// with gguf/: it parses every byte, validates the structure (magic, version, counts, value types, name lengths,
// alignment of the data section and of every tensor offset, sizes, no overlaps, file length) and decodes tensor
// data of types F32, F16, BF16, Q8_0 and Q4_0 to float.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace qlora::test::gguf_reader {

// One metadata value. Numbers (all integer and float types, bool) are kept as double (exact for what we write);
// strings as strings. Arrays fill the vectors with `count` entries; scalars with one.
struct Kv {
  uint32_t type = 0;       // 0..12
  uint32_t elem_type = 0;  // for arrays (type 9)
  bool is_array = false;
  std::vector<double> num;
  std::vector<std::string> str;
  double n() const { return num.at(0); }
  const std::string& s() const { return str.at(0); }
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order
  uint32_t type = 0;
  uint64_t offset = 0;  // relative to data start
  uint64_t nbytes = 0;
  uint64_t numel() const {
    uint64_t n = 1;
    for (auto d : ne) n *= d;
    return n;
  }
};

struct File {
  uint32_t version = 0;
  std::vector<std::string> key_order;
  std::map<std::string, Kv> kv;
  std::vector<TensorInfo> tensors;
  uint32_t alignment = 32;
  uint64_t data_start = 0;
  std::string bytes;  // the whole file

  const TensorInfo& tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name);
  }
  bool has_tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return true;
    return false;
  }
  const Kv& at(const std::string& key) const {
    auto it = kv.find(key);
    if (it == kv.end()) throw std::runtime_error("no key " + key);
    return it->second;
  }
  // Tensor data decoded to float, in ggml order (ne[0] fastest) = row-major of the PyTorch shape.
  std::vector<float> decode(const std::string& name) const;
  const uint8_t* raw(const TensorInfo& t) const {
    return reinterpret_cast<const uint8_t*>(bytes.data()) + data_start + t.offset;
  }
};

// Bytes per block and elements per block of the ggml types we expect.
inline void type_layout(uint32_t type, uint64_t* block_elems, uint64_t* block_bytes) {
  switch (type) {
    case 0:
      *block_elems = 1, *block_bytes = 4;
      return;  // F32
    case 1:
      *block_elems = 1, *block_bytes = 2;
      return;  // F16
    case 30:
      *block_elems = 1, *block_bytes = 2;
      return;  // BF16
    case 8:
      *block_elems = 32, *block_bytes = 34;
      return;  // Q8_0: fp16 d + 32 x int8
    case 2:
      *block_elems = 32, *block_bytes = 18;
      return;  // Q4_0: fp16 d + 16 bytes of nibbles
    default:
      throw std::runtime_error("unexpected ggml type " + std::to_string(type));
  }
}

class Cursor {
 public:
  explicit Cursor(const std::string& b) : b_(b) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    const auto n = get<uint64_t>();
    need(n);
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t pos() const { return pos_; }

 private:
  void need(uint64_t n) const {
    if (pos_ + n > b_.size()) throw std::runtime_error("GGUF truncated at byte " + std::to_string(pos_));
  }
  const std::string& b_;
  uint64_t pos_ = 0;
};

inline void read_value(Cursor& c, uint32_t type, Kv& kv) {
  switch (type) {
    case 0:
      kv.num.push_back(c.get<uint8_t>());
      break;
    case 1:
      kv.num.push_back(c.get<int8_t>());
      break;
    case 2:
      kv.num.push_back(c.get<uint16_t>());
      break;
    case 3:
      kv.num.push_back(c.get<int16_t>());
      break;
    case 4:
      kv.num.push_back(c.get<uint32_t>());
      break;
    case 5:
      kv.num.push_back(c.get<int32_t>());
      break;
    case 6:
      kv.num.push_back(c.get<float>());
      break;
    case 7: {
      const auto b = c.get<uint8_t>();
      if (b > 1) throw std::runtime_error("bool value " + std::to_string(b));
      kv.num.push_back(b);
      break;
    }
    case 8:
      kv.str.push_back(c.str());
      break;
    case 10:
      kv.num.push_back(static_cast<double>(c.get<uint64_t>()));
      break;
    case 11:
      kv.num.push_back(static_cast<double>(c.get<int64_t>()));
      break;
    case 12:
      kv.num.push_back(c.get<double>());
      break;
    default:
      throw std::runtime_error("bad value type " + std::to_string(type));
  }
}

inline File parse(const std::string& bytes) {
  File f;
  f.bytes = bytes;
  Cursor c(f.bytes);
  if (bytes.size() < 4 || bytes.compare(0, 4, "GGUF") != 0) throw std::runtime_error("bad magic");
  c.get<uint32_t>();
  f.version = c.get<uint32_t>();
  if (f.version != 3) throw std::runtime_error("version " + std::to_string(f.version));
  const auto n_tensors = c.get<uint64_t>();
  const auto n_kv = c.get<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = c.str();
    if (f.kv.count(key)) throw std::runtime_error("duplicate key " + key);
    Kv kv;
    kv.type = c.get<uint32_t>();
    if (kv.type == 9) {
      kv.is_array = true;
      kv.elem_type = c.get<uint32_t>();
      if (kv.elem_type == 9) throw std::runtime_error("nested array in " + key);
      const auto count = c.get<uint64_t>();
      for (uint64_t j = 0; j < count; ++j) read_value(c, kv.elem_type, kv);
    } else {
      read_value(c, kv.type, kv);
    }
    f.key_order.push_back(key);
    f.kv[key] = std::move(kv);
  }
  if (f.kv.count("general.alignment")) {
    const Kv& a = f.kv["general.alignment"];
    if (a.type != 4) throw std::runtime_error("general.alignment must be u32");
    f.alignment = static_cast<uint32_t>(a.n());
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.str();
    if (t.name.size() > 64) throw std::runtime_error("tensor name longer than 64: " + t.name);
    const auto n_dims = c.get<uint32_t>();
    if (n_dims < 1 || n_dims > 4) throw std::runtime_error("n_dims " + std::to_string(n_dims));
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(c.get<uint64_t>());
    t.type = c.get<uint32_t>();
    t.offset = c.get<uint64_t>();
    uint64_t be, bb;
    type_layout(t.type, &be, &bb);
    if (t.ne[0] % be != 0) throw std::runtime_error(t.name + ": row not a multiple of the block size");
    t.nbytes = t.numel() / be * bb;
    if (t.offset % f.alignment != 0) throw std::runtime_error(t.name + ": unaligned offset");
    f.tensors.push_back(t);
  }
  f.data_start = (c.pos() + f.alignment - 1) / f.alignment * f.alignment;
  for (uint64_t p = c.pos(); p < f.data_start; ++p) {
    if (bytes[p] != 0) throw std::runtime_error("non-zero padding before data");
  }
  uint64_t end = 0;
  for (const auto& t : f.tensors) {  // in declaration order, offsets ascending without overlap
    if (t.offset < end) throw std::runtime_error(t.name + ": overlaps the previous tensor");
    end = t.offset + t.nbytes;
  }
  if (f.data_start + end > bytes.size()) throw std::runtime_error("tensor data past the end of the file");
  return f;
}

inline File read(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str());
}

inline float half_bits_to_float(uint16_t h) {
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

inline std::vector<float> File::decode(const std::string& name) const {
  const TensorInfo& t = tensor(name);
  const uint8_t* p = raw(t);
  std::vector<float> out(t.numel());
  switch (t.type) {
    case 0:
      std::memcpy(out.data(), p, out.size() * 4);
      break;
    case 1:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = half_bits_to_float(h);
      }
      break;
    case 30:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = static_cast<float>(c10::BFloat16(h, c10::BFloat16::from_bits()));
      }
      break;
    case 8:
      for (size_t b = 0; b < out.size() / 32; ++b) {
        const uint8_t* blk = p + 34 * b;
        uint16_t d;
        std::memcpy(&d, blk, 2);
        for (int j = 0; j < 32; ++j) out[32 * b + j] = static_cast<int8_t>(blk[2 + j]) * half_bits_to_float(d);
      }
      break;
    case 2:
      for (size_t b = 0; b < out.size() / 32; ++b) {
        const uint8_t* blk = p + 18 * b;
        uint16_t d;
        std::memcpy(&d, blk, 2);
        for (int j = 0; j < 16; ++j) {
          out[32 * b + j] = ((blk[2 + j] & 15) - 8) * half_bits_to_float(d);
          out[32 * b + j + 16] = ((blk[2 + j] >> 4) - 8) * half_bits_to_float(d);
        }
      }
      break;
    default:
      throw std::runtime_error("cannot decode type " + std::to_string(t.type));
  }
  return out;
}

}  // namespace qlora::test::gguf_reader
