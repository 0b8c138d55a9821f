// The per-element arithmetic of 4-bit dequantization, shared by the CPU reference kernel (dequantize_blocks_ref) and
// the CUDA kernels (bitsandbytes' layout: two codes per byte, the FIRST element in the HIGH nibble; blockwise absmax,
// optionally double-quantized). Plain C++ with no LibTorch: the CUDA compiler builds it for the device, the CPU build
// for the host, so CI tests on the CPU the exact bits the GPU computes.
//
//   value(e)  = round_to_out(code[nibble(e)] * absmax[e / blocksize])            (one fp32 multiply, then a cast)
//   absmax[b] = dynamic_map[qabsmax[b]] * absmax2[b / 256] + offset             (double quant: two fp32 roundings)
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QLORA_HD __host__ __device__ __forceinline__
#else
#define QLORA_HD inline
#endif

namespace qlora::quant::codec {

// ---------------------------------------------------------------------------------------------------------------
// Memory layout of n weights in blocks of B = blocksize (nblocks = ceil(n / B)). ggml stores each block as one struct
// (block_q4_0 = {fp16 d; uint8 qs[16]}); bitsandbytes keeps codes and scales in separate arrays, so a block here is
// an index range, not a struct, and Packed4bit below holds one pointer per array:
//   packed   uint8 [ceil(n / 2)]           two codes per byte, element 2i in the HIGH nibble of byte i
//   absmax   fp32  [nblocks]               plain: one scale per block, or with double quantization
//   qabsmax  uint8 [nblocks]               8-bit codes of absmax - offset against the signed dynamic map,
//   absmax2  fp32  [ceil(nblocks / 256)]   one scale per 256 qabsmax,
// plus per tensor the codebook (fp32 [16]) and, with double quantization, the dynamic map (fp32 [256]) and offset.
// Bits per weight, per-tensor tables aside:
//   plain:         4 + 32/B              (B = 64: 4.5)
//   double quant:  4 + 8/B + 32/(256 B)  (B = 64, NF4 + DQ: 4 + 8/64 + 32/(64*256) = 4.127)
constexpr int kCodeBits = 4;
constexpr int kCodesPerByte = 8 / kCodeBits;
constexpr int64_t kNestedBlocksize = 256;  // double quantization: absmax values per fp32 absmax2
constexpr int64_t kMinBlocksize = 32;      // blocksize: a power of two in [32, 4096] (bitsandbytes' range)
constexpr int64_t kMaxBlocksize = 4096;

constexpr bool valid_blocksize(int64_t b) {
  return b >= kMinBlocksize && b <= kMaxBlocksize && (b & (b - 1)) == 0;
}
// Bytes of n weights' codes: two per byte, an odd count padded with one code (of 0.0).
constexpr int64_t packed_bytes(int64_t n) {
  return (n + kCodesPerByte - 1) / kCodesPerByte;
}
constexpr double bits_per_weight(int64_t blocksize, bool double_quant) {
  return double_quant ? kCodeBits + 8.0 / blocksize + 32.0 / static_cast<double>(kNestedBlocksize * blocksize)
                      : kCodeBits + 32.0 / blocksize;
}

static_assert(kCodeBits * kCodesPerByte == 8, "two 4-bit codes fill a byte exactly");
static_assert(valid_blocksize(kMinBlocksize) && valid_blocksize(64) && valid_blocksize(kMaxBlocksize) &&
                  !valid_blocksize(48) && !valid_blocksize(16) && !valid_blocksize(8192),
              "blocksizes: powers of two in [32, 4096]");
// Every valid blocksize is a multiple of the smallest, so every block owns whole bytes and whole 16-lane SIMD steps
// (the CPU kernels rely on both).
static_assert(kMinBlocksize % kCodesPerByte == 0 && kMinBlocksize % 16 == 0, "blocks of whole bytes and SIMD steps");
static_assert(packed_bytes(64) == 32 && packed_bytes(65) == 33, "packed size: ceil(n / 2)");
static_assert(bits_per_weight(64, false) == 4.5, "plain blocksize 64: 4 + 32/64 bits per weight");
static_assert(bits_per_weight(64, true) == 4.126953125, "NF4 + DQ at 64: 4 + 8/64 + 32/(64*256) bits per weight");

// Code index of element e of a packed 4-bit array.
QLORA_HD int nibble_at(const uint8_t* packed, int64_t e) {
  const uint8_t byte = packed[e >> 1];
  return (e & 1) ? (byte & 0x0F) : (byte >> 4);
}

// a * b and a + b rounded on their own: never contracted into a fused multiply-add (bitsandbytes restores the
// double-quantized absmax with two separate roundings, and the GPU compiler fuses a * b + c unless told not to).
QLORA_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  volatile float r = a * b;
  return r;
#endif
}
QLORA_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  volatile float r = a + b;
  return r;
