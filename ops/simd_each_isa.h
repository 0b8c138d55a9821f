// Compiles a kernel file once per vector ISA (internal to ops/): include this inside namespace qlora::ops::detail
// with QLORA_SIMD_KERNELS defined as the kernel file's quoted path. The file is included in namespace avx2 and in
// namespace avx512, with QLORA_SIMD / QLORA_SIMD_INLINE defined as that ISA's target attributes, so the names of the
// vector layer (ops/simd_avx2.h, ops/simd_avx512.h) resolve to that ISA's. Deliberately without `#pragma once`.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's AVX-512 headers (ops/simd_avx512.h)
#pragma GCC diagnostic ignored "-Wuninitialized"
namespace avx2 {
#define QLORA_SIMD QLORA_AVX2
#define QLORA_SIMD_INLINE QLORA_AVX2_INLINE
#include QLORA_SIMD_KERNELS
#undef QLORA_SIMD
#undef QLORA_SIMD_INLINE
}  // namespace avx2
namespace avx512 {
#define QLORA_SIMD QLORA_AVX512
#define QLORA_SIMD_INLINE QLORA_AVX512_INLINE
#include QLORA_SIMD_KERNELS
#undef QLORA_SIMD
#undef QLORA_SIMD_INLINE
}  // namespace avx512
#pragma GCC diagnostic pop
#undef QLORA_SIMD_KERNELS
