#include "common/host_memory.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "common/caching_cpu_allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qlora {

bool configure_host_allocator(size_t mmap_threshold) {
#if defined(__GLIBC__)
  const char* off = std::getenv("QLORA_MALLOC_TUNING");
  if (off != nullptr && std::strcmp(off, "0") == 0) return false;
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) {
    return false;
  }
  constexpr size_t kIntMax = static_cast<size_t>(std::numeric_limits<int>::max());
  const int threshold = static_cast<int>(std::min(mmap_threshold, kIntMax / 2));
  const bool ok = mallopt(M_MMAP_THRESHOLD, threshold) == 1 && mallopt(M_TRIM_THRESHOLD, 2 * threshold) == 1;
  if (!ok) spdlog::debug("mallopt refused the allocator thresholds; keeping glibc defaults");
  install_caching_cpu_allocator();
  return ok;
#else
  (void)mmap_threshold;
  return false;
#endif
}

}  // namespace qlora
