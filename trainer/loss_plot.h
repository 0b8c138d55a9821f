// The loss-curve picture of a run: an SVG written by hand from metrics.jsonl (no plotting dependency), so it can
// be drawn for any run, finished or interrupted (`qlora-train --plot RUN_DIR`), and is written at the end of every
// run beside metrics.jsonl and into output_dir.
//
// Train loss is a line against step (a gap, and a red tick under the axis, at each skipped non-finite step), eval
// loss points joined by a line, both on the left axis; the learning rate is a dashed line on the right axis.
// Elements carry a class (train, eval, lr, skipped) so a test can count what was drawn.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace qlora::trainer {

namespace fs = std::filesystem;

inline constexpr const char* kLossPlotFile = "loss.svg";

struct LossCurve {
  std::vector<std::pair<int64_t, double>> train;  // (step, loss); NaN: a skipped step
  std::vector<std::pair<int64_t, double>> eval;   // (step, eval loss)
  std::vector<std::pair<int64_t, double>> lr;     // (step, learning rate)
};

// The curves of a metrics.jsonl file, by step (a step logged twice keeps its last record; a torn last line of a
// killed run is left out). Throws qlora::Error when the file cannot be read.
LossCurve read_loss_curve(const fs::path& metrics_file);

// The picture, `title` on top (XML-escaped). A curve without points is left out; no points at all draws the
// axes and says so.
std::string loss_plot_svg(const LossCurve& curve, const std::string& title);

// Reads `metrics_file` and writes the picture to `svg_file` (atomically).
void write_loss_plot(const fs::path& metrics_file, const fs::path& svg_file, const std::string& title);

// `qlora-train --plot RUN`: RUN is a checkpoint.dir (with metrics.jsonl), an output_dir (its training_summary.json
// names the metrics file) or a metrics .jsonl file. Writes RUN/loss.svg (beside the file for a .jsonl) titled with
// the run's folder name, and returns its path.
fs::path plot_run(const fs::path& run);

}  // namespace qlora::trainer
