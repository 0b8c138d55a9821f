// CUDA 4-bit dequant kernel (see dequant_cuda.h). Each thread turns 4 packed bytes into 8 outputs with one 32-bit
// load and one 16/32-byte store; 8 consecutive elements never straddle a quantization block (blocksize >= 32), so a
// thread reads one absmax. The codebook and, for double quant, the 256-entry dynamic map sit in shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "quant/codec_4bit.h"
#include "quant/dequant_cuda.h"

namespace qlora::quant::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kElemsPerThread = 8;

template <OutType K>
struct Out;
template <>
struct Out<OutType::kF32> {
  using T = float;
  static __device__ __forceinline__ T from(float v) { return v; }
};
template <>
struct Out<OutType::kBF16> {
  using T = uint16_t;  // bf16 bits, rounded exactly as dequantize_blocks_ref (codec::bf16_bits_rne)
  static __device__ __forceinline__ T from(float v) { return codec::bf16_bits_rne(v); }
};
template <>
struct Out<OutType::kF16> {
  using T = __half;
  static __device__ __forceinline__ T from(float v) { return __float2half_rn(v); }
};

template <OutType K, bool kDoubleQuant>
__global__ void dequantize_4bit_kernel(Dequant4bitArgs a) {
  using T = typename Out<K>::T;
  __shared__ float code[16];
  __shared__ float dyn[256];
  if (threadIdx.x < 16) code[threadIdx.x] = a.w.code[threadIdx.x];
  if (kDoubleQuant) dyn[threadIdx.x] = a.w.nested_code[threadIdx.x];  // kThreads == 256
  __syncthreads();

  T* out = static_cast<T*>(a.out);
  const int64_t groups = (a.n + kElemsPerThread - 1) / kElemsPerThread;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups; g += stride) {
    const int64_t e0 = g * kElemsPerThread;
    const float absmax = a.w.block_absmax(e0 / a.w.blocksize, dyn);
    if (e0 + kElemsPerThread <= a.n) {
      uint32_t word;  // 4 bytes = 8 codes; e0 / 2 is a multiple of 4, so the load is aligned
      word = *reinterpret_cast<const uint32_t*>(a.w.packed + e0 / 2);
      T v[kElemsPerThread];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t byte = (word >> (8 * i)) & 0xFFu;
        v[2 * i] = Out<K>::from(code[byte >> 4] * absmax);
        v[2 * i + 1] = Out<K>::from(code[byte & 0x0F] * absmax);
      }
      if constexpr (sizeof(T) == 2) {
        *reinterpret_cast<uint4*>(out + e0) = *reinterpret_cast<const uint4*>(v);
      } else {
        reinterpret_cast<float4*>(out + e0)[0] = *reinterpret_cast<const float4*>(v);
        reinterpret_cast<float4*>(out + e0)[1] = *reinterpret_cast<const float4*>(v + 4);
      }
    } else {
      for (int64_t e = e0; e < a.n; ++e) out[e] = Out<K>::from(codec::dequant_value(a.w.packed, e, code, absmax));
    }
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <OutType K>
void launch(const Dequant4bitArgs& a, cudaStream_t stream) {
  const int64_t groups = (a.n + kElemsPerThread - 1) / kElemsPerThread;
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  // Enough blocks to fill every SM several times over; the grid-stride loop takes the rest.
  const int64_t want = (groups + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < int64_t{sms} * 16 ? want : int64_t{sms} * 16);
  if (a.w.qabsmax != nullptr) {
    dequantize_4bit_kernel<K, true><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    dequantize_4bit_kernel<K, false><<<blocks, kThreads, 0, stream>>>(a);
  }
  check(cudaGetLastError(), "dequantize_4bit kernel launch");
}

}  // namespace

void dequantize_4bit(const Dequant4bitArgs& a, void* stream) {
  if (a.n <= 0) return;
  if (a.w.blocksize < 32 || (a.w.blocksize & (a.w.blocksize - 1)) != 0) {
    throw std::runtime_error("dequantize_4bit (CUDA): blocksize " + std::to_string(a.w.blocksize) +
                             " is not a power of two >= 32");
  }
  if (reinterpret_cast<uintptr_t>(a.w.packed) % 4 != 0 || reinterpret_cast<uintptr_t>(a.out) % 16 != 0) {
    throw std::runtime_error("dequantize_4bit (CUDA): packed must be 4-byte and out 16-byte aligned");
  }
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.out_type) {
    case OutType::kF32:
      return launch<OutType::kF32>(a, s);
    case OutType::kBF16:
      return launch<OutType::kBF16>(a, s);
    case OutType::kF16:
      return launch<OutType::kF16>(a, s);
  }
}

}  // namespace qlora::quant::cuda
