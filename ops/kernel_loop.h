// How the fused CPU kernels of ops/fused_kernels.cpp are launched (internal): the dtype switch, the row / element
// split over LibTorch's thread pool and the choice between a kernel's `_ref` and `_avx512` version, written once.
// Every row (or element range) is computed by one thread, so results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/types.h>

#include <cstdint>

#include "common/cpu_isa.h"

namespace qlora::ops::detail {

constexpr int64_t kLongRowGrain = 1;        // rows of a vocabulary: one is plenty of work
constexpr int64_t kShortRowGrain = 32;      // rows of a hidden size or a head dim
constexpr int64_t kElementGrain = 1 << 15;  // elements (element-wise kernels)

// Calls f(T{}) with T the C++ type of dt (fp32, bf16, fp16).
template <class F>
void dispatch_dtype(torch::ScalarType dt, F&& f) {
  switch (dt) {
    case torch::kFloat32:
      f(float{});
      return;
    case torch::kBFloat16:
      f(c10::BFloat16{});
      return;
    case torch::kHalf:
      f(c10::Half{});
      return;
    default:
      TORCH_CHECK(false, "fused kernels support fp32, bf16 and fp16, got ", dt);
  }
}

// t's data as T (the caller checked the dtype).
template <class T>
T* data(const torch::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Whether the `_avx512` kernels run for `isa`; anything else, or a CPU without AVX-512, runs the `_ref` kernels.
inline bool use_avx512(Isa isa) {
  return isa == Isa::kAvx512 && cpu_supports(Isa::kAvx512);
}

// Rows [0, rows) in chunks of at least `grain` rows per thread: ref(r), or simd(r) on the AVX-512 path, for each.
template <class Ref, class Simd>
void for_each_row(int64_t rows, int64_t grain, Isa isa, const Ref& ref, const Simd& simd) {
  const bool avx512 = use_avx512(isa);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (avx512) {
        simd(r);
      } else {
        ref(r);
      }
    }
  });
}

// The element-wise twin: ref(e0, e1), or simd(e0, e1), on ranges of [0, n) of at least kElementGrain elements.
template <class Ref, class Simd>
void for_each_range(int64_t n, Isa isa, const Ref& ref, const Simd& simd) {
  const bool avx512 = use_avx512(isa);
  at::parallel_for(0, n, kElementGrain, [&](int64_t e0, int64_t e1) {
    if (avx512) {
      simd(e0, e1);
    } else {
      ref(e0, e1);
    }
  });
}

}  // namespace qlora::ops::detail
