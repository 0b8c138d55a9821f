// The caching CPU allocator (common/caching_cpu_allocator.h), installed by the test main's
// configure_host_allocator() as it is in every app: freed large tensors are reused (same memory, counted as hits), the
// bytes it holds stay under the peak of live ones (checked after every step of a random workload against counters
// kept here), small tensors and LibTorch's raw interface keep working, and trimming returns the cache to the OS.
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/caching_cpu_allocator.h"
#include "common/host_memory.h"
#include "test_util.h"

namespace qlora {
namespace {

class CachingCpuAllocator : public ::testing::Test {
 protected:
  void SetUp() override {
    configure_host_allocator();
    if (!caching_cpu_allocator_installed()) {
      GTEST_SKIP() << "not installed here (QLORA_MALLOC_TUNING is 0 or rss, or an AddressSanitizer build)";
    }
    trim_cpu_cache();
  }
};

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(CpuCacheSizeClass, RoundsUpByAtMostAnEighthToWholePages) {
  size_t prev = 0;
  for (size_t n = kMinCachedBytes; n < (size_t{1} << 31); n = n * 9 / 8 + 4093) {
    const size_t c = cpu_cache_size_class(n);
    EXPECT_GE(c, n);
    EXPECT_EQ(c % 4096, 0u) << n;
    EXPECT_LE(c, n + n / 8 + 4096) << n;
    EXPECT_GE(c, prev) << n;                     // monotone
    EXPECT_EQ(cpu_cache_size_class(c), c) << n;  // a class is its own class
    prev = c;
  }
  // Sizes a few bytes apart share a class.
  EXPECT_EQ(cpu_cache_size_class(10 * kMiB + 1), cpu_cache_size_class(10 * kMiB + 1000));
}

TEST_F(CachingCpuAllocator, AFreedTensorsMemoryServesTheNextOfItsClass) {
  const CpuCacheStats before = cpu_cache_stats();
  void* first = nullptr;
  {
    const torch::Tensor t = torch::ones({8 * kMiB / 4}, torch::kFloat32);
    first = t.data_ptr();
    const CpuCacheStats live = cpu_cache_stats();
    EXPECT_EQ(live.live_bytes - before.live_bytes, static_cast<int64_t>(cpu_cache_size_class(8 * kMiB)));
  }
  const CpuCacheStats freed = cpu_cache_stats();
  EXPECT_EQ(freed.live_bytes, before.live_bytes);
  EXPECT_EQ(freed.cached_bytes - before.cached_bytes, static_cast<int64_t>(cpu_cache_size_class(8 * kMiB)));
  // A tensor a little smaller (same class) gets the same block, already filled: zeros() must still write zeros.
  const torch::Tensor again = torch::zeros({8 * kMiB / 4 - 100}, torch::kFloat32);
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(cpu_cache_stats().hits, freed.hits + 1);
  EXPECT_EQ(again.abs().max().item<float>(), 0.0f);
}

TEST_F(CachingCpuAllocator, HeldBytesStayUnderThePeakOfLiveOnes) {
  std::mt19937 rng(7);
  std::vector<torch::Tensor> live;
  int64_t my_live = 0, my_peak = 0;  // bytes of this test's tensors, by size class
  const CpuCacheStats base = cpu_cache_stats();
  for (int step = 0; step < 400; ++step) {
    if (!live.empty() && rng() % 3 == 0) {
      const size_t i = rng() % live.size();
      my_live -= static_cast<int64_t>(cpu_cache_size_class(static_cast<size_t>(live[i].nbytes())));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      const int64_t bytes = kMiB + static_cast<int64_t>(rng() % static_cast<uint32_t>(24 * kMiB));
      live.push_back(torch::empty({bytes}, torch::kUInt8));
      my_live += static_cast<int64_t>(cpu_cache_size_class(static_cast<size_t>(bytes)));
      my_peak = std::max(my_peak, my_live);  // before the oldest goes: both were live
      if (live.size() > 12) {
        my_live -= static_cast<int64_t>(cpu_cache_size_class(static_cast<size_t>(live.front().nbytes())));
        live.erase(live.begin());
      }
    }
    my_peak = std::max(my_peak, my_live);
    const CpuCacheStats s = cpu_cache_stats();
    ASSERT_EQ(s.live_bytes - base.live_bytes, my_live) << "step " << step;
    // Everything the allocator holds (live + cached) is at most the peak of live bytes, ours plus what was live before.
    ASSERT_LE(s.live_bytes + s.cached_bytes, base.live_bytes + my_peak) << "step " << step;
  }
  const CpuCacheStats end = cpu_cache_stats();
  EXPECT_GT(end.hits, base.hits) << "a workload that frees and reallocates reuses blocks";
  EXPECT_GT(end.evicted_bytes, base.evicted_bytes) << "sizes that do not repeat evict others";
  live.clear();
  const int64_t cached = cpu_cache_stats().cached_bytes;
  EXPECT_EQ(cached, end.cached_bytes + my_live) << "freed tensors go to the cache";
  EXPECT_EQ(trim_cpu_cache(), cached);
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
}

TEST_F(CachingCpuAllocator, SmallTensorsAndTheRawInterfaceWork) {
  c10::Allocator* a = c10::GetCPUAllocator();
  for (size_t n : {size_t{0}, size_t{64}, static_cast<size_t>(kMiB) - 1, static_cast<size_t>(kMiB),
                   static_cast<size_t>(3 * kMiB + 5)}) {
    void* p = a->raw_allocate(n);
    if (n > 0) {
      ASSERT_NE(p, nullptr) << n;
      static_cast<char*>(p)[n - 1] = 1;
    }
    a->raw_deallocate(p);
  }
  const torch::Tensor small = torch::arange(1000, torch::kFloat32);
  EXPECT_EQ(small.sum().item<float>(), 499500.0f);
}

}  // namespace
}  // namespace qlora
