// An open-addressing hash map from byte strings to ids, looked up by string_view (no allocation on the hot path
// of BPE encoding). Private to tokenizer/.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace qlora::tokenizer::detail {

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t k;
    std::memcpy(&k, s.data() + i, 8);
    h = (h ^ k) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  if (i < s.size()) std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

// Open-addressing map from byte strings to ids, looked up by string_view (no allocation on the hot path).
class StringIdMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    rehash(cap);
  }
  // Keeps the first value stored for a key.
  void insert(std::string_view key, int32_t value) {
    if ((keys_.size() + 1) * 2 > slots_.size()) rehash(std::max<size_t>(16, slots_.size() * 2));
    const uint64_t h = hash_bytes(key);
    size_t i = h & (slots_.size() - 1);
    for (; slots_[i] >= 0; i = (i + 1) & (slots_.size() - 1)) {
      if (hashes_[slots_[i]] == h && keys_[slots_[i]] == key) return;
    }
    slots_[i] = int32_t(keys_.size());
    keys_.emplace_back(key);
    hashes_.push_back(h);
    values_.push_back(value);
  }
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(key);
    for (size_t i = h & (slots_.size() - 1); slots_[i] >= 0; i = (i + 1) & (slots_.size() - 1)) {
      const int32_t e = slots_[i];
      if (hashes_[e] == h && keys_[e] == key) return values_[e];
    }
    return -1;
  }

 private:
  void rehash(size_t cap) {
    slots_.assign(cap, -1);
    for (size_t e = 0; e < keys_.size(); ++e) {
      size_t i = hashes_[e] & (cap - 1);
      while (slots_[i] >= 0) i = (i + 1) & (cap - 1);
      slots_[i] = int32_t(e);
    }
  }
  std::vector<int32_t> slots_;
  std::vector<std::string> keys_;
  std::vector<uint64_t> hashes_;
  std::vector<int32_t> values_;
};

}  // namespace qlora::tokenizer::detail
