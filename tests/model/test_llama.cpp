// Decoder math against an independent float64 reference, masks (padding, packing), KV cache, loss,
// and activation checkpointing.
#include <gtest/gtest.h>

#include <tuple>

#include "model/llama.h"
#include "model/llama_test_util.h"
#include "ops/activation_checkpoint.h"

namespace qlora::test {
namespace {

using model::ForwardInputs;
using model::KVCache;

constexpr double kFp32RelTol = 1e-5;   // fp32 model vs float64 reference
constexpr double kSameMathTol = 1e-5;  // same computation, different batching/masking (fp32)
constexpr double kGradTol = 1e-5;

double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

TEST(LlamaMath, Fp32LogitsMatchFloat64ReferenceUntiedGqa) {
  auto cfg = small_config(/*tied=*/false);
  auto m = random_model(cfg);
  RefDecoder ref(*m);
  const std::vector<int64_t> ids = {3, 17, 42, 5, 60, 0, 9};
  torch::NoGradGuard ng;
  torch::Tensor logits = m->forward(ids_tensor({ids}));  // (1, T, V)
  ASSERT_EQ(logits.scalar_type(), torch::kFloat32);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{1, 7, cfg.vocab_size}));
  EXPECT_LT(rel_error(to_vec(logits), ref.causal_logits(ids)), kFp32RelTol);
}

TEST(LlamaMath, Fp32LogitsMatchFloat64ReferenceTiedMha) {
  auto cfg = small_config(/*tied=*/true);
  cfg.num_key_value_heads = 4;
  cfg.rope_theta = 500000.0;
  auto m = random_model(cfg, torch::kFloat32, 11);
  EXPECT_EQ(m->named_linears().size(), 14u);  // no lm_head when tied
  RefDecoder ref(*m);
  const std::vector<int64_t> ids = {1, 2, 3, 4, 5};
  torch::NoGradGuard ng;
  EXPECT_LT(rel_error(to_vec(m->forward(ids_tensor({ids}))), ref.causal_logits(ids)), kFp32RelTol);
}

TEST(LlamaMath, GqaSingleKvHeadMatchesReference) {
  auto cfg = small_config();
  cfg.num_key_value_heads = 1;
  auto m = random_model(cfg, torch::kFloat32, 5);
  RefDecoder ref(*m);
  const std::vector<int64_t> ids = {7, 7, 8, 30, 2, 1};
  torch::NoGradGuard ng;
  EXPECT_LT(rel_error(to_vec(m->forward(ids_tensor({ids}))), ref.causal_logits(ids)), kFp32RelTol);
}

TEST(LlamaMath, Bf16LogitsCloseToReference) {
  auto cfg = small_config();
  auto m = random_model(cfg, torch::kBFloat16, 3);
  RefDecoder ref(*m);  // reference on the same (bf16-rounded) weights
  const std::vector<int64_t> ids = {3, 17, 42, 5};
  torch::NoGradGuard ng;
  EXPECT_LT(rel_error(to_vec(m->forward(ids_tensor({ids}))), ref.causal_logits(ids)), 0.05);
}

TEST(LlamaMasks, RightAndLeftPaddingMatchUnpadded) {
  auto m = random_model(small_config());
  torch::NoGradGuard ng;
  const std::vector<int64_t> a = {5, 9, 13, 2, 40};
  torch::Tensor alone = m->forward(ids_tensor({a}));  // (1, 5, V)
  // Row 0: right padded; row 1: left padded (positions start at 0 at the first real token).
  torch::Tensor ids = ids_tensor({{5, 9, 13, 2, 40, 0, 0}, {0, 0, 5, 9, 13, 2, 40}});
  ForwardInputs in;
  in.attention_mask = ids_tensor({{1, 1, 1, 1, 1, 0, 0}, {0, 0, 1, 1, 1, 1, 1}});
  in.position_ids = ids_tensor({{0, 1, 2, 3, 4, 5, 6}, {0, 0, 0, 1, 2, 3, 4}});
  torch::Tensor padded = m->forward(ids, in);
  EXPECT_FALSE(padded.isnan().any().item<bool>());
  EXPECT_LT(max_rel(padded[0].narrow(0, 0, 5), alone[0]), kSameMathTol);
  EXPECT_LT(max_rel(padded[1].narrow(0, 2, 5), alone[0]), kSameMathTol);
}

