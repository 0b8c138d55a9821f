#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace qlora::trainer {

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "linear") return ScheduleKind::kLinear;
  if (name == "cosine") return ScheduleKind::kCosine;
  throw Error("unknown learning-rate schedule `" + name + "`\nHINT: use constant, linear or cosine");
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kConstant:
      return "constant";
    case ScheduleKind::kLinear:
      return "linear";
    case ScheduleKind::kCosine:
      return "cosine";
  }
  return "?";
}

double lr_at(const LrSchedule& s, int64_t step) {
  if (step < 0) step = 0;
  if (step < s.warmup_steps) {
    return s.base_lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  }
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
  const double p = std::min(1.0, static_cast<double>(step - s.warmup_steps) / decay_steps);
  switch (s.kind) {
    case ScheduleKind::kConstant:
      return s.base_lr;
    case ScheduleKind::kLinear:
      return s.base_lr * (1.0 - p);
    case ScheduleKind::kCosine:
      return s.base_lr * 0.5 * (1.0 + std::cos(M_PI * p));
  }
  return s.base_lr;
}

int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
  int64_t w = warmup_steps;
  if (w <= 0 && warmup_ratio > 0) w = static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total_steps)));
  return std::clamp<int64_t>(w, 0, std::max<int64_t>(0, total_steps));
}

}  // namespace qlora::trainer
