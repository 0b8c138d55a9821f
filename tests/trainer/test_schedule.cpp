// LR schedules against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "trainer/schedule.h"

namespace qlora::trainer {
namespace {

constexpr double kTol = 1e-12;

TEST(LrSchedule, ConstantWithWarmup) {
  LrSchedule s{ScheduleKind::kConstant, 1e-3, /*warmup_steps=*/4, /*total_steps=*/10};
  const double expected[10] = {0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3};
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(lr_at(s, i), expected[i], kTol) << "step " << i;
}

TEST(LrSchedule, LinearWithWarmup) {
  LrSchedule s{ScheduleKind::kLinear, 1.0, /*warmup_steps=*/2, /*total_steps=*/6};
  // warmup: 1/2, 2/2; then p = (s-2)/4: 1, 0.75, 0.5, 0.25.
  const double expected[6] = {0.5, 1.0, 1.0, 0.75, 0.5, 0.25};
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(lr_at(s, i), expected[i], kTol) << "step " << i;
}

TEST(LrSchedule, CosineNoWarmup) {
  LrSchedule s{ScheduleKind::kCosine, 1.0, /*warmup_steps=*/0, /*total_steps=*/4};
  // 0.5 * (1 + cos(pi * s / 4)): 1, (2+sqrt2)/4, 1/2, (2-sqrt2)/4.
  const double r2 = std::sqrt(2.0);
  const double expected[4] = {1.0, (2.0 + r2) / 4.0, 0.5, (2.0 - r2) / 4.0};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(lr_at(s, i), expected[i], kTol) << "step " << i;
}

TEST(LrSchedule, CosineWithWarmup) {
  LrSchedule s{ScheduleKind::kCosine, 2e-4, /*warmup_steps=*/10, /*total_steps=*/110};
  EXPECT_NEAR(lr_at(s, 0), 2e-5, kTol);
  EXPECT_NEAR(lr_at(s, 9), 2e-4, kTol);
  EXPECT_NEAR(lr_at(s, 10), 2e-4, kTol);
  EXPECT_NEAR(lr_at(s, 60), 1e-4, kTol);  // halfway through the decay: cos(pi/2) = 0
  EXPECT_NEAR(lr_at(s, 109), 2e-4 * 0.5 * (1 + std::cos(M_PI * 99.0 / 100.0)), kTol);
  EXPECT_NEAR(lr_at(s, 500), 0.0, kTol);  // past the end: stays at the floor
}

TEST(LrSchedule, WarmupResolution) {
  EXPECT_EQ(resolve_warmup_steps(0, 0.03, 1875), 57);  // ceil(56.25), HF's rule
  EXPECT_EQ(resolve_warmup_steps(10, 0.5, 100), 10);   // explicit steps win
  EXPECT_EQ(resolve_warmup_steps(0, 0.0, 100), 0);
  EXPECT_EQ(resolve_warmup_steps(200, 0.0, 100), 100);  // clamped to the run
}

TEST(LrSchedule, ParseKind) {
  EXPECT_EQ(parse_schedule_kind("cosine"), ScheduleKind::kCosine);
  EXPECT_EQ(parse_schedule_kind("linear"), ScheduleKind::kLinear);
  EXPECT_EQ(parse_schedule_kind("constant"), ScheduleKind::kConstant);
  EXPECT_THROW(parse_schedule_kind("step"), Error);
}

}  // namespace
}  // namespace qlora::trainer
