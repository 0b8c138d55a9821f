// Our kernels' at::parallel_for must run on LibTorch's thread pool, not on the calling thread alone: with
// LibTorch's OpenMP backend that holds only for code compiled with OpenMP (CMakeLists.txt, QLORA_OPENMP).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <atomic>

#include "common/threads.h"

namespace qlora {
namespace {

TEST(Threads, ParallelForUsesThePool) {
  const int before = at::get_num_threads();
  ASSERT_EQ(configure_threads(2), 2);
  // Through the library (common/threads.cpp, compiled like every kernel) ...
  EXPECT_EQ(parallel_for_threads(), 2);
  // ... and in this translation unit: two chunks of a range, each on its own thread.
  std::atomic<int> mask{0};
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) { mask.fetch_or(1 << at::get_thread_num()); });
  EXPECT_EQ(mask.load(), 3);
  at::set_num_threads(before);
}

}  // namespace
}  // namespace qlora
