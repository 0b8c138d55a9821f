#include "common/threads.h"

#include <ATen/Parallel.h>
#include <sched.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <thread>
#include <vector>

namespace qlora {

int usable_cores() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int configure_threads(int n) {
  const int cores = usable_cores();
  if (n <= 0) n = cores;
  if (n > cores) {
    spdlog::warn(
        "{} threads asked for on {} usable cores: each parallel step waits for its slowest thread, and a thread "
        "without a core of its own slows every step (0 threads means every core)",
        n, cores);
  }
  at::set_num_threads(n);
  const int got = at::get_num_threads();
  if (got > 1 && parallel_for_threads() == 1) {
    spdlog::warn(
        "{} threads asked for, but this build's own kernels (dequantize, GEMV, fused ops) run on one: it was compiled "
        "without OpenMP (see CMakeLists.txt, QLORA_OPENMP)",
        got);
  }
  return got;
}

int parallel_for_threads() {
  const int64_t n = at::get_num_threads();
  std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < n) seen[static_cast<size_t>(t)].store(1);
  });
  int count = 0;
  for (const auto& s : seen) count += s.load();
  return std::max(count, 1);
}

namespace {
std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}
}  // namespace

void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

bool stop_requested() {
  return g_stop.load();
}
void request_stop() {
  g_stop.store(true);
}

}  // namespace qlora
