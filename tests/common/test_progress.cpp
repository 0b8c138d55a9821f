#include <gtest/gtest.h>

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

}  // namespace
}  // namespace qlora
