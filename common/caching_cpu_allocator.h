// A caching CPU allocator for LibTorch's tensors: freed large tensors keep their pages for the next tensor of the
// same size class, so a training step reuses memory already faulted in (on the VMs we measured a page fault costs
// ~30 us, and fresh memory made training ~8x slower: common/host_memory.h), while the memory it holds stays bounded
// by the peak of live tensor bytes, which is what the memory plan counts (plan/memory_plan.h).
//
// The rule: with L the bytes of live large tensors, C the bytes of freed blocks in the cache and P the highest L seen
// (since install or the last trim), L + C <= P at all times. A free moves a block from L to C (the sum is unchanged);
// an allocation takes a cached block of its size class if there is one, else evicts cached blocks (least recently
// freed first, returned to the OS) until the new block fits under max(P, L + size) and maps a fresh one. So the
// resident bytes of large tensors never exceed the peak of live ones: the allocator retains nothing the plan does
// not count. Tensors under kMinCachedBytes go to LibTorch's default allocator (glibc's heap).
#pragma once

#include <cstddef>
#include <cstdint>

namespace qlora {

// Allocations of at least this many bytes are cached; smaller ones go to LibTorch's default CPU allocator.
constexpr size_t kMinCachedBytes = size_t{1} << 20;

struct CpuCacheStats {
  int64_t live_bytes = 0;       // L: large blocks handed out and not freed (size-class bytes)
  int64_t cached_bytes = 0;     // C: freed large blocks kept for reuse
  int64_t peak_live_bytes = 0;  // P
  int64_t hits = 0;             // allocations served from the cache
  int64_t misses = 0;           // allocations that mapped a fresh block
  int64_t evicted_bytes = 0;    // cached bytes returned to the OS to stay under the peak
};

// Makes the caching allocator LibTorch's CPU allocator (once per process; later calls do nothing). Returns whether it
// is installed: not when the environment sets QLORA_MALLOC_TUNING=0, =rss or =heap (the user's choice: glibc as is,
// every freed block returned at once, or glibc's heap keeping every freed block: the default before this cache), nor
// in AddressSanitizer builds (ASan must see every tensor's allocation).
bool install_caching_cpu_allocator();
// Whether install_caching_cpu_allocator() took effect in this process.
bool caching_cpu_allocator_installed();

// The caching allocator's counters (all zero when it is not installed).
CpuCacheStats cpu_cache_stats();

// Returns every cached block to the OS and restarts the peak from the live bytes: for the end of a phase whose peak
// the next phase does not reach (loading a model before training). Returns the bytes released.
int64_t trim_cpu_cache();

// Size class of an n-byte allocation (n >= kMinCachedBytes): n rounded up to a multiple of 1/8 of the largest power
// of two not above n, and of the 4 KiB page, so tensors whose sizes differ a little (sequence lengths of dynamic
// padding) share blocks; untouched tail pages of a block are never made resident.
size_t cpu_cache_size_class(size_t n);

}  // namespace qlora
