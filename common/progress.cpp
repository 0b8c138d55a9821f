#include "common/progress.h"

#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "common/log.h"

namespace qlora {

using Clock = std::chrono::steady_clock;

namespace {

// Seconds between bar redraws: 0.2 (at most 5 a second), or QLORA_PROGRESS_REDRAW_S (0..60; 0 redraws on every
// update, which tests use to see every micro-batch whatever the machine's speed).
double bar_redraw_s() {
  static const double s = [] {
    const char* v = std::getenv("QLORA_PROGRESS_REDRAW_S");
    if (v == nullptr) return 0.2;
    char* end = nullptr;
    const double d = std::strtod(v, &end);
    return end != v && *end == '\0' && d >= 0 && d <= 60 ? d : 0.2;
  }();
  return s;
}
constexpr int kBarCells = 24;
constexpr int kDefaultColumns = 100;  // a stream, or a terminal that does not say
constexpr const char* kClearLine = "\r\x1b[K";

// The terminal line the current bar occupies. Global like the logger it shares stderr with.
struct Terminal {
  std::mutex mu;
  std::ostream* stream = nullptr;  // nullptr: stderr
  std::string shown;               // the bar now on screen; empty: none
  const Progress* owner = nullptr;
  std::optional<ProgressMode> forced;
};

Terminal& terminal() {
  static Terminal t;
  return t;
}

void put(Terminal& t, const std::string& s) {
  if (t.stream) {
    *t.stream << s;
    t.stream->flush();
  } else {
    std::fwrite(s.data(), 1, s.size(), stderr);
    std::fflush(stderr);
  }
}

int columns(const Terminal& t) {
  winsize ws{};
  if (!t.stream && ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return kDefaultColumns;
}

// The count shown: whole units done (a training bar's steps advance in fractions, one per micro-batch).
double shown_count(double v) {
  return std::floor(v + 1e-9);
}

// Units per second with about three significant digits: "0.146", "12.3", "2346".
std::string format_rate(double r) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), r >= 100 ? "%.0f" : r >= 10 ? "%.1f" : "%.2f", r);
  return buf;
}

}  // namespace

std::optional<ProgressMode> parse_progress_mode(const std::string& s) {
  if (s == "bar") return ProgressMode::kBar;
  if (s == "plain") return ProgressMode::kPlain;
  if (s == "off") return ProgressMode::kOff;
  return std::nullopt;
}

ProgressMode progress_mode() {
  {
    Terminal& t = terminal();
    std::lock_guard<std::mutex> lock(t.mu);
    if (t.forced) return *t.forced;
  }
  if (const char* env = std::getenv("QLORA_PROGRESS")) {
    if (const auto m = parse_progress_mode(env)) return *m;
    static bool warned = false;
    if (!warned) spdlog::warn("QLORA_PROGRESS={} is not one of bar, plain, off: ignored", env);
    warned = true;
  }
  const char* term = std::getenv("TERM");
  const bool dumb = term && std::strcmp(term, "dumb") == 0;
  return isatty(STDERR_FILENO) && !dumb ? ProgressMode::kBar : ProgressMode::kPlain;
}

void set_progress_mode(std::optional<ProgressMode> mode) {
  Terminal& t = terminal();
  std::lock_guard<std::mutex> lock(t.mu);
  t.forced = mode;
}

void set_progress_stream(std::ostream* out) {
  Terminal& t = terminal();
  std::lock_guard<std::mutex> lock(t.mu);
  t.stream = out;
  t.shown.clear();
  t.owner = nullptr;
}

void write_above_progress(const std::function<void()>& write) {
  Terminal& t = terminal();
  std::lock_guard<std::mutex> lock(t.mu);
  if (!t.shown.empty()) put(t, kClearLine);
  write();
  if (!t.shown.empty()) put(t, "\r" + t.shown + "\x1b[K");
}

Progress::Progress(std::string what, double total, std::string unit, double interval_s)
    : what_(std::move(what)), total_(total), unit_(std::move(unit)), interval_s_(interval_s), mode_(progress_mode()) {
  start_ = Clock::now();
  last_log_ = start_;
}

Progress::~Progress() {
  if (mode_ != ProgressMode::kBar || !drawn_ || finished_) return;
  // Leave the last state on screen (where the work stopped) and move below it.
  Terminal& t = terminal();
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.owner != this) return;
  put(t, "\n");
  t.shown.clear();
  t.owner = nullptr;
}

