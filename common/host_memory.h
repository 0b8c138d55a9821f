// Process-wide tuning of the host (glibc) allocator for tensor workloads.
//
// glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on
// free, so each large tensor - a dequantized weight, an activation - is page-faulted in again on every use. On
// the VMs we measured, a page fault costs ~30 us: allocating and filling a fresh 32 MiB bf16 weight took
// ~240 ms instead of ~12 ms, which made the frozen 4-bit linear 3x slower than a dense one (bench/RESULTS.md).
// Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse, as PyTorch users get from
// jemalloc/tcmalloc.
#pragma once

#include <cstddef>

namespace qlora {

// Sets glibc's mmap threshold to `mmap_threshold` bytes (blocks above it are still mmap'ed) and the trim
// threshold to twice that (both capped to what mallopt's int takes), and installs the caching CPU allocator for
// tensors of 1 MiB and more (common/caching_cpu_allocator.h: reuse at full speed, resident bytes bounded by the peak
// of live ones; QLORA_MALLOC_TUNING=heap leaves it out). No-op when the environment sets QLORA_MALLOC_TUNING=0 or
// MALLOC_MMAP_THRESHOLD_ (the user's own glibc tuning wins). Returns true when the thresholds were changed. With
// QLORA_MALLOC_TUNING=rss there is no cache and qlora-train pins a 1 MiB threshold instead (trainer/run_plan.h), at a
// large speed cost.
bool configure_host_allocator(size_t mmap_threshold = size_t{1} << 30);

}  // namespace qlora
