#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "common/host_memory.h"
#include "test_util.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qlora {
namespace {

#if defined(__GLIBC__)
// After tuning, a 64 MiB block (above glibc's default 32 MiB maximum mmap threshold) comes from the heap, not
// from a fresh mmap: mallinfo2's mmapped-bytes counter must not grow while it is live.
TEST(HostAllocator, LargeBlocksComeFromTheHeapAfterTuning) {
  if (std::getenv("QLORA_MALLOC_TUNING") != nullptr || std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) {
    GTEST_SKIP() << "allocator tuning overridden by the environment";
  }
  if (test::kUnderAddressSanitizer) GTEST_SKIP() << "ASan replaces glibc's malloc: mallopt has nothing to tune";
  ASSERT_TRUE(configure_host_allocator());
  const size_t before = mallinfo2().hblkhd;
  constexpr size_t kBytes = size_t{64} << 20;
  char* p = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  const size_t during = mallinfo2().hblkhd;
  std::free(p);
  EXPECT_LT(during, before + kBytes) << "the 64 MiB block was mmap'ed";
}
#endif

}  // namespace
}  // namespace qlora