void Progress::start_at(double done) {
  done_ = done;
  start_done_ = done;
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

double Progress::rate() const {
  const double e = elapsed_s();
  return e > 0 ? (done_ - start_done_) / e : 0.0;
}

std::string Progress::line(const std::string& extra) const {
  char buf[256];
  const double r = rate();
  if (total_ > 0) {
    const double eta = r > 0 ? (total_ - done_) / r : -1;
    std::snprintf(buf, sizeof(buf), "%s %.0f/%.0f %s (%.0f%%) | %s %s/s | ETA %s", what_.c_str(), shown_count(done_),
                  total_, unit_.c_str(), std::floor(100.0 * done_ / total_), format_rate(r).c_str(), unit_.c_str(),
                  format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof(buf), "%s %.0f %s | %s %s/s", what_.c_str(), shown_count(done_), unit_.c_str(),
                  format_rate(r).c_str(), unit_.c_str());
  }
  std::string s = buf;
  if (!extra.empty()) s += " | " + extra;
  return s;
}

std::string Progress::bar_line(const std::string& extra, int columns) const {
  char buf[256];
  const double r = rate();
  std::string s = what_ + " ";
  if (total_ > 0) {
    const double frac = std::clamp(done_ / total_, 0.0, 1.0);
    const int full = static_cast<int>(frac * kBarCells);
    std::string cells(kBarCells, ' ');
    std::fill(cells.begin(), cells.begin() + full, '=');
    if (full < kBarCells) cells[static_cast<size_t>(full)] = '>';
    s += "[" + cells + "] ";
    const double eta = r > 0 ? (total_ - done_) / r : -1;
    std::snprintf(buf, sizeof(buf), "%.0f/%.0f %s %.0f%% | %s %s/s | ETA %s", shown_count(done_), total_, unit_.c_str(),
                  std::floor(100.0 * frac), format_rate(r).c_str(), unit_.c_str(), format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f %s | %s %s/s", shown_count(done_), unit_.c_str(), format_rate(r).c_str(),
                  unit_.c_str());
  }
  s += buf;
  if (!extra.empty()) s += " | " + extra;
  const size_t max_len = static_cast<size_t>(std::max(columns - 1, 10));
  if (s.size() > max_len) s.resize(max_len);
  return s;
}

void Progress::draw(const std::string& extra, bool immediately) {
  // The bar is info-level output: none where info lines are off (QLORA_LOG_LEVEL=warn, data-parallel ranks > 0).
  if (!spdlog::should_log(spdlog::level::info)) return;
  const auto now = Clock::now();
  if (!immediately && drawn_ && std::chrono::duration<double>(now - last_log_).count() < bar_redraw_s()) return;
  last_log_ = now;
  drawn_ = true;
  Terminal& t = terminal();
  std::lock_guard<std::mutex> lock(t.mu);
  t.shown = bar_line(extra, columns(t));
  t.owner = this;
  put(t, "\r" + t.shown + "\x1b[K");
}

void Progress::set(double done, const std::string& extra) {
  done_ = done;
  if (mode_ == ProgressMode::kBar) {
    draw(extra, /*immediately=*/false);
  } else if (mode_ == ProgressMode::kPlain) {
    const auto now = Clock::now();
    if (std::chrono::duration<double>(now - last_log_).count() >= interval_s_) {
      last_log_ = now;
      spdlog::info("{}", line(extra));
    }
  }
}

void Progress::set_now(double done, const std::string& extra) {
  if (mode_ != ProgressMode::kBar) return set(done, extra);
  done_ = done;
  draw(extra, /*immediately=*/true);
}

void Progress::advance(double n, const std::string& extra) {
  set(done_ + n, extra);
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (mode_ == ProgressMode::kBar && drawn_) {
    Terminal& t = terminal();
    std::lock_guard<std::mutex> lock(t.mu);
    if (t.owner == this) {
      put(t, kClearLine);
      t.shown.clear();
      t.owner = nullptr;
    }
  }
  std::string s = what_ + " done: " + std::to_string(static_cast<long long>(shown_count(done_))) + " " + unit_ +
                  " in " + format_duration(elapsed_s());
  s += " (" + format_rate(rate()) + " " + unit_ + "/s)";
  if (!extra.empty()) s += " | " + extra;
  spdlog::info("{}", s);
}

}  // namespace qlora
