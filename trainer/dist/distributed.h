// Data-parallel training on PyTorch's c10d: a process group (Gloo on CPU, NCCL on GPU) over a TCPStore
// rendezvous, launched by the torchrun conventions (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
//
//   DistEnv env = dist_env_from_environment();         // world_size 1 without the variables
//   DistGroup group(env, {"gloo", std::chrono::seconds(300)});
//   GradientReducer reducer(group, adapter_params, /*bucket_mb=*/25.0);
//   for each micro-batch: if (last) reducer.arm(); loss.backward();
//   reducer.finish("step 12");                         // param.grad() = sum over ranks
//
// Only the LoRA adapter gradients are communicated (the frozen 4-bit base never is). They are copied into a
// few flat fp32 buckets; each bucket's all-reduce is launched asynchronously from the gradient hooks of the
// update's last backward as soon as all its gradients are final (buckets launch in a fixed order, the same on
// every rank, as c10d requires), so communication overlaps the rest of the backward pass.
//
// Failures: every collective waits at most dist.timeout_s. Each rank bumps a heartbeat key in the store every
// kHeartbeatInterval from a side thread; when a collective fails (peer closed its connection, or timed out),
// the heartbeats are read twice and the error names the rank(s) whose heartbeat stopped (a dead or stopped
// process), a rank that reported its own failure, or rank 0 when the store it hosts is unreachable.
//
// Everything that touches the c10d API lives in distributed.cpp (ProcessGroupGloo and ProcessGroupNCCL are
// c10d::Backend classes there).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace qlora::dist {

// Where this process sits in the job (torchrun's environment variables).
struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool enabled() const { return world_size > 1; }
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. Without WORLD_SIZE (or with WORLD_SIZE=1) this is
// a single process. A malformed or inconsistent value throws qlora::Error naming the variable.
DistEnv dist_env_from_environment();

struct DistOptions {
  std::string backend = "gloo";               // gloo | nccl
  std::chrono::milliseconds timeout{300000};  // per collective; the rendezvous waits max(this, 300 s)
};

class DistGroup {
 public:
  // Rendezvous: rank 0 hosts the TCPStore at master_addr:master_port; blocks until every rank joined (or
  // throws qlora::Error after the timeout).
  DistGroup(const DistEnv& env, const DistOptions& options);
  ~DistGroup();
  DistGroup(const DistGroup&) = delete;
  DistGroup& operator=(const DistGroup&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  const DistEnv& env() const { return env_; }
  const DistOptions& options() const { return options_; }

  // In-place sum over ranks. Every rank calls collectives in the same order with the same shapes; `what`
  // ("gradient all-reduce of step 12") goes into the error message.
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors, const std::string& what);
  // Copies rank `root`'s tensors into every rank's (in place).
  void broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what);
  // Rank 0 publishes a string (e.g. the checkpoint to resume from); the others receive it. Every rank calls it.
  std::string share_from_rank0(const std::string& key, const std::string& value_on_rank0);

  // Asynchronous all-reduce (sum) of one tensor; wait_all() blocks on every pending one, in launch order.
  void all_reduce_sum_async(const torch::Tensor& tensor);
  void wait_all(const std::string& what);

  // After a failed collective: which rank stopped, in words ("rank 1 stopped responding: ...").
  std::string diagnose_failure();

 private:
  struct Impl;
  [[noreturn]] void fail(const std::string& what, const std::exception& e);

  DistEnv env_;
  DistOptions options_;
  std::unique_ptr<Impl> impl_;
};

// The adapter gradients in flat buckets, summed over ranks once per update (see the top of this file).
class GradientReducer {
 public:
  // `params`: the trainable parameters (fp32 masters), the same list in the same order on every rank.
  GradientReducer(DistGroup& group, std::vector<torch::Tensor> params, double bucket_mb);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Call before the update's last backward on this rank: its hooks launch buckets as they complete.
  void arm();
  // Launches the buckets not launched yet (a rank without micro-batches this update contributes zeros),
  // waits for all, and writes the sums into each parameter's grad. Returns the seconds spent waiting here.
  double finish(const std::string& what);

  size_t num_buckets() const { return buckets_.size(); }
  int64_t num_elements() const { return num_elements_; }

 private:
  struct Bucket {
    torch::Tensor flat;            // fp32, on the parameters' device
    std::vector<size_t> params;    // indices into params_
    std::vector<int64_t> offsets;  // element offset of each param in flat
    size_t pending = 0;            // gradients not yet final in the armed backward
    bool launched = false;
  };
  void on_grad(size_t param_index, const torch::Tensor& grad);
  void fill_from_grads(Bucket& b);
  void launch_ready();

  DistGroup& group_;
  std::vector<torch::Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;  // param index -> bucket
  std::vector<size_t> slot_of_;    // param index -> position within its bucket
  std::vector<unsigned> hook_ids_;
  std::vector<bool> done_;  // param index -> gradient final in the armed backward
  size_t next_launch_ = 0;
  bool armed_ = false;
  int64_t num_elements_ = 0;
  std::mutex mutex_;
};

}  // namespace qlora::dist
