// Layer streaming: the frozen 4-bit decoder layers live in host memory and are copied into a byte-budgeted device
// pool just before they run, one layer ahead (prefetch), and dropped after use. Design, numbers and the CUDA plan
// (pinned host memory, copies on a side stream, events) are in docs/layer-streaming.md; this is the host-side
// mechanism, device-generic: copies are `empty(device).copy_(host, non_blocking)`, so on CPU the "device" is a
// separate set of tensors in the same RAM and the schedule, budget and lifetimes can be tested.
//
//   LayerStreamer streamer(model, {.device = torch::kCuda, .budget_bytes = 3 * layer_bytes});
//   ... train as usual (gradient checkpointing on) ...
//
// Order of a training micro-batch with checkpointing (LayerPass in model/llama.h): forward 0, 1, ..., L-1 (no grad),
// then backward recomputes L-1, L-2, ..., 0. Before layer i runs, i must be resident (a miss copies it in on
// demand and is counted); then the next `prefetch` layers of that order are copied in. After it runs, i leaves the
// pool unless it is needed again next (layer L-1 at the forward -> backward turn). The recompute's graph keeps its
// own references to the copies until that layer's backward is done, so a copy's memory is freed after its last use.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "model/llama.h"

namespace qlora::model {

struct StreamingOptions {
  torch::Device device = torch::kCPU;  // where the layers compute (on CPU: a separate pool of copies)
  int64_t budget_bytes = 0;            // pool capacity; 0 = (prefetch + 1) layers
  int64_t prefetch = 1;                // layers copied in ahead of use
};

struct StreamingStats {
  int64_t bytes_copied = 0;      // host -> device
  int64_t copies = 0;            // layers copied in
  int64_t hits = 0;              // a layer was resident when it was needed (prefetched or kept)
  int64_t misses = 0;            // a layer had to be copied in on demand
  int64_t prefetch_skipped = 0;  // a prefetch that did not fit the budget
  int64_t evictions = 0;
  int64_t resident_bytes = 0;
  int64_t peak_resident_bytes = 0;
};

// A byte-budgeted set of per-layer weight copies on one device.
class DevicePool {
 public:
  DevicePool(torch::Device device, int64_t budget_bytes);
  bool contains(int64_t layer) const { return layers_.count(layer) > 0; }
  bool fits(int64_t bytes) const { return resident_bytes_ + bytes <= budget_bytes_; }
  // Copies `host` parts onto the device and holds them; TORCH_CHECK that the budget allows it.
  void copy_in(int64_t layer, const std::vector<quant::QuantizedTensor>& host);
  const std::vector<quant::QuantizedTensor>& get(int64_t layer) const;
  void evict(int64_t layer);
  std::vector<int64_t> resident_layers() const;
  int64_t resident_bytes() const { return resident_bytes_; }
  int64_t peak_bytes() const { return peak_bytes_; }
  int64_t budget_bytes() const { return budget_bytes_; }
  torch::Device device() const { return device_; }

 private:
  torch::Device device_;
  int64_t budget_bytes_;
  int64_t resident_bytes_ = 0, peak_bytes_ = 0;
  std::map<int64_t, std::vector<quant::QuantizedTensor>> layers_;
};

// Bytes of one layer's 4-bit parts (QuantizedTensor::nbytes).
int64_t layer_weight_bytes(const std::vector<quant::QuantizedTensor>& parts);

// The layers needed after layer `layer` ran in `pass`, in order (at most `count`), for a model of `num_layers`.
std::vector<int64_t> next_layers(int64_t layer, LayerPass pass, int64_t num_layers, int64_t count);

class LayerStreamer {
 public:
  // Takes every decoder layer's 4-bit weights out of the compute path (they stay as the modules' host buffers) and
  // installs the model's layer hooks. Every decoder projection must be 4-bit (TORCH_CHECK).
  LayerStreamer(LlamaModel model, StreamingOptions options);
  // Puts the host weights back and removes the hooks.
  ~LayerStreamer();
  LayerStreamer(const LayerStreamer&) = delete;
  LayerStreamer& operator=(const LayerStreamer&) = delete;

  const StreamingStats& stats() const { return stats_; }
  std::vector<int64_t> resident_layers() const { return pool_.resident_layers(); }
  int64_t layer_bytes(int64_t layer) const { return layer_weight_bytes(host_.at(static_cast<size_t>(layer))); }

 private:
  void before(int64_t layer, LayerPass pass);
  void after(int64_t layer, LayerPass pass);
  void copy_in(int64_t layer);
  void install(int64_t layer, bool resident);

  LlamaModel model_;
  StreamingOptions options_;
  DevicePool pool_;
  StreamingStats stats_;
  std::vector<std::vector<std::shared_ptr<FrozenLinearImpl>>> linears_;  // per layer
  std::vector<std::vector<quant::QuantizedTensor>> host_;                // per layer, the host weights
};

}  // namespace qlora::model
