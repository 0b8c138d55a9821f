// Data parallel as the training loop sees it: one object that does nothing for a single process, so the loop
// reads the same with 1 or N ranks (no `if (distributed)` branches). With WORLD_SIZE > 1 it owns the process
// group and the gradient reducer (trainer/dist/distributed.h).
//
//   DataParallel dp(env, options);              // joins the group when env.enabled()
//   dp.start(adapter_params, bucket_mb);        // rank 0's initial adapter on every rank, gradient buckets
//   per update:
//     dp.seed_update(seed, step);               // ranks > 0: their own LoRA-dropout stream
//     for micro-batch i of the update (counted over all ranks): if (dp.owns(i)) forward/backward
//       (before this rank's last backward: dp.before_last_backward())
//     loss_sum = dp.reduce_update(loss_sum, step);   // gradients and loss summed over ranks; stop agreed
//     if (dp.stop_requested()) ...
//
// Every rank reads the whole stream of micro-batches and keeps every world_size-th (rank r: r, r+W, ...), so all
// count the same label tokens and hold the same data cursor; rank 0 alone writes checkpoints, metrics and outputs.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/dist/distributed.h"

namespace qlora::trainer {

class DataParallel {
 public:
  DataParallel() = default;  // a single process
  // Joins the process group (a rendezvous that blocks until every rank is there) when env.enabled().
  DataParallel(const dist::DistEnv& env, const dist::DistOptions& options);
  ~DataParallel();
  DataParallel(DataParallel&&) noexcept;
  DataParallel& operator=(DataParallel&&) noexcept;

  bool enabled() const { return group_ != nullptr; }
  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }

  // Setup. Rank 0's value on every rank (a single process: `value`).
  std::string share_from_rank0(const std::string& key, const std::string& value);
  // Once the adapters exist: copies rank 0's parameters to every rank and buckets their gradients.
  void start(const std::vector<torch::Tensor>& params, double bucket_mb);

  // Micro-batch `i` of an update (numbered over all ranks) is this rank's to train or evaluate.
  bool owns(int64_t i) const { return i % env_.world_size == env_.rank; }
  // Before an update's forward passes: rank r > 0 reseeds its LoRA-dropout generator from (seed, r, step), so
  // its stream differs from the other ranks' and resumes exactly without saved state (rank 0 keeps the
  // checkpointed generator).
  void seed_update(uint64_t seed, int64_t step) const;
  // Before this rank's last backward of the update: its gradient hooks launch the bucket all-reduces.
  void before_last_backward();
  // After this rank's backward passes: sums the adapter gradients and `loss_sum` over the ranks and agrees on
  // whether any rank was asked to stop. Returns the summed loss. `step`: the update's number, for messages.
  double reduce_update(double loss_sum, int64_t step);
  // Eval sums over the ranks (each evaluated its own batches). `step`: for messages.
  void reduce_eval(double& loss_sum, int64_t& tokens, int64_t step);

  // SIGINT/SIGTERM: a single process checks now; ranks act on the agreement of the last reduce_update, so all
  // stop after the same update.
  bool stop_requested() const;
  // Seconds this process spent blocked in the gradient and loss all-reduces (0 for a single process).
  double allreduce_seconds() const { return allreduce_s_; }

 private:
  dist::DistEnv env_;
  std::unique_ptr<dist::DistGroup> group_;
  std::unique_ptr<dist::GradientReducer> reducer_;  // declared after group_: destroyed first
  bool stop_agreed_ = false;
  double allreduce_s_ = 0.0;
};

}  // namespace qlora::trainer
