// CUDA 4-bit GEMV (see gemv_4bit.h): one warp per output row; lane l reads chunks l, l + 32, ... of 16 packed bytes
// (one 16-byte load) and 32 bf16 activations (four 16-byte loads), accumulates with codec::gemv_chunk, and the warp
// combines the lane sums with the xor butterfly of the specification. The codebook and the double-quant map sit in
// shared memory.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "quant/codec_4bit.h"
#include "quant/gemv_4bit.h"

namespace qlora::quant::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

template <bool kDoubleQuant>
__global__ void gemv_4bit_kernel(Gemv4bitArgs a) {
  __shared__ float code[16];
  __shared__ float dyn[256];
  const int tid = threadIdx.y * codec::kGemvLanes + threadIdx.x;
  if (tid < 16) code[tid] = a.w.code[tid];
  if (kDoubleQuant) {
    for (int i = tid; i < 256; i += kWarpsPerBlock * codec::kGemvLanes) dyn[i] = a.w.nested_code[i];
  }
  __syncthreads();
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (o >= a.out_features) return;
  const int lane = threadIdx.x;
  const int64_t chunks = a.in_features / codec::kGemvChunk;
  float acc = 0.0f;
  for (int64_t c = lane; c < chunks; c += codec::kGemvLanes) {
    const int64_t e0 = o * a.in_features + c * codec::kGemvChunk;
    const float absmax = a.w.block_absmax(e0 / a.w.blocksize, dyn);
    uint4 w = *reinterpret_cast<const uint4*>(a.w.packed + e0 / 2);
    uint4 xv[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) xv[k] = reinterpret_cast<const uint4*>(a.x + c * codec::kGemvChunk)[k];
    acc = codec::gemv_chunk(reinterpret_cast<const uint8_t*>(&w), reinterpret_cast<const uint16_t*>(xv), code, absmax,
                            acc);
  }
#pragma unroll
  for (int off = codec::kGemvLanes / 2; off >= 1; off /= 2)
    acc = __fadd_rn(acc, __shfl_xor_sync(0xFFFFFFFFu, acc, off));
  if (lane == 0) {
    if (a.out_bf16) {
      static_cast<uint16_t*>(a.y)[o] = codec::bf16_bits_rne(acc);
    } else {
      static_cast<float*>(a.y)[o] = acc;
    }
  }
}

}  // namespace

void gemv_4bit(const Gemv4bitArgs& a, void* stream) {
  if (a.in_features % codec::kGemvChunk != 0 || a.w.blocksize < 32 || (a.w.blocksize & (a.w.blocksize - 1)) != 0) {
    throw std::runtime_error("gemv_4bit (CUDA): in_features " + std::to_string(a.in_features) + ", blocksize " +
                             std::to_string(a.w.blocksize) + ": need in % 32 == 0 and a power-of-two blocksize >= 32");
  }
  if (reinterpret_cast<uintptr_t>(a.w.packed) % 16 != 0 || reinterpret_cast<uintptr_t>(a.x) % 16 != 0) {
    throw std::runtime_error("gemv_4bit (CUDA): packed and x must be 16-byte aligned");
  }
  if (a.out_features <= 0) return;
  const dim3 block(codec::kGemvLanes, kWarpsPerBlock);
  const auto grid = static_cast<unsigned>((a.out_features + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const auto s = static_cast<cudaStream_t>(stream);
  if (a.w.qabsmax != nullptr) {
    gemv_4bit_kernel<true><<<grid, block, 0, s>>>(a);
  } else {
    gemv_4bit_kernel<false><<<grid, block, 0, s>>>(a);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("gemv_4bit kernel launch: ") + cudaGetErrorString(err));
}

}  // namespace qlora::quant::cuda