TEST(LlamaMasks, PackedSegmentsMatchSeparateSequences) {
  auto m = random_model(small_config());
  RefDecoder ref(*m);
  torch::NoGradGuard ng;
  const std::vector<int64_t> a = {5, 9, 13, 2}, b = {40, 41, 7};
  torch::Tensor la = m->forward(ids_tensor({a}))[0], lb = m->forward(ids_tensor({b}))[0];
  ForwardInputs in;
  in.segment_ids = ids_tensor({{0, 0, 0, 0, 1, 1, 1}});
  in.position_ids = ids_tensor({{0, 1, 2, 3, 0, 1, 2}});
  torch::Tensor packed = m->forward(ids_tensor({{5, 9, 13, 2, 40, 41, 7}}), in)[0];
  EXPECT_LT(max_rel(packed.narrow(0, 0, 4), la), kSameMathTol);
  EXPECT_LT(max_rel(packed.narrow(0, 4, 3), lb), kSameMathTol);
  // And against the float64 reference with the block-diagonal mask.
  std::vector<int64_t> seg = {0, 0, 0, 0, 1, 1, 1};
  auto r = ref.logits({5, 9, 13, 2, 40, 41, 7}, {0, 1, 2, 3, 0, 1, 2},
                      [&](int64_t i, int64_t j) { return j <= i && seg[i] == seg[j]; });
  EXPECT_LT(rel_error(to_vec(packed), r), kFp32RelTol);
}

TEST(LlamaCache, IncrementalLogitsMatchFullForward) {
  auto m = random_model(small_config());
  torch::NoGradGuard ng;
  torch::Tensor ids = ids_tensor({{5, 9, 13, 2, 40, 41, 7}, {1, 2, 3, 4, 5, 6, 8}});
  torch::Tensor full = m->forward(ids);
  KVCache cache;
  torch::Tensor first = m->forward(ids.narrow(1, 0, 4), {}, &cache);
  EXPECT_EQ(cache.length(), 4);
  torch::Tensor step5 = m->forward(ids.narrow(1, 4, 1), {}, &cache);
  torch::Tensor rest = m->forward(ids.narrow(1, 5, 2), {}, &cache);  // two at once with a cache
  EXPECT_EQ(cache.length(), 7);
  torch::Tensor inc = torch::cat({first, step5, rest}, 1);
  EXPECT_LT(max_rel(inc, full), kSameMathTol);
}

// Loss by hand from the float64 reference logits: sum_t -log softmax(logits[t])[label[t+1]].
TEST(LlamaLoss, MatchesReferenceAndChunkedEqualsUnchunked) {
  auto m = random_model(small_config());
  RefDecoder ref(*m);
  const std::vector<int64_t> a = {5, 9, 13, 2, 40, 41, 7, 3}, b = {1, 2, 3, 4, 5, 6, 8, 10};
  const std::vector<int64_t> la = {-100, -100, 13, 2, 40, 41, 7, 3}, lb = {1, 2, 3, -100, 5, 6, 8, -100};
  double expect = 0;
  int64_t expect_count = 0;
  for (int r = 0; r < 2; ++r) {
    const auto& ids = r ? b : a;
    const auto& lab = r ? lb : la;
    auto lg = ref.causal_logits(ids);
    const int64_t v = m->config().vocab_size;
    for (size_t t = 0; t + 1 < ids.size(); ++t) {
      if (lab[t + 1] == -100) continue;
      double mx = -INFINITY, z = 0;
      for (int64_t j = 0; j < v; ++j) mx = std::max(mx, lg[t * v + j]);
      for (int64_t j = 0; j < v; ++j) z += std::exp(lg[t * v + j] - mx);
      expect += -(lg[t * v + lab[t + 1]] - mx - std::log(z));
      ++expect_count;
    }
  }
  torch::Tensor ids = ids_tensor({a, b}), labels = ids_tensor({la, lb});
  auto [full, n_full] = m->causal_lm_loss(ids, labels, {}, /*chunk_tokens=*/1024);
  EXPECT_EQ(n_full, expect_count);
  EXPECT_NEAR(full.item<double>(), expect, 1e-5 * std::abs(expect));

  // Chunked (2 tokens per chunk, 1 position per row) vs unchunked, values and gradients of a trainable norm.
  auto norm = m->named_dense_tensors().back().second;  // lm_head.weight (untied)
  ASSERT_EQ(m->named_dense_tensors().back().first, "lm_head.weight");
  norm.set_requires_grad(true);
  auto [l1, n1] = m->causal_lm_loss(ids, labels, {}, 1024);
  l1.backward();
  torch::Tensor g1 = norm.grad().clone();
  norm.mutable_grad().zero_();
  auto [l2, n2] = m->causal_lm_loss(ids, labels, {}, /*chunk_tokens=*/2);
  l2.backward();
  EXPECT_EQ(n1, n2);
  EXPECT_NEAR(l1.item<double>(), l2.item<double>(), 1e-5 * std::abs(l1.item<double>()));
  EXPECT_LT(max_rel(norm.grad(), g1), kGradTol);
  norm.set_requires_grad(false);
}

