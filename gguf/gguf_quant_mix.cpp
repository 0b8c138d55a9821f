#include "gguf/gguf_quant_mix.h"

#include <cstdio>

namespace qlora::gguf {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool contains(const std::string& s, const char* part) {
  return s.find(part) != std::string::npos;
}

GgmlType base_type(KQuantMix mix) {
  switch (mix) {
    case KQuantMix::kQ4_K_M:
      return GgmlType::kQ4_K;
    case KQuantMix::kQ5_K_M:
      return GgmlType::kQ5_K;
    case KQuantMix::kQ6_K:
      return GgmlType::kQ6_K;
  }
  return GgmlType::kQ6_K;
}

// "blk.7.attn_v.weight" -> 7; -1 for tensors outside the layers.
int64_t layer_of(const std::string& name) {
  int layer = -1;
  if (std::sscanf(name.c_str(), "blk.%d.", &layer) != 1) return -1;
  return layer;
}

// llama.cpp's replacement for a type whose block does not divide the row: a 32-weight type of similar precision,
// or F16 when not even that fits.
GgmlType fit_row(GgmlType t, int64_t row) {
  if (row % ggml_block_size(t) == 0) return t;
  GgmlType fallback = GgmlType::kF16;
  switch (t) {
    case GgmlType::kQ4_K:
      fallback = GgmlType::kQ5_0;
      break;
    case GgmlType::kQ5_K:
      fallback = GgmlType::kQ5_1;
      break;
    case GgmlType::kQ6_K:
      fallback = GgmlType::kQ8_0;
      break;
    default:
      break;
  }
  return row % ggml_block_size(fallback) == 0 ? fallback : GgmlType::kF16;
}

}  // namespace

bool kquant_use_more_bits(int64_t i_layer, int64_t n_layer) {
  return i_layer < n_layer / 8 || i_layer >= 7 * n_layer / 8 || (i_layer - n_layer / 8) % 3 == 2;
}

GgmlType kquant_tensor_type(KQuantMix mix, const std::string& name, const std::vector<int64_t>& shape,
                            const KQuantModel& model) {
  if (shape.size() <= 1) return GgmlType::kF32;  // 1-D tensors are F32 in the F16 file and stay so
  // llama.cpp quantizes only "...weight" tensors that are not norms; anything else keeps the F16 file's type.
  if (!ends_with(name, "weight") || contains(name, "_norm.weight")) return GgmlType::kF16;
  const int64_t row = shape.back();
  const GgmlType base = base_type(mix);
  GgmlType t = base;
  const bool output = name == "output.weight" || (!model.has_output && name == "token_embd.weight");
  if (output) {
    t = row % ggml_block_size(base) != 0 ? GgmlType::kQ8_0 : GgmlType::kQ6_K;
  } else if (name == "token_embd.weight") {
    t = base;
  } else if (contains(name, "attn_qkv.weight") || contains(name, "attn_kv_b.weight") ||
             contains(name, "attn_v.weight") || contains(name, "ffn_down")) {
    // attn_v-like and ffn_down tensors: the n-th of them (one per layer here) gets Q6_K in the layers use_more_bits
    // picks, for the _M mixes.
    const bool more = mix != KQuantMix::kQ6_K && kquant_use_more_bits(layer_of(name), model.n_layer);
    if (more) t = GgmlType::kQ6_K;
  }
  return fit_row(t, row);
}

}  // namespace qlora::gguf
