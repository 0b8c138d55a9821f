// How the fused CPU kernels of ops/fused_kernels.cpp and ops/decode_attention.cpp are launched (internal): the dtype
// switch, the row / element split over LibTorch's thread pool and the choice of kernel set, written once. A kernel
// set (KernelSet below) names three structs of static kernels with the same names and signatures: `Set::Ref` (the
// scalar specification), `Set::Avx2` and `Set::Avx512`. Every row (or element range) is computed by one thread, so
// results do not depend on the thread count.
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

// The kernels `isa` runs: the best of AVX-512 and AVX2 that both `isa` allows and the CPU has, else the `Ref` ones
// (Isa::kScalar always runs `Ref`).
inline Isa kernel_path(Isa isa) {
  if (isa == Isa::kAvx512 && cpu_supports(Isa::kAvx512)) return Isa::kAvx512;
  if (isa != Isa::kScalar && cpu_supports(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

// A kernel set from its three structs.
template <class RefT, class Avx2T, class Avx512T>
struct KernelSet {
  using Ref = RefT;
  using Avx2 = Avx2T;
  using Avx512 = Avx512T;
};

// Calls f(K{}) with K the kernel struct of Set that kernel_path(isa) picks.
template <class Set, class F>
void with_kernels(Isa isa, F&& f) {
  switch (kernel_path(isa)) {
    case Isa::kAvx512:
      f(typename Set::Avx512{});
      return;
    case Isa::kAvx2:
      f(typename Set::Avx2{});
      return;
    case Isa::kScalar:
      f(typename Set::Ref{});
      return;
  }
}

// Rows [0, rows) in chunks of at least `grain` rows per thread: f(r, K{}) for each, K as in with_kernels.
template <class Set, class F>
void for_each_row(int64_t rows, int64_t grain, Isa isa, const F& f) {
  with_kernels<Set>(isa, [&](auto k) {
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) f(r, k);
    });
  });
}

// The element-wise twin: f(e0, e1, K{}) on ranges of [0, n) of at least kElementGrain elements.
template <class Set, class F>
void for_each_range(int64_t n, Isa isa, const F& f) {
  with_kernels<Set>(
      isa, [&](auto k) { at::parallel_for(0, n, kElementGrain, [&](int64_t e0, int64_t e1) { f(e0, e1, k); }); });
}

}  // namespace qlora::ops::detail
