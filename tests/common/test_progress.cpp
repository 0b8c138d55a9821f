#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <sstream>
#include <thread>

#include "common/log.h"
#include "common/progress.h"

namespace qlora {
namespace {

TEST(Progress, LineShowsCountsPercentAndUnits) {
  Progress p("load", 200, "tensors", /*interval_s=*/1e9);
  p.advance(50);
  const std::string line = p.line("x");
  EXPECT_NE(line.find("load 50/200 tensors (25%)"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA"), std::string::npos) << line;
  EXPECT_NE(line.find("| x"), std::string::npos) << line;
}

TEST(Format, BytesAndDurations) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(3.0 * (1 << 30)), "3.00 GiB");
  EXPECT_EQ(format_duration(12.34), "12.3s");
  EXPECT_EQ(format_duration(125), "2m05s");
  EXPECT_EQ(format_duration(3725), "1h02m");
}

TEST(Rss, PeakIsAtLeastCurrentAndNonZero) {
  EXPECT_GT(current_rss_bytes(), 0u);
  EXPECT_GE(peak_rss_bytes(), current_rss_bytes());
}

TEST(Progress, ModeNames) {
  EXPECT_EQ(parse_progress_mode("bar"), ProgressMode::kBar);
  EXPECT_EQ(parse_progress_mode("plain"), ProgressMode::kPlain);
  EXPECT_EQ(parse_progress_mode("off"), ProgressMode::kOff);
  EXPECT_EQ(parse_progress_mode("fancy"), std::nullopt);
}

// The terminal mode drawn into a string stream instead of stderr; info level (the bar is info-level output).
class ProgressBar : public ::testing::Test {
 protected:
  void SetUp() override {
    level_ = spdlog::get_level();
    spdlog::set_level(spdlog::level::info);
    set_progress_mode(ProgressMode::kBar);
    set_progress_stream(&out_);
  }
  void TearDown() override {
    set_progress_stream(nullptr);
    set_progress_mode(std::nullopt);
    spdlog::set_level(level_);
  }
  std::ostringstream out_;
  spdlog::level::level_enum level_ = spdlog::level::info;
};

TEST_F(ProgressBar, NoBarAboveInfoLevel) {
  spdlog::set_level(spdlog::level::warn);  // QLORA_LOG_LEVEL=warn, or a data-parallel rank > 0
  Progress p("load", 8, "tensors");
  p.advance(1);
  EXPECT_EQ(out_.str(), "");
}

TEST_F(ProgressBar, FirstUpdateDrawsAtOnceInPlace) {
  Progress p("load", 8, "tensors");
  EXPECT_EQ(p.mode(), ProgressMode::kBar);
  EXPECT_EQ(out_.str(), "");  // nothing before the first update (a Progress that is never used draws nothing)
  p.advance(2, "x");
  const std::string first = out_.str();
  // Carriage return, the bar, clear to the end of the line; no newline (the next draw overwrites it).
  EXPECT_EQ(first.rfind("\rload [======>", 0), 0u) << first;
  EXPECT_NE(first.find("] 2/8 tensors 25% | "), std::string::npos) << first;
  EXPECT_NE(first.find(" tensors/s | ETA "), std::string::npos) << first;
  EXPECT_EQ(first.substr(first.size() - 7), " | x\x1b[K");
  EXPECT_EQ(first.find('\n'), std::string::npos);
  p.advance(1);  // within 0.2 s of the last draw: not drawn again
  EXPECT_EQ(out_.str(), first);
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  p.advance(1);
  EXPECT_NE(out_.str().find("4/8 tensors 50%", first.size()), std::string::npos) << out_.str();
  p.finish();  // clears the line; the summary goes to the log
  EXPECT_EQ(out_.str().substr(out_.str().size() - 4), "\r\x1b[K");
}

TEST_F(ProgressBar, SetNowDrawsAtOnce) {
  Progress p("train", 10, "steps");
  p.set(1, "step 2 micro-batch 1/4");
  const size_t drawn = out_.str().size();
  p.set(1.5, "step 2 micro-batch 2/4");  // within 0.2 s: skipped
  EXPECT_EQ(out_.str().size(), drawn);
  p.set_now(2, "evaluating");  // a new phase: drawn at once
  EXPECT_NE(out_.str().find("2/10 steps 20% | ", drawn), std::string::npos) << out_.str();
  EXPECT_NE(out_.str().find("| evaluating\x1b[K", drawn), std::string::npos) << out_.str();
}

TEST_F(ProgressBar, LogLinesGoAboveTheBar) {
  Progress p("merge", 100, "MiB");
  p.advance(10);
  const size_t drawn = out_.str().size();
  write_above_progress([&] { out_ << "[12:00:00] info a log line\n"; });
  const std::string after = out_.str().substr(drawn);
  EXPECT_EQ(after.rfind("\r\x1b[K[12:00:00] info a log line\n\rmerge [", 0), 0u) << after;  // cleared, logged, redrawn
  p.finish();
  write_above_progress([&] { out_ << "next\n"; });  // no bar any more: the line alone
  EXPECT_EQ(out_.str().substr(out_.str().size() - 5), "next\n");
}

TEST_F(ProgressBar, FractionalStepsRateAndWidth) {
  Progress p("train", 20, "steps");
  p.start_at(10);  // resumed: the rate counts from here
  p.set(10.5, "micro-batch 2/4");
  EXPECT_NE(out_.str().find("10/20 steps 52%"), std::string::npos) << out_.str();  // whole steps shown
  EXPECT_NE(out_.str().find("micro-batch 2/4"), std::string::npos);
  EXPECT_GT(p.rate(), 0.0);
  const std::string narrow = p.bar_line(std::string(300, 'e'), /*columns=*/60);
  EXPECT_EQ(narrow.size(), 59u);  // never wraps
  Progress unknown("count", 0, "batches");
  EXPECT_EQ(unknown.bar_line("", 100).find('['), std::string::npos);  // no total: no bar, no ETA
}

TEST_F(ProgressBar, UnfinishedBarLeavesItsLastStateOnItsOwnLine) {
  {
    Progress p("export", 4, "tensors");
    p.advance(1);
  }  // e.g. an exception went past finish()
  EXPECT_EQ(out_.str().back(), '\n');
}

TEST(ProgressModes, PlainAndOffDrawNoBar) {
  std::ostringstream out;
  set_progress_stream(&out);
  for (ProgressMode m : {ProgressMode::kPlain, ProgressMode::kOff}) {
    set_progress_mode(m);
    Progress p("load", 4, "tensors", /*interval_s=*/0.0);
    p.advance(1);
    p.finish();
  }
  set_progress_mode(std::nullopt);
  set_progress_stream(nullptr);
  EXPECT_EQ(out.str(), "");  // plain logs lines through spdlog; off shows nothing live
}

}  // namespace
}  // namespace qlora
