// The machine's own limits, measured in the same run as each benchmark so figures are ratios, not guesses.
#pragma once

#include <c10/core/ScalarType.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qlora::bench {

// Memory copy bandwidth (GB/s, counting bytes read + bytes written) of a large memcpy split across threads.
double measure_copy_bandwidth_gbs(size_t bytes = size_t(512) << 20, int reps = 5);

// Memory read bandwidth (GB/s of bytes read) of a large buffer summed across threads, nothing written: the ceiling of
// a decoder that streams its weights once per token (reading alone can run above or below the copy figure's total).
double measure_read_bandwidth_gbs(size_t bytes = size_t(512) << 20, int reps = 5);

// Dense matmul rate (GFLOP/s) of LibTorch on (m,k)x(k,n) in `dtype`.
double measure_matmul_gflops(c10::ScalarType dtype, int64_t m = 2048, int64_t k = 2048, int64_t n = 2048, int reps = 5);

// Runs fn in a forked child (so its peak RSS and allocator state are its own) and returns the JSON object it
// produced, sent back through a pipe; an exception in fn becomes {"ok": false, "error": what}, a child that dies
// without answering {"ok": false, "error": "child exited ..."}.
nlohmann::json run_in_child(const std::function<nlohmann::json()>& fn);

// Runs this program again (/proc/self/exe) with `args`, a fresh process rather than a fork, and returns the JSON
// object of the last line it printed (the program answers that mode with print_child_answer). Used where a fork
// would distort what is measured: a forked child's resident set starts without the parent's shared-library pages
// (fork does not copy their page tables), so its RSS at start under-counts what a real run holds.
nlohmann::json run_in_fresh_process(const std::vector<std::string>& args);

// The other side of run_in_fresh_process: prints fn's JSON object (or {"ok": false, "error": what}) as one line on
// stdout and returns the exit code.
int print_child_answer(const std::function<nlohmann::json()>& fn);

// Best-of wall time of fn in seconds.
template <class F>
double time_best(F&& fn, int reps) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < best) best = s;
  }
  return best;
}

}  // namespace qlora::bench
