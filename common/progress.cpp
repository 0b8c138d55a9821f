#include "common/progress.h"

#include <spdlog/spdlog.h>

#include <cstdio>

#include "common/log.h"

namespace qlora {

using Clock = std::chrono::steady_clock;

Progress::Progress(std::string what, double total, std::string unit, double interval_s)
    : what_(std::move(what)), total_(total), unit_(std::move(unit)), interval_s_(interval_s) {
  start_ = Clock::now();
  last_log_ = start_;
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

double Progress::rate() const {
  const double e = elapsed_s();
  return e > 0 ? done_ / e : 0.0;
}

std::string Progress::line(const std::string& extra) const {
  char buf[256];
  const double r = rate();
  if (total_ > 0) {
    const double eta = r > 0 ? (total_ - done_) / r : -1;
    std::snprintf(buf, sizeof(buf), "%s %.0f/%.0f %s (%.0f%%) | %.1f %s/s | ETA %s", what_.c_str(), done_, total_,
                  unit_.c_str(), 100.0 * done_ / total_, r, unit_.c_str(), format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof(buf), "%s %.0f %s | %.1f %s/s", what_.c_str(), done_, unit_.c_str(), r, unit_.c_str());
  }
  std::string s = buf;
  if (!extra.empty()) s += " | " + extra;
  return s;
}

void Progress::set(double done, const std::string& extra) {
  done_ = done;
  const auto now = Clock::now();
  if (std::chrono::duration<double>(now - last_log_).count() >= interval_s_) {
    last_log_ = now;
    spdlog::info("{}", line(extra));
  }
}

void Progress::advance(double n, const std::string& extra) {
  set(done_ + n, extra);
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  std::string s = what_ + " done: " + std::to_string(static_cast<long long>(done_)) + " " + unit_ + " in " +
                  format_duration(elapsed_s());
  char buf[64];
  std::snprintf(buf, sizeof(buf), " (%.1f %s/s)", rate(), unit_.c_str());
  s += buf;
  if (!extra.empty()) s += " | " + extra;
  spdlog::info("{}", s);
}

}  // namespace qlora
