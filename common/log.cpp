#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace qlora {

void init_logging(const std::string& level) {
  std::string lvl = level;
  if (const char* env = std::getenv("QLORA_LOG_LEVEL")) lvl = env;
  auto logger = spdlog::stderr_color_mt("qlora");
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
