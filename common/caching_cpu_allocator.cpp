#include "common/caching_cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/sanitizer.h"

namespace qlora {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = size_t{2} << 20;

// A fresh zero-filled block of `bytes` (a multiple of the page), or null when the OS refuses.
void* map_block(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  // Fewer, larger page faults where the kernel's transparent huge pages are set to `madvise`.
  if (bytes >= kHugePage) madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* fallback)
      : fallback_(fallback), fallback_delete_(fallback->raw_deleter()) {
    TORCH_CHECK(fallback_delete_ != nullptr, "LibTorch's default CPU allocator has no raw deleter");
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return fallback_->allocate(n);
    const size_t cls = cpu_cache_size_class(n);
    void* p = take(cls);
    return {p, p, &CachingCpuAllocator::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  // Frees blocks of either kind: ours by their record, the fallback's (small tensors) with its own deleter.
  static void deleter(void* p);
  c10::DeleterFnPtr raw_deleter() const override { return &CachingCpuAllocator::deleter; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  int64_t trim() {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t released = stats_.cached_bytes;
    while (!lru_.empty()) evict_oldest();
    stats_.peak_live_bytes = stats_.live_bytes;
    return released;
  }

 private:
  struct Cached {
    void* p;
    size_t cls;
  };

  void* take(size_t cls) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& free_list = free_[cls];
    void* p = nullptr;
    if (!free_list.empty()) {
      auto it = free_list.back();
      free_list.pop_back();
      p = it->p;
      lru_.erase(it);
      stats_.cached_bytes -= static_cast<int64_t>(cls);
      ++stats_.hits;
    } else {
      const int64_t live_after = stats_.live_bytes + static_cast<int64_t>(cls);
      const int64_t bound = std::max(stats_.peak_live_bytes, live_after);
      while (!lru_.empty() && live_after + stats_.cached_bytes > bound) evict_oldest();
      p = map_block(cls);
      if (p == nullptr) {  // out of address space or memory: give back the whole cache and try once more
        while (!lru_.empty()) evict_oldest();
        p = map_block(cls);
      }
      TORCH_CHECK(p != nullptr, "out of memory: could not map ", cls, " bytes for a tensor (", std::strerror(errno),
                  ")");
      ++stats_.misses;
    }
    live_[p] = cls;
    stats_.live_bytes += static_cast<int64_t>(cls);
    stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
    return p;
  }

  void release(void* p) {
    if (p == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        const size_t cls = it->second;
        live_.erase(it);
        stats_.live_bytes -= static_cast<int64_t>(cls);
        stats_.cached_bytes += static_cast<int64_t>(cls);
        lru_.push_back(Cached{p, cls});
        free_[cls].push_back(std::prev(lru_.end()));
        return;
      }
    }
    fallback_delete_(p);  // a small tensor of the fallback, freed through raw_deleter()
  }

  // Returns the least recently freed cached block to the OS. It is also the oldest of its class: a class's list is
  // in the order of freeing, and hits take its newest.
  void evict_oldest() {
    const Cached c = lru_.front();
    auto& free_list = free_[c.cls];
    TORCH_INTERNAL_ASSERT(!free_list.empty() && free_list.front() == lru_.begin());
    free_list.pop_front();
    lru_.pop_front();
    munmap(c.p, c.cls);
    stats_.cached_bytes -= static_cast<int64_t>(c.cls);
    stats_.evicted_bytes += static_cast<int64_t>(c.cls);
  }

  c10::Allocator* fallback_;
  c10::DeleterFnPtr fallback_delete_;
  std::mutex mu_;
  std::unordered_map<void*, size_t> live_;  // block -> size class
  std::list<Cached> lru_;                   // cached blocks, least recently freed first
  std::unordered_map<size_t, std::deque<std::list<Cached>::iterator>> free_;  // size class -> its blocks, oldest first
  CpuCacheStats stats_;
};

// The installed allocator (null when not installed). Owned for the life of the process: LibTorch keeps the
// pointer, and tensors may outlive main's locals.
CachingCpuAllocator* g_allocator = nullptr;
std::once_flag g_install_once;

void CachingCpuAllocator::deleter(void* p) {
  g_allocator->release(p);
}

}  // namespace

size_t cpu_cache_size_class(size_t n) {
  size_t top = 1;
  while (top <= n / 2) top *= 2;  // largest power of two <= n
  const size_t step = std::max(kPage, top / 8);
  return (n + step - 1) / step * step;
}

bool install_caching_cpu_allocator() {
  std::call_once(g_install_once, [] {
    const char* mode = std::getenv("QLORA_MALLOC_TUNING");
    const std::string m = mode == nullptr ? "" : mode;
    if (kAddressSanitizer || m == "0" || m == "rss" || m == "heap") return;
    g_allocator = new CachingCpuAllocator(c10::GetDefaultCPUAllocator());
    c10::SetCPUAllocator(g_allocator, /*priority=*/1);
  });
  return caching_cpu_allocator_installed();
}

bool caching_cpu_allocator_installed() {
  return g_allocator != nullptr;
}

CpuCacheStats cpu_cache_stats() {
  return g_allocator != nullptr ? g_allocator->stats() : CpuCacheStats{};
}

int64_t trim_cpu_cache() {
  return g_allocator != nullptr ? g_allocator->trim() : 0;
}

}  // namespace qlora
