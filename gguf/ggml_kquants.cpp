// Q4_K / Q5_K / Q6_K reference codecs. Every float operation below mirrors the order of ggml's reference quantizer,
// in float32 and without contraction into fused multiply-adds (the project builds for baseline x86-64 without
// -ffast-math), because the point is byte identity with llama-quantize: a different summation order or a fused
// multiply-add changes a rounding, which can flip a scale search and so whole blocks.
#include "gguf/ggml_kquants.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qlora::gguf {

namespace {

constexpr int kSub = 32;            // Q4_K / Q5_K sub-block size
constexpr int kSub6 = 16;           // Q6_K sub-block size
constexpr float kZeroEps = 1e-15f;  // a group whose largest magnitude is below this is all zeros

// Round to nearest, ties to even, as ggml does it: adding 1.5 * 2^23 pushes the integer part into the low
// mantissa bits (exact for |v| < 2^22, which every caller stays within).
int round_to_int(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

// Fits n weights to x ~ scale * q - offset with q in [0, nmax], offset >= 0 (written to *offset), minimizing the
// w-weighted squared error. Starts from the grid spanning [min(x, 0), max(x)], then tries nstep + 1 stretched grids
// of (nmax + rmin + rdelta * i) steps over the range, each with its weighted least-squares scale and offset, and
// keeps the best. A better fit moves the range's lower end, which later grids start from.
float fit_scale_offset(int n, int nmax, const float* x, const float* w, uint8_t* q, float* offset, float rmin,
                       float rdelta, int nstep) {
  float lo = x[0];
  float hi = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    std::fill(q, q + n, uint8_t{0});
    *offset = -lo;
    return 0.0f;
  }
  float inv = static_cast<float>(nmax) / (hi - lo);
  float scale = 1.0f / inv;
  float best_err = 0.0f;
  for (int i = 0; i < n; ++i) {
    q[i] = static_cast<uint8_t>(std::clamp(round_to_int(inv * (x[i] - lo)), 0, nmax));
    const float diff = scale * static_cast<float>(q[i]) + lo - x[i];
    best_err += w[i] * (diff * diff);
  }
  uint8_t trial[kSub];
  for (int step = 0; step <= nstep; ++step) {
    inv = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(nmax)) / (hi - lo);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(round_to_int(inv * (x[i] - lo)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      const float fl = static_cast<float>(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_lo = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_lo > 0) {  // the offset may only lower the grid: refit the scale alone
      this_lo = 0;
      this_scale = sum_xl / sum_l2;
    }
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * static_cast<float>(trial[i]) + this_lo - x[i];
      err += w[i] * (diff * diff);
    }
    if (err < best_err) {
      std::copy(trial, trial + n, q);
      best_err = err;
      scale = this_scale;
      lo = this_lo;
    }
  }
  *offset = -lo;
  return scale;
}

// Symmetric fit of n weights to x ~ scale * (q - nmax) with q - nmax in [-nmax, nmax - 1], weighting each error by
// x^2. The grid puts the largest-magnitude weight on -nmax; 18 more grids of nmax + 0.1 * i steps (i = -9..9) are
// tried and the one with the best least-squares score sum(w x l)^2 / sum(w l^2) kept.
float fit_symmetric_scale(int n, int nmax, const float* x, int8_t* q) {
  float peak = 0.0f;  // the signed weight of largest magnitude (first one on ties)
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      peak = x[i];
    }
  }
  if (amax < kZeroEps) {
    std::fill(q, q + n, int8_t{0});
    return 0.0f;
  }
  // Least-squares sums of a grid with inverse scale `inv`; writes q when `store`.
  auto score = [&](float inv, float* sum_lx, float* sum_l2, bool store) {
    *sum_lx = 0.0f;
    *sum_l2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(round_to_int(inv * x[i]), -nmax, nmax - 1);
      if (store) q[i] = static_cast<int8_t>(l + nmax);
      const float w = x[i] * x[i];
      const float fl = static_cast<float>(l);
      *sum_lx += w * x[i] * fl;
      *sum_l2 += w * fl * fl;
    }
  };
  float sum_lx, sum_l2;
  score(static_cast<float>(-nmax) / peak, &sum_lx, &sum_l2, /*store=*/true);
  float scale = sum_l2 != 0.0f ? sum_lx / sum_l2 : 0.0f;
  float best = scale * sum_lx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    const float inv = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / peak;
    score(inv, &sum_lx, &sum_l2, /*store=*/false);
    if (sum_l2 > 0 && sum_lx * sum_lx > best * sum_l2) {
      score(inv, &sum_lx, &sum_l2, /*store=*/true);
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

// The 12 packed scale bytes of a Q4_K / Q5_K block from 8 six-bit scales and mins (layout in ggml_kquants.h).
void pack_k_scale_min(const uint8_t* sc, const uint8_t* m, uint8_t* out) {
  for (int s = 0; s < 4; ++s) {
    out[s] = static_cast<uint8_t>(sc[s] | ((sc[s + 4] >> 4) << 6));
    out[s + 4] = static_cast<uint8_t>(m[s] | ((m[s + 4] >> 4) << 6));
    out[s + 8] = static_cast<uint8_t>((sc[s + 4] & 0xf) | ((m[s + 4] & 0xf) << 4));
  }
}

// The shared first half of Q4_K / Q5_K: per 32-weight sub-block a scale/offset fit with weights
// rms(sub-block) + |x|, both quantized to 6 bits against the largest of each, then every weight re-quantized to
// [0, nmax] with the stored (fp16-rounded) factors. Fills d, dmin, scales and L (256 levels).
void quantize_k_superblock(const float* x, int nmax, float rmin, float rdelta, int nstep, uint16_t* d, uint16_t* dmin,
                           uint8_t* scales, uint8_t* L) {
  float sub_scale[kQK_K / kSub];
  float sub_offset[kQK_K / kSub];
  float weights[kSub];
  float max_scale = 0.0f;  // scales are >= 0 once the offset is taken out
  float max_offset = 0.0f;
  for (int s = 0; s < kQK_K / kSub; ++s) {
    const float* xs = x + kSub * s;
    float sum_x2 = 0.0f;
    for (int l = 0; l < kSub; ++l) sum_x2 += xs[l] * xs[l];
    const float rms = std::sqrt(sum_x2 / static_cast<float>(kSub));
    for (int l = 0; l < kSub; ++l) weights[l] = rms + std::fabs(xs[l]);
    sub_scale[s] = fit_scale_offset(kSub, nmax, xs, weights, L + kSub * s, &sub_offset[s], rmin, rdelta, nstep);
    if (sub_scale[s] > max_scale) max_scale = sub_scale[s];
    if (sub_offset[s] > max_offset) max_offset = sub_offset[s];
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_offset = max_offset > 0 ? 63.0f / max_offset : 0.0f;
  uint8_t sc[kQK_K / kSub];
  uint8_t m[kQK_K / kSub];
  for (int s = 0; s < kQK_K / kSub; ++s) {
    // Truncated to a byte as ggml stores it, then capped at 63.
    sc[s] = std::min<uint8_t>(63, static_cast<uint8_t>(round_to_int(inv_scale * sub_scale[s])));
    m[s] = std::min<uint8_t>(63, static_cast<uint8_t>(round_to_int(inv_offset * sub_offset[s])));
  }
  pack_k_scale_min(sc, m, scales);
  *d = fp32_to_fp16(max_scale / 63.0f);
  *dmin = fp32_to_fp16(max_offset / 63.0f);
  for (int s = 0; s < kQK_K / kSub; ++s) {
    uint8_t ss, mm;
    unpack_k_scale_min(s, scales, &ss, &mm);
    const float ds = fp16_to_fp32(*d) * static_cast<float>(ss);
    if (ds == 0.0f) continue;  // keep the fit's levels
    const float ms = fp16_to_fp32(*dmin) * static_cast<float>(mm);
    for (int l = 0; l < kSub; ++l) {
      L[kSub * s + l] = static_cast<uint8_t>(std::clamp(round_to_int((x[kSub * s + l] + ms) / ds), 0, nmax));
    }
  }
}

void check_row(int64_t k, const char* type) {
  TORCH_CHECK(k % kQK_K == 0, type, " row length ", k, " is not a multiple of 256");
}

}  // namespace

void unpack_k_scale_min(int s, const uint8_t* scales, uint8_t* sc, uint8_t* m) {
  if (s < 4) {
    *sc = scales[s] & 63;
    *m = scales[s + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((scales[s + 4] & 0xf) | ((scales[s - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((scales[s + 4] >> 4) | ((scales[s] >> 6) << 4));
  }
}

void quantize_row_q4_K_ref(const float* x, BlockQ4K* y, int64_t k) {
  check_row(k, "Q4_K");
  uint8_t L[kQK_K];
  for (int64_t b = 0; b < k / kQK_K; ++b, x += kQK_K) {
    quantize_k_superblock(x, /*nmax=*/15, /*rmin=*/-1.0f, /*rdelta=*/0.1f, /*nstep=*/20, &y[b].d, &y[b].dmin,
                          y[b].scales, L);
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l)
        y[b].qs[32 * g + l] = static_cast<uint8_t>(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
    }
  }
}

void dequantize_row_q4_K(const BlockQ4K* x, float* y, int64_t k) {
  check_row(k, "Q4_K");
  for (int64_t b = 0; b < k / kQK_K; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    const float dmin = fp16_to_fp32(x[b].dmin);
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      unpack_k_scale_min(s, x[b].scales, &sc, &m);
      const float ds = d * static_cast<float>(sc);
      const float ms = dmin * static_cast<float>(m);
      const uint8_t* qs = x[b].qs + 32 * (s / 2);
      const int shift = (s % 2) * 4;
      for (int l = 0; l < 32; ++l) *y++ = ds * static_cast<float>((qs[l] >> shift) & 0xf) - ms;
    }
  }
}

void quantize_row_q5_K_ref(const float* x, BlockQ5K* y, int64_t k) {
  check_row(k, "Q5_K");
  uint8_t L[kQK_K];
  for (int64_t b = 0; b < k / kQK_K; ++b, x += kQK_K) {
    quantize_k_superblock(x, /*nmax=*/31, /*rmin=*/-0.5f, /*rdelta=*/0.1f, /*nstep=*/15, &y[b].d, &y[b].dmin,
                          y[b].scales, L);
    std::memset(y[b].qh, 0, sizeof(y[b].qh));
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        const int lo = L[64 * g + l];
        const int hi = L[64 * g + 32 + l];
        y[b].qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
        y[b].qs[32 * g + l] = static_cast<uint8_t>((lo & 0xf) | ((hi & 0xf) << 4));
      }
    }
  }
}

void dequantize_row_q5_K(const BlockQ5K* x, float* y, int64_t k) {
  check_row(k, "Q5_K");
  for (int64_t b = 0; b < k / kQK_K; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    const float dmin = fp16_to_fp32(x[b].dmin);
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      unpack_k_scale_min(s, x[b].scales, &sc, &m);
      const float ds = d * static_cast<float>(sc);
      const float ms = dmin * static_cast<float>(m);
      const uint8_t* qs = x[b].qs + 32 * (s / 2);
      const int shift = (s % 2) * 4;
      for (int l = 0; l < 32; ++l) {
        const int q = ((qs[l] >> shift) & 0xf) | (((x[b].qh[l] >> s) & 1) << 4);
        *y++ = ds * static_cast<float>(q) - ms;
      }
    }
  }
}

void quantize_row_q6_K_ref(const float* x, BlockQ6K* y, int64_t k) {
  check_row(k, "Q6_K");
  int8_t L[kQK_K];
  float sub_scale[kQK_K / kSub6];
  for (int64_t b = 0; b < k / kQK_K; ++b, x += kQK_K) {
    float max_scale = 0.0f;  // the signed sub-block scale of largest magnitude
    float max_abs = 0.0f;
    for (int s = 0; s < kQK_K / kSub6; ++s) {
      sub_scale[s] = fit_symmetric_scale(kSub6, /*nmax=*/32, x + kSub6 * s, L + kSub6 * s);
      if (std::fabs(sub_scale[s]) > max_abs) {
        max_abs = std::fabs(sub_scale[s]);
        max_scale = sub_scale[s];
      }
    }
    if (max_abs < kZeroEps) {
      std::memset(&y[b], 0, sizeof(BlockQ6K));
      continue;
    }
    const float inv = -128.0f / max_scale;
    y[b].d = fp32_to_fp16(1.0f / inv);
    for (int s = 0; s < kQK_K / kSub6; ++s) {
      y[b].scales[s] = static_cast<int8_t>(std::min(127, round_to_int(inv * sub_scale[s])));
    }
    for (int s = 0; s < kQK_K / kSub6; ++s) {
      const float ds = fp16_to_fp32(y[b].d) * static_cast<float>(y[b].scales[s]);
      if (ds == 0.0f) continue;  // keep the fit's levels
      for (int l = 0; l < kSub6; ++l) {
        L[kSub6 * s + l] = static_cast<int8_t>(std::clamp(round_to_int(x[kSub6 * s + l] / ds), -32, 31) + 32);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const int8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l) {
        y[b].ql[64 * h + l] = static_cast<uint8_t>((Lh[l] & 0xf) | ((Lh[64 + l] & 0xf) << 4));
        y[b].ql[64 * h + 32 + l] = static_cast<uint8_t>((Lh[32 + l] & 0xf) | ((Lh[96 + l] & 0xf) << 4));
        y[b].qh[32 * h + l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[32 + l] >> 4) << 2) | ((Lh[64 + l] >> 4) << 4) |
                                                   ((Lh[96 + l] >> 4) << 6));
      }
    }
  }
}

void dequantize_row_q6_K(const BlockQ6K* x, float* y, int64_t k) {
  check_row(k, "Q6_K");
  for (int64_t b = 0; b < k / kQK_K; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    for (int i = 0; i < kQK_K; ++i) {
      const int h = i / 128, quarter = (i % 128) / 32, l = i % 32;
      const uint8_t lowbyte = x[b].ql[64 * h + 32 * (quarter % 2) + l];
      const int low = quarter < 2 ? (lowbyte & 0xf) : (lowbyte >> 4);
      const int high = (x[b].qh[32 * h + l] >> (2 * quarter)) & 3;
      const float ds = d * static_cast<float>(x[b].scales[i / kSub6]);
      *y++ = ds * static_cast<float>((low | (high << 4)) - 32);
    }
  }
}

}  // namespace qlora::gguf
