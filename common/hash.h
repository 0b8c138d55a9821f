// Non-cryptographic hashing for identities that are written to disk (config hashes, checkpoint fingerprints,
// per-module seeds): FNV-1a 64-bit, so a value computed today is the value computed by every later version.
#pragma once

#include <cstdint>
#include <string_view>

namespace qlora {

constexpr uint64_t kFnv1a64Offset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnv1a64Prime = 0x100000001b3ull;
// The offset basis that config hashes (trainer/config.cpp) and checkpoint fingerprints (trainer/checkpoint.cpp)
// were first written with: FNV's basis with its last digit lost. Still a fine hash; kept so that run hashes in
// existing checkpoints keep matching. New uses take kFnv1a64Offset.
constexpr uint64_t kRunHashOffset = 1469598103934665603ull;

// FNV-1a over the bytes of `s`, continuing from `h` (chain calls to hash several parts).
constexpr uint64_t fnv1a64(std::string_view s, uint64_t h = kFnv1a64Offset) {
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= kFnv1a64Prime;
  }
  return h;
}

// The published FNV-1a test vectors (http://www.isthe.com/chongo/tech/comp/fnv/).
static_assert(fnv1a64("") == 0xcbf29ce484222325ull);
static_assert(fnv1a64("a") == 0xaf63dc4c8601ec8cull);
static_assert(fnv1a64("foobar") == 0x85944171f73967e8ull);

}  // namespace qlora
