// Our kernels' at::parallel_for must run on LibTorch's thread pool, not on the calling thread alone: with
// LibTorch's OpenMP backend that holds only for code compiled with OpenMP (CMakeLists.txt, QLORA_OPENMP).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>

#include "common/threads.h"
#include "test_util.h"

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

// More threads than the process has cores is allowed but said: decode and training slow down several-fold so.
TEST(Threads, MoreThreadsThanCoresWarns) {
  const int before = at::get_num_threads();
  const int cores = usable_cores();
  ASSERT_GE(cores, 1);
  {
    test::LogCapture log;
    EXPECT_EQ(configure_threads(cores), cores);
    EXPECT_EQ(log.text().find("usable cores"), std::string::npos) << log.text();
  }
  {
    test::LogCapture log;
    EXPECT_EQ(configure_threads(cores + 1), cores + 1);
    EXPECT_NE(
        log.text().find(std::to_string(cores + 1) + " threads asked for on " + std::to_string(cores) + " usable cores"),
        std::string::npos)
        << log.text();
  }
  at::set_num_threads(before);
}

}  // namespace
}  // namespace qlora
