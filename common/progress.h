// Progress reporting for long work (loading, quantizing, training, merging, exporting): a line with
// done/total, rate and ETA, logged at most every `interval_s` seconds and once at the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace qlora {

class Progress {
 public:
  // total may be 0 when unknown (no ETA then). unit names what is counted ("tensors", "MiB", "tok").
  Progress(std::string what, double total, std::string unit, double interval_s = 1.0);

  // Advance by n; `extra` is appended to the line (e.g. "loss 2.31").
  void advance(double n = 1.0, const std::string& extra = "");
  void set(double done, const std::string& extra = "");
  // Logs the final line: total done, elapsed, mean rate.
  void finish(const std::string& extra = "");

  double done() const { return done_; }
  double elapsed_s() const;
  double rate() const;  // units per second since start
  std::string line(const std::string& extra) const;

 private:
  std::string what_;
  double total_;
  std::string unit_;
  double interval_s_;
  double done_ = 0.0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_log_;
  bool finished_ = false;
};

}  // namespace qlora
