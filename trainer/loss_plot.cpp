#include "trainer/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"

namespace qlora::trainer {

namespace {

// The canvas (pixels) and the plot area inside it: room for tick labels left and right, title above.
constexpr double kWidth = 800, kHeight = 450;
constexpr double kLeft = 72, kRight = kWidth - 84, kTop = 48, kBottom = kHeight - 52;
constexpr int kTargetTicks = 5;
constexpr double kPadFraction = 0.05;
constexpr const char* kTrainColor = "#1f77b4";
constexpr const char* kEvalColor = "#ff7f0e";
constexpr const char* kLrColor = "#7f7f7f";
constexpr const char* kSkipColor = "#d62728";

// An axis range widened to round tick values: 1, 2 or 5 x 10^k apart (at least 1 for an integer axis).
struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
};

Axis nice_axis(double lo, double hi, bool integer = false) {
  if (!(hi > lo)) {  // one value (or none): a range around it
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / kTargetTicks;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double n = raw / mag;
  double step = (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  if (integer) step = std::max(step, 1.0);
  Axis a;
  a.lo = std::floor(lo / step) * step;
  a.hi = std::ceil(hi / step) * step;
  for (int i = 0; a.lo + i * step <= a.hi + step * 1e-9; ++i) {
    const double v = a.lo + i * step;
    a.ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return a;
}

std::string num(double v, const char* fmt = "%.1f") {
  char b[32];
  std::snprintf(b, sizeof(b), fmt, v);
  return b;
}

std::string xml_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '&':
        r += "&amp;";
        break;
      case '<':
        r += "&lt;";
        break;
      case '>':
        r += "&gt;";
        break;
      case '"':
        r += "&quot;";
        break;
      default:
        r += c;
    }
  }
  return r;
}

struct Frame {
  Axis x, y, lr;
  double px(double step) const { return kLeft + (step - x.lo) / (x.hi - x.lo) * (kRight - kLeft); }
  double py(double loss) const { return kBottom - (loss - y.lo) / (y.hi - y.lo) * (kBottom - kTop); }
  double plr(double lr_v) const { return kBottom - (lr_v - lr.lo) / (lr.hi - lr.lo) * (kBottom - kTop); }
};

Frame make_frame(const LossCurve& c) {
  double max_step = 1, lo = INFINITY, hi = -INFINITY, lr_hi = 0;
  for (const auto* pts : {&c.train, &c.eval, &c.lr}) {
    for (const auto& [s, v] : *pts) max_step = std::max(max_step, static_cast<double>(s));
  }
  for (const auto* pts : {&c.train, &c.eval}) {
    for (const auto& [s, v] : *pts) {
      if (!std::isfinite(v)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  for (const auto& [s, v] : c.lr) lr_hi = std::max(lr_hi, std::isfinite(v) ? v : 0.0);
  Frame f;
  // Curves keep 5% off the top and bottom of the frame.
  const double pad = std::isfinite(lo) ? (hi - lo) * kPadFraction : 0.0;
  f.x = nice_axis(0, max_step, /*integer=*/true);
  // (a loss is never negative: an axis that would dip below 0 starts at 0).
  f.y = std::isfinite(lo) ? nice_axis(lo >= 0 ? std::max(lo - pad, 0.0) : lo - pad, hi + pad) : nice_axis(0, 1);
  f.lr = nice_axis(0, (lr_hi > 0 ? lr_hi : 1.0) * (1 + kPadFraction));
  return f;
}

// Axes, grid, ticks and their labels, axis titles.
void draw_axes(std::ostringstream& o, const Frame& f, bool with_lr) {
  o << "<g class=\"axes\" font-size=\"12\" fill=\"#333\">\n";
  for (double t : f.y.ticks) {
    const std::string y = num(f.py(t));
    o << "<line x1=\"" << kLeft << "\" x2=\"" << kRight << "\" y1=\"" << y << "\" y2=\"" << y
      << "\" stroke=\"#e5e5e5\"/>\n<text x=\"" << kLeft - 6 << "\" y=\"" << y
      << "\" text-anchor=\"end\" dominant-baseline=\"middle\">" << num(t, "%.4g") << "</text>\n";
  }
  for (double t : f.x.ticks) {
    const std::string x = num(f.px(t));
    o << "<line x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << kBottom << "\" y2=\"" << kBottom + 5
      << "\" stroke=\"#333\"/>\n<text x=\"" << x << "\" y=\"" << kBottom + 18 << "\" text-anchor=\"middle\">"
      << num(t, "%.6g") << "</text>\n";
  }
  if (with_lr) {
    for (double t : f.lr.ticks) {
      const std::string y = num(f.plr(t));
      o << "<line x1=\"" << kRight << "\" x2=\"" << kRight + 5 << "\" y1=\"" << y << "\" y2=\"" << y << "\" stroke=\""
        << kLrColor << "\"/>\n<text x=\"" << kRight + 8 << "\" y=\"" << y << "\" fill=\"" << kLrColor
        << "\" dominant-baseline=\"middle\">" << (t == 0 ? std::string("0") : num(t, "%.1e")) << "</text>\n";
    }
    o << "<text transform=\"translate(" << kWidth - 12 << "," << (kTop + kBottom) / 2
      << ") rotate(90)\" text-anchor=\"middle\" fill=\"" << kLrColor << "\">learning rate</text>\n";
  }
  o << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << kRight - kLeft << "\" height=\"" << kBottom - kTop
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  o << "<text x=\"" << (kLeft + kRight) / 2 << "\" y=\"" << kHeight - 14 << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text transform=\"translate(16," << (kTop + kBottom) / 2
    << ") rotate(-90)\" text-anchor=\"middle\">loss</text>\n</g>\n";
}

// A curve as polylines broken at non-finite values; a run of one point is a dot.
template <class Y>
void draw_curve(std::ostringstream& o, const std::vector<std::pair<int64_t, double>>& pts, const Frame& f, Y y,
                const char* cls, const char* color, const char* style) {
  std::vector<std::string> run;
  const auto flush = [&] {
    if (run.size() == 1) {
      const size_t comma = run[0].find(',');
      o << "<circle class=\"" << cls << "\" cx=\"" << run[0].substr(0, comma) << "\" cy=\"" << run[0].substr(comma + 1)
        << "\" r=\"2.5\" fill=\"" << color << "\"/>\n";
    } else if (run.size() > 1) {
      o << "<polyline class=\"" << cls << "\" fill=\"none\" stroke=\"" << color << "\" " << style << " points=\"";
      for (size_t i = 0; i < run.size(); ++i) o << (i ? " " : "") << run[i];
      o << "\"/>\n";
    }
    run.clear();
  };
  for (const auto& [s, v] : pts) {
    if (std::isfinite(v)) {
      run.push_back(num(f.px(static_cast<double>(s))) + "," + num(y(v)));
    } else {
      flush();
    }
  }
  flush();
}

void draw_legend(std::ostringstream& o, const LossCurve& c) {
  double y = kTop + 16;
  const double x = kRight - 130;
  const bool skipped =
      std::any_of(c.train.begin(), c.train.end(), [](const auto& p) { return !std::isfinite(p.second); });
  const int rows = !c.train.empty() + !c.eval.empty() + !c.lr.empty() + skipped;
  if (rows == 0) return;
  o << "<g class=\"legend\" font-size=\"12\">\n<rect x=\"" << x - 8 << "\" y=\"" << y - 12
    << "\" width=\"130\" height=\"" << rows * 18 + 6 << "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n";
  const auto entry = [&](const char* label, const char* color, const char* style) {
    o << "<line x1=\"" << x << "\" x2=\"" << x + 22 << "\" y1=\"" << y << "\" y2=\"" << y << "\" stroke=\"" << color
      << "\" " << style << "/>\n<text x=\"" << x + 28 << "\" y=\"" << y << "\" dominant-baseline=\"middle\">" << label
      << "</text>\n";
    y += 18;
  };
  if (!c.train.empty()) entry("train loss", kTrainColor, "stroke-width=\"2\"");
  if (!c.eval.empty()) entry("eval loss", kEvalColor, "stroke-width=\"2\"");
  if (!c.lr.empty()) entry("learning rate", kLrColor, "stroke-dasharray=\"5,4\"");
  if (skipped) entry("skipped step", kSkipColor, "stroke-width=\"2\"");
  o << "</g>\n";
}

}  // namespace

LossCurve read_loss_curve(const fs::path& metrics_file) {
  if (!fs::is_regular_file(metrics_file)) {
    throw_file_error(metrics_file.string(), "no metrics file",
                     "give the run's checkpoint.dir (it holds metrics.jsonl) or the metrics .jsonl file itself");
  }
  std::map<int64_t, double> train, eval, lr;
  std::istringstream in(read_file(metrics_file));
  for (std::string line; std::getline(in, line);) {
    std::string why;
    const auto j = try_parse_json(line, &why);  // nullopt: a torn last line of a killed run
    if (!j || !j->is_object() || !j->contains("step") || !(*j)["step"].is_number_integer()) continue;
    const int64_t step = (*j)["step"].get<int64_t>();
    const auto value = [&](const char* key) { return (*j)[key].is_number() ? (*j)[key].get<double>() : NAN; };
    if (j->contains("loss")) train[step] = value("loss");  // null: a skipped (non-finite) step
    if (j->contains("eval_loss")) eval[step] = value("eval_loss");
    if (j->contains("lr")) lr[step] = value("lr");
  }
  LossCurve c;
  c.train.assign(train.begin(), train.end());
  c.eval.assign(eval.begin(), eval.end());
  c.lr.assign(lr.begin(), lr.end());
  return c;
}

std::string loss_plot_svg(const LossCurve& c, const std::string& title) {
  const Frame f = make_frame(c);
  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth
    << "\" height=\"" << kHeight << "\" viewBox=\"0 0 " << kWidth << " " << kHeight
    << "\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text class=\"title\" x=\"" << kWidth / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">"
    << xml_escape(title) << "</text>\n";
  draw_axes(o, f, !c.lr.empty());
  draw_curve(
      o, c.lr, f, [&](double v) { return f.plr(v); }, "lr", kLrColor, "stroke-dasharray=\"5,4\"");
  draw_curve(
      o, c.train, f, [&](double v) { return f.py(v); }, "train", kTrainColor, "stroke-width=\"2\"");
  // Eval: a dot at every point, joined by a line.
  draw_curve(
      o, c.eval, f, [&](double v) { return f.py(v); }, "eval-line", kEvalColor, "stroke-width=\"1.5\"");
  for (const auto& [s, v] : c.eval) {
    if (!std::isfinite(v)) continue;
    o << "<circle class=\"eval\" cx=\"" << num(f.px(static_cast<double>(s))) << "\" cy=\"" << num(f.py(v))
      << "\" r=\"4\" fill=\"" << kEvalColor << "\"/>\n";
  }
  for (const auto& [s, v] : c.train) {
    if (std::isfinite(v)) continue;
    const std::string x = num(f.px(static_cast<double>(s)));
    o << "<line class=\"skipped\" x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << kBottom - 8 << "\" y2=\"" << kBottom
      << "\" stroke=\"" << kSkipColor << "\" stroke-width=\"2\"/>\n";
  }
  if (c.train.empty() && c.eval.empty()) {
    o << "<text x=\"" << (kLeft + kRight) / 2 << "\" y=\"" << (kTop + kBottom) / 2
      << "\" text-anchor=\"middle\" fill=\"#999\">no loss records yet</text>\n";
  }
  draw_legend(o, c);
  o << "</svg>\n";
  return o.str();
}

void write_loss_plot(const fs::path& metrics_file, const fs::path& svg_file, const std::string& title) {
  write_file_atomic(svg_file, loss_plot_svg(read_loss_curve(metrics_file), title));
}

fs::path plot_run(const fs::path& run) {
  fs::path metrics = run / "metrics.jsonl";
  fs::path out_dir = run;
  if (fs::is_regular_file(run)) {
    metrics = run;
    out_dir = run.parent_path();
  } else if (!fs::exists(metrics) && fs::is_regular_file(run / "training_summary.json")) {
    const nlohmann::json s = read_json_file(run / "training_summary.json");
    if (s.contains("metrics") && s["metrics"].is_string()) metrics = s["metrics"].get<std::string>();
  }
  if (!fs::is_directory(out_dir.empty() ? fs::path(".") : out_dir)) {
    throw_file_error(run.string(), "no such run folder", "give a run's checkpoint.dir, e.g. runs/tiny");
  }
  fs::path name = fs::absolute(run).lexically_normal();
  if (name.filename().empty()) name = name.parent_path();  // "runs/tiny/"
  const std::string title = (fs::is_regular_file(run) ? name.parent_path() : name).filename().string();
  const fs::path svg = out_dir / kLossPlotFile;
  write_loss_plot(metrics, svg, title + ": loss");
  return svg;
}

}  // namespace qlora::trainer
