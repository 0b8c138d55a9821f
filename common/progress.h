// Progress reporting for long work (loading, quantizing, training, merging, exporting): done/total, rate and ETA.
//
// Three modes (progress_mode()):
//   bar    stderr is a terminal: one line redrawn in place (\r, clear to end of line) at most 5 times a second,
//          "what [=====>    ] 50/200 tensors 25% | 12.3 tensors/s | ETA 12.2s | extra", from the first advance.
//          Log lines are written above it (common/log.cpp clears the bar, writes the line, draws the bar again).
//   plain  not a terminal (a log file, CI): a log line at most every `interval_s` seconds.
//   off    no live output.
// Every mode logs one summary line at finish(). QLORA_PROGRESS=bar|plain|off forces a mode. Like the lines, the
// bar is info-level output: not drawn when the logger is set above info (QLORA_LOG_LEVEL, data-parallel ranks > 0).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>

namespace qlora {

enum class ProgressMode { kBar, kPlain, kOff };

// "bar" | "plain" | "off"; nullopt for anything else.
std::optional<ProgressMode> parse_progress_mode(const std::string& s);
// The forced mode if any, else QLORA_PROGRESS if set (an unknown value warns once and is ignored), else bar when
// stderr is a terminal (TERM not dumb), plain otherwise. Read when a Progress is made.
ProgressMode progress_mode();
// Forces the mode of the Progress objects made from now on (tests); nullopt: back to the environment's choice.
void set_progress_mode(std::optional<ProgressMode> mode);
// Where bars are drawn: stderr (nullptr, the default) or a stream (tests; 100 columns wide).
void set_progress_stream(std::ostream* out);
// Runs `write` (which writes whole lines to stderr) with the bar cleared first and drawn again after, all under the
// lock bars are drawn under, so a log line and a bar never share a line.
void write_above_progress(const std::function<void()>& write);

class Progress {
 public:
  // total may be 0 when unknown (no ETA then). unit names what is counted ("tensors", "MiB", "tok").
  Progress(std::string what, double total, std::string unit, double interval_s = 1.0);
  ~Progress();  // a bar still drawn (an exception went past finish()) is cleared
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Where counting starts (a resumed run): done() = `done`, and the rate counts from here.
  void start_at(double done);
  // Advance by n; `extra` is appended to the line (e.g. "loss 2.31").
  void advance(double n = 1.0, const std::string& extra = "");
  void set(double done, const std::string& extra = "");
  // set(), drawing the bar at once even within 0.2 s of the last draw (the work moves on to another phase).
  void set_now(double done, const std::string& extra);
  // Clears the bar and logs the final line: total done, elapsed, mean rate.
  void finish(const std::string& extra = "");

  ProgressMode mode() const { return mode_; }
  double done() const { return done_; }
  double elapsed_s() const;
  double rate() const;  // units per second since start
  std::string line(const std::string& extra) const;
  // The bar mode's line, cut to `columns` - 1 characters (so the terminal never wraps it).
  std::string bar_line(const std::string& extra, int columns) const;

 private:
  void draw(const std::string& extra, bool immediately);
  std::string what_;
  double total_;
  std::string unit_;
  double interval_s_;
  ProgressMode mode_;
  double done_ = 0.0;
  double start_done_ = 0.0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_log_;
  bool drawn_ = false;  // bar mode: drawn at least once
  bool finished_ = false;
};

}  // namespace qlora
