#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "common/progress.h"

namespace qlora {

namespace {

// The stderr sink, writing each line above the progress bar (common/progress.h) when one is drawn.
class BelowProgressSink final : public spdlog::sinks::sink {
 public:
  explicit BelowProgressSink(std::shared_ptr<spdlog::sinks::sink> inner) : inner_(std::move(inner)) {}
  void log(const spdlog::details::log_msg& msg) override {
    write_above_progress([&] {
      inner_->log(msg);
      inner_->flush();
    });
  }
  void flush() override { inner_->flush(); }
  void set_pattern(const std::string& pattern) override { inner_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> f) override { inner_->set_formatter(std::move(f)); }

 private:
  std::shared_ptr<spdlog::sinks::sink> inner_;
};

}  // namespace

void init_logging(const std::string& level) {
  std::string lvl = level;
  if (const char* env = std::getenv("QLORA_LOG_LEVEL")) lvl = env;
  auto sink = std::make_shared<BelowProgressSink>(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  auto logger = std::make_shared<spdlog::logger>("qlora", std::move(sink));
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(lvl));
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

std::string format_duration(double s) {
  char buf[32];
  if (s < 0 || s != s) return "?";
  if (s < 60) {
    std::snprintf(buf, sizeof(buf), "%.1fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) % 3600) / 60);
  }
  return buf;
}

namespace {
size_t read_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string k = key;
  while (std::getline(in, line)) {
    if (line.compare(0, k.size(), k) == 0) return std::stoull(line.substr(k.size())) * 1024;
  }
  return 0;
}
}  // namespace

size_t peak_rss_bytes() {
  return read_status_kb("VmHWM:");
}
size_t current_rss_bytes() {
  return read_status_kb("VmRSS:");
}

}  // namespace qlora
