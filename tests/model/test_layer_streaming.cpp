// Layer streaming on CPU (the "device" is a separate pool of copies): a streamed checkpointed run gives exactly
// the loss and gradients of the normal run, copies follow the schedule (forward 0..L-1, backward L-1..0, one layer
// ahead), the pool never holds more than its budget, and evicted layers really are gone from the compute path.
#include <gtest/gtest.h>

#include "model/layer_streaming.h"
#include "model/llama.h"
#include "model/llama_test_util.h"
#include "quant/quantized_tensor.h"

namespace qlora::test {
namespace {

using model::LayerPass;
using model::LayerStreamer;
using model::StreamingOptions;

constexpr int64_t kLayers = 4;

// A small random model with every decoder projection in NF4 (+DQ) and trainable norm weights (standing in for
// adapters: model tests do not link lora/).
model::LlamaModel quantized_model() {
  auto cfg = small_config();
  cfg.num_hidden_layers = kLayers;
  auto m = random_model(cfg);
  for (auto& [name, lin] : m->named_linears()) {
    if (name == "lm_head") continue;
    auto q = quant::quantize_4bit(lin->dense_weight(torch::kFloat32), quant::QuantType::kNF4, /*blocksize=*/64,
                                  /*double_quant=*/true);
    m->replace_linear(name, model::FrozenLinearImpl::quantized(q));
  }
  for (auto& [name, t] : m->named_dense_tensors()) {
    if (name.find("layernorm") != std::string::npos) t.set_requires_grad(true);
  }
  m->set_gradient_checkpointing(true);
  return m;
}

struct StepResult {
  double loss;
  std::vector<torch::Tensor> grads;
};

StepResult train_step(model::LlamaModel& m) {
  const torch::Tensor ids = ids_tensor({{5, 9, 13, 2, 40, 41, 7, 3, 11}, {1, 2, 3, 4, 5, 6, 8, 10, 12}});
  std::vector<torch::Tensor> params;
  for (auto& [name, t] : m->named_dense_tensors()) {
    if (t.requires_grad()) {
      if (t.grad().defined()) t.mutable_grad().zero_();
      params.push_back(t);
    }
  }
  auto [sum, n] = m->causal_lm_loss(ids, ids, {}, /*chunk_tokens=*/6);
  sum.backward();
  StepResult r{sum.item<double>(), {}};
  for (auto& p : params) r.grads.push_back(p.grad().clone());
  return r;
}

TEST(LayerStreaming, SameLossAndGradientsAsTheNormalRun) {
  auto m = quantized_model();
  const StepResult plain = train_step(m);
  {
    LayerStreamer streamer(m, StreamingOptions{});
    for (int step = 0; step < 3; ++step) {
      const StepResult streamed = train_step(m);
      EXPECT_EQ(streamed.loss, plain.loss) << "step " << step;
      ASSERT_EQ(streamed.grads.size(), plain.grads.size());
      for (size_t i = 0; i < plain.grads.size(); ++i) EXPECT_TRUE(torch::equal(streamed.grads[i], plain.grads[i]));
    }
    const auto& s = streamer.stats();
    const int64_t layer = streamer.layer_bytes(0);
    // First micro-batch: layer 0 on demand, 1..L-1 prefetched, L-2..0 in backward (L-1 kept at the turn), and
    // layer 1 prefetched for the next forward (0 stays): 2L copies. Later ones: 2L - 2 (0 and 1 already there).
    EXPECT_EQ(s.copies, 2 * kLayers + 2 * (2 * kLayers - 2));
    EXPECT_EQ(s.bytes_copied, s.copies * layer);
    EXPECT_EQ(s.misses, 1);  // only the very first layer 0
    EXPECT_EQ(s.prefetch_skipped, 0);
    EXPECT_LE(s.peak_resident_bytes, 2 * layer);  // default budget: prefetch + 1 = 2 layers
    EXPECT_EQ(streamer.resident_layers(), (std::vector<int64_t>{0, 1}));
  }
  // The host weights are back: a plain run again without the streamer.
  EXPECT_EQ(train_step(m).loss, plain.loss);
}

TEST(LayerStreaming, EvictedLayersAreNotInTheComputePath) {
  auto m = quantized_model();
  LayerStreamer streamer(m, StreamingOptions{});
  m->set_layer_hooks({});  // bypass the streamer: every layer is evicted
  torch::NoGradGuard ng;
  EXPECT_THROW(m->forward(ids_tensor({{1, 2, 3}})), c10::Error);
}

TEST(LayerStreaming, EvalForwardMatchesAndBudgetIsEnforced) {
  auto m = quantized_model();
  torch::NoGradGuard ng;
  const torch::Tensor ids = ids_tensor({{4, 8, 15, 16, 23, 42}});
  const torch::Tensor expect = m->forward(ids);
  {
    LayerStreamer streamer(m, StreamingOptions{torch::kCPU, /*budget_bytes=*/0, /*prefetch=*/2});
    EXPECT_TRUE(torch::equal(m->forward(ids), expect));
    EXPECT_LE(streamer.stats().peak_resident_bytes, 3 * streamer.layer_bytes(0));
  }
  {
    // A pool smaller than one layer cannot run anything.
    auto one = quantized_model();
    LayerStreamer streamer(one, StreamingOptions{torch::kCPU, /*budget_bytes=*/100, /*prefetch=*/1});
    EXPECT_THROW(one->forward(ids), c10::Error);
  }
}

TEST(LayerStreaming, TrainingWithoutCheckpointingIsRefused) {
  auto m = quantized_model();
  m->set_gradient_checkpointing(false);
  LayerStreamer streamer(m, StreamingOptions{});
  EXPECT_THROW(m->causal_lm_loss(ids_tensor({{1, 2, 3, 4}}), ids_tensor({{1, 2, 3, 4}})), c10::Error);
}

TEST(LayerStreaming, ScheduleIsForwardThenReverse) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(model::next_layers(1, LayerPass::kForwardCheckpoint, 4, 5), (V{2, 3, 3, 2, 1}));
  EXPECT_EQ(model::next_layers(3, LayerPass::kForwardCheckpoint, 4, 2), (V{3, 2}));
  EXPECT_EQ(model::next_layers(2, LayerPass::kRecompute, 4, 4), (V{1, 0, 0, 1}));
  EXPECT_EQ(model::next_layers(2, LayerPass::kForward, 4, 4), (V{3}));
}

}  // namespace
}  // namespace qlora::test
