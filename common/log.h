// Logging setup (spdlog to stderr). Library code logs with spdlog::info/warn/...; never std::cout.
#pragma once

#include <string>

namespace qlora {

// level: "trace" | "debug" | "info" | "warn" | "error"; also reads QLORA_LOG_LEVEL when set. Lines go to stderr,
// above the progress bar when one is drawn (common/progress.h).
void init_logging(const std::string& level = "info");

// Human-readable byte count: "1.23 GiB".
std::string format_bytes(double bytes);
// Human-readable duration: "1h02m", "3m05s", "12.3s".
std::string format_duration(double seconds);

// Peak resident set size of this process so far (bytes, from /proc/self/status VmHWM); 0 if unknown.
size_t peak_rss_bytes();
// Current resident set size (bytes, VmRSS).
size_t current_rss_bytes();

}  // namespace qlora
