#include "trainer/data_parallel.h"

#include <chrono>

#include "common/threads.h"

namespace qlora::trainer {

namespace {

// The LoRA-dropout seed of rank `rank` > 0 for update `step`: a 64-bit mix of (seed, rank, step).
uint64_t rank_step_seed(uint64_t seed, int rank, int64_t step) {
  uint64_t x = seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(rank)) ^ (0xBF58476D1CE4E5B9ULL * step);
  x ^= x >> 31;
  return x * 0x94D049BB133111EBULL;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

DataParallel::DataParallel(const dist::DistEnv& env, const dist::DistOptions& options) : env_(env) {
  if (env_.enabled()) group_ = std::make_unique<dist::DistGroup>(env_, options);
}

DataParallel::~DataParallel() = default;
DataParallel::DataParallel(DataParallel&&) noexcept = default;
DataParallel& DataParallel::operator=(DataParallel&&) noexcept = default;

std::string DataParallel::share_from_rank0(const std::string& key, const std::string& value) {
  return group_ ? group_->share_from_rank0(key, value) : value;
}

void DataParallel::start(const std::vector<torch::Tensor>& params, double bucket_mb) {
  if (!group_) return;
  // Every rank starts from rank 0's adapter (equal by construction; this makes it so whatever happened).
  group_->broadcast(params, /*root=*/0, "broadcast of the initial adapter");
  reducer_ = std::make_unique<dist::GradientReducer>(*group_, params, bucket_mb);
}

void DataParallel::seed_update(uint64_t seed, int64_t step) const {
  if (group_ && env_.rank > 0) torch::manual_seed(rank_step_seed(seed, env_.rank, step));
}

void DataParallel::before_last_backward() {
  if (reducer_) reducer_->arm();
}

double DataParallel::reduce_update(double loss_sum, int64_t step) {
  if (!group_) return loss_sum;
  // Gradients: a sum over ranks (each rank's loss is already divided by the update's global label count).
  const auto t0 = std::chrono::steady_clock::now();
  reducer_->finish("gradient all-reduce of step " + std::to_string(step));
  auto sums = torch::tensor({loss_sum, qlora::stop_requested() ? 1.0 : 0.0}, torch::kDouble);
  group_->all_reduce_sum({sums}, "loss all-reduce of step " + std::to_string(step));
  const double global_loss_sum = sums[0].item<double>();
  stop_agreed_ = sums[1].item<double>() > 0.0;
  allreduce_s_ += seconds_since(t0);
  return global_loss_sum;
}

void DataParallel::reduce_eval(double& loss_sum, int64_t& tokens, int64_t step) {
  if (!group_) return;
  auto sums = torch::tensor({loss_sum, static_cast<double>(tokens)}, torch::kDouble);
  group_->all_reduce_sum({sums}, "eval all-reduce at step " + std::to_string(step));
  loss_sum = sums[0].item<double>();
  tokens = static_cast<int64_t>(sums[1].item<double>());
}

bool DataParallel::stop_requested() const {
  return group_ ? stop_agreed_ : qlora::stop_requested();
}

}  // namespace qlora::trainer
