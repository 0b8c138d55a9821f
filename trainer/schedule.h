// Learning-rate schedules: pure functions of the optimizer step, so they are trivially resumable and testable.
//
// Step s is the 0-based index of the optimizer update (s = 0 is the first update), T = total updates,
// W = warmup updates:
//   warmup (s < W):  lr = base * (s + 1) / W           (the first update already moves; HF would use 0 here)
//   then, with p = (s - W) / max(1, T - W) in [0, 1):
//     constant:      lr = base
//     linear:        lr = base * (1 - p)
//     cosine:        lr = base * 0.5 * (1 + cos(pi * p))
#pragma once

#include <cstdint>
#include <string>

namespace qlora::trainer {

enum class ScheduleKind { kConstant, kLinear, kCosine };

ScheduleKind parse_schedule_kind(const std::string& name);  // constant | linear | cosine; else qlora::Error
const char* schedule_kind_name(ScheduleKind kind);

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::kConstant;
  double base_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
};

// The learning rate of update `step` (0-based).
double lr_at(const LrSchedule& schedule, int64_t step);

// warmup_steps when given (> 0), else ceil(warmup_ratio * total_steps) (HF's rule); clamped to total_steps.
int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

}  // namespace qlora::trainer