#endif
}

// fp32 absmax of a block from its double-quantized form.
QLORA_HD float absmax_from_dq(uint8_t qabsmax, float absmax2, float offset, const float* dynamic_map) {
  return add_rn(mul_rn(dynamic_map[qabsmax], absmax2), offset);
}

// fp32 -> bf16 bits, round to nearest even; NaN -> 0x7FC0 (what c10::BFloat16 gives).
QLORA_HD uint16_t bf16_bits_rne(float f) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(f);
#else
  std::memcpy(&bits, &f, sizeof(bits));
#endif
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7FFFu + lsb) >> 16);
}

// A 4-bit weight as the kernels read it (raw pointers into QuantizedTensor's parts; detail::packed_view makes one).
struct Packed4bit {
  const uint8_t* packed = nullptr;     // [ceil(n / 2)] codes, first element in the high nibble
  const float* code = nullptr;         // [16] codebook
  const float* absmax = nullptr;       // [nblocks] fp32 absmax (plain), or
  const uint8_t* qabsmax = nullptr;    // [nblocks] uint8 absmax codes (double quant) with
  const float* absmax2 = nullptr;      //   [ceil(nblocks / 256)] fp32 nested scales,
  const float* nested_code = nullptr;  //   [256] signed dynamic map and
  float offset = 0.0f;                 //   the mean of the original absmax
  int64_t blocksize = 64;              // valid_blocksize(): a power of two in [32, 4096]

  // fp32 absmax of block b; `dynamic_map` is nested_code or a copy of it (e.g. in GPU shared memory).
  QLORA_HD float block_absmax(int64_t b, const float* dynamic_map) const {
    return qabsmax != nullptr ? absmax_from_dq(qabsmax[b], absmax2[b / kNestedBlocksize], offset, dynamic_map)
                              : absmax[b];
  }
};

// The dequantized fp32 value of element e (before the cast to the output type).
QLORA_HD float dequant_value(const uint8_t* packed, int64_t e, const float* code, float absmax) {
  return code[nibble_at(packed, e)] * absmax;
}

}  // namespace qlora::quant::codec

namespace qlora::quant::codec {

// ---------------------------------------------------------------------------------------------------------------
// 4-bit GEMV for batch-1 decoding, y = W x with W (out, in) in the packed layout above. Its summation order is
// part of the specification, so the CPU reference and the CUDA kernel agree bit for bit:
//   - row o is split into chunks of 32 elements (16 packed bytes; in % 32 == 0, so a chunk lies in one quantization
//     block and has one absmax); lane l of 32 takes chunks l, l + 32, l + 64, ... in increasing order;
//   - within a chunk, elements in order from s = +0: s = fma(code[nibble], x[i], s); then the chunk joins its lane
//     once, scaled by its absmax: acc = fma(s, absmax, acc). (One multiply by the absmax per 32 weights, not one
//     per weight: the SIMD kernels' inner step is a lookup and an fma.)
//   - the 32 lane sums are combined by a butterfly: for off = 16, 8, 4, 2, 1: s[l] = s[l] + s[l ^ off].
constexpr int kGemvLanes = 32;
constexpr int kGemvChunk = 32;
static_assert(kMinBlocksize % kGemvChunk == 0, "a GEMV chunk lies in one quantization block (one absmax)");

QLORA_HD float bf16_bits_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

QLORA_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// One lane's running sum after one more 32-element chunk: `bytes` are its 16 packed bytes, x its 32 activations
// (bf16 bits); acc is the lane's sum before it.
QLORA_HD float gemv_chunk(const uint8_t* bytes, const uint16_t* x, const float* code, float absmax, float acc) {
  float s = 0.0f;
  for (int j = 0; j < kGemvChunk / 2; ++j) {
    const uint8_t byte = bytes[j];
    s = fma_rn(code[byte >> 4], bf16_bits_to_float(x[2 * j]), s);
    s = fma_rn(code[byte & 0x0F], bf16_bits_to_float(x[2 * j + 1]), s);
  }
  return fma_rn(s, absmax, acc);
}

}  // namespace qlora::quant::codec