// Chunked loss (several chunk sizes, including chunks that split rows unevenly) against a float64 dense
// computation of the whole (T, V) logits from the model's final hidden states: loss value and lm_head gradient.
TEST(LlamaLoss, ChunkedLossAndGradientMatchFloat64DenseLogits) {
  auto m = random_model(small_config());
  const torch::Tensor ids = ids_tensor({{5, 9, 13, 2, 40, 41, 7, 3, 22}, {1, 2, 3, 4, 5, 6, 8, 10, 30}});
  const torch::Tensor labels = ids_tensor({{-100, -100, 13, 2, 40, 41, 7, 3, 22}, {1, 2, 3, -100, 5, 6, 8, -100, 30}});
  auto lm_head = m->named_dense_tensors().back().second;
  ASSERT_EQ(m->named_dense_tensors().back().first, "lm_head.weight");

  // Reference: float64 logits = hidden · Wᵀ over all positions, cross entropy summed, autograd in float64.
  torch::Tensor hidden;
  {
    torch::NoGradGuard ng;
    hidden = m->forward_hidden(ids).to(torch::kFloat64);  // (B, T, H)
  }
  torch::Tensor w64 = lm_head.detach().to(torch::kFloat64).requires_grad_(true);
  const int64_t t = ids.size(1);
  torch::Tensor logits64 = torch::matmul(hidden.narrow(1, 0, t - 1), w64.t());  // (B, T-1, V)
  torch::Tensor y = labels.narrow(1, 1, t - 1).reshape({-1});
  torch::Tensor ref = torch::nn::functional::cross_entropy(
      logits64.reshape({-1, logits64.size(-1)}), y,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-100));
  ref.backward();
  const double ref_loss = ref.item<double>();
  const torch::Tensor ref_grad = w64.grad();

  lm_head.set_requires_grad(true);
  for (int64_t chunk : {1024, 2, 6, 10}) {  // per row: all 8 positions; 1; 3 (3+3+2); 5 (5+3)
    if (lm_head.grad().defined()) lm_head.mutable_grad().zero_();
    auto [loss, n] = m->causal_lm_loss(ids, labels, {}, chunk);
    loss.backward();
    EXPECT_EQ(n, (y != -100).sum().item<int64_t>());
    EXPECT_NEAR(loss.item<double>(), ref_loss, kFp32RelTol * std::abs(ref_loss)) << "chunk " << chunk;
    EXPECT_LT(max_rel(lm_head.grad().to(torch::kFloat64), ref_grad), kGradTol) << "chunk " << chunk;
  }
  lm_head.set_requires_grad(false);
}

// A projection with a trainable weight and dropout inside (like LoRA), to check checkpointing.
struct DropoutLinearImpl : model::LinearLayerImpl {
  DropoutLinearImpl(torch::Tensor w) { weight = register_parameter("weight", w.clone()); }
  torch::Tensor forward(const torch::Tensor& x) override {
    return torch::nn::functional::linear(torch::dropout(x, 0.3, /*train=*/true), weight);
  }
  int64_t in_features() const override { return weight.size(1); }
  int64_t out_features() const override { return weight.size(0); }
  torch::Tensor dense_weight(torch::ScalarType dtype) const override { return weight.to(dtype); }
  torch::Tensor weight;
};

