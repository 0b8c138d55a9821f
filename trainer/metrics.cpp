#include "trainer/metrics.h"

#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "common/log.h"

namespace qlora::trainer {

std::string format_progress_line(const StepMetrics& m) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "step %lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s",
                static_cast<long long>(m.step), static_cast<long long>(m.total_steps), m.loss, m.lr, m.grad_norm,
                m.tokens_per_s);
  std::string s = buf;
  if (m.skipped) s += " | SKIPPED (non-finite)";
  if (m.eval_loss) {
    std::snprintf(buf, sizeof(buf), " | eval %.4f (ppl %.2f)", *m.eval_loss, std::exp(*m.eval_loss));
    s += buf;
  }
  s += " | ETA " + (m.eta_s >= 0 ? format_duration(m.eta_s) : std::string("?"));
  s += " | RSS " + format_bytes(static_cast<double>(m.rss_bytes));
  return s;
}

nlohmann::json metrics_record(const StepMetrics& m) {
  auto num = [](double v) -> nlohmann::json { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  nlohmann::json j = {{"step", m.step},
                      {"loss", num(m.loss)},
                      {"lr", m.lr},
                      {"grad_norm", num(m.grad_norm)},
                      {"tokens", m.tokens},
                      {"tokens_per_s", m.tokens_per_s},
                      {"elapsed", m.elapsed_s},
                      {"rss_bytes", m.rss_bytes}};
  if (m.device_peak_bytes) j["device_peak_bytes"] = *m.device_peak_bytes;
  if (m.eval_loss) {
    j["eval_loss"] = num(*m.eval_loss);
    j["eval_ppl"] = num(std::exp(*m.eval_loss));
  }
  if (m.skipped) j["skipped"] = true;
  return j;
}

MetricsWriter::MetricsWriter(const fs::path& file, std::optional<int64_t> resume_step, const fs::path& tensorboard_dir)
    : path_(file) {
  if (!tensorboard_dir.empty()) tensorboard_ = TensorBoardWriter(tensorboard_dir, resume_step.value_or(0));
  if (path_.empty()) return;
  if (!path_.parent_path().empty()) fs::create_directories(path_.parent_path());
  if (resume_step && fs::exists(path_)) {
    // Keep the records of the segment we resume from; rewrite atomically.
    std::istringstream in(read_file(path_));
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      std::string why;
      const auto j = try_parse_json(line, &why);  // nullopt: a torn last line of a killed run, dropped
      if (!j || !j->is_object()) continue;
      const nlohmann::json step = j->value("step", nlohmann::json(0));
      if (step.is_number() && step.get<int64_t>() <= *resume_step) kept += line + "\n";
    }
    write_file_atomic(path_, kept);
    out_.open(path_, std::ios::app);
  } else {
    out_.open(path_, std::ios::trunc);
  }
  if (!out_) throw_file_error(path_.string(), "cannot open the metrics file for writing");
}

void MetricsWriter::write(const nlohmann::json& record) {
  tensorboard_.write_record(record);
  if (!out_.is_open()) return;
  out_ << record.dump() << "\n";
  out_.flush();
  if (!out_) throw_file_error(path_.string(), "cannot write the metrics file (disk full?)");
}

}  // namespace qlora::trainer
