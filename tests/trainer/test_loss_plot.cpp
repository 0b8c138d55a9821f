// The loss plot (trainer/loss_plot.h): what metrics.jsonl yields, and what the SVG draws for it, counted by the
// elements' classes; tests/interop_tb parses real plots (and these edge cases) with Python's XML parser.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>
#include <string>

#include "common/atomic_file.h"
#include "test_util.h"
#include "trainer/loss_plot.h"

namespace qlora::trainer {
namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// A coordinate or label printed from a NaN or infinity (printf's nan, -nan, inf).
bool has_non_finite(const std::string& svg) {
  return std::regex_search(svg, std::regex("[\",( >](-?nan|-?inf)[\",) <]"));
}

// Points drawn for curve `cls`: the pairs of each polyline's points plus its single-point dots.
size_t points_of(const std::string& svg, const std::string& cls) {
  size_t n = 0;
  const std::string line = "<polyline class=\"" + cls + "\"";
  for (size_t p = svg.find(line); p != std::string::npos; p = svg.find(line, p + 1)) {
    const size_t a = svg.find("points=\"", p) + 8;
    const std::string pts = svg.substr(a, svg.find('"', a) - a);
    n += count(pts, ",");
  }
  return n + count(svg, "<circle class=\"" + cls + "\"");
}

TEST(LossPlot, ReadsMetricsRecords) {
  const fs::path f = test::temp_dir() / "metrics.jsonl";
  write_file_atomic(f,
                    "{\"step\":1,\"loss\":3.0,\"lr\":0.001}\n"
                    "{\"step\":2,\"loss\":null,\"lr\":0.001,\"skipped\":true}\n"
                    "{\"step\":3,\"loss\":2.0,\"lr\":0.0005,\"eval_loss\":2.5,\"eval_ppl\":12.2}\n"
                    "{\"step\":3,\"loss\":1.9,\"lr\":0.0005}\n"  // logged again (a resumed run): the last wins
                    "{\"step\":4,\"eval_loss\":2.25,\"eval_ppl\":9.5}\n"
                    "{\"step\":5,\"lo");  // torn last line of a killed run
  const LossCurve c = read_loss_curve(f);
  ASSERT_EQ(c.train.size(), 3u);
  EXPECT_EQ(c.train[0], std::make_pair(int64_t{1}, 3.0));
  EXPECT_TRUE(std::isnan(c.train[1].second));
  EXPECT_EQ(c.train[2], std::make_pair(int64_t{3}, 1.9));
  ASSERT_EQ(c.eval.size(), 2u);
  EXPECT_EQ(c.eval[1], std::make_pair(int64_t{4}, 2.25));
  EXPECT_EQ(c.lr.size(), 3u);
  EXPECT_NE(test::error_of([&] { read_loss_curve(f.parent_path() / "none.jsonl"); }).find("no metrics file"),
            std::string::npos);
}

TEST(LossPlot, DrawsEveryPointWithGapsAtSkippedSteps) {
  LossCurve c;
  for (int64_t s = 1; s <= 10; ++s) c.train.emplace_back(s, s == 4 ? NAN : 3.0 / static_cast<double>(s));
  for (int64_t s = 1; s <= 10; ++s) c.lr.emplace_back(s, 1e-3 * static_cast<double>(s) / 10.0);
  c.eval = {{5, 1.0}, {10, 0.5}};
  const std::string svg = loss_plot_svg(c, "run <a&b>");
  EXPECT_EQ(points_of(svg, "train"), 9u);                                 // 10 steps, one skipped
  EXPECT_EQ(count(svg, "<polyline class=\"train\""), 2u);                 // split at the skipped step
  EXPECT_EQ(count(svg, "<line class=\"skipped\""), 1u);                   // marked under the axis
  EXPECT_EQ(count(svg, "<circle class=\"eval\""), 2u);                    // a dot per eval
  EXPECT_EQ(points_of(svg, "lr"), 10u);                                   // on its own axis
  EXPECT_NE(svg.find("learning rate"), std::string::npos);                // the right axis' title
  EXPECT_NE(svg.find(">run &lt;a&amp;b&gt;</text>"), std::string::npos);  // the title, escaped
  EXPECT_EQ(svg.rfind("</svg>\n"), svg.size() - 7);
}

TEST(LossPlot, OnePointNoEvalAndNoData) {
  LossCurve one;
  one.train = {{1, 2.0}};
  const std::string svg = loss_plot_svg(one, "one");
  EXPECT_EQ(count(svg, "<circle class=\"train\""), 1u);  // a single point is a dot, not an empty line
  EXPECT_EQ(count(svg, "<polyline"), 0u);
  EXPECT_EQ(count(svg, "class=\"eval"), 0u);
  EXPECT_EQ(svg.find("learning rate"), std::string::npos);  // no lr: no right axis
  EXPECT_FALSE(has_non_finite(svg)) << svg;

  const std::string empty = loss_plot_svg(LossCurve{}, "empty");
  EXPECT_NE(empty.find("no loss records yet"), std::string::npos);
  EXPECT_FALSE(has_non_finite(empty)) << empty;
}

TEST(LossPlot, PlotRunWritesBesideTheMetrics) {
  const fs::path run = test::temp_dir() / "my-run";
  fs::create_directories(run);
  write_file_atomic(run / "metrics.jsonl", "{\"step\":1,\"loss\":3.0,\"lr\":0.001}\n{\"step\":2,\"loss\":2.0}\n");
  const fs::path svg = plot_run(run.string() + "/");
  EXPECT_EQ(svg, run / "loss.svg");
  const std::string text = read_file(svg);
  EXPECT_NE(text.find(">my-run: loss</text>"), std::string::npos);
  EXPECT_EQ(points_of(text, "train"), 2u);
  EXPECT_NE(test::error_of([&] { plot_run(run / "nothing-here"); }).find("no such run folder"), std::string::npos);
}

}  // namespace
}  // namespace qlora::trainer