TEST(LlamaCheckpointing, SameGradientsWithTrainableDropoutLayerInside) {
  auto m = random_model(small_config());
  std::vector<std::shared_ptr<DropoutLinearImpl>> trainable;
  for (const char* name : {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"}) {
    for (auto& [n, lin] : m->named_linears()) {
      if (n == name) {
        auto t = std::make_shared<DropoutLinearImpl>(lin->dense_weight(torch::kFloat32));
        m->replace_linear(n, t);
        trainable.push_back(t);
      }
    }
  }
  ASSERT_EQ(trainable.size(), 2u);
  torch::Tensor ids = ids_tensor({{5, 9, 13, 2, 40, 41, 7}, {1, 2, 3, 4, 5, 6, 8}});
  auto run = [&](bool ckpt) {
    m->set_gradient_checkpointing(ckpt);
    for (auto& t : trainable) t->weight.mutable_grad() = torch::Tensor();
    torch::manual_seed(99);  // same dropout masks in both runs
    auto [loss, n] = m->causal_lm_loss(ids, ids, {}, 1024);
    loss.backward();
    return std::make_tuple(loss.item<double>(), trainable[0]->weight.grad().clone(),
                           trainable[1]->weight.grad().clone());
  };
  auto [l0, ga0, gb0] = run(false);
  auto [l1, ga1, gb1] = run(true);
  EXPECT_TRUE(m->gradient_checkpointing());
  EXPECT_NEAR(l0, l1, 1e-6 * std::abs(l0));
  ASSERT_TRUE(ga1.defined());
  EXPECT_GT(ga0.abs().max().item<double>(), 0.0);
  EXPECT_LT(max_rel(ga1, ga0), kGradTol);
  EXPECT_LT(max_rel(gb1, gb0), kGradTol);
}

TEST(LlamaCheckpointing, FunctionGivesInputAndParameterGradients) {
  torch::manual_seed(1);
  torch::Tensor w = torch::randn({6, 5}, torch::kFloat64).requires_grad_(true);
  torch::Tensor x = torch::randn({3, 5}, torch::kFloat64).requires_grad_(true);
  auto fn = [&](const std::vector<torch::Tensor>& xs) {
    return std::vector<torch::Tensor>{torch::tanh(torch::dropout(xs[0], 0.5, true).matmul(w.t())) * 2.0};
  };
  torch::manual_seed(5);
  fn({x})[0].pow(2).sum().backward();
  torch::Tensor gx = x.grad().clone(), gw = w.grad().clone();
  x.mutable_grad().zero_();
  w.mutable_grad().zero_();
  torch::manual_seed(5);
  auto out = ops::checkpoint(fn, {x});
  torch::randn({100});  // advance the RNG between forward and backward: the recompute must not see it
  out[0].pow(2).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), gx, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(w.grad(), gw, 1e-12, 1e-12));
}

TEST(LlamaModule, NamesAndReplace) {
  auto m = random_model(small_config());
  auto lin = m->named_linears();
  ASSERT_EQ(lin.size(), 15u);
  EXPECT_EQ(lin[0].first, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(lin[6].first, "model.layers.0.mlp.down_proj");
  EXPECT_EQ(lin.back().first, "lm_head");
  // Parameters carry HF names and are frozen; projections are submodules.
  auto params = m->named_parameters();
  EXPECT_TRUE(params.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(params.contains("model.layers.1.post_attention_layernorm.weight"));
  for (auto& p : params) EXPECT_FALSE(p.value().requires_grad()) << p.key();
  auto buffers = m->named_buffers();
  EXPECT_TRUE(buffers.contains("model.layers.0.self_attn.k_proj.weight"));
  auto repl = model::FrozenLinearImpl::dense(torch::zeros({32, 48}));
  m->replace_linear("model.layers.1.mlp.down_proj", repl);
  EXPECT_EQ(m->named_linears()[13].second.get(), repl.get());
  EXPECT_TRUE(m->named_buffers().contains("model.layers.1.mlp.down_proj.weight"));
  EXPECT_THROW(m->replace_linear("model.layers.9.mlp.down_proj", repl), c10::Error);
  EXPECT_THROW(m->replace_linear("model.layers.0.mlp.foo", repl), c10::Error);
}

}  // namespace
}  // namespace qlora::test
