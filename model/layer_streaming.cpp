#include "model/layer_streaming.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>

namespace qlora::model {
namespace {

// A copy of every part of `q` on `device` (a distinct tensor even when device is the source's).
quant::QuantizedTensor copy_to(const quant::QuantizedTensor& q, torch::Device device) {
  auto copy = [&](const torch::Tensor& t) {
    if (!t.defined()) return t;
    torch::Tensor out = torch::empty(t.sizes(), t.options().device(device));
    out.copy_(t, /*non_blocking=*/true);
    return out;
  };
  quant::QuantizedTensor r = q;
  r.packed = copy(q.packed);
  r.code = copy(q.code);
  r.absmax = copy(q.absmax);
  r.absmax2 = copy(q.absmax2);
  r.nested_code = copy(q.nested_code);
  return r;
}

// The same weight without data: what an evicted layer holds (its forward fails with a clear message).
quant::QuantizedTensor absent(const quant::QuantizedTensor& q) {
  quant::QuantizedTensor r = q;
  r.packed = r.code = r.absmax = r.absmax2 = r.nested_code = torch::Tensor();
  return r;
}

}  // namespace

int64_t layer_weight_bytes(const std::vector<quant::QuantizedTensor>& parts) {
  int64_t b = 0;
  for (const auto& q : parts) b += q.nbytes();
  return b;
}

DevicePool::DevicePool(torch::Device device, int64_t budget_bytes) : device_(device), budget_bytes_(budget_bytes) {
  TORCH_CHECK(budget_bytes > 0, "DevicePool: budget must be positive, got ", budget_bytes);
}

void DevicePool::copy_in(int64_t layer, const std::vector<quant::QuantizedTensor>& host) {
  TORCH_CHECK(!contains(layer), "DevicePool: layer ", layer, " is already resident");
  const int64_t bytes = layer_weight_bytes(host);
  TORCH_CHECK(fits(bytes), "DevicePool: layer ", layer, " (", bytes, " bytes) does not fit: ", resident_bytes_, " of ",
              budget_bytes_, " bytes in use (layers resident: ", resident_layers().size(),
              "); raise the streaming budget to at least (prefetch + 1) layers");
  std::vector<quant::QuantizedTensor> copies;
  copies.reserve(host.size());
  for (const auto& q : host) copies.push_back(copy_to(q, device_));
  layers_.emplace(layer, std::move(copies));
  resident_bytes_ += bytes;
  peak_bytes_ = std::max(peak_bytes_, resident_bytes_);
}

const std::vector<quant::QuantizedTensor>& DevicePool::get(int64_t layer) const {
  auto it = layers_.find(layer);
  TORCH_CHECK(it != layers_.end(), "DevicePool: layer ", layer, " is not resident");
  return it->second;
}

void DevicePool::evict(int64_t layer) {
  auto it = layers_.find(layer);
  TORCH_CHECK(it != layers_.end(), "DevicePool: evicting layer ", layer, " which is not resident");
  resident_bytes_ -= layer_weight_bytes(it->second);
  layers_.erase(it);  // autograd may still hold the copies until that layer's backward is done
}

std::vector<int64_t> DevicePool::resident_layers() const {
  std::vector<int64_t> out;
  for (const auto& [l, parts] : layers_) out.push_back(l);
  return out;
}

std::vector<int64_t> next_layers(int64_t layer, LayerPass pass, int64_t num_layers, int64_t count) {
  std::vector<int64_t> out;
  auto push = [&](int64_t l) {
    if (static_cast<int64_t>(out.size()) < count) out.push_back(l);
  };
  switch (pass) {
    case LayerPass::kForward:
      for (int64_t l = layer + 1; l < num_layers; ++l) push(l);
      break;
    case LayerPass::kForwardCheckpoint:  // the rest of the forward, then backward from the last layer
      for (int64_t l = layer + 1; l < num_layers; ++l) push(l);
      for (int64_t l = num_layers - 1; l >= 0; --l) push(l);
      break;
    case LayerPass::kRecompute:  // the rest of the backward, then the next micro-batch's forward
      for (int64_t l = layer - 1; l >= 0; --l) push(l);
      for (int64_t l = 0; l < num_layers; ++l) push(l);
      break;
  }
  return out;
}

LayerStreamer::LayerStreamer(LlamaModel model, StreamingOptions options)
    : model_(std::move(model)), options_(options), pool_(options.device, std::max<int64_t>(1, options.budget_bytes)) {
  TORCH_CHECK(options_.prefetch >= 0, "LayerStreamer: prefetch must be >= 0");
  const int64_t num_layers = model_->config().num_hidden_layers;
  linears_.resize(static_cast<size_t>(num_layers));
  host_.resize(static_cast<size_t>(num_layers));
  const std::string prefix = "model.layers.";
  for (const auto& [name, lin] : model_->named_linears()) {
    if (name.rfind(prefix, 0) != 0) continue;  // lm_head stays resident
    const int64_t layer = std::stoll(name.substr(prefix.size()));
    auto base = lin->frozen_base();
    TORCH_CHECK(base && base->is_quantized(), "LayerStreamer: ", name,
                " is not a 4-bit projection (streaming moves "
                "the frozen 4-bit layers; use a quantized base)");
    linears_[static_cast<size_t>(layer)].push_back(base);
    host_[static_cast<size_t>(layer)].push_back(base->quantized_weight());
  }
  if (options_.budget_bytes <= 0) {
    int64_t largest = 0;
    for (const auto& parts : host_) largest = std::max(largest, layer_weight_bytes(parts));
    pool_ = DevicePool(options_.device, (options_.prefetch + 1) * largest);
  }
  for (int64_t l = 0; l < num_layers; ++l) install(l, /*resident=*/false);
  LayerHooks hooks;
  hooks.before = [this](int64_t layer, LayerPass pass) { before(layer, pass); };
  hooks.after = [this](int64_t layer, LayerPass pass) { after(layer, pass); };
  model_->set_layer_hooks(hooks);
  spdlog::debug("layer streaming: {} layers of {} bytes, pool {} bytes on {}", num_layers,
                num_layers > 0 ? layer_bytes(0) : 0, pool_.budget_bytes(), options_.device.str());
}

LayerStreamer::~LayerStreamer() {
  model_->set_layer_hooks({});
  for (size_t l = 0; l < linears_.size(); ++l) {
    for (size_t k = 0; k < linears_[l].size(); ++k) linears_[l][k]->exchange_quantized_weight(host_[l][k]);
  }
}

void LayerStreamer::install(int64_t layer, bool resident) {
  const auto l = static_cast<size_t>(layer);
  for (size_t k = 0; k < linears_[l].size(); ++k) {
    linears_[l][k]->exchange_quantized_weight(resident ? pool_.get(layer)[k] : absent(host_[l][k]));
  }
}

void LayerStreamer::copy_in(int64_t layer) {
  pool_.copy_in(layer, host_.at(static_cast<size_t>(layer)));
  stats_.bytes_copied += layer_bytes(layer);
  ++stats_.copies;
}

void LayerStreamer::before(int64_t layer, LayerPass pass) {
  TORCH_CHECK(pass != LayerPass::kForward || !torch::GradMode::is_enabled(),
              "layer streaming in training needs gradient checkpointing (a plain forward's graph would keep every "
              "streamed layer alive until backward)");
  const int64_t num_layers = static_cast<int64_t>(host_.size());
  // Layers kept past their use (a recomputed layer whose backward has now finished) leave unless needed now.
  for (int64_t l : pool_.resident_layers()) {
    if (l == layer) continue;
    const auto upcoming = next_layers(layer, pass, num_layers, options_.prefetch);
    if (std::find(upcoming.begin(), upcoming.end(), l) == upcoming.end()) {
      pool_.evict(l);
      ++stats_.evictions;
    }
  }
  if (pool_.contains(layer)) {
    ++stats_.hits;
  } else {
    ++stats_.misses;
    copy_in(layer);
  }
  // Prefetch the next layers of the order (on CUDA: a side stream; here the copies are issued in order).
  for (int64_t l : next_layers(layer, pass, num_layers, options_.prefetch + 1)) {
    if (l == layer || pool_.contains(l)) continue;
    if (static_cast<int64_t>(pool_.resident_layers().size()) > options_.prefetch) break;
    if (pool_.fits(layer_bytes(l))) {
      copy_in(l);
    } else {
      ++stats_.prefetch_skipped;
    }
  }
  install(layer, /*resident=*/true);
  stats_.resident_bytes = pool_.resident_bytes();
  stats_.peak_resident_bytes = pool_.peak_bytes();
}

void LayerStreamer::after(int64_t layer, LayerPass pass) {
  install(layer, /*resident=*/false);
  // A recomputed layer's graph holds its copies until its backward is done: it leaves the pool at the next
  // before(). Otherwise it leaves now unless it is the next one needed (the last layer at the turn to backward).
  if (pass != LayerPass::kRecompute) {
    const auto upcoming = next_layers(layer, pass, static_cast<int64_t>(host_.size()), 1);
    if (upcoming.empty() || upcoming[0] != layer) {
      pool_.evict(layer);
      ++stats_.evictions;
    }
  }
  stats_.resident_bytes = pool_.resident_bytes();
}

}  // namespace qlora::model
