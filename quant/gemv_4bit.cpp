#include "quant/gemv_4bit.h"

#include <array>
#include <stdexcept>
#include <string>

#include "quant/codec_4bit.h"

namespace qlora::quant {

void gemv_4bit_ref(const Gemv4bitArgs& a) {
  if (a.in_features % codec::kGemvChunk != 0) {
    throw std::invalid_argument("gemv_4bit: in_features " + std::to_string(a.in_features) + " is not a multiple of 32");
  }
  const int64_t chunks = a.in_features / codec::kGemvChunk;
  for (int64_t o = 0; o < a.out_features; ++o) {
    std::array<float, codec::kGemvLanes> lane{};
    for (int l = 0; l < codec::kGemvLanes; ++l) {
      float acc = 0.0f;
      for (int64_t c = l; c < chunks; c += codec::kGemvLanes) {
        const int64_t e0 = o * a.in_features + c * codec::kGemvChunk;  // first element of the chunk
        const float absmax = a.w.block_absmax(e0 / a.w.blocksize, a.w.nested_code);
        acc = codec::gemv_chunk(a.w.packed + e0 / 2, a.x + c * codec::kGemvChunk, a.w.code, absmax, acc);
      }
      lane[static_cast<size_t>(l)] = acc;
    }
    for (int off = codec::kGemvLanes / 2; off >= 1; off /= 2) {
      std::array<float, codec::kGemvLanes> next{};
      for (int l = 0; l < codec::kGemvLanes; ++l) {
        next[static_cast<size_t>(l)] = lane[static_cast<size_t>(l)] + lane[static_cast<size_t>(l ^ off)];
      }
      lane = next;
    }
    if (a.out_bf16) {
      static_cast<uint16_t*>(a.y)[o] = codec::bf16_bits_rne(lane[0]);
    } else {
      static_cast<float*>(a.y)[o] = lane[0];
    }
  }
}

}  // namespace qlora::quant
